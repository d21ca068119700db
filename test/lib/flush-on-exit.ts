// Preloaded (NODE_OPTIONS=--import, set by test/run.ts) into each test file's process.
// The runner's forceExit makes that process exit() once its tests are done, and reports
// still queued on its stdout pipe to the runner are lost without a word: the run shows
// fewer tests, all green (nodejs/node#64833, open; seen here: 157 of 160 unit tests
// reported). As the fixes proposed there do: stdout becomes blocking, so a report written
// is on the pipe, and exit() waits until the reporter's streams have drained into it.
import { setTimeout as sleep } from 'node:timers/promises';

const isTestFile = process.env.NODE_TEST_CONTEXT !== undefined && /\.test\.js$/.test(process.argv[1] ?? '');
if (isTestFile) {
  (process.stdout as unknown as { _handle?: { setBlocking?(b: boolean): void } })._handle?.setBlocking?.(true);
  const exit = process.exit.bind(process);
  let exiting = false;
  let exitCode: number | undefined;
  process.exit = ((code?: number) => {
    // the last call's code wins (the runner's own exit comes last), as without this wrapper
    if (code !== undefined) exitCode = code;
    if (exiting) return undefined as never;
    exiting = true;
    void (async () => {
      // the reports move through stream pipes a tick at a time; let them reach the fd
      for (let i = 0; i < 20 && (i < 3 || process.stdout.writableLength > 0); i++) await sleep(10);
      exit(exitCode);
    })();
    return undefined as never;
  }) as typeof process.exit;
}

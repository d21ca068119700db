// For the test files that must exit on their own (the catalog tiers run without the
// runner's forceExit, test/run.ts): once the file's last `after` hook ran, a process still
// alive 20 s later has a handle left open (a driver socket, a reconnection timer). It then
// prints what is open and exits 1: the tier fails quickly instead of at the file timeout.
import { after } from 'node:test';

export function failIfProcessLingers(graceMs = 20_000): void {
  after(() => {
    const t = setTimeout(() => {
      process.stderr.write(`\nTHE PROCESS DID NOT EXIT ${graceMs / 1000} s after its last test: open resources ${JSON.stringify(process.getActiveResourcesInfo())}\n`);
      process.exit(1);
    }, graceMs);
    t.unref(); // it keeps nothing alive itself
  });
}

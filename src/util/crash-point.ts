// Named steps of the operations that change where a project is served, and a test-only
// hook at each: STORAGE_CRASH_AT=<op>:<step> kills the process there (SIGKILL, as a power
// loss would), STORAGE_STOP_AT=<op>:<step> stops it (SIGSTOP, as a long pause would: the
// test sends SIGCONT). Neither variable is read for anything else; unset, a crash point
// costs one comparison. The crash tests walk OPERATION_STEPS, so a step added to an
// operation (it must be listed here to compile) cannot be left untested.
export const OPERATION_STEPS = {
  /** failover.ts, in order */
  failover: ['locked', 'recorded', 'fenced', 'target-checked', 'promoted', 'switched'],
  /** move.ts, in order */
  move: ['locked', 'recorded', 'presynced', 'writes-stopped', 'verified', 'switched', 'promoted', 'source-kept'],
  /** restore.ts (rollback mode), in order */
  restore: ['locked', 'recorded', 'writes-stopped', 'safety-snapshot', 'copied', 'restored-snapshot'],
} as const;

export type OperationName = keyof typeof OPERATION_STEPS;
export type StepOf<O extends OperationName> = (typeof OPERATION_STEPS)[O][number];

export function crashPoint<O extends OperationName>(op: O, step: StepOf<O>): void {
  const at = `${op}:${step}`;
  if (process.env['STORAGE_CRASH_AT'] === at) {
    process.stderr.write(`crash point ${at}: killing this process (pid ${process.pid}, STORAGE_CRASH_AT)\n`);
    process.kill(process.pid, 'SIGKILL');
  }
  if (process.env['STORAGE_STOP_AT'] === at) {
    process.stderr.write(`crash point ${at}: stopping this process (pid ${process.pid}, STORAGE_STOP_AT)\n`);
    process.kill(process.pid, 'SIGSTOP');
  }
}

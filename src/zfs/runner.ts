// Runs zfs/zpool as argv arrays (never through a shell). A prefix lets the same
// adapter run through `sudo -n` (production, non-root service user) or
// `ip netns exec HOST` (the test sandbox). Every command is counted per verb so
// that tests and benchmarks can assert how many calls a cycle makes.
import { spawn, type ChildProcess } from 'node:child_process';
import { makeZfsError } from './errors.js';

export interface RunResult {
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Kill the command after this many ms (default 10 min: listings of 100k snapshots are slow). */
  timeoutMs?: number;
  /** Exit codes that are not errors (default [0]). */
  okCodes?: number[];
}

export interface CommandEvent {
  argv: readonly string[];
  verb: string;
  durationMs: number;
  ok: boolean;
}

export type CommandListener = (ev: CommandEvent) => void;

const MAX_CAPTURE = 256 * 1024 * 1024; // listings at 10k datasets x tens of snapshots are tens of MB
const MAX_STDERR = 64 * 1024;

export class CommandRunner {
  readonly prefix: readonly string[];
  readonly counts = new Map<string, number>();
  private readonly listeners: CommandListener[] = [];

  constructor(opts: { prefix?: readonly string[] } = {}) {
    this.prefix = opts.prefix ?? [];
  }

  onCommand(fn: CommandListener): () => void {
    this.listeners.push(fn);
    return () => {
      const i = this.listeners.indexOf(fn);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  /** Total commands run, optionally only those whose verb matches. */
  total(verbs?: string[]): number {
    let n = 0;
    for (const [v, c] of this.counts) if (!verbs || verbs.includes(v)) n += c;
    return n;
  }

  resetCounts(): void {
    this.counts.clear();
  }

  private record(argv: readonly string[], started: number, ok: boolean): void {
    const verb = verbOf(argv);
    this.counts.set(verb, (this.counts.get(verb) ?? 0) + 1);
    const ev: CommandEvent = { argv, verb, durationMs: Date.now() - started, ok };
    for (const l of this.listeners) {
      try {
        l(ev);
      } catch {
        /* a listener must never break a command */
      }
    }
  }

  /** Spawns a long-running command (send/recv); the caller owns its streams. */
  spawn(argv: readonly string[], onExit?: (ok: boolean) => void, opts: { stdin?: 'pipe' | 'inherit'; stdout?: 'pipe' | 'inherit' } = {}): ChildProcess {
    const full = [...this.prefix, ...argv];
    const started = Date.now();
    const child = spawn(full[0]!, full.slice(1), { stdio: [opts.stdin ?? 'pipe', opts.stdout ?? 'pipe', 'pipe'] });
    child.once('close', (code) => {
      this.record(argv, started, code === 0);
      onExit?.(code === 0);
    });
    child.once('error', () => {
      /* reported through 'close' / the caller's error handling */
    });
    return child;
  }

  /** Runs a command to completion; rejects with a typed ZfsCommandError on failure. */
  run(argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
    const full = [...this.prefix, ...argv];
    const started = Date.now();
    const okCodes = opts.okCodes ?? [0];
    return new Promise((resolve, reject) => {
      const child = spawn(full[0]!, full.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
      const out: Buffer[] = [];
      let outLen = 0;
      let err = '';
      let settled = false;
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
      }, opts.timeoutMs ?? 10 * 60_000);
      child.stdout.on('data', (d: Buffer) => {
        outLen += d.length;
        if (outLen <= MAX_CAPTURE) out.push(d);
      });
      child.stderr.on('data', (d: Buffer) => {
        if (err.length < MAX_STDERR) err += d.toString('utf8');
      });
      child.once('error', (e: NodeJS.ErrnoException) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.record(argv, started, false);
        reject(makeZfsError(full, null, null, `cannot execute ${full[0]}: ${e.code ?? ''} ${e.message}`));
      });
      child.once('close', (code, signal) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        const ok = code !== null && okCodes.includes(code);
        this.record(argv, started, ok);
        if (outLen > MAX_CAPTURE) {
          reject(makeZfsError(full, code, signal, `output exceeded ${MAX_CAPTURE} bytes`));
        } else if (ok) {
          resolve({ stdout: Buffer.concat(out).toString('utf8'), stderr: err });
        } else {
          const why = signal === 'SIGKILL' ? `${err}\n(killed after ${opts.timeoutMs ?? 600000} ms timeout)` : err;
          reject(makeZfsError(full, code, signal, why));
        }
      });
    });
  }
}

/** "zfs get ..." -> "zfs get"; "zpool list" -> "zpool list". */
export function verbOf(argv: readonly string[]): string {
  const prog = (argv[0] ?? '').split('/').pop() ?? '';
  const sub = argv.find((a, i) => i > 0 && !a.startsWith('-'));
  return sub ? `${prog} ${sub}` : prog;
}

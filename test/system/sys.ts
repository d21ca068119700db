// Helpers of the system tests (test/system): they run in the openzfs-2.3 guest, where
// systemd is PID 1 and the Debian package is installed (boot-prepare.sh). Anywhere else
// they fail, naming what is missing: they are never skipped.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, appendFileSync, mkdirSync, mkdtempSync, openSync, closeSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** runs a program (never a shell string); the result, whatever the exit code */
export function run(cmd: string, args: string[], opts: { input?: string; timeoutMs?: number } = {}): Run {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input: opts.input, timeout: opts.timeoutMs ?? 120_000 });
  return { status: r.status, stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + (r.error ? String(r.error) : '') };
}

/** runs and requires exit 0; the output */
export function ok(cmd: string, args: string[], opts: { input?: string; timeoutMs?: number } = {}): string {
  const r = run(cmd, args, opts);
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: exit ${r.status}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

export const RESULTS = process.env.OPENZFS_RESULTS_DIR ?? '/mnt/results';

/** fails unless this is the trixie guest with systemd as PID 1 and the boot phase's results */
export function requireGuest(): void {
  const pid1 = existsSync('/proc/1/comm') ? readFileSync('/proc/1/comm', 'utf8').trim() : '?';
  assert.equal(pid1, 'systemd', `the system tests need systemd as PID 1 (the openzfs-2.3 guest); PID 1 here is ${pid1}`);
  assert.ok(existsSync(`${RESULTS}/boot.json`), `no ${RESULTS}/boot.json: the guest's boot phases (test/system/boot-prepare.sh, boot-measure.sh) did not run`);
}

/** a figure for the tier's summary (tier.sh prints results/figures.txt) */
export function figure(line: string): void {
  mkdirSync(RESULTS, { recursive: true });
  appendFileSync(`${RESULTS}/figures.txt`, `${line}\n`);
  process.stdout.write(`# ${line}\n`);
}

/** a unit's properties (systemctl show) */
export function unitProps(unit: string, props: string[]): Record<string, string> {
  const out = ok('systemctl', ['show', unit, ...props.flatMap((p) => ['-p', p])]);
  const r: Record<string, string> = {};
  for (const l of out.split('\n')) {
    const i = l.indexOf('=');
    if (i > 0) r[l.slice(0, i)] = l.slice(i + 1);
  }
  return r;
}

export interface JournalEntry {
  MESSAGE?: string;
  SYSLOG_IDENTIFIER?: string;
  _SYSTEMD_UNIT?: string;
  _PID?: string;
  __MONOTONIC_TIMESTAMP?: string;
  /** MESSAGE parsed, when it is a JSON object */
  json?: Record<string, unknown>;
}

/** this boot's journal of a unit, each entry's MESSAGE parsed when it is JSON */
export function journal(unit: string, since?: string): JournalEntry[] {
  const args = ['-b', '-u', unit, '-o', 'json', '--no-pager'];
  if (since) args.push('--since', since);
  return ok('journalctl', args)
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const e = JSON.parse(l) as JournalEntry;
      try {
        const m = JSON.parse(e.MESSAGE ?? '') as unknown;
        if (m && typeof m === 'object') e.json = m as Record<string, unknown>;
      } catch {
        /* not JSON */
      }
      return e;
    });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** what the guest is doing, for a failure message: processes (with their wait channel), the unit's last log lines */
export function diagnostics(unit: string): string {
  const ps = run('ps', ['-eo', 'pid,ppid,stat,wchan:24,etime,args', '--sort=start_time'], { timeoutMs: 10_000 });
  const interesting = ps.stdout.split('\n').filter((l, i) => i === 0 || /zfs|storage|sshd|node|ssh /.test(l));
  const log = run('journalctl', ['-b', '-u', unit, '-n', '40', '-o', 'cat', '--no-pager'], { timeoutMs: 10_000 });
  return `processes:\n${interesting.join('\n')}\n${unit}, last lines:\n${log.stdout}`;
}

/** a step that must end within `ms`: a hang becomes a failure that shows what the guest was doing */
export async function within<T>(what: string, ms: number, p: Promise<T>, unit: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms\n${diagnostics(unit)}`)), ms);
  });
  try {
    return await Promise.race([p, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

export async function waitFor<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(250);
  }
}

/**
 * whether something is mounted at this path, as the host's root mount namespace (PID 1's)
 * sees it: by path, not by dataset name (a fenced project is renamed into conflicts/, and a
 * mount the fence did not remove stays there under the new name)
 */
export function mountedAt(path: string): boolean {
  return readFileSync('/proc/1/mounts', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[1] === path);
}

/**
 * Watches the host's mount table for mounts and unmounts at one path (util-linux
 * `findmnt --poll`, in this process's mount namespace: the host's). A mount id cannot tell
 * a remount from an untouched mount: the kernel hands the lowest free id out again, so an
 * unmount and a mount of the same path usually get the same id back.
 */
export function watchMounts(path: string): { events: () => string[]; stop: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'mount-watch-'));
  const out = join(dir, 'events');
  const fd = openSync(out, 'w');
  const child = spawn('findmnt', ['-n', '-r', '-o', 'ACTION', '--poll=mount,umount', '--mountpoint', path], { stdio: ['ignore', fd, fd] });
  closeSync(fd);
  return {
    events: () => readFileSync(out, 'utf8').split('\n').filter(Boolean),
    stop: () => {
      child.kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** the project datasets of a pool mounted now, as the host's root mount namespace sees them */
export function mountedUnder(prefix: string): string[] {
  return readFileSync('/proc/1/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f[2] === 'zfs' && f[0]!.startsWith(prefix))
    .map((f) => f[0]!);
}

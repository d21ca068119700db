// Fencing one dataset on this host: its writers are stopped, provably, before anything else
// may serve the project. Used by the receiver's `fence` (a failover reaching the old
// primary), the agent's demotion and self-fencing, and `move --force`.
//
// Why each step (facts measured on this project's test machines):
//  - `zfs set readonly=on` first: new writes get EROFS at once. It is not a fence by itself:
//    on zfs-fuse a descriptor opened before keeps writing (on OpenZFS 2.1 it gets EIO).
//  - then the processes using the file system are killed: `zfs unmount` (and `-f`) fail
//    "busy" on Linux while one file is open or one process has its working directory inside,
//    and a forced unmount under I/O has wedged the zfs-fuse daemon. `fuser -M -m` (psmisc)
//    lists them; -M makes fuser refuse a path that is not a mount point (else it would
//    match, and we would kill, every user of the parent file system).
//  - then a plain unmount, retried while the kernel lets go of the killed processes.
// The report says what ran and what could not; `fenced` is true only when the dataset is
// absent or no longer mounted (nothing on this host can write it).
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Zfs } from './adapter.js';
import { ZfsCommandError } from './errors.js';
import { mountpointOf } from './mounts.js';

export interface StoppedProcess {
  pid: number;
  command: string;
}

export interface FenceReport {
  dataset: string;
  present: boolean;
  /** mounted when the fence began */
  wasMounted: boolean;
  readonly: 'set' | 'already' | 'failed';
  /** processes killed because they used the file system */
  stopped: StoppedProcess[];
  unmounted: boolean;
  /** what could not be done, with the command's error */
  problems: string[];
  /** nothing on this host can write the dataset: absent or not mounted */
  fenced: boolean;
}

export interface FenceOptions {
  /** called once per step, for progress output */
  onStep?: (s: string) => void;
}

/** unmount attempts, ~4 s in all (config FENCE_ACTION_S counts on it) */
const UNMOUNT_ATTEMPTS = 8;

/** One line for logs and command output: "readonly set, stopped 2 processes (1234 sh, 1240 tail), unmounted". */
export function describeFence(r: FenceReport): string {
  if (!r.present) return `${r.dataset} absent`;
  const parts = [`readonly ${r.readonly}`];
  if (r.stopped.length) parts.push(`stopped ${r.stopped.length} process${r.stopped.length === 1 ? '' : 'es'} (${r.stopped.map((p) => `${p.pid} ${p.command}`).join(', ')})`);
  parts.push(r.wasMounted ? (r.unmounted ? 'unmounted' : 'STILL MOUNTED') : 'was not mounted');
  if (r.problems.length) parts.push(`problems: ${r.problems.join('; ')}`);
  return parts.join(', ');
}

/**
 * STORAGE_UNSAFE_SKIP_FENCE=1 breaks the product on purpose, for one test only: every fence
 * does nothing and reports success, so that the chaos tier can show its checker catching
 * two writable copies (test/chaos). Never set it anywhere else; the agent warns at start.
 */
export function fencingDisabledForTests(): boolean {
  return process.env['STORAGE_UNSAFE_SKIP_FENCE'] === '1';
}

export async function fenceDataset(zfs: Zfs, dataset: string, o: FenceOptions = {}): Promise<FenceReport> {
  const step = o.onStep ?? (() => {});
  const r: FenceReport = { dataset, present: true, wasMounted: false, readonly: 'already', stopped: [], unmounted: false, problems: [], fenced: false };
  if (fencingDisabledForTests()) {
    process.stderr.write(`fence of ${dataset} SKIPPED: STORAGE_UNSAFE_SKIP_FENCE=1 (test only)\n`);
    return { ...r, fenced: true, problems: ['fencing disabled (STORAGE_UNSAFE_SKIP_FENCE=1)'] };
  }
  if (!(await zfs.exists(dataset))) {
    r.present = false;
    r.fenced = true;
    return r;
  }
  let mnt = mountpointOf(dataset);
  r.wasMounted = mnt !== undefined;
  try {
    const { readonly } = await zfs.get(dataset, ['readonly']);
    if (readonly !== 'on') {
      await zfs.set(dataset, { readonly: 'on' });
      r.readonly = 'set';
      step(`${dataset}: readonly=on (new writes get EROFS)`);
    }
  } catch (e) {
    // OpenZFS 2.3 sets the property, then fails to remount a mount with writers read-only
    // ("property may be set but unable to remount filesystem"; 2.1 remounted at once): the
    // property holds for every later mount, and the writers are stopped and the mount
    // removed below. Only a property that did not change is a failure.
    const now = await zfs.get(dataset, ['readonly']).catch(() => undefined);
    if (now?.readonly === 'on') {
      r.readonly = 'set';
      step(`${dataset}: readonly=on set; the busy mount kept writing until its writers are stopped (${(e as Error).message.split('\n')[0]})`);
    } else {
      r.readonly = 'failed';
      r.problems.push(`readonly: ${(e as Error).message}`);
    }
  }
  const attempts = UNMOUNT_ATTEMPTS;
  for (let attempt = 1; mnt !== undefined && attempt <= attempts; attempt++) {
    try {
      const killed = await killUsers(mnt);
      if (killed.length) step(`${dataset}: stopped ${killed.map((p) => `${p.pid} ${p.command}`).join(', ')}`);
      for (const k of killed) if (!r.stopped.some((s) => s.pid === k.pid)) r.stopped.push(k);
    } catch (e) {
      // still try the unmount: an idle file system needs no kill
      if (!r.problems.includes((e as Error).message)) r.problems.push((e as Error).message);
    }
    try {
      await zfs.unmount(dataset);
      r.unmounted = true;
      step(`${dataset}: unmounted`);
      break;
    } catch (e) {
      const busy = e instanceof ZfsCommandError && e.kind === 'busy';
      if (!busy || attempt === attempts) {
        r.problems.push(`unmount: ${(e as Error).message}`);
        if (!busy) break;
      }
      await new Promise((res) => setTimeout(res, 150 * attempt));
      mnt = mountpointOf(dataset);
      if (mnt === undefined) r.unmounted = true; // let go asynchronously (zfs-fuse)
    }
  }
  r.fenced = mountpointOf(dataset) === undefined;
  if (r.fenced && r.wasMounted) r.unmounted = true;
  return r;
}

/**
 * Kills (SIGKILL) every process that uses the file system mounted at `mountpoint`
 * (open files, working directory, root, executable, mapped files), never this process.
 * `fuser -M` refuses unless `mountpoint` is a mount point.
 */
export async function killUsers(mountpoint: string): Promise<StoppedProcess[]> {
  const pids = await usersOf(mountpoint);
  const out: StoppedProcess[] = [];
  for (const pid of pids) {
    if (pid === process.pid || pid <= 1) continue;
    const command = commandOf(pid);
    try {
      process.kill(pid, 'SIGKILL');
      out.push({ pid, command });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw new Error(`kill ${pid} (${command}) using ${mountpoint}: ${(e as Error).message}`);
    }
  }
  return out;
}

/** pids using the file system mounted at `mountpoint` (fuser -M -m). */
export function usersOf(mountpoint: string): Promise<number[]> {
  const argv = ['fuser', '-M', '-m', mountpoint];
  return new Promise((resolve, reject) => {
    execFile(argv[0]!, argv.slice(1), { timeout: 30_000 }, (err, stdout, stderr) => {
      // exit 1 with nothing on stdout: no process uses it
      if (err && !((err as { code?: unknown }).code === 1 && stdout.trim() === '' && !/not a mount ?point|No such file/i.test(stderr))) {
        const code = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'not installed (apt-get install psmisc)' : `exit ${String((err as { code?: unknown }).code)}`;
        const why = stderr.split('\n').filter((l) => l.trim() && !/^Cannot stat/.test(l)).slice(0, 4).join(' | ');
        reject(new Error(`${argv.join(' ')} (${code}): ${why || err.message}`));
        return;
      }
      resolve([...stdout.matchAll(/\d+/g)].map((m) => Number(m[0])));
    });
  });
}

/** /proc/<pid>/comm, or '?' once the process is gone. */
export function commandOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '?';
  }
}

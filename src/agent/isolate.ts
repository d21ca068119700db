// Isolating a mounted file system for a copy into it: its writers are stopped, and root
// gets a private writable view of the same file system. `restore --mode rollback`
// (src/agent/restore.ts) copies the snapshot through that view while the tenant's path
// is read-only.
//
//   1. a root-only directory <privateRoot>/<name>.<pid> (privateRoot: mode 0700, owned by
//      root, not a symlink, not inside the mount), so no tenant process can reach the view;
//   2. `mount --bind <mnt> <view>` BEFORE the tenant path is made read-only (a bind mount
//      copies the mount's flags); a view that comes out read-only (a run interrupted
//      after step 3 left <mnt> read-only) is remounted `remount,bind,rw`;
//   3. `mount -o remount,bind,ro <mnt>`: the read-only flag of that one mount (not of the
//      file system): a write on the tenant path fails EROFS at once, the view stays
//      writable. Linux refuses (EBUSY, mount exits 32 "mount point is busy") while a file
//      is open for writing through <mnt>; then the writers are ended and it is retried:
//      `fuser -M -m <mnt>` lists the processes using the file system (-M: fuser refuses a
//      path that is not a mount point; a plain -m would match the parent file system and
//      we would kill its users), and of those, the ones holding a descriptor of this very
//      mount open for writing (/proc/<pid>/fdinfo: mnt_id and the access mode) are killed
//      (SIGKILL; never this process or its ancestors). Readers and processes that only
//      have their working directory inside keep running: they do not block the remount
//      and cannot write any more (EROFS). If it is still busy and no writing descriptor
//      is seen (a shared writable mapping whose descriptor was closed: fuser shows just
//      "m"), every process fuser lists is killed.
//   release({ writable }): `remount,bind,rw <mnt>` when asked, then a plain umount of the
//      view (never -l or -f) and rmdir.
//
// Measured on this project's sandbox (zfs-fuse 0.7, i.e. a FUSE mount "fuse.zfs", Linux
// 6.x): all three mount operations behave on FUSE as on any file system (the read-only
// flag is checked by the VFS, per mount, before FUSE sees the request): EROFS on the
// tenant path, writes through the view succeed, EBUSY while a descriptor is open for
// writing. `zfs set readonly=on` is no such fence on zfs-fuse (an open descriptor keeps
// writing), and an unmount would expose the empty mountpoint directory, where new writes
// would land on the parent file system.
//
// Limits: only this mount is made read-only. A bind mount of the same file system in
// another mount namespace (a container) stays writable; its processes are matched by
// fuser (same device) and killed only when they hold a file open for writing through
// this mount. `zfs unmount` of the dataset still succeeds while the view exists (the view
// keeps the file system reachable for root).
import { commandOf, usersOf } from '../zfs/fence.js';
import { readMounts, type MountEntry } from '../zfs/mounts.js';
import { spawn } from 'node:child_process';
import { lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, realpathSync, chmodSync, rmdirSync } from 'node:fs';

export interface StoppedProcess {
  pid: number;
  /** /proc/<pid>/comm */
  command: string;
  /** what it held: "held <file> open for writing", or "used the file system" */
  reason: string;
}

export interface Isolation {
  /** the mount point whose writers were stopped: read-only until release */
  mountpoint: string;
  /** root's private writable view of the same file system */
  view: string;
  /** the processes killed so that the mount point could be made read-only */
  stopped: StoppedProcess[];
  /**
   * Unmounts and removes the view. writable: makes the mount point writable again;
   * false leaves it read-only. Throws (after trying every step) naming what failed.
   */
  release(o: { writable: boolean }): Promise<void>;
}

export interface IsolateOptions {
  /** root-only directory that holds the private view (created 0700 when missing) */
  privateRoot: string;
  /** the view is <privateRoot>/<name>.<pid>; a view of an interrupted run with the same name is removed first */
  name: string;
  /** the file system expected at the mount point (mountinfo's source, e.g. the dataset) */
  source: string;
  /** remount attempts (default 8) */
  attempts?: number;
  onStep?: (s: string) => void;
}

export class IsolationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'IsolationError';
  }
}

export async function isolate(mountpoint: string, o: IsolateOptions): Promise<Isolation> {
  const step = o.onStep ?? (() => {});
  const mnt = mountAt(mountpoint);
  if (!mnt || mnt.source !== o.source) throw new IsolationError(`${mountpoint} is not a mount of ${o.source} (mountinfo: ${mnt ? `${mnt.fstype} ${mnt.source}` : 'not a mount point'})`);
  privateDirectory(o.privateRoot, mountpoint);
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(o.name)) throw new IsolationError(`isolate: bad view name ${JSON.stringify(o.name)}`);
  await removeLeftovers(o.privateRoot, o.name, step);

  const view = `${o.privateRoot}/${o.name}.${process.pid}`;
  mkdirSync(view, { mode: 0o700 });
  try {
    await run(['mount', '--bind', mountpoint, view]);
  } catch (e) {
    rmdirSync(view);
    throw e;
  }
  const stopped: StoppedProcess[] = [];
  try {
    if (isReadOnly(view)) await run(['mount', '-o', 'remount,bind,rw', view]);
    await makeReadOnly(mountpoint, o.attempts ?? 8, stopped, step);
  } catch (e) {
    await unmountView(view).catch(() => undefined);
    throw e;
  }
  return {
    mountpoint,
    view,
    stopped,
    async release({ writable }) {
      const problems: string[] = [];
      if (writable) {
        if (mountAt(mountpoint)?.source === o.source) await run(['mount', '-o', 'remount,bind,rw', mountpoint]).catch((e: Error) => problems.push(e.message));
        else problems.push(`${mountpoint} is no longer a mount of ${o.source} (unmounted meanwhile?): not made writable`);
      }
      await unmountView(view).catch((e: Error) => problems.push(e.message));
      if (problems.length) throw new IsolationError(problems.join('; '));
    },
  };
}

/** `mount -o remount,bind,ro`, ending the processes that keep it busy; fills `stopped`. */
async function makeReadOnly(mountpoint: string, attempts: number, stopped: StoppedProcess[], step: (s: string) => void): Promise<void> {
  const spare = ancestors();
  for (let attempt = 1; ; attempt++) {
    const argv = ['mount', '-o', 'remount,bind,ro', mountpoint];
    const r = await exec(argv);
    if (r.code === 0) return;
    const busy = /busy/i.test(r.stderr);
    if (!busy || attempt >= attempts) {
      const killed = stopped.length ? `; stopped before: ${describeStopped(stopped)}` : '';
      throw new IsolationError(`${argv.join(' ')} (exit ${r.code}): ${r.stderr.trim() || '(no stderr)'}${busy ? ` (still busy after ${attempt} attempts)` : ''}${killed}`);
    }
    const mountId = mountAt(mountpoint)?.id;
    const users = (await processesUsing(mountpoint)).filter((pid) => !spare.has(pid));
    const writers = users.map((pid) => ({ pid, file: writableFileOf(pid, mountId) })).filter((w) => w.file !== undefined);
    const victims = writers.length ? writers.map((w) => ({ pid: w.pid, reason: `held ${w.file} open for writing` })) : users.map((pid) => ({ pid, reason: 'used the file system (no descriptor open for writing seen: a writable mapping?)' }));
    const now: StoppedProcess[] = [];
    for (const v of victims) {
      const command = commandOf(v.pid);
      try {
        process.kill(v.pid, 'SIGKILL');
        now.push({ pid: v.pid, command, reason: v.reason });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw new IsolationError(`kill -KILL ${v.pid} (${command}), a writer of ${mountpoint}: ${(e as Error).message}`);
      }
    }
    if (now.length) step(`${mountpoint}: stopped ${describeStopped(now)}`);
    for (const s of now) if (!stopped.some((x) => x.pid === s.pid)) stopped.push(s);
    // a killed process lets go of its files as it exits
    await new Promise((res) => setTimeout(res, 100 * attempt));
  }
}

export function describeStopped(s: readonly StoppedProcess[]): string {
  return s.map((p) => `${p.pid} ${p.command} (${p.reason})`).join(', ');
}

/** pids of the processes using the file system mounted at `mountpoint` (zfs/fence.ts usersOf: `fuser -M -m`). */
export async function processesUsing(mountpoint: string): Promise<number[]> {
  try {
    return await usersOf(mountpoint);
  } catch (e) {
    throw new IsolationError((e as Error).message);
  }
}

/** A file of mount `mountId` that `pid` holds open for writing (O_WRONLY or O_RDWR), if any. */
function writableFileOf(pid: number, mountId: number | undefined): string | undefined {
  if (mountId === undefined) return undefined;
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fdinfo`);
  } catch {
    return undefined; // gone, or not ours to inspect
  }
  for (const fd of fds) {
    try {
      const info = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
      const flags = parseInt(/^flags:\s*([0-7]+)/m.exec(info)?.[1] ?? '0', 8);
      const mnt = Number(/^mnt_id:\s*(\d+)/m.exec(info)?.[1] ?? -1);
      if (mnt === mountId && (flags & 3) !== 0) return readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      // the descriptor was closed meanwhile
    }
  }
  return undefined;
}

/** this process and its ancestors: never killed (an operator's shell may sit inside the mount) */
function ancestors(): Set<number> {
  const out = new Set<number>([process.pid]);
  for (let pid = process.ppid; pid > 1 && !out.has(pid); ) {
    out.add(pid);
    try {
      // the fields after the command (which may hold spaces and parentheses): state ppid ...
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      pid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    } catch {
      break;
    }
  }
  return out;
}

/** privateRoot: a directory, not a symlink, owned by root, no access for group/others, not inside `mountpoint`. */
function privateDirectory(dir: string, mountpoint: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  const uid = process.getuid?.() ?? 0;
  if (!st.isDirectory() || st.uid !== uid) throw new IsolationError(`${dir} must be a directory owned by uid ${uid} (it is ${st.isSymbolicLink() ? 'a symlink' : st.isDirectory() ? `owned by uid ${st.uid}` : 'not a directory'})`);
  if ((st.mode & 0o077) !== 0) chmodSync(dir, 0o700);
  const real = realpathSync(dir);
  const m = realpathSync(mountpoint);
  if (real === m || real.startsWith(`${m}/`)) throw new IsolationError(`the private directory ${dir} is inside ${mountpoint}: choose one outside the tenant's tree`);
}

/** Views of an interrupted run (<privateRoot>/<name>.<pid>): unmounted (plainly) and removed. */
async function removeLeftovers(root: string, name: string, step: (s: string) => void): Promise<void> {
  const prefix = `${root}/${name}.`;
  const mounted = readMounts().filter((m) => m.mountpoint.startsWith(prefix));
  for (const m of mounted.reverse()) {
    await run(['umount', m.mountpoint]);
    step(`unmounted the view of an interrupted run: ${m.mountpoint}`);
  }
  for (const e of readdirSync(root)) if (e.startsWith(`${name}.`)) rmdirSync(`${root}/${e}`);
}

async function unmountView(view: string): Promise<void> {
  for (let attempt = 1; mountAt(view); attempt++) {
    const argv = ['umount', view];
    const r = await exec(argv);
    if (r.code === 0) break;
    if (!/busy/i.test(r.stderr) || attempt >= 5) throw new IsolationError(`${argv.join(' ')} (exit ${r.code}): ${r.stderr.trim() || '(no stderr)'}`);
    await new Promise((res) => setTimeout(res, 200 * attempt));
  }
  rmdirSync(view);
}


/** Whether the mount on top at `mountpoint` is read-only (undefined: not a mount point). */
export function isReadOnly(mountpoint: string): boolean | undefined {
  return mountAt(mountpoint)?.options.includes('ro');
}

/** The mount on top at `path` (the last one mounted there), if `path` is a mount point. */
function mountAt(path: string): MountEntry | undefined {
  return readMounts()
    .filter((m) => m.mountpoint === path)
    .pop();
}

async function run(argv: string[]): Promise<void> {
  const r = await exec(argv);
  if (r.code !== 0) throw new IsolationError(`${argv.join(' ')} (${r.code === 'ENOENT' ? 'not installed' : `exit ${r.code}`}): ${r.stderr.trim() || '(no stderr)'}`);
}

/** argv (no shell): exit code (or 'ENOENT'), stdout, stderr. Never rejects. */
function exec(argv: string[]): Promise<{ code: number | string; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      if (stdout.length < 1 << 20) stdout += d.toString('utf8');
    });
    child.stderr.on('data', (d: Buffer) => {
      if (stderr.length < 1 << 16) stderr += d.toString('utf8');
    });
    child.once('error', (e: NodeJS.ErrnoException) => resolve({ code: e.code ?? 'error', stdout, stderr: e.message }));
    child.once('close', (code, signal) => resolve({ code: code ?? `signal ${signal}`, stdout, stderr }));
  });
}

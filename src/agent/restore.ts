// storagectl restore <project> <snapshot> [--from HOST] [--mode clone|rollback], run on
// the project's primary; storagectl restore <project> --cleanup [<snapshot>]. See
// docs/failover-move-restore.md.
//
//  clone    (default) the snapshot mounted read-only at <mountBase>/.restore/<uuid>/<snap>
//           for file recovery; the live dataset is not touched. `--cleanup` removes these
//           clones and copies again (cleanupRestores), so the origin snapshot can be pruned.
//  rollback the live tree is made equal to the snapshot by copying it back (rsync
//           --delete from a read-only clone) while the tenant cannot write: the tenant's
//           path is remounted read-only (its writers killed) and root copies through a
//           private bind mount of it (src/agent/isolate.ts). Before the copy, a safety
//           snapshot of the live state (@pre-restore-<time>, a named snapshot: never
//           pruned automatically); after it, a snapshot @restored-<time>. `zfs rollback` to
//           an older snapshot would need -r, which destroys every later snapshot (and
//           breaks the replicas' incremental base): this path keeps every snapshot and the
//           lineage the replicas share.
// A snapshot the primary no longer has is fetched back from a replica first (a full
// stream of that one snapshot over SSH into <pool>/restore/<uuid>-<snap>).
import { withTimeout } from '../util/timeout.js';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Agent } from './agent.js';
import { sshTarget } from './agent.js';
import type { Config } from './config.js';
import { describeStopped, isolate, isReadOnly, processesUsing, type StoppedProcess } from './isolate.js';
import { withProjectLease } from '../lock/lease.js';
import { crashPoint } from '../util/crash-point.js';
import type { ProjectOperation } from '../catalog/types.js';
import { formatRemoteCommand } from '../replica/protocol.js';
import { fetchListing } from '../replica/listing.js';
import { ZfsCommandError, retryBusy } from '../zfs/index.js';
import * as v from '../util/validate.js';

export type RestoreMode = 'clone' | 'rollback';

export interface RestoreOptions {
  mode: RestoreMode;
  /** fetch the snapshot from this replica host even if the primary has it */
  from?: string;
  owner: string;
  /** the project lease (rollback), default 120 s */
  leaseMs?: number;
  onStep?: (s: string) => void;
  onProgress?: (bytes: number, elapsedMs: number) => void;
}

export interface RestoreResult {
  project: string;
  snapshot: string;
  mode: RestoreMode;
  /** where the snapshot came from: this host, or the replica host it was fetched from */
  source: { host: string; fetched: boolean; bytes?: number };
  /** clone: the read-only dataset and where it is mounted */
  clone?: { dataset: string; mountpoint: string };
  /** rollback: the snapshot of the state before, and the one after */
  safetySnapshot?: string;
  restoredSnapshot?: string;
  /** rollback: the processes killed to stop writes (they held files open for writing) */
  stoppedProcesses?: StoppedProcess[];
  /** rollback: whether the copy carried POSIX ACLs and xattrs (false: the file system stores none) */
  attributes?: { acls: boolean; xattrs: boolean };
}

/** Refused before anything changed (bad input, no such snapshot): storagectl exits 2. */
export class RestoreError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RestoreError';
  }
}

/** A rollback failed after it began; the message says in which state it left the live tree (exit 1). */
export class RollbackError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RollbackError';
  }
}

/** <pool>/restore/<uuid>-<snap without colons>: the clone or fetched copy of one snapshot. */
export function restoreDatasetName(c: Pick<Config, 'pool'>, projectId: string, snapshot: string): string {
  return `${c.pool}/restore/${projectId}-${snapshot.replace(/:/g, '')}`;
}

export async function restore(agent: Agent, projectId: string, snapshot: string, o: RestoreOptions): Promise<RestoreResult> {
  v.projectId(projectId, 'restore');
  v.snapshotName(snapshot, 'restore');
  if (o.from) v.hostId(o.from, 'restore --from');
  const { catalog, zfs, config: c } = agent;
  const step = o.onStep ?? (() => {});
  const p = await catalog.getProject(projectId);
  if (!p) throw new RestoreError(`project ${projectId} is not in the catalog`);
  if (p.primary !== c.host) throw new RestoreError(`project ${projectId} is served by ${p.primary ?? 'no host'}, not ${c.host}: restore there`);
  const live = `${c.projectsRoot}/${projectId}`;
  const restoreRoot = `${c.pool}/restore`;
  const safe = snapshot.replace(/:/g, '');
  const copyName = restoreDatasetName(c, projectId, snapshot);
  const mountpoint = `${c.mountBase}/.restore/${projectId}/${safe}`;
  await zfs.ensureDataset(restoreRoot, { canmount: 'off', mountpoint: 'none' });

  // 1. where the snapshot is
  let source: RestoreResult['source'];
  let origin: string; // dataset@snap to read from
  const localSnaps = (await zfs.list(live, { depth: 0 })).get(live)?.snapshots ?? [];
  if (!o.from && localSnaps.some((s) => s.snap === snapshot)) {
    source = { host: c.host, fetched: false };
    origin = `${live}@${snapshot}`;
  } else {
    const copySnaps = (await zfs.exists(copyName)) ? (await zfs.list(copyName, { depth: 0 })).get(copyName)?.snapshots ?? [] : undefined;
    if (copySnaps?.some((s) => s.snap === snapshot)) {
      step(`using the copy fetched earlier: ${copyName}`);
      source = { host: o.from ?? '(earlier fetch)', fetched: true };
    } else {
      if (copySnaps) throw new RestoreError(`${copyName} exists but has no snapshot ${snapshot}: remove it or choose another snapshot`);
      const hosts = new Map((await catalog.listHosts()).map((h) => [h.id, h]));
      const looked: string[] = [];
      let holder: string | undefined;
      for (const id of o.from ? [o.from] : p.targets) {
        const h = hosts.get(id);
        if (!h) {
          looked.push(`${id}: not in the catalog`);
          continue;
        }
        try {
          const l = await fetchListing(agent.ssh, h, { timeoutSeconds: 30, projects: [projectId] });
          if (l.datasets[projectId]?.snapshots.some((s) => s.snap === snapshot)) {
            holder = id;
            break;
          }
          looked.push(`${id}: no such snapshot`);
        } catch (e) {
          looked.push(`${id}: ${(e as Error).message}`);
        }
      }
      if (!holder) throw new RestoreError(`snapshot ${snapshot} of ${projectId} is not on ${c.host}${o.from ? '' : ' nor on any replica'}: ${looked.join('; ')}`);
      step(`fetching ${snapshot} from ${holder} into ${copyName}`);
      const recv = await zfs.recv({ target: copyName, noMount: true });
      const conn = agent.ssh.get(sshTarget(hosts.get(holder)!));
      let bytes = 0;
      recv.done.catch(() => undefined); // observed below; a receiver that dies early must not crash the process
      try {
        const res = await conn.download(formatRemoteCommand({ op: 'send', project: projectId, snap: snapshot }), recv.stream, { onProgress: (pr) => o.onProgress?.(pr.bytes, pr.elapsedMs), sinkDone: recv.done });
        bytes = res.bytes;
        // the whole stream is in: `zfs receive` must finish within the operation timeout
        await withTimeout(recv.done, c.ssh.operationTimeout * 1000, () => `${recv.argv.join(' ')} did not exit within ${c.ssh.operationTimeout} s after the whole stream (${bytes} bytes) was written to it`);
      } catch (e) {
        recv.kill();
        // the receiver's own error (if it died first) explains more than the EPIPE it caused
        const recvErr = await withTimeout(recv.done, 10_000, () => `${recv.argv.join(' ')} ignored SIGTERM`).then(() => undefined, (x: Error) => x);
        const why = recvErr && !/SIGTERM|signal/.test(recvErr.message) ? `${(e as Error).message}; ${recvErr.message}` : (e as Error).message;
        throw new RestoreError(`fetching ${snapshot} from ${holder} failed: ${why}`);
      }
      source = { host: holder, fetched: true, bytes };
      step(`fetched ${bytes} bytes`);
    }
    origin = `${copyName}@${snapshot}`;
  }

  if (o.mode === 'clone') {
    // the fetched copy itself, or a clone of the local snapshot, under the same name
    const dataset = copyName;
    if (source.fetched) await setIfDifferent(agent, dataset, { readonly: 'on', canmount: 'noauto', mountpoint });
    else {
      if (await zfs.exists(dataset)) throw new RestoreError(`${dataset} already exists (an earlier restore of this snapshot?): it is mounted at ${mountpoint}, or remove it first`);
      await zfs.clone(origin, dataset, { readonly: true, mountpoint, canmount: 'noauto' });
    }
    const { mounted } = await zfs.get(dataset, ['mounted']);
    if (mounted !== 'yes') await zfs.mount(dataset);
    await catalog.addEvent({ project: projectId, host: c.host, kind: 'restore-clone', detail: `${snapshot} from ${source.host} mounted read-only at ${mountpoint} (${dataset})` });
    return { project: projectId, snapshot, mode: 'clone', source, clone: { dataset, mountpoint } };
  }

  // rollback: under the project lock (no move or failover meanwhile)
  const tmp = `${restoreRoot}/${projectId}-rollback`;
  const tmpMount = `${c.mountBase}/.restore/${projectId}/.rollback-source`;
  rsyncBin(); // installed? (before anything changes)
  return withProjectLease(catalog, projectId, o.owner, o.leaseMs ?? 120_000, async (lease) => {
    crashPoint('restore', 'locked');
    // the operation goes on the project row (the cycle neither snapshots nor replicates a
    // project being restored; a re-run after a crash finds it and finishes)
    const row = await catalog.getProject(projectId);
    if (!row || row.primary !== c.host || row.state !== 'active') throw new RestoreError(`project ${projectId} is ${row ? `${row.state} on ${row.primary ?? 'no host'}` : 'not in the catalog'} now: not restoring`);
    if (row.operation && row.operation.kind !== 'restore') throw new RestoreError(`project ${projectId} has a ${row.operation.kind} in progress (since ${new Date(row.operation.startedAt).toISOString()}): finish it first`);
    const op: ProjectOperation = { kind: 'restore', from: c.host, to: c.host, snapshot, guid: null, creation: null, token: lease.token, startedAt: Date.now(), step: 'recorded', mode: 'rollback' };
    await lease.check('record the restore');
    await catalog.setLocation(projectId, c.host, 'active', lease.token, op);
    crashPoint('restore', 'recorded');
    try {
      // a read-only view of the snapshot to copy from. Its ACL and xattr settings are the
      // live dataset's: a clone takes them from its parent (<pool>/restore), and a view
      // with acltype=off would show no ACLs, which the copy would then strip
      const attrProps = await aclXattrProps(agent, live);
      let from: string;
      if (source.fetched) {
        // a copy a clone-mode restore mounted: unmounted before its mountpoint changes (a set
        // remounts it, and zfs-fuse answers "busy" for a moment after it was last read)
        const { mounted } = await zfs.get(copyName, ['mounted']);
        if (mounted === 'yes') await retryBusy(() => zfs.unmount(copyName));
        await retryBusy(() => setIfDifferent(agent, copyName, { ...attrProps, readonly: 'on', canmount: 'noauto', mountpoint: tmpMount }));
        from = copyName;
      } else {
        if (await zfs.exists(tmp)) {
          // a clone left by an interrupted rollback: it holds no data of its own
          await zfs.destroyDataset(tmp);
        }
        await zfs.clone(origin, tmp, { readonly: true, mountpoint: tmpMount, canmount: 'noauto', props: attrProps });
        from = tmp;
      }
      if ((await zfs.get(from, ['mounted'])).mounted !== 'yes') await zfs.mount(from);
      const { mounted, mountpoint: liveMount } = await zfs.get(live, ['mounted', 'mountpoint']);
      const wasMounted = mounted === 'yes';
      if (!wasMounted) await zfs.mount(live);

      // a path still read-only: an interrupted rollback left it, possibly half-restored
      const leftReadOnly = isReadOnly(liveMount!) === true;
      if (leftReadOnly) step(`${liveMount} is read-only already (an interrupted restore left it so): this restore finishes the copy`);
      // writes stop: the tenant's path turns read-only (its writers killed), root copies
      // through a private bind mount of it (src/agent/isolate.ts)
      await lease.check('stop the writes');
      const iso = await isolate(liveMount!, { privateRoot: `${c.stateDir}/restore-views`, name: projectId, source: live, onStep: step }).catch((e: Error) => {
        const ro = isReadOnly(liveMount!) ? 'read-only (as an interrupted restore left it: re-run to finish)' : 'writable';
        throw new RollbackError(`restore of ${projectId} to ${snapshot}: could not stop the writes: ${e.message}. Nothing was copied; ${liveMount} is ${ro}`);
      });
      step(iso.stopped.length ? `${liveMount} is read-only; stopped ${describeStopped(iso.stopped)}` : `${liveMount} is read-only (no process was writing)`);
      crashPoint('restore', 'writes-stopped');
      const stamp = v.autoSnapshotName(new Date()).replace(/:/g, '');
      const safety = `pre-restore-${stamp}`;
      const restored = `restored-${stamp}`;
      let attributes: { acls: boolean; xattrs: boolean };
      // the tenant path becomes writable again unless the tree may be half-restored: this
      // copy began and did not finish, or an interrupted one left it so and this copy did
      // not finish either (a half-restored tree stays read-only: re-running finishes it)
      let copy: 'not started' | 'begun' | 'done' = 'not started';
      try {
        // after the writes stopped: the safety snapshot holds every write made before
        await zfs.snapshot([`${live}@${safety}`]);
        step(`safety snapshot ${live}@${safety}`);
        crashPoint('restore', 'safety-snapshot');
        attributes = await attributeSupport(agent, live, iso.view);
        if (!attributes.xattrs || !attributes.acls) step(`the file system of ${live} stores no ${[!attributes.xattrs && 'extended attributes', !attributes.acls && 'POSIX ACLs'].filter(Boolean).join(' and ')}: copying without ${!attributes.xattrs ? '-X and ' : ''}-A`);
        step(`copying ${tmpMount}/ over ${liveMount}/ (through ${iso.view})`);
        await lease.check('copy the snapshot over the live tree');
        copy = 'begun';
        await rsync(`${tmpMount}/`, `${iso.view}/`, attributes);
        copy = 'done';
        crashPoint('restore', 'copied');
        await zfs.snapshot([`${live}@${restored}`]);
        crashPoint('restore', 'restored-snapshot');
      } catch (e) {
        const half = copy === 'begun' || (leftReadOnly && copy !== 'done');
        const released = await iso.release({ writable: !half }).then(
          () => '',
          (x: Error) => `; releasing the view failed: ${x.message}`,
        );
        const state = half
          ? `${liveMount} is left READ-ONLY with a half-restored tree: re-run this restore to finish it (${leftReadOnly ? 'the state before the first, interrupted restore is its @pre-restore-* snapshot' : `the state before is @${safety}`}), or make it writable as it is with: mount -o remount,bind,rw ${liveMount}`
          : copy === 'done'
            ? `the live tree equals ${snapshot} and ${liveMount} is writable again, but the snapshot @${restored} was not taken`
            : `nothing was copied; ${liveMount} is writable again`;
        throw new RollbackError(`restore of ${projectId} to ${snapshot} failed: ${(e as Error).message}. ${state}${released}`);
      }
      await iso.release({ writable: true }).catch((e: Error) => {
        throw new RollbackError(`the live tree of ${projectId} equals ${snapshot} (snapshot @${restored}), but: ${e.message}`);
      });
      await catalog.setLocation(projectId, c.host, 'active', lease.token, null);
      if (!wasMounted) await zfs.unmount(live);
      step(`live state now equals ${snapshot}; snapshot ${live}@${restored}; ${liveMount} writable again`);
      // the temporary read-only view goes; a fetched copy is kept for clone-mode access
      await zfs.unmount(from).catch(() => undefined);
      if (from === tmp) await zfs.destroyDataset(tmp);
      else await setIfDifferent(agent, copyName, { mountpoint: 'none' });
      const killed = iso.stopped.length ? `; stopped ${describeStopped(iso.stopped)}` : '';
      await catalog.addEvent({ project: projectId, host: c.host, kind: 'restore-rollback', detail: `live state set to ${snapshot} (from ${source.host}); before: @${safety}; after: @${restored}${killed}` });
      return { project: projectId, snapshot, mode: 'rollback', source, safetySnapshot: safety, restoredSnapshot: restored, stoppedProcesses: iso.stopped, attributes } as RestoreResult;
    } catch (e) {
      // the row keeps the operation only while the tree may be half-restored (the tenant
      // path is then left read-only, and the re-run finishes); otherwise the cycle may
      // snapshot and replicate the project again
      const mp = (await zfs.get(live, ['mountpoint']).catch(() => ({ mountpoint: undefined }))).mountpoint;
      if (!(mp && isReadOnly(mp) === true)) await catalog.setLocation(projectId, c.host, 'active', lease.token, null).catch(() => undefined);
      throw e;
    }
  });
}

/** zfs set only for the properties whose value differs (a same-value mountpoint set remounts). */
async function setIfDifferent(agent: Agent, dataset: string, props: Record<string, string>): Promise<void> {
  const cur = await agent.zfs.get(dataset, Object.keys(props));
  const change = Object.fromEntries(Object.entries(props).filter(([k, val]) => cur[k] !== val));
  if (Object.keys(change).length) await agent.zfs.set(dataset, change);
}

/**
 * rsync from → to, making `to` equal to `from`: contents, modes, owners (numeric), hard
 * links (-H), sparse files (-S: zero runs become holes), symlinks as symlinks (-a's -l),
 * xattrs (-X) and POSIX ACLs (-A) where the destination stores them, --delete, and no
 * crossing into other file systems (-x). argv, no shell; errors carry the command and stderr.
 */
async function rsync(from: string, to: string, attrs: { acls: boolean; xattrs: boolean }): Promise<void> {
  const flags = `-aHS${attrs.acls ? 'A' : ''}${attrs.xattrs ? 'X' : ''}`;
  // --checksum: zfs-fuse keeps whole-second mtimes, so size+mtime would skip same-size edits
  await run([rsyncBin(), flags, '--delete', '--checksum', '--numeric-ids', '--one-file-system', from, to]);
}

function rsyncBin(): string {
  const bin = ['/usr/bin/rsync', '/bin/rsync'].find((p) => existsSync(p));
  if (!bin) throw new RestoreError('rollback copies the snapshot back with rsync, which is not installed (apt-get install rsync)');
  return bin;
}

/**
 * Which file attributes the file system behind `dir` stores. xattrs: probed with rsync
 * itself: `--fake-super` keeps what it cannot apply (here a mode of 0444) in the xattr
 * user.rsync.%stat, so a one-file copy into `dir` fails "Operation not supported" exactly
 * when the file system takes no xattrs (measured: zfs-fuse takes none, through FUSE, even
 * with xattr=on). POSIX ACLs are xattrs on Linux (system.posix_acl_*): none without them;
 * with them, OpenZFS stores POSIX ACLs only with acltype=posix(acl).
 */
async function attributeSupport(agent: Agent, dataset: string, dir: string): Promise<{ acls: boolean; xattrs: boolean }> {
  const src = mkdtempSync(join(tmpdir(), 'storage-restore-probe-'));
  const dst = mkdtempSync(`${dir}/.storage-restore-probe-`);
  let xattrs = true;
  try {
    writeFileSync(`${src}/probe`, '');
    chmodSync(`${src}/probe`, 0o444);
    await run([rsyncBin(), '-a', '--fake-super', `${src}/probe`, `${dst}/`]);
  } catch (e) {
    if (!/Operation not supported|\(95\)/.test((e as Error).message)) throw e;
    xattrs = false;
  } finally {
    rmSync(src, { recursive: true, force: true });
    rmSync(dst, { recursive: true, force: true });
  }
  if (!xattrs) return { acls: false, xattrs };
  const acltype = (await aclXattrProps(agent, dataset)).acltype;
  return { acls: acltype === undefined || /^posix/.test(acltype), xattrs };
}

/** The live dataset's acltype and xattr (those this zfs knows: zfs-fuse has no acltype). */
async function aclXattrProps(agent: Agent, dataset: string): Promise<Record<string, string>> {
  for (const props of [['acltype', 'xattr'], ['xattr']]) {
    try {
      return await agent.zfs.get(dataset, props);
    } catch (e) {
      if (!(e instanceof ZfsCommandError)) throw e;
    }
  }
  return {};
}

async function run(argv: string[]): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => {
      if (err.length < 65536) err += d.toString('utf8');
    });
    child.once('error', (e) => reject(new RestoreError(`${argv.join(' ')}: ${e.message}`)));
    child.once('close', (code) => (code === 0 ? resolve() : reject(new RestoreError(`${argv.join(' ')} exited ${code}: ${err.trim() || '(no stderr)'}`))));
  });
}

export interface CleanupResult {
  project: string;
  host: string;
  /** the datasets unmounted and destroyed, with the snapshot each was cloned from (now prunable) */
  removed: Array<{ dataset: string; origin?: string; snapshots: string[] }>;
  /** the datasets left alone, and why (in use, snapshots restore did not make, ...) */
  kept: Array<{ dataset: string; reason: string }>;
}

/**
 * Removes the datasets restores of `projectId` made on this host under <pool>/restore:
 * the one of `snapshot`, or every <uuid>-<snap> (also a rollback's temporary clone left by
 * an interrupted run). Each is unmounted (plainly: a dataset in use is kept and its users
 * named) and destroyed without -r: the only snapshot it may hold is the one a fetch
 * received (@<snap>); any other snapshot or child dataset keeps it. Under the project lease
 * (no rollback is using a clone meanwhile).
 */
export async function cleanupRestores(agent: Agent, projectId: string, snapshot: string | undefined, o: { owner: string; onStep?: (s: string) => void }): Promise<CleanupResult> {
  v.projectId(projectId, 'restore --cleanup');
  if (snapshot !== undefined) v.snapshotName(snapshot, 'restore --cleanup');
  const { zfs, catalog, config: c } = agent;
  const step = o.onStep ?? (() => {});
  const prefix = `${c.pool}/restore/${projectId}-`;
  let names: string[];
  if (snapshot !== undefined) {
    const ds = restoreDatasetName(c, projectId, snapshot);
    if (!(await zfs.exists(ds))) throw new RestoreError(`nothing to clean up: there is no ${ds} on ${c.host}`);
    names = [ds];
  } else {
    // exactly the names restore gives: <uuid>-<snapshot name without colons>
    names = (await zfs.childNames(`${c.pool}/restore`)).filter((n) => n.startsWith(prefix) && isSnapshotName(n.slice(prefix.length)) && !n.slice(prefix.length).includes(':'));
  }
  const res: CleanupResult = { project: projectId, host: c.host, removed: [], kept: [] };
  return withProjectLease(catalog, projectId, o.owner, 60_000, async () => {
    for (const ds of names) {
      try {
        const r = await removeRestoreDataset(agent, ds, ds.slice(prefix.length));
        res.removed.push(r);
        step(`removed ${ds}${r.origin ? ` (a clone of ${r.origin})` : ''}`);
      } catch (e) {
        res.kept.push({ dataset: ds, reason: (e as Error).message });
        step(`kept ${ds}: ${(e as Error).message}`);
      }
    }
    if (res.removed.length) await catalog.addEvent({ project: projectId, host: c.host, kind: 'restore-cleanup', detail: `removed ${res.removed.map((r) => r.dataset).join(', ')}` });
    return res;
  });
}

async function removeRestoreDataset(agent: Agent, ds: string, suffix: string): Promise<CleanupResult['removed'][number]> {
  const { zfs, config: c } = agent;
  const tree = await zfs.list(ds, { depth: 1 });
  const children = [...tree.keys()].filter((n) => n !== ds);
  if (children.length) throw new Error(`it has child datasets restore does not make (${children.join(', ')}): left alone`);
  const snaps = tree.get(ds)?.snapshots.map((s) => s.snap) ?? [];
  // a fetched copy holds the one snapshot it received; a clone holds none
  const foreign = snaps.filter((s) => s.replace(/:/g, '') !== suffix);
  if (foreign.length) throw new Error(`it holds snapshots restore does not make (${foreign.join(', ')}): left alone`);
  const { mounted, mountpoint, origin } = await zfs.get(ds, ['mounted', 'mountpoint', 'origin']);
  if (mounted === 'yes') {
    try {
      await zfs.unmount(ds);
    } catch (e) {
      if (!(e instanceof ZfsCommandError && e.kind === 'busy')) throw e;
      const users = await processesUsing(mountpoint!).catch(() => [] as number[]);
      throw new Error(`${mountpoint} is in use${users.length ? ` by pid ${users.join(', ')}` : ''}: not unmounted (${e.message})`);
    }
  }
  for (const s of snaps) await zfs.destroySnapshot(`${ds}@${s}`);
  await zfs.destroyDataset(ds);
  // the mountpoint directory restore made (<mountBase>/.restore/<uuid>/<snap>), if empty
  const dir = `${c.mountBase}/.restore/`;
  if (mountpoint?.startsWith(dir)) {
    for (const d of [mountpoint, mountpoint.slice(0, mountpoint.lastIndexOf('/'))]) {
      if (d.length > dir.length) {
        try {
          rmdirSync(d);
        } catch {
          // not empty, or already gone
        }
      }
    }
  }
  return { dataset: ds, origin: origin && origin !== '-' ? origin : undefined, snapshots: snaps };
}

function isSnapshotName(s: string): boolean {
  try {
    v.snapshotName(s);
    return true;
  } catch {
    return false;
  }
}

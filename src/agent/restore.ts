// storagectl restore <project> <snapshot> [--from HOST] [--mode clone|rollback], run on
// the project's primary. See docs/failover-move-restore.md.
//
//  clone    (default) the snapshot mounted read-only at <mountBase>/.restore/<uuid>/<snap>
//           for file recovery; the live dataset is not touched.
//  rollback a safety snapshot of the live state first (@pre-restore-<time>, a named
//           snapshot: never pruned automatically), then the live tree is made equal to the
//           snapshot by copying it back (rsync --delete from a read-only clone), then a
//           snapshot @restored-<time>. `zfs rollback` to an older snapshot would need -r,
//           which destroys every later snapshot (and breaks the replicas' incremental base):
//           this path keeps every snapshot and the lineage the replicas share.
// A snapshot the primary no longer has is fetched back from a replica first (a full
// stream of that one snapshot over SSH into <pool>/restore/<uuid>-<snap>).
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import type { Agent } from './agent.js';
import { sshTarget } from './agent.js';
import { withProjectLease } from '../lock/lease.js';
import { formatRemoteCommand } from '../replica/protocol.js';
import { fetchListing } from '../replica/listing.js';
import * as v from '../util/validate.js';

export type RestoreMode = 'clone' | 'rollback';

export interface RestoreOptions {
  mode: RestoreMode;
  /** fetch the snapshot from this replica host even if the primary has it */
  from?: string;
  owner: string;
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
}

export class RestoreError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RestoreError';
  }
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
  const copyName = `${restoreRoot}/${projectId}-${safe}`;
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
      try {
        const [res] = await Promise.all([conn.download(formatRemoteCommand({ op: 'send', project: projectId, snap: snapshot }), recv.stream, { onProgress: (pr) => o.onProgress?.(pr.bytes, pr.elapsedMs) }), recv.done]);
        bytes = res.bytes;
      } catch (e) {
        recv.kill();
        await recv.done.catch(() => undefined);
        throw new RestoreError(`fetching ${snapshot} from ${holder} failed: ${(e as Error).message}`);
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
  let madeTmp = false;
  return withProjectLease(catalog, projectId, o.owner, 120_000, async () => {
    // a read-only view of the snapshot to copy from
    let from: string;
    if (source.fetched) {
      await setIfDifferent(agent, copyName, { readonly: 'on', canmount: 'noauto', mountpoint: tmpMount });
      from = copyName;
    } else {
      if (await zfs.exists(tmp)) {
        // a clone left by an interrupted rollback: it holds no data of its own
        await zfs.unmount(tmp, { force: true }).catch(() => undefined);
        await zfs.destroyDataset(tmp);
      }
      await zfs.clone(origin, tmp, { readonly: true, mountpoint: tmpMount, canmount: 'noauto' });
      madeTmp = true;
      from = tmp;
    }
    if ((await zfs.get(from, ['mounted'])).mounted !== 'yes') await zfs.mount(from);
    const stamp = v.autoSnapshotName(new Date()).replace(/:/g, '');
    const safety = `pre-restore-${stamp}`;
    await zfs.snapshot([`${live}@${safety}`]);
    step(`safety snapshot ${live}@${safety}`);
    const { mounted, mountpoint: liveMount } = await zfs.get(live, ['mounted', 'mountpoint']);
    const wasMounted = mounted === 'yes';
    if (!wasMounted) await zfs.mount(live);
    step(`copying ${tmpMount}/ over ${liveMount}/`);
    await rsync(`${tmpMount}/`, `${liveMount}/`);
    const restored = `restored-${stamp}`;
    await zfs.snapshot([`${live}@${restored}`]);
    if (!wasMounted) await zfs.unmount(live);
    step(`live state now equals ${snapshot}; snapshot ${live}@${restored}`);
    // the temporary read-only view goes; a fetched copy is kept for clone-mode access
    await zfs.unmount(from).catch(() => undefined);
    if (madeTmp) await zfs.destroyDataset(tmp);
    else await setIfDifferent(agent, copyName, { mountpoint: 'none' });
    await catalog.addEvent({ project: projectId, host: c.host, kind: 'restore-rollback', detail: `live state set to ${snapshot} (from ${source.host}); before: @${safety}; after: @${restored}` });
    return { project: projectId, snapshot, mode: 'rollback', source, safetySnapshot: safety, restoredSnapshot: restored } as RestoreResult;
  });
}

/** zfs set only for the properties whose value differs (a same-value mountpoint set remounts). */
async function setIfDifferent(agent: Agent, dataset: string, props: Record<string, string>): Promise<void> {
  const cur = await agent.zfs.get(dataset, Object.keys(props));
  const change = Object.fromEntries(Object.entries(props).filter(([k, val]) => cur[k] !== val));
  if (Object.keys(change).length) await agent.zfs.set(dataset, change);
}

/** rsync -aH --delete from → to (argv, no shell); errors carry the command and stderr. */
async function rsync(from: string, to: string): Promise<void> {
  const bin = ['/usr/bin/rsync', '/bin/rsync'].find((p) => existsSync(p));
  if (!bin) throw new RestoreError('rollback copies the snapshot back with rsync, which is not installed (apt-get install rsync)');
  mkdirSync(to, { recursive: true });
  // --checksum: zfs-fuse keeps whole-second mtimes, so size+mtime would skip same-size edits
  const argv = [bin, '-aH', '--delete', '--checksum', '--numeric-ids', from, to];
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

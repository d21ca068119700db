// Failover (see docs/failover-move-restore.md): lock the project (fencing token), pick
// the freshest live replica by the hosts' real listings (ties: least loaded), fence the
// old primary (catalog first, then unmount over SSH if it answers), promote the replica,
// switch the location with the token, release. Safe to re-run after a crash at any step.
import type { Catalog, HostRecord, ProjectRecord } from '../catalog/types.js';
import { projectLockName } from '../catalog/types.js';
import type { SshPool } from '../replica/transport.js';
import { formatRemoteCommand } from '../replica/protocol.js';
import { fetchListing } from '../replica/listing.js';
import * as v from '../util/validate.js';

export class LockedError extends Error {
  constructor(project: string, readonly owner: string, readonly until: number) {
    super(`project ${project} is locked by ${owner} until ${new Date(until).toISOString()}`);
    this.name = 'LockedError';
  }
}

export interface FailoverResult {
  project: string;
  from: string | null;
  to: string;
  snapshot: string;
  snapshotCreation: number;
  /** seconds between the promoted snapshot's creation and the failover */
  dataLossWindowSeconds: number;
  oldPrimaryFenced: 'unmounted' | 'unreachable' | 'none';
  candidates: Array<{ host: string; snapshot?: string; creation?: number; load: number; error?: string }>;
}

export interface FailoverOptions {
  to?: string;
  owner: string;
  graceMs: number;
  leaseMs?: number;
  now?: () => number;
  onStep?: (step: string) => void;
}

export async function failover(catalog: Catalog, ssh: SshPool, projectId: string, o: FailoverOptions): Promise<FailoverResult> {
  v.projectId(projectId, 'failover');
  if (o.to) v.hostId(o.to, 'failover --to');
  const now = o.now ?? Date.now;
  const step = o.onStep ?? (() => {});
  const lease = o.leaseMs ?? 60_000;
  const lock = await catalog.acquireLock(projectLockName(projectId), o.owner, lease);
  if (!lock.ok) throw new LockedError(projectId, lock.owner, lock.expiresAt);
  const renew = setInterval(() => void catalog.renewLock(projectLockName(projectId), o.owner, lock.token, lease).catch(() => undefined), lease / 3);
  try {
    step(`locked (token ${lock.token})`);
    const p: ProjectRecord | undefined = await catalog.getProject(projectId);
    if (!p) throw new Error(`project ${projectId} is not in the catalog`);
    const hosts = new Map((await catalog.listHosts()).map((h) => [h.id, h]));
    const live = (h: HostRecord) => h.heartbeatAt !== null && now() - h.heartbeatAt <= o.graceMs;
    const ids = o.to ? [o.to] : p.targets.filter((t) => t !== p.primary);
    const candidates: FailoverResult['candidates'] = [];
    for (const id of ids) {
      const h = hosts.get(id);
      if (!h) {
        candidates.push({ host: id, load: 0, error: 'not in the catalog' });
        continue;
      }
      if (!live(h)) {
        candidates.push({ host: id, load: h.load, error: 'no recent heartbeat' });
        continue;
      }
      try {
        const snaps = (await fetchListing(ssh, h, { timeoutSeconds: 20 })).datasets[projectId]?.snapshots ?? [];
        const newest = snaps.reduce<(typeof snaps)[number] | undefined>((a, s) => (!a || s.createtxg > a.createtxg ? s : a), undefined);
        candidates.push(newest ? { host: id, snapshot: newest.snap, creation: newest.creation, load: h.load } : { host: id, load: h.load, error: 'holds no replica' });
      } catch (e) {
        candidates.push({ host: id, load: h.load, error: (e as Error).message });
      }
    }
    const usable = candidates.filter((c) => c.snapshot !== undefined).sort((a, b) => b.creation! - a.creation! || a.load - b.load || a.host.localeCompare(b.host));
    const best = usable[0];
    if (!best) throw new Error(`no live replica of ${projectId} to fail over to: ${candidates.map((c) => `${c.host}: ${c.error}`).join('; ') || 'no replica hosts'}`);
    step(`chose ${best.host} (${best.snapshot})`);

    // fence: the catalog stops naming the old primary before anyone else may serve
    await catalog.setLocation(projectId, null, 'failing-over', lock.token);
    let fenced: FailoverResult['oldPrimaryFenced'] = 'none';
    const old = p.primary ? hosts.get(p.primary) : undefined;
    if (old && old.id !== best.host) {
      try {
        const r = await ssh.get({ host: old.id, address: old.address, port: old.port }).exec(formatRemoteCommand({ op: 'fence', project: projectId }), { timeoutSeconds: 10 });
        fenced = r.code === 0 ? 'unmounted' : 'unreachable';
      } catch {
        fenced = 'unreachable'; // its agent demotes itself when it sees the catalog
      }
    }
    step(`old primary ${old?.id ?? '-'}: ${fenced}`);

    const target = hosts.get(best.host)!;
    const r = await ssh.get({ host: target.id, address: target.address, port: target.port }).exec(formatRemoteCommand({ op: 'promote', project: projectId }), { timeoutSeconds: 60 });
    if (r.code !== 0) throw new Error(`promote on ${target.id} failed: ${r.stderr.trim()}`);
    step(`promoted on ${target.id}`);

    await catalog.setLocation(projectId, target.id, 'active', lock.token);
    const targets = [...p.targets.filter((t) => t !== target.id), ...(p.primary && p.primary !== target.id ? [p.primary] : [])];
    await catalog.setTargets(projectId, targets);
    const result: FailoverResult = {
      project: projectId,
      from: p.primary,
      to: target.id,
      snapshot: best.snapshot!,
      snapshotCreation: best.creation!,
      dataLossWindowSeconds: Math.max(0, Math.round(now() / 1000 - best.creation!)),
      oldPrimaryFenced: fenced,
      candidates,
    };
    await catalog.addEvent({ project: projectId, host: target.id, kind: 'failover', detail: `from ${p.primary ?? '-'} to ${target.id} at ${best.snapshot}; data-loss window up to ${result.dataLossWindowSeconds}s; old primary ${fenced}` });
    return result;
  } finally {
    clearInterval(renew);
    await catalog.releaseLock(projectLockName(projectId), o.owner, lock.token).catch(() => undefined);
  }
}

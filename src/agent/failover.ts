// Failover (see docs/failover-move-restore.md): lock the project (fencing token), pick
// the freshest live replica by the hosts' real listings (ties: least loaded), fence the
// old primary (catalog first, then unmount over SSH if it answers), promote the replica,
// switch the location with the token, release. Safe to re-run after a crash at any step.
import type { Catalog, HostRecord, ProjectRecord } from '../catalog/types.js';
import { LockedError, withProjectLease } from '../lock/lease.js';
import type { SshPool } from '../replica/transport.js';
import { formatRemoteCommand } from '../replica/protocol.js';
import { fetchListing } from '../replica/listing.js';
import * as v from '../util/validate.js';

export { LockedError };

/** The project no longer needs this failover (another one already moved it). */
export class FailoverNotNeeded extends Error {
  constructor(project: string, expected: string, actual: string | null, state: string) {
    super(`project ${project} is no longer served by ${expected} (now ${actual ?? 'no host'}, ${state}): nothing to fail over`);
    this.name = 'FailoverNotNeeded';
  }
}

export interface FailoverResult {
  project: string;
  from: string | null;
  to: string;
  snapshot: string;
  snapshotCreation: number;
  /**
   * seconds between the promoted snapshot's creation and the failure: the old primary's
   * last heartbeat when it is dead, else now (writes after the snapshot are kept aside)
   */
  dataLossWindowSeconds: number;
  /** ms since epoch taken as the failure time (see dataLossWindowSeconds) */
  failureTime: number;
  /**
   * how the old primary stopped serving: `unmounted` over SSH; `demoted` by its own
   * agent after the catalog stopped naming it (acknowledged by its event); `dead` no
   * heartbeat for the dead-host period (its agent self-fences where configured);
   * `none` there was no other primary
   */
  oldPrimaryFenced: 'unmounted' | 'demoted' | 'dead' | 'none';
  /** ms spent waiting for the old primary to stop serving */
  fenceWaitMs: number;
  candidates: Array<{ host: string; snapshot?: string; guid?: string; creation?: number; load: number; error?: string }>;
}

export interface FailoverOptions {
  to?: string;
  owner: string;
  /** a host without a heartbeat for this long is dead */
  graceMs: number;
  /**
   * how long to wait for an old primary that SSH cannot reach but that still heartbeats
   * to demote itself (default graceMs + 5 s): past that, the failover stops with the
   * project unserved rather than risk two writable copies
   */
  fenceWaitMs?: number;
  /** poll period while waiting for the old primary (default 500 ms) */
  pollMs?: number;
  leaseMs?: number;
  /**
   * only fail over while this host is still the primary (automatic failover and `open`
   * decide from a catalog read made before the lock; another host may have been faster)
   */
  expectPrimary?: string;
  now?: () => number;
  onStep?: (step: string) => void;
}

export async function failover(catalog: Catalog, ssh: SshPool, projectId: string, o: FailoverOptions): Promise<FailoverResult> {
  v.projectId(projectId, 'failover');
  if (o.to) v.hostId(o.to, 'failover --to');
  const now = o.now ?? Date.now;
  const step = o.onStep ?? (() => {});
  return withProjectLease(catalog, projectId, o.owner, o.leaseMs ?? 60_000, async (lock) => {
    step(`locked (token ${lock.token})`);
    const p: ProjectRecord | undefined = await catalog.getProject(projectId);
    if (!p) throw new Error(`project ${projectId} is not in the catalog`);
    if (o.expectPrimary !== undefined && !(p.primary === o.expectPrimary && p.state === 'active') && !(p.state === 'failing-over')) {
      throw new FailoverNotNeeded(projectId, o.expectPrimary, p.primary, p.state);
    }
    const hosts = new Map((await catalog.listHosts()).map((h) => [h.id, h]));
    const live = (h: HostRecord) => h.heartbeatAt !== null && now() - h.heartbeatAt <= o.graceMs;
    const candidates: FailoverResult['candidates'] = [];
    let chosen: { host: string; snapshot: string; guid: string; creation: number };
    let from: string | null;
    const resumed = p.state === 'failing-over' && p.primary !== null ? await startedEvent(catalog, projectId, p.primary) : undefined;
    if (resumed && (!o.to || o.to === resumed.to)) {
      // an interrupted failover (its lease expired): finish it towards the host it named
      ({ from } = resumed);
      chosen = { host: resumed.to, snapshot: resumed.snapshot, guid: resumed.guid, creation: resumed.creation };
      step(`resuming the failover from ${from ?? '-'} to ${chosen.host} (${chosen.snapshot})`);
    } else {
      from = p.state === 'failing-over' ? resumed?.from ?? null : p.primary;
      const ids = o.to ? [o.to] : [...new Set([...p.targets, ...(p.state === 'failing-over' && p.primary ? [p.primary] : [])])].filter((t) => t !== from);
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
          const snaps = (await fetchListing(ssh, h, { timeoutSeconds: 20, projects: [projectId] })).datasets[projectId]?.snapshots ?? [];
          const newest = snaps.reduce<(typeof snaps)[number] | undefined>((a, s) => (!a || s.createtxg > a.createtxg ? s : a), undefined);
          candidates.push(newest ? { host: id, snapshot: newest.snap, guid: newest.guid, creation: newest.creation, load: h.load } : { host: id, load: h.load, error: 'holds no replica' });
        } catch (e) {
          candidates.push({ host: id, load: h.load, error: (e as Error).message });
        }
      }
      const usable = candidates.filter((c) => c.snapshot !== undefined).sort((a, b) => b.creation! - a.creation! || a.load - b.load || a.host.localeCompare(b.host));
      const best = usable[0];
      if (!best) throw new Error(`no live replica of ${projectId} to fail over to: ${candidates.map((c) => `${c.host}: ${c.error}`).join('; ') || 'no replica hosts'}`);
      chosen = { host: best.host, snapshot: best.snapshot!, guid: best.guid!, creation: best.creation! };
      step(`chose ${best.host} (${best.snapshot})`);
      // fence in the catalog: from here on only the chosen host may serve; the old
      // primary's agent sees it within seconds and demotes itself
      await catalog.addEvent({ project: projectId, host: chosen.host, kind: 'failover-started', detail: JSON.stringify({ from, to: chosen.host, snapshot: chosen.snapshot, guid: chosen.guid, creation: chosen.creation }) });
      await catalog.setLocation(projectId, chosen.host, 'failing-over', lock.token);
    }

    const fenceStart = now();
    let fenced: FailoverResult['oldPrimaryFenced'] = 'none';
    const old = from ? hosts.get(from) : undefined;
    if (old && old.id !== chosen.host) {
      try {
        const r = await ssh.get({ host: old.id, address: old.address, port: old.port }).exec(formatRemoteCommand({ op: 'fence', project: projectId, token: lock.token }), { timeoutSeconds: 10 });
        if (r.code === 0) fenced = 'unmounted';
      } catch {
        /* unreachable over SSH: below */
      }
      if (fenced === 'none') {
        step(`old primary ${old.id} does not answer SSH: waiting until it demotes itself or is dead`);
        fenced = await waitForFence(catalog, projectId, old.id, fenceStart, o);
      }
    }
    const fenceWaitMs = now() - fenceStart;
    step(`old primary ${old?.id ?? '-'}: ${fenced}`);

    const failureTime = old && old.heartbeatAt !== null && !live(old) ? old.heartbeatAt : now();
    const target = hosts.get(chosen.host);
    if (!target) throw new Error(`host ${chosen.host} is not in the catalog any more`);
    const r = await ssh.get({ host: target.id, address: target.address, port: target.port }).exec(formatRemoteCommand({ op: 'promote', project: projectId, token: lock.token, guid: chosen.guid }), { timeoutSeconds: 60 });
    if (r.code !== 0) throw new Error(`promote on ${target.id} failed (exit ${r.code}): ${r.stderr.trim()}; the catalog names ${target.id} (state failing-over): re-run the failover to finish`);
    step(`promoted on ${target.id}`);

    await catalog.setLocation(projectId, target.id, 'active', lock.token);
    const targets = [...p.targets.filter((t) => t !== target.id), ...(from && from !== target.id && !p.targets.includes(from) ? [from] : [])];
    await catalog.setTargets(projectId, targets);
    await catalog.deleteReplica(projectId, target.id); // a primary is not its own replica
    const result: FailoverResult = {
      project: projectId,
      from,
      to: target.id,
      snapshot: chosen.snapshot,
      snapshotCreation: chosen.creation,
      dataLossWindowSeconds: Math.max(0, Math.round(failureTime / 1000 - chosen.creation)),
      failureTime,
      oldPrimaryFenced: fenced,
      fenceWaitMs,
      candidates,
    };
    await catalog.addEvent({ project: projectId, host: target.id, kind: 'failover', detail: `from ${from ?? '-'} to ${target.id} at ${chosen.snapshot}; data-loss window up to ${result.dataLossWindowSeconds}s (snapshot ${new Date(chosen.creation * 1000).toISOString()}, failure ${new Date(failureTime).toISOString()}); old primary ${fenced}` });
    return result;
  });
}

/** The newest `failover-started` event naming `to` (what an interrupted failover had chosen). */
async function startedEvent(catalog: Catalog, project: string, to: string): Promise<{ from: string | null; to: string; snapshot: string; guid: string; creation: number } | undefined> {
  const events = await catalog.listEvents({ project, limit: 200 });
  for (const e of [...events].sort((a, b) => b.at - a.at)) {
    if (e.kind !== 'failover-started') continue;
    try {
      const d = JSON.parse(e.detail) as { from: unknown; to: unknown; snapshot: unknown; guid: unknown; creation: unknown };
      if (d.to !== to || typeof d.snapshot !== 'string' || typeof d.creation !== 'number' || typeof d.guid !== 'string' || !/^[0-9]{1,20}$/.test(d.guid)) return undefined;
      return { from: typeof d.from === 'string' ? v.hostId(d.from, 'failover-started event') : null, to, snapshot: v.snapshotName(d.snapshot, 'failover-started event'), guid: d.guid, creation: d.creation };
    } catch {
      return undefined;
    }
  }
  return undefined;
}

/**
 * The old primary cannot be reached over SSH. The catalog no longer names it, so its
 * agent (which checks every few seconds) unmounts the project and records a `demoted`
 * event; an agent cut off from the catalog stops serving by itself after its
 * self-fence period, and is declared dead after graceMs without a heartbeat. Returns
 * when either is observed; throws when the host still heartbeats but never confirms.
 */
async function waitForFence(catalog: Catalog, project: string, host: string, since: number, o: FailoverOptions): Promise<'demoted' | 'dead'> {
  const now = o.now ?? Date.now;
  const limit = o.fenceWaitMs ?? o.graceMs + 5_000;
  const poll = o.pollMs ?? 500;
  for (;;) {
    const events = await catalog.listEvents({ project, since: since - 1000, limit: 100 });
    if (events.some((e) => e.kind === 'demoted' && e.host === host)) return 'demoted';
    const h = await catalog.getHost(host);
    if (!h || h.heartbeatAt === null || now() - h.heartbeatAt > o.graceMs) return 'dead';
    if (now() - since > limit) {
      throw new Error(
        `old primary ${host} does not answer SSH, still heartbeats (${Math.round((now() - h.heartbeatAt) / 1000)} s ago) and has not confirmed that it stopped serving ${project} within ${Math.round(limit / 1000)} s; ` +
          `the catalog names no primary now (state failing-over). Check ${host}'s agent and re-run the failover`,
      );
    }
    await new Promise((r) => setTimeout(r, poll));
  }
}

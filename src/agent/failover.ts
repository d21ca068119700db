// Failover (see docs/failover-move-restore.md): lock the project (fencing token), pick
// the freshest live replica by the hosts' real listings (ties: least loaded), fence the
// old primary (catalog first, then unmount over SSH if it answers), list the target again
// and promote its replica at its newest snapshot (checkTarget: a transfer the old primary
// started before the fence may have landed since), switch the location with the token,
// release. Safe to re-run after a crash at any step.
import type { Catalog, HostRecord, ProjectOperation, ProjectRecord } from '../catalog/types.js';
import { LockedError, withProjectLease, type Lease } from '../lock/lease.js';
import { crashPoint } from '../util/crash-point.js';
import { updateTargets } from '../catalog/targets.js';
import { describeFence, type FenceReport } from '../zfs/fence.js';
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
   * how the old primary stopped serving: `unmounted` fenced over SSH (writers stopped,
   * unmounted); `demoted` by its own agent after the catalog stopped naming it
   * (acknowledged by its event); `self-fenced` the self-fence bound passed since the
   * catalog stopped naming it (an agent that cannot read the catalog stops serving
   * within it); `none` there was no other primary
   */
  oldPrimaryFenced: 'unmounted' | 'demoted' | 'self-fenced' | 'none';
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
   * ms after the catalog stops naming the old primary by which it has stopped serving
   * even if it cannot read the catalog (config: fenceBoundMs = selfFenceAfter + fence
   * check + margin; default graceMs). A failover that cannot fence over SSH waits this.
   */
  selfFenceBoundMs?: number;
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
  return withProjectLease(catalog, projectId, o.owner, o.leaseMs ?? 60_000, async (lease) => {
    step(`locked (token ${lease.token})`);
    crashPoint('failover', 'locked');
    const p: ProjectRecord | undefined = await catalog.getProject(projectId);
    if (!p) throw new Error(`project ${projectId} is not in the catalog`);
    const inProgress = p.operation?.kind === 'failover' ? p.operation : undefined;
    if (o.expectPrimary !== undefined && !(p.primary === o.expectPrimary && p.state === 'active') && !inProgress) {
      throw new FailoverNotNeeded(projectId, o.expectPrimary, p.primary, p.state);
    }
    const hosts = new Map((await catalog.listHosts()).map((h) => [h.id, h]));
    const live = (h: HostRecord) => h.heartbeatAt !== null && now() - h.heartbeatAt <= o.graceMs;
    let candidates: FailoverResult['candidates'] = [];
    let op: ProjectOperation;
    let previousTarget: string | undefined;
    if (inProgress && inProgress.step === 'switched' && o.to && o.to !== inProgress.to) {
      throw new FailoverNotNeeded(projectId, o.to, inProgress.to, `${p.state}: an interrupted failover already switched it to ${inProgress.to}; re-run without --to to finish it, then fail over again`);
    }
    if (inProgress && inProgress.step === 'switched') {
      // an earlier run switched the location and stopped before its bookkeeping
      step(`resuming: ${inProgress.to} already serves ${projectId}; finishing`);
      return finishFailover(catalog, p, { ...inProgress, token: lease.token }, { fenced: 'none', fenceWaitMs: 0, failureTime: inProgress.startedAt, candidates }, lease);
    }
    if (inProgress && (!o.to || o.to === inProgress.to)) {
      // an interrupted failover (its lease expired): finish it towards the host it chose.
      // The location is written again under this lease, so the old primary's agent sees
      // a fresh change (and the fence bound below starts from this write).
      op = { ...inProgress, token: lease.token };
      step(`resuming the failover from ${op.from ?? '-'} to ${op.to} (${op.snapshot ?? '?'})`);
      await lease.check('record the failover');
      await catalog.setLocation(projectId, op.to, 'failing-over', lease.token, op);
    } else {
      const from = inProgress ? inProgress.from : p.primary;
      previousTarget = inProgress?.to;
      const picked = await chooseReplica(ssh, hosts, p, from, o, live);
      candidates = picked.candidates;
      const best = picked.best;
      step(`chose ${best.host} (${best.snapshot})`);
      // fence in the catalog: from here on only the chosen host may serve; the old
      // primary's agent sees it within seconds and demotes itself. The operation's state
      // goes in the same compare-and-set as the location (a re-run resumes from it).
      op = { kind: 'failover', from, to: best.host, snapshot: best.snapshot!, guid: best.guid!, creation: best.creation!, token: lease.token, startedAt: now(), step: 'recorded' };
      await lease.check('record the failover');
      await catalog.setLocation(projectId, best.host, 'failing-over', lease.token, op);
      await catalog.addEvent({ project: projectId, host: best.host, kind: 'failover-started', detail: JSON.stringify({ from, to: best.host, snapshot: best.snapshot, guid: best.guid, creation: best.creation }) }).catch(() => undefined);
    }
    const recordedAt = now();
    crashPoint('failover', 'recorded');

    const fenceStart = now();
    // Two proofs that a host stopped serving, sought at once; the first that holds ends the
    // wait: the fence over SSH (writers stopped, unmounted: at once when the host answers),
    // and the one that needs no answer from it (its `demoted` event, or the self-fence
    // bound since the catalog stopped naming it). An unreachable host costs the bound, not
    // an SSH timeout and then the bound.
    const fenceOne = async (id: string, label: string): Promise<FailoverResult['oldPrimaryFenced']> => {
      const h = hosts.get(id);
      const bound = o.selfFenceBoundMs ?? o.graceMs;
      const wait = { over: false };
      const say = (s: string) => wait.over || step(s);
      const overSsh = async (): Promise<'unmounted' | null> => {
        if (!h) return null;
        try {
          const r = await ssh.get({ host: h.id, address: h.address, port: h.port }).exec(formatRemoteCommand({ op: 'fence', project: projectId, token: lease.token }), { timeoutSeconds: 30 });
          if (r.code === 0) {
            say(`${label}: ${fenceSummary(r.stdout)}`);
            return 'unmounted';
          }
          say(`${label}: fence refused or failed (exit ${r.code}): ${r.stderr.trim().slice(0, 500)}`);
        } catch (e) {
          say(`${label}: fence over SSH failed: ${(e as Error).message}`);
        }
        say(`${label} was not fenced over SSH: waiting until it confirms it demoted itself, or for the self-fence bound (${Math.round(bound / 1000)} s after the catalog stopped naming it)`);
        return null;
      };
      const proof = waitForFence(catalog, projectId, id, recordedAt, bound, o, wait);
      try {
        return await Promise.race([overSsh().then((r) => r ?? proof), proof]);
      } finally {
        wait.over = true;
      }
    };
    let fenced: FailoverResult['oldPrimaryFenced'] = 'none';
    const old = op.from ? hosts.get(op.from) : undefined;
    if (op.from && op.from !== op.to) fenced = await fenceOne(op.from, `old primary ${op.from}`);
    // a re-run towards another host than an interrupted failover chose: that host may
    // have been promoted already (state failing-over lets it serve), so it is fenced too
    if (previousTarget && previousTarget !== op.to && previousTarget !== op.from) step(`previous target ${previousTarget}: ${await fenceOne(previousTarget, `previous target ${previousTarget}`)}`);
    const fenceWaitMs = now() - fenceStart;
    step(`old primary ${old?.id ?? '-'}: ${fenced}`);
    crashPoint('failover', 'fenced');

    const failureTime = old && old.heartbeatAt !== null && !live(old) ? old.heartbeatAt : now();
    const target = hosts.get(op.to);
    if (!target) throw new Error(`host ${op.to} is not in the catalog any more`);
    op = await promoteOnTarget(catalog, ssh, target, projectId, op, lease, step);
    step(`promoted on ${target.id}`);
    crashPoint('failover', 'promoted');
    return finishFailover(catalog, p, op, { fenced, fenceWaitMs, failureTime, candidates }, lease);
  });
}

export type TargetCheck =
  | { kind: 'as-chosen' }
  | { kind: 'already-promoted' }
  | { kind: 'newer'; snapshot: string; guid: string; creation: number; since: number }
  | { kind: 'not-in-history'; newest: string | null };

/**
 * The chosen snapshot against the target's own listing just before the promote (pure).
 * The choice was made from a listing taken before the old primary was fenced; a receive
 * it started before then may have finished since, leaving snapshots of the same lineage
 * on top of the chosen one: strictly more data, so the failover promotes at the newest.
 * A target that no longer lists the replica was promoted by an earlier run.
 */
export function checkTarget(op: Pick<ProjectOperation, 'guid'>, snaps: ReadonlyArray<{ snap: string; guid: string; createtxg: number; creation: number }> | undefined): TargetCheck {
  if (snaps === undefined) return { kind: 'already-promoted' };
  const ordered = [...snaps].sort((a, b) => a.createtxg - b.createtxg);
  const at = ordered.findIndex((s) => s.guid === op.guid);
  const newest = ordered[ordered.length - 1];
  if (at < 0) return { kind: 'not-in-history', newest: newest ? `${newest.snap} (guid ${newest.guid})` : null };
  if (at === ordered.length - 1) return { kind: 'as-chosen' };
  return { kind: 'newer', snapshot: newest!.snap, guid: newest!.guid, creation: newest!.creation, since: ordered.length - 1 - at };
}

/**
 * Promote on the failover's target at the snapshot its own listing shows now (checkTarget),
 * the operation re-recorded first when that is newer than the choice (a crash between the
 * two finds the newer guid on the row). A receive finishing between the listing and the
 * promote makes the receiver refuse (its newest is not the guid sent): listed again, up to
 * three times. Returns the operation as promoted.
 */
async function promoteOnTarget(catalog: Catalog, ssh: SshPool, target: HostRecord, projectId: string, op: ProjectOperation, lease: Lease, step: (s: string) => void): Promise<ProjectOperation> {
  for (let attempt = 1; ; attempt++) {
    let listed;
    try {
      listed = await fetchListing(ssh, target, { timeoutSeconds: 20, projects: [projectId] });
    } catch (e) {
      throw new Error(`before promoting on ${target.id}: ${(e as Error).message}; the catalog names ${target.id} (state failing-over): re-run the failover to finish`);
    }
    const check = checkTarget(op, listed.datasets[projectId]?.snapshots);
    if (check.kind === 'not-in-history') {
      throw new Error(`the replica of ${projectId} on ${target.id} no longer holds the chosen snapshot ${op.snapshot ?? '?'} (guid ${op.guid}); its newest is ${check.newest ?? 'none'}: nothing promoted. The catalog names ${target.id} (state failing-over); choose again with storagectl failover ${projectId} --to <host>`);
    }
    if (check.kind === 'newer') {
      step(`${target.id} received ${check.since} snapshot(s) after the choice (a transfer the old primary started before it was fenced): promoting at its newest, ${check.snapshot}`);
      op = { ...op, snapshot: check.snapshot, guid: check.guid, creation: check.creation };
      await lease.check('record the newer snapshot');
      await catalog.setLocation(projectId, op.to, 'failing-over', lease.token, op);
    }
    crashPoint('failover', 'target-checked');
    await lease.check(`promote on ${target.id}`);
    const r = await ssh.get({ host: target.id, address: target.address, port: target.port }).exec(formatRemoteCommand({ op: 'promote', project: projectId, token: lease.token, guid: op.guid! }), { timeoutSeconds: 60 });
    if (r.code === 0) return op;
    if (attempt < 3 && /did not choose/.test(r.stderr)) {
      step(`promote on ${target.id} refused (its newest moved since the listing): listing again`);
      continue;
    }
    throw new Error(`promote on ${target.id} failed (exit ${r.code}): ${r.stderr.trim()}; the catalog names ${target.id} (state failing-over): re-run the failover to finish`);
  }
}

/** The freshest live replica by the hosts' real listings (ties: least loaded, then name). */
async function chooseReplica(ssh: SshPool, hosts: Map<string, HostRecord>, p: ProjectRecord, from: string | null, o: FailoverOptions, live: (h: HostRecord) => boolean): Promise<{ best: FailoverResult['candidates'][number]; candidates: FailoverResult['candidates'] }> {
  const candidates: FailoverResult['candidates'] = [];
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
      const snaps = (await fetchListing(ssh, h, { timeoutSeconds: 20, projects: [p.id] })).datasets[p.id]?.snapshots ?? [];
      const newest = snaps.reduce<(typeof snaps)[number] | undefined>((a, s) => (!a || s.createtxg > a.createtxg ? s : a), undefined);
      candidates.push(newest ? { host: id, snapshot: newest.snap, guid: newest.guid, creation: newest.creation, load: h.load } : { host: id, load: h.load, error: 'holds no replica' });
    } catch (e) {
      candidates.push({ host: id, load: h.load, error: (e as Error).message });
    }
  }
  const usable = candidates.filter((c) => c.snapshot !== undefined).sort((a, b) => b.creation! - a.creation! || a.load - b.load || a.host.localeCompare(b.host));
  const best = usable[0];
  if (!best) throw new Error(`no live replica of ${p.id} to fail over to: ${candidates.map((c) => `${c.host}: ${c.error}`).join('; ') || 'no replica hosts'}`);
  return { best, candidates };
}

/** Switch the location (the operation stays until the bookkeeping is done), targets, replica rows, event. */
async function finishFailover(catalog: Catalog, p: ProjectRecord, op: ProjectOperation, f: { fenced: FailoverResult['oldPrimaryFenced']; fenceWaitMs: number; failureTime: number; candidates: FailoverResult['candidates'] }, lease: Lease): Promise<FailoverResult> {
  const to = op.to;
  const from = op.from;
  await lease.check(`switch the catalog to ${to}`);
  await catalog.setLocation(p.id, to, 'active', lease.token, { ...op, step: 'switched' });
  crashPoint('failover', 'switched');
  await updateTargets(catalog, p.id, (cur) => [...cur.filter((t) => t !== to), ...(from && from !== to && !cur.includes(from) ? [from] : [])]);
  await catalog.deleteReplica(p.id, to); // a primary is not its own replica
  await catalog.setLocation(p.id, to, 'active', lease.token, null);
  const creation = op.creation ?? 0;
  const result: FailoverResult = {
    project: p.id,
    from,
    to,
    snapshot: op.snapshot ?? '?',
    snapshotCreation: creation,
    dataLossWindowSeconds: Math.max(0, Math.round(f.failureTime / 1000 - creation)),
    failureTime: f.failureTime,
    oldPrimaryFenced: f.fenced,
    fenceWaitMs: f.fenceWaitMs,
    candidates: f.candidates,
  };
  await catalog
    .addEvent({ project: p.id, host: to, kind: 'failover', detail: `from ${from ?? '-'} to ${to} at ${op.snapshot ?? '?'}; data-loss window up to ${result.dataLossWindowSeconds}s (snapshot ${new Date(creation * 1000).toISOString()}, failure ${new Date(f.failureTime).toISOString()}); old primary ${f.fenced}` })
    .catch(() => undefined);
  return result;
}

function fenceSummary(stdout: string): string {
  try {
    const j = JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as { report?: FenceReport };
    return j.report ? describeFence(j.report) : 'fenced';
  } catch {
    return 'fenced';
  }
}

/**
 * The proof that needs no answer from the old primary (sought while the fence over SSH
 * is tried, fenceOne). The catalog no longer names it (since
 * `since`): its agent either reads that (fence check, every failover.fenceCheck) and
 * demotes the project, recording a `demoted` event, or cannot read the catalog and stops
 * serving by itself within failover.selfFenceAfter of its last successful read, which was
 * before `since`. So past `since + boundMs` it does not serve, whatever its heartbeat
 * says (a heartbeat is not proof of anything here). A `demoted` event read earlier ends
 * the wait earlier (an event not read back only makes the wait longer).
 */
async function waitForFence(catalog: Catalog, project: string, host: string, since: number, boundMs: number, o: FailoverOptions, wait: { over: boolean }): Promise<'demoted' | 'self-fenced'> {
  const now = o.now ?? Date.now;
  const poll = o.pollMs ?? 500;
  for (;;) {
    if (wait.over) return 'self-fenced'; // the fence over SSH won the race: this answer is not used
    const events = await catalog.listEvents({ project, since: since - 1000, limit: 100 }).catch(() => []);
    if (events.some((e) => e.kind === 'demoted' && e.host === host)) return 'demoted';
    if (now() - since > boundMs) return 'self-fenced';
    await new Promise((r) => setTimeout(r, poll));
  }
}

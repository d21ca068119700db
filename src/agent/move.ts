// storagectl move <project> <host>, run on the project's current primary (the source).
// See docs/failover-move-restore.md for the states and what a crash at each step leaves.
//
//   lock -> state moving (the agent stops snapshotting/sending it) -> pre-sync rounds of
//   ordinary incrementals while the project stays mounted, until one round is small ->
//   unmount at the source (writes stop) -> final snapshot + incremental -> verify the
//   target's listing shows that guid -> catalog names the target (still moving) ->
//   promote on the target (mount) -> the source's dataset becomes a replica ->
//   state active, targets updated -> release.
//
// Before the catalog names the target, any failure remounts the source and sets it
// active again: the project is served by the source. After, re-running the same command
// on the source finishes the move (every later step is idempotent).
import type { HostRecord, ProjectOperation, ProjectRecord } from '../catalog/types.js';
import { LeaseLostError, withProjectLease, type Lease } from '../lock/lease.js';
import { crashPoint } from '../util/crash-point.js';
import { updateTargets } from '../catalog/targets.js';
import { describeFence, fenceDataset } from '../zfs/fence.js';
import { formatRemoteCommand } from '../replica/protocol.js';
import { fetchListing } from '../replica/listing.js';
import { ZfsCommandError } from '../zfs/index.js';
import { Agent, holdTagFor, sshTarget, type CycleReport } from './agent.js';
import { deadAfterMs } from './config.js';
import * as v from '../util/validate.js';

export interface MoveOptions {
  owner: string;
  /** remove the source's copy once the target serves and is confirmed */
  dropSource?: boolean;
  /** pre-sync until one round sends fewer bytes than this (default 64 MiB) */
  presyncThresholdBytes?: number;
  /** at most this many pre-sync rounds (default 5) */
  maxPresyncRounds?: number;
  /** force the unmount at the source when files are open (default: fail and remount nothing) */
  forceUnmount?: boolean;
  leaseMs?: number;
  onStep?: (step: string) => void;
  /** performing a request (storagectl move/drain): its id, carried on the row */
  request?: Pick<ProjectOperation, 'id' | 'requestedBy'>;
  /** asked before each step up to the switch: true stops the move and the source serves on */
  cancelled?: () => Promise<boolean>;
}

export interface MoveResult {
  project: string;
  from: string;
  to: string;
  /** the snapshot taken with writes stopped; the target served from exactly this state */
  finalSnapshot: string;
  finalGuid: string;
  rounds: Array<{ phase: 'presync' | 'final'; snapshot: string; bytes: number; ms: number }>;
  /** ms between the unmount at the source and the mount on the target */
  downtimeMs: number;
  /** replica: the source's copy is a replica now; kept: kept, but no target (the source is draining); dropped */
  source: 'replica' | 'kept' | 'dropped';
  resumed: boolean;
}

export class MoveError extends Error {
  constructor(
    message: string,
    readonly servedBy: string | null,
    /** stopped by a cancel (Catalog.requestCancel), before the switch */
    readonly cancelled = false,
  ) {
    super(message);
    this.name = 'MoveError';
  }
}

class Cancelled extends Error {}

export async function move(agent: Agent, projectId: string, to: string, o: MoveOptions): Promise<MoveResult> {
  v.projectId(projectId, 'move');
  v.hostId(to, 'move target');
  const me = agent.config.host;
  const step = o.onStep ?? (() => {});
  if (to === me) throw new MoveError(`${projectId}: the target ${to} is this host (the source)`, me);
  return withProjectLease(agent.catalog, projectId, o.owner, o.leaseMs ?? 120_000, async (lease) => {
    step(`locked (token ${lease.token})`);
    // this process's cycles leave the project alone from here (a cycle already sending it ends first)
    const release = await agent.claim(projectId);
    try {
      return await moveLocked(agent, projectId, to, o, lease, step);
    } finally {
      release();
    }
  });
}

async function moveLocked(agent: Agent, projectId: string, to: string, o: MoveOptions, lease: Lease, step: (s: string) => void): Promise<MoveResult> {
  const { catalog, zfs, config: c } = agent;
  const me = c.host;
  const ds = `${c.projectsRoot}/${projectId}`;
  crashPoint('move', 'locked');
  const p = await catalog.getProject(projectId);
  if (!p) throw new MoveError(`project ${projectId} is not in the catalog`, null);
  const hosts = new Map((await catalog.listHosts()).map((h) => [h.id, h]));
  const target = hosts.get(to);
  if (!target) throw new MoveError(`host ${to} is not in the catalog (see storagectl hosts)`, p.primary);
  const inProgress = p.operation?.kind === 'move' ? p.operation : undefined;
  if (inProgress?.step === 'switched' && inProgress.to === to && inProgress.from === me && p.primary === to) {
    // an earlier run switched the catalog to the target and stopped: finish it
    step(`resuming: the catalog already names ${to}; finishing the switch`);
    const fin = await finish(agent, p, target, o, { ...inProgress, token: lease.token }, lease, step);
    return { project: projectId, from: me, to, finalSnapshot: inProgress.snapshot ?? fin.snapshot, finalGuid: inProgress.guid ?? fin.guid, rounds: [], downtimeMs: 0, source: fin.source, resumed: true };
  }
  if (p.primary !== me) throw new MoveError(`project ${projectId} is served by ${p.primary ?? 'no host'}, not ${me}: run the move there`, p.primary);
  if (inProgress && inProgress.id !== o.request?.id && inProgress.step === 'requested') {
    throw new MoveError(`project ${projectId} has a move to ${inProgress.to} requested (${inProgress.id ?? 'no id'} by ${inProgress.requestedBy ?? '?'}): follow it with storagectl move --status ${projectId}, or storagectl cancel ${projectId} first`, p.primary);
  }
  if (inProgress && inProgress.to !== to) throw new MoveError(`project ${projectId} has a move to ${inProgress.to} in progress, not to ${to}: finish it (or cancel it) first`, p.primary);
  if (p.state !== 'active' && p.state !== 'moving') throw new MoveError(`project ${projectId} is ${p.state}; finish that first`, p.primary);
  if (p.operation && !inProgress) throw new MoveError(`project ${projectId} has a ${p.operation.kind} in progress (since ${new Date(p.operation.startedAt).toISOString()}): finish it first`, p.primary);
  const dead = deadAfterMs(c);
  if (target.heartbeatAt === null || Date.now() - target.heartbeatAt > dead) throw new MoveError(`target ${to} has no recent heartbeat (dead for the catalog): not moving there`, me);

  const { mounted: wasMountedProp } = await zfs.get(ds, ['mounted']);
  // an interrupted move (before its switch) may have unmounted the source: it was mounted then
  // and one the self-fence watchdog unmounted was serving: it is mounted at the target
  const wasMounted = wasMountedProp === 'yes' || inProgress?.wasMounted === true || agent.selfFence.fenced().has(projectId);
  const asked = inProgress?.step === 'requested' ? { id: inProgress.id, requestedBy: inProgress.requestedBy } : o.request ?? {};
  const op: ProjectOperation = { kind: 'move', from: me, to, snapshot: null, guid: null, creation: null, token: lease.token, startedAt: Date.now(), step: 'recorded', wasMounted, ...defined(asked) };
  const stopIfCancelled = async (before: string) => {
    if (o.cancelled && (await o.cancelled())) throw new Cancelled(`cancelled before ${before}`);
  };
  await lease.check('record the move');
  await catalog.setLocation(projectId, me, 'moving', lease.token, op);
  await catalog.addEvent({ project: projectId, host: me, kind: 'move-started', detail: JSON.stringify({ from: me, to, wasMounted }) }).catch(() => undefined);
  crashPoint('move', 'recorded');
  if (!p.targets.includes(to)) p.targets = await updateTargets(catalog, projectId, (cur) => (cur.includes(to) ? cur : [...cur, to]));
  const rounds: MoveResult['rounds'] = [];
  let unmountedAt = 0;
  let final: { snap: string; guid: string; creation: number } | undefined;
  try {
    // pre-sync while the project keeps serving
    const threshold = o.presyncThresholdBytes ?? 64 * 2 ** 20;
    const maxRounds = o.maxPresyncRounds ?? 5;
    for (let i = 1; i <= maxRounds; i++) {
      const r = await syncRound(agent, projectId, to, 'presync', rounds);
      step(`pre-sync round ${i}: ${fmtBytes(r.bytes)} in ${(r.ms / 1000).toFixed(1)} s`);
      if (r.bytes < threshold) break;
      await stopIfCancelled(`pre-sync round ${i + 1}`);
    }
    crashPoint('move', 'presynced');
    await stopIfCancelled('the writes stopped');
    // stop writes, final incremental
    await lease.check('stop the writes at the source');
    await stopWritesAtSource(agent, ds, !!o.forceUnmount, step);
    unmountedAt = Date.now();
    crashPoint('move', 'writes-stopped');
    const r = await syncRound(agent, projectId, to, 'final', rounds);
    step(`final incremental: ${fmtBytes(r.bytes)} (${r.snapshot})`);
    // verify on the target's own listing
    const listing = await fetchListing(agent.ssh, target, { timeoutSeconds: 60, projects: [projectId] });
    const have = listing.datasets[projectId]?.snapshots.find((s) => s.guid === r.guid);
    if (!have) throw new Error(`${to}'s listing does not show the final snapshot ${r.snapshot} (guid ${r.guid})`);
    final = { snap: r.snapshot, guid: r.guid, creation: have.creation };
    step(`verified on ${to}: ${r.snapshot} guid ${r.guid}`);
    crashPoint('move', 'verified');
    await stopIfCancelled('the switch');
    // switch: from here on the target is the one that may serve
    await lease.check(`switch the catalog to ${to}`);
  } catch (e) {
    // a lease that may have run out: change nothing (the next holder, or a re-run, decides)
    if (e instanceof LeaseLostError) throw e;
    // not switched: the source serves again (catalog first: remount only if that held)
    const msg = (e as Error).message;
    const back: string[] = [];
    try {
      await catalog.setLocation(projectId, me, 'active', lease.token, null);
      back.push('active again');
      if (wasMounted) {
        const { mounted } = await zfs.get(ds, ['mounted']);
        if (mounted !== 'yes') await zfs.mount(ds);
        back.push('remounted');
      }
    } catch (e2) {
      back.push(`restoring the source failed too: ${(e2 as Error).message}`);
    }
    if (e instanceof Cancelled) {
      await catalog.addEvent({ project: projectId, host: me, kind: 'move-cancelled', detail: `to ${to}: ${msg}` }).catch(() => undefined);
      throw new MoveError(`move of ${projectId} to ${to} ${msg}: the project is still served by ${me} (${back.join(', ')})`, me, true);
    }
    await catalog.addEvent({ project: projectId, host: me, kind: 'move-failed', detail: `to ${to}: ${msg}` }).catch(() => undefined);
    throw new MoveError(`move of ${projectId} to ${to} failed before the switch: ${msg}. The project is still served by ${me} (${back.join(', ')}); re-run to try again`, me);
  }

  const switched: ProjectOperation = { ...op, snapshot: final.snap, guid: final.guid, creation: final.creation, step: 'switched' };
  await catalog.setLocation(projectId, to, 'moving', lease.token, switched);
  step(`catalog names ${to}`);
  crashPoint('move', 'switched');
  const fin = await finish(agent, { ...p, primary: to, state: 'moving' }, target, o, switched, lease, step);
  const downtimeMs = Date.now() - unmountedAt;
  await catalog.addEvent({ project: projectId, host: to, kind: 'moved', detail: `from ${me} to ${to} at ${final.snap} (guid ${final.guid}); writes stopped for ${(downtimeMs / 1000).toFixed(1)} s; source ${fin.source}` }).catch(() => undefined);
  return { project: projectId, from: me, to, finalSnapshot: final.snap, finalGuid: final.guid, rounds, downtimeMs, source: fin.source, resumed: false };
}

/**
 * Promote on the target, turn the source's dataset into a replica (or drop it), go
 * active. Every step is idempotent: a re-run after a crash anywhere in here finishes.
 */
async function finish(agent: Agent, p: ProjectRecord, target: HostRecord, o: MoveOptions, op: ProjectOperation, lease: Lease, step: (s: string) => void): Promise<{ snapshot: string; guid: string; source: MoveResult['source'] }> {
  const { catalog, zfs, config: c } = agent;
  const me = c.host;
  const ds = `${c.projectsRoot}/${p.id}`;
  const replica = `${c.replicasRoot}/${p.id}`;
  if (!op.guid) throw new MoveError(`cannot finish the move of ${p.id}: the catalog's operation names no final snapshot`, null);
  await lease.check(`promote on ${target.id}`);
  const conn = agent.ssh.get(sshTarget(target));
  const r = await conn.exec(formatRemoteCommand({ op: 'promote', project: p.id, token: lease.token, guid: op.guid }), { timeoutSeconds: 120 });
  if (r.code !== 0) {
    throw new MoveError(
      `promote on ${target.id} failed (exit ${r.code}): ${r.stderr.trim()}. The catalog names ${target.id} (state moving) and ${me} has stopped serving; ` +
        `re-run \`storagectl move ${p.id} ${target.id}\` here to finish (the source's copy is kept, unmounted, as ${ds})`,
      null,
    );
  }
  step(`promoted and mounted on ${target.id}`);
  crashPoint('move', 'promoted');
  let source: MoveResult['source'];
  // a draining source keeps its copy (nothing is destroyed without being asked) but is
  // no target: placement puts nothing new there, and a copy nobody sends to is not one
  const draining = (await catalog.getHost(me))?.draining === true;
  if (await zfs.exists(ds)) {
    // the source's copy becomes an ordinary replica (the new primary sends incrementals on
    // its newest snapshot); its holds for targets are released: a replica holds nothing
    const info = (await zfs.list(ds, { depth: 0 })).get(ds);
    const { mounted } = await zfs.get(ds, ['mounted']);
    if (mounted === 'yes') await zfs.unmount(ds);
    const held = (info?.snapshots ?? []).filter((s) => (s.userrefs ?? 1) > 0).map((s) => `${ds}@${s.snap}`);
    for (const t of new Set([...p.targets, target.id])) {
      for (const snap of held) await zfs.release(holdTagFor(t), [snap]).catch(() => undefined);
    }
    if (o.dropSource) {
      await lease.check(`drop ${ds}`);
      for (const s of info?.snapshots ?? []) {
        try {
          await zfs.destroySnapshot(`${ds}@${s.snap}`);
        } catch (e) {
          throw new MoveError(`the move is done (${target.id} serves ${p.id}) but dropping the source's copy stopped at ${ds}@${s.snap}: ${(e as Error).message}`, target.id);
        }
      }
      await zfs.destroyDataset(ds);
      source = 'dropped';
      step(`dropped ${ds} on ${me}`);
    } else {
      if (await zfs.exists(replica)) throw new MoveError(`cannot keep the source as a replica: ${replica} already exists on ${me}; ${ds} was left in place (unmounted)`, target.id);
      await zfs.rename(ds, replica);
      await zfs.set(replica, { canmount: 'noauto' });
      await zfs.inherit(replica, 'mountpoint');
      await zfs.inherit(replica, 'readonly');
      const { readonly } = await zfs.get(replica, ['readonly']);
      if (readonly !== 'on') await zfs.set(replica, { readonly: 'on' });
      source = draining ? 'kept' : 'replica';
      step(draining ? `${me} keeps ${replica} (no target: ${me} is draining)` : `${me} keeps ${replica} as a replica`);
    }
  } else source = (await zfs.exists(replica)) ? (draining ? 'kept' : 'replica') : 'dropped'; // done by an earlier run
  crashPoint('move', 'source-kept');
  const newest = source === 'replica' ? (await zfs.list(replica, { depth: 0 })).get(replica)?.snapshots.at(-1) : undefined;
  await updateTargets(catalog, p.id, (cur) => [...cur.filter((t) => t !== target.id && t !== me), ...(source === 'replica' ? [me] : [])]);
  // replica rows: the new primary is no replica; the source holds exactly the final state
  await catalog.deleteReplica(p.id, target.id);
  if (newest) {
    await catalog.upsertReplica({ project: p.id, host: me, snapshot: newest.snap, guid: newest.guid, snapshotCreation: newest.creation, confirmedAt: Date.now() });
  } else await catalog.deleteReplica(p.id, me);
  await lease.check('mark the move done');
  await catalog.setLocation(p.id, target.id, 'active', lease.token, null);
  return { snapshot: newest?.snap ?? op.snapshot ?? '?', guid: newest?.guid ?? op.guid, source };
}

async function syncRound(agent: Agent, project: string, to: string, phase: 'presync' | 'final', rounds: MoveResult['rounds']): Promise<{ snapshot: string; guid: string; bytes: number; ms: number }> {
  const { zfs, config: c } = agent;
  const ds = `${c.projectsRoot}/${project}`;
  let name = v.autoSnapshotName(new Date(), c.snapshot.prefix);
  const existing = (await zfs.list(ds, { depth: 0 })).get(ds)?.snapshots ?? [];
  if (existing.some((s) => s.snap === name)) {
    await new Promise((r) => setTimeout(r, 1100)); // names are per second
    name = v.autoSnapshotName(new Date(), c.snapshot.prefix);
  }
  await zfs.snapshot([`${ds}@${name}`]);
  const t0 = Date.now();
  const report: CycleReport = await agent.replicateProject(project, { to, includeMoving: true, snapshot: "never" });
  const ms = Date.now() - t0;
  const problems = [...report.failures.map((f) => f.error), ...report.conflicts.map((x) => x.message)];
  if (problems.length) throw new Error(problems.join('; '));
  const bytes = report.sends.reduce((a, s) => a + s.bytes, 0);
  const snap = (await zfs.list(ds, { depth: 0 })).get(ds)?.snapshots.find((s) => s.snap === name);
  if (!snap) throw new Error(`snapshot ${ds}@${name} vanished`);
  rounds.push({ phase, snapshot: name, bytes, ms });
  return { snapshot: name, guid: snap.guid, bytes, ms };
}

/**
 * Writes stop at the source. Without --force: a plain unmount, retried ~5 s while the
 * file system is busy, then the move fails (the source stays mounted and serving). With
 * --force: the fence (zfs/fence.ts): readonly, the processes using it killed, unmounted.
 */
async function stopWritesAtSource(agent: Agent, ds: string, force: boolean, step: (s: string) => void): Promise<void> {
  const { zfs } = agent;
  const { mounted } = await zfs.get(ds, ['mounted']);
  if (mounted !== 'yes') {
    step('source already unmounted');
    return;
  }
  if (force) {
    const r = await fenceDataset(zfs, ds, { onStep: step });
    if (!r.fenced) throw new Error(`could not stop writes at the source: ${describeFence(r)}`);
    // the fence set readonly=on; the source's copy stays this project's lineage: reset it
    if (r.readonly === 'set') await zfs.inherit(ds, 'readonly');
    step(`writes stopped: ${describeFence(r)}`);
    return;
  }
  for (let attempt = 1; ; attempt++) {
    try {
      await zfs.unmount(ds);
      step(`writes stopped: unmounted at the source${attempt > 1 ? ` (attempt ${attempt})` : ''}`);
      return;
    } catch (e) {
      const busy = e instanceof ZfsCommandError && (e.kind === 'busy' || /busy/i.test(e.stderr));
      if (!busy || attempt >= 10) {
        throw new Error(busy ? `${ds} is busy (processes have files open under its mountpoint): stop them, or re-run with --force to stop them and unmount` : (e as Error).message);
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

function fmtBytes(b: number): string {
  return b < 2 ** 20 ? `${(b / 1024).toFixed(0)} KiB` : `${(b / 2 ** 20).toFixed(1)} MiB`;
}

function defined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, x]) => x !== undefined)) as Partial<T>;
}

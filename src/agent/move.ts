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
import type { Catalog, HostRecord, ProjectRecord } from '../catalog/types.js';
import { withProjectLease } from '../lock/lease.js';
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
  source: 'replica' | 'dropped';
  resumed: boolean;
}

export class MoveError extends Error {
  constructor(
    message: string,
    readonly servedBy: string | null,
  ) {
    super(message);
    this.name = 'MoveError';
  }
}

export async function move(agent: Agent, projectId: string, to: string, o: MoveOptions): Promise<MoveResult> {
  v.projectId(projectId, 'move');
  v.hostId(to, 'move target');
  const { catalog, zfs, config: c } = agent;
  const me = c.host;
  const step = o.onStep ?? (() => {});
  if (to === me) throw new MoveError(`${projectId}: the target ${to} is this host (the source)`, me);
  const ds = `${c.projectsRoot}/${projectId}`;
  return withProjectLease(catalog, projectId, o.owner, o.leaseMs ?? 120_000, async (lock) => {
    step(`locked (token ${lock.token})`);
    const p = await catalog.getProject(projectId);
    if (!p) throw new MoveError(`project ${projectId} is not in the catalog`, null);
    const hosts = new Map((await catalog.listHosts()).map((h) => [h.id, h]));
    const target = hosts.get(to);
    if (!target) throw new MoveError(`host ${to} is not in the catalog (see storagectl hosts)`, p.primary);
    const resumedSwitch = p.state === 'moving' && p.primary === to && (await zfs.exists(ds));
    if (resumedSwitch) {
      // an earlier run switched the catalog to the target and stopped: finish it
      step(`resuming: the catalog already names ${to}; finishing the switch`);
      const fin = await finish(agent, p, target, o, lock.token, step, await expectedGuid(agent, projectId));
      return { project: projectId, from: me, to, finalSnapshot: fin.snapshot, finalGuid: fin.guid, rounds: [], downtimeMs: 0, source: fin.source, resumed: true };
    }
    if (p.primary !== me) throw new MoveError(`project ${projectId} is served by ${p.primary ?? 'no host'}, not ${me}: run the move there`, p.primary);
    if (p.state !== 'active' && p.state !== 'moving') throw new MoveError(`project ${projectId} is ${p.state}; finish that first`, p.primary);
    const dead = deadAfterMs(c);
    if (target.heartbeatAt === null || Date.now() - target.heartbeatAt > dead) throw new MoveError(`target ${to} has no recent heartbeat (dead for the catalog): not moving there`, me);

    const { mounted: wasMountedProp } = await zfs.get(ds, ['mounted']);
    const startedEvent = p.state === 'moving' ? await lastMoveStart(catalog, projectId) : undefined;
    const wasMounted = wasMountedProp === 'yes' || startedEvent?.wasMounted === true;
    await catalog.addEvent({ project: projectId, host: me, kind: 'move-started', detail: JSON.stringify({ from: me, to, wasMounted }) });
    await catalog.setLocation(projectId, me, 'moving', lock.token);
    if (!p.targets.includes(to)) {
      await catalog.setTargets(projectId, [...p.targets, to]);
      p.targets = [...p.targets, to];
    }
    const rounds: MoveResult['rounds'] = [];
    let unmountedAt = 0;
    let final: { snap: string; guid: string } | undefined;
    try {
      // pre-sync while the project keeps serving
      const threshold = o.presyncThresholdBytes ?? 64 * 2 ** 20;
      const maxRounds = o.maxPresyncRounds ?? 5;
      for (let i = 1; i <= maxRounds; i++) {
        const r = await syncRound(agent, projectId, to, 'presync', rounds);
        step(`pre-sync round ${i}: ${fmtBytes(r.bytes)} in ${(r.ms / 1000).toFixed(1)} s`);
        if (r.bytes < threshold) break;
      }
      // stop writes, final incremental
      await unmountSource(agent, ds, !!o.forceUnmount, step);
      unmountedAt = Date.now();
      const r = await syncRound(agent, projectId, to, 'final', rounds);
      step(`final incremental: ${fmtBytes(r.bytes)} (${r.snapshot})`);
      // verify on the target's own listing
      const listing = await fetchListing(agent.ssh, target, { timeoutSeconds: 60, projects: [projectId] });
      const have = listing.datasets[projectId]?.snapshots.find((s) => s.guid === r.guid);
      if (!have) throw new Error(`${to}'s listing does not show the final snapshot ${r.snapshot} (guid ${r.guid})`);
      final = { snap: r.snapshot, guid: r.guid };
      step(`verified on ${to}: ${r.snapshot} guid ${r.guid}`);
    } catch (e) {
      // not switched: the source serves again
      const msg = (e as Error).message;
      const back: string[] = [];
      try {
        if (wasMounted) {
          const { mounted } = await zfs.get(ds, ['mounted']);
          if (mounted !== 'yes') await zfs.mount(ds);
          back.push('remounted');
        }
        await catalog.setLocation(projectId, me, 'active', lock.token);
        back.push('active again');
      } catch (e2) {
        back.push(`restoring the source failed too: ${(e2 as Error).message}`);
      }
      await catalog.addEvent({ project: projectId, host: me, kind: 'move-failed', detail: `to ${to}: ${msg}` }).catch(() => undefined);
      throw new MoveError(`move of ${projectId} to ${to} failed before the switch: ${msg}. The project is still served by ${me} (${back.join(', ')}); re-run to try again`, me);
    }

    // switch: from here on the target is the one that may serve
    await catalog.setLocation(projectId, to, 'moving', lock.token);
    step(`catalog names ${to}`);
    const fin = await finish(agent, { ...p, primary: to, state: 'moving' }, target, o, lock.token, step, final.guid);
    const downtimeMs = Date.now() - unmountedAt;
    await catalog.addEvent({ project: projectId, host: to, kind: 'moved', detail: `from ${me} to ${to} at ${final.snap} (guid ${final.guid}); writes stopped for ${(downtimeMs / 1000).toFixed(1)} s; source ${fin.source}` });
    return { project: projectId, from: me, to, finalSnapshot: final.snap, finalGuid: final.guid, rounds, downtimeMs, source: fin.source, resumed: false };
  });
}

/** Promote on the target, turn the source's dataset into a replica (or drop it), go active. */
async function finish(agent: Agent, p: ProjectRecord, target: HostRecord, o: MoveOptions, token: number, step: (s: string) => void, guid: string): Promise<{ snapshot: string; guid: string; source: 'replica' | 'dropped' }> {
  const { catalog, zfs, config: c } = agent;
  const me = c.host;
  const ds = `${c.projectsRoot}/${p.id}`;
  const conn = agent.ssh.get(sshTarget(target));
  const r = await conn.exec(formatRemoteCommand({ op: 'promote', project: p.id, token, guid }), { timeoutSeconds: 120 });
  if (r.code !== 0) {
    throw new MoveError(
      `promote on ${target.id} failed (exit ${r.code}): ${r.stderr.trim()}. The catalog names ${target.id} (state moving) and ${me} has stopped serving; ` +
        `re-run \`storagectl move ${p.id} ${target.id}\` here to finish, or \`storagectl failover ${p.id} --to ${me}\` to serve it from here again`,
      null,
    );
  }
  step(`promoted and mounted on ${target.id}`);
  // the source's copy becomes an ordinary replica (the new primary sends incrementals on
  // its newest snapshot); its holds for targets are released: a replica holds nothing
  const tree = await zfs.list(ds, { depth: 0 });
  const info = tree.get(ds);
  const newest = info?.snapshots[info.snapshots.length - 1];
  const { mounted } = await zfs.get(ds, ['mounted']);
  if (mounted === 'yes') await zfs.unmount(ds, { force: true });
  const held = (info?.snapshots ?? []).filter((s) => (s.userrefs ?? 1) > 0).map((s) => `${ds}@${s.snap}`);
  for (const t of new Set([...p.targets, target.id])) {
    for (const snap of held) await zfs.release(holdTagFor(t), [snap]).catch(() => undefined);
  }
  let source: 'replica' | 'dropped';
  const replica = `${c.replicasRoot}/${p.id}`;
  if (o.dropSource) {
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
    source = 'replica';
    step(`${me} keeps ${replica} as a replica`);
  }
  const targets = [...p.targets.filter((t) => t !== target.id && t !== me), ...(source === 'replica' ? [me] : [])];
  await catalog.setTargets(p.id, targets);
  // replica rows: the new primary is no replica; the source holds exactly the final state
  await catalog.deleteReplica(p.id, target.id);
  if (source === 'replica' && newest) {
    await catalog.upsertReplica({ project: p.id, host: me, snapshot: newest.snap, guid: newest.guid, snapshotCreation: newest.creation, confirmedAt: Date.now() });
  } else await catalog.deleteReplica(p.id, me);
  await catalog.setLocation(p.id, target.id, 'active', token);
  return { snapshot: newest?.snap ?? '?', guid: newest?.guid ?? '?', source };
}

/** A resumed switch promotes what the source holds: its newest snapshot's guid. */
async function expectedGuid(agent: Agent, project: string): Promise<string> {
  const ds = `${agent.config.projectsRoot}/${project}`;
  const snaps = (await agent.zfs.listSnapshots([ds])).snapshots.get(ds) ?? [];
  const newest = snaps[snaps.length - 1];
  if (!newest) throw new MoveError(`cannot finish the move of ${project}: ${ds} has no snapshot to promote the target at`, null);
  return newest.guid;
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

async function unmountSource(agent: Agent, ds: string, force: boolean, step: (s: string) => void): Promise<void> {
  const { zfs } = agent;
  const { mounted } = await zfs.get(ds, ['mounted']);
  if (mounted !== 'yes') {
    step('source already unmounted');
    return;
  }
  // a busy file system (a file open at that instant) is retried for ~5 s; --force then
  // forces it (note: a forced unmount under active I/O wedged zfs-fuse in our tests)
  const tries = 10;
  for (let attempt = 1; ; attempt++) {
    try {
      await zfs.unmount(ds, { force: force && attempt > tries });
      step(`writes stopped: unmounted at the source${attempt > 1 ? ` (attempt ${attempt})` : ''}`);
      return;
    } catch (e) {
      const busy = e instanceof ZfsCommandError && (e.kind === 'busy' || /busy/i.test(e.stderr));
      if (!busy || attempt > (force ? tries : tries - 1)) {
        throw new Error(busy ? `${ds} is busy (processes have files open under its mountpoint): stop them, or re-run with --force to unmount anyway` : (e as Error).message);
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

async function lastMoveStart(catalog: Catalog, project: string): Promise<{ wasMounted: boolean } | undefined> {
  const events = await catalog.listEvents({ project, limit: 200 });
  const e = [...events].sort((a, b) => b.at - a.at).find((x) => x.kind === 'move-started');
  if (!e) return undefined;
  try {
    const d = JSON.parse(e.detail) as { wasMounted?: unknown };
    return { wasMounted: d.wasMounted === true };
  } catch {
    return undefined;
  }
}

function fmtBytes(b: number): string {
  return b < 2 ** 20 ? `${(b / 1024).toFixed(0)} KiB` : `${(b / 2 ** 20).toFixed(1)} MiB`;
}

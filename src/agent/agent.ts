// The per-host agent: one cycle = snapshot what changed, plan and send what each
// target lacks, confirm by the target's listing, move holds, prune, heartbeat.
// Planning is pure (replica/plan.ts, replica/retention.ts, agent/placement.ts);
// this file is the edge where zfs, ssh and the catalog are called.
//
// Cost of an idle cycle (nothing changed): 2 local zfs calls (one listing of the
// projects root, one of the replicas root) + 1 SSH listing per target host.
import PQueue from 'p-queue';
import { randomUUID } from 'node:crypto';
import { Zfs, CommandRunner, ZfsCommandError, type DatasetInfo, type DatasetTree, type Capabilities } from '../zfs/index.js';
import { SshPool, type SshTarget } from '../replica/transport.js';
import { formatRemoteCommand, type RemoteListing } from '../replica/protocol.js';
import { fetchListing } from '../replica/listing.js';
import { planReplication, describePlan, type Plan, type SnapRef } from '../replica/plan.js';
import { planPrune, parseGrid, DEFAULT_PRIMARY_GRID, DEFAULT_REPLICA_GRID, type GridPolicy } from '../replica/retention.js';
import { placeReplicas } from './placement.js';
import { DirtyTracker } from './dirty.js';
import type { Catalog, HostRecord, ProjectRecord, ReplicaRecord } from '../catalog/types.js';
import type { Config } from './config.js';
import { autoSnapshotName, isProjectId } from '../util/validate.js';
import type { Logger } from '../util/log.js';
import type { AgentMetrics } from './metrics.js';

export interface CycleReport {
  startedAt: number;
  durationMs: number;
  localZfsCalls: number;
  zfsCallsByVerb: Record<string, number>;
  snapshotsTaken: number;
  listings: Record<string, number>;
  sends: Array<{ project: string; target: string; kind: string; bytes: number; ms: number }>;
  failures: Array<{ project?: string; target?: string; error: string }>;
  conflicts: Array<{ project: string; target: string; message: string }>;
  pruned: number;
  confirmed: number;
}

export interface AgentDeps {
  config: Config;
  catalog: Catalog;
  zfs?: Zfs;
  ssh?: SshPool;
  log: Logger;
  metrics?: AgentMetrics;
  /** the transfer progress callback (storagectl replicate shows a bar) */
  onProgress?: (p: { project: string; target: string; bytes: number; elapsedMs: number }) => void;
  now?: () => number;
}

/** how often an unchanged, still-confirmed replica row is rewritten (its confirmedAt refreshed) */
export const CONFIRM_REFRESH_MS = 10 * 60_000;

export function holdTagFor(target: string): string {
  return `storage:replica:${target}`;
}

interface Job {
  project: ProjectRecord;
  target: HostRecord;
  plan: Plan;
  lagSec: number;
  baseSnap?: string;
  toSnap?: SnapRef;
}

export class Agent {
  config: Config;
  readonly zfs: Zfs;
  readonly runner: CommandRunner;
  readonly ssh: SshPool;
  readonly catalog: Catalog;
  readonly dirty: DirtyTracker;
  private readonly log: Logger;
  private readonly metrics?: AgentMetrics;
  private readonly now: () => number;
  private primaryGrid: GridPolicy;
  private replicaGrid: GridPolicy;
  private abort = new AbortController();
  private targetQueues = new Map<string, PQueue>();
  private globalQueue: PQueue;
  cycles = 0;
  private draining = false;

  constructor(private readonly deps: AgentDeps) {
    this.config = deps.config;
    this.catalog = deps.catalog;
    this.log = deps.log;
    this.metrics = deps.metrics;
    this.now = deps.now ?? Date.now;
    this.runner = deps.zfs?.runner ?? new CommandRunner({ prefix: deps.config.zfs.commandPrefix });
    this.zfs = deps.zfs ?? new Zfs({ runner: this.runner, zfs: deps.config.zfs.zfsPath, zpool: deps.config.zfs.zpoolPath, capabilitiesCache: `${deps.config.stateDir}/capabilities.json` });
    this.ssh = deps.ssh ?? new SshPool(sshOptions(deps.config));
    this.dirty = new DirtyTracker(deps.log);
    this.primaryGrid = deps.config.retention.primary ? parseGrid(deps.config.retention.primary, 'retention.primary') : DEFAULT_PRIMARY_GRID;
    this.replicaGrid = deps.config.retention.replica ? parseGrid(deps.config.retention.replica, 'retention.replica') : DEFAULT_REPLICA_GRID;
    this.globalQueue = new PQueue({ concurrency: deps.config.replication.globalConcurrency });
    this.runner.onCommand((ev) => this.metrics?.zfsCommand(ev.verb, ev.durationMs / 1000, ev.ok));
  }

  /** Applies a reloaded configuration (SIGHUP). Identity fields must not change. */
  reconfigure(next: Config): void {
    for (const k of ['host', 'pool', 'projectsRoot', 'replicasRoot'] as const) {
      if (next[k] !== this.config[k]) throw new Error(`reload: ${k} cannot change at runtime (${this.config[k]} -> ${next[k]}); restart the agent`);
    }
    this.primaryGrid = next.retention.primary ? parseGrid(next.retention.primary, 'retention.primary') : DEFAULT_PRIMARY_GRID;
    this.replicaGrid = next.retention.replica ? parseGrid(next.retention.replica, 'retention.replica') : DEFAULT_REPLICA_GRID;
    this.globalQueue.concurrency = next.replication.globalConcurrency;
    for (const q of this.targetQueues.values()) q.concurrency = next.replication.concurrencyPerTarget;
    this.config = next;
  }

  /** Registers this host and creates the two roots if missing (once at start). */
  async init(): Promise<void> {
    const c = this.config;
    await this.catalog.upsertHost({ id: c.host, datacenter: c.datacenter, address: c.address, port: c.port, root: c.replicasRoot });
    if (!(await this.zfs.exists(c.projectsRoot))) await this.zfs.create(c.projectsRoot, { parents: true, mountpoint: c.mountBase, canmount: 'off' });
    if (!(await this.zfs.exists(c.replicasRoot))) await this.zfs.create(c.replicasRoot, { parents: true, mountpoint: 'none', canmount: 'off', readonly: true });
    await this.catalog.heartbeat(c.host, 0, this.now());
  }

  /** Aborts running transfers (SIGTERM after the grace period). */
  abortTransfers(): void {
    this.abort.abort();
    for (const q of this.targetQueues.values()) q.clear();
    this.globalQueue.clear();
  }

  /** Stops taking new jobs; running ones continue (SIGTERM, first phase). */
  drain(): void {
    // jobs planned after this point (the cycle may still be listing) must not start either
    this.draining = true;
    for (const q of this.targetQueues.values()) q.clear();
    this.globalQueue.clear();
  }

  async close(): Promise<void> {
    await this.dirty.close();
    this.ssh.closeAll();
  }

  private targetQueue(host: string): PQueue {
    let q = this.targetQueues.get(host);
    if (!q) this.targetQueues.set(host, (q = new PQueue({ concurrency: this.config.replication.concurrencyPerTarget })));
    return q;
  }

  private liveness(): (h: HostRecord) => boolean {
    const grace = 3 * this.config.interval * 1000;
    const now = this.now();
    return (h) => h.heartbeatAt !== null && now - h.heartbeatAt <= grace;
  }

  /** One full cycle. Never throws for per-project problems: they are reported. */
  async runCycle(opts: { only?: string; to?: string } = {}): Promise<CycleReport> {
    const c = this.config;
    const startedAt = this.now();
    const callsBefore = new Map(this.runner.counts);
    const report: CycleReport = { startedAt, durationMs: 0, localZfsCalls: 0, zfsCallsByVerb: {}, snapshotsTaken: 0, listings: {}, sends: [], failures: [], conflicts: [], pruned: 0, confirmed: 0 };
    if (this.abort.signal.aborted) this.abort = new AbortController();
    const caps = await this.zfs.capabilities();

    // 1. what the catalog says (cached by the backend's own client)
    let projects: ProjectRecord[];
    let hosts: HostRecord[];
    try {
      projects = (await this.catalog.listProjectsByPrimary(c.host)).filter((p) => p.state === 'active' || p.state === 'moving');
      hosts = await this.catalog.listHosts();
    } catch (e) {
      this.metrics?.catalogError('read');
      throw e;
    }
    if (opts.only) projects = projects.filter((p) => p.id === opts.only);
    const hostById = new Map(hosts.map((h) => [h.id, h]));
    this.metrics?.heartbeats(hosts);
    const isLive = this.liveness();

    // 2. one local listing of the projects root, and meanwhile one listing per target
    //    already assigned (the two are independent: overlapping them halves an idle cycle)
    const early = new Map<string, Promise<[RemoteListing, ReplicaRecord[]]>>();
    for (const p of projects) {
      for (const t of p.targets) {
        const target = hostById.get(t);
        if (!target || early.has(t) || (opts.to && t !== opts.to)) continue;
        const pr = Promise.all([this.remoteListing(target), this.catalog.listReplicasByHost(t)]);
        pr.catch(() => undefined); // handled where it is awaited
        early.set(t, pr);
      }
    }
    let local = await this.listRoot(c.projectsRoot, ['mounted', 'mountpoint']);

    // 2b. self-fencing: a project mounted here that the catalog no longer serves from this
    //     host (failed over or moved while we were cut off) is unmounted, its data kept
    const mine = new Set(projects.map((p) => p.id));
    for (const ds of local.values()) {
      const id = ds.name.slice(c.projectsRoot.length + 1);
      if (ds.props.mounted !== 'yes' || !isProjectId(id) || mine.has(id) || opts.only) continue;
      try {
        const p = await this.catalog.getProject(id);
        if (!p || p.primary === c.host) continue;
        await this.zfs.unmount(ds.name, { force: true });
        // keep whatever was written here aside under a conflict name (never destroyed):
        // a final snapshot, then the dataset moves to <pool>/conflicts/<uuid>-<time>
        const stamp = autoSnapshotName(new Date(this.now())).replace(/:/g, '');
        await this.zfs.snapshot([`${ds.name}@demoted-${stamp}`]);
        const conflictsRoot = `${c.pool}/conflicts`;
        if (!(await this.zfs.exists(conflictsRoot))) await this.zfs.create(conflictsRoot, { canmount: 'off', mountpoint: 'none' });
        const aside = `${conflictsRoot}/${id}-${stamp}`;
        await this.zfs.rename(ds.name, aside);
        await this.zfs.set(aside, { readonly: 'on', canmount: 'noauto' });
        local.delete(ds.name);
        await this.catalog.addEvent({ project: id, host: c.host, kind: 'demoted', detail: `served by ${p.primary ?? 'no host'} now; unmounted here, this host's data kept in ${aside}` });
        this.log.warn({ project: id, primary: p.primary, keptIn: aside }, 'demoted: a project this host no longer serves was unmounted and kept aside');
      } catch (e) {
        report.failures.push({ project: id, error: `demote: ${(e as Error).message}` });
      }
    }

    // 3. dirty detection and snapshots
    const dirty = this.dirtyProjects(projects, local, caps);
    // file watching only where zfs has no `written`: on OpenZFS the watcher's own directory
    // scans update atimes, which `written` counts, and every cycle would look dirty
    if (!caps.written) this.dirty.sync(projects, local, c.projectsRoot);
    if (dirty.length) {
      const name = autoSnapshotName(new Date(this.now()), c.snapshot.prefix);
      const todo = dirty.filter((id) => !local.get(`${c.projectsRoot}/${id}`)!.snapshots.some((s) => s.snap === name));
      try {
        await this.zfs.snapshot(todo.map((id) => `${c.projectsRoot}/${id}@${name}`));
        report.snapshotsTaken = todo.length;
        for (const id of todo) this.dirty.clear(id);
        this.metrics?.snapshotsCreated(todo.length);
      } catch (e) {
        report.failures.push({ error: `snapshot: ${(e as Error).message}` });
        this.log.error({ err: (e as Error).message }, 'snapshot failed');
      }
      // the new snapshots' guids are needed by the planner: list again (only when something changed)
      local = await this.listRoot(c.projectsRoot, ['mounted', 'mountpoint']);
    }

    // 4. placement for projects short of replicas
    const planned = new Map<string, number>();
    const me = hostById.get(c.host);
    for (const p of projects) {
      if (!me || p.targets.length >= p.replicationFactor) continue;
      const targets = placeReplicas({ primary: me, current: p.targets, factor: p.replicationFactor, hosts, isLive, planned });
      if (targets.length !== p.targets.length) {
        await this.catalog.setTargets(p.id, targets);
        p.targets = targets;
        await this.catalog.addEvent({ project: p.id, host: c.host, kind: 'placement', detail: `replicas on ${targets.join(', ')}` });
      }
    }

    // 5. one listing per target host, then plan every (project, target)
    const byTarget = new Map<string, ProjectRecord[]>();
    for (const p of projects) {
      if (!local.has(`${c.projectsRoot}/${p.id}`)) {
        report.failures.push({ project: p.id, error: `dataset ${c.projectsRoot}/${p.id} is missing on ${c.host} (the catalog says this host is primary)` });
        continue;
      }
      for (const t of p.targets) {
        if (opts.to && t !== opts.to) continue;
        if (!byTarget.has(t)) byTarget.set(t, []);
        byTarget.get(t)!.push(p);
      }
    }
    const jobs: Job[] = [];
    const listings = new Map<string, RemoteListing>();
    await Promise.all(
      [...byTarget.entries()].map(async ([t, ps]) => {
        const target = hostById.get(t);
        if (!target) {
          report.failures.push({ target: t, error: `target host ${t} is not in the catalog` });
          return;
        }
        try {
          const [listing, known] = await (early.get(t) ?? Promise.all([this.remoteListing(target), this.catalog.listReplicasByHost(t)]));
          report.listings[t] = (report.listings[t] ?? 0) + 1;
          listings.set(t, listing);
          this.knownReplicas.set(t, new Map(known.map((r) => [r.project, r])));
          for (const p of ps) {
            const ds = local.get(`${c.projectsRoot}/${p.id}`)!;
            const remote = listing.datasets[p.id];
            const plan = planReplication({ source: refs(ds), target: remote ? remote.snapshots : null, targetResumeToken: remote?.resumeToken });
            const newestRemote = remote?.snapshots.length ? Math.max(...remote.snapshots.map((s) => s.creation)) : 0;
            const lagSec = newestRemote ? Math.max(0, this.now() / 1000 - newestRemote) : Number.POSITIVE_INFINITY;
            // up to date with a source unchanged since its newest snapshot: fresh as of now
            const unchanged = plan.kind === 'up-to-date' && !dirty.includes(p.id) && !this.dirty.isDirty(p.id);
            this.metrics?.replicaFreshness(p.id, t, unchanged ? this.now() / 1000 : newestRemote || null);
            if (plan.kind === 'conflict') {
              report.conflicts.push({ project: p.id, target: t, message: plan.conflict.message });
              this.metrics?.failure(t, plan.conflict.kind);
              await this.catalog.addEvent({ project: p.id, host: t, kind: 'conflict', detail: plan.conflict.message });
              this.log.warn({ project: p.id, target: t, conflict: plan.conflict.kind }, plan.conflict.message);
            } else if (plan.kind === 'up-to-date') {
              await this.confirm(p.id, t, plan.at, report);
            } else if (plan.kind !== 'nothing-to-send') {
              jobs.push({
                project: p,
                target,
                plan,
                lagSec,
                baseSnap: plan.kind === 'incremental' ? plan.from.snap : plan.kind === 'resume' ? newestShared(ds, remote?.snapshots ?? [])?.snap : undefined,
                toSnap: plan.kind === 'full' || plan.kind === 'incremental' ? plan.to : undefined,
              });
            }
          }
        } catch (e) {
          report.failures.push({ target: t, error: (e as Error).message });
          this.metrics?.failure(t, 'listing');
          // retention still needs this target's confirmed snapshots: one catalog read
          if (!this.knownReplicas.has(t)) {
            const rows = await this.catalog.listReplicasByHost(t).catch(() => undefined);
            if (rows) this.knownReplicas.set(t, new Map(rows.map((r) => [r.project, r])));
          }
          this.log.error({ target: t, err: (e as Error).message }, 'target listing failed');
        }
      }),
    );

    // 6. transfers: most lagging first, per-target concurrency plus a global cap
    jobs.sort((a, b) => b.lagSec - a.lagSec);
    const succeeded = new Map<string, Job[]>();
    const perTarget = new Map<string, number>();
    for (const j of jobs) perTarget.set(j.target.id, (perTarget.get(j.target.id) ?? 0) + 1);
    for (const [t, n] of perTarget) this.metrics?.queueDepth(t, n);
    await Promise.all(
      jobs.map((job, i) =>
        this.targetQueue(job.target.id).add(
          () =>
            this.globalQueue.add(async () => {
              const ok = await this.transfer(job, report);
              if (ok) {
                if (!succeeded.has(job.target.id)) succeeded.set(job.target.id, []);
                succeeded.get(job.target.id)!.push(job);
              }
            }),
          { priority: jobs.length - i },
        ),
      ),
    );

    for (const t of this.targetQueues.keys()) this.metrics?.queueDepth(t, 0);

    // 7. confirm by the target's own listing, record replicas, move holds
    for (const [t, done] of succeeded) {
      const target = hostById.get(t)!;
      try {
        const listing = await this.remoteListing(target);
        report.listings[t] = (report.listings[t] ?? 0) + 1;
        const hold: string[] = [];
        const release: string[] = [];
        for (const job of done) {
          const remote = listing.datasets[job.project.id];
          let want = job.toSnap;
          if (job.plan.kind === 'resume') {
            // the token names no snapshot: confirm (and hold) the target's newest snapshot
            // that the source has, by guid; nothing matching = the next cycle plans anew
            want = newestShared(local.get(`${c.projectsRoot}/${job.project.id}`), remote?.snapshots ?? []);
            if (!want) continue;
          }
          const got = remote?.snapshots.find((s) => want && s.guid === want.guid);
          if (!want || !got) {
            report.failures.push({ project: job.project.id, target: t, error: `after the transfer, ${t}'s listing does not show guid ${want?.guid} (${want?.snap})` });
            continue;
          }
          await this.confirm(job.project.id, t, want, report);
          hold.push(`${c.projectsRoot}/${job.project.id}@${want.snap}`);
          if (job.baseSnap && job.baseSnap !== want.snap) release.push(`${c.projectsRoot}/${job.project.id}@${job.baseSnap}`);
        }
        await this.moveHolds(t, hold, release, local);
      } catch (e) {
        report.failures.push({ target: t, error: `confirmation: ${(e as Error).message}` });
      }
    }

    // 8. retention (primaries, then replicas): zero zfs calls when nothing expires
    report.pruned += await this.prunePrimaries(projects, local, listings, report);
    report.pruned += await this.pruneReplicas(report);

    // 9. heartbeat
    try {
      await this.catalog.heartbeat(c.host, projects.length + this.replicaCount, this.now());
    } catch (e) {
      this.metrics?.catalogError('heartbeat');
      report.failures.push({ error: `heartbeat: ${(e as Error).message}` });
    }
    this.metrics?.roles(projects.length, this.replicaCount);

    for (const [verb, n] of this.runner.counts) {
      const d = n - (callsBefore.get(verb) ?? 0);
      if (d > 0) report.zfsCallsByVerb[verb] = d;
    }
    report.localZfsCalls = Object.values(report.zfsCallsByVerb).reduce((a, b) => a + b, 0);
    report.durationMs = this.now() - startedAt;
    this.cycles++;
    this.metrics?.cycle(report);
    this.log.info(
      { cycle: this.cycles, ms: report.durationMs, zfsCalls: report.localZfsCalls, snapshots: report.snapshotsTaken, sends: report.sends.length, failures: report.failures.length, conflicts: report.conflicts.length, pruned: report.pruned },
      'cycle done',
    );
    return report;
  }

  private replicaCount = 0;

  private async listRoot(root: string, props: string[]): Promise<DatasetTree> {
    try {
      return await this.zfs.list(root, { depth: 1, props });
    } catch (e) {
      if (e instanceof ZfsCommandError && e.kind === 'not-found') return new Map();
      throw e;
    }
  }

  private dirtyProjects(projects: ProjectRecord[], local: DatasetTree, caps: Capabilities): string[] {
    const out: string[] = [];
    for (const p of projects) {
      const ds = local.get(`${this.config.projectsRoot}/${p.id}`);
      if (!ds) continue;
      const newest = ds.snapshots[ds.snapshots.length - 1];
      if (!newest) {
        out.push(p.id); // never snapshotted: take the first one
        continue;
      }
      if (caps.written && ds.written !== undefined) {
        if (ds.written > 0) out.push(p.id);
        continue;
      }
      // zfs-fuse has no `written`: unmounted datasets cannot change; mounted ones are
      // watched (chokidar). A referenced size that differs from the newest snapshot's
      // also counts (it catches writes made while the agent was not watching).
      if (ds.props.mounted !== 'yes') continue;
      if (this.dirty.isDirty(p.id) || ds.referenced !== newest.referenced) out.push(p.id);
    }
    return out;
  }

  private remoteListing(target: HostRecord): Promise<RemoteListing> {
    return fetchListing(this.ssh, target);
  }

  /** target -> project -> the catalog's replica row, read once per target per cycle */
  private readonly knownReplicas = new Map<string, Map<string, ReplicaRecord>>();

  /**
   * Records a replica confirmed by the target's listing. An unchanged row is rewritten
   * only every CONFIRM_REFRESH_MS (so an idle cycle writes nothing to the catalog).
   */
  private async confirm(project: string, host: string, at: SnapRef, report: CycleReport): Promise<void> {
    const known = this.knownReplicas.get(host)?.get(project);
    if (known && known.guid === at.guid && this.now() - known.confirmedAt < CONFIRM_REFRESH_MS) return;
    const rec: ReplicaRecord = { project, host, snapshot: at.snap, guid: at.guid, snapshotCreation: at.creation, confirmedAt: this.now() };
    await this.catalog.upsertReplica(rec);
    this.knownReplicas.get(host)?.set(project, rec);
    report.confirmed++;
  }

  private async transfer(job: Job, report: CycleReport): Promise<boolean> {
    const c = this.config;
    const ds = `${c.projectsRoot}/${job.project.id}`;
    const t0 = this.now();
    const plan = job.plan;
    // one id per transfer, in every log line about it (both ends: the receiver's audit
    // log records the same command and time)
    const log = this.log.child({ transfer: randomUUID().slice(0, 8), project: job.project.id, target: job.target.id });
    if (this.draining || this.abort.signal.aborted) {
      // stopping (SIGTERM): a transfer planned while the cycle was still listing must not start
      report.failures.push({ project: job.project.id, target: job.target.id, error: 'not started: the agent is stopping' });
      return false;
    }
    let send;
    try {
      if (plan.kind === 'resume') {
        send = await this.zfs.send({ snapshot: `${ds}@x`, resumeToken: plan.token });
      } else if (plan.kind === 'full') {
        send = await this.zfs.send({ snapshot: `${ds}@${plan.to.snap}`, replicate: true, compressed: true });
      } else if (plan.kind === 'incremental') {
        send = await this.zfs.send({ snapshot: `${ds}@${plan.to.snap}`, from: plan.from.snap, incremental: 'I', replicate: true, compressed: true });
      } else return false;
    } catch (e) {
      report.failures.push({ project: job.project.id, target: job.target.id, error: (e as Error).message });
      return false;
    }
    const conn = this.ssh.get(sshTarget(job.target));
    const limit = c.ssh.bandwidthLimitPerTarget[job.target.id] ?? c.ssh.bandwidthLimit;
    const transfer$ = conn.transfer(formatRemoteCommand({ op: 'recv', project: job.project.id }), send.stream, {
      bandwidthLimit: limit,
      signal: this.abort.signal,
      onProgress: (p) => this.deps.onProgress?.({ project: job.project.id, target: job.target.id, ...p }),
    });
    try {
      const [res] = await Promise.all([transfer$, send.done]);
      const ms = this.now() - t0;
      report.sends.push({ project: job.project.id, target: job.target.id, kind: plan.kind, bytes: res.bytes, ms });
      if (job.toSnap) this.metrics?.replicaFreshness(job.project.id, job.target.id, job.toSnap.creation);
      this.metrics?.sent(job.target.id, res.bytes, ms / 1000);
      log.info({ plan: describePlan(plan), bytes: res.bytes, ms }, 'replicated');
      return true;
    } catch (e) {
      send.kill();
      await send.done.catch(() => undefined);
      const msg = (e as Error).message;
      report.failures.push({ project: job.project.id, target: job.target.id, error: msg });
      this.metrics?.failure(job.target.id, 'transfer');
      log.error({ plan: describePlan(plan), err: msg }, 'replication failed');
      await this.catalog.addEvent({ project: job.project.id, host: job.target.id, kind: 'replication-failed', detail: msg }).catch(() => undefined);
      if (plan.kind === 'resume') {
        // a stale token (its source snapshot pruned, or the partial state unusable): discard
        // the partial receive on the target; the next cycle plans from the real snapshots.
        // First let the failed receive end (`zfs send -t` of a stale token fails at once,
        // and `zfs recv -A` while that receive still runs would find the dataset busy).
        await transfer$.catch(() => undefined);
        const r = await conn.exec(formatRemoteCommand({ op: 'abort-resume', project: job.project.id })).catch((e: Error) => ({ code: -1, stderr: e.message }));
        log.warn({ code: r.code, stderr: r.stderr }, 'discarded the partial receive after a failed resume');
      }
      return false;
    }
  }

  /** Holds the new base per target and releases the old one: batched, one call each. */
  private async moveHolds(target: string, hold: string[], release: string[], local: DatasetTree): Promise<void> {
    const tag = holdTagFor(target);
    if (hold.length) {
      // a snapshot may already carry this tag (e.g. re-sent after a lost confirmation)
      try {
        await this.zfs.hold(tag, hold);
      } catch (e) {
        if (!(e instanceof ZfsCommandError && e.kind === 'held')) throw e;
        for (const s of hold) await this.zfs.hold(tag, [s]).catch(() => undefined);
      }
    }
    const held = release.filter((s) => {
      const [dsName, snap] = s.split('@');
      const info = local.get(dsName!)?.snapshots.find((x) => x.snap === snap);
      return !info || (info.userrefs ?? 1) > 0;
    });
    if (held.length) {
      try {
        await this.zfs.release(tag, held);
      } catch {
        // one missing tag fails the batch: release one by one, ignoring "no such tag"
        for (const s of held) await this.zfs.release(tag, [s]).catch(() => undefined);
      }
    }
  }

  private async prunePrimaries(projects: ProjectRecord[], local: DatasetTree, listings: Map<string, RemoteListing>, report: CycleReport): Promise<number> {
    const nowSec = this.now() / 1000;
    let n = 0;
    for (const p of projects) {
      const ds = local.get(`${this.config.projectsRoot}/${p.id}`);
      if (!ds || ds.snapshots.length < 2) continue;
      // never prune what a replica has as its newest (its incremental base)
      const protect = new Set<string>();
      const byGuid = new Map(ds.snapshots.map((s) => [s.guid, s.snap]));
      let unknown = false;
      for (const t of p.targets) {
        const remote = listings.get(t)?.datasets[p.id];
        if (listings.has(t)) {
          const newest = remote?.snapshots.reduce<(typeof remote.snapshots)[number] | undefined>((a, s) => (!a || s.createtxg > a.createtxg ? s : a), undefined);
          if (newest && byGuid.has(newest.guid)) protect.add(byGuid.get(newest.guid)!);
          continue;
        }
        // target not listed this cycle: protect its last confirmed snapshot (the catalog's
        // rows of that host, read once per target), or prune nothing for this project
        const rec = this.knownReplicas.get(t)?.get(p.id);
        if (rec && byGuid.has(rec.guid)) protect.add(byGuid.get(rec.guid)!);
        else unknown = true;
      }
      if (unknown) continue;
      const decision = planPrune(ds.snapshots.map((s) => ({ snap: s.snap, creation: s.creation, userrefs: s.userrefs })), this.primaryGrid, nowSec, protect);
      if (decision.destroy.length === 0) continue;
      try {
        await this.zfs.destroySnapshots(ds.name, decision.destroy.map((d) => d.snap));
        n += decision.destroy.length;
      } catch (e) {
        report.failures.push({ project: p.id, error: `prune: ${(e as Error).message}` });
      }
    }
    this.metrics?.snapshotsPruned('primary', n);
    return n;
  }

  private async pruneReplicas(report: CycleReport): Promise<number> {
    const tree = await this.listRoot(this.config.replicasRoot, []);
    const nowSec = this.now() / 1000;
    let n = 0;
    let count = 0;
    for (const ds of tree.values()) {
      const id = ds.name.slice(this.config.replicasRoot.length + 1);
      if (ds.name === this.config.replicasRoot || !isProjectId(id)) continue;
      count++;
      if (ds.snapshots.length < 2) continue;
      const decision = planPrune(ds.snapshots.map((s) => ({ snap: s.snap, creation: s.creation, userrefs: s.userrefs })), this.replicaGrid, nowSec, new Set());
      if (decision.destroy.length === 0) continue;
      try {
        await this.zfs.destroySnapshots(ds.name, decision.destroy.map((d) => d.snap));
        n += decision.destroy.length;
      } catch (e) {
        report.failures.push({ project: id, error: `replica prune: ${(e as Error).message}` });
      }
    }
    this.replicaCount = count;
    this.metrics?.snapshotsPruned('replica', n);
    return n;
  }
}

/** The source's snapshot that is the target's newest one the source also has (by guid). */
function newestShared(src: DatasetInfo | undefined, target: readonly SnapRef[]): SnapRef | undefined {
  if (!src) return undefined;
  const byGuid = new Map(refs(src).map((s) => [s.guid, s]));
  let best: SnapRef | undefined;
  let bestTxg = -Infinity;
  for (const t of target) {
    if (byGuid.has(t.guid) && t.createtxg > bestTxg) {
      best = byGuid.get(t.guid);
      bestTxg = t.createtxg;
    }
  }
  return best;
}

function refs(ds: DatasetInfo): SnapRef[] {
  return ds.snapshots.map((s) => ({ snap: s.snap, guid: s.guid, createtxg: s.createtxg, creation: s.creation }));
}

export function sshTarget(h: HostRecord): SshTarget {
  return { host: h.id, address: h.address, port: h.port };
}

export function sshOptions(c: Config) {
  return {
    user: c.ssh.user,
    privateKey: c.ssh.privateKey,
    knownHostsFile: c.ssh.knownHosts,
    keepaliveSeconds: c.ssh.keepalive,
    connectTimeoutSeconds: c.ssh.connectTimeout,
    operationTimeoutSeconds: c.ssh.operationTimeout,
    stallTimeoutSeconds: c.ssh.stallTimeout,
    compression: c.ssh.compression,
  };
}

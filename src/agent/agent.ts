// The per-host agent: one cycle = snapshot what changed, plan and send what each
// target lacks, confirm by the target's listing, move holds, prune, heartbeat.
// Planning is pure (replica/plan.ts, replica/retention.ts, agent/placement.ts);
// this file is the edge where zfs, ssh and the catalog are called.
//
// Cost of an idle cycle (nothing changed): 2 local zfs calls (one listing of the
// projects root, one of the replicas root) + 1 SSH listing per target host.
import PQueue from 'p-queue';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Zfs, CommandRunner, ZfsCommandError, type DatasetInfo, type DatasetTree, type Capabilities } from '../zfs/index.js';
import { SshPool, type SshTarget } from '../replica/transport.js';
import { formatRemoteCommand, type RemoteListing } from '../replica/protocol.js';
import { fetchListing } from '../replica/listing.js';
import { planReplication, describePlan, type Plan, type SnapRef } from '../replica/plan.js';
import { planPrune, parseGrid, DEFAULT_PRIMARY_GRID, DEFAULT_REPLICA_GRID, type GridPolicy } from '../replica/retention.js';
import { placeReplicas } from './placement.js';
import { failover, LockedError, FailoverNotNeeded } from './failover.js';
import { DirtyTracker } from './dirty.js';
import type { Catalog, HostRecord, ProjectRecord, ReplicaRecord } from '../catalog/types.js';
import { deadAfterMs, selfFenceAfterMs, type Config } from './config.js';
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
  onProgress?: (p: { project: string; target: string; bytes: number; elapsedMs: number; estimate?: number }) => void;
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
  /** estimated stream size (full: referenced; incremental: sum of `written` where listed) */
  estimate?: number;
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
    await this.zfs.ensureDataset(c.projectsRoot, { parents: true, mountpoint: c.mountBase, canmount: 'off' });
    await this.zfs.ensureDataset(c.replicasRoot, { parents: true, mountpoint: 'none', canmount: 'off', readonly: true });
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
    const grace = deadAfterMs(this.config);
    const now = this.now();
    return (h) => h.heartbeatAt !== null && now - h.heartbeatAt <= grace;
  }

  /** One full cycle. Never throws for per-project problems: they are reported. */
  async runCycle(opts: { only?: string; to?: string; includeMoving?: boolean } = {}): Promise<CycleReport> {
    const c = this.config;
    const startedAt = this.now();
    const callsBefore = new Map(this.runner.counts);
    const report: CycleReport = { startedAt, durationMs: 0, localZfsCalls: 0, zfsCallsByVerb: {}, snapshotsTaken: 0, listings: {}, sends: [], failures: [], conflicts: [], pruned: 0, confirmed: 0 };
    if (this.abort.signal.aborted) this.abort = new AbortController();
    const caps = await this.zfs.capabilities();

    // 1. what the catalog says (cached by the backend's own client)
    let projects: ProjectRecord[];
    let hosts: HostRecord[];
    let served: ProjectRecord[];
    try {
      served = (await this.catalog.listProjectsByPrimary(c.host)).filter((p) => servesHere(p, c.host));
      // a project being moved is snapshotted and sent only by the move itself
      projects = served.filter((p) => p.state === 'active' || opts.includeMoving);
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
    //     (the fence check between cycles does the same within seconds)
    const mine = new Set(served.map((p) => p.id));
    for (const ds of local.values()) {
      const id = ds.name.slice(c.projectsRoot.length + 1);
      // mounted or not (a fence over SSH unmounts it): a copy under projects/ that this host
      // no longer serves is set aside, so that it can neither be served nor mistaken for a replica
      if (!isProjectId(id) || mine.has(id) || opts.only) continue;
      try {
        if (await this.demoteIfNotServed(ds.name, ds.props.mounted === 'yes')) local.delete(ds.name);
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
                estimate: estimateStream(ds, plan),
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

    // 9. heartbeat (the daemon also heartbeats on its own timer: a long cycle must not
    //    make this host look dead to the others)
    this.load = projects.length + this.replicaCount;
    try {
      await this.catalog.heartbeat(c.host, this.load, this.now());
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
  private load = 0;

  /** A heartbeat now, with the load of the last cycle (the daemon's timer). */
  async heartbeat(): Promise<void> {
    try {
      await this.catalog.heartbeat(this.config.host, this.load, this.now());
    } catch (e) {
      this.metrics?.catalogError('heartbeat');
      throw e;
    }
  }

  /**
   * A project this host must no longer serve: unmount it, take a final snapshot and
   * keep the dataset aside as <pool>/conflicts/<uuid>-<time> (never destroyed; listed by
   * `storagectl conflicts`). The `demoted` event is what a failover waits for.
   */
  async demote(dataset: string, p: ProjectRecord): Promise<string> {
    const c = this.config;
    if ((await this.zfs.get(dataset, ['mounted'])).mounted === 'yes') await this.zfs.unmount(dataset, { force: true });
    const stamp = autoSnapshotName(new Date(this.now())).replace(/:/g, '');
    await this.zfs.snapshot([`${dataset}@demoted-${stamp}`]);
    const conflictsRoot = `${c.pool}/conflicts`;
    await this.zfs.ensureDataset(conflictsRoot, { canmount: 'off', mountpoint: 'none' });
    const aside = `${conflictsRoot}/${p.id}-${stamp}`;
    await this.zfs.rename(dataset, aside);
    await this.zfs.set(aside, { readonly: 'on', canmount: 'noauto' });
    await this.catalog.addEvent({ project: p.id, host: c.host, kind: 'demoted', detail: `served by ${p.primary ?? 'no host'} (${p.state}) now; unmounted here, this host's data kept in ${aside}` });
    this.log.warn({ project: p.id, primary: p.primary, state: p.state, keptIn: aside }, 'demoted: a project this host no longer serves was unmounted and kept aside');
    return aside;
  }

  /**
   * The one rule for a copy under projects/ (used by the cycle and the fence check): set it
   * aside unless the catalog lets this host serve it. Left alone: a project unknown to the
   * catalog or with no primary (not ours to judge), and an unmounted copy of a project
   * being moved (the move turns it into a replica). `known`: a fresh catalog row, if read.
   */
  private async demoteIfNotServed(dataset: string, mounted: boolean, known?: ProjectRecord): Promise<boolean> {
    const p = known ?? (await this.catalog.getProject(dataset.slice(this.config.projectsRoot.length + 1)));
    if (!p || servesHere(p, this.config.host) || p.primary === null) return false;
    if (p.state === 'moving' && !mounted) return false;
    await this.demote(dataset, p);
    return true;
  }

  /** ms since epoch of the last fresh answer of the catalog (the fence check's read) */
  private lastCatalogOk = Date.now();
  /** projects this agent unmounted because the catalog was unreachable (remounted when it answers) */
  private readonly selfFenced = new Set<string>();
  private lastAutoCheck = 0;

  /** projects mounted here, from /proc/self/mountinfo (no zfs call): dataset names */
  mountedProjects(): Set<string> {
    const root = `${this.config.projectsRoot}/`;
    const out = new Set<string>();
    for (const m of readMounts()) if ((m.fstype === 'zfs' || m.fstype === 'fuse.zfs') && m.source.startsWith(root) && isProjectId(m.source.slice(root.length))) out.add(m.source);
    return out;
  }

  /**
   * Between cycles, every few seconds (failover.fenceCheck): one catalog read of the
   * projects this host serves, compared with what is mounted here. A mounted project the
   * catalog no longer serves from here is demoted at once. With no fresh catalog answer
   * for failover.selfFenceAfter, every project is unmounted (an isolated primary stops
   * serving before a replica may be promoted) and remounted when the catalog answers and
   * still names this host. In auto mode, also fails over projects of dead primaries.
   */
  async fenceCheck(): Promise<{ demoted: string[]; selfFenced: string[]; remounted: string[]; failovers: string[] }> {
    const c = this.config;
    const res = { demoted: [] as string[], selfFenced: [] as string[], remounted: [] as string[], failovers: [] as string[] };
    const mounted = this.mountedProjects();
    let served: ProjectRecord[] | undefined;
    try {
      served = await this.catalog.listProjectsByPrimary(c.host);
      if (!catalogDegraded(this.catalog)) this.lastCatalogOk = this.now();
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, 'fence check: catalog unreachable');
    }
    const fresh = this.now() - this.lastCatalogOk < 1000 * Math.max(c.failover.fenceCheck * 2, 5);
    if (served && fresh) {
      const byId = new Map(served.map((p) => [p.id, p]));
      for (const ds of mounted) {
        const id = ds.slice(c.projectsRoot.length + 1);
        const p = byId.get(id);
        if (p && servesHere(p, c.host)) continue;
        try {
          if (await this.demoteIfNotServed(ds, true, p)) res.demoted.push(id);
        } catch (e) {
          this.log.error({ project: id, err: (e as Error).message }, 'fence check: demote failed');
        }
      }
      // the catalog answers again: remount what this agent unmounted itself
      for (const id of [...this.selfFenced]) {
        const p = byId.get(id);
        this.selfFenced.delete(id);
        if (!p || !servesHere(p, c.host) || mounted.has(`${c.projectsRoot}/${id}`)) continue;
        try {
          await this.zfs.mount(`${c.projectsRoot}/${id}`);
          res.remounted.push(id);
        } catch (e) {
          this.log.error({ project: id, err: (e as Error).message }, 'remount after the catalog came back failed');
        }
      }
      if (res.remounted.length) this.log.warn({ projects: res.remounted }, 'catalog reachable again: remounted the projects unmounted by self-fencing');
    }
    const selfFence = selfFenceAfterMs(c);
    if (selfFence !== null && this.now() - this.lastCatalogOk > selfFence) {
      for (const ds of mounted) {
        const id = ds.slice(c.projectsRoot.length + 1);
        try {
          await this.zfs.unmount(ds, { force: true });
          this.selfFenced.add(id);
          res.selfFenced.push(id);
        } catch (e) {
          this.log.error({ project: id, err: (e as Error).message }, 'self-fence: unmount failed');
        }
      }
      if (res.selfFenced.length) {
        this.log.error({ projects: res.selfFenced, lastCatalogContact: new Date(this.lastCatalogOk).toISOString() }, 'self-fenced: no catalog contact for failover.selfFenceAfter; unmounted every project served here');
        this.metrics?.selfFenced(res.selfFenced.length);
      }
    }
    this.metrics?.fence('demoted', res.demoted.length);
    this.metrics?.fence('remounted', res.remounted.length);
    if (c.failover.mode === 'auto' && served && fresh && this.now() - this.lastAutoCheck >= Math.min(c.interval, 3 * c.failover.fenceCheck) * 1000) {
      this.lastAutoCheck = this.now();
      res.failovers = await this.autoFailover();
      this.metrics?.fence('failover', res.failovers.length);
    }
    return res;
  }

  /**
   * failover: auto. For every dead host (no heartbeat for failover.after), the projects it
   * served that have a replica here are failed over (to the freshest live replica, which
   * may be another host); the project lock lets exactly one replica host do it.
   */
  private async autoFailover(): Promise<string[]> {
    const c = this.config;
    const dead = deadAfterMs(c);
    const done: string[] = [];
    // liveness judged against the time of this read (a failover below takes seconds: a
    // later clock against this old read would make live hosts look dead)
    const t = this.now();
    const isDead = (h: HostRecord | undefined, at: number) => !!h && h.id !== c.host && h.heartbeatAt !== null && at - h.heartbeatAt > dead;
    const deadHosts = (await this.catalog.listHosts()).filter((h) => isDead(h, t));
    for (const h of deadHosts) {
      for (const p of await this.catalog.listProjectsByPrimary(h.id)) {
        if (p.state !== 'active' || !p.targets.includes(c.host)) continue;
        // still dead right now? (fresh read, fresh clock)
        if (!isDead(await this.catalog.getHost(h.id), this.now())) break;
        try {
          try {
            const r = await failover(this.catalog, this.ssh, p.id, { owner: `agent@${c.host}`, graceMs: dead, now: this.now, expectPrimary: h.id });
            done.push(p.id);
            this.log.warn({ project: p.id, from: r.from, to: r.to, snapshot: r.snapshot, dataLossWindowSeconds: r.dataLossWindowSeconds, oldPrimary: r.oldPrimaryFenced }, 'automatic failover done');
          } catch (e) {
            if (e instanceof LockedError || e instanceof FailoverNotNeeded) continue; // another replica host did it
            throw e;
          }
        } catch (e) {
          this.log.error({ project: p.id, deadPrimary: h.id, err: (e as Error).message }, 'automatic failover failed');
          await this.catalog.addEvent({ project: p.id, host: c.host, kind: 'failover-failed', detail: (e as Error).message }).catch(() => undefined);
        }
      }
    }
    return done;
  }

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
      onProgress: (p) => this.deps.onProgress?.({ project: job.project.id, target: job.target.id, ...p, estimate: job.estimate }),
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

/**
 * The catalog lets `host` serve (mount writable) this project: it is named primary,
 * including while a move or failover to it is finishing.
 */
export function servesHere(p: ProjectRecord, host: string): boolean {
  return p.primary === host && (p.state === 'active' || p.state === 'moving' || p.state === 'failing-over');
}

function catalogDegraded(catalog: Catalog): boolean {
  const status = (catalog as { status?: () => { degraded: boolean } }).status;
  return typeof status === 'function' ? status.call(catalog).degraded : false;
}

/** /proc/self/mountinfo: fstype and source of every mount (octal escapes decoded). */
export function readMounts(text?: string): Array<{ mountpoint: string; fstype: string; source: string }> {
  let t = text;
  if (t === undefined) {
    try {
      t = readFileSync('/proc/self/mountinfo', 'utf8');
    } catch {
      return [];
    }
  }
  const unesc = (x: string) => x.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: Array<{ mountpoint: string; fstype: string; source: string }> = [];
  for (const line of t.split('\n')) {
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (dash < 6 || f.length < dash + 3) continue;
    out.push({ mountpoint: unesc(f[4]!), fstype: f[dash + 1]!, source: unesc(f[dash + 2]!) });
  }
  return out;
}

/** Stream size estimate for progress/ETA, or undefined when the listing cannot tell. */
export function estimateStream(ds: DatasetInfo, plan: Plan): number | undefined {
  if (plan.kind === 'full') {
    const r = ds.snapshots.find((s) => s.snap === plan.to.snap)?.referenced;
    return r !== undefined && Number.isFinite(r) ? r : undefined;
  }
  if (plan.kind === 'incremental') {
    const i = ds.snapshots.findIndex((s) => s.snap === plan.from.snap);
    const j = ds.snapshots.findIndex((s) => s.snap === plan.to.snap);
    if (i < 0 || j <= i) return undefined;
    let sum = 0;
    for (const s of ds.snapshots.slice(i + 1, j + 1)) {
      if (s.written === undefined || !Number.isFinite(s.written)) return undefined; // zfs-fuse: no `written`
      sum += s.written;
    }
    return sum;
  }
  return undefined;
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

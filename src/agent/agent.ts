// The per-host agent: one cycle = observe what changed, plan, act (snapshot, send,
// confirm by a scoped listing of the target, move holds, prune). Decisions are pure
// (agent/cycle-plan.ts, replica/plan.ts, replica/retention.ts, agent/placement.ts);
// this file is the edge where zfs, ssh and the catalog are called. What the agent knows
// between cycles lives in its state cache (agent/state.ts). docs/replication.md has the
// algorithm and the cost of a cycle.
import PQueue from 'p-queue';
import ssh2 from 'ssh2';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Zfs, CommandRunner, ZfsCommandError, type Capabilities } from '../zfs/index.js';
import { SshPool, type SshTarget } from '../replica/transport.js';
import { formatRemoteCommand } from '../replica/protocol.js';
import { fetchListing } from '../replica/listing.js';
import { describePlan, type Plan, type SnapRef } from '../replica/plan.js';
import { planPrune, parseGrid, DEFAULT_PRIMARY_GRID, DEFAULT_REPLICA_GRID, type GridPolicy } from '../replica/retention.js';
import { healTargets, leavingTarget } from './placement.js';
import { failover, LockedError, FailoverNotNeeded } from './failover.js';
import { leaseOwner } from '../lock/lease.js';
import { DirtyTracker } from './dirty.js';
import { StateCache, type Snap } from './state.js';
import { auditSlice, decidePairs, freshnessAsOf, newestShared, pairAction, resumeTokenProblem, type PairDecision, type PairInput, type PairKnowledge } from './cycle-plan.js';
import { projectLockName, type Catalog, type HostRecord, type ProjectRecord } from '../catalog/types.js';
import { liveAt, deadAfterMs, fenceBoundMs, selfFenceAfterMs, type Config } from './config.js';
import { mountedProjects, readMounts } from '../zfs/mounts.js';
import { describeSkew, readSkew, skewTooLarge } from './clock.js';
import { describeFence, fenceDataset } from '../zfs/fence.js';
import { SelfFence } from './self-fence.js';
export { readMounts };
import { autoSnapshotName, isProjectId } from '../util/validate.js';
import { keepAside } from '../zfs/keep-aside.js';
import type { Logger } from '../util/log.js';
import type { AgentMetrics } from './metrics.js';

export interface CycleReport {
  startedAt: number;
  durationMs: number;
  localZfsCalls: number;
  zfsCallsByVerb: Record<string, number>;
  snapshotsTaken: number;
  /** zfs calls that listed snapshots, and the snapshot rows they returned */
  snapshotListings: number;
  snapshotsListed: number;
  /** SSH round trips of scoped listings per target, and the bytes they returned */
  listings: Record<string, number>;
  listingBytes: Record<string, number>;
  /** local datasets listed (new, changed, and the audit slice's) */
  datasetsListed: number;
  /** the audit slice's own share of the listings above */
  audit: { datasets: number; snapshotListings: number; snapshotsListed: number; targetRoundTrips: number; ms: number };
  /** catalog reads the cycle made (writes: confirmed + placement + events) */
  catalogReads: number;
  sends: Array<{ project: string; target: string; kind: string; bytes: number; ms: number }>;
  failures: Array<{ project?: string; target?: string; error: string }>;
  conflicts: Array<{ project: string; target: string; message: string }>;
  /** diverged replicas the targets kept aside this cycle (sent whole next) */
  keptAside: Array<{ project: string; target: string; as: string }>;
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
  /**
   * called when the projects this host serves were read again (its generation moved, or
   * the audit period passed): the move runner then reads this host's requests
   */
  onViewChanged?: () => void;
  /** the state cache (default: stateDir/state.db) */
  state?: StateCache;
  /** the self-fence watchdog (default: one over stateDir/catalog-contact, not started) */
  selfFence?: SelfFence;
}

/** "type base64" of the public half of an OpenSSH private key file. */
export function publicKeyOf(privateKeyFile: string): string {
  let text: Buffer;
  try {
    text = readFileSync(privateKeyFile);
  } catch (e) {
    throw new Error(`cannot read the replication key ${privateKeyFile}: ${(e as Error).message}`);
  }
  const key = ssh2.utils.parseKey(text);
  if (key instanceof Error) throw new Error(`replication key ${privateKeyFile}: ${key.message}`);
  const k = Array.isArray(key) ? key[0] : key;
  if (!k) throw new Error(`replication key ${privateKeyFile}: no key in the file`);
  return `${k.type} ${k.getPublicSSH().toString('base64')}`;
}

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
  readonly state: StateCache;
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
    this.state = deps.state ?? new StateCache(`${deps.config.stateDir}/state.db`);
    this.primaryGrid = deps.config.retention.primary ? parseGrid(deps.config.retention.primary, 'retention.primary') : DEFAULT_PRIMARY_GRID;
    this.replicaGrid = deps.config.retention.replica ? parseGrid(deps.config.retention.replica, 'retention.replica') : DEFAULT_REPLICA_GRID;
    this.globalQueue = new PQueue({ concurrency: deps.config.replication.globalConcurrency });
    this.runner.onCommand((ev) => this.metrics?.zfsCommand(ev.verb, ev.durationMs / 1000, ev.ok));
    this.selfFence = deps.selfFence ?? selfFenceFor(deps.config, this.zfs, deps.log, deps.metrics, this.now, () => this.config);
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
    // the public half of this host's replication key: peers' authorized_keys lines are
    // generated from it (storagectl authorized-keys) and receivers check sessions against it
    await this.catalog.upsertHost({ id: c.host, datacenter: c.datacenter, address: c.address, port: c.port, root: c.replicasRoot, replicationKey: publicKeyOf(c.ssh.privateKey) });
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
    this.state.close();
  }

  private targetQueue(host: string): PQueue {
    let q = this.targetQueues.get(host);
    if (!q) this.targetQueues.set(host, (q = new PQueue({ concurrency: this.config.replication.concurrencyPerTarget })));
    return q;
  }

  private liveness(): (h: HostRecord) => boolean {
    return liveAt(this.config, this.now());
  }

  // ---- the cycle: observe -> plan -> act ----------------------------------------------
  //
  // A cycle costs what changed, not what exists. Idle (nothing written, nothing received
  // to confirm, the audit aside) it makes: one catalog read (this host's generation), no
  // catalog write, no target round trip, no snapshot listing, and locally one `zfs get
  // written` of the MOUNTED projects on OpenZFS (none on zfs-fuse, where the file watcher
  // says what changed; none anywhere when nothing is mounted). Everything else comes from
  // the state cache (state.ts), which the agent's own operations and listings keep current
  // and the rolling audit re-checks against zfs (a slice per cycle, all within audit.period).

  /** projects an operation in this process owns (agent/move.ts): cycles leave them alone */
  private readonly claimed = new Set<string>();
  private cycleInFlight: Promise<unknown> | undefined;

  /**
   * An operation takes a project over from the cycles: from now on no cycle snapshots,
   * sends or prunes it, the fence check does not remount it after a self-fence (a move
   * that found it unmounted counts on it staying so), and this resolves once a cycle or a
   * remount that began before has ended. Call the returned function to give it back.
   */
  async claim(project: string): Promise<() => void> {
    this.claimed.add(project);
    await this.cycleInFlight?.catch(() => undefined);
    await this.remounting.catch(() => undefined);
    return () => this.claimed.delete(project);
  }

  /** One cycle. Never throws for per-project problems: they are reported. */
  async runCycle(): Promise<CycleReport> {
    const cycle = this.cycle();
    this.cycleInFlight = cycle;
    try {
      return await cycle;
    } finally {
      if (this.cycleInFlight === cycle) this.cycleInFlight = undefined;
    }
  }

  private async cycle(): Promise<CycleReport> {
    const run = this.startRun();
    if (this.clockProblem) {
      run.report.failures.push({ project: '-', error: this.clockProblem });
      return run.report;
    }
    const caps = await this.zfs.capabilities();

    // observe: the catalog's view (re-read only when this host's generation moved), what
    // is mounted (/proc), what changed, and which datasets the audit re-lists this cycle
    const view = await this.observeCatalog(run.report);
    const mounts = this.projectMounts();
    const mounted = new Set(mounts.keys());
    await this.setAsideUnserved(view.served, mounted, run.report);
    // a project being restored is neither snapshotted nor replicated (its tree is being rewritten)
    // nor is one an operation in this process has claimed (a move: it sends it itself)
    const projects = view.served.filter((p) => p.state === 'active' && p.operation?.kind !== 'restore' && !this.claimed.has(p.id));
    await this.discoverDatasets(run.report);
    const unknown = projects.map((p) => this.dsOf(p.id)).filter((d) => !this.state.knows(d));
    if (unknown.length) await this.listLocal(unknown, run.report, projects);
    const changed = await this.detectChanges(projects, mounts, caps);
    const audit = this.auditNext();

    // act locally: snapshot what changed, then list just those datasets (their new guids)
    const snapshotted = await this.takeSnapshots(changed, run.report);
    await this.listLocal(snapshotted, run.report, projects);
    await this.placeReplicas(projects, run.report);

    // the audit slice: these datasets listed again from zfs, their targets asked again
    await this.auditSliceRun(audit, projects, run.report);

    // plan: the pairs whose cache state says something to do; targets are asked only
    // about pairs never asked before
    const pairs = this.pairsOf(projects);
    const toList = pairs.filter((k) => pairAction(k) === 'list-target');
    await this.listTargets(toList, run.report);
    // a pair listed again because its project changed location is planned even when it
    // turns out in sync: its confirmation writes the replica row, which may name an older
    // guid (the previous primary sent it and could not confirm before it was fenced)
    const relisted = toList.filter((k) => this.relocated.has(k.project));
    const decisions = this.decide(this.pairsOf(projects), new Set(relisted.map((k) => `${k.project} ${k.target}`)));
    for (const p of projects) if (this.relocated.has(p.id) && p.targets.every((t) => this.state.remoteSummary(p.id, t))) this.relocated.delete(p.id);

    // act: conflicts, confirmations, transfers (confirmed by a scoped listing), holds
    await this.execute(decisions, new Map(projects.map((p) => [p.id, p])), run.report);
    const pruneNow = new Set([...snapshotted, ...audit]);
    run.report.pruned += await this.prunePrimaries(projects.filter((p) => pruneNow.has(this.dsOf(p.id))), run.report);
    run.report.pruned += await this.pruneReplicas(audit.filter((d) => d.startsWith(`${this.config.replicasRoot}/`)), run.report);
    this.keepTargetsOpen(projects);
    this.updateFreshness(projects, changed);
    const replicas = this.state.datasets(`${this.config.replicasRoot}/`).length;
    this.load = projects.length + replicas;
    this.metrics?.roles(projects.length, replicas);
    return this.finishRun(run, 'cycle done');
  }

  /**
   * Where zfs has `snapshots_changed` (OpenZFS >= 2.2): one `zfs get` of the slice, and
   * only the datasets whose snapshot list moved since their last listing are listed (the
   * others count as audited). Elsewhere: the whole slice.
   */
  private async auditMoved(audit: string[]): Promise<{ moved: string[]; marks: Map<string, string> }> {
    const marks = new Map<string, string>();
    if (!audit.length || !(await this.zfs.capabilities()).snapshotsChanged) return { moved: audit, marks };
    const { values } = await this.zfs.getMany(audit, ['snapshots_changed']);
    const unchanged: string[] = [];
    const moved: string[] = [];
    for (const d of audit) {
      const mark = values.get(d)?.snapshots_changed;
      // a change in the same second as the last listing could hide behind an equal mark
      const recent = Number(mark) >= this.state.listedAtOf(d) / 1000 - 1;
      if (mark !== undefined && mark !== '-' && mark !== '' && mark === this.state.snapshotsChangedOf(d) && this.state.knows(d) && !recent) unchanged.push(d);
      else {
        if (mark !== undefined && mark !== '-' && mark !== '') marks.set(d, mark);
        moved.push(d);
      }
    }
    this.state.markAudited(new Map(), unchanged, this.now());
    return { moved, marks };
  }

  /** The audit slice: these datasets listed again, and for the primaries among them their targets asked again (accounted apart in the report). */
  private async auditSliceRun(audit: string[], projects: ProjectRecord[], report: CycleReport): Promise<void> {
    const listings = this.zfs.stats.snapshotListings;
    const rows = this.zfs.stats.snapshotsListed;
    const trips = () => Object.values(report.listings).reduce((a, b) => a + b, 0);
    const tripsBefore = trips();
    const t0 = this.now();
    const { moved, marks } = await this.auditMoved(audit);
    if (await this.listLocal(moved, report, projects)) this.state.markAudited(marks, [], this.now());
    const audited = new Set(audit);
    await this.listTargets(this.pairsOf(projects).filter((k) => audited.has(this.dsOf(k.project))), report);
    report.audit = { datasets: audit.length, snapshotListings: this.zfs.stats.snapshotListings - listings, snapshotsListed: this.zfs.stats.snapshotsListed - rows, targetRoundTrips: trips() - tripsBefore, ms: this.now() - t0 };
  }

  /**
   * The narrow entry point of `storagectl replicate` and `move`: for ONE project served
   * here, snapshot it if it changed (opts.snapshot), list it and its targets afresh, plan,
   * transfer, confirm, move holds. No retention, no heartbeat, no other project.
   */
  async replicateProject(id: string, opts: { to?: string; includeMoving?: boolean; snapshot?: 'if-changed' | 'never' } = {}): Promise<CycleReport> {
    const run = this.startRun();
    const p = await this.catalog.getProject(id);
    if (!p || !servesHere(p, this.config.host)) throw new Error(`project ${id} is not served by ${this.config.host} (primary: ${p?.primary ?? 'none'}, ${p?.state ?? 'unknown'})`);
    if (p.state !== 'active' && !opts.includeMoving) throw new Error(`project ${id} is ${p.state}: only the operation in progress replicates it`);
    await this.refreshHosts();
    // a project short of replicas is placed first (a move manages its targets itself)
    if (p.state === 'active') await this.placeReplicas([p], run.report);
    const project = opts.to ? { ...p, targets: p.targets.filter((t) => t === opts.to) } : p;
    if (opts.to && project.targets.length === 0) throw new Error(`${opts.to} is not a replica host of project ${id} (targets: ${p.targets.join(', ') || 'none'})`);
    const ds = this.dsOf(id);
    await this.listLocal([ds], run.report, [p]);
    if ((opts.snapshot ?? 'if-changed') === 'if-changed' && (await this.changedSinceNewest(ds))) {
      await this.takeSnapshots([ds], run.report);
      await this.listLocal([ds], run.report, [p]);
    }
    const pairs = this.pairsOf([project]);
    await this.listTargets(pairs, run.report);
    await this.execute(this.decide(this.pairsOf([project])), new Map([[id, project]]), run.report);
    return this.finishRun(run, 'replicated one project');
  }

  private startRun(): { report: CycleReport; calls: Map<string, number>; listings: number; listed: number } {
    if (this.abort.signal.aborted) this.abort = new AbortController();
    const report: CycleReport = { startedAt: this.now(), durationMs: 0, localZfsCalls: 0, zfsCallsByVerb: {}, snapshotsTaken: 0, snapshotListings: 0, snapshotsListed: 0, listings: {}, listingBytes: {}, datasetsListed: 0, audit: { datasets: 0, snapshotListings: 0, snapshotsListed: 0, targetRoundTrips: 0, ms: 0 }, catalogReads: 0, sends: [], failures: [], conflicts: [], keptAside: [], pruned: 0, confirmed: 0 };
    return { report, calls: new Map(this.runner.counts), listings: this.zfs.stats.snapshotListings, listed: this.zfs.stats.snapshotsListed };
  }

  private finishRun(run: ReturnType<Agent['startRun']>, what: string): CycleReport {
    const r = run.report;
    for (const [verb, n] of this.runner.counts) {
      const d = n - (run.calls.get(verb) ?? 0);
      if (d > 0) r.zfsCallsByVerb[verb] = d;
    }
    r.localZfsCalls = Object.values(r.zfsCallsByVerb).reduce((a, b) => a + b, 0);
    r.snapshotListings = this.zfs.stats.snapshotListings - run.listings;
    r.snapshotsListed = this.zfs.stats.snapshotsListed - run.listed;
    r.durationMs = this.now() - r.startedAt;
    this.cycles++;
    this.metrics?.cycle(r);
    this.log.info(
      { cycle: this.cycles, ms: r.durationMs, zfsCalls: r.localZfsCalls, snapshotListings: r.snapshotListings, snapshots: r.snapshotsTaken, sends: r.sends.length, failures: r.failures.length, conflicts: r.conflicts.length, pruned: r.pruned, listed: r.datasetsListed, audited: r.audit.datasets },
      what,
    );
    return r;
  }

  private dsOf(project: string): string {
    return `${this.config.projectsRoot}/${project}`;
  }

  /** the catalog's view of this host: one generation read; the projects only when it moved */
  private view: { gen: string; served: ProjectRecord[]; readAt: number } | undefined;

  private async observeCatalog(report: CycleReport): Promise<{ served: ProjectRecord[] }> {
    try {
      const before = this.catalogReadCount;
      const view = await this.readView();
      report.catalogReads += this.catalogReadCount - before;
      // the daemon's heartbeat timer refreshes the hosts (liveness) at least once an
      // interval; without it (storagectl, tests) the cycle does
      if (this.now() - this.hostsAt > this.config.interval * 1000) {
        await this.refreshHosts();
        report.catalogReads++;
      }
      return view;
    } catch (e) {
      this.metrics?.catalogError('read');
      if (this.view) {
        report.failures.push({ error: `catalog: ${(e as Error).message} (working from the view of ${new Date(this.view.readAt).toISOString()})` });
        return this.view;
      }
      throw e;
    }
  }

  private catalogReadCount = 0;

  /**
   * The projects this host serves, as the cycle and the fence check see them: one read of
   * this host's generation, and the projects themselves only when it moved (or once per
   * audit period, for a change whose generation bump was lost by a writer that died).
   */
  private async readView(): Promise<{ gen: string; served: ProjectRecord[]; readAt: number }> {
    const c = this.config;
    const gen = await this.catalog.hostGeneration(c.host);
    this.catalogReadCount++;
    const stale = !this.view || this.now() - this.view.readAt > c.audit.period * 1000;
    if (!this.view || this.view.gen !== gen || stale) {
      const served = (await this.catalog.listProjectsByPrimary(c.host)).filter((p) => servesHere(p, c.host));
      this.catalogReadCount++;
      // rows served from a degraded catalog's cache are not the generation just read:
      // keep no generation, so the next read lists again
      this.view = { gen: catalogDegraded(this.catalog) ? '(cached)' : gen, served, readAt: this.now() };
      this.forgetProjectsGone(served);
      // served here under a new location token (moved or failed over since, maybe back):
      // its targets are listed again before the next plan (state.ts, seenAt)
      const relist = catalogDegraded(this.catalog) ? [] : this.state.seenAt(served);
      for (const id of relist) this.relocated.add(id);
      if (relist.length) this.log.info({ projects: relist }, 'served here under a new location since last read: their targets are listed again');
      this.deps.onViewChanged?.();
    }
    return this.view;
  }

  /** projects that left this host: their per-project metric series and cached pair state go */
  private forgetProjectsGone(served: ProjectRecord[]): void {
    const now = new Map(served.map((p) => [p.id, p]));
    for (const [id, targets] of this.servedTargets) {
      const p = now.get(id);
      for (const t of targets) {
        if (!p || !p.targets.includes(t)) {
          this.metrics?.forgetPair(id, t);
          this.forgetPair(id, t);
        }
      }
    }
    this.servedTargets = new Map(served.map((p) => [p.id, [...p.targets]]));
  }

  private servedTargets = new Map<string, string[]>();
  /** projects served here under a new location token whose targets are still to be listed and confirmed */
  private readonly relocated = new Set<string>();
  /** hosts as of the last heartbeat (the daemon's timer reads them with each beat) */
  private hosts: HostRecord[] = [];

  private hostsAt = 0;

  private async refreshHosts(): Promise<void> {
    this.hosts = await this.catalog.listHosts();
    this.hostsAt = this.now();
    this.metrics?.heartbeats(this.hosts);
  }

  /** A copy mounted here that the catalog does not serve from here is set aside. */
  private async setAsideUnserved(served: ProjectRecord[], mounted: Set<string>, report: CycleReport): Promise<void> {
    const mine = new Set(served.map((p) => this.dsOf(p.id)));
    const gen = this.view?.gen ?? '';
    // a copy judged already (e.g. one the catalog does not know) is judged again only when
    // this host's generation moves: no catalog read per stray per cycle
    const strays = [...mounted, ...this.unservedFound].filter((d) => !mine.has(d) && this.straysJudged.get(d) !== gen);
    // demotion only on a fresh catalog answer: a degraded catalog serves cached rows, and a
    // project moved here meanwhile would be unmounted and set aside (judged again later)
    if (strays.length && catalogDegraded(this.catalog)) {
      this.log.warn({ strays: strays.length }, 'catalog degraded: not judging copies the cached view does not serve from here');
      return;
    }
    this.unservedFound.clear();
    for (const ds of strays) {
      try {
        this.straysJudged.set(ds, gen);
        if (await this.demoteIfNotServed(ds, mounted.has(ds))) this.state.forget(ds);
      } catch (e) {
        report.failures.push({ project: ds.slice(this.config.projectsRoot.length + 1), error: `demote: ${(e as Error).message}` });
      }
    }
  }

  /** dataset -> the generation at which it was last judged a stray */
  private readonly straysJudged = new Map<string, string>();
  /** unmounted copies under projects/ that the last discovery found and the catalog does not serve from here */
  private readonly unservedFound = new Set<string>();
  private lastDiscovery = 0;

  /**
   * Once per audit period (and at start): the NAMES of the datasets under both roots (no
   * snapshot, no other column), so that a replica received from a peer, a dataset
   * created by hand, or one destroyed by hand joins or leaves the audit rotation.
   */
  private async discoverDatasets(report: CycleReport): Promise<void> {
    const c = this.config;
    if (this.lastDiscovery && this.now() - this.lastDiscovery < c.audit.period * 1000) return;
    this.lastDiscovery = this.now();
    const served = new Set((this.view?.served ?? []).map((p) => this.dsOf(p.id)));
    for (const root of [c.projectsRoot, c.replicasRoot]) {
      let names: string[];
      try {
        names = await this.zfs.childNames(root);
      } catch (e) {
        report.failures.push({ error: `discovery of ${root}: ${(e as Error).message}` });
        continue;
      }
      const present = new Set(names);
      const fresh: string[] = [];
      for (const d of names) {
        if (!isProjectId(d.slice(root.length + 1))) continue;
        if (root === c.projectsRoot) {
          if (!served.has(d)) this.unservedFound.add(d);
          continue; // served ones are listed as soon as the catalog names them
        }
        if (!this.state.knows(d)) fresh.push(d);
      }
      for (const d of this.state.datasets(`${root}/`)) if (!present.has(d)) this.state.forget(d);
      // new replicas join the rotation as never audited: the next slices list them first
      if (fresh.length) this.state.putListings(new Map(fresh.map((d) => [d, []])), 0);
    }
  }

  /**
   * What changed since its newest snapshot, among the projects served here. Only mounted
   * datasets can change between cycles (the agent mounts on demand; an unmounted one
   * changes only through zfs operations, which the audit finds). OpenZFS: `written` of
   * the mounted ones, by name, in one call. zfs-fuse (no `written`): the file watcher,
   * plus a size check of the mounts it had not watched before. A project with no snapshot
   * yet always counts.
   */
  private async detectChanges(projects: ProjectRecord[], mounted: ReadonlyMap<string, string>, caps: Capabilities): Promise<string[]> {
    const out = new Set<string>();
    const servedMounted: string[] = [];
    for (const p of projects) {
      const ds = this.dsOf(p.id);
      if (this.state.knows(ds) && this.state.newestOf(ds) === undefined) out.add(ds);
      if (mounted.has(ds)) servedMounted.push(ds);
    }
    if (caps.written) {
      if (servedMounted.length) {
        const { values } = await this.zfs.getMany(servedMounted, ['written']);
        for (const [ds, v] of values) if (Number(v.written) > 0) out.add(ds);
      }
      return [...out];
    }
    // watch exactly the mounted projects served here (id -> mountpoint)
    const watch = new Map(servedMounted.map((ds) => [ds.slice(this.config.projectsRoot.length + 1), mounted.get(ds)!]));
    const newlyWatched = this.dirty.syncMounts(watch);
    for (const id of this.dirty.dirtyIds()) if (mounted.has(this.dsOf(id))) out.add(this.dsOf(id));
    const check = newlyWatched.map((id) => this.dsOf(id)).filter((ds) => !out.has(ds) && this.state.newestOf(ds));
    if (check.length) {
      const names = check.flatMap((ds) => [ds, `${ds}@${this.state.newestOf(ds)!.snap}`]);
      const { values } = await this.zfs.getMany(names, ['referenced']);
      for (const ds of check) {
        const now = values.get(ds)?.referenced;
        const then = values.get(`${ds}@${this.state.newestOf(ds)!.snap}`)?.referenced;
        if (now !== undefined && now !== then) out.add(ds);
      }
    }
    return [...out];
  }

  /** For `replicate` (no watcher in a CLI process): one call naming the dataset and its newest snapshot. */
  private async changedSinceNewest(ds: string): Promise<boolean> {
    const newest = this.state.newestOf(ds);
    if (!newest) return true;
    const caps = await this.zfs.capabilities();
    if (caps.written) return Number((await this.zfs.getMany([ds], ['written'])).values.get(ds)?.written ?? 0) > 0;
    const { values } = await this.zfs.getMany([ds, `${ds}@${newest.snap}`], ['referenced']);
    return values.get(ds)?.referenced !== values.get(`${ds}@${newest.snap}`)?.referenced;
  }

  /** fractional audit credit carried between cycles (datasets owed to the period) */
  private auditCredit = 0;
  private lastAuditAt = 0;

  /**
   * The datasets the rolling audit re-lists this cycle: the share of the period that the
   * time since the last cycle covers (so every dataset is re-listed once per period,
   * spread evenly), oldest-listed first, at most audit.maxPerCycle.
   */
  private auditNext(): string[] {
    const c = this.config;
    const listedAt = new Map<string, number>();
    for (const d of [...this.state.datasets(`${c.projectsRoot}/`), ...this.state.datasets(`${c.replicasRoot}/`)]) listedAt.set(d, this.state.listedAtOf(d));
    const now = this.now();
    const elapsedSec = this.lastAuditAt ? Math.min(c.audit.period, Math.max(0, (now - this.lastAuditAt) / 1000)) : 0;
    this.lastAuditAt = now;
    this.auditCredit = Math.min(c.audit.maxPerCycle, this.auditCredit + (listedAt.size * elapsedSec) / c.audit.period);
    const n = Math.floor(this.auditCredit);
    this.auditCredit -= n;
    // datasets never listed (new, or a cold cache) are due at once
    const never = [...listedAt].filter(([, at]) => at === 0).length;
    return auditSlice(listedAt, { count: Math.min(c.audit.maxPerCycle, Math.max(n, never)) });
  }

  private async takeSnapshots(datasets: string[], report: CycleReport): Promise<string[]> {
    if (!datasets.length) return [];
    const name = autoSnapshotName(new Date(this.now()), this.config.snapshot.prefix);
    const todo = datasets.filter((ds) => this.state.newestOf(ds)?.snap !== name);
    try {
      await this.zfs.snapshot(todo.map((ds) => `${ds}@${name}`));
    } catch (e) {
      report.failures.push({ error: `snapshot: ${(e as Error).message}` });
      this.log.error({ err: (e as Error).message }, 'snapshot failed');
      return [];
    }
    report.snapshotsTaken += todo.length;
    for (const ds of todo) this.dirty.clear(ds.slice(this.config.projectsRoot.length + 1));
    this.metrics?.snapshotsCreated(todo.length);
    return todo;
  }

  /** A scoped listing of these datasets (cheap columns) into the cache. */
  /** false when the listing failed (reported) */
  private async listLocal(datasets: string[], report: CycleReport, served: ProjectRecord[]): Promise<boolean> {
    if (!datasets.length) return true;
    const projectsPrefix = `${this.config.projectsRoot}/`;
    report.datasetsListed += datasets.length;
    let res;
    try {
      res = await this.zfs.listSnapshots(datasets, { knownCreation: (d, s, g) => this.state.creationOf(d, s, g) });
    } catch (e) {
      report.failures.push({ error: `listing: ${(e as Error).message}` });
      return false;
    }
    const before = new Map([...res.snapshots.keys()].map((d) => [d, this.state.newestOf(d)?.guid]));
    this.state.putListings(res.snapshots, this.now());
    const servedIds = new Set(served.map((p) => p.id));
    // the primary's newest snapshot, for `storagectl status` (written only when it moved)
    for (const [ds, guid] of before) {
      const id = ds.slice(projectsPrefix.length);
      const newest = this.state.newestOf(ds);
      if (!ds.startsWith(projectsPrefix) || !servedIds.has(id) || !newest || newest.guid === guid) continue;
      await this.catalog.recordNewest(id, { snapshot: newest.snap, guid: newest.guid, creation: newest.creation }).catch((e: Error) => report.failures.push({ project: id, error: `catalog: record newest snapshot: ${e.message}` }));
    }
    for (const ds of res.missing) {
      this.state.forget(ds);
      const id = ds.slice(projectsPrefix.length);
      if (ds.startsWith(projectsPrefix) && servedIds.has(id)) report.failures.push({ project: id, error: `dataset ${ds} is missing on ${this.config.host} (the catalog says this host is primary)` });
    }
    return true;
  }

  /**
   * Placement, in memory unless something changes: missing targets are placed, and a
   * target draining or dead for placement.replaceDeadTargetAfter gets a replacement, released from the
   * list only once `factor` other targets hold replicas this host confirmed (healTargets).
   * The write is a compare-and-set on the list's version: an older view never wins.
   */
  private async placeReplicas(projects: ProjectRecord[], report: CycleReport): Promise<void> {
    const c = this.config;
    const me = this.hosts.find((h) => h.id === c.host);
    if (!me) return;
    const planned = new Map<string, number>();
    const isLive = this.liveness();
    const now = this.now();
    const replaceAfterMs = c.placement.replaceDeadTargetAfter * 1000;
    const leaving = leavingTarget(this.hosts, now, replaceAfterMs);
    for (const p of projects) {
      if (p.targets.length >= p.replicationFactor && !p.targets.some(leaving)) continue;
      const confirmed = new Set(p.targets.filter((t) => this.state.remoteSummary(p.id, t)?.newest !== undefined));
      const d = healTargets({ primary: me, targets: p.targets, factor: p.replicationFactor, hosts: this.hosts, now, replaceAfterMs, isLive, confirmed, planned });
      if (d.added.length === 0 && d.released.length === 0) continue;
      try {
        if (!(await this.catalog.setTargets(p.id, d.targets, { ifVersion: p.targetsVersion }))) {
          this.view = undefined; // a newer list was written: re-read the projects next time
          continue;
        }
        p.targets = d.targets;
        p.targetsVersion += 1;
        const detail = [d.added.length ? `added ${d.added.join(', ')}` : '', d.released.length ? `released ${d.released.join(', ')} (draining, or dead longer than placement.replaceDeadTargetAfter; its data is kept there)` : ''].filter(Boolean).join('; ');
        await this.catalog.addEvent({ project: p.id, host: c.host, kind: 'placement', detail: `replicas on ${d.targets.join(', ')}: ${detail}` }).catch(() => undefined);
        if (d.released.length) this.log.warn({ project: p.id, released: d.released, targets: d.targets }, 'placement: draining or dead replica hosts replaced and released');
      } catch (e) {
        report.failures.push({ project: p.id, error: `placement: ${(e as Error).message}` });
      }
    }
  }

  /** what the cache knows of every (project, target) pair of these projects */
  private pairsOf(projects: ProjectRecord[]): PairKnowledge[] {
    const out: PairKnowledge[] = [];
    for (const p of projects) {
      const ds = this.dsOf(p.id);
      if (!this.state.knows(ds)) continue;
      for (const t of p.targets) {
        const remote = this.state.remoteSummary(p.id, t);
        out.push({ project: p.id, target: t, localNewest: this.state.newestOf(ds), remote: remote && { newest: remote.newest, resumable: remote.resumable, stale: remote.stale }, conflictAt: this.conflictsSeen.get(`${p.id} ${t}`) });
      }
    }
    return out;
  }

  /** the source's newest guid when a conflict was reported, per "project target" */
  private readonly conflictsSeen = new Map<string, string>();

  /** Scoped listings: each target is asked only about these pairs' projects (batched). */
  private async listTargets(pairs: ReadonlyArray<Pick<PairKnowledge, 'project' | 'target'>>, report: CycleReport): Promise<void> {
    const byTarget = new Map<string, string[]>();
    for (const k of pairs) {
      if (!byTarget.has(k.target)) byTarget.set(k.target, []);
      byTarget.get(k.target)!.push(k.project);
    }
    await Promise.all(
      [...byTarget].map(async ([t, ids]) => {
        const host = this.hosts.find((h) => h.id === t);
        if (!host) {
          report.failures.push({ target: t, error: `target host ${t} is not in the catalog` });
          return;
        }
        try {
          const stats = { bytes: 0, roundTrips: 0 };
          const listing = await fetchListing(this.ssh, host, { projects: [...new Set(ids)], stats });
          report.listings[t] = (report.listings[t] ?? 0) + stats.roundTrips;
          report.listingBytes[t] = (report.listingBytes[t] ?? 0) + stats.bytes;
          this.state.putRemotes([...new Set(ids)].map((id) => ({ project: id, target: t, view: listing.datasets[id] ?? null })), this.now());
          for (const id of ids) this.conflictsSeen.delete(`${id} ${t}`); // re-listed: judged afresh
        } catch (e) {
          report.failures.push({ target: t, error: (e as Error).message });
          this.metrics?.failure(t, 'listing');
          this.log.error({ target: t, err: (e as Error).message }, 'target listing failed');
        }
      }),
    );
  }

  /** The planner for every pair the cache says needs it (pure: cycle-plan.ts). */
  private decide(pairs: PairKnowledge[], justListed: ReadonlySet<string> = new Set()): PairDecision[] {
    const inputs: PairInput[] = [];
    for (const k of pairs) {
      const action = pairAction(k);
      if (action !== 'plan' && !(action === 'in-sync' && justListed.has(`${k.project} ${k.target}`))) continue;
      const remote = this.state.remote(k.project, k.target);
      if (!remote && !this.state.remoteSummary(k.project, k.target)) continue; // the target could not be asked
      inputs.push({ project: k.project, target: k.target, source: this.state.snapshots(this.dsOf(k.project)), remote: remote ?? null });
    }
    return decidePairs(inputs, this.now() / 1000);
  }

  private async execute(decisions: PairDecision[], projects: Map<string, ProjectRecord>, report: CycleReport): Promise<void> {
    const jobs: Job[] = [];
    for (const d of decisions) {
      if (d.kind === 'conflict' && (await this.keepDivergedAside(d, report))) {
        continue;
      } else if (d.kind === 'conflict') {
        const message = d.plan.conflict.message;
        report.conflicts.push({ project: d.project, target: d.target, message });
        this.conflictsSeen.set(`${d.project} ${d.target}`, this.state.newestOf(this.dsOf(d.project))?.guid ?? '');
        this.metrics?.failure(d.target, d.plan.conflict.kind);
        this.log.warn({ project: d.project, target: d.target, conflict: d.plan.conflict.kind }, message);
        await this.catalog.addEvent({ project: d.project, host: d.target, kind: 'conflict', detail: message }).catch(() => undefined);
      } else if (d.kind === 'confirm') {
        await this.confirm(d.project, d.target, d.at, report);
      } else if (d.kind === 'send') {
        const target = this.hosts.find((h) => h.id === d.target);
        const project = projects.get(d.project);
        if (!target || !project) continue;
        jobs.push({ project, target, plan: d.plan, lagSec: d.lagSec, baseSnap: d.baseSnap, toSnap: d.toSnap });
      }
    }
    const succeeded = await this.runTransfers(jobs, report);
    await this.confirmTransfers(succeeded, report);
  }

  /**
   * A replica that diverged from this primary (or is ahead of it) after a failover chose
   * another replica: the target keeps it aside in its conflicts/ (receiver keep-aside,
   * never a destroy) and the next cycle lists it again and sends it whole. True when it
   * was kept aside; false leaves the conflict to be reported (policy `report`, another
   * kind of conflict, or the target refused: its reason is logged).
   */
  private async keepDivergedAside(d: Extract<PairDecision, { kind: 'conflict' }>, report: CycleReport): Promise<boolean> {
    const kind = d.plan.conflict.kind;
    if (this.config.replication.divergedReplicas !== 'keep-aside' || (kind !== 'diverged' && kind !== 'target-ahead')) return false;
    const target = this.hosts.find((h) => h.id === d.target);
    const newest = this.state.remote(d.project, d.target)?.snapshots.at(-1);
    if (!target || !newest) return false;
    const r = await this.ssh
      .get(sshTarget(target))
      .exec(formatRemoteCommand({ op: 'keep-aside', project: d.project, guid: newest.guid }))
      .catch((e: Error) => ({ code: -1, stdout: '', stderr: e.message }));
    if (r.code !== 0) {
      this.log.error({ project: d.project, target: d.target, code: r.code, stderr: r.stderr.trim() }, 'the diverged replica could not be kept aside: reporting the conflict');
      return false;
    }
    let as = '?';
    try {
      as = (JSON.parse(r.stdout.trim().split('\n').pop() || '{}') as { as?: string }).as ?? '?';
    } catch {
      /* kept aside (exit 0); only its name is unknown */
    }
    this.state.putRemotes([{ project: d.project, target: d.target, view: null }], this.now());
    this.forgetPair(d.project, d.target);
    report.keptAside.push({ project: d.project, target: d.target, as });
    this.log.warn({ project: d.project, target: d.target, conflict: kind, keptAs: as }, `${d.target}'s replica diverged from this primary: kept aside there (nothing destroyed); it is sent whole next. ${d.plan.conflict.message}`);
    await this.catalog.addEvent({ project: d.project, host: d.target, kind: 'replica-kept-aside', detail: `${kind}: kept as ${as}; ${d.plan.conflict.message}` }).catch(() => undefined);
    return true;
  }

  /** most lagging first, per-target concurrency plus a global cap */
  private async runTransfers(jobs: Job[], report: CycleReport): Promise<Map<string, Job[]>> {
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
              if (await this.transfer(job, report)) {
                if (!succeeded.has(job.target.id)) succeeded.set(job.target.id, []);
                succeeded.get(job.target.id)!.push(job);
              }
            }),
          { priority: jobs.length - i },
        ),
      ),
    );
    for (const t of perTarget.keys()) this.metrics?.queueDepth(t, 0);
    return succeeded;
  }

  /** A transfer counts once the target's own listing (scoped to what was sent) shows it. */
  private async confirmTransfers(succeeded: Map<string, Job[]>, report: CycleReport): Promise<void> {
    const c = this.config;
    for (const [t, done] of succeeded) {
      const ids = done.map((j) => j.project.id);
      try {
        await this.listTargets(ids.map((id) => ({ project: id, target: t })), report);
        const hold: string[] = [];
        const release: string[] = [];
        for (const job of done) {
          const remote = this.state.remote(job.project.id, t);
          let want = job.toSnap;
          if (job.plan.kind === 'resume') {
            // the token names no snapshot: confirm (and hold) the target's newest snapshot
            // that the source has, by guid; nothing matching = the next cycle plans anew
            want = newestShared(this.state.snapshots(this.dsOf(job.project.id)), remote?.snapshots ?? []);
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
        await this.moveHolds(t, hold, release);
      } catch (e) {
        report.failures.push({ target: t, error: `confirmation: ${(e as Error).message}` });
      }
    }
  }

  /** "project target" -> guid this agent last recorded in the catalog */
  private readonly recorded = new Map<string, string>();

  /**
   * Drops what this agent remembers of a pair: the conflict it saw and the guid it last
   * recorded. For a pair it no longer serves, and for a replica kept aside: what is sent
   * next may be older than what was recorded (the catalog keeps the latest confirmation,
   * not the newest snapshot), so it is recorded anew.
   */
  private forgetPair(project: string, target: string): void {
    this.conflictsSeen.delete(`${project} ${target}`);
    this.recorded.delete(`${project} ${target}`);
  }

  /** Records a replica in the catalog, only when what it holds changed (an idle cycle writes nothing). */
  private async confirm(project: string, host: string, at: SnapRef, report: CycleReport): Promise<void> {
    const k = `${project} ${host}`;
    if (this.recorded.get(k) === at.guid) return;
    await this.catalog.upsertReplica({ project, host, snapshot: at.snap, guid: at.guid, snapshotCreation: at.creation, confirmedAt: this.now() });
    this.recorded.set(k, at.guid);
    report.confirmed++;
  }

  /** per pair: the time up to which the target has the data (cycle-plan.ts freshnessAsOf) */
  private updateFreshness(projects: ProjectRecord[], changed: string[]): void {
    if (!this.metrics) return;
    const nowSec = this.now() / 1000;
    const dirty = new Set(changed);
    for (const p of projects) {
      const ds = this.dsOf(p.id);
      const newest = this.state.newestOf(ds);
      for (const t of p.targets) {
        const remote = this.state.remoteSummary(p.id, t);
        // the target was last seen up: the last bytes of its kept-alive connection, or the last listing
        const seen = Math.max(this.ssh.lastReceivedFrom(t), remote?.listedAt ?? 0) / 1000;
        this.metrics.replicaFreshness(p.id, t, freshnessAsOf({ nowSec, sourceNewestGuid: newest?.guid, sourceChanged: dirty.has(ds), targetNewest: remote?.newest, targetSeenAt: seen }));
      }
    }
  }

  /** A kept-alive connection to every target (its keepalive replies are the lag's evidence that the target is up). */
  private keepTargetsOpen(projects: ProjectRecord[]): void {
    const targets = new Set(projects.flatMap((p) => p.targets));
    for (const t of targets) {
      const h = this.hosts.find((x) => x.id === t);
      if (h) this.ssh.get(sshTarget(h)).keepOpen();
    }
  }

  private load = 0;

  /**
   * A heartbeat now, with the load of the last cycle, and the hosts' records (liveness
   * for placement and lag): the daemon's timer, independent of the cycle, so that a long
   * cycle never makes this host look dead and an idle cycle makes no catalog write.
   */
  async heartbeat(): Promise<void> {
    await this.checkClock();
    try {
      // liveness goes on while the clock is off (refusing to act is not being dead), stamped
      // with the catalog's time rather than this host's wrong one
      await this.catalog.heartbeat(this.config.host, this.load, this.now() - (this.clockProblem ? this.skewMs : 0));
      await this.refreshHosts();
    } catch (e) {
      this.metrics?.catalogError('heartbeat');
      throw e;
    }
  }

  /** set while this host's clock is beyond failover.maxClockSkew of the catalog's: the cycle refuses to act */
  clockProblem: string | undefined;
  private skewMs = 0;

  /** This host's clock against the catalog's (with every heartbeat, and at start). */
  async checkClock(): Promise<void> {
    const bound = this.config.failover.maxClockSkew * 1000;
    try {
      const r = await readSkew(this.catalog, this.now);
      this.skewMs = r.skewMs;
      this.metrics?.skew(r.skewMs / 1000);
      const problem = skewTooLarge(r, bound) ? describeSkew(r, bound) : undefined;
      if (problem && !this.clockProblem) this.log.error({ skewMs: r.skewMs, boundMs: bound }, problem);
      if (!problem && this.clockProblem) this.log.warn({ skewMs: r.skewMs }, 'clock back within failover.maxClockSkew of the catalog: acting again');
      this.clockProblem = problem;
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, 'could not read the catalog clock');
    }
  }

  /**
   * A project this host must no longer serve: unmount it, take a final snapshot and
   * keep the dataset aside as <pool>/conflicts/<uuid>-<time> (never destroyed; listed by
   * `storagectl conflicts`). The `demoted` event is what a failover waits for.
   */
  async demote(dataset: string, p: ProjectRecord): Promise<string> {
    const c = this.config;
    const fence = await fenceDataset(this.zfs, dataset);
    if (!fence.fenced) throw new Error(`cannot stop serving ${dataset}: ${describeFence(fence)}`);
    if (fence.stopped.length) this.log.warn({ project: p.id, stopped: fence.stopped }, 'demote: stopped the processes using the project');
    const aside = await keepAside(this.zfs, dataset, `${c.pool}/conflicts`, p.id, new Date(this.now()));
    await this.catalog.addEvent({ project: p.id, host: c.host, kind: 'demoted', detail: `served by ${p.primary ?? 'no host'} (${p.state}) now; fenced here (${describeFence(fence)}), this host's data kept in ${aside}` });
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

  /** the self-fence watchdog (self-fence.ts): main.ts arms it before the catalog opens */
  readonly selfFence: SelfFence;
  /** the remount after a self-fence, while it runs (a claim waits for it) */
  private remounting: Promise<unknown> = Promise.resolve();
  private lastAutoCheck = 0;
  /** when the fence check last got a fresh answer (0: not yet in this process) */
  private lastAnswer = 0;

  /** the catalog answered the fence check within two fence checks (5 s at least) */
  private freshView(): boolean {
    return this.now() - this.lastAnswer < 1000 * Math.max(this.config.failover.fenceCheck * 2, 5);
  }

  /** projects mounted here, from /proc/self/mountinfo (no zfs call): dataset names */
  mountedProjects(): Set<string> {
    return new Set(this.projectMounts().keys());
  }

  /** projects mounted here: dataset -> mountpoint, one read of /proc/self/mountinfo */
  private projectMounts(): Map<string, string> {
    return mountedProjects(this.config.projectsRoot, isProjectId);
  }

  /**
   * Between cycles, every few seconds (failover.fenceCheck): one catalog read (this host's
   * generation; the projects it serves only when that moved), compared with what is
   * mounted here. A mounted project the catalog no longer serves from here is demoted at
   * once. A project the self-fence watchdog unmounted is remounted when the catalog answers
   * again and still names this host, with no operation under way. The watchdog's own tick
   * runs here too (its answer is in `selfFenced`), but it does not depend on this check:
   * it has its own timer (a read here can take the driver's timeout).
   */
  async fenceCheck(): Promise<{ demoted: string[]; selfFenced: string[]; remounted: string[] }> {
    const c = this.config;
    const res = { demoted: [] as string[], selfFenced: [] as string[], remounted: [] as string[] };
    const mounted = this.mountedProjects();
    let served: ProjectRecord[] | undefined;
    const sentAt = this.now(); // the answer describes the catalog as of the request, not its arrival
    try {
      served = (await this.readView()).served;
      if (!catalogDegraded(this.catalog)) {
        this.selfFence.contact(sentAt);
        this.lastAnswer = sentAt;
      }
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, 'fence check: catalog unreachable');
    }
    if (served && this.freshView()) {
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
      const remount = this.remountSelfFenced(byId);
      this.remounting = remount;
      res.remounted = await remount;
      if (res.remounted.length) this.log.warn({ projects: res.remounted }, 'catalog reachable again: remounted the projects unmounted by self-fencing');
    }
    res.selfFenced = await this.selfFence.tick();
    this.metrics?.fence('demoted', res.demoted.length);
    this.metrics?.fence('remounted', res.remounted.length);
    return res;
  }

  /**
   * The catalog answers again: remount what the watchdog unmounted, only where the catalog
   * still has this host serve the project as `active` (no move or failover under way: an
   * operation that found it unmounted counts on it staying so) and no operation here holds it.
   */
  private async remountSelfFenced(byId: Map<string, ProjectRecord>): Promise<string[]> {
    const c = this.config;
    const done: string[] = [];
    // a fence under way finishes first, and what is mounted is read now, not before this
    // check's catalog read (the watchdog may have unmounted it meanwhile: with the older
    // list the project would count as mounted and be forgotten, unmounted for good)
    await this.selfFence.settled();
    const mounted = this.mountedProjects();
    for (const id of [...this.selfFence.fenced().keys()]) {
      const p = byId.get(id);
      const ds = `${c.projectsRoot}/${id}`;
      if (!p || !servesHere(p, c.host) || mounted.has(ds)) {
        this.selfFence.release(id);
        continue;
      }
      if (p.state !== 'active' || p.operation || this.claimed.has(id)) continue; // its operation decides
      const readonlySet = this.selfFence.release(id);
      try {
        if (readonlySet) await this.zfs.inherit(ds, 'readonly');
        await this.zfs.mount(ds);
        done.push(id);
      } catch (e) {
        this.log.error({ project: id, err: (e as Error).message }, 'remount after the catalog came back failed');
      }
    }
    return done;
  }

  /**
   * failover: auto, on its own timer (main.ts), never inside the fence check: a failover
   * waits for another host's fence for up to the bound, and this host's own demotes and
   * remounts must not wait behind it. Runs at most every min(interval, 3 fence checks).
   */
  async autoFailoverCheck(): Promise<string[]> {
    const c = this.config;
    if (c.failover.mode !== 'auto' || this.clockProblem) return [];
    if (!this.freshView()) return [];
    if (this.now() - this.lastAutoCheck < Math.min(c.interval, 3 * c.failover.fenceCheck) * 1000) return [];
    this.lastAutoCheck = this.now();
    const done = await this.autoFailover();
    this.metrics?.fence('failover', done.length);
    return done;
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
    done.push(...(await this.finishInterruptedFailovers(t)));
    const deadHosts = (await this.catalog.listHosts()).filter((h) => isDead(h, t));
    for (const h of deadHosts) {
      for (const p of await this.catalog.listProjectsByPrimary(h.id)) {
        if (p.state !== 'active' || !p.targets.includes(c.host)) continue;
        // still dead right now? (fresh read, fresh clock)
        if (!isDead(await this.catalog.getHost(h.id), this.now())) break;
        try {
          try {
            const r = await failover(this.catalog, this.ssh, p.id, { owner: leaseOwner('agent', c.host), graceMs: dead, selfFenceBoundMs: fenceBoundMs(c), now: this.now, expectPrimary: h.id });
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

  /**
   * failover: auto. A failover that named this host and whose runner is gone (an agent
   * killed mid-way, an operator's storagectl that timed out) leaves the project
   * `failing-over` here, served by nobody, and no dead primary for autoFailover to act on:
   * once its lease has run out, this host finishes it from the row (failover.ts resumes).
   */
  private readonly interruptedTried = new Map<string, number>();

  private async finishInterruptedFailovers(t: number): Promise<string[]> {
    const c = this.config;
    const done: string[] = [];
    for (const p of this.view?.served ?? []) {
      const op = p.operation;
      if (p.state !== 'failing-over' || op?.kind !== 'failover' || op.to !== c.host) continue;
      // one attempt per project per 30 s: a failover that cannot finish (its error is logged
      // and an event) is not hammered every fence check
      if (t - (this.interruptedTried.get(p.id) ?? 0) < 30_000) continue;
      this.interruptedTried.set(p.id, t);
      const lock = await this.catalog.getLock(projectLockName(p.id));
      if (lock && lock.owner !== null && lock.expiresAt !== null && lock.expiresAt > t) continue; // its runner holds it
      try {
        const r = await failover(this.catalog, this.ssh, p.id, { owner: leaseOwner('agent', c.host), graceMs: deadAfterMs(c), selfFenceBoundMs: fenceBoundMs(c), now: this.now });
        done.push(p.id);
        this.log.warn({ project: p.id, from: r.from, to: r.to, snapshot: r.snapshot, step: op.step }, 'interrupted failover finished');
      } catch (e) {
        if (e instanceof LockedError || e instanceof FailoverNotNeeded) continue;
        this.log.error({ project: p.id, step: op.step, err: (e as Error).message }, 'interrupted failover: could not finish it');
        await this.catalog.addEvent({ project: p.id, host: c.host, kind: 'failover-failed', detail: `finishing the interrupted failover: ${(e as Error).message}` }).catch(() => undefined);
      }
    }
    return done;
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
        // the token is the target's word: decoded and checked before zfs send -t reads it
        const problem = await this.zfs.decodeResumeToken(plan.token).then(
          (d) => resumeTokenProblem(d, ds, this.state.snapshots(ds)),
          (e: Error) => `it cannot be resumed from here (${e.message})`,
        );
        if (problem) {
          // not sendable: the partial receive is discarded and the next cycle plans anew
          const r = await this.ssh.get(sshTarget(job.target)).exec(formatRemoteCommand({ op: 'abort-resume', project: job.project.id })).catch((e: Error) => ({ code: -1, stderr: e.message }));
          this.state.markRemoteStale(job.project.id, job.target.id);
          const msg = `resume token from ${job.target.id} refused: ${problem}`;
          log.warn({ abortResumeExit: r.code }, msg);
          await this.catalog.addEvent({ project: job.project.id, host: job.target.id, kind: 'replication-failed', detail: `${msg}; partial receive discarded (abort-resume exit ${r.code})` }).catch(() => undefined);
          throw new Error(msg);
        }
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
      // what the target holds may not be what the cache says (lost by hand, a disk): ask
      // it again before the next plan
      this.state.markRemoteStale(job.project.id, job.target.id);
      this.metrics?.failure(job.target.id, 'transfer');
      log.error({ plan: describePlan(plan), err: msg }, 'replication failed');
      await this.catalog.addEvent({ project: job.project.id, host: job.target.id, kind: 'replication-failed', detail: msg }).catch(() => undefined);
      if (/has been modified\s*\|?\s*since most recent snapshot/.test(msg)) {
        // the replica's newest snapshot was destroyed by hand (the audit found it gone): its
        // readonly, unmounted head is rolled back to what it now has as newest, and the next
        // cycle sends the increment again
        await transfer$.catch(() => undefined);
        const r = await conn.exec(formatRemoteCommand({ op: 'rollback-head', project: job.project.id })).catch((e: Error) => ({ code: -1, stdout: '', stderr: e.message }));
        log.warn({ code: r.code, stderr: r.stderr.trim() }, 'the replica was modified since its newest snapshot: asked the target to roll its head back');
        await this.catalog.addEvent({ project: job.project.id, host: job.target.id, kind: 'replica-head-rolled-back', detail: r.code === 0 ? r.stdout.trim() : `refused or failed: ${r.stderr.trim()}` }).catch(() => undefined);
      }
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
  private async moveHolds(target: string, hold: string[], release: string[]): Promise<void> {
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
    if (release.length) {
      try {
        await this.zfs.release(tag, release);
      } catch {
        // one missing tag fails the batch: release one by one, ignoring "no such tag"
        for (const s of release) await this.zfs.release(tag, [s]).catch(() => undefined);
      }
    }
  }

  /**
   * Retention of these primaries (those snapshotted this cycle and the audited ones),
   * from the cache. Never pruned: what a target has as its newest (its incremental base);
   * nothing at all while a target's holdings are unknown.
   */
  private async prunePrimaries(projects: ProjectRecord[], report: CycleReport): Promise<number> {
    const nowSec = this.now() / 1000;
    let n = 0;
    for (const p of projects) {
      const ds = this.dsOf(p.id);
      const snaps = this.state.snapshots(ds);
      if (snaps.length < 2) continue;
      const protect = new Set<string>();
      let unknown = false;
      for (const t of p.targets) {
        const remote = this.state.remote(p.id, t);
        if (!remote) {
          if (!this.state.remoteSummary(p.id, t)) unknown = true; // never asked: prune nothing
          continue;
        }
        const base = newestShared(snaps, remote.snapshots);
        if (base) protect.add(base.snap);
        else if (remote.snapshots.length) unknown = true; // nothing shared: a conflict, keep all
      }
      if (unknown) continue;
      n += await this.destroyExpired(ds, snaps, this.primaryGrid, nowSec, protect, report, p.id);
    }
    this.metrics?.snapshotsPruned('primary', n);
    return n;
  }

  /** Retention of the audited replicas here (their newest, the next incremental base, is always kept). */
  private async pruneReplicas(datasets: string[], report: CycleReport): Promise<number> {
    const nowSec = this.now() / 1000;
    let n = 0;
    for (const ds of datasets) {
      const snaps = this.state.snapshots(ds);
      if (snaps.length < 2) continue;
      n += await this.destroyExpired(ds, snaps, this.replicaGrid, nowSec, new Set(), report, ds.slice(this.config.replicasRoot.length + 1));
    }
    this.metrics?.snapshotsPruned('replica', n);
    return n;
  }

  private async destroyExpired(ds: string, snaps: Snap[], grid: GridPolicy, nowSec: number, protect: Set<string>, report: CycleReport, project: string): Promise<number> {
    const decision = planPrune(snaps.map((s) => ({ snap: s.snap, creation: s.creation })), grid, nowSec, protect);
    if (decision.destroy.length === 0) return 0;
    const names = decision.destroy.map((d) => d.snap);
    try {
      await this.zfs.destroySnapshots(ds, names);
      this.state.removeSnapshots(ds, names);
      return names.length;
    } catch (e) {
      // held by someone (an operator, a restore) or busy: one by one, keeping what refuses
      let n = 0;
      for (const s of names) {
        try {
          await this.zfs.destroySnapshots(ds, [s]);
          this.state.removeSnapshots(ds, [s]);
          n++;
        } catch {
          /* kept: reported below */
        }
      }
      if (n < names.length) report.failures.push({ project, error: `prune: ${(e as Error).message}` });
      return n;
    }
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

/** The watchdog of a host (its timer is started by main.ts, before the catalog opens). */
export function selfFenceFor(config: Config, zfs: Zfs, log: Logger, metrics?: AgentMetrics, now?: () => number, current?: () => Config): SelfFence {
  return new SelfFence({ zfs, projectsRoot: config.projectsRoot, afterMs: () => selfFenceAfterMs(current?.() ?? config), stateFile: `${config.stateDir}/catalog-contact`, fencedFile: `${config.stateDir}/self-fenced.json`, log, metrics, now });
}

// Prometheus metrics (prom-client). Replication lag above all:
//   storage_replication_lag_seconds{project,target}  now - freshness (cycle-plan.ts freshnessAsOf)
//   storage_replication_lag_max_seconds{target}       always present (per-project series can be off)
//   storage_replication_projects_over_slo{target}
import { createServer, type Server } from 'node:http';
import { Registry, Gauge, Counter, Histogram, collectDefaultMetrics } from 'prom-client';
import type { CycleReport } from './agent.js';

export class AgentMetrics {
  readonly registry = new Registry();
  private readonly lagSeconds: Gauge<'project' | 'target'>;
  private readonly lagMax: Gauge<'target'>;
  private readonly overSlo: Gauge<'target'>;
  private readonly lastSuccess: Gauge<'target'>;
  private readonly bytesSent: Counter<'target'>;
  private readonly transferSeconds: Histogram<'target'>;
  private readonly failures: Counter<'target' | 'reason'>;
  private readonly snapshotsCreatedTotal: Counter;
  private readonly snapshotsPrunedTotal: Counter<'role'>;
  private readonly zfsSeconds: Histogram<'verb' | 'ok'>;
  private readonly cycleSeconds: Histogram;
  private readonly cycleZfsCalls: Gauge;
  private readonly catalogErrors: Counter<'op'>;
  private readonly heartbeatAge: Gauge<'host'>;
  private readonly projectsByRole: Gauge<'role'>;
  private readonly queue: Gauge<'target'>;
  private readonly selfFencedTotal: Counter;
  private readonly clockSkew: Gauge;
  private readonly fenceEvents: Counter<'kind'>;
  private readonly movesRunning: Gauge;
  private readonly movesTotal: Counter<'outcome'>;
  private readonly newest = new Map<string, Map<string, number | null>>(); // target -> project -> creation (unix s) of the newest snapshot on target
  private server?: Server;

  constructor(
    private readonly opts: { perProjectSeries: boolean; lagSloSeconds: number; host: string },
  ) {
    const r = this.registry;
    r.setDefaultLabels({ host: opts.host });
    collectDefaultMetrics({ register: r, prefix: 'storage_agent_' });
    const self = this;
    this.lagSeconds = new Gauge({ name: 'storage_replication_lag_seconds', help: 'Now minus the time up to which the target has the project\'s data: 0 while it holds the unchanged source\'s newest snapshot, else since the creation of the newest snapshot it holds', labelNames: ['project', 'target'], registers: [r], collect() { self.refresh(); } });
    this.lagMax = new Gauge({ name: 'storage_replication_lag_max_seconds', help: 'Largest replication lag among the projects replicated to the target', labelNames: ['target'], registers: [r], collect() { self.refresh(); } });
    this.overSlo = new Gauge({ name: 'storage_replication_projects_over_slo', help: 'Projects whose lag on the target exceeds the lag SLO', labelNames: ['target'], registers: [r], collect() { self.refresh(); } });
    for (const n of ['handles', 'requests', 'resources']) r.removeSingleMetric(`storage_agent_nodejs_active_${n}_total`);
    this.lastSuccess = new Gauge({ name: 'storage_replication_last_success_timestamp_seconds', help: 'Unix time of the last successful replication to the target', labelNames: ['target'], registers: [r] });
    this.bytesSent = new Counter({ name: 'storage_replication_sent_bytes_total', help: 'Bytes of zfs send streams delivered to the target', labelNames: ['target'], registers: [r] });
    this.transferSeconds = new Histogram({ name: 'storage_replication_transfer_duration_seconds', help: 'Duration of one project transfer', labelNames: ['target'], buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200], registers: [r] });
    this.failures = new Counter({ name: 'storage_replication_failures_total', help: 'Replication failures by target and reason', labelNames: ['target', 'reason'], registers: [r] });
    this.snapshotsCreatedTotal = new Counter({ name: 'storage_snapshots_created_total', help: 'Snapshots taken by the agent', registers: [r] });
    this.snapshotsPrunedTotal = new Counter({ name: 'storage_snapshots_pruned_total', help: 'Snapshots destroyed by retention', labelNames: ['role'], registers: [r] });
    this.zfsSeconds = new Histogram({ name: 'storage_zfs_command_duration_seconds', help: 'Duration of zfs/zpool commands by verb', labelNames: ['verb', 'ok'], buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120], registers: [r] });
    this.cycleSeconds = new Histogram({ name: 'storage_agent_cycle_duration_seconds', help: 'Duration of one agent cycle', buckets: [0.1, 0.5, 1, 5, 15, 60, 300], registers: [r] });
    this.catalogErrors = new Counter({ name: 'storage_catalog_errors_total', help: 'Failed catalog operations by operation', labelNames: ['op'], registers: [r] });
    // the `host` label here is the host described (it overrides the default label)
    this.heartbeatAge = new Gauge({ name: 'storage_host_heartbeat_age_seconds', help: 'Seconds since the host last heartbeated into the catalog', labelNames: ['host'], registers: [r] });
    this.projectsByRole = new Gauge({ name: 'storage_projects', help: 'Projects on this host by role', labelNames: ['role'], registers: [r] });
    this.queue = new Gauge({ name: 'storage_replication_queue_depth', help: 'Transfers waiting or running per target', labelNames: ['target'], registers: [r] });
    this.clockSkew = new Gauge({ name: 'storage_clock_skew_seconds', help: "This host's clock minus the catalog's, at the last heartbeat (beyond failover.maxClockSkew the agent refuses to act)", registers: [r] });
    this.selfFencedTotal = new Counter({ name: 'storage_self_fenced_projects_total', help: 'Projects unmounted because the catalog could not be reached for failover.selfFenceAfter', registers: [r] });
    this.fenceEvents = new Counter({ name: 'storage_fence_events_total', help: 'Fencing and failover actions by this agent (demoted, remounted, failover)', labelNames: ['kind'], registers: [r] });
    this.movesRunning = new Gauge({ name: 'storage_moves_running', help: 'Moves requested of this host (storagectl move/drain) being performed now', registers: [r] });
    this.movesTotal = new Counter({ name: 'storage_moves_total', help: 'Moves requested of this host that ended, by outcome (done, failed, cancelled)', labelNames: ['outcome'], registers: [r] });
    this.cycleZfsCalls = new Gauge({ name: 'storage_agent_cycle_zfs_calls', help: 'Local zfs calls made by the last cycle', registers: [r] });
  }

  zfsCommand(verb: string, seconds: number, ok: boolean): void {
    this.zfsSeconds.observe({ verb, ok: ok ? 'true' : 'false' }, seconds);
  }

  /**
   * Records how fresh a replica is: `asOf` is the unix time up to which the target has the
   * project's data (the creation of its newest snapshot, or the time of a cycle that found
   * it up to date with an unchanged source), null when the target has nothing yet.
   */
  replicaFreshness(project: string, target: string, asOf: number | null): void {
    if (!this.newest.has(target)) this.newest.set(target, new Map());
    this.newest.get(target)!.set(project, asOf);
  }

  /** A project left this host, or a target left a project: its series go (aggregates stay). */
  forgetPair(project: string, target: string): void {
    this.newest.get(target)?.delete(project);
    this.lagSeconds.remove({ project, target });
  }

  /** Catalog errors by operation (the agent keeps running from its last view). */
  catalogError(op: string): void {
    this.catalogErrors.inc({ op });
  }

  /** Heartbeat age of every host the catalog knows (from this agent's view). */
  heartbeats(hosts: Array<{ id: string; heartbeatAt: number | null }>): void {
    const now = Date.now();
    for (const h of hosts) if (h.heartbeatAt !== null) this.heartbeatAge.set({ host: h.id }, Math.max(0, (now - h.heartbeatAt) / 1000));
  }

  /** Projects by role on this host. */
  roles(primary: number, replica: number): void {
    this.projectsByRole.set({ role: 'primary' }, primary);
    this.projectsByRole.set({ role: 'replica' }, replica);
  }

  skew(seconds: number): void {
    this.clockSkew.set(seconds);
  }

  selfFenced(n: number): void {
    this.selfFencedTotal.inc(n);
  }

  moves(running: number): void {
    this.movesRunning.set(running);
  }

  moveEnded(outcome: 'done' | 'failed' | 'cancelled'): void {
    this.movesTotal.inc({ outcome });
  }

  fence(kind: 'demoted' | 'remounted' | 'failover', n: number): void {
    if (n > 0) this.fenceEvents.inc({ kind }, n);
  }

  queueDepth(target: string, depth: number): void {
    this.queue.set({ target }, depth);
  }

  /** Lags as of now: an unreachable target's lag keeps growing between listings. */
  private refresh(): void {
    const now = Date.now() / 1000;
    for (const [target, m] of this.newest) {
      let max = 0;
      let over = 0;
      for (const [project, at] of m) {
        const lag = at === null ? Number.POSITIVE_INFINITY : Math.max(0, now - at);
        if (lag > this.opts.lagSloSeconds) over++;
        if (at !== null) {
          max = Math.max(max, lag);
          if (this.opts.perProjectSeries) this.lagSeconds.set({ project, target }, lag);
        }
      }
      this.lagMax.set({ target }, max);
      this.overSlo.set({ target }, over);
    }
  }

  sent(target: string, bytes: number, seconds: number): void {
    this.bytesSent.inc({ target }, bytes);
    this.transferSeconds.observe({ target }, seconds);
    this.lastSuccess.set({ target }, Date.now() / 1000);
  }

  failure(target: string, reason: string): void {
    this.failures.inc({ target, reason });
  }

  snapshotsCreated(n: number): void {
    if (n > 0) this.snapshotsCreatedTotal.inc(n);
  }

  snapshotsPruned(role: 'primary' | 'replica', n: number): void {
    this.snapshotsPrunedTotal.inc({ role }, n);
  }

  cycle(r: CycleReport): void {
    this.cycleSeconds.observe(r.durationMs / 1000);
    this.cycleZfsCalls.set(r.localZfsCalls);
  }

  listen(address: string): Promise<void> {
    const i = address.lastIndexOf(':');
    const host = address.slice(0, i).replace(/^\[|\]$/g, '');
    const port = Number(address.slice(i + 1));
    this.server = createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end('see /metrics\n');
        return;
      }
      this.registry
        .metrics()
        .then((body) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(body))
        .catch((e: Error) => res.writeHead(500).end(e.message));
    });
    return new Promise((resolve, reject) => {
      this.server!.once('error', (e) => reject(new Error(`metrics endpoint ${address}: ${e.message}`)));
      this.server!.listen(port, host, () => resolve());
    });
  }

  close(): void {
    this.server?.close();
  }
}

// storagectl: the admin CLI.
// Exit codes: 0 ok; 1 the operation failed (details on stderr); 2 usage or validation
// error (nothing was done); 3 environment problem (configuration or catalog missing).
import { Command, CommanderError } from 'commander';
import { Zfs, CommandRunner, capabilityRows, ZfsCommandError, type DatasetTree } from '../zfs/index.js';
import { loadConfig, parseConfig, ConfigError, deadAfterMs, fenceBoundMs, liveAt, type Config } from '../agent/config.js';
import { Agent, sshOptions, type AgentDeps } from '../agent/agent.js';
import { openCatalog, CatalogError, type Catalog, type OperationProgress, type ProjectRecord, type ReplicaRecord } from '../catalog/index.js';
import { freshnessAsOf } from '../agent/cycle-plan.js';
import { repairCatalog } from '../catalog/repair.js';
import { failover, LockedError, FailoverNotNeeded } from '../agent/failover.js';
import { leaseOwner } from '../lock/lease.js';
import { productVersion } from '../util/version.js';
import { move } from '../agent/move.js';
import { describeResult } from '../agent/move-runner.js';
import { cancelMove, destinationOf, followMove, moveOnRow, requestMove, MoveRequestError, type MoveOutcome } from '../agent/move-request.js';
import { drainHost, leftOn } from '../agent/drain.js';
import { restore, RestoreError } from '../agent/restore.js';
import { assertClock } from '../agent/clock.js';
import { SshPool } from '../replica/transport.js';
import { fetchListing } from '../replica/listing.js';
import { silentLogger } from '../util/log.js';
import * as v from '../util/validate.js';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { authorizedKeyLines, writeBlock } from './authorized-keys.js';

class UsageError extends Error {}
class EnvError extends Error {}

const DEFAULT_CONFIG = process.env.STORAGE_CONFIG ?? '/etc/storage-agent/config.yaml';

interface Ctx {
  config: Config;
  catalog: Catalog;
  zfs: Zfs;
}

/**
 * Catalogs this process opened, closed when the command ends: a Cassandra driver that is
 * waiting to reconnect to a node that is down (partitioned, restarting) keeps its timers
 * running, and the command would not exit after it has finished its work (seen in the
 * chaos tier: a failover and a move done, their storagectl still running a minute later).
 */
const opened = new Set<Catalog>();

async function closeOpened(): Promise<void> {
  const all = [...opened];
  opened.clear();
  await Promise.race([Promise.allSettled(all.map((c) => c.close())), new Promise((res) => setTimeout(res, 5_000).unref())]);
}

async function context(configPath: string): Promise<Ctx> {
  let config: Config;
  try {
    config = loadConfig(configPath);
  } catch (e) {
    throw new EnvError((e as Error).message);
  }
  const catalog = await openCatalog(config);
  opened.add(catalog);
  const zfs = new Zfs({ runner: new CommandRunner({ prefix: config.zfs.commandPrefix }), zfs: config.zfs.zfsPath, zpool: config.zfs.zpoolPath, capabilitiesCache: `${config.stateDir}/capabilities.json` });
  return { config, catalog, zfs };
}

/** A project's state for people: with the operation in progress, if any. */
function stateText(d: { state: string; operation: ProjectRecord['operation'] }): string {
  const o = d.operation;
  return o ? `${d.state} (${o.kind} ${o.from ?? '-'}->${o.to}, step ${o.step}, since ${new Date(o.startedAt).toISOString()})` : d.state;
}

/** --lease <seconds>: 5 s to 1 h. */
function leaseOption(text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 5 || n > 3600) throw new UsageError(`--lease: expected whole seconds from 5 to 3600, got ${v.describe(text)}`);
  return n * 1000;
}

/**
 * context() for an operation that changes where a project is served: refuses (exit 1,
 * ClockSkewError) when this host's clock is beyond failover.maxClockSkew of the catalog's.
 */
async function actingContext(configPath: string): Promise<Ctx> {
  const ctx = await context(configPath);
  await assertClock(ctx.catalog, ctx.config.failover.maxClockSkew * 1000); // refused: main closes the catalog
  return ctx;
}

/** The project's catalog row; with `verb`, also requires that this host serves it. */
async function projectHere(ctx: Ctx, id: string, verb?: string): Promise<ProjectRecord> {
  const p = await ctx.catalog.getProject(id);
  if (!p) throw new UsageError(`project ${id} is not in the catalog`);
  if (verb && p.primary !== ctx.config.host) throw new UsageError(`project ${id} is served by ${p.primary ?? 'no host'}, not ${ctx.config.host}: ${verb} there`);
  return p;
}

/** Runs fn with one SSH connection pool for the command, closed afterwards. */
/** `storagectl move <project>` without a host: chooseDestination, said on stderr. */
async function destinationFor(config: Config, catalog: Catalog, id: string): Promise<string> {
  const p = await catalog.getProject(id);
  if (!p) throw new UsageError(`project ${id} is not in the catalog`);
  const hosts = await catalog.listHosts();
  const primary = hosts.find((h) => h.id === p.primary);
  if (!primary) throw new UsageError(`project ${id} is served by ${p.primary ?? 'no host'}, which is not in the catalog: nothing to move from`);
  const d = await destinationOf(catalog, config, p, primary, hosts);
  if (d.host === null) throw new UsageError(`move ${id}: ${d.why}`);
  process.stderr.write(`move: destination ${d.host} (${d.reason === 'holds-replica' ? `holds a replica at ${d.snapshot}: only the final delta moves` : 'least loaded; no replica host can take it: a full send'})\n`);
  return d.host;
}

interface MoveOpts {
  dropSource?: boolean;
  force?: boolean;
  wait: boolean;
  status?: boolean;
  here?: boolean;
  presyncThreshold: string;
  pickupTimeout?: string;
  lease: string;
  json?: boolean;
}

function pickupOption(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > 86_400) throw new UsageError(`--pickup-timeout: expected whole seconds from 1 to 86400, got ${v.describe(text)}`);
  return n * 1000;
}

/** A followed move's reports on stderr: steps as lines, transfers as a bar on a terminal. */
async function progressView(json: boolean): Promise<{ show: (p: OperationProgress) => void; stop: () => void }> {
  const tty = !json && process.stderr.isTTY;
  const CliProgress = tty ? (await import('cli-progress')).default : undefined;
  let bar: { start: (t: number, v: number, p: object) => void; setTotal: (t: number) => void; update: (v: number, p: object) => void; stop: () => void } | undefined;
  let lastStep = '';
  return {
    show: (p) => {
      if (p.step !== lastStep) {
        bar?.stop();
        bar = undefined;
        process.stderr.write(`move: ${p.step}\n`);
        lastStep = p.step;
      }
      if (!tty || p.bytes === 0) return;
      const rate = p.elapsedMs > 0 ? p.bytes / (p.elapsedMs / 1000) : 0;
      const total = Math.max(p.bytes, p.estimate ?? p.bytes);
      if (!bar) {
        if (!CliProgress) return;
        bar = new CliProgress.SingleBar({ format: 'move |{bar}| {sent} at {rate}/s, ETA {eta_formatted}', hideCursor: true, clearOnComplete: true }, CliProgress.Presets.shades_classic);
        bar.start(total, 0, { sent: '0 MiB', rate: '0 MiB' });
      }
      bar.setTotal(total);
      bar.update(p.bytes, { sent: mib(p.bytes), rate: mib(rate) });
    },
    stop: () => bar?.stop(),
  };
}

/** The end of a followed move: stdout (--json: one document), exit code 0 moved, 1 not. */
function reportOutcome(json: boolean, id: string, o: MoveOutcome): void {
  if (o.phase !== 'done') process.exitCode = 1;
  if ('progress' in o) {
    const pr = o.progress;
    const doc = { project: id, requestId: pr.id, outcome: o.phase, from: pr.from, to: pr.to, servedBy: pr.servedBy ?? (o.phase === 'done' ? pr.to : pr.from), ...(pr.result ?? {}), ...(pr.error ? { error: pr.error } : {}) };
    out(json, doc, () => (o.phase === 'done' ? `${id} ${pr.step}\n` : `${id}: move to ${pr.to} ${o.phase}: ${pr.error ?? pr.step}\n`));
    return;
  }
  out(json, { project: id, outcome: o.phase, detail: o.detail }, () => `${id}: ${o.detail}\n`);
}

/** `storagectl move --here`: performed in this process, on the primary (the agent is not needed). */
async function moveHere(configPath: string, id: string, named: string | undefined, threshold: number, opts: MoveOpts): Promise<void> {
  const { config, catalog, zfs } = await actingContext(configPath);
  const to = named ?? (await destinationFor(config, catalog, id));
  const view = await progressView(!!opts.json);
  const agent = cliAgent({ config, catalog, zfs }, (pr) => view.show({ id: 'here-00000000', kind: 'move', from: config.host, to, phase: 'running', step: lastStep, bytes: pr.bytes, estimate: pr.estimate ?? null, elapsedMs: pr.elapsedMs, updatedAt: Date.now() }));
  let lastStep = '';
  const step = (s: string) => {
    lastStep = s;
    view.show({ id: 'here-00000000', kind: 'move', from: config.host, to, phase: 'running', step: s, bytes: 0, estimate: null, elapsedMs: 0, updatedAt: Date.now() });
  };
  try {
    const r = await move(agent, id, to, { owner: leaseOwner('storagectl-move', config.host), dropSource: opts.dropSource, forceUnmount: opts.force, presyncThresholdBytes: threshold, leaseMs: leaseOption(opts.lease), onStep: step });
    view.stop();
    out(!!opts.json, r, () => `${id} ${describeResult(r)}\n`);
  } finally {
    view.stop();
    await agent.close();
  }
}

async function withSsh<T>(config: Config, fn: (pool: SshPool) => Promise<T>): Promise<T> {
  const pool = new SshPool(sshOptions(config));
  try {
    return await fn(pool);
  } finally {
    pool.closeAll();
  }
}

/** An Agent for one CLI command (no metrics, quiet log), optionally reporting transfer progress. */
function cliAgent(ctx: Pick<Ctx, 'config' | 'catalog' | 'zfs'>, onProgress?: AgentDeps['onProgress']): Agent {
  return new Agent({ config: ctx.config, catalog: ctx.catalog, zfs: ctx.zfs, log: silentLogger(), onProgress });
}

const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;

function out(json: boolean, data: unknown, human: () => string): void {
  process.stdout.write(json ? JSON.stringify(data, null, 2) + '\n' : human());
}

function ago(ms: number | null): string {
  if (ms === null) return 'never';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${(s / 3600).toFixed(1)}h`;
  return `${(s / 86400).toFixed(1)}d`;
}

function color(code: number, s: string): string {
  return process.stdout.isTTY ? `\u001b[${code}m${s}\u001b[0m` : s;
}

function lagText(lagSec: number | null, slo: number): string {
  if (lagSec === null) return color(31, 'none');
  const t = ago(lagSec * 1000);
  return lagSec > slo ? color(31, t) : lagSec > slo / 4 ? color(33, t) : color(32, t);
}

function table(rows: string[][]): string {
  // eslint-disable-next-line no-control-regex
  const width = (s: string) => s.replace(/\u001b\[\d+m/g, '').length;
  const widths = rows[0]!.map((_, i) => rows.reduce((m, r) => Math.max(m, width(r[i] ?? '')), 0));
  return rows.map((r) => r.map((c, i) => c + ' '.repeat(widths[i]! - width(c))).join('  ').trimEnd()).join('\n') + '\n';
}

export async function main(argv: string[]): Promise<void> {
  const program = new Command('storagectl')
    .description('Admin CLI for ZFS project datasets: snapshots, replication, failover, moves')
    .version(productVersion(), '-V, --version', 'print the version')
    .option('-c, --config <file>', 'agent configuration (or $STORAGE_CONFIG)', DEFAULT_CONFIG)
    .exitOverride()
    .showHelpAfterError()
    .addHelpText('after', '\nExit codes: 0 ok, 1 operation failed, 2 usage or validation error, 3 configuration/catalog missing.');
  const cfg = () => program.opts<{ config: string }>().config;

  program
    .command('capabilities')
    .description('probe the local zfs implementation and print what it supports')
    .option('--json', 'machine-readable output')
    .action(async (opts: { json?: boolean }) => {
      const caps = await new Zfs().capabilities();
      out(!!opts.json, caps, () => capabilityRows(caps).map(([k, val]) => `${k.padEnd(22)} ${val}\n`).join(''));
    });

  program
    .command('config')
    .description('configuration tools')
    .command('check <file>')
    .description('validate a configuration file; prints every problem with its path')
    .action((file: string) => {
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch (e) {
        throw new EnvError(`cannot read ${file}: ${(e as Error).message}`);
      }
      try {
        const c = parseConfig(text, file);
        process.stdout.write(`${file}: ok (host ${c.host}, datacenter ${c.datacenter}, catalog ${c.catalog.backend})\n`);
      } catch (e) {
        throw new UsageError((e as Error).message);
      }
    });

  program
    .command('serve-ssh')
    .description("the SSH forced command of a peer's replication key (reads SSH_ORIGINAL_COMMAND)")
    .option('--peer <host>', 'the peer whose key this is (written by authorized-keys)')
    .action(async (opts: { peer?: string }) => {
      const lean = await import('./serve-ssh.js');
      await lean.main(['--config', cfg(), 'serve-ssh', ...(opts.peer !== undefined ? ['--peer', opts.peer] : [])]);
    });

  program
    .command('authorized-keys')
    .description("authorized_keys lines for every host's replication key in the catalog, each bound to its peer name")
    .option('--storagectl <path>', 'the storagectl the forced command runs', resolve(process.argv[1] ?? 'storagectl'))
    .option('--write <file>', 'replace the generated block of this authorized_keys file (other lines kept)')
    .option('--json', 'machine-readable output')
    .action(async (opts: { storagectl: string; write?: string; json?: boolean }) => {
      const { catalog } = await context(cfg());
      const r = authorizedKeyLines(await catalog.listHosts(), { storagectl: opts.storagectl, config: resolve(cfg()) });
      if (opts.write) writeBlock(opts.write, r.lines);
      out(!!opts.json, { ...r, written: opts.write ?? null }, () => (opts.write ? `${opts.write}: ${r.lines.length} peer key(s) written\n` : r.lines.map((l) => `${l}\n`).join('')));
      for (const h of r.missing) process.stderr.write(`warning: host ${h} has no replication key in the catalog (its agent registers it at start): no line for it\n`);
      if (r.missing.length) process.exitCode = 1;
    });

  const project = program.command('project').description('project datasets');
  project
    .command('create <project>')
    .description('create a project dataset on this host and register it (this host becomes primary)')
    .option('--quota <bytes>', 'quota in bytes')
    .option('--replication-factor <n>', 'number of replicas', '2')
    .option('--json', 'machine-readable output')
    .action(async (id: string, opts: { quota?: string; replicationFactor: string; json?: boolean }) => {
      v.projectId(id, 'storagectl project create');
      const quota = opts.quota === undefined ? null : Number(opts.quota);
      if (quota !== null && !(Number.isInteger(quota) && quota > 0)) throw new UsageError(`--quota: expected a positive number of bytes, got ${v.describe(opts.quota)}`);
      const rf = Number(opts.replicationFactor);
      if (!Number.isInteger(rf) || rf < 0 || rf > 10) throw new UsageError(`--replication-factor: expected 0-10, got ${v.describe(opts.replicationFactor)}`);
      const { config, catalog, zfs } = await context(cfg());
      const agent = cliAgent({ config, catalog, zfs });
      await agent.init();
      const ds = `${config.projectsRoot}/${id}`;
      if (await catalog.getProject(id)) throw new UsageError(`project ${id} already exists in the catalog`);
      await zfs.create(ds, { canmount: 'noauto', props: quota ? { quota: String(quota) } : {} });
      await catalog.createProject({ id, primary: config.host, replicationFactor: rf, quota });
      await catalog.addEvent({ project: id, host: config.host, kind: 'created', detail: `dataset ${ds}` });
      out(!!opts.json, { project: id, primary: config.host, dataset: ds }, () => `created ${id} on ${config.host} (${ds}); mount it with: storagectl open ${id}\n`);
    });

  program
    .command('open <project>')
    .description('mount a project: on this host if it is the primary; when the primary is dead (or none), on the freshest live replica (a failover)')
    .option('--json', 'machine-readable output')
    .action(async (id: string, opts: { json?: boolean }) => {
      v.projectId(id, 'storagectl open');
      const ctx = await actingContext(cfg());
      const { config, zfs, catalog } = ctx;
      const p = await projectHere(ctx, id);
      if (p.primary === config.host) {
        const ds = `${config.projectsRoot}/${id}`;
        const { mounted, mountpoint } = await zfs.get(ds, ['mounted', 'mountpoint']);
        if (mounted !== 'yes') await zfs.mount(ds);
        out(!!opts.json, { project: id, host: config.host, mountpoint, failover: null }, () => `${id} mounted at ${mountpoint} on ${config.host}\n`);
        return;
      }
      const dead = deadAfterMs(config);
      const primary = p.primary ? await catalog.getHost(p.primary) : undefined;
      if (primary && primary.heartbeatAt !== null && Date.now() - primary.heartbeatAt <= dead) {
        throw new UsageError(`project ${id} is served by ${primary.id}, which is live: open it there (or move it: storagectl move ${id} ${config.host}, run on ${primary.id})`);
      }
      // location none or a dead primary: lock, the freshest live replica (ties: least loaded), mount
      const r = await withSsh(config, (pool) =>
        failover(catalog, pool, id, { owner: leaseOwner('storagectl-open', config.host), graceMs: dead, selfFenceBoundMs: fenceBoundMs(config), expectPrimary: p.primary ?? undefined, onStep: (s) => process.stderr.write(`open: ${s}\n`) }),
      );
      out(!!opts.json, { project: id, host: r.to, failover: r }, () => `${id} mounted on ${r.to} (primary ${p.primary ?? 'none'} was dead) at snapshot ${r.snapshot}; data-loss window up to ${r.dataLossWindowSeconds}s\n`);
    });

  program
    .command('close <project>')
    .description('unmount a project on this host')
    .action(async (id: string) => {
      v.projectId(id, 'storagectl close');
      const { config, zfs } = await context(cfg());
      const ds = `${config.projectsRoot}/${id}`;
      const { mounted } = await zfs.get(ds, ['mounted']);
      if (mounted === 'yes') await zfs.unmount(ds);
      process.stdout.write(`${id} unmounted\n`);
    });

  program
    .command('snapshot <project>')
    .description('take a snapshot now (named snapshots are never pruned automatically)')
    .option('--name <name>', 'snapshot name (default: ISO-8601 UTC timestamp, an automatic snapshot)')
    .action(async (id: string, opts: { name?: string }) => {
      v.projectId(id, 'storagectl snapshot');
      if (opts.name !== undefined) v.snapshotName(opts.name, 'storagectl snapshot --name');
      const ctx = await context(cfg());
      const { config, catalog, zfs } = ctx;
      await projectHere(ctx, id, 'snapshot it');
      const name = opts.name ?? v.autoSnapshotName(new Date(), config.snapshot.prefix);
      await zfs.snapshot([`${config.projectsRoot}/${id}@${name}`]);
      await catalog.addEvent({ project: id, host: config.host, kind: 'snapshot', detail: name });
      process.stdout.write(`${config.projectsRoot}/${id}@${name}\n`);
    });

  program
    .command('snapshots <project>')
    .description('list a project\'s snapshots on its primary (this host) and on every replica host')
    .option('--json', 'machine-readable output')
    .action(async (id: string, opts: { json?: boolean }) => {
      v.projectId(id, 'storagectl snapshots');
      const ctx = await context(cfg());
      const { config, catalog, zfs } = ctx;
      const p = await projectHere(ctx, id);
      const rows: Array<{ host: string; role: string; snapshot: string; guid: string; creation: string; kind: string }> = [];
      const add = (host: string, role: string, snaps: Array<{ snap: string; guid: string; creation: number }>) => {
        for (const s of snaps) rows.push({ host, role, snapshot: s.snap, guid: s.guid, creation: new Date(s.creation * 1000).toISOString(), kind: v.parseAutoSnapshotName(s.snap) ? 'automatic' : 'named' });
      };
      const errors: string[] = [];
      if (p.primary === config.host) {
        const t = await zfs.list(`${config.projectsRoot}/${id}`, { depth: 0 });
        add(config.host, 'primary', t.get(`${config.projectsRoot}/${id}`)?.snapshots ?? []);
      } else if (p.primary) errors.push(`primary ${p.primary} is not this host; its snapshots are not listed (run there)`);
      const hosts = new Map((await catalog.listHosts()).map((h) => [h.id, h]));
      await withSsh(config, async (pool) => {
        for (const t of p.targets) {
          const h = hosts.get(t);
          if (!h) continue;
          try {
            add(t, 'replica', (await fetchListing(pool, h, { projects: [id] })).datasets[id]?.snapshots ?? []);
          } catch (e) {
            errors.push(`${t}: ${(e as Error).message}`);
          }
        }
      });
      out(!!opts.json, { project: id, snapshots: rows, errors }, () => {
        const body = table([['HOST', 'ROLE', 'SNAPSHOT', 'CREATED', 'KIND'], ...rows.map((r) => [r.host, r.role, r.snapshot, r.creation, r.kind])]);
        return body + errors.map((e) => `warning: ${e}\n`).join('');
      });
      if (errors.length) process.exitCode = 1;
    });

  program
    .command('status')
    .description('projects with primary, replicas, newest replicated snapshot and lag per replica')
    .option('--json', 'machine-readable output')
    .option('--project <id>', 'only this project')
    .action(async (opts: { json?: boolean; project?: string }) => {
      const { config, catalog } = await context(cfg());
      let projects = await catalog.listProjects();
      if (opts.project) projects = projects.filter((p) => p.id === v.projectId(opts.project, 'storagectl status --project'));
      const now = Date.now();
      type Row = { project: string; primary: string | null; state: string; operation: ProjectRecord['operation']; replicationFactor: number; targets: string[]; replicas: Array<{ host: string; snapshot: string; guid: string; snapshotCreation: string; lagSeconds: number; confirmedAt: string }>; missingReplicas: string[] };
      const data: Row[] = [];
      // no query per project: the newest snapshots in one read, the replica rows per host
      const newest = await catalog.listNewest();
      const replicasOf = new Map<string, ReplicaRecord[]>();
      const hosts = await catalog.listHosts();
      const beat = new Map(hosts.map((h) => [h.id, h.heartbeatAt]));
      const rows = opts.project ? await catalog.listReplicas(projects[0]?.id ?? v.projectId(opts.project)) : (await Promise.all(hosts.map((h) => catalog.listReplicasByHost(h.id)))).flat();
      for (const r of rows) {
        if (!replicasOf.has(r.project)) replicasOf.set(r.project, []);
        replicasOf.get(r.project)!.push(r);
      }
      for (const p of projects) {
        const src = newest.get(p.id);
        const replicas = (replicasOf.get(p.id) ?? []).sort((a, b) => (a.host < b.host ? -1 : 1)).map((r) => {
          // the agents' lag metric's definition (cycle-plan.ts freshnessAsOf): 0 when the replica holds the source's newest snapshot
          // status's evidence that the target is up: its heartbeat
          const seen = beat.get(r.host);
          const asOf = freshnessAsOf({ nowSec: now / 1000, sourceNewestGuid: src?.guid, sourceChanged: false, targetNewest: { guid: r.guid, creation: r.snapshotCreation }, targetSeenAt: seen ? seen / 1000 : undefined });
          return {
            host: r.host,
            snapshot: r.snapshot,
            guid: r.guid,
            snapshotCreation: new Date(r.snapshotCreation * 1000).toISOString(),
            lagSeconds: Math.max(0, Math.round(now / 1000 - (asOf ?? 0))),
            confirmedAt: new Date(r.confirmedAt).toISOString(),
          };
        });
        const missing = p.targets.filter((t) => !replicas.some((r) => r.host === t));
        data.push({ project: p.id, primary: p.primary, state: p.state, operation: p.operation, replicationFactor: p.replicationFactor, targets: p.targets, replicas, missingReplicas: missing });
      }
      // data set aside by demoted hosts (kept until an admin decides): from the events of 30 days
      const conflicts = (await catalog.listEvents({ since: now - 30 * 86_400_000, limit: 10_000 }))
        .filter((e) => e.kind === 'demoted' && e.project && (!opts.project || e.project === opts.project))
        .map((e) => ({ project: e.project!, host: e.host, dataset: /kept in (\S+)/.exec(e.detail)?.[1] ?? null, at: new Date(e.at).toISOString() }));
      out(!!opts.json, { projects: data, conflicts }, () => {
        const rows = [['PROJECT', 'PRIMARY', 'STATE', 'REPLICA', 'NEWEST SNAPSHOT', 'LAG', 'CONFIRMED']];
        for (const d of data) {
          if (d.replicas.length === 0 && d.missingReplicas.length === 0) rows.push([d.project, d.primary ?? '-', stateText(d), '-', '-', '-']);
          d.replicas.forEach((r, i) =>
            rows.push([i === 0 ? d.project : '', i === 0 ? d.primary ?? '-' : '', i === 0 ? stateText(d) : '', r.host, r.snapshot, lagText(r.lagSeconds, config.metrics.lagSloSeconds), `${ago(now - Date.parse(r.confirmedAt))} ago`]),
          );
          for (const m of d.missingReplicas) rows.push([d.replicas.length ? '' : d.project, d.replicas.length ? '' : d.primary ?? '-', d.replicas.length ? '' : stateText(d), m, '(none yet)', lagText(null, config.metrics.lagSloSeconds), '-']);
        }
        const tail = conflicts.length
          ? `\n${color(33, `${conflicts.length} conflict(s) kept aside`)} (data a demoted host had; never destroyed automatically; see storagectl conflicts on that host):\n` +
            table([['PROJECT', 'HOST', 'DATASET', 'SINCE'], ...conflicts.map((x) => [x.project, x.host ?? '-', x.dataset ?? '?', x.at])])
          : '';
        return table(rows) + tail;
      });
    });

  program
    .command('hosts')
    .description('hosts in the catalog with datacenter, heartbeat age, liveness (and draining) and load')
    .option('--json', 'machine-readable output')
    .action(async (opts: { json?: boolean }) => {
      const { config, catalog } = await context(cfg());
      const now = Date.now();
      const isLive = liveAt(config, now);
      const listed = await catalog.listHosts();
      // a draining host: what is still on it (one listing of the projects, only then)
      const left = new Map<string, { primariesLeft: number; replicasLeft: number }>();
      for (const h of listed.filter((x) => x.draining)) left.set(h.id, await leftOn(catalog, h.id));
      const hosts = listed.map((h) => ({ ...h, heartbeatAgeSeconds: h.heartbeatAt === null ? null : Math.round((now - h.heartbeatAt) / 1000), live: isLive(h), ...(left.get(h.id) ?? {}) }));
      out(!!opts.json, { hosts }, () =>
        table([
          ['HOST', 'DATACENTER', 'ADDRESS', 'HEARTBEAT', 'STATE', 'LOAD'],
          ...hosts.map((h) => [
            h.id,
            h.datacenter,
            `${h.address}:${h.port}`,
            h.heartbeatAt === null ? 'never' : `${ago(now - h.heartbeatAt)} ago`,
            `${h.live ? color(32, 'live') : color(31, 'dead')}${h.draining ? color(33, h.primariesLeft || h.replicasLeft ? ` draining (${h.primariesLeft} projects, ${h.replicasLeft} replicas left)` : ' draining, empty') : ''}`,
            String(h.load),
          ]),
        ]),
      );
    });

  program
    .command('failover <project>')
    .description('serve a project from its freshest live replica (ties: least loaded) after fencing the old primary')
    .option('--to <host>', 'this replica host (must hold a replica)')
    .option('--lease <seconds>', 'length of the project lease (renewed at a third; every irreversible step needs a quarter of it left)', '60')
    .option('--json', 'machine-readable output')
    .action(async (id: string, opts: { to?: string; lease: string; json?: boolean }) => {
      v.projectId(id, 'storagectl failover');
      if (opts.to) v.hostId(opts.to, 'storagectl failover --to');
      const leaseMs = leaseOption(opts.lease);
      const { config, catalog } = await actingContext(cfg());
      const r = await withSsh(config, (pool) =>
        failover(catalog, pool, id, {
          to: opts.to,
          owner: leaseOwner('storagectl-failover', config.host),
          graceMs: deadAfterMs(config),
          selfFenceBoundMs: fenceBoundMs(config),
          leaseMs,
          onStep: (s) => process.stderr.write(`failover: ${s}\n`), // steps on stderr, also with --json
        }),
      );
      out(!!opts.json, r, () => `${id} now served by ${r.to} at snapshot ${r.snapshot} (data-loss window up to ${r.dataLossWindowSeconds}s); old primary ${r.from ?? '-'}: ${r.oldPrimaryFenced}\n`);
    });

  program
    .command('move <project> [host]')
    .description(
      "move a project to another host with seconds of downtime, typed on any host: the primary's agent performs it (pre-sync, stop writes, final incremental, verify, switch) and this command follows it. Without a host: a live host of another datacenter that holds a replica (least loaded), else the least-loaded live host. Exit 0 moved, 1 not moved (the source serves on)",
    )
    .option('--drop-source', 'remove the copy on the source once the target serves (default: it stays a replica)')
    .option('--force', 'stop the processes using the project at the source (killed) when it is busy, then unmount')
    .option('--no-wait', 'record the request and return (follow it with --status)')
    .option('--status', 'follow the move requested or running for <project> (or show how the last one ended)')
    .option('--here', "perform the move in this process (on the primary only), without the agent: for a host whose agent is stopped")
    .option('--lease <seconds>', 'with --here: length of the project lease (renewed at a third; every irreversible step needs a quarter of it left)', '120')
    .option('--presync-threshold <bytes>', 'pre-sync until a round sends less than this', String(64 * 2 ** 20))
    .option('--pickup-timeout <seconds>', "withdraw the request if the primary's agent has not taken it up by then (default: 3 cycles, at least 30 s)")
    .option('--json', 'machine-readable output')
    .action(async (id: string, named: string | undefined, opts: MoveOpts) => {
      v.projectId(id, 'storagectl move');
      if (named !== undefined) v.hostId(named, 'storagectl move [host]');
      const threshold = Number(opts.presyncThreshold);
      if (!Number.isInteger(threshold) || threshold < 0) throw new UsageError(`--presync-threshold: expected bytes, got ${v.describe(opts.presyncThreshold)}`);
      if (opts.status && (named !== undefined || opts.here || !opts.wait)) throw new UsageError('--status follows the move on record: it takes no host, --here or --no-wait');
      if (opts.here && !opts.wait) throw new UsageError('--here performs the move in this process: it cannot --no-wait');
      const pickup = pickupOption(opts.pickupTimeout);
      if (opts.here) return moveHere(cfg(), id, named, threshold, opts);
      const { config, catalog } = await context(cfg());
      const pickupMs = pickup ?? Math.max(30_000, 3 * config.interval * 1000);
      const owner = leaseOwner('storagectl-move', config.host);
      let req: { id: string; from: string; to: string } | undefined;
      if (opts.status) {
        const p = await catalog.getProject(id);
        if (!p) throw new UsageError(`project ${id} is not in the catalog`);
        const op = moveOnRow(p);
        if (!op?.id) {
          const last = (await catalog.getProgress(id)).progress;
          if (!last) throw new UsageError(`project ${id}: no move in progress${op ? ' (one started with --here: follow it where it was typed)' : ''} and none on record`);
          return reportOutcome(!!opts.json, id, last.phase === 'requested' || last.phase === 'queued' || last.phase === 'running' ? { phase: 'superseded', detail: `its last move (${last.id}) was ${last.phase} and is no longer on the row` } : { phase: last.phase, progress: last });
        }
        req = { id: op.id, from: op.from ?? '?', to: op.to };
        process.stderr.write(`move: following ${op.id} (${op.from ?? '-'} -> ${op.to}, ${op.step}, requested by ${op.requestedBy ?? '?'})\n`);
      } else {
        await assertClock(catalog, config.failover.maxClockSkew * 1000);
        const r = await requestMove(catalog, config, {
          project: id,
          ...(named !== undefined ? { to: named } : {}),
          ...(opts.dropSource ? { dropSource: true } : {}),
          ...(opts.force ? { forceUnmount: true } : {}),
          presyncThresholdBytes: threshold,
          requestedBy: `storagectl@${config.host}`,
          owner,
        });
        if (r.choice?.host) process.stderr.write(`move: destination ${r.to} (${r.choice.reason === 'holds-replica' ? `holds a replica at ${r.choice.snapshot}: only the final delta moves` : 'least loaded; no replica host can take it: a full send'})\n`);
        process.stderr.write(r.adopted ? `move: a move of ${id} to ${r.to} is already requested (${r.id}): following it\n` : `move: requested ${r.id}: ${r.from} -> ${r.to}; ${r.from}'s agent performs it\n`);
        req = r;
        if (!opts.wait) {
          out(!!opts.json, { project: id, requestId: r.id, from: r.from, to: r.to, status: 'requested', adopted: r.adopted }, () => `${id}: move to ${r.to} requested (${r.id}); follow it with: storagectl move --status ${id}\n`);
          return;
        }
      }
      const view = await progressView(!!opts.json);
      const outcome = await followMove(catalog, id, req.id, { pickupTimeoutMs: pickupMs, owner, onProgress: view.show, onCatalogError: (e) => process.stderr.write(`move: the catalog did not answer (${e.message.slice(0, 200)}): still following\n`) }).finally(view.stop);
      reportOutcome(!!opts.json, id, outcome);
    });

  program
    .command('cancel <project>')
    .description('cancel a requested or running move that has not switched yet: the project stays served by its source, mounted and active. Exit 0 cancelled, 1 too late (it switched) or nothing to cancel')
    .option('--no-wait', 'ask and return (a running move stops at its next step)')
    .option('--json', 'machine-readable output')
    .action(async (id: string, opts: { wait: boolean; json?: boolean }) => {
      v.projectId(id, 'storagectl cancel');
      const { config, catalog } = await context(cfg());
      const owner = leaseOwner('storagectl-cancel', config.host);
      const c = await cancelMove(catalog, id, owner);
      if (c.kind === 'none') throw new UsageError(c.detail);
      if (c.kind === 'too-late') {
        process.exitCode = 1;
        out(!!opts.json, { project: id, cancelled: false, reason: 'switched', to: c.op.to }, () => `${id}: too late to cancel: the catalog already names ${c.op.to}; the move finishes (storagectl move --status ${id})\n`);
        return;
      }
      if (c.kind === 'withdrawn') {
        out(!!opts.json, { project: id, cancelled: true, requestId: c.op.id, servedBy: c.op.from }, () => `${id}: move to ${c.op.to} withdrawn before it started; served by ${c.op.from ?? '-'} as before\n`);
        return;
      }
      process.stderr.write(`cancel: asked ${c.op.from ?? 'the source'} to stop move ${c.op.id} before its switch\n`);
      if (!opts.wait) {
        out(!!opts.json, { project: id, cancelled: null, requestId: c.op.id, status: 'asked' }, () => `${id}: cancel asked; storagectl move --status ${id} shows how it ends\n`);
        return;
      }
      const outcome = await followMove(catalog, id, c.op.id!, { pickupTimeoutMs: Number.MAX_SAFE_INTEGER, owner });
      const cancelled = outcome.phase === 'cancelled';
      if (!cancelled) process.exitCode = 1;
      out(!!opts.json, { project: id, cancelled, requestId: c.op.id, outcome: outcome.phase, ...('progress' in outcome ? { servedBy: outcome.progress.servedBy ?? null, detail: outcome.progress.step } : { detail: outcome.detail }) }, () =>
        cancelled ? `${id}: cancelled; ${('progress' in outcome && outcome.progress.step) || ''}\n` : `${id}: not cancelled: the move ended ${outcome.phase}${'progress' in outcome ? `: ${outcome.progress.step}` : `: ${outcome.detail}`}\n`,
      );
    });

  program
    .command('drain <host>')
    .description('empty a host for maintenance: mark it draining (no new projects or replicas; its replicas are re-placed), then move every project it serves, a few at a time, each performed by its agent. Killed and re-run, it continues. Exit 0 when every project moved')
    .option('--concurrency <n>', 'moves in flight at once', '2')
    .option('--to-datacenter <dc>', 'only move to hosts of this datacenter (repeatable: comma-separated)')
    .option('--pickup-timeout <seconds>', "withdraw a request the host's agent has not taken up by then (default: 3 cycles, at least 30 s)")
    .option('--json', 'machine-readable output')
    .action(async (hostId: string, opts: { concurrency: string; toDatacenter?: string; pickupTimeout?: string; json?: boolean }) => {
      v.hostId(hostId, 'storagectl drain');
      const concurrency = Number(opts.concurrency);
      if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 64) throw new UsageError(`--concurrency: expected 1 to 64, got ${v.describe(opts.concurrency)}`);
      const dcs = opts.toDatacenter?.split(',').map((d) => v.hostId(d.trim(), 'storagectl drain --to-datacenter'));
      const pickup = pickupOption(opts.pickupTimeout);
      const { config, catalog } = await context(cfg());
      await assertClock(catalog, config.failover.maxClockSkew * 1000);
      if (dcs) {
        const known = new Set((await catalog.listHosts()).map((h) => h.datacenter));
        const unknown = dcs.filter((d) => !known.has(d));
        if (unknown.length) throw new UsageError(`--to-datacenter: no host in ${unknown.join(', ')} (datacenters: ${[...known].sort().join(', ')})`);
      }
      const t0 = Date.now();
      const summary = await drainHost(catalog, config, {
        host: hostId,
        concurrency,
        ...(dcs ? { datacenters: dcs } : {}),
        owner: leaseOwner('storagectl-drain', config.host),
        requestedBy: `drain@${config.host}`,
        pickupTimeoutMs: pickup ?? Math.max(30_000, 3 * config.interval * 1000),
        onEvent: (e) => {
          if (e.kind === 'requested') process.stderr.write(`drain: ${e.project} -> ${e.to} ${e.adopted ? 'already requested, following' : 'requested'} (${e.id})\n`);
          else if (e.kind === 'progress' && e.progress.phase === 'running') process.stderr.write(`drain: ${e.project}: ${e.progress.step}${e.progress.bytes ? ` (${mib(e.progress.bytes)})` : ''}\n`);
          else if (e.kind === 'finished') process.stderr.write(`drain: [${e.done}/${e.total}] ${e.item.project}: ${e.item.outcome}${e.item.to ? ` -> ${e.item.to}` : ''}: ${e.item.detail}\n`);
        },
      });
      const bad = summary.items.filter((i) => i.outcome !== 'moved');
      if (bad.length) process.exitCode = 1;
      const secs = ((Date.now() - t0) / 1000).toFixed(1);
      out(!!opts.json, { ...summary, seconds: Number(secs) }, () =>
        [
          table([['PROJECT', 'OUTCOME', 'TO', 'DETAIL'], ...summary.items.map((i) => [i.project, i.outcome, i.to ?? '-', i.detail])]),
          `${hostId}: ${summary.items.filter((i) => i.outcome === 'moved').length} moved, ${bad.length} not moved, in ${secs} s; ` +
            (summary.empty ? `${hostId} is empty (draining; storagectl undrain ${hostId} to use it again)\n` : `${summary.primariesLeft} projects still served there, ${summary.replicasLeft} replicas still placed there (their primaries' agents re-place them each cycle when a host can take them; storagectl hosts shows the count)\n`),
        ].join(''),
      );
    });

  program
    .command('undrain <host>')
    .description('a drained host takes new projects and replicas again')
    .action(async (hostId: string) => {
      v.hostId(hostId, 'storagectl undrain');
      const { catalog } = await context(cfg());
      await catalog.setDraining(hostId, false);
      process.stdout.write(`${hostId}: no longer draining\n`);
    });

  program
    .command('restore <project> [snapshot]')
    .description(
      'restore a snapshot: clone (read-only mount for file recovery) or rollback (live state := snapshot, keeping every snapshot; writes stop meanwhile: the processes writing are killed); fetched from a replica if needed. --cleanup removes the clones/copies restores made here',
    )
    .option('--mode <mode>', 'clone | rollback', 'clone')
    .option('--from <host>', 'take the snapshot from this replica host')
    .option('--cleanup', "unmount and destroy the clone/copy datasets restores of this project made on this host (<pool>/restore/<project>-*; only <snapshot>'s when given)")
    .option('--lease <seconds>', 'length of the project lease (rollback; every irreversible step needs a quarter of it left)', '120')
    .option('--json', 'machine-readable output')
    .action(async (id: string, snap: string | undefined, opts: { mode: string; from?: string; cleanup?: boolean; lease: string; json?: boolean }) => {
      const leaseMs = leaseOption(opts.lease);
      v.projectId(id, 'storagectl restore');
      if (snap !== undefined) v.snapshotName(snap, 'storagectl restore <snapshot>');
      if (opts.mode !== 'clone' && opts.mode !== 'rollback') throw new UsageError(`--mode: expected clone or rollback, got ${v.describe(opts.mode)}`);
      if (opts.from) v.hostId(opts.from, 'storagectl restore --from');
      if (opts.cleanup && (opts.from || opts.mode !== 'clone')) throw new UsageError('storagectl restore --cleanup takes no --from and no --mode');
      if (!opts.cleanup && snap === undefined) throw new UsageError('storagectl restore: missing <snapshot> (or --cleanup)');
      const { config, catalog, zfs } = await actingContext(cfg());
      const agent = cliAgent({ config, catalog, zfs });
      const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
      let lastShown = 0;
      try {
        if (opts.cleanup) {
          const { cleanupRestores } = await import('../agent/restore.js');
          const r = await cleanupRestores(agent, id, snap, { owner: leaseOwner('storagectl-restore', config.host), onStep: (s) => process.stderr.write(`restore --cleanup: ${s}\n`) });
          out(!!opts.json, r, () => {
            const lines = r.removed.map((x) => `removed ${x.dataset}${x.origin ? ` (clone of ${x.origin})` : ''}\n`);
            for (const k of r.kept) lines.push(`KEPT ${k.dataset}: ${k.reason}\n`);
            if (!r.removed.length && !r.kept.length) lines.push(`no restore datasets of ${id} on ${config.host}\n`);
            return lines.join('');
          });
          if (r.kept.length) process.exitCode = 1;
          return;
        }
        const r = await restore(agent, id, snap!, {
          leaseMs,
          mode: opts.mode,
          from: opts.from,
          owner: leaseOwner('storagectl-restore', config.host),
          onStep: (s) => process.stderr.write(`restore: ${s}\n`),
          onProgress: opts.json
            ? undefined
            : (bytes, ms) => {
                if (Date.now() - lastShown < 1000) return;
                lastShown = Date.now();
                process.stderr.write(`restore: fetched ${mb(bytes)} at ${mb(ms > 0 ? bytes / (ms / 1000) : 0)}/s\n`);
              },
        });
        const stopped = r.stoppedProcesses?.length ? `; writes were stopped by killing ${r.stoppedProcesses.map((p) => `${p.pid} ${p.command}`).join(', ')}` : '';
        out(!!opts.json, r, () =>
          r.mode === 'clone'
            ? `${id}@${snap} (from ${r.source.host}) is mounted read-only at ${r.clone!.mountpoint}\n`
            : `${id} live state restored to ${snap} (from ${r.source.host}); the state before is @${r.safetySnapshot}, after @${r.restoredSnapshot}${stopped}\n`,
        );
      } finally {
        await agent.close();
      }
    });

  program
    .command('targets <project>')
    .description("a project's replica hosts, with each one's liveness and confirmed snapshot; --add/--remove change the list (a compare-and-set on its version: never undoes a concurrent change; removing a target keeps its data there)")
    .option('--add <host>', 'add this replica host (the primary sends it a full stream next cycle)')
    .option('--remove <host>', 'stop replicating to this host (its replica is kept, not destroyed)')
    .option('--json', 'machine-readable output')
    .action(async (id: string, opts: { add?: string; remove?: string; json?: boolean }) => {
      v.projectId(id, 'storagectl targets');
      if (opts.add) v.hostId(opts.add, 'storagectl targets --add');
      if (opts.remove) v.hostId(opts.remove, 'storagectl targets --remove');
      const { config, catalog } = await context(cfg());
      const p = await catalog.getProject(id);
      if (!p) throw new UsageError(`project ${id} is not in the catalog`);
      const hosts = new Map((await catalog.listHosts()).map((h) => [h.id, h]));
      let targets = p.targets;
      if (opts.add || opts.remove) {
        if (opts.add && !hosts.has(opts.add)) throw new UsageError(`--add ${opts.add}: not a host in the catalog (see storagectl status)`);
        if (opts.add && opts.add === p.primary) throw new UsageError(`--add ${opts.add}: that host is the project's primary`);
        if (opts.add && p.targets.includes(opts.add)) throw new UsageError(`--add ${opts.add}: already a target of ${id}`);
        if (opts.remove && !p.targets.includes(opts.remove)) throw new UsageError(`--remove ${opts.remove}: not a target of ${id} (targets: ${p.targets.join(', ') || 'none'})`);
        targets = [...p.targets.filter((t) => t !== opts.remove), ...(opts.add ? [opts.add] : [])];
        if (!(await catalog.setTargets(id, targets, { ifVersion: p.targetsVersion }))) {
          throw new CatalogError(`the targets of ${id} changed while this ran (version ${p.targetsVersion} is not current any more): run it again`);
        }
        await catalog.addEvent({ project: id, host: config.host, kind: 'targets', detail: `set to ${targets.join(', ') || 'none'} by storagectl${opts.add ? ` (added ${opts.add})` : ''}${opts.remove ? ` (removed ${opts.remove}: its replica is kept there)` : ''}` }).catch(() => undefined);
      }
      const replicas = new Map((await catalog.listReplicas(id)).map((r) => [r.host, r]));
      const dead = deadAfterMs(config);
      const rows = targets.map((t) => {
        const h = hosts.get(t);
        const r = replicas.get(t);
        return { host: t, datacenter: h?.datacenter ?? null, live: !!h && h.heartbeatAt !== null && Date.now() - h.heartbeatAt <= dead, heartbeatAt: h?.heartbeatAt ?? null, snapshot: r?.snapshot ?? null, confirmedAt: r?.confirmedAt ?? null };
      });
      out(!!opts.json, { project: id, primary: p.primary, factor: p.replicationFactor, version: p.targetsVersion + (targets === p.targets ? 0 : 1), targets: rows }, () =>
        table([['TARGET', 'DC', 'LIVE', 'SNAPSHOT', 'CONFIRMED'], ...rows.map((r) => [r.host, r.datacenter ?? '?', r.live ? 'yes' : 'NO', r.snapshot ?? '-', r.confirmedAt ? new Date(r.confirmedAt).toISOString() : '-'])]),
      );
    });

  program
    .command('conflicts')
    .description('data kept aside on this host when it was demoted (never destroyed automatically)')
    .option('--json', 'machine-readable output')
    .action(async (opts: { json?: boolean }) => {
      const { config, zfs } = await context(cfg());
      const root = `${config.pool}/conflicts`;
      let tree: DatasetTree;
      try {
        tree = await zfs.list(root, { depth: 1 });
      } catch (e) {
        if (e instanceof ZfsCommandError && e.kind === 'not-found') tree = new Map();
        else throw e;
      }
      const rows = [...tree.values()]
        .filter((d) => d.name !== root)
        .map((d) => ({ dataset: d.name, project: d.name.slice(root.length + 1, root.length + 37), snapshots: d.snapshots.map((x) => x.snap), referenced: d.referenced }));
      out(!!opts.json, { host: config.host, conflicts: rows }, () =>
        rows.length ? table([['DATASET', 'PROJECT', 'SNAPSHOTS', 'REFERENCED'], ...rows.map((r) => [r.dataset, r.project, String(r.snapshots.length), `${r.referenced}`])]) : 'no conflicts kept on this host\n',
      );
    });

  program
    .command('repair-catalog')
    .description("rebuild the replica rows of this host's projects from the other hosts' real zfs listings (by guid); changes nothing on the hosts. Run it on each host: a host is answered only about its own projects")
    .option('--host <host>', 'ask only this replica host')
    .option('--json', 'machine-readable output')
    .action(async (opts: { host?: string; json?: boolean }) => {
      if (opts.host) v.hostId(opts.host, 'storagectl repair-catalog --host');
      const { config, catalog } = await context(cfg());
      const r = await withSsh(config, (pool) => repairCatalog(catalog, pool, config.host, { host: opts.host }));
      out(!!opts.json, r, () => {
        const lines = r.hosts.map((h) => (h.error ? `${h.host}: NOT LISTED: ${h.error}\n` : `${h.host}: ${h.datasets} replica dataset(s)\n`));
        for (const x of r.restored) lines.push(`restored ${x.project} on ${x.host}: ${x.snapshot} (guid ${x.guid})\n`);
        for (const x of r.updated) lines.push(`updated  ${x.project} on ${x.host}: ${x.snapshot} (guid ${x.guid})\n`);
        for (const x of r.targetsAdded) lines.push(`target added: ${x.project} -> ${x.host}\n`);
        lines.push(`${r.restored.length} restored, ${r.updated.length} updated, ${r.targetsAdded.length} targets added\n`);
        return lines.join('');
      });
      if (r.hosts.some((h) => h.error)) process.exitCode = 1;
    });

  program
    .command('replicate <project>')
    .description('replicate one project now (to all its replica hosts, or one)')
    .option('--to <host>', 'only this replica host')
    .option('--json', 'machine-readable output')
    .action(async (id: string, opts: { to?: string; json?: boolean }) => {
      v.projectId(id, 'storagectl replicate');
      if (opts.to) v.hostId(opts.to, 'storagectl replicate --to');
      const ctx = await context(cfg());
      const { config, catalog, zfs } = ctx;
      await projectHere(ctx, id, 'replicate from');
      const tty = !opts.json && process.stderr.isTTY;
      const { default: cliProgress } = await import('cli-progress');
      const bars = tty ? new cliProgress.MultiBar({ format: '{target} |{bar}| {sent} at {rate}/s', hideCursor: true, clearOnComplete: false }, cliProgress.Presets.shades_classic) : undefined;
      const perTarget = new Map<string, ReturnType<NonNullable<typeof bars>['create']>>();
      const mb = mib;
      const agent = cliAgent({ config, catalog, zfs }, (pr) => {
        if (!bars) return;
        let bar = perTarget.get(pr.target);
        if (!bar) perTarget.set(pr.target, (bar = bars.create(1, 0, { target: pr.target, sent: '0 MiB', rate: '0 MiB' })));
        const rate = pr.elapsedMs > 0 ? pr.bytes / (pr.elapsedMs / 1000) : 0;
        bar.update(0, { sent: mb(pr.bytes), rate: mb(rate) });
      });
      try {
        const r = await agent.replicateProject(id, { to: opts.to });
        bars?.stop();
        out(!!opts.json, r, () => {
          const lines = r.sends.map((s) => `sent ${s.kind} ${mb(s.bytes)} to ${s.target} in ${(s.ms / 1000).toFixed(1)}s\n`);
          if (!r.sends.length && !r.failures.length && !r.conflicts.length) lines.push('up to date\n');
          for (const c of r.conflicts) lines.push(`conflict on ${c.target}: ${c.message}\n`);
          for (const f of r.failures) lines.push(`failed${f.target ? ` (${f.target})` : ''}: ${f.error}\n`);
          return lines.join('');
        });
        if (r.failures.length || r.conflicts.length) process.exitCode = 1;
      } finally {
        await agent.close();
      }
    });

  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      process.exitCode = e.exitCode === 0 ? 0 : 2;
      return;
    }
    const msg = e instanceof Error ? e.message : String(e);
    process.stderr.write(`storagectl: ${msg}\n`);
    process.exitCode =
      // refused before anything was done: bad input, or the project is busy / not applicable
      e instanceof UsageError || e instanceof v.ValidationError || e instanceof ConfigError || e instanceof LockedError || e instanceof FailoverNotNeeded || e instanceof RestoreError ? 2 : e instanceof MoveRequestError ? 1 : e instanceof EnvError || e instanceof CatalogError ? 3 : e instanceof ZfsCommandError ? 1 : 1;
  } finally {
    await closeOpened();
  }
}

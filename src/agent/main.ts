// storage-agent --config FILE: the daemon. A cycle per interval (never overlapping);
// SIGHUP reloads the configuration (a bad file keeps the old one); SIGTERM/SIGINT stop
// taking work, let running transfers finish for a grace period, then abort them (an
// aborted `zfs recv` leaves the replica at its previous snapshot: no half state).
import { Command } from 'commander';
import { loadConfig, deadAfterMs, type Config } from './config.js';
import { Agent, selfFenceFor } from './agent.js';
import { MoveRunner } from './move-runner.js';
import { AgentMetrics } from './metrics.js';
import { openCatalog, type Catalog } from '../catalog/index.js';
import { ResilientCatalog } from '../catalog/resilient.js';
import { makeLogger } from '../util/log.js';
import { productVersion } from '../util/version.js';
import { CommandRunner, Zfs, fencingDisabledForTests } from '../zfs/index.js';

export async function main(argv: string[]): Promise<void> {
  const program = new Command('storage-agent')
    .version(productVersion(), '-V, --version', 'print the version')
    .requiredOption('-c, --config <file>', 'YAML configuration', '/etc/storage-agent/config.yaml')
    .option('--once', 'run one cycle and exit (exit 1 if it had failures)')
    .option('--shutdown-grace <seconds>', 'on SIGTERM, let running transfers finish this long', '20')
    .parse(argv, { from: 'user' });
  const opts = program.opts<{ config: string; once?: boolean; shutdownGrace: string }>();
  let config: Config;
  try {
    config = loadConfig(opts.config);
  } catch (e) {
    process.stderr.write(`storage-agent: ${(e as Error).message}\n`);
    process.exitCode = 2;
    return;
  }
  const log = makeLogger({ level: config.log.level, component: 'storage-agent' });
  const metrics = new AgentMetrics({ perProjectSeries: config.metrics.perProjectSeries, lagSloSeconds: config.metrics.lagSloSeconds, host: config.host });
  // the self-fence watchdog first: armed with the previous process's last catalog contact,
  // it fences whatever is mounted here if that is older than failover.selfFenceAfter,
  // whether or not the catalog below opens (or takes its driver's timeout to fail)
  let current = config;
  const watchdogZfs = new Zfs({ runner: new CommandRunner({ prefix: config.zfs.commandPrefix }), zfs: config.zfs.zfsPath, zpool: config.zfs.zpoolPath });
  const selfFence = selfFenceFor(config, watchdogZfs, log, metrics, Date.now, () => current);
  if (!opts.once) selfFence.start(Math.min(1000, config.failover.fenceCheck * 1000));
  let catalog: Catalog;
  try {
    catalog = await openCatalog(config);
  } catch (e) {
    // started cut off from the catalog (systemd restarts it in a loop): nothing here may
    // keep serving on a view this agent never had. Fence what is mounted, then fail.
    log.error({ err: (e as Error).message }, 'catalog unreachable at start: fencing every project mounted here');
    selfFence.stop();
    await selfFence.settled();
    await selfFence.fenceAll();
    throw e;
  }
  if (config.catalog.backend !== 'sqlite') {
    // a fleet catalog may be unreachable: keep working from the last view, journal writes
    const resilient = new ResilientCatalog(catalog, `${config.stateDir}/catalog-journal.db`);
    resilient.onError = (op, e) => {
      metrics.catalogError(op);
      log.warn({ op, err: e.message, journaled: resilient.journaled() }, 'catalog unreachable: working from the last known view');
    };
    catalog = resilient;
  }
  // moves requested of this host (storagectl move/drain): read when its generation moves
  let runner: MoveRunner | undefined;
  const agent = new Agent({ config, catalog, log, metrics, selfFence, onProgress: (p) => runner?.onTransfer(p), onViewChanged: () => runner?.wake() });
  await agent.init();
  await agent.checkClock(); // beyond failover.maxClockSkew the cycle refuses to act (logged, metric)
  // before anything else: a project mounted here that the catalog no longer serves from
  // here (failed over while this agent was down) stops being served now
  await agent.fenceCheck().catch((e: Error) => log.error({ err: e.message }, 'fence check failed'));
  if (opts.once) {
    const r = await agent.runCycle();
    await agent.close();
    await catalog.close();
    process.exitCode = r.failures.length ? 1 : 0;
    return;
  }
  await metrics.listen(config.metrics.listen);
  runner = new MoveRunner(agent, log, metrics);
  runner.wake(); // requests left by a crash or written while this agent was down
  log.info({ host: config.host, interval: config.interval, metrics: config.metrics.listen, failover: config.failover.mode }, 'storage-agent started');
  if (fencingDisabledForTests()) log.error('STORAGE_UNSAFE_SKIP_FENCE=1: FENCING IS DISABLED (a test switch: this host can keep a second writable copy)');

  let stopping = false;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<unknown> | undefined;
  const loop = async () => {
    if (stopping) return;
    running = agent.runCycle().catch((e: Error) => log.error({ err: e.message }, 'cycle failed'));
    await running;
    running = undefined;
    if (!stopping) timer = setTimeout(() => void loop(), agent.config.interval * 1000);
  };

  // the fence check runs between cycles too; automatic failover on a timer of its own: it
  // may wait for another host's fence for the bound, and this host's fence check (demote,
  // remount) must not wait behind it. Each never overlaps itself.
  const every = (ms: number, what: string, fn: () => Promise<unknown>): NodeJS.Timeout => {
    let busy = false;
    return setInterval(() => {
      if (busy || stopping) return;
      busy = true;
      fn()
        .catch((e: Error) => log.error({ err: e.message }, `${what} failed`))
        .finally(() => {
          busy = false;
        });
    }, ms);
  };
  const fenceTimer = every(agent.config.failover.fenceCheck * 1000, 'fence check', () => agent.fenceCheck());
  const failoverTimer = every(agent.config.failover.fenceCheck * 1000, 'automatic failover check', () => agent.autoFailoverCheck());

  // heartbeats on their own timer, independent of how long a cycle takes (a cycle busy
  // with a big transfer must not make this host look dead and trigger a failover)
  const beatMs = Math.max(1000, Math.min(agent.config.interval * 1000, deadAfterMs(agent.config) / 3));
  const beatTimer = setInterval(() => void agent.heartbeat().catch((e: Error) => log.warn({ err: e.message }, 'heartbeat failed')), beatMs);

  process.on('SIGHUP', () => {
    try {
      const next = loadConfig(opts.config);
      agent.reconfigure(next);
      current = next;
      log.info({ config: opts.config }, 'configuration reloaded');
    } catch (e) {
      log.error({ err: (e as Error).message }, 'reload failed; keeping the previous configuration');
    }
  });
  const stop = async (sig: string) => {
    if (stopping) return;
    stopping = true;
    clearTimeout(timer);
    clearInterval(fenceTimer);
    clearInterval(failoverTimer);
    clearInterval(beatTimer);
    selfFence.stop();
    runner?.close();
    log.info({ signal: sig }, 'stopping: no new transfers; waiting for running ones');
    agent.drain();
    const grace = Number(opts.shutdownGrace) * 1000;
    const t = setTimeout(() => {
      log.warn('grace period over: aborting running transfers');
      agent.abortTransfers();
    }, grace);
    await running;
    clearTimeout(t);
    await agent.close();
    metrics.close();
    await catalog.close();
    log.info('stopped');
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  await loop();
}

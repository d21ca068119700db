// Agents for every sandbox host, in this process, on a fresh SQLite catalog. The
// agents talk to each other's real sshd (ssh2 -> forced command -> storagectl serve-ssh
// -> real zfs-fuse), exactly as deployed; only the scheduling loop is driven by the test.
import { randomUUID } from 'node:crypto';
import { writeFileSync, mkdirSync } from 'node:fs';
import { Agent, type CycleReport } from '../../src/agent/agent.js';
import { loadConfig, type Config } from '../../src/agent/config.js';
import { SqliteCatalog } from '../../src/catalog/sqlite.js';
import { Zfs } from '../../src/zfs/index.js';
import { StateCache } from '../../src/agent/state.js';
import { countingCatalog, type CatalogCounts } from './counting-catalog.js';
import { silentLogger } from '../../src/util/log.js';
import { TIME_SCALE, setReceiverCatalog, type Sandbox, type SandboxHost } from './sandbox.js';

export interface Fleet {
  catalog: SqliteCatalog;
  agents: Map<string, Agent>;
  configs: Map<string, Config>;
  zfs: Zfs;
  /** catalog calls made by each host's agent (reads and writes by method) */
  catalogCounts: Map<string, { counts: () => CatalogCounts; reset: () => void }>;
  close(): Promise<void>;
}

export async function startFleet(sb: Sandbox, catalogPath = `${sb.dir}/catalog-${randomUUID().slice(0, 8)}.db`): Promise<Fleet> {
  const catalog = new SqliteCatalog(catalogPath);
  setReceiverCatalog(sb.hosts, { backend: 'sqlite', path: catalogPath });
  const agents = new Map<string, Agent>();
  const configs = new Map<string, Config>();
  const catalogCounts = new Map<string, { counts: () => CatalogCounts; reset: () => void }>();
  const fleetId = randomUUID().slice(0, 8);
  for (const h of sb.hosts) {
    const config = { ...loadConfig(`${h.dir}/agent.yaml`) };
    config.catalog = { ...config.catalog, path: catalogPath };
    // liveness is 3 intervals since the last heartbeat: under emulation (openzfs tier) a
    // test's setup alone can outlast that, and hosts would look dead to placement
    config.interval = config.interval * TIME_SCALE;
    // and a receiver's start (node + zfs recv in the guest) can take longer than the
    // sandbox's 30 s stall timeout there
    config.ssh = { ...config.ssh, stallTimeout: config.ssh.stallTimeout * TIME_SCALE, operationTimeout: config.ssh.operationTimeout * TIME_SCALE };
    configs.set(h.name, config);
    // each fleet its own state cache: test files share the sandbox hosts' stateDir
    const counting = countingCatalog(catalog);
    catalogCounts.set(h.name, counting);
    const agent = new Agent({ config, catalog: counting.catalog, log: silentLogger(), state: new StateCache(`${config.stateDir}/state-${fleetId}.db`) });
    await agent.init();
    agents.set(h.name, agent);
  }
  return {
    catalog,
    agents,
    configs,
    zfs: new Zfs(),
    catalogCounts,
    async close() {
      for (const a of agents.values()) await a.close();
      await catalog.close();
    },
  };
}

/** Creates a project dataset on `host` (primary), registers it and mounts it. */
export async function createProject(fleet: Fleet, host: SandboxHost, opts: { quota?: number; files?: Record<string, Buffer | string> } = {}): Promise<{ id: string; dataset: string; mnt: string }> {
  const id = randomUUID();
  const c = fleet.configs.get(host.name)!;
  const dataset = `${c.projectsRoot}/${id}`;
  await fleet.zfs.create(dataset, { canmount: 'noauto', props: opts.quota ? { quota: String(opts.quota) } : {} });
  await fleet.catalog.createProject({ id, primary: host.name, replicationFactor: 2, quota: opts.quota ?? null });
  await fleet.zfs.mount(dataset);
  const mnt = `${c.mountBase}/${id}`;
  for (const [name, data] of Object.entries(opts.files ?? {})) {
    const path = `${mnt}/${name}`;
    mkdirSync(path.slice(0, path.lastIndexOf('/')), { recursive: true });
    writeFileSync(path, data);
  }
  return { id, dataset, mnt };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * One cycle of every agent, one after the other. Deployed agents heartbeat concurrently;
 * here every host heartbeats before each agent's cycle, since under emulation (openzfs
 * tier) a round of cycles can outlast the liveness window of the last one.
 */
export async function cycleAll(fleet: Fleet): Promise<Map<string, CycleReport>> {
  const out = new Map<string, CycleReport>();
  for (const name of fleet.agents.keys()) out.set(name, await cycleOne(fleet, name));
  return out;
}

/** every host of the fleet heartbeats now (live for placement and failover) */
export async function heartbeatAll(fleet: Fleet): Promise<void> {
  for (const h of fleet.agents.keys()) await fleet.catalog.heartbeat(h, 0, Date.now());
}

/** one cycle of one agent, every host heartbeating first (see cycleAll) */
export async function cycleOne(fleet: Fleet, name: string): Promise<CycleReport> {
  await heartbeatAll(fleet);
  return fleet.agents.get(name)!.runCycle();
}

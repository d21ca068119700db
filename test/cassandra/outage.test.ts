// Catalog outage with real parts: agents on sandbox hosts a and b replicate with the
// Cassandra catalog (behind the agent's outage journal, as storage-agent runs it); the
// Cassandra node is stopped mid-run, replication continues from the last known view and
// journals its catalog writes; the node is started again and the catalog converges to
// what the zfs listings say, with no replica update lost.
// Needs the sandbox (SANDBOX_MANIFEST) and a node reachable from its control namespace
// (run-all.sh starts it inside that namespace: CASSANDRA_CONTACT=10.213.0.1:9042).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomUUID, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { sandbox, host, setReceiverCatalog } from '../lib/sandbox.js';
import { sleep } from '../lib/fleet.js';
import { Agent } from '../../src/agent/agent.js';
import { loadConfig, type Config } from '../../src/agent/config.js';
import { CassandraCatalog } from '../../src/catalog/cassandra.js';
import { ResilientCatalog } from '../../src/catalog/resilient.js';
import { Zfs } from '../../src/zfs/index.js';
import { silentLogger } from '../../src/util/log.js';
import { failIfProcessLingers } from '../lib/exit-watchdog.js';

const CONTACT = process.env.CASSANDRA_CONTACT ?? '127.0.0.1:9042';
const DC = process.env.CASSANDRA_DC ?? 'dc1';
const KEYSPACE = `outage_${Date.now().toString(36)}_${process.pid}`;
const sb = sandbox();
const A = host(sb, 'a');
const B = host(sb, 'b');
const zfs = new Zfs();
const script = `${sb.repo}/test/env/cassandra/cassandra.sh`;
const catalogs: ResilientCatalog[] = [];
const agents = new Map<string, Agent>();

function cassandraCtl(cmd: 'start' | 'stop'): void {
  // the node runs in the control namespace (the script keeps its state and pidfile)
  const r = spawnSync('bash', [script, cmd], { encoding: 'utf8', env: { ...process.env } });
  if (r.status !== 0) throw new Error(`cassandra.sh ${cmd} failed (exit ${r.status}): ${r.stderr.slice(-2000)}`);
}

async function open(name: string): Promise<{ agent: Agent; catalog: ResilientCatalog }> {
  const h = host(sb, name);
  const config: Config = { ...loadConfig(`${h.dir}/agent.yaml`) };
  config.catalog = { ...config.catalog, backend: 'cassandra', contactPoints: [CONTACT], localDataCenter: DC, keyspace: KEYSPACE };
  const inner = await CassandraCatalog.open({
    contactPoints: [CONTACT],
    localDataCenter: DC,
    keyspace: KEYSPACE,
    replication: { class: 'SimpleStrategy', replicationFactor: 1 },
    connectTimeoutMs: 3000,
    requestTimeoutMs: 4000,
  });
  const catalog = new ResilientCatalog(inner, `${h.dir}/journal-${KEYSPACE}.db`, 1000);
  catalogs.push(catalog);
  const agent = new Agent({ config, catalog, log: silentLogger() });
  await agent.init();
  agents.set(name, agent);
  return { agent, catalog };
}

before(async () => {
  // the receivers authorize from the same catalog (and, while it is down, from the rows
  // they cached before: receiver.factsStaleWhenCatalogDown)
  setReceiverCatalog(sb.hosts, { backend: 'cassandra', contactPoints: [CONTACT], localDataCenter: DC, keyspace: KEYSPACE, replication: { [DC]: 1 } });
  await open('a');
  await open('b');
});

after(async () => {
  for (const a of agents.values()) await a.close();
  for (const c of catalogs) await c.close().catch(() => undefined);
});

describe('catalog outage', () => {
  const ids = [randomUUID(), randomUUID()];

  it('replication continues while Cassandra is down, and the catalog converges to the zfs truth after it returns', async () => {
    const a = agents.get('a')!;
    const catA = catalogs[0]!;
    for (const id of ids) {
      const ds = `${A.pool}/projects/${id}`;
      await zfs.create(ds, { canmount: 'noauto' });
      await catA.createProject({ id, primary: 'a', replicationFactor: 1, quota: null });
      await catA.setTargets(id, ['b']);
      await zfs.mount(ds);
      writeFileSync(`${A.mountBase}/${id}/f`, randomBytes(10_000));
    }
    const first = await a.runCycle();
    assert.deepEqual(first.failures, []);
    assert.equal(first.sends.length, 2);

    cassandraCtl('stop');
    try {
      for (const id of ids) writeFileSync(`${A.mountBase}/${id}/g`, randomBytes(10_000));
      await sleep(1200);
      const during = await a.runCycle();
      assert.equal(during.sends.length, 2, `replication must continue: ${JSON.stringify(during.failures)}`);
      assert.ok(catA.status().degraded, 'the catalog must be seen as unreachable');
      assert.ok(catA.journaled() >= 2, `replica updates journaled: ${catA.journaled()}`);
    } finally {
      cassandraCtl('start');
    }

    // the journal flushes at the first successful call after the driver reconnects
    const deadline = Date.now() + 90_000;
    while (Date.now() < deadline && (catA.journaled() > 0 || catA.status().degraded)) {
      await a.runCycle().catch(() => undefined);
      await sleep(2000);
    }
    assert.equal(catA.journaled(), 0, `journal not flushed: ${JSON.stringify(catA.status())}`);
    // the catalog equals the zfs truth on b, by guid
    for (const id of ids) {
      const rds = `${B.pool}/replicas/${id}`;
      const r = (await zfs.list(rds)).get(rds)!;
      const newest = r.snapshots[r.snapshots.length - 1]!;
      const rows = await catA.listReplicas(id);
      assert.equal(rows.length, 1);
      assert.equal(rows[0]!.guid, newest.guid, `catalog row of ${id} on b`);
      assert.equal(r.snapshots.length, 2, 'both snapshots reached b');
    }
  });
});

// last: after every other hook (this file must exit on its own, see lib/exit-watchdog.ts)
failIfProcessLingers();

// The catalog contract on the three-datacenter cluster (one node per sandbox datacenter,
// keyspace NetworkTopologyStrategy {dc1: 1, dc2: 1, dc3: 1}; test/env/cassandra/cluster.sh):
// every statement at the consistency src/catalog/cassandra.ts gives it, LWTs at SERIAL
// across the three datacenters. Clients of dc1, with every node as a contact point.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import cassandra from 'cassandra-driver';
import { CassandraCatalog } from '../../src/catalog/cassandra.js';
import { catalogContract } from '../contract/catalog-contract.js';
import { sandbox } from '../lib/sandbox.js';
import { clusterOptions, clusterReplication, contactPoints } from '../lib/cluster.js';
import { failIfProcessLingers } from '../lib/exit-watchdog.js';

const sb = sandbox();
const KEYSPACE = `cluster_contract_${Date.now().toString(36)}_${process.pid}`;
const raw = new cassandra.Client({ contactPoints: contactPoints(sb, 'dc1'), localDataCenter: 'dc1', socketOptions: { connectTimeout: 5000, readTimeout: 60_000 } });

after(async () => {
  await raw.execute(`DROP KEYSPACE IF EXISTS ${KEYSPACE}`).catch(() => undefined);
  await raw.shutdown().catch(() => undefined);
});

describe('the three-datacenter cluster', () => {
  it('has one node per sandbox datacenter, each seen by the others; start it with test/env/cassandra/cluster.sh start', async () => {
    try {
      await raw.connect();
    } catch (e) {
      assert.fail(`no Cassandra cluster at ${contactPoints(sb).join(', ')}: ${(e as Error).message}. Run: bash test/env/cassandra/cluster.sh start`);
    }
    const local = (await raw.execute('SELECT data_center FROM system.local')).first();
    const peers = (await raw.execute('SELECT peer, data_center FROM system.peers')).rows.map((r) => String(r['data_center'])).sort();
    assert.deepEqual([String(local?.['data_center']), ...peers].sort(), sb.hosts.map((h) => h.datacenter).sort());
    // queries go to dc1's node only (DCAwareRoundRobinPolicy); the control connection may sit on any node
    const coordinators = new Set<string>();
    for (let i = 0; i < 12; i++) coordinators.add(String((await raw.execute('SELECT data_center FROM system.local')).first()?.['data_center']));
    assert.deepEqual([...coordinators], ['dc1'], 'a dc1 client is answered by dc1 coordinators only');
  });
});

catalogContract('cassandra cluster (3 datacenters)', async () => {
  const cat = await CassandraCatalog.open(clusterOptions(sb, 'dc1', KEYSPACE, { requestTimeoutMs: 20_000 }));
  return cat;
});

describe('the contract keyspace', () => {
  it(`is NetworkTopologyStrategy with one replica per datacenter (${JSON.stringify(clusterReplication(sb))})`, async () => {
    const row = (await raw.execute('SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?', [KEYSPACE], { prepare: true })).first();
    const repl = (row?.['replication'] ?? {}) as Record<string, string>;
    assert.match(repl['class'] ?? '', /NetworkTopologyStrategy/);
    for (const [dc, n] of Object.entries(clusterReplication(sb))) assert.equal(repl[dc], String(n), `${dc} in ${JSON.stringify(repl)}`);
  });
});

// last: after every other hook (this file must exit on its own, see lib/exit-watchdog.ts)
failIfProcessLingers();

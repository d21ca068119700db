#!/usr/bin/env node
// Small CQL helper for cassandra.sh, using the project's own cassandra-driver.
//
//   node cql.cjs probe HOST PORT DC       prints release_version, exit 0 if a real query worked
//   node cql.cjs smoke HOST PORT DC       keyspace/table/insert/select/LWT round trip, prints timings
//   node cql.cjs mesh HOST PORT DC DCS    HOST as the coordinator writes at consistency ALL to a
//                                         keyspace with one replica in each datacenter of DCS
//                                         (dc1,dc2,dc3): succeeds only when HOST sees all alive
//
// The driver is loaded from CASSANDRA_DRIVER (a path) or <repo>/node_modules/cassandra-driver.
'use strict';
const path = require('path');

const driverPath = process.env.CASSANDRA_DRIVER ||
  path.resolve(__dirname, '..', '..', '..', 'node_modules', 'cassandra-driver');
let cassandra;
try {
  cassandra = require(driverPath);
} catch (e) {
  console.error(`cql.cjs: cannot load cassandra-driver from ${driverPath} (run npm ci in the repo): ${e.message}`);
  process.exit(2);
}

const [mode, host, port, dc, dcs] = process.argv.slice(2);
if (!['probe', 'smoke', 'mesh'].includes(mode) || !host || !port || !dc || (mode === 'mesh' && !/^[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*$/.test(dcs || ''))) {
  console.error('usage: cql.cjs probe|smoke HOST PORT DC | mesh HOST PORT DC dc1,dc2,...');
  process.exit(2);
}

function client(extra = {}) {
  return new cassandra.Client({
    ...extra,
    contactPoints: [host],
    protocolOptions: { port: Number(port) },
    localDataCenter: dc,
    socketOptions: { connectTimeout: 3000, readTimeout: 15000 },
    // a probe must fail fast rather than retry for minutes
    pooling: { warmup: false },
  });
}

async function probe() {
  const c = client();
  try {
    await c.connect();
    const rs = await c.execute('SELECT release_version, data_center FROM system.local');
    const row = rs.first();
    console.log(`${row.release_version} ${row.data_center}`);
  } finally {
    await c.shutdown().catch(() => {});
  }
}

async function smoke() {
  const c = client();
  const t = {};
  const time = async (name, fn) => {
    const t0 = process.hrtime.bigint();
    const r = await fn();
    t[name] = Number(process.hrtime.bigint() - t0) / 1e6;
    return r;
  };
  try {
    await time('connect', () => c.connect());
    await time('create_keyspace', () => c.execute(
      "CREATE KEYSPACE IF NOT EXISTS smoke WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"));
    await time('create_table', () => c.execute(
      'CREATE TABLE IF NOT EXISTS smoke.kv (k text PRIMARY KEY, v text, n int)'));
    const k = `key-${process.pid}-${Date.now()}`;
    await time('insert', () => c.execute('INSERT INTO smoke.kv (k, v, n) VALUES (?, ?, ?)', [k, 'hello', 1], { prepare: true }));
    const rs = await time('select', () => c.execute('SELECT v, n FROM smoke.kv WHERE k = ?', [k], { prepare: true }));
    const row = rs.first();
    if (!row || row.v !== 'hello' || row.n !== 1) throw new Error(`select returned ${JSON.stringify(row)}`);
    const lwtKey = `lwt-${process.pid}-${Date.now()}`;
    const first = await time('lwt_insert_new', () => c.execute(
      'INSERT INTO smoke.kv (k, v, n) VALUES (?, ?, ?) IF NOT EXISTS', [lwtKey, 'first', 1], { prepare: true }));
    const second = await time('lwt_insert_existing', () => c.execute(
      'INSERT INTO smoke.kv (k, v, n) VALUES (?, ?, ?) IF NOT EXISTS', [lwtKey, 'second', 2], { prepare: true }));
    const applied1 = first.first()['[applied]'];
    const applied2 = second.first()['[applied]'];
    if (applied1 !== true || applied2 !== false) {
      throw new Error(`LWT: expected applied true then false, got ${applied1} then ${applied2}`);
    }
    const existing = second.first().v;
    if (existing !== 'first') throw new Error(`LWT: losing insert should see v='first', saw ${existing}`);
    const lwtUpdate = await time('lwt_update_if', () => c.execute(
      'UPDATE smoke.kv SET n = 2 WHERE k = ? IF n = 1', [lwtKey], { prepare: true }));
    if (lwtUpdate.first()['[applied]'] !== true) throw new Error('LWT: UPDATE ... IF n = 1 not applied');
    const ver = (await c.execute('SELECT release_version FROM system.local')).first().release_version;
    console.log(JSON.stringify({ ok: true, release_version: ver, timings_ms: t }));
  } finally {
    await c.shutdown().catch(() => {});
  }
}

async function mesh() {
  // this node only, as the coordinator: the write at ALL needs every datacenter's replica
  // alive in its view (gossip), which is what "every node UN" means
  const { loadBalancing } = cassandra.policies;
  const c = client({ policies: { loadBalancing: new loadBalancing.WhiteListPolicy(new loadBalancing.DCAwareRoundRobinPolicy(dc), [`${host}:${port}`]) } });
  try {
    await c.connect();
    const repl = dcs.split(',').map((d) => `'${d}': 1`).join(', ');
    await c.execute(`CREATE KEYSPACE IF NOT EXISTS cluster_probe WITH replication = {'class': 'NetworkTopologyStrategy', ${repl}}`);
    await c.execute('CREATE TABLE IF NOT EXISTS cluster_probe.beat (node text PRIMARY KEY, at timestamp)');
    await c.execute('INSERT INTO cluster_probe.beat (node, at) VALUES (?, toTimestamp(now()))', [host], { prepare: true, consistency: cassandra.types.consistencies.all });
    const peers = (await c.execute('SELECT peer, data_center FROM system.peers')).rows.map((r) => `${r.peer}/${r.data_center}`);
    console.log(`${host}/${dc} sees ${peers.join(' ')}`);
  } finally {
    await c.shutdown().catch(() => {});
  }
}

({ probe, smoke, mesh })[mode]().then(
  () => process.exit(0),
  (e) => { console.error(`cql.cjs ${mode}: ${e.message}`); process.exit(1); });

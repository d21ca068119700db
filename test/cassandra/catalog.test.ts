// The catalog contract on CassandraCatalog against a real Cassandra node
// (test/env/cassandra/cassandra.sh start), in a fresh keyspace per run, plus what is
// specific to Cassandra: heartbeat TTLs, projects_by_host, the replica mirrors, the lock
// row, migrations, rows read back, unreachable contact points and openCatalog from config.
// A missing node FAILS this file (the first test and every contract test): never a skip.
//   CASSANDRA_CONTACT  host:port of the node (127.0.0.1:9042)
//   CASSANDRA_DC       its datacenter (dc1)
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, rmSync, writeFileSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import cassandra from 'cassandra-driver';
import { CassandraCatalog, EVENT_SHARDS, type CassandraCatalogOptions } from '../../src/catalog/cassandra.js';
import { CatalogError, FencingError, openCatalog, projectLockName } from '../../src/catalog/index.js';
import { parseConfig, ConfigError } from '../../src/agent/config.js';
import { ValidationError } from '../../src/util/validate.js';
import { catalogContract, newHost, newProject, sleep } from '../contract/catalog-contract.js';
import { failIfProcessLingers } from '../lib/exit-watchdog.js';

const CONTACT = process.env.CASSANDRA_CONTACT ?? '127.0.0.1:9042';
const DC = process.env.CASSANDRA_DC ?? 'dc1';
const RUN = `${Date.now().toString(36)}_${process.pid}`;
const KEYSPACE = `catalog_test_${RUN}`;
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const MIGRATIONS = join(REPO, 'src', 'catalog', 'cql');

function options(extra: Partial<CassandraCatalogOptions> = {}): CassandraCatalogOptions {
  return {
    contactPoints: [CONTACT],
    localDataCenter: DC,
    keyspace: KEYSPACE,
    replication: { class: 'SimpleStrategy', replicationFactor: 1 },
    connectTimeoutMs: 5000,
    requestTimeoutMs: 20_000,
    ...extra,
  };
}

/** A plain driver client for looking at the tables underneath. */
const raw = new cassandra.Client({
  contactPoints: [CONTACT],
  localDataCenter: DC,
  socketOptions: { connectTimeout: 5000, readTimeout: 60_000 },
});
const cql = async (q: string, params: unknown[] = []) => (await raw.execute(q, params, { prepare: true })).rows;
const keyspacesToDrop = new Set<string>([KEYSPACE]);

after(async () => {
  for (const ks of keyspacesToDrop) await raw.execute(`DROP KEYSPACE IF EXISTS ${ks}`).catch(() => undefined);
  await raw.shutdown().catch(() => undefined);
});

describe('cassandra node', () => {
  it(`answers CQL at ${CONTACT} (dc ${DC}); start it with test/env/cassandra/cassandra.sh start`, async () => {
    try {
      await raw.connect();
    } catch (e) {
      assert.fail(`no Cassandra node at ${CONTACT} (dc ${DC}): ${(e as Error).message}. Run: bash test/env/cassandra/cassandra.sh start`);
    }
    const [row] = await cql('SELECT release_version, data_center FROM system.local');
    assert.equal(row?.['data_center'], DC);
    assert.match(String(row?.['release_version']), /^\d+\.\d+/);
  });
});

catalogContract('cassandra', () => CassandraCatalog.open(options()));

describe('cassandra catalog specifics', () => {
  let cat: CassandraCatalog;
  before(async () => {
    cat = await CassandraCatalog.open(options());
    await raw.connect();
  });
  after(async () => {
    await cat?.close();
  });

  it('the keyspace has exactly the documented tables and keys', async () => {
    const cols = await cql('SELECT table_name, column_name, kind, position FROM system_schema.columns WHERE keyspace_name = ?', [KEYSPACE]);
    const keys = new Map<string, string[]>();
    for (const c of cols) {
      if (c['kind'] === 'regular' || c['kind'] === 'static') continue;
      const t = String(c['table_name']);
      const list = keys.get(t) ?? [];
      list.push(`${c['kind'] === 'partition_key' ? 'P' : 'C'}${c['position']}:${c['column_name']}`);
      keys.set(t, list.sort());
    }
    assert.deepEqual(Object.fromEntries([...keys].sort()), {
      event_days: ['C0:day', 'P0:scope'],
      event_hours: ['C0:hour', 'P0:scope'],
      events_by_day: ['C0:at', 'C1:id', 'P0:day'],
      events_by_hour: ['C0:at', 'C1:id', 'P0:hour', 'P1:shard'],
      events_by_project: ['C0:at', 'C1:id', 'P0:project', 'P1:day'],
      host_generation: ['P0:host'],
      hosts: ['C0:id', 'P0:scope'],
      locks: ['P0:name'],
      newest_snapshots: ['P0:project'],
      progress: ['P0:project'],
      projects: ['P0:id'],
      projects_by_host: ['C0:project', 'P0:host'],
      replicas: ['C0:host', 'P0:project'],
      replicas_by_host: ['C0:project', 'P0:host'],
      requests: ['C0:project', 'P0:host'],
      schema_migrations: ['C0:name', 'P0:scope'],
    });
    const [ks] = await cql('SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?', [KEYSPACE]);
    assert.match(String(ks?.['replication']?.['class']), /SimpleStrategy/);
    assert.equal(ks?.['replication']?.['replication_factor'], '1');
  });

  it('heartbeats expire by TTL: a dead host keeps its registration and load, loses its heartbeat', async () => {
    const short = await CassandraCatalog.open(options({ heartbeatTtlSeconds: 2 }));
    try {
      const h = newHost();
      await short.upsertHost({ id: h, datacenter: 'dc1', address: '10.1.1.1', port: 22, root: 'tank/r' });
      const t0 = Date.now();
      await short.heartbeat(h, 7, t0);
      assert.equal((await short.getHost(h))?.heartbeatAt, t0);
      const [row] = await cql(`SELECT TTL(heartbeat_at) AS ttl, TTL(load) AS load_ttl FROM ${KEYSPACE}.hosts WHERE scope = 'all' AND id = ?`, [h]);
      assert.ok(Number(row?.['ttl']) >= 1 && Number(row?.['ttl']) <= 2, `heartbeat TTL ${row?.['ttl']}`);
      assert.equal(row?.['load_ttl'], null, 'load has no TTL');
      let gone = false;
      while (Date.now() - t0 < 8000) {
        const got = await short.getHost(h);
        if (got?.heartbeatAt === null) {
          gone = true;
          break;
        }
        await sleep(200);
      }
      const waited = Date.now() - t0;
      assert.ok(gone, 'the heartbeat did not expire within 8 s');
      assert.ok(waited >= 1000, `expired too early: ${waited} ms`);
      const listed = (await short.listHosts()).find((x) => x.id === h);
      assert.deepEqual(listed, { id: h, datacenter: 'dc1', address: '10.1.1.1', port: 22, root: 'tank/r', heartbeatAt: null, load: 7, replicationKey: null, draining: false });
      await short.heartbeat(h, 8);
      assert.notEqual((await short.getHost(h))?.heartbeatAt, null, 'a new heartbeat brings it back');
    } finally {
      await short.close();
    }
  });

  it('projects_by_host follows setLocation exactly, and stale entries are ignored and cleaned', async () => {
    const [h1, h2, h3] = [newHost(), newHost(), newHost()];
    const id = newProject();
    await cat.createProject({ id, primary: h1, replicationFactor: 2, quota: null });
    const byHost = async (h: string) => (await cql(`SELECT project FROM ${KEYSPACE}.projects_by_host WHERE host = ?`, [h])).map((r) => String(r['project']));
    assert.deepEqual(await byHost(h1), [id]);
    const lock = await cat.acquireLock(projectLockName(id), 'mover', 60_000);
    assert.ok(lock.ok);
    await cat.setLocation(id, h2, 'moving', lock.token, null);
    assert.deepEqual([await byHost(h1), await byHost(h2)], [[], [id]]);
    await cat.setLocation(id, h3, 'active', lock.token, null);
    assert.deepEqual([await byHost(h1), await byHost(h2), await byHost(h3)], [[], [], [id]]);
    await cat.setLocation(id, null, 'fenced', lock.token, null);
    assert.deepEqual(await byHost(h3), []);
    await cat.setLocation(id, h1, 'active', lock.token, null);
    assert.deepEqual([await byHost(h1), await byHost(h3)], [[id], []]);
    // the write timestamps are the project's location_ts
    const locationTs = async () => BigInt(String((await cql(`SELECT location_ts FROM ${KEYSPACE}.projects WHERE id = ?`, [id]))[0]?.['location_ts']));
    const ts = await locationTs();
    assert.ok(ts > BigInt(Date.now() - 60_000) * 1000n && ts <= BigInt(Date.now() + 5000) * 1000n, `location_ts ${ts} is not a microsecond time`);
    // an entry left behind by an attempt older than the last location change is ignored by
    // the reader and deleted at the project's location_ts
    await cql(`INSERT INTO ${KEYSPACE}.projects_by_host (host, project) VALUES (?, ?) USING TIMESTAMP ?`, [h2, id, cassandra.types.Long.fromString(String(ts - 1n))]);
    assert.deepEqual(await byHost(h2), [id]);
    assert.deepEqual(await cat.listProjectsByPrimary(h2), []);
    assert.deepEqual(await byHost(h2), [], 'the stale entry was cleaned');
    // one newer than the last change (an attempt whose CAS lost or never ran) is ignored,
    // and kept until a later location change makes it provably stale: deleting it earlier
    // could delete the entry of a location change still in flight
    await cql(`INSERT INTO ${KEYSPACE}.projects_by_host (host, project) VALUES (?, ?) USING TIMESTAMP ?`, [h3, id, cassandra.types.Long.fromString(String(ts + 1000n))]);
    assert.deepEqual(await cat.listProjectsByPrimary(h3), []);
    assert.deepEqual(await byHost(h3), [id]);
    await sleep(5);
    await cat.setLocation(id, h2, 'active', lock.token, null);
    assert.ok((await locationTs()) > ts + 1000n);
    assert.deepEqual(await cat.listProjectsByPrimary(h3), []);
    assert.deepEqual(await byHost(h3), [], 'cleaned once provably stale');
    assert.deepEqual((await cat.listProjectsByPrimary(h2)).map((x) => x.id), [id]);
    assert.deepEqual(await byHost(h1), []);
  });

  it('the lock row: lease cells carry a TTL, the fencing counter does not and survives expiry', async () => {
    const name = `test:${newProject()}`;
    const a = await cat.acquireLock(name, 'a', 1000);
    assert.ok(a.ok);
    const [r1] = await cql(`SELECT owner, TTL(owner) AS owner_ttl, last_token, TTL(last_token) AS last_ttl FROM ${KEYSPACE}.locks WHERE name = ?`, [name]);
    assert.equal(r1?.['owner'], 'a');
    assert.ok(Number(r1?.['owner_ttl']) >= 1 && Number(r1?.['owner_ttl']) <= 2, `lease TTL ${r1?.['owner_ttl']}`);
    assert.equal(r1?.['last_ttl'], null);
    // wait for the TTL itself (not just expires_at) to remove the lease
    let owner: unknown = 'a';
    for (let i = 0; i < 40 && owner !== null; i++) {
      await sleep(200);
      owner = (await cql(`SELECT owner FROM ${KEYSPACE}.locks WHERE name = ?`, [name]))[0]?.['owner'] ?? null;
    }
    assert.equal(owner, null, 'the lease cells did not expire');
    const [r2] = await cql(`SELECT last_token FROM ${KEYSPACE}.locks WHERE name = ?`, [name]);
    assert.equal(String(r2?.['last_token']), String(a.token));
    const b = await cat.acquireLock(name, 'b', 60_000);
    assert.ok(b.ok && b.token === a.token + 1);
  });

  it('replica mirrors (replicas_by_host, projects.replicas) converge on the winner, also under concurrent writers', async () => {
    const id = newProject();
    const h = newHost();
    await cat.createProject({ id, primary: newHost(), replicationFactor: 2, quota: null });
    const mirror = async () => {
      const [m] = await cql(`SELECT snapshot_creation, confirmed_at FROM ${KEYSPACE}.replicas_by_host WHERE host = ? AND project = ?`, [h, id]);
      const [p] = await cql(`SELECT replicas FROM ${KEYSPACE}.projects WHERE id = ?`, [id]);
      const map = (p?.['replicas'] ?? {}) as Record<string, Date>;
      return { byHost: m ? Number(String(m['snapshot_creation'])) : null, confirmed: map[h]?.getTime() ?? null };
    };
    const others = await Promise.all([CassandraCatalog.open(options()), CassandraCatalog.open(options())]);
    try {
      const writers = [cat, ...others];
      const creations = Array.from({ length: 24 }, (_, i) => 1000 + ((i * 7) % 24));
      await Promise.all(
        creations.map((c, i) => writers[i % writers.length]!.upsertReplica({ project: id, host: h, snapshot: `s${c}`, guid: String(c), snapshotCreation: c, confirmedAt: 1_700_000_000_000 + c })),
      );
      const [r] = await cat.listReplicas(id);
      assert.equal(r?.snapshotCreation, 1023, 'the newest snapshot won');
      assert.deepEqual(await mirror(), { byHost: 1023, confirmed: 1_700_000_001_023 });
      assert.deepEqual(await cat.listReplicasByHost(h), [r]);
      await others[0]!.deleteReplica(id, h);
      assert.deepEqual(await mirror(), { byHost: null, confirmed: null });
      await cat.upsertReplica({ project: id, host: h, snapshot: 's1', guid: '1', snapshotCreation: 1, confirmedAt: 1_700_000_000_001 });
      assert.deepEqual(await mirror(), { byHost: 1, confirmed: 1_700_000_000_001 });
      // the authoritative row is soft-deleted, then revived: write_ts only grows
      const [row] = await cql(`SELECT deleted, write_ts FROM ${KEYSPACE}.replicas WHERE project = ? AND host = ?`, [id, h]);
      assert.equal(row?.['deleted'], false);
    } finally {
      for (const o of others) await o.close();
    }
  });

  it('concurrent setLocation calls of one holder serialize through the CAS; projects_by_host ends consistent', async () => {
    const id = newProject();
    const hosts = [newHost(), newHost(), newHost(), newHost(), newHost()];
    await cat.createProject({ id, primary: hosts[0]!, replicationFactor: 2, quota: null });
    const lock = await cat.acquireLock(projectLockName(id), 'mover', 60_000);
    assert.ok(lock.ok);
    const other = await CassandraCatalog.open(options());
    try {
      await Promise.all(hosts.slice(1).map((h, i) => (i % 2 ? cat : other).setLocation(id, h, 'active', lock.token, null)));
      const p = await cat.getProject(id);
      assert.ok(p?.primary && hosts.slice(1).includes(p.primary));
      for (const h of hosts) {
        const listed = (await cat.listProjectsByPrimary(h)).map((x) => x.id);
        assert.deepEqual(listed, h === p!.primary ? [id] : [], `listProjectsByPrimary(${h})`);
      }
    } finally {
      await other.close();
    }
  });

  it('a stale fencing token is refused even when its lease looks live to a lagging reader: location_token never goes back', async () => {
    const id = newProject();
    const [h1, h2, h3] = [newHost(), newHost(), newHost()];
    await cat.createProject({ id, primary: h1, replicationFactor: 2, quota: null });
    const name = projectLockName(id);
    const a = await cat.acquireLock(name, 'a', 60_000);
    assert.ok(a.ok);
    await cat.releaseLock(name, 'a', a.token);
    const b = await cat.acquireLock(name, 'b', 60_000);
    assert.ok(b.ok);
    await cat.setLocation(id, h2, 'active', b.token, null);
    // forge the lock back to `a`'s token, as a lagging view of the lock would show it
    await cql(`UPDATE ${KEYSPACE}.locks SET owner = 'a', lease_token = ? WHERE name = ? IF owner = 'b'`, [cassandra.types.Long.fromNumber(a.token), name]);
    await assert.rejects(cat.setLocation(id, h3, 'active', a.token, null), (e: unknown) => e instanceof FencingError && /older than the token of the last location change/.test((e as Error).message));
    assert.equal((await cat.getProject(id))?.primary, h2);
  });

  it('migrations: idempotent when run again, re-applied harmlessly when the record is lost, new files applied once, edited files refused', async () => {
    const ks = `catalog_mig_${RUN}`;
    keyspacesToDrop.add(ks);
    // every file in the directory, in order (a new migration is part of this test by itself)
    const ALL = readdirSync(MIGRATIONS).filter((f) => /^\d{3}_[a-z0-9_]+\.cql$/.test(f)).sort();
    assert.ok(ALL.includes('006_targets_version.cql') && ALL[0] === '001_initial.cql', ALL.join(' '));
    const first = await CassandraCatalog.open(options({ keyspace: ks }));
    assert.deepEqual(first.appliedMigrations, ALL);
    const id = newProject();
    await first.createProject({ id, primary: 'h1', replicationFactor: 1, quota: null });
    await first.close();
    const second = await CassandraCatalog.open(options({ keyspace: ks }));
    assert.deepEqual(second.appliedMigrations, [], 'the second run applies nothing');
    await second.close();
    const rows = await cql(`SELECT name, checksum, applied_by FROM ${ks}.schema_migrations WHERE scope = 'applied'`);
    assert.deepEqual(
      rows.map((r) => r['name']),
      ALL,
    );
    // the record lost (as if the process died after the DDL): running the file again is harmless
    await cql(`DELETE FROM ${ks}.schema_migrations WHERE scope = 'applied' AND name = '001_initial.cql'`);
    const third = await CassandraCatalog.open(options({ keyspace: ks }));
    assert.deepEqual(third.appliedMigrations, ['001_initial.cql']);
    assert.equal((await third.getProject(id))?.primary, 'h1', 'data survives a re-run');
    await third.close();
    // a new file is applied once
    const dir = mkdtempSync(join(tmpdir(), 'cql-migrations-'));
    try {
      cpSync(MIGRATIONS, dir, { recursive: true });
      writeFileSync(join(dir, '900_extra.cql'), '-- a test migration\nCREATE TABLE IF NOT EXISTS {keyspace}.extra (k text PRIMARY KEY, v text);\n');
      const fourth = await CassandraCatalog.open(options({ keyspace: ks, migrationsDir: dir }));
      assert.deepEqual(fourth.appliedMigrations, ['900_extra.cql']);
      await fourth.close();
      const fifth = await CassandraCatalog.open(options({ keyspace: ks, migrationsDir: dir }));
      assert.deepEqual(fifth.appliedMigrations, []);
      await fifth.close();
      assert.equal((await cql('SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?', [ks, 'extra'])).length, 1);
      // an applied file that was edited is refused, naming it
      writeFileSync(join(dir, '001_initial.cql'), readFileSync(join(dir, '001_initial.cql'), 'utf8') + '\n-- edited\n');
      await assert.rejects(CassandraCatalog.open(options({ keyspace: ks, migrationsDir: dir })), (e: unknown) => e instanceof CatalogError && /001_initial\.cql was changed after it was applied/.test((e as Error).message));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    // two processes migrating a fresh keyspace at once: one applies, the other waits for it
    const ks2 = `catalog_mig2_${RUN}`;
    keyspacesToDrop.add(ks2);
    const settled = await Promise.allSettled([CassandraCatalog.open(options({ keyspace: ks2 })), CassandraCatalog.open(options({ keyspace: ks2 }))]);
    const pair = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    for (const c of pair) await c.close();
    for (const r of settled) if (r.status === 'rejected') throw r.reason;
    assert.deepEqual(pair.map((c) => c.appliedMigrations).flat(), ALL);
  });

  it('rows read back are validated: a corrupt row is an error, never a record', async () => {
    const id = newProject();
    const h = newHost();
    await cat.createProject({ id, primary: h, replicationFactor: 2, quota: null });
    await cql(`UPDATE ${KEYSPACE}.projects SET state = 'exploded' WHERE id = ?`, [id]);
    await assert.rejects(cat.getProject(id), (e: unknown) => e instanceof CatalogError && /unknown state/.test((e as Error).message));
    await cql(`UPDATE ${KEYSPACE}.projects SET state = 'active', targets = ['ok', 'Bad Host'] WHERE id = ?`, [id]);
    await assert.rejects(cat.getProject(id), ValidationError);
    await cql(`UPDATE ${KEYSPACE}.projects SET targets = [], primary_host = 'NOT A HOST' WHERE id = ?`, [id]);
    await assert.rejects(cat.listProjectsByPrimary(h), ValidationError);
    await cql(`UPDATE ${KEYSPACE}.projects SET primary_host = ?, replication_factor = null WHERE id = ?`, [h, id]);
    await assert.rejects(cat.getProject(id), (e: unknown) => e instanceof CatalogError && /replication_factor is missing/.test((e as Error).message));
    await cql(`UPDATE ${KEYSPACE}.projects SET replication_factor = 2 WHERE id = ?`, [id]);
    assert.equal((await cat.getProject(id))?.primary, h);

    await cat.upsertReplica({ project: id, host: h, snapshot: 's1', guid: '42', snapshotCreation: 1, confirmedAt: 2 });
    await cql(`UPDATE ${KEYSPACE}.replicas SET guid = '4x2' WHERE project = ? AND host = ?`, [id, h]);
    await assert.rejects(cat.listReplicas(id), (e: unknown) => e instanceof CatalogError && /malformed guid/.test((e as Error).message));
    await cql(`UPDATE ${KEYSPACE}.replicas_by_host USING TIMESTAMP 9000000000000000 SET snapshot = 'a b' WHERE host = ? AND project = ?`, [h, id]);
    await assert.rejects(cat.listReplicasByHost(h), ValidationError);

    await cat.upsertHost({ id: h, datacenter: 'dc1', address: 'x', port: 22, root: 'r' });
    await cql(`UPDATE ${KEYSPACE}.hosts SET datacenter = 'DC ONE' WHERE scope = 'all' AND id = ?`, [h]);
    await assert.rejects(cat.getHost(h), ValidationError);
    await assert.rejects(cat.listHosts(), ValidationError);
    await cql(`UPDATE ${KEYSPACE}.hosts SET datacenter = 'dc1' WHERE scope = 'all' AND id = ?`, [h]);
    assert.equal((await cat.getHost(h))?.datacenter, 'dc1');

    const e = newProject();
    await cat.addEvent({ project: e, host: null, kind: 'k', detail: 'd' });
    const [ev] = await cql(`SELECT day, at, id FROM ${KEYSPACE}.events_by_project WHERE project = ? AND day = ?`, [e, Math.floor(Date.now() / 86_400_000)]);
    await cql(`UPDATE ${KEYSPACE}.events_by_project SET host = 'Bad Host' WHERE project = ? AND day = ? AND at = ? AND id = ?`, [e, ev?.['day'], ev?.['at'], ev?.['id']]);
    await assert.rejects(cat.listEvents({ project: e }), ValidationError);
  });

  it('fleet events go to bounded partitions (hour x shard) and list merged newest first; a project lists only its own partitions; pre-007 day partitions are still read', async () => {
    const cat = await CassandraCatalog.open(options());
    try {
      // an hour far in the future, so that no other test's events fall in it
      const hourStart = (Math.floor(Date.now() / 3_600_000) + 24 * 500) * 3_600_000;
      const n = 64;
      const p = newProject();
      for (let i = 0; i < n; i++) await cat.addEvent({ at: hourStart + i * 1000, project: i % 2 ? p : null, host: null, kind: 'bulk', detail: String(i) });
      const hour = hourStart / 3_600_000;
      const perShard = await Promise.all(
        Array.from({ length: EVENT_SHARDS }, async (_, shard) => Number((await cql(`SELECT count(*) AS n FROM ${KEYSPACE}.events_by_hour WHERE hour = ? AND shard = ?`, [hour, shard]))[0]?.['n'])),
      );
      assert.equal(perShard.reduce((a, b) => a + b, 0), n, `every event in exactly one partition: ${perShard.join(' ')}`);
      assert.ok(perShard.filter((x) => x > 0).length >= EVENT_SHARDS / 2, `spread over the shards: ${perShard.join(' ')}`);
      assert.ok(Math.max(...perShard) < n / 2, `no partition takes most of the hour: ${perShard.join(' ')}`);
      const [idx] = await cql(`SELECT shards FROM ${KEYSPACE}.event_hours WHERE scope = 'all' AND hour = ?`, [hour]);
      assert.equal(idx?.['shards'], EVENT_SHARDS);
      const all = await cat.listEvents({ since: hourStart, limit: n });
      assert.deepEqual(all.map((e) => e.detail), Array.from({ length: n }, (_, i) => String(n - 1 - i)), 'merged across shards, newest first');
      assert.deepEqual((await cat.listEvents({ since: hourStart, limit: 5 })).map((e) => e.detail), ['63', '62', '61', '60', '59']);
      assert.deepEqual((await cat.listEvents({ project: p, limit: 3 })).map((e) => e.detail), ['63', '61', '59']);
      // a row written by a version before 007 (events_by_day + the 'all' day index)
      const oldAt = hourStart + 7_200_000;
      const day = Math.floor(oldAt / 86_400_000);
      await cql(`INSERT INTO ${KEYSPACE}.event_days (scope, day) VALUES ('all', ?)`, [day]);
      await cql(`INSERT INTO ${KEYSPACE}.events_by_day (day, at, id, project, host, kind, detail) VALUES (?, ?, now(), null, null, 'legacy', 'old')`, [day, new Date(oldAt)]);
      const merged = await cat.listEvents({ since: hourStart, limit: n + 1 });
      assert.equal(merged.length, n + 1);
      assert.ok(merged.some((e) => e.kind === 'legacy' && e.detail === 'old'), 'the pre-007 event is listed');
    } finally {
      await cat.close();
    }
  });

  it('an unreachable contact point is a CatalogError naming the address, within the short timeouts', async () => {
    const t0 = Date.now();
    await assert.rejects(
      CassandraCatalog.open(options({ contactPoints: ['127.0.0.1:1'], connectTimeoutMs: 1000, requestTimeoutMs: 2000 })),
      (e: unknown) => e instanceof CatalogError && (e as Error).message.includes('127.0.0.1:1') && /cannot connect/.test((e as Error).message),
    );
    assert.ok(Date.now() - t0 < 10_000, `took ${Date.now() - t0} ms`);
    // a node that accepts TCP connections and never answers: the timeouts decide
    const sockets = new Set<net.Socket>();
    const silent = net.createServer((sock) => {
      sockets.add(sock);
      sock.on('error', () => undefined);
    });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const silentAddr = `127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
    try {
      const t1 = Date.now();
      await assert.rejects(
        CassandraCatalog.open(options({ contactPoints: [silentAddr], connectTimeoutMs: 1000, requestTimeoutMs: 2000 })),
        (e: unknown) => e instanceof CatalogError && (e as Error).message.includes(silentAddr),
      );
      assert.ok(Date.now() - t1 < 10_000, `took ${Date.now() - t1} ms`);
    } finally {
      for (const sock of sockets) sock.destroy();
      await new Promise<void>((r) => silent.close(() => r()));
    }
    // a wrong local datacenter is refused too, naming it
    await assert.rejects(CassandraCatalog.open(options({ localDataCenter: 'nowhere' })), (e: unknown) => e instanceof CatalogError && /nowhere/.test((e as Error).message));
    // and nothing odd is ever interpolated into CQL
    await assert.rejects(CassandraCatalog.open(options({ keyspace: 'x; DROP KEYSPACE system' })), ValidationError);
    await assert.rejects(CassandraCatalog.open(options({ replication: { class: 'NetworkTopologyStrategy', datacenters: { "dc1'": 1 } } })), ValidationError);
  });

  it('a closed catalog refuses work with a CatalogError', async () => {
    const c = await CassandraCatalog.open(options());
    await c.close();
    await assert.rejects(c.getProject(newProject()), (e: unknown) => e instanceof CatalogError && /closed/.test((e as Error).message));
  });

  it('openCatalog opens this backend from the agent configuration; a cassandra config without contact points is refused', async () => {
    const base = [
      'host: node1',
      'datacenter: dc1',
      'address: 10.0.0.1',
      'pool: tank',
      'projectsRoot: tank/projects',
      'replicasRoot: tank/replicas',
      'mountBase: /srv/projects',
      'ssh: { privateKey: /etc/storage/id_ed25519, knownHosts: /etc/storage/known_hosts }',
    ].join('\n');
    const [host, port] = CONTACT.split(':');
    const config = parseConfig(
      `${base}\ncatalog:\n  backend: cassandra\n  contactPoints: [${host}]\n  port: ${port ?? 9042}\n  localDataCenter: ${DC}\n  keyspace: ${KEYSPACE}\n  replication: { ${DC}: 1 }\n`,
      'test.yaml',
    );
    const c = await openCatalog(config);
    try {
      assert.equal(c.backend, 'cassandra');
      const id = newProject();
      await c.createProject({ id, primary: 'node1', replicationFactor: 1, quota: null });
      assert.equal((await cat.getProject(id))?.primary, 'node1', 'same keyspace as the suite');
    } finally {
      await c.close();
    }
    assert.throws(() => parseConfig(`${base}\ncatalog: { backend: cassandra }\n`, 'bad.yaml'), (e: unknown) => e instanceof ConfigError && /catalog\.contactPoints: required when backend is cassandra/.test((e as Error).message) && /catalog\.localDataCenter: required/.test((e as Error).message));
    assert.throws(() => parseConfig(`${base}\ncatalog: { backend: cassandra, contactPoints: [a], localDataCenter: dc1, keyspace: Bad-Name }\n`, 'bad.yaml'), (e: unknown) => e instanceof ConfigError && /catalog\.keyspace/.test((e as Error).message));
    assert.throws(() => parseConfig(`${base}\ncatalog: { backend: cassandra, contactPoints: [a], localDataCenter: dc1, replication: { "dc'1": 3 } }\n`, 'bad.yaml'), ConfigError);
    // the sqlite default is untouched
    assert.equal(parseConfig(base, 'ok.yaml').catalog.backend, 'sqlite');
  });
});

// last: after every other hook (this file must exit on its own, see lib/exit-watchdog.ts)
failIfProcessLingers();

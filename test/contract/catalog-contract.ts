// The catalog CONTRACT: what every backend must do, as node:test blocks. A backend's test
// file calls catalogContract(name, make) once; `make` opens a catalog on the backend's
// shared test store (several open catalogs act as several processes). Tests use fresh
// random ids, so they never depend on what other tests left behind.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { CatalogError, FencingError, projectLockName, type Catalog, type EventRecord, type ReplicaRecord } from '../../src/catalog/types.js';
import { ValidationError } from '../../src/util/validate.js';

const DAY = 86_400_000;
/** lease of the expiry tests */
export const SHORT_LEASE_MS = 2000;

export const newHost = (tag = 'h') => `${tag}-${randomBytes(4).toString('hex')}`;
export const newProject = () => randomUUID();
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Waits until the wall clock passes `t` (plus a margin). */
async function waitPast(t: number, margin = 50): Promise<void> {
  const d = t + margin - Date.now();
  if (d > 0) await sleep(d);
}

/** An OpenSSH public key line "<type> <base64>" of the wire format (random key material). */
function publicKey(type = 'ssh-ed25519', material = 32): string {
  const str = (b: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(b.length);
    return Buffer.concat([len, b]);
  };
  return `${type} ${Buffer.concat([str(Buffer.from(type)), str(randomBytes(material))]).toString('base64')}`;
}

function replica(project: string, host: string, creation: number, over: Partial<ReplicaRecord> = {}): ReplicaRecord {
  return { project, host, snapshot: `auto-${creation}`, guid: String(1000 + creation), snapshotCreation: creation, confirmedAt: 1_700_000_000_000 + creation, ...over };
}

export function catalogContract(name: string, make: () => Promise<Catalog>, cleanup?: () => Promise<void>): void {
  describe(`catalog contract: ${name}`, () => {
    let cat: Catalog;
    const opened: Catalog[] = [];
    const open = async (): Promise<Catalog> => {
      const c = await make();
      opened.push(c);
      return c;
    };

    before(async () => {
      cat = await open();
    });
    after(async () => {
      for (const c of opened) await c.close();
      if (cleanup) await cleanup();
    });

    async function newProjectOn(primary: string | null, rf = 2, quota: number | null = null): Promise<string> {
      const id = newProject();
      await cat.createProject({ id, primary, replicationFactor: rf, quota });
      return id;
    }

    // ---- hosts ----

    it('hosts: upsertHost then getHost round-trips; an unknown host is undefined', async () => {
      const id = newHost();
      await cat.upsertHost({ id, datacenter: 'dc1', address: '10.0.0.7', port: 2222, root: 'tank/replicas' });
      assert.deepEqual(await cat.getHost(id), { id, datacenter: 'dc1', address: '10.0.0.7', port: 2222, root: 'tank/replicas', heartbeatAt: null, load: 0, replicationKey: null, draining: false });
      assert.equal(await cat.getHost(newHost()), undefined);
      // a second registration updates the record
      await cat.upsertHost({ id, datacenter: 'dc2', address: 'node7.example', port: 22, root: 'pool/r' });
      assert.deepEqual(await cat.getHost(id), { id, datacenter: 'dc2', address: 'node7.example', port: 22, root: 'pool/r', heartbeatAt: null, load: 0, replicationKey: null, draining: false });
    });

    it('hosts: heartbeat records time and load, re-registering keeps them, listHosts is sorted by id', async () => {
      const a = newHost('a');
      const b = newHost('b');
      for (const id of [b, a]) await cat.upsertHost({ id, datacenter: 'dc1', address: '127.0.0.1', port: 22, root: 'tank/r' });
      const at = Date.now() - 5000;
      await cat.heartbeat(a, 3, at);
      let h = await cat.getHost(a);
      assert.equal(h?.heartbeatAt, at);
      assert.equal(h?.load, 3);
      await cat.heartbeat(a, 4);
      h = await cat.getHost(a);
      assert.ok(h?.heartbeatAt !== null && h!.heartbeatAt! >= at + 4000, `heartbeatAt ${h?.heartbeatAt} not renewed`);
      assert.equal(h?.load, 4);
      await cat.upsertHost({ id: a, datacenter: 'dc1', address: '127.0.0.2', port: 22, root: 'tank/r' });
      h = await cat.getHost(a);
      assert.equal(h?.load, 4, 're-registration must not reset the load');
      assert.notEqual(h?.heartbeatAt, null, 're-registration must not reset the heartbeat');
      assert.equal(h?.address, '127.0.0.2');
      const all = await cat.listHosts();
      const ids = all.map((x) => x.id);
      assert.deepEqual(ids, [...ids].sort(), 'listHosts is sorted by id');
      assert.ok(ids.includes(a) && ids.includes(b));
      assert.equal(all.find((x) => x.id === b)?.heartbeatAt, null);
    });

    it('hosts: setDraining marks and unmarks a host, re-registration and heartbeats keep the mark; an unknown host is a CatalogError and creates nothing', async () => {
      const id = newHost('d');
      await cat.upsertHost({ id, datacenter: 'dc1', address: '10.0.0.9', port: 22, root: 'tank/r' });
      assert.equal((await cat.getHost(id))?.draining, false);
      await cat.setDraining(id, true);
      assert.equal((await cat.getHost(id))?.draining, true);
      await cat.upsertHost({ id, datacenter: 'dc1', address: '10.0.0.10', port: 22, root: 'tank/r' });
      await cat.heartbeat(id, 1);
      assert.equal((await cat.listHosts()).find((h) => h.id === id)?.draining, true, 'kept across re-registration and heartbeat');
      await cat.setDraining(id, false);
      assert.equal((await cat.getHost(id))?.draining, false);
      const ghost = newHost('g');
      await assert.rejects(cat.setDraining(ghost, true), (e: unknown) => e instanceof CatalogError && /not registered/.test((e as Error).message));
      assert.equal(await cat.getHost(ghost), undefined);
      await assert.rejects(cat.setDraining('Bad Host', true), ValidationError);
    });

    it('hosts: replicationKey round-trips; a registration without one keeps the stored key; null removes it; listHosts shows it', async () => {
      const id = newHost('k');
      const plain = newHost('k');
      const k1 = publicKey();
      const k2 = publicKey('ecdsa-sha2-nistp256', 65);
      await cat.upsertHost({ id, datacenter: 'dc1', address: '10.0.0.8', port: 22, root: 'tank/r', replicationKey: k1 });
      await cat.upsertHost({ id: plain, datacenter: 'dc1', address: '10.0.0.9', port: 22, root: 'tank/r' });
      assert.deepEqual(await cat.getHost(id), { id, datacenter: 'dc1', address: '10.0.0.8', port: 22, root: 'tank/r', heartbeatAt: null, load: 0, replicationKey: k1, draining: false });
      assert.equal((await cat.getHost(plain))?.replicationKey, null, 'a host registered without a key has none');
      // re-registration without a key (as on every agent start) updates the rest, keeps the key
      await cat.upsertHost({ id, datacenter: 'dc1', address: '10.0.0.18', port: 22, root: 'tank/r' });
      await cat.upsertHost({ id, datacenter: 'dc1', address: '10.0.0.18', port: 2222, root: 'tank/r', replicationKey: undefined });
      let h = await cat.getHost(id);
      assert.deepEqual([h?.address, h?.port, h?.replicationKey], ['10.0.0.18', 2222, k1]);
      const other = await open();
      assert.equal((await other.getHost(id))?.replicationKey, k1, 'another process sees the key');
      await other.upsertHost({ id, datacenter: 'dc1', address: '10.0.0.18', port: 2222, root: 'tank/r', replicationKey: k2 });
      assert.equal((await cat.getHost(id))?.replicationKey, k2, 'a new key replaces the old one');
      const listed = await cat.listHosts();
      assert.equal(listed.find((x) => x.id === id)?.replicationKey, k2);
      assert.equal(listed.find((x) => x.id === plain)?.replicationKey, null);
      // every accepted key type, and the longest accepted key data
      for (const [type, material] of [
        ['ssh-ed25519', 32],
        ['ecdsa-sha2-nistp256', 65],
        ['ecdsa-sha2-nistp384', 97],
        ['ecdsa-sha2-nistp521', 133],
        ['ssh-rsa', 400],
        ['sk-ssh-ed25519@openssh.com', 50],
        ['sk-ecdsa-sha2-nistp256@openssh.com', 90],
      ] as const) {
        const k = publicKey(type, material);
        await cat.upsertHost({ id, datacenter: 'dc1', address: '10.0.0.18', port: 2222, root: 'tank/r', replicationKey: k });
        assert.equal((await cat.getHost(id))?.replicationKey, k, type);
      }
      const longest = `ssh-rsa ${'A'.repeat(16_384)}`;
      await cat.upsertHost({ id, datacenter: 'dc1', address: '10.0.0.18', port: 2222, root: 'tank/r', replicationKey: longest });
      assert.equal((await cat.getHost(id))?.replicationKey, longest, '16384 characters of base64 are accepted');
      // an explicit null removes it
      await cat.upsertHost({ id, datacenter: 'dc1', address: '10.0.0.18', port: 2222, root: 'tank/r', replicationKey: null });
      h = await cat.getHost(id);
      assert.deepEqual([h?.address, h?.replicationKey], ['10.0.0.18', null]);
    });

    it('hosts: a malformed replicationKey is refused with an error naming the host, and nothing is written', async () => {
      const id = newHost('kb');
      const good = publicKey();
      const reg = { id, datacenter: 'dc1', address: '10.0.0.5', port: 22, root: 'tank/r' };
      await cat.upsertHost({ ...reg, replicationKey: good });
      const b64 = good.split(' ')[1]!;
      const bad: unknown[] = [
        '',
        'ssh-ed25519',
        b64,
        `ssh-ed25519 ${b64} admin@node7`, // a comment
        `ssh-ed25519  ${b64}`,
        ` ssh-ed25519 ${b64}`,
        `ssh-ed25519 ${b64} `,
        `ssh-ed25519 ${b64}\n`,
        `ssh-ed25519\t${b64}`,
        `ssh-dss ${b64}`,
        `SSH-ED25519 ${b64}`,
        `ssh-ed25519 ${b64.slice(0, 20)}!${b64.slice(20)}`,
        `ssh-ed25519 ${b64}===`,
        `ssh-ed25519 =${b64}`,
        `ssh-ed25519 ${'A'.repeat(16_385)}`,
        `ssh-ed25519 ${b64}\nssh-ed25519 ${b64}`,
        42,
      ];
      for (const k of bad) {
        await assert.rejects(
          cat.upsertHost({ ...reg, address: '10.9.9.9', port: 2200, replicationKey: k as string }),
          (e: unknown) => (e instanceof ValidationError || e instanceof CatalogError) && (e as Error).message.includes(id) && /replication public key/.test((e as Error).message),
          `key ${JSON.stringify(k).slice(0, 60)} was not refused naming the host`,
        );
      }
      assert.deepEqual(await cat.getHost(id), { ...reg, heartbeatAt: null, load: 0, replicationKey: good, draining: false }, 'a refused registration changes nothing');
      const fresh = newHost('kc');
      await assert.rejects(cat.upsertHost({ ...reg, id: fresh, replicationKey: `ssh-ed25519 ${b64} comment` }), (e: unknown) => (e as Error).message.includes(fresh));
      assert.equal(await cat.getHost(fresh), undefined, 'a host with a malformed key is not registered');
    });

    it('hosts: a heartbeat of an unregistered host is a CatalogError', async () => {
      const ghost = newHost('ghost');
      await assert.rejects(cat.heartbeat(ghost, 1), (e: unknown) => e instanceof CatalogError && /not registered/.test((e as Error).message));
      assert.equal(await cat.getHost(ghost), undefined);
    });

    // ---- projects ----

    it('projects: createProject then getProject round-trips with the defaults', async () => {
      const primary = newHost();
      const t0 = Date.now();
      const id = await newProjectOn(primary, 3, 10 * 2 ** 30);
      const p = await cat.getProject(id);
      assert.ok(p);
      assert.deepEqual({ ...p, createdAt: 0 }, { id, primary, replicationFactor: 3, quota: 10 * 2 ** 30, state: 'active', targets: [], targetsVersion: 0, locationToken: 0, createdAt: 0, operation: null });
      assert.ok(p.createdAt >= t0 - 1000 && p.createdAt <= Date.now() + 1000, `createdAt ${p.createdAt}`);
      const nowhere = await newProjectOn(null, 0, null);
      assert.deepEqual({ ...(await cat.getProject(nowhere))!, createdAt: 0 }, { id: nowhere, primary: null, replicationFactor: 0, quota: null, state: 'active', targets: [], targetsVersion: 0, locationToken: 0, createdAt: 0, operation: null });
      assert.equal(await cat.getProject(newProject()), undefined);
    });

    it('projects: a duplicate createProject is rejected and leaves the first intact', async () => {
      const h1 = newHost();
      const id = await newProjectOn(h1, 2, 100);
      const before = await cat.getProject(id);
      const other = await open();
      await assert.rejects(other.createProject({ id, primary: newHost(), replicationFactor: 5, quota: null }), (e: unknown) => e instanceof CatalogError && /already exists/.test((e as Error).message));
      assert.deepEqual(await cat.getProject(id), before);
      assert.deepEqual((await cat.listProjectsByPrimary(h1)).map((p) => p.id), [id]);
    });

    it('projects: listProjects lists every project sorted by id; listProjectsByPrimary only those of that host', async () => {
      const h1 = newHost();
      const h2 = newHost();
      const mine = [await newProjectOn(h1), await newProjectOn(h1), await newProjectOn(h2), await newProjectOn(null)];
      const all = await cat.listProjects();
      const ids = all.map((p) => p.id);
      assert.deepEqual(ids, [...ids].sort(), 'sorted by id');
      for (const id of mine) assert.ok(ids.includes(id), `listProjects misses ${id}`);
      assert.deepEqual((await cat.listProjectsByPrimary(h1)).map((p) => p.id), [mine[0]!, mine[1]!].sort());
      assert.deepEqual((await cat.listProjectsByPrimary(h2)).map((p) => p.id), [mine[2]!]);
      assert.deepEqual(await cat.listProjectsByPrimary(newHost()), []);
      const p = (await cat.listProjectsByPrimary(h2))[0];
      assert.equal(p?.primary, h2);
    });

    it('projects: setTargets replaces the targets; an unknown project is a CatalogError', async () => {
      const id = await newProjectOn(newHost());
      const [t1, t2, t3] = [newHost(), newHost(), newHost()];
      await cat.setTargets(id, [t1, t2]);
      assert.deepEqual((await cat.getProject(id))?.targets, [t1, t2]);
      await cat.setTargets(id, [t3]);
      assert.deepEqual((await cat.getProject(id))?.targets, [t3]);
      await cat.setTargets(id, []);
      assert.deepEqual((await cat.getProject(id))?.targets, []);
      const missing = newProject();
      await assert.rejects(cat.setTargets(missing, [t1]), (e: unknown) => e instanceof CatalogError && !(e instanceof FencingError) && /does not exist/.test((e as Error).message));
      assert.equal(await cat.getProject(missing), undefined, 'setTargets must not create a project');
    });

    // ---- replicas ----

    it('host generation: moves for the primary on create, setTargets and location changes (old and new primary); not for others or for replica rows', async () => {
      const a = newHost('ga');
      const b = newHost('gb');
      const other = newHost('go');
      assert.equal(await cat.hostGeneration(a), '');
      const g0o = await cat.hostGeneration(other);
      const id = await newProjectOn(a);
      const g1 = await cat.hostGeneration(a);
      assert.notEqual(g1, '', 'createProject moves the primary\'s generation');
      await cat.setTargets(id, [b]);
      const g2 = await cat.hostGeneration(a);
      assert.notEqual(g2, g1, 'setTargets moves the primary\'s generation');
      await cat.upsertReplica(replica(id, b, 100));
      assert.equal(await cat.hostGeneration(a), g2, 'a replica row is not a project change');
      const gb0 = await cat.hostGeneration(b);
      const lock = await cat.acquireLock(projectLockName(id), 'gen-test', 30_000);
      assert.ok(lock.ok);
      await cat.setLocation(id, b, 'active', lock.token, null);
      assert.notEqual(await cat.hostGeneration(a), g2, 'the old primary sees the move');
      assert.notEqual(await cat.hostGeneration(b), gb0, 'the new primary sees the move');
      assert.equal(await cat.hostGeneration(other), g0o, 'an uninvolved host does not');
      await cat.releaseLock(projectLockName(id), 'gen-test', lock.token);
    });

    it('newest snapshots: recordNewest replaces, listNewest returns every project\'s in one read; malformed ones are refused', async () => {
      const id = await newProjectOn(newHost('n'));
      await cat.recordNewest(id, { snapshot: '2026-12-01T10:00:00Z', guid: '123', creation: 1_764_583_200 });
      await cat.recordNewest(id, { snapshot: '2026-12-01T11:00:00Z', guid: '456', creation: 1_764_586_800 });
      assert.deepEqual((await cat.listNewest()).get(id), { snapshot: '2026-12-01T11:00:00Z', guid: '456', creation: 1_764_586_800 });
      await assert.rejects(cat.recordNewest(id, { snapshot: 'bad name!', guid: '1', creation: 1 }));
      await assert.rejects(cat.recordNewest(id, { snapshot: 'ok', guid: 'x1', creation: 1 }), CatalogError);
      assert.equal((await cat.listNewest()).get(id)?.guid, '456', 'a refused write changes nothing');
    });

    it('replicas: the latest confirmation wins (an earlier confirmedAt is ignored, equal or later replace), whatever the snapshot\'s age; both views agree', async () => {
      const id = await newProjectOn(newHost());
      const h = newHost();
      await cat.upsertReplica(replica(id, h, 1000));
      // a replay of an earlier confirmation (a journal flushed late): ignored
      await cat.upsertReplica(replica(id, h, 900, { snapshot: 'older', guid: '1' }));
      await cat.upsertReplica(replica(id, h, 2000, { confirmedAt: 1_700_000_000_000 + 999 }));
      assert.deepEqual(await cat.listReplicas(id), [replica(id, h, 1000)]);
      // the same snapshot confirmed again: replaces (a fresher confirmedAt)
      await cat.upsertReplica(replica(id, h, 1000, { confirmedAt: 1_800_000_000_000 }));
      assert.deepEqual(await cat.listReplicas(id), [replica(id, h, 1000, { confirmedAt: 1_800_000_000_000 })]);
      await cat.upsertReplica(replica(id, h, 2000, { confirmedAt: 1_800_000_000_001 }));
      assert.deepEqual(await cat.listReplicas(id), [replica(id, h, 2000, { confirmedAt: 1_800_000_000_001 })]);
      // an older snapshot confirmed later: the replica went back (a diverged replica kept
      // aside and sent again from a primary that never had the newer one): it is the truth
      await cat.upsertReplica(replica(id, h, 1500, { confirmedAt: 1_800_000_000_002 }));
      assert.deepEqual(await cat.listReplicas(id), [replica(id, h, 1500, { confirmedAt: 1_800_000_000_002 })]);
      assert.deepEqual(await cat.listReplicasByHost(h), [replica(id, h, 1500, { confirmedAt: 1_800_000_000_002 })]);
    });

    it('replicas: listReplicas by project, listReplicasByHost by host, deleteReplica removes from both', async () => {
      const [p1, p2] = [newProject(), newProject()].sort() as [string, string];
      for (const p of [p1, p2]) await cat.createProject({ id: p, primary: newHost(), replicationFactor: 2, quota: null });
      const [ha, hb] = [newHost('a'), newHost('b')];
      await cat.upsertReplica(replica(p1, hb, 10));
      await cat.upsertReplica(replica(p1, ha, 11));
      await cat.upsertReplica(replica(p2, ha, 12));
      assert.deepEqual(await cat.listReplicas(p1), [replica(p1, ha, 11), replica(p1, hb, 10)], 'sorted by host');
      assert.deepEqual(await cat.listReplicasByHost(ha), [replica(p1, ha, 11), replica(p2, ha, 12)], 'sorted by project');
      assert.deepEqual(await cat.listReplicas(newProject()), []);
      assert.deepEqual(await cat.listReplicasByHost(newHost()), []);
      await cat.deleteReplica(p1, ha);
      assert.deepEqual(await cat.listReplicas(p1), [replica(p1, hb, 10)]);
      assert.deepEqual(await cat.listReplicasByHost(ha), [replica(p2, ha, 12)]);
      await cat.deleteReplica(p1, ha); // again: nothing to do
      await cat.deleteReplica(newProject(), ha); // never existed
      // a replica recreated after a delete is a new record: an older snapshot is accepted
      await cat.upsertReplica(replica(p1, ha, 5));
      assert.deepEqual(await cat.listReplicas(p1), [replica(p1, ha, 5), replica(p1, hb, 10)]);
      assert.deepEqual(await cat.listReplicasByHost(ha), [replica(p1, ha, 5), replica(p2, ha, 12)]);
    });

    // ---- events ----

    it('events: listed newest first, by project and globally, with since and limit, across days', async () => {
      const p = newProject();
      const q = newProject();
      const h = newHost();
      // dated in the future so that no other test's events fall in these windows
      const base = Date.now() + 400 * DAY;
      const e1: EventRecord = { at: base - 2 * DAY, project: p, host: h, kind: 'created', detail: 'one' };
      const e2: EventRecord = { at: base - DAY, project: p, host: null, kind: 'snapshot', detail: 'two' };
      const e3: EventRecord = { at: base, project: q, host: h, kind: 'placement', detail: 'three' };
      const e4: EventRecord = { at: base + 1000, project: p, host: h, kind: 'replication-failed', detail: 'x'.repeat(5000) };
      const e5: EventRecord = { at: base + 2000, project: null, host: h, kind: 'host', detail: 'five' };
      for (const e of [e3, e1, e5, e4, e2]) await cat.addEvent(e);
      const e4stored = { ...e4, detail: 'x'.repeat(4000) };
      assert.deepEqual(await cat.listEvents({ project: p }), [e4stored, e2, e1]);
      assert.deepEqual(await cat.listEvents({ project: p, since: base - DAY }), [e4stored, e2], 'since is inclusive');
      assert.deepEqual(await cat.listEvents({ project: p, limit: 2 }), [e4stored, e2]);
      assert.deepEqual(await cat.listEvents({ project: q }), [e3]);
      assert.deepEqual(await cat.listEvents({ project: newProject() }), []);
      assert.deepEqual(await cat.listEvents({ since: base - 2 * DAY }), [e5, e4stored, e3, e2, e1]);
      assert.deepEqual(await cat.listEvents({ since: base - 2 * DAY, limit: 3 }), [e5, e4stored, e3]);
      assert.deepEqual(await cat.listEvents({ since: base + 1500 }), [e5]);
      // without since, the newest events overall come first
      assert.deepEqual((await cat.listEvents({ limit: 2 })).map((e) => e.detail), ['five', 'x'.repeat(4000)]);
      // an event without `at` is stamped now
      const t0 = Date.now();
      const r = newProject();
      await cat.addEvent({ project: r, host: null, kind: 'now', detail: '' });
      const [now] = await cat.listEvents({ project: r });
      assert.ok(now && now.at >= t0 - 1000 && now.at <= Date.now() + 1000);
    });

    // ---- locks ----

    it('projects: the operation in progress is written with the location, read back, validated, and cleared', async () => {
      const id = randomUUID();
      const h = newHost('op');
      await cat.upsertHost({ id: h, datacenter: 'dc1', address: '10.0.0.1', port: 22, root: 'tank/replicas' });
      await cat.createProject({ id, primary: h, replicationFactor: 1, quota: null });
      const l = await cat.acquireLock(projectLockName(id), 'op@h:1', 60_000);
      assert.ok(l.ok);
      const op = { kind: 'move' as const, from: h, to: h, snapshot: null, guid: null, creation: null, token: l.token, startedAt: 1_700_000_000_000, step: 'recorded' as const, wasMounted: true };
      await cat.setLocation(id, h, 'moving', l.token, op);
      assert.deepEqual((await cat.getProject(id))!.operation, op);
      assert.deepEqual((await cat.listProjectsByPrimary(h)).find((p) => p.id === id)!.operation, op);
      await assert.rejects(cat.setLocation(id, h, 'active', l.token, { ...op, kind: 'nope' } as unknown as typeof op), /operation has an unknown kind/);
      assert.deepEqual((await cat.getProject(id))!.operation, op, 'a refused write changes nothing');
      await cat.setLocation(id, h, 'active', l.token, null);
      assert.equal((await cat.getProject(id))!.operation, null);
    });

    it('requests: a move request rides on the row (step requested, its options) and is listed under the performing host; put is idempotent, delete removes only that entry', async () => {
      const id = randomUUID();
      const other = randomUUID();
      const h = newHost('rq');
      await cat.upsertHost({ id: h, datacenter: 'dc1', address: '10.0.0.1', port: 22, root: 'tank/replicas' });
      await cat.createProject({ id, primary: h, replicationFactor: 1, quota: null });
      assert.deepEqual(await cat.listRequests(h), []);
      await cat.putRequest(h, id);
      await cat.putRequest(h, id);
      await cat.putRequest(h, other);
      assert.deepEqual(await cat.listRequests(h), [id, other].sort());
      const l = await cat.acquireLock(projectLockName(id), 'rq@h:1', 60_000);
      assert.ok(l.ok);
      const op = { kind: 'move' as const, from: h, to: 'b-1', snapshot: null, guid: null, creation: null, token: l.token, startedAt: 1_700_000_000_000, step: 'requested' as const, id: 'req-0123456789ab', requestedBy: 'storagectl@c', dropSource: false, presyncThresholdBytes: 1024 };
      await cat.setLocation(id, h, 'active', l.token, op);
      assert.deepEqual((await cat.getProject(id))!.operation, op);
      await assert.rejects(cat.setLocation(id, h, 'active', l.token, { ...op, kind: 'restore' }), /requested but not a move/);
      await assert.rejects(cat.setLocation(id, h, 'active', l.token, { ...op, id: 'X' }), ValidationError);
      await cat.deleteRequest(h, other);
      assert.deepEqual(await cat.listRequests(h), [id]);
      await cat.deleteRequest(h, id);
      await cat.deleteRequest(h, id);
      assert.deepEqual(await cat.listRequests(h), []);
      await assert.rejects(cat.putRequest('Bad Host', id), ValidationError);
      await assert.rejects(cat.putRequest(h, 'not-a-uuid'), ValidationError);
    });

    it('progress: the newest report wins, a cancel is kept beside it (neither overwrites the other); malformed reports are refused', async () => {
      const id = randomUUID();
      assert.deepEqual(await cat.getProgress(id), { progress: null, cancel: null });
      const p = { id: 'req-0123456789ab', kind: 'move' as const, from: 'a-1', to: 'b-1', phase: 'running' as const, step: 'pre-sync round 1', bytes: 10, estimate: 100, elapsedMs: 5, updatedAt: 1_700_000_000_000 };
      await cat.putProgress(id, p);
      assert.deepEqual(await cat.getProgress(id), { progress: p, cancel: null });
      await cat.requestCancel(id, p.id);
      const done = { ...p, phase: 'done' as const, step: 'moved', result: { to: 'b-1', downtimeMs: 12 } };
      await cat.putProgress(id, done);
      assert.deepEqual(await cat.getProgress(id), { progress: done, cancel: p.id });
      const only = randomUUID();
      await cat.requestCancel(only, 'req-aaaaaaaaaaaa');
      assert.deepEqual(await cat.getProgress(only), { progress: null, cancel: 'req-aaaaaaaaaaaa' }, 'a cancel before any report');
      await assert.rejects(cat.putProgress(id, { ...p, phase: 'halfway' as 'done' }), /unknown phase/);
      await assert.rejects(cat.putProgress(id, { ...p, bytes: -1 }), /malformed bytes/);
      await assert.rejects(cat.requestCancel(id, 'no'), ValidationError);
      assert.deepEqual(await cat.getProgress(id), { progress: done, cancel: p.id }, 'refused writes change nothing');
    });

    it('projects: setTargets bumps the version; a write from an older version is refused and changes nothing', async () => {
      const id = randomUUID();
      await cat.createProject({ id, primary: null, replicationFactor: 2, quota: null });
      assert.equal((await cat.getProject(id))!.targetsVersion, 0);
      assert.equal(await cat.setTargets(id, ['x1'], { ifVersion: 0 }), true);
      assert.equal((await cat.getProject(id))!.targetsVersion, 1);
      assert.equal(await cat.setTargets(id, ['old'], { ifVersion: 0 }), false, 'a replay of a list made from version 0');
      assert.deepEqual((await cat.getProject(id))!.targets, ['x1']);
      assert.equal(await cat.setTargets(id, ['x1', 'x2']), true, 'unconditional');
      assert.deepEqual([(await cat.getProject(id))!.targets, (await cat.getProject(id))!.targetsVersion], [['x1', 'x2'], 2]);
    });

    it('locks: acquire, contend, renew by the holder only, release', async () => {
      const name = `test:${randomUUID()}`;
      const a = await cat.acquireLock(name, 'owner-a', 60_000);
      assert.ok(a.ok);
      assert.ok(a.token >= 1);
      assert.ok(a.expiresAt > Date.now() + 50_000);
      const other = await open();
      const b = await other.acquireLock(name, 'owner-b', 60_000);
      assert.equal(b.ok, false);
      if (!b.ok) {
        assert.equal(b.owner, 'owner-a');
        assert.equal(b.expiresAt, a.expiresAt);
      }
      // the holder itself cannot take it twice either
      assert.equal((await cat.acquireLock(name, 'owner-a', 60_000)).ok, false);
      assert.equal(await other.renewLock(name, 'owner-b', a.token, 60_000), false, 'renew by a non-holder');
      assert.equal(await cat.renewLock(name, 'owner-a', a.token + 1, 60_000), false, 'renew with a wrong token');
      assert.equal(await cat.renewLock(name, 'owner-a', a.token, 120_000), true);
      const c = await other.acquireLock(name, 'owner-b', 60_000);
      assert.ok(!c.ok && c.expiresAt > Date.now() + 100_000, 'the renewal moved the expiry');
      await other.releaseLock(name, 'owner-b', a.token); // not the holder: no effect
      assert.equal((await other.acquireLock(name, 'owner-b', 60_000)).ok, false);
      await cat.releaseLock(name, 'owner-a', a.token);
      const d = await other.acquireLock(name, 'owner-b', 60_000);
      assert.ok(d.ok);
      assert.ok(d.token > a.token);
      assert.equal(await cat.renewLock(name, 'owner-a', a.token, 60_000), false, 'a released lease cannot be renewed');
    });

    it('locks: getLock is undefined for an unknown lock, shows the holder while held, owner null and the last token after release', async () => {
      const name = `test:${randomUUID()}`;
      const other = await open();
      assert.equal(await cat.getLock(name), undefined);
      const a = await cat.acquireLock(name, 'owner-a', 60_000);
      assert.ok(a.ok);
      assert.deepEqual(await cat.getLock(name), { owner: 'owner-a', token: a.token, expiresAt: a.expiresAt });
      assert.deepEqual(await other.getLock(name), { owner: 'owner-a', token: a.token, expiresAt: a.expiresAt }, 'another process sees the same row');
      // a renewal moves the expiry, not the token; a refused acquire changes nothing
      assert.equal(await cat.renewLock(name, 'owner-a', a.token, 120_000), true);
      const renewed = await cat.getLock(name);
      assert.ok(renewed);
      assert.deepEqual([renewed.owner, renewed.token], ['owner-a', a.token]);
      assert.ok(renewed.expiresAt > a.expiresAt, `renewal did not move the expiry: ${renewed.expiresAt} <= ${a.expiresAt}`);
      assert.equal((await other.acquireLock(name, 'owner-b', 60_000)).ok, false);
      assert.deepEqual(await other.getLock(name), renewed);
      await cat.releaseLock(name, 'owner-a', a.token);
      const released = await other.getLock(name);
      assert.ok(released, 'a released lock still has its row');
      assert.equal(released.owner, null, 'released: no owner');
      assert.equal(released.token, a.token, 'released: the token of the last holder stays');
      assert.ok(released.expiresAt <= Date.now());
      const b = await other.acquireLock(name, 'owner-b', 60_000);
      assert.ok(b.ok);
      assert.deepEqual(await cat.getLock(name), { owner: 'owner-b', token: b.token, expiresAt: b.expiresAt });
      await other.releaseLock(name, 'owner-b', b.token);
      assert.deepEqual([(await cat.getLock(name))?.owner, (await cat.getLock(name))?.token], [null, b.token]);
      assert.equal(await cat.getLock(`test:${randomUUID()}`), undefined);
    });

    it('locks: getLock after expiry shows the last token and an expiry in the past; a takeover shows the new holder', async () => {
      const name = `test:${randomUUID()}`;
      const a = await cat.acquireLock(name, 'owner-a', SHORT_LEASE_MS);
      assert.ok(a.ok);
      assert.deepEqual(await cat.getLock(name), { owner: 'owner-a', token: a.token, expiresAt: a.expiresAt });
      await waitPast(a.expiresAt);
      const expired = await cat.getLock(name);
      assert.ok(expired);
      assert.equal(expired.token, a.token);
      assert.ok(expired.expiresAt < Date.now(), `expiresAt ${expired.expiresAt} is not in the past`);
      // the row may still name the expired holder (see LockRow): the expiry decides
      assert.ok(expired.owner === null || expired.owner === 'owner-a', `owner ${expired.owner}`);
      const b = await cat.acquireLock(name, 'owner-b', 60_000);
      assert.ok(b.ok);
      assert.deepEqual(await cat.getLock(name), { owner: 'owner-b', token: b.token, expiresAt: b.expiresAt });
      await cat.releaseLock(name, 'owner-b', b.token);
    });

    it('locks: a lease expires; the next holder gets a larger token; the stale holder can neither renew nor release it', async () => {
      const name = `test:${randomUUID()}`;
      const a = await cat.acquireLock(name, 'owner-a', SHORT_LEASE_MS);
      assert.ok(a.ok);
      assert.ok(a.expiresAt <= Date.now() + SHORT_LEASE_MS);
      assert.equal((await cat.acquireLock(name, 'owner-b', 60_000)).ok, false);
      await waitPast(a.expiresAt);
      assert.equal(await cat.renewLock(name, 'owner-a', a.token, 60_000), false, 'an expired lease cannot be renewed');
      const b = await cat.acquireLock(name, 'owner-b', 60_000);
      assert.ok(b.ok, `the expired lease was not taken over: ${JSON.stringify(b)}`);
      assert.ok(b.token > a.token);
      await cat.releaseLock(name, 'owner-a', a.token);
      const c = await cat.acquireLock(name, 'owner-c', 60_000);
      assert.ok(!c.ok && c.owner === 'owner-b', 'a stale release must not free the new holder');
    });

    it('fencing: tokens strictly increase across holders, releases and expiries', async () => {
      const name = `test:${randomUUID()}`;
      const other = await open();
      const tokens: number[] = [];
      const take = async (c: Catalog, owner: string, ttl: number) => {
        const r = await c.acquireLock(name, owner, ttl);
        assert.ok(r.ok, `${owner} could not acquire: ${JSON.stringify(r)}`);
        tokens.push(r.token);
        return r;
      };
      let r = await take(cat, 'a', 60_000);
      await cat.releaseLock(name, 'a', r.token);
      r = await take(other, 'b', 60_000);
      await other.releaseLock(name, 'b', r.token);
      r = await take(cat, 'a', 60_000); // the same owner again
      await cat.releaseLock(name, 'a', r.token);
      r = await take(other, 'c', SHORT_LEASE_MS);
      await waitPast(r.expiresAt); // expires instead of being released
      r = await take(cat, 'a', 60_000);
      for (let i = 1; i < tokens.length; i++) assert.ok(tokens[i]! > tokens[i - 1]!, `tokens not increasing: ${tokens.join(', ')}`);
    });

    it('fencing: 50 concurrent acquirers of one lock, exactly one wins', async () => {
      const name = projectLockName(newProject());
      const cats = [cat, ...(await Promise.all([open(), open(), open(), open()]))];
      const results = await Promise.all(Array.from({ length: 50 }, (_, i) => cats[i % cats.length]!.acquireLock(name, `racer-${i}`, 60_000)));
      const winners = results.flatMap((r, i) => (r.ok ? [{ i, token: r.token }] : []));
      assert.equal(winners.length, 1, `winners: ${JSON.stringify(winners)}`);
      const winner = `racer-${winners[0]!.i}`;
      for (const r of results) if (!r.ok) assert.equal(r.owner, winner, 'every loser sees the winner');
      const again = await cat.acquireLock(name, 'late', 60_000);
      assert.ok(!again.ok && again.owner === winner);
    });

    it("fencing: after the lease expires another holder takes over; the stale holder's setLocation is rejected, the new holder's succeeds", async () => {
      const [h1, h2, h3, h4] = [newHost(), newHost(), newHost(), newHost()];
      const id = await newProjectOn(h1);
      const lock = projectLockName(id);
      const a = await cat.acquireLock(lock, 'agent-a', SHORT_LEASE_MS);
      assert.ok(a.ok);
      await cat.setLocation(id, h2, 'moving', a.token, null);
      let p = await cat.getProject(id);
      assert.equal(p?.primary, h2);
      assert.equal(p?.state, 'moving');
      assert.equal(p?.locationToken, a.token);
      assert.deepEqual((await cat.listProjectsByPrimary(h2)).map((x) => x.id), [id]);
      assert.deepEqual(await cat.listProjectsByPrimary(h1), []);
      await waitPast(a.expiresAt);
      // expired, nobody else yet
      await assert.rejects(cat.setLocation(id, h3, 'active', a.token, null), FencingError);
      const other = await open();
      const b = await other.acquireLock(lock, 'agent-b', 60_000);
      assert.ok(b.ok, `takeover failed: ${JSON.stringify(b)}`);
      assert.ok(b.token > a.token);
      await assert.rejects(cat.setLocation(id, h3, 'active', a.token, null), FencingError);
      assert.equal((await cat.getProject(id))?.primary, h2, 'a rejected write changes nothing');
      await other.setLocation(id, h4, 'active', b.token, null);
      p = await cat.getProject(id);
      assert.deepEqual([p?.primary, p?.state, p?.locationToken], [h4, 'active', b.token]);
      assert.deepEqual((await cat.listProjectsByPrimary(h4)).map((x) => x.id), [id]);
      assert.deepEqual(await cat.listProjectsByPrimary(h2), []);
      assert.deepEqual(await cat.listProjectsByPrimary(h3), []);
      // and the stale holder still cannot, even with the lock free again
      await other.releaseLock(lock, 'agent-b', b.token);
      await assert.rejects(cat.setLocation(id, h3, 'active', a.token, null), FencingError);
      await assert.rejects(other.setLocation(id, h3, 'active', b.token, null), FencingError, 'a released lease no longer fences');
    });

    it('fencing: setLocation without the lock or with a wrong token is a FencingError; the holder may write several times; nowhere is a location', async () => {
      const h1 = newHost();
      const h2 = newHost();
      const id = await newProjectOn(h1);
      await assert.rejects(cat.setLocation(id, h2, 'active', 1, null), FencingError);
      // another project's lock does not fence this one
      const other = await newProjectOn(h1);
      const o = await cat.acquireLock(projectLockName(other), 'agent', 60_000);
      assert.ok(o.ok);
      await assert.rejects(cat.setLocation(id, h2, 'active', o.token, null), FencingError);
      const lock = projectLockName(id);
      const a = await cat.acquireLock(lock, 'agent', 60_000);
      assert.ok(a.ok);
      await assert.rejects(cat.setLocation(id, h2, 'active', a.token + 1, null), FencingError);
      await assert.rejects(cat.setLocation(id, h2, 'active', a.token - 1, null), FencingError);
      assert.deepEqual([(await cat.getProject(id))?.primary, (await cat.getProject(id))?.locationToken], [h1, 0]);
      await cat.setLocation(id, h2, 'moving', a.token, null);
      await cat.setLocation(id, null, 'fenced', a.token, null);
      assert.deepEqual(await cat.listProjectsByPrimary(h2), []);
      await cat.setLocation(id, h1, 'failing-over', a.token, null);
      await cat.setLocation(id, h1, 'active', a.token, null);
      const p = await cat.getProject(id);
      assert.deepEqual([p?.primary, p?.state, p?.locationToken], [h1, 'active', a.token]);
      assert.deepEqual((await cat.listProjectsByPrimary(h1)).map((x) => x.id), [id, other].sort());
    });

    it('fencing: setLocation of a project that does not exist, under a valid lock, is a CatalogError (not a FencingError)', async () => {
      const id = newProject();
      const a = await cat.acquireLock(projectLockName(id), 'agent', 60_000);
      assert.ok(a.ok);
      await assert.rejects(cat.setLocation(id, newHost(), 'active', a.token, null), (e: unknown) => e instanceof CatalogError && !(e instanceof FencingError) && /does not exist/.test((e as Error).message));
      assert.equal(await cat.getProject(id), undefined);
    });

    // ---- validation ----

    it('validation: malformed ids are refused with ValidationError before anything is written', async () => {
      const good = await newProjectOn(newHost());
      const badProjects = ['', 'not-a-uuid', good.toUpperCase(), `${good} `, "x'; DROP TABLE projects; --", '../etc'];
      const badHosts = ['', 'Bad Host', 'UPPER', '-flag', 'a/b', "h'; --", 'x'.repeat(64)];
      const rejects = (p: Promise<unknown>, what: string) => assert.rejects(p, ValidationError, what);
      for (const b of badProjects) {
        await rejects(cat.getProject(b), `getProject ${b}`);
        await rejects(cat.createProject({ id: b, primary: null, replicationFactor: 1, quota: null }), `createProject ${b}`);
        await rejects(cat.setTargets(b, []), `setTargets ${b}`);
        await rejects(cat.setLocation(b, null, 'active', 1, null), `setLocation ${b}`);
        await rejects(cat.upsertReplica(replica(b, 'h1', 1)), `upsertReplica ${b}`);
        await rejects(cat.listReplicas(b), `listReplicas ${b}`);
        await rejects(cat.deleteReplica(b, 'h1'), `deleteReplica ${b}`);
        // (SqliteCatalog treats project '' as "no project filter", so '' is not checked here)
        if (b !== '') await rejects(cat.listEvents({ project: b }), `listEvents ${b}`);
      }
      for (const b of badHosts) {
        await rejects(cat.upsertHost({ id: b, datacenter: 'dc1', address: 'x', port: 22, root: 'r' }), `upsertHost ${b}`);
        await rejects(cat.upsertHost({ id: 'ok-host', datacenter: b, address: 'x', port: 22, root: 'r' }), `upsertHost datacenter ${b}`);
        await rejects(cat.heartbeat(b, 1), `heartbeat ${b}`);
        await rejects(cat.createProject({ id: newProject(), primary: b, replicationFactor: 1, quota: null }), `createProject primary ${b}`);
        await rejects(cat.setTargets(good, ['ok-host', b]), `setTargets ${b}`);
        await rejects(cat.setLocation(good, b, 'active', 1, null), `setLocation ${b}`);
        await rejects(cat.upsertReplica(replica(good, b, 1)), `upsertReplica host ${b}`);
        await rejects(cat.listReplicasByHost(b), `listReplicasByHost ${b}`);
        await rejects(cat.deleteReplica(good, b), `deleteReplica host ${b}`);
        await rejects(cat.listProjectsByPrimary(b), `listProjectsByPrimary ${b}`);
      }
      assert.equal(await cat.getHost('ok-host'), undefined, 'nothing was registered');
      const p = await cat.getProject(good);
      assert.deepEqual(p?.targets, []);
      assert.deepEqual(await cat.listReplicas(good), []);
    });

    it('validation: replica records are checked on write (snapshot name, guid)', async () => {
      const id = await newProjectOn(newHost());
      const h = newHost();
      await assert.rejects(cat.upsertReplica(replica(id, h, 1, { snapshot: 'bad name' })), ValidationError);
      await assert.rejects(cat.upsertReplica(replica(id, h, 1, { snapshot: '../x' })), ValidationError);
      await assert.rejects(cat.upsertReplica(replica(id, h, 1, { guid: 'not-a-guid' })), CatalogError);
      await assert.rejects(cat.upsertReplica(replica(id, h, 1, { guid: '' })), CatalogError);
      assert.deepEqual(await cat.listReplicas(id), []);
      assert.deepEqual(await cat.listReplicasByHost(h), []);
    });
  });
}

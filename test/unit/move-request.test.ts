// Moves as requests (storagectl move typed anywhere, drain, cancel): the pure decisions
// (which index entries are this host's moves, what a drain does with each project) and the
// requester's protocol against a real SQLite catalog, with the performer played by the
// test (the agent's side runs on real hosts in test/operations/fleet-moves.test.ts).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { randomUUID } from 'node:crypto';
import { SqliteCatalog } from '../../src/catalog/sqlite.js';
import { parseConfig } from '../../src/agent/config.js';
import { requestedOfHost } from '../../src/agent/move-runner.js';
import { classify } from '../../src/agent/drain.js';
import { cancelMove, followMove, MoveRequestError, requestMove } from '../../src/agent/move-request.js';
import { projectLockName, type ProjectOperation, type ProjectRecord } from '../../src/catalog/types.js';

const config = parseConfig(
  `host: c
datacenter: dc3
address: 10.0.0.3
pool: tank
projectsRoot: tank/projects
replicasRoot: tank/replicas
mountBase: /srv/projects
ssh: { privateKey: /k, knownHosts: /kh }
interval: 1m
`,
  'test',
);

const P = (o: Partial<ProjectRecord> = {}): ProjectRecord => ({ id: randomUUID(), primary: 'a', replicationFactor: 2, quota: null, state: 'active', targets: ['b', 'c'], targetsVersion: 1, locationToken: 1, createdAt: 1, operation: null, ...o });
const OP = (o: Partial<ProjectOperation> = {}): ProjectOperation => ({ kind: 'move', from: 'a', to: 'b', snapshot: null, guid: null, creation: null, token: 1, startedAt: 1, step: 'requested', id: 'req-00000001', ...o });

describe('requestedOfHost: which request-index entries are moves this host performs', () => {
  it('a requested or recorded move from this host while it serves; a switched one also once the row names the target', () => {
    assert.ok('op' in requestedOfHost(P({ operation: OP() }), 'a'));
    assert.ok('op' in requestedOfHost(P({ operation: OP({ step: 'recorded' }), state: 'moving' }), 'a'));
    assert.ok('op' in requestedOfHost(P({ primary: 'b', state: 'moving', operation: OP({ step: 'switched' }) }), 'a'));
  });
  it('anything else is a stale entry, with the reason', () => {
    assert.deepEqual(requestedOfHost(undefined, 'a'), { stale: 'the project is gone' });
    assert.deepEqual(requestedOfHost(P(), 'a'), { stale: 'no operation on the row', early: true });
    assert.deepEqual(requestedOfHost(P({ operation: OP({ from: 'c' }) }), 'a'), { stale: 'the row carries a move from c' });
    assert.deepEqual(requestedOfHost(P({ operation: { ...OP(), kind: 'failover', step: 'recorded', id: undefined, snapshot: 's', guid: '1' } }), 'a'), { stale: 'the row carries a failover from a' });
    assert.deepEqual(requestedOfHost(P({ primary: 'b', operation: OP() }), 'a'), { stale: 'served by b' });
  });
});

describe('drain: what it does with each project the host serves', () => {
  it('follows its own requests, requests the active ones, skips what is busy or not active', () => {
    assert.deepEqual(classify(P({ operation: OP() }), 'a'), { kind: 'follow', id: 'req-00000001', to: 'b' });
    assert.deepEqual(classify(P(), 'a'), { kind: 'request' });
    assert.match((classify(P({ operation: { ...OP(), kind: 'restore', step: 'recorded', id: undefined } }), 'a') as { why: string }).why, /a restore is in progress/);
    assert.match((classify(P({ operation: { ...OP(), id: undefined, step: 'recorded' } }), 'a') as { why: string }).why, /a move is in progress/);
    assert.deepEqual(classify(P({ state: 'fenced' }), 'a'), { kind: 'skip', why: 'it is fenced' });
  });
});

describe('the requester against a real SQLite catalog (the performer played by the test)', () => {
  let dir: string;
  let cat: SqliteCatalog;
  const now = () => Date.now();
  before(async () => {
    dir = mkdtempSync(`${tmpdir()}/move-request-`);
    cat = new SqliteCatalog(`${dir}/catalog.db`);
    for (const [id, dc] of [['a', 'dc1'], ['b', 'dc2'], ['c', 'dc3']] as const) {
      await cat.upsertHost({ id, datacenter: dc, address: `10.0.0.${id.charCodeAt(0) - 96}`, port: 22, root: 'tank/replicas' });
      await cat.heartbeat(id, 0, now());
    }
  });
  after(async () => {
    await cat.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const project = async (primary = 'a') => {
    const id = randomUUID();
    await cat.createProject({ id, primary, replicationFactor: 2, quota: null });
    await cat.setTargets(id, ['b', 'c']);
    await cat.upsertReplica({ project: id, host: 'b', snapshot: 'auto-1', guid: '11', snapshotCreation: 100, confirmedAt: now() });
    return id;
  };
  const ask = (id: string, o: { to?: string } = {}) => requestMove(cat, config, { project: id, requestedBy: 'storagectl@c', owner: 'storagectl-move@c:1', ...o });

  it('a request rides on the row (active, step requested), is indexed under the primary, reports "requested", chooses the replica holder', async () => {
    const id = await project();
    const gen = await cat.hostGeneration('a');
    const r = await ask(id);
    assert.deepEqual([r.from, r.to, r.adopted, r.choice?.host], ['a', 'b', false, 'b']);
    const p = (await cat.getProject(id))!;
    assert.deepEqual([p.primary, p.state, p.operation?.step, p.operation?.id, p.operation?.requestedBy], ['a', 'active', 'requested', r.id, 'storagectl@c']);
    assert.deepEqual(await cat.listRequests('a'), [id]);
    assert.notEqual(await cat.hostGeneration('a'), gen, "the primary's generation moved: its agent looks");
    assert.equal((await cat.getProgress(id)).progress?.phase, 'requested');
    assert.equal((await cat.getLock(projectLockName(id)))?.owner, null, 'the lease is released');
    const again = await ask(id);
    assert.deepEqual([again.id, again.adopted], [r.id, true], 'typed twice: the same request is followed');
    await assert.rejects(ask(id, { to: 'c' }), (e: unknown) => e instanceof MoveRequestError && /move is in progress|in progress/.test((e as Error).message));
  });

  it('refuses a dead primary (advises a failover), a draining or dead destination, a busy project', async () => {
    const id = await project();
    await cat.heartbeat('a', 0, now() - 3_600_000);
    try {
      await assert.rejects(ask(id), /primary a of .* is dead for the catalog .*storagectl failover/);
    } finally {
      await cat.heartbeat('a', 0, now());
    }
    await cat.setDraining('b', true);
    try {
      await assert.rejects(ask(id, { to: 'b' }), /b is draining/);
      assert.equal((await ask(id)).to, 'c', 'chosen: c, since b is draining');
    } finally {
      await cat.setDraining('b', false);
    }
    assert.equal((await cat.getProject(id))!.operation?.to, 'c');
    const busy = await project();
    assert.ok((await cat.acquireLock(projectLockName(busy), 'failover@b:1', 60_000)).ok);
    await assert.rejects(ask(busy), (e: unknown) => e instanceof MoveRequestError && /locked by failover@b:1.*try again/.test((e as Error).message));
    assert.equal((await cat.getProject(busy))!.operation, null, 'nothing written');
    assert.deepEqual((await cat.listRequests('a')).includes(busy), false);
  });

  it('followMove reports each change and ends with the outcome the performer wrote', async () => {
    const id = await project();
    const r = await ask(id);
    const seen: string[] = [];
    const performer = (async () => {
      for (const [phase, step] of [['running', 'taken up'], ['running', 'pre-sync round 1'], ['done', 'moved from a to b']] as const) {
        await new Promise((res) => setTimeout(res, 30));
        await cat.putProgress(id, { id: r.id, kind: 'move', from: 'a', to: 'b', phase, step, bytes: 0, estimate: null, elapsedMs: 0, updatedAt: now() });
      }
    })();
    const out = await followMove(cat, id, r.id, { pickupTimeoutMs: 60_000, owner: 'x@c:1', pollMs: 10, onProgress: (p) => seen.push(p.step) });
    await performer;
    assert.equal(out.phase, 'done');
    assert.deepEqual(seen.slice(-3), ['taken up', 'pre-sync round 1', 'moved from a to b']);
  });

  it('a request nobody takes up is withdrawn after the pickup timeout: the row as before, the entry gone', async () => {
    const id = await project();
    const r = await ask(id);
    const out = await followMove(cat, id, r.id, { pickupTimeoutMs: 50, owner: 'x@c:1', pollMs: 20 });
    assert.equal(out.phase, 'not-taken-up');
    assert.match((out as { detail: string }).detail, /did not take the request up .*is storage-agent running there\?.*move --here/);
    const p = (await cat.getProject(id))!;
    assert.deepEqual([p.primary, p.state, p.operation], ['a', 'active', null]);
    assert.deepEqual(await cat.listRequests('a'), (await cat.listRequests('a')).filter((x) => x !== id));
    assert.equal((await cat.getProgress(id)).progress?.phase, 'cancelled');
  });

  it('a request its performer reports queued (its slots are busy) is not withdrawn by the pickup timeout', async () => {
    const id = await project();
    const r = await ask(id);
    await cat.putProgress(id, { id: r.id, kind: 'move', from: 'a', to: 'b', phase: 'queued', step: 'queued on a: 2 moves running', bytes: 0, estimate: null, elapsedMs: 0, updatedAt: now() });
    setTimeout(() => void cat.putProgress(id, { id: r.id, kind: 'move', from: 'a', to: 'b', phase: 'done', step: 'moved', bytes: 0, estimate: null, elapsedMs: 0, updatedAt: now() }), 400);
    const out = await followMove(cat, id, r.id, { pickupTimeoutMs: 50, owner: 'x@c:1', pollMs: 20 });
    assert.equal(out.phase, 'done');
  });

  it('cancel: withdraws a request not taken up; asks the performer of a running one; too late after the switch', async () => {
    const id = await project();
    const r = await ask(id);
    assert.equal((await cancelMove(cat, id, 'cancel@c:1')).kind, 'withdrawn');
    assert.equal((await cat.getProject(id))!.operation, null);
    assert.deepEqual((await cancelMove(cat, id, 'cancel@c:1')).kind, 'none');
    // taken up: the performer holds the lease and recorded the move
    const r2 = await ask(id);
    assert.notEqual(r2.id, r.id);
    const lease = await cat.acquireLock(projectLockName(id), 'agent-move@a:1', 60_000);
    assert.ok(lease.ok);
    await cat.setLocation(id, 'a', 'moving', lease.token, { ...(await cat.getProject(id))!.operation!, step: 'recorded', token: lease.token });
    const c = await cancelMove(cat, id, 'cancel@c:1');
    assert.equal(c.kind, 'asked');
    assert.equal((await cat.getProgress(id)).cancel, r2.id, 'the performer sees the cancel of its request');
    await cat.setLocation(id, 'b', 'moving', lease.token, { ...(await cat.getProject(id))!.operation!, step: 'switched' });
    assert.equal((await cancelMove(cat, id, 'cancel@c:1')).kind, 'too-late');
  });
});

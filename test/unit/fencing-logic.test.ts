// Pure parts of fencing: the crash points named in OPERATION_STEPS are exactly those in
// the code; operation rows are validated; the lease check refuses after a pause and after
// a takeover; the clock skew rule.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { OPERATION_STEPS } from '../../src/util/crash-point.js';
import { checkOperation, CatalogError, type ProjectOperation } from '../../src/catalog/types.js';
import { SqliteCatalog } from '../../src/catalog/sqlite.js';
import { LeaseLostError, withProjectLease } from '../../src/lock/lease.js';
import { skewTooLarge } from '../../src/agent/clock.js';
import { checkTarget } from '../../src/agent/failover.js';
import { healTargets, placeReplicas } from '../../src/agent/placement.js';
import type { HostRecord } from '../../src/catalog/types.js';

const srcDir = fileURLToPath(new URL('../../../src/agent/', import.meta.url));

describe('crash points', () => {
  it('every step listed is a crash point in its operation, and every crash point is listed', () => {
    for (const [op, steps] of Object.entries(OPERATION_STEPS)) {
      const code = readFileSync(`${srcDir}${op}.ts`, 'utf8');
      const inCode = [...code.matchAll(new RegExp(`crashPoint\\('${op}', '([a-z-]+)'\\)`, 'g'))].map((m) => m[1]);
      for (const s of steps) assert.ok(inCode.includes(s), `${op}:${s} is listed but ${op}.ts never reaches it`);
      for (const s of inCode) assert.ok((steps as readonly string[]).includes(s!), `${op}.ts has crash point ${s} not in OPERATION_STEPS`);
    }
  });
});

describe('operation rows', () => {
  const ok: ProjectOperation = { kind: 'failover', from: 'a', to: 'b', snapshot: 'auto-2026-12-02T08:00:00Z', guid: '123', creation: 1, token: 4, startedAt: 5, step: 'recorded' };
  it('accepts a well-formed operation and refuses what is not', () => {
    assert.deepEqual(checkOperation(ok, 'row'), ok);
    assert.throws(() => checkOperation({ ...ok, kind: 'explode' }, 'row'), /row: operation has an unknown kind/);
    assert.throws(() => checkOperation({ ...ok, guid: 'x; rm' }, 'row'), /malformed guid/);
    assert.throws(() => checkOperation({ ...ok, to: '../etc' }, 'row'), /operation to/);
    assert.deepEqual(checkOperation({ ...ok, extra: 1 }, 'row'), ok, 'a field a newer version added is dropped, not refused');
    assert.throws(() => checkOperation({ ...ok, guid: null }, 'row'), /failover without the snapshot and guid/);
    assert.throws(() => checkOperation({ ...ok, to: 'a' }, 'row'), /from a host to itself/);
    assert.throws(() => checkOperation({ ...ok, step: 'promoted' }, 'row'), /step other than requested, recorded or switched/);
    assert.throws(() => checkOperation({ ...ok, mode: 'rollback' }, 'row'), /restore fields on a non-restore/);
    assert.throws(() => checkOperation([], 'row'), CatalogError);
  });
  it('is stored with the location in one write, and read back', async () => {
    const c = new SqliteCatalog(':memory:');
    await c.createProject({ id: '1b4e28ba-2fa1-11d2-883f-0016d3cca427', primary: 'a', replicationFactor: 1, quota: null });
    const l = await c.acquireLock('project:1b4e28ba-2fa1-11d2-883f-0016d3cca427', 'x@a:1', 60_000);
    assert.ok(l.ok);
    await c.setLocation('1b4e28ba-2fa1-11d2-883f-0016d3cca427', 'b', 'failing-over', l.token, { ...ok, token: l.token });
    const p = await c.getProject('1b4e28ba-2fa1-11d2-883f-0016d3cca427');
    assert.deepEqual([p!.primary, p!.state, p!.operation], ['b', 'failing-over', { ...ok, token: l.token }]);
    await assert.rejects(c.setLocation('1b4e28ba-2fa1-11d2-883f-0016d3cca427', 'b', 'active', l.token, { ...ok, step: 'BAD' } as unknown as ProjectOperation), /step other than requested, recorded or switched/);
    await c.close();
  });
});

describe('lease check before an irreversible step', () => {
  const P = '2b4e28ba-2fa1-11d2-883f-0016d3cca427';
  it('passes while held; refuses after the lease ran out by the monotonic clock (a pause), naming the step', async () => {
    const c = new SqliteCatalog(':memory:');
    await withProjectLease(c, P, 'op@a:1', 400, async (lease) => {
      await lease.check('promote');
      // a pause: the event loop blocked past the lease (as SIGSTOP would)
      const until = performance.now() + 450;
      while (performance.now() < until);
      await assert.rejects(lease.check('promote on b'), (e: Error) => e instanceof LeaseLostError && /not doing "promote on b": lease \d+ has -?\d+ ms left by this process's clock/.test(e.message));
    });
    await c.close();
  });
  it('refuses when the lock row names another holder', async () => {
    const c = new SqliteCatalog(':memory:');
    await withProjectLease(c, P, 'op@a:1', 60_000, async (lease) => {
      await c.releaseLock(`project:${P}`, 'op@a:1', lease.token);
      const other = await c.acquireLock(`project:${P}`, 'other@b:2', 60_000);
      assert.ok(other.ok);
      await assert.rejects(lease.check('switch'), /the lock row names other@b:2/);
    });
    await c.close();
  });
});

describe('clock skew', () => {
  it('too large only beyond the bound even with the round trip in its favour', () => {
    assert.equal(skewTooLarge({ skewMs: 1900, roundTripMs: 10 }, 2000), false);
    assert.equal(skewTooLarge({ skewMs: -2100, roundTripMs: 10 }, 2000), true);
    assert.equal(skewTooLarge({ skewMs: 2100, roundTripMs: 400 }, 2000), false, 'a slow read cannot prove the skew');
  });
});

describe('placement heals', () => {
  const NOW = 10_000_000;
  const h = (id: string, dc: string, beat: number | null = NOW): HostRecord => ({ id, datacenter: dc, address: 'x', port: 22, root: 'r', heartbeatAt: beat, load: 0, replicationKey: null, draining: false });
  const hosts = [h('a', 'dc1'), h('b', 'dc2', NOW - 7_200_000), h('c', 'dc3'), h('d', 'dc2')];
  const base = { primary: hosts[0]!, factor: 1, hosts, now: NOW, replaceAfterMs: 3_600_000, isLive: (x: HostRecord) => x.heartbeatAt !== null && NOW - x.heartbeatAt < 60_000 };
  it('adds a live replacement next to a target dead past the limit, and keeps the dead one until the new is confirmed', () => {
    assert.deepEqual(healTargets({ ...base, targets: ['b'], confirmed: new Set(['b']) }), { targets: ['b', 'c'], added: ['c'], released: [] });
    assert.deepEqual(healTargets({ ...base, targets: ['b', 'c'], confirmed: new Set(['b']) }), { targets: ['b', 'c'], added: [], released: [] }, 'c not confirmed yet: b stays');
    assert.deepEqual(healTargets({ ...base, targets: ['b', 'c'], confirmed: new Set(['c']) }), { targets: ['c'], added: [], released: ['b'] });
  });
  it('leaves a target dead for less than the limit alone, and a host unknown to the catalog counts as dead', () => {
    assert.deepEqual(healTargets({ ...base, replaceAfterMs: 3 * 3_600_000, targets: ['b'], confirmed: new Set(['b']) }).added, []);
    assert.deepEqual(healTargets({ ...base, targets: ['gone'], confirmed: new Set() }).added, ['c']);
  });
  it('replaces a draining target at once (alive or not), never places on a draining host, and releases it only once the replacement is confirmed', () => {
    const drained = hosts.map((x) => (x.id === 'c' ? { ...x, draining: true } : x));
    const d = { ...base, hosts: drained };
    assert.deepEqual(healTargets({ ...d, targets: ['c'], confirmed: new Set(['c']) }), { targets: ['c', 'd'], added: ['d'], released: [] }, 'c is live but draining: d added next to it');
    assert.deepEqual(healTargets({ ...d, targets: ['c', 'd'], confirmed: new Set(['c']) }).released, [], 'd not confirmed yet');
    assert.deepEqual(healTargets({ ...d, targets: ['c', 'd'], confirmed: new Set(['d']) }), { targets: ['d'], added: [], released: ['c'] });
    assert.deepEqual(healTargets({ ...d, targets: [], confirmed: new Set() }).added, ['d'], 'a new replica never goes to the draining host');
    assert.ok(!placeReplicas({ primary: drained[0]!, current: [], factor: 3, hosts: drained, isLive: base.isLive }).includes('c'));
  });
});

describe('the failover target checked before its promote', () => {
  const s = (snap: string, guid: string, createtxg: number) => ({ snap, guid, createtxg, creation: 1_000 + createtxg });
  it('promotes at the chosen snapshot, or at a newer one of the same lineage; refuses a history without it', () => {
    const snaps = [s('auto-1', '11', 10), s('auto-2', '22', 20)];
    assert.deepEqual(checkTarget({ guid: '22' }, snaps), { kind: 'as-chosen' });
    assert.deepEqual(checkTarget({ guid: '11' }, snaps), { kind: 'newer', snapshot: 'auto-2', guid: '22', creation: 1_020, since: 1 });
    assert.deepEqual(checkTarget({ guid: '11' }, [snaps[1]!, snaps[0]!, s('auto-3', '33', 30)]), { kind: 'newer', snapshot: 'auto-3', guid: '33', creation: 1_030, since: 2 }, 'by createtxg, not listing order');
    assert.deepEqual(checkTarget({ guid: '99' }, snaps), { kind: 'not-in-history', newest: 'auto-2 (guid 22)' });
    assert.deepEqual(checkTarget({ guid: '99' }, []), { kind: 'not-in-history', newest: null });
    assert.deepEqual(checkTarget({ guid: '11' }, undefined), { kind: 'already-promoted' }, 'no replica listed: an earlier run renamed it');
  });
});

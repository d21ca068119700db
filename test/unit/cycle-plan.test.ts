// The cycle's pure decisions (agent/cycle-plan.ts), the state cache (a real SQLite file
// in memory), the scoped listing grammar and the cheap listing parsers: plain values in,
// plain values out.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { pairAction, decidePairs, auditSlice, freshnessAsOf, newestShared, type PairKnowledge } from '../../src/agent/cycle-plan.js';
import { StateCache, type Snap } from '../../src/agent/state.js';
import { parseRemoteCommand, formatRemoteCommand, LIST_MAX, RefusedCommand } from '../../src/replica/protocol.js';
import { parseCheapGetRows, parseCheapListRows } from '../../src/zfs/parse.js';

const T0 = 1_764_000_000;
const snap = (name: string, guid: string, txg: number): Snap => ({ snap: name, guid, createtxg: txg, creation: T0 + txg });
const id = (n: number) => `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`;

describe('cycle plan: the action per (project, target) from the cache alone', () => {
  const k = (over: Partial<PairKnowledge>): PairKnowledge => ({ project: id(1), target: 'b', localNewest: snap('s2', '2', 2), remote: { newest: snap('s2', '2', 2), resumable: false }, ...over });
  it('in sync costs nothing; an unknown target is listed first; a moved source is planned', () => {
    assert.equal(pairAction(k({})), 'in-sync');
    assert.equal(pairAction(k({ remote: undefined })), 'list-target');
    assert.equal(pairAction(k({ remote: { newest: snap('s1', '1', 1), resumable: false, stale: true } })), 'list-target', 'a send to it failed: asked again first');
    assert.equal(pairAction(k({ remote: { newest: snap('s1', '1', 1), resumable: false } })), 'plan');
    assert.equal(pairAction(k({ remote: { newest: undefined, resumable: false } })), 'plan', 'absent on the target: a full send is planned');
    assert.equal(pairAction(k({ localNewest: undefined })), 'no-source-snapshot');
  });
  it('a partial receive waiting is planned even when the newest matches; a reported conflict is not re-planned until the source moves', () => {
    assert.equal(pairAction(k({ remote: { newest: snap('s2', '2', 2), resumable: true } })), 'plan');
    const behind = { newest: snap('x', '9', 1), resumable: false };
    assert.equal(pairAction(k({ remote: behind, conflictAt: '2' })), 'conflict-pending');
    assert.equal(pairAction(k({ remote: behind, conflictAt: '1' })), 'plan', 'the source moved on since the conflict');
  });
  it('decidePairs: incremental with its base and target, full, up to date, conflict, nothing', () => {
    const src = [snap('s1', '1', 1), snap('s2', '2', 2), snap('s3', '3', 3)];
    const [inc, full, same, conflict, nothing] = decidePairs(
      [
        { project: id(1), target: 'b', source: src, remote: { snapshots: [snap('s1', '1', 1)], listedAt: 0 } },
        { project: id(2), target: 'b', source: src, remote: null },
        { project: id(3), target: 'b', source: src, remote: { snapshots: src, listedAt: 0 } },
        { project: id(4), target: 'b', source: src, remote: { snapshots: [snap('zz', '77', 1)], listedAt: 0 } },
        { project: id(5), target: 'b', source: [], remote: null },
      ],
      T0 + 100,
    );
    assert.equal(inc!.kind, 'send');
    if (inc!.kind === 'send') {
      assert.equal(inc!.plan.kind, 'incremental');
      assert.equal(inc!.baseSnap, 's1');
      assert.equal(inc!.toSnap?.snap, 's3');
      assert.equal(inc!.lagSec, 99);
    }
    assert.equal(full!.kind === 'send' && full!.plan.kind, 'full');
    assert.equal(full!.kind === 'send' && full!.lagSec, Number.POSITIVE_INFINITY, 'nothing on the target: most lagging');
    assert.equal(same!.kind, 'confirm');
    assert.equal(conflict!.kind, 'conflict');
    assert.equal(nothing!.kind, 'nothing');
  });
  it('newestShared matches by guid, never by name', () => {
    assert.equal(newestShared([snap('a', '1', 1), snap('b', '2', 2)], [snap('b', '9', 5), snap('a', '1', 1)])?.snap, 'a');
    assert.equal(newestShared([snap('a', '1', 1)], [snap('a', '2', 1)]), undefined);
  });
});

describe('cycle plan: the audit slice and the one definition of lag', () => {
  it('the slice is the longest-unlisted datasets, never-listed first, `count` of them', () => {
    const at = new Map([['p/c', 30], ['p/a', 10], ['p/new', 0], ['p/b', 20]]);
    assert.deepEqual(auditSlice(at, { count: 2 }), ['p/new', 'p/a']);
    assert.deepEqual(auditSlice(at, { count: 0 }), []);
    assert.deepEqual(auditSlice(at, { count: 9 }), ['p/new', 'p/a', 'p/b', 'p/c']);
  });
  it('freshness: now when the target holds the unchanged source\'s newest; else the creation of the target\'s newest; null when it holds none', () => {
    const now = T0 + 1000;
    assert.equal(freshnessAsOf({ nowSec: now, sourceNewestGuid: '2', sourceChanged: false, targetNewest: { guid: '2', creation: T0 } }), now);
    assert.equal(freshnessAsOf({ nowSec: now, sourceNewestGuid: '2', sourceChanged: true, targetNewest: { guid: '2', creation: T0 } }), T0, 'written since: as old as its newest snapshot');
    assert.equal(freshnessAsOf({ nowSec: now, sourceNewestGuid: '3', sourceChanged: false, targetNewest: { guid: '2', creation: T0 } }), T0);
    assert.equal(freshnessAsOf({ nowSec: now, sourceNewestGuid: undefined, sourceChanged: false, targetNewest: { guid: '2', creation: T0 } }), T0);
    assert.equal(freshnessAsOf({ nowSec: now, sourceNewestGuid: '2', sourceChanged: false, targetNewest: undefined }), null);
    // in sync, but the target was last seen up 300 s ago (its connection went quiet): fresh as of then
    assert.equal(freshnessAsOf({ nowSec: now, sourceNewestGuid: '2', sourceChanged: false, targetNewest: { guid: '2', creation: T0 }, targetSeenAt: now - 300 }), now - 300);
    assert.equal(freshnessAsOf({ nowSec: now, sourceNewestGuid: '2', sourceChanged: false, targetNewest: { guid: '2', creation: T0 }, targetSeenAt: T0 - 50 }), T0, 'never older than its own newest snapshot');
    assert.equal(freshnessAsOf({ nowSec: now, sourceNewestGuid: '2', sourceChanged: false, targetNewest: { guid: '2', creation: T0 }, targetSeenAt: now + 60 }), now, 'never in the future');
  });
});

describe('state cache (SQLite)', () => {
  it('keeps listings, the newest per dataset, what targets hold; survives a reopen', () => {
    const path = `/tmp/state-unit-${process.pid}-${Date.now()}.db`;
    const c = new StateCache(path);
    c.putListings(new Map([['t/p/x', [snap('s2', '2', 2), snap('s1', '1', 1)]], ['t/p/y', []]]), 1000);
    assert.equal(c.newestOf('t/p/x')?.snap, 's2', 'newest by createtxg, whatever the order listed');
    assert.equal(c.knows('t/p/y'), true);
    assert.equal(c.newestOf('t/p/y'), undefined);
    assert.equal(c.knows('t/p/z'), false);
    assert.deepEqual(c.snapshots('t/p/x').map((s) => s.snap), ['s1', 's2']);
    assert.equal(c.creationOf('t/p/x', 's1', '1'), T0 + 1);
    assert.equal(c.creationOf('t/p/x', 's1', 'other-guid'), undefined, 'a known creation is only reused for the same guid');
    c.putRemotes([{ project: id(1), target: 'b', view: { snapshots: [snap('s1', '1', 1)] } }, { project: id(2), target: 'b', view: null }], 2000);
    assert.equal(c.remoteSummary(id(1), 'b')?.newest?.guid, '1');
    assert.equal(c.remote(id(2), 'b'), undefined);
    assert.equal(c.remoteSummary(id(2), 'b')?.newest, undefined, 'absent on the target is known too');
    c.removeSnapshots('t/p/x', ['s2']);
    assert.equal(c.newestOf('t/p/x')?.snap, 's1');
    c.close();
    const again = new StateCache(path);
    assert.equal(again.newestOf('t/p/x')?.snap, 's1');
    assert.equal(again.listedAtOf('t/p/x'), 1000);
    assert.equal(again.remoteSummary(id(1), 'b')?.newest?.snap, 's1');
    again.forget('t/p/x');
    assert.equal(again.knows('t/p/x'), false);
    again.close();
  });

  it('a project served here under a new location token (moved or failed over, maybe back) has its targets listed again, also after a reopen', () => {
    // found by the 60-minute chaos run: a project failed over away and back kept "c holds
    // guid G" from before, while c had served it and set its copy aside: never sent again
    const path = `/tmp/state-unit-loc-${process.pid}-${Date.now()}.db`;
    const c = new StateCache(path);
    c.putRemotes([{ project: id(1), target: 'c', view: { snapshots: [snap('s1', '1', 1)] } }, { project: id(2), target: 'c', view: { snapshots: [snap('s1', '1', 1)] } }], 1000);
    assert.deepEqual(c.seenAt([{ id: id(1), locationToken: 4 }, { id: id(2), locationToken: 7 }]), [], 'first sight: nothing to drop');
    assert.deepEqual(c.seenAt([{ id: id(1), locationToken: 4 }, { id: id(2), locationToken: 7 }]), [], 'unchanged');
    assert.equal(pairAction({ project: id(1), target: 'c', localNewest: snap('s1', '1', 1), remote: c.remoteSummary(id(1), 'c') }), 'in-sync');
    assert.deepEqual(c.seenAt([{ id: id(1), locationToken: 9 }, { id: id(2), locationToken: 7 }]), [id(1)]);
    assert.equal(pairAction({ project: id(1), target: 'c', localNewest: snap('s1', '1', 1), remote: c.remoteSummary(id(1), 'c') }), 'list-target');
    assert.equal(c.remoteSummary(id(2), 'c')?.newest?.guid, '1', 'the other project keeps its knowledge');
    c.close();
    const again = new StateCache(path);
    assert.equal(again.remoteSummary(id(1), 'c'), undefined, 'dropped for good');
    assert.deepEqual(again.seenAt([{ id: id(1), locationToken: 9 }]), [], 'the token survives a reopen');
    assert.deepEqual(again.seenAt([{ id: id(2), locationToken: 8 }]), [id(2)]);
    again.close();
  });
});

describe('scoped listings: grammar and parsers', () => {
  it('list takes up to LIST_MAX distinct project ids; more, duplicates or a bad id are refused', () => {
    assert.deepEqual(parseRemoteCommand('storage-v1 list'), { op: 'list' });
    assert.deepEqual(parseRemoteCommand(`storage-v1 list ${id(1)} ${id(2)}`), { op: 'list', projects: [id(1), id(2)] });
    const many = Array.from({ length: LIST_MAX }, (_, i) => id(i));
    assert.equal(parseRemoteCommand(formatRemoteCommand({ op: 'list', projects: many })).op, 'list');
    assert.throws(() => parseRemoteCommand(`storage-v1 list ${[...many, id(999)].join(' ')}`), RefusedCommand);
    assert.throws(() => parseRemoteCommand(`storage-v1 list ${id(1)} ${id(1)}`), /twice/);
    assert.throws(() => parseRemoteCommand(`storage-v1 list ${id(1)} ../etc`), RefusedCommand);
    assert.deepEqual(parseRemoteCommand(`storage-v1 rollback-head ${id(3)}`), { op: 'rollback-head', project: id(3) });
    assert.deepEqual(parseRemoteCommand(`storage-v1 keep-aside ${id(3)} 42`), { op: 'keep-aside', project: id(3), guid: '42' });
    assert.throws(() => parseRemoteCommand(`storage-v1 keep-aside ${id(3)}`), /takes 2 argument/);
    assert.throws(() => parseRemoteCommand(`storage-v1 keep-aside ${id(3)} 4x2`), RefusedCommand);
  });
  it('parses the cheap listings of OpenZFS (list -o name,guid,createtxg) and zfs-fuse (get guid,createtxg), skipping the datasets\' own rows', () => {
    assert.deepEqual(parseCheapListRows('t/p/x@s1\t123\t7\nt/p/x@s2\t18446744073709551615\t9\n'), [
      { dataset: 't/p/x', snap: 's1', guid: '123', createtxg: 7 },
      { dataset: 't/p/x', snap: 's2', guid: '18446744073709551615', createtxg: 9 },
    ]);
    const get = 't/p/x\tguid\t1\nt/p/x\tcreatetxg\t2\nt/p/x@s1\tguid\t55\nt/p/x@s1\tcreatetxg\t3\n';
    assert.deepEqual(parseCheapGetRows(get), [{ dataset: 't/p/x', snap: 's1', guid: '55', createtxg: 3 }]);
    assert.throws(() => parseCheapListRows('t/p/x@s1\tnot-a-guid\t7\n'), /unexpected zfs snapshot row/);
    assert.throws(() => parseCheapGetRows('t/p/x@s1\tguid\t5\n'), /unexpected zfs snapshot row/, 'a row without its createtxg');
  });
});

describe('metrics: per-project series follow the projects served here', () => {
  it('a pair forgotten (project or target left this host) loses its lag series; the per-target aggregates stay', async () => {
    const { AgentMetrics } = await import('../../src/agent/metrics.js');
    const m = new AgentMetrics({ perProjectSeries: true, lagSloSeconds: 60, host: 'a' });
    m.replicaFreshness(id(1), 'b', Date.now() / 1000 - 30);
    m.replicaFreshness(id(2), 'b', Date.now() / 1000);
    let text = await m.registry.metrics();
    assert.match(text, new RegExp(`storage_replication_lag_seconds\\{[^}]*project="${id(1)}"`));
    m.forgetPair(id(1), 'b');
    text = await m.registry.metrics();
    assert.doesNotMatch(text, new RegExp(`project="${id(1)}"`));
    assert.match(text, new RegExp(`storage_replication_lag_seconds\\{[^}]*project="${id(2)}"`));
    assert.match(text, /storage_replication_lag_max_seconds\{[^}]*target="b"/);
    m.close();
  });
});

describe('scoped listings: name batches', () => {
  it('batches names by the bytes they add to argv, never splitting a name, none empty', async () => {
    const { nameBatches } = await import('../../src/zfs/adapter.js');
    const names = Array.from({ length: 10_000 }, (_, i) => `tank/projects/${id(i)}`);
    const batches = nameBatches(names);
    assert.deepEqual(batches.flat(), names);
    assert.ok(batches.length <= 5, `10,000 mounted projects in ${batches.length} zfs calls`);
    for (const b of batches) assert.ok(b.join(' ').length <= 128 * 1024);
    assert.deepEqual(nameBatches(['aaaa', 'bb', 'cc'], 6), [['aaaa'], ['bb', 'cc']]);
    assert.deepEqual(nameBatches([]), []);
  });
});

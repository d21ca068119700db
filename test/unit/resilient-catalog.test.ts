// The outage journal: reads fall back to the last view, freshness writes are journaled
// and replayed in order (the latest confirmation wins), fencing-sensitive writes fail. The backing store
// is a real SqliteCatalog behind a switch that makes every call fail while "down".
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { randomUUID } from 'node:crypto';
import { SqliteCatalog } from '../../src/catalog/sqlite.js';
import { ResilientCatalog } from '../../src/catalog/resilient.js';
import { CatalogError, type Catalog } from '../../src/catalog/types.js';

function switchable(inner: Catalog): { catalog: Catalog; down: (d: boolean) => void } {
  let isDown = false;
  const catalog = new Proxy(inner, {
    get(target, prop, recv) {
      const v = Reflect.get(target, prop, recv) as unknown;
      if (typeof v !== 'function' || prop === 'close') return v;
      return (...args: unknown[]) => (isDown ? Promise.reject(new CatalogError(`catalog unreachable (${String(prop)})`)) : (v as (...a: unknown[]) => unknown).apply(target, args));
    },
  });
  return { catalog, down: (d) => (isDown = d) };
}

describe('resilient catalog (outage journal)', () => {
  it('serves the last view, journals writes during an outage, and converges afterwards', async () => {
    const dir = mkdtempSync(`${tmpdir()}/resilient-`);
    const real = new SqliteCatalog(`${dir}/catalog.db`);
    const { catalog, down } = switchable(real);
    const errors: string[] = [];
    const rc = new ResilientCatalog(catalog, `${dir}/journal.db`, 0);
    rc.onError = (op) => errors.push(op);
    const id = randomUUID();
    await rc.upsertHost({ id: 'a', datacenter: 'dc1', address: '10.0.0.1', port: 22, root: 'p/r' });
    await rc.createProject({ id, primary: 'a', replicationFactor: 2, quota: null });
    const view = await rc.listProjectsByPrimary('a');
    assert.equal(view.length, 1);

    down(true);
    assert.deepEqual(await rc.listProjectsByPrimary('a'), view, 'last view while down');
    await rc.upsertReplica({ project: id, host: 'b', snapshot: 's1', guid: '1', snapshotCreation: 100, confirmedAt: 1 });
    await rc.upsertReplica({ project: id, host: 'b', snapshot: 's2', guid: '2', snapshotCreation: 200, confirmedAt: 2 });
    await rc.heartbeat('a', 3, 5);
    await rc.addEvent({ project: id, host: 'a', kind: 'x', detail: 'during outage' });
    assert.equal(rc.journaled(), 4);
    assert.equal(rc.status().degraded, true);
    await assert.rejects(rc.setLocation(id, 'b', 'active', 1, null), CatalogError, 'location changes are never journaled');
    await assert.rejects(rc.acquireLock('x', 'me', 1000), CatalogError);
    await assert.rejects(rc.listReplicas(id), CatalogError, 'no earlier view of this query');
    assert.ok(errors.length >= 4);

    down(false);
    const replicas = await rc.listReplicas(id); // the first call after the outage flushes
    assert.equal(rc.journaled(), 0);
    assert.equal(rc.status().degraded, false);
    assert.deepEqual(replicas.map((r) => [r.host, r.snapshot, r.guid]), [['b', 's2', '2']]);
    assert.equal((await real.getHost('a'))!.load, 3);
    assert.equal((await real.listEvents({ project: id })).length, 1);
    // a replay of an earlier confirmation cannot overwrite a later one (the latest wins)
    await real.upsertReplica({ project: id, host: 'b', snapshot: 's3', guid: '3', snapshotCreation: 300, confirmedAt: 9 });
    await real.upsertReplica({ project: id, host: 'b', snapshot: 's2', guid: '2', snapshotCreation: 200, confirmedAt: 2 });
    assert.equal((await real.listReplicas(id))[0]!.guid, '3');
    await rc.close();
  });
});

// chooseDestination: where `storagectl move <project>` (no host) and `drain` send a project.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chooseDestination } from '../../src/agent/move-destination.js';
import type { HostRecord, ReplicaRecord } from '../../src/catalog/types.js';

const H = (id: string, dc: string, load = 0, o: Partial<HostRecord> = {}): HostRecord => ({ id, datacenter: dc, address: 'x', port: 22, root: 'r', heartbeatAt: 1, load, replicationKey: null, draining: false, ...o });
const R = (host: string, snapshot = 'auto-1'): ReplicaRecord => ({ project: 'p', host, snapshot, guid: '1', snapshotCreation: 1, confirmedAt: 1 });
const isLive = (h: HostRecord) => h.heartbeatAt !== null;
const a = H('a', 'dc1');

describe('move destination', () => {
  it('a host of another datacenter holding a replica comes first, even when more loaded', () => {
    const hosts = [a, H('b', 'dc2', 50), H('c', 'dc3', 1), H('d', 'dc2', 0)];
    assert.deepEqual(chooseDestination({ primary: a, hosts, isLive, replicas: [R('b', 's9')] }), { host: 'b', reason: 'holds-replica', snapshot: 's9' });
  });
  it('ties among replica holders go to the least loaded, planned moves counted, then the id', () => {
    const hosts = [a, H('b', 'dc2', 5), H('c', 'dc3', 5)];
    assert.equal(chooseDestination({ primary: a, hosts, isLive, replicas: [R('b'), R('c')] }).host, 'b');
    assert.equal(chooseDestination({ primary: a, hosts, isLive, replicas: [R('b'), R('c')], planned: new Map([['b', 1]]) }).host, 'c');
  });
  it('a replica in the primary datacenter does not count; dead and draining hosts are never chosen', () => {
    const hosts = [a, H('a2', 'dc1', 0), H('b', 'dc2', 9, { heartbeatAt: null }), H('c', 'dc3', 1, { draining: true }), H('d', 'dc2', 3)];
    assert.deepEqual(chooseDestination({ primary: a, hosts, isLive, replicas: [R('a2'), R('b'), R('c')] }), { host: 'a2', reason: 'least-loaded' });
  });
  it('without a replica holder: the least-loaded live host of the allowed datacenters', () => {
    const hosts = [a, H('b', 'dc2', 4), H('c', 'dc3', 2), H('d', 'dc2', 1)];
    assert.deepEqual(chooseDestination({ primary: a, hosts, isLive, replicas: [] }), { host: 'd', reason: 'least-loaded' });
    assert.deepEqual(chooseDestination({ primary: a, hosts, isLive, replicas: [R('d')], datacenters: ['dc3'] }), { host: 'c', reason: 'least-loaded' });
  });
  it('nobody can take it: says why for each host', () => {
    const r = chooseDestination({ primary: a, hosts: [a, H('b', 'dc2', 0, { heartbeatAt: null }), H('c', 'dc3', 0, { draining: true })], isLive, replicas: [] });
    assert.deepEqual(r, { host: null, why: 'no host can take it (b: not live; c: draining)' });
    assert.match((chooseDestination({ primary: a, hosts: [a], isLive, replicas: [] }) as { why: string }).why, /no other host/);
  });
});

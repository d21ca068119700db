// The receiver's trust decisions, pure: who may run which operation (authorize.ts), what a
// stream may bring (stream-policy.ts), lease owners naming their host, the generated
// authorized_keys lines, the per-peer receive slots and the facts cache's staleness rules.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { authorize, type AuthFacts } from '../../src/replica/authorize.js';
import { checkStream, propertiesToReset, RECV_EXCLUDE, REPLICA_OVERRIDES, DENIED_PROPERTIES, VOLUME_ONLY } from '../../src/replica/stream-policy.js';
import { leaseOwner, ownerHost } from '../../src/lock/lease.js';
import { authorizedKeyLines, mergeBlock, BEGIN, END } from '../../src/cli/authorized-keys.js';
import { acquireSlot } from '../../src/replica/receive-slots.js';
import { FactSource, type FactCatalog } from '../../src/replica/auth-facts.js';
import { parseServeArgs } from '../../src/cli/serve-ssh.js';
import type { HostRecord, LockRow, ProjectRecord } from '../../src/catalog/types.js';
import { parseResumeTokenContents } from '../../src/zfs/parse.js';
import { resumeTokenProblem } from '../../src/agent/cycle-plan.js';
import type { StreamHeader } from '../../src/replica/stream-header.js';
import type { RemoteCommand } from '../../src/replica/protocol.js';

const P = '1b4e28ba-2fa1-11d2-883f-0016d3cca427';
const Q = '2b4e28ba-2fa1-11d2-883f-0016d3cca427';
const KEY_A = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl';
const KEY_C = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBUuhuk8Y8dh9uNsVSnVNMDWEeSMdTGgGGkKdwlmBqA3';
const host = (id: string, key: string | null = null): HostRecord => ({ id, datacenter: 'dc', address: '10.0.0.1', port: 22, root: 'x', heartbeatAt: 1, load: 0, replicationKey: key, draining: false });
const project = (over: Partial<ProjectRecord> = {}): ProjectRecord => ({ id: P, primary: 'a', replicationFactor: 1, quota: null, state: 'active', targets: ['b'], targetsVersion: 0, locationToken: 0, createdAt: 0, operation: null, ...over });
const NOW = 1_000_000;
const lease = (owner: string | null, token = 5, expiresAt = NOW + 60_000): LockRow => ({ owner, token, expiresAt });

function facts(peer: string, o: { self?: string; p?: ProjectRecord | null; lock?: LockRow; key?: string; registered?: string | null } = {}): AuthFacts {
  const p = o.p === undefined ? project() : o.p;
  return {
    self: o.self ?? 'b',
    peer,
    peerRecord: ['a', 'b', 'c'].includes(peer) ? host(peer, o.registered ?? null) : undefined,
    presentedKey: o.key,
    projects: new Map(p ? [[p.id, p]] : []),
    locks: new Map(o.lock ? [[P, o.lock]] : []),
    now: NOW,
  };
}

const refused = (cmd: RemoteCommand, f: AuthFacts, why: RegExp) => {
  const d = authorize(cmd, f);
  assert.equal(d.ok, false, `${JSON.stringify(cmd)} by ${f.peer} must be refused`);
  assert.match((d as { reason: string }).reason, why);
};
const allowed = (cmd: RemoteCommand, f: AuthFacts) => assert.deepEqual(authorize(cmd, f), { ok: true }, JSON.stringify(cmd));

describe('authorize: a peer acts only on the projects the catalog gives it', () => {
  it('an unknown peer is refused everything, capabilities included', () => {
    refused({ op: 'capabilities' }, facts('ghost'), /peer ghost is not a host in the catalog/);
  });
  it('a key that is not the peer\'s registered one is refused (stale authorized_keys line)', () => {
    refused({ op: 'capabilities' }, facts('a', { registered: KEY_A, key: KEY_C }), /not its registered replication key/);
    allowed({ op: 'capabilities' }, facts('a', { registered: KEY_A, key: KEY_A }));
    allowed({ op: 'capabilities' }, facts('a', { registered: KEY_A })); // sshd did not say: the line's binding stands
  });
  it('recv, abort-resume, rollback-head: only from the primary, only into a target', () => {
    for (const op of ['recv', 'abort-resume', 'rollback-head'] as const) {
      allowed({ op, project: P }, facts('a'));
      refused({ op, project: P }, facts('c'), /c is not the primary of project .* \(the catalog names a\) and project .* has no live lease/);
      refused({ op, project: P }, facts('a', { self: 'c' }), /this host \(c\) is not a replica target/);
      refused({ op, project: P }, facts('a', { p: null }), /is not in the catalog/);
    }
  });
  it('the holder of the project\'s live lease may list and send to targets too (failover, move)', () => {
    allowed({ op: 'list', projects: [P] }, facts('c', { lock: lease(leaseOwner('storagectl-failover', 'c')) }));
    allowed({ op: 'recv', project: P }, facts('c', { lock: lease(leaseOwner('agent', 'c')) }));
    refused({ op: 'recv', project: P }, facts('c', { lock: lease(leaseOwner('agent', 'a')) }), /held by "agent@a:\d+", not by c/);
    refused({ op: 'recv', project: P }, facts('c', { lock: lease(leaseOwner('agent', 'c'), 5, NOW - 1000) }), /expired 1 s ago/);
    refused({ op: 'recv', project: P }, facts('c', { lock: lease(null) }), /no live lease/);
  });
  it('list: every named project must be the caller\'s', () => {
    allowed({ op: 'list' }, facts('c'));
    allowed({ op: 'list', projects: [P] }, facts('a'));
    refused({ op: 'list', projects: [P] }, facts('c'), /c is not the primary/);
    refused({ op: 'list', projects: [Q] }, facts('a'), /project 2b4e.* is not in the catalog/);
  });
  it('send (restore fetch): only to the primary', () => {
    allowed({ op: 'send', project: P, snap: 's' }, facts('a'));
    refused({ op: 'send', project: P, snap: 's' }, facts('c', { lock: lease(leaseOwner('agent', 'c')) }), /only the primary of project .* \(a\) may fetch/);
  });
  it('fence: only with the live fencing token of a lease the caller holds, never of the active primary here', () => {
    const failingOver = project({ primary: 'b', state: 'failing-over' });
    allowed({ op: 'fence', project: P, token: 5 }, facts('c', { self: 'a', p: failingOver, lock: lease(leaseOwner('storagectl-failover', 'c')) }));
    refused({ op: 'fence', project: P, token: 4 }, facts('c', { self: 'a', p: failingOver, lock: lease(leaseOwner('storagectl-failover', 'c')) }), /fencing token 4 is not the live lease's \(5\)/);
    refused({ op: 'fence', project: P, token: 5 }, facts('c', { self: 'a', p: failingOver, lock: lease(leaseOwner('storagectl-failover', 'b')) }), /held by .*@b:\d+", not by c/);
    refused({ op: 'fence', project: P, token: 5 }, facts('c', { self: 'a', p: failingOver }), /no live lease \(token 5 given\)/);
    refused({ op: 'fence', project: P, token: 5 }, facts('c', { self: 'a', lock: lease(leaseOwner('storagectl-failover', 'c')) }), /names this host \(a\) the active primary/);
  });
  it('keep-aside (a diverged replica): only the active primary, only on a target; never a lease holder', () => {
    allowed({ op: 'keep-aside', project: P, guid: '1' }, facts('a'));
    refused({ op: 'keep-aside', project: P, guid: '1' }, facts('c', { lock: lease(leaseOwner('agent', 'c')) }), /only the active primary of project .* \(a, active\) may have its replica kept aside, not c/);
    refused({ op: 'keep-aside', project: P, guid: '1' }, facts('a', { p: project({ state: 'moving' }) }), /\(a, moving\)/);
    refused({ op: 'keep-aside', project: P, guid: '1' }, facts('a', { self: 'c' }), /this host \(c\) is not a replica target/);
    refused({ op: 'keep-aside', project: P, guid: '1' }, facts('a', { p: null }), /is not in the catalog/);
  });
  it('promote: only with the live token, and only where the catalog already names this host', () => {
    const here = project({ primary: 'b', state: 'failing-over' });
    allowed({ op: 'promote', project: P, token: 5, guid: '1' }, facts('c', { p: here, lock: lease(leaseOwner('agent', 'c')) }));
    refused({ op: 'promote', project: P, token: 5, guid: '1' }, facts('c', { lock: lease(leaseOwner('agent', 'c')) }), /names a as the primary .* not this host \(b\)/);
    refused({ op: 'promote', project: P, token: 6, guid: '1' }, facts('c', { p: here, lock: lease(leaseOwner('agent', 'c')) }), /token 6/);
  });
});

describe('lease owners name their host', () => {
  it('round trip, and anything else names no host', () => {
    assert.equal(ownerHost(leaseOwner('storagectl-move', 'node-3.dc1', 42)), 'node-3.dc1');
    assert.equal(ownerHost('agent@a'), 'a');
    for (const bad of ['test', 'admin-1', 'x@A:1', '@a:1', 'agent@a:1:2', 'agent@a b', '']) assert.equal(ownerHost(bad), undefined, bad);
    assert.throws(() => leaseOwner('Bad Role', 'a'), /lease owner role/);
  });
});

const header = (over: Partial<StreamHeader> & { name?: string; props?: Record<string, string | number | boolean>; clone?: boolean } = {}): StreamHeader => ({
  kind: 'compound',
  topType: 'filesystem',
  toname: `pool/projects/${P}@s1`,
  datasets: [{ name: over.name ?? `pool/projects/${P}`, guid: '0x1', props: over.props ?? {}, snapshots: ['s1'], clone: over.clone ?? false }],
  featureflags: 0,
  compoundFeatureflags: 0,
  drrFlags: 0,
  toguid: '1',
  fromguid: '0',
  creationTime: 0,
  byteOrder: 'little',
  fromsnap: null,
  tosnap: 's1',
  recursive: true,
  raw: false,
  headerLength: 0,
  ...over,
});

describe('stream policy: data, never behaviour', () => {
  it('one filesystem, the project\'s own, may be received', () => {
    assert.equal(checkStream(header(), P, { canOverride: true }), undefined);
    assert.equal(checkStream(header({ topType: 'none' }), P, { canOverride: false }), undefined);
  });
  it('volumes, children, clones, other projects\' datasets are refused', () => {
    assert.match(checkStream(header({ topType: 'volume' }), P, { canOverride: true })!, /carries a volume/);
    const two = header();
    two.datasets.push({ name: `pool/projects/${P}/child`, guid: '0x2', props: {}, snapshots: [], clone: false });
    assert.match(checkStream(two, P, { canOverride: true })!, /carries 2 datasets .*\/child\): child datasets are not replicated/);
    assert.match(checkStream(header({ clone: true }), P, { canOverride: true })!, /clone/);
    assert.match(checkStream(header({ drrFlags: 1 }), P, { canOverride: true })!, /clone/);
    assert.match(checkStream(header({ name: `pool/projects/${Q}` }), P, { canOverride: true })!, /not of project/);
  });
  it('a mountpoint or a share is refused only where zfs cannot override it on receive', () => {
    assert.equal(checkStream(header({ props: { mountpoint: '/etc' } }), P, { canOverride: true }), undefined);
    assert.match(checkStream(header({ props: { mountpoint: '/etc' } }), P, { canOverride: false })!, /mountpoint="\/etc".*refused before anything could mount/);
    assert.match(checkStream(header({ props: { sharenfs: 'on' } }), P, { canOverride: false })!, /sharenfs="on".*before anything could be shared/);
    assert.equal(checkStream(header({ props: { sharenfs: 'off', exec: 0, refreservation: 1 << 20 } }), P, { canOverride: false }), undefined);
  });
  it('recv -o and -x never name the same property; every denied one is covered', () => {
    for (const p of RECV_EXCLUDE) assert.ok(!(p in REPLICA_OVERRIDES), p);
    for (const p of DENIED_PROPERTIES) assert.ok(RECV_EXCLUDE.includes(p) || p in REPLICA_OVERRIDES || VOLUME_ONLY.has(p), p);
  });
  it('what a replica and a promoted primary put back', () => {
    const src = (value: string, source: string) => ({ value, source });
    const props = new Map([
      ['sharenfs', src('on', 'received')],
      ['exec', src('on', 'local')],
      ['setuid', src('on', 'default')],
      ['refreservation', src('1000000', 'local')],
      ['reservation', src('none', 'default')],
      ['canmount', src('on', 'local')],
      ['mountpoint', src('/x', 'inherited from pool')],
      ['readonly', src('off', 'local')],
    ]);
    assert.deepEqual(propertiesToReset(props), { inherit: ['sharenfs', 'exec'], set: { refreservation: 'none', canmount: 'noauto', readonly: 'on' } });
    assert.deepEqual(propertiesToReset(props, { primary: true }), { inherit: ['sharenfs', 'exec', 'readonly'], set: { refreservation: 'none', canmount: 'noauto' } });
  });
});

describe('storagectl authorized-keys', () => {
  it('one restricted line per registered host, bound to its name; hosts without a key reported', () => {
    const r = authorizedKeyLines([host('c', KEY_C), host('a', KEY_A), host('b')], { storagectl: '/usr/bin/storagectl', config: '/etc/storage-agent/config.yaml' });
    assert.deepEqual(r.missing, ['b']);
    assert.deepEqual(r.lines, [
      `restrict,command="/usr/bin/storagectl --config /etc/storage-agent/config.yaml serve-ssh --peer a" ${KEY_A} storage-peer:a`,
      `restrict,command="/usr/bin/storagectl --config /etc/storage-agent/config.yaml serve-ssh --peer c" ${KEY_C} storage-peer:c`,
    ]);
    assert.throws(() => authorizedKeyLines([], { storagectl: '/x"; rm -rf /', config: '/c' }), /must be an absolute path/);
    assert.throws(() => authorizedKeyLines([], { storagectl: 'storagectl', config: '/c' }), /must be an absolute path/);
  });
  it('--write replaces only its block', () => {
    const admin = 'ssh-ed25519 AAAA admin@x';
    const once = mergeBlock(`${admin}\n`, ['l1', 'l2']);
    assert.equal(once, `${admin}\n${BEGIN}\nl1\nl2\n${END}\n`);
    assert.equal(mergeBlock(once + 'after\n', ['l3']), `${admin}\n${BEGIN}\nl3\n${END}\nafter\n`);
    assert.throws(() => mergeBlock(`${END}\n${BEGIN}\n`, []), /out of order/);
  });
});

describe('serve-ssh arguments', () => {
  it('takes --config and --peer in any order; anything else is not serve-ssh', () => {
    assert.deepEqual(parseServeArgs(['--config', '/c.yaml', 'serve-ssh', '--peer', 'node-3']), { config: '/c.yaml', peer: 'node-3' });
    assert.deepEqual(parseServeArgs(['serve-ssh', '--peer=a', '--config=/x']), { config: '/x', peer: 'a' });
    assert.equal(parseServeArgs(['serve-ssh', 'list']), undefined);
    assert.equal(parseServeArgs(['status']), undefined);
  });
});

describe('receive slots per peer', () => {
  it('at most N live sessions; a dead session\'s slot is taken over; release frees it', () => {
    const dir = mkdtempSync(`${tmpdir()}/slots-`);
    const s1 = acquireSlot(dir, 'a', 2, process.pid);
    const s2 = acquireSlot(dir, 'a', 2, process.ppid);
    assert.ok(s1 && s2);
    assert.equal(acquireSlot(dir, 'a', 2), null, 'a third concurrent receive of a is refused');
    assert.ok(acquireSlot(dir, 'b', 2), 'other peers are not affected');
    s1.release();
    const s3 = acquireSlot(dir, 'a', 2);
    assert.ok(s3);
    // a session that died without releasing: its pid no longer exists
    const dead = spawnSync('true').pid!;
    writeFileSync(`${dir}/a.0`, String(dead));
    s2.release();
    assert.ok(acquireSlot(dir, 'a', 2), 'the dead session\'s slot is taken over');
    assert.equal(readFileSync(`${dir}/a.0`, 'utf8'), String(process.pid));
  });
});

describe('receiver facts: bounded staleness', () => {
  const rows = { host: host('a'), project: project() };
  const catalogUp: FactCatalog = {
    getHost: async (id) => (id === 'a' ? rows.host : undefined),
    getProject: async (id) => (id === P ? rows.project : undefined),
    getLock: async () => lease(leaseOwner('agent', 'a')),
    listProjectsByPrimary: async () => [rows.project],
  };
  const down: FactCatalog = {
    getHost: async () => Promise.reject(new Error('catalog down')),
    getProject: async () => Promise.reject(new Error('catalog down')),
    getLock: async () => Promise.reject(new Error('catalog down')),
    listProjectsByPrimary: async () => Promise.reject(new Error('catalog down')),
  };
  it('fresh rows spare the catalog; stale rows authorize only the data path while it is down; locks are never cached', async () => {
    const file = `${mkdtempSync(`${tmpdir()}/facts-`)}/f.db`;
    let now = NOW;
    let calls = 0;
    let cat: FactCatalog = catalogUp;
    const counted = async () => {
      calls++;
      return cat;
    };
    const fs = new FactSource(counted, { cacheFile: file, freshMs: 30_000, staleMs: 900_000, now: () => now });
    const recv: RemoteCommand = { op: 'recv', project: P };
    const first = await fs.gather(recv, 'b', 'a', undefined);
    assert.equal(first.staleMs, 0);
    assert.ok(calls > 0);
    calls = 0;
    now += 10_000;
    await fs.gather(recv, 'b', 'a', undefined);
    assert.equal(calls, 0, 'rows younger than freshMs: no catalog call');
    // the catalog goes down: 5 minutes later, the data path still has its rows
    cat = down;
    now += 300_000;
    const stale = await fs.gather(recv, 'b', 'a', undefined);
    assert.equal(stale.staleMs, 310_000);
    assert.ok(authorize(recv, stale).ok);
    await assert.rejects(fs.gather({ op: 'send', project: P, snap: 's' }, 'b', 'a', undefined), /send is never authorized from cached rows/);
    await assert.rejects(fs.gather({ op: 'promote', project: P, token: 1, guid: '1' }, 'b', 'a', undefined), /never authorized from cached rows/);
    // past the staleness bound: refused (the error surfaces, the receiver fails closed)
    now += 600_001;
    await assert.rejects(fs.gather(recv, 'b', 'a', undefined), /catalog down/);
    // an unknown project is never cached: a project created later is seen at once
    cat = catalogUp;
    const unknown = await fs.gather({ op: 'recv', project: Q }, 'b', 'a', undefined);
    assert.equal(unknown.projects.size, 0);
    fs.close();
  });
  it('a refusal on cached rows can be checked on live ones (a failover just switched the primary)', async () => {
    const file = `${mkdtempSync(`${tmpdir()}/facts-`)}/f.db`;
    const row = { ...project() };
    const cat: FactCatalog = { ...catalogUp, getProject: async () => ({ ...row }), getHost: async (id) => host(id) };
    const fs = new FactSource(async () => cat, { cacheFile: file, now: () => NOW });
    const recv: RemoteCommand = { op: 'recv', project: P };
    assert.ok(authorize(recv, await fs.gather(recv, 'b', 'a', undefined)).ok);
    row.primary = 'c'; // moved to c meanwhile; b's cache still says a
    const cached = await fs.gather(recv, 'b', 'c', undefined);
    assert.equal(cached.cached, true);
    assert.equal(authorize(recv, cached).ok, false);
    const live = await fs.gather(recv, 'b', 'c', undefined, { live: true });
    assert.equal(live.cached, false);
    assert.ok(authorize(recv, live).ok, 'the new primary is allowed on the live row');
    // fence/promote/send never take the cached row
    const promote = await fs.gather({ op: 'promote', project: P, token: 5, guid: '1' }, 'b', 'c', undefined);
    assert.equal(promote.projects.get(P)!.primary, 'c');
    fs.close();
  });
  it('without a cache file every fact comes from the catalog', async () => {
    let calls = 0;
    const fs = new FactSource(async () => {
      calls++;
      return catalogUp;
    });
    await fs.gather({ op: 'recv', project: P }, 'b', 'a', undefined);
    await fs.gather({ op: 'recv', project: P }, 'b', 'a', undefined);
    assert.ok(calls >= 4);
  });
});

describe('resume tokens are used only for the project\'s own snapshots', () => {
  const text = ['resume token contents:', 'nvlist version: 0', '\tfromguid = 0x0', '\tobject = 0x4', '\toffset = 0x20000', '\tbytes = 0x1a2b0', '\ttoguid = 0x2e4a5b3c1d0f9e8a', `\ttoname = pool/projects/${P}@2026-12-02T05:00:00Z`, `full send of pool/projects/${P}@2026-12-02T05:00:00Z estimated size is 1.2M`].join('\n');
  it('decodes what zfs send -nv -t prints', () => {
    assert.deepEqual(parseResumeTokenContents(text), { toname: `pool/projects/${P}@2026-12-02T05:00:00Z`, toguid: BigInt('0x2e4a5b3c1d0f9e8a').toString() });
    assert.throws(() => parseResumeTokenContents('cannot resume send: invalid token'), /cannot read the resume token's contents/);
  });
  it('refuses a token naming another dataset, an unknown snapshot or another guid', () => {
    const guid = BigInt('0x2e4a5b3c1d0f9e8a').toString();
    const d = parseResumeTokenContents(text);
    const local = [{ snap: '2026-12-02T05:00:00Z', guid }];
    assert.equal(resumeTokenProblem(d, `pool/projects/${P}`, local), undefined);
    assert.match(resumeTokenProblem(d, `pool/projects/${Q}`, local)!, /not a snapshot of pool\/projects\/2b4e/);
    assert.match(resumeTokenProblem(d, `pool/projects/${P}`, [])!, /which this host does not have/);
    assert.match(resumeTokenProblem(d, `pool/projects/${P}`, [{ snap: '2026-12-02T05:00:00Z', guid: '1' }])!, /but that snapshot's guid is 1/);
  });
});

// Pure parts of the agent and the protocol: placement, config validation, the SSH
// command grammar, known_hosts pinning, the resume path's argv on OpenZFS.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { placeReplicas } from '../../src/agent/placement.js';
import { parseConfig, ConfigError, deadAfterMs, fenceBoundMs, selfFenceAfterMs, FENCE_ACTION_S } from '../../src/agent/config.js';
import { readMounts, servesHere } from '../../src/agent/agent.js';
import { parseRemoteCommand, formatRemoteCommand, RefusedCommand, checkListing } from '../../src/replica/protocol.js';
import { Meter } from '../../src/replica/transport.js';
import { parseKnownHosts, pinnedKeys } from '../../src/replica/known-hosts.js';
import { Zfs, CommandRunner, ZfsUnsupportedError, type RunOptions, type RunResult } from '../../src/zfs/index.js';
import type { HostRecord } from '../../src/catalog/types.js';
import { createHmac, generateKeyPairSync, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

const fixture = (name: string) => readFileSync(fileURLToPath(new URL(`../../../test/fixtures/${name}`, import.meta.url)), 'utf8');

const H = (id: string, dc: string, load = 0, live = true): HostRecord => ({ id, datacenter: dc, address: `10.0.0.${id.length}`, port: 22, root: 'x', heartbeatAt: live ? 1 : null, load, replicationKey: null, draining: false });

describe('placement', () => {
  const isLive = (h: HostRecord) => h.heartbeatAt !== null;
  it('prefers other datacenters, then least loaded', () => {
    const hosts = [H('a', 'dc1'), H('a2', 'dc1'), H('b', 'dc2', 5), H('b2', 'dc2', 1), H('c', 'dc3', 9)];
    assert.deepEqual(placeReplicas({ primary: hosts[0]!, current: [], factor: 2, hosts, isLive }), ['b2', 'c']);
  });
  it('falls back to the same datacenter when others are exhausted, never the primary, never a dead host', () => {
    const hosts = [H('a', 'dc1'), H('a2', 'dc1', 3), H('b', 'dc2', 0, false), H('c', 'dc3')];
    assert.deepEqual(placeReplicas({ primary: hosts[0]!, current: [], factor: 3, hosts, isLive }), ['c', 'a2']);
  });
  it('keeps existing targets and spreads planned load within a round', () => {
    const hosts = [H('a', 'dc1'), H('b', 'dc2'), H('b2', 'dc2'), H('c', 'dc3')];
    const planned = new Map<string, number>();
    const first = placeReplicas({ primary: hosts[0]!, current: ['c'], factor: 2, hosts, isLive, planned });
    const second = placeReplicas({ primary: hosts[0]!, current: ['c'], factor: 2, hosts, isLive, planned });
    assert.deepEqual(first, ['c', 'b']);
    assert.deepEqual(second, ['c', 'b2']);
  });
});

describe('configuration', () => {
  const good = `
host: node-1
datacenter: dc1
address: 10.0.0.1
pool: tank
projectsRoot: tank/projects
replicasRoot: tank/replicas
mountBase: /srv/projects
ssh: { privateKey: /etc/storage-agent/id_ed25519, knownHosts: /etc/storage-agent/known_hosts }
interval: 1m
`;
  it('parses a minimal file with defaults', () => {
    const c = parseConfig(good, 'config.yaml');
    assert.equal(c.interval, 60);
    assert.equal(c.replication.concurrencyPerTarget, 2);
    assert.equal(c.catalog.backend, 'sqlite');
    assert.equal(c.ssh.stallTimeout, 120);
  });
  it('names every problem with its path and the file', () => {
    const bad = good.replace('pool: tank', 'pool: "tank;rm"').replace('interval: 1m', 'interval: soon') + 'replication: { concurrencyPerTarget: 0 }\nbogus: 1\n';
    assert.throws(() => parseConfig(bad, '/etc/x.yaml'), (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.match(e.message, /\/etc\/x\.yaml: pool: /);
      assert.match(e.message, /\/etc\/x\.yaml: interval: expected a duration/);
      assert.match(e.message, /replication\.concurrencyPerTarget/);
      assert.match(e.message, /bogus/);
      return true;
    });
  });
  it('requires the roots inside the pool and disjoint', () => {
    assert.throws(() => parseConfig(good.replace('replicasRoot: tank/replicas', 'replicasRoot: tank/projects/r'), 'c'), /disjoint/);
    assert.throws(() => parseConfig(good.replace('projectsRoot: tank/projects', 'projectsRoot: other/projects'), 'c'), /inside pool tank/);
  });
  it('failover: manual by default; self-fencing in both modes after 2 intervals, and the fence bound before a host counts as dead', () => {
    const m = parseConfig(good, 'c');
    assert.equal(m.failover.mode, 'manual');
    assert.equal(deadAfterMs(m), 180_000);
    assert.equal(selfFenceAfterMs(m), 120_000);
    assert.equal(fenceBoundMs(m), (120 + 5 + 2 + FENCE_ACTION_S) * 1000);
    const a = parseConfig(good + 'failover: { mode: auto }\n', 'c');
    assert.equal(selfFenceAfterMs(a), 120_000);
    assert.ok(fenceBoundMs(a) < deadAfterMs(a));
    // a short interval: the default dead time grows past the bound instead of undercutting it
    const short = parseConfig(good.replace(/interval: [^\n]*/, 'interval: 2s'), 'c');
    assert.equal(selfFenceAfterMs(short), 10_000, 'at least two fence checks');
    assert.ok(deadAfterMs(short) > fenceBoundMs(short), `${deadAfterMs(short)} > ${fenceBoundMs(short)}`);
    assert.throws(() => parseConfig(good + 'failover: { mode: auto, selfFenceAfter: "off" }\n', 'c'), /failover\.selfFenceAfter/);
    assert.throws(() => parseConfig(good + 'failover: { mode: auto, after: 60s, selfFenceAfter: 90s }\n', 'c'), /failover\.after: must be longer than the self-fence bound/);
    assert.throws(() => parseConfig(good + 'failover: { selfFenceAfter: 6s }\n', 'c'), /failover\.selfFenceAfter: must be at least two fence checks/);
    assert.throws(() => parseConfig(good + 'failover: { mode: sometimes }\n', 'c'), /failover\.mode/);
  });
  it('durations are bounded: 1 s to 24 days (a longer timer overflows setTimeout; 1ms would spin)', () => {
    assert.throws(() => parseConfig(good + 'audit: { period: 25d }\n', 'c'), /audit\.period: expected a duration from 1s to 24d/);
    assert.throws(() => parseConfig(good.replace(/interval: [^\n]*/, 'interval: 1ms'), 'c'), /interval: expected a duration from 1s to 24d/);
    assert.throws(() => parseConfig(good.replace(/interval: [^\n]*/, 'interval: 0'), 'c'), /interval: expected a duration/);
    assert.equal(parseConfig(good + 'audit: { period: 24d }\n', 'c').audit.period, 24 * 86400);
  });
  it('reports YAML syntax errors with the file name', () => {
    assert.throws(() => parseConfig('host: [unclosed', 'broken.yaml'), /broken\.yaml: YAML error/);
  });
});

describe('SSH command grammar', () => {
  const id = '1b4e28ba-2fa1-11d2-883f-0016d3cca427';
  it('parses every protocol command and round-trips them', () => {
    for (const c of [
      { op: 'list' as const },
      { op: 'capabilities' as const },
      { op: 'recv' as const, project: id },
      { op: 'abort-resume' as const, project: id },
      { op: 'rollback-head' as const, project: id },
      { op: 'keep-aside' as const, project: id, guid: '18446744073709551615' },
      { op: 'promote' as const, project: id, token: 7, guid: '12345678901234567890' },
      { op: 'fence' as const, project: id, token: 999_999_999_999_999 },
      { op: 'send' as const, project: id, snap: 'named-1' },
    ]) {
      assert.deepEqual(parseRemoteCommand(formatRemoteCommand(c)), c);
    }
  });
  it('refuses metacharacters, wrong arity, unknown ops (hold/release are gone), bad tokens and guids, and non-UUIDs', () => {
    for (const bad of [undefined, '', 'list', 'storage-v1', 'storage-v1 list x', `storage-v1 recv ${id};id`, 'storage-v1 recv ..', `storage-v1 hold storage:x ${id}@s`, `storage-v1 release storage:x ${id}@s`, `storage-v1 fence ${id}`, `storage-v1 fence ${id} 0`, `storage-v1 fence ${id} -1`, `storage-v1 fence ${id} 1e3`, `storage-v1 fence ${id} 1000000000000000`, `storage-v1 promote ${id} 1`, `storage-v1 promote ${id} 1 x`, `storage-v1 promote ${id} 1 123456789012345678901`, 'storage-v1 rm -rf', `storage-v1 recv ${id} `, `storage-v1 recv\t${id}`, `storage-v1 send ${id}`, `storage-v1 send ${id}@`, `storage-v1 send ${id}@a ${id}@b`, `storage-v1 send x@y`, `storage-v1 send ${id}@..`]) {
      assert.throws(() => parseRemoteCommand(bad), RefusedCommand, JSON.stringify(bad));
    }
  });
  it('validates listings received from other hosts', () => {
    const ok = { protocol: 'storage-v1', host: 'b', implementation: 'x', datasets: { [id]: { snapshots: [{ snap: 's', guid: '1', createtxg: 1, creation: 2 }] } } };
    assert.equal(checkListing(ok, 'b').host, 'b');
    assert.throws(() => checkListing({ ...ok, datasets: { '../x': { snapshots: [] } } }, 'b'), /not a project id/);
    assert.throws(() => checkListing({ ...ok, datasets: { [id]: { snapshots: [{ snap: 's;x', guid: '1', createtxg: 1, creation: 2 }] } } }, 'b'), /snapshot name/);
    assert.throws(() => checkListing({ ...ok, protocol: 'v0' }, 'b'), /protocol/);
  });
});

describe('known_hosts pinning', () => {
  // a real ed25519 key blob (SSH wire format): known_hosts lines whose key is not one are malformed
  const sshString = (b: Buffer) => Buffer.concat([Buffer.from([0, 0, 0, b.length]), b]);
  const raw = Buffer.from(generateKeyPairSync('ed25519').publicKey.export({ format: 'jwk' }).x!, 'base64url');
  const key = Buffer.concat([sshString(Buffer.from('ssh-ed25519')), sshString(raw)]);
  const b64 = key.toString('base64');
  it('matches plain and hashed entries, with [addr]:port for non-22 ports', () => {
    const salt = randomBytes(20);
    const hash = createHmac('sha1', salt).update('[10.0.0.9]:2222').digest();
    const text = `# comment\n10.0.0.5,node5 ssh-ed25519 ${b64}\n|1|${salt.toString('base64')}|${hash.toString('base64')} ssh-ed25519 ${b64}\n`;
    const entries = parseKnownHosts(text);
    assert.equal(pinnedKeys(entries, '10.0.0.5', 22).length, 1);
    assert.ok(pinnedKeys(entries, '10.0.0.5', 22)[0]!.equals(key));
    assert.equal(pinnedKeys(entries, '10.0.0.9', 2222).length, 1);
    assert.equal(pinnedKeys(entries, '10.0.0.9', 22).length, 0);
    assert.equal(pinnedKeys(entries, '10.0.0.6', 22).length, 0);
  });
});

describe('transfer meter', () => {
  it('counts bytes and enforces a bandwidth cap', async () => {
    const meter = new Meter(200_000);
    const started = Date.now();
    let got = 0;
    await pipeline(
      Readable.from(Array.from({ length: 10 }, () => Buffer.alloc(50_000))),
      meter,
      new Writable({
        write(chunk: Buffer, _e, cb) {
          got += chunk.length;
          cb();
        },
      }),
    );
    assert.equal(meter.bytes, 500_000);
    assert.equal(got, 500_000);
    // 500 kB at 200 kB/s with a 200 kB burst: at least ~1.5 s
    assert.ok(Date.now() - started >= 1300, `took ${Date.now() - started} ms`);
  });
});

describe('resume path on OpenZFS (argv only; the real resume is proven in the OpenZFS tier)', () => {
  class FakeProbe extends CommandRunner {
    override run(argv: readonly string[], _o?: RunOptions): Promise<RunResult> {
      const a = argv.join(' ');
      if (a === 'zfs version') return Promise.resolve({ stdout: fixture('openzfs-2.1.version.txt'), stderr: '' });
      if (a === 'zfs -?') return Promise.resolve({ stdout: fixture('openzfs-2.1.usage.txt'), stderr: '' });
      if (a === 'zfs get') return Promise.resolve({ stdout: '', stderr: fixture('openzfs-2.1.get-usage.txt') });
      if (a === 'zpool -?') return Promise.resolve({ stdout: fixture('openzfs-2.1.zpool-usage.txt'), stderr: '' });
      return Promise.reject(new Error(`unexpected command ${a}`));
    }
  }
  it('sends with -t TOKEN and receives with -u -s and property overrides', async () => {
    const z = new Zfs({ runner: new FakeProbe() });
    assert.deepEqual(await z.sendArgv({ snapshot: 'tank/p@x', resumeToken: '1-abc-def', compressed: true }), ['zfs', 'send', '-c', '-t', '1-abc-def']);
    assert.deepEqual(await z.sendArgv({ snapshot: 'tank/p@b', from: 'a', incremental: 'I', compressed: true }), ['zfs', 'send', '-R', '-c', '-L', '-e', '-I', '@a', 'tank/p@b']);
    assert.deepEqual(await z.recvArgv({ target: 'tank/r/p', noMount: true, resumable: true, setProps: { readonly: 'on' }, excludeProps: ['mountpoint'] }), [
      'zfs', 'receive', '-u', '-s', '-o', 'readonly=on', '-x', 'mountpoint', 'tank/r/p',
    ]);
    await assert.rejects(z.sendArgv({ snapshot: 'tank/p@x', resumeToken: 'x;y' }), /resume token/);
  });
  it('zfs-fuse refuses a resume with a typed error', async () => {
    class FuseProbe extends CommandRunner {
      override run(argv: readonly string[]): Promise<RunResult> {
        const a = argv.join(' ');
        if (a === 'zfs version') return Promise.resolve({ stdout: '', stderr: "unrecognized command 'version'" });
        if (a === 'zfs -?' || a === 'zfs') return Promise.resolve({ stdout: '', stderr: fixture('zfs-fuse.usage.txt') });
        if (a === 'zfs get') return Promise.resolve({ stdout: '', stderr: fixture('zfs-fuse.get-usage.txt') });
        return Promise.resolve({ stdout: '', stderr: fixture('zfs-fuse.zpool-usage.txt') });
      }
    }
    const z = new Zfs({ runner: new FuseProbe() });
    await assert.rejects(z.sendArgv({ snapshot: 'tank/p@x', resumeToken: 'abc' }), ZfsUnsupportedError);
    assert.deepEqual(await z.recvArgv({ target: 'tank/r/p', noMount: true, resumable: true, setProps: { readonly: 'on' } }), ['zfs', 'receive', 'tank/r/p']);
  });
});

describe('fencing helpers', () => {
  it('reads zfs and zfs-fuse mounts from mountinfo, decoding octal escapes', () => {
    const text = [
      '49 27 0:40 / /var/tmp/mnt/a/p rw,relatime - fuse.zfs tank/projects/p rw,user_id=0',
      '50 27 0:41 / /srv/projects/x\\040y rw - zfs tank/projects/x\\040y rw,xattr',
      '22 1 8:1 / / rw - ext4 /dev/vda rw',
      'garbage',
    ].join('\n');
    assert.deepEqual(readMounts(text), [
      { id: 49, mountpoint: '/var/tmp/mnt/a/p', options: ['rw', 'relatime'], fstype: 'fuse.zfs', source: 'tank/projects/p' },
      { id: 50, mountpoint: '/srv/projects/x y', options: ['rw'], fstype: 'zfs', source: 'tank/projects/x y' },
      { id: 22, mountpoint: '/', options: ['rw'], fstype: 'ext4', source: '/dev/vda' },
    ]);
  });
  it('a host serves a project only while the catalog names it, active, moving or failing over to it', () => {
    const p = (primary: string | null, state: 'active' | 'moving' | 'failing-over' | 'fenced') => ({ id: 'x', primary, replicationFactor: 2, quota: null, state, targets: [], targetsVersion: 0, locationToken: 0, createdAt: 0, operation: null });
    assert.equal(servesHere(p('a', 'active'), 'a'), true);
    assert.equal(servesHere(p('a', 'moving'), 'a'), true);
    assert.equal(servesHere(p('a', 'failing-over'), 'a'), true);
    assert.equal(servesHere(p('a', 'fenced'), 'a'), false);
    assert.equal(servesHere(p('b', 'active'), 'a'), false);
    assert.equal(servesHere(p(null, 'active'), 'a'), false);
  });
});

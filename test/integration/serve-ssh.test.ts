// The forced-command receiver behind a real sshd: anything but the protocol's exact
// grammar is refused, with an error on stderr and an audit line, and no zfs command
// runs (the host's zfs is an instrumented wrapper that logs every invocation).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, existsSync, writeFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { sandbox, host, shStatus, expectedImplementation, TIME_SCALE } from '../lib/sandbox.js';
import { SshConnection, HostKeyError } from '../../src/replica/transport.js';
import { startFleet, type Fleet } from '../lib/fleet.js';

const sb = sandbox();
const A = host(sb, 'a');
const B = host(sb, 'b');
const C = host(sb, 'c');
// the receivers authorize from the catalog: a fleet registers the hosts (and their keys)
let fleet: Fleet;
before(async () => {
  fleet = await startFleet(sb);
});
after(async () => {
  await fleet?.close();
});

function zfsCalls(): number {
  const log = `${B.dir}/zfs-calls.log`;
  return existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter(Boolean).length : 0;
}

function viaSsh(command: string, stdin = ''): { status: number | null; stdout: string; stderr: string } {
  // host a's replication key, used from the control namespace
  const argv = ['nsenter', `--net=/run/netns/${sb.controlNetns}`, 'ssh', '-i', A.replKey, '-o', 'BatchMode=yes', '-o', `UserKnownHostsFile=${sb.knownHosts}`, '-o', 'StrictHostKeyChecking=yes', `root@${B.address}`, command];
  const r = shStatus(argv);
  void stdin;
  return r;
}

const sshOpts = (knownHostsFile: string) => ({
  user: 'root',
  privateKey: A.replKey,
  knownHostsFile,
  keepaliveSeconds: 15,
  connectTimeoutSeconds: 5,
  // x TEST_TIMEOUT_SCALE: six receivers starting at once take ~30 s under emulation
  operationTimeoutSeconds: 30 * TIME_SCALE,
  stallTimeoutSeconds: 30 * TIME_SCALE,
  compression: false,
});

describe('serve-ssh (forced command) refuses everything outside its grammar', () => {
  const uuid = randomUUID();
  const hostile = [
    '',
    'ls -la /',
    'zfs list',
    'zfs destroy -r stt-b',
    'storage-v1 list; id',
    'storage-v1 list && id',
    'storage-v1 list || id',
    'storage-v1 list | sh',
    'storage-v1 list `id`',
    'storage-v1 recv $(id)',
    'storage-v1 recv ../../etc',
    `storage-v1 recv ${uuid}/../../x`,
    `storage-v1 recv ${B.pool}/projects/${uuid}`,
    'storage-v1 recv not-a-uuid',
    `storage-v1 recv ${uuid.toUpperCase()}`,
    `storage-v1 recv ${uuid} extra`,
    `storage-v1  recv ${uuid}`,
    `storage-v1 hold storage:replica:a ${uuid}@snap`,
    `storage-v1 hold storage:x ${uuid}@$(id)`,
    `storage-v1 release storage:x ${uuid}`,
    `storage-v1 fence ${uuid}`,
    `storage-v1 promote ${uuid} 1`,
    'storage-v1 destroy x',
    'storage-v2 list',
    `storage-v1 recv ${uuid}\nid`,
  ];

  // the refusals come before any zfs command, so the zfs underneath is moot: under the
  // VM's emulation (~6 s an SSH session) every fifth of them, within the CI time budget;
  // all of them on zfs-fuse, and the fuzz (test/fuzz) sends 2,000 more there
  const sent = sb.zfs === 'kernel' ? hostile.filter((_, i) => i % 5 === 0) : hostile;

  it(`refuses each hostile command (${sent.length} of ${hostile.length} here) with exit 2 and a message, and runs no zfs command`, () => {
    const before = zfsCalls();
    for (const cmd of sent) {
      const r = viaSsh(cmd);
      assert.equal(r.status, 2, `${JSON.stringify(cmd)} exited ${r.status}: ${r.stderr}`);
      assert.match(r.stderr, /storagectl serve-ssh: refused: /, JSON.stringify(cmd));
      assert.equal(r.stdout, '', JSON.stringify(cmd));
    }
    assert.equal(zfsCalls(), before, 'a refused command must not run zfs');
    const audit = readFileSync(`${B.dir}/receiver.log`, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { result: string; command: string | null });
    const refused = audit.filter((a) => a.result === 'refused');
    assert.ok(refused.length >= sent.length, `audit log has ${refused.length} refusals`);
  });

  it('answers the protocol: capabilities and list', () => {
    const caps = viaSsh('storage-v1 capabilities');
    assert.equal(caps.status, 0, caps.stderr);
    assert.equal((JSON.parse(caps.stdout) as { capabilities: { implementation: string } }).capabilities.implementation, expectedImplementation(sb));
    const list = viaSsh('storage-v1 list');
    assert.equal(list.status, 0, list.stderr);
    const l = JSON.parse(list.stdout) as { protocol: string; host: string; datasets: object };
    assert.equal(l.protocol, 'storage-v1');
    assert.equal(l.host, 'b');
    assert.deepEqual(l.datasets, {}, 'the unscoped list shows only the caller\'s projects (a has none)');
  });

  it('the replication key cannot open a shell or forward ports (restrict)', () => {
    // -W opens a direct-tcpip channel at once: `restrict` makes sshd refuse it
    const argv = ['timeout', '20', 'nsenter', `--net=/run/netns/${sb.controlNetns}`, 'ssh', '-i', A.replKey, '-o', 'BatchMode=yes', '-o', `UserKnownHostsFile=${sb.knownHosts}`, '-W', '127.0.0.1:22', `root@${B.address}`];
    const r = shStatus(argv);
    assert.notEqual(r.status, 0, 'port forwarding must be refused');
    assert.notEqual(r.status, 124, 'ssh -W hung instead of being refused');
    assert.match(r.stderr, /administratively prohibited|forwarding|refused|denied/i);
  });
});

describe('host keys are pinned', () => {
  it('an unknown host key is refused with a clear error', async () => {
    const kh = `${sb.dir}/known_hosts.without-b`;
    writeFileSync(kh, readFileSync(sb.knownHosts, 'utf8').split('\n').filter((l) => !l.startsWith(`${B.address} `)).join('\n'));
    const conn = new SshConnection({ host: 'b', address: B.address, port: 22 }, sshOpts(kh));
    await assert.rejects(conn.exec('storage-v1 list'), (e: unknown) => {
      assert.ok(e instanceof HostKeyError, String(e));
      assert.match(e.message, /host key of b \(10\.\d+\.\d+\.\d+:22\) is unknown: no entry in .*known_hosts.without-b; refusing to connect/);
      return true;
    });
    conn.close();
  });

  it('a changed host key is refused', async () => {
    // pin c's key for b's address: what a man in the middle (or a reinstalled host) looks like
    const cKey = readFileSync(sb.knownHosts, 'utf8').split('\n').find((l) => l.startsWith(`${C.address} `))!.split(' ').slice(1).join(' ');
    const kh = `${sb.dir}/known_hosts.changed-b`;
    writeFileSync(kh, `${B.address} ${cKey}\n`);
    const conn = new SshConnection({ host: 'b', address: B.address, port: 22 }, sshOpts(kh));
    await assert.rejects(conn.exec('storage-v1 list'), (e: unknown) => e instanceof HostKeyError && /does not match/.test(e.message));
    conn.close();
  });

  it('the pinned key connects, and one connection carries many operations', async () => {
    const conn = new SshConnection({ host: 'b', address: B.address, port: 22 }, sshOpts(sb.knownHosts));
    const results = await Promise.all(Array.from({ length: 6 }, () => conn.exec('storage-v1 list')));
    for (const r of results) assert.equal(r.code, 0, r.stderr);
    conn.close();
  });
});

// Zero trust between peers, on real sshd + zfs: every host has its own replication key,
// bound to its name in each peer's authorized_keys, and a receiver grants a peer only
// what the catalog gives it. Host c, holding its own valid key but neither primary nor
// target of project P (primary a, replica on b), is refused every operation on P at a
// and at b: exit 2, one audit line, and the instrumented zfs of a and b runs nothing.
// The same operations from a, P's primary, go through. A crafted stream from the real
// primary brings data, never behaviour.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, existsSync, writeFileSync, mkdirSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { sandbox, host, sh, expectedImplementation, scaled, type SandboxHost } from '../lib/sandbox.js';
import { startFleet, cycleOne, heartbeatAll, type Fleet } from '../lib/fleet.js';
import { storagectl } from '../lib/procs.js';
import { SshPool } from '../../src/replica/transport.js';
import { sshOptions } from '../../src/agent/agent.js';
import { failover } from '../../src/agent/failover.js';
import { leaseOwner } from '../../src/lock/lease.js';
import { projectLockName } from '../../src/catalog/types.js';
import { Zfs } from '../../src/zfs/index.js';

const sb = sandbox();
const A = host(sb, 'a');
const B = host(sb, 'b');
const C = host(sb, 'c');
const zfs = new Zfs();
const openzfs = expectedImplementation(sb) === 'openzfs';
let fleet: Fleet;

/** Runs `command` on `to`'s sshd with `from`'s replication key (from the control namespace). */
function sshAs(keyFile: string, to: SandboxHost, command: string, stdinFile?: string): { status: number | null; stdout: Buffer; stderr: string } {
  const ssh = ['nsenter', `--net=/run/netns/${sb.controlNetns}`, 'ssh', '-i', keyFile, '-o', 'BatchMode=yes', '-o', `UserKnownHostsFile=${sb.knownHosts}`, '-o', 'StrictHostKeyChecking=yes', `root@${to.address}`, command];
  const r = spawnSync(ssh[0]!, ssh.slice(1), { input: stdinFile ? readFileSync(stdinFile) : '', maxBuffer: 1 << 30, timeout: scaled(120_000) });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

function zfsCalls(h: SandboxHost): number {
  const log = `${h.dir}/zfs-calls.log`;
  return existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter(Boolean).length : 0;
}

interface AuditLine {
  peer: string | null;
  op: string | null;
  project: string | null;
  projects?: string[];
  result: string;
  reason?: string;
}
function audit(h: SandboxHost): AuditLine[] {
  return readFileSync(`${h.dir}/receiver.log`, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditLine);
}

async function cycleA(): Promise<void> {
  const r = await cycleOne(fleet, 'a');
  assert.deepEqual(r.failures, [], JSON.stringify(r.failures));
}

/** A project primary on a, replicated to b only (factor 1, c is no target). */
async function projectOnA(): Promise<{ id: string; ds: string; mnt: string }> {
  const id = randomUUID();
  const ds = `${A.pool}/projects/${id}`;
  await zfs.create(ds, { canmount: 'noauto' });
  await fleet.catalog.createProject({ id, primary: 'a', replicationFactor: 1, quota: null });
  await fleet.catalog.setTargets(id, ['b']);
  await zfs.mount(ds);
  const mnt = `${A.mountBase}/${id}`;
  writeFileSync(`${mnt}/data.txt`, `project ${id}\n`);
  return { id, ds, mnt };
}

before(async () => {
  fleet = await startFleet(sb);
  // every receiver answers `capabilities` from its cache: probe it once, outside the counts
  for (const h of [A, B]) assert.equal(sshAs(h.replKey, h, 'storage-v1 capabilities').status, 0);
});
after(async () => {
  await fleet?.close();
});

describe('a compromised peer (host c, its own valid key) against project P (primary a, replica on b)', () => {
  let P: { id: string; ds: string; mnt: string };
  let snap: string;
  let guid: string;

  before(async () => {
    P = await projectOnA();
    await cycleA();
    const l = JSON.parse(sshAs(A.replKey, B, `storage-v1 list ${P.id}`).stdout.toString()) as { datasets: Record<string, { snapshots: Array<{ snap: string; guid: string }> }> };
    const snaps = l.datasets[P.id]!.snapshots;
    snap = snaps[snaps.length - 1]!.snap;
    guid = snaps[snaps.length - 1]!.guid;
  });

  function refusedAll(ops: Array<[SandboxHost, string]>, key: string, peer: string, why?: RegExp): void {
    const before = { a: zfsCalls(A), b: zfsCalls(B) };
    for (const [to, cmd] of ops) {
      const auditBefore = audit(to).length;
      const r = sshAs(key, to, cmd);
      assert.equal(r.status, 2, `${peer} -> ${to.name} "${cmd}": exit ${r.status}, stderr ${r.stderr}`);
      assert.match(r.stderr, /storagectl serve-ssh: refused: /, cmd);
      if (why) assert.match(r.stderr, why, cmd);
      assert.equal(r.stdout.length, 0, cmd);
      const lines = audit(to).slice(auditBefore);
      assert.equal(lines.length, 1, `one audit line for "${cmd}" on ${to.name}: ${JSON.stringify(lines)}`);
      assert.equal(lines[0]!.result, 'refused');
      assert.equal(lines[0]!.peer, peer);
      assert.ok(lines[0]!.reason && lines[0]!.reason.length > 10, JSON.stringify(lines[0]));
      if (!/ hold | release /.test(cmd)) {
        assert.ok(lines[0]!.project === P.id || lines[0]!.projects?.includes(P.id), JSON.stringify(lines[0]));
        assert.ok(lines[0]!.op && cmd.includes(` ${lines[0]!.op} `), JSON.stringify(lines[0]));
      }
    }
    assert.deepEqual({ a: zfsCalls(A), b: zfsCalls(B) }, before, 'a refused command runs no zfs command');
  }

  it('every op of c on P is refused at a and at b, audited, with no zfs command', () => {
    refusedAll(
      [
        [B, `storage-v1 list ${P.id}`],
        [A, `storage-v1 list ${P.id}`],
        [B, `storage-v1 recv ${P.id}`],
        [A, `storage-v1 recv ${P.id}`],
        [B, `storage-v1 send ${P.id}@${snap}`],
        [B, `storage-v1 abort-resume ${P.id}`],
        [B, `storage-v1 rollback-head ${P.id}`],
        [B, `storage-v1 keep-aside ${P.id} ${guid}`],
        [A, `storage-v1 fence ${P.id} 1`],
        [B, `storage-v1 promote ${P.id} 1 ${guid}`],
        [B, `storage-v1 hold storage:replica:c ${P.id}@${snap}`],
        [B, `storage-v1 release storage:replica:a ${P.id}@${snap}`],
      ],
      C.replKey,
      'c',
    );
  });

  it('a fencing token stolen from the live lease of a is refused to c', async () => {
    const lock = await fleet.catalog.acquireLock(projectLockName(P.id), leaseOwner('storagectl-failover', 'a'), 60_000);
    assert.ok(lock.ok);
    try {
      refusedAll(
        [
          [A, `storage-v1 fence ${P.id} ${lock.token}`],
          [B, `storage-v1 promote ${P.id} ${lock.token} ${guid}`],
          [B, `storage-v1 recv ${P.id}`],
        ],
        C.replKey,
        'c',
        /held by "storagectl-failover@a:\d+", not by c|not the primary/,
      );
    } finally {
      await fleet.catalog.releaseLock(projectLockName(P.id), leaseOwner('storagectl-failover', 'a'), lock.token);
    }
  });

  it('a key bound to another name (a stale or forged authorized_keys line) and an unknown peer name are refused', () => {
    const dir = `${sb.dir}/hostile-${randomUUID().slice(0, 8)}`;
    mkdirSync(dir);
    sh(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', `${dir}/k`]);
    const pub = readFileSync(`${dir}/k.pub`, 'utf8').split(' ').slice(0, 2).join(' ');
    const ak = `${B.dir}/authorized_keys`;
    const original = readFileSync(ak, 'utf8');
    const line = (peer: string) => `restrict,command="${sb.repo}/bin/storagectl --config ${B.dir}/agent.yaml serve-ssh --peer ${peer}" ${pub}\n`;
    try {
      writeFileSync(ak, original + line('a'));
      refusedAll([[B, `storage-v1 list ${P.id}`]], `${dir}/k`, 'a', /authenticated with a key that is not its registered replication key/);
      writeFileSync(ak, original + line('ghost'));
      refusedAll([[B, `storage-v1 list ${P.id}`]], `${dir}/k`, 'ghost', /peer ghost is not a host in the catalog/);
    } finally {
      writeFileSync(ak, original);
    }
  });

  it('the same ops from a, P\'s primary, go through where they should', async () => {
    const list = sshAs(A.replKey, B, `storage-v1 list ${P.id}`);
    assert.equal(list.status, 0, list.stderr);
    assert.ok((JSON.parse(list.stdout.toString()) as { datasets: Record<string, unknown> }).datasets[P.id]);
    const send = sshAs(A.replKey, B, `storage-v1 send ${P.id}@${snap}`);
    assert.equal(send.status, 0, send.stderr);
    assert.ok(send.stdout.length > 1000, `a stream came back (${send.stdout.length} bytes)`);
    // authorized (not refused), whatever zfs then says about a receive state that is not there
    for (const op of ['abort-resume', 'rollback-head']) {
      const r = sshAs(A.replKey, B, `storage-v1 ${op} ${P.id}`);
      assert.notEqual(r.status, 2, `${op}: ${r.stderr}`);
      assert.doesNotMatch(r.stderr, /refused/);
    }
    // fence (of a, by a) and promote (on b) inside a real failover run with a's key and lease
    const pool = new SshPool({ ...sshOptions(fleet.configs.get('a')!), connectTimeoutSeconds: 5 });
    try {
      const r = await failover(fleet.catalog, pool, P.id, { owner: leaseOwner('storagectl-failover', 'a'), graceMs: scaled(60_000) });
      assert.equal(r.to, 'b');
      assert.equal(r.oldPrimaryFenced, 'unmounted');
    } finally {
      pool.closeAll();
    }
    const served = await zfs.get(`${B.pool}/projects/${P.id}`, ['mounted', 'readonly']);
    assert.deepEqual(served, { mounted: 'yes', readonly: 'off' });
    assert.equal((await zfs.get(P.ds, ['readonly'])).readonly, 'on', 'the old primary is fenced');
    const fenceLine = audit(A).reverse().find((l) => l.op === 'fence' && l.project === P.id);
    assert.equal(fenceLine?.result, 'ok');
    assert.equal(fenceLine?.peer, 'a');
  });
});

describe('storagectl authorized-keys', () => {
  it("writes, from the catalog, the lines a host needs: replication runs on the generated file alone", async () => {
    const ak = `${B.dir}/authorized_keys`;
    const original = readFileSync(ak, 'utf8');
    const admin = original.split('\n')[0]!; // the sandbox's admin key line stays
    try {
      writeFileSync(ak, `${admin}\n`);
      const r = await storagectl(sb, B, `${B.dir}/agent.yaml`, ['authorized-keys', '--storagectl', `${sb.repo}/bin/storagectl`, '--write', ak, '--json']);
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout) as { lines: string[]; missing: string[] };
      assert.deepEqual(out.missing, []);
      assert.equal(out.lines.length, sb.hosts.length, 'one line per host in the catalog');
      const text = readFileSync(ak, 'utf8');
      assert.ok(text.startsWith(`${admin}\n# BEGIN storage-agent peers`), text.slice(0, 300));
      for (const h of sb.hosts) {
        const pub = readFileSync(`${h.replKey}.pub`, 'utf8').split(' ').slice(0, 2).join(' ');
        assert.ok(text.includes(`restrict,command="${sb.repo}/bin/storagectl --config ${B.dir}/agent.yaml serve-ssh --peer ${h.name}" ${pub} storage-peer:${h.name}\n`), `line for ${h.name}`);
      }
      // a real cycle of a through the generated file
      const P = await projectOnA();
      await cycleA();
      assert.ok(await zfs.exists(`${B.pool}/replicas/${P.id}`));
    } finally {
      writeFileSync(ak, original);
    }
  });
});

describe('a crafted stream from the real primary brings data, never behaviour', () => {
  it('children refused; host-affecting properties never take effect on the replica nor after promote', async () => {
    const Q = await projectOnA();
    // on the source too, nothing may mount where the stream will say (canmount=noauto)
    await zfs.unmount(Q.ds);
    const free = async (h: SandboxHost) => Number((await zfs.get(h.pool, ['available'])).available);
    const poolFree = await free(A);
    await zfs.set(Q.ds, { setuid: 'on', exec: 'on', refreservation: String(Math.floor(poolFree / 2)) });
    // sharenfs: zfs-fuse sets it and then fails to share (no NFS server here); it is set
    spawnSync('zfs', ['set', 'sharenfs=on', Q.ds]);
    assert.equal(sh(['zfs', 'get', '-H', '-o', 'value,source', 'sharenfs', Q.ds]).trim(), 'on\tlocal');
    await zfs.create(`${Q.ds}/child`, { canmount: 'noauto' });
    await zfs.set(Q.ds, { mountpoint: '/etc' }); // canmount=noauto: not mounted on a either
    sh(['zfs', 'snapshot', '-r', `${Q.ds}@s1`]);
    const work = `${sb.dir}/crafted-${Q.id.slice(0, 8)}`;
    mkdirSync(work);
    const stream = (name: string, args: string[]) => {
      const f = `${work}/${name}`;
      sh(['bash', '-c', 'zfs send "$@" > "$0"', f, ...args]);
      return f;
    };
    const replica = `${B.pool}/replicas/${Q.id}`;
    const bCalls = zfsCalls(B);

    // 1. with its child dataset: refused before zfs runs
    const withChild = sshAs(A.replKey, B, `storage-v1 recv ${Q.id}`, stream('with-child', ['-R', `${Q.ds}@s1`]));
    assert.equal(withChild.status, 2, withChild.stderr);
    assert.match(withChild.stderr, /carries 2 datasets .*\/child\): child datasets are not replicated/);
    assert.equal(zfsCalls(B), bCalls, 'no zfs command on b for the refused stream');
    assert.equal(await zfs.exists(replica), false);

    // 2. without the child, with mountpoint=/etc, sharenfs, setuid, exec, refreservation
    sh(['zfs', 'destroy', '-r', `${Q.ds}/child`]);
    const bFree = await free(B);
    const crafted = stream('crafted', ['-R', `${Q.ds}@s1`]);
    let r = sshAs(A.replKey, B, `storage-v1 recv ${Q.id}`, crafted);
    if (openzfs) {
      assert.equal(r.status, 0, r.stderr); // -o/-x on receive: the stream's values never apply
    } else {
      // zfs-fuse cannot override on receive: a stream that would mount or share is refused
      // outright; the rest (setuid, exec, refreservation) is received and put back at once
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, /sets mountpoint="\/etc", which this zfs cannot override on receive/);
      assert.equal(await zfs.exists(replica), false);
      await zfs.inherit(Q.ds, 'mountpoint');
      r = sshAs(A.replKey, B, `storage-v1 recv ${Q.id}`, stream('crafted-share', ['-R', `${Q.ds}@s1`]));
      assert.equal(r.status, 2, 'a share is acted on as the receive ends: refused too');
      assert.match(r.stderr, /sets sharenfs="on"/);
      spawnSync('zfs', ['inherit', 'sharenfs', Q.ds]);
      sh(['zfs', 'snapshot', `${Q.ds}@s2`]);
      r = sshAs(A.replKey, B, `storage-v1 recv ${Q.id}`, stream('crafted-2', ['-R', `${Q.ds}@s2`]));
      assert.equal(r.status, 0, r.stderr);
    }
    const denied = ['mountpoint', 'sharenfs', 'setuid', 'exec', 'refreservation', 'reservation'];
    const inEffect = (ds: string) =>
      sh(['zfs', 'get', '-H', '-o', 'property,value,source', '-s', 'local,received', 'all', ds])
        .split('\n')
        .filter(Boolean)
        .map((l) => l.split('\t'))
        // a local `none` reservation is what recv -x / the receiver set in its place
        .filter(([p, value]) => denied.includes(p!) && !(/reservation$/.test(p!) && (value === 'none' || value === '0')));
    assert.deepEqual(inEffect(replica), [], 'no denied property set locally or received on the replica');
    assert.equal((await zfs.get(replica, ['mounted'])).mounted, 'no');
    assert.equal((await zfs.get(replica, ['readonly'])).readonly, 'on');
    const used = bFree - (await free(B));
    assert.ok(used < 16 * 2 ** 20, `b's pool lost ${used} bytes: only the data, no reservation (half the pool was asked for)`);
    const line = audit(B).reverse().find((l) => l.op === 'recv' && l.project === Q.id && l.result === 'ok') as (AuditLine & { reset?: string[] }) | undefined;
    assert.ok(line, 'the receive is audited');
    if (!openzfs) assert.ok(line.reset?.includes('exec') && line.reset.includes('setuid') && line.reset.includes('refreservation'), `zfs-fuse: the receiver reset what the stream set: ${JSON.stringify(line)}`);

    // 3. promote (a failover by a, its lease): the new primary inherits the host's own values
    const pool = new SshPool({ ...sshOptions(fleet.configs.get('a')!), connectTimeoutSeconds: 5 });
    try {
      await heartbeatAll(fleet);
      const f = await failover(fleet.catalog, pool, Q.id, { owner: leaseOwner('storagectl-failover', 'a'), graceMs: scaled(60_000) });
      assert.equal(f.to, 'b');
    } finally {
      pool.closeAll();
    }
    const promoted = `${B.pool}/projects/${Q.id}`;
    assert.deepEqual(inEffect(promoted), [], 'no denied property set locally or received after promote');
    const { mounted, mountpoint } = await zfs.get(promoted, ['mounted', 'mountpoint']);
    assert.equal(mounted, 'yes');
    assert.equal(mountpoint, `${B.mountBase}/${Q.id}`, 'mounted where the host mounts projects, not where the stream said');
  });
});

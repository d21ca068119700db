// The typed ZFS adapter against the real pools of the sandbox hosts: zfs-fuse in the
// zfs-fuse tier, OpenZFS 2.1 and 2.3 (kernel module) in the openzfs-2.1/-2.3 tiers. Where the two differ,
// the test asserts each implementation's own behaviour, chosen by the sandbox's declared
// ZFS and the adapter's probed capabilities (never skipped).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { pipeline } from 'node:stream/promises';
import {
  Zfs,
  CommandRunner,
  ZfsBusyError,
  ZfsCommandError,
  ZfsExistsError,
  ZfsNotFoundError,
  ZfsNoCommonSnapshotError,
  ZfsDestinationModifiedError,
  pipeSendToRecv,
} from '../../src/zfs/index.js';
import { sandbox, host, uniq, destroyTestTree, treeChecksum, sh, shStatus, expectedImplementation } from '../lib/sandbox.js';

const sb = sandbox();
const A = host(sb, 'a');
const B = host(sb, 'b');
const zfs = new Zfs();
const rootA = `${A.pool}/${uniq()}`;
const rootB = `${B.pool}/${uniq()}`;
const mntA = `${A.mountBase}/${rootA.split('/')[1]}`;

async function counted<T>(fn: () => Promise<T>): Promise<{ value: T; calls: number }> {
  const before = zfs.runner.total();
  const value = await fn();
  return { value, calls: zfs.runner.total() - before };
}

before(async () => {
  await zfs.create(rootA, { mountpoint: mntA });
  await zfs.create(rootB, { mountpoint: 'none', canmount: 'off' });
});

after(() => {
  destroyTestTree(rootA);
  destroyTestTree(rootB);
});

describe('capability probe', () => {
  it(`detects ${expectedImplementation(sb)} and what it offers, and caches the result`, async () => {
    const caps = await zfs.capabilities();
    const openzfs = expectedImplementation(sb) === 'openzfs';
    assert.equal(caps.implementation, expectedImplementation(sb));
    if (openzfs) assert.match(caps.version, /^zfs-2\.\d+\.\d+/);
    // zfs-fuse lacks every one of these; OpenZFS 2.1 has every one
    for (const k of ['listParsable', 'written', 'recvNoMount', 'recvResumable', 'sendResume', 'recvPropertyOverride', 'bookmarks', 'batchSnapshot', 'multiSet', 'destroySnapshotList', 'holdsList', 'importNoMount', 'sendCompressed', 'sendLargeBlocks', 'sendEmbedded', 'sendRaw'] as const) {
      if (k === 'importNoMount' && !openzfs) continue; // not asserted for zfs-fuse (its zpool usage decides)
      assert.equal(caps[k], openzfs, `${k} on ${caps.version}`);
    }
    // snapshots_changed came with OpenZFS 2.2: found on 2.3, absent on 2.1 and zfs-fuse
    const minor = openzfs ? Number(/^zfs-2\.(\d+)\./.exec(caps.version)![1]) : -1;
    assert.equal(caps.snapshotsChanged, minor >= 2, `snapshotsChanged on ${caps.version}`);
    const { calls } = await counted(() => zfs.capabilities());
    assert.equal(calls, 0, 'second probe must come from the cache');
  });
});

describe('datasets and properties', () => {
  it('creates with canmount, mountpoint and readonly, and reads them back', async () => {
    const ds = `${rootA}/created`;
    await zfs.create(ds, { canmount: 'noauto', mountpoint: `${mntA}/created`, readonly: true, props: { 'fleet:owner': 'alice' } });
    const p = await zfs.get(ds, ['canmount', 'mountpoint', 'readonly', 'mounted', 'fleet:owner']);
    assert.deepEqual(p, { canmount: 'noauto', mountpoint: `${mntA}/created`, readonly: 'on', mounted: 'no', 'fleet:owner': 'alice' });
  });

  it('create of an existing dataset is a ZfsExistsError carrying argv and stderr', async () => {
    const ds = `${rootA}/dup`;
    await zfs.create(ds);
    await assert.rejects(zfs.create(ds), (e: unknown) => {
      assert.ok(e instanceof ZfsExistsError, String(e));
      assert.deepEqual(e.argv.slice(-2), ['create', ds].slice(-2));
      assert.match(e.stderr, /already exists/);
      assert.match(e.message, new RegExp(`zfs create .*${ds}`));
      return true;
    });
  });

  it('sets, gets and inherits native and user properties', async () => {
    const ds = `${rootA}/props`;
    await zfs.create(ds);
    await zfs.set(ds, { quota: String(64 * 1024 * 1024), 'fleet:project': 'x1', compression: 'lzjb' });
    let p = await zfs.get(ds, ['quota', 'fleet:project', 'compression']);
    assert.deepEqual(p, { quota: String(64 * 1024 * 1024), 'fleet:project': 'x1', compression: 'lzjb' });
    await zfs.inherit(ds, 'compression');
    p = await zfs.get(ds, ['compression']);
    // the inherited value is the parent's: 'off' up to OpenZFS 2.1, 'on' (lz4) from 2.2
    assert.equal(p.compression, (await zfs.get(rootA, ['compression'])).compression);
    assert.notEqual(p.compression, 'lzjb');
  });

  it('exists() answers for present and absent datasets', async () => {
    assert.equal(await zfs.exists(rootA), true);
    assert.equal(await zfs.exists(`${rootA}/nope`), false);
  });

  it('destroyDataset is never recursive: a dataset with children is refused by zfs', async () => {
    const ds = `${rootA}/parent`;
    await zfs.create(`${ds}/child`, { parents: true });
    await assert.rejects(zfs.destroyDataset(ds), ZfsCommandError);
    assert.equal(await zfs.exists(`${ds}/child`), true);
    await zfs.destroyDataset(`${ds}/child`);
    await zfs.destroyDataset(ds);
    assert.equal(await zfs.exists(ds), false);
    await assert.rejects(zfs.destroyDataset(A.pool), /pool root: refusing/);
  });

  it('mounts and unmounts on demand', async () => {
    const ds = `${rootA}/mnt`;
    await zfs.create(ds, { canmount: 'noauto', mountpoint: `${mntA}/mnt` });
    assert.equal((await zfs.get(ds, ['mounted'])).mounted, 'no');
    await zfs.mount(ds);
    writeFileSync(`${mntA}/mnt/hello.txt`, 'hi');
    assert.equal((await zfs.get(ds, ['mounted'])).mounted, 'yes');
    await zfs.unmount(ds);
    assert.equal((await zfs.get(ds, ['mounted'])).mounted, 'no');
    assert.equal(existsSync(`${mntA}/mnt/hello.txt`), false);
    await zfs.mount(ds);
    assert.equal(readFileSync(`${mntA}/mnt/hello.txt`, 'utf8'), 'hi');
  });

  it('renames datasets and snapshots; renaming onto an existing name is ZfsExistsError', async () => {
    await zfs.create(`${rootA}/r1`, { canmount: 'off' });
    await zfs.create(`${rootA}/r2`, { canmount: 'off' });
    await zfs.snapshot([`${rootA}/r1@s1`]);
    await zfs.rename(`${rootA}/r1@s1`, `${rootA}/r1@s1renamed`);
    await zfs.rename(`${rootA}/r1`, `${rootA}/r3`);
    assert.equal(await zfs.exists(`${rootA}/r3@s1renamed`), true);
    await assert.rejects(zfs.rename(`${rootA}/r3`, `${rootA}/r2`), ZfsExistsError);
  });

  it('a rename of a mounted dataset in use is a typed ZfsBusyError', async () => {
    const ds = `${rootA}/busy`;
    await zfs.create(ds, { mountpoint: `${mntA}/busy` });
    const holder = spawn('sleep', ['30'], { cwd: `${mntA}/busy`, stdio: 'ignore' });
    try {
      await new Promise((r) => setTimeout(r, 100));
      await assert.rejects(zfs.rename(ds, `${rootA}/busy2`), (e: unknown) => {
        assert.ok(e instanceof ZfsBusyError, `expected ZfsBusyError, got ${String(e)}`);
        assert.match(e.stderr, /busy/);
        return true;
      });
    } finally {
      holder.kill('SIGKILL');
    }
  });
});

describe('listing', () => {
  it('lists every dataset and snapshot under a root in ONE zfs call, with exact guids', async () => {
    const base = `${rootA}/list`;
    await zfs.create(`${base}/p1`, { parents: true, canmount: 'off' });
    await zfs.create(`${base}/p2`, { canmount: 'off' });
    for (const s of ['s1', 's2', 's3']) await zfs.snapshot([`${base}/p1@${s}`]);
    await zfs.snapshot([`${base}/p2@only`]);
    const caps = await zfs.capabilities();
    const { value: tree, calls } = await counted(() => zfs.list(base, { props: ['mountpoint', 'canmount', 'fleet:owner'] }));
    assert.equal(calls, 1);
    assert.deepEqual([...tree.keys()].sort(), [base, `${base}/p1`, `${base}/p2`]);
    const p1 = tree.get(`${base}/p1`)!;
    assert.deepEqual(p1.snapshots.map((s) => s.snap), ['s1', 's2', 's3']);
    assert.equal(p1.props.canmount, 'off');
    assert.equal(p1.props['fleet:owner'], '-');
    for (const s of p1.snapshots) {
      assert.match(s.guid, /^\d{1,20}$/);
      assert.ok(s.createtxg > 0 && s.creation > 1.7e9, JSON.stringify(s));
      assert.equal(s.userrefs, 0);
      if (caps.written) assert.ok(Number.isInteger(s.written) && s.written! >= 0, `written of ${s.name}: ${s.written}`);
      else assert.equal(s.written, undefined, 'zfs-fuse has no written property');
    }
    // guids agree with a direct zfs get -p (not the humanized list value)
    const direct = sh(['zfs', 'get', '-H', '-p', '-o', 'value', 'guid', `${base}/p1@s2`]).trim();
    assert.equal(p1.snapshots[1]!.guid, direct);
  });

  it('lists without snapshots and with a depth limit', async () => {
    const base = `${rootA}/list2`;
    await zfs.create(`${base}/x/y`, { parents: true, canmount: 'off' });
    await zfs.snapshot([`${base}/x@a`]);
    const t = await zfs.list(base, { depth: 1, snapshots: false });
    assert.deepEqual([...t.keys()].sort(), [base, `${base}/x`]);
    assert.equal(t.get(`${base}/x`)!.snapshots.length, 0);
  });

  it('lists pools with their health', async () => {
    const pools = await zfs.pools();
    const mine = pools.find((p) => p.name === A.pool);
    assert.ok(mine, `pool ${A.pool} in ${JSON.stringify(pools)}`);
    assert.equal(mine.health, 'ONLINE');
    assert.ok(mine.size > 100 * 2 ** 20);
  });
});

describe('snapshots, holds, rollback, clone', () => {
  it('takes several snapshots (one call each on zfs-fuse, one atomic call on OpenZFS) and reports the calls', async () => {
    await zfs.create(`${rootA}/snaps/a`, { parents: true, canmount: 'off' });
    await zfs.create(`${rootA}/snaps/b`, { canmount: 'off' });
    const { value: reported, calls } = await counted(() => zfs.snapshot([`${rootA}/snaps/a@x`, `${rootA}/snaps/b@x`]));
    assert.equal(reported, calls);
    assert.equal(calls, (await zfs.capabilities()).batchSnapshot ? 1 : 2);
    assert.equal(await zfs.exists(`${rootA}/snaps/a@x`), true);
    assert.equal(await zfs.exists(`${rootA}/snaps/b@x`), true);
  });

  it('takes a recursive snapshot of a subtree in one call', async () => {
    await zfs.create(`${rootA}/rec/c1`, { parents: true, canmount: 'off' });
    await zfs.create(`${rootA}/rec/c2`, { canmount: 'off' });
    const { calls } = await counted(() => zfs.snapshotRecursive(`${rootA}/rec@all`));
    assert.equal(calls, 1);
    const t = await zfs.list(`${rootA}/rec`);
    for (const ds of t.values()) assert.deepEqual(ds.snapshots.map((s) => s.snap), ['all'], ds.name);
  });

  it('destroys one snapshot; a missing one is ZfsNotFoundError with the command line', async () => {
    await zfs.create(`${rootA}/ds1`, { canmount: 'off' });
    await zfs.snapshot([`${rootA}/ds1@gone`, `${rootA}/ds1@kept`]);
    await zfs.destroySnapshot(`${rootA}/ds1@gone`);
    assert.equal(await zfs.exists(`${rootA}/ds1@gone`), false);
    assert.equal(await zfs.exists(`${rootA}/ds1@kept`), true);
    await assert.rejects(zfs.destroySnapshot(`${rootA}/ds1@gone`), (e: unknown) => {
      assert.ok(e instanceof ZfsNotFoundError, String(e));
      assert.match(e.message, /^zfs destroy .*ds1@gone \(exit \d+\): /);
      return true;
    });
    assert.equal(await zfs.destroySnapshots(`${rootA}/ds1`, ['kept']), 1);
    assert.equal(await zfs.exists(`${rootA}/ds1@kept`), false);
  });

  it('a held snapshot refuses destroy until released', async () => {
    await zfs.create(`${rootA}/held`, { canmount: 'off' });
    const snap = `${rootA}/held@base`;
    await zfs.snapshot([snap]);
    await zfs.hold('replica:b', [snap]);
    await zfs.hold('replica:c', [snap]);
    const listsTags = (await zfs.capabilities()).holdsList;
    assert.deepEqual(await zfs.holds(snap), listsTags ? { count: 2, tags: ['replica:b', 'replica:c'] } : { count: 2 });
    await assert.rejects(zfs.destroySnapshot(snap), ZfsCommandError);
    assert.equal(await zfs.exists(snap), true);
    await zfs.release('replica:b', [snap]);
    await zfs.release('replica:c', [snap]);
    assert.deepEqual(await zfs.holds(snap), listsTags ? { count: 0, tags: [] } : { count: 0 });
    await zfs.destroySnapshot(snap);
    assert.equal(await zfs.exists(snap), false);
  });

  it('rolls back to the newest snapshot, and refuses (no -r) to roll back past later snapshots', async () => {
    const ds = `${rootA}/rb`;
    const m = `${mntA}/rb`;
    await zfs.create(ds, { mountpoint: m });
    writeFileSync(`${m}/f`, 'v1');
    await zfs.snapshot([`${ds}@one`]);
    writeFileSync(`${m}/f`, 'v2');
    await zfs.snapshot([`${ds}@two`]);
    writeFileSync(`${m}/f`, 'v3');
    await zfs.rollback(`${ds}@two`);
    assert.equal(readFileSync(`${m}/f`, 'utf8'), 'v2');
    await assert.rejects(zfs.rollback(`${ds}@one`), (e: unknown) => e instanceof ZfsCommandError && /more recent/.test(e.stderr));
    assert.equal(await zfs.exists(`${ds}@two`), true, 'later snapshot must survive');
  });

  it('clones a snapshot to a new dataset with its content', async () => {
    const ds = `${rootA}/orig`;
    await zfs.create(ds, { mountpoint: `${mntA}/orig` });
    writeFileSync(`${mntA}/orig/data`, 'cloned content');
    await zfs.snapshot([`${ds}@c`]);
    await zfs.clone(`${ds}@c`, `${rootA}/clone`, { mountpoint: `${mntA}/clone`, readonly: true });
    assert.equal(readFileSync(`${mntA}/clone/data`, 'utf8'), 'cloned content');
    assert.equal((await zfs.get(`${rootA}/clone`, ['origin'])).origin, `${ds}@c`);
  });
});

describe('send and receive', () => {
  const pipeLocal = pipeSendToRecv;

  async function fixture(name: string): Promise<{ ds: string; mnt: string }> {
    const ds = `${rootA}/${name}`;
    const mnt = `${mntA}/${name}`;
    // mountpoint inherited from the test root: `send -R` then carries no local
    // mountpoint, so the replica inherits its own root's mountpoint=none.
    await zfs.create(ds);
    return { ds, mnt };
  }

  it('full send -R then incremental send -R -I between two hosts\' pools keeps guids', async () => {
    const { ds, mnt } = await fixture('rep');
    writeFileSync(`${mnt}/a`, 'one');
    await zfs.snapshot([`${ds}@s1`]);
    const target = `${rootB}/rep`;
    await pipeLocal(await zfs.send({ snapshot: `${ds}@s1` }), await zfs.recv({ target, force: true }));
    writeFileSync(`${mnt}/b`, 'two');
    await zfs.snapshot([`${ds}@s2`]);
    writeFileSync(`${mnt}/c`, 'three');
    await zfs.snapshot([`${ds}@s3`]);
    await pipeLocal(await zfs.send({ snapshot: `${ds}@s3`, from: `${ds}@s1`, incremental: 'I' }), await zfs.recv({ target, force: true }));
    const src = (await zfs.list(ds)).get(ds)!;
    const dst = (await zfs.list(target)).get(target)!;
    assert.deepEqual(
      dst.snapshots.map((s) => [s.snap, s.guid]),
      src.snapshots.map((s) => [s.snap, s.guid]),
    );
  });

  it('an incremental whose base the target lacks is ZfsNoCommonSnapshotError', async () => {
    const { ds } = await fixture('nobase');
    await zfs.snapshot([`${ds}@s1`]);
    await zfs.snapshot([`${ds}@s2`]);
    await zfs.snapshot([`${ds}@s3`]);
    const target = `${rootB}/nobase`;
    await pipeLocal(await zfs.send({ snapshot: `${ds}@s1` }), await zfs.recv({ target, force: false }));
    // the target has s1 only; a stream from s2 does not apply
    await assert.rejects(
      pipeLocal(await zfs.send({ snapshot: `${ds}@s3`, from: `${ds}@s2`, incremental: 'i' }), await zfs.recv({ target })),
      (e: unknown) => {
        assert.ok(e instanceof ZfsNoCommonSnapshotError, `expected ZfsNoCommonSnapshotError, got ${String(e)}`);
        assert.match(e.message, /zfs receive/);
        return true;
      },
    );
  });

  it('a target modified since its newest snapshot refuses the stream without -F', async () => {
    const { ds } = await fixture('mod');
    await zfs.snapshot([`${ds}@s1`]);
    const target = `${rootB}/mod`;
    await pipeLocal(await zfs.send({ snapshot: `${ds}@s1`, replicate: false }), await zfs.recv({ target }));
    // modify the target: mount it somewhere and write
    await zfs.set(target, { mountpoint: `${B.mountBase}/${rootB.split('/')[1]}-mod`, readonly: 'off' });
    await zfs.mount(target).catch(() => undefined);
    writeFileSync(`${B.mountBase}/${rootB.split('/')[1]}-mod/diverged`, 'x');
    await zfs.snapshot([`${ds}@s2`]);
    await assert.rejects(
      pipeLocal(await zfs.send({ snapshot: `${ds}@s2`, from: 's1', incremental: 'i', replicate: false }), await zfs.recv({ target })),
      (e: unknown) => e instanceof ZfsDestinationModifiedError,
    );
    await zfs.unmount(target);
  });

  it('a send of a missing snapshot rejects with zfs send\'s stderr', async () => {
    const send = await zfs.send({ snapshot: `${rootA}/missing@x` });
    send.stream.resume();
    await assert.rejects(send.done, (e: unknown) => e instanceof ZfsCommandError && /zfs send -R/.test(e.message) && e.stderr.length > 0);
  });

  it('send -R -I from host a to host b piped through b\'s real sshd; file checksums match', async () => {
    const { ds, mnt } = await fixture('ssh');
    mkdirSync(`${mnt}/dir`);
    writeFileSync(`${mnt}/dir/1.bin`, Buffer.alloc(300_000, 7));
    await zfs.snapshot([`${ds}@s1`]);
    writeFileSync(`${mnt}/dir/2.bin`, Buffer.alloc(200_000, 9));
    await zfs.snapshot([`${ds}@s2`]);
    writeFileSync(`${mnt}/dir/3.txt`, 'three');
    await zfs.snapshot([`${ds}@s3`]);
    const target = `${rootB}/ssh`;
    // the sending side runs in host a's namespace; ssh reaches b over the sandbox network
    const nsA = new Zfs({ runner: new CommandRunner({ prefix: A.exec }) });
    const sshArgv = (remote: string) => [
      ...A.exec, 'ssh', '-i', sb.adminKey, '-o', 'BatchMode=yes', '-o', `UserKnownHostsFile=${sb.knownHosts}`,
      '-o', 'StrictHostKeyChecking=yes', `root@${B.address}`, remote,
    ];
    const viaSsh = async (send: Awaited<ReturnType<Zfs['send']>>) => {
      const ssh = spawn(sshArgv(`zfs receive -F ${target}`)[0]!, sshArgv(`zfs receive -F ${target}`).slice(1), { stdio: ['pipe', 'ignore', 'pipe'] });
      let err = '';
      ssh.stderr.on('data', (d) => (err += d));
      const exit = new Promise<number>((r) => ssh.once('close', (c) => r(c ?? -1)));
      await pipeline(send.stream, ssh.stdin);
      await send.done;
      assert.equal(await exit, 0, `ssh receive failed: ${err}`);
    };
    await viaSsh(await nsA.send({ snapshot: `${ds}@s1` }));
    await viaSsh(await nsA.send({ snapshot: `${ds}@s3`, from: `${ds}@s1`, incremental: 'I' }));
    const remoteList = shStatus(sshArgv(`zfs list -H -t snapshot -o name -r ${target}`));
    assert.equal(remoteList.status, 0, remoteList.stderr);
    assert.deepEqual(remoteList.stdout.trim().split('\n'), [`${target}@s1`, `${target}@s2`, `${target}@s3`]);
    // compare content: clone the replica's newest snapshot and checksum both trees
    await zfs.clone(`${target}@s3`, `${rootB}/sshcheck`, { mountpoint: `${B.mountBase}/${rootB.split('/')[1]}-check` });
    assert.equal(treeChecksum(`${B.mountBase}/${rootB.split('/')[1]}-check`), treeChecksum(mnt));
    const srcGuids = (await zfs.list(ds)).get(ds)!.snapshots.map((s) => s.guid);
    const dstGuids = (await zfs.list(target)).get(target)!.snapshots.map((s) => s.guid);
    assert.deepEqual(dstGuids, srcGuids);
  });
});

describe('runner', () => {
  it('runs zfs inside a host namespace through a prefix and counts calls per verb', async () => {
    const r = new CommandRunner({ prefix: B.exec });
    const z = new Zfs({ runner: r });
    const caps = await z.capabilities();
    r.resetCounts();
    const t = await z.list(B.pool, { depth: 0, snapshots: false });
    assert.ok(t.has(B.pool));
    assert.equal(r.counts.get(caps.listParsable ? 'zfs list' : 'zfs get'), 1);
    assert.equal(r.total(), 1);
  });

  it('a missing binary is a clear error naming the command', async () => {
    const z = new Zfs({ zfs: '/nonexistent/zfs' });
    await assert.rejects(z.capabilities(), /nonexistent\/zfs/);
  });
});

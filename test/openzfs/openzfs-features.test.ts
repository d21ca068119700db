// What only OpenZFS offers, exercised through the adapter and the agent (openzfs tier
// only): exact listings with `zfs list -p` in one call, `recv -u`, `written`-based
// skip-unchanged, atomic multi-snapshot and `destroy ds@a,b`, hold tags, and retention
// that prunes expired snapshots while the replica's base stays held.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { sandbox, host, uniq, destroyTestTree, sh } from '../lib/sandbox.js';
import { startFleet, sleep, type Fleet } from '../lib/fleet.js';
import { Agent } from '../../src/agent/agent.js';
import { silentLogger } from '../../src/util/log.js';
import { Zfs, ZfsCommandError, pipeSendToRecv } from '../../src/zfs/index.js';

const sb = sandbox();
const A = host(sb, 'a');
const B = host(sb, 'b');
const zfs = new Zfs();
const rootA = `${A.pool}/${uniq()}`;
const rootB = `${B.pool}/${uniq()}`;
const mntA = `${A.mountBase}/${rootA.split('/')[1]}`;
let fleet: Fleet;

const get = (ds: string, prop: string) => sh(['zfs', 'get', '-H', '-p', '-o', 'value', prop, ds]).trim();

before(async () => {
  await zfs.create(rootA, { mountpoint: mntA });
  await zfs.create(rootB, { mountpoint: 'none', canmount: 'off' });
  fleet = await startFleet(sb);
});

after(async () => {
  await fleet?.close();
  destroyTestTree(rootA);
  destroyTestTree(rootB);
});

describe('OpenZFS adapter paths', () => {
  it('lists with ONE `zfs list -H -p` call: exact guid, creation, used, written agree with `zfs get -p`', async () => {
    const ds = `${rootA}/lp`;
    await zfs.create(ds);
    writeFileSync(`${mntA}/lp/f1`, randomBytes(300_000));
    const names = await zfs.snapshot([`${ds}@one`]);
    assert.equal(names, 1);
    writeFileSync(`${mntA}/lp/f2`, randomBytes(200_000));
    await zfs.snapshot([`${ds}@two`]);
    writeFileSync(`${mntA}/lp/f3`, randomBytes(100_000));
    sh(['sync']);
    zfs.runner.resetCounts();
    const tree = await zfs.list(ds, { props: ['mountpoint'] });
    assert.deepEqual(Object.fromEntries(zfs.runner.counts), { 'zfs list': 1 });
    const info = tree.get(ds)!;
    assert.deepEqual(info.snapshots.map((s) => s.snap), ['one', 'two']);
    for (const s of info.snapshots) {
      assert.equal(s.guid, get(s.name, 'guid'));
      assert.equal(s.creation, Number(get(s.name, 'creation')));
      assert.equal(s.written, Number(get(s.name, 'written')));
      assert.equal(s.used, Number(get(s.name, 'used')));
    }
    assert.ok(info.snapshots[1]!.written! >= 200_000, `written of @two: ${info.snapshots[1]!.written}`);
    assert.equal(info.written, Number(get(ds, 'written')));
    assert.ok(info.written! >= 100_000, `written since @two: ${info.written}`);
    assert.equal(info.props.mountpoint, `${mntA}/lp`);
  });

  it('snapshots several datasets in ONE atomic call (one snapshot per dataset per call) and destroys several snapshots in ONE call', async () => {
    await zfs.create(`${rootA}/m1`, { canmount: 'off' });
    await zfs.create(`${rootA}/m2`, { canmount: 'off' });
    zfs.runner.resetCounts();
    // OpenZFS refuses two snapshots of one dataset in one call: m1@y goes in a second call
    assert.equal(await zfs.snapshot([`${rootA}/m1@x`, `${rootA}/m2@x`, `${rootA}/m1@y`]), 2);
    // one txg: the snapshots of one atomic call share createtxg
    assert.equal(get(`${rootA}/m1@x`, 'createtxg'), get(`${rootA}/m2@x`, 'createtxg'));
    assert.equal(await zfs.destroySnapshots(`${rootA}/m1`, ['x', 'y']), 1);
    assert.equal(await zfs.exists(`${rootA}/m1@x`), false);
    assert.equal(await zfs.exists(`${rootA}/m1@y`), false);
  });

  it('recv -u leaves a received file system unmounted although it carries a mountpoint; -o/-x override properties', async () => {
    const ds = `${rootA}/ru`;
    await zfs.create(ds, { mountpoint: `${mntA}/ru-local` });
    writeFileSync(`${mntA}/ru-local/f`, 'x');
    await zfs.snapshot([`${ds}@s1`]);
    const target = `${rootB}/ru`;
    await pipeSendToRecv(await zfs.send({ snapshot: `${ds}@s1` }), await zfs.recv({ target, noMount: true }));
    assert.equal(get(target, 'mounted'), 'no');
    assert.equal(get(target, 'mountpoint'), `${mntA}/ru-local`, 'send -R carried the local mountpoint');
    const target2 = `${rootB}/ru2`;
    const recv = await zfs.recv({ target: target2, noMount: true, setProps: { readonly: 'on' }, excludeProps: ['mountpoint'] });
    assert.deepEqual(recv.argv.slice(1), ['receive', '-u', '-o', 'readonly=on', '-x', 'mountpoint', target2]);
    await pipeSendToRecv(await zfs.send({ snapshot: `${ds}@s1` }), recv);
    assert.equal(get(target2, 'mounted'), 'no');
    assert.equal(get(target2, 'readonly'), 'on');
    assert.equal(get(target2, 'mountpoint'), 'none', 'inherited from the target root');
  });
});

describe('agent on OpenZFS', () => {
  const id = randomUUID();
  const ds = `${A.pool}/projects/${id}`;
  const mnt = `${A.mountBase}/${id}`;
  let agent: Agent;

  before(async () => {
    agent = new Agent({ config: fleet.configs.get('a')!, catalog: fleet.catalog, log: silentLogger() });
    await agent.init();
    await zfs.create(ds, { canmount: 'noauto' });
    await fleet.catalog.createProject({ id, primary: 'a', replicationFactor: 1, quota: null });
    await fleet.catalog.setTargets(id, ['b']);
    await zfs.mount(ds);
    writeFileSync(`${mnt}/data.bin`, randomBytes(100_000));
  });

  after(async () => {
    await agent?.close();
  });

  it('skips unchanged projects by `written` (no file watching needed) and snapshots a changed one', async () => {
    const r1 = await agent.replicateProject(id);
    assert.deepEqual(r1.failures, []);
    assert.equal(r1.snapshotsTaken, 1);
    assert.deepEqual(r1.sends.map((s) => s.kind), ['full']);
    assert.equal(get(ds, 'written'), '0');
    const r2 = await agent.replicateProject(id);
    assert.deepEqual([r2.snapshotsTaken, r2.sends.length, r2.failures.length], [0, 0, 0]);
    // an agent that was not running when the file changed (a fresh process: no watch
    // events) still sees it: same size, so `referenced` alone would not tell
    await agent.close();
    writeFileSync(`${mnt}/data.bin`, randomBytes(100_000));
    sh(['sync']);
    assert.notEqual(get(ds, 'written'), '0');
    await sleep(1100);
    agent = new Agent({ config: fleet.configs.get('a')!, catalog: fleet.catalog, log: silentLogger() });
    const r3 = await agent.replicateProject(id);
    assert.deepEqual(r3.failures, []);
    assert.equal(r3.snapshotsTaken, 1);
    assert.deepEqual(r3.sends.map((s) => s.kind), ['incremental']);
    const r4 = await agent.replicateProject(id);
    assert.deepEqual([r4.snapshotsTaken, r4.sends.length], [0, 0]);
  });

  it('hold tags follow the replica base; retention prunes expired snapshots on both sides but never the held base', async () => {
    const snaps = (await zfs.list(ds)).get(ds)!.snapshots;
    assert.equal(snaps.length, 2);
    const [old, base] = snaps as [(typeof snaps)[0], (typeof snaps)[0]];
    assert.deepEqual(await zfs.holds(old.name), { count: 0, tags: [] });
    assert.deepEqual(await zfs.holds(base.name), { count: 1, tags: ['storage:replica:b'] });
    // 400 days later: every automatic snapshot is past the default grid (26 weeks)
    const later = () => Date.now() + 400 * 86_400_000;
    // retention runs for what a cycle snapshots and what its audit slice re-lists: with a
    // one-second audit period, every dataset is in the slice of the cycle after the first
    const audited = (host: 'a' | 'b') => ({ ...fleet.configs.get(host)!, audit: { period: 1, maxPerCycle: 2000 } });
    const futureA = new Agent({ config: audited('a'), catalog: fleet.catalog, log: silentLogger(), now: later });
    const futureB = new Agent({ config: audited('b'), catalog: fleet.catalog, log: silentLogger(), now: later });
    const pruneCycles = async (agent: Agent) => {
      let pruned = 0;
      const failures: unknown[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await agent.runCycle();
        pruned += r.pruned;
        failures.push(...r.failures);
        await sleep(1100);
      }
      return { pruned, failures };
    };
    try {
      const ra = await pruneCycles(futureA);
      assert.deepEqual(ra.failures, []);
      assert.ok(ra.pruned >= 1, JSON.stringify(ra));
      assert.deepEqual((await zfs.list(ds)).get(ds)!.snapshots.map((s) => s.snap), [base.snap]);
      // the held base refuses a direct destroy too
      await assert.rejects(zfs.destroySnapshot(base.name), ZfsCommandError);
      assert.equal(await zfs.exists(base.name), true);
      const replica = `${B.pool}/replicas/${id}`;
      assert.equal((await zfs.list(replica)).get(replica)!.snapshots.length, 2);
      const rb = await pruneCycles(futureB);
      assert.deepEqual(rb.failures, []);
      assert.ok(rb.pruned >= 1);
      assert.deepEqual((await zfs.list(replica)).get(replica)!.snapshots.map((s) => s.guid), [base.guid]);
    } finally {
      await futureA.close();
      await futureB.close();
    }
  });
});

// The rolling audit: what an admin changes by hand on either side, where the idle cycle
// does not look, is found within one audit period and repaired by the usual planner,
// with nothing destroyed. Real sandbox hosts (zfs-fuse or OpenZFS), real sshd + receiver.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { sandbox, host, expectedImplementation, scaled } from '../lib/sandbox.js';
import { startFleet, createProject, cycleAll, sleep, type Fleet } from '../lib/fleet.js';
import type { CycleReport } from '../../src/agent/agent.js';

const sb = sandbox();
const A = host(sb, 'a');
const B = host(sb, 'b');
let fleet: Fleet;
const PERIOD = 6; // seconds: the audit period of this test's agents


function zfsCallsSince(h: typeof A, offset: number): string[] {
  const log = `${h.dir}/zfs-calls.log`;
  const text = readFileSync(log, 'utf8');
  return text.slice(offset).split('\n').filter(Boolean);
}
const logSize = (h: typeof A) => {
  try {
    return statSync(`${h.dir}/zfs-calls.log`).size;
  } catch {
    return 0;
  }
};
const newestGuid = async (ds: string) => {
  const t = (await fleet.zfs.list(ds, { depth: 0 })).get(ds);
  return t?.snapshots[t.snapshots.length - 1]?.guid;
};
const zpoolSync = () => {
  if (expectedImplementation(sb) === 'openzfs') spawnSync('zpool', ['sync']);
};

before(async () => {
  fleet = await startFleet(sb);
  for (const a of fleet.agents.values()) a.reconfigure({ ...a.config, audit: { period: PERIOD, maxPerCycle: 2000 } });
});

after(async () => {
  await fleet?.close();
});

describe('rolling audit: hand-made changes are found within one period and repaired, nothing destroyed', () => {
  it('finds a snapshot destroyed on a replica, one made on the primary, a replica destroyed on its target, and a project created by hand', async () => {
    // three projects on a, each replicated to b and c
    const ps = [];
    for (let i = 0; i < 3; i++) {
      const p = await createProject(fleet, A, { files: { 'f.bin': randomBytes(10_000) } });
      ps.push(p);
    }
    await cycleAll(fleet);
    // a second snapshot of the first project, so that destroying the replica's newest leaves a base
    writeFileSync(`${ps[0]!.mnt}/g.bin`, randomBytes(5000));
    await sleep(1100);
    zpoolSync();
    await cycleAll(fleet);
    for (const p of ps) assert.equal(await newestGuid(`${B.pool}/replicas/${p.id}`), await newestGuid(p.dataset), `${p.id} replicated before the hand changes`);
    await cycleAll(fleet); // settle: the generation moved by placement/targets is read once

    const [p1, p2, p3] = ps as [(typeof ps)[0], (typeof ps)[0], (typeof ps)[0]];
    const offsets = new Map(sb.hosts.map((h) => [h.name, logSize(h)]));
    // 1. a snapshot destroyed by hand on the replica (its newest)
    const r1 = (await fleet.zfs.list(`${B.pool}/replicas/${p1.id}`, { depth: 0 })).get(`${B.pool}/replicas/${p1.id}`)!;
    assert.equal(r1.snapshots.length, 2);
    await fleet.zfs.destroySnapshot(`${B.pool}/replicas/${p1.id}@${r1.snapshots[1]!.snap}`);
    // 2. a snapshot made by hand on the primary (named: never pruned)
    await fleet.zfs.snapshot([`${p2.dataset}@by-hand`]);
    // 3. a replica destroyed on its target
    const r3 = `${B.pool}/replicas/${p3.id}`;
    const d = spawnSync('zfs', ['destroy', '-r', r3], { encoding: 'utf8' });
    assert.equal(d.status, 0, d.stderr);
    // 4. a project created by hand on the primary: zfs create plus its catalog row
    const id4 = randomUUID();
    const ds4 = `${A.pool}/projects/${id4}`;
    await fleet.zfs.create(ds4, { canmount: 'noauto' });
    await fleet.catalog.createProject({ id: id4, primary: 'a', replicationFactor: 2, quota: null });
    const handMadeAt = Date.now();

    // nothing mounted changed: the idle path does not see 1-3, the audit slices do (and the
    // generation read sees 4)
    const repaired = async () =>
      (await newestGuid(`${B.pool}/replicas/${p1.id}`)) === (await newestGuid(p1.dataset)) &&
      (await newestGuid(`${B.pool}/replicas/${p2.id}`)) === (await newestGuid(p2.dataset)) &&
      (await newestGuid(r3)) === (await newestGuid(p3.dataset)) &&
      (await fleet.catalog.getProject(id4))!.targets.length === 2 &&
      (await newestGuid(`${host(sb, (await fleet.catalog.getProject(id4))!.targets[0]!).pool}/replicas/${id4}`)) === (await newestGuid(ds4));
    // found within one period; repaired by the cycles after (a rolled-back replica head: one more)
    const deadline = handMadeAt + scaled(PERIOD * 1000) + scaled(90_000);
    let ok = false;
    const sends: CycleReport['sends'] = [];
    const trace: string[] = [];
    while (!ok && Date.now() < deadline) {
      await sleep(1000);
      const rs = await cycleAll(fleet);
      for (const r of rs.values()) sends.push(...r.sends);
      const ra = rs.get('a')!;
      trace.push(`a: snapshots ${ra.snapshotsTaken} audit ${JSON.stringify(ra.audit)} listings ${JSON.stringify(ra.listings)} failures ${JSON.stringify(ra.failures)} conflicts ${JSON.stringify(ra.conflicts)}`);
      ok = await repaired();
    }
    const took = (Date.now() - handMadeAt) / 1000;
    assert.ok(ok, `not repaired within ${((deadline - handMadeAt) / 1000).toFixed(0)} s (period ${PERIOD} s); sends: ${JSON.stringify(sends)}; cycles of a: ${trace.slice(-4).join(' | ')}`);
    process.stdout.write(`# audit repaired all four hand-made changes ${took.toFixed(1)} s after them (period ${PERIOD} s)\n`);
    const kinds = new Map(sends.filter((s) => s.target === 'b').map((s) => [s.project, s.kind]));
    assert.equal(kinds.get(p1.id), 'incremental', 'the replica whose newest was destroyed gets it back incrementally');
    assert.equal(kinds.get(p2.id), 'incremental', 'the hand-made snapshot follows incrementally');
    assert.equal(kinds.get(p3.id), 'full', 'the destroyed replica is sent anew');
    assert.equal(kinds.get(id4), 'full');
    assert.ok((await fleet.zfs.list(p2.dataset, { depth: 0 })).get(p2.dataset)!.snapshots.some((s) => s.snap === 'by-hand'), 'the hand-made snapshot is kept');

    // nothing destroyed by any agent or receiver meanwhile (the wrapper logs every zfs call)
    for (const h of sb.hosts) {
      const destroys = zfsCallsSince(h, offsets.get(h.name)!).filter((l) => /^destroy\b/.test(l) || / destroy /.test(` ${l} `));
      assert.deepEqual(destroys, [], `zfs destroy on ${h.name}`);
    }
  });
});

// Placement heals (real pools, sshd, the agent's own cycle): a replica host dead longer
// than placement.replaceDeadTargetAfter gets a replacement in another datacenter; the
// dead one stays a target until the new replica is confirmed, then is released from the
// list with its data kept on that host. `storagectl targets` shows and edits the list
// with a compare-and-set on its version.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { sandbox, host, treeChecksum } from '../lib/sandbox.js';
import { startFleet, type Fleet } from '../lib/fleet.js';
import { storagectl, writeAgentConfig } from '../lib/procs.js';

const sb = sandbox();
const A = host(sb, 'a');
const catalogPath = `${sb.dir}/catalog-heal-${randomUUID().slice(0, 8)}.db`;
let fleet: Fleet;
let cfgA: string;

before(async () => {
  fleet = await startFleet(sb, catalogPath);
  cfgA = writeAgentConfig(A, 'agent-heal', { catalogPath, metricsPort: 9891 });
});
after(async () => {
  await fleet?.close();
});

describe('a dead replica host', () => {
  it('is replaced by a live host elsewhere; released only after the new replica is confirmed; its data kept', async () => {
    const agent = fleet.agents.get('a')!;
    agent.config.placement.replaceDeadTargetAfter = 3;
    const id = randomUUID();
    const ds = `${A.pool}/projects/${id}`;
    await fleet.zfs.create(ds, { canmount: 'noauto' });
    await fleet.catalog.createProject({ id, primary: 'a', replicationFactor: 1, quota: null });
    await fleet.zfs.mount(ds);
    const mnt = (await fleet.zfs.get(ds, ['mountpoint'])).mountpoint!;
    writeFileSync(`${mnt}/data.txt`, 'replicate me');
    const sum = treeChecksum(mnt);
    const beat = async (dead?: string) => {
      for (const h of sb.hosts) await fleet.catalog.heartbeat(h.name, 0, h.name === dead ? Date.now() - 600_000 : Date.now());
      await agent.heartbeat(); // the agent's host list, as its timer would refresh it
    };
    await beat();
    const first = await agent.runCycle();
    assert.deepEqual(first.failures, []);
    const [x] = (await fleet.catalog.getProject(id))!.targets;
    assert.ok(x === 'b' || x === 'c', `placed on ${x}`);
    const y = x === 'b' ? 'c' : 'b';
    assert.deepEqual((await fleet.catalog.listReplicas(id)).map((r) => r.host), [x], 'confirmed on its target');

    // x stops heartbeating (10 minutes ago): past replaceDeadTargetAfter
    await beat(x);
    const heal = await agent.runCycle();
    const during = (await fleet.catalog.getProject(id))!;
    assert.deepEqual(during.targets, [x, y], `the replacement is added next to the dead target (${JSON.stringify(heal.failures)})`);
    assert.ok((await fleet.catalog.listReplicas(id)).some((r) => r.host === y), `${y} confirmed by the same cycle's send`);
    await beat(x);
    await agent.runCycle();
    const after = (await fleet.catalog.getProject(id))!;
    assert.deepEqual(after.targets, [y], 'the dead target is released once the new replica is confirmed');
    assert.ok(after.targetsVersion >= during.targetsVersion + 1);
    const kept = `${host(sb, x!).pool}/replicas/${id}`;
    assert.ok(await fleet.zfs.exists(kept), `${kept}: the released host keeps its data`);
    const onY = `${host(sb, y).pool}/replicas/${id}`;
    await fleet.zfs.set(onY, { mountpoint: `${host(sb, y).mountBase}/heal-check`, readonly: 'on' });
    await fleet.zfs.mount(onY);
    assert.equal(treeChecksum(`${host(sb, y).mountBase}/heal-check`), sum, 'the new replica holds the data');
    await fleet.zfs.unmount(onY);
    await fleet.zfs.inherit(onY, 'mountpoint');
    const events = await fleet.catalog.listEvents({ project: id, limit: 20 });
    assert.ok(events.some((e) => e.kind === 'placement' && e.detail.includes(`released ${x}`)), 'the release is in the history');

    // storagectl targets: shows the list; --add/--remove with the version check
    const show = await storagectl(sb, A, cfgA, ['targets', id, '--json']);
    assert.equal(show.code, 0, show.stderr);
    assert.deepEqual((JSON.parse(show.stdout) as { targets: Array<{ host: string }> }).targets.map((t) => t.host), [y]);
    const add = await storagectl(sb, A, cfgA, ['targets', id, '--add', x!, '--json']);
    assert.equal(add.code, 0, add.stderr);
    assert.deepEqual((await fleet.catalog.getProject(id))!.targets, [y, x]);
    const bad = await storagectl(sb, A, cfgA, ['targets', id, '--remove', 'nosuchhost']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--remove nosuchhost: not a target of/);
  });
});

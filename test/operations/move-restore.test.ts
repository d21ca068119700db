// storagectl move, restore and open on the sandbox (real zfs-fuse pools, sshd, forced
// commands): move under continuous writes loses no acknowledged write; a move that
// cannot finish leaves the source serving; --drop-source; restore in clone and rollback
// mode, also of a snapshot only a replica still has; open on a dead primary mounts the
// freshest replica; 20 concurrent move/failover calls: one proceeds; an agent cut off
// from the catalog unmounts what it serves (self-fencing) and remounts it afterwards.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { open as openFile } from 'node:fs/promises';
import { sandbox, host, treeChecksum, TIME_SCALE } from '../lib/sandbox.js';
import { startFleet, createProject, sleep, type Fleet } from '../lib/fleet.js';
import { MountSampler, storagectl, writeAgentConfig } from '../lib/procs.js';
import { Agent, selfFenceFor, sshOptions } from '../../src/agent/agent.js';
import { failover, LockedError } from '../../src/agent/failover.js';
import { move } from '../../src/agent/move.js';
import { SshPool } from '../../src/replica/transport.js';
import { leaseOwner } from '../../src/lock/lease.js';
import { silentLogger } from '../../src/util/log.js';
import type { Catalog } from '../../src/catalog/types.js';

const sb = sandbox();
const A = host(sb, 'a');
const B = host(sb, 'b');
const C = host(sb, 'c');
const catalogPath = `${sb.dir}/catalog-mv-${randomUUID().slice(0, 8)}.db`;
let fleet: Fleet;
let ssh: SshPool;
const cfg = new Map<string, string>();
const link = (h: string, state: 'up' | 'down') => spawnSync('ip', ['-n', host(sb, h).netns, 'link', 'set', 'eth0', state]);

async function cycleAll(): Promise<void> {
  // every host live for placement, however long the tests before took
  for (const h of sb.hosts) await fleet.catalog.heartbeat(h.name, 0);
  for (const a of fleet.agents.values()) {
    const r = await a.runCycle();
    assert.deepEqual(r.failures, [], `cycle of ${a.config.host}`);
  }
}

async function mountedOn(id: string): Promise<string[]> {
  const out: string[] = [];
  for (const h of sb.hosts) {
    const d = `${h.pool}/projects/${id}`;
    if ((await fleet.zfs.exists(d)) && (await fleet.zfs.get(d, ['mounted'])).mounted === 'yes') out.push(h.name);
  }
  return out;
}

before(async () => {
  fleet = await startFleet(sb, catalogPath);
  ssh = new SshPool({ ...sshOptions(fleet.configs.get('b')!), connectTimeoutSeconds: 3 });
  let port = 9591;
  for (const h of sb.hosts) cfg.set(h.name, writeAgentConfig(h, 'agent-mv', { catalogPath, metricsPort: port++, interval: `${10 * TIME_SCALE}s` }));
});

after(async () => {
  for (const h of sb.hosts) link(h.name, 'up');
  ssh?.closeAll();
  await fleet?.close();
});

describe('move', () => {
  it('under continuous writes: every write acknowledged before the stop is on the target; one writable copy at every sampled instant', async () => {
    const p = await createProject(fleet, A, { files: { 'base.bin': randomBytes(3_000_000) } });
    await cycleAll();
    mkdirSync(`${p.mnt}/data`);
    // the writer: one file per write, fsynced, acknowledged only after close; it stops
    // being acknowledged when the dataset is unmounted (data/ vanishes). No --force: the
    // move's unmount retries while a file is open at that instant
    const acked = new Map<string, Buffer>();
    let stop = false;
    let failures = 0;
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        const name = `w-${String(i).padStart(6, '0')}`;
        const body = randomBytes(2048 + (i % 7) * 1000);
        try {
          const fh = await openFile(`${p.mnt}/data/${name}`, 'wx');
          await fh.write(body);
          await fh.sync();
          await fh.close();
          acked.set(name, body);
          await sleep(5); // an application writes in bursts, not in a spin loop
        } catch {
          failures++;
          await sleep(20);
        }
      }
    })();
    const sampler = new MountSampler(sb, p.id, () => new Set(['a', 'b', 'c'])).start();
    await sleep(1500);
    const r = await storagectl(sb, A, cfg.get('a')!, ['move', '--here', p.id, 'b', '--json', '--presync-threshold', '8388608']);
    stop = true;
    await writer;
    sampler.stop();
    assert.equal(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout) as { from: string; to: string; finalSnapshot: string; downtimeMs: number; rounds: Array<{ phase: string; bytes: number }>; source: string };
    assert.equal(res.to, 'b');
    assert.equal(res.source, 'replica');
    assert.ok(acked.size > 20, `the writer got ${acked.size} writes acknowledged`);
    const target = `${B.mountBase}/${p.id}`;
    let missing = 0;
    for (const [name, body] of acked) {
      if (!existsSync(`${target}/data/${name}`) || !readFileSync(`${target}/data/${name}`).equals(body)) missing++;
    }
    assert.equal(missing, 0, `${missing} of ${acked.size} acknowledged writes missing on the target`);
    process.stdout.write(`# move under writes: ${acked.size} acknowledged writes, all on b; writes stopped for ${res.downtimeMs} ms; rounds ${res.rounds.map((x) => `${x.phase}:${x.bytes}`).join(' ')}\n`);
    const worst = sampler.maxReachableWritable();
    assert.ok(sampler.samples.length > 5, 'the sampler ran');
    assert.ok(worst.max <= 1, `two writable copies at ${worst.at}: ${worst.hosts?.join(', ')}`);
    assert.deepEqual(await mountedOn(p.id), ['b']);
    const rec = (await fleet.catalog.getProject(p.id))!;
    assert.equal(rec.primary, 'b');
    assert.equal(rec.state, 'active');
    assert.ok(rec.targets.includes('a'), 'the source stays a replica');
    assert.ok(!rec.targets.includes('b'));
    // the source's copy is an ordinary replica: the new primary replicates onto it
    assert.equal(await fleet.zfs.exists(`${A.pool}/replicas/${p.id}`), true);
    writeFileSync(`${target}/after-move.txt`, 'new primary');
    await fleet.zfs.snapshot([`${B.pool}/projects/${p.id}@after-move`]);
    const rb = await fleet.agents.get('b')!.replicateProject(p.id);
    assert.deepEqual([rb.failures, rb.conflicts], [[], []]);
    const onA = (await fleet.zfs.list(`${A.pool}/replicas/${p.id}`, { depth: 0 })).get(`${A.pool}/replicas/${p.id}`)!;
    assert.ok(onA.snapshots.some((s) => s.snap === 'after-move'), 'the old source receives incrementals from the new primary');
  });

  it('a move whose target cannot be reached fails before the switch and leaves the source serving, mounted', async () => {
    const p = await createProject(fleet, A, { files: { f: 'x' } });
    await cycleAll();
    link('c', 'down');
    try {
      const r = await storagectl(sb, A, cfg.get('a')!, ['move', '--here', p.id, 'c']);
      assert.equal(r.code, 1, r.stdout + r.stderr);
      assert.match(r.stderr, /failed before the switch.*still served by a/s);
    } finally {
      link('c', 'up');
    }
    const rec = (await fleet.catalog.getProject(p.id))!;
    assert.deepEqual([rec.primary, rec.state], ['a', 'active']);
    assert.deepEqual(await mountedOn(p.id), ['a']);
    // re-running succeeds once the target is back (and heartbeats again)
    for (const h of ['a', 'b', 'c']) await fleet.catalog.heartbeat(h, 0);
    const again = await storagectl(sb, A, cfg.get('a')!, ['move', '--here', p.id, 'c', '--drop-source', '--json']);
    assert.equal(again.code, 0, again.stderr);
    assert.equal((JSON.parse(again.stdout) as { source: string }).source, 'dropped');
    assert.deepEqual(await mountedOn(p.id), ['c']);
    assert.equal(await fleet.zfs.exists(`${A.pool}/projects/${p.id}`), false);
    assert.equal(await fleet.zfs.exists(`${A.pool}/replicas/${p.id}`), false, '--drop-source removed the copy on a');
    assert.ok(!(await fleet.catalog.getProject(p.id))!.targets.includes('a'));
    assert.equal(readFileSync(`${C.mountBase}/${p.id}/f`, 'utf8'), 'x');
  });

  it('without a host: goes to a live, non-draining host of another datacenter that holds a replica (only the final delta moves)', async () => {
    const p = await createProject(fleet, A, { files: { f: 'chosen' } });
    await cycleAll();
    assert.deepEqual((await fleet.catalog.listReplicas(p.id)).map((r) => r.host).sort(), ['b', 'c']);
    await fleet.catalog.setDraining('b', true); // b holds a replica too, but is being emptied
    try {
      const r = await storagectl(sb, A, cfg.get('a')!, ['move', '--here', p.id, '--json']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /destination c \(holds a replica at \S+: only the final delta moves\)/);
      const res = JSON.parse(r.stdout) as { to: string; rounds: Array<{ bytes: number }> };
      assert.equal(res.to, 'c');
      assert.deepEqual(await mountedOn(p.id), ['c']);
      assert.equal(readFileSync(`${C.mountBase}/${p.id}/f`, 'utf8'), 'chosen');
    } finally {
      await fleet.catalog.setDraining('b', false);
    }
  });

  it('refuses bad input with exit 2 and changes nothing', async () => {
    const p = await createProject(fleet, A, { files: { f: 'x' } });
    for (const args of [['move', '--here', 'not-a-uuid', 'b'], ['move', '--here', p.id, 'no such host!'], ['move', '--here', p.id, 'b', '--presync-threshold', 'lots']]) {
      const r = await storagectl(sb, A, cfg.get('a')!, args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    }
    const r = await storagectl(sb, B, cfg.get('b')!, ['move', '--here', p.id, 'c']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /served by a, not b: run the move there/);
    assert.deepEqual(await mountedOn(p.id), ['a']);
  });
});

describe('20 concurrent move/failover calls on one project', () => {
  it('exactly one proceeds, the others fail with "locked by <owner>"', async () => {
    const p = await createProject(fleet, A, { files: { f: 'y' } });
    await cycleAll();
    const agentA = fleet.agents.get('a')!;
    const calls = Array.from({ length: 20 }, (_, i) =>
      i % 2 === 0 ? move(agentA, p.id, 'b', { owner: leaseOwner('mover', 'a', i), presyncThresholdBytes: 1 << 30 }) : failover(fleet.catalog, ssh, p.id, { owner: leaseOwner('failer', 'b', i), graceMs: 60_000 }),
    );
    const results = await Promise.allSettled(calls);
    const ok = results.filter((r) => r.status === 'fulfilled');
    const locked = results.filter((r) => r.status === 'rejected' && r.reason instanceof LockedError);
    assert.equal(ok.length, 1, JSON.stringify(results.filter((r) => r.status === 'rejected' && !(r.reason instanceof LockedError)).map((r) => String((r as PromiseRejectedResult).reason))));
    assert.equal(locked.length, 19);
    for (const r of locked) assert.match(String((r as PromiseRejectedResult).reason), /locked by (mover@a|failer@b):\d+/);
    assert.equal((await mountedOn(p.id)).length, 1);
  });
});

describe('restore', () => {
  it('clone mode mounts a local snapshot read-only; rollback mode restores the live state and keeps every later snapshot', async () => {
    const p = await createProject(fleet, A, { files: { 'doc.txt': 'v1', 'keep.bin': randomBytes(100_000) } });
    await fleet.zfs.snapshot([`${p.dataset}@named-v1`]);
    writeFileSync(`${p.mnt}/doc.txt`, 'v2');
    writeFileSync(`${p.mnt}/new.txt`, 'added after v1');
    await fleet.zfs.snapshot([`${p.dataset}@named-v2`]);
    const clone = await storagectl(sb, A, cfg.get('a')!, ['restore', p.id, 'named-v1', '--json']);
    assert.equal(clone.code, 0, clone.stderr);
    const c = JSON.parse(clone.stdout) as { clone: { mountpoint: string }; source: { host: string; fetched: boolean } };
    assert.deepEqual(c.source, { host: 'a', fetched: false });
    assert.equal(readFileSync(`${c.clone.mountpoint}/doc.txt`, 'utf8'), 'v1');
    assert.throws(() => writeFileSync(`${c.clone.mountpoint}/x`, 'no'), /EROFS|read-only/i);
    assert.equal(readFileSync(`${p.mnt}/doc.txt`, 'utf8'), 'v2', 'clone mode leaves the live data alone');

    const rb = await storagectl(sb, A, cfg.get('a')!, ['restore', p.id, 'named-v1', '--mode', 'rollback', '--json']);
    assert.equal(rb.code, 0, rb.stderr);
    const r = JSON.parse(rb.stdout) as { safetySnapshot: string; restoredSnapshot: string };
    assert.equal(readFileSync(`${p.mnt}/doc.txt`, 'utf8'), 'v1');
    assert.equal(existsSync(`${p.mnt}/new.txt`), false);
    const snaps = (await fleet.zfs.list(p.dataset, { depth: 0 })).get(p.dataset)!.snapshots.map((s) => s.snap);
    for (const s of ['named-v1', 'named-v2', r.safetySnapshot, r.restoredSnapshot]) assert.ok(snaps.includes(s), `${s} kept (${snaps.join(' ')})`);
    // the state before the rollback is in the safety snapshot
    const safe = await storagectl(sb, A, cfg.get('a')!, ['restore', p.id, r.safetySnapshot, '--json']);
    assert.equal(safe.code, 0, safe.stderr);
    assert.equal(readFileSync(`${(JSON.parse(safe.stdout) as { clone: { mountpoint: string } }).clone.mountpoint}/new.txt`, 'utf8'), 'added after v1');
    // replication continues on the same lineage
    const cyc = await fleet.agents.get('a')!.replicateProject(p.id);
    assert.deepEqual([cyc.failures, cyc.conflicts], [[], []]);
  });

  it('a snapshot only a replica still has is fetched back, in clone and in rollback mode', async () => {
    const p = await createProject(fleet, A, { files: { 'doc.txt': 'old', 'big.bin': randomBytes(500_000) } });
    await fleet.zfs.snapshot([`${p.dataset}@only-on-replicas`]);
    const sum = treeChecksum(p.mnt);
    await cycleAll();
    writeFileSync(`${p.mnt}/doc.txt`, 'new');
    await fleet.zfs.snapshot([`${p.dataset}@newer`]);
    await fleet.agents.get('a')!.replicateProject(p.id);
    // the primary loses the snapshot (released holds first: the replicas' base moved on)
    spawnSync('zfs', ['release', '-r', 'storage:replica:b', `${p.dataset}@only-on-replicas`]);
    spawnSync('zfs', ['release', '-r', 'storage:replica:c', `${p.dataset}@only-on-replicas`]);
    await fleet.zfs.destroySnapshot(`${p.dataset}@only-on-replicas`);

    const clone = await storagectl(sb, A, cfg.get('a')!, ['restore', p.id, 'only-on-replicas', '--json']);
    assert.equal(clone.code, 0, clone.stderr);
    const c = JSON.parse(clone.stdout) as { clone: { mountpoint: string }; source: { host: string; fetched: boolean; bytes: number } };
    assert.equal(c.source.fetched, true);
    assert.ok(['b', 'c'].includes(c.source.host));
    assert.ok(c.source.bytes > 500_000);
    assert.equal(treeChecksum(c.clone.mountpoint), sum);

    const rb = await storagectl(sb, A, cfg.get('a')!, ['restore', p.id, 'only-on-replicas', '--mode', 'rollback', '--from', 'c', '--json']);
    assert.equal(rb.code, 0, rb.stderr);
    assert.equal(treeChecksum(p.mnt), sum, 'live state equals the replica-only snapshot');
    const snaps = (await fleet.zfs.list(p.dataset, { depth: 0 })).get(p.dataset)!.snapshots.map((s) => s.snap);
    assert.ok(snaps.includes('newer'), 'later snapshots are kept');

    const none = await storagectl(sb, A, cfg.get('a')!, ['restore', p.id, 'never-existed']);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /not on a nor on any replica: b: no such snapshot; c: no such snapshot/);
  });
});

describe('open', () => {
  it('mounts on the primary; when the primary is dead, on the freshest live replica', async () => {
    const p = await createProject(fleet, A, { files: { f: 'fresh' } });
    await cycleAll();
    // c gets one more snapshot than b: c is the freshest
    writeFileSync(`${p.mnt}/f2`, 'only on c');
    await fleet.zfs.snapshot([`${p.dataset}@for-c`]);
    const r = await fleet.agents.get('a')!.replicateProject(p.id, { to: 'c' });
    assert.deepEqual(r.failures, []);
    const live = await storagectl(sb, B, cfg.get('b')!, ['open', p.id]);
    assert.equal(live.code, 2);
    assert.match(live.stderr, /served by a, which is live: open it there/);
    await fleet.zfs.unmount(p.dataset); // a "crashed": nothing mounted there, no heartbeat
    await fleet.catalog.heartbeat('a', 0, Date.now() - 3_600_000);
    await fleet.catalog.heartbeat('b', 0);
    await fleet.catalog.heartbeat('c', 0);
    link('a', 'down');
    try {
      const o = await storagectl(sb, B, cfg.get('b')!, ['open', p.id, '--json']);
      assert.equal(o.code, 0, o.stderr);
      const res = JSON.parse(o.stdout) as { host: string; failover: { snapshot: string; oldPrimaryFenced: string } };
      assert.equal(res.host, 'c', 'the freshest replica');
      assert.notEqual(res.failover.snapshot, (await fleet.catalog.listReplicas(p.id)).find((x) => x.host === 'b')?.snapshot, 'newer than what b has');
      // a unreachable: its old heartbeat proves nothing; the failover waited the self-fence bound
      assert.equal(res.failover.oldPrimaryFenced, 'self-fenced');
      assert.deepEqual(await mountedOn(p.id), ['c']);
      assert.equal(readFileSync(`${C.mountBase}/${p.id}/f2`, 'utf8'), 'only on c');
    } finally {
      link('a', 'up');
      await fleet.catalog.heartbeat('a', 0);
    }
  });
});

/**
 * The fleet's catalog behind a switch: while `before` returns a promise, every call waits
 * for it first (one that never settles hangs the call, a rejected one fails it).
 */
function catalogBehind(before: () => Promise<unknown> | undefined): Catalog {
  return new Proxy(fleet.catalog, {
    get(t, k, r) {
      const v = Reflect.get(t, k, r) as unknown;
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        const call = () => (v as (...a: unknown[]) => unknown).apply(t, args);
        const wait = before();
        return wait ? wait.then(call) : call();
      };
    },
  }) as Catalog;
}

describe('self-fencing', () => {
  it('an agent without catalog contact for failover.selfFenceAfter unmounts what it serves, and remounts it when the catalog answers', async () => {
    const p = await createProject(fleet, A, { files: { f: 'z' } });
    // the same catalog behind a switch that makes every call fail
    let down = false;
    const flaky = catalogBehind(() => (down ? Promise.reject(new Error('catalog unreachable (test)')) : undefined));
    const config = { ...fleet.configs.get('a')!, failover: { mode: 'manual' as const, fenceCheck: 1, selfFenceAfter: 2, maxClockSkew: 2 } };
    const agent = new Agent({ config, catalog: flaky, zfs: fleet.zfs, log: silentLogger() });
    try {
      assert.deepEqual((await agent.fenceCheck()).selfFenced, []);
      down = true;
      await sleep(2500);
      const r = await agent.fenceCheck();
      assert.ok(r.selfFenced.includes(p.id), JSON.stringify(r));
      assert.equal((await fleet.zfs.get(p.dataset, ['mounted'])).mounted, 'no');
      down = false;
      const back = await agent.fenceCheck();
      assert.ok(back.remounted.includes(p.id), JSON.stringify(back));
      assert.equal((await fleet.zfs.get(p.dataset, ['mounted'])).mounted, 'yes');
      assert.equal(readFileSync(`${p.mnt}/f`, 'utf8'), 'z');
    } finally {
      await agent.close();
    }
  });

  it('the watchdog fences while the fence check waits on a catalog read that never returns; an operation holding the project keeps it unmounted', async () => {
    // found by the 60-minute chaos run: the self-fence lived inside the fence check, which
    // never overlaps itself, so a read stuck for the driver's timeout (or an automatic
    // failover of another project) left a cut-off primary serving past the failover's bound
    const p = await createProject(fleet, A, { files: { f: 'w' } });
    let hang = false;
    const stuck = catalogBehind(() => (hang ? new Promise(() => undefined) : undefined));
    const config = { ...fleet.configs.get('a')!, failover: { mode: 'manual' as const, fenceCheck: 1, selfFenceAfter: 2, maxClockSkew: 2 } };
    const agent = new Agent({ config, catalog: stuck, zfs: fleet.zfs, log: silentLogger() });
    try {
      assert.deepEqual((await agent.fenceCheck()).selfFenced, []);
      hang = true;
      let settled = false;
      void agent.fenceCheck().finally(() => (settled = true)); // waits for ever
      agent.selfFence.start(250);
      const t0 = Date.now();
      while ((await fleet.zfs.get(p.dataset, ['mounted'])).mounted === 'yes' && Date.now() - t0 < 10_000) await sleep(250);
      const ms = Date.now() - t0;
      assert.equal((await fleet.zfs.get(p.dataset, ['mounted'])).mounted, 'no', 'fenced by the watchdog');
      assert.equal(settled, false, 'while the fence check was still waiting for its read');
      assert.ok(ms < 2000 + 250 + 5000, `fenced ${ms} ms after the last contact (selfFenceAfter 2 s + one tick + the fence)`);
      agent.selfFence.stop();
      hang = false;
      // an operation of this agent holds the project (a move that found it unmounted): the
      // catalog answering again does not remount it under the operation
      const release = await agent.claim(p.id);
      const held = await agent.fenceCheck();
      assert.ok(!held.remounted.includes(p.id), JSON.stringify(held));
      assert.equal((await fleet.zfs.get(p.dataset, ['mounted'])).mounted, 'no');
      release();
      const back = await agent.fenceCheck();
      assert.ok(back.remounted.includes(p.id), JSON.stringify(back));
      assert.equal(readFileSync(`${p.mnt}/f`, 'utf8'), 'w');
    } finally {
      agent.selfFence.stop();
      await agent.close();
    }
  });

  it('a fence by the watchdog during the fence check\'s read is remounted by that check, not forgotten', async () => {
    // found by the chaos tier (seed 20261202): a SIGCONT after a pause fired both timers;
    // the check listed the project as mounted, the watchdog unmounted it during the
    // check's read, and the remount went by the older list: "mounted", so forgotten
    const p = await createProject(fleet, A, { files: { f: 'p' } });
    // the catalog behind a gate: while closed, every call waits for it to open
    let gate: Promise<void> | undefined;
    let release = () => {};
    const gated = catalogBehind(() => gate);
    let off = 0;
    const config = { ...fleet.configs.get('a')!, failover: { mode: 'manual' as const, fenceCheck: 1, selfFenceAfter: 5, maxClockSkew: 2 } };
    const agent = new Agent({ config, catalog: gated, zfs: fleet.zfs, log: silentLogger(), now: () => Date.now() + off });
    try {
      assert.deepEqual((await agent.fenceCheck()).selfFenced, []);
      gate = new Promise<void>((res) => (release = res)); // the next read waits
      const check = agent.fenceCheck();
      await sleep(200);
      off = 60_000; // the pause: the watchdog finds no contact for a minute and fences
      assert.ok((await agent.selfFence.tick()).includes(p.id));
      assert.equal((await fleet.zfs.get(p.dataset, ['mounted'])).mounted, 'no');
      off = 0;
      gate = undefined;
      release(); // the read answers: the catalog still names a
      const r = await check;
      assert.ok(r.remounted.includes(p.id), JSON.stringify(r));
      assert.equal((await fleet.zfs.get(p.dataset, ['mounted'])).mounted, 'yes');
    } finally {
      await agent.close();
    }
  });

  it('an agent restarted after more than selfFenceAfter without contact fences at once, before its catalog opens', async () => {
    const p = await createProject(fleet, A, { files: { f: 'r' } });
    const stateDir = `/var/tmp/self-fence-${randomUUID().slice(0, 8)}`;
    mkdirSync(stateDir, { recursive: true });
    // the previous process's last contact, 30 s ago (it was killed, and restarts now)
    writeFileSync(`${stateDir}/catalog-contact`, `${Date.now() - 30_000}\n`);
    const config = { ...fleet.configs.get('a')!, stateDir, failover: { mode: 'manual' as const, fenceCheck: 1, selfFenceAfter: 2, maxClockSkew: 2 } };
    const watchdog = selfFenceFor(config, fleet.zfs, silentLogger());
    assert.equal(watchdog.isolatedNow(), true);
    assert.ok((await watchdog.tick()).includes(p.id), 'fenced on the first tick');
    assert.equal((await fleet.zfs.get(p.dataset, ['mounted'])).mounted, 'no');
    // the catalog opens and names this host: the fence check remounts it and records the contact
    const agent = new Agent({ config, catalog: fleet.catalog, zfs: fleet.zfs, log: silentLogger(), selfFence: watchdog });
    try {
      const back = await agent.fenceCheck();
      assert.ok(back.remounted.includes(p.id), JSON.stringify(back));
      assert.equal(readFileSync(`${p.mnt}/f`, 'utf8'), 'r');
      const recorded = Number(readFileSync(`${stateDir}/catalog-contact`, 'utf8'));
      assert.ok(Date.now() - recorded < 5000, `contact recorded (${recorded})`);
    } finally {
      await agent.close();
    }
  });
});

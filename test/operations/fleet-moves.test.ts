// Moves as fleet operations, with real storage-agent processes on three namespace hosts
// (zfs-fuse pools, sshd, forced-command receivers) sharing one catalog:
//  - `storagectl move <project>` typed on c (neither primary nor target): the primary's
//    agent performs it to the replica host chosen, under a continuous writer; --json parsed;
//    then --no-wait and --status follow a second move to its end;
//  - `storagectl cancel` while the move pre-syncs: the project stays on its source,
//    mounted and active;
//  - `storagectl drain a` with 20 projects on a, the drain SIGKILLed midway and re-run:
//    every project ends on b or c with every write and snapshot, a gets no new replica.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { open as openFile } from 'node:fs/promises';
import { sandbox, host, scaled, TIME_SCALE, type SandboxHost } from '../lib/sandbox.js';
import { AgentProcess, dumpAgents, MountSampler, storagectl, waitFor, writeAgentConfig } from '../lib/procs.js';
import { sleep } from '../lib/fleet.js';
import { SqliteCatalog } from '../../src/catalog/sqlite.js';
import { Zfs } from '../../src/zfs/index.js';

const sb = sandbox();
const A = host(sb, 'a');
const C = host(sb, 'c');
const zfs = new Zfs();
const catalogPath = `${sb.dir}/catalog-fm-${randomUUID().slice(0, 8)}.db`;
let catalog: SqliteCatalog;
const agents = new Map<string, AgentProcess>();
const cfg = new Map<string, string>();
// three moves at a time per agent; replication every 2 s
const extra = `moves:\n  concurrency: 3\n`;

function dumpAll(tails = true): void {
  dumpAgents(sb, agents, 'agent-fm', tails ? 10 : 0);
}

async function newProject(h: SandboxHost, files: Record<string, Buffer | string>, o: { targets?: string[] } = {}): Promise<{ id: string; mnt: string }> {
  const id = randomUUID();
  const ds = `${h.pool}/projects/${id}`;
  await zfs.create(ds, { canmount: 'noauto' });
  await catalog.createProject({ id, primary: h.name, replicationFactor: o.targets?.length ?? 2, quota: null });
  if (o.targets) await catalog.setTargets(id, o.targets);
  await zfs.mount(ds);
  const mnt = `${h.mountBase}/${id}`;
  for (const [name, body] of Object.entries(files)) writeFileSync(`${mnt}/${name}`, body);
  return { id, mnt };
}

async function mountedOn(id: string): Promise<string[]> {
  const out: string[] = [];
  for (const h of sb.hosts) {
    const d = `${h.pool}/projects/${id}`;
    if ((await zfs.exists(d)) && (await zfs.get(d, ['mounted'])).mounted === 'yes') out.push(h.name);
  }
  return out;
}

/** every target of the project confirmed (replica rows) at the primary's newest snapshot or later */
async function replicated(id: string, n: number): Promise<boolean> {
  const p = await catalog.getProject(id);
  if (!p || p.targets.length < n) return false;
  const rows = await catalog.listReplicas(id);
  return p.targets.every((t) => rows.some((r) => r.host === t));
}

/** A writer: one fsynced file per write, acknowledged after close; stops being acknowledged when unmounted. */
function startWriter(mnt: string): { acked: Map<string, Buffer>; stop: () => Promise<void> } {
  const acked = new Map<string, Buffer>();
  let stop = false;
  mkdirSync(`${mnt}/data`, { recursive: true });
  const done = (async () => {
    for (let i = 0; !stop; i++) {
      const name = `w-${String(i).padStart(6, '0')}`;
      const body = randomBytes(2048 + (i % 7) * 1000);
      try {
        const fh = await openFile(`${mnt}/data/${name}`, 'wx');
        await fh.write(body);
        await fh.sync();
        await fh.close();
        acked.set(name, body);
        await sleep(5);
      } catch {
        await sleep(20);
      }
    }
  })();
  return {
    acked,
    stop: async () => {
      stop = true;
      await done;
    },
  };
}

async function replicaIds(h: SandboxHost): Promise<string[]> {
  const root = `${h.pool}/replicas`;
  return [...(await zfs.list(root, { depth: 1, snapshots: false })).keys()].filter((d) => d !== root).map((d) => d.split('/').pop()!);
}

function missingOn(dir: string, acked: Map<string, Buffer>): number {
  let missing = 0;
  for (const [name, body] of acked) if (!existsSync(`${dir}/data/${name}`) || !readFileSync(`${dir}/data/${name}`).equals(body)) missing++;
  return missing;
}

before(async () => {
  catalog = new SqliteCatalog(catalogPath);
  let port = 9601;
  for (const h of sb.hosts) {
    const path = writeAgentConfig(h, 'agent-fm', { catalogPath, metricsPort: port++, extra, interval: `${2 * TIME_SCALE}s` });
    writeFileSync(path, readFileSync(path, 'utf8').replace('  stallTimeout: 30s', '  stallTimeout: 30s\n  connectTimeout: 3s'));
    cfg.set(h.name, path);
    agents.set(h.name, new AgentProcess(sb, h, path).start());
  }
  await waitFor('the three agents registered', async () => (await catalog.listHosts()).filter((h) => h.heartbeatAt !== null).length === 3, scaled(30_000), dumpAll);
});

after(async () => {
  for (const a of agents.values()) await a.kill();
  dumpAll(false);
  await catalog.close();
});

describe('storagectl move from any host, performed by the primary agent', () => {
  it('typed on c (neither primary nor target): moves to the replica host chosen under a continuous writer, every acknowledged write there; --no-wait then --status follow the next move to its end', async () => {
    const p = await newProject(A, { 'base.bin': randomBytes(1_000_000) }, { targets: ['b'] });
    await waitFor('b confirmed a replica', () => replicated(p.id, 1), scaled(60_000), dumpAll);
    const w = startWriter(p.mnt);
    const sampler = new MountSampler(sb, p.id, () => new Set(['a', 'b', 'c'])).start();
    await sleep(1000);
    const r = await storagectl(sb, C, cfg.get('c')!, ['move', p.id, '--json', '--presync-threshold', '8388608'], scaled(180_000));
    await w.stop();
    sampler.stop();
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stderr, /destination b \(holds a replica at \S+: only the final delta moves\)/);
    assert.match(r.stderr, /requested \S+: a -> b; a's agent performs it/);
    const res = JSON.parse(r.stdout) as { outcome: string; from: string; to: string; servedBy: string; finalSnapshot: string; downtimeMs: number; source: string; requestId: string };
    assert.deepEqual([res.outcome, res.from, res.to, res.servedBy, res.source], ['done', 'a', 'b', 'b', 'replica']);
    assert.ok(w.acked.size > 20, `the writer got ${w.acked.size} writes acknowledged`);
    assert.equal(missingOn(`${host(sb, 'b').mountBase}/${p.id}`, w.acked), 0, 'every acknowledged write is on b');
    assert.ok(sampler.samples.length > 5, 'the sampler ran');
    const worst = sampler.maxReachableWritable();
    assert.ok(worst.max <= 1, `two writable copies at ${worst.at}: ${worst.hosts?.join(', ')}`);
    assert.deepEqual(await mountedOn(p.id), ['b']);
    const rec = (await catalog.getProject(p.id))!;
    assert.deepEqual([rec.primary, rec.state, rec.operation], ['b', 'active', null]);
    assert.deepEqual(await catalog.listRequests('a'), [], 'the request entry is gone');
    process.stdout.write(`# move typed on c: ${w.acked.size} acknowledged writes, all on b; writes stopped for ${res.downtimeMs} ms\n`);

    // detached, then re-attached: back to a (it keeps a replica: chosen)
    await waitFor('a confirmed as a replica of b', () => replicated(p.id, 1), scaled(60_000), dumpAll);
    const nw = await storagectl(sb, C, cfg.get('c')!, ['move', p.id, '--no-wait', '--json']);
    assert.equal(nw.code, 0, nw.stderr);
    const req = JSON.parse(nw.stdout) as { requestId: string; from: string; to: string; status: string };
    assert.deepEqual([req.from, req.to, req.status], ['b', 'a', 'requested']);
    const st = await storagectl(sb, C, cfg.get('c')!, ['move', '--status', p.id, '--json'], scaled(180_000));
    assert.equal(st.code, 0, st.stderr + st.stdout);
    const fin = JSON.parse(st.stdout) as { requestId: string; outcome: string; servedBy: string };
    assert.deepEqual([fin.requestId, fin.outcome, fin.servedBy], [req.requestId, 'done', 'a']);
    assert.match(st.stderr, /following \S+ \(b -> a/);
    assert.deepEqual(await mountedOn(p.id), ['a']);
    // --status after the end: the outcome on record
    const later = await storagectl(sb, C, cfg.get('c')!, ['move', '--status', p.id, '--json']);
    assert.equal(later.code, 0, later.stderr);
    assert.equal((JSON.parse(later.stdout) as { outcome: string }).outcome, 'done');
  });

  it('cancel before the switch: the project stays on its source, mounted and active; a cancel after the end is refused', async () => {
    const p = await newProject(A, { f: 'stays' }, { targets: ['b'] });
    await waitFor('b confirmed a replica', () => replicated(p.id, 1), scaled(60_000), dumpAll);
    // threshold 0: five pre-sync rounds (a second or more each) before the writes stop
    const nw = await storagectl(sb, C, cfg.get('c')!, ['move', p.id, 'b', '--no-wait', '--presync-threshold', '0', '--json']);
    assert.equal(nw.code, 0, nw.stderr);
    await waitFor('the move pre-syncs', async () => /pre-sync round/.test((await catalog.getProgress(p.id)).progress?.step ?? ''), scaled(60_000), dumpAll);
    const c = await storagectl(sb, C, cfg.get('c')!, ['cancel', p.id, '--json'], scaled(120_000));
    assert.equal(c.code, 0, c.stderr + c.stdout);
    const res = JSON.parse(c.stdout) as { cancelled: boolean; servedBy: string };
    assert.deepEqual([res.cancelled, res.servedBy], [true, 'a']);
    const rec = (await catalog.getProject(p.id))!;
    assert.deepEqual([rec.primary, rec.state, rec.operation], ['a', 'active', null]);
    assert.deepEqual(await mountedOn(p.id), ['a']);
    assert.equal(readFileSync(`${p.mnt}/f`, 'utf8'), 'stays');
    writeFileSync(`${p.mnt}/after-cancel`, 'writable'); // active: writable at the source
    const again = await storagectl(sb, C, cfg.get('c')!, ['cancel', p.id]);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /no move in progress/);
  });
});

describe('storagectl drain', () => {
  it('drain a with 20 projects, killed midway and re-run: all on b or c with every write and snapshot; a receives no new replica', async () => {
    // what a serves now (earlier tests leave one project there) plus 20 new ones
    const fresh: Array<{ id: string; mnt: string }> = [];
    for (let i = 0; i < 20; i++) fresh.push(await newProject(A, { 'id.txt': `project ${i}`, 'blob.bin': randomBytes(50_000 + i * 1000) }));
    await waitFor('the 20 projects replicated to b and c', async () => (await Promise.all(fresh.map((p) => replicated(p.id, 2)))).every(Boolean), scaled(180_000), dumpAll);
    // a last write in each, with a snapshot of it: these must survive the drain
    const snapsBefore = new Map<string, string[]>();
    for (const p of fresh) {
      writeFileSync(`${p.mnt}/last.txt`, `last write of ${p.id}`);
      await zfs.snapshot([`${A.pool}/projects/${p.id}@before-drain`]);
    }
    for (const p of fresh) snapsBefore.set(p.id, (await zfs.list(`${A.pool}/projects/${p.id}`, { depth: 0 })).get(`${A.pool}/projects/${p.id}`)!.snapshots.map((s) => s.snap));
    const onA = (await catalog.listProjectsByPrimary('a')).map((p) => p.id);
    assert.ok(onA.length >= 20);
    const replicasOnABefore = new Set(await replicaIds(A));

    // first run, SIGKILLed once a few projects are done
    const first = spawn('nsenter', [`--net=/run/netns/${C.netns}`, `${sb.repo}/bin/storagectl`, '--config', cfg.get('c')!, 'drain', 'a', '--concurrency', '3'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let firstErr = '';
    first.stderr!.on('data', (d: Buffer) => (firstErr += d.toString()));
    const exited = new Promise((r) => first.once('exit', r));
    await waitFor('the first drain finished 5 projects', () => (firstErr.match(/^drain: \[\d+\/\d+\]/gm) ?? []).length >= 5, scaled(240_000), () => {
      process.stdout.write(firstErr.split('\n').slice(-10).map((l) => `# [drain] ${l}`).join('\n') + '\n');
      dumpAll();
    });
    first.kill('SIGKILL');
    await exited;
    assert.equal((await catalog.getHost('a'))!.draining, true, 'the mark stays');
    const movedFirst = new Set([...firstErr.matchAll(/^drain: \[\d+\/\d+\] (\S+): moved/gm)].map((m) => m[1]!));
    assert.ok(movedFirst.size >= 5 && movedFirst.size < onA.length, `the first run moved ${movedFirst.size} of ${onA.length}`);

    // re-run: continues (follows what the first run left in flight, requests the rest)
    const t0 = Date.now();
    const r = await storagectl(sb, C, cfg.get('c')!, ['drain', 'a', '--concurrency', '3', '--json'], scaled(600_000));
    assert.equal(r.code, 0, r.stderr.split('\n').slice(-20).join('\n') + r.stdout);
    const summary = JSON.parse(r.stdout) as { items: Array<{ project: string; outcome: string; to: string }>; primariesLeft: number; replicasLeft: number };
    assert.ok(summary.items.every((i) => i.outcome === 'moved'), JSON.stringify(summary.items.filter((i) => i.outcome !== 'moved')));
    const listed = new Set([...movedFirst, ...summary.items.map((i) => i.project)]);
    // a move the first run requested goes on without it: the agent may finish it before the
    // re-run looks (then its outcome is on the project's progress row, not in a summary)
    const finishedAlone: string[] = [];
    for (const id of onA.filter((x) => !listed.has(x))) {
      const pr = (await catalog.getProgress(id)).progress;
      if (pr?.phase === 'done' && pr.from === 'a') finishedAlone.push(id);
    }
    assert.deepEqual(onA.filter((id) => !listed.has(id) && !finishedAlone.includes(id)), [], 'every project a served is in a summary or was finished by its agent');
    assert.equal(summary.primariesLeft, 0);
    process.stdout.write(`# drain: the first run moved ${movedFirst.size} before SIGKILL, the agent finished ${finishedAlone.length} of its requests alone, the re-run moved ${summary.items.length} in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);

    for (const p of fresh) {
      const rec = (await catalog.getProject(p.id))!;
      assert.ok(rec.primary === 'b' || rec.primary === 'c', `${p.id} on ${rec.primary}`);
      assert.deepEqual([rec.state, rec.operation], ['active', null]);
      assert.ok(!rec.targets.includes('a'), `${p.id} lists a as a target`);
      const h = host(sb, rec.primary!);
      assert.deepEqual(await mountedOn(p.id), [rec.primary]);
      assert.equal(readFileSync(`${h.mountBase}/${p.id}/last.txt`, 'utf8'), `last write of ${p.id}`);
      assert.equal(readFileSync(`${h.mountBase}/${p.id}/id.txt`, 'utf8'), `project ${fresh.indexOf(p)}`);
      const snaps = (await zfs.list(`${h.pool}/projects/${p.id}`, { depth: 0 })).get(`${h.pool}/projects/${p.id}`)!.snapshots.map((s) => s.snap);
      assert.deepEqual(snapsBefore.get(p.id)!.filter((s) => !snaps.includes(s)), [], `${p.id}: snapshots missing on ${rec.primary}`);
    }
    // a received no new replica: its replicas are those it had, plus the moved projects' own copies
    const replicasOnA = await replicaIds(A);
    assert.deepEqual(replicasOnA.filter((id) => !replicasOnABefore.has(id) && !onA.includes(id)), []);
    assert.deepEqual((await catalog.listProjects()).filter((p) => p.targets.includes('a') && !replicasOnABefore.has(p.id)).map((p) => p.id), [], 'no project got a as a new target');
    const hosts = await storagectl(sb, C, cfg.get('c')!, ['hosts', '--json']);
    const a = (JSON.parse(hosts.stdout) as { hosts: Array<{ id: string; draining: boolean; primariesLeft: number }> }).hosts.find((h) => h.id === 'a')!;
    assert.deepEqual([a.draining, a.primariesLeft], [true, 0]);
    // the agent's metrics count what it performed
    const metrics = await (await fetch(`http://${A.address}:9601/metrics`)).text();
    const done = Number(/^storage_moves_total\{outcome="done",host="a"\} (\d+)/m.exec(metrics)?.[1] ?? 0);
    assert.ok(done >= onA.length, `storage_moves_total{outcome="done"} = ${done}`);
    assert.match(metrics, /^storage_moves_running\{host="a"\} 0$/m);
    const un = await storagectl(sb, C, cfg.get('c')!, ['undrain', 'a']);
    assert.equal(un.code, 0, un.stderr);
    assert.equal((await catalog.getHost('a'))!.draining, false);
  });
});

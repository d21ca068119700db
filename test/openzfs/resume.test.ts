// Resumable receive on real OpenZFS (openzfs tier only): an agent's large incremental
// transfer is interrupted midway; the target keeps the partial receive and a
// receive_resume_token; the next cycle resumes with `zfs send -t` and sends less than
// half of the full stream. Then a stale token (its source snapshot destroyed) is
// discarded on the target (`zfs recv -A`) and replication continues from the real
// snapshots. Byte figures are printed (and written to $OPENZFS_RESULTS_DIR if set).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { spawn } from 'node:child_process';
import { writeFileSync, appendFileSync } from 'node:fs';
import { sandbox, host, scaled, sh } from '../lib/sandbox.js';
import { startFleet, sleep, type Fleet } from '../lib/fleet.js';
import { Agent, type CycleReport } from '../../src/agent/agent.js';
import { silentLogger } from '../../src/util/log.js';

const sb = sandbox();
const A = host(sb, 'a');
const B = host(sb, 'b');
const BIG = 48 * 2 ** 20;
let fleet: Fleet;
let agent: Agent;
/** abort the running transfer once it has sent this many bytes (0 = never) */
let abortAfter = 0;
let interruptedAt = 0;
const id = randomUUID();
const ds = `${A.pool}/projects/${id}`;
const mnt = `${A.mountBase}/${id}`;
const replica = `${B.pool}/replicas/${id}`;
const figures: Record<string, number | string> = {};
/** a real token of this project's partial receive (its snapshot completed later), replayed below as another project's */
let stolenToken = '';

function token(): string {
  return sh(['zfs', 'get', '-H', '-o', 'value', 'receive_resume_token', replica]).trim();
}

async function waitForToken(present: boolean): Promise<string> {
  const end = Date.now() + scaled(30_000);
  for (;;) {
    const t = token();
    if ((t !== '-' && t !== '') === present) return t;
    if (Date.now() > end) throw new Error(`receive_resume_token of ${replica} is ${JSON.stringify(t)} after ${scaled(30_000)} ms`);
    await sleep(250);
  }
}

/** The exact byte count of the stream the agent sends for base -> to (same argv). */
async function streamBytes(from: string, to: string): Promise<number> {
  const argv = await agent.zfs.sendArgv({ snapshot: `${ds}@${to}`, from, incremental: 'I', replicate: true, compressed: true });
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  let n = 0;
  child.stdout.on('data', (d: Buffer) => (n += d.length));
  const code = await new Promise<number | null>((r) => child.once('close', r));
  assert.equal(code, 0, `${argv.join(' ')} exited ${code}`);
  return n;
}

function snaps(name: string): Array<{ snap: string; guid: string }> {
  return sh(['zfs', 'list', '-H', '-p', '-t', 'snapshot', '-o', 'name,guid', '-s', 'createtxg', '-r', name])
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const [n, guid] = l.split('\t');
      return { snap: n!.split('@')[1]!, guid: guid! };
    });
}

async function cycle(): Promise<CycleReport> {
  return agent.replicateProject(id);
}

async function interruptedBigCycle(file: string): Promise<CycleReport> {
  writeFileSync(`${mnt}/${file}`, randomBytes(BIG));
  await sleep(1100); // a new snapshot name needs a new second
  abortAfter = Math.floor(BIG * 0.6);
  interruptedAt = 0;
  const r = await cycle();
  abortAfter = 0;
  assert.equal(r.snapshotsTaken, 1, JSON.stringify(r));
  assert.ok(interruptedAt > 0, `the transfer was not interrupted: ${JSON.stringify(r.sends)} ${JSON.stringify(r.failures)}`);
  assert.equal(r.sends.length, 0, `the interrupted transfer must not count as sent: ${JSON.stringify(r.sends)}`);
  assert.equal(r.failures.length, 1, JSON.stringify(r.failures));
  return r;
}

before(async () => {
  fleet = await startFleet(sb);
  const config = fleet.configs.get('a')!;
  agent = new Agent({
    config,
    catalog: fleet.catalog,
    log: silentLogger(),
    onProgress: (p) => {
      if (abortAfter > 0 && p.bytes >= abortAfter && interruptedAt === 0) {
        interruptedAt = p.bytes;
        agent.abortTransfers();
      }
    },
  });
  await agent.init();
  assert.equal((await agent.zfs.capabilities()).recvResumable, true, 'the openzfs tier runs on OpenZFS: recv -s expected');
  await fleet.zfs.create(ds, { canmount: 'noauto' });
  await fleet.catalog.createProject({ id, primary: 'a', replicationFactor: 1, quota: null });
  await fleet.catalog.setTargets(id, ['b']);
  await fleet.zfs.mount(ds);
  writeFileSync(`${mnt}/small.txt`, 'first');
});

after(async () => {
  await agent?.close();
  await fleet?.close();
  if (process.env.OPENZFS_RESULTS_DIR) writeFileSync(`${process.env.OPENZFS_RESULTS_DIR}/resume-figures.json`, JSON.stringify(figures, null, 2) + '\n');
});

describe('resumable receive (OpenZFS recv -s / send -t)', () => {
  it('an interrupted large incremental resumes from the token: the resume sends < 50% of the full stream', async () => {
    const first = await cycle();
    assert.deepEqual(first.failures, []);
    assert.deepEqual(first.sends.map((s) => s.kind), ['full']);
    const base = snaps(ds).at(-1)!;

    await interruptedBigCycle('big1.bin');
    const tok = await waitForToken(true);
    assert.match(tok, /^1-[0-9a-f]+-[0-9a-f]+-[0-9a-f]+$/);
    stolenToken = tok;
    // the replica still shows only the base: the partial receive is hidden
    assert.deepEqual(snaps(replica).map((s) => s.guid), [base.guid]);
    const newest = snaps(ds).at(-1)!;
    const full = await streamBytes(base.snap, newest.snap);

    // the next cycle resumes
    const r = await cycle();
    assert.deepEqual(r.failures, []);
    assert.equal(r.sends.length, 1, JSON.stringify(r.sends));
    assert.equal(r.sends[0]!.kind, 'resume');
    const resumed = r.sends[0]!.bytes;
    await waitForToken(false);
    assert.deepEqual(snaps(replica).map((s) => s.guid), [base.guid, newest.guid], 'the replica has the new snapshot, same guid');

    Object.assign(figures, { fullStreamBytes: full, interruptedAttemptBytes: interruptedAt, resumeBytes: resumed, resumeRatio: Number((resumed / full).toFixed(4)) });
    const line = `# resume figures: full stream ${full} bytes; interrupted attempt had sent ${interruptedAt} bytes; resume sent ${resumed} bytes = ${((100 * resumed) / full).toFixed(1)}% of the full stream\n`;
    process.stdout.write(line);
    if (process.env.OPENZFS_RESULTS_DIR) appendFileSync(`${process.env.OPENZFS_RESULTS_DIR}/figures.txt`, line);
    assert.ok(interruptedAt >= 0.5 * full, `interrupted after ${interruptedAt} of ${full} bytes (midway or later expected)`);
    assert.ok(resumed > 0 && resumed < 0.5 * full, `resume sent ${resumed} of ${full} bytes`);

    // the resumed transfer was confirmed by b's listing: catalog row and hold moved to the new snapshot
    assert.equal((await fleet.catalog.listReplicas(id)).find((x) => x.host === 'b')?.guid, newest.guid);
    assert.deepEqual(await agent.zfs.holds(`${ds}@${newest.snap}`), { count: 1, tags: ['storage:replica:b'] });
    assert.deepEqual(await agent.zfs.holds(`${ds}@${base.snap}`), { count: 0, tags: [] });
    const r2 = await cycle();
    assert.deepEqual(r2.failures, []);
    assert.equal(r2.sends.length, 0);
    assert.equal(r2.snapshotsTaken, 0);
  });

  it('a stale token (its source snapshot destroyed) is cleared on the target and replication continues', async () => {
    const base = snaps(ds).at(-1)!;
    await interruptedBigCycle('big2.bin');
    await waitForToken(true);
    const lost = snaps(ds).at(-1)!;
    assert.notEqual(lost.guid, base.guid);
    // the snapshot the token points at disappears from the source (nothing holds it yet)
    sh(['zfs', 'destroy', `${ds}@${lost.snap}`]);
    writeFileSync(`${mnt}/after.txt`, 'after the stale token');
    await sleep(1100);

    const failed = await cycle();
    assert.equal(failed.sends.length, 0);
    assert.equal(failed.failures.length, 1, JSON.stringify(failed.failures));
    figures.staleTokenError = failed.failures[0]!.error.replace(/zfs send -t [0-9a-f-]+/, "zfs send -t TOKEN").slice(-400);
    process.stdout.write(`# stale token: the resume failed as expected: ${figures.staleTokenError}\n`);
    assert.equal(await waitForToken(false), '-', 'the partial receive must be discarded (zfs recv -A)');
    assert.ok((await fleet.catalog.listEvents({ project: id })).some((e) => e.kind === 'replication-failed'));

    const next = await cycle();
    assert.deepEqual(next.failures, []);
    assert.deepEqual(next.sends.map((s) => s.kind), ['incremental']);
    const newest = snaps(ds).at(-1)!;
    assert.equal(snaps(replica).at(-1)!.guid, newest.guid);
    assert.ok(!snaps(replica).some((s) => s.guid === lost.guid));
    figures.incrementalAfterStaleBytes = next.sends[0]!.bytes;
    const done = await cycle();
    assert.deepEqual(done.failures, []);
    assert.equal(done.sends.length, 0);
    assert.equal((await fleet.catalog.listReplicas(id)).find((x) => x.host === 'b')?.guid, newest.guid);
  });

  it("a token naming another project's snapshot (a compromised target's listing) is never sent: decoded, refused, discarded", async () => {
    assert.match(stolenToken, /^1-/, 'the previous test captured a token of project P');
    // project Q: primary a, replica on b, in sync
    const q = randomUUID();
    const qds = `${A.pool}/projects/${q}`;
    await fleet.zfs.create(qds, { canmount: 'noauto' });
    await fleet.catalog.createProject({ id: q, primary: 'a', replicationFactor: 1, quota: null });
    await fleet.catalog.setTargets(q, ['b']);
    const first = await agent.replicateProject(q);
    assert.deepEqual(first.failures, []);
    // b "reports" a partial receive of Q whose token names P's snapshot
    const onB = snaps(`${B.pool}/replicas/${q}`).map((s) => ({ ...s, createtxg: 0, creation: 0 }));
    agent.state.putRemotes([{ project: q, target: 'b', view: { snapshots: onB, resumeToken: stolenToken } }], Date.now());
    const dataSends = () => sh(['bash', '-c', 'grep -E "^send " "$0" | grep -vc -- " -n " || true', `${A.dir}/zfs-calls.log`]).trim();
    const sendsBefore = dataSends();
    // a cycle plans from what the cache says of the pair (replicateProject would list b again)
    for (const h of ['a', 'b', 'c']) await fleet.catalog.heartbeat(h, 0, Date.now());
    const r = await agent.runCycle();
    const failures = r.failures.filter((f) => f.project === q);
    assert.equal(r.sends.filter((x) => x.project === q).length, 0, JSON.stringify(r.sends));
    assert.equal(failures.length, 1, JSON.stringify(r.failures));
    assert.match(failures[0]!.error, new RegExp(`resume token from b refused: the resume token names "${A.pool}/projects/${id}@[^"]+", not a snapshot of ${qds.replace(/[.]/g, '\\.')}$`));
    assert.equal(dataSends(), sendsBefore, 'only zfs send -n -v ran, no zfs send of data');
    assert.ok((await fleet.catalog.listEvents({ project: q })).some((e) => e.kind === 'replication-failed' && /resume token from b refused/.test(e.detail)));
    // the pair is asked again: in sync, nothing to send
    for (const h of ['a', 'b', 'c']) await fleet.catalog.heartbeat(h, 0, Date.now());
    const next = await agent.runCycle();
    assert.deepEqual(next.failures.filter((f) => f.project === q), []);
    assert.equal(next.sends.filter((x) => x.project === q).length, 0);
  });
});

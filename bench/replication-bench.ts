// Benchmarks (not timed tests): printed as figures and ratios.
//  1. throughput of the agent's pipeline (zfs send -> ssh2 -> forced-command receiver ->
//     zfs recv) vs `zfs send | ssh (OpenSSH) | zfs recv` on the same delta between two
//     sandbox hosts;
//  2. an idle cycle (nothing changed) at N project datasets: wall time, local zfs calls,
//     SSH listings, vs the naive per-project listing it replaces;
//  3. (BENCH_PARTS=scale) fleet scale, 10,000 datasets x 30 snapshots: scale-bench.ts.
// Run through bench/run.sh (it brings up the sandbox `stb`).
import { execFileSync, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { copyFileSync, existsSync, statSync } from 'node:fs';
import { sandbox, host } from '../test/lib/sandbox.js';
import { startFleet, sleep } from '../test/lib/fleet.js';
import { autoSnapshotName } from '../src/util/validate.js';
import { scale } from './scale-bench.js';

const DELTA_MB = Number(process.env.BENCH_DELTA_MB ?? 512);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const DATASETS = Number(process.env.BENCH_DATASETS ?? 2000);
const PARTS = (process.env.BENCH_PARTS ?? 'throughput,idle').split(',');

const sb = sandbox();
const A = host(sb, 'a');
const B = host(sb, 'b');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const sh = (cmd: string[]) => execFileSync(cmd[0]!, cmd.slice(1), { encoding: 'utf8', maxBuffer: 1 << 30 });
const log = (s: string) => process.stdout.write(`${s}\n`);

async function throughput(): Promise<void> {
  log(`\n## throughput: ${DELTA_MB} MiB incremental delta, host a -> host b, ${RUNS} runs`);
  const fleet = await startFleet(sb);
  const zfs = fleet.zfs;
  const cfgA = fleet.configs.get('a')!;
  const id = randomUUID();
  const ds = `${cfgA.projectsRoot}/${id}`;
  await zfs.create(ds, { canmount: 'noauto' });
  await fleet.catalog.createProject({ id, primary: 'a', replicationFactor: 1, quota: null });
  await fleet.catalog.setTargets(id, ['b']);
  await zfs.mount(ds);
  const base = `${A.pool}/bench-openssh-src`;
  const baseMnt = `${A.mountBase}/bench-openssh-src`;
  const baseTarget = `${B.pool}/bench-openssh`;
  await zfs.create(base, { mountpoint: baseMnt });
  // seed both targets with a first (small) snapshot
  const agentA = fleet.agents.get('a')!;
  const seed = await agentA.replicateProject(id);
  if (seed.failures.length) throw new Error(JSON.stringify(seed.failures));
  await zfs.snapshot([`${base}@r0`]);
  openssh(['zfs', 'send', `${base}@r0`], baseTarget);

  const blob = '/var/tmp/storage-bench-delta.bin';
  if (!existsSync(blob) || statSync(blob).size !== DELTA_MB * 2 ** 20) sh(['dd', 'if=/dev/urandom', `of=${blob}`, 'bs=1M', `count=${DELTA_MB}`, 'status=none']);
  const ours: number[] = [];
  const theirs: number[] = [];
  for (let run = 1; run <= RUNS; run++) {
    copyFileSync(blob, `${cfgA.mountBase}/${id}/delta-${run}.bin`);
    copyFileSync(blob, `${baseMnt}/delta-${run}.bin`);
    sh(['sync']);
    await sleep(1100); // a new second for the automatic snapshot name
    const measureOurs = async () => {
      const r = await agentA.replicateProject(id);
      if (r.failures.length || r.sends.length !== 1) throw new Error(`agent cycle: ${JSON.stringify(r.failures)} sends=${r.sends.length}`);
      const s = r.sends[0]!;
      ours.push(s.bytes / 2 ** 20 / (s.ms / 1000));
      return s;
    };
    const measureTheirs = async () => {
      await zfs.snapshot([`${base}@r${run}`]);
      const t0 = Date.now();
      const bytes = openssh(['zfs', 'send', '-i', `@r${run - 1}`, `${base}@r${run}`], baseTarget);
      const ms = Date.now() - t0;
      theirs.push(bytes / 2 ** 20 / (ms / 1000));
      return { bytes, ms };
    };
    // alternate the order: the page cache and zfs-fuse's ARC favour whoever goes second
    const [first, second] = run % 2 ? [measureOurs, measureTheirs] : [measureTheirs, measureOurs];
    const x = await first();
    const y = await second();
    log(`run ${run}: ${run % 2 ? 'agent' : 'openssh'} first; agent ${ours[ours.length - 1]!.toFixed(1)} MiB/s, openssh ${theirs[theirs.length - 1]!.toFixed(1)} MiB/s (${JSON.stringify([x, y].map((v) => ('bytes' in v ? v.bytes : 0)))} bytes)`);
  }
  log(`agent pipeline (ssh2, forced-command receiver): median ${median(ours).toFixed(1)} MiB/s`);
  log(`zfs send | ssh (OpenSSH, aes128-gcm) | zfs recv:  median ${median(theirs).toFixed(1)} MiB/s`);
  log(`RATIO throughput agent/openssh = ${(median(ours) / median(theirs)).toFixed(3)} (goal >= 0.97)`);
  await fleet.close();
}

/** zfs send ... | ssh b zfs recv TARGET, as an admin would type it; returns bytes. */
function openssh(sendArgv: string[], target: string): number {
  const q = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;
  const pipelineCmd =
    `${sendArgv.map(q).join(' ')} | tee >(wc -c > /tmp/bench-bytes) | ` +
    `ssh -c aes128-gcm@openssh.com -i ${q(sb.adminKey)} -o BatchMode=yes -o UserKnownHostsFile=${q(sb.knownHosts)} root@${B.address} zfs recv -F ${q(target)}`;
  const r = spawnSync('nsenter', [`--net=/run/netns/${A.netns}`, 'bash', '-o', 'pipefail', '-c', pipelineCmd], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssh pipeline failed: ${r.stderr}`);
  return Number(sh(['cat', '/tmp/bench-bytes']).trim());
}

async function idle(): Promise<void> {
  log(`\n## idle cycle at ${DATASETS} project datasets on host a, replicas on host b`);
  const fleet = await startFleet(sb);
  const zfs = fleet.zfs;
  const cfgA = fleet.configs.get('a')!;
  const cfgB = fleet.configs.get('b')!;
  const root = `${A.pool}/idle`;
  // no local mountpoint: the seeding stream must not carry one (replicas stay unmounted)
  await zfs.create(root, { canmount: 'off' });
  const ids: string[] = [];
  let t0 = Date.now();
  for (let i = 0; i < DATASETS; i++) ids.push(randomUUID());
  // creation is setup, not the measurement: xargs runs zfs create 4 at a time
  spawnSync('bash', ['-c', `xargs -P 4 -n 50 sh -c 'for d; do zfs create -o canmount=noauto "${root}/$d"; done' _`], { input: ids.join('\n'), encoding: 'utf8' });
  log(`setup: created ${DATASETS} datasets in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const snap = autoSnapshotName(new Date(Date.now() - 60_000));
  await zfs.snapshotRecursive(`${root}@${snap}`);
  // replicas: one recursive stream seeds them all (the agent would send one per project)
  t0 = Date.now();
  const seed = spawnSync('bash', ['-o', 'pipefail', '-c', `zfs send -R ${root}@${snap} | zfs recv -F ${B.pool}/idle-replicas`], { encoding: 'utf8' });
  if (seed.status !== 0) throw new Error(`seeding replicas: ${seed.stderr}`);
  log(`setup: seeded ${DATASETS} replicas in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  // point the agents at these roots: a copy of the configs (the receiver on b lists its own
  // configured replicasRoot, so move the seeded tree under it)
  spawnSync('zfs', ['set', 'mountpoint=none', `${B.pool}/idle-replicas`]);
  for (const id of ids) {
    await fleet.catalog.createProject({ id, primary: 'a', replicationFactor: 1, quota: null });
    await fleet.catalog.setTargets(id, ['b']);
  }
  // rename each seeded replica under b's replicas root (setup)
  spawnSync('bash', ['-c', `xargs -P 4 -n 50 sh -c 'for d; do zfs rename "${B.pool}/idle-replicas/$d" "${cfgB.replicasRoot}/$d"; done' _`], { input: ids.join('\n'), encoding: 'utf8' });
  const agent = fleet.agents.get('a')!;
  agent.config = { ...cfgA, projectsRoot: root };
  const warm = await agent.runCycle();
  log(`warm-up cycle: ${warm.durationMs} ms, ${warm.localZfsCalls} zfs calls, sends ${warm.sends.length}, conflicts ${warm.conflicts.length}, failures ${warm.failures.length}, confirmed ${warm.confirmed}`);
  if (warm.failures.length) log(`  first failure: ${JSON.stringify(warm.failures[0])}`);
  const walls: number[] = [];
  let calls = 0;
  let listings = 0;
  for (let i = 0; i < RUNS; i++) {
    const r = await agent.runCycle();
    walls.push(r.durationMs);
    calls = r.localZfsCalls;
    listings = Object.values(r.listings).reduce((a, b) => a + b, 0);
    log(`idle cycle ${i + 1}: ${r.durationMs} ms, local zfs calls ${r.localZfsCalls} ${JSON.stringify(r.zfsCallsByVerb)}, SSH listings ${listings}, sends ${r.sends.length}, catalog writes ${r.confirmed}`);
  }
  // the naive alternative: one snapshot listing per project (sampled, then scaled)
  const sample = Math.min(50, DATASETS);
  t0 = Date.now();
  for (const id of ids.slice(0, sample)) spawnSync('zfs', ['list', '-H', '-t', 'snapshot', '-o', 'name', '-r', `${root}/${id}`]);
  const naiveMs = ((Date.now() - t0) / sample) * DATASETS;
  log(`idle cycle median: ${median(walls)} ms for ${DATASETS} datasets (${(median(walls) / DATASETS).toFixed(2)} ms per dataset), ${calls} local zfs calls, ${listings} SSH listing(s)`);
  log(`naive per-project listing (measured on ${sample}, scaled): ~${Math.round(naiveMs)} ms and ${DATASETS} zfs calls`);
  log(`RATIO idle wall time naive/agent = ${(naiveMs / median(walls)).toFixed(1)}x; zfs calls naive/agent = ${(DATASETS / Math.max(1, calls)).toFixed(0)}x`);
  await fleet.close();
}

if (PARTS.includes('throughput')) await throughput();
if (PARTS.includes('scale')) await scale();
if (PARTS.includes('idle')) await idle();

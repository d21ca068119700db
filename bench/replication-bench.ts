// Benchmarks (not timed tests): printed as figures and ratios.
//  1. throughput of the agent's pipeline (zfs send -> ssh2 -> forced-command receiver ->
//     zfs recv) vs `zfs send | ssh (OpenSSH) | zfs recv` on the same delta between two
//     sandbox hosts;
//  2. (scale) fleet scale, 10,000 datasets x 30 snapshots: idle and changed cycles vs the
//     previous algorithm's listings (scale-bench.ts).
// Run through bench/run.sh (it brings up the sandbox `stb`).
import { execFileSync, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { copyFileSync, existsSync, statSync } from 'node:fs';
import { sandbox, host } from '../test/lib/sandbox.js';
import { startFleet, sleep } from '../test/lib/fleet.js';
import { scale } from './scale-bench.js';

const DELTA_MB = Number(process.env.BENCH_DELTA_MB ?? 512);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const PARTS = (process.env.BENCH_PARTS ?? 'throughput,scale').split(',');

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

if (PARTS.includes('throughput')) await throughput();
if (PARTS.includes('scale')) await scale();

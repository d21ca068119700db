// Fleet-scale benchmark (BENCH_PARTS=scale): host a holds N project datasets x S
// snapshots (default 10,000 x 30), host b a replica of each; the pools come from
// bench/scale-pools.sh (built once, cached, restored each run). It prints, for idle
// cycles (median of BENCH_RUNS, default 5) and for a cycle with BENCH_CHANGED (100)
// changed projects: wall time, local zfs calls by verb, snapshot listings (the audit
// slice apart), SSH round trips and bytes per target, catalog reads and writes, agent
// RSS; and the same workload through the previous algorithm's listings as a ratio.
//
// The agent runs with its real code, real zfs-fuse pools, the real receiver on b over
// sshd. Its clock runs one interval ahead per cycle (cycles here run back to back), so
// each cycle's audit slice is the steady-state share of the period (N x interval / period).
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { sandbox, host, setReceiverCatalog } from '../test/lib/sandbox.js';
import { countingCatalog } from '../test/lib/counting-catalog.js';
import { Agent, type CycleReport } from '../src/agent/agent.js';
import { loadConfig } from '../src/agent/config.js';
import { StateCache } from '../src/agent/state.js';
import { SqliteCatalog } from '../src/catalog/sqlite.js';
import { fetchListing } from '../src/replica/listing.js';
import { SshPool } from '../src/replica/transport.js';
import { sshOptions } from '../src/agent/agent.js';
import { silentLogger } from '../src/util/log.js';

const N = Number(process.env.BENCH_DATASETS ?? 10_000);
const S = Number(process.env.BENCH_SNAPSHOTS ?? 30);
const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const CHANGED = Number(process.env.BENCH_CHANGED ?? 100);
const SAMPLE = Number(process.env.BENCH_BASELINE_SAMPLE ?? 200);
const CACHE = `${process.env.SCALE_CACHE_DIR ?? '/var/cache/storage-bench'}/scale-${N}-${S}`;

const sb = sandbox();
const A = host(sb, 'a');
const B = host(sb, 'b');
const log = (s: string) => process.stdout.write(`${s}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;

export async function scale(): Promise<void> {
  log(`\n## fleet scale: ${N} datasets x ${S} snapshots on host a, a replica of each on host b (${sb.zfs === 'kernel' ? 'OpenZFS, kernel module' : 'zfs-fuse'})`);
  if (!existsSync(`${CACHE}/complete`)) throw new Error(`no scale pools cached in ${CACHE}: run bench/scale-pools.sh ensure --datasets ${N} --snapshots ${S} (bench/run.sh does)`);
  const ids = readFileSync(`${CACHE}/ids.txt`, 'utf8').split('\n').filter(Boolean);
  if (ids.length !== N) throw new Error(`${CACHE}/ids.txt has ${ids.length} ids, expected ${N}`);

  // the catalog: every project primary on a, replica on b
  const catalogPath = `${sb.dir}/catalog-scale.db`;
  spawnSync('rm', ['-f', catalogPath, `${catalogPath}-wal`, `${catalogPath}-shm`]);
  const catalog = new SqliteCatalog(catalogPath);
  setReceiverCatalog(sb.hosts, { backend: 'sqlite', path: catalogPath });
  let t0 = Date.now();
  for (const id of ids) {
    await catalog.createProject({ id, primary: 'a', replicationFactor: 1, quota: null });
    await catalog.setTargets(id, ['b']);
  }
  const cfgB = loadConfig(`${B.dir}/agent.yaml`);
  await catalog.upsertHost({ id: 'b', datacenter: B.datacenter, address: B.address, port: B.port, root: cfgB.replicasRoot });
  log(`setup: ${N} catalog rows in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  // the agent of host a: keep every snapshot (retention is not what is measured), the
  // default audit period, its state cache from the previous run when the pools match
  const base = loadConfig(`${A.dir}/agent.yaml`);
  const keepAll = [{ for: '520w', every: 'all' }];
  const config = { ...base, interval: 60, catalog: { ...base.catalog, path: catalogPath }, retention: { primary: keepAll, replica: keepAll }, audit: { period: 3600, maxPerCycle: 2000 } };
  const statePath = `${sb.dir}/scale-state.db`;
  const cachedState = `${CACHE}/state-a.db`;
  const built = readFileSync(`${CACHE}/complete`, 'utf8').split('\n')[0];
  const stateStamp = `${CACHE}/state-a.stamp`;
  const warm = existsSync(cachedState) && existsSync(stateStamp) && readFileSync(stateStamp, 'utf8') === built;
  spawnSync('rm', ['-f', statePath, `${statePath}-wal`, `${statePath}-shm`]);
  if (warm) copyFileSync(cachedState, statePath);
  let offset = 0;
  const now = () => Date.now() + offset;
  const counting = countingCatalog(catalog);
  const agent = new Agent({ config, catalog: counting.catalog, log: silentLogger(), state: new StateCache(statePath), now });
  const zfs = agent.zfs;
  await agent.init();
  const beat = async () => {
    await catalog.heartbeat('a', 0, now());
    await catalog.heartbeat('b', 0, now());
    await agent.heartbeat();
  };

  // cold start: a state cache that has never seen these pools lists everything once
  await beat();
  t0 = Date.now();
  const cold = await agent.runCycle();
  log(`${warm ? 'first cycle (state cache from the previous run)' : 'cold start (empty state cache: every dataset and every replica listed once)'}: ${(cold.durationMs / 1000).toFixed(1)} s, ${cold.snapshotsListed} snapshots listed in ${cold.snapshotListings} zfs calls, SSH round trips ${JSON.stringify(cold.listings)}, sends ${cold.sends.length}, failures ${cold.failures.length}${cold.failures.length ? ` (first: ${JSON.stringify(cold.failures[0])})` : ''}`);
  if (!warm) {
    await agent.state.saveTo(cachedState);
    writeFileSync(stateStamp, built ?? '');
  }
  // the generation moved by this setup is read once; the first cycle after start also
  // discovers the roots' datasets (once per audit period): neither is the steady state
  await beat();
  const settle = await agent.runCycle();
  log(`settling cycle: ${(settle.durationMs / 1000).toFixed(1)} s (reads the setup's generation once)`);

  const idle: CycleReport[] = [];
  const idleCatalog: Array<{ reads: number; writes: number }> = [];
  const rss: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    offset += config.interval * 1000;
    await beat();
    counting.reset();
    const r = await agent.runCycle();
    const c = counting.counts();
    idle.push(r);
    idleCatalog.push(c);
    rss.push(process.memoryUsage().rss);
    log(
      `idle cycle ${i + 1}: ${r.durationMs} ms (audit slice ${r.audit.ms} ms); zfs calls ${r.localZfsCalls} ${JSON.stringify(r.zfsCallsByVerb)}; snapshot listings ${r.snapshotListings} (audit slice: ${r.audit.datasets} datasets, ${r.audit.snapshotsListed} snapshots, ${r.audit.snapshotListings} calls); ` +
        `SSH round trips ${JSON.stringify(r.listings)} (audit ${r.audit.targetRoundTrips}), bytes ${JSON.stringify(r.listingBytes)}; catalog reads ${c.reads} writes ${c.writes} ${JSON.stringify(c.byMethod)}; sends ${r.sends.length}; failures ${r.failures.length}; RSS ${mib(process.memoryUsage().rss)}`,
    );
  }
  const walls = idle.map((r) => r.durationMs);
  const beside = idle.map((r) => r.durationMs - r.audit.ms);
  const outside = idle.map((r) => r.snapshotListings - r.audit.snapshotListings);
  const tripsOutside = idle.map((r) => Object.values(r.listings).reduce((a, b) => a + b, 0) - r.audit.targetRoundTrips);
  log(`IDLE median ${median(walls)} ms (min ${Math.min(...walls)}, max ${Math.max(...walls)}) including the audit slice of ~${median(idle.map((r) => r.audit.datasets))} datasets (${median(idle.map((r) => r.audit.ms))} ms); the cycle beside the slice ${median(beside)} ms (max ${Math.max(...beside)}); outside the slice: ${Math.max(...outside)} snapshot listings, ${Math.max(...idle.map((r) => r.localZfsCalls - r.audit.snapshotListings))} local zfs calls, ${Math.max(...tripsOutside)} target round trips; catalog reads ${Math.max(...idleCatalog.map((c) => c.reads))}, writes ${Math.max(...idleCatalog.map((c) => c.writes))}; RSS max ${mib(Math.max(...rss))}`);

  // the same idle cycles with an audit period that fits the slice into ~1 s on zfs-fuse
  const longPeriod = Number(process.env.BENCH_LONG_PERIOD ?? 12 * 3600);
  agent.reconfigure({ ...agent.config, audit: { period: longPeriod, maxPerCycle: 2000 } });
  const idleLong: CycleReport[] = [];
  for (let i = 0; i < RUNS; i++) {
    offset += config.interval * 1000;
    await beat();
    idleLong.push(await agent.runCycle());
  }
  log(`IDLE with audit.period ${longPeriod / 3600} h: median ${median(idleLong.map((r) => r.durationMs))} ms (max ${Math.max(...idleLong.map((r) => r.durationMs))}), slice ~${median(idleLong.map((r) => r.audit.datasets))} datasets, ${median(idleLong.map((r) => r.audit.ms))} ms`);
  agent.reconfigure({ ...agent.config, audit: config.audit });

  // a cycle with CHANGED changed projects: mount them (a cycle starts their watches), write
  const changed = ids.slice(0, CHANGED);
  for (const id of changed) await zfs.mount(`${config.projectsRoot}/${id}`);
  offset += config.interval * 1000;
  await beat();
  const mountCycle = await agent.runCycle();
  log(`cycle after mounting ${CHANGED} projects (their watches start; one size check): ${mountCycle.durationMs} ms, zfs calls ${JSON.stringify(mountCycle.zfsCallsByVerb)}, snapshots ${mountCycle.snapshotsTaken}`);
  offset += config.interval * 1000;
  await beat();
  const idleMounted = await agent.runCycle();
  log(`idle cycle with ${CHANGED} mounted: ${idleMounted.durationMs} ms, zfs calls outside the audit slice ${idleMounted.localZfsCalls - idleMounted.audit.snapshotListings}`);
  for (const id of changed) writeFileSync(`${config.mountBase}/${id}/bench-change.txt`, `changed ${Date.now()}\n`);
  await new Promise((r) => setTimeout(r, 1500)); // watch events are asynchronous
  offset += config.interval * 1000;
  await beat();
  counting.reset();
  const ch = await agent.runCycle();
  const cc = counting.counts();
  const auditMs = median(walls); // the slice rides along in every cycle
  log(
    `CHANGED cycle (${CHANGED} projects): ${ch.durationMs} ms = ${((ch.durationMs - auditMs) / CHANGED).toFixed(1)} ms per changed project above an idle cycle; snapshots ${ch.snapshotsTaken}; sends ${ch.sends.length} (${ch.sends.map((s) => s.kind).filter((k) => k === 'incremental').length} incremental, ${ch.sends.reduce((a, s) => a + s.bytes, 0)} bytes); zfs calls ${JSON.stringify(ch.zfsCallsByVerb)} ` +
      `(${((ch.localZfsCalls - ch.audit.snapshotListings) / CHANGED).toFixed(2)} per changed project outside the audit slice); snapshots listed outside the slice ${ch.snapshotsListed - ch.audit.snapshotsListed}; SSH round trips ${JSON.stringify(ch.listings)}; catalog reads ${cc.reads} writes ${cc.writes} ${JSON.stringify(cc.byMethod)}; failures ${ch.failures.length}${ch.failures.length ? ` (first: ${JSON.stringify(ch.failures[0])})` : ''}; RSS ${mib(process.memoryUsage().rss)}`,
  );
  for (const id of changed) await zfs.unmount(`${config.projectsRoot}/${id}`).catch(() => undefined);

  // the previous algorithm: one listing of the whole projects root with its columns
  // (guid, createtxg, creation, referenced, userrefs: `zfs get -r`, zfs-fuse's only exact
  // listing) and one full listing of the target per cycle. The root listing is measured on
  // SAMPLE named datasets and scaled (the full one takes tens of minutes here); the
  // target's full listing is measured whole.
  const sample = ids.slice(CHANGED, CHANGED + SAMPLE).map((id) => `${config.projectsRoot}/${id}`);
  t0 = Date.now();
  const g = spawnSync('zfs', ['get', '-H', '-p', '-d', '1', '-o', 'name,property,value', 'guid,createtxg,creation,referenced,userrefs,mounted,mountpoint', ...sample], { encoding: 'utf8', maxBuffer: 1 << 30 });
  if (g.status !== 0) throw new Error(`baseline listing: ${g.stderr}`);
  const sampleMs = Date.now() - t0;
  const localMs = (sampleMs / SAMPLE) * N;
  const ssh = new SshPool(sshOptions(config));
  const bHost = (await catalog.getHost('b'))!;
  t0 = Date.now();
  // every replica of a's projects (a receiver answers a only about a's projects: all of them here)
  const full = await fetchListing(ssh, bHost, { timeoutSeconds: 3600, projects: ids });
  const remoteMs = Date.now() - t0;
  ssh.closeAll();
  const oldMs = localMs + remoteMs;
  log(`previous algorithm, per idle cycle: local listing of ${N} x ${S} ~${(localMs / 1000).toFixed(0)} s (${sampleMs} ms for ${SAMPLE} datasets, scaled), full listing of b ${(remoteMs / 1000).toFixed(1)} s (${Object.keys(full.datasets).length} replicas), ${N * (S + 1)} snapshot rows`);
  log(`RATIO idle wall time previous/now = ${(oldMs / median(walls)).toFixed(0)}x; snapshots listed per idle cycle previous/now = ${N * S}/${median(idle.map((r) => r.snapshotsListed))} (all of them in the audit slice)`);
  await agent.close();
  await catalog.close();
}

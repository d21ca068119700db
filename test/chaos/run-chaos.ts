// One chaos run on the sandbox: three hosts in three datacenters, storage-agent processes
// under `failover: auto` on the three-node Cassandra cluster (test/env/cassandra/cluster.sh,
// one node per host's namespace), writers in several projects logging every acknowledged
// (fsynced) write, an operator typing `storagectl move`/`failover` now and then, and the
// faults of a seeded schedule (schedule.ts) applied to the running fleet (faults.ts).
// Samplers outside the hosts' namespaces watch throughout; at the end the faults are
// healed, the writers stop, and the fleet must converge. checker.ts judges.
import { spawnSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open as openFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { destroyTestTree, host, type Sandbox, type SandboxHost } from '../lib/sandbox.js';
import { AgentProcess, storagectl } from '../lib/procs.js';
import { sleep } from '../lib/fleet.js';
import { clusterOptions, clusterReplication, contactPoints } from '../lib/cluster.js';
import { CassandraCatalog } from '../../src/catalog/cassandra.js';
import { Zfs } from '../../src/zfs/index.js';
import { parseAutoSnapshotName } from '../../src/util/validate.js';
import { checkDestroys, checkMounts, checkWrites, convergenceProblems, type Ack, type FailoverSeen, type FleetState, type MountSample, type Violation } from './checker.js';
import { countByKind, makeSchedule, type Fault, type FaultKind, type Schedule } from './schedule.js';

const execFileP = promisify(execFile);

export interface ChaosOptions {
  seed: number;
  durationMs: number;
  projects?: number;
  /** the fault kinds drawn (default all) */
  kinds?: readonly FaultKind[];
  /** a schedule instead of the seeded one (the checker-can-fail test) */
  schedule?: Schedule;
  /** STORAGE_UNSAFE_SKIP_FENCE=1 for the agents: fencing does nothing */
  disableFencing?: boolean;
  /** after the faults, how long the fleet has to converge */
  convergeMs?: number;
  log?: (line: string) => void;
}

export interface ChaosReport {
  seed: number;
  /** when the faults began (ms since epoch), and how long the fleet took to be ready before */
  startedAt: number;
  setupMs: number;
  ranMs: number;
  faults: Record<string, number>;
  faultsApplied: number;
  operator: Record<string, number>;
  /** notJudged: writes of projects that did not converge (served nowhere) */
  writes: { acknowledged: number; present: number; excusedByFailoverWindow: number; notJudged: number };
  samples: number;
  failoversSeen: number;
  /** agents restarted by the supervisor (systemd's Restart=) */
  agentRestarts: number;
  destroyedAutoSnapshots: number;
  convergedAfterMs: number | null;
  violations: Violation[];
}

const NAMES = ['a', 'b', 'c'] as const;

export async function runChaos(sb: Sandbox, o: ChaosOptions): Promise<ChaosReport> {
  const log = o.log ?? ((l: string) => process.stdout.write(`# ${l}\n`));
  const H = NAMES.map((n) => host(sb, n));
  const byName = new Map(H.map((h) => [h.name, h]));
  const zfs = new Zfs();
  const keyspace = `chaos_${Date.now().toString(36)}_${process.pid}`;
  const nProjects = o.projects ?? 6;
  const schedule = o.schedule ?? makeSchedule(o.seed, { durationMs: o.durationMs, hosts: NAMES, projects: nProjects, ...(o.kinds ? { kinds: o.kinds } : {}) });
  const setupStarted = Date.now();
  log(`chaos: seed ${o.seed} (replay: npm run chaos -- --seed ${o.seed} --minutes ${(o.durationMs / 60_000).toFixed(1)}${o.kinds ? ` --kinds ${o.kinds.join(',')}` : ''}), ${schedule.faults.length} faults, ${schedule.operator.length} operator actions, keyspace ${keyspace}${o.disableFencing ? ', FENCING DISABLED (checker test)' : ''}`);

  // ---- the fleet ------------------------------------------------------------------------
  const catalogFor = (h: SandboxHost) => ({ backend: 'cassandra', contactPoints: contactPoints(sb, h.datacenter), localDataCenter: h.datacenter, keyspace, replication: clusterReplication(sb) });
  // a fleet of its own: fresh projects/replicas roots and mount base on each pool (what
  // earlier tests left in the sandbox is not this fleet's), the receivers pointed at them
  const tag = keyspace.replace(/_/g, '-');
  const roots = new Map<string, { projects: string; replicas: string; mountBase: string }>();
  const receiverYaml = new Map<string, string>();
  for (const h of H) {
    const r = { projects: `${h.pool}/${tag}/projects`, replicas: `${h.pool}/${tag}/replicas`, mountBase: `${sb.dir}/mnt-${tag}/${h.name}` };
    mkdirSync(r.mountBase, { recursive: true });
    await zfs.create(`${h.pool}/${tag}`, { canmount: 'off' });
    await zfs.create(r.projects, { canmount: 'off', mountpoint: r.mountBase });
    await zfs.create(r.replicas, { canmount: 'off' });
    roots.set(h.name, r);
    const file = `${h.dir}/agent.yaml`;
    receiverYaml.set(h.name, readFileSync(file, 'utf8'));
    const doc = parseYaml(receiverYaml.get(h.name)!) as Record<string, unknown>;
    Object.assign(doc, { projectsRoot: r.projects, replicasRoot: r.replicas, mountBase: r.mountBase, catalog: catalogFor(h) });
    writeFileSync(file, `# sandbox host ${h.name}: chaos run ${keyspace} (restored after the run)\n${stringifyYaml(doc)}`);
  }
  const restoreReceivers = () => {
    for (const h of H) writeFileSync(`${h.dir}/agent.yaml`, receiverYaml.get(h.name)!);
  };
  const mnt = (hostName: string, id: string) => `${roots.get(hostName)!.mountBase}/${id}`;
  let catalog: CassandraCatalog;
  try {
    catalog = await CassandraCatalog.open(clusterOptions(sb, H[0]!.datacenter, keyspace));
  } catch (e) {
    restoreReceivers();
    throw e;
  }
  const agents = new Map<string, AgentProcess>();
  const agentEnv = o.disableFencing ? { STORAGE_UNSAFE_SKIP_FENCE: '1' } : undefined;
  const cfg = new Map<string, string>();
  let port = 9621;
  for (const h of H) {
    const doc = parseYaml(readFileSync(`${h.dir}/agent.yaml`, 'utf8')) as Record<string, unknown>;
    doc.catalog = catalogFor(h);
    Object.assign(doc, { projectsRoot: roots.get(h.name)!.projects, replicasRoot: roots.get(h.name)!.replicas, mountBase: roots.get(h.name)!.mountBase });
    doc.interval = '2s';
    doc.stateDir = `${h.dir}/chaos-state-${keyspace}`;
    doc.metrics = { ...(doc.metrics as object), listen: `${h.address}:${port++}` };
    doc.failover = { mode: 'auto', after: '12s', selfFenceAfter: '3s', fenceCheck: '1s', maxClockSkew: '2s' };
    doc.ssh = { ...(doc.ssh as object), connectTimeout: '3s' };
    const path = `${h.dir}/chaos-${keyspace}.yaml`;
    writeFileSync(path, stringifyYaml(doc));
    cfg.set(h.name, path);
    agents.set(h.name, new AgentProcess(sb, h, path).start(agentEnv ? { env: agentEnv } : {}));
  }
  // systemd's Restart=on-failure (RestartSec 2 s): an agent that exits (e.g. the catalog
  // unreachable at its start) comes back, unless a fault keeps it down on purpose
  const heldDown = new Set<string>();
  const supervisor = setInterval(() => {
    for (const [n, a] of agents) {
      if (heldDown.has(n) || !a.proc || (a.proc.exitCode === null && a.proc.signalCode === null)) continue;
      if (Date.now() - (a.exitedAt ?? 0) < 2_000) continue;
      a.start({ keepOutput: true, ...(agentEnv ? { env: agentEnv } : {}) });
      restarts++;
    }
  }, 500);
  let restarts = 0;
  const stopSupervisor = () => clearInterval(supervisor);
  const projects: Array<{ id: string; home: string }> = [];
  for (let i = 0; i < nProjects; i++) {
    const h = H[i % H.length]!;
    const id = randomUUID();
    const ds = `${roots.get(h.name)!.projects}/${id}`;
    await zfs.create(ds, { canmount: 'noauto' });
    await catalog.createProject({ id, primary: h.name, replicationFactor: 2, quota: null });
    await catalog.setTargets(id, NAMES.filter((n) => n !== h.name));
    await zfs.mount(ds);
    mkdirSync(`${mnt(h.name, id)}/data`);
    writeFileSync(`${mnt(h.name, id)}/seed.bin`, randomBytes(100_000));
    projects.push({ id, home: h.name });
  }
  const ids = new Set(projects.map((p) => p.id));
  try {
    await waitUntil(60_000, async () => {
      const dead = [...agents].filter(([, a]) => a.proc && (a.proc.exitCode !== null || a.proc.signalCode !== null));
      if (dead.length) throw new Error(`chaos: agent ${dead[0]![0]} exited at start: ${dead[0]![1].output.trim().split('\n').slice(-3).join(' | ').slice(0, 1500)}`);
      return (await catalog.listHosts()).filter((h) => h.heartbeatAt !== null && Date.now() - h.heartbeatAt < 10_000).length === 3;
    });
    // faults begin on a replicated fleet (a project without a replica has nowhere to fail over to)
    await waitUntil(120_000, async () => {
      for (const p of projects) if ((await catalog.listReplicas(p.id)).length < 2) return false;
      return true;
    });
    log(`chaos: three agents up, every project replicated to its two targets (setup ${((Date.now() - setupStarted) / 1000).toFixed(1)} s)`);
    return await drive();
  } finally {
    stopSupervisor();
    for (const a of agents.values()) await a.kill();
    for (const [n, a] of agents) a.dump(`${sb.dir}/chaos-${o.seed}-agent-${n}.log`);
    await catalog.close().catch(() => undefined);
    restoreReceivers();
    for (const h of H) {
      rmSync(`${h.dir}/chaos-state-${keyspace}`, { recursive: true, force: true });
      rmSync(cfg.get(h.name)!, { force: true });
    }
    // the run's datasets go (the next run and tier share these small pools), unless kept
    // for a look (KEEP_SANDBOX=1); judged before this, from zpool history and the catalog
    if (!process.env.KEEP_SANDBOX) {
      for (const h of H) {
        const kept = [...(await zfs.list(`${h.pool}/conflicts`, { depth: 1 }).catch(() => new Map<string, unknown>())).keys()];
        for (const d of kept) if (ids.has(d.slice(`${h.pool}/conflicts/`.length, `${h.pool}/conflicts/`.length + 36))) destroyTestTree(d);
        destroyTestTree(`${h.pool}/${tag}`);
      }
    }
  }

  async function drive(): Promise<ChaosReport> {
    // ---- observers ------------------------------------------------------------------------
    const stopAll: Array<() => void> = [];
    const samples: MountSample[] = [];
    stopAll.push(every(250, async () => samples.push({ at: Date.now(), writable: await writableMounts(H, roots, ids) })));
    const primaries = new Map(projects.map((p) => [p.id, p.home]));
    const failovers = new Map<string, FailoverSeen & { open: boolean }>();
    stopAll.push(
      every(500, async () => {
        for (const p of await catalog.listProjects()) {
          if (!ids.has(p.id)) continue;
          if (p.primary) primaries.set(p.id, p.primary);
          const op = p.operation;
          if (op?.kind === 'failover' && op.creation !== null) {
            const key = `${p.id} ${op.startedAt}`;
            if (!failovers.has(key)) failovers.set(key, { project: p.id, from: op.from, to: op.to, creation: op.creation, doneAt: Number.MAX_SAFE_INTEGER, open: true });
          }
          for (const f of failovers.values()) if (f.open && f.project === p.id && p.primary === f.to && p.state === 'active' && !p.operation) Object.assign(f, { open: false, doneAt: Date.now() });
        }
      }),
    );

    // ---- writers --------------------------------------------------------------------------
    const acks: Ack[] = [];
    let writing = true;
    const body = (id: string, seq: number) => Buffer.from(`${id}:${seq}:`.padEnd(1024 + (seq % 5) * 700, '.'));
    const writers = projects.map(async (p) => {
      for (let seq = 0; writing; seq++) {
        const on = primaries.get(p.id)!;
        const h = byName.get(on)!;
        try {
          const fh = await openFile(`${mnt(h.name, p.id)}/data/w-${seq}`, 'wx');
          await fh.write(body(p.id, seq));
          await fh.sync();
          await fh.close();
          acks.push({ project: p.id, seq, host: on, at: Date.now() });
        } catch {
          await sleep(100);
        }
        await sleep(40);
      }
    });

    // ---- faults and the operator ----------------------------------------------------------
    const t0 = Date.now();
    const applied: Fault[] = [];
    const active = new Set<Promise<void>>();
    const healers = new Map<Fault, () => Promise<void>>();
    const opCounts: Record<string, number> = {};
    let operatorBusy = false;
    const events = [...schedule.faults.map((f) => ({ at: f.at, fault: f })), ...schedule.operator.map((a) => ({ at: a.at, action: a }))].sort((x, y) => x.at - y.at);
    for (const e of events) {
      const wait = t0 + e.at - Date.now();
      if (wait > 0) await sleep(wait);
      if ('fault' in e && e.fault) {
        const f = e.fault;
        applied.push(f);
        log(`fault +${((Date.now() - t0) / 1000).toFixed(1)}s ${describe(f)}`);
        const run = applyFault(f, { sb, agents, env: agentEnv, roots, heldDown, healers, log }).catch((err: Error) => log(`fault ${f.kind} ${f.host}: ${err.message}`));
        active.add(run);
        void run.finally(() => active.delete(run));
      } else if ('action' in e && e.action && !operatorBusy) {
        const a = e.action;
        const p = projects[a.project % projects.length]!;
        operatorBusy = true;
        const args = a.kind === 'move' ? ['move', p.id, '--json', '--pickup-timeout', '20'] : ['failover', p.id, '--json'];
        void storagectl(sb, byName.get(a.on)!, cfg.get(a.on)!, args, 150_000)
          .then((r) => {
            const key = `${a.kind} ${r.code === 0 ? 'ok' : `exit ${r.code}`}`;
            opCounts[key] = (opCounts[key] ?? 0) + 1;
            log(`operator: storagectl ${a.kind} ${p.id.slice(0, 8)} on ${a.on}: ${key}${r.code ? `: ${r.stderr.trim().split('\n').pop()?.slice(0, 200)}` : ''}`);
          })
          .finally(() => (operatorBusy = false));
      }
    }
    const faultsEndedAt = Date.now();
    await Promise.all([...active]);
    await waitUntil(180_000, async () => !operatorBusy);
    // heal whatever is still broken: every agent running normally, every node up
    for (const heal of healers.values()) await heal().catch((err: Error) => log(`heal: ${err.message}`));
    await ensureClusterUp(sb, log);
    for (const [n, a] of agents) if (!a.proc || a.proc.exitCode !== null || a.proc.signalCode !== null) a.start({ keepOutput: true, ...(agentEnv ? { env: agentEnv } : {}) }), log(`heal: agent ${n} restarted`);
    writing = false;
    await Promise.all(writers);
    log(`chaos: faults over after ${((faultsEndedAt - t0) / 1000).toFixed(0)} s; ${acks.length} writes acknowledged; converging`);

    // ---- convergence ------------------------------------------------------------------------
    const c0 = Date.now();
    let state: FleetState | undefined;
    let problems: Violation[] = [];
    let convergedAfterMs: number | null = null;
    while (Date.now() - c0 < (o.convergeMs ?? 180_000)) {
      state = await fleetState(H, roots, catalog, ids, zfs).catch(() => undefined);
      problems = state ? convergenceProblems(state) : [{ invariant: 'converged', detail: 'the fleet could not be read' }];
      if (problems.length === 0) {
        convergedAfterMs = Date.now() - c0;
        break;
      }
      await sleep(2_000);
    }
    if (convergedAfterMs === null && state) {
      // what the fleet looks like when it did not converge (the agents' logs say why)
      for (const p of state.projects) {
        const copies = H.map((h) => `${h.name}=${state!.newest.get(`${h.name} ${p.id}`) ?? 'none'}/row ${state!.rows.get(`${h.name} ${p.id}`) ?? 'none'}`).join(' ');
        log(`final: ${p.id} primary ${p.primary ?? '-'} ${p.state}${p.operation ? ` (${p.operation})` : ''} targets [${p.targets.join(',')}] writable [${(state.writable.get(p.id) ?? []).join(',')}] newest ${copies}`);
      }
    }
    for (const stop of stopAll) stop();
    await sleep(300);

    // ---- judgement ------------------------------------------------------------------------
    // failovers the row sampler missed (done between two samples): from the history
    for (const p of projects) {
      const evs = (await catalog.listEvents({ project: p.id, limit: 10_000 })).sort((x, y) => x.at - y.at);
      for (const [i, e] of evs.entries()) {
        if (e.kind !== 'failover-started') continue;
        const d = JSON.parse(e.detail) as { from: string | null; to: string; creation: number };
        const done = evs.slice(i + 1).find((x) => x.kind === 'failover');
        const key = `${p.id} ev ${e.at}`;
        if (![...failovers.values()].some((f) => f.project === p.id && f.creation === d.creation && f.to === d.to)) {
          failovers.set(key, { project: p.id, from: d.from, to: d.to, creation: d.creation, doneAt: done?.at ?? Date.now(), open: false });
        }
      }
    }
    const finalPrimary = new Map((state?.projects ?? []).map((p) => [p.id, p.primary]));
    // a project that did not converge is served nowhere: its writes cannot be judged (its
    // convergence violation says why); the others' are
    const unconverged = new Set(problems.map((v) => v.detail.split(/[ :]/)[0]!).filter((id) => ids.has(id)));
    const judged = acks.filter((a) => !unconverged.has(a.project));
    const writes = checkWrites(
      judged,
      (a) => {
        const on = finalPrimary.get(a.project);
        const path = on ? `${mnt(on, a.project)}/data/w-${a.seq}` : '';
        return !!on && existsSync(path) && readFileSync(path).equals(body(a.project, a.seq));
      },
      [...failovers.values()],
    );
    const history = H.flatMap((h) =>
      spawnSync('zpool', ['history', h.pool], { encoding: 'utf8' })
        .stdout.split('\n')
        .map((l) => ({ pool: h.pool, command: l.replace(/^\S+\s/, '') })),
    );
    const destroys = checkDestroys(history, ids, (s) => parseAutoSnapshotName(s) !== undefined);
    const violations = [...checkMounts(samples), ...writes.violations, ...destroys.violations, ...problems];
    const report: ChaosReport = {
      seed: o.seed,
      startedAt: t0,
      setupMs: t0 - setupStarted,
      ranMs: Date.now() - t0,
      faults: countByKind(applied),
      faultsApplied: applied.length,
      operator: opCounts,
      writes: { acknowledged: acks.length, present: writes.present, excusedByFailoverWindow: writes.excused, notJudged: acks.length - judged.length },
      samples: samples.length,
      failoversSeen: failovers.size,
      agentRestarts: restarts,
      destroyedAutoSnapshots: destroys.destroyed,
      convergedAfterMs,
      violations,
    };

    return report;
  }
}

export function describe(f: Fault): string {
  return `${f.kind} ${f.host}${f.peer ? `<->${f.peer}` : ''} for ${(f.ms / 1000).toFixed(1)} s${f.skewS ? ` (+${f.skewS} s)` : ''}`;
}

export function summary(r: ChaosReport): string {
  return [
    `seed ${r.seed}, setup ${(r.setupMs / 1000).toFixed(0)} s, ran ${(r.ranMs / 1000).toFixed(0)} s`,
    `faults ${r.faultsApplied} (${Object.entries(r.faults).map(([k, n]) => `${k} ${n}`).join(', ')})`,
    `operator ${Object.entries(r.operator).map(([k, n]) => `${k}: ${n}`).join(', ') || 'none'}`,
    `writes acknowledged ${r.writes.acknowledged} (present ${r.writes.present}, lost within a failover window ${r.writes.excusedByFailoverWindow}, not judged ${r.writes.notJudged})`,
    `samples ${r.samples}, failovers ${r.failoversSeen}, agent restarts ${r.agentRestarts}, auto snapshots destroyed ${r.destroyedAutoSnapshots}`,
    `converged ${r.convergedAfterMs === null ? 'NO' : `after ${(r.convergedAfterMs / 1000).toFixed(1)} s`}`,
    `violations ${r.violations.length}`,
  ].join('; ');
}

// ---- faults -------------------------------------------------------------------------------

interface FaultContext {
  sb: Sandbox;
  agents: Map<string, AgentProcess>;
  env: Record<string, string> | undefined;
  roots: Roots;
  /** agents a fault keeps down (the supervisor leaves them alone) */
  heldDown: Set<string>;
  healers: Map<Fault, () => Promise<void>>;
  log: (l: string) => void;
}

const LIBFAKETIME = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';

async function applyFault(f: Fault, x: FaultContext): Promise<void> {
  const { sb, agents, env, roots, heldDown, healers, log } = x;
  const h = host(sb, f.host);
  const agent = agents.get(f.host)!;
  // libfaketime preloaded into node itself (the faketime binary would fork, and a kill would miss node)
  const startAgent = (skewS?: number) => agent.start({ keepOutput: true, env: { ...(env ?? {}), ...(skewS ? { LD_PRELOAD: LIBFAKETIME, FAKETIME: `+${skewS}s`, FAKETIME_DONT_RESET: '1' } : {}) } });
  let heal: () => Promise<void>;
  switch (f.kind) {
    case 'kill-agent':
      heldDown.add(f.host);
      await agent.kill();
      heal = async () => {
        heldDown.delete(f.host);
        if (agent.proc?.exitCode !== null || agent.proc?.signalCode !== null) startAgent();
      };
      break;
    case 'pause-agent':
      agent.proc?.kill('SIGSTOP');
      heal = async () => void agent.proc?.kill('SIGCONT');
      break;
    case 'partition-host':
    case 'partition-pair': {
      const others = f.peer ? [f.peer] : sb.hosts.map((x) => x.name).filter((x) => x !== f.host);
      blackhole(sb, f.host, others, true);
      heal = async () => blackhole(sb, f.host, others, false);
      break;
    }
    case 'flap-link': {
      const n = Math.max(1, Math.round(f.ms / 2000));
      heal = async () => void spawnSync('ip', ['-n', h.netns, 'link', 'set', 'eth0', 'up']);
      healers.set(f, heal);
      for (let i = 0; i < n; i++) {
        spawnSync('ip', ['-n', h.netns, 'link', 'set', 'eth0', 'down']);
        await sleep(1000);
        spawnSync('ip', ['-n', h.netns, 'link', 'set', 'eth0', 'up']);
        await sleep(1000);
      }
      healers.delete(f);
      return;
    }
    case 'kill-cassandra':
      await cluster(sb, 'kill', h.datacenter);
      heal = async () => {
        // restarting takes 10-40 s: the samplers and writers go on meanwhile (never a sync spawn here)
        await cluster(sb, 'start-node', h.datacenter).catch((e: Error) => log(`heal: Cassandra node of ${h.datacenter}: ${e.message.slice(-300)}`));
      };
      break;
    case 'skew-clock':
      heldDown.add(f.host);
      await agent.kill();
      startAgent(f.skewS ?? 60);
      heal = async () => {
        await agent.kill();
        startAgent();
        heldDown.delete(f.host);
      };
      break;
    case 'fill-quota': {
      const root = roots.get(f.host)!.replicas;
      const used = Number(spawnSync('zfs', ['get', '-Hp', '-o', 'value', 'used', root], { encoding: 'utf8' }).stdout.trim());
      spawnSync('zfs', ['set', `quota=${Math.max(used + 64 * 1024, 1 << 20)}`, root]);
      heal = async () => void spawnSync('zfs', ['set', 'quota=none', root]);
      break;
    }
  }
  healers.set(f, heal);
  await sleep(f.ms);
  healers.delete(f);
  await heal();
}

/** blackhole routes between `a` and each of `others`, both ways (their sshd and Cassandra nodes with them) */
function blackhole(sb: Sandbox, a: string, others: readonly string[], on: boolean): void {
  const A = host(sb, a);
  for (const o of others) {
    const O = host(sb, o);
    for (const [ns, addr] of [
      [A.netns, O.address],
      [O.netns, A.address],
    ] as const) {
      spawnSync('ip', ['-n', ns, 'route', on ? 'add' : 'del', 'blackhole', `${addr}/32`]);
    }
  }
}

/** test/env/cassandra/cluster.sh, without blocking the samplers and writers */
async function cluster(sb: Sandbox, ...args: string[]): Promise<string> {
  const r = await execFileP('bash', [`${sb.repo}/test/env/cassandra/cluster.sh`, ...args], { timeout: 400_000, maxBuffer: 16 << 20 });
  return r.stdout;
}

async function ensureClusterUp(sb: Sandbox, log: (l: string) => void): Promise<void> {
  const status = await cluster(sb, 'status').catch((e: { stdout?: string }) => e.stdout ?? '');
  for (const h of sb.hosts) {
    if (new RegExp(`^${h.datacenter} [^\\n]*stopped`, 'm').test(status)) {
      log(`heal: starting the Cassandra node of ${h.datacenter}`);
      await cluster(sb, 'start-node', h.datacenter).catch((e: Error) => log(`heal: ${e.message.slice(-300)}`));
    }
  }
}

// ---- observation ----------------------------------------------------------------------------

type Roots = ReadonlyMap<string, { projects: string; replicas: string; mountBase: string }>;

async function writableMounts(H: readonly SandboxHost[], roots: Roots, ids: ReadonlySet<string>): Promise<Map<string, string[]>> {
  const { stdout } = await execFileP('zfs', ['list', '-H', '-t', 'filesystem', '-o', 'name,mounted,readonly', '-r', '-d', '1', ...H.map((h) => roots.get(h.name)!.projects)], { maxBuffer: 16 << 20 });
  const out = new Map<string, string[]>();
  for (const line of stdout.split('\n')) {
    const [name, mounted, ro] = line.split('\t');
    const id = name?.split('/').pop();
    if (!id || !ids.has(id) || mounted !== 'yes' || ro !== 'off') continue;
    const h = H.find((x) => name!.startsWith(`${x.pool}/`));
    if (h) out.set(id, [...(out.get(id) ?? []), h.name]);
  }
  return out;
}

async function fleetState(H: readonly SandboxHost[], roots: Roots, catalog: CassandraCatalog, ids: ReadonlySet<string>, zfs: Zfs): Promise<FleetState> {
  const projects = (await catalog.listProjects()).filter((p) => ids.has(p.id));
  const writable = await writableMounts(H, roots, ids);
  // the primary's copy is its projects/ dataset, a target's its replicas/ dataset
  const primaryOf = new Map(projects.map((p) => [p.id, p.primary]));
  const newest = new Map<string, string | undefined>();
  for (const h of H) {
    for (const [kind, root] of [['projects', roots.get(h.name)!.projects], ['replicas', roots.get(h.name)!.replicas]] as const) {
      const tree = await zfs.list(root, { depth: 1 });
      for (const [name, d] of tree) {
        const id = name.split('/').pop()!;
        if (name === root || !ids.has(id)) continue;
        if ((kind === 'projects') === (primaryOf.get(id) === h.name)) newest.set(`${h.name} ${id}`, d.snapshots.at(-1)?.guid);
      }
    }
  }
  const rows = new Map<string, string | undefined>();
  for (const p of projects) for (const r of await catalog.listReplicas(p.id)) rows.set(`${r.host} ${p.id}`, r.guid);
  return { projects: projects.map((p) => ({ id: p.id, primary: p.primary, state: p.state, operation: p.operation?.kind ?? null, targets: p.targets })), writable, newest, rows };
}

function every(ms: number, fn: () => Promise<unknown>): () => void {
  let busy = false;
  const t = setInterval(() => {
    if (busy) return;
    busy = true;
    fn()
      .catch(() => undefined)
      .finally(() => (busy = false));
  }, ms);
  return () => clearInterval(t);
}

async function waitUntil(ms: number, fn: () => Promise<boolean>): Promise<void> {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    if (
      await fn().catch((e: Error) => {
        if (e.message.startsWith('chaos:')) throw e;
        return false;
      })
    )
      return;
    await sleep(500);
  }
  throw new Error(`chaos: timed out after ${ms} ms`);
}

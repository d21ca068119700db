// Observability end to end: a real storage-agent PROCESS per sandbox host (in the
// host's network namespace, replicating over the real sshd -> forced command ->
// zfs-fuse path), scraped by a real Prometheus in the control namespace; the alert
// rules, the Grafana dashboard's queries and the systemd unit checked with the real
// tools (promtool, Prometheus's query API, systemd-analyze).
//
// The runner brings up the sandbox; this file reads its manifest (SANDBOX_MANIFEST)
// and must run inside the sandbox's control namespace (nsenter --net=/run/netns/<ctl>),
// which reaches every host. Everything it starts is stopped in `after`.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { appendFileSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { parse as parseYaml, stringify as toYaml } from 'yaml';
import { sandbox, host, uniq, sh, setReceiverCatalog, type SandboxHost } from '../lib/sandbox.js';
import { createProject, sleep, type Fleet } from '../lib/fleet.js';
import { SqliteCatalog } from '../../src/catalog/sqlite.js';
import { loadConfig, type Config } from '../../src/agent/config.js';
import { Zfs } from '../../src/zfs/index.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const RULES = `${REPO}/deploy/prometheus/storage-alerts.yml`;
const DASHBOARD = `${REPO}/deploy/grafana/storage-dashboard.json`;
const PROM_SH = `${REPO}/test/env/prometheus.sh`;
const VERIFY_UNIT = `${REPO}/test/env/verify-unit.sh`;
const PROM_PORT = 19090;
const PROM = `http://127.0.0.1:${PROM_PORT}`;
const METRICS_PORT = 9464;
/** a replica counts as fresh below this lag (agents cycle every 3 s, projects change every second) */
const LOW_LAG = 30;
const AGENT_INTERVAL = '3s';
const LAG_SLO = 20;
/** Lint findings of `promtool check metrics` that are tolerated: none (the agent drops prom-client's *_total gauges). */
const PROM_CLIENT_LINT_BASELINE: string[] = [];

const sb = sandbox();
const hostA = host(sb, 'a');
const hostB = host(sb, 'b');
const work = `${sb.dir}/prom-${uniq('')}`;
const catalogPath = `${work}/catalog.db`;
const promDir = `${work}/prometheus`;

const agents = new Map<string, { child: ChildProcess; log: string; config: string }>();
const configs = new Map<string, Config>();
let catalog: SqliteCatalog | undefined;
let promStarted = false;
let writer: NodeJS.Timeout | undefined;
let linkDown: SandboxHost | undefined;
const projects: Array<{ id: string; dataset: string; mnt: string }> = [];

// ---- helpers ----------------------------------------------------------------------

interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

async function promGet<T>(path: string): Promise<T> {
  let res: Response;
  try {
    res = await fetch(`${PROM}${path}`, { signal: AbortSignal.timeout(5000) });
  } catch (e) {
    throw new Error(`Prometheus at ${PROM} did not answer GET ${path}: ${(e as Error).message} (log: ${tail(`${promDir}/prometheus.log`)})`);
  }
  const body = (await res.json()) as { status: string; data: T; errorType?: string; error?: string };
  if (body.status !== 'success') throw new Error(`Prometheus GET ${path}: ${body.errorType}: ${body.error}`);
  return body.data;
}

async function query(expr: string): Promise<Sample[]> {
  const data = await promGet<{ resultType: string; result: Sample[] | [number, string] }>(`/api/v1/query?query=${encodeURIComponent(expr)}`);
  if (data.resultType === 'scalar' || data.resultType === 'string') return [{ metric: {}, value: data.result as [number, string] }];
  return data.result as Sample[];
}

function num(s: Sample | undefined): number {
  return s ? Number(s.value[1]) : Number.NaN;
}

function show(samples: Sample[]): string {
  return JSON.stringify(samples.map((s) => ({ ...s.metric, value: s.value[1] })));
}

/** Polls `probe` every `everyMs` until it reports ok; a clear failure after `timeoutMs`. */
async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<{ ok: boolean; value: T; detail: string }>, everyMs = 1000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = '(never probed)';
  for (;;) {
    try {
      const r = await probe();
      if (r.ok) return r.value;
      last = r.detail;
    } catch (e) {
      last = `error: ${(e as Error).message}`;
    }
    if (Date.now() >= deadline) throw new Error(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what}; last observation: ${last}${agentDeaths()}`);
    await sleep(everyMs);
  }
}

function tail(path: string, lines = 15): string {
  if (!existsSync(path)) return `(no ${path})`;
  return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
}

/** " / agent b exited (code 1): <log tail>" for agents that died, for failure messages */
function agentDeaths(): string {
  let out = '';
  for (const [name, a] of agents) {
    if (a.child.exitCode !== null || a.child.signalCode !== null) out += `\nagent ${name} exited (${a.child.exitCode ?? a.child.signalCode}); log ${a.log}:\n${tail(a.log)}`;
  }
  return out;
}

function inNetns(h: { netns: string }, argv: string[]): string[] {
  return ['nsenter', `--net=/run/netns/${h.netns}`, ...argv];
}

function run(argv: string[], opts: { input?: string | Buffer; timeoutMs?: number } = {}): { status: number | null; out: string } {
  const r = spawnSync(argv[0]!, argv.slice(1), { input: opts.input, encoding: 'utf8', timeout: opts.timeoutMs ?? 120_000 });
  if (r.error) throw new Error(`${argv.join(' ')}: ${r.error.message}`);
  return { status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

async function fetchMetrics(h: SandboxHost): Promise<string> {
  const res = await fetch(`http://${h.address}:${METRICS_PORT}/metrics`, { signal: AbortSignal.timeout(5000) });
  assert.equal(res.status, 200, `GET /metrics of ${h.name}`);
  return res.text();
}

function setLink(h: SandboxHost, state: 'up' | 'down'): void {
  sh(inNetns(h, ['ip', 'link', 'set', 'eth0', state]));
  linkDown = state === 'down' ? h : undefined;
}

/** lag per (project, target) as exported by host a's agent and scraped by Prometheus */
async function lags(target: string): Promise<Map<string, number>> {
  const r = await query(`storage_replication_lag_seconds{job="storage-agent", host="a", target="${target}"}`);
  return new Map(r.map((s) => [s.metric.project!, num(s)]));
}

// ---- setup / teardown ------------------------------------------------------------

before(async () => {
  // Prometheus listens on the control namespace's loopback and the agents' addresses are
  // only reachable from there: this process must run inside it.
  const self = statSync('/proc/self/ns/net');
  const ctl = statSync(`/run/netns/${sb.controlNetns}`);
  if (self.ino !== ctl.ino || self.dev !== ctl.dev) {
    throw new Error(
      `this test must run inside the sandbox's control namespace: nsenter --net=/run/netns/${sb.controlNetns} node dist/test/run.js prometheus=dist/test/prometheus`,
    );
  }
  mkdirSync(work, { recursive: true });
  const inst = run(['bash', PROM_SH, 'install'], { timeoutMs: 300_000 });
  assert.equal(inst.status, 0, `test/env/prometheus.sh install failed:\n${inst.out}`);

  // Migrate the fresh catalog once, before three agent processes open it at once.
  catalog = new SqliteCatalog(catalogPath);
  setReceiverCatalog(sb.hosts, { backend: 'sqlite', path: catalogPath });

  // One agent process per host, on a modified copy of its agent.yaml (the receiver's
  // forced command reads the original, pointed at the same catalog above).
  for (const h of sb.hosts) {
    const raw = parseYaml(readFileSync(`${h.dir}/agent.yaml`, 'utf8')) as Record<string, unknown>;
    raw.catalog = { backend: 'sqlite', path: catalogPath };
    raw.interval = AGENT_INTERVAL;
    // fail fast on a cut-off target: a listing on a dead connection must not stall the
    // cycle (and with it the other targets) for the default 120 s
    raw.ssh = { ...(raw.ssh as object), keepalive: '1s', connectTimeout: '3s', operationTimeout: '8s', stallTimeout: '10s' };
    raw.metrics = { ...(raw.metrics as object), lagSloSeconds: LAG_SLO };
    raw.stateDir = `${work}/state-${h.name}`;
    raw.log = { level: 'info' };
    const path = `${work}/agent-${h.name}.yaml`;
    writeFileSync(path, toYaml(raw));
    configs.set(h.name, loadConfig(path));
    const log = `${work}/agent-${h.name}.log`;
    const fd = openSync(log, 'a');
    const child = spawn('nsenter', [`--net=/run/netns/${h.netns}`, process.execPath, `${REPO}/bin/storage-agent`, '--config', path, '--shutdown-grace', '2'], {
      stdio: ['ignore', fd, fd],
    });
    closeSync(fd);
    child.on('error', (e) => appendFileSync(log, `spawn error: ${e.message}\n`));
    agents.set(h.name, { child, log, config: path });
  }
  for (const h of sb.hosts) {
    await waitFor(`storage-agent of ${h.name} to serve http://${h.address}:${METRICS_PORT}/metrics`, 30_000, async () => {
      const a = agents.get(h.name)!;
      if (a.child.exitCode !== null) throw new Error(`agent ${h.name} exited with ${a.child.exitCode}: ${tail(a.log)}`);
      const res = await fetch(`http://${h.address}:${METRICS_PORT}/metrics`, { signal: AbortSignal.timeout(2000) });
      return { ok: res.status === 200, value: undefined, detail: `HTTP ${res.status}` };
    });
  }

  // A few projects on host a; they change every second, so every cycle snapshots and
  // sends them and a reachable replica's lag stays within a few cycles.
  const fleet = { catalog, agents: new Map(), configs, zfs: new Zfs(), close: async () => undefined } as unknown as Fleet;
  for (let i = 0; i < 3; i++) {
    projects.push(await createProject(fleet, hostA, { files: { 'seed.bin': randomBytes(10_000 + i * 1000) } }));
  }
  writer = setInterval(() => {
    for (const p of projects) {
      try {
        appendFileSync(`${p.mnt}/log.txt`, `${new Date().toISOString()} ${randomBytes(64).toString('hex')}\n`);
      } catch {
        // the dataset is being snapshotted or the test is ending: the next tick writes
      }
    }
  }, 1000);

  // Prometheus in the control namespace, scraping the three agents and loading the rules
  mkdirSync(promDir, { recursive: true });
  const promConfig = {
    global: { scrape_interval: '2s', scrape_timeout: '1s', evaluation_interval: '2s' },
    rule_files: [RULES],
    scrape_configs: [
      {
        job_name: 'storage-agent',
        static_configs: [{ targets: sb.hosts.map((h) => `${h.address}:${METRICS_PORT}`) }],
      },
    ],
  };
  writeFileSync(`${promDir}/prometheus.yml`, toYaml(promConfig));
  const st = run(['bash', PROM_SH, 'start', sb.controlNetns, `${promDir}/prometheus.yml`, String(PROM_PORT), promDir], { timeoutMs: 60_000 });
  promStarted = true;
  assert.equal(st.status, 0, `test/env/prometheus.sh start failed:\n${st.out}`);
});

after(async () => {
  if (writer) clearInterval(writer);
  if (linkDown) {
    try {
      setLink(linkDown, 'up');
    } catch (e) {
      process.stderr.write(`after: could not bring ${linkDown.name}'s link back up: ${(e as Error).message}\n`);
    }
  }
  // SIGTERM every agent, then SIGKILL whatever is left after 10 s
  const exits = [...agents.values()].map(
    (a) =>
      new Promise<void>((res) => {
        if (a.child.exitCode !== null || a.child.signalCode !== null) return res();
        a.child.once('exit', () => res());
        a.child.kill('SIGTERM');
      }),
  );
  const timer = setTimeout(() => {
    for (const a of agents.values()) if (a.child.exitCode === null && a.child.signalCode === null) a.child.kill('SIGKILL');
  }, 10_000);
  await Promise.all(exits);
  clearTimeout(timer);
  if (promStarted) {
    const r = run(['bash', PROM_SH, 'stop', promDir], { timeoutMs: 30_000 });
    if (r.status !== 0) process.stderr.write(`after: prometheus.sh stop: ${r.out}\n`);
  }
  await catalog?.close();
});

// ---- tests -----------------------------------------------------------------------

describe('observability: real agents scraped by a real Prometheus', () => {
  it('promtool accepts the alert rules, and `promtool test rules` fires each alert on synthetic series (and not on healthy ones)', () => {
    const check = run(['promtool', 'check', 'rules', RULES]);
    assert.equal(check.status, 0, `promtool check rules ${RULES}:\n${check.out}`);
    assert.match(check.out, /SUCCESS: 9 rules found/);

    // every alert routes (severity) and explains itself (summary, description)
    const doc = parseYaml(readFileSync(RULES, 'utf8')) as { groups: Array<{ name: string; rules: Array<Record<string, any>> }> };
    const alerts = doc.groups.flatMap((g) => g.rules);
    for (const r of alerts) {
      assert.ok(['warning', 'critical'].includes(r.labels?.severity), `${r.alert}: severity label`);
      assert.ok(r.annotations?.summary && r.annotations?.description, `${r.alert}: summary and description`);
    }
    const names = alerts.map((r) => r.alert as string).sort();
    assert.deepEqual(names, [
      'StorageAgentCyclesStopped',
      'StorageAgentDown',
      'StorageAgentMetricsAbsent',
      'StorageCatalogUnreachable',
      'StorageHostHeartbeatMissing',
      'StorageReplicationFailing',
      'StorageReplicationLagCritical',
      'StorageReplicationLagOverSLO',
      'StorageReplicationNoSuccess',
    ]);

    // promtool compares annotations verbatim; the firing logic (expr, for, labels) is what
    // is tested here, on a copy without annotations (their templates were checked above)
    for (const r of alerts) delete r.annotations;
    const stripped = `${work}/alerts-no-annotations.yml`;
    writeFileSync(stripped, toYaml(doc));
    const j = 'job="storage-agent"';
    const ia = `${j}, instance="10.0.0.1:9464"`;
    const ic = `${j}, instance="10.0.0.3:9464"`;
    const tests = {
      rule_files: [stripped],
      evaluation_interval: '1m',
      tests: [
        {
          name: 'lag over SLO and critical lag: target b lags, target c is fine',
          interval: '1m',
          input_series: [
            { series: `storage_replication_projects_over_slo{${ia}, host="a", target="b"}`, values: '0 0 3x40' },
            { series: `storage_replication_projects_over_slo{${ia}, host="a", target="c"}`, values: '0x42' },
            { series: `storage_replication_lag_max_seconds{${ia}, host="a", target="b"}`, values: '60x5 8000x40' },
            { series: `storage_replication_lag_max_seconds{${ia}, host="a", target="c"}`, values: '60x45' },
          ],
          alert_rule_test: [
            { eval_time: '10m', alertname: 'StorageReplicationLagOverSLO', exp_alerts: [] }, // pending, not firing
            { eval_time: '20m', alertname: 'StorageReplicationLagOverSLO', exp_alerts: [{ exp_labels: { severity: 'warning', host: 'a', target: 'b' } }] },
            { eval_time: '10m', alertname: 'StorageReplicationLagCritical', exp_alerts: [] },
            { eval_time: '20m', alertname: 'StorageReplicationLagCritical', exp_alerts: [{ exp_labels: { severity: 'critical', host: 'a', target: 'b' } }] },
          ],
        },
        {
          name: 'failing repeatedly (b, every minute) vs. one failure (c)',
          interval: '1m',
          input_series: [
            { series: `storage_replication_failures_total{${ia}, host="a", target="b", reason="listing"}`, values: '0+1x60' },
            { series: `storage_replication_failures_total{${ia}, host="a", target="c", reason="transfer"}`, values: '0 1 1x60' },
          ],
          alert_rule_test: [
            { eval_time: '20m', alertname: 'StorageReplicationFailing', exp_alerts: [] },
            { eval_time: '45m', alertname: 'StorageReplicationFailing', exp_alerts: [{ exp_labels: { severity: 'warning', host: 'a', target: 'b', reason: 'listing' } }] },
          ],
        },
        {
          name: 'no successful replication to c for over 6 h; b succeeds every minute',
          interval: '1m',
          input_series: [
            { series: `storage_replication_last_success_timestamp_seconds{${ia}, host="a", target="c"}`, values: '0x400' },
            { series: `storage_replication_last_success_timestamp_seconds{${ia}, host="a", target="b"}`, values: '0+60x400' },
          ],
          alert_rule_test: [
            { eval_time: '6h', alertname: 'StorageReplicationNoSuccess', exp_alerts: [] },
            { eval_time: '6h20m', alertname: 'StorageReplicationNoSuccess', exp_alerts: [{ exp_labels: { severity: 'warning', host: 'a', target: 'c' } }] },
          ],
        },
        {
          name: 'agent down, cycles stopped, heartbeat missing, catalog unreachable',
          interval: '1m',
          input_series: [
            { series: `up{${j}, instance="10.0.0.2:9464"}`, values: '1 1 0x50' },
            { series: `up{${ia}}`, values: '1x50' },
            { series: `up{${ic}}`, values: '1x50' },
            { series: `storage_agent_cycle_duration_seconds_count{${ia}, host="a"}`, values: '0+1x10 10x40' },
            { series: `storage_agent_cycle_duration_seconds_count{${ic}, host="c"}`, values: '0+1x50' },
            { series: `storage_host_heartbeat_age_seconds{${ia}, host="b"}`, values: '10 10 400+60x48' },
            { series: `storage_host_heartbeat_age_seconds{${ic}, host="b"}`, values: '10 10 400+60x48' },
            { series: `storage_host_heartbeat_age_seconds{${ia}, host="a"}`, values: '5x50' },
            { series: `storage_catalog_errors_total{${ic}, host="c", op="heartbeat"}`, values: '0 0 0+5x48' },
            { series: `storage_catalog_errors_total{${ia}, host="a", op="heartbeat"}`, values: '0x50' },
          ],
          alert_rule_test: [
            { eval_time: '4m', alertname: 'StorageAgentDown', exp_alerts: [] },
            { eval_time: '10m', alertname: 'StorageAgentDown', exp_alerts: [{ exp_labels: { severity: 'critical', job: 'storage-agent', instance: '10.0.0.2:9464' } }] },
            { eval_time: '20m', alertname: 'StorageAgentCyclesStopped', exp_alerts: [] },
            { eval_time: '45m', alertname: 'StorageAgentCyclesStopped', exp_alerts: [{ exp_labels: { severity: 'critical', job: 'storage-agent', instance: '10.0.0.1:9464' } }] },
            { eval_time: '10m', alertname: 'StorageHostHeartbeatMissing', exp_alerts: [{ exp_labels: { severity: 'critical', host: 'b' } }] },
            { eval_time: '15m', alertname: 'StorageCatalogUnreachable', exp_alerts: [{ exp_labels: { severity: 'critical', host: 'c' } }] },
            { eval_time: '15m', alertname: 'StorageAgentMetricsAbsent', exp_alerts: [] },
          ],
        },
        {
          name: 'no agent scraped at all',
          interval: '1m',
          input_series: [{ series: 'up{job="node"}', values: '1x20' }],
          alert_rule_test: [{ eval_time: '15m', alertname: 'StorageAgentMetricsAbsent', exp_alerts: [{ exp_labels: { severity: 'warning', job: 'storage-agent' } }] }],
        },
      ],
    };
    const testFile = `${work}/alerts-test.yml`;
    writeFileSync(testFile, toYaml(tests));
    const t = run(['promtool', 'test', 'rules', testFile]);
    assert.equal(t.status, 0, `promtool test rules ${testFile}:\n${t.out}`);
    assert.match(t.out, /SUCCESS/);
  });

  it('the systemd unit passes test/env/verify-unit.sh (systemd-analyze verify in a scratch root, plus the project rules)', () => {
    const r = run(['bash', VERIFY_UNIT, `${REPO}/systemd/storage-agent.service`]);
    assert.equal(r.status, 0, `verify-unit.sh failed:\n${r.out}`);
    assert.match(r.out, /ok: .*storage-agent\.service/);
  });

  it('Prometheus scrapes all three agent processes (up == 1) and evaluates every alert rule without error', async () => {
    const want = sb.hosts.map((h) => `${h.address}:${METRICS_PORT}`).sort();
    await waitFor('up{job="storage-agent"} == 1 for every host', 30_000, async () => {
      const r = await query('up{job="storage-agent"} == 1');
      const got = r.map((s) => s.metric.instance!).sort();
      return { ok: JSON.stringify(got) === JSON.stringify(want), value: got, detail: `up: ${show(await query('up'))}` };
    });
    // and Prometheus sees each agent's own host label on its series
    const hosts = (await query('count by (host) (storage_agent_cycle_duration_seconds_count{job="storage-agent"})')).map((s) => s.metric.host).sort();
    assert.deepEqual(hosts, sb.hosts.map((h) => h.name).sort());
    await waitFor('every rule in storage-alerts.yml evaluated with health "ok"', 30_000, async () => {
      const data = await promGet<{ groups: Array<{ file: string; rules: Array<{ name: string; health: string; lastError?: string; lastEvaluation: string }> }> }>('/api/v1/rules');
      const rules = data.groups.filter((g) => g.file === RULES).flatMap((g) => g.rules);
      const bad = rules.filter((r) => r.health !== 'ok' || r.lastEvaluation.startsWith('0001'));
      return { ok: rules.length === 9 && bad.length === 0, value: rules, detail: `${rules.length} rules loaded; not ok: ${JSON.stringify(bad)}` };
    });
  });

  it('promtool check metrics accepts the live /metrics exposition of every agent, which carries the replication metrics', async () => {
    for (const h of sb.hosts) {
      const body = await fetchMetrics(h);
      const r = run(['promtool', 'check', 'metrics'], { input: body });
      // promtool exits non-zero on parse errors and on lint problems (one "name problem"
      // line each). Known, and only these: prom-client's default Node.js gauges named
      // *_total (see PROM_CLIENT_LINT_BASELINE); any other problem fails.
      const problems = r.out.split('\n').map((l) => l.trim()).filter(Boolean);
      const unexpected = problems.filter((l) => !PROM_CLIENT_LINT_BASELINE.some((name) => l.startsWith(`${name} `)));
      assert.ok(r.status === 0 || (problems.length > 0 && unexpected.length === 0), `promtool check metrics on ${h.name}'s /metrics (exit ${r.status}):\n${r.out}`);
      assert.deepEqual(unexpected, [], `promtool check metrics on ${h.name}'s /metrics:\n${r.out}`);
      // the product's own families are lint-clean without exception
      assert.ok(!problems.some((l) => /^storage_(replication|snapshots|zfs|host|catalog)_|^storage_agent_cycle_/.test(l)), r.out);
      for (const name of [
        'storage_replication_lag_max_seconds',
        'storage_replication_projects_over_slo',
        'storage_replication_failures_total',
        'storage_replication_sent_bytes_total',
        'storage_replication_last_success_timestamp_seconds',
        'storage_agent_cycle_duration_seconds',
        'storage_zfs_command_duration_seconds',
      ]) {
        assert.match(body, new RegExp(`^# TYPE ${name} `, 'm'), `${h.name}'s /metrics declares ${name}`);
      }
    }
    // a's exposition (the primary) has samples, with its host label
    const a = await fetchMetrics(hostA);
    assert.match(a, /^storage_replication_lag_seconds\{[^}]*host="a"[^}]*\} \d/m);
  });

  it('a lag value exists for every replica (project x target) and every replica is fresh; bytes flow to both targets', async () => {
    const ids = projects.map((p) => p.id);
    const targetsOf = await waitFor('placement of every project on b and c', 30_000, async () => {
      const recs = await Promise.all(ids.map((id) => catalog!.getProject(id)));
      const ok = recs.every((r) => r && [...r.targets].sort().join(',') === 'b,c');
      return { ok, value: recs, detail: JSON.stringify(recs.map((r) => r?.targets)) };
    });
    assert.equal(targetsOf.length, projects.length);
    await waitFor(`storage_replication_lag_seconds{project,target} < ${LOW_LAG} for all ${projects.length * 2} replicas`, 60_000, async () => {
      const b = await lags('b');
      const c = await lags('c');
      const missing = ids.flatMap((id) => [b.has(id) ? [] : [`${id}->b`], c.has(id) ? [] : [`${id}->c`]].flat());
      const stale = ids.flatMap((id) => [[b, 'b'], [c, 'c']].filter(([m]) => (m as Map<string, number>).get(id)! >= LOW_LAG).map(([, t]) => `${id}->${t}`));
      return { ok: missing.length === 0 && stale.length === 0, value: undefined, detail: `missing ${JSON.stringify(missing)}, stale ${JSON.stringify(stale)}; b=${JSON.stringify([...b])} c=${JSON.stringify([...c])}` };
    });
    for (const t of ['b', 'c']) {
      const max = await query(`storage_replication_lag_max_seconds{job="storage-agent", host="a", target="${t}"}`);
      assert.equal(max.length, 1, `lag_max for target ${t}: ${show(max)}`);
      assert.ok(num(max[0]) < LOW_LAG, `lag_max for ${t}: ${show(max)}`);
      await waitFor(`rate(storage_replication_sent_bytes_total{target="${t}"}) > 0`, 30_000, async () => {
        const r = await query(`sum(rate(storage_replication_sent_bytes_total{job="storage-agent", host="a", target="${t}"}[20s]))`);
        return { ok: num(r[0]) > 0, value: undefined, detail: show(r) };
      });
    }
  });

  it('cutting host b off the network: b\'s lag grows scrape after scrape while c\'s stays low; b is reported down', async () => {
    const lagsBefore = await lags('b');
    const t0 = Date.now();
    setLink(hostB, 'down');
    // sample what Prometheus stores every 3 s for 30 s
    const seriesB: number[] = [];
    const seriesC: number[] = [];
    const overB: number[] = [];
    while (Date.now() - t0 < 30_000) {
      await sleep(3000);
      seriesB.push(num((await query('storage_replication_lag_max_seconds{job="storage-agent", host="a", target="b"}'))[0]));
      seriesC.push(num((await query('storage_replication_lag_max_seconds{job="storage-agent", host="a", target="c"}'))[0]));
      overB.push(num((await query('storage_replication_projects_over_slo{job="storage-agent", host="a", target="b"}'))[0]));
    }
    const msg = `lag_max samples every 3 s after the cut: b=${JSON.stringify(seriesB)} c=${JSON.stringify(seriesC)} over_slo(b)=${JSON.stringify(overB)}; per-project lag to b before the cut ${JSON.stringify([...lagsBefore])}`;
    // c: replication goes on
    assert.ok(seriesC.every((v) => v < LOW_LAG), `target c must stay below ${LOW_LAG} s: ${msg}`);
    // b: failing listings are counted ...
    await waitFor('listing failures to b counted', 15_000, async () => {
      const r = await query('sum(increase(storage_replication_failures_total{job="storage-agent", host="a", target="b"}[30s]))');
      return { ok: num(r[0]) > 0, value: undefined, detail: show(r) };
    });
    // ... and b's agent is unreachable for Prometheus, the StorageAgentDown alert pending
    const up = await query(`up{job="storage-agent", instance="${hostB.address}:${METRICS_PORT}"}`);
    assert.equal(num(up[0]), 0, `up of b: ${show(up)}`);
    await waitFor('ALERTS{alertname="StorageAgentDown"} for b', 15_000, async () => {
      const r = await query(`ALERTS{alertname="StorageAgentDown", instance="${hostB.address}:${METRICS_PORT}"}`);
      return { ok: r.length === 1 && ['pending', 'firing'].includes(r[0]!.metric.alertstate!), value: undefined, detail: show(r) };
    });
    // b's lag must grow across scrapes: no replica of b gets newer while time passes
    const growth = seriesB[seriesB.length - 1]! - seriesB[0]!;
    assert.ok(growth >= 20, `lag to b must grow by about the 30 s of the outage (>= 20 s), grew ${growth} s: ${msg}`);
    for (let i = 1; i < seriesB.length; i++) assert.ok(seriesB[i]! >= seriesB[i - 1]!, `lag to b must never fall during the outage: ${msg}`);
    assert.ok(seriesB[seriesB.length - 1]! > LAG_SLO, `lag to b ends above the ${LAG_SLO} s SLO: ${msg}`);
    assert.equal(overB[overB.length - 1], projects.length, `all ${projects.length} projects over the SLO on b at the end: ${msg}`);
    // and per project, through Prometheus's stored range: each series rises over the window
    const end = Date.now() / 1000;
    const range = await promGet<{ result: Array<{ metric: Record<string, string>; values: Array<[number, string]> }> }>(
      `/api/v1/query_range?query=${encodeURIComponent('storage_replication_lag_seconds{job="storage-agent", host="a", target="b"}')}&start=${(t0 / 1000 + 6).toFixed(3)}&end=${end.toFixed(3)}&step=2`,
    );
    assert.equal(range.result.length, projects.length, `per-project lag series to b: ${JSON.stringify(range.result.map((r) => r.metric))}`);
    for (const s of range.result) {
      const v = s.values.map(([, x]) => Number(x));
      assert.ok(v[v.length - 1]! - v[0]! >= 15, `lag of ${s.metric.project} to b over the outage: ${JSON.stringify(v)}`);
    }
  });

  it('restoring b\'s link: b\'s lag falls back below the SLO and b is scraped again', async () => {
    setLink(hostB, 'up');
    const t0 = Date.now();
    await waitFor(`lag to b < ${LOW_LAG} s for every project again`, 90_000, async () => {
      const b = await lags('b');
      const ok = projects.every((p) => (b.get(p.id) ?? Number.POSITIVE_INFINITY) < LOW_LAG);
      return { ok, value: undefined, detail: JSON.stringify([...b]) };
    });
    const recovered = (Date.now() - t0) / 1000;
    await waitFor('storage_replication_projects_over_slo{target="b"} == 0', 30_000, async () => {
      const r = await query('storage_replication_projects_over_slo{job="storage-agent", host="a", target="b"}');
      return { ok: num(r[0]) === 0, value: undefined, detail: show(r) };
    });
    await waitFor('up of b == 1', 30_000, async () => {
      const r = await query(`up{job="storage-agent", instance="${hostB.address}:${METRICS_PORT}"}`);
      return { ok: num(r[0]) === 1, value: undefined, detail: show(r) };
    });
    // c never suffered
    const c = await query(`max_over_time(storage_replication_lag_max_seconds{job="storage-agent", host="a", target="c"}[${Math.ceil(recovered) + 5}s])`);
    assert.ok(num(c[0]) < LOW_LAG, `lag to c during the recovery: ${show(c)}`);
  });

  it('every query of the Grafana dashboard is valid PromQL on the live Prometheus; lag, top-10 and throughput panels have data', async () => {
    const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
      panels: Array<{ title: string; type: string; targets?: Array<{ expr: string }> }>;
      templating: { list: Array<{ name: string; query: unknown }> };
    };
    const subst = (e: string) =>
      e
        .replaceAll('$__rate_interval', '20s')
        .replaceAll('$__interval', '2s')
        .replaceAll('$__range', '5m')
        .replace(/\$\{?(host|target)\}?/g, '.*');
    const panels = dash.panels.filter((p) => p.type !== 'row');
    assert.ok(panels.length >= 8, `dashboard has ${panels.length} panels`);
    const results = new Map<string, Sample[]>();
    for (const p of panels) {
      assert.ok(p.targets?.length, `panel "${p.title}" has queries`);
      for (const t of p.targets!) {
        assert.ok(!/\$\w/.test(subst(t.expr)), `panel "${p.title}": unknown variable in ${t.expr}`);
        try {
          results.set(p.title, [...(results.get(p.title) ?? []), ...(await query(subst(t.expr)))]);
        } catch (e) {
          assert.fail(`panel "${p.title}": ${t.expr}: ${(e as Error).message}`);
        }
      }
    }
    const has = (title: string) => {
      const r = results.get(title);
      assert.ok(r, `the dashboard has a panel "${title}"`);
      return r!;
    };
    const perTarget = has('Replication lag per target (max over projects)');
    assert.deepEqual(perTarget.map((s) => s.metric.target).sort(), ['b', 'c'], show(perTarget));
    const top = has('Top 10 lagging projects');
    assert.equal(top.length, projects.length * 2, `top-10 rows: ${show(top)}`); // 3 projects x 2 targets < 10
    const thr = has('Throughput per target');
    assert.ok(thr.some((s) => s.metric.target === 'c' && num(s) > 0), `throughput: ${show(thr)}`);
    const fail = has('Replication failures by reason');
    assert.ok(fail.some((s) => s.metric.target === 'b'), `failures by reason show the outage of b: ${show(fail)}`);
    // template variables resolve to the sandbox's hosts
    const hostVar = dash.templating.list.find((v) => v.name === 'host') as { query: { query: string } };
    const m = /^label_values\((.+), (\w+)\)$/.exec(hostVar.query.query);
    assert.ok(m, `host variable query ${hostVar.query.query}`);
    const vals = await promGet<string[]>(`/api/v1/label/${m![2]}/values?match[]=${encodeURIComponent(m![1]!)}`);
    assert.deepEqual([...vals].sort(), sb.hosts.map((h) => h.name).sort());
  });
});

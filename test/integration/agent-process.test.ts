// The daemon as systemd runs it: a real storage-agent process in host a's namespace.
// SIGTERM during a transfer aborts it cleanly (the replica stays at its previous
// snapshot, nothing half-received); SIGHUP reloads the configuration, and a bad file
// keeps the old one.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { randomBytes, randomUUID } from 'node:crypto';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { sandbox, host, scaled, setReceiverCatalog } from '../lib/sandbox.js';
import { SqliteCatalog } from '../../src/catalog/sqlite.js';
import { Zfs } from '../../src/zfs/index.js';
import { sleep } from '../lib/fleet.js';

const sb = sandbox();
const A = host(sb, 'a');
const B = host(sb, 'b');
const zfs = new Zfs();
const catalogPath = `${sb.dir}/catalog-proc-${randomUUID().slice(0, 8)}.db`;
const configPath = `${A.dir}/agent-proc.yaml`;
const logPath = `${A.dir}/agent-proc.log`;
let catalog: SqliteCatalog;
let agent: ChildProcess | undefined;
let output = '';

function writeConfig(extra: string): void {
  const doc = parseYaml(readFileSync(`${A.dir}/agent.yaml`, 'utf8')) as Record<string, unknown>;
  doc.catalog = { backend: 'sqlite', path: catalogPath };
  doc.interval = '2s';
  doc.metrics = { ...(doc.metrics as object), listen: `${A.address}:9565` };
  writeFileSync(configPath, stringifyYaml(doc) + extra);
  setReceiverCatalog(sb.hosts, { backend: 'sqlite', path: catalogPath });
}

function startAgent(): ChildProcess {
  output = '';
  const p = spawn('nsenter', [`--net=/run/netns/${A.netns}`, 'node', `${sb.repo}/bin/storage-agent`, '--config', configPath, '--shutdown-grace', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
  p.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  p.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  return p;
}

async function waitFor(what: string, fn: () => boolean | Promise<boolean>, unscaledMs = 30_000): Promise<void> {
  const ms = scaled(unscaledMs);
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await fn()) return;
    await sleep(200);
  }
  writeFileSync(logPath, output);
  throw new Error(`timed out after ${ms} ms waiting for ${what}; agent output in ${logPath}`);
}

before(() => {
  catalog = new SqliteCatalog(catalogPath);
});

after(async () => {
  agent?.kill('SIGKILL');
  await catalog.close();
});

describe('storage-agent process', () => {
  const id = randomUUID();
  const ds = `${A.pool}/projects/${id}`;

  it('SIGTERM during a transfer aborts it cleanly: the replica keeps its previous snapshot', async () => {
    // slow transfers: 2 MB/s, so a 24 MB delta takes ~12 s
    writeConfig('');
    writeFileSync(configPath, readFileSync(configPath, 'utf8').replace('  stallTimeout: 30s', '  stallTimeout: 30s\n  bandwidthLimit: 2000000'));
    // the layout the agent's init() makes (this file may run before any other)
    if (!(await zfs.exists(`${A.pool}/projects`))) await zfs.create(`${A.pool}/projects`, { mountpoint: A.mountBase, canmount: 'off' });
    await zfs.create(ds, { canmount: 'noauto' });
    await catalog.createProject({ id, primary: 'a', replicationFactor: 1, quota: null });
    await catalog.upsertHost({ id: 'a', datacenter: A.datacenter, address: A.address, port: 22, root: `${A.pool}/replicas` });
    await catalog.upsertHost({ id: 'b', datacenter: B.datacenter, address: B.address, port: 22, root: `${B.pool}/replicas` });
    await catalog.setTargets(id, ['b']);
    await zfs.mount(ds);
    writeFileSync(`${A.mountBase}/${id}/small`, 'first');
    agent = startAgent();
    await waitFor('the first replica', async () => (await catalog.listReplicas(id)).length === 1);
    const first = (await catalog.listReplicas(id))[0]!;
    // the agent is paused while the big file is written: a cycle must not snapshot a
    // half-written file (a slow machine would then send a small delta in time)
    agent.kill('SIGSTOP');
    writeFileSync(`${A.mountBase}/${id}/big.bin`, randomBytes(24 * 2 ** 20));
    agent.kill('SIGCONT');
    // the snapshot that holds the big file (on a slow machine a small one may come first)
    let big: { guid: string } | undefined;
    await waitFor('a snapshot with the big file on the source', async () => {
      big = (await zfs.list(ds)).get(ds)?.snapshots.find((s) => s.referenced >= 24 * 2 ** 20);
      return big !== undefined;
    });
    await sleep(2500); // the transfer is under way
    const t0 = Date.now();
    agent.kill('SIGTERM');
    const code = await new Promise<number | null>((r) => agent!.once('exit', (c) => r(c)));
    const stopMs = Date.now() - t0;
    assert.equal(code, 0, output.slice(-2000));
    assert.ok(stopMs < scaled(10_000), `stopped in ${stopMs} ms`);
    assert.match(output, /aborting running transfers|cycle done/);
    // the replica on b is exactly at the first snapshot, and b has no partial dataset
    const rds = `${B.pool}/replicas/${id}`;
    const r = (await zfs.list(rds)).get(rds)!;
    const confirmed = (await catalog.listReplicas(id))[0]!.guid;
    assert.ok(!r.snapshots.some((s) => s.guid === big!.guid), 'the interrupted snapshot must not be on the replica');
    assert.equal(r.snapshots.at(-1)!.guid, confirmed, 'replica must stay at its previous (confirmed) snapshot');
    assert.ok(r.snapshots.some((s) => s.guid === first.guid));
  });

  it('SIGHUP reloads the configuration; a bad file is refused and the old one kept', async () => {
    writeConfig('');
    agent = startAgent();
    await waitFor('the agent to start', () => /storage-agent started/.test(output));
    writeFileSync(configPath, readFileSync(configPath, 'utf8').replace('interval: 2s', 'interval: 3s'));
    agent.kill('SIGHUP');
    await waitFor('a reload', () => /configuration reloaded/.test(output));
    writeFileSync(configPath, 'host: [broken');
    agent.kill('SIGHUP');
    await waitFor('the refused reload', () => /reload failed; keeping the previous configuration/.test(output));
    const cycles = (output.match(/cycle done/g) ?? []).length;
    await waitFor('another cycle after the refused reload', () => (output.match(/cycle done/g) ?? []).length > cycles, 15_000);
    agent.kill('SIGTERM');
    assert.equal(await new Promise<number | null>((r) => agent!.once('exit', (c) => r(c))), 0);
  });
});

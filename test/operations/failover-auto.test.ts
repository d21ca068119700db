// Failover with real agent processes in `failover: auto` mode on three namespace hosts.
// The primary's agent is killed (SIGKILL) and its link taken down: the replica hosts see
// its heartbeat stop and one of them promotes the freshest replica. The old primary's
// agent is then restarted (as systemd's Restart= does) while still cut off: it demotes
// itself, keeping what was written during the partition under a conflict name; then its
// link comes back. A sampler lists every pool every 250 ms throughout.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { writeFileSync, readFileSync } from 'node:fs';
import { sandbox, host, treeChecksum, scaled, TIME_SCALE } from '../lib/sandbox.js';
import { AgentProcess, dumpAgents, MountSampler, waitFor, writeAgentConfig } from '../lib/procs.js';
import { SqliteCatalog } from '../../src/catalog/sqlite.js';
import { Zfs } from '../../src/zfs/index.js';

const sb = sandbox();
const A = host(sb, 'a');
const zfs = new Zfs();
const catalogPath = `${sb.dir}/catalog-auto-${randomUUID().slice(0, 8)}.db`;
let catalog: SqliteCatalog;
const agents = new Map<string, AgentProcess>();
const linkDown = new Set<string>();
const link = (h: string, state: 'up' | 'down') => {
  spawnSync('ip', ['-n', host(sb, h).netns, 'link', 'set', 'eth0', state]);
  if (state === 'down') linkDown.add(h);
  else linkDown.delete(h);
};
// under emulation (openzfs tier) everything is slower: the dead-host period scales too.
// config check enforces after > selfFenceAfter + fenceCheck + maxClockSkew + 5 s (the
// self-fence bound, which a failover that cannot reach the old primary also waits)
const extra = `failover:\n  mode: auto\n  after: ${11 * TIME_SCALE}s\n  selfFenceAfter: ${3 * TIME_SCALE}s\n  fenceCheck: 1s\n  maxClockSkew: 1s\n`;

/** The agents' logs next to the sandbox (and in the VM tier's results); their tails on stdout. */
function dumpAll(tails = true): void {
  dumpAgents(sb, agents, 'agent-auto', tails ? 8 : 0);
}

before(async () => {
  catalog = new SqliteCatalog(catalogPath);
  let port = 9581;
  for (const h of sb.hosts) {
    const cfg = writeAgentConfig(h, 'agent-auto', { catalogPath, metricsPort: port++, extra, interval: `${2 * TIME_SCALE}s` });
    // a dead peer should cost seconds, not the default 10 s connect timeout
    writeFileSync(cfg, readFileSync(cfg, 'utf8').replace('  stallTimeout: 30s', '  stallTimeout: 30s\n  connectTimeout: 3s'));
    agents.set(h.name, new AgentProcess(sb, h, cfg));
  }
});

after(async () => {
  link('a', 'up');
  for (const a of agents.values()) await a.kill();
  dumpAll(false); // the agents' logs stay next to the sandbox for a post-mortem
  await catalog.close();
});

describe('failover: auto, with agent processes', () => {
  it('kill + partition the primary: mounted on the freshest replica within 30 s; the old primary demotes itself, keeps its writes aside; never two writable primaries', async () => {
    for (const a of agents.values()) a.start();
    const id = randomUUID();
    const ds = `${A.pool}/projects/${id}`;
    const mnt = `${A.mountBase}/${id}`;
    await waitFor('the three agents registered', async () => (await catalog.listHosts()).filter((h) => h.heartbeatAt !== null).length === 3, scaled(30_000), dumpAll);
    await zfs.create(ds, { canmount: 'noauto' });
    await catalog.createProject({ id, primary: 'a', replicationFactor: 2, quota: null });
    await zfs.mount(ds);
    writeFileSync(`${mnt}/data.bin`, randomBytes(200_000));
    writeFileSync(`${mnt}/notes.txt`, 'replicated before the failure');
    const sum = treeChecksum(mnt);
    // both replicas confirmed at a snapshot taken after the writes (the files do not
    // change afterwards; on a slow host the agent may already be a snapshot further)
    await waitFor(
      'two replicas confirmed at a snapshot taken after the writes',
      async () => {
        const after = new Set(((await zfs.list(ds, { depth: 0 })).get(ds)?.snapshots ?? []).filter((x) => x.referenced >= 200_000).map((x) => x.guid));
        const reps = await catalog.listReplicas(id);
        return reps.length === 2 && reps.every((r) => after.has(r.guid));
      },
      scaled(60_000),
      dumpAll,
    );

    const sampler = new MountSampler(sb, id, () => new Set(sb.hosts.map((h) => h.name).filter((h) => !linkDown.has(h)))).start();
    try {
      await agents.get('a')!.kill();
      link('a', 'down');
      const t0 = Date.now();
      // a local process on a keeps writing during the partition: divergent data
      writeFileSync(`${mnt}/after-partition.txt`, 'written on a while cut off');

      let to = '';
      const ms = await waitFor(
        'the project mounted on a replica host',
        async () => {
          for (const h of ['b', 'c']) {
            const d = `${host(sb, h).pool}/projects/${id}`;
            if ((await zfs.exists(d)) && (await zfs.get(d, ['mounted'])).mounted === 'yes') {
              to = h;
              return true;
            }
          }
          return false;
        },
        scaled(30_000),
        dumpAll,
      );
      process.stdout.write(`# auto failover: agent of a killed + link down -> mounted on ${to} after ${ms} ms (limit ${scaled(30_000)})\n`);
      assert.ok(Date.now() - t0 < scaled(30_000));
      const newDs = `${host(sb, to).pool}/projects/${id}`;
      const props = await zfs.get(newDs, ['readonly', 'mountpoint']);
      assert.equal(props.readonly, 'off');
      assert.equal(treeChecksum(props.mountpoint!), sum, 'content equals the last replicated snapshot');
      await waitFor(
        'the catalog names the new primary, active',
        async () => {
          const p = await catalog.getProject(id);
          return p?.primary === to && p.state === 'active';
        },
        scaled(30_000),
      );
      const ev = (await catalog.listEvents({ project: id })).find((e) => e.kind === 'failover');
      assert.ok(ev, 'a failover event');
      assert.match(ev.detail, /data-loss window up to \d+s/);

      // systemd restarts a's agent; a is still cut off from the other hosts
      agents.get('a')!.start();
      await waitFor('a demoted itself (its copy moved aside)', async () => !(await zfs.exists(ds)), scaled(30_000), dumpAll);
      link('a', 'up');
      await new Promise((r) => setTimeout(r, 3000)); // a few samples with every link up
    } finally {
      sampler.stop();
    }
    const worst = sampler.maxReachableWritable();
    process.stdout.write(`# sampler: ${sampler.samples.length} samples; most writable mounts on reachable hosts at once: ${worst.max}; including the partitioned host: ${sampler.maxWritable()}\n`);
    assert.ok(sampler.samples.length >= 10, `the sampler ran (${sampler.samples.length} samples)`);
    assert.ok(worst.max <= 1, `two writable primaries at ${worst.at}: ${worst.hosts?.join(', ')}`);
    // what a wrote while cut off is intact under <pool>/conflicts
    const aside = [...(await zfs.list(`${A.pool}/conflicts`, { depth: 1 })).keys()].find((n) => n.includes(id));
    assert.ok(aside, 'kept under <pool>/conflicts');
    await zfs.set(aside, { mountpoint: `${A.mountBase}/auto-conflict-check` });
    await zfs.mount(aside);
    try {
      assert.equal(readFileSync(`${A.mountBase}/auto-conflict-check/after-partition.txt`, 'utf8'), 'written on a while cut off');
    } finally {
      await zfs.unmount(aside);
      await zfs.set(aside, { mountpoint: 'none' });
    }
    const conflicts = JSON.parse(spawnSync('nsenter', [`--net=/run/netns/${A.netns}`, `${sb.repo}/bin/storagectl`, '--config', `${A.dir}/agent-auto.yaml`, 'conflicts', '--json'], { encoding: 'utf8' }).stdout) as { conflicts: Array<{ project: string }> };
    assert.ok(conflicts.conflicts.some((x) => x.project === id), 'storagectl conflicts lists it');
    const status = JSON.parse(spawnSync('nsenter', [`--net=/run/netns/${A.netns}`, `${sb.repo}/bin/storagectl`, '--config', `${A.dir}/agent-auto.yaml`, 'status', '--json', '--project', id], { encoding: 'utf8' }).stdout) as { conflicts: Array<{ project: string; host: string; dataset: string }> };
    assert.deepEqual(status.conflicts.map((x) => [x.project, x.host, x.dataset]), [[id, 'a', aside]], 'storagectl status lists it');
  });
});

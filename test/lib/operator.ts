// A fleet driven as an operator would (storagectl processes), for the fencing and crash
// tests: one catalog, an agent config per host, and the questions those tests ask after
// every step (where is the project writable? what does its catalog row say?).
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { host, treeChecksum, type Sandbox, type SandboxHost } from './sandbox.js';
import { startFleet, createProject, cycleAll, sleep, type Fleet } from './fleet.js';
import { storagectl, writeAgentConfig } from './procs.js';

/** seconds: a crashed operator's lease runs out quickly */
export const LEASE = 6;

export interface OperatorFleet {
  fleet: Fleet;
  /** host name -> its agent configuration file (the catalog of this suite) */
  cfg: Map<string, string>;
  /** processes the tests started, killed after the suite */
  children: ChildProcess[];
  /** where the project is mounted writable (mounted=yes, readonly=off), over every host's pool */
  writableOn(id: string): Promise<string[]>;
  /** a project on a with these files, replicated by one round of cycles; sum: its tree checksum */
  replicated(files: Record<string, Buffer | string>): Promise<{ id: string; dataset: string; mnt: string; sum: string }>;
  /** storagectl on host h, again while a crashed holder's lease has not run out yet */
  rerun(h: SandboxHost, args: string[]): Promise<{ code: number; stdout: string; stderr: string }>;
  /** the catalog row's location and operation */
  servedBy(id: string): Promise<{ primary: string | null; state: string; operation: unknown }>;
}

/** Registers before/after hooks for the suite; the fields are usable inside its tests. */
export function operatorFleet(sb: Sandbox, tag: string, firstPort: number): OperatorFleet {
  const catalogPath = `${sb.dir}/catalog-${tag}-${randomUUID().slice(0, 8)}.db`;
  const o = { cfg: new Map<string, string>(), children: [] as ChildProcess[] } as OperatorFleet;
  before(async () => {
    o.fleet = await startFleet(sb, catalogPath);
    let port = firstPort;
    for (const h of sb.hosts) o.cfg.set(h.name, writeAgentConfig(h, `agent-${tag}`, { catalogPath, metricsPort: port++ }));
  });
  after(async () => {
    for (const c of o.children) c.kill('SIGKILL');
    await o.fleet?.close();
  });
  o.writableOn = async (id) => {
    const out: string[] = [];
    for (const h of sb.hosts) {
      const d = `${h.pool}/projects/${id}`;
      if (!(await o.fleet.zfs.exists(d))) continue;
      const p = await o.fleet.zfs.get(d, ['mounted', 'readonly']);
      if (p.mounted === 'yes' && p.readonly === 'off') out.push(h.name);
    }
    return out;
  };
  o.replicated = async (files) => {
    const p = await createProject(o.fleet, host(sb, 'a'), { files });
    const sum = treeChecksum(p.mnt);
    const r = await cycleAll(o.fleet);
    assert.deepEqual(r.get('a')!.failures, []);
    return { ...p, sum };
  };
  o.rerun = async (h, args) => {
    for (let i = 0; ; i++) {
      // no agent daemons here: the test heartbeats for them, or a slow wait for the lease
      // would make the hosts look dead to the re-run (as it did on a loaded machine)
      for (const x of sb.hosts) await o.fleet.catalog.heartbeat(x.name, 0);
      const r = await storagectl(sb, h, o.cfg.get(h.name)!, args);
      if (!(r.code === 2 && /locked by/.test(r.stderr)) || i > 20) return r;
      await sleep(1000);
    }
  };
  o.servedBy = async (id) => {
    const p = (await o.fleet.catalog.getProject(id))!;
    return { primary: p.primary, state: p.state, operation: p.operation };
  };
  return o;
}

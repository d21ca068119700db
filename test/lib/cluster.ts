// The three-datacenter Cassandra cluster of the cassandra-cluster tier: one node per
// sandbox host, in that host's network namespace (test/env/cassandra/cluster.sh).
// A cluster that is not up FAILS the tier's files (the first test of each): never a skip.
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import type { Sandbox, SandboxHost } from './sandbox.js';
import type { CassandraCatalogOptions } from '../../src/catalog/cassandra.js';

export const CQL_PORT = 9042;

/** host:port of every node, the host's datacenter first when `first` is given */
export function contactPoints(sb: Sandbox, first?: string): string[] {
  const hs = [...sb.hosts].sort((x, y) => Number(y.datacenter === first) - Number(x.datacenter === first));
  return hs.map((h) => `${h.address}:${CQL_PORT}`);
}

export function nodeOf(sb: Sandbox, dc: string): SandboxHost {
  const h = sb.hosts.find((x) => x.datacenter === dc);
  if (!h) throw new Error(`no sandbox host in datacenter ${dc}`);
  return h;
}

/** NetworkTopologyStrategy with one replica in each sandbox datacenter. */
export function clusterReplication(sb: Sandbox): Record<string, number> {
  return Object.fromEntries(sb.hosts.map((h) => [h.datacenter, 1]));
}

export function clusterOptions(sb: Sandbox, dc: string, keyspace: string, extra: Partial<CassandraCatalogOptions> = {}): CassandraCatalogOptions {
  return {
    contactPoints: contactPoints(sb, dc),
    localDataCenter: dc,
    keyspace,
    replication: { class: 'NetworkTopologyStrategy', datacenters: clusterReplication(sb) },
    connectTimeoutMs: 3000,
    requestTimeoutMs: 6000,
    ...extra,
  };
}

/** test/env/cassandra/cluster.sh <args>; throws with its stderr on failure. */
export function clusterCtl(sb: Sandbox, ...args: string[]): string {
  const r = spawnSync('bash', [`${sb.repo}/test/env/cassandra/cluster.sh`, ...args], { encoding: 'utf8', env: { ...process.env }, timeout: 400_000 });
  if (r.status !== 0) throw new Error(`cluster.sh ${args.join(' ')} failed (exit ${r.status}): ${(r.stderr ?? '').slice(-3000)}`);
  return r.stdout;
}

/**
 * TCP sockets of this process to a CQL port (any state a descriptor still holds), from
 * /proc/self/fd (socket inodes) and /proc/self/net/tcp (this network namespace's table).
 */
export function cqlSockets(port = CQL_PORT): number {
  const inodes = new Set<string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {
      /* closed meanwhile */
    }
  }
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  let n = 0;
  for (const table of ['/proc/self/net/tcp', '/proc/self/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      const remotePort = f[2]!.split(':')[1];
      // any state, as long as one of this process's descriptors still holds it (connecting,
      // established, or half-closed and never closed by the driver)
      if (remotePort === hexPort && inodes.has(f[9]!)) n++;
    }
  }
  return n;
}

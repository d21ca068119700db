// One host's replica listing over SSH (`storage-v1 list`), parsed and validated: used by
// the agent's cycle, failover, repair-catalog and `storagectl snapshots`.
import type { SshPool } from './transport.js';
import { checkListing, formatRemoteCommand, LIST_MAX, PROTOCOL, type RemoteListing } from './protocol.js';

export interface ListedHost {
  id: string;
  address: string;
  port: number;
}

/**
 * The host's replicas of the named projects, asked in batches of LIST_MAX per round trip
 * (a receiver answers a peer only about the peer's own projects: trust-model.md).
 */
export async function fetchListing(ssh: SshPool, h: ListedHost, opts: { timeoutSeconds?: number; projects: readonly string[]; stats?: { bytes: number; roundTrips: number } }): Promise<RemoteListing> {
  const merged: RemoteListing = { protocol: PROTOCOL, host: h.id, implementation: '', datasets: {} };
  for (let i = 0; i < opts.projects.length; i += LIST_MAX) {
    const part = await fetchOne(ssh, h, opts.projects.slice(i, i + LIST_MAX), opts);
    merged.implementation = part.implementation;
    const asked = new Set(opts.projects.slice(i, i + LIST_MAX));
    for (const [id, ds] of Object.entries(part.datasets)) {
      if (!asked.has(id)) throw new Error(`listing of ${h.id} answered for project ${id}, which was not asked for`);
      merged.datasets[id] = ds;
    }
  }
  return merged;
}

async function fetchOne(ssh: SshPool, h: ListedHost, projects: string[], opts: { timeoutSeconds?: number; stats?: { bytes: number; roundTrips: number } }): Promise<RemoteListing> {
  const r = await ssh.get({ host: h.id, address: h.address, port: h.port }).exec(formatRemoteCommand({ op: 'list', projects }), { timeoutSeconds: opts.timeoutSeconds });
  if (opts.stats) {
    opts.stats.roundTrips++;
    opts.stats.bytes += Buffer.byteLength(r.stdout);
  }
  if (r.code !== 0) throw new Error(`listing of ${h.id} failed (exit ${r.code}): ${r.stderr.trim() || '(no stderr)'}`);
  let raw: unknown;
  try {
    raw = JSON.parse(r.stdout);
  } catch {
    throw new Error(`listing of ${h.id} is not JSON: ${JSON.stringify(r.stdout.slice(0, 200))}`);
  }
  return checkListing(raw, h.id);
}

// Where a move goes when the admin names no host (pure). A move to a host that already
// holds a confirmed replica sends only the final delta, so such a host is chosen first:
// a live host, not draining, not the primary, in another datacenter than the primary's,
// holding a confirmed replica; ties to the least loaded (planned moves counted), then the
// host id. With none, the least-loaded live host in the allowed datacenters (a full send).
import type { HostRecord, ReplicaRecord } from '../catalog/types.js';

export interface DestinationInput {
  primary: HostRecord;
  hosts: readonly HostRecord[];
  isLive: (h: HostRecord) => boolean;
  /** the project's replica rows (confirmed replicas) */
  replicas: readonly ReplicaRecord[];
  /** only these datacenters (storagectl drain --to-datacenter); default: any */
  datacenters?: readonly string[];
  /** moves already planned to a host in this round (drain), counted as load */
  planned?: ReadonlyMap<string, number>;
}

export type DestinationChoice =
  | { host: string; reason: 'holds-replica'; snapshot: string }
  | { host: string; reason: 'least-loaded' }
  | { host: null; why: string };

export function chooseDestination(p: DestinationInput): DestinationChoice {
  const load = (h: HostRecord) => h.load + (p.planned?.get(h.id) ?? 0);
  const byLoad = (a: HostRecord, b: HostRecord) => load(a) - load(b) || a.id.localeCompare(b.id);
  const skipped: string[] = [];
  const candidates = p.hosts.filter((h) => {
    if (h.id === p.primary.id) return false;
    const why = !p.isLive(h) ? 'not live' : h.draining ? 'draining' : p.datacenters && !p.datacenters.includes(h.datacenter) ? `datacenter ${h.datacenter} not allowed` : '';
    if (why) skipped.push(`${h.id}: ${why}`);
    return !why;
  });
  const replicaOn = new Map(p.replicas.map((r) => [r.host, r]));
  const holders = candidates.filter((h) => replicaOn.has(h.id) && h.datacenter !== p.primary.datacenter).sort(byLoad);
  if (holders.length) return { host: holders[0]!.id, reason: 'holds-replica', snapshot: replicaOn.get(holders[0]!.id)!.snapshot };
  const any = [...candidates].sort(byLoad);
  if (any.length) return { host: any[0]!.id, reason: 'least-loaded' };
  return { host: null, why: `no host can take it (${skipped.length ? skipped.join('; ') : 'no other host in the catalog'})` };
}

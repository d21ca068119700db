// Placement (pure): which hosts should hold a project's missing replicas.
// Other datacenters first (one replica per datacenter while possible), then least loaded,
// then host id for determinism. Only live hosts are chosen.
import type { HostRecord } from '../catalog/types.js';

export interface PlacementInput {
  primary: HostRecord;
  current: string[];
  factor: number;
  hosts: HostRecord[];
  isLive: (h: HostRecord) => boolean;
  /** extra load already planned this round (host id -> count) */
  planned?: Map<string, number>;
}

export function placeReplicas(p: PlacementInput): string[] {
  const chosen = p.current.filter((id) => id !== p.primary.id);
  const usedDcs = new Set<string>([p.primary.datacenter]);
  const byId = new Map(p.hosts.map((h) => [h.id, h]));
  for (const id of chosen) {
    const h = byId.get(id);
    if (h) usedDcs.add(h.datacenter);
  }
  const load = (h: HostRecord) => h.load + (p.planned?.get(h.id) ?? 0);
  while (chosen.length < p.factor) {
    const candidates = p.hosts.filter((h) => h.id !== p.primary.id && !chosen.includes(h.id) && p.isLive(h));
    if (candidates.length === 0) break;
    candidates.sort((a, b) => {
      const da = usedDcs.has(a.datacenter) ? 1 : 0;
      const db = usedDcs.has(b.datacenter) ? 1 : 0;
      return da - db || load(a) - load(b) || a.id.localeCompare(b.id);
    });
    const pick = candidates[0]!;
    chosen.push(pick.id);
    usedDcs.add(pick.datacenter);
    p.planned?.set(pick.id, (p.planned.get(pick.id) ?? 0) + 1);
  }
  return chosen;
}

// Placement (pure): which hosts should hold a project's missing replicas.
// Other datacenters first (one replica per datacenter while possible), then least loaded,
// then host id for determinism. Only live hosts that are not draining are chosen.
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
    const candidates = p.hosts.filter((h) => h.id !== p.primary.id && !chosen.includes(h.id) && !h.draining && p.isLive(h));
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

export interface HealInput {
  primary: HostRecord;
  targets: string[];
  factor: number;
  hosts: HostRecord[];
  /** ms since epoch, for judging how long a target has been dead */
  now: number;
  /** a target without a heartbeat for this long is replaced */
  replaceAfterMs: number;
  /** a host is live (may receive a new replica) */
  isLive: (h: HostRecord) => boolean;
  /** targets whose replica this primary has confirmed (a listing showed its snapshot) */
  confirmed: ReadonlySet<string>;
  planned?: Map<string, number>;
}

export interface HealDecision {
  targets: string[];
  /** hosts added in place of dead targets */
  added: string[];
  /** dead targets taken off the list: only once enough others hold confirmed replicas */
  released: string[];
}

/**
 * A target that is to be replaced: dead for replaceAfterMs (no heartbeat, or a host the
 * catalog does not know), or draining (storagectl drain).
 */
export function leavingTarget(hosts: readonly HostRecord[], now: number, replaceAfterMs: number): (id: string) => boolean {
  const byId = new Map(hosts.map((h) => [h.id, h]));
  return (id) => {
    const h = byId.get(id);
    return !h || h.draining || h.heartbeatAt === null || now - h.heartbeatAt > replaceAfterMs;
  };
}

/**
 * Placement that heals (pure): a leaving target (leavingTarget: dead for replaceAfterMs,
 * unknown, or draining) gets a replacement on a live host (another datacenter first),
 * added NEXT to it: the leaving one stays a target, so its replica keeps counting, until
 * at least `factor` other targets hold confirmed replicas; only then is it released from
 * the list (its data is never destroyed: the host keeps the dataset). Missing targets
 * (fewer than factor) are placed as before.
 */
export function healTargets(p: HealInput): HealDecision {
  const leaving = leavingTarget(p.hosts, p.now, p.replaceAfterMs);
  const targets = p.targets.filter((t) => t !== p.primary.id);
  const dead = targets.filter(leaving);
  const healthy = targets.filter((t) => !leaving(t));
  // enough healthy targets: the dead ones go once the healthy ones hold confirmed replicas
  const want = placeReplicas({ primary: p.primary, current: healthy, factor: p.factor, hosts: p.hosts.filter((h) => !dead.includes(h.id)), isLive: p.isLive, planned: p.planned });
  const added = want.filter((t) => !targets.includes(t));
  const confirmedHealthy = healthy.filter((t) => p.confirmed.has(t)).length;
  const released = confirmedHealthy >= p.factor ? dead : [];
  const next = [...targets.filter((t) => !released.includes(t)), ...added];
  return { targets: next, added, released };
}

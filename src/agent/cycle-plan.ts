// The cycle's decisions, as pure functions over what the agent knows (its state cache,
// the catalog's view, the dirty set): which datasets to list, which (project, target)
// pairs to ask a target about, and what to do for each pair. No zfs, ssh or catalog call
// here: the agent (agent.ts) performs what these return, and unit tests check them with
// plain values. The per-pair decision itself is the replication planner (replica/plan.ts).
import { planReplication, type Plan, type SnapRef } from '../replica/plan.js';
import type { Snap, RemoteView } from './state.js';

/** What the cache says of one (project, target) pair. */
export interface PairKnowledge {
  project: string;
  target: string;
  /** the source's newest snapshot (undefined: none yet) */
  localNewest: Snap | undefined;
  /** undefined: never listed; else the target's newest (undefined: none), whether a partial receive waits, and whether a send to it failed since (stale) */
  remote: { newest: Snap | undefined; resumable: boolean; stale?: boolean } | undefined;
  /** the source's newest guid when a conflict was last reported for this pair */
  conflictAt?: string;
}

export type PairAction = 'in-sync' | 'list-target' | 'plan' | 'conflict-pending' | 'no-source-snapshot';

/**
 * The action for one pair, from the cache alone: in sync (the target holds the source's
 * newest snapshot and nothing partial waits) costs nothing; an unknown target state is
 * listed first, and so is one a send failed to since; a conflict is not re-planned until
 * the source moves on or the audit re-lists the pair.
 */
export function pairAction(k: PairKnowledge): PairAction {
  if (!k.localNewest) return 'no-source-snapshot';
  if (!k.remote || k.remote.stale) return 'list-target';
  if (!k.remote.resumable && k.remote.newest?.guid === k.localNewest.guid) return 'in-sync';
  if (k.conflictAt === k.localNewest.guid) return 'conflict-pending';
  return 'plan';
}

export interface PairInput {
  project: string;
  target: string;
  /** the source's snapshots, oldest first */
  source: readonly Snap[];
  /** what the target holds (null: no such dataset there) */
  remote: RemoteView | null;
}

export type PairDecision =
  | { project: string; target: string; kind: 'send'; plan: Exclude<Plan, { kind: 'up-to-date' | 'nothing-to-send' | 'conflict' }>; baseSnap?: string; toSnap?: SnapRef; lagSec: number }
  | { project: string; target: string; kind: 'confirm'; at: SnapRef }
  | { project: string; target: string; kind: 'conflict'; plan: Extract<Plan, { kind: 'conflict' }> }
  | { project: string; target: string; kind: 'nothing' };

/** The planner for each pair, plus what the agent needs to act (base to release, lag to order by). */
export function decidePairs(pairs: readonly PairInput[], nowSec: number): PairDecision[] {
  return pairs.map((p) => {
    const plan = planReplication({ source: [...p.source], target: p.remote ? p.remote.snapshots : null, targetResumeToken: p.remote?.resumeToken });
    const base = { project: p.project, target: p.target };
    switch (plan.kind) {
      case 'nothing-to-send':
        return { ...base, kind: 'nothing' };
      case 'up-to-date':
        return { ...base, kind: 'confirm', at: plan.at };
      case 'conflict':
        return { ...base, kind: 'conflict', plan };
      default: {
        const snaps = p.remote?.snapshots ?? [];
        const newestRemote = snaps.length ? snaps.reduce((a, s) => (s.createtxg > a.createtxg ? s : a)).creation : 0;
        const lagSec = newestRemote ? Math.max(0, nowSec - newestRemote) : Number.POSITIVE_INFINITY;
        const baseSnap = plan.kind === 'incremental' ? plan.from.snap : plan.kind === 'resume' ? newestShared(p.source, snaps)?.snap : undefined;
        const toSnap = plan.kind === 'full' || plan.kind === 'incremental' ? plan.to : undefined;
        return { ...base, kind: 'send', plan, baseSnap, toSnap, lagSec };
      }
    }
  });
}

/** The source's snapshot that is the target's newest one the source also has (by guid). */
export function newestShared(source: readonly SnapRef[], target: readonly SnapRef[]): SnapRef | undefined {
  const byGuid = new Map(source.map((s) => [s.guid, s]));
  let best: SnapRef | undefined;
  let bestTxg = -Infinity;
  for (const t of target) {
    if (byGuid.has(t.guid) && t.createtxg > bestTxg) {
      best = byGuid.get(t.guid);
      bestTxg = t.createtxg;
    }
  }
  return best;
}

/** The audit slice: the `count` datasets listed longest ago (never listed first). */
export function auditSlice(listedAt: ReadonlyMap<string, number>, opts: { count: number }): string[] {
  if (opts.count <= 0) return [];
  return [...listedAt]
    .sort((a, b) => a[1] - b[1] || (a[0] < b[0] ? -1 : 1))
    .slice(0, opts.count)
    .map(([d]) => d);
}

/**
 * Replication freshness (the one definition of lag, for the metric and `storagectl
 * status`): the time up to which the target has the project's data. When the target holds
 * the source's newest snapshot and the source has not changed since, that is the last
 * time the target was seen up (`targetSeenAt`; now when not given): the agent's evidence
 * is its kept-alive SSH connection (the last bytes received) or its last listing, status's
 * the host's heartbeat. Otherwise it is the creation of the newest snapshot the target
 * holds (null: it holds none). lag = now - freshness.
 */
export function freshnessAsOf(o: { nowSec: number; sourceNewestGuid: string | undefined; sourceChanged: boolean; targetNewest: { guid: string; creation: number } | undefined; targetSeenAt?: number }): number | null {
  if (!o.targetNewest) return null;
  if (!o.sourceChanged && o.sourceNewestGuid !== undefined && o.targetNewest.guid === o.sourceNewestGuid) {
    return Math.max(o.targetNewest.creation, Math.min(o.nowSec, o.targetSeenAt ?? o.nowSec));
  }
  return o.targetNewest.creation;
}

/**
 * Why a resume token from a target must not be used (undefined: it may): a token is the
 * target's word, and names what `zfs send -t` will read on this host. Only a snapshot of
 * the project's own dataset, with the guid this host knows for it, is sent.
 */
export function resumeTokenProblem(decoded: { toname: string; toguid: string }, dataset: string, local: ReadonlyArray<{ snap: string; guid: string }>): string | undefined {
  const at = decoded.toname.indexOf('@');
  const ds = at < 0 ? decoded.toname : decoded.toname.slice(0, at);
  if (ds !== dataset) return `the resume token names ${JSON.stringify(decoded.toname.slice(0, 200))}, not a snapshot of ${dataset}`;
  const snap = local.find((s) => s.snap === decoded.toname.slice(at + 1));
  if (!snap) return `the resume token names ${decoded.toname}, which this host does not have`;
  if (snap.guid !== decoded.toguid) return `the resume token names ${decoded.toname} with guid ${decoded.toguid}, but that snapshot's guid is ${snap.guid}`;
  return undefined;
}

// Grid retention: which automatic snapshots to destroy. Pure: the caller passes the
// listing, the policy, the time and the protected names, and gets back a decision
// with a reason for every snapshot. Used for primaries and replicas alike.
//
// A policy is a list of rules ordered by `for` ascending. A snapshot of age A
// (now - creation) falls under the first rule with A < for; `every: 'all'` keeps
// everything under that rule, otherwise time is cut into buckets of `every` seconds
// (Math.floor(creation / every), aligned to the epoch so buckets never move) and the
// OLDEST snapshot of each bucket is kept. Keeping the oldest makes the choice stable:
// as time passes, a kept snapshot stays the oldest of its bucket, so a snapshot kept
// once is not swapped for a newer one later. Snapshots older than the last rule's
// `for` are destroyed.
//
// Never destroyed, whatever the grid says:
//   - named snapshots (not in the automatic name format)      'named'
//   - snapshots with user holds (userrefs > 0)                 'held'
//   - names in `protect` (replicas' newest / incremental bases) 'protected: replica base'
//   - the newest snapshot of the dataset                       'newest'
//   - snapshots dated in the future (clock skew)               'future-dated'
//   - snapshots whose creation is not a number                 'creation unknown'
// Protected snapshots do not occupy grid buckets: the grid is applied to the rest.

import { parseAutoSnapshotName } from '../util/validate.js';

export interface GridRule {
  /** seconds: applies to snapshots younger than this */
  for: number;
  /** seconds bucket width, or keep all */
  every: number | 'all';
}

/** ordered by `for` ascending */
export type GridPolicy = GridRule[];

const UNIT: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400, w: 7 * 86400 };
const DURATION_RE = /^([0-9]+)([smhdw])$/;

/** '90s', '15m', '1h', '48h', '30d', '26w' -> seconds. Positive integers only. */
export function parseDuration(s: string): number {
  const shown = typeof s === 'string' ? JSON.stringify(s.length > 40 ? `${s.slice(0, 40)}…` : s) : `(${typeof s})`;
  const m = typeof s === 'string' ? DURATION_RE.exec(s) : null;
  if (!m) throw new Error(`invalid duration ${shown}: expected a whole number followed by s, m, h, d or w (e.g. 90s, 15m, 48h, 30d, 26w)`);
  const n = Number(m[1]) * UNIT[m[2]!]!;
  if (!Number.isSafeInteger(n)) throw new Error(`invalid duration ${shown}: too large`);
  if (n <= 0) throw new Error(`invalid duration ${shown}: must be greater than zero`);
  return n;
}

/** The shortest exact rendering: 3600 -> '1h', 90 -> '90s', 1209600 -> '2w'. */
export function formatDuration(sec: number): string {
  for (const u of ['w', 'd', 'h', 'm'] as const) {
    const f = UNIT[u]!;
    if (sec >= f && sec % f === 0) return `${sec / f}${u}`;
  }
  return `${sec}s`;
}

/** 'every 1h for 48h' / 'all for 1h' */
export function formatRule(r: GridRule): string {
  return r.every === 'all' ? `all for ${formatDuration(r.for)}` : `every ${formatDuration(r.every)} for ${formatDuration(r.for)}`;
}

/**
 * Parse a grid from configuration: [{ for: '1h', every: 'all' }, { for: '48h', every: '1h' }, ...].
 * Errors name `where` and the rule's index.
 */
export function parseGrid(spec: Array<{ for: string; every: string }>, where: string): GridPolicy {
  if (!Array.isArray(spec)) throw new Error(`${where}: retention grid must be a list of { for, every } rules`);
  if (spec.length === 0) throw new Error(`${where}: retention grid has no rules (it would destroy every automatic snapshot but the newest)`);
  const out: GridPolicy = [];
  spec.forEach((raw, i) => {
    const at = `${where}[${i}]`;
    if (typeof raw !== 'object' || raw === null) throw new Error(`${at}: expected { for, every }`);
    let forSec: number;
    try {
      forSec = parseDuration(raw.for);
    } catch (e) {
      throw new Error(`${at}.for: ${(e as Error).message}`);
    }
    let every: number | 'all';
    if (raw.every === 'all') every = 'all';
    else {
      try {
        every = parseDuration(raw.every);
      } catch (e) {
        throw new Error(`${at}.every: ${(e as Error).message} (or "all")`);
      }
      if (every > forSec) throw new Error(`${at}: every (${raw.every}) is longer than for (${raw.for})`);
    }
    const prev = out[out.length - 1];
    if (prev && forSec <= prev.for) {
      throw new Error(`${at}.for: ${raw.for} is not longer than the previous rule's for (${formatDuration(prev.for)}): rules must be ordered by for, ascending`);
    }
    out.push({ for: forSec, every });
  });
  return out;
}

function freezeGrid(g: GridPolicy): GridPolicy {
  for (const r of g) Object.freeze(r);
  return Object.freeze(g) as GridPolicy;
}

const H = 3600;
const D = 86400;
const W = 7 * D;

/** all for 1h, hourly for 48h, daily for 30d, weekly for 26w */
export const DEFAULT_PRIMARY_GRID: GridPolicy = freezeGrid([
  { for: H, every: 'all' },
  { for: 48 * H, every: H },
  { for: 30 * D, every: D },
  { for: 26 * W, every: W },
]);

/** same as the primary's */
export const DEFAULT_REPLICA_GRID: GridPolicy = freezeGrid([
  { for: H, every: 'all' },
  { for: 48 * H, every: H },
  { for: 30 * D, every: D },
  { for: 26 * W, every: W },
]);

export interface RetentionSnapshot {
  /** the name after '@' */
  snap: string;
  /** unix seconds */
  creation: number;
  /** number of user holds; undefined = unknown (treated as none) */
  userrefs?: number;
}

export interface PruneDecision {
  /** ordered by creation (tie: name); undated snapshots last */
  keep: Array<{ snap: string; reason: string }>;
  /** ordered by creation (tie: name) */
  destroy: Array<{ snap: string; reason: string }>;
}

export const REASON = {
  named: 'named',
  held: 'held',
  protected: 'protected: replica base',
  newest: 'newest',
  future: 'future-dated',
  unknownCreation: 'creation unknown',
  expired: 'older than every rule',
} as const;

function byCreation(a: RetentionSnapshot, b: RetentionSnapshot): number {
  return a.creation - b.creation || (a.snap < b.snap ? -1 : a.snap > b.snap ? 1 : 0);
}

/** Decide which snapshots to keep and which to destroy. */
export function planPrune(snaps: RetentionSnapshot[], policy: GridPolicy, nowSec: number, protect: ReadonlySet<string>): PruneDecision {
  // a snapshot whose creation did not parse cannot be dated: keep it, list it last
  const undated = snaps.filter((s) => !Number.isFinite(s.creation));
  const sorted = snaps.filter((s) => Number.isFinite(s.creation)).sort(byCreation);
  const newest = sorted[sorted.length - 1];
  const verdict = new Map<RetentionSnapshot, { keep: boolean; reason: string }>();
  // rule index -> bucket -> the oldest candidate seen (sorted ascending, so the first)
  const taken = new Map<string, RetentionSnapshot>();

  for (const s of sorted) {
    if (!parseAutoSnapshotName(s.snap)) {
      verdict.set(s, { keep: true, reason: REASON.named });
      continue;
    }
    if ((s.userrefs ?? 0) > 0) {
      verdict.set(s, { keep: true, reason: REASON.held });
      continue;
    }
    if (protect.has(s.snap)) {
      verdict.set(s, { keep: true, reason: REASON.protected });
      continue;
    }
    if (s === newest) {
      verdict.set(s, { keep: true, reason: REASON.newest });
      continue;
    }
    const age = nowSec - s.creation;
    if (age < 0) {
      // clock skew between the snapshotting host and this one: never destroy on it
      verdict.set(s, { keep: true, reason: REASON.future });
      continue;
    }
    const ri = policy.findIndex((r) => age < r.for);
    const rule = policy[ri];
    if (!rule) {
      verdict.set(s, { keep: false, reason: REASON.expired });
      continue;
    }
    const desc = formatRule(rule);
    if (rule.every === 'all') {
      verdict.set(s, { keep: true, reason: `grid: ${desc}` });
      continue;
    }
    const key = `${ri}:${Math.floor(s.creation / rule.every)}`;
    const first = taken.get(key);
    if (!first) {
      taken.set(key, s);
      verdict.set(s, { keep: true, reason: `grid: oldest in bucket (${desc})` });
    } else {
      verdict.set(s, { keep: false, reason: `thinned: ${desc}` });
    }
  }

  const out: PruneDecision = { keep: [], destroy: [] };
  for (const s of sorted) {
    const v = verdict.get(s)!;
    (v.keep ? out.keep : out.destroy).push({ snap: s.snap, reason: v.reason });
  }
  for (const s of undated) out.keep.push({ snap: s.snap, reason: parseAutoSnapshotName(s.snap) ? REASON.unknownCreation : REASON.named });
  return out;
}

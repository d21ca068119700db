// The replication planner: given the source's and ONE target's snapshot lists of ONE
// dataset, decide what to send (or why nothing can be sent). Pure: no I/O, no clock,
// no imports. Modelled on zrepl's replication/logic/diff.
//
// Matching is by guid, never by name. A snapshot's guid survives `zfs send | recv`
// and `zfs rename`; a name proves nothing (two unrelated snapshots can share a name,
// a renamed snapshot is still the same data). Lists are sorted here by createtxg
// (tie: creation, then name), so callers may pass them in any order.
//
// Decision table (first matching row wins):
//   source has no snapshot                      -> nothing-to-send
//   target has a receive_resume_token           -> resume (caller tries `zfs send -t` first)
//   target missing, or has no snapshot          -> full `zfs send -R ds@<source newest>`
//   a name on both sides with different guids   -> conflict same-name-different-guid
//   no target snapshot shares a guid w/ source  -> conflict no-common-snapshot
//   base = the target's newest snapshot whose guid the source also has; then
//     source has nothing after base, target nothing after base -> up-to-date
//     source has nothing after base, target has more           -> conflict target-ahead
//     both sides have snapshots after base                     -> conflict diverged
//     only the source has snapshots after base                 -> incremental
// Target snapshots OLDER than the base that the source no longer has (pruned on the
// source by retention) are normal and are not a conflict; likewise source snapshots
// older than the base that the target lacks (pruned on the replica).
//
// Why `zfs send -R -I from to` and not `-i`: -I sends every intermediate snapshot
// between from and to in one stream, so the replica keeps all of them. Any of them
// can later be an incremental base (e.g. after the source pruned newer ones, or for
// a failover/move back) or a restore point. The cost is the same bytes as a chain of
// -i sends, in one stream and one receive, with one place to fail and resume.
//
// A conflict NEVER implies a destroy. The planner only reports; the caller pauses
// replication of this dataset to this target and surfaces the message. Nothing here
// (or in its callers) answers a conflict with `zfs recv -F`, a rollback or a
// `zfs destroy` on either side: that is an operator's decision.

export interface SnapRef {
  /** the name after '@' */
  snap: string;
  /** decimal string: guids are 64-bit and exceed Number's precision */
  guid: string;
  createtxg: number;
  /** unix seconds */
  creation: number;
}

export interface PlanInput {
  source: SnapRef[];
  /** null = the target dataset does not exist */
  target: SnapRef[] | null;
  /** the target's receive_resume_token, when an interrupted resumable receive is pending ('' and zfs get's '-' = none) */
  targetResumeToken?: string;
}

export interface SameNameDifferentGuidConflict {
  kind: 'same-name-different-guid';
  snap: string;
  sourceGuid: string;
  targetGuid: string;
  message: string;
}

export interface NoCommonSnapshotConflict {
  kind: 'no-common-snapshot';
  /** sorted oldest first */
  source: SnapRef[];
  /** sorted oldest first */
  target: SnapRef[];
  message: string;
}

export interface TargetAheadConflict {
  kind: 'target-ahead';
  /** the common base (the source's newest), as the source names it */
  common: SnapRef;
  /** target snapshots after the base, oldest first */
  targetOnly: SnapRef[];
  message: string;
}

export interface DivergedConflict {
  kind: 'diverged';
  /** the common base, as the source names it */
  common: SnapRef;
  /** source snapshots after the base, oldest first */
  sourceOnly: SnapRef[];
  /** target snapshots after the base, oldest first */
  targetOnly: SnapRef[];
  message: string;
}

export type PlanConflict = SameNameDifferentGuidConflict | NoCommonSnapshotConflict | TargetAheadConflict | DivergedConflict;

/** A conflict without its rendered message (what `conflictMessage` renders). */
export type PlanConflictDetail =
  | Omit<SameNameDifferentGuidConflict, 'message'>
  | Omit<NoCommonSnapshotConflict, 'message'>
  | Omit<TargetAheadConflict, 'message'>
  | Omit<DivergedConflict, 'message'>;

export type Plan =
  | { kind: 'nothing-to-send' }
  | { kind: 'resume'; token: string }
  /**
   * `zfs send -R ds@<to>`: carries every earlier source snapshot too. When the target
   * dataset exists (with no snapshot), receiving a full stream into it needs `-F`;
   * that destroys no snapshot, there being none.
   */
  | { kind: 'full'; to: SnapRef }
  /** `zfs send -R -I @<from> ds@<to>`; refs are the source's (its names) */
  | { kind: 'incremental'; from: SnapRef; to: SnapRef; intermediates: SnapRef[] }
  | { kind: 'up-to-date'; at: SnapRef }
  | { kind: 'conflict'; conflict: PlanConflict };

export type PlanKind = Plan['kind'];

/** How many entries per side a conflict message lists (the newest ones). */
export const MESSAGE_LIST_LIMIT = 10;

const DECIMAL_RE = /^[0-9]+$/;

/** A sorted copy: oldest first by createtxg, then creation, then name. */
export function sortSnapshots<T extends SnapRef>(snaps: readonly T[]): T[] {
  return [...snaps].sort((a, b) => a.createtxg - b.createtxg || a.creation - b.creation || (a.snap < b.snap ? -1 : a.snap > b.snap ? 1 : 0));
}

function checkGuids(side: string, snaps: readonly SnapRef[]): void {
  for (const s of snaps) {
    if (typeof s.guid !== 'string' || !DECIMAL_RE.test(s.guid)) {
      // An unparsed guid ('' or '-') would "match" every other unparsed guid.
      throw new Error(`replication planner: ${side} snapshot @${s.snap} has no valid guid (${JSON.stringify(s.guid)}); refusing to plan`);
    }
  }
}

function fmtSnap(s: SnapRef): string {
  return `${s.snap}(guid ${s.guid})`;
}

/** "label: … N more a(guid 1) b(guid 2)", the newest MESSAGE_LIST_LIMIT entries. */
export function formatSnapList(label: string, snaps: readonly SnapRef[], limit = MESSAGE_LIST_LIMIT): string {
  if (snaps.length === 0) return `${label}: (none)`;
  const shown = snaps.slice(-limit).map(fmtSnap);
  const more = snaps.length - shown.length;
  return `${label}: ${more > 0 ? `… ${more} more ` : ''}${shown.join(' ')}`;
}

/**
 * Render a conflict's message: what is wrong, then both sides' lists (newest entries,
 * bounded), and the reminder that nothing was changed.
 */
export function conflictMessage(c: PlanConflictDetail, source: readonly SnapRef[], target: readonly SnapRef[]): string {
  let head: string;
  switch (c.kind) {
    case 'same-name-different-guid':
      head = `snapshot @${c.snap} exists on source (guid ${c.sourceGuid}) and target (guid ${c.targetGuid}) with different guids: the target's copy is not the source's snapshot`;
      break;
    case 'no-common-snapshot':
      head = `target has ${c.target.length} snapshot(s) but none shares a guid with the source's ${c.source.length}: no incremental base`;
      break;
    case 'target-ahead':
      head = `target has ${c.targetOnly.length} snapshot(s) after the common base ${fmtSnap(c.common)} that the source lacks (${c.targetOnly.map((s) => s.snap).slice(-3).join(', ')}${c.targetOnly.length > 3 ? ', …' : ''})`;
      break;
    case 'diverged':
      head = `source and target diverged after the common base ${fmtSnap(c.common)}: source has ${c.sourceOnly.length} newer snapshot(s), target has ${c.targetOnly.length} the source lacks`;
      break;
  }
  const s = sortSnapshots(source);
  const t = sortSnapshots(target);
  return `${head}; ${formatSnapList('source', s)} | ${formatSnapList('target', t)}; replication to this target is paused, nothing was changed on either side`;
}

function conflict(c: PlanConflictDetail, source: readonly SnapRef[], target: readonly SnapRef[]): Plan {
  return { kind: 'conflict', conflict: { ...c, message: conflictMessage(c, source, target) } as PlanConflict };
}

/** Decide what to send from the source to one target for one dataset. */
export function planReplication(input: PlanInput): Plan {
  checkGuids('source', input.source);
  if (input.target) checkGuids('target', input.target);
  const source = sortSnapshots(input.source);
  const newest = source[source.length - 1];
  if (!newest) return { kind: 'nothing-to-send' };

  if (input.targetResumeToken !== undefined && input.targetResumeToken !== '' && input.targetResumeToken !== '-') {
    return { kind: 'resume', token: input.targetResumeToken };
  }

  const target = input.target ? sortSnapshots(input.target) : [];
  if (target.length === 0) return { kind: 'full', to: newest };

  // 1. the same name on both sides must be the same snapshot
  const sourceByName = new Map(source.map((s) => [s.snap, s]));
  for (const t of target) {
    const s = sourceByName.get(t.snap);
    if (s && s.guid !== t.guid) {
      return conflict({ kind: 'same-name-different-guid', snap: t.snap, sourceGuid: s.guid, targetGuid: t.guid }, source, target);
    }
  }

  // 2. the base: the target's newest snapshot whose guid the source has
  const sourceIndexByGuid = new Map(source.map((s, i) => [s.guid, i]));
  let baseT = -1;
  for (let i = target.length - 1; i >= 0; i--) {
    if (sourceIndexByGuid.has(target[i]!.guid)) {
      baseT = i;
      break;
    }
  }
  if (baseT < 0) return conflict({ kind: 'no-common-snapshot', source, target }, source, target);

  const baseS = sourceIndexByGuid.get(target[baseT]!.guid)!;
  const common = source[baseS]!;
  // Every target snapshot after the base lacks a source counterpart (the base is the
  // target's newest shared one); source snapshots after the base are what we send.
  const targetOnly = target.slice(baseT + 1);
  const sourceOnly = source.slice(baseS + 1);

  if (sourceOnly.length === 0) {
    if (targetOnly.length === 0) return { kind: 'up-to-date', at: common };
    return conflict({ kind: 'target-ahead', common, targetOnly }, source, target);
  }
  if (targetOnly.length > 0) return conflict({ kind: 'diverged', common, sourceOnly, targetOnly }, source, target);
  return { kind: 'incremental', from: common, to: newest, intermediates: sourceOnly.slice(0, -1) };
}

function shortToken(token: string): string {
  return token.length > 24 ? `${token.slice(0, 24)}… (${token.length} chars)` : token;
}

/** One line for logs and the CLI. */
export function describePlan(plan: Plan): string {
  switch (plan.kind) {
    case 'nothing-to-send':
      return 'nothing to send: the source has no snapshot';
    case 'resume':
      return `resume the interrupted receive (token ${shortToken(plan.token)})`;
    case 'full':
      return `full send -R of @${plan.to.snap} (guid ${plan.to.guid})`;
    case 'incremental': {
      const n = plan.intermediates.length;
      return `incremental send -R -I @${plan.from.snap} → @${plan.to.snap} (${n} intermediate snapshot${n === 1 ? '' : 's'})`;
    }
    case 'up-to-date':
      return `up to date at @${plan.at.snap} (guid ${plan.at.guid})`;
    case 'conflict':
      return `conflict ${plan.conflict.kind}: ${plan.conflict.message}`;
  }
}

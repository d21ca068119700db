// The replication planner: every plan kind and conflict kind, matching by guid (never
// by name), unsorted input, pruned snapshots on either side, 64-bit guids, and the
// conflict messages (both sides listed, bounded).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  planReplication,
  describePlan,
  conflictMessage,
  formatSnapList,
  sortSnapshots,
  MESSAGE_LIST_LIMIT,
  type Plan,
  type PlanInput,
  type SnapRef,
} from '../../src/replica/plan.js';

const T0 = 1_700_000_000;
/** a snapshot: guid defaults to a per-name number, creation follows createtxg */
function s(snap: string, guid: string, createtxg: number, creation = T0 + createtxg * 60): SnapRef {
  return { snap, guid, createtxg, creation };
}

// one consistent source history: a..e, guids 101..105
const A = s('a', '101', 10);
const B = s('b', '102', 20);
const C = s('c', '103', 30);
const Dd = s('d', '104', 40);
const E = s('e', '105', 50);

/** the same snapshot as the target sees it: same guid/creation, its own createtxg */
function onTarget(x: SnapRef, txgOffset = 1000, snap = x.snap): SnapRef {
  return { snap, guid: x.guid, createtxg: x.createtxg + txgOffset, creation: x.creation };
}
const tgt = (...xs: SnapRef[]) => xs.map((x) => onTarget(x));

/** the plan without conflict messages (checked separately) */
function strip(p: Plan): unknown {
  if (p.kind !== 'conflict') return p;
  const { message: _m, ...rest } = p.conflict;
  return { kind: 'conflict', conflict: rest };
}

interface Case {
  name: string;
  input: PlanInput;
  expect: unknown;
}

const X = s('x', '901', 60); // a target-only snapshot
const Y = s('y', '902', 70);

const CASES: Case[] = [
  // nothing-to-send
  { name: 'empty source, no target', input: { source: [], target: null }, expect: { kind: 'nothing-to-send' } },
  { name: 'empty source, target with snapshots', input: { source: [], target: tgt(A) }, expect: { kind: 'nothing-to-send' } },
  { name: 'empty source wins over a resume token', input: { source: [], target: [], targetResumeToken: '1-abc' }, expect: { kind: 'nothing-to-send' } },
  // resume
  { name: 'resume token on an up-to-date-looking target', input: { source: [A, B], target: tgt(A, B), targetResumeToken: '1-e3f-b8-789c' }, expect: { kind: 'resume', token: '1-e3f-b8-789c' } },
  { name: 'resume token on a target that is mid full receive', input: { source: [A], target: [], targetResumeToken: 'tok' }, expect: { kind: 'resume', token: 'tok' } },
  { name: 'resume token wins over a conflict', input: { source: [A], target: tgt(X), targetResumeToken: 'tok' }, expect: { kind: 'resume', token: 'tok' } },
  { name: "empty token is no token", input: { source: [A, B], target: tgt(A), targetResumeToken: '' }, expect: { kind: 'incremental', from: A, to: B, intermediates: [] } },
  { name: "zfs get's '-' is no token", input: { source: [A, B], target: tgt(A), targetResumeToken: '-' }, expect: { kind: 'incremental', from: A, to: B, intermediates: [] } },
  // full
  { name: 'target dataset missing', input: { source: [A, B, C], target: null }, expect: { kind: 'full', to: C } },
  { name: 'target exists without snapshots', input: { source: [A, B, C], target: [] }, expect: { kind: 'full', to: C } },
  { name: 'full: unsorted source, newest by createtxg', input: { source: [C, A, E, B, Dd], target: null }, expect: { kind: 'full', to: E } },
  {
    name: 'full: createtxg tie broken by creation',
    input: { source: [s('late', '2', 5, T0 + 9), s('early', '1', 5, T0 + 1)], target: null },
    expect: { kind: 'full', to: s('late', '2', 5, T0 + 9) },
  },
  // incremental
  { name: 'incremental, one new snapshot', input: { source: [A, B], target: tgt(A) }, expect: { kind: 'incremental', from: A, to: B, intermediates: [] } },
  { name: 'incremental with intermediates', input: { source: [A, B, C, Dd, E], target: tgt(A, B) }, expect: { kind: 'incremental', from: B, to: E, intermediates: [C, Dd] } },
  { name: 'incremental, unsorted lists', input: { source: [E, B, Dd, A, C], target: tgt(B, A).reverse() }, expect: { kind: 'incremental', from: B, to: E, intermediates: [C, Dd] } },
  { name: 'source pruned older snapshots the target keeps', input: { source: [C, Dd, E], target: tgt(A, B, C) }, expect: { kind: 'incremental', from: C, to: E, intermediates: [Dd] } },
  { name: 'target pruned older snapshots the source keeps', input: { source: [A, B, C, Dd], target: tgt(C) }, expect: { kind: 'incremental', from: C, to: Dd, intermediates: [] } },
  { name: 'both sides pruned differently', input: { source: [A, C, E], target: tgt(B, C) }, expect: { kind: 'incremental', from: C, to: E, intermediates: [] } },
  { name: 'target-only snapshot OLDER than the base is not a conflict', input: { source: [A, B, C], target: [onTarget(A), onTarget(X, 0, 'x'), onTarget(B)].map((t, i) => ({ ...t, createtxg: i + 1 })) }, expect: { kind: 'incremental', from: B, to: C, intermediates: [] } },
  {
    name: 'matched by guid: target renamed its copies',
    input: { source: [A, B, C], target: [onTarget(A, 5, 'renamed-a'), onTarget(B, 5, 'kept-forever')] },
    expect: { kind: 'incremental', from: B, to: C, intermediates: [] },
  },
  {
    name: 'matched by guid: source renamed its snapshots',
    input: { source: [{ ...A, snap: 'a2' }, { ...B, snap: 'b2' }, C], target: tgt(A, B) },
    expect: { kind: 'incremental', from: { ...B, snap: 'b2' }, to: C, intermediates: [] },
  },
  {
    name: '64-bit guids compared exactly (as strings)',
    input: { source: [s('p', '18446744073709551615', 1), s('q', '18446744073709551614', 2)], target: [s('p', '18446744073709551615', 7)] },
    expect: { kind: 'incremental', from: s('p', '18446744073709551615', 1), to: s('q', '18446744073709551614', 2), intermediates: [] },
  },
  // up-to-date
  { name: 'up to date', input: { source: [A, B], target: tgt(A, B) }, expect: { kind: 'up-to-date', at: B } },
  { name: 'up to date, single snapshot', input: { source: [A], target: tgt(A) }, expect: { kind: 'up-to-date', at: A } },
  { name: 'up to date after source pruning', input: { source: [C], target: tgt(A, B, C) }, expect: { kind: 'up-to-date', at: C } },
  { name: 'up to date although the target pruned', input: { source: [A, B, C], target: tgt(C) }, expect: { kind: 'up-to-date', at: C } },
  { name: 'up to date, renamed on target', input: { source: [A, B], target: [onTarget(A), onTarget(B, 1000, 'bee')] }, expect: { kind: 'up-to-date', at: B } },
  // conflicts
  {
    name: 'same name, different guid (checked first, even with a common base)',
    input: { source: [A, B, C], target: [...tgt(A), s('b', '999', 1020)] },
    expect: { kind: 'conflict', conflict: { kind: 'same-name-different-guid', snap: 'b', sourceGuid: '102', targetGuid: '999' } },
  },
  {
    name: 'same name, different guid, older snapshot',
    input: { source: [A, B, C], target: [s('a', '555', 1), ...tgt(B, C)] },
    expect: { kind: 'conflict', conflict: { kind: 'same-name-different-guid', snap: 'a', sourceGuid: '101', targetGuid: '555' } },
  },
  {
    name: 'same name, 64-bit guids that are equal as Numbers',
    input: { source: [s('p', '18446744073709551615', 1)], target: [s('p', '18446744073709551614', 1)] },
    expect: { kind: 'conflict', conflict: { kind: 'same-name-different-guid', snap: 'p', sourceGuid: '18446744073709551615', targetGuid: '18446744073709551614' } },
  },
  {
    name: 'no common snapshot',
    input: { source: [B, A], target: [Y, X] },
    expect: { kind: 'conflict', conflict: { kind: 'no-common-snapshot', source: [A, B], target: [X, Y] } },
  },
  {
    name: 'no common snapshot: 64-bit guids differing beyond Number precision',
    input: { source: [s('p', '18446744073709551615', 1)], target: [s('q', '18446744073709551614', 1)] },
    expect: { kind: 'conflict', conflict: { kind: 'no-common-snapshot', source: [s('p', '18446744073709551615', 1)], target: [s('q', '18446744073709551614', 1)] } },
  },
  {
    name: 'target ahead',
    input: { source: [A, B], target: [...tgt(A, B), onTarget(X), onTarget(Y)] },
    expect: { kind: 'conflict', conflict: { kind: 'target-ahead', common: B, targetOnly: [onTarget(X), onTarget(Y)] } },
  },
  {
    name: 'target ahead after source pruning',
    input: { source: [B], target: [...tgt(A, B), onTarget(X)] },
    expect: { kind: 'conflict', conflict: { kind: 'target-ahead', common: B, targetOnly: [onTarget(X)] } },
  },
  {
    name: 'diverged',
    input: { source: [A, B, C, Dd], target: [...tgt(A, B), onTarget(X)] },
    expect: { kind: 'conflict', conflict: { kind: 'diverged', common: B, sourceOnly: [C, Dd], targetOnly: [onTarget(X)] } },
  },
  {
    name: 'diverged, unsorted',
    input: { source: [Dd, C, B, A], target: [onTarget(X), ...tgt(B, A)] },
    expect: { kind: 'conflict', conflict: { kind: 'diverged', common: B, sourceOnly: [C, Dd], targetOnly: [onTarget(X)] } },
  },
];

describe('planReplication: decision table', () => {
  for (const c of CASES) {
    it(c.name, () => {
      const before = JSON.stringify(c.input);
      const plan = planReplication(c.input);
      assert.deepEqual(strip(plan), c.expect);
      assert.equal(JSON.stringify(c.input), before, 'input must not be mutated (sorting copies)');
      if (plan.kind === 'conflict') {
        assert.ok(plan.conflict.message.length > 0);
        assert.ok(plan.conflict.message.includes('source: '), plan.conflict.message);
        assert.ok(plan.conflict.message.includes(' | target: '), plan.conflict.message);
        assert.match(plan.conflict.message, /nothing was changed/);
        assert.doesNotMatch(plan.conflict.message, /\n/);
      }
    });
  }

  it('covers every plan kind and every conflict kind', () => {
    const kinds = new Set<string>();
    for (const c of CASES) {
      const p = planReplication(c.input);
      kinds.add(p.kind === 'conflict' ? `conflict:${p.conflict.kind}` : p.kind);
    }
    assert.deepEqual([...kinds].sort(), [
      'conflict:diverged',
      'conflict:no-common-snapshot',
      'conflict:same-name-different-guid',
      'conflict:target-ahead',
      'full',
      'incremental',
      'nothing-to-send',
      'resume',
      'up-to-date',
    ]);
  });

  it('refuses snapshots without a decimal guid (unparsed guids would match each other)', () => {
    assert.throws(() => planReplication({ source: [s('a', '', 1)], target: null }), /source snapshot @a has no valid guid/);
    assert.throws(() => planReplication({ source: [A], target: [s('a', '-', 1)] }), /target snapshot @a has no valid guid/);
    assert.throws(() => planReplication({ source: [s('a', '0x1f', 1)], target: null }), /no valid guid/);
  });

  it('a long incremental keeps every intermediate in order', () => {
    const src = Array.from({ length: 50 }, (_, i) => s(`h${i}`, String(1000 + i), i + 1));
    const shuffled = [...src].reverse();
    const p = planReplication({ source: shuffled, target: [onTarget(src[9]!)] });
    assert.equal(p.kind, 'incremental');
    if (p.kind !== 'incremental') return;
    assert.equal(p.from.snap, 'h9');
    assert.equal(p.to.snap, 'h49');
    assert.deepEqual(
      p.intermediates.map((x) => x.snap),
      Array.from({ length: 39 }, (_, i) => `h${i + 10}`),
    );
  });
});

describe('conflict messages', () => {
  it('list both sides, oldest to newest, in the documented format', () => {
    const p = planReplication({ source: [s('b', '2', 2), s('a', '1', 1)], target: [s('x', '9', 1)] });
    assert.equal(p.kind, 'conflict');
    if (p.kind !== 'conflict') return;
    assert.equal(p.conflict.kind, 'no-common-snapshot');
    assert.ok(p.conflict.message.includes('source: a(guid 1) b(guid 2) | target: x(guid 9)'), p.conflict.message);
    assert.match(p.conflict.message, /^target has 1 snapshot\(s\) but none shares a guid with the source's 2/);
  });

  it('are bounded to the newest entries per side with "… N more"', () => {
    const src = Array.from({ length: 25 }, (_, i) => s(`s${i}`, String(100 + i), i + 1));
    const dst = Array.from({ length: 15 }, (_, i) => s(`t${i}`, String(900 + i), i + 1));
    const p = planReplication({ source: src, target: dst });
    assert.equal(p.kind, 'conflict');
    if (p.kind !== 'conflict') return;
    const m = p.conflict.message;
    assert.equal(MESSAGE_LIST_LIMIT, 10);
    assert.ok(m.includes('source: … 15 more s15(guid 115) s16(guid 116)'), m);
    assert.ok(m.includes('s24(guid 124) | target: … 5 more t5(guid 905)'), m);
    assert.ok(m.includes('t14(guid 914)'), m);
    assert.ok(!m.includes('s14('), 'older source entries are elided');
    assert.ok(!m.includes('t4('), 'older target entries are elided');
    assert.equal(m.match(/\(guid /g)?.length, 20);
    assert.ok(m.length < 1000, `message length ${m.length}`);
  });

  it('name the snapshot and both guids for same-name-different-guid', () => {
    const p = planReplication({ source: [A, B], target: [s('b', '18446744073709551615', 3)] });
    assert.equal(p.kind, 'conflict');
    if (p.kind !== 'conflict') return;
    assert.match(p.conflict.message, /^snapshot @b exists on source \(guid 102\) and target \(guid 18446744073709551615\) with different guids/);
    assert.ok(p.conflict.message.includes('source: a(guid 101) b(guid 102) | target: b(guid 18446744073709551615)'));
  });

  it('name the common base and the extra snapshots for target-ahead and diverged', () => {
    const ahead = planReplication({ source: [A, B], target: [...tgt(A, B), onTarget(X)] });
    assert.equal(ahead.kind, 'conflict');
    if (ahead.kind !== 'conflict') return;
    assert.match(ahead.conflict.message, /^target has 1 snapshot\(s\) after the common base b\(guid 102\) that the source lacks \(x\)/);
    const div = planReplication({ source: [A, B, C], target: [...tgt(A, B), onTarget(X), onTarget(Y)] });
    assert.equal(div.kind, 'conflict');
    if (div.kind !== 'conflict') return;
    assert.match(div.conflict.message, /^source and target diverged after the common base b\(guid 102\): source has 1 newer snapshot\(s\), target has 2 the source lacks/);
    assert.ok(div.conflict.message.includes('source: a(guid 101) b(guid 102) c(guid 103) | target: a(guid 101) b(guid 102) x(guid 901) y(guid 902)'));
  });

  it('never suggest destroying anything', () => {
    for (const c of CASES) {
      const p = planReplication(c.input);
      if (p.kind === 'conflict') assert.doesNotMatch(p.conflict.message, /destroy|rollback|-F\b/i, c.name);
    }
  });

  it('conflictMessage renders a detail with sorted lists; an empty side reads (none)', () => {
    const m = conflictMessage({ kind: 'no-common-snapshot', source: [B, A], target: [] }, [B, A], []);
    assert.ok(m.includes('source: a(guid 101) b(guid 102) | target: (none)'), m);
  });

  it('formatSnapList bounds and counts', () => {
    assert.equal(formatSnapList('source', []), 'source: (none)');
    assert.equal(formatSnapList('source', [A, B, C], 2), 'source: … 1 more b(guid 102) c(guid 103)');
    assert.equal(formatSnapList('target', [A], 2), 'target: a(guid 101)');
  });
});

describe('sortSnapshots', () => {
  it('orders by createtxg, then creation, then name, without mutating', () => {
    const input = [s('z', '1', 5, 10), s('b', '2', 5, 9), s('a', '3', 5, 9), s('first', '4', 1, 99)];
    const copy = JSON.stringify(input);
    assert.deepEqual(sortSnapshots(input).map((x) => x.snap), ['first', 'a', 'b', 'z']);
    assert.equal(JSON.stringify(input), copy);
  });
});

describe('describePlan', () => {
  const table: Array<[Plan, RegExp]> = [
    [{ kind: 'nothing-to-send' }, /^nothing to send: the source has no snapshot$/],
    [{ kind: 'resume', token: 'short' }, /^resume the interrupted receive \(token short\)$/],
    [{ kind: 'resume', token: '1-'.padEnd(300, 'f') }, /^resume the interrupted receive \(token 1-f{22}… \(300 chars\)\)$/],
    [{ kind: 'full', to: C }, /^full send -R of @c \(guid 103\)$/],
    [{ kind: 'incremental', from: A, to: B, intermediates: [] }, /^incremental send -R -I @a → @b \(0 intermediate snapshots\)$/],
    [{ kind: 'incremental', from: A, to: C, intermediates: [B] }, /^incremental send -R -I @a → @c \(1 intermediate snapshot\)$/],
    [{ kind: 'up-to-date', at: B }, /^up to date at @b \(guid 102\)$/],
  ];
  for (const [plan, re] of table) {
    it(`${plan.kind}: ${re.source.slice(1, 40)}`, () => {
      const line = describePlan(plan);
      assert.match(line, re);
      assert.doesNotMatch(line, /\n/);
    });
  }
  it('conflict: kind and message on one line', () => {
    const p = planReplication({ source: [A, B, C], target: [...tgt(A, B), onTarget(X)] });
    const line = describePlan(p);
    assert.match(line, /^conflict diverged: source and target diverged after the common base b\(guid 102\)/);
    assert.doesNotMatch(line, /\n/);
  });
});

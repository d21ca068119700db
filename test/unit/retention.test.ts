// Grid retention: durations and grid parsing, every protection, thinning over long
// synthetic series (counts derived by hand in the comments), stability over time.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  parseDuration,
  formatDuration,
  formatRule,
  parseGrid,
  planPrune,
  DEFAULT_PRIMARY_GRID,
  DEFAULT_REPLICA_GRID,
  type GridPolicy,
  type RetentionSnapshot,
  type PruneDecision,
} from '../../src/replica/retention.js';
import { autoSnapshotName } from '../../src/util/validate.js';

const H = 3600;
const D = 86400;
const W = 7 * D;
/** 2023-08-31T00:00:00Z: a multiple of one week (604800 s), so hour, day and week buckets all start here */
const NOW = 1_693_440_000;
assert.equal(NOW % W, 0);

const auto = (creation: number, userrefs?: number): RetentionSnapshot => ({ snap: autoSnapshotName(new Date(creation * 1000), 'auto'), creation, ...(userrefs === undefined ? {} : { userrefs }) });
const NONE: ReadonlySet<string> = new Set();

function reasons(d: PruneDecision): Map<string, number> {
  const m = new Map<string, number>();
  for (const x of [...d.keep, ...d.destroy]) m.set(x.reason, (m.get(x.reason) ?? 0) + 1);
  return m;
}
/** assert.throws validator: the error's message (not String(err)) matches */
const message = (re: RegExp) => (e: unknown) => {
  assert.ok(e instanceof Error);
  assert.match(e.message, re);
  return true;
};
const kept = (d: PruneDecision) => new Map(d.keep.map((x) => [x.snap, x.reason]));
const destroyed = (d: PruneDecision) => new Map(d.destroy.map((x) => [x.snap, x.reason]));

describe('parseDuration', () => {
  const good: Array<[string, number]> = [
    ['90s', 90],
    ['15m', 900],
    ['1h', 3600],
    ['48h', 172800],
    ['30d', 2592000],
    ['26w', 15724800],
    ['1s', 1],
    ['007h', 25200],
  ];
  for (const [text, sec] of good) it(`${text} = ${sec}s`, () => assert.equal(parseDuration(text), sec));

  const bad = ['', '10', 'h', '1y', '-1h', '1.5h', ' 1h', '1h ', '1H', '1 h', '1h30m', '0s', '0w', 'all', '99999999999999999999w'];
  for (const text of bad) {
    it(`rejects ${JSON.stringify(text)}, naming it`, () => {
      assert.throws(
        () => parseDuration(text),
        (e: unknown) => e instanceof Error && e.message.includes(`invalid duration ${JSON.stringify(text)}`),
      );
    });
  }
  it('rejects a non-string from untyped config', () => {
    assert.throws(() => parseDuration(42 as unknown as string), /invalid duration \(number\)/);
  });
  it('formatDuration round-trips to the largest exact unit', () => {
    assert.deepEqual([90, 900, 3600, 5400, 172800, 86400, 2592000, 15724800, 1209600].map(formatDuration), ['90s', '15m', '1h', '90m', '2d', '1d', '30d', '26w', '2w']);
    for (const t of ['90s', '15m', '1h', '48h', '30d', '26w']) assert.equal(parseDuration(formatDuration(parseDuration(t))), parseDuration(t));
  });
});

describe('parseGrid', () => {
  const DEFAULT_SPEC = [
    { for: '1h', every: 'all' },
    { for: '48h', every: '1h' },
    { for: '30d', every: '1d' },
    { for: '26w', every: '1w' },
  ];

  it('parses the default grid; the defaults are what the docs say', () => {
    assert.deepEqual(parseGrid(DEFAULT_SPEC, 'config.retention.primary'), DEFAULT_PRIMARY_GRID);
    assert.deepEqual(DEFAULT_REPLICA_GRID, DEFAULT_PRIMARY_GRID);
    assert.deepEqual(DEFAULT_PRIMARY_GRID, [
      { for: H, every: 'all' },
      { for: 48 * H, every: H },
      { for: 30 * D, every: D },
      { for: 26 * W, every: W },
    ]);
    assert.deepEqual(DEFAULT_PRIMARY_GRID.map(formatRule), ['all for 1h', 'every 1h for 2d', 'every 1d for 30d', 'every 1w for 26w']);
  });

  it('the default grids cannot be mutated by a caller', () => {
    assert.ok(Object.isFrozen(DEFAULT_PRIMARY_GRID) && Object.isFrozen(DEFAULT_REPLICA_GRID));
    assert.ok(DEFAULT_PRIMARY_GRID.every((r) => Object.isFrozen(r)));
    assert.throws(() => (DEFAULT_PRIMARY_GRID as GridPolicy).push({ for: 1, every: 'all' }));
  });

  it('accepts every == for and "all" anywhere', () => {
    assert.deepEqual(parseGrid([{ for: '1d', every: '1d' }, { for: '2d', every: 'all' }], 'w'), [
      { for: D, every: D },
      { for: 2 * D, every: 'all' },
    ]);
  });

  const errors: Array<[string, Array<{ for: string; every: string }>, RegExp]> = [
    ['empty', [], /^cfg\.grid: retention grid has no rules/],
    ['bad for', [{ for: '1h', every: 'all' }, { for: '2x', every: '1h' }], /^cfg\.grid\[1\]\.for: invalid duration "2x"/],
    ['bad every', [{ for: '1h', every: 'every' }], /^cfg\.grid\[0\]\.every: invalid duration "every".* \(or "all"\)$/],
    ['zero every', [{ for: '1h', every: '0m' }], /^cfg\.grid\[0\]\.every: invalid duration "0m": must be greater than zero/],
    ['every longer than for', [{ for: '1h', every: 'all' }, { for: '1d', every: '2d' }], /^cfg\.grid\[1\]: every \(2d\) is longer than for \(1d\)$/],
    ['descending for', [{ for: '48h', every: '1h' }, { for: '1h', every: 'all' }], /^cfg\.grid\[1\]\.for: 1h is not longer than the previous rule's for \(2d\): rules must be ordered by for, ascending$/],
    ['equal for', [{ for: '1d', every: 'all' }, { for: '24h', every: '1h' }], /^cfg\.grid\[1\]\.for: 24h is not longer than the previous rule's for \(1d\)/],
    ['not a list', 'x' as unknown as [], /^cfg\.grid: retention grid must be a list/],
    ['null rule', [null as unknown as { for: string; every: string }], /^cfg\.grid\[0\]: expected \{ for, every \}$/],
  ];
  for (const [name, spec, re] of errors) {
    it(`error: ${name}`, () => assert.throws(() => parseGrid(spec, 'cfg.grid'), message(re)));
  }
});

describe('planPrune: protections', () => {
  const OLD = NOW - 400 * D; // older than every default rule

  it('named snapshots are never candidates, however old', () => {
    const d = planPrune([{ snap: 'before-upgrade', creation: OLD }, { snap: 'manual.1', creation: OLD + 1 }, auto(OLD + 2), auto(NOW - 10)], DEFAULT_PRIMARY_GRID, NOW, NONE);
    assert.deepEqual(d.keep, [
      { snap: 'before-upgrade', reason: 'named' },
      { snap: 'manual.1', reason: 'named' },
      { snap: auto(NOW - 10).snap, reason: 'newest' },
    ]);
    assert.deepEqual(d.destroy, [{ snap: auto(OLD + 2).snap, reason: 'older than every rule' }]);
  });

  it('held (userrefs > 0) is kept; userrefs 0 or unknown is not', () => {
    const d = planPrune([auto(OLD, 2), auto(OLD + 1, 0), auto(OLD + 2), auto(NOW)], DEFAULT_PRIMARY_GRID, NOW, NONE);
    assert.equal(kept(d).get(auto(OLD).snap), 'held');
    assert.equal(destroyed(d).get(auto(OLD + 1).snap), 'older than every rule');
    assert.equal(destroyed(d).get(auto(OLD + 2).snap), 'older than every rule');
  });

  it('protected names (replica bases) are kept', () => {
    const base = auto(OLD);
    const d = planPrune([base, auto(OLD + 1), auto(NOW)], DEFAULT_PRIMARY_GRID, NOW, new Set([base.snap, 'no-such-snapshot']));
    assert.equal(kept(d).get(base.snap), 'protected: replica base');
    assert.equal(destroyed(d).get(auto(OLD + 1).snap), 'older than every rule');
  });

  it('the newest snapshot is kept even when every rule has expired it', () => {
    const d = planPrune([auto(OLD - D), auto(OLD)], DEFAULT_PRIMARY_GRID, NOW, NONE);
    assert.deepEqual(d.keep, [{ snap: auto(OLD).snap, reason: 'newest' }]);
    assert.deepEqual(d.destroy, [{ snap: auto(OLD - D).snap, reason: 'older than every rule' }]);
  });

  it('"newest" is the newest overall: a newer named snapshot leaves old automatic ones to the grid', () => {
    const d = planPrune([auto(OLD), { snap: 'release', creation: OLD + 10 }], DEFAULT_PRIMARY_GRID, NOW, NONE);
    assert.deepEqual(d.keep, [{ snap: 'release', reason: 'named' }]);
    assert.deepEqual(d.destroy, [{ snap: auto(OLD).snap, reason: 'older than every rule' }]);
  });

  it('precedence: named > held > protected > newest', () => {
    const n = { snap: 'named', creation: OLD, userrefs: 1 };
    const h = auto(OLD + 1, 1);
    const p = auto(OLD + 2);
    const newest = auto(OLD + 3, 1);
    const d = planPrune([n, h, p, newest], DEFAULT_PRIMARY_GRID, NOW, new Set([h.snap, p.snap, newest.snap]));
    assert.deepEqual(d.keep.map((x) => x.reason), ['named', 'held', 'protected: replica base', 'held']);
    assert.deepEqual(d.destroy, []);
  });

  it('future-dated snapshots are kept (clock skew); the newest is still "newest"', () => {
    const d = planPrune([auto(OLD), auto(NOW + H), auto(NOW + 2 * H)], DEFAULT_PRIMARY_GRID, NOW, NONE);
    assert.deepEqual(d.keep, [
      { snap: auto(NOW + H).snap, reason: 'future-dated' },
      { snap: auto(NOW + 2 * H).snap, reason: 'newest' },
    ]);
    assert.deepEqual(d.destroy, [{ snap: auto(OLD).snap, reason: 'older than every rule' }]);
  });

  it('snapshots whose creation is unknown are kept, listed last', () => {
    const d = planPrune([{ snap: auto(OLD).snap, creation: NaN }, { snap: 'x', creation: NaN }, auto(NOW)], DEFAULT_PRIMARY_GRID, NOW, NONE);
    assert.deepEqual(d.keep, [
      { snap: auto(NOW).snap, reason: 'newest' },
      { snap: auto(OLD).snap, reason: 'creation unknown' },
      { snap: 'x', reason: 'named' },
    ]);
    assert.deepEqual(d.destroy, []);
  });

  it('an empty listing gives an empty decision', () => {
    assert.deepEqual(planPrune([], DEFAULT_PRIMARY_GRID, NOW, NONE), { keep: [], destroy: [] });
  });
});

describe('planPrune: grid', () => {
  it("'all' keeps everything younger than its for", () => {
    const snaps = [0, 60, 600, 3599].map((age) => auto(NOW - age));
    const d = planPrune(snaps, DEFAULT_PRIMARY_GRID, NOW, NONE);
    assert.deepEqual(d.destroy, []);
    assert.deepEqual(d.keep.map((x) => x.reason), ['grid: all for 1h', 'grid: all for 1h', 'grid: all for 1h', 'newest']);
  });

  it('keeps the OLDEST snapshot of each bucket and names the rule when thinning', () => {
    // three snapshots in the hour bucket [NOW-3h, NOW-2h), two in [NOW-5h, NOW-4h)
    const snaps = [NOW - 3 * H + 10, NOW - 2 * H - 10, NOW - 3 * H + 1800, NOW - 5 * H, NOW - 4 * H - 1, NOW].map((c) => auto(c));
    const d = planPrune(snaps, DEFAULT_PRIMARY_GRID, NOW, NONE);
    assert.deepEqual(d.keep, [
      { snap: auto(NOW - 5 * H).snap, reason: 'grid: oldest in bucket (every 1h for 2d)' },
      { snap: auto(NOW - 3 * H + 10).snap, reason: 'grid: oldest in bucket (every 1h for 2d)' },
      { snap: auto(NOW).snap, reason: 'newest' },
    ]);
    assert.deepEqual(d.destroy, [
      { snap: auto(NOW - 4 * H - 1).snap, reason: 'thinned: every 1h for 2d' },
      { snap: auto(NOW - 3 * H + 1800).snap, reason: 'thinned: every 1h for 2d' },
      { snap: auto(NOW - 2 * H - 10).snap, reason: 'thinned: every 1h for 2d' },
    ]);
  });

  it('protected snapshots do not occupy a bucket: the oldest candidate is kept beside them', () => {
    const held = auto(NOW - 3 * H, 1);
    const a = auto(NOW - 3 * H + 60);
    const b = auto(NOW - 3 * H + 120);
    const d = planPrune([b, a, held, auto(NOW)], DEFAULT_PRIMARY_GRID, NOW, NONE);
    assert.deepEqual(d.keep.map((x) => [x.snap, x.reason]), [
      [held.snap, 'held'],
      [a.snap, 'grid: oldest in bucket (every 1h for 2d)'],
      [auto(NOW).snap, 'newest'],
    ]);
    assert.deepEqual(d.destroy.map((x) => x.snap), [b.snap]);
  });

  it('the same bucket number under two rules is two buckets', () => {
    // bucket floor(c/10) = NOW/10 - 10 covers creations [NOW-100, NOW-90): NOW-100
    // (age 100) is under the second rule, NOW-99 and NOW-95 under the first.
    const grid: GridPolicy = [
      { for: 100, every: 10 },
      { for: 1000, every: 10 },
    ];
    const snaps = [NOW - 100, NOW - 99, NOW - 95, NOW].map((c) => auto(c));
    const d = planPrune(snaps, grid, NOW, NONE);
    assert.deepEqual(d.keep.map((x) => [x.snap, x.reason]), [
      [auto(NOW - 100).snap, 'grid: oldest in bucket (every 10s for 1000s)'],
      [auto(NOW - 99).snap, 'grid: oldest in bucket (every 10s for 100s)'],
      [auto(NOW).snap, 'newest'],
    ]);
    assert.deepEqual(d.destroy, [{ snap: auto(NOW - 95).snap, reason: 'thinned: every 10s for 100s' }]);
  });

  it('output is ordered by creation whatever the input order, and is deterministic', () => {
    const snaps = Array.from({ length: 200 }, (_, i) => auto(NOW - i * 1234));
    const shuffled = [...snaps].sort((x, y) => ((x.creation * 7919) % 101) - ((y.creation * 7919) % 101));
    const d1 = planPrune(snaps, DEFAULT_PRIMARY_GRID, NOW, NONE);
    const d2 = planPrune(shuffled, DEFAULT_PRIMARY_GRID, NOW, NONE);
    assert.deepEqual(d1, d2);
    const order = (xs: Array<{ snap: string }>) => xs.map((x) => Date.parse(x.snap.slice('auto_'.length)));
    for (const list of [d1.keep, d1.destroy]) {
      const t = order(list);
      assert.deepEqual(t, [...t].sort((a, b) => a - b));
    }
    assert.equal(d1.keep.length + d1.destroy.length, 200);
  });

  // 60 days of hourly snapshots, k = 0..1439 hours old, NOW on a week boundary.
  //   age <  1h  : k = 0                  -> the newest (reason 'newest', not 'all')
  //   age < 48h  : k = 1..47, one per hour bucket                       -> 47 kept
  //   age < 30d  : k = 48..719; day bucket NOW-j days holds k in
  //                [24(j-1)+1, 24j], so j = 2..30 -> 29 buckets           -> 29 kept
  //   age < 26w  : k = 720..1439; week bucket NOW-i weeks holds k in
  //                [168(i-1)+1, 168i], so i = 5..9 -> 5 buckets            ->  5 kept
  // total kept 1 + 47 + 29 + 5 = 82; destroyed 1440 - 82 = 1358.
  const hourly = Array.from({ length: 60 * 24 }, (_, k) => auto(NOW - k * H));

  it('60 days of hourly snapshots thin to 1 + 47 hourly + 29 daily + 5 weekly', () => {
    const d = planPrune(hourly, DEFAULT_PRIMARY_GRID, NOW, NONE);
    assert.equal(d.keep.length, 82);
    assert.equal(d.destroy.length, 1358);
    const r = reasons(d);
    assert.equal(r.get('newest'), 1);
    assert.equal(r.get('grid: all for 1h'), undefined);
    assert.equal(r.get('grid: oldest in bucket (every 1h for 2d)'), 47);
    assert.equal(r.get('grid: oldest in bucket (every 1d for 30d)'), 29);
    assert.equal(r.get('grid: oldest in bucket (every 1w for 26w)'), 5);
    assert.equal(r.get('thinned: every 1d for 30d'), 672 - 29);
    assert.equal(r.get('thinned: every 1w for 26w'), 720 - 5);
    assert.equal(r.get('thinned: every 1h for 2d'), undefined);
    // daily keepers, oldest first: the oldest daily-rule hour of each day bucket, i.e.
    // k = 719 (day 30's midnight, k = 720, is already under the weekly rule) and the
    // midnights k = 696, 672, ..., 48
    const dailyKeepers = d.keep.filter((x) => x.reason.includes('every 1d')).map((x) => (NOW - Date.parse(x.snap.slice(5)) / 1000) / H);
    assert.deepEqual(dailyKeepers, [719, ...Array.from({ length: 28 }, (_, j) => 48 + 24 * (27 - j))]);
    // weekly keepers: the oldest of each week under the weekly rule, k = 1439 and the
    // week starts 1344, 1176, 1008, 840
    const weeklyKeepers = d.keep.filter((x) => x.reason.includes('every 1w')).map((x) => (NOW - Date.parse(x.snap.slice(5)) / 1000) / H);
    assert.deepEqual(weeklyKeepers, [1439, 1344, 1176, 1008, 840]);
  });

  it('pruning every hour for 60 days keeps what the one-shot keeps, but for one boundary hour', () => {
    // Snapshots enter each coarser rule oldest-first, so the first to enter a bucket is
    // its oldest and stays kept, and every later arrival in that bucket is thinned: a
    // kept snapshot is never swapped for a newer one. The one difference from pruning
    // once at the end is a bucket straddling a rule boundary whose oldest member has
    // already moved on to the coarser rule: day 30 (k = 697..720) had its midnight
    // (k = 720) kept as the daily keeper when k = 719 aged past 48h, so k = 719 was
    // thinned then; the one-shot, seeing k = 720 under the weekly rule, keeps k = 719.
    let live: RetentionSnapshot[] = [];
    let maxLive = 0;
    for (let k = 60 * 24 - 1; k >= 0; k--) {
      const now = NOW - k * H;
      live.push(auto(now));
      const d = planPrune(live, DEFAULT_PRIMARY_GRID, now, NONE);
      assert.equal(d.keep[d.keep.length - 1]!.reason, 'newest');
      const gone = new Set(d.destroy.map((x) => x.snap));
      live = live.filter((x) => !gone.has(x.snap));
      maxLive = Math.max(maxLive, live.length);
    }
    const oneShot = planPrune(hourly, DEFAULT_PRIMARY_GRID, NOW, NONE).keep.map((x) => x.snap);
    const k719 = auto(NOW - 719 * H).snap;
    assert.equal(live.length, 81);
    assert.deepEqual(live.map((x) => x.snap), oneShot.filter((x) => x !== k719));
    assert.ok(maxLive <= 82, `live set peaked at ${maxLive}`);
  });

  // 3 days of 15-minute snapshots, k = 0..287 quarter-hours old, NOW on a day boundary.
  //   age <  1h  : k = 0..3   -> newest + 3 'all'                        ->  4 kept
  //   age < 48h  : k = 4..191; hour bucket NOW-i hours holds k in
  //                [4(i-1)+1, 4i], so i = 1..48                           -> 48 kept
  //   age < 30d  : k = 192..287; day buckets NOW-2d (k 97..192: only 192)
  //                and NOW-3d (k 193..288: 193..287)                      ->  2 kept
  // total 54 kept, 234 destroyed.
  it('3 days of 15-minute snapshots thin to 1 + 3 + 48 + 2', () => {
    const quarter = Array.from({ length: 3 * 96 }, (_, k) => auto(NOW - k * 900));
    const d = planPrune(quarter, DEFAULT_PRIMARY_GRID, NOW, NONE);
    assert.equal(d.keep.length, 54);
    assert.equal(d.destroy.length, 234);
    const r = reasons(d);
    assert.equal(r.get('newest'), 1);
    assert.equal(r.get('grid: all for 1h'), 3);
    assert.equal(r.get('grid: oldest in bucket (every 1h for 2d)'), 48);
    assert.equal(r.get('grid: oldest in bucket (every 1d for 30d)'), 2);
    assert.equal(r.get('thinned: every 1h for 2d'), 188 - 48);
    assert.equal(r.get('thinned: every 1d for 30d'), 96 - 2);
  });

  it('older than the last rule: destroyed, except what is protected', () => {
    const ancient = Array.from({ length: 5 }, (_, i) => auto(NOW - 27 * W - i * D));
    const d = planPrune([...ancient, auto(NOW)], DEFAULT_PRIMARY_GRID, NOW, new Set([ancient[2]!.snap]));
    assert.equal(d.destroy.length, 4);
    assert.ok(d.destroy.every((x) => x.reason === 'older than every rule'));
    assert.deepEqual(d.keep.map((x) => x.reason), ['protected: replica base', 'newest']);
  });
});

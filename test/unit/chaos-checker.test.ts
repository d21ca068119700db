// The chaos tier's invariant checker and schedule (test/chaos): each invariant passes a
// history that keeps it and FAILS one that breaks it (a checker that cannot fail proves
// nothing); a seed replays the same schedule.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { checkDestroys, checkMounts, checkWrites, convergenceProblems, type Ack, type FleetState } from '../chaos/checker.js';
import { FAULT_KINDS, countByKind, makeSchedule } from '../chaos/schedule.js';

const P = '1b4e28ba-2fa1-11d2-883f-0016d3cca427';

describe('chaos checker', () => {
  it('one writable mount: a sample with two fails, once per episode', () => {
    const ok = [{ at: 1, writable: new Map([[P, ['a']]]) }, { at: 2, writable: new Map([[P, ['b']]]) }];
    assert.deepEqual(checkMounts(ok), []);
    const two = [...ok, { at: 3, writable: new Map([[P, ['a', 'b']]]) }, { at: 4, writable: new Map([[P, ['a', 'b']]]) }, { at: 5, writable: new Map([[P, ['b']]]) }, { at: 6, writable: new Map([[P, ['b', 'c']]]) }];
    const v = checkMounts(two);
    assert.equal(v.length, 2);
    assert.match(v[0]!.detail, /writable on a and b/);
  });

  it('no lost write: a missing write fails unless a failover completed after it promoted an older snapshot', () => {
    const a: Ack = { project: P, seq: 7, host: 'a', at: 10_500 };
    assert.deepEqual(checkWrites([a], () => true, []).violations, []);
    const lost = checkWrites([a], () => false, []);
    assert.equal(lost.violations.length, 1);
    assert.match(lost.violations[0]!.detail, /1 acknowledged writes missing \(seq 7\.\.7, written on a /);
    // promoted a snapshot of second 9 (older), done at 12 s: within its window
    assert.equal(checkWrites([a], () => false, [{ project: P, from: 'a', to: 'b', creation: 9, doneAt: 12_000 }]).excused, 1);
    // a snapshot taken after the write (second 11): the write was in it, so losing it is a violation
    assert.equal(checkWrites([a], () => false, [{ project: P, from: 'a', to: 'b', creation: 11, doneAt: 12_000 }]).violations.length, 1);
    // a failover done before the write does not excuse it
    assert.equal(checkWrites([a], () => false, [{ project: P, from: 'a', to: 'b', creation: 5, doneAt: 9_000 }]).violations.length, 1);
  });

  it('nothing destroyed: automatic snapshots only', () => {
    const auto = (s: string) => s.startsWith('auto-');
    const lines = [
      { pool: 'p', command: `zfs destroy p/projects/${P}@auto-1` },
      { pool: 'p', command: `zfs destroy p/replicas/other@mine` },
      { pool: 'p', command: `zfs snapshot p/projects/${P}@x` },
    ];
    assert.deepEqual(checkDestroys(lines, new Set([P]), auto), { destroyed: 1, violations: [] });
    const bad = checkDestroys([...lines, { pool: 'p', command: `zfs destroy p/projects/${P}@mine` }, { pool: 'p', command: `zfs destroy -r p/replicas/${P}` }], new Set([P]), auto);
    assert.equal(bad.violations.length, 2);
    assert.match(bad.violations[1]!.detail, /dataset p\/replicas\/.* destroyed/);
  });

  it('converged: served by its primary only, active, targets at its newest guid, the catalog agreeing', () => {
    const s: FleetState = {
      projects: [{ id: P, primary: 'a', state: 'active', operation: null, targets: ['b', 'c'] }],
      writable: new Map([[P, ['a']]]),
      newest: new Map([[`a ${P}`, '1'], [`b ${P}`, '1'], [`c ${P}`, '1']]),
      rows: new Map([[`b ${P}`, '1'], [`c ${P}`, '1']]),
    };
    assert.deepEqual(convergenceProblems(s), []);
    assert.match(convergenceProblems({ ...s, newest: new Map([...s.newest, [`c ${P}`, '0']]) }).map((v) => v.detail).join(';'), /on c is at guid 0, its primary a at 1/);
    assert.match(convergenceProblems({ ...s, rows: new Map([[`b ${P}`, '1']]) }).map((v) => v.detail).join(';'), /the catalog says c has guid none, zfs lists 1/);
    assert.match(convergenceProblems({ ...s, writable: new Map([[P, ['a', 'b']]]) })[0]!.detail, /writable on \[a, b\]/);
    assert.match(convergenceProblems({ ...s, projects: [{ ...s.projects[0]!, state: 'moving', operation: 'move' }] })[0]!.detail, /is moving with a move left/);
  });
});

describe('chaos schedule', () => {
  it('a seed replays the same schedule; faults on one host never overlap; every kind is drawn over a long run', () => {
    const o = { durationMs: 3_600_000, hosts: ['a', 'b', 'c'], projects: 6 };
    assert.deepEqual(makeSchedule(42, o), makeSchedule(42, o));
    assert.notDeepEqual(makeSchedule(42, o).faults, makeSchedule(43, o).faults);
    const s = makeSchedule(7, o);
    for (const h of o.hosts) {
      const mine = s.faults.filter((f) => f.host === h || f.peer === h).sort((x, y) => x.at - y.at);
      for (let i = 1; i < mine.length; i++) assert.ok(mine[i]!.at >= mine[i - 1]!.at + mine[i - 1]!.ms, `overlap on ${h}`);
    }
    assert.deepEqual(Object.keys(countByKind(s.faults)).sort(), [...FAULT_KINDS].sort());
    assert.ok(s.faults.every((f) => f.at + f.ms <= o.durationMs));
    assert.ok(s.operator.length > 50);
  });
});

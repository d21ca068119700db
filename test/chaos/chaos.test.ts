// tier chaos: the fleet under random faults (run-chaos.ts), bounded for CI: one run with a
// fixed seed, one with a fresh seed (printed: `npm run chaos -- --seed S` replays it), and
// the checker shown to fail: with fencing disabled (a test-only switch in the agents), a
// partition of a primary makes two writable copies, and the checker must say so.
// The long form: `npm run chaos -- --minutes 60 [--seed S]` (test/chaos/run.sh).
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { sandbox } from '../lib/sandbox.js';
import { clusterCtl } from '../lib/cluster.js';
import { runChaos, summary } from './run-chaos.js';

const sb = sandbox();
// the fixed seed runs 1.5 minutes: its schedule pauses c past failover.after, which found
// the failover re-choice bug (docs/chaos.md, "Found"); the fresh seed 1 minute (CI time)
const MINUTES = process.env.CHAOS_CI_MINUTES ? Number(process.env.CHAOS_CI_MINUTES) : undefined;
// the kinds the fleet survives today; kill-cassandra and skew-clock found open problems
// (docs/chaos.md, "Found"): `npm run chaos -- --kinds ...` runs them
export const CI_KINDS = ['kill-agent', 'pause-agent', 'partition-host', 'partition-pair', 'flap-link', 'fill-quota'] as const;

before(() => {
  // the tier needs the three-node cluster (run-all.sh starts it): missing, it fails here
  clusterCtl(sb, 'status');
});

describe('chaos', () => {
  for (const [name, seed, minutes] of [
    ['a fixed seed', 20261202, 1.5],
    ['a fresh seed', Math.floor(Math.random() * 2 ** 31), 1],
  ] as const) {
    it(`${name} (${seed}): faults at random, no invariant broken, the fleet converges`, async () => {
      const r = await runChaos(sb, { seed, durationMs: (MINUTES ?? minutes) * 60_000, kinds: CI_KINDS });
      process.stdout.write(`# chaos: ${summary(r)}\n`);
      for (const v of r.violations.slice(0, 20)) process.stdout.write(`# VIOLATION ${v.invariant}: ${v.detail}\n`);
      assert.ok(r.faultsApplied >= 3, `only ${r.faultsApplied} faults applied`);
      assert.ok(r.writes.acknowledged > 100, `only ${r.writes.acknowledged} writes acknowledged`);
      assert.ok(r.samples > 100, `only ${r.samples} mount samples`);
      assert.deepEqual(r.violations, []);
      assert.notEqual(r.convergedAfterMs, null);
    });
  }

  it('the checker fails when fencing is disabled: a partitioned primary stays writable beside its successor', async () => {
    const r = await runChaos(sb, {
      seed: 1,
      durationMs: 80_000,
      projects: 3,
      disableFencing: true,
      convergeMs: 20_000,
      // a's projects fail over (auto: dead after 12 s, then the self-fence bound of 11 s)
      // while a is cut off and, fencing disabled, stays mounted: two writable copies from
      // about 30 s after the cut (measured: printed below) until the cut heals
      schedule: { seed: 1, faults: [{ at: 5_000, kind: 'partition-host', host: 'a', ms: 70_000 }], operator: [] },
    });
    process.stdout.write(`# chaos (fencing disabled): ${summary(r)}\n`);
    const two = r.violations.filter((v) => v.invariant === 'one-writable');
    assert.ok(two.length >= 1, `the checker did not see two writable copies: ${JSON.stringify(r.violations.slice(0, 5))}`);
    const at = two[0]!.at ?? NaN;
    process.stdout.write(`# the checker caught: ${two[0]!.detail} (${((at - r.startedAt - 5_000) / 1000).toFixed(1)} s after the cut)\n`);
  });
});

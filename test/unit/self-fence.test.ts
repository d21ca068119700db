// The self-fence watchdog's pure parts: the recorded contact survives a restart, and a bad
// or future record proves nothing. (Fencing itself: test/operations/move-restore.test.ts.)
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isolated, readContact, readFenced, SelfFence } from '../../src/agent/self-fence.js';
import { silentLogger } from '../../src/util/log.js';
import type { Zfs } from '../../src/zfs/index.js';

const dir = mkdtempSync(`${tmpdir()}/self-fence-`);

describe('self-fence watchdog', () => {
  it('is isolated only past selfFenceAfter since the last contact', () => {
    assert.equal(isolated(1000, 3000, 2000), false);
    assert.equal(isolated(1000, 3001, 2000), true);
  });

  it('reads a recorded contact; none, garbage or the future counts as none', () => {
    const f = `${dir}/c1`;
    assert.equal(readContact(undefined, 10), undefined);
    assert.equal(readContact(f, 10), undefined, 'absent');
    writeFileSync(f, '12345\n');
    assert.equal(readContact(f, 20_000), 12345);
    assert.equal(readContact(f, 100), undefined, 'from the future (a clock stepped back)');
    for (const bad of ['', 'x', '-5', '1e9', '12.5', '99999999999999999']) {
      writeFileSync(f, bad);
      assert.equal(readContact(f, 1e18), undefined, JSON.stringify(bad));
    }
  });

  it('starts from the recorded contact (a restart after a long silence is isolated at once), or from its start when none', () => {
    let now = 100_000;
    const f = `${dir}/c2`;
    const make = () => new SelfFence({ zfs: {} as Zfs, projectsRoot: 'p/projects', afterMs: () => 2000, stateFile: f, log: silentLogger(), now: () => now, mounted: () => new Set() });
    const fresh = make();
    assert.equal(fresh.lastContact(), 100_000);
    assert.equal(fresh.isolatedNow(), false);
    fresh.contact(101_000);
    assert.equal(readFileSync(f, 'utf8').trim(), '101000', 'recorded');
    fresh.contact(101_500); // within a second of the last record: not written again
    assert.equal(readFileSync(f, 'utf8').trim(), '101000');
    fresh.contact(99_000); // an older answer does not move the contact back
    assert.equal(fresh.lastContact(), 101_500);
    now = 110_000;
    const restarted = make();
    assert.equal(restarted.lastContact(), 101_000);
    assert.equal(restarted.isolatedNow(), true);
  });

  it('started after a long silence, it fences at once, not after its first interval (a fast catalog would answer first)', async () => {
    const f = `${dir}/c3`;
    writeFileSync(f, '1000\n');
    const w = new SelfFence({ zfs: { exists: async () => false } as unknown as Zfs, projectsRoot: 'p/projects', afterMs: () => 2000, stateFile: f, log: silentLogger(), now: () => 60_000, mounted: () => new Set(['p/projects/a']) });
    w.start(3_600_000); // an interval that never comes in this test
    try {
      await w.settled();
      assert.deepEqual([...w.fenced().keys()], ['a']);
    } finally {
      w.stop();
    }
  });

  it('a tick when isolated fences every mounted project; not isolated, none; ticks never overlap', async () => {
    let now = 0;
    const w = new SelfFence({ zfs: { exists: async () => false } as unknown as Zfs, projectsRoot: 'p/projects', afterMs: () => 2000, log: silentLogger(), now: () => now, mounted: () => new Set(['p/projects/a', 'p/projects/b']) });
    assert.deepEqual(await w.tick(), []);
    now = 5000;
    const [x, y] = [w.tick(), w.tick()];
    assert.equal(x, y, 'one tick at a time');
    assert.deepEqual((await x).sort(), ['a', 'b']);
    assert.deepEqual([...w.fenced().keys()].sort(), ['a', 'b']);
    assert.equal(w.release('a'), false);
    now = 0; // not isolated: a tick fences nothing, fenceAll (the catalog cannot be opened at start) everything
    w.release('b');
    assert.deepEqual(await w.tick(), []);
    assert.deepEqual((await w.fenceAll()).sort(), ['a', 'b']);
    assert.deepEqual([...w.fenced().keys()].sort(), ['a', 'b'], 'recorded for the next process to remount');
    w.release('a');
    assert.deepEqual([...w.fenced().keys()], ['b']);
  });

  it('the projects it fenced survive a restart (a killed agent\'s successor remounts them); a bad record is skipped', async () => {
    const f = `${dir}/fenced.json`;
    const id = '11111111-2222-4333-8444-555555555555';
    let now = 0;
    const make = () => new SelfFence({ zfs: { exists: async () => false } as unknown as Zfs, projectsRoot: 'p/projects', afterMs: () => 2000, fencedFile: f, log: silentLogger(), now: () => now, mounted: () => new Set([`p/projects/${id}`]) });
    const first = make();
    now = 10_000;
    assert.deepEqual(await first.tick(), [id]);
    assert.deepEqual([...make().fenced().keys()], [id], 'read back by the next process');
    make().release(id);
    assert.deepEqual([...make().fenced().keys()], [], 'released for good');
    writeFileSync(f, JSON.stringify({ [id]: true, '../etc': true, [id.replace('1', '9')]: 'yes' }));
    assert.deepEqual([...readFenced(f)], [[id, true]]);
    writeFileSync(f, '{not json');
    assert.deepEqual([...readFenced(f)], []);
  });
});

// fenceDataset's report when `zfs set readonly=on` fails (pure, with a fake adapter; the
// real fences: test/integration/fencing.test.ts on zfs-fuse, OpenZFS 2.1 and 2.3).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { fenceDataset } from '../../src/zfs/fence.js';
import type { Zfs } from '../../src/zfs/index.js';

function fakeZfs(setsProperty: boolean): Zfs {
  let readonly = 'off';
  return {
    exists: async () => true,
    get: async () => ({ readonly }),
    set: async () => {
      if (setsProperty) readonly = 'on';
      throw new Error("cannot set mount attributes for 'p/projects/x': mount failed\nproperty may be set but unable to remount filesystem");
    },
    unmount: async () => undefined,
  } as unknown as Zfs;
}

describe('fence: readonly', () => {
  it('OpenZFS 2.3 sets the property but cannot remount a busy mount: readonly counts as set', async () => {
    const r = await fenceDataset(fakeZfs(true), 'p/projects/not-mounted-here');
    assert.equal(r.readonly, 'set');
    assert.deepEqual(r.problems, []);
    assert.equal(r.fenced, true);
  });

  it('a property that did not change is a failure, reported', async () => {
    const r = await fenceDataset(fakeZfs(false), 'p/projects/not-mounted-here');
    assert.equal(r.readonly, 'failed');
    assert.match(r.problems[0]!, /^readonly: cannot set mount attributes/);
  });
});

// A crash (SIGKILL) at every named step of `storagectl move` and `storagectl restore
// --mode rollback` (OPERATION_STEPS, so a new step cannot be left out): the re-run
// completes with exactly one writable copy and nothing lost (move: everything written
// before it, on the target; restore: the live tree equals the snapshot, writable again,
// the state before kept in a safety snapshot). zfs-fuse tier only (the VM tier runs the
// failover's steps, test/integration/fencing.test.ts: the CI time budget).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { sandbox, host, treeChecksum, scaled } from '../lib/sandbox.js';
import { createProject } from '../lib/fleet.js';
import { storagectl } from '../lib/procs.js';
import { operatorFleet, LEASE } from '../lib/operator.js';
import { OPERATION_STEPS } from '../../src/util/crash-point.js';

const sb = sandbox();
const A = host(sb, 'a');
const B = host(sb, 'b');
const ops = operatorFleet(sb, 'crash', 9791);
const { cfg, writableOn, replicated, rerun, servedBy } = ops;

describe('crash at every step of a move', () => {
  for (const step of OPERATION_STEPS.move) {
    it(`move killed at ${step}: the re-run completes, one writable copy, nothing lost`, async () => {
      const p = await replicated({ 'data.bin': randomBytes(30_000), 'notes.txt': step });
      writeFileSync(`${p.mnt}/written-before-the-move.txt`, 'after the last replication: the move carries it');
      const sum = treeChecksum(p.mnt);
      const args = ['move', '--here', p.id, 'b', '--lease', String(LEASE)];
      const crashed = await storagectl(sb, A, cfg.get('a')!, args, scaled(120_000), { env: { STORAGE_CRASH_AT: `move:${step}` } });
      assert.equal(crashed.signal, 'SIGKILL', `killed at the crash point: ${crashed.stderr}`);
      assert.ok((await writableOn(p.id)).length <= 1, 'never two writable copies, also right after the crash');
      const r = await rerun(A, ['move', '--here', p.id, 'b', '--json']);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(await writableOn(p.id), ['b']);
      assert.deepEqual(await servedBy(p.id), { primary: 'b', state: 'active', operation: null });
      const mp = (await ops.fleet.zfs.get(`${B.pool}/projects/${p.id}`, ['mountpoint'])).mountpoint!;
      assert.equal(treeChecksum(mp), sum, 'everything written before the move, on the target');
      assert.ok(await ops.fleet.zfs.exists(`${A.pool}/replicas/${p.id}`), 'the source keeps a replica');
    });
  }
});

describe('crash at every step of a rollback restore', () => {
  for (const step of OPERATION_STEPS.restore) {
    it(`restore killed at ${step}: the re-run completes; the live tree equals the snapshot, writable; nothing lost`, async () => {
      const p = await createProject(ops.fleet, A, { files: { 'doc.txt': 'v1', 'data.bin': randomBytes(40_000) } });
      await ops.fleet.zfs.snapshot([`${p.dataset}@named-v1`]);
      const sumV1 = treeChecksum(p.mnt);
      writeFileSync(`${p.mnt}/doc.txt`, 'v2');
      writeFileSync(`${p.mnt}/after-v1.txt`, 'kept in the safety snapshot');
      const args = ['restore', p.id, 'named-v1', '--mode', 'rollback'];
      const crashed = await storagectl(sb, A, cfg.get('a')!, [...args, '--lease', String(LEASE)], scaled(120_000), { env: { STORAGE_CRASH_AT: `restore:${step}` } });
      assert.equal(crashed.signal, 'SIGKILL', `killed at the crash point: ${crashed.stderr}`);
      const r = await rerun(A, [...args, '--json']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(treeChecksum(p.mnt), sumV1, 'the live tree equals the snapshot');
      writeFileSync(`${p.mnt}/writable-again.txt`, 'yes');
      assert.deepEqual(await writableOn(p.id), ['a']);
      assert.deepEqual(await servedBy(p.id), { primary: 'a', state: 'active', operation: null });
      // nothing lost: the state before the (first) restore is in a safety snapshot
      const snaps = (await ops.fleet.zfs.list(p.dataset, { depth: 0 })).get(p.dataset)!.snapshots.map((x) => x.snap);
      const safety = snaps.filter((x) => x.startsWith('pre-restore-'));
      assert.ok(safety.length >= 1, `a safety snapshot (${snaps.join(' ')})`);
      const view = await storagectl(sb, A, cfg.get('a')!, ['restore', p.id, safety[0]!, '--json']);
      assert.equal(view.code, 0, view.stderr);
      const mnt = (JSON.parse(view.stdout) as { clone: { mountpoint: string } }).clone.mountpoint;
      assert.equal(readFileSync(`${mnt}/after-v1.txt`, 'utf8'), 'kept in the safety snapshot');
      const clean = await storagectl(sb, A, cfg.get('a')!, ['restore', p.id, '--cleanup', '--json']);
      assert.equal(clean.code, 0, clean.stderr);
    });
  }
});

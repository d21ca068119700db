// storagectl restore --mode rollback on the sandbox (real zfs-fuse pools) while tenant
// processes write: the writes stop (a writer holding a descriptor open is killed and
// named in the output; a writer that reopens its file gets EROFS meanwhile), the safety
// snapshot holds every write acknowledged before, the live tree afterwards equals the
// snapshot exactly (contents, modes, owners, hard links, sparse layout, symlinks not
// followed, xattrs where the file system has them), and the tenant path is writable
// again. Then `restore --cleanup` removes the clones restores made, so their origin
// snapshots can be pruned again.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { chmodSync, chownSync, closeSync, existsSync, ftruncateSync, linkSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { sandbox, host, expectedImplementation } from '../lib/sandbox.js';
import { startFleet, createProject, sleep, type Fleet } from '../lib/fleet.js';
import { storagectl, writeAgentConfig, waitFor } from '../lib/procs.js';

const sb = sandbox();
const A = host(sb, 'a');
const catalogPath = `${sb.dir}/catalog-ri-${randomUUID().slice(0, 8)}.db`;
let fleet: Fleet;
let cfgA: string;
const children: ChildProcess[] = [];

before(async () => {
  fleet = await startFleet(sb, catalogPath);
  let port = 9621;
  for (const h of sb.hosts) {
    const path = writeAgentConfig(h, 'agent-ri', { catalogPath, metricsPort: port++ });
    if (h.name === 'a') cfgA = path;
  }
});

after(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await fleet?.close();
});

// ---- helpers ------------------------------------------------------------------------

/** xattrs through python3's os.*xattr (the attr package may be missing): name=value lines, or 'ENOTSUP'. */
const PY_XATTR = `
import os, sys
op, path = sys.argv[1], sys.argv[2]
try:
    if op == 'set':
        os.setxattr(path, sys.argv[3], sys.argv[4].encode(), follow_symlinks=False)
    else:
        for n in sorted(os.listxattr(path, follow_symlinks=False)):
            print(n + '=' + os.getxattr(path, n, follow_symlinks=False).hex())
except OSError as e:
    if e.errno == 95:
        print('ENOTSUP')
        sys.exit(0)
    raise
`;
function xattr(op: 'set' | 'list', path: string, ...args: string[]): string {
  const r = spawnSync('python3', ['-c', PY_XATTR, op, path, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`python3 xattr ${op} ${path}: ${r.error?.message ?? r.stderr}`);
  return r.stdout.trim();
}

/**
 * One line per entry below root (root itself as "."), never following symlinks: type,
 * mode (with setuid/setgid/sticky), owner, link count, and per type the sha256 and size
 * (+ allocated 512-byte blocks: the sparse layout) of a file, or a symlink's target; plus
 * the xattrs where the file system has them.
 */
function describeTree(root: string, o: { blocks: boolean; xattrs: boolean }): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    const path = rel === '.' ? root : `${root}/${rel}`;
    const st = lstatSync(path);
    const type = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : 'other';
    let line = `${rel} ${type} mode=${(st.mode & 0o7777).toString(8)} owner=${st.uid}:${st.gid} links=${st.nlink}`;
    if (st.isFile()) line += ` size=${st.size} sha256=${createHash('sha256').update(readFileSync(path)).digest('hex').slice(0, 16)}${o.blocks ? ` blocks=${st.blocks}` : ''}`;
    if (st.isSymbolicLink()) line += ` -> ${readlinkSync(path)}`;
    if (o.xattrs && !st.isSymbolicLink()) line += ` xattrs=[${xattr('list', path).split('\n').join(' ')}]`;
    out.push(line);
    if (st.isDirectory()) for (const e of readdirSync(path).sort()) walk(rel === '.' ? e : `${rel}/${e}`);
  };
  walk('.');
  return out;
}

/**
 * The kernel's FUSE inode cache keeps st_blocks of a file rsync just wrote at its first
 * value (measured: 1 block for a file zfs-fuse stores in 273) until the inode is evicted:
 * evict the clean inodes so that stat asks zfs-fuse. False where /proc/sys is not writable.
 */
function dropInodeCache(): boolean {
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '2');
    return true;
  } catch {
    return false;
  }
}

function mountOptions(path: string): string[] | undefined {
  const line = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.split(' ')[4] === path)
    .pop();
  return line?.split(' ')[5]?.split(',');
}

/** A tenant process: output collected, exit recorded. */
function tenant(argv: string[], cwd?: string): { proc: ChildProcess; out: () => string; err: () => string; exited: Promise<{ code: number | null; signal: string | null }> } {
  const proc = spawn(argv[0]!, argv.slice(1), { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(proc);
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<{ code: number | null; signal: string | null }>((r) => proc.once('exit', (code, signal) => r({ code, signal })));
  return { proc, out: () => out, err: () => err, exited };
}

interface RollbackJson {
  safetySnapshot: string;
  restoredSnapshot: string;
  stoppedProcesses: Array<{ pid: number; command: string; reason: string }>;
  attributes: { acls: boolean; xattrs: boolean };
}

// ---- the test -------------------------------------------------------------------------

describe('restore --mode rollback, isolated', () => {
  let p: { id: string; dataset: string; mnt: string };
  const clones: string[] = [];

  it('stops the writers, keeps their writes in the safety snapshot, makes the live tree equal the snapshot exactly, and leaves the tenant path writable', async () => {
    p = await createProject(fleet, A, { files: { 'doc.txt': 'v1', 'dir/inner.txt': 'inner', 'sub/kept.txt': 'kept', swap: 'a file', 'run.sh': '#!/bin/sh\n' } });
    const m = p.mnt;
    // the snapshot: owners, modes, a hard link, a sparse file, symlinks (one dangling)
    chownSync(`${m}/doc.txt`, 1234, 1234);
    chmodSync(`${m}/doc.txt`, 0o640);
    chownSync(`${m}/dir`, 1234, 1234);
    chmodSync(`${m}/dir`, 0o750);
    chmodSync(`${m}/run.sh`, 0o4755);
    writeFileSync(`${m}/hard-a`, randomBytes(5000));
    linkSync(`${m}/hard-a`, `${m}/hard-b`);
    const fd = openSync(`${m}/sparse.img`, 'w');
    ftruncateSync(fd, 10 * 2 ** 20);
    writeSync(fd, Buffer.from('a small write in the middle'), 0, 27, 5_000_000);
    closeSync(fd);
    symlinkSync('/etc/hostname', `${m}/link-abs`);
    symlinkSync('does-not-exist', `${m}/link-dangling`);
    // xattrs: zfs-fuse passes none through FUSE (ENOTSUP even with xattr=on), measured
    const xattrs = xattr('set', `${m}/doc.txt`, 'user.restore-test', 'in the snapshot') !== 'ENOTSUP';
    if (!xattrs) {
      assert.equal(expectedImplementation(sb), 'zfs-fuse', 'only zfs-fuse is known to have no user xattrs');
      assert.equal(xattr('list', `${m}/doc.txt`), 'ENOTSUP');
      process.stdout.write('# zfs-fuse stores no user xattrs (setxattr/listxattr: ENOTSUP): the xattr comparison is void here\n');
    }
    await fleet.zfs.snapshot([`${p.dataset}@named-base`]);

    // the live state moves on: every kind of difference
    writeFileSync(`${m}/doc.txt`, 'v2, longer');
    chmodSync(`${m}/doc.txt`, 0o666);
    chownSync(`${m}/doc.txt`, 0, 0);
    if (xattrs) xattr('set', `${m}/doc.txt`, 'user.restore-test', 'changed later');
    chmodSync(`${m}/dir`, 0o777);
    rmSync(`${m}/hard-b`);
    writeFileSync(`${m}/sparse.img`, randomBytes(10 * 2 ** 20)); // dense now
    rmSync(`${m}/link-abs`);
    writeFileSync(`${m}/link-abs`, 'a file now');
    // sub/ becomes a symlink to a directory outside the tree: the copy must replace the
    // link, never write through it
    const outside = mkdtempSync(`${sb.dir}/outside-`);
    writeFileSync(`${outside}/canary`, 'outside');
    rmSync(`${m}/sub`, { recursive: true });
    symlinkSync(outside, `${m}/sub`);
    rmSync(`${m}/swap`);
    mkdirSync(`${m}/swap`);
    writeFileSync(`${m}/swap/x`, 'in a directory now');
    writeFileSync(`${m}/new.txt`, 'added after the snapshot');

    // the expected tree: a read-only clone of the snapshot (clone mode)
    const view = await storagectl(sb, A, cfgA, ['restore', p.id, 'named-base', '--json']);
    assert.equal(view.code, 0, view.stderr);
    const snapView = (JSON.parse(view.stdout) as { clone: { dataset: string; mountpoint: string } }).clone;
    clones.push(snapView.dataset);
    const expected = describeTree(snapView.mountpoint, { blocks: true, xattrs });
    assert.ok(expected.some((l) => /^sparse\.img file .* blocks=(\d+)/.test(l) && Number(/blocks=(\d+)/.exec(l)![1]) < 2048), `the snapshot's sparse.img is sparse: ${expected.find((l) => l.startsWith('sparse.img'))}`);

    // two tenant writers: one holds its descriptor open and appends (acknowledging each
    // line after write() returned); one has its working directory inside and reopens its
    // file for every line
    const w1 = tenant([
      process.execPath,
      '-e',
      `const fs = require('fs'); const fd = fs.openSync(process.argv[1], 'a'); let i = 0;
       setInterval(() => { try { fs.writeSync(fd, i + '\\n'); process.stdout.write(i + '\\n'); i++; } catch (e) { process.stdout.write('ERR ' + e.code + '\\n'); } }, 10);`,
      `${m}/writer.log`,
    ]);
    const w2 = tenant(['sh', '-c', 'i=0; while :; do i=$((i+1)); if echo $i >> cwd.log; then echo "ok $i"; else echo "fail $i"; fi; sleep 0.05; done'], m);
    await waitFor('both writers acknowledged writes', () => w1.out().split('\n').length > 20 && w2.out().includes('ok 5'), 10_000);

    const rb = await storagectl(sb, A, cfgA, ['restore', p.id, 'named-base', '--mode', 'rollback', '--json']);
    const w2AfterRestore = w2.out().length;
    assert.equal(rb.code, 0, rb.stderr);
    const r = JSON.parse(rb.stdout) as RollbackJson;
    process.stdout.write(`# rollback: stopped ${JSON.stringify(r.stoppedProcesses)}; attributes ${JSON.stringify(r.attributes)}\n`);

    // the holder of an open descriptor blocked the read-only remount: killed, and named
    const e1 = await Promise.race([w1.exited, sleep(5000).then(() => undefined)]);
    assert.deepEqual(e1, { code: null, signal: 'SIGKILL' }, 'the writer holding writer.log open was killed');
    const s1 = r.stoppedProcesses.find((s) => s.pid === w1.proc.pid);
    assert.ok(s1, `the output names the writer ${w1.proc.pid}: ${JSON.stringify(r.stoppedProcesses)}`);
    assert.equal(s1.command, 'node');
    assert.match(s1.reason, /held .*writer\.log open for writing/);
    assert.match(rb.stderr, new RegExp(`stopped ${w1.proc.pid} node`), 'the progress output names it too');
    assert.ok(!w1.out().includes('ERR'), `the writer never saw a failed write before it was killed: ${w1.out().slice(-200)}`);
    // the process with its working directory inside: killed only if fuser caught it with
    // cwd.log open for writing, else it lived on and its writes failed EROFS meanwhile
    const w2Killed = r.stoppedProcesses.some((s) => s.pid === w2.proc.pid);
    if (w2Killed) {
      assert.equal((await w2.exited).signal, 'SIGKILL');
      process.stdout.write('# the cwd writer was caught with its file open: killed\n');
    } else {
      assert.equal(w2.proc.exitCode, null, 'the cwd writer still runs');
      assert.match(w2.out().slice(0, w2AfterRestore), /fail \d+/, 'its writes failed while the restore ran');
      assert.match(w2.err(), /Read-only file system/, `the failures were EROFS: ${w2.err().slice(0, 300)}`);
      // and succeed again once the tenant path is writable
      const n = Number(/fail (\d+)\n(?![\s\S]*fail)/.exec(w2.out())![1]);
      await waitFor('the cwd writer writes again', () => w2.out().includes(`ok ${n + 2}`), 10_000);
      w2.proc.kill('SIGKILL');
      await w2.exited;
      process.stdout.write(`# the cwd writer lived on: its writes failed (EROFS) while the restore ran, and succeed again after\n`);
    }

    // the live tree equals the snapshot exactly (cwd.log: what the cwd writer wrote after
    // the restore, if it lived on)
    const blocks = dropInodeCache();
    const live = describeTree(m, { blocks, xattrs }).filter((l) => !l.startsWith('cwd.log '));
    const want = blocks ? expected : describeTree(snapView.mountpoint, { blocks: false, xattrs });
    assert.deepEqual(live.slice(1), want.slice(1), 'the live tree equals the snapshot');
    // the root directory: same mode and owner (its link count and size follow the entries)
    assert.equal(live[0]!.replace(/ links=\d+/, ''), want[0]!.replace(/ links=\d+/, ''));
    assert.ok(live.some((l) => /^hard-a file .* links=2 /.test(l)), 'the hard link is back');
    assert.deepEqual(readdirSync(outside), ['canary'], 'nothing was written through the symlink');
    assert.equal(readFileSync(`${outside}/canary`, 'utf8'), 'outside');
    if (!blocks) process.stdout.write('# /proc/sys/vm/drop_caches not writable: allocated blocks compared on the @restored clone only\n');

    // ... and so does the @restored snapshot, seen through a fresh mount (fresh stat)
    const rv = await storagectl(sb, A, cfgA, ['restore', p.id, r.restoredSnapshot, '--json']);
    assert.equal(rv.code, 0, rv.stderr);
    const restoredView = (JSON.parse(rv.stdout) as { clone: { dataset: string; mountpoint: string } }).clone;
    clones.push(restoredView.dataset);
    assert.deepEqual(describeTree(restoredView.mountpoint, { blocks: true, xattrs }).slice(1), expected.slice(1), '@restored equals the snapshot');
    assert.equal(r.attributes.xattrs, xattrs, 'the restore probed the same xattr support');

    // the safety snapshot holds every write acknowledged before the restore
    const sv = await storagectl(sb, A, cfgA, ['restore', p.id, r.safetySnapshot, '--json']);
    assert.equal(sv.code, 0, sv.stderr);
    const safetyView = (JSON.parse(sv.stdout) as { clone: { dataset: string; mountpoint: string } }).clone;
    clones.push(safetyView.dataset);
    const acked = w1.out().split('\n').filter((l) => /^\d+$/.test(l));
    const inSafety = readFileSync(`${safetyView.mountpoint}/writer.log`, 'utf8').split('\n').filter(Boolean);
    assert.ok(acked.length > 20);
    assert.deepEqual(inSafety.slice(0, acked.length), acked, `all ${acked.length} acknowledged lines in @${r.safetySnapshot}`);
    assert.ok(inSafety.length <= acked.length + 1, 'at most the one line written but not yet acknowledged when it was killed');
    const okBeforeFail = (w2.out().split(/fail \d+/)[0] ?? '').split('\n').filter((l) => l.startsWith('ok ')).map((l) => l.slice(3));
    const cwdSafety = readFileSync(`${safetyView.mountpoint}/cwd.log`, 'utf8').split('\n').filter(Boolean);
    if (!w2Killed) assert.deepEqual(cwdSafety.slice(0, okBeforeFail.length), okBeforeFail, 'the cwd writer: every write acknowledged before its first failure');
    assert.equal(readFileSync(`${safetyView.mountpoint}/doc.txt`, 'utf8'), 'v2, longer', 'the state before the restore');

    // the tenant path is writable again; no view is left
    assert.ok(mountOptions(m)?.includes('rw'), `${m} mounted rw: ${mountOptions(m)?.join(',')}`);
    writeFileSync(`${m}/after-restore.txt`, 'writable');
    assert.equal(readFileSync(`${m}/after-restore.txt`, 'utf8'), 'writable');
    const views = `${fleet.configs.get('a')!.stateDir}/restore-views`;
    assert.deepEqual(readdirSync(views), [], 'the private view was unmounted and removed');
    assert.ok(!readFileSync('/proc/self/mountinfo', 'utf8').includes(`${views}/`), 'no view is mounted');
    // replication continues on the same lineage
    const cyc = await fleet.agents.get('a')!.replicateProject(p.id);
    assert.deepEqual([cyc.failures, cyc.conflicts], [[], []]);
  });

  it('--cleanup unmounts and destroys the clones restores made (a busy one is kept, its user named), so the origin snapshots can be pruned', async () => {
    assert.equal(clones.length, 3, 'the first test made three clones');
    const snapOf = (ds: string) => `${p.dataset}@${ds.slice(ds.indexOf(`${p.id}-`) + p.id.length + 1)}`;
    const origins = clones.map(snapOf);
    // a clone's origin cannot be destroyed while the clone exists
    const held = spawnSync('zfs', ['destroy', origins[0]!], { encoding: 'utf8' });
    assert.notEqual(held.status, 0, 'the origin of a clone is not destroyable');

    for (const args of [['restore', p.id, '--cleanup', '--mode', 'rollback'], ['restore', p.id], ['restore', p.id, '--cleanup', 'never-made'], ['restore', p.id, '--cleanup', '--from', 'b']]) {
      const bad = await storagectl(sb, A, cfgA, args);
      assert.equal(bad.code, 2, `${args.join(' ')}: ${bad.stderr}`);
    }

    // one by name, while a process sits in its mount: kept, exit 1, the user named
    const one = clones[2]!;
    const mp = (await fleet.zfs.get(one, ['mountpoint'])).mountpoint!;
    const sitter = tenant(['sleep', '120'], mp);
    await sleep(200);
    const busy = await storagectl(sb, A, cfgA, ['restore', p.id, '--cleanup', snapOf(one).split('@')[1]!, '--json']);
    assert.equal(busy.code, 1, busy.stderr);
    const b = JSON.parse(busy.stdout) as { removed: unknown[]; kept: Array<{ dataset: string; reason: string }> };
    assert.deepEqual(b.removed, []);
    assert.equal(b.kept[0]?.dataset, one);
    assert.match(b.kept[0]!.reason, new RegExp(`in use by pid ${sitter.proc.pid}`));
    sitter.proc.kill('SIGKILL');
    await sitter.exited;

    // a dataset under <pool>/restore with a name restore never gives (a colon) stays
    const foreign = `${fleet.configs.get('a')!.pool}/restore/${p.id}-made:by-hand`;
    await fleet.zfs.create(foreign, { canmount: 'off', mountpoint: 'none' });

    const all = await storagectl(sb, A, cfgA, ['restore', p.id, '--cleanup', '--json']);
    assert.equal(all.code, 0, all.stderr);
    const res = JSON.parse(all.stdout) as { removed: Array<{ dataset: string; origin: string }>; kept: unknown[] };
    assert.deepEqual(res.kept, []);
    assert.deepEqual(res.removed.map((x) => x.dataset).sort(), [...clones].sort());
    for (const x of res.removed) assert.equal(x.origin, snapOf(x.dataset));
    for (const ds of clones) assert.equal(await fleet.zfs.exists(ds), false, `${ds} destroyed`);
    assert.equal(await fleet.zfs.exists(foreign), true, 'a dataset restore did not make is left alone');
    await fleet.zfs.destroyDataset(foreign);
    assert.ok(!existsSync(mp), 'the empty mountpoint directory is removed');
    // the origins can be pruned again (the replicas' holds released first, as the agent's
    // retention would find them once the replicas moved on)
    for (const s of origins) {
      for (const h of ['b', 'c']) spawnSync('zfs', ['release', `storage:replica:${h}`, s]);
      await fleet.zfs.destroySnapshot(s);
    }
    const again = await storagectl(sb, A, cfgA, ['restore', p.id, '--cleanup']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /no restore datasets/);
  });
});

describe('restore --mode rollback, a copy that fails midway', () => {
  it('leaves the tenant path read-only and says so; re-running the restore finishes it and makes the path writable', async () => {
    const big = randomBytes(16 * 2 ** 20);
    const p = await createProject(fleet, A, { files: { 'a.txt': 'v1', 'z-big.bin': big } });
    await fleet.zfs.snapshot([`${p.dataset}@base`]);
    writeFileSync(`${p.mnt}/a.txt`, 'v2');
    rmSync(`${p.mnt}/z-big.bin`);
    writeFileSync(`${p.mnt}/new.txt`, 'after base');
    // the disk "fills up" midway: the live dataset may grow by 1 MiB, z-big.bin needs 16
    await fleet.zfs.snapshot([`${p.dataset}@synced`]); // a txg: referenced is current
    const { referenced } = await fleet.zfs.get(p.dataset, ['referenced']);
    await fleet.zfs.set(p.dataset, { refquota: String(Number(referenced) + 2 ** 20) });

    const failed = await storagectl(sb, A, cfgA, ['restore', p.id, 'base', '--mode', 'rollback', '--json']);
    assert.equal(failed.code, 1, failed.stdout + failed.stderr);
    process.stdout.write(`# the failed restore said: ${failed.stderr.split('\n').filter((l) => l.startsWith('storagectl:')).join(' ')}\n`);
    assert.match(failed.stderr, /rsync .* exited \d+: .*(Disk quota exceeded|No space left)/s, 'the error carries the command and its stderr');
    assert.match(failed.stderr, new RegExp(`${p.mnt} is left READ-ONLY with a half-restored tree: re-run this restore to finish it \\(the state before is @pre-restore-`));
    assert.ok(mountOptions(p.mnt)?.includes('ro'), `still read-only: ${mountOptions(p.mnt)?.join(',')}`);
    assert.throws(() => writeFileSync(`${p.mnt}/tenant.txt`, 'x'), /EROFS/, 'the tenant gets EROFS');
    const views = `${fleet.configs.get('a')!.stateDir}/restore-views`;
    assert.deepEqual(readdirSync(views), [], 'the private view is gone all the same');

    await fleet.zfs.set(p.dataset, { refquota: 'none' });
    const again = await storagectl(sb, A, cfgA, ['restore', p.id, 'base', '--mode', 'rollback', '--json']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, /is read-only already \(an interrupted restore left it so\): this restore finishes the copy/);
    assert.ok(mountOptions(p.mnt)?.includes('rw'), `writable again: ${mountOptions(p.mnt)?.join(',')}`);
    assert.deepEqual(readdirSync(p.mnt).sort(), ['a.txt', 'z-big.bin']);
    assert.equal(readFileSync(`${p.mnt}/a.txt`, 'utf8'), 'v1');
    assert.ok(readFileSync(`${p.mnt}/z-big.bin`).equals(big));
    writeFileSync(`${p.mnt}/tenant.txt`, 'x');
  });
});

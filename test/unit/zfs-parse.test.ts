// Parsers and the capability derivation, on text captured from zfs-fuse and OpenZFS 2.1.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { deriveCapabilities, parseGetRows, parseListRows, classify, makeZfsError, retryBusy, wholeStreamTaken, ZfsBusyError, ZfsNoCommonSnapshotError, parseSize } from '../../src/zfs/index.js';

// fixtures live in the source tree (test/fixtures), tests run from dist/test/unit
const fixture = (name: string) => readFileSync(fileURLToPath(new URL(`../../../test/fixtures/${name}`, import.meta.url)), 'utf8');

describe('capability derivation', () => {
  it('zfs-fuse: no list -p, no written, recv only -vnF, no resume, no bookmarks', () => {
    const c = deriveCapabilities({
      versionOut: null,
      usage: fixture('zfs-fuse.usage.txt'),
      getUsage: fixture('zfs-fuse.get-usage.txt'),
      zpoolUsage: fixture('zfs-fuse.zpool-usage.txt'),
    });
    assert.deepEqual(c, {
      implementation: 'zfs-fuse',
      version: 'zfs-fuse (pool v23)',
      listParsable: false,
      written: false,
      snapshotsChanged: false,
      recvNoMount: false,
      recvResumable: false,
      sendResume: false,
      recvPropertyOverride: false,
      sendCompressed: false,
      sendLargeBlocks: false,
      sendEmbedded: false,
      sendRaw: false,
      bookmarks: false,
      batchSnapshot: false,
      multiSet: false,
      destroySnapshotList: false,
      holdsList: false,
      importNoMount: false,
    });
  });

  // the probe's inputs as captured on each tested line (the openzfs-2.1 and -2.3 guests)
  const MODERN = ['listParsable', 'written', 'recvNoMount', 'recvResumable', 'sendResume', 'recvPropertyOverride', 'sendCompressed', 'sendLargeBlocks', 'sendEmbedded', 'sendRaw', 'bookmarks', 'batchSnapshot', 'multiSet', 'destroySnapshotList', 'holdsList', 'importNoMount'] as const;
  for (const [line, version, snapshotsChanged] of [
    ['2.1', 'zfs-2.1.11-1', false], // 2.2 added snapshots_changed
    ['2.3', 'zfs-2.3.9-0+deb13u1', true],
  ] as const) {
    it(`OpenZFS ${line}: every modern path is taken; snapshots_changed ${snapshotsChanged ? 'found' : 'absent'}`, () => {
      const c = deriveCapabilities({
        versionOut: fixture(`openzfs-${line}.version.txt`),
        usage: fixture(`openzfs-${line}.usage.txt`),
        getUsage: fixture(`openzfs-${line}.get-usage.txt`),
        zpoolUsage: fixture(`openzfs-${line}.zpool-usage.txt`),
      });
      assert.equal(c.implementation, 'openzfs');
      assert.equal(c.version, version);
      for (const k of MODERN) assert.equal(c[k], true, k);
      assert.equal(c.snapshotsChanged, snapshotsChanged);
    });
  }

  it('OpenZFS >= 2.2: snapshots_changed is found in the property list', () => {
    const get = fixture('openzfs-2.1.get-usage.txt').replace(/^(\s*)written(\s.*)$/m, (line, sp: string) => `${line}\n${sp}snapshots_changed   NO       NO   <date>`);
    const c = deriveCapabilities({ versionOut: 'zfs-2.2.7-1\nzfs-kmod-2.2.7-1\n', usage: fixture('openzfs-2.1.usage.txt'), getUsage: get, zpoolUsage: fixture('openzfs-2.1.zpool-usage.txt') });
    assert.equal(c.snapshotsChanged, true);
  });
});

describe('listing parsers', () => {
  const getText = [
    'tank\ttype\tfilesystem',
    'tank\tguid\t2719202098942728575',
    'tank\tcreatetxg\t1',
    'tank/p\tguid\t18446744073709551615',
    'tank/p\tcreatetxg\t7',
    'tank/p\tcreation\t1795451382',
    'tank/p\tused\t114688',
    'tank/p\treferenced\t114688',
    'tank/p\tmountpoint\t/srv/with space',
    'tank/p@b\tguid\t2',
    'tank/p@b\tcreatetxg\t40',
    'tank/p@b\tcreation\t1795451390',
    'tank/p@b\tuserrefs\t1',
    'tank/p@a\tguid\t1',
    'tank/p@a\tcreatetxg\t33',
    'tank/p@a\tcreation\t1795451385',
    'tank/p@a\tuserrefs\t0',
    '',
  ].join('\n');

  it('parses zfs get -H -p rows: 64-bit guids exact, snapshots ordered by createtxg', () => {
    const t = parseGetRows(getText, ['mountpoint']);
    const p = t.get('tank/p')!;
    assert.equal(p.guid, '18446744073709551615');
    assert.equal(p.props.mountpoint, '/srv/with space');
    assert.deepEqual(p.snapshots.map((s) => [s.snap, s.guid, s.createtxg, s.userrefs]), [
      ['a', '1', 33, 0],
      ['b', '2', 40, 1],
    ]);
    assert.equal(t.get('tank')!.props.mountpoint, '-');
  });

  it('parses zfs list -H -p rows with written', () => {
    const cols = ['name', 'type', 'guid', 'createtxg', 'creation', 'used', 'referenced', 'written', 'userrefs'];
    const text = 'tank/p\tfilesystem\t9\t7\t100\t5\t5\t4096\t-\ntank/p@s\tsnapshot\t10\t8\t101\t0\t5\t5\t0\n';
    const t = parseListRows(text, cols);
    assert.equal(t.get('tank/p')!.written, 4096);
    assert.equal(t.get('tank/p')!.snapshots[0]!.written, 5);
  });

  it('refuses malformed lines with the offending text', () => {
    assert.throws(() => parseGetRows('garbage-line\n'), /unexpected zfs get line.*garbage-line/);
    assert.throws(() => parseListRows('a\tb\n', ['name', 'guid', 'x']), /expected 3 tab-separated fields/);
  });

  it('parses humanized sizes from zpool list', () => {
    assert.equal(parseSize('504M'), 504 * 2 ** 20);
    assert.equal(parseSize('1.5G'), 1.5 * 2 ** 30);
    assert.ok(Number.isNaN(parseSize('bogus')));
  });
});

describe('error classification', () => {
  it('maps zfs stderr to typed errors that keep argv and stderr', () => {
    assert.equal(classify("cannot rename 'tank/x': dataset is busy"), 'busy');
    assert.equal(classify("cannot open 'tank/x': dataset does not exist"), 'not-found');
    assert.equal(classify("cannot create 'tank/x': dataset already exists"), 'exists');
    assert.equal(classify('cannot receive incremental stream: most recent snapshot of tank/x does not\nmatch incremental source'), 'no-common-snapshot');
    assert.equal(classify('cannot receive incremental stream: destination tank/x has been modified\nsince most recent snapshot'), 'destination-modified');
    const e = makeZfsError(['zfs', 'rename', 'tank/x', 'tank/y'], 1, null, "cannot rename 'tank/x': dataset is busy\n");
    assert.ok(e instanceof ZfsBusyError);
    assert.equal(e.message, "zfs rename tank/x tank/y (exit 1): cannot rename 'tank/x': dataset is busy");
    const n = makeZfsError(['zfs', 'receive', 'tank/x'], 1, null, 'cannot receive incremental stream: most recent snapshot of tank/x does not\nmatch incremental source\n');
    assert.ok(n instanceof ZfsNoCommonSnapshotError);
  });
});

describe('retryBusy', () => {
  const busy = () => makeZfsError(['zfs', 'set', 'mountpoint=/x', 'tank/c'], 1, null, "cannot mount 'tank/c': mountpoint or dataset is busy\n");
  it('runs the call again while zfs answers busy, and returns its result', async () => {
    let n = 0;
    assert.equal(await retryBusy(async () => (++n < 3 ? Promise.reject(busy()) : 'ok')), 'ok');
    assert.equal(n, 3);
  });
  it('gives up after its attempts with the busy error, and never retries another error', async () => {
    let n = 0;
    await assert.rejects(retryBusy(async () => {
      n++;
      throw busy();
    }, 2), ZfsBusyError);
    assert.equal(n, 2);
    n = 0;
    await assert.rejects(retryBusy(async () => {
      n++;
      throw new Error('no such dataset');
    }), /no such dataset/);
    assert.equal(n, 1);
  });
});

describe('wholeStreamTaken: a zfs receive that exited 0 before the pipe into it finished', () => {
  it('is whole when the source had ended (Node saw the exit before the last write completed), not when bytes were left unread', async () => {
    const { Readable } = await import('node:stream');
    const premature = Object.assign(new Error('Premature close'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
    const epipe = Object.assign(new Error('write EPIPE'), { code: 'EPIPE' });
    const ended = Readable.from([Buffer.alloc(10)]);
    for await (const _ of ended) void _; // read to the end
    const unread = Readable.from([Buffer.alloc(10), Buffer.alloc(10)]);
    assert.equal(wholeStreamTaken(ended, premature), true);
    assert.equal(wholeStreamTaken(ended, epipe), true);
    assert.equal(wholeStreamTaken(unread, premature), false, 'bytes left in the source: an error');
    assert.equal(wholeStreamTaken(ended, new Error('zfs said no')), false);
  });
});

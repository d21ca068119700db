// Untrusted names never reach a command line: each hostile input is refused by
// validation with a clear error, and the runner records zero commands.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Zfs, CommandRunner, type RunOptions, type RunResult } from '../../src/zfs/index.js';
import * as v from '../../src/util/validate.js';

/** A runner that fails the test if anything is executed. */
class TripwireRunner extends CommandRunner {
  ran: string[][] = [];
  override run(argv: readonly string[], _opts?: RunOptions): Promise<RunResult> {
    this.ran.push([...argv]);
    return Promise.reject(new Error(`command ran: ${argv.join(' ')}`));
  }
  override spawn(argv: readonly string[]): never {
    this.ran.push([...argv]);
    throw new Error(`command spawned: ${argv.join(' ')}`);
  }
}

const HOSTILE = [
  '',
  ' ',
  'a b',
  'x;rm -rf /',
  'x && reboot',
  'x || true',
  '`id`',
  '$(id)',
  '${IFS}',
  'x|nc 1.2.3.4 1',
  'x>out',
  '../etc',
  '..',
  'a/../b',
  '-R',
  '--help',
  'a@b',
  'a/b',
  'a#b',
  'a\nb',
  'a\tb',
  'a\u0000b',
  'a\u001bb',
  'ünïcödé',
  'snap\u202e',
  'x'.repeat(300),
  "it's",
  '"quoted"',
  'a*',
  'a?',
  '~root',
];

describe('validation', () => {
  it('accepts canonical project ids and refuses anything else', () => {
    assert.equal(v.projectId('1b4e28ba-2fa1-11d2-883f-0016d3cca427'), '1b4e28ba-2fa1-11d2-883f-0016d3cca427');
    for (const bad of [...HOSTILE, '1B4E28BA-2FA1-11D2-883F-0016D3CCA427', '1b4e28ba2fa111d2883f0016d3cca427', '1b4e28ba-2fa1-11d2-883f-0016d3cca427 ']) {
      assert.throws(() => v.projectId(bad, 'test'), v.ValidationError, `accepted ${JSON.stringify(bad)}`);
    }
    assert.throws(() => v.projectId(42 as unknown as string), /not a string/);
    assert.throws(() => v.projectId('1B4E28BA-2FA1-11D2-883F-0016D3CCA427', 'argv'), /use lowercase/);
  });

  it('accepts snapshot names of the safe charset and refuses hostile ones', () => {
    for (const ok of ['2026-11-22T22:30:05Z', 'auto_2026-11-22T22:30:05Z', 'before-upgrade', 'v1.2', 'a']) assert.equal(v.snapshotName(ok), ok);
    for (const bad of HOSTILE) assert.throws(() => v.snapshotName(bad, 'test'), v.ValidationError, `accepted ${JSON.stringify(bad)}`);
  });

  it('errors name what was wrong and where it came from, escaped', () => {
    assert.throws(() => v.snapshotName('a\nb', 'storagectl snapshot --name'), (e: unknown) => {
      assert.ok(e instanceof v.ValidationError);
      assert.match(e.message, /^invalid snapshot name in storagectl snapshot --name: "a\\nb" /);
      return true;
    });
    assert.throws(() => v.snapshotName('x'.repeat(5000)), /\(5000 chars\)/);
  });

  it('validates dataset paths, snapshot paths, hold tags, properties, mountpoints and host ids', () => {
    assert.equal(v.datasetName('tank/projects/1b4e28ba-2fa1-11d2-883f-0016d3cca427'), 'tank/projects/1b4e28ba-2fa1-11d2-883f-0016d3cca427');
    for (const bad of ['tank//x', '/tank', 'tank/', 'tank/../x', 'tank/-x', 'tank/x y', 'tank/x;y', 'tank@x']) assert.throws(() => v.datasetName(bad), v.ValidationError, bad);
    assert.equal(v.snapshotPath('tank/x@s1'), 'tank/x@s1');
    for (const bad of ['tank/x', 'tank/x@', 'tank/x@a@b', '@s', 'tank/x@$(id)']) assert.throws(() => v.snapshotPath(bad), v.ValidationError, bad);
    assert.equal(v.holdTag('storage:replica:b'), 'storage:replica:b');
    assert.throws(() => v.holdTag('a b'), v.ValidationError);
    assert.equal(v.propertyName('fleet:owner'), 'fleet:owner');
    for (const bad of ['Quota', 'a b', 'x=y', '-o', '']) assert.throws(() => v.propertyName(bad), v.ValidationError, bad);
    assert.throws(() => v.propertyValue('a\nb'), v.ValidationError);
    assert.equal(v.mountpoint('/srv/projects/x'), '/srv/projects/x');
    for (const bad of ['relative', '/a/../b', '/a/./b', '/a\nb']) assert.throws(() => v.mountpoint(bad), v.ValidationError, bad);
    assert.equal(v.hostId('node-1.dc1'), 'node-1.dc1');
    for (const bad of ['Node', '-x', 'a..b', 'a b', '']) assert.throws(() => v.hostId(bad), v.ValidationError, bad);
  });

  it('parses and formats automatic snapshot names', () => {
    const d = new Date('2026-11-22T22:30:05.123Z');
    assert.equal(v.autoSnapshotName(d), '2026-11-22T22:30:05Z');
    assert.equal(v.autoSnapshotName(d, 'auto'), 'auto_2026-11-22T22:30:05Z');
    assert.deepEqual(v.parseAutoSnapshotName('auto_2026-11-22T22:30:05Z'), { prefix: 'auto', time: new Date('2026-11-22T22:30:05Z') });
    assert.equal(v.parseAutoSnapshotName('2026-11-22T22:30:05Z')!.prefix, '');
    assert.equal(v.parseAutoSnapshotName('before-upgrade'), undefined);
    assert.equal(v.parseAutoSnapshotName('2026-13-45T99:99:99Z'), undefined);
  });
});

describe('adapter refuses hostile input before any command runs', () => {
  const runner = new TripwireRunner();
  const zfs = new Zfs({ runner });
  const ds = 'tank/projects/1b4e28ba-2fa1-11d2-883f-0016d3cca427';

  const calls: Array<[string, (bad: string) => Promise<unknown>]> = [
    ['snapshot', (b) => zfs.snapshot([`${ds}@${b}`])],
    ['snapshotRecursive', (b) => zfs.snapshotRecursive(`${ds}@${b}`)],
    ['destroySnapshot', (b) => zfs.destroySnapshot(`${ds}@${b}`)],
    ['destroySnapshots', (b) => zfs.destroySnapshots(ds, [b])],
    ['hold', (b) => zfs.hold(b, [`${ds}@ok`])],
    ['release', (b) => zfs.release('tag', [`${ds}@${b}`])],
    ['rollback', (b) => zfs.rollback(`${ds}@${b}`)],
    ['clone', (b) => zfs.clone(`${ds}@ok`, `tank/${b}`)],
    ['create', (b) => zfs.create(`tank/${b}`)],
    ['destroyDataset', (b) => zfs.destroyDataset(`tank/${b}`)],
    ['rename', (b) => zfs.rename(ds, `tank/${b}`)],
    ['mount', (b) => zfs.mount(`tank/${b}`)],
    ['unmount', (b) => zfs.unmount(`tank/${b}`)],
    ['get', (b) => zfs.get(`tank/${b}/x`, ['guid'])],
    ['set', (b) => zfs.set(ds, { 'fleet:x': `v\n${b}` })],
    ['list', (b) => zfs.list(`tank/${b}`)],
    ['send', (b) => zfs.send({ snapshot: `${ds}@${b}` })],
    ['send base', (b) => zfs.send({ snapshot: `${ds}@ok`, from: b })],
    ['recv', (b) => zfs.recv({ target: `tank/${b}` })],
  ];

  for (const [name, call] of calls) {
    it(`${name}: every hostile string is refused with a ValidationError`, async () => {
      // 'a/b' is a valid dataset path component sequence, so it is not hostile here
      for (const bad of HOSTILE.filter((h) => h !== 'a/b')) {
        await assert.rejects(
          Promise.resolve().then(() => call(bad)),
          (e: unknown) => e instanceof v.ValidationError,
          `${name} accepted ${JSON.stringify(bad)}`,
        );
      }
      assert.deepEqual(runner.ran, [], 'no command may run');
    });
  }
});

// Grammar and authorization fuzz of the forced command, through the real sshd: at least
// 2,000 generated commands from host c's own (valid) key against host b, mutations of
// every protocol command (shell metacharacters, unicode, overlong words, wrong ids,
// other peers' tags, valid-looking operations on projects that are not c's). Only the
// allow-list may succeed (c owns no project: capabilities and its own empty listing);
// everything else is refused with exit 2, b's instrumented zfs runs nothing for it, and
// b's pool lists the same datasets and snapshots afterwards. The seed is printed first;
// FUZZ_SEED=<n> replays a run, FUZZ_COUNT=<n> changes its size. Runs in the zfs-fuse tier
// only (test/run.ts): every command it sends is refused before any zfs command.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, existsSync, writeFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { sandbox, host, sh, scaled, TIME_SCALE } from '../lib/sandbox.js';
import { startFleet, type Fleet } from '../lib/fleet.js';
import { SshConnection } from '../../src/replica/transport.js';
import { prng } from '../lib/prng.js';

const sb = sandbox();
const A = host(sb, 'a');
const B = host(sb, 'b');
const C = host(sb, 'c');
const COUNT = Number(process.env.FUZZ_COUNT) || 2000;
const SEED = Number(process.env.FUZZ_SEED) || Date.now() % 1_000_000_007;
let fleet: Fleet;

const ALLOWED = new Set(['storage-v1 capabilities', 'storage-v1 list']);

function generate(seed: number, n: number, ctx: { project: string; snap: string; guid: string }): string[] {
  const r = prng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const ids = [ctx.project, randomUUIDFrom(r), ctx.project.toUpperCase(), ctx.project.slice(0, 35), `${ctx.project}x`, '../../etc', `${B.pool}/replicas/${ctx.project}`, '00000000-0000-0000-0000-000000000000', ''];
  const snaps = [ctx.snap, 'named-1', '..', `${ctx.snap}/x`, 'a'.repeat(101), '$(id)', ''];
  const tags = ['storage:replica:a', 'storage:replica:b', 'storage:replica:c', 'mytag', 'storage:', ''];
  const tokens = ['1', '2', '999999999999999', '0', '-1', '1e3', 'x', String(Math.floor(r() * 1e6)), ''];
  const valid = (): string => {
    const id = pick(ids);
    switch (pick(['list', 'list-n', 'recv', 'abort-resume', 'rollback-head', 'keep-aside', 'promote', 'fence', 'send', 'hold', 'release', 'capabilities', 'destroy', 'rename'])) {
      case 'list':
        return `storage-v1 list ${id}`;
      case 'list-n':
        return `storage-v1 list ${Array.from({ length: 1 + Math.floor(r() * 70) }, () => pick(ids)).join(' ')}`;
      case 'promote':
        return `storage-v1 promote ${id} ${pick(tokens)} ${pick([ctx.guid, '1', 'x', ''])}`;
      case 'fence':
        return `storage-v1 fence ${id} ${pick(tokens)}`;
      case 'keep-aside':
        return `storage-v1 keep-aside ${id} ${pick([ctx.guid, '1', 'x', ''])}`;
      case 'send':
        return `storage-v1 send ${id}@${pick(snaps)}`;
      case 'hold':
      case 'release':
        return `storage-v1 ${pick(['hold', 'release'])} ${pick(tags)} ${id}@${pick(snaps)}`;
      case 'capabilities':
        return 'storage-v1 capabilities';
      case 'destroy':
        return `storage-v1 destroy ${id}`;
      case 'rename':
        return `storage-v1 rename ${id} ${pick(ids)}`;
      default:
        return `storage-v1 ${pick(['recv', 'abort-resume', 'rollback-head'])} ${id}`;
    }
  };
  const META = [';', '|', '&', '&&', '||', '`id`', '$(id)', '$IFS', '>', '<', '\n', '\r', '\t', '"', "'", '\\', '*', '?', '~', '{a,b}', '[x]', '!', '#', '%00', '\u00a0', '\u202e', 'ｓ', 'é', '😀', '\u200b', '..', '/', '=', ','];
  const mutate = (c: string): string => {
    const words = c.split(' ');
    switch (Math.floor(r() * 10)) {
      case 0: {
        const i = Math.floor(r() * (c.length + 1));
        return c.slice(0, i) + pick(META) + c.slice(i);
      }
      case 1:
        return `${c} ${pick(META)} id`;
      case 2:
        return c.replace(' ', pick(['  ', '\t', ' \u00a0', '']));
      case 3:
        return `${c} ${'A'.repeat(1 + Math.floor(r() * 6000))}`;
      case 4:
        return words.map((w) => (r() < 0.3 ? w.toUpperCase() : w)).join(' ');
      case 5:
        return words.slice(0, Math.max(1, words.length - 1)).join(' ');
      case 6:
        return `${c} ${pick(ids)}`;
      case 7:
        return c.replace('storage-v1', pick(['storage-v2', 'storage', 'STORAGE-V1', 'storage-v1;', '/usr/bin/zfs', 'sh -c', 'storage‐v1']));
      case 8:
        return pick(['', ' ', 'zfs list', 'zfs destroy -r ' + B.pool, 'cat /etc/shadow', 'bash', 'sftp', 'scp -t /tmp', 'rsync --server', 'exec storage-v1 list']);
      default:
        return c;
    }
  };
  const out: string[] = [];
  while (out.length < n) {
    const base = valid();
    out.push(r() < 0.3 ? base : mutate(mutate(base)));
  }
  return out;
}

function randomUUIDFrom(r: () => number): string {
  const h = Array.from({ length: 32 }, () => Math.floor(r() * 16).toString(16)).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-8${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

function zfsCalls(): number {
  const log = `${B.dir}/zfs-calls.log`;
  return existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter(Boolean).length : 0;
}

before(async () => {
  fleet = await startFleet(sb);
});
after(async () => {
  await fleet?.close();
});

describe('serve-ssh fuzz: generated commands from a peer with a valid key', () => {
  it(`${COUNT} commands: only the allow-list is accepted, nothing else runs zfs, b's pool is unchanged`, async () => {
    process.stdout.write(`# serve-ssh fuzz seed ${SEED} (replay: FUZZ_SEED=${SEED}), ${COUNT} commands\n`);
    // project P: primary a, replica on b (so that valid-looking commands name a real replica)
    const id = randomUUID();
    const ds = `${A.pool}/projects/${id}`;
    await fleet.zfs.create(ds, { canmount: 'noauto' });
    await fleet.catalog.createProject({ id, primary: 'a', replicationFactor: 1, quota: null });
    await fleet.catalog.setTargets(id, ['b']);
    for (const h of fleet.agents.keys()) await fleet.catalog.heartbeat(h, 0, Date.now());
    const cyc = await fleet.agents.get('a')!.runCycle();
    assert.deepEqual(cyc.failures, []);
    const replica = (await fleet.zfs.list(`${B.pool}/replicas/${id}`)).get(`${B.pool}/replicas/${id}`)!;
    const newest = replica.snapshots[replica.snapshots.length - 1]!;
    const commands = generate(SEED, COUNT, { project: id, snap: newest.snap, guid: newest.guid });

    const conn = new SshConnection({ host: 'b', address: B.address, port: 22 }, {
      user: 'root',
      privateKey: C.replKey,
      knownHostsFile: sb.knownHosts,
      keepaliveSeconds: 15,
      connectTimeoutSeconds: 10,
      operationTimeoutSeconds: 60 * TIME_SCALE,
      stallTimeoutSeconds: 60,
      compression: false,
    });
    await conn.exec('storage-v1 capabilities'); // the capability cache is warm before counting
    const datasets = () => sh(['zfs', 'list', '-H', '-o', 'name', '-t', 'all', '-r', B.pool]);
    const before = { calls: zfsCalls(), datasets: datasets() };
    const accepted: string[] = [];
    const notRefused: string[] = [];
    let refused = 0;
    const byExit = new Map<string, number>();
    const t0 = Date.now();
    let next = 0;
    const worker = async () => {
      while (next < commands.length) {
        const cmd = commands[next++]!;
        const r = await conn.exec(cmd, { timeoutSeconds: scaled(60) });
        byExit.set(String(r.code), (byExit.get(String(r.code)) ?? 0) + 1);
        if (r.code === 0) {
          if (!ALLOWED.has(cmd)) accepted.push(cmd);
        } else if (r.code === 2 && /storagectl serve-ssh: refused: /.test(r.stderr)) refused++;
        else notRefused.push(`${JSON.stringify(cmd).slice(0, 200)} -> exit ${r.code}: ${r.stderr.slice(0, 200)}`);
      }
    };
    await Promise.all(Array.from({ length: 6 }, worker));
    conn.close();
    const ms = Date.now() - t0;
    const after = { calls: zfsCalls(), datasets: datasets() };
    writeFileSync(`${sb.dir}/fuzz-${SEED}.txt`, commands.map((c) => JSON.stringify(c)).join('\n'));
    process.stdout.write(`# serve-ssh fuzz: ${commands.length} commands in ${(ms / 1000).toFixed(1)} s; exits ${JSON.stringify(Object.fromEntries(byExit))}; refused ${refused}; accepted outside the allow-list ${accepted.length}; zfs calls ${after.calls - before.calls}\n`);
    assert.deepEqual(accepted, [], 'accepted outside the allow-list');
    assert.deepEqual(notRefused.slice(0, 10), [], `${notRefused.length} commands neither accepted nor refused with exit 2`);
    assert.equal(after.calls - before.calls, 0, 'zfs commands ran on b');
    assert.equal(after.datasets, before.datasets, "b's datasets and snapshots changed");
    assert.ok(commands.length >= 2000 || process.env.FUZZ_COUNT, `at least 2,000 commands (${commands.length})`);
    assert.ok(refused >= commands.length * 0.9, `most generated commands are refused (${refused})`);
  });
});

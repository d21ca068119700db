// Runs test tiers with node's test runner and ends with one line per tier:
//   tier <name>: N passed, N failed, N skipped
// Usage: node dist/test/run.js TIER[=DIR[,DIR...]] ...   (DIRs default to TIER_DIRS, else dist/test/<tier>)
// A tier whose directory holds no test file counts as a failure: a tier that runs
// nothing must never look green.
import { run } from 'node:test';
import { spec } from 'node:test/reporters';
import { readdirSync, existsSync, appendFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

interface Tally {
  passed: number;
  failed: number;
  skipped: number;
  failures: string[];
}

const TIER_DIRS: Record<string, string | string[]> = {
  unit: 'unit',
  // zfs-fuse also runs the long operational scenarios (failover with agent processes,
  // move under writes, restore): implementation-neutral logic over the same adapter calls
  // the openzfs tier proves; under qemu's emulation they would double that tier's time
  // and the receiver's fuzz (2,000 SSH sessions: minutes here, hours under emulation; the
  // commands it sends are refused before any zfs command, so the zfs underneath is moot)
  'zfs-fuse': ['integration', 'operations', 'fuzz'],
  // real OpenZFS (kernel module) in the openzfs-vm guests, the two side by side on the
  // machine's two cores under emulation (CI time; run-all.sh starts 2.1 when 2.3's guest
  // starts its tests): between them, what depends on the zfs underneath. Every
  // integration file also runs on zfs-fuse in every run; the whole set in one guest:
  // OPENZFS_TIER_DIRS=system,integration,openzfs (tier.sh).
  // The current line (2.3, Debian trixie, systemd as PID 1): the system tests (the .deb,
  // the shipped unit, a reboot with 1,000 projects), the adapter, the OpenZFS paths of
  // the adapter and the agent, the rolling audit (it lists only the datasets whose
  // `snapshots_changed` moved: 2.2 and later), and fencing on a kernel mount (a busy
  // primary: 2.3 cannot set readonly live on it; a crash at a failover step)
  'openzfs-2.3': ['system', 'integration/zfs-adapter.test.js', 'integration/audit.test.js', 'integration/fencing.test.js', 'openzfs/openzfs-features.test.js'],
  // the oldest supported line (2.1, Debian bookworm): the adapter, the OpenZFS paths,
  // resumable receive, and the receiver against a hostile peer and a crafted stream on a
  // real `recv -o/-x`
  'openzfs-2.1': ['openzfs', 'integration/zfs-adapter.test.js', 'integration/hostile-peer.test.js'],
  prometheus: 'prometheus',
  contract: 'contract',
  cassandra: 'cassandra',
  // three Cassandra nodes, one per sandbox datacenter (test/env/cassandra/cluster.sh)
  'cassandra-cluster': 'cassandra-cluster',
  // random faults against the fleet on that cluster, with an invariant checker (test/chaos)
  chaos: 'chaos',
};

// Every test file's process imports lib/flush-on-exit.js first (NODE_OPTIONS reaches the
// processes run() spawns): the forced exit below must not lose the file's last reports.
process.env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} --import=${pathToFileURL(join(dirname(fileURLToPath(import.meta.url)), 'lib', 'flush-on-exit.js')).href}`.trim();

/** a directory's test files, or the entry itself when it names one test file */
function filesOf(dir: string): string[] {
  if (dir.endsWith('.test.js')) return [dir];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.test.js'))
    .sort()
    .map((f) => join(dir, f));
}

/** tiers whose files must exit on their own (no forceExit): see runTier */
const EXITS_ON_ITS_OWN = new Set(['cassandra', 'cassandra-cluster']);

async function runTier(name: string, dirs: string[], only?: string): Promise<Tally> {
  const tally: Tally = { passed: 0, failed: 0, skipped: 0, failures: [] };
  const dir = dirs.join(', ');
  // a directory named for the tier that is not there is a failure, not a smaller tier
  const missing = dirs.filter((d) => !existsSync(d.replace(/^!/, '')));
  for (const d of missing) {
    tally.failed++;
    tally.failures.push(`no such test directory: ${d}`);
  }
  let files = dirs.filter((d) => !d.startsWith('!') && !missing.includes(d)).flatMap(filesOf);
  // "!DIR/FILE.test.js": a file of a listed directory left out of this tier
  const excluded = dirs.filter((d) => d.startsWith('!')).map((d) => d.slice(1));
  files = files.filter((f) => !excluded.includes(f));
  if (only) files = files.filter((f) => f.includes(only));
  if (files.length === 0) {
    if (missing.length < dirs.length) {
      tally.failed++;
      tally.failures.push(`no test files in ${dir}`);
    }
    return tally;
  }
  process.stdout.write(`\n=== tier ${name}: ${files.length} file(s) from ${dir}\n`);
  // forceExit: a file whose tests are done must not hang the tier on a handle left open
  // (a test's forgotten connection or timer): it ends. The catalog tiers run without it:
  // their files must end on their own once every catalog is closed, the proof that the
  // driver leaves nothing behind (src/catalog/driver-hosts.ts); a handle left open there
  // hangs the file until the timeout, a failure. A forced exit
  // can lose the file's last reports (nodejs/node#64833): lib/flush-on-exit.js (above)
  // prevents that, and the checks below fail the tier if any result is missing all the same.
  const scale = Number(process.env.TEST_TIMEOUT_SCALE) || 1;
  const stream = run({ files, concurrency: 1, timeout: 20 * 60_000 * scale, forceExit: !EXITS_ON_ITS_OWN.has(name) } as Parameters<typeof run>[0]);
  // Every test that started must end in a pass or a fail, and every file must report.
  // Without this, a file whose results were cut off looks smaller and green: seen once in
  // a loaded CI run, a suite's last three tests and the suite itself never reported, and
  // the tier said 157 passed, 0 failed instead of 160.
  const open = new Map<string, { file: string; name: string; count: number }>();
  const reported = new Set<string>();
  const key = (d: TestId) => `${d.file ?? ''}:${d.line ?? 0}:${d.column ?? 0}:${d.nesting}:${d.name}`;
  stream.on('test:start', (d) => {
    const k = key(d);
    const o = open.get(k) ?? { file: d.file ?? '', name: d.name, count: 0 };
    o.count++;
    open.set(k, o);
  });
  // Node stands in a test named after the file when the file's process gave no results:
  // as a fail when it exited non-zero, as a PASS when it exited 0 (process.exit() with its
  // reports still buffered). Only a file's own tests count as its results.
  const standIn = (d: TestId): boolean => d.nesting === 0 && d.file !== undefined && d.name === d.file;
  const ended = (d: TestId): void => {
    if (d.file && !standIn(d)) reported.add(resolve(d.file));
    const k = key(d);
    const o = open.get(k);
    if (o && --o.count === 0) open.delete(k);
  };
  stream.on('test:pass', (d) => {
    ended(d);
    if (d.details?.type === 'suite' || standIn(d)) return;
    if (d.skip || d.todo) tally.skipped++;
    else tally.passed++;
  });
  stream.on('test:fail', (d) => {
    ended(d);
    if (d.details?.type === 'suite') {
      // a suite fails on its own only when a hook or the file itself failed
      const err = d.details?.error as { failureType?: string } | undefined;
      if (err?.failureType === 'subtestsFailed') return;
    }
    tally.failed++;
    tally.failures.push(`${d.file ?? ''} > ${d.name}`);
  });
  await new Promise<void>((resolveDone, reject) => {
    const out = stream.compose(new spec() as unknown as NodeJS.ReadWriteStream);
    out.on('data', (chunk: string | Buffer) => process.stdout.write(chunk));
    out.on('end', resolveDone);
    out.on('error', reject);
  });
  for (const o of open.values()) {
    tally.failed += o.count;
    tally.failures.push(`${o.file} > ${o.name}: started but never reported a result (the file's results were cut off)`);
  }
  for (const f of files.filter((f) => !reported.has(resolve(f)))) {
    tally.failed++;
    tally.failures.push(`${f}: reported no test result (its process ended before its reports arrived)`);
  }
  return tally;
}

interface TestId {
  name: string;
  nesting: number;
  file?: string;
  line?: number;
  column?: number;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const only = process.env.TEST_ONLY;
  const base = resolve(new URL('.', import.meta.url).pathname);
  const results: Array<[string, Tally]> = [];
  for (const arg of args.length ? args : ['unit']) {
    const [name, dirArg] = arg.split('=') as [string, string | undefined];
    const dirs = dirArg ? dirArg.split(',') : [TIER_DIRS[name] ?? name].flat().map((d) => (d.startsWith('!') ? `!${join(base, d.slice(1))}` : join(base, d)));
    results.push([name, await runTier(name, dirs, only)]);
  }
  process.stdout.write('\n');
  let bad = false;
  for (const [name, t] of results) {
    for (const f of t.failures) process.stdout.write(`FAILED [${name}] ${f}\n`);
    if (t.failed > 0) bad = true;
    // nothing here is allowed to skip quietly: in CI a skipped test fails the run
    if (t.skipped > 0 && process.env.CI) {
      process.stdout.write(`FAILED [${name}] ${t.skipped} test(s) skipped; CI does not accept skips\n`);
      bad = true;
    }
  }
  const lines = results.map(([name, t]) => `tier ${name}: ${t.passed} passed, ${t.failed} failed, ${t.skipped} skipped`);
  for (const l of lines) process.stdout.write(`${l}\n`);
  if (process.env.TIER_SUMMARY_FILE) appendFileSync(process.env.TIER_SUMMARY_FILE, lines.join('\n') + '\n');
  process.exitCode = bad ? 1 : 0;
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 2;
});

// npm run chaos -- --minutes 60 [--seed S] [--projects N] [--kinds k1,k2]: the long form of tier chaos,
// run by test/chaos/run.sh inside the sandbox's control namespace with the cluster up.
// Prints the seed first, every fault as it is applied, the counts, and each violation;
// exit 0 when none, 1 otherwise.
import { sandbox } from '../lib/sandbox.js';
import { runChaos, summary } from './run-chaos.js';
import { FAULT_KINDS, type FaultKind } from './schedule.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const minutes = Number(arg('minutes') ?? 10);
const seed = arg('seed') !== undefined ? Number(arg('seed')) : Math.floor(Math.random() * 2 ** 31);
const projects = Number(arg('projects') ?? 6);
const kinds = arg('kinds')?.split(',') as FaultKind[] | undefined;
if (kinds?.some((k) => !FAULT_KINDS.includes(k))) {
  process.stderr.write(`--kinds: one of ${FAULT_KINDS.join(', ')}\n`);
  process.exit(2);
}
if (!Number.isFinite(minutes) || minutes <= 0 || !Number.isInteger(seed) || !Number.isInteger(projects) || projects < 1) {
  process.stderr.write('usage: npm run chaos -- [--minutes M] [--seed S] [--projects N]\n');
  process.exit(2);
}
process.stdout.write(`chaos: seed ${seed}, ${minutes} min, ${projects} projects\n`);
const r = await runChaos(sandbox(), { seed, durationMs: minutes * 60_000, projects, ...(kinds ? { kinds } : {}), log: (l) => process.stdout.write(`${new Date().toISOString()} ${l}\n`) });
process.stdout.write(`chaos: ${summary(r)}\n`);
for (const v of r.violations) process.stdout.write(`VIOLATION ${v.invariant}: ${v.detail}\n`);
process.stdout.write(JSON.stringify(r) + '\n');
process.exit(r.violations.length ? 1 : 0);

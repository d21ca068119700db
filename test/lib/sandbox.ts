// Access to the multi-host sandbox built by test/env/sandbox.sh. A missing sandbox is
// a loud failure, never a skip: the integration tiers exist to run on real parts.
import { readFileSync, existsSync, writeFileSync, renameSync } from 'node:fs';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';

export interface SandboxHost {
  name: string;
  datacenter: string;
  netns: string;
  /** argv prefix that runs a command inside this host's network namespace */
  exec: string[];
  address: string;
  port: number;
  pool: string;
  dir: string;
  mountBase: string;
  /** this host's own replication key (every host's sshd knows it as peer <name>) */
  replKey: string;
}

export interface Sandbox {
  name: string;
  /** the ZFS the sandbox's pools live on: zfs-fuse (default) or the OpenZFS kernel module */
  zfs?: 'fuse' | 'kernel';
  dir: string;
  controlNetns: string;
  repo: string;
  adminKey: string;
  knownHosts: string;
  hosts: SandboxHost[];
}

export function sandbox(): Sandbox {
  const path = process.env.SANDBOX_MANIFEST ?? '/var/tmp/storage-sandbox-stt/sandbox.json';
  if (!existsSync(path)) {
    throw new Error(
      `REAL PART MISSING: no sandbox manifest at ${path}. Integration tests run against real zfs-fuse pools, ` +
        `namespaces and sshd: start them with 'bash test/env/sandbox.sh up --name stt' (npm test does this).`,
    );
  }
  const sb = JSON.parse(readFileSync(path, 'utf8')) as Sandbox;
  if (!Array.isArray(sb.hosts) || sb.hosts.length < 2) throw new Error(`sandbox manifest ${path} lists fewer than 2 hosts`);
  return sb;
}

export function host(sb: Sandbox, name: string): SandboxHost {
  const h = sb.hosts.find((x) => x.name === name);
  if (!h) throw new Error(`sandbox has no host '${name}' (hosts: ${sb.hosts.map((x) => x.name).join(', ')})`);
  return h;
}

/** 'openzfs' for kernel-module sandboxes (the openzfs tier), else 'zfs-fuse'. */
export function expectedImplementation(sb: Sandbox): 'openzfs' | 'zfs-fuse' {
  return sb.zfs === 'kernel' ? 'openzfs' : 'zfs-fuse';
}

/**
 * Wall-clock bounds in tests are multiplied by TEST_TIMEOUT_SCALE (default 1): the
 * openzfs tier runs under qemu's software emulation, several times slower than a host.
 */
export const TIME_SCALE = Math.max(1, Number(process.env.TEST_TIMEOUT_SCALE) || 1);
export function scaled(ms: number): number {
  return ms * TIME_SCALE;
}

/** A unique short component for per-test dataset roots. */
export function uniq(prefix = 't'): string {
  return `${prefix}${randomUUID().slice(0, 8)}`;
}

/** Runs a command, returns stdout; throws with stderr on failure. */
export function sh(argv: string[], opts: { input?: string | Buffer } = {}): string {
  return execFileSync(argv[0]!, argv.slice(1), { encoding: 'utf8', input: opts.input, stdio: ['pipe', 'pipe', 'pipe'] });
}

export function shStatus(argv: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** sha256 of every regular file below dir, as "relpath sha" lines (sorted). */
export function treeChecksum(dir: string): string {
  return sh(['bash', '-c', 'cd "$1" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum', '_', dir]);
}

/** Recursively destroys a test-owned dataset tree (test cleanup only; never in product code). */
export function destroyTestTree(dataset: string): void {
  // a test's root (<pool>/t<hex>), a chaos run's (<pool>/chaos-<keyspace tag>), or a copy a
  // chaos run's project left in conflicts/ (<pool>/conflicts/<uuid>-<time>[-replica])
  const ok = /^[a-z0-9]+-[a-z0-9]+\/(t[0-9a-f]{8}|chaos-[a-z0-9]+-[0-9]+|conflicts\/[0-9a-f]{8}-[0-9a-f-]{27}-[0-9TZ-]+(-replica)?)$/;
  if (!ok.test(dataset)) throw new Error(`refusing to clean up '${dataset}': not a test root`);
  // the agents' holds (replica bases, `storage:replica:<host>`) would make the destroy
  // refuse: released first (zfs-fuse has no `zfs holds`; userrefs says which are held)
  const held = spawnSync('zfs', ['list', '-H', '-r', '-t', 'snapshot', '-o', 'name,userrefs', dataset], { encoding: 'utf8' })
    .stdout.split('\n')
    .map((l) => l.split('\t'))
    .filter(([name, refs]) => name && Number(refs) > 0)
    .map(([name]) => name!);
  for (const snap of held) for (const h of ['a', 'b', 'c']) spawnSync('zfs', ['release', `storage:replica:${h}`, snap]);
  spawnSync('zfs', ['destroy', '-r', '-f', dataset]);
}

/**
 * Points every host's receiver (the forced command reads <host dir>/agent.yaml) at the
 * catalog a test's agents use: the receivers authorize each command from the catalog,
 * so they must see the same projects, hosts and leases (a function: per host, e.g. each
 * host's own datacenter). Test files run one at a time.
 */
export function setReceiverCatalog(hosts: readonly SandboxHost[], catalog: Record<string, unknown> | ((h: SandboxHost) => Record<string, unknown>)): void {
  for (const h of hosts) {
    const file = `${h.dir}/agent.yaml`;
    const doc = parseYaml(readFileSync(file, 'utf8')) as Record<string, unknown>;
    doc.catalog = typeof catalog === 'function' ? catalog(h) : catalog;
    writeFileSync(`${file}.tmp`, `# sandbox host ${h.name}: written by test/env/sandbox.sh, catalog set by the running test\n${stringifyYaml(doc)}`);
    renameSync(`${file}.tmp`, file);
  }
}

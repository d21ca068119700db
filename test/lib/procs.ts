// Real storage-agent / storagectl processes on sandbox hosts (inside each host's network
// namespace, as systemd would run them), on a catalog file chosen by the test.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { scaled, setReceiverCatalog, type Sandbox, type SandboxHost } from './sandbox.js';
import { sleep } from './fleet.js';

const execFileP = promisify(execFile);

/**
 * Writes <host dir>/<name>.yaml: the host's agent.yaml with another catalog, interval,
 * metrics port and extra YAML; the host's receiver is pointed at the same catalog.
 */
export function writeAgentConfig(h: SandboxHost, name: string, o: { catalogPath: string; interval?: string; metricsPort: number; extra?: string }): string {
  const path = `${h.dir}/${name}.yaml`;
  const catalog = { backend: 'sqlite', path: o.catalogPath };
  const doc = parseYaml(readFileSync(`${h.dir}/agent.yaml`, 'utf8')) as Record<string, unknown>;
  doc.catalog = catalog;
  doc.interval = o.interval ?? '2s';
  doc.metrics = { ...(doc.metrics as object), listen: `${h.address}:${o.metricsPort}` };
  writeFileSync(path, stringifyYaml(doc) + (o.extra ?? ''));
  setReceiverCatalog([h], catalog);
  return path;
}

export class AgentProcess {
  proc?: ChildProcess;
  output = '';
  /** ms: when the last process exited (any cause) */
  exitedAt?: number;
  constructor(
    readonly sb: Sandbox,
    readonly h: SandboxHost,
    readonly configPath: string,
  ) {}

  /** o.env: extra environment; o.wrap: a command to run it under (e.g. faketime); o.keepOutput: append to the output so far */
  start(o: { env?: Record<string, string>; wrap?: string[]; keepOutput?: boolean } = {}): this {
    if (!o.keepOutput) this.output = '';
    const p = spawn('nsenter', [`--net=/run/netns/${this.h.netns}`, ...(o.wrap ?? []), 'node', `${this.sb.repo}/bin/storage-agent`, '--config', this.configPath, '--shutdown-grace', '1'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: o.env ? { ...process.env, ...o.env } : process.env,
    });
    p.once('exit', () => (this.exitedAt = Date.now()));
    p.stdout!.on('data', (d: Buffer) => (this.output += d.toString()));
    p.stderr!.on('data', (d: Buffer) => (this.output += d.toString()));
    this.proc = p;
    return this;
  }

  /** SIGKILL: the agent dies without any cleanup (mounts stay as they are). */
  async kill(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await gone;
  }

  dump(path: string): void {
    writeFileSync(path, this.output);
  }
}

/**
 * The agents' logs next to the sandbox as <prefix>-<host>.log (and in the VM tier's
 * results); with tails, their last lines on stdout (a failing test's context).
 */
export function dumpAgents(sb: Sandbox, agents: ReadonlyMap<string, AgentProcess>, prefix: string, tails: number): void {
  for (const [n, a] of agents) {
    a.dump(`${sb.dir}/${prefix}-${n}.log`);
    if (process.env.OPENZFS_RESULTS_DIR) a.dump(`${process.env.OPENZFS_RESULTS_DIR}/${prefix}-${n}.log`);
    if (!tails) continue;
    const tail = a.output.trim().split('\n').slice(-tails).map((l) => `# [agent ${n}] ${l.slice(0, 400)}`);
    process.stdout.write(tail.join('\n') + '\n');
  }
}

/** storagectl in a host's namespace; resolves with exit code and output (never rejects). */
/**
 * Runs storagectl in the host's network namespace. o.env: extra environment (e.g.
 * STORAGE_CRASH_AT); o.wrap: a command to run it under (e.g. ['faketime', '-f', '+120s']).
 * code: the exit code, -1 when killed by a signal (signal says which).
 */
export async function storagectl(
  sb: Sandbox,
  h: SandboxHost,
  configPath: string,
  args: string[],
  timeoutMs = scaled(120_000),
  o: { env?: Record<string, string>; wrap?: string[] } = {},
): Promise<{ code: number; stdout: string; stderr: string; signal?: string }> {
  try {
    const r = await execFileP('nsenter', [`--net=/run/netns/${h.netns}`, ...(o.wrap ?? []), `${sb.repo}/bin/storagectl`, '--config', configPath, ...args], {
      timeout: timeoutMs,
      maxBuffer: 64 << 20,
      env: o.env ? { ...process.env, ...o.env } : process.env,
    });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code?: number; signal?: string; stdout?: string; stderr?: string; message: string };
    return { code: typeof x.code === 'number' ? x.code : -1, stdout: x.stdout ?? '', stderr: x.stderr ?? x.message, signal: x.signal ?? undefined };
  }
}

export async function waitFor(what: string, fn: () => boolean | Promise<boolean>, ms = 30_000, onTimeout?: () => void): Promise<number> {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    if (await fn()) return Date.now() - t0;
    await sleep(200);
  }
  onTimeout?.();
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

/**
 * Samples, every `everyMs`, where the project is mounted writable (mounted=yes,
 * readonly=off) across all sandbox pools, with one `zfs list` per sample.
 */
export class MountSampler {
  samples: Array<{ at: number; writable: string[]; reachable: Set<string> }> = [];
  private timer?: NodeJS.Timeout;
  private busy = false;
  constructor(
    private readonly sb: Sandbox,
    private readonly project: string,
    private readonly reachable: () => Set<string>,
    private readonly everyMs = 250,
  ) {}

  start(): this {
    this.timer = setInterval(() => void this.sample(), this.everyMs);
    return this;
  }

  private async sample(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const reachable = this.reachable();
      // one call over the sandbox hosts' projects roots only (cheap even on a busy zfs-fuse)
      const { stdout } = await execFileP('zfs', ['list', '-H', '-t', 'filesystem', '-o', 'name,mounted,readonly', '-r', '-d', '1', ...this.sb.hosts.map((h) => `${h.pool}/projects`)]).catch((e: { stdout?: string }) => ({ stdout: e.stdout ?? '' }));
      const writable: string[] = [];
      for (const line of stdout.split('\n')) {
        const [name, mounted, ro] = line.split('\t');
        if (!name?.endsWith(`/projects/${this.project}`) || mounted !== 'yes' || ro !== 'off') continue;
        const h = this.sb.hosts.find((x) => name.startsWith(`${x.pool}/`));
        if (h) writable.push(h.name);
      }
      this.samples.push({ at: Date.now(), writable, reachable });
    } catch {
      /* a failed sample is not evidence either way */
    } finally {
      this.busy = false;
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** most writable mounts on reachable hosts at one instant */
  maxReachableWritable(): { max: number; at?: number; hosts?: string[] } {
    let best: { max: number; at?: number; hosts?: string[] } = { max: 0 };
    for (const s of this.samples) {
      const hs = s.writable.filter((h) => s.reachable.has(h));
      if (hs.length > best.max) best = { max: hs.length, at: s.at, hosts: hs };
    }
    return best;
  }

  maxWritable(): number {
    return Math.max(0, ...this.samples.map((s) => s.writable.length));
  }
}

// Typed adapter over the zfs/zpool command line. argv arrays only (never a shell);
// every name is validated before a command is built; failures are typed errors that
// carry argv and stderr. One listing call returns every dataset and snapshot under a
// root, whatever the implementation (zfs-fuse has no `list -p`, so it uses `get -p -r`).
import { PassThrough, type Readable, type Writable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { statSync, readFileSync, writeFileSync, mkdirSync, renameSync } from 'node:fs';
import { dirname } from 'node:path';
import { deriveCapabilities, type Capabilities } from './capabilities.js';
import { ZfsCommandError, ZfsUnsupportedError, makeZfsError, formatArgv } from './errors.js';
import { parseGetRows, parseListRows, parseCheapGetRows, parseCheapListRows, parseResumeTokenContents, type DatasetTree, type ScopedListing } from './parse.js';
import { CommandRunner } from './runner.js';
import * as v from '../util/validate.js';

export interface ListOptions {
  /** extra properties to fetch in the same call (e.g. mountpoint, mounted, user props) */
  props?: readonly string[];
  /** include snapshots (default true) */
  snapshots?: boolean;
  /** limit recursion depth */
  depth?: number;
}

export interface CreateOptions {
  parents?: boolean;
  canmount?: 'on' | 'off' | 'noauto';
  mountpoint?: string;
  readonly?: boolean;
  props?: Record<string, string>;
}

export interface SendOptions {
  /** dataset@snap to send */
  snapshot: string;
  /** incremental base (dataset@snap or just the snap name) */
  from?: string;
  /** 'I' sends every intermediate snapshot (default), 'i' only the delta */
  incremental?: 'i' | 'I';
  /** -R: the whole subtree with properties and snapshots (default true) */
  replicate?: boolean;
  /** -c/-L/-e where supported (OpenZFS); ignored elsewhere */
  compressed?: boolean;
  /** -p: send properties without -R */
  props?: boolean;
}

export interface RecvOptions {
  /** dataset to receive into */
  target: string;
  /** -F: roll back the target to its newest snapshot and destroy snapshots absent from a -R stream */
  force?: boolean;
  /** -u where supported: do not mount */
  noMount?: boolean;
  /** -s where supported: keep partial state and a resume token */
  resumable?: boolean;
  /** -o prop=value where supported */
  setProps?: Record<string, string>;
  /** -x prop where supported */
  excludeProps?: readonly string[];
}

/** A running zfs send: read `stream`; `done` settles when the process exits. */
export interface SendHandle {
  argv: readonly string[];
  stream: Readable;
  done: Promise<void>;
  kill(): void;
}

/** A running zfs recv: write into `stream`; `done` settles when the process exits. */
export interface RecvHandle {
  argv: readonly string[];
  stream: Writable;
  done: Promise<void>;
  kill(): void;
}

export interface ZfsOptions {
  runner?: CommandRunner;
  zfs?: string;
  zpool?: string;
  /**
   * A file caching the probe result across processes (the SSH receiver is one process
   * per command). Reused while the zfs binary's path, size and mtime are unchanged.
   */
  capabilitiesCache?: string;
}

/** bytes of names per listing call: far below ARG_MAX (2 MiB) and MAX_ARG_STRLEN; ~2,300 project datasets */
export const LIST_BATCH_BYTES = 128 * 1024;

/** Consecutive batches of names whose lengths add up to at most `maxBytes` each. */
export function nameBatches(names: readonly string[], maxBytes = LIST_BATCH_BYTES): string[][] {
  const out: string[][] = [];
  let cur: string[] = [];
  let size = 0;
  for (const n of names) {
    if (cur.length && size + n.length + 1 > maxBytes) {
      out.push(cur);
      cur = [];
      size = 0;
    }
    cur.push(n);
    size += n.length + 1;
  }
  if (cur.length) out.push(cur);
  return out;
}

export class Zfs {
  readonly runner: CommandRunner;
  private readonly zfsBin: string;
  private readonly zpoolBin: string;
  private caps?: Promise<Capabilities>;
  private readonly capsCache?: string;

  constructor(opts: ZfsOptions = {}) {
    this.runner = opts.runner ?? new CommandRunner();
    this.zfsBin = opts.zfs ?? 'zfs';
    this.zpoolBin = opts.zpool ?? 'zpool';
    this.capsCache = opts.capabilitiesCache;
  }

  private binaryStamp(): string | undefined {
    const dirs = this.zfsBin.includes('/') ? [''] : (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':').map((d) => `${d}/`);
    for (const d of dirs) {
      try {
        const st = statSync(`${d}${this.zfsBin}`);
        return `${this.runner.prefix.join(' ')}|${d}${this.zfsBin}|${st.size}|${st.mtimeMs}`;
      } catch {
        /* next */
      }
    }
    return undefined;
  }

  private zfs(...args: string[]): Promise<{ stdout: string; stderr: string }> {
    return this.runner.run([this.zfsBin, ...args]);
  }

  // ---- capabilities ---------------------------------------------------------------

  /** Probes once per adapter (3-4 cheap calls) and caches the result. */
  capabilities(): Promise<Capabilities> {
    this.caps ??= this.cachedProbe().catch((e) => {
      this.caps = undefined;
      throw e;
    });
    return this.caps;
  }

  private async cachedProbe(): Promise<Capabilities> {
    if (!this.capsCache) return this.probe();
    const stamp = this.binaryStamp();
    try {
      const c = JSON.parse(readFileSync(this.capsCache, 'utf8')) as { stamp: string; caps: Capabilities };
      if (stamp && c.stamp === stamp && c.caps && typeof c.caps.implementation === 'string') return c.caps;
    } catch {
      /* no cache yet */
    }
    const caps = await this.probe();
    if (stamp) {
      try {
        mkdirSync(dirname(this.capsCache), { recursive: true });
        writeFileSync(`${this.capsCache}.tmp${process.pid}`, JSON.stringify({ stamp, caps }));
        renameSync(`${this.capsCache}.tmp${process.pid}`, this.capsCache);
      } catch {
        /* a cache is an optimisation only */
      }
    }
    return caps;
  }

  private async probe(): Promise<Capabilities> {
    const any = { okCodes: [0, 1, 2] };
    const version = await this.runner.run([this.zfsBin, 'version'], any).catch((e: unknown) => {
      if (e instanceof ZfsCommandError && e.exitCode === null) throw e; // zfs not installed
      return { stdout: '', stderr: '' };
    });
    const usage = await this.runner.run([this.zfsBin, '-?'], any).catch(() => ({ stdout: '', stderr: '' }));
    let usageText = usage.stdout + usage.stderr;
    if (!/receive/.test(usageText)) {
      const u2 = await this.runner.run([this.zfsBin], any);
      usageText = u2.stdout + u2.stderr;
    }
    const getUsage = await this.runner.run([this.zfsBin, 'get'], any);
    const zpoolUsage = await this.runner.run([this.zpoolBin, '-?'], any).catch(() => ({ stdout: '', stderr: '' }));
    const versionOut = /zfs-\d/.test(version.stdout) ? version.stdout : null;
    return deriveCapabilities({
      versionOut,
      usage: usageText,
      getUsage: getUsage.stdout + getUsage.stderr,
      zpoolUsage: zpoolUsage.stdout + zpoolUsage.stderr,
    });
  }

  // ---- listing ----------------------------------------------------------------------

  /**
   * Every dataset (and snapshot) under `root`, in exactly ONE zfs command, with guid,
   * createtxg, creation, used, referenced, written (where supported) and extra props.
   */
  async list(root: string, opts: ListOptions = {}): Promise<DatasetTree> {
    v.datasetName(root, 'list root');
    const extra = (opts.props ?? []).map((p) => v.propertyName(p, 'list properties'));
    const caps = await this.capabilities();
    // zfs counts a snapshot one level below its dataset: to get the snapshots of the
    // datasets at depth d, ask for d+1 and drop the datasets deeper than d afterwards.
    const maxDepth = opts.depth !== undefined ? Math.max(0, Math.floor(opts.depth)) : undefined;
    const askDepth = maxDepth === undefined ? undefined : maxDepth + (opts.snapshots === false ? 0 : 1);
    const depth = askDepth !== undefined ? ['-d', String(askDepth)] : ['-r'];
    // zfs-fuse answers `zfs get` property by property, so every property costs at 10,000
    // datasets: ask only for what the planner, retention and dirty tracking use (`type`
    // and `used` come free with `zfs list -p`; with `zfs get` the type follows from '@')
    const core = [...(caps.listParsable ? ['type', 'used'] : []), 'guid', 'createtxg', 'creation', 'referenced', ...(caps.written ? ['written'] : []), 'userrefs'];
    const wanted = [...core, ...extra.filter((p) => !core.includes(p))];
    if (caps.listParsable) {
      const cols = ['name', ...wanted];
      const types = opts.snapshots === false ? 'filesystem,volume' : 'filesystem,volume,snapshot';
      const { stdout } = await this.zfs('list', '-H', '-p', ...depth, '-t', types, '-o', cols.join(','), root);
      return trimDepth(parseListRows(stdout, cols, extra), root, maxDepth);
    }
    const { stdout } = await this.zfs('get', '-H', '-p', ...depth, '-o', 'name,property,value', wanted.join(','), root);
    const tree = trimDepth(parseGetRows(stdout, extra), root, maxDepth);
    if (opts.snapshots === false) for (const ds of tree.values()) ds.snapshots = [];
    return tree;
  }

  /** Counters of snapshot listings (benchmarks and tests assert the hot path makes none). */
  readonly stats = { snapshotListings: 0, snapshotsListed: 0 };

  /**
   * The snapshots of the NAMED datasets only (never a tree): one call per batch of
   * LIST_BATCH_BYTES of names, cheap columns only (name, guid, createtxg: OpenZFS's fast path from
   * 2.2 on; zfs-fuse answers property by property, so fewer properties cost less). The
   * creation time of an automatic snapshot is read from its name; only named snapshots
   * (rare, never pruned) cost a second call for `creation`. Datasets that do not exist
   * are returned in `missing`, not as an error.
   */
  async listSnapshots(datasets: readonly string[], opts: { knownCreation?: (dataset: string, snap: string, guid: string) => number | undefined } = {}): Promise<ScopedListing> {
    datasets.forEach((d) => v.datasetName(d, 'listSnapshots'));
    const out: ScopedListing = { snapshots: new Map(), missing: [] };
    const caps = await this.capabilities();
    const named: string[] = [];
    for (const batch of nameBatches(datasets)) {
      const argv = caps.listParsable
        ? ['list', '-H', '-p', '-d', '1', '-t', 'snapshot', '-o', 'name,guid,createtxg', ...batch]
        : ['get', '-H', '-p', '-d', '1', '-o', 'name,property,value', 'guid,createtxg', ...batch];
      const { stdout, missing } = await this.tolerantRun(argv);
      this.stats.snapshotListings++;
      out.missing.push(...missing);
      const gone = new Set(missing);
      for (const d of batch) if (!gone.has(d)) out.snapshots.set(d, []);
      const rows = caps.listParsable ? parseCheapListRows(stdout) : parseCheapGetRows(stdout);
      for (const r of rows) {
        const list = out.snapshots.get(r.dataset);
        if (!list) continue; // zfs -d 1 of a name also lists nothing deeper; ignore anything unexpected
        this.stats.snapshotsListed++;
        const auto = v.parseAutoSnapshotName(r.snap);
        const known = opts.knownCreation?.(r.dataset, r.snap, r.guid);
        const creation = known ?? (auto ? Math.floor(auto.time.getTime() / 1000) : NaN);
        if (!Number.isFinite(creation)) named.push(`${r.dataset}@${r.snap}`);
        list.push({ snap: r.snap, guid: r.guid, createtxg: r.createtxg, creation });
      }
    }
    if (named.length) {
      const creations = await this.getMany(named, ['creation']);
      for (const [ds, list] of out.snapshots) {
        for (const s of list) if (!Number.isFinite(s.creation)) s.creation = Number(creations.values.get(`${ds}@${s.snap}`)?.creation ?? NaN);
      }
    }
    for (const list of out.snapshots.values()) list.sort((a, b) => a.createtxg - b.createtxg);
    return out;
  }

  /**
   * Properties of the NAMED datasets or snapshots (one call per batch): e.g. `written` of
   * the mounted projects. Names that do not exist are returned in `missing`.
   */
  async getMany(names: readonly string[], props: readonly string[]): Promise<{ values: Map<string, Record<string, string>>; missing: string[] }> {
    names.forEach((n) => validateDatasetOrSnapshot(n, 'getMany'));
    props.forEach((p) => v.propertyName(p, 'getMany'));
    const values = new Map<string, Record<string, string>>();
    const missing: string[] = [];
    if (props.length === 0) return { values, missing };
    for (const batch of nameBatches(names)) {
      const r = await this.tolerantRun(['get', '-H', '-p', '-o', 'name,property,value', props.join(','), ...batch]);
      missing.push(...r.missing);
      for (const line of r.stdout.split('\n')) {
        if (!line) continue;
        const [name, prop, ...rest] = line.split('\t');
        if (name === undefined || prop === undefined) continue;
        let rec = values.get(name);
        if (!rec) values.set(name, (rec = {}));
        rec[prop] = rest.join('\t');
      }
    }
    return { values, missing };
  }

  /**
   * A listing command over several names: exit 1 with nothing but "dataset does not
   * exist" on stderr means some names are gone (their rows are simply absent), which is
   * an answer, not a failure. Anything else on stderr is the command's error.
   */
  private async tolerantRun(args: string[]): Promise<{ stdout: string; missing: string[] }> {
    const argv = [this.zfsBin, ...args];
    const r = await this.runner.run(argv, { okCodes: [0, 1] });
    const missing: string[] = [];
    const other: string[] = [];
    for (const line of r.stderr.split('\n')) {
      if (!line.trim()) continue;
      const m = /^cannot open '([^']+)': (dataset does not exist|snapshot does not exist|no such pool|dataset not found)/.exec(line);
      if (m) missing.push(m[1]!);
      else other.push(line);
    }
    if (other.length) {
      throw makeZfsError([...this.runner.prefix, ...argv], 1, null, r.stderr);
    }
    return { stdout: r.stdout, missing };
  }

  /** The names of the filesystems and volumes directly below `root` (names only: no snapshot is opened). [] when root is missing. */
  async childNames(root: string): Promise<string[]> {
    v.datasetName(root, 'childNames');
    try {
      const { stdout } = await this.zfs('list', '-H', '-o', 'name', '-d', '1', '-t', 'filesystem,volume', root);
      return stdout.split('\n').filter((n) => n && n !== root);
    } catch (e) {
      if (e instanceof ZfsCommandError && e.kind === 'not-found') return [];
      throw e;
    }
  }

  /** Whether a dataset exists (one call). */
  async exists(dataset: string): Promise<boolean> {
    validateDatasetOrSnapshot(dataset, 'exists');
    try {
      await this.zfs('get', '-H', '-o', 'value', 'type', dataset);
      return true;
    } catch (e) {
      if (e instanceof ZfsCommandError && e.kind === 'not-found') return false;
      throw e;
    }
  }

  // ---- properties -------------------------------------------------------------------

  async get(dataset: string, props: readonly string[]): Promise<Record<string, string>> {
    validateDatasetOrSnapshot(dataset, 'get');
    if (props.length === 0) return {};
    props.forEach((p) => v.propertyName(p, 'get'));
    const { stdout } = await this.zfs('get', '-H', '-p', '-o', 'property,value', props.join(','), dataset);
    const out: Record<string, string> = {};
    for (const line of stdout.split('\n')) {
      if (!line) continue;
      const t = line.indexOf('\t');
      out[line.slice(0, t)] = line.slice(t + 1);
    }
    return out;
  }

  /** Values and their source (local, received, default, inherited from X) in one call. */
  async getWithSource(dataset: string, props: readonly string[]): Promise<Map<string, { value: string; source: string }>> {
    validateDatasetOrSnapshot(dataset, 'get');
    const out = new Map<string, { value: string; source: string }>();
    if (props.length === 0) return out;
    props.forEach((p) => v.propertyName(p, 'get'));
    const { stdout } = await this.zfs('get', '-H', '-p', '-o', 'property,value,source', props.join(','), dataset);
    for (const line of stdout.split('\n')) {
      if (!line) continue;
      const [name, value, ...source] = line.split('\t');
      out.set(name!, { value: value ?? '', source: source.join('\t') });
    }
    return out;
  }

  async set(dataset: string, props: Record<string, string>): Promise<void> {
    validateDatasetOrSnapshot(dataset, 'set');
    const pairs = Object.entries(props).map(([k, val]) => `${v.propertyName(k, 'set')}=${v.propertyValue(val, `set ${k}`)}`);
    if (pairs.length === 0) return;
    const caps = await this.capabilities();
    if (caps.multiSet) {
      await this.zfs('set', ...pairs, dataset);
    } else {
      for (const p of pairs) await this.zfs('set', p, dataset);
    }
  }

  async inherit(dataset: string, prop: string): Promise<void> {
    v.datasetName(dataset, 'inherit');
    await this.zfs('inherit', v.propertyName(prop, 'inherit'), dataset);
  }

  // ---- datasets ---------------------------------------------------------------------

  async create(dataset: string, opts: CreateOptions = {}): Promise<void> {
    v.datasetName(dataset, 'create');
    const args = ['create'];
    if (opts.parents) args.push('-p');
    const props: Record<string, string> = { ...(opts.props ?? {}) };
    if (opts.canmount) props.canmount = opts.canmount;
    if (opts.mountpoint !== undefined) props.mountpoint = v.mountpoint(opts.mountpoint, 'create');
    if (opts.readonly !== undefined) props.readonly = opts.readonly ? 'on' : 'off';
    for (const [k, val] of Object.entries(props)) args.push('-o', `${v.propertyName(k, 'create')}=${v.propertyValue(val, `create ${k}`)}`);
    await this.zfs(...args, dataset);
  }

  /**
   * Creates the dataset unless it exists (a concurrent creator's "already exists" is
   * fine). For the fixed roots: projects, replicas, conflicts, restore.
   */
  async ensureDataset(dataset: string, opts: CreateOptions = {}): Promise<void> {
    if (await this.exists(dataset)) return;
    try {
      await this.create(dataset, opts);
    } catch (e) {
      if (!(e instanceof ZfsCommandError && e.kind === 'exists')) throw e;
    }
  }

  /**
   * Destroys ONE dataset that has no children and no snapshots. Never recursive.
   * Unmounts it first (zfs-fuse answers "dataset is busy" to a destroy of a mounted fs).
   */
  async destroyDataset(dataset: string): Promise<void> {
    v.datasetName(dataset, 'destroy');
    if (!dataset.includes('/')) throw new v.ValidationError('dataset', 'destroy', 'is a pool root: refusing to destroy it', dataset);
    const { mounted } = await this.get(dataset, ['mounted']);
    if (mounted === 'yes') await this.unmount(dataset);
    // zfs-fuse releases an unmounted file system asynchronously
    await retryBusy(() => this.zfs('destroy', dataset));
  }

  async rename(from: string, to: string): Promise<void> {
    validateDatasetOrSnapshot(from, 'rename source');
    validateDatasetOrSnapshot(to, 'rename target');
    if (from.includes('@') !== to.includes('@')) throw new v.ValidationError('rename', `${from} -> ${to}`, 'cannot rename between a dataset and a snapshot', to);
    // an unmounted file system that zfs-fuse has not released yet (seen in the chaos tier:
    // a move's source kept as a replica just after its unmount)
    await retryBusy(() => this.zfs('rename', from, to));
  }

  async mount(dataset: string): Promise<void> {
    v.datasetName(dataset, 'mount');
    await this.zfs('mount', dataset);
  }

  async unmount(dataset: string, opts: { force?: boolean } = {}): Promise<void> {
    v.datasetName(dataset, 'unmount');
    await this.zfs('unmount', ...(opts.force ? ['-f'] : []), dataset);
  }

  // ---- snapshots --------------------------------------------------------------------

  /**
   * Takes the given snapshots (each dataset@name). OpenZFS: one atomic call for all,
   * except that one call may hold only one snapshot per dataset ("multiple snapshots of
   * same fs not allowed"): a second snapshot of a dataset starts the next call.
   * zfs-fuse takes one snapshot per call, so this makes one call per snapshot there.
   * Returns the number of zfs calls made.
   */
  async snapshot(snapshots: readonly string[]): Promise<number> {
    snapshots.forEach((s) => v.snapshotPath(s, 'snapshot'));
    if (snapshots.length === 0) return 0;
    const caps = await this.capabilities();
    if (caps.batchSnapshot) {
      // stay well below ARG_MAX: ~1000 names per call
      const batches: string[][] = [];
      let batch: string[] = [];
      let inBatch = new Set<string>();
      for (const s of snapshots) {
        const ds = s.slice(0, s.indexOf('@'));
        if (batch.length >= 1000 || inBatch.has(ds)) {
          batches.push(batch);
          batch = [];
          inBatch = new Set();
        }
        batch.push(s);
        inBatch.add(ds);
      }
      batches.push(batch);
      for (const b of batches) await this.zfs('snapshot', ...b);
      return batches.length;
    }
    for (const s of snapshots) await this.zfs('snapshot', s);
    return snapshots.length;
  }

  /** `zfs snapshot -r dataset@name`: one atomic call for a dataset and all its children. */
  async snapshotRecursive(snapshot: string): Promise<void> {
    v.snapshotPath(snapshot, 'snapshot -r');
    await this.zfs('snapshot', '-r', snapshot);
  }

  /** Destroys ONE snapshot (dataset@name). Never -r, never a dataset. */
  async destroySnapshot(snapshot: string): Promise<void> {
    v.snapshotPath(snapshot, 'destroy snapshot');
    await this.zfs('destroy', snapshot);
  }

  /** Destroys several snapshots of one dataset (one call on OpenZFS). Returns calls made. */
  async destroySnapshots(dataset: string, names: readonly string[]): Promise<number> {
    v.datasetName(dataset, 'destroy snapshots');
    names.forEach((n) => v.snapshotName(n, 'destroy snapshots'));
    if (names.length === 0) return 0;
    const caps = await this.capabilities();
    if (caps.destroySnapshotList) {
      await this.zfs('destroy', `${dataset}@${names.join(',')}`);
      return 1;
    }
    for (const n of names) await this.zfs('destroy', `${dataset}@${n}`);
    return names.length;
  }

  async hold(tag: string, snapshots: readonly string[]): Promise<void> {
    v.holdTag(tag, 'hold');
    snapshots.forEach((s) => v.snapshotPath(s, 'hold'));
    if (snapshots.length) await this.zfs('hold', tag, ...snapshots);
  }

  async release(tag: string, snapshots: readonly string[]): Promise<void> {
    v.holdTag(tag, 'release');
    snapshots.forEach((s) => v.snapshotPath(s, 'release'));
    if (snapshots.length) await this.zfs('release', tag, ...snapshots);
  }

  /** Hold tags on a snapshot. Where `zfs holds` is broken (zfs-fuse) only the count is known. */
  async holds(snapshot: string): Promise<{ count: number; tags?: string[] }> {
    v.snapshotPath(snapshot, 'holds');
    const caps = await this.capabilities();
    if (caps.holdsList) {
      const { stdout } = await this.zfs('holds', '-H', snapshot);
      const tags = stdout.split('\n').filter(Boolean).map((l) => l.split('\t')[1]!).sort();
      return { count: tags.length, tags };
    }
    const { userrefs } = await this.get(snapshot, ['userrefs']);
    return { count: Number(userrefs) || 0 };
  }

  /**
   * Rolls back to a snapshot. Plain `zfs rollback` only works to the NEWEST snapshot;
   * rolling back further would need -r, which destroys later snapshots: we never do that
   * (callers restore older states with clone/promote-free paths instead).
   */
  async rollback(snapshot: string): Promise<void> {
    v.snapshotPath(snapshot, 'rollback');
    await this.zfs('rollback', snapshot);
  }

  async clone(snapshot: string, target: string, opts: CreateOptions = {}): Promise<void> {
    v.snapshotPath(snapshot, 'clone source');
    v.datasetName(target, 'clone target');
    const args = ['clone'];
    if (opts.parents) args.push('-p');
    const props: Record<string, string> = { ...(opts.props ?? {}) };
    if (opts.canmount) props.canmount = opts.canmount;
    if (opts.mountpoint !== undefined) props.mountpoint = v.mountpoint(opts.mountpoint, 'clone');
    if (opts.readonly !== undefined) props.readonly = opts.readonly ? 'on' : 'off';
    for (const [k, val] of Object.entries(props)) args.push('-o', `${v.propertyName(k, 'clone')}=${v.propertyValue(val, `clone ${k}`)}`);
    await this.zfs(...args, snapshot, target);
  }

  // ---- send / receive ---------------------------------------------------------------

  /** argv of a send (validated); exported for the transport and the receiver. */
  async sendArgv(o: SendOptions & { resumeToken?: string }): Promise<string[]> {
    const args = [this.zfsBin, 'send'];
    if (o.resumeToken !== undefined) {
      if (!/^[0-9a-f-]+$/i.test(o.resumeToken) || o.resumeToken.length > 4096) {
        throw new v.ValidationError('resume token', 'send', 'must be 1-4096 hex digits and dashes', o.resumeToken);
      }
      const caps = await this.capabilities();
      if (!caps.sendResume) throw new ZfsUnsupportedError('zfs send -t (resume)', caps.version);
      return [...args, ...(o.compressed && caps.sendCompressed ? ['-c'] : []), '-t', o.resumeToken];
    }
    v.snapshotPath(o.snapshot, 'send');
    const from = o.from === undefined ? undefined : o.from.includes('@') ? v.snapshotPath(o.from, 'send base') : `@${v.snapshotName(o.from, 'send base')}`;
    if (from && !from.startsWith('@') && from.split('@')[0] !== o.snapshot.split('@')[0]) {
      throw new v.ValidationError('send base', `send ${o.snapshot}`, 'must be a snapshot of the same dataset', from);
    }
    const caps = await this.capabilities();
    if (o.replicate !== false) args.push('-R');
    else if (o.props) args.push('-p');
    if (o.compressed) {
      if (caps.sendCompressed) args.push('-c');
      if (caps.sendLargeBlocks) args.push('-L');
      if (caps.sendEmbedded) args.push('-e');
    }
    if (from !== undefined) args.push(o.incremental === 'i' ? '-i' : '-I', from);
    args.push(o.snapshot);
    return args;
  }

  async recvArgv(o: RecvOptions): Promise<string[]> {
    v.datasetName(o.target, 'receive target');
    const overrides: string[] = [];
    for (const [k, val] of Object.entries(o.setProps ?? {})) overrides.push('-o', `${v.propertyName(k, 'receive -o')}=${v.propertyValue(val, `receive -o ${k}`)}`);
    for (const p of o.excludeProps ?? []) overrides.push('-x', v.propertyName(p, 'receive -x'));
    const caps = await this.capabilities();
    const args = [this.zfsBin, 'receive'];
    if (o.force) args.push('-F');
    if (o.noMount && caps.recvNoMount) args.push('-u');
    if (o.resumable && caps.recvResumable) args.push('-s');
    if (caps.recvPropertyOverride) args.push(...overrides);
    args.push(o.target);
    return args;
  }

  /** Starts `zfs send`; the caller must consume `stream`. */
  async send(o: SendOptions & { resumeToken?: string }): Promise<SendHandle> {
    const argv = await this.sendArgv(o);
    return this.startSend(argv);
  }

  startSend(argv: readonly string[]): SendHandle {
    const child = this.runner.spawn(argv);
    child.stdin!.end();
    const done = exitPromise(child, [...this.runner.prefix, ...argv]);
    // Consume stdout at once: when a child exits, Node resumes its unread stdio streams
    // to drain them, and a stream nobody has attached to yet loses its data. The
    // PassThrough keeps it (backpressure still reaches zfs send through the pipe).
    const stream = child.stdout!.pipe(new PassThrough({ highWaterMark: 4 << 20 }));
    return { argv, stream, done, kill: () => child.kill('SIGTERM') };
  }

  /** Starts `zfs receive`; the caller writes the stream into `stream` and ends it. */
  async recv(o: RecvOptions): Promise<RecvHandle> {
    const argv = await this.recvArgv(o);
    return this.startRecv(argv);
  }

  startRecv(argv: readonly string[]): RecvHandle {
    const child = this.runner.spawn(argv);
    child.stdout!.resume();
    const done = exitPromise(child, [...this.runner.prefix, ...argv]);
    // a receiver that dies makes writes fail with EPIPE: that is reported through `done`
    child.stdin!.on('error', () => {});
    return { argv, stream: child.stdin!, done, kill: () => child.kill('SIGTERM') };
  }

  /**
   * `zfs receive` reading this process's own stdin (fd 0) directly: the SSH receiver
   * hands sshd's pipe to zfs, with no copy through Node. (zfs-fuse was seen to fail
   * "failed to read from stream" when fed through the socketpair Node gives children.)
   */
  async recvFromStdin(o: RecvOptions): Promise<{ argv: readonly string[]; done: Promise<void> }> {
    const argv = await this.recvArgv(o);
    const child = this.runner.spawn(argv, undefined, { stdin: 'inherit' });
    child.stdout!.resume();
    return { argv, done: exitPromise(child, [...this.runner.prefix, ...argv]) };
  }

  /**
   * `zfs send` writing to this process's own stdout (fd 1) directly: the SSH receiver
   * hands sshd's pipe to zfs (restore fetches a snapshot back from a replica).
   */
  async sendToStdout(o: SendOptions): Promise<{ argv: readonly string[]; done: Promise<void> }> {
    const argv = await this.sendArgv(o);
    const child = this.runner.spawn(argv, undefined, { stdout: 'inherit' });
    child.stdin!.end();
    return { argv, done: exitPromise(child, [...this.runner.prefix, ...argv]) };
  }

  /**
   * What a resume token would send (`zfs send -nv -t`): the snapshot it names and its
   * guid. A token comes from the target (input from outside): the agent uses one only
   * when it names the project's own dataset and a snapshot it has (see resumeTokenProblem).
   */
  async decodeResumeToken(token: string): Promise<{ toname: string; toguid: string; fromguid?: string }> {
    const argv = await this.sendArgv({ snapshot: 'x@x', resumeToken: token });
    // the contents are printed before zfs looks the snapshot up: a token whose snapshot
    // is gone still says what it names (exit 1, with the reason on stderr)
    const r = await this.runner.run([...argv.slice(0, 2), '-n', '-v', ...argv.slice(2)], { okCodes: [0, 1] });
    return parseResumeTokenContents(`${r.stdout}\n${r.stderr}`);
  }

  /** The resume token of an interrupted resumable receive (OpenZFS), if any. */
  async resumeToken(dataset: string): Promise<string | undefined> {
    v.datasetName(dataset, 'resume token');
    const caps = await this.capabilities();
    if (!caps.recvResumable) return undefined;
    const { receive_resume_token: t } = await this.get(dataset, ['receive_resume_token']);
    return t && t !== '-' ? t : undefined;
  }

  /** Discards the partial state of an interrupted resumable receive (`zfs recv -A`). */
  async abortResumable(dataset: string): Promise<void> {
    v.datasetName(dataset, 'recv -A');
    const caps = await this.capabilities();
    if (!caps.recvResumable) throw new ZfsUnsupportedError('zfs recv -A', caps.version);
    await this.zfs('receive', '-A', dataset);
  }

  // ---- pools ------------------------------------------------------------------------

  async pools(): Promise<Array<{ name: string; health: string; size: number; free: number }>> {
    const { stdout } = await this.runner.run([this.zpoolBin, 'list', '-H', '-o', 'name,health,size,free']);
    return stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const [name, health, size, free] = l.split('\t');
        return { name: name!, health: health!, size: parseSize(size!), free: parseSize(free!) };
      });
  }

  /** Imports a pool without mounting its datasets where the implementation allows (-N). */
  async importPool(name: string, opts: { dir?: string } = {}): Promise<{ mountedAll: boolean }> {
    v.datasetName(name, 'zpool import');
    const caps = await this.capabilities();
    const args = [this.zpoolBin, 'import'];
    if (caps.importNoMount) args.push('-N');
    if (opts.dir) args.push('-d', v.mountpoint(opts.dir, 'zpool import -d'));
    await this.runner.run([...args, name]);
    return { mountedAll: !caps.importNoMount };
  }

  describe(argv: readonly string[]): string {
    return formatArgv(argv);
  }
}

function trimDepth(tree: DatasetTree, root: string, maxDepth: number | undefined): DatasetTree {
  if (maxDepth === undefined) return tree;
  const base = root.split('/').length;
  for (const name of [...tree.keys()]) if (name.split('/').length - base > maxDepth) tree.delete(name);
  return tree;
}

function validateDatasetOrSnapshot(name: string, where: string): void {
  if (typeof name === 'string' && name.includes('@')) v.snapshotPath(name, where);
  else v.datasetName(name, where);
}

/**
 * Runs a zfs call again while it fails with "busy", briefly (~4 s in all): zfs-fuse
 * releases a file system asynchronously after an unmount or after it was last read. For
 * calls where busy is transient by construction; never for a fence (busy there means
 * processes, which the fence handles).
 */
export async function retryBusy<T>(fn: () => Promise<T>, attempts = 6): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      if (!(e instanceof ZfsCommandError && e.kind === 'busy') || attempt >= attempts) throw e;
      await new Promise((r) => setTimeout(r, 200 * attempt));
    }
  }
}

function exitPromise(child: import('node:child_process').ChildProcess, argv: readonly string[]): Promise<void> {
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    if (stderr.length < 65536) stderr += d.toString('utf8');
  });
  return new Promise((resolve, reject) => {
    child.once('error', (e: NodeJS.ErrnoException) => reject(makeZfsError(argv, null, null, `cannot execute ${argv[0]}: ${e.message}`)));
    child.once('close', (code, signal) => {
      if (code === 0) resolve();
      else reject(makeZfsError(argv, code, signal, stderr));
    });
  });
}

/** "504M" -> bytes (zpool list without -p on zfs-fuse). */
export function parseSize(s: string): number {
  const m = /^([\d.]+)([KMGTPE]?)$/.exec(s.trim());
  if (!m) return NaN;
  const mult = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50, E: 2 ** 60 }[m[2] as '' | 'K'];
  return Math.round(Number(m[1]) * mult);
}

/**
 * Pipes a local send into a local receive (with backpressure) and settles when both
 * processes exited. On failure it reports the root cause: the receiver's error first
 * (a dying receiver makes the sender die of SIGPIPE), then the sender's, then the pipe's.
 */
export async function pipeSendToRecv(send: SendHandle, recv: RecvHandle, through?: Transform): Promise<void> {
  const piped$ = through ? pipeline(send.stream, through, recv.stream) : pipeline(send.stream, recv.stream);
  const [piped, sent, received] = await Promise.allSettled([piped$, send.done, recv.done]);
  if (received.status === 'rejected') throw received.reason;
  if (sent.status === 'rejected') throw sent.reason;
  if (piped.status === 'rejected' && !wholeStreamTaken(send.stream, piped.reason as Error)) throw piped.reason;
}

/**
 * A `zfs receive` that exited 0 (the caller checked) while the pipe into it failed only
 * because its stdin closed first: Node saw the child's exit before the pipe's last write
 * completed (seen under load as "Premature close"). Not an error when the source had been
 * read to its end; anything left unread is.
 */
export function wholeStreamTaken(source: Readable, e: Error): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return source.readableEnded && (code === 'ERR_STREAM_PREMATURE_CLOSE' || code === 'EPIPE');
}

// Parsers for zfs's scripted (-H) output. Pure functions; unit-tested on captured text.

export interface SnapshotInfo {
  /** full name dataset@snap */
  name: string;
  dataset: string;
  snap: string;
  /** decimal string: guids are 64-bit and exceed Number's precision */
  guid: string;
  createtxg: number;
  /** unix seconds */
  creation: number;
  /** NaN where not listed (zfs-fuse listings skip it) */
  used: number;
  referenced: number;
  /** bytes written since the previous snapshot; undefined where unsupported */
  written?: number;
  /** number of user holds; undefined where unknown */
  userrefs?: number;
}

export interface DatasetInfo {
  name: string;
  type: 'filesystem' | 'volume';
  guid: string;
  createtxg: number;
  creation: number;
  used: number;
  referenced: number;
  /** bytes written since the newest snapshot (OpenZFS only) */
  written?: number;
  /** extra properties requested by the caller, raw values ('-' = unset) */
  props: Record<string, string>;
  /** oldest first (by createtxg) */
  snapshots: SnapshotInfo[];
}

export type DatasetTree = Map<string, DatasetInfo>;

const CORE = new Set(['type', 'guid', 'createtxg', 'creation', 'used', 'referenced', 'written', 'userrefs']);

function num(v: string | undefined): number {
  if (v === undefined || v === '-' || v === '') return NaN;
  return Number(v);
}

function optNum(v: string | undefined): number | undefined {
  const n = num(v);
  return Number.isFinite(n) ? n : undefined;
}

type Row = Map<string, string>;

function assemble(rows: Map<string, Row>, extra: readonly string[]): DatasetTree {
  const tree: DatasetTree = new Map();
  const snaps: SnapshotInfo[] = [];
  for (const [name, r] of rows) {
    const at = name.indexOf('@');
    if (at >= 0) {
      snaps.push({
        name,
        dataset: name.slice(0, at),
        snap: name.slice(at + 1),
        guid: r.get('guid') ?? '',
        createtxg: num(r.get('createtxg')),
        creation: num(r.get('creation')),
        used: num(r.get('used')),
        referenced: num(r.get('referenced')),
        written: optNum(r.get('written')),
        userrefs: optNum(r.get('userrefs')),
      });
      continue;
    }
    if (name.includes('#')) continue; // bookmarks are not datasets
    const type = r.get('type');
    const props: Record<string, string> = {};
    for (const p of extra) props[p] = r.get(p) ?? '-';
    tree.set(name, {
      name,
      type: type === 'volume' ? 'volume' : 'filesystem',
      guid: r.get('guid') ?? '',
      createtxg: num(r.get('createtxg')),
      creation: num(r.get('creation')),
      used: num(r.get('used')),
      referenced: num(r.get('referenced')),
      written: optNum(r.get('written')),
      props,
      snapshots: [],
    });
  }
  for (const s of snaps) tree.get(s.dataset)?.snapshots.push(s);
  for (const ds of tree.values()) ds.snapshots.sort((a, b) => a.createtxg - b.createtxg || a.creation - b.creation);
  return tree;
}

/** `zfs get -H -p -r -o name,property,value P1,P2,... ROOT` (works on every implementation). */
export function parseGetRows(text: string, extra: readonly string[] = []): DatasetTree {
  const rows = new Map<string, Row>();
  for (const line of text.split('\n')) {
    if (!line) continue;
    const t1 = line.indexOf('\t');
    const t2 = line.indexOf('\t', t1 + 1);
    if (t1 < 0 || t2 < 0) throw new Error(`unexpected zfs get line (expected name<TAB>property<TAB>value): ${JSON.stringify(line.slice(0, 200))}`);
    const name = line.slice(0, t1);
    const prop = line.slice(t1 + 1, t2);
    const value = line.slice(t2 + 1);
    let r = rows.get(name);
    if (!r) rows.set(name, (r = new Map()));
    r.set(prop, value);
  }
  for (const [name, r] of rows) if (!r.has('type')) r.set('type', name.includes('@') ? 'snapshot' : 'filesystem');
  return assemble(rows, extra);
}

/** `zfs list -H -p -r -t filesystem,volume,snapshot -o name,COLS... ROOT` (OpenZFS). */
export function parseListRows(text: string, columns: readonly string[], extra: readonly string[] = []): DatasetTree {
  if (columns[0] !== 'name') throw new Error('parseListRows: first column must be name');
  const rows = new Map<string, Row>();
  for (const line of text.split('\n')) {
    if (!line) continue;
    const f = line.split('\t');
    if (f.length !== columns.length) throw new Error(`unexpected zfs list line (expected ${columns.length} tab-separated fields): ${JSON.stringify(line.slice(0, 200))}`);
    const r: Row = new Map();
    columns.forEach((c, i) => r.set(c, f[i]!));
    rows.set(f[0]!, r);
  }
  return assemble(rows, extra);
}

export function isCoreProperty(p: string): boolean {
  return CORE.has(p);
}

/** One snapshot as the cheap scoped listing gives it (see Zfs.listSnapshots). */
export interface CheapSnapshot {
  snap: string;
  guid: string;
  createtxg: number;
  /** unix seconds: from the automatic name, the cache, or a `creation` query for named ones */
  creation: number;
}

/** The answer of a scoped listing: per named dataset its snapshots (oldest first), and the names that do not exist. */
export interface ScopedListing {
  snapshots: Map<string, CheapSnapshot[]>;
  missing: string[];
}

interface CheapRow {
  dataset: string;
  snap: string;
  guid: string;
  createtxg: number;
}

function cheapRow(name: string, guid: string | undefined, txg: string | undefined, line: string): CheapRow {
  const at = name.indexOf('@');
  const createtxg = Number(txg);
  if (at <= 0 || !guid || !/^\d{1,20}$/.test(guid) || !Number.isSafeInteger(createtxg)) throw new Error(`unexpected zfs snapshot row: ${JSON.stringify(line.slice(0, 200))}`);
  return { dataset: name.slice(0, at), snap: name.slice(at + 1), guid, createtxg };
}

/** `zfs list -H -p -d 1 -t snapshot -o name,guid,createtxg DS...` (OpenZFS). */
export function parseCheapListRows(text: string): CheapRow[] {
  const out: CheapRow[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [name, guid, txg] = line.split('\t');
    out.push(cheapRow(name ?? '', guid, txg, line));
  }
  return out;
}

/** `zfs get -H -p -d 1 -o name,property,value guid,createtxg DS...` (zfs-fuse): snapshot rows only. */
export function parseCheapGetRows(text: string): CheapRow[] {
  const rows = new Map<string, { guid?: string; txg?: string; line: string }>();
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [name, prop, value] = line.split('\t');
    if (!name || !name.includes('@') || name.includes('#')) continue; // the datasets' own rows
    let r = rows.get(name);
    if (!r) rows.set(name, (r = { line }));
    if (prop === 'guid') r.guid = value;
    else if (prop === 'createtxg') r.txg = value;
  }
  return [...rows].map(([name, r]) => cheapRow(name, r.guid, r.txg, r.line));
}

/**
 * `zfs send -nv -t TOKEN` prints the token's contents as an nvlist ("toname = pool/fs@snap",
 * "toguid = 0x..."). Returns the named snapshot and its guid in decimal.
 */
export function parseResumeTokenContents(text: string): { toname: string; toguid: string; fromguid?: string } {
  const field = (name: string) => new RegExp(`^\\s*${name} = (\\S+)\\s*$`, 'm').exec(text)?.[1];
  const toname = field('toname');
  const toguid = field('toguid');
  if (!toname || !toguid || !/^0x[0-9a-f]{1,16}$/i.test(toguid)) {
    throw new Error(`cannot read the resume token's contents (zfs send -nv -t): ${JSON.stringify(text.slice(0, 300))}`);
  }
  const from = field('fromguid');
  return { toname, toguid: BigInt(toguid).toString(), ...(from && /^0x[0-9a-f]{1,16}$/i.test(from) && BigInt(from) !== 0n ? { fromguid: BigInt(from).toString() } : {}) };
}

// What a `zfs send` stream will bring, read from its first bytes before any zfs command
// runs: the receiver refuses streams that carry child datasets or volumes, and sees the
// properties a replication (-R) stream would set. The input comes from an untrusted peer:
// every length is bounded and malformed input fails with a StreamHeaderError.
//
// Layout (OpenZFS include/sys/zfs_ioctl.h, lib/libzfs/libzfs_sendrecv.c; zfs-fuse writes
// the same): a stream is a sequence of dmu_replay_record_t, 312 bytes each, in the
// sender's native byte order, some followed by a payload of drr_payloadlen bytes.
//   record:      drr_type u32 @0 (DRR_BEGIN = 0, DRR_END = 5), drr_payloadlen u32 @4,
//   drr_begin:   drr_magic u64 @8 (0x2F5bacbac), drr_versioninfo u64 @16 (bits 0-1: header
//                type, 1 = substream, 2 = compound; bits 2-57: feature flags),
//                drr_creation_time u64 @24, drr_type u32 @32 (dmu_objset_type_t: 2 = ZFS
//                filesystem, 3 = ZVOL), drr_flags u32 @36, drr_toguid u64 @40,
//                drr_fromguid u64 @48, drr_toname char[256] @56.
// A plain `zfs send`, `send -i` or a resumed `send -t` starts with a substream BEGIN. A
// compound stream (`send -R`, `-p`, `-I`) starts with a compound BEGIN whose payload is an
// XDR-packed nvlist (empty for a bare `send -I`), then a DRR_END, then the substreams, each
// with its own substream BEGIN; a package with no substream ends with a second DRR_END.
import { Readable } from 'node:stream';

export const DRR_RECORD_SIZE = 312;
export const DMU_BACKUP_MAGIC = 0x2f5bacbacn;
export const DRR_BEGIN = 0;
export const DRR_END = 5;
export const DMU_SUBSTREAM = 1;
export const DMU_COMPOUNDSTREAM = 2;
export const DMU_OST_ZFS = 2;
export const DMU_OST_ZVOL = 3;
/** a few DMU_BACKUP_FEATURE_* bits of featureflags, for callers that refuse some */
export const STREAM_FEATURE = {
  DEDUP: 1 << 0,
  SA_SPILL: 1 << 2,
  EMBED_DATA: 1 << 16,
  LZ4: 1 << 17,
  LARGE_BLOCKS: 1 << 19,
  RESUMING: 1 << 20,
  REDACTED: 1 << 21,
  COMPRESSED: 1 << 22,
  LARGE_DNODE: 1 << 23,
  RAW: 1 << 24,
  ZSTD: 1 << 25,
  HOLDS: 1 << 26,
} as const;

const OFF_MAGIC = 8;
const OFF_VERSIONINFO = 16;
const OFF_CREATION = 24;
const OFF_OBJSET_TYPE = 32;
const OFF_FLAGS = 36;
const OFF_TOGUID = 40;
const OFF_FROMGUID = 48;
const OFF_TONAME = 56;
const TONAME_LEN = 256;

export const DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024;
export const DEFAULT_MAX_DEPTH = 32;
export const DEFAULT_MAX_PAIRS = 1_000_000;

export interface StreamHeaderOptions {
  /** largest compound-header nvlist accepted (drr_payloadlen); default 16 MiB */
  maxPayloadBytes?: number;
  /** deepest nvlist nesting accepted (the top list is depth 1); default 32 */
  maxDepth?: number;
  /** most nvpairs accepted in the whole header, nested ones included; default 1,000,000 */
  maxPairs?: number;
}

export type StreamErrorCode = 'truncated' | 'bad-magic' | 'unsupported' | 'too-large' | 'malformed';

export class StreamHeaderError extends Error {
  constructor(
    readonly code: StreamErrorCode,
    message: string,
    /** byte offset in the stream the problem was found at, when known */
    readonly offset?: number,
  ) {
    super(`zfs send stream: ${message}${offset === undefined ? '' : ` (at byte ${offset})`}`);
    this.name = 'StreamHeaderError';
  }
}

export type StreamPropValue = string | number | boolean | 'nested';

export interface StreamDataset {
  /** full name on the sending side, e.g. pool/projects/p1 */
  name: string;
  /** compound: the key of the entry in "fss" (zfs-fuse and OpenZFS write "0x<hex guid>"); substream: null */
  guid: string | null;
  /**
   * the properties the stream would set ("props" of the fss entry: only those set locally
   * on the sender, or received there with `send -b`; the stream does not say which).
   * uint64 values are numbers (a decimal string past 2^53), strings are strings, booleans
   * booleans; a nested nvlist becomes its "value" when it has one, else 'nested', like any
   * other non-scalar.
   */
  props: Record<string, StreamPropValue>;
  /** short names of the snapshots listed in "snaps" of the fss entry (compound only) */
  snapshots: string[];
  /** the fss entry has an "origin": the dataset is a clone on the sending side */
  clone: boolean;
}

export interface StreamHeader {
  kind: 'compound' | 'substream';
  /**
   * drr_type of the first substream's BEGIN; 'none' for a compound stream that carries no
   * substream at all (its header is followed by the closing DRR_END)
   */
  topType: 'filesystem' | 'volume' | 'other' | 'none';
  /** drr_toname of the first substream's BEGIN ('none': of the compound BEGIN), e.g. pool/fs@snap */
  toname: string;
  /**
   * compound: every entry of "fss" in stream order; otherwise the one dataset of toname,
   * without props. This is what the sender declares, read from the header only: libzfs's
   * receive of a package does not require a later substream to belong to an fss entry (one
   * whose toguid is not there is received, without props), and only the first substream is
   * read here. Only kind 'substream' (zfs recv then reads one substream) bounds the stream
   * to one dataset; for a compound stream, check what was received as well.
   */
  datasets: StreamDataset[];
  /** DMU_BACKUP_FEATURE_* of the first substream's BEGIN ('none': of the compound BEGIN) */
  featureflags: number;
  /** feature flags of the compound BEGIN (SA_SPILL, HOLDS); null for a substream */
  compoundFeatureflags: number | null;
  /** drr_flags of the first substream's BEGIN (DRR_FLAG_CLONE = 1, CI_DATA = 2, FREERECORDS = 4, ...) */
  drrFlags: number;
  /** drr_toguid / drr_fromguid of the first substream, decimal; fromguid '0' = a full stream */
  toguid: string;
  fromguid: string;
  /** drr_creation_time of the first substream's BEGIN (seconds since the epoch) */
  creationTime: number;
  /** byte order of the sender, from drr_magic */
  byteOrder: 'little' | 'big';
  /** compound: "fromsnap" / "tosnap" of the header nvlist (short snapshot names) */
  fromsnap: string | null;
  tosnap: string | null;
  /** compound with a header nvlist and without "not_recursive" (i.e. `send -R`) */
  recursive: boolean;
  /** compound: the header nvlist has "raw" */
  raw: boolean;
  /** bytes from the start of the stream to the end of the first substream's BEGIN record (or of the closing DRR_END) */
  headerLength: number;
}

export type ParseResult =
  | { done: true; header: StreamHeader }
  /** the bytes given end early: at least `needed` bytes (from the stream's start) are required to go on */
  | { done: false; needed: number };

// ---------------------------------------------------------------------------------------
// XDR nvlist (module/nvpair/nvpair.c, nvs_xdr_*): a 4-byte header (encoding 1 = XDR,
// endian, 2 reserved), then the nvlist: version int32 (0), nvflag uint32, then pairs, each
// encoded size int32 (of the whole pair), decoded size int32, name (XDR string), data type
// int32, nelem int32, value; a pair of sizes 0, 0 ends the list. XDR is big-endian.

const enum NvType {
  BOOLEAN = 1,
  BYTE = 2,
  INT16 = 3,
  UINT16 = 4,
  INT32 = 5,
  UINT32 = 6,
  INT64 = 7,
  UINT64 = 8,
  STRING = 9,
  HRTIME = 18,
  NVLIST = 19,
  BOOLEAN_VALUE = 21,
  INT8 = 22,
  UINT8 = 23,
  DOUBLE = 27,
}

export type NvValue =
  | { kind: 'string'; value: string }
  | { kind: 'uint64' | 'int64'; value: bigint }
  | { kind: 'int'; value: number }
  | { kind: 'boolean'; value: boolean }
  | { kind: 'nvlist'; value: NvPair[] }
  /** a type this parser skips (arrays, double, ...), by its encoded size */
  | { kind: 'other'; type: number; nelem: number };

export interface NvPair {
  name: string;
  value: NvValue;
}

interface XdrState {
  buf: Buffer;
  /** offset of buf[0] in the stream, for messages */
  base: number;
  pairs: number;
  maxPairs: number;
  maxDepth: number;
}

const NV_ENCODE_XDR = 1;
const NV_VERSION = 0;
const MIN_PAIR_SIZE = 20; // sizes, name length, type, nelem: 5 words

function xdrFail(st: XdrState, pos: number, msg: string): never {
  throw new StreamHeaderError('malformed', `header nvlist: ${msg}`, st.base + pos);
}

function need(st: XdrState, pos: number, n: number, end: number, what: string): void {
  if (n < 0 || pos + n > end) xdrFail(st, pos, `${what} runs past its end`);
}

function xdrString(st: XdrState, pos: number, end: number, what: string): { s: string; next: number } {
  need(st, pos, 4, end, what);
  const len = st.buf.readUInt32BE(pos);
  const padded = len + ((4 - (len % 4)) % 4);
  if (padded > end - pos - 4) xdrFail(st, pos, `${what} length ${len} runs past its end`);
  const bytes = st.buf.subarray(pos + 4, pos + 4 + len);
  if (bytes.includes(0)) xdrFail(st, pos, `${what} contains a NUL byte`);
  return { s: bytes.toString('utf8'), next: pos + 4 + padded };
}

/** decodes one nvlist (version, nvflag, pairs, terminator) at pos; returns its pairs and the end */
function xdrNvlist(st: XdrState, pos: number, end: number, depth: number): { pairs: NvPair[]; next: number } {
  if (depth > st.maxDepth) xdrFail(st, pos, `nested deeper than ${st.maxDepth} levels`);
  need(st, pos, 8, end, 'nvlist header');
  const version = st.buf.readInt32BE(pos);
  if (version !== NV_VERSION) xdrFail(st, pos, `nvlist version ${version}, expected ${NV_VERSION}`);
  pos += 8; // version, nvflag
  const pairs: NvPair[] = [];
  const seen = new Set<string>();
  for (;;) {
    need(st, pos, 8, end, 'nvpair sizes');
    const encoded = st.buf.readInt32BE(pos);
    const decoded = st.buf.readInt32BE(pos + 4);
    if (decoded === 0) {
      if (encoded !== 0) xdrFail(st, pos, `list terminator with encoded size ${encoded}`);
      return { pairs, next: pos + 8 };
    }
    if (++st.pairs > st.maxPairs) xdrFail(st, pos, `more than ${st.maxPairs} nvpairs`);
    if (encoded < MIN_PAIR_SIZE || encoded % 4 !== 0) xdrFail(st, pos, `bad nvpair encoded size ${encoded}`);
    if (decoded < 0) xdrFail(st, pos, `bad nvpair decoded size ${decoded}`);
    const pairEnd = pos + encoded;
    if (pairEnd > end) xdrFail(st, pos, `nvpair of ${encoded} bytes runs past its list`);
    const name = xdrString(st, pos + 8, pairEnd, 'nvpair name');
    if (seen.has(name.s)) xdrFail(st, pos, `duplicate nvpair name '${name.s}'`);
    seen.add(name.s);
    let p = name.next;
    need(st, p, 8, pairEnd, `nvpair '${name.s}'`);
    const type = st.buf.readInt32BE(p);
    const nelem = st.buf.readInt32BE(p + 4);
    p += 8;
    const what = `nvpair '${name.s}'`;
    const one = (): void => {
      if (nelem !== 1) xdrFail(st, pos, `${what} of type ${type} has ${nelem} elements`);
    };
    let value: NvValue;
    switch (type) {
      case NvType.BOOLEAN:
        if (nelem !== 0) xdrFail(st, pos, `${what} (boolean) has ${nelem} elements`);
        value = { kind: 'boolean', value: true };
        break;
      case NvType.BOOLEAN_VALUE:
        one();
        need(st, p, 4, pairEnd, what);
        value = { kind: 'boolean', value: st.buf.readInt32BE(p) !== 0 };
        p += 4;
        break;
      case NvType.BYTE:
      case NvType.UINT8:
      case NvType.UINT16:
      case NvType.UINT32:
        one();
        need(st, p, 4, pairEnd, what);
        value = { kind: 'int', value: st.buf.readUInt32BE(p) };
        p += 4;
        break;
      case NvType.INT8:
      case NvType.INT16:
      case NvType.INT32:
        one();
        need(st, p, 4, pairEnd, what);
        value = { kind: 'int', value: st.buf.readInt32BE(p) };
        p += 4;
        break;
      case NvType.UINT64:
        one();
        need(st, p, 8, pairEnd, what);
        value = { kind: 'uint64', value: st.buf.readBigUInt64BE(p) };
        p += 8;
        break;
      case NvType.INT64:
      case NvType.HRTIME:
        one();
        need(st, p, 8, pairEnd, what);
        value = { kind: 'int64', value: st.buf.readBigInt64BE(p) };
        p += 8;
        break;
      case NvType.STRING: {
        one();
        const s = xdrString(st, p, pairEnd, what);
        value = { kind: 'string', value: s.s };
        p = s.next;
        break;
      }
      case NvType.NVLIST: {
        one();
        const inner = xdrNvlist(st, p, pairEnd, depth + 1);
        value = { kind: 'nvlist', value: inner.pairs };
        p = inner.next;
        break;
      }
      default:
        if (type < 1 || type > NvType.DOUBLE) xdrFail(st, pos, `${what} has unknown data type ${type}`);
        if (nelem < 0) xdrFail(st, pos, `${what} has ${nelem} elements`);
        value = { kind: 'other', type, nelem };
        p = pairEnd; // skipped by its encoded size
    }
    if (p !== pairEnd) xdrFail(st, pos, `${what}: encoded size ${encoded} does not match its content (${p - pos} bytes)`);
    pairs.push({ name: name.s, value });
    pos = pairEnd;
  }
}

/** Decodes a packed XDR nvlist (nvlist_pack(..., NV_ENCODE_XDR)); bytes after the list are ignored. */
export function parseXdrNvlist(buf: Buffer, opts: StreamHeaderOptions & { baseOffset?: number } = {}): NvPair[] {
  const st: XdrState = {
    buf,
    base: opts.baseOffset ?? 0,
    pairs: 0,
    maxPairs: opts.maxPairs ?? DEFAULT_MAX_PAIRS,
    maxDepth: opts.maxDepth ?? DEFAULT_MAX_DEPTH,
  };
  if (buf.length < 4) xdrFail(st, 0, 'shorter than its 4-byte header');
  if (buf[0] !== NV_ENCODE_XDR) xdrFail(st, 0, `encoding ${buf[0]}, expected XDR (${NV_ENCODE_XDR})`);
  return xdrNvlist(st, 4, buf.length, 1).pairs;
}

// ---------------------------------------------------------------------------------------
// records

interface Begin {
  order: 'little' | 'big';
  payloadlen: number;
  hdrtype: number;
  featureflags: number;
  creationTime: number;
  objsetType: number;
  flags: number;
  toguid: bigint;
  fromguid: bigint;
  toname: string;
}

const u32 = (b: Buffer, o: number, order: 'little' | 'big') => (order === 'little' ? b.readUInt32LE(o) : b.readUInt32BE(o));
const u64 = (b: Buffer, o: number, order: 'little' | 'big') => (order === 'little' ? b.readBigUInt64LE(o) : b.readBigUInt64BE(o));

/** the record at `off` (DRR_RECORD_SIZE bytes available) as a BEGIN; `what` names it in errors */
function readBegin(buf: Buffer, off: number, what: string): Begin {
  let order: 'little' | 'big';
  if (buf.readBigUInt64LE(off + OFF_MAGIC) === DMU_BACKUP_MAGIC) order = 'little';
  else if (buf.readBigUInt64BE(off + OFF_MAGIC) === DMU_BACKUP_MAGIC) order = 'big';
  else {
    throw new StreamHeaderError(
      'bad-magic',
      `${what} is not a BEGIN record: bad magic 0x${buf.readBigUInt64LE(off + OFF_MAGIC).toString(16)} (record type ${buf.readUInt32LE(off)})`,
      off,
    );
  }
  const type = u32(buf, off, order);
  if (type !== DRR_BEGIN) throw new StreamHeaderError('malformed', `${what} has the BEGIN magic but record type ${type}`, off);
  const vi = u64(buf, off + OFF_VERSIONINFO, order);
  const features = (vi >> 2n) & ((1n << 56n) - 1n);
  // no flag is defined past bit 29; zfs recv refuses unknown ones, and a number holds 53 bits
  if (features > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new StreamHeaderError('unsupported', `${what}: unknown feature flags 0x${features.toString(16)}`, off + OFF_VERSIONINFO);
  }
  const nameBytes = buf.subarray(off + OFF_TONAME, off + OFF_TONAME + TONAME_LEN);
  const nul = nameBytes.indexOf(0);
  if (nul < 0) throw new StreamHeaderError('malformed', `${what}: drr_toname is not NUL-terminated`, off + OFF_TONAME);
  return {
    order,
    payloadlen: u32(buf, off + 4, order),
    hdrtype: Number(vi & 3n),
    featureflags: Number(features),
    creationTime: Number(u64(buf, off + OFF_CREATION, order)),
    objsetType: u32(buf, off + OFF_OBJSET_TYPE, order),
    flags: u32(buf, off + OFF_FLAGS, order),
    toguid: u64(buf, off + OFF_TOGUID, order),
    fromguid: u64(buf, off + OFF_FROMGUID, order),
    toname: nameBytes.subarray(0, nul).toString('utf8'),
  };
}

function checkToname(b: Begin, off: number, what: string): void {
  const at = b.toname.indexOf('@');
  if (b.toname.length === 0 || at <= 0 || at === b.toname.length - 1) {
    throw new StreamHeaderError('malformed', `${what}: drr_toname '${b.toname}' is not a snapshot name`, off + OFF_TONAME);
  }
}

function topTypeOf(t: number): 'filesystem' | 'volume' | 'other' {
  return t === DMU_OST_ZFS ? 'filesystem' : t === DMU_OST_ZVOL ? 'volume' : 'other';
}

function propValue(v: NvValue): StreamPropValue {
  switch (v.kind) {
    case 'string':
    case 'boolean':
    case 'int':
      return v.value;
    case 'uint64':
    case 'int64':
      return v.value <= BigInt(Number.MAX_SAFE_INTEGER) && v.value >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v.value) : v.value.toString();
    case 'nvlist': {
      // a property as zfs_get returns it, { value, source }: its value
      const inner = v.value.find((p) => p.name === 'value');
      return inner && inner.value.kind !== 'nvlist' && inner.value.kind !== 'other' ? propValue(inner.value) : 'nested';
    }
    default:
      return 'nested';
  }
}

function lookup(list: NvPair[], name: string): NvValue | undefined {
  return list.find((p) => p.name === name)?.value;
}

function datasetsOfFss(fss: NvPair[], at: number): StreamDataset[] {
  return fss.map((entry) => {
    if (entry.value.kind !== 'nvlist') throw new StreamHeaderError('malformed', `header nvlist: fss entry '${entry.name}' is not an nvlist`, at);
    const fs = entry.value.value;
    const name = lookup(fs, 'name');
    if (name?.kind !== 'string' || name.value === '') {
      throw new StreamHeaderError('malformed', `header nvlist: fss entry '${entry.name}' has no name`, at);
    }
    const props: Record<string, StreamPropValue> = {};
    const pv = lookup(fs, 'props');
    if (pv !== undefined) {
      if (pv.kind !== 'nvlist') throw new StreamHeaderError('malformed', `header nvlist: props of '${name.value}' is not an nvlist`, at);
      for (const p of pv.value) props[p.name] = propValue(p.value);
    }
    const snaps = lookup(fs, 'snaps');
    return {
      name: name.value,
      guid: entry.name,
      props,
      snapshots: snaps?.kind === 'nvlist' ? snaps.value.map((s) => s.name) : [],
      clone: lookup(fs, 'origin') !== undefined,
    };
  });
}

/**
 * Parses the beginning of a zfs send stream. Returns the header once `buf` holds it (bytes
 * after it are ignored), `{ done: false, needed }` while `buf` is too short, and throws a
 * StreamHeaderError when the bytes are not a stream this parser accepts.
 */
export function parseStreamHeaderBytes(buf: Buffer, opts: StreamHeaderOptions = {}): ParseResult {
  const maxPayload = opts.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES;
  if (buf.length < DRR_RECORD_SIZE) return { done: false, needed: DRR_RECORD_SIZE };
  const first = readBegin(buf, 0, 'first record');

  const substream = (b: Begin, off: number, compound: Begin | null, nv: NvPair[] | null, datasets: StreamDataset[] | null): StreamHeader => {
    const str = (n: string) => {
      const v = nv ? lookup(nv, n) : undefined;
      return v?.kind === 'string' ? v.value : null;
    };
    const has = (n: string) => (nv ? lookup(nv, n) !== undefined : false);
    return {
      kind: compound ? 'compound' : 'substream',
      topType: topTypeOf(b.objsetType),
      toname: b.toname,
      datasets: datasets ?? [{ name: b.toname.slice(0, b.toname.indexOf('@')), guid: null, props: {}, snapshots: [], clone: false }],
      featureflags: b.featureflags,
      compoundFeatureflags: compound ? compound.featureflags : null,
      drrFlags: b.flags,
      toguid: b.toguid.toString(),
      fromguid: b.fromguid.toString(),
      creationTime: b.creationTime,
      byteOrder: b.order,
      fromsnap: str('fromsnap'),
      tosnap: str('tosnap'),
      recursive: nv !== null && !has('not_recursive'),
      raw: has('raw'),
      headerLength: off + DRR_RECORD_SIZE,
    };
  };

  if (first.hdrtype === DMU_SUBSTREAM) {
    checkToname(first, 0, 'BEGIN record');
    return { done: true, header: substream(first, 0, null, null, null) };
  }
  if (first.hdrtype !== DMU_COMPOUNDSTREAM) {
    throw new StreamHeaderError('unsupported', `unknown header type ${first.hdrtype} in drr_versioninfo (1 = substream, 2 = compound)`, OFF_VERSIONINFO);
  }
  if (first.payloadlen > maxPayload) {
    throw new StreamHeaderError('too-large', `compound header payload of ${first.payloadlen} bytes exceeds the limit of ${maxPayload}`, 4);
  }
  const endOff = DRR_RECORD_SIZE + first.payloadlen;
  const nextOff = endOff + DRR_RECORD_SIZE;
  if (buf.length < nextOff + DRR_RECORD_SIZE) return { done: false, needed: nextOff + DRR_RECORD_SIZE };

  let nv: NvPair[] | null = null;
  let datasets: StreamDataset[] | null = null;
  if (first.payloadlen > 0) {
    nv = parseXdrNvlist(buf.subarray(DRR_RECORD_SIZE, endOff), { ...opts, baseOffset: DRR_RECORD_SIZE });
    const fss = lookup(nv, 'fss');
    if (fss?.kind !== 'nvlist') throw new StreamHeaderError('malformed', 'header nvlist has no "fss" nvlist', DRR_RECORD_SIZE);
    datasets = datasetsOfFss(fss.value, DRR_RECORD_SIZE);
  }
  const endType = u32(buf, endOff, first.order);
  if (endType !== DRR_END) {
    throw new StreamHeaderError('malformed', `compound header is followed by record type ${endType}, expected DRR_END (${DRR_END})`, endOff);
  }
  // the next record: the first substream's BEGIN, or the DRR_END that closes an empty package
  if (u32(buf, nextOff, first.order) === DRR_END && buf.readBigUInt64LE(nextOff + OFF_MAGIC) !== DMU_BACKUP_MAGIC) {
    checkToname(first, 0, 'compound BEGIN record');
    const header = substream(first, 0, first, nv, datasets);
    return {
      done: true,
      header: { ...header, topType: 'none', toguid: '0', fromguid: '0', drrFlags: 0, headerLength: nextOff + DRR_RECORD_SIZE, datasets: nv ? header.datasets : [] },
    };
  }
  const sub = readBegin(buf, nextOff, 'first substream record');
  if (sub.hdrtype !== DMU_SUBSTREAM) {
    throw new StreamHeaderError('malformed', `first record after the compound header has header type ${sub.hdrtype}, expected a substream (1)`, nextOff + OFF_VERSIONINFO);
  }
  checkToname(sub, nextOff, 'first substream BEGIN');
  return { done: true, header: substream(sub, nextOff, first, nv, datasets) };
}

/**
 * Reads the header of the zfs send stream `input` (see parseStreamHeaderBytes) and returns
 * it with `stream`: every byte of `input`, the ones read for the header included, unchanged
 * and in order, with backpressure (pipe it into `zfs recv`). On failure the returned promise
 * rejects (StreamHeaderError, or the input's own error) and `input` is destroyed.
 */
export async function readStreamHeader(input: Readable, opts: StreamHeaderOptions = {}): Promise<{ header: StreamHeader; stream: Readable }> {
  const it = input[Symbol.asyncIterator]() as AsyncIterator<unknown>;
  const chunks: Buffer[] = [];
  let have = 0;
  let needed = DRR_RECORD_SIZE;
  let header: StreamHeader;
  try {
    for (;;) {
      while (have < needed) {
        const r = await it.next();
        if (r.done) {
          throw new StreamHeaderError('truncated', `input ended after ${have} bytes, inside the header (at least ${needed} bytes needed)`);
        }
        const chunk = r.value;
        if (!(chunk instanceof Uint8Array)) throw new TypeError('readStreamHeader: input must yield bytes (Buffer), not strings or objects');
        const b = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
        chunks.push(b);
        have += b.length;
      }
      const all = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, have);
      chunks.length = 0;
      chunks.push(all);
      const r = parseStreamHeaderBytes(all, opts);
      if (r.done) {
        header = r.header;
        break;
      }
      if (r.needed <= have) throw new Error(`readStreamHeader: parser asked for ${r.needed} bytes with ${have} at hand`);
      needed = r.needed;
    }
  } catch (e) {
    await it.return?.().catch(() => undefined);
    input.destroy();
    throw e;
  }
  const head = chunks[0]!;
  async function* replay(): AsyncGenerator<Buffer> {
    try {
      yield head;
      for (;;) {
        const r = await it.next();
        if (r.done) return;
        const c = r.value;
        if (!(c instanceof Uint8Array)) throw new TypeError('readStreamHeader: input must yield bytes (Buffer), not strings or objects');
        yield Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength);
      }
    } finally {
      // the consumer stopped early (destroyed the stream) or the input failed: release the input
      await it.return?.();
    }
  }
  const stream = Readable.from(replay(), { objectMode: false });
  // a consumer that stops early must not leave the input half-read: the generator's
  // finally only runs once it is back at a yield, which a stalled input would delay
  stream.once('close', () => {
    if (!input.readableEnded && !input.destroyed) input.destroy();
  });
  return { header, stream };
}


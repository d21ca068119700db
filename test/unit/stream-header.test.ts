// The zfs send stream header parser, on stream prefixes captured from zfs-fuse
// (test/fixtures/streams, see its README) and on synthetic records and nvlists.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createHash, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  parseStreamHeaderBytes,
  parseXdrNvlist,
  readStreamHeader,
  StreamHeaderError,
  DRR_RECORD_SIZE,
  type StreamHeader,
  type ParseResult,
} from '../../src/replica/stream-header.js';

// fixtures live in the source tree (test/fixtures), tests run from dist/test/unit
const fixture = (name: string) => readFileSync(fileURLToPath(new URL(`../../../test/fixtures/streams/${name}`, import.meta.url)));

function parsed(buf: Buffer): StreamHeader {
  const r = parseStreamHeaderBytes(buf);
  assert.ok(r.done, `header incomplete: needs ${(r as { needed: number }).needed} bytes`);
  return r.header;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** asserts fn throws a StreamHeaderError with this code whose message matches re */
function refused(fn: () => unknown, code: StreamHeaderError['code'], re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof StreamHeaderError, `not a StreamHeaderError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, re);
    return true;
  });
}

// --- synthetic records -------------------------------------------------------------------

type Order = 'little' | 'big';

function record(order: Order, type: number, payloadlen: number): Buffer {
  const b = Buffer.alloc(DRR_RECORD_SIZE);
  if (order === 'little') {
    b.writeUInt32LE(type, 0);
    b.writeUInt32LE(payloadlen, 4);
  } else {
    b.writeUInt32BE(type, 0);
    b.writeUInt32BE(payloadlen, 4);
  }
  return b;
}

function begin(o: {
  order?: Order;
  hdrtype?: number;
  featureflags?: number | bigint;
  objsetType?: number;
  flags?: number;
  toguid?: bigint;
  fromguid?: bigint;
  toname?: string | Buffer;
  payloadlen?: number;
  creation?: bigint;
}): Buffer {
  const order = o.order ?? 'little';
  const b = record(order, 0, o.payloadlen ?? 0);
  const w64 = (v: bigint, off: number) => (order === 'little' ? b.writeBigUInt64LE(v, off) : b.writeBigUInt64BE(v, off));
  const w32 = (v: number, off: number) => (order === 'little' ? b.writeUInt32LE(v, off) : b.writeUInt32BE(v, off));
  w64(0x2f5bacbacn, 8);
  w64((BigInt(o.featureflags ?? 0) << 2n) | BigInt(o.hdrtype ?? 1), 16);
  w64(o.creation ?? 1_700_000_000n, 24);
  w32(o.objsetType ?? 2, 32);
  w32(o.flags ?? 0, 36);
  w64(o.toguid ?? 0x1111n, 40);
  w64(o.fromguid ?? 0n, 48);
  const name = typeof o.toname === 'string' || o.toname === undefined ? Buffer.from(o.toname ?? 'pool/fs@snap') : o.toname;
  name.copy(b, 56, 0, Math.min(name.length, 256));
  return b;
}

const endRecord = (order: Order = 'little') => record(order, 5, 0);

// --- a small XDR nvlist encoder ----------------------------------------------------------

type Nv =
  | { n: string; str: string }
  | { n: string; u64: bigint }
  | { n: string; bool: true }
  | { n: string; boolv: boolean }
  | { n: string; nvl: Nv[] }
  | { n: string; raw: { type: number; nelem: number; bytes: Buffer } };

const xstr = (s: string | Buffer) => {
  const b = Buffer.isBuffer(s) ? s : Buffer.from(s);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(b.length);
  return Buffer.concat([len, b, Buffer.alloc((4 - (b.length % 4)) % 4)]);
};
const i32 = (...v: number[]) => {
  const b = Buffer.alloc(4 * v.length);
  v.forEach((x, i) => b.writeInt32BE(x, 4 * i));
  return b;
};

function encList(pairs: Nv[]): Buffer {
  return Buffer.concat([i32(0, 1), ...pairs.map(encPair), i32(0, 0)]);
}

function encPair(p: Nv): Buffer {
  let type: number;
  let nelem = 1;
  let value: Buffer;
  if ('str' in p) [type, value] = [9, xstr(p.str)];
  else if ('u64' in p) {
    type = 8;
    value = Buffer.alloc(8);
    value.writeBigUInt64BE(p.u64);
  } else if ('bool' in p) [type, nelem, value] = [1, 0, Buffer.alloc(0)];
  else if ('boolv' in p) [type, value] = [21, i32(p.boolv ? 1 : 0)];
  else if ('nvl' in p) [type, value] = [19, encList(p.nvl)];
  else [type, nelem, value] = [p.raw.type, p.raw.nelem, p.raw.bytes];
  const body = Buffer.concat([xstr(p.n), i32(type, nelem), value]);
  return Buffer.concat([i32(body.length + 8, body.length + 16), body]);
}

const packed = (pairs: Nv[]) => Buffer.concat([Buffer.from([1, 1, 0, 0]), encList(pairs)]);

function fsEntry(guid: string, name: string, props: Nv[], snaps: string[] = ['s1']): Nv {
  return {
    n: guid,
    nvl: [
      { n: 'name', str: name },
      { n: 'parentfromsnap', u64: 0n },
      { n: 'props', nvl: props },
      { n: 'snaps', nvl: snaps.map((s, i) => ({ n: s, u64: BigInt(i + 1) })) },
      { n: 'snapprops', nvl: snaps.map((s) => ({ n: s, nvl: [] })) },
    ],
  };
}

/** compound BEGIN + nvlist + END + (substream BEGIN | closing END) */
function compound(nv: Buffer, next: Buffer, order: Order = 'little', toname = 'pool/fs@s1'): Buffer {
  return Buffer.concat([begin({ order, hdrtype: 2, objsetType: 0, toname, payloadlen: nv.length }), nv, endRecord(order), next]);
}

/** byte-swaps the fixed fields of a BEGIN record in place (the toname is bytes, the nvlist XDR) */
function swapBegin(b: Buffer, off: number): void {
  for (const o of [0, 4, 32, 36]) b.writeUInt32BE(b.readUInt32LE(off + o), off + o);
  for (const o of [8, 16, 24, 40, 48]) b.writeBigUInt64BE(b.readBigUInt64LE(off + o), off + o);
}
function swapEnd(b: Buffer, off: number): void {
  for (const o of [0, 4]) b.writeUInt32BE(b.readUInt32LE(off + o), off + o);
  for (let o = 8; o < 48; o += 8) b.writeBigUInt64BE(b.readBigUInt64LE(off + o), off + o);
}

// --- fixtures ----------------------------------------------------------------------------

const projProps = {
  'x:y': '1',
  mountpoint: '/nonexistent-xyz',
  sharenfs: 'on',
  setuid: 0,
  canmount: 2,
  refreservation: 1048576,
  exec: 0,
};
const soloProps = { compression: 1, 'x:y': 'solo', mountpoint: '/nonexistent-solo', canmount: 2 };

describe('stream header: zfs-fuse streams', () => {
  it('send -R of a dataset with a child: both datasets, their local props, the first substream', () => {
    const h = parsed(fixture('zfs-fuse.send-R-with-child.prefix.bin'));
    assert.equal(h.kind, 'compound');
    assert.equal(h.topType, 'filesystem');
    assert.equal(h.toname, 'shfix/proj@s1', 'a full -R stream starts with the oldest snapshot');
    assert.deepEqual(
      h.datasets.map((d) => d.name),
      ['shfix/proj', 'shfix/proj/child'],
    );
    assert.deepEqual(h.datasets[0]!.props, projProps);
    assert.deepEqual(h.datasets[1]!.props, { canmount: 2 });
    assert.deepEqual(h.datasets[0]!.snapshots.sort(), ['s1', 's2']);
    assert.equal(h.datasets[0]!.guid, '0xac9ba340fae76eed');
    assert.equal(h.datasets[0]!.clone, false);
    assert.equal(h.recursive, true);
    assert.equal(h.fromsnap, null);
    assert.equal(h.tosnap, 's2');
    assert.equal(h.fromguid, '0');
    assert.equal(h.toguid, '15268591251657459673');
    assert.equal(h.byteOrder, 'little');
    assert.equal(h.featureflags, 0);
    assert.equal(h.compoundFeatureflags, 0);
    assert.equal(h.headerLength, 2180);
  });

  it('send -R -I: fromsnap, and an incremental first substream', () => {
    const h = parsed(fixture('zfs-fuse.send-R-I-with-child.prefix.bin'));
    assert.equal(h.kind, 'compound');
    assert.equal(h.topType, 'filesystem');
    assert.equal(h.toname, 'shfix/proj@s2');
    assert.deepEqual(
      h.datasets.map((d) => d.name),
      ['shfix/proj', 'shfix/proj/child'],
    );
    assert.deepEqual(h.datasets[0]!.props, projProps);
    assert.equal(h.fromsnap, 's1');
    assert.equal(h.tosnap, 's2');
    assert.equal(h.fromguid, '15268591251657459673', 'the guid of @s1');
    assert.equal(h.toguid, '11451723304826257313');
    assert.equal(h.headerLength, 2216);
  });

  it('send -R of a dataset without children (the normal case): one dataset', () => {
    const h = parsed(fixture('zfs-fuse.send-R-solo.prefix.bin'));
    assert.equal(h.kind, 'compound');
    assert.equal(h.topType, 'filesystem');
    assert.equal(h.toname, 'shfix/solo@s1');
    assert.deepEqual(h.datasets, [{ name: 'shfix/solo', guid: '0x30ed6a1e992c9057', props: soloProps, snapshots: ['s1', 's2'], clone: false }]);
    assert.equal(h.recursive, true);
    assert.equal(h.headerLength, 1616);
  });

  it('send -R of received datasets: received props are sent as plain values, like local ones', () => {
    const h = parsed(fixture('zfs-fuse.send-R-received-props.prefix.bin'));
    assert.deepEqual(
      h.datasets.map((d) => d.name),
      ['shfix/copy', 'shfix/copy/child'],
    );
    assert.deepEqual(h.datasets[0]!.props, projProps);
    assert.deepEqual(h.datasets[1]!.props, { canmount: 2 });
    assert.equal(h.toname, 'shfix/copy@s1');
  });

  it('send -p: a compound stream marked not_recursive', () => {
    const h = parsed(fixture('zfs-fuse.send-p-solo.prefix.bin'));
    assert.equal(h.kind, 'compound');
    assert.equal(h.recursive, false);
    assert.equal(h.toname, 'shfix/solo@s2');
    assert.equal(h.fromguid, '0');
    assert.deepEqual(
      h.datasets.map((d) => [d.name, d.props]),
      [['shfix/solo', soloProps]],
    );
  });

  it('send -I without -R: a compound stream without an nvlist; the dataset comes from toname', () => {
    const h = parsed(fixture('zfs-fuse.send-I-solo.prefix.bin'));
    assert.equal(h.kind, 'compound');
    assert.equal(h.topType, 'filesystem');
    assert.equal(h.toname, 'shfix/solo@s2');
    assert.deepEqual(h.datasets, [{ name: 'shfix/solo', guid: null, props: {}, snapshots: [], clone: false }]);
    assert.equal(h.recursive, false);
    assert.equal(h.tosnap, null);
    assert.equal(h.fromguid, '7575669961410928277');
    assert.equal(h.headerLength, 936);
  });

  it('plain send and send -i: a substream, its dataset, no props', () => {
    const full = parsed(fixture('zfs-fuse.send-full.prefix.bin'));
    assert.equal(full.kind, 'substream');
    assert.equal(full.topType, 'filesystem');
    assert.equal(full.toname, 'shfix/proj@s1');
    assert.deepEqual(full.datasets, [{ name: 'shfix/proj', guid: null, props: {}, snapshots: [], clone: false }]);
    assert.equal(full.fromguid, '0');
    assert.equal(full.compoundFeatureflags, null);
    assert.equal(full.headerLength, DRR_RECORD_SIZE);
    const inc = parsed(fixture('zfs-fuse.send-i.prefix.bin'));
    assert.equal(inc.kind, 'substream');
    assert.equal(inc.toname, 'shfix/proj@s2');
    assert.equal(inc.fromguid, '15268591251657459673');
  });

  it('a compound stream that carries no substream says so (topType none)', () => {
    const h = parsed(fixture('zfs-fuse.send-R-I-nothing.bin'));
    assert.equal(h.kind, 'compound');
    assert.equal(h.topType, 'none');
    assert.equal(h.toname, 'shfix/solo@s2');
    assert.deepEqual(
      h.datasets.map((d) => d.name),
      ['shfix/solo'],
    );
    assert.equal(h.fromsnap, 's2');
    assert.equal(h.headerLength, 1652);
  });

  it('every prefix shorter than the header asks for more bytes, never for fewer or for a wrong amount', () => {
    for (const f of ['zfs-fuse.send-R-with-child.prefix.bin', 'zfs-fuse.send-I-solo.prefix.bin', 'zfs-fuse.send-full.prefix.bin', 'zfs-fuse.send-R-I-nothing.bin']) {
      const buf = fixture(f);
      const total = parsed(buf).headerLength;
      for (let len = 0; len < total; len += len < 320 ? 1 : 7) {
        const r: ParseResult = parseStreamHeaderBytes(buf.subarray(0, len));
        assert.equal(r.done, false, `${f} at ${len}`);
        if (!r.done) assert.ok(r.needed > len && r.needed <= total, `${f} at ${len}: needed ${r.needed}, header ${total}`);
      }
      assert.equal(parseStreamHeaderBytes(buf.subarray(0, total)).done, true);
    }
  });
});

describe('stream header: synthetic records', () => {
  it('a volume substream (zfs-fuse has no volumes)', () => {
    const h = parsed(begin({ objsetType: 3, toname: 'tank/vol1@snap', featureflags: 0x30000 }));
    assert.equal(h.kind, 'substream');
    assert.equal(h.topType, 'volume');
    assert.deepEqual(
      h.datasets.map((d) => d.name),
      ['tank/vol1'],
    );
    assert.equal(h.featureflags, 0x30000);
  });

  it('a volume as the first substream of a compound stream', () => {
    const nv = packed([{ n: 'tosnap', str: 's1' }, { n: 'fss', nvl: [fsEntry('0x1', 'tank/vol1', [{ n: 'volblocksize', u64: 8192n }])] }]);
    const h = parsed(compound(nv, begin({ objsetType: 3, toname: 'tank/vol1@s1' }), 'little', 'tank/vol1@s1'));
    assert.equal(h.topType, 'volume');
    assert.deepEqual(h.datasets[0]!.props, { volblocksize: 8192 });
  });

  it('other objset types are reported as other', () => {
    assert.equal(parsed(begin({ objsetType: 4 })).topType, 'other');
  });

  it('a big-endian substream BEGIN is understood', () => {
    const b = begin({ order: 'big', objsetType: 3, toname: 'tank/vol@x', toguid: 0xfedcba9876543210n, fromguid: 42n, flags: 4, featureflags: 1 << 17, creation: 1234n });
    assert.equal(b.readUInt32BE(8 + 4), 0xf5bacbac, 'the magic is written big-endian');
    const h = parsed(b);
    assert.equal(h.byteOrder, 'big');
    assert.equal(h.kind, 'substream');
    assert.equal(h.topType, 'volume');
    assert.equal(h.toname, 'tank/vol@x');
    assert.equal(h.toguid, 0xfedcba9876543210n.toString());
    assert.equal(h.fromguid, '42');
    assert.equal(h.drrFlags, 4);
    assert.equal(h.featureflags, 1 << 17);
    assert.equal(h.creationTime, 1234);
  });

  it('a real compound stream byte-swapped to big-endian parses the same', () => {
    const le = fixture('zfs-fuse.send-R-with-child.prefix.bin');
    const h = parsed(le);
    const be = Buffer.from(le);
    const payload = be.readUInt32LE(4);
    swapBegin(be, 0);
    swapEnd(be, DRR_RECORD_SIZE + payload);
    swapBegin(be, h.headerLength - DRR_RECORD_SIZE);
    const hb = parsed(be);
    assert.equal(hb.byteOrder, 'big');
    assert.deepEqual({ ...hb, byteOrder: 'little' }, h);
  });

  it('nvlist props: a { value, source } nvlist gives its value; booleans; huge numbers; non-scalars', () => {
    const nv = packed([
      { n: 'tosnap', str: 's1' },
      {
        n: 'fss',
        nvl: [
          fsEntry('0xa', 'pool/fs', [
            { n: 'compression', nvl: [{ n: 'value', u64: 1n }, { n: 'source', str: 'pool/fs' }] },
            { n: 'mountpoint', nvl: [{ n: 'value', str: '/m' }, { n: 'source', str: '$recvd' }] },
            { n: 'weird', nvl: [{ n: 'other', str: 'x' }] },
            { n: 'flag', boolv: true },
            { n: 'big', u64: 0xffffffffffffffffn },
            { n: 'arr', raw: { type: 16, nelem: 2, bytes: Buffer.concat([Buffer.alloc(8, 1), Buffer.alloc(8, 2)]) } },
          ]),
        ],
      },
    ]);
    const h = parsed(compound(nv, begin({ toname: 'pool/fs@s1' })));
    assert.deepEqual(h.datasets[0]!.props, {
      compression: 1,
      mountpoint: '/m',
      weird: 'nested',
      flag: true,
      big: '18446744073709551615',
      arr: 'nested',
    });
  });

  it('a clone is flagged from its fss origin', () => {
    const entry = fsEntry('0xa', 'pool/fs', []);
    (entry as { nvl: Nv[] }).nvl.push({ n: 'origin', u64: 99n });
    const h = parsed(compound(packed([{ n: 'fss', nvl: [entry] }]), begin({ toname: 'pool/fs@s1', flags: 1 })));
    assert.equal(h.datasets[0]!.clone, true);
    assert.equal(h.drrFlags, 1);
  });

  it('raw and not_recursive are read from the header nvlist', () => {
    const h = parsed(compound(packed([{ n: 'not_recursive', bool: true }, { n: 'raw', bool: true }, { n: 'fss', nvl: [fsEntry('0xa', 'pool/fs', [])] }]), begin({ toname: 'pool/fs@s1' })));
    assert.equal(h.recursive, false);
    assert.equal(h.raw, true);
  });
});

describe('stream header: refusals', () => {
  const good = () => Buffer.from(fixture('zfs-fuse.send-R-with-child.prefix.bin'));
  const payloadOf = (b: Buffer) => b.readUInt32LE(4);

  it('not a send stream at all', () => {
    refused(() => parseStreamHeaderBytes(Buffer.alloc(400, 'hello, this is not a zfs stream\n')), 'bad-magic', /first record is not a BEGIN record: bad magic/);
    refused(() => parseStreamHeaderBytes(randomBytes(1000)), 'bad-magic', /bad magic/);
  });

  it('a BEGIN magic with a different record type', () => {
    const b = begin({});
    b.writeUInt32LE(3, 0);
    refused(() => parseStreamHeaderBytes(b), 'malformed', /record type 3/);
  });

  it('an unknown header type', () => {
    refused(() => parseStreamHeaderBytes(begin({ hdrtype: 3 })), 'unsupported', /unknown header type 3/);
    refused(() => parseStreamHeaderBytes(begin({ hdrtype: 0 })), 'unsupported', /unknown header type 0/);
    refused(() => parseStreamHeaderBytes(begin({ featureflags: 1n << 55n })), 'unsupported', /unknown feature flags 0x80000000000000/);
  });

  it('a toname that is not a snapshot name, or not NUL-terminated', () => {
    refused(() => parseStreamHeaderBytes(begin({ toname: 'pool/fs' })), 'malformed', /not a snapshot name/);
    refused(() => parseStreamHeaderBytes(begin({ toname: '@s' })), 'malformed', /not a snapshot name/);
    refused(() => parseStreamHeaderBytes(begin({ toname: Buffer.alloc(256, 'a') })), 'malformed', /not NUL-terminated/);
  });

  it('an overlong payload length is refused before any of it is read', () => {
    const b = good();
    b.writeUInt32LE(0xfffffff0, 4);
    refused(() => parseStreamHeaderBytes(b.subarray(0, DRR_RECORD_SIZE)), 'too-large', /payload of 4294967280 bytes exceeds the limit of 16777216/);
    refused(() => parseStreamHeaderBytes(good(), { maxPayloadBytes: 1000 }), 'too-large', /exceeds the limit of 1000/);
  });

  it('a payload length that cuts the nvlist short', () => {
    const b = good();
    const p = payloadOf(b);
    // shorter payload: the END record is then looked for inside the nvlist
    b.writeUInt32LE(p - 64, 4);
    refused(() => parseStreamHeaderBytes(b), 'malformed', /runs past|expected DRR_END/);
  });

  it('garbled nvlist sizes, types, names and strings', () => {
    const at = (needle: string) => {
      const b = good();
      const i = b.indexOf(needle);
      assert.ok(i > 0, needle);
      return { b, i };
    };
    {
      // the encoded size of the "fss" pair: 4 (name length) + 4 (decoded) + 4 (encoded) before the name
      const { b, i } = at('fss');
      b.writeInt32BE(b.readInt32BE(i - 12) + 4, i - 12);
      refused(() => parseStreamHeaderBytes(b), 'malformed', /nvpair 'fss': encoded size \d+ does not match/);
    }
    {
      const { b, i } = at('fss');
      b.writeInt32BE(0x7fff0000, i - 12);
      refused(() => parseStreamHeaderBytes(b), 'malformed', /runs past its list/);
    }
    {
      const { b, i } = at('tosnap');
      b.writeUInt32BE(1 << 30, i - 4); // name length
      refused(() => parseStreamHeaderBytes(b), 'malformed', /nvpair name length \d+ runs past/);
    }
    {
      const { b, i } = at('tosnap');
      b.writeInt32BE(77, i + 8); // data type
      refused(() => parseStreamHeaderBytes(b), 'malformed', /unknown data type 77/);
    }
    {
      const { b, i } = at('tosnap');
      b.writeInt32BE(2, i + 12); // nelem of a string
      refused(() => parseStreamHeaderBytes(b), 'malformed', /has 2 elements/);
    }
    {
      const { b, i } = at('shfix/proj\0');
      b[i + 3] = 0; // a NUL inside the "name" string
      refused(() => parseStreamHeaderBytes(b), 'malformed', /contains a NUL byte/);
    }
    {
      const b = good();
      b[DRR_RECORD_SIZE] = 0; // NV_ENCODE_NATIVE
      refused(() => parseStreamHeaderBytes(b), 'malformed', /encoding 0, expected XDR/);
    }
    {
      const b = good();
      b.writeInt32BE(1, DRR_RECORD_SIZE + 4); // nvlist version
      refused(() => parseStreamHeaderBytes(b), 'malformed', /nvlist version 1/);
    }
  });

  it('a compound header not followed by DRR_END, or followed by another compound BEGIN', () => {
    const b = good();
    const endOff = DRR_RECORD_SIZE + payloadOf(b);
    b.writeUInt32LE(3, endOff);
    refused(() => parseStreamHeaderBytes(b), 'malformed', /followed by record type 3, expected DRR_END/);
    const nv = packed([{ n: 'fss', nvl: [fsEntry('0xa', 'pool/fs', [])] }]);
    refused(() => parseStreamHeaderBytes(compound(nv, begin({ hdrtype: 2 }))), 'malformed', /expected a substream/);
    refused(() => parseStreamHeaderBytes(compound(nv, Buffer.alloc(DRR_RECORD_SIZE, 0x41))), 'bad-magic', /first substream record is not a BEGIN record/);
  });

  it('header nvlists without fss, or with an fss entry without a name', () => {
    refused(() => parseStreamHeaderBytes(compound(packed([{ n: 'tosnap', str: 's1' }]), begin({}))), 'malformed', /no "fss"/);
    refused(() => parseStreamHeaderBytes(compound(packed([{ n: 'fss', nvl: [{ n: '0x1', nvl: [{ n: 'props', nvl: [] }] }] }]), begin({}))), 'malformed', /fss entry '0x1' has no name/);
    refused(() => parseStreamHeaderBytes(compound(packed([{ n: 'fss', nvl: [{ n: '0x1', str: 'x' }] }]), begin({}))), 'malformed', /is not an nvlist/);
  });

  it('duplicate names, too deep nesting, too many pairs', () => {
    const dup = packed([{ n: 'fss', nvl: [fsEntry('0x1', 'pool/a', []), fsEntry('0x1', 'pool/b', [])] }]);
    refused(() => parseStreamHeaderBytes(compound(dup, begin({}))), 'malformed', /duplicate nvpair name '0x1'/);
    let deep: Nv = { n: 'leaf', str: 'x' };
    for (let i = 0; i < 40; i++) deep = { n: `l${i}`, nvl: [deep] };
    refused(() => parseStreamHeaderBytes(compound(packed([deep]), begin({}))), 'malformed', /nested deeper than 32 levels/);
    const many = packed([{ n: 'fss', nvl: Array.from({ length: 50 }, (_, i) => fsEntry(`0x${i}`, `pool/d${i}`, [])) }]);
    refused(() => parseStreamHeaderBytes(compound(many, begin({})), { maxPairs: 100 }), 'malformed', /more than 100 nvpairs/);
    assert.equal(parseXdrNvlist(many).length, 1);
  });

  it('random damage to a real header never escapes as anything but a StreamHeaderError', () => {
    const base = good();
    const h = parsed(base);
    let refusedCount = 0;
    for (let n = 0; n < 3000; n++) {
      const b = Buffer.from(base);
      for (let k = 0; k < 1 + (n % 4); k++) b[Math.floor(Math.random() * h.headerLength)] = Math.floor(Math.random() * 256);
      try {
        parseStreamHeaderBytes(b);
      } catch (e) {
        assert.ok(e instanceof StreamHeaderError, `${String(e)}`);
        refusedCount++;
      }
    }
    assert.ok(refusedCount > 0);
  });
});

// --- streaming ---------------------------------------------------------------------------

/** a Readable of buf in chunks of `chunk` bytes, pulled on demand; `pulled()` = bytes handed out */
function source(buf: Buffer, chunk: number): { stream: Readable; pulled: () => number } {
  let off = 0;
  const stream = new Readable({
    highWaterMark: 64 * 1024,
    read() {
      if (off >= buf.length) {
        this.push(null);
        return;
      }
      const end = Math.min(buf.length, off + chunk);
      const c = buf.subarray(off, end);
      off = end;
      this.push(c);
    },
  });
  return { stream, pulled: () => off };
}

async function drain(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

describe('stream header: readStreamHeader', () => {
  it('returns the header and a stream with exactly the input bytes (8 MiB tail, various chunk sizes)', async () => {
    const input = Buffer.concat([fixture('zfs-fuse.send-R-with-child.prefix.bin'), randomBytes(8 * 1024 * 1024 + 17)]);
    const want = sha256(input);
    for (const chunk of [1, 311, 313, 4096, 65536, 1 << 20]) {
      const big = chunk === 1 ? input.subarray(0, 50_000) : input;
      const { stream } = source(big, chunk);
      const { header, stream: out } = await readStreamHeader(stream);
      assert.equal(header.kind, 'compound');
      assert.deepEqual(
        header.datasets.map((d) => d.name),
        ['shfix/proj', 'shfix/proj/child'],
      );
      const got = await drain(out);
      assert.equal(got.length, big.length, `chunk ${chunk}`);
      assert.equal(sha256(got), chunk === 1 ? sha256(big) : want, `chunk ${chunk}`);
    }
  });

  it('keeps backpressure: a consumer that does not read stops the input', async () => {
    const input = Buffer.concat([fixture('zfs-fuse.send-R-solo.prefix.bin'), randomBytes(16 * 1024 * 1024)]);
    const src = source(input, 16 * 1024);
    const { header, stream } = await readStreamHeader(src.stream);
    assert.equal(header.topType, 'filesystem');
    await sleep(100);
    const early = src.pulled();
    assert.ok(early < 1024 * 1024, `read ${early} bytes ahead of a consumer that reads nothing`);
    // a slow writable: the input advances with it, never far ahead
    let written = 0;
    let maxAhead = 0;
    const sink = new Writable({
      highWaterMark: 16 * 1024,
      write(c: Buffer, _e, cb) {
        written += c.length;
        maxAhead = Math.max(maxAhead, src.pulled() - written);
        setImmediate(cb);
      },
    });
    const hash = createHash('sha256');
    stream.on('data', (c: Buffer) => hash.update(c));
    await pipeline(stream, sink);
    assert.equal(written, input.length);
    assert.equal(hash.digest('hex'), sha256(input));
    assert.ok(maxAhead < 1024 * 1024, `input ran ${maxAhead} bytes ahead of the consumer`);
  });

  it('a whole small stream in one chunk comes through whole', async () => {
    const input = fixture('zfs-fuse.send-i.prefix.bin'); // a whole 624-byte stream
    const { header, stream } = await readStreamHeader(Readable.from([input]));
    assert.equal(header.kind, 'substream');
    assert.equal(sha256(await drain(stream)), sha256(input));
  });

  it('a truncated header is refused, and the input destroyed', async () => {
    const buf = fixture('zfs-fuse.send-R-with-child.prefix.bin');
    for (const len of [0, 100, 312, 2000, 2179]) {
      const src = source(buf.subarray(0, len), 100);
      await assert.rejects(readStreamHeader(src.stream), (e: unknown) => {
        assert.ok(e instanceof StreamHeaderError);
        assert.equal(e.code, 'truncated');
        assert.match(e.message, new RegExp(`input ended after ${len} bytes, inside the header`));
        return true;
      });
      assert.equal(src.stream.destroyed, true);
    }
  });

  it('a garbled header is refused without reading the rest of the input', async () => {
    const src = source(Buffer.concat([Buffer.alloc(400, 'x'), randomBytes(4 * 1024 * 1024)]), 4096);
    await assert.rejects(readStreamHeader(src.stream), (e: unknown) => e instanceof StreamHeaderError && e.code === 'bad-magic');
    assert.ok(src.pulled() < 1024 * 1024);
    assert.equal(src.stream.destroyed, true);
  });

  it('an overlong payload length is refused before the payload is read', async () => {
    const b = Buffer.from(fixture('zfs-fuse.send-R-with-child.prefix.bin'));
    b.writeUInt32LE(0x7fffffff, 4);
    const src = source(Buffer.concat([b, randomBytes(4 * 1024 * 1024)]), 4096);
    await assert.rejects(readStreamHeader(src.stream), (e: unknown) => e instanceof StreamHeaderError && e.code === 'too-large');
    assert.ok(src.pulled() < 1024 * 1024);
  });

  it('an input error is passed on, before and after the header', async () => {
    const broken = new Readable({
      read() {
        this.destroy(new Error('ssh went away'));
      },
    });
    await assert.rejects(readStreamHeader(broken), /ssh went away/);
    let sent = false;
    const head = fixture('zfs-fuse.send-full.prefix.bin');
    const late = new Readable({
      read() {
        if (!sent) {
          sent = true;
          this.push(head);
        } else this.destroy(new Error('cut mid-stream'));
      },
    });
    const { stream } = await readStreamHeader(late);
    await assert.rejects(drain(stream), /cut mid-stream/);
  });

  it('destroying the returned stream destroys the input', async () => {
    const src = source(Buffer.concat([fixture('zfs-fuse.send-full.prefix.bin'), randomBytes(1024 * 1024)]), 4096);
    const { stream } = await readStreamHeader(src.stream);
    stream.destroy();
    await sleep(20);
    assert.equal(src.stream.destroyed, true);
  });
});

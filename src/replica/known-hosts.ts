// known_hosts: parsing and host key verification with OpenSSH's semantics (sshd(8),
// "SSH_KNOWN_HOSTS FILE FORMAT"): an optional marker (@revoked, @cert-authority), a
// hostnames field (comma-separated patterns with `*`/`?` wildcards and `!` negation,
// or one hashed `|1|salt|hash` name), the key type, the base64 key and a comment.
//
// Two deliberate choices, both failing closed:
// - A @revoked key "must not ever be accepted" (sshd(8)): it is refused for every host,
//   whatever the hostnames field of its line says, and even if another line pins it.
//   (OpenSSH's client only consults the @revoked lines whose hostnames match the host,
//   hence the man page's `@revoked *` example; refusing more is the safe side.)
// - ssh2 does not verify host certificates, so a @cert-authority line never makes a key
//   trusted; a host that only a @cert-authority line matches is refused with a message
//   that says so, rather than as merely "unknown".
import { createHmac } from 'node:crypto';

export type KnownHostMarker = 'revoked' | 'cert-authority';

export interface KnownHostEntry {
  /** 1-based line number in the file */
  line: number;
  marker: KnownHostMarker | null;
  /** host patterns as written (`!` negation and `*`/`?` included); empty for a hashed entry */
  patterns: string[];
  /** a hashed hostname: HMAC-SHA1(salt, name) */
  hashed?: { salt: Buffer; hash: Buffer };
  keyType: string;
  /** the key blob (SSH wire format), as the server presents it */
  key: Buffer;
  comment: string;
}

export interface MalformedLine {
  line: number;
  problem: string;
}

export interface KnownHosts {
  entries: KnownHostEntry[];
  /** lines that are neither blank, a comment nor a valid entry: skipped, never trusted */
  malformed: MalformedLine[];
}

export type HostKeyRefusal = 'unknown' | 'mismatch' | 'revoked' | 'cert-authority-unsupported';

export type HostKeyVerdict =
  | { ok: true; /** the line that pins the key */ line: number }
  | { ok: false; reason: HostKeyRefusal; message: string };

export interface VerifyContext {
  /** how the host is named in messages; default "address:port" */
  where?: string;
  /** the known_hosts file, for messages; default "known_hosts" */
  file?: string;
}

const MARKERS: Record<string, KnownHostMarker> = { '@revoked': 'revoked', '@cert-authority': 'cert-authority' };
const SHA1_BYTES = 20;

/** Strict base64 (padded, canonical): what a key or a hashed-name field must be. */
function decodeBase64(s: string): Buffer | undefined {
  if (s.length === 0 || s.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(s)) return undefined;
  const b = Buffer.from(s, 'base64');
  return b.toString('base64') === s ? b : undefined;
}

/** The key type a blob names in its first SSH string, or undefined when it is not a blob. */
function blobKeyType(blob: Buffer): string | undefined {
  if (blob.length < 4) return undefined;
  const n = blob.readUInt32BE(0);
  if (n === 0 || 4 + n >= blob.length) return undefined; // a type and some key material
  return blob.subarray(4, 4 + n).toString('latin1');
}

function parseLine(line: string, lineNo: number): KnownHostEntry | string {
  let rest = line;
  let marker: KnownHostMarker | null = null;
  if (rest.startsWith('@')) {
    const word = /^\S+/.exec(rest)![0];
    const m = MARKERS[word];
    if (!m) return `unknown marker ${word}`;
    marker = m;
    rest = rest.slice(word.length).trimStart();
  }
  const f = /^(\S+)\s+(\S+)\s+(\S+)(?:\s+(.*))?$/.exec(rest);
  if (!f) return 'expected: [marker] hostnames keytype base64-key [comment]';
  const hosts = f[1]!;
  const keyType = f[2]!;
  const keyB64 = f[3]!;
  const comment = f[4] ?? '';

  const key = decodeBase64(keyB64);
  if (!key) return 'the key is not valid base64';
  const own = blobKeyType(key);
  if (own === undefined) return 'the key is not an SSH public key blob';
  if (own !== keyType) return `key type ${keyType} does not match the key's own type ${own}`;

  const entry: KnownHostEntry = { line: lineNo, marker, patterns: [], keyType, key, comment };
  if (hosts.startsWith('|')) {
    // only one hashed name per line, and no pattern operators on it (sshd(8))
    const parts = hosts.split('|');
    if (parts.length !== 4 || parts[1] !== '1') return 'a hashed hostname must be |1|salt|hash';
    const salt = decodeBase64(parts[2]!);
    const hash = decodeBase64(parts[3]!);
    if (salt?.length !== SHA1_BYTES || hash?.length !== SHA1_BYTES) return 'a hashed hostname needs a 20-byte salt and a 20-byte hash';
    entry.hashed = { salt, hash };
  } else {
    const patterns = hosts.split(',');
    if (patterns.some((p) => p === '' || p === '!')) return 'empty host pattern';
    entry.patterns = patterns;
  }
  return entry;
}

/** Parses a known_hosts file; malformed lines are skipped and reported, never trusted. */
export function parseKnownHosts(text: string): KnownHosts {
  const out: KnownHosts = { entries: [], malformed: [] };
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    const r = parseLine(line, i + 1);
    if (typeof r === 'string') out.malformed.push({ line: i + 1, problem: r });
    else out.entries.push(r);
  });
  return out;
}

/** The name known_hosts files record for address:port: "addr" on port 22, else "[addr]:port". */
export function knownHostName(address: string, port: number): string {
  return (port === 22 ? address : `[${address}]:${port}`).toLowerCase();
}

/** OpenSSH's glob: `*` matches any run of characters (none included), `?` exactly one. */
export function matchGlob(name: string, pattern: string): boolean {
  let n = 0;
  let p = 0;
  let star = -1; // pattern index of the last `*`
  let resume = 0; // name index that `*` has absorbed up to
  while (n < name.length) {
    if (p < pattern.length && (pattern[p] === '?' || pattern[p] === name[n])) {
      n++;
      p++;
    } else if (p < pattern.length && pattern[p] === '*') {
      star = p++;
      resume = n;
    } else if (star >= 0) {
      p = star + 1;
      n = ++resume;
    } else {
      return false;
    }
  }
  while (pattern[p] === '*') p++;
  return p === pattern.length;
}

/**
 * A hostnames pattern list against a host name: true when at least one positive pattern
 * matches and no negated one does (a negated match rejects the line outright).
 */
export function matchHostPatterns(name: string, patterns: readonly string[]): boolean {
  let positive = false;
  for (const raw of patterns) {
    const negated = raw.startsWith('!');
    if (!matchGlob(name, (negated ? raw.slice(1) : raw).toLowerCase())) continue;
    if (negated) return false;
    positive = true;
  }
  return positive;
}

/** Whether an entry's hostnames field (patterns or hashed name) names address:port. */
export function entryMatchesHost(entry: KnownHostEntry, address: string, port: number): boolean {
  const name = knownHostName(address, port);
  if (entry.hashed) return createHmac('sha1', entry.hashed.salt).update(name).digest().equals(entry.hashed.hash);
  return matchHostPatterns(name, entry.patterns);
}

/** The key blobs pinned for address:port by plain (unmarked) lines. */
export function pinnedKeys(known: KnownHosts, address: string, port: number): Buffer[] {
  return known.entries.filter((e) => e.marker === null && entryMatchesHost(e, address, port)).map((e) => e.key);
}

function malformedNote(known: KnownHosts): string {
  const n = known.malformed.length;
  if (n === 0) return '';
  const lines = known.malformed.map((m) => m.line);
  const shown = lines.slice(0, 10).join(', ') + (n > 10 ? ', ...' : '');
  return ` (${n} malformed line${n === 1 ? '' : 's'} skipped: ${n === 1 ? 'line' : 'lines'} ${shown})`;
}

/**
 * Decides whether the key a host presented is trusted. In order: a key on any @revoked
 * line is refused; a plain line for this host with this key accepts it; plain lines for
 * this host with other keys refuse it (mismatch); a host that only @cert-authority lines
 * name is refused (host certificates are not supported); otherwise the host is unknown.
 */
export function verifyHostKey(known: KnownHosts, address: string, port: number, presentedKey: Buffer, ctx: VerifyContext = {}): HostKeyVerdict {
  const where = ctx.where ?? `${address}:${port}`;
  const file = ctx.file ?? 'known_hosts';
  const note = malformedNote(known);

  const revoked = known.entries.find((e) => e.marker === 'revoked' && e.key.equals(presentedKey));
  if (revoked) {
    return { ok: false, reason: 'revoked', message: `host key of ${where} is revoked (@revoked, line ${revoked.line} of ${file}); refusing to connect` };
  }

  const forHost = known.entries.filter((e) => e.marker !== 'revoked' && entryMatchesHost(e, address, port));
  const plain = forHost.filter((e) => e.marker === null);
  const pin = plain.find((e) => e.key.equals(presentedKey));
  if (pin) return { ok: true, line: pin.line };
  if (plain.length > 0) {
    return { ok: false, reason: 'mismatch', message: `host key of ${where} does not match ${file} (possible man-in-the-middle, or the host was reinstalled); refusing to connect${note}` };
  }

  const ca = forHost.find((e) => e.marker === 'cert-authority');
  if (ca) {
    return {
      ok: false,
      reason: 'cert-authority-unsupported',
      message:
        `host key of ${where} is not pinned in ${file}: only a @cert-authority line (line ${ca.line}) names this host, ` +
        `and host certificates are not supported by this agent; pin the host's own key (e.g. from ssh-keyscan) instead; refusing to connect${note}`,
    };
  }
  return { ok: false, reason: 'unknown', message: `host key of ${where} is unknown: no entry in ${file}; refusing to connect${note}` };
}

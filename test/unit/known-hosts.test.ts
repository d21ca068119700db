// known_hosts with OpenSSH's semantics (sshd(8), SSH_KNOWN_HOSTS FILE FORMAT): plain,
// [addr]:port and hashed names, wildcards, negation, @revoked, @cert-authority (refused:
// ssh2 does not verify host certificates), malformed lines and comments. Keys are real
// ed25519 keys in SSH wire format, as ssh2's hostVerifier presents them.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, generateKeyPairSync, randomBytes } from 'node:crypto';
import ssh2 from 'ssh2';
import { parseKnownHosts, verifyHostKey, pinnedKeys, type HostKeyVerdict } from '../../src/replica/known-hosts.js';

const sshString = (b: Buffer) => {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(b.length);
  return Buffer.concat([len, b]);
};

/** A fresh ed25519 public key blob (string "ssh-ed25519", string key). */
function ed25519(): Buffer {
  const { publicKey } = generateKeyPairSync('ed25519');
  const raw = Buffer.from(publicKey.export({ format: 'jwk' }).x!, 'base64url');
  return Buffer.concat([sshString(Buffer.from('ssh-ed25519')), sshString(raw)]);
}

const K = ed25519();
const K2 = ed25519();
const CA = ed25519();
/** "ssh-ed25519 <base64>": the keytype and key fields of a known_hosts line */
const pub = (blob: Buffer) => `ssh-ed25519 ${blob.toString('base64')}`;

const verify = (text: string, address: string, port: number, key: Buffer): HostKeyVerdict =>
  verifyHostKey(parseKnownHosts(text), address, port, key, { where: `x (${address}:${port})`, file: '/etc/kh' });

const refused = (v: HostKeyVerdict) => (v.ok ? 'ok' : v.reason);

describe('known_hosts', () => {
  it('test keys are what ssh2 itself parses from an OpenSSH public key line', () => {
    const parsed = ssh2.utils.parseKey(`${pub(K)} comment`);
    assert.ok(!(parsed instanceof Error), String(parsed));
    const key = Array.isArray(parsed) ? parsed[0]! : parsed;
    assert.equal(key.type, 'ssh-ed25519');
    assert.ok(key.getPublicSSH().equals(K));
  });

  it('a plain entry pins its key; another key is a mismatch, another host unknown (messages as before)', () => {
    const text = `10.0.0.5,node5 ${pub(K)}\n`;
    assert.deepEqual(verify(text, '10.0.0.5', 22, K), { ok: true, line: 1 });
    const mismatch = verify(text, '10.0.0.5', 22, K2);
    assert.equal(refused(mismatch), 'mismatch');
    assert.equal(
      !mismatch.ok && mismatch.message,
      'host key of x (10.0.0.5:22) does not match /etc/kh (possible man-in-the-middle, or the host was reinstalled); refusing to connect',
    );
    const unknown = verify(text, '10.0.0.6', 22, K);
    assert.equal(refused(unknown), 'unknown');
    assert.equal(!unknown.ok && unknown.message, 'host key of x (10.0.0.6:22) is unknown: no entry in /etc/kh; refusing to connect');
  });

  it('a non-22 port is matched as [addr]:port, and only so', () => {
    const text = `[10.0.0.9]:2222 ${pub(K)}\n10.0.0.8 ${pub(K)}\n`;
    assert.equal(refused(verify(text, '10.0.0.9', 2222, K)), 'ok');
    assert.equal(refused(verify(text, '10.0.0.9', 22, K)), 'unknown');
    assert.equal(refused(verify(text, '10.0.0.8', 2222, K)), 'unknown');
  });

  it('a hashed entry is HMAC-SHA1(salt, name) of the same name', () => {
    const hashed = (name: string) => {
      const salt = randomBytes(20);
      return `|1|${salt.toString('base64')}|${createHmac('sha1', salt).update(name).digest('base64')}`;
    };
    const text = `${hashed('[10.0.0.9]:2222')} ${pub(K)}\n${hashed('10.0.0.7')} ${pub(K2)}\n`;
    assert.equal(refused(verify(text, '10.0.0.9', 2222, K)), 'ok');
    assert.equal(refused(verify(text, '10.0.0.7', 22, K2)), 'ok');
    assert.equal(refused(verify(text, '10.0.0.7', 22, K)), 'mismatch');
    assert.equal(refused(verify(text, '10.0.0.9', 22, K)), 'unknown');
  });

  it('* and ? are wildcards', () => {
    const text = `10.0.1.*,[10.0.2.?]:2222 ${pub(K)}\n`;
    assert.equal(refused(verify(text, '10.0.1.17', 22, K)), 'ok');
    assert.equal(refused(verify(text, '10.0.2.5', 2222, K)), 'ok');
    assert.equal(refused(verify(text, '10.0.2.15', 2222, K)), 'unknown'); // ? is one character
    assert.equal(refused(verify(text, '10.0.1.17', 2222, K)), 'unknown');
    assert.equal(refused(verify(text, '10.0.10.1', 22, K)), 'unknown');
  });

  it('a negated pattern beats a positive one on the same line; negations alone match nothing', () => {
    const text = `10.0.0.*,!10.0.0.66 ${pub(K)}\n!10.0.0.1 ${pub(K)}\n`;
    assert.equal(refused(verify(text, '10.0.0.5', 22, K)), 'ok');
    assert.equal(refused(verify(text, '10.0.0.66', 22, K)), 'unknown');
    assert.equal(refused(verify(text, '10.0.9.2', 22, K)), 'unknown');
    // the host's own line decides, not the line that excludes it
    assert.equal(refused(verify(`${text}10.0.0.66 ${pub(K2)}\n`, '10.0.0.66', 22, K)), 'mismatch');
  });

  it('a @revoked key is refused even when another line pins it, whatever host its line names', () => {
    const pinned = `10.0.0.5 ${pub(K)}\n`;
    const v = verify(`${pinned}@revoked * ${pub(K)}\n`, '10.0.0.5', 22, K);
    assert.equal(refused(v), 'revoked');
    assert.match(!v.ok ? v.message : '', /^host key of x \(10\.0\.0\.5:22\) is revoked \(@revoked, line 2 of \/etc\/kh\); refusing to connect$/);
    assert.equal(refused(verify(`@revoked other-host ${pub(K)}\n${pinned}`, '10.0.0.5', 22, K)), 'revoked');
    // a revoked line is never a pin: another key for the host is judged by the plain lines
    assert.equal(refused(verify(`${pinned}@revoked 10.0.0.5 ${pub(K2)}\n`, '10.0.0.5', 22, K)), 'ok');
    assert.equal(refused(verify(`@revoked 10.0.0.6 ${pub(K2)}\n`, '10.0.0.6', 22, K)), 'unknown');
  });

  it('a host named only by @cert-authority lines is refused: host certificates are unsupported', () => {
    const text = `@cert-authority 10.0.0.*,*.example.org ${pub(CA)}\n`;
    const v = verify(text, '10.0.0.5', 22, K);
    assert.equal(refused(v), 'cert-authority-unsupported');
    assert.match(!v.ok ? v.message : '', /host certificates are not supported by this agent; pin the host's own key/);
    // a @cert-authority line never makes a key trusted, not even its own
    assert.equal(refused(verify(text, '10.0.0.5', 22, CA)), 'cert-authority-unsupported');
    assert.equal(refused(verify(text, '10.0.1.5', 22, K)), 'unknown');
    assert.deepEqual(pinnedKeys(parseKnownHosts(text), '10.0.0.5', 22), []);
  });

  it('with @cert-authority and a plain pin for the host, the plain pin decides', () => {
    const text = `@cert-authority * ${pub(CA)}\n10.0.0.5 ${pub(K)}\n`;
    assert.deepEqual(verify(text, '10.0.0.5', 22, K), { ok: true, line: 2 });
    assert.equal(refused(verify(text, '10.0.0.5', 22, K2)), 'mismatch');
    assert.equal(refused(verify(text, '10.0.0.5', 22, CA)), 'mismatch');
  });

  it('malformed lines are skipped, counted, and named in the refusal', () => {
    const b64 = K.toString('base64');
    const text = [
      `@bogus 10.0.0.5 ${pub(K)}`, // 1: unknown marker
      `10.0.0.5 ssh-ed25519`, // 2: no key
      `10.0.0.5 ssh-ed25519 not*base64`, // 3
      `10.0.0.5 ssh-rsa ${b64}`, // 4: type differs from the key's own
      `|1|c2FsdA==|aGFzaA== ${pub(K)}`, // 5: salt and hash too short
      `10.0.0.5,,node5 ${pub(K)}`, // 6: empty pattern
      `@revoked`, // 7: marker only
      `10.0.0.5 ssh-ed25519 ${randomBytes(51).toString('base64')}`, // 8: not a key blob
      `10.0.0.6 ${pub(K)}`, // 9: fine
    ].join('\n');
    const known = parseKnownHosts(text);
    assert.deepEqual(known.malformed.map((m) => m.line), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.deepEqual(known.entries.map((e) => e.line), [9]);
    assert.equal(verifyHostKey(known, '10.0.0.6', 22, K).ok, true);
    const v = verifyHostKey(known, '10.0.0.5', 22, K, { where: 'n5', file: '/etc/kh' });
    assert.equal(refused(v), 'unknown');
    assert.equal(!v.ok && v.message, 'host key of n5 is unknown: no entry in /etc/kh; refusing to connect (8 malformed lines skipped: lines 1, 2, 3, 4, 5, 6, 7, 8)');
  });

  it('the comment field, comment lines and blank lines are ignored', () => {
    const text = `# 10.0.0.8 ${pub(K)}\n\n   \n10.0.0.5 ${pub(K)}   root@node5 (reinstalled 2024)\r\n\t# indented comment\n`;
    const known = parseKnownHosts(text);
    assert.equal(known.malformed.length, 0);
    assert.equal(known.entries.length, 1);
    assert.equal(known.entries[0]!.comment, 'root@node5 (reinstalled 2024)');
    assert.deepEqual(verifyHostKey(known, '10.0.0.5', 22, K), { ok: true, line: 4 });
    assert.equal(refused(verifyHostKey(known, '10.0.0.8', 22, K)), 'unknown');
  });
});

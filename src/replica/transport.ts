// SSH transport (ssh2): one connection per target host, reused for every project
// (each operation is a channel); host keys pinned from a known_hosts file; keepalives;
// per-operation timeouts; and for transfers a byte meter with a progress watchdog,
// an optional bandwidth cap, and backpressure from `zfs send` to the remote receiver.
import { Client, type ClientChannel, type ConnectConfig } from 'ssh2';
import { readFileSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { Transform, type Readable, type Writable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { wholeStreamTaken } from '../zfs/adapter.js';
import { withTimeout } from '../util/timeout.js';
import { parseKnownHosts, verifyHostKey, type KnownHosts } from './known-hosts.js';

export interface SshTarget {
  /** host id (for messages) */
  host: string;
  address: string;
  port: number;
}

export interface SshOptions {
  user: string;
  privateKey: string;
  knownHostsFile: string;
  keepaliveSeconds: number;
  connectTimeoutSeconds: number;
  operationTimeoutSeconds: number;
  stallTimeoutSeconds: number;
  compression: boolean;
}

export class SshError extends Error {
  constructor(
    message: string,
    readonly target: string,
    readonly command?: string,
    readonly exitCode?: number | null,
    readonly stderr?: string,
  ) {
    super(message);
    this.name = 'SshError';
  }
}

export class HostKeyError extends SshError {}

export interface ExecResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

export interface TransferProgress {
  bytes: number;
  elapsedMs: number;
}

export interface TransferOptions {
  /** bytes per second, 0 = unlimited */
  bandwidthLimit?: number;
  onProgress?: (p: TransferProgress) => void;
  signal?: AbortSignal;
}

// ---- meter / throttle / watchdog --------------------------------------------------

/** Counts bytes, enforces a bandwidth cap (token bucket), reports progress. */
export class Meter extends Transform {
  bytes = 0;
  lastProgressAt = Date.now();
  private readonly started = Date.now();
  private allowance: number;
  private lastRefill = Date.now();
  private lastReport = 0;

  constructor(
    private readonly limit: number,
    private readonly onProgress?: (p: TransferProgress) => void,
  ) {
    super({ highWaterMark: 1 << 20 });
    this.allowance = limit;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    this.lastProgressAt = Date.now();
    const now = Date.now();
    if (this.onProgress && now - this.lastReport >= 250) {
      this.lastReport = now;
      this.onProgress({ bytes: this.bytes, elapsedMs: now - this.started });
    }
    if (this.limit <= 0) {
      cb(null, chunk);
      return;
    }
    this.allowance = Math.min(this.limit, this.allowance + ((now - this.lastRefill) / 1000) * this.limit);
    this.lastRefill = now;
    this.allowance -= chunk.length;
    if (this.allowance >= 0) {
      cb(null, chunk);
      return;
    }
    const waitMs = (-this.allowance / this.limit) * 1000;
    setTimeout(() => cb(null, chunk), waitMs);
  }

  override _flush(cb: TransformCallback): void {
    this.onProgress?.({ bytes: this.bytes, elapsedMs: Date.now() - this.started });
    cb();
  }
}

// ---- connection -------------------------------------------------------------------

export class SshConnection {
  private client?: Client;
  private connecting?: Promise<Client>;
  private readonly knownHosts: KnownHosts;
  /** ms: the last bytes received from the target (keepalive replies included): when it was last seen up */
  lastReceivedAt = 0;
  private lastAttemptAt = 0;

  constructor(
    readonly target: SshTarget,
    private readonly opts: SshOptions,
  ) {
    let text: string;
    try {
      text = readFileSync(opts.knownHostsFile, 'utf8');
    } catch (e) {
      throw new HostKeyError(`cannot read known_hosts ${opts.knownHostsFile}: ${(e as Error).message}`, target.host);
    }
    this.knownHosts = parseKnownHosts(text);
  }

  private where(): string {
    return `${this.target.host} (${this.target.address}:${this.target.port})`;
  }

  private connect(): Promise<Client> {
    if (this.client) return Promise.resolve(this.client);
    this.connecting ??= new Promise<Client>((resolve, reject) => {
      const c = new Client();
      let hostKeyProblem: string | undefined;
      let privateKey: Buffer;
      try {
        privateKey = readFileSync(this.opts.privateKey);
      } catch (e) {
        this.connecting = undefined;
        reject(new SshError(`cannot read SSH private key ${this.opts.privateKey}: ${(e as Error).message}`, this.target.host));
        return;
      }
      // our own socket, so that every byte received (keepalive replies too) says when
      // the target was last up: an idle connection is the cycle's evidence of reachability
      const sock = tcpConnect({ host: this.target.address, port: this.target.port });
      sock.on('data', () => {
        this.lastReceivedAt = Date.now();
      });
      sock.on('error', () => undefined); // reported through the ssh2 client
      const cfg: ConnectConfig = {
        sock,
        host: this.target.address,
        port: this.target.port,
        username: this.opts.user,
        privateKey,
        readyTimeout: this.opts.connectTimeoutSeconds * 1000,
        keepaliveInterval: this.opts.keepaliveSeconds * 1000,
        keepaliveCountMax: 3,
        hostVerifier: (key: Buffer) => {
          // the known_hosts rules (markers, patterns, hashed names) live in known-hosts.ts
          const verdict = verifyHostKey(this.knownHosts, this.target.address, this.target.port, key, {
            where: this.where(),
            file: this.opts.knownHostsFile,
          });
          if (!verdict.ok) hostKeyProblem = verdict.message;
          return verdict.ok;
        },
        algorithms: {
          cipher: ['aes128-gcm@openssh.com', 'aes256-gcm@openssh.com', 'chacha20-poly1305@openssh.com', 'aes128-ctr', 'aes256-ctr'],
          compress: this.opts.compression ? ['zlib@openssh.com', 'zlib', 'none'] : ['none'],
        },
      };
      c.once('ready', () => {
        this.client = c;
        this.connecting = undefined;
        resolve(c);
      });
      c.once('error', (err: Error & { level?: string }) => {
        this.connecting = undefined;
        if (this.client === c) this.client = undefined;
        if (hostKeyProblem) reject(new HostKeyError(hostKeyProblem, this.target.host));
        else reject(new SshError(`ssh to ${this.where()}: ${err.message}${err.level ? ` (${err.level})` : ''}`, this.target.host));
      });
      c.on('close', () => {
        if (this.client === c) this.client = undefined;
      });
      c.connect(cfg);
    });
    return this.connecting;
  }

  /**
   * Keeps a connection open (keepalives flow, nothing else): opens one in the background
   * if there is none, at most once per keepalive interval. No round trip of the protocol.
   */
  keepOpen(): void {
    if (this.client || this.connecting || Date.now() - this.lastAttemptAt < this.opts.keepaliveSeconds * 1000) return;
    this.lastAttemptAt = Date.now();
    this.connect().catch(() => undefined);
  }

  private async channel(command: string): Promise<ClientChannel> {
    const c = await this.connect();
    return new Promise((resolve, reject) => {
      c.exec(command, (err, ch) => {
        if (err) {
          // a dead connection: drop it so that the next operation reconnects
          if (this.client === c) {
            this.client = undefined;
            c.end();
          }
          reject(new SshError(`ssh to ${this.where()}: cannot open a channel for "${command}": ${err.message}`, this.target.host, command));
        } else resolve(ch);
      });
    });
  }

  /** Runs a short command, collecting stdout (bounded) and stderr. */
  async exec(command: string, opts: { timeoutSeconds?: number; maxStdout?: number } = {}): Promise<ExecResult> {
    const ch = await this.channel(command);
    const max = opts.maxStdout ?? 512 * 1024 * 1024;
    return new Promise((resolve, reject) => {
      const out: Buffer[] = [];
      let outLen = 0;
      let err = '';
      let code: number | null = null;
      let signal: string | null = null;
      const timer = setTimeout(() => {
        ch.close();
        reject(new SshError(`ssh ${this.where()} "${command}": no answer within ${opts.timeoutSeconds ?? this.opts.operationTimeoutSeconds} s`, this.target.host, command));
      }, (opts.timeoutSeconds ?? this.opts.operationTimeoutSeconds) * 1000);
      ch.on('data', (d: Buffer) => {
        outLen += d.length;
        if (outLen <= max) out.push(d);
      });
      ch.stderr.on('data', (d: Buffer) => {
        if (err.length < 65536) err += d.toString('utf8');
      });
      ch.on('exit', (c: number | null, s?: string) => {
        code = c;
        signal = s ?? null;
      });
      ch.on('close', () => {
        clearTimeout(timer);
        resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: err });
      });
      ch.end();
    });
  }

  /**
   * Streams `source` into a remote command's stdin (backpressure end to end) and
   * resolves with the remote exit status. A transfer that moves no byte for
   * stallTimeoutSeconds is aborted.
   */
  transfer(command: string, source: Readable, opts: TransferOptions = {}): Promise<ExecResult & { bytes: number }> {
    return this.stream(command, opts, (s) => source.destroy(new Error(s)), async (ch, meter, closed) => {
      let pipeErr: Error | undefined;
      await pipeline(source, meter, ch).catch((e: Error) => (pipeErr = e));
      // wait for the remote exit status (the receiver finishes after stdin EOF); it
      // explains a failure better than the local EPIPE
      let exitTimer: NodeJS.Timeout | undefined;
      await Promise.race([
        closed,
        new Promise<void>((_, reject) => {
          exitTimer = setTimeout(() => reject(new SshError(`ssh ${this.where()} "${command}": no exit status within ${this.opts.operationTimeoutSeconds} s after the stream ended`, this.target.host, command)), this.opts.operationTimeoutSeconds * 1000);
        }),
      ]).finally(() => clearTimeout(exitTimer)); // a pending timer would keep a CLI process alive
      if (pipeErr) throw pipeErr;
    });
  }

  /**
   * The reverse of transfer: streams a remote command's stdout into `sink` (restore
   * fetches a snapshot back from a replica). Same watchdog, abort and error reporting.
   */
  download(command: string, sink: Writable, opts: TransferOptions & { sinkDone?: Promise<void> } = {}): Promise<ExecResult & { bytes: number }> {
    // a stalled or aborted download also ends the local sink: a sink that stopped reading
    // (a hung local `zfs receive`) would otherwise hold the pipeline open for ever
    return this.stream(command, opts, (s) => sink.destroy(new Error(s)), async (ch, meter, closed) => {
      ch.end(); // nothing to send: the remote side only writes
      let pipeErr: Error | undefined;
      const piped = pipeline(ch, meter, sink).catch(async (e: Error) => {
        // the sink is a `zfs receive` (sinkDone: its exit) that exited 0 after every byte
        // reached it, before Node saw the pipe's last write complete: not an error
        const ok = opts.sinkDone ? await withTimeout(opts.sinkDone, 10_000, () => 'sink').then(() => true, () => false) : false;
        if (!(ok && wholeStreamTaken(meter, e))) pipeErr = e;
      });
      await Promise.all([piped, closed]);
      if (pipeErr) throw pipeErr;
    });
  }

  /**
   * What transfer and download share: the channel's stderr and exit status, the byte
   * meter, the stall watchdog, the abort signal, and one error naming the command, the
   * bytes moved, the remote exit code and stderr.
   */
  private async stream(
    command: string,
    opts: TransferOptions,
    stopLocal: (reason: string) => void,
    run: (ch: ClientChannel, meter: Meter, closed: Promise<void>) => Promise<void>,
  ): Promise<ExecResult & { bytes: number }> {
    const ch = await this.channel(command);
    const meter = new Meter(opts.bandwidthLimit ?? 0, opts.onProgress);
    let err = '';
    let code: number | null = null;
    let signal: string | null = null;
    const stdout: Buffer[] = [];
    ch.on('data', (d: Buffer) => {
      if (stdout.length < 1024) stdout.push(d);
    });
    ch.stderr.on('data', (d: Buffer) => {
      if (err.length < 65536) err += d.toString('utf8');
    });
    ch.on('exit', (c: number | null, s?: string) => {
      code = c;
      signal = s ?? null;
    });
    const closed = new Promise<void>((r) => ch.once('close', () => r()));
    let abortReason: string | undefined;
    const stop = (reason: string) => {
      abortReason = reason;
      stopLocal(reason);
      ch.close();
    };
    const stallMs = this.opts.stallTimeoutSeconds * 1000;
    const watchdog = setInterval(() => {
      if (Date.now() - meter.lastProgressAt > stallMs) stop(`no progress for ${this.opts.stallTimeoutSeconds} s after ${meter.bytes} bytes`);
    }, Math.min(1000, stallMs / 4));
    const onAbort = () => stop('aborted');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    if (opts.signal?.aborted) onAbort(); // aborted before the channel opened: no event will come
    try {
      await run(ch, meter, closed).catch((e: Error) => {
        // the remote side's exit status explains more than EPIPE; keep the first reason
        if (e instanceof SshError && !abortReason) throw e;
        abortReason ??= e.message;
      });
    } finally {
      clearInterval(watchdog);
      opts.signal?.removeEventListener('abort', onAbort);
    }
    const result = { code, signal, stdout: Buffer.concat(stdout).toString('utf8'), stderr: err, bytes: meter.bytes };
    if (code !== 0 || abortReason) {
      const why = code !== null && code !== 0 ? `remote exit ${code}` : abortReason ?? `remote ended without status${signal ? ` (signal ${signal})` : ''}`;
      throw new SshError(`ssh ${this.where()} "${command}" failed after ${meter.bytes} bytes: ${why}: ${err.trim() || abortReason || '(no stderr)'}`, this.target.host, command, code, err);
    }
    return result;
  }

  close(): void {
    this.client?.end();
    this.client = undefined;
  }
}

/** One connection per target host, created on first use and reused. */
export class SshPool {
  private readonly conns = new Map<string, SshConnection>();
  constructor(private readonly opts: SshOptions) {}

  get(target: SshTarget): SshConnection {
    const key = `${target.host}|${target.address}|${target.port}`;
    let c = this.conns.get(key);
    if (!c) this.conns.set(key, (c = new SshConnection(target, this.opts)));
    return c;
  }

  get size(): number {
    return this.conns.size;
  }

  /** ms: the last bytes received from any connection to this host (0: never) */
  lastReceivedFrom(host: string): number {
    let at = 0;
    for (const c of this.conns.values()) if (c.target.host === host) at = Math.max(at, c.lastReceivedAt);
    return at;
  }

  closeAll(): void {
    for (const c of this.conns.values()) c.close();
    this.conns.clear();
  }
}

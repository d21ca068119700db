// `storagectl [--config FILE] serve-ssh --peer <host>`, the SSH forced command, on a lean
// import path: it runs once per replication operation, so it loads only the
// configuration, the zfs adapter, the receiver and the catalog backend it is configured
// with (the Cassandra driver only on Cassandra hosts). `--peer` is written by
// `storagectl authorized-keys` into the line of that peer's key: sshd binds the name to
// the key, and the receiver grants that name only what the catalog gives it.
import { readFileSync } from 'node:fs';
import { loadConfig } from '../agent/config.js';
import { Zfs, CommandRunner } from '../zfs/index.js';
import { serve } from '../replica/receiver.js';
import { FactSource, type FactCatalog } from '../replica/auth-facts.js';
import { openCatalog } from '../catalog/index.js';
import * as v from '../util/validate.js';

const DEFAULT_CONFIG = process.env.STORAGE_CONFIG ?? '/etc/storage-agent/config.yaml';

interface ServeArgs {
  config: string;
  peer?: string;
}

/** argv after `storagectl`: [--config FILE] serve-ssh [--peer HOST]; undefined when it is not that. */
export function parseServeArgs(argv: readonly string[]): ServeArgs | undefined {
  const out: ServeArgs = { config: DEFAULT_CONFIG };
  let sawServe = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--config' || a === '-c') out.config = argv[++i] ?? '';
    else if (a.startsWith('--config=')) out.config = a.slice('--config='.length);
    else if (a === '--peer') out.peer = argv[++i] ?? '';
    else if (a.startsWith('--peer=')) out.peer = a.slice('--peer='.length);
    else if (a === 'serve-ssh' && !sawServe) sawServe = true;
    else return undefined;
  }
  return sawServe ? out : undefined;
}

export function isServeSsh(argv: string[]): boolean {
  return parseServeArgs(argv) !== undefined;
}

/** The key sshd reports the session authenticated with (ExposeAuthInfo yes), "type base64". */
function presentedKey(): string | undefined {
  const file = process.env.SSH_USER_AUTH;
  if (!file) return undefined;
  try {
    const line = readFileSync(file, 'utf8').split('\n').find((l) => l.startsWith('publickey '));
    const [, type, b64] = line?.split(' ') ?? [];
    return type && b64 ? `${type} ${b64}` : undefined;
  } catch {
    return undefined;
  }
}

export async function main(argv: string[]): Promise<void> {
  const args = parseServeArgs(argv);
  const fail = (msg: string, code: number) => {
    process.stderr.write(`storagectl serve-ssh: ${msg}\n`);
    process.exitCode = code;
  };
  if (!args) return fail('usage: storagectl [--config FILE] serve-ssh --peer <host>', 3);
  let peer: string | undefined;
  if (args.peer !== undefined) {
    try {
      peer = v.hostId(args.peer, 'serve-ssh --peer');
    } catch (e) {
      return fail((e as Error).message, 3);
    }
  }
  let config;
  try {
    config = loadConfig(args.config);
  } catch (e) {
    return fail((e as Error).message, 3);
  }
  const zfs = new Zfs({
    runner: new CommandRunner({ prefix: config.zfs.commandPrefix }),
    zfs: config.zfs.zfsPath,
    zpool: config.zfs.zpoolPath,
    capabilitiesCache: `${config.stateDir}/capabilities.json`,
  });
  let catalog: Promise<FactCatalog & { close(): Promise<void> }> | undefined;
  const cfg = config;
  const facts = new FactSource(() => (catalog ??= openCatalog(cfg, { connectTimeoutMs: 2000 })), {
    cacheFile: `${config.stateDir}/receiver-facts.db`,
    freshMs: config.receiver.factsFresh * 1000,
    staleMs: config.receiver.factsStaleWhenCatalogDown * 1000,
  });
  try {
    process.exitCode = await serve(
      {
        zfs,
        host: config.host,
        replicasRoot: config.replicasRoot,
        projectsRoot: config.projectsRoot,
        conflictsRoot: `${config.pool}/conflicts`,
        auditLog: config.receiverLog,
        client: process.env.SSH_CLIENT,
        peer,
        presentedKey: presentedKey(),
        facts,
        sessionTimeLimitSeconds: config.receiver.sessionTimeLimit,
        receiveSlots: { dir: `${config.stateDir}/receive-slots`, perPeer: config.receiver.maxReceivesPerPeer },
      },
      process.env.SSH_ORIGINAL_COMMAND,
      process.stdin,
      process.stdout,
      process.stderr,
    );
  } finally {
    facts.close();
    if (catalog) await (await catalog.catch(() => undefined))?.close().catch(() => undefined);
    // a catalog driver that keeps a socket after close() must not keep the SSH session
    // open: fires only if something still holds the event loop 2 s after the answer
    setTimeout(() => process.exit(), 2000).unref();
  }
}

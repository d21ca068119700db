// `storagectl [--config FILE] serve-ssh`, the SSH forced command, on a lean import path:
// it runs once per replication operation, so it loads only the configuration, the zfs
// adapter and the receiver (not the CLI, the catalog drivers or the agent).
import { loadConfig } from '../agent/config.js';
import { Zfs, CommandRunner } from '../zfs/index.js';
import { serve } from '../replica/receiver.js';

const DEFAULT_CONFIG = process.env.STORAGE_CONFIG ?? '/etc/storage-agent/config.yaml';

/** argv as given to storagectl; returns false when this is not a serve-ssh invocation. */
export function isServeSsh(argv: string[]): boolean {
  const rest = argv.filter((a, i) => !(a === '--config' || a === '-c' || argv[i - 1] === '--config' || argv[i - 1] === '-c') && !a.startsWith('--config='));
  return rest.length === 1 && rest[0] === 'serve-ssh';
}

export async function main(argv: string[]): Promise<void> {
  let configPath = DEFAULT_CONFIG;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--config' || argv[i] === '-c') configPath = argv[i + 1] ?? configPath;
    else if (argv[i]!.startsWith('--config=')) configPath = argv[i]!.slice('--config='.length);
  }
  let config;
  try {
    config = loadConfig(configPath);
  } catch (e) {
    process.stderr.write(`storagectl serve-ssh: ${(e as Error).message}\n`);
    process.exitCode = 3;
    return;
  }
  const zfs = new Zfs({
    runner: new CommandRunner({ prefix: config.zfs.commandPrefix }),
    zfs: config.zfs.zfsPath,
    zpool: config.zfs.zpoolPath,
    capabilitiesCache: `${config.stateDir}/capabilities.json`,
  });
  process.exitCode = await serve(
    { zfs, host: config.host, replicasRoot: config.replicasRoot, projectsRoot: config.projectsRoot, auditLog: config.receiverLog, client: process.env.SSH_CLIENT },
    process.env.SSH_ORIGINAL_COMMAND,
    process.stdout,
    process.stderr,
  );
}

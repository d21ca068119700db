// storagectl: the admin CLI. Exit codes: 0 ok, 1 operation failed, 2 usage/validation error,
// 3 not built / environment missing.
import { Command, CommanderError } from 'commander';
import { Zfs, capabilityRows } from '../zfs/index.js';

export async function main(argv: string[]): Promise<void> {
  const program = new Command('storagectl')
    .description('Admin CLI for ZFS project datasets: snapshots, replication, failover, moves')
    .exitOverride()
    .showHelpAfterError();

  program
    .command('capabilities')
    .description('probe the local zfs implementation and print what it supports')
    .option('--json', 'machine-readable output')
    .action(async (opts: { json?: boolean }) => {
      const caps = await new Zfs().capabilities();
      if (opts.json) process.stdout.write(JSON.stringify(caps, null, 2) + '\n');
      else for (const [k, val] of capabilityRows(caps)) process.stdout.write(`${k.padEnd(22)} ${val}\n`);
    });

  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      process.exitCode = e.exitCode === 0 ? 0 : 2;
      return;
    }
    process.stderr.write(`storagectl: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = (e as { name?: string }).name === 'ValidationError' ? 2 : 1;
  }
}

// storage-agent entry point (the daemon arrives with the replication engine).
export async function main(_argv: string[]): Promise<void> {
  process.stderr.write('storage-agent: the daemon is not implemented yet in this build\n');
  process.exitCode = 3;
}

// One host's replica listing over SSH (`storage-v1 list`), parsed and validated: used by
// the agent's cycle, failover, repair-catalog and `storagectl snapshots`.
import type { SshPool } from './transport.js';
import { checkListing, formatRemoteCommand, type RemoteListing } from './protocol.js';

export interface ListedHost {
  id: string;
  address: string;
  port: number;
}

export async function fetchListing(ssh: SshPool, h: ListedHost, opts: { timeoutSeconds?: number } = {}): Promise<RemoteListing> {
  const r = await ssh.get({ host: h.id, address: h.address, port: h.port }).exec(formatRemoteCommand({ op: 'list' }), opts);
  if (r.code !== 0) throw new Error(`listing of ${h.id} failed (exit ${r.code}): ${r.stderr.trim() || '(no stderr)'}`);
  let raw: unknown;
  try {
    raw = JSON.parse(r.stdout);
  } catch {
    throw new Error(`listing of ${h.id} is not JSON: ${JSON.stringify(r.stdout.slice(0, 200))}`);
  }
  return checkListing(raw, h.id);
}

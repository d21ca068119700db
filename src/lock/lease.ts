// Project leases with fencing tokens (the catalog's acquireLock/renewLock/releaseLock):
// failover, move and restore run their side effects inside one. The lease is renewed at
// a third of its length; the token is what makes a stale holder's location write fail
// (Catalog.setLocation rejects any token but the live holder's), so an operator whose
// lease expired mid-way cannot undo someone else's work.
import type { Catalog } from '../catalog/types.js';
import { projectLockName } from '../catalog/types.js';

export class LockedError extends Error {
  constructor(project: string, readonly owner: string, readonly until: number) {
    super(`project ${project} is locked by ${owner} until ${new Date(until).toISOString()}`);
    this.name = 'LockedError';
  }
}

/**
 * A lease owner names the host that holds it: `<role>@<host>:<pid>`. The receivers of
 * other hosts read the host back (ownerHost) to check that a fencing token they are
 * handed belongs to the peer that hands it.
 */
export function leaseOwner(role: string, host: string, pid = process.pid): string {
  if (!/^[a-z][a-z-]{0,31}$/.test(role)) throw new Error(`lease owner role ${JSON.stringify(role)}: expected lowercase letters and '-'`);
  return `${role}@${host}:${pid}`;
}

/** The host of a lease owner written by leaseOwner (undefined for any other shape). */
export function ownerHost(owner: string): string | undefined {
  const m = /^[a-z][a-z-]{0,31}@([a-z0-9][a-z0-9.-]{0,62})(?::[0-9]{1,10})?$/.exec(owner);
  return m?.[1];
}

export interface Lease {
  token: number;
  /** false once a renewal was refused (another holder took over after an expiry) */
  held(): boolean;
}

/** Runs fn holding the project's lease; LockedError when someone else holds it. */
export async function withProjectLease<T>(catalog: Catalog, project: string, owner: string, leaseMs: number, fn: (lease: Lease) => Promise<T>): Promise<T> {
  const name = projectLockName(project);
  const lock = await catalog.acquireLock(name, owner, leaseMs);
  if (!lock.ok) throw new LockedError(project, lock.owner, lock.expiresAt);
  let held = true;
  const renew = setInterval(() => {
    catalog
      .renewLock(name, owner, lock.token, leaseMs)
      .then((ok) => {
        if (!ok) held = false;
      })
      .catch(() => undefined); // a catalog hiccup: the next renewal (or the token) decides
  }, leaseMs / 3);
  try {
    return await fn({ token: lock.token, held: () => held });
  } finally {
    clearInterval(renew);
    await catalog.releaseLock(name, owner, lock.token).catch(() => undefined);
  }
}

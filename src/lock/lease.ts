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

/** The lease may have expired: the step named did not run. */
export class LeaseLostError extends Error {
  constructor(
    readonly project: string,
    readonly step: string,
    why: string,
  ) {
    super(`project ${project}: not doing "${step}": ${why}; nothing was changed by this step (the next holder of the lease, or a re-run, finishes the operation)`);
    this.name = 'LeaseLostError';
  }
}

export interface Lease {
  token: number;
  /** false once a renewal was refused (another holder took over after an expiry) */
  held(): boolean;
  /**
   * Before each irreversible step: throws LeaseLostError unless the lease is still ours
   * with at least `margin` left. Two tests, both must pass: by this process's monotonic
   * clock (the lease runs from the moment the last successful acquire/renew was SENT: a
   * process that was paused, e.g. SIGSTOP, fails here without asking anyone), then by a
   * live read of the lock row (owner and token ours, expiry beyond now + margin).
   */
  check(step: string): Promise<void>;
  /** ms the lease has left by the monotonic clock */
  remainingMs(): number;
}

/** The margin a lease must still have before an irreversible step: a quarter of it, at most 10 s. */
export function leaseMargin(leaseMs: number): number {
  return Math.min(leaseMs / 4, 10_000);
}

/** Runs fn holding the project's lease; LockedError when someone else holds it. */
export async function withProjectLease<T>(catalog: Catalog, project: string, owner: string, leaseMs: number, fn: (lease: Lease) => Promise<T>): Promise<T> {
  const name = projectLockName(project);
  const sentAt = performance.now();
  const lock = await catalog.acquireLock(name, owner, leaseMs);
  if (!lock.ok) throw new LockedError(project, lock.owner, lock.expiresAt);
  let held = true;
  let validUntil = sentAt + leaseMs; // monotonic
  const margin = leaseMargin(leaseMs);
  const renew = setInterval(() => {
    const t = performance.now();
    catalog
      .renewLock(name, owner, lock.token, leaseMs)
      .then((ok) => {
        if (!ok) held = false;
        else validUntil = Math.max(validUntil, t + leaseMs);
      })
      .catch(() => undefined); // a catalog hiccup: the next renewal (or the check) decides
  }, leaseMs / 3);
  const lease: Lease = {
    token: lock.token,
    held: () => held,
    remainingMs: () => validUntil - performance.now(),
    async check(step: string) {
      const left = validUntil - performance.now();
      if (!held) throw new LeaseLostError(project, step, `a renewal of lease ${lock.token} was refused (another holder took it over)`);
      if (left < margin) throw new LeaseLostError(project, step, `lease ${lock.token} has ${Math.round(left)} ms left by this process's clock, less than the margin of ${margin} ms (was this process paused?)`);
      const row = await catalog.getLock(name);
      const now = Date.now();
      if (!row || row.owner !== owner || row.token !== lock.token) {
        held = false;
        throw new LeaseLostError(project, step, `the lock row names ${row?.owner ?? 'no holder'} (token ${row?.token ?? '-'}), not ${owner} (token ${lock.token})`);
      }
      if (row.expiresAt - now < margin) throw new LeaseLostError(project, step, `lease ${lock.token} expires in ${row.expiresAt - now} ms by the catalog row, less than the margin of ${margin} ms`);
      // a paused process may have slept through the read itself
      if (validUntil - performance.now() < margin) throw new LeaseLostError(project, step, `lease ${lock.token} ran below the margin while it was being checked`);
    },
  };
  try {
    return await fn(lease);
  } finally {
    clearInterval(renew);
    await catalog.releaseLock(name, owner, lock.token).catch(() => undefined);
  }
}

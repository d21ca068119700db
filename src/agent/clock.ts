// This host's clock against the catalog's (Catalog.clock). Leases, heartbeats and the
// fence bound are judged by clocks; the fencing argument (docs/failover-move-restore.md)
// holds only while every actor's clock is within failover.maxClockSkew of the catalog's.
// Beyond it the agent's cycle and every storagectl operation refuse to act.
import type { Catalog } from '../catalog/types.js';

export interface ClockReading {
  /** ms this host is ahead of the catalog (negative: behind), corrected by half the read's round trip */
  skewMs: number;
  /** the read's round trip, ms: the uncertainty of skewMs is half of it */
  roundTripMs: number;
}

export class ClockSkewError extends Error {
  constructor(readonly reading: ClockReading, readonly boundMs: number) {
    super(describeSkew(reading, boundMs));
    this.name = 'ClockSkewError';
  }
}

export async function readSkew(catalog: Catalog, now: () => number = Date.now): Promise<ClockReading> {
  const t0 = now();
  const server = await catalog.clock();
  const t1 = now();
  return { skewMs: Math.round((t0 + t1) / 2 - server), roundTripMs: t1 - t0 };
}

/** Pure: the skew is beyond the bound even with the read's uncertainty in its favour. */
export function skewTooLarge(r: ClockReading, boundMs: number): boolean {
  return Math.abs(r.skewMs) - r.roundTripMs / 2 > boundMs;
}

export function describeSkew(r: ClockReading, boundMs: number): string {
  const s = (Math.abs(r.skewMs) / 1000).toFixed(1);
  return `this host's clock is ${s} s ${r.skewMs >= 0 ? 'ahead of' : 'behind'} the catalog's (bound failover.maxClockSkew ${boundMs / 1000} s): refusing to act until the clock is corrected (check NTP: timedatectl, chronyc tracking)`;
}

/** Throws ClockSkewError beyond the bound (storagectl operations call this first). */
export async function assertClock(catalog: Catalog, boundMs: number): Promise<ClockReading> {
  const r = await readSkew(catalog);
  if (skewTooLarge(r, boundMs)) throw new ClockSkewError(r, boundMs);
  return r;
}

// The fault schedule of a chaos run (pure): a seeded generator, so that `--seed S` replays
// exactly the faults of a run (their kinds, targets, start times and lengths). What a fault
// does is in faults.ts; what must hold throughout is in checker.ts.

import { prng } from '../lib/prng.js';

export { prng };

export const FAULT_KINDS = [
  /** SIGKILL of a host's agent at any moment (mid-transfer, mid-prune, mid-failover, mid-move); restarted after `ms` */
  'kill-agent',
  /** SIGSTOP of an agent for `ms` (past its lease and heartbeat), then SIGCONT */
  'pause-agent',
  /** a host cut from both others (its sshd and its Cassandra node with it: its datacenter) for `ms` */
  'partition-host',
  /** two hosts cut from each other only (each still reaches the third) for `ms` */
  'partition-pair',
  /** a host's link down and up again, 1 s each, `ms / 2000` times (transfers break mid-stream) */
  'flap-link',
  /** a datacenter's Cassandra node SIGKILLed, restarted after `ms` */
  'kill-cassandra',
  /** a host's agent restarted with its clock `skewS` seconds ahead for `ms`, then restarted right */
  'skew-clock',
  /** a host's replicas filled to their quota (receives fail: no space) for `ms` */
  'fill-quota',
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface Fault {
  /** ms after the run's start */
  at: number;
  kind: FaultKind;
  host: string;
  /** partition-pair: the other host */
  peer?: string;
  /** how long the fault lasts (ms) */
  ms: number;
  skewS?: number;
}

/** the operator's actions between faults */
export interface OperatorAction {
  at: number;
  kind: 'move' | 'failover';
  /** index into the run's projects */
  project: number;
  /** the host storagectl is typed on */
  on: string;
}

export interface Schedule {
  seed: number;
  faults: Fault[];
  operator: OperatorAction[];
}

export interface ScheduleOptions {
  durationMs: number;
  hosts: readonly string[];
  projects: number;
  /** mean gap between two fault starts */
  meanGapMs?: number;
  /** mean gap between two operator actions */
  operatorGapMs?: number;
  /** the kinds to draw from (default: all) */
  kinds?: readonly FaultKind[];
}

/** Faults drawn at random gaps; at most one fault at a time per host (faults on one host never overlap). */
export function makeSchedule(seed: number, o: ScheduleOptions): Schedule {
  const rnd = prng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const between = (lo: number, hi: number) => Math.round(lo + rnd() * (hi - lo));
  const kinds = o.kinds ?? FAULT_KINDS;
  const faults: Fault[] = [];
  const busyUntil = new Map<string, number>();
  let t = between(2_000, 6_000);
  while (t < o.durationMs) {
    const kind = pick(kinds);
    const host = pick(o.hosts);
    const f: Fault = { at: t, kind, host, ms: 0 };
    switch (kind) {
      case 'kill-agent':
        f.ms = between(500, 8_000);
        break;
      case 'pause-agent':
        f.ms = between(4_000, 16_000);
        break;
      case 'partition-host':
        f.ms = between(5_000, 25_000);
        break;
      case 'partition-pair':
        f.peer = pick(o.hosts.filter((h) => h !== host));
        f.ms = between(5_000, 20_000);
        break;
      case 'flap-link':
        f.ms = 2_000 * between(2, 4);
        break;
      case 'kill-cassandra':
        f.ms = between(3_000, 15_000);
        break;
      case 'skew-clock':
        f.skewS = between(20, 120);
        f.ms = between(6_000, 15_000);
        break;
      case 'fill-quota':
        f.ms = between(6_000, 20_000);
        break;
    }
    const involved = [host, ...(f.peer ? [f.peer] : [])];
    // a fault on a host that is still under one starts when the host is free again
    f.at = Math.max(t, ...involved.map((h) => busyUntil.get(h) ?? 0));
    if (f.at + f.ms > o.durationMs) break;
    for (const h of involved) busyUntil.set(h, f.at + f.ms + 1_000);
    faults.push(f);
    t = f.at + between(0, 2 * (o.meanGapMs ?? 8_000));
  }
  const operator: OperatorAction[] = [];
  for (let a = between(5_000, 15_000); a < o.durationMs - 5_000; a += between(0.5 * (o.operatorGapMs ?? 30_000), 1.5 * (o.operatorGapMs ?? 30_000))) {
    operator.push({ at: a, kind: rnd() < 0.7 ? 'move' : 'failover', project: Math.floor(rnd() * o.projects), on: pick(o.hosts) });
  }
  return { seed, faults, operator };
}

/** "kill-agent 12, pause-agent 4, ..." */
export function countByKind(faults: readonly Fault[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const f of faults) out[f.kind] = (out[f.kind] ?? 0) + 1;
  return out;
}

// The invariants of a chaos run (pure: the driver samples, these judge). Each returns the
// violations it finds, with what and when; test/unit/chaos-checker.test.ts shows that
// each one fails on a history that breaks it.
//
//  1. never two writable mounts of one project, anywhere (sampled every 250 ms on every
//     pool, partitioned hosts included: the sampler runs outside their namespaces);
//  2. every acknowledged write is where the project is served afterwards, unless a
//     failover completed after it promoted a snapshot older than it (the data-loss window
//     a failover accepts: it promotes the freshest replica a surviving host confirmed);
//  3. nothing destroyed but automatic snapshots (zpool history says what was destroyed);
//  4. after the faults stop: every project served by its catalog primary only, active, no
//     operation left, every target at the primary's newest snapshot, the catalog's replica
//     rows equal to what zfs lists.

export interface Violation {
  invariant: 'one-writable' | 'no-lost-write' | 'nothing-destroyed' | 'converged';
  detail: string;
  at?: number;
}

/** one sample: for each project, the hosts where it is mounted writable */
export interface MountSample {
  at: number;
  writable: ReadonlyMap<string, readonly string[]>;
}

export function checkMounts(samples: readonly MountSample[]): Violation[] {
  const out: Violation[] = [];
  const open = new Set<string>(); // project: already reported for the current run of bad samples
  for (const s of samples) {
    for (const [project, hosts] of s.writable) {
      if (hosts.length > 1 && !open.has(project)) {
        open.add(project);
        out.push({ invariant: 'one-writable', at: s.at, detail: `${project} writable on ${hosts.join(' and ')} at ${new Date(s.at).toISOString()}` });
      } else if (hosts.length <= 1) open.delete(project);
    }
  }
  return out;
}

export interface Ack {
  project: string;
  seq: number;
  /** the host it was written on */
  host: string;
  /** ms: when the write (fsync, close) returned */
  at: number;
}

/** a failover the checker saw (catalog rows sampled, or events) */
export interface FailoverSeen {
  project: string;
  from: string | null;
  to: string;
  /** unix seconds: creation of the snapshot it promoted */
  creation: number;
  /** ms: when it was seen done (the project active on `to`) */
  doneAt: number;
}

export interface WriteCheck {
  checked: number;
  present: number;
  /** missing, within a failover's data-loss window */
  excused: number;
  violations: Violation[];
}

export function checkWrites(acks: readonly Ack[], isPresent: (a: Ack) => boolean, failovers: readonly FailoverSeen[]): WriteCheck {
  const r: WriteCheck = { checked: acks.length, present: 0, excused: 0, violations: [] };
  const lost = new Map<string, Ack[]>();
  for (const a of acks) {
    if (isPresent(a)) {
      r.present++;
      continue;
    }
    // lost by design only if a failover promoted a snapshot older than the write (same
    // second counts as older: creation is in whole seconds) and completed after it
    const window = failovers.find((f) => f.project === a.project && f.creation <= Math.floor(a.at / 1000) && f.doneAt >= a.at);
    if (window) r.excused++;
    else lost.set(a.project, [...(lost.get(a.project) ?? []), a]);
  }
  // one violation per project: how many, which, when
  for (const [project, xs] of lost) {
    const first = xs[0]!;
    const last = xs[xs.length - 1]!;
    const hosts = [...new Set(xs.map((x) => x.host))].join(', ');
    r.violations.push({ invariant: 'no-lost-write', at: first.at, detail: `${project}: ${xs.length} acknowledged writes missing (seq ${first.seq}..${last.seq}, written on ${hosts} ${new Date(first.at).toISOString()}..${new Date(last.at).toISOString()}), no failover's window covers them` });
  }
  return r;
}

export interface HistoryLine {
  pool: string;
  /** the command as zpool history prints it */
  command: string;
}

/** `zfs destroy` lines of the run's projects: only automatic snapshots may be destroyed */
export function checkDestroys(lines: readonly HistoryLine[], projects: ReadonlySet<string>, isAutoSnapshot: (snap: string) => boolean): { destroyed: number; violations: Violation[] } {
  const out: Violation[] = [];
  let destroyed = 0;
  for (const l of lines) {
    const m = /^zfs destroy(?:\s+-\S+)*\s+(\S+)$/.exec(l.command.trim());
    if (!m) continue;
    const name = m[1]!;
    const [dataset, snap] = name.split('@') as [string, string | undefined];
    const id = dataset.split('/').pop()!;
    if (!projects.has(id)) continue;
    destroyed++;
    if (snap === undefined) out.push({ invariant: 'nothing-destroyed', detail: `dataset ${dataset} destroyed (${l.pool}: ${l.command})` });
    else if (!isAutoSnapshot(snap)) out.push({ invariant: 'nothing-destroyed', detail: `snapshot ${name} is not automatic but was destroyed (${l.pool}: ${l.command})` });
  }
  return { destroyed, violations: out };
}

/** the fleet as seen after the faults stopped (catalog and zfs) */
export interface FleetState {
  projects: ReadonlyArray<{ id: string; primary: string | null; state: string; operation: string | null; targets: readonly string[] }>;
  /** project -> hosts where it is mounted writable */
  writable: ReadonlyMap<string, readonly string[]>;
  /** `${host} ${project}` -> newest snapshot guid zfs lists there (projects/ on the primary, replicas/ elsewhere) */
  newest: ReadonlyMap<string, string | undefined>;
  /** `${host} ${project}` -> the guid the catalog's replica row names */
  rows: ReadonlyMap<string, string | undefined>;
}

export function convergenceProblems(s: FleetState): Violation[] {
  const out: Violation[] = [];
  const bad = (detail: string) => out.push({ invariant: 'converged', detail });
  for (const p of s.projects) {
    if (p.primary === null) {
      bad(`${p.id} has no primary`);
      continue;
    }
    if (p.state !== 'active' || p.operation !== null) bad(`${p.id} is ${p.state}${p.operation ? ` with a ${p.operation} left on its row` : ''}`);
    const w = s.writable.get(p.id) ?? [];
    if (w.length !== 1 || w[0] !== p.primary) bad(`${p.id} is writable on [${w.join(', ')}], its primary is ${p.primary}`);
    const src = s.newest.get(`${p.primary} ${p.id}`);
    for (const t of p.targets) {
      const there = s.newest.get(`${t} ${p.id}`);
      if (src === undefined || there !== src) bad(`${p.id} on ${t} is at guid ${there ?? 'none'}, its primary ${p.primary} at ${src ?? 'none'}`);
      const row = s.rows.get(`${t} ${p.id}`);
      if (row !== there) bad(`${p.id}: the catalog says ${t} has guid ${row ?? 'none'}, zfs lists ${there ?? 'none'}`);
    }
  }
  return out;
}

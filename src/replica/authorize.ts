// Who may run which receiver operation (see trust-model.md beside this file). Pure: the
// receiver gathers the catalog's facts for one command (the caller's host record, the
// project row, the project's lock row) and this decides; every refusal names the rule.
// Nothing here trusts the caller's word beyond its name, which sshd bound to its key.
import type { HostRecord, LockRow, ProjectRecord } from '../catalog/types.js';
import { ownerHost } from '../lock/lease.js';
import type { RemoteCommand } from './protocol.js';

export interface AuthFacts {
  /** this host's id */
  self: string;
  /** the caller, as named by its authorized_keys line (serve-ssh --peer) */
  peer: string;
  /** the catalog's record of the caller (undefined: unknown peer) */
  peerRecord: HostRecord | undefined;
  /** the public key sshd says the caller authenticated with (ExposeAuthInfo), if it says */
  presentedKey?: string;
  /** the project rows the command names (absent key: not in the catalog) */
  projects: Map<string, ProjectRecord>;
  /** the lock row of each named project, where the rule needs it */
  locks: Map<string, LockRow | undefined>;
  now: number;
}

export type Decision = { ok: true } | { ok: false; reason: string };

const allow: Decision = { ok: true };
const deny = (reason: string): Decision => ({ ok: false, reason });

/** Which facts a command needs (the receiver reads no more than this). */
export function factsNeeded(cmd: RemoteCommand): { projects: string[]; locks: 'none' | 'if-not-primary' | 'always' } {
  switch (cmd.op) {
    case 'capabilities':
      return { projects: [], locks: 'none' };
    case 'list':
      return { projects: cmd.projects ?? [], locks: 'if-not-primary' };
    case 'recv':
    case 'abort-resume':
    case 'rollback-head':
      return { projects: [cmd.project], locks: 'if-not-primary' };
    case 'send':
    case 'keep-aside':
      return { projects: [cmd.project], locks: 'none' };
    case 'fence':
    case 'promote':
      return { projects: [cmd.project], locks: 'always' };
  }
}

/** The caller holds the project's live lease (its owner names the caller's host). */
function holdsLease(f: AuthFacts, project: string, token?: number): Decision {
  const lock = f.locks.get(project);
  if (!lock || lock.owner === null) return deny(`project ${project} has no live lease${token !== undefined ? ` (token ${token} given)` : ''}`);
  if (lock.expiresAt <= f.now) return deny(`the lease of project ${project} expired ${Math.round((f.now - lock.expiresAt) / 1000)} s ago`);
  const holder = ownerHost(lock.owner);
  if (holder !== f.peer) return deny(`the lease of project ${project} is held by ${JSON.stringify(lock.owner)}, not by ${f.peer}`);
  if (token !== undefined && lock.token !== token) return deny(`fencing token ${token} is not the live lease's (${lock.token})`);
  return allow;
}

/** The caller may send to, or list, this host's replica of the project. */
function primaryOrLeaseHolder(f: AuthFacts, p: ProjectRecord): Decision {
  if (p.primary === f.peer) return allow;
  const lease = holdsLease(f, p.id);
  return lease.ok ? allow : deny(`${f.peer} is not the primary of project ${p.id} (the catalog names ${p.primary ?? 'no host'}) and ${lease.reason}`);
}

export function authorize(cmd: RemoteCommand, f: AuthFacts): Decision {
  if (!f.peerRecord) return deny(`peer ${f.peer} is not a host in the catalog`);
  if (f.peerRecord.id !== f.peer) return deny(`the catalog's record for ${f.peer} names ${f.peerRecord.id}`);
  if (f.presentedKey !== undefined && f.peerRecord.replicationKey && f.presentedKey !== f.peerRecord.replicationKey) {
    return deny(`peer ${f.peer} authenticated with a key that is not its registered replication key (stale authorized_keys line? regenerate it with storagectl authorized-keys)`);
  }
  const project = (id: string): ProjectRecord | Decision => f.projects.get(id) ?? deny(`project ${id} is not in the catalog`);
  const isDecision = (x: ProjectRecord | Decision): x is Decision => 'ok' in x;
  switch (cmd.op) {
    case 'capabilities':
      return allow;
    case 'list': {
      // the unscoped listing is filtered to the caller's projects by the receiver
      for (const id of cmd.projects ?? []) {
        const p = project(id);
        if (isDecision(p)) return p;
        const d = primaryOrLeaseHolder(f, p);
        if (!d.ok) return d;
      }
      return allow;
    }
    case 'recv':
    case 'abort-resume':
    case 'rollback-head': {
      const p = project(cmd.project);
      if (isDecision(p)) return p;
      if (!p.targets.includes(f.self)) return deny(`this host (${f.self}) is not a replica target of project ${p.id} (targets: ${p.targets.join(', ') || 'none'})`);
      return primaryOrLeaseHolder(f, p);
    }
    case 'send': {
      const p = project(cmd.project);
      if (isDecision(p)) return p;
      if (p.primary !== f.peer) return deny(`only the primary of project ${p.id} (${p.primary ?? 'no host'}) may fetch its snapshots, not ${f.peer}`);
      return allow;
    }
    case 'keep-aside': {
      // only the active primary, judging by its own snapshots, on live rows (auth-facts):
      // not a lease holder (a move or failover never needs it), not from a cached row
      const p = project(cmd.project);
      if (isDecision(p)) return p;
      if (!p.targets.includes(f.self)) return deny(`this host (${f.self}) is not a replica target of project ${p.id} (targets: ${p.targets.join(', ') || 'none'})`);
      if (p.primary !== f.peer || p.state !== 'active') return deny(`only the active primary of project ${p.id} (${p.primary ?? 'no host'}, ${p.state}) may have its replica kept aside, not ${f.peer}`);
      return allow;
    }
    case 'fence':
    case 'promote': {
      const p = project(cmd.project);
      if (isDecision(p)) return p;
      const lease = holdsLease(f, p.id, cmd.token);
      if (!lease.ok) return lease;
      // fence: the catalog has already stopped naming this host (failover switches
      // first), or names it while an operation runs; promote: it already names this host
      if (cmd.op === 'fence' && p.primary === f.self && p.state === 'active') return deny(`the catalog names this host (${f.self}) the active primary of project ${p.id}: switch the location before fencing it`);
      if (cmd.op === 'promote' && p.primary !== f.self) return deny(`the catalog names ${p.primary ?? 'no host'} as the primary of project ${p.id}, not this host (${f.self}): switch the location before promoting here`);
      return allow;
    }
  }
}

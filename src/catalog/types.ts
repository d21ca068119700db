// The catalog contract: what every backend (SQLite embedded, Cassandra fleet-wide)
// provides. Rows read back are validated: a catalog is input from outside too.
import * as v from '../util/validate.js';

export interface HostRecord {
  id: string;
  datacenter: string;
  address: string;
  port: number;
  /** dataset root under which this host keeps replicas (informational) */
  root: string;
  /** ms since epoch of the last heartbeat, or null if never */
  heartbeatAt: number | null;
  /** a load figure used for placement (number of primaries + replicas here) */
  load: number;
  /**
   * The host's replication public key, an OpenSSH public key line "<type> <base64>" without
   * a comment (see checkPublicKey), or null if it never registered one.
   */
  replicationKey: string | null;
  /**
   * Being emptied for maintenance (storagectl drain): placement puts no new replica or
   * project here, and the replicas it holds are re-placed elsewhere.
   */
  draining: boolean;
}

/**
 * What upsertHost writes. replicationKey: a key line is validated and stored; null removes
 * the stored key; omitted (or undefined) leaves the stored key unchanged, so a caller that
 * does not know the key (upsertHost runs on every agent start) never erases it.
 */
export type HostRegistration = Omit<HostRecord, 'heartbeatAt' | 'load' | 'replicationKey' | 'draining'> & { replicationKey?: string | null };

export type ProjectState = 'active' | 'moving' | 'fenced' | 'failing-over';

export interface ProjectRecord {
  id: string;
  /** the host that serves it (null: nowhere, e.g. before placement) */
  primary: string | null;
  replicationFactor: number;
  /** bytes, or null for none */
  quota: number | null;
  state: ProjectState;
  /** replica hosts assigned by placement (confirmed freshness lives in ReplicaRecord) */
  targets: string[];
  /** bumped by every setTargets: a write made from an older list (ifVersion) is refused */
  targetsVersion: number;
  /** fencing token of the last location change */
  locationToken: number;
  createdAt: number;
  /**
   * The operation in progress on this project (failover, move, restore), written in the
   * same compare-and-set as the location; null when none. This, not the event log, is what
   * a re-run or a recovering agent resumes from.
   */
  operation: ProjectOperation | null;
}

export const OPERATION_KINDS = ['failover', 'move', 'restore'] as const;
export type OperationKind = (typeof OPERATION_KINDS)[number];

/** An operation's durable state (ProjectRecord.operation). */
export interface ProjectOperation {
  kind: OperationKind;
  /** the host that served the project when the operation began (null: none) */
  from: string | null;
  /** the host the operation moves it to (restore: the primary itself) */
  to: string;
  /** the snapshot chosen (failover: to promote at; move: the final one once taken; restore: the one restored) */
  snapshot: string | null;
  guid: string | null;
  /** unix seconds: that snapshot's creation, when known */
  creation: number | null;
  /** the fencing token of the lease that wrote it */
  token: number;
  /** ms since epoch */
  startedAt: number;
  /**
   * where a re-run resumes: `requested` (move only: storagectl asked the primary's agent
   * to perform it; nothing has changed yet), `recorded` (the operation is under way) or
   * `switched` (the location is switched; only bookkeeping is left). The finer steps are
   * crash points (util/crash-point.ts), not row states.
   */
  step: 'requested' | 'recorded' | 'switched';
  /** move: the request's id (storagectl move/drain); progress and cancel name it */
  id?: string;
  /** move: who asked (`storagectl@<host>` or `drain@<host>`) */
  requestedBy?: string;
  /** move: the request's options, for the agent that performs it */
  dropSource?: boolean;
  forceUnmount?: boolean;
  presyncThresholdBytes?: number;
  /** move: the source was mounted when the move began (a failed move remounts it) */
  wasMounted?: boolean;
  /** restore: rollback or clone */
  mode?: 'rollback' | 'clone';
  /** restore: the safety snapshot taken before the copy */
  safetySnapshot?: string;
}

/** Validates an operation read back from a row (JSON text) or given to setLocation. */
export function checkOperation(o: unknown, where: string): ProjectOperation {
  const bad = (what: string) => new CatalogError(`${where}: operation ${what}: ${v.describe(o)}`);
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw bad('is not an object');
  const x = o as Record<string, unknown>;
  if (!OPERATION_KINDS.includes(x['kind'] as OperationKind)) throw bad('has an unknown kind');
  if (x['from'] !== null) v.hostId(x['from'], `${where} (operation from)`);
  v.hostId(x['to'], `${where} (operation to)`);
  if (x['snapshot'] !== null) v.snapshotName(x['snapshot'], `${where} (operation snapshot)`);
  if (x['guid'] !== null && !(typeof x['guid'] === 'string' && /^\d{1,20}$/.test(x['guid']))) throw bad('has a malformed guid');
  if (x['creation'] !== null && !(Number.isSafeInteger(x['creation']) && (x['creation'] as number) >= 0)) throw bad('has a malformed creation');
  if (!Number.isSafeInteger(x['token']) || (x['token'] as number) < 0) throw bad('has a malformed token');
  if (!Number.isSafeInteger(x['startedAt']) || (x['startedAt'] as number) < 0) throw bad('has a malformed start time');
  if (x['step'] !== 'requested' && x['step'] !== 'recorded' && x['step'] !== 'switched') throw bad('has a step other than requested, recorded or switched');
  if (x['step'] === 'requested' && x['kind'] !== 'move') throw bad('is requested but not a move');
  if (x['kind'] !== 'move' && (['id', 'requestedBy', 'dropSource', 'forceUnmount', 'presyncThresholdBytes'] as const).some((k) => x[k] !== undefined)) throw bad('has move request fields on a non-move');
  if (x['id'] !== undefined) requestId(x['id'], `${where} (operation id)`);
  if (x['requestedBy'] !== undefined && !(typeof x['requestedBy'] === 'string' && /^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$/.test(x['requestedBy']))) throw bad('has a malformed requestedBy');
  for (const k of ['dropSource', 'forceUnmount'] as const) if (x[k] !== undefined && typeof x[k] !== 'boolean') throw bad(`has a malformed ${k}`);
  if (x['presyncThresholdBytes'] !== undefined && !(Number.isSafeInteger(x['presyncThresholdBytes']) && (x['presyncThresholdBytes'] as number) >= 0)) throw bad('has a malformed presyncThresholdBytes');
  if (x['kind'] === 'failover' && (x['snapshot'] === null || x['guid'] === null)) throw bad('is a failover without the snapshot and guid it chose');
  if (x['kind'] === 'failover' && x['from'] === x['to']) throw bad('is a failover from a host to itself');
  if (x['kind'] !== 'move' && x['wasMounted'] !== undefined) throw bad('has wasMounted on a non-move');
  if (x['kind'] !== 'restore' && (x['mode'] !== undefined || x['safetySnapshot'] !== undefined)) throw bad('has restore fields on a non-restore');
  if (x['wasMounted'] !== undefined && typeof x['wasMounted'] !== 'boolean') throw bad('has a malformed wasMounted');
  if (x['mode'] !== undefined && x['mode'] !== 'rollback' && x['mode'] !== 'clone') throw bad('has a malformed mode');
  if (x['safetySnapshot'] !== undefined) v.snapshotName(x['safetySnapshot'], `${where} (operation safety snapshot)`);
  // fields a newer version may add are dropped, not refused: one row written by a newer
  // agent must not make a host's fence check fail (and self-fence every project)
  const known = ['kind', 'from', 'to', 'snapshot', 'guid', 'creation', 'token', 'startedAt', 'step', 'wasMounted', 'mode', 'safetySnapshot', 'id', 'requestedBy', 'dropSource', 'forceUnmount', 'presyncThresholdBytes'] as const;
  return Object.fromEntries(known.filter((k) => x[k] !== undefined).map((k) => [k, x[k]])) as unknown as ProjectOperation;
}

/** The JSON text stored for an operation (null for none). */
export function encodeOperation(o: ProjectOperation | null, where: string): string | null {
  return o === null ? null : JSON.stringify(checkOperation(o, where));
}

/** A JSON column's text, parsed and checked (null/empty: null). */
function decodeJson<T>(text: string | null | undefined, where: string, what: string, check: (o: unknown, where: string) => T): T | null {
  if (text === null || text === undefined || text === '') return null;
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    throw new CatalogError(`${where}: ${what} is not JSON: ${JSON.stringify(text.slice(0, 80))}`);
  }
  return check(o, where);
}

/** Parses the stored JSON text of an operation. */
export function decodeOperation(text: string | null | undefined, where: string): ProjectOperation | null {
  return decodeJson(text, where, 'operation', checkOperation);
}

/** A move request's id: what progress rows and cancels name. */
export function requestId(value: unknown, where: string): string {
  if (typeof value !== 'string' || !/^[a-z0-9][a-z0-9-]{7,63}$/.test(value)) throw new v.ValidationError('request id', where, 'must be 8-64 characters a-z 0-9 -', value);
  return value;
}

/** Progress rows outlive their last write by a week (then `move --status` says: nothing on record). */
export const PROGRESS_TTL_SECONDS = 7 * 86400;

/** requested: written by the requester; queued: its performer saw it, a slot is not free yet; running; then an outcome */
export const PROGRESS_PHASES = ['requested', 'queued', 'running', 'done', 'failed', 'cancelled'] as const;
export type ProgressPhase = (typeof PROGRESS_PHASES)[number];

/**
 * What the host performing a move reports (Catalog.putProgress), and what `storagectl
 * move`/`--status`/`drain` follow. Written often, never decisive: the operation on the
 * project row is the state; this is the commentary (and the outcome, once it is gone).
 */
export interface OperationProgress {
  /** the request (ProjectOperation.id) this reports on */
  id: string;
  kind: 'move';
  from: string;
  to: string;
  phase: ProgressPhase;
  /** the last step, as `storagectl move` prints it */
  step: string;
  /** the transfer under way: bytes sent, the sender's estimate (null: unknown), its age */
  bytes: number;
  estimate: number | null;
  elapsedMs: number;
  /** ms since epoch, the writer's clock */
  updatedAt: number;
  /** done: the move's result (JSON object); failed: the error and who serves the project */
  result?: Record<string, unknown>;
  error?: string;
  servedBy?: string | null;
}

export function checkProgress(o: unknown, where: string): OperationProgress {
  const bad = (what: string) => new CatalogError(`${where}: progress ${what}: ${v.describe(o)}`);
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw bad('is not an object');
  const x = o as Record<string, unknown>;
  requestId(x['id'], `${where} (progress id)`);
  if (x['kind'] !== 'move') throw bad('has an unknown kind');
  v.hostId(x['from'], `${where} (progress from)`);
  v.hostId(x['to'], `${where} (progress to)`);
  if (!PROGRESS_PHASES.includes(x['phase'] as ProgressPhase)) throw bad('has an unknown phase');
  if (typeof x['step'] !== 'string' || x['step'].length > 2000) throw bad('has a malformed step');
  for (const k of ['bytes', 'elapsedMs', 'updatedAt'] as const) if (!Number.isSafeInteger(x[k]) || (x[k] as number) < 0) throw bad(`has a malformed ${k}`);
  if (x['estimate'] !== null && !(Number.isSafeInteger(x['estimate']) && (x['estimate'] as number) >= 0)) throw bad('has a malformed estimate');
  if (x['result'] !== undefined && (typeof x['result'] !== 'object' || x['result'] === null || Array.isArray(x['result']))) throw bad('has a malformed result');
  if (x['error'] !== undefined && typeof x['error'] !== 'string') throw bad('has a malformed error');
  if (x['servedBy'] !== undefined && x['servedBy'] !== null) v.hostId(x['servedBy'], `${where} (progress servedBy)`);
  const known = ['id', 'kind', 'from', 'to', 'phase', 'step', 'bytes', 'estimate', 'elapsedMs', 'updatedAt', 'result', 'error', 'servedBy'] as const;
  return Object.fromEntries(known.filter((k) => x[k] !== undefined).map((k) => [k, x[k]])) as unknown as OperationProgress;
}

export function decodeProgress(text: string | null | undefined, where: string): OperationProgress | null {
  return decodeJson(text, where, 'progress', checkProgress);
}

/** A project's progress row: the newest report, and the id of a request someone asked to cancel. */
export interface ProgressRow {
  progress: OperationProgress | null;
  cancel: string | null;
}

export interface ReplicaRecord {
  project: string;
  host: string;
  /** newest snapshot present on that host (name after '@') */
  snapshot: string;
  guid: string;
  /** unix seconds: creation time of that snapshot on the source */
  snapshotCreation: number;
  /** ms: when a listing of the host confirmed that guid */
  confirmedAt: number;
}

/** Events are history, not decisions: both backends drop them after this long by default. */
export const EVENT_TTL_SECONDS = 90 * 86_400;

export interface NewestSnapshot {
  snapshot: string;
  guid: string;
  /** unix seconds */
  creation: number;
}

export function checkNewest(project: string, s: NewestSnapshot, where: string): NewestSnapshot {
  v.projectId(project, where);
  v.snapshotName(s.snapshot, where);
  if (!/^\d{1,20}$/.test(s.guid)) throw new CatalogError(`${where}: newest snapshot of ${project} has a malformed guid ${JSON.stringify(s.guid)}`);
  if (!Number.isSafeInteger(s.creation) || s.creation < 0) throw new CatalogError(`${where}: newest snapshot of ${project} has a malformed creation ${JSON.stringify(s.creation)}`);
  return s;
}

export interface EventRecord {
  at: number;
  project: string | null;
  host: string | null;
  kind: string;
  detail: string;
}

export type LockResult = { ok: true; token: number; expiresAt: number } | { ok: false; owner: string; expiresAt: number };

/**
 * A lock row as stored (Catalog.getLock). owner null: free (released, or on Cassandra a
 * lease whose TTL ran out). token: the lease/fencing token of the current or last holder.
 * expiresAt: ms since epoch (0 once released). A lease is live only if owner !== null AND
 * expiresAt > now: after it expires the row may still name the old owner (SQLite keeps it
 * until the next acquire; Cassandra until the lease cells' TTL runs out, about a second).
 */
export interface LockRow {
  owner: string | null;
  token: number;
  expiresAt: number;
}

export class CatalogError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CatalogError';
  }
}

/** A location write whose fencing token is not the current lock holder's. */
export class FencingError extends CatalogError {
  constructor(message: string) {
    super(message);
    this.name = 'FencingError';
  }
}

export interface Catalog {
  readonly backend: string;
  close(): Promise<void>;

  /** Registers or updates a host; see HostRegistration for replicationKey (validated: checkPublicKey). */
  upsertHost(h: HostRegistration): Promise<void>;
  heartbeat(host: string, load: number, at?: number): Promise<void>;
  /** Marks a registered host as draining or not (HostRecord.draining); CatalogError for an unknown host. */
  setDraining(host: string, draining: boolean): Promise<void>;
  getHost(id: string): Promise<HostRecord | undefined>;
  listHosts(): Promise<HostRecord[]>;

  createProject(p: { id: string; primary: string | null; replicationFactor: number; quota: number | null }): Promise<void>;
  getProject(id: string): Promise<ProjectRecord | undefined>;
  listProjects(): Promise<ProjectRecord[]>;
  listProjectsByPrimary(host: string): Promise<ProjectRecord[]>;
  /**
   * Sets a project's replica hosts and bumps targetsVersion. With ifVersion, applied only
   * while the stored version still equals it (false: a newer list was written meanwhile,
   * nothing changed); without, always (true). A journal replay of an old list, or two
   * agents placing from two views, can therefore never undo a newer list.
   */
  setTargets(project: string, targets: string[], opts?: { ifVersion?: number }): Promise<boolean>;
  /**
   * A value that changes (after the change is visible) whenever a project row that names
   * `host` as its primary changes: created, targets set, location moved to or from it.
   * '' when nothing ever changed. Agents read this one row per cycle and per fence check
   * and re-read their projects only when it moved: an idle host costs O(1) catalog reads.
   */
  hostGeneration(host: string): Promise<string>;
  /**
   * Changes a project's location and its operation in progress (null: none) in one
   * compare-and-set; rejected with FencingError unless `token` holds the project's lock.
   * Bumps the generation of the old and new primary, and of `operation.from` (so every
   * write of an operation is a change its source host sees, also when an earlier bump was
   * lost to a crash).
   */
  setLocation(project: string, primary: string | null, state: ProjectState, token: number, operation: ProjectOperation | null): Promise<void>;

  // ---- operations requested of another host (storagectl move/drain/cancel) ----
  /**
   * The per-host request index: a move request on a project's row (operation.step
   * `requested`) is also listed under the host that performs it (its primary), so that
   * host's agent finds it with one read when its generation moved, and a crashed agent
   * finds a move it had switched (the row then names the target as primary). A superset:
   * readers check the project's row and delete entries that no longer match.
   */
  putRequest(host: string, project: string): Promise<void>;
  listRequests(host: string): Promise<string[]>;
  deleteRequest(host: string, project: string): Promise<void>;
  /** The performer's report on a project's operation (kept a week after the last write). */
  putProgress(project: string, p: OperationProgress): Promise<void>;
  /** Someone asked to cancel request `id` (the performer checks before each step up to the switch). */
  requestCancel(project: string, id: string): Promise<void>;
  getProgress(project: string): Promise<ProgressRow>;

  /**
   * The latest confirmation wins: a row confirmed earlier (confirmedAt) than the stored one
   * is ignored (a journal replayed late never overwrites a later listing). The snapshot may
   * be older than the stored one: a diverged replica kept aside and sent again is.
   */
  upsertReplica(r: ReplicaRecord): Promise<void>;
  listReplicas(project: string): Promise<ReplicaRecord[]>;
  listReplicasByHost(host: string): Promise<ReplicaRecord[]>;
  deleteReplica(project: string, host: string): Promise<void>;

  /** The primary's newest snapshot of a project (the primary's agent writes it when it changes). */
  recordNewest(project: string, s: NewestSnapshot): Promise<void>;
  /** Every project's recorded newest snapshot (one read: `storagectl status`). */
  listNewest(): Promise<Map<string, NewestSnapshot>>;

  addEvent(e: Omit<EventRecord, 'at'> & { at?: number }): Promise<void>;
  listEvents(opts: { project?: string; since?: number; limit?: number }): Promise<EventRecord[]>;

  acquireLock(name: string, owner: string, ttlMs: number): Promise<LockResult>;
  renewLock(name: string, owner: string, token: number, ttlMs: number): Promise<boolean>;
  releaseLock(name: string, owner: string, token: number): Promise<void>;
  /**
   * The lock row as stored, undefined if the lock was never taken: a read at the backend's
   * strongest level (Cassandra: serial), used to check that a fencing token is the live
   * holder's (see LockRow: owner !== null && token === t && expiresAt > now). Never served
   * from a cache.
   */
  getLock(name: string): Promise<LockRow | undefined>;
  /**
   * The catalog's own clock, ms since epoch, not this process's: Cassandra's coordinator
   * (`now()`); for SQLite the kernel's time as stamped on a file write next to the
   * database (the kernel, not the process's libc, so a skewed process cannot fake it).
   * Agents compare it with their clock and refuse to act beyond failover.maxClockSkew.
   */
  clock(): Promise<number>;
}

export function projectLockName(project: string): string {
  return `project:${v.projectId(project, 'lock name')}`;
}

/** Validates a project row read from a backend. */
export function checkProject(p: ProjectRecord, where: string): ProjectRecord {
  v.projectId(p.id, where);
  if (p.primary !== null) v.hostId(p.primary, `${where} (project ${p.id} primary)`);
  p.targets.forEach((t) => v.hostId(t, `${where} (project ${p.id} targets)`));
  if (!['active', 'moving', 'fenced', 'failing-over'].includes(p.state)) throw new CatalogError(`${where}: project ${p.id} has unknown state ${JSON.stringify(p.state)}`);
  return p;
}

export function checkReplica(r: ReplicaRecord, where: string): ReplicaRecord {
  v.projectId(r.project, where);
  v.hostId(r.host, where);
  v.snapshotName(r.snapshot, where);
  if (!/^\d{1,20}$/.test(r.guid)) throw new CatalogError(`${where}: replica ${r.project}@${r.host} has a malformed guid ${JSON.stringify(r.guid)}`);
  return r;
}

export function checkHost(h: HostRecord, where: string): HostRecord {
  v.hostId(h.id, where);
  v.hostId(h.datacenter, `${where} (host ${h.id} datacenter)`);
  if (h.replicationKey !== null) checkPublicKey(h.replicationKey, `${where} (host ${h.id} replication key)`);
  if (typeof h.draining !== 'boolean') throw new CatalogError(`${where}: host ${h.id} draining is not a boolean`);
  return h;
}

/** OpenSSH public key types accepted as a host's replication key. */
export const PUBLIC_KEY_TYPES: readonly string[] = [
  'ssh-ed25519',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'ssh-rsa',
  'sk-ssh-ed25519@openssh.com',
  'sk-ecdsa-sha2-nistp256@openssh.com',
];
const BASE64_RE = /^[A-Za-z0-9+/]+={0,2}$/;
const MAX_KEY_BASE64 = 16_384;

/**
 * An OpenSSH public key line "<type> <base64>": exactly two words separated by one space,
 * no comment, no surrounding whitespace or newline; type one of PUBLIC_KEY_TYPES; base64 of
 * 1-16384 characters. A ValidationError naming what and `where` otherwise.
 */
export function checkPublicKey(value: unknown, where: string): string {
  const what = 'replication public key';
  if (typeof value !== 'string') throw new v.ValidationError(what, where, 'is not a string', value);
  const words = value.split(' ');
  if (words.length !== 2 || words[0] === '' || words[1] === '') {
    throw new v.ValidationError(what, where, 'must be exactly "<type> <base64>", two words separated by one space, without a comment', value);
  }
  const [type, data] = words as [string, string];
  if (!PUBLIC_KEY_TYPES.includes(type)) throw new v.ValidationError(what, where, `has key type ${JSON.stringify(type.slice(0, 40))}, not one of ${PUBLIC_KEY_TYPES.join(', ')}`, value);
  if (data.length > MAX_KEY_BASE64) throw new v.ValidationError(what, where, `has ${data.length} characters of key data, more than ${MAX_KEY_BASE64}`, value);
  if (!BASE64_RE.test(data)) throw new v.ValidationError(what, where, 'has key data that is not base64 (A-Z a-z 0-9 + / and at most two trailing =)', value);
  return value;
}

/** Validates a lock row read from a backend. */
export function checkLock(name: string, l: LockRow, where: string): LockRow {
  // eslint-disable-next-line no-control-regex
  if (l.owner !== null && (typeof l.owner !== 'string' || l.owner.length === 0 || l.owner.length > 255 || /[\u0000-\u001f\u007f]/.test(l.owner))) {
    throw new CatalogError(`${where}: lock ${name} has a malformed owner ${v.describe(l.owner)}`);
  }
  if (!Number.isSafeInteger(l.token) || l.token < 0) throw new CatalogError(`${where}: lock ${name} has a malformed token ${JSON.stringify(l.token)}`);
  if (!Number.isSafeInteger(l.expiresAt) || l.expiresAt < 0) throw new CatalogError(`${where}: lock ${name} has a malformed expiry ${JSON.stringify(l.expiresAt)}`);
  return l;
}

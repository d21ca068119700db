// The fleet-wide catalog on Apache Cassandra (cassandra-driver 4.x, native protocol v4).
// Same contract and semantics as the embedded SqliteCatalog; the schema lives in
// ./cql/*.cql (see 001_initial.cql for every table, its key and why).
//
// Query patterns (no statement scans a table to filter it; every read names a partition,
// except listProjects, see below):
//   hosts            ((scope='all'), id)   listHosts / getHost read the one 'all' partition
//                                          (a fleet is a bounded number of hosts); the
//                                          heartbeat column is written USING TTL;
//                                          replication_key (004) only when upsertHost is
//                                          given a key (omitted: the stored one stays).
//   projects         (id)                  getProject; listProjects is a token-ordered range
//                                          read of this table paged by the driver (fetchSize
//                                          500, pageState): a table of one small row per
//                                          project, so its cost is the size of the answer.
//   projects_by_host ((host), project)     listProjectsByPrimary
//   requests ((host), project)             putRequest / listRequests: moves a host is asked to perform
//   progress (project)                     putProgress / requestCancel / getProgress (TTL a week)
//   newest_snapshots (project)             recordNewest / listNewest (status: one paged read)
//   host_generation  (host)                hostGeneration: one row per host, bumped after
//                                          every change to a project the host serves
//   replicas         ((project), host)     listReplicas, latest-confirmation-wins CAS
//   replicas_by_host ((host), project)     listReplicasByHost
//   events_by_hour ((hour, shard), at, id), event_hours ((scope='all'), hour, shards)
//                                          fleet-wide history in bounded partitions: one
//                                          per UTC hour and shard (EVENT_SHARDS, random);
//                                          listEvents reads the hour index, then each hour's
//                                          shards in parallel, newest hour first, until `limit`
//   events_by_project ((project, day), at, id), event_days ((scope=project), day)
//                                          a project's history: its day index, then only its
//                                          own day partitions (never a scan of the fleet's)
//   events_by_day ((day), at, id)          before 007; read until its TTL empties it
//   locks            (name)                leases and fencing tokens, written by LWT only;
//                                          getLock is a serial read of the row
//   schema_migrations ((scope), name)      applied migration files (scope 'applied')
//
// Consistency per statement (STATEMENTS below is the source of truth). S is the configured
// serial consistency: SERIAL by default (project locks are contended across datacenters
// during a failover), LOCAL_SERIAL only if every lock holder is in one datacenter.
//
//   statement                                consistency        serial  idempotent
//   hosts.upsert, hosts.upsert_key           LOCAL_QUORUM       -       yes   _key also writes replication_key
//   hosts.exists (heartbeat's check)         LOCAL_QUORUM       -       yes
//   hosts.heartbeat (1-partition batch)      LOCAL_ONE          -       yes   a lost beat is replaced by the next
//   hosts.get, hosts.list                    LOCAL_ONE          -       yes   placement/status tolerate a stale beat
//   hosts.draining                    LWT    LOCAL_QUORUM       S       no    never creates a row (IF datacenter != null)
//   projects.create                   LWT    LOCAL_QUORUM       S       no    duplicate ids are rejected
//   projects.get, projects.list              LOCAL_QUORUM       -       yes
//   projects.get_serial                      S (read)           -       yes   base of the location CAS
//   projects.set_targets_v0 / _v      LWT    LOCAL_QUORUM       S       no    CAS on targets_version; never creates a row
//   projects.set_location             LWT    QUORUM             S       no    commit seen by the fence check's QUORUM reads
//   projects.replica_put / replica_del       LOCAL_QUORUM       -       yes   USING TIMESTAMP write_ts
//   requests.put / del / list                QUORUM             -       yes   storagectl's datacenter -> the performer's
//   progress.put / cancel / get              QUORUM             -       yes   a cancel typed anywhere reaches the performer
//   projects_by_host.put / del / list        QUORUM             -       yes   USING TIMESTAMP location_ts
//   host_gen.bump / get                      QUORUM             -       yes   a fresh timeuuid per change
//   projects.get_quorum (by-primary list)    QUORUM             -       yes
//     (these are the fence check's reads and the writes they must see: QUORUM across all
//     datacenters, so a primary whose datacenter is cut off fails them and self-fences
//     instead of reading its own stale replicas; see docs/failover-move-restore.md)
//   newest.put / list                        LOCAL_QUORUM       -       yes   one writer: the primary's agent
//   replicas.get, replicas.list              LOCAL_QUORUM       -       yes
//   replicas.get_serial                      S (read)           -       yes
//   replicas.insert / update / delete LWT    LOCAL_QUORUM       S       no
//   replicas_by_host.put / del / list        LOCAL_QUORUM       -       yes   USING TIMESTAMP write_ts
//   events.* (writes and reads)              LOCAL_ONE          -       yes   history, not decisions
//   clock.now (Catalog.clock)                LOCAL_ONE          -       yes   the coordinator's clock (skew check)
//   locks.get (also getLock)                 S (read)           -       yes   linearizable view of a lease
//   locks.acquire_* (conditional batch) LWT  LOCAL_QUORUM       S       no
//   locks.renew / locks.release       LWT    LOCAL_QUORUM       S       no
//   schema.* (applied list, record)          LOCAL_QUORUM       -       yes
//   schema.lease_take / lease_drop    LWT    LOCAL_QUORUM       S       no    one migrator at a time
//   DDL (CREATE KEYSPACE/TABLE)              (schema agreement is awaited by the driver)
//
// An LWT whose outcome is unknown (a CAS write timeout, or a client timeout) is never
// retried blindly: the caller reads the row back at serial consistency, which completes any
// in-progress Paxos round, and decides from what it sees.
//
// Guarantees, precisely:
//  - Locks. A lease is the row locks[name]: owner, lease_token, expires_at (written USING
//    TTL = ceil(ttl) + 1 s, so a dead holder's lease disappears even if nobody looks) and
//    last_token, the fencing counter, written without TTL. Acquire is ONE conditional batch
//    on that partition: the lease cells (TTL) plus last_token = t + 1 (no TTL), IF
//    (owner = null AND last_token = t) or, for a lease that expired by its expires_at
//    but whose TTL has not run out yet, IF (owner, lease_token, expires_at, last_token)
//    are exactly the expired values read. Tokens therefore strictly increase across
//    holders, also after expiry and release (last_token never expires). Leases expire
//    when expires_at passes (clocks of the fleet are assumed NTP-synchronised, as for
//    any lease); renew = UPDATE USING TTL ... IF owner = ? AND lease_token = ? AND
//    expires_at > now; release deletes the lease cells IF owner = ? AND lease_token = ?.
//    (A separate lock_tokens table was considered: Paxos is per partition, so bumping a
//    counter in another table cannot be atomic with taking the lease, and two holders
//    could briefly share a token or a later holder get a smaller one. One partition avoids
//    that.)
//  - setLocation(project, primary, state, token) is applied only if, in the same call,
//    (1) a serial read of locks['project:<id>'] shows `token` as the lease token of a
//    live lease (owner set, expires_at in the future), (2) the project's stored
//    location_token is not greater than `token`, and (3) the project row is unchanged since
//    it was read (CAS on location_ts). So once a newer holder has written a location, no
//    older token can ever overwrite it, and a holder whose lease expired is rejected. The
//    one window left is a holder whose lease expires between (1) and the CAS, before the
//    next holder's first location write: its write can still land (and is then overwritten
//    by the new holder's, whose token is larger). Lease TTLs are minutes and the window
//    is one LWT round trip.
//  - projects_by_host is written only USING TIMESTAMP location_ts (a microsecond value
//    assigned under the location CAS, strictly increasing per project): the new primary's
//    entry before the CAS, the old one deleted after it. Whatever order these writes land
//    in, or if a process dies between them, the index is a superset of the truth; readers
//    check each project row and delete stale entries at the row's location_ts (which can
//    never shadow a newer entry).
//  - Replicas: the latest confirmation wins (confirmed_at; an equal one replaces, as in SQLite),
//    decided by a CAS on the authoritative replicas row (IF write_ts = the value read).
//    The winner then writes the two mirrors (replicas_by_host and projects.replicas)
//    USING TIMESTAMP write_ts, so the mirrors converge on the winner whatever the order of
//    concurrent writers; deletes are soft on the authoritative row (write_ts survives, so a
//    re-added replica's mirror writes win over the delete's tombstones). A process that dies
//    after the CAS leaves a mirror behind until the next upsert of that pair (agents
//    re-confirm replicas every cycle).
import cassandra from 'cassandra-driver';
import type { Client, types as ctypes, policies as cpolicies } from 'cassandra-driver';
import { createHash, randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  CatalogError,
  FencingError,
  checkHost,
  checkLock,
  checkNewest,
  checkPublicKey,
  checkProject,
  checkReplica,
  projectLockName,
  EVENT_TTL_SECONDS,
  type Catalog,
  type EventRecord,
  type HostRecord,
  type HostRegistration,
  type LockResult,
  type LockRow,
  type NewestSnapshot,
  type ProjectRecord,
  type ProjectState,
  type ProjectOperation,
  decodeOperation,
  encodeOperation,
  type ReplicaRecord,
  type OperationProgress,
  type ProgressRow,
  checkProgress,
  decodeProgress,
  requestId,
} from './types.js';
import * as v from '../util/validate.js';
import { guardHosts, type HostGuard } from './driver-hosts.js';

type Row = ctypes.Row;
type ResultSet = ctypes.ResultSet;

const { consistencies, responseErrorCodes, TimeUuid } = cassandra.types;

export type ReplicationSpec =
  | { class: 'NetworkTopologyStrategy'; datacenters: Record<string, number> }
  | { class: 'SimpleStrategy'; replicationFactor: number };

export interface CassandraCatalogOptions {
  /** "host" or "host:port" */
  contactPoints: string[];
  /** the datacenter this process is in: queries go to its nodes only */
  localDataCenter: string;
  keyspace: string;
  /** native transport port for contact points without one (9042) */
  port?: number;
  /** used only when the keyspace is created; default NetworkTopologyStrategy {localDataCenter: 3} */
  replication?: ReplicationSpec;
  /** create the keyspace if it does not exist (default true); false: it must exist */
  createKeyspace?: boolean;
  /** serial consistency of every LWT and serial read (default SERIAL) */
  serialConsistency?: 'SERIAL' | 'LOCAL_SERIAL';
  /** TCP connect timeout per host (default 5000 ms) */
  connectTimeoutMs?: number;
  /** client-side timeout of one request on one host, socketOptions.readTimeout (default 10000 ms) */
  requestTimeoutMs?: number;
  /** a heartbeat disappears this long after it was sent unless renewed (default 600 s) */
  heartbeatTtlSeconds?: number;
  /** events expire after this long; 0 keeps them (default EVENT_TTL_SECONDS, 90 days: history, bounded) */
  eventTtlSeconds?: number;
  /** directory of the *.cql migration files (default: ./cql next to this module, or src/catalog/cql) */
  migrationsDir?: string;
  /** how long to wait for another process's migration lease (default 120000 ms) */
  migrationTimeoutMs?: number;
}

const KEYSPACE_RE = /^[a-z][a-z0-9_]{0,47}$/;
const DC_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const CONTACT_RE = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+|[0-9A-Fa-f:]+)(:\d{1,5})?$/;
const STATES: readonly ProjectState[] = ['active', 'moving', 'fenced', 'failing-over'];
const DAY_MS = 86_400_000;
const HOUR_MS = 3_600_000;
/** fleet-wide events of one hour are spread over this many partitions (007_event_buckets.cql) */
export const EVENT_SHARDS = 8;
const PAGE = 500;
const MAX_CAS_ATTEMPTS = 20;

export function checkKeyspaceName(ks: unknown, where = ''): string {
  if (typeof ks !== 'string' || !KEYSPACE_RE.test(ks)) {
    throw new v.ValidationError('keyspace name', where, 'must match /^[a-z][a-z0-9_]{0,47}$/', ks);
  }
  return ks;
}

function checkDatacenter(dc: unknown, where: string): string {
  if (typeof dc !== 'string' || !DC_RE.test(dc)) throw new v.ValidationError('datacenter name', where, 'must be 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit', dc);
  return dc;
}

function checkLockText(what: string, value: unknown, where: string): string {
  // eslint-disable-next-line no-control-regex
  if (typeof value !== 'string' || value.length === 0 || value.length > 255 || /[\u0000-\u001f\u007f]/.test(value)) {
    throw new v.ValidationError(what, where, 'must be 1-255 printable characters', value);
  }
  return value;
}

function checkTtl(ttlMs: unknown, where: string): number {
  if (typeof ttlMs !== 'number' || !Number.isFinite(ttlMs) || ttlMs <= 0 || ttlMs > 30 * DAY_MS) {
    throw new v.ValidationError('lease duration', where, 'must be a number of milliseconds > 0 and <= 30 days', String(ttlMs));
  }
  return ttlMs;
}

/** Cassandra TTLs are whole seconds and a cell can expire up to 1 s early: round up, plus 1 s. */
function leaseTtlSeconds(ttlMs: number): number {
  return Math.ceil(ttlMs / 1000) + 1;
}

/** The keyspace replication map as CQL; every name is validated first (it is interpolated). */
export function replicationCql(spec: ReplicationSpec): string {
  if (spec.class === 'SimpleStrategy') {
    if (!Number.isInteger(spec.replicationFactor) || spec.replicationFactor < 1 || spec.replicationFactor > 20) {
      throw new CatalogError(`cassandra catalog: replication factor must be an integer 1-20, got ${String(spec.replicationFactor)}`);
    }
    return `{'class': 'SimpleStrategy', 'replication_factor': ${spec.replicationFactor}}`;
  }
  const entries = Object.entries(spec.datacenters);
  if (entries.length === 0) throw new CatalogError('cassandra catalog: NetworkTopologyStrategy replication needs at least one datacenter');
  const parts = entries.map(([dc, rf]) => {
    checkDatacenter(dc, 'replication');
    if (!Number.isInteger(rf) || rf < 1 || rf > 20) throw new CatalogError(`cassandra catalog: replication factor of datacenter ${dc} must be an integer 1-20, got ${String(rf)}`);
    return `'${dc}': ${rf}`;
  });
  return `{'class': 'NetworkTopologyStrategy', ${parts.join(', ')}}`;
}

// ---------------------------------------------------------------- statements

type Level = 'LOCAL_ONE' | 'LOCAL_QUORUM' | 'QUORUM' | 'SERIAL_READ';
interface Statement {
  cql: string;
  level: Level;
  /** an LWT: commit at LOCAL_QUORUM, Paxos at the serial consistency, never retried blindly */
  lwt?: boolean;
}

function statements(ks: string) {
  const PROJECT_COLS = 'id, primary_host, replication_factor, quota, state, targets, targets_version, location_token, location_ts, created_at, operation';
  const REPLICA_COLS = 'project, host, snapshot, guid, snapshot_creation, confirmed_at';
  const HOST_COLS = 'id, datacenter, address, port, root, load, heartbeat_at, replication_key, draining';
  const LEASE_SET = `UPDATE ${ks}.locks USING TTL ? SET owner = ?, lease_token = ?, expires_at = ? WHERE name = ?`;
  const s = {
    'hosts.upsert': { cql: `INSERT INTO ${ks}.hosts (scope, id, datacenter, address, port, root) VALUES ('all', ?, ?, ?, ?, ?)`, level: 'LOCAL_QUORUM' },
    // with a key (null removes it; see 004_host_replication_key.cql)
    'hosts.upsert_key': {
      cql: `INSERT INTO ${ks}.hosts (scope, id, datacenter, address, port, root, replication_key) VALUES ('all', ?, ?, ?, ?, ?, ?)`,
      level: 'LOCAL_QUORUM',
    },
    'hosts.exists': { cql: `SELECT datacenter FROM ${ks}.hosts WHERE scope = 'all' AND id = ?`, level: 'LOCAL_QUORUM' },
    'hosts.heartbeat_at': { cql: `UPDATE ${ks}.hosts USING TTL ? SET heartbeat_at = ? WHERE scope = 'all' AND id = ?`, level: 'LOCAL_ONE' },
    'hosts.load': { cql: `UPDATE ${ks}.hosts SET load = ? WHERE scope = 'all' AND id = ?`, level: 'LOCAL_ONE' },
    // never creates a row: an unknown host is not applied (008_host_draining.cql)
    'hosts.draining': { cql: `UPDATE ${ks}.hosts SET draining = ? WHERE scope = 'all' AND id = ? IF datacenter != null`, level: 'LOCAL_QUORUM', lwt: true },
    'hosts.get': { cql: `SELECT ${HOST_COLS} FROM ${ks}.hosts WHERE scope = 'all' AND id = ?`, level: 'LOCAL_ONE' },
    'hosts.list': { cql: `SELECT ${HOST_COLS} FROM ${ks}.hosts WHERE scope = 'all'`, level: 'LOCAL_ONE' },

    'projects.create': {
      cql: `UPDATE ${ks}.projects SET primary_host = ?, replication_factor = ?, quota = ?, state = 'active', targets = [], location_token = 0, location_ts = ?, created_at = ? WHERE id = ? IF created_at = null`,
      level: 'LOCAL_QUORUM',
      lwt: true,
    },
    'projects.get': { cql: `SELECT ${PROJECT_COLS} FROM ${ks}.projects WHERE id = ?`, level: 'LOCAL_QUORUM' },
    'projects.get_quorum': { cql: `SELECT ${PROJECT_COLS} FROM ${ks}.projects WHERE id = ?`, level: 'QUORUM' },
    'projects.get_serial': { cql: `SELECT ${PROJECT_COLS} FROM ${ks}.projects WHERE id = ?`, level: 'SERIAL_READ' },
    'projects.list': { cql: `SELECT ${PROJECT_COLS} FROM ${ks}.projects`, level: 'LOCAL_QUORUM' },
    'projects.set_targets_v0': { cql: `UPDATE ${ks}.projects SET targets = ?, targets_version = ? WHERE id = ? IF created_at != null AND targets_version = null`, level: 'LOCAL_QUORUM', lwt: true },
    'projects.set_targets_v': { cql: `UPDATE ${ks}.projects SET targets = ?, targets_version = ? WHERE id = ? IF targets_version = ?`, level: 'LOCAL_QUORUM', lwt: true },
    'projects.set_location': {
      cql: `UPDATE ${ks}.projects SET primary_host = ?, state = ?, location_token = ?, location_ts = ?, operation = ? WHERE id = ? IF location_ts = ?`,
      level: 'QUORUM',
      lwt: true,
    },
    'projects.replica_put': { cql: `UPDATE ${ks}.projects USING TIMESTAMP ? SET replicas[?] = ? WHERE id = ?`, level: 'LOCAL_QUORUM' },
    'projects.replica_del': { cql: `DELETE replicas[?] FROM ${ks}.projects USING TIMESTAMP ? WHERE id = ?`, level: 'LOCAL_QUORUM' },
    'projects_by_host.put': { cql: `INSERT INTO ${ks}.projects_by_host (host, project) VALUES (?, ?) USING TIMESTAMP ?`, level: 'QUORUM' },
    'projects_by_host.del': { cql: `DELETE FROM ${ks}.projects_by_host USING TIMESTAMP ? WHERE host = ? AND project = ?`, level: 'QUORUM' },
    'projects_by_host.list': { cql: `SELECT project FROM ${ks}.projects_by_host WHERE host = ?`, level: 'QUORUM' },
    'host_gen.bump': { cql: `UPDATE ${ks}.host_generation SET gen = ? WHERE host = ?`, level: 'QUORUM' },
    // 009_requests.cql: QUORUM both ways, as projects_by_host: storagectl in one datacenter
    // writes a request or a cancel that an agent in another must see on its next read
    'requests.put': { cql: `INSERT INTO ${ks}.requests (host, project) VALUES (?, ?)`, level: 'QUORUM' },
    'requests.del': { cql: `DELETE FROM ${ks}.requests WHERE host = ? AND project = ?`, level: 'QUORUM' },
    'requests.list': { cql: `SELECT project FROM ${ks}.requests WHERE host = ?`, level: 'QUORUM' },
    'progress.put': { cql: `UPDATE ${ks}.progress SET progress = ? WHERE project = ?`, level: 'QUORUM' },
    'progress.cancel': { cql: `UPDATE ${ks}.progress SET cancel = ? WHERE project = ?`, level: 'QUORUM' },
    'progress.get': { cql: `SELECT progress, cancel FROM ${ks}.progress WHERE project = ?`, level: 'QUORUM' },
    'newest.put': { cql: `INSERT INTO ${ks}.newest_snapshots (project, snapshot, guid, creation) VALUES (?, ?, ?, ?)`, level: 'LOCAL_QUORUM' },
    'newest.list': { cql: `SELECT project, snapshot, guid, creation FROM ${ks}.newest_snapshots`, level: 'LOCAL_QUORUM' },
    'host_gen.get': { cql: `SELECT gen FROM ${ks}.host_generation WHERE host = ?`, level: 'QUORUM' },

    'replicas.get': { cql: `SELECT confirmed_at, deleted, write_ts FROM ${ks}.replicas WHERE project = ? AND host = ?`, level: 'LOCAL_QUORUM' },
    'replicas.get_serial': { cql: `SELECT confirmed_at, deleted, write_ts FROM ${ks}.replicas WHERE project = ? AND host = ?`, level: 'SERIAL_READ' },
    'replicas.insert': {
      cql: `INSERT INTO ${ks}.replicas (${REPLICA_COLS}, deleted, write_ts) VALUES (?, ?, ?, ?, ?, ?, false, ?) IF NOT EXISTS`,
      level: 'LOCAL_QUORUM',
      lwt: true,
    },
    'replicas.update': {
      cql: `UPDATE ${ks}.replicas SET snapshot = ?, guid = ?, snapshot_creation = ?, confirmed_at = ?, deleted = false, write_ts = ? WHERE project = ? AND host = ? IF write_ts = ?`,
      level: 'LOCAL_QUORUM',
      lwt: true,
    },
    'replicas.delete': { cql: `UPDATE ${ks}.replicas SET deleted = true, write_ts = ? WHERE project = ? AND host = ? IF write_ts = ?`, level: 'LOCAL_QUORUM', lwt: true },
    'replicas.list': { cql: `SELECT ${REPLICA_COLS}, deleted FROM ${ks}.replicas WHERE project = ?`, level: 'LOCAL_QUORUM' },
    'replicas_by_host.put': { cql: `INSERT INTO ${ks}.replicas_by_host (host, project, snapshot, guid, snapshot_creation, confirmed_at) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?`, level: 'LOCAL_QUORUM' },
    'replicas_by_host.del': { cql: `DELETE FROM ${ks}.replicas_by_host USING TIMESTAMP ? WHERE host = ? AND project = ?`, level: 'LOCAL_QUORUM' },
    'replicas_by_host.list': { cql: `SELECT ${REPLICA_COLS} FROM ${ks}.replicas_by_host WHERE host = ?`, level: 'LOCAL_QUORUM' },

    'events.index': { cql: `INSERT INTO ${ks}.event_days (scope, day) VALUES (?, ?) USING TTL ?`, level: 'LOCAL_ONE' },
    'events.index_hour': { cql: `INSERT INTO ${ks}.event_hours (scope, hour, shards) VALUES ('all', ?, ?) USING TTL ?`, level: 'LOCAL_ONE' },
    'events.put_hour': { cql: `INSERT INTO ${ks}.events_by_hour (hour, shard, at, id, project, host, kind, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?`, level: 'LOCAL_ONE' },
    'events.hours': { cql: `SELECT hour, shards FROM ${ks}.event_hours WHERE scope = 'all' AND hour >= ?`, level: 'LOCAL_ONE' },
    'events.list_hour': { cql: `SELECT at, id, project, host, kind, detail FROM ${ks}.events_by_hour WHERE hour = ? AND shard = ? AND at >= ? LIMIT ?`, level: 'LOCAL_ONE' },
    'events.put_project': { cql: `INSERT INTO ${ks}.events_by_project (project, day, at, id, host, kind, detail) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?`, level: 'LOCAL_ONE' },
    'events.days': { cql: `SELECT day FROM ${ks}.event_days WHERE scope = ? AND day >= ?`, level: 'LOCAL_ONE' },
    // events_by_day: written before 007, read until its rows expire
    'events.list_day': { cql: `SELECT at, id, project, host, kind, detail FROM ${ks}.events_by_day WHERE day = ? AND at >= ? LIMIT ?`, level: 'LOCAL_ONE' },
    'events.list_project': { cql: `SELECT at, id, project, host, kind, detail FROM ${ks}.events_by_project WHERE project = ? AND day = ? AND at >= ? LIMIT ?`, level: 'LOCAL_ONE' },

    'clock.now': { cql: `SELECT toTimestamp(now()) AS t FROM system.local`, level: 'LOCAL_ONE' },
    'locks.get': { cql: `SELECT owner, lease_token, expires_at, last_token FROM ${ks}.locks WHERE name = ?`, level: 'SERIAL_READ' },
    // conditional batches: [lease cells USING TTL + condition, last_token without TTL]
    'locks.acquire_free': { cql: `${LEASE_SET} IF owner = null AND last_token = ?`, level: 'LOCAL_QUORUM', lwt: true },
    'locks.acquire_expired': { cql: `${LEASE_SET} IF owner = ? AND lease_token = ? AND expires_at = ? AND last_token = ?`, level: 'LOCAL_QUORUM', lwt: true },
    'locks.bump': { cql: `UPDATE ${ks}.locks SET last_token = ? WHERE name = ?`, level: 'LOCAL_QUORUM', lwt: true },
    'locks.renew': { cql: `${LEASE_SET} IF owner = ? AND lease_token = ? AND expires_at > ?`, level: 'LOCAL_QUORUM', lwt: true },
    'locks.release': { cql: `DELETE owner, lease_token, expires_at FROM ${ks}.locks WHERE name = ? IF owner = ? AND lease_token = ?`, level: 'LOCAL_QUORUM', lwt: true },

    'schema.keyspace_exists': { cql: 'SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?', level: 'LOCAL_ONE' },
    'schema.table_exists': { cql: 'SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?', level: 'LOCAL_ONE' },
    'schema.applied': { cql: `SELECT name, checksum FROM ${ks}.schema_migrations WHERE scope = 'applied'`, level: 'LOCAL_QUORUM' },
    'schema.record': { cql: `INSERT INTO ${ks}.schema_migrations (scope, name, checksum, applied_at, applied_by) VALUES ('applied', ?, ?, ?, ?)`, level: 'LOCAL_QUORUM' },
    'schema.lease_take': {
      cql: `INSERT INTO ${ks}.schema_migrations (scope, name, checksum, applied_at, applied_by) VALUES ('lease', 'lease', '', ?, ?) IF NOT EXISTS USING TTL ?`,
      level: 'LOCAL_QUORUM',
      lwt: true,
    },
    'schema.lease_drop': { cql: `DELETE FROM ${ks}.schema_migrations WHERE scope = 'lease' AND name = 'lease' IF applied_by = ?`, level: 'LOCAL_QUORUM', lwt: true },
  } satisfies Record<string, Statement>;
  return s as Record<keyof typeof s, Statement>;
}

type StatementName = keyof ReturnType<typeof statements>;

// ---------------------------------------------------------------- retry policy

/**
 * Bounded retries. The driver consults onWriteTimeout and onRequestError (client timeout,
 * socket error, overloaded) only for statements marked idempotent; LWTs are not, and their
 * unknown outcomes are resolved by the caller with a serial read.
 */
class CatalogRetryPolicy extends cassandra.policies.retry.RetryPolicy {
  constructor(private readonly maxRetries = 2) {
    super();
  }
  override onReadTimeout(info: cpolicies.retry.OperationInfo, consistency: ctypes.consistencies): cpolicies.retry.DecisionInfo {
    // a slow replica set: one more try through another coordinator
    return info.nbRetry < 1 ? this.retryResult(consistency, false) : this.rethrowResult();
  }
  override onUnavailable(info: cpolicies.retry.OperationInfo, consistency: ctypes.consistencies): cpolicies.retry.DecisionInfo {
    // the coordinator's view of the ring may be wrong: ask another one, once
    return info.nbRetry < 1 ? this.retryResult(consistency, false) : this.rethrowResult();
  }
  override onWriteTimeout(info: cpolicies.retry.OperationInfo, consistency: ctypes.consistencies, _received: number, _blockFor: number, writeType: string): cpolicies.retry.DecisionInfo {
    if (writeType === 'CAS') return this.rethrowResult();
    return info.nbRetry < 1 ? this.retryResult(consistency, true) : this.rethrowResult();
  }
  override onRequestError(info: cpolicies.retry.OperationInfo, consistency: ctypes.consistencies): cpolicies.retry.DecisionInfo {
    return info.nbRetry < this.maxRetries ? this.retryResult(consistency, false) : this.rethrowResult();
  }
}

// ---------------------------------------------------------------- row helpers

function fail(where: string, col: string, why: string, value: unknown): never {
  throw new CatalogError(`${where}: column ${col} ${why} (got ${value === null ? 'null' : typeof value === 'object' ? (value as object).constructor?.name ?? 'object' : JSON.stringify(value)})`);
}
function colStr(r: Row, col: string, where: string): string {
  const x: unknown = r[col];
  if (typeof x !== 'string') fail(where, col, 'is not text', x);
  return x;
}
function colOptStr(r: Row, col: string, where: string): string | null {
  const x: unknown = r[col];
  if (x === null || x === undefined) return null;
  if (typeof x !== 'string') fail(where, col, 'is not text', x);
  return x;
}
function colOptNum(r: Row, col: string, where: string): number | null {
  const x: unknown = r[col];
  if (x === null || x === undefined) return null;
  if (typeof x === 'number') return x;
  if (x instanceof cassandra.types.Long) {
    const n = x.toNumber();
    if (!Number.isSafeInteger(n)) fail(where, col, 'is out of range', x.toString());
    return n;
  }
  return fail(where, col, 'is not a number', x);
}
function colOptBool(r: Row, col: string, where: string): boolean | null {
  const x: unknown = r[col];
  if (x === null || x === undefined) return null;
  if (typeof x !== 'boolean') fail(where, col, 'is not a boolean', x);
  return x;
}
function colNum(r: Row, col: string, where: string): number {
  const n = colOptNum(r, col, where);
  if (n === null) fail(where, col, 'is missing', null);
  return n;
}
function colOptDate(r: Row, col: string, where: string): number | null {
  const x: unknown = r[col];
  if (x === null || x === undefined) return null;
  if (!(x instanceof Date) || Number.isNaN(x.getTime())) fail(where, col, 'is not a timestamp', x);
  return x.getTime();
}
function colDate(r: Row, col: string, where: string): number {
  const n = colOptDate(r, col, where);
  if (n === null) fail(where, col, 'is missing', null);
  return n;
}

function driverMessage(e: unknown): string {
  if (e instanceof cassandra.errors.NoHostAvailableError) {
    const inner = Object.entries((e.innerErrors ?? {}) as Record<string, unknown>)
      .map(([host, err]) => `${host}: ${err instanceof Error ? err.message : String(err)}`)
      .join('; ');
    return inner ? `no host available (${inner})` : e.message;
  }
  return e instanceof Error ? e.message : String(e);
}

/**
 * The driver errors behind a catalog error. A NoHostAvailableError stands for the error of
 * each coordinator tried: with one node per datacenter, the retry policy's "next host" after
 * a timeout is no host, and the timeout arrives wrapped in one.
 */
function driverErrors(e: unknown): unknown[] {
  const d = e instanceof CatalogError ? e.cause : e;
  if (d instanceof cassandra.errors.NoHostAvailableError) {
    const inner = Object.values((d.innerErrors ?? {}) as Record<string, unknown>);
    return inner.length ? inner : [d];
  }
  return [d];
}

function isUnknownOutcome(d: unknown): boolean {
  if (d instanceof cassandra.errors.OperationTimedOutError) return true;
  if (d instanceof cassandra.errors.ResponseError) {
    // 0x1700: CAS_WRITE_UNKNOWN (protocol v5); v4 reports it as a write timeout
    return d.code === responseErrorCodes.writeTimeout || d.code === responseErrorCodes.writeFailure || d.code === 0x1700 || d.code === responseErrorCodes.readTimeout;
  }
  return false;
}

/** An LWT whose outcome is unknown (any coordinator tried may have applied it): the caller must read the row back at serial consistency. */
export function unknownOutcome(e: unknown): boolean {
  return driverErrors(e).some(isUnknownOutcome);
}

/** A contended serial read/LWT that timed out without effect worth retrying after a pause (every coordinator tried timed out). */
export function contended(e: unknown): boolean {
  return driverErrors(e).every(
    (d) =>
      d instanceof cassandra.errors.OperationTimedOutError ||
      (d instanceof cassandra.errors.ResponseError && (d.code === responseErrorCodes.readTimeout || d.code === responseErrorCodes.writeTimeout || d.code === 0x1700)),
  );
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const jitter = (attempt: number) => Math.min(1000, 20 * 2 ** attempt) * (0.5 + Math.random());

async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

function defaultMigrationsDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  // next to the module (if the build copies it), or the source tree from dist/src/catalog
  const candidates = [join(here, 'cql'), resolve(here, '..', '..', '..', 'src', 'catalog', 'cql')];
  for (const d of candidates) if (existsSync(d)) return d;
  throw new CatalogError(`cassandra catalog: no migration directory (looked in ${candidates.join(', ')}); set migrationsDir`);
}

export interface Migration {
  name: string;
  checksum: string;
  statements: string[];
}

/** Reads *.cql files in name order; statements end with ';' at the end of a line. */
export function loadMigrations(dir: string, keyspace: string): Migration[] {
  checkKeyspaceName(keyspace, 'migrations');
  let names: string[];
  try {
    names = readdirSync(dir).filter((f) => /^\d{3}_[a-z0-9_]+\.cql$/.test(f)).sort();
  } catch (e) {
    throw new CatalogError(`cassandra catalog: cannot read migrations in ${dir}: ${(e as Error).message}`, { cause: e });
  }
  if (names.length === 0) throw new CatalogError(`cassandra catalog: no migration files (NNN_name.cql) in ${dir}`);
  return names.map((name) => {
    const text = readFileSync(join(dir, name), 'utf8');
    const body = text
      .split('\n')
      .filter((l) => !/^\s*--/.test(l))
      .join('\n');
    const statements = body
      .split(/;\s*$/m)
      .map((s) => s.trim())
      .filter((s) => s.length > 0)
      .map((s) => s.replaceAll('{keyspace}', keyspace));
    return { name, checksum: createHash('sha256').update(text).digest('hex'), statements };
  });
}

/** The cells of a locks row as read (the lease cells are null once released or expired by TTL). */
interface LeaseCells {
  owner: string | null;
  leaseToken: number | null;
  expiresAt: number | null;
  lastToken: number | null;
}

interface ProjectRowX {
  project: ProjectRecord;
  locationTs: number;
}

function eventOrder(r: Row): number {
  const at: unknown = r['at'];
  return at instanceof Date ? at.getTime() : 0;
}

function eventRow(r: Row): EventRecord & { id: string } {
  const where = 'events row';
  const project = colOptStr(r, 'project', where);
  const host = colOptStr(r, 'host', where);
  if (project !== null) v.projectId(project, where);
  if (host !== null) v.hostId(host, where);
  const id: unknown = r['id'];
  return { id: String(id), at: colDate(r, 'at', where), project, host, kind: colStr(r, 'kind', where), detail: colOptStr(r, 'detail', where) ?? '' };
}

// ---------------------------------------------------------------- the catalog

export class CassandraCatalog implements Catalog {
  readonly backend = 'cassandra';
  /** migration files applied by this open (empty when the schema was already current) */
  appliedMigrations: string[] = [];
  private readonly stmts: Record<StatementName, Statement>;
  private readonly serial: ctypes.consistencies;
  private readonly label: string;
  private readonly heartbeatTtl: number;
  private readonly eventTtl: number;
  private readonly registered = new Set<string>();
  private lastTs = 0;
  private closed = false;

  private constructor(
    private readonly client: Client,
    readonly keyspace: string,
    private readonly opts: CassandraCatalogOptions,
    private readonly hosts: HostGuard,
  ) {
    this.stmts = statements(keyspace);
    this.serial = opts.serialConsistency === 'LOCAL_SERIAL' ? consistencies.localSerial : consistencies.serial;
    this.label = `${keyspace}@${opts.contactPoints.join(',')}`;
    this.heartbeatTtl = opts.heartbeatTtlSeconds ?? 600;
    this.eventTtl = opts.eventTtlSeconds ?? EVENT_TTL_SECONDS;
  }

  /** Connects, creates the keyspace if asked to and applies pending migrations. */
  static async open(opts: CassandraCatalogOptions): Promise<CassandraCatalog> {
    const ks = checkKeyspaceName(opts.keyspace, 'cassandra catalog options');
    if (!Array.isArray(opts.contactPoints) || opts.contactPoints.length === 0) throw new CatalogError('cassandra catalog: contactPoints is empty');
    for (const c of opts.contactPoints) {
      if (typeof c !== 'string' || !CONTACT_RE.test(c)) throw new v.ValidationError('contact point', 'cassandra catalog options', 'must be host or host:port', c);
    }
    checkDatacenter(opts.localDataCenter, 'cassandra catalog options (localDataCenter)');
    if (opts.heartbeatTtlSeconds !== undefined && (!Number.isInteger(opts.heartbeatTtlSeconds) || opts.heartbeatTtlSeconds < 1)) {
      throw new CatalogError(`cassandra catalog: heartbeatTtlSeconds must be an integer >= 1, got ${opts.heartbeatTtlSeconds}`);
    }
    if (opts.eventTtlSeconds !== undefined && (!Number.isInteger(opts.eventTtlSeconds) || opts.eventTtlSeconds < 0)) {
      throw new CatalogError(`cassandra catalog: eventTtlSeconds must be an integer >= 0, got ${opts.eventTtlSeconds}`);
    }
    const replication = replicationCql(opts.replication ?? { class: 'NetworkTopologyStrategy', datacenters: { [opts.localDataCenter]: 3 } });
    const { loadBalancing, reconnection } = cassandra.policies;
    const client = new cassandra.Client({
      contactPoints: opts.contactPoints,
      localDataCenter: opts.localDataCenter,
      protocolOptions: { port: opts.port ?? 9042, maxSchemaAgreementWaitSeconds: 30 },
      socketOptions: { connectTimeout: opts.connectTimeoutMs ?? 5000, readTimeout: opts.requestTimeoutMs ?? 10_000, keepAlive: true },
      policies: {
        loadBalancing: new loadBalancing.TokenAwarePolicy(new loadBalancing.DCAwareRoundRobinPolicy(opts.localDataCenter)),
        retry: new CatalogRetryPolicy(),
        reconnection: new reconnection.ExponentialReconnectionPolicy(1000, 60_000, false),
      },
      queryOptions: { consistency: consistencies.localQuorum, prepare: true, captureStackTrace: false },
      pooling: { warmup: true },
    });
    const where = `cassandra catalog ${ks}@${opts.contactPoints.join(',')}`;
    const guard = guardHosts(client);
    try {
      await client.connect();
    } catch (e) {
      await client.shutdown().catch(() => undefined);
      // driver 4.10: when connect() fails after the control connection was opened (e.g. an
      // unknown localDataCenter), shutdown() is a no-op and that socket stays open forever
      const cc = (client as unknown as { controlConnection?: { shutdown?(): void; connection?: { close?(): void } | null } }).controlConnection;
      try {
        cc?.shutdown?.();
      } catch {
        /* best effort */
      }
      guard.afterShutdown();
      const port = opts.contactPoints.every((c) => /^(\[[^\]]+\]|[^:]+):\d+$/.test(c)) ? '' : `default port ${opts.port ?? 9042}, `;
      throw new CatalogError(`${where}: cannot connect to ${opts.contactPoints.join(', ')} (${port}local datacenter ${opts.localDataCenter}): ${driverMessage(e)}`, { cause: e });
    }
    const cat = new CassandraCatalog(client, ks, opts, guard);
    try {
      await cat.migrate(replication);
    } catch (e) {
      await cat.close().catch(() => undefined);
      throw e;
    }
    return cat;
  }

  // ---- plumbing ----

  private err(name: string, e: unknown): CatalogError {
    if (e instanceof CatalogError) return e;
    return new CatalogError(`cassandra catalog ${this.label}: ${name}: ${driverMessage(e)}`, { cause: e });
  }

  private levelOf(s: Statement): ctypes.consistencies {
    if (s.level === 'SERIAL_READ') return this.serial;
    return s.level === 'LOCAL_ONE' ? consistencies.localOne : s.level === 'QUORUM' ? consistencies.quorum : consistencies.localQuorum;
  }

  private async exec(name: StatementName, params: unknown[], extra: { fetchSize?: number; pageState?: string } = {}): Promise<ResultSet> {
    if (this.closed) throw new CatalogError(`cassandra catalog ${this.label}: ${name}: the catalog is closed`);
    const s = this.stmts[name];
    try {
      return await this.client.execute(s.cql, params, {
        prepare: true,
        consistency: this.levelOf(s),
        serialConsistency: this.serial,
        isIdempotent: !s.lwt,
        ...(extra.fetchSize ? { fetchSize: extra.fetchSize } : {}),
        ...(extra.pageState ? { pageState: extra.pageState } : {}),
      });
    } catch (e) {
      throw this.err(name, e);
    }
  }

  private async batch(name: string, parts: Array<[StatementName, unknown[]]>, opts: { lwt: boolean; level: Level }): Promise<ResultSet> {
    if (this.closed) throw new CatalogError(`cassandra catalog ${this.label}: ${name}: the catalog is closed`);
    try {
      return await this.client.batch(
        parts.map(([n, params]) => ({ query: this.stmts[n].cql, params })),
        { prepare: true, logged: false, consistency: this.levelOf({ cql: '', level: opts.level }), serialConsistency: this.serial, isIdempotent: !opts.lwt },
      );
    } catch (e) {
      throw this.err(name, e);
    }
  }

  /** Every page of a single-partition (or the listProjects range) query. */
  private async allRows(name: StatementName, params: unknown[]): Promise<Row[]> {
    const rows: Row[] = [];
    let pageState: string | undefined;
    do {
      const rs = await this.exec(name, params, { fetchSize: PAGE, ...(pageState ? { pageState } : {}) });
      rows.push(...rs.rows);
      pageState = rs.pageState ?? undefined;
    } while (pageState);
    return rows;
  }

  /** A serial read, retried with backoff while Paxos is contended. */
  private async serialRead(name: StatementName, params: unknown[]): Promise<Row | undefined> {
    for (let attempt = 0; ; attempt++) {
      try {
        return (await this.exec(name, params)).first() ?? undefined;
      } catch (e) {
        if (!contended(e) || attempt >= 5) throw e;
        await sleep(jitter(attempt));
      }
    }
  }

  /** A monotonic microsecond write timestamp, larger than `prev`. */
  private nextTs(prev: number | null): number {
    this.lastTs = Math.max(Date.now() * 1000, this.lastTs + 1, (prev ?? 0) + 1);
    return this.lastTs;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.client.shutdown();
    } finally {
      // the hosts the driver replaced and forgot (./driver-hosts.ts), and a late refresh
      this.hosts.afterShutdown();
    }
  }

  /** how many Host objects the driver replaced (and the guard shut down) since open */
  driverHostsReplaced(): number {
    return this.hosts.replaced();
  }

  // ---- migrations ----

  private async ddl(what: string, cql: string): Promise<void> {
    try {
      await this.client.execute(cql, [], { prepare: false, readTimeout: Math.max(60_000, this.opts.requestTimeoutMs ?? 0), isIdempotent: true });
    } catch (e) {
      throw this.err(what, e);
    }
  }

  /**
   * Runs `fn` again while the schema it reads is still being created by another process:
   * system_schema can show a keyspace or table a moment before the node can serve it.
   */
  private async schemaSettling<T>(fn: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (e) {
        const d = e instanceof CatalogError ? e.cause : e;
        const racing = d instanceof cassandra.errors.ResponseError && d.code === responseErrorCodes.invalid && /does not exist|unconfigured/i.test(d.message);
        if (!racing || attempt >= 20) throw e;
        await sleep(250);
      }
    }
  }

  private async migrate(replication: string): Promise<void> {
    await this.schemaSettling(() => this.migrateOnce(replication));
  }

  private async migrateOnce(replication: string): Promise<void> {
    const ks = this.keyspace;
    const ksExists = (await this.exec('schema.keyspace_exists', [ks])).rowLength > 0;
    if (!ksExists) {
      if (this.opts.createKeyspace === false) throw new CatalogError(`cassandra catalog ${this.label}: keyspace ${ks} does not exist (createKeyspace is false: create it first)`);
      await this.ddl('schema.create_keyspace', `CREATE KEYSPACE IF NOT EXISTS ${ks} WITH replication = ${replication} AND durable_writes = true`);
    }
    if ((await this.exec('schema.table_exists', [ks, 'schema_migrations'])).rowLength === 0) {
      await this.ddl(
        'schema.create_migrations_table',
        `CREATE TABLE IF NOT EXISTS ${ks}.schema_migrations (scope text, name text, checksum text, applied_at timestamp, applied_by text, PRIMARY KEY ((scope), name))`,
      );
    }
    const files = loadMigrations(this.opts.migrationsDir ?? defaultMigrationsDir(), ks);
    const me = `${randomUUID()}`;
    const deadline = Date.now() + (this.opts.migrationTimeoutMs ?? 120_000);
    for (;;) {
      const pending = await this.pendingMigrations(files);
      if (pending.length === 0) return;
      const took = await this.exec('schema.lease_take', [new Date(), me, 120]).catch((e: unknown) => {
        if (unknownOutcome(e)) return undefined;
        throw e;
      });
      const mine = took ? took.wasApplied() : false;
      if (!mine) {
        if (Date.now() > deadline) throw new CatalogError(`cassandra catalog ${this.label}: another process holds the migration lease of keyspace ${ks} (waited ${this.opts.migrationTimeoutMs ?? 120_000} ms)`);
        await sleep(500 + Math.random() * 500);
        continue;
      }
      try {
        for (const m of await this.pendingMigrations(files)) {
          for (const [i, stmt] of m.statements.entries()) await this.ddl(`migration ${m.name} statement ${i + 1}`, stmt);
          await this.exec('schema.record', [m.name, m.checksum, new Date(), me]);
          this.appliedMigrations.push(m.name);
        }
      } finally {
        await this.exec('schema.lease_drop', [me]).catch(() => undefined);
      }
      return;
    }
  }

  private async pendingMigrations(files: Migration[]): Promise<Migration[]> {
    const applied = new Map<string, string>();
    for (const r of await this.allRows('schema.applied', [])) applied.set(colStr(r, 'name', 'schema_migrations row'), colStr(r, 'checksum', 'schema_migrations row'));
    for (const f of files) {
      const sum = applied.get(f.name);
      if (sum !== undefined && sum !== f.checksum) {
        throw new CatalogError(
          `cassandra catalog ${this.label}: migration ${f.name} was changed after it was applied (checksum ${sum.slice(0, 12)} in schema_migrations, ${f.checksum.slice(0, 12)} on disk): add a new migration file instead`,
        );
      }
    }
    return files.filter((f) => !applied.has(f.name));
  }

  // ---- hosts ----

  async upsertHost(h: HostRegistration): Promise<void> {
    v.hostId(h.id, 'upsertHost');
    v.hostId(h.datacenter, 'upsertHost datacenter');
    if (!Number.isInteger(h.port) || h.port < 1 || h.port > 65535) throw new v.ValidationError('port', 'upsertHost', 'must be an integer 1-65535', String(h.port));
    if (typeof h.address !== 'string' || typeof h.root !== 'string') throw new v.ValidationError('host record', 'upsertHost', 'needs address and root strings', h.id);
    const key = h.replicationKey;
    if (key === undefined) {
      // no key given: the stored one stays (this statement does not name the column)
      await this.exec('hosts.upsert', [h.id, h.datacenter, h.address, h.port, h.root]);
    } else {
      if (key !== null) checkPublicKey(key, `upsertHost (host ${h.id})`);
      await this.exec('hosts.upsert_key', [h.id, h.datacenter, h.address, h.port, h.root, key]);
    }
    this.registered.add(h.id);
  }

  async heartbeat(host: string, load: number, at = Date.now()): Promise<void> {
    v.hostId(host, 'heartbeat');
    if (!Number.isInteger(load) || load < 0 || load > 2 ** 31 - 1) throw new v.ValidationError('load', 'heartbeat', 'must be a non-negative integer', String(load));
    if (!this.registered.has(host)) {
      const r = (await this.exec('hosts.exists', [host])).first();
      if (!r || r['datacenter'] === null) throw new CatalogError(`heartbeat: host ${host} is not registered`);
      this.registered.add(host);
    }
    // the heartbeat disappears heartbeatTtl after `at`; load has no TTL
    const ttl = Math.max(1, Math.ceil((at + this.heartbeatTtl * 1000 - Date.now()) / 1000));
    await this.batch(
      'hosts.heartbeat',
      [
        ['hosts.heartbeat_at', [ttl, new Date(at), host]],
        ['hosts.load', [load, host]],
      ],
      { lwt: false, level: 'LOCAL_ONE' },
    );
  }

  async setDraining(host: string, draining: boolean): Promise<void> {
    v.hostId(host, 'setDraining');
    if (typeof draining !== 'boolean') throw new v.ValidationError('draining', 'setDraining', 'must be true or false', String(draining));
    let applied: boolean;
    try {
      applied = (await this.exec('hosts.draining', [draining, host])).wasApplied();
    } catch (e) {
      if (!unknownOutcome(e)) throw e;
      const h = await this.getHost(host); // the outcome: read back
      applied = h !== undefined && h.draining === draining;
      if (!applied) throw e;
    }
    if (!applied) throw new CatalogError(`set draining: host ${host} is not registered`);
  }

  private hostFrom(r: Row): HostRecord | undefined {
    const where = 'hosts row';
    // a row without datacenter is a heartbeat that raced a registration: not a host
    if (r['datacenter'] === null || r['datacenter'] === undefined) return undefined;
    return checkHost(
      {
        id: colStr(r, 'id', where),
        datacenter: colStr(r, 'datacenter', where),
        address: colStr(r, 'address', where),
        port: colNum(r, 'port', where),
        root: colStr(r, 'root', where),
        heartbeatAt: colOptDate(r, 'heartbeat_at', where),
        load: colOptNum(r, 'load', where) ?? 0,
        replicationKey: colOptStr(r, 'replication_key', where),
        draining: colOptBool(r, 'draining', where) ?? false,
      },
      where,
    );
  }

  async getHost(id: string): Promise<HostRecord | undefined> {
    v.hostId(id, 'getHost');
    const r = (await this.exec('hosts.get', [id])).first();
    return r ? this.hostFrom(r) : undefined;
  }

  async listHosts(): Promise<HostRecord[]> {
    return (await this.allRows('hosts.list', [])).map((r) => this.hostFrom(r)).filter((h): h is HostRecord => h !== undefined);
  }

  // ---- projects ----

  private projectFrom(r: Row): ProjectRowX | undefined {
    const where = 'projects row';
    if (r['created_at'] === null || r['created_at'] === undefined) return undefined; // never created (see 001_initial.cql)
    const targets: unknown = r['targets'] ?? [];
    if (!Array.isArray(targets) || !targets.every((t) => typeof t === 'string')) throw new CatalogError(`${where} ${String(r['id'])}: targets is not a list of host ids`);
    const project = checkProject(
      {
        id: colStr(r, 'id', where),
        primary: colOptStr(r, 'primary_host', where),
        replicationFactor: colNum(r, 'replication_factor', where),
        quota: colOptNum(r, 'quota', where),
        state: colStr(r, 'state', where) as ProjectState,
        targets: targets as string[],
        targetsVersion: r['targets_version'] === null || r['targets_version'] === undefined ? 0 : colNum(r, 'targets_version', where),
        locationToken: colNum(r, 'location_token', where),
        createdAt: colDate(r, 'created_at', where),
        operation: decodeOperation(colOptStr(r, 'operation', where), `${where} ${String(r['id'])}`),
      },
      where,
    );
    return { project, locationTs: colNum(r, 'location_ts', where) };
  }

  private async readProject(id: string, serial: boolean): Promise<ProjectRowX | undefined> {
    const r = serial ? await this.serialRead('projects.get_serial', [id]) : (await this.exec('projects.get', [id])).first();
    return r ? this.projectFrom(r) : undefined;
  }

  async createProject(p: { id: string; primary: string | null; replicationFactor: number; quota: number | null }): Promise<void> {
    v.projectId(p.id, 'createProject');
    if (p.primary !== null) v.hostId(p.primary, 'createProject primary');
    if (!Number.isInteger(p.replicationFactor) || p.replicationFactor < 0 || p.replicationFactor > 100) throw new v.ValidationError('replication factor', 'createProject', 'must be an integer 0-100', String(p.replicationFactor));
    if (p.quota !== null && (!Number.isSafeInteger(p.quota) || p.quota < 0)) throw new v.ValidationError('quota', 'createProject', 'must be a non-negative integer or null', String(p.quota));
    const ts = this.nextTs(null);
    const createdAt = Date.now();
    // index entry first: the index is a superset of the truth (see the header)
    if (p.primary !== null) await this.exec('projects_by_host.put', [p.primary, p.id, ts]);
    let applied: boolean;
    try {
      applied = (await this.exec('projects.create', [p.primary, p.replicationFactor, p.quota, ts, new Date(createdAt), p.id])).wasApplied();
    } catch (e) {
      if (!unknownOutcome(e)) throw e;
      const now = await this.readProject(p.id, true);
      applied = now !== undefined && now.locationTs === ts;
    }
    if (!applied) throw new CatalogError(`project ${p.id} already exists in the catalog`);
    await this.bump(p.primary);
  }

  /** after a project row change is applied: the host's generation moves (see 002_host_generation.cql) */
  private async bump(host: string | null): Promise<void> {
    if (host !== null) await this.exec('host_gen.bump', [TimeUuid.now(), host]);
  }

  async hostGeneration(host: string): Promise<string> {
    v.hostId(host, 'hostGeneration');
    const r = (await this.exec('host_gen.get', [host])).first();
    const g = r?.['gen'] as { toString(): string } | null | undefined;
    return g ? g.toString() : '';
  }

  async getProject(id: string): Promise<ProjectRecord | undefined> {
    v.projectId(id, 'getProject');
    return (await this.readProject(id, false))?.project;
  }

  async listProjects(): Promise<ProjectRecord[]> {
    const out: ProjectRecord[] = [];
    for (const r of await this.allRows('projects.list', [])) {
      const p = this.projectFrom(r);
      if (p) out.push(p.project);
    }
    return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  async listProjectsByPrimary(host: string): Promise<ProjectRecord[]> {
    v.hostId(host, 'listProjectsByPrimary');
    const ids = (await this.allRows('projects_by_host.list', [host])).map((r) => v.projectId(colStr(r, 'project', 'projects_by_host row'), 'projects_by_host row'));
    // QUORUM (not LOCAL_QUORUM): this is the fence check's read; a datacenter cut off from
    // the others must fail it (and self-fence), not answer from its own stale replicas
    const rows = await mapLimit(ids, 16, async (id) => {
      const r = (await this.exec('projects.get_quorum', [id])).first();
      return r ? this.projectFrom(r) : undefined;
    });
    const out: ProjectRecord[] = [];
    const stale: ProjectRowX[] = [];
    for (const x of rows) {
      if (!x) continue; // an entry left by a createProject that never completed
      if (x.project.primary === host) out.push(x.project);
      else stale.push(x);
    }
    // at the row's location_ts: never shadows an entry of a newer location change
    await mapLimit(stale, 8, (x) => this.exec('projects_by_host.del', [x.locationTs, host, x.project.id]));
    return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  async setTargets(project: string, targets: string[], opts: { ifVersion?: number } = {}): Promise<boolean> {
    v.projectId(project, 'setTargets');
    if (!Array.isArray(targets)) throw new v.ValidationError('targets', 'setTargets', 'must be a list of host ids', String(targets));
    targets.forEach((t) => v.hostId(t, 'setTargets'));
    if (opts.ifVersion !== undefined && (!Number.isSafeInteger(opts.ifVersion) || opts.ifVersion < 0)) throw new v.ValidationError('targets version', 'setTargets', 'must be a non-negative integer', String(opts.ifVersion));
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const cur = await this.readProject(project, true);
      if (!cur) throw new CatalogError(`set targets: project ${project} does not exist`);
      const version = cur.project.targetsVersion;
      if (opts.ifVersion !== undefined && version !== opts.ifVersion) return false;
      let applied: boolean;
      try {
        applied = (version === 0
          ? await this.exec('projects.set_targets_v0', [targets, 1, project])
          : await this.exec('projects.set_targets_v', [targets, version + 1, project, version])
        ).wasApplied();
      } catch (e) {
        if (!unknownOutcome(e)) throw e;
        const now = await this.readProject(project, true);
        applied = now !== undefined && now.project.targetsVersion === version + 1 && JSON.stringify(now.project.targets) === JSON.stringify(targets);
      }
      if (applied) {
        await this.bump(cur.project.primary);
        return true;
      }
      if (opts.ifVersion !== undefined) return false; // someone else wrote a newer list
      await sleep(jitter(attempt));
    }
    throw new CatalogError(`set targets: project ${project}: its targets kept changing concurrently (${MAX_CAS_ATTEMPTS} attempts)`);
  }

  async setLocation(project: string, primary: string | null, state: ProjectState, token: number, operation: ProjectOperation | null): Promise<void> {
    v.projectId(project, 'setLocation');
    const op = encodeOperation(operation, `setLocation ${project}`);
    if (primary !== null) v.hostId(primary, 'setLocation');
    if (!STATES.includes(state)) throw new v.ValidationError('project state', 'setLocation', `must be one of ${STATES.join(', ')}`, state);
    if (!Number.isSafeInteger(token)) throw new v.ValidationError('fencing token', 'setLocation', 'must be an integer', String(token));
    const lockName = projectLockName(project);
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      // (1) the lease, linearizably
      const lock = await this.readLock(lockName);
      const now = Date.now();
      const live = lock !== undefined && lock.owner !== null && lock.expiresAt !== null && lock.expiresAt > now;
      if (!lock || !live || lock.leaseToken !== token) {
        throw new FencingError(
          `location write for project ${project} rejected: fencing token ${token} is not the live lock holder's` +
            (lock && lock.leaseToken !== null ? ` (lock: owner ${lock.owner ?? 'none'}, token ${lock.leaseToken}, ${live ? 'live' : 'expired'})` : lock ? ` (lock: free, last token ${lock.lastToken ?? 0})` : ' (no lock)'),
        );
      }
      // (2) the project as of now
      const cur = await this.readProject(project, true);
      if (!cur) throw new CatalogError(`set location: project ${project} does not exist`);
      if (cur.project.locationToken > token) {
        throw new FencingError(`location write for project ${project} rejected: fencing token ${token} is older than the token of the last location change (${cur.project.locationToken})`);
      }
      const ts = this.nextTs(cur.locationTs);
      if (primary !== null) await this.exec('projects_by_host.put', [primary, project, ts]);
      // (3) compare-and-set on location_ts
      let applied: boolean;
      try {
        applied = (await this.exec('projects.set_location', [primary, state, token, ts, op, project, cur.locationTs])).wasApplied();
      } catch (e) {
        if (!unknownOutcome(e)) throw e;
        applied = (await this.readProject(project, true))?.locationTs === ts;
      }
      if (applied) {
        if (cur.project.primary !== null && cur.project.primary !== primary) await this.exec('projects_by_host.del', [ts, cur.project.primary, project]);
        await this.bump(primary);
        if (cur.project.primary !== primary) await this.bump(cur.project.primary);
        // the host an operation takes the project from sees a change with every write of
        // it: a resumed failover re-bumps the old primary whose bump a crash may have lost
        if (operation?.from && operation.from !== primary && operation.from !== cur.project.primary) await this.bump(operation.from);
        return;
      }
      await sleep(jitter(attempt));
    }
    throw new CatalogError(`set location: project ${project}: its location kept changing concurrently (${MAX_CAS_ATTEMPTS} attempts)`);
  }

  // ---- requests and progress (009_requests.cql) ----

  async putRequest(host: string, project: string): Promise<void> {
    await this.exec('requests.put', [v.hostId(host, 'putRequest'), v.projectId(project, 'putRequest')]);
  }

  async listRequests(host: string): Promise<string[]> {
    return (await this.allRows('requests.list', [v.hostId(host, 'listRequests')])).map((r) => v.projectId(colStr(r, 'project', 'requests row'), 'requests row'));
  }

  async deleteRequest(host: string, project: string): Promise<void> {
    await this.exec('requests.del', [v.hostId(host, 'deleteRequest'), v.projectId(project, 'deleteRequest')]);
  }

  async putProgress(project: string, p: OperationProgress): Promise<void> {
    await this.exec('progress.put', [JSON.stringify(checkProgress(p, 'putProgress')), v.projectId(project, 'putProgress')]);
  }

  async requestCancel(project: string, id: string): Promise<void> {
    await this.exec('progress.cancel', [requestId(id, 'requestCancel'), v.projectId(project, 'requestCancel')]);
  }

  async getProgress(project: string): Promise<ProgressRow> {
    const r = (await this.exec('progress.get', [v.projectId(project, 'getProgress')])).first();
    if (!r) return { progress: null, cancel: null };
    const where = `progress row ${project}`;
    const text = r['progress'] as string | null;
    const cancel = r['cancel'] as string | null;
    return { progress: decodeProgress(text, where), cancel: cancel === null ? null : requestId(cancel, `${where} (cancel)`) };
  }

  async recordNewest(project: string, n: NewestSnapshot): Promise<void> {
    checkNewest(project, n, 'recordNewest');
    await this.exec('newest.put', [project, n.snapshot, n.guid, n.creation]);
  }

  async listNewest(): Promise<Map<string, NewestSnapshot>> {
    const out = new Map<string, NewestSnapshot>();
    const where = 'newest_snapshots row';
    for (const r of await this.allRows('newest.list', [])) {
      const project = colStr(r, 'project', where);
      out.set(project, checkNewest(project, { snapshot: colStr(r, 'snapshot', where), guid: colStr(r, 'guid', where), creation: colNum(r, 'creation', where) }, where));
    }
    return out;
  }

  // ---- replicas ----

  private async replicaState(project: string, host: string, serial: boolean): Promise<{ confirmedAt: number | null; deleted: boolean; writeTs: number } | undefined> {
    const r = serial ? await this.serialRead('replicas.get_serial', [project, host]) : (await this.exec('replicas.get', [project, host])).first();
    if (!r) return undefined;
    const where = 'replicas row';
    return { confirmedAt: colOptDate(r, 'confirmed_at', where), deleted: r['deleted'] === true, writeTs: colNum(r, 'write_ts', where) };
  }

  async upsertReplica(r: ReplicaRecord): Promise<void> {
    checkReplica(r, 'upsertReplica');
    if (!Number.isSafeInteger(r.snapshotCreation) || r.snapshotCreation < 0) throw new v.ValidationError('snapshot creation', 'upsertReplica', 'must be unix seconds', String(r.snapshotCreation));
    if (!Number.isFinite(r.confirmedAt)) throw new v.ValidationError('confirmation time', 'upsertReplica', 'must be ms since the epoch', String(r.confirmedAt));
    let cur = await this.replicaState(r.project, r.host, false);
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      // the latest confirmation wins (a replay keeps its own time): older is ignored
      if (cur && !cur.deleted && cur.confirmedAt !== null && cur.confirmedAt > r.confirmedAt) return;
      const ts = this.nextTs(cur?.writeTs ?? null);
      let applied: boolean;
      try {
        applied = cur
          ? (await this.exec('replicas.update', [r.snapshot, r.guid, r.snapshotCreation, new Date(r.confirmedAt), ts, r.project, r.host, cur.writeTs])).wasApplied()
          : (await this.exec('replicas.insert', [r.project, r.host, r.snapshot, r.guid, r.snapshotCreation, new Date(r.confirmedAt), ts])).wasApplied();
      } catch (e) {
        if (!unknownOutcome(e)) throw e;
        applied = (await this.replicaState(r.project, r.host, true))?.writeTs === ts;
      }
      if (applied) {
        await Promise.all([
          this.exec('replicas_by_host.put', [r.host, r.project, r.snapshot, r.guid, r.snapshotCreation, new Date(r.confirmedAt), ts]),
          this.exec('projects.replica_put', [ts, r.host, new Date(r.confirmedAt), r.project]),
        ]);
        return;
      }
      await sleep(jitter(attempt));
      cur = await this.replicaState(r.project, r.host, true);
    }
    throw new CatalogError(`upsert replica ${r.project}@${r.host}: the row kept changing concurrently (${MAX_CAS_ATTEMPTS} attempts)`);
  }

  private replicaFrom(r: Row, project: string | null): ReplicaRecord {
    const where = 'replicas row';
    return checkReplica(
      {
        project: project ?? colStr(r, 'project', where),
        host: colStr(r, 'host', where),
        snapshot: colStr(r, 'snapshot', where),
        guid: colStr(r, 'guid', where),
        snapshotCreation: colNum(r, 'snapshot_creation', where),
        confirmedAt: colDate(r, 'confirmed_at', where),
      },
      where,
    );
  }

  async listReplicas(project: string): Promise<ReplicaRecord[]> {
    v.projectId(project, 'listReplicas');
    return (await this.allRows('replicas.list', [project])).filter((r) => r['deleted'] !== true).map((r) => this.replicaFrom(r, null));
  }

  async listReplicasByHost(host: string): Promise<ReplicaRecord[]> {
    v.hostId(host, 'listReplicasByHost');
    return (await this.allRows('replicas_by_host.list', [host])).map((r) => this.replicaFrom(r, null));
  }

  async deleteReplica(project: string, host: string): Promise<void> {
    v.projectId(project, 'deleteReplica');
    v.hostId(host, 'deleteReplica');
    let cur = await this.replicaState(project, host, false);
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      if (!cur || cur.deleted) return;
      const ts = this.nextTs(cur.writeTs);
      let applied: boolean;
      try {
        applied = (await this.exec('replicas.delete', [ts, project, host, cur.writeTs])).wasApplied();
      } catch (e) {
        if (!unknownOutcome(e)) throw e;
        applied = (await this.replicaState(project, host, true))?.writeTs === ts;
      }
      if (applied) {
        await Promise.all([this.exec('replicas_by_host.del', [ts, host, project]), this.exec('projects.replica_del', [host, ts, project])]);
        return;
      }
      await sleep(jitter(attempt));
      cur = await this.replicaState(project, host, true);
    }
    throw new CatalogError(`delete replica ${project}@${host}: the row kept changing concurrently (${MAX_CAS_ATTEMPTS} attempts)`);
  }

  // ---- events ----

  async addEvent(e: Omit<EventRecord, 'at'> & { at?: number }): Promise<void> {
    const at = e.at ?? Date.now();
    const project = e.project ?? null;
    const host = e.host ?? null;
    if (!Number.isFinite(at) || at < 0) throw new v.ValidationError('event time', 'addEvent', 'must be ms since the epoch', String(at));
    if (project !== null) v.projectId(project, 'addEvent');
    if (host !== null) v.hostId(host, 'addEvent');
    if (typeof e.kind !== 'string' || e.kind.length === 0 || e.kind.length > 100) throw new v.ValidationError('event kind', 'addEvent', 'must be 1-100 characters', e.kind);
    const hour = Math.floor(at / HOUR_MS);
    const day = Math.floor(at / DAY_MS);
    const shard = Math.floor(Math.random() * EVENT_SHARDS);
    const id = TimeUuid.fromDate(new Date(at));
    const detail = String(e.detail).slice(0, 4000);
    // the indexes first, so no event is ever unreachable by listEvents
    await Promise.all([this.exec('events.index_hour', [hour, EVENT_SHARDS, this.eventTtl]), project !== null ? this.exec('events.index', [project, day, this.eventTtl]) : undefined]);
    await Promise.all([
      this.exec('events.put_hour', [hour, shard, new Date(at), id, project, host, e.kind, detail, this.eventTtl]),
      project !== null ? this.exec('events.put_project', [project, day, new Date(at), id, host, e.kind, detail, this.eventTtl]) : undefined,
    ]);
  }

  /**
   * Newest first. A project's events: its day index, then its (project, day) partitions from
   * the newest day down to `since`. The fleet's: the hour index, then each hour's shards (read
   * in parallel, merged by time), then the pre-007 day partitions; each step stops at `limit`.
   */
  async listEvents(opts: { project?: string; since?: number; limit?: number }): Promise<EventRecord[]> {
    if (opts.project !== undefined) v.projectId(opts.project, 'listEvents');
    const limit = Math.min(opts.limit ?? 100, 10_000);
    if (!(limit > 0)) return [];
    const since = Math.max(0, opts.since ?? 0);
    const out: Array<EventRecord & { id: string }> = [];
    const seen = new Set<string>();
    const take = (rows: Row[]) => {
      for (const r of rows.sort((x, y) => eventOrder(y) - eventOrder(x) || String(y['id']).localeCompare(String(x['id'])))) {
        if (out.length >= limit) return;
        const ev = eventRow(r);
        if (seen.has(ev.id)) continue;
        seen.add(ev.id);
        out.push(ev);
      }
    };
    if (opts.project !== undefined) {
      for (const day of await this.indexDays(opts.project, since)) {
        if (out.length >= limit) break;
        take((await this.exec('events.list_project', [opts.project, day, new Date(since), limit - out.length])).rows);
      }
    } else {
      const hours = (await this.allRows('events.hours', [Math.floor(since / HOUR_MS)])).map((r) => ({ hour: colNum(r, 'hour', 'event_hours row'), shards: colNum(r, 'shards', 'event_hours row') }));
      for (const { hour, shards } of hours) {
        if (out.length >= limit) break;
        if (!Number.isInteger(shards) || shards < 1 || shards > 1024) throw new CatalogError(`event_hours row ${hour}: shards ${shards} is not 1-1024`);
        const want = limit - out.length;
        const parts = await Promise.all(Array.from({ length: shards }, (_, shard) => this.exec('events.list_hour', [hour, shard, new Date(since), want])));
        take(parts.flatMap((p) => p.rows));
      }
      // events written before 007 (one partition per day), until their TTL removes them
      for (const day of out.length < limit ? await this.indexDays('all', since) : []) {
        if (out.length >= limit) break;
        take((await this.exec('events.list_day', [day, new Date(since), limit - out.length])).rows);
      }
    }
    return out.map(({ id: _id, ...ev }) => ev);
  }

  private async indexDays(scope: string, since: number): Promise<number[]> {
    return (await this.allRows('events.days', [scope, Math.floor(since / DAY_MS)])).map((r) => colNum(r, 'day', 'event_days row'));
  }

  // ---- locks ----

  private async readLock(name: string): Promise<LeaseCells | undefined> {
    const r = await this.serialRead('locks.get', [name]);
    if (!r) return undefined;
    const where = 'locks row';
    return {
      owner: colOptStr(r, 'owner', where),
      leaseToken: colOptNum(r, 'lease_token', where),
      expiresAt: colOptDate(r, 'expires_at', where),
      lastToken: colOptNum(r, 'last_token', where),
    };
  }

  /**
   * The serial read of the lease (locks.get), as a LockRow: a live or expired lease shows
   * its owner, lease token and expiry; a released one (or one whose TTL ran out) is free:
   * owner null, the last token (last_token never expires), expiresAt 0.
   */
  async clock(): Promise<number> {
    const r = (await this.exec('clock.now', [])).first();
    const t = r?.['t'] as unknown;
    const ms = t instanceof Date ? t.getTime() : typeof t === 'number' ? t : Number(t?.toString());
    if (!Number.isSafeInteger(ms) || ms <= 0) throw new CatalogError(`clock: the coordinator answered ${String(t)}, not a time`);
    return ms;
  }

  async getLock(name: string): Promise<LockRow | undefined> {
    checkLockText('lock name', name, 'getLock');
    const cur = await this.readLock(name);
    if (!cur) return undefined;
    const where = 'locks row';
    if (cur.owner !== null) {
      if (cur.leaseToken === null || cur.expiresAt === null) throw new CatalogError(`${where}: lock ${name} has an owner but no ${cur.leaseToken === null ? 'lease_token' : 'expires_at'}`);
      return checkLock(name, { owner: cur.owner, token: cur.leaseToken, expiresAt: cur.expiresAt }, where);
    }
    const token = cur.lastToken ?? cur.leaseToken;
    if (token === null) throw new CatalogError(`${where}: lock ${name} has neither an owner nor a token`);
    return checkLock(name, { owner: null, token, expiresAt: 0 }, where);
  }

  async acquireLock(name: string, owner: string, ttlMs: number): Promise<LockResult> {
    checkLockText('lock name', name, 'acquireLock');
    checkLockText('lock owner', owner, 'acquireLock');
    checkTtl(ttlMs, 'acquireLock');
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const cur = await this.readLock(name);
      const now = Date.now();
      if (cur && cur.owner !== null && cur.expiresAt !== null && cur.expiresAt > now) return { ok: false, owner: cur.owner, expiresAt: cur.expiresAt };
      const last = cur?.lastToken ?? null;
      const token = Math.max(last ?? 0, cur?.leaseToken ?? 0) + 1;
      const expiresAt = now + ttlMs;
      const lease = [leaseTtlSeconds(ttlMs), owner, token, new Date(expiresAt), name];
      const parts: Array<[StatementName, unknown[]]> =
        cur && cur.owner !== null
          ? [['locks.acquire_expired', [...lease, cur.owner, cur.leaseToken, cur.expiresAt === null ? null : new Date(cur.expiresAt), last]]]
          : [['locks.acquire_free', [...lease, last]]];
      parts.push(['locks.bump', [token, name]]);
      let applied: boolean;
      try {
        applied = (await this.batch('locks.acquire', parts, { lwt: true, level: 'LOCAL_QUORUM' })).wasApplied();
      } catch (e) {
        if (!unknownOutcome(e)) throw e;
        const after = await this.readLock(name);
        applied = after?.owner === owner && after.leaseToken === token && after.expiresAt === expiresAt;
      }
      if (applied) return { ok: true, token, expiresAt };
      await sleep(jitter(attempt));
    }
    const cur = await this.readLock(name);
    if (cur && cur.owner !== null && cur.expiresAt !== null) return { ok: false, owner: cur.owner, expiresAt: cur.expiresAt };
    throw new CatalogError(`acquire lock ${name}: contended, no outcome after ${MAX_CAS_ATTEMPTS} attempts`);
  }

  async renewLock(name: string, owner: string, token: number, ttlMs: number): Promise<boolean> {
    checkLockText('lock name', name, 'renewLock');
    checkLockText('lock owner', owner, 'renewLock');
    checkTtl(ttlMs, 'renewLock');
    if (!Number.isSafeInteger(token)) return false;
    for (let attempt = 0; attempt < 3; attempt++) {
      const now = Date.now();
      const expiresAt = now + ttlMs;
      try {
        return (await this.exec('locks.renew', [leaseTtlSeconds(ttlMs), owner, token, new Date(expiresAt), name, owner, token, new Date(now)])).wasApplied();
      } catch (e) {
        if (!unknownOutcome(e)) throw e;
        const after = await this.readLock(name);
        if (after?.owner === owner && after.leaseToken === token && after.expiresAt === expiresAt) return true;
        if (!(after?.owner === owner && after.leaseToken === token && after.expiresAt !== null && after.expiresAt > Date.now())) return false;
        await sleep(jitter(attempt)); // still ours and live, the renewal did not land: again
      }
    }
    return false;
  }

  async releaseLock(name: string, owner: string, token: number): Promise<void> {
    checkLockText('lock name', name, 'releaseLock');
    checkLockText('lock owner', owner, 'releaseLock');
    if (!Number.isSafeInteger(token)) return;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await this.exec('locks.release', [name, owner, token]);
        return;
      } catch (e) {
        if (!unknownOutcome(e)) throw e;
        const after = await this.readLock(name);
        if (!(after?.owner === owner && after.leaseToken === token)) return;
        await sleep(jitter(attempt));
      }
    }
    throw new CatalogError(`release lock ${name}: no outcome after 3 attempts`);
  }
}

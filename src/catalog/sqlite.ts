// The embedded catalog: one SQLite file (WAL) shared by every agent and storagectl on
// one machine. Writes that must be atomic run in IMMEDIATE transactions.
import Database from 'better-sqlite3';
import { mkdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import {
  CatalogError,
  FencingError,
  EVENT_TTL_SECONDS,
  checkHost,
  checkLock,
  checkNewest,
  checkPublicKey,
  checkProject,
  checkReplica,
  projectLockName,
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
  PROGRESS_TTL_SECONDS,
} from './types.js';
import * as v from '../util/validate.js';

const MIGRATIONS: string[] = [
  `CREATE TABLE hosts (
     id TEXT PRIMARY KEY, datacenter TEXT NOT NULL, address TEXT NOT NULL, port INTEGER NOT NULL,
     root TEXT NOT NULL, heartbeat_at INTEGER, load INTEGER NOT NULL DEFAULT 0);
   CREATE TABLE projects (
     id TEXT PRIMARY KEY, primary_host TEXT, replication_factor INTEGER NOT NULL, quota INTEGER,
     state TEXT NOT NULL DEFAULT 'active', targets TEXT NOT NULL DEFAULT '[]',
     location_token INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL);
   CREATE INDEX projects_by_primary ON projects(primary_host);
   CREATE TABLE replicas (
     project TEXT NOT NULL, host TEXT NOT NULL, snapshot TEXT NOT NULL, guid TEXT NOT NULL,
     snapshot_creation INTEGER NOT NULL, confirmed_at INTEGER NOT NULL, PRIMARY KEY (project, host));
   CREATE INDEX replicas_by_host ON replicas(host);
   CREATE TABLE events (
     id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, project TEXT, host TEXT, kind TEXT NOT NULL, detail TEXT NOT NULL);
   CREATE INDEX events_by_project ON events(project, at);
   CREATE INDEX events_by_time ON events(at);
   CREATE TABLE locks (name TEXT PRIMARY KEY, owner TEXT, token INTEGER NOT NULL, expires_at INTEGER NOT NULL);`,
  // per-host generation: bumped in the same transaction as every change to a project row
  // that names the host as primary (see Catalog.hostGeneration)
  `CREATE TABLE host_generation (host TEXT PRIMARY KEY, gen INTEGER NOT NULL);`,
  `CREATE TABLE newest_snapshots (project TEXT PRIMARY KEY, snapshot TEXT NOT NULL, guid TEXT NOT NULL, creation INTEGER NOT NULL);`,
  // each host's replication public key (HostRecord.replicationKey); existing rows: NULL
  `ALTER TABLE hosts ADD COLUMN replication_key TEXT;`,
  // the operation in progress on a project (ProjectRecord.operation, JSON); NULL: none
  `ALTER TABLE projects ADD COLUMN operation TEXT;`,
  // ProjectRecord.targetsVersion (bumped by every setTargets)
  `ALTER TABLE projects ADD COLUMN targets_version INTEGER NOT NULL DEFAULT 0;`,
  // HostRecord.draining (storagectl drain)
  `ALTER TABLE hosts ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;`,
  // move requests by the host that performs them; the performer's progress per project
  `CREATE TABLE requests (host TEXT NOT NULL, project TEXT NOT NULL, PRIMARY KEY (host, project));
   CREATE TABLE progress (project TEXT PRIMARY KEY, progress TEXT, cancel TEXT, updated_at INTEGER NOT NULL);`,
];

interface ProjectRow {
  id: string;
  primary_host: string | null;
  replication_factor: number;
  quota: number | null;
  state: string;
  targets: string;
  location_token: number;
  created_at: number;
  operation: string | null;
  targets_version: number;
}

export class SqliteCatalog implements Catalog {
  readonly backend = 'sqlite';
  private readonly db: Database.Database;

  constructor(readonly path: string) {
    try {
      if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
      this.db = new Database(path, { timeout: 10_000 });
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.pragma('foreign_keys = ON');
      this.migrate();
    } catch (e) {
      throw new CatalogError(`sqlite catalog ${path}: ${(e as Error).message}`, { cause: e });
    }
  }

  private migrate(): void {
    // an up-to-date file (every open but the first few) takes no write lock: the
    // receiver opens the catalog once per SSH session, beside the agent's writes
    if ((this.db.pragma('user_version', { simple: true }) as number) >= MIGRATIONS.length) return;
    // several processes may open a fresh file at once: read the version inside the
    // IMMEDIATE transaction, so exactly one of them applies each migration
    for (let i = 0; i < MIGRATIONS.length; i++) {
      this.db.transaction(() => {
        const current = this.db.pragma('user_version', { simple: true }) as number;
        if (current > i) return;
        this.db.exec(MIGRATIONS[i]!);
        this.db.pragma(`user_version = ${i + 1}`);
      }).immediate();
    }
  }

  private wrap<T>(what: string, fn: () => T): Promise<T> {
    try {
      return Promise.resolve(fn());
    } catch (e) {
      if (e instanceof CatalogError || e instanceof v.ValidationError) return Promise.reject(e);
      return Promise.reject(new CatalogError(`sqlite catalog ${this.path}: ${what}: ${(e as Error).message}`, { cause: e }));
    }
  }

  close(): Promise<void> {
    this.db.close();
    return Promise.resolve();
  }

  // ---- hosts ----
  upsertHost(h: HostRegistration): Promise<void> {
    return this.wrap('upsert host', () => {
      v.hostId(h.id, 'upsertHost');
      v.hostId(h.datacenter, 'upsertHost datacenter');
      const key = h.replicationKey;
      if (key === undefined) {
        // no key given: a stored one stays
        this.db
          .prepare(
            `INSERT INTO hosts (id, datacenter, address, port, root) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET datacenter = excluded.datacenter, address = excluded.address, port = excluded.port, root = excluded.root`,
          )
          .run(h.id, h.datacenter, h.address, h.port, h.root);
        return;
      }
      if (key !== null) checkPublicKey(key, `upsertHost (host ${h.id})`);
      this.db
        .prepare(
          `INSERT INTO hosts (id, datacenter, address, port, root, replication_key) VALUES (?, ?, ?, ?, ?, ?)
           ON CONFLICT(id) DO UPDATE SET datacenter = excluded.datacenter, address = excluded.address, port = excluded.port, root = excluded.root,
             replication_key = excluded.replication_key`,
        )
        .run(h.id, h.datacenter, h.address, h.port, h.root, key);
    });
  }

  heartbeat(host: string, load: number, at = Date.now()): Promise<void> {
    return this.wrap('heartbeat', () => {
      const r = this.db.prepare('UPDATE hosts SET heartbeat_at = ?, load = ? WHERE id = ?').run(at, load, v.hostId(host, 'heartbeat'));
      if (r.changes === 0) throw new CatalogError(`heartbeat: host ${host} is not registered`);
    });
  }

  setDraining(host: string, draining: boolean): Promise<void> {
    return this.wrap('set draining', () => {
      if (typeof draining !== 'boolean') throw new v.ValidationError('draining', 'setDraining', 'must be true or false', String(draining));
      const r = this.db.prepare('UPDATE hosts SET draining = ? WHERE id = ?').run(draining ? 1 : 0, v.hostId(host, 'setDraining'));
      if (r.changes === 0) throw new CatalogError(`set draining: host ${host} is not registered`);
    });
  }

  private hostFrom(r: { id: string; datacenter: string; address: string; port: number; root: string; heartbeat_at: number | null; load: number; replication_key: string | null; draining: number }): HostRecord {
    if (r.draining !== 0 && r.draining !== 1) throw new CatalogError(`hosts row: host ${r.id} draining is ${String(r.draining)}, not 0 or 1`);
    return checkHost(
      { id: r.id, datacenter: r.datacenter, address: r.address, port: r.port, root: r.root, heartbeatAt: r.heartbeat_at, load: r.load, replicationKey: r.replication_key ?? null, draining: r.draining === 1 },
      'hosts row',
    );
  }

  getHost(id: string): Promise<HostRecord | undefined> {
    return this.wrap('get host', () => {
      const r = this.db.prepare('SELECT * FROM hosts WHERE id = ?').get(id) as Parameters<SqliteCatalog['hostFrom']>[0] | undefined;
      return r ? this.hostFrom(r) : undefined;
    });
  }

  listHosts(): Promise<HostRecord[]> {
    return this.wrap('list hosts', () => (this.db.prepare('SELECT * FROM hosts ORDER BY id').all() as Parameters<SqliteCatalog['hostFrom']>[0][]).map((r) => this.hostFrom(r)));
  }

  // ---- projects ----
  private projectFrom(r: ProjectRow): ProjectRecord {
    let targets: unknown;
    try {
      targets = JSON.parse(r.targets);
    } catch {
      throw new CatalogError(`projects row ${r.id}: targets is not JSON: ${JSON.stringify(r.targets.slice(0, 80))}`);
    }
    if (!Array.isArray(targets) || !targets.every((t) => typeof t === 'string')) throw new CatalogError(`projects row ${r.id}: targets is not a list of host ids`);
    return checkProject(
      {
        id: r.id,
        primary: r.primary_host,
        replicationFactor: r.replication_factor,
        quota: r.quota,
        state: r.state as ProjectState,
        targets: targets as string[],
        targetsVersion: r.targets_version,
        locationToken: r.location_token,
        createdAt: r.created_at,
        operation: decodeOperation(r.operation, `projects row ${r.id}`),
      },
      'projects row',
    );
  }

  createProject(p: { id: string; primary: string | null; replicationFactor: number; quota: number | null }): Promise<void> {
    return this.wrap('create project', () => {
      v.projectId(p.id, 'createProject');
      if (p.primary !== null) v.hostId(p.primary, 'createProject primary');
      this.db
        .transaction(() => {
          const r = this.db
            .prepare('INSERT INTO projects (id, primary_host, replication_factor, quota, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING')
            .run(p.id, p.primary, p.replicationFactor, p.quota, Date.now());
          if (r.changes === 0) throw new CatalogError(`project ${p.id} already exists in the catalog`);
          this.bump(p.primary);
        })
        .immediate();
    });
  }

  /** inside a write transaction: the host's generation moves */
  private bump(host: string | null): void {
    if (host === null) return;
    this.db.prepare('INSERT INTO host_generation (host, gen) VALUES (?, 1) ON CONFLICT(host) DO UPDATE SET gen = gen + 1').run(host);
  }

  hostGeneration(host: string): Promise<string> {
    return this.wrap('host generation', () => {
      const r = this.db.prepare('SELECT gen FROM host_generation WHERE host = ?').get(v.hostId(host, 'hostGeneration')) as { gen: number } | undefined;
      return r ? String(r.gen) : '';
    });
  }

  getProject(id: string): Promise<ProjectRecord | undefined> {
    return this.wrap('get project', () => {
      const r = this.db.prepare('SELECT * FROM projects WHERE id = ?').get(v.projectId(id, 'getProject')) as ProjectRow | undefined;
      return r ? this.projectFrom(r) : undefined;
    });
  }

  listProjects(): Promise<ProjectRecord[]> {
    return this.wrap('list projects', () => (this.db.prepare('SELECT * FROM projects ORDER BY id').all() as ProjectRow[]).map((r) => this.projectFrom(r)));
  }

  listProjectsByPrimary(host: string): Promise<ProjectRecord[]> {
    return this.wrap('list projects by primary', () =>
      (this.db.prepare('SELECT * FROM projects WHERE primary_host = ? ORDER BY id').all(v.hostId(host, 'listProjectsByPrimary')) as ProjectRow[]).map((r) => this.projectFrom(r)),
    );
  }

  setTargets(project: string, targets: string[], opts: { ifVersion?: number } = {}): Promise<boolean> {
    return this.wrap('set targets', () => {
      targets.forEach((t) => v.hostId(t, 'setTargets'));
      v.projectId(project, 'setTargets');
      if (opts.ifVersion !== undefined && (!Number.isSafeInteger(opts.ifVersion) || opts.ifVersion < 0)) throw new v.ValidationError('targets version', 'setTargets', 'must be a non-negative integer', String(opts.ifVersion));
      return this.db
        .transaction(() => {
          const row = this.db.prepare('SELECT primary_host, targets_version FROM projects WHERE id = ?').get(project) as { primary_host: string | null; targets_version: number } | undefined;
          if (!row) throw new CatalogError(`set targets: project ${project} does not exist`);
          if (opts.ifVersion !== undefined && row.targets_version !== opts.ifVersion) return false;
          this.db.prepare('UPDATE projects SET targets = ?, targets_version = ? WHERE id = ?').run(JSON.stringify(targets), row.targets_version + 1, project);
          this.bump(row.primary_host);
          return true;
        })
        .immediate();
    });
  }

  setLocation(project: string, primary: string | null, state: ProjectState, token: number, operation: ProjectOperation | null): Promise<void> {
    return this.wrap('set location', () => {
      v.projectId(project, 'setLocation');
      if (primary !== null) v.hostId(primary, 'setLocation');
      const op = encodeOperation(operation, `setLocation ${project}`);
      this.db
        .transaction(() => {
          const lock = this.db.prepare('SELECT owner, token, expires_at FROM locks WHERE name = ?').get(projectLockName(project)) as
            | { owner: string | null; token: number; expires_at: number }
            | undefined;
          if (!lock || lock.owner === null || lock.token !== token || lock.expires_at <= Date.now()) {
            throw new FencingError(
              `location write for project ${project} rejected: fencing token ${token} is not the live lock holder's` +
                (lock ? ` (lock: owner ${lock.owner ?? 'none'}, token ${lock.token}, ${lock.expires_at <= Date.now() ? 'expired' : 'live'})` : ' (no lock)'),
            );
          }
          const before = this.db.prepare('SELECT primary_host FROM projects WHERE id = ?').get(project) as { primary_host: string | null } | undefined;
          const r = this.db.prepare('UPDATE projects SET primary_host = ?, state = ?, location_token = ?, operation = ? WHERE id = ?').run(primary, state, token, op, project);
          if (r.changes === 0) throw new CatalogError(`set location: project ${project} does not exist`);
          this.bump(primary);
          if (before && before.primary_host !== primary) this.bump(before.primary_host);
          if (operation?.from && operation.from !== primary && operation.from !== before?.primary_host) this.bump(operation.from);
        })
        .immediate();
    });
  }

  putRequest(host: string, project: string): Promise<void> {
    return this.wrap('put request', () => {
      this.db.prepare('INSERT OR IGNORE INTO requests (host, project) VALUES (?, ?)').run(v.hostId(host, 'putRequest'), v.projectId(project, 'putRequest'));
    });
  }

  listRequests(host: string): Promise<string[]> {
    return this.wrap('list requests', () =>
      (this.db.prepare('SELECT project FROM requests WHERE host = ? ORDER BY project').all(v.hostId(host, 'listRequests')) as Array<{ project: string }>).map((r) => v.projectId(r.project, 'requests row')),
    );
  }

  deleteRequest(host: string, project: string): Promise<void> {
    return this.wrap('delete request', () => {
      this.db.prepare('DELETE FROM requests WHERE host = ? AND project = ?').run(v.hostId(host, 'deleteRequest'), v.projectId(project, 'deleteRequest'));
    });
  }

  putProgress(project: string, p: OperationProgress): Promise<void> {
    return this.wrap('put progress', () => {
      const text = JSON.stringify(checkProgress(p, 'putProgress'));
      this.db
        .prepare('INSERT INTO progress (project, progress, updated_at) VALUES (?, ?, ?) ON CONFLICT(project) DO UPDATE SET progress = excluded.progress, updated_at = excluded.updated_at')
        .run(v.projectId(project, 'putProgress'), text, Date.now());
    });
  }

  requestCancel(project: string, id: string): Promise<void> {
    return this.wrap('request cancel', () => {
      this.db
        .prepare('INSERT INTO progress (project, cancel, updated_at) VALUES (?, ?, ?) ON CONFLICT(project) DO UPDATE SET cancel = excluded.cancel, updated_at = excluded.updated_at')
        .run(v.projectId(project, 'requestCancel'), requestId(id, 'requestCancel'), Date.now());
    });
  }

  getProgress(project: string): Promise<ProgressRow> {
    return this.wrap('get progress', () => {
      const r = this.db.prepare('SELECT progress, cancel, updated_at FROM progress WHERE project = ?').get(v.projectId(project, 'getProgress')) as { progress: string | null; cancel: string | null; updated_at: number } | undefined;
      // kept a week after the last write, as the Cassandra row's TTL
      if (!r || Date.now() - r.updated_at > PROGRESS_TTL_SECONDS * 1000) return { progress: null, cancel: null };
      return { progress: decodeProgress(r.progress, `progress row ${project}`), cancel: r.cancel === null ? null : requestId(r.cancel, `progress row ${project} (cancel)`) };
    });
  }

  recordNewest(project: string, n: NewestSnapshot): Promise<void> {
    return this.wrap('record newest snapshot', () => {
      checkNewest(project, n, 'recordNewest');
      this.db
        .prepare('INSERT INTO newest_snapshots (project, snapshot, guid, creation) VALUES (?, ?, ?, ?) ON CONFLICT(project) DO UPDATE SET snapshot = excluded.snapshot, guid = excluded.guid, creation = excluded.creation')
        .run(project, n.snapshot, n.guid, n.creation);
    });
  }

  listNewest(): Promise<Map<string, NewestSnapshot>> {
    return this.wrap('list newest snapshots', () => {
      const out = new Map<string, NewestSnapshot>();
      for (const r of this.db.prepare('SELECT project, snapshot, guid, creation FROM newest_snapshots').all() as Array<{ project: string } & NewestSnapshot>) {
        out.set(r.project, checkNewest(r.project, { snapshot: r.snapshot, guid: r.guid, creation: r.creation }, 'newest_snapshots row'));
      }
      return out;
    });
  }

  // ---- replicas ----
  upsertReplica(r: ReplicaRecord): Promise<void> {
    return this.wrap('upsert replica', () => {
      checkReplica(r, 'upsertReplica');
      this.db
        .prepare(
          `INSERT INTO replicas (project, host, snapshot, guid, snapshot_creation, confirmed_at) VALUES (?, ?, ?, ?, ?, ?)
           ON CONFLICT(project, host) DO UPDATE SET snapshot = excluded.snapshot, guid = excluded.guid,
             snapshot_creation = excluded.snapshot_creation, confirmed_at = excluded.confirmed_at
           WHERE excluded.confirmed_at >= replicas.confirmed_at`,
        )
        .run(r.project, r.host, r.snapshot, r.guid, r.snapshotCreation, r.confirmedAt);
    });
  }

  private replicaFrom(r: { project: string; host: string; snapshot: string; guid: string; snapshot_creation: number; confirmed_at: number }): ReplicaRecord {
    return checkReplica({ project: r.project, host: r.host, snapshot: r.snapshot, guid: r.guid, snapshotCreation: r.snapshot_creation, confirmedAt: r.confirmed_at }, 'replicas row');
  }

  listReplicas(project: string): Promise<ReplicaRecord[]> {
    return this.wrap('list replicas', () =>
      (this.db.prepare('SELECT * FROM replicas WHERE project = ? ORDER BY host').all(v.projectId(project, 'listReplicas')) as Parameters<SqliteCatalog['replicaFrom']>[0][]).map((r) =>
        this.replicaFrom(r),
      ),
    );
  }

  listReplicasByHost(host: string): Promise<ReplicaRecord[]> {
    return this.wrap('list replicas by host', () =>
      (this.db.prepare('SELECT * FROM replicas WHERE host = ? ORDER BY project').all(v.hostId(host, 'listReplicasByHost')) as Parameters<SqliteCatalog['replicaFrom']>[0][]).map((r) =>
        this.replicaFrom(r),
      ),
    );
  }

  deleteReplica(project: string, host: string): Promise<void> {
    return this.wrap('delete replica', () => {
      this.db.prepare('DELETE FROM replicas WHERE project = ? AND host = ?').run(v.projectId(project, 'deleteReplica'), v.hostId(host, 'deleteReplica'));
    });
  }

  // ---- events ----
  private lastEventExpiry = 0;

  addEvent(e: Omit<EventRecord, 'at'> & { at?: number }): Promise<void> {
    return this.wrap('add event', () => {
      this.db.prepare('INSERT INTO events (at, project, host, kind, detail) VALUES (?, ?, ?, ?, ?)').run(e.at ?? Date.now(), e.project, e.host, e.kind, e.detail.slice(0, 4000));
      // events expire like Cassandra's TTL (history, not decisions): at most once an hour per process
      if (Date.now() - this.lastEventExpiry > 3_600_000) {
        this.lastEventExpiry = Date.now();
        this.db.prepare('DELETE FROM events WHERE at < ?').run(Date.now() - EVENT_TTL_SECONDS * 1000);
      }
    });
  }

  listEvents(opts: { project?: string; since?: number; limit?: number }): Promise<EventRecord[]> {
    return this.wrap('list events', () => {
      const limit = Math.min(opts.limit ?? 100, 10_000);
      const since = opts.since ?? 0;
      const rows = opts.project !== undefined
        ? this.db.prepare('SELECT at, project, host, kind, detail FROM events WHERE project = ? AND at >= ? ORDER BY at DESC, id DESC LIMIT ?').all(v.projectId(opts.project, 'listEvents'), since, limit)
        : this.db.prepare('SELECT at, project, host, kind, detail FROM events WHERE at >= ? ORDER BY at DESC, id DESC LIMIT ?').all(since, limit);
      return rows as EventRecord[];
    });
  }

  // ---- locks (leases with fencing tokens) ----
  acquireLock(name: string, owner: string, ttlMs: number): Promise<LockResult> {
    return this.wrap('acquire lock', () =>
      this.db
        .transaction((): LockResult => {
          const now = Date.now();
          const row = this.db.prepare('SELECT owner, token, expires_at FROM locks WHERE name = ?').get(name) as { owner: string | null; token: number; expires_at: number } | undefined;
          if (row && row.owner !== null && row.expires_at > now) return { ok: false, owner: row.owner, expiresAt: row.expires_at };
          const token = (row?.token ?? 0) + 1;
          const expiresAt = now + ttlMs;
          this.db
            .prepare('INSERT INTO locks (name, owner, token, expires_at) VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, token = excluded.token, expires_at = excluded.expires_at')
            .run(name, owner, token, expiresAt);
          return { ok: true, token, expiresAt };
        })
        .immediate(),
    );
  }

  renewLock(name: string, owner: string, token: number, ttlMs: number): Promise<boolean> {
    return this.wrap('renew lock', () => {
      const now = Date.now();
      const r = this.db.prepare('UPDATE locks SET expires_at = ? WHERE name = ? AND owner = ? AND token = ? AND expires_at > ?').run(now + ttlMs, name, owner, token, now);
      return r.changes === 1;
    });
  }

  releaseLock(name: string, owner: string, token: number): Promise<void> {
    return this.wrap('release lock', () => {
      // the token stays, so the next holder's token is larger (fencing)
      this.db.prepare('UPDATE locks SET owner = NULL, expires_at = 0 WHERE name = ? AND owner = ? AND token = ?').run(name, owner, token);
    });
  }

  clock(): Promise<number> {
    return this.wrap('read the clock', () => {
      // a write stamps the file's mtime with the kernel's clock (statx is a system call:
      // not affected by an LD_PRELOAD'ed clock such as faketime)
      if (this.path === ':memory:') return Date.now();
      const f = `${this.path}.clock`;
      writeFileSync(f, String(process.pid));
      return statSync(f).mtimeMs;
    });
  }

  getLock(name: string): Promise<LockRow | undefined> {
    return this.wrap('get lock', () => {
      if (typeof name !== 'string' || name.length === 0) throw new v.ValidationError('lock name', 'getLock', 'must be a non-empty string', name);
      const r = this.db.prepare('SELECT owner, token, expires_at FROM locks WHERE name = ?').get(name) as { owner: unknown; token: unknown; expires_at: unknown } | undefined;
      if (!r) return undefined;
      if (r.owner !== null && typeof r.owner !== 'string') throw new CatalogError(`locks row ${name}: owner is not text`);
      return checkLock(name, { owner: r.owner, token: r.token as number, expiresAt: r.expires_at as number }, 'locks row');
    });
  }
}

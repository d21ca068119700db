// The agent's view of a remote catalog (Cassandra) that may be unreachable. When the
// catalog fails, the agent keeps snapshotting and replicating from its last-known view:
//  - reads answer from the last successful result of the same query;
//  - freshness writes (replica rows, heartbeats, events, placement, host registration)
//    are journaled in a local SQLite file and replayed in order when the catalog answers
//    again. Replica rows are latest-confirmation-wins and a replay keeps the time of its
//    confirmation, so a replay is idempotent and never overwrites a later listing;
//  - what must never happen from a stale view is NOT journaled and fails: location
//    changes (fencing), locks, project creation, replica deletion. getLock (a fencing
//    check) is passed straight through too: never answered from the cache.
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { ValidationError } from '../util/validate.js';
import type { Catalog, EventRecord, HostRecord, HostRegistration, LockResult, LockRow, NewestSnapshot, ProjectRecord, ProjectState,
  ProjectOperation, ReplicaRecord, OperationProgress, ProgressRow } from './types.js';

type Journaled = 'upsertReplica' | 'heartbeat' | 'addEvent' | 'setTargets' | 'upsertHost' | 'recordNewest';

export interface ResilientStatus {
  degraded: boolean;
  journaled: number;
  lastError?: string;
}

export class ResilientCatalog implements Catalog {
  readonly backend: string;
  private readonly db: Database.Database;
  private readonly cache = new Map<string, unknown>();
  private degraded = false;
  private lastError?: string;
  private lastFailureAt = 0;
  /** called on every catalog failure (metrics) */
  onError?: (op: string, e: Error) => void;

  constructor(
    private readonly inner: Catalog,
    journalPath: string,
    private readonly retryAfterMs = 5_000,
  ) {
    this.backend = `${inner.backend}+journal`;
    if (journalPath !== ':memory:') mkdirSync(dirname(journalPath), { recursive: true });
    this.db = new Database(journalPath, { timeout: 10_000 });
    this.db.pragma('journal_mode = WAL');
    this.db.exec('CREATE TABLE IF NOT EXISTS journal (id INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, args TEXT NOT NULL, at INTEGER NOT NULL)');
  }

  status(): ResilientStatus {
    return { degraded: this.degraded, journaled: this.journaled(), lastError: this.lastError };
  }

  journaled(): number {
    return (this.db.prepare('SELECT count(*) AS n FROM journal').get() as { n: number }).n;
  }

  private failed(op: string, e: unknown): Error {
    const err = e instanceof Error ? e : new Error(String(e));
    this.degraded = true;
    this.lastError = `${op}: ${err.message}`;
    this.lastFailureAt = Date.now();
    this.onError?.(op, err);
    return err;
  }

  /** Replays the journal in order; stops at the first failure. */
  async flush(): Promise<number> {
    const rows = this.db.prepare('SELECT id, op, args FROM journal ORDER BY id').all() as Array<{ id: number; op: Journaled; args: string }>;
    let n = 0;
    for (const r of rows) {
      const args = JSON.parse(r.args) as unknown[];
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      await (this.inner[r.op] as (...a: any[]) => Promise<void>).apply(this.inner, args);
      this.db.prepare('DELETE FROM journal WHERE id = ?').run(r.id);
      n++;
    }
    return n;
  }

  private async ready(): Promise<void> {
    // degraded ends with a real answer of the catalog (a read or write below, or a flush
    // that wrote something): an empty journal proves nothing about the catalog
    if (this.journaled() === 0) return;
    if (Date.now() - this.lastFailureAt < this.retryAfterMs) return;
    try {
      await this.flush();
      this.degraded = false;
      this.lastError = undefined;
    } catch (e) {
      this.failed('flush', e);
    }
  }

  private answered(): void {
    if (this.journaled() === 0) {
      this.degraded = false;
      this.lastError = undefined;
    }
  }

  private async read<T>(op: string, key: unknown[], fn: () => Promise<T>): Promise<T> {
    await this.ready();
    const k = `${op}:${JSON.stringify(key)}`;
    try {
      const v = await fn();
      this.cache.set(k, v);
      this.answered();
      return v;
    } catch (e) {
      if (e instanceof ValidationError) throw e;
      const err = this.failed(op, e);
      if (this.cache.has(k)) return this.cache.get(k) as T;
      throw err;
    }
  }

  private async write(op: Journaled, args: unknown[], fn: () => Promise<void>): Promise<void> {
    await this.ready();
    if (this.journaled() > 0) {
      // keep the order: never overtake older journaled writes
      this.db.prepare('INSERT INTO journal (op, args, at) VALUES (?, ?, ?)').run(op, JSON.stringify(args), Date.now());
      return;
    }
    try {
      await fn();
      this.answered();
    } catch (e) {
      if (e instanceof ValidationError) throw e;
      this.failed(op, e);
      this.db.prepare('INSERT INTO journal (op, args, at) VALUES (?, ?, ?)').run(op, JSON.stringify(args), Date.now());
    }
  }

  async close(): Promise<void> {
    this.db.close();
    await this.inner.close();
  }

  upsertHost(h: HostRegistration): Promise<void> {
    // journaled as JSON: an omitted (undefined) replicationKey stays omitted on replay
    return this.write('upsertHost', [h], () => this.inner.upsertHost(h));
  }
  heartbeat(host: string, load: number, at = Date.now()): Promise<void> {
    return this.write('heartbeat', [host, load, at], () => this.inner.heartbeat(host, load, at));
  }
  /** an operator's decision: not journaled, it fails while the catalog is unreachable */
  setDraining(host: string, draining: boolean): Promise<void> {
    return this.inner.setDraining(host, draining);
  }
  /** requests, progress and cancels: operations need the catalog (never journaled or cached) */
  putRequest(host: string, project: string): Promise<void> {
    return this.inner.putRequest(host, project);
  }
  listRequests(host: string): Promise<string[]> {
    return this.inner.listRequests(host);
  }
  deleteRequest(host: string, project: string): Promise<void> {
    return this.inner.deleteRequest(host, project);
  }
  putProgress(project: string, p: OperationProgress): Promise<void> {
    return this.inner.putProgress(project, p);
  }
  requestCancel(project: string, id: string): Promise<void> {
    return this.inner.requestCancel(project, id);
  }
  getProgress(project: string): Promise<ProgressRow> {
    return this.inner.getProgress(project);
  }
  getHost(id: string): Promise<HostRecord | undefined> {
    return this.read('getHost', [id], () => this.inner.getHost(id));
  }
  listHosts(): Promise<HostRecord[]> {
    return this.read('listHosts', [], () => this.inner.listHosts());
  }
  createProject(p: { id: string; primary: string | null; replicationFactor: number; quota: number | null }): Promise<void> {
    return this.inner.createProject(p);
  }
  getProject(id: string): Promise<ProjectRecord | undefined> {
    return this.read('getProject', [id], () => this.inner.getProject(id));
  }
  listProjects(): Promise<ProjectRecord[]> {
    return this.read('listProjects', [], () => this.inner.listProjects());
  }
  recordNewest(project: string, n: NewestSnapshot): Promise<void> {
    return this.write('recordNewest', [project, n], () => this.inner.recordNewest(project, n));
  }
  listNewest(): Promise<Map<string, NewestSnapshot>> {
    return this.read('listNewest', [], () => this.inner.listNewest());
  }
  hostGeneration(host: string): Promise<string> {
    return this.read('hostGeneration', [host], () => this.inner.hostGeneration(host));
  }
  listProjectsByPrimary(host: string): Promise<ProjectRecord[]> {
    return this.read('listProjectsByPrimary', [host], () => this.inner.listProjectsByPrimary(host));
  }
  /**
   * Journaled while the catalog is down (true: queued). A replay carries the version the
   * list was made from, so it never undoes a newer list (the replay is then dropped).
   */
  async setTargets(project: string, targets: string[], opts: { ifVersion?: number } = {}): Promise<boolean> {
    let applied = true;
    await this.write('setTargets', [project, targets, opts], async () => {
      applied = await this.inner.setTargets(project, targets, opts);
    });
    return applied;
  }
  setLocation(project: string, primary: string | null, state: ProjectState, token: number, operation: ProjectOperation | null): Promise<void> {
    return this.inner.setLocation(project, primary, state, token, operation);
  }
  upsertReplica(r: ReplicaRecord): Promise<void> {
    return this.write('upsertReplica', [r], () => this.inner.upsertReplica(r));
  }
  listReplicas(project: string): Promise<ReplicaRecord[]> {
    return this.read('listReplicas', [project], () => this.inner.listReplicas(project));
  }
  listReplicasByHost(host: string): Promise<ReplicaRecord[]> {
    return this.read('listReplicasByHost', [host], () => this.inner.listReplicasByHost(host));
  }
  deleteReplica(project: string, host: string): Promise<void> {
    return this.inner.deleteReplica(project, host);
  }
  addEvent(e: Omit<EventRecord, 'at'> & { at?: number }): Promise<void> {
    const ev = { ...e, at: e.at ?? Date.now() };
    return this.write('addEvent', [ev], () => this.inner.addEvent(ev));
  }
  listEvents(opts: { project?: string; since?: number; limit?: number }): Promise<EventRecord[]> {
    return this.read('listEvents', [opts], () => this.inner.listEvents(opts));
  }
  acquireLock(name: string, owner: string, ttlMs: number): Promise<LockResult> {
    return this.inner.acquireLock(name, owner, ttlMs);
  }
  renewLock(name: string, owner: string, token: number, ttlMs: number): Promise<boolean> {
    return this.inner.renewLock(name, owner, token, ttlMs);
  }
  releaseLock(name: string, owner: string, token: number): Promise<void> {
    return this.inner.releaseLock(name, owner, token);
  }
  /** never from a cache: a clock read is live or fails */
  clock(): Promise<number> {
    return this.inner.clock();
  }
  getLock(name: string): Promise<LockRow | undefined> {
    // a read, but a fencing check: no cache, no journal; a failure is the caller's to see
    return this.inner.getLock(name);
  }
}

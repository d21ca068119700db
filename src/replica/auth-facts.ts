// The catalog facts a receiver decides on (authorize.ts), read through a small per-host
// cache (SQLite in stateDir, shared by the receiver's processes: each SSH session is one).
//
// Staleness is bounded and stated (trust-model.md):
//   - a host or project row younger than `freshMs` (default 30 s) is used without asking
//     the catalog (a burst of receives costs one catalog read per project, not one per
//     session, and no Cassandra connection at all when every row is fresh);
//   - when the catalog cannot be reached, rows up to `staleMs` old (default 15 min) still
//     authorize the data path into replicas (recv, list, abort-resume, rollback-head), so
//     replication goes on through a catalog outage; the audit line says how old they were;
//   - send, fence and promote read every row live (never from the cache: a location a
//     failover has just switched is seen at once), and lock rows are never cached: a
//     fencing token is checked live, always.
// Negative answers (unknown peer, unknown project) are never cached, and a refusal decided
// on cached rows is decided again on live ones (the new primary after a failover is not
// refused for the cache's sake).
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { checkHost, checkProject, projectLockName, type Catalog, type HostRecord, type ProjectRecord } from '../catalog/types.js';
import { factsNeeded, type AuthFacts } from './authorize.js';
import type { RemoteCommand } from './protocol.js';

export type FactCatalog = Pick<Catalog, 'getHost' | 'getProject' | 'getLock' | 'listProjectsByPrimary'>;

export interface FactSourceOptions {
  /** the per-host cache file (unset: no cache, every fact from the catalog) */
  cacheFile?: string;
  freshMs?: number;
  staleMs?: number;
  now?: () => number;
}

/** Facts plus how they were had: `staleMs` > 0 when the catalog did not answer and cached rows stood in. */
export interface GatheredFacts extends AuthFacts {
  staleMs: number;
  /** some row came from the cache (a refusal on such facts is checked again on live rows) */
  cached: boolean;
}

/** Ops that may run on rows cached before a catalog outage (the data path into replicas). */
const STALE_OK = new Set<RemoteCommand['op']>(['capabilities', 'list', 'recv', 'abort-resume', 'rollback-head']);

export class FactSource {
  private db?: Database.Database;
  private readonly freshMs: number;
  private readonly staleMs: number;
  private readonly now: () => number;

  constructor(
    private readonly catalog: () => Promise<FactCatalog>,
    o: FactSourceOptions = {},
  ) {
    this.freshMs = o.freshMs ?? 30_000;
    this.staleMs = o.staleMs ?? 15 * 60_000;
    this.now = o.now ?? Date.now;
    if (o.cacheFile) {
      try {
        mkdirSync(dirname(o.cacheFile), { recursive: true });
        const db = new Database(o.cacheFile, { timeout: 5000 });
        db.pragma('journal_mode = WAL');
        db.exec('CREATE TABLE IF NOT EXISTS facts (key TEXT PRIMARY KEY, json TEXT NOT NULL, fetched_at INTEGER NOT NULL)');
        this.db = db;
      } catch {
        this.db = undefined; // a broken cache costs catalog reads, never a wrong answer
      }
    }
  }

  close(): void {
    this.db?.close();
  }

  private cached(key: string): { json: string; fetchedAt: number } | undefined {
    try {
      const r = this.db?.prepare('SELECT json, fetched_at FROM facts WHERE key = ?').get(key) as { json: string; fetched_at: number } | undefined;
      return r && { json: r.json, fetchedAt: r.fetched_at };
    } catch {
      return undefined;
    }
  }

  private remember(key: string, value: unknown): void {
    try {
      this.db?.prepare('INSERT INTO facts (key, json, fetched_at) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET json = excluded.json, fetched_at = excluded.fetched_at').run(key, JSON.stringify(value), this.now());
    } catch {
      /* the cache is an optimisation */
    }
  }

  /**
   * One row: fresh from the cache, else from the catalog (and cached when found), else,
   * when the catalog fails, a cached row no older than `staleMs` (its age reported).
   */
  private async row<T>(key: string, read: (c: FactCatalog) => Promise<T | undefined>, check: (x: T) => T, ages: number[], live: boolean, used: { cached: boolean }): Promise<T | undefined> {
    const hit = live ? undefined : this.cached(key);
    const age = hit ? this.now() - hit.fetchedAt : Infinity;
    if (hit && age >= 0 && age < this.freshMs) {
      used.cached = true;
      return check(JSON.parse(hit.json) as T);
    }
    try {
      const value = await read(await this.catalog());
      if (value !== undefined) this.remember(key, value);
      return value;
    } catch (e) {
      if (hit && age >= 0 && age < this.staleMs) {
        ages.push(age);
        return check(JSON.parse(hit.json) as T);
      }
      throw e;
    }
  }

  /** The facts `cmd` needs (factsNeeded), read in parallel. */
  async gather(cmd: RemoteCommand, self: string, peer: string, presentedKey: string | undefined, o: { live?: boolean } = {}): Promise<GatheredFacts> {
    const need = factsNeeded(cmd);
    const ages: number[] = [];
    const used = { cached: false };
    // send, fence and promote decide on live rows only (a location just switched by a
    // failover must be seen at once); the data path may use the cache
    const live = o.live === true || !STALE_OK.has(cmd.op);
    const [peerRecord, rows] = await Promise.all([
      this.row<HostRecord>(`host:${peer}`, (c) => c.getHost(peer), (h) => checkHost(h, 'receiver cache'), ages, live, used),
      Promise.all(need.projects.map((id) => this.row<ProjectRecord>(`project:${id}`, (c) => c.getProject(id), (p) => checkProject(p, 'receiver cache'), ages, live, used))),
    ]).catch((e: Error) => {
      throw STALE_OK.has(cmd.op) ? e : new Error(`the catalog did not answer, and ${cmd.op} is never authorized from cached rows: ${e.message}`);
    });
    const staleMs = ages.length ? Math.max(...ages) : 0;
    const projects = new Map(rows.filter((p): p is ProjectRecord => p !== undefined).map((p) => [p.id, p]));
    const lockFor = need.projects.filter((id) => projects.has(id) && (need.locks === 'always' || (need.locks === 'if-not-primary' && projects.get(id)!.primary !== peer)));
    // lock rows: live, always (a catalog failure here refuses the command)
    const locks = new Map(await Promise.all(lockFor.map(async (id) => [id, await (await this.catalog()).getLock(projectLockName(id))] as const)));
    return { self, peer, peerRecord, presentedKey, projects, locks, now: this.now(), staleMs, cached: used.cached || staleMs > 0 };
  }

  /** The caller's projects (the unscoped list: repair-catalog): live from the catalog. */
  async projectsOf(peer: string): Promise<string[]> {
    return (await (await this.catalog()).listProjectsByPrimary(peer)).map((p) => p.id);
  }
}

// The per-host state cache (SQLite in stateDir): what this agent last saw of zfs, so that
// a cycle asks zfs only about what changed. It holds, per local dataset (primaries and
// replicas), its snapshots (name, guid, createtxg, creation) and when they were last
// listed; and per (project, target) what the target was last seen to hold. It is updated
// by every listing the agent makes and by its own snapshot and destroy operations. The
// cache is never the truth: the rolling audit re-lists every dataset within its period,
// and whatever it finds replaces what the cache said. Losing the file costs one audit
// pass (every dataset is listed again, oldest-audited first).
//
// In memory: only the newest snapshot per dataset and per (project, target), and the
// audit times (a few hundred bytes per project); full snapshot lists stay in SQLite and
// are read for the few datasets a cycle plans or prunes.
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

export interface Snap {
  snap: string;
  guid: string;
  createtxg: number;
  /** unix seconds */
  creation: number;
}

export interface RemoteView {
  /** the target's snapshots of the project, oldest first ([] = dataset there, no snapshot) */
  snapshots: Snap[];
  resumeToken?: string;
  /** ms: when a listing of the target showed this */
  listedAt: number;
}

interface RemoteSummary {
  newest: Snap | undefined;
  resumable: boolean;
  listedAt: number;
  /** a send to it failed since: ask the target again before the next plan (memory only) */
  stale?: boolean;
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS datasets (name TEXT PRIMARY KEY, listed_at INTEGER NOT NULL);
  CREATE TABLE IF NOT EXISTS snapshots (
    dataset TEXT NOT NULL, snap TEXT NOT NULL, guid TEXT NOT NULL, createtxg INTEGER NOT NULL, creation INTEGER NOT NULL,
    PRIMARY KEY (dataset, snap));
  CREATE TABLE IF NOT EXISTS remote (
    project TEXT NOT NULL, target TEXT NOT NULL, snapshots TEXT NOT NULL, resume_token TEXT, listed_at INTEGER NOT NULL,
    PRIMARY KEY (project, target));
  CREATE TABLE IF NOT EXISTS location (project TEXT PRIMARY KEY, token INTEGER NOT NULL);
`;

function byTxg(a: Snap, b: Snap): number {
  return a.createtxg - b.createtxg || a.creation - b.creation;
}

export class StateCache {
  private readonly db: Database.Database;
  private readonly newest = new Map<string, Snap | undefined>();
  private readonly listedAt = new Map<string, number>();
  private readonly remotes = new Map<string, RemoteSummary>();
  /** dataset -> its `snapshots_changed` when last listed (OpenZFS >= 2.2) */
  private readonly changedMarks = new Map<string, string>();
  /** project -> the catalog's location token when this host last read it as serving it */
  private readonly locations = new Map<string, number>();

  constructor(readonly path: string) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.exec(SCHEMA);
    const cols = (this.db.prepare('PRAGMA table_info(datasets)').all() as Array<{ name: string }>).map((c) => c.name);
    if (!cols.includes('snapshots_changed')) this.db.exec('ALTER TABLE datasets ADD COLUMN snapshots_changed TEXT');
    this.load();
  }

  private load(): void {
    for (const r of this.db.prepare('SELECT name, listed_at, snapshots_changed FROM datasets').all() as Array<{ name: string; listed_at: number; snapshots_changed: string | null }>) {
      this.listedAt.set(r.name, r.listed_at);
      this.newest.set(r.name, undefined);
      if (r.snapshots_changed !== null) this.changedMarks.set(r.name, r.snapshots_changed);
    }
    const newest = this.db.prepare('SELECT dataset, snap, guid, createtxg, creation FROM snapshots s WHERE createtxg = (SELECT MAX(createtxg) FROM snapshots WHERE dataset = s.dataset)').all() as Array<Snap & { dataset: string }>;
    for (const r of newest) this.newest.set(r.dataset, { snap: r.snap, guid: r.guid, createtxg: r.createtxg, creation: r.creation });
    for (const r of this.db.prepare('SELECT project, target, snapshots, resume_token, listed_at FROM remote').all() as Array<{ project: string; target: string; snapshots: string; resume_token: string | null; listed_at: number }>) {
      const snaps = JSON.parse(r.snapshots) as Snap[];
      this.remotes.set(`${r.project} ${r.target}`, { newest: snaps[snaps.length - 1], resumable: r.resume_token !== null, listedAt: r.listed_at });
    }
    for (const r of this.db.prepare('SELECT project, token FROM location').all() as Array<{ project: string; token: number }>) this.locations.set(r.project, r.token);
  }

  close(): void {
    this.db.close();
  }

  /** A consistent copy of the cache (SQLite's online backup), e.g. for a benchmark's setup cache. */
  async saveTo(path: string): Promise<void> {
    await this.db.backup(path);
  }

  // ---- local datasets ----

  /** whether a listing of this dataset was ever recorded */
  knows(dataset: string): boolean {
    return this.listedAt.has(dataset);
  }

  newestOf(dataset: string): Snap | undefined {
    return this.newest.get(dataset);
  }

  /** ms of the last listing of this dataset (0: never) */
  listedAtOf(dataset: string): number {
    return this.listedAt.get(dataset) ?? 0;
  }

  datasets(prefix: string): string[] {
    return [...this.listedAt.keys()].filter((d) => d.startsWith(prefix));
  }

  snapshots(dataset: string): Snap[] {
    return this.db.prepare('SELECT snap, guid, createtxg, creation FROM snapshots WHERE dataset = ? ORDER BY createtxg, creation').all(dataset) as Snap[];
  }

  /** the creation time already known for this snapshot (same guid), if any */
  creationOf(dataset: string, snap: string, guid: string): number | undefined {
    const r = this.db.prepare('SELECT guid, creation FROM snapshots WHERE dataset = ? AND snap = ?').get(dataset, snap) as { guid: string; creation: number } | undefined;
    return r && r.guid === guid ? r.creation : undefined;
  }

  /** A listing of these datasets replaces what was known of them (one transaction). */
  putListings(listings: Map<string, Snap[]>, at: number): void {
    const del = this.db.prepare('DELETE FROM snapshots WHERE dataset = ?');
    const ins = this.db.prepare('INSERT INTO snapshots (dataset, snap, guid, createtxg, creation) VALUES (?, ?, ?, ?, ?)');
    const ds = this.db.prepare('INSERT INTO datasets (name, listed_at) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET listed_at = excluded.listed_at');
    this.db.transaction(() => {
      for (const [name, snaps] of listings) {
        del.run(name);
        for (const s of snaps) ins.run(name, s.snap, s.guid, s.createtxg, s.creation);
        ds.run(name, at);
      }
    })();
    for (const [name, snaps] of listings) {
      const sorted = [...snaps].sort(byTxg);
      this.newest.set(name, sorted[sorted.length - 1]);
      this.listedAt.set(name, at);
    }
  }

  /** the dataset's `snapshots_changed` as of its last listing (undefined: unknown) */
  snapshotsChangedOf(dataset: string): string | undefined {
    return this.changedMarks.get(dataset);
  }

  /**
   * The audit found these datasets' snapshot lists unchanged (same `snapshots_changed`):
   * they count as listed now. Others get their new mark recorded (then a listing).
   */
  markAudited(marks: Map<string, string>, unchanged: readonly string[], at: number): void {
    const setMark = this.db.prepare('UPDATE datasets SET snapshots_changed = ? WHERE name = ?');
    const touch = this.db.prepare('UPDATE datasets SET listed_at = ? WHERE name = ?');
    this.db.transaction(() => {
      for (const [d, m] of marks) setMark.run(m, d);
      for (const d of unchanged) touch.run(at, d);
    })();
    for (const [d, m] of marks) this.changedMarks.set(d, m);
    for (const d of unchanged) this.listedAt.set(d, at);
  }

  /** Snapshots this agent destroyed (retention). */
  removeSnapshots(dataset: string, names: readonly string[]): void {
    const del = this.db.prepare('DELETE FROM snapshots WHERE dataset = ? AND snap = ?');
    this.db.transaction(() => {
      for (const n of names) del.run(dataset, n);
    })();
    if (names.includes(this.newest.get(dataset)?.snap ?? '\0')) {
      const rest = this.snapshots(dataset);
      this.newest.set(dataset, rest[rest.length - 1]);
    }
  }

  /** A dataset that is gone (renamed aside, or not found by a listing). */
  forget(dataset: string): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM snapshots WHERE dataset = ?').run(dataset);
      this.db.prepare('DELETE FROM datasets WHERE name = ?').run(dataset);
    })();
    this.newest.delete(dataset);
    this.listedAt.delete(dataset);
    this.changedMarks.delete(dataset);
  }

  // ---- what targets hold ----

  remote(project: string, target: string): RemoteView | undefined {
    const r = this.db.prepare('SELECT snapshots, resume_token, listed_at FROM remote WHERE project = ? AND target = ?').get(project, target) as
      | { snapshots: string; resume_token: string | null; listed_at: number }
      | undefined;
    if (!r) return undefined;
    return { snapshots: JSON.parse(r.snapshots) as Snap[], listedAt: r.listed_at, ...(r.resume_token !== null ? { resumeToken: r.resume_token } : {}) };
  }

  remoteSummary(project: string, target: string): RemoteSummary | undefined {
    return this.remotes.get(`${project} ${target}`);
  }

  /** What listings of targets showed (a project absent from a target: `null`). */
  putRemotes(rows: Array<{ project: string; target: string; view: { snapshots: Snap[]; resumeToken?: string } | null }>, at: number): void {
    const put = this.db.prepare(
      'INSERT INTO remote (project, target, snapshots, resume_token, listed_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(project, target) DO UPDATE SET snapshots = excluded.snapshots, resume_token = excluded.resume_token, listed_at = excluded.listed_at',
    );
    const del = this.db.prepare('DELETE FROM remote WHERE project = ? AND target = ?');
    this.db.transaction(() => {
      for (const r of rows) {
        if (r.view === null) del.run(r.project, r.target);
        else put.run(r.project, r.target, JSON.stringify([...r.view.snapshots].sort(byTxg)), r.view.resumeToken ?? null, at);
      }
    })();
    for (const r of rows) {
      const k = `${r.project} ${r.target}`;
      // absent on the target is known too: listedAt says when it was seen absent
      if (r.view === null) this.remotes.set(k, { newest: undefined, resumable: false, listedAt: at });
      else {
        const sorted = [...r.view.snapshots].sort(byTxg);
        this.remotes.set(k, { newest: sorted[sorted.length - 1], resumable: r.view.resumeToken !== undefined, listedAt: at });
      }
    }
  }

  /**
   * What is known of a target's copy may be wrong (a send to it failed): it is asked again
   * before the next plan, and meanwhile still says what the target last held (its lag).
   */
  markRemoteStale(project: string, target: string): void {
    const r = this.remotes.get(`${project} ${target}`);
    if (r) r.stale = true;
  }

  /**
   * This host reads these projects as served here at these location tokens. A different
   * token than last time means a project was moved or failed over since (and maybe back):
   * what its targets held then proves nothing now (a target may have served it and set its
   * copy aside), so that knowledge is dropped in the same transaction and each target is
   * listed again before the next plan. Returns the projects whose knowledge was dropped.
   * Nothing changed: no write.
   */
  seenAt(rows: ReadonlyArray<{ id: string; locationToken: number }>): string[] {
    const fresh = rows.filter((r) => this.locations.get(r.id) !== r.locationToken);
    if (!fresh.length) return [];
    const dropped = fresh.filter((r) => this.locations.has(r.id)).map((r) => r.id);
    const put = this.db.prepare('INSERT INTO location (project, token) VALUES (?, ?) ON CONFLICT(project) DO UPDATE SET token = excluded.token');
    const del = this.db.prepare('DELETE FROM remote WHERE project = ?');
    this.db.transaction(() => {
      for (const r of fresh) put.run(r.id, r.locationToken);
      for (const id of dropped) del.run(id);
    })();
    for (const r of fresh) this.locations.set(r.id, r.locationToken);
    const gone = new Set(dropped);
    for (const k of [...this.remotes.keys()]) if (gone.has(k.slice(0, k.indexOf(' ')))) this.remotes.delete(k);
    return dropped;
  }
}

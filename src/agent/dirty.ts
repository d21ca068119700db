// Dirty tracking where zfs has no `written` property (zfs-fuse): a chokidar watch on
// every MOUNTED project directory (unmounted datasets cannot change). Only projects this
// host is primary for are watched; watches follow mounts as listings reveal them.
import chokidar, { type FSWatcher } from 'chokidar';
import type { Logger } from '../util/log.js';

export class DirtyTracker {
  private watcher?: FSWatcher;
  private readonly watched = new Map<string, string>(); // project -> directory
  private readonly dirtySet = new Set<string>();

  constructor(private readonly log: Logger) {}

  isDirty(project: string): boolean {
    return this.dirtySet.has(project);
  }

  clear(project: string): void {
    this.dirtySet.delete(project);
  }

  markDirty(project: string): void {
    this.dirtySet.add(project);
  }

  get watchedCount(): number {
    return this.watched.size;
  }

  /** every project the watcher saw a change in since its last snapshot */
  dirtyIds(): string[] {
    return [...this.dirtySet];
  }

  /**
   * Watches exactly these mounted projects (id -> mountpoint), unwatches the rest.
   * Returns the ids newly watched: changes made to them before the watch started are not
   * seen, so the caller checks them once another way (a size check).
   */
  syncMounts(want: ReadonlyMap<string, string>): string[] {
    for (const [id, dir] of this.watched) {
      if (want.get(id) !== dir) {
        void this.watcher?.unwatch(dir);
        this.watched.delete(id);
      }
    }
    const added: string[] = [];
    for (const [id, dir] of want) {
      if (this.watched.has(id) || !dir.startsWith('/')) continue;
      if (!this.watcher) {
        this.watcher = chokidar.watch([], { ignoreInitial: true, persistent: true, followSymlinks: false });
        this.watcher.on('all', (_ev, path) => {
          for (const [pid, d] of this.watched) if (path === d || path.startsWith(`${d}/`)) this.dirtySet.add(pid);
        });
        this.watcher.on('error', (e) => this.log.warn({ err: String(e) }, 'file watch error (projects still snapshot when their size changes)'));
      }
      this.watcher.add(dir);
      this.watched.set(id, dir);
      added.push(id);
    }
    return added;
  }

  async close(): Promise<void> {
    await this.watcher?.close();
    this.watcher = undefined;
    this.watched.clear();
  }
}

// Dirty tracking where zfs has no `written` property (zfs-fuse): a chokidar watch on
// every MOUNTED project directory (unmounted datasets cannot change). Only projects this
// host is primary for are watched; watches follow mounts as listings reveal them.
import chokidar, { type FSWatcher } from 'chokidar';
import type { DatasetTree } from '../zfs/index.js';
import type { ProjectRecord } from '../catalog/types.js';
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

  /** Watches mounted projects, unwatches those no longer mounted or no longer ours. */
  sync(projects: ProjectRecord[], local: DatasetTree, root: string): void {
    const want = new Map<string, string>();
    for (const p of projects) {
      const ds = local.get(`${root}/${p.id}`);
      const mp = ds?.props.mountpoint;
      if (ds?.props.mounted === 'yes' && mp && mp.startsWith('/')) want.set(p.id, mp);
    }
    for (const [id, dir] of this.watched) {
      if (want.get(id) !== dir) {
        void this.watcher?.unwatch(dir);
        this.watched.delete(id);
      }
    }
    for (const [id, dir] of want) {
      if (this.watched.has(id)) continue;
      if (!this.watcher) {
        this.watcher = chokidar.watch([], { ignoreInitial: true, persistent: true, followSymlinks: false });
        this.watcher.on('all', (_ev, path) => {
          for (const [pid, d] of this.watched) if (path === d || path.startsWith(`${d}/`)) this.dirtySet.add(pid);
        });
        this.watcher.on('error', (e) => this.log.warn({ err: String(e) }, 'file watch error (projects still snapshot when their size changes)'));
      }
      this.watcher.add(dir);
      this.watched.set(id, dir);
    }
  }

  async close(): Promise<void> {
    await this.watcher?.close();
    this.watcher = undefined;
    this.watched.clear();
  }
}

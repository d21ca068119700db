// What is mounted on this host, from /proc/self/mountinfo (no zfs call).
import { readFileSync } from 'node:fs';

export interface MountEntry {
  /** the mount ID (field 1 of mountinfo) */
  id: number;
  mountpoint: string;
  /** per-mount options: rw/ro, ... */
  options: string[];
  fstype: string;
  source: string;
}

/** /proc/self/mountinfo: fstype and source of every mount (octal escapes decoded). */
export function readMounts(text?: string): MountEntry[] {
  let t = text;
  if (t === undefined) {
    try {
      t = readFileSync('/proc/self/mountinfo', 'utf8');
    } catch {
      return [];
    }
  }
  const unesc = (x: string) => x.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: MountEntry[] = [];
  for (const line of t.split('\n')) {
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (dash < 6 || f.length < dash + 3) continue;
    out.push({ id: Number(f[0]), mountpoint: unesc(f[4]!), options: f[5]!.split(','), fstype: f[dash + 1]!, source: unesc(f[dash + 2]!) });
  }
  return out;
}

/** A mount of a zfs dataset: OpenZFS (`zfs`) or zfs-fuse (`fuse.zfs`). */
function isZfs(m: MountEntry): boolean {
  return m.fstype === 'zfs' || m.fstype === 'fuse.zfs';
}

/** Where a zfs dataset is mounted on this host (the last mount of it wins), or undefined. */
export function mountpointOf(dataset: string, mounts: MountEntry[] = readMounts()): string | undefined {
  let at: string | undefined;
  for (const m of mounts) if (isZfs(m) && m.source === dataset) at = m.mountpoint;
  return at;
}

/**
 * The projects mounted on this host: dataset -> mountpoint, for the zfs datasets directly
 * under `projectsRoot` whose last component `isProject` accepts (one read of mountinfo).
 */
export function mountedProjects(projectsRoot: string, isProject: (id: string) => boolean, mounts: MountEntry[] = readMounts()): Map<string, string> {
  const root = `${projectsRoot}/`;
  const out = new Map<string, string>();
  for (const m of mounts) if (isZfs(m) && m.source.startsWith(root) && isProject(m.source.slice(root.length))) out.set(m.source, m.mountpoint);
  return out;
}

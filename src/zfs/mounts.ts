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

/** Where a zfs dataset is mounted on this host (the last mount of it wins), or undefined. */
export function mountpointOf(dataset: string, mounts: MountEntry[] = readMounts()): string | undefined {
  let at: string | undefined;
  for (const m of mounts) if ((m.fstype === 'zfs' || m.fstype === 'fuse.zfs') && m.source === dataset) at = m.mountpoint;
  return at;
}

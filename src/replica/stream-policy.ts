// What a replication stream may bring to a replica: data, never behaviour. Pure rules
// for the receiver (receiver.ts): which streams are refused before any zfs command,
// which properties are overridden on receive, and which are put back afterwards where
// zfs cannot override them (zfs-fuse) and at promote.
import type { StreamHeader } from './stream-header.js';

/**
 * Properties that change what the receiving host does (mounts, shares, setuid and
 * device files, executables, the .zfs directory, space reserved out of the pool, how
 * volumes appear, zones, dedup tables and special-vdev placement, durability): a
 * stream's values never take effect on a replica, nor on the primary it is promoted to.
 * Quota, refquota, compression, recordsize, atime, acl/xattr modes and user properties
 * follow the source (they describe the project's data, bounded by its quota).
 */
export const DENIED_PROPERTIES = [
  'mountpoint',
  'canmount',
  'sharenfs',
  'sharesmb',
  'setuid',
  'devices',
  'exec',
  'snapdir',
  'reservation',
  'refreservation',
  'volmode',
  'zoned',
  'nbmand',
  'overlay',
  'dedup',
  'special_small_blocks',
  'sync',
] as const;

const DRR_FLAG_CLONE = 1;

/** Without recv -o/-x, zfs acts on these as the receive ends (zfs-fuse mounts and shares). */
const ACTED_ON_DURING_RECEIVE = ['mountpoint', 'sharenfs', 'sharesmb'] as const;

/** Forced on every replica (recv -o where zfs has it, else set after the receive). */
export const REPLICA_OVERRIDES: Readonly<Record<string, string>> = { readonly: 'on', canmount: 'noauto' };

/** Denied properties of volumes only: volumes are refused before zfs runs (checkStream). */
export const VOLUME_ONLY: ReadonlySet<string> = new Set(['volmode']);

/**
 * recv -x: the denied properties that are not forced with -o (zfs takes one or the
 * other), less the volume-only ones (zfs refuses `-x volmode` on a filesystem stream
 * that is not recursive, e.g. a resumed one).
 */
export const RECV_EXCLUDE: readonly string[] = DENIED_PROPERTIES.filter((p) => !(p in REPLICA_OVERRIDES) && !VOLUME_ONLY.has(p));

/** Properties that do not inherit: a stream's value is replaced by this one instead. */
const NOT_INHERITABLE: Readonly<Record<string, string>> = { reservation: 'none', refreservation: 'none', canmount: 'noauto' };

/** The denied properties zfs-fuse (pool v23) knows; asking it for the others fails. */
const ZFS_FUSE_KNOWS = new Set(['mountpoint', 'canmount', 'sharenfs', 'sharesmb', 'setuid', 'devices', 'exec', 'snapdir', 'reservation', 'refreservation', 'zoned', 'nbmand', 'dedup']);

export function deniedKnownTo(implementation: string): string[] {
  return implementation === 'zfs-fuse' ? DENIED_PROPERTIES.filter((p) => ZFS_FUSE_KNOWS.has(p)) : [...DENIED_PROPERTIES];
}

/**
 * Why a stream must be refused before zfs sees it (undefined: it may be received):
 * anything but one filesystem, the project's own; and, where zfs cannot override a
 * property on receive, a stream that sets a mountpoint or a share (acted on at once).
 */
export function checkStream(h: StreamHeader, project: string, o: { canOverride: boolean }): string | undefined {
  // 'none': an incremental -R stream with no substream (nothing changed) brings no data
  if (h.topType !== 'filesystem' && h.topType !== 'none') return `the stream carries a ${h.topType}, not a filesystem: only project filesystems are replicated`;
  if ((h.drrFlags & DRR_FLAG_CLONE) !== 0 || h.datasets.some((d) => d.clone)) return 'the stream is of a clone (it would be received against an origin on this host): clones are not replicated';
  if (h.datasets.length !== 1) {
    return `the stream carries ${h.datasets.length} datasets (${h.datasets.map((d) => d.name).slice(0, 5).join(', ')}${h.datasets.length > 5 ? ', ...' : ''}): child datasets are not replicated`;
  }
  const name = h.datasets[0]!.name;
  const last = name.slice(name.lastIndexOf('/') + 1);
  if (last !== project) return `the stream is of dataset ${JSON.stringify(name.slice(0, 200))}, not of project ${project}`;
  const first = h.toname.split('@')[0];
  if (h.topType !== 'none' && first !== name) return `the stream declares dataset ${JSON.stringify(name.slice(0, 200))} but its first substream is of ${JSON.stringify((first ?? '').slice(0, 200))}`;
  if (!o.canOverride) {
    // zfs-fuse acts on these while it receives (mounts, shares): reset afterwards is too late
    for (const p of ACTED_ON_DURING_RECEIVE) {
      const val = h.datasets[0]!.props[p];
      if (val !== undefined && !(p !== 'mountpoint' && val === 'off')) {
        return `the stream sets ${p}=${JSON.stringify(String(val).slice(0, 200))}, which this zfs cannot override on receive: refused before anything could ${p === 'mountpoint' ? 'mount' : 'be shared'}`;
      }
    }
  }
  return undefined;
}

export interface PropertySource {
  value: string;
  /** zfs get's SOURCE column: local, received, default, inherited from X, - */
  source: string;
}

/**
 * What to put back on a dataset whose denied properties may hold a stream's values:
 * every one set locally or received is inherited (or, if it does not inherit, set to
 * its safe value). A replica keeps readonly=on; a primary (promote) inherits readonly.
 */
export function propertiesToReset(props: ReadonlyMap<string, PropertySource>, o: { primary?: boolean } = {}): { inherit: string[]; set: Record<string, string> } {
  const inherit: string[] = [];
  const set: Record<string, string> = {};
  for (const [name, { value, source }] of props) {
    const fromStream = source === 'local' || source === 'received';
    if (name === 'readonly') {
      if (o.primary) {
        if (fromStream) inherit.push(name);
      } else if (value !== 'on') set.readonly = 'on';
      continue;
    }
    const safe = NOT_INHERITABLE[name];
    if (safe !== undefined) {
      if (value !== safe && (fromStream || name === 'canmount')) set[name] = safe;
      continue;
    }
    if (fromStream) inherit.push(name);
  }
  return { inherit, set };
}

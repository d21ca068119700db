// What the local zfs implementation can do. zfs-fuse (pool v23, user space) and
// OpenZFS 2.x differ a lot; the adapter asks once and takes the best path each offers.

export interface Capabilities {
  implementation: 'openzfs' | 'zfs-fuse' | 'unknown';
  /** e.g. "zfs-2.1.11-1" or "zfs-fuse (pool v23)" */
  version: string;
  /** `zfs list -p` (exact numbers from list). Without it, exact values come from `zfs get -p`. */
  listParsable: boolean;
  /** the `written` property (bytes written since the previous snapshot) */
  written: boolean;
  /**
   * the `snapshots_changed` property (OpenZFS >= 2.2): when a dataset's snapshot list last
   * changed, readable without listing the snapshots (the audit lists only those that moved)
   */
  snapshotsChanged: boolean;
  /** `zfs recv -u` (do not mount the received file system) */
  recvNoMount: boolean;
  /** `zfs recv -s` (keep a partial receive and a resume token on interruption) */
  recvResumable: boolean;
  /** `zfs send -t TOKEN` */
  sendResume: boolean;
  /** `zfs recv -o/-x` property overrides */
  recvPropertyOverride: boolean;
  /** `zfs send -c` compressed, `-L` large blocks, `-e` embedded, `-w` raw */
  sendCompressed: boolean;
  sendLargeBlocks: boolean;
  sendEmbedded: boolean;
  sendRaw: boolean;
  /** `zfs bookmark` */
  bookmarks: boolean;
  /** several snapshots in one `zfs snapshot a@x b@x` call (atomic) */
  batchSnapshot: boolean;
  /** several property=value pairs in one `zfs set` */
  multiSet: boolean;
  /** `zfs destroy ds@a,b,c` */
  destroySnapshotList: boolean;
  /** `zfs holds` (listing tags) works */
  holdsList: boolean;
  /** `zpool import -N` (import without mounting) */
  importNoMount: boolean;
}

interface ProbeInput {
  versionOut: string | null;
  usage: string;
  getUsage: string;
  zpoolUsage: string;
}

function flagsOf(usage: string, verb: string): Set<string> {
  const flags = new Set<string>();
  const lines = usage.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (!new RegExp(`^\\s*${verb}\\b`).test(line)) continue;
    // a usage entry may continue on indented lines
    let text = line;
    for (let j = i + 1; j < lines.length && /^\s{5,}\S/.test(lines[j]!) && !/^\s*[a-z]+ \[/.test(lines[j]!.trim() + ' ['); j++) text += ' ' + lines[j];
    for (const m of text.matchAll(/\[-([A-Za-z]+)\]/g)) for (const c of m[1]!) flags.add(c);
    for (const m of text.matchAll(/(?:^|\s|\[)-([A-Za-z])\b/g)) flags.add(m[1]!);
  }
  return flags;
}

/** Pure: derives capabilities from the texts the probe collected (unit-testable). */
export function deriveCapabilities(p: ProbeInput): Capabilities {
  const openzfs = p.versionOut !== null && /zfs-\d/.test(p.versionOut);
  const fuse = !openzfs && /receive \[-vnF\]/.test(p.usage.replace(/\s+/g, ' '));
  const send = flagsOf(p.usage, 'send');
  const recv = flagsOf(p.usage, 'receive');
  const list = flagsOf(p.usage, 'list');
  const importFlags = flagsOf(p.zpoolUsage, 'import');
  const version = openzfs ? p.versionOut!.split('\n')[0]!.trim() : fuse ? 'zfs-fuse (pool v23)' : 'unknown';
  return {
    implementation: openzfs ? 'openzfs' : fuse ? 'zfs-fuse' : 'unknown',
    version,
    listParsable: list.has('p'),
    written: /^\s*written\s/m.test(p.getUsage),
    snapshotsChanged: /^\s*snapshots_changed\s/m.test(p.getUsage),
    recvNoMount: recv.has('u'),
    recvResumable: recv.has('s'),
    sendResume: /send .*-t\s*<?receive_resume_token/.test(p.usage.replace(/\s+/g, ' ')),
    recvPropertyOverride: recv.has('o') || recv.has('x'),
    sendCompressed: send.has('c'),
    sendLargeBlocks: send.has('L'),
    sendEmbedded: send.has('e'),
    sendRaw: send.has('w'),
    bookmarks: /^\s*bookmark\s/m.test(p.usage),
    batchSnapshot: openzfs,
    multiSet: openzfs,
    destroySnapshotList: openzfs,
    holdsList: openzfs,
    importNoMount: importFlags.has('N'),
  };
}

/** The capability matrix as printable rows (for `storagectl` and the closing note). */
export function capabilityRows(c: Capabilities): Array<[string, string]> {
  return Object.entries(c).map(([k, v]) => [k, typeof v === 'boolean' ? (v ? 'yes' : 'no') : String(v)]);
}

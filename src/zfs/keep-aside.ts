// A copy this host must not serve, set aside rather than destroyed: a final snapshot,
// renamed to <pool>/conflicts/<uuid>-<time>, readonly, never mounted automatically
// (`storagectl conflicts` lists what is there). Used by the agent's demote and by the
// receiver's promote (a stale, unmounted copy under projects/ where a replica is promoted).
import type { Zfs } from './adapter.js';
import { autoSnapshotName } from '../util/validate.js';

export async function keepAside(zfs: Zfs, dataset: string, conflictsRoot: string, project: string, at: Date): Promise<string> {
  const stamp = autoSnapshotName(at).replace(/:/g, '');
  await zfs.snapshot([`${dataset}@demoted-${stamp}`]);
  await zfs.ensureDataset(conflictsRoot, { canmount: 'off', mountpoint: 'none' });
  const aside = `${conflictsRoot}/${project}-${stamp}`;
  await zfs.rename(dataset, aside);
  await zfs.set(aside, { readonly: 'on', canmount: 'noauto' });
  return aside;
}

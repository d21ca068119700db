// A copy this host must not serve, set aside rather than destroyed: a final snapshot,
// renamed to <pool>/conflicts/<uuid>-<time>[-<label>], readonly, never mounted
// automatically (`storagectl conflicts` lists what is there). Used by the agent's demote,
// by the receiver's promote (a stale, unmounted copy under projects/ where a replica is
// promoted) and by its keep-aside (a replica that diverged from its primary: label
// `replica`).
import type { Zfs } from './adapter.js';
import { autoSnapshotName } from '../util/validate.js';

export async function keepAside(zfs: Zfs, dataset: string, conflictsRoot: string, project: string, at: Date, label?: 'replica'): Promise<string> {
  const stamp = autoSnapshotName(at).replace(/:/g, '');
  await zfs.snapshot([`${dataset}@demoted-${stamp}`]);
  await zfs.ensureDataset(conflictsRoot, { canmount: 'off', mountpoint: 'none' });
  const aside = `${conflictsRoot}/${project}-${stamp}${label ? `-${label}` : ''}`;
  await zfs.rename(dataset, aside);
  await zfs.set(aside, { readonly: 'on', canmount: 'noauto' });
  return aside;
}

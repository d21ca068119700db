// `storagectl repair-catalog`: rebuilds the replica rows of the projects this host serves
// from what the other hosts really hold. A receiver answers a peer only about the peer's
// own projects (trust-model.md), so each host repairs its own: run it on every host (or
// let the agents' rolling audit do it). Each host is asked with the same scoped
// `storage-v1 list` the agents use; for every replica found, the newest snapshot (by
// createtxg) becomes the replica row (guid, name, creation). Rows are upserted as a
// confirmation at the time of the listing (the latest wins), so running it while agents
// run is safe; a replica found on a host missing
// from the project's targets is added to them. Nothing on any host is changed.
import type { Catalog, HostRecord } from './types.js';
import type { SshPool } from '../replica/transport.js';
import { fetchListing } from '../replica/listing.js';

export interface RepairReport {
  hosts: Array<{ host: string; datasets: number; error?: string }>;
  restored: Array<{ project: string; host: string; snapshot: string; guid: string }>;
  updated: Array<{ project: string; host: string; snapshot: string; guid: string }>;
  targetsAdded: Array<{ project: string; host: string }>;
}

export async function repairCatalog(catalog: Catalog, ssh: SshPool, self: string, opts: { host?: string; now?: number } = {}): Promise<RepairReport> {
  const report: RepairReport = { hosts: [], restored: [], updated: [], targetsAdded: [] };
  const projects = new Map((await catalog.listProjectsByPrimary(self)).map((p) => [p.id, p]));
  let hosts: HostRecord[] = await catalog.listHosts();
  if (opts.host) hosts = hosts.filter((h) => h.id === opts.host);
  if (opts.host && hosts.length === 0) throw new Error(`repair-catalog: host ${opts.host} is not in the catalog`);
  const now = opts.now ?? Date.now();
  for (const h of hosts.filter((x) => x.id !== self)) {
    let listing;
    try {
      listing = await fetchListing(ssh, h, { projects: [...projects.keys()] });
    } catch (e) {
      report.hosts.push({ host: h.id, datasets: 0, error: (e as Error).message });
      continue;
    }
    report.hosts.push({ host: h.id, datasets: Object.keys(listing.datasets).length });
    const existing = new Map((await catalog.listReplicasByHost(h.id)).map((r) => [r.project, r]));
    for (const [id, ds] of Object.entries(listing.datasets)) {
      const p = projects.get(id);
      if (!p || p.primary === h.id || ds.snapshots.length === 0) continue;
      const newest = ds.snapshots.reduce((a, s) => (s.createtxg > a.createtxg ? s : a));
      const before = existing.get(id);
      if (before && before.guid === newest.guid) continue;
      await catalog.upsertReplica({ project: id, host: h.id, snapshot: newest.snap, guid: newest.guid, snapshotCreation: newest.creation, confirmedAt: now });
      (before ? report.updated : report.restored).push({ project: id, host: h.id, snapshot: newest.snap, guid: newest.guid });
      if (!p.targets.includes(h.id)) {
        p.targets = [...p.targets, h.id];
        await catalog.setTargets(id, p.targets);
        report.targetsAdded.push({ project: id, host: h.id });
      }
    }
  }
  await catalog.addEvent({ project: null, host: self, kind: 'repair-catalog', detail: `restored ${report.restored.length}, updated ${report.updated.length}, targets added ${report.targetsAdded.length}` });
  return report;
}

// Changing a project's target list from what is stored now: read, change, compare-and-set
// on the list's version (setTargets ifVersion), again if someone wrote in between. So an
// operation never overwrites a newer list with one computed from an older read, and a
// journaled write (degraded catalog) replays with the version it was made from.
import { CatalogError, type Catalog } from './types.js';

export async function updateTargets(catalog: Catalog, project: string, change: (current: string[]) => string[]): Promise<string[]> {
  for (let attempt = 0; attempt < 8; attempt++) {
    const p = await catalog.getProject(project);
    if (!p) throw new CatalogError(`update targets: project ${project} does not exist`);
    const next = change([...p.targets]);
    if (next.length === p.targets.length && next.every((t, i) => t === p.targets[i])) return next;
    if (await catalog.setTargets(project, next, { ifVersion: p.targetsVersion })) return next;
  }
  throw new CatalogError(`update targets: the targets of ${project} kept changing concurrently (8 attempts)`);
}

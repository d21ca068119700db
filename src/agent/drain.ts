// storagectl drain <host>: empty a host for maintenance. The host is marked draining
// (placement puts no new project or replica there and re-places the replicas it holds),
// then every project it serves is moved away, `concurrency` at a time, each a move
// request performed by the host's agent (agent/move-runner.ts), destinations chosen as
// `storagectl move` chooses them with the moves already planned counted as load.
//
// Everything lives in the catalog: the mark, each request on its project's row. Killed
// and re-run, a drain finds the moves still in flight (it follows them) and the projects
// still served there (it requests them): it continues where it stopped.
import type { Catalog, ProjectRecord } from '../catalog/types.js';
import type { Config } from './config.js';
import { MoveRequestError, moveOnRow, observeMove, requestMove, type MoveOutcome, type Watch } from './move-request.js';
import type { OperationProgress } from '../catalog/types.js';

export interface DrainOptions {
  host: string;
  concurrency: number;
  datacenters?: readonly string[];
  owner: string;
  requestedBy: string;
  pickupTimeoutMs: number;
  pollMs?: number;
  onEvent?: (e: DrainEvent) => void;
}

export type DrainEvent =
  | { kind: 'requested'; project: string; to: string; id: string; adopted: boolean }
  | { kind: 'progress'; project: string; progress: OperationProgress }
  | { kind: 'finished'; item: DrainItem; done: number; total: number };

export interface DrainItem {
  project: string;
  /** moved: served elsewhere now; failed/cancelled: still served by the drained host; skipped: not movable now */
  outcome: 'moved' | 'failed' | 'cancelled' | 'skipped';
  to: string | null;
  id: string | null;
  detail: string;
}

export interface DrainSummary {
  host: string;
  items: DrainItem[];
  /** projects still served by the host / listing it as a replica target, after the moves */
  primariesLeft: number;
  replicasLeft: number;
  empty: boolean;
}

/** What a drain does with each project the host serves (pure). */
export function classify(p: ProjectRecord, host: string): { kind: 'follow'; id: string; to: string } | { kind: 'request' } | { kind: 'skip'; why: string } {
  const op = moveOnRow(p);
  if (op?.id && op.from === host) return { kind: 'follow', id: op.id, to: op.to };
  if (p.operation) return { kind: 'skip', why: `a ${p.operation.kind} is in progress (${p.operation.step}, to ${p.operation.to})` };
  if (p.state !== 'active') return { kind: 'skip', why: `it is ${p.state}` };
  return { kind: 'request' };
}

export async function drainHost(catalog: Catalog, config: Config, o: DrainOptions): Promise<DrainSummary> {
  const h = await catalog.getHost(o.host);
  if (!h) throw new MoveRequestError(`host ${o.host} is not in the catalog (see storagectl hosts)`);
  if (!h.draining) await catalog.setDraining(o.host, true);
  // the projects it serves, and moves from it already switched (their row names the target)
  const served = await catalog.listProjectsByPrimary(o.host);
  const switched: ProjectRecord[] = [];
  for (const id of await catalog.listRequests(o.host)) {
    if (served.some((p) => p.id === id)) continue;
    const p = await catalog.getProject(id);
    const op = p ? moveOnRow(p) : undefined;
    if (p && op?.id && op.from === o.host) switched.push(p);
  }
  const all = [...served, ...switched];
  const items: DrainItem[] = [];
  const total = all.length;
  const finish = (item: DrainItem) => {
    items.push(item);
    o.onEvent?.({ kind: 'finished', item, done: items.length, total });
  };
  const pending: ProjectRecord[] = [];
  const inflight = new Map<string, Watch & { to: string }>();
  const planned = new Map<string, number>();
  for (const p of all) {
    const c = classify(p, o.host);
    if (c.kind === 'skip') finish({ project: p.id, outcome: 'skipped', to: null, id: null, detail: c.why });
    else if (c.kind === 'follow') {
      inflight.set(p.id, { project: p.id, id: c.id, since: Date.now(), last: '', to: c.to });
      planned.set(c.to, (planned.get(c.to) ?? 0) + 1);
      o.onEvent?.({ kind: 'requested', project: p.id, to: c.to, id: c.id, adopted: true });
    } else pending.push(p);
  }
  const follow = { pickupTimeoutMs: o.pickupTimeoutMs, owner: o.owner };
  while (pending.length || inflight.size) {
    while (pending.length && inflight.size < o.concurrency) {
      const p = pending.shift()!;
      try {
        const r = await requestMove(catalog, config, { project: p.id, requestedBy: o.requestedBy, owner: o.owner, planned, ...(o.datacenters ? { datacenters: o.datacenters } : {}) });
        inflight.set(p.id, { project: p.id, id: r.id, since: Date.now(), last: '', to: r.to });
        planned.set(r.to, (planned.get(r.to) ?? 0) + 1);
        o.onEvent?.({ kind: 'requested', project: p.id, to: r.to, id: r.id, adopted: r.adopted });
      } catch (e) {
        if (!(e instanceof MoveRequestError)) throw e;
        finish({ project: p.id, outcome: 'failed', to: null, id: null, detail: e.message });
      }
    }
    for (const [project, w] of inflight) {
      const out = await observeMove(catalog, w, { ...follow, onProgress: (progress) => o.onEvent?.({ kind: 'progress', project, progress }) });
      if (!out) continue;
      inflight.delete(project);
      finish(itemOf(project, w, out));
    }
    if (inflight.size) await new Promise((res) => setTimeout(res, o.pollMs ?? 500));
  }
  const left = await leftOn(catalog, o.host);
  return { host: o.host, items, ...left, empty: left.primariesLeft === 0 && left.replicasLeft === 0 };
}

function itemOf(project: string, w: Watch & { to: string }, out: MoveOutcome): DrainItem {
  if (out.phase === 'done') return { project, outcome: 'moved', to: w.to, id: w.id, detail: out.progress.step };
  if ('progress' in out) return { project, outcome: out.phase === 'cancelled' ? 'cancelled' : 'failed', to: w.to, id: w.id, detail: out.progress.error ?? out.progress.step };
  return { project, outcome: 'failed', to: w.to, id: w.id, detail: out.detail };
}

/** Projects a host still serves, and still lists as a replica target (placement re-places those). */
export async function leftOn(catalog: Catalog, host: string): Promise<{ primariesLeft: number; replicasLeft: number }> {
  const all = await catalog.listProjects();
  return { primariesLeft: all.filter((p) => p.primary === host).length, replicasLeft: all.filter((p) => p.targets.includes(host)).length };
}

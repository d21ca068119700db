// The requester's side of a move performed by the primary's agent (agent/move-runner.ts):
// `storagectl move` typed on any host, `storagectl drain`, `move --status`, `cancel`.
//
//   request: under the project lease, the index entry under the primary, then the row's
//            operation (kind move, step `requested`, an id, the options) and a first
//            progress report. The primary's generation moves; its agent takes it up.
//   follow:  reads the progress row (and the project row) until the outcome of that id.
//   cancel:  a request not taken up is withdrawn under the lease (the row is as before);
//            one running is asked to stop (requestCancel), which the performer honours
//            up to the switch; after the switch it is too late and the move finishes.
import { randomUUID } from 'node:crypto';
import { CatalogError, type Catalog, type HostRecord, type OperationProgress, type ProjectOperation, type ProjectRecord } from '../catalog/types.js';
import { LockedError, withProjectLease } from '../lock/lease.js';
import { chooseDestination, type DestinationChoice } from './move-destination.js';
import { deadAfterMs, liveAt, type Config } from './config.js';

/** A move that cannot be requested (exit 1): the message says why and what to do instead. */
export class MoveRequestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MoveRequestError';
  }
}

export interface MoveRequestInput {
  project: string;
  /** the destination; absent: chosen (chooseDestination) */
  to?: string;
  dropSource?: boolean;
  forceUnmount?: boolean;
  presyncThresholdBytes?: number;
  /** who asks: `storagectl@<host>`, `drain@<host>` */
  requestedBy: string;
  /** lease owner for the few ms the request is written */
  owner: string;
  /** drain: only these datacenters, and the moves it planned already (counted as load) */
  datacenters?: readonly string[];
  planned?: ReadonlyMap<string, number>;
}

export interface MoveRequested {
  project: string;
  id: string;
  from: string;
  to: string;
  /** how the destination was chosen (null: named by the admin) */
  choice: DestinationChoice | null;
  /** an earlier request for the same project, followed instead of writing a new one */
  adopted: boolean;
  requestedAt: number;
}

/** The move request on a project's row, if any (the step says how far it got). */
export function moveOnRow(p: ProjectRecord): ProjectOperation | undefined {
  return p.operation?.kind === 'move' ? p.operation : undefined;
}

export async function requestMove(catalog: Catalog, config: Config, r: MoveRequestInput): Promise<MoveRequested> {
  const p = await catalog.getProject(r.project);
  if (!p) throw new MoveRequestError(`project ${r.project} is not in the catalog`);
  const existing = moveOnRow(p);
  if (existing?.id && (r.to === undefined || r.to === existing.to)) {
    // typed twice, or a drain re-run: follow the request already there
    return { project: p.id, id: existing.id, from: existing.from ?? '?', to: existing.to, choice: null, adopted: true, requestedAt: existing.startedAt };
  }
  const hosts = await catalog.listHosts();
  const primary = await checkMovable(config, p, hosts);
  let choice: DestinationChoice | null = null;
  let to = r.to;
  if (to === undefined) {
    choice = await destinationOf(catalog, config, p, primary, hosts, r);
    if (choice.host === null) throw new MoveRequestError(`move ${p.id}: ${choice.why}`);
    to = choice.host;
  } else {
    const dest = hosts.find((h) => h.id === to);
    if (!dest) throw new MoveRequestError(`host ${to} is not in the catalog (see storagectl hosts)`);
    if (to === primary.id) throw new MoveRequestError(`${p.id} is already served by ${to}`);
    if (!liveAt(config, Date.now())(dest)) throw new MoveRequestError(`host ${to} has no recent heartbeat (dead for the catalog): not moving there`);
    if (dest.draining) throw new MoveRequestError(`host ${to} is draining (storagectl undrain ${to} first)`);
  }
  const id = randomUUID();
  const dest = to;
  try {
    return await withProjectLease(catalog, p.id, r.owner, 30_000, async (lease) => {
      const now = await catalog.getProject(p.id);
      if (!now) throw new MoveRequestError(`project ${p.id} left the catalog`);
      if (now.operation) throw new MoveRequestError(`project ${p.id} has a ${now.operation.kind} in progress (${now.operation.step}, to ${now.operation.to}): follow it or cancel it first`);
      if (now.primary !== primary.id || now.state !== 'active') throw new MoveRequestError(`project ${p.id} changed meanwhile (now ${now.state} on ${now.primary ?? 'no host'}): run the command again`);
      const requestedAt = Date.now();
      const op: ProjectOperation = {
        kind: 'move', from: primary.id, to: dest, snapshot: null, guid: null, creation: null, token: lease.token, startedAt: requestedAt, step: 'requested',
        id, requestedBy: r.requestedBy,
        ...(r.dropSource !== undefined ? { dropSource: r.dropSource } : {}),
        ...(r.forceUnmount !== undefined ? { forceUnmount: r.forceUnmount } : {}),
        ...(r.presyncThresholdBytes !== undefined ? { presyncThresholdBytes: r.presyncThresholdBytes } : {}),
      };
      // the index first, the row second: an agent that sees the row also finds the entry
      await catalog.putRequest(primary.id, p.id);
      await lease.check('record the move request');
      await catalog.setLocation(p.id, primary.id, 'active', lease.token, op);
      await catalog.putProgress(p.id, { id, kind: 'move', from: primary.id, to: dest, phase: 'requested', step: `requested by ${r.requestedBy}`, bytes: 0, estimate: null, elapsedMs: 0, updatedAt: requestedAt });
      await catalog.addEvent({ project: p.id, host: primary.id, kind: 'move-requested', detail: JSON.stringify({ id, to: dest, by: r.requestedBy }) }).catch(() => undefined);
      return { project: p.id, id, from: primary.id, to: dest, choice, adopted: false, requestedAt };
    });
  } catch (e) {
    if (e instanceof LockedError) throw new MoveRequestError(`${e.message}: an operation holds it; try again when it is done`);
    throw e;
  }
}

/** Where a move of `p` goes when no host is named: chooseDestination over its confirmed replicas. */
export async function destinationOf(catalog: Catalog, config: Config, p: ProjectRecord, primary: HostRecord, hosts: readonly HostRecord[], o: Pick<MoveRequestInput, 'datacenters' | 'planned'> = {}): Promise<DestinationChoice> {
  const replicas = (await catalog.listReplicas(p.id)).filter((x) => p.targets.includes(x.host));
  return chooseDestination({ primary, hosts, isLive: liveAt(config, Date.now()), replicas, ...(o.datacenters ? { datacenters: o.datacenters } : {}), ...(o.planned ? { planned: o.planned } : {}) });
}

/** The primary must be live (its agent performs the move) and the project plainly served. */
async function checkMovable(config: Config, p: ProjectRecord, hosts: readonly HostRecord[]): Promise<HostRecord> {
  if (p.operation) throw new MoveRequestError(`project ${p.id} has a ${p.operation.kind} in progress (${p.operation.step}, to ${p.operation.to}): follow it or cancel it first`);
  if (p.state !== 'active') throw new MoveRequestError(`project ${p.id} is ${p.state}: nothing to move until it is active again`);
  const primary = hosts.find((h) => h.id === p.primary);
  if (!primary) throw new MoveRequestError(`project ${p.id} is served by ${p.primary ?? 'no host'}, which is not in the catalog: nothing to move from`);
  if (!liveAt(config, Date.now())(primary)) {
    const age = primary.heartbeatAt === null ? 'never' : `${Math.round((Date.now() - primary.heartbeatAt) / 1000)} s ago`;
    throw new MoveRequestError(
      `the primary ${primary.id} of ${p.id} is dead for the catalog (last heartbeat ${age}, dead after ${Math.round(deadAfterMs(config) / 1000)} s): ` +
        `a move needs its agent. Fail over instead: storagectl failover ${p.id}`,
    );
  }
  return primary;
}

export type MoveOutcome =
  | { phase: 'done'; progress: OperationProgress }
  | { phase: 'failed' | 'cancelled'; progress: OperationProgress }
  | { phase: 'superseded'; detail: string }
  | { phase: 'not-taken-up'; detail: string };

export interface FollowOptions {
  pollMs?: number;
  /** a request still `requested` after this long is withdrawn (its agent is not running) */
  pickupTimeoutMs: number;
  owner: string;
  onProgress?: (p: OperationProgress) => void;
  /** a catalog read failed (the follower keeps asking, for up to catalogPatienceMs) */
  onCatalogError?: (e: Error) => void;
  catalogPatienceMs?: number;
  sleep?: (ms: number) => Promise<void>;
}

/** Where one follower is: when it began, and the last report it passed on. */
export interface Watch {
  project: string;
  id: string;
  since: number;
  last: string;
}

/**
 * One look at request `watch.id`: its outcome, or null while it runs (reports passed to
 * onProgress when they changed). A request still `requested` after pickupTimeoutMs is
 * withdrawn (the primary's agent is not running).
 */
export async function observeMove(catalog: Catalog, w: Watch, o: Omit<FollowOptions, 'sleep'>): Promise<MoveOutcome | null> {
  const { progress } = await catalog.getProgress(w.project);
  const mine = progress?.id === w.id ? progress : null;
  if (mine) {
    const key = `${mine.phase} ${mine.step} ${mine.bytes}`;
    if (key !== w.last) o.onProgress?.(mine);
    w.last = key;
    if (mine.phase === 'done' || mine.phase === 'failed' || mine.phase === 'cancelled') return { phase: mine.phase, progress: mine };
  }
  const p = await catalog.getProject(w.project);
  const op = p ? moveOnRow(p) : undefined;
  if (!p || op?.id !== w.id) {
    // the row no longer carries it: its outcome may be in flight (the report is written
    // after the row), else something else replaced it (a failover of a dead primary)
    for (let i = 0; i < 20; i++) {
      await new Promise((res) => setTimeout(res, 250));
      const again = (await catalog.getProgress(w.project)).progress;
      if (again?.id === w.id && (again.phase === 'done' || again.phase === 'failed' || again.phase === 'cancelled')) return { phase: again.phase, progress: again };
    }
    return { phase: 'superseded', detail: p ? `the project's row no longer carries move ${w.id} (now ${p.state} on ${p.primary ?? 'no host'}${p.operation ? `, ${p.operation.kind} in progress` : ''})` : `project ${w.project} left the catalog` };
  }
  // not taken up: still `requested` on the row, and its performer has not said it is queued
  if (op.step === 'requested' && progress?.phase !== 'queued' && Date.now() - w.since > o.pickupTimeoutMs) {
    if (await withdraw(catalog, w.project, w.id, o.owner, 'not taken up')) {
      return {
        phase: 'not-taken-up',
        detail: `the agent on ${op.from ?? '?'} did not take the request up within ${Math.round(o.pickupTimeoutMs / 1000)} s (is storage-agent running there?); the request was withdrawn: nothing changed. storagectl move --here ${w.project} ${op.to}, typed on ${op.from ?? 'the primary'}, performs it without the agent`,
      };
    }
  }
  return null;
}

/** Follows request `id` on `project` to its outcome. */
export async function followMove(catalog: Catalog, project: string, id: string, o: FollowOptions): Promise<MoveOutcome> {
  const sleep = o.sleep ?? ((ms: number) => new Promise<void>((res) => setTimeout(res, ms)));
  const w: Watch = { project, id, since: Date.now(), last: '' };
  // the catalog may not answer for a while (a node restarting, a partition): the move goes
  // on without the follower, which keeps asking; after a minute of silence it gives up
  // (the move does not: storagectl move --status re-attaches)
  let failingSince: number | null = null;
  for (;;) {
    try {
      const out = await observeMove(catalog, w, o);
      failingSince = null;
      if (out) return out;
    } catch (e) {
      if (!(e instanceof CatalogError)) throw e;
      failingSince ??= Date.now();
      if (Date.now() - failingSince > (o.catalogPatienceMs ?? 60_000)) {
        throw new CatalogError(`${e.message} (for ${Math.round((Date.now() - failingSince) / 1000)} s while following move ${id}; it goes on without this command: storagectl move --status ${project})`);
      }
      o.onCatalogError?.(e);
    }
    await sleep(o.pollMs ?? 500);
  }
}

/**
 * Withdraws request `id` if it has not been taken up: under the lease, the row's
 * operation cleared (the project as before), the index entry and a final report.
 * false: it was taken up (or replaced) meanwhile.
 */
export async function withdraw(catalog: Catalog, project: string, id: string, owner: string, why: string): Promise<boolean> {
  try {
    return await withProjectLease(catalog, project, owner, 30_000, async (lease) => {
      const p = await catalog.getProject(project);
      const op = p ? moveOnRow(p) : undefined;
      if (!p || !op || op.id !== id || op.step !== 'requested' || !p.primary) return false;
      await lease.check('withdraw the move request');
      await catalog.setLocation(project, p.primary, p.state, lease.token, null);
      await catalog.deleteRequest(op.from ?? p.primary, project).catch(() => undefined);
      await catalog.putProgress(project, { id, kind: 'move', from: op.from ?? p.primary, to: op.to, phase: 'cancelled', step: `withdrawn before it started: ${why}`, bytes: 0, estimate: null, elapsedMs: 0, updatedAt: Date.now(), servedBy: p.primary });
      await catalog.addEvent({ project, host: p.primary, kind: 'move-cancelled', detail: `request ${id} withdrawn before it started: ${why}` }).catch(() => undefined);
      return true;
    });
  } catch (e) {
    if (e instanceof LockedError) return false; // its agent holds the lease: taken up
    throw e;
  }
}

export type CancelOutcome = { kind: 'withdrawn' | 'asked'; op: ProjectOperation } | { kind: 'too-late'; op: ProjectOperation } | { kind: 'none'; detail: string };

/** storagectl cancel: withdraw a request not taken up, or ask its performer to stop before the switch. */
export async function cancelMove(catalog: Catalog, project: string, owner: string): Promise<CancelOutcome> {
  const p = await catalog.getProject(project);
  if (!p) return { kind: 'none', detail: `project ${project} is not in the catalog` };
  const op = moveOnRow(p);
  if (!op) return { kind: 'none', detail: `project ${project} has no move in progress${p.operation ? ` (a ${p.operation.kind} is: not cancellable here)` : ''}` };
  if (op.step === 'switched') return { kind: 'too-late', op };
  if (!op.id) return { kind: 'none', detail: `the move of ${project} to ${op.to} was started by storagectl move --here (no request id): stop that command instead (Ctrl-C before the switch leaves the source serving)` };
  if (op.step === 'requested' && (await withdraw(catalog, project, op.id, owner, 'cancelled'))) return { kind: 'withdrawn', op };
  await catalog.requestCancel(project, op.id);
  return { kind: 'asked', op };
}

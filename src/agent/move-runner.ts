// The agent's side of `storagectl move` (typed anywhere) and `storagectl drain`: the moves
// requested of this host, found in its request index (Catalog.listRequests) whenever its
// generation moved, performed a few at a time with agent/move.ts, reported into the catalog
// (putProgress: steps, bytes, outcome) and cancellable up to the switch (requestCancel).
//
// The request's state is the operation on the project's row (step `requested`, then
// `recorded`, `switched`); the index only says where to look. A crash anywhere leaves the
// row and the index entry: the restarted agent lists its requests at start and resumes
// (move.ts resumes `recorded` and `switched`). An entry is deleted once its row no longer
// carries a move from this host.
import type { Logger } from '../util/log.js';
import type { OperationProgress, ProjectOperation, ProjectRecord } from '../catalog/types.js';
import { LockedError, leaseOwner } from '../lock/lease.js';
import { move, MoveError, type MoveResult } from './move.js';
import type { Agent } from './agent.js';
import type { AgentMetrics } from './metrics.js';

/** a row without the move its index entry announced, for this long: the requester died between the two writes */
const STALE_ENTRY_MS = 5 * 60_000;
/** a move that stopped with its operation still on the row (lease lost, promote failed): tried again after */
const RETRY_MS = 30_000;
/** byte counts reach the catalog at most this often (steps: at once) */
const PROGRESS_EVERY_MS = 1_000;

/**
 * The move this host is asked to perform for a project, or why the entry is not one
 * (`early`: the row may not be written yet, as a requester writes the entry first).
 */
export function requestedOfHost(p: ProjectRecord | undefined, host: string): { op: ProjectOperation } | { stale: string; early?: true } {
  if (!p) return { stale: 'the project is gone' };
  const op = p.operation;
  if (!op) return { stale: 'no operation on the row', early: true };
  if (op.kind !== 'move' || op.from !== host) return { stale: `the row carries a ${op.kind} from ${op.from ?? 'no host'}` };
  // before the switch the row names this host; after it, the target (the source finishes)
  if (op.step !== 'switched' && p.primary !== host) return { stale: `served by ${p.primary ?? 'no host'}` };
  return { op };
}

interface Running {
  id: string;
  progress: OperationProgress;
  lastWrite: number;
}

export class MoveRunner {
  private readonly running = new Map<string, Running>();
  private readonly firstSeenStale = new Map<string, number>();
  /** project -> not before (ms): a move that found the project locked, or failed with its operation left */
  private readonly backoff = new Map<string, number>();
  /** requests reported `queued` (waiting for a free slot), by request id */
  private readonly queued = new Set<string>();
  private polling = false;
  private again = false;
  private closed = false;
  private retryTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly agent: Agent,
    private readonly log: Logger,
    private readonly metrics?: AgentMetrics,
  ) {}

  /** moves in progress here (metrics, tests) */
  get active(): number {
    return this.running.size;
  }

  /** Reads this host's requests and starts what it may (never two polls at once). */
  wake(): void {
    if (this.closed) return;
    if (this.polling) {
      this.again = true;
      return;
    }
    this.polling = true;
    void (async () => {
      try {
        do {
          this.again = false;
          await this.poll();
        } while (this.again && !this.closed);
      } catch (e) {
        this.log.warn({ err: (e as Error).message }, 'move requests: could not read them (next change or retry)');
        this.retryLater();
      } finally {
        this.polling = false;
      }
    })();
  }

  /** The transfer progress of the agent's sends: the share that belongs to a move running here. */
  onTransfer(t: { project: string; bytes: number; elapsedMs: number; estimate?: number }): void {
    const r = this.running.get(t.project);
    if (!r) return;
    r.progress = { ...r.progress, bytes: t.bytes, elapsedMs: t.elapsedMs, estimate: t.estimate ?? null, updatedAt: Date.now() };
    if (Date.now() - r.lastWrite >= PROGRESS_EVERY_MS) this.write(t.project, r);
  }

  /** Stops starting moves (running ones finish: each is bounded by its lease and timeouts). */
  close(): void {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
  }

  private async poll(): Promise<void> {
    const { catalog, config } = this.agent;
    const me = config.host;
    for (const project of await catalog.listRequests(me)) {
      if (this.closed) return;
      if (this.running.has(project)) continue;
      const found = requestedOfHost(await catalog.getProject(project), me);
      if ('stale' in found) {
        await this.dropStale(project, found.stale, found.early === true);
        continue;
      }
      this.firstSeenStale.delete(project);
      if ((this.backoff.get(project) ?? 0) > Date.now()) continue; // retryLater wakes the runner
      if (this.running.size >= config.moves.concurrency) {
        // a finishing move wakes the runner again; meanwhile its follower knows it was seen
        // (a request nobody took up is withdrawn after the pickup timeout, a queued one is not)
        if (found.op.id && found.op.step === 'requested' && !this.queued.has(found.op.id)) {
          this.queued.add(found.op.id);
          const progress: OperationProgress = { id: found.op.id, kind: 'move', from: me, to: found.op.to, phase: 'queued', step: `queued on ${me}: ${this.running.size} moves running (moves.concurrency ${config.moves.concurrency})`, bytes: 0, estimate: null, elapsedMs: 0, updatedAt: Date.now() };
          await catalog.putProgress(project, progress).catch((e: Error) => this.log.warn({ project, err: e.message }, 'move: queued report not written'));
        }
        continue;
      }
      this.start(project, found.op);
    }
  }

  private async dropStale(project: string, why: string, early: boolean): Promise<void> {
    const me = this.agent.config.host;
    // a requester writes the index entry before the row: give a row that has no operation
    // yet a while; anything else (another operation, served elsewhere) is final
    if (early) {
      const first = this.firstSeenStale.get(project) ?? Date.now();
      this.firstSeenStale.set(project, first);
      if (Date.now() - first < STALE_ENTRY_MS) return;
    }
    this.firstSeenStale.delete(project);
    await this.agent.catalog.deleteRequest(me, project);
    this.log.info({ project, why }, 'move request entry dropped: the row no longer asks this host for a move');
  }

  private start(project: string, op: ProjectOperation): void {
    const id = op.id ?? `resumed-${op.startedAt}`;
    this.queued.delete(id);
    this.backoff.delete(project);
    const r: Running = {
      id,
      lastWrite: 0,
      progress: { id, kind: 'move', from: this.agent.config.host, to: op.to, phase: 'running', step: op.step === 'requested' ? 'taken up' : `resuming (${op.step})`, bytes: 0, estimate: null, elapsedMs: 0, updatedAt: Date.now() },
    };
    this.running.set(project, r);
    this.metrics?.moves(this.running.size);
    this.write(project, r);
    void this.perform(project, op, r).finally(() => {
      this.running.delete(project);
      this.metrics?.moves(this.running.size);
      if (r.progress.phase === 'done' || r.progress.phase === 'failed' || r.progress.phase === 'cancelled') this.metrics?.moveEnded(r.progress.phase);
      this.wake(); // a slot is free, and this entry may be done
    });
  }

  private async perform(project: string, op: ProjectOperation, r: Running): Promise<void> {
    const { catalog, config } = this.agent;
    const me = config.host;
    const log = this.log.child({ project, request: r.id, to: op.to });
    log.info({ step: op.step, requestedBy: op.requestedBy }, 'move: performing a requested move');
    const report = (patch: Partial<OperationProgress>) => {
      r.progress = { ...r.progress, ...patch, updatedAt: Date.now() };
      this.write(project, r);
    };
    try {
      const res = await move(this.agent, project, op.to, {
        owner: leaseOwner('agent-move', me),
        ...(op.dropSource !== undefined ? { dropSource: op.dropSource } : {}),
        ...(op.forceUnmount !== undefined ? { forceUnmount: op.forceUnmount } : {}),
        ...(op.presyncThresholdBytes !== undefined ? { presyncThresholdBytes: op.presyncThresholdBytes } : {}),
        request: { id: op.id, requestedBy: op.requestedBy },
        onStep: (step) => {
          log.info({ step }, 'move step');
          report({ phase: 'running', step, bytes: 0, estimate: null, elapsedMs: 0 });
        },
        cancelled: async () => op.id !== undefined && (await catalog.getProgress(project)).cancel === op.id,
      });
      report({ phase: 'done', step: describeResult(res), result: res as unknown as Record<string, unknown>, servedBy: res.to });
      log.info({ downtimeMs: res.downtimeMs, source: res.source }, 'move: done');
      await catalog.deleteRequest(me, project);
    } catch (e) {
      const err = e as Error;
      if (e instanceof LockedError) {
        // the requester (or an operator's storagectl) still holds the lease: a moment later
        log.info({ err: err.message }, 'move: the project is locked; trying again shortly');
        report({ phase: 'running', step: `waiting: ${err.message}` });
        this.backoff.set(project, Date.now() + 2_000);
        this.retryLater(2_000);
        return;
      }
      const cancelled = e instanceof MoveError && e.cancelled;
      const servedBy = e instanceof MoveError ? e.servedBy : null;
      const row = await catalog.getProject(project).catch(() => undefined);
      const after = requestedOfHost(row, me);
      if (!cancelled && 'op' in after && after.op.step === 'switched' && after.op.id === op.id) {
        // past the switch the move has happened (the target serves): a step after it that
        // failed (the source's copy kept as a replica, busy a moment) is finished by the
        // retry, so the move is not reported failed to its follower
        report({ phase: 'running', step: `switched to ${after.op.to}; finishing: ${err.message} (again in ${RETRY_MS / 1000} s)` });
        log.warn({ err: err.message }, 'move: a step after the switch failed; retrying');
        this.backoff.set(project, Date.now() + RETRY_MS);
        this.retryLater();
        return;
      }
      report({ phase: cancelled ? 'cancelled' : 'failed', step: err.message, error: err.message, servedBy });
      log[cancelled ? 'info' : 'error']({ err: err.message, servedBy }, cancelled ? 'move: cancelled' : 'move: failed');
      // a move that failed before its switch is over (the source serves): its entry goes;
      // one whose operation is still on the row (lease lost, promote failed) is retried
      if ('stale' in after) await catalog.deleteRequest(me, project).catch(() => undefined);
      else {
        this.backoff.set(project, Date.now() + RETRY_MS);
        this.retryLater();
      }
    }
  }

  private write(project: string, r: Running): void {
    r.lastWrite = Date.now();
    const p = r.progress;
    this.agent.catalog.putProgress(project, p).catch((e: Error) => this.log.warn({ project, err: e.message }, 'move: progress not written (the move goes on)'));
  }

  private retryAt = 0;

  /** one timer, at the earliest time asked for */
  private retryLater(ms = RETRY_MS): void {
    if (this.closed) return;
    const at = Date.now() + ms;
    if (this.retryTimer && this.retryAt <= at) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryAt = at;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.wake();
    }, ms);
    this.retryTimer.unref();
  }
}

export function describeResult(r: MoveResult): string {
  const src = r.source === 'replica' ? `${r.from} keeps a replica` : r.source === 'kept' ? `${r.from} keeps its copy (draining: no target)` : `${r.from}'s copy dropped`;
  return `moved from ${r.from} to ${r.to} at ${r.finalSnapshot}${r.resumed ? ' (finished an interrupted move)' : `; writes stopped for ${(r.downtimeMs / 1000).toFixed(1)} s`}; ${src}`;
}

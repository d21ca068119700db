// The self-fence watchdog: a primary cut off from the catalog stops serving by itself.
//
// The failover's proof that needs no answer from the old primary (failover.ts,
// waitForFence) counts on this: once the catalog stops naming a host, that host either
// reads so and demotes, or it has no fresh catalog answer and has unmounted every project
// within failover.selfFenceAfter (+ one tick) of its last one. For that to hold whatever
// else the agent is doing, the watchdog
//  - runs on its own timer, never behind a slow catalog read, a long cycle or an automatic
//    failover that waits for another host (the fence check and the failover loop can each
//    take tens of seconds);
//  - is armed from process start, before the catalog is opened, with the last contact the
//    previous process recorded (stateDir/catalog-contact): an agent restarted after more
//    than selfFenceAfter without contact fences at once, not after a slow start;
//  - fences whatever is mounted under the projects root at each tick, so a project a
//    receiver promoted while this agent was isolated is fenced too.
// The projects it fenced are remounted by the fence check once the catalog answers again
// and still names this host (Agent.fenceCheck, `release`).
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import type { Logger } from '../util/log.js';
import type { Zfs } from '../zfs/index.js';
import { mountedProjects } from '../zfs/mounts.js';
import { describeFence, fenceDataset } from '../zfs/fence.js';
import { isProjectId } from '../util/validate.js';
import type { AgentMetrics } from './metrics.js';

export interface SelfFenceOptions {
  zfs: Zfs;
  projectsRoot: string;
  /** ms without a fresh catalog answer after which every project is fenced */
  afterMs: () => number;
  /** where the last contact survives a restart (absent: none recorded) */
  stateFile?: string;
  /** where the projects it fenced survive a restart, so that a new process remounts them */
  fencedFile?: string;
  log: Logger;
  metrics?: AgentMetrics;
  now?: () => number;
  /** projects mounted here (default: /proc/self/mountinfo under projectsRoot) */
  mounted?: () => Set<string>;
}

/** The last contact recorded in `file` (ms), or undefined when none or unreadable. */
export function readContact(file: string | undefined, now: number): number | undefined {
  if (!file) return undefined;
  let text: string;
  try {
    text = readFileSync(file, 'utf8').trim();
  } catch {
    return undefined;
  }
  const t = Number(text);
  // a value from the future (a clock stepped back) proves nothing: treat it as none
  return /^\d{1,16}$/.test(text) && Number.isFinite(t) && t <= now ? t : undefined;
}

/** The projects a previous process fenced (id -> readonly set by it), from `file`; bad entries are skipped. */
export function readFenced(file: string | undefined): Map<string, boolean> {
  const out = new Map<string, boolean>();
  if (!file) return out;
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    return out;
  }
  if (doc && typeof doc === 'object' && !Array.isArray(doc)) {
    for (const [id, ro] of Object.entries(doc as Record<string, unknown>)) if (isProjectId(id) && typeof ro === 'boolean') out.set(id, ro);
  }
  return out;
}

/** Decides (pure): is the host isolated at `now` given its last catalog contact? */
export function isolated(lastContact: number, now: number, afterMs: number): boolean {
  return now - lastContact > afterMs;
}

export class SelfFence {
  /** project id -> readonly was set by the fence (the remount inherits it back); kept in fencedFile */
  private readonly fencedIds: Map<string, boolean>;
  private lastOk: number;
  private lastWritten = 0;
  private ticking: Promise<string[]> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly now: () => number;

  constructor(private readonly o: SelfFenceOptions) {
    this.now = o.now ?? Date.now;
    const start = this.now();
    const recorded = readContact(o.stateFile, start);
    // no record (first start, or state lost): the process start counts as the contact,
    // so a fresh host is not fenced before its first read; a record is authoritative
    this.lastOk = recorded ?? start;
    // a process killed after fencing leaves them unmounted: this one remounts them when
    // the catalog answers (without the record they would stay unmounted for good)
    this.fencedIds = readFenced(o.fencedFile);
  }

  /** the projects this watchdog (or the previous process's) fenced and nobody remounted yet */
  fenced(): ReadonlyMap<string, boolean> {
    return this.fencedIds;
  }

  private saveFenced(): void {
    if (!this.o.fencedFile) return;
    try {
      writeFileSync(`${this.o.fencedFile}.tmp`, `${JSON.stringify(Object.fromEntries(this.fencedIds))}\n`);
      renameSync(`${this.o.fencedFile}.tmp`, this.o.fencedFile);
    } catch (e) {
      this.o.log.error({ file: this.o.fencedFile, err: (e as Error).message }, 'cannot record the self-fenced projects (a restart would not remount them)');
    }
  }

  /** A fresh catalog answer to a request sent at `sentAt`. */
  contact(sentAt: number): void {
    if (sentAt <= this.lastOk) return;
    this.lastOk = sentAt;
    if (!this.o.stateFile || sentAt - this.lastWritten < 1000) return;
    this.lastWritten = sentAt;
    try {
      writeFileSync(`${this.o.stateFile}.tmp`, `${sentAt}\n`);
      renameSync(`${this.o.stateFile}.tmp`, this.o.stateFile);
    } catch (e) {
      this.o.log.warn({ file: this.o.stateFile, err: (e as Error).message }, 'cannot record the last catalog contact (a restart fences by the previous record)');
    }
  }

  lastContact(): number {
    return this.lastOk;
  }

  /** true while the last contact is older than selfFenceAfter */
  isolatedNow(): boolean {
    return isolated(this.lastOk, this.now(), this.o.afterMs());
  }

  /**
   * When isolated, fences (writers stopped, unmounted) every project mounted here, all at
   * once (the bound counts one fence's time, not one per project). Returns the ids fenced by
   * this call. Never overlaps itself: a call during a tick waits for it and gets its answer.
   */
  tick(): Promise<string[]> {
    return this.run(false);
  }

  /**
   * Fences every project mounted here now, isolated or not (the catalog cannot be opened
   * at start: nothing may keep serving on a view this process never had). Recorded like a
   * tick's, so the next process remounts them when the catalog answers.
   */
  fenceAll(): Promise<string[]> {
    return this.run(true);
  }

  private run(always: boolean): Promise<string[]> {
    if (!this.ticking) {
      this.ticking = this.fenceMounted(always).finally(() => {
        this.ticking = undefined;
      });
    }
    return this.ticking;
  }

  /** Resolves when no tick is under way (a remount must not race a fence). */
  async settled(): Promise<void> {
    await this.ticking?.catch(() => undefined);
  }

  /**
   * Runs `tick` now and then every `everyMs` until `stop` (the agent's watchdog). The first
   * tick is at once: a process started after a silence longer than selfFenceAfter (its
   * recorded contact) fences before its catalog opens, not after the first interval, by
   * which time a fast catalog (SQLite) has answered and the fence would never happen.
   */
  start(everyMs: number): void {
    this.stop();
    const tick = (): void => void this.tick().catch((e: Error) => this.o.log.error({ err: e.message }, 'self-fence check failed'));
    this.timer = setInterval(tick, everyMs);
    tick();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** The fence check remounts `id`: forget that this watchdog fenced it. */
  release(id: string): boolean | undefined {
    const ro = this.fencedIds.get(id);
    if (this.fencedIds.delete(id)) this.saveFenced();
    return ro;
  }

  private async fenceMounted(always: boolean): Promise<string[]> {
    if (!always && !this.isolatedNow()) return [];
    const root = this.o.projectsRoot;
    const mounted = this.o.mounted?.() ?? new Set(mountedProjects(root, isProjectId).keys());
    const done: string[] = [];
    await Promise.all(
      [...mounted].map(async (ds) => {
        const id = ds.slice(root.length + 1);
        try {
          const fence = await fenceDataset(this.o.zfs, ds);
          if (!fence.fenced) throw new Error(describeFence(fence));
          // a project fenced twice keeps the first answer (readonly set by us or not)
          if (!this.fencedIds.has(id)) this.fencedIds.set(id, fence.readonly === 'set');
          done.push(id);
          if (fence.stopped.length) this.o.log.error({ project: id, stopped: fence.stopped }, 'self-fence: stopped the processes using the project');
        } catch (e) {
          this.o.log.error({ project: id, err: (e as Error).message }, 'self-fence: unmount failed');
        }
      }),
    );
    if (done.length) {
      this.saveFenced();
      this.o.log.error({ projects: done, lastCatalogContact: new Date(this.lastOk).toISOString() }, 'self-fenced: no catalog contact for failover.selfFenceAfter; unmounted every project served here');
      this.o.metrics?.selfFenced(done.length);
    }
    return done;
  }
}

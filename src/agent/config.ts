// The agent's YAML configuration, validated with precise errors ("config.yaml:
// replication.concurrencyPerTarget: expected a number >= 1, got 0"). The same file is
// read by `storagectl` and by `storagectl serve-ssh` (the SSH forced command).
import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import * as v from '../util/validate.js';

/** Durations are seconds: at least 1 s, at most 24 days (a timer of more overflows Node's setTimeout). */
export const MIN_DURATION_S = 1;
export const MAX_DURATION_S = 24 * 86400;
const duration = z
  .union([z.number(), z.string()])
  .transform((val, ctx) => {
    let sec: number;
    if (typeof val === 'number') sec = val;
    else {
      const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$/.exec(val.trim());
      if (!m) {
        ctx.addIssue({ code: 'custom', message: `expected a duration like 30s, 5m, 1h, 7d (got ${JSON.stringify(val)})` });
        return z.NEVER;
      }
      sec = Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[m[2] as 'ms'];
    }
    if (!Number.isFinite(sec) || sec < MIN_DURATION_S || sec > MAX_DURATION_S) {
      ctx.addIssue({ code: 'custom', message: `expected a duration from 1s to 24d (got ${JSON.stringify(val)})` });
      return z.NEVER;
    }
    return sec;
  });

const checked = <T extends z.ZodTypeAny>(schema: T, fn: (val: z.infer<T>) => unknown) =>
  schema.superRefine((val, ctx) => {
    try {
      fn(val);
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: e instanceof Error ? e.message.replace(/^invalid [^:]*: /, '') : String(e) });
    }
  });

const hostId = checked(z.string(), (s) => v.hostId(s));
const dataset = checked(z.string(), (s) => v.datasetName(s));
const absPath = checked(z.string(), (s) => v.mountpoint(s));

const gridRule = z.object({ for: z.string(), every: z.string() }).strict();

export const ConfigSchema = z
  .object({
    /** this host's id in the catalog */
    host: hostId,
    datacenter: checked(z.string(), (s) => v.hostId(s)),
    /** how other hosts reach this host's sshd */
    address: z.string().min(1).max(255).regex(/^[A-Za-z0-9.:-]+$/, 'expected a host name or IP address'),
    port: z.number().int().min(1).max(65535).default(22),
    pool: dataset,
    /** primaries: <projectsRoot>/<uuid>, canmount=noauto, mounted on demand */
    projectsRoot: dataset,
    /** replicas: <replicasRoot>/<uuid>, readonly=on and never mounted */
    replicasRoot: dataset,
    /** mountpoint of projectsRoot (projects mount at <mountBase>/<uuid>) */
    mountBase: absPath,
    catalog: z
      .object({
        backend: z.enum(['sqlite', 'cassandra']).default('sqlite'),
        path: absPath.default('/var/lib/storage-agent/catalog.db'),
        /** cassandra: "host" or "host:port" of a few nodes of the local datacenter */
        contactPoints: z
          .array(z.string().regex(/^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+|[0-9A-Fa-f:]+)(:\d{1,5})?$/, 'expected host or host:port'))
          .min(1, 'expected at least one contact point')
          .optional(),
        /** cassandra: the datacenter this host is in (queries go to its nodes) */
        localDataCenter: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, 'expected a Cassandra datacenter name').optional(),
        /** cassandra: keyspace of the catalog (default storage_catalog) */
        keyspace: z.string().regex(/^[a-z][a-z0-9_]{0,47}$/, 'expected a keyspace name: a-z, 0-9, _ (starting with a letter, at most 48)').optional(),
        /** cassandra: native transport port for contact points without one (default 9042) */
        port: z.number().int().min(1).max(65535).optional(),
        /** cassandra: replication factor per datacenter, used when the keyspace is created (default {localDataCenter: 3}) */
        replication: z
          .record(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, 'expected a Cassandra datacenter name'), z.number().int().min(1).max(20))
          .refine((r) => Object.keys(r).length > 0, 'expected at least one datacenter')
          .optional(),
      })
      .strict()
      .superRefine((c, ctx) => {
        if (c.backend !== 'cassandra') return;
        if (!c.contactPoints) ctx.addIssue({ code: 'custom', path: ['contactPoints'], message: 'required when backend is cassandra (e.g. contactPoints: [10.0.0.1, 10.0.0.2:9042])' });
        if (!c.localDataCenter) ctx.addIssue({ code: 'custom', path: ['localDataCenter'], message: 'required when backend is cassandra (the Cassandra datacenter of this host, e.g. dc1)' });
      })
      .default({ backend: 'sqlite', path: '/var/lib/storage-agent/catalog.db' }),
    ssh: z
      .object({
        user: z.string().regex(/^[a-z_][a-z0-9_-]{0,31}$/, 'expected a Unix user name').default('root'),
        privateKey: absPath,
        knownHosts: absPath,
        keepalive: duration.default(15),
        connectTimeout: duration.default(10),
        /** abort a transfer when no byte moved for this long */
        stallTimeout: duration.default(120),
        /** timeout of short operations (listing, hold) */
        operationTimeout: duration.default(120),
        compression: z.boolean().default(false),
        /** bytes per second per target, 0 = unlimited */
        bandwidthLimit: z.number().int().min(0).default(0),
        bandwidthLimitPerTarget: z.record(z.string(), z.number().int().min(0)).default({}),
      })
      .strict(),
    interval: duration.default(60),
    snapshot: z
      .object({
        prefix: z.string().regex(/^([A-Za-z0-9][A-Za-z0-9_.-]{0,30})?$/, 'expected letters, digits, _ . - (or empty)').default(''),
      })
      .strict()
      .default({ prefix: '' }),
    replication: z
      .object({
        factor: z.number().int().min(0).max(10).default(2),
        concurrencyPerTarget: z.number().int().min(1).max(64).default(2),
        globalConcurrency: z.number().int().min(1).max(256).default(8),
        /**
         * a replica that diverged from its primary (it holds snapshots after the common base
         * the primary lacks: a failover chose another replica): `keep-aside` has the target
         * rename it into conflicts/ (never destroyed, at most 3 per project) and sends it
         * whole, so replication converges; `report` only reports it (an admin resolves it)
         */
        divergedReplicas: z.enum(['keep-aside', 'report']).default('keep-aside'),
      })
      .strict()
      .default({ factor: 2, concurrencyPerTarget: 2, globalConcurrency: 8, divergedReplicas: 'keep-aside' }),
    retention: z
      .object({
        primary: z.array(gridRule).optional(),
        replica: z.array(gridRule).optional(),
      })
      .strict()
      .default({}),
    zfs: z
      .object({
        /** argv prefix for zfs/zpool, e.g. ["sudo", "-n"] for a non-root service user */
        commandPrefix: z.array(z.string().min(1)).default([]),
        zfsPath: z.string().default('zfs'),
        zpoolPath: z.string().default('zpool'),
      })
      .strict()
      .default({ commandPrefix: [], zfsPath: 'zfs', zpoolPath: 'zpool' }),
    metrics: z
      .object({
        listen: z.string().regex(/^[0-9a-fA-F.:[\]]+:\d+$/, 'expected address:port').default('127.0.0.1:9464'),
        perProjectSeries: z.boolean().default(true),
        lagSloSeconds: z.number().positive().default(3600),
      })
      .strict()
      .default({ listen: '127.0.0.1:9464', perProjectSeries: true, lagSloSeconds: 3600 }),
    placement: z
      .object({
        /**
         * a replica host without a heartbeat for this long is replaced: a live host in
         * another datacenter gets a new replica, and the dead one is released from the
         * project's targets only once the new one is confirmed (its data is kept)
         */
        replaceDeadTargetAfter: duration.default(3600),
      })
      .strict()
      .default({ replaceDeadTargetAfter: 3600 }),
    moves: z
      .object({
        /**
         * moves requested of this host (storagectl move/drain, performed by its agent) run
         * at most this many at a time; a drain's --concurrency is the fleet-side limit
         */
        concurrency: z.number().int().min(1).max(64).default(2),
      })
      .strict()
      .default({ concurrency: 2 }),
    failover: z
      .object({
        /**
         * manual (default): only `storagectl failover`/`open` promote a replica. auto: the
         * replica hosts of a project whose primary has been dead for `after` fail it over
         * themselves (one wins the project lock). See docs/failover-move-restore.md.
         */
        mode: z.enum(['manual', 'auto']).default('manual'),
        /** a host is dead after this long without a heartbeat (default 3 intervals) */
        after: duration.optional(),
        /**
         * fence every project this host serves (writers stopped, unmounted) when the
         * catalog could not be read for this long (default: 2 intervals, at least 2 fence
         * checks), in both modes: a failover that cannot reach the old primary waits for
         * this bound (see fenceBoundMs) instead of trusting an old heartbeat
         */
        selfFenceAfter: duration.optional(),
        /** how often the agent checks that every project mounted here is still its own */
        fenceCheck: duration.default(5),
        /**
         * the largest difference tolerated between this host's clock and the catalog's:
         * beyond it the agent and storagectl refuse to act (metric storage_clock_skew_seconds)
         */
        maxClockSkew: duration.default(2),
      })
      .strict()
      .default({ mode: 'manual', fenceCheck: 5, maxClockSkew: 2 }),
    audit: z
      .object({
        /**
         * every local dataset and every replica it sends to is listed again from zfs at
         * least once per period, a slice per cycle: what was changed by hand (a snapshot
         * taken or destroyed, a replica lost) is found and repaired within it
         */
        period: duration.default(3600),
        /** at most this many datasets per cycle's slice (bounds a cycle's listing cost) */
        maxPerCycle: z.number().int().min(1).max(100_000).default(2000),
      })
      .strict()
      .default({ period: 3600, maxPerCycle: 2000 }),
    log: z
      .object({ level: z.enum(['debug', 'info', 'warn', 'error']).default('info') })
      .strict()
      .default({ level: 'info' }),
    /** state kept across runs (capability cache) */
    stateDir: absPath.default('/var/lib/storage-agent'),
    /** the receiver's audit log (serve-ssh); stderr of sshd sessions is not kept */
    receiverLog: absPath.optional(),
    receiver: z
      .object({
        /** concurrent receives one peer may run on this host (more are refused, exit 2) */
        maxReceivesPerPeer: z.number().int().min(1).max(256).default(4),
        /** a receive running longer than this is stopped */
        sessionTimeLimit: duration.default(6 * 3600),
        /** catalog rows younger than this authorize without asking the catalog again */
        factsFresh: duration.default(30),
        /** while the catalog is unreachable, rows up to this old still authorize receives into replicas */
        factsStaleWhenCatalogDown: duration.default(900),
      })
      .strict()
      .default({ maxReceivesPerPeer: 4, sessionTimeLimit: 6 * 3600, factsFresh: 30, factsStaleWhenCatalogDown: 900 }),
  })
  .strict()
  .superRefine((c, ctx) => {
    for (const [key, root] of [['projectsRoot', c.projectsRoot], ['replicasRoot', c.replicasRoot]] as const) {
      if (!root.startsWith(`${c.pool}/`)) ctx.addIssue({ code: 'custom', path: [key], message: `must be inside pool ${c.pool}` });
    }
    const f = c.failover;
    const selfFence = selfFenceAfterS(c);
    if (f.selfFenceAfter !== undefined && f.selfFenceAfter < 2 * f.fenceCheck) {
      ctx.addIssue({ code: 'custom', path: ['failover', 'selfFenceAfter'], message: `must be at least two fence checks (2 x failover.fenceCheck = ${2 * f.fenceCheck}s): one slow read must not unmount every project` });
    }
    if (f.selfFenceAfter !== undefined && f.selfFenceAfter <= c.interval) {
      ctx.addIssue({ code: 'custom', path: ['failover', 'selfFenceAfter'], message: `must be longer than interval (${c.interval}s)` });
    }
    const bound = selfFence + f.fenceCheck + f.maxClockSkew + FENCE_ACTION_S;
    if (f.after !== undefined && f.after <= bound) {
      ctx.addIssue({
        code: 'custom',
        path: ['failover', 'after'],
        message: `must be longer than the self-fence bound (selfFenceAfter ${selfFence}s + fenceCheck ${f.fenceCheck}s + maxClockSkew ${f.maxClockSkew}s + ${FENCE_ACTION_S}s to stop writers = ${bound}s): a host must have stopped serving before it counts as dead`,
      });
    }
    if (f.fenceCheck >= c.interval * 10 && f.fenceCheck > 60) {
      ctx.addIssue({ code: 'custom', path: ['failover', 'fenceCheck'], message: `must be at most 60s or 10 intervals: it bounds how long a demoted primary keeps serving` });
    }
    if (c.projectsRoot === c.replicasRoot || c.projectsRoot.startsWith(`${c.replicasRoot}/`) || c.replicasRoot.startsWith(`${c.projectsRoot}/`)) {
      ctx.addIssue({ code: 'custom', path: ['replicasRoot'], message: 'projectsRoot and replicasRoot must be disjoint' });
    }
  });

export type Config = z.infer<typeof ConfigSchema>;

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export function parseConfig(text: string, source: string): Config {
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length) throw new ConfigError(`${source}: YAML error: ${doc.errors.map((e) => e.message).join('; ')}`);
  const raw = doc.toJS() as unknown;
  const r = ConfigSchema.safeParse(raw ?? {});
  if (!r.success) {
    const lines = r.error.issues.map((i) => `  ${source}: ${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`);
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
  }
  return r.data;
}

export function loadConfig(path: string): Config {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read configuration ${path}: ${(e as Error).message}`);
  }
  return parseConfig(text, path);
}

/** seconds a fence takes to stop writers and unmount (zfs/fence.ts: ~4 s of attempts), counted in the bound */
export const FENCE_ACTION_S = 5;

function selfFenceAfterS(c: Pick<Config, 'interval' | 'failover'>): number {
  return c.failover.selfFenceAfter ?? Math.max(2 * c.interval, 2 * c.failover.fenceCheck);
}

/**
 * ms without a heartbeat after which a host counts as dead: failover.after, default the
 * larger of 3 intervals and just past the self-fence bound
 */
export function deadAfterMs(c: Config): number {
  return (c.failover.after ?? Math.max(3 * c.interval, fenceBoundMs(c) / 1000 + 1)) * 1000;
}

/** A host is live when its heartbeat is no older than deadAfterMs at `now`. */
export function liveAt(c: Config, now: number): (h: { heartbeatAt: number | null }) => boolean {
  const grace = deadAfterMs(c);
  return (h) => h.heartbeatAt !== null && now - h.heartbeatAt <= grace;
}

/** ms without a fresh catalog read after which this host fences every project it serves */
export function selfFenceAfterMs(c: Config): number {
  return selfFenceAfterS(c) * 1000;
}

/**
 * ms after the catalog stops naming a host as a project's primary by which that host has
 * stopped serving it, even cut off from the catalog: its last fresh read was before the
 * change, it fences by selfFenceAfter after that read (noticed within one fence check),
 * the fence takes up to FENCE_ACTION_S, and the clocks may differ by maxClockSkew.
 */
export function fenceBoundMs(c: Config): number {
  return (selfFenceAfterS(c) + c.failover.fenceCheck + c.failover.maxClockSkew + FENCE_ACTION_S) * 1000;
}

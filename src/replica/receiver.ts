// `storagectl serve-ssh --peer <host>`: the forced command of each peer's replication key
// in a host's authorized_keys. It runs exactly one protocol command (protocol.ts), for
// a peer the catalog knows and only on the projects the catalog gives that peer
// (authorize.ts; the trust model is trust-model.md beside this file). Refusals go to
// stderr and the audit log (peer, op, project, reason), exit 2, and no zfs command runs
// for them. Replicas are kept unmounted and readonly; a stream brings data, never
// behaviour (stream-policy.ts).
import { appendFileSync } from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { wholeStreamTaken, type Zfs } from '../zfs/index.js';
import { describeFence, fenceDataset } from '../zfs/fence.js';
import { parseRemoteCommand, RefusedCommand, PROTOCOL, type RemoteCommand, type RemoteListing } from './protocol.js';
import { authorize } from './authorize.js';
import type { FactSource, GatheredFacts } from './auth-facts.js';
import { readStreamHeader, type StreamHeader } from './stream-header.js';
import { RECV_EXCLUDE, REPLICA_OVERRIDES, checkStream, deniedKnownTo, propertiesToReset } from './stream-policy.js';
import { acquireSlot } from './receive-slots.js';
import { keepAside } from '../zfs/keep-aside.js';

export interface ReceiverEnv {
  zfs: Zfs;
  host: string;
  replicasRoot: string;
  /** where primaries live (promote renames a replica there); unset = promote/fence refused */
  projectsRoot?: string;
  /** where a stale copy under projectsRoot is set aside when a replica is promoted (<pool>/conflicts) */
  conflictsRoot?: string;
  auditLog?: string;
  /** SSH_CLIENT of the session, for the audit log */
  client?: string;
  /** the caller's host id, from its authorized_keys line (`serve-ssh --peer <host>`) */
  peer?: string;
  /** the public key sshd says the caller used (ExposeAuthInfo's SSH_USER_AUTH), "type base64" */
  presentedKey?: string;
  /** the catalog's facts (through the receiver's cache); the catalog is opened only once a command has parsed */
  facts: FactSource;
  /** a receive running longer than this is killed (seconds; default 6 h) */
  sessionTimeLimitSeconds?: number;
  /** per-peer concurrent receives (default 4); slots are files in this directory */
  receiveSlots?: { dir: string; perPeer: number };
  now?: () => number;
}

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_REFUSED = 2;

function audit(env: ReceiverEnv, entry: Record<string, unknown>): void {
  if (!env.auditLog) return;
  try {
    appendFileSync(env.auditLog, JSON.stringify({ ts: new Date().toISOString(), component: 'serve-ssh', host: env.host, peer: env.peer ?? null, client: env.client ?? null, ...entry }) + '\n');
  } catch {
    /* the audit log must not break replication */
  }
}

class Refusal extends Error {}

/** What an audit line says a command was about: op, project (or the projects listed). */
function subject(cmd: RemoteCommand | undefined): Record<string, unknown> {
  if (!cmd) return { op: null, project: null };
  if (cmd.op === 'list') return { op: 'list', project: null, ...(cmd.projects ? { projects: cmd.projects } : {}) };
  return { op: cmd.op, project: 'project' in cmd ? cmd.project : null };
}

/** Runs one command; returns the process exit code. Never throws. */
/** `recv` reads the stream from `stdin` (sshd's pipe), checks its header, then feeds zfs. */
export async function serve(env: ReceiverEnv, command: string | undefined, stdin: Readable, stdout: Writable, stderr: Writable): Promise<number> {
  const started = Date.now();
  const refuse = (reason: string, cmd?: RemoteCommand): number => {
    const msg = reason.startsWith('refused: ') ? reason : `refused: ${reason}`;
    stderr.write(`storagectl serve-ssh: ${msg}\n`);
    audit(env, { command: command ?? null, ...subject(cmd), result: 'refused', reason: msg });
    return EXIT_REFUSED;
  };
  let cmd: RemoteCommand;
  try {
    cmd = parseRemoteCommand(command);
  } catch (e) {
    return refuse(e instanceof RefusedCommand ? e.message : (e as Error).message);
  }
  if (!env.peer) return refuse('no peer name: the authorized_keys line must run `serve-ssh --peer <host>` (storagectl authorized-keys writes it)', cmd);
  let facts: GatheredFacts;
  try {
    facts = await env.facts.gather(cmd, env.host, env.peer, env.presentedKey);
  } catch (e) {
    // fail closed: no answer from the catalog is no permission
    return refuse(`cannot check ${env.peer}'s authorization in the catalog: ${(e as Error).message}`, cmd);
  }
  let decision = authorize(cmd, facts);
  if (!decision.ok && facts.cached && facts.staleMs === 0) {
    // cached rows say no: the catalog's live rows have the last word
    try {
      facts = await env.facts.gather(cmd, env.host, env.peer, env.presentedKey, { live: true });
      decision = authorize(cmd, facts);
    } catch (e) {
      return refuse(`cannot check ${env.peer}'s authorization in the catalog: ${(e as Error).message}`, cmd);
    }
  }
  if (!decision.ok) return refuse(decision.reason, cmd);
  try {
    const extra = await run(env, cmd, stdin, stdout, facts);
    audit(env, { command, ...subject(cmd), result: 'ok', durationMs: Date.now() - started, ...(facts.staleMs ? { catalogUnreachableFactsAgeMs: facts.staleMs } : {}), ...extra });
    return EXIT_OK;
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    if (e instanceof Refusal) return refuse(msg, cmd);
    stderr.write(`storagectl serve-ssh: ${cmd.op} failed: ${msg}\n`);
    audit(env, { command, ...subject(cmd), result: 'failed', error: msg, durationMs: Date.now() - started });
    return EXIT_FAILED;
  }
}

async function run(env: ReceiverEnv, cmd: RemoteCommand, stdin: Readable, stdout: Writable, facts: GatheredFacts): Promise<Record<string, unknown>> {
  const { zfs, replicasRoot } = env;
  switch (cmd.op) {
    case 'capabilities': {
      stdout.write(JSON.stringify({ protocol: PROTOCOL, host: env.host, capabilities: await zfs.capabilities() }) + '\n');
      return {};
    }
    case 'list': {
      // unscoped (repair-catalog): only the caller's own projects, never the whole tree
      const ids = cmd.projects ?? (await env.facts.projectsOf(facts.peer));
      const listing = await listReplicas(env, ids);
      stdout.write(JSON.stringify(listing) + '\n');
      return { datasets: Object.keys(listing.datasets).length };
    }
    case 'recv':
      return receive(env, cmd.project, stdin);
    case 'abort-resume': {
      await zfs.abortResumable(`${replicasRoot}/${cmd.project}`);
      return {};
    }
    case 'rollback-head': {
      // "destination has been modified since most recent snapshot": the replica's newest
      // snapshot was destroyed by hand, so its head still holds that snapshot's data (which
      // the source still has). Only a head no one can have written is rolled back: readonly,
      // never mounted, no partial receive waiting; no -r, so no snapshot is destroyed.
      const ds = `${replicasRoot}/${cmd.project}`;
      const snaps = (await zfs.listSnapshots([ds])).snapshots.get(ds);
      if (!snaps) throw new Error(`rollback-head: ${ds} does not exist`);
      const newest = snaps[snaps.length - 1];
      if (!newest) throw new Error(`rollback-head: ${ds} has no snapshot to roll back to`);
      const props = await zfs.get(ds, ['readonly', 'mounted', ...((await zfs.capabilities()).recvResumable ? ['receive_resume_token'] : [])]);
      if (props.readonly !== 'on' || props.mounted !== 'no') throw new Error(`rollback-head: ${ds} is ${props.readonly === 'on' ? '' : 'not readonly, '}${props.mounted === 'no' ? '' : 'mounted, '}so its head may hold writes: left alone (resolve by hand)`);
      if (props.receive_resume_token && props.receive_resume_token !== '-') throw new Error(`rollback-head: ${ds} has a partial receive waiting (resume it or abort-resume first)`);
      await zfs.rollback(`${ds}@${newest.snap}`);
      stdout.write(JSON.stringify({ rolledBack: ds, to: newest.snap }) + '\n');
      return { rolledBack: `${ds}@${newest.snap}` };
    }
    case 'keep-aside':
      return keepReplicaAside(env, cmd.project, cmd.guid, stdout);
    case 'promote':
      return promote(env, cmd.project, cmd.guid, stdout);
    case 'fence': {
      // writes stop first (readonly, the processes using it, then unmount): see zfs/fence.ts
      if (!env.projectsRoot) throw new Error('fence: this receiver has no projects root configured');
      const ds = `${env.projectsRoot}/${cmd.project}`;
      const r = await fenceDataset(zfs, ds);
      stdout.write(JSON.stringify({ fenced: ds, present: r.present, report: r }) + '\n');
      if (!r.fenced) throw new Error(`fence: ${ds} is still mounted on ${env.host}: ${describeFence(r)}`);
      return { fenced: ds, stopped: r.stopped.length, readonly: r.readonly };
    }
    case 'send': {
      // one snapshot of a replica, as a full stream (restore on the primary receives it
      // into a new dataset of its own): no -R, so nothing but that snapshot's data
      const snapshot = `${replicasRoot}/${cmd.project}@${cmd.snap}`;
      const send = await zfs.sendToStdout({ snapshot, replicate: false });
      await send.done;
      return { sent: snapshot };
    }
  }
}

/** kept-aside replicas of one project a host holds before keep-aside refuses (resolve by hand) */
export const MAX_KEPT_REPLICAS = 3;

/**
 * The primary found this host's replica diverged from it (snapshots after the common base
 * on both sides: a failover chose another replica, and this one had received more from the
 * old primary). Nothing is destroyed: the replica, exactly as the primary listed it (its
 * newest guid), is renamed into conflicts/ (`storagectl conflicts` lists it) and the primary
 * sends a full stream into a new one. Only a replica no one can have written (readonly,
 * unmounted), and at most MAX_KEPT_REPLICAS per project: a primary cannot fill the pool
 * with copies by repeating it.
 */
async function keepReplicaAside(env: ReceiverEnv, project: string, guid: string, stdout: Writable): Promise<Record<string, unknown>> {
  const { zfs, replicasRoot } = env;
  if (!env.conflictsRoot) throw new Error('keep-aside: this receiver has no conflicts root configured');
  const ds = `${replicasRoot}/${project}`;
  const snaps = (await zfs.listSnapshots([ds])).snapshots.get(ds);
  if (!snaps) throw new Error(`keep-aside: ${ds} does not exist`);
  const newest = snaps[snaps.length - 1];
  if (newest?.guid !== guid) throw new Error(`keep-aside: ${ds}'s newest snapshot is ${newest ? `${newest.snap} (guid ${newest.guid})` : 'none'}, not guid ${guid} as the primary listed it: list again`);
  const props = await zfs.get(ds, ['readonly', 'mounted']);
  if (props.readonly !== 'on' || props.mounted !== 'no') throw new Error(`keep-aside: ${ds} is ${props.readonly === 'on' ? '' : 'not readonly, '}${props.mounted === 'no' ? '' : 'mounted, '}so it may hold writes: left alone (resolve by hand)`);
  const kept = (await zfs.childNames(env.conflictsRoot)).filter((name) => name.startsWith(`${env.conflictsRoot}/${project}-`) && name.endsWith('-replica')).length;
  if (kept >= MAX_KEPT_REPLICAS) throw new Error(`keep-aside: ${env.host} already keeps ${kept} diverged replicas of ${project} in ${env.conflictsRoot} (at most ${MAX_KEPT_REPLICAS}): resolve by hand (storagectl conflicts)`);
  const aside = await keepAside(zfs, ds, env.conflictsRoot, project, new Date(env.now?.() ?? Date.now()), 'replica');
  stdout.write(JSON.stringify({ keptAside: ds, as: aside }) + '\n');
  return { keptAside: ds, as: aside };
}

/**
 * A replication stream into <replicasRoot>/<project>: its header is read and checked
 * before any zfs command (one filesystem, the project's own, no children or volumes);
 * zfs then receives it with the host-affecting properties overridden (OpenZFS -o/-x)
 * or, where zfs cannot (zfs-fuse), reset before the session ends. Bounded in time and
 * in concurrent receives per peer.
 */
async function receive(env: ReceiverEnv, project: string, stdin: Readable): Promise<Record<string, unknown>> {
  const { zfs, replicasRoot } = env;
  const slot = env.receiveSlots ? acquireSlot(env.receiveSlots.dir, env.peer!, env.receiveSlots.perPeer) : undefined;
  if (slot === null) throw new Refusal(`${env.peer} already runs ${env.receiveSlots!.perPeer} receives on ${env.host} (receiver.maxReceivesPerPeer)`);
  try {
    let header: StreamHeader;
    let stream: Readable;
    try {
      ({ header, stream } = await readStreamHeader(stdin));
    } catch (e) {
      throw new Refusal(`unreadable stream header: ${(e as Error).message}`);
    }
    const caps = await zfs.capabilities();
    const problem = checkStream(header, project, { canOverride: caps.recvPropertyOverride });
    if (problem) throw new Refusal(problem);
    await zfs.ensureDataset(replicasRoot, { parents: true, canmount: 'off', mountpoint: 'none', readonly: true });
    const target = `${replicasRoot}/${project}`;
    const recv = await zfs.recv({ target, noMount: true, resumable: true, setProps: { ...REPLICA_OVERRIDES }, excludeProps: RECV_EXCLUDE });
    const limit = (env.sessionTimeLimitSeconds ?? 6 * 3600) * 1000;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      recv.kill();
      stream.destroy();
    }, limit);
    try {
      await Promise.all([pipeline(stream, recv.stream).catch((e: Error) => recv.done.then(() => (wholeStreamTaken(stream, e) ? undefined : Promise.reject(e)))), recv.done]);
    } catch (e) {
      if (timedOut) throw new Error(`receive into ${target} ran past the session limit of ${limit / 1000} s and was stopped`);
      throw e;
    } finally {
      clearTimeout(timer);
    }
    // an -R header lists what the sender declares; a crafted stream can carry more
    // substreams than it declares: what arrived under the replica is checked too
    const undeclared = await zfs.childNames(target);
    if (undeclared.length) await quarantine(zfs, undeclared);
    const reset = caps.recvPropertyOverride ? [] : await resetDenied(zfs, target, caps.implementation);
    if (undeclared.length) {
      throw new Refusal(`the stream carried undeclared child datasets (${undeclared.join(', ')}): they are kept unmounted and readonly for an operator (storagectl conflicts); the replica itself was received`);
    }
    return { received: header.toname, ...(reset.length ? { reset } : {}) };
  } finally {
    slot?.release();
  }
}

/** Datasets a stream brought that no replica may have: never mounted, never written, never destroyed by us. */
async function quarantine(zfs: Zfs, datasets: readonly string[]): Promise<void> {
  for (const ds of datasets) {
    await zfs.set(ds, { canmount: 'off', readonly: 'on' }).catch(() => undefined);
    const { mounted } = await zfs.get(ds, ['mounted']).catch(() => ({ mounted: 'no' }));
    if (mounted === 'yes') await zfs.unmount(ds, { force: true }).catch(() => undefined);
  }
}

/**
 * zfs-fuse has no recv -o/-x: the received values of the denied properties (and a
 * readonly=off) are put back to the replica's own (inherit; a safe value for those that
 * do not inherit), before anything mounts it (the stream's mountpoint was refused).
 */
async function resetDenied(zfs: Zfs, dataset: string, implementation: string): Promise<string[]> {
  const sources = await zfs.getWithSource(dataset, [...new Set([...deniedKnownTo(implementation), ...Object.keys(REPLICA_OVERRIDES)])]);
  const plan = propertiesToReset(sources);
  for (const p of plan.inherit) await zfs.inherit(dataset, p);
  if (Object.keys(plan.set).length) await zfs.set(dataset, plan.set);
  return [...plan.inherit, ...Object.keys(plan.set)];
}

/**
 * Replica -> primary: only the dataset the caller expects (its newest snapshot has the
 * guid the caller chose), renamed under the projects root; the replica's overrides and
 * every denied property back to the host's own values; mounted. Idempotent: a re-run
 * finds the promoted dataset and checks the same guid.
 */
async function promote(env: ReceiverEnv, project: string, guid: string, stdout: Writable): Promise<Record<string, unknown>> {
  const { zfs, replicasRoot } = env;
  if (!env.projectsRoot) throw new Error('promote: this receiver has no projects root configured');
  const from = `${replicasRoot}/${project}`;
  const to = `${env.projectsRoot}/${project}`;
  const found = (await zfs.listSnapshots([from, to])).snapshots;
  const fromSnaps = found.get(from);
  let toSnaps = found.get(to);
  let keptAside: string | undefined;
  if (fromSnaps && toSnaps) {
    // a copy from an earlier time this host served the project, fenced (unmounted) by the
    // failover that moved it away and never demoted by its agent (it demotes what is
    // mounted): the caller chose the replica, so the stale copy is set aside as a demote
    // does (kept, never destroyed) and the replica promoted. A mounted one is left alone.
    const { mounted } = await zfs.get(to, ['mounted']);
    if (mounted !== 'no' || !env.conflictsRoot) throw new Error(`promote: both ${from} and ${to} exist on ${env.host}${mounted !== 'no' ? ` and ${to} is mounted` : ''}: resolve by hand (storagectl conflicts)`);
    keptAside = await keepAside(zfs, to, env.conflictsRoot, project, new Date(env.now?.() ?? Date.now()));
    toSnaps = undefined;
  }
  const snaps = toSnaps ?? fromSnaps;
  if (!snaps) throw new Error(`promote: ${env.host} holds no replica of ${project} (${from} does not exist)`);
  const newest = snaps[snaps.length - 1];
  // already promoted by an earlier run (it may have snapshotted since): the chosen guid is in its history
  // (and mounted: serving since; a stale unmounted copy must have the guid as its newest)
  const chosen = newest?.guid === guid || (toSnaps !== undefined && toSnaps.some((s) => s.guid === guid) && (await zfs.get(to, ['mounted'])).mounted === 'yes');
  if (!chosen) {
    throw new Error(`promote: ${toSnaps ? to : from}'s newest snapshot is ${newest ? `${newest.snap} (guid ${newest.guid})` : 'none'}, not the expected guid ${guid}: not promoting a dataset the caller did not choose`);
  }
  if (!toSnaps) await zfs.rename(from, to);
  await zfs.set(to, { canmount: 'noauto' });
  const sources = await zfs.getWithSource(to, [...deniedKnownTo((await zfs.capabilities()).implementation), 'readonly']);
  const plan = propertiesToReset(sources, { primary: true });
  for (const p of plan.inherit) await zfs.inherit(to, p);
  if (Object.keys(plan.set).length) await zfs.set(to, plan.set);
  const { mounted, mountpoint } = await zfs.get(to, ['mounted', 'mountpoint']);
  if (mounted !== 'yes') await zfs.mount(to);
  stdout.write(JSON.stringify({ promoted: to, mountpoint, guid, ...(keptAside ? { keptAside } : {}) }) + '\n');
  return { promoted: to, guid, ...(keptAside ? { keptAside } : {}) };
}

/**
 * The named projects' replicas under the root (a scoped listing of just those datasets:
 * what the cycle asks after a transfer and in its audit slice, and what the unscoped
 * `list` asks for the caller's own projects). A named project with no replica here is
 * absent from the answer. The whole tree is never listed.
 */
export async function listReplicas(env: ReceiverEnv, projects: readonly string[]): Promise<RemoteListing> {
  const { zfs, replicasRoot } = env;
  const caps = await zfs.capabilities();
  const listing: RemoteListing = { protocol: PROTOCOL, host: env.host, implementation: caps.version, datasets: {} };
  if (projects.length === 0) return listing;
  const scoped = await zfs.listSnapshots(projects.map((p) => `${replicasRoot}/${p}`));
  const found = [...scoped.snapshots.keys()];
  const tokens = caps.recvResumable && found.length ? (await zfs.getMany(found, ['receive_resume_token'])).values : new Map<string, Record<string, string>>();
  for (const [name, snaps] of scoped.snapshots) {
    const token = tokens.get(name)?.receive_resume_token;
    listing.datasets[name.slice(replicasRoot.length + 1)] = { snapshots: snaps, ...(token && token !== '-' ? { resumeToken: token } : {}) };
  }
  return listing;
}

// `storagectl serve-ssh`: the forced command of the replication key in a target's
// authorized_keys. It runs exactly one protocol command (see protocol.ts) against its
// configured replicas root and nothing else. Refusals go to stderr and the audit log,
// and no zfs command runs for them. Replicas are kept unmounted and readonly.
import { appendFileSync } from 'node:fs';
import type { Writable } from 'node:stream';
import { Zfs, ZfsCommandError } from '../zfs/index.js';
import { isProjectId } from '../util/validate.js';
import { parseRemoteCommand, RefusedCommand, PROTOCOL, type RemoteCommand, type RemoteListing } from './protocol.js';

export interface ReceiverEnv {
  zfs: Zfs;
  host: string;
  replicasRoot: string;
  /** where primaries live (promote renames a replica there); unset = promote/fence refused */
  projectsRoot?: string;
  auditLog?: string;
  /** SSH_CLIENT of the session, for the audit log */
  client?: string;
}

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_REFUSED = 2;

function audit(env: ReceiverEnv, entry: Record<string, unknown>): void {
  if (!env.auditLog) return;
  try {
    appendFileSync(env.auditLog, JSON.stringify({ ts: new Date().toISOString(), component: 'serve-ssh', host: env.host, client: env.client ?? null, ...entry }) + '\n');
  } catch {
    /* the audit log must not break replication */
  }
}

/** Runs one command; returns the process exit code. Never throws. */
/** `recv` makes zfs read fd 0 of this process directly (see Zfs.recvFromStdin). */
export async function serve(env: ReceiverEnv, command: string | undefined, stdout: Writable, stderr: Writable): Promise<number> {
  const started = Date.now();
  let cmd: RemoteCommand;
  try {
    cmd = parseRemoteCommand(command);
  } catch (e) {
    const msg = e instanceof RefusedCommand ? e.message : `refused: ${(e as Error).message}`;
    stderr.write(`storagectl serve-ssh: ${msg}\n`);
    audit(env, { command: command ?? null, result: 'refused', reason: msg });
    return EXIT_REFUSED;
  }
  try {
    const extra = await run(env, cmd, stdout);
    audit(env, { command, result: 'ok', durationMs: Date.now() - started, ...extra });
    return EXIT_OK;
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    stderr.write(`storagectl serve-ssh: ${cmd.op} failed: ${msg}\n`);
    audit(env, { command, result: 'failed', error: msg, durationMs: Date.now() - started });
    return EXIT_FAILED;
  }
}

async function run(env: ReceiverEnv, cmd: RemoteCommand, stdout: Writable): Promise<Record<string, unknown>> {
  const { zfs, replicasRoot } = env;
  switch (cmd.op) {
    case 'capabilities': {
      stdout.write(JSON.stringify({ protocol: PROTOCOL, host: env.host, capabilities: await zfs.capabilities() }) + '\n');
      return {};
    }
    case 'list': {
      const listing = await listReplicas(env, cmd.projects);
      stdout.write(JSON.stringify(listing) + '\n');
      return { datasets: Object.keys(listing.datasets).length };
    }
    case 'recv': {
      await zfs.ensureDataset(replicasRoot, { parents: true, canmount: 'off', mountpoint: 'none', readonly: true });
      const target = `${replicasRoot}/${cmd.project}`;
      const caps = await zfs.capabilities();
      const recv = await zfs.recvFromStdin({ target, noMount: true, resumable: true, setProps: caps.recvPropertyOverride ? { readonly: 'on' } : undefined, excludeProps: caps.recvPropertyOverride ? ['mountpoint'] : undefined });
      await recv.done;
      if (!caps.recvPropertyOverride) {
        // a stream may carry a local readonly=off (e.g. from a promoted replica): replicas stay readonly
        const { readonly } = await zfs.get(target, ['readonly']);
        if (readonly !== 'on') await zfs.set(target, { readonly: 'on' });
      }
      return {};
    }
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
    case 'promote': {
      // replica -> primary: rename under the projects root, drop the replica's readonly
      // and mountpoint overrides (inherit the root's), mount. Idempotent.
      if (!env.projectsRoot) throw new Error('promote: this receiver has no projects root configured');
      const from = `${replicasRoot}/${cmd.project}`;
      const to = `${env.projectsRoot}/${cmd.project}`;
      if (!(await zfs.exists(to))) await zfs.rename(from, to);
      await zfs.set(to, { canmount: 'noauto' });
      await zfs.inherit(to, 'readonly');
      await zfs.inherit(to, 'mountpoint');
      const { mounted, mountpoint } = await zfs.get(to, ['mounted', 'mountpoint']);
      if (mounted !== 'yes') await zfs.mount(to);
      stdout.write(JSON.stringify({ promoted: to, mountpoint }) + '\n');
      return { promoted: to };
    }
    case 'fence': {
      if (!env.projectsRoot) throw new Error('fence: this receiver has no projects root configured');
      const ds = `${env.projectsRoot}/${cmd.project}`;
      if (!(await zfs.exists(ds))) {
        stdout.write(JSON.stringify({ fenced: ds, present: false }) + '\n');
        return { fenced: ds };
      }
      const { mounted } = await zfs.get(ds, ['mounted']);
      if (mounted === 'yes') await zfs.unmount(ds, { force: true });
      await zfs.set(ds, { readonly: 'on' });
      stdout.write(JSON.stringify({ fenced: ds, present: true }) + '\n');
      return { fenced: ds };
    }
    case 'send': {
      // one snapshot of a replica, as a full stream (restore on the primary receives it
      // into a new dataset of its own): no -R, so nothing but that snapshot's data
      const snapshot = `${replicasRoot}/${cmd.project}@${cmd.snap}`;
      const send = await zfs.sendToStdout({ snapshot, replicate: false });
      await send.done;
      return { sent: snapshot };
    }
    case 'hold':
      await zfs.hold(cmd.tag, [`${replicasRoot}/${cmd.project}@${cmd.snap}`]);
      return {};
    case 'release':
      await zfs.release(cmd.tag, [`${replicasRoot}/${cmd.project}@${cmd.snap}`]);
      return {};
  }
}

/**
 * The replicas under the root: all of them (one listing of the tree, for repair-catalog),
 * or only the named projects (a scoped listing of just those datasets: what the cycle
 * asks after a transfer and in its audit slice). A named project with no replica here is
 * absent from the answer.
 */
export async function listReplicas(env: ReceiverEnv, projects?: readonly string[]): Promise<RemoteListing> {
  const { zfs, replicasRoot } = env;
  const caps = await zfs.capabilities();
  const listing: RemoteListing = { protocol: PROTOCOL, host: env.host, implementation: caps.version, datasets: {} };
  if (projects) {
    if (projects.length === 0) return listing;
    const names = projects.map((p) => `${replicasRoot}/${p}`);
    const scoped = await zfs.listSnapshots(names);
    const found = [...scoped.snapshots.keys()];
    const tokens = caps.recvResumable && found.length ? (await zfs.getMany(found, ['receive_resume_token'])).values : new Map<string, Record<string, string>>();
    for (const [name, snaps] of scoped.snapshots) {
      const token = tokens.get(name)?.receive_resume_token;
      listing.datasets[name.slice(replicasRoot.length + 1)] = { snapshots: snaps, ...(token && token !== '-' ? { resumeToken: token } : {}) };
    }
    return listing;
  }
  let tree;
  try {
    tree = await zfs.list(replicasRoot, { depth: 1, props: caps.recvResumable ? ['receive_resume_token'] : [] });
  } catch (e) {
    if (e instanceof ZfsCommandError && e.kind === 'not-found') return listing;
    throw e;
  }
  for (const ds of tree.values()) {
    const id = ds.name.slice(replicasRoot.length + 1);
    if (ds.name === replicasRoot || !isProjectId(id)) continue;
    const token = ds.props.receive_resume_token;
    listing.datasets[id] = {
      snapshots: ds.snapshots.map((s) => ({ snap: s.snap, guid: s.guid, createtxg: s.createtxg, creation: s.creation })),
      ...(token && token !== '-' ? { resumeToken: token } : {}),
    };
  }
  return listing;
}

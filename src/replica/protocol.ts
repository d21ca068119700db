// The replication protocol spoken over SSH to `storagectl serve-ssh` (the forced
// command in the target's authorized_keys). The client's command line arrives in
// SSH_ORIGINAL_COMMAND; it is parsed here by a strict grammar, never by a shell:
//
//   storage-v1 capabilities
//   storage-v1 list                        (the caller's own projects' replicas)
//   storage-v1 list <uuid> [<uuid> ...]    (only the named replicas, at most LIST_MAX)
//   storage-v1 recv <project-uuid>
//   storage-v1 abort-resume <project-uuid>
//   storage-v1 rollback-head <project-uuid>   (a replica whose newest snapshot was destroyed by hand:
//                                              its never-mounted, readonly head back to its newest snapshot)
//   storage-v1 keep-aside <project-uuid> <guid>   (a replica that diverged from its primary,
//                                              at newest guid <guid>: renamed into conflicts/,
//                                              never destroyed; the primary then sends it whole)
//   storage-v1 promote <project-uuid> <token> <guid>
//                                          (failover/move: replica -> mounted primary; the
//                                           caller's live fencing token, and the guid the
//                                           replica's newest snapshot must have)
//   storage-v1 fence <project-uuid> <token>   (failover: stop the old primary's writes)
//   storage-v1 send <project-uuid>@<snapshot>  (restore: one snapshot of a replica, full stream on stdout)
//
// The grammar says only what a command is; who may run it is authorize.ts's decision
// (see trust-model.md beside this file).
import * as v from '../util/validate.js';

export const PROTOCOL = 'storage-v1';

export type RemoteCommand =
  | { op: 'capabilities' }
  | { op: 'list'; projects?: string[] }
  | { op: 'recv'; project: string }
  | { op: 'abort-resume'; project: string }
  | { op: 'rollback-head'; project: string }
  | { op: 'keep-aside'; project: string; guid: string }
  | { op: 'promote'; project: string; token: number; guid: string }
  | { op: 'fence'; project: string; token: number }
  | { op: 'send'; project: string; snap: string };

/** The operations that name one project (every one but capabilities and list). */
export type ProjectCommand = Exclude<RemoteCommand, { op: 'capabilities' } | { op: 'list' }>;

export class RefusedCommand extends Error {
  constructor(reason: string, command: string) {
    super(`refused: ${reason}: ${v.describe(command)}`);
    this.name = 'RefusedCommand';
  }
}

const SAFE = /^[A-Za-z0-9 _.:@-]*$/;

/** project ids per scoped `list` (the cycle asks in batches of this many) */
export const LIST_MAX = 64;
const MAX_COMMAND = 4096;

export function parseRemoteCommand(command: string | undefined): RemoteCommand {
  if (command === undefined || command === '') throw new RefusedCommand('no command (interactive sessions are not allowed)', '');
  if (command.length > MAX_COMMAND) throw new RefusedCommand(`command longer than ${MAX_COMMAND} characters`, command);
  if (!SAFE.test(command)) throw new RefusedCommand('command contains characters outside [A-Za-z0-9 _.:@-]', command);
  const words = command.split(' ');
  if (words.some((w) => w === '')) throw new RefusedCommand('empty word (leading, trailing or double space)', command);
  if (words[0] !== PROTOCOL) throw new RefusedCommand(`not a ${PROTOCOL} command`, command);
  const [, op, ...args] = words;
  const arity = (n: number) => {
    if (args.length !== n) throw new RefusedCommand(`${op} takes ${n} argument(s), got ${args.length}`, command);
  };
  const project = (s: string) => {
    try {
      return v.projectId(s, 'ssh command');
    } catch (e) {
      throw new RefusedCommand((e as Error).message, command);
    }
  };
  const projectSnap = (s: string): [string, string] => {
    const at = s.indexOf('@');
    if (at < 0) throw new RefusedCommand('expected <project>@<snapshot>', command);
    const snap = s.slice(at + 1);
    try {
      v.snapshotName(snap, 'ssh command');
    } catch (e) {
      throw new RefusedCommand((e as Error).message, command);
    }
    return [project(s.slice(0, at)), snap];
  };
  const token = (s: string): number => {
    if (!/^[1-9][0-9]{0,14}$/.test(s)) throw new RefusedCommand(`fencing token ${v.describe(s)} is not a positive integer`, command);
    return Number(s);
  };
  const guid = (s: string): string => {
    if (!/^[0-9]{1,20}$/.test(s)) throw new RefusedCommand(`guid ${v.describe(s)} is not a decimal number`, command);
    return s;
  };
  switch (op) {
    case 'capabilities':
      arity(0);
      return { op };
    case 'list': {
      if (args.length === 0) return { op };
      if (args.length > LIST_MAX) throw new RefusedCommand(`list takes at most ${LIST_MAX} project ids, got ${args.length}`, command);
      const projects = args.map(project);
      if (new Set(projects).size !== projects.length) throw new RefusedCommand('list names a project twice', command);
      return { op, projects };
    }
    case 'recv':
    case 'abort-resume':
    case 'rollback-head':
      arity(1);
      return { op, project: project(args[0]!) };
    case 'fence':
      arity(2);
      return { op, project: project(args[0]!), token: token(args[1]!) };
    case 'keep-aside':
      arity(2);
      return { op, project: project(args[0]!), guid: guid(args[1]!) };
    case 'promote':
      arity(3);
      return { op, project: project(args[0]!), token: token(args[1]!), guid: guid(args[2]!) };
    case 'send': {
      arity(1);
      const [id, snap] = projectSnap(args[0]!);
      return { op, project: id, snap };
    }
    default:
      throw new RefusedCommand(`unknown operation ${v.describe(op ?? '')}`, command);
  }
}

export function formatRemoteCommand(c: RemoteCommand): string {
  switch (c.op) {
    case 'capabilities':
      return `${PROTOCOL} ${c.op}`;
    case 'list':
      if (c.projects && c.projects.length > LIST_MAX) throw new Error(`list: at most ${LIST_MAX} projects per command`);
      return [PROTOCOL, 'list', ...(c.projects ?? []).map((x) => v.projectId(x))].join(' ');
    case 'recv':
    case 'abort-resume':
    case 'rollback-head':
      return `${PROTOCOL} ${c.op} ${v.projectId(c.project)}`;
    case 'fence':
      return `${PROTOCOL} fence ${v.projectId(c.project)} ${checkToken(c.token)}`;
    case 'keep-aside':
      if (!/^[0-9]{1,20}$/.test(c.guid)) throw new Error(`keep-aside: guid ${v.describe(c.guid)} is not a decimal number`);
      return `${PROTOCOL} keep-aside ${v.projectId(c.project)} ${c.guid}`;
    case 'promote':
      if (!/^[0-9]{1,20}$/.test(c.guid)) throw new Error(`promote: guid ${v.describe(c.guid)} is not a decimal number`);
      return `${PROTOCOL} promote ${v.projectId(c.project)} ${checkToken(c.token)} ${c.guid}`;
    case 'send':
      return `${PROTOCOL} send ${v.projectId(c.project)}@${v.snapshotName(c.snap)}`;
  }
}

function checkToken(t: number): number {
  if (!Number.isSafeInteger(t) || t < 1 || t >= 1e15) throw new Error(`fencing token ${t} is not a positive integer below 1e15`);
  return t;
}

/** What `list` returns: the named (or the caller's own) replicas that exist under the receiver's root, by project id. */
export interface RemoteListing {
  protocol: typeof PROTOCOL;
  host: string;
  implementation: string;
  datasets: Record<string, { snapshots: Array<{ snap: string; guid: string; createtxg: number; creation: number }>; resumeToken?: string }>;
}

/** Validates a listing received from a remote host (it is input from outside). */
export function checkListing(raw: unknown, from: string): RemoteListing {
  const bad = (why: string) => new Error(`malformed listing from ${from}: ${why}`);
  if (typeof raw !== 'object' || raw === null) throw bad('not an object');
  const l = raw as Partial<RemoteListing>;
  if (l.protocol !== PROTOCOL) throw bad(`protocol ${JSON.stringify(l.protocol)}, expected ${PROTOCOL}`);
  if (typeof l.datasets !== 'object' || l.datasets === null) throw bad('no datasets');
  for (const [id, ds] of Object.entries(l.datasets)) {
    if (!v.isProjectId(id)) throw bad(`dataset key ${v.describe(id)} is not a project id`);
    if (!Array.isArray(ds.snapshots)) throw bad(`${id}: snapshots is not a list`);
    for (const s of ds.snapshots) {
      if (typeof s.snap !== 'string' || typeof s.guid !== 'string' || !/^\d{1,20}$/.test(s.guid) || typeof s.createtxg !== 'number' || typeof s.creation !== 'number') {
        throw bad(`${id}: malformed snapshot entry ${JSON.stringify(s).slice(0, 200)}`);
      }
      v.snapshotName(s.snap, `listing from ${from}`);
    }
    if (ds.resumeToken !== undefined && (typeof ds.resumeToken !== 'string' || !/^[0-9a-f-]{1,4096}$/i.test(ds.resumeToken))) throw bad(`${id}: malformed resume token`);
  }
  return l as RemoteListing;
}

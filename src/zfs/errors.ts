// Typed errors for zfs/zpool commands. Every error carries the exact argv that ran,
// the exit code (or signal) and the command's stderr, so an operator sees
// "zfs destroy tank/p@x (exit 1): cannot destroy ...: dataset is busy", never "failed".

export type ZfsErrorKind =
  | 'busy'
  | 'not-found'
  | 'exists'
  | 'no-common-snapshot'
  | 'destination-modified'
  | 'held'
  | 'unsupported'
  | 'timeout'
  | 'other';

export class ZfsCommandError extends Error {
  readonly argv: readonly string[];
  readonly exitCode: number | null;
  readonly signal: string | null;
  readonly stderr: string;
  readonly kind: ZfsErrorKind;
  constructor(argv: readonly string[], exitCode: number | null, signal: string | null, stderr: string, kind?: ZfsErrorKind) {
    const status = signal ? `signal ${signal}` : `exit ${exitCode}`;
    const err = stderr.trim().split('\n').filter((l) => !/^\s*(usage:|For the (property|delegated))/.test(l)).slice(0, 8).join(' | ');
    super(`${formatArgv(argv)} (${status}): ${err || '(no stderr)'}`);
    this.name = 'ZfsCommandError';
    this.argv = argv;
    this.exitCode = exitCode;
    this.signal = signal;
    this.stderr = stderr;
    this.kind = kind ?? classify(stderr);
  }
}

/** zfs said "dataset is busy" (mounted and in use, or a rename/rollback on a busy fs). */
export class ZfsBusyError extends ZfsCommandError {}
/** The dataset, snapshot or pool named does not exist. */
export class ZfsNotFoundError extends ZfsCommandError {}
/** The dataset or snapshot to create already exists. */
export class ZfsExistsError extends ZfsCommandError {}
/** An incremental stream does not apply: the target lacks the stream's base snapshot. */
export class ZfsNoCommonSnapshotError extends ZfsCommandError {}
/** The receiving dataset changed since its newest snapshot (and -F was not given). */
export class ZfsDestinationModifiedError extends ZfsCommandError {}
/** The implementation does not offer this feature (see Capabilities). */
export class ZfsUnsupportedError extends Error {
  constructor(feature: string, impl: string) {
    super(`${feature} is not supported by ${impl}`);
    this.name = 'ZfsUnsupportedError';
  }
}

const PATTERNS: Array<[ZfsErrorKind, RegExp]> = [
  ['held', /tag already exists on this dataset|it has user holds|dataset is busy.*hold|holds? (exist|present)/i],
  ['destination-modified', /has been modified\s+since most recent snapshot|destination has been modified/i],
  ['no-common-snapshot', /does not match incremental source|incremental source .*(does not exist|must be earlier)|no common snapshot|destination has snapshots|most recent snapshot of .* does not|cannot receive incremental stream: destination .* does not exist|destination .* does not exist.*incremental|not an earlier snapshot from the same fs|local origin for clone .* does not exist/i],
  ['busy', /dataset is busy|pool or dataset is busy|device or resource busy|is busy/i],
  ['exists', /already exists|destination '[^']*' exists/i],
  ['not-found', /does not exist|no such pool|no such dataset|could not find any snapshots|dataset not found|no datasets available/i],
];

export function classify(stderr: string): ZfsErrorKind {
  for (const [kind, re] of PATTERNS) if (re.test(stderr)) return kind;
  return 'other';
}

export function makeZfsError(argv: readonly string[], exitCode: number | null, signal: string | null, stderr: string): ZfsCommandError {
  const kind = classify(stderr);
  switch (kind) {
    case 'busy':
      return new ZfsBusyError(argv, exitCode, signal, stderr, kind);
    case 'not-found':
      return new ZfsNotFoundError(argv, exitCode, signal, stderr, kind);
    case 'exists':
      return new ZfsExistsError(argv, exitCode, signal, stderr, kind);
    case 'no-common-snapshot':
      return new ZfsNoCommonSnapshotError(argv, exitCode, signal, stderr, kind);
    case 'destination-modified':
      return new ZfsDestinationModifiedError(argv, exitCode, signal, stderr, kind);
    default:
      return new ZfsCommandError(argv, exitCode, signal, stderr, kind);
  }
}

/** Renders argv for messages and logs (quoted where needed); never executed. */
export function formatArgv(argv: readonly string[]): string {
  return argv.map((a) => (/^[A-Za-z0-9_./:@=,%+-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
}

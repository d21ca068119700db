// Validation of every identifier that reaches a zfs command line, an SSH command or
// the catalog. Every check runs before any command is built; a failure names the
// value (escaped), what it is, and where it came from.

export class ValidationError extends Error {
  readonly what: string;
  readonly where: string;
  constructor(what: string, where: string, reason: string, value: unknown) {
    super(`invalid ${what}${where ? ` in ${where}` : ''}: ${describe(value)} ${reason}`);
    this.name = 'ValidationError';
    this.what = what;
    this.where = where;
  }
}

/** A printable, bounded rendering of an untrusted value for error messages. */
export function describe(value: unknown): string {
  if (typeof value !== 'string') return `(${value === null ? 'null' : typeof value})`;
  const shown = value.length > 80 ? `${value.slice(0, 80)}…` : value;
  return JSON.stringify(shown) + (value.length > 80 ? ` (${value.length} chars)` : '');
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Project ids are canonical lowercase UUIDs (any version). */
export function projectId(value: unknown, where = ''): string {
  if (typeof value !== 'string') throw new ValidationError('project id', where, 'is not a string', value);
  if (!UUID_RE.test(value)) {
    const hint = UUID_RE.test(value.toLowerCase()) ? ' (use lowercase)' : '';
    throw new ValidationError('project id', where, `is not a canonical lowercase UUID like 1b4e28ba-2fa1-11d2-883f-0016d3cca427${hint}`, value);
  }
  return value;
}

export function isProjectId(value: unknown): value is string {
  return typeof value === 'string' && UUID_RE.test(value);
}

// ZFS component names allow [A-Za-z0-9_.:-] (and space, which we refuse). We also
// require an alphanumeric first character so that nothing can look like an option
// ("-R") or a relative path ("..").
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]*$/;
export const MAX_SNAPSHOT_NAME = 100;

/** The part after '@'. Automatic names are ISO-8601 UTC timestamps; others are "named". */
export function snapshotName(value: unknown, where = ''): string {
  if (typeof value !== 'string') throw new ValidationError('snapshot name', where, 'is not a string', value);
  if (value.length === 0) throw new ValidationError('snapshot name', where, 'is empty', value);
  if (value.length > MAX_SNAPSHOT_NAME) throw new ValidationError('snapshot name', where, `is longer than ${MAX_SNAPSHOT_NAME} characters`, value);
  if (!NAME_RE.test(value)) {
    throw new ValidationError('snapshot name', where, 'may only contain A-Z a-z 0-9 _ . : - and must start with a letter or digit', value);
  }
  if (value.includes('..')) throw new ValidationError('snapshot name', where, 'must not contain ".."', value);
  return value;
}

/** A dataset path: pool/comp/comp, each component a safe name, no '@' or '#'. */
export function datasetName(value: unknown, where = ''): string {
  if (typeof value !== 'string') throw new ValidationError('dataset name', where, 'is not a string', value);
  if (value.length === 0) throw new ValidationError('dataset name', where, 'is empty', value);
  if (value.length > 200) throw new ValidationError('dataset name', where, 'is longer than 200 characters', value);
  for (const comp of value.split('/')) {
    if (!NAME_RE.test(comp) || comp.includes('..')) {
      throw new ValidationError('dataset name', where, 'must be components of A-Z a-z 0-9 _ . : - separated by "/", each starting with a letter or digit', value);
    }
  }
  return value;
}

/** dataset@snap, both parts validated. */
export function snapshotPath(value: unknown, where = ''): string {
  if (typeof value !== 'string') throw new ValidationError('snapshot', where, 'is not a string', value);
  const at = value.indexOf('@');
  if (at < 0 || value.indexOf('@', at + 1) >= 0) throw new ValidationError('snapshot', where, 'must be of the form dataset@name', value);
  datasetName(value.slice(0, at), where);
  snapshotName(value.slice(at + 1), where);
  return value;
}

/** A hold tag. */
export function holdTag(value: unknown, where = ''): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 200 || !NAME_RE.test(value)) {
    throw new ValidationError('hold tag', where, 'must be 1-200 characters of A-Z a-z 0-9 _ . : - starting with a letter or digit', value);
  }
  return value;
}

const PROP_RE = /^[a-z][a-z0-9_]*(:[a-z0-9_.:-]+)?$/;
/** A native property name (quota) or a user property (org.example:key). */
export function propertyName(value: unknown, where = ''): string {
  if (typeof value !== 'string' || value.length > 100 || !PROP_RE.test(value)) {
    throw new ValidationError('property name', where, 'must be a lowercase native property or a user property like "fleet:owner"', value);
  }
  return value;
}

/** Property values: printable, no control characters, no tabs/newlines (they break -H parsing). */
export function propertyValue(value: unknown, where = ''): string {
  if (typeof value !== 'string') throw new ValidationError('property value', where, 'is not a string', value);
  if (value.length > 1024) throw new ValidationError('property value', where, 'is longer than 1024 characters', value);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(value)) throw new ValidationError('property value', where, 'contains control characters', value);
  return value;
}

/** Absolute mountpoint path without '..' components or control characters, or 'none'/'legacy'. */
export function mountpoint(value: unknown, where = ''): string {
  if (value === 'none' || value === 'legacy') return value;
  if (typeof value !== 'string' || !value.startsWith('/') || value.length > 1000) {
    throw new ValidationError('mountpoint', where, 'must be an absolute path, "none" or "legacy"', value);
  }
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(value) || value.split('/').some((c) => c === '..' || c === '.')) {
    throw new ValidationError('mountpoint', where, 'must not contain ".", ".." components or control characters', value);
  }
  return value;
}

/** A host id as used in the catalog, hold tags and config. */
const HOST_RE = /^[a-z0-9][a-z0-9.-]{0,62}$/;
export function hostId(value: unknown, where = ''): string {
  if (typeof value !== 'string' || !HOST_RE.test(value) || value.includes('..')) {
    throw new ValidationError('host id', where, 'must be 1-63 lowercase letters, digits, "." or "-", starting with a letter or digit', value);
  }
  return value;
}

/** The automatic snapshot name format: optional prefix, then ISO-8601 UTC to the second. */
const AUTO_RE = /^(?:([A-Za-z0-9][A-Za-z0-9_.-]*?)[_-])?(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)$/;
export function parseAutoSnapshotName(name: string): { prefix: string; time: Date } | undefined {
  const m = AUTO_RE.exec(name);
  if (!m) return undefined;
  const t = new Date(m[2]!);
  if (Number.isNaN(t.getTime())) return undefined;
  return { prefix: m[1] ?? '', time: t };
}

export function autoSnapshotName(now: Date, prefix = ''): string {
  const iso = now.toISOString().replace(/\.\d{3}Z$/, 'Z');
  return prefix ? `${prefix}_${iso}` : iso;
}

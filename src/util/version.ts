// The product's version: package.json's, read once from beside the built code
// (dist/src/util -> the repository or the package root, /usr/lib/storage-agent).
import { readFileSync } from 'node:fs';

let cached: string | undefined;

export function productVersion(): string {
  if (cached === undefined) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
      cached = typeof pkg.version === 'string' ? pkg.version : 'unknown';
    } catch {
      cached = 'unknown';
    }
  }
  return cached;
}

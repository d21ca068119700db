// A catalog that counts the calls made through it, by method, split into reads and
// writes: tests and benchmarks assert what a cycle costs the catalog (an idle cycle: O(1)
// reads, no write). It forwards every call unchanged to the real catalog. Every method not
// in WRITES is a read (getHost, listHosts, ..., getLock).
import type { Catalog } from '../../src/catalog/types.js';

const WRITES = new Set(['upsertHost', 'heartbeat', 'createProject', 'setTargets', 'setLocation', 'upsertReplica', 'deleteReplica', 'recordNewest', 'addEvent', 'acquireLock', 'renewLock', 'releaseLock']);

export interface CatalogCounts {
  reads: number;
  writes: number;
  byMethod: Record<string, number>;
}

export function countingCatalog<C extends Catalog>(inner: C): { catalog: C; counts: () => CatalogCounts; reset: () => void } {
  let byMethod: Record<string, number> = {};
  const catalog = new Proxy(inner, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== 'function' || typeof prop !== 'string' || prop === 'close' || prop === 'constructor') return v;
      return (...args: unknown[]) => {
        byMethod[prop] = (byMethod[prop] ?? 0) + 1;
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  const counts = (): CatalogCounts => {
    let reads = 0;
    let writes = 0;
    for (const [m, n] of Object.entries(byMethod)) {
      if (WRITES.has(m)) writes += n;
      else reads += n;
    }
    return { reads, writes, byMethod: { ...byMethod } };
  };
  return { catalog, counts, reset: () => (byMethod = {}) };
}

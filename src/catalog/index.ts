import { deadAfterMs, type Config } from '../agent/config.js';
import { SqliteCatalog } from './sqlite.js';
import { CatalogError, type Catalog } from './types.js';

export * from './types.js';
export { SqliteCatalog } from './sqlite.js';

export type { CassandraCatalogOptions, ReplicationSpec } from './cassandra.js';

export const DEFAULT_CASSANDRA_KEYSPACE = 'storage_catalog';

export async function openCatalog(config: Config, o: { connectTimeoutMs?: number } = {}): Promise<Catalog> {
  const c = config.catalog;
  if (c.backend === 'sqlite') return new SqliteCatalog(c.path);
  if (c.backend === 'cassandra') {
    if (!c.contactPoints?.length || !c.localDataCenter) throw new CatalogError('catalog backend cassandra needs catalog.contactPoints and catalog.localDataCenter');
    // loaded on demand: hosts on the embedded catalog never load the driver
    const { CassandraCatalog } = await import('./cassandra.js');
    return CassandraCatalog.open({
      contactPoints: c.contactPoints,
      localDataCenter: c.localDataCenter,
      keyspace: c.keyspace ?? DEFAULT_CASSANDRA_KEYSPACE,
      ...(c.port !== undefined ? { port: c.port } : {}),
      ...(c.replication ? { replication: { class: 'NetworkTopologyStrategy' as const, datacenters: c.replication } } : {}),
      // a heartbeat outlives the dead-host period and the dead-target replacement time
      // (a host whose beat vanished reads as never seen: neither failed over nor replaced
      // on time), then disappears
      heartbeatTtlSeconds: Math.max(60, Math.ceil(10 * config.interval), Math.ceil((2 * deadAfterMs(config)) / 1000), 2 * config.placement.replaceDeadTargetAfter),
      ...(o.connectTimeoutMs !== undefined ? { connectTimeoutMs: o.connectTimeoutMs } : {}),
    });
  }
  throw new CatalogError(`catalog backend '${String(c.backend)}' is not available in this build (use 'sqlite' or 'cassandra')`);
}

import type { Config } from '../agent/config.js';
import { SqliteCatalog } from './sqlite.js';
import { CatalogError, type Catalog } from './types.js';

export * from './types.js';
export { SqliteCatalog } from './sqlite.js';

export async function openCatalog(config: Config): Promise<Catalog> {
  if (config.catalog.backend === 'sqlite') return new SqliteCatalog(config.catalog.path);
  throw new CatalogError(`catalog backend '${config.catalog.backend}' is not available in this build (use 'sqlite')`);
}

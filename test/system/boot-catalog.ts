// The boot test's catalog (test/system/boot-prepare.sh): one host and N projects it is
// primary for, in an SQLite catalog, written through the product's own catalog code.
//   node dist/test/system/boot-catalog.js CATALOG_PATH HOST IDS_FILE
import { readFileSync } from 'node:fs';
import { SqliteCatalog } from '../../src/catalog/sqlite.js';
import { projectId } from '../../src/util/validate.js';

const [path, hostId, idsFile] = process.argv.slice(2);
if (!path || !hostId || !idsFile) {
  process.stderr.write('usage: boot-catalog.js CATALOG_PATH HOST IDS_FILE\n');
  process.exit(2);
}
const ids = readFileSync(idsFile, 'utf8').split('\n').filter(Boolean).map((id, i) => projectId(id, `${idsFile} line ${i + 1}`));
const catalog = new SqliteCatalog(path);
await catalog.upsertHost({ id: hostId, datacenter: 'dc1', address: '127.0.0.1', port: 22, root: 'boot/replicas' });
for (const id of ids) await catalog.createProject({ id, primary: hostId, replicationFactor: 0, quota: null });
await catalog.close();
process.stdout.write(`${ids.length} projects registered for ${hostId} in ${path}\n`);

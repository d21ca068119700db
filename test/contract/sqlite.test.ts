// The catalog contract on the embedded SQLite backend (a temporary file shared by every
// catalog the suite opens, as by the agent and storagectl on one machine), plus the checks
// of rows read back that need raw access to the file.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { SqliteCatalog } from '../../src/catalog/sqlite.js';
import { CatalogError } from '../../src/catalog/types.js';
import { ValidationError } from '../../src/util/validate.js';
import { catalogContract, newHost, newProject } from './catalog-contract.js';

const dir = mkdtempSync(join(tmpdir(), 'catalog-contract-'));
const file = join(dir, 'catalog.db');

catalogContract('sqlite', () => Promise.resolve(new SqliteCatalog(file)));

describe('sqlite catalog: rows read back are validated', () => {
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('a corrupt project, replica or host row is an error, never a record', async () => {
    const cat = new SqliteCatalog(file);
    const raw = new Database(file);
    try {
      const id = newProject();
      const host = newHost();
      await cat.createProject({ id, primary: host, replicationFactor: 2, quota: null });
      raw.prepare('UPDATE projects SET state = ? WHERE id = ?').run('exploded', id);
      await assert.rejects(cat.getProject(id), (e: unknown) => e instanceof CatalogError && /unknown state/.test((e as Error).message));
      raw.prepare('UPDATE projects SET state = ?, primary_host = ? WHERE id = ?').run('active', 'Not A Host', id);
      await assert.rejects(cat.getProject(id), ValidationError);
      raw.prepare('UPDATE projects SET primary_host = ?, targets = ? WHERE id = ?').run(host, '["ok", "bad host"]', id);
      await assert.rejects(cat.getProject(id), ValidationError);
      raw.prepare('UPDATE projects SET targets = ? WHERE id = ?').run('[]', id);
      assert.equal((await cat.getProject(id))?.state, 'active');

      await cat.upsertReplica({ project: id, host, snapshot: 's1', guid: '42', snapshotCreation: 1, confirmedAt: 2 });
      raw.prepare('UPDATE replicas SET guid = ? WHERE project = ?').run('4x2', id);
      await assert.rejects(cat.listReplicas(id), (e: unknown) => e instanceof CatalogError && /malformed guid/.test((e as Error).message));
      raw.prepare('UPDATE replicas SET guid = ?, snapshot = ? WHERE project = ?').run('42', 'a b', id);
      await assert.rejects(cat.listReplicasByHost(host), ValidationError);

      await cat.upsertHost({ id: host, datacenter: 'dc1', address: 'x', port: 22, root: 'r' });
      raw.prepare('UPDATE hosts SET datacenter = ? WHERE id = ?').run('DC ONE', host);
      await assert.rejects(cat.getHost(host), ValidationError);
      raw.prepare('UPDATE hosts SET datacenter = ? WHERE id = ?').run('dc1', host);
    } finally {
      raw.close();
      await cat.close();
    }
  });
});

// The Debian package on a clean trixie guest, and a reboot with 1,000 projects (the
// openzfs-2.3 tier; the guest's first boot ran boot-prepare.sh, the second
// boot-measure.sh). What these tests read is this boot's real state (journal, units,
// mounts, dpkg) and the figures the two boot phases recorded.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, existsSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { requireGuest, RESULTS, ok, figure, unitProps, journal, mountedUnder } from './sys.js';

interface BootFigures {
  firstCycleMonotonicUs: string | null;
  firstCycle: Record<string, unknown> | null;
  importStartUs: string;
  importExitUs: string;
  importResult: string;
  zfsMountExitUs: string;
  agentStartUs: string;
  agentState: string;
  projectsMounted: number;
  datasets: number;
  pool: string;
}

const PROJECTS = 1000;
const VERSION = (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
let boot: BootFigures;

before(() => {
  requireGuest();
  boot = JSON.parse(readFileSync(`${RESULTS}/boot.json`, 'utf8')) as BootFigures;
});

describe('the Debian package on a clean trixie guest', () => {
  it('apt installs it; the unit is enabled and waits for its configuration (skipped, not failed)', () => {
    assert.equal(readFileSync(`${RESULTS}/package-install.rc`, 'utf8').trim(), '0', readFileSync(`${RESULTS}/package-install.log`, 'utf8').slice(-3000));
    const after = readFileSync(`${RESULTS}/package-after-install.txt`, 'utf8');
    assert.match(after, /^UnitFileState=enabled$/m);
    assert.match(after, /^ActiveState=inactive$/m, 'without /etc/storage-agent/config.yaml the unit must not run');
    assert.match(after, /^ConditionResult=no$/m);
    assert.match(after, /^Result=success$/m, 'a skipped start is not a failure');
    assert.equal(ok('dpkg-query', ['-W', '-f=${Version} ${Status}', 'storage-agent']), `${VERSION} install ok installed`);
  });

  it('storagectl --version prints the version; the files are where the unit and man expect them', () => {
    assert.equal(ok('/usr/bin/storagectl', ['--version']).trim(), VERSION);
    assert.equal(ok('/usr/bin/storage-agent', ['--version']).trim(), VERSION);
    const files = ok('dpkg', ['-L', 'storage-agent']).split('\n');
    for (const f of [
      '/usr/lib/systemd/system/storage-agent.service',
      '/usr/share/man/man8/storagectl.8.gz',
      '/usr/share/man/man8/storage-agent.8.gz',
      '/usr/share/bash-completion/completions/storagectl',
      '/usr/share/doc/storage-agent/examples/config.yaml',
      '/usr/share/doc/storage-agent/examples/sudoers',
      '/usr/lib/storage-agent/dist/src/agent/main.js',
      '/usr/lib/storage-agent/node_modules/better-sqlite3/build/Release/better_sqlite3.node',
    ])
      assert.ok(files.includes(f) && existsSync(f), `${f} is not installed by the package`);
    assert.ok(!files.some((f) => f.includes('/node_modules/typescript/')), 'dev dependencies must not be packaged');
    const man = gunzipSync(readFileSync('/usr/share/man/man8/storagectl.8.gz')).toString();
    assert.match(man, /^\.TH STORAGECTL 8 /);
    for (const c of ['move', 'failover', 'restore', 'repair-catalog', 'serve-ssh']) assert.ok(man.includes(`storagectl ${c}`), `storagectl(8) documents ${c}`);
    // the completion completes commands and a command's options
    const comp = (words: string[]) =>
      ok('bash', ['-c', 'source /usr/share/bash-completion/completions/storagectl; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _storagectl; printf "%s\\n" "${COMPREPLY[@]}"', 'x', ...words]).split('\n').filter(Boolean);
    assert.deepEqual(comp(['storagectl', 'fai']), ['failover']);
    assert.ok(comp(['storagectl', 'move', '--']).includes('--drop-source'));
    // the example configuration is valid as shipped
    assert.match(ok('/usr/bin/storagectl', ['config', 'check', '/usr/share/doc/storage-agent/examples/config.yaml']), /ok/);
    // the packaged agent runs on Debian's own Node.js, as the unit says
    assert.match(unitProps('storage-agent.service', ['ExecStart']).ExecStart!, /path=\/usr\/bin\/node ; argv\[\]=\/usr\/bin\/node \/usr\/lib\/storage-agent\/bin\/storage-agent/);
    figure(`package: ${readFileSync(`${RESULTS}/package-size.txt`, 'utf8').trim()}`);
  });
});

describe(`a reboot with ${PROJECTS} projects in the pool`, () => {
  it('the pool is imported without mounting (-N), no project is mounted, and the agent is serving', () => {
    assert.equal(boot.pool, 'boot', 'the pool was imported at boot from the cache file');
    assert.equal(boot.importResult, 'success');
    assert.match(unitProps('zfs-import-cache.service', ['ExecStart']).ExecStart!, /zpool import -c \S+ -aN|zpool import .*-N/);
    assert.equal(boot.datasets, PROJECTS + 1);
    assert.equal(boot.projectsMounted, 0, 'no project may be mounted that nobody asked for');
    assert.equal(boot.agentState, 'active');
    assert.ok(boot.firstCycleMonotonicUs, 'the agent logged a finished cycle after the boot');
    const servingS = Number(boot.firstCycleMonotonicUs) / 1e6;
    const importS = (Number(boot.importExitUs) - Number(boot.importStartUs)) / 1e6;
    const agentStartS = Number(boot.agentStartUs) / 1e6;
    const mountAllS = Number(boot.zfsMountExitUs) / 1e6;
    figure(
      `boot with ${PROJECTS} projects (qemu TCG, 2 vCPUs): kernel start to the agent's first cycle done ${servingS.toFixed(1)} s; ` +
        `zpool import -N ${importS.toFixed(1)} s; zfs mount -a done at ${mountAllS.toFixed(1)} s; agent started at ${agentStartS.toFixed(1)} s; ` +
        `first cycle ${(servingS - agentStartS).toFixed(1)} s; projects mounted 0`,
    );
    const cold = readFileSync(`${RESULTS}/boot-cold-cycle-seconds`, 'utf8').trim();
    const created = readFileSync(`${RESULTS}/boot-create-seconds`, 'utf8').trim();
    figure(`before the reboot: ${PROJECTS} datasets created in ${created} s; the agent's first (cold) cycle took ${cold} s from its start`);
    // serving within 15 minutes of the kernel's start even under emulation (5-10x slower)
    assert.ok(servingS < 900, `serving ${servingS} s after the kernel started`);
  });

  it('a project is mounted when asked (storagectl open), and only it', () => {
    const id = readFileSync('/var/lib/boot-pool/ids', 'utf8').split('\n')[7]!;
    const out = ok('/usr/bin/storagectl', ['--config', '/etc/storage-agent/config.yaml', 'open', id, '--json']);
    assert.equal((JSON.parse(out) as { project: string }).project, id);
    assert.deepEqual(mountedUnder('boot/projects/'), [`boot/projects/${id}`]);
    ok('/usr/bin/storagectl', ['--config', '/etc/storage-agent/config.yaml', 'close', id]);
    assert.deepEqual(mountedUnder('boot/projects/'), []);
  });

  it("the agent's logs reach journald as JSON, one object per line", () => {
    const entries = journal('storage-agent.service');
    const own = entries.filter((e) => e.SYSLOG_IDENTIFIER === 'storage-agent');
    assert.ok(own.length > 0, 'no journal entry of storage-agent in this boot');
    const notJson = own.filter((e) => !e.json);
    assert.deepEqual(notJson.map((e) => e.MESSAGE), [], 'every line the agent writes is a JSON object');
    const started = own.find((e) => e.json!.msg === 'storage-agent started');
    assert.ok(started, 'the start is logged');
    assert.equal(started!.json!.host, 'boot-a');
    assert.equal(started!.json!.level, 'info');
    assert.ok(own.some((e) => e.json!.msg === 'cycle done'));
    const errors = own.filter((e) => e.json!.level === 'error' || e.json!.level === 'fatal');
    assert.deepEqual(errors.map((e) => e.MESSAGE), [], 'no error logged at boot');
  });
});

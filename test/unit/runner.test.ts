// The test runner (test/run.ts) never lets a result go missing unnoticed: it is run here on
// the fixture tiers in test/fixtures/runner, each a way results get lost.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const testDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const fixtures = join(testDir, 'fixtures', 'runner');

function runTier(dirs: string[]): { code: number | null; tierLine: string; failed: string[] } {
  const env = { ...process.env };
  delete env.TIER_SUMMARY_FILE;
  delete env.TEST_ONLY;
  delete env.NODE_TEST_CONTEXT;
  const r = spawnSync(process.execPath, [join(testDir, 'run.js'), `x=${dirs.join(',')}`], { encoding: 'utf8', env, timeout: 60_000 });
  const lines = r.stdout.split('\n');
  return {
    code: r.status,
    tierLine: lines.find((l) => l.startsWith('tier x: ')) ?? `(no tier line; stderr: ${r.stderr.slice(-500)})`,
    failed: lines.filter((l) => l.startsWith('FAILED [x] ')),
  };
}

describe('test runner: no result goes missing unnoticed', () => {
  it('a test that calls process.exit() mid-suite: every result still arrives (flush-on-exit)', () => {
    const r = runTier([join(fixtures, 'exit-mid-suite')]);
    assert.equal(r.tierLine, 'tier x: 3 passed, 0 failed, 0 skipped', r.failed.join('\n'));
    assert.equal(r.code, 0);
  });

  it("a file whose process ended before any report: Node's stand-in pass is not a result", () => {
    const r = runTier([join(fixtures, 'nothing-reported')]);
    assert.equal(r.tierLine, 'tier x: 0 passed, 1 failed, 0 skipped');
    assert.match(r.failed.join('\n'), /gone\.test\.js: reported no test result/);
    assert.equal(r.code, 1);
  });

  it('a file cut off mid-suite: the suite that started and never reported fails the tier', () => {
    const r = runTier([join(fixtures, 'cut-mid-suite')]);
    // 'one' was reported during the pause; the pause's own result went down with the process
    assert.equal(r.tierLine, 'tier x: 1 passed, 1 failed, 0 skipped');
    assert.match(r.failed.join('\n'), /cut suite: started but never reported a result/);
    assert.equal(r.code, 1);
  });

  it('a missing test directory fails the tier, once', () => {
    const nowhere = join(fixtures, 'no-such-dir');
    const r = runTier([nowhere]);
    assert.equal(r.tierLine, 'tier x: 0 passed, 1 failed, 0 skipped');
    assert.deepEqual(r.failed, [`FAILED [x] no such test directory: ${nowhere}`]);
    const mixed = runTier([join(fixtures, 'exit-mid-suite'), nowhere]);
    assert.equal(mixed.tierLine, 'tier x: 3 passed, 1 failed, 0 skipped');
  });
});

/**
 * A short, seeded budget of every fuzz target (`fuzz/targets/*.ts`), so CI runs each of them: the same
 * inputs on every run (set FUZZ_SEED to explore others, FUZZ_RUNS to change the budget). A failure
 * prints the shrunk input and the command that replays it. Known violations of pending invariants are
 * printed but do not fail. The long campaign is `npm run fuzz` (docs/fuzzing.md).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadTarget, runTarget, targetNames } from '../fuzz/harness.js';

/** A fixed seed per target, from its name, so a failure reproduces. */
function seedOf(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h | 0;
}

const names = targetNames();

test('every fuzz target file exports a target named after it', async () => {
  assert.ok(names.length >= 9, `targets: ${names.join(', ')}`);
  for (const name of names) assert.equal((await loadTarget(name)).name, name);
});

for (const name of names) {
  test(`fuzz smoke: ${name} holds its invariants on its corpus and a seeded budget`, async (t) => {
    const target = await loadTarget(name);
    const seed = process.env.FUZZ_SEED === undefined ? seedOf(name) : Number(process.env.FUZZ_SEED);
    const runs = Number(process.env.FUZZ_RUNS ?? target.smokeRuns ?? 2000);
    const stats = await runTarget(target, { runs, seed, chunk: runs });
    for (const [id, hits] of stats.pending) {
      t.diagnostic(
        `pending invariant ${id}: ${hits.count} known violations; first: ${hits.example} (${hits.detail})`,
      );
    }
    const f = stats.failure;
    if (f !== undefined) {
      assert.fail(
        `${f.kind === 'crash' ? 'crash' : `invariant ${f.invariant} violated`}\n  input: ${f.input}\n  error: ${f.error}\n` +
          `  replay: npm run fuzz -- --only ${name} --seed=${f.seed} --replay ${f.path}`,
      );
    }
    assert.equal(stats.inputs, runs);
    assert.equal(stats.crashes + stats.violations, 0);
  });
}

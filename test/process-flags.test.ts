/**
 * The gateway's Node.js flags (src/process-flags.ts): bin/gatehouse's `#!` line carries them, so the
 * command runs with them when executed as a program, and `npm start` passes them too. The cluster
 * primary's workers are checked in cluster-mode.test.ts.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { PROCESS_FLAGS, withProcessFlags } from '../src/process-flags.js';
import { ROOT } from './helpers/gateway.js';

const BIN = path.join(ROOT, 'bin/gatehouse');

test('withProcessFlags appends the missing flags once, keeping what was there in order', () => {
  assert.deepEqual(withProcessFlags([]), [...PROCESS_FLAGS]);
  assert.deepEqual(withProcessFlags(['--import', 'tsx']), ['--import', 'tsx', ...PROCESS_FLAGS]);
  assert.deepEqual(withProcessFlags([...PROCESS_FLAGS, '--inspect']), [...PROCESS_FLAGS, '--inspect']);
});

test("bin/gatehouse's #! line and npm start carry the same flags", () => {
  const first = readFileSync(BIN, 'utf8').split('\n')[0];
  assert.equal(first, `#!/usr/bin/env -S node ${PROCESS_FLAGS.join(' ')}`);
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
    scripts: Record<string, string>;
  };
  assert.equal(pkg.scripts.start, `node ${PROCESS_FLAGS.join(' ')} bin/gatehouse demo`);
});

test('bin/gatehouse executed as a program runs node with the flags', async () => {
  assert.ok(
    existsSync(path.join(ROOT, 'dist/cli/main.js')),
    'dist/ is missing: run npm install (its prepare script builds dist/)',
  );
  // Executed directly, as a shell or a service manager would: the kernel reads the `#!` line.
  const { stdout } = await promisify(execFile)(BIN, ['version'], { cwd: ROOT });
  const [name, node] = stdout.split('\n');
  assert.match(name ?? '', /^gatehouse \d+\.\d+\.\d+$/);
  // Whichever `node` the PATH gives (under test:node24 it need not be the one running this test).
  assert.match(node ?? '', new RegExp(`^node v\\d+\\.\\d+\\.\\d+ ${PROCESS_FLAGS.join(' ')}$`));
});

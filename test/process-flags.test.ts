/**
 * The gateway's Node.js flags (src/process/flags.ts): bin/gatehouse starts node with them through sh,
 * so the command runs with them when executed as a program (and still runs under plain `node`), and
 * `npm start` passes them too. The cluster primary's workers are checked in cluster-mode.test.ts.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { PROCESS_FLAGS, withProcessFlags } from '../src/process/flags.js';
import { cmdline, spawnGatehouse } from './helpers/cluster.js';
import { ROOT, tempDir } from './helpers/gateway.js';

const BIN = path.join(ROOT, 'bin/gatehouse');
const execFileAsync = promisify(execFile);

test('withProcessFlags appends the missing flags once, keeping what was there in order', () => {
  assert.deepEqual(withProcessFlags([]), [...PROCESS_FLAGS]);
  assert.deepEqual(withProcessFlags(['--import', 'tsx']), ['--import', 'tsx', ...PROCESS_FLAGS]);
  assert.deepEqual(withProcessFlags([...PROCESS_FLAGS, '--inspect']), [...PROCESS_FLAGS, '--inspect']);
});

test('bin/gatehouse and npm start carry the same flags', () => {
  const [first, second] = readFileSync(BIN, 'utf8').split('\n');
  assert.equal(first, '#!/bin/sh');
  assert.equal(second, `":" //; exec node ${PROCESS_FLAGS.join(' ')} "$0" "$@"`);
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
  const { stdout } = await execFileAsync(BIN, ['version'], { cwd: ROOT });
  const [name, node] = stdout.split('\n');
  assert.match(name ?? '', /^gatehouse \d+\.\d+\.\d+$/);
  // Whichever `node` the PATH gives (under test:node24 it need not be the one running this test).
  assert.match(node ?? '', new RegExp(`^node v\\d+\\.\\d+\\.\\d+ ${PROCESS_FLAGS.join(' ')}$`));
});

test('node bin/gatehouse still runs the file: the lines for sh are a string and a comment to JavaScript', async () => {
  const { stdout } = await execFileAsync(process.execPath, [BIN, 'version'], { cwd: ROOT });
  assert.match(stdout, /^gatehouse \d+\.\d+\.\d+\nnode v\S+ \(without --single-threaded-gc\)\n$/);
});

test('sh execs node: the started gateway is the process that was spawned, and SIGTERM drains it', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gatehouse.yaml',
    `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
upstreams: { app: { servers: [{ url: "http://127.0.0.1:9" }] } }
routes: [{ name: all, upstream: app, public: true }]
`,
  );
  const gh = spawnGatehouse(file, BIN);
  t.after(() => gh.kill());
  await gh.waitForLog((l) => l.msg === 'gateway started', 'the gateway to start');
  const argv = cmdline(gh.child.pid);
  assert.match(path.basename(argv[0] ?? ''), /^node/, argv.join(' '));
  for (const flag of PROCESS_FLAGS) assert.ok(argv.includes(flag), argv.join(' '));
  gh.child.kill('SIGTERM');
  assert.equal((await gh.exitedWithin(20_000)).code, 0);
});

/**
 * The audit trail of a multi-process instance (`server.workers: 2`): the primary writes the one trail,
 * the workers send it their decisions, and after SIGTERM every request that was answered is in it, in
 * one intact chain that ends in a checkpoint. The primary's live figures add up both workers'.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import {
  send,
  sendUntilEveryWorkerServed,
  spawnGatehouse,
  startedCluster,
  startRecordingBackend,
} from './helpers/cluster.js';
import { runCli, tempDir } from './helpers/gateway.js';

test("workers: 2 — both workers' decisions reach the primary's one trail and live figures, nothing answered is missing after SIGTERM, and it verifies", async (t) => {
  const backend = await startRecordingBackend('b1');
  t.after(() => backend.close());
  const d = tempDir();
  t.after(() => d.remove());
  d.write(
    'audit-key.jwk',
    JSON.stringify(generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' })),
  );
  const file = d.write(
    'gatehouse.yaml',
    `listeners: [{ name: plain, bind: "127.0.0.1:0" }]
server: { workers: 2 }
admin: { bind: "127.0.0.1:0" }
audit: { file: audit.jsonl, signingKey: file:audit-key.jwk, checkpoint: { lines: 50 } }
logging: { level: info, access: false }
upstreams: { app: { servers: [{ url: "${backend.url}" }] } }
routes:
  - { name: open, match: { path: / }, upstream: app, public: true }
  - { name: closed, match: { path: /closed }, upstream: app, policy: { allow: [{ groups: [nobody] }] } }
`,
  );
  const gh = spawnGatehouse(file);
  t.after(() => gh.kill());
  const { port, admin } = await startedCluster(gh);
  const served = await sendUntilEveryWorkerServed(port, admin, '/open');
  let refused = 0;
  for (let i = 0; i < 10; i++) if ((await send(port, '/closed', false)).status === 401) refused++;
  assert.equal(refused, 10);
  // The primary's live figures add up both workers' (the dashboard of a multi-process instance).
  const live = (await (await fetch(`http://${admin}/api/v1/live/snapshot`)).json()) as {
    traffic: { processes: number; routes: Array<{ route: string; total: number }> };
  };
  assert.equal(live.traffic.processes, 2);
  assert.equal(live.traffic.routes.find((r) => r.route === 'open')?.total, served.length);
  assert.equal(live.traffic.routes.find((r) => r.route === 'closed')?.total, 10);
  gh.child.kill('SIGTERM');
  const { code } = await gh.exitedWithin(30_000);
  assert.equal(code, 0);

  const trail = d.file('audit.jsonl');
  const lines = readFileSync(trail, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  const access = lines.filter((l) => l.event === 'access');
  assert.equal(access.filter((l) => l.code === 'access.allowed').length, served.length);
  assert.equal(access.filter((l) => l.code === 'access.refused').length, 10);
  assert.equal(
    lines.filter((l) => l.code === 'gateway.started').length,
    1,
    'the primary records the start once',
  );
  assert.equal(lines.at(-1)?.code, 'audit.checkpoint');
  const verified = await runCli(['audit', 'verify', '-c', file, trail]);
  assert.equal(verified.code, 0, verified.stdout + verified.stderr);
});

/**
 * The admin quota API of a running gateway: usage and reset time per quota and key, resetting one key,
 * usage kept across reloads, and every bad request answered with its status.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { startEchoBackend } from '../src/demo/backends.js';
import { generateApiKey } from '../src/identity/apikeys.js';
import { createLogger } from '../src/observe/log.js';
import { Gateway } from '../src/process/gateway.js';
import { LineCollector, origin, request } from './helpers/observe.js';

const alice = generateApiKey('alice');

function config(echoUrl: string, limit: number): string {
  return `
listeners: [{ name: plain, bind: "127.0.0.1:0" }]
admin: { bind: "127.0.0.1:0", token: env:ADMIN_TOKEN }
identity:
  apiKeys: [{ id: alice, hash: "${alice.hashLine}", subject: "agent:alice", groups: [agents] }]
upstreams:
  echo: { servers: [{ url: "${echoUrl}" }] }
quotas:
  syncs: { key: identity, limit: ${limit}, window: 1d, routes: [api] }
  per-address: { key: ip, limit: 100, window: 1h, timeZone: Europe/Paris }
routes:
  - { name: api, match: { path: /api/ }, upstream: echo, policy: { allow: [{ groups: [agents] }] } }
  - { name: open, match: { path: /open/ }, upstream: echo, public: true }
`;
}

test('admin quota API: usage per quota and key, reset of one key, usage kept across a reload, and bad requests refused', async (t) => {
  const echo = await startEchoBackend();
  t.after(() => echo.close());
  const dir = await mkdtemp(join(tmpdir(), 'gatehouse-quota-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'gatehouse.yaml');
  await writeFile(file, config(echo.url, 3));
  const gw = await Gateway.start({
    configFile: file,
    env: { ADMIN_TOKEN: 'admin-t0ken' },
    watch: false,
    logger: createLogger('fatal', new LineCollector()),
    accessLog: () => {},
  });
  t.after(() => gw.shutdown());
  const admin = origin(gw.adminAddress()!);
  const plain = origin(gw.address('plain')!);
  const auth = { authorization: 'Bearer admin-t0ken' };
  const call = () => request(`${plain}/api/sync`, { headers: { 'x-api-key': alice.key } });

  for (let i = 0; i < 3; i++) assert.equal((await call()).status, 200);
  assert.equal((await call()).status, 429);
  for (let i = 0; i < 2; i++) assert.equal((await request(`${plain}/open/x`)).status, 200);

  const usage = await request(`${admin}/api/v1/quotas?key=agent:alice`, { headers: auth });
  assert.equal(usage.status, 200);
  const body = usage.json() as { key: string; quotas: Array<Record<string, unknown>> };
  assert.equal(body.key, 'agent:alice');
  const syncs = body.quotas.find((q) => q.quota === 'syncs');
  assert.equal(syncs?.used, 3);
  assert.equal(syncs?.limit, 3);
  assert.equal(syncs?.remaining, 0);
  assert.equal(syncs?.key, 'id:agent:alice');
  const end = Math.ceil(Date.now() / 86_400_000) * 86_400_000;
  assert.equal(syncs?.resetAt, new Date(end).toISOString());
  // The address quota counts alice and the anonymous calls alike, per client address.
  const byAddress = await request(`${admin}/api/v1/quotas?key=127.0.0.1`, { headers: auth });
  const perAddress = (byAddress.json() as { quotas: Array<Record<string, unknown>> }).quotas.find(
    (q) => q.quota === 'per-address',
  );
  assert.equal(perAddress?.used, 5);
  assert.equal(perAddress?.key, 'ip:127.0.0.1');

  // A reload keeps the usage (the store outlives configurations).
  await writeFile(file, config(echo.url, 4));
  const reload = await request(`${admin}/api/v1/reload`, { method: 'POST', headers: auth });
  assert.equal(reload.status, 200, reload.text);
  assert.equal((await call()).status, 200, 'the raised limit leaves one more');
  assert.equal((await call()).status, 429);

  const reset = await request(`${admin}/api/v1/quotas/syncs/reset`, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json' },
    body: JSON.stringify({ key: 'agent:alice' }),
  });
  assert.equal(reset.status, 200, reset.text);
  assert.deepEqual((reset.json() as { reset: string[] }).reset, ['id:agent:alice']);
  const after = await request(`${admin}/api/v1/quotas?key=agent:alice`, { headers: auth });
  assert.equal(
    (after.json() as { quotas: Array<Record<string, unknown>> }).quotas.find((q) => q.quota === 'syncs')
      ?.used,
    0,
  );
  assert.equal((await call()).status, 200, 'admitted again after the reset');

  // Bad requests.
  assert.equal((await request(`${admin}/api/v1/quotas?key=agent:alice`)).status, 401);
  assert.equal((await request(`${admin}/api/v1/quotas`, { headers: auth })).status, 400);
  assert.equal((await request(`${admin}/api/v1/quotas?key=`, { headers: auth })).status, 400);
  assert.equal(
    (await request(`${admin}/api/v1/quotas?key=${'x'.repeat(600)}`, { headers: auth })).status,
    400,
  );
  const wrongMethod = await request(`${admin}/api/v1/quotas/syncs/reset`, { headers: auth });
  assert.equal(wrongMethod.status, 405);
  assert.equal(wrongMethod.headers.get('allow'), 'POST');
  const unknown = await request(`${admin}/api/v1/quotas/nope/reset`, {
    method: 'POST',
    headers: auth,
    body: '{"key":"agent:alice"}',
  });
  assert.equal(unknown.status, 404);
  for (const bad of ['not json', '{"key": 42}', '{}', 'null', JSON.stringify({ key: 'x'.repeat(5000) })]) {
    const r = await request(`${admin}/api/v1/quotas/syncs/reset`, {
      method: 'POST',
      headers: auth,
      body: bad,
    });
    assert.equal(r.status, 400, bad.slice(0, 20));
  }
  const badName = await request(`${admin}/api/v1/quotas/%E0%A4%A/reset`, {
    method: 'POST',
    headers: auth,
    body: '{"key":"a"}',
  });
  assert.equal(badName.status, 400);
  assert.equal((await request(`${admin}/healthz`)).status, 200, 'the admin listener still answers');
});

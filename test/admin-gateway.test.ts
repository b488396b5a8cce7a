import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { startEchoBackend } from '../src/demo/backends.js';
import { createLogger } from '../src/observe/log.js';
import { Gateway } from '../src/process/gateway.js';
import { LineCollector, origin, request } from './helpers/observe.js';

function config(echoUrl: string, extra = ''): string {
  return `
listeners: [{ name: plain, bind: "127.0.0.1:0" }]
admin: { bind: "127.0.0.1:0", token: env:ADMIN_TOKEN }
upstreams:
  echo: { servers: [{ url: "${echoUrl}" }] }
routes:
  - { name: echo-route, match: { path: /echo/ }, upstream: echo, public: true }
${extra}`;
}

test('admin listener of a running gateway: metrics after traffic, status, token, reload', async (t) => {
  const echo = await startEchoBackend();
  t.after(() => echo.close());
  const dir = await mkdtemp(join(tmpdir(), 'gatehouse-admin-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'gatehouse.yaml');
  await writeFile(file, config(echo.url));
  const gw = await Gateway.start({
    configFile: file,
    env: { ADMIN_TOKEN: 'admin-t0ken' },
    watch: false,
    logger: createLogger('fatal', new LineCollector()),
    accessLog: () => {},
  });
  t.after(() => gw.shutdown());
  const adminAddr = gw.adminAddress();
  const plainAddr = gw.address('plain');
  assert.ok(adminAddr && plainAddr);
  const admin = origin(adminAddr);
  const auth = { authorization: 'Bearer admin-t0ken' };

  for (let i = 0; i < 3; i++) assert.equal((await request(`${origin(plainAddr)}/echo/x`)).status, 200);

  const metrics = await request(`${admin}/metrics`);
  assert.equal(metrics.status, 200);
  assert.match(
    metrics.text,
    /^gatehouse_requests_total\{[^}]*route="echo-route"[^}]*status="200"[^}]*\} [3-9]/m,
  );
  assert.match(metrics.text, /^gatehouse_request_duration_seconds_count\{route="echo-route"\} [3-9]/m);
  assert.match(metrics.text, /^gatehouse_upstream_server_up\{upstream="echo",server="[^"]+"\} 1$/m);
  assert.match(
    metrics.text,
    /^gatehouse_upstream_server_active_requests\{upstream="echo",server="[^"]+"\} 0$/m,
  );
  assert.match(metrics.text, /^gatehouse_process_resident_memory_bytes \d+/m);

  assert.equal((await request(`${admin}/healthz`)).status, 200);
  assert.equal((await request(`${admin}/readyz`)).status, 200);
  assert.equal((await request(`${admin}/api/v1/status`)).status, 401);

  const status = await request(`${admin}/api/v1/status`, { headers: auth });
  assert.equal(status.status, 200);
  const body = status.json() as {
    generation: number;
    configFile: string;
    listeners: Array<{ name: string; address?: string }>;
    routes: Array<{ name: string; upstream?: string }>;
    upstreams: Array<{ name: string; servers: Array<{ url: string; health: string }> }>;
  };
  assert.equal(body.configFile, file);
  assert.equal(body.listeners[0]?.address, `127.0.0.1:${plainAddr.port}`);
  assert.deepEqual(
    body.routes.map((r) => [r.name, r.upstream]),
    [['echo-route', 'echo']],
  );
  assert.equal(body.upstreams[0]?.servers[0]?.url, echo.url);
  const generation = body.generation;

  // A broken file is rejected with its problems and the running configuration stays.
  await writeFile(file, config(echo.url, '  - { name: bad, match: { path: /bad/ }, upstream: nowhere }\n'));
  const rejected = await request(`${admin}/api/v1/reload`, { method: 'POST', headers: auth });
  assert.equal(rejected.status, 422);
  const problems = (rejected.json() as { ok: boolean; problems: Array<{ path: string }> }).problems;
  assert.ok(
    problems.some((p) => p.path.startsWith('routes.1')),
    JSON.stringify(problems),
  );
  assert.equal((await request(`${origin(plainAddr)}/echo/x`)).status, 200);

  await writeFile(file, config(echo.url));
  const reloaded = await request(`${admin}/api/v1/reload`, { method: 'POST', headers: auth });
  assert.equal(reloaded.status, 200);
  assert.deepEqual(reloaded.json(), { ok: true, generation: generation + 1 });
  const after = await request(`${admin}/metrics`);
  assert.match(after.text, /^gatehouse_config_reloads_total\{result="rejected"\} [1-9]/m);
  assert.match(after.text, /^gatehouse_config_generation \d+/m);
});

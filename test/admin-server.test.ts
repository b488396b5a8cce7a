import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Script } from 'node:vm';
import {
  AdminServer,
  type AdminServerOptions,
  isLoopbackAddress,
  type ReloadResult,
} from '../src/admin/server.js';
import { createLogger } from '../src/observe/log.js';
import { requestsTotal } from '../src/observe/metrics.js';
import type { Runtime } from '../src/runtime.js';
import { LineCollector, origin, request, staticRuntime } from './helpers/observe.js';

const config = {
  listeners: [{ name: 'plain', bind: '127.0.0.1:0' }],
  upstreams: {
    echo: { servers: [{ url: 'http://127.0.0.1:9101' }, { url: 'http://127.0.0.1:9102', weight: 3 }] },
    canary: { servers: [{ url: 'http://127.0.0.1:9103' }] },
  },
  routes: [
    { name: 'echo', match: { path: '/echo/' }, upstream: 'echo', public: true },
    {
      name: 'api',
      match: { host: 'api.example.com', path: '/v1/', methods: ['GET'] },
      split: {
        targets: [
          { upstream: 'echo', weight: 9 },
          { upstream: 'canary', weight: 1 },
        ],
      },
      policy: 'ops',
    },
  ],
  policies: { ops: { allow: [{ groups: ['ops'] }] } },
};

async function startAdmin(
  t: { after(fn: () => Promise<void>): void },
  overrides: Partial<AdminServerOptions> = {},
  bind = '127.0.0.1:0',
): Promise<{ admin: AdminServer; url: string; logs: LineCollector }> {
  const logs = new LineCollector();
  let runtime: Runtime = staticRuntime(config, { health: { 'http://127.0.0.1:9102': 'down' } });
  const admin = new AdminServer({
    getRuntime: () => runtime,
    logger: createLogger('info', logs),
    reload: async (): Promise<ReloadResult> => {
      runtime = staticRuntime(config, { generation: runtime.generation + 1 });
      return { ok: true, generation: runtime.generation };
    },
    ...overrides,
  });
  const addr = await admin.listen(bind);
  t.after(() => admin.close());
  return { admin, url: origin(addr), logs };
}

test('healthz answers ok and readyz follows the ready() probe', async (t) => {
  let ready = false;
  const { url } = await startAdmin(t, { ready: () => ready });
  const health = await request(`${url}/healthz`);
  assert.equal(health.status, 200);
  assert.equal(health.text, 'ok\n');
  assert.equal((await request(`${url}/readyz`)).status, 503);
  ready = true;
  assert.equal((await request(`${url}/readyz`)).status, 200);
});

test('readyz is 503 while no runtime is loaded', async (t) => {
  const { url } = await startAdmin(t, { getRuntime: () => undefined });
  assert.equal((await request(`${url}/readyz`)).status, 503);
  const status = await request(`${url}/api/v1/status`);
  assert.equal(status.status, 503);
  assert.equal((status.json() as { error: string }).error, 'GH_NOT_READY');
});

test('metrics are Prometheus text with gatehouse_ series, process metrics and upstream gauges', async (t) => {
  const { url } = await startAdmin(t);
  requestsTotal.inc({ route: 'echo', method: 'GET', status: '200' });
  const res = await request(`${url}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
  assert.match(res.text, /^gatehouse_requests_total\{route="echo",method="GET",status="200"\} \d+$/m);
  assert.match(res.text, /^gatehouse_process_cpu_user_seconds_total \d/m);
  assert.match(res.text, /^gatehouse_upstream_server_up\{upstream="echo",server="echo-0"\} 1$/m);
  assert.match(res.text, /^gatehouse_upstream_server_up\{upstream="echo",server="echo-1"\} 0$/m);
  assert.match(res.text, /^gatehouse_upstream_server_active_requests\{upstream="echo",server="echo-1"\} 1$/m);
  for (const line of res.text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    assert.match(line, /^gatehouse_/, `unprefixed series: ${line}`);
  }
});

test('status JSON lists generation, listeners, routes and upstream servers with health', async (t) => {
  const { url } = await startAdmin(t);
  const res = await request(`${url}/api/v1/status`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
  const body = res.json() as Record<string, unknown> & {
    routes: Array<Record<string, unknown>>;
    upstreams: Array<{ name: string; servers: Array<Record<string, unknown>> }>;
    listeners: Array<Record<string, unknown>>;
  };
  assert.equal(body.generation, 1);
  assert.equal(body.configFile, '/etc/gatehouse/test.yaml');
  assert.equal(typeof body.uptime, 'number');
  assert.deepEqual(body.listeners, [{ name: 'plain', bind: '127.0.0.1:0', tls: false }]);
  assert.deepEqual(
    body.routes.map((r) => [r.name, r.upstream, r.public]),
    [
      ['echo', 'echo', true],
      ['api', undefined, false],
    ],
  );
  assert.deepEqual(body.routes[1]?.match, { host: 'api.example.com', path: '/v1/', methods: ['GET'] });
  assert.equal(body.routes[1]?.policy, 'ops');
  assert.deepEqual(body.routes[1]?.split, {
    targets: [
      { upstream: 'echo', weight: 9 },
      { upstream: 'canary', weight: 1 },
    ],
  });
  const echo = body.upstreams.find((u) => u.name === 'echo');
  assert.ok(echo);
  assert.deepEqual(
    echo.servers.map((s) => [s.url, s.health, s.weight, s.active]),
    [
      ['http://127.0.0.1:9101', 'up', 1, 0],
      ['http://127.0.0.1:9102', 'down', 3, 1],
    ],
  );
});

test('with a token, /api/v1 needs it: 401 without or with a wrong one, 200 with it', async (t) => {
  const { url } = await startAdmin(t, { token: 's3cret-token' });
  const none = await request(`${url}/api/v1/status`);
  assert.equal(none.status, 401);
  assert.equal((none.json() as { error: string }).error, 'GH_ADMIN_UNAUTHORIZED');
  assert.match(none.headers.get('www-authenticate') ?? '', /^Bearer/);
  const wrong = await request(`${url}/api/v1/status`, { headers: { authorization: 'Bearer s3cret-tokem' } });
  assert.equal(wrong.status, 401);
  const longer = await request(`${url}/api/v1/status`, {
    headers: { authorization: 'Bearer s3cret-token-x' },
  });
  assert.equal(longer.status, 401);
  const basic = await request(`${url}/api/v1/status`, { headers: { authorization: 'Basic s3cret-token' } });
  assert.equal(basic.status, 401);
  const reload = await request(`${url}/api/v1/reload`, { method: 'POST' });
  assert.equal(reload.status, 401);
  const ok = await request(`${url}/api/v1/status`, { headers: { authorization: 'Bearer s3cret-token' } });
  assert.equal(ok.status, 200);
  // Probes and metrics stay open for scrapers and orchestrators.
  assert.equal((await request(`${url}/metrics`)).status, 200);
  assert.equal((await request(`${url}/healthz`)).status, 200);
});

test('without a token, /api/v1 is refused (403) when the admin listener is not on loopback', async (t) => {
  const { url, logs } = await startAdmin(t, {}, '0.0.0.0:0');
  const res = await request(`${url}/api/v1/status`);
  assert.equal(res.status, 403);
  assert.equal((res.json() as { error: string }).error, 'GH_ADMIN_FORBIDDEN');
  assert.equal((await request(`${url}/api/v1/reload`, { method: 'POST' })).status, 403);
  assert.equal((await request(`${url}/healthz`)).status, 200);
  assert.ok(logs.lines.some((l) => l.includes('/api/v1 is disabled')));
});

test('unknown paths get a JSON 404 and wrong methods a JSON 405', async (t) => {
  const { url } = await startAdmin(t);
  for (const path of ['/nope', '/api/v1/nope', '/api/v1', '/metrics/x']) {
    const res = await request(`${url}${path}`);
    assert.equal(res.status, 404, path);
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
    assert.equal((res.json() as { error: string }).error, 'GH_ADMIN_NOT_FOUND');
  }
  const post = await request(`${url}/metrics`, { method: 'POST', body: 'x' });
  assert.equal(post.status, 405);
  assert.equal(post.headers.get('allow'), 'GET, HEAD');
  const get = await request(`${url}/api/v1/reload`);
  assert.equal(get.status, 405);
  assert.equal(get.headers.get('allow'), 'POST');
});

test('reload returns the new generation, 422 with problems when rejected, 500 without a stack', async (t) => {
  const { url } = await startAdmin(t);
  const ok = await request(`${url}/api/v1/reload`, { method: 'POST' });
  assert.equal(ok.status, 200);
  assert.deepEqual(ok.json(), { ok: true, generation: 2 });
  const status = (await request(`${url}/api/v1/status`)).json() as { generation: number };
  assert.equal(status.generation, 2);

  const problems = [
    { file: '/etc/gatehouse/test.yaml', path: 'routes.0.upstream', message: 'unknown upstream "x"' },
  ];
  const rejected = await startAdmin(t, { reload: async () => ({ ok: false, problems }) });
  const bad = await request(`${rejected.url}/api/v1/reload`, { method: 'POST' });
  assert.equal(bad.status, 422);
  assert.deepEqual(bad.json(), { ok: false, problems });

  const failing = await startAdmin(t, {
    reload: async () => {
      throw new Error('disk on fire');
    },
  });
  const broken = await request(`${failing.url}/api/v1/reload`, { method: 'POST' });
  assert.equal(broken.status, 500);
  assert.doesNotMatch(broken.text, /at .*\.ts:\d+/);
  assert.equal((broken.json() as { error: string }).error, 'GH_RELOAD_FAILED');
});

test('the dashboard is one self-contained page with a strict CSP', async (t) => {
  const { url } = await startAdmin(t);
  const res = await request(`${url}/`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/html/);
  const csp = res.headers.get('content-security-policy') ?? '';
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'sha256-/);
  assert.doesNotMatch(res.text, /<script[^>]+src=|<link[^>]+href=|https?:\/\//);
  assert.match(res.text, /sessionStorage/);
  assert.doesNotMatch(res.text, /innerHTML/);
  const script = /<script>([\s\S]*)<\/script>/.exec(res.text)?.[1];
  assert.ok(script, 'inline script present');
  new Script(script, { filename: 'dashboard.js' }); // throws on a syntax error
});

test('loopback detection', () => {
  for (const a of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) assert.ok(isLoopbackAddress(a), a);
  for (const a of ['0.0.0.0', '::', '10.0.0.1', '::ffff:10.0.0.1', '128.0.0.1'])
    assert.ok(!isLoopbackAddress(a), a);
});

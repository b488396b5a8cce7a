/**
 * Adversarial suite, methods: TRACE and CONNECT, Max-Forwards, and method overrides. The backend
 * reflects every request it receives (like a server with TRACE enabled, or a framework that honours
 * an override to TRACE), so any credential or identity the gateway forwarded would come back to the
 * client: the tests prove that none does, and that routing, policy, the log and `check`/`explain`
 * all see the same method.
 */
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { type TestContext, test } from 'node:test';
import { ConfigSchema } from '../src/config/schema.js';
import { generateApiKey } from '../src/identity/apikeys.js';
import { explainRequest } from '../src/policy/explain.js';
import { runConfigTests } from '../src/policy/tests.js';
import { selfSigned } from './helpers/gateway.js';
import {
  config,
  request,
  type Seen,
  startBackend,
  startGateway,
  type TestGateway,
  waitFor,
} from './helpers/proxy.js';
import { header, rawExchange } from './helpers/raw.js';

const INJECTED = 'Bearer upstream-secret-token';
const ROUTE_SECRET = 'route-secret-value';
const COOKIE = 'theme=dark; other=secret-cookie-value';
const agent = generateApiKey('agent');

/** Answers every request with the request itself as the backend received it (message/http). */
function reflect(
  req: { method?: string; url?: string },
  res: import('node:http').ServerResponse,
  seen: Seen,
) {
  let text = `${seen.method} ${seen.url} HTTP/1.1\r\n`;
  for (let i = 0; i < seen.rawHeaders.length; i += 2)
    text += `${seen.rawHeaders[i]}: ${seen.rawHeaders[i + 1]}\r\n`;
  void req;
  res.writeHead(200, { 'content-type': 'message/http', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** Every secret a reflected request must never carry back to the client. */
const SECRETS = [
  'upstream-secret-token',
  ROUTE_SECRET,
  'secret-cookie-value',
  agent.key,
  'x-gatehouse-assertion',
  'x-gatehouse-user',
  'agent:etl',
];

function assertNoSecret(text: string): void {
  for (const s of SECRETS)
    assert.ok(!text.toLowerCase().includes(s.toLowerCase()), `${s} leaked in: ${text}`);
}

function methodsConfig(backendUrl: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    ...config(
      {
        app: {
          servers: [{ url: backendUrl }],
          inject: { headers: { Authorization: INJECTED } },
        },
      },
      [
        {
          name: 'traced',
          match: { path: '/traced' },
          upstream: 'app',
          policy: 'eng',
          identityHeaders: true,
          trace: true,
          methodOverride: true,
          headers: { request: { set: { 'X-Route-Secret': ROUTE_SECRET } } },
        },
        {
          name: 'api-put',
          match: { path: '/api/put', methods: ['PUT'] },
          upstream: 'app',
          policy: 'eng',
          methodOverride: true,
        },
        {
          name: 'api-admin',
          match: { path: '/api/admin', methods: ['DELETE'] },
          upstream: 'app',
          policy: 'eng',
        },
        {
          name: 'api',
          match: { path: '/api' },
          upstream: 'app',
          policy: 'eng',
          methodOverride: true,
          identityHeaders: true,
        },
        {
          name: 'limited',
          match: { path: '/limited', methods: ['GET', 'POST', 'OPTIONS'] },
          upstream: 'app',
          policy: 'eng',
        },
        { name: 'plain', match: { path: '/plain' }, upstream: 'app', policy: 'eng', identityHeaders: true },
      ],
      {
        identity: { apiKeys: [{ id: 'agent', hash: agent.hashLine, subject: 'agent:etl', groups: ['eng'] }] },
        policies: {
          eng: {
            allow: [{ name: 'engineers', groups: ['eng'] }],
            deny: [{ name: 'no-delete', methods: ['DELETE'] }],
          },
        },
      },
    ),
    ...extra,
  };
}

async function setup(t: TestContext): Promise<{ gw: TestGateway; seen: Seen[] }> {
  const backend = await startBackend(t, 'reflector', reflect);
  const gw = await startGateway(t, methodsConfig(backend.url));
  return { gw, seen: backend.seen };
}

const AUTH = { 'x-api-key': agent.key, cookie: COOKIE };

test('TRACE is refused with 405 and Allow before anything is forwarded: the injected credential and the assertion are never reflected', async (t) => {
  const { gw, seen } = await setup(t);
  const r = await request(gw.url(), {
    method: 'TRACE',
    path: '/plain/x',
    headers: { ...AUTH, authorization: 'Basic dXNlcjpwYXNz' },
  });
  assert.equal(r.status, 405);
  assert.match(r.body.toString(), /GH_METHOD_NOT_ALLOWED/);
  assert.equal(r.headers.allow, 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
  assertNoSecret(r.body.toString());
  // The Allow of a route with match.methods names those; anonymous callers are refused the same way.
  const limited = await request(gw.url(), { method: 'TRACE', path: '/limited/x' });
  assert.equal(limited.status, 405);
  assert.equal(limited.headers.allow, 'GET, POST, OPTIONS');
  assert.equal(seen.length, 0, 'nothing reached the backend');
  assert.deepEqual(
    gw.access.map((e) => [e.method, e.status, e.error]),
    [
      ['TRACE', 405, 'GH_METHOD_NOT_ALLOWED'],
      ['TRACE', 405, 'GH_METHOD_NOT_ALLOWED'],
    ],
  );
  // The connection stays usable: a 405 for a well-framed request is not a framing error.
  const raw = await rawExchange(
    gw.port(),
    'TRACE /plain/x HTTP/1.1\r\nHost: a\r\n\r\nGET /plain/after HTTP/1.1\r\nHost: a\r\n\r\n',
    {
      final: 2,
    },
  );
  assert.deepEqual(
    raw.responses.map((x) => x.status),
    [405, 401],
  );
});

test('TRACE on a route with trace: true is forwarded without injected credentials, route header values, identity headers, the assertion or the client credentials', async (t) => {
  const { gw, seen } = await setup(t);
  const r = await request(gw.url(), {
    method: 'TRACE',
    path: '/traced/x',
    headers: { ...AUTH, 'x-probe': 'kept' },
  });
  assert.equal(r.status, 200);
  const reflected = r.body.toString();
  assert.match(reflected, /^TRACE \/traced\/x HTTP\/1\.1/);
  assert.match(reflected, /x-probe: kept/i);
  assert.match(reflected, /x-forwarded-for: 127\.0\.0\.1/i);
  assertNoSecret(reflected);
  assert.equal(seen[0]?.headers.authorization, undefined);
  assert.equal(seen[0]?.headers.cookie, undefined);
  assert.equal(seen[0]?.headers['x-route-secret'], undefined);
  // The route's policy still applies, and the same credential as a bearer token is not reflected either.
  const anonymous = await request(gw.url(), { method: 'TRACE', path: '/traced/x' });
  assert.equal(anonymous.status, 401);
  const bearer = await request(gw.url(), {
    method: 'TRACE',
    path: '/traced/y',
    headers: { authorization: `Bearer ${agent.key}` },
  });
  assert.equal(bearer.status, 200);
  assertNoSecret(bearer.body.toString());
  assert.equal(seen.length, 2);
  // Other methods on that route get everything as usual.
  const get = await request(gw.url(), { path: '/traced/z', headers: AUTH });
  assert.match(get.body.toString(), /upstream-secret-token/);
  assert.match(get.body.toString(), /x-gatehouse-assertion/i);
});

test('Max-Forwards (RFC 9110 §7.6.2): 0 on OPTIONS or TRACE is answered by the gateway, n is forwarded as n-1, a non-number is 400', async (t) => {
  const { gw, seen } = await setup(t);
  const options = await request(gw.url(), {
    method: 'OPTIONS',
    path: '/limited/x',
    headers: { ...AUTH, 'max-forwards': '0' },
  });
  assert.equal(options.status, 200);
  assert.equal(options.headers.allow, 'GET, POST, OPTIONS');
  const trace = await request(gw.url(), {
    method: 'TRACE',
    path: '/traced/x',
    headers: { ...AUTH, 'max-forwards': '0' },
  });
  assert.equal(trace.status, 200);
  assert.equal(trace.headers['content-type'], 'message/http');
  assert.match(trace.body.toString(), /^TRACE \/traced\/x HTTP\/1\.1\r\n/);
  assertNoSecret(trace.body.toString());
  assert.equal(seen.length, 0, 'Max-Forwards: 0 is never forwarded');
  const forwarded = await request(gw.url(), {
    method: 'OPTIONS',
    path: '/plain',
    headers: { ...AUTH, 'max-forwards': '5' },
  });
  assert.equal(forwarded.status, 200);
  assert.equal(seen[0]?.headers['max-forwards'], '4');
  const bad = await request(gw.url(), {
    method: 'OPTIONS',
    path: '/plain',
    headers: { ...AUTH, 'max-forwards': 'many' },
  });
  assert.equal(bad.status, 400);
  // Other methods carry Max-Forwards untouched (it only applies to OPTIONS and TRACE).
  await request(gw.url(), { path: '/plain', headers: { ...AUTH, 'max-forwards': '0' } });
  assert.equal(seen[1]?.headers['max-forwards'], '0');
  // Without credentials the gateway does not answer for the route either.
  const anonymous = await request(gw.url(), {
    method: 'OPTIONS',
    path: '/limited/x',
    headers: { 'max-forwards': '0' },
  });
  assert.equal(anonymous.status, 401);
});

test('CONNECT is never proxied: 405 with Allow over HTTP/1 (connection closed) and over HTTP/2, and logged', async (t) => {
  const backend = await startBackend(t, 'reflector', reflect);
  const { cert, key } = selfSigned();
  const gw = await startGateway(
    t,
    methodsConfig(backend.url, {
      listeners: [
        { name: 'web', bind: '127.0.0.1:0' },
        { name: 'tls', bind: '127.0.0.1:0', tls: { certificates: [{ cert: 'env:CERT', key: 'env:KEY' }] } },
      ],
    }),
    { env: { CERT: cert, KEY: key } },
  );
  for (const target of [`127.0.0.1:${new URL(backend.url).port}`, 'example.com:443', '/plain']) {
    const r = await rawExchange(
      gw.port(),
      `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\nX-Api-Key: ${agent.key}\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n`,
    );
    assert.equal(r.responses.length, 1, r.bytes.toString('latin1'));
    assert.equal(r.responses[0]!.status, 405);
    assert.equal(header(r.responses[0], 'allow'), 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
    assert.match(r.responses[0]!.body.toString(), /GH_METHOD_NOT_ALLOWED/);
    assert.ok(r.closed);
  }
  const client = http2.connect(gw.url('tls'), { rejectUnauthorized: false });
  client.on('error', () => {});
  t.after(() => client.close());
  const h2 = await new Promise<http2.IncomingHttpHeaders>((resolve, reject) => {
    const s = client.request({
      ':method': 'CONNECT',
      ':authority': `127.0.0.1:${new URL(backend.url).port}`,
    });
    s.on('response', (h) => {
      s.resume();
      resolve(h);
    });
    s.on('error', reject);
  });
  assert.equal(h2[':status'], 405);
  assert.equal(h2.allow, 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
  assert.equal(backend.seen.length, 0);
  // The HTTP/2 stream's line is written when the stream closes.
  await waitFor(() => gw.access.length === 4, 'four access-log lines');
  assert.deepEqual(
    gw.access.map((e) => [e.method, e.status, e.error]),
    Array(4).fill(['CONNECT', 405, 'GH_METHOD_NOT_ALLOWED']),
  );
});

test('method override: a POST overridden to DELETE is routed, authorized and logged as DELETE (a deny rule on DELETE applies)', async (t) => {
  const { gw, seen } = await setup(t);
  for (const [name, value] of [
    ['x-http-method-override', 'DELETE'],
    ['x-http-method', 'DELETE'],
    ['x-method-override', 'DELETE'],
    ['x-http-method-override', 'delete'],
    ['x-http-method-override', ' Delete '],
  ] as const) {
    const r = await request(gw.url(), {
      method: 'POST',
      path: '/api/jobs/1',
      headers: { ...AUTH, [name]: value, 'content-length': '0', accept: 'application/json' },
    });
    assert.equal(r.status, 403, `${name}: ${value}`);
    assert.equal(JSON.parse(r.body.toString()).rule, 'no-delete');
  }
  assert.equal(seen.length, 0);
  // An allowed override reaches the upstream as the POST it is, carrying its override header.
  const put = await request(gw.url(), {
    method: 'POST',
    path: '/api/jobs/1',
    headers: { ...AUTH, 'x-http-method-override': 'PUT' },
    body: 'x=1',
  });
  assert.equal(put.status, 200);
  assert.equal(seen[0]?.method, 'POST');
  assert.equal(seen[0]?.headers['x-http-method-override'], 'PUT');
  assert.deepEqual(
    gw.access.map((e) => [e.method, e.route, e.status, e.rule ?? null]),
    [...Array(5).fill(['DELETE', 'api', 403, 'no-delete']), ['PUT', 'api', 200, 'engineers']],
  );
});

test('method override: match.methods sees the overriding method, and the route it reaches must opt in too', async (t) => {
  const { gw, seen } = await setup(t);
  // POST /api/put routes to `api` (POST), then with PUT to `api-put` (match.methods: [PUT]), which opts in.
  const put = await request(gw.url(), {
    method: 'POST',
    path: '/api/put/x',
    headers: { ...AUTH, 'x-http-method-override': 'PUT' },
  });
  assert.equal(put.status, 200);
  assert.equal(gw.access[0]?.route, 'api-put');
  // With DELETE it reaches `api-admin`, which does not accept overrides.
  const admin = await request(gw.url(), {
    method: 'POST',
    path: '/api/admin/x',
    headers: { ...AUTH, 'x-http-method-override': 'DELETE' },
  });
  assert.equal(admin.status, 400);
  assert.match(admin.body.toString(), /GH_BAD_METHOD_OVERRIDE/);
  assert.equal(seen.length, 1);
});

test('method override to TRACE or CONNECT is refused like the methods themselves; on a trace route it is stripped like a TRACE', async (t) => {
  const { gw, seen } = await setup(t);
  for (const method of ['TRACE', 'CONNECT', 'trace']) {
    const r = await request(gw.url(), {
      method: 'POST',
      path: '/api/x',
      headers: { ...AUTH, 'x-http-method-override': method },
    });
    assert.equal(r.status, 405, method);
    assert.ok(r.headers.allow);
    assertNoSecret(r.body.toString());
  }
  assert.equal(seen.length, 0);
  const traced = await request(gw.url(), {
    method: 'POST',
    path: '/traced/x',
    headers: { ...AUTH, 'x-http-method-override': 'TRACE' },
  });
  assert.equal(traced.status, 200);
  assertNoSecret(traced.body.toString());
  assert.equal(seen[0]?.method, 'POST');
  assert.equal(gw.access[gw.access.length - 1]?.method, 'TRACE');
});

test('method override is refused (400) on a GET (a cross-site <img>), when conflicting, invalid or to HEAD', async (t) => {
  const { gw, seen } = await setup(t);
  const cases: Array<[string, Record<string, string | string[]>]> = [
    ['GET', { 'x-http-method-override': 'DELETE' }],
    ['PUT', { 'x-http-method-override': 'DELETE' }],
    ['POST', { 'x-http-method-override': 'DELETE', 'x-http-method': 'PUT' }],
    ['POST', { 'x-http-method-override': ['DELETE', 'PUT'] }],
    ['POST', { 'x-method-override': 'PUT, DELETE' }],
    ['POST', { 'x-http-method-override': 'DE LETE' }],
    ['POST', { 'x-http-method-override': '' }],
    ['POST', { 'x-http-method-override': 'HEAD' }],
  ];
  for (const [method, headers] of cases) {
    const r = await request(gw.url(), { method, path: '/api/x', headers: { ...AUTH, ...headers } });
    assert.equal(r.status, 400, `${method} ${JSON.stringify(headers)}`);
    assert.match(r.body.toString(), /GH_BAD_METHOD_OVERRIDE/);
  }
  // Agreeing headers are one override.
  const agree = await request(gw.url(), {
    method: 'POST',
    path: '/api/x',
    headers: { ...AUTH, 'x-http-method-override': 'PUT', 'x-http-method': 'put' },
  });
  assert.equal(agree.status, 200);
  assert.equal(seen.length, 1);
});

test('method override: an override header named in Connection (removed before forwarding) is refused, never decided on as the override while the upstream gets the POST', async (t) => {
  const { gw, seen } = await setup(t);
  // /api/put takes only PUT: decided as the override it would admit a POST the upstream acts on.
  for (const [name, connection] of [
    ['x-http-method-override', 'x-http-method-override'],
    ['x-http-method', 'keep-alive, X-HTTP-Method'],
    ['x-method-override', 'X-Method-Override '],
  ] as const) {
    const r = await request(gw.url(), {
      method: 'POST',
      path: '/api/put',
      headers: { ...AUTH, [name]: 'PUT', connection },
      body: 'x=1',
    });
    assert.equal(r.status, 400, `${name} named in Connection: ${connection}`);
    assert.match(r.body.toString(), /GH_BAD_METHOD_OVERRIDE/);
  }
  assert.equal(seen.length, 0, 'nothing reached the upstream');
  // Another header named in Connection does not matter.
  const other = await request(gw.url(), {
    method: 'POST',
    path: '/api/put',
    headers: { ...AUTH, 'x-http-method-override': 'PUT', connection: 'x-other' },
    body: 'x=1',
  });
  assert.equal(other.status, 200);
  assert.equal(seen[0]?.headers['x-http-method-override'], 'PUT');
});

test('method override on a route without opt-in changes nothing: routing, policy and the log see the POST', async (t) => {
  const { gw, seen } = await setup(t);
  const r = await request(gw.url(), {
    method: 'POST',
    path: '/plain/x',
    headers: { ...AUTH, 'x-http-method-override': 'DELETE' },
  });
  assert.equal(r.status, 200, 'the DELETE deny rule does not apply: the upstream is not asked to delete');
  assert.equal(seen[0]?.method, 'POST');
  assert.equal(seen[0]?.headers['x-http-method-override'], undefined, 'the override is not forwarded');
  assert.deepEqual(
    gw.access.map((e) => [e.method, e.route]),
    [['POST', 'plain']],
  );
  // A GET with an override on such a route is just a GET.
  const get = await request(gw.url(), {
    path: '/plain/y',
    headers: { ...AUTH, 'x-http-method-override': 'DELETE' },
  });
  assert.equal(get.status, 200);
});

test('gatehouse check and explain see the overriding method and refuse TRACE and CONNECT as the gateway does', () => {
  const cfg = ConfigSchema.parse({
    ...methodsConfig('http://127.0.0.1:9'),
    tests: [
      {
        name: 'override to DELETE is denied',
        as: { groups: ['eng'] },
        request: {
          method: 'POST',
          url: 'http://app.test/api/x',
          headers: { 'X-HTTP-Method-Override': 'DELETE' },
        },
        expect: 'deny',
      },
      {
        name: 'override to PUT is allowed',
        as: { groups: ['eng'] },
        request: { method: 'POST', url: 'http://app.test/api/put/x', headers: { 'X-HTTP-Method': 'PUT' } },
        expect: 'allow',
      },
      {
        name: 'trace',
        as: { groups: ['eng'] },
        request: { method: 'TRACE', url: 'http://app.test/plain/x' },
        expect: 405,
      },
      {
        name: 'traced',
        as: { groups: ['eng'] },
        request: { method: 'TRACE', url: 'http://app.test/traced/x' },
        expect: 'allow',
      },
      {
        name: 'override on GET',
        as: { groups: ['eng'] },
        request: {
          method: 'GET',
          url: 'http://app.test/api/x',
          headers: { 'X-HTTP-Method-Override': 'DELETE' },
        },
        expect: 400,
      },
      {
        name: 'override without opt-in',
        as: { groups: ['eng'] },
        request: {
          method: 'POST',
          url: 'http://app.test/plain/x',
          headers: { 'X-HTTP-Method-Override': 'DELETE' },
        },
        expect: 'allow',
      },
      {
        name: 'connect',
        as: { groups: ['eng'] },
        request: { method: 'CONNECT', url: 'http://app.test/plain/x' },
        expect: 405,
      },
    ],
  });
  const results = runConfigTests(cfg);
  assert.deepEqual(
    results.filter((r) => !r.ok).map((r) => `${r.name}: ${r.detail}`),
    [],
  );
  const explained = explainRequest(
    cfg,
    'POST',
    'http://app.test/api/x',
    { groups: ['eng'] },
    {
      headers: { 'x-http-method-override': 'DELETE' },
    },
  );
  assert.ok(explained.lines.includes('method: DELETE (method override)'), explained.lines.join('\n'));
  assert.ok(explained.lines.includes('route: api'));
  assert.equal(explained.decision.status, 403);
  const trace = explainRequest(cfg, 'TRACE', 'http://app.test/limited/x', { groups: ['eng'] });
  assert.equal(trace.decision.status, 405);
  assert.ok(trace.lines.includes('route: limited'), trace.lines.join('\n'));
});

test('after the method attacks the gateway still serves normally', async (t) => {
  const { gw, seen } = await setup(t);
  await Promise.all([
    request(gw.url(), { method: 'TRACE', path: '/plain/x', headers: AUTH }),
    request(gw.url(), {
      method: 'POST',
      path: '/api/x',
      headers: { ...AUTH, 'x-http-method-override': 'CONNECT' },
    }),
    request(gw.url(), {
      method: 'GET',
      path: '/api/x',
      headers: { ...AUTH, 'x-http-method-override': 'DELETE' },
    }),
    rawExchange(gw.port(), 'CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n'),
  ]);
  assert.equal(seen.length, 0);
  const r = await request(gw.url(), { path: '/plain/ok', headers: AUTH });
  assert.equal(r.status, 200);
  assert.match(r.body.toString(), /^GET \/plain\/ok HTTP\/1\.1/);
});

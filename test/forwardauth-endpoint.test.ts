/**
 * The forward-auth endpoint without a proxy in front: the test itself sends the auth subrequests, from a
 * trusted peer (127.0.0.1) and an untrusted one (127.0.0.2), to a gateway whose built-in proxy answers
 * the very same requests on another listener, so that both data planes can be compared.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import { createLocalJWKSet, type JSONWebKeySet, jwtVerify } from 'jose';
import { forwardedRequest } from '../src/forwardauth/request.js';
import { generateApiKey } from '../src/identity/apikeys.js';
import { behindProxy } from '../src/proxy/access.js';
import { makeKey, startIssuer, type TestIssuer } from './helpers/identity.js';
import { seenOf, startBackend, startGateway, type TestGateway } from './helpers/proxy.js';

const HOST = 'app.example.test';
const SESSION_SECRET = 'forward-auth-session-secret-0123456789abcdef';

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One HTTP/1.1 request from `from` (a loopback source address); headers may be a flat list (repeats). */
function call(
  port: number,
  opts: { path?: string; method?: string; headers?: http.OutgoingHttpHeaders | string[]; from?: string },
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port,
      localAddress: opts.from ?? '127.0.0.1',
      method: opts.method ?? 'GET',
      path: opts.path ?? '/.gatehouse/auth',
      headers: opts.headers,
      agent: false,
      signal: AbortSignal.timeout(20_000),
    });
    req.on('error', reject);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks).toString(),
        }),
      );
    });
    req.end();
  });
}

function json(r: Reply): Record<string, unknown> {
  return JSON.parse(r.body) as Record<string, unknown>;
}

describe('forward-auth endpoint', () => {
  let idp: TestIssuer;
  let gw: TestGateway;
  const dataKey = generateApiKey('etl');
  const adminKey = generateApiKey('ops');

  before(async () => {
    idp = await startIssuer([await makeKey('k1', 'ES256')]);
  });
  after(() => idp.close());

  async function gateway(t: import('node:test').TestContext): Promise<TestGateway> {
    const backend = await startBackend(t, 'app');
    return startGateway(t, {
      listeners: [
        { name: 'web', bind: '127.0.0.1:0' },
        { name: 'authz', bind: '127.0.0.1:0', forwardAuth: true },
      ],
      server: { trustedProxies: ['127.0.0.1/32'] },
      upstreams: { app: { servers: [{ url: backend.url }] } },
      identity: {
        session: { secrets: [SESSION_SECRET] },
        // Discovery is lazy: the sign-in redirect is decided without the provider.
        providers: [{ name: 'corp', type: 'oidc', issuer: 'http://127.0.0.1:9', clientId: 'gatehouse' }],
        bearer: [{ issuer: idp.issuer, audiences: ['api'], algorithms: ['ES256'] }],
        apiKeys: [
          { id: 'etl', hash: dataKey.hashLine, subject: 'agent:etl', groups: ['data-eng'] },
          { id: 'ops', hash: adminKey.hashLine, subject: 'agent:ops', groups: ['admins', 'data-eng'] },
        ],
      },
      policies: {
        admins: { allow: [{ name: 'admins', groups: ['admins'] }] },
        'data-eng': {
          allow: [{ name: 'engineers', groups: ['data-eng'] }],
          deny: [{ name: 'no-test-net', sourceIp: ['203.0.113.0/24'] }],
        },
      },
      routes: [
        { name: 'public', match: { path: '/public' }, upstream: 'app', public: true, identityHeaders: true },
        { name: 'read-only', match: { path: '/ro', methods: ['GET'] }, upstream: 'app', public: true },
        {
          name: 'admin',
          match: { path: '/admin' },
          upstream: 'app',
          policy: 'admins',
          identityHeaders: true,
        },
        {
          name: 'data',
          match: { path: '/data' },
          upstream: 'app',
          policy: 'data-eng',
          identityHeaders: true,
          cors: { origins: ['https://ui.example.test'], credentials: true },
        },
        { name: 'quiet', match: { path: '/quiet' }, upstream: 'app', policy: 'data-eng' },
        {
          name: 'limited',
          match: { path: '/limited' },
          upstream: 'app',
          policy: 'data-eng',
          rateLimit: { rate: '1/min', burst: 2 },
        },
        { name: 'metered', match: { path: '/metered' }, upstream: 'app', policy: 'data-eng' },
        { name: 'live', match: { path: '/live' }, upstream: 'app', policy: 'data-eng', websocket: true },
      ],
      quotas: { 'daily-runs': { limit: 1, window: '1d', routes: ['metered'] } },
      logging: { level: 'warn' },
    });
  }

  const auth = (uri: string, extra: Record<string, string> = {}, method = 'GET') => ({
    host: 'authz.internal:9100',
    'x-forwarded-method': method,
    'x-forwarded-proto': 'https',
    'x-forwarded-host': HOST,
    'x-forwarded-uri': uri,
    ...extra,
  });

  before(async () => {});

  test('a WebSocket handshake is decided as one, also when the proxy drops Upgrade from the subrequest', async (t) => {
    gw = await gateway(t);
    const port = gw.port('authz');
    const key = {
      'x-api-key': dataKey.key,
      'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
      'sec-websocket-version': '13',
    };
    // nginx's auth subrequest: no Upgrade or Connection, the handshake's own Sec-WebSocket-Key.
    const nginx = (uri: string) => ({
      host: HOST,
      'x-original-method': 'GET',
      'x-original-uri': uri,
      ...key,
    });
    const refused = await call(port, { headers: nginx('/data/socket') });
    assert.equal(refused.status, 403, refused.body);
    assert.equal(json(refused).code, 'GH_WEBSOCKET_NOT_ALLOWED');
    const allowed = await call(port, { headers: nginx('/live/socket') });
    assert.equal(allowed.status, 200, allowed.body);
    assert.notEqual(allowed.headers['x-gatehouse-assertion'], '', 'the identity is sent on');
    // Caddy and Traefik may pass Upgrade on: the same answers.
    const upgrade = await call(port, {
      headers: auth('/data/socket', { 'x-api-key': dataKey.key, upgrade: 'websocket' }),
    });
    assert.equal(upgrade.status, 403, upgrade.body);
    assert.equal(json(upgrade).code, 'GH_WEBSOCKET_NOT_ALLOWED');
    // A plain request on the WebSocket route is not a handshake, and the plain route serves it.
    assert.equal((await call(port, { headers: auth('/data/x', { 'x-api-key': dataKey.key }) })).status, 200);
  });

  test('an untrusted peer gets 403 and its forwarded headers are never believed', async (t) => {
    gw = await gateway(t);
    const port = gw.port('authz');
    for (const headers of [
      auth('/public'),
      auth('/data', { 'x-api-key': dataKey.key }),
      { host: HOST },
      { host: HOST, 'x-original-uri': '/public', 'x-original-method': 'GET' },
    ]) {
      const r = await call(port, { headers, from: '127.0.0.2' });
      assert.equal(r.status, 403, r.body);
      assert.equal(json(r).code, 'GH_UNTRUSTED_PEER');
      assert.equal(r.headers['x-gatehouse-user'], undefined);
      assert.equal(r.headers['x-gatehouse-assertion'], undefined);
    }
    const entry = gw.access.at(-1)!;
    assert.equal(entry.plane, 'forward-auth');
    assert.equal(entry.error, 'GH_UNTRUSTED_PEER');
    assert.equal(entry.path, '/.gatehouse/auth');
    // Only listeners with forwardAuth serve the endpoint.
    const other = await call(gw.port('web'), { headers: auth('/public') });
    assert.equal(other.status, 404);
  });

  test('allowed: 200 with all four headers, identity from an API key or a bearer JWT', async (t) => {
    gw = await gateway(t);
    const port = gw.port('authz');
    // Public route, no identity: the four headers are there, empty; a client's own never come back.
    const anon = await call(port, {
      headers: auth('/public/x', { 'x-gatehouse-user': 'root', 'x-gatehouse-assertion': 'forged' }),
    });
    assert.equal(anon.status, 200, anon.body);
    for (const h of ['x-gatehouse-user', 'x-gatehouse-email', 'x-gatehouse-groups', 'x-gatehouse-assertion'])
      assert.equal(anon.headers[h], '', h);

    const keyed = await call(port, { headers: auth('/data/jobs?x=1', { 'x-api-key': dataKey.key }) });
    assert.equal(keyed.status, 200, keyed.body);
    assert.equal(keyed.headers['x-gatehouse-user'], 'agent:etl');
    assert.equal(keyed.headers['x-gatehouse-groups'], 'data-eng');
    assert.equal(keyed.headers['x-gatehouse-email'], '');
    const jwksReply = await call(port, { path: '/.gatehouse/jwks.json', headers: { host: HOST } });
    const jwks = createLocalJWKSet(JSON.parse(jwksReply.body) as JSONWebKeySet);
    const keyedClaims = await jwtVerify(keyed.headers['x-gatehouse-assertion'] as string, jwks, {
      audience: HOST,
      issuer: 'gatehouse',
    });
    assert.equal(keyedClaims.payload.sub, 'agent:etl');

    const jwt = await idp.sign({
      aud: 'api',
      sub: 'u-alice',
      preferred_username: 'alice',
      email: 'alice@example.com',
      groups: ['data-eng', 'ops'],
    });
    // The route's CORS answer comes back for the proxy to add to the client's response.
    const bearer = await call(port, {
      headers: auth('/data', { authorization: `Bearer ${jwt}`, origin: 'https://ui.example.test' }),
    });
    assert.equal(bearer.status, 200, bearer.body);
    assert.equal(bearer.headers['x-gatehouse-user'], 'alice');
    assert.equal(bearer.headers['x-gatehouse-email'], 'alice@example.com');
    assert.equal(bearer.headers['x-gatehouse-groups'], 'data-eng,ops');
    assert.equal(bearer.headers['access-control-allow-origin'], 'https://ui.example.test');
    const { payload } = await jwtVerify(bearer.headers['x-gatehouse-assertion'] as string, jwks, {
      audience: HOST,
      issuer: 'gatehouse',
    });
    assert.equal(payload.sub, 'u-alice');
    // A route without identityHeaders: the assertion only, the other three empty (still present).
    const quiet = await call(port, { headers: auth('/quiet', { 'x-api-key': dataKey.key }) });
    assert.equal(quiet.status, 200);
    assert.equal(quiet.headers['x-gatehouse-user'], '');
    assert.ok(String(quiet.headers['x-gatehouse-assertion']).length > 20);
    // HEAD answers the same, without a body.
    const head = await call(port, { method: 'HEAD', headers: auth('/data', { 'x-api-key': dataKey.key }) });
    assert.equal(head.status, 200);
    assert.equal(head.headers['x-gatehouse-user'], 'agent:etl');

    // The access log names the plane, the original request and the decision.
    const entry = gw.access.find((e) => e.path === '/data' && e.identity === 'u-alice')!;
    assert.equal(entry.plane, 'forward-auth');
    assert.equal(entry.method, 'GET');
    assert.equal(entry.host, HOST);
    assert.equal(entry.route, 'data');
    assert.equal(entry.authMethod, 'bearer');
    assert.equal(entry.reason, 'policy-allow:engineers');
    assert.equal(entry.rule, 'engineers');
    assert.equal(entry.status, 200);
  });

  test('refused: 401 with WWW-Authenticate, 403 with the reason, sign-in for browsers', async (t) => {
    gw = await gateway(t);
    const port = gw.port('authz');
    const none = await call(port, { headers: auth('/data') });
    assert.equal(none.status, 401);
    assert.equal(none.headers['www-authenticate'], 'Bearer realm="gatehouse"');
    assert.equal(json(none).code, 'GH_UNAUTHENTICATED');
    const expired = await idp.sign(
      { aud: 'api', sub: 'x', groups: ['data-eng'] },
      { exp: Math.floor(Date.now() / 1000) - 600 },
    );
    const old = await call(port, { headers: auth('/data', { authorization: `Bearer ${expired}` }) });
    assert.equal(old.status, 401);
    assert.match(String(old.headers['www-authenticate']), /error="invalid_token"/);
    assert.equal(json(old).reason, 'token-expired');
    assert.equal(old.headers['x-gatehouse-user'], undefined);

    const forbidden = await call(port, { headers: auth('/admin/users', { 'x-api-key': dataKey.key }) });
    assert.equal(forbidden.status, 403);
    const body = json(forbidden);
    assert.equal(body.code, 'GH_FORBIDDEN');
    assert.equal(body.reason, 'no-allow-rule');
    assert.equal(forbidden.headers['x-gatehouse-reason'], 'no-allow-rule');
    // A browser shown the refusal (Caddy and Traefik pass it on) gets the built-in proxy's page.
    const page = await call(port, {
      headers: auth('/admin/users', { 'x-api-key': dataKey.key, accept: 'text/html' }),
    });
    assert.equal(page.status, 403);
    assert.match(String(page.headers['content-type']), /^text\/html/);
    assert.match(page.body, /no-allow-rule/);
    assert.equal(page.headers['x-gatehouse-reason'], 'no-allow-rule');
    const admin = await call(port, { headers: auth('/admin/users', { 'x-api-key': adminKey.key }) });
    assert.equal(admin.status, 200);

    // The client address is the one the trusted proxy forwarded for.
    const denied = await call(port, {
      headers: auth('/data', { 'x-api-key': dataKey.key, 'x-forwarded-for': '203.0.113.9' }),
    });
    assert.equal(denied.status, 403);
    assert.equal(json(denied).reason, 'policy-deny:no-test-net');
    assert.equal(gw.access.at(-1)!.client, '203.0.113.9');

    // A browser without a session: to sign-in on the public host (Caddy, Traefik follow the 302)...
    const html = { accept: 'text/html,application/xhtml+xml' };
    const browser = await call(port, { headers: auth('/data/x?y=1', html) });
    assert.equal(browser.status, 302);
    assert.equal(browser.headers.location, '/.gatehouse/login?rd=%2Fdata%2Fx%3Fy%3D1');
    // ...while nginx, which cannot pass a 302 on, gets 401 and the address for its error_page.
    const nginx = await call(port, {
      headers: { host: HOST, 'x-original-method': 'GET', 'x-original-uri': '/data/x?y=1', ...html },
    });
    assert.equal(nginx.status, 401);
    assert.equal(nginx.headers['x-gatehouse-location'], '/.gatehouse/login?rd=%2Fdata%2Fx%3Fy%3D1');
    assert.equal(nginx.headers.location, undefined);
    // An API client never gets the sign-in address.
    assert.equal(none.headers['x-gatehouse-location'], undefined);
  });

  test('over a rate limit: 429 with Retry-After and the RateLimit headers, passed on as is by Caddy and Traefik', async (t) => {
    gw = await gateway(t);
    const port = gw.port('authz');
    const who = { 'x-api-key': dataKey.key };
    for (const left of [1, 0]) {
      const ok = await call(port, { headers: auth('/limited/run', who) });
      assert.equal(ok.status, 200, ok.body);
      assert.equal(ok.headers['x-gatehouse-user'], '', 'a route without identityHeaders');
      // For the proxy to copy: on a 200 the standard names would mean nothing to any of them.
      assert.equal(ok.headers['x-gatehouse-ratelimit-policy'], '"limited";q=1;w=60');
      assert.match(String(ok.headers['x-gatehouse-ratelimit']), new RegExp(`^"limited";r=${left};t=\\d+$`));
      assert.equal(ok.headers['ratelimit-policy'], undefined);
      assert.equal(ok.headers.ratelimit, undefined);
      assert.equal(ok.headers['retry-after'], undefined);
    }
    // A browser gets the same JSON answer: it is not a page about who may pass.
    const r = await call(port, { headers: auth('/limited/run', { ...who, accept: 'text/html' }) });
    assert.equal(r.status, 429, r.body);
    assert.match(String(r.headers['content-type']), /^application\/json/);
    const retry = Number(r.headers['retry-after']);
    assert.ok(retry >= 55 && retry <= 60, `Retry-After ${r.headers['retry-after']}`);
    assert.equal(r.headers['ratelimit-policy'], '"limited";q=1;w=60');
    assert.match(String(r.headers.ratelimit), /^"limited";r=0;t=\d+$/);
    assert.equal(r.headers['x-gatehouse-reason'], 'rate-limited:limited');
    assert.equal(r.headers['x-gatehouse-code'], 'GH_RATE_LIMITED');
    assert.equal(r.headers['x-gatehouse-status'], undefined);
    assert.equal(r.headers['x-gatehouse-user'], undefined);
    assert.equal(r.headers['x-gatehouse-assertion'], undefined);
    const body = json(r);
    assert.equal(body.status, 429);
    assert.equal(body.code, 'GH_RATE_LIMITED');
    assert.equal(body.reason, 'rate-limited:limited');
    const entry = gw.access.at(-1)!;
    assert.equal(entry.plane, 'forward-auth');
    assert.equal(entry.status, 429);
    assert.equal(entry.limit, 'limited');
    assert.equal(entry.error, 'GH_RATE_LIMITED');
    // Another caller has a budget of its own; a route without a limit answers both names empty.
    const other = await call(port, { headers: auth('/limited/run', { 'x-api-key': adminKey.key }) });
    assert.equal(other.status, 200);
    const plain = await call(port, { headers: auth('/quiet', who) });
    assert.equal(plain.status, 200);
    assert.equal(plain.headers['x-gatehouse-ratelimit-policy'], '');
    assert.equal(plain.headers['x-gatehouse-ratelimit'], '');

    // A quota without budget: 429 GH_QUOTA_EXCEEDED until its window ends.
    assert.equal((await call(port, { headers: auth('/metered', who) })).status, 200);
    const spent = await call(port, { headers: auth('/metered', who) });
    assert.equal(spent.status, 429);
    assert.equal(json(spent).code, 'GH_QUOTA_EXCEEDED');
    assert.equal(spent.headers['x-gatehouse-reason'], 'quota-exceeded:daily-runs');
    assert.ok(Number(spent.headers['retry-after']) >= 1);
    assert.equal(spent.headers['ratelimit-policy'], '"daily-runs";q=1;w=86400');
  });

  test('over a rate limit, nginx: 403 with X-Gatehouse-Status 429, Retry-After and X-Gatehouse-RateLimit for its error_page; a real 403 says nothing of it', async (t) => {
    gw = await gateway(t);
    const port = gw.port('authz');
    const nginx = (uri: string, extra: Record<string, string> = {}) => ({
      host: HOST,
      'x-original-method': 'GET',
      'x-original-uri': uri,
      'x-api-key': dataKey.key,
      ...extra,
    });
    for (const left of [1, 0]) {
      const ok = await call(port, { headers: nginx('/limited') });
      assert.equal(ok.status, 200, ok.body);
      assert.equal(ok.headers['x-gatehouse-ratelimit-policy'], '"limited";q=1;w=60');
      assert.match(String(ok.headers['x-gatehouse-ratelimit']), new RegExp(`^"limited";r=${left};t=\\d+$`));
    }
    // nginx turns any auth answer but 2xx, 401 and 403 into 500.
    const r = await call(port, { headers: nginx('/limited', { accept: 'text/html' }) });
    assert.equal(r.status, 403, r.body);
    assert.equal(r.headers['x-gatehouse-status'], '429');
    assert.equal(r.headers['x-gatehouse-code'], 'GH_RATE_LIMITED');
    assert.equal(r.headers['x-gatehouse-reason'], 'rate-limited:limited');
    const retry = Number(r.headers['retry-after']);
    assert.ok(retry >= 55 && retry <= 60, `Retry-After ${r.headers['retry-after']}`);
    assert.equal(r.headers['x-gatehouse-ratelimit-policy'], '"limited";q=1;w=60');
    assert.match(String(r.headers['x-gatehouse-ratelimit']), /^"limited";r=0;t=\d+$/);
    assert.equal(r.headers.ratelimit, undefined);
    assert.match(String(r.headers['content-type']), /^application\/json/);
    assert.equal(json(r).status, 429);
    assert.equal(json(r).code, 'GH_RATE_LIMITED');
    assert.equal(gw.access.at(-1)!.limit, 'limited');

    assert.equal((await call(port, { headers: nginx('/metered') })).status, 200);
    const spent = await call(port, { headers: nginx('/metered') });
    assert.equal(spent.status, 403);
    assert.equal(spent.headers['x-gatehouse-status'], '429');
    assert.equal(spent.headers['x-gatehouse-code'], 'GH_QUOTA_EXCEEDED');
    assert.ok(Number(spent.headers['retry-after']) >= 1);

    const forbidden = await call(port, { headers: nginx('/admin') });
    assert.equal(forbidden.status, 403);
    assert.equal(forbidden.headers['x-gatehouse-status'], undefined);
    assert.equal(forbidden.headers['retry-after'], undefined);
    assert.equal(forbidden.headers['x-gatehouse-code'], 'GH_FORBIDDEN');
    assert.equal(forbidden.headers['x-gatehouse-ratelimit'], undefined);
  });

  test('tricky targets decide exactly as the built-in proxy decides them', async (t) => {
    gw = await gateway(t);
    const uris = [
      '/admin',
      '/admin;x',
      '/admin;x/users',
      '/%2e%2e/admin',
      '/%2E%2E/admin',
      '/x/..;/admin',
      '/public/../admin',
      '/public/%2e%2e/admin',
      '/public/..;/admin',
      '/public%2fadmin',
      '/public/..%2fadmin',
      '/public/%252e%252e/admin',
      '/public/%c0%ae%c0%ae/admin',
      '/admin%3bx',
      '//admin',
      '/./admin',
      '/ADMIN',
      '/admin.',
      '/public\\..\\admin',
      '/public?x=/admin',
      '/public?/../admin',
      '/admin?/public',
      '/public/%2561dmin',
      '/publicx',
      '/nothing-here',
      '/.gatehouse/login',
      '/public/../.gatehouse/jwks.json',
    ];
    const identities: Array<Record<string, string>> = [
      {},
      { 'x-api-key': dataKey.key },
      { 'x-api-key': adminKey.key },
    ];
    for (const who of identities) {
      for (const uri of uris) {
        const proxied = await call(gw.port('web'), { path: uri, headers: { host: HOST, ...who } });
        const decided = await call(gw.port('authz'), { headers: auth(uri, who) });
        // The built-in proxy serves /.gatehouse/* itself; forward-auth refuses to decide them (404).
        const expected = uri.includes('.gatehouse') ? 404 : proxied.status;
        assert.equal(decided.status, expected, `${uri} as ${JSON.stringify(who)}: ${decided.body}`);
        if (expected === 200) {
          const seen = seenOf(Buffer.from(proxied.body));
          assert.equal(decided.headers['x-gatehouse-user'], seen.headers['x-gatehouse-user'] ?? '', uri);
        }
      }
    }
    // Methods decide too: the route answers GET only; TRACE is never allowed.
    assert.equal((await call(gw.port('authz'), { headers: auth('/ro') })).status, 200);
    assert.equal((await call(gw.port('authz'), { headers: auth('/ro', {}, 'DELETE') })).status, 404);
    assert.equal((await call(gw.port('authz'), { headers: auth('/public', {}, 'TRACE') })).status, 405);
  });

  test('a fragment or a query never widens a rule', async (t) => {
    gw = await gateway(t);
    const port = gw.port('authz');
    for (const uri of ['/admin#/public', '/public#/../admin', '/admin?x#/public']) {
      const r = await call(port, { headers: auth(uri) });
      assert.equal(r.status, 400, uri);
      assert.equal(json(r).code, 'GH_BAD_FORWARDED');
    }
    for (const uri of ['/admin?/public', '/admin?path=/public', '/admin?../public']) {
      const r = await call(port, { headers: auth(uri) });
      assert.equal(r.status, 401, uri);
    }
  });

  test('forwarded headers: families, conflicts, repeats and malformed values', async (t) => {
    gw = await gateway(t);
    const port = gw.port('authz');
    const code = async (headers: Record<string, string> | string[]): Promise<[number, unknown]> => {
      const r = await call(port, { headers });
      assert.doesNotMatch(r.body, /at .*\.ts:\d+/, 'no stack trace');
      return [r.status, r.status === 200 ? 'ok' : json(r).code];
    };
    // Both families naming the same request: decided.
    assert.deepEqual(
      await code({ ...auth('/public'), 'x-original-method': 'GET', 'x-original-uri': '/public' }),
      [200, 'ok'],
    );
    // Disagreeing: refused, whichever differs.
    assert.deepEqual(
      await code({ ...auth('/public'), 'x-original-method': 'GET', 'x-original-uri': '/admin' }),
      [400, 'GH_FORWARDED_CONFLICT'],
    );
    assert.deepEqual(
      await code({ ...auth('/public'), 'x-original-method': 'POST', 'x-original-uri': '/public' }),
      [400, 'GH_FORWARDED_CONFLICT'],
    );
    const bad: Array<Record<string, string>> = [
      { host: HOST },
      { host: HOST, 'x-forwarded-uri': '/public' },
      { host: HOST, 'x-original-uri': '/public' },
      { host: HOST, 'x-forwarded-method': 'GET' },
      auth('public'),
      auth('http://evil.example/public'),
      auth('*'),
      auth(''),
      auth('/public', { 'x-forwarded-proto': 'ftp' }),
      auth('/public', { 'x-forwarded-method': 'G E T' }),
      auth('/public', { 'x-forwarded-method': '' }),
      auth(`/public/${'a'.repeat(9000)}`),
    ];
    for (const headers of bad)
      assert.deepEqual(await code(headers), [400, 'GH_BAD_FORWARDED'], JSON.stringify(headers).slice(0, 200));
    // A host that is not one, or a path that cannot be normalized: the verdict's own 400s.
    assert.deepEqual(await code(auth('/public', { 'x-forwarded-host': 'a b' })), [400, 'GH_BAD_HOST']);
    assert.deepEqual(await code(auth('/public', { 'x-forwarded-host': 'a.test, b.test' })), [
      400,
      'GH_BAD_HOST',
    ]);
    assert.deepEqual(await code(auth('/%zz')), [400, 'GH_BAD_PATH']);
    // A repeated line is refused: the second could be the client's own.
    assert.deepEqual(
      await code([
        'host',
        HOST,
        'x-forwarded-method',
        'GET',
        'x-forwarded-uri',
        '/public',
        'X-Forwarded-Uri',
        '/admin',
      ]),
      [400, 'GH_BAD_FORWARDED'],
    );
    assert.deepEqual(
      await code([
        'host',
        HOST,
        'x-forwarded-method',
        'GET',
        'x-forwarded-uri',
        '/public',
        'x-forwarded-host',
        HOST,
        'x-forwarded-host',
        'evil.test',
      ]),
      [400, 'GH_BAD_FORWARDED'],
    );
    // Without X-Forwarded-Host, the subrequest's Host is the original host.
    assert.deepEqual(await code({ host: HOST, 'x-original-method': 'GET', 'x-original-uri': '/public' }), [
      200,
      'ok',
    ]);
    // Headers larger than the listener accepts: 431 from the parser, never a crash.
    const huge = await call(port, { headers: auth('/public', { 'x-filler': 'a'.repeat(20_000) }) });
    assert.equal(huge.status, 431);
    // The endpoint answers GET and HEAD only.
    const post = await call(port, { method: 'POST', headers: auth('/public') });
    assert.equal(post.status, 405);
    assert.equal(post.headers.allow, 'GET, HEAD');
    // The gateway is still serving.
    assert.deepEqual(await code(auth('/public')), [200, 'ok']);
  });

  test('forwardedRequest reads one family or both, and refuses what it cannot trust', () => {
    const raw = (h: Record<string, string>) => Object.entries(h).flat();
    const h = { 'x-forwarded-method': 'PUT', 'x-forwarded-uri': '/a?b', 'x-forwarded-host': 'h.test' };
    assert.deepEqual(forwardedRequest(h, raw(h)), {
      method: 'PUT',
      uri: '/a?b',
      host: 'h.test',
      scheme: undefined,
      family: 'forwarded',
    });
    const n = {
      host: 'n.test',
      'x-original-method': 'GET',
      'x-original-uri': '/x',
      'x-forwarded-proto': 'HTTPS',
    };
    assert.deepEqual(forwardedRequest(n, raw(n)), {
      method: 'GET',
      uri: '/x',
      host: 'n.test',
      scheme: 'https',
      family: 'original',
    });
  });

  test('sign-in behind a trusted proxy sees the public host and scheme', () => {
    const facts = {
      method: 'GET',
      host: 'gatehouse.internal',
      authority: 'gatehouse.internal:8080',
      path: '/.gatehouse/login',
      query: '?rd=%2F',
      headers: {},
      clientIp: '192.0.2.1',
      tls: false,
    };
    const v = behindProxy(facts, {
      'x-forwarded-host': 'App.Example.test:8443',
      'x-forwarded-proto': 'https',
    });
    assert.equal(v.host, 'app.example.test');
    assert.equal(v.authority, 'App.Example.test:8443');
    assert.equal(v.tls, true);
    // Values that are not a host or a scheme change nothing.
    const same = behindProxy(facts, { 'x-forwarded-host': 'a b/c', 'x-forwarded-proto': 'gopher' });
    assert.equal(same.host, 'gatehouse.internal');
    assert.equal(same.tls, false);
    assert.equal(behindProxy(facts, {}), facts);
  });
});

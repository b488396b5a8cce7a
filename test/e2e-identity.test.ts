/**
 * Identity and policy through the running data plane: a real token issuer (discovery + JWKS over
 * HTTP), real backends that echo what they received, and the gateway's listeners in between.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { createLocalJWKSet, type JSONWebKeySet, jwtVerify } from 'jose';
import WebSocket from 'ws';
import { answer } from '../src/core/answer.js';
import { generateApiKey } from '../src/identity/apikeys.js';
import { generateAssertionJwk } from '../src/identity/assertion.js';
import { SessionManager } from '../src/identity/session.js';
import type { StateStore } from '../src/state/types.js';
import { makeKey, startIssuer, type TestIssuer } from './helpers/identity.js';
import {
  config,
  request,
  type Seen,
  seenOf,
  startBackend,
  startGateway,
  type TestGateway,
  waitFor,
} from './helpers/proxy.js';

const HOST = 'api.example.test';
const SESSION_SECRET = 'e2e-session-secret-0123456789abcdef-XYZ';

/** The identity-related headers a backend received, names as sent (any case, any spelling). */
function gatehouseHeaders(seen: Seen): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (let i = 0; i < seen.rawHeaders.length; i += 2) {
    const name = seen.rawHeaders[i]!;
    if (/^x[-_]gatehouse[-_]/i.test(name)) out.push([name, seen.rawHeaders[i + 1]!]);
  }
  return out;
}

function json(body: Buffer): Record<string, unknown> {
  return JSON.parse(body.toString()) as Record<string, unknown>;
}

async function jwksOf(gw: TestGateway): Promise<JSONWebKeySet> {
  const r = await request(gw.url(), { path: '/.gatehouse/jwks.json', headers: { host: 'any.example.test' } });
  assert.equal(r.status, 200);
  return JSON.parse(r.body.toString()) as JSONWebKeySet;
}

describe('machine identities through the gateway', () => {
  let idp: TestIssuer;
  const apiKey = generateApiKey('etl');
  const expiredKey = generateApiKey('old');
  const scopedKey = generateApiKey('scoped');

  before(async () => {
    idp = await startIssuer([await makeKey('k1', 'ES256')]);
  });
  after(() => idp.close());

  const token = (claims: Record<string, unknown>, opts: { exp?: number } = {}) =>
    idp.sign({ aud: 'api', ...claims }, opts);

  async function gateway(
    t: import('node:test').TestContext,
    backendUrl: string,
    extraRoutes: unknown[] = [],
  ) {
    return startGateway(t, {
      ...config({ app: { servers: [{ url: backendUrl }] } }, [
        {
          name: 'data',
          match: { path: '/data' },
          upstream: 'app',
          policy: 'data-eng',
          identityHeaders: true,
          cors: { origins: ['https://app.example'], credentials: true },
        },
        {
          name: 'agents',
          match: { path: '/agents' },
          upstream: 'app',
          policy: 'agents',
          identityHeaders: true,
        },
        { name: 'open', match: { path: '/open' }, upstream: 'app', public: true, identityHeaders: true },
        {
          name: 'passthrough',
          match: { path: '/pass' },
          upstream: 'app',
          policy: 'data-eng',
          passCredentials: true,
        },
        { name: 'other', match: { path: '/other' }, upstream: 'app', policy: 'agents' },
        ...extraRoutes,
        { name: 'rest', upstream: 'app', policy: 'data-eng', identityHeaders: true },
      ]),
      identity: {
        bearer: [{ issuer: idp.issuer, audiences: ['api'], algorithms: ['ES256'] }],
        apiKeys: [
          { id: 'etl', hash: apiKey.hashLine, subject: 'agent:etl', groups: ['agents'] },
          {
            id: 'old',
            hash: expiredKey.hashLine,
            subject: 'agent:old',
            groups: ['agents'],
            expires: '2001-01-01',
          },
          {
            id: 'scoped',
            hash: scopedKey.hashLine,
            subject: 'agent:scoped',
            groups: ['agents'],
            routes: ['other'],
          },
        ],
      },
      policies: {
        'data-eng': {
          allow: [{ name: 'engineers', groups: ['data-eng'] }],
          deny: [
            { name: 'no-contractors', groups: ['contractors'] },
            { name: 'no-admin', paths: ['/admin'] },
          ],
        },
        agents: { allow: [{ name: 'agent-keys', authMethod: ['apiKey'], groups: ['agents'] }] },
      },
    });
  }

  test('a bearer JWT allowed by policy reaches the backend as identity headers and a verifiable assertion', async (t) => {
    const b = await startBackend(t, 'b');
    const gw = await gateway(t, b.url);
    const jwt = await token({
      sub: 'u-alice',
      preferred_username: 'alice',
      email: 'alice@example.com',
      groups: ['data-eng', 'ops'],
    });
    const r = await request(gw.url(), {
      path: '/data/jobs',
      headers: { host: `${HOST}:${gw.port()}`, authorization: `Bearer ${jwt}` },
    });
    assert.equal(r.status, 200, r.body.toString());
    const seen = seenOf(r.body);
    assert.equal(seen.headers['x-gatehouse-user'], 'alice');
    assert.equal(seen.headers['x-gatehouse-email'], 'alice@example.com');
    assert.equal(seen.headers['x-gatehouse-groups'], 'data-eng,ops');
    // The gateway's own credential is not passed upstream.
    assert.equal(seen.headers.authorization, undefined);
    const assertion = seen.headers['x-gatehouse-assertion'] as string;
    const { payload, protectedHeader } = await jwtVerify(assertion, createLocalJWKSet(await jwksOf(gw)), {
      audience: HOST,
      issuer: 'gatehouse',
    });
    assert.equal(protectedHeader.alg, 'ES256');
    assert.equal(payload.sub, 'u-alice');
    assert.equal(payload.email, 'alice@example.com');
    assert.deepEqual(payload.groups, ['data-eng', 'ops']);
    assert.ok(typeof payload.jti === 'string' && payload.exp! > payload.iat!);
    const entry = gw.access.find((e) => e.path === '/data/jobs')!;
    assert.equal(entry.identity, 'u-alice');
    assert.equal(entry.authMethod, 'bearer');
    assert.equal(entry.reason, 'policy-allow:engineers');
    assert.equal(entry.rule, 'engineers');
    // The same token again is decided from the cache: no further signature check at the issuer's keys.
    const hits = idp.jwksHits;
    const again = await request(gw.url(), {
      path: '/data/jobs',
      headers: { authorization: `Bearer ${jwt}` },
    });
    assert.equal(again.status, 200);
    assert.equal(idp.jwksHits, hits);
  });

  test('a bearer JWT denied by policy gets 403 saying who and why, never a redirect', async (t) => {
    const b = await startBackend(t, 'b');
    const gw = await gateway(t, b.url);
    const bob = await token({ sub: 'bob', groups: ['analysts'] });
    const r = await request(gw.url(), { path: '/data/x', headers: { authorization: `Bearer ${bob}` } });
    assert.equal(r.status, 403);
    assert.equal(r.headers.location, undefined);
    const body = json(r.body);
    assert.equal(body.code, 'GH_FORBIDDEN');
    assert.equal(body.reason, 'no-allow-rule');
    assert.equal((body.identity as { subject: string }).subject, 'bob');
    const contractor = await token({ sub: 'carl', groups: ['data-eng', 'contractors'] });
    const denied = await request(gw.url(), {
      path: '/data/x',
      headers: { authorization: `Bearer ${contractor}`, accept: 'text/html' },
    });
    assert.equal(denied.status, 403);
    assert.equal(denied.headers.location, undefined);
    assert.match(String(denied.headers['content-type']), /text\/html/);
    const page = denied.body.toString();
    assert.match(page, /Access denied/);
    assert.match(page, /carl/);
    assert.match(page, /policy-deny:no-contractors/);
    assert.equal(gw.access.at(-1)!.reason, 'policy-deny:no-contractors');
    assert.equal(gw.access.at(-1)!.rule, 'no-contractors');
    assert.equal(b.seen.length, 0);
  });

  test('expired, wrong-audience and missing tokens get 401 with WWW-Authenticate', async (t) => {
    const b = await startBackend(t, 'b');
    const gw = await gateway(t, b.url);
    const expired = await token(
      { sub: 'alice', groups: ['data-eng'] },
      { exp: Math.floor(Date.now() / 1000) - 3600 },
    );
    const r1 = await request(gw.url(), { path: '/data', headers: { authorization: `Bearer ${expired}` } });
    assert.equal(r1.status, 401);
    assert.match(String(r1.headers['www-authenticate']), /^Bearer realm="gatehouse", error="invalid_token"/);
    assert.equal(json(r1.body).reason, 'token-expired');
    const wrongAud = await idp.sign({ sub: 'alice', aud: 'someone-else', groups: ['data-eng'] });
    const r2 = await request(gw.url(), { path: '/data', headers: { authorization: `Bearer ${wrongAud}` } });
    assert.equal(r2.status, 401);
    assert.match(String(r2.headers['www-authenticate']), /error="invalid_token"/);
    assert.equal(json(r2.body).reason, 'token-wrong-audience');
    const none = await request(gw.url(), { path: '/data' });
    assert.equal(none.status, 401);
    assert.equal(none.headers['www-authenticate'], 'Bearer realm="gatehouse"');
    assert.deepEqual(
      { status: json(none.body).status, code: json(none.body).code, reason: json(none.body).reason },
      { status: 401, code: 'GH_UNAUTHENTICATED', reason: 'user-unauthenticated' },
    );
    // Without a login provider a browser gets the 401 page, not a redirect.
    const page = await request(gw.url(), { path: '/data', headers: { accept: 'text/html' } });
    assert.equal(page.status, 401);
    assert.equal(page.headers.location, undefined);
    assert.match(page.body.toString(), /Sign-in required/);
    assert.equal(b.seen.length, 0);
  });

  test('API keys: right, wrong, expired and out of scope; the key never reaches the backend', async (t) => {
    const b = await startBackend(t, 'b');
    const gw = await gateway(t, b.url);
    const ok = await request(gw.url(), { path: '/agents/run', headers: { 'x-api-key': apiKey.key } });
    assert.equal(ok.status, 200, ok.body.toString());
    const seen = seenOf(ok.body);
    assert.equal(seen.headers['x-gatehouse-user'], 'agent:etl');
    assert.equal(seen.headers['x-gatehouse-groups'], 'agents');
    assert.equal(seen.headers['x-api-key'], undefined);
    assert.equal(gw.access.at(-1)!.authMethod, 'apiKey');
    const asBearer = await request(gw.url(), {
      path: '/agents/run',
      headers: { authorization: `Bearer ${apiKey.key}` },
    });
    assert.equal(asBearer.status, 200);
    assert.equal(seenOf(asBearer.body).headers.authorization, undefined);

    const wrong = await request(gw.url(), {
      path: '/agents/run',
      headers: { 'x-api-key': `${apiKey.key.slice(0, -2)}xx` },
    });
    assert.equal(wrong.status, 401);
    assert.equal(json(wrong.body).reason, 'api-key-invalid');
    const expired = await request(gw.url(), {
      path: '/agents/run',
      headers: { 'x-api-key': expiredKey.key },
    });
    assert.equal(expired.status, 401);
    assert.equal(json(expired.body).reason, 'api-key-expired');
    const outOfScope = await request(gw.url(), {
      path: '/agents/run',
      headers: { 'x-api-key': scopedKey.key },
    });
    assert.equal(outOfScope.status, 403);
    assert.equal(json(outOfScope.body).reason, 'api-key-out-of-scope');
    const inScope = await request(gw.url(), { path: '/other', headers: { 'x-api-key': scopedKey.key } });
    assert.equal(inScope.status, 200);
    // A person's token is not an agent key: the agents policy wants authMethod apiKey.
    const person = await token({ sub: 'alice', groups: ['agents'] });
    const r = await request(gw.url(), {
      path: '/agents/run',
      headers: { authorization: `Bearer ${person}` },
    });
    assert.equal(r.status, 403);
    assert.equal(b.seen.length, 3);
  });

  test('spoofed identity headers never reach the backend; the real ones do', async (t) => {
    const b = await startBackend(t, 'b');
    const gw = await gateway(t, b.url);
    const jwt = await token({ sub: 'alice', groups: ['data-eng'] });
    const spoofed = [
      'X-Gatehouse-User',
      'mallory',
      'x_gatehouse_user',
      'mallory',
      'X-GATEHOUSE-ASSERTION',
      'forged.assertion.value',
      'X-Gatehouse-Groups',
      'admins',
    ];
    const r = await request(gw.url(), {
      path: '/data/x',
      // Raw headers keep each spelling as sent (Node adds no Host to a raw list).
      headers: ['Host', `127.0.0.1:${gw.port()}`, 'Authorization', `Bearer ${jwt}`, ...spoofed],
    });
    assert.equal(r.status, 200, r.body.toString());
    const got = gatehouseHeaders(seenOf(r.body));
    assert.deepEqual(
      got.map(([n]) => n.toLowerCase()),
      ['x-gatehouse-user', 'x-gatehouse-groups', 'x-gatehouse-assertion'],
    );
    assert.deepEqual(got[0], ['x-gatehouse-user', 'alice']);
    assert.deepEqual(got[1], ['x-gatehouse-groups', 'data-eng']);
    await jwtVerify(got[2]![1], createLocalJWKSet(await jwksOf(gw)), { audience: '127.0.0.1' });
    // Anonymous on a public route: nothing identity-related at all.
    const anon = await request(gw.url(), { path: '/open', headers: ['Host', 'open.example', ...spoofed] });
    assert.equal(anon.status, 200);
    assert.deepEqual(gatehouseHeaders(seenOf(anon.body)), []);
  });

  test('a public route works anonymously and still attaches a valid identity', async (t) => {
    const b = await startBackend(t, 'b');
    const gw = await gateway(t, b.url);
    const anon = await request(gw.url(), { path: '/open/page' });
    assert.equal(anon.status, 200);
    assert.equal(gw.access.at(-1)!.reason, 'public-route');
    const jwt = await token({ sub: 'alice', preferred_username: 'alice', groups: ['data-eng'] });
    const known = await request(gw.url(), {
      path: '/open/page',
      headers: { authorization: `Bearer ${jwt}` },
    });
    assert.equal(known.status, 200);
    assert.equal(seenOf(known.body).headers['x-gatehouse-user'], 'alice');
    assert.ok(seenOf(known.body).headers['x-gatehouse-assertion']);
    // An invalid credential on a public route is ignored (and, not being the gateway's, passed on).
    const stale = await idp.sign({ sub: 'alice', aud: 'api' }, { exp: Math.floor(Date.now() / 1000) - 3600 });
    const ignored = await request(gw.url(), {
      path: '/open/page',
      headers: { authorization: `Bearer ${stale}` },
    });
    assert.equal(ignored.status, 200);
    assert.equal(seenOf(ignored.body).headers['x-gatehouse-user'], undefined);
  });

  test('credentials pass upstream only on routes with passCredentials', async (t) => {
    const b = await startBackend(t, 'b');
    const gw = await gateway(t, b.url);
    const jwt = await token({ sub: 'alice', groups: ['data-eng'] });
    const stripped = await request(gw.url(), { path: '/data', headers: { authorization: `Bearer ${jwt}` } });
    assert.equal(seenOf(stripped.body).headers.authorization, undefined);
    const passed = await request(gw.url(), { path: '/pass', headers: { authorization: `Bearer ${jwt}` } });
    assert.equal(passed.status, 200);
    assert.equal(seenOf(passed.body).headers.authorization, `Bearer ${jwt}`);
    assert.ok(seenOf(passed.body).headers['x-gatehouse-assertion']);
  });

  test('the path-normalization cases against a deny rule', async (t) => {
    const b = await startBackend(t, 'b');
    const gw = await gateway(t, b.url);
    const jwt = await token({ sub: 'alice', groups: ['data-eng'] });
    const auth = { authorization: `Bearer ${jwt}` };
    for (const path of [
      '/admin',
      '/admin/users',
      '/x/../admin',
      '//admin',
      '/%61dmin',
      '/./admin/',
      '/ADMIN/../admin',
    ]) {
      const r = await request(gw.url(), { path, headers: auth });
      assert.equal(r.status, 403, path);
      assert.equal(json(r.body).reason, 'policy-deny:no-admin', path);
    }
    const encodedSlash = await request(gw.url(), { path: '/admin%2fx', headers: auth });
    assert.equal(encodedSlash.status, 400);
    assert.match(encodedSlash.body.toString(), /GH_BAD_PATH/);
    // A deny rule on the request alone refuses anonymous callers before any login.
    const anon = await request(gw.url(), { path: '/%61dmin' });
    assert.equal(anon.status, 403);
    const fine = await request(gw.url(), { path: '/administrators', headers: auth });
    assert.equal(fine.status, 200);
    assert.equal(seenOf(fine.body).url, '/administrators');
    assert.equal(b.seen.length, 1);
  });

  test('CORS: preflight answered without login, actual responses carry the CORS headers', async (t) => {
    const b = await startBackend(t, 'b');
    const gw = await gateway(t, b.url, [
      {
        name: 'posts',
        match: { path: '/posts', methods: ['POST'] },
        upstream: 'app',
        policy: 'data-eng',
        cors: { origins: ['*'] },
      },
    ]);
    const pre = await request(gw.url(), {
      method: 'OPTIONS',
      path: '/data/jobs',
      headers: {
        origin: 'https://app.example',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization, content-type',
      },
    });
    assert.equal(pre.status, 204);
    assert.equal(pre.headers['access-control-allow-origin'], 'https://app.example');
    assert.equal(pre.headers['access-control-allow-credentials'], 'true');
    assert.match(String(pre.headers['access-control-allow-methods']), /POST/);
    assert.match(String(pre.headers['access-control-allow-headers']), /Authorization/);
    assert.equal(pre.headers['access-control-max-age'], '600');
    // Matched by the method the actual request will use, even where OPTIONS is not a route method.
    const prePost = await request(gw.url(), {
      method: 'OPTIONS',
      path: '/posts',
      headers: { origin: 'https://x.example', 'access-control-request-method': 'POST' },
    });
    assert.equal(prePost.status, 204);
    assert.equal(prePost.headers['access-control-allow-origin'], '*');
    const bad = await request(gw.url(), {
      method: 'OPTIONS',
      path: '/data/jobs',
      headers: { origin: 'https://evil.example', 'access-control-request-method': 'GET' },
    });
    assert.equal(bad.status, 403);
    assert.equal(bad.headers['access-control-allow-origin'], undefined);
    assert.equal(b.seen.length, 0);

    const jwt = await token({ sub: 'alice', groups: ['data-eng'] });
    const actual = await request(gw.url(), {
      path: '/data/jobs',
      headers: { origin: 'https://app.example', authorization: `Bearer ${jwt}` },
    });
    assert.equal(actual.status, 200);
    assert.equal(actual.headers['access-control-allow-origin'], 'https://app.example');
    assert.equal(actual.headers['access-control-allow-credentials'], 'true');
    assert.match(String(actual.headers.vary), /Origin/);
    // A refusal is readable by the calling page too.
    const refused = await request(gw.url(), {
      path: '/data/jobs',
      headers: { origin: 'https://app.example' },
    });
    assert.equal(refused.status, 401);
    assert.equal(refused.headers['access-control-allow-origin'], 'https://app.example');
  });

  test('/.gatehouse/ is reserved on every host, before any route', async (t) => {
    const b = await startBackend(t, 'b');
    const gw = await gateway(t, b.url, [{ name: 'everything', upstream: 'app', public: true }]);
    const jwks = await request(gw.url(), {
      path: '/.gatehouse/jwks.json',
      headers: { host: 'whatever.example' },
    });
    assert.equal(jwks.status, 200);
    assert.equal(jwks.headers['content-type'], 'application/jwk-set+json');
    assert.equal(jwks.headers['cache-control'], 'public, max-age=300');
    const keys = (JSON.parse(jwks.body.toString()) as JSONWebKeySet).keys;
    assert.equal(keys.length, 1);
    assert.equal(keys[0]!.d, undefined);
    const encoded = await request(gw.url(), { path: '/%2Egatehouse/jwks.json' });
    assert.equal(encoded.status, 200);
    const other = await request(gw.url(), { path: '/.gatehouse/secret-admin' });
    assert.equal(other.status, 404);
    assert.match(other.body.toString(), /GH_NOT_FOUND/);
    const post = await request(gw.url(), { method: 'POST', path: '/.gatehouse/jwks.json', body: 'x' });
    assert.equal(post.status, 405);
    // Without login providers the login endpoints do not exist.
    const login = await request(gw.url(), { path: '/.gatehouse/login' });
    assert.equal(login.status, 404);
    assert.equal(b.seen.length, 0);
  });

  test('WebSocket handshakes pass the same access stage', async (t) => {
    const seen: http.IncomingHttpHeaders[] = [];
    const server = http.createServer((_req, res) => res.end('plain'));
    server.on('upgrade', (req, socket) => {
      seen.push(req.headers);
      socket.end(
        'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
          `Sec-WebSocket-Accept: ${acceptKey(String(req.headers['sec-websocket-key']))}\r\n\r\n`,
      );
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(() => {
      server.closeAllConnections();
      server.close();
    });
    const gw = await gateway(t, `http://127.0.0.1:${(server.address() as AddressInfo).port}`, [
      {
        name: 'live',
        match: { path: '/live' },
        upstream: 'app',
        policy: 'data-eng',
        identityHeaders: true,
        websocket: true,
      },
    ]);
    const wsUrl = `${gw.url().replace('http:', 'ws:')}/live`;
    const refused = await handshake(wsUrl, {});
    assert.equal(refused.status, 401);
    assert.match(String(refused.headers['www-authenticate']), /Bearer realm="gatehouse"/);
    const bob = await token({ sub: 'bob', groups: ['analysts'] });
    assert.equal((await handshake(wsUrl, { authorization: `Bearer ${bob}` })).status, 403);
    assert.equal(seen.length, 0);
    const jwt = await token({ sub: 'alice', groups: ['data-eng'] });
    const ok = await handshake(wsUrl, { authorization: `Bearer ${jwt}`, 'x-gatehouse-user': 'mallory' });
    assert.equal(ok.status, 101);
    assert.equal(seen.length, 1);
    assert.equal(seen[0]!['x-gatehouse-user'], 'alice');
    assert.equal(seen[0]!.authorization, undefined);
    assert.ok(seen[0]!['x-gatehouse-assertion']);
    // A tunnel is logged when it closes.
    await waitFor(() => gw.access.some((e) => e.protocol === 'websocket' && e.status === 101), 'tunnel log');
    const entry = gw.access.find((e) => e.protocol === 'websocket' && e.status === 101)!;
    assert.equal(entry.identity, 'alice');
    assert.equal(entry.authMethod, 'bearer');
  });

  test('a cached bearer token and an API key are decided synchronously (no promise on the hot path)', async (t) => {
    const b = await startBackend(t, 'b');
    const gw = await gateway(t, b.url);
    const jwt = await token({ sub: 'alice', groups: ['data-eng'] });
    const decide = (headers: http.IncomingHttpHeaders, path: string) => {
      const facts = {
        method: 'GET',
        host: HOST,
        authority: HOST,
        path,
        query: '',
        headers,
        clientIp: '127.0.0.1',
        tls: false,
        listener: 'web',
        scheme: 'http' as const,
        upgrade: false,
        certificate: undefined,
      };
      const route = gw.runtime.routes.match(facts)!;
      return answer(gw.runtime, facts, route);
    };
    const first = decide({ authorization: `Bearer ${jwt}` }, '/data');
    assert.ok(first instanceof Promise, 'a new token is verified asynchronously');
    assert.equal((await first).decision.outcome, 'allow');
    const cached = decide({ authorization: `Bearer ${jwt}` }, '/data');
    assert.ok(!(cached instanceof Promise));
    assert.equal(cached.decision.reason, 'policy-allow:engineers');
    assert.ok(cached.assertion);
    const key = decide({ 'x-api-key': apiKey.key }, '/agents');
    assert.ok(!(key instanceof Promise));
    assert.equal(key.decision.identity?.subject, 'agent:etl');
    const anonymous = decide({}, '/open');
    assert.ok(!(anonymous instanceof Promise));
    assert.equal(anonymous, decide({}, '/open'), 'the anonymous public answer is a shared constant');
  });

  test('an issuer whose keys cannot be fetched fails closed with 401 jwks-unavailable', async (t) => {
    const down = await startIssuer([await makeKey('d1', 'ES256')]);
    t.after(() => down.close());
    down.jwksStatus = 500;
    const b = await startBackend(t, 'b');
    const gw = await startGateway(t, {
      ...config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app', policy: 'any' }]),
      identity: { bearer: [{ issuer: down.issuer, audiences: ['api'], algorithms: ['ES256'] }] },
      policies: { any: { allow: [{ authMethod: ['bearer'] }] } },
    });
    const jwt = await down.sign({ sub: 'alice', aud: 'api' });
    const r = await request(gw.url(), { path: '/', headers: { authorization: `Bearer ${jwt}` } });
    assert.equal(r.status, 401);
    assert.equal(json(r.body).reason, 'jwks-unavailable');
    assert.equal(b.seen.length, 0);
  });
});

describe('sessions and the state store through the gateway', () => {
  // A provider is configured, but nothing here signs in: the issuer is never contacted.
  const identity = (extra: Record<string, unknown> = {}) => ({
    session: { secrets: [SESSION_SECRET] },
    providers: [{ name: 'corp', type: 'oidc', issuer: 'http://127.0.0.1:9', clientId: 'gatehouse' }],
    ...extra,
  });

  test("the gateway's cookies are removed from Cookie unless the route passes credentials", async (t) => {
    const b = await startBackend(t, 'b');
    const gw = await startGateway(t, {
      ...config({ app: { servers: [{ url: b.url }] } }, [
        { name: 'pass', match: { path: '/pass' }, upstream: 'app', public: true, passCredentials: true },
        { name: 'open', upstream: 'app', public: true },
      ]),
      identity: identity(),
    });
    const cookie = '_gatehouse=forged.value; theme=dark; _gatehouse_login=abc';
    const r = await request(gw.url(), { path: '/x', headers: { cookie } });
    assert.equal(r.status, 200);
    assert.equal(seenOf(r.body).headers.cookie, 'theme=dark');
    const only = await request(gw.url(), { path: '/x', headers: { cookie: '_gatehouse=forged.value' } });
    assert.equal(seenOf(only.body).headers.cookie, undefined);
    const passed = await request(gw.url(), { path: '/pass', headers: { cookie } });
    assert.equal(seenOf(passed.body).headers.cookie, cookie);
  });

  test('a browser without a session on a protected route is sent to login; API clients get 401', async (t) => {
    const b = await startBackend(t, 'b');
    const gw = await startGateway(t, {
      ...config({ app: { servers: [{ url: b.url }] } }, [{ name: 'app', upstream: 'app', policy: 'staff' }]),
      identity: identity(),
      policies: { staff: { allow: [{ groups: ['staff'] }] } },
    });
    const nav = await request(gw.url(), { path: '/reports?q=1', headers: { accept: 'text/html' } });
    assert.equal(nav.status, 302);
    assert.equal(nav.headers.location, '/.gatehouse/login?rd=%2Freports%3Fq%3D1');
    const xhr = await request(gw.url(), {
      path: '/reports',
      headers: { accept: 'text/html', 'sec-fetch-mode': 'cors' },
    });
    assert.equal(xhr.status, 401);
    const forged = await request(gw.url(), { path: '/reports', headers: { cookie: '_gatehouse=forged' } });
    assert.equal(forged.status, 401);
    assert.equal(json(forged.body).reason, 'session-invalid');
    assert.match(String(forged.headers['set-cookie']), /_gatehouse=;/);
    assert.equal(b.seen.length, 0);
  });

  test('a state store that cannot answer fails closed with 503 on protected routes only', async (t) => {
    const b = await startBackend(t, 'b');
    const gw = await startGateway(t, {
      ...config({ app: { servers: [{ url: b.url }] } }, [
        { name: 'open', match: { path: '/open' }, upstream: 'app', public: true },
        { name: 'app', upstream: 'app', public: false },
      ]),
      // Nothing listens on port 1; a configured assertion key means the build needs no store.
      state: { store: 'redis://127.0.0.1:1/0' },
      identity: identity({ assertion: { signingKey: JSON.stringify(generateAssertionJwk()) } }),
    });
    // A correctly sealed cookie, so the session must be looked up in the store.
    const sessions = new SessionManager({} as StateStore, {
      secrets: [SESSION_SECRET],
      maxAge: 3_600_000,
      idleTimeout: 3_600_000,
      cookie: '_gatehouse',
    });
    const cookie = `_gatehouse=${sessions.seal('A'.repeat(43))}`;
    const r = await request(gw.url(), { path: '/private', headers: { cookie } });
    assert.equal(r.status, 503);
    assert.match(r.body.toString(), /GH_STATE_UNAVAILABLE/);
    const open = await request(gw.url(), { path: '/open', headers: { cookie } });
    assert.equal(open.status, 200);
    assert.equal(b.seen.length, 1);
  });
});

function acceptKey(key: string): string {
  // RFC 6455 §4.2.2: the accept value the client checks.
  return createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
}

/** Opens a WebSocket handshake and reports the status (101 on success), then closes it. */
function handshake(
  url: string,
  headers: Record<string, string>,
): Promise<{ status: number; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers, handshakeTimeout: 10_000 });
    ws.once('upgrade', (res) => {
      resolve({ status: res.statusCode ?? 0, headers: res.headers });
      ws.terminate();
    });
    ws.once('unexpected-response', (_req, res) => {
      resolve({ status: res.statusCode ?? 0, headers: res.headers });
      res.resume();
    });
    ws.once('error', (err) => {
      if (!/closed before|socket hang up/.test(err.message)) reject(err);
    });
  });
}

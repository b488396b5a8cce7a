/**
 * `answer()` of the decision core, row by row of its table, without any gateway socket: a request
 * described as plain data and its route in, the decision, the credentials to drop, the assertion, the
 * response headers and the refusal out. The bearer rows verify against a real JWKS issuer on loopback.
 */
import assert from 'node:assert/strict';
import type { IncomingHttpHeaders } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { createLocalJWKSet, type JSONWebKeySet, jwtVerify } from 'jose';
import {
  type Answer,
  answer,
  DROP_API_KEY,
  DROP_AUTHORIZATION,
  DROP_COOKIE,
  FROM_API_KEY_HEADER,
  FROM_AUTHORIZATION,
  FROM_NOTHING,
  FROM_SESSION,
  identityHeaderPairs,
  type RequestDescription,
  refusalOf,
} from '../src/core/answer.js';
import { describeRequest } from '../src/core/describe.js';
import { routeRequest } from '../src/core/methods.js';
import { generateApiKey } from '../src/identity/apikeys.js';
import { evaluateOffline, offlineContext } from '../src/policy/offline.js';
import type { Runtime } from '../src/runtime.js';
import { StateStoreError } from '../src/state/types.js';
import { makeKey, startIssuer, type TestIssuer } from './helpers/identity.js';
import { buildTestRuntime, memoryLogger } from './helpers/proxy.js';

const HOST = 'app.example.test';
const SECRET = 'answer-table-session-secret-0123456789';
const key = generateApiKey('etl');
const scoped = generateApiKey('scoped');

function configOf(issuer: string, store = 'memory'): Record<string, unknown> {
  return {
    listeners: [{ name: 'web', bind: '127.0.0.1:0' }],
    state: { store },
    upstreams: { app: { servers: [{ url: 'http://127.0.0.1:9' }] } },
    identity: {
      session: { secrets: [SECRET] },
      providers: [{ name: 'corp', type: 'oidc', issuer: 'https://idp.example.test', clientId: 'gh' }],
      bearer: [{ issuer, audiences: ['api'], algorithms: ['ES256'] }],
      apiKeys: [
        { id: 'etl', hash: key.hashLine, subject: 'agent:etl', groups: ['agents'] },
        {
          id: 'scoped',
          hash: scoped.hashLine,
          subject: 'agent:scoped',
          groups: ['agents'],
          routes: ['open'],
        },
      ],
    },
    policies: {
      eng: {
        allow: [{ name: 'engineers', groups: ['eng'] }],
        deny: [{ name: 'blocked-net', sourceIp: ['203.0.113.0/24'] }],
      },
      agents: { allow: [{ name: 'agents', groups: ['agents'] }] },
    },
    routes: [
      { name: 'open', match: { host: HOST, path: '/open' }, upstream: 'app', public: true },
      {
        name: 'data',
        match: { host: HOST, path: '/data' },
        upstream: 'app',
        policy: 'eng',
        identityHeaders: true,
        cors: { origins: ['https://ui.example.test'], credentials: true },
        websocket: true,
      },
      { name: 'agents', match: { host: HOST, path: '/agents' }, upstream: 'app', policy: 'agents' },
      {
        name: 'pass',
        match: { host: HOST, path: '/pass' },
        upstream: 'app',
        policy: 'agents',
        passCredentials: true,
      },
      { name: 'rest', match: { host: HOST }, upstream: 'app', policy: 'eng' },
    ],
  };
}

function describeOf(
  path: string,
  headers: IncomingHttpHeaders = {},
  over: Partial<{ method: string; clientIp: string; upgrade: boolean }> = {},
): RequestDescription {
  return describeRequest(
    {
      method: over.method ?? 'GET',
      target: path,
      host: HOST,
      headers: { host: HOST, ...headers },
      clientIp: over.clientIp ?? '192.0.2.10',
      tls: false,
      listener: 'web',
      upgrade: over.upgrade,
    },
    'strip',
  );
}

const BROWSER = { accept: 'text/html,application/xhtml+xml' };
const SCRIPT = { accept: 'application/json' };

describe('answer(): the decision core without a socket', () => {
  let idp: TestIssuer;
  let rt: Runtime;
  let jwks: JSONWebKeySet;
  let sessionCookie: string;

  const ask = (desc: RequestDescription): Answer | Promise<Answer> =>
    answer(rt, desc, routeRequest(rt.routes, desc));

  before(async () => {
    idp = await startIssuer([await makeKey('k1', 'ES256')]);
    rt = await buildTestRuntime(configOf(idp.issuer), memoryLogger().logger);
    jwks = JSON.parse(rt.identity.assertion.jwksJson()) as JSONWebKeySet;
    const sessions = rt.identity.login!.sessions;
    const { id } = await sessions.create(
      {
        provider: 'corp',
        subject: 'alice',
        user: 'alice',
        email: 'alice@example.com',
        groups: ['eng'],
        claims: {},
      },
      { accessToken: undefined, refreshToken: undefined, idToken: undefined, expiresAt: undefined },
    );
    sessionCookie = `theme=dark; _gatehouse=${sessions.seal(id)}`;
  });
  after(async () => {
    for (const up of rt?.upstreams.values() ?? []) await up.close();
    await rt?.store.close();
    await idp?.close();
  });

  // Rows whose answer needs no I/O: every one of them is synchronous.
  const rows: Array<{
    name: string;
    path: string;
    headers?: IncomingHttpHeaders;
    clientIp?: string;
    outcome: string;
    status: number;
    reason: string | RegExp;
    drop?: number;
    source?: number;
    subject?: string;
    location?: RegExp;
    www?: RegExp;
  }> = [
    { name: 'public route, anonymous', path: '/open', outcome: 'allow', status: 200, reason: 'public-route' },
    {
      name: 'public route with a valid key: the identity rides along',
      path: '/open',
      headers: { 'x-api-key': key.key },
      outcome: 'allow',
      status: 200,
      reason: 'public-route',
      subject: 'agent:etl',
      drop: DROP_API_KEY,
      source: FROM_API_KEY_HEADER,
    },
    {
      name: 'public route with a bad key: ignored',
      path: '/open',
      headers: { 'x-api-key': 'nope' },
      outcome: 'allow',
      status: 200,
      reason: 'public-route',
      drop: DROP_API_KEY,
    },
    {
      name: 'no credential, a browser navigation: sign in',
      path: '/data/x?q=1',
      headers: BROWSER,
      outcome: 'login',
      status: 302,
      reason: 'user-unauthenticated',
      location: /^\/\.gatehouse\/login\?rd=%2Fdata%2Fx%3Fq%3D1$/,
    },
    {
      name: 'no credential, a script: 401',
      path: '/data',
      headers: SCRIPT,
      outcome: 'unauthenticated',
      status: 401,
      reason: 'user-unauthenticated',
      www: /^Bearer realm="gatehouse"$/,
    },
    {
      name: 'no credential from a denied network: 403 before any login',
      path: '/data',
      headers: BROWSER,
      clientIp: '203.0.113.7',
      outcome: 'forbidden',
      status: 403,
      reason: 'policy-deny:blocked-net',
    },
    {
      name: 'API key in its header, allowed by policy',
      path: '/agents',
      headers: { 'x-api-key': key.key },
      outcome: 'allow',
      status: 200,
      reason: /^policy-allow:agents/,
      subject: 'agent:etl',
      drop: DROP_API_KEY,
      source: FROM_API_KEY_HEADER,
    },
    {
      name: 'API key as a bearer credential',
      path: '/agents',
      headers: { authorization: `Bearer ${key.key}` },
      outcome: 'allow',
      status: 200,
      reason: /^policy-allow:agents/,
      subject: 'agent:etl',
      drop: DROP_AUTHORIZATION,
      source: FROM_AUTHORIZATION,
    },
    {
      name: 'unknown API key: 401 invalid_token, never a login',
      path: '/agents',
      headers: { ...BROWSER, 'x-api-key': 'gh_unknown' },
      outcome: 'unauthenticated',
      status: 401,
      reason: 'api-key-invalid',
      drop: DROP_API_KEY,
      www: /error="invalid_token"/,
    },
    {
      name: 'API key outside its routes: 403',
      path: '/agents',
      headers: { 'x-api-key': scoped.key },
      outcome: 'forbidden',
      status: 403,
      reason: 'api-key-out-of-scope',
      drop: DROP_API_KEY,
    },
    {
      name: 'a key whose groups no allow rule names: 403 with the identity',
      path: '/data',
      headers: { 'x-api-key': key.key },
      outcome: 'forbidden',
      status: 403,
      reason: 'no-allow-rule',
      subject: 'agent:etl',
      drop: DROP_API_KEY,
      source: FROM_API_KEY_HEADER,
    },
    {
      name: 'passCredentials: nothing is dropped',
      path: '/pass',
      headers: { authorization: `Bearer ${key.key}` },
      outcome: 'allow',
      status: 200,
      reason: /^policy-allow:agents/,
      subject: 'agent:etl',
      drop: 0,
      source: FROM_AUTHORIZATION,
    },
  ];

  for (const row of rows) {
    test(row.name, () => {
      const desc = describeOf(row.path, row.headers, { clientIp: row.clientIp });
      const a = ask(desc);
      assert.ok(!(a instanceof Promise), 'answered without waiting');
      const d = a.decision;
      assert.equal(d.outcome, row.outcome);
      assert.equal(d.status, row.status);
      if (typeof row.reason === 'string') assert.equal(d.reason, row.reason);
      else assert.match(d.reason, row.reason);
      assert.equal(a.drop, row.drop ?? 0);
      assert.equal(a.source, row.source ?? FROM_NOTHING);
      assert.equal(d.identity?.subject, row.subject);
      assert.equal(a.assertion !== undefined, d.outcome === 'allow' && row.subject !== undefined);
      const r = refusalOf(a, desc);
      if (d.outcome === 'allow') assert.equal(r, undefined);
      else {
        assert.ok(r);
        assert.equal(r.status, row.status);
        assert.equal(r.reason, d.reason);
        if (row.location) assert.match(r.location ?? '', row.location);
        else assert.equal(r.location, undefined);
        if (row.www) assert.match(r.wwwAuthenticate ?? '', row.www);
        else assert.equal(r.wwwAuthenticate, undefined);
      }
    });
  }

  test('the assertion is signed by the published key for the identity and host; identity headers are header-safe', async () => {
    const a = ask(describeOf('/agents', { 'x-api-key': key.key })) as Answer;
    const { payload } = await jwtVerify(a.assertion!, createLocalJWKSet(jwks), { audience: HOST });
    assert.equal(payload.sub, 'agent:etl');
    assert.deepEqual(identityHeaderPairs(a.decision.identity!), [
      'x-gatehouse-user',
      'agent:etl',
      'x-gatehouse-groups',
      'agents',
    ]);
  });

  test('anonymous answers are shared constants per route and decision (no allocation)', () => {
    assert.equal(ask(describeOf('/open')), ask(describeOf('/open')));
    assert.equal(ask(describeOf('/data', SCRIPT)), ask(describeOf('/data', SCRIPT)));
  });

  test('a bearer JWT: verified once (a promise), then answered from the cache synchronously', async () => {
    const jwt = await idp.sign({ aud: 'api', sub: 'bob', groups: ['eng'] });
    const first = ask(describeOf('/data', { authorization: `Bearer ${jwt}` }));
    assert.ok(first instanceof Promise);
    assert.equal((await first).decision.reason, 'policy-allow:engineers');
    const cached = ask(describeOf('/data', { authorization: `Bearer ${jwt}` }));
    assert.ok(!(cached instanceof Promise));
    assert.equal(cached.drop, DROP_AUTHORIZATION);
    assert.equal(cached.source, FROM_AUTHORIZATION);
    const expired = await idp.sign({ aud: 'api', sub: 'bob' }, { exp: Math.floor(Date.now() / 1000) - 3600 });
    const late = await ask(describeOf('/data', { ...BROWSER, authorization: `Bearer ${expired}` }));
    assert.equal(late.decision.status, 401);
    assert.equal(late.decision.reason, 'token-expired');
  });

  test('a refused credential never falls back to another one (bad bearer + valid session = 401)', async () => {
    const a = await ask(
      describeOf('/data', { ...BROWSER, authorization: 'Bearer gh_not_a_key', cookie: sessionCookie }),
    );
    assert.equal(a.decision.status, 401);
    assert.equal(a.decision.reason, 'api-key-invalid');
  });

  test('a session cookie: allowed, the gateway cookie dropped and the rest kept, CORS answered', async () => {
    const a = await ask(describeOf('/data', { cookie: sessionCookie, origin: 'https://ui.example.test' }));
    assert.equal(a.decision.reason, 'policy-allow:engineers');
    assert.equal(a.source, FROM_SESSION);
    assert.equal(a.drop, DROP_COOKIE);
    assert.equal(a.cookie, 'theme=dark');
    assert.deepEqual(a.responseHeaders, [
      'access-control-allow-origin',
      'https://ui.example.test',
      'vary',
      'Origin',
      'access-control-allow-credentials',
      'true',
    ]);
    const forged = await ask(describeOf('/data', { ...BROWSER, cookie: '_gatehouse=forged' }));
    assert.equal(forged.decision.outcome, 'login');
    assert.match(forged.decision.reason, /^session-/);
  });

  test('a WebSocket handshake carried by the session cookie must come from an allowed Origin', async () => {
    const ws = (origin: string, path = '/data') =>
      ask(describeOf(path, { cookie: sessionCookie, origin, upgrade: 'websocket' }, { upgrade: true }));
    const evil = await ws('https://evil.example');
    assert.equal(evil.decision.status, 403);
    assert.equal(evil.decision.reason, 'origin-not-allowed');
    assert.equal(evil.decision.identity?.subject, 'alice', 'the refusal says whose session was tried');
    assert.equal(refusalOf(evil, describeOf('/data'))?.code, 'GH_WEBSOCKET_ORIGIN');
    assert.equal((await ws(`http://${HOST}`)).decision.outcome, 'allow');
    assert.equal((await ws('https://ui.example.test')).decision.outcome, 'allow', 'a cors origin');
    const open = await ws('https://evil.example', '/open');
    assert.equal(open.decision.outcome, 'allow');
    assert.equal(open.decision.identity, undefined, 'a public route goes on without the identity');
    assert.equal(open.assertion, undefined);
    // A bearer credential is not ambient: its handshake may come from anywhere.
    const keyed = await ask(
      describeOf(
        '/agents',
        { 'x-api-key': key.key, origin: 'https://evil.example', upgrade: 'websocket' },
        {
          upgrade: true,
        },
      ),
    );
    assert.equal(keyed.decision.outcome, 'allow');
  });

  test('check/explain take the same decision step: offline and online agree row by row', () => {
    const ctx = offlineContext(rt.config);
    const cases: Array<[string, Record<string, unknown> | undefined, Record<string, string>, string]> = [
      ['/open', undefined, {}, '192.0.2.10'],
      ['/data', undefined, SCRIPT as Record<string, string>, '192.0.2.10'],
      ['/data', undefined, BROWSER, '203.0.113.7'],
      ['/agents', { user: 'agent:etl', groups: ['agents'], authMethod: 'apiKey' }, {}, '192.0.2.10'],
      ['/data', { user: 'agent:etl', groups: ['agents'], authMethod: 'apiKey' }, {}, '192.0.2.10'],
    ];
    for (const [path, as, headers, ip] of cases) {
      const offline = evaluateOffline(ctx, {
        method: 'GET',
        url: `http://${HOST}${path}`,
        as,
        headers,
        sourceIp: ip,
        now: Date.now(),
      });
      const online = ask(
        describeOf(
          path,
          { ...(as === undefined ? {} : { 'x-api-key': key.key }), ...headers },
          { clientIp: ip },
        ),
      ) as Answer;
      const o = offline.outcome as { status: number; reason: string };
      assert.equal(o.status, online.decision.status, path);
      assert.equal(o.reason, online.decision.reason, path);
    }
  });

  test('a state store that cannot answer: a protected route rejects (503), a public route goes on anonymous', async () => {
    const down = await buildTestRuntime(
      configOf(idp.issuer, 'redis://127.0.0.1:1/0'),
      memoryLogger().logger,
      {
        previous: undefined,
      },
    ).catch((err: unknown) => err);
    // Without a reachable store the generated assertion key is provisional; the runtime still builds.
    assert.ok(!(down instanceof Error), String(down));
    const drt = down as Runtime;
    try {
      const sealed = `_gatehouse=${drt.identity.login!.sessions.seal('A'.repeat(43))}`;
      const d = describeOf('/data', { cookie: sealed });
      await assert.rejects(Promise.resolve(answer(drt, d, routeRequest(drt.routes, d))), StateStoreError);
      const o = describeOf('/open', { cookie: sealed });
      const open = await answer(drt, o, routeRequest(drt.routes, o));
      assert.equal(open.decision.reason, 'public-route');
      assert.equal(open.decision.identity, undefined);
    } finally {
      for (const up of drt.upstreams.values()) await up.close();
      await drt.store.close();
    }
  });
});

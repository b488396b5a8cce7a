/**
 * The login endpoints and the OIDC client at the HTTP level, against a real OpenID provider: the
 * authorization request, the return-address rules, callback checks, failures of the provider and of the
 * store, refresh outcomes, logout and configuration. The browser flows are in identity-oidc-browser.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { ConfigSchema } from '../src/config/schema.js';
import {
  LoginService,
  type LoginServiceOptions,
  resolveReturnTo,
  type ServedHostCheck,
  servedHostChecker,
} from '../src/identity/login.js';
import { isLoopbackHost, OidcClient, OidcError, type OidcProviderSettings } from '../src/identity/oidc.js';
import { escapeHtml, forbiddenPage } from '../src/identity/pages.js';
import { SessionConfigError } from '../src/identity/session.js';
import { MemoryStore } from '../src/state/memory.js';
import { RedisStore } from '../src/state/redis.js';
import { StateStoreError } from '../src/state/types.js';
import { fetchApp, startIdp, startLoginApp, type TestIdp } from './helpers/oidc.js';
import { memoryLogger } from './helpers/proxy.js';

const SECRET = 'z'.repeat(8) + '-sealing-secret-for-http-level-tests';
const HOSTS = ['app.gatehouse.test', 'other.gatehouse.test'];

function provider(
  idp: Pick<TestIdp, 'issuer' | 'clientId' | 'clientSecret'>,
  name = 'corp',
): OidcProviderSettings {
  return {
    name,
    issuer: idp.issuer,
    clientId: idp.clientId,
    clientSecret: idp.clientSecret,
    scopes: ['openid', 'email', 'profile', 'groups'],
    groupsClaim: 'groups',
  };
}

async function setup(t: Parameters<typeof startIdp>[0], extra: Partial<LoginServiceOptions> = {}) {
  const app = await startLoginApp(t);
  const idp = await startIdp(t, {
    redirectUris: HOSTS.map((h) => `http://${h}:${app.port}/.gatehouse/callback`),
    postLogoutRedirectUris: HOSTS.map((h) => `http://${h}:${app.port}/.gatehouse/signed-out`),
  });
  const store = new MemoryStore({ sweepInterval: 0 });
  t.after(() => store.close());
  const clock = { now: Date.now() };
  const { logger, lines } = memoryLogger();
  const service = new LoginService({
    store,
    logger,
    session: { secrets: [SECRET], maxAge: 12 * 3_600_000, idleTimeout: 3_600_000, cookie: '_gatehouse' },
    providers: [provider(idp)],
    isServedHost: (h, port) => HOSTS.includes(h) && port === app.port,
    now: () => clock.now,
    ...extra,
  });
  app.service = service;
  return { app, idp, store, clock, service, lines };
}

test('resolveReturnTo: paths and served hosts only, never an open redirect', () => {
  const here = {
    origin: 'https://app.example.com',
    hostname: 'app.example.com',
    port: 443,
    scheme: 'https' as const,
  };
  const served: ServedHostCheck = (h, port) =>
    ['app.example.com', 'other.example.com'].includes(h) && port === 443;
  const ok: Array<[string | undefined, string]> = [
    [undefined, 'https://app.example.com/'],
    ['', 'https://app.example.com/'],
    ['/', 'https://app.example.com/'],
    ['/a/b?c=d', 'https://app.example.com/a/b?c=d'],
    ['/a/../b', 'https://app.example.com/b'],
    ['/%2F%2Fevil.com', 'https://app.example.com/%2F%2Fevil.com'],
    ['https://other.example.com/x', 'https://other.example.com/x'],
    ['HTTPS://OTHER.EXAMPLE.COM/x', 'https://other.example.com/x'],
    ['https://app.example.com:443/y', 'https://app.example.com/y'],
  ];
  for (const [rd, want] of ok) assert.equal(resolveReturnTo(rd, here, served)?.href, want, String(rd));
  const bad = [
    '//evil.com',
    '//evil.com/path',
    '/\\evil.com',
    '\\\\evil.com',
    '/\t/evil.com',
    ' //evil.com',
    'https://evil.com',
    'https://evil.com/https://app.example.com/',
    'http://app.example.com.evil.com/',
    'https://app.example.com@evil.com/',
    'https://evil.com@app.example.com/',
    'https://user:pass@app.example.com/',
    'https://app.example.com:8443/',
    'javascript:alert(1)',
    'JavaScript://app.example.com/%0aalert(1)',
    'data:text/html,<script>alert(1)</script>',
    'evil.com',
    'https:evil.com',
    'https:/evil.com',
    'ftp://app.example.com/',
    '/\u0000',
    '/x\ny',
    `/${'a'.repeat(5000)}`,
  ];
  for (const rd of bad) assert.equal(resolveReturnTo(rd, here, served), undefined, JSON.stringify(rd));
});

test('login: a 302 to the provider with code + PKCE S256 + state + nonce, bound to the browser by a login cookie', async (t) => {
  const { app, idp, store } = await setup(t);
  const r = await fetchApp(`${app.origin()}/.gatehouse/login?rd=%2Fjobs%3Fa%3D1`, undefined);
  assert.equal(r.status, 302);
  const url = new URL(r.location!);
  assert.equal(`${url.origin}${url.pathname}`, `${idp.issuer}/auth`);
  const q = url.searchParams;
  assert.equal(q.get('response_type'), 'code');
  assert.equal(q.get('client_id'), idp.clientId);
  assert.equal(q.get('redirect_uri'), `${app.origin()}/.gatehouse/callback`);
  assert.equal(q.get('scope'), 'openid email profile groups');
  assert.equal(q.get('code_challenge_method'), 'S256');
  assert.match(q.get('code_challenge') ?? '', /^[A-Za-z0-9_-]{43}$/);
  assert.match(q.get('state') ?? '', /^[A-Za-z0-9_-]{43}$/);
  assert.match(q.get('nonce') ?? '', /^[A-Za-z0-9_-]{43}$/);
  const login = r.setCookie.find((c) => c.startsWith('_gatehouse_login='));
  assert.ok(login, 'login cookie');
  assert.match(login, /; Path=\/\.gatehouse\/; Max-Age=600; HttpOnly; SameSite=Lax$/);
  const saved = JSON.parse((await store.get(`login:${q.get('state')}`))!);
  assert.equal(saved.target, `${app.origin()}/jobs?a=1`);
  assert.equal(saved.provider, 'corp');
  assert.notEqual(saved.verifier, q.get('code_challenge'), 'only the challenge leaves the gateway');
  assert.equal(r.headers['referrer-policy'], 'no-referrer');
  assert.equal(r.headers['cache-control'], 'no-store');

  // A second login in the same browser reuses its login cookie (parallel tabs keep working).
  const value = login.split(';')[0]!;
  const again = await fetchApp(`${app.origin()}/.gatehouse/login`, value);
  assert.ok(again.setCookie.some((c) => c.startsWith(`${value};`)));
});

test('login refuses foreign return addresses with 400 and sends another served host to its own login', async (t) => {
  const { app } = await setup(t);
  for (const rd of [
    '//evil.com',
    'https://evil.com/',
    '/\\evil.com',
    'javascript:alert(1)',
    `http://app.gatehouse.test:${app.port}@evil.com/`,
  ]) {
    const r = await fetchApp(`${app.origin()}/.gatehouse/login?rd=${encodeURIComponent(rd)}`, undefined);
    assert.equal(r.status, 400, rd);
    assert.match(r.body, /GH_BAD_RETURN_URL/);
    assert.equal(r.location, undefined);
  }
  const other = `${app.origin('other.gatehouse.test')}/x`;
  const r = await fetchApp(`${app.origin()}/.gatehouse/login?rd=${encodeURIComponent(other)}`, undefined);
  assert.equal(r.status, 302);
  assert.equal(
    r.location,
    `${app.origin('other.gatehouse.test')}/.gatehouse/login?rd=${encodeURIComponent(other)}`,
  );
});

test('callback: missing, unknown or unbound state is 400 and consumes nothing useful; provider errors are pages', async (t) => {
  const { app, store, lines } = await setup(t);
  const none = await fetchApp(`${app.origin()}/.gatehouse/callback?code=abc`, undefined);
  assert.equal(none.status, 400);
  assert.match(none.body, /GH_LOGIN_STATE/);
  const unknown = await fetchApp(
    `${app.origin()}/.gatehouse/callback?code=abc&state=${'A'.repeat(43)}`,
    undefined,
  );
  assert.equal(unknown.status, 400);

  const start = await fetchApp(`${app.origin()}/.gatehouse/login`, undefined);
  const state = new URL(start.location!).searchParams.get('state')!;
  const loginCookie = start.setCookie[0]!.split(';')[0]!;
  // Without the browser's login cookie: refused, and the state is gone.
  const unbound = await fetchApp(
    `${app.origin()}/.gatehouse/callback?code=abc&state=${state}`,
    '_gatehouse_login=' + 'B'.repeat(43),
  );
  assert.equal(unbound.status, 400);
  assert.equal(
    unbound.setCookie.some((c) => c.startsWith('_gatehouse=')),
    false,
    'no session',
  );
  assert.equal(await store.get(`login:${state}`), undefined);
  assert.ok(JSON.stringify(lines).includes('did not start it'));

  // The provider refused (the user cancelled): a page, no session.
  const start2 = await fetchApp(`${app.origin()}/.gatehouse/login`, loginCookie);
  const state2 = new URL(start2.location!).searchParams.get('state')!;
  const issuer = new URL(start2.location!).origin;
  const denied = await fetchApp(
    `${app.origin()}/.gatehouse/callback?error=access_denied&state=${state2}&iss=${encodeURIComponent(issuer)}`,
    loginCookie,
  );
  assert.equal(denied.status, 400);
  assert.match(denied.body, /GH_OIDC_DENIED/);
  assert.match(denied.body, /access_denied/);
  assert.equal(denied.setCookie.length, 0);

  // A made-up code with a valid state: the provider refuses the exchange; 502, no session.
  const start3 = await fetchApp(`${app.origin()}/.gatehouse/login`, loginCookie);
  const state3 = new URL(start3.location!).searchParams.get('state')!;
  const forged = await fetchApp(
    `${app.origin()}/.gatehouse/callback?code=forged&state=${state3}&iss=${encodeURIComponent(issuer)}`,
    loginCookie,
  );
  assert.equal(forged.status, 502);
  assert.match(forged.body, /GH_OIDC_TOKEN/);
  assert.equal(forged.setCookie.length, 0);
});

test('reserved paths: 404 for unknown, 405 for wrong methods, 400 for a Host that does not match', async (t) => {
  const { app } = await setup(t);
  const nf = await fetchApp(`${app.origin()}/.gatehouse/nothing`, undefined);
  assert.equal(nf.status, 404);
  const post = await fetchApp(`${app.origin()}/.gatehouse/login`, undefined, 'text/html', { method: 'POST' });
  assert.equal(post.status, 405);
  assert.equal(post.headers.allow, 'GET, HEAD');
  const ui = await fetchApp(`${app.origin()}/.gatehouse/userinfo`, undefined, 'application/json');
  assert.equal(ui.status, 401);
  assert.equal(ui.headers['www-authenticate'], 'Bearer realm="gatehouse"');
  assert.deepEqual(JSON.parse(ui.body), { error: 'unauthenticated', reason: 'user-unauthenticated' });
  const page = await fetchApp(`${app.origin()}/.gatehouse/signed-out`, undefined);
  assert.equal(page.status, 200);
  assert.match(String(page.headers['content-security-policy']), /default-src 'none'/);
  assert.equal(page.headers['x-frame-options'], 'DENY');
});

test('an unreachable provider gives a 503 page, then a cached failure for a few seconds', async (t) => {
  const app = await startLoginApp(t);
  const { logger, lines } = memoryLogger();
  const store = new MemoryStore({ sweepInterval: 0 });
  t.after(() => store.close());
  app.service = new LoginService({
    store,
    logger,
    session: { secrets: [SECRET], maxAge: 3_600_000, idleTimeout: 600_000, cookie: '_gatehouse' },
    providers: [provider({ issuer: 'http://127.0.0.1:1', clientId: 'c', clientSecret: 's' })],
    isServedHost: () => false,
    oidc: { discoveryTimeout: 1000, retryAfter: 60_000 },
  });
  const r = await fetchApp(`${app.origin()}/.gatehouse/login`, undefined);
  assert.equal(r.status, 503);
  assert.match(r.body, /GH_OIDC_UNAVAILABLE/);
  const again = await fetchApp(`${app.origin()}/.gatehouse/login`, undefined);
  assert.equal(again.status, 503);
  assert.equal(
    lines.filter((l) => l.msg === 'OIDC discovery failed').length,
    1,
    'one discovery attempt, then the cached failure',
  );
});

test('a failing state store gives 503 pages on login and fails the session check closed', async (t) => {
  const idpApp = await startLoginApp(t);
  const idp = await startIdp(t, {
    redirectUris: [`http://app.gatehouse.test:${idpApp.port}/.gatehouse/callback`],
  });
  const { logger } = memoryLogger();
  const dead = new RedisStore('redis://127.0.0.1:1', logger, { connectTimeout: 100, commandTimeout: 300 });
  t.after(() => dead.close());
  const service = new LoginService({
    store: dead,
    logger,
    session: { secrets: [SECRET], maxAge: 3_600_000, idleTimeout: 600_000, cookie: '_gatehouse' },
    providers: [provider(idp)],
    isServedHost: () => false,
  });
  idpApp.service = service;
  const r = await fetchApp(`${idpApp.origin()}/.gatehouse/login`, undefined);
  assert.equal(r.status, 503);
  assert.match(r.body, /GH_STATE_UNAVAILABLE/);
  const cookie = `_gatehouse=${service.sessions.seal(randomBytes(32).toString('base64url'))}`;
  await assert.rejects(service.authenticateSession(cookie, { tls: false }), StateStoreError);
  assert.deepEqual(await service.authenticateSession(undefined, { tls: false }), { kind: 'none' });
});

test('refresh: a refused refresh token ends the session; an unreachable provider keeps it only while the token is valid', async (t) => {
  const { service, store, clock } = await setup(t);
  const profile = {
    provider: 'corp',
    subject: 'alice',
    user: 'alice',
    email: undefined,
    groups: [],
    claims: { sub: 'alice' },
  };
  const { id } = await service.sessions.create(profile, {
    accessToken: 'at',
    refreshToken: 'not-a-real-refresh-token',
    idToken: undefined,
    expiresAt: clock.now + 30_000,
  });
  const cookie = `_gatehouse=${service.sessions.seal(id)}`;
  const r = await service.authenticateSession(cookie, { tls: true });
  assert.equal(r.kind, 'invalid');
  assert.equal(r.kind === 'invalid' && r.reason, 'session-expired');
  assert.match(r.setCookie ?? '', /^_gatehouse=; .*Max-Age=0.*; Secure$/);
  assert.equal(await store.get(`session:${id}`), undefined);

  // A provider that cannot be reached.
  const { logger } = memoryLogger();
  const offline = new LoginService({
    store,
    logger,
    session: { secrets: [SECRET], maxAge: 12 * 3_600_000, idleTimeout: 3_600_000, cookie: '_gatehouse' },
    providers: [provider({ issuer: 'http://127.0.0.1:1', clientId: 'c', clientSecret: 's' })],
    isServedHost: () => false,
    now: () => clock.now,
    oidc: { discoveryTimeout: 1000, retryAfter: 0 },
  });
  const s = await offline.sessions.create(profile, {
    accessToken: 'at',
    refreshToken: 'rt',
    idToken: undefined,
    expiresAt: clock.now + 30_000,
  });
  const c2 = `_gatehouse=${offline.sessions.seal(s.id)}`;
  const kept = await offline.authenticateSession(c2, { tls: false });
  assert.equal(kept.kind, 'ok', 'the access token still holds: keep the session');
  clock.now += 31_000;
  const ended = await offline.authenticateSession(c2, { tls: false });
  assert.equal(
    ended.kind === 'invalid' && ended.reason,
    'session-expired',
    'expired and unrefreshable: ended',
  );
  assert.equal(await store.get(`session:${s.id}`), undefined);
});

test('a session from a provider the route does not offer counts as no session there', async (t) => {
  const { service } = await setup(t);
  const { id } = await service.sessions.create(
    { provider: 'corp', subject: 'a', user: 'a', email: undefined, groups: [], claims: {} },
    { accessToken: undefined, refreshToken: undefined, idToken: undefined, expiresAt: undefined },
  );
  const cookie = `_gatehouse=${service.sessions.seal(id)}`;
  assert.equal(
    (await service.authenticateSession(cookie, { tls: false }, { config: { providers: ['corp'] } })).kind,
    'ok',
  );
  assert.equal(
    (await service.authenticateSession(cookie, { tls: false }, { config: { providers: ['partner'] } })).kind,
    'none',
  );
});

test('login when already signed in goes straight back; logout works without a provider session; everywhere ends all', async (t) => {
  const { app, service, store } = await setup(t);
  const profile = {
    provider: 'corp',
    subject: 'alice',
    user: 'alice',
    email: undefined,
    groups: [],
    claims: {},
  };
  const empty = { accessToken: undefined, refreshToken: undefined, idToken: undefined, expiresAt: undefined };
  const one = await service.sessions.create(profile, empty);
  const two = await service.sessions.create(profile, empty);
  const cookie = `_gatehouse=${service.sessions.seal(one.id)}`;
  const r = await fetchApp(`${app.origin()}/.gatehouse/login?rd=%2Fback`, cookie);
  assert.equal(r.status, 302);
  assert.equal(r.location, '/back');

  const out = await fetchApp(`${app.origin()}/.gatehouse/logout?everywhere=1`, cookie, 'text/html', {
    method: 'POST',
  });
  // The provider has an end-session endpoint: there it goes (without id_token_hint, as there is none).
  assert.equal(out.status, 302);
  assert.ok(out.location?.includes('/session/end'));
  assert.ok(out.setCookie.some((c) => /^_gatehouse=; /.test(c)));
  assert.equal(await store.get(`session:${one.id}`), undefined);
  assert.equal(await store.get(`session:${two.id}`), undefined, 'logout everywhere');

  const anon = await fetchApp(`${app.origin()}/.gatehouse/logout`, undefined);
  assert.equal(anon.status, 200);
  assert.match(anon.body, /You are signed out/);
});

test('loginRedirect keeps the route providers; 401 and 403 answer JSON to API clients', async (t) => {
  const { app } = await setup(t);
  const html = await fetchApp(`${app.origin()}/jobs?x=1`, '_gatehouse=garbage');
  assert.equal(html.status, 302);
  assert.equal(html.location, '/.gatehouse/login?rd=%2Fjobs%3Fx%3D1');
  assert.ok(
    html.setCookie.some((c) => /^_gatehouse=; /.test(c)),
    'a dead cookie is cleared',
  );
  const api = await fetchApp(`${app.origin()}/jobs`, undefined, 'application/json');
  assert.equal(api.status, 401);
  assert.equal(JSON.parse(api.body).reason, 'user-unauthenticated');
});

test('pages escape everything they show', () => {
  const html = forbiddenPage({
    who: { user: '<script>alert(1)</script>', email: '"x"@example.com', source: "o'k" },
    reason: 'policy-deny:<b>',
    signOutHref: '/.gatehouse/logout?x="y"',
  });
  assert.doesNotMatch(html, /<script>/);
  assert.doesNotMatch(html, /<b>/);
  assert.match(html, /&#60;script&#62;/);
  assert.equal(escapeHtml(`<>&"'`), '&#60;&#62;&#38;&#34;&#39;');
});

test('OIDC client settings: http issuers only on loopback, openid scope required', () => {
  const { logger } = memoryLogger();
  const base = { name: 'p', clientId: 'c', scopes: ['openid'], groupsClaim: 'groups' };
  assert.throws(
    () => new OidcClient({ ...base, issuer: 'http://idp.example.com' }, logger),
    (e: unknown) => e instanceof OidcError && e.code === 'GH_OIDC_CONFIG',
  );
  assert.throws(() => new OidcClient({ ...base, issuer: 'ftp://idp.example.com' }, logger), OidcError);
  assert.throws(
    () => new OidcClient({ ...base, issuer: 'https://idp.example.com', scopes: ['email'] }, logger),
    OidcError,
  );
  assert.ok(new OidcClient({ ...base, issuer: 'https://idp.example.com' }, logger));
  assert.ok(new OidcClient({ ...base, issuer: 'http://127.0.0.1:9' }, logger));
  assert.ok(new OidcClient({ ...base, issuer: 'http://[::1]:9' }, logger));
  for (const h of ['localhost', '127.0.0.1', '127.1.2.3', '[::1]', '::1'])
    assert.equal(isLoopbackHost(h), true, h);
  for (const h of ['10.0.0.1', 'example.com', '128.0.0.1', '::ffff:127.0.0.1', 'localhost.example.com'])
    assert.equal(isLoopbackHost(h), false, h);
});

test('fromConfig builds the service from the configuration, resolving secrets; servedHostChecker', async (t) => {
  const config = ConfigSchema.parse({
    listeners: [
      { name: 'plain', bind: '127.0.0.1:8080' },
      { name: 'any', bind: ':8443' },
    ],
    identity: {
      session: { secrets: ['env:SESSION_SECRET'], signInHost: 'login.example.com' },
      providers: [
        {
          name: 'corp',
          type: 'oidc',
          issuer: 'https://idp.example.com',
          clientId: 'gh',
          clientSecret: 'env:OIDC_SECRET',
        },
      ],
    },
    upstreams: { u: { servers: [{ url: 'http://127.0.0.1:9001' }] } },
    routes: [
      { name: 'a', match: { host: 'airbyte.example.com' }, upstream: 'u' },
      {
        name: 'b',
        match: { host: ['*.jobs.example.com', 'Exact.Example.com:8443', '[2001:db8::1]:8443'] },
        upstream: 'u',
      },
      { name: 'c', upstream: 'u' },
    ],
  });
  const store = new MemoryStore({ sweepInterval: 0 });
  t.after(() => store.close());
  const { logger } = memoryLogger();
  const env: Record<string, string> = { SESSION_SECRET: SECRET, OIDC_SECRET: 'client-secret' };
  const resolved: string[] = [];
  const service = LoginService.fromConfig(
    config,
    (ref) => {
      resolved.push(ref);
      return ref.startsWith('env:') ? env[ref.slice(4)]! : ref;
    },
    { store, logger },
  );
  assert.ok(service);
  assert.deepEqual(resolved.sort(), ['env:OIDC_SECRET', 'env:SESSION_SECRET']);
  assert.equal(service.providers[0]?.settings.clientSecret, 'client-secret');

  const served = servedHostChecker(config);
  assert.equal(served('airbyte.example.com', 443, 'https'), true);
  assert.equal(served('airbyte.example.com', 8080, 'http'), true);
  assert.equal(served('airbyte.example.com', 6379, 'http'), false, 'not a gateway port');
  assert.equal(served('x.jobs.example.com', 443, 'https'), true);
  assert.equal(served('jobs.example.com', 443, 'https'), false, 'a wildcard never covers the apex');
  assert.equal(served('exact.example.com', 443, 'https'), true);
  // The route table's reading of a host pattern: an IPv6 literal's port is not part of its name.
  assert.equal(served('[2001:db8::1]', 8443, 'https'), true);
  assert.equal(served('login.example.com', 443, 'https'), true);
  assert.equal(served('127.0.0.1', 8080, 'http'), true);
  assert.equal(served('evil.com', 443, 'https'), false, 'a catch-all route does not make every host served');

  const noProviders = ConfigSchema.parse({ listeners: [{ name: 'p', bind: ':80' }] });
  assert.equal(
    LoginService.fromConfig(noProviders, (r) => r, { store, logger }),
    undefined,
  );
  const noSession = ConfigSchema.parse({
    listeners: [{ name: 'p', bind: ':80' }],
    identity: {
      providers: [{ name: 'corp', type: 'oidc', issuer: 'https://idp.example.com', clientId: 'gh' }],
    },
  });
  assert.throws(() => LoginService.fromConfig(noSession, (r) => r, { store, logger }), SessionConfigError);
});

/**
 * People login end to end: a real OpenID provider (oidc-provider), a real browser (chromium through
 * playwright-core) and the LoginService behind a small node:http app. Time is frozen for the gateway
 * (refresh and expiry) through the injected clock.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BrowserContext } from 'playwright-core';
import { LoginService, type LoginServiceOptions } from '../src/identity/login.js';
import type { OidcProviderSettings } from '../src/identity/oidc.js';
import { MemoryStore } from '../src/state/memory.js';
import { RedisStore } from '../src/state/redis.js';
import type { StateStore } from '../src/state/types.js';
import { launchBrowser, newPage, pageJson, signIn, WAIT } from './helpers/browser.js';
import { fetchApp, startIdp, startLoginApp, type TestIdp } from './helpers/oidc.js';
import { memoryLogger } from './helpers/proxy.js';
import { redisUrl } from './helpers/redis.js';

const SECRET_A = 'a'.repeat(16) + '-first-sealing-secret-0123456789';
const SECRET_B = 'b'.repeat(16) + '-second-sealing-secret-012345678';
const SECRET_C = 'c'.repeat(16) + '-third-sealing-secret-0123456789';
const HOSTS = ['app.gatehouse.test', 'login.gatehouse.test', 'other.gatehouse.test'];
const TEST_TIMEOUT = 90_000;

interface Identity {
  subject: string;
  user: string;
  email?: string;
  groups: string[];
  source: string;
  authMethod: string;
}

interface SetupOptions {
  accessTokenTtl?: number;
  secondProvider?: boolean;
  claimsInIdToken?: boolean;
  signInHost?: boolean;
  store?: 'memory' | 'redis';
}

async function setup(t: Parameters<typeof startIdp>[0], o: SetupOptions = {}) {
  const app = await startLoginApp(t);
  const redirectUris = HOSTS.map((h) => `http://${h}:${app.port}/.gatehouse/callback`);
  const postLogoutRedirectUris = HOSTS.map((h) => `http://${h}:${app.port}/.gatehouse/signed-out`);
  const idp = await startIdp(t, {
    redirectUris,
    postLogoutRedirectUris,
    accessTokenTtl: o.accessTokenTtl,
    claimsInIdToken: o.claimsInIdToken,
  });
  const idp2 = o.secondProvider
    ? await startIdp(t, { redirectUris, postLogoutRedirectUris, claimsInIdToken: true })
    : undefined;
  const clock = { now: Date.now() };
  const { logger, lines } = memoryLogger();
  let store: StateStore;
  if (o.store === 'redis') {
    store = new RedisStore(await redisUrl(), logger, {
      prefix: `gatehouse-test:${Math.random().toString(36).slice(2)}:`,
    });
  } else {
    store = new MemoryStore({ sweepInterval: 0 });
  }
  t.after(() => store.close());
  const providerOf = (name: string, display: string, p: TestIdp): OidcProviderSettings => ({
    name,
    displayName: display,
    issuer: p.issuer,
    clientId: p.clientId,
    clientSecret: p.clientSecret,
    scopes: ['openid', 'email', 'profile', 'groups'],
    groupsClaim: 'groups',
  });
  const providers = [providerOf('corp', 'Corp SSO', idp)];
  if (idp2 !== undefined) providers.push(providerOf('partner', 'Partner SSO', idp2));
  const make = (secrets: string[], extra: Partial<LoginServiceOptions> = {}) =>
    new LoginService({
      store,
      logger,
      session: { secrets, maxAge: 12 * 3_600_000, idleTimeout: 3_600_000, cookie: '_gatehouse' },
      providers,
      isServedHost: (host, port) => HOSTS.includes(host) && port === app.port,
      signInHost: o.signInHost ? `login.gatehouse.test:${app.port}` : undefined,
      now: () => clock.now,
      ...extra,
    });
  app.service = make([SECRET_A]);
  return { app, idp, idp2, clock, store, make, lines };
}

async function sessionCookie(context: BrowserContext, host = 'app.gatehouse.test') {
  const cookies = await context.cookies(`http://${host}/`);
  return cookies.find((c) => c.name === '_gatehouse');
}

test('login as alice, then the session is reused without the provider', {
  timeout: TEST_TIMEOUT,
}, async (t) => {
  const { app, idp, store } = await setup(t);
  const browser = await launchBrowser(t);
  const { context, page } = await newPage(browser);

  await page.goto(`${app.origin()}/hello?x=1`);
  assert.ok(page.url().startsWith(`${idp.issuer}/interaction/`), page.url());
  await signIn(page, 'alice');
  await page.waitForURL(`${app.origin()}/hello?x=1`, { timeout: WAIT });
  const body = await pageJson<{ path: string; identity: Identity }>(page);
  assert.equal(body.path, '/hello?x=1');
  assert.equal(body.identity.subject, 'alice');
  assert.equal(body.identity.user, 'alice');
  assert.equal(body.identity.email, 'alice@example.com');
  assert.deepEqual(body.identity.groups, ['data-eng']);
  assert.equal(body.identity.source, 'corp');
  assert.equal(body.identity.authMethod, 'session');
  // The ID token had no groups (the provider keeps scope claims for userinfo): they came from userinfo.
  assert.ok(idp.count('/me') >= 1, 'userinfo was asked for the groups');
  assert.deepEqual(
    idp.grants.map((g) => g.type),
    ['authorization_code'],
  );

  const cookie = await sessionCookie(context);
  assert.ok(cookie, 'session cookie set');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Lax');
  assert.equal(cookie.path, '/');
  assert.equal(cookie.secure, false, 'plain HTTP: no Secure');
  assert.ok(cookie.value.length < 100, `cookie is small (${cookie.value.length})`);
  const id = cookie.value.split('.')[0]!;
  assert.ok(await store.get(`session:${id}`), 'the session lives in the store');

  // Second visit: no round trip to the provider.
  const before = idp.requests.length;
  await page.goto(`${app.origin()}/again`);
  assert.equal(page.url(), `${app.origin()}/again`);
  assert.equal((await pageJson<{ identity: Identity }>(page)).identity.subject, 'alice');
  assert.equal(idp.requests.length, before, 'the provider was not contacted');

  // userinfo endpoint of the gateway.
  await page.goto(`${app.origin()}/.gatehouse/userinfo`);
  const info = await pageJson<{ subject: string; groups: string[]; provider: string }>(page);
  assert.equal(info.subject, 'alice');
  assert.deepEqual(info.groups, ['data-eng']);
  assert.equal(info.provider, 'corp');
});

test('the access token is refreshed shortly before it expires', { timeout: TEST_TIMEOUT }, async (t) => {
  const { app, idp, clock, store } = await setup(t, { accessTokenTtl: 120 });
  const browser = await launchBrowser(t);
  const { context, page } = await newPage(browser);
  await page.goto(`${app.origin()}/`);
  await signIn(page, 'alice');
  await page.waitForURL(`${app.origin()}/`, { timeout: WAIT });
  const id = (await sessionCookie(context))!.value.split('.')[0]!;
  const first = JSON.parse((await store.get(`session:${id}`))!).tokens;
  assert.ok(first.refreshToken, 'a refresh token was issued');
  assert.equal(first.expiresAt, clock.now + 120_000);

  clock.now += 30_000; // 90 s left: outside the 60 s refresh window
  await page.goto(`${app.origin()}/a`);
  assert.equal((await pageJson<{ identity: Identity }>(page)).identity.subject, 'alice');
  assert.deepEqual(
    idp.grants.map((g) => g.type),
    ['authorization_code'],
  );

  clock.now += 40_000; // 50 s left: refresh before expiry
  await page.goto(`${app.origin()}/b`);
  assert.equal((await pageJson<{ identity: Identity }>(page)).identity.subject, 'alice');
  assert.deepEqual(idp.grants, [
    { type: 'authorization_code', ok: true },
    { type: 'refresh_token', ok: true },
  ]);
  const second = JSON.parse((await store.get(`session:${id}`))!).tokens;
  assert.notEqual(second.accessToken, first.accessToken);
  assert.notEqual(second.refreshToken, first.refreshToken, 'the rotated refresh token is kept');
  assert.equal(second.expiresAt, clock.now + 120_000);
  assert.equal((await sessionCookie(context))!.value.split('.')[0], id, 'same session');

  await page.goto(`${app.origin()}/c`);
  assert.equal(idp.grants.length, 2, 'no second refresh while the new token is fresh');
});

test('a refused refresh ends the session cleanly: cookie cleared, store entry gone, one login, no loop', {
  timeout: TEST_TIMEOUT,
}, async (t) => {
  const { app, idp, clock, store } = await setup(t, { accessTokenTtl: 120 });
  const browser = await launchBrowser(t);
  const { context, page } = await newPage(browser);
  await page.goto(`${app.origin()}/`);
  await signIn(page, 'alice');
  await page.waitForURL(`${app.origin()}/`, { timeout: WAIT });
  const cookie = (await sessionCookie(context))!;
  const id = cookie.value.split('.')[0]!;

  assert.ok((await idp.revokeGrants('alice')) >= 1);
  clock.now += 100_000;
  const r = await fetchApp(`${app.origin()}/data`, `_gatehouse=${cookie.value}`);
  assert.equal(r.status, 302);
  assert.equal(r.location, '/.gatehouse/login?rd=%2Fdata');
  assert.ok(
    r.setCookie.some((c) => /^_gatehouse=;/.test(c) && /Max-Age=0/.test(c)),
    `cookie cleared: ${r.setCookie}`,
  );
  assert.deepEqual(idp.grants.at(-1), { type: 'refresh_token', ok: false });
  assert.equal(await store.get(`session:${id}`), undefined, 'no stale session left behind');

  // The same dead cookie again: straight to login, no second refresh attempt.
  const grants = idp.grants.length;
  const api = await fetchApp(`${app.origin()}/data`, `_gatehouse=${cookie.value}`, 'application/json');
  assert.equal(api.status, 401);
  assert.equal(JSON.parse(api.body).reason, 'session-expired');
  assert.equal(idp.grants.length, grants);

  // In the browser: one trip through login (the provider still knows alice), then the page.
  const logins = app.seen.filter((p) => p === '/.gatehouse/login').length;
  await page.goto(`${app.origin()}/data`);
  await page.waitForURL(`${app.origin()}/data`, { timeout: WAIT });
  assert.equal((await pageJson<{ identity: Identity }>(page)).identity.subject, 'alice');
  assert.equal(app.seen.filter((p) => p === '/.gatehouse/login').length, logins + 1, 'exactly one login');
  const fresh = (await sessionCookie(context))!;
  assert.notEqual(fresh.value.split('.')[0], id, 'a new session');
});

test('logout ends the session in the store, clears the cookie and ends the provider session', {
  timeout: TEST_TIMEOUT,
}, async (t) => {
  const { app, idp, store } = await setup(t);
  const browser = await launchBrowser(t);
  const { context, page } = await newPage(browser);
  await page.goto(`${app.origin()}/`);
  await signIn(page, 'alice');
  await page.waitForURL(`${app.origin()}/`, { timeout: WAIT });
  const id = (await sessionCookie(context))!.value.split('.')[0]!;

  await page.goto(`${app.origin()}/.gatehouse/logout`);
  const endSession = new URL(page.url());
  assert.equal(endSession.origin, idp.issuer, 'sent to the provider end-session endpoint');
  assert.ok(endSession.searchParams.get('id_token_hint'), 'with id_token_hint');
  assert.equal(
    endSession.searchParams.get('post_logout_redirect_uri'),
    `${app.origin()}/.gatehouse/signed-out`,
  );
  assert.equal(await store.get(`session:${id}`), undefined, 'ended in the store before leaving');
  assert.equal(await sessionCookie(context), undefined, 'cookie cleared');

  await Promise.all([
    page.waitForURL(`${app.origin()}/.gatehouse/signed-out`, { timeout: WAIT }),
    page.click('button[value="yes"]'),
  ]);
  assert.match(await page.content(), /You are signed out/);

  // The provider session ended too: signing in again shows its form.
  await page.goto(`${app.origin()}/x`);
  assert.ok(page.url().startsWith(`${idp.issuer}/interaction/`), page.url());
  assert.ok(await page.$('input[name="login"]'), 'the provider asks for credentials again');
});

test('secret rotation: an old cookie is accepted and resealed; a removed secret makes it invalid', {
  timeout: TEST_TIMEOUT,
}, async (t) => {
  const { app, make } = await setup(t);
  const browser = await launchBrowser(t);
  const { context, page } = await newPage(browser);
  await page.goto(`${app.origin()}/`);
  await signIn(page, 'alice');
  await page.waitForURL(`${app.origin()}/`, { timeout: WAIT });
  const sealedWithA = (await sessionCookie(context))!.value;

  app.service = make([SECRET_B, SECRET_A]);
  await page.goto(`${app.origin()}/rotated`);
  assert.equal((await pageJson<{ identity: Identity }>(page)).identity.subject, 'alice');
  const sealedWithB = (await sessionCookie(context))!.value;
  assert.notEqual(sealedWithB, sealedWithA, 'resealed with the new first secret');
  assert.equal(sealedWithB.split('.')[0], sealedWithA.split('.')[0], 'same session');

  app.service = make([SECRET_B]);
  await page.goto(`${app.origin()}/only-b`);
  assert.equal((await pageJson<{ identity: Identity }>(page)).identity.subject, 'alice');
  const old = await fetchApp(`${app.origin()}/x`, `_gatehouse=${sealedWithA}`, 'application/json');
  assert.equal(old.status, 401);
  assert.equal(JSON.parse(old.body).reason, 'session-invalid', 'sealed with a removed secret');

  app.service = make([SECRET_C]);
  const r = await fetchApp(`${app.origin()}/x`, `_gatehouse=${sealedWithB}`, 'application/json');
  assert.equal(r.status, 401);
  assert.equal(JSON.parse(r.body).reason, 'session-invalid');
  assert.ok(r.setCookie.some((c) => /^_gatehouse=;/.test(c)));
});

test('a tampered cookie is invalid and leads to login, not to the session', {
  timeout: TEST_TIMEOUT,
}, async (t) => {
  const { app } = await setup(t);
  const browser = await launchBrowser(t);
  const { context, page } = await newPage(browser);
  await page.goto(`${app.origin()}/`);
  await signIn(page, 'alice');
  await page.waitForURL(`${app.origin()}/`, { timeout: WAIT });
  const value = (await sessionCookie(context))!.value;
  const [id, mac] = value.split('.') as [string, string];
  const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === 'A' ? 'B' : 'A') + s.slice(i + 1);
  for (const tampered of [
    `${id}.${flip(mac, 10)}`,
    `${flip(id, 5)}.${mac}`,
    `${id}.`,
    `${id}`,
    'x'.repeat(5000),
  ]) {
    const r = await fetchApp(`${app.origin()}/x`, `_gatehouse=${tampered}`, 'application/json');
    assert.equal(r.status, 401, tampered.slice(0, 40));
    assert.equal(JSON.parse(r.body).reason, 'session-invalid');
    const html = await fetchApp(`${app.origin()}/x`, `_gatehouse=${tampered}`);
    assert.equal(html.status, 302);
    assert.match(html.location ?? '', /^\/\.gatehouse\/login\?rd=/);
  }
  await context.addCookies([{ name: '_gatehouse', value: `${id}.${flip(mac, 3)}`, url: app.origin() }]);
  const seen = app.seen.length;
  await page.goto(`${app.origin()}/after`);
  await page.waitForURL(`${app.origin()}/after`, { timeout: WAIT });
  assert.ok(app.seen.slice(seen).includes('/.gatehouse/login'), 'went through login');
  const fresh = (await sessionCookie(context))!.value;
  assert.notEqual(fresh.split('.')[0], id, 'a new session, never the tampered one');
});

test('an email the provider has not verified is not used as the identity email', {
  timeout: TEST_TIMEOUT,
}, async (t) => {
  const { app } = await setup(t);
  const browser = await launchBrowser(t);
  const { page } = await newPage(browser);
  await page.goto(`${app.origin()}/`);
  await signIn(page, 'mallory');
  await page.waitForURL(`${app.origin()}/`, { timeout: WAIT });
  const { identity } = await pageJson<{ identity: Identity & { claims: Record<string, unknown> } }>(page);
  assert.equal(identity.subject, 'mallory');
  assert.equal(identity.email, undefined);
  assert.equal(identity.claims.email_verified, false);
});

test('the return address survives login; foreign return addresses are refused', {
  timeout: TEST_TIMEOUT,
}, async (t) => {
  const { app, idp } = await setup(t);
  const browser = await launchBrowser(t);
  const { page } = await newPage(browser);
  const response = await page.goto(`${app.origin()}/.gatehouse/login?rd=https%3A%2F%2Fevil.example%2F`);
  assert.equal(response?.status(), 400);
  assert.match(await page.content(), /GH_BAD_RETURN_URL/);
  assert.equal(idp.count('/auth'), 0);

  await page.goto(`${app.origin()}/.gatehouse/login?rd=${encodeURIComponent('/deep/path?q=1&r=%2F')}`);
  await signIn(page, 'bob');
  await page.waitForURL(`${app.origin()}/deep/path?q=1&r=%2F`, { timeout: WAIT });
  assert.equal((await pageJson<{ identity: Identity }>(page)).identity.subject, 'bob');
});

test('CSRF on the callback: another browser, or a wrong state, gets 400 and never a session', {
  timeout: TEST_TIMEOUT,
}, async (t) => {
  const { app, lines } = await setup(t);
  const browser = await launchBrowser(t);
  // The attacker signs in as bob but stops before the callback, keeping its URL.
  const attacker = await newPage(browser);
  app.hold = (path) => path === '/.gatehouse/callback';
  await attacker.page.goto(`${app.origin()}/`);
  await signIn(attacker.page, 'bob');
  app.hold = undefined;
  const captured = app.held[0];
  assert.ok(captured, 'callback URL captured');
  assert.match(captured, /[?&]code=/);

  // The victim's browser opens the attacker's callback URL.
  const victim = await newPage(browser);
  const r = await victim.page.goto(captured);
  assert.equal(r?.status(), 400);
  assert.match(await victim.page.content(), /GH_LOGIN_STATE/);
  assert.equal(await sessionCookie(victim.context), undefined, 'no session in the victim browser');
  assert.ok(JSON.stringify(lines).includes('did not start it'), 'logged');

  // The state was single-use: even the attacker's own browser cannot use it now.
  const again = await attacker.page.goto(captured);
  assert.equal(again?.status(), 400);
  assert.equal(await sessionCookie(attacker.context), undefined);

  // A forged state.
  const forged = new URL(captured);
  forged.searchParams.set('state', 'A'.repeat(43));
  const f = await victim.page.goto(forged.href);
  assert.equal(f?.status(), 400);
});

test('the cookie stays far below 4 KB even when the ID token carries hundreds of groups', {
  timeout: TEST_TIMEOUT,
}, async (t) => {
  const { app, idp, store } = await setup(t, { claimsInIdToken: true });
  const browser = await launchBrowser(t);
  const { context, page } = await newPage(browser);
  const setCookies: string[] = [];
  page.on('response', async (res) => {
    if (new URL(res.url()).pathname === '/.gatehouse/callback') {
      const all = await res.headersArray();
      for (const h of all) if (h.name.toLowerCase() === 'set-cookie') setCookies.push(h.value);
    }
  });
  await page.goto(`${app.origin()}/`);
  await signIn(page, 'carol');
  await page.waitForURL(`${app.origin()}/`, { timeout: WAIT });
  await page.goto(`${app.origin()}/.gatehouse/userinfo`);
  const info = await pageJson<{ groups: string[] }>(page);
  assert.equal(info.groups.length, 400);
  assert.equal(idp.count('/me'), 0, 'groups came from the ID token');
  const cookie = (await sessionCookie(context))!;
  const record = JSON.parse((await store.get(`session:${cookie.value.split('.')[0]}`))!);
  assert.ok(record.tokens.idToken.length > 20_000, `the ID token is big (${record.tokens.idToken.length})`);
  assert.ok(setCookies.length >= 1);
  const total = setCookies.reduce((n, c) => n + c.length, 0);
  assert.ok(total < 4096, `Set-Cookie headers total ${total} bytes`);
  assert.ok(`_gatehouse=${cookie.value}`.length < 200);
});

test('two providers: the login page lets the user pick', { timeout: TEST_TIMEOUT }, async (t) => {
  const { app, idp, idp2 } = await setup(t, { secondProvider: true });
  const browser = await launchBrowser(t);
  const { page } = await newPage(browser);
  await page.goto(`${app.origin()}/pick?me=1`);
  assert.ok(page.url().startsWith(`${app.origin()}/.gatehouse/login?`), page.url());
  const links = await page.$$eval('a.button', (as) => as.map((a) => a.textContent));
  assert.deepEqual(links, ['Sign in with Corp SSO', 'Sign in with Partner SSO']);
  await Promise.all([
    page.waitForURL(`${idp2!.issuer}/interaction/**`, { timeout: WAIT }),
    page.click('text=Partner SSO'),
  ]);
  await signIn(page, 'bob');
  await page.waitForURL(`${app.origin()}/pick?me=1`, { timeout: WAIT });
  const { identity } = await pageJson<{ identity: Identity }>(page);
  assert.equal(identity.source, 'partner');
  assert.deepEqual(identity.groups, ['analysts']);
  assert.equal(idp.count('/auth'), 0, 'the other provider was not involved');
});

test('central sign-in host: one sign-in covers every host through one-time, browser-bound hand-offs', {
  timeout: TEST_TIMEOUT,
}, async (t) => {
  const { app, idp, store } = await setup(t, { signInHost: true });
  const browser = await launchBrowser(t);
  const { context, page } = await newPage(browser);
  const handoffs: string[] = [];
  page.on('request', (req) => {
    if (req.url().includes('/.gatehouse/handoff')) handoffs.push(req.url());
  });
  await page.goto(`${app.origin()}/x?y=1`);
  assert.ok(page.url().startsWith(`${idp.issuer}/interaction/`), page.url());
  await signIn(page, 'alice');
  await page.waitForURL(`${app.origin()}/x?y=1`, { timeout: WAIT });
  assert.equal((await pageJson<{ identity: Identity }>(page)).identity.subject, 'alice');
  const onApp = (await sessionCookie(context, 'app.gatehouse.test'))!;
  const onLogin = (await sessionCookie(context, 'login.gatehouse.test'))!;
  assert.equal(onApp.value.split('.')[0], onLogin.value.split('.')[0], 'one session, two hosts');
  assert.equal(handoffs.length, 1);
  assert.ok(handoffs[0]!.startsWith(`${app.origin()}/.gatehouse/handoff?code=`));

  // Another host: no provider round trip, the sign-in host hands the session over.
  const before = idp.requests.length;
  await page.goto(`${app.origin('other.gatehouse.test')}/z`);
  await page.waitForURL(`${app.origin('other.gatehouse.test')}/z`, { timeout: WAIT });
  assert.equal((await pageJson<{ identity: Identity }>(page)).identity.subject, 'alice');
  assert.equal(idp.requests.length, before, 'the provider was not contacted');

  // A used code is refused.
  const replay = await page.goto(handoffs[0]!);
  assert.equal(replay?.status(), 400);
  assert.match(await page.content(), /GH_HANDOFF/);

  // A fresh code taken from one browser does not work in another.
  const attacker = await newPage(browser);
  app.hold = (path) => path === '/.gatehouse/handoff';
  await attacker.page.goto(`${app.origin()}/`);
  await signIn(attacker.page, 'bob');
  app.hold = undefined;
  const code = app.held[0];
  assert.ok(code, 'hand-off URL captured');
  const victim = await newPage(browser);
  const stolen = await victim.page.goto(code);
  assert.equal(stolen?.status(), 400);
  assert.equal(await sessionCookie(victim.context, 'app.gatehouse.test'), undefined);

  // Logging out on one host ends the session on every host.
  await page.goto(`${app.origin()}/.gatehouse/logout`);
  assert.equal(await store.get(`session:${onApp.value.split('.')[0]}`), undefined);
  const r = await fetchApp(
    `${app.origin('other.gatehouse.test')}/z`,
    `_gatehouse=${onApp.value}`,
    'application/json',
  );
  assert.equal(r.status, 401);
});

test('a signed-in user who is not allowed gets a 403 page naming them, with sign-out, never a redirect', {
  timeout: TEST_TIMEOUT,
}, async (t) => {
  const { app } = await setup(t);
  const browser = await launchBrowser(t);
  const { page } = await newPage(browser);
  await page.goto(`${app.origin()}/`);
  await signIn(page, 'alice');
  await page.waitForURL(`${app.origin()}/`, { timeout: WAIT });
  const response = await page.goto(`${app.origin()}/admin`);
  assert.equal(response?.status(), 403);
  assert.equal(response?.request().redirectedFrom(), null, 'no redirect');
  assert.equal(page.url(), `${app.origin()}/admin`);
  const text = (await page.textContent('body')) ?? '';
  assert.match(text, /signed in as alice \(alice@example\.com\)/);
  assert.match(text, /no-allow-rule/);
  const href = await page.getAttribute('a.button', 'href');
  assert.equal(href, '/.gatehouse/logout');
});

test('with the Redis store: login, refresh and logout across two gateway instances', {
  timeout: TEST_TIMEOUT,
}, async (t) => {
  const { app, idp, clock, store, make } = await setup(t, { store: 'redis', accessTokenTtl: 120 });
  const browser = await launchBrowser(t);
  const { context, page } = await newPage(browser);
  await page.goto(`${app.origin()}/`);
  await signIn(page, 'alice');
  await page.waitForURL(`${app.origin()}/`, { timeout: WAIT });
  const id = (await sessionCookie(context))!.value.split('.')[0]!;
  assert.ok(await store.get(`session:${id}`));

  // A second instance (same store and secrets) serves the next requests, refreshing the tokens.
  app.service = make([SECRET_A]);
  clock.now += 80_000;
  await page.goto(`${app.origin()}/second`);
  assert.equal((await pageJson<{ identity: Identity }>(page)).identity.subject, 'alice');
  assert.deepEqual(idp.grants.at(-1), { type: 'refresh_token', ok: true });

  await page.goto(`${app.origin()}/.gatehouse/logout`);
  assert.equal(await store.get(`session:${id}`), undefined);
});

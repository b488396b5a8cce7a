/**
 * The per-address limit on login starts (`LoginServiceOptions.loginRateLimit`), against a real OpenID
 * provider over real HTTP, with a frozen clock. The proxy takes `facts.clientIp` from the socket; the
 * small app here does too, unless the test names another address in `x-test-client-ip`, so several
 * clients (IPv6 among them) can be tried from one machine.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { type TestContext, test } from 'node:test';
import { normalizeHost } from '../src/core/normalize.js';
import { LoginService, type LoginServiceOptions } from '../src/identity/login.js';
import { MemoryStore, type MemoryStoreOptions } from '../src/state/memory.js';
import { StateStoreError } from '../src/state/types.js';
import { fetchApp, startIdp } from './helpers/oidc.js';
import { memoryLogger } from './helpers/proxy.js';

const SECRET = 'ratelimit-session-secret-0123456789abcdef';
const HOST = 'app.gatehouse.test';
const WARNING = 'login starts rate-limited for this client address';

/** A real memory store that records the keys written with `set`. */
class RecordingStore extends MemoryStore {
  readonly written: string[] = [];
  override async set(key: string, value: string, ttlMs?: number): Promise<void> {
    this.written.push(key);
    return super.set(key, value, ttlMs);
  }
  /** How many `login:` states were stored. */
  get loginStates(): number {
    return this.written.filter((k) => k.startsWith('login:')).length;
  }
}

/** A store whose counters fail, as Redis does when it cannot be reached. */
class BrokenCounterStore extends RecordingStore {
  override async incr(): Promise<number> {
    throw new StateStoreError('incr failed: store unreachable');
  }
}

async function setup(
  t: TestContext,
  extra: Partial<LoginServiceOptions> = {},
  makeStore: (o: MemoryStoreOptions) => RecordingStore = (o) => new RecordingStore(o),
) {
  // 10 s into a minute, so a one-minute window has 50 s left.
  const clock = { now: Math.floor(Date.now() / 60_000) * 60_000 + 10_000 };
  const store = makeStore({ sweepInterval: 0, now: () => clock.now });
  t.after(() => store.close());
  const { logger, lines } = memoryLogger();
  let service: LoginService | undefined;
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const named = req.headers['x-test-client-ip'];
    const facts = {
      host: normalizeHost(req.headers.host),
      authority: req.headers.host ?? '',
      path: url.pathname,
      query: url.search,
      tls: false,
      clientIp: typeof named === 'string' ? named : (req.socket.remoteAddress ?? ''),
    };
    void service!.handle(req, res, facts);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const origin = `http://${HOST}:${(server.address() as AddressInfo).port}`;
  const idp = await startIdp(t, { redirectUris: [`${origin}/.gatehouse/callback`] });
  service = new LoginService({
    store,
    logger,
    session: { secrets: [SECRET], maxAge: 3_600_000, idleTimeout: 600_000, cookie: '_gatehouse' },
    providers: [
      {
        name: 'corp',
        issuer: idp.issuer,
        clientId: idp.clientId,
        clientSecret: idp.clientSecret,
        scopes: ['openid', 'email'],
        groupsClaim: 'groups',
      },
    ],
    isServedHost: (h) => h === HOST,
    now: () => clock.now,
    ...extra,
  });
  /** One GET /.gatehouse/login, from `ip` when given (else from the socket, 127.0.0.1). */
  const login = (ip?: string, rd = '/jobs') =>
    fetchApp(`${origin}/.gatehouse/login?rd=${encodeURIComponent(rd)}`, undefined, 'text/html', {
      headers: ip === undefined ? {} : { 'x-test-client-ip': ip },
    });
  const warnings = () => lines.filter((l) => l.msg === WARNING);
  return { clock, store, idp, origin, login, warnings };
}

/** Asserts a login start: 302 to the provider with a login cookie. */
function assertStarted(r: Awaited<ReturnType<typeof fetchApp>>, issuer: string, what: string): void {
  assert.equal(r.status, 302, what);
  assert.ok(r.location?.startsWith(`${issuer}/auth?`), `${what}: ${r.location}`);
  assert.ok(
    r.setCookie.some((c) => c.startsWith('_gatehouse_login=')),
    `${what}: login cookie`,
  );
}

/** Asserts a refused start: 429 page with Retry-After, no redirect, no cookie. */
function assertLimited(r: Awaited<ReturnType<typeof fetchApp>>, retryAfter: string, what: string): void {
  assert.equal(r.status, 429, what);
  assert.equal(r.headers['retry-after'], retryAfter, what);
  assert.match(r.body, /GH_LOGIN_RATE_LIMITED/, what);
  assert.equal(r.location, undefined, what);
  assert.deepEqual(r.setCookie, [], what);
}

test('by default 30 login starts per address and minute; the next get 429 + Retry-After and store nothing', async (t) => {
  const { clock, store, idp, origin, login, warnings } = await setup(t);
  for (let i = 1; i <= 30; i++) assertStarted(await login(), idp.issuer, `start ${i}`);
  assert.equal(store.loginStates, 30);

  for (const n of [31, 32, 33]) assertLimited(await login(), '50', `start ${n}`);
  assert.equal(store.loginStates, 30, 'no login state for a refused start');
  const slot = Math.floor(clock.now / 60_000);
  assert.equal(await store.get(`loginrl:127.0.0.1:${slot}`), '33');
  assert.equal(warnings().length, 1, 'one warning per address and window, not per request');
  assert.equal(warnings()[0]!.client, '127.0.0.1');

  // Callback and logout stay reachable for the limited address.
  const callback = await fetchApp(`${origin}/.gatehouse/callback?code=x&state=${'A'.repeat(43)}`, undefined);
  assert.equal(callback.status, 400);
  assert.match(callback.body, /GH_LOGIN_STATE/);
  const logout = await fetchApp(`${origin}/.gatehouse/logout`, undefined);
  assert.equal(logout.status, 200);

  // The next window admits starts again.
  clock.now += 50_000;
  assertStarted(await login(), idp.issuer, 'first start of the next window');
  assert.equal(store.loginStates, 31);
});

test('another address keeps its own count; each window starts afresh and warns once per address', async (t) => {
  const { clock, store, idp, login, warnings } = await setup(t, {
    loginRateLimit: { max: 2, windowMs: 10_000 },
  });
  clock.now += 3_000; // 7 s left in the 10 s window
  const a = '192.0.2.10';
  const b = '198.51.100.20';
  assertStarted(await login(a), idp.issuer, 'a 1');
  assertStarted(await login(a), idp.issuer, 'a 2');
  assertLimited(await login(a), '7', 'a 3');
  assertStarted(await login(b), idp.issuer, 'b 1');
  assertStarted(await login(b), idp.issuer, 'b 2');
  assertLimited(await login(b), '7', 'b 3');
  clock.now += 2_500;
  assertLimited(await login(a), '5', 'a 4 (Retry-After rounds up)');
  assert.equal(store.loginStates, 4);
  assert.deepEqual(
    warnings().map((w) => w.client),
    [a, b],
  );

  clock.now += 4_500; // the next window
  assertStarted(await login(a), idp.issuer, 'a in the next window');
  assertStarted(await login(a), idp.issuer, 'a in the next window');
  assertLimited(await login(a), '10', 'a over the limit again');
  assert.equal(store.loginStates, 6);
  assert.deepEqual(
    warnings().map((w) => w.client),
    [a, b, a],
  );
});

test('requests refused before a login start (bad return address) do not count', async (t) => {
  const { store, idp, login } = await setup(t, { loginRateLimit: { max: 2, windowMs: 60_000 } });
  for (let i = 0; i < 5; i++) {
    const r = await login('192.0.2.30', 'https://evil.example/');
    assert.equal(r.status, 400);
    assert.match(r.body, /GH_BAD_RETURN_URL/);
  }
  assertStarted(await login('192.0.2.30'), idp.issuer, 'start 1');
  assertStarted(await login('192.0.2.30'), idp.issuer, 'start 2');
  assertLimited(await login('192.0.2.30'), '50', 'start 3');
  assert.equal(store.loginStates, 2);
});

test('IPv6 clients are counted per /64; IPv4-mapped IPv6 counts as the IPv4 address', async (t) => {
  const { clock, store, idp, login } = await setup(t, { loginRateLimit: { max: 2, windowMs: 60_000 } });
  assertStarted(await login('2001:db8:1:2::1'), idp.issuer, 'first host of the /64');
  assertStarted(await login('2001:0DB8:0001:0002:ffff:ffff:ffff:fffe'), idp.issuer, 'second host');
  assertLimited(await login('2001:db8:1:2:abcd::99'), '50', 'third host of the same /64');
  assertStarted(await login('2001:db8:1:3::1'), idp.issuer, 'the neighbouring /64');
  const slot = Math.floor(clock.now / 60_000);
  assert.equal(await store.get(`loginrl:2001:db8:1:2::/64:${slot}`), '3');
  assert.equal(await store.get(`loginrl:2001:db8:1:3::/64:${slot}`), '1');

  assertStarted(await login('192.0.2.40'), idp.issuer, 'IPv4');
  assertStarted(await login('::ffff:192.0.2.40'), idp.issuer, 'the same address, IPv4-mapped');
  assertLimited(await login('192.0.2.40'), '50', 'IPv4 after both');
  assert.equal(store.loginStates, 5);
});

test('a store that cannot count fails closed: 503, no login state, no cookie', async (t) => {
  const { store, login } = await setup(t, {}, (o) => new BrokenCounterStore(o));
  const r = await login();
  assert.equal(r.status, 503);
  assert.match(r.body, /GH_STATE_UNAVAILABLE/);
  assert.equal(r.location, undefined);
  assert.deepEqual(r.setCookie, []);
  assert.equal(store.loginStates, 0);
});

test('a limit that cannot work is refused when the service is built', () => {
  const { logger } = memoryLogger();
  const store = new MemoryStore({ sweepInterval: 0 });
  const base: LoginServiceOptions = {
    store,
    logger,
    session: { secrets: [SECRET], maxAge: 3_600_000, idleTimeout: 600_000, cookie: '_gatehouse' },
    providers: [],
    isServedHost: () => false,
  };
  for (const loginRateLimit of [
    { max: 0, windowMs: 60_000 },
    { max: 1.5, windowMs: 60_000 },
    { max: 30, windowMs: 0 },
    { max: 30, windowMs: Number.NaN },
  ]) {
    assert.throws(
      () => new LoginService({ ...base, loginRateLimit }),
      TypeError,
      JSON.stringify(loginRateLimit),
    );
  }
  assert.doesNotThrow(() => new LoginService({ ...base, loginRateLimit: { max: 1, windowMs: 1 } }));
});

/**
 * A Redis outage with `state.store: redis://`: the test's own redis-server hangs (SIGSTOP, then
 * SIGCONT) or goes away (killed, then restarted on the same port) under a running gateway. Throughout,
 * the gateway never crashes and never lets a session through that it cannot check: protected routes
 * with a session fail closed (503 `GH_STATE_UNAVAILABLE`) without waiting on Redis once the outage is
 * known, public routes answer without the session, bearer and API-key requests keep working, and a
 * reload is accepted. Afterwards everything works again without a restart.
 *
 * The store's command timeout is set far above every bound of the test (30 s), so that nothing here
 * passes by waiting for it: the outage must be known (the store's health check, 500 ms).
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { type TestContext, test } from 'node:test';
import { Redis } from 'ioredis';
import { createLocalJWKSet, type JSONWebKeySet, jwtVerify } from 'jose';
import { generateApiKey } from '../src/identity/apikeys.js';
import { stateStoreUp } from '../src/observe/metrics.js';
import { Gateway } from '../src/process/gateway.js';
import { RedisStore } from '../src/state/redis.js';
import { NOT_REFUSED, StateStoreError } from '../src/state/types.js';
import { memoryLogger, tempDir, waitFor } from './helpers/gateway.js';
import { makeKey, startIssuer } from './helpers/identity.js';
import { startIdp } from './helpers/oidc.js';
import { type Seen, startBackend } from './helpers/proxy.js';
import { startRedisServer } from './helpers/redis.js';
import { CookieJar, hop, signInOverHttp } from './helpers/signin.js';

const SECRET = 'redis-outage-session-secret-0123456789abc';
const HOST = 'app.gatehouse.test';

/**
 * A gateway on `file` whose Redis store learns of an outage from its health check (500 ms), never from a
 * command timeout (30 s, past every bound of these tests).
 */
async function startGateway(t: TestContext, file: string) {
  const { logger, lines } = memoryLogger();
  const gw = await Gateway.start({
    configFile: file,
    logger,
    watch: false,
    createStore: (url, log) => new RedisStore(url, log, { commandTimeout: 30_000, probeTimeout: 500 }),
  });
  t.after(() => gw.shutdown());
  return { gw, lines, origin: `http://${HOST}:${gw.address('plain')!.port}` };
}

async function setup(t: TestContext) {
  const redis = await startRedisServer();
  t.after(() => redis.close());
  const backend = await startBackend(t, 'app');
  const key = await makeKey('k1');
  const issuer = await startIssuer([key]);
  t.after(() => issuer.close());
  const apiKey = generateApiKey('etl');
  const d = tempDir();
  t.after(() => d.remove());
  const config = (idpIssuer: string, extraRoute = '') => `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
state: { store: "${redis.url}" }
logging: { level: warn }
upstreams: { app: { servers: [{ url: "${backend.url}" }] } }
identity:
  session: { secrets: ["${SECRET}"] }
  providers:
    - { name: corp, type: oidc, issuer: "${idpIssuer}", clientId: gatehouse, clientSecret: file:client-secret,
        scopes: [openid, email, profile, groups] }
  bearer: [{ issuer: "${issuer.issuer}", audiences: [gatehouse-api] }]
  apiKeys: [{ id: etl, hash: "${apiKey.hashLine}", subject: "agent:etl", groups: [agents] }]
routes:
  - { name: app, match: { path: /app }, upstream: app, identityHeaders: true }
  - { name: open, match: { path: /open }, upstream: app, public: true, identityHeaders: true }
${extraRoute}`;
  d.write('client-secret', 'not-yet');
  const file = d.write('gatehouse.yaml', config('http://127.0.0.1:9'));
  const { gw, lines, origin } = await startGateway(t, file);
  const idp = await startIdp(t, { redirectUris: [`${origin}/.gatehouse/callback`] });
  await writeFile(d.file('client-secret'), idp.clientSecret);
  await writeFile(file, config(idp.issuer));
  assert.equal((await gw.reload()).ok, true);
  const token = await issuer.sign({ sub: 'svc', aud: 'gatehouse-api' });
  const asked = async (
    path: string,
    headers: { cookie?: string; authorization?: string; 'x-api-key'?: string },
  ) => {
    const before = backend.seen.length;
    const r = await hop(`${origin}${path}`, new CookieJar(), {
      accept: 'application/json',
      cookie: headers.cookie,
      headers: {
        ...(headers.authorization ? { authorization: headers.authorization } : {}),
        ...(headers['x-api-key'] ? { 'x-api-key': headers['x-api-key'] } : {}),
      },
    });
    const seen: Seen | undefined = backend.seen.length > before ? backend.seen.at(-1) : undefined;
    return { status: r.status, body: r.body, user: seen?.headers['x-gatehouse-user'] };
  };
  return {
    redis,
    gw,
    origin,
    lines,
    asked,
    bearer: `Bearer ${token}`,
    apiKey: apiKey.key,
    reloadWith: async (route: string) => {
      await writeFile(file, config(idp.issuer, route));
      return gw.reload();
    },
  };
}

/** `gatehouse_state_store_up{store="redis"}` of this process. */
async function storeUp(): Promise<number | undefined> {
  return (await stateStoreUp.get()).values.find((v) => v.labels.store === 'redis')?.value;
}

/** What must hold while Redis is known to be out, whichever way it went out. */
async function duringOutage(
  s: Awaited<ReturnType<typeof setup>>,
  cookie: string,
  tag: string,
): Promise<void> {
  await waitFor(() => !s.gw.runtime.store.available, 10_000, 'the outage to be known');
  assert.equal(await storeUp(), 0, `${tag}: the outage shows in /metrics`);
  const protectedRoute = await s.asked('/app/x', { cookie });
  assert.equal(protectedRoute.status, 503, `${tag}: a session on a protected route fails closed`);
  assert.match(protectedRoute.body, /GH_STATE_UNAVAILABLE/);
  const open = await s.asked('/open/x', { cookie });
  assert.equal(open.status, 200, `${tag}: the public route answers`);
  assert.equal(open.user, undefined, `${tag}: without the session it cannot check`);
  assert.equal((await s.asked('/app/key', { 'x-api-key': s.apiKey })).user, 'agent:etl', `${tag}: API key`);
  assert.equal((await s.asked('/app/jwt', { authorization: s.bearer })).user, 'svc', `${tag}: bearer`);
  assert.equal((await s.asked('/app/none', {})).status, 401, `${tag}: anonymous is still refused`);
  const start = await hop(`${s.origin}/.gatehouse/login`, new CookieJar());
  assert.equal(start.status, 503, `${tag}: sign-in needs the store and says so`);
  // A configuration change deploys while Redis is out.
  const reload = await s.reloadWith(
    `  - { name: added-${tag}, match: { path: /added }, upstream: app, public: true }\n`,
  );
  assert.deepEqual(reload.ok, true, `${tag}: reload accepted: ${JSON.stringify(reload)}`);
  assert.equal((await s.asked('/added', {})).status, 200, `${tag}: the new route serves`);
}

test('Redis hangs (SIGSTOP) and continues: fail closed fast, public and token routes serve, reload accepted, recovery by itself', {
  timeout: 120_000,
}, async (t) => {
  const s = await setup(t);
  const { cookie } = await signInOverHttp(s.origin, 'alice', { rd: '/app/x' });
  assert.equal((await s.asked('/app/x', { cookie })).user, 'alice');
  assert.equal((await s.asked('/open/x', { cookie })).user, 'alice', 'a public route attaches the session');
  // A session no process has cached yet, so that its check must ask Redis.
  const fresh = (await signInOverHttp(s.origin, 'bob', { rd: '/app/x' })).cookie;

  s.redis.stop();
  // Before the hang is known, a public route does not wait for Redis: it answers while a protected
  // request with a session, sent first, still waits on the stopped server.
  const protectedFirst = s.asked('/app/x', { cookie: fresh }).then((r) => ({ which: 'protected', ...r }));
  await new Promise((r) => setTimeout(r, 100));
  const publicNext = s.asked('/open/x', { cookie: fresh }).then((r) => ({ which: 'public', ...r }));
  const first = await Promise.race([protectedFirst, publicNext]);
  assert.equal(first.which, 'public');
  assert.equal(first.status, 200);
  assert.equal(first.user, undefined);
  assert.equal((await protectedFirst).status, 503, 'the waiting request fails closed once the hang is known');

  await duringOutage(s, cookie, 'hang');

  s.redis.cont();
  await waitFor(async () => (await s.asked('/app/x', { cookie })).status === 200, 15_000, 'recovery');
  assert.equal((await s.asked('/app/x', { cookie })).user, 'alice', 'the same session works again');
  assert.equal(await storeUp(), 1);
  assert.equal((await s.asked('/open/x', { cookie: fresh })).user, 'bob', 'public routes attach it again');
  const again = await signInOverHttp(s.origin, 'alice', { rd: '/app/x' });
  assert.equal((await s.asked('/app/x', { cookie: again.cookie })).user, 'alice', 'sign-in works again');
});

test('Redis refuses (killed) and comes back empty on the same port: fail closed, serve the rest, recover by itself', {
  timeout: 120_000,
}, async (t) => {
  const s = await setup(t);
  const { cookie } = await signInOverHttp(s.origin, 'alice', { rd: '/app/x' });
  assert.equal((await s.asked('/app/x', { cookie })).user, 'alice');

  await s.redis.kill();
  await duringOutage(s, cookie, 'refused');
  // A cached session is not trusted while revocations cannot arrive.
  assert.equal((await s.asked('/app/x', { cookie })).status, 503);

  await s.redis.restart();
  await waitFor(
    () => s.gw.runtime.store.available && s.gw.runtime.store.revocations.live,
    15_000,
    'recovery',
  );
  // The new Redis is empty: the old session is gone (refused, not an error), sign-in works again.
  assert.equal((await s.asked('/app/x', { cookie })).status, 401);
  const again = await signInOverHttp(s.origin, 'alice', { rd: '/app/x' });
  assert.equal((await s.asked('/app/x', { cookie: again.cookie })).user, 'alice');
  assert.equal((await s.asked('/open/x', { cookie: again.cookie })).user, 'alice');
  assert.ok(
    s.lines.some((l) => l.msg === 'state store (Redis) unavailable'),
    'the outage is logged',
  );
});

test('a gateway started while Redis is down serves token and public routes, signs with a key of its own, and adopts the shared key when Redis is back', {
  timeout: 120_000,
}, async (t) => {
  const redis = await startRedisServer();
  t.after(() => redis.close());
  await redis.kill();
  const backend = await startBackend(t, 'app');
  const key = await makeKey('k1');
  const issuer = await startIssuer([key]);
  t.after(() => issuer.close());
  const apiKey = generateApiKey('etl');
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gatehouse.yaml',
    `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
state: { store: "${redis.url}" }
logging: { level: info }
upstreams: { app: { servers: [{ url: "${backend.url}" }] } }
identity:
  session: { secrets: ["${SECRET}"] }
  bearer: [{ issuer: "${issuer.issuer}", audiences: [gatehouse-api] }]
  apiKeys: [{ id: etl, hash: "${apiKey.hashLine}", subject: "agent:etl", groups: [agents] }]
routes:
  - { name: app, match: { path: /app }, upstream: app, identityHeaders: true }
  - { name: open, match: { path: /open }, upstream: app, public: true }
`,
  );
  const startOne = () => startGateway(t, file);
  // Redis is down: the gateway starts anyway (it refused to before, as if the configuration were invalid).
  const first = await startOne();
  assert.ok(
    first.lines.some((l) => String(l.msg).includes('signed with a key of this instance alone')),
    'the provisional key is logged',
  );
  const token = await issuer.sign({ sub: 'svc', aud: 'gatehouse-api' });
  const assertionOf = async (origin: string, headers: Record<string, string>) => {
    const before = backend.seen.length;
    const r = await hop(`${origin}/app/x`, new CookieJar(), { accept: 'application/json', headers });
    assert.equal(r.status, 200, r.body);
    assert.equal(backend.seen.length, before + 1);
    const assertion = backend.seen.at(-1)!.headers['x-gatehouse-assertion'];
    assert.equal(typeof assertion, 'string', 'the upstream got an assertion');
    return assertion as string;
  };
  const kidOf = (jwt: string) =>
    (JSON.parse(Buffer.from(jwt.split('.')[0]!, 'base64url').toString()) as { kid: string }).kid;
  const jwksOf = async (origin: string) => {
    const r = await hop(`${origin}/.gatehouse/jwks.json`, new CookieJar(), { accept: 'application/json' });
    assert.equal(r.status, 200);
    return createLocalJWKSet(JSON.parse(r.body) as JSONWebKeySet);
  };
  const provisional = await assertionOf(first.origin, { authorization: `Bearer ${token}` });
  await assertionOf(first.origin, { 'x-api-key': apiKey.key });
  assert.equal((await hop(`${first.origin}/open/x`, new CookieJar())).status, 200);
  // The provisional key is published: a backend can verify what it was sent.
  await jwtVerify(provisional, await jwksOf(first.origin));
  assert.equal(first.gw.runtime.identity.assertion.provisional, true);

  await redis.restart();
  await waitFor(() => !first.gw.runtime.identity.assertion.provisional, 20_000, 'the shared key adopted');
  const shared = await assertionOf(first.origin, { authorization: `Bearer ${token}` });
  assert.notEqual(kidOf(shared), kidOf(provisional), 'signs with the stored key now');
  // Both keys are published: assertions signed before the switch still verify until they expire.
  const jwks = await jwksOf(first.origin);
  await jwtVerify(provisional, jwks);
  await jwtVerify(shared, jwks);
  assert.ok(first.lines.some((l) => String(l.msg).includes('signing with the shared key')));
  // A second instance on the same Redis signs with the same key.
  const second = await startOne();
  assert.equal(second.gw.runtime.identity.assertion.provisional, false);
  assert.equal(kidOf(await assertionOf(second.origin, { authorization: `Bearer ${token}` })), kidOf(shared));
});

test('limit() and charge() in an outage: fail with StateStoreError once it is known (at once after that), work again when Redis is back', {
  timeout: 60_000,
}, async (t) => {
  const redis = await startRedisServer();
  t.after(() => redis.close());
  const store = new RedisStore(redis.url, memoryLogger().logger, {
    commandTimeout: 30_000,
    probeTimeout: 500,
  });
  t.after(() => store.close());
  const rate = { key: 'rl', intervalMs: 60_000, burst: 2, maxWaitMs: 0 };
  const quotas = [{ key: 'q', limit: 10, cost: 1, ttlMs: 60_000 }];
  assert.equal((await store.limit(rate, quotas)).remaining, 1);
  const failsAtOnce = async (tag: string) => {
    const started = Date.now();
    await assert.rejects(store.limit(rate, quotas), StateStoreError, tag);
    await assert.rejects(store.charge('q', 0.5, 60_000), StateStoreError, tag);
    assert.ok(Date.now() - started < 200, `${tag}: no wait on Redis (${Date.now() - started} ms)`);
  };

  // A hang: the call in flight fails when the health check notices, far before the command timeout.
  redis.stop();
  const started = Date.now();
  await assert.rejects(store.limit(rate, quotas), StateStoreError);
  assert.ok(Date.now() - started < 10_000, `the hang is known in ${Date.now() - started} ms`);
  await failsAtOnce('hang');
  redis.cont();
  await waitFor(() => store.available, 15_000, 'recovery from the hang');
  // The call abandoned in the hang ran when Redis continued, and was given back: the burst's second
  // request and the quota's second unit are still there.
  const afterHang = await store.limit(rate, quotas);
  assert.equal(afterHang.refusedBy, NOT_REFUSED);
  assert.equal(afterHang.remaining, 0);
  assert.deepEqual(afterHang.used, [2]);

  // Gone: refused connections. Redis comes back empty, so the bucket is full again.
  await redis.kill();
  await waitFor(() => !store.available, 10_000, 'the outage to be known');
  await failsAtOnce('refused');
  await redis.restart();
  await waitFor(() => store.available, 15_000, 'recovery');
  const again = await store.limit(rate, quotas);
  assert.equal(again.refusedBy, NOT_REFUSED);
  assert.equal(again.remaining, 1);
  assert.deepEqual(again.used, [1]);
  assert.equal(await store.charge('q', 0.5, 60_000), 1.5);
});

test('a limit() call that timed out while Redis hung changes nothing when Redis runs it later', {
  timeout: 30_000,
}, async (t) => {
  const redis = await startRedisServer();
  t.after(() => redis.close());
  // The command times out (300 ms) long before the health check would give up on its PING (5 s).
  const store = new RedisStore(redis.url, memoryLogger().logger, {
    commandTimeout: 300,
    probeInterval: 200,
    probeTimeout: 5_000,
  });
  t.after(() => store.close());
  const raw = new Redis(redis.url, { maxRetriesPerRequest: 1 });
  t.after(() => raw.disconnect());
  const rate = { key: 'rl', intervalMs: 60_000, burst: 2, maxWaitMs: 0 };
  const quotas = [{ key: 'q', limit: 10, cost: 1, ttlMs: 60_000 }];
  assert.equal((await store.limit(rate, quotas)).remaining, 1);
  const before = { tat: await raw.get('gatehouse:rl'), used: await raw.get('gatehouse:q') };
  assert.equal(before.used, '1');

  redis.stop();
  await assert.rejects(store.limit(rate, quotas), StateStoreError);
  assert.equal(store.available, false, 'the timeout made the outage known');
  // Past the call's deadline; then Redis runs the call it holds.
  await new Promise((r) => setTimeout(r, 500));
  redis.cont();
  await waitFor(() => store.available, 10_000, 'recovery');
  assert.deepEqual(
    { tat: await raw.get('gatehouse:rl'), used: await raw.get('gatehouse:q') },
    before,
    'the late call changed nothing',
  );
  const next = await store.limit(rate, quotas);
  assert.equal(next.refusedBy, NOT_REFUSED);
  assert.equal(next.remaining, 0);
  assert.deepEqual(next.used, [2]);
});

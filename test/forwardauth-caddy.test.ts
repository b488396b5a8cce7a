/**
 * Real Caddy in front of Gatehouse's forward-auth endpoint, both run from the project's example files
 * (examples/caddy/Caddyfile and gatehouse.yaml, addresses and issuers replaced by the test's own): API
 * keys and bearer JWTs reach a backend as identity headers and a verifiable assertion, refusals keep
 * their status and reason, spoofed identity and forwarded headers never count, and a person signs in
 * with Chromium against a real OpenID provider, all through Caddy.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createLocalJWKSet, type JSONWebKeySet, jwtVerify } from 'jose';
import { generateApiKey } from '../src/identity/apikeys.js';
import type { AccessEntry } from '../src/observe/log.js';
import { Gateway } from '../src/process/gateway.js';
import { launchBrowser, newPage, pageJson, signIn, WAIT } from './helpers/browser.js';
import { exampleWith, noLimitElsewhere, spendExportsBudget, startCaddy } from './helpers/companion.js';
import { memoryLogger, tempDir } from './helpers/gateway.js';
import { makeKey, startIssuer } from './helpers/identity.js';
import { freePort } from './helpers/listen.js';
import { startIdp } from './helpers/oidc.js';
import { echo, request, type Seen, seenOf, startBackend } from './helpers/proxy.js';

const HOST = 'app.gatehouse.test';

test('Caddy forward_auth with examples/caddy: identities, refusals, spoofing and sign-in', {
  timeout: 180_000,
}, async (t) => {
  const d = tempDir('gatehouse-caddy-');
  t.after(() => d.remove());
  // The application reports a limit of its own on /exports: the client sees both.
  const backend = await startBackend(t, 'app', (req, res, seen) => {
    if (seen.url.startsWith('/exports')) res.setHeader('ratelimit', '"app";r=7;t=1');
    echo(req, res, seen);
  });
  const tokens = await startIssuer([await makeKey('k1', 'ES256')]);
  t.after(() => tokens.close());
  const key = generateApiKey('etl');
  const [frontPort, webPort, authzPort] = [await freePort(), await freePort(), await freePort()];
  const origin = `http://${HOST}:${frontPort}`;
  const idp = await startIdp(t, { redirectUris: [`${origin}/.gatehouse/callback`] });

  const gatehouseYaml = exampleWith('caddy/gatehouse.yaml', [
    ['127.0.0.1:8080', `127.0.0.1:${webPort}`],
    ['127.0.0.1:9100', `127.0.0.1:${authzPort}`],
    ['http://127.0.0.1:9001', backend.url],
    ['app.example.com', HOST],
    ['https://idp.example.com', idp.issuer],
    ['https://tokens.example.com', tokens.issuer],
    ['sha256:<hex>', key.hashLine],
  ]);
  const access: AccessEntry[] = [];
  const gw = await Gateway.start({
    configFile: d.write('gatehouse.yaml', gatehouseYaml),
    logger: memoryLogger().logger,
    watch: false,
    env: {
      GATEHOUSE_SESSION_SECRET: 'caddy-forward-auth-session-secret-0123456789',
      OIDC_CLIENT_SECRET: idp.clientSecret,
    },
    accessLog: (e) => access.push(e),
  });
  t.after(() => gw.shutdown());
  const caddy = await startCaddy(
    t,
    d.dir,
    exampleWith('caddy/Caddyfile', [
      ['app.example.com:8000', `${HOST}:${frontPort}`],
      ['127.0.0.1:8080', `127.0.0.1:${webPort}`],
      ['127.0.0.1:9100', `127.0.0.1:${authzPort}`],
      ['127.0.0.1:9001', `127.0.0.1:${backend.port}`],
    ]),
    frontPort,
  );
  const front = `http://127.0.0.1:${frontPort}`;
  const host = `${HOST}:${frontPort}`;
  const jwksReply = await request(front, { path: '/.gatehouse/jwks.json', headers: { host } });
  assert.equal(jwksReply.status, 200, caddy.output());
  const jwks = createLocalJWKSet(JSON.parse(jwksReply.body.toString()) as JSONWebKeySet);

  await t.test('an API key reaches the backend as identity headers, without the key', async () => {
    const r = await request(front, { path: '/jobs?x=1', headers: { host, 'x-api-key': key.key } });
    assert.equal(r.status, 200, `${r.body}\n${caddy.output()}`);
    const seen = seenOf(r.body);
    assert.equal(seen.url, '/jobs?x=1');
    assert.equal(seen.headers['x-gatehouse-user'], 'agent:etl');
    assert.equal(seen.headers['x-gatehouse-groups'], 'agents');
    // Caddy copies the empty answer header as an empty header (never a placeholder text).
    assert.equal(seen.headers['x-gatehouse-email'], '');
    assert.equal(seen.headers['x-api-key'], undefined);
    const { payload } = await jwtVerify(seen.headers['x-gatehouse-assertion'] as string, jwks, {
      audience: HOST,
      issuer: 'gatehouse',
    });
    assert.equal(payload.sub, 'agent:etl');
    const entry = access.find((e) => e.path === '/jobs' && e.plane === 'forward-auth')!;
    assert.equal(entry.identity, 'agent:etl');
    assert.equal(entry.reason, 'policy-allow:agents');
    assert.equal(entry.route, 'app');
    assert.equal(entry.host, HOST);
    // A POST is decided as a POST; its body goes to the backend, never to the gateway.
    const post = await request(front, {
      method: 'POST',
      path: '/jobs',
      headers: { host, 'x-api-key': key.key, 'content-type': 'text/plain' },
      body: 'payload',
    });
    assert.equal(post.status, 200, post.body.toString());
    assert.equal(seenOf(post.body).bodyLength, 7);
    assert.equal(access.at(-1)!.method, 'POST');
  });

  await t.test('a bearer JWT reaches the backend as its user, email and groups', async () => {
    const jwt = await tokens.sign({
      aud: 'gatehouse-api',
      sub: 'u-alice',
      preferred_username: 'alice',
      email: 'alice@example.com',
      groups: ['data-eng'],
    });
    const r = await request(front, { path: '/reports', headers: { host, authorization: `Bearer ${jwt}` } });
    assert.equal(r.status, 200, r.body.toString());
    const seen = seenOf(r.body);
    assert.equal(seen.headers['x-gatehouse-user'], 'alice');
    assert.equal(seen.headers['x-gatehouse-email'], 'alice@example.com');
    assert.equal(seen.headers['x-gatehouse-groups'], 'data-eng');
    assert.equal(seen.headers.authorization, undefined);
  });

  await t.test('401 with WWW-Authenticate, 403 with the reason', async () => {
    const none = await request(front, { path: '/reports', headers: { host } });
    assert.equal(none.status, 401);
    assert.match(String(none.headers['www-authenticate']), /^Bearer realm="gatehouse"/);
    assert.equal(JSON.parse(none.body.toString()).reason, 'user-unauthenticated');
    const expired = await tokens.sign(
      { aud: 'gatehouse-api', sub: 'u-old', groups: ['data-eng'] },
      { exp: Math.floor(Date.now() / 1000) - 600 },
    );
    const old = await request(front, {
      path: '/reports',
      headers: { host, authorization: `Bearer ${expired}` },
    });
    assert.equal(old.status, 401);
    assert.match(String(old.headers['www-authenticate']), /error="invalid_token"/);
    assert.equal(JSON.parse(old.body.toString()).reason, 'token-expired');
    const denied = await request(front, { path: '/admin/users', headers: { host, 'x-api-key': key.key } });
    assert.equal(denied.status, 403);
    const body = JSON.parse(denied.body.toString());
    assert.equal(body.code, 'GH_FORBIDDEN');
    assert.equal(body.reason, 'no-allow-rule');
    // A browser without a session is sent to sign in on the public host.
    const browser = await request(front, { path: '/dash?x=1', headers: { host, accept: 'text/html' } });
    assert.equal(browser.status, 302);
    assert.equal(browser.headers.location, '/.gatehouse/login?rd=%2Fdash%3Fx%3D1');
    assert.ok(!backend.seen.some((s) => s.url.startsWith('/admin')));
  });

  await t.test(
    'over the rate limit of /exports: 200s with the RateLimit headers, then 429 with Retry-After; a real 403 stays 403',
    async () => {
      const before = backend.seen.length;
      const limited = await spendExportsBudget(
        front,
        host,
        key.key,
        () => caddy.output(),
        (r) => {
          const seen = seenOf(r.body);
          assert.equal(seen.headers['x-gatehouse-ratelimit'], undefined, 'the budget is for the client');
          assert.equal(seen.headers['x-gatehouse-ratelimit-policy'], undefined);
        },
      );
      const body = JSON.parse(limited.body.toString());
      assert.equal(body.code, 'GH_RATE_LIMITED');
      assert.equal(body.reason, 'rate-limited:exports');
      assert.equal(backend.seen.length, before + 5, 'the limited request never reaches the backend');
      assert.equal(access.at(-1)!.limit, 'limited');
      // A real 403 stays 403, and a route without a limit says nothing about one.
      const { free } = await noLimitElsewhere(front, host, key.key);
      assert.equal(seenOf(free.body).headers['x-gatehouse-ratelimit'], undefined);
    },
  );

  await t.test('spoofed identity and forwarded headers from the client never count', async () => {
    const before = backend.seen.length;
    // On a public route (no identity to send), the client's own identity headers are dropped.
    const r = await request(front, {
      path: '/public/page',
      headers: [
        'host',
        host,
        'X-Gatehouse-User',
        'root',
        'X-Gatehouse-Email',
        'root@example.com',
        'X-Gatehouse-Groups',
        'admins',
        'X-Gatehouse-Assertion',
        'forged',
        'X_Gatehouse_User',
        'root',
      ],
    });
    assert.equal(r.status, 200, r.body.toString());
    const seen = seenOf(r.body);
    // Gatehouse's empty answers replaced them: no value of the client's passes, in either spelling.
    for (let i = 0; i < seen.rawHeaders.length; i += 2) {
      if (/^x[-_]gatehouse[-_]/i.test(seen.rawHeaders[i]!))
        assert.equal(seen.rawHeaders[i + 1], '', `${seen.rawHeaders[i]} is the client's`);
    }
    assert.equal(seen.headers.x_gatehouse_user, undefined);
    // A client naming another target in the forwarded headers is decided on its real target.
    for (const spoof of [
      { 'x-original-uri': '/public', 'x-original-method': 'GET' },
      { 'x-forwarded-uri': '/public', 'x-forwarded-method': 'GET' },
      { 'x-forwarded-uri': '/public', 'x-original-uri': '/public', 'x-forwarded-host': 'other.test' },
    ]) {
      const admin = await request(front, {
        path: '/admin',
        headers: { host, 'x-api-key': key.key, ...spoof },
      });
      assert.equal(admin.status, 403, JSON.stringify(spoof));
    }
    // The client address is the one Caddy saw, whatever the client claims.
    await request(front, {
      path: '/jobs',
      headers: { host, 'x-api-key': key.key, 'x-forwarded-for': '198.51.100.7' },
    });
    assert.equal(access.at(-1)!.client, '127.0.0.1');
    assert.equal(backend.seen.length, before + 2);
  });

  await t.test('a person signs in through Caddy and reaches the backend as themselves', async () => {
    const browser = await launchBrowser(t);
    const alice = await newPage(browser);
    await alice.context.addCookies([{ name: 'theme', value: 'dark', url: origin }]);
    await alice.page.goto(`${origin}/dash/report?x=1`);
    assert.ok(alice.page.url().startsWith(`${idp.issuer}/`), alice.page.url());
    await signIn(alice.page, 'alice');
    await alice.page.waitForURL(`${origin}/dash/report?x=1`, { timeout: WAIT });
    const seen = await pageJson<Seen>(alice.page);
    assert.equal(seen.url, '/dash/report?x=1');
    assert.equal(seen.headers['x-gatehouse-user'], 'alice');
    assert.equal(seen.headers['x-gatehouse-email'], 'alice@example.com');
    assert.equal(seen.headers['x-gatehouse-groups'], 'data-eng');
    assert.equal(
      seen.headers.cookie,
      'theme=dark',
      "the session cookie stays at the edge; the application's own passes",
    );
    const { payload } = await jwtVerify(seen.headers['x-gatehouse-assertion'] as string, jwks, {
      audience: HOST,
      issuer: 'gatehouse',
    });
    assert.deepEqual(payload.amr, ['session']);
    const entry = access.find((e) => e.path === '/dash/report' && e.status === 200)!;
    assert.equal(entry.plane, 'forward-auth');
    assert.equal(entry.identity, 'alice');
    assert.equal(entry.authMethod, 'session');
    // bob signs in too, but the admin pages are not his: 403, no redirect loop.
    const bob = await newPage(browser);
    await bob.page.goto(`${origin}/admin`);
    await signIn(bob.page, 'bob');
    await bob.page.waitForURL(`${origin}/admin`, { timeout: WAIT });
    const denied = await bob.page.goto(`${origin}/admin`);
    assert.equal(denied?.status(), 403);
  });
});

/**
 * People login through the running gateway: a real OpenID provider (oidc-provider), a real browser
 * (chromium through playwright-core), `Gateway.start` with a config file, and a backend that echoes
 * the headers it received.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { createLocalJWKSet, type JSONWebKeySet, jwtVerify } from 'jose';
import type { AccessEntry } from '../src/observe/log.js';
import { Gateway } from '../src/process/gateway.js';
import { launchBrowser, newPage, pageJson, signIn, WAIT } from './helpers/browser.js';
import { memoryLogger, tempDir } from './helpers/gateway.js';
import { startIdp } from './helpers/oidc.js';
import { request, type Seen, startBackend } from './helpers/proxy.js';

const SECRET = 'e2e-login-session-secret-0123456789abcdef';
const HOST = 'app.gatehouse.test';

test('people sign in through the gateway; policy, identity headers, 403 page and reload', {
  timeout: 120_000,
}, async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const backend = await startBackend(t, 'app');
  const config = (issuer: string, extraRoutes = '') => `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
upstreams: { app: { servers: [{ url: "${backend.url}" }] } }
identity:
  session: { secrets: [env:SESSION_SECRET] }
  providers:
    - { name: corp, type: oidc, issuer: "${issuer}", clientId: gatehouse, clientSecret: file:client-secret,
        scopes: [openid, email, profile, groups] }
policies:
  data-eng: { allow: [{ name: engineers, groups: [data-eng] }] }
routes:
  - { name: dash, match: { path: /dash }, upstream: app, policy: data-eng, identityHeaders: true }
  - { name: open, match: { path: /open }, upstream: app, public: true }
${extraRoutes}`;
  // Discovery is lazy, so the gateway can start before the provider exists: the provider needs the
  // gateway's port for its redirect URI, and the configuration then names the real issuer.
  d.write('client-secret', 'not-yet');
  const file = d.write('gatehouse.yaml', config('http://127.0.0.1:9'));
  const { logger } = memoryLogger();
  const access: AccessEntry[] = [];
  const gw = await Gateway.start({
    configFile: file,
    logger,
    watch: false,
    env: { SESSION_SECRET: SECRET },
    accessLog: (e) => access.push(e),
  });
  t.after(() => gw.shutdown());
  const port = gw.address('plain')!.port;
  const origin = `http://${HOST}:${port}`;
  const idp = await startIdp(t, { redirectUris: [`${origin}/.gatehouse/callback`] });
  await writeFile(d.file('client-secret'), idp.clientSecret);
  await writeFile(file, config(idp.issuer));
  assert.deepEqual(await gw.reload(), { ok: true, generation: 2 });

  const browser = await launchBrowser(t);

  // alice: anonymous → the provider → back to the page she asked for, as herself.
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
  // The session cookie stays with the gateway; the application's own cookies pass.
  assert.equal(seen.headers.cookie, 'theme=dark');
  const jwks = await request(`http://127.0.0.1:${port}`, { path: '/.gatehouse/jwks.json' });
  const { payload } = await jwtVerify(
    seen.headers['x-gatehouse-assertion'] as string,
    createLocalJWKSet(JSON.parse(jwks.body.toString()) as JSONWebKeySet),
    { audience: HOST, issuer: 'gatehouse' },
  );
  assert.equal(payload.sub, 'alice');
  assert.deepEqual(payload.amr, ['session']);
  const entry = access.find((e) => e.path === '/dash/report' && e.status === 200)!;
  assert.equal(entry.identity, 'alice');
  assert.equal(entry.authMethod, 'session');
  assert.equal(entry.reason, 'policy-allow:engineers');

  // A reload keeps sessions valid: no new sign-in at the provider.
  const authorizations = idp.count('/auth');
  await writeFile(
    file,
    config(idp.issuer, '  - { name: more, match: { path: /more }, upstream: app, public: true }\n'),
  );
  assert.equal((await gw.reload()).ok, true);
  await alice.page.goto(`${origin}/dash/again`);
  assert.equal((await pageJson<Seen>(alice.page)).headers['x-gatehouse-user'], 'alice');
  assert.equal(idp.count('/auth'), authorizations);

  // bob signs in but may not use alice's route: a 403 page saying who and why, with sign-out, no loop.
  const bob = await newPage(browser);
  await bob.page.goto(`${origin}/dash`);
  await signIn(bob.page, 'bob');
  await bob.page.waitForURL(`${origin}/dash`, { timeout: WAIT });
  const before = idp.count('/auth');
  const denied = await bob.page.goto(`${origin}/dash`);
  assert.equal(denied?.status(), 403);
  assert.equal(bob.page.url(), `${origin}/dash`);
  const text = (await bob.page.textContent('body')) ?? '';
  assert.match(text, /Access denied/);
  assert.match(text, /bob/);
  assert.match(text, /no-allow-rule/);
  assert.equal(await bob.page.getAttribute('a.button', 'href'), '/.gatehouse/logout');
  assert.equal(idp.count('/auth'), before);
  assert.ok(access.some((e) => e.identity === 'bob' && e.status === 403 && e.reason === 'no-allow-rule'));

  // Public pages need no sign-in; the backend never saw bob on /dash.
  const open = await bob.page.goto(`${origin}/open`);
  assert.equal(open?.status(), 200);
  assert.ok(!backend.seen.some((s) => s.url.startsWith('/dash') && s.headers['x-gatehouse-user'] === 'bob'));
});

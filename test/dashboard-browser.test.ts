/**
 * The live dashboard in a real browser: Chromium (playwright-core) opens the dashboard of a real
 * gateway (`Gateway.start`) with a real upstream and a real OpenID provider, watches the numbers and a
 * denial appear as traffic flows, and revokes a signed-in user's session from the page, after which
 * that user is sent to sign in again; the admin audit hook receives the revocation.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import type { Page } from 'playwright-core';
import { type AdminAuditRecord, AdminServer, type LiveEvent } from '../src/admin/server.js';
import { liveStats } from '../src/observe/live-stats.js';
import { Gateway } from '../src/process/gateway.js';
import { launchBrowser, newPage, signIn, WAIT } from './helpers/browser.js';
import { memoryLogger, tempDir } from './helpers/gateway.js';
import { request as adminRequest, origin as originOf } from './helpers/observe.js';
import { startIdp } from './helpers/oidc.js';
import { request, startBackend } from './helpers/proxy.js';

const SECRET = 'dashboard-e2e-session-secret-0123456789abc';
const TOKEN = 'dashboard-e2e-admin-t0ken';
const HOST = 'app.gatehouse.test';

/** The text of the first element matching `selector`, once it exists. */
async function textOf(page: Page, selector: string): Promise<string> {
  await page.waitForSelector(selector, { timeout: WAIT });
  return (await page.textContent(selector)) ?? '';
}

/** Waits until the number shown by `selector` satisfies `ok`, and returns it. */
async function waitForNumber(page: Page, selector: string, ok: (n: number) => boolean, what: string) {
  const deadline = Date.now() + WAIT;
  let last = '';
  while (Date.now() < deadline) {
    last = (await page.textContent(selector).catch(() => null)) ?? '';
    const n = Number.parseFloat(last);
    if (Number.isFinite(n) && ok(n)) return n;
    await page.waitForTimeout(200);
  }
  throw new Error(`${what}: ${selector} still shows "${last}"`);
}

test('the dashboard follows live traffic and a denial, and signs a user out from the page', {
  timeout: 180_000,
}, async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const backend = await startBackend(t, 'app');
  const config = (issuer: string) => `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
admin: { bind: 127.0.0.1:0, token: env:ADMIN_TOKEN }
upstreams: { app: { servers: [{ url: "${backend.url}" }] } }
identity:
  session: { secrets: [env:SESSION_SECRET] }
  providers:
    - { name: corp, type: oidc, issuer: "${issuer}", clientId: gatehouse, clientSecret: file:client-secret,
        scopes: [openid, email, profile, groups] }
policies:
  data-eng: { allow: [{ name: engineers, groups: [data-eng] }] }
quotas:
  dash-daily: { key: identity, limit: 100, window: 1d, routes: [dash] }
routes:
  - { name: dash, match: { path: /dash }, upstream: app, policy: data-eng }
  - { name: open, match: { path: /open }, upstream: app, public: true }
`;
  d.write('client-secret', 'not-yet');
  const file = d.write('gatehouse.yaml', config('http://127.0.0.1:9'));
  const { logger } = memoryLogger();
  const gw = await Gateway.start({
    configFile: file,
    logger,
    watch: false,
    env: { SESSION_SECRET: SECRET, ADMIN_TOKEN: TOKEN },
    accessLog: () => {},
  });
  t.after(() => gw.shutdown());
  const port = gw.address('plain')!.port;
  const site = `http://${HOST}:${port}`;
  const idp = await startIdp(t, { redirectUris: [`${site}/.gatehouse/callback`] });
  await writeFile(d.file('client-secret'), idp.clientSecret);
  await writeFile(file, config(idp.issuer));
  assert.equal((await gw.reload()).ok, true);

  // The gateway's own admin listener streams what its data plane observes.
  const ownAdmin = originOf(gw.adminAddress()!);
  // The admin server the page uses: the gateway's runtime, the process's live figures, and an audit
  // hook (the gateway's own listener has none wired yet).
  const audits: AdminAuditRecord[] = [];
  const admin = new AdminServer({
    getRuntime: () => gw.runtime,
    logger,
    reload: () => gw.reload(),
    token: TOKEN,
    live: () => liveStats.snapshot(),
    audit: (r) => audits.push(r),
  });
  const dashboard = originOf(await admin.listen('127.0.0.1:0'));
  t.after(() => admin.close());

  const browser = await launchBrowser(t);
  const operator = await newPage(browser);
  const problems: string[] = [];
  // Script errors and CSP refusals (the 401s of the first load, before the token is entered, are not).
  operator.page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to|Uncaught/i.test(m.text()))
      problems.push(m.text());
  });
  operator.page.on('pageerror', (err) => problems.push(err.message));
  await operator.page.goto(`${dashboard}/`);
  await operator.page.fill('#token', TOKEN);
  await operator.page.press('#token', 'Enter');
  await operator.page.waitForSelector('#conn.ok', { timeout: WAIT });
  assert.equal(await operator.page.textContent('#conn'), 'live');
  // Marks this page load: the numbers must change without the page being loaded again.
  await operator.page.evaluate('window.marker = 42');

  // alice (data-eng) and bob (analysts) sign in; bob is refused on alice's route.
  const alice = await newPage(browser);
  await alice.page.goto(`${site}/dash`);
  await signIn(alice.page, 'alice');
  await alice.page.waitForURL(`${site}/dash`, { timeout: WAIT });
  const bob = await newPage(browser);
  await bob.page.goto(`${site}/dash`);
  await signIn(bob.page, 'bob');
  await bob.page.waitForURL(`${site}/dash`, { timeout: WAIT });
  assert.equal((await bob.page.goto(`${site}/dash`))?.status(), 403);

  for (let i = 0; i < 20; i++) {
    const res = await request(`http://127.0.0.1:${port}`, { path: '/open', headers: { host: HOST } });
    assert.equal(res.status, 200);
  }
  const first = await waitForNumber(
    operator.page,
    '#routes tr[data-route="open"] td.total',
    (n) => n >= 20,
    'the open route counts its requests',
  );
  // The denial stands out: a refused reason, with the refusal count in the totals.
  await operator.page.waitForSelector('#reasons tr[data-reason="no-allow-rule"] td.refused', {
    timeout: WAIT,
  });
  assert.match(await textOf(operator.page, '#reasons tr[data-reason="no-allow-rule"]'), /refused/);
  await waitForNumber(operator.page, '#t-refused', (n) => n >= 1, 'refusals are counted');
  assert.match((await operator.page.getAttribute('#t-refused', 'class')) ?? '', /refused/);
  assert.ok(
    (await operator.page.locator('#decisions-chart svg rect.refused-bar').count()) >= 1,
    'the chart draws the refusal',
  );
  await operator.page.waitForSelector('#identities tr[data-identity="alice"]', { timeout: WAIT });
  // The busiest identities come with their quota usage, read from the state store.
  await operator.page
    .locator('#identities tr[data-identity="alice"]', { hasText: /dash-daily \d+\/100/ })
    .waitFor({ timeout: WAIT });
  await operator.page.waitForSelector('#identities tr[data-identity="bob"] td.refused', { timeout: WAIT });
  assert.ok((await operator.page.locator('#routes tr[data-route="open"] svg.spark polyline').count()) >= 1);
  assert.match(await textOf(operator.page, `#servers tr[data-server="${backend.url}"]`), /up/);

  // More traffic, and an anonymous API client refused: the page moves by itself.
  for (let i = 0; i < 15; i++) {
    await request(`http://127.0.0.1:${port}`, { path: '/open', headers: { host: HOST } });
    const anon = await request(`http://127.0.0.1:${port}`, {
      path: '/dash',
      headers: { host: HOST, accept: 'application/json' },
    });
    assert.equal(anon.status, 401);
  }
  await waitForNumber(
    operator.page,
    '#routes tr[data-route="open"] td.total',
    (n) => n >= first + 15,
    'the count follows new traffic',
  );
  await operator.page.waitForSelector('#reasons tr[data-reason="user-unauthenticated"] td.refused', {
    timeout: WAIT,
  });
  assert.equal(await operator.page.evaluate('window.marker'), 42);

  // The same figures reach the gateway's own admin listener (its access-log path feeds them).
  const own = await adminRequest(`${ownAdmin}/api/v1/live/snapshot`, {
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  const ownEvent = own.json() as LiveEvent;
  assert.ok((ownEvent.traffic.routes.find((r) => r.route === 'open')?.total ?? 0) >= 35);

  const sealed = /^[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}$/;
  const aliceCookie = (await alice.context.cookies(site)).find((c) => sealed.test(c.value));
  assert.ok(aliceCookie, 'alice holds a session cookie');
  const asAlice = () =>
    request(`http://127.0.0.1:${port}`, {
      path: '/dash',
      headers: { host: HOST, accept: 'application/json', cookie: `${aliceCookie.name}=${aliceCookie.value}` },
    });
  assert.equal((await asAlice()).status, 200);

  // Sessions: both listed; alice's is revoked from the page with the keyboard, after a confirmation.
  await operator.page.click('#refresh-sessions');
  await operator.page.waitForSelector('#sessions tr[data-subject="alice"]', { timeout: WAIT });
  await operator.page.waitForSelector('#sessions tr[data-subject="bob"]', { timeout: WAIT });
  await operator.page.focus('#sessions tr[data-subject="alice"] button.revoke');
  await operator.page.keyboard.press('Enter');
  // Escape backs out without revoking.
  await operator.page.waitForSelector('#sessions tr[data-subject="alice"] button.confirm-revoke:focus');
  await operator.page.keyboard.press('Escape');
  await operator.page.waitForSelector('#sessions tr[data-subject="alice"] button.revoke:focus');
  assert.equal(
    audits.filter((a) => a.code === 'admin.session-revoked').length,
    0,
    'nothing revoked before confirming',
  );
  await operator.page.keyboard.press('Enter');
  await operator.page.waitForSelector('#sessions tr[data-subject="alice"] button.confirm-revoke:focus');
  await operator.page.keyboard.press('Enter');
  await operator.page.locator('#notice', { hasText: 'revoked' }).waitFor({ timeout: WAIT });
  await operator.page.waitForSelector('#sessions tr[data-subject="alice"]', {
    state: 'detached',
    timeout: WAIT,
  });
  assert.equal(await operator.page.locator('#sessions tr[data-subject="bob"]').count(), 1);

  // alice's session no longer opens anything, and her browser is sent to sign in again (the provider,
  // which still knows her, sends her straight back with a new session); bob is still signed in.
  const refused = await asAlice();
  assert.equal(refused.status, 401);
  const signIns = idp.count('/auth');
  await alice.page.goto(`${site}/dash`);
  assert.equal(idp.count('/auth'), signIns + 1, 'alice went through sign-in again');
  await alice.page.waitForURL(`${site}/dash`, { timeout: WAIT });
  assert.equal((await bob.page.goto(`${site}/dash`))?.status(), 403);
  assert.equal(idp.count('/auth'), signIns + 1, 'bob did not');

  const revoked = audits.filter((a) => a.code === 'admin.session-revoked');
  assert.equal(revoked.length, 1);
  assert.deepEqual(
    [revoked[0]!.event, revoked[0]!.action, revoked[0]!.who, revoked[0]!.subject, revoked[0]!.client],
    ['admin', 'session-revoke', 'admin-token', 'alice', '127.0.0.1'],
  );
  assert.deepEqual(problems, [], 'no script or CSP errors in the page');
});

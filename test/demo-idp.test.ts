/**
 * The demo's development OpenID provider against the gateway's own identity modules: discovery, the
 * sign-in form in a real browser through the LoginService (wrong password refused, alice signed in with
 * her groups), and client-credentials JWTs accepted by the BearerAuthenticator.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type DemoIdp, startDemoIdp } from '../src/demo/idp.js';
import { BearerAuthenticator } from '../src/identity/bearer.js';
import { LoginService } from '../src/identity/login.js';
import { MemoryStore } from '../src/state/memory.js';
import { launchBrowser, newPage, pageJson, WAIT } from './helpers/browser.js';
import { startLoginApp } from './helpers/oidc.js';
import { memoryLogger } from './helpers/proxy.js';

const PASSWORDS = { alice: 'alice-demo-password', bob: 'bob-demo-password' };

async function idpFor(t: { after(fn: () => unknown): void }): Promise<DemoIdp> {
  const idp = await startDemoIdp({ port: 0, passwords: PASSWORDS });
  t.after(() => idp.close());
  return idp;
}

test('the demo provider serves its discovery document on loopback', async (t) => {
  const idp = await idpFor(t);
  assert.match(idp.issuer, /^http:\/\/127\.0\.0\.1:\d+$/);
  const res = await fetch(`${idp.issuer}/.well-known/openid-configuration`, {
    signal: AbortSignal.timeout(10_000),
  });
  assert.equal(res.status, 200);
  const doc = (await res.json()) as Record<string, unknown>;
  assert.equal(doc.issuer, idp.issuer);
  assert.equal(doc.token_endpoint, idp.agentClient.tokenEndpoint);
  assert.ok((doc.code_challenge_methods_supported as string[]).includes('S256'));
  assert.ok((doc.grant_types_supported as string[]).includes('client_credentials'));
  assert.ok((doc.scopes_supported as string[]).includes('groups'));
  assert.equal(typeof doc.end_session_endpoint, 'string');
  assert.deepEqual(
    idp.users.map((u) => [u.id, u.groups, u.password]),
    [
      ['alice', ['data-eng'], PASSWORDS.alice],
      ['bob', ['analysts'], PASSWORDS.bob],
    ],
  );
  const generated = await startDemoIdp({ port: 0 });
  t.after(() => generated.close());
  assert.match(generated.users[0]?.password ?? '', /^[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}$/);
  assert.notEqual(generated.users[0]?.password, generated.users[1]?.password);
});

test('client-credentials tokens of the demo agent are accepted as bearer JWTs', async (t) => {
  const idp = await idpFor(t);
  const bearer = new BearerAuthenticator([
    {
      issuer: idp.issuer,
      audiences: [idp.agentClient.audience],
      algorithms: ['ES256'],
      groupsClaim: 'groups',
      clockTolerance: 30_000,
    },
  ]);
  const token = await idp.agentToken();
  const r = await bearer.authenticate(token);
  assert.equal(r.kind, 'ok', JSON.stringify(r));
  assert.ok(r.kind === 'ok');
  assert.equal(r.identity.subject, idp.agentClient.clientId);
  assert.deepEqual(r.identity.groups, ['agents']);
  assert.equal(r.identity.authMethod, 'bearer');

  // A wrong client secret gets no token at all.
  const res = await fetch(idp.agentClient.tokenEndpoint, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${idp.agentClient.clientId}:wrong`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: 'grant_type=client_credentials',
    signal: AbortSignal.timeout(10_000),
  });
  assert.equal(res.status, 401);
  assert.equal(((await res.json()) as { error: string }).error, 'invalid_client');
});

test('a person signs in through the demo form: wrong password refused, then alice with her groups', {
  timeout: 90_000,
}, async (t) => {
  const idp = await idpFor(t);
  const app = await startLoginApp(t);
  const origin = app.origin();
  idp.allowGateway(origin);
  const { logger } = memoryLogger();
  const store = new MemoryStore({ sweepInterval: 0 });
  t.after(() => store.close());
  app.service = new LoginService({
    store,
    logger,
    session: {
      secrets: ['a-demo-session-secret-of-more-than-32-chars'],
      maxAge: 3_600_000,
      idleTimeout: 3_600_000,
      cookie: '_gatehouse',
    },
    providers: [
      {
        name: 'demo',
        issuer: idp.issuer,
        clientId: idp.gatewayClient.clientId,
        clientSecret: idp.gatewayClient.clientSecret,
        scopes: ['openid', 'email', 'profile', 'groups'],
        groupsClaim: 'groups',
      },
    ],
    isServedHost: (host, port) => host === 'app.gatehouse.test' && port === app.port,
  });

  const browser = await launchBrowser(t);
  const { page } = await newPage(browser);
  await page.goto(`${origin}/echo/hello`);
  assert.ok(page.url().startsWith(`${idp.issuer}/interaction/`), page.url());
  assert.match((await page.textContent('main')) ?? '', /alice.*bob/s);

  await page.fill('input[name="login"]', 'alice');
  await page.fill('input[name="password"]', 'not-her-password');
  await Promise.all([page.waitForNavigation({ timeout: WAIT }), page.click('button[type="submit"]')]);
  assert.match((await page.textContent('[role="alert"]')) ?? '', /wrong password/);
  assert.ok(page.url().startsWith(`${idp.issuer}/interaction/`));

  await page.fill('input[name="password"]', PASSWORDS.alice);
  await Promise.all([
    page.waitForURL(`${origin}/echo/hello`, { timeout: WAIT }),
    page.click('button[type="submit"]'),
  ]);
  const body = await pageJson<{
    identity: { subject: string; email: string; groups: string[]; source: string };
  }>(page);
  assert.equal(body.identity.subject, 'alice');
  assert.equal(body.identity.email, 'alice@example.com');
  assert.deepEqual(body.identity.groups, ['data-eng']);
  assert.equal(body.identity.source, 'demo');
});

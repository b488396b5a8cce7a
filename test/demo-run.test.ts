/**
 * The demo end to end: its development OpenID provider, the sample backends and the gateway with the
 * bundled configuration. Machines call with the API key made at start and a client-credentials JWT;
 * people sign in with a real browser (alice is allowed on the echo, bob gets the 403 page).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { createLocalJWKSet, type JSONWebKeySet, jwtVerify } from 'jose';
import { request as undiciRequest } from 'undici';
import type { EchoReply } from '../src/demo/backends.js';
import { type Demo, demoInstructions, runtimeNote, startDemo } from '../src/demo/run.js';
import type { AccessEntry } from '../src/observe/log.js';
import { createLogger } from '../src/observe/log.js';
import { launchBrowser, newPage, WAIT } from './helpers/browser.js';
import { ROOT } from './helpers/gateway.js';
import { LineCollector, request } from './helpers/observe.js';

const PASSWORDS = { alice: 'alice-password-for-the-test', bob: 'bob-password-for-the-test' };

async function demoFor(t: { after(fn: () => unknown): void }, access: AccessEntry[] = []): Promise<Demo> {
  const demo = await startDemo({
    port: 0,
    adminPort: 0,
    idpPort: 0,
    passwords: PASSWORDS,
    jobIntervalMs: 50,
    jobDurationMs: 250,
    logger: createLogger('warn', new LineCollector()),
    accessLog: (e) => access.push(e),
  });
  t.after(() => demo.close());
  return demo;
}

async function verifyAssertion(demo: Demo, token: string | string[] | undefined) {
  assert.equal(typeof token, 'string', 'the backend received X-Gatehouse-Assertion');
  const jwks = await request(`${demo.url}/.gatehouse/jwks.json`);
  assert.equal(jwks.status, 200);
  assert.match(jwks.headers.get('content-type') ?? '', /^application\/jwk-set\+json/);
  const { payload } = await jwtVerify(token as string, createLocalJWKSet(jwks.json() as JSONWebKeySet), {
    issuer: 'gatehouse',
    audience: '127.0.0.1',
    algorithms: ['ES256'],
  });
  return payload;
}

test('the demo: public status, its identity provider, and machines with an API key or a bearer JWT', {
  timeout: 60_000,
}, async (t) => {
  const access: AccessEntry[] = [];
  const demo = await demoFor(t, access);

  // The development provider answers discovery on loopback, with the issuer the gateway trusts.
  const discovery = await request(`${demo.idp.issuer}/.well-known/openid-configuration`);
  assert.equal(discovery.status, 200);
  assert.equal((discovery.json() as { issuer: string }).issuer, demo.idp.issuer);

  // Public: round-robin over both echo servers, forwarded headers set, spoofed identity headers removed.
  const seen = new Set<string>();
  for (let i = 0; i < 2; i++) {
    const res = await request(`${demo.url}/status?n=${i}`, {
      headers: {
        'x-request-id': `demo-req-${i}`,
        'x-forwarded-for': '203.0.113.9',
        'x-gatehouse-user': 'mallory',
        X_Gatehouse_Groups: 'data-eng',
      },
    });
    assert.equal(res.status, 200, res.text);
    const reply = res.json() as EchoReply;
    seen.add(reply.server);
    assert.equal(reply.url, `/status?n=${i}`);
    assert.equal(reply.headers['x-request-id'], `demo-req-${i}`);
    assert.equal(reply.headers['x-forwarded-for'], '127.0.0.1');
    assert.equal(reply.headers['x-forwarded-host'], new URL(demo.url).host);
    assert.equal(reply.headers['x-gatehouse-user'], undefined);
    assert.equal(reply.headers.x_gatehouse_groups, undefined);
    assert.equal(reply.headers['x-gatehouse-assertion'], undefined, 'anonymous: no assertion');
  }
  assert.deepEqual([...seen].sort(), ['echo-1', 'echo-2'], 'round-robin reaches both echo servers');

  // Protected, no credential: a script gets 401, a browser is sent to sign in.
  const script = await request(`${demo.url}/echo/hello`, { headers: { accept: 'application/json' } });
  assert.equal(script.status, 401, script.text);
  assert.match(script.headers.get('www-authenticate') ?? '', /^Bearer realm="gatehouse"/);
  assert.equal((script.json() as { reason: string }).reason, 'user-unauthenticated');
  // undici's request, not fetch: fetch sends Sec-Fetch-Mode: cors, which is rightly not a navigation.
  const browser = await undiciRequest(`${demo.url}/echo/hello`, { headers: { accept: 'text/html' } });
  await browser.body.dump();
  assert.equal(browser.statusCode, 302);
  assert.equal(browser.headers.location, '/.gatehouse/login?rd=%2Fecho%2Fhello');

  // The API key made at start: allowed on the API (pinned to the canary), out of scope elsewhere.
  const withKey = await request(`${demo.url}/api/x`, {
    headers: { authorization: `Bearer ${demo.apiKey}`, 'x-canary': 'echo-canary' },
  });
  assert.equal(withKey.status, 200, withKey.text);
  const keyReply = withKey.json() as EchoReply;
  assert.equal(keyReply.server, 'echo-canary');
  assert.equal(keyReply.headers['x-gatehouse-user'], 'agent:demo-key');
  assert.equal(keyReply.headers['x-gatehouse-groups'], 'agents');
  assert.equal(keyReply.headers.authorization, undefined, 'the key is not passed upstream');
  const keyClaims = await verifyAssertion(demo, keyReply.headers['x-gatehouse-assertion']);
  assert.equal(keyClaims.sub, 'agent:demo-key');
  assert.deepEqual(keyClaims.groups, ['agents']);
  const keyElsewhere = await request(`${demo.url}/echo/hello`, {
    headers: { authorization: `Bearer ${demo.apiKey}`, accept: 'application/json' },
  });
  assert.equal(keyElsewhere.status, 403);
  assert.equal((keyElsewhere.json() as { reason: string }).reason, 'api-key-out-of-scope');

  // A client-credentials JWT from the demo provider: allowed to sync, and deny wins on DELETE.
  const token = await demo.idp.agentToken();
  const withToken = await request(`${demo.url}/api/v1/sync`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'x-canary': 'echo' },
    body: '{}',
  });
  assert.equal(withToken.status, 200, withToken.text);
  const tokenReply = withToken.json() as EchoReply;
  assert.equal(tokenReply.headers['x-gatehouse-user'], demo.idp.agentClient.clientId);
  assert.equal(tokenReply.headers.authorization, undefined, 'the token is not passed upstream');
  const tokenClaims = await verifyAssertion(demo, tokenReply.headers['x-gatehouse-assertion']);
  assert.deepEqual(tokenClaims.amr, ['bearer']);
  const deleting = await request(`${demo.url}/api/v1/jobs/1`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${token}`, accept: 'application/json' },
  });
  assert.equal(deleting.status, 403);
  assert.equal((deleting.json() as { reason: string }).reason, 'policy-deny:no-deletes');
  const forged = await request(`${demo.url}/api/v1/jobs`, {
    headers: { authorization: `Bearer ${token.slice(0, -4)}AAAA`, accept: 'application/json' },
  });
  assert.equal(forged.status, 401);
  assert.match(forged.headers.get('www-authenticate') ?? '', /error="invalid_token"/);

  assert.ok(demo.adminUrl);
  const status = await request(`${demo.adminUrl}/api/v1/status`);
  assert.equal(status.status, 200);
  assert.deepEqual(
    (status.json() as { routes: Array<{ name: string }> }).routes.map((r) => r.name),
    ['status', 'echo', 'api-canary', 'jobs'],
  );
  assert.ok(access.some((e) => e.route === 'status' && e.status === 200));
  assert.ok(access.some((e) => e.route === 'echo' && e.status === 401));
  assert.ok(access.some((e) => e.route === 'api-canary' && e.status === 200));

  // What `gatehouse demo` prints: both users with their passwords, and commands that work.
  const text = demoInstructions(demo);
  assert.match(text, new RegExp(`alice / ${PASSWORDS.alice} +groups data-eng: allowed`));
  assert.match(text, new RegExp(`bob / ${PASSWORDS.bob} +groups analysts: refused`));
  assert.ok(text.includes(`curl -H 'Authorization: Bearer ${demo.apiKey}'`));
  assert.ok(text.includes(`-d grant_type=client_credentials ${demo.idp.agentClient.tokenEndpoint}`));
});

test('the demo in a browser: alice sees the echo with her identity and a job stream, bob gets the 403 page', {
  timeout: 120_000,
}, async (t) => {
  const demo = await demoFor(t);
  const browser = await launchBrowser(t);

  const signIn = async (user: 'alice' | 'bob') => {
    const { page } = await newPage(browser);
    await page.goto(`${demo.url}/echo/hello`);
    assert.ok(page.url().startsWith(`${demo.idp.issuer}/interaction/`), page.url());
    await page.fill('input[name="login"]', user);
    await page.fill('input[name="password"]', PASSWORDS[user]);
    await Promise.all([
      page.waitForURL(`${demo.url}/echo/hello`, { timeout: WAIT }),
      page.click('button[type="submit"]'),
    ]);
    return page;
  };

  const alice = await signIn('alice');
  const reply = JSON.parse((await alice.textContent('body')) ?? '') as EchoReply;
  assert.equal(reply.url, '/echo/hello');
  assert.equal(reply.headers['x-gatehouse-user'], 'alice');
  assert.equal(reply.headers['x-gatehouse-email'], 'alice@example.com');
  assert.equal(reply.headers['x-gatehouse-groups'], 'data-eng');
  assert.equal(reply.headers['x-demo'], 'gatehouse-demo');
  assert.doesNotMatch(
    String(reply.headers.cookie ?? ''),
    /_gatehouse=/,
    'the session cookie stays at the gateway',
  );
  const claims = await verifyAssertion(demo, reply.headers['x-gatehouse-assertion']);
  assert.equal(claims.sub, 'alice');
  assert.deepEqual(claims.amr, ['session']);

  // The same session follows a sync job streamed as server-sent events.
  const stream = await alice.goto(`${demo.url}/jobs/sync`);
  assert.equal(stream?.status(), 200);
  assert.match(stream?.headers()['content-type'] ?? '', /^text\/event-stream/);
  assert.match((await alice.textContent('body')) ?? '', /event: done/);

  const bob = await signIn('bob');
  const body = (await bob.textContent('body')) ?? '';
  assert.match(body, /bob/);
  assert.match(body, /no allow rule matches/);
  assert.equal((await bob.locator('a[href*="/.gatehouse/logout"]').count()) > 0, true, 'a sign-out link');
  // Reloading stays on the page with 403: no redirect loop.
  const again = await bob.reload();
  assert.equal(again?.status(), 403);
  assert.equal(bob.url(), `${demo.url}/echo/hello`);
});

test('gatehouse demo names its Node.js runtime itself; the provider library prints no runtime warning', {
  timeout: 60_000,
}, async (t) => {
  assert.equal(runtimeNote('24.11.1'), 'Node.js 24.11.1');
  assert.equal(runtimeNote('22.12.0'), 'Node.js 22.12.0');
  assert.match(
    runtimeNote('20.20.2'),
    /^Node\.js 20\.20\.2 \(end of life since April 2026; Node\.js 22 or 24/,
  );

  const child = spawn(
    process.execPath,
    [
      '--import',
      import.meta.resolve('tsx'),
      path.join(ROOT, 'src/cli/run.ts'),
      'demo',
      '--port',
      '0',
      '--admin-port',
      '0',
      '--idp-port',
      '0',
    ],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], detached: true },
  );
  t.after(() => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // Already gone.
    }
  });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => {
    output += chunk.toString('utf8');
  });
  child.stderr.on('data', (chunk: Buffer) => {
    output += chunk.toString('utf8');
  });
  const deadline = Date.now() + 45_000;
  while (!output.includes('Press Ctrl+C to stop.') && child.exitCode === null && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(output.includes('Press Ctrl+C to stop.'), `the demo started:\n${output}`);
  assert.ok(!output.includes('Unsupported runtime'), `no library runtime warning:\n${output}`);
  assert.ok(
    output.includes(`  runtime    ${runtimeNote(process.versions.node)}`),
    `the demo names its runtime:\n${output}`,
  );
});

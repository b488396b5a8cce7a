/**
 * Gatehouse behind real HAProxy, each series of HAPROXY_SERIES (Debian bookworm's 2.6, and 3.x), running
 * exactly examples/haproxy/{haproxy.cfg,
 * gatehouse-spoe.conf,gatehouse.yaml} with only addresses, the issuer and secrets substituted: the
 * gateway's SPOE agent answers `gatehouse-check` through `answer()`, HAProxy enforces the variables.
 * Bearer JWTs, API keys and session cookies; 302/401/403 with reasons; identity headers and the
 * assertion reach the application, spoofed ones never do; path tricks decide as the built-in proxy
 * would; a reload changes decisions; the agent down refuses (fail closed); rate limits and quotas answer
 * 429 with Retry-After and the RateLimit headers, which allowed responses carry too.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { type TestContext, test } from 'node:test';
import { createLocalJWKSet, type JSONWebKeySet, jwtVerify } from 'jose';
import { generateApiKey } from '../src/identity/apikeys.js';
import type { AccessEntry } from '../src/observe/log.js';
import { registry } from '../src/observe/metrics.js';
import { Gateway } from '../src/process/gateway.js';
import { launchBrowser, newPage, pageJson, signIn, WAIT } from './helpers/browser.js';
import { ROOT, tempDir } from './helpers/gateway.js';
import { freePort, HAPROXY_SERIES, type HaproxyCommand, startHaproxy } from './helpers/haproxy.js';
import { makeKey, startIssuer } from './helpers/identity.js';
import { startIdp, type TestIdp } from './helpers/oidc.js';
import { memoryLogger, request, type Seen, seenOf, startBackend } from './helpers/proxy.js';

const EXAMPLES = path.join(ROOT, 'examples/haproxy');
const SESSION_SECRET = 'spoe-example-session-secret-0123456789abcdef';
const HOST = 'app.gatehouse.test';

interface Setup {
  front: string;
  gw: Gateway;
  backend: Awaited<ReturnType<typeof startBackend>>;
  access: AccessEntry[];
  token(claims: Record<string, unknown>): Promise<string>;
  apiKey: string;
  configFile: string;
  writeConfig(edit: (yaml: string) => string): void;
  haproxyOutput(): string;
}

async function setup(
  t: TestContext,
  haproxy: HaproxyCommand,
  oidc?: (front: number) => Promise<{ issuer: string; clientSecret: string }>,
): Promise<Setup> {
  t.diagnostic(`HAProxy ${haproxy.version}`);
  const idp = await startIssuer([await makeKey('k1', 'ES256')]);
  t.after(() => idp.close());
  const backend = await startBackend(t, 'app');
  const [front, signin, agent] = [await freePort(), await freePort(), await freePort()];
  const provider = await oidc?.(front);
  const d = tempDir();
  t.after(() => d.remove());
  const key = generateApiKey('etl-agent');
  const ports = (text: string): string =>
    text
      .replaceAll('127.0.0.1:8080', `127.0.0.1:${front}`)
      .replaceAll('127.0.0.1:8081', `127.0.0.1:${signin}`)
      .replaceAll('127.0.0.1:12345', `127.0.0.1:${agent}`)
      .replaceAll('127.0.0.1:9000', `127.0.0.1:${backend.port}`);
  const yaml = ports(readFileSync(path.join(EXAMPLES, 'gatehouse.yaml'), 'utf8'))
    .replace(/issuer: https:\/\/idp\.example\.com,/, `issuer: "${provider?.issuer ?? idp.issuer}",`)
    .replaceAll('https://idp.example.com', idp.issuer)
    .replace('sha256:<hex>', key.hashLine);
  const configFile = path.join(d.dir, 'gatehouse.yaml');
  const writeConfig = (edit: (y: string) => string): void => {
    d.write('gatehouse.yaml', edit(yaml));
  };
  writeConfig((y) => y);
  const spoeFile = d.write(
    'gatehouse-spoe.conf',
    readFileSync(path.join(EXAMPLES, 'gatehouse-spoe.conf'), 'utf8'),
  );
  const cfg = d.write(
    'haproxy.cfg',
    ports(readFileSync(path.join(EXAMPLES, 'haproxy.cfg'), 'utf8')).replace(
      '/etc/haproxy/gatehouse-spoe.conf',
      spoeFile,
    ),
  );
  const access: AccessEntry[] = [];
  const gw = await Gateway.start({
    configFile,
    logger: memoryLogger().logger,
    watch: false,
    accessLog: (e) => access.push(e),
    env: { GATEHOUSE_SESSION_SECRET: SESSION_SECRET, OIDC_CLIENT_SECRET: provider?.clientSecret ?? 'unused' },
  });
  t.after(() => gw.shutdown());
  assert.equal(gw.spoePort(), agent);
  const h = await startHaproxy(t, haproxy, cfg, front);
  return {
    front: `http://127.0.0.1:${front}`,
    gw,
    backend,
    access,
    token: (claims) => idp.sign({ aud: 'gatehouse-api', ...claims }),
    apiKey: key.key,
    configFile,
    writeConfig,
    haproxyOutput: () => h.output(),
  };
}

const JSON_ACCEPT = { accept: 'application/json' };

for (const series of HAPROXY_SERIES) {
  test(`${series.name} + SPOE agent from examples/haproxy: bearer, API key, session; identity headers and assertion; refusals with reasons`, async (t) => {
    const s = await setup(t, series.find());
    const jwks = JSON.parse(
      (await request(s.front, { path: '/.gatehouse/jwks.json' })).body.toString(),
    ) as JSONWebKeySet;
    assert.ok(jwks.keys.length > 0, 'the sign-in listener serves the assertion keys through HAProxy');

    // A bearer JWT of a data engineer: allowed, identity headers set, the token itself stays at the edge,
    // and the client's own identity headers never arrive.
    const jwt = await s.token({ sub: 'alice', email: 'alice@example.com', groups: ['data-eng'] });
    const ok = await request(s.front, {
      path: '/pipelines/run?x=1',
      headers: {
        authorization: `Bearer ${jwt}`,
        'x-gatehouse-user': 'mallory',
        'X-Gatehouse-Groups': 'admins',
        ...JSON_ACCEPT,
      },
    });
    assert.equal(ok.status, 200, ok.body.toString());
    const seen = seenOf(ok.body);
    assert.equal(seen.url, '/pipelines/run?x=1');
    assert.equal(seen.headers['x-gatehouse-user'], 'alice');
    assert.equal(seen.headers['x-gatehouse-email'], 'alice@example.com');
    assert.equal(seen.headers['x-gatehouse-groups'], 'data-eng');
    assert.equal(seen.headers.authorization, undefined, 'the gateway credential is not forwarded');
    const { payload } = await jwtVerify(
      seen.headers['x-gatehouse-assertion'] as string,
      createLocalJWKSet(jwks),
      {
        audience: '127.0.0.1',
      },
    );
    assert.equal(payload.sub, 'alice');
    const entry = s.access.find((e) => e.plane === 'spoe' && e.identity === 'alice');
    assert.ok(entry, 'the decision is in the access log');
    assert.equal(entry.route, 'pipelines');
    assert.equal(entry.status, 200);
    assert.match(entry.requestId, /.+/, "HAProxy's unique-id is the request id");

    // An API key (agents may GET): allowed; the key header is removed.
    const keyed = await request(s.front, { path: '/pipelines', headers: { 'x-api-key': s.apiKey } });
    assert.equal(keyed.status, 200);
    assert.equal(seenOf(keyed.body).headers['x-api-key'], undefined);
    assert.equal(seenOf(keyed.body).headers['x-gatehouse-user'], 'agent:etl');
    // ... but not POST: 403 with the reason, from HAProxy, the application never sees it.
    const before = s.backend.seen.length;
    const post = await request(s.front, {
      method: 'POST',
      path: '/pipelines',
      headers: { 'x-api-key': s.apiKey },
    });
    assert.equal(post.status, 403);
    assert.deepEqual(JSON.parse(post.body.toString()), { status: 403, reason: 'no-allow-rule' });
    // A deny rule names itself.
    const contractor = await s.token({ sub: 'carol', groups: ['data-eng', 'contractors'] });
    const denied = await request(s.front, {
      path: '/pipelines',
      headers: { authorization: `Bearer ${contractor}` },
    });
    assert.equal(denied.status, 403);
    assert.equal(JSON.parse(denied.body.toString()).reason, 'policy-deny:contractors');
    assert.equal(s.backend.seen.length, before, 'refused requests never reach the application');

    // No credential: a script gets 401 with WWW-Authenticate, a browser the sign-in redirect.
    const script = await request(s.front, { path: '/pipelines', headers: JSON_ACCEPT });
    assert.equal(script.status, 401);
    assert.equal(script.headers['www-authenticate'], 'Bearer realm="gatehouse"');
    const browser = await request(s.front, { path: '/pipelines/x?y=1', headers: { accept: 'text/html' } });
    assert.equal(browser.status, 302);
    assert.equal(browser.headers.location, '/.gatehouse/login?rd=%2Fpipelines%2Fx%3Fy%3D1');
    // An expired token: 401 invalid_token, never a redirect.
    const expired = await request(s.front, {
      path: '/pipelines',
      headers: { authorization: 'Bearer gh_nope', accept: 'text/html' },
    });
    assert.equal(expired.status, 401);
    assert.match(expired.headers['www-authenticate'] as string, /error="invalid_token"/);

    // Public route: no credential needed.
    assert.equal((await request(s.front, { path: '/status' })).status, 200);

    // A session cookie (a session created in the gateway's store, as sign-in does): allowed; the
    // gateway's cookie is removed and the application's own cookies stay.
    const sessions = s.gw.runtime.identity.login!.sessions;
    const { id } = await sessions.create(
      {
        provider: 'corp',
        subject: 'dora',
        user: 'dora',
        email: 'dora@example.com',
        groups: ['data-eng'],
        claims: {},
      },
      { accessToken: undefined, refreshToken: undefined, idToken: undefined, expiresAt: undefined },
    );
    const cookie = `theme=dark; _gatehouse=${sessions.seal(id)}`;
    const viaSession = await request(s.front, { path: '/pipelines', headers: { cookie } });
    assert.equal(viaSession.status, 200);
    const ss = seenOf(viaSession.body);
    assert.equal(ss.headers['x-gatehouse-user'], 'dora');
    assert.equal(ss.headers.cookie, 'theme=dark');
    // Both the status and /metrics show the agent at work.
    const st = s.gw.spoeStatus();
    assert.ok(st && st.connections.open >= 1 && st.notifies >= 5, JSON.stringify(st));
    const metrics = await registry.metrics();
    assert.match(
      metrics,
      /gatehouse_decisions_total\{plane="spoe",route="pipelines",status="403",reason="policy-deny:contractors"\} [1-9]/,
    );
    assert.match(metrics, /gatehouse_answer_duration_seconds_count\{plane="spoe"\} [1-9]/);
    assert.match(metrics, /gatehouse_spoe_connections [1-9]/);
    // A forged session cookie sends a browser to sign in again.
    const forged = await request(s.front, {
      path: '/pipelines',
      headers: { cookie: '_gatehouse=forged', accept: 'text/html' },
    });
    assert.equal(forged.status, 302);
  });

  test(`${series.name} + SPOE agent: path tricks, ambiguous credentials and bad targets decide as the built-in proxy does; a reload changes decisions; agent down fails closed`, async (t) => {
    const s = await setup(t, series.find());
    const eng = await s.token({ sub: 'alice', groups: ['data-eng'] });
    // Deny /admin to everyone in the policy, then try to reach it by the usual spellings.
    s.writeConfig((y) =>
      y.replace(
        'deny: [{ name: contractors, groups: [contractors] }]',
        "deny: [{ name: contractors, groups: [contractors] }, { name: no-admin, paths: ['/admin'] }]",
      ),
    );
    assert.deepEqual(await s.gw.reload(), { ok: true, generation: 2 });
    const before = s.backend.seen.length;
    for (const p of [
      '/admin',
      '/admin;x',
      '/x/..;/admin',
      '/%2e%2e/admin',
      '/./admin/',
      '/ADMIN/../admin',
      '//admin',
    ]) {
      const r = await request(s.front, { path: p, headers: { authorization: `Bearer ${eng}` } });
      assert.ok(r.status === 403 || r.status === 400, `${p}: ${r.status} ${r.body.toString()}`);
    }
    assert.equal(s.backend.seen.length, before, 'no spelling of /admin reached the application');
    assert.equal(
      (await request(s.front, { path: '/ok', headers: { authorization: `Bearer ${eng}` } })).status,
      200,
    );

    // Two Authorization headers: which one decided would be a guess, so neither does.
    const twice = await request(s.front, {
      path: '/ok',
      headers: ['Authorization', `Bearer ${eng}`, 'Authorization', 'Bearer other'],
    });
    assert.equal(twice.status, 400);
    assert.equal(JSON.parse(twice.body.toString()).reason, 'GH_AMBIGUOUS_HEADERS');

    // TRACE is refused with Allow (it would reflect the assertion).
    const trace = await request(s.front, {
      method: 'TRACE',
      path: '/ok',
      headers: { authorization: `Bearer ${eng}` },
    });
    assert.equal(trace.status, 405);
    assert.match(trace.headers.allow as string, /GET/);

    // The agent stops: HAProxy has no decision and refuses; nothing reaches the application.
    await s.gw.shutdown();
    const n = s.backend.seen.length;
    const down = await request(s.front, { path: '/ok', headers: { authorization: `Bearer ${eng}` } });
    assert.equal(down.status, 503);
    assert.equal(s.backend.seen.length, n);
  });

  test(`${series.name} + SPOE agent: over a rate limit or a quota, 429 with Retry-After, the RateLimit headers and the reason; allowed responses carry the RateLimit headers`, async (t) => {
    const s = await setup(t, series.find());
    // The example's limit, made small, and a daily quota for agents.
    s.writeConfig(
      (y) =>
        `${y.replace(
          'rateLimit: { key: identity, rate: 600/min, burst: 100 }',
          'rateLimit: { key: identity, rate: 1/min, burst: 2 }',
        )}\nquotas:\n  agent-runs: { limit: 1, window: 1d, routes: [pipelines], when: { groups: [agents] } }\n`,
    );
    assert.deepEqual(await s.gw.reload(), { ok: true, generation: 2 });
    const jwt = await s.token({ sub: 'alice', groups: ['data-eng'] });
    const bearer = { authorization: `Bearer ${jwt}`, ...JSON_ACCEPT };
    for (const left of [1, 0]) {
      const ok = await request(s.front, { path: '/pipelines/run', headers: bearer });
      assert.equal(ok.status, 200, ok.body.toString());
      assert.equal(ok.headers['ratelimit-policy'], '"pipelines";q=1;w=60');
      assert.match(String(ok.headers.ratelimit), new RegExp(`^"pipelines";r=${left};t=\\d+$`));
      assert.equal(ok.headers['retry-after'], undefined);
      assert.equal(seenOf(ok.body).headers['x-gatehouse-user'], 'alice');
    }
    const before = s.backend.seen.length;
    const limited = await request(s.front, { path: '/pipelines/run', headers: bearer });
    assert.equal(limited.status, 429);
    assert.deepEqual(JSON.parse(limited.body.toString()), { status: 429, reason: 'rate-limited:pipelines' });
    const retry = Number(limited.headers['retry-after']);
    assert.ok(retry >= 55 && retry <= 60, `Retry-After ${limited.headers['retry-after']}`);
    assert.equal(limited.headers['ratelimit-policy'], '"pipelines";q=1;w=60');
    assert.match(String(limited.headers.ratelimit), /^"pipelines";r=0;t=\d+$/);
    assert.equal(limited.headers['cache-control'], 'no-store');
    assert.equal(s.backend.seen.length, before, 'a limited request never reaches the application');
    const entry = s.access.filter((e) => e.plane === 'spoe' && e.identity === 'alice').at(-1);
    assert.equal(entry?.status, 429);
    assert.equal(entry?.limit, 'limited');
    assert.equal(entry?.reason, 'rate-limited:pipelines');
    assert.equal(entry?.error, 'GH_RATE_LIMITED');

    // The quota counts agents only: the API key's second run is refused until the day ends.
    const key = { 'x-api-key': s.apiKey };
    const first = await request(s.front, { path: '/pipelines', headers: key });
    assert.equal(first.status, 200);
    assert.equal(first.headers['ratelimit-policy'], '"pipelines";q=1;w=60, "agent-runs";q=1;w=86400');
    assert.match(String(first.headers.ratelimit), /^"pipelines";r=1;t=\d+, "agent-runs";r=0;t=\d+$/);
    const spent = await request(s.front, { path: '/pipelines', headers: key });
    assert.equal(spent.status, 429);
    assert.equal(JSON.parse(spent.body.toString()).reason, 'quota-exceeded:agent-runs');
    const wait = Number(spent.headers['retry-after']);
    assert.ok(wait >= 1 && wait <= 86_400, `Retry-After ${spent.headers['retry-after']}`);
    assert.match(String(spent.headers['ratelimit-policy']), /"agent-runs";q=1;w=86400/);
    assert.equal(s.access.at(-1)?.error, 'GH_QUOTA_EXCEEDED');

    // Refusals by policy spend nothing and say nothing about limits; a public route has none.
    const denied = await request(s.front, { method: 'POST', path: '/pipelines', headers: key });
    assert.equal(denied.status, 403);
    assert.equal(denied.headers.ratelimit, undefined);
    assert.equal(denied.headers['retry-after'], undefined);
    const open = await request(s.front, { path: '/status' });
    assert.equal(open.status, 200);
    assert.equal(open.headers['ratelimit-policy'], undefined);
  });

  test(`${series.name} + SPOE agent: a person signs in with a real browser through HAProxy and reaches the application as themself`, {
    timeout: 120_000,
  }, async (t) => {
    let idp: TestIdp | undefined;
    const s = await setup(t, series.find(), async (front) => {
      idp = await startIdp(t, { redirectUris: [`http://${HOST}:${front}/.gatehouse/callback`] });
      return { issuer: idp.issuer, clientSecret: idp.clientSecret };
    });
    const origin = `http://${HOST}:${new URL(s.front).port}`;
    const browser = await launchBrowser(t);
    const alice = await newPage(browser);
    await alice.context.addCookies([{ name: 'theme', value: 'dark', url: origin }]);
    await alice.page.goto(`${origin}/pipelines/report?x=1`);
    assert.ok(alice.page.url().startsWith(`${idp!.issuer}/`), alice.page.url());
    await signIn(alice.page, 'alice');
    await alice.page.waitForURL(`${origin}/pipelines/report?x=1`, { timeout: WAIT });
    const seen = await pageJson<Seen>(alice.page);
    assert.equal(seen.url, '/pipelines/report?x=1');
    assert.equal(seen.headers['x-gatehouse-user'], 'alice');
    assert.equal(seen.headers['x-gatehouse-groups'], 'data-eng');
    assert.equal(
      seen.headers.cookie,
      'theme=dark',
      "the session cookie stays at the edge; the application's own passes",
    );
    const entry = s.access.find(
      (e) => e.plane === 'spoe' && e.path === '/pipelines/report' && e.status === 200,
    );
    assert.equal(entry?.identity, 'alice');
    assert.equal(entry?.authMethod, 'session');
    // bob is not a data engineer: 403 with the reason, rendered by HAProxy.
    const bob = await newPage(browser);
    await bob.page.goto(`${origin}/pipelines`);
    await signIn(bob.page, 'bob');
    await bob.page.waitForURL(`${origin}/pipelines`, { timeout: WAIT });
    const denied = await bob.page.goto(`${origin}/pipelines`);
    assert.equal(denied?.status(), 403);
    assert.match((await bob.page.textContent('body')) ?? '', /no-allow-rule/);
  });
}

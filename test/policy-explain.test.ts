import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type Config, ConfigSchema } from '../src/config/schema.js';
import { explainRequest } from '../src/policy/explain.js';
import { TestInputError } from '../src/policy/offline.js';

const config: Config = ConfigSchema.parse({
  listeners: [{ name: 'l', bind: '127.0.0.1:0' }],
  upstreams: {
    app: { servers: [{ url: 'http://127.0.0.1:9001' }, { url: 'http://127.0.0.1:9002' }] },
    canary: { servers: [{ url: 'http://127.0.0.1:9003' }] },
  },
  identity: {
    session: { secrets: ['s'] },
    providers: [{ name: 'corp', type: 'oidc', issuer: 'https://idp.example.com', clientId: 'gh' }],
  },
  policies: {
    'data-eng': {
      allow: [{ groups: ['data-eng'] }, { email: ['ops@example.com'] }],
      deny: [{ sourceIp: ['203.0.113.0/24'] }],
    },
  },
  routes: [
    { name: 'api', match: { host: 'api.example.com', path: '/v1/' }, upstream: 'app', policy: 'data-eng' },
    {
      name: 'admin',
      match: { host: 'api.example.com', path: '/admin' },
      upstream: 'app',
      policy: { deny: [{ name: 'no-deletes', methods: ['DELETE'] }], allow: [{ authMethod: ['session'] }] },
    },
    { name: 'any', match: { host: 'any.example.com' }, upstream: 'app' },
    {
      name: 'web',
      match: { path: '/' },
      split: {
        targets: [
          { upstream: 'app', weight: 90 },
          { upstream: 'canary', weight: 10 },
        ],
      },
      public: true,
    },
  ],
});

const NOW = Date.UTC(2024, 0, 8, 12, 0);

test('explain: an allowed request names the route, upstream, identity, each rule and the deciding one', () => {
  const e = explainRequest(
    config,
    'post',
    'https://api.example.com/v1/x/../jobs?y=1',
    {
      email: 'alice@example.com',
      groups: ['data-eng'],
    },
    { now: NOW },
  );
  assert.deepEqual(e.lines, [
    'request: POST https://api.example.com/v1/x/../jobs?y=1',
    'path: /v1/jobs (normalized from /v1/x/../jobs)',
    'identity: alice@example.com (subject alice@example.com, groups [data-eng], authMethod session)',
    'route: api',
    'upstream: app (http://127.0.0.1:9001, http://127.0.0.1:9002)',
    'policy: policy "data-eng"',
    '  deny  data-eng.deny[0]: sourceIp: [203.0.113.0/24] -> no match (sourceIp)',
    '  allow data-eng.allow[0]: groups: [data-eng] -> match, decides',
    '  allow data-eng.allow[1]: email: [ops@example.com] -> no match (email)',
    'login providers: corp',
    'rule: data-eng.allow[0]',
    'reason: policy-allow:data-eng.allow[0]',
    'decision: allow (rule data-eng.allow[0]) for alice@example.com',
  ]);
  assert.ok('outcome' in e.decision && e.decision.outcome === 'allow');
});

test('explain: denied, forbidden without a rule, anonymous, and no-policy routes', () => {
  const denied = explainRequest(
    config,
    'GET',
    'https://api.example.com/v1/jobs',
    { groups: 'data-eng', user: 'al' },
    {
      sourceIp: '203.0.113.4',
      now: NOW,
    },
  );
  assert.ok(denied.lines.includes('identity: al (subject al, groups [data-eng], authMethod session)'));
  assert.ok(denied.lines.includes('source: 203.0.113.4'));
  assert.ok(denied.lines.includes('  deny  data-eng.deny[0]: sourceIp: [203.0.113.0/24] -> match, decides'));
  assert.deepEqual(denied.lines.slice(-3), [
    'rule: data-eng.deny[0]',
    'reason: policy-deny:data-eng.deny[0]',
    'decision: forbidden (403) for al: denied by rule data-eng.deny[0]',
  ]);

  const none = explainRequest(config, 'GET', 'https://api.example.com/v1/jobs', { email: 'bob@example.com' });
  assert.deepEqual(none.lines.slice(-2), [
    'reason: no-allow-rule',
    'decision: forbidden (403) for bob@example.com: no allow rule matches',
  ]);

  const anon = explainRequest(config, 'GET', 'https://api.example.com/v1/jobs', undefined);
  assert.ok(anon.lines.includes('identity: anonymous'));
  assert.ok(
    anon.lines.includes(
      '  allow data-eng.allow[0]: groups: [data-eng] -> no match (needs a signed-in identity)',
    ),
  );
  assert.equal(anon.lines.at(-1), 'decision: login (302): sign-in required, redirect to the login page');
  const api = explainRequest(config, 'GET', 'https://api.example.com/v1/jobs', undefined, {
    headers: { Accept: 'application/json' },
  });
  assert.equal(api.lines.at(-1), 'decision: unauthenticated (401): sign-in required');

  const inline = explainRequest(config, 'DELETE', 'https://api.example.com/admin/x', { user: 'root' });
  assert.ok(inline.lines.includes('policy: inline policy'));
  assert.ok(inline.lines.includes('  deny  no-deletes: methods: [DELETE] -> match, decides'));
  assert.ok(inline.lines.includes('  allow admin.allow[0]: authMethod: [session] -> match'));
  assert.equal(inline.lines.at(-1), 'decision: forbidden (403) for root: denied by rule no-deletes');

  const any = explainRequest(config, 'GET', 'https://any.example.com/', { email: 'bob@example.com' });
  assert.ok(any.lines.includes('policy: no policy (any signed-in identity is allowed)'));
  assert.deepEqual(any.lines.slice(-2), [
    'reason: authenticated',
    'decision: allow (signed in; the route has no policy) for bob@example.com',
  ]);
});

test('explain: public routes, no route, unsafe paths, bad identities', () => {
  const web = explainRequest(config, 'GET', 'http://other.example.com/index.html', undefined);
  assert.deepEqual(web.lines, [
    'request: GET http://other.example.com/index.html',
    'identity: anonymous',
    'route: web',
    'upstream: split between app (90%), canary (10%)',
    'reason: public-route',
    'decision: allow (public route)',
  ]);

  const lonely: Config = ConfigSchema.parse({
    listeners: [{ name: 'l', bind: '127.0.0.1:0' }],
    upstreams: { a: { servers: [{ url: 'http://127.0.0.1:9' }] } },
    routes: [{ name: 'only', match: { path: '/only' }, upstream: 'a' }],
  });
  const missing = explainRequest(lonely, 'GET', 'http://h/elsewhere', undefined);
  assert.deepEqual(missing.lines.slice(-2), ['route: none', 'decision: 404 (no route matches this request)']);
  assert.equal(missing.decision.status, 404);

  const bad = explainRequest(config, 'GET', 'http://x.example.com/a/%2e%2e/%2e%2e/etc', undefined);
  assert.deepEqual(bad.lines, [
    'request: GET http://x.example.com/a/%2e%2e/%2e%2e/etc',
    'decision: reject (400): path escapes the root with ".."',
    'reason: GH_BAD_PATH',
  ]);
  assert.equal(bad.decision.status, 400);

  assert.throws(
    () => explainRequest(config, 'GET', 'https://api.example.com/', { groups: [3] }),
    TestInputError,
  );
});

test('explain: the rate limit and quotas of a route, and what they answer after N earlier requests', () => {
  const c = ConfigSchema.parse({
    listeners: [{ name: 'l', bind: '127.0.0.1:0' }],
    upstreams: { app: { servers: [{ url: 'http://127.0.0.1:9' }] } },
    quotas: {
      monthly: {
        key: 'claim:org',
        limit: 1000,
        window: 'month',
        timeZone: 'Europe/Paris',
        cost: 'header:X-Rows',
      },
    },
    routes: [
      {
        name: 'api',
        match: { path: '/api/' },
        upstream: 'app',
        policy: { allow: [{ groups: ['agents'] }] },
        rateLimit: { rate: '600/min', burst: 100, delay: '2s', onStoreError: 'deny' },
      },
    ],
  });
  const as = { subject: 'bot', groups: ['agents'], org: 'acme' };
  const first = explainRequest(c, 'POST', 'https://x/api/sync', as).lines;
  assert.ok(
    first.includes('rate limit: 600/min per identity, burst 100, held up to 2s, 503 when the store is down'),
    first.join('\n'),
  );
  assert.ok(
    first.includes(
      'quota: monthly: 1000 per calendar month (Europe/Paris) per claim:org, cost from response header:X-Rows',
    ),
    first.join('\n'),
  );
  assert.ok(first.includes('limits: allowed'), first.join('\n'));
  const held = explainRequest(c, 'POST', 'https://x/api/sync', as, { after: 105 }).lines;
  assert.ok(held.includes('limits after 105 earlier requests: held 600 ms, then allowed'), held.join('\n'));
  const over = explainRequest(c, 'POST', 'https://x/api/sync', as, { after: 120 });
  assert.equal(over.decision.status, 429);
  assert.ok(
    over.lines.includes('limits after 120 earlier requests: limited (429, retry after 3 s)'),
    over.lines.join('\n'),
  );
  assert.ok(over.lines.includes('reason: rate-limited:api'));
  // A refused request is never counted: no limit line for it.
  const refused = explainRequest(
    c,
    'POST',
    'https://x/api/sync',
    { subject: 'x', groups: ['other'] },
    { after: 500 },
  );
  assert.equal(refused.decision.status, 403);
  assert.ok(!refused.lines.some((l) => l.startsWith('limits')));
});

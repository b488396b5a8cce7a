import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../src/config/load.js';
import { type Config, ConfigSchema } from '../src/config/schema.js';
import { PolicyConfigError } from '../src/policy/compile.js';
import { identityFromSpec, TestInputError } from '../src/policy/offline.js';
import { formatTestResult, runConfigTests } from '../src/policy/tests.js';

function config(extra: Record<string, unknown>): Config {
  return ConfigSchema.parse({
    listeners: [{ name: 'l', bind: '127.0.0.1:0' }],
    upstreams: { app: { servers: [{ url: 'http://127.0.0.1:9' }] } },
    ...extra,
  });
}

const MONDAY_NOON = Date.UTC(2024, 0, 8, 12, 0);

test('the tests of examples/design.yaml pass', async () => {
  const file = fileURLToPath(new URL('../examples/design.yaml', import.meta.url));
  const loaded = await loadConfig(file, {}, { checkSecrets: false });
  assert.ok(loaded.ok, loaded.ok ? '' : JSON.stringify(loaded.problems));
  const results = runConfigTests(loaded.config, MONDAY_NOON);
  assert.equal(results.length, 2);
  for (const r of results) assert.ok(r.ok, `${r.name}: ${r.detail}`);
  assert.deepEqual(
    results.map((r) => [r.name, r.expected, r.got.status, r.got.reason]),
    [
      ['data engineers can sync', 'allow', 200, 'policy-allow:data-eng.allow[0]'],
      ['anonymous browsers are sent to login', 'login', 302, 'user-unauthenticated'],
    ],
  );
});

const POLICY_CONFIG = {
  identity: {
    session: { secrets: ['s'] },
    providers: [{ name: 'corp', type: 'oidc', issuer: 'https://idp.example.com', clientId: 'gh' }],
  },
  policies: {
    eng: {
      allow: [
        { groups: ['eng'] },
        {
          name: 'office-hours-bots',
          authMethod: ['apiKey'],
          time: { days: ['mon'], from: '09:00', to: '17:00' },
        },
      ],
      deny: [{ name: 'no-admin', paths: ['/admin'] }],
    },
  },
  routes: [
    { name: 'app', match: { host: 'app.example.com' }, upstream: 'app', policy: 'eng' },
    { name: 'nologin', match: { host: 'nologin.example.com' }, upstream: 'app', providers: [] },
    { name: 'health', match: { host: 'app.example.com', path: '/health' }, upstream: 'app', public: true },
  ],
};

test('failing tests are reported by name with what was expected and what happened', () => {
  const eng = { email: 'alice@example.com', groups: ['eng'] };
  const results = runConfigTests(
    config({
      ...POLICY_CONFIG,
      tests: [
        { name: 'eng reads', as: eng, request: { url: 'https://app.example.com/x' }, expect: 'allow' },
        {
          name: 'sales reads (wrong)',
          as: { groups: ['sales'] },
          request: { url: 'https://app.example.com/x' },
          expect: 'allow',
        },
        {
          name: 'sales is denied',
          as: { groups: ['sales'] },
          request: { url: 'https://app.example.com/x' },
          expect: 'deny',
        },
        {
          name: 'status as number',
          as: { groups: ['sales'] },
          request: { url: 'https://app.example.com/x' },
          expect: 403,
        },
        { name: 'health is public', request: { url: 'https://app.example.com/health' }, expect: 200 },
        {
          name: 'anonymous json client',
          request: { url: 'https://app.example.com/x', headers: { Accept: 'application/json' } },
          expect: 401,
        },
        {
          name: 'json client counts as login',
          request: { url: 'https://app.example.com/x', headers: { accept: 'application/json' } },
          expect: 'login',
        },
        {
          name: 'json client is not redirected',
          request: { url: 'https://app.example.com/x', headers: { accept: 'application/json' } },
          expect: 302,
        },
        {
          name: 'no provider: 401 counts as login',
          request: { url: 'https://nologin.example.com/x' },
          expect: 'login',
        },
        {
          name: 'anonymous POST is asked to sign in',
          request: { method: 'POST', url: 'https://app.example.com/x' },
          expect: 'login',
        },
        {
          name: 'signed in is not login',
          as: eng,
          request: { url: 'https://app.example.com/x' },
          expect: 'login',
        },
        { name: 'no route', request: { url: 'https://other.example.com/' }, expect: 404 },
        { name: 'no route expected allow', request: { url: 'https://other.example.com/' }, expect: 'allow' },
        {
          name: 'bad authMethod',
          as: { authMethod: 'password' },
          request: { url: 'https://app.example.com/x' },
          expect: 'allow',
        },
        {
          name: 'bad source',
          request: { url: 'https://app.example.com/x', sourceIp: 'here' },
          expect: 'login',
        },
        {
          name: 'bot on monday noon',
          as: { subject: 'agent:etl', authMethod: 'apiKey' },
          request: { method: 'POST', url: 'https://app.example.com/jobs' },
          expect: 'allow',
        },
      ],
    }),
    MONDAY_NOON,
  );
  const byName = new Map(results.map((r) => [r.name, r]));
  const failed = results.filter((r) => !r.ok).map((r) => r.name);
  assert.deepEqual(failed, [
    'sales reads (wrong)',
    'json client is not redirected',
    'signed in is not login',
    'no route expected allow',
    'bad authMethod',
    'bad source',
  ]);
  assert.equal(
    byName.get('sales reads (wrong)')!.detail,
    'expected allow, got forbidden (403) for test-user: no allow rule matches [no-allow-rule]',
  );
  assert.equal(
    formatTestResult(byName.get('sales reads (wrong)')!),
    'FAIL sales reads (wrong): expected allow, got forbidden (403) for test-user: no allow rule matches [no-allow-rule]',
  );
  assert.equal(
    byName.get('eng reads')!.detail,
    'allow: allow (rule eng.allow[0]) for alice@example.com [policy-allow:eng.allow[0]]',
  );
  assert.match(formatTestResult(byName.get('eng reads')!), /^ok {3}eng reads: /);
  assert.equal(
    byName.get('no route expected allow')!.detail,
    'expected allow, got 404 (GH_NO_ROUTE): no route matches this request',
  );
  assert.deepEqual(byName.get('bad authMethod')!.got, { status: 0, reason: 'GH_TEST_INPUT' });
  assert.match(
    byName.get('bad authMethod')!.detail,
    /^invalid test: as\.authMethod: must be one of session, bearer, apiKey, mtls$/,
  );
  assert.match(byName.get('bad source')!.detail, /sourceIp: "here" is not an IP address/);
  assert.equal(byName.get('json client is not redirected')!.got.status, 401);
  assert.equal(byName.get('bot on monday noon')!.got.reason, 'policy-allow:office-hours-bots');
  assert.deepEqual(
    results.map((r) => r.index),
    results.map((_, i) => i),
  );
});

test('time rules are evaluated at the injected time', () => {
  const c = config({
    ...POLICY_CONFIG,
    tests: [
      {
        name: 'bot',
        as: { subject: 'agent:etl', authMethod: 'apiKey' },
        request: { url: 'https://app.example.com/jobs' },
        expect: 'allow',
      },
    ],
  });
  assert.equal(runConfigTests(c, MONDAY_NOON)[0]!.ok, true);
  const r = runConfigTests(c, Date.UTC(2024, 0, 8, 17, 0))[0]!;
  assert.equal(r.ok, false);
  assert.equal(r.got.reason, 'no-allow-rule');
});

test('path normalization: a deny on /admin also covers its spellings; unsafe paths are 400', () => {
  const eng = { groups: ['eng'] };
  const at = (path: string, expect: string | number) => ({
    name: `${path} ${expect}`,
    as: eng,
    request: { url: `https://app.example.com${path}` },
    expect,
  });
  const results = runConfigTests(
    config({
      ...POLICY_CONFIG,
      tests: [
        at('/admin', 'deny'),
        at('/admin/users', 'deny'),
        at('/x/../admin', 'deny'),
        at('//admin', 'deny'),
        at('/%61dmin', 'deny'),
        at('/./admin/', 'deny'),
        at('/x/%2e%2e/admin', 'deny'),
        at('/admin?x=1', 'deny'),
        at('/admin%2f..', 400),
        at('/admin%2F..', 400),
        at('/a/../../admin', 400),
        at('/admin%5c', 400),
        at('/administrator', 'allow'),
        at('/x/admin', 'allow'),
      ],
    }),
    MONDAY_NOON,
  );
  for (const r of results) assert.ok(r.ok, `${r.name}: ${r.detail}`);
  const denied = results.filter((r) => r.expected === 'deny');
  for (const r of denied) assert.equal(r.got.reason, 'policy-deny:no-admin', r.name);
  assert.equal(results.find((r) => r.name === '/admin%2f.. 400')!.got.reason, 'GH_BAD_PATH');
});

test('invalid policies are a configuration problem, not a test failure', () => {
  const c = config({
    policies: { p: { allow: [{ time: { timezone: 'Nowhere/City' } }] } },
    routes: [{ name: 'r', match: { path: '/' }, upstream: 'app', policy: 'p' }],
    tests: [{ name: 't', request: { url: 'https://h/' }, expect: 'login' }],
  });
  assert.throws(() => runConfigTests(c), PolicyConfigError);
  assert.deepEqual(runConfigTests(config({})), []);
});

test('identityFromSpec builds test identities in the explain --as shape', () => {
  const a = identityFromSpec({
    email: 'alice@example.com',
    groups: 'eng',
    team: 'data',
    claims: { level: 3 },
  });
  assert.equal(a.subject, 'alice@example.com');
  assert.equal(a.user, 'alice@example.com');
  assert.deepEqual(a.groups, ['eng']);
  assert.equal(a.authMethod, 'session');
  assert.equal(a.source, 'test');
  assert.deepEqual(a.claims, {
    sub: 'alice@example.com',
    groups: ['eng'],
    email: 'alice@example.com',
    team: 'data',
    level: 3,
  });
  const b = identityFromSpec({ user: 'bob', subject: 'u-2', authMethod: 'bearer' });
  assert.deepEqual([b.subject, b.user, b.email, b.authMethod], ['u-2', 'bob', undefined, 'bearer']);
  assert.equal(identityFromSpec({}).subject, 'test-user');
  for (const bad of [{ email: 3 }, { groups: [1] }, { claims: [] }, { authMethod: 'x' }, { user: '' }]) {
    assert.throws(() => identityFromSpec(bad), TestInputError, JSON.stringify(bad));
  }
});

test('rate limits and quotas in config tests: `expect: 429` after N requests of the same caller, per key, offline', () => {
  const c = config({
    policies: { any: { allow: [{ groups: ['agents', 'eng'] }] } },
    quotas: {
      'agents-daily': { limit: 10, window: '1d', routes: ['jobs'], when: { groups: ['agents'] } },
      heavy: { limit: 3, window: '1h', routes: ['big'], cost: 5 },
    },
    routes: [
      {
        name: 'api',
        match: { path: '/api/' },
        upstream: 'app',
        policy: 'any',
        rateLimit: { rate: '10/s', burst: 5, delay: '300ms' },
      },
      { name: 'jobs', match: { path: '/jobs/' }, upstream: 'app', policy: 'any' },
      { name: 'big', match: { path: '/big/' }, upstream: 'app', public: true },
      {
        name: 'open',
        match: { path: '/open/' },
        upstream: 'app',
        public: true,
        rateLimit: { rate: '1/min', key: 'ip' },
      },
    ],
    tests: [
      {
        name: 'burst',
        as: { subject: 'a', groups: ['agents'] },
        request: { url: 'http://x/api/r' },
        expect: 'allow',
        after: 4,
      },
      {
        name: 'held',
        as: { subject: 'a', groups: ['agents'] },
        request: { url: 'http://x/api/r' },
        expect: 'allow',
        after: 7,
      },
      {
        name: 'over',
        as: { subject: 'a', groups: ['agents'] },
        request: { url: 'http://x/api/r' },
        expect: 429,
        after: 8,
      },
      {
        name: 'quota',
        as: { subject: 'a', groups: ['agents'] },
        request: { url: 'http://x/jobs/r' },
        expect: 429,
        after: 10,
      },
      {
        name: 'quota left',
        as: { subject: 'a', groups: ['agents'] },
        request: { url: 'http://x/jobs/r' },
        expect: 'allow',
        after: 9,
      },
      {
        name: 'not counted',
        as: { subject: 'e', groups: ['eng'] },
        request: { url: 'http://x/jobs/r' },
        expect: 'allow',
        after: 50,
      },
      { name: 'cost too high', request: { url: 'http://x/big/r', headers: { accept: '*/*' } }, expect: 429 },
      {
        name: 'anonymous by address',
        request: { url: 'http://x/open/', sourceIp: '2001:db8::1' },
        expect: 429,
        after: 1,
      },
      {
        name: 'wrong expectation',
        as: { subject: 'a', groups: ['agents'] },
        request: { url: 'http://x/api/r' },
        expect: 'allow',
        after: 20,
      },
    ],
  });
  const results = runConfigTests(c, MONDAY_NOON);
  assert.deepEqual(
    results.map((r) => [r.name, r.ok, r.got.status, r.got.reason]),
    [
      ['burst', true, 200, 'policy-allow:any.allow[0]'],
      ['held', true, 200, 'policy-allow:any.allow[0]'],
      ['over', true, 429, 'rate-limited:api'],
      ['quota', true, 429, 'quota-exceeded:agents-daily'],
      ['quota left', true, 200, 'policy-allow:any.allow[0]'],
      ['not counted', true, 200, 'policy-allow:any.allow[0]'],
      ['cost too high', true, 429, 'quota-exceeded:heavy'],
      ['anonymous by address', true, 429, 'rate-limited:open'],
      ['wrong expectation', false, 429, 'rate-limited:api'],
    ],
  );
  assert.equal(
    formatTestResult(results[8]!),
    'FAIL wrong expectation: expected allow after 20, got limited (429) for a: over the rate limit of route api [rate-limited:api]',
  );
});

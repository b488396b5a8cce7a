import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type Config, ConfigSchema } from '../src/config/schema.js';
import {
  type Decision,
  decideAccess,
  describeDecision,
  describeReason,
  isBrowserNavigation,
  loginProviders,
  statusForReason,
} from '../src/core/decide.js';
import { compileRoutes } from '../src/core/routes.js';
import type { CompiledRoute } from '../src/core/types.js';
import { PolicyUnavailableError } from '../src/errors.js';
import type { AuthResult, Identity, ReasonCode } from '../src/identity/types.js';
import { compilePolicies } from '../src/policy/compile.js';
import type { PolicyRequest, PolicySet } from '../src/policy/types.js';

function config(extra: Record<string, unknown> = {}): Config {
  return ConfigSchema.parse({
    listeners: [{ name: 'l', bind: '127.0.0.1:0' }],
    upstreams: { app: { servers: [{ url: 'http://127.0.0.1:9' }] } },
    identity: {
      session: { secrets: ['s'] },
      providers: [
        { name: 'corp', type: 'oidc', issuer: 'https://idp.example.com', clientId: 'gh' },
        { name: 'partners', type: 'oidc', issuer: 'https://partners.example.com', clientId: 'gh' },
      ],
    },
    policies: {
      eng: {
        allow: [{ groups: ['eng'] }, { paths: ['/api/open/'] }],
        deny: [{ sourceIp: ['203.0.113.0/24'] }, { name: 'no-interns', groups: ['interns'] }],
      },
    },
    routes: [
      { name: 'public', match: { path: '/status' }, upstream: 'app', public: true },
      { name: 'api', match: { path: '/api/' }, upstream: 'app', policy: 'eng', providers: ['partners'] },
      { name: 'open', match: { path: '/' }, upstream: 'app' },
    ],
    ...extra,
  });
}

const cfg = config();
const table = compileRoutes(cfg);
const policies = compilePolicies(cfg);

function route(name: string): CompiledRoute {
  const r = table.routes.find((x) => x.name === name);
  assert.ok(r, name);
  return r;
}

const alice: Identity = {
  subject: 'alice',
  user: 'alice',
  email: 'alice@example.com',
  groups: ['eng'],
  claims: {},
  authMethod: 'session',
  source: 'corp',
  expiresAt: undefined,
};
const bob: Identity = { ...alice, subject: 'bob', user: 'bob', email: 'bob@example.com', groups: ['sales'] };
const intern: Identity = {
  ...alice,
  subject: 'ivy',
  user: 'ivy',
  email: undefined,
  groups: ['eng', 'interns'],
};

function request(fields: Partial<PolicyRequest> = {}): PolicyRequest {
  return { method: 'GET', host: 'h', path: '/api/x', clientIp: '192.0.2.1', now: 0, ...fields };
}

const NONE: AuthResult = { kind: 'none' };
const ok = (identity: Identity): AuthResult => ({ kind: 'ok', identity });
const invalid = (reason: ReasonCode): AuthResult => ({ kind: 'invalid', reason, message: reason });

function decide(
  routeName: string,
  auth: AuthResult,
  opts: {
    browser?: boolean;
    loginAvailable?: boolean;
    request?: Partial<PolicyRequest>;
    set?: PolicySet;
  } = {},
): Decision {
  return decideAccess(
    {
      route: route(routeName),
      auth,
      request: request(opts.request),
      browser: opts.browser ?? true,
      loginAvailable: opts.loginAvailable ?? true,
    },
    opts.set ?? policies,
  );
}

function brief(d: Decision): string {
  return `${d.outcome} ${d.status} ${d.reason}${d.rule ? ` ${d.rule}` : ''}${d.identity ? ` ${d.identity.user}` : ''}`;
}

test('public routes allow everyone; a valid identity is attached, an invalid credential ignored', () => {
  assert.equal(brief(decide('public', NONE)), 'allow 200 public-route');
  assert.equal(brief(decide('public', ok(alice))), 'allow 200 public-route alice');
  assert.equal(brief(decide('public', invalid('token-expired'))), 'allow 200 public-route');
  assert.equal(brief(decide('public', invalid('api-key-out-of-scope'))), 'allow 200 public-route');
});

test('an invalid credential on a protected route is 401 with its reason, never a login redirect', () => {
  for (const reason of [
    'token-expired',
    'token-not-yet-valid',
    'token-invalid',
    'token-wrong-audience',
    'token-wrong-issuer',
    'token-unknown-issuer',
    'jwks-unavailable',
    'api-key-invalid',
    'api-key-expired',
    'certificate-invalid',
  ] as const) {
    assert.equal(brief(decide('api', invalid(reason))), `unauthenticated 401 ${reason}`, reason);
    assert.equal(brief(decide('open', invalid(reason))), `unauthenticated 401 ${reason}`, reason);
  }
  // A valid key used outside its scope is known but not allowed.
  assert.equal(brief(decide('api', invalid('api-key-out-of-scope'))), 'forbidden 403 api-key-out-of-scope');
  // A browser whose session ended is sent to sign in again; other clients get 401.
  assert.equal(brief(decide('api', invalid('session-expired'))), 'login 302 session-expired');
  assert.equal(brief(decide('api', invalid('session-invalid'))), 'login 302 session-invalid');
  assert.equal(
    brief(decide('api', invalid('session-expired'), { browser: false })),
    'unauthenticated 401 session-expired',
  );
  assert.equal(
    brief(decide('api', invalid('session-expired'), { loginAvailable: false })),
    'unauthenticated 401 session-expired',
  );
  // An authenticator that reports an allowing reason for an invalid credential still fails closed.
  assert.equal(brief(decide('api', invalid('authenticated'))), 'unauthenticated 401 user-unauthenticated');
});

test('no identity: login for browsers when a provider applies, 401 otherwise', () => {
  assert.equal(brief(decide('api', NONE)), 'login 302 user-unauthenticated');
  assert.equal(brief(decide('api', NONE, { browser: false })), 'unauthenticated 401 user-unauthenticated');
  assert.equal(
    brief(decide('api', NONE, { loginAvailable: false })),
    'unauthenticated 401 user-unauthenticated',
  );
  assert.equal(brief(decide('open', NONE)), 'login 302 user-unauthenticated');
  // An allow rule that needs no identity never admits an anonymous caller on a protected route.
  assert.equal(
    brief(decide('api', NONE, { request: { path: '/api/open/x' } })),
    'login 302 user-unauthenticated',
  );
  // A deny rule that needs no identity refuses before any login.
  assert.equal(
    brief(decide('api', NONE, { request: { clientIp: '203.0.113.9' } })),
    'forbidden 403 policy-deny:eng.deny[0] eng.deny[0]',
  );
});

test('identity: the route policy decides; no policy allows any authenticated identity', () => {
  assert.equal(brief(decide('api', ok(alice))), 'allow 200 policy-allow:eng.allow[0] eng.allow[0] alice');
  assert.equal(brief(decide('api', ok(bob))), 'forbidden 403 no-allow-rule bob');
  assert.equal(
    brief(decide('api', ok(bob), { request: { path: '/api/open/x' } })),
    'allow 200 policy-allow:eng.allow[1] eng.allow[1] bob',
  );
  assert.equal(brief(decide('api', ok(intern))), 'forbidden 403 policy-deny:no-interns no-interns ivy');
  assert.equal(
    brief(decide('api', ok(alice), { request: { clientIp: '::ffff:203.0.113.9' } })),
    'forbidden 403 policy-deny:eng.deny[0] eng.deny[0] alice',
  );
  assert.equal(brief(decide('open', ok(bob))), 'allow 200 authenticated bob');
});

test('a route naming a policy the set does not know fails closed', () => {
  const other = compilePolicies(config({ policies: {}, routes: [] }));
  assert.throws(
    () => decide('api', ok(alice), { set: other }),
    (err: unknown) => err instanceof PolicyUnavailableError && err.code === 'GH_POLICY_UNAVAILABLE',
  );
});

test('statusForReason maps every reason code', () => {
  const table: Array<[ReasonCode, number]> = [
    ['public-route', 200],
    ['authenticated', 200],
    ['policy-allow:x', 200],
    ['policy-deny:x', 403],
    ['no-allow-rule', 403],
    ['api-key-out-of-scope', 403],
    ['user-unauthenticated', 401],
    ['token-expired', 401],
    ['token-not-yet-valid', 401],
    ['token-invalid', 401],
    ['token-wrong-audience', 401],
    ['token-wrong-issuer', 401],
    ['token-unknown-issuer', 401],
    ['jwks-unavailable', 401],
    ['api-key-invalid', 401],
    ['api-key-expired', 401],
    ['session-expired', 401],
    ['session-invalid', 401],
    ['certificate-invalid', 401],
  ];
  for (const [reason, status] of table) assert.equal(statusForReason(reason), status, reason);
});

test('describeDecision and describeReason give short human text', () => {
  assert.equal(describeDecision(decide('public', NONE)), 'allow (public route)');
  assert.equal(describeDecision(decide('api', ok(alice))), 'allow (rule eng.allow[0]) for alice@example.com');
  assert.equal(
    describeDecision(decide('open', ok(bob))),
    'allow (signed in; the route has no policy) for bob@example.com',
  );
  assert.equal(
    describeDecision(decide('api', NONE)),
    'login (302): sign-in required, redirect to the login page',
  );
  assert.equal(
    describeDecision(decide('api', NONE, { browser: false })),
    'unauthenticated (401): sign-in required',
  );
  assert.equal(
    describeDecision(decide('api', invalid('token-expired'))),
    'unauthenticated (401): the bearer token has expired',
  );
  assert.equal(
    describeDecision(decide('api', ok(bob))),
    'forbidden (403) for bob@example.com: no allow rule matches',
  );
  assert.equal(
    describeDecision(decide('api', ok(intern))),
    'forbidden (403) for ivy: denied by rule no-interns',
  );
  assert.equal(describeReason('policy-allow:a.allow[1]'), 'allowed by rule a.allow[1]');
});

test('isBrowserNavigation: GET/HEAD HTML navigations only', () => {
  const html = 'text/html,application/xhtml+xml,*/*;q=0.8';
  assert.equal(isBrowserNavigation('GET', { accept: html }), true);
  assert.equal(isBrowserNavigation('HEAD', { accept: html, 'sec-fetch-mode': 'navigate' }), true);
  assert.equal(isBrowserNavigation('POST', { accept: html }), false);
  assert.equal(isBrowserNavigation('GET', { accept: 'application/json' }), false);
  assert.equal(isBrowserNavigation('GET', { accept: '*/*' }), false);
  assert.equal(isBrowserNavigation('GET', {}), false);
  assert.equal(isBrowserNavigation('GET', { accept: html, 'x-requested-with': 'XMLHttpRequest' }), false);
  assert.equal(isBrowserNavigation('GET', { accept: html, 'sec-fetch-mode': 'cors' }), false);
});

test('loginProviders: the route providers, else every provider', () => {
  assert.deepEqual(loginProviders(cfg, route('api').config), ['partners']);
  assert.deepEqual(loginProviders(cfg, route('open').config), ['corp', 'partners']);
  const bare = config({ identity: undefined });
  assert.deepEqual(loginProviders(bare, bare.routes[2]!), []);
});

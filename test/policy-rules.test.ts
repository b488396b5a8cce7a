import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type Config, ConfigSchema } from '../src/config/schema.js';
import { PolicyUnavailableError } from '../src/errors.js';
import type { AuthMethod, Identity } from '../src/identity/types.js';
import { compilePolicies, PolicyConfigError, policyProblems } from '../src/policy/compile.js';
import type { CompiledPolicy, PolicyRequest } from '../src/policy/types.js';

function config(extra: Record<string, unknown>): Config {
  return ConfigSchema.parse({
    listeners: [{ name: 'l', bind: '127.0.0.1:0' }],
    upstreams: { app: { servers: [{ url: 'http://127.0.0.1:9' }] } },
    ...extra,
  });
}

/** Compiles one named policy `p`. */
function policy(p: Record<string, unknown>): CompiledPolicy {
  const compiled = compilePolicies(config({ policies: { p } })).named.get('p');
  assert.ok(compiled);
  return compiled;
}

function id(fields: Partial<Omit<Identity, 'claims'>> & { claims?: Record<string, unknown> } = {}): Identity {
  const subject = fields.subject ?? 'u1';
  return {
    subject,
    user: fields.user ?? subject,
    email: fields.email,
    groups: fields.groups ?? [],
    claims: fields.claims ?? {},
    authMethod: fields.authMethod ?? ('session' as AuthMethod),
    source: 'test',
    expiresAt: undefined,
  };
}

const NOW = Date.UTC(2024, 0, 8, 12, 0); // Monday 2024-01-08 12:00 UTC

function req(fields: Partial<PolicyRequest> = {}): PolicyRequest {
  return { method: 'GET', host: 'h', path: '/', clientIp: '192.0.2.10', now: NOW, ...fields };
}

/** True when the single allow rule `rule` matches. */
function allows(rule: Record<string, unknown>, identity: Identity | undefined, request = req()): boolean {
  return policy({ allow: [rule] }).evaluate(identity, request).allow;
}

test('email: case-insensitive exact match', () => {
  const rule = { email: ['Alice@Example.com', 'ops@example.com'] };
  assert.equal(allows(rule, id({ email: 'ALICE@example.COM' })), true);
  assert.equal(allows(rule, id({ email: 'ops@example.com' })), true);
  assert.equal(allows(rule, id({ email: 'alice@example.org' })), false);
  assert.equal(allows(rule, id({ email: 'xalice@example.com' })), false);
  assert.equal(allows(rule, id({ email: undefined })), false);
});

test('domain: the email domain, case-insensitive, never a subdomain', () => {
  const rule = { domain: ['example.com', '@corp.example'] };
  assert.equal(allows(rule, id({ email: 'bob@EXAMPLE.com' })), true);
  assert.equal(allows(rule, id({ email: 'eve@corp.example' })), true);
  assert.equal(allows(rule, id({ email: 'bob@sub.example.com' })), false);
  assert.equal(allows(rule, id({ email: 'bob@example.com.evil.org' })), false);
  assert.equal(allows(rule, id({ email: undefined })), false);
});

test('user and subject: exact match on their own field', () => {
  assert.equal(allows({ user: ['alice'] }, id({ subject: 's-1', user: 'alice' })), true);
  assert.equal(allows({ user: ['alice'] }, id({ subject: 'alice', user: 'Alice' })), false);
  assert.equal(allows({ subject: ['agent:etl'] }, id({ subject: 'agent:etl' })), true);
  assert.equal(allows({ subject: ['agent:etl'] }, id({ subject: 'agent:etl2' })), false);
});

test('groups: any listed group', () => {
  const rule = { groups: ['data-eng', 'ops'] };
  assert.equal(allows(rule, id({ groups: ['analysts', 'ops'] })), true);
  assert.equal(allows(rule, id({ groups: ['analysts'] })), false);
  assert.equal(allows(rule, id({ groups: [] })), false);
  assert.equal(allows(rule, id({ groups: ['Data-Eng'] })), false, 'group names are case-sensitive');
});

test('claim: dotted paths, literal names, arrays, typed values; every listed claim must match', () => {
  const claims = {
    org: { team: 'data', tags: ['a', 'b'] },
    level: 3,
    admin: true,
    'https://example.com/roles': ['viewer', 'editor'],
  };
  assert.equal(allows({ claim: { 'org.team': 'data' } }, id({ claims })), true);
  assert.equal(allows({ claim: { 'org.team': ['x', 'data'] } }, id({ claims })), true);
  assert.equal(allows({ claim: { 'org.team': 'ops' } }, id({ claims })), false);
  assert.equal(allows({ claim: { 'org.tags': 'b' } }, id({ claims })), true, 'array claim: any element');
  assert.equal(allows({ claim: { 'https://example.com/roles': 'editor' } }, id({ claims })), true);
  assert.equal(allows({ claim: { level: 3 } }, id({ claims })), true);
  assert.equal(allows({ claim: { level: '3' } }, id({ claims })), false, 'types are not coerced');
  assert.equal(allows({ claim: { admin: true } }, id({ claims })), true);
  assert.equal(allows({ claim: { admin: false } }, id({ claims })), false);
  assert.equal(allows({ claim: { 'org.team': 'data', level: 4 } }, id({ claims })), false);
  assert.equal(allows({ claim: { 'org.missing': 'x' } }, id({ claims })), false);
  assert.equal(allows({ claim: { org: 'data' } }, id({ claims })), false, 'an object never equals a value');
  // Inherited properties are not claims.
  assert.equal(allows({ claim: { 'constructor.name': 'Object' } }, id({ claims: {} })), false);
  assert.equal(allows({ claim: { 'org.toString': 'x' } }, id({ claims })), false);
});

test('authMethod and methods', () => {
  assert.equal(allows({ authMethod: ['bearer', 'apiKey'] }, id({ authMethod: 'apiKey' })), true);
  assert.equal(allows({ authMethod: ['bearer'] }, id({ authMethod: 'session' })), false);
  assert.equal(allows({ methods: ['GET', 'HEAD'] }, id(), req({ method: 'HEAD' })), true);
  assert.equal(allows({ methods: ['GET'] }, id(), req({ method: 'POST' })), false);
});

test('sourceIp: IPv4, IPv6, single addresses and IPv4-mapped IPv6', () => {
  const rule = { sourceIp: ['203.0.113.0/24', '2001:db8::/32', '198.51.100.7'] };
  const at = (clientIp: string): boolean => allows(rule, id(), req({ clientIp }));
  assert.equal(at('203.0.113.7'), true);
  assert.equal(at('203.0.114.1'), false);
  assert.equal(at('::ffff:203.0.113.7'), true, 'IPv4-mapped IPv6 is checked as IPv4');
  assert.equal(at('::FFFF:203.0.113.7'), true);
  assert.equal(at('::ffff:203.0.114.1'), false);
  assert.equal(at('2001:db8::1'), true);
  assert.equal(at('2001:DB8:0:0::abcd'), true);
  assert.equal(at('2001:db9::1'), false);
  assert.equal(at('198.51.100.7'), true);
  assert.equal(at('198.51.100.8'), false);
  // A mapped block in the config covers plain IPv4 clients too.
  assert.equal(allows({ sourceIp: ['::ffff:10.0.0.0/104'] }, id(), req({ clientIp: '10.1.2.3' })), true);
});

test('sourceIp: an unparseable client address matches deny rules and never allow rules', () => {
  const p = policy({ allow: [{ sourceIp: ['0.0.0.0/0', '::/0'] }] });
  assert.equal(p.evaluate(id(), req({ clientIp: '' })).allow, false);
  const d = policy({ allow: [{ groups: ['g'] }], deny: [{ sourceIp: ['203.0.113.0/24'] }] });
  assert.equal(
    d.evaluate(id({ groups: ['g'] }), req({ clientIp: 'not-an-ip' })).reason,
    'policy-deny:p.deny[0]',
  );
  assert.equal(d.evaluate(id({ groups: ['g'] }), req({ clientIp: '192.0.2.1' })).allow, true);
});

test('paths: segment-aware prefixes on normalized paths', () => {
  const dir = { paths: ['/a/'] };
  const seg = { paths: ['/a'] };
  const at = (rule: Record<string, unknown>, path: string): boolean => allows(rule, id(), req({ path }));
  assert.equal(at(dir, '/a/x'), true);
  assert.equal(at(dir, '/a/'), true);
  // A trailing slash does not narrow the prefix (backends serve /a and /a/ alike).
  assert.equal(at(dir, '/a'), true);
  assert.equal(at(dir, '/ab'), false);
  assert.equal(at(seg, '/a'), true);
  assert.equal(at(seg, '/a/x/y'), true);
  assert.equal(at(seg, '/ab'), false);
  assert.equal(at(seg, '/A'), false);
  assert.equal(at({ paths: ['/'] }, '/anything'), true);
  // The configured prefix is normalized like request paths.
  assert.equal(at({ paths: ['/b//c/./d', '/%7Eu'] }, '/b/c/d/e'), true);
  assert.equal(at({ paths: ['/%7Eu'] }, '/~u'), true);
});

test('time: weekdays and hours in a time zone, with daylight saving time', () => {
  const rule = {
    time: { days: ['mon', 'tue', 'wed', 'thu', 'fri'], from: '09:00', to: '17:00', timezone: 'Europe/Paris' },
  };
  const at = (now: number): boolean => allows(rule, id(), req({ now }));
  assert.equal(at(Date.UTC(2024, 0, 8, 8, 0)), true, 'Monday 09:00 CET, from is inclusive');
  assert.equal(at(Date.UTC(2024, 0, 8, 7, 59)), false, 'Monday 08:59 CET');
  assert.equal(at(Date.UTC(2024, 0, 8, 15, 59)), true, 'Monday 16:59 CET');
  assert.equal(at(Date.UTC(2024, 0, 8, 16, 0)), false, 'Monday 17:00 CET, to is exclusive');
  assert.equal(at(Date.UTC(2024, 6, 8, 7, 30)), true, 'Monday 09:30 CEST (UTC+2)');
  assert.equal(at(Date.UTC(2024, 6, 8, 6, 30)), false, 'Monday 08:30 CEST');
  assert.equal(at(Date.UTC(2024, 0, 13, 10, 0)), false, 'Saturday');
  // Half-hour offsets and a date line between UTC and the zone.
  const kolkata = { time: { from: '09:00', timezone: 'Asia/Kolkata' } };
  assert.equal(allows(kolkata, id(), req({ now: Date.UTC(2024, 0, 8, 3, 30) })), true, '09:00 IST');
  assert.equal(allows(kolkata, id(), req({ now: Date.UTC(2024, 0, 8, 3, 29) })), false, '08:59 IST');
  const sunday = { time: { days: ['sun'], timezone: 'America/Los_Angeles' } };
  assert.equal(allows(sunday, id(), req({ now: Date.UTC(2024, 0, 8, 3, 0) })), true, 'Sunday 19:00 PST');
  assert.equal(allows(sunday, id(), req({ now: Date.UTC(2024, 0, 8, 9, 0) })), false, 'Monday 01:00 PST');
});

test('time: windows across midnight belong to the day they open on; UTC by default', () => {
  const rule = { time: { days: ['fri'], from: '22:00', to: '02:00' } };
  const at = (d: number, h: number, m = 0): boolean =>
    allows(rule, id(), req({ now: Date.UTC(2024, 0, d, h, m) }));
  assert.equal(at(12, 22, 0), true, 'Friday 22:00');
  assert.equal(at(12, 23, 59), true, 'Friday 23:59');
  assert.equal(at(13, 1, 59), true, 'Saturday 01:59 (Friday night)');
  assert.equal(at(13, 2, 0), false, 'Saturday 02:00');
  assert.equal(at(13, 23, 0), false, 'Saturday 23:00');
  assert.equal(at(12, 1, 0), false, 'Friday 01:00 belongs to Thursday night');
  assert.equal(at(12, 21, 59), false, 'Friday 21:59');
  const toEnd = { time: { from: '20:00', to: '24:00' } };
  assert.equal(allows(toEnd, id(), req({ now: Date.UTC(2024, 0, 8, 23, 59) })), true);
  assert.equal(allows(toEnd, id(), req({ now: Date.UTC(2024, 0, 8, 0, 0) })), false);
});

test('a rule matches when all its keys match', () => {
  const rule = { groups: ['data-eng'], methods: ['GET'], paths: ['/api/'], sourceIp: ['10.0.0.0/8'] };
  const ok = req({ method: 'GET', path: '/api/x', clientIp: '10.1.1.1' });
  const engineer = id({ groups: ['data-eng'] });
  assert.equal(allows(rule, engineer, ok), true);
  assert.equal(allows(rule, id({ groups: ['x'] }), ok), false);
  assert.equal(allows(rule, engineer, { ...ok, method: 'POST' }), false);
  assert.equal(allows(rule, engineer, { ...ok, path: '/web' }), false);
  assert.equal(allows(rule, engineer, { ...ok, clientIp: '192.0.2.1' }), false);
});

test('deny wins over allow; reasons name the deciding rule', () => {
  const p = policy({
    allow: [{ groups: ['data-eng'] }, { name: 'ops-mail', email: ['ops@example.com'] }],
    deny: [{ sourceIp: ['203.0.113.0/24'] }, { name: 'no-contractors', groups: ['contractors'] }],
  });
  const alice = id({ email: 'alice@example.com', groups: ['data-eng'] });
  assert.deepEqual(p.evaluate(alice, req()), {
    allow: true,
    reason: 'policy-allow:p.allow[0]',
    rule: 'p.allow[0]',
  });
  assert.deepEqual(p.evaluate(alice, req({ clientIp: '203.0.113.5' })), {
    allow: false,
    reason: 'policy-deny:p.deny[0]',
    rule: 'p.deny[0]',
  });
  const contractor = id({ groups: ['data-eng', 'contractors'] });
  assert.equal(p.evaluate(contractor, req()).reason, 'policy-deny:no-contractors');
  assert.equal(p.evaluate(id({ email: 'ops@example.com' }), req()).reason, 'policy-allow:ops-mail');
  assert.deepEqual(p.evaluate(id({ email: 'bob@example.com' }), req()), {
    allow: false,
    reason: 'no-allow-rule',
    rule: undefined,
  });
  // Results are preallocated: the hot path does not build new objects.
  assert.equal(p.evaluate(alice, req()), p.evaluate(alice, req()));
  assert.deepEqual(
    p.rules.map((r) => `${r.effect} ${r.name} ${r.needsIdentity}`),
    ['deny p.deny[0] false', 'deny no-contractors true', 'allow p.allow[0] true', 'allow ops-mail true'],
  );
});

test('anonymous requests: request-only rules can match, identity rules never do', () => {
  const p = policy({
    allow: [{ paths: ['/open/'] }, { groups: ['g'] }],
    deny: [{ paths: ['/admin'] }, { email: ['x@example.com'], paths: ['/secret'] }],
  });
  assert.equal(p.evaluate(undefined, req({ path: '/open/x' })).reason, 'policy-allow:p.allow[0]');
  assert.equal(p.evaluate(undefined, req({ path: '/admin/x' })).reason, 'policy-deny:p.deny[0]');
  assert.equal(p.evaluate(undefined, req({ path: '/secret' })).reason, 'no-allow-rule');
  assert.equal(p.evaluate(undefined, req({ path: '/x' })).reason, 'no-allow-rule');
  // An empty rule looks at nothing and therefore matches every request.
  assert.equal(policy({ deny: [{}] }).evaluate(undefined, req()).reason, 'policy-deny:p.deny[0]');
  const trace = p.trace(undefined, req({ path: '/secret' }));
  assert.deepEqual(
    trace.map((t) => [t.name, t.matched, t.mismatch]),
    [
      ['p.deny[0]', false, 'paths'],
      ['p.deny[1]', false, 'identity'],
      ['p.allow[0]', false, 'paths'],
      ['p.allow[1]', false, 'identity'],
    ],
  );
});

test('forRoute resolves named and inline policies; inline rules are named after the route', () => {
  const c = config({
    policies: { eng: { allow: [{ groups: ['eng'] }] } },
    routes: [
      { name: 'named', match: { path: '/n' }, upstream: 'app', policy: 'eng' },
      { name: 'inline', match: { path: '/i' }, upstream: 'app', policy: { deny: [{ methods: ['DELETE'] }] } },
      { name: 'none', match: { path: '/x' }, upstream: 'app' },
    ],
  });
  const s = compilePolicies(c);
  assert.equal(s.forRoute(c.routes[2]!), undefined);
  assert.equal(s.forRoute(c.routes[0]!)?.name, 'eng');
  const inline = s.forRoute(c.routes[1]!);
  assert.equal(inline?.inline, true);
  assert.equal(inline, s.forRoute(c.routes[1]!), 'compiled once');
  assert.equal(inline?.evaluate(id(), req({ method: 'DELETE' })).reason, 'policy-deny:inline.deny[0]');
  // A route object from elsewhere naming an unknown policy fails closed.
  assert.throws(
    () => s.forRoute({ ...c.routes[0]!, policy: 'missing' }),
    (err: unknown) => err instanceof PolicyUnavailableError && err.status === 403,
  );
});

test('compile problems are reported with their config path; compilePolicies refuses them', () => {
  const bad = config({
    policies: {
      p: {
        allow: [
          { time: { timezone: 'Mars/Olympus', from: '25:00' } },
          { paths: ['admin', '/a/%2f', '/admin;x', '/b?c'], name: 'two\nlines' },
          { time: { from: '10:00', to: '10:00' } },
        ],
        deny: [{ name: 'dup' }, { name: 'dup' }],
      },
    },
    routes: [
      { name: 'r', match: { path: '/' }, upstream: 'app', policy: { allow: [{ time: { to: '24:01' } }] } },
    ],
  });
  const problems = policyProblems(bad).map((p) => `${p.path.join('.')}: ${p.message}`);
  assert.deepEqual(
    problems.map((p) => p.slice(0, p.indexOf(':'))),
    [
      'policies.p.allow.0.time.from',
      'policies.p.allow.0.time.timezone',
      'policies.p.allow.1.name',
      'policies.p.allow.1.paths.0',
      'policies.p.allow.1.paths.1',
      'policies.p.allow.1.paths.2',
      'policies.p.allow.1.paths.3',
      'policies.p.allow.2.time.to',
      'policies.p.deny.1.name',
      'routes.0.policy.allow.0.time.to',
    ],
  );
  assert.match(problems[1]!, /unknown time zone "Mars\/Olympus"/);
  assert.throws(
    () => compilePolicies(bad),
    (err: unknown) =>
      err instanceof PolicyConfigError && err.code === 'GH_POLICY_INVALID' && err.problems.length === 10,
  );
  const unknownRef = config({
    routes: [{ name: 'r', match: { path: '/' }, upstream: 'app', policy: 'nope' }],
  });
  assert.deepEqual(policyProblems(unknownRef), [], 'the loader reports unknown names itself');
  assert.throws(() => compilePolicies(unknownRef), PolicyConfigError);
});

import assert from 'node:assert/strict';
import type { IncomingHttpHeaders } from 'node:http';
import { test } from 'node:test';
import { ConfigSchema } from '../src/config/schema.js';
import { compileRoutes, routeProblems } from '../src/core/routes.js';
import type { RequestFacts, RouteTable } from '../src/core/types.js';
import { GatehouseError } from '../src/errors.js';

function table(routes: unknown[], extra: Record<string, unknown> = {}): RouteTable {
  return compileRoutes(
    ConfigSchema.parse({
      listeners: [{ name: 'l', bind: '127.0.0.1:0' }],
      upstreams: {
        a: { servers: [{ url: 'http://127.0.0.1:1' }] },
        b: { servers: [{ url: 'http://127.0.0.1:2' }] },
      },
      routes,
      ...extra,
    }),
  );
}

function facts(host: string, path: string, method = 'GET', headers: IncomingHttpHeaders = {}): RequestFacts {
  return { host, authority: host, path, method, headers, query: '', clientIp: '127.0.0.1', tls: false };
}

function name(t: RouteTable, f: RequestFacts): string | undefined {
  return t.match(f)?.name;
}

test('host specificity: exact > longer wildcard > shorter wildcard > any host', () => {
  const t = table([
    { name: 'any', match: { path: '/' }, upstream: 'a' },
    { name: 'wild', match: { host: '*.example.com' }, upstream: 'a' },
    { name: 'wild-deep', match: { host: '*.eu.example.com' }, upstream: 'a' },
    { name: 'exact', match: { host: 'API.example.com' }, upstream: 'a' },
  ]);
  assert.equal(name(t, facts('api.example.com', '/x')), 'exact');
  assert.equal(name(t, facts('x.eu.example.com', '/x')), 'wild-deep');
  assert.equal(name(t, facts('a.b.example.com', '/x')), 'wild');
  assert.equal(name(t, facts('example.com', '/x')), 'any', 'wildcard does not match the apex');
  assert.equal(name(t, facts('other.org', '/x')), 'any');
});

test('an exact host wins over a longer path on a wildcard host', () => {
  const t = table([
    { name: 'wild-long', match: { host: '*.example.com', path: '/api/v1/' }, upstream: 'a' },
    { name: 'exact-root', match: { host: 'api.example.com' }, upstream: 'a' },
  ]);
  assert.equal(name(t, facts('api.example.com', '/api/v1/x')), 'exact-root');
});

test('path prefixes are segment-aware and the longer prefix wins', () => {
  const t = table([
    { name: 'root', match: { path: '/' }, upstream: 'a' },
    { name: 'api', match: { path: '/api' }, upstream: 'a' },
    { name: 'api-v1', match: { path: '/api/v1/' }, upstream: 'a' },
  ]);
  assert.equal(name(t, facts('h', '/api')), 'api');
  assert.equal(name(t, facts('h', '/api/x')), 'api');
  assert.equal(name(t, facts('h', '/apix')), 'root');
  assert.equal(name(t, facts('h', '/api/v1/jobs')), 'api-v1');
  // A trailing slash does not narrow a prefix: `/api/v1/` also covers `/api/v1` itself.
  assert.equal(name(t, facts('h', '/api/v1')), 'api-v1');
  assert.equal(name(t, facts('h', '/api/v1x')), 'api');
});

test('no match gives undefined', () => {
  const t = table([{ name: 'api', match: { host: 'a.com', path: '/api' }, upstream: 'a' }]);
  assert.equal(t.match(facts('a.com', '/other')), undefined);
  assert.equal(t.match(facts('b.com', '/api')), undefined);
});

test('method and header conditions; conditional routes before unconditional ones', () => {
  const t = table([
    { name: 'plain', match: { path: '/x' }, upstream: 'a' },
    { name: 'post', match: { path: '/x', methods: ['POST'] }, upstream: 'a' },
    { name: 'beta', match: { path: '/x', headers: { 'X-Beta': '1' } }, upstream: 'a' },
    { name: 'traced', match: { path: '/x', headers: { 'X-Trace': '*' } }, upstream: 'a' },
  ]);
  assert.equal(name(t, facts('h', '/x')), 'plain');
  assert.equal(name(t, facts('h', '/x', 'POST')), 'post');
  assert.equal(name(t, facts('h', '/x', 'GET', { 'x-beta': '1' })), 'beta');
  assert.equal(name(t, facts('h', '/x', 'GET', { 'x-beta': '2' })), 'plain');
  assert.equal(name(t, facts('h', '/x', 'GET', { 'x-trace': 'anything' })), 'traced');
  // Same specificity: configuration order decides.
  assert.equal(name(t, facts('h', '/x', 'POST', { 'x-beta': '1' })), 'post');
});

test('maxBodySize falls back to the server default; websocket idle timeout', () => {
  const t = table(
    [
      { name: 'own', match: { path: '/a' }, upstream: 'a', maxBodySize: '1KiB', websocket: true },
      { name: 'dflt', match: { path: '/b' }, upstream: 'a', websocket: { idleTimeout: '5s' } },
    ],
    { server: { maxBodySize: '2KiB' } },
  );
  assert.equal(t.routes[0]!.maxBodySize, 1024);
  assert.equal(t.routes[1]!.maxBodySize, 2048);
  assert.equal(t.routes[0]!.websocketIdleTimeout, 3_600_000);
  assert.equal(t.routes[1]!.websocketIdleTimeout, 5000);
});

test('weighted split spreads by weight and the pin header pins', () => {
  const t = table([
    {
      name: 'canary',
      split: {
        targets: [
          { upstream: 'a', weight: 90 },
          { upstream: 'b', weight: 10 },
        ],
        pinHeader: 'X-Canary',
      },
    },
  ]);
  const route = t.match(facts('h', '/'))!;
  const counts = { a: 0, b: 0 } as Record<string, number>;
  for (let i = 0; i < 10_000; i++) counts[route.pickUpstream({})]! += 1;
  assert.ok(counts.a! > 8500 && counts.a! < 9500, `a=${counts.a}`);
  assert.ok(counts.b! > 500 && counts.b! < 1500, `b=${counts.b}`);
  for (let i = 0; i < 100; i++) assert.equal(route.pickUpstream({ 'x-canary': 'b' }), 'b');
  assert.equal(route.pickUpstream({ 'x-canary': 'a' }), 'a');
  // A pin naming something outside the split is ignored.
  const seen = new Set<string>();
  for (let i = 0; i < 200; i++) seen.add(route.pickUpstream({ 'x-canary': 'zzz' }));
  assert.ok(seen.has('a'));
  assert.deepEqual(route.upstreamNames, ['a', 'b']);
});

test('prefix boundaries: /admin and /admin/ cover the segment and below, never /adminx', () => {
  for (const prefix of ['/admin', '/admin/']) {
    const t = table([
      { name: 'root', match: { path: '/' }, upstream: 'a' },
      { name: 'admin', match: { path: prefix }, upstream: 'b' },
    ]);
    for (const p of ['/admin', '/admin/', '/admin/x', '/admin/x/y/'])
      assert.equal(name(t, facts('h', p)), 'admin', `${prefix} ${p}`);
    for (const p of ['/adminx', '/admin.', '/ADMIN', '/admin%20', '/admin%3Bx', '/', '/x/admin'])
      assert.equal(name(t, facts('h', p)), 'root', `${prefix} ${p}`);
  }
  // The root prefix matches every path, and nothing matches OPTIONS *.
  const root = table([{ name: 'root', match: { path: '/' }, upstream: 'a' }]);
  assert.equal(name(root, facts('h', '/')), 'root');
  assert.equal(root.match(facts('h', '*', 'OPTIONS')), undefined);
});

test('a route prefix that request paths can never carry is a configuration problem', () => {
  const config = (path: string) =>
    ConfigSchema.parse({
      listeners: [{ name: 'l', bind: '127.0.0.1:0' }],
      upstreams: { a: { servers: [{ url: 'http://127.0.0.1:1' }] } },
      routes: [
        { name: 'ok', match: { path: '/x//y/./z' }, upstream: 'a' },
        { name: 'bad', match: { path }, upstream: 'a' },
      ],
    });
  for (const path of ['/admin;x', '/a/..;/b', '/admin?x=1', '/a#b', '/a/%2fb', '/a\\b', '/..'])
    assert.deepEqual(
      routeProblems(config(path)).map((p) => p.path.join('.')),
      ['routes.1.match.path'],
      path,
    );
  assert.deepEqual(routeProblems(config('/api/%7Ev1/')), []);
  // compileRoutes refuses such a configuration rather than leave a route that never matches.
  assert.throws(
    () => compileRoutes(config('/admin;x')),
    (err: unknown) => err instanceof GatehouseError && err.code === 'GH_CONFIG_INVALID',
  );
});

test('a route with methodOverride whose own headers or upstream would replace or remove the override header is a configuration problem', () => {
  const config = (route: Record<string, unknown>, inject?: Record<string, string>) =>
    ConfigSchema.parse({
      listeners: [{ name: 'l', bind: '127.0.0.1:0' }],
      upstreams: {
        a: { servers: [{ url: 'http://127.0.0.1:1' }], ...(inject ? { inject: { headers: inject } } : {}) },
      },
      routes: [{ name: 'api', upstream: 'a', methodOverride: true, ...route }],
    });
  const problems = (c: ReturnType<typeof config>) => routeProblems(c).map((p) => p.path.join('.'));
  // Policy would decide on the override while the upstream got the POST without it, or another value.
  assert.deepEqual(problems(config({ headers: { request: { remove: ['X-HTTP-Method-Override'] } } })), [
    'routes.0.headers.request',
  ]);
  assert.deepEqual(problems(config({ headers: { request: { set: { 'x-method-override': 'GET' } } } })), [
    'routes.0.headers.request',
  ]);
  assert.deepEqual(problems(config({}, { 'X-HTTP-Method': 'PUT' })), ['routes.0.upstream']);
  // Without methodOverride the headers are the route's to edit; other headers are always fine.
  assert.deepEqual(
    problems(config({ methodOverride: false, headers: { request: { remove: ['x-http-method'] } } })),
    [],
  );
  assert.deepEqual(problems(config({ headers: { request: { remove: ['x-other'] } } })), []);
});

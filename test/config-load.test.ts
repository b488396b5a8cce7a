import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { loadConfig } from '../src/config/load.js';
import { formatProblem } from '../src/errors.js';
import { selfSigned, tempDir } from './helpers/gateway.js';

async function problemsOf(file: string, env: NodeJS.ProcessEnv = {}): Promise<string[]> {
  const r = await loadConfig(file, env);
  assert.equal(r.ok, false, 'expected the configuration to be rejected');
  if (r.ok) return [];
  return r.problems.map(formatProblem);
}

const BASE = `
listeners:
  - { name: plain, bind: 127.0.0.1:0 }
upstreams:
  app: { servers: [{ url: http://127.0.0.1:9 }] }
routes:
  - { name: all, upstream: app }
`;

test('a valid configuration loads with defaults filled in', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write('gatehouse.yaml', BASE);
  const r = await loadConfig(file, {});
  assert.ok(r.ok, r.ok ? '' : r.problems.map(formatProblem).join('\n'));
  assert.equal(r.config.upstreams.app?.timeouts.connect, 5000);
  assert.equal(r.config.routes[0]?.match.path, '/');
  assert.deepEqual(r.files, [path.resolve(file)]);
  // The route is protected but nothing can authenticate: valid (it fails closed), with a warning.
  assert.deepEqual(
    r.warnings.map((w) => w.path),
    ['routes.0'],
  );
  assert.match(r.warnings[0]?.message ?? '', /every request gets 401; set public: true/);
  const open = await loadConfig(
    d.write('open.yaml', BASE.replace('upstream: app }', 'upstream: app, public: true }')),
    {},
  );
  assert.ok(open.ok);
  assert.deepEqual(open.warnings, []);
});

test('every problem is reported at once with its file and dotted path', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gh.yaml',
    `
listeners:
  - { name: plain, bind: 127.0.0.1:8080, foo: 1 }
  - { name: plain, bind: 127.0.0.1:8080 }
  - name: secure
    bind: 127.0.0.1:0
    tls:
      certificates:
        - { cert: file:certs/site.pem, key: env:SITE_KEY }
upstreams:
  airbyte:
    servers: [{ url: http://127.0.0.1:9001 }]
    balance: fastest
    timeouts: { connect: 5 sec }
  hashed:
    servers: [{ url: http://127.0.0.1:9002 }]
    balance: hash
    hash: { source: header }
routes:
  - { name: api, upstream: airbite }
  - name: canary
    split: { targets: [{ upstream: airbyte, weight: 90 }, { upstream: nope, weight: 10 }] }
  - { name: api, upstream: airbyte, policy: missing }
  - { name: orphan }
  - { name: both, upstream: airbyte, split: { targets: [{ upstream: airbyte, weight: 1 }, { upstream: hashed, weight: 1 }] } }
`,
  );
  const problems = await problemsOf(file);
  const f = file;
  const expected = [
    `${f}: listeners.0.foo: unknown key`,
    `${f}: listeners.1.name: duplicate listener name "plain" (first defined at ${f}: listeners.0)`,
    `${f}: listeners.1.bind: 127.0.0.1:8080 is also used by listener plain`,
    `${f}: listeners.2.tls.certificates.0.cert: cannot read file certs/site.pem (ENOENT)`,
    `${f}: listeners.2.tls.certificates.0.key: environment variable SITE_KEY is not set`,
    `${f}: upstreams.airbyte.balance: invalid value "fastest" (allowed: round-robin, least-conn, random-two, hash)`,
    `${f}: upstreams.airbyte.timeouts.connect: invalid duration "5 sec" (expected e.g. 500ms, 30s, 5m, 12h)`,
    `${f}: upstreams.hashed.hash.name: is required when hash.source is header`,
    `${f}: routes.0.upstream: unknown upstream "airbite" (defined: airbyte, hashed)`,
    `${f}: routes.1.split.targets.1.upstream: unknown upstream "nope" (defined: airbyte, hashed)`,
    `${f}: routes.2.name: duplicate route name "api" (first defined at ${f}: routes.0)`,
    `${f}: routes.2.policy: unknown policy "missing" (none defined)`,
    `${f}: routes.3: needs an upstream or a split`,
    `${f}: routes.4: set either upstream or split, not both`,
  ];
  for (const line of expected)
    assert.ok(problems.includes(line), `missing problem:\n  ${line}\ngot:\n  ${problems.join('\n  ')}`);
  assert.equal(problems.length, expected.length, problems.join('\n'));
});

test('bad PEM, unreadable files and unset variables are reported against the key that names them', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const { cert, key } = selfSigned();
  const other = selfSigned('other');
  d.write('certs/site.pem', cert);
  d.write('certs/site-key.pem', key);
  d.write('certs/garbage.pem', 'not a certificate\n');
  d.write('certs/other-key.pem', other.key);
  const file = d.write(
    'gh.yaml',
    `
listeners:
  - name: good
    bind: 127.0.0.1:0
    tls: { certificates: [{ cert: file:certs/site.pem, key: file:certs/site-key.pem }] }
  - name: bad
    bind: 127.0.0.1:0
    tls:
      certificates:
        - { cert: file:certs/garbage.pem, key: file:certs/site-key.pem }
        - { cert: file:certs/site.pem, key: file:certs/other-key.pem }
upstreams:
  app:
    servers: [{ url: https://127.0.0.1:9 }]
    tls: { ca: file:certs/missing-ca.pem }
    inject: { headers: { Authorization: "Bearer \${file:secrets/token}", X-Team: "\${env:TEAM}" } }
admin: { token: env:ADMIN_TOKEN }
routes: [{ name: r, upstream: app }]
`,
  );
  const problems = await problemsOf(file);
  const f = file;
  const pem = problems.findIndex((p) =>
    p.startsWith(`${f}: listeners.1.tls.certificates.0.cert: not a PEM certificate (`),
  );
  assert.ok(pem >= 0, problems.join('\n'));
  problems.splice(pem, 1);
  assert.deepEqual(
    problems.sort(),
    [
      `${f}: admin.token: environment variable ADMIN_TOKEN is not set`,
      `${f}: listeners.1.tls.certificates.1.key: does not match the certificate`,
      `${f}: upstreams.app.inject.headers.Authorization: cannot read file secrets/token (ENOENT)`,
      `${f}: upstreams.app.inject.headers.X-Team: environment variable TEAM is not set`,
      `${f}: upstreams.app.tls.ca: cannot read file certs/missing-ca.pem (ENOENT)`,
    ].sort(),
  );

  // With the secrets present the same file loads, and the files it read are listed for watching.
  d.write('secrets/token', 's3cret\n');
  d.write('certs/missing-ca.pem', cert);
  d.write('certs/garbage.pem', cert);
  d.write('certs/other-key.pem', key);
  const r = await loadConfig(file, { ADMIN_TOKEN: 'admin', TEAM: 'data' });
  assert.ok(r.ok, r.ok ? '' : r.problems.map(formatProblem).join('\n'));
  assert.equal(r.secrets.expand('Bearer ${file:secrets/token}'), 'Bearer s3cret');
  for (const name of ['certs/site.pem', 'certs/site-key.pem', 'secrets/token', 'certs/missing-ca.pem']) {
    assert.ok(r.files.includes(d.file(name)), `${name} should be watched`);
  }
});

test('includes are merged and problems point into the included file with its own indexes', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const main = d.write(
    'main.yaml',
    `
include: [conf.d/routes.yaml, conf.d/upstreams.yaml]
listeners: [{ name: plain, bind: 127.0.0.1:0 }]
upstreams:
  app: { servers: [{ url: http://127.0.0.1:9 }] }
routes:
  - { name: first, upstream: app }
`,
  );
  d.write(
    'conf.d/routes.yaml',
    `
include: [nested.yaml]
routes:
  - { name: second, upstream: other }
  - { name: third, upstream: ghost, match: { path: /x, colour: red } }
`,
  );
  d.write('conf.d/nested.yaml', 'routes:\n  - { name: fourth, upstream: app, websocket: maybe }\n');
  d.write(
    'conf.d/upstreams.yaml',
    `
upstreams:
  other: { servers: [{ url: http://127.0.0.1:10 }] }
  app: { servers: [{ url: http://127.0.0.1:11 }] }
listeners: [{ name: plain, bind: 127.0.0.1:0 }]
server: { drainTimeout: 1s }
`,
  );
  const problems = await problemsOf(main);
  const routes = path.join(path.dirname(main), 'conf.d/routes.yaml');
  const nested = path.join(path.dirname(main), 'conf.d/nested.yaml');
  const ups = path.join(path.dirname(main), 'conf.d/upstreams.yaml');
  assert.deepEqual(
    problems.sort(),
    [
      `${nested}: routes.0.websocket: expected boolean or object, got "maybe"`,
      `${routes}: routes.1.match.colour: unknown key`,
      `${routes}: routes.1.upstream: unknown upstream "ghost" (defined: app, other)`,
      `${ups}: listeners.0.name: duplicate listener name "plain" (first defined at ${main}: listeners.0)`,
      `${ups}: upstreams.app: upstream "app" is also defined in ${main}`,
    ].sort(),
  );

  // Fixed, the merged config has every route in order and the included top-level key.
  d.write('conf.d/nested.yaml', 'routes:\n  - { name: fourth, upstream: app, websocket: true }\n');
  d.write('conf.d/routes.yaml', 'include: [nested.yaml]\nroutes:\n  - { name: second, upstream: other }\n');
  d.write(
    'conf.d/upstreams.yaml',
    'upstreams:\n  other: { servers: [{ url: http://127.0.0.1:10 }] }\nserver: { drainTimeout: 1s }\n',
  );
  const r = await loadConfig(main, {});
  assert.ok(r.ok, r.ok ? '' : r.problems.map(formatProblem).join('\n'));
  assert.deepEqual(
    r.config.routes.map((x) => x.name),
    ['first', 'second', 'fourth'],
  );
  assert.equal(r.config.server.drainTimeout, 1000);
  assert.deepEqual(Object.keys(r.config.upstreams).sort(), ['app', 'other']);
  assert.equal(r.files.length, 4);
});

test('a top-level key other than lists and maps may appear in only one file', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const main = d.write('main.yaml', `include: [more.yaml]\n${BASE}\nserver: { drainTimeout: 2s }\n`);
  d.write('more.yaml', 'server: { drainTimeout: 3s }\n');
  const problems = await problemsOf(main);
  assert.deepEqual(problems, [
    `${d.file('more.yaml')}: server: "server" is also defined in ${main}; it may appear in only one file`,
  ]);
});

test('a __proto__ key is reported as unknown, never read through the prototype of the merged config', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  // Its only key is __proto__: before, its listeners were read as if written at the top level.
  const only = d.write('only.yaml', '__proto__:\n  listeners: [{ name: plain, bind: 127.0.0.1:0 }]\n');
  const problems = await problemsOf(only);
  assert.ok(problems.includes(`${only}: __proto__: unknown key`), problems.join('\n'));
  assert.ok(problems.includes(`${only}: listeners: is required`), problems.join('\n'));
  // In an include and inside the merged maps, it is reported at its own file and path too.
  const main = d.write('main.yaml', `include: [more.yaml]\n${BASE}`);
  d.write(
    'more.yaml',
    '__proto__: { server: { drainTimeout: 1s } }\nupstreams:\n  __proto__: { servers: [{ url: http://127.0.0.1:9 }] }\n',
  );
  const inInclude = await problemsOf(main);
  assert.ok(inInclude.includes(`${d.file('more.yaml')}: __proto__: unknown key`), inInclude.join('\n'));
  assert.ok(
    inInclude.includes(
      `${d.file('more.yaml')}: upstreams.__proto__: invalid name "__proto__": must start with a letter or digit`,
    ),
    inInclude.join('\n'),
  );
});

test('quotas merge across includes like upstreams: a quota named __proto__ is reported, one defined twice names both files', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const main = d.write(
    'main.yaml',
    `include: [more.yaml]\n${BASE}quotas:\n  daily: { key: identity, limit: 10, window: 1d }\n`,
  );
  d.write(
    'more.yaml',
    'quotas:\n  __proto__: { key: identity, limit: 1, window: 1m }\n  daily: { key: ip, limit: 5, window: 1d }\n  monthly: { key: ip, limit: 5, window: month }\n',
  );
  const problems = await problemsOf(main);
  assert.deepEqual(problems.sort(), [
    `${d.file('more.yaml')}: quotas.__proto__: invalid name "__proto__": must start with a letter or digit`,
    `${d.file('more.yaml')}: quotas.daily: quota "daily" is also defined in ${main}`,
  ]);
  // Without the duplicate, the include's quota joins the main file's.
  d.write('more.yaml', 'quotas:\n  monthly: { key: ip, limit: 5, window: month }\n');
  const loaded = await loadConfig(main, {});
  assert.ok(loaded.ok, loaded.ok ? '' : loaded.problems.map((p) => p.message).join('\n'));
  assert.deepEqual(Object.keys(loaded.config.quotas).sort(), ['daily', 'monthly']);
});

test('YAML warnings such as an unresolved tag are config warnings with their line, never printed by the YAML library', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const printed: string[] = [];
  const onWarning = (w: Error): void => {
    printed.push(w.message);
  };
  process.on('warning', onWarning);
  t.after(() => process.off('warning', onWarning));
  const file = d.write('main.yaml', `${BASE}logging: { level: !custom info }\n`);
  const r = await loadConfig(file, {});
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(r.ok, true);
  assert.ok(
    r.warnings.some(
      (w) => w.file === file && w.message === 'YAML warning at line 8, column 19: Unresolved tag: !custom',
    ),
    JSON.stringify(r.warnings),
  );
  assert.deepEqual(printed, []);
});

test('include cycles and missing included files are reported', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const a = d.write('a.yaml', `include: [b.yaml, missing.yaml]\n${BASE}`);
  d.write('b.yaml', 'include: [a.yaml]\n');
  const problems = await problemsOf(a);
  assert.equal(problems.length, 2, problems.join('\n'));
  assert.match(problems[0]!, /b\.yaml: include\.0: include cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml$/);
  assert.equal(problems[1], `${a}: include.1: cannot read file missing.yaml (ENOENT)`);
});

test('a YAML syntax error is reported with its line and column', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write('bad.yaml', 'listeners:\n  - name: plain\n    bind: [127.0.0.1:0\nroutes: []\n');
  const problems = await problemsOf(file);
  assert.equal(problems.length, 1, problems.join('\n'));
  assert.match(
    problems[0]!,
    new RegExp(
      `^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: \\(root\\): YAML syntax error at line \\d+, column \\d+: `,
    ),
  );
  const dup = d.write('dup.yaml', `${BASE}\nroutes: []\n`);
  const dupProblems = await problemsOf(dup);
  assert.match(dupProblems[0]!, /YAML syntax error at line 9, column 1: Map keys must be unique/);
});

test('a missing file and a non-mapping document are problems, not exceptions', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  assert.deepEqual(await problemsOf(d.file('nope.yaml')), [
    `${d.file('nope.yaml')}: (root): cannot read file (ENOENT)`,
  ]);
  const list = d.write('list.yaml', '- a\n- b\n');
  assert.deepEqual(await problemsOf(list), [
    `${list}: (root): the file must contain a mapping of keys (listeners:, routes:, ...)`,
  ]);
  const empty = d.write('empty.yaml', '');
  assert.deepEqual(await problemsOf(empty), [`${empty}: listeners: is required`]);
});

test('identity keys are accepted without warnings', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gh.yaml',
    `${BASE}
identity:
  bearer: [{ issuer: https://idp.example.com, audiences: [api] }]
`,
  );
  const r = await loadConfig(file, {});
  assert.ok(r.ok);
  assert.deepEqual(r.warnings.map(formatProblem), []);
});

test('secret files are resolved relative to the main configuration file, also from includes', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  d.write('secrets/token', 'abc\n');
  const main = d.write('main.yaml', `include: [sub/ups.yaml]\nlisteners: [{ name: p, bind: 127.0.0.1:0 }]\n`);
  d.write(
    'sub/ups.yaml',
    'upstreams:\n  u: { servers: [{ url: http://127.0.0.1:9 }], inject: { headers: { X-T: file:secrets/token } } }\n',
  );
  const r = await loadConfig(main, {});
  assert.ok(r.ok, r.ok ? '' : r.problems.map(formatProblem).join('\n'));
  assert.equal(r.secrets.expand(r.config.upstreams.u!.inject!.headers['X-T']!), 'abc');
});

test('a route path prefix that no normalized request path can carry is reported against match.path', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gh.yaml',
    BASE.replace(
      '  - { name: all, upstream: app }',
      '  - { name: admin, match: { path: "/admin;v=1" }, upstream: app, public: true }\n  - { name: q, match: { path: "/a?b" }, upstream: app, public: true }',
    ),
  );
  const problems = await problemsOf(file);
  assert.deepEqual(
    problems.map((p) => p.split(': ')[1]),
    ['routes.0.match.path', 'routes.1.match.path'],
  );
});

test('a timeout, interval or backoff longer than a timer can wait (24.8 days) is refused; session lifetimes may be longer', async () => {
  const d = tempDir();
  const file = d.write(
    'gatehouse.yaml',
    `
listeners:
  - { name: plain, bind: 127.0.0.1:0 }
server: { drainTimeout: 30d }
identity:
  session: { secrets: ["a-session-secret-of-at-least-32-chars"], maxAge: 30d, idleTimeout: 25d }
upstreams:
  app:
    servers: [{ url: http://127.0.0.1:9 }]
    dns: { refresh: 25d }
    healthCheck: { interval: 24d }
routes:
  - { name: app, upstream: app, public: true, websocket: { idleTimeout: 100d } }
`,
  );
  const problems = await problemsOf(file);
  const msg = 'must be at most 24d: a timer cannot wait longer';
  assert.deepEqual(problems.sort(), [
    `${file}: routes.0.websocket.idleTimeout: ${msg}`,
    `${file}: server.drainTimeout: ${msg}`,
    `${file}: upstreams.app.dns.refresh: ${msg}`,
  ]);
});
test('a timeout or interval of 0 is refused at its key: it would mean no limit, or a busy loop', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gh.yaml',
    `
listeners:
  - { name: plain, bind: 127.0.0.1:0 }
server: { headersTimeout: 0s, keepAliveTimeout: 0ms, clientIdleTimeout: 0m, drainTimeout: 0s }
upstreams:
  app:
    servers: [{ url: http://127.0.0.1:9 }]
    healthCheck: { interval: 0s, timeout: 0ms }
    timeouts: { connect: 0s, response: 0s, idle: 0s }
routes:
  - { name: all, upstream: app, public: true, websocket: { idleTimeout: 0s, finTimeout: 0s }, timeouts: { idle: 0s } }
`,
  );
  const problems = await problemsOf(file);
  assert.deepEqual(problems.map((p) => p.split(': ').slice(1).join(': ')).sort(), [
    'routes.0.timeouts.idle: must be more than 0',
    'routes.0.websocket.finTimeout: must be more than 0',
    'routes.0.websocket.idleTimeout: must be more than 0',
    'server.clientIdleTimeout: must be more than 0',
    'server.headersTimeout: must be more than 0',
    'server.keepAliveTimeout: must be more than 0',
    'upstreams.app.healthCheck.interval: must be more than 0',
    'upstreams.app.healthCheck.timeout: must be more than 0',
    'upstreams.app.timeouts.connect: must be more than 0',
    'upstreams.app.timeouts.idle: must be more than 0',
    'upstreams.app.timeouts.response: must be more than 0',
  ]);
});

test('a server URL with a query, fragment or user:password@ is refused: only its origin would be used', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gh.yaml',
    BASE.replace(
      'app: { servers: [{ url: http://127.0.0.1:9 }] }',
      `app: { servers: [{ url: "http://u:p@127.0.0.1:9" }, { url: "http://127.0.0.1:9?x=1" }, { url: "http://127.0.0.1:9#f" }, { url: "http://127.0.0.1:9/" }] }`,
    ),
  );
  const problems = await problemsOf(file);
  assert.deepEqual(
    problems.map((p) => p.split(': ')[1]),
    ['upstreams.app.servers.0.url', 'upstreams.app.servers.1.url', 'upstreams.app.servers.2.url'],
  );
});

test('a header value with a line break or NUL is refused by check, literal or from a secret', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  d.write('token', 'abc\ndef\n');
  const file = d.write(
    'gh.yaml',
    `
listeners:
  - { name: plain, bind: 127.0.0.1:0 }
upstreams:
  app:
    servers: [{ url: http://127.0.0.1:9 }]
    inject: { headers: { Authorization: "Bearer \${file:token}", X-Lit: "a\\r\\nX-Evil: 1", X-Ok: "\${env:TOKEN}" } }
routes:
  - name: all
    upstream: app
    public: true
    headers: { request: { set: { X-A: "a\\nb" } }, response: { set: { X-B: "\\u0000" } } }
`,
  );
  const problems = await problemsOf(file, { TOKEN: 'plain-token\n' });
  assert.deepEqual(problems.map((p) => p.split(': ')[1]).sort(), [
    'routes.0.headers.request.set.X-A',
    'routes.0.headers.response.set.X-B',
    'upstreams.app.inject.headers.Authorization',
    'upstreams.app.inject.headers.X-Lit',
  ]);
});

test('a CORS origin that no Origin header can equal is refused (trailing slash, default port, no scheme)', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gh.yaml',
    BASE.replace(
      '  - { name: all, upstream: app }',
      `  - name: all
    upstream: app
    public: true
    cors:
      origins: ["https://a.example/", "https://a.example:443", "a.example", "https://*.a.example", "null",
                "https://A.example", "http://localhost:3000", "http://[::1]:8080", "*"]`,
    ),
  );
  const problems = await problemsOf(file);
  assert.deepEqual(
    problems.map((p) => p.split(': ')[1]),
    [0, 1, 2, 3, 4].map((i) => `routes.0.cors.origins.${i}`),
  );
});

test('listeners and the admin listener on one port conflict when one address is a wildcard covering the other', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gh.yaml',
    BASE.replace(
      '  - { name: plain, bind: 127.0.0.1:0 }',
      `  - { name: all, bind: ":18401" }
  - { name: lo, bind: "127.0.0.1:18401" }
  - { name: v6, bind: "[::1]:18401" }
  - { name: dual, bind: "[::]:18402" }
  - { name: v4, bind: "10.0.0.1:18402" }
  - { name: any, bind: "127.0.0.1:0" }
  - { name: any2, bind: "0.0.0.0:0" }
admin: { bind: "0.0.0.0:18401" }`,
    ),
  );
  const problems = await problemsOf(file);
  assert.deepEqual(
    problems.map((p) => p.split(': ').slice(1).join(': ')),
    [
      'listeners.1.bind: 127.0.0.1:18401 is also used by listener all',
      'listeners.4.bind: 10.0.0.1:18402 is also used by listener dual',
      'admin.bind: 0.0.0.0:18401 is also used by listener all',
    ],
  );
});

test('an admin listener off loopback without a token is a warning at admin.bind (the API would answer 403)', async () => {
  const d = tempDir();
  const base = 'listeners: [{ name: l, bind: "127.0.0.1:0" }]\n';
  const off = await loadConfig(d.write('off.yaml', `${base}admin: { bind: "0.0.0.0:19900" }\n`), {});
  assert.equal(off.ok, true);
  assert.deepEqual(off.warnings.map(formatProblem), [
    `${d.file('off.yaml')}: admin.bind: 0.0.0.0:19900 is not a loopback address and admin.token is not set: /api/v1 will answer 403`,
  ]);
  for (const admin of [
    '{ bind: "127.0.0.1:19900" }',
    '{ bind: "[::1]:19900" }',
    '{ bind: "0.0.0.0:19900", token: t }',
  ]) {
    const r = await loadConfig(d.write('on.yaml', `${base}admin: ${admin}\n`), {});
    assert.deepEqual(r.warnings, [], admin);
  }
});

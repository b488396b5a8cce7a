import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { main } from '../src/cli/main.js';
import { loadConfig } from '../src/config/load.js';
import { ApiKeyAuthenticator, hashApiKey } from '../src/identity/apikeys.js';
import { generateAssertionJwk } from '../src/identity/assertion.js';
import { ROOT, runCli, selfSigned, tempDir } from './helpers/gateway.js';

const VALID = `
listeners: [{ name: plain, bind: 127.0.0.1:0 }]
upstreams:
  app: { servers: [{ url: http://127.0.0.1:9001 }, { url: http://127.0.0.1:9002 }] }
  canary: { servers: [{ url: http://127.0.0.1:9003 }] }
policies:
  eng: { allow: [{ groups: [eng] }] }
routes:
  - { name: api, match: { host: api.example.com, path: /v1/ }, upstream: app, policy: eng }
  - name: web
    match: { path: / }
    split: { targets: [{ upstream: app, weight: 90 }, { upstream: canary, weight: 10 }], pinHeader: X-Canary }
    public: true
tests:
  - { name: eng can call, as: { groups: [eng] }, request: { url: https://api.example.com/v1/x }, expect: allow }
`;

// A provider (login offered), a named policy with a deny rule, a weekday-only policy and an inline
// policy. The tests avoid the weekday route: `check` runs them at the current time.
const IDENTITY = `
listeners: [{ name: plain, bind: 127.0.0.1:0 }]
identity:
  session: { secrets: [env:CLI_TEST_SESSION_SECRET] }
  providers: [{ name: corp, type: oidc, issuer: https://idp.example.com, clientId: gatehouse }]
upstreams:
  app: { servers: [{ url: http://127.0.0.1:9001 }] }
policies:
  eng:
    allow: [{ groups: [eng] }]
    deny: [{ name: blocked-net, sourceIp: [203.0.113.0/24] }]
  weekdays:
    allow: [{ groups: [eng] }]
    deny: [{ name: no-weekends, time: { days: [sat, sun], timezone: Europe/Paris } }]
routes:
  - { name: api, match: { host: api.example.com, path: /v1/ }, upstream: app, policy: eng }
  - { name: batch, match: { host: api.example.com, path: /batch/ }, upstream: app, policy: weekdays }
  - name: admin
    match: { host: api.example.com, path: /admin }
    upstream: app
    policy: { allow: [{ email: [ops@example.com] }] }
tests:
  - { name: eng can call, as: { email: alice@example.com, groups: [eng] }, request: { url: "https://api.example.com/v1/x" }, expect: allow }
  - { name: bob can call too, as: { email: bob@example.com, groups: [analysts] }, request: { url: "https://api.example.com/v1/x" }, expect: allow }
  - { name: anonymous signs in, request: { url: "https://api.example.com/v1/x" }, expect: login }
  - { name: admins only, as: { email: alice@example.com, groups: [eng] }, request: { url: "https://api.example.com/admin" }, expect: 200 }
`;

// A fixed time for explain, so the output does not depend on the clock.
const MONDAY = '2026-01-05T12:00:00Z';

/** Runs main() in-process with captured output. */
async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, {
    out: (text) => {
      out += text;
    },
    err: (text) => {
      err += text;
    },
  });
  return { code, out, err };
}

function lines(text: string): string[] {
  return text.split('\n').filter((l) => l !== '');
}

test('check: a valid config exits 0 with a summary, runs its policy tests, warnings on stderr', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write('gh.yaml', VALID);
  const r = await runCli(['check', '-c', file]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `${file}: ok (2 routes, 2 upstreams)\n${file}: 1 policy test passed\n`);
  // Whatever the loader warns about, stderr holds warnings only, and the tests were run.
  for (const line of lines(r.stderr)) assert.match(line, /^\S+: \S+: warning: /);
  assert.doesNotMatch(r.stderr, /not run/);
});

test('check --verbose lists every policy test', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write('gh.yaml', VALID);
  const r = await run(['check', '--verbose', '-c', file]);
  assert.equal(r.code, 0, r.err);
  assert.deepEqual(lines(r.out), [
    'ok   eng can call: allow: allow (rule eng.allow[0]) for test-user [policy-allow:eng.allow[0]]',
    `${file}: ok (2 routes, 2 upstreams)`,
    `${file}: 1 policy test passed`,
  ]);
});

test('check: a failing policy test is named with its location and the command exits 1', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write('gh.yaml', IDENTITY);
  const r = await runCli(['check', '-c', 'gh.yaml'], {
    cwd: d.dir,
    env: { ...process.env, CLI_TEST_SESSION_SECRET: 's'.repeat(40) },
  });
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stdout, '');
  const errors = lines(r.stderr).filter((l) => !/: warning: /.test(l));
  assert.deepEqual(errors, [
    'gh.yaml: tests.1: test "bob can call too" failed: expected allow, got forbidden (403) for bob@example.com: no allow rule matches [no-allow-rule]',
    'gh.yaml: tests.3: test "admins only" failed: expected 200, got forbidden (403) for alice@example.com: no allow rule matches [no-allow-rule]',
    'gh.yaml: 2 policy tests failed, 2 passed',
  ]);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
  assert.ok(file.endsWith('gh.yaml'));
});

test('check: a malformed test (unusable identity) fails by name, not with a crash', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gh.yaml',
    `${VALID}  - { name: odd identity, as: { authMethod: telepathy }, request: { url: https://api.example.com/v1/x }, expect: allow }\n`,
  );
  const r = await run(['check', '-c', file]);
  assert.equal(r.code, 1);
  assert.match(
    r.err,
    new RegExp(
      `^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: tests\\.1: test "odd identity" failed: invalid test: as\\.authMethod: must be one of`,
      'm',
    ),
  );
  assert.match(r.err, /: 1 policy test failed, 1 passed$/m);
});

test('check: a policy that cannot be compiled is reported at its path', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gh.yaml',
    VALID.replace(
      'eng: { allow: [{ groups: [eng] }] }',
      'eng: { allow: [{ time: { timezone: Mars/Olympus } }] }',
    ),
  );
  const r = await run(['check', '-c', file]);
  assert.equal(r.code, 1);
  assert.equal(r.out, '');
  assert.match(
    r.err,
    new RegExp(`^${file}: policies\\.eng\\.allow\\.0\\.time\\.timezone: .*Mars/Olympus`, 'm'),
  );
  assert.doesNotMatch(r.err, /\n\s+at /);
});

test('check: the design example passes, policy tests included, once its files and secrets exist', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write('design.yaml', readFileSync(path.join(ROOT, 'examples/design.yaml'), 'utf8'));
  const { cert, key } = selfSigned('airbyte.example.com', ['airbyte.example.com']);
  d.write('certs/site.pem', cert);
  d.write('certs/site-key.pem', key);
  d.write('keys/assertion.jwk', JSON.stringify(generateAssertionJwk('ES256')));
  d.write('secrets/airbyte-token', 'airbyte-token-value\n');
  const r = await runCli(['check', '-c', file], {
    env: {
      ...process.env,
      GATEHOUSE_ADMIN_TOKEN: 'admin-token-for-the-test',
      GATEHOUSE_SESSION_SECRET: 'a-session-secret-of-at-least-32-characters',
      OIDC_CLIENT_SECRET: 'oidc-client-secret',
    },
  });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `${file}: ok (2 routes, 1 upstream)\n${file}: 2 policy tests passed\n`);
});

test('check: the demo configuration passes as written', async () => {
  const file = path.join(ROOT, 'examples/demo.yaml');
  const r = await run(['check', '-c', file]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /: ok \(4 routes, 3 upstreams\)\n.*: 9 policy tests passed\n$/);
});

test('check: an invalid config exits 1 with one line per problem and no stack trace', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  d.write(
    'gh.yaml',
    `
listeners:
  - { name: plain, bind: 127.0.0.1:0, foo: 1 }
  - name: tls
    bind: 127.0.0.1:0
    tls: { certificates: [{ cert: file:certs/site.pem, key: file:certs/site-key.pem }] }
upstreams:
  app: { servers: [{ url: http://127.0.0.1:9001 }], timeouts: { connect: soon } }
routes:
  - { name: api, upstream: ap }
  - { name: api, upstream: app }
`,
  );
  const r = await runCli(['check', '-c', 'gh.yaml'], { cwd: d.dir });
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  assert.deepEqual(r.stderr.trim().split('\n'), [
    'gh.yaml: listeners.0.foo: unknown key',
    'gh.yaml: upstreams.app.timeouts.connect: invalid duration "soon" (expected e.g. 500ms, 30s, 5m, 12h)',
    'gh.yaml: routes.0.upstream: unknown upstream "ap" (defined: app)',
    'gh.yaml: routes.1.name: duplicate route name "api" (first defined at gh.yaml: routes.0)',
    'gh.yaml: listeners.1.tls.certificates.0.cert: cannot read file certs/site.pem (ENOENT)',
    'gh.yaml: listeners.1.tls.certificates.0.key: cannot read file certs/site-key.pem (ENOENT)',
    'gh.yaml: 6 problem(s) found',
  ]);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
});

test('check: a missing file is a clean error with exit 1', async () => {
  const r = await run(['check', '-c', '/nonexistent/gatehouse.yaml']);
  assert.equal(r.code, 1);
  assert.match(r.err, /^\/nonexistent\/gatehouse\.yaml: \(root\): cannot read file \(ENOENT\)$/m);
});

test('usage errors exit 2 with the usage on stderr', async () => {
  for (const argv of [
    ['check'],
    ['frobnicate'],
    [],
    ['check', '-c'],
    ['explain', '-c', 'x.yaml'],
    ['check', '--bogus'],
    ['explain', '-c', 'x.yaml', '--source-ip', 'not-an-ip', 'GET', 'http://h/'],
    ['explain', '-c', 'x.yaml', '--header', 'no colon here', 'GET', 'http://h/'],
    ['explain', '-c', 'x.yaml', '--at', 'yesterday', 'GET', 'http://h/'],
    ['explain', '-c', 'x.yaml', '--at', '2026-01-05T12:00', 'GET', 'http://h/'],
    ['explain', '-c', 'x.yaml', 'GET', 'ftp://h/x'],
    ['explain', '-c', 'x.yaml', '--as', 'nokey', 'GET', 'http://h/'],
  ]) {
    const r = await run(argv);
    assert.equal(r.code, 2, argv.join(' '));
    assert.match(r.err, /Usage: gatehouse <command>/);
    assert.equal(r.out, '');
  }
});

test('help and version', async () => {
  const help = await run(['--help']);
  assert.equal(help.code, 0);
  assert.match(help.out, /check -c FILE/);
  assert.match(help.out, /explain -c FILE .*--source-ip IP/);
  assert.match(help.out, /apikey create --id ID --subject S/);
  const v = await run(['version']);
  assert.equal(v.code, 0);
  // The tests run under plain `node`, without the flags bin/gatehouse passes when run as a program.
  assert.match(v.out, /^gatehouse \d+\.\d+\.\d+\nnode v\d+\.\d+\.\d+ \(without --single-threaded-gc\)\n$/);
});

test('explain prints the route and upstream offline, without secrets', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  // The certificate files do not exist: explain does not need them.
  const file = d.write(
    'gh.yaml',
    VALID.replace(
      'listeners: [{ name: plain, bind: 127.0.0.1:0 }]',
      'listeners: [{ name: s, bind: 127.0.0.1:0, tls: { certificates: [{ cert: file:nope.pem, key: file:nope-key.pem }] } }]',
    ),
  );
  const api = await run([
    'explain',
    '-c',
    file,
    '--as',
    'email=alice@example.com,groups=eng',
    'GET',
    'https://api.example.com/v1/jobs?x=1',
  ]);
  assert.equal(api.code, 0, api.err);
  assert.match(api.out, /^route: api$/m);
  assert.match(api.out, /^upstream: app \(http:\/\/127\.0\.0\.1:9001, http:\/\/127\.0\.0\.1:9002\)$/m);
  assert.match(api.out, /^policy: policy "eng"$/m);
  assert.match(
    api.out,
    /^identity: alice@example\.com \(subject alice@example\.com, groups \[eng\], authMethod session\)$/m,
  );
  assert.doesNotMatch(api.out, /not yet supported/);

  const web = await run(['explain', '-c', file, 'get', 'http://other.example.com/index.html']);
  assert.equal(web.code, 0, web.err);
  assert.match(web.out, /^route: web$/m);
  assert.match(web.out, /^upstream: split between app \(90%\), canary \(10%\)$/m);
  assert.match(web.out, /^decision: allow \(public route\)$/m);

  const bad = await run(['explain', '-c', file, 'GET', 'http://x.example.com/a/%2e%2e/%2e%2e/etc']);
  assert.equal(bad.code, 0);
  assert.match(bad.out, /decision: reject \(400\)/);
});

test('explain: allow, deny and login decisions with the deciding rule and reason', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  // The session secret is an env: reference that is not set: explain works without secrets.
  const file = d.write('gh.yaml', IDENTITY);
  const url = 'https://api.example.com/v1/jobs';

  const allow = await run([
    'explain',
    '-c',
    file,
    '--as',
    'email=alice@example.com,groups=eng',
    '--at',
    MONDAY,
    'POST',
    url,
  ]);
  assert.equal(allow.code, 0, allow.err);
  assert.deepEqual(lines(allow.out), [
    `request: POST ${url}`,
    'identity: alice@example.com (subject alice@example.com, groups [eng], authMethod session)',
    'route: api',
    'upstream: app (http://127.0.0.1:9001)',
    'policy: policy "eng"',
    '  deny  blocked-net: sourceIp: [203.0.113.0/24] -> no match (sourceIp)',
    '  allow eng.allow[0]: groups: [eng] -> match, decides',
    'login providers: corp',
    'rule: eng.allow[0]',
    'reason: policy-allow:eng.allow[0]',
    'decision: allow (rule eng.allow[0]) for alice@example.com',
  ]);

  const fromBlocked = await run([
    'explain',
    '-c',
    file,
    '--as',
    'email=alice@example.com,groups=eng',
    '--source-ip',
    '203.0.113.9',
    '--at',
    MONDAY,
    'GET',
    url,
  ]);
  assert.equal(fromBlocked.code, 0, fromBlocked.err);
  assert.match(fromBlocked.out, /^source: 203\.0\.113\.9$/m);
  assert.match(fromBlocked.out, /^ {2}deny {2}blocked-net: .* -> match, decides$/m);
  assert.match(fromBlocked.out, /^rule: blocked-net$/m);
  assert.match(fromBlocked.out, /^reason: policy-deny:blocked-net$/m);
  assert.match(
    fromBlocked.out,
    /^decision: forbidden \(403\) for alice@example\.com: denied by rule blocked-net$/m,
  );

  // The time rule is read in its own time zone: Friday 23:30 UTC is already Saturday in Paris.
  const batch = 'https://api.example.com/batch/run';
  const friday = await run([
    'explain',
    '-c',
    file,
    '--as',
    'groups=eng',
    '--at',
    '2026-01-02T22:30:00Z',
    'GET',
    batch,
  ]);
  assert.match(friday.out, /^reason: policy-allow:weekdays\.allow\[0\]$/m);
  const saturday = await run([
    'explain',
    '-c',
    file,
    '--as',
    'groups=eng',
    '--at',
    '2026-01-02T23:30:00Z',
    'GET',
    batch,
  ]);
  assert.match(saturday.out, /^ {2}deny {2}no-weekends: time: .* -> match, decides$/m);
  assert.match(saturday.out, /^reason: policy-deny:no-weekends$/m);

  const other = await run([
    'explain',
    '-c',
    file,
    '--as',
    'email=bob@example.com,groups=analysts|ops',
    '--at',
    MONDAY,
    'GET',
    url,
  ]);
  assert.match(
    other.out,
    /^identity: bob@example\.com \(subject bob@example\.com, groups \[analysts, ops\], authMethod session\)$/m,
  );
  assert.match(other.out, /^reason: no-allow-rule$/m);
  assert.match(other.out, /^decision: forbidden \(403\) for bob@example\.com: no allow rule matches$/m);

  const anonymous = await run(['explain', '-c', file, '--at', MONDAY, 'GET', url]);
  assert.equal(anonymous.code, 0, anonymous.err);
  assert.match(anonymous.out, /^identity: anonymous$/m);
  assert.match(anonymous.out, /^reason: user-unauthenticated$/m);
  assert.match(anonymous.out, /^decision: login \(302\): sign-in required, redirect to the login page$/m);

  // A script (not an HTML navigation) gets 401 instead of a redirect; headers are given like curl's -H.
  const script = await run([
    'explain',
    '-c',
    file,
    '--header',
    'Accept: application/json',
    '-H',
    'X-Requested-With: XMLHttpRequest',
    '--at',
    MONDAY,
    'GET',
    url,
  ]);
  assert.equal(script.code, 0, script.err);
  assert.match(script.out, /^decision: unauthenticated \(401\): sign-in required$/m);

  const inline = await run([
    'explain',
    '-c',
    file,
    '--as',
    'email=ops@example.com',
    'GET',
    'https://api.example.com/admin',
  ]);
  assert.match(inline.out, /^policy: inline policy$/m);
  assert.match(inline.out, /^decision: allow \(rule admin\.allow\[0\]\) for ops@example\.com$/m);
});

test('explain: an identity the decision core cannot use is a usage error (exit 2)', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write('gh.yaml', IDENTITY);
  const r = await run([
    'explain',
    '-c',
    file,
    '--as',
    'authMethod=telepathy',
    'GET',
    'https://api.example.com/v1/x',
  ]);
  assert.equal(r.code, 2);
  assert.match(r.err, /^gatehouse: --as: as\.authMethod: must be one of session, bearer, apiKey, mtls$/m);
  assert.equal(r.out, '');
});

test('explain reports no route as 404', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gh.yaml',
    'listeners: [{ name: p, bind: 127.0.0.1:0 }]\nupstreams: { a: { servers: [{ url: http://127.0.0.1:9 }] } }\nroutes: [{ name: only, match: { path: /only }, upstream: a }]\n',
  );
  const r = await run(['explain', '-c', file, 'GET', 'http://h/elsewhere']);
  assert.equal(r.code, 0);
  assert.match(r.out, /^route: none$/m);
  assert.match(r.out, /decision: 404/);
});

test('apikey create prints a key once and a config entry whose hash matches it', async (t) => {
  const r = await run([
    'apikey',
    'create',
    '--id',
    'etl-agent',
    '--subject',
    'agent:etl',
    '--groups',
    'agents,etl',
    '--routes',
    'api',
  ]);
  assert.equal(r.code, 0, r.err);
  const key = /^ {2}(ghk_etl-agent_[A-Za-z0-9_-]{43})$/m.exec(r.out)?.[1];
  assert.ok(key, r.out);
  const entry = /^ {2}(- \{ id: etl-agent, hash: "(sha256:[0-9a-f]{64})", .*\})$/m.exec(r.out);
  assert.ok(entry, r.out);
  assert.equal(entry[2], hashApiKey(key));
  assert.doesNotMatch(entry[1]!, new RegExp(key), 'the entry never holds the key itself');

  // The printed entry, pasted into a configuration, authenticates the printed key on its route only.
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gh.yaml',
    `listeners: [{ name: p, bind: 127.0.0.1:0 }]
upstreams: { a: { servers: [{ url: http://127.0.0.1:9 }] } }
routes: [{ name: api, match: { path: /api/ }, upstream: a, policy: { allow: [{ groups: [agents] }] } }]
identity:
  apiKeys:
  ${entry[1]}
`,
  );
  const loaded = await loadConfig(file);
  assert.ok(loaded.ok, JSON.stringify(!loaded.ok && loaded.problems));
  const keys = new ApiKeyAuthenticator(loaded.config.identity?.apiKeys ?? []);
  const ok = keys.authenticate(key, 'api');
  assert.equal(ok.kind, 'ok');
  assert.equal(ok.kind === 'ok' && ok.identity.subject, 'agent:etl');
  assert.deepEqual(ok.kind === 'ok' && ok.identity.groups, ['agents', 'etl']);
  const elsewhere = keys.authenticate(key, 'other');
  assert.equal(elsewhere.kind === 'invalid' && elsewhere.reason, 'api-key-out-of-scope');

  // Two runs never print the same key.
  const again = await run(['apikey', 'create', '--id', 'etl-agent', '--subject', 'agent:etl']);
  assert.doesNotMatch(again.out, new RegExp(key));
});

test('apikey: usage and bad input exit 2', async () => {
  const none = await run(['apikey']);
  assert.equal(none.code, 2);
  assert.match(none.out + none.err, /gatehouse apikey create --id ID --subject SUBJECT/);
  for (const argv of [
    ['apikey', 'delete'],
    ['apikey', 'create', '--subject', 'x'],
    ['apikey', 'create', '--id', 'x'],
    ['apikey', 'create', '--id', 'bad id', '--subject', 'x'],
    ['apikey', 'create', '--id', 'x', '--subject', 'x', '--expires', '2001-01-01'],
    ['apikey', 'create', '--id', 'x', '--subject', 'x', '--bogus', '1'],
  ]) {
    const r = await run(argv);
    assert.equal(r.code, 2, argv.join(' '));
    assert.match(r.err, /^gatehouse apikey: /);
    assert.equal(r.out, '');
  }
});

test('check --at runs the policy tests at that time (weekday rules), and rejects a bad date-time', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gh.yaml',
    `
listeners: [{ name: plain, bind: 127.0.0.1:0 }]
identity:
  apiKeys: [{ id: k, hash: "sha256:${'0'.repeat(64)}", subject: agent, groups: [eng] }]
upstreams:
  app: { servers: [{ url: http://127.0.0.1:9001 }] }
policies:
  weekdays:
    allow: [{ groups: [eng] }]
    deny: [{ name: no-weekends, time: { days: [sat, sun], timezone: Europe/Paris } }]
routes:
  - { name: batch, match: { path: /batch/ }, upstream: app, policy: weekdays }
tests:
  - { name: eng runs batches, as: { groups: [eng] }, request: { url: "https://x.example.com/batch/run" }, expect: allow }
`,
  );
  // 2026-01-05 is a Monday, 2026-01-10 a Saturday (in Paris as in UTC at noon).
  const monday = await run(['check', '-c', file, '--at', '2026-01-05T12:00:00Z']);
  assert.equal(monday.code, 0, monday.err);
  assert.match(monday.out, /1 policy test passed/);
  const saturday = await run(['check', '-c', file, '--at', '2026-01-10T12:00:00+01:00']);
  assert.equal(saturday.code, 1);
  assert.match(
    saturday.err,
    /tests\.0: test "eng runs batches" failed: expected allow, got forbidden \(403\).*\[policy-deny:no-weekends\]/,
  );
  const bad = await run(['check', '-c', file, '--at', 'next saturday']);
  assert.equal(bad.code, 2);
  assert.match(bad.err, /--at: "next saturday" is not an ISO date-time/);
});

test('check: rate limits and quotas are validated with their paths (rates, keys, windows)', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const good = d.write(
    'good.yaml',
    `
listeners: [{ name: plain, bind: 127.0.0.1:0 }]
upstreams:
  app: { servers: [{ url: http://127.0.0.1:9001 }] }
quotas:
  monthly: { key: header:X-Tenant, limit: 1000, window: month, timeZone: Europe/Paris, cost: header:X-Rows }
routes:
  - { name: web, match: { path: / }, upstream: app, public: true, rateLimit: { rate: 10/s, burst: 20, delay: 1s } }
`,
  );
  const ok = await run(['check', '-c', good]);
  assert.equal(ok.code, 0, ok.err);
  assert.doesNotMatch(ok.err, /not enforced/);

  const bad = d.write(
    'bad.yaml',
    `
listeners: [{ name: plain, bind: 127.0.0.1:0 }]
upstreams:
  app: { servers: [{ url: http://127.0.0.1:9001 }] }
quotas:
  c: { limit: 10, window: fortnight }
routes:
  - { name: web, match: { path: / }, upstream: app, public: true, rateLimit: { rate: 10/fortnight, key: cookie } }
`,
  );
  const r = await run(['check', '-c', bad]);
  assert.equal(r.code, 1);
  assert.match(r.err, /routes\.0\.rateLimit\.rate: invalid rate "10\/fortnight"/);
  assert.match(
    r.err,
    /routes\.0\.rateLimit\.key: expected identity, ip, apiKey, claim:<path> or header:<name>/,
  );
  assert.match(r.err, /quotas\.c\.window: invalid quota window "fortnight"/);
});

test('check: quotas that compile but name unknown routes or time zones are refused with their paths', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const bad = d.write(
    'bad.yaml',
    `
listeners: [{ name: plain, bind: 127.0.0.1:0 }]
upstreams:
  app: { servers: [{ url: http://127.0.0.1:9001 }] }
quotas:
  a: { limit: 10, window: 1d, routes: [nope] }
  b: { limit: 10, window: month, timeZone: Mars/Olympus }
  d: { limit: 10, window: 1d, when: { time: { timezone: Nowhere/Land } } }
routes:
  - { name: web, match: { path: / }, upstream: app, public: true }
`,
  );
  const r = await run(['check', '-c', bad]);
  assert.equal(r.code, 1);
  assert.match(r.err, /quotas\.a\.routes\.0: unknown route "nope"/);
  assert.match(r.err, /quotas\.b\.timeZone: unknown time zone "Mars\/Olympus"/);
  assert.match(r.err, /quotas\.d\.when\.time\.timezone: unknown time zone/);
});

test('check: the companion-mode examples (SPOE-only, forward-auth) pass as written, given their secrets', async () => {
  for (const dir of ['haproxy', 'nginx', 'caddy', 'traefik']) {
    const file = path.join(ROOT, `examples/${dir}/gatehouse.yaml`);
    const r = await runCli(['check', '-c', file], {
      env: {
        ...process.env,
        GATEHOUSE_SESSION_SECRET: 'a-session-secret-of-at-least-32-characters',
        OIDC_CLIENT_SECRET: 'oidc-client-secret',
      },
    });
    assert.equal(r.code, 0, `${dir}: ${r.stderr}`);
    assert.match(r.stdout, /: ok \(\d+ routes?, \d+ upstreams?\)\n/, dir);
    // The API key hash is a placeholder in every example: a warning, not a problem.
    assert.match(r.stderr, /placeholder/, dir);
  }
});

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { main } from '../src/cli/main.js';
import { runCli, tempDir } from './helpers/gateway.js';

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

test('check: a valid config exits 0 with a summary and warnings on stderr', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write('gh.yaml', VALID);
  const r = await runCli(['check', '-c', file]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `${file}: ok (2 routes, 2 upstreams)\n`);
  const lines = r.stderr.trim().split('\n');
  assert.deepEqual(lines, [
    `${file}: routes.0.policy: warning: policies are not yet enforced (not yet supported)`,
    `${file}: tests: warning: 1 policy test(s) not run: policy evaluation is not yet supported`,
  ]);
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
  const v = await run(['version']);
  assert.equal(v.code, 0);
  assert.match(v.out, /^gatehouse \d+\.\d+\.\d+\n$/);
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
  assert.match(api.out, /identity decision: not yet supported/);
  assert.match(api.out, /^identity: \{"email":"alice@example.com","groups":\["eng"\]\}$/m);

  const web = await run(['explain', '-c', file, 'get', 'http://other.example.com/index.html']);
  assert.equal(web.code, 0, web.err);
  assert.match(web.out, /^route: web$/m);
  assert.match(web.out, /^upstream: split between app \(90%\), canary \(10%\)$/m);
  assert.match(web.out, /^decision: allow \(public route\)$/m);

  const bad = await run(['explain', '-c', file, 'GET', 'http://x.example.com/a/%2e%2e/%2e%2e/etc']);
  assert.equal(bad.code, 0);
  assert.match(bad.out, /decision: reject \(400\)/);
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

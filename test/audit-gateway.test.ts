/**
 * The audit trail of a running gateway: what it records of access decisions (allowed and refused, with
 * the identity, its groups, the route and rule, the redacted query), sign-in and sign-out, configuration
 * loads and reloads (with the SHA-256 of every file) and rejected reloads, the gateway's start and stop;
 * that no credential ever enters it; that `audit.decisions: refused` leaves out only allowed requests;
 * that the key is the configured one or the one kept in the state store (published by the admin API);
 * and that `gatehouse audit verify` accepts the trail a gateway wrote and refuses it once edited.
 */
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { type TestContext, test } from 'node:test';
import { startEchoBackend } from '../src/demo/backends.js';
import { generateApiKey } from '../src/identity/apikeys.js';
import { createLogger } from '../src/observe/log.js';
import { Gateway } from '../src/process/gateway.js';
import { runCli, type TempDir, tempDir } from './helpers/gateway.js';
import { freePort } from './helpers/listen.js';
import { LineCollector, origin, request } from './helpers/observe.js';
import { startIdp } from './helpers/oidc.js';
import { CookieJar, hop, signInOverHttp } from './helpers/signin.js';

const alice = generateApiKey('alice');
const bob = generateApiKey('bob');
const ADMIN_TOKEN = 'audit-admin-t0ken';

type Line = Record<string, unknown>;

function readTrail(file: string): { lines: Line[]; text: string } {
  const text = readFileSync(file, 'utf8');
  return {
    text,
    lines: text
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as Line),
  };
}

function ed25519Jwk(): string {
  return JSON.stringify(generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' }));
}

function config(
  echoUrl: string,
  extra = '',
  audit = 'file: audit.jsonl, signingKey: file:audit-key.jwk',
): string {
  return `
listeners: [{ name: plain, bind: "127.0.0.1:0" }]
admin: { bind: "127.0.0.1:0", token: env:ADMIN_TOKEN }
audit: { ${audit}, checkpoint: { lines: 4 } }
logging: { level: fatal, access: false }
identity:
  apiKeys:
    - { id: alice, hash: "${alice.hashLine}", subject: "agent:alice", groups: [agents] }
    - { id: bob, hash: "${bob.hashLine}", subject: "agent:bob", groups: [interns] }
upstreams:
  echo: { servers: [{ url: "${echoUrl}" }] }
routes:
  - name: api
    match: { path: /api/ }
    upstream: echo
    policy: { allow: [{ name: agents-only, groups: [agents] }] }
  - { name: open, match: { path: /open/ }, upstream: echo, public: true }
${extra}`;
}

/**
 * A gateway on `config(echo, '', audit)` in a temporary folder that holds an Ed25519 key as
 * `audit-key.jwk`, with the echo upstream; everything is stopped when `t` ends.
 */
async function auditedGateway(
  t: TestContext,
  audit?: string,
): Promise<{ gw: Gateway; d: TempDir; file: string; plain: string; echoUrl: string }> {
  const echo = await startEchoBackend();
  t.after(() => echo.close());
  const d = tempDir();
  t.after(() => d.remove());
  d.write('audit-key.jwk', ed25519Jwk());
  const file = d.write('gatehouse.yaml', config(echo.url, '', audit));
  const gw = await startGateway(t, file);
  return { gw, d, file, plain: origin(gw.address('plain')!), echoUrl: echo.url };
}

async function startGateway(t: TestContext, file: string): Promise<Gateway> {
  const gw = await Gateway.start({
    configFile: file,
    env: { ADMIN_TOKEN },
    watch: false,
    logger: createLogger('fatal', new LineCollector()),
  });
  t.after(() => gw.shutdown());
  return gw;
}

test('audit trail of a gateway: allowed and refused decisions with identity and redacted query, reloads with file digests, start and stop; no secret in it; verify accepts it and finds an edit', async (t) => {
  const { gw, d, file, plain, echoUrl } = await auditedGateway(t);

  const allowed = await request(`${plain}/api/sync?token=s3cr3t-value&page=2`, {
    headers: { 'x-api-key': alice.key, 'x-request-id': 'req-allowed-1' },
  });
  assert.equal(allowed.status, 200);
  assert.equal((await request(`${plain}/api/sync`, { headers: { 'x-api-key': bob.key } })).status, 403);
  assert.equal(
    (await request(`${plain}/api/sync`, { headers: { authorization: 'Bearer not.a.jwt' } })).status,
    401,
  );
  assert.equal((await request(`${plain}/open/x`)).status, 200);

  // A reload through the admin API, then one that is rejected.
  const text = config(echoUrl, '  - { name: more, match: { path: /more/ }, upstream: echo, public: true }\n');
  writeFileSync(file, text);
  const admin = origin(gw.adminAddress()!);
  const reload = await request(`${admin}/api/v1/reload`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  assert.equal(reload.status, 200);
  writeFileSync(file, 'listeners: nope\n');
  assert.equal((await gw.reload()).ok, false);
  writeFileSync(file, text);

  const keys = (
    await request(`${admin}/api/v1/audit/keys`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    })
  ).json() as { keys: Array<{ kid: string; kty: string; crv: string; d?: string }> };
  assert.equal(keys.keys.length, 1);
  assert.equal(keys.keys[0]?.crv, 'Ed25519');
  assert.equal(keys.keys[0]?.d, undefined, 'only the public half is published');

  await gw.shutdown();
  const trail = d.file('audit.jsonl');
  const { lines, text: raw } = readTrail(trail);
  const codes = lines.map((l) => l.code);
  assert.equal(codes[0], 'audit.checkpoint');
  assert.equal(codes.at(-1), 'audit.checkpoint', 'a clean stop ends the trail in a checkpoint');
  assert.ok(codes.includes('config.loaded') && codes.includes('gateway.started'), codes.join(' '));
  assert.ok(codes.includes('gateway.stopped'), codes.join(' '));
  for (const cp of lines.filter((l) => l.code === 'audit.checkpoint'))
    assert.equal(cp.keyId, keys.keys[0]?.kid);

  const access = lines.filter((l) => l.event === 'access');
  assert.equal(access.length, 4, JSON.stringify(access));
  const ok = access.find((l) => l.requestId === 'req-allowed-1');
  assert.equal(ok?.code, 'access.allowed');
  assert.equal(ok?.identity, 'agent:alice');
  assert.deepEqual(ok?.groups, ['agents']);
  assert.equal(ok?.authMethod, 'apiKey');
  assert.equal(ok?.route, 'api');
  assert.equal(ok?.rule, 'agents-only');
  assert.equal(ok?.status, 200);
  assert.equal(ok?.upstream, 'echo');
  assert.equal(ok?.path, '/api/sync');
  assert.equal(ok?.query, 'token=REDACTED&page=2');
  assert.equal(ok?.client, '127.0.0.1');
  const forbidden = access.find((l) => l.identity === 'agent:bob');
  assert.equal(forbidden?.code, 'access.refused');
  assert.equal(forbidden?.status, 403);
  assert.equal(forbidden?.reason, 'no-allow-rule');
  const unauthenticated = access.find((l) => l.status === 401);
  assert.equal(unauthenticated?.code, 'access.refused');
  // With only API keys configured, a bearer credential is read as a key.
  assert.equal(unauthenticated?.reason, 'api-key-invalid');
  assert.equal(access.find((l) => l.route === 'open')?.code, 'access.allowed');

  const reloaded = lines.find((l) => l.code === 'config.reloaded');
  assert.equal(reloaded?.trigger, 'admin');
  assert.equal(reloaded?.generation, 2);
  assert.deepEqual(reloaded?.files, [{ file, sha256: createHash('sha256').update(text).digest('hex') }]);
  const rejected = lines.find((l) => l.code === 'config.rejected');
  assert.equal(rejected?.reason, 'invalid');
  assert.equal(rejected?.trigger, 'api');

  // No credential enters the trail.
  for (const secret of [alice.key, bob.key, 's3cr3t-value', ADMIN_TOKEN, 'not.a.jwt'])
    assert.ok(!raw.includes(secret), `the trail holds ${secret}`);

  const verified = await runCli(['audit', 'verify', '-c', file, trail], {
    env: { ...process.env, ADMIN_TOKEN },
  });
  assert.equal(verified.code, 0, verified.stdout + verified.stderr);
  // One edited decision: verify names that line.
  const edited = raw.replace('"identity":"agent:bob"', '"identity":"agent:eve"');
  const at = raw.split('\n').findIndex((l) => l.includes('"identity":"agent:bob"')) + 1;
  writeFileSync(trail, edited);
  const broken = await runCli(['audit', 'verify', '-c', file, trail], {
    env: { ...process.env, ADMIN_TOKEN },
  });
  assert.equal(broken.code, 1, broken.stdout + broken.stderr);
  assert.match(
    broken.stdout + broken.stderr,
    new RegExp(`audit\\.jsonl:${at + 1}\\b|audit\\.jsonl:${at}\\b`),
  );
});

test('audit.decisions: refused records refusals only, and every other event still; a generated key is kept in the state store and published', async (t) => {
  const { gw, d, plain } = await auditedGateway(t, 'file: audit.jsonl, decisions: refused');
  for (let i = 0; i < 3; i++)
    assert.equal((await request(`${plain}/api/x`, { headers: { 'x-api-key': alice.key } })).status, 200);
  assert.equal((await request(`${plain}/api/x`)).status, 401);
  const admin = origin(gw.adminAddress()!);
  const keys = (
    await request(`${admin}/api/v1/audit/keys`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    })
  ).json() as { keys: Array<{ kid: string }> };
  // The generated key is the one in the store: a second gateway on the same store would sign with it.
  assert.ok((await gw.runtime.store.get('gatehouse:audit:signing-key')) !== undefined);
  await gw.shutdown();
  const { lines } = readTrail(d.file('audit.jsonl'));
  const access = lines.filter((l) => l.event === 'access');
  assert.deepEqual(
    access.map((l) => [l.code, l.status]),
    [['access.refused', 401]],
  );
  assert.ok(lines.some((l) => l.code === 'config.loaded'));
  writeFileSync(d.file('keys.json'), JSON.stringify(keys));
  const verified = await runCli(['audit', 'verify', '--key', d.file('keys.json'), d.file('audit.jsonl')]);
  assert.equal(verified.code, 0, verified.stdout + verified.stderr);
});

test('an unusable audit.signingKey stops the start with a config problem at its path, and check reports it', async (t) => {
  const echo = await startEchoBackend();
  t.after(() => echo.close());
  const d = tempDir();
  t.after(() => d.remove());
  // An EC key is no Ed25519 key.
  d.write(
    'audit-key.jwk',
    JSON.stringify(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' })),
  );
  const file = d.write('gatehouse.yaml', config(echo.url));
  await assert.rejects(
    Gateway.start({
      configFile: file,
      env: { ADMIN_TOKEN },
      watch: false,
      logger: createLogger('fatal', new LineCollector()),
    }),
    (err: Error & { problems?: Array<{ path: string; message: string }> }) =>
      err.problems?.some((p) => p.path === 'audit.signingKey' && /Ed25519/.test(p.message)) === true,
  );
  const checked = await runCli(['check', '-c', file], { env: { ...process.env, ADMIN_TOKEN } });
  assert.equal(checked.code, 1);
  assert.match(checked.stderr, /audit\.signingKey: must be an Ed25519 private key/);
});

test('sign-in, a refused sign-in callback and sign-out are audited with the person and the request id; the session cookie never is', async (t) => {
  const port = await freePort();
  const host = 'app.gatehouse.test';
  const site = `http://${host}:${port}`;
  const idp = await startIdp(t, { redirectUris: [`${site}/.gatehouse/callback`] });
  const echo = await startEchoBackend();
  t.after(() => echo.close());
  const d = tempDir();
  t.after(() => d.remove());
  d.write('client-secret', idp.clientSecret);
  const file = d.write(
    'gatehouse.yaml',
    `listeners: [{ name: plain, bind: "127.0.0.1:${port}" }]
audit: { file: audit.jsonl }
logging: { level: fatal, access: false }
identity:
  session: { secrets: ["audit-gateway-sealing-secret-0123456789"] }
  providers:
    - { name: corp, type: oidc, issuer: "${idp.issuer}", clientId: gatehouse, clientSecret: file:client-secret,
        scopes: [openid, email, profile, groups] }
upstreams: { app: { servers: [{ url: "${echo.url}" }] } }
routes:
  - { name: app, match: { host: "${host}", path: /app }, upstream: app }
`,
  );
  const gw = await Gateway.start({
    configFile: file,
    watch: false,
    logger: createLogger('fatal', new LineCollector()),
  });
  t.after(() => gw.shutdown());
  const { cookie, jar } = await signInOverHttp(site, 'alice', { rd: '/app/x' });
  // A callback with a state nobody issued.
  const forged = await hop(`${site}/.gatehouse/callback?code=x&state=${'A'.repeat(43)}`, new CookieJar());
  assert.equal(forged.status >= 400, true);
  const out = await hop(`${site}/.gatehouse/logout`, jar);
  assert.ok(out.status === 200 || out.status === 302, String(out.status));
  await gw.shutdown();
  const { lines, text } = readTrail(d.file('audit.jsonl'));
  const signin = lines.find((l) => l.code === 'signin.succeeded');
  assert.equal(signin?.event, 'signin');
  assert.equal(signin?.provider, 'corp');
  assert.equal(signin?.email, 'alice@example.com');
  assert.equal(signin?.client, '127.0.0.1');
  assert.equal(typeof signin?.requestId, 'string');
  assert.ok(lines.some((l) => l.code === 'signin.failed' && l.reason === 'unknown-state'));
  const signout = lines.find((l) => l.code === 'signout.succeeded');
  assert.equal(signout?.identity, signin?.identity);
  assert.ok(!text.includes(cookie.split('=')[1]!), 'the session cookie is not in the trail');
});

test('a reload that moves the trail to another file ends the old file in a checkpoint and records the rest in the new one; both verify', async (t) => {
  const { gw, d, file, plain, echoUrl } = await auditedGateway(t);
  assert.equal((await request(`${plain}/open/before`)).status, 200);
  writeFileSync(file, config(echoUrl, '', 'file: moved.jsonl, signingKey: file:audit-key.jwk'));
  assert.equal((await gw.reload()).ok, true);
  assert.equal((await request(`${plain}/open/after`)).status, 200);
  await gw.shutdown();
  const before = readTrail(d.file('audit.jsonl')).lines;
  const after = readTrail(d.file('moved.jsonl')).lines;
  assert.ok(before.some((l) => l.path === '/open/before'));
  assert.ok(!before.some((l) => l.path === '/open/after'));
  assert.equal(before.at(-1)?.code, 'audit.checkpoint');
  assert.ok(after.some((l) => l.path === '/open/after'));
  assert.ok(
    after.some((l) => l.code === 'config.reloaded'),
    'the reload that opened it is its first event',
  );
  assert.equal(after.at(-1)?.code, 'audit.checkpoint');
  for (const trail of ['audit.jsonl', 'moved.jsonl']) {
    const verified = await runCli(['audit', 'verify', '-c', file, d.file(trail)], {
      env: { ...process.env, ADMIN_TOKEN },
    });
    assert.equal(verified.code, 0, verified.stdout + verified.stderr);
  }
});

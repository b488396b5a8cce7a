/**
 * Identity settings as configuration: the checks `gatehouse check` and every reload run, and the
 * Gateway's handling of the identity runtime and the state store across reloads.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { type LoadResult, loadConfig } from '../src/config/load.js';
import { ConfigError, formatProblem } from '../src/errors.js';
import { generateApiKey } from '../src/identity/apikeys.js';
import { generateAssertionJwk } from '../src/identity/assertion.js';
import { Gateway } from '../src/process/gateway.js';
import { memoryLogger, startBackend, tempDir } from './helpers/gateway.js';
import { redisUrl } from './helpers/redis.js';

const SECRET = 'a-session-secret-of-at-least-32-characters';

const BASE = `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
upstreams: { app: { servers: [{ url: "http://127.0.0.1:9" }] } }
`;

/** Loads `text` as a config file and returns its problems (and warnings) as `path: message`. */
async function check(
  text: string,
  env: NodeJS.ProcessEnv = {},
): Promise<{ problems: string[]; warnings: string[]; result: LoadResult }> {
  const d = tempDir();
  try {
    const file = d.write('gh.yaml', text);
    const result = await loadConfig(file, env);
    const strip = (s: string) => s.slice(file.length + 2);
    return {
      problems: result.ok ? [] : result.problems.map((p) => strip(formatProblem(p))),
      warnings: result.warnings.map((p) => strip(formatProblem(p))),
      result,
    };
  } finally {
    d.remove();
  }
}

const provider = (issuer = 'https://idp.example.com') =>
  `    - { name: corp, type: oidc, issuer: "${issuer}", clientId: gatehouse }\n`;

test('a provider needs a session, with secrets of at least 32 characters', async () => {
  const missing = await check(`${BASE}identity:\n  providers:\n${provider()}`);
  assert.deepEqual(missing.problems, [
    'identity.session: is required when identity.providers is set (secrets for the session cookie)',
  ]);
  const short = await check(
    `${BASE}identity:\n  session: { secrets: [env:S1, too-short] }\n  providers:\n${provider()}`,
    { S1: 'x'.repeat(31) },
  );
  assert.deepEqual(short.problems, [
    'identity.session.secrets.0: a sealing secret needs at least 32 characters (e.g. openssl rand -base64 32)',
    'identity.session.secrets.1: a sealing secret needs at least 32 characters (e.g. openssl rand -base64 32)',
  ]);
  const unset = await check(
    `${BASE}identity:\n  session: { secrets: [env:NOPE] }\n  providers:\n${provider()}`,
  );
  assert.deepEqual(unset.problems, ['identity.session.secrets.0: environment variable NOPE is not set']);
  const ok = await check(`${BASE}identity:\n  session: { secrets: [env:S1] }\n  providers:\n${provider()}`, {
    S1: SECRET,
  });
  assert.deepEqual(ok.problems, []);
  assert.deepEqual(ok.warnings, []);
});

test('routes name configured providers and policies', async () => {
  const r = await check(`${BASE}identity:
  session: { secrets: ["${SECRET}"] }
  providers:
${provider()}
routes:
  - { name: a, upstream: app, providers: [corp, nope] }
  - { name: b, upstream: app, policy: missing }
`);
  assert.deepEqual(r.problems, [
    'routes.0.providers.1: unknown provider "nope" (defined: corp)',
    'routes.1.policy: unknown policy "missing" (none defined)',
  ]);
});

test('identity providers and token issuers use https (http only on loopback)', async () => {
  const r = await check(`${BASE}identity:
  session: { secrets: ["${SECRET}"] }
  providers:
${provider('http://idp.example.com')}
  bearer:
    - { issuer: "http://idp.example.com", audiences: [api] }
    - { issuer: "https://idp.example.com", audiences: [api], jwksUri: "http://keys.example.com/jwks" }
    - { issuer: "http://127.0.0.1:8080", audiences: [api], jwksUri: "http://localhost:8080/jwks" }
    - { issuer: "http://[::1]:8080", audiences: [api] }
`);
  const why = 'must be an https:// URL (http:// is accepted only on loopback addresses)';
  assert.deepEqual(r.problems, [
    `identity.providers.0.issuer: ${why}`,
    `identity.bearer.0.issuer: ${why}`,
    `identity.bearer.1.jwksUri: ${why}`,
  ]);
});

test('the central sign-in host must be one the gateway serves', async () => {
  const text = (signIn: string) => `${BASE}identity:
  session: { secrets: ["${SECRET}"], signInHost: "${signIn}" }
  providers:
${provider()}
routes:
  - { name: a, match: { host: app.example.com }, upstream: app }
  - { name: b, match: { host: "*.corp.example.com" }, upstream: app }
`;
  assert.deepEqual((await check(text('app.example.com'))).problems, []);
  assert.deepEqual((await check(text('login.corp.example.com:443'))).problems, []);
  assert.deepEqual((await check(text('elsewhere.example.com'))).problems, [
    'identity.session.signInHost: elsewhere.example.com is not a host this gateway serves (no route or listener has it)',
  ]);
  assert.deepEqual((await check(text('app.example.com:8443'))).problems, [
    'identity.session.signInHost: port 8443 is not a port this gateway listens on (80, 443, 0)',
  ]);
});

test('several workers with a memory store are accepted: the primary holds the one store', async () => {
  const text = (workers: string, store: string) => `${BASE}server: { workers: ${workers} }
state: { store: "${store}" }
identity:
  session: { secrets: ["${SECRET}"] }
  providers:
${provider()}`;
  for (const [workers, store] of [
    ['2', 'memory'],
    ['auto', 'memory'],
    ['2', 'redis://127.0.0.1:6379/0'],
    ['1', 'memory'],
  ] as const) {
    const r = await check(text(workers, store));
    assert.deepEqual(r.problems, [], `workers ${workers}, store ${store}`);
    assert.deepEqual(r.warnings, [], `workers ${workers}, store ${store}`);
  }
  // Without providers and with a generated assertion key: no warning either, the workers share the key.
  const machines = await check(`${BASE}server: { workers: 2 }
identity: { bearer: [{ issuer: "https://idp.example.com", audiences: [api] }] }
`);
  assert.deepEqual(machines.problems, []);
  assert.deepEqual(machines.warnings, []);
});

test('policy and identity module problems are reported at their paths; a key placeholder only warns', async () => {
  const key = generateApiKey('etl');
  const r = await check(`${BASE}identity:
  apiKeys:
    - { id: a, hash: "${key.hashLine}", subject: a }
    - { id: b, hash: "${key.hashLine}", subject: b }
    - { id: c, hash: "sha256:<hex>", subject: c }
  assertion: { signingKey: "not a key" }
policies:
  p: { allow: [{ groups: [x], time: { timezone: Mars/Olympus } }] }
`);
  assert.deepEqual(r.problems, [
    'identity.assertion.signingKey: expected a private JWK (JSON), a JWK set or a PEM private key',
    'policies.p.allow.0.time.timezone: unknown time zone "Mars/Olympus" (expected an IANA name such as Europe/Paris)',
    'identity.apiKeys.1.hash: the same key is configured twice',
  ]);
  const placeholder = await check(`${BASE}identity:
  apiKeys: [{ id: c, hash: "sha256:<hex>", subject: c }]
`);
  assert.deepEqual(placeholder.problems, []);
  assert.deepEqual(placeholder.warnings, [
    'identity.apiKeys.0.hash: placeholder; key c is refused until a real hash is set',
  ]);
});

test('the gateway keeps its state store and assertion keys across reloads, and rejects a broken identity', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const backend = await startBackend('a');
  t.after(() => backend.close());
  const config = (identity: string, store = 'memory') => `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
state: { store: "${store}" }
logging: { access: false }
upstreams: { app: { servers: [{ url: "${backend.url}" }] } }
routes: [{ name: all, upstream: app, public: true }]
identity:
${identity}`;
  const file = d.write('gh.yaml', config('  session: { secrets: [env:S] }\n  providers:\n' + provider()));
  const { logger } = memoryLogger();
  const gw = await Gateway.start({ configFile: file, logger, watch: false, env: { S: SECRET } });
  let stopped = false;
  t.after(() => (stopped ? undefined : gw.shutdown()));
  const port = gw.address('plain')!.port;
  const jwks = async () => {
    const r = await fetch(`http://127.0.0.1:${port}/.gatehouse/jwks.json`, {
      signal: AbortSignal.timeout(10_000),
    });
    assert.equal(r.status, 200);
    return ((await r.json()) as { keys: Array<{ kid: string }> }).keys.map((k) => k.kid);
  };
  const first = gw.runtime;
  const kids = await jwks();
  assert.equal(kids.length, 1);

  // A broken identity setting is rejected; the running configuration stays.
  await writeFile(file, config('  session: { secrets: [too-short] }\n  providers:\n' + provider()));
  const bad = await gw.reload();
  assert.equal(bad.ok, false);
  assert.ok(!bad.ok && bad.problems.some((p) => p.path === 'identity.session.secrets.0'));
  assert.equal(gw.runtime, first);

  // A valid change keeps the store, the login sessions in it and the generated assertion key.
  await writeFile(
    file,
    config('  session: { secrets: [env:S] }\n  providers:\n' + provider() + '  apiKeyHeader: X-Key\n'),
  );
  assert.equal((await gw.reload()).ok, true);
  assert.notEqual(gw.runtime, first);
  assert.equal(gw.runtime.store, first.store);
  assert.equal(gw.runtime.identity.apiKeyHeader, 'x-key');
  assert.deepEqual(await jwks(), kids);

  // Another store replaces the old one; keys signed before stay published until their assertions expired.
  const url = await redisUrl();
  await writeFile(file, config('  session: { secrets: [env:S] }\n  providers:\n' + provider(), url));
  assert.equal((await gw.reload()).ok, true);
  assert.equal(gw.runtime.store.kind, 'redis');
  assert.notEqual(gw.runtime.store, first.store);
  const after = await jwks();
  assert.ok(after.includes(kids[0]!), 'the previous key is still published');
  stopped = true;
  await gw.shutdown();
  // Both stores are closed at shutdown.
  await assert.rejects(first.store.get('x'));
  await assert.rejects(gw.runtime.store.get('x'));
});

test('an identity that cannot be built stops the start with the problem at its path', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  // A JWK for another algorithm passes the loader's shape check but not the assertion module.
  const jwk = JSON.stringify({ ...generateAssertionJwk('EdDSA'), alg: 'EdDSA' });
  d.write('key.jwk', jwk);
  const file = d.write(
    'gh.yaml',
    `${BASE}routes: [{ name: all, upstream: app, public: true }]
identity: { assertion: { signingKey: file:key.jwk, algorithm: ES256 } }
`,
  );
  const { logger } = memoryLogger();
  await assert.rejects(Gateway.start({ configFile: file, logger, watch: false }), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.deepEqual(
      err.problems.map((p) => p.path),
      ['identity.assertion.signingKey'],
    );
    return true;
  });
});

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { describe, mock, test } from 'node:test';
import { parse } from 'yaml';
import { ConfigSchema } from '../src/config/schema.js';
import { runApiKeyCommand } from '../src/identity/apikey-command.js';
import {
  ApiKeyAuthenticator,
  type ApiKeyConfig,
  apiKeyExpiry,
  generateApiKey,
  hashApiKey,
  looksLikeApiKey,
} from '../src/identity/apikeys.js';
import { IdentityConfigError } from '../src/identity/jwks.js';
import type { AuthResult } from '../src/identity/types.js';

function reason(r: AuthResult): string {
  return r.kind === 'invalid' ? r.reason : r.kind;
}

function entry(id: string, key: string, extra: Partial<ApiKeyConfig> = {}): ApiKeyConfig {
  return { id, hash: hashApiKey(key), subject: `agent:${id}`, groups: ['agents'], ...extra };
}

function capture() {
  const io = {
    stdout: '',
    stderr: '',
    out(t: string) {
      io.stdout += t;
    },
    err(t: string) {
      io.stderr += t;
    },
  };
  return io;
}

describe('API keys', () => {
  const etl = generateApiKey('etl-agent');
  const scoped = generateApiKey('scoped');
  const temp = generateApiKey('temp');
  const now = Date.parse('2026-06-01T12:00:00Z');
  const auth = new ApiKeyAuthenticator(
    [
      entry('etl-agent', etl.key, { groups: ['agents', 'etl'] }),
      entry('scoped', scoped.key, { routes: ['airbyte-api'] }),
      entry('temp', temp.key, { expires: '2026-06-01T12:00:00Z' }),
    ],
    { now: () => now },
  );

  test('the right key gives its identity (the same object every time)', () => {
    const r = auth.authenticate(etl.key, 'any-route');
    assert.equal(r.kind, 'ok');
    if (r.kind !== 'ok') return;
    assert.equal(r.identity.subject, 'agent:etl-agent');
    assert.equal(r.identity.user, 'agent:etl-agent');
    assert.equal(r.identity.email, undefined);
    assert.deepEqual(r.identity.groups, ['agents', 'etl']);
    assert.equal(r.identity.authMethod, 'apiKey');
    assert.equal(r.identity.source, 'etl-agent');
    assert.equal(r.identity.expiresAt, undefined);
    assert.equal(r.identity.claims.keyId, 'etl-agent');
    assert.equal(auth.authenticate(etl.key, 'other'), r);
  });

  test('wrong keys are refused as api-key-invalid', () => {
    const other = generateApiKey('etl-agent');
    for (const k of [
      other.key,
      `${etl.key.slice(0, -1)}${etl.key.endsWith('A') ? 'B' : 'A'}`,
      etl.key.toUpperCase(),
      '',
      'x'.repeat(10_000),
      etl.hashLine,
    ]) {
      assert.equal(reason(auth.authenticate(k, 'r')), 'api-key-invalid');
    }
  });

  test('an expired key is refused as api-key-expired; date-only expiry is the start of that day (UTC)', () => {
    assert.equal(reason(auth.authenticate(temp.key, 'r')), 'api-key-expired');
    assert.equal(reason(auth.authenticate(temp.key, 'r', now - 1)), 'ok');
    const early = new ApiKeyAuthenticator([entry('temp', temp.key, { expires: '2026-06-01T12:00:00Z' })], {
      now: () => now - 1,
    });
    const r = early.authenticate(temp.key, 'r');
    assert.equal(r.kind, 'ok');
    assert.equal(r.kind === 'ok' && r.identity.expiresAt, now);
    assert.equal(apiKeyExpiry('2027-01-01'), Date.parse('2027-01-01T00:00:00Z'));
    assert.equal(apiKeyExpiry('2027-01-01T10:00:00+02:00'), Date.parse('2027-01-01T08:00:00Z'));
    assert.equal(apiKeyExpiry(undefined), undefined);
  });

  test('a key scoped to routes is refused elsewhere as api-key-out-of-scope', () => {
    assert.equal(reason(auth.authenticate(scoped.key, 'airbyte-api')), 'ok');
    assert.equal(reason(auth.authenticate(scoped.key, 'prefect-api')), 'api-key-out-of-scope');
  });

  test('the final comparison is constant time (crypto.timingSafeEqual on the digests)', () => {
    const spy = mock.method(crypto, 'timingSafeEqual');
    try {
      assert.equal(reason(auth.authenticate(etl.key, 'r')), 'ok');
      assert.equal(spy.mock.callCount(), 1);
      const [a, b] = spy.mock.calls[0]!.arguments as [Buffer, Buffer];
      assert.equal(a.length, 32);
      assert.equal(b.length, 32);
    } finally {
      spy.mock.restore();
    }
  });

  test('generateApiKey: the key has the documented shape, hashes to hashLine, and is told apart from JWTs', () => {
    const { key, hashLine } = generateApiKey('etl.agent_2');
    assert.match(key, /^ghk_etl\.agent_2_[A-Za-z0-9_-]{43}$/);
    assert.equal(hashLine, `sha256:${crypto.createHash('sha256').update(key).digest('hex')}`);
    assert.ok(looksLikeApiKey(key));
    assert.notEqual(generateApiKey('etl.agent_2').key, key);
    const jwt = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln';
    for (const s of [jwt, 'ghk_x', 'ghk__abc', `ghk_id_${'a'.repeat(42)}`, `Bearer ${key}`, '']) {
      assert.ok(!looksLikeApiKey(s), s);
    }
    assert.throws(() => generateApiKey('bad id'), IdentityConfigError);
    // An id so long that the key would exceed the 256 characters a presented key may have.
    assert.throws(() => generateApiKey('a'.repeat(65)), IdentityConfigError);
    assert.ok(looksLikeApiKey(generateApiKey('a'.repeat(64)).key));
    const a = new ApiKeyAuthenticator([{ id: 'etl.agent_2', hash: hashLine, subject: 's', groups: [] }]);
    assert.equal(reason(a.authenticate(key, 'r')), 'ok');
  });

  test('a hash written in upper-case hex is accepted by the schema and matches its key', () => {
    const upper = `sha256:${etl.hashLine.slice('sha256:'.length).toUpperCase()}`;
    const parsed = ConfigSchema.safeParse({
      listeners: [{ name: 'web', bind: '127.0.0.1:0' }],
      identity: { apiKeys: [{ id: 'etl', hash: upper, subject: 'agent:etl' }] },
    });
    assert.ok(parsed.success, parsed.success ? '' : JSON.stringify(parsed.error.issues));
    const a = new ApiKeyAuthenticator([{ id: 'etl', hash: upper, subject: 'agent:etl', groups: [] }]);
    assert.equal(reason(a.authenticate(etl.key, 'r')), 'ok');
    // The same key in both spellings is one key configured twice.
    assert.throws(
      () =>
        new ApiKeyAuthenticator([entry('a', etl.key), { id: 'b', hash: upper, subject: 's', groups: [] }]),
      IdentityConfigError,
    );
  });

  test('bad configuration is reported; the schema placeholder matches nothing', () => {
    assert.throws(
      () => new ApiKeyAuthenticator([entry('a', etl.key), entry('b', etl.key)]),
      (e: unknown) => e instanceof IdentityConfigError && /apiKeys\.1\.hash/.test(e.message),
    );
    const p = new ApiKeyAuthenticator([{ id: 'x', hash: 'sha256:<hex>', subject: 's', groups: [] }]);
    assert.equal(p.warnings.length, 1);
    assert.equal(p.enabled, false);
    assert.equal(reason(p.authenticate('<hex>', 'r')), 'api-key-invalid');
  });
});

describe('gatehouse apikey create', () => {
  test('prints the key once with a warning, and a config entry that validates and matches the key', async () => {
    const io = capture();
    const code = await runApiKeyCommand(
      [
        'create',
        '--id',
        'etl-agent',
        '--subject',
        'agent:etl',
        '--groups',
        'agents,etl',
        '--expires=2027-01-01',
        '--routes',
        'airbyte-api,prefect',
      ],
      { ...io, now: () => Date.parse('2026-01-01T00:00:00Z') },
    );
    assert.equal(code, 0, io.stderr);
    assert.equal(io.stderr, '');
    assert.match(io.stdout, /shown only this once/);
    const keys = io.stdout.match(/ghk_[A-Za-z0-9_.-]+/g) ?? [];
    assert.equal(keys.length, 1, 'the key is printed exactly once');
    const key = keys[0]!;
    assert.ok(looksLikeApiKey(key));
    const line = io.stdout.split('\n').find((l) => l.trimStart().startsWith('- {'));
    assert.ok(line, io.stdout);

    // Paste the line into a config: it validates, and the key authenticates with it.
    const yamlText = `listeners: [{ name: l, bind: "127.0.0.1:0" }]\nidentity:\n  apiKeys:\n${line}\n`;
    const cfg = ConfigSchema.parse(parse(yamlText));
    const k = cfg.identity!.apiKeys[0]!;
    assert.deepEqual(
      { id: k.id, subject: k.subject, groups: k.groups, expires: k.expires, routes: k.routes },
      {
        id: 'etl-agent',
        subject: 'agent:etl',
        groups: ['agents', 'etl'],
        expires: '2027-01-01',
        routes: ['airbyte-api', 'prefect'],
      },
    );
    assert.equal(k.hash, hashApiKey(key));
    const auth = new ApiKeyAuthenticator(cfg.identity!.apiKeys, {
      now: () => Date.parse('2026-06-01T00:00:00Z'),
    });
    assert.equal(reason(auth.authenticate(key, 'prefect')), 'ok');
    assert.equal(reason(auth.authenticate(key, 'other')), 'api-key-out-of-scope');
  });

  test('check names an expiry that is not a date in plain words', () => {
    const r = ConfigSchema.safeParse({
      listeners: [{ name: 'web', bind: '127.0.0.1:0' }],
      identity: { apiKeys: [{ id: 'x', hash: hashApiKey('k'), subject: 's', expires: '2027-02-30' }] },
    });
    assert.ok(!r.success);
    assert.deepEqual(
      r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`),
      [
        'identity.apiKeys.0.expires: must be an ISO date such as 2027-01-01 or a date-time such as 2027-01-01T09:00:00Z',
      ],
    );
  });

  test('subjects and groups with YAML-special characters are quoted', async () => {
    const io = capture();
    assert.equal(
      await runApiKeyCommand(['create', '--id', 'x', '--subject', 'a: "b" #c', '--groups', 'x y,[z]'], io),
      0,
    );
    const line = io.stdout.split('\n').find((l) => l.trimStart().startsWith('- {'))!;
    const cfg = ConfigSchema.parse(
      parse(`listeners: [{ name: l, bind: "127.0.0.1:0" }]\nidentity:\n  apiKeys:\n${line}\n`),
    );
    assert.equal(cfg.identity!.apiKeys[0]!.subject, 'a: "b" #c');
    assert.deepEqual(cfg.identity!.apiKeys[0]!.groups, ['x y', '[z]']);
  });

  test('usage errors exit 2 with a message and print no key', async () => {
    const cases: string[][] = [
      [],
      ['delete'],
      ['create', '--subject', 's'],
      ['create', '--id', 'bad id', '--subject', 's'],
      ['create', '--id', 'x'],
      ['create', '--id', 'x', '--subject', 's', '--expires', 'tomorrow'],
      ['create', '--id', 'x', '--subject', 's', '--expires', '2001-01-01'],
      // Days that do not exist, and date-times without seconds: the configuration would refuse them.
      ['create', '--id', 'x', '--subject', 's', '--expires', '2099-02-30'],
      ['create', '--id', 'x', '--subject', 's', '--expires', '2099-01-01T10:00Z'],
      ['create', '--id', 'x', '--subject', 's', '--routes', 'bad route'],
      ['create', '--id', 'x', '--subject', 's', '--bogus', '1'],
      ['create', '--id', 'x', '--subject'],
    ];
    for (const argv of cases) {
      const io = capture();
      assert.equal(await runApiKeyCommand(argv, io), 2, argv.join(' '));
      assert.doesNotMatch(io.stdout, /ghk_/);
      if (argv.length > 0) assert.match(io.stderr, /gatehouse apikey: /);
    }
    const help = capture();
    assert.equal(await runApiKeyCommand(['--help'], help), 0);
    assert.match(help.stdout, /Usage: gatehouse apikey create/);
  });
});

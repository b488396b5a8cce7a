import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadConfig } from '../src/config/load.js';
import { SecretError, SecretResolver } from '../src/config/secrets.js';
import { tempDir } from './helpers/gateway.js';

test('env:, file: and literal values resolve', (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  d.write('secrets/token', 'tok-1\n');
  d.write('secrets/crlf', 'line\r\n');
  d.write('secrets/two', 'a\n\n');
  const s = new SecretResolver(d.dir, { API_KEY: 'k-42', EMPTY: '' });
  assert.equal(s.resolveSecret('env:API_KEY'), 'k-42');
  assert.equal(s.resolveSecret('env:EMPTY'), '');
  assert.equal(s.resolveSecret('file:secrets/token'), 'tok-1');
  assert.equal(s.resolveSecret('file:secrets/crlf'), 'line');
  // Only one trailing newline is removed.
  assert.equal(s.resolveSecret('file:secrets/two'), 'a\n');
  assert.equal(s.resolveSecret('plain value'), 'plain value');
  assert.deepEqual(s.files.sort(), [d.file('secrets/crlf'), d.file('secrets/token'), d.file('secrets/two')]);
});

test('expand replaces embedded references and whole references', (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  d.write('secrets/airbyte-token', 'abc\n');
  const s = new SecretResolver(d.dir, { USER: 'svc' });
  assert.equal(s.expand('Bearer ${file:secrets/airbyte-token}'), 'Bearer abc');
  assert.equal(s.expand('${env:USER}:${file:secrets/airbyte-token}'), 'svc:abc');
  assert.equal(s.expand('env:USER'), 'svc');
  assert.equal(s.expand('no references'), 'no references');
  assert.deepEqual(SecretResolver.referencesIn('x ${env:A} ${file:b}'), ['env:A', 'file:b']);
});

test('unresolvable references throw SecretError with a clear message', (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const s = new SecretResolver(d.dir, {});
  assert.throws(
    () => s.resolveSecret('env:NOPE'),
    (err: unknown) => {
      assert.ok(err instanceof SecretError);
      assert.equal(err.code, 'GH_SECRET_UNAVAILABLE');
      assert.equal(err.message, 'environment variable NOPE is not set');
      return true;
    },
  );
  assert.throws(() => s.expand('Bearer ${file:missing}'), {
    code: 'GH_SECRET_UNAVAILABLE',
    message: 'cannot read file missing (ENOENT)',
  });
  // A file that could not be read is still reported, so that creating it can trigger a reload.
  assert.deepEqual(s.files, [d.file('missing')]);
});

test('every load reads file secrets again (rotation on reload)', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  d.write('secrets/token', 'first\n');
  const file = d.write(
    'gh.yaml',
    `listeners: [{ name: p, bind: 127.0.0.1:0 }]
upstreams:
  u:
    servers: [{ url: http://127.0.0.1:9 }]
    inject: { headers: { Authorization: "Bearer \${file:secrets/token}" } }
`,
  );
  const first = await loadConfig(file, {});
  assert.ok(first.ok);
  assert.equal(
    first.secrets.expand(first.config.upstreams.u!.inject!.headers.Authorization!),
    'Bearer first',
  );
  d.write('secrets/token', 'second\n');
  const second = await loadConfig(file, {});
  assert.ok(second.ok);
  assert.equal(
    second.secrets.expand(second.config.upstreams.u!.inject!.headers.Authorization!),
    'Bearer second',
  );
  // The resolver of a load keeps what it read then: a build never mixes two versions of a secret.
  assert.equal(first.secrets.expand('${file:secrets/token}'), 'first');
  assert.ok(second.files.includes(d.file('secrets/token')));
});

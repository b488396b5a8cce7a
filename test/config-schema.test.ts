import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { REFERENCE_FILE, renderJsonSchema, renderReference, SCHEMA_FILE } from '../src/config/json-schema.js';
import { loadConfig } from '../src/config/load.js';
import { formatProblem } from '../src/errors.js';
import { ROOT } from './helpers/gateway.js';

test('schema/gatehouse.schema.json is up to date (run npm run schema)', () => {
  assert.equal(readFileSync(SCHEMA_FILE, 'utf8'), renderJsonSchema());
});

test('docs/configuration.md is up to date (run npm run schema)', () => {
  assert.equal(readFileSync(REFERENCE_FILE, 'utf8'), renderReference());
});

test('the reference documents every key of the schema', () => {
  const doc = renderReference();
  for (const key of [
    'listeners[].tls.certificates[].cert',
    'upstreams.<name>.timeouts.connect',
    'upstreams.<name>.healthCheck.interval',
    'routes[].split.targets[].weight',
    'server.drainTimeout',
    'logging.access',
  ]) {
    assert.ok(doc.includes(`| \`${key}\` |`), `${key} missing from the reference`);
  }
  // Durations show their default as written in YAML.
  assert.match(doc, /\| `server\.drainTimeout` \| duration \| {2}\| `"30s"` \|/);
});

test('every key of the reference has a description', () => {
  const missing = renderReference()
    .split('\n')
    .filter((l) => l.startsWith('| `'))
    .filter((l) => /\| *\|$/.test(l) || / \| \(/.test(l))
    .map((l) => l.split('`')[1]);
  assert.deepEqual(missing, []);
});

test('the JSON schema describes the YAML input (durations as strings, unknown keys refused)', () => {
  const schema = JSON.parse(renderJsonSchema());
  const server = schema.properties.server.properties;
  assert.equal(server.drainTimeout.type, 'string');
  assert.equal(server.drainTimeout.default, '30s');
  assert.equal(schema.properties.listeners.items.additionalProperties, false);
  assert.deepEqual(schema.required, ['listeners']);
});

test('the design example validates, apart from the files and variables it names', async () => {
  const file = path.join(ROOT, 'examples/design.yaml');
  const r = await loadConfig(file, {});
  assert.equal(r.ok, false);
  if (r.ok) return;
  const problems = r.problems.map(formatProblem);
  assert.deepEqual(problems, [
    `${file}: listeners.0.tls.certificates.0.cert: cannot read file certs/site.pem (ENOENT)`,
    `${file}: listeners.0.tls.certificates.0.key: cannot read file certs/site-key.pem (ENOENT)`,
    `${file}: upstreams.airbyte.inject.headers.Authorization: cannot read file secrets/airbyte-token (ENOENT)`,
    `${file}: admin.token: environment variable GATEHOUSE_ADMIN_TOKEN is not set`,
    `${file}: identity.session.secrets.0: environment variable GATEHOUSE_SESSION_SECRET is not set`,
    `${file}: identity.providers.0.clientSecret: environment variable OIDC_CLIENT_SECRET is not set`,
    `${file}: identity.assertion.signingKey: cannot read file keys/assertion.jwk (ENOENT)`,
  ]);
  // The API key hash placeholder is only a warning: that key is refused until a real hash is set.
  assert.deepEqual(r.warnings.map(formatProblem), [
    `${file}: identity.apiKeys.0.hash: placeholder; key etl-agent is refused until a real hash is set`,
  ]);
  // Without the secret checks (as `explain` loads it) the example is valid.
  const offline = await loadConfig(file, {}, { checkSecrets: false });
  assert.ok(offline.ok);
  assert.equal(offline.config.routes.length, 2);
});

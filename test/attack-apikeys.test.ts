/**
 * Adversarial suite, API-key family, through the running data plane with bearer JWTs configured beside
 * the keys (so `Authorization: Bearer` has to tell the two apart). Also the regression for keys that
 * were not made by `gatehouse apikey create`.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { generateApiKey, hashApiKey, MIN_API_KEY_LENGTH } from '../src/identity/apikeys.js';
import { makeKey, startIssuer, type TestIssuer } from './helpers/identity.js';
import { config, request, seenOf, startBackend, startGateway } from './helpers/proxy.js';

function json(body: Buffer): Record<string, unknown> {
  return JSON.parse(body.toString()) as Record<string, unknown>;
}

describe('attack: API keys', () => {
  let idp: TestIssuer;
  const made = generateApiKey('made');
  // Keys of other origins: a secret manager's hex token, a UUID, one with two dots (JWT-like at a glance).
  const hexKey = randomBytes(24).toString('hex');
  const uuidKey = '7c1b9a42-55e1-4f0e-9d7a-0c3b2f6a8e11';
  const dotted = `svc.${randomBytes(12).toString('base64url')}.prod`;
  const shortKey = 'short-key-123';

  before(async () => {
    idp = await startIssuer([await makeKey('k1', 'ES256')]);
  });
  after(() => idp.close());

  async function gateway(t: import('node:test').TestContext) {
    const backend = await startBackend(t, 'b');
    const gw = await startGateway(t, {
      ...config({ app: { servers: [{ url: backend.url }] } }, [
        {
          name: 'agents',
          match: { path: '/agents' },
          upstream: 'app',
          policy: 'agents',
          identityHeaders: true,
        },
        { name: 'scoped', match: { path: '/scoped' }, upstream: 'app', policy: 'agents' },
      ]),
      identity: {
        bearer: [{ issuer: idp.issuer, audiences: ['api'], algorithms: ['ES256'] }],
        apiKeys: [
          { id: 'made', hash: made.hashLine, subject: 'agent:made', groups: ['agents'] },
          { id: 'hex', hash: hashApiKey(hexKey), subject: 'agent:hex', groups: ['agents'] },
          { id: 'uuid', hash: hashApiKey(uuidKey), subject: 'agent:uuid', groups: ['agents'] },
          { id: 'dotted', hash: hashApiKey(dotted), subject: 'agent:dotted', groups: ['agents'] },
          { id: 'short', hash: hashApiKey(shortKey), subject: 'agent:short', groups: ['agents'] },
        ],
      },
      policies: { agents: { allow: [{ name: 'agent-keys', groups: ['agents'] }] } },
    });
    return { backend, gw };
  }

  test('keys not made by `gatehouse apikey create` work by their hash, in Authorization and X-Api-Key', async (t) => {
    const { backend, gw } = await gateway(t);
    for (const [key, subject] of [
      [made.key, 'agent:made'],
      [hexKey, 'agent:hex'],
      [uuidKey, 'agent:uuid'],
    ] as const) {
      for (const headers of [{ authorization: `Bearer ${key}` }, { 'x-api-key': key }]) {
        const r = await request(gw.url(), { path: '/agents/run', headers });
        assert.equal(r.status, 200, `${subject} ${Object.keys(headers)[0]}: ${r.body.toString()}`);
        const seen = seenOf(r.body);
        assert.equal(seen.headers['x-gatehouse-user'], subject);
        assert.equal(seen.headers.authorization, undefined, 'the key never reaches the backend');
        assert.equal(seen.headers['x-api-key'], undefined, 'the key never reaches the backend');
      }
    }
    // A key shaped like a JWT (three dot-separated parts) can only be sent in the API key header:
    // in Authorization it is verified as a token, and refused as one.
    const inHeader = await request(gw.url(), { path: '/agents/run', headers: { 'x-api-key': dotted } });
    assert.equal(inHeader.status, 200);
    const asBearer = await request(gw.url(), {
      path: '/agents/run',
      headers: { authorization: `Bearer ${dotted}`, accept: 'application/json' },
    });
    assert.equal(asBearer.status, 401);
    assert.equal(json(asBearer.body).reason, 'token-invalid');
    assert.equal(backend.seen.length, 7);
    // JWTs still go to the token verifier.
    const jwt = await idp.sign({ sub: 'svc', aud: 'api', groups: ['agents'] });
    const byToken = await request(gw.url(), {
      path: '/agents/run',
      headers: { authorization: `Bearer ${jwt}` },
    });
    assert.equal(byToken.status, 200);
    assert.equal(gw.access.at(-1)!.authMethod, 'bearer');
  });

  test(`keys shorter than ${MIN_API_KEY_LENGTH} characters are refused even when their hash is configured`, async (t) => {
    const { backend, gw } = await gateway(t);
    for (const headers of [{ 'x-api-key': shortKey }, { authorization: `Bearer ${shortKey}` }]) {
      const r = await request(gw.url(), {
        path: '/agents/run',
        headers: { ...headers, accept: 'application/json' },
      });
      assert.equal(r.status, 401);
      assert.equal(json(r.body).reason, 'api-key-invalid');
    }
    assert.equal(backend.seen.length, 0);
  });

  test('near misses, case changes, padding, duplicates and keys in the query string are refused', async (t) => {
    const { backend, gw } = await gateway(t);
    const call = (headers: Record<string, string | string[]>, path = '/agents/run') =>
      request(gw.url(), { path, headers: { ...headers, accept: 'application/json' } });
    const refusedKeys = [
      `${made.key.slice(0, -1)}${made.key.endsWith('A') ? 'B' : 'A'}`,
      made.key.toUpperCase(),
      `${made.key}x`,
      made.key.slice(1),
      `${hexKey}\u00a0`,
      'x'.repeat(257),
      '',
    ];
    for (const key of refusedKeys) {
      const r = await call({ 'x-api-key': key });
      assert.equal(r.status, 401, JSON.stringify(key.slice(0, 12)));
    }
    // Two API key headers (joined by the parser into one list value) are one bad key, never "either".
    const twice = await request(gw.url(), {
      path: '/agents/run',
      headers: ['Host', 'gw.test', 'X-Api-Key', made.key, 'X-Api-Key', 'guess-guess-guess-guess'],
    });
    assert.equal(twice.status, 401);
    // A refused Authorization credential never falls back to a valid API key header, or the reverse.
    const mixed = await call({ authorization: 'Bearer not-a-key-not-a-token-0000', 'x-api-key': made.key });
    assert.equal(mixed.status, 401);
    assert.equal(json(mixed.body).reason, 'api-key-invalid');
    const query = await call({}, `/agents/run?api_key=${made.key}&x-api-key=${made.key}`);
    assert.equal(query.status, 401);
    assert.equal(json(query.body).reason, 'user-unauthenticated');
    assert.equal(backend.seen.length, 0);
  });

  test('underscore and case spellings of the key header are not a side door and never reach the backend', async (t) => {
    const { backend, gw } = await gateway(t);
    const r = await request(gw.url(), {
      path: '/agents/run',
      headers: ['Host', 'gw.test', 'X-API-KEY', made.key, 'accept', 'application/json'],
    });
    assert.equal(r.status, 200, 'the header name is case-insensitive');
    assert.equal(seenOf(r.body).headers['x-api-key'], undefined);
    const underscore = await request(gw.url(), {
      path: '/agents/run',
      headers: ['Host', 'gw.test', 'X_Api_Key', made.key, 'accept', 'application/json'],
    });
    assert.equal(underscore.status, 401, 'X_Api_Key is not the API key header');
    assert.equal(backend.seen.length, 1);
  });

  test('the gateway still serves after the API-key attacks', async (t) => {
    const { gw } = await gateway(t);
    for (let i = 0; i < 50; i++) {
      await request(gw.url(), {
        path: '/agents/run',
        headers: { 'x-api-key': randomBytes(20).toString('hex') },
      });
    }
    const r = await request(gw.url(), {
      path: '/agents/run',
      headers: { authorization: `Bearer ${made.key}` },
    });
    assert.equal(r.status, 200);
  });
});

/**
 * Adversarial suite, JWT family: forged, confused and malformed bearer tokens against a real issuer
 * (discovery and JWKS over HTTP) and the running data plane. Every refused token gets 401 with
 * `WWW-Authenticate`, never reaches the backend, and the gateway keeps serving.
 */
import assert from 'node:assert/strict';
import { createHmac, generateKeyPairSync } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { exportJWK, exportSPKI, type JWK, SignJWT } from 'jose';
import { makeKey, startIssuer, type TestIssuer, type TestKey } from './helpers/identity.js';
import { config, request, type Seen, seenOf, startBackend, startGateway } from './helpers/proxy.js';

const AUD = 'api';

function b64(value: unknown): string {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

function json(body: Buffer): Record<string, unknown> {
  return JSON.parse(body.toString()) as Record<string, unknown>;
}

/** The identity headers a backend received, in any spelling. */
function identityHeaders(seen: Seen): string[] {
  const out: string[] = [];
  for (let i = 0; i < seen.rawHeaders.length; i += 2) {
    if (/^x[-_]gatehouse[-_]/i.test(seen.rawHeaders[i]!)) out.push(seen.rawHeaders[i]!);
  }
  return out;
}

describe('attack: bearer JWTs', () => {
  let idp: TestIssuer;
  let other: TestIssuer;
  let key: TestKey;
  let otherKey: TestKey;

  before(async () => {
    key = await makeKey('k1', 'ES256');
    otherKey = await makeKey('o1', 'ES256');
    idp = await startIssuer([key]);
    other = await startIssuer([otherKey]);
  });
  after(async () => {
    await idp.close();
    await other.close();
  });

  async function gateway(t: import('node:test').TestContext) {
    const backend = await startBackend(t, 'b');
    const gw = await startGateway(t, {
      ...config({ app: { servers: [{ url: backend.url }] } }, [
        { name: 'api', match: { path: '/api' }, upstream: 'app', policy: 'people', identityHeaders: true },
        { name: 'open', match: { path: '/open' }, upstream: 'app', public: true, identityHeaders: true },
      ]),
      identity: {
        bearer: [
          { issuer: idp.issuer, audiences: [AUD], algorithms: ['ES256', 'RS256'] },
          { issuer: other.issuer, audiences: ['other-api'], algorithms: ['ES256'] },
        ],
      },
      policies: { people: { allow: [{ name: 'any-bearer', authMethod: ['bearer'] }] } },
    });
    const call = (token: string, path = '/api/x') =>
      request(gw.url(), { path, headers: { authorization: `Bearer ${token}` } });
    return { backend, gw, call };
  }

  /** Asserts a 401 with a WWW-Authenticate challenge and, when given, the reason. */
  function refused(r: { status: number; headers: Record<string, unknown>; body: Buffer }, reason?: string) {
    assert.equal(r.status, 401, r.body.toString());
    assert.match(String(r.headers['www-authenticate']), /^Bearer realm="gatehouse"/);
    if (reason !== undefined) assert.equal(json(r.body).reason, reason);
  }

  test('unsigned (alg none) and HMAC tokens are refused, also HS256 keyed with the public key', async (t) => {
    const { backend, call } = await gateway(t);
    const claims = { sub: 'mallory', iss: idp.issuer, aud: AUD, exp: Math.floor(Date.now() / 1000) + 600 };
    const none = `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`;
    refused(await call(none));
    const noneKid = `${b64({ alg: 'none', kid: 'k1' })}.${b64(claims)}.`;
    refused(await call(noneKid));
    // Key confusion: the issuer's public key (as PEM text and as JWK JSON) used as an HMAC secret.
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pem = await exportSPKI(publicKey);
    for (const secret of [pem, JSON.stringify(key.publicJwk), '']) {
      const head = `${b64({ alg: 'HS256', kid: 'k1', typ: 'JWT' })}.${b64(claims)}`;
      const sig = createHmac('sha256', secret).update(head).digest('base64url');
      refused(await call(`${head}.${sig}`));
    }
    assert.equal(backend.seen.length, 0);
  });

  test('keys the token brings along (jwk, jku, x5u, x5c) are never used', async (t) => {
    const { backend, call } = await gateway(t);
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const attackerJwk: JWK = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256' };
    const headers = [
      { alg: 'ES256', jwk: attackerJwk },
      { alg: 'ES256', kid: 'k1', jwk: attackerJwk },
      { alg: 'ES256', kid: 'k1', jku: 'http://127.0.0.1:1/jwks' },
      { alg: 'ES256', kid: 'k1', x5u: 'http://127.0.0.1:1/cert.pem' },
      { alg: 'ES256', kid: 'evil', jku: `${idp.issuer}/jwks` },
    ];
    for (const header of headers) {
      const jwt = await new SignJWT({ sub: 'mallory' })
        .setProtectedHeader(header)
        .setIssuer(idp.issuer)
        .setAudience(AUD)
        .setExpirationTime('10m')
        .sign(privateKey);
      refused(await call(jwt));
    }
    assert.equal(backend.seen.length, 0);
  });

  test('an unknown critical header parameter, a stripped or zeroed signature and JWE are refused', async (t) => {
    const { backend, call } = await gateway(t);
    const crit = await new SignJWT({ sub: 'alice' })
      .setProtectedHeader({
        alg: 'ES256',
        kid: 'k1',
        crit: ['x-gatehouse-trust-me'],
        'x-gatehouse-trust-me': 1,
      })
      .setIssuer(idp.issuer)
      .setAudience(AUD)
      .setExpirationTime('10m')
      .sign(key.privateKey, { crit: { 'x-gatehouse-trust-me': true } });
    refused(await call(crit));
    const valid = await idp.sign({ sub: 'alice', aud: AUD });
    const [h, p] = valid.split('.') as [string, string, string];
    refused(await call(`${h}.${p}.`));
    refused(await call(`${h}.${p}`));
    // ECDSA with r = s = 0 (CVE-2022-21449, "psychic signatures").
    refused(await call(`${h}.${p}.${Buffer.alloc(64).toString('base64url')}`));
    // A compact JWE (five parts) is not a signed token.
    refused(await call(`${b64({ alg: 'RSA-OAEP', enc: 'A256GCM' })}.AAAA.AAAA.AAAA.AAAA`));
    assert.equal(backend.seen.length, 0);
  });

  test('a token is verified with its own issuer’s keys: no issuer, audience or key confusion', async (t) => {
    const { backend, call } = await gateway(t);
    // Claims issuer A, signed by issuer B's key (B is trusted too, with its own kid).
    const crossed = await new SignJWT({ sub: 'mallory', aud: AUD })
      .setProtectedHeader({ alg: 'ES256', kid: otherKey.kid })
      .setIssuer(idp.issuer)
      .setExpirationTime('10m')
      .sign(otherKey.privateKey);
    refused(await call(crossed));
    // Issuer B's genuine token carries B's audience: not accepted where A's audience is required...
    const bToken = await other.sign({ sub: 'bob', aud: 'other-api' });
    const bResult = await call(bToken);
    assert.equal(bResult.status, 200, 'B is trusted for its own audience on this gateway');
    // ...and a token for another audience of the same issuer is refused.
    refused(await call(await idp.sign({ sub: 'alice', aud: 'someone-else' })), 'token-wrong-audience');
    refused(await call(await idp.sign({ sub: 'alice', aud: [] })));
    // An issuer that differs only by a trailing slash or case is not the configured one.
    refused(await call(await idp.sign({ sub: 'alice', aud: AUD }, { iss: `${idp.issuer}/` })));
    refused(await call(await idp.sign({ sub: 'alice', aud: AUD }, { iss: idp.issuer.toUpperCase() })));
    refused(
      await call(await idp.sign({ sub: 'alice', aud: AUD }, { iss: 'https://attacker.example' })),
      'token-unknown-issuer',
    );
    assert.equal(backend.seen.length, 1, 'only the genuine token of issuer B passed');
  });

  test('time claims: expired, not yet valid, and tokens without exp or sub are refused', async (t) => {
    const { backend, call } = await gateway(t);
    const now = Math.floor(Date.now() / 1000);
    refused(await call(await idp.sign({ sub: 'a', aud: AUD }, { exp: now - 3600 })), 'token-expired');
    refused(await call(await idp.sign({ sub: 'a', aud: AUD }, { nbf: now + 3600 })), 'token-not-yet-valid');
    const noExp = await new SignJWT({ sub: 'a', aud: AUD })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setIssuer(idp.issuer)
      .sign(key.privateKey);
    refused(await call(noExp));
    const noSub = await new SignJWT({ aud: AUD })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setIssuer(idp.issuer)
      .setExpirationTime('10m')
      .sign(key.privateKey);
    refused(await call(noSub));
    assert.equal(backend.seen.length, 0);
  });

  test('the token cache cannot be poisoned: a token sharing a verified token’s signature is a miss', async (t) => {
    const { backend, call } = await gateway(t);
    const alice = await idp.sign({ sub: 'alice', aud: AUD, groups: ['users'] });
    assert.equal((await call(alice)).status, 200);
    const [h, , s] = alice.split('.') as [string, string, string];
    const escalated = `${h}.${b64({ sub: 'alice', aud: AUD, iss: idp.issuer, groups: ['admins'], exp: 9_999_999_999 })}.${s}`;
    refused(await call(escalated));
    // Also after the forged token was remembered as bad, the genuine one still works.
    assert.equal((await call(alice)).status, 200);
    assert.equal(backend.seen.length, 2);
  });

  test('malformed credentials: garbage, huge, odd spacing and other schemes get a clean answer', async (t) => {
    const { gw, backend, call } = await gateway(t);
    for (const junk of ['a.b.c', '..', 'e30.e30.', `${b64('{')}.${b64('[')}.${b64('x')}`, 'x'.repeat(4000)]) {
      refused(await call(junk));
    }
    const valid = await idp.sign({ sub: 'alice', aud: AUD });
    const variants: Array<[string, number]> = [
      [`bearer ${valid}`, 200],
      [`BEARER ${valid}`, 200],
      [`Bearer   ${valid}  `, 200],
      [`Basic ${Buffer.from('alice:pw').toString('base64')}`, 401],
      [`Bearer`, 401],
      [`Token ${valid}`, 401],
    ];
    for (const [authorization, status] of variants) {
      const r = await request(gw.url(), { path: '/api/x', headers: { authorization } });
      assert.equal(r.status, status, authorization.slice(0, 20));
    }
    // A token in the query string is not a credential.
    const q = await request(gw.url(), { path: `/api/x?access_token=${valid}` });
    assert.equal(q.status, 401);
    // A header block too large for the server is answered, not dropped.
    const huge = await request(gw.url(), {
      path: '/api/x',
      headers: { authorization: `Bearer ${'a'.repeat(20_000)}` },
    });
    assert.equal(huge.status, 431);
    assert.equal(backend.seen.length, 3);
  });

  test('claims cannot inject headers: CR, LF and non-ASCII in claims reach the backend encoded', async (t) => {
    const { backend, call } = await gateway(t);
    const jwt = await idp.sign({
      sub: 'alice',
      aud: AUD,
      preferred_username: 'alice\r\nX-Gatehouse-Admin: yes',
      email: 'ålice@example.com',
      groups: ['a,b', 'c\nd', 'ops'],
    });
    const r = await call(jwt);
    assert.equal(r.status, 200, r.body.toString());
    const seen = seenOf(r.body);
    assert.deepEqual(identityHeaders(seen).sort(), [
      'x-gatehouse-assertion',
      'x-gatehouse-email',
      'x-gatehouse-groups',
      'x-gatehouse-user',
    ]);
    assert.equal(seen.headers['x-gatehouse-user'], 'alice%0D%0AX-Gatehouse-Admin:%20yes');
    assert.equal(seen.headers['x-gatehouse-email'], '%C3%A5lice@example.com');
    assert.equal(seen.headers['x-gatehouse-groups'], 'a%2Cb,c%0Ad,ops');
    assert.equal(backend.seen.length, 1);
  });

  test('a refused token on a public route is ignored, never attached; the gateway still serves', async (t) => {
    const { backend, call } = await gateway(t);
    const forged = `${b64({ alg: 'none' })}.${b64({ sub: 'root', iss: idp.issuer, aud: AUD })}.`;
    const r = await call(forged, '/open/x');
    // A public route needs no credential: an invalid one is ignored (documented), never attached.
    assert.equal(r.status, 200);
    assert.deepEqual(identityHeaders(seenOf(r.body)), []);
    const ok = await call(await idp.sign({ sub: 'alice', aud: AUD }));
    assert.equal(ok.status, 200);
    assert.equal(seenOf(ok.body).headers['x-gatehouse-user'], 'alice');
    assert.ok(backend.seen.length >= 1);
  });
});

import assert from 'node:assert/strict';
import { createPrivateKey, type JsonWebKey } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { createLocalJWKSet, decodeProtectedHeader, errors as joseErrors, jwtVerify } from 'jose';
import {
  ASSERTION_STORE_KEY,
  AssertionKeyError,
  AssertionSigner,
  type AssertionSignerOptions,
  generateAssertionJwk,
  jwkThumbprint,
  MemoryAssertionKeyStore,
} from '../src/identity/assertion.js';
import type { Identity } from '../src/identity/types.js';
import { tempDir } from './helpers/identity.js';

const alice: Identity = Object.freeze({
  subject: 'user-123',
  user: 'alice',
  email: 'alice@example.com',
  groups: Object.freeze(['data-eng', 'ops']),
  claims: {},
  authMethod: 'session',
  source: 'corp',
  expiresAt: undefined,
});

function clock(start = Date.parse('2026-03-01T10:00:00Z')) {
  const c = { t: start, now: () => c.t };
  return c;
}

const noSecrets = (ref: string): string => {
  throw new Error(`unexpected secret ${ref}`);
};

function opts(c: { now: () => number }, extra: Partial<AssertionSignerOptions> = {}): AssertionSignerOptions {
  return { readSecret: noSecrets, keyStore: new MemoryAssertionKeyStore(), now: c.now, ...extra };
}

async function verify(token: string, signer: AssertionSigner, audience: string, at: number) {
  return jwtVerify(token, createLocalJWKSet(signer.jwks()), {
    issuer: signer.issuer,
    audience,
    currentDate: new Date(at),
    algorithms: [signer.algorithm],
  });
}

describe('identity assertion', () => {
  test('instances starting together on one store adopt the first stored key instead of each their own', async () => {
    const c = clock();
    const shared = new MemoryAssertionKeyStore();
    // Each instance reads the store as empty before it writes (both looked before either wrote: the
    // race), and sees the real store from its read-back on.
    const racing = (): AssertionSignerOptions['keyStore'] => {
      let staleReads = 2;
      return {
        get: async (key) => (staleReads-- > 0 ? undefined : shared.get(key)),
        set: (key, value) => shared.set(key, value),
        add: (key, value) => shared.add(key, value),
      };
    };
    const first = await AssertionSigner.create(undefined, opts(c, { keyStore: racing() }));
    const second = await AssertionSigner.create(undefined, opts(c, { keyStore: racing() }));
    assert.equal(second.kid, first.kid, 'the second instance signs with the key that was stored first');
    assert.deepEqual(second.jwks(), first.jwks());
    const token = second.sign(alice, 'airbyte.example.com');
    await verify(token, first, 'airbyte.example.com', c.t);
  });

  test('ES256 by default; verifies with jose against jwks(); carries the identity claims', async () => {
    const c = clock();
    const signer = await AssertionSigner.create(undefined, opts(c));
    const token = signer.sign(alice, 'airbyte.example.com');
    assert.equal(typeof token, 'string');
    const { payload, protectedHeader } = await verify(token, signer, 'airbyte.example.com', c.t);
    assert.deepEqual(protectedHeader, { alg: 'ES256', typ: 'JWT', kid: signer.kid });
    assert.equal(payload.iss, 'gatehouse');
    assert.equal(payload.aud, 'airbyte.example.com');
    assert.equal(payload.sub, 'user-123');
    assert.equal(payload.email, 'alice@example.com');
    assert.equal(payload.preferred_username, 'alice');
    assert.deepEqual(payload.groups, ['data-eng', 'ops']);
    assert.deepEqual(payload.amr, ['session']);
    assert.equal(payload.iat, c.t / 1000);
    assert.equal(payload.exp, c.t / 1000 + 300);
    assert.match(String(payload.jti), /^[0-9a-f-]{36}$/);
    // kid is the RFC 7638 thumbprint of the published key.
    const [jwk] = signer.jwks().keys;
    assert.equal(jwk!.kid, jwkThumbprint(jwk as JsonWebKey));
    assert.equal(jwk!.alg, 'ES256');
    assert.equal(jwk!.use, 'sig');
    assert.equal((jwk as { d?: string }).d, undefined, 'no private part is published');
    assert.deepEqual(JSON.parse(signer.jwksJson()), signer.jwks());
    // Another audience does not verify as this one.
    await assert.rejects(
      verify(token, signer, 'prefect.example.com', c.t),
      joseErrors.JWTClaimValidationFailed,
    );
  });

  test('issuer, ttl and algorithm from config: RS256 and EdDSA', async () => {
    for (const algorithm of ['RS256', 'EdDSA'] as const) {
      const c = clock();
      const signer = await AssertionSigner.create(
        { ttl: 60_000, algorithm, issuer: 'https://gw.example.com' },
        opts(c),
      );
      const token = signer.sign(alice, 'h');
      const { payload, protectedHeader } = await verify(token, signer, 'h', c.t);
      assert.equal(protectedHeader.alg, algorithm);
      assert.equal(payload.iss, 'https://gw.example.com');
      assert.equal((payload.exp as number) - (payload.iat as number), 60);
    }
  });

  test('assertions are cached per identity and audience until half their lifetime is left', async () => {
    const c = clock();
    const signer = await AssertionSigner.create({ ttl: 300_000, algorithm: 'ES256' }, opts(c));
    const t1 = signer.sign(alice, 'a.example.com');
    assert.equal(signer.sign(alice, 'a.example.com'), t1);
    // An equal identity in another object (e.g. from another request) shares the cache.
    assert.equal(signer.sign({ ...alice, claims: { other: 1 } }, 'a.example.com'), t1);
    assert.equal(signer.signatures, 1);
    const t2 = signer.sign(alice, 'b.example.com');
    assert.notEqual(t2, t1);
    assert.equal(signer.sign({ ...alice, groups: ['data-eng'] }, 'a.example.com') === t1, false);
    assert.equal(signer.sign({ ...alice, email: 'other@example.com' }, 'a.example.com') === t1, false);
    assert.equal(signer.signatures, 4);

    c.t += 149_000;
    assert.equal(signer.sign(alice, 'a.example.com'), t1);
    assert.equal(
      signer.sign(alice, 'a.example.com', c.t + 1000) === t1,
      false,
      'an explicit clock reading is used',
    );
    c.t += 1000; // 150 s of 300 s used: re-signed
    const t3 = signer.sign(alice, 'a.example.com');
    assert.notEqual(t3, t1);
    assert.equal(signer.sign(alice, 'a.example.com'), t3);
    const { payload } = await verify(t3, signer, 'a.example.com', c.t);
    assert.equal(payload.iat, c.t / 1000);
  });

  test('an assertion never outlives the credential it stands for', async () => {
    const c = clock();
    const signer = await AssertionSigner.create({ ttl: 300_000, algorithm: 'ES256' }, opts(c));
    const shortLived = { ...alice, expiresAt: c.t + 60_000 };
    const { payload } = await verify(signer.sign(shortLived, 'h'), signer, 'h', c.t);
    assert.equal(payload.exp, (c.t + 60_000) / 1000);
    // A cached assertion for an equal identity that lives longer is not handed to the short-lived one.
    const long = signer.sign(alice, 'x');
    const short = signer.sign({ ...alice, expiresAt: c.t + 30_000 }, 'x');
    assert.notEqual(short, long);
  });

  test('rotation: the new key signs, the old one stays published until its last assertion expired', async () => {
    const c = clock();
    const store = new MemoryAssertionKeyStore();
    const signer = await AssertionSigner.create(
      { ttl: 300_000, algorithm: 'ES256' },
      opts(c, { keyStore: store }),
    );
    const oldKid = signer.kid;
    const oldToken = signer.sign(alice, 'h');

    c.t += 10_000;
    await signer.rotate();
    assert.notEqual(signer.kid, oldKid);
    const newToken = signer.sign(alice, 'h');
    assert.notEqual(newToken, oldToken, 'the cache does not hand out assertions of the old key');
    assert.equal(decodeProtectedHeader(newToken).kid, signer.kid);
    assert.deepEqual(
      signer.jwks().keys.map((k) => k.kid),
      [signer.kid, oldKid],
    );
    await verify(oldToken, signer, 'h', c.t);
    await verify(newToken, signer, 'h', c.t);

    // Still published while an assertion signed just before the rotation may be in use.
    c.t += 300_000;
    assert.ok(signer.jwks().keys.some((k) => k.kid === oldKid));
    // Gone once that assertion (plus the skew margin) has expired.
    c.t += 61_000;
    assert.deepEqual(
      signer.jwks().keys.map((k) => k.kid),
      [signer.kid],
    );
  });

  test('instances sharing a key store sign with the same key and follow a rotation on sync()', async () => {
    const c = clock();
    const store = new MemoryAssertionKeyStore();
    const a = await AssertionSigner.create(undefined, opts(c, { keyStore: store }));
    const b = await AssertionSigner.create(undefined, opts(c, { keyStore: store }));
    assert.equal(a.kid, b.kid);
    assert.ok(await store.get(ASSERTION_STORE_KEY));
    // An assertion signed by one verifies against the other's JWKS.
    await verify(a.sign(alice, 'h'), b, 'h', c.t);

    await a.rotate();
    assert.notEqual(a.kid, b.kid);
    await b.sync();
    assert.equal(b.kid, a.kid);
    assert.deepEqual(
      b.jwks().keys.map((k) => k.kid),
      a.jwks().keys.map((k) => k.kid),
    );
    // A reload (new signer from the same store) keeps the key instead of generating one.
    const reloaded = await AssertionSigner.create(undefined, opts(c, { keyStore: store }));
    assert.equal(reloaded.kid, a.kid);
  });

  test('signingKey from a file (private JWK, JWK set or PEM); mismatches are clear errors', async () => {
    const c = clock();
    const t = tempDir();
    try {
      const jwk = generateAssertionJwk('ES256');
      const file = path.join(t.dir, 'assertion.jwk');
      writeFileSync(file, JSON.stringify(jwk));
      const readSecret = (ref: string) => {
        assert.equal(ref, 'file:keys/assertion.jwk');
        return JSON.stringify(jwk);
      };
      const signer = await AssertionSigner.create(
        { signingKey: 'file:keys/assertion.jwk', ttl: 300_000, algorithm: 'ES256' },
        { readSecret, now: c.now },
      );
      const { x, y } = jwk;
      assert.equal(signer.kid, jwkThumbprint({ kty: 'EC', crv: 'P-256', x, y }));
      await verify(signer.sign(alice, 'h'), signer, 'h', c.t);
      await assert.rejects(signer.rotate(), AssertionKeyError);

      // A JWK set: the first key signs, the others are published for verification only.
      const next = generateAssertionJwk('ES256');
      const set = await AssertionSigner.create(
        { signingKey: 'k', ttl: 300_000, algorithm: 'ES256' },
        { readSecret: () => JSON.stringify({ keys: [next, jwk] }), now: c.now },
      );
      assert.deepEqual(
        set.jwks().keys.map((k) => k.kid),
        [set.kid, signer.kid],
      );
      c.t += 86_400_000;
      assert.equal(set.jwks().keys.length, 2);

      // Replacing the configured key on reload keeps the previous key published for its assertions.
      const replaced = await AssertionSigner.create(
        { signingKey: 'k', ttl: 300_000, algorithm: 'ES256' },
        { readSecret: () => JSON.stringify(next), now: c.now, previous: signer },
      );
      assert.deepEqual(
        replaced.jwks().keys.map((k) => k.kid),
        [replaced.kid, signer.kid],
      );
      c.t += 361_000;
      assert.deepEqual(
        replaced.jwks().keys.map((k) => k.kid),
        [replaced.kid],
      );

      const bad = (text: string, algorithm: 'ES256' | 'RS256' | 'EdDSA' = 'ES256') =>
        AssertionSigner.create({ signingKey: 'k', ttl: 300_000, algorithm }, { readSecret: () => text });
      await assert.rejects(
        bad('not json'),
        (e: unknown) => e instanceof AssertionKeyError && e.code === 'GH_ASSERTION_KEY',
      );
      await assert.rejects(bad(JSON.stringify(jwk), 'RS256'), /RS256/);
      await assert.rejects(bad(JSON.stringify(generateAssertionJwk('EdDSA'))), /the key is for EdDSA/);
      const { alg: _alg, ...ed } = generateAssertionJwk('EdDSA');
      await assert.rejects(bad(JSON.stringify(ed)), /ES256 needs an EC P-256 key/);
      // PEM works as well.
      const pem = createPrivateKey({ key: jwk, format: 'jwk' })
        .export({ format: 'pem', type: 'pkcs8' })
        .toString();
      assert.equal((await bad(pem)).kid, signer.kid);
      const { d: _d, ...publicOnly } = jwk;
      await assert.rejects(bad(JSON.stringify({ ...publicOnly, alg: undefined })), AssertionKeyError);
      await assert.rejects(bad('{"keys":[]}'), /empty/);
      await assert.rejects(
        AssertionSigner.create(
          { signingKey: 'file:missing', ttl: 300_000, algorithm: 'ES256' },
          {
            readSecret: () => {
              throw new Error('cannot read keys/missing');
            },
          },
        ),
        /identity\.assertion\.signingKey: cannot read/,
      );
    } finally {
      t.cleanup();
    }
  });

  test('signing is cheap: a cache hit does not sign', async () => {
    const c = clock();
    const signer = await AssertionSigner.create(undefined, opts(c));
    for (let i = 0; i < 1000; i++) signer.sign(alice, 'h');
    assert.equal(signer.signatures, 1);
  });
});

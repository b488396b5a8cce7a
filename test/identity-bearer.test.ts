import assert from 'node:assert/strict';
import { createHmac, createPublicKey } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { exportSPKI } from 'jose';
import {
  BearerAuthenticator,
  type BearerIssuerConfig,
  bearerToken,
  groupsFromClaim,
  looksLikeJwt,
  tokenVerificationsTotal,
} from '../src/identity/bearer.js';
import { IdentityConfigError, isLoopbackHost, requireSecureUrl } from '../src/identity/jwks.js';
import type { AuthResult } from '../src/identity/types.js';
import { makeKey, startIssuer, type TestIssuer, type TestKey } from './helpers/identity.js';

function cfg(issuer: string, extra: Partial<BearerIssuerConfig> = {}): BearerIssuerConfig {
  return {
    issuer,
    audiences: ['gatehouse-api', 'other-api'],
    algorithms: ['RS256', 'ES256'],
    groupsClaim: 'groups',
    clockTolerance: 30_000,
    ...extra,
  };
}

/** A clock the tests move by hand. */
function clock(start = Date.now()) {
  const c = { t: start, now: () => c.t };
  return c;
}

const sec = (ms: number) => Math.floor(ms / 1000);

function reason(r: AuthResult): string {
  return r.kind === 'invalid' ? r.reason : r.kind;
}

function b64(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

describe('bearer JWTs against a real issuer', () => {
  let rsa: TestKey;
  let ec: TestKey;
  let idp: TestIssuer;

  before(async () => {
    rsa = await makeKey('rsa-1', 'RS256');
    ec = await makeKey('ec-1', 'ES256');
    idp = await startIssuer([rsa, ec]);
  });
  after(() => idp.close());

  test('a valid token becomes the identity; JWKS found through discovery', async () => {
    idp.jwksHits = 0;
    idp.discoveryHits = 0;
    const c = clock();
    const auth = new BearerAuthenticator([cfg(idp.issuer)], { now: c.now });
    const token = await idp.sign(
      {
        sub: 'agent-7',
        aud: 'gatehouse-api',
        preferred_username: 'etl-bot',
        email: 'etl@example.com',
        groups: ['agents', 'etl', 42],
      },
      { exp: sec(c.t) + 600 },
    );
    const r = await auth.authenticate(token);
    assert.equal(r.kind, 'ok');
    if (r.kind !== 'ok') return;
    assert.equal(r.identity.subject, 'agent-7');
    assert.equal(r.identity.user, 'etl-bot');
    assert.equal(r.identity.email, 'etl@example.com');
    assert.deepEqual(r.identity.groups, ['agents', 'etl']);
    assert.equal(r.identity.authMethod, 'bearer');
    assert.equal(r.identity.source, idp.issuer);
    assert.equal(r.identity.expiresAt, (sec(c.t) + 600) * 1000);
    assert.equal(r.identity.claims.aud, 'gatehouse-api');
    assert.equal(idp.discoveryHits, 1);
    assert.equal(idp.jwksHits, 1);

    // ES256 works too, and the audience may be any of the configured ones (aud may be an array).
    const t2 = await idp.sign({ sub: 'agent-8', aud: ['x', 'other-api'] }, { key: ec, exp: sec(c.t) + 600 });
    const r2 = await auth.authenticate(t2);
    assert.equal(r2.kind, 'ok');
    if (r2.kind === 'ok') {
      assert.equal(r2.identity.user, 'agent-8');
      assert.equal(r2.identity.email, undefined);
      assert.deepEqual(r2.identity.groups, []);
    }
    assert.equal(idp.jwksHits, 1, 'the key set is cached');
  });

  test('groups from a space-separated string, a namespaced claim name, or a nested path', async () => {
    const c = clock();
    const a = new BearerAuthenticator(
      [cfg(idp.issuer, { jwksUri: idp.jwksUri, groupsClaim: 'https://example.com/groups' })],
      { now: c.now },
    );
    const r = await a.authenticate(
      await idp.sign({ sub: 's', aud: 'gatehouse-api', 'https://example.com/groups': 'a b  c' }),
    );
    assert.deepEqual(r.kind === 'ok' && r.identity.groups, ['a', 'b', 'c']);
    const b = new BearerAuthenticator(
      [cfg(idp.issuer, { jwksUri: idp.jwksUri, groupsClaim: 'realm_access.roles' })],
      {
        now: c.now,
      },
    );
    const r2 = await b.authenticate(
      await idp.sign({ sub: 's', aud: 'gatehouse-api', realm_access: { roles: ['admin'] } }),
    );
    assert.deepEqual(r2.kind === 'ok' && r2.identity.groups, ['admin']);
    assert.deepEqual(groupsFromClaim({ not: 'groups' }), []);
  });

  test('unverified email: a token whose issuer says email_verified false carries no email for policy rules', async () => {
    const c = clock();
    const a = new BearerAuthenticator([cfg(idp.issuer, { jwksUri: idp.jwksUri })], { now: c.now });
    const exp = sec(c.t) + 600;
    for (const flag of [false, 'false']) {
      const r = await a.authenticate(
        await idp.sign(
          { sub: `s-${String(flag)}`, aud: 'gatehouse-api', email: 'ceo@example.com', email_verified: flag },
          { exp },
        ),
      );
      assert.equal(r.kind, 'ok');
      assert.equal(r.kind === 'ok' && r.identity.email, undefined, `email_verified: ${JSON.stringify(flag)}`);
    }
    const verified = await a.authenticate(
      await idp.sign(
        { sub: 's-true', aud: 'gatehouse-api', email: 'ceo@example.com', email_verified: true },
        { exp },
      ),
    );
    assert.equal(verified.kind === 'ok' && verified.identity.email, 'ceo@example.com');
  });

  test('expired, not yet valid (clock tolerance honoured), wrong audience', async () => {
    const c = clock();
    const auth = new BearerAuthenticator([cfg(idp.issuer, { jwksUri: idp.jwksUri })], { now: c.now });
    const now = sec(c.t);
    const expired = await idp.sign({ sub: 's', aud: 'gatehouse-api' }, { exp: now - 60 });
    assert.equal(reason(await auth.authenticate(expired)), 'token-expired');
    const withinTolerance = await idp.sign({ sub: 's', aud: 'gatehouse-api' }, { exp: now - 10 });
    assert.equal(reason(await auth.authenticate(withinTolerance)), 'ok');
    const future = await idp.sign({ sub: 's', aud: 'gatehouse-api' }, { nbf: now + 600, exp: now + 1200 });
    assert.equal(reason(await auth.authenticate(future)), 'token-not-yet-valid');
    const soon = await idp.sign({ sub: 's', aud: 'gatehouse-api' }, { nbf: now + 10, exp: now + 1200 });
    assert.equal(reason(await auth.authenticate(soon)), 'ok');
    const wrongAud = await idp.sign({ sub: 's', aud: 'someone-else' });
    assert.equal(reason(await auth.authenticate(wrongAud)), 'token-wrong-audience');
    const noAud = await idp.sign({ sub: 's' });
    assert.equal(reason(await auth.authenticate(noAud)), 'token-wrong-audience');
    const noSub = await idp.sign({ aud: 'gatehouse-api' });
    assert.equal(reason(await auth.authenticate(noSub)), 'token-invalid');

    // The not-yet-valid token becomes valid when the clock reaches nbf (not remembered as bad).
    c.t += 600_000;
    assert.equal(reason(await auth.authenticate(future)), 'ok');
  });

  test('wrong issuer: the token names the issuer in another spelling than the configured one', async () => {
    const auth = new BearerAuthenticator([cfg(`${idp.issuer}/`, { jwksUri: idp.jwksUri })]);
    const r = await auth.authenticate(await idp.sign({ sub: 's', aud: 'gatehouse-api' }));
    assert.equal(reason(r), 'token-wrong-issuer');
  });

  test('unknown issuer is refused without fetching anything or checking a signature', async () => {
    idp.jwksHits = 0;
    const auth = new BearerAuthenticator([cfg(idp.issuer, { jwksUri: idp.jwksUri })]);
    const token = await idp.sign({ sub: 's', aud: 'gatehouse-api' }, { iss: 'https://evil.example.com' });
    const r = await auth.authenticate(token);
    assert.equal(reason(r), 'token-unknown-issuer');
    assert.equal(auth.verifications, 0);
    assert.equal(idp.jwksHits, 0);
    for (const junk of ['', 'abc', 'a.b.c', `${b64({ alg: 'RS256' })}.${b64([1])}.x`]) {
      assert.equal(reason(await auth.authenticate(junk)), 'token-invalid', junk);
    }
    const noIss = `${b64({ alg: 'RS256', kid: rsa.kid })}.${b64({ sub: 's', aud: 'gatehouse-api' })}.${b64('sig')}`;
    assert.equal(reason(await auth.authenticate(noIss)), 'token-invalid');
  });

  test('alg none is refused', async () => {
    const auth = new BearerAuthenticator([cfg(idp.issuer, { jwksUri: idp.jwksUri })]);
    const exp = sec(Date.now()) + 600;
    const payload = b64({ iss: idp.issuer, sub: 'admin', aud: 'gatehouse-api', exp });
    for (const alg of ['none', 'None', 'NONE']) {
      const r = await auth.authenticate(`${b64({ alg, typ: 'JWT' })}.${payload}.`);
      assert.equal(reason(r), 'token-invalid', alg);
    }
    const r = await auth.authenticate(`${b64({ alg: 'none', kid: rsa.kid })}.${payload}.${b64('x')}`);
    assert.equal(reason(r), 'token-invalid');
  });

  test('HMAC confusion: HS256 signed with the RSA public key is refused', async () => {
    idp.jwksHits = 0;
    const auth = new BearerAuthenticator([cfg(idp.issuer, { jwksUri: idp.jwksUri })]);
    const pem = await exportSPKI(createPublicKey({ key: rsa.publicJwk as never, format: 'jwk' }));
    const exp = sec(Date.now()) + 600;
    for (const secret of [pem, pem.trim(), JSON.stringify(rsa.publicJwk)]) {
      const input = `${b64({ alg: 'HS256', typ: 'JWT', kid: rsa.kid })}.${b64({ iss: idp.issuer, sub: 'admin', aud: 'gatehouse-api', exp })}`;
      const sig = createHmac('sha256', secret).update(input).digest('base64url');
      const r = await auth.authenticate(`${input}.${sig}`);
      assert.equal(reason(r), 'token-invalid');
      assert.equal(r.kind === 'invalid' && r.message, 'token algorithm is not allowed');
    }
    assert.equal(idp.jwksHits, 0, 'the algorithm is refused before any key is looked up');
    // An allow-list that names HMAC or none is refused outright.
    for (const alg of ['HS256', 'none']) {
      assert.throws(
        () => new BearerAuthenticator([cfg(idp.issuer, { algorithms: [alg as 'RS256'] })]),
        (e: unknown) => e instanceof IdentityConfigError && e.code === 'GH_IDENTITY_CONFIG',
      );
    }
  });

  test('a token with a valid shape but a forged signature is refused', async () => {
    const auth = new BearerAuthenticator([cfg(idp.issuer, { jwksUri: idp.jwksUri })]);
    const good = await idp.sign({ sub: 'alice', aud: 'gatehouse-api' });
    const [h, , s] = good.split('.');
    const forged = `${h}.${b64({ iss: idp.issuer, sub: 'admin', aud: 'gatehouse-api', exp: sec(Date.now()) + 600 })}.${s}`;
    assert.equal(reason(await auth.authenticate(forged)), 'token-invalid');
    // Another key with the same kid (an attacker's) does not verify either.
    const other = await makeKey(rsa.kid, 'RS256');
    const t = await idp.sign({ sub: 'admin', aud: 'gatehouse-api' }, { key: other });
    assert.equal(reason(await auth.authenticate(t)), 'token-invalid');
  });

  test('JWKS rotation: an unknown kid refetches the key set, at most once per cooldown', async () => {
    const k1 = await makeKey('k1');
    const k2 = await makeKey('k2');
    const k3 = await makeKey('k3');
    const rot = await startIssuer([k1]);
    try {
      const c = clock();
      const auth = new BearerAuthenticator([cfg(rot.issuer, { jwksUri: rot.jwksUri })], {
        now: c.now,
        jwksCooldownMs: 30_000,
      });
      const exp = sec(c.t) + 3600;
      assert.equal(
        reason(await auth.authenticate(await rot.sign({ sub: 'a', aud: 'gatehouse-api' }, { exp }))),
        'ok',
      );
      assert.equal(rot.jwksHits, 1);

      // The issuer rotates; a token with the new kid arrives after the cooldown: one refetch, accepted.
      rot.keys = [k1, k2];
      c.t += 31_000;
      const t2 = await rot.sign({ sub: 'b', aud: 'gatehouse-api' }, { key: k2, exp });
      assert.equal(reason(await auth.authenticate(t2)), 'ok');
      assert.equal(rot.jwksHits, 2);

      // Right after a fetch, unknown kids do not cause fetches (cooldown), however many arrive.
      rot.keys = [k1, k2, k3];
      c.t += 1000;
      const t3 = [];
      for (let i = 0; i < 5; i++)
        t3.push(await rot.sign({ sub: `c${i}`, aud: 'gatehouse-api' }, { key: k3, exp }));
      for (const t of t3) assert.equal(reason(await auth.authenticate(t)), 'token-invalid');
      assert.equal(rot.jwksHits, 2);

      // After the cooldown, concurrent tokens with the new kid share a single fetch.
      c.t += 30_000;
      const results = await Promise.all(t3.map((t) => auth.authenticate(t)));
      assert.deepEqual(results.map(reason), ['ok', 'ok', 'ok', 'ok', 'ok']);
      assert.equal(rot.jwksHits, 3);

      // A kid that is still unknown after the refetch is refused.
      c.t += 31_000;
      const stranger = await makeKey('k9');
      assert.equal(
        reason(
          await auth.authenticate(await rot.sign({ sub: 'z', aud: 'gatehouse-api' }, { key: stranger, exp })),
        ),
        'token-invalid',
      );
      assert.equal(rot.jwksHits, 4);
    } finally {
      await rot.close();
    }
  });

  test('JWKS unreachable or failing: jwks-unavailable (fail closed), logged; recovers when it is back', async () => {
    const k = await makeKey('k');
    const dead = http.createServer();
    await new Promise<void>((resolve) => dead.listen(0, '127.0.0.1', resolve));
    const port = (dead.address() as AddressInfo).port;
    await new Promise<void>((resolve) => dead.close(() => resolve()));
    const warnings: string[] = [];
    const logger = { warn: (_o: object, msg: string) => warnings.push(msg) };

    const auth = new BearerAuthenticator(
      [cfg(`http://127.0.0.1:${port}`, { jwksUri: `http://127.0.0.1:${port}/jwks` })],
      { logger, fetchTimeoutMs: 2000 },
    );
    const idp2 = await startIssuer([k]);
    try {
      const token = await idp2.sign({ sub: 's', aud: 'gatehouse-api' }, { iss: `http://127.0.0.1:${port}` });
      const r = await auth.authenticate(token);
      assert.equal(reason(r), 'jwks-unavailable');
      assert.ok(warnings.length >= 1);

      // A JWKS answering 500 (or redirecting) is unavailable too; once it answers 200, tokens pass.
      const c = clock();
      const a2 = new BearerAuthenticator([cfg(idp2.issuer, { jwksUri: idp2.jwksUri })], {
        now: c.now,
        logger,
      });
      idp2.jwksStatus = 500;
      const t2 = await idp2.sign({ sub: 's', aud: 'gatehouse-api' });
      assert.equal(reason(await a2.authenticate(t2)), 'jwks-unavailable');
      idp2.jwksStatus = 302;
      c.t += 10_000;
      assert.equal(reason(await a2.authenticate(t2)), 'jwks-unavailable');
      idp2.jwksStatus = 200;
      c.t += 10_000;
      assert.equal(reason(await a2.authenticate(t2)), 'ok');
    } finally {
      await idp2.close();
    }
  });

  test('stale keys keep working during a short JWKS outage, up to a limit; then fail closed', async () => {
    const k = await makeKey('k');
    const d = await startIssuer([k]);
    try {
      const c = clock();
      const auth = new BearerAuthenticator([cfg(d.issuer, { jwksUri: d.jwksUri })], {
        now: c.now,
        jwksCacheMaxAgeMs: 600_000,
        jwksMaxStaleMs: 3_600_000,
      });
      const exp = sec(c.t) + 86_400;
      const token = (sub: string) => d.sign({ sub, aud: 'gatehouse-api' }, { exp });
      assert.equal(reason(await auth.authenticate(await token('a'))), 'ok');
      d.jwksStatus = 503;
      c.t += 601_000;
      // Past the max age: answered from the stale set while a refresh is tried in the background.
      assert.equal(reason(await auth.authenticate(await token('b'))), 'ok');
      await auth
        .keySet(d.issuer)!
        .refresh()
        .catch(() => {});
      assert.equal(d.jwksHits, 2);
      c.t += 3_600_000;
      assert.equal(reason(await auth.authenticate(await token('c'))), 'jwks-unavailable');
      d.jwksStatus = 200;
      c.t += 10_000;
      assert.equal(reason(await auth.authenticate(await token('d'))), 'ok');
    } finally {
      await d.close();
    }
  });

  test('discovery: the document must name exactly the configured issuer', async () => {
    const k = await makeKey('k');
    const d = await startIssuer([k]);
    try {
      d.discoveryIssuer = 'https://someone-else.example.com';
      const auth = new BearerAuthenticator([cfg(d.issuer)]);
      assert.equal(
        reason(await auth.authenticate(await d.sign({ sub: 's', aud: 'gatehouse-api' }))),
        'jwks-unavailable',
      );
      assert.equal(d.jwksHits, 0);
    } finally {
      await d.close();
    }
  });

  test('a cache hit is synchronous, costs no verification, and ends when the token expires', async () => {
    const c = clock();
    const auth = new BearerAuthenticator([cfg(idp.issuer, { jwksUri: idp.jwksUri, clockTolerance: 0 })], {
      now: c.now,
    });
    const before =
      (await tokenVerificationsTotal.get()).values.find((v) => v.labels.result === 'ok')?.value ?? 0;
    const exp = sec(c.t) + 120;
    const token = await idp.sign({ sub: 'cached', aud: 'gatehouse-api' }, { exp });
    const first = auth.authenticate(token);
    assert.ok(first instanceof Promise);
    // A concurrent request with the same token shares the verification.
    const concurrent = auth.authenticate(token);
    assert.equal(concurrent, first);
    const r1 = await first;
    assert.equal(r1.kind, 'ok');
    assert.equal(auth.verifications, 1);

    const second = auth.authenticate(token);
    assert.ok(!(second instanceof Promise), 'a cached token is answered synchronously');
    assert.equal(second, r1);
    for (let i = 0; i < 100; i++) auth.authenticate(token);
    assert.equal(auth.verifications, 1);
    const afterOk =
      (await tokenVerificationsTotal.get()).values.find((v) => v.labels.result === 'ok')?.value ?? 0;
    assert.equal(afterOk - before, 1);

    // At exp the cache entry ends and the token is refused as expired.
    // (The caller may pass the request's clock reading instead of the authenticator reading it.)
    const r3 = auth.authenticate(token, exp * 1000);
    c.t = exp * 1000;
    assert.ok(r3 instanceof Promise);
    assert.equal(reason(await r3), 'token-expired');
    assert.equal(auth.verifications, 2);
    // A refused token is remembered briefly: retries cost no further verification.
    assert.equal(reason(await auth.authenticate(token)), 'token-expired');
    assert.equal(auth.verifications, 2);
  });

  test('a token that reuses a cached token’s signature is verified, refused, and leaves the cached one alone', async () => {
    const auth = new BearerAuthenticator([cfg(idp.issuer, { jwksUri: idp.jwksUri })]);
    const good = await idp.sign({ sub: 'alice', aud: 'gatehouse-api' });
    assert.equal((await auth.authenticate(good)).kind, 'ok');
    assert.equal(auth.verifications, 1);
    // Same header and signature, another payload: the cache is keyed by the signature's tail, so
    // this lands on the cached entry's key; the whole token must still be compared.
    const [h, , s] = good.split('.');
    const forged = `${h}.${b64({ iss: idp.issuer, sub: 'admin', aud: 'gatehouse-api', exp: sec(Date.now()) + 600 })}.${s}`;
    const r = auth.authenticate(forged);
    assert.ok(r instanceof Promise, 'the forged token is not answered from the cache');
    assert.equal(reason(await r), 'token-invalid');
    assert.equal(auth.verifications, 2);
    // Remembered as refused; the genuine token is still a synchronous hit.
    assert.equal(reason(await auth.authenticate(forged)), 'token-invalid');
    assert.equal(auth.verifications, 2);
    const again = auth.authenticate(good);
    assert.ok(!(again instanceof Promise));
    assert.equal(again.kind === 'ok' && again.identity.subject, 'alice');
    // Short credentials (shorter than the key) work too.
    assert.equal(reason(await auth.authenticate('a.b.c')), 'token-invalid');
  });

  test('the cache is bounded and evicts the least recently used token', async () => {
    const c = clock();
    const auth = new BearerAuthenticator([cfg(idp.issuer, { jwksUri: idp.jwksUri })], {
      now: c.now,
      cacheSize: 2,
    });
    const [a, b, d] = await Promise.all(
      ['a', 'b', 'd'].map((sub) => idp.sign({ sub, aud: 'gatehouse-api' })),
    );
    await auth.authenticate(a!);
    await auth.authenticate(b!);
    assert.ok(!(auth.authenticate(a!) instanceof Promise)); // a is now the most recent
    await auth.authenticate(d!); // evicts b
    assert.equal(auth.cachedTokens, 2);
    assert.ok(!(auth.authenticate(a!) instanceof Promise));
    assert.ok(auth.authenticate(b!) instanceof Promise);
  });

  test('reload: keys and verified tokens are carried over when the issuer settings did not change', async () => {
    idp.jwksHits = 0;
    const c = clock();
    const issuers = [cfg(idp.issuer, { jwksUri: idp.jwksUri })];
    const first = new BearerAuthenticator(issuers, { now: c.now });
    const token = await idp.sign({ sub: 'r', aud: 'gatehouse-api' });
    assert.equal(reason(await first.authenticate(token)), 'ok');
    const same = new BearerAuthenticator(structuredClone(issuers), { now: c.now, previous: first });
    const hit = same.authenticate(token);
    assert.ok(!(hit instanceof Promise), 'the verified token is still cached');
    assert.equal(same.keySet(idp.issuer), first.keySet(idp.issuer));
    // Another audience list: tokens are verified again, but the key set is not fetched again.
    const changed = new BearerAuthenticator([{ ...issuers[0]!, audiences: ['gatehouse-api'] }], {
      now: c.now,
      previous: first,
    });
    assert.ok(changed.authenticate(token) instanceof Promise);
    assert.equal(reason(await changed.authenticate(token)), 'ok');
    assert.equal(idp.jwksHits, 1);
  });

  test('http: issuers and JWKS URLs are accepted only on loopback', () => {
    assert.throws(
      () => new BearerAuthenticator([cfg('http://idp.example.com')]),
      (e: unknown) =>
        e instanceof IdentityConfigError &&
        /https/.test(e.message) &&
        /identity\.bearer\.0\.issuer/.test(e.message),
    );
    assert.throws(
      () =>
        new BearerAuthenticator([
          cfg('https://idp.example.com', { jwksUri: 'http://keys.example.com/jwks' }),
        ]),
      (e: unknown) => e instanceof IdentityConfigError && /jwksUri/.test(e.message),
    );
    assert.throws(() => new BearerAuthenticator([cfg('ftp://idp.example.com')]), IdentityConfigError);
    // https anywhere and http on loopback are fine (nothing is fetched at construction).
    new BearerAuthenticator([
      cfg('https://idp.example.com'),
      cfg('http://localhost:8080'),
      cfg('http://[::1]:9'),
    ]);
    for (const h of ['localhost', '127.0.0.1', '127.9.9.9', '[::1]', 'a.localhost', '[::ffff:7f00:1]']) {
      assert.ok(isLoopbackHost(h), h);
    }
    for (const h of ['idp.example.com', '10.0.0.1', '[::2]', 'localhost.example.com', '128.0.0.1']) {
      assert.ok(!isLoopbackHost(h), h);
    }
    assert.equal(requireSecureUrl('http://127.0.0.1:1/x', 'here').port, '1');
  });

  test('bearerToken reads the credential of an Authorization: Bearer header', () => {
    assert.equal(bearerToken('Bearer abc.def.ghi'), 'abc.def.ghi');
    assert.equal(bearerToken('bearer  ghk_x_y '), 'ghk_x_y');
    assert.equal(bearerToken('BEARER t'), 't');
    for (const h of [
      undefined,
      '',
      'Bearer',
      'Bearer ',
      'Bearer    ',
      'Basic dXNlcjpwYXNz',
      'Bearerabc',
      'Token abc',
    ]) {
      assert.equal(bearerToken(h), undefined, String(h));
    }
  });

  test('looksLikeJwt: three non-empty dot-separated parts, and nothing else', () => {
    for (const s of ['a.b.c', 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln']) assert.ok(looksLikeJwt(s), s);
    for (const s of [
      '',
      'abc',
      'a.b',
      'a.b.c.d.e',
      '.b.c',
      'a..c',
      'a.b.',
      'a.b.c.',
      'ghk_x_yyyy',
      'a-b-c',
    ]) {
      assert.ok(!looksLikeJwt(s), s);
    }
  });
});

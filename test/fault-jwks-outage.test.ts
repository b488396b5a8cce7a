/**
 * Fault: the token issuer's discovery document and JWKS become unreachable (connections reset, or
 * accepted and never answered). Tokens the gateway already verified, and new tokens signed by keys it
 * already holds, keep working; a token that would need the issuer is refused with 401, without every
 * request waiting on the issuer or hitting it; a gateway that starts during the outage fails closed and
 * recovers by itself when the issuer is back.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { makeKey, startIssuer, type TestIssuer, type TestKey } from './helpers/identity.js';
import { config, request, startBackend, startGateway } from './helpers/proxy.js';

function reasonOf(body: Buffer): unknown {
  return (JSON.parse(body.toString()) as { reason?: unknown }).reason;
}

describe('fault: JWKS outage', () => {
  let idp: TestIssuer;
  let k1: TestKey;
  let k2: TestKey;

  before(async () => {
    k1 = await makeKey('k1', 'ES256');
    k2 = await makeKey('k2', 'ES256');
    idp = await startIssuer([k1]);
  });
  after(() => idp.close());

  async function gateway(t: import('node:test').TestContext) {
    const backend = await startBackend(t, 'b');
    const gw = await startGateway(t, {
      ...config({ app: { servers: [{ url: backend.url }] } }, [
        { name: 'api', upstream: 'app', policy: 'bearer' },
      ]),
      identity: { bearer: [{ issuer: idp.issuer, audiences: ['api'], algorithms: ['ES256'] }] },
      policies: { bearer: { allow: [{ authMethod: ['bearer'] }] } },
    });
    const call = (token: string) =>
      request(gw.url(), {
        path: '/x',
        headers: { authorization: `Bearer ${token}`, accept: 'application/json' },
      });
    return { backend, gw, call };
  }

  for (const outage of ['reset', 'hang'] as const) {
    test(`issuer ${outage === 'reset' ? 'resetting connections' : 'never answering'}: cached tokens and known keys keep working, unknown keys are refused at once`, async (t) => {
      idp.outage = undefined;
      idp.keys = [k1];
      const { call } = await gateway(t);
      const before = await idp.sign({ sub: 'alice', aud: 'api' });
      assert.equal((await call(before)).status, 200);
      const hits = idp.jwksHits + idp.discoveryHits;

      idp.outage = outage;
      t.after(() => {
        idp.outage = undefined;
      });
      // A verified token is answered from the cache.
      for (let i = 0; i < 20; i++) assert.equal((await call(before)).status, 200);
      // A new token signed by a key the gateway already holds needs no fetch either.
      const fresh = await idp.sign({ sub: 'bob', aud: 'api' });
      assert.equal((await call(fresh)).status, 200);
      // A token signed by a key the gateway has never seen (a rotation during the outage) is refused;
      // the key set was fetched moments ago, so no refetch is attempted for it (cooldown), and 50
      // concurrent requests with such tokens are all answered.
      const rotated = await Promise.all(
        Array.from({ length: 50 }, (_, i) => idp.sign({ sub: `u${i}`, aud: 'api' }, { key: k2 })),
      );
      const answers = await Promise.all(rotated.map((tok) => call(tok)));
      for (const r of answers) {
        assert.equal(r.status, 401);
        assert.equal(reasonOf(r.body), 'token-invalid');
        assert.match(String(r.headers['www-authenticate']), /error="invalid_token"/);
      }
      assert.equal(idp.jwksHits + idp.discoveryHits, hits, 'the issuer was not asked during the outage');
      // Still serving the good tokens afterwards.
      assert.equal((await call(before)).status, 200);
    });
  }

  test('a gateway started during the outage fails closed with jwks-unavailable and recovers by itself', {
    timeout: 60_000,
  }, async (t) => {
    idp.keys = [k1];
    idp.outage = 'reset';
    t.after(() => {
      idp.outage = undefined;
    });
    const { backend, call } = await gateway(t);
    const token = await idp.sign({ sub: 'alice', aud: 'api' });
    const first = await call(token);
    assert.equal(first.status, 401);
    assert.equal(reasonOf(first.body), 'jwks-unavailable');
    // While the fetch failure is recent, requests are refused without asking the issuer again.
    const asked = idp.jwksHits + idp.discoveryHits;
    const burst = await Promise.all(Array.from({ length: 30 }, () => call(token)));
    for (const r of burst) {
      assert.equal(r.status, 401);
      assert.equal(reasonOf(r.body), 'jwks-unavailable');
    }
    assert.ok(idp.jwksHits + idp.discoveryHits <= asked + 1, 'at most one more attempt during the burst');
    assert.equal(backend.seen.length, 0, 'nothing reached the backend while keys were unavailable');

    idp.outage = undefined;
    // The issuer is back: within the failure backoff the same token is accepted, without a restart.
    let status = 0;
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const r = await call(token);
      status = r.status;
      if (status === 200) break;
      assert.equal(status, 401);
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    assert.equal(status, 200, 'the gateway recovered by itself');
    assert.equal(backend.seen.length, 1);
  });

  test('an issuer that hangs delays only the first request of a burst, and only up to the fetch timeout', {
    timeout: 60_000,
  }, async (t) => {
    idp.keys = [k1];
    idp.outage = 'hang';
    t.after(() => {
      idp.outage = undefined;
    });
    const { call } = await gateway(t);
    const token = await idp.sign({ sub: 'alice', aud: 'api' });
    // Concurrent requests share one fetch: the issuer sees one discovery request, not twenty.
    const asked = idp.discoveryHits;
    const all = await Promise.all(Array.from({ length: 20 }, () => call(token)));
    for (const r of all) {
      assert.equal(r.status, 401);
      assert.equal(reasonOf(r.body), 'jwks-unavailable');
    }
    assert.equal(idp.discoveryHits, asked + 1);
    // Right after, the failure is remembered: the next requests are refused without a new attempt.
    for (let i = 0; i < 10; i++) assert.equal((await call(token)).status, 401);
    assert.equal(idp.discoveryHits, asked + 1);
  });
});

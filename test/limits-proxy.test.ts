/**
 * Rate limits and quotas through the built-in proxy (memory store): 429 with Retry-After and the
 * RateLimit headers, per-identity keys, refused callers spending nothing, `delay` holding requests in
 * order, quota costs fixed and reported by the upstream, `when`, the access log and /metrics.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { type TestContext, test } from 'node:test';
import { generateApiKey } from '../src/identity/apikeys.js';
import { registry } from '../src/observe/metrics.js';
import { config, request, startBackend, startGateway, type TestGateway, waitFor } from './helpers/proxy.js';

const alice = generateApiKey('alice');
const bob = generateApiKey('bob');
const ops = generateApiKey('ops');

interface Options {
  rateLimit?: Record<string, unknown>;
  quotas?: Record<string, unknown>;
  backendCost?: string;
  routeExtra?: Record<string, unknown>;
}

async function gateway(t: TestContext, o: Options): Promise<{ gw: TestGateway; seen: () => number }> {
  let seen = 0;
  const b = await startBackend(t, 'b', (_req, res) => {
    seen++;
    const headers: Record<string, string> = { 'content-type': 'text/plain' };
    if (o.backendCost !== undefined) headers['x-cost'] = o.backendCost;
    res.writeHead(200, headers);
    res.end('ok');
  });
  const gw = await startGateway(t, {
    ...config({ app: { servers: [{ url: b.url }] } }, [
      {
        name: 'api',
        match: { path: '/api' },
        upstream: 'app',
        policy: 'keys',
        ...(o.rateLimit === undefined ? {} : { rateLimit: o.rateLimit }),
        ...o.routeExtra,
      },
      {
        name: 'open',
        match: { path: '/open' },
        upstream: 'app',
        public: true,
        ...(o.rateLimit === undefined ? {} : { rateLimit: o.rateLimit }),
      },
    ]),
    identity: {
      apiKeys: [
        { id: 'alice', hash: alice.hashLine, subject: 'agent:alice', groups: ['agents'] },
        { id: 'bob', hash: bob.hashLine, subject: 'agent:bob', groups: ['agents'] },
        { id: 'ops', hash: ops.hashLine, subject: 'agent:ops', groups: ['ops'] },
      ],
    },
    policies: { keys: { allow: [{ groups: ['agents', 'ops'] }] } },
    ...(o.quotas === undefined ? {} : { quotas: o.quotas }),
  });
  return { gw, seen: () => seen };
}

const as = (key: { key: string }) => ({ 'x-api-key': key.key, accept: 'application/json' });

test('rate limit: a burst is admitted, the next request gets 429 with Retry-After and the RateLimit headers; another identity is not touched', async (t) => {
  const { gw, seen } = await gateway(t, { rateLimit: { rate: '1/min', burst: 3 } });
  for (let i = 0; i < 3; i++) {
    const r = await request(gw.url(), { path: '/api/run', headers: as(alice) });
    assert.equal(r.status, 200);
    assert.equal(r.headers['ratelimit-policy'], '"api";q=1;w=60');
    assert.match(String(r.headers.ratelimit), new RegExp(`^"api";r=${2 - i};t=\\d+$`));
  }
  const limited = await request(gw.url(), { path: '/api/run', headers: as(alice) });
  assert.equal(limited.status, 429);
  const body = JSON.parse(limited.body.toString());
  assert.equal(body.code, 'GH_RATE_LIMITED');
  // Three at once spent the bucket: the next one conforms one interval (60 s) after the first.
  const retry = Number(limited.headers['retry-after']);
  assert.ok(retry >= 55 && retry <= 60, `Retry-After ${retry}`);
  assert.equal(limited.headers['ratelimit-policy'], '"api";q=1;w=60');
  assert.match(String(limited.headers.ratelimit), /^"api";r=0;t=\d+$/);
  assert.equal(seen(), 3);

  const other = await request(gw.url(), { path: '/api/run', headers: as(bob) });
  assert.equal(other.status, 200, 'bob has a budget of his own');

  const entry = gw.access.filter((e) => e.path === '/api/run').at(3);
  assert.equal(entry?.status, 429);
  assert.equal(entry?.limit, 'limited');
  assert.equal(entry?.reason, 'rate-limited:api');
  assert.equal(entry?.error, 'GH_RATE_LIMITED');
  assert.equal(entry?.identity, 'agent:alice');
  assert.equal(gw.access.filter((e) => e.path === '/api/run').at(0)?.limit, 'allowed');

  const metrics = await registry.metrics();
  assert.match(metrics, /gatehouse_limit_verdicts_total\{route="api",verdict="limited",limit="rate"\} [1-9]/);
  assert.match(metrics, /gatehouse_limit_verdicts_total\{route="api",verdict="allowed",limit=""\} [1-9]/);
});

test("rate limit: refused callers spend no identity's budget (limits run after the access decision)", async (t) => {
  const { gw } = await gateway(t, { rateLimit: { rate: '1/min', burst: 2 } });
  for (let i = 0; i < 5; i++) {
    assert.equal(
      (await request(gw.url(), { path: '/api/run', headers: { 'x-api-key': 'gh_nope_nope' } })).status,
      401,
    );
    assert.equal((await request(gw.url(), { path: '/api/run' })).status, 401);
  }
  for (let i = 0; i < 2; i++) {
    assert.equal((await request(gw.url(), { path: '/api/run', headers: as(alice) })).status, 200);
  }
  assert.equal((await request(gw.url(), { path: '/api/run', headers: as(alice) })).status, 429);
});

test("rate limit by ip: an unauthenticated flood is limited (429 instead of 401), and the address's callers share it", async (t) => {
  const { gw, seen } = await gateway(t, { rateLimit: { rate: '1/min', burst: 3, key: 'ip' } });
  const statuses: number[] = [];
  for (let i = 0; i < 5; i++) {
    statuses.push(
      (await request(gw.url(), { path: '/api/run', headers: { 'x-api-key': 'gh_nope_nope' } })).status,
    );
  }
  assert.deepEqual(statuses, [401, 401, 401, 429, 429]);
  const flood = gw.access.filter((e) => e.status === 429);
  assert.equal(flood[0]?.reason, 'rate-limited:api');
  assert.equal(flood[0]?.identity, undefined);
  // The address's budget is spent: a valid key from it waits too, and nothing reached the upstream.
  const r = await request(gw.url(), { path: '/api/run', headers: as(alice) });
  assert.equal(r.status, 429);
  assert.ok(Number(r.headers['retry-after']) >= 1);
  assert.equal(seen(), 0);
});

test('rate limit: anonymous callers on a public route are counted per client address', async (t) => {
  const { gw } = await gateway(t, { rateLimit: { rate: '1/min', burst: 2 } });
  assert.equal((await request(gw.url(), { path: '/open' })).status, 200);
  assert.equal((await request(gw.url(), { path: '/open' })).status, 200);
  const r = await request(gw.url(), { path: '/open' });
  assert.equal(r.status, 429);
  assert.match(r.body.toString(), /GH_RATE_LIMITED/);
  // A caller that identifies itself on the public route is counted as itself.
  assert.equal((await request(gw.url(), { path: '/open', headers: as(alice) })).status, 200);
});

test('rate limit with delay: requests over the rate are held in order until they conform, then 429 beyond the delay', async (t) => {
  // Slots 200 ms apart and a delay that ends 50 ms after the third held one: a request admitted past
  // those would have to arrive 150 ms after the first, far more than concurrent requests spread.
  const { gw, seen } = await gateway(t, { rateLimit: { rate: '5/s', burst: 1, delay: '650ms' } });
  const started = performance.now();
  const results = await Promise.all(
    Array.from({ length: 8 }, (_, i) =>
      request(gw.url(), { path: `/api/n${i}`, headers: as(alice) }).then((r) => ({
        i,
        status: r.status,
        at: performance.now() - started,
      })),
    ),
  );
  const ok = results.filter((r) => r.status === 200);
  const refused = results.filter((r) => r.status === 429);
  // One at once and three within 650 ms (slots at 200, 400, 600 ms); the rest are refused at once.
  assert.equal(ok.length, 4, JSON.stringify(results));
  assert.equal(refused.length, 4);
  assert.equal(seen(), 4);
  const held = gw.access.filter((e) => e.limit === 'delayed');
  assert.equal(held.length, 3);
  const waits = held.map((e) => e.delayed ?? 0).sort((a, b) => a - b);
  for (let i = 0; i < waits.length; i++) {
    assert.ok(waits[i]! > 200 * i && waits[i]! <= 200 * (i + 1) + 1, `waits ${waits}`);
  }
  // The slowest admitted request came back after its slot, not before.
  assert.ok(Math.max(...ok.map((r) => r.at)) >= 590, JSON.stringify(results));
  const metrics = await registry.metrics();
  assert.match(metrics, /gatehouse_limit_verdicts_total\{route="api",verdict="delayed",limit="rate"\} [1-9]/);
  assert.match(metrics, /gatehouse_limit_delay_seconds_count\{route="api"\} [1-9]/);
});

test('rate limit with delay: maxDelayed bounds the requests held at once; beyond it, 429 at once', async (t) => {
  const { gw } = await gateway(t, { rateLimit: { rate: '10/s', burst: 1, delay: '5s', maxDelayed: 2 } });
  const results = await Promise.all(
    Array.from({ length: 6 }, (_, i) => request(gw.url(), { path: `/api/m${i}`, headers: as(alice) })),
  );
  const statuses = results.map((r) => r.status).sort();
  assert.deepEqual(statuses, [200, 200, 200, 429, 429, 429]);
});

test('rate limit with delay: a held request whose client goes away never reaches the upstream and frees its place at once', async (t) => {
  const { gw, seen } = await gateway(t, { rateLimit: { rate: '1/s', burst: 1, delay: '3s', maxDelayed: 1 } });
  assert.equal((await request(gw.url(), { path: '/api/first', headers: as(alice) })).status, 200);
  const u = new URL(gw.url());
  await new Promise<void>((resolve) => {
    const req = http.request({ host: u.hostname, port: u.port, path: '/api/held', headers: as(alice) });
    req.on('error', () => resolve());
    req.end();
    setTimeout(() => {
      req.destroy();
      resolve();
    }, 200);
  });
  await waitFor(() => gw.access.some((e) => e.path === '/api/held'), 'the abandoned request to end');
  assert.equal(gw.access.find((e) => e.path === '/api/held')?.status, 499);
  // The one place for a held request is free again: the next one is held (its slot follows the
  // abandoned one's), not refused for a full queue.
  const next = await request(gw.url(), { path: '/api/next', headers: as(alice) });
  assert.equal(next.status, 200);
  assert.ok((gw.access.find((e) => e.path === '/api/next')?.delayed ?? 0) > 1000);
  assert.equal(seen(), 2, 'the abandoned request was never forwarded');
});

test('quota with a fixed cost: admitted while it fits, then 429 GH_QUOTA_EXCEEDED until the window ends; per key', async (t) => {
  const { gw, seen } = await gateway(t, {
    quotas: { daily: { key: 'identity', limit: 6, window: '1d', cost: 2, routes: ['api'] } },
  });
  for (let i = 0; i < 3; i++) {
    const r = await request(gw.url(), { path: '/api/sync', headers: as(alice) });
    assert.equal(r.status, 200);
    assert.equal(r.headers['ratelimit-policy'], '"daily";q=6;w=86400');
    assert.match(String(r.headers.ratelimit), new RegExp(`^"daily";r=${4 - 2 * i};t=\\d+$`));
  }
  const r = await request(gw.url(), { path: '/api/sync', headers: as(alice) });
  assert.equal(r.status, 429);
  assert.equal(JSON.parse(r.body.toString()).code, 'GH_QUOTA_EXCEEDED');
  const endOfDay = Math.ceil((Math.ceil(Date.now() / 86_400_000) * 86_400_000 - Date.now()) / 1000);
  assert.ok(
    Math.abs(Number(r.headers['retry-after']) - endOfDay) <= 2,
    `${r.headers['retry-after']} vs ${endOfDay}`,
  );
  assert.equal(seen(), 3);
  assert.equal(gw.access.at(-1)?.reason, 'quota-exceeded:daily');
  // Bob's budget, and routes outside the quota, are untouched.
  assert.equal((await request(gw.url(), { path: '/api/sync', headers: as(bob) })).status, 200);
  assert.equal((await request(gw.url(), { path: '/open', headers: as(alice) })).status, 200);
});

test('quota with a cost the upstream reports: charged after the response, admitted while budget is left, never again after', async (t) => {
  const { gw, seen } = await gateway(t, {
    backendCost: '2.5',
    quotas: { rows: { limit: 6, window: '1h', cost: 'header:X-Cost', routes: ['api'] } },
  });
  const statuses: number[] = [];
  for (let i = 0; i < 5; i++) {
    statuses.push((await request(gw.url(), { path: '/api/rows', headers: as(alice) })).status);
    // The charge is written once the response head came: let it land.
    await new Promise((r) => setImmediate(r));
  }
  // 0 → 2.5 → 5 → 7.5 (over, once) → refused.
  assert.deepEqual(statuses, [200, 200, 200, 429, 429]);
  assert.equal(seen(), 3);
  const usage = await gw.runtime.limits.usage('agent:alice');
  assert.equal(usage.length, 1);
  assert.equal(usage[0]?.used, 7.5);
  assert.equal(usage[0]?.remaining, -1.5);
});

test('quota `when`: only the callers a policy rule matches are counted', async (t) => {
  const { gw } = await gateway(t, {
    quotas: { agents: { limit: 1, window: '1h', when: { groups: ['agents'] } } },
  });
  assert.equal((await request(gw.url(), { path: '/api/x', headers: as(alice) })).status, 200);
  assert.equal((await request(gw.url(), { path: '/api/x', headers: as(alice) })).status, 429);
  for (let i = 0; i < 3; i++) {
    const r = await request(gw.url(), { path: '/api/x', headers: as(ops) });
    assert.equal(r.status, 200);
    assert.equal(r.headers['ratelimit-policy'], undefined, 'no limit counted this caller');
  }
});

test('rate limit and quota together: a quota refusal spends no rate budget, and both appear in the headers', async (t) => {
  const { gw } = await gateway(t, {
    rateLimit: { rate: '1/min', burst: 3 },
    quotas: { tiny: { limit: 1, window: '1h', routes: ['api'] } },
  });
  const first = await request(gw.url(), { path: '/api/a', headers: as(alice) });
  assert.equal(first.status, 200);
  assert.equal(first.headers['ratelimit-policy'], '"api";q=1;w=60, "tiny";q=1;w=3600');
  assert.match(String(first.headers.ratelimit), /^"api";r=2;t=\d+, "tiny";r=0;t=\d+$/);
  const second = await request(gw.url(), { path: '/api/a', headers: as(alice) });
  assert.equal(second.status, 429);
  assert.equal(JSON.parse(second.body.toString()).code, 'GH_QUOTA_EXCEEDED');
  // The rate limit still has two of its three: the refused request did not spend one.
  assert.match(String(second.headers.ratelimit), /^"api";r=1;/);
});

test('rate limit keys from a header and from the API key: each value has its own budget', async (t) => {
  const { gw } = await gateway(t, { rateLimit: { rate: '1/min', burst: 1, key: 'header:X-Tenant' } });
  const tenant = (name: string) => ({ ...as(alice), 'x-tenant': name });
  assert.equal((await request(gw.url(), { path: '/api/a', headers: tenant('blue') })).status, 200);
  assert.equal((await request(gw.url(), { path: '/api/a', headers: tenant('blue') })).status, 429);
  assert.equal((await request(gw.url(), { path: '/api/a', headers: tenant('green') })).status, 200);
  // Without the header, the caller is counted per address (a budget of its own, spent by the first).
  assert.equal((await request(gw.url(), { path: '/api/a', headers: as(bob) })).status, 200);
  assert.equal((await request(gw.url(), { path: '/api/a', headers: as(alice) })).status, 429);

  const byKey = await gateway(t, { rateLimit: { rate: '1/min', burst: 2, key: 'apiKey' } });
  for (let i = 0; i < 2; i++)
    assert.equal((await request(byKey.gw.url(), { path: '/api/k', headers: as(alice) })).status, 200);
  assert.equal((await request(byKey.gw.url(), { path: '/api/k', headers: as(alice) })).status, 429);
  assert.equal((await request(byKey.gw.url(), { path: '/api/k', headers: as(bob) })).status, 200);
});

import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { createUpstream } from '../src/upstream/index.js';
import type { Lease, Upstream } from '../src/upstream/types.js';
import {
  type Backend,
  fetchVia,
  memoryLogger,
  send,
  startBackend,
  testContext,
  upstreamConfig,
} from './helpers/upstream.js';

async function setup(t: TestContext, n: number, raw: (b: Backend[]) => Record<string, unknown>) {
  const backends: Backend[] = [];
  for (let i = 0; i < n; i++) backends.push(await startBackend(`b${i}`));
  const up = await createUpstream('app', upstreamConfig(raw(backends)), testContext(), memoryLogger().logger);
  t.after(async () => {
    await up.close();
    await Promise.all(backends.map((b) => b.close()));
  });
  return { backends, up };
}

function acquireNow(up: Upstream, clientIp = '127.0.0.1', headers: Record<string, string> = {}): Lease {
  const r = up.acquire({ clientIp, headers });
  assert.ok(!(r instanceof Promise), 'a free slot is leased synchronously');
  return r;
}

test('weighted round-robin spreads requests in proportion to weights, interleaved', async (t) => {
  const { backends, up } = await setup(t, 3, (b) => ({
    servers: [{ url: b[0]!.url }, { url: b[1]!.url, weight: 2 }, { url: b[2]!.url, weight: 3 }],
  }));
  const order: string[] = [];
  for (let i = 0; i < 60; i++) order.push((await fetchVia(up)).body);
  assert.deepEqual(
    backends.map((b) => b.hits),
    [10, 20, 30],
  );
  // Smooth round-robin never sends the heaviest server more than its share in a row.
  assert.ok(!order.join(',').includes('b2,b2,b2,b2'));
});

test('least-conn prefers the idle server', async (t) => {
  const { backends, up } = await setup(t, 2, (b) => ({
    servers: [{ url: b[0]!.url }, { url: b[1]!.url }],
    balance: 'least-conn',
  }));
  const busy = acquireNow(up);
  const idle = backends.find((b) => b.url !== busy.server.url)!;
  for (let i = 0; i < 5; i++) {
    const lease = acquireNow(up);
    assert.equal(lease.server.url, idle.url);
    await send(lease);
  }
  busy.release('success');
  assert.equal(idle.hits, 5);
});

test('least-conn shares equally between equally idle servers', async (t) => {
  const { backends, up } = await setup(t, 2, (b) => ({
    servers: [{ url: b[0]!.url }, { url: b[1]!.url }],
    balance: 'least-conn',
  }));
  for (let i = 0; i < 10; i++) await fetchVia(up);
  assert.deepEqual(
    backends.map((b) => b.hits),
    [5, 5],
  );
});

test('random-two spreads requests and avoids the busier server', async (t) => {
  const { backends, up } = await setup(t, 3, (b) => ({
    servers: b.map((x) => ({ url: x.url })),
    balance: 'random-two',
  }));
  for (let i = 0; i < 90; i++) await fetchVia(up);
  for (const b of backends) assert.ok(b.hits > 0, `${b.name} was never chosen`);
  // Two choices never pick the unique most loaded server.
  const held: Lease[] = [];
  const load = new Map<string, number>(backends.map((b) => [b.url, 0]));
  for (let i = 0; i < 12; i++) {
    const max = Math.max(...load.values());
    const atMax = [...load].filter(([, n]) => n === max);
    const lease = acquireNow(up);
    if (atMax.length === 1) assert.notEqual(lease.server.url, atMax[0]![0]);
    load.set(lease.server.url, load.get(lease.server.url)! + 1);
    held.push(lease);
  }
  for (const l of held) l.release('success');
});

test('hash on client ip is stable per key; adding a server moves only a minority of keys', async (t) => {
  const { backends, up } = await setup(t, 4, (b) => ({
    servers: b.slice(0, 3).map((x) => ({ url: x.url })),
    balance: 'hash',
  }));
  const ips = Array.from({ length: 200 }, (_, i) => `10.0.${i >> 8}.${i & 255}`);
  const before = new Map<string, string>();
  for (const ip of ips) {
    const lease = acquireNow(up, ip);
    before.set(ip, lease.server.url);
    lease.release('success');
    const again = acquireNow(up, ip);
    assert.equal(again.server.url, lease.server.url, 'same key, same server');
    again.release('success');
  }
  const used = new Set(before.values());
  assert.equal(used.size, 3, 'keys spread over every server');

  const grown = await createUpstream(
    'app',
    upstreamConfig({ servers: backends.map((x) => ({ url: x.url })), balance: 'hash' }),
    testContext(),
    memoryLogger().logger,
  );
  t.after(() => grown.close());
  let moved = 0;
  for (const ip of ips) {
    const lease = acquireNow(grown, ip);
    if (lease.server.url !== before.get(ip)) {
      moved++;
      assert.equal(lease.server.url, backends[3]!.url, 'a key only moves to the new server');
    }
    lease.release('success');
  }
  assert.ok(moved > 0 && moved < ips.length / 2, `moved ${moved} of ${ips.length}`);
});

test('hash on a header and on a cookie', async (t) => {
  const { up } = await setup(t, 3, (b) => ({
    servers: b.map((x) => ({ url: x.url })),
    balance: 'hash',
    hash: { source: 'header', name: 'X-Tenant' },
  }));
  const seen = new Set<string>();
  for (let i = 0; i < 30; i++) {
    const a = acquireNow(up, `10.0.0.${i}`, { 'x-tenant': 'acme' });
    seen.add(a.server.url);
    a.release('success');
  }
  assert.equal(seen.size, 1, 'one tenant, one server, whatever the client ip');

  const { up: byCookie } = await setup(t, 3, (b) => ({
    servers: b.map((x) => ({ url: x.url })),
    balance: 'hash',
    hash: { source: 'cookie', name: 'sid' },
  }));
  const first = acquireNow(byCookie, '10.1.1.1', { cookie: 'a=1; sid=xyz; b=2' });
  first.release('success');
  for (let i = 0; i < 10; i++) {
    const l = acquireNow(byCookie, `10.1.1.${i + 2}`, { cookie: `sid=xyz; n=${i}` });
    assert.equal(l.server.url, first.server.url);
    l.release('success');
  }
});

test('backup servers are used only when no primary is available', async (t) => {
  const { backends, up } = await setup(t, 3, (b) => ({
    servers: [{ url: b[0]!.url }, { url: b[1]!.url }, { url: b[2]!.url, backup: true }],
    passive: { failures: 1, ejectFor: '1h', maxEjectedPercent: 100 },
  }));
  for (let i = 0; i < 10; i++) await fetchVia(up);
  assert.equal(backends[2]!.hits, 0);
  // Eject both primaries through failed outcomes.
  for (let i = 0; i < 2; i++) {
    const lease = acquireNow(up, '127.0.0.1');
    assert.notEqual(lease.server.url, backends[2]!.url);
    lease.release('connect-error');
  }
  const st = up.status();
  assert.deepEqual(
    st.servers.map((s) => s.health),
    ['ejected', 'ejected', 'up'],
  );
  for (let i = 0; i < 3; i++) assert.equal((await fetchVia(up)).body, 'b2');
});

test('no usable server rejects with NoServerAvailableError (503), weight 0 drains', async (t) => {
  const { up } = await setup(t, 1, (b) => ({ servers: [{ url: b[0]!.url, weight: 0 }] }));
  assert.throws(
    () => up.acquire({ clientIp: '127.0.0.1', headers: {} }),
    (err: { code?: string; status?: number }) => err.code === 'GH_NO_SERVER' && err.status === 503,
  );
});

test('a retry excludes the failed server and goes to another', async (t) => {
  const { up } = await setup(t, 2, (b) => ({ servers: b.map((x) => ({ url: x.url })) }));
  for (let i = 0; i < 4; i++) {
    const first = acquireNow(up);
    first.release('connect-error');
    const retry = up.acquire({ clientIp: '127.0.0.1', headers: {} }, new Set([first.server.id]));
    assert.ok(!(retry instanceof Promise));
    assert.notEqual(retry.server.id, first.server.id);
    retry.release('success');
  }
});

import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { type TestContext, test } from 'node:test';
import { registry } from '../src/observe/metrics.js';
import { applyCheckResult, statusIsHealthy } from '../src/upstream/health.js';
import { createUpstream } from '../src/upstream/index.js';
import { type Endpoint, slowStartFactor } from '../src/upstream/server.js';
import type { Lease, Upstream } from '../src/upstream/types.js';
import {
  type Backend,
  fetchVia,
  memoryLogger,
  startBackend,
  testContext,
  upstreamConfig,
  waitFor,
} from './helpers/upstream.js';

function acquireNow(up: Upstream): Lease {
  const r = up.acquire({ clientIp: '127.0.0.1', headers: {} });
  assert.ok(!(r instanceof Promise));
  return r;
}

async function setup(t: TestContext, n: number, raw: (b: Backend[]) => Record<string, unknown>) {
  const backends: Backend[] = [];
  for (let i = 0; i < n; i++) backends.push(await startBackend(`b${i}`));
  const log = memoryLogger();
  const up = await createUpstream('hc', upstreamConfig(raw(backends)), testContext(), log.logger);
  t.after(async () => {
    await up.close();
    await Promise.all(backends.map((b) => b.close()));
  });
  return { backends, up, lines: log.lines };
}

const health = (up: Upstream) => up.status().servers.map((s) => s.health);

test('active checks mark a server down after `fall` failures and up after `rise` successes', async (t) => {
  const { backends, up, lines } = await setup(t, 2, (b) => ({
    servers: b.map((x) => ({ url: x.url })),
    healthCheck: { path: '/health', interval: '50ms', timeout: '1s', rise: 2, fall: 3 },
    slowStart: '1h',
  }));
  assert.deepEqual(health(up), ['unknown', 'unknown']);
  up.start();
  await waitFor(() => health(up).every((h) => h === 'up'), 5000, 'servers up');
  const b0 = backends[0]!;

  b0.status = 500;
  await waitFor(() => health(up)[0] === 'down', 5000, 'server down');
  assert.ok(b0.checkStatuses.filter((s) => s === 500).length >= 3, 'down only after `fall` failed checks');
  const st = up.status().servers[0]!;
  assert.equal(st.lastCheck?.ok, false);
  assert.equal(st.lastCheck?.status, 500);
  for (let i = 0; i < 6; i++) assert.equal((await fetchVia(up)).body, 'b1', 'a down server gets no traffic');

  b0.status = 200;
  const okBefore = b0.checkStatuses.length;
  await waitFor(() => health(up)[0] === 'up', 5000, 'server up again');
  const okAfter = b0.checkStatuses.slice(okBefore).filter((s) => s === 200).length;
  assert.ok(okAfter >= 2, 'up only after `rise` good checks');
  const factor = up.status().servers[0]!.slowStartFactor;
  assert.ok(factor >= 0.1 && factor < 0.2, `slow start begins near 10% (got ${factor})`);
  assert.ok(lines.some((l) => l.msg === 'server down' && l.level === 40));
  assert.ok(lines.some((l) => l.msg === 'server up'));
  const metrics = await registry.getSingleMetricAsString('gatehouse_health_checks_total');
  assert.match(metrics, /result="fail"/);
});

test('expected statuses and the state machine', () => {
  assert.ok(statusIsHealthy(204, undefined));
  assert.ok(statusIsHealthy(302, undefined));
  assert.ok(!statusIsHealthy(404, undefined));
  assert.ok(statusIsHealthy(404, [404]));
  assert.ok(!statusIsHealthy(200, [204]));
  const ep = { checkState: 'up', checkStreak: 0 } as unknown as Endpoint;
  assert.equal(applyCheckResult(ep, false, 2, 2), undefined);
  assert.equal(applyCheckResult(ep, true, 2, 2), undefined, 'a success resets the failure streak');
  assert.equal(applyCheckResult(ep, false, 2, 2), undefined);
  assert.equal(applyCheckResult(ep, false, 2, 2), 'down');
  assert.equal(applyCheckResult(ep, true, 2, 2), undefined);
  assert.equal(applyCheckResult(ep, true, 2, 2), 'up');
});

test('a check that times out or cannot connect counts as a failure', async (t) => {
  const dead = await startBackend('dead');
  const url = dead.url;
  await dead.close();
  const up = await createUpstream(
    'hc-dead',
    upstreamConfig({
      servers: [{ url }],
      healthCheck: { path: '/health', interval: '50ms', timeout: '200ms' },
    }),
    testContext(),
    memoryLogger().logger,
  );
  t.after(() => up.close());
  up.start();
  await waitFor(() => up.status().servers[0]!.health === 'down', 5000, 'server down');
  assert.ok(up.status().servers[0]!.lastCheck?.error);
  assert.throws(() => up.acquire({ clientIp: '127.0.0.1', headers: {} }), { code: 'GH_NO_SERVER' });
});

test('a check that times out is reported as a timeout, in the status and the log', async (t) => {
  // Accepts the check and never answers it.
  const silent = http.createServer(() => {});
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const log = memoryLogger();
  const up = await createUpstream(
    'hc-silent',
    upstreamConfig({
      servers: [{ url: `http://127.0.0.1:${(silent.address() as AddressInfo).port}` }],
      healthCheck: { path: '/health', interval: '50ms', timeout: '100ms', fall: 1 },
    }),
    testContext(),
    log.logger,
  );
  t.after(async () => {
    await up.close();
    silent.closeAllConnections();
    await new Promise<void>((resolve) => silent.close(() => resolve()));
  });
  up.start();
  await waitFor(() => up.status().servers[0]!.health === 'down', 5000, 'server down');
  // The DOMException's numeric legacy code (23) said nothing; its name does.
  assert.equal(up.status().servers[0]!.lastCheck?.error, 'TimeoutError');
  const down = log.lines.find((l) => l.msg === 'server down');
  assert.equal(down?.error, 'TimeoutError');
});

test('passive ejection after consecutive failures, capped by maxEjectedPercent', async (t) => {
  const { up, lines } = await setup(t, 4, (b) => ({
    servers: b.map((x) => ({ url: x.url })),
    passive: { failures: 2, ejectFor: '1h', maxEjectedPercent: 50 },
  }));
  const ids = up.status().servers.map((s) => s.id);
  const failOn = (
    id: string,
    outcome: 'connect-error' | 'timeout' | 'http-5xx' | 'success' | 'client-abort',
  ) => {
    for (;;) {
      const lease = acquireNow(up);
      if (lease.server.id === id) return lease.release(outcome);
      lease.release('success');
    }
  };
  failOn(ids[0]!, 'connect-error');
  failOn(ids[0]!, 'success'); // resets the count
  failOn(ids[0]!, 'timeout');
  failOn(ids[0]!, 'client-abort'); // says nothing about the server
  assert.equal(health(up)[0], 'up');
  failOn(ids[0]!, 'http-5xx');
  assert.equal(health(up)[0], 'ejected');
  assert.ok(lines.some((l) => l.msg === 'server ejected after consecutive failures'));

  failOn(ids[1]!, 'connect-error');
  failOn(ids[1]!, 'connect-error');
  assert.equal(health(up)[1], 'ejected');
  // 50% of 4 servers: a third ejection is refused.
  failOn(ids[2]!, 'connect-error');
  failOn(ids[2]!, 'connect-error');
  failOn(ids[2]!, 'connect-error');
  assert.deepEqual(health(up), ['ejected', 'ejected', 'up', 'up']);
  for (let i = 0; i < 8; i++) {
    const lease = acquireNow(up);
    assert.ok(lease.server.id === ids[2] || lease.server.id === ids[3]);
    lease.release('success');
  }
});

test('an ejected server comes back after ejectFor, with slow start', async (t) => {
  const { up } = await setup(t, 2, (b) => ({
    servers: b.map((x) => ({ url: x.url })),
    passive: { failures: 1, ejectFor: '100ms', maxEjectedPercent: 50 },
    slowStart: '1h',
  }));
  const lease = acquireNow(up);
  lease.release('connect-error');
  const idx = up.status().servers.findIndex((s) => s.id === lease.server.id);
  assert.equal(health(up)[idx], 'ejected');
  await waitFor(() => health(up)[idx] === 'up', 5000, 'ejection to end');
  const factor = up.status().servers[idx]!.slowStartFactor;
  assert.ok(factor >= 0.1 && factor < 0.2);
  // Ramping at ~10% weight, the server gets a small share of round-robin traffic.
  let onRamped = 0;
  for (let i = 0; i < 40; i++) {
    const l = acquireNow(up);
    if (l.server.id === lease.server.id) onRamped++;
    l.release('success');
  }
  assert.ok(onRamped >= 1 && onRamped <= 8, `ramping server got ${onRamped} of 40`);
});

test('the slow-start factor ramps linearly from 10% to 100%', () => {
  assert.equal(slowStartFactor(0, 5000, 10_000), 1, 'not ramping');
  assert.equal(slowStartFactor(1000, 1000, 10_000), 0.1);
  assert.equal(slowStartFactor(1000, 6000, 10_000), 0.55);
  assert.equal(slowStartFactor(1000, 11_000, 10_000), 1);
  assert.equal(slowStartFactor(1000, 2000, 0), 1, 'no slow start configured');
});

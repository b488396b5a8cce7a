/**
 * LiveStats, the dashboard's aggregator: percentiles read from fixed buckets, windows sliding on an
 * injected clock, merging the snapshots of several processes, and the bounded top-K of identities.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  LATENCY_BOUNDS,
  LiveStats,
  LiveStatsError,
  latencyBucket,
  NO_ROUTE,
  quantile,
  ReloadHistory,
} from '../src/observe/live-stats.js';
import type { AccessEntry } from '../src/observe/log.js';

const T0 = Date.UTC(2026, 11, 7, 12, 0, 0);

function clock(start = T0): { now: () => number; advance(ms: number): void; set(ms: number): void } {
  let t = start;
  return {
    now: () => t,
    advance: (ms) => {
      t += ms;
    },
    set: (ms) => {
      t = ms;
    },
  };
}

function entry(over: Partial<AccessEntry> = {}): AccessEntry {
  return {
    time: '',
    requestId: 'r',
    client: '127.0.0.1',
    host: 'app.example.com',
    method: 'GET',
    path: '/',
    route: 'api',
    upstream: 'app',
    server: undefined,
    status: 200,
    bytesIn: 0,
    bytesOut: 0,
    duration: 5,
    upstreamDuration: undefined,
    retries: 0,
    reason: 'public-route',
    ...over,
  };
}

/** The bucket bounds [lower, upper] that hold `ms`. */
function bucketRange(ms: number): [number, number] {
  const i = latencyBucket(ms);
  return [i === 0 ? 0 : LATENCY_BOUNDS[i - 1]!, LATENCY_BOUNDS[i] ?? Number.POSITIVE_INFINITY];
}

test('latency buckets: every value falls in the bucket whose bounds hold it', () => {
  fc.assert(
    fc.property(fc.double({ min: 0, max: 100_000, noNaN: true }), (ms) => {
      const [lower, upper] = bucketRange(ms);
      assert.ok(ms <= upper, `${ms} <= ${upper}`);
      assert.ok(ms > lower || (lower === 0 && ms <= LATENCY_BOUNDS[0]!), `${ms} > ${lower}`);
    }),
  );
  for (const b of LATENCY_BOUNDS) assert.equal(LATENCY_BOUNDS[latencyBucket(b)], b, `bound ${b}`);
  assert.equal(latencyBucket(1e9), LATENCY_BOUNDS.length);
});

test('p50 and p99 read from the buckets are within bucket precision of the exact percentiles', () => {
  fc.assert(
    fc.property(
      fc.array(fc.double({ min: 0.01, max: 40_000, noNaN: true }), { minLength: 1, maxLength: 400 }),
      (durations) => {
        const c = clock();
        const stats = new LiveStats({ now: c.now });
        for (const d of durations) stats.observe(entry({ duration: d }));
        const route = stats.snapshot().routes[0]!;
        const sorted = [...durations].sort((a, b) => a - b);
        for (const [q, got] of [
          [0.5, route.p50],
          [0.99, route.p99],
        ] as const) {
          const exact = sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)]!;
          const [lower, upper] = bucketRange(exact);
          // Percentiles are rounded to the microsecond.
          assert.ok(
            got !== null && got >= lower - 0.001 && got <= upper + 0.001,
            `p${q * 100} ${got} in [${lower}, ${upper}]`,
          );
          // Buckets grow by √2: the estimate is never further off than that factor.
          assert.ok(
            got <= exact * Math.SQRT2 + 0.25 && got >= exact / Math.SQRT2 - 0.25,
            `${got} ~ ${exact}`,
          );
        }
      },
    ),
    { numRuns: 200 },
  );
  assert.equal(quantile([0, 0, 0], 0.5), null);
});

test('the per-route window slides with the clock: old seconds leave it, idle routes disappear', () => {
  const c = clock(T0 + 500);
  const stats = new LiveStats({ now: c.now });
  for (let i = 0; i < 5; i++) stats.observe(entry({ duration: 2 }));
  c.advance(30_000);
  for (let i = 0; i < 3; i++) stats.observe(entry({ duration: 2000, status: 502 }));
  let s = stats.snapshot();
  assert.equal(s.windowSeconds, 60);
  assert.equal(s.second, Math.floor((T0 + 30_500) / 1000));
  let route = s.routes[0]!;
  assert.equal(route.route, 'api');
  assert.equal(route.requests.length, 60);
  assert.equal(route.total, 8);
  assert.equal(route.requests[59], 3);
  assert.equal(route.requests[29], 5);
  assert.equal(route.errors[59], 3);
  assert.equal(route.errorRate, 0.375);
  assert.ok(route.p99! >= 1000, `p99 ${route.p99}`);
  assert.ok(route.p50! <= 2.83, `p50 ${route.p50}`);
  assert.equal(route.p99Series[29]! < 3, true);
  assert.equal(route.p99Series[28], null);

  // 31 s later the first five are more than a minute old.
  c.advance(31_000);
  s = stats.snapshot();
  route = s.routes[0]!;
  assert.equal(route.total, 3);
  assert.equal(route.errorRate, 1);
  assert.equal(route.p50! >= 1000, true);
  // A slot reused for a new second starts empty.
  stats.observe(entry({ duration: 1 }));
  assert.equal(stats.snapshot().routes[0]!.requests[59], 1);
  assert.equal(stats.snapshot().routes[0]!.total, 4);

  c.advance(61_000);
  assert.deepEqual(stats.snapshot().routes, []);
  assert.equal(stats.snapshot().totals.requests, 0);
  assert.equal(stats.snapshot().totals.p99, null);
});

test('requests per second average the last ten complete seconds; totals add every route', () => {
  const c = clock(T0);
  const stats = new LiveStats({ now: c.now });
  for (let i = 0; i < 40; i++) stats.observe(entry());
  for (let i = 0; i < 10; i++) stats.observe(entry({ route: undefined, status: 404, error: 'GH_NO_ROUTE' }));
  // The current second is still filling up and is left out of the rate.
  assert.equal(stats.snapshot().routes[0]!.rps, 0);
  c.advance(1000);
  const s = stats.snapshot();
  assert.equal(s.routes[0]!.route, 'api');
  assert.equal(s.routes[0]!.rps, 4);
  assert.equal(s.routes[1]!.route, NO_ROUTE);
  assert.equal(s.totals.rps, 5);
  assert.equal(s.totals.requests, 50);
  c.advance(10_000);
  assert.equal(stats.snapshot().totals.rps, 0);
});

test('decisions by reason: refusals are flagged, slots slide over the last five minutes', () => {
  const c = clock(T0);
  const stats = new LiveStats({ now: c.now });
  stats.observe(entry({ reason: 'policy-allow:engineers', identity: 'alice' }));
  stats.observe(entry({ reason: 'policy-allow:engineers', identity: 'alice' }));
  stats.observe(entry({ reason: 'no-allow-rule', identity: 'bob', status: 403 }));
  stats.observe(
    entry({ reason: 'rate-limited:api', identity: 'bob', status: 429, limit: 'limited', duration: 0.1 }),
  );
  stats.observe(entry({ reason: undefined, error: 'GH_NO_ROUTE', status: 404, route: undefined }));
  assert.equal(stats.snapshot().totals.limited, 1);
  c.advance(60_000);
  stats.observe(entry({ reason: 'public-route' }));
  let d = stats.snapshot().decisions;
  assert.equal(d.slotSeconds, 10);
  assert.equal(d.slots, 30);
  const by = new Map(d.reasons.map((r) => [r.reason, r]));
  assert.equal(by.get('policy-allow:engineers')?.total, 2);
  assert.equal(by.get('policy-allow:engineers')?.refused, false);
  assert.equal(by.get('public-route')?.refused, false);
  assert.equal(by.get('no-allow-rule')?.refused, true);
  assert.equal(by.get('rate-limited:api')?.refused, true);
  assert.equal(by.get('GH_NO_ROUTE')?.refused, true);
  assert.equal(by.get('public-route')?.counts[29], 1);
  assert.equal(by.get('no-allow-rule')?.counts[23], 1);
  const s = stats.snapshot();
  // The per-route minute has moved on; the five minutes of decisions still hold the refusals.
  assert.equal(s.totals.refused, 3);
  assert.equal(s.totals.limited, 0);
  const bob = s.identities.find((i) => i.identity === 'bob')!;
  assert.deepEqual([bob.requests, bob.refused, bob.limited], [2, 2, 1]);
  c.advance(245_000);
  d = stats.snapshot().decisions;
  assert.deepEqual(
    d.reasons.map((r) => r.reason),
    ['public-route'],
  );
  c.advance(60_000);
  assert.deepEqual(stats.snapshot().decisions.reasons, []);
});

const arbEntry = fc.record({
  route: fc.constantFrom('api', 'web', undefined),
  status: fc.constantFrom(200, 200, 200, 403, 429, 502),
  duration: fc.double({ min: 0, max: 20_000, noNaN: true }),
  reason: fc.constantFrom('policy-allow:r', 'public-route', 'no-allow-rule', 'rate-limited:api', undefined),
  identity: fc.constantFrom('alice', 'bob', 'carol', 'agent:etl', undefined),
  at: fc.integer({ min: 0, max: 120_000 }),
  worker: fc.integer({ min: 0, max: 2 }),
});

test('merging the snapshots of several processes equals observing everything in one', () => {
  fc.assert(
    fc.property(fc.array(arbEntry, { maxLength: 300 }), (raw) => {
      const c = clock(T0);
      const workers = [0, 1, 2].map(() => new LiveStats({ now: c.now }));
      const one = new LiveStats({ now: c.now });
      for (const e of [...raw].sort((a, b) => a.at - b.at)) {
        c.set(T0 + e.at);
        const a = entry({
          route: e.route,
          status: e.status,
          duration: e.duration,
          reason: e.reason,
          identity: e.identity,
          limit: e.status === 429 ? 'limited' : undefined,
        });
        workers[e.worker]!.observe(a);
        one.observe(a);
      }
      c.set(T0 + 120_500);
      const merged = LiveStats.merge(workers.map((w) => w.snapshot()));
      const expected = one.snapshot();
      assert.equal(merged.processes, 3);
      assert.deepEqual({ ...merged, processes: 1 }, expected);
      // Merging is associative: a merge of merges is the same.
      const twice = LiveStats.merge([
        LiveStats.merge([workers[0]!.snapshot(), workers[1]!.snapshot()]),
        workers[2]!.snapshot(),
      ]);
      assert.deepEqual(twice, merged);
    }),
    { numRuns: 60 },
  );
});

test('merge lines up snapshots taken in different seconds and rejects foreign ones', () => {
  const c = clock(T0);
  const a = new LiveStats({ now: c.now });
  const b = new LiveStats({ now: c.now });
  a.observe(entry());
  const early = a.snapshot();
  c.advance(1000);
  b.observe(entry());
  const merged = LiveStats.merge([early, b.snapshot()]);
  assert.equal(merged.second, early.second + 1);
  assert.equal(merged.routes[0]!.requests[58], 1);
  assert.equal(merged.routes[0]!.requests[59], 1);
  assert.equal(merged.routes[0]!.total, 2);

  const other = new LiveStats({ now: c.now, windowSeconds: 30 }).snapshot();
  assert.throws(
    () => LiveStats.merge([b.snapshot(), other]),
    (err: unknown) => err instanceof LiveStatsError && err.code === 'GH_LIVE_STATS',
  );
  for (const bad of [{}, { version: 1 }, 'x', { ...b.snapshot(), routes: [{ route: 1 }] }]) {
    assert.throws(
      () => LiveStats.merge([b.snapshot(), bad as never]),
      (err: unknown) => err instanceof LiveStatsError,
    );
  }
  assert.throws(() => LiveStats.merge([]), LiveStatsError);
});

test('top identities: bounded memory, heavy hitters kept, old generations forgotten', () => {
  const c = clock(T0);
  const stats = new LiveStats({ now: c.now, topCapacity: 16, topListed: 5, topPeriodMs: 60_000 });
  for (let i = 0; i < 5000; i++) {
    stats.observe(entry({ identity: `user-${i}` }));
    if (i % 4 === 0) stats.observe(entry({ identity: 'heavy' }));
    if (i % 10 === 0) stats.observe(entry({ identity: 'second' }));
  }
  const s = stats.snapshot();
  assert.equal(s.identities.length, 5);
  assert.equal(s.identities[0]!.identity, 'heavy');
  // Space-Saving never undercounts, and overstates by at most the recorded error.
  assert.ok(s.identities[0]!.requests >= 1250);
  assert.ok(s.identities[0]!.requests - s.identities[0]!.overstated <= 1250);
  assert.equal(s.identities[1]!.identity, 'second');
  // Only the capacity's worth of identities is tracked (both generations together at most twice that).
  assert.ok(JSON.stringify(s).length < 64 * 1024);

  c.advance(60_000);
  for (let i = 0; i < 2000; i++) stats.observe(entry({ identity: 'late' }));
  const names = stats.snapshot().identities.map((i) => i.identity);
  assert.ok(names.includes('heavy') && names.includes('late'), names.join());
  c.advance(60_000);
  stats.observe(entry({ identity: 'later' }));
  assert.deepEqual(
    stats.snapshot().identities.map((i) => i.identity),
    ['late', 'later'],
  );
  c.advance(130_000);
  assert.deepEqual(stats.snapshot().identities, []);
});

test('the number of routes and reasons is bounded', () => {
  const c = clock(T0);
  const stats = new LiveStats({ now: c.now, maxRoutes: 4, maxReasons: 3 });
  for (let i = 0; i < 50; i++) stats.observe(entry({ route: `r${i}`, reason: `policy-deny:rule${i}` }));
  const s = stats.snapshot();
  assert.deepEqual(s.routes.map((r) => r.route).sort(), ['(other)', 'r0', 'r1', 'r2']);
  assert.equal(s.routes.find((r) => r.route === '(other)')!.total, 47);
  assert.equal(s.decisions.reasons.length, 4);
  assert.equal(s.decisions.reasons[0]!.reason, '(other)');
  assert.equal(s.decisions.reasons[0]!.total, 47);
  // Routes idle for a whole window make room again.
  c.advance(61_000);
  stats.observe(entry({ route: 'fresh' }));
  assert.deepEqual(
    stats.snapshot().routes.map((r) => r.route),
    ['fresh'],
  );
});

test('observe never throws on odd entries', () => {
  const stats = new LiveStats();
  stats.observe(entry({ duration: Number.NaN }));
  stats.observe(entry({ duration: -5 }));
  stats.observe(entry({ duration: Number.POSITIVE_INFINITY, status: 0 }));
  assert.equal(stats.snapshot().totals.requests, 3);
});

test('reload history keeps the last reloads, newest first', () => {
  const h = new ReloadHistory(3);
  for (let g = 1; g <= 5; g++)
    h.record({ at: new Date(T0 + g).toISOString(), result: 'success', generation: g, trigger: 'admin-api' });
  assert.deepEqual(
    h.list().map((r) => r.generation),
    [5, 4, 3],
  );
});

/**
 * The limit stage's store operations, `limit` (a GCRA rate limit and quota budgets in one atomic step)
 * and `charge`, as one contract run against the memory store, the Redis store (real Redis, its Lua
 * script on Redis's clock) and the IPC store (a worker calling a forked stand-in primary,
 * test/helpers/store-primary.ts). The memory and IPC stores run on a frozen clock the test moves; Redis
 * keeps its own, so values derived from time may be lower there by the time the calls took (`slack`).
 * Then what only Redis has to show: one round trip, one limit across instances, the same decisions as
 * the memory store on random sequences; and what only IPC has: a primary that checks what it is sent.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { describe, type TestContext, test } from 'node:test';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { answerStoreRequest, IpcStore, type WireRequest } from '../src/state/ipc.js';
import { MemoryStore } from '../src/state/memory.js';
import { RedisStore } from '../src/state/redis.js';
import {
  BY_RATE,
  type LimitResult,
  NOT_REFUSED,
  type QuotaCheck,
  type RateCheck,
  type StateStore,
  StateStoreError,
} from '../src/state/types.js';
import { ROOT } from './helpers/gateway.js';
import { memoryLogger } from './helpers/proxy.js';
import { redisUrl, startRedisServer } from './helpers/redis.js';

/** One store of the contract suite, with the means to move its clock and to check an expiry. */
interface Subject {
  store: StateStore;
  /** Lets `ms` pass: the frozen clock moves, or (Redis) the test waits. */
  advance(ms: number): Promise<void>;
  /** Asserts that `key` lives at most `ttlMs` more (frozen clock: exactly `ttlMs`), then is gone. */
  expires(key: string, ttlMs: number): Promise<void>;
}

interface Backend {
  name: string;
  /** How much lower a value derived from time may be: the time the calls took on Redis's clock. */
  slack: number;
  make(t: TestContext): Promise<Subject>;
}

const START = 1_700_000_000_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Frozen clock: alive one millisecond before its TTL, gone at it. */
async function expiresOnFrozenClock(
  store: StateStore,
  advance: (ms: number) => Promise<void>,
  key: string,
  ttlMs: number,
): Promise<void> {
  await advance(ttlMs - 1);
  assert.notEqual(await store.get(key), undefined, `${key} alive just before its TTL`);
  await advance(1);
  assert.equal(await store.get(key), undefined, `${key} gone at its TTL`);
}

const memory: Backend = {
  name: 'memory',
  slack: 0,
  async make(t) {
    let now = START;
    const store = new MemoryStore({ now: () => now, sweepInterval: 0 });
    t.after(() => store.close());
    const advance = async (ms: number) => {
      now += ms;
    };
    return { store, advance, expires: (key, ttlMs) => expiresOnFrozenClock(store, advance, key, ttlMs) };
  },
};

/** A store on the shared test Redis, its keys under a prefix of their own, and a raw client beside it. */
async function redisStore(t: TestContext, prefix = `gatehouse-test:${randomBytes(6).toString('hex')}:`) {
  const url = await redisUrl();
  const store = new RedisStore(url, memoryLogger().logger, { prefix });
  const raw = new Redis(url, { maxRetriesPerRequest: 1 });
  t.after(async () => {
    await store.close();
    raw.disconnect();
  });
  return { store, raw, prefix, url };
}

const redis: Backend = {
  name: 'redis',
  slack: 2_000,
  async make(t) {
    const { store, raw, prefix } = await redisStore(t);
    return {
      store,
      // Timers may fire a little before Redis's clock has moved as far.
      advance: async (ms) => {
        await sleep(ms + 5);
      },
      // Redis keeps its own clock: check the TTL it holds, then expire the key the way Redis would.
      async expires(key, ttlMs) {
        const pttl = await raw.pttl(prefix + key);
        assert.ok(pttl > 0 && pttl <= ttlMs, `pttl ${pttl} of ${key} within (0, ${ttlMs}]`);
        await raw.pexpire(prefix + key, 1);
        const deadline = Date.now() + 5000;
        while ((await raw.exists(prefix + key)) && Date.now() < deadline) await sleep(5);
        assert.equal(await store.get(key), undefined, `${key} gone`);
      },
    };
  },
};

/** The child's next message that satisfies `match`. */
function nextMessage(child: ChildProcess, match: (m: Record<string, unknown>) => boolean): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new Error('timed out waiting for the stand-in primary')), 30_000);
    const onMessage = (m: unknown): void => {
      if (typeof m === 'object' && m !== null && match(m as Record<string, unknown>)) done(undefined, m);
    };
    const onExit = (): void => done(new Error('the stand-in primary exited'));
    function done(err: Error | undefined, m?: unknown): void {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('exit', onExit);
      if (err) reject(err);
      else resolve(m);
    }
    child.on('message', onMessage);
    child.on('exit', onExit);
  });
}

const ipc: Backend = {
  name: 'ipc',
  slack: 0,
  async make(t) {
    const child = fork(path.join(ROOT, 'test/helpers/store-primary.ts'), ['serve'], {
      execArgv: ['--import', import.meta.resolve('tsx')],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    t.after(async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    });
    await nextMessage(child, (m) => m.test === 'ready');
    const store = new IpcStore(child);
    t.after(() => store.close());
    const advance = async (ms: number) => {
      const advanced = nextMessage(child, (m) => m.test === 'advanced');
      child.send({ test: 'advance', ms });
      await advanced;
    };
    return { store, advance, expires: (key, ttlMs) => expiresOnFrozenClock(store, advance, key, ttlMs) };
  },
};

const rate = (key: string, intervalMs: number, burst: number, maxWaitMs = 0): RateCheck => ({
  key,
  intervalMs,
  burst,
  maxWaitMs,
});
const quota = (key: string, limit: number, cost: number, ttlMs = 3_600_000): QuotaCheck => ({
  key,
  limit,
  cost,
  ttlMs,
});

/** Asserts the result; time-derived values may be up to `slack` lower (never higher) than expected. */
function assertResult(actual: LimitResult, expected: LimitResult, slack: number, what: string): void {
  assert.equal(actual.refusedBy, expected.refusedBy, `${what}: refusedBy`);
  assert.equal(actual.remaining, expected.remaining, `${what}: remaining`);
  assert.deepEqual(actual.used, expected.used, `${what}: used`);
  for (const field of ['waitMs', 'resetMs'] as const) {
    const a = actual[field];
    const e = expected[field];
    assert.ok(
      a <= e && a >= Math.max(0, e - slack),
      `${what}: ${field} ${a}, expected ${e} (slack ${slack})`,
    );
  }
}

/** Asserts that `promise` rejects with StateStoreError (code GH_STATE_UNAVAILABLE). */
async function rejectsUnavailable(promise: Promise<unknown>): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof StateStoreError, `expected StateStoreError, got ${String(err)}`);
    assert.equal(err.code, 'GH_STATE_UNAVAILABLE');
    return true;
  });
}

const MINUTE = 60_000;

for (const backend of [memory, redis, ipc]) {
  const { slack } = backend;
  describe(`limit and charge contract: ${backend.name}`, { timeout: 60_000 }, () => {
    test('a burst is admitted at once, then refused with the wait until the next request conforms', async (t) => {
      const { store } = await backend.make(t);
      const r = rate('rl', MINUTE, 3);
      const admitted = (remaining: number, resetMs: number): LimitResult => ({
        refusedBy: NOT_REFUSED,
        waitMs: 0,
        remaining,
        resetMs,
        used: [],
      });
      assertResult(await store.limit(r, []), admitted(2, MINUTE), slack, 'first');
      assertResult(await store.limit(r, []), admitted(1, 2 * MINUTE), slack, 'second');
      assertResult(await store.limit(r, []), admitted(0, 3 * MINUTE), slack, 'third');
      const refused = { refusedBy: BY_RATE, waitMs: MINUTE, remaining: 0, resetMs: 3 * MINUTE, used: [] };
      assertResult(await store.limit(r, []), refused, slack, 'fourth');
      assertResult(await store.limit(r, []), refused, slack, 'a refusal spends nothing');
      // Another key is another bucket.
      assertResult(await store.limit(rate('other', MINUTE, 3), []), admitted(2, MINUTE), slack, 'other');
    });

    test('after the refused wait has passed, the next request conforms', async (t) => {
      const { store, advance } = await backend.make(t);
      const r = rate('paced', 200, 1);
      assert.equal((await store.limit(r, [])).refusedBy, NOT_REFUSED);
      const refused = await store.limit(r, []);
      assert.equal(refused.refusedBy, BY_RATE);
      assert.ok(refused.waitMs > 0 && refused.waitMs <= 200, `waitMs ${refused.waitMs}`);
      await advance(refused.waitMs);
      const next = await store.limit(r, []);
      assert.equal(next.refusedBy, NOT_REFUSED);
      assert.equal(next.waitMs, 0);
      assert.equal(next.remaining, 0);
    });

    test('maxWaitMs reserves slots in arrival order (increasing waits) and refuses beyond', async (t) => {
      const { store } = await backend.make(t);
      const r = rate('queue', MINUTE, 1, 2.5 * MINUTE);
      const admitted = (waitMs: number, resetMs: number): LimitResult => ({
        refusedBy: NOT_REFUSED,
        waitMs,
        remaining: 0,
        resetMs,
        used: [],
      });
      assertResult(await store.limit(r, []), admitted(0, MINUTE), slack, 'at once');
      assertResult(await store.limit(r, []), admitted(MINUTE, 2 * MINUTE), slack, 'first slot');
      assertResult(await store.limit(r, []), admitted(2 * MINUTE, 3 * MINUTE), slack, 'second slot');
      const refused = { refusedBy: BY_RATE, waitMs: 3 * MINUTE, remaining: 0, resetMs: 3 * MINUTE, used: [] };
      assertResult(await store.limit(r, []), refused, slack, 'beyond maxWaitMs');
    });

    test('a quota with a fixed cost refuses when it would go over, and a refusal charges nothing', async (t) => {
      const { store } = await backend.make(t);
      const q = [quota('q:fixed', 10, 4)];
      assert.deepEqual(await store.limit(undefined, q), {
        refusedBy: NOT_REFUSED,
        waitMs: 0,
        remaining: 0,
        resetMs: 0,
        used: [4],
      });
      assert.deepEqual((await store.limit(undefined, q)).used, [8]);
      const refused = await store.limit(undefined, q);
      assert.equal(refused.refusedBy, 0);
      assert.deepEqual(refused.used, [8]);
      assert.equal(Number(await store.get('q:fixed')), 8);
      // What still fits is admitted.
      const two = await store.limit(undefined, [quota('q:fixed', 10, 2)]);
      assert.equal(two.refusedBy, NOT_REFUSED);
      assert.deepEqual(two.used, [10]);
      assert.equal((await store.limit(undefined, [quota('q:fixed', 10, 1)])).refusedBy, 0);
    });

    test('a quota refusal spends nothing of the rate limit', async (t) => {
      const { store } = await backend.make(t);
      const r = rate('rl:q', MINUTE, 2);
      const first = await store.limit(r, [quota('q:one', 1, 1)]);
      assert.equal(first.refusedBy, NOT_REFUSED);
      assert.equal(first.remaining, 1);
      const refused = await store.limit(r, [quota('q:one', 1, 1)]);
      assert.equal(refused.refusedBy, 0);
      assert.deepEqual(refused.used, [1]);
      // The refused request took no token: the rate still has the second one.
      const next = await store.limit(r, [quota('q:other', 1, 1)]);
      assert.equal(next.refusedBy, NOT_REFUSED);
      assert.equal(next.remaining, 0);
      assert.equal((await store.limit(r, [])).refusedBy, BY_RATE);
    });

    test('every quota must have budget; refused by one, none is charged', async (t) => {
      const { store } = await backend.make(t);
      const both = [quota('q:wide', 5, 1), quota('q:narrow', 1, 1)];
      assert.deepEqual((await store.limit(undefined, both)).used, [1, 1]);
      const refused = await store.limit(undefined, both);
      assert.equal(refused.refusedBy, 1, 'the first quota without budget');
      assert.deepEqual(refused.used, [1, 1]);
      assert.equal(Number(await store.get('q:wide')), 1, 'the quota with budget was not charged');
      const third = await store.limit(undefined, [quota('q:narrow', 1, 1), quota('q:wide', 5, 1)]);
      assert.equal(third.refusedBy, 0);
    });

    test('a deferred cost (0) admits while budget is left; charge() adds fractions that get() reads back', async (t) => {
      const { store } = await backend.make(t);
      const q = [quota('q:tokens', 5, 0)];
      const first = await store.limit(undefined, q);
      assert.equal(first.refusedBy, NOT_REFUSED);
      assert.deepEqual(first.used, [0]);
      assert.equal(await store.get('q:tokens'), undefined, 'nothing charged yet');
      assert.equal(await store.charge('q:tokens', 1.5, 3_600_000), 1.5);
      assert.equal(await store.charge('q:tokens', 2.25, 3_600_000), 3.75);
      const stored = await store.get('q:tokens');
      assert.equal(Number(stored), 3.75, `stored as ${stored}`);
      assert.deepEqual((await store.limit(undefined, q)).used, [3.75]);
      // The cost reported later may take the usage past the limit, once.
      assert.equal(await store.charge('q:tokens', 2, 3_600_000), 5.75);
      const refused = await store.limit(undefined, q);
      assert.equal(refused.refusedBy, 0);
      assert.deepEqual(refused.used, [5.75]);
      // Reset, as the admin API does it.
      await store.delete('q:tokens');
      assert.deepEqual((await store.limit(undefined, q)).used, [0]);
    });

    test('the TAT key lives until the bucket is full again', async (t) => {
      const { store, expires } = await backend.make(t);
      const r = rate('rl:ttl', 500, 3);
      await store.limit(r, []);
      const second = await store.limit(r, []);
      assert.equal(second.remaining, 1);
      await expires('rl:ttl', second.resetMs);
      // Gone: the bucket is full.
      assert.equal((await store.limit(r, [])).remaining, 2);
    });

    test('a quota counter keeps the expiry of its creation', async (t) => {
      const { store, advance, expires } = await backend.make(t);
      assert.deepEqual((await store.limit(undefined, [quota('q:win', 10, 1, 1_000)])).used, [1]);
      await advance(400);
      assert.deepEqual((await store.limit(undefined, [quota('q:win', 10, 1, 60_000)])).used, [2]);
      assert.equal(await store.charge('q:win', 0.5, 60_000), 2.5);
      await expires('q:win', 600);
      // A charge that creates the counter gives it its TTL.
      assert.equal(await store.charge('q:new', 0.5, 1_000), 0.5);
      await expires('q:new', 1_000);
    });

    test('no rate and no quota admits; bad keys are TypeErrors; a counter that is no number is a store error', async (t) => {
      const { store } = await backend.make(t);
      assert.deepEqual(await store.limit(undefined, []), {
        refusedBy: NOT_REFUSED,
        waitMs: 0,
        remaining: 0,
        resetMs: 0,
        used: [],
      });
      await assert.rejects(store.limit(rate('', MINUTE, 1), []), TypeError);
      await assert.rejects(store.limit(undefined, [quota('', 1, 1)]), TypeError);
      await assert.rejects(store.charge('q', Number.NaN, 1_000), TypeError);
      await assert.rejects(store.charge('', 1, 1_000), TypeError);
      await store.set('q:text', 'not a number');
      await rejectsUnavailable(store.limit(undefined, [quota('q:text', 10, 1)]));
      await rejectsUnavailable(store.limit(rate('q:text', MINUTE, 1), []));
      assert.equal(store.available, true, 'an error of the data is no outage');
      assert.equal(await store.get('q:text'), 'not a number');
    });
  });
}

describe('limit arguments the Redis script or the primary could not use are TypeErrors', () => {
  const bad: Array<[string, RateCheck | undefined, QuotaCheck[]]> = [
    ['interval NaN', rate('r', Number.NaN, 1), []],
    ['interval 0', rate('r', 0, 1), []],
    ['burst 0', rate('r', MINUTE, 0), []],
    ['burst Infinity', rate('r', MINUTE, Number.POSITIVE_INFINITY), []],
    ['maxWaitMs negative', rate('r', MINUTE, 1, -1), []],
    ['limit NaN', undefined, [quota('q', Number.NaN, 1)]],
    ['cost negative', undefined, [quota('q', 1, -1)]],
    ['ttl 0', undefined, [quota('q', 1, 1, 0)]],
    ['ttl missing', undefined, [{ key: 'q', limit: 1, cost: 1 } as QuotaCheck]],
  ];
  for (const backend of [redis, ipc]) {
    test(backend.name, async (t) => {
      const { store } = await backend.make(t);
      for (const [what, r, q] of bad) await assert.rejects(store.limit(r, q), TypeError, what);
      await assert.rejects(store.charge('q', 1, 0), TypeError);
      assert.deepEqual((await store.limit(rate('r', MINUTE, 1), [])).refusedBy, NOT_REFUSED);
    });
  }
});

/** `INFO commandstats` calls of the scripts (EVAL the first time on a connection, EVALSHA after). */
async function scriptCalls(raw: Redis): Promise<number> {
  const info = await raw.info('commandstats');
  let calls = 0;
  for (const m of info.matchAll(/^cmdstat_(?:eval|evalsha):calls=(\d+)/gm)) calls += Number(m[1]);
  return calls;
}

describe('limit on Redis', { timeout: 120_000 }, () => {
  test('one round trip: exactly one script call per limit() and per charge()', async (t) => {
    // A server of this test alone, so that no other test's commands are counted.
    const server = await startRedisServer();
    t.after(() => server.close());
    const store = new RedisStore(server.url, memoryLogger().logger);
    const raw = new Redis(server.url, { maxRetriesPerRequest: 1 });
    t.after(async () => {
      await store.close();
      raw.disconnect();
    });
    const quotas = [quota('q:a', 100, 1), quota('q:b', 100, 0), quota('q:c', 1, 1)];
    const before = await scriptCalls(raw);
    for (let i = 0; i < 10; i++) await store.limit(rate('rl', MINUTE, 5), quotas);
    assert.equal((await scriptCalls(raw)) - before, 10);
    for (let i = 0; i < 5; i++) await store.charge('q:b', 0.5, MINUTE);
    assert.equal((await scriptCalls(raw)) - before, 15);
  });

  test('the calls of one event-loop turn share one script call, each decided in the order made; a bad counter fails only its own', async (t) => {
    const server = await startRedisServer();
    t.after(() => server.close());
    const prefix = 'b:';
    const store = new RedisStore(server.url, memoryLogger().logger, { prefix });
    const raw = new Redis(server.url, { maxRetriesPerRequest: 1 });
    t.after(async () => {
      await store.close();
      raw.disconnect();
    });
    await store.limit(rate('warm', MINUTE, 1), []);
    await raw.set(`${prefix}q:text`, 'not a number');
    const before = await scriptCalls(raw);
    // Twelve calls made together: a burst of 5 and a quota of 8 between them, and one bad counter.
    const calls = Array.from({ length: 12 }, (_, i) =>
      i === 6
        ? store.limit(undefined, [quota('q:text', 10, 1)])
        : store.limit(rate('rl', MINUTE, 5), [quota('q:n', 8, 1)]),
    );
    const results = await Promise.allSettled(calls);
    assert.equal((await scriptCalls(raw)) - before, 1, 'one script call for the twelve');
    const bad = results[6]!;
    assert.equal(bad.status, 'rejected');
    assert.match(String((bad as PromiseRejectedResult).reason), /q:text is not a number/);
    const decided = results
      .filter((_, i) => i !== 6)
      .map((r) => (r as PromiseFulfilledResult<LimitResult>).value);
    // In the order made: the first five admitted (remaining 4..0), then the rate refuses.
    assert.deepEqual(
      decided.map((r) => r.refusedBy),
      [
        NOT_REFUSED,
        NOT_REFUSED,
        NOT_REFUSED,
        NOT_REFUSED,
        NOT_REFUSED,
        BY_RATE,
        BY_RATE,
        BY_RATE,
        BY_RATE,
        BY_RATE,
        BY_RATE,
      ],
    );
    assert.deepEqual(
      decided.slice(0, 5).map((r) => r.remaining),
      [4, 3, 2, 1, 0],
    );
    assert.equal(await raw.get(`${prefix}q:n`), '5', 'only the admitted ones were charged');
  });

  test("the TAT is on Redis's clock (TIME), kept in fractional milliseconds", async (t) => {
    const { store, raw, prefix } = await redisStore(t);
    const interval = MINUTE / 7;
    const [s, us] = await raw.time();
    const redisNow = Number(s) * 1000 + Number(us) / 1000;
    await store.limit(rate('rl', interval, 2), []);
    const stored = await raw.get(`${prefix}rl`);
    assert.match(stored ?? '', /^\d+\.\d{3}$/);
    const tat = Number(stored);
    assert.ok(
      tat - interval >= redisNow && tat - interval - redisNow < 1_000,
      `TAT ${stored}, now ${redisNow}`,
    );
    // A second request adds exactly one interval (to the microsecond).
    await store.limit(rate('rl', interval, 2), []);
    assert.ok(Math.abs(Number(await raw.get(`${prefix}rl`)) - (tat + interval)) < 0.002);
  });

  test('200 concurrent requests through two instances: exactly the burst (50) admitted, each charged once', async (t) => {
    const a = await redisStore(t);
    const b = await redisStore(t, a.prefix);
    const r = rate('rl:shared', 3_600_000, 50);
    const q = [quota('q:shared', 1_000, 1)];
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) => (i % 2 === 0 ? a.store : b.store).limit(r, q)),
    );
    assert.equal(results.filter((x) => x.refusedBy === NOT_REFUSED).length, 50);
    assert.equal(results.filter((x) => x.refusedBy === BY_RATE).length, 150);
    assert.equal(await a.store.get('q:shared'), '50');
    assert.deepEqual(
      results
        .filter((x) => x.refusedBy === NOT_REFUSED)
        .map((x) => x.remaining)
        .sort((x, y) => y - x),
      Array.from({ length: 50 }, (_, i) => 49 - i),
      'every admitted request saw its own state',
    );
  });

  test('random sequences: Redis decides as the memory store does', async (t) => {
    // An interval so long that the wall time the calls take on Redis's clock changes no decision.
    const INTERVAL = 1e9;
    const { store: shared } = await redisStore(t);
    // Costs and charges in halves and quarters: sums are exact in doubles and in Redis's long doubles.
    const amount = fc.constantFrom(0.25, 0.5, 1, 1.5, 2.25, 3);
    const call = fc.oneof(
      fc.record({
        kind: fc.constant('limit' as const),
        rated: fc.boolean(),
        maxWait: fc.constantFrom(0, 0.5, 1, 2),
        quotas: fc.uniqueArray(fc.integer({ min: 0, max: 2 }), { maxLength: 3 }),
        costs: fc.tuple(fc.oneof(fc.constant(0), amount), fc.oneof(fc.constant(0), amount), amount),
      }),
      fc.record({ kind: fc.constant('charge' as const), quota: fc.integer({ min: 0, max: 2 }), amount }),
    );
    const params = fc.record({
      burst: fc.integer({ min: 1, max: 4 }),
      limits: fc.tuple(fc.constantFrom(1, 2.5, 5), fc.constantFrom(2, 4.5, 8), fc.constantFrom(3, 10)),
    });
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        params,
        fc.array(call, { minLength: 1, maxLength: 25 }),
        async ({ burst, limits }, calls) => {
          const memory = new MemoryStore({ now: () => START, sweepInterval: 0 });
          const ns = `run${run++}:`;
          try {
            for (const [i, c] of calls.entries()) {
              if (c.kind === 'charge') {
                const key = `${ns}q${c.quota}`;
                assert.equal(
                  await shared.charge(key, c.amount, 3_600_000),
                  await memory.charge(key, c.amount, 3_600_000),
                );
                continue;
              }
              const r = c.rated ? rate(`${ns}rl`, INTERVAL, burst, c.maxWait * INTERVAL) : undefined;
              const q = c.quotas.map((n) => quota(`${ns}q${n}`, limits[n]!, c.costs[n]!));
              const expected = await memory.limit(r, q);
              assertResult(await shared.limit(r, q), expected, 60_000, `call ${i} ${JSON.stringify(c)}`);
            }
            for (let n = 0; n < 3; n++) {
              const key = `${ns}q${n}`;
              assert.equal(Number((await shared.get(key)) ?? 0), Number((await memory.get(key)) ?? 0), key);
            }
          } finally {
            await memory.close();
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe('limit over IPC: the primary checks what a worker sends', () => {
  test('malformed limit and charge requests get an error answer (bad request), never a crash', async (t) => {
    const store = new MemoryStore({ sweepInterval: 0 });
    t.after(() => store.close());
    const ask = (fields: Record<string, unknown>) =>
      answerStoreRequest(store, { gatehouse: 'store', id: 7, ...fields } as unknown as WireRequest);
    const malformed: Array<Record<string, unknown>> = [
      { op: 'limit', rate: 'rl' },
      { op: 'limit', rate: ['rl', 1000, 1] },
      { op: 'limit', rate: [5, 1000, 1, 0] },
      { op: 'limit', rate: ['rl', '1000', 1, 0] },
      { op: 'limit', rate: ['rl', null, 1, 0] },
      { op: 'limit', rate: ['rl', 1000, 0, 0] },
      { op: 'limit', rate: null },
      { op: 'limit', quotas: 'q' },
      { op: 'limit', quotas: null },
      { op: 'limit', quotas: ['q', 10, 1] },
      { op: 'limit', quotas: ['q', 10, 1, null] },
      { op: 'limit', quotas: ['q', 10, -1, 1000] },
      { op: 'limit', quotas: [{}, 10, 1, 1000] },
      { op: 'limit', quotas: ['', 10, 1, 1000] },
      { op: 'charge', key: 'q', by: 1 },
      { op: 'charge', key: 'q', by: '1', ttlMs: 1000 },
      { op: 'charge', key: 'q', ttlMs: 1000 },
      { op: 'charge', by: 1, ttlMs: 1000 },
    ];
    for (const fields of malformed) {
      const reply = await ask(fields);
      assert.equal(reply.ok, false, JSON.stringify(fields));
      assert.equal((reply as { badRequest?: boolean }).badRequest, true, JSON.stringify(fields));
    }
    assert.equal(await store.get('q'), undefined, 'nothing was charged');
    assert.deepEqual(await ask({ op: 'limit', rate: ['rl', 1000, 2, 0], quotas: ['q', 10, 1.5, 1000] }), {
      gatehouse: 'store-reply',
      id: 7,
      ok: true,
      value: [NOT_REFUSED, 0, 1, 1000, 1.5],
    });
    assert.deepEqual(await ask({ op: 'charge', key: 'q', by: 0.25, ttlMs: 1000 }), {
      gatehouse: 'store-reply',
      id: 7,
      ok: true,
      value: 1.75,
    });
    // A call the worker stopped waiting for (`until` past) changes nothing when the primary comes to it.
    const late = await ask({
      op: 'limit',
      rate: ['rl', 1000, 2, 0],
      quotas: ['q', 10, 1, 1000],
      until: Date.now() - 1,
    });
    assert.equal(late.ok, false);
    assert.equal(await store.get('q'), '1.75', 'the late call charged nothing');
    assert.equal((await ask({ op: 'limit', until: 'soon' })).ok, false);
    const inTime = await ask({ op: 'limit', quotas: ['q', 10, 1, 1000], until: Date.now() + 5000 });
    assert.equal(inTime.ok, true);
    assert.equal(await store.get('q'), '2.75');
  });
});

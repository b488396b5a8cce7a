import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { describe, test } from 'node:test';
import { Redis } from 'ioredis';
import {
  createStateStore,
  MemoryStore,
  RedisStore,
  type StateStore,
  StateStoreError,
} from '../src/state/index.js';
import { memoryLogger as debugLogger, waitFor } from './helpers/gateway.js';
import { memoryLogger } from './helpers/proxy.js';
import { redisUrl, startRedisServer } from './helpers/redis.js';

/** One backend of the contract suite: how to make a store and how to check expiry without sleeping. */
interface Backend {
  name: string;
  make(): Promise<{ store: StateStore; expire(key: string, ttlMs: number, isSet?: boolean): Promise<void> }>;
}

const memory: Backend = {
  name: 'memory',
  async make() {
    let now = 1_700_000_000_000;
    const store = new MemoryStore({ now: () => now, sweepInterval: 0 });
    return {
      store,
      // Frozen clock: step past the TTL and the key must be gone.
      async expire(key, ttlMs, isSet) {
        now += ttlMs - 1;
        const alive = isSet ? (await store.setMembers(key)).length > 0 : (await store.get(key)) !== undefined;
        assert.ok(alive, 'alive just before its TTL');
        now += 1;
      },
    };
  },
};

const redis: Backend = {
  name: 'redis',
  async make() {
    const url = await redisUrl();
    const prefix = `gatehouse-test:${randomBytes(6).toString('hex')}:`;
    const { logger } = memoryLogger();
    const store = new RedisStore(url, logger, { prefix });
    const raw = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
    return {
      store: {
        ...bind(store),
        async close() {
          await store.close();
          raw.disconnect();
        },
      },
      // Redis keeps its own clock: check the TTL it holds, then expire the key the way Redis would.
      async expire(key, ttlMs) {
        const pttl = await raw.pttl(prefix + key);
        assert.ok(pttl > 0 && pttl <= ttlMs, `pttl ${pttl} within (0, ${ttlMs}]`);
        await raw.pexpire(prefix + key, 1);
        const deadline = Date.now() + 5000;
        while ((await raw.exists(prefix + key)) && Date.now() < deadline)
          await new Promise((r) => setTimeout(r, 5));
      },
    };
  },
};

function bind(store: StateStore): StateStore {
  return {
    kind: store.kind,
    get available() {
      return store.available;
    },
    revocations: store.revocations,
    get: store.get.bind(store),
    set: store.set.bind(store),
    add: store.add.bind(store),
    take: store.take.bind(store),
    delete: store.delete.bind(store),
    incr: store.incr.bind(store),
    setAdd: store.setAdd.bind(store),
    setRemove: store.setRemove.bind(store),
    setMembers: store.setMembers.bind(store),
    limit: store.limit.bind(store),
    charge: store.charge.bind(store),
    close: store.close.bind(store),
  };
}

for (const backend of [memory, redis]) {
  describe(`state store contract: ${backend.name}`, () => {
    test('get, set, overwrite, delete', async (t) => {
      const { store } = await backend.make();
      t.after(() => store.close());
      assert.equal(await store.get('a'), undefined);
      await store.set('a', 'one');
      assert.equal(await store.get('a'), 'one');
      await store.set('a', 'two');
      assert.equal(await store.get('a'), 'two');
      await store.delete('a');
      await store.delete('a');
      assert.equal(await store.get('a'), undefined);
      const big = 'x'.repeat(100_000);
      await store.set('big', big);
      assert.equal(await store.get('big'), big);
      await store.set('unicode', 'grüße ✓');
      assert.equal(await store.get('unicode'), 'grüße ✓');
    });

    test('values expire after their TTL', async (t) => {
      const { store, expire } = await backend.make();
      t.after(() => store.close());
      await store.set('k', 'v', 30_000);
      await expire('k', 30_000);
      assert.equal(await store.get('k'), undefined);
      await store.set('forever', 'v');
      await store.set('forever', 'v2', 10_000);
      await expire('forever', 10_000);
      assert.equal(await store.get('forever'), undefined);
    });

    test('add stores only when absent', async (t) => {
      const { store, expire } = await backend.make();
      t.after(() => store.close());
      assert.equal(await store.add('lock', 'a', 5000), true);
      assert.equal(await store.add('lock', 'b', 5000), false);
      assert.equal(await store.get('lock'), 'a');
      await expire('lock', 5000);
      assert.equal(await store.add('lock', 'c'), true);
      assert.equal(await store.get('lock'), 'c');
    });

    test('take returns a value exactly once, even to concurrent callers', async (t) => {
      const { store } = await backend.make();
      t.after(() => store.close());
      await store.set('code', 'secret', 10_000);
      const results = await Promise.all(Array.from({ length: 20 }, () => store.take('code')));
      assert.deepEqual(
        results.filter((r) => r !== undefined),
        ['secret'],
      );
      assert.equal(await store.get('code'), undefined);
      assert.equal(await store.take('code'), undefined);
    });

    test('incr counts atomically and sets the TTL only on creation', async (t) => {
      const { store, expire } = await backend.make();
      t.after(() => store.close());
      assert.equal(await store.incr('n'), 1);
      assert.equal(await store.incr('n', 5), 6);
      assert.equal(await store.incr('n', -2), 4);
      const many = await Promise.all(Array.from({ length: 50 }, () => store.incr('c', 1, 60_000)));
      assert.deepEqual(
        [...many].sort((a, b) => a - b),
        Array.from({ length: 50 }, (_, i) => i + 1),
      );
      assert.equal(await store.get('c'), '50');
      await expire('c', 60_000);
      assert.equal(await store.incr('c', 1, 60_000), 1);
      await store.set('text', 'abc');
      await assert.rejects(store.incr('text'), StateStoreError);
    });

    test('sets: add, members, remove; an emptied set is gone; TTL applies to the set', async (t) => {
      const { store, expire } = await backend.make();
      t.after(() => store.close());
      assert.deepEqual(await store.setMembers('s'), []);
      await store.setAdd('s', 'a', 60_000);
      await store.setAdd('s', 'b', 60_000);
      await store.setAdd('s', 'a', 60_000);
      assert.deepEqual((await store.setMembers('s')).sort(), ['a', 'b']);
      await store.setRemove('s', 'a');
      await store.setRemove('s', 'zzz');
      assert.deepEqual(await store.setMembers('s'), ['b']);
      await store.setRemove('s', 'b');
      assert.deepEqual(await store.setMembers('s'), []);
      await store.setAdd('t', 'x', 20_000);
      await expire('t', 20_000, true);
      assert.deepEqual(await store.setMembers('t'), []);
      await store.delete('s');
    });

    test('wrong kinds of value and bad arguments are clear errors', async (t) => {
      const { store } = await backend.make();
      t.after(() => store.close());
      await store.setAdd('set', 'a');
      await assert.rejects(store.get('set'), StateStoreError);
      await assert.rejects(store.set('', 'v'), TypeError);
      await assert.rejects(store.set('k', 'v', 0), TypeError);
      await assert.rejects(store.set('k', 'v', Number.NaN), TypeError);
      await assert.rejects(store.get('k'.repeat(2000)), TypeError);
      await assert.rejects(store.incr('k', 1.5), TypeError);
    });

    test('a closed store refuses with StateStoreError', async () => {
      const { store } = await backend.make();
      await store.close();
      await assert.rejects(store.get('a'), StateStoreError);
      await assert.rejects(store.set('a', 'b'), StateStoreError);
    });
  });
}

test('memory store: bounded size evicts the least recently written key', async (t) => {
  const store = new MemoryStore({ maxEntries: 3, sweepInterval: 0 });
  t.after(() => store.close());
  await store.set('a', '1');
  await store.set('b', '2');
  await store.set('c', '3');
  await store.set('a', '1b'); // rewritten: now the newest
  await store.set('d', '4');
  assert.equal(store.size, 3);
  assert.equal(await store.get('b'), undefined);
  assert.equal(await store.get('a'), '1b');
  assert.equal(await store.get('d'), '4');
});

test('memory store: a flood of short-lived keys never evicts long-lived ones', async (t) => {
  let now = 0;
  const store = new MemoryStore({ maxEntries: 2, maxShortEntries: 3, now: () => now, sweepInterval: 0 });
  t.after(() => store.close());
  await store.set('session:a', '1', 12 * 3_600_000);
  await store.set('session:b', '2');
  for (let i = 0; i < 100; i++) await store.set(`login:${i}`, 'x', 600_000);
  assert.equal(await store.get('session:a'), '1');
  assert.equal(await store.get('session:b'), '2');
  assert.equal(store.size, 5);
  assert.equal(await store.get('login:0'), undefined, 'the oldest short-lived keys went');
  assert.equal(await store.get('login:99'), 'x');
  now += 600_000;
  store.sweep();
  assert.equal(store.size, 2);
});

test('redis store: keys carry the gatehouse: prefix', async (t) => {
  const url = await redisUrl();
  const { logger } = memoryLogger();
  const store = createStateStore(url, logger);
  const raw = new Redis(url, { maxRetriesPerRequest: 1 });
  t.after(async () => {
    await store.close();
    raw.disconnect();
  });
  assert.equal(store.kind, 'redis');
  const key = `prefix-check-${randomBytes(6).toString('hex')}`;
  await store.set(key, 'v', 10_000);
  assert.equal(await raw.get(`gatehouse:${key}`), 'v');
  await store.delete(key);
  assert.equal(await raw.exists(`gatehouse:${key}`), 0);
});

test('redis store: an unreachable Redis fails each call with StateStoreError, logged, within the timeouts', async (t) => {
  // A port that accepts nothing: bind, note it, close.
  const port = await new Promise<number>((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(p));
    });
  });
  const { logger, lines } = memoryLogger();
  const store = createStateStore(`redis://:hunter2@127.0.0.1:${port}/0`, logger, {
    redis: { connectTimeout: 200, commandTimeout: 300 },
  });
  t.after(() => store.close());
  const started = Date.now();
  const err = await store.get('anything').catch((e: unknown) => e);
  assert.ok(err instanceof StateStoreError, String(err));
  assert.equal(err.code, 'GH_STATE_UNAVAILABLE');
  assert.equal(err.status, 503);
  await assert.rejects(store.set('a', 'b', 1000), StateStoreError);
  assert.ok(Date.now() - started < 10_000);
  const logged = JSON.stringify(lines);
  assert.match(logged, /state store/);
  assert.doesNotMatch(logged, /hunter2/, 'the password never reaches the log');
});

test('redis store: a hang is noticed by the health check; waiting and later calls fail at once; it recovers by itself', {
  timeout: 60_000,
}, async (t) => {
  const redis = await startRedisServer();
  t.after(() => redis.close());
  const { logger, lines } = debugLogger();
  // Far above every bound here: nothing may pass by waiting for the command timeout.
  const store = new RedisStore(redis.url, logger, {
    commandTimeout: 60_000,
    probeInterval: 200,
    probeTimeout: 300,
  });
  const peer = new RedisStore(redis.url, logger, {
    commandTimeout: 60_000,
    probeInterval: 200,
    probeTimeout: 300,
  });
  t.after(async () => {
    await store.close();
    await peer.close();
  });
  await store.set('k', 'v');
  await waitFor(() => store.revocations.live && peer.revocations.live, 10_000, 'subscribed');
  const heard = peer.revocations.seq;
  await store.revocations.publish(['tag-one']);
  await waitFor(() => peer.revocations.seq > heard, 5000, 'the revocation to arrive');
  const got: string[] = [];
  assert.equal(
    peer.revocations.replay(heard, (tag) => got.push(tag)),
    true,
  );
  assert.deepEqual(got, ['tag-one']);

  redis.stop();
  // A call sent to the stopped server waits; the health check notices the hang and fails it.
  const waiting = store.get('k').then(
    () => 'answered',
    (err: unknown) => (err instanceof StateStoreError ? err.code : String(err)),
  );
  assert.equal(await waiting, 'GH_STATE_UNAVAILABLE');
  assert.equal(store.available, false);
  assert.equal(store.revocations.live, false, 'revocations may be missed: the caches stop');
  // Known down: the next call does not even wait for Redis (which is still stopped).
  await assert.rejects(store.set('k', 'w'), StateStoreError);
  assert.ok(lines.some((l) => l.msg === 'state store (Redis) unavailable'));

  redis.cont();
  await waitFor(() => store.available && store.revocations.live, 10_000, 'recovery');
  assert.equal(await store.get('k'), 'v');
  assert.ok(lines.some((l) => l.msg === 'state store (Redis) available again'));

  await redis.kill();
  await assert.rejects(store.get('k'), StateStoreError);
  await waitFor(() => !store.available, 5000, 'the refusal to be known');
  await redis.restart();
  await waitFor(() => store.available && peer.revocations.live, 10_000, 'recovery after a restart');
  assert.equal(await store.get('k'), undefined, 'the new server is empty');
});

test('createStateStore rejects unknown stores', () => {
  const { logger } = memoryLogger();
  assert.throws(() => createStateStore('postgres://x', logger), TypeError);
  assert.throws(() => createStateStore('', logger), TypeError);
  const m = createStateStore('memory', logger);
  assert.equal(m.kind, 'memory');
  return m.close();
});

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createUpstream } from '../src/upstream/index.js';
import { SlidingRetryBudget } from '../src/upstream/retry-budget.js';
import type { Lease } from '../src/upstream/types.js';
import { memoryLogger, send, startBackend, testContext, upstreamConfig } from './helpers/upstream.js';

const input = { clientIp: '127.0.0.1', headers: {} };

test('at maxConnections a request waits in the queue and gets the released slot', async (t) => {
  const backend = await startBackend('only');
  const up = await createUpstream(
    'q',
    upstreamConfig({ servers: [{ url: backend.url }], maxConnections: 1, queue: { max: 1, timeout: '30s' } }),
    testContext(),
    memoryLogger().logger,
  );
  t.after(async () => {
    await up.close();
    await backend.close();
  });
  const first = up.acquire(input) as Lease;
  assert.ok(!(first instanceof Promise));
  const second = up.acquire(input);
  assert.ok(second instanceof Promise, 'second request waits');
  assert.equal(up.status().queued, 1);
  // The queue holds one: a third is refused at once.
  await assert.rejects(Promise.resolve(up.acquire(input)), { code: 'GH_QUEUE_FULL', status: 503 });
  let settled = false;
  void second.then(() => {
    settled = true;
  });
  await send(first);
  const lease = await second;
  assert.ok(settled);
  assert.equal(lease.server.id, first.server.id);
  assert.equal(up.status().queued, 0);
  assert.equal((await send(lease)).body, 'only');
  assert.equal(up.status().servers[0]!.active, 0);
});

test('a queued request times out with GH_QUEUE_TIMEOUT; close rejects waiters with GH_NO_SERVER', async (t) => {
  const backend = await startBackend('only');
  t.after(() => backend.close());
  const up = await createUpstream(
    'q2',
    upstreamConfig({
      servers: [{ url: backend.url }],
      maxConnections: 1,
      queue: { max: 10, timeout: '50ms' },
    }),
    testContext(),
    memoryLogger().logger,
  );
  const held = up.acquire(input) as Lease;
  await assert.rejects(Promise.resolve(up.acquire(input)), { code: 'GH_QUEUE_TIMEOUT', status: 503 });
  assert.equal(up.status().queued, 0);
  const slow = await createUpstream(
    'q3',
    upstreamConfig({ servers: [{ url: backend.url }], maxConnections: 1, queue: { max: 10, timeout: '1h' } }),
    testContext(),
    memoryLogger().logger,
  );
  const heldSlow = slow.acquire(input) as Lease;
  const waiting = slow.acquire(input);
  const closing = slow.close();
  await assert.rejects(Promise.resolve(waiting), { code: 'GH_NO_SERVER' });
  heldSlow.release('success');
  held.release('success');
  await closing;
  await up.close();
});

test('a released slot goes to the first waiter (FIFO)', async (t) => {
  const backend = await startBackend('only');
  const up = await createUpstream(
    'q4',
    upstreamConfig({ servers: [{ url: backend.url }], maxConnections: 1 }),
    testContext(),
    memoryLogger().logger,
  );
  t.after(async () => {
    await up.close();
    await backend.close();
  });
  let lease = up.acquire(input) as Lease;
  const order: number[] = [];
  const waiters = [0, 1, 2].map((i) =>
    Promise.resolve(up.acquire(input)).then((l) => {
      order.push(i);
      return l;
    }),
  );
  for (const w of waiters) {
    lease.release('success');
    lease = await w;
  }
  lease.release('success');
  assert.deepEqual(order, [0, 1, 2]);
});

test('the retry budget allows a fraction of recent requests plus 10 per second, over a sliding window', () => {
  let now = 1_000_000;
  const budget = new SlidingRetryBudget(0.2, 10, () => now);
  // With no traffic only the floor of 10/s over the 10 s window is available.
  let granted = 0;
  while (budget.tryAcquire()) granted++;
  assert.equal(granted, 100);
  // 1000 requests add 200 retries.
  for (let i = 0; i < 1000; i++) budget.recordRequest();
  granted = 0;
  while (budget.tryAcquire()) granted++;
  assert.equal(granted, 200);
  // After the window slides past, the spent retries and old requests are forgotten.
  now += 11_000;
  granted = 0;
  while (budget.tryAcquire()) granted++;
  assert.equal(granted, 100);
});

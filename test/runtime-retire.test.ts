/**
 * What a reload retires is closed only when no request of an older configuration can still use it: a
 * replaced state store waits for those requests (bounded), and closes at once when there are none.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { retireStore } from '../src/process/runtime-build.js';
import type { Runtime } from '../src/runtime.js';
import { MemoryStore } from '../src/state/memory.js';
import { memoryLogger } from './helpers/proxy.js';

/** A runtime as far as retiring looks at it: its store and its count of requests in flight. */
function holder(store: MemoryStore, count: number): Runtime {
  return { store, inFlight: { count } } as unknown as Runtime;
}

/** retireStore's polling timers do not hold the process open (unref): the test holds it meanwhile. */
async function held<T>(p: Promise<T>): Promise<T> {
  const keep = setInterval(() => {}, 1000);
  try {
    return await p;
  } finally {
    clearInterval(keep);
  }
}

async function isOpen(store: MemoryStore): Promise<boolean> {
  try {
    await store.set('probe', 'x', 1000);
    return (await store.get('probe')) === 'x';
  } catch {
    return false;
  }
}

test('a replaced state store stays open while a request of an older runtime that uses it runs', async () => {
  const { logger } = memoryLogger();
  const store = new MemoryStore();
  const old = holder(store, 1);
  const other = holder(new MemoryStore(), 5);
  let closed = false;
  const retiring = retireStore(store, 10_000, logger, undefined, [old, other]).then(() => {
    closed = true;
  });
  await new Promise((resolve) => setTimeout(resolve, 400));
  assert.equal(closed, false, 'held by the request in flight');
  assert.ok(await isOpen(store));
  (old.inFlight as { count: number }).count = 0;
  await held(retiring);
  assert.equal(closed, true);
  assert.equal(await isOpen(store), false, 'closed once the last request ended');
});

test('a replaced state store with no request left closes at once; the wait is bounded', async () => {
  const { logger } = memoryLogger();
  const idle = new MemoryStore();
  const t0 = Date.now();
  await held(retireStore(idle, 10_000, logger, undefined, [holder(idle, 0)]));
  assert.equal(await isOpen(idle), false);
  assert.ok(Date.now() - t0 < 5_000, 'no fixed grace period');
  const stuck = new MemoryStore();
  await held(retireStore(stuck, 300, logger, undefined, [holder(stuck, 1)]));
  assert.equal(await isOpen(stuck), false, 'closed at the bound although a request still runs');
});

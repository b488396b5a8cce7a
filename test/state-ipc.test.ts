/**
 * The shared memory store of a multi-process instance over a real IPC channel: the test process plays
 * the worker (an `IpcStore` on its end of the channel, the ChildProcess), a forked child plays the
 * primary (test/helpers/store-primary.ts: a MemoryStore on a clock the test moves, served by the
 * primary's own `serveStoreRequest`).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, fork } from 'node:child_process';
import path from 'node:path';
import { describe, type TestContext, test } from 'node:test';
import { IpcStore } from '../src/state/ipc.js';
import { StateStoreError } from '../src/state/types.js';
import { isStoreReply, type StoreReply } from '../src/state/wire.js';
import { ROOT } from './helpers/gateway.js';

const SCRIPT = path.join(ROOT, 'test/helpers/store-primary.ts');

type Message = Record<string, unknown>;

/** Resolves with the child's next message that satisfies `match`; rejects when it exits first or after `ms`. */
function nextMessage(child: ChildProcess, match: (m: Message) => boolean, ms = 10_000): Promise<Message> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error('timed out waiting for a message from the child'));
    }, ms);
    const onMessage = (m: unknown): void => {
      if (typeof m === 'object' && m !== null && match(m as Message)) {
        cleanup();
        resolve(m as Message);
      }
    };
    const onExit = (): void => {
      cleanup();
      reject(new Error('the child exited'));
    };
    function cleanup(): void {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('exit', onExit);
    }
    child.on('message', onMessage);
    child.on('exit', onExit);
  });
}

interface Primary {
  child: ChildProcess;
  exited: Promise<void>;
  /** Moves the primary's store clock forward. */
  advance(ms: number): Promise<void>;
}

/** Forks the stand-in primary and waits until it listens; stopped after the test. */
async function startPrimary(t: TestContext, mode: 'serve' | 'silent' = 'serve'): Promise<Primary> {
  const child = fork(SCRIPT, [mode], {
    execArgv: ['--import', import.meta.resolve('tsx')],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  await nextMessage(child, (m) => m.test === 'ready', 30_000);
  return {
    child,
    exited,
    async advance(ms) {
      const advanced = nextMessage(child, (m) => m.test === 'advanced');
      child.send({ test: 'advance', ms });
      await advanced;
    },
  };
}

/** An IpcStore on the test's end of the channel, closed after the test. */
function storeFor(t: TestContext, p: Primary, timeoutMs?: number): IpcStore {
  const store = new IpcStore(p.child, timeoutMs === undefined ? {} : { timeoutMs });
  t.after(() => store.close());
  return store;
}

/** Asserts that `promise` rejects with StateStoreError (code GH_STATE_UNAVAILABLE, status 503). */
async function rejectsUnavailable(promise: Promise<unknown>): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof StateStoreError, `expected StateStoreError, got ${String(err)}`);
    assert.equal(err.code, 'GH_STATE_UNAVAILABLE');
    assert.equal(err.status, 503);
    return true;
  });
}

describe('IpcStore against the primary over IPC', { timeout: 60_000 }, () => {
  test('every operation round-trips to the primary store', async (t) => {
    const p = await startPrimary(t);
    const store = storeFor(t, p);
    assert.equal(store.kind, 'memory');

    assert.equal(await store.get('a'), undefined);
    await store.set('a', 'one');
    assert.equal(await store.get('a'), 'one');
    await store.set('a', 'grüße ✓');
    assert.equal(await store.get('a'), 'grüße ✓');
    const big = 'x'.repeat(100_000);
    await store.set('big', big);
    assert.equal(await store.get('big'), big);
    await store.delete('a');
    await store.delete('a');
    assert.equal(await store.get('a'), undefined);

    assert.equal(await store.add('lock', 'first'), true);
    assert.equal(await store.add('lock', 'second'), false);
    assert.equal(await store.get('lock'), 'first');

    await store.set('code', 'c-1');
    assert.equal(await store.take('code'), 'c-1');
    assert.equal(await store.take('code'), undefined);
    assert.equal(await store.get('code'), undefined);

    assert.equal(await store.incr('n'), 1);
    assert.equal(await store.incr('n', 5), 6);
    assert.equal(await store.incr('n', -2), 4);
    assert.equal(await store.get('n'), '4');

    await store.setAdd('s', 'x');
    await store.setAdd('s', 'y');
    await store.setAdd('s', 'x');
    assert.deepEqual((await store.setMembers('s')).sort(), ['x', 'y']);
    await store.setRemove('s', 'x');
    assert.deepEqual(await store.setMembers('s'), ['y']);
    await store.setRemove('s', 'y');
    assert.deepEqual(await store.setMembers('s'), []);
    assert.deepEqual(await store.setMembers('never'), []);
    assert.equal(store.pending, 0);
  });

  test('concurrent calls are answered each by its own reply; add and incr stay atomic', async (t) => {
    const p = await startPrimary(t);
    const store = storeFor(t, p);
    const adds = await Promise.all(Array.from({ length: 20 }, (_, i) => store.add('once', `w${i}`)));
    assert.equal(adds.filter(Boolean).length, 1);
    const winner = adds.indexOf(true);
    assert.equal(await store.get('once'), `w${winner}`);
    const counts = await Promise.all(Array.from({ length: 50 }, () => store.incr('hits')));
    assert.deepEqual(
      [...counts].sort((x, y) => x - y),
      Array.from({ length: 50 }, (_, i) => i + 1),
    );
    const values = await Promise.all(
      Array.from({ length: 30 }, async (_, i) => {
        await store.set(`k${i}`, `v${i}`);
        return store.get(`k${i}`);
      }),
    );
    assert.deepEqual(
      values,
      Array.from({ length: 30 }, (_, i) => `v${i}`),
    );
  });

  test('TTLs run on the primary: keys and sets expire; incr keeps the expiry of an existing counter', async (t) => {
    const p = await startPrimary(t);
    const store = storeFor(t, p);
    await store.set('k', 'v', 30_000);
    assert.equal(await store.add('tmp', 'v', 10_000), true);
    await store.setAdd('set', 'm', 10_000);
    await p.advance(9_999);
    assert.equal(await store.get('tmp'), 'v');
    assert.deepEqual(await store.setMembers('set'), ['m']);
    await p.advance(1);
    assert.equal(await store.get('tmp'), undefined);
    assert.deepEqual(await store.setMembers('set'), []);
    assert.equal(await store.add('tmp', 'again', 10_000), true);
    await p.advance(19_999);
    assert.equal(await store.get('k'), 'v');
    await p.advance(1);
    assert.equal(await store.get('k'), undefined);

    // A fixed window: the second incr does not extend the first one's TTL.
    assert.equal(await store.incr('window', 1, 1_000), 1);
    await p.advance(600);
    assert.equal(await store.incr('window', 1, 1_000), 2);
    await p.advance(399);
    assert.equal(await store.get('window'), '2');
    await p.advance(1);
    assert.equal(await store.get('window'), undefined);
    assert.equal(await store.incr('window', 1, 1_000), 1);
  });

  test('store failures arrive as StateStoreError, bad arguments as TypeError', async (t) => {
    const p = await startPrimary(t);
    const store = storeFor(t, p);
    await store.set('text', 'not a number');
    await rejectsUnavailable(store.incr('text'));
    await rejectsUnavailable(store.setMembers('text'));
    await store.setAdd('members', 'm');
    await rejectsUnavailable(store.get('members'));
    await assert.rejects(store.get(''), TypeError);
    await assert.rejects(store.set('k', 'v', -1), TypeError);
    await assert.rejects(store.incr('n', 1.5), TypeError);
    assert.equal(store.pending, 0);
    // The store is fine afterwards.
    assert.equal(await store.get('text'), 'not a number');
  });

  test('the primary answers malformed requests with an error reply and keeps serving', async (t) => {
    const p = await startPrimary(t);
    const bad: Array<Record<string, unknown>> = [
      { op: 'close', key: 'k' },
      { op: 'flushall', key: 'k' },
      { key: 'k' },
      { op: 'get', key: 42 },
      { op: 'get', key: 'x'.repeat(2000) },
      { op: 'set', key: 'k', value: 5 },
      { op: 'set', key: 'k', value: 'v', ttlMs: null },
      { op: 'set', key: 'k', value: 'v', ttlMs: -1 },
      { op: 'incr', key: 'k', by: 'one' },
      { op: 'incr', key: 'k', by: 0.5 },
      { op: 'setAdd', key: 'k' },
      { op: 'toString', key: 'k' },
    ];
    const replies: StoreReply[] = [];
    for (const [i, fields] of bad.entries()) {
      const id = 1_000_000 + i;
      const reply = nextMessage(p.child, (m) => isStoreReply(m) && m.id === id);
      p.child.send({ gatehouse: 'store', id, ...fields });
      replies.push((await reply) as unknown as StoreReply);
    }
    for (const [i, reply] of replies.entries()) {
      assert.equal(reply.ok, false, `request ${JSON.stringify(bad[i])} was run`);
      if (!reply.ok) {
        assert.equal(reply.badRequest, true, `request ${JSON.stringify(bad[i])}: ${reply.error}`);
        assert.equal(typeof reply.error, 'string');
      }
    }
    // Still alive and serving, and none of the bad requests stored anything.
    assert.equal(p.child.exitCode, null);
    const store = storeFor(t, p);
    assert.equal(await store.get('k'), undefined);
    await store.set('k', 'v');
    assert.equal(await store.get('k'), 'v');
  });

  test('a call the primary does not answer fails with StateStoreError at its timeout', async (t) => {
    const p = await startPrimary(t, 'silent');
    const store = storeFor(t, p, 300);
    const received = nextMessage(p.child, (m) => m.test === 'received');
    const started = Date.now();
    const call = store.get('k');
    await received;
    assert.equal(store.pending, 1);
    await rejectsUnavailable(call);
    assert.ok(Date.now() - started >= 290, 'rejected before its timeout');
    assert.equal(store.pending, 0);
  });

  test('a channel closed by the worker side fails the waiting call and every later one at once', async (t) => {
    const p = await startPrimary(t, 'silent');
    // A timeout far beyond the test's: only the channel closing can end the call in time.
    const store = storeFor(t, p, 120_000);
    const received = nextMessage(p.child, (m) => m.test === 'received');
    const call = store.set('k', 'v');
    await received;
    const started = Date.now();
    p.child.disconnect();
    await rejectsUnavailable(call);
    await rejectsUnavailable(store.get('k'));
    await rejectsUnavailable(store.incr('n'));
    assert.ok(Date.now() - started < 5_000, 'the calls waited');
    assert.equal(store.pending, 0);
    await p.exited;
  });

  test('a primary that dies fails the waiting calls', async (t) => {
    const p = await startPrimary(t, 'silent');
    const store = storeFor(t, p, 120_000);
    const received = nextMessage(p.child, (m) => m.test === 'received' && m.count === 2);
    const calls = [store.take('code'), store.add('lock', 'me')];
    await received;
    p.child.kill('SIGKILL');
    for (const call of calls) await rejectsUnavailable(call);
    await rejectsUnavailable(store.setMembers('s'));
    assert.equal(store.pending, 0);
  });

  test('close fails the waiting calls and later ones, and stops listening on the channel', async (t) => {
    const p = await startPrimary(t, 'silent');
    const listening = p.child.listenerCount('message');
    const store = new IpcStore(p.child, { timeoutMs: 120_000 });
    assert.equal(p.child.listenerCount('message'), listening + 1);
    const received = nextMessage(p.child, (m) => m.test === 'received');
    const call = store.get('k');
    await received;
    await store.close();
    await rejectsUnavailable(call);
    await rejectsUnavailable(store.get('k'));
    assert.equal(p.child.listenerCount('message'), listening);
    assert.equal(p.child.listenerCount('disconnect'), 0);
    await store.close();
  });
});

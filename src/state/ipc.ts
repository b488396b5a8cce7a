/**
 * The memory store shared by the workers of one instance (`server.workers` above 1 with `state.store:
 * memory`): the cluster primary holds the one `MemoryStore`, and each worker's `IpcStore` runs every
 * operation on it over the cluster IPC channel. A session, a sign-in state or the generated assertion
 * key is then the same whichever worker a request reaches, and `add`, `take`, `incr` and `limit` stay
 * atomic because the primary runs one operation at a time. A call the primary does not answer in time,
 * or any call once the channel is closed, fails with `StateStoreError`, on which callers fail closed (503).
 */

import { RevocationFeed } from './revocations.js';
import {
  checkKeyAndTtl,
  checkLimit,
  type LimitResult,
  type QuotaCheck,
  type RateCheck,
  type StateStore,
  StateStoreError,
} from './types.js';
import {
  isRevokeMessage,
  isStoreReply,
  MAX_REVOKE_TAGS,
  ReplyTable,
  type RevokeMessage,
  STORE_OPS,
  type StoreOp,
  type StoreReply,
  type StoreRequest,
  type StoreValue,
} from './wire.js';

/** How long a worker waits for the primary to answer one store call. */
export const STORE_CALL_TIMEOUT_MS = 5_000;

/** The peer id of the primary in a worker's reply table (a worker has one peer). */
const PRIMARY = 0;

/**
 * The worker's end of the IPC channel: `process` in a cluster worker (a `ChildProcess` works too, which
 * the tests use to play the worker against a forked primary).
 */
export interface IpcChannel {
  readonly connected: boolean;
  send?(
    message: WireRequest | RevokeMessage,
    sendHandle: undefined,
    options: object,
    callback: (err: Error | null) => void,
  ): boolean;
  on(event: 'message', listener: (message: unknown) => void): unknown;
  on(event: 'disconnect', listener: () => void): unknown;
  off(event: 'message', listener: (message: unknown) => void): unknown;
  off(event: 'disconnect', listener: () => void): unknown;
}

/** Options of `IpcStore`. */
export interface IpcStoreOptions {
  /** Per-call timeout in ms (default `STORE_CALL_TIMEOUT_MS`). */
  timeoutMs?: number;
}

/**
 * `limit` over the channel, once per limited request, so kept compact: the rate as
 * `[key, intervalMs, burst, maxWaitMs]`, the quotas flattened as `key, limit, cost, ttlMs` each (absent
 * when there are none). The primary answers `[refusedBy, waitMs, remaining, resetMs, ...used]`.
 * `until` is when the worker stops waiting (ms since the epoch; the processes share the clock): a
 * primary that comes to the call later changes nothing, so a request already answered without it (503,
 * or let through) is never counted afterwards.
 */
export interface LimitRequest {
  gatehouse: 'store';
  id: number;
  op: 'limit';
  rate?: [key: string, intervalMs: number, burst: number, maxWaitMs: number];
  quotas?: Array<string | number>;
  until?: number;
}

/** `charge` over the channel: the fields of `StoreRequest`, the amount in `by`. */
export type ChargeRequest = Omit<StoreRequest, 'op'> & { op: 'charge' };

/** Every store request a worker sends: `StoreRequest` and the limit stage's two. */
export type WireRequest = StoreRequest | LimitRequest | ChargeRequest;

/** Every reply of the primary: `StoreReply`, and the numbers answering `limit`. */
export type WireReply =
  | StoreReply
  | { gatehouse: 'store-reply'; id: number; ok: true; value?: StoreValue | number[] };

type Call =
  | Omit<StoreRequest, 'gatehouse' | 'id'>
  | Omit<LimitRequest, 'gatehouse' | 'id'>
  | Omit<ChargeRequest, 'gatehouse' | 'id'>;

/** A worker's state store: the primary's memory store, reached over IPC. */
export class IpcStore implements StateStore {
  /** What `state.store` says: the data lives in (the primary's) memory, gone when the instance stops. */
  readonly kind = 'memory' as const;
  /**
   * Revocations of the other workers, relayed by the primary; trusted while the channel is open (an
   * IPC channel loses no message), so a closed channel stops the caches.
   */
  readonly revocations: RevocationFeed;
  readonly #channel: IpcChannel;
  readonly #timeoutMs: number;
  readonly #waiting = new ReplyTable();
  #closed = false;
  #disconnected = false;

  readonly #onMessage = (message: unknown): void => {
    if (isRevokeMessage(message)) {
      this.revocations.deliver(message.tags);
      return;
    }
    if (!isStoreReply(message)) return;
    if (message.ok) this.#waiting.settle(message.id, PRIMARY, undefined, message.value);
    else this.#waiting.settle(message.id, PRIMARY, replyError(message));
  };

  readonly #onDisconnect = (): void => {
    this.#disconnected = true;
    this.revocations.reset(false);
    this.#waiting.fail(
      PRIMARY,
      () => new StateStoreError('the cluster primary is gone (IPC channel closed)'),
    );
  };

  constructor(channel: IpcChannel = process, options: IpcStoreOptions = {}) {
    this.#channel = channel;
    this.#timeoutMs = options.timeoutMs ?? STORE_CALL_TIMEOUT_MS;
    this.revocations = new RevocationFeed(channel.connected, (tags) => this.#sendRevocations(tags));
    channel.on('message', this.#onMessage);
    channel.on('disconnect', this.#onDisconnect);
  }

  /** False once the channel to the primary closed (or the store was closed): calls fail at once. */
  get available(): boolean {
    return !this.#closed && !this.#disconnected && this.#channel.connected;
  }

  /** Calls still waiting for the primary's answer. */
  get pending(): number {
    return this.#waiting.size;
  }

  async get(key: string): Promise<string | undefined> {
    checkKeyAndTtl(key);
    return (await this.#call({ op: 'get', key })) as string | undefined;
  }

  async set(key: string, value: string, ttlMs?: number): Promise<void> {
    checkKeyAndTtl(key, ttlMs);
    await this.#call({ op: 'set', key, value: String(value), ttlMs });
  }

  async add(key: string, value: string, ttlMs?: number): Promise<boolean> {
    checkKeyAndTtl(key, ttlMs);
    return (await this.#call({ op: 'add', key, value: String(value), ttlMs })) === true;
  }

  async take(key: string): Promise<string | undefined> {
    checkKeyAndTtl(key);
    return (await this.#call({ op: 'take', key })) as string | undefined;
  }

  async delete(key: string): Promise<void> {
    checkKeyAndTtl(key);
    await this.#call({ op: 'delete', key });
  }

  async incr(key: string, by = 1, ttlMs?: number): Promise<number> {
    checkKeyAndTtl(key, ttlMs);
    if (!Number.isSafeInteger(by)) throw new TypeError(`incr step must be an integer, got ${by}`);
    return (await this.#call({ op: 'incr', key, by, ttlMs })) as number;
  }

  async setAdd(key: string, member: string, ttlMs?: number): Promise<void> {
    checkKeyAndTtl(key, ttlMs);
    await this.#call({ op: 'setAdd', key, value: String(member), ttlMs });
  }

  async setRemove(key: string, member: string): Promise<void> {
    checkKeyAndTtl(key);
    await this.#call({ op: 'setRemove', key, value: String(member) });
  }

  async setMembers(key: string): Promise<string[]> {
    checkKeyAndTtl(key);
    return (await this.#call({ op: 'setMembers', key })) as string[];
  }

  async limit(rate: RateCheck | undefined, quotas: readonly QuotaCheck[]): Promise<LimitResult> {
    checkLimit(rate, quotas);
    const call: Omit<LimitRequest, 'gatehouse' | 'id'> = { op: 'limit', until: Date.now() + this.#timeoutMs };
    if (rate !== undefined) call.rate = [rate.key, rate.intervalMs, rate.burst, rate.maxWaitMs];
    if (quotas.length > 0) {
      const flat: Array<string | number> = [];
      for (const q of quotas) flat.push(q.key, q.limit, q.cost, q.ttlMs);
      call.quotas = flat;
    }
    const r = await this.#call(call);
    if (!Array.isArray(r) || r.length !== 4 + quotas.length || !r.every((n) => typeof n === 'number')) {
      throw new StateStoreError('the cluster primary answered limit with something else than its result');
    }
    const n = r as number[];
    return { refusedBy: n[0]!, waitMs: n[1]!, remaining: n[2]!, resetMs: n[3]!, used: n.slice(4) };
  }

  async charge(key: string, amount: number, ttlMs: number): Promise<number> {
    checkKeyAndTtl(key, ttlMs);
    if (!Number.isFinite(amount)) throw new TypeError(`charge must be a finite number, got ${amount}`);
    return (await this.#call({ op: 'charge', key, by: amount, ttlMs })) as number;
  }

  /** Stops listening and fails the calls still waiting; the primary's store itself stays open. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#channel.off('message', this.#onMessage);
    this.#channel.off('disconnect', this.#onDisconnect);
    this.revocations.reset(false);
    this.#waiting.fail(PRIMARY, () => new StateStoreError('state store is closed'));
  }

  /** Hands revocations to the primary, which relays them to the other workers. */
  async #sendRevocations(tags: readonly string[]): Promise<void> {
    const channel = this.#channel;
    if (this.#closed || this.#disconnected || !channel.connected || channel.send === undefined) {
      throw new StateStoreError('the cluster primary is not reachable (IPC channel closed)');
    }
    for (let i = 0; i < tags.length; i += MAX_REVOKE_TAGS) {
      const message: RevokeMessage = { gatehouse: 'revoke', tags: tags.slice(i, i + MAX_REVOKE_TAGS) };
      await new Promise<void>((resolve, reject) => {
        channel.send?.(message, undefined, {}, (err) =>
          err
            ? reject(new StateStoreError(`the cluster primary is not reachable: ${err.message}`, err))
            : resolve(),
        );
      });
    }
  }

  #call(call: Call): Promise<unknown> {
    if (this.#closed) return Promise.reject(new StateStoreError('state store is closed'));
    const channel = this.#channel;
    if (this.#disconnected || !channel.connected || channel.send === undefined) {
      return Promise.reject(new StateStoreError('the cluster primary is not reachable (IPC channel closed)'));
    }
    const timedOut = (): Error =>
      new StateStoreError(`the cluster primary did not answer ${call.op} within ${this.#timeoutMs} ms`);
    return this.#waiting.wait(PRIMARY, this.#timeoutMs, timedOut, (id) => {
      const message = { gatehouse: 'store', id, ...call } as WireRequest;
      channel.send?.(message, undefined, {}, (err) => {
        if (err) {
          const failed = new StateStoreError(`the cluster primary is not reachable: ${err.message}`, err);
          this.#waiting.settle(id, PRIMARY, failed);
        }
      });
    });
  }
}

/** The worker-side error for an error reply: a TypeError for a request the primary could not run. */
function replyError(reply: Extract<StoreReply, { ok: false }>): Error {
  const message = String(reply.error);
  return reply.badRequest ? new TypeError(message) : new StateStoreError(message);
}

/** The primary's end of a worker's channel: a cluster `Worker` (a `ChildProcess` in the tests). */
export interface StorePeer {
  send(message: WireReply, sendHandle: undefined, callback: (err: Error | null) => void): boolean;
}

const OPS: ReadonlySet<string> = new Set([...STORE_OPS, 'limit', 'charge']);

/**
 * Runs a worker's store request on the primary's `store` and builds the reply. Never rejects: an
 * unknown operation, a bad argument or a failing store becomes an error reply, never a crash of the
 * primary. The request came over IPC, so every field is checked before use.
 */
export async function answerStoreRequest(store: StateStore, request: WireRequest): Promise<WireReply> {
  const id = request.id;
  try {
    const value = await run(store, request);
    return value === undefined
      ? { gatehouse: 'store-reply', id, ok: true }
      : { gatehouse: 'store-reply', id, ok: true, value };
  } catch (err) {
    return {
      gatehouse: 'store-reply',
      id,
      ok: false,
      error: err instanceof Error ? err.message : String(err),
      badRequest: err instanceof TypeError,
    };
  }
}

/**
 * Answers a worker's store request over its channel. A reply to a worker that went away meanwhile is
 * dropped: the worker's calls failed when its channel closed.
 */
export async function serveStoreRequest(
  peer: StorePeer,
  store: StateStore,
  request: WireRequest,
): Promise<void> {
  const reply = await answerStoreRequest(store, request);
  await new Promise<void>((resolve) => {
    try {
      peer.send(reply, undefined, () => resolve());
    } catch {
      resolve();
    }
  });
}

async function run(store: StateStore, r: WireRequest): Promise<StoreValue | number[] | undefined> {
  const op: unknown = r.op;
  if (typeof op !== 'string' || !OPS.has(op)) {
    throw new TypeError(`unknown state store operation ${JSON.stringify(op) ?? String(op)}`);
  }
  if (r.op === 'limit') {
    const until = optionalNumber(r.until, 'until');
    // The worker has given up on this call: counting it now would count a request answered without it.
    if (until !== undefined && Date.now() > until) {
      throw new StateStoreError(
        'state store limit: the worker stopped waiting before the primary came to it',
      );
    }
    const { refusedBy, waitMs, remaining, resetMs, used } = await store.limit(...limitArgs(r));
    return [refusedBy, waitMs, remaining, resetMs, ...used];
  }
  const ttlMs = optionalNumber(r.ttlMs, 'ttlMs');
  checkKeyAndTtl(r.key, ttlMs);
  const key = r.key;
  switch (r.op as StoreOp | 'charge') {
    case 'get':
      return await store.get(key);
    case 'set':
      await store.set(key, text(r.value), ttlMs);
      return undefined;
    case 'add':
      return await store.add(key, text(r.value), ttlMs);
    case 'take':
      return await store.take(key);
    case 'delete':
      await store.delete(key);
      return undefined;
    case 'incr':
      return await store.incr(key, optionalNumber(r.by, 'by'), ttlMs);
    case 'setAdd':
      await store.setAdd(key, text(r.value), ttlMs);
      return undefined;
    case 'setRemove':
      await store.setRemove(key, text(r.value));
      return undefined;
    case 'setMembers':
      return await store.setMembers(key);
    case 'charge':
      if (ttlMs === undefined) throw new TypeError('state store charge needs ttlMs');
      return await store.charge(key, optionalNumber(r.by, 'by') ?? Number.NaN, ttlMs);
  }
}

/** The rate and quotas of a `limit` request, every field checked (it came over IPC). */
function limitArgs(r: LimitRequest): [RateCheck | undefined, QuotaCheck[]] {
  const { rate: a, quotas: flat = [] } = r as { rate?: unknown; quotas?: unknown };
  if (a !== undefined && !(Array.isArray(a) && a.length === 4)) {
    throw new TypeError('state store limit: rate must be [key, intervalMs, burst, maxWaitMs]');
  }
  if (!(Array.isArray(flat) && flat.length % 4 === 0)) {
    throw new TypeError('state store limit: quotas must be key, limit, cost, ttlMs for each quota');
  }
  const rate: RateCheck | undefined =
    a === undefined ? undefined : { key: a[0], intervalMs: a[1], burst: a[2], maxWaitMs: a[3] };
  const quotas: QuotaCheck[] = [];
  for (let i = 0; i < flat.length; i += 4) {
    quotas.push({ key: flat[i], limit: flat[i + 1], cost: flat[i + 2], ttlMs: flat[i + 3] });
  }
  // Checks the types too: a key must be a string, every number a finite number.
  checkLimit(rate, quotas);
  return [rate, quotas];
}

function text(value: unknown): string {
  if (typeof value !== 'string') throw new TypeError('state store value must be a string');
  return value;
}

function optionalNumber(value: unknown, name: string): number | undefined {
  if (value !== undefined && typeof value !== 'number') {
    throw new TypeError(`state store ${name} must be a number`);
  }
  return value;
}

/**
 * The state store's wire protocol between a cluster worker and its primary (see `state/ipc.ts`): the
 * store calls and their replies, session revocations, and the request/reply table both ends use. Every
 * message carries a `gatehouse` tag so that messages of other libraries on the same channel are
 * ignored. The process layer (`process/ipc.ts`) carries these next to its own messages.
 */

/** The state store operations a worker runs on the primary's store (`close` stays the worker's own). */
export const STORE_OPS = [
  'get',
  'set',
  'add',
  'take',
  'delete',
  'incr',
  'setAdd',
  'setRemove',
  'setMembers',
] as const;

/** One of `STORE_OPS`. */
export type StoreOp = (typeof STORE_OPS)[number];

/** A worker's call of a `StateStore` method on the primary's store; fields as the method's arguments. */
export interface StoreRequest {
  gatehouse: 'store';
  id: number;
  op: StoreOp;
  key: string;
  /** The value (`set`, `add`) or the member (`setAdd`, `setRemove`). */
  value?: string;
  /** The step of `incr`. */
  by?: number;
  ttlMs?: number;
}

/** What a store operation returns over the channel (`undefined` travels as an absent `value`). */
export type StoreValue = string | number | boolean | string[];

/**
 * The primary's answer to a `StoreRequest`. `badRequest` marks a request the primary could not run as
 * sent (unknown operation, bad argument: a TypeError in the worker), apart from a store failure.
 */
export type StoreReply =
  | { gatehouse: 'store-reply'; id: number; ok: true; value?: StoreValue }
  | { gatehouse: 'store-reply'; id: number; ok: false; error: string; badRequest: boolean };

/**
 * Session revocations (tags, see `state/revocations.ts`): a worker sends the ones it made, and the
 * primary relays them to every other worker, so no worker's session cache outlives a logout.
 */
export interface RevokeMessage {
  gatehouse: 'revoke';
  tags: string[];
}

/** Most tags in one revocation message (a logout everywhere of a user with many sessions is split). */
export const MAX_REVOKE_TAGS = 1000;

/** True for a well-formed revocation message (checked on both ends: it came over IPC). */
export function isRevokeMessage(message: unknown): message is RevokeMessage {
  if (!tagged(message) || message.gatehouse !== 'revoke') return false;
  const tags = (message as { tags?: unknown }).tags;
  return (
    Array.isArray(tags) &&
    tags.length <= MAX_REVOKE_TAGS &&
    tags.every((t) => typeof t === 'string' && t.length > 0 && t.length <= 128)
  );
}

/** True for an object with a `gatehouse` tag (a message of this project). */
export function tagged(message: unknown): message is { gatehouse: unknown } {
  return typeof message === 'object' && message !== null && 'gatehouse' in message;
}

/** True for the primary's answer to a state store call (checked by the worker's `IpcStore`). */
export function isStoreReply(message: unknown): message is StoreReply {
  return tagged(message) && message.gatehouse === 'store-reply';
}

// Unique in the process, so two tables listening on one channel never settle each other's requests.
let nextRequestId = 1;

interface Waiter {
  peer: number;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/**
 * Requests sent over an IPC channel and waiting for their reply. Each ends exactly once: with the
 * reply, at its timeout, or when its peer goes away, so that nothing waits on a dead process. The
 * primary uses one for its requests to workers, a worker's `IpcStore` one for its store calls.
 */
export class ReplyTable {
  readonly #waiting = new Map<number, Waiter>();

  /** Requests still waiting. */
  get size(): number {
    return this.#waiting.size;
  }

  /**
   * Registers a request to `peer` and calls `send(id)` to transmit it; resolves with the reply's value,
   * rejects with `timedOut()` after `timeoutMs`. `send` may settle the request at once (a failed send);
   * a throwing `send` rejects it with that error.
   */
  wait(peer: number, timeoutMs: number, timedOut: () => Error, send: (id: number) => void): Promise<unknown> {
    const id = nextRequestId++;
    return new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(id);
        reject(timedOut());
      }, timeoutMs);
      this.#waiting.set(id, { peer, resolve, reject, timer });
      try {
        send(id);
      } catch (err) {
        this.settle(id, peer, err instanceof Error ? err : new Error(String(err)));
      }
    });
  }

  /**
   * Ends request `id` with `err`, else with `value`. Ignored when it already ended, and when `peer` is
   * not the one asked: a reply from another process than the one asked must not answer for it.
   */
  settle(id: number, peer: number, err: Error | undefined, value?: unknown): void {
    const waiter = this.#waiting.get(id);
    if (waiter === undefined || waiter.peer !== peer) return;
    this.#waiting.delete(id);
    clearTimeout(waiter.timer);
    if (err) waiter.reject(err);
    else waiter.resolve(value);
  }

  /** Fails every request still waiting on `peer`, each with its own `error()`. */
  fail(peer: number, error: () => Error): void {
    for (const [id, waiter] of this.#waiting) if (waiter.peer === peer) this.settle(id, peer, error());
  }
}

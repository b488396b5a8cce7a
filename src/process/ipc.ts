/**
 * The messages a cluster primary and its workers exchange over the IPC channel, and the request/reply
 * bookkeeping of both directions: the primary asking workers (reload, status, metrics) and a worker
 * calling the primary's state store (`state.store: memory`, see `state/ipc.ts`) or sending session
 * revocations for the primary to relay to the other workers. Every message carries a `gatehouse` tag
 * so that messages of other libraries on the same channel are ignored.
 */
import type { Worker } from 'node:cluster';
import type { MetricObjectWithValues, MetricValue } from 'prom-client';
import type { ReloadResult, StatusReport } from '../admin/server.js';
import type { ConfigProblem } from '../errors.js';

/** Texts of the config file and its includes by absolute path, as the primary validated them. */
export type ConfigSources = Readonly<Record<string, string>>;

/** What the primary can ask a worker, and what the worker answers. */
export interface WorkerReplies {
  /** Load the configuration from the sources sent along and swap it in (`Gateway.reload`). */
  reload: ReloadResult;
  /** The worker's status report plus the number of requests it answered. */
  status: StatusReport & { requests: number };
  /** The worker's metrics as `registry.getMetricsAsJSON()`, to be aggregated by the primary. */
  metrics: Array<MetricObjectWithValues<MetricValue<string>>>;
}

/** The kind of a request to a worker. */
export type RequestKind = keyof WorkerReplies;

/** Messages from the primary to a worker. */
export type PrimaryMessage =
  /** Answer to `hello`: the configuration to start with. */
  | { gatehouse: 'config'; sources: ConfigSources }
  | { gatehouse: 'request'; id: number; kind: RequestKind; sources?: ConfigSources }
  /** Stop accepting, drain (`server.drainTimeout`), exit 0. */
  | { gatehouse: 'shutdown' }
  | StoreReply
  | RevokeMessage;

/** A listener's bound address as a worker reports it (`host:port`). */
export interface ListenerAddress {
  name: string;
  address: string | undefined;
}

/** Messages from a worker to the primary. */
export type WorkerMessage =
  /** The worker listens for messages and asks for the configuration to start with. */
  | { gatehouse: 'hello' }
  /** The worker's listeners are bound and it serves. */
  | { gatehouse: 'ready'; listeners: ListenerAddress[] }
  /** The worker could not start; it exits right after. */
  | { gatehouse: 'failed'; message: string; problems?: ConfigProblem[] }
  | { gatehouse: 'reply'; id: number; ok: true; value: unknown }
  | { gatehouse: 'reply'; id: number; ok: false; error: string }
  | StoreRequest
  | RevokeMessage;

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

function tagged(message: unknown): message is { gatehouse: unknown } {
  return typeof message === 'object' && message !== null && 'gatehouse' in message;
}

/** True for a message the primary sent (checked in the worker). */
export function isPrimaryMessage(message: unknown): message is PrimaryMessage {
  return (
    tagged(message) &&
    (message.gatehouse === 'config' ||
      message.gatehouse === 'request' ||
      message.gatehouse === 'shutdown' ||
      message.gatehouse === 'store-reply' ||
      message.gatehouse === 'revoke')
  );
}

/** True for the primary's answer to a state store call (checked by the worker's `IpcStore`). */
export function isStoreReply(message: unknown): message is StoreReply {
  return tagged(message) && message.gatehouse === 'store-reply';
}

/** True for a message a worker sent (checked in the primary). */
export function isWorkerMessage(message: unknown): message is WorkerMessage {
  return (
    tagged(message) &&
    (message.gatehouse === 'hello' ||
      message.gatehouse === 'ready' ||
      message.gatehouse === 'failed' ||
      message.gatehouse === 'reply' ||
      message.gatehouse === 'store' ||
      message.gatehouse === 'revoke')
  );
}

/** Error of a request a worker did not answer (timeout, exit) or answered with an error. */
export class WorkerRequestError extends Error {
  readonly code: 'GH_WORKER_TIMEOUT' | 'GH_WORKER_GONE' | 'GH_WORKER_ERROR';
  constructor(code: WorkerRequestError['code'], message: string) {
    super(message);
    this.name = 'WorkerRequestError';
    this.code = code;
  }
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

/**
 * The primary's outstanding requests to workers. Each request ends exactly once: with the worker's
 * reply, at its timeout, or when the worker exits, so that no admin request waits on a dead worker.
 */
export class PendingRequests {
  readonly #table = new ReplyTable();

  /** Sends a request to a worker; rejects with a WorkerRequestError after `timeoutMs`. */
  request<K extends RequestKind>(
    worker: Worker,
    kind: K,
    timeoutMs: number,
    sources?: ConfigSources,
  ): Promise<WorkerReplies[K]> {
    if (!worker.isConnected()) {
      return Promise.reject(new WorkerRequestError('GH_WORKER_GONE', `worker ${worker.id} is not connected`));
    }
    const timedOut = (): Error =>
      new WorkerRequestError('GH_WORKER_TIMEOUT', `worker ${worker.id} did not answer ${kind}`);
    return this.#table.wait(worker.id, timeoutMs, timedOut, (id) => {
      const message: PrimaryMessage =
        sources === undefined
          ? { gatehouse: 'request', id, kind }
          : { gatehouse: 'request', id, kind, sources };
      worker.send(message, undefined, (err) => {
        if (err) this.#table.settle(id, worker.id, new WorkerRequestError('GH_WORKER_GONE', err.message));
      });
    }) as Promise<WorkerReplies[K]>;
  }

  /** Hands a worker's reply to the request waiting for it. */
  reply(workerId: number, message: Extract<WorkerMessage, { gatehouse: 'reply' }>): void {
    if (message.ok) this.#table.settle(message.id, workerId, undefined, message.value);
    else this.#table.settle(message.id, workerId, new WorkerRequestError('GH_WORKER_ERROR', message.error));
  }

  /** Fails every request still waiting on a worker that exited. */
  workerGone(workerId: number): void {
    this.#table.fail(workerId, () => new WorkerRequestError('GH_WORKER_GONE', `worker ${workerId} exited`));
  }
}

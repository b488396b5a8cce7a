/**
 * The messages a cluster primary and its workers exchange over the IPC channel, and the primary's
 * request/reply bookkeeping. Every message carries a `gatehouse` tag so that messages of other
 * libraries on the same channel are ignored.
 */
import type { Worker } from 'node:cluster';
import type { MetricObjectWithValues, MetricValue } from 'prom-client';
import type { ReloadResult, StatusReport } from './admin/server.js';
import type { ConfigProblem } from './errors.js';

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
  | { gatehouse: 'shutdown' };

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
  | { gatehouse: 'reply'; id: number; ok: false; error: string };

function tagged(message: unknown): message is { gatehouse: unknown } {
  return typeof message === 'object' && message !== null && 'gatehouse' in message;
}

/** True for a message the primary sent (checked in the worker). */
export function isPrimaryMessage(message: unknown): message is PrimaryMessage {
  return (
    tagged(message) &&
    (message.gatehouse === 'config' || message.gatehouse === 'request' || message.gatehouse === 'shutdown')
  );
}

/** True for a message a worker sent (checked in the primary). */
export function isWorkerMessage(message: unknown): message is WorkerMessage {
  return (
    tagged(message) &&
    (message.gatehouse === 'hello' ||
      message.gatehouse === 'ready' ||
      message.gatehouse === 'failed' ||
      message.gatehouse === 'reply')
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

interface Pending {
  workerId: number;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/**
 * The primary's outstanding requests to workers. Each request ends exactly once: with the worker's
 * reply, at its timeout, or when the worker exits, so that no admin request waits on a dead worker.
 */
export class PendingRequests {
  #next = 1;
  readonly #pending = new Map<number, Pending>();

  /** Sends a request to a worker; rejects with a WorkerRequestError after `timeoutMs`. */
  request<K extends RequestKind>(
    worker: Worker,
    kind: K,
    timeoutMs: number,
    sources?: ConfigSources,
  ): Promise<WorkerReplies[K]> {
    const id = this.#next++;
    return new Promise<WorkerReplies[K]>((resolve, reject) => {
      if (!worker.isConnected()) {
        reject(new WorkerRequestError('GH_WORKER_GONE', `worker ${worker.id} is not connected`));
        return;
      }
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new WorkerRequestError('GH_WORKER_TIMEOUT', `worker ${worker.id} did not answer ${kind}`));
      }, timeoutMs);
      this.#pending.set(id, {
        workerId: worker.id,
        resolve: resolve as (value: unknown) => void,
        reject,
        timer,
      });
      const message: PrimaryMessage =
        sources === undefined
          ? { gatehouse: 'request', id, kind }
          : { gatehouse: 'request', id, kind, sources };
      worker.send(message, undefined, (err) => {
        if (err) this.#settle(id, new WorkerRequestError('GH_WORKER_GONE', err.message));
      });
    });
  }

  /** Hands a worker's reply to the request waiting for it. */
  reply(workerId: number, message: Extract<WorkerMessage, { gatehouse: 'reply' }>): void {
    const pending = this.#pending.get(message.id);
    // A reply from another worker than the one asked would be a bug; it must not answer for it.
    if (pending === undefined || pending.workerId !== workerId) return;
    if (message.ok) this.#settle(message.id, undefined, message.value);
    else this.#settle(message.id, new WorkerRequestError('GH_WORKER_ERROR', message.error));
  }

  /** Fails every request still waiting on a worker that exited. */
  workerGone(workerId: number): void {
    for (const [id, pending] of this.#pending) {
      if (pending.workerId === workerId)
        this.#settle(id, new WorkerRequestError('GH_WORKER_GONE', `worker ${workerId} exited`));
    }
  }

  #settle(id: number, err: Error | undefined, value?: unknown): void {
    const pending = this.#pending.get(id);
    if (pending === undefined) return;
    this.#pending.delete(id);
    clearTimeout(pending.timer);
    if (err) pending.reject(err);
    else pending.resolve(value);
  }
}

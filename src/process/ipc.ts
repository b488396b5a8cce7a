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
import type { SessionSummary } from '../identity/session.js';
import type { AuditRecord } from '../observe/audit-bus.js';
import type { LiveSnapshot } from '../observe/live-stats.js';
import { ReplyTable, type RevokeMessage, type StoreReply, type StoreRequest, tagged } from '../state/wire.js';

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
  /** The worker's live traffic figures, which the primary adds up for the dashboard. */
  live: LiveSnapshot;
  /** The live sign-in sessions (`arg`: at most how many), or null when no sign-in is configured. */
  sessions: { sessions: SessionSummary[]; total: number } | null;
  /** Ends the session with the handle `arg` on every process; what it was, or null when none has it. */
  'revoke-session': SessionSummary | null;
}

/** The kind of a request to a worker. */
export type RequestKind = keyof WorkerReplies;

/** Messages from the primary to a worker. */
export type PrimaryMessage =
  /** Answer to `hello`: the configuration to start with. */
  | { gatehouse: 'config'; sources: ConfigSources }
  | { gatehouse: 'request'; id: number; kind: RequestKind; sources?: ConfigSources; arg?: string | number }
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
  /** Audit events of one event-loop turn, for the primary's trail (it owns the one file). */
  | { gatehouse: 'audit'; records: AuditRecord[] }
  | StoreRequest
  | RevokeMessage;

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

/** True for a message a worker sent (checked in the primary). */
export function isWorkerMessage(message: unknown): message is WorkerMessage {
  return (
    tagged(message) &&
    (message.gatehouse === 'hello' ||
      message.gatehouse === 'ready' ||
      message.gatehouse === 'failed' ||
      message.gatehouse === 'reply' ||
      message.gatehouse === 'store' ||
      message.gatehouse === 'audit' ||
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
    arg?: string | number,
  ): Promise<WorkerReplies[K]> {
    if (!worker.isConnected()) {
      return Promise.reject(new WorkerRequestError('GH_WORKER_GONE', `worker ${worker.id} is not connected`));
    }
    const timedOut = (): Error =>
      new WorkerRequestError('GH_WORKER_TIMEOUT', `worker ${worker.id} did not answer ${kind}`);
    return this.#table.wait(worker.id, timeoutMs, timedOut, (id) => {
      const message: PrimaryMessage = { gatehouse: 'request', id, kind };
      if (sources !== undefined) message.sources = sources;
      if (arg !== undefined) message.arg = arg;
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

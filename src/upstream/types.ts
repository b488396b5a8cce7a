/**
 * The contract between the data planes and the upstream pools. The proxy asks an `Upstream` for a
 * `Lease` on one server, forwards through that server's undici dispatcher, and releases the lease with
 * the outcome, which feeds passive health, least-conn counters and the retry budget.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Dispatcher } from 'undici';
import type { UpstreamConfig } from '../config/schema.js';

/** What selection may look at: the client address and the request headers (cookies, hash header). */
export interface SelectInput {
  clientIp: string;
  headers: IncomingHttpHeaders;
}

/** Health as shown in status and metrics. */
export type ServerHealth = 'up' | 'down' | 'ejected' | 'unknown';

/** One concrete endpoint (a server URL, or one of the addresses its host name resolves to). */
export interface UpstreamServer {
  /** Stable across reloads and restarts; used as the sticky-cookie value and metric label. */
  readonly id: string;
  /** The configured server URL, e.g. `http://airbyte-1:9001`. */
  readonly url: string;
  /** The origin undici connects to (`http://10.0.0.5:9001`), possibly a resolved address. */
  readonly origin: string;
  /** Host header value when the route does not preserve the client's Host (`airbyte-1:9001`). */
  readonly hostHeader: string;
  readonly weight: number;
  readonly backup: boolean;
  /** The keep-alive connection pool to this endpoint. */
  readonly dispatcher: Dispatcher;
  /** Requests in flight on this endpoint right now. */
  readonly active: number;
  readonly health: ServerHealth;
}

/** How a forwarded attempt ended, as far as server health is concerned. */
export type Outcome =
  | 'success' // any response from the server other than a 5xx listed as failure
  | 'http-5xx' // the server answered with 502, 503 or 504
  | 'connect-error' // refused, reset before the response, TLS failure, DNS failure
  | 'timeout' // connect or response-header timeout
  | 'client-abort'; // the client went away: says nothing about the server

/** A reserved slot on one server. `release` must be called exactly once. */
export interface Lease {
  readonly server: UpstreamServer;
  /** A `Set-Cookie` header value when stickiness is on and the client's cookie must be (re)issued. */
  readonly setCookie: string | undefined;
  release(outcome: Outcome): void;
}

/** Limits how many retries an upstream may send relative to its recent traffic. */
export interface RetryBudget {
  /** True when one more retry may be sent now (and counts it). */
  tryAcquire(): boolean;
}

/** A point-in-time view for `/api/v1/status` and metrics. */
export interface UpstreamStatus {
  name: string;
  balance: string;
  queued: number;
  servers: Array<{
    id: string;
    url: string;
    origin: string;
    weight: number;
    backup: boolean;
    health: ServerHealth;
    active: number;
    /** Effective weight factor during slow start, 0..1. */
    slowStartFactor: number;
    lastCheck?: { at: string; ok: boolean; status?: number; error?: string };
  }>;
}

/** A named group of servers with balancing, health, queueing and credentials. */
export interface Upstream {
  readonly name: string;
  readonly config: UpstreamConfig;
  /**
   * Picks a server (stickiness first, then the balancing policy, backups only when no primary is
   * available, and when nothing is, the ejected servers that active checks do not find down), skipping
   * servers in `exclude`, and reserves a slot on it. When every candidate is at
   * `maxConnections` the caller waits in a bounded queue. Synchronous when a slot is free.
   * Throws/rejects with NoServerAvailableError or QueueTimeoutError (both 503).
   */
  acquire(input: SelectInput, exclude?: ReadonlySet<string>): Lease | Promise<Lease>;
  /** Headers to set on every forwarded request, with secret references already expanded. */
  readonly injectHeaders: ReadonlyArray<readonly [name: string, value: string]>;
  readonly retryBudget: RetryBudget;
  status(): UpstreamStatus;
  /** Starts health checks and DNS refresh. */
  start(): void;
  /** Stops timers and closes the connection pools once their in-flight requests finished. */
  close(): Promise<void>;
}

/** Secret and file access given to upstream construction (inject headers, TLS material). */
export interface UpstreamBuildContext {
  /** Expands `${env:NAME}` / `${file:PATH}` inside a string, and resolves a whole `env:`/`file:` ref. */
  expand(text: string): string;
  resolveSecret(ref: string): string;
}

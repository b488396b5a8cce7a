/**
 * The runtime form of a configuration: everything the hot path needs, built once per (re)load and
 * swapped atomically. A request keeps the runtime it started with until it ends.
 */
import type { SecureContext } from 'node:tls';
import type { Config } from './config/schema.js';
import type { RouteTable } from './core/types.js';
import type { IdentityRuntime } from './identity/index.js';
import type { Limiter } from './limits/stage.js';
import type { Tracing } from './observe/tracing.js';
import type { PolicySet } from './policy/types.js';
import type { StateStore } from './state/types.js';
import type { Upstream } from './upstream/types.js';

/** TLS material of one HTTPS listener, with the certificate to use for each SNI name. */
export interface ListenerTlsRuntime {
  /** Picks the context for an SNI server name; falls back to the first certificate. */
  contextFor(serverName: string | undefined): SecureContext;
  /** Options for `tls.createServer`/`http2.createSecureServer` built from the first certificate. */
  readonly defaultOptions: {
    cert: string;
    key: string;
    minVersion: string;
    maxVersion?: string;
    ciphers?: string;
  };
}

/**
 * Requests and WebSocket tunnels that started on a runtime and have not ended. A reload closes the
 * upstream pools it retired only once no request of an older runtime can still pick one.
 */
export interface InFlight {
  count: number;
}

/** Everything one configuration needs at run time; see the module comment. */
export interface Runtime {
  readonly generation: number;
  readonly file: string;
  readonly config: Config;
  readonly routes: RouteTable;
  /** Every policy, compiled with the routes and swapped together with them. */
  readonly policies: PolicySet;
  /** Authenticators, login service and assertion signer of this configuration. */
  readonly identity: IdentityRuntime;
  /**
   * The process's state store (sessions, login state, assertion keys): kept across reloads and
   * replaced only when `state.store` changes.
   */
  readonly store: StateStore;
  /** The limit stage: this configuration's rate limits and quotas, counted in `store`. */
  readonly limits: Limiter;
  readonly upstreams: ReadonlyMap<string, Upstream>;
  /** Per HTTPS listener name. */
  readonly tls: ReadonlyMap<string, ListenerTlsRuntime>;
  /** Files whose change triggers a reload (config, includes, file: secrets, certificates). */
  readonly watchedFiles: readonly string[];
  /** Counted by the data plane from a request's start to its end. */
  readonly inFlight: InFlight;
  /**
   * The tracer of `tracing` (undefined: tracing off). Kept across reloads that leave the settings as
   * they are; a changed one is built anew and the old one flushed and shut down once no request uses it.
   */
  readonly tracing?: Tracing | undefined;
}

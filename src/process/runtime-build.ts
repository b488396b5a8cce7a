/**
 * Builds the runtime form of a loaded configuration: the compiled route table and policies, the
 * identity runtime (authenticators, login service, assertion signer), the upstream pools (reusing
 * unchanged ones from the running runtime) and the TLS material of every HTTPS listener. Nothing is
 * swapped here: the caller swaps only after the whole build succeeded.
 */
import type { LoadedConfig } from '../config/load.js';
import { type CompiledConfig, compileConfig, compileProblems } from '../core/compile.js';
import { ConfigError, GatehouseError } from '../errors.js';
import { buildIdentity } from '../identity/index.js';
import { Limiter } from '../limits/stage.js';
import type { Logger } from '../observe/log.js';
import type { Tracing } from '../observe/tracing.js';
import { buildListenerTls } from '../proxy/listeners.js';
import type { ListenerTlsRuntime, Runtime } from '../runtime.js';
import { createStateStore } from '../state/index.js';
import { type StateStore, StateStoreError } from '../state/types.js';
import { reconcileUpstreams } from '../upstream/index.js';
import type { Upstream } from '../upstream/types.js';

export type { LoadedConfig };

/** A runtime ready to swap in, and the upstreams of the previous runtime it no longer uses. */
export interface BuiltRuntime {
  runtime: Runtime;
  /** Previous upstreams to `close()` once the new runtime is in use. */
  retired: Upstream[];
  /** Upstreams created by this build (to `start()` after the swap, or `close()` if the swap is abandoned). */
  created: Upstream[];
  /** The state store this build created (`state.store` changed): to close if the swap is abandoned. */
  createdStore?: StateStore | undefined;
  /** The previous runtime's store, replaced by `createdStore`: to close once the new runtime is in use. */
  retiredStore?: StateStore | undefined;
  /**
   * The previous runtime's tracer, replaced or turned off: to shut down (`retireTracing`) once the new
   * runtime is in use. A tracer built here and abandoned needs no closing: it holds nothing until a
   * span ends on it.
   */
  retiredTracing?: Tracing | undefined;
}

/** Creates the state store for a `state.store` setting (see `createStateStore`). */
export type StateStoreFactory = (url: string, logger: Logger) => StateStore;

/** Options of `buildRuntime`. */
export interface BuildOptions {
  /** Clock for the identity modules (ms since the epoch); tests freeze it. */
  now?: () => number;
  /**
   * Creates the store when `state.store` is new or changed (default `createStateStore`). A cluster
   * worker passes one that reaches the primary's memory store over IPC.
   */
  createStore?: StateStoreFactory;
}

/**
 * Builds a runtime from a loaded configuration. Steps with side effects come last, so a failure leaves
 * the running runtime untouched; upstreams and a state store created before a failure are closed before
 * rethrowing. Policies and identity settings that cannot work are thrown as `ConfigError`, with each
 * problem at its configuration path, so the configuration is rejected like any other invalid one.
 */
export async function buildRuntime(
  loaded: LoadedConfig,
  previous: Runtime | undefined,
  logger: Logger,
  options: BuildOptions = {},
): Promise<BuiltRuntime> {
  const { config, secrets } = loaded;
  let compiled: CompiledConfig;
  try {
    compiled = compileConfig(config);
  } catch (err) {
    throw asConfigError(err, loaded.file);
  }
  const { routes, policies } = compiled;
  const tracing = await buildTracing(loaded, previous?.tracing, logger);
  const tls = new Map<string, ListenerTlsRuntime>();
  for (const listener of config.listeners) {
    if (listener.tls)
      tls.set(
        listener.name,
        buildListenerTls(listener, (ref) => secrets.resolveSecret(ref)),
      );
  }
  // One store per process: kept across reloads, replaced only when its URL changes.
  const keepStore = previous !== undefined && previous.config.state.store === config.state.store;
  const store = keepStore
    ? previous.store
    : (options.createStore ?? createStateStore)(config.state.store, logger);
  const createdStore = keepStore ? undefined : store;
  let identity: Runtime['identity'];
  try {
    identity = await buildIdentity(config, {
      resolveSecret: (ref) => secrets.resolveSecret(ref),
      expand: (text) => secrets.expand(text),
      store,
      logger,
      previous: previous?.identity,
      now: options.now,
    });
  } catch (err) {
    await closeStore(createdStore, logger);
    throw asConfigError(err, loaded.file);
  }
  let reconciled: Awaited<ReturnType<typeof reconcileUpstreams>>;
  try {
    reconciled = await reconcileUpstreams(previous?.upstreams, config.upstreams, secrets, logger);
  } catch (err) {
    await closeStore(createdStore, logger);
    throw err;
  }
  const { upstreams, retired } = reconciled;
  const kept = new Set(previous?.upstreams.values() ?? []);
  const created = [...upstreams.values()].filter((u) => !kept.has(u));
  const runtime: Runtime = {
    generation: (previous?.generation ?? 0) + 1,
    file: loaded.file,
    config,
    routes,
    policies,
    identity,
    store,
    limits: new Limiter(compiled.limits, store, logger),
    upstreams,
    tls,
    watchedFiles: loaded.files,
    inFlight: { count: 0 },
    tracing,
  };
  return {
    runtime,
    retired,
    created,
    createdStore,
    retiredStore: createdStore !== undefined ? previous?.store : undefined,
    retiredTracing: previous?.tracing !== tracing ? previous?.tracing : undefined,
  };
}

/**
 * The tracer for `tracing`: the previous one when its settings (resolved header secrets included) are
 * the same, so a reload that does not touch tracing loses no buffered span; undefined when it is off.
 * The OpenTelemetry SDK is loaded only then: a gateway without tracing never loads it.
 */
async function buildTracing(
  loaded: LoadedConfig,
  previous: Tracing | undefined,
  logger: Logger,
): Promise<Tracing | undefined> {
  const config = loaded.config.tracing;
  if (config === undefined) return undefined;
  const { sameSettings, Tracing, tracingSettings } = await import('../observe/tracing.js');
  const settings = tracingSettings(config, (text) => loaded.secrets.expand(text), loaded.file);
  if (previous !== undefined && sameSettings(previous.settings, settings)) return previous;
  return new Tracing(settings, logger);
}

/**
 * Waits while a runtime in `holders` that `uses` a retired resource still has requests in flight,
 * polling every 100 ms; at most `maxWaitMs`, and no longer once `signal` is aborted.
 */
async function whileHeld(
  uses: (rt: Runtime) => boolean,
  holders: readonly Runtime[],
  maxWaitMs: number,
  signal: AbortSignal | undefined,
): Promise<void> {
  const deadline = Date.now() + maxWaitMs;
  const held = (): boolean => holders.some((rt) => uses(rt) && rt.inFlight.count > 0);
  while (!signal?.aborted && Date.now() < deadline && held()) {
    await new Promise((resolve) => setTimeout(resolve, 100).unref());
  }
}

/**
 * Flushes and shuts down a tracer that a reload replaced, once no request of an older runtime that
 * uses it is still running (`holders`): their spans end when their responses close. Bounded by
 * `maxWaitMs`; `signal` ends the wait at shutdown. Never throws.
 */
export async function retireTracing(
  tracing: Tracing,
  maxWaitMs: number,
  logger: Logger,
  signal?: AbortSignal,
  holders: readonly Runtime[] = [],
): Promise<void> {
  await whileHeld((rt) => rt.tracing === tracing, holders, maxWaitMs, signal);
  await closeTracing(tracing, logger);
}

/** Flushes and shuts down a tracer, logging instead of throwing. */
export async function closeTracing(tracing: Tracing | undefined, logger: Logger): Promise<void> {
  if (tracing === undefined) return;
  try {
    await tracing.shutdown();
  } catch (err) {
    logger.warn({ err }, 'shutting down the tracer failed');
  }
}

/**
 * Turns a build failure caused by the configuration into a `ConfigError`: policy problems at their
 * paths, identity errors at the path their message starts with, an unreachable store at `state.store`.
 * Anything else is rethrown unchanged.
 */
function asConfigError(err: unknown, file: string): unknown {
  const problems = compileProblems(err, file);
  if (problems !== undefined) return new ConfigError(problems);
  if (err instanceof StateStoreError) {
    return new ConfigError([
      { file, path: 'state.store', message: `the state store cannot be used: ${err.message}` },
    ]);
  }
  // Other configuration errors of the identity modules (an unusable provider, a secret that cannot be
  // read) are raised with status 0 and no path.
  if (err instanceof GatehouseError && err.status === 0 && !(err instanceof ConfigError)) {
    return new ConfigError([{ file, path: 'identity', message: err.message }]);
  }
  return err;
}

/** Closes a state store, logging instead of throwing. */
export async function closeStore(store: StateStore | undefined, logger: Logger): Promise<void> {
  if (store === undefined) return;
  try {
    await store.close();
  } catch (err) {
    logger.warn({ err }, 'closing the state store failed');
  }
}

/**
 * Closes a state store that a reload replaced once no request of an older runtime that uses it is still
 * running (`holders`; such a request may be between a session lookup and its refresh), bounded by
 * `maxWaitMs`; `signal` ends the wait at shutdown.
 */
export async function retireStore(
  store: StateStore,
  maxWaitMs: number,
  logger: Logger,
  signal?: AbortSignal,
  holders: readonly Runtime[] = [],
): Promise<void> {
  await whileHeld((rt) => rt.store === store, holders, maxWaitMs, signal);
  await closeStore(store, logger);
}

/** Closes upstreams without letting one failure stop the others. */
export async function closeUpstreams(upstreams: Iterable<Upstream>, logger: Logger): Promise<void> {
  await Promise.all(
    [...upstreams].map((u) =>
      u.close().catch((err: unknown) => logger.warn({ err, upstream: u.name }, 'closing upstream failed')),
    ),
  );
}

function idle(u: Upstream): boolean {
  const s = u.status();
  return s.queued === 0 && s.servers.every((server) => server.active === 0);
}

/**
 * Closes upstreams that a reload retired once no request is queued or in flight on them and no
 * request of an older runtime that lists one of them is still running (`holders`): such a request may
 * not have picked its server yet (it waits for a token's keys, a session, a retry's backoff), and must
 * find its pool open. Bounded by `maxWaitMs`; `signal` ends the wait at shutdown.
 */
export async function retireUpstreams(
  upstreams: readonly Upstream[],
  maxWaitMs: number,
  logger: Logger,
  signal?: AbortSignal,
  holders: readonly Runtime[] = [],
): Promise<void> {
  if (upstreams.length === 0) return;
  const deadline = Date.now() + maxWaitMs;
  const held = (): boolean =>
    holders.some((rt) => rt.inFlight.count > 0 && upstreams.some((u) => rt.upstreams.get(u.name) === u));
  while (!signal?.aborted && Date.now() < deadline && (held() || !upstreams.every(idle))) {
    await new Promise((resolve) => setTimeout(resolve, 100).unref());
  }
  await closeUpstreams(upstreams, logger);
}

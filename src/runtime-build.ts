/**
 * Builds the runtime form of a loaded configuration: the compiled route table, the upstream pools
 * (reusing unchanged ones from the running runtime) and the TLS material of every HTTPS listener.
 * Nothing is swapped here: the caller swaps only after the whole build succeeded.
 */
import type { LoadResult } from './config/load.js';
import { compileRoutes } from './core/routes.js';
import type { Logger } from './observe/log.js';
import { buildListenerTls } from './proxy/listeners.js';
import type { ListenerTlsRuntime, Runtime } from './runtime.js';
import { reconcileUpstreams } from './upstream/index.js';
import type { Upstream } from './upstream/types.js';

/** A successful load. */
export type LoadedConfig = Extract<LoadResult, { ok: true }>;

/** A runtime ready to swap in, and the upstreams of the previous runtime it no longer uses. */
export interface BuiltRuntime {
  runtime: Runtime;
  /** Previous upstreams to `close()` once the new runtime is in use. */
  retired: Upstream[];
  /** Upstreams created by this build (to `start()` after the swap, or `close()` if the swap is abandoned). */
  created: Upstream[];
}

/**
 * Builds a runtime from a loaded configuration. Steps with side effects come last, so a failure leaves
 * the running runtime untouched; upstreams created before a failure are closed before rethrowing.
 */
export async function buildRuntime(
  loaded: LoadedConfig,
  previous: Runtime | undefined,
  logger: Logger,
): Promise<BuiltRuntime> {
  const { config, secrets } = loaded;
  const routes = compileRoutes(config);
  const tls = new Map<string, ListenerTlsRuntime>();
  for (const listener of config.listeners) {
    if (listener.tls)
      tls.set(
        listener.name,
        buildListenerTls(listener, (ref) => secrets.resolveSecret(ref)),
      );
  }
  const { upstreams, retired } = await reconcileUpstreams(
    previous?.upstreams,
    config.upstreams,
    secrets,
    logger,
  );
  const kept = new Set(previous?.upstreams.values() ?? []);
  const created = [...upstreams.values()].filter((u) => !kept.has(u));
  const runtime: Runtime = {
    generation: (previous?.generation ?? 0) + 1,
    file: loaded.file,
    config,
    routes,
    upstreams,
    tls,
    watchedFiles: loaded.files,
  };
  return { runtime, retired, created };
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
 * Closes upstreams that a reload retired, once no request is queued or in flight on them (bounded by
 * `maxWaitMs`). A request that started on the previous runtime may still acquire a lease shortly after
 * the swap, so the pool is not closed under it.
 */
export async function retireUpstreams(
  upstreams: readonly Upstream[],
  maxWaitMs: number,
  logger: Logger,
  signal?: AbortSignal,
): Promise<void> {
  if (upstreams.length === 0) return;
  const deadline = Date.now() + maxWaitMs;
  // One quiet interval first: requests that captured the old runtime get to acquire their lease.
  await new Promise((resolve) => setTimeout(resolve, 100).unref());
  while (!signal?.aborted && Date.now() < deadline && !upstreams.every(idle)) {
    await new Promise((resolve) => setTimeout(resolve, 100).unref());
  }
  await closeUpstreams(upstreams, logger);
}

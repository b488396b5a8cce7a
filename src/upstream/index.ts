/**
 * Building upstreams from configuration, and reusing unchanged ones across reloads so that health,
 * counters and keep-alive pools survive a reload.
 */
import { isDeepStrictEqual } from 'node:util';
import type { Config, UpstreamConfig } from '../config/schema.js';
import type { Logger } from '../observe/log.js';
import { secretsDigest, UpstreamPool, type UpstreamSecrets } from './pool.js';
import { resolveTlsMaterial } from './tls.js';
import type { Upstream, UpstreamBuildContext } from './types.js';

export { UpstreamPool } from './pool.js';
export type * from './types.js';

/** Expands inject headers and reads TLS material; throws a clear Error naming the config key. */
export function resolveUpstreamSecrets(
  name: string,
  def: UpstreamConfig,
  ctx: UpstreamBuildContext,
): UpstreamSecrets {
  const injectHeaders: Array<readonly [string, string]> = [];
  for (const [header, template] of Object.entries(def.inject?.headers ?? {})) {
    let value: string;
    try {
      value = ctx.expand(template);
    } catch (err) {
      throw new Error(`upstreams.${name}.inject.headers.${header}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    // A secret file usually ends with a newline; anything else that breaks a header line is refused.
    value = value.trim();
    if (/[\r\n\0]/.test(value)) {
      throw new Error(
        `upstreams.${name}.inject.headers.${header}: expanded value contains a line break or NUL`,
      );
    }
    injectHeaders.push([header.toLowerCase(), value]);
  }
  return { injectHeaders, tls: resolveTlsMaterial(name, def.tls, ctx) };
}

/** Builds one upstream (resolving host names first); not started: call `start()` when it goes live. */
export async function createUpstream(
  name: string,
  def: UpstreamConfig,
  ctx: UpstreamBuildContext,
  logger: Logger,
): Promise<Upstream> {
  const pool = new UpstreamPool(name, def, resolveUpstreamSecrets(name, def, ctx), logger);
  try {
    await pool.init();
  } catch (err) {
    await pool.close();
    throw err;
  }
  return pool;
}

/**
 * Builds the upstreams of a new configuration, reusing (keeping health, counters, pools) every upstream
 * whose config is unchanged (deep-equal) and whose expanded secrets are unchanged from `previous`.
 * Returns the map for the new runtime and the ones that are no longer used (the caller closes them
 * after in-flight requests finished, and calls `start()` on every upstream of the new map; it is
 * idempotent). Resolves host names before returning (first DNS lookup), rejects with a clear Error for
 * a problem that makes the config unusable; upstreams built by a call that rejects are closed.
 */
export async function reconcileUpstreams(
  previous: ReadonlyMap<string, Upstream> | undefined,
  defs: Config['upstreams'],
  ctx: UpstreamBuildContext,
  logger: Logger,
): Promise<{ upstreams: Map<string, Upstream>; retired: Upstream[] }> {
  const upstreams = new Map<string, Upstream>();
  const built: Upstream[] = [];
  try {
    for (const [name, def] of Object.entries(defs)) {
      const prev = previous?.get(name);
      if (prev instanceof UpstreamPool && isDeepStrictEqual(prev.config, def)) {
        if (prev.secretsDigest === secretsDigest(resolveUpstreamSecrets(name, def, ctx))) {
          upstreams.set(name, prev);
          continue;
        }
      }
      const up = await createUpstream(name, def, ctx, logger);
      built.push(up);
      upstreams.set(name, up);
    }
  } catch (err) {
    await Promise.all(built.map((u) => u.close()));
    throw err;
  }
  const retired: Upstream[] = [];
  if (previous) {
    for (const [name, up] of previous) if (upstreams.get(name) !== up) retired.push(up);
  }
  return { upstreams, retired };
}

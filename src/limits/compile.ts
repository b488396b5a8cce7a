/**
 * Rate limits (`routes[].rateLimit`) and quotas (`quotas:`) compiled once per configuration load into
 * what the limit stage reads per request: per route, its rate limit and the quotas that may apply to it.
 */
import type { Config, QuotaConfig, RateLimitConfig } from '../config/schema.js';
import type { Identity } from '../identity/types.js';
import { compileCondition } from '../policy/compile.js';
import type { CompiledPolicy } from '../policy/types.js';
import { compileKey, type KeySpec } from './keys.js';
import { knownTimeZone, WindowClock } from './window.js';

/** A route's rate limit, ready for the hot path. */
export interface CompiledRate {
  readonly route: string;
  readonly key: KeySpec;
  /** Milliseconds per request at the sustained rate. */
  readonly intervalMs: number;
  readonly burst: number;
  /** `delay`: the longest a request is held until it conforms (0: refused at once). */
  readonly delayMs: number;
  readonly maxDelayed: number;
  /** `onStoreError: allow`. */
  readonly failOpen: boolean;
  /** The `RateLimit-Policy` item (`"<route>";q=600;w=60`). */
  readonly policyItem: string;
  /** Its name as a structured-field string, for `RateLimit` items. */
  readonly itemName: string;
  readonly config: RateLimitConfig;
  /** The store key per identity object, for keys read from the identity alone (see `byIdentity`). */
  readonly keys: WeakMap<Identity, string>;
}

/** A quota, ready for the hot path. */
export interface CompiledQuota {
  readonly name: string;
  readonly key: KeySpec;
  readonly limit: number;
  readonly clock: WindowClock;
  /** The callers it counts (`when`); undefined: everyone. */
  readonly when: CompiledPolicy | undefined;
  /** Units charged when admitted; 0 when the upstream reports the cost. */
  readonly cost: number;
  /** The response header with the cost the upstream reports (lower case), if so. */
  readonly costHeader: string | undefined;
  /** `onStoreError: allow`. */
  readonly failOpen: boolean;
  /** Its name as a structured-field string. */
  readonly itemName: string;
  readonly config: QuotaConfig;
  /** The store key per identity object in the current window (see `byIdentity`). */
  readonly keys: WeakMap<Identity, { readonly start: number; readonly key: string }>;
}

/** The limits of one route. */
export interface RouteLimits {
  readonly rate: CompiledRate | undefined;
  readonly quotas: readonly CompiledQuota[];
  /** Requests of this route held by `delay` right now, in this process. */
  held: number;
}

/** Every limit of a configuration, by route. */
export interface LimitSet {
  /** The limits of a route; undefined when it has none. */
  forRoute(route: string): RouteLimits | undefined;
  /** Every quota by name. */
  readonly quotas: ReadonlyMap<string, CompiledQuota>;
  /** True when no route has a limit. */
  readonly empty: boolean;
}

/** A structured-field string (RFC 8941 §3.3.3): names here are already plain ASCII without quotes. */
function sfString(name: string): string {
  return `"${name.replace(/["\\]/g, '\\$&')}"`;
}

function compileRate(route: string, rl: RateLimitConfig): CompiledRate {
  const itemName = sfString(route);
  return {
    route,
    key: compileKey(rl.key),
    intervalMs: rl.rate.windowMs / rl.rate.count,
    burst: rl.burst,
    delayMs: rl.delay,
    maxDelayed: rl.maxDelayed,
    failOpen: rl.onStoreError === 'allow',
    policyItem: `${itemName};q=${rl.rate.count};w=${Math.max(1, Math.round(rl.rate.windowMs / 1000))}`,
    itemName,
    config: rl,
    keys: new WeakMap(),
  };
}

function compileQuota(name: string, q: QuotaConfig, report: Report): CompiledQuota {
  const header = typeof q.cost === 'string' ? q.cost.slice('header:'.length).toLowerCase() : undefined;
  return {
    name,
    key: compileKey(q.key),
    limit: q.limit,
    clock: new WindowClock(q.window, q.timeZone),
    when:
      q.when === undefined
        ? undefined
        : compileCondition(q.when, name, ['quotas', name, 'when'], (path, message) => report(path, message)),
    cost: typeof q.cost === 'number' ? q.cost : 0,
    costHeader: header,
    failOpen: q.onStoreError === 'allow',
    itemName: sfString(name),
    config: q,
    keys: new WeakMap(),
  };
}

type Report = (path: ReadonlyArray<string | number>, message: string) => void;

/** One problem of the limits settings, at its path in the configuration. */
export interface LimitProblem {
  readonly path: ReadonlyArray<string | number>;
  readonly message: string;
}

function compileAll(config: Config, report: Report): LimitSet {
  const quotas = new Map<string, CompiledQuota>();
  const routeNames = new Set(config.routes.map((r) => r.name));
  for (const [name, q] of Object.entries(config.quotas)) {
    if (!knownTimeZone(q.timeZone)) {
      report(
        ['quotas', name, 'timeZone'],
        `unknown time zone "${q.timeZone}" (expected an IANA name such as Europe/Paris)`,
      );
      continue;
    }
    q.routes?.forEach((r, i) => {
      if (!routeNames.has(r)) report(['quotas', name, 'routes', i], `unknown route "${r}"`);
    });
    quotas.set(name, compileQuota(name, q, report));
  }
  const byRoute = new Map<string, RouteLimits>();
  for (const rc of config.routes) {
    const applying = [...quotas.values()].filter(
      (q) => q.config.routes === undefined || q.config.routes.includes(rc.name),
    );
    if (rc.rateLimit === undefined && applying.length === 0) continue;
    byRoute.set(rc.name, {
      rate: rc.rateLimit === undefined ? undefined : compileRate(rc.name, rc.rateLimit),
      quotas: applying,
      held: 0,
    });
  }
  return {
    forRoute: (route) => byRoute.get(route),
    quotas,
    empty: byRoute.size === 0,
  };
}

/** Compiles the limits of a validated configuration; throws `LimitConfigError` on a problem. */
export function compileLimits(config: Config): LimitSet {
  const problems: LimitProblem[] = [];
  const set = compileAll(config, (path, message) => problems.push({ path, message }));
  if (problems.length > 0) throw new LimitConfigError(problems);
  return set;
}

/** Problems of the limits settings that the schema cannot see (time zones, route names, `when` rules). */
export function limitProblems(config: Config): LimitProblem[] {
  const problems: LimitProblem[] = [];
  compileAll(config, (path, message) => problems.push({ path, message }));
  return problems;
}

/** The limits of a configuration cannot be compiled (the loader reports the same problems first). */
export class LimitConfigError extends Error {
  readonly problems: readonly LimitProblem[];
  constructor(problems: readonly LimitProblem[]) {
    super(problems.map((p) => `${p.path.join('.')}: ${p.message}`).join('\n'));
    this.problems = problems;
  }
}

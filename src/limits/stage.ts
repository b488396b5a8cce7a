/**
 * The limit stage of the decision core: after a request has been allowed, its route's rate limit and
 * every quota that applies are checked in one atomic step of the state store (`StateStore.limit`), so a
 * caller refused by policy never spends a budget, and several instances sharing Redis enforce one limit.
 *
 *   admitted now ............................ allowed (RateLimit headers on the response)
 *   admitted after a wait (`delay`) ......... delayed: held until its reserved slot, FIFO, at most
 *                                            `maxDelayed` per route and process (beyond: 429 at once)
 *   over the rate ........................... 429 GH_RATE_LIMITED, reason `rate-limited:<route>`
 *   a quota without budget .................. 429 GH_QUOTA_EXCEEDED, reason `quota-exceeded:<quota>`
 *   the store cannot answer ................. `onStoreError`: allow (counted, logged once per outage)
 *                                            or deny (503 GH_STATE_UNAVAILABLE), per limit; deny wins
 *
 * Costs a quota takes from a response header (`cost: header:<name>`) are charged after the response by
 * the data plane that sees it (`chargeReported`); a data plane that does not see responses (the SPOE
 * agent, forward-auth) charges 1 per request instead, so such a budget still runs out.
 *
 * With the memory store the stage is synchronous (no promise per request); with Redis or the cluster
 * primary it is one round trip.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Identity } from '../identity/types.js';
import type { Logger } from '../observe/log.js';
import { type CounterSeries, limitDelay, limitVerdictsTotal } from '../observe/metrics.js';
import {
  BY_RATE,
  type LimitResult,
  NOT_REFUSED,
  type QuotaCheck,
  type RateCheck,
  type StateStore,
  StateStoreError,
} from '../state/types.js';
import type { CompiledQuota, CompiledRate, LimitSet, RouteLimits } from './compile.js';
import { byIdentity, keyOf, keysForValue } from './keys.js';
import type { WindowSpan } from './window.js';

/** How the limit stage let a request through, or why not. */
export type LimitOutcome = 'allowed' | 'delayed' | 'limited' | 'store-error';

/** A cost to charge once the upstream has reported it in a response header. */
export interface PendingCharge {
  readonly quota: string;
  readonly key: string;
  /** The response header (lower case). */
  readonly header: string;
  readonly ttlMs: number;
}

/** The verdict of the limit stage on one request. */
export interface LimitVerdict {
  readonly outcome: LimitOutcome;
  /** For `limited`: `rate-limited:<route>` or `quota-exceeded:<quota>`. */
  readonly reason: string | undefined;
  /** For `limited`: `GH_RATE_LIMITED` or `GH_QUOTA_EXCEEDED`. */
  readonly code: string | undefined;
  /** For `limited`: seconds until a retry may succeed (`Retry-After`). */
  readonly retryAfter: number | undefined;
  /** How long the request was held (`delayed`), in ms. */
  readonly waitMs: number;
  /** `ratelimit-policy` and `ratelimit` (and `retry-after` when limited) as flat `[name, value, ...]`. */
  readonly headers: readonly string[];
  /** Costs the upstream reports, to charge after the response (see `chargeReported`). */
  readonly charges: readonly PendingCharge[] | undefined;
  /** The limit that decided, for metrics: `rate`, `quota:<name>`, or '' when none refused. */
  readonly limit: string;
}

/** What the stage needs of a request that has been decided. */
export interface LimitRequest {
  readonly method: string;
  readonly host: string;
  readonly path: string;
  readonly clientIp: string;
  readonly headers: IncomingHttpHeaders;
  /** True when the data plane sees the response and charges reported costs (the built-in proxy). */
  readonly seesResponse?: boolean | undefined;
  /** Aborted when the client goes away: a request held by `delay` is let go at once. */
  readonly signal?: AbortSignal | undefined;
}

/** A store that answers `limit` synchronously (the memory store). */
interface SyncLimitStore {
  limitNow(rate: RateCheck | undefined, quotas: readonly QuotaCheck[]): LimitResult;
}

function hasSyncLimit(store: StateStore): store is StateStore & SyncLimitStore {
  return typeof (store as Partial<SyncLimitStore>).limitNow === 'function';
}

/** Options of a `Limiter`. */
export interface LimiterOptions {
  /** Hold delayed requests until their slot (default); false answers `delayed` at once (offline). */
  readonly hold?: boolean;
  /** Count verdicts in /metrics (default); false for offline evaluations. */
  readonly metrics?: boolean;
}

/** A counter of a quota stays readable this long past its window (usage API, late reported costs). */
const QUOTA_MARGIN_MS = 3_600_000;

interface Applying {
  readonly quotas: CompiledQuota[];
  readonly checks: QuotaCheck[];
  readonly spans: WindowSpan[];
}

/** The hot-path metric series of one route's limits, resolved once. */
interface LimitSeries {
  readonly allowed: CounterSeries;
}

const routeSeries = new WeakMap<RouteLimits, LimitSeries>();

function seriesOf(limits: RouteLimits, route: string): LimitSeries {
  let s = routeSeries.get(limits);
  if (s === undefined) {
    s = { allowed: limitVerdictsTotal.series(route, 'allowed', '') };
    routeSeries.set(limits, s);
  }
  return s;
}

/** A verdict that lets the request go on (nothing refused it). */
function passing(
  outcome: 'allowed' | 'delayed' | 'store-error',
  waitMs: number,
  headers: readonly string[],
  charges: readonly PendingCharge[] | undefined,
  limit: string,
): LimitVerdict {
  return {
    outcome,
    reason: undefined,
    code: undefined,
    retryAfter: undefined,
    waitMs,
    headers,
    charges,
    limit,
  };
}

const NO_QUOTAS: Applying = Object.freeze({ quotas: [], checks: [], spans: [] }) as unknown as Applying;

/** The limit stage of one runtime: its compiled limits and the process's state store. */
export class Limiter {
  readonly set: LimitSet;
  readonly #store: StateStore;
  readonly #sync: SyncLimitStore | undefined;
  readonly #logger: Logger;
  readonly #hold: boolean;
  readonly #count: boolean;
  /** The store failed and the failure was logged; cleared (and logged) when it answers again. */
  #outage = false;

  constructor(set: LimitSet, store: StateStore, logger: Logger, options: LimiterOptions = {}) {
    this.set = set;
    this.#store = store;
    this.#sync = hasSyncLimit(store) ? store : undefined;
    this.#logger = logger;
    this.#hold = options.hold ?? true;
    this.#count = options.metrics ?? true;
  }

  /**
   * The verdict on an allowed request of `route` (undefined when the route has no limit). A promise when
   * the store is remote or the request is held; rejects with `StateStoreError` only when a limit that
   * applies says `onStoreError: deny`. With `refused`, the verdict on a request the access decision
   * refused: counted by an `ip` rate limit only (undefined for any other).
   */
  check(
    route: string,
    req: LimitRequest,
    identity: Identity | undefined,
    now: number = Date.now(),
    refused = false,
  ): LimitVerdict | Promise<LimitVerdict> | undefined {
    const limits = this.set.forRoute(route);
    if (limits === undefined) return undefined;
    const rl = limits.rate;
    // A refused request counts only against the caller's own address (`ip` limits), never held, and
    // spends no quota: an unauthenticated flood is limited, and no one else's budget is spent by it.
    if (refused && rl?.key.kind !== 'ip') return undefined;
    let rate: RateCheck | undefined;
    if (rl !== undefined) {
      rate = {
        key: rateKey(rl, identity, req),
        intervalMs: rl.intervalMs,
        burst: rl.burst,
        // A full hold queue refuses at once instead of holding more.
        maxWaitMs: !refused && limits.held < rl.maxDelayed ? rl.delayMs : 0,
      };
    }
    const applying =
      refused || limits.quotas.length === 0 ? NO_QUOTAS : this.#quotas(limits, req, identity, now);
    if (rate === undefined && applying.checks.length === 0) return undefined;
    const sync = this.#sync;
    if (sync !== undefined) {
      let result: LimitResult;
      try {
        result = sync.limitNow(rate, applying.checks);
      } catch (err) {
        return this.#failed(err, route, rl, applying, refused);
      }
      return this.#conclude(route, limits, rl, applying, result, now, req.signal);
    }
    return this.#store.limit(rate, applying.checks).then(
      (result) => this.#conclude(route, limits, rl, applying, result, now, req.signal),
      (err: unknown) => this.#failed(err, route, rl, applying, refused),
    );
  }

  /** The quotas of `limits` that count this caller, with their checks. */
  #quotas(limits: RouteLimits, req: LimitRequest, identity: Identity | undefined, now: number): Applying {
    const quotas: CompiledQuota[] = [];
    const checks: QuotaCheck[] = [];
    const spans: WindowSpan[] = [];
    for (const q of limits.quotas) {
      if (q.when !== undefined) {
        const r = q.when.evaluate(identity, {
          method: req.method,
          host: req.host,
          path: req.path,
          clientIp: req.clientIp,
          now,
        });
        if (!r.allow) continue;
      }
      const span = q.clock.at(now);
      quotas.push(q);
      spans.push(span);
      checks.push({
        key: quotaKeyOf(q, span, identity, req),
        limit: q.limit,
        // Where the response is not seen, a reported cost cannot be charged: 1 per request instead.
        cost: q.costHeader !== undefined && req.seesResponse !== true ? 1 : q.cost,
        ttlMs: span.end - now + QUOTA_MARGIN_MS,
      });
    }
    return { quotas, checks, spans };
  }

  #conclude(
    route: string,
    limits: RouteLimits,
    rl: CompiledRate | undefined,
    applying: Applying,
    result: LimitResult,
    now: number,
    signal: AbortSignal | undefined,
  ): LimitVerdict | Promise<LimitVerdict> {
    if (this.#outage) {
      this.#outage = false;
      this.#logger.info('state store answers again: rate limits and quotas are enforced again');
    }
    const headers = rateLimitHeaders(rl, applying, result, now);
    if (result.refusedBy === BY_RATE) {
      const retryAfter = Math.max(1, Math.ceil(result.waitMs / 1000));
      headers.push('retry-after', String(retryAfter));
      return this.#limited(route, `rate-limited:${route}`, 'GH_RATE_LIMITED', retryAfter, headers, 'rate');
    }
    if (result.refusedBy !== NOT_REFUSED) {
      const q = applying.quotas[result.refusedBy]!;
      const span = applying.spans[result.refusedBy]!;
      const retryAfter = Math.max(1, Math.ceil((span.end - now) / 1000));
      headers.push('retry-after', String(retryAfter));
      return this.#limited(
        route,
        `quota-exceeded:${q.name}`,
        'GH_QUOTA_EXCEEDED',
        retryAfter,
        headers,
        `quota:${q.name}`,
      );
    }
    let charges: PendingCharge[] | undefined;
    for (let i = 0; i < applying.quotas.length; i++) {
      const q = applying.quotas[i]!;
      if (q.costHeader === undefined || applying.checks[i]!.cost !== 0) continue;
      charges ??= [];
      charges.push({
        quota: q.name,
        key: applying.checks[i]!.key,
        header: q.costHeader,
        ttlMs: applying.checks[i]!.ttlMs,
      });
    }
    const wait = result.waitMs;
    if (wait <= 0) {
      if (this.#count) seriesOf(limits, route).allowed.inc();
      return passing('allowed', 0, headers, charges, '');
    }
    const delayed = passing('delayed', wait, headers, charges, 'rate');
    if (!this.#hold) return delayed;
    // Held until the slot the store reserved: timers of earlier slots fire first (FIFO).
    limits.held++;
    if (this.#count) {
      limitVerdictsTotal.series(route, 'delayed', 'rate').inc();
      limitDelay.series(route).observe(wait / 1000);
    }
    return new Promise((resolve) => {
      // Whichever comes first: the slot, or the client going away (the data plane then forwards nothing).
      const release = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', release);
        limits.held--;
        resolve(delayed);
      };
      const timer = setTimeout(release, wait);
      if (signal?.aborted) release();
      else signal?.addEventListener('abort', release, { once: true });
    });
  }

  #limited(
    route: string,
    reason: string,
    code: string,
    retryAfter: number,
    headers: string[],
    limit: string,
  ): LimitVerdict {
    if (this.#count) limitVerdictsTotal.series(route, 'limited', limit).inc();
    return { outcome: 'limited', reason, code, retryAfter, waitMs: 0, headers, charges: undefined, limit };
  }

  #failed(
    err: unknown,
    route: string,
    rl: CompiledRate | undefined,
    applying: Applying,
    refused: boolean,
  ): LimitVerdict {
    const failure =
      err instanceof StateStoreError
        ? err
        : new StateStoreError('the state store could not count this request', err);
    // A refused request stays refused: the store's failure changes nothing for it.
    const deny = !refused && ((rl !== undefined && !rl.failOpen) || applying.quotas.some((q) => !q.failOpen));
    if (!this.#outage) {
      this.#outage = true;
      // Once per outage, whichever route fails first: the message says what happens on every route.
      this.#logger.warn(
        { err: failure, route, onStoreError: deny ? 'deny' : 'allow' },
        'state store unavailable: until it answers, limits with onStoreError allow are not enforced and requests under limits with onStoreError deny are refused (503)',
      );
    }
    if (this.#count) limitVerdictsTotal.series(route, 'store-error', '').inc();
    if (deny) throw failure;
    return passing('store-error', 0, [], undefined, '');
  }

  /**
   * Charges the costs an upstream reported in its response headers (`cost: header:<name>`). A missing
   * or unusable value (not a finite number ≥ 0) is charged as 1, so a budget runs out even when the
   * upstream does not report. Never throws: a store failure is logged.
   */
  chargeReported(verdict: LimitVerdict | undefined, header: (name: string) => unknown): void {
    const charges = verdict?.charges;
    if (charges === undefined) return;
    for (const c of charges) {
      const raw = header(c.header);
      const text = typeof raw === 'string' ? raw.trim() : '';
      const value = text === '' ? Number.NaN : Number(text);
      const amount = Number.isFinite(value) && value >= 0 ? value : 1;
      if (amount === 0) continue;
      this.#store.charge(c.key, amount, c.ttlMs).catch((err: unknown) => {
        this.#logger.warn({ err, quota: c.quota }, 'could not charge a reported quota cost');
      });
    }
  }

  /**
   * Usage of every quota for an operator's key value (the admin quota API): each quota as the value
   * counts for its key kind (0 when nothing was counted yet), and the client-address counter the value
   * also names (anonymous callers), when there is one.
   */
  async usage(value: string, now: number = Date.now()): Promise<QuotaUsage[]> {
    const out: QuotaUsage[] = [];
    for (const q of this.set.quotas.values()) {
      const span = q.clock.at(now);
      const keys = keysForValue(q.key, value);
      for (let i = 0; i < keys.length; i++) {
        const raw = await this.#store.get(quotaKey(q.name, span, keys[i]!));
        if (raw === undefined && i > 0) continue;
        const used = raw === undefined ? 0 : Number(raw);
        out.push({
          quota: q.name,
          key: keys[i]!,
          used,
          limit: q.limit,
          remaining: q.limit - used,
          window: { start: new Date(span.start).toISOString(), end: new Date(span.end).toISOString() },
          resetAt: new Date(span.end).toISOString(),
        });
      }
    }
    return out;
  }

  /** Resets one key of a quota in the current window: the counters reset, undefined for an unknown quota. */
  async reset(quota: string, value: string, now: number = Date.now()): Promise<string[] | undefined> {
    const q = this.set.quotas.get(quota);
    if (q === undefined) return undefined;
    const span = q.clock.at(now);
    const keys = keysForValue(q.key, value);
    for (const counted of keys) await this.#store.delete(quotaKey(q.name, span, counted));
    return keys;
  }
}

/** One quota's usage for one key, as the admin API shows it. */
export interface QuotaUsage {
  readonly quota: string;
  /** The counted key (`id:alice`, `ip:203.0.113.7`, ...). */
  readonly key: string;
  readonly used: number;
  readonly limit: number;
  readonly remaining: number;
  readonly window: { readonly start: string; readonly end: string };
  readonly resetAt: string;
}

/** The store key of a rate limit for this request, kept per identity where only the identity counts. */
function rateKey(rl: CompiledRate, identity: Identity | undefined, req: LimitRequest): string {
  if (identity === undefined || !byIdentity(rl.key))
    return `rl:${rl.route}:${keyOf(rl.key, identity, req.clientIp, req.headers)}`;
  let key = rl.keys.get(identity);
  if (key === undefined) {
    key = `rl:${rl.route}:${keyOf(rl.key, identity, req.clientIp, req.headers)}`;
    rl.keys.set(identity, key);
  }
  return key;
}

/** The store key of a quota for this request in `span`, kept per identity like `rateKey`. */
function quotaKeyOf(
  q: CompiledQuota,
  span: WindowSpan,
  identity: Identity | undefined,
  req: LimitRequest,
): string {
  if (identity === undefined || !byIdentity(q.key))
    return quotaKey(q.name, span, keyOf(q.key, identity, req.clientIp, req.headers));
  const kept = q.keys.get(identity);
  if (kept !== undefined && kept.start === span.start) return kept.key;
  const key = quotaKey(q.name, span, keyOf(q.key, identity, req.clientIp, req.headers));
  q.keys.set(identity, { start: span.start, key });
  return key;
}

const quotaPrefixes = new WeakMap<WindowSpan, string>();

/** A quota's counter in a window: `q:<quota>:<window start, base 36>:<counted key>`. */
function quotaKey(name: string, span: WindowSpan, counted: string): string {
  // One prefix per window (spans are reused until they end).
  let prefix = quotaPrefixes.get(span);
  if (prefix === undefined) {
    prefix = `q:${name}:${span.start.toString(36)}:`;
    quotaPrefixes.set(span, prefix);
  }
  return prefix + counted;
}

/**
 * `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers): one item per limit that
 * counted the request, the route's rate limit named after the route and each quota after itself:
 * `RateLimit-Policy: "api";q=600;w=60, "agents-daily";q=10000;w=86400` and
 * `RateLimit: "api";r=99;t=1, "agents-daily";r=9957;t=48112`.
 */
function rateLimitHeaders(
  rl: CompiledRate | undefined,
  applying: Applying,
  result: LimitResult,
  now: number,
): string[] {
  const policy = policyOf(rl, applying);
  let state = '';
  if (rl !== undefined) {
    state = `${rl.itemName};r=${result.refusedBy === BY_RATE ? 0 : result.remaining};t=${Math.ceil(
      (result.refusedBy === BY_RATE ? result.waitMs : result.resetMs) / 1000,
    )}`;
  }
  for (let i = 0; i < applying.quotas.length; i++) {
    const q = applying.quotas[i]!;
    const span = applying.spans[i]!;
    const left = Math.max(0, Math.floor(q.limit - (result.used[i] ?? 0)));
    const st = `${q.itemName};r=${left};t=${Math.max(0, Math.ceil((span.end - now) / 1000))}`;
    state = state === '' ? st : `${state}, ${st}`;
  }
  return ['ratelimit-policy', policy, 'ratelimit', state];
}

interface KeptPolicy {
  readonly quotas: readonly CompiledQuota[];
  readonly spans: readonly WindowSpan[];
  readonly value: string;
}

const keptPolicies = new WeakMap<object, KeptPolicy>();

/**
 * `RateLimit-Policy`: the rate's item and each quota's (its window's length: months differ), kept per
 * route while the same quotas apply in the same windows.
 */
function policyOf(rl: CompiledRate | undefined, applying: Applying): string {
  const owner = rl ?? applying.quotas[0];
  const kept = owner === undefined ? undefined : keptPolicies.get(owner);
  if (kept !== undefined && sameItems(kept, applying)) return kept.value;
  let policy = rl?.policyItem ?? '';
  for (let i = 0; i < applying.quotas.length; i++) {
    const q = applying.quotas[i]!;
    const span = applying.spans[i]!;
    const item = `${q.itemName};q=${q.limit};w=${Math.round((span.end - span.start) / 1000)}`;
    policy = policy === '' ? item : `${policy}, ${item}`;
  }
  if (owner !== undefined)
    keptPolicies.set(owner, {
      quotas: applying.quotas.slice(),
      spans: applying.spans.slice(),
      value: policy,
    });
  return policy;
}

function sameItems(kept: KeptPolicy, applying: Applying): boolean {
  const n = applying.quotas.length;
  if (kept.quotas.length !== n) return false;
  for (let i = 0; i < n; i++)
    if (kept.quotas[i] !== applying.quotas[i] || kept.spans[i] !== applying.spans[i]) return false;
  return true;
}

/**
 * The shared state store: sessions, one-time login state, hand-off codes, keys, and later rate-limit
 * counters and revocations. `memory` keeps everything in the process; a `redis://` store is shared by
 * every instance of the gateway. Values are strings (callers serialize); keys are plain strings that
 * the Redis store prefixes with `gatehouse:`.
 */
import { GatehouseError } from '../errors.js';
import type { RevocationFeed } from './revocations.js';

/** A key-value store with per-key expiry and the few atomic operations login and limits need. */
export interface StateStore {
  /** `memory` or `redis`. */
  readonly kind: 'memory' | 'redis';
  /**
   * False while the store is known to be unreachable: every call then fails at once with
   * `StateStoreError` instead of waiting for a timeout, until the store finds it reachable again by
   * itself. Callers that can do without the store (public routes) skip it meanwhile.
   */
  readonly available: boolean;
  /** Revocations shared by every process using this store, for their session caches (see the feed). */
  readonly revocations: RevocationFeed;
  /** The value, or undefined when the key is absent or expired. */
  get(key: string): Promise<string | undefined>;
  /** Stores a value; `ttlMs` makes it expire (omitted: no expiry). */
  set(key: string, value: string, ttlMs?: number): Promise<void>;
  /** Stores a value only when the key is absent (a lock or a one-time marker); true when stored. */
  add(key: string, value: string, ttlMs?: number): Promise<boolean>;
  /** Reads and deletes in one atomic step, so a one-time value (login state, hand-off code) is used once. */
  take(key: string): Promise<string | undefined>;
  /** Removes a key of any kind; absent keys are fine. */
  delete(key: string): Promise<void>;
  /**
   * Adds `by` (default 1) to an integer counter and returns the new value. A counter created by this
   * call gets `ttlMs`; an existing one keeps its expiry (fixed windows for rate limits).
   */
  incr(key: string, by?: number, ttlMs?: number): Promise<number>;
  /** Adds a member to a set; `ttlMs` (re)sets the expiry of the whole set. */
  setAdd(key: string, member: string, ttlMs?: number): Promise<void>;
  /** Removes a member from a set. */
  setRemove(key: string, member: string): Promise<void>;
  /** Every member of a set (empty when absent), in no particular order. */
  setMembers(key: string): Promise<string[]>;
  /**
   * One atomic step of the limit stage (see src/limits): the route's rate limit (GCRA) and every quota
   * that applies are checked together, and only when all admit are they all charged; a refused request
   * spends nothing. The store's own clock decides (Redis: `TIME`), so instances whose clocks differ still
   * enforce one limit.
   */
  limit(rate: RateCheck | undefined, quotas: readonly QuotaCheck[]): Promise<LimitResult>;
  /**
   * Adds `amount` (may be fractional) to a quota counter and returns the new usage; a counter created
   * by this call expires after `ttlMs`. Used to charge a cost the upstream reported after the response.
   */
  charge(key: string, amount: number, ttlMs: number): Promise<number>;
  /** Releases connections and timers; the store is unusable afterwards. */
  close(): Promise<void>;
}

/**
 * A rate limit as the store checks it (GCRA, the generic cell rate algorithm): the key holds the
 * theoretical arrival time (TAT) of the next request. A request conforms when, after adding one
 * `intervalMs`, the TAT is at most `burst` intervals ahead of now; with `maxWaitMs`, a request that
 * would conform within that long is admitted with a wait (its slot is reserved, so waiting requests
 * conform in the order they arrived).
 */
export interface RateCheck {
  readonly key: string;
  /** Milliseconds per request at the sustained rate (60 000 / 600 for `600/min`); may be fractional. */
  readonly intervalMs: number;
  /** Requests allowed at once (the bucket's size), at least 1. */
  readonly burst: number;
  /** The longest a request may be held until it conforms; 0 refuses at once. */
  readonly maxWaitMs: number;
}

/** A quota budget as the store checks it: a counter of cost units in the current window. */
export interface QuotaCheck {
  readonly key: string;
  readonly limit: number;
  /** Units charged now when admitted (0 for a cost the upstream reports later, see `charge`). */
  readonly cost: number;
  /** Expiry of a counter this request creates: the rest of the window (and a margin). */
  readonly ttlMs: number;
}

/** What `StateStore.limit` decided. Admitted when `refusedBy` is `NOT_REFUSED`. */
export interface LimitResult {
  /** `NOT_REFUSED`, `BY_RATE`, or the index of the first quota without budget. */
  readonly refusedBy: number;
  /**
   * Admitted: how long to hold the request until it conforms to the rate (0: at once). Refused by the
   * rate: how long until a request would conform (Retry-After).
   */
  readonly waitMs: number;
  /** Requests the rate limit allows at once after this one (0 without a rate limit). */
  readonly remaining: number;
  /** Milliseconds until the rate limit's bucket is full again. */
  readonly resetMs: number;
  /** Each quota's usage after this request (when refused: as it was). */
  readonly used: readonly number[];
}

/** `LimitResult.refusedBy` of an admitted request. */
export const NOT_REFUSED = -2;
/** `LimitResult.refusedBy` of a request the rate limit refused. */
export const BY_RATE = -1;

/**
 * The limit step itself, on a TAT and usages already read, at `now`: shared by the memory store and
 * the cluster primary (which runs it in its own memory store) so that they decide as Redis's script does.
 * Returns the result and the new TAT (undefined when nothing is to be written).
 */
export function limitStep(
  now: number,
  tat: number | undefined,
  rate: RateCheck | undefined,
  quotas: readonly QuotaCheck[],
  usage: readonly number[],
): { result: LimitResult; tat: number | undefined } {
  let newTat: number | undefined;
  let waitMs = 0;
  let remaining = 0;
  let resetMs = 0;
  if (rate !== undefined) {
    const base = tat === undefined || tat < now ? now : tat;
    newTat = base + rate.intervalMs;
    const wait = newTat - now - rate.burst * rate.intervalMs;
    if (wait > rate.maxWaitMs) {
      return {
        result: {
          refusedBy: BY_RATE,
          waitMs: Math.ceil(wait),
          remaining: 0,
          resetMs: Math.ceil(base - now),
          used: usage,
        },
        tat: undefined,
      };
    }
    if (wait > 0) waitMs = Math.ceil(wait);
    remaining = Math.max(0, Math.floor((now + rate.burst * rate.intervalMs - newTat) / rate.intervalMs));
    resetMs = Math.ceil(newTat - now);
  }
  for (let i = 0; i < quotas.length; i++) {
    const q = quotas[i]!;
    const u = usage[i] ?? 0;
    // A cost known now must fit; a cost reported later only needs budget left (it may go below 0 once).
    if (q.cost > 0 ? u + q.cost > q.limit : u >= q.limit) {
      return { result: { refusedBy: i, waitMs: 0, remaining, resetMs, used: usage }, tat: undefined };
    }
  }
  const used = quotas.length === 0 ? usage : quotas.map((q, i) => (usage[i] ?? 0) + q.cost);
  return { result: { refusedBy: NOT_REFUSED, waitMs, remaining, resetMs, used }, tat: newTat };
}

/**
 * The state store could not answer (Redis down, timed out, closed). Callers fail closed: no session is
 * accepted or created on a store error, and the client gets 503.
 */
export class StateStoreError extends GatehouseError {
  constructor(message: string, cause?: unknown) {
    super('GH_STATE_UNAVAILABLE', 503, message, { cause });
  }
}

/** Largest accepted key, in characters; keys are built by the gateway, never taken raw from clients. */
export const MAX_KEY_LENGTH = 1024;

/** Throws a TypeError for an unusable key or TTL: a programming error, never a client's. */
export function checkKeyAndTtl(key: string, ttlMs?: number): void {
  if (typeof key !== 'string' || key.length === 0 || key.length > MAX_KEY_LENGTH) {
    throw new TypeError(`state store key must be a string of 1..${MAX_KEY_LENGTH} characters`);
  }
  if (ttlMs !== undefined && !(Number.isFinite(ttlMs) && ttlMs > 0)) {
    throw new TypeError(`state store ttl must be a positive number of milliseconds, got ${ttlMs}`);
  }
}

/**
 * Throws a TypeError for a rate or quotas a store cannot run (a programming error, never a client's):
 * the Redis script would fail on them with an error that looks like Redis's, and the cluster primary
 * checks what a worker sent with it. Works on values of any type.
 */
export function checkLimit(rate: RateCheck | undefined, quotas: readonly QuotaCheck[]): void {
  if (rate !== undefined) {
    checkKeyAndTtl(rate.key);
    if (!(Number.isFinite(rate.intervalMs) && rate.intervalMs > 0)) {
      throw new TypeError(`rate interval must be a positive number of milliseconds, got ${rate.intervalMs}`);
    }
    if (!(Number.isFinite(rate.burst) && rate.burst >= 1)) {
      throw new TypeError(`rate burst must be a number of at least 1, got ${rate.burst}`);
    }
    if (!(Number.isFinite(rate.maxWaitMs) && rate.maxWaitMs >= 0)) {
      throw new TypeError(`rate maxWaitMs must be a number of milliseconds, got ${rate.maxWaitMs}`);
    }
  }
  for (const q of quotas) {
    checkKeyAndTtl(q.key, q.ttlMs);
    if (q.ttlMs === undefined) throw new TypeError('a quota needs the ttl of the counter it may create');
    if (!Number.isFinite(q.limit)) throw new TypeError(`quota limit must be a number, got ${q.limit}`);
    if (!(Number.isFinite(q.cost) && q.cost >= 0)) {
      throw new TypeError(`quota cost must be a number of at least 0, got ${q.cost}`);
    }
  }
}

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
  /** Releases connections and timers; the store is unusable afterwards. */
  close(): Promise<void>;
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

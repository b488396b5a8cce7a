/**
 * The in-process state store (the default): Maps with per-key expiry and a bounded size, so a flood of
 * login attempts cannot exhaust memory. Short-lived keys (TTL up to 15 minutes: login state, hand-off
 * codes) are bounded apart from the others, so such a flood evicts only its own kind, never sessions.
 * Every operation is synchronous underneath, which makes `add`, `take` and `incr` atomic in the process.
 */
import type { Logger } from '../observe/log.js';
import { RevocationFeed } from './revocations.js';
import {
  checkKeyAndTtl,
  checkLimit,
  type LimitResult,
  limitStep,
  NOT_REFUSED,
  type QuotaCheck,
  type RateCheck,
  type StateStore,
  StateStoreError,
} from './types.js';

/** Options of the memory store. */
export interface MemoryStoreOptions {
  /** Most long-lived keys kept; beyond it the least recently written one is evicted (default 100 000). */
  maxEntries?: number;
  /** Most short-lived keys (TTL up to `shortTtl`) kept, bounded apart (default 100 000). */
  maxShortEntries?: number;
  /** Keys with a TTL up to this many ms count as short-lived (default 15 minutes). */
  shortTtl?: number;
  /** Clock in ms since the epoch (tests freeze it). */
  now?: () => number;
  /** How often expired keys are swept in the background, in ms (default 60 s; 0 disables). */
  sweepInterval?: number;
}

/** A number of the limit stage (a TAT, a quota's usage), kept as a number and updated in place. */
interface Counter {
  n: number;
  expiresAt: number;
}

interface Entry {
  value: string | Set<string>;
  /** Expiry in ms since the epoch; Infinity for none. */
  expiresAt: number;
}

const INTEGER = /^-?\d{1,16}$/;

/** The memory store; see `createStateStore('memory')`. */
export class MemoryStore implements StateStore {
  readonly kind = 'memory' as const;
  /** No other process shares this store: what it holds is known here at once. */
  readonly revocations = new RevocationFeed(true);
  readonly #entries = new Map<string, Entry>();
  readonly #short = new Map<string, Entry>();
  /** The limit stage's numbers, apart: no string conversion per request; bounded like `#entries`. */
  readonly #counters = new Map<string, Counter>();
  readonly #max: number;
  readonly #maxShort: number;
  readonly #shortTtl: number;
  readonly #now: () => number;
  readonly #logger: Logger | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #lastEvictionLog = 0;

  constructor(options: MemoryStoreOptions = {}, logger?: Logger) {
    this.#max = Math.max(1, options.maxEntries ?? 100_000);
    this.#maxShort = Math.max(1, options.maxShortEntries ?? 100_000);
    this.#shortTtl = options.shortTtl ?? 900_000;
    this.#now = options.now ?? Date.now;
    this.#logger = logger;
    const every = options.sweepInterval ?? 60_000;
    if (every > 0) {
      this.#timer = setInterval(() => this.sweep(), every);
      this.#timer.unref();
    }
  }

  /** In memory, the store answers until it is closed. */
  get available(): boolean {
    return !this.#closed;
  }

  /** Number of keys held (expired ones included until they are swept). */
  get size(): number {
    return this.#entries.size + this.#short.size + this.#counters.size;
  }

  async get(key: string): Promise<string | undefined> {
    const counter = this.#counters.get(key);
    if (counter !== undefined && counter.expiresAt > this.#now()) return String(counter.n);
    const entry = this.#live(key);
    if (entry === undefined) return undefined;
    if (typeof entry.value !== 'string') throw wrongType(key);
    return entry.value;
  }

  async set(key: string, value: string, ttlMs?: number): Promise<void> {
    checkKeyAndTtl(key, ttlMs);
    this.#open();
    this.#put(key, String(value), ttlMs);
  }

  async add(key: string, value: string, ttlMs?: number): Promise<boolean> {
    checkKeyAndTtl(key, ttlMs);
    if (this.#live(key) !== undefined) return false;
    this.#put(key, String(value), ttlMs);
    return true;
  }

  async take(key: string): Promise<string | undefined> {
    const entry = this.#live(key);
    if (entry === undefined) return undefined;
    if (typeof entry.value !== 'string') throw wrongType(key);
    this.#remove(key);
    return entry.value;
  }

  async delete(key: string): Promise<void> {
    checkKeyAndTtl(key);
    this.#open();
    this.#remove(key);
    this.#counters.delete(key);
  }

  async incr(key: string, by = 1, ttlMs?: number): Promise<number> {
    checkKeyAndTtl(key, ttlMs);
    if (!Number.isSafeInteger(by)) throw new TypeError(`incr step must be an integer, got ${by}`);
    const entry = this.#live(key);
    if (entry === undefined) {
      this.#put(key, String(by), ttlMs);
      return by;
    }
    if (typeof entry.value !== 'string' || !INTEGER.test(entry.value)) {
      throw new StateStoreError(`value of ${key} is not an integer`);
    }
    const next = Number(entry.value) + by;
    entry.value = String(next);
    return next;
  }

  async setAdd(key: string, member: string, ttlMs?: number): Promise<void> {
    checkKeyAndTtl(key, ttlMs);
    const entry = this.#live(key);
    if (entry === undefined) {
      this.#put(key, new Set([member]), ttlMs);
      return;
    }
    if (typeof entry.value === 'string') throw wrongType(key);
    entry.value.add(member);
    if (ttlMs !== undefined) entry.expiresAt = this.#now() + ttlMs;
  }

  async setRemove(key: string, member: string): Promise<void> {
    const entry = this.#live(key);
    if (entry === undefined) return;
    if (typeof entry.value === 'string') throw wrongType(key);
    entry.value.delete(member);
    // Like Redis, an empty set does not exist.
    if (entry.value.size === 0) this.#remove(key);
  }

  async setMembers(key: string): Promise<string[]> {
    const entry = this.#live(key);
    if (entry === undefined) return [];
    if (typeof entry.value === 'string') throw wrongType(key);
    return [...entry.value];
  }

  async limit(rate: RateCheck | undefined, quotas: readonly QuotaCheck[]): Promise<LimitResult> {
    checkLimit(rate, quotas);
    return this.limitNow(rate, quotas);
  }

  /** `limit`, answered synchronously: the limit stage stays synchronous on the memory store. */
  limitNow(rate: RateCheck | undefined, quotas: readonly QuotaCheck[]): LimitResult {
    this.#open();
    const now = this.#now();
    const tat = rate === undefined ? undefined : this.#counter(rate.key, now);
    const usage: number[] = [];
    const counters: Array<Counter | undefined> = [];
    for (let i = 0; i < quotas.length; i++) {
      const c = this.#counter(quotas[i]!.key, now);
      counters.push(c);
      usage.push(c?.n ?? 0);
    }
    const step = limitStep(now, tat?.n, rate, quotas, usage);
    if (step.result.refusedBy !== NOT_REFUSED) return step.result;
    if (rate !== undefined && step.tat !== undefined) {
      // The TAT is only needed until it is in the past: then the bucket is full anyway.
      const expiresAt = now + Math.max(1, Math.ceil(step.tat - now));
      if (tat !== undefined) {
        tat.n = step.tat;
        tat.expiresAt = expiresAt;
      } else this.#newCounter(rate.key, step.tat, expiresAt);
    }
    for (let i = 0; i < quotas.length; i++) {
      const q = quotas[i]!;
      if (q.cost === 0) continue;
      // A counter read above is charged as it is; a new one is created (or found, for a key named twice).
      const c = counters[i];
      if (c !== undefined) c.n += q.cost;
      else this.#addCounter(q.key, q.cost, q.ttlMs, now);
    }
    return step.result;
  }

  async charge(key: string, amount: number, ttlMs: number): Promise<number> {
    checkKeyAndTtl(key, ttlMs);
    this.#open();
    if (!Number.isFinite(amount)) throw new TypeError(`charge must be a finite number, got ${amount}`);
    return this.#addCounter(key, amount, ttlMs, this.#now());
  }

  /** Adds to a counter; one created now expires after `ttlMs`, an existing one keeps its expiry. */
  #addCounter(key: string, amount: number, ttlMs: number, now: number): number {
    const c = this.#counter(key, now);
    if (c === undefined) {
      this.#newCounter(key, amount, now + ttlMs);
      return amount;
    }
    c.n += amount;
    return c.n;
  }

  /** The live counter at `key`; an expired one is removed. */
  #counter(key: string, now: number): Counter | undefined {
    const c = this.#counters.get(key);
    if (c === undefined) {
      // A value written by `set` is not a number to count with (as INCRBYFLOAT refuses it in Redis).
      if (this.#short.has(key) || this.#entries.has(key)) {
        const e = this.#live(key);
        if (e !== undefined) throw new StateStoreError(`value of ${key} is not a number`);
      }
      return undefined;
    }
    if (c.expiresAt <= now) {
      this.#counters.delete(key);
      return undefined;
    }
    return c;
  }

  #newCounter(key: string, n: number, expiresAt: number): void {
    checkKeyAndTtl(key);
    const map = this.#counters;
    if (map.size >= this.#max) this.#makeRoom(map, this.#max);
    map.set(key, { n, expiresAt });
  }

  async close(): Promise<void> {
    this.#closed = true;
    // Like every store: what session caches hold is no longer backed by anything (see the feed).
    this.revocations.reset(false);
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#entries.clear();
    this.#short.clear();
    this.#counters.clear();
  }

  /** Removes every expired key now (also done in the background). */
  sweep(): void {
    const now = this.#now();
    for (const map of [this.#short, this.#entries, this.#counters]) {
      for (const [key, entry] of map) if (entry.expiresAt <= now) map.delete(key);
    }
  }

  #remove(key: string): void {
    if (!this.#short.delete(key)) this.#entries.delete(key);
  }

  #open(): void {
    if (this.#closed) throw new StateStoreError('state store is closed');
  }

  #live(key: string): Entry | undefined {
    checkKeyAndTtl(key);
    this.#open();
    const entry = this.#short.get(key) ?? this.#entries.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt <= this.#now()) {
      this.#remove(key);
      return undefined;
    }
    return entry;
  }

  #put(key: string, value: string | Set<string>, ttlMs: number | undefined): void {
    const expiresAt = ttlMs === undefined ? Number.POSITIVE_INFINITY : this.#now() + ttlMs;
    const short = ttlMs !== undefined && ttlMs <= this.#shortTtl;
    const map = short ? this.#short : this.#entries;
    // Re-inserting moves the key to the end, so eviction takes the least recently written key.
    this.#remove(key);
    if (map.size >= (short ? this.#maxShort : this.#max))
      this.#makeRoom(map, short ? this.#maxShort : this.#max);
    map.set(key, { value, expiresAt });
  }

  #makeRoom(map: Map<string, { expiresAt: number }>, max: number): void {
    // Oldest written first (insertion order): constant work per insert even under a flood.
    const now = this.#now();
    let evicted = 0;
    for (const [key, entry] of map) {
      if (map.size < max) break;
      map.delete(key);
      if (entry.expiresAt > now) evicted++;
    }
    if (evicted > 0 && now - this.#lastEvictionLog > 60_000) {
      this.#lastEvictionLog = now;
      this.#logger?.warn(
        { maxEntries: max, shortLived: map === this.#short },
        'memory state store is full: evicting the least recently written keys',
      );
    }
  }
}

function wrongType(key: string): StateStoreError {
  return new StateStoreError(
    `wrong kind of value at ${key} (a set where a string was expected or the reverse)`,
  );
}

/**
 * The Redis state store, shared by every instance of the gateway. Keys are prefixed with `gatehouse:`.
 * Commands time out instead of queueing forever, so a Redis outage turns into `StateStoreError` (503)
 * quickly and callers fail closed; the client keeps reconnecting in the background.
 */
import { Redis } from 'ioredis';
import type { Logger } from '../observe/log.js';
import { checkKeyAndTtl, type StateStore, StateStoreError } from './types.js';

/** Options of the Redis store. */
export interface RedisStoreOptions {
  /** Time allowed to establish a connection, in ms (default 2000). */
  connectTimeout?: number;
  /** Time allowed for one command, in ms, including waiting for a connection (default 2000). */
  commandTimeout?: number;
  /** Key prefix (default `gatehouse:`). */
  prefix?: string;
}

// GETDEL exists only since Redis 6.2; a script is atomic on every version.
const TAKE = `local v = redis.call('GET', KEYS[1])
if v then redis.call('DEL', KEYS[1]) end
return v`;

// Only a counter created by this call gets the TTL, so a fixed window is not extended by later hits.
const INCR = `local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v`;

interface Scripts {
  gatehouseTake(key: string): Promise<string | null>;
  gatehouseIncr(key: string, by: number, ttlMs: number): Promise<number>;
}

/** The URL without its password, for logs. */
export function redactRedisUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.href;
  } catch {
    return 'redis://(unparsable URL)';
  }
}

/** The Redis store; see `createStateStore('redis://…')`. */
export class RedisStore implements StateStore {
  readonly kind = 'redis' as const;
  readonly #client: Redis;
  readonly #scripts: Scripts;
  readonly #prefix: string;
  readonly #logger: Logger;
  readonly #where: string;
  #healthy = true;
  #closed = false;

  constructor(url: string, logger: Logger, options: RedisStoreOptions = {}) {
    this.#logger = logger;
    this.#prefix = options.prefix ?? 'gatehouse:';
    this.#where = redactRedisUrl(url);
    const commandTimeout = options.commandTimeout ?? 2000;
    this.#client = new Redis(url, {
      connectTimeout: options.connectTimeout ?? 2000,
      commandTimeout,
      // One reconnection attempt per command at most, then the command fails (fail closed, fast).
      maxRetriesPerRequest: 1,
      retryStrategy: (times) => Math.min(100 * 2 ** Math.min(times, 5), 2000),
      // RESP2 works with every Redis version and with Redis-compatible servers.
      protocol: 2,
      connectionName: 'gatehouse',
      disableClientInfo: true,
    });
    this.#client.defineCommand('gatehouseTake', { numberOfKeys: 1, lua: TAKE });
    this.#client.defineCommand('gatehouseIncr', { numberOfKeys: 1, lua: INCR });
    this.#scripts = this.#client as unknown as Scripts;
    this.#client.on('error', (err: Error) => {
      // ioredis reports every failed reconnection; log the transition, not each attempt.
      if (this.#healthy && !this.#closed) {
        this.#healthy = false;
        this.#logger.error({ err: err.message, store: this.#where }, 'state store (Redis) unavailable');
      }
    });
    this.#client.on('ready', () => {
      if (!this.#healthy) this.#logger.info({ store: this.#where }, 'state store (Redis) available again');
      this.#healthy = true;
    });
  }

  async get(key: string): Promise<string | undefined> {
    checkKeyAndTtl(key);
    const v = await this.#run('get', () => this.#client.get(this.#prefix + key));
    return v ?? undefined;
  }

  async set(key: string, value: string, ttlMs?: number): Promise<void> {
    checkKeyAndTtl(key, ttlMs);
    const k = this.#prefix + key;
    await this.#run('set', () =>
      ttlMs === undefined ? this.#client.set(k, value) : this.#client.set(k, value, 'PX', Math.ceil(ttlMs)),
    );
  }

  async add(key: string, value: string, ttlMs?: number): Promise<boolean> {
    checkKeyAndTtl(key, ttlMs);
    const k = this.#prefix + key;
    const r = await this.#run('add', () =>
      ttlMs === undefined
        ? this.#client.set(k, value, 'NX')
        : this.#client.set(k, value, 'PX', Math.ceil(ttlMs), 'NX'),
    );
    return r === 'OK';
  }

  async take(key: string): Promise<string | undefined> {
    checkKeyAndTtl(key);
    const v = await this.#run('take', () => this.#scripts.gatehouseTake(this.#prefix + key));
    return v ?? undefined;
  }

  async delete(key: string): Promise<void> {
    checkKeyAndTtl(key);
    await this.#run('delete', () => this.#client.del(this.#prefix + key));
  }

  async incr(key: string, by = 1, ttlMs?: number): Promise<number> {
    checkKeyAndTtl(key, ttlMs);
    if (!Number.isSafeInteger(by)) throw new TypeError(`incr step must be an integer, got ${by}`);
    const ttl = ttlMs === undefined ? 0 : Math.ceil(ttlMs);
    const v = await this.#run('incr', () => this.#scripts.gatehouseIncr(this.#prefix + key, by, ttl));
    return Number(v);
  }

  async setAdd(key: string, member: string, ttlMs?: number): Promise<void> {
    checkKeyAndTtl(key, ttlMs);
    const k = this.#prefix + key;
    await this.#run('setAdd', async () => {
      const multi = this.#client.multi().sadd(k, member);
      if (ttlMs !== undefined) multi.pexpire(k, Math.ceil(ttlMs));
      const results = await multi.exec();
      const failed = results?.find(([err]) => err);
      if (failed) throw failed[0];
    });
  }

  async setRemove(key: string, member: string): Promise<void> {
    checkKeyAndTtl(key);
    await this.#run('setRemove', () => this.#client.srem(this.#prefix + key, member));
  }

  async setMembers(key: string): Promise<string[]> {
    checkKeyAndTtl(key);
    return this.#run('setMembers', () => this.#client.smembers(this.#prefix + key));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, 1000);
      });
      await Promise.race([this.#client.quit().catch(() => undefined), deadline]);
      clearTimeout(timer);
    } finally {
      this.#client.disconnect();
    }
  }

  async #run<T>(op: string, fn: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new StateStoreError('state store is closed');
    try {
      return await fn();
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.#logger.warn({ op, err: message, store: this.#where }, 'state store operation failed');
      throw new StateStoreError(`state store ${op} failed: ${message}`, err);
    }
  }
}

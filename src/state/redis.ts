/**
 * The Redis state store, shared by every instance of the gateway. Keys are prefixed with `gatehouse:`.
 * Commands time out instead of queueing forever, so a Redis outage turns into `StateStoreError` (503)
 * and callers fail closed; the client keeps reconnecting in the background.
 *
 * Health is known, not discovered per request (a circuit breaker): after a connection error, a closed
 * connection or a command that timed out, the store is unavailable; the calls waiting for Redis and
 * every later call fail at once, with no wait on a timeout, until Redis answers again (the reconnected
 * client's `ready`, or the PING sent every `probeInterval`). The same PING, sent while Redis is
 * healthy, notices a Redis that hangs (a stopped process, a partition) within `probeTimeout`, without
 * waiting for a request to time out.
 *
 * Revocations travel over Redis pub/sub on a dedicated subscriber connection (a subscribed connection
 * runs no other command). The feed is live only while that connection is subscribed and Redis is
 * available; any change of either resets the session caches of this process.
 */
import { randomBytes } from 'node:crypto';
import { Redis, ReplyError } from 'ioredis';
import type { Logger } from '../observe/log.js';
import { stateStoreUp } from '../observe/metrics.js';
import { RevocationFeed } from './revocations.js';
import {
  checkKeyAndTtl,
  checkLimit,
  type LimitResult,
  NOT_REFUSED,
  type QuotaCheck,
  type RateCheck,
  type StateStore,
  StateStoreError,
} from './types.js';

/** Options of the Redis store. */
export interface RedisStoreOptions {
  /** Time allowed to establish a connection, in ms (default 2000). */
  connectTimeout?: number;
  /** Time allowed for one command, in ms, including waiting for a connection (default 2000). */
  commandTimeout?: number;
  /** Key prefix (default `gatehouse:`); the revocation channel is `<prefix>revocations`. */
  prefix?: string;
  /** How often Redis is checked with a PING, healthy or not, in ms (default 1000). */
  probeInterval?: number;
  /** How long that PING may take before Redis counts as unavailable, in ms (default `commandTimeout`). */
  probeTimeout?: number;
}

// A tag is base64url (see the session manager); anything else on the channel is ignored.
const TAG = /^[A-Za-z0-9_-]{1,128}$/;

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

// The limit steps of several calls (the calls of one event-loop turn, in the order they were made),
// each one step of `limitStep` (types.ts), formula for formula, on Redis's clock so that instances whose
// clocks differ enforce one limit. ARGV: the deadline (ms on Redis's clock, 0: none), the number of
// calls, then per call: 1 or 0 (a rate?), intervalMs, burst, maxWaitMs, the number of quotas, then
// limit, cost, ttlMs of each quota. KEYS: per call, the rate's key (when it has one), then one key per
// quota. Past the deadline the caller has given up (a hung Redis ran the calls late): nothing changes
// and the reply is {now, EXPIRED}. Otherwise {now, then per call refusedBy, waitMs, remaining, resetMs,
// used...}: integers as they are, the usages as strings, since Redis truncates a Lua number to an
// integer; a call whose counter is not a number gives {ERROR, message, 0, 0, 0...} and changes nothing,
// without failing the others. Writes after TIME need effects replication, the default since Redis 5;
// the call turns it on in 3.2 and 4 and does nothing since 7.
const LIMIT = `if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local deadline = tonumber(ARGV[1])
if deadline > 0 and now > deadline then return {now, -3} end
local out = {now}
local function num(v)
  local n = tonumber(v)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then return nil end
  return n
end
local function one(k, a)
  local rated = ARGV[a] == '1'
  local n = tonumber(ARGV[a + 4])
  local first = rated and k + 1 or k
  local function failed(key)
    local r = {-4, 'value of ' .. key .. ' is not a number', 0, 0}
    for i = 1, n do r[4 + i] = '0' end
    return r
  end
  local tat
  if rated then
    local v = redis.call('GET', KEYS[k])
    if v then
      tat = num(v)
      if tat == nil then return failed(KEYS[k]) end
    end
  end
  local usage, counts = {}, {}
  for i = 1, n do
    local key = KEYS[first + i - 1]
    local v = redis.call('GET', key)
    if v then
      counts[i] = num(v)
      if counts[i] == nil then return failed(key) end
      usage[i] = v
    else
      counts[i], usage[i] = 0, '0'
    end
  end
  local function answer(refusedBy, waitMs, remaining, resetMs)
    local r = {refusedBy, waitMs, remaining, resetMs}
    for i = 1, n do r[4 + i] = usage[i] end
    return r
  end
  local waitMs, remaining, resetMs, newTat = 0, 0, 0, nil
  if rated then
    local interval, burst, maxWait = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local base = now
    if tat ~= nil and tat >= now then base = tat end
    newTat = base + interval
    local wait = newTat - now - burst * interval
    if wait > maxWait then return answer(-1, math.ceil(wait), 0, math.ceil(base - now)) end
    if wait > 0 then waitMs = math.ceil(wait) end
    remaining = math.max(0, math.floor((now + burst * interval - newTat) / interval))
    resetMs = math.ceil(newTat - now)
  end
  for i = 1, n do
    local limit, cost = tonumber(ARGV[a + 2 + 3 * i]), tonumber(ARGV[a + 3 + 3 * i])
    local u = counts[i]
    local refused
    if cost > 0 then refused = u + cost > limit else refused = u >= limit end
    if refused then return answer(i - 1, 0, remaining, resetMs) end
  end
  if rated then
    -- The TAT is only needed until it is in the past: then the bucket is full anyway.
    local px = math.max(1, math.ceil(newTat - now))
    redis.call('SET', KEYS[k], string.format('%.3f', newTat), 'PX', string.format('%d', px))
  end
  for i = 1, n do
    local cost = ARGV[a + 3 + 3 * i]
    if tonumber(cost) ~= 0 then
      local key = KEYS[first + i - 1]
      usage[i] = redis.call('INCRBYFLOAT', key, cost)
      if redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, ARGV[a + 4 + 3 * i]) end
    end
  end
  return answer(-2, waitMs, remaining, resetMs)
end
local k, a = 1, 3
for c = 1, tonumber(ARGV[2]) do
  local rated = ARGV[a] == '1'
  local n = tonumber(ARGV[a + 4])
  local r = one(k, a)
  for i = 1, #r do out[#out + 1] = r[i] end
  k = k + n + (rated and 1 or 0)
  a = a + 5 + 3 * n
end
return out`;

// Gives back one admission of LIMIT that nobody waits for any more (see `RedisStore.limit`): the TAT
// goes back one interval (deleted when that is past: the bucket is full then anyway), and every quota
// counter that still exists gives back its cost. KEYS as LIMIT's; ARGV: 1 or 0 (a rate?), intervalMs,
// then the cost of each quota.
const REFUND = `if redis.replicate_commands then redis.replicate_commands() end
local rated = ARGV[1] == '1'
local first = rated and 2 or 1
if rated then
  local tat = tonumber(redis.call('GET', KEYS[1]))
  if tat then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
    tat = tat - tonumber(ARGV[2])
    if tat > now then
      redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', string.format('%d', math.ceil(tat - now)))
    else
      redis.call('DEL', KEYS[1])
    end
  end
end
for i = first, #KEYS do
  local cost = ARGV[3 + i - first]
  if tonumber(cost) ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCRBYFLOAT', KEYS[i], '-' .. cost)
  end
end
return 1`;

/** The first `refusedBy` of a LIMIT reply that came after its deadline (nothing was changed). */
const EXPIRED = -3;
/** `refusedBy` of a call of LIMIT whose counter held something else than a number. */
const NOT_A_NUMBER = -4;

/** A `limit` call waiting for the LIMIT script call of its event-loop turn. */
interface PendingLimit {
  readonly rate: RateCheck | undefined;
  readonly quotas: readonly QuotaCheck[];
  /** Its keys (prefixed) and its part of ARGV. */
  readonly keys: string[];
  readonly argv: Array<string | number>;
  resolve(result: LimitResult): void;
  reject(err: Error): void;
}

// INCRBYFLOAT stores a plain decimal (never an exponent), which Number() parses back.
const CHARGE = `local v = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v`;

interface Scripts {
  gatehouseTake(key: string): Promise<string | null>;
  gatehouseIncr(key: string, by: number, ttlMs: number): Promise<number>;
  /** `LIMIT`; the first argument is the number of keys. */
  gatehouseLimit(...args: Array<string | number>): Promise<Array<number | string>>;
  gatehouseCharge(key: string, amount: number, ttlMs: number): Promise<string>;
  /** `REFUND`; the first argument is the number of keys. */
  gatehouseRefund(...args: Array<string | number>): Promise<number>;
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
  readonly revocations: RevocationFeed;
  readonly #client: Redis;
  readonly #subscriber: Redis;
  readonly #scripts: Scripts;
  readonly #prefix: string;
  readonly #channel: string;
  /** Marks this process's own messages, which Redis also delivers back to its subscriber. */
  readonly #origin = randomBytes(9).toString('base64url');
  readonly #logger: Logger;
  readonly #where: string;
  readonly #probeTimer: NodeJS.Timeout;
  readonly #probeTimeout: number;
  readonly #commandTimeout: number;
  /**
   * Redis's clock minus this process's, in ms, as the last LIMIT reply showed it (undefined until one
   * came on the current connection). Redis read its clock after the call was sent, so this errs late,
   * and so do the deadlines computed with it: a call is never expired while this process still waits.
   */
  #clockOffset: number | undefined;
  /** The limit calls of this event-loop turn, sent together by `#flushLimits`. */
  #batch: PendingLimit[] = [];
  // Optimistic until the first failure: the first commands wait for the connection (connectTimeout).
  #available = true;
  #subscribed = false;
  /** The connections whose last PING is still unanswered. */
  readonly #pinging = new Set<Redis>();
  /** Rejects of the calls waiting for Redis right now. */
  readonly #waiting = new Set<(err: Error) => void>();
  #closed = false;

  constructor(url: string, logger: Logger, options: RedisStoreOptions = {}) {
    this.#logger = logger;
    this.#prefix = options.prefix ?? 'gatehouse:';
    this.#channel = `${this.#prefix}revocations`;
    this.#where = redactRedisUrl(url);
    const commandTimeout = options.commandTimeout ?? 2000;
    this.#commandTimeout = commandTimeout;
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
    // No numberOfKeys: a limit has a rate key or not and any number of quotas.
    this.#client.defineCommand('gatehouseLimit', { lua: LIMIT });
    this.#client.defineCommand('gatehouseCharge', { numberOfKeys: 1, lua: CHARGE });
    this.#client.defineCommand('gatehouseRefund', { lua: REFUND });
    this.#scripts = this.#client as unknown as Scripts;
    this.revocations = new RevocationFeed(false, (tags) => this.#publish(tags));
    // ioredis reports every failed reconnection as an error; the transitions are logged once each.
    this.#client.on('error', (err: Error) => this.#down(err));
    this.#client.on('close', () => this.#down(undefined));
    this.#client.on('end', () => this.#down(undefined));
    this.#client.on('ready', () => {
      // A new connection may reach another server, with another clock: learn it before the first limit.
      this.#clockOffset = undefined;
      this.#learnClock();
      this.#up();
    });

    // Subscribing is done here on every `ready`, so a resubscription is always noticed (and the caches reset).
    this.#subscriber = this.#client.duplicate({ autoResubscribe: false, connectionName: 'gatehouse-sub' });
    this.#subscriber.on('error', () => this.#unsubscribed());
    this.#subscriber.on('close', () => this.#unsubscribed());
    this.#subscriber.on('end', () => this.#unsubscribed());
    this.#subscriber.on('ready', () => this.#subscribe());
    this.#subscriber.on('message', (channel: string, message: string) => this.#heard(channel, message));

    stateStoreUp.set({ store: 'redis' }, 1);
    this.#probeTimeout = options.probeTimeout ?? commandTimeout;
    this.#probeTimer = setInterval(() => this.#probe(), options.probeInterval ?? 1000);
    this.#probeTimer.unref();
  }

  /** False while Redis is known to be unreachable: calls fail at once (see the module comment). */
  get available(): boolean {
    return this.#available && !this.#closed;
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

  /**
   * The limit calls of one event-loop turn go to Redis together, in one LIMIT script call (one round
   * trip, one command to encode and decode for many requests), each still one atomic step in the order
   * it was made. A call that fails leaves no trace, even when a Redis that hung runs it later, after the
   * request was answered without it (503 for `onStoreError: deny`): the script call carries the moment
   * this process stops waiting for it (the command timeout) on Redis's clock, and past it the script
   * changes nothing; a call abandoned earlier (the hang became known) whose admission still comes in is
   * given back (`REFUND`).
   */
  limit(rate: RateCheck | undefined, quotas: readonly QuotaCheck[]): Promise<LimitResult> {
    try {
      checkLimit(rate, quotas);
      if (this.#closed) throw new StateStoreError('state store is closed');
      // The outage is known and logged: fail at once instead of waiting for another timeout.
      if (!this.#available) throw new StateStoreError('state store limit failed: Redis is unavailable');
    } catch (err) {
      return Promise.reject(err);
    }
    const p = this.#prefix;
    const keys: string[] = [];
    const argv: Array<string | number> = [];
    if (rate === undefined) argv.push(0, 0, 0, 0, quotas.length);
    else {
      keys.push(p + rate.key);
      argv.push(1, rate.intervalMs, rate.burst, rate.maxWaitMs, quotas.length);
    }
    for (const q of quotas) {
      keys.push(p + q.key);
      argv.push(q.limit, q.cost, Math.ceil(q.ttlMs));
    }
    return new Promise<LimitResult>((resolve, reject) => {
      this.#batch.push({ rate, quotas, keys, argv, resolve, reject });
      if (this.#batch.length === 1) setImmediate(this.#flushLimits);
    });
  }

  /** Sends the limit calls gathered in this event-loop turn as one LIMIT script call. */
  readonly #flushLimits = (): void => {
    const batch = this.#batch;
    this.#batch = [];
    if (batch.length === 0) return;
    const sent = Date.now();
    const offset = this.#clockOffset;
    const deadline = offset === undefined ? 0 : Math.ceil(sent + this.#commandTimeout + offset);
    const keys: string[] = [];
    const argv: Array<string | number> = [deadline, batch.length];
    for (const call of batch) {
      for (const k of call.keys) keys.push(k);
      for (const a of call.argv) argv.push(a);
    }
    const sentCall: { late?: Promise<Array<number | string>> } = {};
    this.#run('limit', () => {
      sentCall.late = this.#scripts.gatehouseLimit(keys.length, ...keys, ...argv);
      return sentCall.late;
    }).then(
      (r) => this.#settleLimits(batch, r, sent),
      (err: unknown) => {
        const failure = err instanceof Error ? err : new StateStoreError(String(err));
        for (const call of batch) call.reject(failure);
        // Abandoned: a late answer still comes in when Redis resumes before the deadline.
        sentCall.late?.then(
          (late) => {
            if (Number(late[1]) === EXPIRED) return;
            let at = 1;
            for (const call of batch) {
              if (Number(late[at]) === NOT_REFUSED) this.#refund(call.keys, call.rate, call.quotas);
              at += 4 + call.quotas.length;
            }
          },
          () => undefined,
        );
      },
    );
  };

  /** Hands each call of a LIMIT reply its result. */
  #settleLimits(batch: readonly PendingLimit[], r: Array<number | string>, sent: number): void {
    this.#clockOffset = Number(r[0]) - sent;
    if (Number(r[1]) === EXPIRED) {
      const late = new StateStoreError(
        'state store limit failed: Redis ran it after this process stopped waiting',
      );
      for (const call of batch) call.reject(late);
      return;
    }
    let at = 1;
    for (const call of batch) {
      const n = call.quotas.length;
      const refusedBy = Number(r[at]);
      if (refusedBy === NOT_A_NUMBER) {
        const message = String(r[at + 1]);
        this.#logger.warn({ op: 'limit', err: message, store: this.#where }, 'state store operation failed');
        call.reject(new StateStoreError(`state store limit failed: ${message}`));
      } else {
        const used: number[] = [];
        for (let i = 0; i < n; i++) used.push(Number(r[at + 4 + i]));
        call.resolve({
          refusedBy,
          waitMs: Number(r[at + 1]),
          remaining: Number(r[at + 2]),
          resetMs: Number(r[at + 3]),
          used,
        });
      }
      at += 4 + n;
    }
  }

  /**
   * Reads Redis's clock once (TIME), so that even the first limit call of a connection carries its
   * deadline. The offset errs late (Redis read its clock after the call was sent), as the one a LIMIT
   * reply gives; a failure leaves it unknown until the first reply.
   */
  #learnClock(): void {
    const sent = Date.now();
    this.#client.time().then(
      ([seconds, micros]) => {
        this.#clockOffset ??= Number(seconds) * 1000 + Number(micros) / 1000 - sent;
      },
      () => undefined,
    );
  }

  /** Gives back an admission of `limit` that came in after the call had failed. */
  #refund(keys: readonly string[], rate: RateCheck | undefined, quotas: readonly QuotaCheck[]): void {
    const argv: number[] = [rate === undefined ? 0 : 1, rate?.intervalMs ?? 0];
    for (const q of quotas) argv.push(q.cost);
    // Not through #run: the late answer shows that Redis works, before the health check may say so.
    this.#scripts.gatehouseRefund(keys.length, ...keys, ...argv).catch((err: unknown) => {
      this.#logger.warn(
        { err: err instanceof Error ? err.message : String(err), store: this.#where },
        'state store: could not give back a rate-limit or quota admission that came in after its call failed',
      );
    });
  }

  async charge(key: string, amount: number, ttlMs: number): Promise<number> {
    checkKeyAndTtl(key, ttlMs);
    if (ttlMs === undefined) throw new TypeError('charge needs the ttl of the counter it may create');
    if (!Number.isFinite(amount)) throw new TypeError(`charge must be a finite number, got ${amount}`);
    const v = await this.#run('charge', () =>
      this.#scripts.gatehouseCharge(this.#prefix + key, amount, Math.ceil(ttlMs)),
    );
    return Number(v);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#probeTimer);
    this.#subscribed = false;
    this.revocations.reset(false);
    try {
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, 1000);
      });
      await Promise.race([
        Promise.all([
          this.#client.quit().catch(() => undefined),
          this.#subscriber.quit().catch(() => undefined),
        ]),
        deadline,
      ]);
      clearTimeout(timer);
    } finally {
      this.#client.disconnect();
      this.#subscriber.disconnect();
    }
  }

  async #run<T>(op: string, fn: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new StateStoreError('state store is closed');
    // The outage is known and logged: fail at once instead of waiting for another timeout.
    if (!this.#available) throw new StateStoreError(`state store ${op} failed: Redis is unavailable`);
    let abandon: ((err: Error) => void) | undefined;
    try {
      return await new Promise<T>((resolve, reject) => {
        abandon = reject;
        this.#waiting.add(reject);
        fn().then(resolve, reject);
      });
    } catch (err) {
      if (err instanceof StateStoreError) throw err;
      // An error reply (wrong type, script error) comes from a Redis that works; anything else does not.
      if (!(err instanceof ReplyError)) this.#down(err);
      const message = err instanceof Error ? err.message : String(err);
      this.#logger.warn({ op, err: message, store: this.#where }, 'state store operation failed');
      throw new StateStoreError(`state store ${op} failed: ${message}`, err);
    } finally {
      if (abandon !== undefined) this.#waiting.delete(abandon);
    }
  }

  #down(err: unknown): void {
    if (this.#closed || !this.#available) return;
    this.#available = false;
    // Calls already waiting on a Redis that hangs would wait for their command timeout: fail them now.
    for (const abandon of this.#waiting)
      abandon(new StateStoreError('state store failed: Redis became unavailable'));
    this.#waiting.clear();
    const message =
      err instanceof Error ? err.message : err === undefined ? 'connection closed' : String(err);
    this.#logger.error({ err: message, store: this.#where }, 'state store (Redis) unavailable');
    stateStoreUp.set({ store: 'redis' }, 0);
    this.#feedChanged();
  }

  #up(): void {
    if (this.#closed || this.#available) return;
    this.#available = true;
    this.#logger.info({ store: this.#where }, 'state store (Redis) available again');
    stateStoreUp.set({ store: 'redis' }, 1);
    this.#feedChanged();
    // The subscriber may have come back first, or never noticed the outage (Redis stopped, not gone).
    if (!this.#subscribed) this.#subscribe();
  }

  /** Live while both connections work; every change resets the session caches (see RevocationFeed). */
  #feedChanged(): void {
    const live = this.#available && this.#subscribed && !this.#closed;
    if (live !== this.revocations.live) this.revocations.reset(live);
  }

  #subscribe(): void {
    if (this.#closed || this.#subscriber.status !== 'ready') return;
    this.#subscriber.subscribe(this.#channel).then(
      () => {
        if (this.#closed || this.#subscribed) return;
        this.#subscribed = true;
        this.#feedChanged();
      },
      (err: unknown) => {
        this.#logger.warn(
          { err: err instanceof Error ? err.message : String(err), store: this.#where },
          'state store (Redis): subscribing to revocations failed; retrying',
        );
      },
    );
  }

  /**
   * Checks both connections with a PING, each on its own (a hung subscriber must not stop the checks
   * of the other connection). A failure, or no answer within `probeTimeout`, makes the store
   * unavailable (or the feed not live); a success brings it back. A PING that hangs is answered as soon
   * as Redis runs again, which is then noticed at once; meanwhile no second one is sent.
   */
  #probe(): void {
    if (this.#closed) return;
    this.#ping(
      this.#client,
      () => this.#up(),
      (err) => this.#down(err),
    );
    this.#ping(
      this.#subscriber,
      () => {
        if (!this.#subscribed) this.#subscribe();
      },
      () => this.#unsubscribed(),
    );
  }

  /** PINGs `connection` unless its last PING is still unanswered; `failed` also when none comes in time. */
  #ping(connection: Redis, answered: () => void, failed: (err: unknown) => void): void {
    if (this.#pinging.has(connection)) return;
    this.#pinging.add(connection);
    const late = setTimeout(() => failed(new Error('no answer to PING')), this.#probeTimeout);
    late.unref();
    connection
      .ping()
      .then(
        () => {
          clearTimeout(late);
          answered();
        },
        (err: unknown) => {
          clearTimeout(late);
          failed(err);
        },
      )
      .finally(() => this.#pinging.delete(connection));
  }

  /** The subscriber connection failed or hangs: revocations may be missed until it subscribes again. */
  #unsubscribed(): void {
    if (!this.#subscribed) return;
    this.#subscribed = false;
    this.#feedChanged();
  }

  async #publish(tags: readonly string[]): Promise<void> {
    await this.#run('publish', () =>
      this.#client.publish(this.#channel, `${this.#origin} ${tags.join(' ')}`),
    );
  }

  #heard(channel: string, message: string): void {
    if (channel !== this.#channel) return;
    const parts = message.split(' ');
    if (parts[0] === this.#origin) return;
    const tags: string[] = [];
    for (let i = 1; i < parts.length; i++) if (TAG.test(parts[i]!)) tags.push(parts[i]!);
    this.revocations.deliver(tags);
  }
}

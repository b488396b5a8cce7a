/**
 * The state store factory: `memory` (default, one instance) or a `redis://` / `rediss://` URL (shared
 * by every instance, so sessions, login state and counters survive a hop between instances).
 */
import type { Logger } from '../observe/log.js';
import { MemoryStore, type MemoryStoreOptions } from './memory.js';
import { RedisStore, type RedisStoreOptions } from './redis.js';
import type { StateStore } from './types.js';

export { MemoryStore, type MemoryStoreOptions } from './memory.js';
export { RedisStore, type RedisStoreOptions, redactRedisUrl } from './redis.js';
export { type PublishTags, RevocationFeed } from './revocations.js';
export { type StateStore, StateStoreError } from './types.js';

/** Options for `createStateStore`. */
export interface StateStoreOptions {
  memory?: MemoryStoreOptions;
  redis?: RedisStoreOptions;
}

/**
 * Creates the store named by `state.store`: `memory` or a `redis://` / `rediss://` URL. The Redis store
 * connects in the background; a failing Redis surfaces as `StateStoreError` from each call (logged).
 * Throws a TypeError for anything else (the configuration schema already rejects it).
 */
export function createStateStore(url: string, logger: Logger, options: StateStoreOptions = {}): StateStore {
  if (url === 'memory') return new MemoryStore(options.memory, logger);
  if (/^rediss?:\/\//i.test(url) && URL.canParse(url)) return new RedisStore(url, logger, options.redis);
  throw new TypeError(`state.store must be "memory" or a redis:// URL, got "${url}"`);
}

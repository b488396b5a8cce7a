/**
 * Server-side sessions for people signed in through OIDC. The cookie carries only a random session id
 * and its HMAC-SHA256 (sealed with the first of `session.secrets`, accepted with any of them), so it is
 * about 90 bytes whatever the identity provider puts in its tokens. Everything else (identity, tokens)
 * lives in the state store, which makes sessions revocable and shared between instances.
 *
 * Hot path: a small in-process cache of verified and loaded sessions (a few seconds) avoids a store
 * round trip per request; `lastSeen` is written at most once per `touchInterval`. The cache never
 * outlives a revocation made elsewhere: every revocation (logout, logout everywhere, a failed refresh,
 * an expiry) and every change of a session is published through the store's revocation feed to the
 * other processes sharing the store, which drop their copy before their next answer; while that link
 * is down the cache is not used at all (see `state/revocations.ts`).
 */
import { createHash, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { ConfigSettingError } from '../errors.js';
import type { RevocationFeed } from '../state/revocations.js';
import type { StateStore } from '../state/types.js';
import type { Identity } from './types.js';

/** Session settings from `identity.session`, with secrets already resolved. */
export interface SessionSettings {
  /** Sealing secrets: the first seals, any of them unseals (rotation). At least 32 characters each. */
  readonly secrets: readonly string[];
  /** Absolute lifetime in ms. */
  readonly maxAge: number;
  /** Sliding lifetime in ms: the session ends when unused this long. */
  readonly idleTimeout: number;
  /** Cookie name. */
  readonly cookie: string;
  /** Cookie Domain attribute; undefined for a host-only cookie. */
  readonly domain?: string | undefined;
}

/** Tuning knobs; the defaults suit production. */
export interface SessionManagerOptions {
  /** Clock in ms since the epoch (tests freeze it). */
  now?: () => number;
  /** Least time between two writes of `lastSeen`, in ms (default 60 s, at most a tenth of idleTimeout). */
  touchInterval?: number;
  /** How long a loaded session is trusted without asking the store again, in ms (default 5 s). */
  cacheTtl?: number;
  /** Most sessions cached in the process (default 10 000). */
  cacheSize?: number;
}

/** Shortest accepted sealing secret: 32 characters (256 bits when random). */
export const MIN_SECRET_LENGTH = 32;

/** Tokens kept server side for a session. */
export interface SessionTokens {
  readonly accessToken: string | undefined;
  readonly refreshToken: string | undefined;
  readonly idToken: string | undefined;
  /** When the access token expires (ms since the epoch), if the provider said. */
  readonly expiresAt: number | undefined;
}

/** Who signed in, as the identity provider described them. */
export interface SessionProfile {
  /** Name of the OIDC provider (config `identity.providers[].name`). */
  readonly provider: string;
  readonly subject: string;
  readonly user: string;
  readonly email: string | undefined;
  readonly groups: readonly string[];
  /** ID token and userinfo claims, without protocol-only claims (nonce, at_hash, ...). */
  readonly claims: Readonly<Record<string, unknown>>;
}

/** A session as stored (JSON) under `session:<id>`. */
export interface SessionRecord extends SessionProfile {
  readonly v: 1;
  readonly createdAt: number;
  readonly lastSeen: number;
  /** Absolute end: `createdAt + maxAge`. */
  readonly expiresAt: number;
  readonly tokens: SessionTokens;
}

/** The outcome of looking a session up from a Cookie header. */
export type SessionLookup =
  | { readonly kind: 'none' }
  | {
      readonly kind: 'invalid';
      readonly reason: 'session-invalid' | 'session-expired';
      readonly message: string;
    }
  | {
      readonly kind: 'ok';
      readonly id: string;
      readonly record: SessionRecord;
      readonly identity: Identity;
      /** The cookie was sealed with an older secret: send `setCookie` again to move it to the first. */
      readonly reseal: boolean;
    };

/** Attributes of a cookie set by the gateway. */
export interface CookieOptions {
  /** Max-Age in seconds; 0 deletes the cookie. */
  maxAge: number;
  path: string;
  /** The request came over TLS (adds Secure). */
  tls: boolean;
  domain?: string | undefined;
}

/** A session setting that cannot work (weak secret, bad cookie name). */
export class SessionConfigError extends ConfigSettingError {
  constructor(path: string, detail: string) {
    super('GH_SESSION_CONFIG', path, detail);
  }
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const DOMAIN = /^\.?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/i;
// 32 random bytes and a 32-byte MAC, both base64url: `<id>.<mac>`.
const SEALED = /^[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}$/;
const MAC_LABEL = 'gatehouse-session-cookie:';

/**
 * Serializes a Set-Cookie value. Always HttpOnly and SameSite=Lax (sent on top-level navigations from
 * the identity provider, not on cross-site subrequests); Secure on TLS and for `__Secure-`/`__Host-` names.
 */
export function serializeCookie(name: string, value: string, o: CookieOptions): string {
  let out = `${name}=${value}; Path=${o.path}; Max-Age=${Math.max(0, Math.floor(o.maxAge))}; HttpOnly; SameSite=Lax`;
  if (o.maxAge <= 0) out += '; Expires=Thu, 01 Jan 1970 00:00:00 GMT';
  if (o.tls || name.startsWith('__Secure-') || name.startsWith('__Host-')) out += '; Secure';
  if (o.domain !== undefined) out += `; Domain=${o.domain}`;
  return out;
}

/** Every value of the cookie `name` in a Cookie header (browsers may send several). */
export function cookieValues(header: string | undefined, name: string): string[] {
  const out: string[] = [];
  if (header === undefined || !header.includes(name)) return out;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() !== name) continue;
    let value = part.slice(eq + 1).trim();
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
    out.push(value);
  }
  return out;
}

/**
 * The Cookie header without the named cookies (undefined when nothing is left), so the gateway's own
 * cookies are not passed upstream.
 */
export function removeCookies(header: string | undefined, names: ReadonlySet<string>): string | undefined {
  if (header === undefined) return undefined;
  let hit = false;
  for (const n of names) if (header.includes(n)) hit = true;
  if (!hit) return header;
  const kept: string[] = [];
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    const name = (eq < 0 ? part : part.slice(0, eq)).trim();
    if (name === '' || names.has(name)) continue;
    kept.push(part.trim());
  }
  return kept.length === 0 ? undefined : kept.join('; ');
}

interface CacheEntry {
  readonly id: string;
  /** What revocations of this session are published as (`sessionTag`). */
  readonly tag: string;
  readonly record: SessionRecord;
  readonly checkedAt: number;
  /** The answer for a cache hit, built once per load so hits allocate nothing. */
  readonly result: SessionLookup;
}

/** Creates, finds, refreshes and revokes sessions; see the module comment. */
export class SessionManager {
  readonly settings: SessionSettings;
  readonly #store: StateStore;
  readonly #keys: Buffer[];
  readonly #now: () => number;
  readonly #touchInterval: number;
  readonly #cacheTtl: number;
  readonly #cacheSize: number;
  readonly #cache = new Map<string, CacheEntry>();
  /** The revocation feed's `seq` this cache has caught up with (-1: not yet). */
  #seen = -1;

  constructor(store: StateStore, settings: SessionSettings, options: SessionManagerOptions = {}) {
    if (settings.secrets.length === 0)
      throw new SessionConfigError('identity.session.secrets', 'at least one secret is required');
    settings.secrets.forEach((secret, i) => {
      if (typeof secret !== 'string' || secret.length < MIN_SECRET_LENGTH) {
        throw new SessionConfigError(
          `identity.session.secrets.${i}`,
          `a sealing secret needs at least ${MIN_SECRET_LENGTH} characters (e.g. openssl rand -base64 32)`,
        );
      }
    });
    if (!TOKEN.test(settings.cookie))
      throw new SessionConfigError(
        'identity.session.cookie',
        `"${settings.cookie}" is not a valid cookie name`,
      );
    if (settings.domain !== undefined && !DOMAIN.test(settings.domain)) {
      throw new SessionConfigError('identity.session.domain', `"${settings.domain}" is not a domain name`);
    }
    if (settings.domain !== undefined && settings.cookie.startsWith('__Host-')) {
      throw new SessionConfigError('identity.session.domain', 'a __Host- cookie cannot have a Domain');
    }
    if (!(settings.maxAge > 0) || !(settings.idleTimeout > 0)) {
      throw new SessionConfigError('identity.session', 'maxAge and idleTimeout must be positive');
    }
    this.settings = settings;
    this.#store = store;
    // A key per secret, derived once; the label keeps these MACs apart from any other use of the secret.
    this.#keys = settings.secrets.map((s) =>
      Buffer.from(hkdfSync('sha256', s, 'gatehouse', 'session cookie v1', 32)),
    );
    this.#now = options.now ?? Date.now;
    // A use is recorded up to touchInterval late, so the session may end that much before idleTimeout
    // after its last use: a tenth of idleTimeout at most, else a 1m idleTimeout would end active sessions.
    this.#touchInterval = Math.min(options.touchInterval ?? 60_000, settings.idleTimeout / 10);
    this.#cacheTtl = options.cacheTtl ?? 5_000;
    this.#cacheSize = Math.max(1, options.cacheSize ?? 10_000);
  }

  /** The cookie value for a session id, sealed with the first secret. */
  seal(id: string): string {
    return `${id}.${this.#mac(0, id).toString('base64url')}`;
  }

  /** The session id in a cookie value and the index of the secret that sealed it; undefined if forged. */
  unseal(value: string): { id: string; keyIndex: number } | undefined {
    if (!SEALED.test(value)) return undefined;
    const dot = value.indexOf('.');
    const id = value.slice(0, dot);
    const mac = value.slice(dot + 1);
    const presented = Buffer.from(mac, 'base64url');
    // 43 base64url characters carry 258 bits: only the spelling with the 2 spare bits zero is the seal,
    // so a sealed value has exactly one form (no four spellings of every cookie).
    if (presented.length !== 32 || presented.toString('base64url') !== mac) return undefined;
    for (let i = 0; i < this.#keys.length; i++) {
      if (timingSafeEqual(presented, this.#mac(i, id))) return { id, keyIndex: i };
    }
    return undefined;
  }

  /** Set-Cookie value that gives the browser this session (Max-Age = the session's remaining life). */
  setCookie(id: string, record: Pick<SessionRecord, 'expiresAt'>, tls: boolean): string {
    const maxAge = Math.max(1, Math.floor((record.expiresAt - this.#now()) / 1000));
    return serializeCookie(this.settings.cookie, this.seal(id), {
      maxAge,
      path: '/',
      tls,
      domain: this.settings.domain,
    });
  }

  /** Set-Cookie value that removes the session cookie. */
  clearCookie(tls: boolean): string {
    return serializeCookie(this.settings.cookie, '', {
      maxAge: 0,
      path: '/',
      tls,
      domain: this.settings.domain,
    });
  }

  /** Stores a new session and returns its id (32 random bytes, base64url). */
  async create(
    profile: SessionProfile,
    tokens: SessionTokens,
  ): Promise<{ id: string; record: SessionRecord }> {
    const now = this.#now();
    const id = randomBytes(32).toString('base64url');
    const record: SessionRecord = {
      v: 1,
      provider: profile.provider,
      subject: profile.subject,
      user: profile.user,
      email: profile.email,
      groups: [...profile.groups],
      claims: profile.claims,
      createdAt: now,
      lastSeen: now,
      expiresAt: now + this.settings.maxAge,
      tokens,
    };
    await this.#write(id, record, now);
    await this.#store.setAdd(this.#subjectKey(record.provider, record.subject), id, this.settings.maxAge);
    await this.#store.setAdd(SESSION_INDEX, id, this.settings.maxAge);
    return { id, record };
  }

  /**
   * The session named by the Cookie header. `none` without our cookie; `invalid` for a forged cookie or
   * several cookies naming different sessions (`session-invalid`), or a session that ended
   * (`session-expired`). Throws `StateStoreError` when the store cannot answer (the caller fails
   * closed with 503).
   */
  async lookup(cookieHeader: string | undefined): Promise<SessionLookup> {
    const values = cookieValues(cookieHeader, this.settings.cookie);
    if (values.length === 0) return NONE;
    if (values.length > 1 && this.#conflicting(values)) return SESSION_CONFLICT;
    const now = this.#now();
    const feed = this.#store.revocations;
    if (feed.seq !== this.#seen) this.#catchUp(feed);
    // Without the feed a revocation made elsewhere would go unnoticed: every lookup asks the store.
    const trusted = feed.live;
    let expired = false;
    for (const value of values) {
      const cached = trusted ? this.#cache.get(value) : undefined;
      if (cached !== undefined && now - cached.checkedAt < this.#cacheTtl) {
        if (this.#isExpired(cached.record, now)) {
          await this.revoke(cached.id);
          expired = true;
          continue;
        }
        if (now - cached.record.lastSeen < this.#touchInterval) return cached.result;
      }
      const opened = this.unseal(value);
      if (opened === undefined) continue;
      const seq = feed.seq;
      const loaded = await this.#load(opened.id, now);
      if (loaded === 'expired' || loaded === 'missing') {
        this.#cache.delete(value);
        expired = true;
        continue;
      }
      const result: SessionLookup = Object.freeze({
        kind: 'ok',
        id: opened.id,
        record: loaded,
        identity: identityOf(loaded),
        reseal: opened.keyIndex !== 0,
      });
      // A revocation heard while the record was read may be this session's: then it is not kept.
      if (feed.live && feed.seq === seq) {
        this.#remember(value, {
          id: opened.id,
          tag: sessionTag(opened.id),
          record: loaded,
          checkedAt: now,
          result,
        });
      }
      return result;
    }
    return expired ? SESSION_EXPIRED : SESSION_INVALID;
  }

  /**
   * True when the cookies name more than one session, or are too many to check. Two sessions in one
   * Cookie header mean a cookie was planted from a sibling host (cookie tossing: a `Domain` cookie, or
   * a longer `Path` that browsers send first), and which one the user holds cannot be told: neither is
   * used. Forged values among them do not count (they name no session); the same session twice is fine.
   */
  #conflicting(values: readonly string[]): boolean {
    if (values.length > MAX_SESSION_COOKIES) return true;
    let id: string | undefined;
    for (const value of values) {
      const opened = this.unseal(value);
      if (opened === undefined) continue;
      if (id === undefined) id = opened.id;
      else if (opened.id !== id) return true;
    }
    return false;
  }

  /** The live session with this id (no cookie involved), or undefined when it ended. */
  async get(id: string): Promise<SessionRecord | undefined> {
    const loaded = await this.#load(id, this.#now());
    return typeof loaded === 'string' ? undefined : loaded;
  }

  /**
   * Replaces a session's record (after a token refresh); its lifetime is unchanged. Every process,
   * this one included (the feed delivers to its own caches too), drops its copy and reads the new
   * record at its next lookup (groups may have changed).
   */
  async update(id: string, record: SessionRecord): Promise<void> {
    await this.#write(id, record, this.#now());
    await this.#announce([id]);
  }

  /**
   * Ends one session: removed from the store, then announced to every process sharing the store, so
   * none of them accepts the cookie from its cache any more.
   */
  async revoke(id: string): Promise<void> {
    this.#forget(id);
    const raw = await this.#store.take(sessionKey(id));
    // Announced once the store no longer has it: a process that hears it and reads again finds nothing.
    await this.#announce([id]);
    const record = raw === undefined ? undefined : parseRecord(raw);
    if (record !== undefined)
      await this.#store.setRemove(this.#subjectKey(record.provider, record.subject), id);
    await this.#store.setRemove(SESSION_INDEX, id);
  }

  /** Ends every session of a subject at a provider (logout everywhere); returns how many ended. */
  async revokeSubject(provider: string, subject: string): Promise<number> {
    const key = this.#subjectKey(provider, subject);
    const ids = await this.#store.setMembers(key);
    let ended = 0;
    try {
      for (const id of ids) {
        this.#forget(id);
        if ((await this.#store.take(sessionKey(id))) !== undefined) ended++;
      }
    } finally {
      await this.#announce(ids);
    }
    await this.#store.delete(key);
    for (const id of ids) await this.#store.setRemove(SESSION_INDEX, id);
    return ended;
  }

  /**
   * The live sessions, most recently used first, at most `limit` of them (the admin API). Reads every
   * session the index names without touching it (listing extends no session); ids whose session has
   * ended are dropped from the index on the way. Sessions created before the index existed are not
   * listed. Throws `StateStoreError` when the store cannot answer.
   */
  async list(limit = 500): Promise<{ sessions: SessionSummary[]; total: number }> {
    const now = this.#now();
    const ids = await this.#store.setMembers(SESSION_INDEX);
    const live: Array<{ id: string; record: SessionRecord }> = [];
    // A few reads at a time: a remote store answers them in parallel without a burst of thousands.
    for (let i = 0; i < ids.length; i += LIST_BATCH) {
      const batch = ids.slice(i, i + LIST_BATCH);
      const raws = await Promise.all(batch.map((id) => this.#store.get(sessionKey(id))));
      for (let j = 0; j < batch.length; j++) {
        const id = batch[j]!;
        const raw = raws[j];
        const record = raw === undefined ? undefined : parseRecord(raw);
        if (record === undefined || this.#isExpired(record, now)) {
          await this.#store.setRemove(SESSION_INDEX, id);
          continue;
        }
        live.push({ id, record });
      }
    }
    live.sort((a, b) => b.record.lastSeen - a.record.lastSeen);
    const sessions = live.slice(0, Math.max(0, limit)).map(({ id, record }) => this.#summary(id, record));
    return { sessions, total: live.length };
  }

  /**
   * Ends the session whose handle (`sessionHandle`) is `handle`, as `revoke` does: every process
   * sharing the store stops accepting it. Returns what it was, or undefined when no live session has
   * that handle.
   */
  async revokeHandle(handle: string): Promise<SessionSummary | undefined> {
    if (!HANDLE.test(handle)) return undefined;
    const ids = await this.#store.setMembers(SESSION_INDEX);
    const id = ids.find((candidate) => sessionHandle(candidate) === handle);
    if (id === undefined) return undefined;
    const record = await this.get(id);
    await this.revoke(id);
    return record === undefined ? undefined : this.#summary(id, record);
  }

  #summary(id: string, record: SessionRecord): SessionSummary {
    return {
      id: sessionHandle(id),
      provider: record.provider,
      subject: record.subject,
      user: record.user,
      email: record.email ?? null,
      groups: [...record.groups],
      createdAt: new Date(record.createdAt).toISOString(),
      lastSeen: new Date(record.lastSeen).toISOString(),
      expiresAt: new Date(
        Math.min(record.expiresAt, record.lastSeen + this.settings.idleTimeout),
      ).toISOString(),
    };
  }

  /** Drops the in-process cache (tests, or after a configuration change). */
  clearCache(): void {
    this.#cache.clear();
  }

  #mac(keyIndex: number, id: string): Buffer {
    return createHmac('sha256', this.#keys[keyIndex]!).update(MAC_LABEL).update(id).digest();
  }

  #isExpired(record: SessionRecord, now: number): boolean {
    return now >= record.expiresAt || now - record.lastSeen >= this.settings.idleTimeout;
  }

  async #load(id: string, now: number): Promise<SessionRecord | 'missing' | 'expired'> {
    const raw = await this.#store.get(sessionKey(id));
    if (raw === undefined) return 'missing';
    const record = parseRecord(raw);
    if (record === undefined || this.#isExpired(record, now)) {
      await this.revoke(id);
      return record === undefined ? 'missing' : 'expired';
    }
    if (now - record.lastSeen < this.#touchInterval) return record;
    const touched: SessionRecord = { ...record, lastSeen: now };
    await this.#write(id, touched, now);
    return touched;
  }

  async #write(id: string, record: SessionRecord, now: number): Promise<void> {
    const ends = Math.min(record.expiresAt, record.lastSeen + this.settings.idleTimeout);
    await this.#store.set(sessionKey(id), JSON.stringify(record), Math.max(1, ends - now));
  }

  #remember(value: string, entry: CacheEntry): void {
    this.#cache.delete(value);
    if (this.#cache.size >= this.#cacheSize) {
      const oldest = this.#cache.keys().next();
      if (!oldest.done) this.#cache.delete(oldest.value);
    }
    this.#cache.set(value, entry);
  }

  #forget(id: string): void {
    for (const [value, entry] of this.#cache) if (entry.id === id) this.#cache.delete(value);
  }

  /** Drops what the feed says was revoked since this cache last looked (everything after a reset). */
  #catchUp(feed: RevocationFeed): void {
    if (this.#cache.size > 0) {
      const complete = feed.replay(this.#seen, (tag) => {
        for (const [value, entry] of this.#cache) if (entry.tag === tag) this.#cache.delete(value);
      });
      if (!complete) this.#cache.clear();
    }
    this.#seen = feed.seq;
  }

  /**
   * Publishes revocations of these sessions to the processes sharing the store. A failure to send is
   * not the caller's failure (the store removed the session): the store logs it, and a process that
   * lost the link to the store stops trusting its cache on its own.
   */
  async #announce(ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    await this.#store.revocations.publish(ids.map(sessionTag)).catch(() => undefined);
  }

  #subjectKey(provider: string, subject: string): string {
    return `session-subject:${createHash('sha256').update(provider).update('\0').update(subject).digest('base64url')}`;
  }
}

const NONE: SessionLookup = Object.freeze({ kind: 'none' });
/** Most values of the session cookie one request may carry (a host cookie and a domain cookie fit). */
const MAX_SESSION_COOKIES = 4;
const SESSION_CONFLICT: SessionLookup = Object.freeze({
  kind: 'invalid',
  reason: 'session-invalid',
  message: 'the request carries several different session cookies',
});
const SESSION_INVALID: SessionLookup = Object.freeze({
  kind: 'invalid',
  reason: 'session-invalid',
  message: 'the session cookie is not valid',
});
const SESSION_EXPIRED: SessionLookup = Object.freeze({
  kind: 'invalid',
  reason: 'session-expired',
  message: 'the session has ended',
});

function sessionKey(id: string): string {
  return `session:${id}`;
}

/** A set of every session id, so that the admin API can list sessions in any store without a scan. */
const SESSION_INDEX = 'session-index';
/** Store reads in flight at once while listing sessions. */
const LIST_BATCH = 32;
const HANDLE = /^[A-Za-z0-9_-]{22}$/;

/** A live session as the admin API shows it: no tokens, no claims, and a handle instead of its id. */
export interface SessionSummary {
  /** `sessionHandle` of the session id: names the session to the admin API, opens nothing. */
  readonly id: string;
  readonly provider: string;
  readonly subject: string;
  readonly user: string;
  readonly email: string | null;
  readonly groups: readonly string[];
  readonly createdAt: string;
  readonly lastSeen: string;
  /** When it ends unless used again: the earlier of its absolute end and the idle timeout. */
  readonly expiresAt: string;
}

/**
 * The name the admin API gives session `id`: a hash (22 base64url characters), because the id is half
 * of a valid cookie and must not appear on a page, in an audit line or in a URL.
 */
export function sessionHandle(id: string): string {
  return createHash('sha256').update('gatehouse-session-handle:').update(id).digest('base64url').slice(0, 22);
}

/**
 * What a revocation of session `id` is published as: a hash, so the id (half of a valid cookie) never
 * travels on the revocation channel.
 */
export function sessionTag(id: string): string {
  return createHash('sha256').update('gatehouse-session-tag:').update(id).digest('base64url');
}

/** The identity a session stands for (`authMethod: 'session'`). */
export function identityOf(record: SessionRecord): Identity {
  return Object.freeze({
    subject: record.subject,
    user: record.user,
    email: record.email,
    groups: Object.freeze([...record.groups]),
    claims: record.claims,
    authMethod: 'session',
    source: record.provider,
    expiresAt: record.expiresAt,
  });
}

function parseRecord(raw: string): SessionRecord | undefined {
  let r: unknown;
  try {
    r = JSON.parse(raw);
  } catch {
    return undefined;
  }
  if (typeof r !== 'object' || r === null) return undefined;
  const o = r as Record<string, unknown>;
  const tokens = o.tokens as Record<string, unknown> | undefined;
  if (
    o.v !== 1 ||
    typeof o.provider !== 'string' ||
    typeof o.subject !== 'string' ||
    typeof o.user !== 'string' ||
    !(o.email === undefined || typeof o.email === 'string') ||
    !Array.isArray(o.groups) ||
    !o.groups.every((g) => typeof g === 'string') ||
    typeof o.claims !== 'object' ||
    o.claims === null ||
    typeof o.createdAt !== 'number' ||
    typeof o.lastSeen !== 'number' ||
    typeof o.expiresAt !== 'number' ||
    typeof tokens !== 'object' ||
    tokens === null
  ) {
    return undefined;
  }
  return r as SessionRecord;
}

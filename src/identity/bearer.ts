/**
 * Bearer JWTs from configured issuers (machines and AI agents). A token is verified once: signature
 * against the issuer's JWKS with an explicit algorithm allow-list, then `iss`, `aud`, `exp`, `nbf` with
 * a clock tolerance (RFC 7519 §4.1). The result is cached for the token until the token expires,
 * so the hot path for a known token is one Map lookup and `authenticate` answers synchronously.
 */

import { decodeJwt, type JWTPayload, errors as joseErrors, jwtVerify } from 'jose';
import { Counter } from 'prom-client';
import type { Config } from '../config/schema.js';
import { registry } from '../observe/metrics.js';
import { claimAt, verifiedEmail } from './claims.js';
import { IdentityConfigError, JwksUnavailableError, RemoteKeySet, type WarnLogger } from './jwks.js';
import type { AuthResult, Identity, ReasonCode } from './types.js';

/** The `identity.bearer` section of the configuration. */
export type BearerIssuerConfig = NonNullable<Config['identity']>['bearer'][number];

const METRIC = 'gatehouse_token_verifications_total';

/** Signature verifications (token-cache misses), by result (`ok` or the reason code). */
export const tokenVerificationsTotal: Counter<'result'> =
  (registry.getSingleMetric(METRIC) as Counter<'result'> | undefined) ??
  new Counter({
    name: METRIC,
    help: 'Bearer token signature verifications (token-cache misses), by result',
    labelNames: ['result'] as const,
    registers: [registry],
  });

// Never `none` and never HMAC: a shared-secret algorithm would let anyone holding the public key sign.
const ASYMMETRIC = new Set([
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
]);

/** Options of the bearer authenticator. */
export interface BearerOptions {
  /** Clock (ms since the epoch); injected by tests to freeze time. */
  now?: () => number;
  /** Timeout of each discovery or JWKS request (default 5 s). */
  fetchTimeoutMs?: number;
  /** Minimum time between JWKS refetches caused by an unknown `kid` (default 30 s). */
  jwksCooldownMs?: number;
  /** JWKS older than this are refreshed before use (default 10 min). */
  jwksCacheMaxAgeMs?: number;
  /** While refreshing fails, stale JWKS are used for this long past their max age (default 1 h). */
  jwksMaxStaleMs?: number;
  /** Most tokens kept verified in the cache (default 10 000; least recently used evicted first). */
  cacheSize?: number;
  /**
   * A verified token is re-verified at least this often even when it lives longer (default 10 min),
   * so a key withdrawn from the issuer's JWKS stops being honoured.
   */
  maxCacheTtlMs?: number;
  logger?: WarnLogger;
  /**
   * The authenticator of the configuration being replaced (reload): its JWKS caches are reused for
   * issuers whose issuer and jwksUri did not change, and its verified tokens when the whole bearer
   * section is unchanged, so a reload neither refetches keys nor re-verifies every token.
   */
  previous?: BearerAuthenticator;
}

interface Verifier {
  readonly cfg: BearerIssuerConfig;
  readonly keys: RemoteKeySet;
  readonly toleranceSec: number;
}

interface CacheEntry {
  /** The whole token: entries are keyed by its tail (`cacheKey`), so a hit is confirmed against it. */
  readonly token: string;
  readonly result: AuthResult;
  /** Cached until this time (ms, exclusive). */
  readonly until: number;
  /** Insertion sequence number: how recently the entry was (re)inserted. */
  seq: number;
}

// Failures that do not change with time or key rotation are remembered briefly, so a client retrying
// with the same bad token costs one signature check per minute, not one per request.
const NEGATIVE_TTL_MS = 60_000;
const NEGATIVE_SIZE = 1000;

/**
 * The key of a token in the caches: its last 32 characters, the tail of its signature. Hashing the whole
 * token (about 600 characters for RS256) on every request costs more than the rest of a cache hit; the
 * tail is as distinctive, and a hit is confirmed by comparing the whole token. Only verified tokens enter
 * the positive cache, and two valid tokens cannot share a signature tail, so a crafted token with a
 * cached token's tail is simply a miss.
 */
function cacheKey(token: string): string {
  return token.length <= 32 ? token : token.slice(-32);
}

/** Verifies bearer JWTs of the configured issuers. */
export class BearerAuthenticator {
  /** Signature verifications performed so far (token-cache misses that reached a key). */
  verifications = 0;
  readonly #byIssuer = new Map<string, Verifier>();
  readonly #now: () => number;
  readonly #cacheSize: number;
  readonly #maxTtl: number;
  readonly #logger: WarnLogger | undefined;
  readonly #cache: Map<string, CacheEntry>;
  readonly #negative: Map<string, CacheEntry>;
  readonly #inflight = new Map<string, Promise<AuthResult>>();
  readonly #fingerprint: string;
  #seq = 0;

  /**
   * Throws `IdentityConfigError` when an issuer or JWKS URL is not `https:` (off loopback) or an
   * algorithm is not an asymmetric signature algorithm.
   */
  constructor(issuers: readonly BearerIssuerConfig[], opts: BearerOptions = {}) {
    this.#now = opts.now ?? Date.now;
    this.#cacheSize = Math.max(1, opts.cacheSize ?? 10_000);
    this.#maxTtl = opts.maxCacheTtlMs ?? 600_000;
    this.#logger = opts.logger;
    this.#fingerprint = JSON.stringify(issuers);
    const previous = opts.previous;
    const same = previous !== undefined && previous.#fingerprint === this.#fingerprint;
    this.#cache = same ? previous.#cache : new Map();
    this.#negative = same ? previous.#negative : new Map();
    issuers.forEach((cfg, i) => {
      const where = `identity.bearer.${i}`;
      for (const alg of cfg.algorithms) {
        if (!ASYMMETRIC.has(alg))
          throw new IdentityConfigError(`${where}.algorithms`, `${alg} is not allowed`);
      }
      if (cfg.algorithms.length === 0)
        throw new IdentityConfigError(`${where}.algorithms`, `must not be empty`);
      const old = previous === undefined ? undefined : previous.#byIssuer.get(issuerKey(cfg.issuer))?.keys;
      const reuse = old !== undefined && old.issuer === cfg.issuer && old.jwksUri === cfg.jwksUri;
      const keys = reuse
        ? old
        : new RemoteKeySet(
            cfg.issuer,
            cfg.jwksUri,
            {
              now: this.#now,
              ...(opts.fetchTimeoutMs !== undefined ? { fetchTimeoutMs: opts.fetchTimeoutMs } : {}),
              ...(opts.jwksCooldownMs !== undefined ? { cooldownMs: opts.jwksCooldownMs } : {}),
              ...(opts.jwksCacheMaxAgeMs !== undefined ? { cacheMaxAgeMs: opts.jwksCacheMaxAgeMs } : {}),
              ...(opts.jwksMaxStaleMs !== undefined ? { maxStaleMs: opts.jwksMaxStaleMs } : {}),
              ...(opts.logger !== undefined ? { logger: opts.logger } : {}),
            },
            where,
          );
      const key = issuerKey(cfg.issuer);
      if (this.#byIssuer.has(key))
        throw new IdentityConfigError(`${where}.issuer`, `${cfg.issuer} is listed twice`);
      this.#byIssuer.set(key, { cfg, keys, toleranceSec: Math.ceil(cfg.clockTolerance / 1000) });
    });
  }

  /** True when at least one issuer is configured. */
  get enabled(): boolean {
    return this.#byIssuer.size > 0;
  }

  /** The key set of an issuer (as configured), for inspection; undefined when not configured. */
  keySet(issuer: string): RemoteKeySet | undefined {
    return this.#byIssuer.get(issuerKey(issuer))?.keys;
  }

  /** Tokens currently cached as verified. */
  get cachedTokens(): number {
    return this.#cache.size;
  }

  /**
   * Authenticates a compact JWT (the value after `Bearer `). Synchronous on a cache hit; otherwise a
   * promise that never rejects. Concurrent calls with the same new token share one verification.
   * `now` (ms) may be passed by a caller that already read the clock for this request.
   */
  authenticate(token: string, now: number = this.#now()): AuthResult | Promise<AuthResult> {
    const key = cacheKey(token);
    const hit = this.#cache.get(key);
    if (hit !== undefined && hit.token === token) {
      if (now < hit.until) {
        // Least recently used goes first: an entry in the older half of the Map moves to the end.
        // Entries in the newer half stay put, so a hot token costs no Map writes.
        if (this.#seq - hit.seq >= this.#cacheSize >> 1) {
          this.#cache.delete(key);
          hit.seq = ++this.#seq;
          this.#cache.set(key, hit);
        }
        return hit.result;
      }
      this.#cache.delete(key);
    }
    const bad = this.#negative.get(key);
    if (bad !== undefined && bad.token === token) {
      if (now < bad.until) return bad.result;
      this.#negative.delete(key);
    }
    const running = this.#inflight.get(token);
    if (running !== undefined) return running;
    const p = this.#verify(token, now).finally(() => this.#inflight.delete(token));
    this.#inflight.set(token, p);
    return p;
  }

  async #verify(token: string, now: number): Promise<AuthResult> {
    let unverified: JWTPayload;
    try {
      unverified = decodeJwt(token);
    } catch {
      return invalid('token-invalid', 'malformed JWT');
    }
    if (typeof unverified.iss !== 'string') return invalid('token-invalid', 'token has no iss claim');
    const verifier = this.#byIssuer.get(issuerKey(unverified.iss));
    if (verifier === undefined) {
      return invalid('token-unknown-issuer', `issuer ${truncate(unverified.iss)} is not trusted`);
    }
    const { cfg } = verifier;
    this.verifications++;
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, verifier.keys.getKey, {
        algorithms: cfg.algorithms,
        issuer: cfg.issuer,
        audience: cfg.audiences,
        clockTolerance: verifier.toleranceSec,
        currentDate: new Date(now),
        requiredClaims: ['exp', 'sub'],
      }));
    } catch (err) {
      const result = this.#translate(err, cfg.issuer);
      tokenVerificationsTotal.inc({ result: result.reason });
      if (result.cacheable)
        this.#remember(this.#negative, NEGATIVE_SIZE, token, result.auth, now + NEGATIVE_TTL_MS);
      return result.auth;
    }
    tokenVerificationsTotal.inc({ result: 'ok' });
    const identity = toIdentity(payload, cfg);
    const result: AuthResult = Object.freeze({ kind: 'ok', identity });
    // Valid while exp > now - tolerance (RFC 7519 §4.1.4); capped so withdrawn keys are noticed.
    const until = Math.min((payload.exp as number) * 1000 + verifier.toleranceSec * 1000, now + this.#maxTtl);
    this.#remember(this.#cache, this.#cacheSize, token, result, until);
    return result;
  }

  #remember(
    map: Map<string, CacheEntry>,
    size: number,
    token: string,
    result: AuthResult,
    until: number,
  ): void {
    const key = cacheKey(token);
    // A replaced entry moves to the end (most recent); otherwise the oldest makes room when full.
    if (!map.delete(key) && map.size >= size) {
      const oldest = map.keys().next();
      if (!oldest.done) map.delete(oldest.value);
    }
    map.set(key, { token, result, until, seq: ++this.#seq });
  }

  #translate(err: unknown, issuer: string): { auth: AuthResult; reason: ReasonCode; cacheable: boolean } {
    const make = (reason: ReasonCode, message: string, cacheable: boolean) => ({
      auth: invalid(reason, message),
      reason,
      cacheable,
    });
    if (err instanceof JwksUnavailableError) {
      // Already logged by the key set; fail closed.
      return make('jwks-unavailable', `keys of issuer ${issuer} are unavailable`, false);
    }
    if (err instanceof joseErrors.JWTExpired) return make('token-expired', 'token has expired', true);
    if (err instanceof joseErrors.JWTClaimValidationFailed) {
      if (err.claim === 'nbf') return make('token-not-yet-valid', 'token is not valid yet (nbf)', false);
      if (err.claim === 'aud')
        return make('token-wrong-audience', 'token audience is not accepted here', true);
      if (err.claim === 'iss')
        return make('token-wrong-issuer', `token issuer is not exactly ${issuer}`, true);
      return make('token-invalid', err.message, true);
    }
    if (err instanceof joseErrors.JWSSignatureVerificationFailed) {
      return make('token-invalid', 'token signature is invalid', true);
    }
    if (err instanceof joseErrors.JOSEAlgNotAllowed) {
      return make('token-invalid', 'token algorithm is not allowed', true);
    }
    // No matching key may change after the issuer rotates: not remembered.
    if (err instanceof joseErrors.JWKSNoMatchingKey)
      return make('token-invalid', 'token key (kid) is unknown', false);
    if (err instanceof joseErrors.JOSEError) return make('token-invalid', err.message, true);
    this.#logger?.warn({ err, issuer }, 'unexpected error while verifying a bearer token');
    return make('token-invalid', 'token could not be verified', false);
  }
}

/**
 * The credential of an `Authorization: Bearer <credential>` header (RFC 6750 §2.1: the scheme is
 * case-insensitive), or undefined when the header is absent or uses another scheme. The credential
 * may be a JWT or an API key: tell them apart with `looksLikeApiKey` and `looksLikeJwt`.
 */
export function bearerToken(authorization: string | undefined): string | undefined {
  if (authorization === undefined || authorization.length < 8) return undefined;
  if (authorization.charCodeAt(6) !== 32 || authorization.slice(0, 6).toLowerCase() !== 'bearer')
    return undefined;
  const token = authorization.slice(7).trim();
  return token === '' ? undefined : token;
}

/**
 * True when `s` has the shape of a compact JWS (RFC 7515 §7.1): three non-empty base64url parts
 * separated by two dots. Anything else in `Bearer` is not a JWT and can only be an API key.
 */
export function looksLikeJwt(s: string): boolean {
  const a = s.indexOf('.');
  if (a <= 0) return false;
  const b = s.indexOf('.', a + 1);
  return b > a + 1 && b < s.length - 1 && s.indexOf('.', b + 1) === -1;
}

/** Issuers are looked up without a trailing slash; `jwtVerify` then demands the exact configured string. */
function issuerKey(iss: string): string {
  return iss.endsWith('/') ? iss.slice(0, -1) : iss;
}

function invalid(reason: ReasonCode, message: string): AuthResult {
  return Object.freeze({ kind: 'invalid', reason, message });
}

function truncate(s: string): string {
  return JSON.stringify(s.length > 100 ? `${s.slice(0, 100)}…` : s);
}

/** Groups from an array of strings or a space-separated string (as OAuth `scope`); anything else: none. */
export function groupsFromClaim(value: unknown): string[] {
  if (typeof value === 'string') return value.split(' ').filter((g) => g !== '');
  if (Array.isArray(value)) return value.filter((g): g is string => typeof g === 'string');
  return [];
}

function toIdentity(payload: JWTPayload, cfg: BearerIssuerConfig): Identity {
  const sub = String(payload.sub);
  const username = payload.preferred_username;
  return Object.freeze({
    subject: sub,
    user: typeof username === 'string' && username !== '' ? username : sub,
    email: verifiedEmail(payload),
    groups: Object.freeze(groupsFromClaim(claimAt(payload, cfg.groupsClaim))),
    claims: Object.freeze(payload),
    authMethod: 'bearer',
    source: cfg.issuer,
    expiresAt: (payload.exp as number) * 1000,
  });
}

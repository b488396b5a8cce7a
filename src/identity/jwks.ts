/**
 * Remote JSON Web Key Sets of token issuers: discovered from the issuer's OpenID configuration or
 * configured directly, fetched with a timeout, cached, and refetched on an unknown `kid` at most once
 * per cooldown. Modelled on jose's `createRemoteJWKSet`, with an injected clock (so cache and cooldown
 * are testable with frozen time), discovery, and the loopback-only rule for `http:` URLs.
 */
import { isIP } from 'node:net';
import { createLocalJWKSet, type JWTVerifyGetKey, errors as joseErrors } from 'jose';
import { ConfigSettingError, GatehouseError } from '../errors.js';

/** An identity setting that cannot work (e.g. an `http:` issuer off loopback); raised at construction. */
export class IdentityConfigError extends ConfigSettingError {
  constructor(path: string, detail: string) {
    super('GH_IDENTITY_CONFIG', path, detail);
  }
}

/** The issuer's keys could not be obtained; requests fail closed (401 `jwks-unavailable`). */
export class JwksUnavailableError extends GatehouseError {
  constructor(message: string, cause?: unknown) {
    super('GH_JWKS_UNAVAILABLE', 401, message, { cause });
  }
}

/** Minimal logger shape (pino's `warn`). */
export interface WarnLogger {
  warn(obj: object, msg: string): void;
}

/** True for `localhost`, `*.localhost`, 127.0.0.0/8 and ::1 (also IPv4-mapped loopback). */
export function isLoopbackHost(hostname: string): boolean {
  const host = hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
  const lower = host.toLowerCase();
  if (lower === 'localhost' || lower.endsWith('.localhost')) return true;
  const family = isIP(lower);
  if (family === 4) return lower.startsWith('127.');
  if (family === 6) return lower === '::1' || lower === '::ffff:7f00:1' || lower.startsWith('::ffff:127.');
  return false;
}

/**
 * Parses an identity-provider URL and enforces the transport rule: `https:` everywhere, `http:` only
 * on loopback addresses (development and tests). `where` names the setting in the error message.
 */
export function requireSecureUrl(text: string, where: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new IdentityConfigError(`${where}`, `not a valid URL: ${text}`);
  }
  if (url.protocol === 'https:') return url;
  if (url.protocol === 'http:') {
    if (isLoopbackHost(url.hostname)) return url;
    throw new IdentityConfigError(
      `${where}`,
      `${text} must use https: (http: is accepted only on loopback addresses)`,
    );
  }
  throw new IdentityConfigError(`${where}`, `${text} must be an https: URL`);
}

/** Options of a remote key set; durations in ms. */
export interface RemoteKeySetOptions {
  /** Clock (ms since the epoch). */
  now?: () => number;
  /** Timeout of each discovery or JWKS request (default 5 s). */
  fetchTimeoutMs?: number;
  /** Minimum time between two fetches caused by unknown `kid`s (default 30 s). */
  cooldownMs?: number;
  /** Keys older than this are refreshed before use (default 10 min). */
  cacheMaxAgeMs?: number;
  /**
   * While refreshing fails, keys are still used for this long past `cacheMaxAgeMs` (default 1 h), so a
   * short IdP outage does not lock every client out; after that, verification fails closed.
   */
  maxStaleMs?: number;
  /** After a failed fetch, requests fail fast for this long instead of each hitting the IdP (default 5 s). */
  failureBackoffMs?: number;
  /** Largest discovery document or JWKS accepted, in bytes (default 1 MiB). */
  maxBytes?: number;
  logger?: WarnLogger;
}

type LocalSet = ReturnType<typeof createLocalJWKSet>;

/** The key set of one issuer: `getKey` is the key resolver handed to jose's `jwtVerify`. */
export class RemoteKeySet {
  /** The issuer as configured. */
  readonly issuer: string;
  /** The configured JWKS URL, or undefined when discovered. */
  readonly jwksUri: string | undefined;
  /** JWKS documents fetched (successfully or not); discovery requests not included. */
  fetches = 0;
  /** Discovery requests made. */
  discoveries = 0;
  readonly #configuredJwksUri: URL | undefined;
  #jwksUri: URL | undefined;
  readonly #now: () => number;
  readonly #timeout: number;
  readonly #cooldown: number;
  readonly #maxAge: number;
  readonly #maxStale: number;
  readonly #backoff: number;
  readonly #maxBytes: number;
  readonly #logger: WarnLogger | undefined;
  #local: LocalSet | undefined;
  #fetchedAt = Number.NEGATIVE_INFINITY;
  #failedAt = Number.NEGATIVE_INFINITY;
  #lastError: unknown;
  #pending: Promise<void> | undefined;

  /** `jwksUri` when configured, else discovered from `${issuer}/.well-known/openid-configuration`. */
  constructor(issuer: string, jwksUri: string | undefined, opts: RemoteKeySetOptions = {}, where = 'issuer') {
    this.issuer = issuer;
    this.jwksUri = jwksUri;
    requireSecureUrl(issuer, `${where}.issuer`);
    this.#configuredJwksUri =
      jwksUri === undefined ? undefined : requireSecureUrl(jwksUri, `${where}.jwksUri`);
    this.#jwksUri = this.#configuredJwksUri;
    this.#now = opts.now ?? Date.now;
    this.#timeout = opts.fetchTimeoutMs ?? 5000;
    this.#cooldown = opts.cooldownMs ?? 30_000;
    this.#maxAge = opts.cacheMaxAgeMs ?? 600_000;
    this.#maxStale = opts.maxStaleMs ?? 3_600_000;
    this.#backoff = opts.failureBackoffMs ?? 5000;
    this.#maxBytes = opts.maxBytes ?? 1024 * 1024;
    this.#logger = opts.logger;
  }

  /** Resolves the verification key for a token header; throws `JwksUnavailableError` or jose errors. */
  readonly getKey: JWTVerifyGetKey = async (header, token) => {
    const now = this.#now();
    if (this.#local === undefined) {
      await this.#reload();
    } else if (now - this.#fetchedAt >= this.#maxAge) {
      const refresh = this.#reload();
      // A stale set keeps answering while a refresh runs in the background (failures are logged); past
      // the stale limit, the refresh must succeed first (fail closed).
      if (now - this.#fetchedAt >= this.#maxAge + this.#maxStale) await refresh;
      else refresh.catch(() => {});
    }
    const local = this.#local!;
    try {
      return await local(header, token);
    } catch (err) {
      // Unknown kid: the issuer may have rotated its keys. Refetch, at most once per cooldown.
      if (!(err instanceof joseErrors.JWKSNoMatchingKey) || this.#now() - this.#fetchedAt < this.#cooldown) {
        throw err;
      }
      await this.#reload();
      return this.#local!(header, token);
    }
  };

  /** Fetches the key set now (one shared fetch for concurrent callers). */
  refresh(): Promise<void> {
    return this.#reload();
  }

  #reload(): Promise<void> {
    if (this.#pending !== undefined) return this.#pending;
    if (this.#now() - this.#failedAt < this.#backoff) {
      return Promise.reject(
        new JwksUnavailableError(
          `keys of ${this.issuer} unavailable (last fetch failed recently)`,
          this.#lastError,
        ),
      );
    }
    const pending = this.#fetchSet().finally(() => {
      if (this.#pending === pending) this.#pending = undefined;
    });
    this.#pending = pending;
    return pending;
  }

  async #fetchSet(): Promise<void> {
    try {
      const uri = this.#jwksUri ?? (await this.#discover());
      this.fetches++;
      const json = await this.#getJson(uri);
      let local: LocalSet;
      try {
        local = createLocalJWKSet(json as Parameters<typeof createLocalJWKSet>[0]);
      } catch (err) {
        throw new JwksUnavailableError(`${uri.href} is not a valid JSON Web Key Set`, err);
      }
      this.#local = local;
      this.#fetchedAt = this.#now();
      this.#failedAt = Number.NEGATIVE_INFINITY;
    } catch (err) {
      const error =
        err instanceof JwksUnavailableError
          ? err
          : new JwksUnavailableError(`keys of ${this.issuer} unavailable: ${(err as Error).message}`, err);
      this.#failedAt = this.#now();
      this.#lastError = error;
      // A discovered URI may have moved: discover again on the next attempt.
      this.#jwksUri = this.#configuredJwksUri;
      this.#logger?.warn(
        { err: error, issuer: this.issuer },
        'JWKS fetch failed; tokens of this issuer are refused',
      );
      throw error;
    }
  }

  async #discover(): Promise<URL> {
    this.discoveries++;
    const base = this.issuer.endsWith('/') ? this.issuer.slice(0, -1) : this.issuer;
    const url = new URL(`${base}/.well-known/openid-configuration`);
    const doc = (await this.#getJson(url)) as { issuer?: unknown; jwks_uri?: unknown } | null;
    if (typeof doc !== 'object' || doc === null || typeof doc.jwks_uri !== 'string') {
      throw new JwksUnavailableError(`${url.href} has no jwks_uri`);
    }
    // OpenID Connect Discovery 1.0 §4.3: the document's issuer must be exactly the configured one.
    if (doc.issuer !== this.issuer) {
      throw new JwksUnavailableError(
        `${url.href} names issuer ${JSON.stringify(doc.issuer)}, expected ${JSON.stringify(this.issuer)}`,
      );
    }
    this.#jwksUri = requireSecureUrl(doc.jwks_uri, `jwks_uri of ${this.issuer}`);
    return this.#jwksUri;
  }

  async #getJson(url: URL): Promise<unknown> {
    let response: Response;
    try {
      response = await fetch(url, {
        method: 'GET',
        redirect: 'manual',
        signal: AbortSignal.timeout(this.#timeout),
        headers: { accept: 'application/json, application/jwk-set+json' },
      });
    } catch (err) {
      const timedOut = (err as Error).name === 'TimeoutError';
      throw new JwksUnavailableError(
        timedOut
          ? `${url.href} did not answer within ${this.#timeout} ms`
          : `${url.href}: ${(err as Error).message}`,
        err,
      );
    }
    if (response.status !== 200) {
      await response.body?.cancel().catch(() => {});
      throw new JwksUnavailableError(`${url.href} answered ${response.status}, expected 200`);
    }
    const text = await this.#readCapped(response, url);
    try {
      return JSON.parse(text) as unknown;
    } catch (err) {
      throw new JwksUnavailableError(`${url.href} did not return JSON`, err);
    }
  }

  async #readCapped(response: Response, url: URL): Promise<string> {
    const body = response.body;
    if (body === null) return '';
    const chunks: Uint8Array[] = [];
    let size = 0;
    const reader = body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        size += value.byteLength;
        if (size > this.#maxBytes) {
          await reader.cancel().catch(() => {});
          throw new JwksUnavailableError(`${url.href} is larger than ${this.#maxBytes} bytes`);
        }
        chunks.push(value);
      }
    } catch (err) {
      if (err instanceof JwksUnavailableError) throw err;
      throw new JwksUnavailableError(`${url.href}: ${(err as Error).message}`, err);
    }
    return Buffer.concat(chunks).toString('utf8');
  }
}

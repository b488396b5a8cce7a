/**
 * API keys for agents. The configuration holds only `sha256:<hex>` of each key; a presented key is
 * hashed and the digest compared in constant time. Keys made by `gatehouse apikey create` look like
 * `ghk_<id>_<43 base64url chars>` (256 random bits); keys of other origins (a secret manager's, an older
 * system's) work too when they are at least `MIN_API_KEY_LENGTH` characters and are not shaped like a
 * JWT (three dot-separated parts), which is how they are told apart in `Bearer`.
 */
import crypto from 'node:crypto';
import type { Config } from '../config/schema.js';
import { IdentityConfigError } from './jwks.js';
import type { AuthResult, Identity } from './types.js';

/** One entry of `identity.apiKeys`. */
export type ApiKeyConfig = NonNullable<Config['identity']>['apiKeys'][number];

/** Longest key id: `ghk_<id>_<43 characters>` then stays far below the 256 characters a key may have. */
export const MAX_API_KEY_ID_LENGTH = 64;

/** Shorter credentials are refused without a lookup: too few characters to be a secret worth the name. */
export const MIN_API_KEY_LENGTH = 16;

const KEY_PATTERN = /^ghk_[A-Za-z0-9][A-Za-z0-9_.-]*_[A-Za-z0-9_-]{43}$/;
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/** True when `s` has the shape of a Gatehouse API key (not a JWT or another token). */
export function looksLikeApiKey(s: string): boolean {
  return s.length <= 256 && s.startsWith('ghk_') && KEY_PATTERN.test(s);
}

/** `sha256:<hex>` of a key, as written in `identity.apiKeys[].hash`. */
export function hashApiKey(key: string): string {
  return `sha256:${crypto.createHash('sha256').update(key, 'utf8').digest('hex')}`;
}

/** Creates a new key for `id` and the hash to put in the configuration. The key is not stored anywhere. */
export function generateApiKey(id: string): { key: string; hashLine: string } {
  if (!ID_PATTERN.test(id)) {
    throw new IdentityConfigError(
      '',
      `api key id "${id}" must start with a letter or digit and use only A-Z a-z 0-9 _ . -`,
    );
  }
  // The key must stay within the 256 characters a presented key may have.
  if (id.length > MAX_API_KEY_ID_LENGTH) {
    throw new IdentityConfigError('', `api key id must be at most ${MAX_API_KEY_ID_LENGTH} characters`);
  }
  const key = `ghk_${id}_${crypto.randomBytes(32).toString('base64url')}`;
  return { key, hashLine: hashApiKey(key) };
}

/**
 * When a key stops being accepted (ms since the epoch): a date-time as given, a bare date
 * (`2027-01-01`) at the start of that day in UTC.
 */
export function apiKeyExpiry(expires: string | undefined): number | undefined {
  if (expires === undefined) return undefined;
  const ms = Date.parse(/^\d{4}-\d{2}-\d{2}$/.test(expires) ? `${expires}T00:00:00Z` : expires);
  return Number.isNaN(ms) ? undefined : ms;
}

interface Entry {
  readonly digest: Buffer;
  readonly expiresAt: number | undefined;
  readonly routes: ReadonlySet<string> | undefined;
  readonly ok: AuthResult;
}

const INVALID: AuthResult = Object.freeze({
  kind: 'invalid',
  reason: 'api-key-invalid',
  message: 'API key is not valid',
});
const EXPIRED: AuthResult = Object.freeze({
  kind: 'invalid',
  reason: 'api-key-expired',
  message: 'API key has expired',
});
const OUT_OF_SCOPE: AuthResult = Object.freeze({
  kind: 'invalid',
  reason: 'api-key-out-of-scope',
  message: 'API key may not be used on this route',
});

/** Authenticates API keys against the configured hashes. */
export class ApiKeyAuthenticator {
  /** Problems that do not stop the gateway (e.g. a `sha256:<hex>` placeholder, which matches no key). */
  /** Settings that work but deserve a word (a placeholder hash), each at its configuration path. */
  readonly warnings: Array<{ readonly path: string; readonly message: string }> = [];
  readonly #byHash = new Map<string, Entry>();
  readonly #now: () => number;

  /** Throws `IdentityConfigError` for a malformed or duplicated hash, or an unreadable expiry. */
  constructor(keys: readonly ApiKeyConfig[], opts: { now?: () => number } = {}) {
    this.#now = opts.now ?? Date.now;
    keys.forEach((k, i) => {
      const where = `identity.apiKeys.${i}`;
      if (k.hash === 'sha256:<hex>') {
        this.warnings.push({
          path: `${where}.hash`,
          message: `placeholder; key ${k.id} is refused until a real hash is set`,
        });
        return;
      }
      // sha256sum prints lower case, other tools (PowerShell's Get-FileHash) upper case: both are hex.
      const m = /^sha256:([0-9a-fA-F]{64})$/.exec(k.hash);
      if (!m)
        throw new IdentityConfigError(
          `${where}.hash`,
          `must be sha256:<64 hex digits> (create one with gatehouse apikey create)`,
        );
      const hex = m[1]!.toLowerCase();
      if (this.#byHash.has(hex))
        throw new IdentityConfigError(`${where}.hash`, `the same key is configured twice`);
      const expiresAt = apiKeyExpiry(k.expires);
      if (k.expires !== undefined && expiresAt === undefined) {
        throw new IdentityConfigError(`${where}.expires`, `not a date: ${k.expires}`);
      }
      // One frozen identity per key: every request with the key shares it (no per-request allocation).
      const identity: Identity = Object.freeze({
        subject: k.subject,
        user: k.subject,
        email: undefined,
        groups: Object.freeze([...k.groups]),
        claims: Object.freeze({ sub: k.subject, keyId: k.id, groups: Object.freeze([...k.groups]) }),
        authMethod: 'apiKey',
        source: k.id,
        expiresAt,
      });
      this.#byHash.set(hex, {
        digest: Buffer.from(hex, 'hex'),
        expiresAt,
        routes: k.routes === undefined ? undefined : new Set(k.routes),
        ok: Object.freeze({ kind: 'ok', identity }),
      });
    });
  }

  /** True when at least one key is configured. */
  get enabled(): boolean {
    return this.#byHash.size > 0;
  }

  /**
   * Authenticates `presented` (the raw key) for the route named `routeName`; `now` (ms) may be passed
   * by a caller that already read the clock for this request.
   */
  authenticate(presented: string, routeName: string, now?: number): AuthResult {
    if (presented.length < MIN_API_KEY_LENGTH || presented.length > 256) return INVALID;
    const digest = crypto.createHash('sha256').update(presented, 'utf8').digest();
    // The Map is keyed by the digest of a secret, which reveals nothing usable; the final comparison
    // is still constant time.
    const entry = this.#byHash.get(digest.toString('hex'));
    if (entry === undefined || !crypto.timingSafeEqual(digest, entry.digest)) return INVALID;
    if (entry.expiresAt !== undefined && (now ?? this.#now()) >= entry.expiresAt) return EXPIRED;
    if (entry.routes !== undefined && !entry.routes.has(routeName)) return OUT_OF_SCOPE;
    return entry.ok;
  }
}

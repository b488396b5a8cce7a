/**
 * The identity assertion: a short-lived JWT signed by the gateway and sent upstream as
 * `X-Gatehouse-Assertion`, so a backend can verify who is calling against `/.gatehouse/jwks.json`.
 * Signing is synchronous (node:crypto over a hand-assembled RFC 7515 compact JWS) and cached per
 * (identity, audience) until half the assertion's lifetime is left, so the hot path is a lookup.
 */
import crypto, { type JsonWebKey, type KeyObject } from 'node:crypto';
import type { JWK } from 'jose';
import type { Config } from '../config/schema.js';
import { ConfigSettingError } from '../errors.js';
import { StateStoreError } from '../state/types.js';
import type { Identity } from './types.js';

/** The `identity.assertion` section of the configuration. */
export type AssertionConfig = NonNullable<NonNullable<Config['identity']>['assertion']>;

/** Signature algorithms the gateway signs assertions with. */
export type AssertionAlgorithm = AssertionConfig['algorithm'];

/** Where generated keys are kept so every instance signs with, and publishes, the same keys. */
export interface AssertionKeyStore {
  get(key: string): Promise<string | undefined>;
  set(key: string, value: string): Promise<void>;
  /** Stores only when the key is absent; true when stored (the state stores have it). */
  add?(key: string, value: string): Promise<boolean>;
}

/** The assertion key material is missing, malformed or does not fit the configured algorithm. */
export class AssertionKeyError extends ConfigSettingError {
  constructor(path: string, detail: string, cause?: unknown) {
    super('GH_ASSERTION_KEY', path, detail, { cause });
  }
}

/** Options of `AssertionSigner.create`. */
export interface AssertionSignerOptions {
  /** Resolves `signingKey` (`file:PATH`, `env:NAME`) to its text: a private JWK, a JWK set, or PEM. */
  readSecret(ref: string): string;
  /** Shared store for generated keys (the state store); default: a store in this process's memory. */
  keyStore?: AssertionKeyStore;
  /** The signer of the configuration being replaced: its keys stay published until their assertions expire. */
  previous?: AssertionSigner;
  /** Clock (ms since the epoch). */
  now?: () => number;
}

/** Name of the generated key set in the key store. */
export const ASSERTION_STORE_KEY = 'gatehouse:assertion:keys';

// A retired key stays published this long after its last assertion could have been signed, covering
// clock skew and instances that have not yet picked up a rotation from the shared store.
const RETENTION_MARGIN_MS = 60_000;
const CACHE_SIZE = 10_000;

interface SigningKey {
  readonly kid: string;
  readonly alg: AssertionAlgorithm;
  readonly privateKey: KeyObject;
  readonly publicJwk: JWK;
  /** base64url of the protected header. */
  readonly header: string;
  readonly created: number;
  /** When it stopped signing (ms), or undefined while current. */
  retired: number | undefined;
  /** Published forever (extra keys of a configured JWK set). */
  readonly pinned: boolean;
}

interface StoredKey {
  jwk: JsonWebKey;
  alg: AssertionAlgorithm;
  created: number;
  retired?: number;
}

interface CacheEntry {
  readonly audience: string;
  readonly token: string;
  /** Re-sign from this time on (ms). */
  readonly refreshAt: number;
  /** The assertion's `exp` in ms. */
  readonly expiresAt: number;
  readonly generation: number;
}

/** A key store in this process's memory, used when no shared store is given. */
export class MemoryAssertionKeyStore implements AssertionKeyStore {
  readonly #values = new Map<string, string>();
  async get(key: string): Promise<string | undefined> {
    return this.#values.get(key);
  }
  async set(key: string, value: string): Promise<void> {
    this.#values.set(key, value);
  }
  async add(key: string, value: string): Promise<boolean> {
    if (this.#values.has(key)) return false;
    this.#values.set(key, value);
    return true;
  }
}

// Process-wide, so a reload keeps the generated key instead of rotating it.
const defaultStore = new MemoryAssertionKeyStore();

/** Generates a private JWK for `algorithm` (for `signingKey` files). */
export function generateAssertionJwk(algorithm: AssertionAlgorithm = 'ES256'): JsonWebKey {
  return { ...generateKeyObject(algorithm).export({ format: 'jwk' }), alg: algorithm };
}

function generateKeyObject(algorithm: AssertionAlgorithm): KeyObject {
  switch (algorithm) {
    case 'ES256':
      return crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    case 'RS256':
      return crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    case 'EdDSA':
      return crypto.generateKeyPairSync('ed25519').privateKey;
  }
}

/** RFC 7638 JWK thumbprint (SHA-256, base64url) of a public key. */
export function jwkThumbprint(jwk: JsonWebKey): string {
  let members: Record<string, unknown>;
  if (jwk.kty === 'EC') members = { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y };
  else if (jwk.kty === 'RSA') members = { e: jwk.e, kty: jwk.kty, n: jwk.n };
  else if (jwk.kty === 'OKP') members = { crv: jwk.crv, kty: jwk.kty, x: jwk.x };
  else throw new AssertionKeyError('', `unsupported key type ${String(jwk.kty)}`);
  // Members in lexicographic order, no whitespace (RFC 7638 §3.3); the literals above are in order.
  return crypto.createHash('sha256').update(JSON.stringify(members)).digest('base64url');
}

function checkKeyType(key: KeyObject, alg: AssertionAlgorithm, where: string): void {
  const type = key.asymmetricKeyType;
  const details = key.asymmetricKeyDetails;
  const ok =
    (alg === 'ES256' && type === 'ec' && details?.namedCurve === 'prime256v1') ||
    (alg === 'RS256' && type === 'rsa' && (details?.modulusLength ?? 0) >= 2048) ||
    (alg === 'EdDSA' && type === 'ed25519');
  if (!ok) {
    const want = {
      ES256: 'an EC P-256 key',
      RS256: 'an RSA key of 2048 bits or more',
      EdDSA: 'an Ed25519 key',
    }[alg];
    throw new AssertionKeyError(`${where}`, `algorithm ${alg} needs ${want}`);
  }
}

function makeKey(
  privateKey: KeyObject,
  alg: AssertionAlgorithm,
  created: number,
  retired: number | undefined,
  pinned: boolean,
  where: string,
): SigningKey {
  if (privateKey.type !== 'private') throw new AssertionKeyError(`${where}`, `a private key is required`);
  checkKeyType(privateKey, alg, where);
  const pub = crypto.createPublicKey(privateKey).export({ format: 'jwk' });
  const kid = jwkThumbprint(pub);
  const header = Buffer.from(JSON.stringify({ alg, typ: 'JWT', kid })).toString('base64url');
  const publicJwk = { ...pub, kid, alg, use: 'sig' } as JWK;
  return { kid, alg, privateKey, publicJwk, header, created, retired, pinned };
}

/** The assertion algorithm a key is for (keys published for verification only). */
function algorithmOf(key: KeyObject, where: string): AssertionAlgorithm {
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'ES256';
  if (key.asymmetricKeyType === 'rsa') return 'RS256';
  if (key.asymmetricKeyType === 'ed25519') return 'EdDSA';
  throw new AssertionKeyError(`${where}`, `only EC P-256, RSA and Ed25519 keys are supported`);
}

function importPrivate(jwkOrPem: JsonWebKey | string, where: string): KeyObject {
  try {
    return typeof jwkOrPem === 'string'
      ? crypto.createPrivateKey(jwkOrPem)
      : crypto.createPrivateKey({ key: jwkOrPem, format: 'jwk' });
  } catch (err) {
    throw new AssertionKeyError(`${where}`, `not a usable private key: ${(err as Error).message}`, err);
  }
}

/** Signs identity assertions and publishes their public keys. */
export class AssertionSigner {
  /** `iss` of every assertion. */
  readonly issuer: string;
  /** Lifetime of an assertion in ms. */
  readonly ttlMs: number;
  readonly algorithm: AssertionAlgorithm;
  /** Assertions signed so far (cache misses). */
  signatures = 0;
  /**
   * The key store could not be read when this signer was built and nothing was carried over: it signs
   * with a key of its own, kept only in this process, until `sync()` adopts the stored set.
   */
  provisional = false;
  readonly #now: () => number;
  readonly #store: AssertionKeyStore | undefined;
  #current: SigningKey;
  #keys: SigningKey[];
  #generation = 0;
  // Longest time a retired key must stay published (this and inherited signers' ttl plus margin).
  #retention: number;
  readonly #cache = new Map<string, CacheEntry>();
  readonly #byIdentity = new WeakMap<Identity, CacheEntry>();
  #jwks: { keys: JWK[] } | undefined;
  #jwksJson = '';
  #jwksUntil = 0;

  private constructor(
    cfg: { issuer: string; ttl: number; algorithm: AssertionAlgorithm },
    keys: SigningKey[],
    store: AssertionKeyStore | undefined,
    now: () => number,
  ) {
    this.issuer = cfg.issuer;
    this.ttlMs = cfg.ttl;
    this.algorithm = cfg.algorithm;
    this.#store = store;
    this.#now = now;
    this.#keys = keys;
    this.#retention = cfg.ttl + RETENTION_MARGIN_MS;
    const current = keys.find((k) => k.retired === undefined && !k.pinned && k.alg === cfg.algorithm);
    if (current === undefined) throw new AssertionKeyError('', `no usable ${cfg.algorithm} assertion key`);
    this.#current = current;
  }

  /**
   * Builds the signer of a configuration: the key from `signingKey`, else the generated key kept in
   * the key store (created there on first use, so all instances sharing the store share it).
   */
  static async create(
    cfg: AssertionConfig | undefined,
    opts: AssertionSignerOptions,
  ): Promise<AssertionSigner> {
    const now = opts.now ?? Date.now;
    const settings = {
      issuer: cfg?.issuer ?? 'gatehouse',
      ttl: cfg?.ttl ?? 300_000,
      algorithm: cfg?.algorithm ?? 'ES256',
    };
    if (!(settings.ttl >= 1000)) throw new AssertionKeyError('identity.assertion.ttl', 'must be at least 1s');
    if (cfg?.signingKey !== undefined) {
      const keys = AssertionSigner.#configuredKeys(
        cfg.signingKey,
        settings.algorithm,
        opts.readSecret,
        now(),
      );
      const signer = new AssertionSigner(settings, keys, undefined, now);
      signer.#inherit(opts.previous);
      return signer;
    }
    const store = opts.keyStore ?? defaultStore;
    const previous = opts.previous;
    let keys: SigningKey[];
    let provisional = false;
    try {
      keys = await AssertionSigner.#loadOrCreate(store, settings, now);
    } catch (err) {
      // The store is down (a Redis outage). A reload keeps the keys the running configuration signs
      // with; a start, or a reload that changes the algorithm, signs with a key of this process alone
      // (published in its own jwks.json), so routes that need no store keep working. `sync()` adopts the
      // stored set once the store answers, keeping these keys published until their assertions expire.
      if (!(err instanceof StateStoreError)) throw err;
      const carried = previous === undefined ? undefined : previous.#generatedKeys(settings.algorithm);
      keys = carried ?? [
        makeKey(generateKeyObject(settings.algorithm), settings.algorithm, now(), undefined, false, 'key'),
      ];
      provisional = carried === undefined || previous?.provisional === true;
    }
    const signer = new AssertionSigner(settings, keys, store, now);
    signer.provisional = provisional;
    signer.#inherit(previous);
    return signer;
  }

  /** Copies of this signer's keys when they came from the key store and sign with `alg`. */
  #generatedKeys(alg: AssertionAlgorithm): SigningKey[] | undefined {
    if (this.#store === undefined || this.#current.alg !== alg) return undefined;
    return this.#keys.filter((k) => !k.pinned).map((k) => ({ ...k }));
  }

  static #configuredKeys(
    ref: string,
    alg: AssertionAlgorithm,
    readSecret: (ref: string) => string,
    now: number,
  ): SigningKey[] {
    const where = 'identity.assertion.signingKey';
    let text: string;
    try {
      text = readSecret(ref).trim();
    } catch (err) {
      throw new AssertionKeyError(`${where}`, `${(err as Error).message}`, err);
    }
    if (text.startsWith('-----BEGIN'))
      return [makeKey(importPrivate(text, where), alg, now, undefined, false, where)];
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (err) {
      throw new AssertionKeyError(`${where}`, `expected a private JWK (JSON) or a PEM private key`, err);
    }
    // A JWK set: the first key signs, the others are only published (a manual rotation in progress).
    const list = Array.isArray((doc as { keys?: unknown })?.keys) ? (doc as { keys: unknown[] }).keys : [doc];
    if (list.length === 0) throw new AssertionKeyError(`${where}`, `the key set is empty`);
    return list.map((jwk, i) => {
      const at = list.length > 1 ? `${where} key ${i}` : where;
      if (typeof jwk !== 'object' || jwk === null) throw new AssertionKeyError(`${at}`, `not a JWK`);
      const declared = (jwk as { alg?: unknown }).alg;
      if (i === 0 && declared !== undefined && declared !== alg) {
        throw new AssertionKeyError(
          `${at}`,
          `the key is for ${String(declared)}, but the algorithm is ${alg}`,
        );
      }
      const key = importPrivate(jwk as JsonWebKey, at);
      return makeKey(key, i === 0 ? alg : algorithmOf(key, at), now, undefined, i > 0, at);
    });
  }

  static #parseStored(text: string | undefined): StoredKey[] {
    if (text === undefined) return [];
    try {
      const doc = JSON.parse(text) as { keys?: StoredKey[] };
      return Array.isArray(doc.keys) ? doc.keys : [];
    } catch {
      return [];
    }
  }

  static #fromStored(stored: StoredKey[], retention: number, now: number): SigningKey[] {
    const keys: SigningKey[] = [];
    for (const s of stored) {
      if (s.retired !== undefined && s.retired + retention <= now) continue;
      try {
        keys.push(
          makeKey(importPrivate(s.jwk, 'stored key'), s.alg, s.created, s.retired, false, 'stored key'),
        );
      } catch {
        // A key that cannot be used is dropped; a fresh one replaces it if it was the current one.
      }
    }
    return keys;
  }

  static async #loadOrCreate(
    store: AssertionKeyStore,
    cfg: { ttl: number; algorithm: AssertionAlgorithm },
    now: () => number,
  ): Promise<SigningKey[]> {
    const retention = cfg.ttl + RETENTION_MARGIN_MS;
    const keys = AssertionSigner.#fromStored(
      AssertionSigner.#parseStored(await store.get(ASSERTION_STORE_KEY)),
      retention,
      now(),
    );
    if (keys.some((k) => k.retired === undefined && k.alg === cfg.algorithm)) return keys;
    return AssertionSigner.#addKey(store, cfg, now);
  }

  /** Adds a new current key to the stored set (retiring the current one), then reads back what won. */
  static async #addKey(
    store: AssertionKeyStore,
    cfg: { ttl: number; algorithm: AssertionAlgorithm },
    now: () => number,
  ): Promise<SigningKey[]> {
    const retention = cfg.ttl + RETENTION_MARGIN_MS;
    const t = now();
    const stored = AssertionSigner.#parseStored(await store.get(ASSERTION_STORE_KEY)).filter(
      (s) => s.retired === undefined || s.retired + retention > t,
    );
    for (const s of stored) s.retired ??= t;
    const jwk = generateKeyObject(cfg.algorithm).export({ format: 'jwk' });
    stored.unshift({ jwk, alg: cfg.algorithm, created: t });
    const value = JSON.stringify({ keys: stored });
    const readBack = async () =>
      AssertionSigner.#fromStored(
        AssertionSigner.#parseStored(await store.get(ASSERTION_STORE_KEY)),
        retention,
        now(),
      );
    // The very first key is only added if no other instance (or worker) stored one meanwhile: instances
    // starting together then all adopt the one that won instead of each signing with its own.
    if (stored.length === 1 && store.add !== undefined) {
      if (!(await store.add(ASSERTION_STORE_KEY, value))) {
        const winner = await readBack();
        if (winner.some((k) => k.retired === undefined && k.alg === cfg.algorithm)) return winner;
        await store.set(ASSERTION_STORE_KEY, value);
      }
    } else {
      await store.set(ASSERTION_STORE_KEY, value);
    }
    // Read back: when two instances raced a rotation, both adopt whichever write landed last.
    const keys = await readBack();
    if (!keys.some((k) => k.retired === undefined))
      throw new AssertionKeyError('', 'the key store did not keep the assertion key');
    return keys;
  }

  /** Keeps the keys of the signer being replaced published until their assertions have expired. */
  #inherit(previous: AssertionSigner | undefined): void {
    if (previous === undefined) return;
    const t = this.#now();
    const known = new Set(this.#keys.map((k) => k.kid));
    const retention = previous.ttlMs + RETENTION_MARGIN_MS;
    for (const k of previous.#keys) {
      if (known.has(k.kid) || k.pinned) continue;
      const retired = k.retired ?? t;
      if (retired + retention <= t) continue;
      this.#keys.push({ ...k, retired });
    }
    this.#retention = Math.max(this.#retention, retention);
  }

  /** The `kid` of the key that signs now. */
  get kid(): string {
    return this.#current.kid;
  }

  /**
   * The assertion for `identity` on a route whose host is `audience`. Synchronous; re-signed when
   * less than half of its lifetime is left. Its `exp` never goes past the identity's own expiry.
   * `now` (ms) may be passed by a caller that already read the clock for this request.
   */
  sign(identity: Identity, audience: string, now: number = this.#now()): string {
    const fast = this.#byIdentity.get(identity);
    if (
      fast !== undefined &&
      fast.audience === audience &&
      now < fast.refreshAt &&
      fast.generation === this.#generation
    ) {
      return fast.token;
    }
    const key = JSON.stringify([
      audience,
      identity.subject,
      identity.email,
      identity.user,
      identity.authMethod,
      identity.groups,
    ]);
    let entry = this.#cache.get(key);
    if (
      entry === undefined ||
      now >= entry.refreshAt ||
      entry.generation !== this.#generation ||
      (identity.expiresAt !== undefined && entry.expiresAt > identity.expiresAt)
    ) {
      entry = this.#mint(identity, audience, now);
      if (this.#cache.size >= CACHE_SIZE) {
        const oldest = this.#cache.keys().next();
        if (!oldest.done) this.#cache.delete(oldest.value);
      } else this.#cache.delete(key);
      this.#cache.set(key, entry);
    }
    this.#byIdentity.set(identity, entry);
    return entry.token;
  }

  #mint(identity: Identity, audience: string, now: number): CacheEntry {
    const key = this.#current;
    const iat = Math.floor(now / 1000);
    let exp = iat + Math.max(1, Math.floor(this.ttlMs / 1000));
    if (identity.expiresAt !== undefined)
      exp = Math.max(iat + 1, Math.min(exp, Math.floor(identity.expiresAt / 1000)));
    const payload = {
      iss: this.issuer,
      aud: audience,
      sub: identity.subject,
      email: identity.email,
      preferred_username: identity.user,
      groups: identity.groups,
      amr: [identity.authMethod],
      iat,
      exp,
      jti: crypto.randomUUID(),
    };
    const input = `${key.header}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
    const data = Buffer.from(input);
    let signature: Buffer;
    if (key.alg === 'ES256') {
      // JWS wants the raw r||s form (RFC 7518 §3.4), not DER.
      signature = crypto.sign('sha256', data, { key: key.privateKey, dsaEncoding: 'ieee-p1363' });
    } else if (key.alg === 'RS256') signature = crypto.sign('sha256', data, key.privateKey);
    else signature = crypto.sign(null, data, key.privateKey);
    this.signatures++;
    return {
      audience,
      token: `${input}.${signature.toString('base64url')}`,
      refreshAt: (iat * 1000 + exp * 1000) / 2,
      expiresAt: exp * 1000,
      generation: this.#generation,
    };
  }

  /** The public keys for `/.gatehouse/jwks.json`: the current key and retired keys still needed. */
  jwks(): { keys: JWK[] } {
    const now = this.#now();
    if (this.#jwks === undefined || now >= this.#jwksUntil) this.#publish(now);
    return this.#jwks!;
  }

  /** `jwks()` serialized, for serving as `application/jwk-set+json`. */
  jwksJson(): string {
    this.jwks();
    return this.#jwksJson;
  }

  #publish(now: number): void {
    const retention = this.#retention;
    this.#keys = this.#keys.filter((k) => k.retired === undefined || k.pinned || k.retired + retention > now);
    let until = Number.POSITIVE_INFINITY;
    for (const k of this.#keys) {
      if (k.retired !== undefined && !k.pinned) until = Math.min(until, k.retired + retention);
    }
    this.#jwks = Object.freeze({ keys: this.#keys.map((k) => k.publicJwk) });
    this.#jwksJson = JSON.stringify(this.#jwks);
    this.#jwksUntil = until;
  }

  /**
   * Starts signing with a new generated key. The previous key stays published until its last
   * assertion has expired. With a configured `signingKey`, rotate by replacing the key and reloading.
   */
  async rotate(): Promise<void> {
    if (this.#store === undefined) {
      throw new AssertionKeyError(
        '',
        'identity.assertion.signingKey is configured: replace the key file and reload to rotate',
      );
    }
    const keys = await AssertionSigner.#addKey(
      this.#store,
      { ttl: this.ttlMs, algorithm: this.algorithm },
      this.#now,
    );
    this.#adopt(keys);
  }

  /**
   * Re-reads the shared key store and adopts a rotation made by another instance. Call it periodically
   * (e.g. every minute) when several instances share the store.
   */
  async sync(): Promise<void> {
    if (this.#store === undefined) return;
    const keys = await AssertionSigner.#loadOrCreate(
      this.#store,
      { ttl: this.ttlMs, algorithm: this.algorithm },
      this.#now,
    );
    this.#adopt(keys);
    this.provisional = false;
  }

  #adopt(keys: SigningKey[]): void {
    const current = keys.find((k) => k.retired === undefined && k.alg === this.algorithm);
    if (current === undefined) return;
    const t = this.#now();
    const kept = this.#keys.filter((k) => !keys.some((n) => n.kid === k.kid));
    for (const k of kept) k.retired ??= t;
    this.#keys = [...keys, ...kept];
    if (current.kid !== this.#current.kid) {
      this.#current = current;
      this.#generation++;
      this.#cache.clear();
    }
    this.#jwks = undefined;
  }
}

/**
 * The identity runtime of one configuration: every authenticator the request path needs (bearer JWTs,
 * API keys, the OIDC login service with its sessions), the assertion signer, and the per-route and
 * per-listener facts precomputed for the hot path. Built once per configuration load and swapped with
 * the rest of the runtime; a reload hands over the previous one so verified tokens, fetched JWKS and
 * published assertion keys carry over.
 *
 * `identityProblems` runs the same construction-time checks offline (no I/O), so that `gatehouse check`
 * and a reload report them at their configuration paths before anything is built.
 */
import { pino } from 'pino';
import type { Config } from '../config/schema.js';
import { loginProviders } from '../core/decide.js';
import { ConfigSettingError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import type { StateStore } from '../state/types.js';
import { ApiKeyAuthenticator } from './apikeys.js';
import { AssertionSigner } from './assertion.js';
import { BearerAuthenticator } from './bearer.js';
import { LoginService } from './login.js';
import { OidcClient, OidcError } from './oidc.js';
import { MIN_SECRET_LENGTH, SessionManager } from './session.js';

/** Everything the access stage needs to authenticate a request, for one configuration. */
export interface IdentityRuntime {
  readonly bearer: BearerAuthenticator;
  readonly apiKeys: ApiKeyAuthenticator;
  /** Signs `X-Gatehouse-Assertion` and publishes `/.gatehouse/jwks.json`. */
  readonly assertion: AssertionSigner;
  /** The OIDC login endpoints and the session authenticator; undefined without providers. */
  readonly login: LoginService | undefined;
  /** `identity.apiKeyHeader`, lower case (as Node exposes request headers). */
  readonly apiKeyHeader: string;
  /** The session cookie name, or undefined without login. */
  readonly sessionCookie: string | undefined;
  /** Names of the routes on which an OIDC provider is offered (a browser may be sent to login). */
  readonly loginRoutes: ReadonlySet<string>;
  /** Names of the listeners that ask for client certificates (downstream mTLS). */
  readonly certificateListeners: ReadonlySet<string>;
}

/** What `buildIdentity` needs besides the configuration. */
export interface IdentityDeps {
  /** Resolves a whole secret reference (`env:`, `file:` or a literal), e.g. `SecretResolver.resolveSecret`. */
  readonly resolveSecret: (ref: string) => string;
  /** Expands references inside a value, e.g. `SecretResolver.expand`. */
  readonly expand: (text: string) => string;
  /** The process's state store: sessions, login state and the generated assertion key. */
  readonly store: StateStore;
  readonly logger: Logger;
  /** The identity runtime being replaced (reload). */
  readonly previous?: IdentityRuntime | undefined;
  /** Clock (ms since the epoch); tests freeze it. */
  readonly now?: () => number;
}

/**
 * Builds the identity runtime of a configuration. Throws the module's configuration errors
 * (`IdentityConfigError`, `AssertionKeyError`, `SessionConfigError`, `OidcError` with `GH_OIDC_CONFIG`)
 * and `StateStoreError` when the generated assertion key cannot be read or stored; the caller rejects
 * the configuration then, and the running one stays.
 */
export async function buildIdentity(config: Config, deps: IdentityDeps): Promise<IdentityRuntime> {
  const id = config.identity;
  const { logger, previous } = deps;
  const bearer = new BearerAuthenticator(id?.bearer ?? [], {
    logger,
    previous: previous?.bearer,
    ...(deps.now !== undefined ? { now: deps.now } : {}),
  });
  const apiKeys = new ApiKeyAuthenticator(id?.apiKeys ?? [], deps.now !== undefined ? { now: deps.now } : {});
  const login = LoginService.fromConfig(config, deps.expand, {
    store: deps.store,
    logger,
    ...(deps.now !== undefined ? { now: deps.now } : {}),
  });
  // Last: with a generated key this reads (and may write) the state store.
  const assertion = await AssertionSigner.create(id?.assertion, {
    readSecret: deps.resolveSecret,
    keyStore: deps.store,
    previous: previous?.assertion,
    ...(deps.now !== undefined ? { now: deps.now } : {}),
  });
  const loginRoutes = new Set<string>();
  if (login !== undefined) {
    for (const r of config.routes) if (loginProviders(config, r).length > 0) loginRoutes.add(r.name);
  }
  const certificateListeners = new Set<string>();
  for (const l of config.listeners)
    if (l.tls?.clientCertificate !== undefined) certificateListeners.add(l.name);
  return {
    bearer,
    apiKeys,
    assertion,
    login,
    apiKeyHeader: (id?.apiKeyHeader ?? 'X-Api-Key').toLowerCase(),
    sessionCookie: login?.sessions.settings.cookie,
    loginRoutes,
    certificateListeners,
  };
}

/** A problem found by `identityProblems`, with its configuration path. */
export interface IdentityProblem {
  readonly path: ReadonlyArray<string | number>;
  readonly message: string;
}

/** What `identityProblems` found: problems reject the configuration, warnings do not. */
export interface IdentityCheck {
  readonly problems: IdentityProblem[];
  readonly warnings: IdentityProblem[];
}

// Stands in for the state store while checking settings: construction never touches it.
const NO_STORE = new Proxy({} as StateStore, {
  get() {
    throw new TypeError('the state store is not available while checking a configuration');
  },
});

/**
 * The construction-time checks of the identity modules, run offline on a validated configuration:
 * bearer issuers and algorithms, API key hashes and expiry dates (placeholders are warnings), provider
 * settings, and the session cookie settings. `sessionSecrets` are the resolved sealing secrets when the
 * caller resolved them (each needs 32 characters); without them the secrets are not checked here.
 */
export function identityProblems(config: Config, sessionSecrets?: readonly string[]): IdentityCheck {
  const problems: IdentityProblem[] = [];
  const warnings: IdentityProblem[] = [];
  const id = config.identity;
  // A protected route with no way to authenticate answers 401 to everyone: legal (it fails closed), but
  // almost always a forgotten `public: true`, so say so.
  const canAuthenticate =
    (id !== undefined && (id.providers.length > 0 || id.bearer.length > 0 || id.apiKeys.length > 0)) ||
    config.listeners.some((l) => l.tls?.clientCertificate !== undefined);
  if (!canAuthenticate) {
    config.routes.forEach((r, i) => {
      if (!r.public) {
        warnings.push({
          path: ['routes', i],
          message:
            'requires an identity but no identity source is configured (identity.providers, bearer, apiKeys or a client certificate listener): every request gets 401; set public: true for an open route',
        });
      }
    });
  }
  if (id === undefined) return { problems, warnings };
  const report = (err: unknown, fallback: ReadonlyArray<string | number>): void => {
    if (err instanceof ConfigSettingError) {
      problems.push({ path: err.path === '' ? fallback : pathOf(err.path), message: err.detail });
    } else if (err instanceof OidcError && err.code === 'GH_OIDC_CONFIG') {
      problems.push({ path: fallback, message: err.message });
    } else {
      throw err;
    }
  };
  try {
    new BearerAuthenticator(id.bearer);
  } catch (err) {
    report(err, ['identity', 'bearer']);
  }
  try {
    const keys = new ApiKeyAuthenticator(id.apiKeys);
    for (const w of keys.warnings) warnings.push({ path: pathOf(w.path), message: w.message });
  } catch (err) {
    report(err, ['identity', 'apiKeys']);
  }
  const silent = pino({ enabled: false });
  id.providers.forEach((p, i) => {
    try {
      new OidcClient(
        {
          name: p.name,
          issuer: p.issuer,
          clientId: p.clientId,
          scopes: p.scopes,
          groupsClaim: p.groupsClaim,
        },
        silent,
      );
    } catch (err) {
      report(err, ['identity', 'providers', i]);
    }
  });
  const session = id.session;
  if (session !== undefined) {
    sessionSecrets?.forEach((secret, i) => {
      if (secret.length < MIN_SECRET_LENGTH) {
        problems.push({
          path: ['identity', 'session', 'secrets', i],
          message: `a sealing secret needs at least ${MIN_SECRET_LENGTH} characters (e.g. openssl rand -base64 32)`,
        });
      }
    });
    try {
      // Stand-in secrets: the real ones were checked above; here the other settings are.
      new SessionManager(NO_STORE, {
        secrets: session.secrets.map(() => 'x'.repeat(MIN_SECRET_LENGTH)),
        maxAge: session.maxAge,
        idleTimeout: session.idleTimeout,
        cookie: session.cookie,
        domain: session.domain,
      });
    } catch (err) {
      report(err, ['identity', 'session']);
    }
  }
  return { problems, warnings };
}

/**
 * Splits a module error message that starts with its configuration path (`identity.bearer.0.algorithms:
 * HS256 is not allowed`) into path and message; others are reported at `fallback`.
 */
/** `identity.apiKeys.0.hash` as path segments, list indexes as numbers. */
function pathOf(path: string): Array<string | number> {
  return path.split('.').map((p) => (/^\d+$/.test(p) ? Number(p) : p));
}

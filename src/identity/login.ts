/**
 * People login: the reserved `/.gatehouse/` endpoints and the session check of the request path.
 *
 *   GET  /.gatehouse/login?rd=<return>[&provider=p][&providers=a,b]   one provider: to the IdP; several: picker
 *   GET  /.gatehouse/callback?code&state                              ends sign-in, sets the session cookie
 *   GET  /.gatehouse/handoff?code                                     session hand-off from the sign-in host
 *   GET|POST /.gatehouse/logout[?everywhere=1]                        ends the session (and at the IdP)
 *   GET  /.gatehouse/signed-out                                       page after logout
 *   GET  /.gatehouse/userinfo                                         the current identity as JSON, or 401
 *
 * Sign-in state (`state`, `nonce`, PKCE verifier, return address) is one-time, lives in the state store
 * for a few minutes and is bound to the browser by a short-lived login cookie, so a callback URL opened
 * in another browser (login CSRF) gets 400 and never a session. The return address must be on a host
 * this gateway serves (`isServedHost`); anything else is refused: never an open redirect.
 *
 * With `session.signInHost`, sign-in for host A runs on the sign-in host S: A sets its login cookie and
 * sends the browser to S with the cookie's hash; after the callback on S (or at once when S already has
 * a session), S stores a one-time hand-off code (seconds, bound to A and to that hash) and sends the
 * browser to A's `/.gatehouse/handoff`, which sets A's cookie for the same server-side session.
 *
 * Login starts are rate-limited per client address, because each one stores sign-in state that anyone
 * could otherwise pile up in the store: a fixed-window counter `loginrl:<address>:<window>` (default 30
 * per minute; IPv6 counted per /64). Over the limit `/.gatehouse/login` answers 429
 * `GH_LOGIN_RATE_LIMITED` with `Retry-After` and stores nothing. The address is `facts.clientIp`, as for
 * `sourceIp` rules: the peer, or behind `server.trustedProxies` the client they forwarded for; clients
 * behind one untrusted proxy or NAT share a counter.
 * Callback and hand-off are not limited (they only consume state a login start made), nor is logout.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Config } from '../config/schema.js';
import { parseBind } from '../config/schema.js';
import { compileHosts } from '../core/routes.js';
import type { RequestFacts } from '../core/types.js';
import { GatehouseError } from '../errors.js';
import { noteErrorCode } from '../observe/access-log.js';
import { type AuditRecord, emitAudit } from '../observe/audit-bus.js';
import type { Logger } from '../observe/log.js';
import { isMapped, parseIPv6 } from '../policy/cidr.js';
import { type StateStore, StateStoreError } from '../state/types.js';
import { OidcClient, type OidcClientOptions, OidcError, type OidcProviderSettings } from './oidc.js';
import {
  acceptsHtml,
  appendSetCookie,
  errorPage,
  forbiddenPage,
  PAGE_HEADERS,
  pickerPage,
  sendPage,
  signedOutPage,
  unauthorizedPage,
} from './pages.js';
import {
  cookieValues,
  identityOf,
  removeCookies,
  SessionConfigError,
  SessionManager,
  type SessionManagerOptions,
  type SessionRecord,
  type SessionSettings,
  serializeCookie,
} from './session.js';
import type { AuthResult, Identity, ReasonCode } from './types.js';

/** What the login endpoints need of a request (a subset of `RequestFacts`). */
export type LoginFacts = Pick<RequestFacts, 'host' | 'authority' | 'path' | 'query' | 'tls' | 'clientIp'> & {
  /** The request's id, for the audit trail. */
  readonly requestId?: string | undefined;
};

/** The part of a route the login flow looks at (a `CompiledRoute` fits). */
export interface LoginRoute {
  readonly config: { readonly providers?: readonly string[] | undefined };
}

/**
 * `/.gatehouse/login?rd=<path and query>[&providers=…]`: where a browser signs in for this request, on
 * its own host, with the route's providers. Every data plane sends browsers here.
 */
export function signInAddress(
  route: LoginRoute | undefined,
  facts: Pick<LoginFacts, 'path' | 'query'>,
): string {
  const params = new URLSearchParams({ rd: facts.path + facts.query });
  const providers = route?.config.providers;
  if (providers !== undefined) params.set('providers', providers.join(','));
  return `${GATEHOUSE_PREFIX}login?${params}`;
}

/**
 * Whether a return address may point at this host: true when a route or listener of the gateway serves
 * `hostname` on `port`. Injected by the caller (see `servedHostChecker`).
 */
export type ServedHostCheck = (hostname: string, port: number, scheme: 'http' | 'https') => boolean;

/** `authenticateSession`'s answer: an `AuthResult`, plus a cookie to send when it must change. */
export type SessionAuthResult = AuthResult & {
  /** Set-Cookie to add to the response: clears a dead session cookie, or re-seals after secret rotation. */
  readonly setCookie?: string | undefined;
};

/** How many login starts one client address may make per fixed window. */
export interface LoginRateLimit {
  /** Login starts allowed per address and window (a positive integer). */
  readonly max: number;
  /** Window length in ms; windows are aligned to the epoch, so every instance counts in the same one. */
  readonly windowMs: number;
}

/** Everything a LoginService needs; secrets already resolved. */
export interface LoginServiceOptions {
  readonly store: StateStore;
  readonly logger: Logger;
  readonly session: SessionSettings;
  /** Providers in configuration order (settings, or ready clients). */
  readonly providers: readonly (OidcProviderSettings | OidcClient)[];
  readonly isServedHost: ServedHostCheck;
  /** Central sign-in host (`host` or `host:port`). */
  readonly signInHost?: string | undefined;
  /** Clock in ms since the epoch (tests freeze it). */
  readonly now?: () => number;
  /** Refresh the access token this long before it expires, in ms (default 60 s). */
  readonly refreshSkew?: number;
  /** Lifetime of sign-in state and of the login cookie, in ms (default 10 min). */
  readonly loginTtl?: number;
  /** Lifetime of a hand-off code, in ms (default 30 s). */
  readonly handoffTtl?: number;
  /** Login starts per client address (IPv6: per /64) and window (default 30 per minute). */
  readonly loginRateLimit?: LoginRateLimit;
  readonly oidc?: OidcClientOptions;
  readonly sessionOptions?: Omit<SessionManagerOptions, 'now'>;
}

/** The reserved prefix on every host. */
export const GATEHOUSE_PREFIX = '/.gatehouse/';
const PATHS = new Set(
  ['login', 'callback', 'handoff', 'logout', 'signed-out', 'userinfo'].map((p) => GATEHOUSE_PREFIX + p),
);
const RANDOM43 = /^[A-Za-z0-9_-]{43}$/;
const STATE_RE = /^[A-Za-z0-9_-]{16,128}$/;
const MAX_RD = 4096;
const DEFAULT_LOGIN_RATE_LIMIT: LoginRateLimit = Object.freeze({ max: 30, windowMs: 60_000 });
/** Where the error and signed-out pages link to: a fresh sign-in that returns to this host's root. */
const SIGN_IN_AGAIN = `${GATEHOUSE_PREFIX}login?rd=%2F`;

/** Where the request arrived: scheme and the Host header's authority, checked against `facts.host`. */
interface Here {
  readonly scheme: 'http' | 'https';
  /** `host[:port]` as in the Host header (lower case). */
  readonly authority: string;
  readonly hostname: string;
  readonly port: number;
  readonly origin: string;
}

interface LoginState {
  v: 1;
  provider: string;
  verifier: string;
  nonce: string;
  redirectUri: string;
  target: string;
  /** sha256 of the login cookie of the browser that started sign-in here. */
  binding: string;
  /** sha256 of the login cookie on the target host (sign-in host flow). */
  hb?: string | undefined;
}

interface Handoff {
  v: 1;
  sid: string;
  origin: string;
  target: string;
  hb: string;
}

type RefreshOutcome = { record: SessionRecord; identity: Identity } | 'ended' | undefined;

/** The OIDC login endpoints and the session authenticator; see the module comment. */
export class LoginService {
  /** The sessions (create, look up, revoke, revoke a subject). */
  readonly sessions: SessionManager;
  readonly #store: StateStore;
  readonly #logger: Logger;
  readonly #providers = new Map<string, OidcClient>();
  readonly #isServedHost: ServedHostCheck;
  readonly #signIn: { hostname: string; authority: string } | undefined;
  readonly #now: () => number;
  readonly #refreshSkew: number;
  readonly #loginTtl: number;
  readonly #handoffTtl: number;
  readonly #loginRate: LoginRateLimit;
  readonly #loginCookie: string;
  readonly #loginCookiePath: string;
  readonly #ownCookies: ReadonlySet<string>;
  readonly #refreshing = new Map<string, Promise<RefreshOutcome>>();
  readonly #retryAt = new Map<string, number>();
  // One frozen `ok` answer per identity object, so the hot path allocates nothing on a cache hit.
  readonly #okResults = new WeakMap<Identity, SessionAuthResult>();

  constructor(options: LoginServiceOptions) {
    this.#store = options.store;
    this.#logger = options.logger;
    this.#now = options.now ?? Date.now;
    this.sessions = new SessionManager(options.store, options.session, {
      ...options.sessionOptions,
      now: this.#now,
    });
    for (const p of options.providers) {
      const c =
        p instanceof OidcClient ? p : new OidcClient(p, options.logger, { now: this.#now, ...options.oidc });
      if (this.#providers.has(c.name))
        throw new SessionConfigError('identity.providers', `duplicate provider ${c.name}`);
      this.#providers.set(c.name, c);
    }
    this.#isServedHost = options.isServedHost;
    if (options.signInHost !== undefined) {
      const u = URL.parse(`http://${options.signInHost}/`);
      if (u === null || u.pathname !== '/' || u.username !== '' || u.search !== '') {
        throw new SessionConfigError(
          'identity.session.signInHost',
          `"${options.signInHost}" is not host or host:port`,
        );
      }
      this.#signIn = { hostname: stripDot(u.hostname), authority: options.signInHost.toLowerCase() };
    }
    this.#refreshSkew = options.refreshSkew ?? 60_000;
    this.#loginTtl = options.loginTtl ?? 600_000;
    this.#handoffTtl = options.handoffTtl ?? 30_000;
    this.#loginRate = checkLoginRateLimit(options.loginRateLimit ?? DEFAULT_LOGIN_RATE_LIMIT);
    this.#loginCookie = `${options.session.cookie}_login`;
    this.#ownCookies = new Set([options.session.cookie, this.#loginCookie]);
    // A __Host- cookie must have Path=/; otherwise the login cookie stays on the reserved prefix.
    this.#loginCookiePath = options.session.cookie.startsWith('__Host-') ? '/' : '/.gatehouse/';
  }

  /**
   * Builds the service from the configuration, or returns undefined when no OIDC provider is configured.
   * `resolve` turns `env:`/`file:` references into values (e.g. `SecretResolver.resolveSecret`).
   * Throws `SessionConfigError`/`OidcError` for settings that cannot work.
   */
  static fromConfig(
    config: Config,
    resolve: (ref: string) => string,
    deps: {
      store: StateStore;
      logger: Logger;
      isServedHost?: ServedHostCheck;
      now?: () => number;
    },
  ): LoginService | undefined {
    const identity = config.identity;
    if (identity === undefined || identity.providers.length === 0) return undefined;
    const session = identity.session;
    if (session === undefined) {
      throw new SessionConfigError(
        'identity.session',
        'required when identity.providers is set (secrets for the cookie)',
      );
    }
    return new LoginService({
      store: deps.store,
      logger: deps.logger,
      now: deps.now,
      isServedHost: deps.isServedHost ?? servedHostChecker(config),
      signInHost: session.signInHost,
      session: {
        secrets: session.secrets.map(resolve),
        maxAge: session.maxAge,
        idleTimeout: session.idleTimeout,
        cookie: session.cookie,
        domain: session.domain,
      },
      providers: identity.providers.map((p) => ({
        name: p.name,
        displayName: p.displayName,
        issuer: p.issuer,
        clientId: p.clientId,
        clientSecret: p.clientSecret === undefined ? undefined : resolve(p.clientSecret),
        scopes: p.scopes,
        groupsClaim: p.groupsClaim,
      })),
    });
  }

  /** The configured providers, in order. */
  get providers(): readonly OidcClient[] {
    return [...this.#providers.values()];
  }

  /** True for the paths `handle` answers (login, callback, handoff, logout, signed-out, userinfo). */
  handles(path: string): boolean {
    return PATHS.has(path);
  }

  /**
   * Answers a `/.gatehouse/*` request completely (never throws): the login endpoints above, 404 for
   * other paths under the prefix, 405 for other methods, 429 for login starts over the per-address
   * limit. Store or provider failures become error pages (503/502) and nothing is half-done: no session
   * without a fully validated callback.
   */
  async handle(req: IncomingMessage, res: ServerResponse, facts: LoginFacts): Promise<void> {
    const method = req.method ?? 'GET';
    try {
      if (!PATHS.has(facts.path)) {
        this.#fail(res, method, 404, 'GH_NOT_FOUND', 'Not found', 'There is nothing here.');
        return;
      }
      const logout = facts.path === `${GATEHOUSE_PREFIX}logout`;
      if (!(method === 'GET' || method === 'HEAD' || (logout && method === 'POST'))) {
        res.setHeader('allow', logout ? 'GET, HEAD, POST' : 'GET, HEAD');
        this.#fail(
          res,
          method,
          405,
          'GH_METHOD_NOT_ALLOWED',
          'Method not allowed',
          `${method} is not allowed here.`,
        );
        return;
      }
      const here = hereOf(facts);
      if (here === undefined) {
        this.#fail(
          res,
          method,
          400,
          'GH_BAD_HOST',
          'Bad request',
          'The Host header is missing or does not match.',
        );
        return;
      }
      const params = new URLSearchParams(facts.query);
      switch (facts.path.slice(GATEHOUSE_PREFIX.length)) {
        case 'login':
          return await this.#login(req, res, facts, here, params);
        case 'callback':
          return await this.#callback(req, res, facts, here, params);
        case 'handoff':
          return await this.#handoff(req, res, facts, here, params);
        case 'logout':
          return await this.#logout(req, res, facts, here, params);
        case 'signed-out':
          sendPage(res, 200, signedOutPage({ signInHref: SIGN_IN_AGAIN }), {}, method);
          return;
        case 'userinfo':
          return await this.#userinfo(req, res, facts);
      }
    } catch (err) {
      this.#failFromError(res, method, err, facts);
    }
  }

  /**
   * The session authenticator of the request path. `none` without a session cookie (or when the route
   * offers only other providers), `ok` with the identity, `invalid` with `session-invalid` (forged cookie,
   * unknown secret) or `session-expired` (ended, revoked, idle, refresh refused). Refreshes the access
   * token shortly before it expires. `setCookie`, when present, must be added to the response. Throws
   * `StateStoreError` (503) when the store cannot answer: fail closed.
   */
  async authenticateSession(
    cookieHeader: string | undefined,
    facts: Pick<LoginFacts, 'tls'>,
    route?: LoginRoute,
  ): Promise<SessionAuthResult> {
    const found = await this.sessions.lookup(cookieHeader);
    if (found.kind === 'none') return NONE;
    if (found.kind === 'invalid') {
      return {
        kind: 'invalid',
        reason: found.reason,
        message: found.message,
        setCookie: this.sessions.clearCookie(facts.tls),
      };
    }
    let record = found.record;
    let identity = found.identity;
    if (this.#refreshDue(found.id, record)) {
      const outcome = await this.#refresh(found.id, record);
      if (outcome === 'ended') {
        return {
          kind: 'invalid',
          reason: 'session-expired',
          message: 'the session ended: its tokens could not be refreshed',
          setCookie: this.sessions.clearCookie(facts.tls),
        };
      }
      if (outcome !== undefined) {
        record = outcome.record;
        identity = outcome.identity;
      }
    }
    const allowed = route?.config.providers;
    if (allowed !== undefined && !allowed.includes(record.provider)) return NONE;
    if (found.reseal)
      return { kind: 'ok', identity, setCookie: this.sessions.setCookie(found.id, record, facts.tls) };
    let ok = this.#okResults.get(identity);
    if (ok === undefined) {
      ok = Object.freeze({ kind: 'ok', identity });
      this.#okResults.set(identity, ok);
    }
    return ok;
  }

  /**
   * 302 to `/.gatehouse/login` on this host with the current path as the return address (and the route's
   * providers). Clears a session cookie the request carried, since only a dead session gets here.
   */
  loginRedirect(req: IncomingMessage, res: ServerResponse, facts: LoginFacts, route?: LoginRoute): void {
    const cookies =
      cookieValues(req.headers.cookie, this.sessions.settings.cookie).length > 0
        ? [this.sessions.clearCookie(facts.tls)]
        : [];
    redirect(res, signInAddress(route, facts), cookies, req.method);
  }

  /**
   * 401 with `WWW-Authenticate`: an HTML page with a sign-in link for browsers, else JSON
   * `{ error, reason, message }`. `setCookie` is the value from `authenticateSession`, if any.
   */
  sendUnauthorized(
    req: IncomingMessage,
    res: ServerResponse,
    facts: LoginFacts,
    p: { reason: ReasonCode; reasonText?: string; setCookie?: string | undefined; route?: LoginRoute },
  ): void {
    res.setHeader('www-authenticate', 'Bearer realm="gatehouse"');
    if (p.setCookie !== undefined) appendSetCookie(res, p.setCookie);
    if (!acceptsHtml(req)) {
      sendJson(
        res,
        401,
        { error: 'unauthenticated', reason: p.reason, message: p.reasonText ?? p.reason },
        req.method,
      );
      return;
    }
    sendPage(
      res,
      401,
      unauthorizedPage({
        reason: p.reason,
        reasonText: p.reasonText,
        signInHref: signInAddress(p.route, facts),
      }),
      {},
      req.method,
    );
  }

  /**
   * 403 for a known caller who is not allowed: an HTML page naming the identity and the reason with a
   * sign-out link (never a redirect, so never a loop), or JSON for non-HTML clients.
   */
  sendForbidden(
    req: IncomingMessage,
    res: ServerResponse,
    p: { identity: Identity | undefined; reason: ReasonCode; reasonText?: string },
  ): void {
    if (!acceptsHtml(req)) {
      sendJson(
        res,
        403,
        { error: 'forbidden', reason: p.reason, message: p.reasonText ?? p.reason },
        req.method,
      );
      return;
    }
    const who =
      p.identity === undefined
        ? undefined
        : { user: p.identity.user, email: p.identity.email, source: p.identity.source };
    const signOutHref = p.identity?.authMethod === 'session' ? `${GATEHOUSE_PREFIX}logout` : undefined;
    sendPage(
      res,
      403,
      forbiddenPage({ who, reason: p.reason, reasonText: p.reasonText, signOutHref }),
      {},
      req.method,
    );
  }

  /**
   * The Cookie header to send upstream: without the session and login cookies (undefined when nothing
   * is left). Use it unless the route sets `passCredentials`.
   */
  stripCookies(cookieHeader: string | undefined): string | undefined {
    return removeCookies(cookieHeader, this.#ownCookies);
  }

  /** Ends one session by id (admin action). */
  revokeSession(id: string): Promise<void> {
    return this.sessions.revoke(id);
  }

  /** Ends every session of a subject at a provider; returns how many ended. */
  revokeSubject(provider: string, subject: string): Promise<number> {
    return this.sessions.revokeSubject(provider, subject);
  }

  // ------------------------------------------------------------------------------------------------

  /**
   * `/.gatehouse/login`: checks the return address, sends sign-in for another host to that host (or to
   * the sign-in host), short-cuts a browser that is already signed in, shows the picker, and otherwise
   * starts sign-in: stores the state, sets the login cookie and redirects to the provider. Only that
   * last step counts against the per-address limit (`#admitLoginStart`).
   */
  async #login(
    req: IncomingMessage,
    res: ServerResponse,
    facts: LoginFacts,
    here: Here,
    params: URLSearchParams,
  ) {
    const method = req.method;
    const target = resolveReturnTo(params.get('rd') ?? undefined, here, this.#isServedHost);
    if (target === undefined) {
      this.#logger.warn(
        { host: facts.host, client: facts.clientIp },
        'login refused: return address not on a served host',
      );
      this.#fail(
        res,
        method,
        400,
        'GH_BAD_RETURN_URL',
        'Bad return address',
        'The return address is not on a site this gateway serves.',
      );
      return;
    }
    const onTarget = target.origin === here.origin;
    const hb = params.get('hb') ?? undefined;
    const atSignIn = this.#signIn !== undefined && this.#isSignInHost(here);
    const forward = new URLSearchParams({ rd: target.href });
    for (const k of ['provider', 'providers']) {
      const v = params.get(k);
      if (v !== null) forward.set(k, v);
    }
    // Sign-in for another host starts on that host, which binds its browser before anything else.
    if (!onTarget && !(atSignIn && hb !== undefined && RANDOM43.test(hb))) {
      redirect(res, `${target.origin}${GATEHOUSE_PREFIX}login?${forward}`, [], method);
      return;
    }
    if (this.#signIn !== undefined && !atSignIn) {
      const { value, cookie } = this.#binding(req, facts);
      forward.set('hb', sha256(value));
      redirect(
        res,
        `${here.scheme}://${this.#signIn.authority}${GATEHOUSE_PREFIX}login?${forward}`,
        [cookie],
        method,
      );
      return;
    }
    const candidates = this.#candidates(params.get('providers'));
    const wanted = params.get('provider');
    const current = await this.sessions.lookup(req.headers.cookie);
    if (
      current.kind === 'ok' &&
      candidates.some((c) => c.name === current.record.provider) &&
      (wanted === null || wanted === current.record.provider)
    ) {
      // Already signed in here: no need to see the provider again.
      if (onTarget) redirect(res, localPart(target), [], method);
      else await this.#handOff(res, method, current.id, target, hb!, []);
      return;
    }
    if (candidates.length === 0) {
      this.#fail(
        res,
        method,
        400,
        'GH_NO_PROVIDER',
        'Sign-in unavailable',
        'No identity provider is configured for this page.',
      );
      return;
    }
    let provider: OidcClient | undefined;
    if (wanted !== null) {
      provider = candidates.find((c) => c.name === wanted);
      if (provider === undefined) {
        this.#fail(
          res,
          method,
          400,
          'GH_UNKNOWN_PROVIDER',
          'Unknown identity provider',
          'That identity provider is not offered here.',
        );
        return;
      }
    } else if (candidates.length === 1) {
      provider = candidates[0];
    } else {
      // The page links carry only the checked return address, never the query as received.
      const entries = candidates.map((c) => {
        const q = new URLSearchParams({ rd: onTarget ? localPart(target) : target.href });
        const providers = params.get('providers');
        if (providers !== null) q.set('providers', providers);
        // Only a hand-off for another host (reached with a well-formed `hb`) needs the binding.
        if (!onTarget && hb !== undefined) q.set('hb', hb);
        q.set('provider', c.name);
        return { displayName: c.displayName, href: `${GATEHOUSE_PREFIX}login?${q}` };
      });
      sendPage(res, 200, pickerPage(entries), {}, method);
      return;
    }
    const p = provider!;
    // Counted only here, just before the state and the login cookie are made: the exits above (400,
    // redirects elsewhere, the picker, an existing session) store no new state, so they cost no slot.
    if (!(await this.#admitLoginStart(res, method, facts))) return;
    const { value, cookie } = this.#binding(req, facts);
    const state = randomBytes(32).toString('base64url');
    const redirectUri = `${here.origin}${GATEHOUSE_PREFIX}callback`;
    const login: LoginState = {
      v: 1,
      provider: p.name,
      verifier: randomBytes(32).toString('base64url'),
      nonce: randomBytes(32).toString('base64url'),
      redirectUri,
      target: target.href,
      binding: sha256(value),
      hb: onTarget ? undefined : hb,
    };
    const url = await p.authorizationUrl({
      redirectUri,
      state,
      nonce: login.nonce,
      codeVerifier: login.verifier,
    });
    await this.#store.set(`login:${state}`, JSON.stringify(login), this.#loginTtl);
    redirect(res, url.href, [cookie], method);
  }

  /**
   * Counts a login start of this client address in the current fixed window: true when within the
   * limit, else answers 429 with `Retry-After` (seconds to the window's end). A store error is thrown
   * and becomes 503, like every other store error of the login endpoints: fail closed.
   */
  async #admitLoginStart(
    res: ServerResponse,
    method: string | undefined,
    facts: LoginFacts,
  ): Promise<boolean> {
    const { max, windowMs } = this.#loginRate;
    const now = this.#now();
    const slot = Math.floor(now / windowMs);
    const address = rateLimitAddress(facts.clientIp);
    // Created at or after the window's start, the counter outlives the window (by less than one more),
    // so instances whose clocks differ a little still count in the same key.
    const count = await this.#store.incr(`loginrl:${address}:${slot}`, 1, windowMs);
    if (count <= max) return true;
    const retryAfter = Math.max(1, Math.ceil(((slot + 1) * windowMs - now) / 1000));
    // Exactly one request per address and window takes the counter to max + 1, even across instances.
    if (count === max + 1) {
      this.#logger.warn(
        { host: facts.host, client: facts.clientIp, address, max, windowMs },
        'login starts rate-limited for this client address',
      );
      this.#audit(facts, 'signin', 'signin.failed', { reason: 'rate-limited' });
    }
    res.setHeader('retry-after', String(retryAfter));
    this.#fail(
      res,
      method,
      429,
      'GH_LOGIN_RATE_LIMITED',
      'Too many sign-in attempts',
      `Too many sign-ins were started from your network. Please try again in ${retryAfter} seconds.`,
    );
    return false;
  }

  async #callback(
    req: IncomingMessage,
    res: ServerResponse,
    facts: LoginFacts,
    here: Here,
    params: URLSearchParams,
  ) {
    const method = req.method;
    const state = params.get('state');
    const raw = state !== null && STATE_RE.test(state) ? await this.#store.take(`login:${state}`) : undefined;
    const login = raw === undefined ? undefined : parseJson<LoginState>(raw);
    if (state === null || login === undefined || login.v !== 1) {
      this.#logger.warn(
        { host: facts.host, client: facts.clientIp },
        'sign-in callback with an unknown, used or expired state',
      );
      this.#audit(facts, 'signin', 'signin.failed', { reason: 'unknown-state' });
      this.#fail(
        res,
        method,
        400,
        'GH_LOGIN_STATE',
        'Sign-in not recognised',
        'This sign-in request is unknown, expired or already used. Please start again.',
        SIGN_IN_AGAIN,
      );
      return;
    }
    // The browser that started sign-in holds the login cookie; any other browser is refused (login CSRF).
    const mine = this.#loginCookieValue(req);
    const bound = mine !== undefined && sameHash(sha256(mine), login.binding);
    if (!bound || login.redirectUri !== `${here.origin}${GATEHOUSE_PREFIX}callback`) {
      this.#logger.warn(
        { host: facts.host, client: facts.clientIp },
        'sign-in callback from a browser that did not start it',
      );
      this.#audit(facts, 'signin', 'signin.failed', { reason: 'browser-not-bound' });
      this.#fail(
        res,
        method,
        400,
        'GH_LOGIN_STATE',
        'Sign-in not recognised',
        'This sign-in was started in another browser or on another site. Please start again.',
        SIGN_IN_AGAIN,
      );
      return;
    }
    const provider = this.#providers.get(login.provider);
    if (provider === undefined) {
      this.#fail(
        res,
        method,
        400,
        'GH_UNKNOWN_PROVIDER',
        'Unknown identity provider',
        'That identity provider is no longer configured.',
        SIGN_IN_AGAIN,
      );
      return;
    }
    const callbackUrl = new URL(login.redirectUri + facts.query);
    const result = await provider.completeLogin(callbackUrl, {
      state,
      nonce: login.nonce,
      codeVerifier: login.verifier,
    });
    const { id, record } = await this.sessions.create(result.profile, result.tokens);
    this.#logger.info(
      {
        provider: provider.name,
        subject: record.subject,
        user: record.user,
        host: facts.host,
        client: facts.clientIp,
      },
      'signed in',
    );
    this.#audit(facts, 'signin', 'signin.succeeded', {
      provider: provider.name,
      identity: record.subject,
      user: record.user,
      email: record.email,
      groups: record.groups,
    });
    const target = new URL(login.target);
    const cookie = this.sessions.setCookie(id, record, facts.tls);
    if (target.origin === here.origin || login.hb === undefined) {
      redirect(res, target.origin === here.origin ? localPart(target) : `${here.origin}/`, [cookie], method);
      return;
    }
    await this.#handOff(res, method, id, target, login.hb, [cookie]);
  }

  async #handOff(
    res: ServerResponse,
    method: string | undefined,
    sid: string,
    target: URL,
    hb: string,
    cookies: string[],
  ) {
    const code = randomBytes(32).toString('base64url');
    const handoff: Handoff = { v: 1, sid, origin: target.origin, target: target.href, hb };
    await this.#store.set(`handoff:${code}`, JSON.stringify(handoff), this.#handoffTtl);
    redirect(res, `${target.origin}${GATEHOUSE_PREFIX}handoff?code=${code}`, cookies, method);
  }

  async #handoff(
    req: IncomingMessage,
    res: ServerResponse,
    facts: LoginFacts,
    here: Here,
    params: URLSearchParams,
  ) {
    const method = req.method;
    const code = params.get('code');
    const raw = code !== null && RANDOM43.test(code) ? await this.#store.take(`handoff:${code}`) : undefined;
    const h = raw === undefined ? undefined : parseJson<Handoff>(raw);
    const mine = this.#loginCookieValue(req);
    const bound = h !== undefined && mine !== undefined && sameHash(sha256(mine), h.hb);
    if (h === undefined || h.v !== 1 || h.origin !== here.origin || !bound) {
      this.#logger.warn(
        { host: facts.host, client: facts.clientIp },
        'session hand-off refused (unknown, used, expired, other host or other browser)',
      );
      this.#audit(facts, 'signin', 'signin.failed', { reason: 'hand-off-refused' });
      this.#fail(
        res,
        method,
        400,
        'GH_HANDOFF',
        'Sign-in not recognised',
        'This sign-in link is unknown, expired, already used or meant for another browser.',
        SIGN_IN_AGAIN,
      );
      return;
    }
    const record = await this.sessions.get(h.sid);
    if (record === undefined) {
      this.#fail(
        res,
        method,
        400,
        'GH_HANDOFF',
        'Session ended',
        'The session ended before it reached this site. Please sign in again.',
        SIGN_IN_AGAIN,
      );
      return;
    }
    redirect(res, localPart(new URL(h.target)), [this.sessions.setCookie(h.sid, record, facts.tls)], method);
  }

  async #logout(
    req: IncomingMessage,
    res: ServerResponse,
    facts: LoginFacts,
    here: Here,
    params: URLSearchParams,
  ) {
    const method = req.method;
    const found = await this.sessions.lookup(req.headers.cookie);
    const cookies = [this.sessions.clearCookie(facts.tls)];
    let endSession: URL | undefined;
    if (found.kind === 'ok') {
      const { record } = found;
      if (params.get('everywhere') === '1')
        await this.sessions.revokeSubject(record.provider, record.subject);
      else await this.sessions.revoke(found.id);
      this.#logger.info(
        { provider: record.provider, subject: record.subject, host: facts.host, client: facts.clientIp },
        'signed out',
      );
      this.#audit(facts, 'signout', 'signout.succeeded', {
        provider: record.provider,
        identity: record.subject,
        email: record.email,
        everywhere: params.get('everywhere') === '1',
      });
      endSession = await this.#providers
        .get(record.provider)
        ?.endSessionUrl(record.tokens.idToken, `${here.origin}${GATEHOUSE_PREFIX}signed-out`);
    }
    if (endSession !== undefined) {
      redirect(res, endSession.href, cookies, method);
      return;
    }
    sendPage(res, 200, signedOutPage({ signInHref: SIGN_IN_AGAIN }), { 'set-cookie': cookies }, method);
  }

  async #userinfo(req: IncomingMessage, res: ServerResponse, facts: LoginFacts) {
    const auth = await this.authenticateSession(req.headers.cookie, facts);
    if (auth.setCookie !== undefined) appendSetCookie(res, auth.setCookie);
    if (auth.kind !== 'ok') {
      res.setHeader('www-authenticate', 'Bearer realm="gatehouse"');
      const reason = auth.kind === 'invalid' ? auth.reason : 'user-unauthenticated';
      noteErrorCode(res, 'GH_UNAUTHENTICATED');
      sendJson(res, 401, { error: 'unauthenticated', reason }, req.method);
      return;
    }
    const i = auth.identity;
    sendJson(
      res,
      200,
      {
        subject: i.subject,
        user: i.user,
        email: i.email ?? null,
        groups: i.groups,
        provider: i.source,
        authMethod: i.authMethod,
        expiresAt: i.expiresAt ?? null,
      },
      req.method,
    );
  }

  #candidates(list: string | null): OidcClient[] {
    const all = [...this.#providers.values()];
    if (list === null) return all;
    const names = new Set(list.split(','));
    return all.filter((c) => names.has(c.name));
  }

  #isSignInHost(here: Here): boolean {
    const s = this.#signIn!;
    return here.authority === s.authority || (here.hostname === s.hostname && !s.authority.includes(':'));
  }

  /**
   * The browser's login cookie, when it holds exactly one that the gateway could have made. Two
   * different values mean one was planted from a sibling host (cookie tossing): the planter would know
   * the binding, so neither is used (the callback and hand-off refuse, a new sign-in gets a fresh one).
   */
  #loginCookieValue(req: IncomingMessage): string | undefined {
    let found: string | undefined;
    for (const v of cookieValues(req.headers.cookie, this.#loginCookie)) {
      if (!RANDOM43.test(v) || v === found) continue;
      if (found !== undefined) return undefined;
      found = v;
    }
    return found;
  }

  /** The browser's login cookie value (reused so parallel sign-ins in several tabs share it) and its Set-Cookie. */
  #binding(req: IncomingMessage, facts: LoginFacts): { value: string; cookie: string } {
    const value = this.#loginCookieValue(req) ?? randomBytes(32).toString('base64url');
    const cookie = serializeCookie(this.#loginCookie, value, {
      maxAge: Math.floor(this.#loginTtl / 1000),
      path: this.#loginCookiePath,
      tls: facts.tls,
    });
    return { value, cookie };
  }

  #refreshDue(id: string, record: SessionRecord): boolean {
    const t = record.tokens;
    if (t.refreshToken === undefined || t.expiresAt === undefined) return false;
    const now = this.#now();
    if (now < t.expiresAt - this.#refreshSkew) return false;
    const retryAt = this.#retryAt.get(id);
    return retryAt === undefined || now >= retryAt;
  }

  /** One refresh per session at a time: in this process (shared promise) and across instances (a store lock). */
  #refresh(id: string, record: SessionRecord): Promise<RefreshOutcome> {
    const running = this.#refreshing.get(id);
    if (running !== undefined) return running;
    const p = this.#doRefresh(id, record).finally(() => this.#refreshing.delete(id));
    this.#refreshing.set(id, p);
    return p;
  }

  async #doRefresh(id: string, record: SessionRecord): Promise<RefreshOutcome> {
    const lock = `refresh-lock:${id}`;
    if (!(await this.#store.add(lock, '1', 30_000))) {
      // Another instance is refreshing: use what the store holds now (its result, or the still valid session).
      const fresh = await this.sessions.get(id);
      return fresh === undefined ? 'ended' : { record: fresh, identity: identityOf(fresh) };
    }
    try {
      const provider = this.#providers.get(record.provider);
      if (provider === undefined)
        throw new OidcError(
          'GH_OIDC_REFRESH_REJECTED',
          401,
          `provider ${record.provider} is no longer configured`,
        );
      const result = await provider.refresh(record);
      const updated: SessionRecord = {
        ...record,
        user: result.profile.user,
        email: result.profile.email,
        groups: result.profile.groups,
        claims: result.profile.claims,
        tokens: result.tokens,
      };
      await this.sessions.update(id, updated);
      this.#retryAt.delete(id);
      this.#logger.debug({ provider: record.provider, subject: record.subject }, 'session tokens refreshed');
      return { record: updated, identity: identityOf(updated) };
    } catch (err) {
      if (err instanceof StateStoreError) throw err;
      const now = this.#now();
      const unreachable = err instanceof OidcError && err.code === 'GH_OIDC_UNAVAILABLE';
      const expiresAt = record.tokens.expiresAt ?? 0;
      if (unreachable && now < expiresAt) {
        // The provider is down but the access token still holds: keep the session, try again shortly.
        if (this.#retryAt.size > 10_000) this.#retryAt.clear();
        this.#retryAt.set(id, now + 10_000);
        this.#logger.warn(
          { provider: record.provider, subject: record.subject, err: messageOf(err) },
          'token refresh failed; retrying later',
        );
        return undefined;
      }
      // Refused, or unreachable with an expired token: the session ends (fail closed), cleanly.
      this.#retryAt.delete(id);
      await this.sessions.revoke(id);
      this.#logger.info(
        { provider: record.provider, subject: record.subject, err: messageOf(err) },
        'session ended: token refresh failed',
      );
      emitAudit({
        event: 'session',
        code: 'session.refresh-failed',
        provider: record.provider,
        identity: record.subject,
        email: record.email,
        revoked: true,
        error: messageOf(err),
      });
      return 'ended';
    } finally {
      await this.#store.delete(lock).catch(() => undefined);
    }
  }

  /** Records a sign-in event with the request's host, client address and id. */
  #audit(facts: LoginFacts, event: string, code: string, fields: Omit<AuditRecord, 'event' | 'code'>): void {
    emitAudit({
      event,
      code,
      requestId: facts.requestId,
      ...fields,
      host: facts.host,
      client: facts.clientIp,
    });
  }

  #fail(
    res: ServerResponse,
    method: string | undefined,
    status: number,
    code: string,
    title: string,
    message: string,
    retryHref?: string,
  ) {
    noteErrorCode(res, code);
    sendPage(res, status, errorPage({ title, message, code, retryHref }), {}, method);
  }

  #failFromError(res: ServerResponse, method: string | undefined, err: unknown, facts: LoginFacts): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    if (err instanceof OidcError) {
      const denied = err.code === 'GH_OIDC_DENIED';
      this.#logger.warn(
        { code: err.code, host: facts.host, client: facts.clientIp, err: err.message },
        'sign-in failed',
      );
      this.#audit(facts, 'signin', 'signin.failed', { reason: err.code, error: err.message });
      const status = err.status >= 400 ? err.status : 502;
      const message = denied
        ? `The identity provider did not sign you in (${err.oauthError ?? 'error'}).`
        : err.code === 'GH_OIDC_UNAVAILABLE'
          ? 'The identity provider cannot be reached right now.'
          : 'The identity provider sent an answer that could not be accepted.';
      this.#fail(res, method, status, err.code, 'Sign-in failed', message, SIGN_IN_AGAIN);
      return;
    }
    if (err instanceof StateStoreError) {
      this.#fail(
        res,
        method,
        503,
        err.code,
        'Service unavailable',
        'Sign-in is unavailable right now. Please try again shortly.',
        SIGN_IN_AGAIN,
      );
      return;
    }
    const code = err instanceof GatehouseError ? err.code : 'GH_LOGIN_FAILED';
    this.#logger.error(
      { code, host: facts.host, client: facts.clientIp, err: messageOf(err) },
      'login endpoint failed',
    );
    this.#fail(
      res,
      method,
      500,
      code,
      'Something went wrong',
      'The request could not be completed.',
      SIGN_IN_AGAIN,
    );
  }
}

const NONE: SessionAuthResult = Object.freeze({ kind: 'none' });

/** A copy of `rate`; throws a TypeError unless both numbers are positive integers (a programming error). */
function checkLoginRateLimit(rate: LoginRateLimit): LoginRateLimit {
  const { max, windowMs } = rate;
  if (!Number.isSafeInteger(max) || max <= 0 || !Number.isSafeInteger(windowMs) || windowMs <= 0)
    throw new TypeError(
      `loginRateLimit: max and windowMs must be positive integers, got ${max}, ${windowMs}`,
    );
  return { max, windowMs };
}

/**
 * The address a login start is counted under: IPv4 as is; IPv6 by its /64 (`2001:db8:1:2::/64`), since
 * a host picks its own interface identifier inside its /64 (RFC 4291 2.5.1, temporary addresses of
 * RFC 8981) and could use a fresh address per request; IPv4-mapped IPv6 as the IPv4 address. The zone
 * of a link-local address is ignored.
 */
function rateLimitAddress(ip: string): string {
  if (ip === '') return 'unknown';
  if (!ip.includes(':')) return ip.slice(0, 64);
  const zone = ip.indexOf('%');
  const w = new Uint16Array(8);
  if (!parseIPv6(ip, zone === -1 ? ip.length : zone, w)) return ip.slice(0, 64);
  if (isMapped(w)) return `${w[6]! >>> 8}.${w[6]! & 255}.${w[7]! >>> 8}.${w[7]! & 255}`;
  return `${w[0]!.toString(16)}:${w[1]!.toString(16)}:${w[2]!.toString(16)}:${w[3]!.toString(16)}::/64`;
}

/**
 * The return address after sign-in, or undefined when it is not acceptable. Accepted: a path on this
 * host (`/x`), or an absolute http(s) URL without userinfo whose host this gateway serves. The checks
 * run on the address AFTER WHATWG URL parsing, the very normalization that produces `Location` (dot
 * segments collapsed, `%2e` decoded, tab and newline dropped): `/.//evil.example/x` parses to the path
 * `//evil.example/x`, which a browser reads as a network-path reference (RFC 3986 4.2), so a parsed path
 * that starts with `//` is refused, whatever host it is on. Scheme-relative input (`//x`), backslashes
 * and control characters are refused before parsing too. A trailing dot of the host is dropped. An
 * absent or empty `rd` means `/` on this host.
 */
export function resolveReturnTo(
  rd: string | undefined,
  here: Pick<Here, 'origin' | 'hostname' | 'port' | 'scheme'>,
  isServedHost: ServedHostCheck,
): URL | undefined {
  if (rd === undefined || rd === '') return new URL('/', here.origin);
  if (rd.length > MAX_RD || /[\u0000-\u0020\u007f\\]/.test(rd)) return undefined;
  let url: URL | null;
  if (rd.startsWith('/')) {
    if (rd.startsWith('//')) return undefined;
    url = URL.parse(rd, here.origin);
    if (url === null || url.origin !== here.origin) return undefined;
  } else {
    const m = /^(https?):\/\/([^/?#]*)/i.exec(rd);
    if (m === null || m[2]!.includes('@')) return undefined;
    url = URL.parse(rd);
    if (url === null || url.username !== '' || url.password !== '') return undefined;
    // One trailing dot is the same host (an absolute name); more is no host name at all.
    if (url.hostname.endsWith('..')) return undefined;
    if (url.hostname.endsWith('.')) url.hostname = stripDot(url.hostname);
    if (url.origin !== here.origin) {
      const scheme = url.protocol === 'https:' ? 'https' : 'http';
      const port = url.port === '' ? (scheme === 'https' ? 443 : 80) : Number(url.port);
      if (!isServedHost(url.hostname, port, scheme)) return undefined;
    }
  }
  // Read as the browser will read the Location built from it: never a network-path reference.
  return isNetworkPath(url.pathname) ? undefined : url;
}

/** True for a path a browser would resolve as `//authority...` (a backslash counts as `/` for http URLs). */
function isNetworkPath(path: string): boolean {
  const c = path.charCodeAt(1);
  return path.charCodeAt(0) === 0x2f && (c === 0x2f || c === 0x5c);
}

/**
 * A `ServedHostCheck` from the configuration: the exact and `*.suffix` hosts of the routes, the hosts
 * of listeners bound to a specific address, and the sign-in host, on a listener port or 80/443 (a
 * balancer in front may map ports). Routes without a host do not make every host "served".
 */
export function servedHostChecker(config: Config): ServedHostCheck {
  const exact = new Set<string>();
  const suffixes: string[] = [];
  const ports = new Set<number>([80, 443]);
  for (const l of config.listeners) {
    const b = parseBind(l.bind);
    if (b === undefined) continue;
    ports.add(b.port);
    if (b.host !== '0.0.0.0' && b.host !== '::' && b.host !== '')
      exact.add(b.host.includes(':') ? `[${b.host}]` : b.host.toLowerCase());
  }
  for (const r of config.routes) {
    const hosts = compileHosts(r.match.host);
    for (const h of hosts.exact) exact.add(h);
    suffixes.push(...hosts.suffixes);
  }
  const signIn = config.identity?.session?.signInHost;
  if (signIn !== undefined) {
    const u = URL.parse(`http://${signIn}/`);
    if (u !== null) {
      exact.add(stripDot(u.hostname));
      if (u.port !== '') ports.add(Number(u.port));
    }
  }
  return (hostname, port) => {
    if (!ports.has(port)) return false;
    const h = stripDot(hostname.toLowerCase());
    return exact.has(h) || suffixes.some((s) => h.length > s.length && h.endsWith(s));
  };
}

function stripDot(h: string): string {
  return h.endsWith('.') ? h.slice(0, -1) : h;
}

function hereOf(facts: Pick<LoginFacts, 'host' | 'authority' | 'tls'>): Here | undefined {
  // The authority the data plane routed on (absolute-form, :authority, then Host), never re-read here.
  const raw = facts.authority;
  if (raw === '' || /[\s/\\@?#]/.test(raw)) return undefined;
  const scheme = facts.tls ? 'https' : 'http';
  const u = URL.parse(`${scheme}://${raw}/`);
  if (u === null || u.pathname !== '/') return undefined;
  const hostname = stripDot(u.hostname);
  if (hostname !== facts.host) return undefined;
  const port = u.port === '' ? (facts.tls ? 443 : 80) : Number(u.port);
  return { scheme, authority: u.host, hostname, port, origin: u.origin };
}

/**
 * The `Location` for a return address on this origin: its path and query, or the whole URL should the
 * path ever read as a network-path reference (`//evil.example`), which a relative Location would hand to
 * another host. `resolveReturnTo` refuses such paths; this keeps every redirect safe on its own.
 */
function localPart(url: URL): string {
  return isNetworkPath(url.pathname) ? url.href : `${url.pathname}${url.search}`;
}

function sha256(value: string): string {
  return createHash('sha256').update(value).digest('base64url');
}

function sameHash(a: string, b: string | undefined): boolean {
  if (typeof b !== 'string' || a.length !== b.length) return false;
  return timingSafeEqual(Buffer.from(a), Buffer.from(b));
}

function parseJson<T>(raw: string): T | undefined {
  try {
    const v = JSON.parse(raw) as unknown;
    return typeof v === 'object' && v !== null ? (v as T) : undefined;
  } catch {
    return undefined;
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function redirect(
  res: ServerResponse,
  location: string,
  cookies: string[],
  method: string | undefined,
): void {
  appendSetCookie(res, cookies);
  res.statusCode = 302;
  res.setHeader('location', location);
  res.setHeader('cache-control', 'no-store');
  // Codes and state in these URLs must not leak to other sites through Referer.
  res.setHeader('referrer-policy', 'no-referrer');
  res.setHeader('content-type', 'text/plain; charset=utf-8');
  const body = Buffer.from('Redirecting\n');
  res.setHeader('content-length', body.length);
  res.end(method === 'HEAD' ? undefined : body);
}

function sendJson(res: ServerResponse, status: number, body: unknown, method: string | undefined): void {
  const buf = Buffer.from(JSON.stringify(body));
  res.statusCode = status;
  res.setHeader('content-type', 'application/json');
  res.setHeader('cache-control', PAGE_HEADERS['cache-control']!);
  res.setHeader('content-length', buf.length);
  res.end(method === 'HEAD' ? undefined : buf);
}

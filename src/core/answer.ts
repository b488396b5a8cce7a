/**
 * `answer()`: the one decision every data plane asks for. A request described as plain data (see
 * `RequestDescription`; no Node.js request object) and its route go in; out comes everything a data plane
 * renders in its own protocol: the decision with its reason and identity, which of the client's gateway
 * credentials the upstream must not receive, the identity headers and signed assertion to add upstream,
 * the response headers (session Set-Cookie, CORS), and for a refusal what to answer (`refusalOf`).
 *
 *   credential order   Authorization (an API key or a JWT by shape) > the API key header > the client
 *                      certificate (mTLS listeners) > the session cookie; a credential that was
 *                      presented but is not acceptable never falls back to another one
 *   decision           `decideAccess` (core/decide.ts), the table of outcomes and reasons
 *   WebSocket          a handshake identified by an ambient credential (session cookie, certificate)
 *                      must come from an allowed Origin: else 403 `origin-not-allowed`, or on a public
 *                      route the request goes on without the browser's identity
 *
 * The answer is synchronous whenever nothing has to be fetched (a cached bearer token, an API key, a
 * certificate); only a token-cache miss and a session lookup return a promise. A state store that cannot
 * answer rejects with `StateStoreError` (503) on a protected route; public routes never depend on it:
 * they skip the session while the store is known to be down and wait for it at most
 * `PUBLIC_SESSION_WAIT_MS` otherwise. `decideAccess` may throw `PolicyUnavailableError` (403).
 */
import { GatehouseError } from '../errors.js';
import { looksLikeApiKey } from '../identity/apikeys.js';
import { bearerToken, looksLikeJwt } from '../identity/bearer.js';
import type { IdentityRuntime } from '../identity/index.js';
import { type LoginService, signInAddress } from '../identity/login.js';
import { type ClientCertificateSocket, certificateIdentity } from '../identity/mtls.js';
import type { AuthResult, Identity, ReasonCode } from '../identity/types.js';
import type { Limiter, LimitVerdict } from '../limits/stage.js';
import { auditing } from '../observe/audit-bus.js';
import { type AccessEntry, auditDetailOf } from '../observe/log.js';
import type { PolicySet } from '../policy/types.js';
import { StateStoreError } from '../state/types.js';
import { type Decision, decideAccess, describeReason, isBrowserNavigation } from './decide.js';
import type { CompiledRoute, RequestFacts, RouteTable } from './types.js';

/** A request as every data plane describes it to the core: plain data, normalized once. */
export interface RequestDescription extends RequestFacts {
  /** The name of the listener (or data plane entry) that received it: mTLS listeners read certificates. */
  readonly listener: string;
  /**
   * The scheme the client's page used: the listener's, or behind a trusted TLS-terminating proxy the
   * forwarded one. What a WebSocket handshake's Origin is compared with.
   */
  readonly scheme: 'http' | 'https';
  /** A WebSocket opening handshake (its Origin is checked when an ambient credential identifies it). */
  readonly upgrade: boolean;
  /** The TLS socket with the client's certificate, on listeners that ask for one. */
  readonly certificate: ClientCertificateSocket | undefined;
  /**
   * The data plane sees the upstream's response (the built-in proxy): quota costs reported in a
   * response header are charged after it. Elsewhere such a cost is charged as 1 at admission.
   */
  readonly seesResponse?: boolean | undefined;
  /** Aborted when the client goes away (lets a request held by a rate limit's `delay` go at once). */
  readonly signal?: AbortSignal | undefined;
}

/** What `answer()` needs of a loaded configuration (a `Runtime` fits). */
export interface DecisionRuntime {
  readonly routes: RouteTable;
  readonly policies: PolicySet;
  readonly identity: IdentityRuntime;
  readonly store: { readonly available: boolean };
  /** The limit stage (rate limits and quotas); undefined: nothing is limited. */
  readonly limits?: Limiter | undefined;
}

/** The answer of the decision core for one request. */
export interface Answer {
  readonly route: CompiledRoute;
  readonly decision: Decision;
  /** `X-Gatehouse-Assertion` for the upstream (allowed requests with an identity). */
  readonly assertion: string | undefined;
  /** Send `X-Gatehouse-User`/`-Email`/`-Groups` (the route's `identityHeaders`). */
  readonly identityHeaders: boolean;
  /** Which of the client's gateway credentials the upstream must not receive (`DROP_*` bits). */
  readonly drop: number;
  /** The API key header (lower case), for `DROP_API_KEY`. */
  readonly apiKeyHeader: string;
  /** The Cookie header without the gateway's cookies, for `DROP_COOKIE` (undefined: none left). */
  readonly cookie: string | undefined;
  /** Flat `[name, value, ...]` added to the client response: session Set-Cookie, CORS. */
  readonly responseHeaders: readonly string[] | undefined;
  /** Where the identity of the decision came from (`FROM_*`; `FROM_NOTHING` when it has none). */
  readonly source: CredentialSource;
  /** The verdict of the limit stage, on an allowed request of a route with limits. */
  readonly limit?: LimitVerdict | undefined;
}

/** The Authorization header carried the gateway credential that identified the caller. */
export const DROP_AUTHORIZATION = 1;
/** The configured API key header. */
export const DROP_API_KEY = 2;
/** The gateway's session and login cookies inside Cookie. */
export const DROP_COOKIE = 4;

/** No credential identified the caller. */
export const FROM_NOTHING = 0;
/** The Authorization header (a bearer JWT or an API key). */
export const FROM_AUTHORIZATION = 1;
/** The API key header. */
export const FROM_API_KEY_HEADER = 2;
/** The client certificate. */
export const FROM_CERTIFICATE = 3;
/** The session cookie. */
export const FROM_SESSION = 4;
/** One of the `FROM_*` values. */
export type CredentialSource = 0 | 1 | 2 | 3 | 4;

/**
 * How long a public route waits for the session behind a cookie before it answers without it: public
 * routes never depend on the state store, so a store that is slow, or down and not yet known to be,
 * costs them this much at most.
 */
export const PUBLIC_SESSION_WAIT_MS = 250;

const NONE: AuthResult = Object.freeze({ kind: 'none' });

/**
 * Authenticates the request and decides access on `route`. Synchronous unless a credential needs I/O
 * (a bearer token not yet verified, a session cookie); see the module comment for what may reject.
 */
export function answer(
  rt: DecisionRuntime,
  desc: RequestDescription,
  route: CompiledRoute,
  now: number = Date.now(),
): Answer | Promise<Answer> {
  const id = rt.identity;
  const headers = desc.headers;
  let source = FROM_NOTHING;
  let result: AuthResult | Promise<AuthResult> = NONE;
  const authorization = headers.authorization;
  const credential =
    authorization !== undefined && (id.bearer.enabled || id.apiKeys.enabled)
      ? bearerToken(authorization)
      : undefined;
  if (credential !== undefined) {
    source = FROM_AUTHORIZATION;
    // A key made by `gatehouse apikey create` has its own shape; a credential that is not a JWT either
    // is a key of the operator's own making, looked up by its hash like any other.
    result =
      looksLikeApiKey(credential) || !id.bearer.enabled || (id.apiKeys.enabled && !looksLikeJwt(credential))
        ? id.apiKeys.authenticate(credential, route.name, now)
        : id.bearer.authenticate(credential, now);
  } else if (id.apiKeys.enabled) {
    const key = headers[id.apiKeyHeader];
    if (typeof key === 'string') {
      source = FROM_API_KEY_HEADER;
      result = id.apiKeys.authenticate(key, route.name, now);
    }
  }
  if (result instanceof Promise) {
    const s = source;
    return result.then((r) => afterCredentials(rt, desc, route, r, s, now));
  }
  return afterCredentials(rt, desc, route, result, source, now);
}

function afterCredentials(
  rt: DecisionRuntime,
  desc: RequestDescription,
  route: CompiledRoute,
  auth: AuthResult,
  from: number,
  now: number,
): Answer | Promise<Answer> {
  const id = rt.identity;
  let result = auth;
  let source = from;
  if (
    result.kind === 'none' &&
    desc.certificate !== undefined &&
    id.certificateListeners.has(desc.listener)
  ) {
    result = certificateIdentity(desc.certificate, now);
    if (result.kind !== 'none') source = FROM_CERTIFICATE;
  }
  const login = id.login;
  const sessionCookie = id.sessionCookie;
  const cookie = desc.headers.cookie;
  // A quick look for the cookie's name first: the session lookup itself is asynchronous.
  if (
    result.kind === 'none' &&
    login !== undefined &&
    sessionCookie !== undefined &&
    cookie?.includes(sessionCookie)
  ) {
    if (route.config.public) return publicSession(rt, desc, route, login, cookie, now);
    // A protected route fails closed (503) when the store cannot answer, at once while it is known down.
    return login
      .authenticateSession(cookie, desc, route)
      .then((session) => conclude(rt, desc, route, session, FROM_SESSION, now, session.setCookie));
  }
  return conclude(rt, desc, route, result, source, now, undefined);
}

/**
 * The session on a public route: attached when the store answers in time, else the request goes on
 * anonymous (no identity headers, no assertion), and at once while the store is known to be down.
 */
function publicSession(
  rt: DecisionRuntime,
  desc: RequestDescription,
  route: CompiledRoute,
  login: LoginService,
  cookie: string,
  now: number,
): Answer | Promise<Answer> {
  if (!rt.store.available) return conclude(rt, desc, route, NONE, FROM_NOTHING, now, undefined);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), PUBLIC_SESSION_WAIT_MS);
  });
  const session = login.authenticateSession(cookie, desc, route).catch((err: unknown) => {
    if (err instanceof StateStoreError) return undefined;
    throw err;
  });
  return Promise.race([session, late]).then((found) => {
    clearTimeout(timer);
    if (found === undefined) return conclude(rt, desc, route, NONE, FROM_NOTHING, now, undefined);
    return conclude(rt, desc, route, found, FROM_SESSION, now, found.setCookie);
  });
}

const simpleAnswers = new WeakMap<CompiledRoute, WeakMap<Decision, Answer>>();

/**
 * The decision, then the limit stage on an allowed request of a limited route (it may hold the request,
 * or turn it into 429 `limited`), then the answer.
 */
function conclude(
  rt: DecisionRuntime,
  desc: RequestDescription,
  route: CompiledRoute,
  auth: AuthResult,
  from: number,
  now: number,
  setCookie: string | undefined,
): Answer | Promise<Answer> {
  const decision = decisionFor(
    rt.policies,
    rt.identity.loginRoutes.has(route.name),
    desc,
    route,
    auth,
    from,
    now,
  );
  // An allowed request meets its route's limits; a refused one only an `ip` rate limit (see Limiter).
  const refused = decision.outcome !== 'allow';
  const verdict = rt.limits?.check(route.name, desc, decision.identity, now, refused);
  if (verdict === undefined) return build(rt, desc, route, auth, from, now, setCookie, decision, undefined);
  const finish = (v: LimitVerdict, at: number): Answer =>
    // A refusal stays what it was unless the limit turned it into 429.
    refused && v.outcome !== 'limited'
      ? build(rt, desc, route, auth, from, at, setCookie, decision, undefined)
      : build(rt, desc, route, auth, from, at, setCookie, limitedBy(decision, v), v);
  if (verdict instanceof Promise)
    // A request held by `delay` is signed for when it goes on.
    return verdict.then((v) => finish(v, v.outcome === 'delayed' ? Date.now() : now));
  return finish(verdict, now);
}

/** The decision after the limit stage: unchanged, or 429 `limited` with the limit's reason. */
export function limitedBy(decision: Decision, v: LimitVerdict): Decision {
  if (v.outcome !== 'limited') return decision;
  return {
    outcome: 'limited',
    status: 429,
    reason: v.reason as ReasonCode,
    rule: undefined,
    identity: decision.identity,
  };
}

function build(
  rt: DecisionRuntime,
  desc: RequestDescription,
  route: CompiledRoute,
  auth: AuthResult,
  from: number,
  now: number,
  setCookie: string | undefined,
  decision: Decision,
  limit: LimitVerdict | undefined,
): Answer {
  const id = rt.identity;
  const headers = desc.headers;
  const rc = route.config;
  const source = decision.identity === undefined ? FROM_NOTHING : from;
  let drop = 0;
  let cookie: string | undefined;
  if (!rc.passCredentials) {
    if (from === FROM_AUTHORIZATION && auth.kind === 'ok') drop |= DROP_AUTHORIZATION;
    // The API key header is the gateway's by configuration: never forwarded while keys are configured.
    if (id.apiKeys.enabled && headers[id.apiKeyHeader] !== undefined) drop |= DROP_API_KEY;
    const login = id.login;
    const raw = headers.cookie;
    if (login !== undefined && raw !== undefined) {
      const stripped = login.stripCookies(raw);
      if (stripped !== raw) {
        drop |= DROP_COOKIE;
        cookie = stripped;
      }
    }
  }
  let responseHeaders: string[] | undefined;
  if (setCookie !== undefined) responseHeaders = ['set-cookie', setCookie];
  const origin = headers.origin;
  if (rc.cors !== undefined && typeof origin === 'string') {
    const cors = corsHeaders(route, origin);
    if (cors !== undefined)
      responseHeaders = responseHeaders === undefined ? cors : responseHeaders.concat(cors);
  }
  if (limit !== undefined && limit.headers.length > 0)
    responseHeaders =
      responseHeaders === undefined ? (limit.headers as string[]) : responseHeaders.concat(limit.headers);
  const identity = decision.identity;
  const assertion =
    decision.outcome === 'allow' && identity !== undefined
      ? id.assertion.sign(identity, desc.host, now)
      : undefined;
  if (
    assertion === undefined &&
    drop === 0 &&
    responseHeaders === undefined &&
    limit === undefined &&
    Object.isFrozen(decision)
  ) {
    // The anonymous answers of the decision core are shared constants: so are their answers per route.
    let byDecision = simpleAnswers.get(route);
    if (byDecision === undefined) {
      byDecision = new WeakMap();
      simpleAnswers.set(route, byDecision);
    }
    let a = byDecision.get(decision);
    if (a === undefined) {
      a = Object.freeze({
        route,
        decision,
        assertion: undefined,
        identityHeaders: false,
        drop: 0,
        apiKeyHeader: '',
        cookie: undefined,
        responseHeaders: undefined,
        source: FROM_NOTHING,
        limit: undefined,
      });
      byDecision.set(decision, a);
    }
    return a;
  }
  return {
    route,
    decision,
    assertion,
    identityHeaders: rc.identityHeaders,
    drop,
    apiKeyHeader: id.apiKeyHeader,
    cookie,
    responseHeaders,
    source: source as CredentialSource,
    limit,
  };
}

/**
 * The decision on a request whose credential has been looked at (`auth`, from `source`): the WebSocket
 * Origin check, then `decideAccess`. `answer()` takes it after authenticating; `check` and `explain`
 * take it with the identity a test describes.
 */
export function decisionFor(
  policies: PolicySet,
  loginAvailable: boolean,
  desc: RequestDescription,
  route: CompiledRoute,
  auth: AuthResult,
  source: number,
  now: number,
): Decision {
  const headers = desc.headers;
  let result = auth;
  // A browser sends its cookie and certificate to a WebSocket on its own, whatever page opened it.
  if (
    desc.upgrade &&
    result.kind === 'ok' &&
    (source === FROM_SESSION || source === FROM_CERTIFICATE) &&
    typeof headers.origin === 'string' &&
    !originAllowed(route, headers.origin, desc.scheme, desc.authority)
  ) {
    // A public route serves anyone: it still does, but not as the browser's user.
    if (!route.config.public) {
      return {
        outcome: 'forbidden',
        status: 403,
        reason: 'origin-not-allowed',
        rule: undefined,
        identity: result.identity,
      };
    }
    result = NONE;
  }
  return decideAccess(
    {
      route,
      auth: result,
      request: { method: desc.method, host: desc.host, path: desc.path, clientIp: desc.clientIp, now },
      // Only a route that offers login redirects, so the Accept header is looked at only then.
      browser: loginAvailable && isBrowserNavigation(desc.method, headers),
      loginAvailable,
    },
    policies,
  );
}

// ---------------------------------------------------------------------------------------------
// CORS and the WebSocket Origin

type CorsConfig = NonNullable<CompiledRoute['config']['cors']>;

/** The Access-Control-Allow-Origin value for `origin`, or undefined when it is not allowed. */
export function allowedOrigin(cors: CorsConfig, origin: string): string | undefined {
  // With credentials the origin must be named, never `*` (Fetch standard, CORS check).
  if (cors.origins.includes('*')) return cors.credentials ? origin : '*';
  const lower = origin.toLowerCase();
  for (const o of cors.origins) if (o.toLowerCase() === lower) return origin;
  return undefined;
}

/** Response headers of an actual CORS request from an allowed origin; undefined otherwise. */
function corsHeaders(route: CompiledRoute, origin: string): string[] | undefined {
  const cors = route.config.cors;
  if (cors === undefined) return undefined;
  const allowed = allowedOrigin(cors, origin);
  if (allowed === undefined) return undefined;
  const out = ['access-control-allow-origin', allowed, 'vary', 'Origin'];
  if (cors.credentials) out.push('access-control-allow-credentials', 'true');
  return out;
}

/** The Origins a route accepts on handshakes identified by an ambient credential, compiled once. */
interface OriginRule {
  /** Exact host names of `match.host` (lower case). */
  readonly hosts: ReadonlySet<string>;
  /** `cors.origins`, lower case. */
  readonly cors: ReadonlySet<string>;
  /** `cors.origins: ['*']` with `credentials: true`: the route accepts credentialed calls from anywhere. */
  readonly corsAny: boolean;
}

const originRules = new WeakMap<CompiledRoute, OriginRule>();

function originRuleOf(route: CompiledRoute): OriginRule {
  let rule = originRules.get(route);
  if (rule === undefined) {
    const cors = route.config.cors;
    const origins = new Set((cors?.origins ?? []).map((o) => o.toLowerCase()));
    rule = {
      hosts: new Set(route.hosts.exact),
      cors: origins,
      corsAny: origins.has('*') && cors?.credentials === true,
    };
    originRules.set(route, rule);
  }
  return rule;
}

const DEFAULT_PORT: Readonly<Record<string, string>> = { 'http:': '80', 'https:': '443' };

/**
 * True when a browser page at `origin` may open this handshake with the browser's own credentials:
 * a `cors.origins` entry, or the scheme with a host of the route (the handshake's Host when the route
 * matches any host) and the port of the handshake's Host. `null` and anything that is not a plain
 * `scheme://host[:port]` never are.
 */
export function originAllowed(
  route: CompiledRoute,
  origin: string,
  scheme: 'http' | 'https',
  hostHeader: string,
): boolean {
  const rule = originRuleOf(route);
  const lower = origin.toLowerCase();
  if (rule.corsAny || rule.cors.has(lower)) return true;
  let o: URL;
  let h: URL;
  try {
    o = new URL(lower);
    h = new URL(`${scheme}://${hostHeader}`);
  } catch {
    return false;
  }
  // `new URL` accepts more than an origin (paths, userinfo, default ports): only its own form passes.
  if (o.origin !== lower || o.protocol !== `${scheme}:`) return false;
  if ((o.port || DEFAULT_PORT[o.protocol]) !== (h.port || DEFAULT_PORT[h.protocol])) return false;
  const host = o.hostname;
  // A route for any host is the handshake's own host's.
  if (route.hosts.any && host === h.hostname.replace(/\.$/, '')) return true;
  if (rule.hosts.has(host)) return true;
  for (const suffix of route.hosts.suffixes)
    if (host.length > suffix.length && host.endsWith(suffix)) return true;
  return false;
}

// ---------------------------------------------------------------------------------------------
// What a data plane renders

/** A refused request as every data plane renders it. */
export interface Refusal {
  /** 302 (sign in), 401, 403 or 429. */
  readonly status: number;
  /**
   * `GH_UNAUTHENTICATED`, `GH_FORBIDDEN`, `GH_WEBSOCKET_ORIGIN`, `GH_RATE_LIMITED`, `GH_QUOTA_EXCEEDED`,
   * or `GH_LOGIN` for a 302.
   */
  readonly code: string;
  readonly reason: ReasonCode;
  /** A short sentence for the reason. */
  readonly message: string;
  /** For 302: the sign-in address on the request's own host (path and query). */
  readonly location: string | undefined;
  /** For 401: `WWW-Authenticate`. */
  readonly wwwAuthenticate: string | undefined;
  /** For 429: `Retry-After`, in seconds. */
  readonly retryAfter?: number | undefined;
}

/** The refusal of an answer that does not allow the request; undefined when it does. */
export function refusalOf(a: Answer, desc: Pick<RequestFacts, 'path' | 'query'>): Refusal | undefined {
  const d = a.decision;
  const reason = d.reason;
  const message = describeReason(reason);
  switch (d.outcome) {
    case 'allow':
      return undefined;
    case 'login':
      return {
        status: 302,
        code: 'GH_LOGIN',
        reason,
        message,
        location: signInAddress(a.route, desc),
        wwwAuthenticate: undefined,
      };
    case 'limited':
      return {
        status: 429,
        code: a.limit?.code ?? 'GH_RATE_LIMITED',
        reason,
        message,
        location: undefined,
        wwwAuthenticate: undefined,
        retryAfter: a.limit?.retryAfter,
      };
    case 'forbidden':
      return {
        status: 403,
        code: reason === 'origin-not-allowed' ? 'GH_WEBSOCKET_ORIGIN' : 'GH_FORBIDDEN',
        reason,
        message,
        location: undefined,
        wwwAuthenticate: undefined,
      };
    default:
      return {
        status: 401,
        code: 'GH_UNAUTHENTICATED',
        reason,
        message,
        location: undefined,
        wwwAuthenticate: wwwAuthenticate(reason),
      };
  }
}

const TOKEN_REASONS = new Set<ReasonCode>([
  'token-expired',
  'token-not-yet-valid',
  'token-invalid',
  'token-wrong-audience',
  'token-wrong-issuer',
  'token-unknown-issuer',
  'api-key-invalid',
  'api-key-expired',
]);

/** `WWW-Authenticate` for a 401 (RFC 6750 §3): `error="invalid_token"` when a presented token was refused. */
export function wwwAuthenticate(reason: ReasonCode): string {
  if (!TOKEN_REASONS.has(reason)) return 'Bearer realm="gatehouse"';
  return `Bearer realm="gatehouse", error="invalid_token", error_description="${describeReason(reason)}"`;
}

const identityHeaderCache = new WeakMap<Identity, readonly string[]>();

/**
 * Header values must be visible ASCII (RFC 9110 §5.5): names, emails and groups from an identity
 * provider may not be, so such values are percent-encoded as UTF-8 (commas too inside a list item).
 */
export function headerSafe(value: string, listItem = false): string {
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c < 0x20 || c > 0x7e || (listItem && c === 0x2c)) {
      let out = '';
      for (const byte of Buffer.from(value, 'utf8')) {
        out +=
          byte < 0x21 || byte > 0x7e || byte === 0x25 || (listItem && byte === 0x2c)
            ? `%${byte.toString(16).toUpperCase().padStart(2, '0')}`
            : String.fromCharCode(byte);
      }
      return out;
    }
  }
  return value;
}

/**
 * `x-gatehouse-user`, `-email`, `-groups` of an identity as flat `[name, value, ...]`, header-safe,
 * computed once per identity object.
 */
export function identityHeaderPairs(identity: Identity): readonly string[] {
  let pairs = identityHeaderCache.get(identity);
  if (pairs === undefined) {
    const out = ['x-gatehouse-user', headerSafe(identity.user)];
    if (identity.email !== undefined) out.push('x-gatehouse-email', headerSafe(identity.email));
    if (identity.groups.length > 0) {
      out.push('x-gatehouse-groups', identity.groups.map((g) => headerSafe(g, true)).join(','));
    }
    pairs = Object.freeze(out);
    identityHeaderCache.set(identity, pairs);
  }
  return pairs;
}

/** An error for a refusal, for data planes that answer refusals like other errors (a WebSocket handshake). */
export function refusalError(r: Refusal): GatehouseError {
  if (r.status === 429) return new GatehouseError(r.code, 429, `too many requests: ${r.reason}`);
  if (r.code === 'GH_WEBSOCKET_ORIGIN')
    return new GatehouseError(r.code, 403, 'this origin may not open a WebSocket with these credentials');
  return new GatehouseError(
    r.code === 'GH_LOGIN' ? 'GH_UNAUTHENTICATED' : r.code,
    r.status === 302 ? 401 : r.status,
    `${r.status === 403 ? 'forbidden' : 'unauthenticated'}: ${r.reason}`,
  );
}

/**
 * Adds an answer's decision to an access-log entry: who (subject), how, why and which rule. Every data
 * plane logs a decision with it.
 */
export function logAccess(entry: AccessEntry, a: Answer): void {
  const d = a.decision;
  const identity = d.identity;
  if (identity !== undefined) {
    entry.identity = identity.subject;
    entry.authMethod = identity.authMethod;
    if (auditing()) {
      const detail = auditDetailOf(entry);
      detail.email = identity.email;
      detail.groups = identity.groups;
      detail.source = identity.source;
    }
  }
  entry.reason = d.reason;
  if (d.rule !== undefined) entry.rule = d.rule;
  const limit = a.limit;
  if (limit !== undefined) {
    entry.limit = limit.outcome;
    if (limit.waitMs > 0) entry.delayed = limit.waitMs;
  }
}

/**
 * The access stage of the built-in proxy: who is calling, and may they. It runs in two places:
 *
 *   before routing   `/.gatehouse/*` on every host: jwks.json, the login endpoints, else 404;
 *                    a CORS preflight for a route with `cors`: answered here, without a login
 *   after routing    authenticate (Authorization Bearer: API key or JWT by shape; the API key header;
 *                    the client certificate on mTLS listeners; the session cookie), then `decideAccess`:
 *                    allow → forward with identity headers and the signed assertion;
 *                    login → 302 to /.gatehouse/login; unauthenticated → 401 + WWW-Authenticate;
 *                    forbidden → 403 page or JSON saying who and why (never a redirect)
 *
 * A credential that was presented but is not acceptable never falls back to another one. A cached
 * bearer token or an API key is decided synchronously (no promise); only a token-cache miss and a
 * session lookup wait. A state store that cannot answer fails closed with 503 `GH_STATE_UNAVAILABLE`,
 * except on public routes, which never depend on it: they skip the session while the store is known to
 * be down and wait for it at most `PUBLIC_SESSION_WAIT_MS` otherwise.
 */
import type { Http2ServerRequest } from 'node:http2';
import { type Decision, decideAccess, describeReason, isBrowserNavigation } from '../core/decide.js';
import type { CompiledRoute, RequestFacts } from '../core/types.js';
import { GatehouseError } from '../errors.js';
import { looksLikeApiKey } from '../identity/apikeys.js';
import { bearerToken, looksLikeJwt } from '../identity/bearer.js';
import type { IdentityRuntime } from '../identity/index.js';
import { GATEHOUSE_PREFIX, type LoginService } from '../identity/login.js';
import { type ClientCertificateSocket, certificateIdentity } from '../identity/mtls.js';
import { appendSetCookie, forbiddenPage, sendPage, unauthorizedPage } from '../identity/pages.js';
import type { AuthResult, Identity, ReasonCode } from '../identity/types.js';
import { errorCodeOf } from '../observe/access-log.js';
import type { AccessEntry } from '../observe/log.js';
import type { Runtime } from '../runtime.js';
import { StateStoreError } from '../state/types.js';
import { sendError } from './errors.js';
import { bodyPending, closeAfter, resetAfterAnswer } from './framing.js';
import type { HeaderEdits } from './headers.js';
import type { ListenerInfo, ProxyRequest, ProxyResponse } from './types.js';

/** What the access stage needs of the request being served (the handler's exchange fits). */
export interface AccessExchange {
  readonly runtime: Runtime;
  readonly req: ProxyRequest;
  readonly res: ProxyResponse;
  readonly listener: ListenerInfo;
  readonly requestId: string;
  /** Status for the access log, set when the stage answers itself. */
  status: number;
  /** Stable code for the access log, set when the stage refuses. */
  errorCode: string | undefined;
  /** Body bytes of an answer the stage wrote itself, for the access log. */
  bytesOut: number;
  /** The stage's verdict (also on refusals, for the access log). */
  access: AccessGrant | undefined;
}

/** The verdict of the access stage for one request, with what it means for the forwarded request. */
export interface AccessGrant {
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
  /**
   * Where the identity of the decision came from (`FROM_*`; `FROM_NOTHING` when it has none). A session
   * cookie or a client certificate is sent by the browser on its own, so a WebSocket handshake it
   * authenticates must come from an allowed Origin.
   */
  readonly source: CredentialSource;
}

/** The Authorization header carried the gateway credential that identified the caller. */
export const DROP_AUTHORIZATION = 1;
/** The configured API key header. */
export const DROP_API_KEY = 2;
/** The gateway's session and login cookies inside Cookie. */
export const DROP_COOKIE = 4;

const JWKS_PATH = `${GATEHOUSE_PREFIX}jwks.json`;
const NONE: AuthResult = Object.freeze({ kind: 'none' });
// Where the credential that decided came from.
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

/** Not found under the reserved prefix (404). */
class ReservedNotFoundError extends GatehouseError {
  constructor() {
    super('GH_NOT_FOUND', 404, 'nothing is served at this /.gatehouse/ path');
  }
}

/** A method the reserved endpoint does not answer (405). */
class ReservedMethodError extends GatehouseError {
  constructor() {
    super('GH_METHOD_NOT_ALLOWED', 405, 'only GET and HEAD are allowed here');
  }
}

// ---------------------------------------------------------------------------------------------
// Before routing: reserved paths and CORS preflight

/**
 * Answers what the gateway serves itself before any route is looked at: `/.gatehouse/*` on every host
 * and CORS preflight requests for routes with `cors`. True when the request was taken (answered now or
 * later); false to continue with routing.
 */
export function serveBeforeRouting(ex: AccessExchange, facts: RequestFacts): boolean {
  const path = facts.path;
  if (path.charCodeAt(1) === 0x2e && path.startsWith(GATEHOUSE_PREFIX)) {
    serveReserved(ex, facts);
    return true;
  }
  if (facts.method === 'OPTIONS') {
    const headers = ex.req.headers;
    const wanted = headers['access-control-request-method'];
    if (typeof headers.origin === 'string' && typeof wanted === 'string')
      return servePreflight(ex, facts, wanted);
  }
  return false;
}

function serveReserved(ex: AccessExchange, facts: RequestFacts): void {
  const { req, res } = ex;
  const id = ex.runtime.identity;
  // The request body (if any) is not needed; read and drop it so the connection can be reused.
  req.resume();
  res.once('finish', () => {
    ex.status = res.statusCode;
    ex.errorCode ??= errorCodeOf(res);
  });
  const method = facts.method;
  if (facts.path === JWKS_PATH) {
    if (method !== 'GET' && method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      refuse(ex, new ReservedMethodError());
      return;
    }
    const body = Buffer.from(id.assertion.jwksJson());
    // Set as headers (not writeHead's argument) so the access log can read the length back.
    res.setHeader('content-type', 'application/jwk-set+json');
    res.setHeader('content-length', body.length);
    res.setHeader('cache-control', 'public, max-age=300');
    res.setHeader('x-request-id', ex.requestId);
    res.writeHead(200);
    res.end(method === 'HEAD' ? undefined : body);
    return;
  }
  const login = id.login;
  if (login?.handles(facts.path)) {
    // `handle` answers completely and never throws; the catch only guards against a broken promise.
    login.handle(req, res, facts).catch((err: unknown) => {
      refuse(ex, new GatehouseError('GH_LOGIN_FAILED', 500, 'internal error', { cause: err }));
    });
    return;
  }
  refuse(ex, new ReservedNotFoundError());
}

/**
 * CORS preflight (Fetch standard, "CORS-preflight request"): the route is the one the actual request
 * (`Access-Control-Request-Method`) would take. Answered here without a login, since browsers never
 * send credentials on a preflight; routes without `cors` see it as an ordinary OPTIONS request.
 */
function servePreflight(ex: AccessExchange, facts: RequestFacts, wanted: string): boolean {
  const route = ex.runtime.routes.match({ ...facts, method: wanted });
  const cors = route?.config.cors;
  if (cors === undefined) return false;
  const { req, res } = ex;
  req.resume();
  const allowed = allowedOrigin(cors, req.headers.origin as string);
  if (allowed === undefined) {
    ex.status = 403;
    ex.errorCode = 'GH_CORS_ORIGIN';
    ex.bytesOut = sendError(
      req,
      res,
      new GatehouseError('GH_CORS_ORIGIN', 403, 'this origin may not call this route'),
      ex.requestId,
    );
    return true;
  }
  const headers: string[] = [
    'access-control-allow-origin',
    allowed,
    'access-control-allow-methods',
    cors.methods.join(', '),
    'access-control-allow-headers',
    cors.headers.join(', '),
    'access-control-max-age',
    String(Math.floor(cors.maxAge / 1000)),
    'vary',
    'Origin, Access-Control-Request-Method, Access-Control-Request-Headers',
    'x-request-id',
    ex.requestId,
  ];
  if (cors.credentials) headers.push('access-control-allow-credentials', 'true');
  ex.status = 204;
  res.writeHead(204, headers);
  res.end();
  return true;
}

type CorsConfig = NonNullable<CompiledRoute['config']['cors']>;

/** The Access-Control-Allow-Origin value for `origin`, or undefined when it is not allowed. */
function allowedOrigin(cors: CorsConfig, origin: string): string | undefined {
  // With credentials the origin must be named, never `*` (Fetch standard, CORS check).
  if (cors.origins.includes('*')) return cors.credentials ? origin : '*';
  const lower = origin.toLowerCase();
  for (const o of cors.origins) if (o.toLowerCase() === lower) return origin;
  return undefined;
}

/** Response headers of an actual CORS request from an allowed origin; undefined otherwise. */
function corsHeaders(route: CompiledRoute, origin: string | undefined): string[] | undefined {
  const cors = route.config.cors;
  if (cors === undefined || origin === undefined) return undefined;
  const allowed = allowedOrigin(cors, origin);
  if (allowed === undefined) return undefined;
  const out = ['access-control-allow-origin', allowed, 'vary', 'Origin'];
  if (cors.credentials) out.push('access-control-allow-credentials', 'true');
  return out;
}

// ---------------------------------------------------------------------------------------------
// After routing: authenticate and decide

/**
 * Authenticates the request and decides access on `route`. Synchronous unless a credential needs I/O
 * (a bearer token not yet verified, a session cookie); the promise rejects with `StateStoreError` when
 * the store cannot answer on a protected route, and `decideAccess` may throw `PolicyUnavailableError`.
 */
export function authorize(
  runtime: Runtime,
  req: ProxyRequest,
  listener: ListenerInfo,
  facts: RequestFacts,
  route: CompiledRoute,
): AccessGrant | Promise<AccessGrant> {
  const id = runtime.identity;
  const headers = req.headers;
  const now = Date.now();
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
    return result.then((r) => afterCredentials(runtime, req, listener, facts, route, r, s, now));
  }
  return afterCredentials(runtime, req, listener, facts, route, result, source, now);
}

function afterCredentials(
  runtime: Runtime,
  req: ProxyRequest,
  listener: ListenerInfo,
  facts: RequestFacts,
  route: CompiledRoute,
  auth: AuthResult,
  from: number,
  now: number,
): AccessGrant | Promise<AccessGrant> {
  const id = runtime.identity;
  let result = auth;
  let source = from;
  if (result.kind === 'none' && id.certificateListeners.has(listener.name)) {
    const socket = certificateSocket(req);
    if (socket !== undefined) {
      result = certificateIdentity(socket, now);
      if (result.kind !== 'none') source = FROM_CERTIFICATE;
    }
  }
  const login = id.login;
  const sessionCookie = id.sessionCookie;
  const cookie = req.headers.cookie;
  // A quick look for the cookie's name first: the session lookup itself is asynchronous.
  if (
    result.kind === 'none' &&
    login !== undefined &&
    sessionCookie !== undefined &&
    cookie?.includes(sessionCookie)
  ) {
    if (route.config.public) return publicSession(runtime, req, facts, route, login, cookie, now);
    // A protected route fails closed (503) when the store cannot answer, at once while it is known down.
    return login
      .authenticateSession(cookie, facts, route)
      .then((session) => conclude(runtime, req, facts, route, session, FROM_SESSION, now, session.setCookie));
  }
  return conclude(runtime, req, facts, route, result, source, now, undefined);
}

/**
 * How long a public route waits for the session behind a cookie before it answers without it: public
 * routes never depend on the state store, so a store that is slow, or down and not yet known to be,
 * costs them this much at most.
 */
export const PUBLIC_SESSION_WAIT_MS = 250;

/**
 * The session on a public route: attached when the store answers in time, else the request goes on
 * anonymous (no identity headers, no assertion), and at once while the store is known to be down.
 */
function publicSession(
  runtime: Runtime,
  req: ProxyRequest,
  facts: RequestFacts,
  route: CompiledRoute,
  login: LoginService,
  cookie: string,
  now: number,
): AccessGrant | Promise<AccessGrant> {
  if (!runtime.store.available)
    return conclude(runtime, req, facts, route, NONE, FROM_NOTHING, now, undefined);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), PUBLIC_SESSION_WAIT_MS);
  });
  const session = login.authenticateSession(cookie, facts, route).catch((err: unknown) => {
    if (err instanceof StateStoreError) return undefined;
    throw err;
  });
  return Promise.race([session, late]).then((found) => {
    clearTimeout(timer);
    if (found === undefined) return conclude(runtime, req, facts, route, NONE, FROM_NOTHING, now, undefined);
    return conclude(runtime, req, facts, route, found, FROM_SESSION, now, found.setCookie);
  });
}

/** The client certificate's socket: the TLS socket, or for HTTP/2 the session's (one per connection). */
function certificateSocket(req: ProxyRequest): ClientCertificateSocket | undefined {
  if (req.httpVersionMajor === 2) {
    return (req as unknown as Http2ServerRequest).stream?.session?.socket as
      | ClientCertificateSocket
      | undefined;
  }
  return req.socket as ClientCertificateSocket;
}

const simpleGrants = new WeakMap<Decision, AccessGrant>();

function conclude(
  runtime: Runtime,
  req: ProxyRequest,
  facts: RequestFacts,
  route: CompiledRoute,
  auth: AuthResult,
  source: number,
  now: number,
  setCookie: string | undefined,
): AccessGrant {
  const id = runtime.identity;
  const headers = req.headers;
  const loginAvailable = id.loginRoutes.has(route.name);
  const decision = decideAccess(
    {
      route,
      auth,
      request: { method: facts.method, host: facts.host, path: facts.path, clientIp: facts.clientIp, now },
      // Only a route that offers login redirects, so the Accept header is looked at only then.
      browser: loginAvailable && isBrowserNavigation(facts.method, headers),
      loginAvailable,
    },
    runtime.policies,
  );
  const rc = route.config;
  let drop = 0;
  let cookie: string | undefined;
  if (!rc.passCredentials) {
    if (source === FROM_AUTHORIZATION && auth.kind === 'ok') drop |= DROP_AUTHORIZATION;
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
  const identity = decision.identity;
  const assertion =
    decision.outcome === 'allow' && identity !== undefined
      ? id.assertion.sign(identity, facts.host, now)
      : undefined;
  if (assertion === undefined && drop === 0 && responseHeaders === undefined && Object.isFrozen(decision)) {
    // The anonymous answers of the decision core are shared constants: so are their grants.
    let g = simpleGrants.get(decision);
    if (g === undefined) {
      g = Object.freeze({
        decision,
        assertion: undefined,
        identityHeaders: false,
        drop: 0,
        apiKeyHeader: '',
        cookie: undefined,
        responseHeaders: undefined,
        source: FROM_NOTHING,
      });
      simpleGrants.set(decision, g);
    }
    return g;
  }
  return {
    decision,
    assertion,
    identityHeaders: rc.identityHeaders,
    drop,
    apiKeyHeader: id.apiKeyHeader,
    cookie,
    responseHeaders,
    source: identity === undefined ? FROM_NOTHING : (source as CredentialSource),
  };
}

/**
 * The access stage of an HTTP request, right after routing. True when the request may be forwarded
 * (`ex.access` holds the grant); false when the stage answered (302, 401, 403). A promise when a
 * credential needs I/O; it rejects with `StateStoreError` (503) or `PolicyUnavailableError` (403),
 * which the caller answers like any other error.
 */
export function admit(
  ex: AccessExchange,
  facts: RequestFacts,
  route: CompiledRoute,
): boolean | Promise<boolean> {
  const grant = authorize(ex.runtime, ex.req, ex.listener, facts, route);
  if (grant instanceof Promise) return grant.then((g) => settle(ex, facts, route, g));
  return settle(ex, facts, route, grant);
}

function settle(ex: AccessExchange, facts: RequestFacts, route: CompiledRoute, grant: AccessGrant): boolean {
  ex.access = grant;
  const d = grant.decision;
  if (d.outcome === 'allow') return true;
  const { req, res } = ex;
  // The client left while a credential was being checked: nothing to answer.
  if (res.headersSent || res.destroyed) return false;
  // An unread body would follow on the connection: it closes after the answer.
  const pending = bodyPending(req);
  if (pending) closeAfter(req, res);
  const login = ex.runtime.identity.login;
  const toLogin = d.outcome === 'login' && login !== undefined;
  const extra = grant.responseHeaders;
  if (extra !== undefined) {
    for (let i = 0; i < extra.length; i += 2) {
      // The login redirect clears a dead session cookie itself.
      if (extra[i] === 'set-cookie') {
        if (!toLogin) appendSetCookie(res, extra[i + 1]!);
      } else res.setHeader(extra[i]!, extra[i + 1]!);
    }
  }
  res.setHeader('x-request-id', ex.requestId);
  if (toLogin) {
    ex.status = 302;
    login.loginRedirect(req, res, facts, route);
  } else if (d.outcome === 'forbidden') {
    ex.status = 403;
    ex.errorCode = 'GH_FORBIDDEN';
    sendForbidden(req, res, d, ex.requestId);
  } else {
    ex.status = 401;
    ex.errorCode = 'GH_UNAUTHENTICATED';
    sendUnauthenticated(req, res, facts, route, d, ex.requestId, ex.runtime.identity);
  }
  if (pending) resetAfterAnswer(req);
  return false;
}

/**
 * The error a refused WebSocket handshake (see `authorize`) is answered with: 401 or 403 with the
 * reason; a handshake is never redirected to login. Undefined when the upgrade may be forwarded.
 */
export function refusalOf(grant: AccessGrant): GatehouseError | undefined {
  const d = grant.decision;
  if (d.outcome === 'allow') return undefined;
  if (d.outcome === 'forbidden') return new GatehouseError('GH_FORBIDDEN', 403, `forbidden: ${d.reason}`);
  return new GatehouseError('GH_UNAUTHENTICATED', 401, `unauthenticated: ${d.reason}`);
}

// ---------------------------------------------------------------------------------------------
// Responses of the stage

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

function acceptsHtml(req: ProxyRequest): boolean {
  const accept = req.headers.accept;
  return typeof accept === 'string' && /text\/html/i.test(accept);
}

function sendJson(req: ProxyRequest, res: ProxyResponse, status: number, body: unknown): void {
  const buf = Buffer.from(`${JSON.stringify(body)}\n`);
  res.statusCode = status;
  res.setHeader('content-type', 'application/json');
  res.setHeader('cache-control', 'no-store');
  res.setHeader('content-length', buf.length);
  res.end(req.method === 'HEAD' ? undefined : buf);
}

function sendUnauthenticated(
  req: ProxyRequest,
  res: ProxyResponse,
  facts: RequestFacts,
  route: CompiledRoute,
  d: Decision,
  requestId: string,
  id: IdentityRuntime,
): void {
  res.setHeader('www-authenticate', wwwAuthenticate(d.reason));
  const reasonText = describeReason(d.reason);
  if (!acceptsHtml(req)) {
    sendJson(req, res, 401, {
      status: 401,
      code: 'GH_UNAUTHENTICATED',
      reason: d.reason,
      message: reasonText,
      requestId,
    });
    return;
  }
  let signInHref: string | undefined;
  if (id.loginRoutes.has(route.name)) {
    const params = new URLSearchParams({ rd: facts.path + facts.query });
    const providers = route.config.providers;
    if (providers !== undefined) params.set('providers', providers.join(','));
    signInHref = `${GATEHOUSE_PREFIX}login?${params}`;
  }
  sendPage(res, 401, unauthorizedPage({ reason: d.reason, reasonText, signInHref }), {}, req.method);
}

function sendForbidden(req: ProxyRequest, res: ProxyResponse, d: Decision, requestId: string): void {
  const identity = d.identity;
  const reasonText = describeReason(d.reason);
  const signOutHref = identity?.authMethod === 'session' ? `${GATEHOUSE_PREFIX}logout` : undefined;
  if (!acceptsHtml(req)) {
    sendJson(req, res, 403, {
      status: 403,
      code: 'GH_FORBIDDEN',
      reason: d.reason,
      rule: d.rule ?? null,
      message: reasonText,
      identity: identity === undefined ? null : describeIdentity(identity),
      signOut: signOutHref ?? null,
      requestId,
    });
    return;
  }
  const who =
    identity === undefined
      ? undefined
      : { user: identity.user, email: identity.email, source: identity.source };
  sendPage(res, 403, forbiddenPage({ who, reason: d.reason, reasonText, signOutHref }), {}, req.method);
}

function describeIdentity(i: Identity): Record<string, unknown> {
  return {
    subject: i.subject,
    user: i.user,
    email: i.email ?? null,
    authMethod: i.authMethod,
    source: i.source,
  };
}

/** Answers with an error from the stage itself (reserved paths). */
function refuse(ex: AccessExchange, err: GatehouseError): void {
  ex.status = err.status;
  ex.errorCode = err.code;
  ex.bytesOut = sendError(ex.req, ex.res, err, ex.requestId);
}

// ---------------------------------------------------------------------------------------------
// The forwarded request and the response

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

/** `X-Gatehouse-User`, `-Email`, `-Groups` of an identity, computed once per identity object. */
function identityHeaderPairs(identity: Identity): readonly string[] {
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

/** True when the route's header edits or the upstream's injected credentials set or remove `lower`. */
function owned(
  lower: string,
  edits: HeaderEdits | undefined,
  inject: ReadonlyArray<readonly [string, string]>,
): boolean {
  if (edits?.drop.has(lower)) return true;
  for (const [name] of inject) if (name.length === lower.length && name.toLowerCase() === lower) return true;
  return false;
}

/**
 * Applies a grant to the upstream request headers built by `buildRequestHeaders` (flat, `host` first):
 * removes the client's gateway credentials (unless `passCredentials`), then adds the identity headers
 * and the assertion. Headers the route's edits or the upstream's `inject` set are left alone: they win.
 */
export function forwardIdentity(
  headers: string[],
  grant: AccessGrant,
  edits: HeaderEdits | undefined,
  inject: ReadonlyArray<readonly [string, string]>,
): void {
  const drop = grant.drop;
  if (drop !== 0) {
    const keyHeader = grant.apiKeyHeader;
    const authz = (drop & DROP_AUTHORIZATION) !== 0 && !owned('authorization', edits, inject);
    const apiKey = (drop & DROP_API_KEY) !== 0 && !owned(keyHeader, edits, inject);
    const cookie = (drop & DROP_COOKIE) !== 0 && !owned('cookie', edits, inject);
    let cookies = 0;
    for (let i = headers.length - 2; i >= 2; i -= 2) {
      const name = headers[i]!;
      const n = name.length;
      // Compare lengths first: only a candidate's name is lower-cased.
      if (n !== 13 && n !== 6 && n !== keyHeader.length) continue;
      const lower = name.toLowerCase();
      if (cookie && lower === 'cookie') {
        cookies++;
        headers.splice(i, 2);
      } else if ((authz && lower === 'authorization') || (apiKey && lower === keyHeader)) {
        headers.splice(i, 2);
      }
    }
    // The client's Cookie line (HTTP/2 crumbs joined) comes back without the gateway's own cookies.
    if (cookies > 0 && grant.cookie !== undefined) headers.push('cookie', grant.cookie);
  }
  const assertion = grant.assertion;
  if (assertion === undefined) return;
  if (grant.identityHeaders) {
    const pairs = identityHeaderPairs(grant.decision.identity!);
    for (let i = 0; i < pairs.length; i += 2) {
      if (!owned(pairs[i]!, edits, inject)) headers.push(pairs[i]!, pairs[i + 1]!);
    }
  }
  if (!owned('x-gatehouse-assertion', edits, inject)) headers.push('x-gatehouse-assertion', assertion);
}

/**
 * Adds the grant's response headers (session Set-Cookie, CORS) to the upstream's response headers
 * (flat). The gateway's CORS answer replaces the upstream's own Access-Control-Allow-* headers.
 */
export function addResponseHeaders(headers: string[], grant: AccessGrant): void {
  const extra = grant.responseHeaders;
  if (extra === undefined) return;
  for (let i = 0; i < extra.length; i += 2) {
    const name = extra[i]!;
    if (name.startsWith('access-control-')) {
      for (let j = headers.length - 2; j >= 0; j -= 2) {
        if (headers[j]!.toLowerCase() === name) headers.splice(j, 2);
      }
    }
    headers.push(name, extra[i + 1]!);
  }
}

/** Adds the access decision to an access-log entry: who (subject), how, why and which rule. */
export function logAccess(entry: AccessEntry, grant: AccessGrant): void {
  const d = grant.decision;
  const identity = d.identity;
  if (identity !== undefined) {
    entry.identity = identity.subject;
    entry.authMethod = identity.authMethod;
  }
  entry.reason = d.reason;
  if (d.rule !== undefined) entry.rule = d.rule;
}

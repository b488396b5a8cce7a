/**
 * The access stage of the built-in proxy: who is calling, and may they. It runs in two places:
 *
 *   before routing   `/.gatehouse/*` on every host: jwks.json, the login endpoints, else 404;
 *                    a CORS preflight for a route with `cors`: answered here, without a login
 *   after routing    `answer()` of the decision core (core/answer.ts), rendered here:
 *                    allow → forward with identity headers and the signed assertion;
 *                    login → 302 to /.gatehouse/login; unauthenticated → 401 + WWW-Authenticate;
 *                    forbidden → 403 page or JSON saying who and why (never a redirect);
 *                    limited → 429 with Retry-After and the RateLimit headers
 */
import type { Http2ServerRequest } from 'node:http2';
import {
  type Answer,
  allowedOrigin,
  answer,
  DROP_API_KEY,
  DROP_AUTHORIZATION,
  DROP_COOKIE,
  identityHeaderPairs,
  type RequestDescription,
  wwwAuthenticate,
} from '../core/answer.js';
import { type Decision, describeReason } from '../core/decide.js';
import { normalizeHost } from '../core/normalize.js';
import type { CompiledRoute, RequestFacts } from '../core/types.js';
import { GatehouseError } from '../errors.js';
import type { IdentityRuntime } from '../identity/index.js';
import { GATEHOUSE_PREFIX, signInAddress } from '../identity/login.js';
import type { ClientCertificateSocket } from '../identity/mtls.js';
import {
  acceptsHtml,
  appendSetCookie,
  forbiddenPage,
  sendPage,
  unauthorizedPage,
} from '../identity/pages.js';
import type { Identity } from '../identity/types.js';
import { errorCodeOf } from '../observe/access-log.js';
import type { Runtime } from '../runtime.js';
import { sendError } from './errors.js';
import { bodyPending, closeAfter, resetAfterAnswer } from './framing.js';
import type { HeaderEdits } from './headers.js';
import type { ListenerInfo, ProxyRequest, ProxyResponse } from './types.js';

/**
 * An endpoint under `/.gatehouse/` that another part of the gateway serves on the proxy's listeners
 * (the forward-auth endpoint): handed to the listeners by the process that assembles the gateway, so the
 * proxy needs to know nothing of it.
 */
export interface ReservedEndpoint {
  /** The normalized path it answers (exactly). */
  readonly path: string;
  /** True when `listener` serves it (forward-auth: the listeners with `forwardAuth: true`). */
  serves(runtime: Runtime, listener: string): boolean;
  /** Answers the request completely. */
  serve(ex: AccessExchange): void;
}

/** What the access stage needs of the request being served (the handler's exchange fits). */
export interface AccessExchange {
  readonly runtime: Runtime;
  readonly req: ProxyRequest;
  readonly res: ProxyResponse;
  readonly listener: ListenerInfo;
  readonly requestId: string;
  /** The TCP peer is in `server.trustedProxies`. */
  readonly peerTrusted: boolean;
  /** The effective client address (X-Forwarded-For from a trusted peer). */
  readonly clientIp: string;
  /** The endpoints under `/.gatehouse/` served besides the gateway's own (see `ReservedEndpoint`). */
  readonly endpoints: readonly ReservedEndpoint[];
  // The request as the access log shows it; an endpoint that answers for another request sets these.
  method: string;
  host: string;
  path: string;
  route: CompiledRoute | undefined;
  plane: string | undefined;
  /** Status for the access log, set when the stage answers itself. */
  status: number;
  /** Stable code for the access log, set when the stage refuses. */
  errorCode: string | undefined;
  /** Body bytes of an answer the stage wrote itself, for the access log. */
  bytesOut: number;
  /** The stage's verdict (also on refusals, for the access log). */
  access: Answer | undefined;
}

const JWKS_PATH = `${GATEHOUSE_PREFIX}jwks.json`;
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
  for (const endpoint of ex.endpoints) {
    if (facts.path === endpoint.path && endpoint.serves(ex.runtime, ex.listener.name)) {
      endpoint.serve(ex);
      return;
    }
  }
  const login = id.login;
  if (login?.handles(facts.path)) {
    // `handle` answers completely and never throws; the catch only guards against a broken promise.
    const here = { ...(ex.peerTrusted ? behindProxy(facts, req.headers) : facts), requestId: ex.requestId };
    login.handle(req, res, here).catch((err: unknown) => {
      refuse(ex, new GatehouseError('GH_LOGIN_FAILED', 500, 'internal error', { cause: err }));
    });
    return;
  }
  refuse(ex, new ReservedNotFoundError());
}

/**
 * The sign-in endpoints' view of a request that a trusted proxy forwarded: the host and scheme the
 * browser used (X-Forwarded-Host, X-Forwarded-Proto), so that the OIDC redirect URI, the return address
 * and the cookies' `Secure` flag are the public site's, not the hop between the proxy and the gateway.
 * Their first entry is the one the outermost proxy wrote; a value that is not a plain host or scheme
 * is ignored (the Host header and the listener's scheme stay).
 */
export function behindProxy(facts: RequestFacts, headers: ProxyRequest['headers']): RequestFacts {
  const fh = headers['x-forwarded-host'];
  const fp = headers['x-forwarded-proto'];
  if (typeof fh !== 'string' && typeof fp !== 'string') return facts;
  let { host, authority, tls } = facts;
  if (typeof fh === 'string') {
    const first = fh.split(',')[0]!.trim();
    try {
      const h = normalizeHost(first);
      if (h !== '') {
        host = h;
        authority = first;
      }
    } catch {
      // Not a host: the Host header stays.
    }
  }
  if (typeof fp === 'string') {
    const p = fp.split(',')[0]!.trim().toLowerCase();
    if (p === 'https') tls = true;
    else if (p === 'http') tls = false;
  }
  return { ...facts, host, authority, tls };
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

// ---------------------------------------------------------------------------------------------
// After routing: authenticate and decide

/** The client certificate's socket: the TLS socket, or for HTTP/2 the session's (one per connection). */
export function certificateSocket(req: ProxyRequest): ClientCertificateSocket | undefined {
  if (req.httpVersionMajor === 2) {
    return (req as unknown as Http2ServerRequest).stream?.session?.socket as
      | ClientCertificateSocket
      | undefined;
  }
  return req.socket as ClientCertificateSocket;
}

/**
 * The access stage of an HTTP request, right after routing. True when the request may be forwarded
 * (`ex.access` holds the grant); false when the stage answered (302, 401, 403). A promise when a
 * credential needs I/O; it rejects with `StateStoreError` (503) or `PolicyUnavailableError` (403),
 * which the caller answers like any other error.
 */
export function admit(
  ex: AccessExchange,
  desc: RequestDescription,
  route: CompiledRoute,
): boolean | Promise<boolean> {
  const a = answer(ex.runtime, route.config.rateLimit?.delay ? withSignal(ex, desc) : desc, route);
  if (a instanceof Promise) return a.then((g) => settle(ex, desc, route, g));
  return settle(ex, desc, route, a);
}

/** On a route whose rate limit may hold requests: the description with a signal of the client leaving. */
function withSignal(ex: AccessExchange, desc: RequestDescription): RequestDescription {
  const gone = new AbortController();
  const abort = (): void => gone.abort();
  ex.res.once('close', abort);
  return { ...desc, signal: gone.signal };
}

function settle(ex: AccessExchange, facts: RequestFacts, route: CompiledRoute, grant: Answer): boolean {
  ex.access = grant;
  const d = grant.decision;
  if (d.outcome === 'allow') return true;
  const { req, res } = ex;
  // The client left while a credential was being checked: nothing to answer.
  if (res.headersSent || res.destroyed) return false;
  // An unread body would follow on the connection: it closes after the answer.
  const pending = bodyPending(req);
  if (pending) closeAfter(req, res);
  if (d.outcome === 'limited') {
    // 429 with Retry-After and the RateLimit headers (and a refreshed session cookie, CORS).
    const code = grant.limit?.code ?? 'GH_RATE_LIMITED';
    ex.status = 429;
    ex.errorCode = code;
    const wait = grant.limit?.retryAfter;
    ex.bytesOut = sendError(
      req,
      res,
      new GatehouseError(
        code,
        429,
        `${describeReason(d.reason)}${wait === undefined ? '' : `; retry after ${wait} s`}`,
      ),
      ex.requestId,
      grant.responseHeaders,
    );
    if (pending) resetAfterAnswer(req);
    return false;
  }
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

// ---------------------------------------------------------------------------------------------
// Responses of the stage

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
  const signInHref = id.loginRoutes.has(route.name) ? signInAddress(route, facts) : undefined;
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
  grant: Answer,
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
export function addResponseHeaders(headers: string[], grant: Answer): void {
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

/**
 * The forward-auth endpoint: `GET /.gatehouse/auth` (and HEAD) on listeners with `forwardAuth: true`,
 * for nginx `auth_request`, Caddy `forward_auth` and Traefik `forwardAuth`. The proxy in front keeps the
 * traffic and asks here, per request, whether to let it through and with which identity.
 *
 *   peer not in server.trustedProxies ......... 403 GH_UNTRUSTED_PEER (no forwarded header is read)
 *   auth request not GET/HEAD ................. 405 GH_METHOD_NOT_ALLOWED
 *   forwarded headers missing, repeated, bad .. 400 GH_BAD_FORWARDED (request.ts)
 *   X-Forwarded-* and X-Original-* disagree ... 400 GH_FORWARDED_CONFLICT
 *   the verdict (core/verdict.ts) on the original request, described exactly as the built-in proxy
 *   describes it (same normalization, route table, credentials from the subrequest's own headers):
 *     allow ................................... 200 + X-Gatehouse-User/-Email/-Groups/-Assertion, always
 *                                               all four (empty when there is no identity to send),
 *                                               X-Gatehouse-Cookie: the Cookie for the application,
 *                                               without the gateway's session cookie, and
 *                                               X-Gatehouse-RateLimit-Policy/-RateLimit: the RateLimit
 *                                               headers for the client's response (empty: no limit)
 *     sign in (browser, no session) ........... 302 Location: /.gatehouse/login?rd=…; for nginx (the
 *                                               X-Original-* family), which cannot pass a 302 on: 401
 *                                               with X-Gatehouse-Location for its error_page
 *     unauthenticated ......................... 401 + WWW-Authenticate
 *     forbidden ............................... 403, JSON with the reason and the rule (the HTML page
 *                                               of the built-in proxy for a client that accepts HTML)
 *     over a rate limit or quota .............. 429 + Retry-After, RateLimit-Policy, RateLimit (Caddy
 *                                               and Traefik pass it on as is); for nginx, which turns
 *                                               any answer but 2xx/401/403 into 500: 403 with
 *                                               X-Gatehouse-Status: 429, Retry-After and
 *                                               X-Gatehouse-RateLimit-Policy/-RateLimit, which its
 *                                               error_page turns back into the 429
 *     /.gatehouse/* ........................... 404: the proxy must route these to the gateway itself
 *     bad path, no route, method, store down .. 400 / 404 / 405 / 503, as the verdict says
 *
 * Every refusal carries `X-Gatehouse-Reason` and `X-Gatehouse-Code` (for a proxy that shows its own
 * error page, like nginx) and a JSON body `{ status, code, reason, message, rule, requestId }`. The
 * session cookie and CORS headers of the answer are added to every answer; the proxy decides which of
 * them reach the client. The RateLimit headers keep their names only on an answer the proxy passes on as
 * is; on one it reads (a 200, nginx's 403) they are X-Gatehouse-…, for it to add to the client's response.
 */
import { type IncomingMessage, type ServerResponse, STATUS_CODES } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Config } from '../config/schema.js';
import { type Answer, type DecisionRuntime, DROP_COOKIE, identityHeaderPairs } from '../core/answer.js';
import { isWebSocketHandshake } from '../core/describe.js';
import type { CompiledRoute } from '../core/types.js';
import { answerRequest, type Verdict } from '../core/verdict.js';
import { GatehouseError } from '../errors.js';
import { GATEHOUSE_PREFIX } from '../identity/login.js';
import {
  acceptsHtml,
  appendSetCookie,
  forbiddenPage,
  sendPage,
  unauthorizedPage,
} from '../identity/pages.js';
import { answerDuration, decisionsTotal } from '../observe/metrics.js';
import { type ForwardedRequest, forwardedRequest } from './request.js';

/** The path of the endpoint. */
export const FORWARD_AUTH_PATH = `${GATEHOUSE_PREFIX}auth`;

/** What the access log names as the data plane of a forward-auth decision. */
export const FORWARD_AUTH_PLANE = 'forward-auth';

/** The peer is not in `server.trustedProxies` (403): its forwarded headers could say anything. */
export class UntrustedPeerError extends GatehouseError {
  constructor() {
    super('GH_UNTRUSTED_PEER', 403, 'forward-auth answers only proxies listed in server.trustedProxies');
  }
}

/** The auth subrequest itself is not a GET or HEAD (405). */
export class ForwardAuthMethodError extends GatehouseError {
  constructor() {
    super('GH_METHOD_NOT_ALLOWED', 405, 'the forward-auth endpoint answers GET and HEAD');
  }
}

/** What the endpoint needs of the request being served (the built-in proxy's exchange fits). */
export interface ForwardAuthExchange {
  readonly runtime: DecisionRuntime & { readonly config: Config };
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly listener: { readonly name: string; readonly tls: boolean };
  readonly requestId: string;
  /** The TCP peer is in `server.trustedProxies`. */
  readonly peerTrusted: boolean;
  /** The effective client address (X-Forwarded-For from a trusted peer, see proxy/headers.ts). */
  readonly clientIp: string;
  // Set here for the access log: the original request, its route, the answer and what was sent.
  method: string;
  host: string;
  path: string;
  route: CompiledRoute | undefined;
  access: Answer | undefined;
  status: number;
  errorCode: string | undefined;
  plane: string | undefined;
}

const forwardAuthListeners = new WeakMap<Config, ReadonlySet<string>>();

/** True when the listener `name` of `config` serves the endpoint (`forwardAuth: true`). */
export function servesForwardAuth(config: Config, name: string): boolean {
  let names = forwardAuthListeners.get(config);
  if (names === undefined) {
    names = new Set(config.listeners.filter((l) => l.forwardAuth).map((l) => l.name));
    forwardAuthListeners.set(config, names);
  }
  return names.has(name);
}

/** Answers one auth subrequest completely; never throws (every failure is an answer). */
export function serveForwardAuth(ex: ForwardAuthExchange): void {
  const req = ex.req;
  ex.plane = FORWARD_AUTH_PLANE;
  // The subrequest's body (none is expected) is not needed; drop it so the connection can be reused.
  req.resume();
  if (!ex.peerTrusted) {
    refuseRequest(ex, new UntrustedPeerError());
    return;
  }
  const wire = req.method ?? 'GET';
  if (wire !== 'GET' && wire !== 'HEAD') {
    refuseRequest(ex, new ForwardAuthMethodError(), ['allow', 'GET, HEAD']);
    return;
  }
  let original: ForwardedRequest;
  try {
    original = forwardedRequest(req.headers, req.rawHeaders);
  } catch (err) {
    refuseRequest(
      ex,
      err instanceof GatehouseError
        ? err
        : new GatehouseError('GH_INTERNAL', 500, 'internal error', { cause: err }),
    );
    return;
  }
  ex.method = original.method;
  const started = performance.now();
  const scheme = original.scheme ?? (ex.listener.tls ? 'https' : 'http');
  const verdict = answerRequest(
    ex.runtime,
    {
      method: original.method,
      target: original.uri,
      host: original.host,
      headers: req.headers,
      clientIp: ex.clientIp,
      tls: scheme === 'https',
      scheme,
      listener: ex.listener.name,
      upgrade: isWebSocketHandshake(original.method, req.headers),
    },
    ex.runtime.config.server.pathParameters,
  );
  if (verdict instanceof Promise) {
    verdict.then(
      (v) => later(ex, () => render(ex, v, original, started)),
      (err: unknown) =>
        later(ex, () =>
          refuseRequest(ex, new GatehouseError('GH_INTERNAL', 500, 'internal error', { cause: err })),
        ),
    );
  } else {
    render(ex, verdict, original, started);
  }
}

/** Answers after a credential check; nothing that goes wrong here may escape as a rejection. */
function later(ex: ForwardAuthExchange, answer: () => void): void {
  try {
    answer();
  } catch {
    // Not even an answer could be written: the proxy sees the connection close and fails closed.
    ex.res.destroy();
  }
}

function render(ex: ForwardAuthExchange, v: Verdict, original: ForwardedRequest, started: number): void {
  answerDuration.series(FORWARD_AUTH_PLANE).observe((performance.now() - started) / 1000);
  decisionsTotal
    .series(FORWARD_AUTH_PLANE, v.answer?.route.name ?? '(none)', String(v.status), v.reason)
    .inc();
  // The proxy gave up on the subrequest while a credential was being checked: nothing to answer.
  if (ex.res.headersSent || ex.res.destroyed) return;
  const desc = v.desc;
  if (desc !== undefined) {
    ex.method = desc.method;
    ex.host = desc.host;
    ex.path = desc.path;
  }
  const a = v.answer;
  ex.access = a;
  ex.route = a?.route;
  const headers: string[] = ['cache-control', 'no-store', 'x-request-id', ex.requestId];
  const limited = v.status === 429 && v.refusal !== undefined;
  // nginx passes only 2xx, 401 and 403 on from auth_request (anything else becomes 500).
  const nginx = original.family === 'original';
  // An answer the proxy reads instead of passing it on: the RateLimit headers are for it to copy.
  const copied = v.status === 200 || (limited && nginx);
  const extra = a?.responseHeaders;
  if (extra !== undefined) {
    for (let i = 0; i < extra.length; i += 2) {
      const name = extra[i]!;
      if (copied && (name === 'ratelimit' || name === 'ratelimit-policy')) continue;
      headers.push(name, extra[i + 1]!);
    }
  }
  if (copied) {
    // Both, empty when the route has no limit (Caddy 2.6's copy_headers would send a placeholder).
    const limit = a?.limit?.headers ?? [];
    headers.push(
      'x-gatehouse-ratelimit-policy',
      pairValue(limit, 'ratelimit-policy'),
      'x-gatehouse-ratelimit',
      pairValue(limit, 'ratelimit'),
    );
  }
  if (v.status === 200 && a !== undefined) {
    // All four, empty when there is nothing to say: a proxy that copies a missing header may send its
    // own placeholder text upstream instead (Caddy 2.6 copy_headers).
    const identity = a.decision.identity;
    const pairs = identity !== undefined && a.identityHeaders ? identityHeaderPairs(identity) : [];
    // The Cookie the application is to receive: the client's without the gateway's own cookies
    // (the proxy replaces Cookie with it), or all of them on a route with passCredentials.
    const cookie = (a.drop & DROP_COOKIE) !== 0 ? (a.cookie ?? '') : (ex.req.headers.cookie ?? '');
    headers.push(
      'x-gatehouse-cookie',
      cookie,
      'x-gatehouse-user',
      pairValue(pairs, 'x-gatehouse-user'),
      'x-gatehouse-email',
      pairValue(pairs, 'x-gatehouse-email'),
      'x-gatehouse-groups',
      pairValue(pairs, 'x-gatehouse-groups'),
      'x-gatehouse-assertion',
      a.assertion ?? '',
      'content-length',
      '0',
    );
    ex.status = 200;
    ex.res.writeHead(200, headers);
    ex.res.end();
    return;
  }
  const refusal = v.refusal;
  let status = v.status;
  const code = v.reserved ? 'GH_RESERVED_PATH' : (refusal?.code ?? v.reason);
  if (refusal !== undefined && status === 302) {
    const location = refusal.location!;
    if (nginx) {
      // nginx passes only 2xx, 401 and 403 on from auth_request: its error_page 401 redirects.
      status = 401;
      headers.push('x-gatehouse-location', location, 'www-authenticate', 'Bearer realm="gatehouse"');
    } else {
      headers.push('location', location);
    }
  } else if (refusal?.wwwAuthenticate !== undefined) {
    headers.push('www-authenticate', refusal.wwwAuthenticate);
  } else if (limited && nginx) {
    // Retry-After came with the limit stage's headers above. nginx's error_page 403 answers 429 when
    // X-Gatehouse-Status says so (examples/nginx/nginx.conf).
    status = 403;
    headers.push('x-gatehouse-status', '429');
  }
  if (v.allow !== undefined) headers.push('allow', v.allow);
  const reason = refusal?.reason ?? v.reason;
  headers.push('x-gatehouse-reason', reason, 'x-gatehouse-code', code);
  const message =
    refusal?.message ??
    (v.reserved ? 'the proxy must send /.gatehouse/ paths to the gateway itself' : STATUS_CODES[status]);
  // A browser shown the refusal as it is (Caddy and Traefik pass the auth answer on) gets the page the
  // built-in proxy shows: who is signed in, why, and how to sign out or in.
  if (refusal !== undefined && !limited && (status === 401 || status === 403) && acceptsHtml(ex.req)) {
    const identity = a?.decision.identity;
    const html =
      status === 403
        ? forbiddenPage({
            who:
              identity === undefined
                ? undefined
                : { user: identity.user, email: identity.email, source: identity.source },
            reason,
            reasonText: refusal.message,
            signOutHref: identity?.authMethod === 'session' ? `${GATEHOUSE_PREFIX}logout` : undefined,
          })
        : unauthorizedPage({ reason, reasonText: refusal.message, signInHref: refusal.location });
    sendHtml(ex, status, code, headers, html);
    return;
  }
  sendJson(ex, status, code, headers, {
    // The decision's 429 even where nginx is told it as 403.
    status: limited ? 429 : status,
    code,
    reason,
    message,
    rule: a?.decision.rule ?? null,
    requestId: ex.requestId,
  });
}

/** The value of `name` (lower case) in flat `[name, value, ...]` headers; '' when absent. */
function pairValue(pairs: readonly string[], name: string): string {
  for (let i = 0; i < pairs.length; i += 2) if (pairs[i] === name) return pairs[i + 1]!;
  return '';
}

/** Refuses the auth subrequest itself (untrusted peer, bad forwarded headers): nothing was decided. */
function refuseRequest(ex: ForwardAuthExchange, err: GatehouseError, extra: string[] = []): void {
  if (ex.res.headersSent || ex.res.destroyed) return;
  const headers = ['cache-control', 'no-store', 'x-request-id', ex.requestId, ...extra];
  headers.push('x-gatehouse-reason', err.code, 'x-gatehouse-code', err.code);
  sendJson(ex, err.status, err.code, headers, {
    status: err.status,
    code: err.code,
    reason: err.code,
    message: err.message,
    rule: null,
    requestId: ex.requestId,
  });
}

function sendHtml(
  ex: ForwardAuthExchange,
  status: number,
  code: string,
  headers: string[],
  html: string,
): void {
  const res = ex.res;
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i] === 'set-cookie') appendSetCookie(res, headers[i + 1]!);
    else res.setHeader(headers[i]!, headers[i + 1]!);
  }
  ex.status = status;
  ex.errorCode = code;
  sendPage(res, status, html, {}, ex.req.method);
}

function sendJson(
  ex: ForwardAuthExchange,
  status: number,
  code: string,
  headers: string[],
  body: Record<string, unknown>,
): void {
  const buf = Buffer.from(`${JSON.stringify(body)}\n`);
  headers.push('content-type', 'application/json', 'content-length', String(buf.length));
  ex.status = status;
  // A sign-in redirect is an answer, not an error (as in the built-in proxy's log).
  if (status >= 400) ex.errorCode = code;
  ex.res.writeHead(status, headers);
  ex.res.end(ex.req.method === 'HEAD' ? undefined : buf);
}

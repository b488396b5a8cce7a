/**
 * WebSocket tunnelling (HTTP/1.1 Upgrade, RFC 6455). The handshake goes through the same normalization,
 * routing and header hygiene as any request and through the server's undici pool (so upstream TLS
 * settings apply); after the 101 both sockets are piped to each other until either side closes or
 * the route's idle timeout passes; once one side has closed, the other gets `finTimeout` to follow. The
 * lease is held for the tunnel's lifetime. The handshake passes the same access stage as a request
 * (`access.ts`): refused with 401/403 (never redirected to login), and forwarded with the identity headers
 * and the assertion. Nothing under `/.gatehouse/` is upgraded. Only a valid opening handshake is
 * forwarded (GET, a 16-byte key, version 13), and no tunnel opens unless the upstream answers 101: a
 * refusal or another answer is relayed and the connection closed, so nothing the client sends after it
 * reaches the upstream (WebSocket smuggling). The upstream's answer is vetted like any other
 * (`vetResponseFields`): its Set-Cookie for the gateway's own cookies never reaches the browser, and the
 * route's response header edits apply.
 *
 * Cross-site WebSocket hijacking: browsers send cookies and client certificates with a handshake that
 * any page opens, and the Same-Origin Policy does not apply to WebSockets (RFC 6455 §10.2), so a
 * handshake that such a credential identified must carry an Origin of the route itself (a host of its
 * `match.host`, or the handshake's own Host when it matches any host, with the listener's scheme and the
 * Host's port) or one of its `cors.origins`; else a protected route refuses it (403 `GH_WEBSOCKET_ORIGIN`) and a
 * public route forwards it without the identity, as if the cookie were SameSite=Strict. A handshake
 * without Origin is not from a browser (browsers always send it, RFC 6455 §4.1), so no page can have
 * opened it: it passes. Bearer tokens and API keys are never sent by a browser on its own: not checked.
 */
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import type { Dispatcher } from 'undici';
import {
  type Answer,
  answer,
  type RequestDescription,
  refusalError,
  refusalOf,
  wwwAuthenticate,
} from '../core/answer.js';
import { describeRequest } from '../core/describe.js';
import type { CompiledRoute, RequestFacts } from '../core/types.js';
import { GatehouseError, NoRouteError, NoServerAvailableError, WebSocketNotAllowedError } from '../errors.js';
import { GATEHOUSE_PREFIX } from '../identity/login.js';
import {
  activeWebSockets,
  halfClosedWebSockets,
  requestsTotal,
  webSocketClosesTotal,
} from '../observe/metrics.js';
import type { RequestTrace } from '../observe/tracing.js';
import type { InFlight, Runtime } from '../runtime.js';
import type { Lease, Upstream } from '../upstream/types.js';
import { certificateSocket, forwardIdentity } from './access.js';
import { type AccessRecord, accessEntry, writeAccess } from './access-entry.js';
import {
  BadWebSocketHandshakeError,
  classify,
  toGatehouseError,
  UnsupportedUpgradeError,
  WebSocketVersionError,
} from './errors.js';
import {
  forwardPath,
  hostHeaderOf,
  NO_ROUTE,
  ownCookiesOf,
  routeState,
  traceOf,
  trustedOf,
  vetResponseFields,
} from './forward.js';
import { checkHandshake } from './framing.js';
import {
  buildRequestHeaders,
  clientAddress,
  effectiveClient,
  type HeaderEdits,
  HOP_BY_HOP,
  isTrusted,
  requestIdFrom,
} from './headers.js';
import { acquireFor, type LeaseHolder, releaseLease } from './lease.js';
import type { ListenerInfo, ProxyContext, ProxyRequest, Tunnel } from './types.js';

function ignoreError(): void {}

/** `websocket.finTimeout` when the route sets `websocket: true`. */
const DEFAULT_FIN_TIMEOUT = 5_000;

/** What closed a tunnel: a side (first to close), the idle timeout, or the half-closed bound. */
type CloseCause = 'client' | 'upstream' | 'idle' | 'fin-timeout';

/**
 * Ends a raw socket after an answer, reading and dropping what the client still sends (a lingering
 * close, RFC 9112 §9.6) for at most `ms`: a client that never closes its side cannot hold it.
 */
function lingerClose(socket: Duplex, ms: number): void {
  if (socket.destroyed) return;
  socket.end();
  socket.resume();
  const timer = setTimeout(() => socket.destroy(), ms);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

/** Writes a complete HTTP/1.1 error response on a raw socket and closes it within `lingerMs`. */
function writeRawError(
  socket: Duplex,
  err: GatehouseError,
  requestId: string,
  extraHeaders: string,
  lingerMs: number,
): void {
  if (socket.destroyed) return;
  const status = err.status >= 400 && err.status <= 599 ? err.status : 500;
  const body = `${status} ${STATUS_CODES[status] ?? 'Error'}: ${err.message} (${err.code})\n`;
  socket.write(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\n` +
      'Content-Type: text/plain; charset=utf-8\r\n' +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      'Connection: close\r\n' +
      extraHeaders +
      `X-Request-Id: ${requestId}\r\n\r\n` +
      body,
  );
  lingerClose(socket, lingerMs);
}

const WEBSOCKET_KEY = /^[A-Za-z0-9+/]{22}==$/;

/**
 * Checks the parts of an opening handshake the gateway relies on (RFC 6455 §4.2.1): a GET (the method
 * the upstream is sent, and the one routed and authorized), a key of 16 bytes, version 13. A handshake
 * the upstream would refuse is refused here, so no upgrade is forwarded that cannot become a tunnel.
 */
function checkOpeningHandshake(req: ProxyRequest): void {
  // A GET without a body is checked with the request framing (framing.ts `checkHandshake`).
  const key = req.headers['sec-websocket-key'];
  if (typeof key !== 'string' || !WEBSOCKET_KEY.test(key)) {
    throw new BadWebSocketHandshakeError('Sec-WebSocket-Key must be 16 bytes in base64');
  }
  if (req.headers['sec-websocket-version'] !== '13') throw new WebSocketVersionError();
}

/**
 * The header lines of the upstream's answer to a handshake as the client gets them: its fields without
 * X-Request-Id (the gateway writes its own) and the route's removals, then the route's set values. A
 * declined handshake (`relayed`) also loses the hop-by-hop fields and Content-Length: it is relayed
 * decoded and close-delimited.
 */
function answerFields(raw: readonly Buffer[], edits: HeaderEdits | undefined, relayed: boolean): string {
  const drop = edits?.drop;
  let out = '';
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toString('latin1');
    const lower = name.toLowerCase();
    if (lower === 'x-request-id' || drop?.has(lower)) continue;
    if (relayed && (HOP_BY_HOP.has(lower) || lower === 'content-length')) continue;
    out += `${name}: ${raw[i + 1]!.toString('latin1')}\r\n`;
  }
  if (edits !== undefined) for (const [name, value] of edits.set) out += `${name}: ${value}\r\n`;
  return out;
}

/** The undici handler for one handshake, and afterwards the tunnel itself. */
class WebSocketTunnel implements Tunnel, LeaseHolder, AccessRecord, Dispatcher.DispatchHandler {
  readonly handler: ProxyContext;
  readonly req: ProxyRequest;
  readonly client: Duplex;
  readonly head: Buffer;
  readonly listener: ListenerInfo;
  readonly t0 = performance.now();
  readonly startedAt = Date.now();
  readonly requestId: string;
  /** The handshake's method (a GET, or it is refused), as logged. */
  readonly method: string;
  /** The client's address (`effectiveClient`: the peer, or whom a trusted proxy forwarded for). */
  clientIp: string;
  /** The address that connected. */
  readonly peerIp: string;
  /** The peer is a trusted proxy (`server.trustedProxies`), known once the runtime is. */
  peerTrusted = false;
  upstream: Duplex | undefined;
  route: CompiledRoute | undefined;
  up: Upstream | undefined;
  lease: Lease | undefined;
  serverId: string | undefined;
  /** The access stage's verdict. */
  access: Answer | undefined;
  /** The request fields and the path sent upstream, once built. */
  headers: string[] | undefined;
  target = '';
  /** The cookies the gateway sets (`ownCookiesOf`): a backend's Set-Cookie for one is dropped. */
  ownCookies: ReadonlySet<string> | undefined;
  /** The route's `headers.response` edits, applied to the upstream's answer. */
  responseEdits: HeaderEdits | undefined;
  host = '';
  originalHost = '';
  path = '';
  idleTimeout = 3_600_000;
  /** How long the tunnel stays open once one side has closed (`websocket.finTimeout`). */
  finTimeout = DEFAULT_FIN_TIMEOUT;
  /** Set when one side has closed its direction and the other not yet: bounds that state. */
  finTimer: NodeJS.Timeout | undefined;
  /** What closed the tunnel, for `gatehouse_websocket_closes_total`. */
  cause: CloseCause | undefined;
  abortUpstream: ((err?: Error) => void) | undefined;
  status = 0;
  errorCode: string | undefined;
  /** Bytes sent upstream and received from it over the tunnel (counted by the upstream socket), once closed. */
  bytesIn = 0;
  bytesOut = 0;
  /** A handshake is never retried. */
  readonly retries = 0;
  /** A non-101 answer is being relayed. */
  relaying = false;
  closed = false;
  counted = false;
  /** The count of the runtime this tunnel started on. */
  inFlight: InFlight | undefined;
  /** The handshake's spans when `tracing` is on (observe/tracing.ts): they end with its answer. */
  trace: RequestTrace | undefined = undefined;

  constructor(
    handler: ProxyContext,
    req: ProxyRequest,
    client: Duplex,
    head: Buffer,
    listener: ListenerInfo,
  ) {
    this.handler = handler;
    this.req = req;
    this.client = client;
    this.head = head;
    this.listener = listener;
    this.requestId = requestIdFrom(req.headers['x-request-id']);
    this.method = req.method ?? 'GET';
    this.peerIp = clientAddress(req.socket?.remoteAddress);
    this.clientIp = this.peerIp;
  }

  start(runtime: Runtime): void {
    const req = this.req;
    const trusted = trustedOf(runtime.config);
    this.peerTrusted = isTrusted(trusted, this.peerIp);
    this.clientIp = effectiveClient(this.peerIp, this.peerTrusted, trusted, req.headers['x-forwarded-for']);
    this.trace = traceOf(runtime, req, this, this.listener.tls);
    const client = this.client;
    client.on('error', ignoreError);
    client.on('close', () => this.sideClosed(client));
    this.handler.tunnels.add(this);
    // Until close(), a reload keeps the upstreams of this runtime open.
    this.inFlight = runtime.inFlight;
    this.inFlight.count++;
    let facts: RequestDescription;
    let route: CompiledRoute;
    try {
      checkHandshake(req, runtime.config.server.maxHeadersCount);
      const upgrade = req.headers.upgrade;
      if (typeof upgrade !== 'string' || upgrade.toLowerCase() !== 'websocket')
        throw new UnsupportedUpgradeError();
      checkOpeningHandshake(req);
      facts = describeRequest(
        {
          method: req.method ?? 'GET',
          target: req.url ?? '',
          host: hostHeaderOf(req),
          headers: req.headers,
          clientIp: this.clientIp,
          tls: this.listener.tls,
          listener: this.listener.name,
          scheme: this.scheme(),
          upgrade: true,
          certificate: runtime.identity.certificateListeners.has(this.listener.name)
            ? certificateSocket(req)
            : undefined,
        },
        runtime.config.server.pathParameters,
      );
      this.path = facts.path;
      this.originalHost = facts.authority;
      this.host = facts.host;
      if (facts.path.startsWith(GATEHOUSE_PREFIX)) {
        throw new GatehouseError('GH_NOT_FOUND', 404, 'nothing under /.gatehouse/ accepts an upgrade');
      }
      const matched = runtime.routes.match(facts);
      if (matched === undefined) throw new NoRouteError();
      route = matched;
      this.route = route;
      const ws = route.config.websocket;
      if (typeof ws === 'object') this.finTimeout = ws.finTimeout;
      this.trace?.beginDecision();
      const grant = answer(runtime, facts, route);
      if (grant instanceof Promise) {
        grant.then(
          (g) => this.admitted(runtime, facts, route, g),
          (err: unknown) => this.fail(toGatehouseError(err)),
        );
        return;
      }
      this.admitted(runtime, facts, route, grant);
    } catch (err) {
      this.fail(toGatehouseError(err));
    }
  }

  /** After the access stage: refuse, or pick the upstream, build the headers and acquire a lease. */
  admitted(runtime: Runtime, facts: RequestFacts, route: CompiledRoute, grant: Answer): void {
    if (this.closed) return;
    const req = this.req;
    this.access = grant;
    this.trace?.endDecision(this, true);
    try {
      const refusal = refusalOf(grant, facts);
      if (refusal !== undefined) throw refusalError(refusal);
      if (route.websocketIdleTimeout === undefined) throw new WebSocketNotAllowedError();
      this.idleTimeout = route.websocketIdleTimeout;
      const name = route.pickUpstream(req.headers);
      const up = runtime.upstreams.get(name);
      if (up === undefined) throw new NoServerAvailableError(name);
      this.up = up;
      this.ownCookies = ownCookiesOf(runtime.config);
      this.target = forwardPath(route, facts.path, facts.query);
      const rs = routeState(route);
      this.responseEdits = rs.responseEdits;
      const edits = rs.requestEdits;
      const headers = buildRequestHeaders({
        raw: req.rawHeaders,
        host: this.originalHost,
        originalHost: this.originalHost,
        peerIp: this.peerIp,
        trustedPeer: this.peerTrusted,
        proto: this.listener.tls ? 'https' : 'http',
        requestId: this.requestId,
        edits,
        inject: up.injectHeaders,
        apiKeyHeader: runtime.identity.apiKeyHeader,
      });
      forwardIdentity(headers, grant, edits, up.injectHeaders);
      this.trace?.forward(headers);
      this.headers = headers;
    } catch (err) {
      this.fail(toGatehouseError(err));
      return;
    }
    acquireFor(this, this.up, { clientIp: this.clientIp, headers: req.headers }, undefined);
  }

  /** The scheme of the page that opens the handshake: behind a trusted TLS-terminating proxy, the forwarded one. */
  scheme(): 'http' | 'https' {
    if (this.listener.tls) return 'https';
    if (this.peerTrusted) {
      const proto = this.req.headers['x-forwarded-proto'];
      if (typeof proto === 'string' && proto.split(',')[0]!.trim().toLowerCase() === 'https') return 'https';
    }
    return 'http';
  }

  leaseUnwanted(): boolean {
    return this.closed;
  }

  /** Sends the handshake on `lease` (see `lease.ts`). */
  sendOn(lease: Lease): void {
    const headers = this.headers!;
    if (this.route?.config.preserveHost === false) headers[1] = lease.server.hostHeader;
    this.trace?.startAttempt(headers, 'GET', this.up!.name, lease.server, 1);
    try {
      lease.server.dispatcher.dispatch(
        {
          path: this.target,
          method: 'GET',
          headers,
          upgrade: 'websocket',
          headersTimeout: this.route?.config.timeouts?.response ?? this.up!.config.timeouts.response,
        },
        this,
      );
    } catch (err) {
      this.onError(err as Error);
    }
  }

  fail(err: GatehouseError): void {
    this.status = err.status;
    this.errorCode = err.code;
    let extra =
      err.status === 401 && this.access !== undefined
        ? `WWW-Authenticate: ${wwwAuthenticate(this.access.decision.reason)}\r\n`
        : '';
    // A limited handshake: Retry-After and the RateLimit headers.
    const limit = err.status === 429 ? this.access?.limit : undefined;
    if (limit !== undefined)
      for (let i = 0; i < limit.headers.length; i += 2)
        extra += `${limit.headers[i]}: ${limit.headers[i + 1]}\r\n`;
    if (err instanceof WebSocketVersionError) extra += 'Sec-WebSocket-Version: 13\r\n';
    writeRawError(this.client, err, this.requestId, extra, this.finTimeout);
  }

  // --- undici handler

  onConnect(abort: (err?: Error) => void): void {
    this.abortUpstream = abort;
    if (this.closed) abort(new Error('client closed'));
  }

  onUpgrade(statusCode: number, rawHeaders: Buffer[] | string[] | null, socket: Duplex): void {
    this.abortUpstream = undefined;
    let raw: Buffer[];
    try {
      // As on any answer: a backend never sets the gateway's own cookies (session fixation).
      raw = vetResponseFields((rawHeaders ?? []) as Buffer[], this.ownCookies);
    } catch (err) {
      socket.on('error', ignoreError);
      socket.destroy();
      this.onError(err as Error);
      return;
    }
    const client = this.client;
    this.upstream = socket;
    this.status = statusCode;
    // The handshake is answered: its spans end here, not when the tunnel closes.
    this.trace?.attemptStatus(statusCode);
    this.trace?.end(this);
    socket.on('error', ignoreError);
    socket.on('close', () => this.sideClosed(socket));
    if (this.closed || client.destroyed) {
      socket.destroy();
      return;
    }
    let head = `HTTP/1.1 ${statusCode} ${STATUS_CODES[statusCode] ?? 'Switching Protocols'}\r\n`;
    head += answerFields(raw, this.responseEdits, false);
    const cookie = this.lease?.setCookie;
    if (cookie !== undefined) head += `Set-Cookie: ${cookie}\r\n`;
    // The session layer's cookie (refresh, re-seal) and the CORS answer.
    const extra = this.access?.responseHeaders;
    if (extra !== undefined)
      for (let i = 0; i < extra.length; i += 2) head += `${extra[i]}: ${extra[i + 1]}\r\n`;
    head += `X-Request-Id: ${this.requestId}\r\n\r\n`;
    client.write(head);
    if (this.head.length > 0) socket.write(this.head);
    activeWebSockets.labels(this.route!.name).inc();
    this.counted = true;
    const idle = this.idleTimeout;
    const onIdle = (): void => {
      this.errorCode = 'GH_WEBSOCKET_IDLE';
      this.cause ??= 'idle';
      this.destroy();
    };
    (client as Socket).setTimeout?.(idle, onIdle);
    (socket as Socket).setTimeout?.(idle, onIdle);
    // The pipes pass a FIN on (end the other side's writing); the fin timer bounds what follows.
    client.once('end', () => this.halfClosed('client'));
    socket.once('end', () => this.halfClosed('upstream'));
    socket.pipe(client);
    client.pipe(socket);
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], _resume: () => void, statusText: string): boolean {
    if (statusCode < 200) return true;
    // The server declined the upgrade: relay its answer and close. A field it may not send throws here,
    // before anything is relayed, and undici's onError answers 502.
    const raw = vetResponseFields(rawHeaders, this.ownCookies);
    this.status = statusCode;
    this.trace?.attemptStatus(statusCode);
    this.relaying = true;
    let head = `HTTP/1.1 ${statusCode} ${statusText || STATUS_CODES[statusCode] || ''}\r\n`;
    head += answerFields(raw, this.responseEdits, true);
    head += `Connection: close\r\nX-Request-Id: ${this.requestId}\r\n\r\n`;
    if (!this.client.destroyed) this.client.write(head);
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (!this.client.destroyed) this.client.write(chunk);
    return true;
  }

  onComplete(): void {
    this.abortUpstream = undefined;
    this.trace?.endAttempt(undefined);
    releaseLease(this, this.status >= 502 && this.status <= 504 ? 'http-5xx' : 'success');
    lingerClose(this.client, this.finTimeout);
  }

  onError(err: Error): void {
    this.abortUpstream = undefined;
    if (this.closed) {
      this.trace?.endAttempt('GH_CLIENT_CLOSED');
      releaseLease(this, 'client-abort');
      return;
    }
    const c = classify(err, false);
    this.trace?.endAttempt(c.error.code);
    releaseLease(this, c.outcome);
    if (this.relaying) {
      this.errorCode = c.error.code;
      this.client.destroy();
      return;
    }
    this.fail(c.error);
  }

  // --- tunnel lifetime
  //
  //   open ──(one side sends FIN: passed on)──► half-closed ──(the other side closes too)──► closed
  //     │                                          └──(finTimeout passes)─────────────────► closed (fin-timeout)
  //     ├──(either side reset or destroyed)────────────────────────────────────────────────► closed
  //     └──(no data either way for idleTimeout)─────────────────────────────────────────────► closed (idle)
  // A half-closed tunnel would otherwise stay until the idle timeout and hold a drain on SIGTERM
  // (HAProxy bounds it with `timeout client-fin` / `server-fin`).

  /** `side` ended its direction (FIN): its end was passed on; the other side gets `finTimeout` to follow. */
  halfClosed(side: 'client' | 'upstream'): void {
    if (this.closed) return;
    this.cause ??= side;
    if (this.finTimer !== undefined) return;
    halfClosedWebSockets.labels(this.route!.name).inc();
    this.finTimer = setTimeout(() => {
      this.errorCode ??= 'GH_WEBSOCKET_FIN_TIMEOUT';
      this.cause = 'fin-timeout';
      this.destroy();
    }, this.finTimeout);
    this.finTimer.unref();
  }

  /**
   * One socket closed. When it closed after a clean FIN that was passed on, the other side may still be
   * writing out what it has (a close frame): the fin timer bounds that. Otherwise the tunnel ends now.
   */
  sideClosed(socket: Duplex): void {
    if (this.closed) return;
    const other = socket === this.client ? this.upstream : this.client;
    if (
      this.finTimer !== undefined &&
      other !== undefined &&
      !other.destroyed &&
      socket.readableEnded &&
      other.writableEnded
    ) {
      return;
    }
    this.cause ??= socket === this.client ? 'client' : 'upstream';
    this.close();
  }

  destroy(): void {
    this.client.destroy();
    this.upstream?.destroy();
    this.abortUpstream?.(new Error('tunnel closed'));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.inFlight !== undefined) this.inFlight.count--;
    this.handler.tunnels.delete(this);
    this.client.destroy();
    this.upstream?.destroy();
    this.abortUpstream?.(new Error('client closed'));
    if (this.upstream !== undefined) releaseLease(this, 'success');
    if (this.finTimer !== undefined) {
      clearTimeout(this.finTimer);
      halfClosedWebSockets.labels(this.route!.name).dec();
    }
    if (this.counted) {
      activeWebSockets.labels(this.route!.name).dec();
      webSocketClosesTotal.labels(this.route!.name, this.cause ?? 'client').inc();
    }
    if (this.status === 0) this.status = 499;
    this.trace?.end(this);
    requestsTotal.labels(this.route?.name ?? NO_ROUTE, 'GET', String(this.status)).inc();
    const log = this.handler.accessLog;
    if (log === undefined) return;
    const upstream = this.upstream as { bytesRead?: number; bytesWritten?: number } | undefined;
    this.bytesIn = upstream?.bytesWritten ?? 0;
    this.bytesOut = upstream?.bytesRead ?? 0;
    const durationMs = performance.now() - this.t0;
    const entry = accessEntry(this, this.up?.name, this.startedAt, durationMs, undefined, 'websocket');
    writeAccess(log, entry, this.handler.logger);
  }
}

/** Serves one upgrade request on the runtime captured at its start. */
export function tunnelWebSocket(
  handler: ProxyContext,
  runtime: Runtime,
  req: ProxyRequest,
  socket: Duplex,
  head: Buffer,
  listener: ListenerInfo,
): void {
  new WebSocketTunnel(handler, req, socket, head, listener).start(runtime);
}

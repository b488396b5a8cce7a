/**
 * The request lifecycle of the built-in proxy (diagram with every exit in LIFECYCLE.md):
 *
 *   runtime = getRuntime()            captured once; a reload mid-request does not affect this request
 *   framing (framing.ts)              431 GH_TOO_MANY_HEADERS / 400 GH_BAD_HOST, GH_BAD_FRAMING / 505 / 501
 *   CONNECT                           405 GH_METHOD_NOT_ALLOWED (never proxied)
 *   normalize path and host           400 GH_BAD_PATH / GH_BAD_HOST
 *   /.gatehouse/*, CORS preflight     answered by the gateway (access.ts), on every host
 *   match route, settle the method    404 GH_NO_ROUTE / 400 GH_BAD_METHOD_OVERRIDE / 405 TRACE (core/methods.ts)
 *   access (identity + policy)        302 login / 401 / 403 / 503 GH_STATE_UNAVAILABLE (access.ts)
 *   body size (Content-Length)        413 GH_BODY_TOO_LARGE (streamed bytes are counted too)
 *   Max-Forwards: 0 on OPTIONS/TRACE  answered by the gateway (RFC 9110 §7.6.2)
 *   Expect: 100-continue              100 Continue sent only now, so a refused request never sends its body
 *   pick upstream                     503 GH_NO_SERVER
 *   retry loop: acquire lease         503 GH_NO_SERVER / GH_QUEUE_TIMEOUT / GH_QUEUE_FULL
 *               forward (undici)      502 GH_UPSTREAM_* / 504 GH_UPSTREAM_TIMEOUT, retried when allowed
 *               request body stalls   408 GH_CLIENT_TIMEOUT (client idle watch), upstream aborted
 *   stream the response back          client gone: 499 in the access log only; client not reading past
 *                                     its idle timeout: both sides aborted (GH_CLIENT_TIMEOUT)
 *   body fails to parse (clientError) 400 GH_BAD_FRAMING when no response started, upstream aborted, closed
 *   access log + metrics              once, when the client response closes
 *
 * One `Exchange` object per request is also the undici dispatch handler, so forwarding allocates no
 * per-request closures.
 */
import { ServerResponse } from 'node:http';
import type { Http2ServerRequest, Http2Session } from 'node:http2';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import { type Dispatcher, errors as undiciErrors } from 'undici';
import type { Answer } from '../core/answer.js';
import { describeRequest } from '../core/describe.js';
import { allowOf, MethodNotAllowedError, routeRequest, USUAL_ALLOW } from '../core/methods.js';
import type { CompiledRoute } from '../core/types.js';
import {
  BodyTooLargeError,
  ClientClosedError,
  ClientTimeoutError,
  type GatehouseError,
  NoServerAvailableError,
  UpstreamConnectError,
} from '../errors.js';
import { isoTime } from '../observe/access-log.js';
import { type AccessEntry, type Logger, recordsAccess } from '../observe/log.js';
import { requestsTotal, retriesTotal, upstreamDuration } from '../observe/metrics.js';
import type { RequestTrace } from '../observe/tracing.js';
import type { Runtime } from '../runtime.js';
import type { Lease, SelectInput, Upstream } from '../upstream/types.js';
import {
  addResponseHeaders,
  admit,
  certificateSocket,
  forwardIdentity,
  type ReservedEndpoint,
  serveBeforeRouting,
} from './access.js';
import { type AccessRecord, accessEntry, writeAccess } from './access-entry.js';
import { classify, type FailureKind, isBodylessLengthNotice, sendError, toGatehouseError } from './errors.js';
import {
  forwardPath,
  hostHeaderOf,
  noRouteState,
  ownCookiesOf,
  type RouteState,
  routeState,
  traceOf,
  trustedOf,
  vetResponseFields,
} from './forward.js';
import {
  bodyParseError,
  bodyPending,
  checkFraming,
  checkNoBody,
  closeAfter,
  connectionClosing,
  isHttp2,
  maxForwardsOf,
  requestHasBody,
  resetAfterAnswer,
  setMaxForwards,
  stripCredentials,
  traceEcho,
} from './framing.js';
import {
  buildRequestHeaders,
  buildResponseHeaders,
  clientAddress,
  effectiveClient,
  fieldValue,
  isTrusted,
  requestIdFrom,
} from './headers.js';
import { noteClientReset, streamClosed, streamOpened } from './http2.js';
import { acquireFor, type LeaseHolder, releaseLease } from './lease.js';
import type { ListenerInfo, ProxyContext, ProxyRequest, ProxyResponse, Tunnel } from './types.js';
import { tunnelWebSocket } from './websocket.js';

/** Options of the request handler. */
export interface HandlerOptions {
  getRuntime(): Runtime;
  logger: Logger;
  accessLog?: (entry: AccessEntry) => void;
  /** Endpoints under `/.gatehouse/` served besides the gateway's own (the forward-auth endpoint). */
  endpoints?: readonly ReservedEndpoint[];
}

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);
/**
 * Largest request body kept to replay an idempotent request on another server after the first attempt
 * read it (HAProxy's L7 retries likewise need the request in one buffer; Envoy buffers up to a limit).
 */
const MAX_REPLAY_BODY = 64 * 1024;
/**
 * Longest error body read and dropped before a retry (to keep the connection); a longer one, or one
 * that never ends, costs the connection instead of holding the request.
 */
const MAX_DISCARD = 64 * 1024;
/** 103 Early Hints passed on per request; more from one upstream answer are dropped. */
const MAX_EARLY_HINTS = 4;
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'CONNECT'];

function countRequest(rs: RouteState, method: string, status: number): void {
  let m = METHODS.indexOf(method);
  if (m === -1) m = METHODS.length;
  const key = status * 16 + m;
  let child = rs.requests.get(key);
  if (child === undefined) {
    child = requestsTotal.series(rs.name, METHODS[m] ?? 'OTHER', String(status));
    rs.requests.set(key, child);
  }
  child.inc();
}

type HistChild = { observe(v: number): void };

const upstreamHist = new Map<string, HistChild>();

function observeUpstream(name: string, seconds: number): void {
  let h = upstreamHist.get(name);
  if (h === undefined) {
    h = upstreamDuration.series(name);
    upstreamHist.set(name, h);
  }
  h.observe(seconds);
}

const kExchange = Symbol('gatehouse.exchange');
type TaggedResponse = ProxyResponse & { [kExchange]?: Exchange };

function onResponseClose(this: TaggedResponse): void {
  this[kExchange]?.finish();
}

function onResponseDrain(this: TaggedResponse): void {
  this[kExchange]?.onDrain();
}

function stallTimer(ex: Exchange): void {
  ex.onStall();
}

function ignoreError(): void {}

const NO_INJECT: ReadonlyArray<readonly [string, string]> = [];

function retryTimer(ex: Exchange): void {
  ex.attempt();
}

/** One client request on its way through the proxy; also the undici dispatch handler for its attempts. */
class Exchange implements LeaseHolder, AccessRecord {
  readonly handler: ProxyHandler;
  /** The endpoints under `/.gatehouse/` of other modules (see `ReservedEndpoint`). */
  get endpoints(): readonly ReservedEndpoint[] {
    return this.handler.endpoints;
  }
  readonly runtime: Runtime;
  readonly req: ProxyRequest;
  readonly res: TaggedResponse;
  readonly listener: ListenerInfo;
  readonly t0: number;
  /** The method routed, authorized and logged: the request's, or an accepted override (core/methods.ts). */
  method: string;
  /** The method on the wire, which the upstream receives (a POST carrying an override stays a POST). */
  readonly wireMethod: string;
  /** `Expect: 100-continue`: the 100 is sent once the request is allowed, so a refused one sends no body. */
  expectContinue = false;
  /** The socket was detached by Node's parser (HTTP/1.0 Upgrade, CONNECT): it serves this one request. */
  detached = false;
  requestId = '';
  /** The client's address: the peer, or the address a trusted proxy forwarded for (`effectiveClient`). */
  clientIp: string;
  /** The address that connected. */
  readonly peerIp: string;
  /** The peer is a trusted proxy (`server.trustedProxies`). */
  readonly peerTrusted: boolean;
  host = '';
  path = '';
  query = '';
  route: CompiledRoute | undefined;
  rs: RouteState | undefined;
  upstream: Upstream | undefined;
  select: SelectInput | undefined;
  lease: Lease | undefined;
  serverId: string | undefined;
  tried: Set<string> | undefined;
  retries = 0;
  headers: string[] | undefined;
  preserveHost = true;
  target = '';
  hasBody = false;
  limit: number | undefined;
  headersTimeout: number | undefined;
  bodyTimeout: number | undefined;
  abortUpstream: ((err?: Error) => void) | undefined;
  resumeFn: (() => void) | undefined;
  /** undici started writing the current attempt. */
  sent = false;
  /** A retryable 5xx is being read and discarded before the retry. */
  discarding = false;
  bytesDiscarded = 0;
  responseStarted = false;
  /** The final response's head, held until its first body bytes or its end (see `onHeaders`). */
  pendingHead: string[] | undefined;
  /** The response was ended with its last body chunk (see `onData`). */
  responseEnded = false;
  /** Content-Length of the response, -1 when it has none. */
  contentLength = -1;
  drainHooked = false;
  finished = false;
  upstreamStart = 0;
  upstreamMs: number | undefined;
  bytesIn = 0;
  bytesOut = 0;
  status = 0;
  errorCode: string | undefined;
  /** The access stage's verdict (identity, reason, rule; what to forward). */
  access: Answer | undefined;
  /** The data plane for the access log when it is not the proxy itself (`forward-auth`). */
  plane: string | undefined;
  originalHost = '';
  /** Status of a retryable 5xx being discarded. */
  retryStatus = 0;
  /**
   * Client idle watch (slowloris body, slow read): armed while the request body is forwarded and while
   * the response waits for 'drain'; refreshed by progress either way. Only such requests allocate it.
   */
  stall: NodeJS.Timeout | undefined;
  /** A response write is waiting for 'drain' (the client is not reading). */
  waitingDrain = false;
  /** The HTTP/2 connection of the stream (a closed stream forgets it), for reset accounting. */
  readonly h2session: Http2Session | undefined = undefined;
  /** 103 Early Hints passed on to the client. */
  earlyHints = 0;
  /**
   * The request body chunks read so far, kept while an idempotent request may still be retried after
   * its body was read; undefined when nothing is kept (no body, not idempotent, or over MAX_REPLAY_BODY).
   */
  replay: Buffer[] | undefined;
  replayBytes = 0;
  /** The request's Content-Length, -1 when it has none. */
  replayLength = -1;
  /** The current attempt sends the kept body (its bytes were counted by the first attempt). */
  replaying = false;
  /** A listener copies the body chunks into `replay`. */
  tapped = false;
  /** The request's spans when `tracing` is on (observe/tracing.ts); undefined otherwise. */
  trace: RequestTrace | undefined = undefined;

  constructor(
    handler: ProxyHandler,
    runtime: Runtime,
    req: ProxyRequest,
    res: ProxyResponse,
    listener: ListenerInfo,
  ) {
    this.handler = handler;
    this.runtime = runtime;
    this.req = req;
    this.res = res;
    this.listener = listener;
    this.t0 = performance.now();
    this.method = req.method ?? 'GET';
    this.wireMethod = this.method;
    this.peerIp = clientAddress(req.socket?.remoteAddress);
    const trusted = trustedOf(runtime.config);
    this.peerTrusted = isTrusted(trusted, this.peerIp);
    this.clientIp = effectiveClient(this.peerIp, this.peerTrusted, trusted, req.headers['x-forwarded-for']);
    this.trace = traceOf(runtime, req, this, listener.tls);
    if (isHttp2(req)) {
      this.h2session = (req as unknown as Http2ServerRequest).stream.session;
      if (this.h2session !== undefined) streamOpened(this.h2session);
    }
  }

  start(): void {
    const req = this.req;
    const res = this.res;
    res[kExchange] = this;
    res.on('close', onResponseClose);
    res.on('error', ignoreError);
    // Until 'close' (finish), a reload keeps the upstreams of this runtime open.
    this.runtime.inFlight.count++;
    this.requestId = requestIdFrom(req.headers['x-request-id']);
    try {
      if (checkFraming(req, this.runtime.config.server.maxHeadersCount)) closeAfter(req, res);
      if (this.detached) checkNoBody(req);
    } catch (err) {
      // A request whose framing is refused may be followed by bytes that cannot be trusted: close.
      closeAfter(req, res);
      this.fail(toGatehouseError(err));
      return;
    }
    try {
      // CONNECT names an authority, not a resource: never proxied (RFC 9110 §9.3.6).
      if (this.method === 'CONNECT') throw new MethodNotAllowedError('CONNECT', USUAL_ALLOW);
      const listener = this.listener;
      const facts = describeRequest(
        {
          method: this.method,
          target: req.url ?? '',
          host: hostHeaderOf(req),
          headers: req.headers,
          clientIp: this.clientIp,
          tls: listener.tls,
          listener: listener.name,
          certificate: this.runtime.identity.certificateListeners.has(listener.name)
            ? certificateSocket(req)
            : undefined,
          // Quota costs an upstream reports in a response header are charged when the response comes.
          seesResponse: true,
        },
        this.runtime.config.server.pathParameters,
      );
      this.path = facts.path;
      this.query = facts.query;
      this.originalHost = facts.authority;
      this.host = facts.host;
      if (serveBeforeRouting(this, facts)) return;
      const route = routeRequest(this.runtime.routes, facts);
      this.method = facts.method;
      this.route = route;
      this.rs = routeState(route);
      // Synchronous unless a credential needs I/O (a token not yet verified, a session lookup).
      this.trace?.beginDecision();
      const admitted = admit(this, facts, route);
      this.trace?.endDecision(this, admitted);
      if (admitted !== true) {
        if (admitted !== false) {
          admitted.then(
            (ok) => {
              if (ok) this.proceed();
            },
            (err: unknown) => this.fail(toGatehouseError(err)),
          );
        }
        return;
      }
    } catch (err) {
      this.fail(toGatehouseError(err));
      return;
    }
    this.proceed();
  }

  /** After the access stage allowed the request: body limit, upstream, headers, then the retry loop. */
  proceed(): void {
    if (this.finished || this.res.headersSent) return;
    const req = this.req;
    const route = this.route!;
    const rs = this.rs!;
    const originalHost = this.originalHost;
    const method = this.method;
    const trace = method === 'TRACE';
    try {
      this.hasBody = requestHasBody(req);
      const limit = route.maxBodySize;
      if (limit !== undefined && this.hasBody) {
        const cl = req.headers['content-length'];
        if (cl !== undefined && Number(cl) > limit) throw new BodyTooLargeError(limit);
        this.limit = limit;
      }
      const maxForwards = trace || method === 'OPTIONS' ? maxForwardsOf(req) : undefined;
      if (maxForwards === 0) {
        this.answerAsRecipient(trace);
        return;
      }
      const name = route.pickUpstream(req.headers);
      const up = this.runtime.upstreams.get(name);
      if (up === undefined) throw new NoServerAvailableError(name);
      this.upstream = up;
      if (this.hasBody && up.config.retries.attempts > 0 && IDEMPOTENT.has(this.wireMethod)) {
        const cl = req.headers['content-length'];
        this.replayLength = cl === undefined ? -1 : Number(cl);
        if (this.replayLength <= MAX_REPLAY_BODY) this.replay = [];
      }
      const rc = route.config;
      this.preserveHost = rc.preserveHost;
      this.target = forwardPath(route, this.path, this.query);
      this.headersTimeout = rc.timeouts?.response ?? up.config.timeouts.response;
      this.bodyTimeout = rc.timeouts?.idle ?? up.config.timeouts.idle;
      this.select = { clientIp: this.clientIp, headers: req.headers };
      this.headers = buildRequestHeaders({
        raw: req.rawHeaders,
        host: originalHost,
        originalHost,
        peerIp: this.peerIp,
        trustedPeer: this.peerTrusted,
        proto: this.listener.tls ? 'https' : 'http',
        requestId: this.requestId,
        edits: trace ? rs.traceEdits : rs.requestEdits,
        inject: trace ? NO_INJECT : up.injectHeaders,
        methodOverride: rc.methodOverride,
        apiKeyHeader: this.runtime.identity.apiKeyHeader,
      });
      // A TRACE is reflected by its recipient: it carries no credential and no identity (RFC 9110 §9.3.8).
      if (trace) stripCredentials(this.headers, this.runtime.identity.apiKeyHeader);
      else if (this.access !== undefined)
        forwardIdentity(this.headers, this.access, rs.requestEdits, up.injectHeaders);
      if (maxForwards !== undefined) setMaxForwards(this.headers, maxForwards - 1);
      this.trace?.forward(this.headers);
    } catch (err) {
      this.fail(toGatehouseError(err));
      return;
    }
    if (this.expectContinue) this.res.writeContinue();
    this.attempt();
  }

  /**
   * Max-Forwards: 0 on an OPTIONS or TRACE: the gateway is the final recipient (RFC 9110 §7.6.2). OPTIONS
   * gets the route's Allow; TRACE its request back as message/http, without credentials.
   */
  answerAsRecipient(trace: boolean): void {
    const req = this.req;
    const res = this.res;
    req.resume();
    const body = trace ? traceEcho(req, this.runtime.identity.apiKeyHeader) : '';
    const headers = [
      'content-length',
      String(Buffer.byteLength(body, 'latin1')),
      'cache-control',
      'no-store',
      'x-request-id',
      this.requestId,
    ];
    if (trace) headers.push('content-type', 'message/http', 'x-content-type-options', 'nosniff');
    else headers.push('allow', allowOf(this.route));
    const extra = this.access?.responseHeaders;
    if (extra !== undefined) headers.push(...extra);
    this.status = 200;
    res.writeHead(200, headers);
    res.end(req.method === 'HEAD' ? undefined : Buffer.from(body, 'latin1'));
  }

  /** One pass of the retry loop: acquire a lease (maybe queued), then dispatch. */
  attempt(): void {
    if (this.leaseUnwanted()) return;
    acquireFor(this, this.upstream!, this.select!, this.tried);
  }

  leaseUnwanted(): boolean {
    return this.finished || this.res.headersSent;
  }

  /** Sends this attempt on `lease` (see `lease.ts`). */
  sendOn(lease: Lease): void {
    this.sent = false;
    this.abortUpstream = undefined;
    const server = lease.server;
    const headers = this.headers!;
    if (!this.preserveHost) headers[1] = server.hostHeader;
    this.trace?.startAttempt(headers, this.wireMethod, this.upstream!.name, server, this.retries + 1);
    let body: ProxyRequest | Buffer | null = null;
    if (this.hasBody) {
      // A retry after the body was read sends the kept copy (canRetry made sure it is whole).
      this.replaying = this.req.readableDidRead && this.replay !== undefined;
      body = this.replaying ? this.replayBody() : this.req;
    }
    this.upstreamStart = performance.now();
    try {
      server.dispatcher.dispatch(
        {
          path: this.target,
          method: this.wireMethod as Dispatcher.HttpMethod,
          headers,
          body,
          headersTimeout: this.headersTimeout,
          bodyTimeout: this.bodyTimeout,
          idempotent: IDEMPOTENT.has(this.wireMethod),
          upgrade: null,
        },
        this as unknown as Dispatcher.DispatchHandler,
      );
    } catch (err) {
      this.onError(err as Error);
    }
  }

  /** True when a failed attempt may be retried: conditions, attempts, body, idempotency and budget. */
  canRetry(kind: FailureKind | number): boolean {
    const up = this.upstream!;
    const cfg = up.config.retries;
    if (this.retries >= cfg.attempts || this.finished) return false;
    const on = cfg.on;
    if (typeof kind === 'number') {
      if (!on.includes(kind)) return false;
    } else if (kind === 'connect-timeout') {
      if (!on.includes('connect-error') && !on.includes('timeout')) return false;
    } else if (kind === 'connect-error' || kind === 'timeout' || kind === 'reset') {
      if (!on.includes(kind)) return false;
    } else {
      return false;
    }
    // A body that was read (even partly) can be sent again only from a whole kept copy.
    if (this.hasBody && (this.req.readableDidRead || this.req.destroyed) && !this.replayable()) return false;
    // A non-idempotent request may only be retried when nothing of it reached a server.
    if (this.sent && !IDEMPOTENT.has(this.wireMethod)) return false;
    return up.retryBudget.tryAcquire();
  }

  /**
   * The whole request body was read from the client and kept (see `replay`): the stream ended, or all
   * of its declared length was kept (undici destroys the stream when the connection breaks, so a
   * body that was read completely may never emit its end).
   */
  replayable(): boolean {
    if (this.replay === undefined) return false;
    return this.req.readableEnded || this.replayBytes === this.replayLength;
  }

  /** The kept request body as one buffer (joined once). */
  replayBody(): Buffer {
    const replay = this.replay!;
    if (replay.length !== 1) {
      const whole = Buffer.concat(replay);
      replay.length = 0;
      replay.push(whole);
    }
    return replay[0]!;
  }

  retry(reason: string): void {
    // The client left while a 5xx was being discarded (finish aborted it): nothing is retried or counted.
    if (this.finished) return;
    this.retries++;
    retriesTotal.labels(this.upstream!.name, reason).inc();
    if (this.serverId !== undefined) {
      this.tried ??= new Set();
      this.tried.add(this.serverId);
    }
    const backoff = this.upstream!.config.retries.backoff;
    const delay = backoff > 0 ? backoff * (0.5 + Math.random()) : 0;
    setTimeout(retryTimer, delay, this);
  }

  // --- undici dispatch handler (the callback API: no wrapper objects, and it reports body progress)
  //
  // One attempt, in the order undici calls back (the flags that record each state in brackets):
  //   sendOn ─► onConnect [sent]: client idle watch armed, body tapped for a replay
  //     ├► onHeaders, retryable 5xx [discarding] ─► onComplete / onError ─► retry ─► attempt
  //     ├► onHeaders, final: a sized head is held [pendingHead], a streamed one written [responseStarted]
  //     │    ├► onData: the held head goes out with the first bytes; the last sized chunk ends [responseEnded]
  //     │    └► onComplete: lease released, response ended
  //     └► onError: before [responseStarted] retried (canRetry) or answered (fail); after, the client
  //        stream is cut
  // finish() (the client response closed) [finished] aborts whatever attempt still runs.

  onConnect(abort: (err?: Error) => void): void {
    this.abortUpstream = abort;
    this.sent = true;
    if (this.finished) abort(new ClientClosedError());
    else {
      if (this.hasBody && !this.req.complete) this.watchClient();
      if (this.replay !== undefined && !this.replaying && !this.tapped) {
        // Called before undici starts reading the body, so this listener sees every chunk it reads,
        // also one it reads but cannot write because the connection just broke.
        this.tapped = true;
        this.req.on('data', (chunk: Buffer) => this.keep(chunk));
      }
    }
  }

  /** Keeps a copy of a request body chunk for a replay (see `replay`). */
  keep(chunk: Buffer): void {
    const replay = this.replay;
    if (replay === undefined) return;
    this.replayBytes += chunk.length;
    if (this.replayBytes > MAX_REPLAY_BODY) this.replay = undefined;
    else replay.push(chunk);
  }

  onBodySent(chunk: Buffer | string): void {
    if (this.replaying) return;
    this.bytesIn += chunk.length;
    this.stall?.refresh();
    // Throwing here makes undici abort the attempt with this error.
    if (this.limit !== undefined && this.bytesIn > this.limit) throw new BodyTooLargeError(this.limit);
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, _statusText: string): boolean {
    if (statusCode < 200) return this.onInterim(statusCode, rawHeaders);
    this.trace?.attemptStatus(statusCode);
    const ms = performance.now() - this.upstreamStart;
    this.upstreamMs = ms;
    observeUpstream(this.upstream!.name, ms / 1000);
    if (statusCode >= 500 && statusCode <= 504 && statusCode !== 501 && this.canRetry(statusCode)) {
      // Read the small error body so the connection can be reused, then retry.
      this.discarding = true;
      this.bytesDiscarded = 0;
      this.retryStatus = statusCode;
      return true;
    }
    const res = this.res;
    if (this.finished || res.destroyed) {
      this.abortUpstream?.(new ClientClosedError());
      return false;
    }
    const headers = buildResponseHeaders(
      vetResponseFields(rawHeaders, ownCookiesOf(this.runtime.config)),
      this.rs!.responseEdits,
      this.requestId,
      this.lease?.setCookie,
    );
    // RFC 9110 §8.6: no Content-Length in a 204 (some servers send one; undici then reports a mismatch).
    if (statusCode === 204) removeField(headers, 'content-length');
    const access = this.access;
    if (access !== undefined) {
      addResponseHeaders(headers, access);
      if (access.limit?.charges !== undefined)
        this.runtime.limits.chargeReported(access.limit, (name) => fieldValue(headers, name));
    }
    this.status = statusCode;
    this.resumeFn = resume;
    // Streams (SSE, chunked) get their headers at once. A sized head would wait in Node for the first
    // body bytes anyway; it waits here instead, so that a failure before any of them still gets a
    // clean 502 (or a retry) rather than a connection cut after a head that never left.
    this.contentLength = contentLengthOf(headers);
    this.pendingHead = headers;
    if (this.contentLength !== -1) return true;
    if (!this.sendHead()) return false;
    res.flushHeaders();
    return true;
  }

  /** Writes the held response head (`startResponse`); false when Node refused it and the attempt is aborted. */
  sendHead(): boolean {
    const err = this.startResponse();
    if (err === undefined) return true;
    this.abortUpstream?.(err);
    return false;
  }

  /** Writes the response head held in `pendingHead`; returns the error when Node refuses it. */
  startResponse(): UpstreamConnectError | undefined {
    const headers = this.pendingHead!;
    this.pendingHead = undefined;
    try {
      this.res.writeHead(this.status, headers);
    } catch (err) {
      return new UpstreamConnectError(
        'invalid response from the upstream server',
        err,
        'GH_UPSTREAM_INVALID',
      );
    }
    this.responseStarted = true;
    return undefined;
  }

  /**
   * An interim (1xx) response: 103 Early Hints are passed on (their Link fields only), others dropped.
   * They do not move the deadline of the final response, which undici's timer would otherwise restart
   * at each one: a server sending 102 Processing forever is cut at `timeouts.response`.
   */
  onInterim(statusCode: number, rawHeaders: Buffer[]): boolean {
    if (statusCode === 103) this.forwardEarlyHints(rawHeaders);
    const limit = this.headersTimeout;
    if (limit !== undefined && limit > 0 && performance.now() - this.upstreamStart > limit) {
      this.abortUpstream?.(new undiciErrors.HeadersTimeoutError());
      return false;
    }
    return true;
  }

  /**
   * Sends the Link fields of a 103 to the client before the final response (RFC 8297), never to an
   * HTTP/1.0 client (RFC 9110 §15.2), at most MAX_EARLY_HINTS times; a value Node.js refuses is dropped.
   */
  forwardEarlyHints(rawHeaders: Buffer[]): void {
    const req = this.req;
    const res = this.res;
    if (this.earlyHints >= MAX_EARLY_HINTS || this.finished || res.headersSent || res.destroyed) return;
    if (req.httpVersionMajor === 1 && req.httpVersionMinor === 0) return;
    const links = earlyHintLinks(rawHeaders);
    if (links === undefined) return;
    this.earlyHints++;
    try {
      res.writeEarlyHints({ link: links });
    } catch {
      // Node.js validates Link values; hints are advisory, so a refused one is simply not sent.
    }
  }

  onData(chunk: Buffer): boolean {
    if (this.discarding) {
      this.bytesDiscarded += chunk.length;
      if (this.bytesDiscarded <= MAX_DISCARD) return true;
      // onError (discarding) releases the lease and retries.
      this.abortUpstream?.(new ClientClosedError());
      return false;
    }
    if (this.pendingHead !== undefined && !this.sendHead()) return false;
    const res = this.res;
    this.bytesOut += chunk.length;
    // The last chunk of a sized body ends the response at once (for a small body, headers and body
    // then leave in one write) instead of a write followed by an empty end() on completion.
    if (this.bytesOut === this.contentLength) {
      this.responseEnded = true;
      res.end(chunk);
      return true;
    }
    if (res.write(chunk)) return true;
    if (!this.drainHooked) {
      this.drainHooked = true;
      res.on('drain', onResponseDrain);
    }
    this.waitingDrain = true;
    this.watchClient();
    return false;
  }

  onComplete(_trailers: string[] | null): void {
    this.abortUpstream = undefined;
    this.trace?.endAttempt(undefined);
    if (this.discarding) {
      this.discarding = false;
      releaseLease(this, 'http-5xx');
      this.retry(String(this.retryStatus));
      return;
    }
    if (this.pendingHead !== undefined) {
      const err = this.startResponse();
      if (err !== undefined) {
        releaseLease(this, 'connect-error');
        this.fail(err);
        return;
      }
    }
    const s = this.status;
    releaseLease(this, s === 502 || s === 503 || s === 504 ? 'http-5xx' : 'success');
    if (!this.responseEnded) this.res.end();
  }

  onError(err: Error): void {
    this.abortUpstream = undefined;
    if (this.discarding) {
      this.discarding = false;
      this.trace?.endAttempt(undefined);
      releaseLease(this, 'http-5xx');
      this.retry(String(this.retryStatus));
      return;
    }
    if (this.finished || this.clientGone()) {
      this.trace?.endAttempt('GH_CLIENT_CLOSED');
      releaseLease(this, 'client-abort');
      this.errorCode ??= 'GH_CLIENT_CLOSED';
      return;
    }
    const headReceived = this.pendingHead !== undefined || this.responseStarted;
    if (headReceived && this.bytesOut === 0 && isBodylessLengthNotice(err, this.status)) {
      this.onComplete(null);
      return;
    }
    // A head that never left is dropped: the client gets the error (or the retry's answer) instead.
    this.pendingHead = undefined;
    const c = classify(err, this.sent);
    this.trace?.endAttempt(c.error.code);
    releaseLease(this, c.outcome);
    if (!this.responseStarted && this.canRetry(c.kind)) {
      this.retry(c.kind);
      return;
    }
    if (c.error.status >= 500) {
      this.handler.logger.warn(
        {
          requestId: this.requestId,
          route: this.route?.name,
          server: this.serverId,
          code: c.error.code,
          err,
        },
        'upstream attempt failed',
      );
    }
    if (this.responseStarted) {
      this.errorCode = c.error.code;
      this.res.destroy();
      return;
    }
    this.fail(c.error);
  }

  // --- client side

  clientGone(): boolean {
    const req = this.req;
    return this.res.destroyed || (this.hasBody && !req.complete && req.destroyed);
  }

  onDrain(): void {
    this.waitingDrain = false;
    this.stall?.refresh();
    this.resumeFn?.();
  }

  /**
   * Starts (or restarts) the client idle watch: the smaller of server.clientIdleTimeout and the route's
   * idle timeout, as HAProxy's `timeout client` bounds client inactivity in either direction.
   */
  watchClient(): void {
    if (this.stall !== undefined) {
      this.stall.refresh();
      return;
    }
    const server = this.runtime.config.server.clientIdleTimeout;
    const route = this.bodyTimeout ?? 0;
    const ms = server === 0 ? route : route === 0 ? server : Math.min(server, route);
    if (ms > 0) this.stall = setTimeout(stallTimer, ms, this);
  }

  /** The idle watch fired: progress re-arms it (refresh), silence from the client ends the exchange. */
  onStall(): void {
    if (this.finished) return;
    let reading: boolean;
    if (this.waitingDrain) {
      reading = true;
    } else if (this.hasBody && !this.req.complete && !this.req.destroyed) {
      // Paused by undici: the upstream is not taking the body, which is not the client's silence.
      if (this.req.isPaused()) {
        this.stall?.refresh();
        return;
      }
      reading = false;
    } else {
      return;
    }
    const err = new ClientTimeoutError(reading);
    this.handler.logger.info(
      { requestId: this.requestId, route: this.route?.name, code: err.code, client: this.clientIp },
      reading ? 'client stopped reading the response' : 'client stopped sending the request body',
    );
    const abort = this.abortUpstream;
    if (abort !== undefined) abort(err);
    else if (!this.responseStarted) this.fail(err);
    if (this.responseStarted || reading) {
      this.errorCode = err.code;
      this.res.destroy();
    }
  }

  fail(err: GatehouseError): void {
    // Once the gateway answered itself (a refusal, a body that failed to parse), nothing more is sent.
    if (this.finished || (this.res.headersSent && !this.responseStarted)) return;
    this.status = err.status;
    this.errorCode = err.code;
    // An unread request body would follow on this connection: close it after the answer. So after a
    // 400: what follows a request the gateway could not make sense of is not trusted either.
    const close = bodyPending(this.req) || err.status === 400;
    if (close) closeAfter(this.req, this.res);
    // After the access stage the answer still carries its headers (a refreshed or cleared session
    // cookie, CORS), so a 502/503/504 neither loses a session update nor looks like a CORS failure.
    let extra = this.access?.responseHeaders;
    if (err instanceof MethodNotAllowedError) extra = (extra ?? []).concat('allow', err.allow);
    this.bytesOut = sendError(this.req, this.res, err, this.requestId, extra);
    if (close) resetAfterAnswer(this.req);
  }

  /**
   * The request body failed to parse (Node's `clientError` after the headers): 400 when no response
   * has started (else the response is cut), the upstream request aborted, the connection closed.
   */
  bodyFailed(err: NodeJS.ErrnoException): void {
    const e = bodyParseError(err);
    closeAfter(this.req, this.res);
    if (this.finished) return;
    const abort = this.abortUpstream;
    this.abortUpstream = undefined;
    if (this.res.headersSent) {
      this.errorCode = e.code;
      this.res.destroy();
    } else {
      this.fail(e);
    }
    abort?.(e);
  }

  /** Runs once when the client response closes (finished or aborted): log and metrics. */
  finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.runtime.inFlight.count--;
    const res = this.res;
    res[kExchange] = undefined;
    if (this.stall !== undefined) clearTimeout(this.stall);
    // An HTTP/2 stream reset by the client reads as writableFinished; a response never begun is a 499 too.
    const aborted = !res.writableFinished || this.status === 0;
    if (aborted && this.errorCode === undefined) {
      this.errorCode = 'GH_CLIENT_CLOSED';
      this.status = 499;
    } else if (aborted && this.status === 0) {
      this.status = 499;
    }
    this.trace?.end(this);
    if (this.abortUpstream !== undefined) this.abortUpstream(new ClientClosedError());
    if (this.h2session !== undefined) {
      streamClosed(this.h2session);
      // A stream the client cancelled before any answer counts against its connection (rapid reset).
      if (!res.headersSent) noteClientReset(this.h2session, this.runtime.config, this.handler.logger);
    }
    // An answer of the gateway's own (a page, JSON, jwks.json) set its length as a header.
    if (this.bytesOut === 0 && !this.responseStarted) {
      const length = Number(res.getHeader('content-length'));
      if (length > 0 && this.req.method !== 'HEAD') this.bytesOut = length;
    }
    const durationMs = performance.now() - this.t0;
    const rs = this.rs ?? noRouteState();
    countRequest(rs, this.method, this.status);
    rs.duration.observe(durationMs / 1000);
    if (this.bytesIn > 0) rs.bytesIn.inc(this.bytesIn);
    if (this.bytesOut > 0) rs.bytesOut.inc(this.bytesOut);
    const log = this.handler.accessLog;
    // The gateway's sink checks the flag too (a reload may flip it); this saves building the entry.
    if (log !== undefined && recordsAccess(this.runtime.config)) {
      // Wall-clock start, derived here so requests that are not logged never read the clock.
      const startMs = Date.now() - durationMs;
      const protocol = 'HTTP/' + this.req.httpVersion;
      const entry = accessEntry(this, this.upstream?.name, startMs, durationMs, this.upstreamMs, protocol);
      writeAccess(log, entry, this.handler.logger);
    }
  }
}

/** The Content-Length of flat response headers, -1 when absent or not a plain number. */
function contentLengthOf(flat: readonly string[]): number {
  for (let i = 0; i < flat.length; i += 2) {
    const name = flat[i]!;
    if (name.length === 14 && name.toLowerCase() === 'content-length') {
      const n = Number(flat[i + 1]);
      return Number.isSafeInteger(n) && n >= 0 ? n : -1;
    }
  }
  return -1;
}

/** Removes every field named `lower` (a lower-case name) from flat header pairs. */
function removeField(flat: string[], lower: string): void {
  for (let i = flat.length - 2; i >= 0; i -= 2) {
    if (flat[i]!.toLowerCase() === lower) flat.splice(i, 2);
  }
}

/** One link-value as Node.js accepts it in `writeEarlyHints` (`<uri>` and `;` parameters). */
const LINK_VALUE = /^<[^>]*>(?:\s*;\s*[^;"\s]+(?:=(")?[^;"\s]*\1)?)*$/;

/**
 * The link-values of the Link fields in a 103 response, one per item (a field may list several,
 * separated by commas outside `<…>` and quotes); undefined when there is none Node.js would accept.
 */
export function earlyHintLinks(rawHeaders: readonly Buffer[]): string[] | undefined {
  let links: string[] | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.length !== 4 || rawHeaders[i]!.toString('latin1').toLowerCase() !== 'link') continue;
    const value = rawHeaders[i + 1]!.toString('latin1');
    let start = 0;
    let inUri = false;
    let inQuote = false;
    for (let j = 0; j <= value.length; j++) {
      const c = value.charCodeAt(j);
      if (j < value.length) {
        if (c === 0x3c && !inQuote) inUri = true;
        else if (c === 0x3e && !inQuote) inUri = false;
        else if (c === 0x22 && !inUri) inQuote = !inQuote;
        if (c !== 0x2c || inUri || inQuote) continue;
      }
      const item = value.slice(start, j).trim();
      start = j + 1;
      if (!LINK_VALUE.test(item)) continue;
      if (links === undefined) links = [item];
      else links.push(item);
    }
  }
  return links;
}

/** Handles requests and upgrades of every listener; one instance per ListenerSet. */
export class ProxyHandler implements ProxyContext {
  readonly getRuntime: () => Runtime;
  readonly logger: Logger;
  readonly accessLog: ((entry: AccessEntry) => void) | undefined;
  readonly endpoints: readonly ReservedEndpoint[];
  /** Open WebSocket tunnels, given until the drain deadline on close. */
  readonly tunnels = new Set<Tunnel>();

  constructor(opts: HandlerOptions) {
    this.getRuntime = opts.getRuntime;
    this.logger = opts.logger;
    this.accessLog = opts.accessLog;
    this.endpoints = opts.endpoints ?? [];
  }

  /**
   * Serves one HTTP request (HTTP/1.x, or HTTP/2 through the compatibility API). `expectContinue`: it
   * came through `checkContinue` and gets its 100 Continue only once it is allowed.
   */
  handleRequest(req: ProxyRequest, res: ProxyResponse, listener: ListenerInfo, expectContinue = false): void {
    // A request pipelined behind one after which the connection closes is never served.
    if (req.httpVersionMajor !== 2 && connectionClosing(req)) return;
    const ex = new Exchange(this, this.getRuntime(), req, res, listener);
    ex.expectContinue = expectContinue;
    this.#run(ex);
  }

  #run(ex: Exchange): void {
    try {
      ex.start();
    } catch (err) {
      this.logger.error({ err }, 'request handling failed');
      try {
        ex.fail(toGatehouseError(err));
      } catch (failed) {
        // Not even an error answer could be written: the request must still never take the process down.
        this.logger.error({ err: failed }, 'error answer failed');
        ex.res.destroy();
      }
    }
  }

  /**
   * Serves an HTTP/1 `Upgrade` request: WebSocket tunnelling for HTTP/1.1. An HTTP/1.0 request's Upgrade
   * is ignored (RFC 9110 §7.8): it is served as an ordinary request on the detached socket.
   */
  handleUpgrade(req: ProxyRequest, socket: Duplex, head: Buffer, listener: ListenerInfo): void {
    if (req.httpVersionMajor !== 1 || req.httpVersionMinor !== 1) {
      this.serveDetached(req, socket, listener);
      return;
    }
    tunnelWebSocket(this, this.getRuntime(), req, socket, head, listener);
  }

  /**
   * A CONNECT request: never proxied, answered 405 (HTTP/1 on its detached socket, which then closes;
   * HTTP/2 on its stream). `second` is the socket (HTTP/1) or the response (HTTP/2).
   */
  handleConnect(req: ProxyRequest, second: Duplex | ProxyResponse, listener: ListenerInfo): void {
    if (req.httpVersionMajor === 2) this.handleRequest(req, second as ProxyResponse, listener);
    else this.serveDetached(req, second as Duplex, listener);
  }

  /**
   * Serves one request on a socket Node's parser let go of (Upgrade, CONNECT), through a response bound
   * to it; the socket closes after that response. What follows the request's head is never read: a
   * request that announces a body is refused (the parser stopped before it).
   */
  serveDetached(req: ProxyRequest, socket: Duplex, listener: ListenerInfo): void {
    const res = new ServerResponse(req);
    res.shouldKeepAlive = false;
    socket.on('error', ignoreError);
    // The server's own drain and finish handling went with the parser.
    socket.on('drain', () => res.emit('drain'));
    res.on('finish', () => (socket as Socket).destroySoon());
    res.assignSocket(socket as Socket);
    const ex = new Exchange(this, this.getRuntime(), req, res, listener);
    ex.detached = true;
    this.#run(ex);
  }

  /**
   * Records a request that Node's parser refused before there was a request to serve (smuggling
   * attempts such as Content-Length with Transfer-Encoding, obs-fold, oversized or late headers): the
   * requests metric and, when the access log is on, a line with the client, the status, `GH_BAD_REQUEST`
   * and the parser's own code. A connection that timed out without sending a byte (a browser's
   * preconnect) is counted but not logged.
   */
  logUnparsed(socket: Duplex, status: number, parserCode: string | undefined): void {
    countRequest(noRouteState(), 'OTHER', status);
    const log = this.accessLog;
    if (log === undefined || !recordsAccess(this.getRuntime().config)) return;
    const s = socket as Partial<Socket>;
    if (status === 408 && s.bytesRead === 0) return;
    const entry: AccessEntry = {
      time: isoTime(Date.now()),
      requestId: requestIdFrom(undefined),
      client: clientAddress(s.remoteAddress),
      host: '',
      method: '',
      path: '',
      route: undefined,
      upstream: undefined,
      server: undefined,
      status,
      bytesIn: 0,
      bytesOut: 0,
      duration: 0,
      upstreamDuration: undefined,
      retries: 0,
      error: 'GH_BAD_REQUEST',
    };
    if (parserCode !== undefined) entry.detail = parserCode;
    writeAccess(log, entry, this.logger);
  }

  /**
   * A parse error after the headers (Node's `clientError` while a response is pending). When it is in
   * the body of the request being served, its exchange answers and aborts the upstream request; false
   * when it belongs to no exchange (the caller then destroys the socket).
   */
  handleBodyError(err: NodeJS.ErrnoException, socket: Duplex): boolean {
    const res = (socket as { _httpMessage?: TaggedResponse | null })._httpMessage;
    const ex = res?.[kExchange];
    if (ex === undefined || ex.req.complete) return false;
    const incoming = (socket as { parser?: { incoming?: unknown } | null }).parser?.incoming;
    if (incoming != null && incoming !== ex.req) return false;
    ex.bodyFailed(err);
    return true;
  }
}

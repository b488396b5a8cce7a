/**
 * WebSocket tunnelling (HTTP/1.1 Upgrade, RFC 6455). The handshake goes through the same normalization,
 * routing and header hygiene as any request and through the server's undici pool (so upstream TLS
 * settings apply); after the 101 both sockets are piped to each other until either side closes or
 * the route's idle timeout passes. The lease is held for the tunnel's lifetime. The handshake passes the
 * same access stage as a request (`access.ts`): refused with 401/403 (never redirected to login), and
 * forwarded with the identity headers and the assertion. Nothing under `/.gatehouse/` is upgraded.
 */
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import type { Dispatcher } from 'undici';
import { normalizeHost, normalizePath } from '../core/normalize.js';
import type { CompiledRoute, RequestFacts } from '../core/types.js';
import { GatehouseError, NoRouteError, NoServerAvailableError } from '../errors.js';
import { GATEHOUSE_PREFIX } from '../identity/login.js';
import type { AccessEntry } from '../observe/log.js';
import { activeWebSockets, requestsTotal } from '../observe/metrics.js';
import type { Runtime } from '../runtime.js';
import type { Lease, Upstream } from '../upstream/types.js';
import {
  type AccessGrant,
  authorize,
  forwardIdentity,
  logAccess,
  refusalOf,
  wwwAuthenticate,
} from './access.js';
import { classify, toGatehouseError, UnsupportedUpgradeError, WebSocketNotAllowedError } from './errors.js';
import type { ProxyHandler } from './handler.js';
import { acquireLease, forwardPath, hostHeaderOf, routeState, trustedOf } from './handler.js';
import {
  buildRequestHeaders,
  clientAddress,
  effectiveClient,
  HOP_BY_HOP,
  isTrusted,
  requestIdFrom,
} from './headers.js';
import type { ListenerInfo, ProxyRequest } from './types.js';

/** An open (or opening) tunnel, tracked so that shutdown can wait for it and then close it. */
export interface Tunnel {
  readonly client: Duplex;
  upstream: Duplex | undefined;
  destroy(): void;
}

function ignoreError(): void {}

/** Writes a complete HTTP/1.1 error response on a raw socket and closes it. */
function writeRawError(socket: Duplex, err: GatehouseError, requestId: string, extraHeaders = ''): void {
  if (socket.destroyed) return;
  const status = err.status >= 400 && err.status <= 599 ? err.status : 500;
  const body = `${status} ${STATUS_CODES[status] ?? 'Error'}: ${err.message} (${err.code})\n`;
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\n` +
      'Content-Type: text/plain; charset=utf-8\r\n' +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      'Connection: close\r\n' +
      extraHeaders +
      `X-Request-Id: ${requestId}\r\n\r\n` +
      body,
  );
}

/** The undici handler for one handshake, and afterwards the tunnel itself. */
class WebSocketTunnel implements Tunnel, Dispatcher.DispatchHandler {
  readonly handler: ProxyHandler;
  readonly req: ProxyRequest;
  readonly client: Duplex;
  readonly head: Buffer;
  readonly listener: ListenerInfo;
  readonly t0 = performance.now();
  readonly startedAt = Date.now();
  readonly requestId: string;
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
  access: AccessGrant | undefined;
  host = '';
  originalHost = '';
  path = '';
  idleTimeout = 3_600_000;
  abortUpstream: ((err?: Error) => void) | undefined;
  status = 0;
  errorCode: string | undefined;
  /** A non-101 answer is being relayed. */
  relaying = false;
  closed = false;
  counted = false;

  constructor(
    handler: ProxyHandler,
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
    this.peerIp = clientAddress(req.socket?.remoteAddress);
    this.clientIp = this.peerIp;
  }

  start(runtime: Runtime): void {
    const req = this.req;
    const trusted = trustedOf(runtime.config);
    this.peerTrusted = isTrusted(trusted, this.peerIp);
    this.clientIp = effectiveClient(this.peerIp, this.peerTrusted, trusted, req.headers['x-forwarded-for']);
    const client = this.client;
    client.on('error', ignoreError);
    client.on('close', () => this.close());
    this.handler.tunnels.add(this);
    let facts: RequestFacts;
    let route: CompiledRoute;
    try {
      const upgrade = req.headers.upgrade;
      if (typeof upgrade !== 'string' || upgrade.toLowerCase() !== 'websocket')
        throw new UnsupportedUpgradeError();
      const t = normalizePath(req.url ?? '', req.method);
      this.path = t.path;
      this.originalHost = t.authority ?? hostHeaderOf(req) ?? '';
      this.host = normalizeHost(this.originalHost);
      if (t.path.startsWith(GATEHOUSE_PREFIX)) {
        throw new GatehouseError('GH_NOT_FOUND', 404, 'nothing under /.gatehouse/ accepts an upgrade');
      }
      facts = {
        method: req.method ?? 'GET',
        host: this.host,
        path: t.path,
        query: t.query,
        headers: req.headers,
        clientIp: this.clientIp,
        tls: this.listener.tls,
      };
      const matched = runtime.routes.match(facts);
      if (matched === undefined) throw new NoRouteError();
      route = matched;
      this.route = route;
      const grant = authorize(runtime, req, this.listener, facts, route);
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
  admitted(runtime: Runtime, facts: RequestFacts, route: CompiledRoute, grant: AccessGrant): void {
    if (this.closed) return;
    const req = this.req;
    this.access = grant;
    let headers: string[];
    let target: string;
    try {
      const refusal = refusalOf(grant);
      if (refusal !== undefined) throw refusal;
      if (route.websocketIdleTimeout === undefined) throw new WebSocketNotAllowedError();
      this.idleTimeout = route.websocketIdleTimeout;
      const name = route.pickUpstream(req.headers);
      const up = runtime.upstreams.get(name);
      if (up === undefined) throw new NoServerAvailableError(name);
      this.up = up;
      target = forwardPath(route, facts.path, facts.query);
      const edits = routeState(route).requestEdits;
      headers = buildRequestHeaders({
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
    } catch (err) {
      this.fail(toGatehouseError(err));
      return;
    }
    let lease: Lease | Promise<Lease>;
    try {
      lease = acquireLease(this.up, { clientIp: this.clientIp, headers: req.headers }, undefined);
    } catch (err) {
      this.fail(toGatehouseError(err));
      return;
    }
    if (lease instanceof Promise) {
      lease.then(
        (l) => this.dispatch(l, headers, target),
        (err: unknown) => this.fail(toGatehouseError(err)),
      );
    } else {
      this.dispatch(lease, headers, target);
    }
  }

  dispatch(lease: Lease, headers: string[], target: string): void {
    if (this.closed) {
      lease.release('client-abort');
      return;
    }
    this.lease = lease;
    this.serverId = lease.server.id;
    if (this.route?.config.preserveHost === false) headers[1] = lease.server.hostHeader;
    try {
      lease.server.dispatcher.dispatch(
        {
          path: target,
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
    const extra =
      err.status === 401 && this.access !== undefined
        ? `WWW-Authenticate: ${wwwAuthenticate(this.access.decision.reason)}\r\n`
        : '';
    writeRawError(this.client, err, this.requestId, extra);
  }

  release(outcome: Parameters<Lease['release']>[0]): void {
    const lease = this.lease;
    if (lease !== undefined) {
      this.lease = undefined;
      lease.release(outcome);
    }
  }

  // --- undici handler

  onConnect(abort: (err?: Error) => void): void {
    this.abortUpstream = abort;
    if (this.closed) abort(new Error('client closed'));
  }

  onUpgrade(statusCode: number, rawHeaders: Buffer[] | string[] | null, socket: Duplex): void {
    this.abortUpstream = undefined;
    const client = this.client;
    this.upstream = socket;
    this.status = statusCode;
    socket.on('error', ignoreError);
    socket.on('close', () => this.close());
    if (this.closed || client.destroyed) {
      socket.destroy();
      return;
    }
    let head = `HTTP/1.1 ${statusCode} ${STATUS_CODES[statusCode] ?? 'Switching Protocols'}\r\n`;
    const raw = rawHeaders ?? [];
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!.toString();
      if (name.toLowerCase() === 'x-request-id') continue;
      head += `${name}: ${raw[i + 1]!.toString()}\r\n`;
    }
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
      this.destroy();
    };
    (client as Socket).setTimeout?.(idle, onIdle);
    (socket as Socket).setTimeout?.(idle, onIdle);
    socket.pipe(client);
    client.pipe(socket);
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], _resume: () => void, statusText: string): boolean {
    if (statusCode < 200) return true;
    // The server declined the upgrade: relay its answer and close.
    this.status = statusCode;
    this.relaying = true;
    let head = `HTTP/1.1 ${statusCode} ${statusText || STATUS_CODES[statusCode] || ''}\r\n`;
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const name = rawHeaders[i]!.toString('latin1');
      const lower = name.toLowerCase();
      if (HOP_BY_HOP.has(lower) || lower === 'x-request-id' || lower === 'content-length') continue;
      head += `${name}: ${rawHeaders[i + 1]!.toString('latin1')}\r\n`;
    }
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
    this.release(this.status >= 502 && this.status <= 504 ? 'http-5xx' : 'success');
    this.client.end();
  }

  onError(err: Error): void {
    this.abortUpstream = undefined;
    if (this.closed) {
      this.release('client-abort');
      return;
    }
    const c = classify(err, false);
    this.release(c.outcome);
    if (this.relaying) {
      this.errorCode = c.error.code;
      this.client.destroy();
      return;
    }
    this.fail(c.error);
  }

  // --- tunnel lifetime

  destroy(): void {
    this.client.destroy();
    this.upstream?.destroy();
    this.abortUpstream?.(new Error('tunnel closed'));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handler.tunnels.delete(this);
    this.client.destroy();
    this.upstream?.destroy();
    this.abortUpstream?.(new Error('client closed'));
    if (this.upstream !== undefined) this.release('success');
    if (this.counted) activeWebSockets.labels(this.route!.name).dec();
    if (this.status === 0) this.status = 499;
    requestsTotal.labels(this.route?.name ?? '(none)', 'GET', String(this.status)).inc();
    const log = this.handler.accessLog;
    if (log === undefined) return;
    const upstream = this.upstream as { bytesRead?: number; bytesWritten?: number } | undefined;
    const entry: AccessEntry = {
      time: new Date(this.startedAt).toISOString(),
      requestId: this.requestId,
      client: this.clientIp,
      peer: this.peerIp === this.clientIp ? undefined : this.peerIp,
      host: this.host,
      method: this.req.method ?? 'GET',
      path: this.path,
      route: this.route?.name,
      upstream: this.up?.name,
      server: this.serverId,
      status: this.status,
      bytesIn: upstream?.bytesWritten ?? 0,
      bytesOut: upstream?.bytesRead ?? 0,
      duration: Math.round((performance.now() - this.t0) * 1000) / 1000,
      upstreamDuration: undefined,
      retries: 0,
      protocol: 'websocket',
    };
    if (this.errorCode !== undefined) entry.error = this.errorCode;
    if (this.access !== undefined) logAccess(entry, this.access);
    try {
      log(entry);
    } catch (err) {
      this.handler.logger.error({ err }, 'access log failed');
    }
  }
}

/** Serves one upgrade request on the runtime captured at its start. */
export function tunnelWebSocket(
  handler: ProxyHandler,
  runtime: Runtime,
  req: ProxyRequest,
  socket: Duplex,
  head: Buffer,
  listener: ListenerInfo,
): void {
  new WebSocketTunnel(handler, req, socket, head, listener).start(runtime);
}

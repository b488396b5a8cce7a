/**
 * Client-facing listeners: plain HTTP (`node:http`), and HTTPS with HTTP/2 and HTTP/1.1 on one port
 * (`http2.createSecureServer({ allowHTTP1: true })`, ALPN) or HTTPS only. Node's strict parser stays on.
 * Listeners are reconciled on every reload: unchanged ones keep their sockets, and certificates come
 * from the current runtime through SNICallback so new certificates apply without a restart.
 */

import { X509Certificate } from 'node:crypto';
import * as http from 'node:http';
import { STATUS_CODES } from 'node:http';
import * as http2 from 'node:http2';
import * as https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { createSecureContext, type SecureContext, type SecureContextOptions } from 'node:tls';
import { type Config, type ListenerConfig, parseBind } from '../config/schema.js';
import type { AccessEntry, Logger } from '../observe/log.js';
import { activeConnections } from '../observe/metrics.js';
import type { ListenerTlsRuntime, Runtime } from '../runtime.js';
import type { ReservedEndpoint } from './access.js';
import { ProxyHandler } from './handler.js';
import { watchIdleSession } from './http2.js';
import type { ListenerInfo, ProxyRequest, ProxyResponse } from './types.js';

type AnyServer = http.Server | https.Server | http2.Http2SecureServer;
type ServerConfig = Config['server'];

/**
 * Buffer limit of client connections (HTTP/1.x listeners), which is also what a slow client can hold in
 * the gateway before the upstream is paused. Above one upstream socket read (64 KiB), so a full chunk is
 * passed on without a pause and 'drain' each time; at Node 20's 16 KiB default, 1 MiB responses took
 * twice the write calls.
 */
const CLIENT_HIGH_WATER_MARK = 128 * 1024;

/**
 * How often Node checks `headersTimeout` (its default, 30 s, lets a slowloris client hold a connection
 * up to 30 s past the timeout): a quarter of the timeout, at most 1 s. The check walks only connections
 * with a request in progress, not idle keep-alive ones. Fixed when the listener opens.
 */
export function checkingInterval(headersTimeout: number): number {
  return Math.max(50, Math.min(1000, Math.floor(headersTimeout / 4)));
}

interface ListenerEntry {
  readonly key: string;
  readonly config: ListenerConfig;
  readonly info: ListenerInfo;
  readonly server: AnyServer;
  readonly sockets: Set<Socket>;
  readonly sessions: Set<http2.Http2Session>;
  readonly gauge: { inc(): void; dec(): void };
  closing: boolean;
}

const kEntry = Symbol('gatehouse.listenerEntry');
type TrackedServer = AnyServer & { [kEntry]?: ListenerEntry };

/**
 * Tracks a client connection with shared listeners (no closure per socket): an idle keep-alive
 * connection is mostly Node's own state, and 10,000 of them should cost little more than that.
 */
function onConnection(this: TrackedServer, socket: Socket): void {
  const entry = this[kEntry]!;
  entry.sockets.add(socket);
  entry.gauge.inc();
  socket.on('close', onSocketClose);
}

function onSocketClose(this: Socket & { server?: TrackedServer }): void {
  const entry = this.server?.[kEntry];
  if (entry === undefined) return;
  entry.sockets.delete(this);
  entry.gauge.dec();
}

/** Options of the listener set. */
export interface ListenerSetOptions {
  getRuntime(): Runtime;
  logger: Logger;
  accessLog?: (entry: AccessEntry) => void;
  /** Endpoints under `/.gatehouse/` served besides the gateway's own (the forward-auth endpoint). */
  endpoints?: readonly ReservedEndpoint[];
}

function listenerKey(l: ListenerConfig): string {
  if (l.tls === undefined) return `${l.name}|${l.bind}|plain`;
  return `${l.name}|${l.bind}|${l.tls.http2 ? 'h2' : 'tls'}|${l.tls.clientCertificate?.mode ?? 'none'}`;
}

/**
 * Answers malformed requests the way Node does by default, but with our short bodies (431 for big
 * headers). A parse error while a request is being served belongs to its body: that exchange answers it.
 */
function onClientError(
  handler: ProxyHandler,
  err: NodeJS.ErrnoException,
  socket: Socket | import('node:stream').Duplex,
): void {
  const busy = (socket as { _httpMessage?: unknown })._httpMessage;
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  if (busy) {
    // Bytes after a message that closes the connection: it closes after the response in flight anyway.
    if (err.code === 'HPE_CLOSED_CONNECTION') return;
    if (!handler.handleBodyError(err, socket)) socket.destroy();
    return;
  }
  const status =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? 431
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? 408
        : err.code === 'HPE_CHUNK_EXTENSIONS_OVERFLOW'
          ? 413
          : 400;
  handler.logUnparsed(socket, status, err.code);
  const body = `${status} ${STATUS_CODES[status]} (GH_BAD_REQUEST)\n`;
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n` +
      `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
  );
}

function ignore(): void {}

/** The SETTINGS an HTTP/2 listener advertises. */
function http2Settings(s: ServerConfig): http2.Settings {
  return { maxHeaderListSize: s.maxHeaderSize, maxConcurrentStreams: s.http2.maxConcurrentStreams };
}

/** The set of client-facing listeners of one gateway process. */
export class ListenerSet {
  readonly #getRuntime: () => Runtime;
  readonly #logger: Logger;
  readonly #handler: ProxyHandler;
  readonly #entries = new Map<string, ListenerEntry>();
  readonly #closing = new Set<Promise<void>>();

  constructor(opts: ListenerSetOptions) {
    this.#getRuntime = opts.getRuntime;
    this.#logger = opts.logger;
    this.#handler = new ProxyHandler(opts);
  }

  /**
   * Opens, keeps or closes listeners so they match runtime.config.listeners (kept by name + bind +
   * TLS mode; a kept listener's sockets stay open across reloads; TLS contexts come from the current
   * runtime via SNICallback so new certificates apply on reload). Rejects when a listener cannot bind.
   */
  async apply(runtime: Runtime): Promise<void> {
    const wanted = new Map<string, ListenerConfig>();
    for (const l of runtime.config.listeners) wanted.set(listenerKey(l), l);
    const removed = [...this.#entries.values()].filter((e) => !wanted.has(e.key));
    const added = [...wanted].filter(([key]) => !this.#entries.has(key));
    // A new listener on a port a removed one holds (a renamed or re-bound listener) can only bind once
    // that one is closed; every other new listener binds first, while the running ones still serve.
    const freed = new Set<number>();
    for (const e of removed) freed.add(parseBind(e.config.bind)?.port ?? 0);
    freed.delete(0);
    const takesOver = ([, l]: [string, ListenerConfig]): boolean => freed.has(parseBind(l.bind)?.port ?? 0);
    const opened: ListenerEntry[] = [];
    let closedRemoved = false;
    try {
      for (const [key, l] of added.filter((a) => !takesOver(a)))
        opened.push(await this.#open(key, l, runtime));
      const late = added.filter(takesOver);
      if (late.length > 0) {
        closedRemoved = true;
        for (const entry of removed) this.#stopAccepting(entry);
        for (const [key, l] of late) opened.push(await this.#open(key, l, runtime));
      }
    } catch (err) {
      for (const entry of opened) this.#track(this.#drain(entry, 0));
      // The reload is refused and the running configuration stays: so do its listeners.
      if (closedRemoved) await this.#reopen(removed);
      throw err;
    }
    for (const entry of removed) {
      this.#entries.delete(entry.key);
      this.#track(this.#drain(entry, runtime.config.server.drainTimeout));
    }
    for (const entry of opened) this.#entries.set(entry.key, entry);
    // Only once every listener is bound: a refused reload leaves kept listeners as they were.
    for (const [key] of wanted) {
      const kept = this.#entries.get(key);
      if (kept !== undefined && !opened.includes(kept)) this.#refresh(kept, runtime);
    }
  }

  async #open(key: string, l: ListenerConfig, runtime: Runtime): Promise<ListenerEntry> {
    const entry = this.#create(key, l, runtime);
    await this.#listen(entry);
    return entry;
  }

  /** Stops a listener accepting so that its port is free; its connections go on until it is drained. */
  #stopAccepting(entry: ListenerEntry): void {
    if (entry.server.listening) entry.server.close();
  }

  /** Opens again, on the running runtime, listeners closed for a reload that then failed. */
  async #reopen(entries: readonly ListenerEntry[]): Promise<void> {
    const runtime = this.#getRuntime();
    for (const old of entries) {
      try {
        const entry = await this.#open(old.key, old.config, runtime);
        // The old server's connections still drain under its entry; the new one takes its place.
        this.#entries.set(old.key, entry);
        this.#track(this.#drain(old, runtime.config.server.drainTimeout));
      } catch (err) {
        this.#entries.delete(old.key);
        this.#track(this.#drain(old, runtime.config.server.drainTimeout));
        this.#logger.error({ err, listener: old.config.name }, 'listener could not be opened again');
      }
    }
  }

  /** Bound address of a listener by name (port 0 resolved). */
  address(name: string): AddressInfo | undefined {
    for (const entry of this.#entries.values()) {
      if (entry.config.name === name) {
        const a = entry.server.address();
        return a !== null && typeof a === 'object' ? a : undefined;
      }
    }
    return undefined;
  }

  /**
   * Stops accepting, closes idle keep-alive connections, lets in-flight requests (and WebSockets up to
   * the deadline) finish, then destroys what is left after `drainMs`.
   */
  async close(drainMs: number): Promise<void> {
    const entries = [...this.#entries.values()];
    this.#entries.clear();
    for (const entry of entries) this.#track(this.#drain(entry, drainMs));
    await Promise.all([...this.#closing]);
  }

  #track(p: Promise<void>): void {
    this.#closing.add(p);
    void p.finally(() => this.#closing.delete(p));
  }

  #create(key: string, l: ListenerConfig, runtime: Runtime): ListenerEntry {
    const s = runtime.config.server;
    const info: ListenerInfo = { name: l.name, tls: l.tls !== undefined };
    let server: AnyServer;
    if (l.tls === undefined) {
      server = http.createServer({
        maxHeaderSize: s.maxHeaderSize,
        requestTimeout: 0,
        headersTimeout: s.headersTimeout,
        connectionsCheckingInterval: checkingInterval(s.headersTimeout),
        keepAliveTimeout: s.keepAliveTimeout,
        insecureHTTPParser: false,
        // The handler refuses a missing Host itself (framing.ts) and closes: Node's own 400 let a
        // request pipelined behind it through, and the HTTP/2 listener's HTTP/1.1 never checked it.
        requireHostHeader: false,
        noDelay: true,
        highWaterMark: CLIENT_HIGH_WATER_MARK,
      });
    } else {
      const name = l.name;
      const tlsRt = runtime.tls.get(name);
      if (tlsRt === undefined)
        throw new Error(`listeners.${name}.tls: no TLS material was built for this listener`);
      const getRuntime = this.#getRuntime;
      const logger = this.#logger;
      const tlsOptions = {
        ...(tlsRt.defaultOptions as SecureContextOptions),
        SNICallback(servername: string, cb: (err: Error | null, ctx?: SecureContext) => void): void {
          try {
            const current = getRuntime().tls.get(name) ?? tlsRt;
            cb(null, current.contextFor(servername));
          } catch (err) {
            logger.warn({ err, listener: name, servername }, 'TLS context selection failed');
            cb(err as Error);
          }
        },
        // A handshake that never completes holds a socket (Node's default allows 120 s).
        handshakeTimeout: s.tlsHandshakeTimeout,
        requestCert: l.tls.clientCertificate !== undefined,
        // `mode: request` lets an untrusted client certificate through the handshake on purpose: the
        // access stage then refuses it (certificate-invalid, 401) instead of failing the connection.
        rejectUnauthorized: l.tls.clientCertificate?.mode === 'require',
      };
      if (l.tls.http2) {
        const h2 = http2.createSecureServer({
          ...tlsOptions,
          allowHTTP1: true,
          // The four request pseudo-headers plus maxHeadersCount fields; beyond, the stream is refused
          // (RST_STREAM ENHANCE_YOUR_CALM), as it is for a header list over maxHeaderListSize.
          maxHeaderListPairs: s.maxHeadersCount + 4,
          // Streams beyond the advertised limit are refused (REFUSED_STREAM); a client that keeps
          // opening them anyway, or sends invalid frames, loses the connection (Node's own counters).
          maxSessionRejectedStreams: 100,
          maxSessionInvalidFrames: 100,
          settings: http2Settings(s),
        });
        // HTTP/1.1 connections on this server use these like an http.Server.
        Object.assign(h2, {
          connectionsCheckingInterval: checkingInterval(s.headersTimeout),
          headersTimeout: s.headersTimeout,
          requestTimeout: 0,
          keepAliveTimeout: s.keepAliveTimeout,
          maxHeaderSize: s.maxHeaderSize,
          maxHeadersCount: 0,
          requireHostHeader: false,
        });
        server = h2;
      } else {
        server = https.createServer({
          ...tlsOptions,
          maxHeaderSize: s.maxHeaderSize,
          requestTimeout: 0,
          headersTimeout: s.headersTimeout,
          connectionsCheckingInterval: checkingInterval(s.headersTimeout),
          keepAliveTimeout: s.keepAliveTimeout,
          insecureHTTPParser: false,
          requireHostHeader: false,
          noDelay: true,
          highWaterMark: CLIENT_HIGH_WATER_MARK,
        });
      }
    }
    const isH2 = l.tls?.http2 === true;
    // Node would drop the fields past its limit silently (even Transfer-Encoding): none is set, the
    // handler counts them and answers 431 (framing.ts); maxHeaderSize still bounds the header block.
    if (!isH2) (server as http.Server).maxHeadersCount = 0;
    const entry: ListenerEntry = {
      key,
      config: l,
      info,
      server,
      sockets: new Set(),
      sessions: new Set(),
      gauge: activeConnections.series(l.name),
      closing: false,
    };
    const handler = this.#handler;
    const logger = this.#logger;
    const onRequest = (req: ProxyRequest, res: ProxyResponse, expectContinue: boolean): void => {
      // While draining, HTTP/1.1 connections close after their current response.
      if (entry.closing && req.httpVersionMajor === 1) res.shouldKeepAlive = false;
      handler.handleRequest(req, res, info, expectContinue);
    };
    server.on('request', (req: ProxyRequest, res: ProxyResponse) => onRequest(req, res, false));
    // Expect: 100-continue: the handler sends the 100 once the request is allowed (RFC 9110 §10.1.1).
    server.on('checkContinue', (req: ProxyRequest, res: ProxyResponse) => onRequest(req, res, true));
    server.on('upgrade', (req: ProxyRequest, socket: Socket, head: Buffer) => {
      handler.handleUpgrade(req, socket, head, info);
    });
    // Without a listener Node closes an HTTP/1 CONNECT's socket unanswered: the handler answers 405.
    server.on('connect', (req: ProxyRequest, second: Socket | ProxyResponse) => {
      handler.handleConnect(req, second, info);
    });
    server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) =>
      onClientError(handler, err, socket),
    );
    (server as TrackedServer)[kEntry] = entry;
    server.on('connection', onConnection);
    if (l.tls !== undefined) {
      server.on('tlsClientError', (err: Error, socket: Socket) => {
        logger.debug({ err, listener: l.name }, 'TLS handshake failed');
        // The HTTP/2 server hands handshake errors to 'clientError' too, whose HTTP answer would wait
        // for a handshake that never completes (ERR_TLS_HANDSHAKE_TIMEOUT): close the socket here.
        socket.destroy();
      });
    }
    if (isH2) {
      server.on('session', (session: http2.Http2Session) => {
        entry.sessions.add(session);
        session.on('error', ignore);
        const keepAlive = this.#getRuntime().config.server.keepAliveTimeout;
        if (keepAlive > 0) watchIdleSession(session, keepAlive);
        session.once('close', () => entry.sessions.delete(session));
        if (entry.closing) session.close();
      });
      server.on('sessionError', ignore);
    }
    return entry;
  }

  #refresh(entry: ListenerEntry, runtime: Runtime): void {
    const s = runtime.config.server;
    // Node reads these per connection, so a reload applies them to a kept listener, plain or TLS.
    Object.assign(entry.server, {
      headersTimeout: s.headersTimeout,
      keepAliveTimeout: s.keepAliveTimeout,
    });
    if (entry.config.tls === undefined) return;
    const tlsRt: ListenerTlsRuntime | undefined = runtime.tls.get(entry.config.name);
    if (tlsRt === undefined) return;
    // Clients without SNI get the default context; replace it so new certificates apply to them too.
    (entry.server as https.Server).setSecureContext(tlsRt.defaultOptions as SecureContextOptions);
    // New HTTP/2 connections get the reloaded limits; open ones keep what they were told.
    if (entry.config.tls.http2) (entry.server as http2.Http2SecureServer).updateSettings(http2Settings(s));
  }

  #listen(entry: ListenerEntry): Promise<void> {
    const bind = parseBind(entry.config.bind);
    if (bind === undefined)
      return Promise.reject(new Error(`listeners.${entry.config.name}.bind: invalid address`));
    const server = entry.server;
    return new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => {
        reject(
          new Error(`listeners.${entry.config.name}: cannot listen on ${entry.config.bind}: ${err.message}`, {
            cause: err,
          }),
        );
      };
      server.once('error', onError);
      server.listen(bind.port, bind.host, () => {
        server.off('error', onError);
        server.on('error', (err: Error) =>
          this.#logger.error({ err, listener: entry.config.name }, 'listener error'),
        );
        resolve();
      });
    });
  }

  #drain(entry: ListenerEntry, drainMs: number): Promise<void> {
    entry.closing = true;
    const server = entry.server;
    return new Promise<void>((resolve) => {
      let done = false;
      const finish = (): void => {
        if (done) return;
        done = true;
        clearInterval(sweep);
        clearTimeout(deadline);
        resolve();
      };
      // Connections that become idle after their in-flight response are closed by the periodic sweep.
      const sweep = setInterval(() => (server as http.Server).closeIdleConnections?.(), 100);
      const deadline = setTimeout(() => {
        for (const socket of entry.sockets) socket.destroy();
        for (const session of entry.sessions) session.destroy();
      }, drainMs);
      server.close(() => finish());
      (server as http.Server).closeIdleConnections?.();
      // Answers still to come on HTTP/1.1 connections say `Connection: close` (RFC 9112 §9.6), so that
      // the client does not reuse a connection this drain closes as soon as it is idle.
      for (const socket of entry.sockets) {
        const res = (socket as { _httpMessage?: http.ServerResponse | null })._httpMessage;
        if (res != null && !res.headersSent) res.shouldKeepAlive = false;
      }
      for (const session of entry.sessions) session.close();
      if (entry.sockets.size === 0 && !server.listening) setImmediate(finish);
    });
  }
}

interface CertEntry {
  ctx: SecureContext;
}

/**
 * Builds the TLS material of an HTTPS listener: one secure context per certificate, chosen by SNI
 * against the certificate's DNS subjectAltNames (or its CN when it has none), wildcards matching one
 * label; the first certificate is the fallback.
 */
export function buildListenerTls(
  listener: ListenerConfig,
  readSecret: (ref: string) => string,
): ListenerTlsRuntime {
  const tls = listener.tls;
  if (tls === undefined) throw new Error(`listeners.${listener.name}: not a TLS listener`);
  const exact = new Map<string, CertEntry>();
  const wildcard = new Map<string, CertEntry>();
  const ca = tls.clientCertificate ? readSecret(tls.clientCertificate.ca) : undefined;
  let first: CertEntry | undefined;
  let firstOptions: ListenerTlsRuntime['defaultOptions'] | undefined;
  tls.certificates.forEach((c, i) => {
    const where = `listeners.${listener.name}.tls.certificates.${i}`;
    const cert = readSecret(c.cert);
    const key = readSecret(c.key);
    const options: ListenerTlsRuntime['defaultOptions'] & { ca?: string } = {
      cert,
      key,
      minVersion: tls.minVersion,
      ...(tls.maxVersion !== undefined ? { maxVersion: tls.maxVersion } : {}),
      ...(tls.ciphers !== undefined ? { ciphers: tls.ciphers } : {}),
      ...(ca !== undefined ? { ca } : {}),
    };
    let ctx: SecureContext;
    let x509: X509Certificate;
    try {
      x509 = new X509Certificate(cert);
      ctx = createSecureContext(options as SecureContextOptions);
    } catch (err) {
      throw new Error(`${where}: invalid certificate or key: ${(err as Error).message}`, { cause: err });
    }
    const entry: CertEntry = { ctx };
    if (first === undefined) {
      first = entry;
      firstOptions = options;
    }
    for (const name of certificateNames(x509)) {
      if (name.startsWith('*.')) {
        if (!wildcard.has(name.slice(1))) wildcard.set(name.slice(1), entry);
      } else if (!exact.has(name)) {
        exact.set(name, entry);
      }
    }
  });
  const fallback = first!;
  return {
    defaultOptions: firstOptions!,
    contextFor(serverName: string | undefined): SecureContext {
      if (serverName === undefined || serverName === '') return fallback.ctx;
      const name = serverName.toLowerCase();
      const hit = exact.get(name);
      if (hit !== undefined) return hit.ctx;
      const dot = name.indexOf('.');
      if (dot > 0) {
        const w = wildcard.get(name.slice(dot));
        if (w !== undefined) return w.ctx;
      }
      return fallback.ctx;
    },
  };
}

/** DNS names of a certificate, lower-case: subjectAltName DNS entries, else the subject CN. */
function certificateNames(x509: X509Certificate): string[] {
  const names: string[] = [];
  const san = x509.subjectAltName;
  if (san) {
    for (const part of san.split(',')) {
      const p = part.trim();
      if (p.startsWith('DNS:')) names.push(p.slice(4).toLowerCase());
    }
  }
  if (names.length === 0) {
    const cn = /(?:^|\n)CN=([^\n]+)/.exec(x509.subject);
    if (cn) names.push(cn[1]!.trim().toLowerCase());
  }
  return names;
}

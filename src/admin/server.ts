/**
 * The admin listener: Prometheus metrics, liveness and readiness probes, the JSON status and reload
 * API, and the operator dashboard. It binds to loopback by default; `/api/v1` needs the configured
 * bearer token, and without a token it is served only on a loopback address (fail closed).
 *
 *   GET  /api/v1/status                  the runtime, upstreams, workers, the SPOE agent
 *   POST /api/v1/reload                  loads the configuration again
 *   GET  /api/v1/quotas?key=<value>      usage and reset time of every quota for one key (the subject
 *                                        for `identity`, the address for `ip`, the API key id, ...)
 *   POST /api/v1/quotas/<name>/reset     `{"key": "<value>"}`: resets one key of one quota
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { isIPv4, isIPv6 } from 'node:net';
import { parseBind } from '../config/schema.js';
import type { ConfigProblem } from '../errors.js';
import type { Limiter } from '../limits/stage.js';
import type { Logger } from '../observe/log.js';
import {
  enableProcessMetrics,
  getUpstreamStatusSource,
  registry,
  setUpstreamStatusSource,
} from '../observe/metrics.js';
import type { Runtime } from '../runtime.js';
import type { SpoeStatus } from '../spoe/service.js';
import { StateStoreError } from '../state/types.js';
import type { UpstreamStatus } from '../upstream/types.js';
import { dashboardCsp, dashboardHtml } from './dashboard.js';

/** What `POST /api/v1/reload` answers. */
export type ReloadResult = { ok: true; generation: number } | { ok: false; problems: ConfigProblem[] };

/** Everything the admin listener needs from the gateway. */
export interface AdminServerOptions {
  /** The runtime in use right now (undefined before the first load). */
  getRuntime(): Runtime | undefined;
  logger: Logger;
  /** Loads the configuration again; resolves with the new generation or the problems found. */
  reload(): Promise<ReloadResult>;
  /** Bearer token for `/api/v1`, already resolved from its secret reference. */
  token?: string | undefined;
  /** True once the listeners are bound; `/readyz` answers 503 until then (default: a runtime exists). */
  ready?(): boolean;
  /** Bound address of a data-plane listener, shown in the status. */
  listenerAddress?(name: string): AddressInfo | undefined;
  /** The SPOE agent's address and counters, when it runs (shown in the status). */
  spoeStatus?(): SpoeStatus | undefined;
  /**
   * Renders `/metrics` instead of this process's registry: a cluster primary aggregates its workers'.
   */
  metrics?(): Promise<{ contentType: string; text: string }>;
  /**
   * The limit stage whose quotas `/api/v1/quotas` reads and resets, instead of the runtime's: a cluster
   * primary builds one over the instance's store.
   */
  limits?(): Limiter | undefined;
  /**
   * Builds `/api/v1/status` instead of reading `getRuntime()`: a cluster primary asks its workers.
   * Undefined means no report can be given yet (503).
   */
  status?(): Promise<StatusReport | undefined>;
}

/** One worker process in `/api/v1/status` when the instance runs several (`server.workers`). */
export interface WorkerStatus {
  /** Position among the configured workers (0 to workers - 1); a restarted worker keeps its slot. */
  slot: number;
  /** Cluster worker id (a new one for every restart). */
  id: number;
  pid: number | undefined;
  /** True once its listeners are bound and until it starts draining. */
  ready: boolean;
  /** Generation of the instance's configuration this worker runs. */
  generation: number | undefined;
  /** Requests this worker answered since it started. */
  requests: number | undefined;
  startedAt: string;
  /** How many times this slot's worker was restarted after exiting unexpectedly. */
  restarts: number;
}

/** `/api/v1/status` body. */
export interface StatusReport {
  generation: number;
  configFile: string;
  startedAt: string;
  /** Seconds since the process started serving. */
  uptime: number;
  listeners: Array<{ name: string; bind: string; tls: boolean; address?: string }>;
  routes: Array<{
    name: string;
    match: unknown;
    upstream?: string;
    split?: unknown;
    public: boolean;
    policy?: string;
    websocket: boolean;
  }>;
  upstreams: UpstreamStatus[];
  /** Present when `spoe` is configured (this process's agent). */
  spoe?: SpoeStatus;
  /** Present in multi-process mode: every worker process; upstreams above are one worker's view. */
  workers?: WorkerStatus[];
}

const jsonType = 'application/json; charset=utf-8';

/** True for 127.0.0.0/8, ::1 and their IPv4-mapped forms. */
export function isLoopbackAddress(address: string): boolean {
  const a = address.toLowerCase().replace(/^::ffff:/, '');
  if (isIPv4(a)) return a.startsWith('127.');
  if (isIPv6(a)) return a === '::1' || a === '0:0:0:0:0:0:0:1';
  return a === 'localhost';
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** The admin HTTP listener. */
export class AdminServer {
  readonly #opts: AdminServerOptions;
  readonly #tokenDigest: Buffer | undefined;
  readonly #startedAt = new Date();
  readonly #statusSource: () => Iterable<UpstreamStatus>;
  #server: Server | undefined;
  #loopback = false;

  constructor(opts: AdminServerOptions) {
    this.#opts = opts;
    this.#tokenDigest = opts.token ? digest(opts.token) : undefined;
    enableProcessMetrics();
    this.#statusSource = () => {
      const runtime = this.#runtime();
      if (runtime === undefined) return [];
      return Array.from(runtime.upstreams.values(), (u) => u.status());
    };
  }

  /** Starts listening on `host:port`; resolves with the bound address. */
  async listen(bind: string): Promise<AddressInfo> {
    if (this.#server) throw new Error('admin listener already started');
    const parsed = parseBind(bind);
    if (parsed === undefined) throw new Error(`invalid admin bind address "${bind}"`);
    const server = createServer(
      { requestTimeout: 30_000, headersTimeout: 10_000, keepAliveTimeout: 5_000 },
      (req, res) => this.#handle(req, res),
    );
    server.on('clientError', (_err, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      else socket.destroy();
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(parsed.port, parsed.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.#server = server;
    const address = server.address() as AddressInfo;
    this.#loopback = isLoopbackAddress(address.address);
    setUpstreamStatusSource(this.#statusSource);
    if (!this.#tokenDigest && !this.#loopback) {
      this.#opts.logger.warn(
        { bind },
        'admin listener is not on loopback and has no token: /api/v1 is disabled (403)',
      );
    }
    return address;
  }

  /** Stops listening and closes open admin connections. */
  async close(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    if (getUpstreamStatusSource() === this.#statusSource) setUpstreamStatusSource(undefined);
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }

  #runtime(): Runtime | undefined {
    try {
      return this.#opts.getRuntime();
    } catch {
      return undefined;
    }
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    res.setHeader('cache-control', 'no-store');
    res.setHeader('x-content-type-options', 'nosniff');
    this.#route(req, res).catch((err: unknown) => {
      this.#opts.logger.error({ err, path: req.url }, 'admin request failed');
      if (!res.headersSent) sendError(res, 500, 'GH_ADMIN_INTERNAL', 'internal error');
      else res.destroy();
    });
  }

  async #route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const rawUrl = req.url ?? '/';
    const q = rawUrl.indexOf('?');
    const path = q === -1 ? rawUrl : rawUrl.slice(0, q);
    const quotaReset = QUOTA_RESET.exec(path);
    // Only the quota reset reads a body; other bodies are drained so keep-alive connections stay usable.
    if (quotaReset === null) req.resume();

    if (path.startsWith('/api/v1/') || path === '/api/v1') {
      if (!this.#authorized(req, res)) return;
      if (path === '/api/v1/status') {
        if (!allow(method, res, 'GET, HEAD')) return;
        const report = await this.#status();
        if (report === undefined) {
          sendError(res, 503, 'GH_NOT_READY', 'no configuration loaded yet');
          return;
        }
        sendJson(res, 200, report);
        return;
      }
      if (path === '/api/v1/reload') {
        if (!allow(method, res, 'POST')) return;
        await this.#reload(res);
        return;
      }
      if (path === '/api/v1/quotas') {
        if (!allow(method, res, 'GET, HEAD')) return;
        await this.#quotaUsage(res, new URLSearchParams(q === -1 ? '' : rawUrl.slice(q + 1)));
        return;
      }
      if (quotaReset !== null) {
        if (!allow(method, res, 'POST')) {
          req.resume();
          return;
        }
        let name: string;
        try {
          name = decodeURIComponent(quotaReset[1]!);
        } catch {
          req.resume();
          sendError(res, 400, 'GH_ADMIN_BAD_REQUEST', 'the quota name is not a valid percent-encoded string');
          return;
        }
        await this.#quotaReset(req, res, name);
        return;
      }
      sendError(res, 404, 'GH_ADMIN_NOT_FOUND', `no admin endpoint ${path}`);
      return;
    }

    switch (path) {
      case '/metrics': {
        if (!allow(method, res, 'GET, HEAD')) return;
        const { contentType, text } = this.#opts.metrics
          ? await this.#opts.metrics()
          : { contentType: registry.contentType, text: await registry.metrics() };
        res.writeHead(200, { 'content-type': contentType });
        res.end(text);
        return;
      }
      case '/healthz':
        if (!allow(method, res, 'GET, HEAD')) return;
        sendText(res, 200, 'ok\n');
        return;
      case '/readyz': {
        if (!allow(method, res, 'GET, HEAD')) return;
        const ready = this.#ready();
        sendText(res, ready ? 200 : 503, ready ? 'ready\n' : 'not ready\n');
        return;
      }
      case '/':
      case '/dashboard':
        if (!allow(method, res, 'GET, HEAD')) return;
        res.writeHead(200, {
          'content-type': 'text/html; charset=utf-8',
          'content-security-policy': dashboardCsp,
          'referrer-policy': 'no-referrer',
          'x-frame-options': 'DENY',
        });
        res.end(dashboardHtml);
        return;
      default:
        sendError(res, 404, 'GH_ADMIN_NOT_FOUND', `no admin endpoint ${path}`);
    }
  }

  #ready(): boolean {
    try {
      if (this.#opts.ready) return this.#opts.ready();
      return this.#runtime() !== undefined;
    } catch {
      return false;
    }
  }

  /** Checks access to `/api/v1`; answers 401/403 itself and returns false when denied. */
  #authorized(req: IncomingMessage, res: ServerResponse): boolean {
    if (this.#tokenDigest === undefined) {
      if (this.#loopback) return true;
      sendError(
        res,
        403,
        'GH_ADMIN_FORBIDDEN',
        'the admin API needs a token when the admin listener is not on loopback (admin.token)',
      );
      return false;
    }
    const header = req.headers.authorization;
    const m = header === undefined ? null : /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
    // Comparing fixed-length digests keeps the comparison constant-time whatever the token length.
    if (m?.[1] !== undefined && timingSafeEqual(digest(m[1]), this.#tokenDigest)) return true;
    res.setHeader('www-authenticate', 'Bearer realm="gatehouse-admin"');
    sendError(res, 401, 'GH_ADMIN_UNAUTHORIZED', 'a valid admin bearer token is required');
    return false;
  }

  async #reload(res: ServerResponse): Promise<void> {
    let result: ReloadResult;
    try {
      result = await this.#opts.reload();
    } catch (err) {
      this.#opts.logger.error({ err }, 'reload through the admin API failed');
      sendJson(res, 500, {
        ok: false,
        error: 'GH_RELOAD_FAILED',
        message: err instanceof Error ? err.message : 'reload failed',
      });
      return;
    }
    sendJson(res, result.ok ? 200 : 422, result);
  }

  /** The limit stage whose quotas the API shows; undefined after answering 503 when there is none yet. */
  #limits(res: ServerResponse): Limiter | undefined {
    const limits = this.#opts.limits ? this.#opts.limits() : this.#runtime()?.limits;
    if (limits === undefined) sendError(res, 503, 'GH_NOT_READY', 'no configuration loaded yet');
    return limits;
  }

  async #quotaUsage(res: ServerResponse, query: URLSearchParams): Promise<void> {
    const key = query.get('key');
    if (!isQuotaKey(key)) {
      sendError(res, 400, 'GH_ADMIN_BAD_REQUEST', `?key= is required (1 to ${MAX_QUOTA_KEY} characters)`);
      return;
    }
    const limits = this.#limits(res);
    if (limits === undefined) return;
    try {
      sendJson(res, 200, { key, quotas: await limits.usage(key) });
    } catch (err) {
      this.#storeFailed(res, err);
    }
  }

  async #quotaReset(req: IncomingMessage, res: ServerResponse, name: string): Promise<void> {
    let key: unknown;
    try {
      const body = await readSmallBody(req, 4096);
      key = body.length === 0 ? undefined : (JSON.parse(body) as { key?: unknown } | null)?.key;
    } catch {
      sendError(
        res,
        400,
        'GH_ADMIN_BAD_REQUEST',
        'the body must be JSON such as {"key": "alice"}, at most 4 KiB',
      );
      return;
    }
    if (!isQuotaKey(key)) {
      sendError(
        res,
        400,
        'GH_ADMIN_BAD_REQUEST',
        `"key" must be a string of 1 to ${MAX_QUOTA_KEY} characters`,
      );
      return;
    }
    const limits = this.#limits(res);
    if (limits === undefined) return;
    try {
      const reset = await limits.reset(name, key);
      if (reset === undefined) {
        sendError(res, 404, 'GH_ADMIN_NOT_FOUND', `no quota named ${JSON.stringify(name)}`);
        return;
      }
      this.#opts.logger.info({ quota: name, key, counters: reset }, 'quota reset through the admin API');
      sendJson(res, 200, { quota: name, key, reset });
    } catch (err) {
      this.#storeFailed(res, err);
    }
  }

  #storeFailed(res: ServerResponse, err: unknown): void {
    if (!(err instanceof StateStoreError)) throw err;
    sendError(res, 503, 'GH_STATE_UNAVAILABLE', `the state store cannot answer: ${err.message}`);
  }

  async #status(): Promise<StatusReport | undefined> {
    if (this.#opts.status) return await this.#opts.status();
    const runtime = this.#runtime();
    if (runtime === undefined) return undefined;
    const report = buildStatusReport(runtime, this.#startedAt, (name) => this.#opts.listenerAddress?.(name));
    const spoe = this.#opts.spoeStatus?.();
    if (spoe !== undefined) report.spoe = spoe;
    return report;
  }
}

/** The `/api/v1/status` report of one process's runtime. */
export function buildStatusReport(
  runtime: Runtime,
  startedAt: Date,
  listenerAddress?: (name: string) => AddressInfo | undefined,
): StatusReport {
  const config = runtime.config;
  return {
    generation: runtime.generation,
    configFile: runtime.file,
    startedAt: startedAt.toISOString(),
    uptime: Math.round(process.uptime() * 1000) / 1000,
    listeners: config.listeners.map((l) => {
      const addr = listenerAddress?.(l.name);
      const entry: StatusReport['listeners'][number] = {
        name: l.name,
        bind: l.bind,
        tls: l.tls !== undefined,
      };
      if (addr)
        entry.address =
          addr.family === 'IPv6' ? `[${addr.address}]:${addr.port}` : `${addr.address}:${addr.port}`;
      return entry;
    }),
    routes: config.routes.map((r) => {
      const entry: StatusReport['routes'][number] = {
        name: r.name,
        match: r.match,
        public: r.public,
        websocket: r.websocket !== false,
      };
      if (r.upstream !== undefined) entry.upstream = r.upstream;
      if (r.split !== undefined) entry.split = r.split;
      if (typeof r.policy === 'string') entry.policy = r.policy;
      else if (r.policy !== undefined) entry.policy = '(inline)';
      return entry;
    }),
    upstreams: Array.from(runtime.upstreams.values(), (u) => safeStatus(u.name, u.status.bind(u))),
  };
}

function safeStatus(name: string, status: () => UpstreamStatus): UpstreamStatus {
  try {
    return status();
  } catch {
    return { name, balance: 'unknown', queued: 0, servers: [] };
  }
}

const QUOTA_RESET = /^\/api\/v1\/quotas\/([^/]+)\/reset$/;
const MAX_QUOTA_KEY = 512;

/** A key value the quota API accepts: a string of 1 to `MAX_QUOTA_KEY` characters. */
function isQuotaKey(key: unknown): key is string {
  return typeof key === 'string' && key !== '' && key.length <= MAX_QUOTA_KEY;
}

/** Reads a request body of at most `max` bytes as UTF-8; rejects when it is longer. */
function readSmallBody(req: IncomingMessage, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    // A longer body is read to its end (and dropped), so the answer can still be sent.
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= max) chunks.push(c);
    });
    req.on('end', () =>
      size > max ? reject(new Error('body too large')) : resolve(Buffer.concat(chunks).toString('utf8')),
    );
    req.on('error', reject);
  });
}

function allow(method: string, res: ServerResponse, allowed: string): boolean {
  if (allowed.split(', ').includes(method)) return true;
  res.setHeader('allow', allowed);
  sendError(res, 405, 'GH_METHOD_NOT_ALLOWED', `method ${method} not allowed here`);
  return false;
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, { 'content-type': jsonType, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

function sendError(res: ServerResponse, status: number, code: string, message: string): void {
  sendJson(res, status, { error: code, message });
}

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
 *   POST /api/v1/live/ticket             a one-time ticket for the event stream (see live.ts)
 *   GET  /api/v1/live[?ticket=<ticket>]  the dashboard's event stream: a `LiveEvent` every second
 *   GET  /api/v1/live/snapshot           one `LiveEvent` as JSON
 *   GET  /api/v1/sessions[?limit=<n>]    the live sign-in sessions, most recently used first
 *   POST /api/v1/sessions/<id>/revoke    ends one session on every instance and worker
 *
 * Every admin action (reload, quota reset, session revocation) and every refused `/api/v1` request is
 * handed to the `audit` option.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { isIPv4, isIPv6 } from 'node:net';
import { parseBind } from '../config/schema.js';
import type { ConfigProblem } from '../errors.js';
import type { SessionManager } from '../identity/session.js';
import type { Limiter, QuotaUsage } from '../limits/stage.js';
import {
  type LiveSnapshot,
  liveStats,
  type ReloadHistory,
  type ReloadRecord,
  reloadHistory,
} from '../observe/live-stats.js';
import type { Logger } from '../observe/log.js';
import {
  enableProcessMetrics,
  getUpstreamStatusSource,
  registry,
  reloadsTotal,
  setUpstreamStatusSource,
} from '../observe/metrics.js';
import type { Runtime } from '../runtime.js';
import type { SpoeStatus } from '../spoe/service.js';
import { StateStoreError } from '../state/types.js';
import type { UpstreamStatus } from '../upstream/types.js';
import { dashboardCsp, dashboardHtml } from './dashboard.js';
import { LiveStream, type LiveTicket } from './live.js';

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
  /**
   * The live traffic figures the dashboard streams (default: this process's `liveStats`). A cluster
   * primary asks its workers and adds their snapshots up with `LiveStats.merge`.
   */
  live?(): Promise<LiveSnapshot> | LiveSnapshot;
  /** The sessions `/api/v1/sessions` lists and revokes (default: the runtime's sign-in sessions). */
  sessions?(): SessionDirectory | undefined;
  /** Receives every admin action and every refused `/api/v1` request (the audit trail). */
  audit?(record: AdminAuditRecord): void;
  /** Where reloads are recorded for the dashboard (default: the process's `reloadHistory`). */
  reloadHistory?: ReloadHistory;
  /** The public keys of the audit trail's checkpoints (a JWKS), when the instance writes a trail. */
  auditKeys?(): { keys: object[] } | undefined;
}

/** What the admin API needs of the session store: listing, and revoking one session by its handle. */
export type SessionDirectory = Pick<SessionManager, 'list' | 'revokeHandle'>;

/**
 * One audit record of the admin listener. `code` is stable: `admin.reload`, `admin.reload-rejected`,
 * `admin.quota-reset`, `admin.session-revoked`, `admin.denied` (a missing or wrong token or ticket).
 */
export interface AdminAuditRecord {
  event: 'admin';
  code: string;
  /** What was asked: `reload`, `quota-reset`, `session-revoke`, or the refused request's method and path. */
  action: string;
  /** `admin-token` (or `loopback` when no token is configured); `anonymous` when refused. */
  who: string;
  /** The address that connected to the admin listener. */
  client: string;
  [k: string]: unknown;
}

/** An upstream server in the live feed: the status report's entry and the ejections seen. */
export type LiveServer = UpstreamStatus['servers'][number] & {
  /** Times the server was seen turning `ejected` since the admin listener started watching. */
  ejections: number;
};

/** The payload of one live event (and of `GET /api/v1/live/snapshot`). */
export interface LiveEvent {
  at: string;
  /** Generation of the running configuration, when known. */
  generation: number | undefined;
  traffic: LiveSnapshot;
  upstreams: Array<Omit<UpstreamStatus, 'servers'> & { servers: LiveServer[] }>;
  /** The last reloads, newest first. */
  reloads: ReloadRecord[];
  /** Quota usage of the busiest identities (refreshed every few seconds). */
  quotas: Array<{ identity: string; quotas: QuotaUsage[] }>;
  /** Set when the quota usage could not be read (state store down). */
  quotaError?: string;
  workers?: WorkerStatus[];
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
  readonly #live: LiveStream;
  readonly #history: ReloadHistory;
  #reloadWatch: NodeJS.Timeout | undefined;
  #generationSeen: number | undefined;
  #rejectedSeen: number | undefined;
  /** Admin API reloads running: their outcome is recorded by them, not guessed by the watch. */
  #apiReloads = 0;
  readonly #health = new Map<string, { health: string; ejections: number }>();
  #quotaCache: { at: number; key: string; value: Pick<LiveEvent, 'quotas' | 'quotaError'> } | undefined;

  constructor(opts: AdminServerOptions) {
    this.#opts = opts;
    this.#tokenDigest = opts.token ? digest(opts.token) : undefined;
    enableProcessMetrics();
    this.#statusSource = () => {
      const runtime = this.#runtime();
      if (runtime === undefined) return [];
      return Array.from(runtime.upstreams.values(), (u) => u.status());
    };
    this.#history = opts.reloadHistory ?? reloadHistory;
    this.#live = new LiveStream({ build: () => this.#liveEvent(), logger: opts.logger });
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
    this.#generationSeen = this.#runtime()?.generation;
    this.#rejectedSeen = await rejectedReloads();
    this.#reloadWatch = setInterval(() => void this.#watchReloads(), 1000);
    this.#reloadWatch.unref();
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
    clearInterval(this.#reloadWatch);
    if (getUpstreamStatusSource() === this.#statusSource) setUpstreamStatusSource(undefined);
    // Streams end with a last event first, so dashboards see a clean end rather than a reset.
    await this.#live.close();
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
    const sessionRevoke = SESSION_REVOKE.exec(path);
    // Only the quota reset reads a body; other bodies are drained so keep-alive connections stay usable.
    if (quotaReset === null) req.resume();
    const query = new URLSearchParams(q === -1 ? '' : rawUrl.slice(q + 1));

    if (path.startsWith('/api/v1/') || path === '/api/v1') {
      // The event stream may be opened with a one-time ticket instead of the token (EventSource).
      const ticket = path === '/api/v1/live' ? query.get('ticket') : null;
      if (ticket !== null) {
        if (!this.#live.redeem(ticket)) {
          this.#deny(req, 'bad-ticket');
          sendError(res, 401, 'GH_ADMIN_UNAUTHORIZED', 'the live ticket is unknown, used or expired');
          return;
        }
      } else if (!this.#authorized(req, res)) return;
      if (path === '/api/v1/live') {
        if (!allow(method, res, 'GET')) return;
        if (!this.#live.attach(res)) sendError(res, 503, 'GH_ADMIN_BUSY', 'too many live streams are open');
        return;
      }
      if (path === '/api/v1/live/ticket') {
        if (!allow(method, res, 'POST')) return;
        const issued: LiveTicket = this.#live.issue();
        sendJson(res, 200, issued);
        return;
      }
      if (path === '/api/v1/live/snapshot') {
        if (!allow(method, res, 'GET, HEAD')) return;
        sendJson(res, 200, await this.#liveEvent());
        return;
      }
      if (path === '/api/v1/sessions') {
        if (!allow(method, res, 'GET, HEAD')) return;
        await this.#sessionList(res, query);
        return;
      }
      if (sessionRevoke !== null) {
        if (!allow(method, res, 'POST')) return;
        await this.#sessionRevoke(req, res, sessionRevoke[1]!);
        return;
      }
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
        await this.#reload(req, res);
        return;
      }
      if (path === '/api/v1/quotas') {
        if (!allow(method, res, 'GET, HEAD')) return;
        await this.#quotaUsage(res, query);
        return;
      }
      if (path === '/api/v1/audit/keys') {
        if (!allow(method, res, 'GET, HEAD')) return;
        const keys = this.#opts.auditKeys?.();
        if (keys === undefined || keys.keys.length === 0) {
          sendError(res, 404, 'GH_ADMIN_NOT_FOUND', 'no audit trail is configured');
          return;
        }
        sendJson(res, 200, keys);
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
      this.#deny(req, 'no-token-configured');
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
    this.#deny(req, header === undefined ? 'missing-token' : 'bad-token');
    res.setHeader('www-authenticate', 'Bearer realm="gatehouse-admin"');
    sendError(res, 401, 'GH_ADMIN_UNAUTHORIZED', 'a valid admin bearer token is required');
    return false;
  }

  async #reload(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let result: ReloadResult;
    this.#apiReloads++;
    try {
      result = await this.#opts.reload();
    } catch (err) {
      this.#opts.logger.error({ err }, 'reload through the admin API failed');
      const message = err instanceof Error ? err.message : 'reload failed';
      this.#recordReload({ result: 'rejected', generation: this.#generationSeen ?? 0, error: message });
      this.#audit(req, 'admin.reload-rejected', 'reload', { error: 'GH_RELOAD_FAILED' });
      sendJson(res, 500, { ok: false, error: 'GH_RELOAD_FAILED', message });
      return;
    } finally {
      this.#apiReloads--;
    }
    if (result.ok) {
      this.#generationSeen = result.generation;
      this.#recordReload({ result: 'success', generation: result.generation });
      this.#audit(req, 'admin.reload', 'reload', { generation: result.generation });
    } else {
      const first = result.problems
        .slice(0, 3)
        .map((p) => `${p.file}: ${p.path === '' ? '' : `${p.path}: `}${p.message}`);
      const more = result.problems.length > 3 ? ` (and ${result.problems.length - 3} more)` : '';
      this.#recordReload({
        result: 'rejected',
        generation: this.#generationSeen ?? 0,
        error: first.join('; ') + more,
      });
      this.#audit(req, 'admin.reload-rejected', 'reload', { problems: result.problems.length });
    }
    // This reload's count is accounted for: the watch must not record it a second time.
    this.#rejectedSeen = await rejectedReloads();
    sendJson(res, result.ok ? 200 : 422, result);
  }

  #recordReload(
    r: { result: ReloadRecord['result']; generation: number; error?: string },
    trigger = 'admin-api',
  ) {
    const record: ReloadRecord = {
      at: new Date().toISOString(),
      result: r.result,
      generation: r.generation,
      trigger,
    };
    if (r.error !== undefined) record.error = r.error;
    this.#history.record(record);
  }

  /**
   * Notices reloads that did not come through the admin API (a watched file, SIGHUP): a new generation
   * is a success, a step of `gatehouse_config_reloads_total{result="rejected"}` a rejection (its
   * problems are in the log).
   */
  async #watchReloads(): Promise<void> {
    if (this.#apiReloads > 0) return;
    const generation = this.#runtime()?.generation;
    if (generation !== undefined) this.#noteGeneration(generation);
    const rejected = await rejectedReloads();
    if (this.#apiReloads > 0) return;
    if (this.#rejectedSeen !== undefined && rejected > this.#rejectedSeen) {
      const n = rejected - this.#rejectedSeen;
      this.#recordReload(
        {
          result: 'rejected',
          generation: this.#generationSeen ?? 0,
          error: `${n === 1 ? 'a reload was' : `${n} reloads were`} rejected; the problems are in the log`,
        },
        'file-or-signal',
      );
    }
    this.#rejectedSeen = rejected;
  }

  #noteGeneration(generation: number): void {
    if (this.#apiReloads > 0) return;
    if (this.#generationSeen !== undefined && generation > this.#generationSeen)
      this.#recordReload({ result: 'success', generation }, 'file-or-signal');
    this.#generationSeen = generation;
  }

  /** Hands a record to the audit option; a failing audit sink is logged, never the request's failure. */
  #audit(req: IncomingMessage, code: string, action: string, fields: Record<string, unknown> = {}): void {
    const audit = this.#opts.audit;
    if (audit === undefined) return;
    try {
      audit({
        who: this.#tokenDigest === undefined ? 'loopback' : 'admin-token',
        ...fields,
        event: 'admin',
        code,
        action,
        client: req.socket.remoteAddress ?? 'unknown',
      });
    } catch (err) {
      this.#opts.logger.error({ err, code }, 'admin audit record failed');
    }
  }

  /** Audits a refused `/api/v1` request (`why`: missing-token, bad-token, bad-ticket, ...). */
  #deny(req: IncomingMessage, why: string): void {
    const rawUrl = req.url ?? '/';
    const q = rawUrl.indexOf('?');
    // The path only: a query may hold a ticket, which must not reach the trail.
    const path = (q === -1 ? rawUrl : rawUrl.slice(0, q)).slice(0, 200);
    this.#audit(req, 'admin.denied', `${req.method ?? 'GET'} ${path}`, { reason: why, who: 'anonymous' });
  }

  /** The payload of one live event: traffic, upstreams with ejections, reloads and quota usage. */
  async #liveEvent(): Promise<LiveEvent> {
    const [traffic, status] = await Promise.all([
      this.#opts.live ? this.#opts.live() : liveStats.snapshot(),
      this.#status().catch((err: unknown) => {
        this.#opts.logger.warn({ err }, 'live dashboard: status unavailable');
        return undefined;
      }),
    ]);
    if (status !== undefined) this.#noteGeneration(status.generation);
    const seen = new Set<string>();
    const upstreams = (status?.upstreams ?? []).map((u) => ({
      ...u,
      servers: u.servers.map((sv) => {
        const key = `${u.name}\0${sv.id}`;
        seen.add(key);
        let h = this.#health.get(key);
        if (h === undefined) {
          h = { health: sv.health, ejections: sv.health === 'ejected' ? 1 : 0 };
          this.#health.set(key, h);
        } else if (sv.health !== h.health) {
          if (sv.health === 'ejected') h.ejections++;
          h.health = sv.health;
        }
        return { ...sv, ejections: h.ejections };
      }),
    }));
    // Servers that a reload removed are forgotten, so the map stays as large as the configuration.
    for (const key of this.#health.keys()) if (!seen.has(key)) this.#health.delete(key);
    const event: LiveEvent = {
      at: new Date().toISOString(),
      generation: status?.generation,
      traffic,
      upstreams,
      reloads: this.#history.list(),
      ...(await this.#topQuotas(traffic)),
    };
    if (status?.workers !== undefined) event.workers = status.workers;
    return event;
  }

  /**
   * Quota usage of the busiest identities, read from the state store at most every few seconds (each
   * read is a store round trip per quota and identity).
   */
  async #topQuotas(traffic: LiveSnapshot): Promise<Pick<LiveEvent, 'quotas' | 'quotaError'>> {
    const identities = traffic.identities.slice(0, TOP_QUOTA_IDENTITIES).map((i) => i.identity);
    const key = identities.join('\0');
    const now = Date.now();
    const cached = this.#quotaCache;
    if (cached !== undefined && cached.key === key && now - cached.at < QUOTA_REFRESH_MS) return cached.value;
    let value: Pick<LiveEvent, 'quotas' | 'quotaError'>;
    const limits = this.#opts.limits ? this.#opts.limits() : this.#runtime()?.limits;
    if (limits === undefined || limits.set.quotas.size === 0 || identities.length === 0) {
      value = { quotas: [] };
    } else {
      try {
        const quotas = [];
        for (const identity of identities) quotas.push({ identity, quotas: await limits.usage(identity) });
        value = { quotas };
      } catch (err) {
        if (!(err instanceof StateStoreError)) throw err;
        value = { quotas: [], quotaError: `the state store cannot answer: ${err.message}` };
      }
    }
    this.#quotaCache = { at: now, key, value };
    return value;
  }

  #sessions(res: ServerResponse): SessionDirectory | null | undefined {
    if (this.#opts.sessions) return this.#opts.sessions() ?? null;
    const runtime = this.#runtime();
    if (runtime === undefined) {
      sendError(res, 503, 'GH_NOT_READY', 'no configuration loaded yet');
      return undefined;
    }
    return runtime.identity.login?.sessions ?? null;
  }

  async #sessionList(res: ServerResponse, query: URLSearchParams): Promise<void> {
    const raw = query.get('limit');
    const limit = raw === null ? 500 : Number(raw);
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) {
      sendError(res, 400, 'GH_ADMIN_BAD_REQUEST', '?limit= must be a whole number from 1 to 10000');
      return;
    }
    const sessions = this.#sessions(res);
    if (sessions === undefined) return;
    if (sessions === null) {
      sendJson(res, 200, { enabled: false, sessions: [], total: 0 });
      return;
    }
    try {
      const list = await sessions.list(limit);
      sendJson(res, 200, { enabled: true, ...list });
    } catch (err) {
      this.#storeFailed(res, err);
    }
  }

  async #sessionRevoke(req: IncomingMessage, res: ServerResponse, handle: string): Promise<void> {
    if (!SESSION_HANDLE.test(handle)) {
      sendError(res, 400, 'GH_ADMIN_BAD_REQUEST', 'a session id is 22 characters of A-Z, a-z, 0-9, - and _');
      return;
    }
    const sessions = this.#sessions(res);
    if (sessions === undefined) return;
    if (sessions === null) {
      sendError(res, 404, 'GH_ADMIN_NOT_FOUND', 'no sign-in is configured, so there are no sessions');
      return;
    }
    try {
      const revoked = await sessions.revokeHandle(handle);
      if (revoked === undefined) {
        sendError(res, 404, 'GH_ADMIN_NOT_FOUND', `no live session ${handle}`);
        return;
      }
      this.#opts.logger.info(
        { session: handle, subject: revoked.subject },
        'session revoked through the admin API',
      );
      this.#audit(req, 'admin.session-revoked', 'session-revoke', {
        session: handle,
        subject: revoked.subject,
        provider: revoked.provider,
        email: revoked.email,
      });
      sendJson(res, 200, { revoked: revoked });
    } catch (err) {
      this.#storeFailed(res, err);
    }
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
      this.#audit(req, 'admin.quota-reset', 'quota-reset', { quota: name, key, counters: reset });
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
const SESSION_REVOKE = /^\/api\/v1\/sessions\/([^/]*)\/revoke$/;
const SESSION_HANDLE = /^[A-Za-z0-9_-]{22}$/;
/** Identities whose quota usage the live feed shows, and how often it is read again. */
const TOP_QUOTA_IDENTITIES = 5;
const QUOTA_REFRESH_MS = 5_000;

/** `gatehouse_config_reloads_total{result="rejected"}` of this process. */
async function rejectedReloads(): Promise<number> {
  const metric = await reloadsTotal.get();
  let n = 0;
  for (const v of metric.values) if (v.labels.result === 'rejected') n += v.value;
  return n;
}
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

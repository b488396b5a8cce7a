/** Test helpers for the data plane: real backends and a gateway built from a config object, all on port 0. */
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import type { TestContext } from 'node:test';
import { ConfigSchema } from '../../src/config/schema.js';
import { SecretResolver } from '../../src/config/secrets.js';
import { compileRoutes } from '../../src/core/routes.js';
import { buildIdentity } from '../../src/identity/index.js';
import { compileLimits } from '../../src/limits/compile.js';
import { Limiter } from '../../src/limits/stage.js';
import { type AccessEntry, createLogger, type Logger } from '../../src/observe/log.js';
import { compilePolicies } from '../../src/policy/compile.js';
import { RESERVED_ENDPOINTS } from '../../src/process/endpoints.js';
import { buildListenerTls, ListenerSet } from '../../src/proxy/listeners.js';
import type { ListenerTlsRuntime, Runtime } from '../../src/runtime.js';
import { createStateStore } from '../../src/state/index.js';
import { createUpstream } from '../../src/upstream/index.js';
import type { Upstream } from '../../src/upstream/types.js';

/** A logger that keeps its lines in memory. */
export function memoryLogger(): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const line of String(chunk).split('\n')) if (line) lines.push(JSON.parse(line));
      cb();
    },
  });
  return { logger: createLogger('warn', sink), lines };
}

/** What a backend saw of one request. */
export interface Seen {
  backend: string;
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  bodyLength: number;
  sha256: string;
}

/** A real HTTP backend on 127.0.0.1 port 0. */
export interface TestBackend {
  readonly name: string;
  readonly url: string;
  readonly port: number;
  readonly server: http.Server;
  readonly seen: Seen[];
  close(): Promise<void>;
}

/** A request handler; the default echoes what was received as JSON. */
export type BackendHandler = (req: http.IncomingMessage, res: http.ServerResponse, seen: Seen) => void;

/** Answers with JSON describing the request, after reading the whole body. */
export const echo: BackendHandler = (_req, res, seen) => {
  const body = JSON.stringify(seen);
  res.writeHead(200, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'x-backend': seen.backend,
  });
  res.end(body);
};

/** Starts a backend; `handler` runs once the request body was read (and hashed). */
export async function startBackend(
  t: TestContext,
  name: string,
  handler: BackendHandler = echo,
): Promise<TestBackend> {
  const seen: Seen[] = [];
  const server = http.createServer((req, res) => {
    const hash = createHash('sha256');
    let length = 0;
    req.on('data', (chunk: Buffer) => {
      length += chunk.length;
      hash.update(chunk);
    });
    req.on('error', () => {});
    req.on('end', () => {
      const s: Seen = {
        backend: name,
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        bodyLength: length,
        sha256: hash.digest('hex'),
      };
      seen.push(s);
      handler(req, res, s);
    });
  });
  server.on('upgrade', (_req, socket) => socket.destroy());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  let closed = false;
  const backend: TestBackend = {
    name,
    port,
    url: `http://127.0.0.1:${port}`,
    server,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        if (closed) return resolve();
        closed = true;
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
  t.after(() => backend.close());
  return backend;
}

/**
 * Builds a Runtime from a config object, the way the gateway does (without file loading): routes,
 * policies, identity (authenticators, login, assertion signer) and upstreams. The state store of
 * `previous` is kept when `state.store` did not change, as the gateway does; close new stores yourself.
 */
export async function buildTestRuntime(
  raw: unknown,
  logger: Logger,
  opts: { baseDir?: string; generation?: number; previous?: Runtime; env?: NodeJS.ProcessEnv } = {},
): Promise<Runtime> {
  const config = ConfigSchema.parse(raw);
  const secrets = new SecretResolver(opts.baseDir ?? process.cwd(), opts.env);
  const previous = opts.previous;
  const store =
    previous !== undefined && previous.config.state.store === config.state.store
      ? previous.store
      : createStateStore(config.state.store, logger);
  const policies = compilePolicies(config);
  const identity = await buildIdentity(config, {
    resolveSecret: (ref) => secrets.resolveSecret(ref),
    expand: (text) => secrets.expand(text),
    store,
    logger,
    previous: previous?.identity,
  });
  const upstreams = new Map<string, Upstream>();
  for (const [name, def] of Object.entries(config.upstreams)) {
    const up = await createUpstream(name, def, secrets, logger);
    up.start();
    upstreams.set(name, up);
  }
  const tls = new Map<string, ListenerTlsRuntime>();
  for (const l of config.listeners) {
    if (l.tls)
      tls.set(
        l.name,
        buildListenerTls(l, (ref) => secrets.resolveSecret(ref)),
      );
  }
  return {
    generation: opts.generation ?? 1,
    file: '(test)',
    config,
    routes: compileRoutes(config),
    policies,
    identity,
    store,
    limits: new Limiter(compileLimits(config), store, logger),
    upstreams,
    tls,
    watchedFiles: [],
    inFlight: { count: 0 },
  };
}

/** A running set of listeners over a swappable runtime. */
export interface TestGateway {
  runtime: Runtime;
  readonly listeners: ListenerSet;
  readonly access: AccessEntry[];
  readonly logLines: Array<Record<string, unknown>>;
  readonly logger: Logger;
  /** Origin of a listener, e.g. `http://127.0.0.1:41234`. */
  url(listener?: string): string;
  port(listener?: string): number;
  /** Swaps in a runtime built from another config (the old upstreams stay open until close). */
  reload(raw: unknown): Promise<Runtime>;
  close(): Promise<void>;
}

/** Starts listeners for a config object; everything is closed after the test. */
export async function startGateway(
  t: TestContext,
  raw: unknown,
  opts: { baseDir?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<TestGateway> {
  const { logger, lines } = memoryLogger();
  const access: AccessEntry[] = [];
  const runtimes: Runtime[] = [];
  const first = await buildTestRuntime(raw, logger, opts);
  runtimes.push(first);
  const gw: TestGateway = {
    runtime: first,
    listeners: new ListenerSet({
      getRuntime: () => gw.runtime,
      logger,
      accessLog: (e) => access.push(e),
      endpoints: RESERVED_ENDPOINTS,
    }),
    access,
    logLines: lines,
    logger,
    url(listener = 'web') {
      const a = gw.listeners.address(listener);
      if (!a) throw new Error(`no listener ${listener}`);
      const scheme = gw.runtime.config.listeners.find((l) => l.name === listener)?.tls ? 'https' : 'http';
      return `${scheme}://127.0.0.1:${a.port}`;
    },
    port(listener = 'web') {
      return gw.listeners.address(listener)!.port;
    },
    async reload(next) {
      const rt = await buildTestRuntime(next, logger, {
        ...opts,
        generation: gw.runtime.generation + 1,
        previous: gw.runtime,
      });
      runtimes.push(rt);
      gw.runtime = rt;
      await gw.listeners.apply(rt);
      return rt;
    },
    async close() {
      await gw.listeners.close(500);
      for (const rt of runtimes) for (const up of rt.upstreams.values()) await up.close();
      for (const store of new Set(runtimes.map((rt) => rt.store))) await store.close();
    },
  };
  await gw.listeners.apply(first);
  t.after(() => gw.close());
  return gw;
}

/**
 * A minimal config: one plain listener `web` and the given upstreams and routes. Every route that is
 * not `public: true` requires an identity; data-plane tests are not about identity, so a route that
 * sets neither `public` nor `policy` is made public here.
 */
export function config(
  upstreams: Record<string, unknown>,
  routes: unknown[],
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    listeners: [{ name: 'web', bind: '127.0.0.1:0' }],
    upstreams,
    routes: routes.map((r) => {
      const route = r as Record<string, unknown>;
      return route.public === undefined && route.policy === undefined ? { ...route, public: true } : route;
    }),
    logging: { level: 'warn' },
    ...extra,
  };
}

/** Sends one HTTP/1.1 request with node:http (no fetch normalization of the path). */
export function request(
  url: string,
  opts: {
    method?: string;
    path?: string;
    headers?: http.OutgoingHttpHeaders | string[];
    body?: Buffer | string;
    agent?: http.Agent | false;
  } = {},
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = http.request({
      host: u.hostname,
      port: u.port,
      method: opts.method ?? 'GET',
      path: opts.path ?? '/',
      headers: opts.headers,
      agent: opts.agent ?? false,
      signal: AbortSignal.timeout(20_000),
    });
    req.on('error', reject);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
      );
    });
    req.end(opts.body);
  });
}

/** Parses the echo backend's JSON answer. */
export function seenOf(body: Buffer): Seen {
  return JSON.parse(body.toString()) as Seen;
}

/** Polls until `cond` holds; fails after `ms` (a bound, not a timing assertion). */
export async function waitFor(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

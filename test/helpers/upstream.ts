/** Test helpers for the upstream pools: real backends on 127.0.0.1 port 0, configs, a secret context. */
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { ConfigSchema, type UpstreamConfig } from '../../src/config/schema.js';
import { createLogger, type Logger } from '../../src/observe/log.js';
import type { Lease, Outcome, Upstream, UpstreamBuildContext } from '../../src/upstream/types.js';

/** A plain node:http backend that answers with its name; its status can be switched. */
export interface Backend {
  readonly name: string;
  readonly port: number;
  readonly url: string;
  /** Requests received, health checks excluded. */
  hits: number;
  /** Health-check requests received. */
  checks: number;
  /** Statuses sent in answer to health checks, in order. */
  readonly checkStatuses: number[];
  /** Status for every response (health checks included). */
  status: number;
  /** Last request headers seen (health checks excluded). */
  lastHeaders: http.IncomingHttpHeaders | undefined;
  close(): Promise<void>;
}

/** Starts a backend; `host` defaults to 127.0.0.1, `port` to a free one. */
export async function startBackend(name: string, host = '127.0.0.1', port = 0): Promise<Backend> {
  const state = {
    hits: 0,
    checks: 0,
    status: 200,
    lastHeaders: undefined as http.IncomingHttpHeaders | undefined,
  };
  const checkStatuses: number[] = [];
  const server = http.createServer((req, res) => {
    if (req.url === '/health') state.checks++;
    else {
      state.hits++;
      state.lastHeaders = req.headers;
    }
    req.resume();
    req.on('end', () => {
      if (req.url === '/health') checkStatuses.push(state.status);
      res.writeHead(state.status, { 'content-type': 'text/plain' });
      res.end(name);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  const bound = (server.address() as AddressInfo).port;
  const backend: Backend = {
    name,
    port: bound,
    url: `http://${host.includes(':') ? `[${host}]` : host}:${bound}`,
    checkStatuses,
    get hits() {
      return state.hits;
    },
    set hits(v) {
      state.hits = v;
    },
    get checks() {
      return state.checks;
    },
    set checks(v) {
      state.checks = v;
    },
    get status() {
      return state.status;
    },
    set status(v) {
      state.status = v;
    },
    get lastHeaders() {
      return state.lastHeaders;
    },
    set lastHeaders(v) {
      state.lastHeaders = v;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
  return backend;
}

/** A validated upstream config with defaults filled in, from YAML-like input (durations as strings). */
export function upstreamConfig(raw: Record<string, unknown>): UpstreamConfig {
  const parsed = ConfigSchema.parse({
    listeners: [{ name: 'l', bind: '127.0.0.1:0' }],
    upstreams: { u: raw },
  });
  return parsed.upstreams.u!;
}

/** Expands `${env:X}`/`${file:X}` and resolves whole `env:`/`file:` references. */
export function testContext(env: Record<string, string | undefined> = process.env): UpstreamBuildContext {
  const read = (kind: string, name: string): string => {
    if (kind === 'env') {
      const v = env[name];
      if (v === undefined) throw new Error(`environment variable ${name} is not set`);
      return v;
    }
    return readFileSync(name, 'utf8');
  };
  return {
    expand: (text) =>
      text.replace(/\$\{(env|file):([^}]+)\}/g, (_a, kind: string, name: string) => read(kind, name)),
    resolveSecret: (ref) => {
      const m = /^(env|file):(.+)$/.exec(ref);
      return m ? read(m[1]!, m[2]!) : ref;
    },
  };
}

/** A logger that keeps its JSON lines in `lines` for assertions. */
export function memoryLogger(): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line));
      cb();
    },
  });
  return { logger: createLogger('debug', sink), lines };
}

/** Sends a GET through the lease's dispatcher and releases it with the outcome. */
export async function send(
  lease: Lease,
  path = '/',
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }> {
  let outcome: Outcome = 'connect-error';
  try {
    const res = await lease.server.dispatcher.request({
      origin: lease.server.origin,
      path,
      method: 'GET',
      headers: { host: lease.server.hostHeader, ...headers },
      signal: AbortSignal.timeout(5000),
    });
    const body = await res.body.text();
    outcome = res.statusCode >= 502 && res.statusCode <= 504 ? 'http-5xx' : 'success';
    return { status: res.statusCode, body };
  } finally {
    lease.release(outcome);
  }
}

/** Acquires (waiting if queued) and sends one request. */
export async function fetchVia(up: Upstream, clientIp = '127.0.0.1', headers: Record<string, string> = {}) {
  const lease = await up.acquire({ clientIp, headers });
  const res = await send(lease, '/', headers);
  return { ...res, lease };
}

/** Polls `cond` every 10 ms until it holds; fails after `ms` (never hangs). */
export async function waitFor(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Sample backends for the demo and for tests: `echo` answers with what it received (so forwarded
 * headers can be inspected), `jobs` streams server-sent events for a long-running "sync job".
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** A running sample backend. */
export interface Backend {
  /** Origin such as `http://127.0.0.1:40123` (no trailing slash). */
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

/** Options shared by the sample backends. */
export interface BackendOptions {
  /** Default 0 (any free port). */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Reported in responses so balancing can be observed; default `echo` / `jobs`. */
  name?: string;
}

/** Options of the jobs backend. */
export interface JobsBackendOptions extends BackendOptions {
  /** Time between progress events in ms (default 500). */
  intervalMs?: number;
  /** Length of one job in ms (default 30 000). */
  durationMs?: number;
}

/** What the echo backend answers (JSON). */
export interface EchoReply {
  server: string;
  method: string;
  url: string;
  httpVersion: string;
  headers: Record<string, string | string[] | undefined>;
  bodyLength: number;
}

async function listen(server: Server, opts: BackendOptions): Promise<Backend> {
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const urlHost = host.includes(':') ? `[${host}]` : host;
  return {
    url: `http://${urlHost}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function health(req: IncomingMessage, res: ServerResponse): boolean {
  if (req.url !== '/health') return false;
  req.resume();
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end('ok\n');
  return true;
}

/** Starts the echo backend: every request gets a JSON description of what arrived. */
export function startEchoBackend(opts: BackendOptions = {}): Promise<Backend> {
  const name = opts.name ?? 'echo';
  const server = createServer((req, res) => {
    if (health(req, res)) return;
    let bodyLength = 0;
    req.on('data', (chunk: Buffer) => {
      bodyLength += chunk.length;
    });
    req.on('error', () => res.destroy());
    req.on('end', () => {
      const reply: EchoReply = {
        server: name,
        method: req.method ?? '',
        url: req.url ?? '',
        httpVersion: req.httpVersion,
        headers: req.headers,
        bodyLength,
      };
      const body = `${JSON.stringify(reply, null, 2)}\n`;
      res.writeHead(200, {
        'content-type': 'application/json; charset=utf-8',
        'content-length': Buffer.byteLength(body),
        'x-served-by': name,
      });
      res.end(body);
    });
  });
  return listen(server, opts);
}

/**
 * Starts the jobs backend: any GET starts a job and streams `progress` events, then one `done` event,
 * then ends the response. A client that disconnects stops its job.
 */
export function startJobsBackend(opts: JobsBackendOptions = {}): Promise<Backend> {
  const intervalMs = Math.max(1, opts.intervalMs ?? 500);
  const durationMs = Math.max(intervalMs, opts.durationMs ?? 30_000);
  const steps = Math.max(1, Math.round(durationMs / intervalMs));
  const name = opts.name ?? 'jobs';
  const server = createServer((req, res) => {
    if (health(req, res)) return;
    req.resume();
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET', 'content-type': 'text/plain' });
      res.end('use GET to start a job\n');
      return;
    }
    const job = randomUUID();
    const started = Date.now();
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      'x-served-by': name,
    });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    res.write(`retry: 5000\nevent: started\ndata: ${JSON.stringify({ job, steps, server: name })}\n\n`);
    let step = 0;
    const timer = setInterval(() => {
      step += 1;
      const percent = Math.round((step / steps) * 100);
      res.write(`id: ${step}\nevent: progress\ndata: ${JSON.stringify({ job, step, percent })}\n\n`);
      if (step >= steps) {
        clearInterval(timer);
        const elapsedMs = Date.now() - started;
        res.end(`event: done\ndata: ${JSON.stringify({ job, status: 'succeeded', elapsedMs })}\n\n`);
      }
    }, intervalMs);
    res.on('close', () => clearInterval(timer));
  });
  return listen(server, opts);
}

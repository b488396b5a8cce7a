/**
 * Helpers for the fault tests: a backend whose answers can be checked (echoed sizes and digests,
 * streamed bodies, requests held until released) and a load generator written on node:http that keeps
 * several lanes of traffic going (keep-alive and new connections, small, uploaded and streamed bodies)
 * and counts every outcome by kind, each request bounded by a deadline so that a hang is counted too.
 */
import { createHash } from 'node:crypto';
import {
  Agent,
  createServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type Server,
  type ServerResponse,
} from 'node:http';
import { request as httpsRequest, Agent as TlsAgent } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';

/** A node:http backend on 127.0.0.1:0 for the fault tests. */
export interface TrafficBackend {
  name: string;
  url: string;
  port: number;
  /** Requests answered (completely written). */
  served: number;
  /** `/held` requests waiting for `release()`. */
  readonly held: number;
  /** Answers every `/held` request waiting now and every one that arrives later. */
  release(): void;
  close(): Promise<void>;
}

/**
 * Starts a backend that answers:
 * - `GET /ping`: `{ backend }`;
 * - `POST /echo`: `{ backend, bytes, sha256 }` of the body it read;
 * - `GET /stream?chunks=N&ms=M`: N chunks of 1 KiB, M ms apart (a body without Content-Length);
 * - `GET /held?id=X`: `{ backend, id }`, but only once `release()` was called.
 */
export async function startTrafficBackend(name: string): Promise<TrafficBackend> {
  const waiting = new Set<() => void>();
  const timers = new Set<NodeJS.Timeout>();
  let released = false;
  const sockets = new Set<Socket>();
  const json = (res: ServerResponse, value: unknown): void => {
    const body = JSON.stringify(value);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body, () => {
      backend.served++;
    });
  };
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    switch (url.pathname) {
      case '/echo': {
        const hash = createHash('sha256');
        let bytes = 0;
        req.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          hash.update(chunk);
        });
        req.on('end', () => json(res, { backend: name, bytes, sha256: hash.digest('hex') }));
        return;
      }
      case '/stream': {
        req.resume();
        const chunks = Number(url.searchParams.get('chunks') ?? 4);
        const ms = Number(url.searchParams.get('ms') ?? 10);
        const chunk = Buffer.alloc(1024, name.charCodeAt(0));
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        let sent = 0;
        const next = (): void => {
          if (res.destroyed) return;
          if (sent === chunks) {
            res.end(() => {
              backend.served++;
            });
            return;
          }
          sent++;
          res.write(chunk);
          const timer = setTimeout(() => {
            timers.delete(timer);
            next();
          }, ms);
          timers.add(timer);
        };
        next();
        return;
      }
      case '/held': {
        req.resume();
        const answer = (): void => json(res, { backend: name, id: url.searchParams.get('id') });
        if (released) answer();
        else {
          waiting.add(answer);
          res.on('close', () => waiting.delete(answer));
        }
        return;
      }
      default:
        req.resume();
        json(res, { backend: name });
    }
  });
  server.keepAliveTimeout = 60_000;
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const backend: TrafficBackend = {
    name,
    port,
    url: `http://127.0.0.1:${port}`,
    served: 0,
    get held() {
      return waiting.size;
    },
    release() {
      released = true;
      for (const answer of [...waiting]) answer();
      waiting.clear();
    },
    async close() {
      for (const timer of timers) clearTimeout(timer);
      waiting.clear();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      });
    },
  };
  return backend;
}

/** Outcome of one request: `ok`, or the kind of failure (`status:503`, `error:ECONNRESET`, `timeout`, `body`). */
export type Outcome = string;

/** What a request returned. */
export interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** One request of a load lane; `check` says whether the answer is right (default: status 200). */
export interface LaneRequest {
  method?: string;
  path: string;
  /** Request body, written in this many pieces one event-loop turn apart (a streamed upload). */
  body?: { data: Buffer; pieces: number };
  check?(answer: Answer): boolean;
}

/**
 * Sends one request and classifies its outcome. `agent: false` opens a new connection (closed after
 * the answer); `tls` speaks HTTPS (any certificate accepted). Never rejects: a request that neither
 * completes nor fails within `deadlineMs` is destroyed and counted as `timeout`.
 */
export function exchange(
  port: number,
  agent: Agent | false,
  spec: LaneRequest,
  deadlineMs: number,
  tls = false,
): Promise<{ outcome: Outcome; answer?: Answer; detail?: string }> {
  return new Promise((resolve) => {
    let settled = false;
    const finish = (outcome: Outcome, answer?: Answer, detail?: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ outcome, answer, detail });
    };
    const send = tls ? httpsRequest : httpRequest;
    const req = send(
      {
        host: '127.0.0.1',
        port,
        method: spec.method ?? 'GET',
        path: spec.path,
        agent,
        headers: agent === false ? { connection: 'close' } : {},
        ...(tls ? { rejectUnauthorized: false, servername: 'localhost' } : {}),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', (err: NodeJS.ErrnoException) => finish(`error:${err.code ?? err.message}`));
        res.on('aborted', () => finish('error:aborted'));
        res.on('end', () => {
          const answer = { status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) };
          if (answer.status !== 200) finish(`status:${answer.status}`, answer, answer.body.toString('utf8'));
          else if (spec.check && !spec.check(answer)) finish('body', answer, answer.body.toString('utf8'));
          else finish('ok', answer);
        });
      },
    );
    const timer = setTimeout(() => {
      finish('timeout', undefined, `${spec.method ?? 'GET'} ${spec.path}`);
      req.destroy();
    }, deadlineMs);
    req.on('error', (err: NodeJS.ErrnoException) =>
      finish(`error:${err.code ?? err.message}`, undefined, err.message),
    );
    const body = spec.body;
    if (body === undefined) {
      req.end();
      return;
    }
    req.setHeader('content-length', body.data.length);
    const size = Math.ceil(body.data.length / body.pieces);
    let offset = 0;
    const writeNext = (): void => {
      if (req.destroyed) return;
      const piece = body.data.subarray(offset, offset + size);
      offset += piece.length;
      if (offset >= body.data.length) req.end(piece);
      else {
        req.write(piece);
        setImmediate(writeNext);
      }
    };
    writeNext();
  });
}

/** Counts of outcomes per lane kind. */
export type Tally = Record<string, Record<Outcome, number>>;

/** One kind of traffic: `lanes` loops, each sending `next()` one after another. */
export interface LaneSpec {
  kind: string;
  lanes: number;
  /** A new connection per request (`Connection: close`) instead of one keep-alive connection per lane. */
  fresh?: boolean;
  /** Pause between two requests of a lane (default none: the next one is sent at once). */
  pauseMs?: number;
  /** Another port than the load's (e.g. a second listener), and whether it speaks HTTPS. */
  port?: number;
  tls?: boolean;
  next(): LaneRequest;
}

/**
 * Load made of lanes that each send one request after another until `stop()`; every outcome is
 * counted by kind, and a few failures of each kind are kept with their details.
 */
export class Load {
  readonly tally: Tally = {};
  readonly samples: Array<{ kind: string; outcome: Outcome; detail?: string | undefined }> = [];
  readonly #agents: Agent[] = [];
  readonly #loops: Array<Promise<void>> = [];
  #stopped = false;

  constructor(
    readonly port: number,
    specs: readonly LaneSpec[],
    readonly deadlineMs = 15_000,
  ) {
    for (const spec of specs) {
      this.tally[spec.kind] = {};
      for (let i = 0; i < spec.lanes; i++) {
        const options = { keepAlive: true, maxSockets: 1, rejectUnauthorized: false };
        const agent = spec.fresh ? false : spec.tls ? new TlsAgent(options) : new Agent(options);
        if (agent) this.#agents.push(agent);
        this.#loops.push(this.#run(spec, agent));
      }
    }
  }

  async #run(spec: LaneSpec, agent: Agent | false): Promise<void> {
    while (!this.#stopped) {
      const port = spec.port ?? this.port;
      const { outcome, detail } = await exchange(port, agent, spec.next(), this.deadlineMs, spec.tls);
      const counts = this.tally[spec.kind]!;
      counts[outcome] = (counts[outcome] ?? 0) + 1;
      if (outcome !== 'ok' && this.samples.filter((s) => s.outcome === outcome).length < 5)
        this.samples.push({ kind: spec.kind, outcome, detail });
      if (spec.pauseMs !== undefined) await new Promise((resolve) => setTimeout(resolve, spec.pauseMs));
    }
  }

  /** Requests answered `ok` so far, over every kind. */
  get ok(): number {
    return Object.values(this.tally).reduce((n, counts) => n + (counts.ok ?? 0), 0);
  }

  /** Every outcome but `ok`, summed over the kinds (`{ 'error:ECONNRESET': 3 }`). */
  failures(): Record<Outcome, number> {
    const out: Record<Outcome, number> = {};
    for (const counts of Object.values(this.tally))
      for (const [outcome, n] of Object.entries(counts))
        if (outcome !== 'ok') out[outcome] = (out[outcome] ?? 0) + n;
    return out;
  }

  /** Stops every lane after its current request and closes the keep-alive connections. */
  async stop(): Promise<Tally> {
    this.#stopped = true;
    await Promise.all(this.#loops);
    for (const agent of this.#agents) agent.destroy();
    return this.tally;
  }

  /** The counts and the kept failures, for an assertion message. */
  report(): string {
    return JSON.stringify({ tally: this.tally, samples: this.samples });
  }
}

/** The digest `/echo` answers for a body. */
export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * A lane mix of four kinds: keep-alive GET, new-connection GET, streamed upload, streamed answer; with
 * `tlsPort`, also keep-alive and new-connection GETs over HTTPS to that port.
 */
export function mixedTraffic(opts: {
  backends: readonly string[];
  lanes?: number;
  tlsPort?: number;
}): LaneSpec[] {
  const lanes = opts.lanes ?? 2;
  const names = new Set(opts.backends);
  const upload = Buffer.alloc(48 * 1024);
  for (let i = 0; i < upload.length; i++) upload[i] = (i * 31) & 0xff;
  const digest = sha256(upload);
  const fromBackend = (a: Answer): boolean => {
    try {
      return names.has((JSON.parse(a.body.toString('utf8')) as { backend: string }).backend);
    } catch {
      return false;
    }
  };
  const tls: LaneSpec[] =
    opts.tlsPort === undefined
      ? []
      : [
          {
            kind: 'tls-keepalive',
            lanes: 1,
            port: opts.tlsPort,
            tls: true,
            next: () => ({ path: '/ping', check: fromBackend }),
          },
          {
            kind: 'tls-fresh',
            lanes: 1,
            port: opts.tlsPort,
            tls: true,
            fresh: true,
            next: () => ({ path: '/ping', check: fromBackend }),
          },
        ];
  return [
    ...tls,
    { kind: 'keepalive', lanes, next: () => ({ path: '/ping', check: fromBackend }) },
    { kind: 'fresh', lanes, fresh: true, next: () => ({ path: '/ping', check: fromBackend }) },
    {
      kind: 'upload',
      lanes,
      next: () => ({
        method: 'POST',
        path: '/echo',
        body: { data: upload, pieces: 4 },
        check: (a) => {
          if (!fromBackend(a)) return false;
          const r = JSON.parse(a.body.toString('utf8')) as { bytes: number; sha256: string };
          return r.bytes === upload.length && r.sha256 === digest;
        },
      }),
    },
    {
      kind: 'stream',
      lanes,
      next: () => ({ path: '/stream?chunks=8&ms=5', check: (a) => a.body.length === 8 * 1024 }),
    },
  ];
}

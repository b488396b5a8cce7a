/**
 * Helpers for the multi-process tests: a recording backend, a `gatehouse start` child process whose
 * JSON log lines are collected (primary and workers share its stdout), requests over dedicated
 * keep-alive connections, and readers for the admin listener.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Agent, createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { StatusReport } from '../../src/admin/server.js';
import { ROOT, waitFor } from './gateway.js';

/** What a recording backend saw of one request. */
export interface Seen {
  path: string;
  forwardedFor: string | undefined;
  forwardedProto: string | undefined;
  forwardedHost: string | undefined;
  requestId: string | undefined;
}

/** A node:http backend on 127.0.0.1:0 that records forwarded headers; `/slow?ms=N` answers late. */
export interface RecordingBackend {
  name: string;
  url: string;
  seen: Seen[];
  close(): Promise<void>;
}

/** Starts a recording backend that answers `{ backend, path }`. */
export async function startRecordingBackend(name: string): Promise<RecordingBackend> {
  const seen: Seen[] = [];
  const timers = new Set<NodeJS.Timeout>();
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const one = (h: string | string[] | undefined): string | undefined => (Array.isArray(h) ? h[0] : h);
    seen.push({
      path: url.pathname,
      forwardedFor: one(req.headers['x-forwarded-for']),
      forwardedProto: one(req.headers['x-forwarded-proto']),
      forwardedHost: one(req.headers['x-forwarded-host']),
      requestId: one(req.headers['x-request-id']),
    });
    req.resume();
    const reply = (): void => {
      const body = JSON.stringify({ backend: name, path: url.pathname });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    if (url.pathname === '/slow') {
      const timer = setTimeout(
        () => {
          timers.delete(timer);
          reply();
        },
        Number(url.searchParams.get('ms') ?? 1000),
      );
      timers.add(timer);
    } else reply();
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    name,
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    async close() {
      for (const timer of timers) clearTimeout(timer);
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

/** One JSON log line. */
export type LogLine = Record<string, unknown>;

/** A running `gatehouse start` process. */
export interface GatehouseProcess {
  child: ChildProcess;
  /** Every JSON line written to stdout so far, by the primary and the workers. */
  lines: LogLine[];
  stderr(): string;
  /** Resolves with the exit code (or the signal) once the process exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Waits for a log line at index `from` or later that satisfies `match`; returns it. */
  waitForLog(
    match: (line: LogLine) => boolean,
    what: string,
    opts?: { from?: number; ms?: number },
  ): Promise<LogLine>;
  /**
   * Waits until no line satisfying `match` arrived for `quietMs` (e.g. until the file watcher's follow-up
   * reload after a rewrite is over); rejects after `maxMs`.
   */
  quiet(match: (line: LogLine) => boolean, quietMs: number, maxMs?: number): Promise<void>;
  /** Like `exited`, but rejects when the process has not exited within `ms`. */
  exitedWithin(ms: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Kills the process group (primary and workers) if anything is still running. */
  kill(): Promise<void>;
}

/**
 * Spawns `gatehouse start -c FILE` in its own process group, so that cleanup can reach the workers
 * even if the primary is gone. It runs the sources under plain `node`, or `program` (bin/gatehouse,
 * executed as a program) when given.
 */
export function spawnGatehouse(configFile: string, program?: string): GatehouseProcess {
  const args = ['start', '-c', configFile];
  // `--import tsx` is resolved here, because the child would resolve it from its working directory.
  const [command, argv] =
    program === undefined
      ? [
          process.execPath,
          ['--import', import.meta.resolve('tsx'), path.join(ROOT, 'src/cli/run.ts'), ...args],
        ]
      : [program, args];
  const child = spawn(command, argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const lines: LogLine[] = [];
  const arrivals: number[] = [];
  let partial = '';
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    const parts = (partial + chunk.toString('utf8')).split('\n');
    partial = parts.pop() ?? '';
    for (const text of parts) {
      try {
        lines.push(JSON.parse(text) as LogLine);
        arrivals.push(Date.now());
      } catch {
        // Not a log line (nothing else should be printed, but it must not break the collector).
      }
    }
  });
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8');
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    lines,
    stderr: () => stderr,
    exited,
    async waitForLog(match, what, opts = {}) {
      let found: LogLine | undefined;
      await waitFor(
        () => {
          found = lines.slice(opts.from ?? 0).find(match);
          return found !== undefined;
        },
        opts.ms ?? 20_000,
        `${what} (stderr: ${stderr.slice(-500)}; last log lines: ${lines
          .slice(-8)
          .map((l) => JSON.stringify(l))
          .join('\n')})`,
      );
      return found!;
    },
    async quiet(match, quietMs, maxMs = 15_000) {
      await waitFor(
        () => {
          let last = 0;
          lines.forEach((l, i) => {
            if (match(l)) last = arrivals[i] ?? 0;
          });
          return Date.now() - last >= quietMs;
        },
        maxMs,
        'the log to go quiet',
      );
    },
    async exitedWithin(ms) {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`the process did not exit within ${ms} ms`)), ms);
      });
      try {
        return await Promise.race([exited, late]);
      } finally {
        clearTimeout(timer);
      }
    },
    async kill() {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // The whole group is gone already.
      }
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    },
  };
}

/** The command line of a running process, as the kernel has it (/proc/PID/cmdline). */
export function cmdline(pid: number | undefined): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
}

/** True for a log line of the primary (workers' lines carry their `worker` id instead). */
export function fromPrimary(line: LogLine): boolean {
  return line.role === 'primary';
}

/** True for the primary's lines about a reload (asked for, applied or rejected). */
export function reloadActivity(line: LogLine): boolean {
  return fromPrimary(line) && /^(SIGHUP|configuration)/.test(String(line.msg));
}

/** The addresses the primary logged once every worker served. */
export async function startedCluster(
  gh: GatehouseProcess,
): Promise<{ port: number; admin: string; pids: number[] }> {
  const line = await gh.waitForLog(
    (l) => fromPrimary(l) && l.msg === 'gateway started' && Array.isArray(l.workers),
    'the cluster to start',
    { ms: 30_000 },
  );
  const listeners = line.listeners as Array<{ address: string }>;
  const address = listeners[0]?.address ?? '';
  return {
    port: Number(address.split(':').pop()),
    admin: String(line.admin),
    pids: line.workers as number[],
  };
}

/** One HTTP/1.1 request on the given agent, with a hard timeout. */
export function send(
  port: number,
  path: string,
  agent: Agent | false,
  ms = 10_000,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, agent, timeout: ms }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        body += d;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`request ${path} timed out`)));
    req.on('error', reject);
    req.end();
  });
}

/**
 * Sends `perConnection` requests on each of `connections` keep-alive connections (one agent with one
 * socket each, so every agent is its own connection); resolves with the backends that answered.
 */
export async function sendOverConnections(
  port: number,
  connections: number,
  perConnection: number,
  path = '/',
): Promise<string[]> {
  const agents = Array.from({ length: connections }, () => new Agent({ keepAlive: true, maxSockets: 1 }));
  try {
    const answered = await Promise.all(
      agents.map(async (agent) => {
        const out: string[] = [];
        for (let i = 0; i < perConnection; i++) {
          const res = await send(port, path, agent);
          if (res.status !== 200) throw new Error(`status ${res.status}: ${res.body}`);
          out.push((JSON.parse(res.body) as { backend: string }).backend);
        }
        return out;
      }),
    );
    return answered.flat();
  } finally {
    for (const agent of agents) agent.destroy();
  }
}

/**
 * Sends one request on each of a few new connections, batch after batch, until every worker of the
 * instance answered more requests than before (the workers accept connections themselves, so which one
 * takes a connection is the kernel's choice); resolves with the backends that answered, rejects after
 * `ms`.
 */
export async function sendUntilEveryWorkerServed(
  port: number,
  admin: string,
  path = '/',
  ms = 30_000,
): Promise<string[]> {
  const counts = async (): Promise<Map<number, number>> =>
    new Map((await adminStatus(admin)).workers.map((w) => [w.slot, w.requests ?? 0]));
  const before = await counts();
  const answered: string[] = [];
  const deadline = Date.now() + ms;
  for (;;) {
    answered.push(...(await sendOverConnections(port, 4, 1, path)));
    const now = await counts();
    if ([...before].every(([slot, n]) => (now.get(slot) ?? 0) > n)) return answered;
    if (Date.now() > deadline) throw new Error(`not every worker served within ${ms} ms`);
  }
}

/** `/api/v1/status` of the admin listener (loopback, no token). */
export async function adminStatus(admin: string): Promise<Required<StatusReport>> {
  const res = await fetch(`http://${admin}/api/v1/status`, { signal: AbortSignal.timeout(10_000) });
  if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
  return (await res.json()) as Required<StatusReport>;
}

/** `/metrics` of the admin listener as text. */
export async function adminMetrics(admin: string): Promise<string> {
  const res = await fetch(`http://${admin}/metrics`, { signal: AbortSignal.timeout(10_000) });
  if (res.status !== 200) throw new Error(`metrics ${res.status}`);
  return await res.text();
}

/** Sum of every sample of a metric in Prometheus text, optionally only those whose labels include `having`. */
export function metricSum(text: string, name: string, having = ''): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (having && !line.includes(having)) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/** Resolves true while a process with this pid exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The addresses a single-process instance (`server.workers: 1`) logged once it served. */
export async function startedInstance(gh: GatehouseProcess): Promise<{ port: number; admin: string }> {
  const line = await gh.waitForLog((l) => l.msg === 'gateway started', 'the instance to start', {
    ms: 30_000,
  });
  const listeners = line.listeners as Array<{ address: string }>;
  return { port: Number(listeners[0]?.address.split(':').pop()), admin: String(line.admin) };
}

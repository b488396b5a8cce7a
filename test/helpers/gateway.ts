/**
 * Helpers for configuration, gateway and CLI tests: temporary config directories, self-signed
 * certificates, real backends on port 0, a child-process runner for the CLI.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import type { Logger } from '../../src/observe/log.js';

/** Repository root. */
export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** A temporary directory with helpers to write files into it; `remove()` deletes it. */
export interface TempDir {
  dir: string;
  /** Writes a file (creating directories) and returns its absolute path. */
  write(name: string, text: string): string;
  file(name: string): string;
  remove(): void;
}

/** Creates a temporary directory. */
export function tempDir(prefix = 'gatehouse-test-'): TempDir {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  return {
    dir,
    write(name, text) {
      const file = path.join(dir, name);
      mkdirSync(path.dirname(file), { recursive: true });
      writeFileSync(file, text);
      return file;
    },
    file: (name) => path.join(dir, name),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** A self-signed certificate and key in PEM, made by the openssl command. */
export function selfSigned(
  commonName = 'localhost',
  altNames = ['localhost', '127.0.0.1'],
): {
  cert: string;
  key: string;
} {
  const t = tempDir('gatehouse-cert-');
  try {
    const san = altNames.map((n) => (/^[\d.]+$/.test(n) ? `IP:${n}` : `DNS:${n}`)).join(',');
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-days',
        '2',
        '-subj',
        `/CN=${commonName}`,
        '-addext',
        `subjectAltName=${san}`,
        '-keyout',
        t.file('key.pem'),
        '-out',
        t.file('cert.pem'),
      ],
      { stdio: 'ignore' },
    );
    return { cert: readFileSync(t.file('cert.pem'), 'utf8'), key: readFileSync(t.file('key.pem'), 'utf8') };
  } finally {
    t.remove();
  }
}

/** A real HTTP backend on 127.0.0.1:0 that answers with its name; counts requests. */
export interface TestBackend {
  name: string;
  url: string;
  server: Server;
  hits: number;
  close(): Promise<void>;
}

/**
 * Starts a backend. `GET /slow?ms=N` answers after N ms; everything else answers at once with
 * `{ backend, path }`.
 */
export async function startBackend(name: string): Promise<TestBackend> {
  const timers = new Set<NodeJS.Timeout>();
  const backend: TestBackend = {
    name,
    url: '',
    hits: 0,
    server: createServer((req, res) => {
      backend.hits++;
      const url = new URL(req.url ?? '/', 'http://x');
      const reply = (): void => {
        const body = JSON.stringify({
          backend: name,
          path: url.pathname,
          authorization: req.headers.authorization ?? null,
        });
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      };
      req.resume();
      if (url.pathname.startsWith('/slow')) {
        const timer = setTimeout(
          () => {
            timers.delete(timer);
            reply();
          },
          Number(url.searchParams.get('ms') ?? 500),
        );
        timers.add(timer);
      } else reply();
    }),
    async close() {
      for (const timer of timers) clearTimeout(timer);
      await new Promise<void>((resolve) => {
        backend.server.close(() => resolve());
        backend.server.closeAllConnections();
      });
    },
  };
  backend.server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => backend.server.listen(0, '127.0.0.1', resolve));
  backend.url = `http://127.0.0.1:${(backend.server.address() as AddressInfo).port}`;
  return backend;
}

/** A logger that keeps its JSON lines in memory (and is silent otherwise). */
export function memoryLogger(): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line));
      done();
    },
  });
  return { logger: pino({ level: 'debug' }, sink), lines };
}

/** Runs the CLI from source in a child process and collects its output. */
export async function runCli(
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  const child = spawnCli(args, opts);
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => {
    stdout += d.toString();
  });
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const timeout = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
  try {
    const [code, signal] = (await new Promise((resolve) => child.on('close', (c, s) => resolve([c, s])))) as [
      number | null,
      NodeJS.Signals | null,
    ];
    return { code, signal, stdout, stderr };
  } finally {
    clearTimeout(timeout);
  }
}

/** Spawns `node --import tsx src/cli/run.ts ARGS`. The caller must make sure it ends. */
export function spawnCli(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): ChildProcess {
  // Resolved here, because `--import tsx` would be resolved from the child's working directory.
  return spawn(
    process.execPath,
    ['--import', import.meta.resolve('tsx'), path.join(ROOT, 'src/cli/run.ts'), ...args],
    {
      cwd: opts.cwd ?? ROOT,
      env: opts.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
}

/** What a test backend answers (or `text` when the body is not JSON). */
export interface Reply {
  backend?: string;
  path?: string;
  authorization?: string | null;
  text?: string;
}

/** A GET through the gateway: status and parsed body. */
export async function get(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Reply }> {
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(15_000) });
  const text = await res.text();
  try {
    return { status: res.status, body: JSON.parse(text) as Reply };
  } catch {
    return { status: res.status, body: { text } };
  }
}

/** Waits until `cond()` is true, polling; rejects after `ms`. */
export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  ms = 10_000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

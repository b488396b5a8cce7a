/**
 * `gatehouse demo`: starts the sample backends in-process, writes the bundled demo configuration with
 * their ports filled in, starts the gateway on it and prints the URLs to try.
 */
import { rmSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseDocument } from 'yaml';
import { Gateway } from '../gateway.js';
import type { AccessEntry, Logger } from '../observe/log.js';
import { type Backend, startEchoBackend, startJobsBackend } from './backends.js';

/** The bundled demo configuration (works from `src/demo` and from `dist/demo`). */
export const demoConfigPath = fileURLToPath(new URL('../../examples/demo.yaml', import.meta.url));

/** Options of `startDemo`. */
export interface DemoOptions {
  /** Gateway port; default 8080, or a free port when 8080 is taken. 0 = any free port. */
  port?: number;
  /** Admin port; default 9900, or a free port when taken. 0 = any free port. */
  adminPort?: number;
  /** Length of one sync job of the jobs backend in ms (default 30 000). */
  jobDurationMs?: number;
  /** Time between job progress events in ms (default 500). */
  jobIntervalMs?: number;
  /** Let the gateway handle SIGHUP, and SIGTERM/SIGINT by draining and exiting (default false). */
  signals?: boolean;
  logger?: Logger;
  /** Access-log sink (default: JSON lines on stdout). */
  accessLog?: (entry: AccessEntry) => void;
}

/** A running demo. */
export interface Demo {
  readonly gateway: Gateway;
  /** Gateway origin, e.g. `http://127.0.0.1:8080`. */
  readonly url: string;
  /** Admin origin, e.g. `http://127.0.0.1:9900`. */
  readonly adminUrl: string | undefined;
  readonly configFile: string;
  readonly backends: { echo: Backend[]; canary: Backend; jobs: Backend };
  /** Shuts the gateway down, stops the backends and removes the generated configuration. */
  close(): Promise<void>;
}

async function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}

async function choosePort(wanted: number | undefined, fallbackDefault: number): Promise<number> {
  if (wanted !== undefined) return wanted;
  return (await portIsFree(fallbackDefault)) ? fallbackDefault : 0;
}

/** Starts backends and gateway; the caller owns `close()`. */
export async function startDemo(opts: DemoOptions = {}): Promise<Demo> {
  const started: Backend[] = [];
  let dir: string | undefined;
  try {
    const echo = [await startEchoBackend({ name: 'echo-1' }), await startEchoBackend({ name: 'echo-2' })];
    started.push(...echo);
    const canary = await startEchoBackend({ name: 'echo-canary' });
    started.push(canary);
    const jobsOpts: Parameters<typeof startJobsBackend>[0] = { name: 'jobs' };
    if (opts.jobDurationMs !== undefined) jobsOpts.durationMs = opts.jobDurationMs;
    if (opts.jobIntervalMs !== undefined) jobsOpts.intervalMs = opts.jobIntervalMs;
    const jobs = await startJobsBackend(jobsOpts);
    started.push(jobs);

    const port = await choosePort(opts.port, 8080);
    const adminPort = await choosePort(opts.adminPort, 9900);
    const doc = parseDocument(await readFile(demoConfigPath, 'utf8'));
    doc.setIn(['listeners', 0, 'bind'], `127.0.0.1:${port}`);
    doc.setIn(['admin', 'bind'], `127.0.0.1:${adminPort}`);
    echo.forEach((b, i) => {
      doc.setIn(['upstreams', 'echo', 'servers', i, 'url'], b.url);
    });
    doc.setIn(['upstreams', 'echo-canary', 'servers', 0, 'url'], canary.url);
    doc.setIn(['upstreams', 'jobs', 'servers', 0, 'url'], jobs.url);

    dir = await mkdtemp(join(tmpdir(), 'gatehouse-demo-'));
    const configFile = join(dir, 'gatehouse-demo.yaml');
    await writeFile(configFile, doc.toString(), { mode: 0o600 });

    const startOpts: Parameters<typeof Gateway.start>[0] = { configFile, signals: opts.signals ?? false };
    if (opts.logger) startOpts.logger = opts.logger;
    if (opts.accessLog) startOpts.accessLog = opts.accessLog;
    const gateway = await Gateway.start(startOpts);
    const addr = gateway.address('plain');
    const admin = gateway.adminAddress();
    const tmp = dir;
    // With signals on, the gateway exits the process after draining: remove the generated file then too.
    const removeOnExit = () => rmSync(tmp, { recursive: true, force: true });
    process.once('exit', removeOnExit);
    let closing: Promise<void> | undefined;
    return {
      gateway,
      url: `http://127.0.0.1:${addr?.port ?? port}`,
      adminUrl: admin ? `http://127.0.0.1:${admin.port}` : undefined,
      configFile,
      backends: { echo, canary, jobs },
      close() {
        closing ??= (async () => {
          await gateway.shutdown();
          await Promise.all(started.map((b) => b.close()));
          process.off('exit', removeOnExit);
          await rm(tmp, { recursive: true, force: true });
        })();
        return closing;
      },
    };
  } catch (err) {
    await Promise.all(started.map((b) => b.close()));
    if (dir) await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

const usage = `usage: gatehouse demo [--port N] [--admin-port N]

Starts sample backends and the gateway in front of them, and prints the URLs to try.
  --port N         gateway port (default 8080, or a free port when 8080 is taken)
  --admin-port N   admin listener port (default 9900, or a free port when taken)
`;

function parsePort(value: string | undefined, flag: string): number {
  const n = Number(value);
  if (value === undefined || !/^\d{1,5}$/.test(value) || n > 65535) {
    throw new Error(`${flag} needs a port number from 0 to 65535`);
  }
  return n;
}

/** Entry point of `gatehouse demo`; resolves with the exit code once SIGINT/SIGTERM stopped it. */
export async function runDemo(argv: string[]): Promise<number> {
  const opts: DemoOptions = { signals: true };
  try {
    for (let i = 0; i < argv.length; i++) {
      const arg = argv[i];
      if (arg === '--help' || arg === '-h') {
        process.stdout.write(usage);
        return 0;
      }
      if (arg === '--port') opts.port = parsePort(argv[++i], '--port');
      else if (arg?.startsWith('--port=')) opts.port = parsePort(arg.slice(7), '--port');
      else if (arg === '--admin-port') opts.adminPort = parsePort(argv[++i], '--admin-port');
      else if (arg?.startsWith('--admin-port=')) opts.adminPort = parsePort(arg.slice(13), '--admin-port');
      else throw new Error(`unknown argument "${arg}"`);
    }
  } catch (err) {
    process.stderr.write(`gatehouse demo: ${(err as Error).message}\n\n${usage}`);
    return 2;
  }

  const demo = await startDemo(opts);
  const { url, adminUrl } = demo;
  const tries: Array<[string, string]> = [
    [`curl ${url}/echo/hello`, 'echo backend, round-robin over two servers'],
    [`curl -H 'X-Canary: echo-canary' ${url}/api/x`, 'canary split, pinned by a header'],
    [`curl -N ${url}/jobs/sync`, 'a long-running job streamed as server-sent events'],
  ];
  if (adminUrl) {
    tries.push(
      [`curl ${adminUrl}/metrics`, 'Prometheus metrics'],
      [`curl ${adminUrl}/api/v1/status`, 'routes, upstreams, server health'],
      [`open ${adminUrl}/`, 'operator dashboard'],
    );
  }
  const width = Math.max(...tries.map(([cmd]) => cmd.length)) + 2;
  const lines = [
    '',
    `Gatehouse demo running (config: ${demo.configFile})`,
    '',
    'Try:',
    ...tries.map(([cmd, what]) => `  ${cmd.padEnd(width)}# ${what}`),
  ];
  lines.push('', 'Press Ctrl+C to stop.', '');
  process.stdout.write(`${lines.join('\n')}\n`);

  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  await demo.close();
  return 0;
}

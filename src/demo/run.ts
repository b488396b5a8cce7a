/**
 * `gatehouse demo`: starts a development OpenID provider and the sample backends in-process, writes the
 * bundled demo configuration with their addresses and freshly generated secrets filled in, starts the
 * gateway on it and prints how to sign in as each demo user and what to try.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseDocument } from 'yaml';
import { generateApiKey } from '../identity/apikeys.js';
import type { AccessEntry, Logger } from '../observe/log.js';
import { Gateway } from '../process/gateway.js';
import { type Backend, startEchoBackend, startJobsBackend } from './backends.js';
import { type DemoIdp, startDemoIdp } from './idp.js';

/** The bundled demo configuration (works from `src/demo` and from `dist/demo`). */
export const demoConfigPath = fileURLToPath(new URL('../../examples/demo.yaml', import.meta.url));

/** Options of `startDemo`. */
export interface DemoOptions {
  /** Gateway port; default 8080, or a free port when 8080 is taken. 0 = any free port. */
  port?: number;
  /** Admin port; default 9900, or a free port when taken. 0 = any free port. */
  adminPort?: number;
  /** Port of the demo OpenID provider; default 9200, or a free port when taken. 0 = any free port. */
  idpPort?: number;
  /** Passwords of the demo users by id (default: generated at start). */
  passwords?: Readonly<Record<string, string>>;
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
  /** The development OpenID provider: users, the gateway's client, the agent's client. */
  readonly idp: DemoIdp;
  /** The API key made at start (the generated configuration holds only its hash). */
  readonly apiKey: string;
  /** Shuts the gateway down, stops the provider and the backends and removes the generated configuration. */
  close(): Promise<void>;
}

/** Environment variables the generated configuration reads its secrets from (never written to disk). */
const SESSION_SECRET_ENV = 'GATEHOUSE_DEMO_SESSION_SECRET';
const CLIENT_SECRET_ENV = 'GATEHOUSE_DEMO_CLIENT_SECRET';

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

/** Starts the provider, the backends and the gateway; the caller owns `close()`. */
export async function startDemo(opts: DemoOptions = {}): Promise<Demo> {
  const started: Array<{ close(): Promise<void> }> = [];
  let dir: string | undefined;
  try {
    const idpOpts: Parameters<typeof startDemoIdp>[0] = { port: await choosePort(opts.idpPort, 9200) };
    if (opts.passwords) idpOpts.passwords = opts.passwords;
    const idp = await startDemoIdp(idpOpts);
    started.push(idp);
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
    // Secrets are generated per run and handed over as env: references, so they never touch the disk.
    const env = {
      ...process.env,
      [SESSION_SECRET_ENV]: randomBytes(32).toString('base64url'),
      [CLIENT_SECRET_ENV]: idp.gatewayClient.clientSecret,
    };
    doc.setIn(['identity', 'session', 'secrets'], doc.createNode([`env:${SESSION_SECRET_ENV}`]));
    doc.setIn(['identity', 'providers', 0, 'issuer'], idp.issuer);
    doc.setIn(['identity', 'providers', 0, 'clientId'], idp.gatewayClient.clientId);
    doc.setIn(['identity', 'providers', 0, 'clientSecret'], `env:${CLIENT_SECRET_ENV}`);
    doc.setIn(['identity', 'bearer', 0, 'issuer'], idp.issuer);
    doc.setIn(['identity', 'bearer', 0, 'audiences'], doc.createNode([idp.agentClient.audience]));
    const { key: apiKey, hashLine } = generateApiKey('demo-agent-key');
    doc.setIn(['identity', 'apiKeys', 0, 'hash'], hashLine);

    dir = await mkdtemp(join(tmpdir(), 'gatehouse-demo-'));
    const configFile = join(dir, 'gatehouse-demo.yaml');
    await writeFile(configFile, doc.toString(), { mode: 0o600 });

    const startOpts: Parameters<typeof Gateway.start>[0] = {
      configFile,
      env,
      signals: opts.signals ?? false,
    };
    if (opts.logger) startOpts.logger = opts.logger;
    if (opts.accessLog) startOpts.accessLog = opts.accessLog;
    const gateway = await Gateway.start(startOpts);
    const addr = gateway.address('plain');
    const admin = gateway.adminAddress();
    const gatewayPort = addr?.port ?? port;
    // The redirect URI is built from the host the browser used: both loopback spellings work.
    idp.allowGateway(`http://127.0.0.1:${gatewayPort}`);
    idp.allowGateway(`http://localhost:${gatewayPort}`);
    const tmp = dir;
    // With signals on, the gateway exits the process after draining: remove the generated file then too.
    const removeOnExit = () => rmSync(tmp, { recursive: true, force: true });
    process.once('exit', removeOnExit);
    let closing: Promise<void> | undefined;
    return {
      gateway,
      url: `http://127.0.0.1:${gatewayPort}`,
      adminUrl: admin ? `http://127.0.0.1:${admin.port}` : undefined,
      configFile,
      backends: { echo, canary, jobs },
      idp,
      apiKey,
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

const usage = `usage: gatehouse demo [--port N] [--admin-port N] [--idp-port N]

Starts a development OpenID provider, sample backends and the gateway in front of them, and prints
how to sign in as each demo user and what to try.
  --port N         gateway port (default 8080, or a free port when 8080 is taken)
  --admin-port N   admin listener port (default 9900, or a free port when taken)
  --idp-port N     demo OpenID provider port (default 9200, or a free port when taken)
`;

/**
 * One line on the Node.js the demo runs on. Node.js 20 reached end of life in April 2026: it still runs
 * and is tested, but the line says so and names the supported releases.
 */
export function runtimeNote(version: string): string {
  const major = Number(version.split('.')[0]);
  if (major < 22) return `Node.js ${version} (end of life since April 2026; Node.js 22 or 24 is recommended)`;
  return `Node.js ${version}`;
}

/** What `gatehouse demo` prints once everything runs: where things are, who can sign in, what to try. */
export function demoInstructions(demo: Demo): string {
  const { url, adminUrl, idp } = demo;
  const agent = idp.agentClient;
  const width = Math.max(...idp.users.map((u) => u.id.length + u.password.length)) + 5;
  const lines = [
    '',
    'Gatehouse demo running',
    `  gateway    ${url}`,
    ...(adminUrl ? [`  admin      ${adminUrl}  (dashboard, /metrics, /api/v1/status)`] : []),
    `  demo IdP   ${idp.issuer}  (development OpenID provider, in memory)`,
    `  config     ${demo.configFile}`,
    `  runtime    ${runtimeNote(process.versions.node)}`,
    '',
    `Sign in with a browser at ${url}/echo/hello (policy data-eng) as:`,
    ...idp.users.map((u) => {
      const outcome = u.groups.includes('data-eng')
        ? 'allowed: the echo shows X-Gatehouse-User'
        : 'refused: the 403 page says who and why';
      return `  ${`${u.id} / ${u.password}`.padEnd(width)}groups ${u.groups.join(', ')}: ${outcome}`;
    }),
    `Both may follow a sync job at ${url}/jobs/sync.`,
    `Who am I: ${url}/.gatehouse/userinfo`,
    `Sign out (also at the demo IdP), then sign in as the other user: ${url}/.gatehouse/logout`,
    '',
    'Try with curl:',
    '  # public route, round-robin over two echo servers',
    `  curl ${url}/status`,
    '  # no credential: 401 with WWW-Authenticate',
    `  curl -i ${url}/echo/hello`,
    '  # an agent with an API key (made at start, valid on the api-canary route), pinned to the canary',
    `  curl -H 'Authorization: Bearer ${demo.apiKey}' -H 'X-Canary: echo-canary' ${url}/api/x`,
    '  # an agent with a bearer JWT from the demo IdP (client-credentials grant)',
    `  TOKEN=$(curl -s -u '${agent.clientId}:${agent.clientSecret}' -d grant_type=client_credentials ${agent.tokenEndpoint} | sed -E 's/.*"access_token":"([^"]+)".*/\\1/')`,
    `  curl -H "Authorization: Bearer $TOKEN" ${url}/api/v1/jobs`,
    '  # the keys that verify the X-Gatehouse-Assertion every backend receives',
    `  curl ${url}/.gatehouse/jwks.json`,
    '',
    'Why was a request allowed or refused? (offline, from the configuration)',
    `  gatehouse explain -c ${demo.configFile} --as 'email=bob@example.com,groups=analysts' GET ${url}/echo/hello`,
    '',
  ];
  if (adminUrl) {
    lines.push(
      'Operate:',
      `  curl ${adminUrl}/metrics          # Prometheus metrics`,
      `  curl ${adminUrl}/api/v1/status    # routes, upstreams, server health`,
      `  open ${adminUrl}/                 # operator dashboard`,
      '',
    );
  }
  lines.push('Press Ctrl+C to stop.', '');
  return lines.join('\n');
}

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
      else if (arg === '--idp-port') opts.idpPort = parsePort(argv[++i], '--idp-port');
      else if (arg?.startsWith('--idp-port=')) opts.idpPort = parsePort(arg.slice(11), '--idp-port');
      else throw new Error(`unknown argument "${arg}"`);
    }
  } catch (err) {
    process.stderr.write(`gatehouse demo: ${(err as Error).message}\n\n${usage}`);
    return 2;
  }

  const demo = await startDemo(opts);
  process.stdout.write(`${demoInstructions(demo)}\n`);

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

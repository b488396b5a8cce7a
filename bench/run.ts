/**
 * `npm run bench`: the same keep-alive load against Gatehouse, HAProxy, a minimal node:http + undici
 * proxy and node-http-proxy, in one run on this machine. Reports requests/s, p50/p99 latency and the
 * proxy's CPU time per request (from /proc), with ratios; then streams a 1 GiB body through Gatehouse
 * both ways and reports its peak RSS. Results are also written to `.bench/results.json`.
 *
 * Gatehouse runs twice: without the access log (`gatehouse`; HAProxy and the peers log nothing per
 * request either) and with it (`gatehouse+log`: the default `logging.access: true`, stdout going to
 * /dev/null), so that the cost of the default is reported next to the rest. A third variant,
 * `gatehouse+jwt`, serves the same route behind identity: a bearer JWT from an issuer the bench serves
 * itself (RS256, discovery and JWKS on loopback), a policy with a deny and an allow rule, and identity
 * headers plus the signed assertion upstream. wrk sends one long-lived token, so after the first request
 * every request is a token-cache hit. `haproxy+bearer` is HAProxy sent the very same requests (the token
 * passed through unchecked, as HAProxy does no identity), so that the identity variant is also compared
 * with HAProxy on identical traffic. Token-cache misses are measured after the load phases in a bounded
 * phase where every request carries a different token (signature checks/s and CPU per check, confirmed
 * against the gateway's `gatehouse_token_verifications_total`). `gatehouse+limits` is the identity route
 * with a rate limit and a quota counted in the memory store (limits never reached: the stage's own
 * cost), and `gatehouse+limits+redis` the same counted in a `redis-server` the bench starts on the
 * proxies' core, whose CPU counts with the gateway's. `gatehouse+tracing` is `gatehouse` with tracing on
 * (every request sampled) exporting over OTLP/HTTP to a receiver in the bench process, and is reported
 * against `gatehouse` (tracing off). `gatehouse+audit` is `gatehouse` writing the audit trail of every
 * decision to a file (fsync never), reported against `gatehouse`.
 *
 * Usage: node --import tsx bench/run.ts [--duration 10s] [--connections 50] [--warmup 2s] [--rounds 1]
 *          [--proxies gatehouse,gatehouse+log,gatehouse+jwt,gatehouse+limits,gatehouse+limits+redis,
 *                     gatehouse+tracing,gatehouse+audit,haproxy,…]
 *          [--memory-size 1GiB] [--miss-tokens 2000]
 *          [--no-memory | --memory-only] [--instructions [N] | --instructions-only]
 *          [--peer-node-flags FLAGS] [--baseline DIR]
 *
 * Gatehouse runs with the Node.js flags of its `bin/gatehouse` (src/process/flags.ts); the Node.js
 * peers run as plain `node` unless `--peer-node-flags` gives them flags too (e.g. the same ones, to see
 * how much of the difference the flags make).
 *
 * CPU placement (two cores): every proxy runs on CPU 1, and only the one under load is busy; the load
 * generator and the backend share CPU 0. Every proxy is run the same way, so the CPU-per-request
 * figures are comparable.
 *
 * All proxies are started first. Then, for small responses and then for 1 MiB ones, every proxy is
 * warmed up (`--warmup`), and each of `--rounds N` rounds loads every proxy for `--duration`, one after
 * the other in an order shuffled each round. The table shows medians over the rounds and the CPU range.
 * Ratios are taken round by round, between measurements seconds apart, and the median of those is
 * reported (bench/stats.ts): a shared machine's speed drifts over minutes, and this cancels most of
 * that drift, which the ratio of two medians would not. The report ends with each target and its
 * ratio, lowest and highest round included.
 *
 * `--baseline DIR` also runs the gateway of another checkout (its built `dist/`, e.g. a worktree of the
 * previous release) as `baseline` (and `baseline+jwt` when `gatehouse+jwt` runs), in the same rounds as
 * everything else, and reports this build against it with paired ratios: how a change moved the cost
 * on this machine, measured seconds apart instead of in two runs minutes or hours apart.
 *
 * `--instructions [N]` (default 3000) adds a slow phase that counts each proxy's user-space instructions
 * per small request under valgrind's callgrind (bench/instructions.ts): a figure that moves far less
 * than CPU time with the machine's load. `--instructions-only` runs that phase alone.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import { connect, createServer } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { parseDuration, parseSize } from '../src/config/units.js';
import { PROCESS_FLAGS } from '../src/process/flags.js';
import {
  BENCH_ALG,
  type BenchIssuer,
  jwtConfigLines,
  sendTokens,
  startBenchIssuer,
  tokenVerifications,
} from './identity.js';
import {
  callgrindPrefix,
  haveCallgrind,
  type InstructionCount,
  instructionsPerRequest,
} from './instructions.js';
import { median, type PairedRatio, pairedRatio, round, roundOrder } from './stats.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  durationS: number;
  warmupS: number;
  connections: number;
  proxies: string[];
  memoryBytes: number;
  memory: boolean;
  loadTests: boolean;
  rounds: number;
  missTokens: number;
  /** Requests measured per proxy by the instruction-count phase; 0: phase off. */
  instructions: number;
  /** Node.js flags for the Node.js peers (minimal-undici, node-http-proxy); none by default. */
  peerNodeFlags: string[];
  /** Another checkout whose built gateway runs as `baseline` (and `baseline+jwt`). */
  baseline: string | undefined;
}

const allProxies = [
  'gatehouse',
  'gatehouse+log',
  'gatehouse+jwt',
  'gatehouse+limits',
  'gatehouse+limits+redis',
  'gatehouse+tracing',
  'gatehouse+audit',
  'gatehouse+log+audit',
  'haproxy',
  'haproxy+bearer',
  'haproxy+spoe',
  'haproxy+jwt_verify',
  'nginx',
  'nginx+auth',
  'minimal-undici',
  'node-http-proxy',
];

function parseArgs(argv: string[]): Options {
  const opts: Options = {
    durationS: 10,
    warmupS: 2,
    connections: 50,
    proxies: allProxies,
    memoryBytes: 1024 ** 3,
    memory: true,
    loadTests: true,
    rounds: 1,
    missTokens: 2000,
    instructions: 0,
    peerNodeFlags: [],
    baseline: undefined,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    const seconds = (v: string) => {
      const ms = parseDuration(v) ?? (/^\d+$/.test(v) ? Number(v) * 1000 : undefined);
      if (ms === undefined || ms < 1000)
        throw new Error(`${a}: expected a duration of at least 1s, e.g. 10s`);
      return Math.round(ms / 1000);
    };
    if (a === '--duration') opts.durationS = seconds(next());
    else if (a === '--warmup') {
      const v = next();
      opts.warmupS = v === '0' || v === '0s' ? 0 : seconds(v);
    } else if (a === '--connections') opts.connections = Math.max(1, Number.parseInt(next(), 10) || 0);
    else if (a === '--rounds') {
      opts.rounds = Number.parseInt(next(), 10);
      if (!Number.isSafeInteger(opts.rounds) || opts.rounds < 1) throw new Error('--rounds must be >= 1');
    } else if (a === '--proxies') {
      opts.proxies = next().split(',');
      for (const p of opts.proxies) if (!allProxies.includes(p)) throw new Error(`unknown proxy ${p}`);
    } else if (a === '--memory-size') {
      const bytes = parseSize(next());
      if (bytes === undefined) throw new Error('--memory-size: expected a size such as 1GiB');
      opts.memoryBytes = bytes;
    } else if (a === '--miss-tokens') {
      opts.missTokens = Number.parseInt(next(), 10);
      if (!Number.isSafeInteger(opts.missTokens) || opts.missTokens < 0)
        throw new Error('--miss-tokens must be >= 0');
    } else if (a === '--no-memory') opts.memory = false;
    else if (a === '--memory-only') opts.loadTests = false;
    else if (a === '--instructions') {
      const v = argv[i + 1];
      opts.instructions = v !== undefined && /^\d+$/.test(v) ? Number(argv[++i]) : 3000;
      if (opts.instructions < 1) throw new Error('--instructions needs at least 1 request');
    } else if (a === '--instructions-only') {
      opts.instructions ||= 3000;
      opts.loadTests = false;
      opts.memory = false;
      opts.missTokens = 0;
    } else if (a === '--peer-node-flags') {
      opts.peerNodeFlags = next()
        .split(/[\s,]+/)
        .filter((f) => f !== '');
      for (const f of opts.peerNodeFlags)
        if (!f.startsWith('--')) throw new Error(`--peer-node-flags: ${f} is not a flag (--name)`);
    } else if (a === '--baseline') {
      opts.baseline = resolve(next());
      if (!existsSync(join(opts.baseline, 'dist/cli/main.js')))
        throw new Error(`--baseline: ${opts.baseline} has no dist/ (run npm run build there)`);
    } else if (a === '--help' || a === '-h') {
      process.stdout.write(`${readFileSync(fileURLToPath(import.meta.url), 'utf8').split('*/')[0]}*/\n`);
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  if (!Number.isFinite(opts.connections) || opts.connections < 1)
    throw new Error('--connections must be >= 1');
  if (opts.baseline !== undefined) {
    // The baseline runs beside each gateway variant it can stand in for.
    const extra: string[] = [];
    if (opts.proxies.includes('gatehouse')) extra.push('baseline');
    if (opts.proxies.includes('gatehouse+jwt')) extra.push('baseline+jwt');
    opts.proxies = [...opts.proxies, ...extra];
  }
  return opts;
}

// ---------------------------------------------------------------------------------------------
// Processes: everything started is tracked and stopped, on success, error or signal.

const children = new Set<ChildProcess>();
const tempDirs: string[] = [];

function haveCommand(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const canPin = haveCommand('taskset') && cpus().length >= 2;

/**
 * Spawns a command pinned to `cpu` (when taskset is available); its pid is the command's own. With
 * `stdoutToNull` its stdout goes to /dev/null, so a process that logs per request pays only its own
 * writes, not a pipe read by this process.
 */
function start(
  name: string,
  cmd: string,
  args: string[],
  cpu: number,
  stdoutToNull = false,
  wrap: readonly string[] = [],
): ChildProcess {
  const full = [...wrap, cmd, ...args];
  const [file, argv] = canPin
    ? ['taskset', ['-c', String(cpu), ...full]]
    : [full[0] as string, full.slice(1)];
  const devNull = stdoutToNull ? openSync('/dev/null', 'w') : undefined;
  const child = spawn(file, argv, {
    cwd: root,
    stdio: ['ignore', devNull ?? 'pipe', 'pipe'],
    env: { ...process.env },
  });
  if (devNull !== undefined) closeSync(devNull);
  children.add(child);
  let errTail = '';
  child.stderr?.on('data', (d: Buffer) => {
    errTail = (errTail + d.toString()).slice(-4000);
  });
  child.stdout?.resume();
  child.on('exit', (code, signal) => {
    children.delete(child);
    if (code !== 0 && signal === null && !stopping.has(child) && ready.has(child)) {
      process.stderr.write(`bench: ${name} exited with code ${code}\n${errTail}\n`);
    }
  });
  (child as ChildProcess & { errTail: () => string }).errTail = () => errTail;
  return child;
}

const stopping = new Set<ChildProcess>();
/** Children that were up; an exit before that is reported by `waitForPort` instead. */
const ready = new WeakSet<ChildProcess>();

async function stop(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  stopping.add(child);
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

async function stopAll(): Promise<void> {
  await Promise.all([...children].map((c) => stop(c)));
  for (const d of tempDirs.splice(0)) rmSync(d, { recursive: true, force: true });
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    process.stderr.write(`\nbench: ${sig}, stopping everything\n`);
    void stopAll().finally(() => process.exit(130));
  });
}

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => res(port));
    });
  });
}

/** Waits until the port accepts connections, or fails after `timeoutMs` or when the child exits. */
async function waitForPort(
  port: number,
  child: ChildProcess,
  what: string,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const tail = (child as ChildProcess & { errTail?: () => string }).errTail?.() ?? '';
      throw new Error(`${what} exited before listening\n${tail}`);
    }
    const ok = await new Promise<boolean>((res) => {
      const sock = connect(port, '127.0.0.1');
      sock.once('connect', () => {
        sock.destroy();
        res(true);
      });
      sock.once('error', () => res(false));
    });
    if (ok) {
      ready.add(child);
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} did not listen on port ${port} within ${timeoutMs / 1000} s`);
}

// ---------------------------------------------------------------------------------------------
// /proc readings

const clkTck = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

function procStat(pid: number): { ppid: number; ticks: number } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name; the name itself may contain spaces.
    const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(rest[1]), ticks: Number(rest[11]) + Number(rest[12]) };
  } catch {
    return undefined;
  }
}

/**
 * utime+stime in ticks of `pids` and every live descendant of theirs (a proxy may run worker
 * processes), from one reading of /proc.
 */
function cpuTicks(...pids: number[]): number {
  const stats = new Map<number, { ppid: number; ticks: number }>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const s = procStat(Number(entry));
    if (s) stats.set(Number(entry), s);
  }
  let total = 0;
  const queue = [...pids];
  const seen = new Set<number>();
  while (queue.length > 0) {
    const p = queue.pop() as number;
    if (seen.has(p)) continue;
    seen.add(p);
    total += stats.get(p)?.ticks ?? 0;
    for (const [child, s] of stats) if (s.ppid === p) queue.push(child);
  }
  return total;
}

function statusKiB(pid: number, field: 'VmHWM' | 'VmRSS'): number | undefined {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Waits until none of `pids` used CPU for 300 ms (at most `maxMs`). */
async function waitIdle(pids: readonly number[], maxMs = 10_000): Promise<void> {
  const deadline = Date.now() + maxMs;
  let last = cpuTicks(...pids);
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 300));
    const now = cpuTicks(...pids);
    if (now === last) return;
    last = now;
  }
}

// ---------------------------------------------------------------------------------------------
// Load generation

interface LoadResult {
  requests: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  non2xx: number;
}

function toMs(value: string, unit: string): number {
  const n = Number(value);
  switch (unit) {
    case 'us':
      return n / 1000;
    case 'ms':
      return n;
    case 's':
      return n * 1000;
    case 'm':
      return n * 60_000;
    default:
      return Number.NaN;
  }
}

/** Parses wrk's `--latency` report. */
export function parseWrk(out: string): LoadResult {
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]);
  const requests = Number(/(\d+) requests in/.exec(out)?.[1]);
  const p = (q: string) => {
    const m = new RegExp(`^\\s+${q}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(out);
    return m ? toMs(m[1] as string, m[2] as string) : Number.NaN;
  };
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const errors = sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0;
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  if (!Number.isFinite(rps) || !Number.isFinite(requests))
    throw new Error(`could not parse wrk output:\n${out}`);
  return { requests, rps, p50Ms: p('50'), p99Ms: p('99'), errors, non2xx };
}

const haveWrk = haveCommand('wrk');

async function runLoad(
  url: string,
  connections: number,
  durationS: number,
  headers: Record<string, string> = {},
): Promise<LoadResult> {
  if (haveWrk) {
    const h = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
    const child = start(
      'wrk',
      'wrk',
      ['-t1', `-c${connections}`, `-d${durationS}s`, '--latency', '--timeout', '10s', ...h, url],
      0,
    );
    let out = '';
    child.stdout?.removeAllListeners('data');
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
    });
    const killer = setTimeout(() => child.kill('SIGKILL'), (durationS + 30) * 1000);
    const code = await new Promise<number | null>((res) => child.once('exit', (c) => res(c)));
    clearTimeout(killer);
    if (code !== 0) throw new Error(`wrk failed (exit ${code}):\n${out}`);
    return parseWrk(out);
  }
  return runAutocannon(url, connections, durationS, headers);
}

async function runAutocannon(
  url: string,
  connections: number,
  durationS: number,
  headers: Record<string, string>,
): Promise<LoadResult> {
  const spec = 'autocannon';
  // Loaded only when wrk is missing; it is not a dependency of the project.
  const mod = (await import(spec).catch(() => {
    throw new Error('neither wrk nor autocannon is available: apt-get install wrk');
  })) as { default: (o: object) => Promise<Record<string, Record<string, number>>> };
  const r = await mod.default({ url, connections, duration: durationS, pipelining: 1, headers });
  return {
    requests: r.requests?.total ?? 0,
    rps: r.requests?.average ?? 0,
    p50Ms: r.latency?.p50 ?? Number.NaN,
    p99Ms: r.latency?.p99 ?? Number.NaN,
    errors: (r.errors as unknown as number) ?? 0,
    non2xx: (r.non2xx as unknown as number) ?? 0,
  };
}

// ---------------------------------------------------------------------------------------------
// Proxies

interface Running {
  child: ChildProcess;
  port: number;
  /**
   * Further processes the proxy's CPU includes (the Gatehouse SPOE agent behind `haproxy+spoe`, the
   * Redis of `gatehouse+limits+redis`).
   */
  others?: ChildProcess[];
}

/** Every process whose CPU time a proxy's measurement counts. */
function pidsOf(r: Running): number[] {
  return [r.child.pid as number, ...(r.others ?? []).map((c) => c.pid as number)];
}

/** A command the proxy is started under (valgrind for the instruction counts), and its start timeout. */
interface Wrap {
  prefix: readonly string[];
  startTimeoutMs: number;
}

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'gatehouse-bench-'));
  tempDirs.push(d);
  return d;
}

function newestMtime(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    newest = Math.max(newest, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

/**
 * How to run the gateway: the built `bin/gatehouse` when `dist/` is current, else the sources via tsx.
 * A baseline checkout (`--baseline`) always runs its build.
 */
function gatehouseCommand(baseline?: string): { cmd: string; args: string[]; note: string } {
  if (baseline !== undefined) {
    return {
      cmd: process.execPath,
      args: [...PROCESS_FLAGS, join(baseline, 'bin/gatehouse')],
      note: `${baseline}/bin/gatehouse (dist/), node ${PROCESS_FLAGS.join(' ')}`,
    };
  }
  const built = join(root, 'dist/cli/main.js');
  if (existsSync(built) && statSync(built).mtimeMs >= newestMtime(join(root, 'src'))) {
    // The flags bin/gatehouse passes when run as a program, which `node bin/gatehouse` would not.
    return {
      cmd: process.execPath,
      args: [...PROCESS_FLAGS, join(root, 'bin/gatehouse')],
      note: `bin/gatehouse (dist/), node ${PROCESS_FLAGS.join(' ')}`,
    };
  }
  const runTs = join(root, 'src/cli/run.ts');
  const entry = existsSync(runTs) ? runTs : join(root, 'bench/peers/gatehouse-cli.ts');
  return {
    cmd: process.execPath,
    args: [...PROCESS_FLAGS, '--import', 'tsx', entry],
    note: `${entry.slice(root.length + 1)} via tsx (dist/ missing or older than src/: run npm run build to bench the build)`,
  };
}

/**
 * The rate limit of `gatehouse+limits`: high enough that the bench's one identity is never refused, so
 * that what is measured is the limit stage's own cost (one GCRA step and one quota per request).
 */
const BENCH_RATE_LIMIT = '{ key: identity, rate: 1000000/s, burst: 1000000 }';

/** The state store and the quota `gatehouse+limits` adds (a budget the bench never exhausts). */
function limitConfigLines(store: string): string[] {
  return [
    `state: { store: "${store}" }`,
    'quotas:',
    '  bench-daily: { key: identity, limit: 1000000000000, window: 1d, routes: [bench] }',
  ];
}

/** With `jwt`, the `gatehouse+jwt` variant: the bench route requires a bearer JWT from `jwt.issuer`. */
interface GatehouseVariant {
  /** `gatehouse+log`: the access log on. */
  accessLog?: boolean;
  jwt?: { issuer: string; adminPort: number } | undefined;
  wrap?: Wrap | undefined;
  /** Run the build in this checkout instead (`--baseline`). */
  baseline?: string | undefined;
  /** `gatehouse-agent`: the SPOE agent on this port. */
  spoePort?: number;
  /** `gatehouse-authz`: a forward-auth listener on this port. */
  forwardAuthPort?: number;
  limits?: { store: string };
  /** `gatehouse+tracing`: export every span to this OTLP/HTTP receiver. */
  tracingEndpoint?: string;
  /** `gatehouse+audit`: write the audit trail (every decision) to a file. */
  audit?: boolean;
}

async function startGatehouse(
  backendPort: number,
  v: GatehouseVariant = {},
): Promise<Running & { note: string }> {
  const {
    accessLog = false,
    jwt,
    wrap,
    baseline,
    spoePort,
    forwardAuthPort,
    limits,
    tracingEndpoint,
    audit,
  } = v;
  const port = await freePort();
  const dir = tempDir();
  const file = join(dir, 'gatehouse.yaml');
  writeFileSync(
    file,
    [
      'listeners:',
      `  - { name: bench, bind: "127.0.0.1:${port}" }`,
      ...(forwardAuthPort === undefined
        ? []
        : [`  - { name: authz, bind: "127.0.0.1:${forwardAuthPort}", forwardAuth: true }`]),
      forwardAuthPort === undefined
        ? 'server: { keepAliveTimeout: 120s }'
        : 'server: { keepAliveTimeout: 120s, trustedProxies: [127.0.0.1/32] }',
      ...(spoePort === undefined ? [] : [`spoe: { bind: "127.0.0.1:${spoePort}" }`]),
      ...(limits === undefined ? [] : limitConfigLines(limits.store)),
      ...(tracingEndpoint === undefined ? [] : [`tracing: { endpoint: "${tracingEndpoint}" }`]),
      ...(audit ? [`audit: { file: "${join(dir, 'audit.jsonl')}", fsync: never }`] : []),
      'upstreams:',
      '  backend:',
      `    servers: [{ url: "http://127.0.0.1:${backendPort}" }]`,
      ...(jwt ? jwtConfigLines(jwt.issuer, jwt.adminPort) : []),
      'routes:',
      jwt
        ? `  - { name: bench, match: { path: / }, upstream: backend, policy: bench, identityHeaders: true${
            limits === undefined ? '' : `, rateLimit: ${BENCH_RATE_LIMIT}`
          } }`
        : '  - { name: bench, match: { path: / }, upstream: backend, public: true }',
      // HAProxy and the peers log nothing per request either; `gatehouse+log` shows the default's cost.
      `logging: { level: warn, access: ${accessLog} }`,
      '',
    ].join('\n'),
  );
  const { cmd, args, note } = gatehouseCommand(baseline);
  const variant = audit
    ? accessLog
      ? 'gatehouse+log+audit'
      : 'gatehouse+audit'
    : tracingEndpoint !== undefined
      ? 'gatehouse+tracing'
      : limits !== undefined
        ? limits.store === 'memory'
          ? 'gatehouse+limits'
          : 'gatehouse+limits+redis'
        : spoePort !== undefined
          ? 'gatehouse-agent'
          : forwardAuthPort !== undefined
            ? 'gatehouse-authz'
            : jwt
              ? 'gatehouse+jwt'
              : accessLog
                ? 'gatehouse+log'
                : 'gatehouse';
  const name = baseline === undefined ? variant : variant.replace('gatehouse', 'baseline');
  const child = start(name, cmd, [...args, 'start', '-c', file], 1, accessLog, wrap?.prefix);
  await waitForPort(port, child, name, wrap?.startTimeoutMs);
  if (spoePort !== undefined) await waitForPort(spoePort, child, name, wrap?.startTimeoutMs);
  if (forwardAuthPort !== undefined) await waitForPort(forwardAuthPort, child, name, wrap?.startTimeoutMs);
  return { child, port, note };
}

/**
 * HAProxy's identity variants on the bench route, in front of the same backend:
 * `spoe` asks the Gatehouse SPOE agent at `agentPort` (examples/haproxy/gatehouse-spoe.conf, with the
 * example's enforcement rules: refuse without a decision or when it is not an allow, drop the bearer
 * token, set the identity headers and the assertion from the variables); `jwtPem` checks the bearer
 * token's signature with HAProxy's own `jwt_verify` against that public key (no claims, no policy, no
 * headers: all HAProxy can do by itself).
 */
interface HaproxyIdentity {
  spoe?: { agentPort: number };
  jwtPem?: string;
}

function haproxyIdentityLines(dir: string, id: HaproxyIdentity | undefined): string[] {
  if (id?.spoe !== undefined) {
    const spoeFile = join(dir, 'gatehouse-spoe.conf');
    writeFileSync(spoeFile, readFileSync(join(root, 'examples/haproxy/gatehouse-spoe.conf'), 'utf8'));
    return [
      `  filter spoe engine gatehouse config ${spoeFile}`,
      '  http-request deny deny_status 503 if !{ var(txn.gatehouse.status) -m found }',
      '  http-request deny deny_status 403 if !{ var(txn.gatehouse.status) -m int 200 }',
      '  http-request del-header Authorization if { var(txn.gatehouse.drop_authorization) -m found }',
      '  http-request set-header X-Gatehouse-User "%[var(txn.gatehouse.user)]" if { var(txn.gatehouse.user) -m found }',
      '  http-request set-header X-Gatehouse-Email "%[var(txn.gatehouse.email)]" if { var(txn.gatehouse.email) -m found }',
      '  http-request set-header X-Gatehouse-Groups "%[var(txn.gatehouse.groups)]" if { var(txn.gatehouse.groups) -m found }',
      '  http-request set-header X-Gatehouse-Assertion "%[var(txn.gatehouse.assertion)]" if { var(txn.gatehouse.assertion) -m found }',
    ];
  }
  if (id?.jwtPem !== undefined) {
    const pem = join(dir, 'issuer.pem');
    writeFileSync(pem, id.jwtPem);
    return [
      '  http-request set-var(txn.bearer) http_auth_bearer',
      "  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')",
      `  http-request deny deny_status 401 unless { var(txn.alg) -m str ${BENCH_ALG} }`,
      `  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"${pem}") -m int 1 }`,
    ];
  }
  return [];
}

/** The agents' backend of `haproxy+spoe`. */
function haproxyAgentLines(id: HaproxyIdentity | undefined): string[] {
  if (id?.spoe === undefined) return [];
  return [
    'backend gatehouse-agents',
    '  mode tcp',
    '  timeout connect 2s',
    '  timeout server 120s',
    `  server agent 127.0.0.1:${id.spoe.agentPort}`,
  ];
}

async function startHaproxy(backendPort: number, wrap?: Wrap, identity?: HaproxyIdentity): Promise<Running> {
  const port = await freePort();
  const dir = tempDir();
  const file = join(dir, 'haproxy.cfg');
  writeFileSync(
    file,
    [
      'global',
      '  nbthread 1',
      '  maxconn 4096',
      'defaults',
      '  mode http',
      '  timeout connect 5s',
      '  timeout client 120s',
      '  timeout server 600s',
      '  option http-keep-alive',
      'frontend bench',
      `  bind 127.0.0.1:${port}`,
      ...haproxyIdentityLines(dir, identity),
      '  default_backend backend',
      'backend backend',
      '  http-reuse always',
      // The same request headers the gateway adds, so every proxy does comparable work.
      '  option forwardfor',
      '  http-request set-header X-Forwarded-Proto http',
      '  http-request set-header X-Forwarded-Host %[req.hdr(host)]',
      '  http-request set-header X-Request-Id %[uuid]',
      `  server s1 127.0.0.1:${backendPort} maxconn 1000`,
      ...haproxyAgentLines(identity),
      '',
    ].join('\n'),
  );
  const child = start('haproxy', 'haproxy', ['-f', file, '-db'], 1, false, wrap?.prefix);
  await waitForPort(port, child, 'haproxy', wrap?.startTimeoutMs);
  return { child, port };
}

/**
 * nginx, one process (`master_process off`): bare (`nginx`), or running examples/nginx/nginx.conf
 * (`nginx+auth`: every request asks Gatehouse's forward-auth endpoint with auth_request, then goes to
 * the backend with the identity headers and the assertion), with only its addresses substituted.
 */
async function startNginx(backendPort: number, wrap?: Wrap, authzPort?: number): Promise<Running> {
  const port = await freePort();
  const dir = tempDir();
  mkdirSync(join(dir, 'temp'), { recursive: true });
  const file = join(dir, 'nginx.conf');
  const config =
    authzPort === undefined
      ? [
          'daemon off;',
          'worker_processes 1;',
          'pid nginx.pid;',
          'error_log stderr error;',
          'events { worker_connections 4096; }',
          'http {',
          '  access_log off;',
          '  client_body_temp_path temp/body;',
          '  proxy_temp_path temp/proxy;',
          `  upstream app { server 127.0.0.1:${backendPort}; keepalive 64; }`,
          '  server {',
          `    listen 127.0.0.1:${port};`,
          '    location / {',
          '      proxy_pass http://app;',
          '      proxy_http_version 1.1;',
          '      proxy_set_header Connection "";',
          '      proxy_set_header Host $http_host;',
          '      proxy_set_header X-Forwarded-Host $http_host;',
          '      proxy_set_header X-Forwarded-Proto $scheme;',
          '      proxy_set_header X-Forwarded-For $remote_addr;',
          '    }',
          '  }',
          '}',
        ].join('\n')
      : readFileSync(join(root, 'examples/nginx/nginx.conf'), 'utf8')
          .replaceAll('127.0.0.1:8000', `127.0.0.1:${port}`)
          .replaceAll('127.0.0.1:9100', `127.0.0.1:${authzPort}`)
          .replaceAll('127.0.0.1:9001', `127.0.0.1:${backendPort}`)
          .replace('error_log stderr notice;', 'error_log stderr error;');
  writeFileSync(file, `master_process off;\n${config}\n`);
  const child = start('nginx', 'nginx', ['-p', `${dir}/`, '-c', file], 1, false, wrap?.prefix);
  await waitForPort(port, child, 'nginx', wrap?.startTimeoutMs);
  return { child, port };
}

async function startPeer(
  name: string,
  backendPort: number,
  nodeFlags: readonly string[],
  wrap?: Wrap,
): Promise<Running> {
  const port = await freePort();
  const child = start(
    name,
    process.execPath,
    [
      ...nodeFlags,
      '--import',
      'tsx',
      join(root, `bench/peers/${name}.ts`),
      '--port',
      String(port),
      '--target',
      `http://127.0.0.1:${backendPort}`,
    ],
    1,
    false,
    wrap?.prefix,
  );
  await waitForPort(port, child, name, wrap?.startTimeoutMs);
  return { child, port };
}

// ---------------------------------------------------------------------------------------------
// Memory check: a large body streamed through the gateway in both directions.

async function streamDownload(url: string, timeoutMs: number): Promise<number> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  if (res.status !== 200 || !res.body) throw new Error(`download answered ${res.status}`);
  let bytes = 0;
  for await (const chunk of res.body) bytes += (chunk as Uint8Array).byteLength;
  return bytes;
}

async function streamUpload(port: number, size: number, timeoutMs: number): Promise<number> {
  const chunk = Buffer.alloc(64 * 1024, 'u');
  async function* body() {
    let left = size;
    while (left > 0) {
      const n = Math.min(left, chunk.length);
      left -= n;
      yield n === chunk.length ? chunk : chunk.subarray(0, n);
    }
  }
  return new Promise<number>((res, rej) => {
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        path: '/sink',
        method: 'POST',
        headers: { 'content-type': 'application/octet-stream', 'content-length': size },
        timeout: timeoutMs,
      },
      (response) => {
        let text = '';
        response.on('data', (d: Buffer) => {
          text += d.toString();
        });
        response.on('end', () => {
          if (response.statusCode !== 200) rej(new Error(`upload answered ${response.statusCode}: ${text}`));
          else res((JSON.parse(text) as { bytes: number }).bytes);
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('upload timed out')));
    req.on('error', rej);
    pipeline(Readable.from(body()), req).catch(rej);
  });
}

interface MemoryResult {
  bytes: number;
  baselineRssMiB: number;
  peakRssMiB: number;
  /** Highest RSS seen in the first and in the second half of the transfers. */
  firstHalfMaxRssMiB: number;
  secondHalfMaxRssMiB: number;
  downloadMiBps: number;
  uploadMiBps: number;
  /** RSS does not grow with the bytes streamed (second half within 16 MiB of the first). */
  flat: boolean;
  /** Peak RSS under 150 MiB. */
  underLimit: boolean;
}

/** Samples VmRSS every 100 ms while `work` runs; returns the samples in order. */
async function sampleRss<T>(pid: number, work: () => Promise<T>): Promise<{ result: T; samples: number[] }> {
  const samples: number[] = [];
  const timer = setInterval(() => {
    const kib = statusKiB(pid, 'VmRSS');
    if (kib !== undefined) samples.push(kib);
  }, 100);
  try {
    return { result: await work(), samples };
  } finally {
    clearInterval(timer);
  }
}

async function memoryCheck(backendPort: number, size: number): Promise<MemoryResult> {
  const gw = await startGatehouse(backendPort);
  try {
    const pid = gw.child.pid as number;
    // Let startup allocations settle, then take the baseline.
    await streamDownload(`http://127.0.0.1:${gw.port}/small`, 10_000);
    const baseline = statusKiB(pid, 'VmHWM') ?? 0;
    const budgetMs = Math.max(60_000, (size / (20 * 1024 * 1024)) * 1000);
    let t = performance.now();
    const down = await sampleRss(pid, () =>
      streamDownload(`http://127.0.0.1:${gw.port}/gen?bytes=${size}`, budgetMs),
    );
    const downS = (performance.now() - t) / 1000;
    if (down.result !== size)
      throw new Error(`download through gatehouse returned ${down.result} of ${size} bytes`);
    t = performance.now();
    const up = await sampleRss(pid, () => streamUpload(gw.port, size, budgetMs));
    const upS = (performance.now() - t) / 1000;
    if (up.result !== size)
      throw new Error(`upload through gatehouse delivered ${up.result} of ${size} bytes`);
    const peak = statusKiB(pid, 'VmHWM') ?? 0;
    const halves = [down.samples, up.samples].map((xs) => {
      const mid = Math.floor(xs.length / 2);
      return [Math.max(0, ...xs.slice(0, mid)), Math.max(0, ...xs.slice(mid))] as const;
    });
    const first = Math.max(...halves.map((h) => h[0]));
    const second = Math.max(...halves.map((h) => h[1]));
    return {
      bytes: size,
      baselineRssMiB: round(baseline / 1024, 1),
      peakRssMiB: round(peak / 1024, 1),
      firstHalfMaxRssMiB: round(first / 1024, 1),
      secondHalfMaxRssMiB: round(second / 1024, 1),
      downloadMiBps: round(size / 1048576 / downS, 0),
      uploadMiBps: round(size / 1048576 / upS, 0),
      // A streamed body must not be held: memory in the second half may not keep climbing.
      flat: halves.every(([a, b]) => b <= a + 16 * 1024),
      underLimit: peak / 1024 < 150,
    };
  } finally {
    await stop(gw.child);
  }
}

// ---------------------------------------------------------------------------------------------
// Token-cache misses: every request a different token, so every one is a signature check.

interface MissResult {
  algorithm: string;
  tokens: number;
  concurrency: number;
  ok: number;
  failed: number;
  statuses: Record<string, number>;
  seconds: number;
  /** Increase of gatehouse_token_verifications_total during the phase (all results, and `ok`). */
  verifications: number;
  verificationsOk: number;
  /** Verifications equal the number of distinct tokens. */
  verificationsMatch: boolean;
  signatureChecksPerSecond: number;
  cpuSeconds: number;
  cpuUsPerRequest: number;
  /** The same requests and client with one cached token: the hit baseline in identical conditions. */
  hitCpuUsPerRequest: number;
  /** Miss minus hit, per verification: the CPU of one signature check and its cache entry. */
  cpuUsPerVerification: number;
}

const MISS_CONCURRENCY = 8;

async function missPhase(backendPort: number, issuer: BenchIssuer, n: number): Promise<MissResult> {
  // The sender runs in this process: keep it off the gateway's CPU.
  if (canPin) execFileSync('taskset', ['-a', '-p', '-c', '0', String(process.pid)], { stdio: 'ignore' });
  const adminPort = await freePort();
  const gw = await startGatehouse(backendPort, { jwt: { issuer: issuer.issuer, adminPort } });
  try {
    await waitForPort(adminPort, gw.child, 'gatehouse+jwt admin');
    const pid = gw.child.pid as number;
    const url = `http://127.0.0.1:${gw.port}/small`;
    // Tokens are made before the phase, so signing costs nothing during it.
    const warm = await Promise.all(
      Array.from({ length: Math.min(n, 300) }, (_, i) => issuer.sign(`warm-${i}`)),
    );
    const tokens = await Promise.all(Array.from({ length: n }, (_, i) => issuer.sign(`miss-${i}`)));
    const cached = await issuer.sign('cached');
    // Warm-up: the JWKS fetch, and the JIT on both the miss and the hit paths.
    await sendTokens(url, warm, MISS_CONCURRENCY);
    await sendTokens(url, Array(Math.min(n, 300)).fill(cached), MISS_CONCURRENCY);

    let c0 = cpuTicks(pid);
    const hit = await sendTokens(url, Array(n).fill(cached), MISS_CONCURRENCY);
    const hitCpuS = (cpuTicks(pid) - c0) / clkTck;
    if (hit.failed > 0) throw new Error(`cached-token requests failed: ${JSON.stringify(hit.statuses)}`);

    const m0 = await tokenVerifications(adminPort);
    c0 = cpuTicks(pid);
    const t0 = performance.now();
    const miss = await sendTokens(url, tokens, MISS_CONCURRENCY);
    const seconds = (performance.now() - t0) / 1000;
    const cpuSeconds = (cpuTicks(pid) - c0) / clkTck;
    const m1 = await tokenVerifications(adminPort);
    const verifications = m1.total - m0.total;
    const cpuUsPerRequest = (cpuSeconds * 1e6) / n;
    const hitCpuUsPerRequest = (hitCpuS * 1e6) / n;
    return {
      algorithm: BENCH_ALG,
      tokens: n,
      concurrency: MISS_CONCURRENCY,
      ok: miss.ok,
      failed: miss.failed,
      statuses: miss.statuses,
      seconds: round(seconds, 2),
      verifications,
      verificationsOk: m1.ok - m0.ok,
      verificationsMatch: verifications === n,
      signatureChecksPerSecond: round(verifications / seconds, 0),
      cpuSeconds: round(cpuSeconds, 2),
      cpuUsPerRequest: round(cpuUsPerRequest, 1),
      hitCpuUsPerRequest: round(hitCpuUsPerRequest, 1),
      cpuUsPerVerification:
        verifications > 0
          ? round(((cpuUsPerRequest - hitCpuUsPerRequest) * n) / verifications, 1)
          : Number.NaN,
    };
  } finally {
    await stop(gw.child);
  }
}

// ---------------------------------------------------------------------------------------------
// Report

const SCENARIOS = ['small', '1MiB'] as const;
type Scenario = (typeof SCENARIOS)[number];

function urlOf(r: Running, scenario: Scenario): string {
  return `http://127.0.0.1:${r.port}${scenario === 'small' ? '/small' : '/1m'}`;
}

interface Row extends LoadResult {
  proxy: string;
  scenario: Scenario;
  /** The round (0-based) the measurement belongs to. */
  round: number;
  cpuUsPerRequest: number | undefined;
  cpuSeconds: number | undefined;
  /** Of `cpuUsPerRequest`, what the further processes spent (the SPOE agent of `haproxy+spoe`). */
  othersCpuUsPerRequest?: number | undefined;
}

/** A proxy and scenario over all rounds: medians, with the CPU range and every sample. */
interface Summary extends Omit<Row, 'round'> {
  rounds: number;
  cpuUsPerRequestMin: number | undefined;
  cpuUsPerRequestMax: number | undefined;
  samples: Row[];
}

function summarize(samples: Row[]): Summary {
  const first = samples[0]!;
  const cpu = samples.flatMap((r) => (r.cpuUsPerRequest === undefined ? [] : [r.cpuUsPerRequest]));
  const med = (pick: (r: Row) => number) => median(samples.map(pick));
  return {
    proxy: first.proxy,
    scenario: first.scenario,
    rounds: samples.length,
    requests: med((r) => r.requests),
    rps: med((r) => r.rps),
    p50Ms: med((r) => r.p50Ms),
    p99Ms: med((r) => r.p99Ms),
    errors: samples.reduce((a, r) => a + r.errors, 0),
    non2xx: samples.reduce((a, r) => a + r.non2xx, 0),
    cpuSeconds: round(
      med((r) => r.cpuSeconds ?? Number.NaN),
      2,
    ),
    cpuUsPerRequest: cpu.length > 0 ? round(median(cpu), 1) : undefined,
    cpuUsPerRequestMin: cpu.length > 0 ? Math.min(...cpu) : undefined,
    cpuUsPerRequestMax: cpu.length > 0 ? Math.max(...cpu) : undefined,
    samples,
  };
}

function fmt(n: number | undefined, digits = 1): string {
  return n === undefined || !Number.isFinite(n) ? '—' : n.toFixed(digits);
}

function ratio(a: number | undefined, b: number | undefined): string {
  return a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0
    ? '—'
    : `${(a / b).toFixed(2)}x`;
}

function fmtRatio(r: PairedRatio | undefined, withRange = false): string {
  if (r === undefined) return '—';
  return withRange && r.rounds > 1
    ? `${r.median.toFixed(2)}x (${r.min.toFixed(2)}–${r.max.toFixed(2)})`
    : `${r.median.toFixed(2)}x`;
}

/**
 * The markdown table; with several rounds, figures are medians, the CPU range is shown, and the ratios
 * are medians of the per-round ratios (`pairedRatio`).
 */
function table(summaries: Summary[], rows: readonly Row[]): string {
  const multi = summaries.some((r) => r.rounds > 1);
  const lines = [
    `| scenario | proxy | req/s | p50 ms | p99 ms | CPU µs/req${multi ? ' | CPU range' : ''} | CPU vs HAProxy | CPU vs node-http-proxy | errors |`,
    `|---|---|---:|---:|---:|---:${multi ? '|---:' : ''}|---:|---:|---:|`,
  ];
  for (const r of summaries) {
    const range = multi ? ` | ${fmt(r.cpuUsPerRequestMin)}–${fmt(r.cpuUsPerRequestMax)}` : '';
    const hap = pairedRatio(rows, r.scenario, r.proxy, 'haproxy');
    const nhp = pairedRatio(rows, r.scenario, r.proxy, 'node-http-proxy');
    lines.push(
      `| ${r.scenario} | ${r.proxy} | ${fmt(r.rps, 0)} | ${fmt(r.p50Ms, 2)} | ${fmt(r.p99Ms, 2)} | ${fmt(r.cpuUsPerRequest)}${range} | ${fmtRatio(hap)} | ${fmtRatio(nhp)} | ${r.errors + r.non2xx} |`,
    );
  }
  // The share of the further processes (the SPOE agent), median over the rounds.
  for (const r of summaries) {
    const parts = r.samples.flatMap((x) =>
      x.othersCpuUsPerRequest === undefined ? [] : [x.othersCpuUsPerRequest],
    );
    if (parts.length === 0) continue;
    const other = median(parts);
    const all = r.cpuUsPerRequest ?? Number.NaN;
    // The main process and the further one: the proxy and its Gatehouse, or Gatehouse and its Redis.
    const [front, back] = r.proxy.startsWith('nginx')
      ? ['nginx', 'Gatehouse']
      : r.proxy.startsWith('haproxy')
        ? ['HAProxy', 'Gatehouse']
        : ['Gatehouse', 'Redis'];
    lines.push(
      '',
      `${r.proxy}, ${r.scenario}: ${front} ${fmt(all - other)} µs/req + ${back} ${fmt(other)} µs/req (medians)`,
    );
  }
  return lines.join('\n');
}

/** The performance targets of a public route and of the identity route, each with its paired ratio. */
const TARGETS: readonly { label: string; scenario: Scenario; proxy: string; base: string; max: number }[] = [
  // Only with --baseline: this build may cost at most 3% more than the baseline build.
  {
    label: 'against the baseline, small',
    scenario: 'small',
    proxy: 'gatehouse',
    base: 'baseline',
    max: 1.03,
  },
  { label: 'against the baseline, 1 MiB', scenario: '1MiB', proxy: 'gatehouse', base: 'baseline', max: 1.03 },
  {
    label: 'against the baseline, identity',
    scenario: 'small',
    proxy: 'gatehouse+jwt',
    base: 'baseline+jwt',
    max: 1.03,
  },
  { label: 'public route, small', scenario: 'small', proxy: 'gatehouse', base: 'haproxy', max: 2.5 },
  { label: 'public route, small', scenario: 'small', proxy: 'gatehouse', base: 'node-http-proxy', max: 0.7 },
  { label: 'public route, 1 MiB', scenario: '1MiB', proxy: 'gatehouse', base: 'haproxy', max: 2.5 },
  { label: 'public route, 1 MiB', scenario: '1MiB', proxy: 'gatehouse', base: 'node-http-proxy', max: 0.7 },
  { label: 'identity overhead', scenario: 'small', proxy: 'gatehouse+jwt', base: 'gatehouse', max: 1.2 },
  // A rate limit and a quota on the identity route, counted in the memory store.
  {
    label: 'rate limit + quota (memory store)',
    scenario: 'small',
    proxy: 'gatehouse+limits',
    base: 'gatehouse+jwt',
    max: 1.15,
  },
  { label: 'identity route', scenario: 'small', proxy: 'gatehouse+jwt', base: 'haproxy', max: 2.5 },
  {
    label: 'identity route, same requests',
    scenario: 'small',
    proxy: 'gatehouse+jwt',
    base: 'haproxy+bearer',
    max: 2.5,
  },
  // HAProxy with the Gatehouse SPOE agent (identity, policy, identity headers, assertion) against
  // HAProxy's own jwt_verify (a signature check only), on the same requests; CPU of HAProxy + agent.
  {
    label: 'HAProxy + SPOE agent, same requests',
    scenario: 'small',
    proxy: 'haproxy+spoe',
    base: 'haproxy+jwt_verify',
    max: 0.6,
  },
];

interface TargetResult {
  label: string;
  scenario: Scenario;
  proxy: string;
  base: string;
  max: number;
  ratio: PairedRatio;
  met: boolean;
}

function targetResults(rows: readonly Row[]): TargetResult[] {
  return TARGETS.flatMap((t) => {
    const ratio = pairedRatio(rows, t.scenario, t.proxy, t.base);
    return ratio === undefined ? [] : [{ ...t, ratio, met: ratio.median <= t.max }];
  });
}

/** Ratios reported without a target: what each companion mode costs over its proxy alone. */
const COMPARISONS: readonly { label: string; scenario: Scenario; proxy: string; base: string }[] = [
  {
    label: 'rate limit + quota in Redis (gateway + Redis) over no limits',
    scenario: 'small',
    proxy: 'gatehouse+limits+redis',
    base: 'gatehouse+jwt',
  },
  {
    label: 'HAProxy + SPOE agent over bare HAProxy',
    scenario: 'small',
    proxy: 'haproxy+spoe',
    base: 'haproxy',
  },
  { label: 'nginx + forward-auth over bare nginx', scenario: 'small', proxy: 'nginx+auth', base: 'nginx' },
  {
    label: 'HAProxy + SPOE agent over Gatehouse alone',
    scenario: 'small',
    proxy: 'haproxy+spoe',
    base: 'gatehouse+jwt',
  },
  {
    label: 'nginx + forward-auth over Gatehouse alone',
    scenario: 'small',
    proxy: 'nginx+auth',
    base: 'gatehouse+jwt',
  },
];

/** The proxies whose load carries the bench's bearer token. */
const BEARER_PROXIES = new Set([
  'gatehouse+jwt',
  'gatehouse+limits',
  'gatehouse+limits+redis',
  'haproxy+bearer',
  'baseline+jwt',
  'haproxy+spoe',
  'haproxy+jwt_verify',
  'nginx+auth',
]);

// ---------------------------------------------------------------------------------------------

/** An OTLP/HTTP trace receiver in the bench process (not on the proxies' CPU): counts what it gets. */
interface OtlpReceiver {
  url: string;
  exports: number;
  spans: number;
  close(): Promise<void>;
}

async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const receiver: OtlpReceiver = { url: '', exports: 0, spans: 0, close: async () => {} };
  const server = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      receiver.exports++;
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString()) as {
          resourceSpans?: Array<{ scopeSpans?: Array<{ spans?: unknown[] }> }>;
        };
        for (const rs of body.resourceSpans ?? [])
          for (const ss of rs.scopeSpans ?? []) receiver.spans += ss.spans?.length ?? 0;
      } catch {
        // Counted as an export all the same; the span count then says something is wrong.
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  receiver.url = `http://127.0.0.1:${(server.address() as { port: number }).port}/v1/traces`;
  receiver.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return receiver;
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  const notes: string[] = [];
  if (!canPin) notes.push('taskset or a second CPU is missing: processes are not pinned');
  if (opts.peerNodeFlags.length > 0)
    notes.push(`minimal-undici and node-http-proxy ran with node ${opts.peerNodeFlags.join(' ')}`);
  if (!haveWrk)
    notes.push(
      'wrk is missing (apt-get install wrk): using autocannon, whose own CPU use competes with the proxy',
    );
  const wanted = [...opts.proxies];
  if (wanted.some((p) => p.startsWith('haproxy')) && !haveCommand('haproxy')) {
    process.stderr.write(
      '\n*** bench: HAProxy is not installed: SKIPPING HAProxy (install it with: apt-get install haproxy) ***\n\n',
    );
    notes.push('HAProxy skipped: not installed (apt-get install haproxy)');
    for (const p of ['haproxy', 'haproxy+bearer', 'haproxy+spoe', 'haproxy+jwt_verify'])
      if (wanted.includes(p)) wanted.splice(wanted.indexOf(p), 1);
  }
  if (wanted.includes('gatehouse+limits+redis') && !haveCommand('redis-server')) {
    process.stderr.write(
      '\n*** bench: redis-server is not installed: SKIPPING gatehouse+limits+redis (apt-get install redis-server) ***\n\n',
    );
    notes.push('gatehouse+limits+redis skipped: redis-server not installed (apt-get install redis-server)');
    wanted.splice(wanted.indexOf('gatehouse+limits+redis'), 1);
  }
  if (wanted.some((p) => p.startsWith('nginx')) && !haveCommand('nginx')) {
    process.stderr.write(
      '\n*** bench: nginx is not installed: SKIPPING nginx (install it with: apt-get install nginx) ***\n\n',
    );
    notes.push('nginx skipped: not installed (apt-get install nginx)');
    for (const p of ['nginx', 'nginx+auth']) if (wanted.includes(p)) wanted.splice(wanted.indexOf(p), 1);
  }
  const proxies = opts.loadTests ? wanted : [];
  if (opts.instructions > 0 && !haveCallgrind()) {
    throw new Error('--instructions needs valgrind (apt-get install valgrind)');
  }
  const counted = opts.instructions > 0 ? wanted : [];

  process.stdout.write(
    `bench: ${opts.connections} connections, ${opts.durationS}s per run (+${opts.warmupS}s warm-up), ` +
      `${opts.rounds} round${opts.rounds === 1 ? '' : 's'}, ` +
      `${cpus().length} CPUs, CLK_TCK ${clkTck}, node ${process.version}\n`,
  );

  const backendPort = await freePort();
  const backend = start(
    'backend',
    process.execPath,
    ['--import', 'tsx', join(root, 'bench/backend.ts'), '--port', String(backendPort)],
    0,
  );
  await waitForPort(backendPort, backend, 'backend');
  // Warm the backend's JIT on both paths first: a cold backend serves the first proxy's run more
  // slowly, and a proxy that gets fewer requests per wake-up spends more CPU on each.
  if (opts.warmupS > 0 && proxies.length > 0) {
    for (const path of ['/small', '/1m']) {
      await runLoad(`http://127.0.0.1:${backendPort}${path}`, opts.connections, opts.warmupS);
    }
  }

  // The token issuer of `gatehouse+jwt`, and the one long-lived token wrk sends (to `haproxy+bearer` too).
  let issuer: BenchIssuer | undefined;
  let bearer: Record<string, string> = {};
  if ([...proxies, ...counted].some((p) => BEARER_PROXIES.has(p))) {
    issuer = await startBenchIssuer();
    bearer = { Authorization: `Bearer ${await issuer.sign('wrk')}` };
  }

  const rows: Row[] = [];
  const failed = new Set<string>();
  /** The OTLP/HTTP receiver of `gatehouse+tracing`, started with it. */
  let otlp: OtlpReceiver | undefined;
  /** The request headers a proxy's load carries: the bearer token for the two identity comparisons. */
  const headersFor = (proxy: string): Record<string, string> => (BEARER_PROXIES.has(proxy) ? bearer : {});
  async function startProxy(proxy: string, wrap?: Wrap): Promise<Running> {
    if (proxy === 'gatehouse' || proxy === 'gatehouse+log' || proxy === 'gatehouse+jwt') {
      const jwt =
        proxy === 'gatehouse+jwt' && issuer
          ? { issuer: issuer.issuer, adminPort: await freePort() }
          : undefined;
      const gw = await startGatehouse(backendPort, { accessLog: proxy === 'gatehouse+log', jwt, wrap });
      if (!notes.includes(`gatehouse ran as ${gw.note}`)) notes.push(`gatehouse ran as ${gw.note}`);
      return gw;
    }
    if (proxy === 'gatehouse+tracing') {
      otlp ??= await startOtlpReceiver();
      return startGatehouse(backendPort, { wrap, tracingEndpoint: otlp.url });
    }
    if (proxy === 'gatehouse+audit' || proxy === 'gatehouse+log+audit')
      return startGatehouse(backendPort, { wrap, audit: true, accessLog: proxy === 'gatehouse+log+audit' });
    if ((proxy === 'gatehouse+limits' || proxy === 'gatehouse+limits+redis') && issuer) {
      const jwt = { issuer: issuer.issuer, adminPort: await freePort() };
      if (proxy === 'gatehouse+limits') {
        const gw = await startGatehouse(backendPort, { jwt, wrap, limits: { store: 'memory' } });
        return gw;
      }
      // Redis runs on the proxies' CPU and counts with the gateway: the whole deployment's cost.
      const redisPort = await freePort();
      const redis = start(
        'redis',
        'redis-server',
        ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
        1,
        true,
      );
      await waitForPort(redisPort, redis, 'redis-server');
      const gw = await startGatehouse(backendPort, {
        jwt,
        wrap,
        limits: { store: `redis://127.0.0.1:${redisPort}/0` },
      });
      return { ...gw, others: [redis] };
    }
    if (proxy === 'baseline' || proxy === 'baseline+jwt') {
      const jwt =
        proxy === 'baseline+jwt' && issuer
          ? { issuer: issuer.issuer, adminPort: await freePort() }
          : undefined;
      const gw = await startGatehouse(backendPort, { jwt, wrap, baseline: opts.baseline });
      if (!notes.includes(`baseline ran as ${gw.note}`)) notes.push(`baseline ran as ${gw.note}`);
      return gw;
    }
    if (proxy === 'haproxy' || proxy === 'haproxy+bearer') return startHaproxy(backendPort, wrap);
    if (proxy === 'haproxy+spoe' && issuer) {
      // The whole deployment on the proxies' CPU: HAProxy and the Gatehouse agent it asks.
      const agentPort = await freePort();
      const agent = await startGatehouse(backendPort, {
        jwt: { issuer: issuer.issuer, adminPort: await freePort() },
        wrap,
        spoePort: agentPort,
      });
      const h = await startHaproxy(backendPort, wrap, { spoe: { agentPort } });
      return { ...h, others: [agent.child] };
    }
    if (proxy === 'nginx') return startNginx(backendPort, wrap);
    if (proxy === 'nginx+auth' && issuer) {
      const authzPort = await freePort();
      const authz = await startGatehouse(backendPort, {
        jwt: { issuer: issuer.issuer, adminPort: await freePort() },
        wrap,
        forwardAuthPort: authzPort,
      });
      const n = await startNginx(backendPort, wrap, authzPort);
      return { ...n, others: [authz.child] };
    }
    if (proxy === 'haproxy+jwt_verify' && issuer)
      return startHaproxy(backendPort, wrap, { jwtPem: issuer.publicPem });
    return startPeer(proxy, backendPort, opts.peerNodeFlags, wrap);
  }
  /**
   * The load phase. Every proxy is started once. For each scenario, every proxy is warmed up on it,
   * then each round measures every proxy on it, one after the other in an order shuffled each round.
   * Measurements of one round lie seconds apart, so a ratio between two of them (`pairedRatio`) is
   * little affected by how busy the machine is, which drifts over minutes.
   */
  const running = new Map<string, Running>();
  for (const proxy of proxies) {
    try {
      running.set(proxy, await startProxy(proxy));
    } catch (err) {
      fail(proxy, err);
    }
  }
  function fail(proxy: string, err: unknown): void {
    process.stderr.write(`bench: ${proxy} failed: ${(err as Error).message}\n`);
    notes.push(`${proxy} failed: ${(err as Error).message.split('\n')[0]}`);
    failed.add(proxy);
  }
  async function measure(proxy: string, scenario: Scenario, roundIndex: number): Promise<void> {
    const r = running.get(proxy);
    if (r === undefined || failed.has(proxy)) return;
    try {
      const pids = pidsOf(r);
      const otherPids = pids.slice(1);
      const before = cpuTicks(...pids);
      const othersBefore = otherPids.length > 0 ? cpuTicks(...otherPids) : 0;
      const load = await runLoad(urlOf(r, scenario), opts.connections, opts.durationS, headersFor(proxy));
      const cpuSeconds = (cpuTicks(...pids) - before) / clkTck;
      const othersSeconds = otherPids.length > 0 ? (cpuTicks(...otherPids) - othersBefore) / clkTck : 0;
      for (const c of [r.child, ...(r.others ?? [])]) {
        if (c.exitCode !== null || c.signalCode !== null)
          throw new Error(`exited during the run (${c.exitCode ?? c.signalCode})`);
      }
      if (load.requests === 0) throw new Error('no response during the run');
      // A proxy may go on working after the load stops (responses to connections that wrk closed, still
      // being read from the backend). The next measurement starts when it and the backend are idle.
      await waitIdle([...pids, backend.pid as number]);
      const row: Row = {
        proxy,
        scenario,
        round: roundIndex,
        ...load,
        cpuSeconds: round(cpuSeconds, 2),
        cpuUsPerRequest: load.requests > 0 ? round((cpuSeconds * 1e6) / load.requests, 1) : undefined,
      };
      if (otherPids.length > 0 && load.requests > 0)
        row.othersCpuUsPerRequest = round((othersSeconds * 1e6) / load.requests, 1);
      rows.push(row);
      process.stdout.write(
        `  ${proxy.padEnd(16)} ${scenario.padEnd(5)} ${fmt(load.rps, 0).padStart(8)} req/s  p50 ${fmt(load.p50Ms, 2)} ms  p99 ${fmt(load.p99Ms, 2)} ms  CPU ${fmt(row.cpuUsPerRequest)} µs/req${row.othersCpuUsPerRequest === undefined ? '' : ` (of which ${proxy.startsWith('gatehouse') ? 'Redis' : 'the agent'} ${fmt(row.othersCpuUsPerRequest)})`}\n`,
      );
    } catch (err) {
      fail(proxy, err);
    }
  }
  for (const scenario of SCENARIOS) {
    for (const [proxy, r] of running) {
      if (opts.warmupS <= 0 || failed.has(proxy)) continue;
      try {
        await runLoad(urlOf(r, scenario), opts.connections, opts.warmupS, headersFor(proxy));
      } catch (err) {
        fail(proxy, err);
      }
    }
    for (let r = 0; r < opts.rounds; r++) {
      if (opts.rounds > 1) process.stdout.write(`  ${scenario}: round ${r + 1} of ${opts.rounds}\n`);
      // Shuffled each round (the same shuffles every run), so that no proxy always runs first or always
      // after the same neighbour, as a plain rotation would have it.
      for (const proxy of roundOrder(proxies, r)) await measure(proxy, scenario, r);
    }
  }
  await Promise.all([...running.values()].flatMap((x) => [x.child, ...(x.others ?? [])].map((c) => stop(c))));

  // One summary per proxy and scenario, in the order proxies were given.
  const summaries: Summary[] = [];
  for (const proxy of proxies) {
    for (const scenario of ['small', '1MiB'] as const) {
      const samples = rows.filter((x) => x.proxy === proxy && x.scenario === scenario);
      if (samples.length > 0) summaries.push(summarize(samples));
    }
  }

  let miss: MissResult | undefined;
  if (issuer && opts.missTokens > 0 && !failed.has('gatehouse+jwt')) {
    process.stdout.write(
      `  token-cache misses: ${opts.missTokens} distinct tokens through gatehouse+jwt, concurrency ${MISS_CONCURRENCY}…\n`,
    );
    try {
      miss = await missPhase(backendPort, issuer, opts.missTokens);
    } catch (err) {
      process.stderr.write(`bench: token-cache miss phase failed: ${(err as Error).message}\n`);
      notes.push(`token-cache miss phase failed: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  let memory: MemoryResult | undefined;
  if (opts.memory && opts.proxies.includes('gatehouse')) {
    process.stdout.write(
      `  memory: streaming ${(opts.memoryBytes / 1048576).toFixed(0)} MiB through gatehouse, down and up…\n`,
    );
    const note = `gatehouse ran as ${gatehouseCommand().note}`;
    if (!notes.includes(note)) notes.push(note);
    try {
      memory = await memoryCheck(backendPort, opts.memoryBytes);
    } catch (err) {
      process.stderr.write(`bench: memory check failed: ${(err as Error).message}\n`);
      notes.push(`memory check failed: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  // Instruction counts: the proxies one after the other under callgrind, small responses only.
  const instructions: ({ proxy: string } & InstructionCount)[] = [];
  for (const proxy of counted) {
    process.stdout.write(
      `  instructions: ${proxy} under callgrind, ${opts.instructions} requests after ${2 * opts.instructions} warm-up…\n`,
    );
    const dir = tempDir();
    let running: Running | undefined;
    try {
      running = await startProxy(proxy, { prefix: callgrindPrefix(dir), startTimeoutMs: 180_000 });
      const headers = headersFor(proxy);
      const perRequest = await instructionsPerRequest(
        running.child.pid as number,
        dir,
        `http://127.0.0.1:${running.port}/small`,
        headers,
        opts.instructions,
      );
      instructions.push({ proxy, ...perRequest });
      process.stdout.write(
        `  instructions: ${proxy} ${perRequest.main.toLocaleString('en-US')} per request on the main thread, ${perRequest.all.toLocaleString('en-US')} on all threads\n`,
      );
    } catch (err) {
      process.stderr.write(`bench: instruction count of ${proxy} failed: ${(err as Error).message}\n`);
      notes.push(`instruction count of ${proxy} failed: ${(err as Error).message.split('\n')[0]}`);
    } finally {
      await stop(running?.child);
    }
  }
  await issuer?.close();
  await stop(backend);
  await otlp?.close();

  let report = summaries.length > 0 ? `\n${table(summaries, rows)}\n` : '';
  const targets = targetResults(rows);
  if (targets.length > 0) {
    report += `\nTargets (CPU per request; median of the per-round ratios, lowest–highest round):\n`;
    for (const t of targets) {
      report += `- ${t.label}: ${t.proxy} / ${t.base} = ${fmtRatio(t.ratio, true)}, target ≤ ${t.max} — ${t.met ? 'met' : 'NOT met'}\n`;
    }
  }
  const comparisons = COMPARISONS.flatMap((c) => {
    const ratio = pairedRatio(rows, c.scenario, c.proxy, c.base);
    return ratio === undefined ? [] : [{ ...c, ratio }];
  });
  if (comparisons.length > 0) {
    report += `\nCompanion modes (CPU per request of the whole: proxy + Gatehouse; paired ratios):\n`;
    for (const c of comparisons)
      report += `- ${c.label}: ${c.proxy} / ${c.base} = ${fmtRatio(c.ratio, true)}\n`;
  }
  const audited = (['small', '1MiB'] as const).flatMap((scenario) =>
    (['gatehouse+log', 'gatehouse+audit', 'gatehouse+log+audit'] as const).flatMap((proxy) => {
      const ratio = pairedRatio(rows, scenario, proxy, 'gatehouse');
      return ratio === undefined ? [] : [`- ${scenario}: ${proxy} / gatehouse = ${fmtRatio(ratio, true)}`];
    }),
  );
  if (audited.length > 0)
    report += `\nAccess log (stdout) and audit trail (every decision to a hash-chained file, fsync never) on, over both off (CPU per request; paired ratios):\n${audited.join('\n')}\n`;
  const traced = (['small', '1MiB'] as const).flatMap((scenario) => {
    const ratio = pairedRatio(rows, scenario, 'gatehouse+tracing', 'gatehouse');
    return ratio === undefined
      ? []
      : [`- ${scenario}: gatehouse+tracing / gatehouse = ${fmtRatio(ratio, true)}`];
  });
  if (traced.length > 0 && otlp !== undefined) {
    report += `\nTracing on (every request sampled; ${otlp.spans} spans in ${otlp.exports} OTLP/HTTP exports received) over off (CPU per request; paired ratios):\n${traced.join('\n')}\n`;
  }
  if (miss) {
    report +=
      `\nToken-cache misses: ${miss.tokens} distinct ${miss.algorithm} tokens, concurrency ${miss.concurrency}, ` +
      `${miss.seconds} s: ${miss.verifications} signature checks (${miss.verificationsOk} ok; ` +
      `${miss.verificationsMatch ? '= the number of distinct tokens' : `EXPECTED ${miss.tokens}`}), ` +
      `${miss.signatureChecksPerSecond} signature checks/s; CPU ${fmt(miss.cpuUsPerRequest)} µs/request ` +
      `vs ${fmt(miss.hitCpuUsPerRequest)} µs/request with one cached token → ${fmt(miss.cpuUsPerVerification)} µs CPU ` +
      `per verification; ${miss.failed} errors/non-2xx\n`;
  }
  if (memory) {
    report +=
      `\nMemory: ${(memory.bytes / 1048576).toFixed(0)} MiB streamed down (${memory.downloadMiBps} MiB/s) and up ` +
      `(${memory.uploadMiBps} MiB/s) through gatehouse: peak RSS ${memory.peakRssMiB} MiB ` +
      `(${memory.underLimit ? 'under' : 'OVER'} 150 MiB; baseline ${memory.baselineRssMiB} MiB), ` +
      `max RSS in the first half ${memory.firstHalfMaxRssMiB} MiB, in the second half ${memory.secondHalfMaxRssMiB} MiB ` +
      `— ${memory.flat ? 'flat' : 'NOT flat: memory grows with the body'}\n`;
  }
  if (instructions.length > 0) {
    const of = (p: string) => instructions.find((x) => x.proxy === p);
    report += `\nUser-space instructions per request (callgrind, small responses, ${opts.instructions} requests; ratios of the main thread's):\n`;
    report +=
      '| proxy | main thread | all threads | vs HAProxy | vs node-http-proxy |\n|---|---:|---:|---:|---:|\n';
    for (const x of instructions) {
      report += `| ${x.proxy} | ${x.main.toLocaleString('en-US')} | ${x.all.toLocaleString('en-US')} | ${ratio(x.main, of('haproxy')?.main)} | ${ratio(x.main, of('node-http-proxy')?.main)} |\n`;
    }
  }
  if (notes.length > 0) report += `\nNotes:\n${notes.map((n) => `- ${n}`).join('\n')}\n`;
  process.stdout.write(report);

  const outDir = join(root, '.bench');
  mkdirSync(outDir, { recursive: true });
  const versions: Record<string, string> = { node: process.version };
  try {
    versions.haproxy = execFileSync('haproxy', ['-v'], { encoding: 'utf8' }).split('\n')[0] ?? '';
  } catch {}
  writeFileSync(
    join(outDir, 'results.json'),
    `${JSON.stringify(
      {
        date: new Date().toISOString(),
        machine: { cpus: cpus().length, model: cpus()[0]?.model, pinned: canPin },
        versions,
        loadGenerator: haveWrk ? 'wrk' : 'autocannon',
        options: {
          durationS: opts.durationS,
          warmupS: opts.warmupS,
          connections: opts.connections,
          rounds: opts.rounds,
        },
        // Medians over the rounds (one round: the run itself); every run is in `samples`.
        results: summaries,
        // Ratios of CPU per request: per round, then the median (see pairedRatio).
        targets,
        tokenCacheMisses: miss,
        memory,
        instructions:
          instructions.length > 0 ? { requests: opts.instructions, perRequest: instructions } : undefined,
        notes,
      },
      null,
      2,
    )}\n`,
  );
  process.stdout.write(`\nresults written to .bench/results.json\n`);
}

main()
  .catch((err: unknown) => {
    process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  })
  .finally(() => stopAll());

/**
 * The `gatehouse` command: start, check, explain, demo, version, help. User errors (an invalid or
 * missing configuration, bad arguments) print a clear message without a stack trace.
 * Exit codes: 0 success, 1 invalid configuration or failure, 2 usage error.
 */
import { readFileSync } from 'node:fs';
import type { ConfigProblem } from '../errors.js';
import { ConfigError, formatProblem } from '../errors.js';

/** Where the command writes; replaceable for tests. */
export interface CliIo {
  out(text: string): void;
  err(text: string): void;
}

const processIo: CliIo = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
};

const USAGE = `Usage: gatehouse <command> [options]

Commands:
  start -c FILE                     run the gateway with the configuration FILE
  check -c FILE                     validate FILE and run its policy tests (exit 0 valid, 1 invalid)
  explain -c FILE [--as 'email=alice@example.com,groups=data-eng'] METHOD URL
                                    show which route and upstream a request would take (offline)
  demo [--port N]                   start a self-contained demo with sample backends
  version                           print the version
  help                              print this help

Options:
  -c, --config FILE                 the configuration file
  -h, --help                        print this help
`;

/** Raised for bad command-line arguments (exit 2). */
class UsageError extends Error {}

interface Parsed {
  config: string | undefined;
  as: string | undefined;
  positional: string[];
}

function parseArgs(args: string[], allowed: ReadonlySet<string>): Parsed {
  const parsed: Parsed = { config: undefined, as: undefined, positional: [] };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    const inline = eq > 0 ? arg.slice(eq + 1) : undefined;
    const value = (): string => {
      if (inline !== undefined) return inline;
      const next = args[++i];
      if (next === undefined) throw new UsageError(`${name} needs a value`);
      return next;
    };
    if (arg === '--') {
      parsed.positional.push(...args.slice(i + 1));
      break;
    }
    if ((name === '-c' || name === '--config') && allowed.has('config')) parsed.config = value();
    else if (name === '--as' && allowed.has('as')) parsed.as = value();
    else if (arg.startsWith('-') && arg.length > 1) throw new UsageError(`unknown option ${arg}`);
    else parsed.positional.push(arg);
  }
  return parsed;
}

function requireConfig(p: Parsed, command: string): string {
  if (!p.config) throw new UsageError(`${command} needs -c FILE`);
  return p.config;
}

/** The package version from package.json. */
export function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

/** Runs the command line; resolves with the exit code. */
export async function main(argv: string[], io: CliIo = processIo): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'start':
        return await start(parseArgs(rest, new Set(['config'])), io);
      case 'check':
        return await check(parseArgs(rest, new Set(['config'])), io);
      case 'explain':
        return await explain(parseArgs(rest, new Set(['config', 'as'])), io);
      case 'demo': {
        const { runDemo } = await import('../demo/index.js');
        return await runDemo(rest);
      }
      case 'version':
      case '--version':
      case '-v':
        io.out(`gatehouse ${version()}\n`);
        return 0;
      case 'help':
      case '--help':
      case '-h':
        io.out(USAGE);
        return 0;
      case undefined:
        io.err(USAGE);
        return 2;
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`gatehouse: ${err.message}\n\n${USAGE}`);
      return 2;
    }
    if (err instanceof ConfigError) {
      printProblems(io, err.problems);
      return 1;
    }
    const e = err as NodeJS.ErrnoException;
    // Operational failures (a port in use, a missing file) are reported in one line.
    io.err(`gatehouse: ${e?.message ?? String(err)}\n`);
    return 1;
  }
}

function printProblems(io: CliIo, problems: readonly ConfigProblem[]): void {
  for (const p of problems) io.err(`${formatProblem(p)}\n`);
}

function printWarnings(io: CliIo, warnings: readonly ConfigProblem[]): void {
  for (const w of warnings) io.err(`${w.file}: ${w.path || '(root)'}: warning: ${w.message}\n`);
}

async function start(p: Parsed, io: CliIo): Promise<number> {
  const file = requireConfig(p, 'start');
  if (p.positional.length > 0) throw new UsageError(`unexpected argument ${p.positional[0]}`);
  const { ClusterPrimary, isClusterWorker, resolveWorkers } = await import('../cluster.js');
  if (isClusterWorker()) {
    // Forked by a cluster primary with this same command line: run the data plane only.
    const { runWorker } = await import('../cluster-worker.js');
    return await runWorker(file);
  }
  const { loadConfig } = await import('../config/load.js');
  const loaded = await loadConfig(file);
  const workers = loaded.ok ? resolveWorkers(loaded.config.server.workers) : 1;
  const { Gateway } = await import('../gateway.js');
  try {
    if (loaded.ok && workers > 1) {
      // The primary exits the process itself on SIGTERM/SIGINT once every worker drained.
      await ClusterPrimary.start({ configFile: file, loaded, workers });
      return await new Promise<number>(() => {});
    }
    // The gateway exits the process itself on SIGTERM/SIGINT once drained. An invalid configuration is
    // reported by Gateway.start (ConfigError, below).
    await Gateway.start({ configFile: file, signals: true });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    printProblems(io, err.problems);
    io.err(`${file}: configuration is invalid, not starting\n`);
    return 1;
  }
  return await new Promise<number>(() => {});
}

async function check(p: Parsed, io: CliIo): Promise<number> {
  const file = requireConfig(p, 'check');
  if (p.positional.length > 0) throw new UsageError(`unexpected argument ${p.positional[0]}`);
  const { loadConfig } = await import('../config/load.js');
  const loaded = await loadConfig(file);
  printWarnings(io, loaded.warnings);
  if (!loaded.ok) {
    printProblems(io, loaded.problems);
    io.err(`${file}: ${loaded.problems.length} problem(s) found\n`);
    return 1;
  }
  const { compileRoutes } = await import('../core/routes.js');
  try {
    compileRoutes(loaded.config);
  } catch (err) {
    printProblems(io, [{ file, path: 'routes', message: (err as Error).message }]);
    return 1;
  }
  const { config } = loaded;
  if (config.tests.length > 0) {
    printWarnings(io, [
      {
        file,
        path: 'tests',
        message: `${config.tests.length} policy test(s) not run: policy evaluation is not yet supported`,
      },
    ]);
  }
  io.out(`${file}: ok (${config.routes.length} routes, ${Object.keys(config.upstreams).length} upstreams)\n`);
  return 0;
}

/** Parses `--as 'email=alice@example.com,groups=data-eng|ops'` into claims. */
export function parseIdentity(text: string): Record<string, string | string[]> {
  const claims: Record<string, string | string[]> = {};
  for (const part of text.split(',')) {
    const trimmed = part.trim();
    if (trimmed === '') continue;
    const eq = trimmed.indexOf('=');
    if (eq <= 0) throw new UsageError(`--as: expected key=value, got "${trimmed}"`);
    const key = trimmed.slice(0, eq).trim();
    const value = trimmed.slice(eq + 1).trim();
    const values = value.split('|').filter((v) => v !== '');
    const existing = claims[key];
    if (key === 'groups' || existing !== undefined) {
      claims[key] = [
        ...(existing === undefined ? [] : Array.isArray(existing) ? existing : [existing]),
        ...values,
      ];
    } else {
      claims[key] = value;
    }
  }
  return claims;
}

async function explain(p: Parsed, io: CliIo): Promise<number> {
  const file = requireConfig(p, 'explain');
  const [methodArg, url, extra] = p.positional;
  if (methodArg === undefined || url === undefined) throw new UsageError('explain needs METHOD URL');
  if (extra !== undefined) throw new UsageError(`unexpected argument ${extra}`);
  const method = methodArg.toUpperCase();
  if (!/^[A-Z]+$/.test(method)) throw new UsageError(`invalid method "${methodArg}"`);
  if (!URL.canParse(url)) throw new UsageError(`invalid URL "${url}" (expected e.g. https://host/path)`);
  const claims = p.as !== undefined ? parseIdentity(p.as) : undefined;

  const { loadConfig } = await import('../config/load.js');
  // Routing does not need secrets: a config can be explained without its certificates and tokens.
  const loaded = await loadConfig(file, process.env, { checkSecrets: false });
  if (!loaded.ok) {
    printProblems(io, loaded.problems);
    return 1;
  }
  const { compileRoutes } = await import('../core/routes.js');
  const { normalizeHost, normalizePath } = await import('../core/normalize.js');
  const target = new URL(url);
  const lines: string[] = [`request: ${method} ${url}`];
  let normalized: { path: string; query: string };
  try {
    // The raw target as a client would send it: WHATWG URL parsing would already resolve `%2e%2e`.
    const raw = (/^[a-z][a-z0-9+.-]*:\/\/[^/?#]*([^#]*)/i.exec(url)?.[1] ?? '') || '/';
    normalized = normalizePath(raw.startsWith('/') ? raw : `/${raw}`, method);
  } catch (err) {
    io.out(`${lines[0]}\ndecision: reject (400): ${(err as Error).message}\n`);
    return 0;
  }
  const table = compileRoutes(loaded.config);
  const route = table.match({
    method,
    host: normalizeHost(target.host),
    path: normalized.path,
    query: normalized.query,
    headers: { host: target.host },
    clientIp: '127.0.0.1',
    tls: target.protocol === 'https:',
  });
  if (claims) lines.push(`identity: ${JSON.stringify(claims)}`);
  if (!route) {
    lines.push('route: none', 'decision: 404 (no route matches this request)');
    io.out(`${lines.join('\n')}\n`);
    return 0;
  }
  const rc = route.config;
  lines.push(`route: ${route.name}`);
  if (rc.split) {
    const total = rc.split.targets.reduce((n, t) => n + t.weight, 0);
    const parts = rc.split.targets.map(
      (t) => `${t.upstream} (${total > 0 ? Math.round((t.weight / total) * 100) : 0}%)`,
    );
    lines.push(`upstream: split between ${parts.join(', ')}`);
    if (rc.split.pinHeader) lines.push(`pin header: ${rc.split.pinHeader}`);
  } else {
    const upstream = rc.upstream ?? '';
    const servers = loaded.config.upstreams[upstream]?.servers.map((s) => s.url).join(', ');
    lines.push(`upstream: ${upstream}${servers ? ` (${servers})` : ''}`);
  }
  if (rc.public) {
    lines.push('decision: allow (public route)');
  } else {
    const policy =
      typeof rc.policy === 'string' ? `policy "${rc.policy}"` : rc.policy ? 'inline policy' : 'no policy';
    lines.push(`policy: ${policy}`);
    lines.push('identity decision: not yet supported (identity and policies are not enforced yet)');
  }
  io.out(`${lines.join('\n')}\n`);
  return 0;
}

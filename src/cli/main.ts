/**
 * The `gatehouse` command: start, check, explain, audit, apikey, demo, version, help. User errors (an
 * invalid or missing configuration, bad arguments) print a clear message without a stack trace.
 * Exit codes: 0 success, 1 invalid configuration, failing policy test or failure, 2 usage error.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { LoadResult } from '../config/load.js';
import type { ConfigProblem } from '../errors.js';
import { ConfigError, formatProblem, GatehouseError } from '../errors.js';
import { PROCESS_FLAGS } from '../process/flags.js';

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
  check -c FILE [--verbose] [--at DATE-TIME]
                                    validate FILE and run its policy tests (exit 0 valid and passing,
                                    1 invalid or a test failed; --verbose lists every test; --at runs
                                    them at that time instead of now, for time-of-day rules)
  explain -c FILE [--as 'email=alice@example.com,groups=data-eng'] [--source-ip IP]
          [--header 'Name: value']... [--at DATE-TIME] [--after N] METHOD URL
                                    show the route, upstream, identity, deciding rule and reason for
                                    a request, and its rate limit and quotas (offline: no identity
                                    provider, no upstream); --after N: after N earlier requests of
                                    the same caller at the same instant
  apikey create --id ID --subject S [--groups a,b] [--expires DATE] [--routes a,b]
                                    create an API key and print its identity.apiKeys entry
  audit verify [-c FILE] [--key FILE] [--live] FILE...
                                    check audit trail files given oldest first (FILE.2 FILE.1 FILE):
                                    exit 0 when intact, 1 naming the first bad line; -c: check the
                                    checkpoint signatures with the key of that configuration
  audit query FILE... [--who SUBJECT|EMAIL] [--since 1h|DATE-TIME] [--until 1h|DATE-TIME]
          [--route NAME] [--refused] [--event NAME] [--code CODE] [--json]
                                    print the audit events that match every filter given
  demo [--port N]                   start a self-contained demo: identity provider, backends, gateway
  version                           print the version, and Node.js's with the flags in effect
  help                              print this help

Options:
  -c, --config FILE                 the configuration file
  -h, --help                        print this help
`;

/** `node v20.x --flags`: the Node.js release and which of the gateway's flags this process runs with. */
function nodeLine(): string {
  const missing = PROCESS_FLAGS.filter((f) => !process.execArgv.includes(f));
  const present = PROCESS_FLAGS.filter((f) => process.execArgv.includes(f));
  return `node ${process.version}${present.map((f) => ` ${f}`).join('')}${
    missing.length > 0 ? ` (without ${missing.join(' ')})` : ''
  }`;
}

/** Raised for bad command-line arguments (exit 2). */
class UsageError extends Error {}

interface Parsed {
  config: string | undefined;
  as: string | undefined;
  sourceIp: string | undefined;
  /** `--header` values as given (`Name: value`), in order. */
  headers: string[];
  at: string | undefined;
  after: string | undefined;
  verbose: boolean;
  positional: string[];
}

function parseArgs(args: string[], allowed: ReadonlySet<string>): Parsed {
  const parsed: Parsed = {
    config: undefined,
    as: undefined,
    sourceIp: undefined,
    headers: [],
    at: undefined,
    after: undefined,
    verbose: false,
    positional: [],
  };
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
    else if (name === '--source-ip' && allowed.has('source-ip')) parsed.sourceIp = value();
    else if ((name === '--header' || name === '-H') && allowed.has('header')) parsed.headers.push(value());
    else if (name === '--at' && allowed.has('at')) parsed.at = value();
    else if (name === '--after' && allowed.has('after')) parsed.after = value();
    else if (arg === '--verbose' && allowed.has('verbose')) parsed.verbose = true;
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
        return await check(parseArgs(rest, new Set(['config', 'verbose', 'at'])), io);
      case 'explain':
        return await explain(
          parseArgs(rest, new Set(['config', 'as', 'source-ip', 'header', 'at', 'after'])),
          io,
        );
      case 'audit': {
        const { runAuditCommand } = await import('./audit.js');
        return await runAuditCommand(rest, io);
      }
      case 'apikey': {
        const { runApiKeyCommand } = await import('../identity/apikey-command.js');
        return await runApiKeyCommand(rest, io);
      }
      case 'demo': {
        const { runDemo } = await import('../demo/index.js');
        return await runDemo(rest);
      }
      case 'version':
      case '--version':
      case '-v':
        io.out(`gatehouse ${version()}\n${nodeLine()}\n`);
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
  const { ClusterPrimary, isClusterWorker, resolveWorkers } = await import('../process/primary.js');
  if (isClusterWorker()) {
    // Forked by a cluster primary with this same command line: run the data plane only.
    const { runWorker } = await import('../process/worker.js');
    return await runWorker(file);
  }
  const { loadConfig } = await import('../config/load.js');
  const loaded = await loadConfig(file);
  const workers = loaded.ok ? resolveWorkers(loaded.config.server.workers) : 1;
  const { Gateway } = await import('../process/gateway.js');
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

/** Maps a path of the merged configuration to the file it was written in and its path there. */
type Locate = (path: ReadonlyArray<string | number>) => { file: string; path: string };

/**
 * Where a value of the merged configuration came from: the loader's origins when it exposes them
 * (`include:` files keep their own names and indexes), else the main file with the merged path.
 */
function locator(loaded: Extract<LoadResult, { ok: true }>, file: string): Locate {
  const origins = 'origins' in loaded ? (loaded.origins as { locate?: unknown } | undefined) : undefined;
  const locate = origins?.locate;
  if (typeof locate === 'function') {
    return (p) => (locate as Locate).call(origins, p);
  }
  return (p) => ({ file, path: p.join('.') });
}

/** Reports a `PolicyConfigError` (policies that cannot be compiled) as standard problems; else rethrows. */
/** The problems a compile failure stands for, each located in the file that holds its setting. */
async function compileProblemsOf(err: unknown, file: string, locate: Locate): Promise<ConfigProblem[]> {
  const { compileProblems } = await import('../core/compile.js');
  const problems = compileProblems(err, file);
  if (problems === undefined) throw err;
  return problems.map((p) => ({
    ...locate(p.path === '' ? [] : p.path.split('.').map((s) => (/^\d+$/.test(s) ? Number(s) : s))),
    message: p.message,
  }));
}

function plural(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

async function check(p: Parsed, io: CliIo): Promise<number> {
  const file = requireConfig(p, 'check');
  if (p.positional.length > 0) throw new UsageError(`unexpected argument ${p.positional[0]}`);
  const now = p.at === undefined ? Date.now() : parseAt(p.at);
  const { loadConfig } = await import('../config/load.js');
  const loaded = await loadConfig(file);
  printWarnings(io, loaded.warnings);
  if (!loaded.ok) {
    printProblems(io, loaded.problems);
    io.err(`${file}: ${loaded.problems.length} problem(s) found\n`);
    return 1;
  }
  const { config } = loaded;
  const locate = locator(loaded, file);
  // One compile step, as the gateway takes it; the config tests then run on what it compiled.
  const { compileConfig } = await import('../core/compile.js');
  const { runConfigTests, formatTestResult } = await import('../policy/tests.js');
  let results: ReturnType<typeof runConfigTests>;
  try {
    const compiled = compileConfig(config);
    // The same steps the gateway takes (normalize, route, decide), offline, now or at `--at`.
    results = runConfigTests(compiled, now);
  } catch (err) {
    const problems = await compileProblemsOf(err, file, locate);
    printProblems(io, problems);
    io.err(`${file}: ${problems.length} problem(s) found\n`);
    return 1;
  }
  // The audit trail's checkpoint key, which the gateway would refuse to start with.
  if (config.audit?.signingKey !== undefined) {
    const { AuditKeyError, configuredAuditKey } = await import('../process/audit.js');
    try {
      configuredAuditKey(config.audit.signingKey, (ref) => loaded.secrets.resolveSecret(ref));
    } catch (err) {
      if (!(err instanceof AuditKeyError)) throw err;
      printProblems(io, [{ ...locate(['audit', 'signingKey']), message: err.detail }]);
      io.err(`${file}: 1 problem(s) found\n`);
      return 1;
    }
  }
  if (p.verbose) for (const r of results) io.out(`${formatTestResult(r)}\n`);
  const failed = results.filter((r) => !r.ok);
  for (const r of failed) {
    const at = locate(['tests', r.index]);
    io.err(`${at.file}: ${at.path}: test "${r.name}" failed: ${r.detail}\n`);
  }
  if (failed.length > 0) {
    io.err(
      `${file}: ${plural(failed.length, 'policy test', 'policy tests')} failed, ${results.length - failed.length} passed\n`,
    );
    return 1;
  }
  io.out(
    `${file}: ok (${plural(config.routes.length, 'route', 'routes')}, ${plural(Object.keys(config.upstreams).length, 'upstream', 'upstreams')})\n`,
  );
  if (results.length > 0)
    io.out(`${file}: ${plural(results.length, 'policy test', 'policy tests')} passed\n`);
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

// An explicit offset keeps `--at` independent of the machine's time zone.
const DATE_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/;

/** `--at DATE-TIME` in ms since the epoch. */
function parseAt(text: string): number {
  const ms = DATE_TIME.test(text) ? Date.parse(text) : Number.NaN;
  if (Number.isNaN(ms)) {
    throw new UsageError(`--at: "${text}" is not an ISO date-time such as 2026-01-05T09:30:00Z`);
  }
  return ms;
}

/** Parses `--header 'Name: value'` into a header name (lower case) and value. */
function parseHeader(text: string): [string, string] {
  const colon = text.indexOf(':');
  const name = colon > 0 ? text.slice(0, colon).trim() : '';
  if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) {
    throw new UsageError(`--header: expected 'Name: value', got "${text}"`);
  }
  const value = text.slice(colon + 1).trim();
  if (/[\r\n\0]/.test(value)) throw new UsageError(`--header ${name}: the value contains a line break`);
  return [name.toLowerCase(), value];
}

async function explain(p: Parsed, io: CliIo): Promise<number> {
  const file = requireConfig(p, 'explain');
  const [methodArg, url, extra] = p.positional;
  if (methodArg === undefined || url === undefined) throw new UsageError('explain needs METHOD URL');
  if (extra !== undefined) throw new UsageError(`unexpected argument ${extra}`);
  const method = methodArg.toUpperCase();
  if (!/^[A-Z]+$/.test(method)) throw new UsageError(`invalid method "${methodArg}"`);
  if (!/^https?:\/\//i.test(url) || !URL.canParse(url)) {
    throw new UsageError(`invalid URL "${url}" (expected e.g. https://host/path)`);
  }
  const claims = p.as !== undefined ? parseIdentity(p.as) : undefined;
  if (p.sourceIp !== undefined && isIP(p.sourceIp) === 0) {
    throw new UsageError(`--source-ip: "${p.sourceIp}" is not an IP address`);
  }
  const headers: Record<string, string> = {};
  for (const h of p.headers) {
    const [name, value] = parseHeader(h);
    // Repeated headers are joined as a proxy would see them (RFC 9110 §5.3).
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
  }
  const now = p.at === undefined ? undefined : parseAt(p.at);
  const after = p.after === undefined ? undefined : Number(p.after);
  if (after !== undefined && !(Number.isSafeInteger(after) && after >= 0 && after <= 100_000)) {
    throw new UsageError(`--after: "${p.after}" is not a whole number from 0 to 100000`);
  }

  const { loadConfig } = await import('../config/load.js');
  // Deciding does not need secrets: a config can be explained without its certificates and tokens.
  const loaded = await loadConfig(file, process.env, { checkSecrets: false });
  if (!loaded.ok) {
    printProblems(io, loaded.problems);
    return 1;
  }
  const { explainRequest } = await import('../policy/explain.js');
  let lines: string[];
  try {
    lines = explainRequest(loaded.config, method, url, claims, {
      headers,
      ...(p.sourceIp !== undefined ? { sourceIp: p.sourceIp } : {}),
      ...(now !== undefined ? { now } : {}),
      ...(after !== undefined ? { after } : {}),
    }).lines;
  } catch (err) {
    // An identity that cannot be described (e.g. an unknown authMethod) is bad input, like a bad option.
    if (err instanceof GatehouseError && err.code === 'GH_TEST_INPUT')
      throw new UsageError(`--as: ${err.message}`);
    printProblems(io, await compileProblemsOf(err, file, locator(loaded, file)));
    return 1;
  }
  io.out(`${lines.join('\n')}\n`);
  return 0;
}

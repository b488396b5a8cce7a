/**
 * Loads a configuration file: YAML parsing, `include:` merging with the origin of every value kept,
 * schema validation, then semantic checks (references between sections, duplicates, secret files and
 * certificates, policies, identity settings). Every problem is collected and reported at once as
 * `FILE: path.to.key: message`, where FILE is the file the offending value was written in.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import type { z } from 'zod';
import { routeProblems } from '../core/routes.js';
import type { ConfigProblem } from '../errors.js';
import { identityProblems } from '../identity/index.js';
import { limitProblems } from '../limits/compile.js';
import { policyProblems } from '../policy/compile.js';
import { type Config, ConfigSchema, parseBind } from './schema.js';
import { SecretError, SecretResolver } from './secrets.js';

/** The outcome of loading a configuration. Warnings never make a configuration invalid. */
export type LoadResult =
  | {
      ok: true;
      /** Absolute path of the main configuration file. */
      file: string;
      config: Config;
      /** Absolute paths of the config, its includes and every file secret it read. */
      files: string[];
      /** The text of the config file and of each include as read, by absolute path. */
      sources: Record<string, string>;
      secrets: SecretResolver;
      warnings: ConfigProblem[];
    }
  | {
      ok: false;
      problems: ConfigProblem[];
      warnings: ConfigProblem[];
      /** Files read or tried so far; watched so that fixing any of them triggers a reload. */
      files: string[];
    };

/** A successful load. */
export type LoadedConfig = Extract<LoadResult, { ok: true }>;

/** Options of `loadConfig`. */
export interface LoadOptions {
  /**
   * Read and check secret references, certificates and keys (default true). Offline commands that
   * only route (`explain`) turn it off so that a config can be explained without its secrets.
   */
  checkSecrets?: boolean;
  /**
   * Texts of the config file and its includes by absolute path, used instead of reading those files:
   * a cluster primary hands its workers exactly what it validated. Secret files are still read.
   */
  sources?: Readonly<Record<string, string>>;
}

// Top-level keys whose lists are concatenated and whose maps are merged across included files.
const ARRAY_KEYS = new Set(['listeners', 'routes', 'tests']);
const MAP_KEYS = new Set(['upstreams', 'policies', 'quotas']);
const MAP_NOUN: Record<string, string> = { upstreams: 'upstream', policies: 'policy', quotas: 'quota' };

type Path = ReadonlyArray<PropertyKey>;
type Raw = Record<string, unknown>;

/** Where each top-level value of the merged document came from. */
class Origins {
  readonly root: string;
  readonly arrays = new Map<string, Array<{ file: string; index: number }>>();
  readonly maps = new Map<string, Map<string, string>>();
  readonly keys = new Map<string, string>();

  constructor(root: string) {
    this.root = root;
  }

  /** The file a value came from and its path as written in that file. */
  locate(p: Path): { file: string; path: string } {
    const [key, second, ...rest] = p;
    if (typeof key !== 'string') return { file: this.root, path: joinPath(p) };
    if (typeof second === 'number' && ARRAY_KEYS.has(key)) {
      const origin = this.arrays.get(key)?.[second];
      if (origin) return { file: origin.file, path: joinPath([key, origin.index, ...rest]) };
    }
    if (typeof second === 'string' && MAP_KEYS.has(key)) {
      const file = this.maps.get(key)?.get(second);
      if (file) return { file, path: joinPath(p) };
    }
    return { file: this.keys.get(key) ?? this.root, path: joinPath(p) };
  }
}

function joinPath(p: Path): string {
  return p.map(String).join('.');
}

function isPlainObject(v: unknown): v is Raw {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Collects problems during one load. */
class Collector {
  readonly problems: ConfigProblem[] = [];
  readonly warnings: ConfigProblem[] = [];
  /** Set when a file could not be parsed: validating the rest would only report follow-on errors. */
  unparsable = false;
  /** Texts of the config and its includes, as read. */
  readonly sources: Record<string, string> = {};
  constructor(
    readonly origins: Origins,
    readonly given: Readonly<Record<string, string>> | undefined,
  ) {}

  /** Reads a config or include file (or takes it from the given sources) and keeps its text. */
  async source(abs: string): Promise<string | { code: string }> {
    const text = this.given?.[abs] ?? (await readText(abs));
    if (typeof text === 'string') this.sources[abs] = text;
    return text;
  }

  /** A problem at a path of the merged document. */
  at(p: Path, message: string): void {
    this.problems.push({ ...this.origins.locate(p), message });
  }
  /** A warning at a path of the merged document. */
  warnAt(p: Path, message: string): void {
    this.warnings.push({ ...this.origins.locate(p), message });
  }
  /** A problem in a specific file (before merging). */
  inFile(file: string, p: string, message: string): void {
    this.problems.push({ file, path: p, message });
  }
}

/**
 * Loads and validates `file`. Never throws for user errors: every problem is returned at once.
 * `file:` secret references are resolved relative to the directory of `file`.
 */
export async function loadConfig(
  file: string,
  env: NodeJS.ProcessEnv = process.env,
  options: LoadOptions = {},
): Promise<LoadResult> {
  const rootAbs = path.resolve(file);
  const origins = new Origins(file);
  const out = new Collector(origins, options.sources);
  // Without a prototype, a `__proto__` key in a file is a key like any other (reported as unknown)
  // instead of replacing the prototype, whose keys the schema would then read as if they were written.
  const merged: Raw = Object.create(null);
  const read: string[] = [];

  const rootText = await out.source(rootAbs);
  if (typeof rootText !== 'string') {
    out.inFile(file, '', `cannot read file (${rootText.code})`);
    return { ok: false, problems: out.problems, warnings: out.warnings, files: [rootAbs] };
  }
  await collect(rootAbs, file, rootText, [rootAbs], merged, out, read, new Map());

  if (out.unparsable) return { ok: false, problems: out.problems, warnings: out.warnings, files: read };
  const secrets = new SecretResolver(path.dirname(rootAbs), env);
  const parsed = ConfigSchema.safeParse(merged);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) issueToProblems(issue, [], merged, out);
  }
  const resolved = semanticChecks(merged, out, secrets, options.checkSecrets !== false);
  if (parsed.success) configChecks(parsed.data, out, resolved);

  const files = [...new Set([...read, ...secrets.files])];
  if (out.problems.length > 0 || !parsed.success) {
    return { ok: false, problems: out.problems, warnings: out.warnings, files };
  }
  return {
    ok: true,
    file: rootAbs,
    config: parsed.data,
    files,
    sources: out.sources,
    secrets,
    warnings: out.warnings,
  };
}

async function readText(abs: string): Promise<string | { code: string }> {
  try {
    return await readFile(abs, 'utf8');
  } catch (err) {
    return { code: (err as NodeJS.ErrnoException).code ?? 'EIO' };
  }
}

/** Parses one file, merges its keys into `merged`, then follows its includes depth-first. */
async function collect(
  abs: string,
  display: string,
  text: string,
  stack: string[],
  merged: Raw,
  out: Collector,
  read: string[],
  includedFrom: Map<string, string>,
): Promise<void> {
  read.push(abs);
  const lineCounter = new LineCounter();
  // logLevel 'error': the YAML library would print its warnings itself; they are reported as config warnings.
  const doc = parseDocument(text, { prettyErrors: false, lineCounter, uniqueKeys: true, logLevel: 'error' });
  if (doc.errors.length > 0) {
    for (const err of doc.errors) {
      const { line, col } = lineCounter.linePos(err.pos[0]);
      out.inFile(display, '', `YAML syntax error at line ${line}, column ${col}: ${err.message}`);
    }
    out.unparsable = true;
    return;
  }
  for (const w of doc.warnings) {
    const { line, col } = lineCounter.linePos(w.pos[0]);
    out.warnings.push({
      file: display,
      path: '',
      message: `YAML warning at line ${line}, column ${col}: ${w.message}`,
    });
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 1000 });
  } catch (err) {
    out.inFile(display, '', `cannot read YAML: ${(err as Error).message}`);
    out.unparsable = true;
    return;
  }
  if (data === null || data === undefined) data = {};
  if (!isPlainObject(data)) {
    out.inFile(display, '', 'the file must contain a mapping of keys (listeners:, routes:, ...)');
    out.unparsable = true;
    return;
  }

  const o = out.origins;
  for (const [key, value] of Object.entries(data)) {
    if (key === 'include') continue;
    const firstFile = o.keys.get(key);
    if (ARRAY_KEYS.has(key) && Array.isArray(value)) {
      merged[key] ??= [];
      const list = merged[key] as unknown[];
      if (!Array.isArray(list)) {
        out.inFile(display, key, `"${key}" is also defined in ${firstFile} with a different type`);
        continue;
      }
      const origin = o.arrays.get(key) ?? [];
      o.arrays.set(key, origin);
      value.forEach((item, index) => {
        list.push(item);
        origin.push({ file: display, index });
      });
      o.keys.set(key, firstFile ?? display);
    } else if (
      MAP_KEYS.has(key) &&
      isPlainObject(value) &&
      (firstFile === undefined || isPlainObject(merged[key]))
    ) {
      merged[key] ??= Object.create(null);
      const map = merged[key] as Raw;
      const names = o.maps.get(key) ?? new Map<string, string>();
      o.maps.set(key, names);
      for (const [name, def] of Object.entries(value)) {
        // The schema's records skip this key silently (prototype-pollution guard): report it here.
        if (name === '__proto__') {
          out.inFile(display, `${key}.${name}`, `invalid name "${name}": must start with a letter or digit`);
          continue;
        }
        const other = names.get(name);
        if (other !== undefined) {
          out.inFile(display, `${key}.${name}`, `${MAP_NOUN[key]} "${name}" is also defined in ${other}`);
          continue;
        }
        names.set(name, display);
        map[name] = def;
      }
      o.keys.set(key, firstFile ?? display);
    } else if (firstFile !== undefined) {
      out.inFile(display, key, `"${key}" is also defined in ${firstFile}; it may appear in only one file`);
    } else {
      merged[key] = value;
      o.keys.set(key, display);
    }
  }

  const include = data.include;
  if (include === undefined || include === null) return;
  if (!Array.isArray(include)) {
    out.inFile(display, 'include', 'must be a list of file names');
    return;
  }
  for (const [i, ref] of include.entries()) {
    if (typeof ref !== 'string' || ref === '') {
      out.inFile(display, `include.${i}`, 'must be a file name');
      continue;
    }
    const childAbs = path.resolve(path.dirname(abs), ref);
    const childDisplay = path.isAbsolute(ref) ? ref : path.normalize(path.join(path.dirname(display), ref));
    if (stack.includes(childAbs)) {
      const cycle = [...stack.slice(stack.indexOf(childAbs)), childAbs].map(
        (f) => path.relative('.', f) || f,
      );
      out.inFile(display, `include.${i}`, `include cycle: ${cycle.join(' -> ')}`);
      continue;
    }
    const earlier = includedFrom.get(childAbs);
    if (earlier !== undefined) {
      out.inFile(display, `include.${i}`, `${ref} is already included by ${earlier}`);
      continue;
    }
    includedFrom.set(childAbs, display);
    const childText = await out.source(childAbs);
    if (typeof childText !== 'string') {
      read.push(childAbs);
      out.inFile(display, `include.${i}`, `cannot read file ${ref} (${childText.code})`);
      continue;
    }
    await collect(childAbs, childDisplay, childText, [...stack, childAbs], merged, out, read, includedFrom);
  }
}

// ---------------------------------------------------------------------------------------------
// Schema issues

function valueAt(root: unknown, p: Path): unknown {
  let v: unknown = root;
  for (const key of p) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[key as string];
  }
  return v;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') return `"${v}"`;
  return `${typeof v} ${String(v)}`;
}

// Zod's built-in messages start with these; custom messages from the schema are kept as written.
const DEFAULT_MESSAGE = /^(Invalid|Too small|Too big|Expected|Unrecognized)/;

function issueToProblems(issue: z.core.$ZodIssue, base: Path, data: unknown, out: Collector): void {
  const p = [...base, ...issue.path];
  const input = valueAt(data, p);
  switch (issue.code) {
    case 'unrecognized_keys':
      for (const key of issue.keys) out.at([...p, key], 'unknown key');
      return;
    case 'invalid_type':
      out.at(p, input === undefined ? 'is required' : `expected ${issue.expected}, got ${describe(input)}`);
      return;
    case 'invalid_value':
      out.at(
        p,
        issue.values.length === 1
          ? `must be ${JSON.stringify(issue.values[0])}, got ${describe(input)}`
          : `invalid value ${describe(input)} (allowed: ${issue.values.map(String).join(', ')})`,
      );
      return;
    case 'invalid_union': {
      // A branch that failed deeper than the union itself is the one the author meant: report its issues.
      const branches = issue.errors;
      const deep = branches.find((b) =>
        b.some((i) => i.path.length > 0 || (i.code !== 'invalid_type' && i.code !== 'invalid_value')),
      );
      if (deep) {
        for (const inner of deep) issueToProblems(inner, p, data, out);
        return;
      }
      const expected = new Set<string>();
      for (const b of branches) {
        for (const i of b) {
          if (i.code === 'invalid_type') expected.add(String(i.expected));
          else if (i.code === 'invalid_value') for (const v of i.values) expected.add(JSON.stringify(v));
        }
      }
      out.at(p, `expected ${[...expected].join(' or ')}, got ${describe(input)}`);
      return;
    }
    case 'invalid_key':
      for (const inner of issue.issues) {
        out.at(p, `invalid name "${String(p[p.length - 1])}": ${inner.message}`);
      }
      return;
    case 'too_small':
    case 'too_big': {
      if (!DEFAULT_MESSAGE.test(issue.message)) break;
      const bound = issue.code === 'too_small' ? issue.minimum : issue.maximum;
      const op = issue.code === 'too_small' ? (issue.inclusive ? '>=' : '>') : issue.inclusive ? '<=' : '<';
      const what =
        issue.origin === 'array'
          ? 'number of items'
          : issue.origin === 'string'
            ? 'length'
            : issue.origin === 'number'
              ? 'value'
              : issue.origin;
      out.at(p, `${what} must be ${op} ${String(bound)}, got ${describe(input)}`);
      return;
    }
    case 'invalid_format': {
      if (!DEFAULT_MESSAGE.test(issue.message)) break;
      if (issue.format === 'url') out.at(p, `must be a URL, got ${describe(input)}`);
      else if (issue.format === 'starts_with' && 'prefix' in issue) {
        out.at(p, `must start with "${String(issue.prefix)}", got ${describe(input)}`);
      } else if ('pattern' in issue) out.at(p, `must match ${String(issue.pattern)}, got ${describe(input)}`);
      else out.at(p, `must be a valid ${issue.format}, got ${describe(input)}`);
      return;
    }
    default:
      break;
  }
  out.at(p, issue.message.replace(/^Invalid input: /, ''));
}

// ---------------------------------------------------------------------------------------------
// Semantic checks, run on the merged document whether or not the schema accepted it, so that every
// problem is reported in one pass. Each check skips values of the wrong shape (the schema reports them).

function list(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}
function obj(v: unknown): Raw {
  return isPlainObject(v) ? v : {};
}
function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

/** Secrets resolved by the semantic checks that later checks look at. */
interface Resolved {
  /** `identity.session.secrets`, when every one of them could be resolved. */
  sessionSecrets?: string[] | undefined;
}

function semanticChecks(data: Raw, out: Collector, secrets: SecretResolver, checkSecrets: boolean): Resolved {
  const upstreams = obj(data.upstreams);
  const policies = obj(data.policies);
  const identity = obj(data.identity);
  const providerNames = new Set(
    list(identity.providers)
      .map((p) => str(obj(p).name))
      .filter((n) => n !== undefined),
  );

  // Listeners: unique names and bind addresses (port 0 means "any free port" and never conflicts).
  const listenerNames = new Map<string, number>();
  const binds: Array<{ host: string; port: number; owner: string }> = [];
  /** The earlier listener whose address `bind` cannot be bound next to, if any. */
  const takenBy = (bind: string): string | undefined => {
    const b = parseBind(bind);
    if (b === undefined || b.port === 0) return undefined;
    return binds.find((o) => o.port === b.port && bindsOverlap(o.host, b.host))?.owner;
  };
  list(data.listeners).forEach((l, i) => {
    const name = str(obj(l).name);
    if (name !== undefined) {
      const first = listenerNames.get(name);
      if (first !== undefined) out.at(['listeners', i, 'name'], duplicate('listener', name, first, out));
      else listenerNames.set(name, i);
    }
    const bind = str(obj(l).bind);
    if (bind === undefined) return;
    const first = takenBy(bind);
    if (first !== undefined) out.at(['listeners', i, 'bind'], `${bind} is also used by ${first}`);
    else {
      const b = parseBind(bind);
      if (b !== undefined && b.port !== 0) binds.push({ ...b, owner: `listener ${name ?? i}` });
    }
  });
  const adminBind = str(obj(data.admin).bind);
  const adminTaken = adminBind && takenBy(adminBind);
  if (adminTaken) out.at(['admin', 'bind'], `${adminBind} is also used by ${adminTaken}`);
  // Without a token the admin API answers only on loopback (it fails closed): say so before start does.
  if (data.admin !== undefined && obj(data.admin).token === undefined) {
    const b = parseBind(adminBind || '127.0.0.1:9900');
    const host = b?.host.toLowerCase();
    if (host !== undefined && !(host.startsWith('127.') || host === '::1' || host === 'localhost')) {
      out.warnAt(
        ['admin', 'bind'],
        `${adminBind} is not a loopback address and admin.token is not set: /api/v1 will answer 403`,
      );
    }
  }

  // Routes: unique names, exactly one of upstream/split, references that resolve.
  const routeNames = new Map<string, number>();
  list(data.routes).forEach((r, i) => {
    const route = obj(r);
    const name = str(route.name);
    if (name !== undefined) {
      const first = routeNames.get(name);
      if (first !== undefined) out.at(['routes', i, 'name'], duplicate('route', name, first, out));
      else routeNames.set(name, i);
    }
    const hasUpstream = route.upstream !== undefined;
    const hasSplit = route.split !== undefined;
    if (hasUpstream && hasSplit) out.at(['routes', i], 'set either upstream or split, not both');
    else if (!hasUpstream && !hasSplit && isPlainObject(r))
      out.at(['routes', i], 'needs an upstream or a split');
    const upstream = str(route.upstream);
    if (upstream !== undefined && !Object.hasOwn(upstreams, upstream)) {
      out.at(['routes', i, 'upstream'], unknownName('upstream', upstream, upstreams));
    }
    const targets = list(obj(route.split).targets);
    const seen = new Set<string>();
    targets.forEach((t, j) => {
      const target = str(obj(t).upstream);
      if (target === undefined) return;
      if (!Object.hasOwn(upstreams, target)) {
        out.at(['routes', i, 'split', 'targets', j, 'upstream'], unknownName('upstream', target, upstreams));
      } else if (seen.has(target)) {
        out.at(['routes', i, 'split', 'targets', j, 'upstream'], `upstream "${target}" is listed twice`);
      }
      seen.add(target);
    });
    if (targets.length > 0 && targets.every((t) => obj(t).weight === 0)) {
      out.at(['routes', i, 'split', 'targets'], 'at least one target needs a weight above 0');
    }
    const policy = str(route.policy);
    if (policy !== undefined && !Object.hasOwn(policies, policy)) {
      out.at(['routes', i, 'policy'], unknownName('policy', policy, policies));
    }
    list(route.providers).forEach((p, j) => {
      const name = str(p);
      if (name !== undefined && !providerNames.has(name)) {
        out.at(
          ['routes', i, 'providers', j],
          `unknown provider "${name}"` +
            (providerNames.size > 0 ? ` (defined: ${[...providerNames].join(', ')})` : ' (none defined)'),
        );
      }
    });
  });

  for (const [name, u] of Object.entries(upstreams)) {
    const up = obj(u);
    const hash = obj(up.hash);
    const source = str(hash.source);
    if ((source === 'header' || source === 'cookie') && !str(hash.name)) {
      out.at(['upstreams', name, 'hash', 'name'], `is required when hash.source is ${source}`);
    }
    if (up.hash !== undefined && up.balance !== 'hash') {
      out.warnAt(['upstreams', name, 'hash'], 'is ignored unless balance is hash');
    }
  }

  identityChecks(data, out);
  return checkSecrets ? checkSecretRefs(data, out, secrets) : {};
}

/** Identity settings that only make sense together with the rest of the configuration. */
function identityChecks(data: Raw, out: Collector): void {
  if (!isPlainObject(data.identity)) return;
  const identity = data.identity;
  const providers = list(identity.providers);
  if (providers.length > 0 && identity.session === undefined) {
    out.at(
      ['identity', 'session'],
      'is required when identity.providers is set (secrets for the session cookie)',
    );
  }
  const signIn = str(obj(identity.session).signInHost);
  if (signIn !== undefined) {
    const problem = signInHostProblem(signIn, data);
    if (problem !== undefined) out.at(['identity', 'session', 'signInHost'], problem);
  }
}

/**
 * Why the central sign-in host is not one this gateway serves, or undefined when it is: its name must
 * match a route's host (exact or `*.suffix`) or a listener's bind address, or a route without a host
 * must exist; a port must be one a listener binds (or 80/443, which a balancer in front may map).
 */
function signInHostProblem(signIn: string, data: Raw): string | undefined {
  const u = URL.parse(`http://${signIn}/`);
  if (u === null || u.pathname !== '/' || u.username !== '' || u.search !== '' || u.hash !== '') {
    return `"${signIn}" is not host or host:port`;
  }
  const hostname = u.hostname.toLowerCase().replace(/\.$/, '');
  const ports = new Set([80, 443]);
  const hosts = new Set<string>();
  const suffixes: string[] = [];
  let catchAll = false;
  for (const l of list(data.listeners)) {
    const b = parseBind(str(obj(l).bind) ?? '');
    if (b === undefined) continue;
    ports.add(b.port);
    hosts.add(b.host.includes(':') ? `[${b.host}]` : b.host.toLowerCase());
  }
  for (const r of list(data.routes)) {
    const host = obj(obj(r).match).host;
    const patterns = typeof host === 'string' ? [host] : Array.isArray(host) ? host : [];
    if (patterns.length === 0) catchAll = true;
    for (const p of patterns) {
      if (typeof p !== 'string') continue;
      const h = p.trim().toLowerCase().replace(/:\d+$/, '').replace(/\.$/, '');
      if (h === '*') catchAll = true;
      else if (h.startsWith('*.')) suffixes.push(h.slice(1));
      else hosts.add(h);
    }
  }
  if (u.port !== '' && !ports.has(Number(u.port))) {
    return `port ${u.port} is not a port this gateway listens on (${[...ports].join(', ')})`;
  }
  const served =
    catchAll ||
    hosts.has(hostname) ||
    suffixes.some((s) => hostname.length > s.length && hostname.endsWith(s));
  return served ? undefined : `${hostname} is not a host this gateway serves (no route or listener has it)`;
}

/** Checks that need the validated configuration: policies and the identity modules' own rules. */
function configChecks(config: Config, out: Collector, resolved: Resolved): void {
  for (const p of policyProblems(config)) out.at(p.path, p.message);
  for (const p of routeProblems(config)) out.at(p.path, p.message);
  const identity = identityProblems(config, resolved.sessionSecrets);
  for (const p of identity.problems) out.at(p.path, p.message);
  for (const w of identity.warnings) out.warnAt(w.path, w.message);
  for (const p of limitProblems(config)) out.at(p.path, p.message);
}

function duplicate(kind: string, name: string, first: number, out: Collector): string {
  const where = out.origins.locate([`${kind}s`, first]);
  return `duplicate ${kind} name "${name}" (first defined at ${where.file}: ${where.path})`;
}

function unknownName(kind: string, name: string, defined: Raw): string {
  const names = Object.keys(defined);
  return (
    `unknown ${kind} "${name}"` + (names.length > 0 ? ` (defined: ${names.join(', ')})` : ` (none defined)`)
  );
}

/**
 * True when two listening addresses on one port cannot both be bound: the same address, or a wildcard
 * that covers the other (0.0.0.0 covers IPv4; "::" is dual-stack in Node.js and covers both).
 */
function bindsOverlap(a: string, b: string): boolean {
  if (a === b || a === '::' || b === '::') return true;
  return (a === '0.0.0.0' && isIP(b) !== 6) || (b === '0.0.0.0' && isIP(a) !== 6);
}

/** Resolves every secret reference the running gateway will need, and parses certificates and keys. */
function checkSecretRefs(data: Raw, out: Collector, secrets: SecretResolver): Resolved {
  const resolve = (p: Path, value: unknown): string | undefined => {
    const ref = str(value);
    if (ref === undefined) return undefined;
    try {
      return secrets.expand(ref);
    } catch (err) {
      if (err instanceof SecretError) {
        out.at(p, err.message);
        return undefined;
      }
      throw err;
    }
  };
  const cert = (p: Path, value: unknown): X509Certificate | undefined => {
    const pem = resolve(p, value);
    if (pem === undefined) return undefined;
    try {
      return new X509Certificate(pem);
    } catch (err) {
      out.at(p, `not a PEM certificate (${(err as Error).message})`);
      return undefined;
    }
  };
  const key = (p: Path, value: unknown): ReturnType<typeof createPrivateKey> | undefined => {
    const pem = resolve(p, value);
    if (pem === undefined) return undefined;
    try {
      return createPrivateKey(pem);
    } catch (err) {
      out.at(p, `not a PEM private key (${(err as Error).message})`);
      return undefined;
    }
  };
  const pair = (p: Path, pairObj: Raw): void => {
    const c = pairObj.cert !== undefined ? cert([...p, 'cert'], pairObj.cert) : undefined;
    const k = pairObj.key !== undefined ? key([...p, 'key'], pairObj.key) : undefined;
    if (c && k && !c.checkPrivateKey(k)) out.at([...p, 'key'], 'does not match the certificate');
  };

  list(data.listeners).forEach((l, i) => {
    const tls = obj(obj(l).tls);
    list(tls.certificates).forEach((c, j) => {
      pair(['listeners', i, 'tls', 'certificates', j], obj(c));
    });
    const client = obj(tls.clientCertificate);
    if (client.ca !== undefined) cert(['listeners', i, 'tls', 'clientCertificate', 'ca'], client.ca);
  });

  for (const [name, u] of Object.entries(obj(data.upstreams))) {
    const up = obj(u);
    const tls = obj(up.tls);
    if (tls.ca !== undefined) cert(['upstreams', name, 'tls', 'ca'], tls.ca);
    if ((tls.cert === undefined) !== (tls.key === undefined)) {
      out.at(['upstreams', name, 'tls'], 'cert and key must be given together');
    }
    pair(['upstreams', name, 'tls'], tls);
    for (const [header, value] of Object.entries(obj(obj(up.inject).headers))) {
      const at: Path = ['upstreams', name, 'inject', 'headers', header];
      // The same test the gateway makes when it builds the upstream (src/upstream/index.ts).
      const expanded = resolve(at, value)?.trim();
      if (expanded !== undefined && /[\r\n\0]/.test(expanded))
        out.at(at, 'expanded value contains a line break or NUL');
    }
  }

  const admin = obj(data.admin);
  if (admin.token !== undefined) resolve(['admin', 'token'], admin.token);

  // Export headers of tracing: resolved here too, so that check reports them and file secrets are watched.
  for (const [header, value] of Object.entries(obj(obj(data.tracing).headers))) {
    const at: Path = ['tracing', 'headers', header];
    const expanded = resolve(at, value)?.trim();
    if (expanded !== undefined && /[\r\n\0]/.test(expanded))
      out.at(at, 'expanded value contains a line break or NUL');
  }

  const identity = obj(data.identity);
  const sessionRefs = list(obj(identity.session).secrets);
  const sessionSecrets = sessionRefs.map((ref, i) => resolve(['identity', 'session', 'secrets', i], ref));
  list(identity.providers).forEach((p, i) => {
    const secret = obj(p).clientSecret;
    if (secret !== undefined) resolve(['identity', 'providers', i, 'clientSecret'], secret);
  });
  const signingKey = obj(identity.assertion).signingKey;
  if (signingKey !== undefined) {
    const text = resolve(['identity', 'assertion', 'signingKey'], signingKey);
    if (text !== undefined && !looksLikePrivateKey(text)) {
      out.at(
        ['identity', 'assertion', 'signingKey'],
        'expected a private JWK (JSON), a JWK set or a PEM private key',
      );
    }
  }
  return {
    sessionSecrets: sessionSecrets.every((s) => s !== undefined) ? (sessionSecrets as string[]) : undefined,
  };
}

/** A PEM private key, or JSON holding a JWK or a JWK set (the assertion module checks the details). */
function looksLikePrivateKey(text: string): boolean {
  const t = text.trim();
  if (t.startsWith('-----BEGIN')) {
    try {
      createPrivateKey(t);
      return true;
    } catch {
      return false;
    }
  }
  try {
    const doc = JSON.parse(t) as unknown;
    return isPlainObject(doc) && (typeof doc.kty === 'string' || Array.isArray(doc.keys));
  } catch {
    return false;
  }
}

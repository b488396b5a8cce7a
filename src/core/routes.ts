/**
 * The route table, compiled once per configuration load. Matching is a map lookup on the host plus a
 * short scan of routes pre-sorted by specificity, so the most specific route always wins, deterministically:
 * exact host > wildcard host (longer suffix first) > any host; then the longer path prefix; then routes
 * with method or header conditions; then configuration order.
 *
 * A path prefix is normalized like request paths and names a whole segment and what lies below it:
 * `/admin` and `/admin/` both match `/admin`, `/admin/` and `/admin/x`, never `/adminx`. A trailing
 * slash does not narrow a prefix, because many backends serve `/admin` and `/admin/` alike (Express's
 * default non-strict routing, Spring's trailing-slash match), so `/admin` must not slip past an `/admin/`
 * route into a less protected one. Matching is case-sensitive (see `normalize.ts`).
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Config, RouteConfig } from '../config/schema.js';
import { ConfigSettingError } from '../errors.js';
import { METHOD_OVERRIDE_HEADERS } from './methods.js';
import { normalizePath } from './normalize.js';
import type { CompiledRoute, RequestFacts, RouteHosts, RouteTable } from './types.js';

/** One route as it sits in a host bucket. */
interface Entry {
  readonly route: CompiledRoute;
  /** The normalized prefix as configured (its length orders routes). */
  readonly prefix: string;
  /** The prefix without a trailing slash (`/` for the root): matched exactly. */
  readonly base: string;
  /** `base` with a trailing slash: matched as the start of a path. */
  readonly dir: string;
  readonly methods: ReadonlySet<string> | undefined;
  /** Lower-case header name and required value (`*` = present). */
  readonly headers: ReadonlyArray<readonly [string, string]> | undefined;
  readonly conditions: number;
  readonly order: number;
}

interface WildcardBucket {
  /** `.example.com` for `*.example.com`. */
  readonly suffix: string;
  readonly entries: Entry[];
}

class Route implements CompiledRoute {
  readonly name: string;
  readonly config: RouteConfig;
  readonly hosts: RouteHosts;
  readonly maxBodySize: number | undefined;
  readonly pathPrefix: string;
  readonly websocketIdleTimeout: number | undefined;
  readonly upstreamNames: readonly string[];
  readonly #single: string | undefined;
  readonly #targets: ReadonlyArray<{ upstream: string; cumulative: number }>;
  readonly #total: number;
  readonly #pinHeader: string | undefined;

  constructor(config: RouteConfig, serverMaxBody: number | undefined, index: number) {
    this.name = config.name;
    this.config = config;
    this.hosts = compileHosts(config.match.host);
    this.maxBodySize = config.maxBodySize ?? serverMaxBody;
    this.pathPrefix = normalizePrefix(config.match.path, index);
    const ws = config.websocket;
    this.websocketIdleTimeout = ws === false ? undefined : ws === true ? 3_600_000 : ws.idleTimeout;
    let cumulative = 0;
    const targets: Array<{ upstream: string; cumulative: number }> = [];
    for (const t of config.split?.targets ?? []) {
      cumulative += t.weight;
      targets.push({ upstream: t.upstream, cumulative });
    }
    this.#targets = targets;
    this.#total = cumulative;
    this.#pinHeader = config.split?.pinHeader?.toLowerCase();
    this.#single = config.split ? undefined : (config.upstream ?? '');
    this.upstreamNames = config.split
      ? targets.map((t) => t.upstream)
      : config.upstream
        ? [config.upstream]
        : [];
  }

  pickUpstream(headers: IncomingHttpHeaders): string {
    if (this.#single !== undefined) return this.#single;
    const targets = this.#targets;
    if (this.#pinHeader !== undefined) {
      const pin = headers[this.#pinHeader];
      if (typeof pin === 'string') {
        for (let i = 0; i < targets.length; i++) if (targets[i]!.upstream === pin) return pin;
      }
    }
    if (this.#total === 0) return targets[0]!.upstream;
    const r = Math.random() * this.#total;
    for (let i = 0; i < targets.length; i++) if (r < targets[i]!.cumulative) return targets[i]!.upstream;
    return targets[targets.length - 1]!.upstream;
  }
}

/**
 * Why a configured path prefix can never be matched as written, or undefined when it is fine. Request
 * paths are normalized (no `;` parameters, no query, no fragment), so a prefix that does not survive the
 * same normalization unchanged in meaning would silently send its requests to another route.
 */
export function pathPrefixProblem(prefix: string): string | undefined {
  if (!prefix.startsWith('/')) return `path "${prefix}" must start with "/"`;
  try {
    // `reject`: a prefix with ';' never matches a stripped request path, and never a rejected one.
    const n = normalizePath(prefix, undefined, 'reject');
    if (n.query !== '') return `path "${prefix}" has a query string, which is not part of a path`;
  } catch (err) {
    return `invalid path "${prefix}": ${(err as Error).message}`;
  }
  return undefined;
}

/**
 * Problems of the routes (config path and message), for the configuration loader: `match.path` prefixes
 * no request path can carry, and method-override headers that a route with `methodOverride` would not
 * forward as sent (its `headers.request` or its upstream's `inject` replaces or removes them), so the
 * upstream would act on another method than the one routing and policy decided on.
 */
export function routeProblems(config: Config): Array<{ path: Array<string | number>; message: string }> {
  const out: Array<{ path: Array<string | number>; message: string }> = [];
  config.routes.forEach((r, i) => {
    const problem = pathPrefixProblem(r.match.path);
    if (problem !== undefined) out.push({ path: ['routes', i, 'match', 'path'], message: problem });
    if (!r.methodOverride) return;
    const edits = r.headers?.request;
    const edited = overrideHeaderIn([...(edits?.remove ?? []), ...Object.keys(edits?.set ?? {})]);
    if (edited !== undefined)
      out.push({ path: ['routes', i, 'headers', 'request'], message: overrideMessage(edited, 'this route') });
    const upstreams = r.split === undefined ? [r.upstream ?? ''] : r.split.targets.map((t) => t.upstream);
    for (const name of upstreams) {
      const injected = overrideHeaderIn(Object.keys(config.upstreams[name]?.inject?.headers ?? {}));
      if (injected === undefined) continue;
      const where = r.split === undefined ? ['routes', i, 'upstream'] : ['routes', i, 'split'];
      out.push({ path: where, message: overrideMessage(injected, `upstream ${name}`) });
      break;
    }
  });
  return out;
}

function overrideHeaderIn(names: readonly string[]): string | undefined {
  return names.find((n) => METHOD_OVERRIDE_HEADERS.includes(n.toLowerCase()));
}

function overrideMessage(header: string, who: string): string {
  return (
    `${header} is set or removed by ${who}, but methodOverride decides on the client's value: ` +
    'the upstream would act on another method than the one routing and policy saw'
  );
}

// The configured prefix is normalized like request paths so `/api//v1` and `/%7Eu` match what clients
// send. One that cannot be (the loader reports it first) fails the build instead of never matching.
function normalizePrefix(prefix: string, index: number): string {
  const problem = pathPrefixProblem(prefix);
  if (problem !== undefined)
    throw new ConfigSettingError('GH_CONFIG_INVALID', `routes.${index}.match.path`, problem);
  return normalizePath(prefix).path;
}

function entryMatches(e: Entry, facts: RequestFacts): boolean {
  const path = facts.path;
  if (path !== e.base && !path.startsWith(e.dir)) return false;
  if (e.methods !== undefined && !e.methods.has(facts.method)) return false;
  if (e.headers !== undefined) {
    for (let i = 0; i < e.headers.length; i++) {
      const [name, want] = e.headers[i]!;
      const got = facts.headers[name];
      if (got === undefined) return false;
      if (want === '*') continue;
      if (typeof got === 'string' ? got !== want : !got.includes(want)) return false;
    }
  }
  return true;
}

function scan(entries: readonly Entry[] | undefined, facts: RequestFacts): CompiledRoute | undefined {
  if (entries === undefined) return undefined;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    if (entryMatches(e, facts)) return e.route;
  }
  return undefined;
}

function bySpecificity(a: Entry, b: Entry): number {
  return b.prefix.length - a.prefix.length || b.conditions - a.conditions || a.order - b.order;
}

class Table implements RouteTable {
  readonly routes: readonly CompiledRoute[];
  readonly #exact: Map<string, Entry[]>;
  readonly #wildcards: readonly WildcardBucket[];
  readonly #anyHost: readonly Entry[];

  constructor(
    routes: CompiledRoute[],
    exact: Map<string, Entry[]>,
    wildcards: WildcardBucket[],
    anyHost: Entry[],
  ) {
    this.routes = routes;
    this.#exact = exact;
    this.#wildcards = wildcards;
    this.#anyHost = anyHost;
  }

  match(facts: RequestFacts): CompiledRoute | undefined {
    const host = facts.host;
    const exact = scan(this.#exact.get(host), facts);
    if (exact !== undefined) return exact;
    const wildcards = this.#wildcards;
    for (let i = 0; i < wildcards.length; i++) {
      const w = wildcards[i]!;
      // Any subdomain (one or more labels), never the apex itself.
      if (host.length > w.suffix.length && host.endsWith(w.suffix)) {
        const r = scan(w.entries, facts);
        if (r !== undefined) return r;
      }
    }
    return scan(this.#anyHost, facts);
  }
}

/** Lower-cases a configured host pattern and drops a port or trailing dot, as `normalizeHost` does. */
function hostKey(pattern: string): string {
  let h = pattern.trim().toLowerCase();
  if (!h.startsWith('[')) {
    const colon = h.lastIndexOf(':');
    if (colon !== -1) h = h.slice(0, colon);
  } else {
    const close = h.indexOf(']');
    if (close !== -1) h = h.slice(0, close + 1);
  }
  if (h.endsWith('.')) h = h.slice(0, -1);
  return h;
}

/** Compiles a route's `match.host` (see `RouteHosts`); the sign-in return check reads hosts this way too. */
export function compileHosts(match: string | string[] | undefined): RouteHosts {
  const patterns = match === undefined ? [] : Array.isArray(match) ? match : [match];
  const exact: string[] = [];
  const suffixes: string[] = [];
  let any = patterns.length === 0;
  for (const pattern of patterns) {
    const key = hostKey(pattern);
    if (key === '*' || key === '') any = true;
    else if (key.startsWith('*.')) suffixes.push(key.slice(1));
    else exact.push(key);
  }
  return { exact, suffixes, any };
}

function addEntry(bucket: Map<string, Entry[]>, key: string, entry: Entry): void {
  const list = bucket.get(key);
  if (list === undefined) bucket.set(key, [entry]);
  else list.push(entry);
}

/** Compiles the routes of a configuration into a table for the hot path. */
export function compileRoutes(config: Config): RouteTable {
  const compiled: CompiledRoute[] = [];
  const exact = new Map<string, Entry[]>();
  const wildcardMap = new Map<string, Entry[]>();
  const anyHost: Entry[] = [];
  const serverMaxBody = config.server.maxBodySize;
  config.routes.forEach((rc, order) => {
    const route = new Route(rc, serverMaxBody, order);
    compiled.push(route);
    const prefix = route.pathPrefix;
    const headerConds = rc.match.headers
      ? Object.entries(rc.match.headers).map(([k, v]) => [k.toLowerCase(), v] as const)
      : undefined;
    const base = prefix.length > 1 && prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
    const entry: Entry = {
      route,
      prefix,
      base,
      dir: base.endsWith('/') ? base : base + '/',
      methods: rc.match.methods ? new Set(rc.match.methods) : undefined,
      headers: headerConds && headerConds.length > 0 ? headerConds : undefined,
      conditions: (rc.match.methods ? 1 : 0) + (headerConds?.length ? 1 : 0),
      order,
    };
    const hosts = route.hosts;
    if (hosts.any) anyHost.push(entry);
    for (const suffix of hosts.suffixes) addEntry(wildcardMap, suffix, entry);
    for (const key of hosts.exact) addEntry(exact, key, entry);
  });
  for (const list of exact.values()) list.sort(bySpecificity);
  const wildcards: WildcardBucket[] = [];
  for (const [suffix, entries] of wildcardMap)
    wildcards.push({ suffix, entries: entries.sort(bySpecificity) });
  wildcards.sort((a, b) => b.suffix.length - a.suffix.length || (a.suffix < b.suffix ? -1 : 1));
  anyHost.sort(bySpecificity);
  return new Table(compiled, exact, wildcards, anyHost);
}

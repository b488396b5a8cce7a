/**
 * The route table, compiled once per configuration load. Matching is a map lookup on the host plus a
 * short scan of routes pre-sorted by specificity, so the most specific route always wins, deterministically:
 * exact host > wildcard host (longer suffix first) > any host; then the longer path prefix; then routes
 * with method or header conditions; then configuration order.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Config, RouteConfig } from '../config/schema.js';
import { normalizePath } from './normalize.js';
import type { CompiledRoute, RequestFacts, RouteTable } from './types.js';

/** One route as it sits in a host bucket. */
interface Entry {
  readonly route: CompiledRoute;
  readonly prefix: string;
  /** `prefix + '/'` when the prefix has no trailing slash (segment-aware match), else undefined. */
  readonly prefixDir: string | undefined;
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
  readonly maxBodySize: number | undefined;
  readonly pathPrefix: string;
  readonly websocketIdleTimeout: number | undefined;
  readonly upstreamNames: readonly string[];
  readonly #single: string | undefined;
  readonly #targets: ReadonlyArray<{ upstream: string; cumulative: number }>;
  readonly #total: number;
  readonly #pinHeader: string | undefined;

  constructor(config: RouteConfig, serverMaxBody: number | undefined) {
    this.name = config.name;
    this.config = config;
    this.maxBodySize = config.maxBodySize ?? serverMaxBody;
    this.pathPrefix = normalizePrefix(config.match.path);
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

// The configured prefix is normalized like request paths so `/api//v1` and `/%7Eu` match what clients send.
function normalizePrefix(prefix: string): string {
  try {
    return normalizePath(prefix).path;
  } catch {
    return prefix;
  }
}

function entryMatches(e: Entry, facts: RequestFacts): boolean {
  const path = facts.path;
  if (e.prefixDir === undefined) {
    if (!path.startsWith(e.prefix)) return false;
  } else if (path !== e.prefix && !path.startsWith(e.prefixDir)) {
    return false;
  }
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

/** Compiles the routes of a configuration into a table for the hot path. */
export function compileRoutes(config: Config): RouteTable {
  const compiled: CompiledRoute[] = [];
  const exact = new Map<string, Entry[]>();
  const wildcardMap = new Map<string, Entry[]>();
  const anyHost: Entry[] = [];
  const serverMaxBody = config.server.maxBodySize;
  config.routes.forEach((rc, order) => {
    const route = new Route(rc, serverMaxBody);
    compiled.push(route);
    const prefix = route.pathPrefix;
    const headerConds = rc.match.headers
      ? Object.entries(rc.match.headers).map(([k, v]) => [k.toLowerCase(), v] as const)
      : undefined;
    const entry: Entry = {
      route,
      prefix,
      prefixDir: prefix.endsWith('/') ? undefined : prefix + '/',
      methods: rc.match.methods ? new Set(rc.match.methods) : undefined,
      headers: headerConds && headerConds.length > 0 ? headerConds : undefined,
      conditions: (rc.match.methods ? 1 : 0) + (headerConds?.length ? 1 : 0),
      order,
    };
    const hosts =
      rc.match.host === undefined ? [] : Array.isArray(rc.match.host) ? rc.match.host : [rc.match.host];
    if (hosts.length === 0) anyHost.push(entry);
    for (const pattern of hosts) {
      const key = hostKey(pattern);
      if (key === '*' || key === '') {
        anyHost.push(entry);
      } else if (key.startsWith('*.')) {
        const suffix = key.slice(1);
        let list = wildcardMap.get(suffix);
        if (!list) {
          list = [];
          wildcardMap.set(suffix, list);
        }
        list.push(entry);
      } else {
        let list = exact.get(key);
        if (!list) {
          list = [];
          exact.set(key, list);
        }
        list.push(entry);
      }
    }
  });
  for (const list of exact.values()) list.sort(bySpecificity);
  const wildcards: WildcardBucket[] = [];
  for (const [suffix, entries] of wildcardMap)
    wildcards.push({ suffix, entries: entries.sort(bySpecificity) });
  wildcards.sort((a, b) => b.suffix.length - a.suffix.length || (a.suffix < b.suffix ? -1 : 1));
  anyHost.sort(bySpecificity);
  return new Table(compiled, exact, wildcards, anyHost);
}

/**
 * What the built-in proxy's HTTP and WebSocket paths both derive from a request and its route before
 * forwarding it, and the vetting both apply to the upstream's answer: the per-route compiled state
 * (header edits, metric children), the trusted-proxy matcher, the Host as received, the path to
 * forward, and the gateway's own cookies that a backend may not set.
 */
import type { BlockList } from 'node:net';
import type { Config } from '../config/schema.js';
import type { CompiledRoute } from '../core/types.js';
import { bytesTotal, requestDuration } from '../observe/metrics.js';
import type { RequestTrace } from '../observe/tracing.js';
import type { Runtime } from '../runtime.js';
import { UpstreamProtocolError } from '../upstream/interim.js';
import { compileEdits, compileTrusted, type HeaderEdits } from './headers.js';
import type { ProxyRequest } from './types.js';

/** The route name of requests that matched no route, in metrics and in the access log. */
export const NO_ROUTE = '(none)';

type Child = { inc(v?: number): void };
type HistChild = { observe(v: number): void };

/** Per-route compiled state: header edits and cached metric children (label lookups off the hot path). */
export interface RouteState {
  readonly name: string;
  readonly requestEdits: HeaderEdits | undefined;
  /** The edits for a forwarded TRACE: the removals only, since values the route sets may be secrets. */
  readonly traceEdits: HeaderEdits | undefined;
  readonly responseEdits: HeaderEdits | undefined;
  readonly duration: HistChild;
  readonly bytesIn: Child;
  readonly bytesOut: Child;
  readonly requests: Map<number, Child>;
}

const routeStates = new WeakMap<CompiledRoute, RouteState>();

function makeRouteState(name: string, route: CompiledRoute | undefined): RouteState {
  const requestEdits = compileEdits(route?.config.headers?.request);
  return {
    name,
    requestEdits,
    traceEdits: requestEdits === undefined ? undefined : { set: [], drop: requestEdits.drop },
    responseEdits: compileEdits(route?.config.headers?.response),
    duration: requestDuration.series(name),
    bytesIn: bytesTotal.series(name, 'in'),
    bytesOut: bytesTotal.series(name, 'out'),
    requests: new Map(),
  };
}

/** The compiled per-route state, built on first use after each (re)load. */
export function routeState(route: CompiledRoute): RouteState {
  let s = routeStates.get(route);
  if (s === undefined) {
    s = makeRouteState(route.name, route);
    routeStates.set(route, s);
  }
  return s;
}

let noRoute: RouteState | undefined;

/** The state of requests that matched no route (metrics only: it has no header edits). */
export function noRouteState(): RouteState {
  noRoute ??= makeRouteState(NO_ROUTE, undefined);
  return noRoute;
}

const trustedCache = new WeakMap<Config, { list: BlockList | undefined }>();

/** The trusted-proxy matcher of a configuration, compiled once. */
export function trustedOf(config: Config): BlockList | undefined {
  let t = trustedCache.get(config);
  if (t === undefined) {
    t = { list: compileTrusted(config.server.trustedProxies) };
    trustedCache.set(config, t);
  }
  return t.list;
}

/**
 * The trace a request starts when tracing is on, else undefined: the one check a request pays for
 * tracing when it is off. `who` says where it came from (the exchange or the WebSocket tunnel).
 */
export function traceOf(
  runtime: Runtime,
  req: ProxyRequest,
  who: {
    readonly method: string;
    readonly clientIp: string;
    readonly peerIp: string;
    readonly peerTrusted: boolean;
  },
  tls: boolean,
): RequestTrace | undefined {
  const tracing = runtime.tracing;
  if (tracing === undefined) return undefined;
  return tracing.startRequest({
    method: who.method,
    clientIp: who.clientIp,
    peerIp: who.peerIp,
    peerTrusted: who.peerTrusted,
    headers: req.headers,
    tls,
    httpVersion: req.httpVersion,
  });
}

/** The client's Host (or HTTP/2 `:authority`) value as received. */
export function hostHeaderOf(req: ProxyRequest): string | undefined {
  const h = req.headers;
  const authority = h[':authority'];
  return typeof authority === 'string' ? authority : h.host;
}

/** The path to forward: the normalized path, minus the route prefix when `stripPrefix` is set. */
export function forwardPath(route: CompiledRoute, path: string, query: string): string {
  if (!route.config.stripPrefix) return query === '' ? path : path + query;
  const prefix = route.pathPrefix;
  let rest = prefix.endsWith('/') ? path.slice(prefix.length - 1) : path.slice(prefix.length);
  if (rest === '') rest = '/';
  return query === '' ? rest : rest + query;
}

const ownCookiesCache = new WeakMap<Config, { names: ReadonlySet<string> | undefined }>();

/**
 * The cookies the gateway itself sets under a configuration: the session and login cookies and every
 * upstream's sticky cookie; undefined when there is none. Compiled once per configuration.
 */
export function ownCookiesOf(config: Config): ReadonlySet<string> | undefined {
  let c = ownCookiesCache.get(config);
  if (c === undefined) {
    const names = new Set<string>();
    const session = config.identity?.session?.cookie;
    if (session !== undefined) names.add(session).add(`${session}_login`);
    for (const up of Object.values(config.upstreams)) if (up.sticky) names.add(up.sticky.cookie);
    c = { names: names.size === 0 ? undefined : names };
    ownCookiesCache.set(config, c);
  }
  return c.names;
}

/** The name of the cookie a Set-Cookie value sets (RFC 6265 §5.2: up to the first `=`, trimmed). */
function setCookieName(value: Buffer): string {
  const text = value.toString('latin1');
  const eq = text.indexOf('=');
  return (eq === -1 ? '' : text.slice(0, eq)).trim();
}

const SET_COOKIE = Buffer.from('set-cookie');
const TRANSFER_ENCODING = Buffer.from('transfer-encoding');

/** A raw field name equals `lower` (a lower-case letters-and-dashes name) in any case. */
function isField(name: Buffer, lower: Buffer): boolean {
  if (name.length !== lower.length) return false;
  for (let i = 0; i < lower.length; i++) if ((name[i]! | 0x20) !== lower[i]) return false;
  return true;
}

/**
 * One pass over the upstream's final response fields, before they are forwarded:
 * - a transfer coding other than a single `chunked` is refused (502): the gateway forwards the decoded
 *   body without the hop-by-hop Transfer-Encoding, so `gzip` and chains would reach the client as
 *   unlabelled coded bytes (HAProxy refuses them too);
 * - Set-Cookie fields for a cookie the gateway owns (`own`) are removed: a backend could otherwise plant
 *   a session of its choosing in the browser (session fixation), sign a user out, or re-pin stickiness.
 * Returns `raw` itself when nothing is removed (the common case).
 */
export function vetResponseFields(raw: Buffer[], own: ReadonlySet<string> | undefined): Buffer[] {
  let out: Buffer[] | undefined;
  let codings = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    let drop = false;
    if (name.length === 17 && isField(name, TRANSFER_ENCODING)) {
      codings++;
      if (codings > 1 || raw[i + 1]!.toString('latin1').trim().toLowerCase() !== 'chunked') {
        throw new UpstreamProtocolError('transfer-coding');
      }
    } else if (own !== undefined && name.length === 10 && isField(name, SET_COOKIE)) {
      drop = own.has(setCookieName(raw[i + 1]!));
    }
    if (drop && out === undefined) out = raw.slice(0, i);
    else if (!drop && out !== undefined) out.push(name, raw[i + 1]!);
  }
  return out ?? raw;
}

/**
 * The method a request is routed, authorized and logged with, decided once for the proxy and for the
 * offline `check`/`explain`:
 *
 *   route with the request's own method ................................. no route: 404 GH_NO_ROUTE
 *   method override (only on a route with `methodOverride: true`)
 *     carried by anything but a POST, conflicting, invalid, or to HEAD ... 400 GH_BAD_METHOD_OVERRIDE
 *     named in Connection (it would not reach the upstream) ............. 400 GH_BAD_METHOD_OVERRIDE
 *     route again with the overriding method: that route must opt in too .. 400 GH_BAD_METHOD_OVERRIDE
 *   CONNECT always, TRACE unless the route sets `trace: true` ... 405 GH_METHOD_NOT_ALLOWED with Allow
 *
 * Routing comes first because only the route says whether an override is accepted. A POST is the one
 * method that may carry an override: a cross-site form or `<img>` cannot turn a GET into a DELETE. The
 * override then replaces the method everywhere (route `match.methods`, policy `methods` rules, the
 * TRACE/CONNECT refusal, the access log), while the upstream still receives the POST with its override
 * header, which it acts on; so the route reached with the overriding method must accept overrides too.
 */
import { GatehouseError, NoRouteError } from '../errors.js';
import type { CompiledRoute, RequestFacts, RouteTable } from './types.js';

/** Headers through which frameworks let a POST stand for another method (Rails, Express, Laravel, Google APIs). */
export const METHOD_OVERRIDE_HEADERS: readonly string[] = [
  'x-http-method-override',
  'x-http-method',
  'x-method-override',
];

/** What `Allow` lists for a route without `match.methods`. */
const USUAL_METHODS: readonly string[] = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'];

/** What `Allow` lists when no route is known (a CONNECT, whose target names no path). */
export const USUAL_ALLOW = USUAL_METHODS.join(', ');

const TOKEN = /^[A-Za-z]{1,32}$/;

/** The method is refused for this target (405); `allow` is the `Allow` header to send (RFC 9110 §15.5.6). */
export class MethodNotAllowedError extends GatehouseError {
  readonly allow: string;
  /** The route whose methods `allow` lists, when one is known (for `explain`). */
  readonly route: CompiledRoute | undefined;
  constructor(method: string, allow: string, route?: CompiledRoute) {
    super('GH_METHOD_NOT_ALLOWED', 405, `${method} is not allowed here`);
    this.allow = allow;
    this.route = route;
  }
}

/** A method override that the gateway does not accept (400). */
export class MethodOverrideError extends GatehouseError {
  /** The route the override was refused on (for `explain`). */
  readonly route: CompiledRoute | undefined;
  constructor(message: string, route?: CompiledRoute) {
    super('GH_BAD_METHOD_OVERRIDE', 400, message);
    this.route = route;
  }
}

/** The `Allow` value of a route: its `match.methods` (or the usual set), TRACE only when it opts in. */
export function allowOf(route: CompiledRoute | undefined): string {
  if (route === undefined) return USUAL_ALLOW;
  const listed = route.config.match.methods;
  const out = (listed ?? USUAL_METHODS).filter((m) => m !== 'CONNECT' && m !== 'TRACE');
  if (route.config.trace && (listed === undefined || listed.includes('TRACE'))) out.push('TRACE');
  return out.join(', ');
}

/**
 * The overriding method a request asks for (upper-cased, as the frameworks that honour it do), or
 * undefined when it sends none. Several override headers or lines must all name the same method.
 */
export function overrideOf(headers: RequestFacts['headers']): string | undefined {
  let method: string | undefined;
  for (const name of METHOD_OVERRIDE_HEADERS) {
    const value = headers[name];
    if (value === undefined) continue;
    // Repeated lines of an unknown header arrive joined with ", ".
    for (const part of (typeof value === 'string' ? value : value.join(',')).split(',')) {
      const m = part.trim().toUpperCase();
      if (!TOKEN.test(m)) throw new MethodOverrideError('the method override is not a method name');
      if (method !== undefined && m !== method) throw new MethodOverrideError('conflicting method overrides');
      method = m;
    }
  }
  return method;
}

/**
 * Routes a request and settles its method (see the table above). `facts.method` is replaced by an
 * accepted override, so everything after this (policy, the log) sees it. Throws `NoRouteError`,
 * `MethodOverrideError` or `MethodNotAllowedError`.
 */
export function routeRequest(table: RouteTable, facts: RequestFacts): CompiledRoute {
  let route = table.match(facts);
  if (route?.config.methodOverride === true) route = applyOverride(table, facts, route);
  const method = facts.method;
  if (method === 'TRACE' || method === 'CONNECT') {
    if (method === 'TRACE' && route?.config.trace === true) return route;
    // Allow names what the target accepts: the route this method reached, else the one a GET reaches.
    const target = route ?? table.match({ ...facts, method: 'GET' });
    if (target === undefined) throw new NoRouteError();
    throw new MethodNotAllowedError(method, allowOf(target), target);
  }
  if (route === undefined) throw new NoRouteError();
  return route;
}

function applyOverride(
  table: RouteTable,
  facts: RequestFacts,
  route: CompiledRoute,
): CompiledRoute | undefined {
  let override: string | undefined;
  try {
    override = overrideOf(facts.headers);
  } catch (err) {
    throw new MethodOverrideError((err as Error).message, route);
  }
  if (override === undefined) return route;
  if (facts.method !== 'POST')
    throw new MethodOverrideError('only a POST may carry a method override', route);
  // The upstream may answer the overridden request as a HEAD, without the body its framing announces.
  if (override === 'HEAD') throw new MethodOverrideError('a POST cannot be overridden to HEAD', route);
  // A header named in Connection is removed before forwarding (RFC 9110 §7.6.1): the upstream would
  // act on the POST that routing and policy never saw.
  if (connectionNamesOverride(facts.headers.connection))
    throw new MethodOverrideError('a method override header is named in Connection', route);
  facts.method = override;
  const target = table.match(facts);
  if (target !== undefined && target.config.methodOverride !== true) {
    throw new MethodOverrideError(`route ${target.name} does not accept method overrides`, target);
  }
  return target;
}

/** True when a Connection header value lists one of the method-override headers. */
function connectionNamesOverride(value: string | string[] | undefined): boolean {
  if (value === undefined) return false;
  for (const token of (typeof value === 'string' ? value : value.join(',')).split(',')) {
    if (METHOD_OVERRIDE_HEADERS.includes(token.trim().toLowerCase())) return true;
  }
  return false;
}

/**
 * The normalized description of a request that every decision is taken on, and the compiled route
 * table. The same normalized path is used for matching, for policy and for forwarding.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { RouteConfig } from '../config/schema.js';

/** A request reduced to what routing and policy look at. */
export interface RequestFacts {
  method: string;
  /** Lower-case host without port. */
  host: string;
  /**
   * The authority as received, before normalization: an absolute-form target's, else `:authority`,
   * else Host (RFC 9112 §3.2.2). What redirects back to this host are built from.
   */
  authority: string;
  /** Normalized path (no query), see `normalizePath`. */
  path: string;
  /** Raw query string including the leading `?`, or ''. */
  query: string;
  headers: IncomingHttpHeaders;
  clientIp: string;
  tls: boolean;
}

/** A route's `match.host`, compiled once: which request hosts (see `normalizeHost`) it answers. */
export interface RouteHosts {
  /** Exact host names: lower case, without port or trailing dot. */
  readonly exact: readonly string[];
  /** `.example.com` for each `*.example.com`: any subdomain, on a label boundary, never the apex. */
  readonly suffixes: readonly string[];
  /** No host condition, or `*`: any host. */
  readonly any: boolean;
}

/** A route ready for the hot path. */
export interface CompiledRoute {
  readonly name: string;
  readonly config: RouteConfig;
  /** The hosts the route answers (routing and the WebSocket Origin check share them). */
  readonly hosts: RouteHosts;
  /** Upstream name for this request (applies the weighted split and the pin header). */
  pickUpstream(headers: IncomingHttpHeaders): string;
  /** Effective body limit in bytes, or undefined for none. */
  readonly maxBodySize: number | undefined;
  /** Normalized path prefix the route matched on (what `stripPrefix` removes). */
  readonly pathPrefix: string;
  /** WebSocket idle timeout in ms when upgrades are allowed on this route, else undefined. */
  readonly websocketIdleTimeout: number | undefined;
  /** Every upstream name the route may send to (one, or the split's targets). */
  readonly upstreamNames: readonly string[];
}

/** Finds the most specific route for a request, deterministically. */
export interface RouteTable {
  readonly routes: readonly CompiledRoute[];
  match(facts: RequestFacts): CompiledRoute | undefined;
}

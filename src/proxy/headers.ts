/**
 * Header hygiene. Hop-by-hop headers and every header named in `Connection` are removed before any
 * rewriting runs, so a client cannot strip headers the gateway adds (RFC 9110 7.6.1). Client-sent
 * `X-Gatehouse-*` headers (also spelled with underscores) never reach an upstream, nor do headers that
 * tell a backend the client's address, scheme, host or identity unless a trusted proxy sent them, URL
 * rewrite headers, and (unless the route opts in) method-override headers.
 */
import { randomBytes } from 'node:crypto';
import { BlockList, isIP } from 'node:net';
import { METHOD_OVERRIDE_HEADERS } from '../core/methods.js';

/** Connection-specific headers (RFC 9110 7.6.1, RFC 9113 8.2.2); never forwarded in either direction. */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'http2-settings',
  'proxy-authenticate',
  'proxy-authorization',
]);

// Classes of request header names, looked up once per header (`REQUEST_CLASS`).
/** Hop-by-hop: never forwarded. */
const C_HOP = 1;
/** Set by the gateway: the client's copy is replaced (a trusted peer's X-Forwarded-For/-Proto/-Host extended). */
const C_OWN = 2;
/** Says who or where the client is (address, scheme, host, port, prefix, certificate, user): only from a trusted peer. */
const C_PROXY = 3;
/** Makes a backend act on another URL than the one routed and authorized: never forwarded. */
const C_REWRITE = 4;
/** Makes a backend act on another method: forwarded only when the route opts in. */
const C_OVERRIDE = 5;
/**
 * A singleton field the gateway checks (RFC 9110 §11.6.2): only the first line, the one Node exposes and
 * the access stage checked, is forwarded, so a backend never acts on a second, unchecked credential.
 */
const C_FIRST = 6;

// Set by the gateway itself, so the client's copies are dropped (`expect` is answered by Node).
const REPLACED_REQUEST = [
  'host',
  'expect',
  'x-request-id',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
];

/**
 * Headers a proxy in front writes to tell a backend about the client, read by common frameworks when
 * they trust their peer: Express/Koa/Fastify `trust proxy`, Django (`SECURE_PROXY_SSL_HEADER`,
 * `USE_X_FORWARDED_HOST/PORT`), Rails/Rack (`Client-IP`, `X-Forwarded-Scheme/-Ssl`, `X-Url-Scheme`,
 * `Forwarded`), Spring `ForwardedHeaderFilter` and Tomcat `RemoteIpValve` (`X-Forwarded-Prefix/-By`),
 * Werkzeug `ProxyFix`, Symfony/Laravel `TrustProxies`, ASP.NET Core (`X-Original-*`), Go chi/gin/echo
 * (`True-Client-IP`, `X-Real-IP`, `X-Forwarded-Protocol`), Plack (`Front-End-Https`), PHP IP helpers
 * (`X-Cluster-Client-IP`, `Forwarded-For`), CDNs and clouds (Cloudflare, Fastly, Akamai, Azure,
 * App Engine, Fly), client-certificate headers (nginx, Envoy XFCC, Traefik, IIS ARR) and the user
 * headers of auth proxies (oauth2-proxy, Grafana auth.proxy, Django `RemoteUserMiddleware`).
 * The gateway is the proxy in front: these are believed only from `server.trustedProxies`.
 */
const PROXY_REQUEST = [
  // address
  'forwarded',
  'x-forwarded',
  'forwarded-for',
  'x-real-ip',
  'true-client-ip',
  'x-true-client-ip',
  'x-client-ip',
  'x-cluster-client-ip',
  'client-ip',
  'x-forwarded-client-ip',
  'x-originating-ip',
  'x-remote-ip',
  'x-remote-addr',
  'x-proxyuser-ip',
  'x-original-forwarded-for',
  'x-original-for',
  'x-forwarded-by',
  'x-envoy-external-address',
  'cf-connecting-ip',
  'cf-connecting-ipv6',
  'fastly-client-ip',
  'x-azure-clientip',
  'x-azure-socketip',
  'x-appengine-user-ip',
  'x-appengine-remote-addr',
  'fly-client-ip',
  // host and port
  'x-forwarded-server',
  'x-forwarded-port',
  'x-host',
  'x-http-host-override',
  'x-original-host',
  // scheme
  'x-forwarded-protocol',
  'x-forwarded-scheme',
  'x-forwarded-ssl',
  'x-scheme',
  'x-url-scheme',
  'x-original-proto',
  'front-end-https',
  'x-arr-ssl',
  'cf-visitor',
  'fastly-ssl',
  // path and method of the original request
  'x-forwarded-prefix',
  'x-forwarded-path',
  'x-forwarded-uri',
  'x-original-prefix',
  'x-forwarded-method',
  'x-original-method',
  // client certificate
  'x-forwarded-client-cert',
  'x-forwarded-tls-client-cert',
  'x-forwarded-tls-client-cert-info',
  'x-client-cert',
  'x-ssl-client-cert',
  'ssl-client-cert',
  'x-ssl-cert',
  'x-ssl-client-verify',
  'x-client-verify',
  'x-ssl-client-dn',
  'x-ssl-client-s-dn',
  'x-client-dn',
  'x-arr-clientcert',
  // user, as an auth proxy in front would say
  'remote-user',
  'x-remote-user',
  'x-forwarded-user',
  'x-forwarded-email',
  'x-forwarded-preferred-username',
  'x-forwarded-groups',
  'x-forwarded-access-token',
  'x-auth-request-user',
  'x-auth-request-email',
  'x-auth-request-groups',
  'x-auth-request-preferred-username',
  'x-auth-request-access-token',
  'x-webauth-user',
  'x-authenticated-user',
];

/**
 * URL rewrite headers: IIS URL Rewrite, Zend/Laminas and old Symfony take the request path from
 * `X-Original-URL`/`X-Rewrite-URL` (CVE-2018-14773), so a backend would act on a path the gateway never
 * routed or authorized. Never forwarded, whoever sends them.
 */
const REWRITE_REQUEST = [
  'x-original-url',
  'x-rewrite-url',
  'x-original-uri',
  'x-override-url',
  'x-original-path',
  'x-envoy-original-path',
];

function classTable(): Map<string, number> {
  const m = new Map<string, number>();
  const add = (names: Iterable<string>, c: number): void => {
    for (const n of names) m.set(n, c);
  };
  add(PROXY_REQUEST, C_PROXY);
  add(REWRITE_REQUEST, C_REWRITE);
  add(METHOD_OVERRIDE_HEADERS, C_OVERRIDE);
  add(REPLACED_REQUEST, C_OWN);
  add(HOP_BY_HOP, C_HOP);
  m.set('authorization', C_FIRST);
  return m;
}

/** Lower-case request header name to its class; names not in it are forwarded. */
const REQUEST_CLASS: ReadonlyMap<string, number> = classTable();

/** The headers that describe the client and are kept only from `server.trustedProxies` (lower case). */
export const TRUSTED_ONLY_REQUEST_HEADERS: ReadonlySet<string> = new Set(PROXY_REQUEST);

/** URL rewrite headers, never forwarded (lower case). */
export const REWRITE_REQUEST_HEADERS: ReadonlySet<string> = new Set(REWRITE_REQUEST);

const GATEHOUSE_PREFIX = 'x-gatehouse-';

/** The first value of a field in flat `[name, value, ...]` headers (`lower`: a lower-case name). */
export function fieldValue(headers: readonly string[], lower: string): string | undefined {
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i]!;
    if (name.length === lower.length && name.toLowerCase() === lower) return headers[i + 1];
  }
  return undefined;
}

/**
 * True for names that are `X-Gatehouse-…` after mapping `_` to `-` (some servers treat them alike,
 * so `X_Gatehouse_User` could otherwise pass as `X-Gatehouse-User`). Expects a lower-case name.
 */
export function isGatehouseHeader(lower: string): boolean {
  if (lower.length < GATEHOUSE_PREFIX.length) return false;
  for (let i = 0; i < GATEHOUSE_PREFIX.length; i++) {
    const c = lower.charCodeAt(i);
    const want = GATEHOUSE_PREFIX.charCodeAt(i);
    if (c !== want && !(want === 0x2d && c === 0x5f)) return false;
  }
  return true;
}

/** Lower-case tokens of a `Connection` header value; undefined when there is nothing to remove. */
export function connectionTokens(value: string | string[] | undefined): string[] | undefined {
  if (value === undefined) return undefined;
  const text = typeof value === 'string' ? value : value.join(',');
  // Nearly every message says just `keep-alive` or `close`: answer those without splitting.
  if (text.length <= 10) {
    const t = text.trim().toLowerCase();
    if (t === 'keep-alive' || t === 'close' || t === 'upgrade' || t === '') return undefined;
  }
  let tokens: string[] | undefined;
  for (const part of text.split(',')) {
    const t = part.trim().toLowerCase();
    if (t === '' || t === 'close' || t === 'keep-alive' || t === 'upgrade') continue;
    tokens ??= [];
    tokens.push(t);
  }
  return tokens;
}

/** Per-route header edits compiled for the hot path. */
export interface HeaderEdits {
  /** Name and value pairs to set, names as configured. */
  readonly set: ReadonlyArray<readonly [string, string]>;
  /** Lower-case names that are removed or replaced. */
  readonly drop: ReadonlySet<string>;
}

/** Compiles a route's `set`/`remove` lists; undefined when there is nothing to do. */
export function compileEdits(
  edits: { set: Record<string, string>; remove: string[] } | undefined,
): HeaderEdits | undefined {
  if (edits === undefined) return undefined;
  const set = Object.entries(edits.set);
  if (set.length === 0 && edits.remove.length === 0) return undefined;
  const drop = new Set<string>();
  for (const name of edits.remove) drop.add(name.toLowerCase());
  for (const [name] of set) drop.add(name.toLowerCase());
  return { set, drop };
}

const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;
const ID_PREFIX = randomBytes(6).toString('hex');
let idCounter = 0;

/** The client's X-Request-Id when it is a sane token, else a new process-unique id. */
export function requestIdFrom(value: string | string[] | undefined): string {
  if (typeof value === 'string' && REQUEST_ID_RE.test(value)) return value;
  idCounter = (idCounter + 1) % Number.MAX_SAFE_INTEGER;
  return ID_PREFIX + '-' + idCounter.toString(36);
}

/** Removes the IPv4-mapped IPv6 prefix so `::ffff:10.0.0.1` is logged and matched as `10.0.0.1`. */
export function clientAddress(remote: string | undefined): string {
  if (remote === undefined) return '';
  return remote.startsWith('::ffff:') && remote.includes('.') ? remote.slice(7) : remote;
}

/** One X-Forwarded-For entry as an address: brackets and a port removed; undefined when it is not one. */
function forwardedAddress(entry: string): string | undefined {
  let a = entry.trim();
  if (a.charCodeAt(0) === 0x5b) {
    // [2001:db8::1] or [2001:db8::1]:443
    const end = a.indexOf(']');
    a = end === -1 ? '' : a.slice(1, end);
  } else if (a.indexOf(':') !== -1 && a.indexOf(':') === a.lastIndexOf(':')) {
    a = a.slice(0, a.indexOf(':')); // 192.0.2.1:5678
  }
  // A zone id (`fe80::1%eth0`) names an interface of the proxy's host, never a client's address.
  return isIP(a) === 0 || a.includes('%') ? undefined : clientAddress(a);
}

/**
 * The client's address as policies, rate limits, hashing and the access log see it: the peer, unless the
 * peer is a trusted proxy (`server.trustedProxies`; `peerTrusted`, checked by the caller, who needs it
 * for the forwarded headers too) that says in X-Forwarded-For whom it got the request from. The list is
 * read from the right, skipping further trusted proxies, and the first address that is not one is the
 * client ("rightmost untrusted", like nginx's `real_ip_recursive`): entries to the left of it were
 * written by whoever the client is, so they are never believed. An entry that is not an address ends the
 * walk at the last trusted hop, and a list of trusted hops only gives its leftmost one.
 */
export function effectiveClient(
  peer: string,
  peerTrusted: boolean,
  trusted: BlockList | undefined,
  forwardedFor: string | string[] | undefined,
): string {
  if (forwardedFor === undefined || !peerTrusted) return peer;
  const entries = (typeof forwardedFor === 'string' ? forwardedFor : forwardedFor.join(',')).split(',');
  let client = peer;
  for (let i = entries.length - 1; i >= 0; i--) {
    const address = forwardedAddress(entries[i]!);
    if (address === undefined) return client;
    client = address;
    if (!isTrusted(trusted, address)) return address;
  }
  return client;
}

/** Builds a matcher for `server.trustedProxies`. */
export function compileTrusted(cidrs: readonly string[]): BlockList | undefined {
  if (cidrs.length === 0) return undefined;
  const list = new BlockList();
  for (const cidr of cidrs) {
    const [addr, bits] = cidr.split('/') as [string, string | undefined];
    const family = isIP(addr) === 6 ? 'ipv6' : 'ipv4';
    if (bits === undefined) list.addAddress(addr, family);
    else list.addSubnet(addr, Number(bits), family);
  }
  return list;
}

/** True when `ip` is a configured trusted proxy. */
export function isTrusted(list: BlockList | undefined, ip: string): boolean {
  if (list === undefined || ip === '') return false;
  const family = isIP(ip);
  if (family === 0) return false;
  return list.check(ip, family === 6 ? 'ipv6' : 'ipv4');
}

const lowerNamesCache = new WeakMap<ReadonlyArray<readonly [string, string]>, string[]>();

function lowerNames(pairs: ReadonlyArray<readonly [string, string]>): string[] {
  let names = lowerNamesCache.get(pairs);
  if (names === undefined) {
    names = pairs.map((p) => p[0].toLowerCase());
    lowerNamesCache.set(pairs, names);
  }
  return names;
}

/**
 * True when `lower` (a lower-case name containing `_`) reads, with `_` as `-`, as a header the gateway
 * sets, removes or protects: CGI, WSGI, Rack and PHP present `X_Real_IP` and `X-Real-IP` both as
 * `HTTP_X_REAL_IP`, so such a spelling would pass for the real one whoever sends it.
 */
export function isUnderscoreSpelling(lower: string, apiKeyHeader: string | undefined): boolean {
  const dashed = lower.replaceAll('_', '-');
  return (
    REQUEST_CLASS.has(dashed) ||
    isGatehouseHeader(dashed) ||
    (apiKeyHeader !== undefined && dashed === apiKeyHeader)
  );
}

/** Inputs for the forwarded request headers. */
export interface ForwardInput {
  /** Flat `[name, value, ...]` as received (`req.rawHeaders`); HTTP/2 pseudo-headers are skipped. */
  raw: readonly string[];
  /** The Host value to send (patched per attempt at index 1 when the server's host is used). */
  host: string;
  /** The client's Host/:authority value, for X-Forwarded-Host. */
  originalHost: string;
  /** The address that connected to the gateway: appended to X-Forwarded-For. */
  peerIp: string;
  /**
   * The peer is a trusted proxy: its X-Forwarded-* values are kept (and extended), and so are the other
   * headers that describe the client (`Forwarded`, `X-Real-IP`, ...), which are removed otherwise.
   */
  trustedPeer: boolean;
  proto: string;
  requestId: string;
  edits: HeaderEdits | undefined;
  inject: ReadonlyArray<readonly [string, string]>;
  /** The API key header (lower case): its underscore spelling is never forwarded. */
  apiKeyHeader?: string;
  /** Keep the client's method-override headers (the route opted in with methodOverride). */
  methodOverride?: boolean;
}

/**
 * Builds the upstream request headers in one pass: `['host', host, name, value, ...]`. Order of
 * precedence: hygiene, forwarded headers, route edits, then injected credentials (which win).
 */
export function buildRequestHeaders(input: ForwardInput): string[] {
  const raw = input.raw;
  const out: string[] = ['host', input.host];
  let conn: string[] | undefined;
  let xff: string | undefined;
  let xfProto: string | undefined;
  let xfHost: string | undefined;
  let authorization = false;
  /** Index in `out` of the forwarded Cookie value, -1 before the first. */
  let cookieAt = -1;
  // Connection tokens must be known before the pass that filters on them.
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 10 && name.toLowerCase() === 'connection') {
      const t = connectionTokens(raw[i + 1]);
      if (t) conn = conn ? conn.concat(t) : t;
    }
  }
  const trusted = input.trustedPeer;
  const edits = input.edits;
  const inject = input.inject;
  const injectLower = inject.length > 0 ? lowerNames(inject) : undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.charCodeAt(0) === 0x3a) continue; // HTTP/2 pseudo-header
    const lower = name.toLowerCase();
    const c = REQUEST_CLASS.get(lower);
    if (c !== undefined) {
      if (c === C_OWN) {
        if (trusted) {
          if (lower === 'x-forwarded-for') xff = xff === undefined ? raw[i + 1] : xff + ', ' + raw[i + 1];
          else if (lower === 'x-forwarded-proto') xfProto ??= raw[i + 1];
          else if (lower === 'x-forwarded-host') xfHost ??= raw[i + 1];
        }
        continue;
      }
      if (c === C_HOP || c === C_REWRITE) continue;
      if (c === C_PROXY && !trusted) continue;
      if (c === C_OVERRIDE && input.methodOverride !== true) continue;
      if (c === C_FIRST) {
        if (authorization) continue;
        authorization = true;
      }
    } else if (isGatehouseHeader(lower)) {
      continue;
    } else if (lower.indexOf('_') !== -1 && isUnderscoreSpelling(lower, input.apiKeyHeader)) {
      continue;
    }
    if (conn?.includes(lower)) continue;
    if (edits?.drop.has(lower) || injectLower?.includes(lower)) continue;
    if (lower === 'cookie') {
      // HTTP/2 sends cookies as crumbs (RFC 9113 §8.2.3); HTTP/1.1 allows one Cookie line (RFC 6265
      // §5.4), and the gateway read them joined: the upstream gets them joined too.
      if (cookieAt !== -1) {
        out[cookieAt] += '; ' + raw[i + 1]!;
        continue;
      }
      cookieAt = out.length + 1;
    }
    out.push(name, raw[i + 1]!);
  }
  const drop = edits?.drop;
  if (!drop?.has('x-forwarded-for')) {
    out.push('x-forwarded-for', xff === undefined ? input.peerIp : xff + ', ' + input.peerIp);
  }
  if (!drop?.has('x-forwarded-proto')) out.push('x-forwarded-proto', xfProto ?? input.proto);
  if (!drop?.has('x-forwarded-host') && (xfHost ?? input.originalHost) !== '') {
    out.push('x-forwarded-host', xfHost ?? input.originalHost);
  }
  if (!drop?.has('x-request-id')) out.push('x-request-id', input.requestId);
  if (edits !== undefined) {
    for (const [name, value] of edits.set) {
      if (!injectLower?.includes(name.toLowerCase())) out.push(name, value);
    }
  }
  for (const [name, value] of inject) out.push(name, value);
  return out;
}

/**
 * Builds the client response headers from undici's raw response headers: hop-by-hop and
 * Connection-named headers removed, route edits applied, X-Request-Id echoed, a sticky cookie appended.
 */
export function buildResponseHeaders(
  raw: readonly Buffer[],
  edits: HeaderEdits | undefined,
  requestId: string,
  setCookie: string | undefined,
): string[] {
  const out: string[] = [];
  let conn: string[] | undefined;
  const drop = edits?.drop;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toString('latin1');
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower)) {
      if (lower === 'connection') conn = connectionTokens(raw[i + 1]!.toString('latin1'));
      continue;
    }
    if (lower === 'x-request-id' || drop?.has(lower)) continue;
    out.push(name, raw[i + 1]!.toString('latin1'));
  }
  if (conn !== undefined) {
    for (let i = out.length - 2; i >= 0; i -= 2) {
      if (conn.includes(out[i]!.toLowerCase())) out.splice(i, 2);
    }
  }
  if (edits !== undefined) for (const [name, value] of edits.set) out.push(name, value);
  if (!drop?.has('x-request-id')) out.push('x-request-id', requestId);
  if (setCookie !== undefined) out.push('set-cookie', setCookie);
  return out;
}

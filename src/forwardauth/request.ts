/**
 * The original request of a forward-auth subrequest, read from the headers the proxy in front wrote:
 *
 *   Caddy `forward_auth`, Traefik `forwardAuth`   X-Forwarded-Method, X-Forwarded-Uri
 *   nginx `auth_request` (the example config)     X-Original-Method, X-Original-URI
 *   both                                          X-Forwarded-Host (else Host), X-Forwarded-Proto
 *
 * Only called for a peer in `server.trustedProxies` (the endpoint refuses any other with 403 before it
 * looks at these headers). Each header must appear once: a second line could be the client's own,
 * passed on by a proxy that only added its value. When both families are present they must name the
 * same request, else the proxy in front and the gateway could be deciding on different requests.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { GatehouseError } from '../errors.js';

/** Which proxy family described the request: `original` is nginx's (it cannot pass a 302 on). */
export type ForwardedFamily = 'forwarded' | 'original';

/** The original request as the proxy in front described it. */
export interface ForwardedRequest {
  readonly method: string;
  /** Origin-form request target (path and query) as the client sent it to the proxy. */
  readonly uri: string;
  /** X-Forwarded-Host, else the subrequest's Host; undefined when neither is present. */
  readonly host: string | undefined;
  /** X-Forwarded-Proto; undefined when absent (the listener's scheme is used). */
  readonly scheme: 'http' | 'https' | undefined;
  /** `original` when the X-Original-* family was present (nginx), else `forwarded`. */
  readonly family: ForwardedFamily;
}

/** The forwarded headers are missing, repeated or malformed (400 `GH_BAD_FORWARDED`). */
export class ForwardedHeaderError extends GatehouseError {
  /** The header at fault, lower case. */
  readonly header: string;
  constructor(header: string, message: string) {
    super('GH_BAD_FORWARDED', 400, message);
    this.header = header;
  }
}

/** X-Forwarded-* and X-Original-* name different requests (400 `GH_FORWARDED_CONFLICT`). */
export class ForwardedConflictError extends GatehouseError {
  constructor(what: 'method' | 'uri') {
    super(
      'GH_FORWARDED_CONFLICT',
      400,
      `X-Forwarded-${what === 'method' ? 'Method' : 'Uri'} and X-Original-${what === 'method' ? 'Method' : 'URI'} disagree`,
    );
  }
}

/** The headers this module reads, lower case. */
export const FORWARDED_REQUEST_HEADERS: readonly string[] = [
  'x-forwarded-method',
  'x-forwarded-uri',
  'x-original-method',
  'x-original-uri',
  'x-forwarded-host',
  'x-forwarded-proto',
];

/** Longest URI accepted; the listener's `maxHeaderSize` bounds it too. */
const MAX_URI = 8192;
/** A method is an RFC 9110 token; letters only here, as `core/methods.ts` accepts for overrides. */
const METHOD_RE = /^[A-Za-z]{1,32}$/;

/**
 * The original request described by `headers` (Node's parsed headers) and `rawHeaders` (to see repeated
 * lines, which Node joins). Throws `ForwardedHeaderError` or `ForwardedConflictError` (both 400).
 */
export function forwardedRequest(
  headers: IncomingHttpHeaders,
  rawHeaders: readonly string[],
): ForwardedRequest {
  const seen = countLines(rawHeaders);
  const value = (name: string): string | undefined => {
    const n = seen.get(name) ?? 0;
    if (n === 0) return undefined;
    if (n > 1) throw new ForwardedHeaderError(name, `${name} must be sent once`);
    const v = headers[name];
    return typeof v === 'string' ? v : undefined;
  };
  const fMethod = value('x-forwarded-method');
  const fUri = value('x-forwarded-uri');
  const oMethod = value('x-original-method');
  const oUri = value('x-original-uri');
  const forwarded = fMethod !== undefined || fUri !== undefined;
  const original = oMethod !== undefined || oUri !== undefined;
  if (!forwarded && !original) {
    throw new ForwardedHeaderError(
      'x-forwarded-uri',
      'no original request: send X-Forwarded-Method and X-Forwarded-Uri, or X-Original-Method and X-Original-URI',
    );
  }
  let method: string | undefined;
  let uri: string | undefined;
  if (forwarded) {
    method = checkMethod('x-forwarded-method', fMethod);
    uri = checkUri('x-forwarded-uri', fUri);
  }
  if (original) {
    const m = checkMethod('x-original-method', oMethod);
    const u = checkUri('x-original-uri', oUri);
    if (method !== undefined && method !== m) throw new ForwardedConflictError('method');
    if (uri !== undefined && uri !== u) throw new ForwardedConflictError('uri');
    method = m;
    uri = u;
  }
  const host = value('x-forwarded-host') ?? headers.host;
  if (host !== undefined && (host === '' || host.length > 255)) {
    throw new ForwardedHeaderError('x-forwarded-host', 'X-Forwarded-Host is empty or too long');
  }
  const proto = value('x-forwarded-proto');
  let scheme: 'http' | 'https' | undefined;
  if (proto !== undefined) {
    const p = proto.trim().toLowerCase();
    if (p !== 'http' && p !== 'https')
      throw new ForwardedHeaderError('x-forwarded-proto', 'X-Forwarded-Proto must be http or https');
    scheme = p;
  }
  return { method: method!, uri: uri!, host, scheme, family: original ? 'original' : 'forwarded' };
}

function countLines(rawHeaders: readonly string[]): Map<string, number> {
  const seen = new Map<string, number>();
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    // Only names of the right lengths are lower-cased (x-original-uri 14 to x-forwarded-method 18).
    if (name.length < 14 || name.length > 18) continue;
    const lower = name.toLowerCase();
    if (FORWARDED_REQUEST_HEADERS.includes(lower)) seen.set(lower, (seen.get(lower) ?? 0) + 1);
  }
  return seen;
}

function checkMethod(name: string, v: string | undefined): string {
  if (v === undefined) throw new ForwardedHeaderError(name, `${name} is required with the URI`);
  if (!METHOD_RE.test(v)) throw new ForwardedHeaderError(name, `${name} is not a method name`);
  // Methods are case-sensitive (RFC 9110 §9.1), but proxies only ever send the client's upper-case ones.
  return v;
}

/**
 * An origin-form target: `/path[?query]`. An absolute URI would carry its own authority, `*` names no
 * resource, and a fragment is never part of a request-target (RFC 9112 §3.2), so none can widen a rule.
 */
function checkUri(name: string, v: string | undefined): string {
  if (v === undefined) throw new ForwardedHeaderError(name, `${name} is required with the method`);
  if (v.length > MAX_URI) throw new ForwardedHeaderError(name, `${name} is longer than ${MAX_URI} bytes`);
  if (v.charCodeAt(0) !== 0x2f)
    throw new ForwardedHeaderError(name, `${name} must be a path starting with /`);
  if (v.includes('#')) throw new ForwardedHeaderError(name, `${name} must not carry a fragment`);
  return v;
}

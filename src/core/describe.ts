/**
 * Turns what a data plane received into the plain `RequestDescription` that routing and `answer()` take:
 * the target normalized once (`normalizePath`: dot-segments, path parameters, escapes), the host from an
 * absolute-form target's authority, else from Host/`:authority` (RFC 9112 §3.2.2). The built-in proxy,
 * its WebSocket path, the SPOE agent, the forward-auth endpoint and the offline `check`/`explain` all
 * build their descriptions here, so `/admin;x` or `/%2e%2e/admin` are the same request to each of them.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { ClientCertificateSocket } from '../identity/mtls.js';
import type { RequestDescription } from './answer.js';
import { normalizeHost, normalizePath, type PathParameters } from './normalize.js';

/** What a data plane knows of a request before it is normalized. */
export interface RawRequest {
  readonly method: string;
  /** The request target as received (origin-form, absolute-form, or `*`). */
  readonly target: string;
  /** Host or `:authority` as received; undefined when absent. */
  readonly host: string | undefined;
  /** Header names in lower case. */
  readonly headers: IncomingHttpHeaders;
  /** The effective client address (behind trusted proxies, the forwarded one). */
  readonly clientIp: string;
  readonly tls: boolean;
  readonly listener: string;
  /** Default: `https` over TLS, else `http`. */
  readonly scheme?: 'http' | 'https' | undefined;
  readonly upgrade?: boolean | undefined;
  readonly certificate?: ClientCertificateSocket | undefined;
  /** The data plane sees the upstream's response (see `RequestDescription.seesResponse`). */
  readonly seesResponse?: boolean | undefined;
}

/**
 * True when a request a decision-only data plane describes is a WebSocket opening handshake: `Upgrade:
 * websocket`, or, since proxies drop hop-by-hop headers (Upgrade, Connection) from an auth subrequest,
 * the handshake's own end-to-end `Sec-WebSocket-Key` on a GET. Such a request is decided as the
 * built-in proxy decides a handshake (the route must allow WebSockets; an ambient credential needs an
 * allowed Origin).
 */
export function isWebSocketHandshake(method: string, headers: IncomingHttpHeaders): boolean {
  const upgrade = headers.upgrade;
  if (typeof upgrade === 'string' && /(?:^|,)\s*websocket\s*(?:,|$)/i.test(upgrade)) return true;
  return method === 'GET' && headers['sec-websocket-key'] !== undefined;
}

/**
 * The description of a request. Throws `BadRequestError` (400, `GH_BAD_PATH` or `GH_BAD_HOST`) for a
 * target or host that cannot be normalized.
 */
export function describeRequest(raw: RawRequest, pathParameters: PathParameters): RequestDescription {
  const t = normalizePath(raw.target, raw.method, pathParameters);
  const authority = t.authority ?? raw.host ?? '';
  return {
    method: raw.method,
    host: normalizeHost(authority),
    authority,
    path: t.path,
    query: t.query,
    headers: raw.headers,
    clientIp: raw.clientIp,
    tls: raw.tls,
    listener: raw.listener,
    scheme: raw.scheme ?? (raw.tls ? 'https' : 'http'),
    upgrade: raw.upgrade ?? false,
    certificate: raw.certificate,
    seesResponse: raw.seesResponse,
  };
}

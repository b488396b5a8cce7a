/**
 * Request framing checks of the built-in proxy, made before a request is routed (and on the WebSocket
 * handshake). Node's strict parser already refuses most ambiguous messages (Content-Length with
 * Transfer-Encoding, repeated or malformed Content-Length, obs-fold, bare CR or LF, control characters);
 * these checks cover what it lets through and an upstream or a proxy in front could read differently
 * (request smuggling, RFC 9112 §6.3 and §11.2):
 *
 *   more header fields than server.maxHeadersCount ........................ 431 GH_TOO_MANY_HEADERS
 *   a version other than HTTP/1.0 and 1.1 on an HTTP/1 connection .......... 505 GH_HTTP_VERSION
 *   two Host lines, or none in HTTP/1.1 (RFC 9112 §3.2) ..................... 400 GH_BAD_HOST
 *   HTTP/2: a Host unlike :authority (RFC 9113 §8.3.1) ...................... 400 GH_BAD_HOST
 *   Transfer-Encoding whose final coding is not chunked (§6.3) ............. 400 GH_BAD_FRAMING
 *   Transfer-Encoding with a coding besides chunked (§6.1) ................. 501 GH_TRANSFER_CODING
 *   Transfer_Encoding or Content_Length (framing to CGI-style servers) ...... 400 GH_BAD_FRAMING
 *   Transfer-Encoding in HTTP/1.0 (§6.1) ....................... served, then the connection closes
 *   a body that fails to parse (chunk size, chunk line) ... 400 GH_BAD_FRAMING, upstream aborted, closed
 *
 * Once the gateway decides to close a connection, any request pipelined behind is dropped unanswered:
 * it is never forwarded.
 */
import { type Http2ServerRequest, constants as h2constants } from 'node:http2';
import { BadRequestError, GatehouseError } from '../errors.js';
import type { ProxyRequest, ProxyResponse } from './types.js';

/** More request header fields than `server.maxHeadersCount` (431). */
export class TooManyHeadersError extends GatehouseError {
  constructor(limit: number) {
    super('GH_TOO_MANY_HEADERS', 431, `more than ${limit} request header fields`);
  }
}

/** The message cannot be framed unambiguously (400). */
export class BadFramingError extends GatehouseError {
  constructor(message: string, cause?: unknown) {
    super('GH_BAD_FRAMING', 400, message, cause === undefined ? undefined : { cause });
  }
}

const kClosing = Symbol('gatehouse.closing');
type ClosingSocket = { [kClosing]?: boolean };

/**
 * Marks an HTTP/1 connection to close after this request's response: the response says so, and any
 * request already parsed behind it is dropped (see `connectionClosing`).
 */
export function closeAfter(req: ProxyRequest, res: ProxyResponse): void {
  if (isHttp2(req)) return;
  res.shouldKeepAlive = false;
  (req.socket as unknown as ClosingSocket)[kClosing] = true;
}

/** An HTTP/2 request (an HTTP/1 request line may claim HTTP/2.0 as well, without a stream). */
export function isHttp2(req: ProxyRequest): boolean {
  return req.httpVersionMajor === 2 && (req as unknown as Http2ServerRequest).stream !== undefined;
}

/**
 * The connection of this HTTP/1 request was marked to close, or a response before it (also one Node
 * wrote itself) already closed its writing side: the request must not be served, it could not be answered.
 */
export function connectionClosing(req: ProxyRequest): boolean {
  const socket = req.socket as (ProxyRequest['socket'] & ClosingSocket) | null;
  return socket === null || socket[kClosing] === true || !socket.writable;
}

/** Whether a request carries a body (HTTP/1 framing headers, or an HTTP/2 stream left open). */
export function requestHasBody(req: ProxyRequest): boolean {
  if (isHttp2(req)) return !(req as unknown as Http2ServerRequest).stream.endAfterHeaders;
  const h = req.headers;
  if (h['transfer-encoding'] !== undefined) return true;
  const cl = h['content-length'];
  return cl !== undefined && cl !== '0';
}

/** Some of the request body has yet to arrive: an answer now leaves the rest on the connection. */
export function bodyPending(req: ProxyRequest): boolean {
  return !req.complete && requestHasBody(req);
}

/**
 * Ends an HTTP/2 request stream after its answer, when the body is still arriving (no Connection: close
 * there): RST_STREAM NO_ERROR tells the client to stop sending it (RFC 9113 §8.1) and frees the stream.
 * Node.js does it by itself only for a body that nothing has started to read.
 */
export function resetAfterAnswer(req: ProxyRequest): void {
  if (isHttp2(req)) (req as unknown as Http2ServerRequest).stream.close(h2constants.NGHTTP2_NO_ERROR);
}

/**
 * Checks the framing of a request before anything else reads it. Throws a `GatehouseError` (see the
 * table above); returns true when the connection must be closed after this request (HTTP/1.0 with
 * Transfer-Encoding).
 */
export function checkFraming(req: ProxyRequest, maxHeadersCount: number): boolean {
  if (req.httpVersionMajor !== 1) {
    if (isHttp2(req)) {
      checkHttp2Host(req);
      return false;
    }
    throw new GatehouseError('GH_HTTP_VERSION', 505, `HTTP/${req.httpVersion} is not supported`);
  }
  const minor = req.httpVersionMinor;
  if (minor !== 1 && minor !== 0) {
    throw new GatehouseError('GH_HTTP_VERSION', 505, `HTTP/${req.httpVersion} is not supported`);
  }
  const raw = req.rawHeaders;
  // Node's own limit is off (0): a field past it would be dropped silently, even Transfer-Encoding.
  if (raw.length > maxHeadersCount * 2) throw new TooManyHeadersError(maxHeadersCount);
  let hosts = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const n = name.length;
    if (n === 4 && (name === 'Host' || name === 'host' || name.toLowerCase() === 'host')) hosts++;
    else if ((n === 14 || n === 17) && name.includes('_') && isFramingAlias(name)) {
      throw new BadFramingError(`${name} names a framing header with an underscore`);
    }
  }
  // RFC 9112 §3.2: which of two Host lines a server or cache acts on is not defined; HTTP/1.1 needs one.
  if (hosts > 1) throw new BadRequestError('more than one Host header', 'GH_BAD_HOST');
  if (hosts === 0 && minor === 1) throw new BadRequestError('no Host header', 'GH_BAD_HOST');
  const te = req.headers['transfer-encoding'];
  if (te === undefined) return false;
  if (te !== 'chunked') checkTransferCodings(te);
  // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty; close after this message.
  return minor === 0;
}

/**
 * `Transfer_Encoding` or `Content_Length`: servers that map `_` to `-` (CGI and WSGI environments) would
 * frame the body the gateway forwarded without one, and read the next request on the connection as it.
 */
function isFramingAlias(name: string): boolean {
  const lower = name.toLowerCase().replaceAll('_', '-');
  return lower === 'transfer-encoding' || lower === 'content-length';
}

/** Transfer codings of a request: chunked must be the last (RFC 9112 §6.3) and is the only one decoded. */
function checkTransferCodings(value: string): void {
  const codings = value.toLowerCase().split(',');
  if (codings[codings.length - 1]!.trim() !== 'chunked') {
    throw new BadFramingError(
      'the body length cannot be determined: chunked is not the final transfer coding',
    );
  }
  if (codings.length > 1) {
    // Transfer codings are hop-by-hop: forwarding the body without decoding them would corrupt it.
    throw new GatehouseError(
      'GH_TRANSFER_CODING',
      501,
      'transfer codings other than chunked are not supported',
    );
  }
}

/** RFC 9113 §8.3.1: a Host header that names another authority than `:authority` makes a malformed request. */
function checkHttp2Host(req: ProxyRequest): void {
  const h = req.headers;
  const host = h.host;
  if (host === undefined) return;
  const authority = h[':authority'];
  if (typeof authority === 'string' && authority.toLowerCase() !== host.toLowerCase()) {
    throw new BadRequestError('Host differs from :authority', 'GH_BAD_HOST');
  }
}

/**
 * The checks of a WebSocket handshake (RFC 6455 §4.1): those of any request, a GET, and no body, since
 * whatever follows the handshake's head is tunnelled to the upstream as WebSocket data.
 */
export function checkHandshake(req: ProxyRequest, maxHeadersCount: number): void {
  checkFraming(req, maxHeadersCount);
  if (req.method !== 'GET') throw new BadFramingError('a WebSocket handshake must be a GET');
  if (requestHasBody(req)) throw new BadFramingError('a WebSocket handshake cannot carry a body');
}

/**
 * A request on a socket that Node's parser let go of after the headers (HTTP/1.0 Upgrade, CONNECT)
 * cannot have a body read: one that announces a body is refused (400).
 */
export function checkNoBody(req: ProxyRequest): void {
  if (requestHasBody(req)) throw new BadFramingError('this request cannot carry a body');
}

/** The error a request body that failed to parse (a `clientError` after the headers) is answered with. */
export function bodyParseError(err: NodeJS.ErrnoException): GatehouseError {
  if (err.code === 'HPE_CHUNK_EXTENSIONS_OVERFLOW') {
    return new GatehouseError('GH_BAD_FRAMING', 413, 'chunk extensions are too large', { cause: err });
  }
  return new BadFramingError('the request body is malformed', err);
}

// ---------------------------------------------------------------------------------------------
// TRACE and Max-Forwards

/** Request fields that carry credentials: never forwarded with, nor reflected by, a TRACE (RFC 9110 §9.3.8). */
const CREDENTIALS = new Set(['authorization', 'proxy-authorization', 'cookie']);

/** True for a header a TRACE must not carry or reflect (`apiKeyHeader` lower case). */
function isCredentialHeader(lower: string, apiKeyHeader: string): boolean {
  return CREDENTIALS.has(lower) || lower === apiKeyHeader;
}

/** Removes credential headers from flat upstream headers (`host` first), for a forwarded TRACE. */
export function stripCredentials(headers: string[], apiKeyHeader: string): void {
  for (let i = headers.length - 2; i >= 2; i -= 2) {
    if (isCredentialHeader(headers[i]!.toLowerCase(), apiKeyHeader)) headers.splice(i, 2);
  }
}

/**
 * The value of Max-Forwards (RFC 9110 §7.6.2) of a TRACE or OPTIONS request, undefined when absent.
 * Throws 400 when it is not a decimal number.
 */
export function maxForwardsOf(req: ProxyRequest): number | undefined {
  const value = req.headers['max-forwards'];
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !/^\d{1,10}$/.test(value.trim()))
    throw new BadRequestError('Max-Forwards is not a number');
  return Number(value.trim());
}

/** Sets Max-Forwards in flat upstream headers (`host` first) to `n`. */
export function setMaxForwards(headers: string[], n: number): void {
  for (let i = 2; i < headers.length; i += 2) {
    if (headers[i]!.length === 12 && headers[i]!.toLowerCase() === 'max-forwards') {
      headers[i + 1] = String(n);
      return;
    }
  }
  headers.push('max-forwards', String(n));
}

/** The `message/http` body a TRACE is answered with by the gateway itself: the request, credentials left out. */
export function traceEcho(req: ProxyRequest, apiKeyHeader: string): string {
  let out = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.charCodeAt(0) === 0x3a || isCredentialHeader(name.toLowerCase(), apiKeyHeader)) continue;
    out += `${name}: ${raw[i + 1]}\r\n`;
  }
  return out + '\r\n';
}

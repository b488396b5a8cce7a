/**
 * The one boundary where library, socket and upstream errors become Gatehouse errors (with the original
 * kept as `cause`), and where error responses are written. Clients never see a stack trace.
 */
import { STATUS_CODES } from 'node:http';
import {
  BadRequestError,
  ClientClosedError,
  GatehouseError,
  UpstreamConnectError,
  UpstreamTimeoutError,
} from '../errors.js';
import type { Outcome } from '../upstream/types.js';
import type { ProxyRequest, ProxyResponse } from './types.js';

/** What kind of failure an upstream attempt had, as the retry conditions name them. */
export type FailureKind =
  | 'connect-error' // nothing reached the server: refused, DNS, unreachable, TLS handshake
  | 'connect-timeout' // the connection could not be opened in time
  | 'timeout' // response headers (or body data) did not arrive in time
  | 'reset' // the connection broke after the request was (partly) sent
  | 'invalid' // the server sent something that is not valid HTTP
  | 'local'; // a decision of the gateway or the client (413, client gone, bad body length)

/** The upgrade request is not allowed on this route (403). */

/** An upgrade request for something other than WebSocket (400). */
export class UnsupportedUpgradeError extends GatehouseError {
  constructor() {
    super('GH_UNSUPPORTED_UPGRADE', 400, 'only WebSocket upgrades are supported');
  }
}

/** An upgrade request that is not a valid WebSocket opening handshake (400, RFC 6455 §4.2.1). */
export class BadWebSocketHandshakeError extends GatehouseError {
  constructor(message: string) {
    super('GH_BAD_WEBSOCKET_HANDSHAKE', 400, message);
  }
}

/** A WebSocket version other than 13 (426 with `Sec-WebSocket-Version: 13`, RFC 6455 §4.4). */
export class WebSocketVersionError extends GatehouseError {
  constructor() {
    super('GH_WEBSOCKET_VERSION', 426, 'only WebSocket version 13 is supported');
  }
}

/**
 * A WebSocket handshake authenticated by a credential the browser sends on its own (the session cookie,
 * a client certificate) comes from an Origin that is not the route's (403): cross-site WebSocket
 * hijacking.
 */
export class WebSocketOriginError extends GatehouseError {
  constructor() {
    super('GH_WEBSOCKET_ORIGIN', 403, 'this origin may not open a WebSocket with these credentials');
  }
}

/** A failure classified for status, retry and server health. */
export interface ClassifiedError {
  error: GatehouseError;
  kind: FailureKind;
  outcome: Outcome;
}

const CONNECT_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EHOSTDOWN',
  'EADDRNOTAVAIL',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'CERT_HAS_EXPIRED',
  'ERR_SSL_WRONG_VERSION_NUMBER',
]);

const RESET_CODES = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);

/**
 * Classifies an error raised while forwarding one attempt. `sent` tells whether undici had started
 * writing the request (a reset before that is as harmless as a refused connection).
 */
export function classify(err: unknown, sent: boolean): ClassifiedError {
  if (err instanceof GatehouseError) {
    const outcome: Outcome = err.status === 503 ? 'connect-error' : 'client-abort';
    return { error: err, kind: 'local', outcome };
  }
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string') {
    if (CONNECT_CODES.has(code) || code.startsWith('ERR_SSL') || code.startsWith('ERR_TLS')) {
      return {
        error: new UpstreamConnectError('could not connect to the upstream server', err),
        kind: 'connect-error',
        outcome: 'connect-error',
      };
    }
    if (code === 'UND_ERR_CONNECT_TIMEOUT') {
      return {
        error: new UpstreamTimeoutError('timed out connecting to the upstream server', err),
        kind: 'connect-timeout',
        outcome: 'timeout',
      };
    }
    if (code === 'UND_ERR_HEADERS_TIMEOUT') {
      return {
        error: new UpstreamTimeoutError('the upstream server did not answer in time', err),
        kind: 'timeout',
        outcome: 'timeout',
      };
    }
    if (code === 'UND_ERR_BODY_TIMEOUT') {
      return {
        error: new UpstreamTimeoutError('the upstream server stopped sending data', err),
        kind: 'timeout',
        outcome: 'timeout',
      };
    }
    if (RESET_CODES.has(code)) {
      return {
        error: new UpstreamConnectError(
          'the upstream server closed the connection',
          err,
          'GH_UPSTREAM_RESET',
        ),
        kind: sent ? 'reset' : 'connect-error',
        outcome: 'connect-error',
      };
    }
    if (code === 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH') {
      return {
        error: new BadRequestError('request body length does not match Content-Length', 'GH_BAD_BODY_LENGTH'),
        kind: 'local',
        outcome: 'client-abort',
      };
    }
    if (code === 'GH_UPSTREAM_PROTOCOL') {
      // Refused by the gateway's own framing checks: 101 unasked, chunked HTTP/1.0, a huge interim head
      // (src/upstream/interim.ts), a transfer coding other than chunked (vetResponseFields).
      return {
        error: new UpstreamConnectError(
          'invalid response from the upstream server',
          err,
          'GH_UPSTREAM_INVALID',
        ),
        kind: 'invalid',
        outcome: 'connect-error',
      };
    }
    if (code === 'UND_ERR_ABORTED') {
      return { error: new ClientClosedError(), kind: 'local', outcome: 'client-abort' };
    }
  }
  return {
    error: new UpstreamConnectError('invalid response from the upstream server', err, 'GH_UPSTREAM_INVALID'),
    kind: 'invalid',
    outcome: 'connect-error',
  };
}

/**
 * True when `err` only says that a 204 or 304 response announced a Content-Length: such a response has
 * no content whatever the field says (RFC 9110 §8.6 allows it in a 304: the size of the 200 it stands
 * for), but undici 7 reports a length mismatch. The response is complete, not failed.
 */
export function isBodylessLengthNotice(err: unknown, status: number): boolean {
  return (
    (status === 304 || status === 204) &&
    (err as { code?: unknown } | null)?.code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH'
  );
}

/** Maps anything thrown inside the gateway to a GatehouseError (500 for the unexpected). */
export function toGatehouseError(err: unknown): GatehouseError {
  if (err instanceof GatehouseError) return err;
  return new GatehouseError('GH_INTERNAL', 500, 'internal error', { cause: err });
}

function wantsJson(accept: string | string[] | undefined): boolean {
  if (typeof accept !== 'string') return false;
  return accept.includes('json') && !accept.includes('text/') && !accept.includes('*/*');
}

/**
 * Writes a short error response (plain text, or JSON when the client accepts only JSON). When the
 * response has already started, the client stream is destroyed instead. `extra` holds further header
 * name/value pairs (a flat list). To close the connection after it, call `closeAfter` first.
 * Returns the body bytes written (for the access log's `bytesOut`).
 */
export function sendError(
  req: ProxyRequest,
  res: ProxyResponse,
  err: GatehouseError,
  requestId: string,
  extra?: readonly string[],
): number {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return 0;
  }
  const status = err.status >= 400 && err.status <= 599 ? err.status : 500;
  const reason = STATUS_CODES[status] ?? 'Error';
  let body: string;
  let type: string;
  if (wantsJson(req.headers.accept)) {
    body = JSON.stringify({ status, code: err.code, error: err.message, requestId }) + '\n';
    type = 'application/json';
  } else {
    body = `${status} ${reason}: ${err.message} (${err.code})\n`;
    type = 'text/plain; charset=utf-8';
  }
  const headers = [
    'content-type',
    type,
    'content-length',
    String(Buffer.byteLength(body)),
    'cache-control',
    'no-store',
    'x-request-id',
    requestId,
  ];
  if (extra !== undefined) headers.push(...extra);
  res.writeHead(status, headers);
  if (req.method === 'HEAD') {
    res.end();
    return 0;
  }
  res.end(body);
  return Buffer.byteLength(body);
}

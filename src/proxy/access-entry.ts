/**
 * The access-log line of the built-in proxy: one builder for HTTP requests and WebSocket tunnels, so
 * that both carry the same fields, computed the same way, in the same order.
 */
import { type Answer, logAccess } from '../core/answer.js';
import { isoTime } from '../observe/access-log.js';
import { auditing } from '../observe/audit-bus.js';
import { type AccessEntry, auditDetailOf, type Logger } from '../observe/log.js';

/** What the access log says of a request or tunnel that ended; the exchange and the tunnel both fit. */
export interface AccessRecord {
  readonly requestId: string;
  /** The client's address (`effectiveClient`). */
  readonly clientIp: string;
  /** The address that connected: logged as `peer` when it is not `clientIp` (a trusted proxy). */
  readonly peerIp: string;
  readonly host: string;
  readonly method: string;
  readonly path: string;
  /** The query string as received, with its `?` (the audit trail records it, redacted). */
  readonly query?: string | undefined;
  readonly route: { readonly name: string } | undefined;
  readonly serverId: string | undefined;
  readonly status: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly retries: number;
  /** The stable code of the error that ended it, if one did. */
  readonly errorCode: string | undefined;
  /** The access stage's verdict, once there was one. */
  readonly access: Answer | undefined;
  /** The data plane that decided when it is not the proxy itself (`forward-auth`). */
  readonly plane?: string | undefined;
}

/**
 * The access-log entry of `r`: started at `startMs` (wall clock), `durationMs` long, forwarded to the
 * upstream named `upstream`, whose response head came `upstreamMs` after the attempt started (undefined
 * when none came), over `protocol` (`HTTP/1.1`, `HTTP/2.0`, `websocket`).
 */
export function accessEntry(
  r: AccessRecord,
  upstream: string | undefined,
  startMs: number,
  durationMs: number,
  upstreamMs: number | undefined,
  protocol: string,
): AccessEntry {
  const entry: AccessEntry = {
    time: isoTime(startMs),
    requestId: r.requestId,
    client: r.clientIp,
    peer: r.peerIp === r.clientIp ? undefined : r.peerIp,
    host: r.host,
    method: r.method,
    path: r.path,
    route: r.route?.name,
    upstream,
    server: r.serverId,
    status: r.status,
    bytesIn: r.bytesIn,
    bytesOut: r.bytesOut,
    duration: Math.round(durationMs * 1000) / 1000,
    upstreamDuration: upstreamMs === undefined ? undefined : Math.round(upstreamMs * 1000) / 1000,
    retries: r.retries,
    protocol,
  };
  if (r.errorCode !== undefined) entry.error = r.errorCode;
  if (r.plane !== undefined) entry.plane = r.plane;
  if (r.access !== undefined) logAccess(entry, r.access);
  if (r.query !== undefined && r.query !== '' && auditing()) auditDetailOf(entry).query = r.query;
  return entry;
}

/** Hands `entry` to the access-log sink; a sink that throws is logged, never thrown into the data plane. */
export function writeAccess(log: (entry: AccessEntry) => void, entry: AccessEntry, logger: Logger): void {
  try {
    log(entry);
  } catch (err) {
    logger.error({ err }, 'access log failed');
  }
}

/**
 * Structured logs: one pino logger for operational events and one JSON line per request for access.
 */
import { type Logger, pino } from 'pino';
import { auditing } from './audit-bus.js';

/** Key of what an access entry carries for the audit trail alone: `JSON.stringify` skips symbol keys. */
export const AUDIT_DETAIL: unique symbol = Symbol('gatehouse.auditDetail');

/** Facts of a request the audit trail records and the access log leaves out. */
export interface AuditDetail {
  email?: string | undefined;
  groups?: readonly string[] | undefined;
  /** The identity's source: the OIDC provider, bearer issuer, API key id or certificate issuer. */
  source?: string | undefined;
  /** The query string as received, with its leading `?`. */
  query?: string | undefined;
}

/** The audit details of `entry`, created on first use. */
export function auditDetailOf(entry: AccessEntry): AuditDetail {
  let detail = entry[AUDIT_DETAIL];
  if (detail === undefined) {
    detail = {};
    entry[AUDIT_DETAIL] = detail;
  }
  return detail;
}

/** One access-log line. */
export interface AccessEntry {
  /** Set only while an audit trail is on. */
  [AUDIT_DETAIL]?: AuditDetail;
  time: string;
  requestId: string;
  client: string;
  /** The peer that connected, when it is a trusted proxy that forwarded for `client`. */
  peer?: string | undefined;
  host: string;
  method: string;
  path: string;
  route: string | undefined;
  upstream: string | undefined;
  server: string | undefined;
  status: number;
  bytesIn: number;
  bytesOut: number;
  /** Total time in ms. */
  duration: number;
  /** Time until the upstream sent response headers, in ms. */
  upstreamDuration: number | undefined;
  retries: number;
  /** Stable error code when the gateway answered with an error itself. */
  error?: string;
  /** For a request refused before it could be parsed: the parser's code (e.g. `HPE_INVALID_TRANSFER_ENCODING`). */
  detail?: string;
  protocol?: string;
  /**
   * The data plane that decided, when it is not the built-in proxy: `spoe` or `forward-auth` (then
   * method, host and path are the original request's, as HAProxy or the proxy in front described it).
   */
  plane?: string;
  /** Subject of the verified identity, when the request carried one. */
  identity?: string;
  /** How the identity was established: session, bearer, apiKey or mtls. */
  authMethod?: string;
  /** Reason code of the access decision (`policy-allow:<rule>`, `user-unauthenticated`, ...). */
  reason?: string;
  /** The policy rule that decided, if one did. */
  rule?: string;
  /** The limit stage's verdict on a limited route: allowed, delayed, limited or store-error. */
  limit?: string;
  /** How long a rate limit with `delay` held the request, in ms. */
  delayed?: number;
}

/**
 * True when finished requests are to be described as access entries: for the access log, the audit
 * trail or the admin listener's live figures. Otherwise data planes skip building them.
 */
export function recordsAccess(config: {
  readonly logging: { readonly access: boolean };
  readonly admin?: unknown;
}): boolean {
  return config.logging.access || config.admin !== undefined || auditing();
}

/** Creates the process logger (JSON lines to stdout, or to `destination`). */
export function createLogger(level = 'info', destination?: NodeJS.WritableStream): Logger {
  return pino(
    { level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime },
    destination ?? pino.destination({ dest: 1, sync: false }),
  );
}

export type { Logger };

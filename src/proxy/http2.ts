/**
 * Per-connection HTTP/2 abuse accounting. Rapid reset (CVE-2023-44487) opens streams and cancels them
 * at once: each costs the gateway a request (and maybe an upstream attempt) but the client nothing, and
 * the advertised stream limit does not bound it because cancelled streams free their slot. nghttp2's own
 * rate limit (1000 resets, then 33/s) is far above what a client needs, so a tighter count lives here.
 */
import { constants, type Http2Session } from 'node:http2';
import { performance } from 'node:perf_hooks';
import type { Config } from '../config/schema.js';
import type { Logger } from '../observe/log.js';

const kResets = Symbol('gatehouse.h2resets');

interface SessionCounts {
  /** Streams with an exchange in progress. */
  open: number;
  /** Start of the current reset window (performance.now()). */
  start: number;
  /** Client resets in the current window. */
  resets: number;
  /** The silence after which the connection is closed. */
  idleMs: number;
}

type CountedSession = Http2Session & { [kResets]?: SessionCounts };

function countsOf(s: CountedSession): SessionCounts {
  let c = s[kResets];
  if (c === undefined) {
    c = { open: 0, start: 0, resets: 0, idleMs: 0 };
    s[kResets] = c;
  }
  return c;
}

/** Counts a stream whose exchange started on this connection. */
export function streamOpened(session: Http2Session): void {
  countsOf(session).open++;
}

/** Counts a stream whose exchange ended. */
export function streamClosed(session: Http2Session): void {
  countsOf(session).open--;
}

/**
 * Closes HTTP/2 connections that stay silent (no frame either way) for `ms`, as an idle HTTP/1.1
 * keep-alive connection is closed: first GOAWAY, so that streams in progress may finish; then, once no
 * exchange is in progress, the connection itself, which also ends a header block that never completes
 * (HEADERS without END_HEADERS holds the whole connection, RFC 9113 §6.10).
 */
export function watchIdleSession(session: Http2Session, ms: number): void {
  countsOf(session).idleMs = ms;
  session.setTimeout(ms, closeIdleSession);
}

function closeIdleSession(this: Http2Session): void {
  if (this.destroyed || this.closed) return;
  this.close();
  setTimeout(destroyWhenIdle, countsOf(this).idleMs, this).unref();
}

function destroyWhenIdle(session: Http2Session): void {
  if (session.destroyed) return;
  const c = countsOf(session);
  if (c.open <= 0) session.destroy();
  else setTimeout(destroyWhenIdle, c.idleMs, session).unref();
}

/**
 * Counts one stream the client cancelled before its response started; past `server.http2.maxResets`
 * within `resetWindow`, the connection gets GOAWAY ENHANCE_YOUR_CALM and is closed. Returns true then.
 */
export function noteClientReset(session: Http2Session, config: Config, logger: Logger): boolean {
  const s = session as CountedSession;
  if (s.destroyed) return false;
  const limits = config.server.http2;
  const now = performance.now();
  const c = countsOf(s);
  if (c.resets === 0 || now - c.start >= limits.resetWindow) {
    c.start = now;
    c.resets = 0;
  }
  if (++c.resets <= limits.maxResets) return false;
  logger.warn(
    { client: s.socket?.remoteAddress, resets: c.resets, code: 'GH_HTTP2_RESET_FLOOD' },
    'HTTP/2 client cancelled too many streams; closing the connection (ENHANCE_YOUR_CALM)',
  );
  // An error is needed for the code to reach the GOAWAY (undefined would default to NO_ERROR).
  s.destroy(new Error('too many stream resets'), constants.NGHTTP2_ENHANCE_YOUR_CALM);
  return true;
}

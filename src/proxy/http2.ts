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

interface ResetWindow {
  start: number;
  count: number;
}

type CountedSession = Http2Session & { [kResets]?: ResetWindow };

/**
 * Counts one stream the client cancelled before its response started; past `server.http2.maxResets`
 * within `resetWindow`, the connection gets GOAWAY ENHANCE_YOUR_CALM and is closed. Returns true then.
 */
export function noteClientReset(session: Http2Session, config: Config, logger: Logger): boolean {
  const s = session as CountedSession;
  if (s.destroyed) return false;
  const limits = config.server.http2;
  const now = performance.now();
  let w = s[kResets];
  if (w === undefined || now - w.start >= limits.resetWindow) {
    w = { start: now, count: 0 };
    s[kResets] = w;
  }
  if (++w.count <= limits.maxResets) return false;
  logger.warn(
    { client: s.socket?.remoteAddress, resets: w.count, code: 'GH_HTTP2_RESET_FLOOD' },
    'HTTP/2 client cancelled too many streams; closing the connection (ENHANCE_YOUR_CALM)',
  );
  s.destroy(undefined, constants.NGHTTP2_ENHANCE_YOUR_CALM);
  return true;
}

/**
 * The dashboard's live feed: server-sent events (`text/event-stream`) carrying one snapshot a second.
 *
 * EventSource cannot send an Authorization header, and the long-lived admin token must never appear in
 * a URL (it would end up in logs and history). So a client that holds the token first asks for a ticket
 * (`POST /api/v1/live/ticket`): 32 random bytes, valid for 30 s and for one stream only, which it puts
 * in the stream's URL. Tickets are kept by their SHA-256, so a lookup reveals nothing through timing.
 *
 * One timer builds the snapshot once a second while at least one stream is open and writes the same
 * text to every stream; a stream whose client does not read is skipped until it drains, and dropped
 * when it stays blocked. Nothing here runs on the data plane.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { Logger } from '../observe/log.js';

/** Options of `LiveStream`. */
export interface LiveStreamOptions {
  /** Builds the payload of one `snapshot` event (JSON-serializable). */
  build(): Promise<unknown>;
  logger: Logger;
  /** Time between snapshots in ms (default 1000). */
  intervalMs?: number;
  /** Most streams open at once (default 16). */
  maxClients?: number;
  /** How long a ticket stays valid in ms (default 30 000). */
  ticketTtlMs?: number;
  /** Most tickets outstanding at once; the oldest is dropped beyond it (default 64). */
  maxTickets?: number;
  /** A stream that cannot take data for this long is closed, in ms (default 30 000). */
  blockedTimeoutMs?: number;
  /** Clock in ms (tests). */
  now?: () => number;
}

/** What `POST /api/v1/live/ticket` answers. */
export interface LiveTicket {
  ticket: string;
  /** Seconds the ticket stays valid. */
  expiresIn: number;
}

interface Client {
  res: ServerResponse;
  /** When a write last returned false (0: not blocked). */
  blockedSince: number;
}

/** One-time tickets for the event stream, and the streams themselves; see the module comment. */
export class LiveStream {
  readonly #opts: LiveStreamOptions;
  readonly #now: () => number;
  readonly #tickets = new Map<string, number>();
  readonly #clients = new Set<Client>();
  #timer: NodeJS.Timeout | undefined;
  #building = false;
  #closed = false;

  constructor(opts: LiveStreamOptions) {
    this.#opts = opts;
    this.#now = opts.now ?? Date.now;
  }

  /** Streams open right now. */
  get clients(): number {
    return this.#clients.size;
  }

  /** A new one-time ticket. */
  issue(): LiveTicket {
    const ttl = this.#opts.ticketTtlMs ?? 30_000;
    this.#prune();
    const max = this.#opts.maxTickets ?? 64;
    // Maps iterate in insertion order: the first key is the oldest ticket.
    while (this.#tickets.size >= max) {
      const oldest = this.#tickets.keys().next();
      if (oldest.done) break;
      this.#tickets.delete(oldest.value);
    }
    const ticket = randomBytes(32).toString('base64url');
    this.#tickets.set(digest(ticket), this.#now() + ttl);
    return { ticket, expiresIn: Math.floor(ttl / 1000) };
  }

  /** True, once, for a ticket issued here that has not expired; it is used up either way. */
  redeem(ticket: string): boolean {
    if (ticket.length !== 43) return false;
    const key = digest(ticket);
    const expires = this.#tickets.get(key);
    if (expires === undefined) return false;
    this.#tickets.delete(key);
    return this.#now() < expires;
  }

  /**
   * Turns `res` into an event stream and sends a first snapshot at once. False (nothing written) when
   * the stream cannot be opened: the listener is closing or too many streams are open.
   */
  attach(res: ServerResponse): boolean {
    if (this.#closed || this.#clients.size >= (this.#opts.maxClients ?? 16)) return false;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      'x-accel-buffering': 'no',
    });
    // A comment line first, so that proxies and the client see the stream open before the first event.
    res.write(': gatehouse live\n\n');
    const client: Client = { res, blockedSince: 0 };
    this.#clients.add(client);
    res.on('drain', () => {
      client.blockedSince = 0;
    });
    const drop = () => {
      this.#clients.delete(client);
      if (this.#clients.size === 0) this.#stop();
    };
    // The response's close, not the request's: a request emits it as soon as its (empty) body is read.
    res.on('close', drop);
    res.on('error', drop);
    this.#start();
    void this.#tick();
    return true;
  }

  /** Ends every stream (clients see the stream end, not an error) and stops the timer. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#stop();
    this.#tickets.clear();
    const ending = [...this.#clients].map(
      (c) =>
        new Promise<void>((resolve) => {
          // Bounded: a client that stopped reading must not hold the listener open.
          const timer = setTimeout(() => {
            c.res.destroy();
            resolve();
          }, 1000);
          timer.unref();
          c.res.end('event: close\ndata: {}\n\n', () => {
            clearTimeout(timer);
            resolve();
          });
        }),
    );
    this.#clients.clear();
    await Promise.all(ending);
  }

  #start(): void {
    if (this.#timer !== undefined) return;
    this.#timer = setInterval(() => void this.#tick(), this.#opts.intervalMs ?? 1000);
    this.#timer.unref();
  }

  #stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  async #tick(): Promise<void> {
    // A slow build (a worker that takes long to answer) skips ticks rather than piling them up.
    if (this.#building || this.#clients.size === 0) return;
    this.#building = true;
    let text: string;
    try {
      text = `event: snapshot\ndata: ${JSON.stringify(await this.#opts.build())}\n\n`;
    } catch (err) {
      this.#opts.logger.warn({ err }, 'live dashboard snapshot failed');
      const message = err instanceof Error ? err.message : 'snapshot failed';
      text = `event: problem\ndata: ${JSON.stringify({ error: 'GH_LIVE_SNAPSHOT', message })}\n\n`;
    } finally {
      this.#building = false;
    }
    const now = this.#now();
    const blockedTimeout = this.#opts.blockedTimeoutMs ?? 30_000;
    for (const c of this.#clients) {
      if (c.blockedSince !== 0) {
        if (now - c.blockedSince > blockedTimeout) c.res.destroy();
        continue;
      }
      if (!c.res.write(text)) c.blockedSince = now;
    }
  }

  #prune(): void {
    const now = this.#now();
    for (const [key, expires] of this.#tickets) if (expires <= now) this.#tickets.delete(key);
  }
}

function digest(text: string): string {
  return createHash('sha256').update(text).digest('base64url');
}

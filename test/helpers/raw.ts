/**
 * Raw TCP peers for request-framing tests: a client that writes exact bytes and reads exact bytes back,
 * and an upstream that records every byte it receives and splits it into the requests it saw, so a
 * test can assert that no ambiguous or smuggled request ever reached it.
 */
import net from 'node:net';
import type { TestContext } from 'node:test';

/** One complete HTTP/1.1 response as read from the wire. */
export interface RawResponse {
  status: number;
  /** Lower-case header names and their values, in order. */
  headers: Array<[string, string]>;
  body: Buffer;
}

/** What a raw client exchange produced. */
export interface RawResult {
  /** The responses parsed from everything received (interim 1xx responses included). */
  responses: RawResponse[];
  /** Every byte received. */
  bytes: Buffer;
  /** The gateway closed the connection (within the bounded wait). */
  closed: boolean;
}

/** The value of a header (first occurrence) of a raw response. */
export function header(res: RawResponse | undefined, name: string): string | undefined {
  return res?.headers.find(([n]) => n === name)?.[1];
}

/** Parses as many complete responses as `buf` holds; `eof` lets a close-delimited body end. */
export function parseResponses(buf: Buffer, eof: boolean, headRequests = 0): RawResponse[] {
  const out: RawResponse[] = [];
  let pos = 0;
  let heads = headRequests;
  while (pos < buf.length) {
    const end = buf.indexOf('\r\n\r\n', pos);
    if (end === -1) break;
    const head = buf.subarray(pos, end).toString('latin1').split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(head[0] ?? '');
    if (!m) break;
    const status = Number(m[1]);
    const headers: Array<[string, string]> = [];
    for (const line of head.slice(1)) {
      const colon = line.indexOf(':');
      headers.push([line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()]);
    }
    let p = end + 4;
    const get = (n: string): string | undefined => headers.find(([k]) => k === n)?.[1];
    let body: Buffer;
    if (status < 200 || status === 204 || status === 304 || (heads > 0 && status >= 200)) {
      if (status >= 200 && heads > 0) heads--;
      body = Buffer.alloc(0);
    } else if (get('transfer-encoding')?.toLowerCase() === 'chunked') {
      const parts: Buffer[] = [];
      let complete = false;
      while (true) {
        const lineEnd = buf.indexOf('\r\n', p);
        if (lineEnd === -1) break;
        const size = Number.parseInt(buf.subarray(p, lineEnd).toString('latin1'), 16);
        if (size === 0) {
          const trailerEnd = buf.indexOf('\r\n\r\n', lineEnd);
          if (trailerEnd === -1) break;
          p = trailerEnd + 4;
          complete = true;
          break;
        }
        if (lineEnd + 2 + size + 2 > buf.length) break;
        parts.push(buf.subarray(lineEnd + 2, lineEnd + 2 + size));
        p = lineEnd + 2 + size + 2;
      }
      if (!complete) break;
      body = Buffer.concat(parts);
    } else if (get('content-length') !== undefined) {
      const n = Number(get('content-length'));
      if (p + n > buf.length) break;
      body = buf.subarray(p, p + n);
      p += n;
    } else {
      if (!eof) break;
      body = buf.subarray(p);
      p = buf.length;
    }
    out.push({ status, headers, body });
    pos = p;
  }
  return out;
}

/**
 * Writes `payload` (strings as latin1, or several parts written with a short pause between them) to the
 * gateway and reads until it closes the connection, or `final` final responses arrived and nothing more
 * came, or `waitMs` passed (a bound, never an assertion on time). The socket is always destroyed.
 */
export function rawExchange(
  port: number,
  payload: string | Buffer | Array<string | Buffer>,
  opts: { final?: number; waitMs?: number; head?: number; endAfterWrite?: boolean } = {},
): Promise<RawResult> {
  const parts = Array.isArray(payload) ? payload : [payload];
  const waitMs = opts.waitMs ?? 5000;
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let settled = false;
    let settleTimer: NodeJS.Timeout | undefined;
    const finish = (closed: boolean): void => {
      if (settled) return;
      settled = true;
      clearTimeout(deadline);
      clearTimeout(settleTimer);
      socket.destroy();
      const bytes = Buffer.concat(chunks);
      resolve({ responses: parseResponses(bytes, closed, opts.head), bytes, closed });
    };
    const deadline = setTimeout(() => finish(false), waitMs);
    socket.on('error', () => {});
    socket.on('data', (d: Buffer) => {
      chunks.push(d);
      if (opts.final === undefined) return;
      const finals = parseResponses(Buffer.concat(chunks), false, opts.head).filter((r) => r.status >= 200);
      if (finals.length >= opts.final) {
        // Give a refused connection the moment it needs to close; a kept-alive one stays open.
        clearTimeout(settleTimer);
        settleTimer = setTimeout(() => finish(false), 150);
      }
    });
    socket.on('close', () => finish(true));
    socket.on('connect', async () => {
      for (let i = 0; i < parts.length; i++) {
        const p = parts[i]!;
        if (socket.destroyed) return;
        socket.write(typeof p === 'string' ? Buffer.from(p, 'latin1') : p);
        if (i < parts.length - 1) await new Promise((r) => setTimeout(r, 50));
      }
      if (opts.endAfterWrite) socket.end();
    });
  });
}

/** One request as the raw upstream received it. */
export interface RawRequest {
  method: string;
  target: string;
  version: string;
  /** Header names as sent, with values. */
  headers: Array<[string, string]>;
  /** The decoded body. */
  body: Buffer;
  /** The exact bytes of the request, head and framed body. */
  raw: Buffer;
}

/** A TCP upstream that records exactly what it receives. */
export interface RawUpstream {
  readonly port: number;
  readonly url: string;
  /** Every byte received, per connection, in order. */
  readonly connections: Buffer[][];
  /** Per connection (same index): whether it is closed. */
  readonly closed: boolean[];
  /** The requests parsed from those bytes (an unparsable remainder is kept in `leftover`). */
  readonly requests: RawRequest[];
  /** All bytes received on every connection. */
  all(): Buffer;
  /** Bytes that did not form a complete request. */
  leftover(): Buffer[];
  close(): Promise<void>;
}

/** The value of a header (first, case-insensitive) of a raw request. */
export function requestHeader(req: RawRequest, name: string): string | undefined {
  const lower = name.toLowerCase();
  return req.headers.find(([n]) => n.toLowerCase() === lower)?.[1];
}

/** Splits one request off the front of `buf`; undefined when it is not complete. */
function parseRequest(buf: Buffer): { req: RawRequest; used: number } | undefined {
  const end = buf.indexOf('\r\n\r\n');
  if (end === -1) return undefined;
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const [method = '', target = '', version = ''] = (lines[0] ?? '').split(' ');
  const headers: Array<[string, string]> = [];
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    headers.push([line.slice(0, colon), line.slice(colon + 1).trim()]);
  }
  const get = (n: string): string | undefined =>
    headers.find(([k]) => k.toLowerCase() === n)?.[1]?.toLowerCase();
  let p = end + 4;
  let body: Buffer = Buffer.alloc(0);
  if (get('transfer-encoding') === 'chunked') {
    const parts: Buffer[] = [];
    while (true) {
      const lineEnd = buf.indexOf('\r\n', p);
      if (lineEnd === -1) return undefined;
      const size = Number.parseInt(buf.subarray(p, lineEnd).toString('latin1'), 16);
      if (size === 0) {
        const trailerEnd = buf.indexOf('\r\n\r\n', lineEnd);
        if (trailerEnd === -1) return undefined;
        p = trailerEnd + 4;
        break;
      }
      if (lineEnd + 2 + size + 2 > buf.length) return undefined;
      parts.push(buf.subarray(lineEnd + 2, lineEnd + 2 + size));
      p = lineEnd + 2 + size + 2;
    }
    body = Buffer.concat(parts);
  } else if (get('content-length') !== undefined) {
    const n = Number(get('content-length'));
    if (p + n > buf.length) return undefined;
    body = buf.subarray(p, p + n);
    p += n;
  }
  return { req: { method, target, version, headers, body, raw: buf.subarray(0, p) }, used: p };
}

/**
 * Starts a raw upstream on 127.0.0.1 port 0. Each complete request is answered by `answer` (default:
 * 200 with the body `ok`), in order; an upgrade request is answered 101 and everything after it is
 * echoed back, unless `declineUpgrades` (then it is answered like any request).
 */
export async function startRawUpstream(
  t: TestContext,
  answer: (req: RawRequest) => string = () =>
    'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok',
  opts: { declineUpgrades?: boolean } = {},
): Promise<RawUpstream> {
  const connections: Buffer[][] = [];
  const requests: RawRequest[] = [];
  const pending: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const connectionClosed: boolean[] = [];
  const server = net.createServer((socket) => {
    sockets.add(socket);
    const received: Buffer[] = [];
    connections.push(received);
    const index = pending.length;
    pending.push(Buffer.alloc(0));
    connectionClosed.push(false);
    let tunnel = false;
    socket.on('error', () => {});
    socket.on('close', () => {
      sockets.delete(socket);
      connectionClosed[index] = true;
    });
    socket.on('data', (d: Buffer) => {
      received.push(d);
      if (tunnel) {
        socket.write(d);
        return;
      }
      let buf: Buffer = Buffer.concat([pending[index]!, d]);
      while (true) {
        const parsed = parseRequest(buf);
        if (parsed === undefined) break;
        requests.push(parsed.req);
        buf = buf.subarray(parsed.used);
        const upgrade = parsed.req.headers.find(([n]) => n.toLowerCase() === 'upgrade');
        if (upgrade !== undefined && opts.declineUpgrades !== true) {
          socket.write(
            'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
              'Sec-WebSocket-Accept: x\r\n\r\n',
          );
          tunnel = true;
          if (buf.length > 0) socket.write(buf);
          buf = Buffer.alloc(0);
          break;
        }
        socket.write(answer(parsed.req));
      }
      pending[index] = buf;
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  let closed = false;
  const up: RawUpstream = {
    port,
    url: `http://127.0.0.1:${port}`,
    connections,
    closed: connectionClosed,
    requests,
    all: () => Buffer.concat(connections.flat()),
    leftover: () => pending.filter((b) => b.length > 0),
    close: () =>
      new Promise<void>((resolve) => {
        if (closed) return resolve();
        closed = true;
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  t.after(() => up.close());
  return up;
}

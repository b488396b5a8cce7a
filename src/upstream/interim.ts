/**
 * Interim (1xx) responses from HTTP/1.1 servers. undici 7 passes 102, 103 and other 1xx responses to
 * the dispatch handler, but destroys the connection on a `100 Continue` ("bad response"), because it never
 * sends `Expect: 100-continue`. RFC 9110 §15.2 requires a client to accept 1xx responses it did not
 * expect, and servers (IIS, some Java and .NET stacks) send an unsolicited 100 before the final answer.
 *
 * So every upstream socket gets a small read filter, installed by the connector, that drops `100
 * Continue` heads before undici's parser sees them. It looks only at the start of each response: after
 * the request head is written (undici's `undici:client:sendHeaders` diagnostics channel says when),
 * it reads the status line; a 100 head is dropped up to its empty line, another 1xx head is passed on
 * and the next status line read again; a final status line passes everything after it untouched, the
 * body included, until the next request. On the same status lines it refuses, with
 * `UpstreamProtocolError` (502 GH_UPSTREAM_INVALID):
 * - a `101` to a request that asked for no upgrade;
 * - an HTTP/1.0 response that carries `Transfer-Encoding`, whose framing RFC 9112 §6.1 says to treat as
 *   faulty (undici would parse it as chunked and then reuse the connection: a response-splitting risk).
 *
 * The filter is an own `read` method on the socket instance, since undici's parser pulls data with
 * `socket.read()`; nothing of undici is patched. On the common path it costs one state check per read.
 */
import { subscribe } from 'node:diagnostics_channel';
import type { Socket } from 'node:net';
import type { buildConnector } from 'undici';

/** Why a response was refused (here, or by the proxy's checks of the final response fields). */
export type ProtocolViolation =
  | 'unsolicited-upgrade'
  | 'interim-too-large'
  | 'chunked-http10'
  | 'transfer-coding';

/** An upstream response that breaks HTTP/1.1 framing rules in a way undici would not refuse itself. */
export class UpstreamProtocolError extends Error {
  readonly code = 'GH_UPSTREAM_PROTOCOL';
  constructor(readonly violation: ProtocolViolation) {
    super(`invalid response from the upstream server: ${violation}`);
    this.name = 'UpstreamProtocolError';
  }
}

/** Reading the status line at the start of a response. */
const START = 0;
/** Inside a final response (or a tunnel): everything passes until the next request. */
const PASS = 1;
/** Inside a `100 Continue` head: dropped up to its empty line. */
const DROP = 2;
/** Inside another 1xx head: passed on up to its empty line, then START again. */
const INTERIM = 3;
/** Inside the head of an HTTP/1.0 final response: passed on while looking for Transfer-Encoding. */
const HEAD10 = 4;

/** Longest `100 Continue` head dropped; undici's own limit for the heads it parses is Node's (16 KiB). */
const MAX_DROPPED_HEAD = 16 * 1024;
/** `HTTP/1.x SSS` and the byte after it. */
const STATUS_PREFIX = 13;
const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const COLON = 0x3a;
const TE = Buffer.from('transfer-encoding');
const HTTP1 = Buffer.from('HTTP/1.');

const kFilter = Symbol('gatehouse.interimFilter');
type FilteredSocket = Socket & { [kFilter]?: InterimFilter };

class InterimFilter {
  state = START;
  /** Head of the request being answered (to tell whether it asked for an upgrade). */
  requestHead = '';
  /** Start of a status line split across reads. */
  held: Buffer | undefined;
  /** Non-CR bytes in the current head line, and bytes of the current dropped head. */
  lineLength = 0;
  headLength = 0;
  /** How much of `transfer-encoding` the current line of an HTTP/1.0 head matched; -1: no match. */
  teMatch = 0;

  constructor(readonly read: Socket['read']) {}

  /** A new request was written: its response starts with the next byte read. */
  begin(requestHead: string): void {
    this.state = START;
    this.requestHead = requestHead;
    this.held = undefined;
  }

  /**
   * Filters one chunk read from the socket; null when nothing of it is left for the parser (dropped,
   * held, or the socket was destroyed for a protocol violation).
   */
  filter(chunk: Buffer, socket: Socket): Buffer | null {
    let data = chunk;
    if (this.held !== undefined) {
      data = Buffer.concat([this.held, chunk]);
      this.held = undefined;
    }
    let out: Buffer[] | undefined;
    let keepFrom = 0;
    let i = 0;
    while (i < data.length && this.state !== PASS) {
      if (this.state === START) {
        if (data.length - i < STATUS_PREFIX && couldBeStatusLine(data, i)) {
          this.held = Buffer.from(data.subarray(i));
          data = data.subarray(0, i);
          break;
        }
        if (!this.startMessage(data, i)) {
          socket.destroy(new UpstreamProtocolError('unsolicited-upgrade'));
          return null;
        }
        if ((this.state as number) === DROP && i > keepFrom) {
          if (out === undefined) out = [data.subarray(keepFrom, i)];
          else out.push(data.subarray(keepFrom, i));
        }
        continue;
      }
      const end = this.scanHead(data, i);
      if (this.state === HEAD10 && this.teMatch === -2) {
        socket.destroy(new UpstreamProtocolError('chunked-http10'));
        return null;
      }
      if (this.state === DROP) {
        this.headLength += (end === -1 ? data.length : end) - i;
        if (this.headLength > MAX_DROPPED_HEAD) {
          socket.destroy(new UpstreamProtocolError('interim-too-large'));
          return null;
        }
      }
      if (end === -1) {
        i = data.length;
        break;
      }
      if (this.state === DROP) keepFrom = end;
      this.state = this.state === HEAD10 ? PASS : START;
      i = end;
    }
    if (this.state === DROP) {
      // The rest of this chunk belongs to the dropped head.
      if (out === undefined) return null;
      return out.length === 1 ? out[0]! : Buffer.concat(out);
    }
    if (out === undefined) {
      if (keepFrom === 0) return data.length === 0 ? null : data;
      return keepFrom >= data.length ? null : data.subarray(keepFrom);
    }
    if (keepFrom < data.length) out.push(data.subarray(keepFrom));
    return out.length === 1 ? out[0]! : Buffer.concat(out);
  }

  /**
   * Reads a status line at `i` (at least STATUS_PREFIX bytes, or not a status line) and sets the state;
   * false for a 101 that the request did not ask for.
   */
  private startMessage(data: Buffer, i: number): boolean {
    if (!isStatusLine(data, i)) {
      this.state = PASS; // not HTTP/1.x: undici's parser refuses it
      return true;
    }
    const status = (data[i + 9]! - 48) * 100 + (data[i + 10]! - 48) * 10 + (data[i + 11]! - 48);
    this.lineLength = 0;
    this.headLength = 0;
    this.teMatch = 0;
    if (status === 100) this.state = DROP;
    else if (status === 101) {
      if (!this.requestHead.includes('\r\nupgrade: ')) return false;
      this.state = PASS; // the tunnel follows
    } else if (status < 200) this.state = INTERIM;
    else this.state = data[i + 7] === 0x30 ? HEAD10 : PASS;
    return true;
  }

  /**
   * Scans head bytes from `from` and returns the index just after the empty line that ends the head,
   * or -1 when the head goes on in a later chunk. In an HTTP/1.0 head, a line naming Transfer-Encoding
   * sets `teMatch` to -2 and stops.
   */
  private scanHead(data: Buffer, from: number): number {
    const checkTe = this.state === HEAD10;
    for (let i = from; i < data.length; i++) {
      const c = data[i]!;
      if (c === LF) {
        if (this.lineLength === 0) return i + 1;
        this.lineLength = 0;
        this.teMatch = 0;
        continue;
      }
      if (c === CR) continue;
      if (checkTe && this.teMatch >= 0) {
        if (this.teMatch === TE.length) {
          if (c === COLON) {
            this.teMatch = -2;
            return -1;
          }
          this.teMatch = -1;
        } else if ((c | 0x20) === TE[this.teMatch]) this.teMatch++;
        else this.teMatch = -1;
      }
      this.lineLength++;
    }
    return -1;
  }
}

/** `HTTP/1.0 ` or `HTTP/1.1 `, three digits, then a space or the end of the line. */
function isStatusLine(data: Buffer, i: number): boolean {
  for (let k = 0; k < HTTP1.length; k++) if (data[i + k] !== HTTP1[k]) return false;
  const minor = data[i + 7];
  if ((minor !== 0x30 && minor !== 0x31) || data[i + 8] !== SP) return false;
  for (let k = 9; k < 12; k++) {
    const d = data[i + k]!;
    if (d < 0x30 || d > 0x39) return false;
  }
  const after = data[i + 12];
  return after === SP || after === CR || after === LF;
}

/** The bytes from `i` on are a prefix of what a status line can start with. */
function couldBeStatusLine(data: Buffer, i: number): boolean {
  for (let k = 0; i + k < data.length && k < HTTP1.length; k++) if (data[i + k] !== HTTP1[k]) return false;
  return true;
}

function filteredRead(this: FilteredSocket, n?: number): Buffer | null {
  const f = this[kFilter]!;
  if (f.state === PASS || n !== undefined) return f.read.call(this, n) as Buffer | null;
  for (;;) {
    const chunk = f.read.call(this) as Buffer | null;
    if (chunk === null) return null;
    const out = f.filter(chunk, this);
    if (out !== null) return out;
    if (this.destroyed) return null;
  }
}

function onSendHeaders(message: unknown): void {
  const { socket, headers } = message as { socket: FilteredSocket; headers: string };
  socket?.[kFilter]?.begin(headers);
}

let subscribed = false;

/** Installs the interim-response filter on a freshly connected upstream socket. */
export function filterInterimResponses(socket: Socket): void {
  if (!subscribed) {
    subscribed = true;
    subscribe('undici:client:sendHeaders', onSendHeaders);
  }
  const s = socket as FilteredSocket;
  s[kFilter] = new InterimFilter(s.read);
  s.read = filteredRead as Socket['read'];
}

/** Wraps an undici connector so that every socket it opens gets the interim-response filter. */
export function interimFilteringConnector(base: buildConnector.connector): buildConnector.connector {
  return (options, callback) => {
    base(options, (err, socket) => {
      // On failure undici's connector passes only the error (the socket argument is undefined).
      if (!err && socket) filterInterimResponses(socket);
      (callback as (e: Error | null, s: Socket | null) => void)(err, socket);
    });
  };
}

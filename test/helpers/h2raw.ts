/**
 * A raw HTTP/2 client over TLS for attack tests: it writes frames as given (ignoring the server's
 * limits, as an attacker does) and records the frames the server sends. Header blocks use HPACK
 * literals without indexing, so no encoder state is needed (RFC 7541 §6.2.2).
 */
import tls from 'node:tls';

/** Frame types (RFC 9113 §6). */
export const FRAME = {
  DATA: 0,
  HEADERS: 1,
  RST_STREAM: 3,
  SETTINGS: 4,
  PING: 6,
  GOAWAY: 7,
  WINDOW_UPDATE: 8,
  CONTINUATION: 9,
} as const;

/** Frame flags. */
export const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4 } as const;

/** Error codes (RFC 9113 §7). */
export const CODE = {
  NO_ERROR: 0,
  PROTOCOL_ERROR: 1,
  INTERNAL_ERROR: 2,
  FLOW_CONTROL_ERROR: 3,
  REFUSED_STREAM: 7,
  CANCEL: 8,
  ENHANCE_YOUR_CALM: 11,
} as const;

/** One frame received from the server. */
export interface Frame {
  type: number;
  flags: number;
  stream: number;
  payload: Buffer;
}

/** Encodes one frame. */
export function frame(
  type: number,
  flags: number,
  stream: number,
  payload: Buffer = Buffer.alloc(0),
): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream & 0x7fffffff, 5);
  return Buffer.concat([head, payload]);
}

function hpackInt(value: number, prefixBits: number, first: number): number[] {
  const max = (1 << prefixBits) - 1;
  if (value < max) return [first | value];
  const out = [first | max];
  let rest = value - max;
  while (rest >= 128) {
    out.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return out;
}

function hpackString(text: string): Buffer {
  const bytes = Buffer.from(text, 'latin1');
  return Buffer.concat([Buffer.from(hpackInt(bytes.length, 7, 0)), bytes]);
}

/** An HPACK header block of literal fields without indexing (new names). */
export function headerBlock(fields: ReadonlyArray<readonly [string, string]>): Buffer {
  const parts: Buffer[] = [];
  for (const [name, value] of fields) parts.push(Buffer.from([0]), hpackString(name), hpackString(value));
  return Buffer.concat(parts);
}

/** The pseudo-header fields of a request. */
export function requestFields(
  path: string,
  method = 'GET',
  extra: ReadonlyArray<readonly [string, string]> = [],
): Array<readonly [string, string]> {
  return [[':method', method], [':scheme', 'https'], [':authority', 'app.test'], [':path', path], ...extra];
}

/** A SETTINGS frame from id/value pairs. */
export function settings(pairs: ReadonlyArray<readonly [number, number]> = [], ack = false): Buffer {
  const payload = Buffer.alloc(pairs.length * 6);
  pairs.forEach(([id, value], i) => {
    payload.writeUInt16BE(id, i * 6);
    payload.writeUInt32BE(value, i * 6 + 2);
  });
  return frame(FRAME.SETTINGS, ack ? FLAG.ACK : 0, 0, payload);
}

/** A RST_STREAM frame. */
export function rst(stream: number, code: number): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(code);
  return frame(FRAME.RST_STREAM, 0, stream, p);
}

/** A WINDOW_UPDATE frame. */
export function windowUpdate(stream: number, increment: number): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(increment >>> 0);
  return frame(FRAME.WINDOW_UPDATE, 0, stream, p);
}

/** A GOAWAY frame. */
export function goaway(lastStream: number, code: number): Buffer {
  const p = Buffer.alloc(8);
  p.writeUInt32BE(lastStream, 0);
  p.writeUInt32BE(code, 4);
  return frame(FRAME.GOAWAY, 0, 0, p);
}

/** A raw HTTP/2 connection. */
export interface RawH2 {
  socket: tls.TLSSocket;
  frames: Frame[];
  closed: Promise<void>;
  isClosed(): boolean;
  write(...bufs: Buffer[]): boolean;
  /** The GOAWAY the server sent, with its error code. */
  goaway(): { lastStream: number; code: number } | undefined;
  /** RST_STREAM error codes the server sent, by stream. */
  resets(): Map<number, number>;
  /** Streams the server sent a HEADERS frame on. */
  answered(): Set<number>;
  close(): void;
}

/**
 * Connects with ALPN h2, sends the preface and an empty SETTINGS (plus `initial` settings pairs),
 * acknowledges the server's SETTINGS, and collects every frame. `ackPings` answers nothing else.
 */
export function connectRaw(
  port: number,
  initial: ReadonlyArray<readonly [number, number]> = [],
): Promise<RawH2> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      ALPNProtocols: ['h2'],
      rejectUnauthorized: false,
      servername: 'localhost',
    });
    const frames: Frame[] = [];
    let buffered = Buffer.alloc(0);
    let closed = false;
    const closedP = new Promise<void>((r) =>
      socket.on('close', () => {
        closed = true;
        r();
      }),
    );
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      while (buffered.length >= 9) {
        const length = buffered.readUIntBE(0, 3);
        if (buffered.length < 9 + length) break;
        const f: Frame = {
          type: buffered[3]!,
          flags: buffered[4]!,
          stream: buffered.readUInt32BE(5) & 0x7fffffff,
          payload: buffered.subarray(9, 9 + length),
        };
        buffered = buffered.subarray(9 + length);
        frames.push(f);
        if (f.type === FRAME.SETTINGS && (f.flags & FLAG.ACK) === 0 && !socket.destroyed)
          socket.write(settings([], true));
      }
    });
    socket.once('secureConnect', () => {
      if (socket.alpnProtocol !== 'h2') {
        reject(new Error(`ALPN chose ${String(socket.alpnProtocol)}`));
        return;
      }
      socket.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), settings(initial)]));
      resolve({
        socket,
        frames,
        closed: closedP,
        isClosed: () => closed,
        write: (...bufs) => !socket.destroyed && socket.write(Buffer.concat(bufs)),
        goaway() {
          const g = frames.find((f) => f.type === FRAME.GOAWAY);
          return g === undefined
            ? undefined
            : { lastStream: g.payload.readUInt32BE(0) & 0x7fffffff, code: g.payload.readUInt32BE(4) };
        },
        resets() {
          const m = new Map<number, number>();
          for (const f of frames) if (f.type === FRAME.RST_STREAM) m.set(f.stream, f.payload.readUInt32BE(0));
          return m;
        },
        answered() {
          return new Set(frames.filter((f) => f.type === FRAME.HEADERS).map((f) => f.stream));
        },
        close: () => socket.destroy(),
      });
    });
    socket.once('error', reject);
  });
}

/** SETTINGS identifiers (RFC 9113 §6.5.2). */
export const SETTING = {
  HEADER_TABLE_SIZE: 1,
  ENABLE_PUSH: 2,
  MAX_CONCURRENT_STREAMS: 3,
  INITIAL_WINDOW_SIZE: 4,
  MAX_FRAME_SIZE: 5,
  MAX_HEADER_LIST_SIZE: 6,
} as const;

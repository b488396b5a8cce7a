/**
 * SPOP 2.0 codec (HAProxy's Stream Processing Offload Protocol, doc/SPOE.txt section 3, as HAProxy 2.6
 * and newer speak it): frames, varints, typed data, KV-lists, NOTIFY messages, ACK actions, the HELLO
 * negotiation, and the `req.hdrs_bin` header block.
 *
 * Guarantees of every decoder: it reads only inside the buffer it is given, finishes in time linear in
 * that buffer, and throws nothing but `SpopError`, whose `status` is the SPOE.txt status code the agent
 * sends in its AGENT-DISCONNECT. Decoded buffers and strings are copies or subarrays of the input, never
 * views past its end. Encoders size the frame first and write it into one buffer; they throw `TypeError`
 * or `RangeError` for values the protocol cannot carry (a programming error), and `SpopError` (3, frame
 * too big) when the frame would exceed the negotiated max-frame-size.
 *
 * Strings (KV names, message names, STRING values) are byte strings: decoded as latin1, one character
 * per byte, so no byte is lost or replaced; encoders take characters U+0000..U+00FF. UTF-8 text is
 * carried by `utf8String()`.
 */
import { parseIPv4, parseIPv6 } from '../policy/cidr.js';

// ---------------------------------------------------------------------------------------------
// Constants and errors

/** The only SPOP version this codec speaks. */
export const SPOP_VERSION = '2.0';
/** SPOE.txt 3.2: "The maximum size supported by peers for a frame must be greater than or equal to 256". */
export const MIN_FRAME_SIZE = 256;
/** HAProxy's default: tune.bufsize (16384) minus the 4 bytes of the length prefix. */
export const DEFAULT_MAX_FRAME_SIZE = 16_380;
/** The length prefix of every frame: 4 bytes, big-endian. It does not count towards max-frame-size. */
export const LENGTH_PREFIX = 4;

/** Frame types (SPOE.txt 3.2.2). */
export const FrameType = {
  UNSET: 0,
  HAPROXY_HELLO: 1,
  HAPROXY_DISCONNECT: 2,
  NOTIFY: 3,
  AGENT_HELLO: 101,
  AGENT_DISCONNECT: 102,
  ACK: 103,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

/** Frame flags (SPOE.txt 3.2): bit 0 FIN, bit 1 ABORT; the other bits are reserved. */
export const FLAG_FIN = 0x1;
export const FLAG_ABORT = 0x2;

/** Status codes of SPOE.txt 3.5, sent in DISCONNECT frames. */
export const SpopStatus = {
  NORMAL: 0,
  IO: 1,
  TIMEOUT: 2,
  TOO_BIG: 3,
  INVALID: 4,
  NO_VERSION: 5,
  NO_FRAME_SIZE: 6,
  NO_CAPABILITIES: 7,
  BAD_VERSION: 8,
  BAD_FRAME_SIZE: 9,
  FRAGMENTATION_NOT_SUPPORTED: 10,
  INTERLACED_FRAMES: 11,
  FRAME_ID_NOT_FOUND: 12,
  RESOURCE: 13,
  UNKNOWN: 99,
} as const;
export type SpopStatus = (typeof SpopStatus)[keyof typeof SpopStatus];

/** Stable codes of `SpopError`, one per status. */
export type SpopErrorCode =
  | 'SPOP_NORMAL'
  | 'SPOP_IO'
  | 'SPOP_TIMEOUT'
  | 'SPOP_TOO_BIG'
  | 'SPOP_INVALID'
  | 'SPOP_NO_VERSION'
  | 'SPOP_NO_FRAME_SIZE'
  | 'SPOP_NO_CAPABILITIES'
  | 'SPOP_BAD_VERSION'
  | 'SPOP_BAD_FRAME_SIZE'
  | 'SPOP_FRAGMENTATION_NOT_SUPPORTED'
  | 'SPOP_INTERLACED_FRAMES'
  | 'SPOP_FRAME_ID_NOT_FOUND'
  | 'SPOP_RESOURCE'
  | 'SPOP_UNKNOWN';

const CODES: Record<SpopStatus, SpopErrorCode> = {
  0: 'SPOP_NORMAL',
  1: 'SPOP_IO',
  2: 'SPOP_TIMEOUT',
  3: 'SPOP_TOO_BIG',
  4: 'SPOP_INVALID',
  5: 'SPOP_NO_VERSION',
  6: 'SPOP_NO_FRAME_SIZE',
  7: 'SPOP_NO_CAPABILITIES',
  8: 'SPOP_BAD_VERSION',
  9: 'SPOP_BAD_FRAME_SIZE',
  10: 'SPOP_FRAGMENTATION_NOT_SUPPORTED',
  11: 'SPOP_INTERLACED_FRAMES',
  12: 'SPOP_FRAME_ID_NOT_FOUND',
  13: 'SPOP_RESOURCE',
  99: 'SPOP_UNKNOWN',
};

/** Every status of SPOE.txt 3.5. */
export const SPOP_STATUSES: readonly SpopStatus[] = Object.values(SpopStatus);

/**
 * A protocol error: what was received is malformed, out of bounds or refused. `status` is the SPOE.txt
 * status code to send in AGENT-DISCONNECT before closing the connection.
 */
export class SpopError extends Error {
  readonly status: SpopStatus;
  readonly code: SpopErrorCode;
  constructor(status: SpopStatus, message: string) {
    super(message);
    this.name = 'SpopError';
    this.status = status;
    this.code = CODES[status];
  }
}

function invalid(message: string): SpopError {
  return new SpopError(SpopStatus.INVALID, message);
}

// ---------------------------------------------------------------------------------------------
// Varints (SPOE.txt 3.1, HAProxy's encode_varint/decode_varint in include/haproxy/intops.h)
//
// X < 240 is one byte. Otherwise the first byte is 240 | (X & 15), X becomes (X - 240) >> 4, and each
// following byte is 128 | (X & 127) with X = (X - 128) >> 7 while X >= 128, then X itself (< 128).
// Decoding adds each byte, continuation bit included, shifted by 4, 11, 18, ... bits. The mapping is a
// bijection between byte strings and integers, so there is no overlong form to refuse; values above
// 2^64 - 1 (HAProxy would wrap them) and more than 10 bytes are refused as invalid.

/** Largest value of a varint: 2^64 - 1. */
export const VARINT_MAX = 0xffff_ffff_ffff_ffffn;
/** Longest varint: 10 bytes (2^64 - 1 needs all of them). */
export const VARINT_MAX_BYTES = 10;

/** Bytes needed to encode `v` (a safe non-negative integer or a bigint in [0, 2^64 - 1]). */
export function varintSize(v: number | bigint): number {
  if (typeof v === 'bigint') {
    if (v < 240n) return 1;
    let n = 2;
    v = (v - 240n) >> 4n;
    while (v >= 128n) {
      v = (v - 128n) >> 7n;
      n++;
    }
    return n;
  }
  if (v < 240) return 1;
  let n = 2;
  v = Math.floor((v - 240) / 16);
  while (v >= 128) {
    v = Math.floor((v - 128) / 128);
    n++;
  }
  return n;
}

function checkVarintValue(v: number | bigint): void {
  if (typeof v === 'bigint') {
    if (v < 0n || v > VARINT_MAX) throw new RangeError(`varint out of range: ${v}`);
  } else if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`varint out of range: ${v}`);
}

/**
 * Writes `v` as a varint at `pos` and returns the position after it. The caller has sized the buffer
 * with `varintSize`.
 */
export function writeVarint(buf: Buffer, pos: number, v: number | bigint): number {
  checkVarintValue(v);
  if (typeof v === 'bigint') {
    if (v < 240n) {
      buf[pos++] = Number(v);
      return pos;
    }
    buf[pos++] = 240 | Number(v & 15n);
    v = (v - 240n) >> 4n;
    while (v >= 128n) {
      buf[pos++] = 128 | Number(v & 127n);
      v = (v - 128n) >> 7n;
    }
    buf[pos++] = Number(v);
    return pos;
  }
  if (v < 240) {
    buf[pos++] = v;
    return pos;
  }
  buf[pos++] = 240 | (v % 16);
  v = Math.floor((v - 240) / 16);
  while (v >= 128) {
    buf[pos++] = 128 | (v % 128);
    v = Math.floor((v - 128) / 128);
  }
  buf[pos++] = v;
  return pos;
}

/** Encodes one varint into a new buffer (for tests and tools; frames are written in place). */
export function encodeVarint(v: number | bigint): Buffer {
  const buf = Buffer.allocUnsafe(varintSize(v));
  writeVarint(buf, 0, v);
  return buf;
}

/**
 * A cursor over `buf[pos, end)`. Every read checks the end first and throws `SpopError` (4, invalid
 * frame) rather than read past it.
 */
export class Reader {
  pos: number;
  readonly end: number;
  constructor(
    readonly buf: Buffer,
    pos = 0,
    end = buf.length,
  ) {
    this.pos = pos;
    this.end = end;
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  byte(what: string): number {
    if (this.pos >= this.end) throw invalid(`truncated ${what}`);
    return this.buf[this.pos++]!;
  }

  /** A varint that must be a safe integer (lengths, identifiers, sizes). */
  varint(what: string): number {
    const start = this.pos;
    let b = this.byte(what);
    if (b < 240) return b;
    let value = b;
    // Seven bytes (shifts 4..39) stay below 2^48: exact in a double. Longer ones take the bigint path.
    for (let shift = 4; shift <= 39; shift += 7) {
      b = this.byte(what);
      value += b * 2 ** shift;
      if (b < 128) return value;
    }
    this.pos = start;
    const big = this.varint64(what);
    if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`${what} out of range: ${big}`);
    return Number(big);
  }

  /** A varint as an unsigned 64-bit bigint. */
  varint64(what: string): bigint {
    let b = this.byte(what);
    if (b < 240) return BigInt(b);
    let value = BigInt(b);
    let shift = 4n;
    for (let i = 1; i < VARINT_MAX_BYTES; i++) {
      b = this.byte(what);
      value += BigInt(b) << shift;
      if (b < 128) {
        if (value > VARINT_MAX) throw invalid(`${what} exceeds 64 bits`);
        return value;
      }
      shift += 7n;
    }
    throw invalid(`${what} longer than ${VARINT_MAX_BYTES} bytes`);
  }

  /** `n` bytes as a subarray of the input. */
  bytes(n: number, what: string): Buffer {
    if (n > this.end - this.pos) throw invalid(`${what} of ${n} bytes runs past the end`);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** A length-prefixed byte string (varint length, then the bytes) as a subarray. */
  lengthPrefixed(what: string): Buffer {
    return this.bytes(this.varint(`${what} length`), what);
  }

  /** A length-prefixed byte string decoded as latin1. */
  string(what: string): string {
    const n = this.varint(`${what} length`);
    if (n > this.end - this.pos) throw invalid(`${what} of ${n} bytes runs past the end`);
    const s = this.buf.toString('latin1', this.pos, this.pos + n);
    this.pos += n;
    return s;
  }
}

/** Decodes one varint that must fill `buf` exactly; for tests and tools. */
export function decodeVarint(buf: Buffer): bigint {
  const r = new Reader(buf);
  const v = r.varint64('varint');
  if (r.remaining !== 0) throw invalid(`${r.remaining} bytes after the varint`);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Typed data (SPOE.txt 3.1). The type is the low nibble of the first byte, the flags the high nibble
// (HAProxy's SPOE_DATA_T_MASK 0x0F and SPOE_DATA_FL_MASK 0xF0); only BOOL uses a flag, 0x10 for true.

/** Type identifiers of typed data. */
export const DataType = {
  NULL: 0,
  BOOL: 1,
  INT32: 2,
  UINT32: 3,
  INT64: 4,
  UINT64: 5,
  IPV4: 6,
  IPV6: 7,
  STRING: 8,
  BINARY: 9,
} as const;

/**
 * One typed value. 64-bit integers are bigints; IP addresses are their text (IPv4 dotted quad, IPv6 in
 * RFC 5952 form); strings are byte strings (latin1).
 */
export type SpopValue =
  | { readonly type: 'null' }
  | { readonly type: 'bool'; readonly value: boolean }
  | { readonly type: 'int32'; readonly value: number }
  | { readonly type: 'uint32'; readonly value: number }
  | { readonly type: 'int64'; readonly value: bigint }
  | { readonly type: 'uint64'; readonly value: bigint }
  | { readonly type: 'ipv4'; readonly value: string }
  | { readonly type: 'ipv6'; readonly value: string }
  | { readonly type: 'string'; readonly value: string }
  | { readonly type: 'binary'; readonly value: Buffer };

const NULL_VALUE: SpopValue = Object.freeze({ type: 'null' });
const TRUE_VALUE: SpopValue = Object.freeze({ type: 'bool', value: true });
const FALSE_VALUE: SpopValue = Object.freeze({ type: 'bool', value: false });

/** A STRING value carrying `text` as UTF-8 bytes. */
export function utf8String(text: string): SpopValue {
  return { type: 'string', value: Buffer.from(text, 'utf8').toString('latin1') };
}

const INT32_MIN = -(2n ** 31n);
const INT32_MAX = 2n ** 31n - 1n;

/**
 * Reads one typed value. HAProxy encodes a signed integer as the varint of its 64-bit two's complement
 * (a negative number takes 10 bytes); INT32 and UINT32 must hold a value of their range.
 */
export function readValue(r: Reader): SpopValue {
  const head = r.byte('typed data');
  const type = head & 0x0f;
  const flags = head & 0xf0;
  if (type === DataType.BOOL) {
    if (flags !== 0x00 && flags !== 0x10) throw invalid(`boolean with flags 0x${flags.toString(16)}`);
    return flags === 0x10 ? TRUE_VALUE : FALSE_VALUE;
  }
  if (flags !== 0) throw invalid(`typed data of type ${type} with flags 0x${flags.toString(16)}`);
  switch (type) {
    case DataType.NULL:
      return NULL_VALUE;
    case DataType.INT32: {
      const v = BigInt.asIntN(64, r.varint64('INT32'));
      if (v < INT32_MIN || v > INT32_MAX) throw invalid(`INT32 out of range: ${v}`);
      return { type: 'int32', value: Number(v) };
    }
    case DataType.UINT32: {
      const v = r.varint('UINT32');
      if (v > 0xffff_ffff) throw invalid(`UINT32 out of range: ${v}`);
      return { type: 'uint32', value: v };
    }
    case DataType.INT64:
      return { type: 'int64', value: BigInt.asIntN(64, r.varint64('INT64')) };
    case DataType.UINT64:
      return { type: 'uint64', value: r.varint64('UINT64') };
    case DataType.IPV4: {
      const b = r.bytes(4, 'IPV4 address');
      return { type: 'ipv4', value: `${b[0]}.${b[1]}.${b[2]}.${b[3]}` };
    }
    case DataType.IPV6:
      return { type: 'ipv6', value: formatIPv6(r.bytes(16, 'IPV6 address')) };
    case DataType.STRING:
      return { type: 'string', value: r.string('STRING') };
    case DataType.BINARY:
      // A copy, so that a value kept by the caller does not pin the whole frame in memory.
      return { type: 'binary', value: Buffer.from(r.lengthPrefixed('BINARY')) };
    default:
      throw invalid(`unknown data type ${type}`);
  }
}

/** Formats 16 bytes as an IPv6 address in RFC 5952 form (IPv4-mapped as `::ffff:a.b.c.d`). */
export function formatIPv6(b: Buffer): string {
  const w = (i: number): number => (b[2 * i]! << 8) | b[2 * i + 1]!;
  if (w(0) === 0 && w(1) === 0 && w(2) === 0 && w(3) === 0 && w(4) === 0 && w(5) === 0xffff)
    return `::ffff:${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  // The longest run of two or more zero words (the first of equal runs) becomes "::".
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (w(i) !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && w(j) === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  let out = '';
  for (let i = 0; i < 8; i++) {
    if (i === best) {
      out += '::';
      i += bestLen - 1;
      continue;
    }
    if (out !== '' && !out.endsWith(':')) out += ':';
    out += w(i).toString(16);
  }
  return out;
}

const NOT_LATIN1 = /[^\u0000-\u00ff]/;

function latin1Length(s: string, what: string): number {
  if (NOT_LATIN1.test(s)) throw new RangeError(`${what} holds a character above U+00FF`);
  return s.length;
}

const IPV6_WORDS = new Uint16Array(8);

function checkedInt(v: number, min: number, max: number, what: string): number {
  if (!Number.isInteger(v) || v < min || v > max) throw new RangeError(`${what} out of range: ${v}`);
  return v;
}

/** Bytes needed to encode `v`; throws RangeError/TypeError for a value the protocol cannot carry. */
export function valueSize(v: SpopValue): number {
  switch (v.type) {
    case 'null':
    case 'bool':
      return 1;
    case 'int32':
      checkedInt(v.value, -(2 ** 31), 2 ** 31 - 1, 'INT32');
      return 1 + varintSize(BigInt.asUintN(64, BigInt(v.value)));
    case 'uint32':
      return 1 + varintSize(checkedInt(v.value, 0, 0xffff_ffff, 'UINT32'));
    case 'int64':
      if (BigInt.asIntN(64, v.value) !== v.value) throw new RangeError(`INT64 out of range: ${v.value}`);
      return 1 + varintSize(BigInt.asUintN(64, v.value));
    case 'uint64':
      return 1 + varintSize(v.value);
    case 'ipv4':
      if (parseIPv4(v.value) < 0) throw new TypeError(`not an IPv4 address: ${v.value}`);
      return 5;
    case 'ipv6':
      if (!parseIPv6(v.value, v.value.length, IPV6_WORDS))
        throw new TypeError(`not an IPv6 address: ${v.value}`);
      return 17;
    case 'string': {
      const n = latin1Length(v.value, 'STRING');
      return 1 + varintSize(n) + n;
    }
    case 'binary':
      return 1 + varintSize(v.value.length) + v.value.length;
    default:
      throw new TypeError(`unknown value type ${(v as { type: unknown }).type}`);
  }
}

/** Writes `v` at `pos` (sized with `valueSize`) and returns the position after it. */
export function writeValue(buf: Buffer, pos: number, v: SpopValue): number {
  switch (v.type) {
    case 'null':
      buf[pos++] = DataType.NULL;
      return pos;
    case 'bool':
      buf[pos++] = DataType.BOOL | (v.value ? 0x10 : 0);
      return pos;
    case 'int32':
      buf[pos++] = DataType.INT32;
      return writeVarint(buf, pos, BigInt.asUintN(64, BigInt(v.value)));
    case 'uint32':
      buf[pos++] = DataType.UINT32;
      return writeVarint(buf, pos, v.value);
    case 'int64':
      buf[pos++] = DataType.INT64;
      return writeVarint(buf, pos, BigInt.asUintN(64, v.value));
    case 'uint64':
      buf[pos++] = DataType.UINT64;
      return writeVarint(buf, pos, v.value);
    case 'ipv4': {
      const n = parseIPv4(v.value);
      buf[pos++] = DataType.IPV4;
      buf.writeUInt32BE(n, pos);
      return pos + 4;
    }
    case 'ipv6':
      parseIPv6(v.value, v.value.length, IPV6_WORDS);
      buf[pos++] = DataType.IPV6;
      for (let i = 0; i < 8; i++) pos = buf.writeUInt16BE(IPV6_WORDS[i]!, pos);
      return pos;
    case 'string':
      buf[pos++] = DataType.STRING;
      pos = writeVarint(buf, pos, v.value.length);
      return pos + buf.write(v.value, pos, 'latin1');
    case 'binary':
      buf[pos++] = DataType.BINARY;
      pos = writeVarint(buf, pos, v.value.length);
      return pos + v.value.copy(buf, pos);
  }
}

function nameSize(s: string, what: string): number {
  const n = latin1Length(s, what);
  return varintSize(n) + n;
}

function writeName(buf: Buffer, pos: number, s: string): number {
  pos = writeVarint(buf, pos, s.length);
  return pos + buf.write(s, pos, 'latin1');
}

// ---------------------------------------------------------------------------------------------
// Frames

/** One decoded frame; `payload` is a subarray of the frame given to `decodeFrame`. */
export interface SpopFrame {
  readonly type: FrameType;
  readonly flags: number;
  readonly streamId: number;
  readonly frameId: number;
  readonly payload: Buffer;
}

const KNOWN_TYPES = new Set<number>(Object.values(FrameType));

/**
 * Decodes the header of one frame (its bytes without the length prefix, as `FrameSplitter` yields
 * them). Refuses: a header cut short or an unknown type (4); a fragment, that is a frame without FIN or
 * of type UNSET, since this agent never announces the `fragmentation` capability (10); HELLO and
 * DISCONNECT frames with a stream-id or frame-id other than 0 (4). Identifiers above 2^53 - 1 are
 * refused (4); HAProxy's are 32-bit counters.
 */
export function decodeFrame(frame: Buffer): SpopFrame {
  if (frame.length < 7) throw invalid(`frame of ${frame.length} bytes is shorter than its header`);
  const type = frame[0]!;
  // SPOE.txt 3.2.2 allows skipping unknown frames; HAProxy 2.6 sends none, so one is a broken peer.
  if (!KNOWN_TYPES.has(type)) throw invalid(`unknown frame type ${type}`);
  const flags = frame.readUInt32BE(1);
  if (type === FrameType.UNSET || (flags & FLAG_FIN) === 0)
    throw new SpopError(SpopStatus.FRAGMENTATION_NOT_SUPPORTED, 'fragmented frame received');
  const r = new Reader(frame, 5);
  const streamId = r.varint('stream-id');
  const frameId = r.varint('frame-id');
  if (type !== FrameType.NOTIFY && type !== FrameType.ACK && (streamId !== 0 || frameId !== 0))
    throw invalid(`frame type ${type} with stream-id ${streamId} and frame-id ${frameId} (must be 0)`);
  return { type: type as FrameType, flags, streamId, frameId, payload: frame.subarray(r.pos) };
}

/**
 * Splits a TCP byte stream into frames. `push` may be given any chunking of the stream (a frame in
 * pieces, many frames in one chunk); `onFrame` receives each complete frame without its length prefix,
 * in order. A frame longer than `maxFrameSize` is refused with `SpopError` (3) as soon as its length is
 * read, before anything is allocated for it; after an error the splitter stays failed. A frame that
 * arrived whole in one chunk is a subarray of that chunk (no copy).
 */
export class FrameSplitter {
  #max: number;
  readonly #head = Buffer.alloc(LENGTH_PREFIX);
  #headHave = 0;
  #body: Buffer | undefined;
  #bodyHave = 0;
  #failed: SpopError | undefined;

  constructor(maxFrameSize: number = DEFAULT_MAX_FRAME_SIZE) {
    this.#max = checkFrameSize(maxFrameSize);
  }

  /** The largest frame accepted (changes after the HELLO handshake). */
  get maxFrameSize(): number {
    return this.#max;
  }

  set maxFrameSize(v: number) {
    this.#max = checkFrameSize(v);
  }

  /** Bytes of an incomplete frame held back. */
  get buffered(): number {
    return this.#headHave + this.#bodyHave;
  }

  #length(n: number): Buffer {
    if (n > this.#max) {
      this.#failed = new SpopError(
        SpopStatus.TOO_BIG,
        `frame of ${n} bytes exceeds max-frame-size ${this.#max}`,
      );
      throw this.#failed;
    }
    return Buffer.allocUnsafe(n);
  }

  /** Feeds the next chunk of the stream. */
  push(chunk: Buffer, onFrame: (frame: Buffer) => void): void {
    if (this.#failed) throw this.#failed;
    let pos = 0;
    const end = chunk.length;
    while (pos < end) {
      if (this.#body === undefined) {
        if (this.#headHave === 0 && end - pos >= LENGTH_PREFIX) {
          const n = chunk.readUInt32BE(pos);
          if (n > this.#max) this.#length(n);
          pos += LENGTH_PREFIX;
          if (end - pos >= n) {
            const frame = chunk.subarray(pos, pos + n);
            pos += n;
            onFrame(frame);
            continue;
          }
          this.#body = Buffer.allocUnsafe(n);
          this.#bodyHave = chunk.copy(this.#body, 0, pos, end);
          return;
        }
        const take = Math.min(LENGTH_PREFIX - this.#headHave, end - pos);
        chunk.copy(this.#head, this.#headHave, pos, pos + take);
        this.#headHave += take;
        pos += take;
        if (this.#headHave < LENGTH_PREFIX) return;
        this.#headHave = 0;
        this.#body = this.#length(this.#head.readUInt32BE(0));
        this.#bodyHave = 0;
      } else {
        const take = Math.min(this.#body.length - this.#bodyHave, end - pos);
        chunk.copy(this.#body, this.#bodyHave, pos, pos + take);
        this.#bodyHave += take;
        pos += take;
      }
      if (this.#bodyHave === this.#body.length) {
        const frame = this.#body;
        this.#body = undefined;
        this.#bodyHave = 0;
        onFrame(frame);
      }
    }
  }
}

function checkFrameSize(n: number): number {
  if (!Number.isInteger(n) || n < MIN_FRAME_SIZE || n > 0xffff_ffff)
    throw new RangeError(`max-frame-size must be an integer from ${MIN_FRAME_SIZE} to 2^32 - 1: ${n}`);
  return n;
}

/**
 * Allocates a frame of `payloadSize` payload bytes with its length prefix and header written; returns
 * the buffer and the payload offset. Refuses (3) a frame longer than `maxFrameSize`.
 */
function frameBuffer(
  type: FrameType,
  flags: number,
  streamId: number,
  frameId: number,
  payloadSize: number,
  maxFrameSize: number | undefined,
): [Buffer, number] {
  const length = 5 + varintSize(streamId) + varintSize(frameId) + payloadSize;
  if (maxFrameSize !== undefined && length > maxFrameSize)
    throw new SpopError(
      SpopStatus.TOO_BIG,
      `frame of ${length} bytes exceeds max-frame-size ${maxFrameSize}`,
    );
  const buf = Buffer.allocUnsafe(LENGTH_PREFIX + length);
  buf.writeUInt32BE(length, 0);
  buf[4] = type;
  buf.writeUInt32BE(flags >>> 0, 5);
  let pos = writeVarint(buf, 9, streamId);
  pos = writeVarint(buf, pos, frameId);
  return [buf, pos];
}

// ---------------------------------------------------------------------------------------------
// KV-lists (HELLO and DISCONNECT payloads; NOTIFY arguments)

/** One item of a KV-list. */
export interface SpopKv {
  readonly name: string;
  readonly value: SpopValue;
}

/**
 * Decodes a KV-list filling `payload`. An empty name is refused (4) as HAProxy refuses it in HELLO and
 * DISCONNECT frames.
 */
export function decodeKvList(payload: Buffer): SpopKv[] {
  const r = new Reader(payload);
  const out: SpopKv[] = [];
  while (r.remaining > 0) {
    const name = r.string('KV name');
    if (name === '') throw invalid('empty KV name');
    out.push({ name, value: readValue(r) });
  }
  return out;
}

function kvListSize(items: readonly SpopKv[]): number {
  let n = 0;
  for (const kv of items) n += nameSize(kv.name, 'KV name') + valueSize(kv.value);
  return n;
}

function writeKvList(buf: Buffer, pos: number, items: readonly SpopKv[]): number {
  for (const kv of items) pos = writeValue(buf, writeName(buf, pos, kv.name), kv.value);
  return pos;
}

/** Encodes a frame whose payload is a KV-list (HELLO and DISCONNECT frames: ids 0, FIN). */
export function encodeKvFrame(type: FrameType, items: readonly SpopKv[], maxFrameSize?: number): Buffer {
  const [buf, pos] = frameBuffer(type, FLAG_FIN, 0, 0, kvListSize(items), maxFrameSize);
  writeKvList(buf, pos, items);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// NOTIFY: LIST-OF-MESSAGES = [ <MESSAGE-NAME> <NB-ARGS:1 byte> <KV-LIST of NB-ARGS items> ... ]

/** One message of a NOTIFY frame. Argument names may be empty (an unnamed `args` entry). */
export interface SpopMessage {
  readonly name: string;
  readonly args: readonly SpopKv[];
}

/** Decodes the messages of a NOTIFY payload. Refuses (4) an empty message name and anything cut short. */
export function decodeMessages(payload: Buffer): SpopMessage[] {
  const r = new Reader(payload);
  const out: SpopMessage[] = [];
  while (r.remaining > 0) {
    const name = r.string('message name');
    if (name === '') throw invalid('empty message name');
    const count = r.byte('argument count');
    const args: SpopKv[] = [];
    for (let i = 0; i < count; i++) {
      const argName = r.string('argument name');
      args.push({ name: argName, value: readValue(r) });
    }
    out.push({ name, args });
  }
  return out;
}

/** Decodes a NOTIFY frame's messages; refuses (4) a frame of another type. */
export function decodeNotify(frame: SpopFrame): SpopMessage[] {
  if (frame.type !== FrameType.NOTIFY) throw invalid(`expected NOTIFY, got frame type ${frame.type}`);
  return decodeMessages(frame.payload);
}

/** Encodes a NOTIFY frame (as HAProxy sends it; for tests and tools). */
export function encodeNotify(
  streamId: number,
  frameId: number,
  messages: readonly SpopMessage[],
  maxFrameSize?: number,
): Buffer {
  let size = 0;
  for (const m of messages) {
    if (m.name === '') throw new RangeError('empty message name');
    if (m.args.length > 255) throw new RangeError(`message ${m.name} has more than 255 arguments`);
    size += nameSize(m.name, 'message name') + 1;
    for (const a of m.args) size += nameSize(a.name, 'argument name') + valueSize(a.value);
  }
  const [buf, start] = frameBuffer(FrameType.NOTIFY, FLAG_FIN, streamId, frameId, size, maxFrameSize);
  let pos = start;
  for (const m of messages) {
    pos = writeName(buf, pos, m.name);
    buf[pos++] = m.args.length;
    for (const a of m.args) pos = writeValue(buf, writeName(buf, pos, a.name), a.value);
  }
  return buf;
}

// ---------------------------------------------------------------------------------------------
// ACK: LIST-OF-ACTIONS (SPOE.txt 3.4)

/** Variable scopes of set-var and unset-var, by their SPOE.txt names. */
export type VarScope = 'process' | 'session' | 'transaction' | 'request' | 'response';
const SCOPES: readonly VarScope[] = ['process', 'session', 'transaction', 'request', 'response'];
const SCOPE_IDS: Record<VarScope, number> = {
  process: 0,
  session: 1,
  transaction: 2,
  request: 3,
  response: 4,
};

/**
 * One action of an ACK frame. HAProxy prefixes the name with the scope and the agent's `var-prefix`
 * (`txn.<prefix>.<name>`), and sets a variable to NULL by unsetting it.
 */
export type SpopAction =
  | { readonly type: 'set-var'; readonly scope: VarScope; readonly name: string; readonly value: SpopValue }
  | { readonly type: 'unset-var'; readonly scope: VarScope; readonly name: string };

const ACTION_SET_VAR = 1;
const ACTION_UNSET_VAR = 2;

/** Decodes a LIST-OF-ACTIONS; refuses (4) an unknown action, a wrong argument count or scope. */
export function decodeActions(payload: Buffer): SpopAction[] {
  const r = new Reader(payload);
  const out: SpopAction[] = [];
  while (r.remaining > 0) {
    const type = r.byte('action type');
    if (type !== ACTION_SET_VAR && type !== ACTION_UNSET_VAR) throw invalid(`unknown action type ${type}`);
    const count = r.byte('action argument count');
    const expected = type === ACTION_SET_VAR ? 3 : 2;
    if (count !== expected) throw invalid(`action ${type} with ${count} arguments (must be ${expected})`);
    const scopeId = r.byte('variable scope');
    const scope = SCOPES[scopeId];
    if (scope === undefined) throw invalid(`unknown variable scope ${scopeId}`);
    const name = r.string('variable name');
    if (type === ACTION_SET_VAR) out.push({ type: 'set-var', scope, name, value: readValue(r) });
    else out.push({ type: 'unset-var', scope, name });
  }
  return out;
}

/** Decodes an ACK frame's actions; refuses (4) a frame of another type. */
export function decodeAck(frame: SpopFrame): SpopAction[] {
  if (frame.type !== FrameType.ACK) throw invalid(`expected ACK, got frame type ${frame.type}`);
  return decodeActions(frame.payload);
}

/**
 * Encodes the ACK of the NOTIFY frame `streamId`/`frameId`. Refuses (3) an ACK longer than
 * `maxFrameSize` (the negotiated one); a variable name must be latin1.
 */
export function encodeAck(
  streamId: number,
  frameId: number,
  actions: readonly SpopAction[],
  maxFrameSize?: number,
): Buffer {
  let size = 0;
  for (const a of actions) {
    if (SCOPE_IDS[a.scope] === undefined) throw new TypeError(`unknown variable scope ${a.scope}`);
    size += 3 + nameSize(a.name, 'variable name');
    if (a.type === 'set-var') size += valueSize(a.value);
  }
  const [buf, start] = frameBuffer(FrameType.ACK, FLAG_FIN, streamId, frameId, size, maxFrameSize);
  let pos = start;
  for (const a of actions) {
    buf[pos++] = a.type === 'set-var' ? ACTION_SET_VAR : ACTION_UNSET_VAR;
    buf[pos++] = a.type === 'set-var' ? 3 : 2;
    buf[pos++] = SCOPE_IDS[a.scope];
    pos = writeName(buf, pos, a.name);
    if (a.type === 'set-var') pos = writeValue(buf, pos, a.value);
  }
  return buf;
}

// ---------------------------------------------------------------------------------------------
// HELLO and DISCONNECT (SPOE.txt 3.2.4 to 3.2.9)

/** What HAProxy announces in HAPROXY-HELLO. */
export interface HaproxyHello {
  /** The `supported-versions` text as sent, e.g. "2.0". */
  readonly supportedVersions: string;
  readonly maxFrameSize: number;
  /** The `capabilities` list, trimmed, empty entries dropped, e.g. ["pipelining", "async"]. */
  readonly capabilities: readonly string[];
  /** True for a health check: answer AGENT-HELLO and close. */
  readonly healthcheck: boolean;
  readonly engineId: string | undefined;
}

function integerItem(v: SpopValue, what: string): bigint {
  switch (v.type) {
    case 'int32':
    case 'uint32':
      return BigInt(v.value);
    case 'int64':
    case 'uint64':
      return v.value;
    default:
      throw invalid(`${what} is not an integer`);
  }
}

function stringItem(v: SpopValue, what: string): string {
  if (v.type !== 'string') throw invalid(`${what} is not a string`);
  return v.value;
}

/** Splits a comma-separated list, ignoring spaces (SPOE.txt: "Spaces must be ignored, if any"). */
export function splitList(text: string): string[] {
  const out: string[] = [];
  for (const part of text.split(',')) {
    const t = part.replace(/^[ \t\n\v\f\r]+|[ \t\n\v\f\r]+$/g, '');
    if (t !== '') out.push(t);
  }
  return out;
}

/**
 * Decodes HAPROXY-HELLO. Refuses: another frame type or a badly typed item (4); no
 * `supported-versions` (5), no `max-frame-size` (6), no `capabilities` (7). A max-frame-size that does
 * not fit 32 bits is refused (9). Unknown items are ignored; of a repeated item the last counts, as in
 * HAProxy's own parser.
 */
export function decodeHaproxyHello(frame: SpopFrame): HaproxyHello {
  if (frame.type !== FrameType.HAPROXY_HELLO)
    throw invalid(`expected HAPROXY-HELLO, got frame type ${frame.type}`);
  let versions: string | undefined;
  let maxFrameSize: bigint | undefined;
  let capabilities: string | undefined;
  let healthcheck = false;
  let engineId: string | undefined;
  for (const { name, value } of decodeKvList(frame.payload)) {
    if (name === 'supported-versions') versions = stringItem(value, name);
    else if (name === 'max-frame-size') maxFrameSize = integerItem(value, name);
    else if (name === 'capabilities') capabilities = stringItem(value, name);
    else if (name === 'healthcheck') {
      if (value.type !== 'bool') throw invalid('healthcheck is not a boolean');
      healthcheck = value.value;
    } else if (name === 'engine-id') engineId = stringItem(value, name);
  }
  if (versions === undefined) throw new SpopError(SpopStatus.NO_VERSION, 'no supported-versions');
  if (maxFrameSize === undefined) throw new SpopError(SpopStatus.NO_FRAME_SIZE, 'no max-frame-size');
  if (capabilities === undefined) throw new SpopError(SpopStatus.NO_CAPABILITIES, 'no capabilities');
  if (maxFrameSize < 0n || maxFrameSize > 0xffff_ffffn)
    throw new SpopError(SpopStatus.BAD_FRAME_SIZE, `max-frame-size out of range: ${maxFrameSize}`);
  return {
    supportedVersions: versions,
    maxFrameSize: Number(maxFrameSize),
    capabilities: splitList(capabilities),
    healthcheck,
    engineId,
  };
}

/** What the agent answers in AGENT-HELLO, and what the connection then runs with. */
export interface HelloAnswer {
  readonly version: string;
  /** min(ours, HAProxy's): the bound of every later frame in both directions. */
  readonly maxFrameSize: number;
  /** Capabilities announced: the ones this agent supports. */
  readonly capabilities: readonly string[];
  /** True when both sides support pipelining (several NOTIFY frames in flight on one connection). */
  readonly pipelining: boolean;
  readonly healthcheck: boolean;
}

/** Capabilities this agent supports: pipelining only (no async, no fragmentation). */
export const AGENT_CAPABILITIES: readonly string[] = ['pipelining'];

/**
 * True when the `supported-versions` list covers SPOP 2.0: an entry "2.N" (a major version announces
 * every minor version up to N). Entries that are not "Major.Minor" are ignored.
 */
export function supportsVersion2(list: string): boolean {
  for (const v of splitList(list)) {
    const m = /^(\d{1,4})\.(\d{1,4})$/.exec(v);
    if (m && Number(m[1]) === 2) return true;
  }
  return false;
}

/**
 * Decides the AGENT-HELLO answer to `hello`. Refuses: no SPOP 2.x among the supported versions (8); a
 * max-frame-size below 256 (9).
 */
export function negotiateHello(hello: HaproxyHello, ours: { maxFrameSize: number }): HelloAnswer {
  checkFrameSize(ours.maxFrameSize);
  if (!supportsVersion2(hello.supportedVersions))
    throw new SpopError(SpopStatus.BAD_VERSION, `no supported version in "${hello.supportedVersions}"`);
  if (hello.maxFrameSize < MIN_FRAME_SIZE)
    throw new SpopError(SpopStatus.BAD_FRAME_SIZE, `max-frame-size ${hello.maxFrameSize} is below 256`);
  return {
    version: SPOP_VERSION,
    maxFrameSize: Math.min(ours.maxFrameSize, hello.maxFrameSize),
    capabilities: AGENT_CAPABILITIES,
    pipelining: hello.capabilities.includes('pipelining'),
    healthcheck: hello.healthcheck,
  };
}

/** Encodes AGENT-HELLO (version, max-frame-size as UINT32, capabilities). */
export function encodeAgentHello(
  answer: Pick<HelloAnswer, 'version' | 'maxFrameSize' | 'capabilities'>,
): Buffer {
  return encodeKvFrame(FrameType.AGENT_HELLO, [
    { name: 'version', value: { type: 'string', value: answer.version } },
    { name: 'max-frame-size', value: { type: 'uint32', value: answer.maxFrameSize } },
    { name: 'capabilities', value: { type: 'string', value: answer.capabilities.join(',') } },
  ]);
}

/** Encodes HAPROXY-HELLO (for tests and tools). */
export function encodeHaproxyHello(hello: HaproxyHello): Buffer {
  const items: SpopKv[] = [
    { name: 'supported-versions', value: { type: 'string', value: hello.supportedVersions } },
    { name: 'max-frame-size', value: { type: 'uint32', value: hello.maxFrameSize } },
    { name: 'capabilities', value: { type: 'string', value: hello.capabilities.join(',') } },
  ];
  if (hello.healthcheck) items.push({ name: 'healthcheck', value: TRUE_VALUE });
  if (hello.engineId !== undefined)
    items.push({ name: 'engine-id', value: { type: 'string', value: hello.engineId } });
  return encodeKvFrame(FrameType.HAPROXY_HELLO, items);
}

/** A DISCONNECT frame's content. */
export interface Disconnect {
  readonly status: number;
  readonly message: string;
}

/** HAProxy 2.6 refuses an AGENT-DISCONNECT whose message is longer than 255 bytes. */
export const DISCONNECT_MESSAGE_MAX = 255;

/** Encodes AGENT-DISCONNECT; the message is cut to 255 bytes, which HAProxy requires. */
export function encodeAgentDisconnect(status: number, message: string): Buffer {
  return encodeDisconnect(FrameType.AGENT_DISCONNECT, status, message);
}

/** Encodes HAPROXY-DISCONNECT (for tests and tools). */
export function encodeHaproxyDisconnect(status: number, message: string): Buffer {
  return encodeDisconnect(FrameType.HAPROXY_DISCONNECT, status, message);
}

function encodeDisconnect(type: FrameType, status: number, message: string): Buffer {
  checkedInt(status, 0, 0xffff_ffff, 'status-code');
  const text = Buffer.from(message, 'latin1').toString('latin1', 0, DISCONNECT_MESSAGE_MAX);
  return encodeKvFrame(type, [
    { name: 'status-code', value: { type: 'uint32', value: status } },
    { name: 'message', value: { type: 'string', value: text } },
  ]);
}

/**
 * Decodes a DISCONNECT frame of either side. Refuses (4) another frame type, a badly typed item, or a
 * missing status-code; a missing message is empty.
 */
export function decodeDisconnect(frame: SpopFrame): Disconnect {
  if (frame.type !== FrameType.HAPROXY_DISCONNECT && frame.type !== FrameType.AGENT_DISCONNECT)
    throw invalid(`expected a DISCONNECT frame, got frame type ${frame.type}`);
  let status: bigint | undefined;
  let message = '';
  for (const { name, value } of decodeKvList(frame.payload)) {
    if (name === 'status-code') status = integerItem(value, name);
    else if (name === 'message') message = stringItem(value, name);
  }
  if (status === undefined) throw invalid('DISCONNECT without status-code');
  if (status < 0n || status > 0xffff_ffffn) throw invalid(`status-code out of range: ${status}`);
  return { status: Number(status), message };
}

// ---------------------------------------------------------------------------------------------
// req.hdrs_bin (HAProxy configuration manual): *(<str:name><str:value>) <empty string><empty string>,
// each string a varint length and its bytes; names as HAProxy stores them (lower case for HTTP/1 and 2).

/**
 * Decodes a `req.hdrs_bin` header block into [name, value] pairs (latin1), in order, repeated names
 * kept. Refuses (4) a block cut short, without its terminating empty pair, with bytes after it, or with
 * an empty name before a non-empty value.
 */
export function decodeHeaderBlock(block: Buffer): Array<[string, string]> {
  const r = new Reader(block);
  const out: Array<[string, string]> = [];
  for (;;) {
    const name = r.string('header name');
    const value = r.string('header value');
    if (name === '') {
      if (value !== '') throw invalid('header with an empty name');
      break;
    }
    out.push([name, value]);
  }
  if (r.remaining !== 0) throw invalid(`${r.remaining} bytes after the end of the header block`);
  return out;
}

/** Encodes headers in the `req.hdrs_bin` format (for tests and tools). */
export function encodeHeaderBlock(headers: ReadonlyArray<readonly [string, string]>): Buffer {
  let size = 2;
  for (const [n, v] of headers) {
    if (n === '') throw new RangeError('empty header name');
    size += nameSize(n, 'header name') + nameSize(v, 'header value');
  }
  const buf = Buffer.allocUnsafe(size);
  let pos = 0;
  for (const [n, v] of headers) pos = writeName(buf, writeName(buf, pos, n), v);
  buf[pos++] = 0;
  buf[pos++] = 0;
  return buf;
}

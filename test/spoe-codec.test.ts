/**
 * The SPOP 2.0 codec (src/spoe/codec.ts): byte-exact vectors from doc/SPOE.txt and HAProxy's own
 * encoders, stream splitting at every offset, every malformed input mapped to its SPOE.txt status, and
 * encode/decode round trips.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  DEFAULT_MAX_FRAME_SIZE,
  decodeAck,
  decodeDisconnect,
  decodeFrame,
  decodeHaproxyHello,
  decodeHeaderBlock,
  decodeKvList,
  decodeMessages,
  decodeNotify,
  decodeVarint,
  encodeAck,
  encodeAgentDisconnect,
  encodeAgentHello,
  encodeHaproxyDisconnect,
  encodeHaproxyHello,
  encodeHeaderBlock,
  encodeNotify,
  encodeVarint,
  FrameSplitter,
  FrameType,
  negotiateHello,
  Reader,
  readValue,
  type SpopAction,
  SpopError,
  type SpopMessage,
  SpopStatus,
  type SpopValue,
  utf8String,
  valueSize,
  varintSize,
  writeValue,
} from '../src/spoe/codec.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** Asserts that `fn` throws a SpopError with `status`. */
function refuses(fn: () => unknown, status: SpopStatus, what?: string): void {
  assert.throws(
    fn,
    (e: unknown) => {
      assert.ok(e instanceof SpopError, `${what ?? ''}: not a SpopError: ${String(e)}`);
      assert.equal(e.status, status, `${what ?? ''}: ${e.message}`);
      return true;
    },
    what,
  );
}

/** Frame bytes (without the length prefix) from a type, flags, ids and payload. */
function rawFrame(type: number, flags: number, ids: string, payload = ''): Buffer {
  const f = Buffer.alloc(5);
  f[0] = type;
  f.writeUInt32BE(flags >>> 0, 1);
  return Buffer.concat([f, hex(ids), hex(payload)]);
}

function withLength(frame: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(frame.length);
  return Buffer.concat([len, frame]);
}

function decodeOne(value: Buffer): SpopValue {
  const r = new Reader(value);
  const v = readValue(r);
  assert.equal(r.remaining, 0, 'value fills its bytes');
  return v;
}

function encodeOne(v: SpopValue): Buffer {
  const buf = Buffer.alloc(valueSize(v));
  assert.equal(writeValue(buf, 0, v), buf.length);
  return buf;
}

// ---------------------------------------------------------------------------------------------

test('varints: byte-exact at every boundary of the SPOE.txt table up to 2^64 - 1', () => {
  const vectors: Array<[bigint, string]> = [
    [0n, '00'],
    [1n, '01'],
    [239n, 'ef'],
    [240n, 'f000'],
    [241n, 'f100'],
    [256n, 'f001'],
    [2287n, 'ff7f'],
    [2288n, 'f08000'],
    [2289n, 'f18000'],
    [264431n, 'ffff7f'],
    [264432n, 'f0808000'],
    [33818863n, 'ffffff7f'],
    [33818864n, 'f080808000'],
    [4328786159n, 'ffffffff7f'],
    [4328786160n, 'f08080808000'],
    [2n ** 53n - 1n, 'fff0fefefefefe7e'],
    [2n ** 63n, 'f0f1fefefefefefefe06'],
    [2n ** 64n - 1n, 'fff0fefefefefefefe0e'],
  ];
  for (const [v, h] of vectors) {
    assert.equal(encodeVarint(v).toString('hex'), h, `encode ${v}`);
    assert.equal(decodeVarint(hex(h)), v, `decode ${h}`);
    assert.equal(varintSize(v), h.length / 2);
    if (v <= BigInt(Number.MAX_SAFE_INTEGER)) {
      assert.equal(encodeVarint(Number(v)).toString('hex'), h, `encode number ${v}`);
      assert.equal(new Reader(hex(h)).varint('v'), Number(v));
    }
  }
  // Each range of the table: its first value is f0 80.. 00, its last ff ff.. 7f, in k bytes.
  let first = 240n;
  for (let k = 2; k <= 10; k++) {
    const next = first + (1n << BigInt(4 + 7 * (k - 1)));
    assert.equal(encodeVarint(first).toString('hex'), `f0${'80'.repeat(k - 2)}00`, `first of ${k} bytes`);
    if (next - 1n <= 2n ** 64n - 1n)
      assert.equal(
        encodeVarint(next - 1n).toString('hex'),
        `ff${'ff'.repeat(k - 2)}7f`,
        `last of ${k} bytes`,
      );
    assert.equal(varintSize(first), k);
    first = next;
  }
});

test('varints: a truncated, over-long or over-64-bit varint is an invalid frame (4)', () => {
  for (const h of ['', 'f0', 'ff', 'f080', 'ffffffffffff', 'f0808080808080808080'])
    refuses(() => decodeVarint(hex(h)), SpopStatus.INVALID, h);
  // 2^64 (one past the largest) and the largest 10-byte string.
  refuses(() => decodeVarint(hex('f0f1fefefefefefefe0e')), SpopStatus.INVALID, '2^64');
  refuses(() => decodeVarint(hex('ffffffffffffffffff7f')), SpopStatus.INVALID, 'max 10 bytes');
  // A safe-integer reader refuses what a bigint reader accepts.
  refuses(() => new Reader(hex('f0f1fefefefefefefe06')).varint('id'), SpopStatus.INVALID, '2^63 as id');
  assert.throws(() => encodeVarint(-1), RangeError);
  assert.throws(() => encodeVarint(2n ** 64n), RangeError);
});

test('varints: every byte string decodes to one value that encodes back to it (a bijection)', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 11 }), (bytes) => {
      const buf = Buffer.from(bytes);
      let v: bigint;
      try {
        v = decodeVarint(buf);
      } catch (e) {
        assert.ok(e instanceof SpopError && e.status === SpopStatus.INVALID);
        return;
      }
      assert.equal(encodeVarint(v).toString('hex'), buf.toString('hex'));
    }),
    { numRuns: 20_000 },
  );
  fc.assert(
    fc.property(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), (v) => {
      assert.equal(decodeVarint(encodeVarint(v)), v);
    }),
    { numRuns: 5_000 },
  );
});

test('typed data: each kind byte-exact as HAProxy encodes it', () => {
  const vectors: Array<[SpopValue, string]> = [
    [{ type: 'null' }, '00'],
    [{ type: 'bool', value: false }, '01'],
    [{ type: 'bool', value: true }, '11'],
    [{ type: 'int32', value: 5 }, '0205'],
    // Negative integers are the varint of their 64-bit two's complement (HAProxy's (uint64_t) cast).
    [{ type: 'int32', value: -1 }, '02fff0fefefefefefefe0e'],
    [{ type: 'int32', value: -(2 ** 31) }, `02${encodeVarint(2n ** 64n - 2n ** 31n).toString('hex')}`],
    [{ type: 'uint32', value: 16380 }, '03fcf006'],
    [{ type: 'uint32', value: 0xffffffff }, `03${encodeVarint(0xffffffff).toString('hex')}`],
    [{ type: 'int64', value: -2n }, `04${encodeVarint(2n ** 64n - 2n).toString('hex')}`],
    [{ type: 'int64', value: 2n ** 63n - 1n }, `04${encodeVarint(2n ** 63n - 1n).toString('hex')}`],
    [{ type: 'uint64', value: 2n ** 64n - 1n }, '05fff0fefefefefefefe0e'],
    [{ type: 'ipv4', value: '127.0.0.1' }, '067f000001'],
    [{ type: 'ipv6', value: '::1' }, `07${'00'.repeat(15)}01`],
    [{ type: 'ipv6', value: '2001:db8::8:800:200c:417a' }, '0720010db8000000000008080020 0c417a'],
    [{ type: 'ipv6', value: '::ffff:192.0.2.1' }, `07${'00'.repeat(10)}ffffc0000201`],
    [{ type: 'ipv6', value: '2001:db8:0:1:1:1:1:1' }, '0720010db8000000010001000100010001'],
    [{ type: 'ipv6', value: '2001:0:0:1::1' }, '07200100000000000100000000000000 01'],
    [{ type: 'string', value: '' }, '0800'],
    [{ type: 'string', value: 'GET' }, '0803474554'],
    [{ type: 'string', value: 'x'.repeat(240) }, `08f000${'78'.repeat(240)}`],
    [{ type: 'string', value: '\u00e9' }, '0801e9'],
    [{ type: 'binary', value: Buffer.from([0, 1, 255]) }, '090300 01ff'],
  ];
  for (const [v, h] of vectors) {
    const bytes = hex(h);
    assert.equal(encodeOne(v).toString('hex'), bytes.toString('hex'), `encode ${JSON.stringify(v, big)}`);
    assert.deepEqual(decodeOne(bytes), v, `decode ${h}`);
  }
  assert.deepEqual(decodeOne(hex('08 02 c3a9')), utf8String('\u00e9'));
  assert.deepEqual(decodeOne(hex('06 0a000001')), { type: 'ipv4', value: '10.0.0.1' });
});

function big(_k: string, v: unknown): unknown {
  return typeof v === 'bigint' ? `${v}n` : v;
}

test('typed data: malformed values are an invalid frame (4)', () => {
  const bad: Record<string, string> = {
    empty: '',
    'unknown type 10': '0a',
    'unknown type 15': '0f',
    'bool with other flags': '21',
    'null with flags': '10',
    'string with flags': '1801 41',
    'int32 truncated varint': '02f0',
    'int32 above range': `02${encodeVarint(2n ** 31n).toString('hex')}`,
    'int32 below range': `02${encodeVarint(2n ** 64n - 2n ** 31n - 1n).toString('hex')}`,
    'uint32 above range': `03${encodeVarint(2n ** 32n).toString('hex')}`,
    'uint64 over 64 bits': '05f0f1fefefefefefefe0e',
    'ipv4 short': '067f0000',
    'ipv6 short': `07${'00'.repeat(15)}`,
    'string past the end': '0805 4142',
    'string length truncated': '08f0',
    'binary past the end': '09f000 00',
    'string length huge': `08${encodeVarint(2n ** 60n).toString('hex')}`,
  };
  for (const [what, h] of Object.entries(bad))
    refuses(() => readValue(new Reader(hex(h))), SpopStatus.INVALID, what);
  assert.throws(() => valueSize({ type: 'string', value: '\u20ac' }), RangeError);
  assert.throws(() => valueSize({ type: 'ipv4', value: '1.2.3' }), TypeError);
  assert.throws(() => valueSize({ type: 'ipv6', value: '1::2::3' }), TypeError);
  assert.throws(() => valueSize({ type: 'int32', value: 2 ** 31 }), RangeError);
  assert.throws(() => valueSize({ type: 'int64', value: 2n ** 63n }), RangeError);
});

// ---------------------------------------------------------------------------------------------
// Frames

/** The HAPROXY-HELLO HAProxy 2.6 sends (pipelining and async on by default), byte by byte. */
const HAPROXY_HELLO = Buffer.concat([
  hex('01 00000001 00 00'),
  Buffer.from('\x12supported-versions\x08\x032.0', 'latin1'),
  Buffer.from('\x0emax-frame-size\x03', 'latin1'),
  hex('fcf006'), // 16380
  Buffer.from('\x0ccapabilities\x08\x10pipelining,async', 'latin1'),
  Buffer.from('\x09engine-id\x08\x04abcd', 'latin1'),
]);

test('frames: HAPROXY-HELLO as HAProxy sends it decodes, and the answer is version 2.0, min size, pipelining', () => {
  assert.equal(
    encodeHaproxyHello(decodeHaproxyHello(decodeFrame(HAPROXY_HELLO)))
      .subarray(4)
      .toString('hex'),
    HAPROXY_HELLO.toString('hex'),
  );
  const hello = decodeHaproxyHello(decodeFrame(HAPROXY_HELLO));
  assert.deepEqual(hello, {
    supportedVersions: '2.0',
    maxFrameSize: 16380,
    capabilities: ['pipelining', 'async'],
    healthcheck: false,
    engineId: 'abcd',
  });
  const answer = negotiateHello(hello, { maxFrameSize: 65_536 });
  assert.deepEqual(answer, {
    version: '2.0',
    maxFrameSize: 16380,
    capabilities: ['pipelining'],
    pipelining: true,
    healthcheck: false,
  });
  assert.equal(negotiateHello(hello, { maxFrameSize: 1024 }).maxFrameSize, 1024);
  const bytes = encodeAgentHello(answer);
  assert.equal(
    bytes.toString('hex'),
    Buffer.concat([
      hex('00000040 65 00000001 00 00'),
      Buffer.from('\x07version\x08\x032.0', 'latin1'),
      Buffer.from('\x0emax-frame-size\x03', 'latin1'),
      hex('fcf006'),
      Buffer.from('\x0ccapabilities\x08\x0apipelining', 'latin1'),
    ]).toString('hex'),
  );
  assert.equal(bytes.readUInt32BE(0), bytes.length - 4);
});

test('frames: HELLO refusals carry the SPOE.txt status', () => {
  const hello = (items: string): Buffer =>
    Buffer.concat([hex('01 00000001 00 00'), Buffer.from(items, 'latin1')]);
  const V = '\x12supported-versions\x08\x032.0';
  const M = '\x0emax-frame-size\x03\xfc\xf0\x06';
  const C = '\x0ccapabilities\x08\x0apipelining';
  const decode = (items: string) => decodeHaproxyHello(decodeFrame(hello(items)));
  refuses(() => decode(M + C), SpopStatus.NO_VERSION, 'no version');
  refuses(() => decode(V + C), SpopStatus.NO_FRAME_SIZE, 'no max-frame-size');
  refuses(() => decode(V + M), SpopStatus.NO_CAPABILITIES, 'no capabilities');
  refuses(() => decode(`${V + M}\x0ccapabilities\x03\x01`), SpopStatus.INVALID, 'capabilities not a string');
  refuses(() => decode(`\x12supported-versions\x03\x02${M}${C}`), SpopStatus.INVALID, 'version not a string');
  refuses(() => decode(`${V}\x0emax-frame-size\x08\x0216${C}`), SpopStatus.INVALID, 'size not an integer');
  refuses(() => decode(`${V + M + C}\x0bhealthcheck\x08\x00`), SpopStatus.INVALID, 'healthcheck not a bool');
  refuses(() => decode(`${V + M + C}\x00\x00`), SpopStatus.INVALID, 'empty KV name');
  refuses(() => decode(`${V + M + C}\x05`), SpopStatus.INVALID, 'KV name cut short');
  refuses(() => decode(`${V + M + C}\x03abc`), SpopStatus.INVALID, 'KV without a value');
  refuses(
    () => decode(`${V}\x0emax-frame-size\x05${encodeVarint(2n ** 32n).toString('latin1')}${C}`),
    SpopStatus.BAD_FRAME_SIZE,
    'size beyond 32 bits',
  );
  refuses(
    () => decode(`${V}\x0emax-frame-size\x04${encodeVarint(2n ** 64n - 1n).toString('latin1')}${C}`),
    SpopStatus.BAD_FRAME_SIZE,
    'negative size',
  );
  const base = decode(V + M + C);
  assert.equal(decode(`${V + M + C}\x0bhealthcheck\x11`).healthcheck, true);
  assert.equal(decode(`${V + M + C}\x07unknown\x08\x01x`).maxFrameSize, 16380, 'unknown items ignored');
  refuses(
    () => negotiateHello({ ...base, supportedVersions: '1.0' }, { maxFrameSize: 16380 }),
    SpopStatus.BAD_VERSION,
  );
  refuses(
    () => negotiateHello({ ...base, supportedVersions: '' }, { maxFrameSize: 16380 }),
    SpopStatus.BAD_VERSION,
  );
  refuses(
    () => negotiateHello({ ...base, supportedVersions: '3.0, x' }, { maxFrameSize: 16380 }),
    SpopStatus.BAD_VERSION,
  );
  assert.equal(
    negotiateHello({ ...base, supportedVersions: ' 3.0 , 2.5 ' }, { maxFrameSize: 16380 }).version,
    '2.0',
  );
  refuses(
    () => negotiateHello({ ...base, maxFrameSize: 255 }, { maxFrameSize: 16380 }),
    SpopStatus.BAD_FRAME_SIZE,
  );
  assert.equal(negotiateHello({ ...base, maxFrameSize: 256 }, { maxFrameSize: 16380 }).maxFrameSize, 256);
  const noPipe = negotiateHello({ ...base, capabilities: ['async'] }, { maxFrameSize: 16380 });
  assert.equal(noPipe.pipelining, false);
  assert.deepEqual(
    decode(`${V + M}\x0ccapabilities\x08\x22 pipelining , ,async,fragmentation`).capabilities,
    ['pipelining', 'async', 'fragmentation'],
  );
});

test('frames: header refusals (invalid, fragmented, unknown type, ids on HELLO)', () => {
  refuses(() => decodeFrame(Buffer.alloc(0)), SpopStatus.INVALID, 'empty');
  refuses(() => decodeFrame(hex('03 00000001 00')), SpopStatus.INVALID, 'no frame-id');
  refuses(() => decodeFrame(hex('03 00000001 f0 00')), SpopStatus.INVALID, 'stream-id cut short');
  refuses(() => decodeFrame(rawFrame(4, 1, '0000')), SpopStatus.INVALID, 'unknown type 4');
  refuses(() => decodeFrame(rawFrame(255, 1, '0000')), SpopStatus.INVALID, 'unknown type 255');
  refuses(
    () => decodeFrame(rawFrame(3, 0, '0101')),
    SpopStatus.FRAGMENTATION_NOT_SUPPORTED,
    'NOTIFY without FIN',
  );
  refuses(
    () => decodeFrame(rawFrame(3, 2, '0101')),
    SpopStatus.FRAGMENTATION_NOT_SUPPORTED,
    'ABORT without FIN',
  );
  refuses(
    () => decodeFrame(rawFrame(0, 1, '0101')),
    SpopStatus.FRAGMENTATION_NOT_SUPPORTED,
    'UNSET fragment',
  );
  refuses(() => decodeFrame(rawFrame(1, 1, '0100')), SpopStatus.INVALID, 'HELLO with a stream-id');
  refuses(() => decodeFrame(rawFrame(2, 1, '0001')), SpopStatus.INVALID, 'DISCONNECT with a frame-id');
  refuses(
    () => decodeFrame(rawFrame(3, 1, `${'f0f1fefefefefefefe06'}00`)),
    SpopStatus.INVALID,
    'stream-id 2^63',
  );
  const f = decodeFrame(rawFrame(3, 0xfffffffd, 'f0 00 ff7f', '00'));
  assert.deepEqual(
    { ...f, payload: f.payload.toString('hex') },
    {
      type: 3,
      flags: 0xfffffffd,
      streamId: 240,
      frameId: 2287,
      payload: '00',
    },
  );
  refuses(() => decodeNotify(decodeFrame(HAPROXY_HELLO)), SpopStatus.INVALID, 'HELLO as NOTIFY');
  refuses(
    () => decodeHaproxyHello(decodeFrame(rawFrame(3, 1, '0101'))),
    SpopStatus.INVALID,
    'NOTIFY as HELLO',
  );
  refuses(() => decodeAck(decodeFrame(rawFrame(3, 1, '0101'))), SpopStatus.INVALID, 'NOTIFY as ACK');
});

/** The NOTIFY HAProxy sends for `gatehouse-check` (built by hand from SPOE.txt 3.2.6). */
const MESSAGES: SpopMessage[] = [
  {
    name: 'gatehouse-check',
    args: [
      { name: 'method', value: { type: 'string', value: 'GET' } },
      { name: 'url', value: { type: 'string', value: '/a?b=c' } },
      { name: 'src', value: { type: 'ipv4', value: '127.0.0.1' } },
      { name: 'headers', value: { type: 'binary', value: encodeHeaderBlock([['host', 'x']]) } },
      { name: 'tls', value: { type: 'bool', value: false } },
      { name: '', value: { type: 'int64', value: -1n } },
    ],
  },
  { name: 'second', args: [] },
];

test('frames: NOTIFY messages byte-exact and decoded', () => {
  const frame = encodeNotify(7, 1, MESSAGES);
  const expected = Buffer.concat([
    hex('03 00000001 07 01'),
    Buffer.from('\x0fgatehouse-check\x06', 'latin1'),
    Buffer.from('\x06method\x08\x03GET', 'latin1'),
    Buffer.from('\x03url\x08\x06/a?b=c', 'latin1'),
    Buffer.from('\x03src\x06\x7f\x00\x00\x01', 'latin1'),
    Buffer.from('\x07headers\x09\x09\x04host\x01x\x00\x00', 'latin1'),
    Buffer.from('\x03tls\x01', 'latin1'),
    hex('00 04 fff0fefefefefefefe0e'),
    Buffer.from('\x06second\x00', 'latin1'),
  ]);
  assert.equal(frame.subarray(4).toString('hex'), expected.toString('hex'));
  const f = decodeFrame(frame.subarray(4));
  assert.equal(f.streamId, 7);
  assert.equal(f.frameId, 1);
  assert.deepEqual(decodeNotify(f), MESSAGES);
  // Cut anywhere inside, the message list is refused, never misread.
  const payload = f.payload;
  for (let i = 1; i < payload.length; i++) {
    if (i === payload.length - 8) continue; // the cut between the two messages is a valid shorter list
    refuses(() => decodeMessages(payload.subarray(0, i)), SpopStatus.INVALID, `cut at ${i}`);
  }
  assert.deepEqual(decodeMessages(payload.subarray(0, payload.length - 8)), MESSAGES.slice(0, 1));
  refuses(() => decodeMessages(hex('00 00')), SpopStatus.INVALID, 'empty message name');
  refuses(
    () => decodeMessages(Buffer.from('\x01m\x02\x01a\x00', 'latin1')),
    SpopStatus.INVALID,
    'fewer args than said',
  );
});

test('frames: ACK actions byte-exact; set-var in every scope and unset-var', () => {
  const actions: SpopAction[] = [
    { type: 'set-var', scope: 'transaction', name: 'status', value: { type: 'uint32', value: 403 } },
    { type: 'set-var', scope: 'process', name: 'p', value: { type: 'string', value: 'v' } },
    { type: 'set-var', scope: 'session', name: 's', value: { type: 'bool', value: true } },
    { type: 'set-var', scope: 'request', name: 'q', value: { type: 'null' } },
    { type: 'set-var', scope: 'response', name: 'r', value: { type: 'int64', value: 1n } },
    { type: 'unset-var', scope: 'transaction', name: 'gone' },
  ];
  const bytes = encodeAck(2288, 3, actions);
  const expected = Buffer.concat([
    hex('67 00000001 f08000 03'),
    Buffer.from('\x01\x03\x02\x06status\x03', 'latin1'),
    encodeVarint(403),
    Buffer.from('\x01\x03\x00\x01p\x08\x01v', 'latin1'),
    Buffer.from('\x01\x03\x01\x01s\x11', 'latin1'),
    Buffer.from('\x01\x03\x03\x01q\x00', 'latin1'),
    Buffer.from('\x01\x03\x04\x01r\x04\x01', 'latin1'),
    Buffer.from('\x02\x02\x02\x04gone', 'latin1'),
  ]);
  assert.equal(bytes.subarray(4).toString('hex'), expected.toString('hex'));
  assert.equal(bytes.readUInt32BE(0), expected.length);
  const f = decodeFrame(bytes.subarray(4));
  assert.deepEqual([f.type, f.streamId, f.frameId], [FrameType.ACK, 2288, 3]);
  assert.deepEqual(decodeAck(f), actions);
  refuses(
    () => decodeAck(decodeFrame(rawFrame(103, 1, '0101', '03 03 02 0161 00'))),
    SpopStatus.INVALID,
    'action 3',
  );
  refuses(
    () => decodeAck(decodeFrame(rawFrame(103, 1, '0101', '01 02 02 0161 00'))),
    SpopStatus.INVALID,
    'set-var 2 args',
  );
  refuses(
    () => decodeAck(decodeFrame(rawFrame(103, 1, '0101', '01 03 05 0161 00'))),
    SpopStatus.INVALID,
    'scope 5',
  );
  refuses(
    () => decodeAck(decodeFrame(rawFrame(103, 1, '0101', '01 03 02 0161'))),
    SpopStatus.INVALID,
    'no value',
  );
  refuses(() => encodeAck(1, 1, actions, 40), SpopStatus.TOO_BIG, 'ACK over max-frame-size');
  assert.equal(encodeAck(1, 1, actions, bytes.length).length, bytes.length - 2 /* smaller ids */);
});

test('frames: DISCONNECT both ways, message cut to 255 bytes as HAProxy requires', () => {
  const bytes = encodeAgentDisconnect(SpopStatus.BAD_VERSION, 'unsupported version');
  assert.equal(
    bytes.subarray(4).toString('hex'),
    Buffer.concat([
      hex('66 00000001 00 00'),
      Buffer.from('\x0bstatus-code\x03\x08\x07message\x08\x13unsupported version', 'latin1'),
    ]).toString('hex'),
  );
  assert.deepEqual(decodeDisconnect(decodeFrame(bytes.subarray(4))), {
    status: 8,
    message: 'unsupported version',
  });
  const long = decodeDisconnect(decodeFrame(encodeAgentDisconnect(99, 'x'.repeat(1000)).subarray(4)));
  assert.equal(long.message.length, 255);
  assert.deepEqual(decodeDisconnect(decodeFrame(encodeHaproxyDisconnect(0, 'normal').subarray(4))), {
    status: 0,
    message: 'normal',
  });
  refuses(() => decodeDisconnect(decodeFrame(rawFrame(2, 1, '0000'))), SpopStatus.INVALID, 'no status-code');
  refuses(
    () =>
      decodeDisconnect(
        decodeFrame(rawFrame(2, 1, '0000', Buffer.from('\x0bstatus-code\x08\x00', 'latin1').toString('hex'))),
      ),
    SpopStatus.INVALID,
    'status-code a string',
  );
});

// ---------------------------------------------------------------------------------------------
// The stream splitter

function splitAll(chunks: Buffer[], max = DEFAULT_MAX_FRAME_SIZE): string[] {
  const s = new FrameSplitter(max);
  const out: string[] = [];
  for (const c of chunks) s.push(c, (f) => out.push(f.toString('hex')));
  assert.equal(s.buffered, 0, 'nothing left over');
  return out;
}

test('splitter: a stream split at every byte offset, into single bytes, and many frames in one chunk', () => {
  const frames = [
    HAPROXY_HELLO,
    encodeNotify(1, 1, MESSAGES).subarray(4),
    encodeNotify(2, 1, []).subarray(4),
    Buffer.alloc(0), // a zero-length frame is passed on (decodeFrame refuses it)
    encodeAck(3, 9, []).subarray(4),
  ];
  const expected = frames.map((f) => f.toString('hex'));
  const stream = Buffer.concat(frames.map(withLength));
  assert.deepEqual(splitAll([stream]), expected, 'one chunk');
  for (let i = 0; i <= stream.length; i++)
    assert.deepEqual(splitAll([stream.subarray(0, i), stream.subarray(i)]), expected, `split at ${i}`);
  for (let i = 0; i < stream.length; i += 7)
    for (let j = i; j <= stream.length; j += 13)
      assert.deepEqual(
        splitAll([stream.subarray(0, i), stream.subarray(i, j), stream.subarray(j)]),
        expected,
      );
  assert.deepEqual(splitAll([...stream].map((b) => Buffer.from([b]))), expected, 'byte by byte');
  const many = Buffer.concat(Array.from({ length: 1000 }, (_, i) => encodeAck(i, 1, [])));
  assert.equal(splitAll([many]).length, 1000);
});

test('splitter: a length beyond max-frame-size is refused (3) before the frame arrives, and stays refused', () => {
  const s = new FrameSplitter(256);
  const ok = withLength(Buffer.alloc(256, 1));
  let n = 0;
  s.push(ok, () => n++);
  assert.equal(n, 1);
  refuses(() => s.push(hex('00000101'), () => n++), SpopStatus.TOO_BIG, 'length 257 at once');
  refuses(() => s.push(ok, () => n++), SpopStatus.TOO_BIG, 'failed for good');
  for (let cut = 1; cut < 4; cut++) {
    const p = new FrameSplitter(1000);
    p.push(hex('ffffffff').subarray(0, cut), () => n++);
    refuses(
      () => p.push(hex('ffffffff').subarray(cut), () => n++),
      SpopStatus.TOO_BIG,
      `length in pieces ${cut}`,
    );
  }
  assert.equal(n, 1);
  const resized = new FrameSplitter(16380);
  resized.maxFrameSize = 300;
  refuses(
    () => resized.push(withLength(Buffer.alloc(301)), () => n++),
    SpopStatus.TOO_BIG,
    'after negotiation',
  );
  assert.throws(() => new FrameSplitter(255), RangeError);
});

// ---------------------------------------------------------------------------------------------
// req.hdrs_bin

test('hdrs_bin: header blocks in HAProxy format decode to the header list; malformed ones are refused', () => {
  const block = Buffer.concat([
    Buffer.from('\x04host\x0bexample.com\x06accept\x03*/*\x06cookie\x01a\x06cookie\x01b', 'latin1'),
    Buffer.from('\x01x\xf0\x00', 'latin1'),
    Buffer.from('v'.repeat(240)),
    hex('0000'),
  ]);
  const headers: Array<[string, string]> = [
    ['host', 'example.com'],
    ['accept', '*/*'],
    ['cookie', 'a'],
    ['cookie', 'b'],
    ['x', 'v'.repeat(240)],
  ];
  assert.deepEqual(decodeHeaderBlock(block), headers);
  assert.equal(encodeHeaderBlock(headers).toString('hex'), block.toString('hex'));
  assert.deepEqual(decodeHeaderBlock(hex('0000')), []);
  assert.deepEqual(decodeHeaderBlock(hex('01 61 00 0000')), [['a', '']]);
  for (let i = 0; i < block.length; i++)
    refuses(() => decodeHeaderBlock(block.subarray(0, i)), SpopStatus.INVALID, `cut at ${i}`);
  refuses(() => decodeHeaderBlock(hex('0000 00')), SpopStatus.INVALID, 'bytes after the end');
  refuses(() => decodeHeaderBlock(hex('00 0161 0000')), SpopStatus.INVALID, 'empty name, a value');
  refuses(() => decodeHeaderBlock(hex('05 6162')), SpopStatus.INVALID, 'name past the end');
});

// ---------------------------------------------------------------------------------------------
// Round trips

const latin1 = fc.string({
  unit: fc.integer({ min: 0, max: 255 }).map((c) => String.fromCharCode(c)),
  maxLength: 40,
});
const ipv6Text = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => {
  const r = new Reader(Buffer.concat([Buffer.from([7]), Buffer.from(b)]));
  return (readValue(r) as { value: string }).value;
});
const value: fc.Arbitrary<SpopValue> = fc.oneof(
  fc.constant<SpopValue>({ type: 'null' }),
  fc.boolean().map((v): SpopValue => ({ type: 'bool', value: v })),
  fc.integer().map((v): SpopValue => ({ type: 'int32', value: v })),
  fc.integer({ min: 0, max: 0xffffffff }).map((v): SpopValue => ({ type: 'uint32', value: v })),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map((v): SpopValue => ({ type: 'int64', value: v })),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map((v): SpopValue => ({ type: 'uint64', value: v })),
  fc.ipV4().map((v): SpopValue => ({ type: 'ipv4', value: v })),
  ipv6Text.map((v): SpopValue => ({ type: 'ipv6', value: v })),
  latin1.map((v): SpopValue => ({ type: 'string', value: v })),
  fc.uint8Array({ maxLength: 300 }).map((v): SpopValue => ({ type: 'binary', value: Buffer.from(v) })),
);
const kv = fc.record({ name: latin1, value }).map((r) => ({ ...r }));
const message = fc
  .record({ name: latin1.filter((s) => s !== ''), args: fc.array(kv, { maxLength: 8 }) })
  .map((r) => ({ ...r }));
const scope = fc.constantFrom('process', 'session', 'transaction', 'request', 'response' as const);
const action: fc.Arbitrary<SpopAction> = fc.oneof(
  fc.record({ type: fc.constant('set-var' as const), scope, name: latin1, value }).map((r) => ({ ...r })),
  fc.record({ type: fc.constant('unset-var' as const), scope, name: latin1 }).map((r) => ({ ...r })),
);
const id = fc.oneof(fc.nat(300), fc.nat(), fc.integer({ min: 0, max: 0xffffffff }));

test('round trips: values, NOTIFY and ACK frames, header blocks (fast-check)', () => {
  fc.assert(
    fc.property(value, (v) => {
      const bytes = encodeOne(v);
      assert.deepEqual(decodeOne(bytes), v);
    }),
    { numRuns: 3000 },
  );
  fc.assert(
    fc.property(id, id, fc.array(message, { maxLength: 4 }), (s, f, messages) => {
      const frame = decodeFrame(encodeNotify(s, f, messages).subarray(4));
      assert.deepEqual([frame.streamId, frame.frameId], [s, f]);
      assert.deepEqual(decodeNotify(frame), messages);
    }),
    { numRuns: 1000 },
  );
  fc.assert(
    fc.property(id, id, fc.array(action, { maxLength: 8 }), (s, f, actions) => {
      const frame = decodeFrame(encodeAck(s, f, actions).subarray(4));
      assert.deepEqual([frame.streamId, frame.frameId], [s, f]);
      assert.deepEqual(decodeAck(frame), actions);
    }),
    { numRuns: 1000 },
  );
  fc.assert(
    fc.property(
      fc.array(
        fc.tuple(
          latin1.filter((s) => s !== ''),
          latin1,
        ),
        { maxLength: 10 },
      ),
      (headers) => {
        assert.deepEqual(decodeHeaderBlock(encodeHeaderBlock(headers)), headers);
      },
    ),
  );
  fc.assert(
    fc.property(latin1, fc.integer({ min: 256, max: 0xffffffff }), fc.array(latin1), (v, size, caps) => {
      const hello = {
        supportedVersions: v,
        maxFrameSize: size,
        capabilities: caps
          .flatMap((c) => c.split(','))
          .map((c) => c.trim())
          .filter((c) => c !== '' && !/[\s]/.test(c)),
        healthcheck: false,
        engineId: undefined,
      };
      assert.deepEqual(decodeHaproxyHello(decodeFrame(encodeHaproxyHello(hello).subarray(4))), hello);
    }),
  );
});

test('round trips: any bytes fed to the decoders give a value or a SpopError with a spec status, nothing else', () => {
  const statuses = new Set<number>(Object.values(SpopStatus));
  const decoders = [
    decodeFrame,
    decodeKvList,
    decodeMessages,
    decodeHeaderBlock,
    (b: Buffer) => decodeAck(decodeFrame(b)),
  ];
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
      const buf = Buffer.from(bytes);
      for (const d of decoders) {
        try {
          d(buf);
        } catch (e) {
          assert.ok(e instanceof SpopError, String(e));
          assert.ok(statuses.has(e.status));
        }
      }
    }),
    { numRuns: 20_000 },
  );
});

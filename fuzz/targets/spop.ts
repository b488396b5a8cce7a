/**
 * SPOP codec (src/spoe/codec.ts): byte streams, random or built from valid frames with mutations (a
 * flipped byte, an inserted or deleted byte, a cut, a changed length), fed to the frame splitter at
 * arbitrary chunk boundaries and to every decoder. Whatever the bytes, a decoder returns or throws a
 * SpopError with a status of SPOE.txt; never another exception, a frame over max-frame-size, or a hang.
 */
import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import {
  decodeAck,
  decodeDisconnect,
  decodeFrame,
  decodeHaproxyHello,
  decodeHeaderBlock,
  decodeNotify,
  encodeAck,
  encodeAgentDisconnect,
  encodeAgentHello,
  encodeHaproxyHello,
  encodeHeaderBlock,
  encodeNotify,
  FrameSplitter,
  FrameType,
  negotiateHello,
  SPOP_STATUSES,
  type SpopAction,
  SpopError,
  type SpopMessage,
  type SpopValue,
} from '../../src/spoe/codec.js';
import { defineTarget, type Invariant } from '../harness.js';

const STATUSES = new Set<number>(SPOP_STATUSES);

const name = fc.constantFrom('gatehouse-check', 'method', 'url', 'headers', 'status', '', 'x', 'é\u00ff');
const value: fc.Arbitrary<SpopValue> = fc.oneof(
  fc.constant<SpopValue>({ type: 'null' }),
  fc.boolean().map((v): SpopValue => ({ type: 'bool', value: v })),
  fc.integer().map((v): SpopValue => ({ type: 'int32', value: v })),
  fc.nat().map((v): SpopValue => ({ type: 'uint32', value: v })),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map((v): SpopValue => ({ type: 'int64', value: v })),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map((v): SpopValue => ({ type: 'uint64', value: v })),
  fc.constantFrom<SpopValue>(
    { type: 'ipv4', value: '127.0.0.1' },
    { type: 'ipv6', value: '::1' },
    { type: 'ipv6', value: '::ffff:10.0.0.1' },
  ),
  fc
    .string({ maxLength: 20 })
    .map((v): SpopValue => ({ type: 'string', value: v.replace(/[^\x00-\xff]/g, '?') })),
  fc
    .array(fc.tuple(fc.constantFrom('host', 'cookie', 'x-a'), fc.constantFrom('', 'v', 'a'.repeat(300))), {
      maxLength: 4,
    })
    .map((h): SpopValue => ({ type: 'binary', value: encodeHeaderBlock(h) })),
);
const kv = fc.tuple(name, value).map(([n, v]) => ({ name: n, value: v }));
const message = fc
  .tuple(
    name.filter((n) => n !== ''),
    fc.array(kv, { maxLength: 6 }),
  )
  .map(([n, args]): SpopMessage => ({ name: n, args }));
const scope = fc.constantFrom('process', 'session', 'transaction', 'request', 'response' as const);
const action: fc.Arbitrary<SpopAction> = fc.oneof(
  fc
    .tuple(scope, name, value)
    .map(([s, n, v]): SpopAction => ({ type: 'set-var', scope: s, name: n, value: v })),
  fc.tuple(scope, name).map(([s, n]): SpopAction => ({ type: 'unset-var', scope: s, name: n })),
);
const id = fc.oneof(fc.nat(300), fc.nat());

/** One valid frame with its length prefix. */
const frame: fc.Arbitrary<Buffer> = fc.oneof(
  fc.tuple(id, id, fc.array(message, { maxLength: 3 })).map(([s, f, m]) => encodeNotify(s, f, m)),
  fc.tuple(id, id, fc.array(action, { maxLength: 4 })).map(([s, f, a]) => encodeAck(s, f, a)),
  fc
    .tuple(
      fc.constantFrom('2.0', '1.0', ' 2.0 , 3.1', ''),
      fc.integer({ min: 0, max: 70_000 }),
      fc.constantFrom(['pipelining', 'async'], [], ['fragmentation']),
      fc.boolean(),
    )
    .map(([v, m, c, h]) =>
      encodeHaproxyHello({
        supportedVersions: v,
        maxFrameSize: m,
        capabilities: c,
        healthcheck: h,
        engineId: 'e',
      }),
    ),
  fc.constantFrom(
    encodeAgentDisconnect(4, 'invalid frame received'),
    encodeAgentHello({ version: '2.0', maxFrameSize: 16380, capabilities: ['pipelining'] }),
  ),
);

type Mutation = [kind: number, at: number, byte: number];
const mutation: fc.Arbitrary<Mutation> = fc.tuple(fc.nat(4), fc.nat(), fc.nat(255));

function mutate(stream: Buffer, mutations: readonly Mutation[]): Buffer {
  let b = stream;
  for (const [kind, at0, byte] of mutations) {
    if (b.length === 0) break;
    const at = at0 % b.length;
    if (kind === 0) {
      b = Buffer.from(b);
      b[at] = byte;
    } else if (kind === 1) b = Buffer.concat([b.subarray(0, at), Buffer.from([byte]), b.subarray(at)]);
    else if (kind === 2) b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1)]);
    else if (kind === 3) b = b.subarray(0, at);
    else {
      // A length prefix changed by a small amount, wherever a frame starts in the unmutated layout.
      b = Buffer.from(b);
      if (at + 4 <= b.length) b.writeUInt32BE((b.readUInt32BE(at) + byte - 128) >>> 0, at);
    }
  }
  return b;
}

interface Input {
  stream: Uint8Array;
  cuts: number[];
  max: number;
}

const input: fc.Arbitrary<Input> = fc
  .tuple(
    fc.oneof(
      {
        weight: 3,
        arbitrary: fc.tuple(
          fc.array(frame, { minLength: 1, maxLength: 5 }),
          fc.array(mutation, { maxLength: 3 }),
        ),
      },
      { weight: 1, arbitrary: fc.tuple(fc.constant([] as Buffer[]), fc.constant([] as Mutation[])) },
    ),
    fc.uint8Array({ maxLength: 64 }),
    fc.array(fc.nat(), { maxLength: 4 }),
    fc.constantFrom(256, 300, 1024, 16_380, 65_536),
  )
  .map(([[frames, mutations], noise, cuts, max]) => ({
    stream: frames.length > 0 ? new Uint8Array(mutate(Buffer.concat(frames), mutations)) : noise,
    cuts,
    max,
  }));

/** Runs `fn`; a SpopError with a known status is an accepted outcome, anything else breaks the invariant. */
function guarded<T>(invariant: Invariant, fn: () => T): T | SpopError {
  try {
    return fn();
  } catch (e) {
    invariant(
      'only-spop-error',
      e instanceof SpopError && STATUSES.has(e.status),
      () => `threw ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`,
    );
    return e as SpopError;
  }
}

/** Splits `stream` fed in the given chunks; the frames (hex) and the error status, if any. */
function split(stream: Buffer, cuts: readonly number[], max: number, invariant: Invariant) {
  const s = new FrameSplitter(max);
  const frames: Buffer[] = [];
  const points = [...new Set(cuts.map((c) => (stream.length === 0 ? 0 : c % (stream.length + 1))))].sort(
    (a, b) => a - b,
  );
  let from = 0;
  let error: number | undefined;
  for (const to of [...points, stream.length]) {
    const r = guarded(invariant, () =>
      s.push(stream.subarray(from, to), (f) => {
        invariant('frame-bound', f.length <= max, () => `frame of ${f.length} bytes with max ${max}`);
        frames.push(f);
      }),
    );
    from = to;
    if (r instanceof SpopError) {
      error = r.status;
      break;
    }
  }
  return { frames: frames.map((f) => f.toString('hex')), error, raw: frames };
}

export default defineTarget<Input>({
  name: 'spop',
  description:
    'FrameSplitter and the frame, HELLO, NOTIFY, ACK, DISCONNECT and hdrs_bin decoders (src/spoe/codec.ts)',
  invariants: {
    'only-spop-error': 'every decoder returns or throws a SpopError whose status is in SPOE.txt 3.5',
    'frame-bound': 'the splitter never yields a frame longer than max-frame-size',
    'split-invariant': 'a stream fed in any chunks gives the same frames and error as fed whole',
    'round-trip': 'a decoded NOTIFY or ACK encodes to a frame that decodes to the same messages or actions',
  },
  smokeRuns: 5000,
  arbitrary: input,
  encode: (i) => JSON.stringify({ stream: Buffer.from(i.stream).toString('hex'), cuts: i.cuts, max: i.max }),
  decode: (text) => {
    const o = JSON.parse(text) as { stream: string; cuts: number[]; max: number };
    return { stream: new Uint8Array(Buffer.from(o.stream, 'hex')), cuts: o.cuts, max: o.max };
  },
  run({ stream: bytes, cuts, max }, invariant) {
    const stream = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
    const whole = split(stream, [], max, invariant);
    const pieces = split(stream, cuts, max, invariant);
    invariant(
      'split-invariant',
      isDeepStrictEqual(whole.frames, pieces.frames) && whole.error === pieces.error,
      () =>
        `whole: ${whole.frames.length} frames, error ${whole.error}; in pieces: ${pieces.frames.length}, ${pieces.error}`,
    );
    for (const raw of whole.raw) {
      const f = guarded(invariant, () => decodeFrame(raw));
      if (f instanceof SpopError) continue;
      if (f.type === FrameType.HAPROXY_HELLO) {
        guarded(invariant, () => negotiateHello(decodeHaproxyHello(f), { maxFrameSize: max }));
      } else if (f.type === FrameType.NOTIFY) {
        const messages = guarded(invariant, () => decodeNotify(f));
        if (messages instanceof SpopError) continue;
        for (const m of messages) {
          for (const { value: v } of m.args) {
            if (v.type === 'binary') guarded(invariant, () => decodeHeaderBlock(v.value));
          }
        }
        const again = guarded(invariant, () =>
          decodeNotify(decodeFrame(encodeNotify(f.streamId, f.frameId, messages).subarray(4))),
        );
        invariant(
          'round-trip',
          isDeepStrictEqual(again, messages),
          () => 'NOTIFY differs after a round trip',
        );
      } else if (f.type === FrameType.ACK) {
        const actions = guarded(invariant, () => decodeAck(f));
        if (actions instanceof SpopError) continue;
        const again = guarded(invariant, () =>
          decodeAck(decodeFrame(encodeAck(f.streamId, f.frameId, actions).subarray(4))),
        );
        invariant('round-trip', isDeepStrictEqual(again, actions), () => 'ACK differs after a round trip');
      } else if (f.type === FrameType.HAPROXY_DISCONNECT || f.type === FrameType.AGENT_DISCONNECT) {
        guarded(invariant, () => decodeDisconnect(f));
      }
    }
  },
});

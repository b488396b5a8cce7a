/**
 * The SPOP agent server (src/spoe/agent.ts): protocol edge cases through a raw `net` client speaking
 * SPOP with the codec's encoders, and the agent behind real HAProxy, each series of HAPROXY_SERIES
 * (2.6 and 3.x): allow and deny, variables forwarded, 300 concurrent keep-alive requests, out-of-order
 * ACKs, a throwing decision failing closed, a graceful close under load and a restart, health checks
 * (`option spop-check`). Every test ends by checking that the agent still serves.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { type TestContext, test } from 'node:test';
import { SpoeAgent, type SpoeAgentOptions } from '../src/spoe/agent.js';
import {
  decodeAck,
  decodeDisconnect,
  decodeFrame,
  decodeHeaderBlock,
  decodeKvList,
  encodeHaproxyDisconnect,
  encodeHaproxyHello,
  encodeKvFrame,
  encodeNotify,
  FrameSplitter,
  FrameType,
  type HaproxyHello,
  type SpopAction,
  type SpopFrame,
  type SpopMessage,
  SpopStatus,
  type SpopValue,
} from '../src/spoe/codec.js';
import { tempDir } from './helpers/gateway.js';
import {
  freePort,
  HAPROXY_SERIES,
  type HaproxyCommand,
  type SpoeHaproxyPorts,
  spoeHaproxyConfig,
  startHaproxy,
} from './helpers/haproxy.js';
import { startBackend } from './helpers/proxy.js';

const HELLO: HaproxyHello = {
  supportedVersions: '2.0',
  maxFrameSize: 16380,
  capabilities: ['pipelining', 'async'],
  healthcheck: false,
  engineId: 'test-engine',
};

function str(value: string) {
  return { type: 'string', value } as const;
}

/** The `gatehouse-check` message HAProxy sends, for the raw client. */
function check(path: string, method = 'GET'): SpopMessage {
  return {
    name: 'gatehouse-check',
    args: [
      { name: 'method', value: str(method) },
      { name: 'url', value: str(path) },
    ],
  };
}

function arg(message: SpopMessage, name: string): string {
  const v = message.args.find((a) => a.name === name)?.value;
  return v?.type === 'string' ? v.value : '';
}

function setVar(name: string, value: SpopValue): SpopAction {
  return { type: 'set-var', scope: 'transaction', name, value };
}

/** The reference decision: /admin… is 403, anything else 200; `seen` echoes method and path. */
function decide(message: SpopMessage): SpopAction[] {
  const url = arg(message, 'url');
  const path = url.split('?')[0] ?? '';
  return [
    setVar('status', { type: 'uint32', value: path.startsWith('/admin') ? 403 : 200 }),
    setVar('seen', str(`${arg(message, 'method')} ${path}`)),
  ];
}

async function startAgent(t: TestContext, options: Partial<SpoeAgentOptions> = {}) {
  const agent = new SpoeAgent({ onMessage: decide, ...options });
  const { port } = await agent.listen('127.0.0.1:0');
  t.after(() => agent.close(100));
  return { agent, port };
}

/** A raw SPOP peer playing HAProxy: writes encoded frames, collects the decoded frames it gets back. */
async function rawClient(t: TestContext, port: number) {
  const socket = net.connect(port, '127.0.0.1');
  t.after(() => socket.destroy());
  socket.on('error', () => {});
  const frames: SpopFrame[] = [];
  const splitter = new FrameSplitter(1 << 24);
  let waiters: Array<() => void> = [];
  const wake = (): void => {
    const w = waiters;
    waiters = [];
    for (const f of w) f();
  };
  let closed = false;
  socket.on('data', (chunk: Buffer) => {
    splitter.push(chunk, (bytes) => frames.push(decodeFrame(Buffer.from(bytes))));
    wake();
  });
  socket.on('close', () => {
    closed = true;
    wake();
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const client = {
    socket,
    frames,
    isClosed: () => closed,
    write: (buf: Buffer) => socket.write(buf),
    /** Waits until `pred` holds (checked on every frame and on close) or fails after `ms`. */
    async until(pred: () => boolean, what: string, ms = 5000): Promise<void> {
      const deadline = Date.now() + ms;
      while (!pred()) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`timed out waiting for ${what}; got ${frames.map((f) => f.type)}`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(left, 100));
          waiters.push(() => {
            clearTimeout(timer);
            resolve();
          });
        });
      }
    },
    async closedWithin(ms = 5000): Promise<void> {
      await client.until(() => closed, 'the agent to close the connection', ms);
    },
    /** The one AGENT-DISCONNECT received, decoded. */
    disconnect() {
      const d = frames.filter((f) => f.type === FrameType.AGENT_DISCONNECT);
      assert.equal(d.length, 1, `one AGENT-DISCONNECT, got frame types ${frames.map((f) => f.type)}`);
      return decodeDisconnect(d[0]!);
    },
    async hello(hello: HaproxyHello = HELLO): Promise<SpopFrame> {
      socket.write(encodeHaproxyHello(hello));
      await client.until(() => frames.length > 0, 'AGENT-HELLO');
      return frames[0]!;
    },
    acks: () => frames.filter((f) => f.type === FrameType.ACK),
  };
  return client;
}

/** A fresh connection still gets a correct decision: the agent survived whatever the test did. */
async function assertServes(t: TestContext, port: number): Promise<void> {
  const c = await rawClient(t, port);
  assert.equal((await c.hello()).type, FrameType.AGENT_HELLO);
  c.write(encodeNotify(7, 1, [check('/admin/x')]));
  c.write(encodeNotify(7, 2, [check('/ok')]));
  await c.until(() => c.acks().length === 2, 'two ACKs');
  const [a, b] = c.acks();
  assert.deepEqual([a!.streamId, a!.frameId, b!.streamId, b!.frameId], [7, 1, 7, 2]);
  assert.deepEqual(decodeAck(a!)[0], setVar('status', { type: 'uint32', value: 403 }));
  assert.deepEqual(decodeAck(b!)[0], setVar('status', { type: 'uint32', value: 200 }));
  c.socket.destroy();
}

// ---------------------------------------------------------------------------------------------
// Raw SPOP client: the protocol edge cases

test('HELLO: AGENT-HELLO with version 2.0, pipelining, and max-frame-size negotiated down', async (t) => {
  const { port } = await startAgent(t, { maxFrameSize: 8192 });
  const c = await rawClient(t, port);
  const answer = await c.hello({ ...HELLO, maxFrameSize: 4096 });
  assert.equal(answer.type, FrameType.AGENT_HELLO);
  const kv = new Map<string, unknown>();
  for (const { name, value } of decodeKvList(answer.payload))
    kv.set(name, 'value' in value ? value.value : null);
  assert.equal(kv.get('version'), '2.0');
  assert.equal(kv.get('max-frame-size'), 4096);
  assert.equal(kv.get('capabilities'), 'pipelining');
  // Negotiated 4096 now binds HAProxy's frames: a 5000-byte NOTIFY is refused (3).
  c.write(encodeNotify(1, 1, [check(`/${'a'.repeat(5000)}`)]));
  await c.closedWithin();
  assert.equal(c.disconnect().status, SpopStatus.TOO_BIG);
  await assertServes(t, port);
});

test('HELLO refused: bad version (8), no capabilities (7), max-frame-size below 256 (9), each with AGENT-DISCONNECT and close', async (t) => {
  const { agent, port } = await startAgent(t);
  const c1 = await rawClient(t, port);
  c1.write(encodeHaproxyHello({ ...HELLO, supportedVersions: '1.0' }));
  await c1.closedWithin();
  assert.equal(c1.disconnect().status, SpopStatus.BAD_VERSION);

  // A HELLO without the capabilities item, written by hand from the codec's KV-frame encoder.
  const c2 = await rawClient(t, port);
  c2.write(
    encodeKvFrame(FrameType.HAPROXY_HELLO, [
      { name: 'supported-versions', value: str('2.0') },
      { name: 'max-frame-size', value: { type: 'uint32', value: 16380 } },
    ]),
  );
  await c2.closedWithin();
  assert.equal(c2.disconnect().status, SpopStatus.NO_CAPABILITIES);

  const c3 = await rawClient(t, port);
  c3.write(encodeHaproxyHello({ ...HELLO, maxFrameSize: 100 }));
  await c3.closedWithin();
  assert.equal(c3.disconnect().status, SpopStatus.BAD_FRAME_SIZE);

  const s = agent.stats();
  assert.equal(s.errors.SPOP_BAD_VERSION, 1);
  assert.equal(s.errors.SPOP_NO_CAPABILITIES, 1);
  assert.equal(s.errors.SPOP_BAD_FRAME_SIZE, 1);
  await assertServes(t, port);
});

test('health check HELLO: answered with AGENT-HELLO, then the connection is closed without DISCONNECT', async (t) => {
  const { agent, port } = await startAgent(t);
  const c = await rawClient(t, port);
  c.write(encodeHaproxyHello({ ...HELLO, healthcheck: true }));
  await c.closedWithin();
  assert.deepEqual(
    c.frames.map((f) => f.type),
    [FrameType.AGENT_HELLO],
  );
  assert.equal(agent.stats().connections.healthchecks, 1);
  await assertServes(t, port);
});

test('no HELLO within helloTimeout: AGENT-DISCONNECT (2, timeout) and closed', async (t) => {
  const { port } = await startAgent(t, { helloTimeout: 150 });
  const c = await rawClient(t, port);
  const started = Date.now();
  await c.closedWithin(3000);
  assert.ok(Date.now() - started >= 100, 'not before the timeout');
  assert.equal(c.disconnect().status, SpopStatus.TIMEOUT);
  await assertServes(t, port);
});

test('garbage bytes: AGENT-DISCONNECT with status 3 or 4 and close, never a crash', async (t) => {
  const { agent, port } = await startAgent(t);
  // An HTTP request: its first 4 bytes read as a length of about 1.2 GB (3, too big).
  const c1 = await rawClient(t, port);
  c1.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  await c1.closedWithin();
  assert.equal(c1.disconnect().status, SpopStatus.TOO_BIG);
  // A well-sized frame of an unknown type (4, invalid).
  const c2 = await rawClient(t, port);
  c2.write(Buffer.from([0, 0, 0, 8, 0x55, 0, 0, 0, 1, 0, 0, 0xff]));
  await c2.closedWithin();
  assert.equal(c2.disconnect().status, SpopStatus.INVALID);
  // A valid HELLO, then a NOTIFY whose message list is cut short (4).
  const c3 = await rawClient(t, port);
  await c3.hello();
  const notify = encodeNotify(1, 1, [check('/x')]);
  const cut = Buffer.concat([notify.subarray(0, notify.length - 3)]);
  cut.writeUInt32BE(cut.length - 4, 0);
  c3.write(cut);
  await c3.closedWithin();
  assert.equal(c3.disconnect().status, SpopStatus.INVALID);
  // Random bytes after a valid HELLO, in many small writes.
  const c4 = await rawClient(t, port);
  await c4.hello();
  for (let i = 0; i < 50; i++) c4.write(Buffer.from([Math.floor(Math.random() * 256), 0, 0, 0x10 + i]));
  await c4.closedWithin();
  assert.ok([SpopStatus.TOO_BIG, SpopStatus.INVALID].includes(c4.disconnect().status as 3 | 4));
  assert.equal(agent.stats().errors.SPOP_UNKNOWN, undefined, 'only typed protocol errors');
  await assertServes(t, port);
});

test('a frame over max-frame-size is refused with 3 as soon as its length is read', async (t) => {
  const { port } = await startAgent(t, { maxFrameSize: 1024 });
  const c = await rawClient(t, port);
  await c.hello();
  // Only the length prefix: the agent refuses before the body arrives.
  const head = Buffer.alloc(4);
  head.writeUInt32BE(1_000_000, 0);
  c.write(head);
  await c.closedWithin();
  assert.equal(c.disconnect().status, SpopStatus.TOO_BIG);
  await assertServes(t, port);
});

test('a fragmented frame (no FIN) is refused with 10', async (t) => {
  const { port } = await startAgent(t);
  const c = await rawClient(t, port);
  await c.hello();
  const frame = encodeNotify(1, 1, [check('/x')]);
  frame.writeUInt32BE(0, 5); // flags without FIN
  c.write(frame);
  await c.closedWithin();
  assert.equal(c.disconnect().status, SpopStatus.FRAGMENTATION_NOT_SUPPORTED);
  await assertServes(t, port);
});

test('NOTIFY before HELLO is refused (4) and never reaches the decision function', async (t) => {
  let calls = 0;
  const { port } = await startAgent(t, {
    onMessage: (m) => {
      calls++;
      return decide(m);
    },
  });
  const c = await rawClient(t, port);
  c.write(encodeNotify(1, 1, [check('/x')]));
  await c.closedWithin();
  assert.equal(c.disconnect().status, SpopStatus.INVALID);
  assert.equal(calls, 0);
  await assertServes(t, port);
});

test('HAPROXY-DISCONNECT: AGENT-DISCONNECT status 0 and close', async (t) => {
  const { port } = await startAgent(t);
  const c = await rawClient(t, port);
  await c.hello();
  c.write(encodeNotify(3, 1, [check('/a')]));
  c.write(encodeHaproxyDisconnect(0, 'stopping'));
  await c.closedWithin();
  // The sync decision was written before the DISCONNECT.
  assert.deepEqual(
    c.frames.map((f) => f.type),
    [FrameType.AGENT_HELLO, FrameType.ACK, FrameType.AGENT_DISCONNECT],
  );
  assert.equal(c.disconnect().status, SpopStatus.NORMAL);
  await assertServes(t, port);
});

test('1,000 NOTIFYs pipelined in one write get 1,000 ACKs with matching ids, out of order, each its own answer', async (t) => {
  // Half the decisions are async with random delays, so ACKs overtake each other.
  const { agent, port } = await startAgent(t, {
    onMessage: (m, ctx) =>
      ctx.frameId % 2 === 0
        ? decide(m)
        : new Promise((resolve) => setTimeout(() => resolve(decide(m)), Math.random() * 20)),
  });
  const c = await rawClient(t, port);
  await c.hello();
  const N = 1000;
  const frames: Buffer[] = [];
  for (let i = 1; i <= N; i++)
    frames.push(encodeNotify(100 + (i % 7), i, [check(i % 3 === 0 ? `/admin/${i}` : `/p/${i}`)]));
  c.write(Buffer.concat(frames));
  await c.until(() => c.acks().length === N, `${N} ACKs`, 20_000);
  const order: number[] = [];
  for (const ack of c.acks()) {
    const i = ack.frameId;
    order.push(i);
    assert.equal(ack.streamId, 100 + (i % 7), `stream-id of frame ${i}`);
    const actions = decodeAck(ack);
    const path = i % 3 === 0 ? `/admin/${i}` : `/p/${i}`;
    assert.deepEqual(actions, [
      setVar('status', { type: 'uint32', value: i % 3 === 0 ? 403 : 200 }),
      setVar('seen', str(`GET ${path}`)),
    ]);
  }
  assert.equal(new Set(order).size, N, 'each frame-id answered once');
  assert.notDeepEqual(
    order,
    [...order].sort((a, b) => a - b),
    'ACKs went out of order',
  );
  const s = agent.stats();
  assert.equal(s.notifies, N + 0);
  assert.equal(s.failClosedAcks, 0);
  await assertServes(t, port);
});

test('a frame with several messages gets one ACK with their actions concatenated in order', async (t) => {
  const { agent, port } = await startAgent(t, {
    onMessage: (m) => {
      if (m.name === 'slow') return Promise.resolve(decide(m));
      if (m.name === 'reject') return Promise.reject(new Error('store down'));
      if (m.name === 'throw') throw new Error('decision bug');
      return decide(m);
    },
  });
  const c = await rawClient(t, port);
  await c.hello();
  c.write(encodeNotify(1, 1, [check('/admin'), { ...check('/b'), name: 'slow' }]));
  await c.until(() => c.acks().length === 1, 'the ACK');
  assert.deepEqual(decodeAck(c.acks()[0]!), [...decide(check('/admin')), ...decide(check('/b'))]);
  // One failing message fails the whole frame closed; a rejection before a throw is not left unhandled
  // (an unhandled rejection would end this test process).
  c.write(
    encodeNotify(1, 2, [
      { ...check('/c'), name: 'reject' },
      { ...check('/d'), name: 'throw' },
    ]),
  );
  c.write(
    encodeNotify(1, 3, [
      { ...check('/e'), name: 'slow' },
      { ...check('/f'), name: 'reject' },
    ]),
  );
  await c.until(() => c.acks().length === 3, 'three ACKs');
  assert.deepEqual(decodeAck(c.acks()[1]!), []);
  assert.deepEqual(decodeAck(c.acks()[2]!), []);
  assert.equal(agent.stats().failClosedAcks, 2);
  await new Promise((r) => setTimeout(r, 50));
  await assertServes(t, port);
});

test('fail closed: a throwing, rejecting or non-list decision, or an ACK over max-frame-size, gets an empty ACK; the connection stays', async (t) => {
  const logged: string[] = [];
  const logger = {
    warn: (o: { reason?: string }) => logged.push(o.reason ?? 'refused'),
    debug: () => {},
    info: () => {},
    error: () => {},
  };
  const { agent, port } = await startAgent(t, {
    maxFrameSize: 1024,
    logger: logger as unknown as SpoeAgentOptions['logger'],
    onMessage: (m) => {
      const url = arg(m, 'url');
      if (url === '/throw') throw new Error('decision bug');
      if (url === '/reject') return Promise.reject(new Error('store down'));
      if (url === '/null') return null as unknown as SpopAction[];
      if (url === '/bad-thenable')
        return {
          // biome-ignore lint/suspicious/noThenProperty: a broken thenable, on purpose
          then() {
            throw new Error('broken thenable');
          },
        } as unknown as Promise<SpopAction[]>;
      if (url === '/big') return [setVar('seen', str('x'.repeat(2000)))];
      return decide(m);
    },
  });
  const c = await rawClient(t, port);
  await c.hello();
  const paths = ['/throw', '/reject', '/null', '/big', '/bad-thenable', '/fine'];
  paths.forEach((p, i) => {
    c.write(encodeNotify(9, i + 1, [check(p)]));
  });
  await c.until(() => c.acks().length === paths.length, 'six ACKs');
  const byId = new Map(c.acks().map((a) => [a.frameId, decodeAck(a)]));
  for (let i = 1; i <= 5; i++) assert.deepEqual(byId.get(i), [], `${paths[i - 1]} gets no variables`);
  assert.deepEqual(byId.get(6), decide(check('/fine')));
  assert.equal(c.isClosed(), false, 'the connection is kept');
  assert.equal(agent.stats().failClosedAcks, 5);
  assert.deepEqual(logged.sort(), [
    'ack-too-big',
    'decision-failed',
    'decision-failed',
    'decision-failed',
    'decision-not-a-list',
  ]);
  await assertServes(t, port);
});

test('a sync decision is written before any promise job runs (no await on the cached path)', async (t) => {
  let agentRef: SpoeAgent | undefined;
  const seenByMicrotask: number[] = [];
  const { agent, port } = await startAgent(t, {
    onMessage: (m) => {
      // Runs after the current synchronous work: if the agent awaited the result, its ACK would come
      // after this job, and the count would not include it yet.
      queueMicrotask(() => seenByMicrotask.push(agentRef!.stats().acks));
      return decide(m);
    },
  });
  agentRef = agent;
  const c = await rawClient(t, port);
  await c.hello();
  c.write(encodeNotify(1, 1, [check('/a')]));
  await c.until(() => c.acks().length === 1, 'the ACK');
  assert.deepEqual(seenByMicrotask, [1]);
  await assertServes(t, port);
});

test('in-flight cap: with 4 slots, 100 pipelined NOTIFYs start only 4 decisions until they finish; then all are answered', async (t) => {
  const started: number[] = [];
  const release: Array<() => void> = [];
  const { agent, port } = await startAgent(t, {
    maxInFlightPerConnection: 4,
    onMessage: (m, ctx) =>
      ctx.connectionId === 1
        ? new Promise((resolve) => {
            started.push(ctx.frameId);
            release.push(() => resolve(decide(m)));
          })
        : decide(m),
  });
  const c = await rawClient(t, port);
  await c.hello();
  const frames: Buffer[] = [];
  for (let i = 1; i <= 100; i++) frames.push(encodeNotify(1, i, [check(`/p/${i}`)]));
  c.write(Buffer.concat(frames));
  await c.until(() => started.length === 4, 'four decisions');
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(started, [1, 2, 3, 4], 'no fifth decision while four are running');
  assert.equal(agent.stats().inFlight, 4);
  assert.equal(agent.stats().queued, 96);
  // Release one at a time: each frees one slot.
  release.shift()!();
  await c.until(() => started.length === 5, 'a fifth decision');
  assert.equal(started.length, 5);
  const timer = setInterval(() => {
    while (release.length) release.shift()!();
  }, 5);
  t.after(() => clearInterval(timer));
  await c.until(() => c.acks().length === 100, '100 ACKs');
  clearInterval(timer);
  assert.deepEqual(
    c.acks().map((a) => a.frameId),
    Array.from({ length: 100 }, (_, i) => i + 1),
  );
  assert.equal(agent.stats().inFlight, 0);
  await assertServes(t, port);
});

test('a peer that stops reading: the agent stops reading too, its output buffer stays bounded', async (t) => {
  const ackValue = str('v'.repeat(2000)); // 2 kB ACKs fill the socket buffers quickly
  const { agent, port } = await startAgent(t, {
    maxInFlightPerConnection: 8,
    onMessage: (m, ctx) => (ctx.connectionId === 1 ? [setVar('seen', ackValue)] : decide(m)),
  });
  const c = await rawClient(t, port);
  await c.hello();
  c.socket.pause(); // never reads again
  const one = encodeNotify(1, 1, [check('/x')]);
  const batch = Buffer.concat(Array.from({ length: 1000 }, () => one));
  // Writes 40,000 NOTIFYs (80 MB of ACKs if all were answered), whatever the agent does.
  for (let i = 0; i < 40; i++) c.write(batch);
  const samples: number[] = [];
  let last = -1;
  for (let i = 0; i < 100; i++) {
    await new Promise((r) => setTimeout(r, 50));
    const s = agent.stats();
    samples.push(s.bufferedOut);
    if (s.notifies === last) break;
    last = s.notifies;
  }
  const s = agent.stats();
  t.diagnostic(`decided ${s.notifies} of 40000, buffered out ${s.bufferedOut} bytes, queued ${s.queued}`);
  assert.ok(s.notifies < 40_000 / 2, 'the agent stopped reading');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(agent.stats().notifies, s.notifies, 'and stays stopped');
  // Node's buffer holds at most what one read chunk (64 kB, 1,200 NOTIFYs) yields before the drain pause.
  const bound = 1300 * 2100;
  assert.ok(Math.max(...samples) < bound, `output buffer bounded: ${Math.max(...samples)} < ${bound}`);
  c.socket.destroy();
  await assertServes(t, port);
});

test('a peer that resets the connection mid-pipeline: only that connection ends, late decisions are dropped', async (t) => {
  const release: Array<() => void> = [];
  const { agent, port } = await startAgent(t, {
    onMessage: (m, ctx) =>
      ctx.connectionId === 1 ? new Promise((resolve) => release.push(() => resolve(decide(m)))) : decide(m),
  });
  const c = await rawClient(t, port);
  await c.hello();
  for (let i = 1; i <= 3; i++) c.write(encodeNotify(1, i, [check(`/p/${i}`)]));
  await c.until(() => release.length === 3, 'three decisions running');
  c.socket.resetAndDestroy();
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      if (agent.stats().connections.open === 0) {
        clearInterval(timer);
        resolve();
      }
    }, 10);
  });
  for (const r of release) r();
  await new Promise((r) => setTimeout(r, 20));
  const s = agent.stats();
  assert.equal(s.droppedAcks, 3);
  assert.equal(s.inFlight, 0);
  assert.equal(s.acks, 0);
  await assertServes(t, port);
});

test('idleTimeout: a connection without traffic and nothing in flight gets AGENT-DISCONNECT (2)', async (t) => {
  const { port } = await startAgent(t, { idleTimeout: 200 });
  const c = await rawClient(t, port);
  await c.hello();
  await c.closedWithin(3000);
  assert.equal(c.disconnect().status, SpopStatus.TIMEOUT);
  await assertServes(t, port);
});

test('close(grace): running decisions finish and their ACKs go out before AGENT-DISCONNECT (0, "agent shutting down")', async (t) => {
  const agent = new SpoeAgent({
    onMessage: (m) => new Promise((resolve) => setTimeout(() => resolve(decide(m)), 150)),
    maxInFlightPerConnection: 2,
  });
  const { port } = await agent.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => agent.close(0));
  const c = await rawClient(t, port);
  await c.hello();
  for (let i = 1; i <= 5; i++) c.write(encodeNotify(1, i, [check(`/p/${i}`)]));
  await c.until(
    () => agent.stats().inFlight === 2 && agent.stats().queued === 3,
    'two running, three queued',
  );
  const closing = agent.close(5000);
  await c.closedWithin();
  await closing;
  assert.deepEqual(
    c.frames.map((f) => f.type),
    [FrameType.AGENT_HELLO, ...Array(5).fill(FrameType.ACK), FrameType.AGENT_DISCONNECT],
  );
  assert.deepEqual(
    c
      .acks()
      .map((a) => a.frameId)
      .sort(),
    [1, 2, 3, 4, 5],
  );
  for (const a of c.acks()) assert.equal(decodeAck(a).length, 2);
  assert.deepEqual(c.disconnect(), { status: 0, message: 'agent shutting down' });
  // Closed means closed: a new connection is refused.
  await assert.rejects(
    new Promise((resolve, reject) =>
      net.connect(port, '127.0.0.1').on('connect', resolve).on('error', reject),
    ),
    { code: 'ECONNREFUSED' },
  );
  // A new agent on the same port serves.
  const again = new SpoeAgent({ onMessage: decide });
  await again.listen({ host: '127.0.0.1', port });
  t.after(() => again.close(0));
  await assertServes(t, port);
});

test('close(grace): a decision that outlives the grace is dropped, the connection still gets its DISCONNECT', async (t) => {
  const agent = new SpoeAgent({ onMessage: () => new Promise<SpopAction[]>(() => {}) });
  const { port } = await agent.listen('127.0.0.1:0');
  const c = await rawClient(t, port);
  await c.hello();
  c.write(encodeNotify(1, 1, [check('/hang')]));
  await c.until(() => agent.stats().inFlight === 1, 'the decision running');
  const started = Date.now();
  await agent.close(200);
  assert.ok(Date.now() - started < 2500, 'close is bounded by grace plus linger');
  await c.closedWithin();
  assert.equal(c.acks().length, 0);
  assert.equal(c.disconnect().status, 0);
});

// ---------------------------------------------------------------------------------------------
// Behind real HAProxy, each series

async function behindHaproxy(
  t: TestContext,
  haproxyCommand: HaproxyCommand,
  options: Partial<SpoeAgentOptions> = {},
  config: Pick<SpoeHaproxyPorts, 'healthCheck'> = {},
) {
  t.diagnostic(`HAProxy ${haproxyCommand.version}`);
  const { agent, port } = await startAgent(t, options);
  const backend = await startBackend(t, 'echo');
  const dir = tempDir('gatehouse-spoe-agent-');
  t.after(() => dir.remove());
  const frontendPort = await freePort();
  const spoeFile = dir.file('spoe.cfg');
  const { haproxyCfg, spoeCfg } = spoeHaproxyConfig({
    frontendPort,
    agentPort: port,
    backendPort: backend.port,
    spoeFile,
    agentRetries: 0,
    processingTimeout: '1s',
    ...config,
  });
  dir.write('spoe.cfg', spoeCfg);
  const haproxy = await startHaproxy(t, haproxyCommand, dir.write('haproxy.cfg', haproxyCfg), frontendPort);
  return { agent, agentPort: port, backend, haproxy, base: `http://127.0.0.1:${frontendPort}` };
}

interface Answer {
  status: number;
  seen: string | undefined;
  url: string | undefined;
}

/** A GET through HAProxy; `seen` is the X-Gh-Seen header the backend received. */
function get(url: string, agent: http.Agent | false = false): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { agent }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        text += d;
      });
      res.on('end', () => {
        if (res.statusCode !== 200)
          return resolve({ status: res.statusCode ?? 0, seen: undefined, url: undefined });
        const echo = JSON.parse(text) as { headers: Record<string, string>; url: string };
        resolve({ status: 200, seen: echo.headers['x-gh-seen'], url: echo.url });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** What a correct answer to GET `path` looks like. */
function expected(path: string): Answer {
  return path.startsWith('/admin')
    ? { status: 403, seen: undefined, url: undefined }
    : { status: 200, seen: `GET ${path}`, url: path };
}

async function withOutput<T>(haproxy: { output(): string }, t: TestContext, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    t.diagnostic(haproxy.output());
    throw e;
  }
}

for (const series of HAPROXY_SERIES) {
  test(`real ${series.name}: the decision from the decoded arguments is enforced (403 for /admin), variables reach the backend`, async (t) => {
    const seenHeaders: Array<[string, string]>[] = [];
    const { backend, haproxy, base } = await behindHaproxy(t, series.find(), {
      onMessage: (m) => {
        const h = m.args.find((a) => a.name === 'headers')?.value;
        if (h?.type === 'binary') seenHeaders.push(decodeHeaderBlock(h.value));
        return decide(m);
      },
    });
    await withOutput(haproxy, t, async () => {
      assert.deepEqual(await get(`${base}/app/page?q=1`), {
        status: 200,
        seen: 'GET /app/page',
        url: '/app/page?q=1',
      });
      assert.deepEqual(await get(`${base}/admin/users`), expected('/admin/users'));
      assert.equal(
        backend.seen.some((s) => s.url.startsWith('/admin')),
        false,
        'a refused request never reaches the backend',
      );
      assert.ok(
        seenHeaders.length >= 2 && seenHeaders[0]!.some(([k]) => k === 'host'),
        'req.hdrs_bin decoded',
      );
    });
  });

  test(`real ${series.name}: 300 concurrent requests over keep-alive clients each get their own right answer`, async (t) => {
    const { agent, backend, haproxy, base } = await behindHaproxy(t, series.find());
    await withOutput(haproxy, t, async () => {
      const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 60 });
      t.after(() => keepAlive.destroy());
      const paths = Array.from({ length: 300 }, (_, i) => (i % 4 === 0 ? `/admin/${i}` : `/r/${i}`));
      const answers = await Promise.all(paths.map((p) => get(`${base}${p}`, keepAlive)));
      answers.forEach((a, i) => {
        assert.deepEqual(a, expected(paths[i]!), paths[i]);
      });
      assert.equal(backend.seen.length, 225);
      const s = agent.stats();
      t.diagnostic(`${s.notifies} NOTIFYs over ${s.connections.total} agent connections`);
      assert.equal(s.notifies, 300);
      assert.equal(s.failClosedAcks, 0);
      assert.deepEqual(s.errors, {});
    });
  });

  test(`real ${series.name}: async decisions with random delays (ACKs out of order) still answer each request correctly`, async (t) => {
    let maxInFlight = 0;
    let inFlight = 0;
    const { agent, haproxy, base } = await behindHaproxy(t, series.find(), {
      onMessage: (m) => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        return new Promise((resolve) =>
          setTimeout(() => {
            inFlight--;
            resolve(decide(m));
          }, Math.random() * 30),
        );
      },
    });
    await withOutput(haproxy, t, async () => {
      const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 40 });
      t.after(() => keepAlive.destroy());
      const paths = Array.from({ length: 200 }, (_, i) => (i % 5 === 0 ? `/admin/${i}` : `/slow/${i}`));
      const answers = await Promise.all(paths.map((p) => get(`${base}${p}`, keepAlive)));
      answers.forEach((a, i) => {
        assert.deepEqual(a, expected(paths[i]!), paths[i]);
      });
      assert.ok(maxInFlight > 1, 'decisions overlapped');
      assert.equal(agent.stats().failClosedAcks, 0);
    });
  });

  test(`real ${series.name}: a decision that throws fails closed (500) and the agent keeps serving`, async (t) => {
    const { agent, backend, haproxy, base } = await behindHaproxy(t, series.find(), {
      onMessage: (m) => {
        const url = arg(m, 'url');
        if (url.startsWith('/throw')) throw new Error('decision bug');
        if (url.startsWith('/reject')) return Promise.reject(new Error('store down'));
        return decide(m);
      },
    });
    await withOutput(haproxy, t, async () => {
      assert.equal((await get(`${base}/throw/1`)).status, 500);
      assert.equal((await get(`${base}/reject/1`)).status, 500);
      assert.deepEqual(await get(`${base}/next`), expected('/next'));
      const mixed = Array.from({ length: 60 }, (_, i) => (i % 3 === 0 ? `/throw/${i}` : `/ok/${i}`));
      const answers = await Promise.all(mixed.map((p) => get(`${base}${p}`)));
      answers.forEach((a, i) => {
        const p = mixed[i]!;
        if (p.startsWith('/throw')) assert.equal(a.status, 500, p);
        else assert.deepEqual(a, expected(p), p);
      });
      assert.equal(
        backend.seen.some((s) => s.url.startsWith('/throw') || s.url.startsWith('/reject')),
        false,
      );
      const s = agent.stats();
      assert.equal(s.failClosedAcks, 22);
      assert.deepEqual(s.errors, {}, 'no connection was refused');
    });
  });

  test(`real ${series.name}: the agent closed gracefully mid-load answers correctly or not at all (500), then a restarted agent serves`, async (t) => {
    const delay = (m: SpopMessage) =>
      new Promise<SpopAction[]>((r) => setTimeout(() => r(decide(m)), Math.random() * 40));
    const { agent, agentPort, haproxy, base } = await behindHaproxy(t, series.find(), { onMessage: delay });
    await withOutput(haproxy, t, async () => {
      const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 40 });
      t.after(() => keepAlive.destroy());
      const paths = Array.from({ length: 250 }, (_, i) => (i % 4 === 0 ? `/admin/${i}` : `/load/${i}`));
      // Requests go out 2 ms apart; the close starts once the agent has decided 100 of them.
      const started = Date.now();
      const pending = paths.map(async (p, i) => {
        await new Promise((r) => setTimeout(r, 2 * i));
        return get(`${base}${p}`, keepAlive);
      });
      while (agent.stats().notifies < 100) await new Promise((r) => setTimeout(r, 5));
      const inFlightAtClose = agent.stats().inFlight;
      const closed = agent.close(2000);
      const answers = await Promise.all(pending);
      await closed;
      t.diagnostic(`load and close took ${Date.now() - started} ms`);
      let right = 0;
      let refused = 0;
      answers.forEach((a, i) => {
        const p = paths[i]!;
        if (a.status === 500) refused++;
        else {
          assert.deepEqual(a, expected(p), `${p}: a wrong decision`);
          right++;
        }
      });
      const s = agent.stats();
      t.diagnostic(
        `${right} answered correctly, ${refused} refused; agent decided ${s.notifies}, dropped ${s.droppedAcks}`,
      );
      t.diagnostic(`${inFlightAtClose} decisions were running when the close began`);
      assert.ok(inFlightAtClose > 0, 'the close began with decisions running');
      assert.equal(right, s.notifies, 'every request the agent received was answered, and answered right');
      assert.equal(s.droppedAcks, 0, 'nothing received before the close was lost');

      // A new agent on the same port: HAProxy reconnects and serves again.
      const again = new SpoeAgent({ onMessage: decide });
      await again.listen({ host: '127.0.0.1', port: agentPort });
      t.after(() => again.close(100));
      const deadline = Date.now() + 10_000;
      while ((await get(`${base}/probe`)).status !== 200) {
        assert.ok(Date.now() < deadline, 'HAProxy reconnects to the restarted agent');
        await new Promise((r) => setTimeout(r, 100));
      }
      const after = await Promise.all(
        Array.from({ length: 30 }, (_, i) => (i % 2 ? `/admin/a${i}` : `/back/${i}`)).map((p) =>
          get(`${base}${p}`, keepAlive).then((a) => assert.deepEqual(a, expected(p), p)),
        ),
      );
      assert.equal(after.length, 30);
    });
  });

  test(`real ${series.name}: option spop-check health checks are answered, a stopped agent is marked DOWN and refused at once, a restarted one UP`, async (t) => {
    const { agent, agentPort, haproxy, base } = await behindHaproxy(
      t,
      series.find(),
      { onMessage: decide },
      { healthCheck: true },
    );
    await withOutput(haproxy, t, async () => {
      const until = async (what: string, ok: () => boolean | Promise<boolean>): Promise<void> => {
        const deadline = Date.now() + 10_000;
        while (!(await ok())) {
          assert.ok(Date.now() < deadline, what);
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      // A check is a HELLO with healthcheck set: the agent answers AGENT-HELLO and the server stays up.
      await until('three health checks answered', () => agent.stats().connections.healthchecks >= 3);
      assert.deepEqual(await get(`${base}/app/1`), expected('/app/1'));
      assert.deepEqual(await get(`${base}/admin/1`), expected('/admin/1'));
      assert.doesNotMatch(haproxy.output(), /gatehouse-agents\/agent is DOWN/);
      assert.deepEqual(agent.stats().errors, {}, 'a health check is no protocol error');

      // The checks see the agent go: the server is marked DOWN, and requests are refused at once.
      await agent.close(100);
      await until('HAProxy marks the stopped agent DOWN', () =>
        /gatehouse-agents\/agent is DOWN/.test(haproxy.output()),
      );
      const started = Date.now();
      assert.equal((await get(`${base}/app/2`)).status, 500, 'fail closed');
      assert.ok(Date.now() - started < 900, 'refused before the 1s processing timeout');

      // A new agent on the same port: the checks bring the server back and requests are decided again.
      const again = new SpoeAgent({ onMessage: decide });
      await again.listen({ host: '127.0.0.1', port: agentPort });
      t.after(() => again.close(100));
      await until('HAProxy marks the restarted agent UP', () =>
        /gatehouse-agents\/agent is UP/.test(haproxy.output()),
      );
      assert.deepEqual(await get(`${base}/back/1`), expected('/back/1'));
      assert.ok(again.stats().connections.healthchecks >= 1);
    });
  });
}

/**
 * The SPOP codec against real HAProxy, each series of HAPROXY_SERIES (Debian bookworm's 2.6, and 3.x):
 * HAProxy runs a mode-http frontend with the
 * SPOE filter and sends `gatehouse-check` to a small agent this test runs on the codec; the agent's ACK
 * sets `txn.gatehouse.status` and `txn.gatehouse.seen`, which HAProxy's rules enforce (403) and forward
 * (X-Gh-Seen) to an echoing backend. A series missing is a failure that says how to install it.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { type TestContext, test } from 'node:test';
import {
  decodeFrame,
  decodeHaproxyHello,
  decodeHeaderBlock,
  decodeNotify,
  encodeAck,
  encodeAgentDisconnect,
  encodeAgentHello,
  FrameSplitter,
  FrameType,
  type HaproxyHello,
  negotiateHello,
  type SpopAction,
  SpopError,
  SpopStatus,
  type SpopValue,
} from '../src/spoe/codec.js';
import { tempDir } from './helpers/gateway.js';
import {
  freePort,
  HAPROXY_SERIES,
  type HaproxyCommand,
  spoeHaproxyConfig,
  startHaproxy,
  versionAtLeast,
} from './helpers/haproxy.js';
import { listenUntilEnd } from './helpers/listen.js';
import { startBackend } from './helpers/proxy.js';

/** What the test agent saw of one NOTIFY. */
interface Notified {
  conn: number;
  streamId: number;
  frameId: number;
  args: Record<string, SpopValue>;
  headers: Array<[string, string]>;
}

/** A tiny SPOE agent on the codec: HELLO, NOTIFY → ACK (possibly delayed, so ACKs go out of order). */
async function startAgent(t: TestContext) {
  const hellos: HaproxyHello[] = [];
  const notified: Notified[] = [];
  const errors: string[] = [];
  const disconnects: string[] = [];
  let connections = 0;
  let maxInFlight = 0;
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    const conn = ++connections;
    const splitter = new FrameSplitter(65_536);
    let maxFrameSize = 65_536;
    let inFlight = 0;
    const fail = (e: unknown): void => {
      const status = e instanceof SpopError ? e.status : SpopStatus.UNKNOWN;
      errors.push(`conn ${conn}: ${String(e)}`);
      socket.end(encodeAgentDisconnect(status, e instanceof Error ? e.message : 'error'));
    };
    socket.on('data', (chunk: Buffer) => {
      try {
        splitter.push(chunk, (bytes) => {
          const frame = decodeFrame(bytes);
          if (frame.type === FrameType.HAPROXY_HELLO) {
            const hello = decodeHaproxyHello(frame);
            hellos.push(hello);
            const answer = negotiateHello(hello, { maxFrameSize: 65_536 });
            maxFrameSize = answer.maxFrameSize;
            splitter.maxFrameSize = answer.maxFrameSize;
            socket.write(encodeAgentHello(answer));
            if (hello.healthcheck) socket.end();
          } else if (frame.type === FrameType.HAPROXY_DISCONNECT) {
            disconnects.push(`conn ${conn}`);
            socket.end(encodeAgentDisconnect(SpopStatus.NORMAL, 'bye'));
          } else if (frame.type === FrameType.NOTIFY) {
            const messages = decodeNotify(frame);
            const msg = messages.find((m) => m.name === 'gatehouse-check');
            assert.ok(msg, 'gatehouse-check message');
            const args: Record<string, SpopValue> = {};
            for (const a of msg.args) args[a.name] = a.value;
            const hb = args.headers;
            const headers = hb?.type === 'binary' ? decodeHeaderBlock(hb.value) : [];
            notified.push({ conn, streamId: frame.streamId, frameId: frame.frameId, args, headers });
            const url = args.url?.type === 'string' ? args.url.value : '';
            const method = args.method?.type === 'string' ? args.method.value : '';
            const path = url.split('?')[0] ?? '';
            if (path === '/disconnect') {
              socket.end(encodeAgentDisconnect(SpopStatus.UNKNOWN, 'refused on purpose'));
              return;
            }
            const actions: SpopAction[] = [
              {
                type: 'set-var',
                scope: 'transaction',
                name: 'status',
                value: { type: 'uint32', value: path.startsWith('/deny') ? 403 : 200 },
              },
              {
                type: 'set-var',
                scope: 'transaction',
                name: 'seen',
                value: { type: 'string', value: `${method} ${path} ${headers.length}` },
              },
            ];
            const ack = encodeAck(frame.streamId, frame.frameId, actions, maxFrameSize);
            // A delay that depends on the path makes later NOTIFYs overtake earlier ones.
            const delay = Number(/^\/r\/(\d+)/.exec(path)?.[1] ?? 0) % 15;
            inFlight++;
            maxInFlight = Math.max(maxInFlight, inFlight);
            setTimeout(() => {
              inFlight--;
              if (!socket.destroyed) socket.write(ack);
            }, delay);
          } else throw new SpopError(SpopStatus.INVALID, `unexpected frame type ${frame.type}`);
        });
      } catch (e) {
        fail(e);
      }
    });
  });
  const port = await listenUntilEnd(t, server);
  return {
    port,
    hellos,
    notified,
    errors,
    disconnects,
    connections: () => connections,
    maxInFlight: () => maxInFlight,
  };
}

async function setUp(t: TestContext, haproxyCommand: HaproxyCommand) {
  t.diagnostic(`HAProxy ${haproxyCommand.version}`);
  const agent = await startAgent(t);
  const backend = await startBackend(t, 'echo');
  const dir = tempDir('gatehouse-haproxy-');
  t.after(() => dir.remove());
  const frontendPort = await freePort();
  const spoeFile = dir.file('spoe.cfg');
  const { haproxyCfg, spoeCfg } = spoeHaproxyConfig({
    frontendPort,
    agentPort: agent.port,
    backendPort: backend.port,
    spoeFile,
  });
  dir.write('spoe.cfg', spoeCfg);
  const cfgFile = dir.write('haproxy.cfg', haproxyCfg);
  const haproxy = await startHaproxy(t, haproxyCommand, cfgFile, frontendPort);
  return {
    agent,
    backend,
    haproxy,
    base: `http://127.0.0.1:${frontendPort}`,
    version: haproxyCommand.version,
  };
}

/** A GET on a fresh connection (node:http, so that a Host header can be set, which fetch forbids). */
function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { headers, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        text += d;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

for (const series of HAPROXY_SERIES) {
  test(`real ${series.name}: HELLO, NOTIFY arguments, hdrs_bin, ACK variables enforced (allow and 403)`, async (t) => {
    const { agent, backend, haproxy, base, version } = await setUp(t, series.find());
    try {
      const ok = await get(`${base}/hello/world?x=1`, { 'X-One': '1', 'x-two': 'b', Host: 'app.example' });
      assert.equal(ok.status, 200, ok.text);
      const seen = JSON.parse(ok.text) as { headers: Record<string, string>; url: string };
      assert.equal(seen.url, '/hello/world?x=1');
      const n = agent.notified.at(-1)!;
      assert.equal(seen.headers['x-gh-seen'], `GET /hello/world ${n.headers.length}`);

      // What HAProxy announced.
      const hello = agent.hellos[0]!;
      t.diagnostic(`HAPROXY-HELLO: ${JSON.stringify(hello)}`);
      assert.equal(hello.supportedVersions, '2.0');
      assert.equal(hello.maxFrameSize, 16380, 'tune.bufsize (16384) less the 4-byte length');
      // 2.6 and 3.0 offer async as well; the SPOE of 3.1 and newer (a multiplexer) offers pipelining
      // only. The agent takes pipelining either way and never async.
      assert.deepEqual(
        hello.capabilities,
        versionAtLeast(version, 3, 1) ? ['pipelining'] : ['pipelining', 'async'],
      );
      assert.equal(hello.healthcheck, false);
      assert.match(hello.engineId ?? '', /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      assert.ok(
        agent.hellos.every((h) => h.engineId === hello.engineId),
        'one engine-id for every connection of the engine',
      );

      // What the NOTIFY carried, each argument with the type HAProxy gives it.
      t.diagnostic(
        `NOTIFY args: ${JSON.stringify(n.args, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v))}`,
      );
      assert.deepEqual(n.args.method, { type: 'string', value: 'GET' });
      assert.deepEqual(n.args.url, { type: 'string', value: '/hello/world?x=1' });
      assert.deepEqual(n.args.host, { type: 'string', value: 'app.example' });
      assert.deepEqual(n.args.src, { type: 'ipv4', value: '127.0.0.1' });
      assert.deepEqual(n.args.tls, { type: 'bool', value: false });
      assert.equal(n.args.headers?.type, 'binary');
      // req.hdrs_bin: every request header, in order, names in lower case, values as sent.
      t.diagnostic(`hdrs_bin: ${JSON.stringify(n.headers)}`);
      const names = n.headers.map(([k]) => k);
      // Exactly the headers as sent, in order, names lower-cased; HAProxy drops the hop-by-hop
      // `Connection: close` the client sent.
      assert.deepEqual(n.headers, [
        ['x-one', '1'],
        ['x-two', 'b'],
        ['host', 'app.example'],
      ]);
      for (const k of names) assert.equal(k, k.toLowerCase());
      assert.equal(n.frameId > 0, true, 'NOTIFY carries a frame-id');

      const denied = await get(`${base}/deny/this`);
      assert.equal(denied.status, 403);
      assert.equal(
        backend.seen.filter((s) => s.url.startsWith('/deny')).length,
        0,
        'a 403 never reaches the backend',
      );
      assert.deepEqual(agent.errors, []);
    } catch (e) {
      t.diagnostic(haproxy.output());
      throw e;
    }
  });

  test(`real ${series.name}: 200 concurrent requests each get their own answer, ACKs out of order on pipelined connections`, async (t) => {
    const { agent, backend, haproxy, base } = await setUp(t, series.find());
    try {
      const N = 200;
      const results = await Promise.all(
        Array.from({ length: N }, (_, i) =>
          get(`${base}/r/${i}${i % 10 === 0 ? '/deny' : ''}`, { 'x-req': String(i) }).then((r) => ({
            i,
            ...r,
          })),
        ),
      );
      for (const r of results) {
        assert.equal(r.status, 200, `request ${r.i}: ${r.text}`);
        const seen = JSON.parse(r.text) as { headers: Record<string, string>; url: string };
        const path = `/r/${r.i}${r.i % 10 === 0 ? '/deny' : ''}`;
        assert.equal(seen.url, path);
        assert.equal(seen.headers['x-req'], String(r.i));
        assert.match(seen.headers['x-gh-seen'] ?? '', new RegExp(`^GET ${path} \\d+$`), `request ${r.i}`);
      }
      const denied = await Promise.all(Array.from({ length: 20 }, (_, i) => get(`${base}/deny/${i}`)));
      assert.deepEqual(
        denied.map((d) => d.status),
        Array(20).fill(403),
      );
      assert.equal(backend.seen.length, N);
      // Every NOTIFY had its own (stream-id, frame-id) and the ACKs, sent out of order, matched them.
      const ids = new Set(agent.notified.map((n) => `${n.conn}/${n.streamId}/${n.frameId}`));
      assert.equal(ids.size, agent.notified.length);
      t.diagnostic(
        `${agent.notified.length} NOTIFY frames over ${agent.connections()} agent connections; at most ${agent.maxInFlight()} in flight at once`,
      );
      // HAProxy 2.6 and 3.0 open another agent connection whenever no idle one is free, so a burst of N
      // requests may use up to N connections; pipelining still puts several NOTIFY frames on one of them.
      assert.ok(agent.connections() <= N + 20, 'at most one agent connection per request in flight');
      assert.ok(agent.maxInFlight() > 1, 'several NOTIFY frames in flight at once (pipelining)');
      assert.deepEqual(agent.errors, []);
    } catch (e) {
      t.diagnostic(haproxy.output());
      throw e;
    }
  });

  test(`real ${series.name}: an agent that answers AGENT-DISCONNECT instead of ACK leaves no decision, so the request is refused`, async (t) => {
    const { agent, backend, haproxy, base } = await setUp(t, series.find());
    try {
      const r = await get(`${base}/disconnect`);
      assert.equal(r.status, 500, 'fail closed');
      assert.equal(backend.seen.length, 0);
      // HAProxy reconnects for the next request.
      const ok = await get(`${base}/after`);
      assert.equal(ok.status, 200);
      assert.ok(agent.connections() >= 2);
    } catch (e) {
      t.diagnostic(haproxy.output());
      throw e;
    }
  });
}

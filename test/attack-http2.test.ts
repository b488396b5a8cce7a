/**
 * HTTP/2 attacks on the HTTPS listener, from node:http2 clients and from a raw frame writer that
 * ignores what the gateway advertises: rapid reset (CVE-2023-44487), stream limits, header-list size,
 * CONTINUATION floods (CVE-2024-27316, CVE-2024-27983), SETTINGS and PING floods, WINDOW_UPDATE games,
 * streams and header blocks that never end, idle connections, GOAWAY from the client. Every attack must
 * end in a bounded time, reach no upstream it should not, and leave the gateway serving.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { type TestContext, test } from 'node:test';
import { selfSigned, tempDir } from './helpers/gateway.js';
import {
  CODE,
  connectRaw,
  FLAG,
  FRAME,
  frame,
  goaway,
  headerBlock,
  type RawH2,
  requestFields,
  rst,
  SETTING,
  settings,
  windowUpdate,
} from './helpers/h2raw.js';
import { config, seenOf, startBackend, startGateway, type TestGateway, waitFor } from './helpers/proxy.js';

/** A backend that counts requests; `/hold*` never answers, `/endless` streams until cut, others answer. */
async function backend(t: TestContext): Promise<{ url: string; paths: string[]; open: () => number }> {
  const paths: string[] = [];
  let open = 0;
  const server = http.createServer((req, res) => {
    paths.push(req.url ?? '');
    open++;
    res.on('close', () => open--);
    req.on('error', () => {});
    if (req.url?.startsWith('/hold')) return;
    if (req.url === '/endless') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(64 * 1024, 1);
      const pump = (): void => {
        while (!res.destroyed && res.write(chunk));
      };
      res.on('drain', pump);
      pump();
      return;
    }
    req.resume();
    req.on('end', () => res.end(`ok ${req.url}`));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, paths, open: () => open };
}

const cert = selfSigned();

/** A gateway with an HTTP/2 listener; `routes` and `top` (identity, policies) replace the public route. */
async function h2Gateway(
  t: TestContext,
  backendUrl: string,
  server: Record<string, unknown> = {},
  more: { routes?: unknown[]; top?: Record<string, unknown> } = {},
): Promise<TestGateway> {
  const dir = tempDir();
  t.after(() => dir.remove());
  dir.write('cert.pem', cert.cert);
  dir.write('key.pem', cert.key);
  return startGateway(
    t,
    {
      ...config(
        { app: { servers: [{ url: backendUrl }] } },
        more.routes ?? [{ name: 'all', upstream: 'app' }],
        {
          listeners: [
            {
              name: 'web',
              bind: '127.0.0.1:0',
              tls: { certificates: [{ cert: 'file:cert.pem', key: 'file:key.pem' }] },
            },
          ],
          server,
        },
      ),
      ...more.top,
    },
    { baseDir: dir.dir },
  );
}

/** One GET over a new node:http2 session; resolves with the status. */
async function h2get(gw: TestGateway, path = '/ok'): Promise<number> {
  const session = http2.connect(gw.url(), { rejectUnauthorized: false });
  try {
    return await new Promise<number>((resolve, reject) => {
      session.on('error', reject);
      const s = session.request({ ':path': path }, { signal: AbortSignal.timeout(10_000) });
      s.on('response', (h) => resolve(Number(h[':status'])));
      s.on('error', reject);
      s.resume();
    });
  } finally {
    session.close();
  }
}

async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

async function raw(t: TestContext, gw: TestGateway, initial?: Array<[number, number]>): Promise<RawH2> {
  const c = await connectRaw(gw.port(), initial);
  t.after(() => c.close());
  // The server's SETTINGS first (and our ACK of them), as a real client would wait for.
  await waitFor(() => c.frames.some((f) => f.type === FRAME.SETTINGS), 'the server SETTINGS');
  return c;
}

function serverSettings(c: RawH2): Map<number, number> {
  const m = new Map<number, number>();
  const f = c.frames.find((x) => x.type === FRAME.SETTINGS && (x.flags & FLAG.ACK) === 0);
  for (let i = 0; f !== undefined && i + 6 <= f.payload.length; i += 6)
    m.set(f.payload.readUInt16BE(i), f.payload.readUInt32BE(i + 2));
  return m;
}

test('stream limit: SETTINGS_MAX_CONCURRENT_STREAMS is advertised (100 by default), and a client that opens more loses the connection', async (t) => {
  const b = await backend(t);
  const gw = await h2Gateway(t, b.url);
  const c = await raw(t, gw);
  assert.equal(serverSettings(c).get(SETTING.MAX_CONCURRENT_STREAMS), 100);
  assert.equal(serverSettings(c).get(SETTING.MAX_HEADER_LIST_SIZE), 16 * 1024);

  const small = await h2Gateway(t, b.url, { http2: { maxConcurrentStreams: 10 } });
  const node = http2.connect(small.url(), { rejectUnauthorized: false });
  t.after(() => node.destroy());
  await new Promise<void>((resolve) => node.once('remoteSettings', () => resolve()));
  assert.equal(node.remoteSettings.maxConcurrentStreams, 10);
  node.close();

  // 12 streams that hold (no END_STREAM), ignoring the limit of 10.
  const attacker = await raw(t, small);
  const streams: Buffer[] = [];
  for (let i = 0; i < 12; i++)
    streams.push(
      frame(FRAME.HEADERS, FLAG.END_HEADERS, 1 + 2 * i, headerBlock(requestFields('/hold', 'POST'))),
    );
  attacker.write(...streams);
  await within(attacker.closed, 10_000, 'the connection to be closed');
  assert.ok(
    b.paths.filter((p) => p === '/hold').length <= 10,
    `${b.paths.length} streams reached the upstream`,
  );
  assert.equal(await h2get(small), 200);
});

test('rapid reset (CVE-2023-44487): a client cancelling streams as fast as it opens them gets GOAWAY ENHANCE_YOUR_CALM after server.http2.maxResets', async (t) => {
  const b = await backend(t);
  const gw = await h2Gateway(t, b.url);
  const c = await raw(t, gw);
  // HEADERS and RST_STREAM(CANCEL) pairs; nghttp2 alone allows 1000 of them and then 33/s.
  let sent = 0;
  for (let i = 0; i < 600 && !c.isClosed(); i++) {
    const id = 1 + 2 * i;
    c.write(
      frame(FRAME.HEADERS, FLAG.END_STREAM | FLAG.END_HEADERS, id, headerBlock(requestFields(`/hold/${i}`))),
      rst(id, CODE.CANCEL),
    );
    sent++;
    if (i % 20 === 19) await new Promise((r) => setTimeout(r, 2));
  }
  await within(c.closed, 10_000, 'the connection to be closed');
  // The gateway's own count answers ENHANCE_YOUR_CALM. When the event loop lags behind the socket,
  // Node's streams of the cancelled requests are still open when more arrive, so Node's own bound
  // (maxSessionRejectedStreams, set in listeners.ts) may close the connection first, with
  // INTERNAL_ERROR; either way the flood ends the connection.
  const code = c.goaway()?.code;
  assert.ok(
    code === CODE.ENHANCE_YOUR_CALM || code === CODE.INTERNAL_ERROR,
    `GOAWAY code ${code}, expected ENHANCE_YOUR_CALM (or Node's INTERNAL_ERROR)`,
  );
  assert.ok(sent > 100);
  // What got through before the bound: at most maxResets and the streams of one read.
  assert.ok(gw.access.length <= 200, `${gw.access.length} streams were handled`);
  assert.ok(gw.access.every((e) => e.status === 499 && e.error === 'GH_CLIENT_CLOSED'));
  await waitFor(() => b.open() === 0, 'every upstream request of the cancelled streams to be closed');

  assert.equal(await h2get(gw), 200);
});

test('rapid reset: cancellations spread out under server.http2.maxResets per resetWindow are allowed', async (t) => {
  const b = await backend(t);
  const gw = await h2Gateway(t, b.url, { http2: { maxResets: 5, resetWindow: '500ms' } });
  const session = http2.connect(gw.url(), { rejectUnauthorized: false });
  t.after(() => session.destroy());
  let goaway: number | undefined;
  session.on('goaway', (code) => {
    goaway = code;
  });
  session.on('error', () => {});
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 4; i++) {
      const s = session.request({ ':path': `/hold/${round}/${i}` });
      s.on('error', () => {});
      await waitFor(() => b.paths.includes(`/hold/${round}/${i}`), 'the stream to reach the upstream');
      s.close(http2.constants.NGHTTP2_CANCEL);
    }
    await new Promise((r) => setTimeout(r, 600));
  }
  assert.equal(goaway, undefined);
  const ok = await new Promise<number>((resolve, reject) => {
    const s = session.request({ ':path': '/ok' });
    s.on('response', (h) => resolve(Number(h[':status'])));
    s.on('error', reject);
    s.resume();
  });
  assert.equal(ok, 200);
});

test('header list size: a header block over server.maxHeaderSize is refused as a stream error, and the connection goes on serving', async (t) => {
  const b = await backend(t);
  const gw = await h2Gateway(t, b.url);
  const c = await raw(t, gw);
  const block = headerBlock(requestFields('/big', 'GET', [['x-big', 'a'.repeat(20_000)]]));
  c.write(
    frame(FRAME.HEADERS, FLAG.END_STREAM, 1, block.subarray(0, 16_000)),
    frame(FRAME.CONTINUATION, FLAG.END_HEADERS, 1, block.subarray(16_000)),
  );
  await waitFor(() => c.resets().has(1), 'the oversized stream to be reset');
  assert.equal(c.resets().get(1), CODE.ENHANCE_YOUR_CALM);
  c.write(frame(FRAME.HEADERS, FLAG.END_STREAM | FLAG.END_HEADERS, 3, headerBlock(requestFields('/after'))));
  await waitFor(() => c.answered().has(3), 'the next stream to be answered');
  assert.ok(!b.paths.includes('/big'));
  assert.equal(c.isClosed(), false);
});

test('CONTINUATION flood (CVE-2024-27316, CVE-2024-27983): endless CONTINUATION frames close the connection, nothing reaches the upstream', async (t) => {
  const b = await backend(t);
  const gw = await h2Gateway(t, b.url);
  for (const payload of ['fields', 'empty'] as const) {
    const c = await raw(t, gw);
    const parts = [frame(FRAME.HEADERS, 0, 1, headerBlock(requestFields('/cont')))];
    for (let i = 0; i < 10_000; i++)
      parts.push(
        frame(FRAME.CONTINUATION, 0, 1, payload === 'fields' ? headerBlock([[`x-${i}`, 'v']]) : undefined),
      );
    c.write(...parts);
    await within(c.closed, 10_000, `the ${payload} CONTINUATION flood to be cut`);
  }
  assert.equal(b.paths.length, 0);
  assert.equal(await h2get(gw), 200);
});

test('SETTINGS and PING floods from a client that does not read the ACKs close its connection', async (t) => {
  const b = await backend(t);
  const gw = await h2Gateway(t, b.url);
  for (const kind of ['SETTINGS', 'PING'] as const) {
    const c = await raw(t, gw);
    c.socket.pause();
    const one =
      kind === 'SETTINGS' ? settings([[SETTING.ENABLE_PUSH, 0]]) : frame(FRAME.PING, 0, 0, Buffer.alloc(8));
    const batch = Buffer.concat(Array(2000).fill(one));
    for (let i = 0; i < 100 && !c.isClosed(); i++) {
      c.write(batch);
      await new Promise((r) => setTimeout(r, 5));
    }
    c.socket.resume();
    await within(c.closed, 10_000, `the ${kind} flood to be cut`);
  }
  assert.equal(await h2get(gw), 200);
});

test('WINDOW_UPDATE games: overflow and zero increments are connection errors; a zero window is a slow read cut after the idle timeout', async (t) => {
  const b = await backend(t);
  const gw = await h2Gateway(t, b.url, { clientIdleTimeout: '1s' });
  const overflow = await raw(t, gw);
  overflow.write(windowUpdate(0, 0x7fffffff));
  await within(overflow.closed, 10_000, 'the overflowing window to close the connection');
  assert.ok(overflow.goaway() !== undefined);
  const zero = await raw(t, gw);
  zero.write(windowUpdate(0, 0));
  await within(zero.closed, 10_000, 'the zero increment to close the connection');

  // A window of 0: the response cannot move, the upstream would be held for ever.
  const stuck = await raw(t, gw, [[SETTING.INITIAL_WINDOW_SIZE, 0]]);
  stuck.write(
    frame(FRAME.HEADERS, FLAG.END_STREAM | FLAG.END_HEADERS, 1, headerBlock(requestFields('/endless'))),
  );
  await waitFor(() => b.paths.includes('/endless'), 'the download to start');
  await waitFor(() => stuck.resets().has(1), 'the stalled stream to be reset', 15_000);
  await waitFor(() => b.open() === 0, 'the upstream response to be aborted');
  await waitFor(() => gw.access.some((e) => e.path === '/endless'), 'the access log entry');
  assert.equal(gw.access.find((e) => e.path === '/endless')!.error, 'GH_CLIENT_TIMEOUT');
  assert.ok(
    gw.runtime.upstreams
      .get('app')!
      .status()
      .servers.every((s) => s.active === 0),
  );
  assert.equal(await h2get(gw), 200);
});

test('a stream that never sends END_STREAM is answered 408 after the idle timeout; its connection stays usable', async (t) => {
  const b = await backend(t);
  const gw = await h2Gateway(t, b.url, { clientIdleTimeout: '1s' });
  const c = await raw(t, gw);
  c.write(frame(FRAME.HEADERS, FLAG.END_HEADERS, 1, headerBlock(requestFields('/hold-body', 'POST'))));
  await waitFor(() => c.answered().has(1), 'an answer to the stalled stream', 15_000);
  await waitFor(() => b.open() === 0, 'the upstream request to be aborted');
  assert.equal(gw.access.find((e) => e.path === '/hold-body')?.status, 408);
  c.write(frame(FRAME.HEADERS, FLAG.END_STREAM | FLAG.END_HEADERS, 3, headerBlock(requestFields('/next'))));
  await waitFor(() => c.answered().has(3), 'the next stream to be answered');
});

test('a header block that never ends (HEADERS without END_HEADERS, then silence) is closed after keepAliveTimeout', async (t) => {
  const b = await backend(t);
  const gw = await h2Gateway(t, b.url, { keepAliveTimeout: '1s' });
  const c = await raw(t, gw);
  c.write(frame(FRAME.HEADERS, 0, 1, headerBlock(requestFields('/stalled-headers'))));
  await within(c.closed, 10_000, 'the stalled header block to be cut');
  assert.equal(b.paths.length, 0);
});

test('an idle HTTP/2 connection gets GOAWAY NO_ERROR after keepAliveTimeout, while one with a long request in flight keeps it', async (t) => {
  const b = await backend(t);
  const gw = await h2Gateway(t, b.url, { keepAliveTimeout: '1s' });
  const idle = await raw(t, gw);
  await within(idle.closed, 10_000, 'the idle connection to be closed');
  assert.equal(idle.goaway()?.code, CODE.NO_ERROR);

  // GOAWAY ends the connection for new streams only: a request in flight still gets its answer.
  const slow = await raw(t, gw);
  slow.write(
    frame(FRAME.HEADERS, FLAG.END_STREAM | FLAG.END_HEADERS, 1, headerBlock(requestFields('/hold'))),
  );
  await waitFor(() => slow.goaway() !== undefined, 'GOAWAY on the quiet connection', 10_000);
  assert.equal(slow.isClosed(), false, 'the stream in flight keeps its connection');
  assert.equal(slow.goaway()?.lastStream, 1);
});

test('GOAWAY from the client: streams in flight are answered, the connection closes, the gateway serves on', async (t) => {
  const b = await backend(t);
  const gw = await h2Gateway(t, b.url);
  const c = await raw(t, gw);
  c.write(
    frame(FRAME.HEADERS, FLAG.END_STREAM | FLAG.END_HEADERS, 1, headerBlock(requestFields('/in-flight'))),
    goaway(0, CODE.NO_ERROR),
  );
  await waitFor(() => c.answered().has(1), 'the stream in flight to be answered');
  c.write(goaway(1, CODE.PROTOCOL_ERROR));
  await within(c.closed, 10_000, 'the connection to close');
  assert.equal(await h2get(gw), 200);
});

test('a refusal by the access stage while the request body is still arriving sets no Connection header on HTTP/2 (a process warning) and ends the stream with RST_STREAM NO_ERROR after the 401', async (t) => {
  const b = await backend(t);
  const warnings: string[] = [];
  const onWarning = (w: Error): void => {
    warnings.push(w.message);
  };
  process.on('warning', onWarning);
  t.after(() => process.off('warning', onWarning));
  const gw = await h2Gateway(
    t,
    b.url,
    {},
    {
      routes: [{ name: 'private', upstream: 'app', policy: 'p' }],
      top: {
        identity: { apiKeys: [{ id: 'k', hash: `sha256:${'0'.repeat(64)}`, subject: 's' }] },
        policies: { p: { allow: [{ name: 'keys', authMethod: ['apiKey'] }] } },
      },
    },
  );
  const c = await raw(t, gw);
  c.write(
    frame(FRAME.HEADERS, FLAG.END_HEADERS, 1, headerBlock(requestFields('/upload', 'POST'))),
    frame(FRAME.DATA, 0, 1, Buffer.alloc(100, 1)),
  );
  await waitFor(() => c.resets().has(1), 'RST_STREAM on the refused stream', 10_000);
  assert.ok(c.answered().has(1), 'the 401 came first');
  assert.equal(c.resets().get(1), CODE.NO_ERROR);
  assert.equal(b.paths.length, 0);
  await waitFor(() => gw.access.length === 1, 'the access log line');
  assert.deepEqual([gw.access[0]!.status, gw.access[0]!.error], [401, 'GH_UNAUTHENTICATED']);
  assert.deepEqual(warnings, [], 'no connection-specific header was set on an HTTP/2 response');
});

test('cookie crumbs (RFC 9113 §8.2.3) reach the HTTP/1.1 upstream as one Cookie header, as the gateway read them', async (t) => {
  const b = await startBackend(t, 'echo');
  const gw = await h2Gateway(t, b.url);
  const session = http2.connect(gw.url(), { rejectUnauthorized: false });
  t.after(() => session.close());
  const body = await new Promise<Buffer>((resolve, reject) => {
    const s = session.request({ ':path': '/crumbs', cookie: ['a=1', 'b=2', 'c=3'] });
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => resolve(Buffer.concat(chunks)));
    s.on('error', reject);
  });
  const seen = seenOf(body);
  const cookies = seen.rawHeaders.filter(
    (_, i) => i % 2 === 0 && seen.rawHeaders[i]!.toLowerCase() === 'cookie',
  );
  assert.equal(cookies.length, 1, `one Cookie line: ${JSON.stringify(seen.rawHeaders)}`);
  assert.equal(seen.headers.cookie, 'a=1; b=2; c=3');
});

test('HTTP/2: after every attack above, the gateway still serves HTTP/2 and HTTP/1.1 on the same port', async (t) => {
  const b = await backend(t);
  const gw = await h2Gateway(t, b.url, { http2: { maxResets: 10 }, clientIdleTimeout: '1s' });
  // A burst of the attacks at once, then normal traffic.
  const flood = await raw(t, gw);
  const parts = [frame(FRAME.HEADERS, 0, 1, headerBlock(requestFields('/x')))];
  for (let i = 0; i < 5000; i++) parts.push(frame(FRAME.CONTINUATION, 0, 1));
  flood.write(...parts);
  const resets = http2.connect(gw.url(), { rejectUnauthorized: false });
  resets.on('error', () => {});
  t.after(() => resets.destroy());
  for (let i = 0; i < 50 && !resets.destroyed; i++) {
    const s = resets.request({ ':path': '/hold' });
    s.on('error', () => {});
    s.close(http2.constants.NGHTTP2_CANCEL);
  }
  await within(flood.closed, 10_000, 'the flood to be cut');
  await waitFor(() => resets.destroyed, 'the resetting client to be cut', 10_000);
  const session = http2.connect(gw.url(), { rejectUnauthorized: false });
  t.after(() => session.destroy());
  const statuses = await Promise.all(
    Array.from(
      { length: 20 },
      (_, i) =>
        new Promise<number>((resolve, reject) => {
          const s = session.request({ ':path': `/ok/${i}` });
          s.on('response', (h) => resolve(Number(h[':status'])));
          s.on('error', reject);
          s.resume();
        }),
    ),
  );
  assert.deepEqual(statuses, Array(20).fill(200));
  const h1 = await new Promise<number>((resolve, reject) => {
    const req = https.request(`${gw.url()}/h1`, { rejectUnauthorized: false, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
  assert.equal(h1, 200);
  await waitFor(() => b.open() === 0, 'every upstream request to be closed');
});

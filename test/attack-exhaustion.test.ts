/**
 * Resource exhaustion: clients that hold the gateway's sockets, buffers and upstream connections by
 * being slow (slowloris headers and bodies, slow reads, stalled TLS handshakes), by being big (header
 * blocks, chunk extensions, bodies) or by being many (connections, pipelined requests). Each attack must
 * end in a bounded time with the right status, release what it held upstream, and leave the gateway
 * serving. Waits are bounds, never timing assertions.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import path from 'node:path';
import { type TestContext, test } from 'node:test';
import tls from 'node:tls';
import { ROOT, selfSigned, tempDir } from './helpers/gateway.js';
import { config, request, startBackend, startGateway, type TestGateway, waitFor } from './helpers/proxy.js';

/** What a raw-socket backend saw of one request: did its body end, was it cut, did its response end. */
interface Held {
  url: string;
  bodyBytes: number;
  bodyEnded: boolean;
  closed: boolean;
  responseFinished: boolean;
}

/**
 * A backend that answers according to `mode`: `wait-body` answers after the whole body, `stream-now`
 * answers at once and keeps streaming until the client goes away, `endless` sends 64 KiB chunks as fast
 * as the gateway takes them.
 */
async function holdingBackend(
  t: TestContext,
  mode: 'wait-body' | 'stream-now' | 'endless',
): Promise<{ url: string; held: Held[] }> {
  const held: Held[] = [];
  const server = http.createServer((req, res) => {
    if (req.url?.startsWith('/still-serving')) {
      req.resume();
      res.end('ok');
      return;
    }
    const h: Held = {
      url: req.url ?? '',
      bodyBytes: 0,
      bodyEnded: false,
      closed: false,
      responseFinished: false,
    };
    held.push(h);
    req.on('data', (c: Buffer) => {
      h.bodyBytes += c.length;
    });
    req.on('end', () => {
      h.bodyEnded = true;
      if (mode === 'wait-body') res.end('done');
    });
    req.on('error', () => {});
    res.on('finish', () => {
      h.responseFinished = true;
    });
    res.on('close', () => {
      h.closed = true;
    });
    if (mode === 'stream-now') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('started\n');
    } else if (mode === 'endless') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(64 * 1024, 7);
      const pump = (): void => {
        while (!res.destroyed && res.write(chunk));
      };
      res.on('drain', pump);
      pump();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, held };
}

/** A raw TCP connection that collects what the gateway sends until it closes. */
function rawConnection(port: number): Promise<{
  socket: net.Socket;
  received: () => string;
  closed: Promise<void>;
}> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let text = '';
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      text += d;
    });
    socket.on('error', () => {});
    const closed = new Promise<void>((r) => socket.on('close', () => r()));
    socket.once('connect', () => resolve({ socket, received: () => text, closed }));
    socket.once('error', reject);
  });
}

/** Resolves when `p` settles within `ms`; rejects with `what` otherwise (a bound, not a timing claim). */
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

function leasesReleased(gw: TestGateway, upstream = 'app'): boolean {
  return gw.runtime.upstreams
    .get(upstream)!
    .status()
    .servers.every((s) => s.active === 0);
}

async function servesNormally(gw: TestGateway): Promise<void> {
  const r = await request(gw.url(), { path: '/still-serving' });
  assert.equal(r.status, 200);
}

test("slow body: a stalled upload gets 408 GH_CLIENT_TIMEOUT after the route's idle timeout, the upstream request aborted and its lease released", async (t) => {
  const b = await holdingBackend(t, 'wait-body');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [
      { name: 'upload', match: { path: '/upload' }, upstream: 'app', timeouts: { idle: '1s' } },
      { name: 'all', upstream: 'app' },
    ]),
  );
  const c = await rawConnection(gw.port());
  c.socket.write(
    'POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n0123456789',
  );
  // server.clientIdleTimeout is 60s by default: the route's shorter idle timeout bounds the client too.
  await within(c.closed, 15_000, 'the stalled upload being answered and closed');
  const answer = c.received();
  assert.match(answer, /^HTTP\/1\.1 408 /);
  assert.match(answer, /GH_CLIENT_TIMEOUT/);
  assert.match(answer, /connection: close/i);
  await waitFor(() => b.held.length === 1 && b.held[0]!.closed, 'the upstream request to be aborted');
  assert.equal(b.held[0]!.bodyEnded, false, 'the upstream never saw a complete body');
  assert.equal(b.held[0]!.bodyBytes, 10);
  await waitFor(() => leasesReleased(gw), 'the lease to be released');
  await waitFor(() => gw.access.some((e) => e.path === '/upload'), 'the access log entry');
  const entry = gw.access.find((e) => e.path === '/upload')!;
  assert.equal(entry.status, 408);
  assert.equal(entry.error, 'GH_CLIENT_TIMEOUT');
  await servesNormally(gw);
});

test('slow body: server.clientIdleTimeout bounds a stalled chunked upload when the route allows a longer silence', async (t) => {
  const b = await holdingBackend(t, 'wait-body');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app' }], {
      server: { clientIdleTimeout: '1s' },
    }),
  );
  const c = await rawConnection(gw.port());
  c.socket.write(
    'POST /chunked HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n',
  );
  // A client that trickles data is making progress and is not cut.
  for (let i = 0; i < 4; i++) {
    await new Promise((r) => setTimeout(r, 400));
    c.socket.write('1\r\nx\r\n');
  }
  assert.equal(c.received(), '', 'no answer while the body makes progress');
  await within(c.closed, 15_000, 'the stalled upload being answered and closed');
  assert.match(c.received(), /^HTTP\/1\.1 408 /);
  await waitFor(() => b.held[0]?.closed === true, 'the upstream request to be aborted');
  assert.equal(b.held[0]!.bodyBytes, 9);
  await waitFor(() => leasesReleased(gw), 'the lease to be released');
  await servesNormally(gw);
});

test('slow body after the response started: client and upstream are both aborted', async (t) => {
  const b = await holdingBackend(t, 'stream-now');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app' }], {
      server: { clientIdleTimeout: '1s' },
    }),
  );
  const c = await rawConnection(gw.port());
  c.socket.write('POST /duplex HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\nabc');
  await waitFor(() => c.received().includes('started'), 'the response to start');
  await within(c.closed, 15_000, 'the connection to be cut');
  assert.match(c.received(), /^HTTP\/1\.1 200 /);
  assert.doesNotMatch(c.received(), /\r\n0\r\n\r\n$/, 'the response was not ended as if complete');
  await waitFor(() => b.held[0]?.closed === true, 'the upstream exchange to be aborted');
  await waitFor(() => leasesReleased(gw), 'the lease to be released');
  await waitFor(() => gw.access.some((e) => e.path === '/duplex'), 'the access log entry');
  assert.equal(gw.access.find((e) => e.path === '/duplex')!.error, 'GH_CLIENT_TIMEOUT');
  await servesNormally(gw);
});

test('slow read: a client that stops reading a response is cut after the idle timeout and the upstream released', async (t) => {
  const b = await holdingBackend(t, 'endless');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app' }], {
      server: { clientIdleTimeout: '1s' },
    }),
  );
  const c = await rawConnection(gw.port());
  c.socket.write('GET /download HTTP/1.1\r\nHost: app.test\r\n\r\n');
  await waitFor(() => c.received().length > 0, 'the response to start');
  c.socket.pause(); // the kernel buffers fill, then the gateway's, then the gateway waits for 'drain'
  await waitFor(() => b.held[0]?.closed === true, 'the upstream response to be aborted', 20_000);
  assert.equal(b.held[0]!.responseFinished, false);
  await waitFor(() => leasesReleased(gw), 'the lease to be released');
  await waitFor(() => gw.access.some((e) => e.path === '/download'), 'the access log entry');
  assert.equal(gw.access.find((e) => e.path === '/download')!.error, 'GH_CLIENT_TIMEOUT');
  c.socket.resume();
  await within(c.closed, 15_000, 'the client connection to be closed');
  await servesNormally(gw);
});

test('slow body on HTTP/2: a stream that never sends END_STREAM gets 408 and its upstream request is aborted', async (t) => {
  const cert = selfSigned();
  const dir = tempDir();
  t.after(() => dir.remove());
  dir.write('cert.pem', cert.cert);
  dir.write('key.pem', cert.key);
  const b = await holdingBackend(t, 'wait-body');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app' }], {
      listeners: [
        {
          name: 'web',
          bind: '127.0.0.1:0',
          tls: { certificates: [{ cert: 'file:cert.pem', key: 'file:key.pem' }] },
        },
      ],
      server: { clientIdleTimeout: '1s' },
    }),
    { baseDir: dir.dir },
  );
  const session = http2.connect(gw.url(), { rejectUnauthorized: false });
  t.after(() => session.destroy());
  session.on('error', () => {});
  const status = await within(
    new Promise<number>((resolve, reject) => {
      const stream = session.request({ ':method': 'POST', ':path': '/h2-upload' });
      stream.on('response', (h) => resolve(Number(h[':status'])));
      stream.on('error', reject);
      stream.write('partial');
    }),
    15_000,
    'an answer to the stalled stream',
  );
  assert.equal(status, 408);
  await waitFor(() => b.held[0]?.closed === true, 'the upstream request to be aborted');
  assert.equal(b.held[0]!.bodyEnded, false);
  await waitFor(() => leasesReleased(gw), 'the lease to be released');
  // The connection itself is still good.
  const next = await new Promise<number>((resolve, reject) => {
    const stream = session.request({ ':path': '/after' });
    stream.on('response', (h) => resolve(Number(h[':status'])));
    stream.on('error', reject);
    stream.resume();
  });
  assert.equal(next, 200);
});

test('slowloris headers: headers dribbled past server.headersTimeout get 408 promptly (connectionsCheckingInterval)', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app' }], {
      server: { headersTimeout: '1s' },
    }),
  );
  const c = await rawConnection(gw.port());
  c.socket.write('GET / HTTP/1.1\r\nHost: app.test\r\n');
  const drip = setInterval(() => {
    if (!c.socket.destroyed) c.socket.write('X-Drip: 1\r\n');
  }, 200);
  t.after(() => clearInterval(drip));
  // Node checks headersTimeout every 30 s by default, so without a shorter interval this takes ~30 s.
  await within(c.closed, 10_000, 'the slowloris connection to be answered and closed');
  clearInterval(drip);
  assert.match(c.received(), /^HTTP\/1\.1 408 /);
  assert.equal(b.seen.length, 0);

  // A connection that never sends a byte is bounded by the same timeout.
  const silent = await rawConnection(gw.port());
  await within(silent.closed, 10_000, 'the silent connection to be closed');
  await servesNormally(gw);
});

test('TLS handshake stall: a client that never completes the handshake is disconnected after server.tlsHandshakeTimeout', async (t) => {
  const cert = selfSigned();
  const dir = tempDir();
  t.after(() => dir.remove());
  dir.write('cert.pem', cert.cert);
  dir.write('key.pem', cert.key);
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app' }], {
      listeners: [
        {
          name: 'web',
          bind: '127.0.0.1:0',
          tls: { certificates: [{ cert: 'file:cert.pem', key: 'file:key.pem' }] },
        },
      ],
      server: { tlsHandshakeTimeout: '1s' },
    }),
    { baseDir: dir.dir },
  );
  // Silent after connecting, and stalled in the middle of a ClientHello (Node's default waits 120 s).
  const silent = await rawConnection(gw.port());
  const partial = await rawConnection(gw.port());
  partial.socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]));
  await within(Promise.all([silent.closed, partial.closed]), 10_000, 'the stalled handshakes to be cut');
  const r = await new Promise<number>((resolve, reject) => {
    const req = http2.connect(gw.url(), { rejectUnauthorized: false });
    req.on('error', reject);
    const s = req.request({ ':path': '/' });
    s.on('response', (h) => {
      resolve(Number(h[':status']));
      req.close();
    });
    s.on('error', reject);
    s.resume();
  });
  assert.equal(r, 200);
});

test('TLS renegotiation: client-initiated renegotiation does not get past the limit, and the gateway keeps serving', async (t) => {
  const cert = selfSigned();
  const dir = tempDir();
  t.after(() => dir.remove());
  dir.write('cert.pem', cert.cert);
  dir.write('key.pem', cert.key);
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app' }], {
      listeners: [
        {
          name: 'web',
          bind: '127.0.0.1:0',
          tls: { certificates: [{ cert: 'file:cert.pem', key: 'file:key.pem' }], maxVersion: 'TLSv1.2' },
        },
      ],
    }),
    { baseDir: dir.dir },
  );
  const socket = tls.connect({
    host: '127.0.0.1',
    port: gw.port(),
    rejectUnauthorized: false,
    ALPNProtocols: ['http/1.1'],
  });
  socket.on('error', () => {});
  const closed = new Promise<void>((r) => socket.on('close', () => r()));
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  assert.equal(socket.getProtocol(), 'TLSv1.2');
  // Node allows 3 client renegotiations per 10 minutes (tls.CLIENT_RENEG_LIMIT), then drops the client.
  let accepted = 0;
  for (let i = 0; i < 10 && !socket.destroyed; i++) {
    const ok = await Promise.race([
      closed.then(() => false),
      new Promise<boolean>((resolve) => {
        const started = socket.renegotiate({ rejectUnauthorized: false }, (err) => resolve(err == null));
        if (!started) resolve(false);
        socket.write('GET / HTTP/1.1\r\nHost: app.test\r\n\r\n');
      }),
    ]);
    if (ok) accepted++;
    else break;
  }
  await within(closed, 10_000, 'the renegotiating connection to be closed');
  assert.ok(accepted <= tls.CLIENT_RENEG_LIMIT, `accepted ${accepted} renegotiations`);
  const after = await new Promise<number>((resolve, reject) => {
    const req = http2.connect(gw.url(), { rejectUnauthorized: false });
    req.on('error', reject);
    const s = req.request({ ':path': '/' });
    s.on('response', (h) => {
      resolve(Number(h[':status']));
      req.close();
    });
    s.on('error', reject);
    s.resume();
  });
  assert.equal(after, 200);
});

test('big input: a huge header block gets 431, huge chunk extensions are refused, bodies over maxBodySize get 413 declared or streamed', async (t) => {
  const b = await holdingBackend(t, 'wait-body');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app', maxBodySize: '64KiB' }]),
  );
  const big = await request(gw.url(), { path: '/big', headers: { 'x-big': 'a'.repeat(64 * 1024) } });
  assert.equal(big.status, 431);

  // 20 KiB of chunk extensions (Node's parser stops at 16 KiB): refused, never forwarded as a body.
  const ext = await rawConnection(gw.port());
  ext.socket.write(
    `POST /ext HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n1;${'a=b;'.repeat(4096)}\r\nx\r\n0\r\n\r\n`,
  );
  await within(ext.closed, 10_000, 'the chunk-extension request to end');
  assert.doesNotMatch(ext.received(), /^HTTP\/1\.1 200 /);
  await waitFor(() => b.held.every((h) => h.closed), 'any upstream request of it to be closed');
  assert.ok(!b.held.some((h) => h.url === '/ext' && h.bodyEnded), 'no complete body was forwarded');

  const declared = await request(gw.url(), {
    method: 'POST',
    path: '/declared',
    headers: { 'content-length': String(1024 * 1024) },
    body: Buffer.alloc(1024 * 1024),
  }).catch(() => ({ status: -1 }));
  assert.ok(declared.status === 413 || declared.status === -1);
  assert.ok(!b.held.some((h) => h.url === '/declared'), 'a declared oversize body is never forwarded');

  const streamed = await new Promise<number>((resolve, reject) => {
    const req = http.request(`${gw.url()}/streamed`, { method: 'POST', signal: AbortSignal.timeout(10_000) });
    req.on('error', reject);
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    const chunk = Buffer.alloc(16 * 1024, 1);
    let sent = 0;
    const more = (): void => {
      while (sent < 64 && !req.destroyed) {
        sent++;
        if (!req.write(chunk)) return void req.once('drain', more);
      }
      req.end();
    };
    more();
  });
  assert.equal(streamed, 413);
  await waitFor(() => leasesReleased(gw), 'the lease to be released');
  await servesNormally(gw);
});

test('pipelining flood: 2000 requests written at once on one connection are answered in order, and the gateway keeps serving', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app' }]),
  );
  const count = 2000;
  const c = await rawConnection(gw.port());
  let batch = '';
  for (let i = 0; i < count; i++) batch += `GET /p/${i} HTTP/1.1\r\nHost: app.test\r\n\r\n`;
  batch += 'GET /p/last HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n';
  c.socket.write(batch);
  await within(c.closed, 60_000, 'every pipelined request to be answered');
  const statuses = c.received().match(/HTTP\/1\.1 \d{3}/g) ?? [];
  assert.equal(statuses.length, count + 1);
  assert.deepEqual(
    statuses.filter((s) => s !== 'HTTP/1.1 200'),
    [],
  );
  assert.equal(b.seen.length, count + 1);
  assert.deepEqual(
    b.seen.slice(0, 3).map((s) => s.url),
    ['/p/0', '/p/1', '/p/2'],
  );
  await servesNormally(gw);
});

test('many connections from one client: 1000 idle connections held open do not stop the gateway from serving', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app' }]),
  );
  const sockets: net.Socket[] = [];
  t.after(() => {
    for (const s of sockets) s.destroy();
  });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1000, maxFreeSockets: 1000 });
  t.after(() => agent.destroy());
  await Promise.all(
    Array.from({ length: 1000 }, async () => {
      const r = await request(gw.url(), { path: '/hold', agent });
      assert.equal(r.status, 200);
    }),
  );
  const idle = Object.values(agent.freeSockets).flat().length;
  assert.equal(idle, 1000, `the connections stay open, idle (${idle})`);
  for (let i = 0; i < 20; i++) await servesNormally(gw);
});

test('ReDoS: parsing a client certificate subjectAltName is linear (a 256 KiB pathological SAN)', () => {
  // Run in a child so that a quadratic parser is cut by the bound instead of hanging the test.
  const code = `
    import { parseSubjectAltNames } from ${JSON.stringify(path.join(ROOT, 'src/identity/mtls.ts'))};
    const n = 256 * 1024;
    const out = [
      parseSubjectAltNames('A'.repeat(n)),
      parseSubjectAltNames('DNS:' + 'a'.repeat(n) + ',x'),
      parseSubjectAltNames('A '.repeat(n / 2)),
      parseSubjectAltNames('DNS:a.example, email:' + 'b'.repeat(n)),
    ];
    console.log(JSON.stringify(out.map((o) => o.length)));
  `;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: ROOT,
    timeout: 20_000,
    encoding: 'utf8',
  });
  assert.equal(r.signal, null, 'the parser finished within the bound');
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), [0, 0, 0, 2]);
});

test('exhaustion: after every attack above, the gateway still serves HTTP/1.1 and HTTP/2', async (t) => {
  const cert = selfSigned();
  const dir = tempDir();
  t.after(() => dir.remove());
  dir.write('cert.pem', cert.cert);
  dir.write('key.pem', cert.key);
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app' }], {
      listeners: [
        { name: 'web', bind: '127.0.0.1:0' },
        {
          name: 'tls',
          bind: '127.0.0.1:0',
          tls: { certificates: [{ cert: 'file:cert.pem', key: 'file:key.pem' }] },
        },
      ],
      server: { clientIdleTimeout: '1s', headersTimeout: '1s' },
    }),
    { baseDir: dir.dir },
  );
  // A mix of the attacks at once, then normal traffic.
  const stalled = await rawConnection(gw.port());
  stalled.socket.write('POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n1');
  const loris = await rawConnection(gw.port());
  loris.socket.write('GET / HTTP/1.1\r\n');
  const handshake = await rawConnection(gw.port('tls'));
  await within(Promise.all([stalled.closed, loris.closed]), 10_000, 'the slow clients to be cut');
  handshake.socket.destroy();
  for (let i = 0; i < 10; i++) await servesNormally(gw);
  const session = http2.connect(gw.url('tls'), { rejectUnauthorized: false });
  t.after(() => session.destroy());
  const statuses = await Promise.all(
    Array.from(
      { length: 10 },
      () =>
        new Promise<number>((resolve, reject) => {
          const s = session.request({ ':path': '/h2' });
          s.on('response', (h) => resolve(Number(h[':status'])));
          s.on('error', reject);
          s.resume();
        }),
    ),
  );
  assert.deepEqual(statuses, Array(10).fill(200));
  await waitFor(() => leasesReleased(gw), 'every lease to be released');
});

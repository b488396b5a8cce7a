/**
 * Adversarial suite, family "misbehaving upstreams": raw TCP servers (node:net) that send exactly the
 * bytes of a broken, hostile or merely unusual HTTP/1.1 implementation. Each test asserts what the client
 * sees (status, or an aborted response that never looks complete), what the access log says, and that
 * the pool still serves afterwards; the family ends by checking the gateway still serves normally.
 * References: HAProxy reg-tests/http-messaging, llhttp's tests, RFC 9110 §15.2 and RFC 9112 §6.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { type TestContext, test } from 'node:test';
import type { AccessEntry } from '../src/observe/log.js';
import { selfSigned } from './helpers/gateway.js';
import { listenUntilEnd } from './helpers/listen.js';
import { config, startBackend, startGateway, type TestGateway, waitFor } from './helpers/proxy.js';

/** One request as the raw upstream read it. */
interface RawRequest {
  method: string;
  path: string;
  head: string;
  body: Buffer;
  /** 1-based number of the connection it came on. */
  connection: number;
}

/** Answers one request by writing bytes to the socket (and maybe closing it). */
type Script = (sock: net.Socket, req: RawRequest) => void;

interface RawUpstream {
  readonly url: string;
  readonly requests: RawRequest[];
  /** Connections accepted so far. */
  connections(): number;
}

const OK = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok';

/**
 * A TCP server that reads HTTP/1.1 requests (heads, and bodies by Content-Length) and answers each with
 * `script`; a request for `/ok` always gets a plain `200 ok`, so every test can check the pool still
 * serves afterwards. With `onHead`, the script runs as soon as the head arrived, before the body.
 */
async function rawUpstream(t: TestContext, script: Script, opts: { onHead?: boolean } = {}) {
  const requests: RawRequest[] = [];
  let connections = 0;
  const server = net.createServer((sock) => {
    const connection = ++connections;
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    let head: string | undefined;
    let want = 0;
    let answered = false;
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (head === undefined) {
          const end = buf.indexOf('\r\n\r\n');
          if (end === -1) return;
          head = buf.subarray(0, end + 4).toString('latin1');
          buf = buf.subarray(end + 4);
          want = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
          answered = false;
        }
        const [method = '', path = ''] = head.split(' ');
        if (opts.onHead && !answered && path !== '/ok') {
          answered = true;
          requests.push({ method, path, head, body: Buffer.alloc(0), connection });
          script(sock, requests.at(-1)!);
        }
        if (buf.length < want) return;
        const req: RawRequest = { method, path, head, body: buf.subarray(0, want), connection };
        buf = buf.subarray(want);
        head = undefined;
        if (path === '/ok') sock.write(OK);
        else if (!answered) {
          requests.push(req);
          script(sock, req);
        }
      }
    });
  });
  const port = await listenUntilEnd(t, server);
  const raw: RawUpstream = { url: `http://127.0.0.1:${port}`, requests, connections: () => connections };
  return raw;
}

/** A gateway in front of one raw upstream (short timeouts: these servers misbehave on purpose). */
async function gatewayFor(t: TestContext, up: RawUpstream, extra: Record<string, unknown> = {}) {
  return startGateway(
    t,
    config(
      { app: { servers: [{ url: up.url }], ...extra } },
      [{ name: 'all', upstream: 'app', timeouts: { response: '1s', idle: '500ms' } }],
      { logging: { level: 'warn', access: true } },
    ),
  );
}

/** What the client saw: a status and body, whether the response completed, and interim responses. */
interface Seen {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** The response ended normally (all of its framing was received). */
  complete: boolean;
  /** A request or response error (reset, hang-up, aborted body). */
  error?: string;
  interim: Array<{ status: number; headers: http.IncomingHttpHeaders }>;
}

/** One request through node:http on a fresh connection; never rejects. */
function call(
  gw: TestGateway,
  opts: { method?: string; path?: string; headers?: http.OutgoingHttpHeaders; body?: Buffer | string } = {},
): Promise<Seen> {
  return new Promise((resolve) => {
    const interim: Seen['interim'] = [];
    let done = false;
    const finish = (s: Seen) => {
      if (!done) {
        done = true;
        resolve(s);
      }
    };
    const req = http.request({
      host: '127.0.0.1',
      port: gw.port(),
      method: opts.method ?? 'GET',
      path: opts.path ?? '/x',
      headers: opts.headers,
      agent: false,
      signal: AbortSignal.timeout(15_000),
    });
    req.on('information', (i) => interim.push({ status: i.statusCode, headers: i.headers }));
    req.on('error', (err) =>
      finish({ status: 0, headers: {}, body: Buffer.alloc(0), complete: false, error: String(err), interim }),
    );
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      const seen = (error?: string): Seen => ({
        status: res.statusCode ?? 0,
        headers: res.headers,
        body: Buffer.concat(chunks),
        complete: error === undefined && res.complete,
        interim,
        ...(error === undefined ? {} : { error }),
      });
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('aborted', () => finish(seen('aborted')));
      res.on('error', (err) => finish(seen(String(err))));
      res.on('end', () => finish(seen(res.complete ? undefined : 'incomplete')));
    });
    req.end(opts.body);
  });
}

/** The access-log entry of the latest request for `path` (waits until it is written). */
async function logged(gw: TestGateway, path: string, n = 1): Promise<AccessEntry> {
  await waitFor(() => gw.access.filter((e) => e.path === path).length >= n, `access log of ${path}`);
  return gw.access.filter((e) => e.path === path).at(-1)!;
}

/** The pool still serves: a normal request answers 200 and the server is not out of rotation. */
async function assertPoolServes(gw: TestGateway): Promise<void> {
  const r = await call(gw, { path: '/ok' });
  assert.equal(r.status, 200);
  assert.equal(r.body.toString(), 'ok');
  assert.ok(r.complete);
  const up = gw.runtime.upstreams.get('app')!;
  assert.deepEqual(
    up.status().servers.map((s) => s.health),
    ['up'],
  );
}

/** Answers every request with the given bytes, and closes the connection when asked to. */
function answer(bytes: string | Buffer, close = false): Script {
  return (sock) => {
    sock.write(bytes);
    if (close) sock.end();
  };
}

/** Asserts a clean 502 GH_UPSTREAM_INVALID for `path`, answered by the gateway itself. */
async function assertInvalid(gw: TestGateway, path: string, n = 1): Promise<void> {
  const r = await call(gw, { path });
  assert.equal(r.status, 502, path);
  assert.ok(r.complete);
  assert.match(r.body.toString(), /GH_UPSTREAM_INVALID/);
  const e = await logged(gw, path, n);
  assert.equal(e.status, 502);
  assert.equal(e.error, 'GH_UPSTREAM_INVALID');
}

// --- Broken status lines and framing: the answer is a clean 502, the connection is dropped

test('misbehaving upstream: an invalid status line gives 502 GH_UPSTREAM_INVALID', async (t) => {
  const lines: Record<string, string> = {
    '/four-digits': 'HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok',
    '/letters': 'HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nok',
    '/not-http': 'SSH-2.0-OpenSSH_9.6\r\n',
    '/http2-preface': 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
    '/bare-lf': 'HTTP/1.1 200 OK\nContent-Length: 2\n\nok',
  };
  const up = await rawUpstream(t, (sock, req) => sock.write(lines[req.path]!));
  const gw = await gatewayFor(t, up);
  for (const path of Object.keys(lines)) await assertInvalid(gw, path);
  await assertPoolServes(gw);
});

test('misbehaving upstream: duplicate or conflicting Content-Length, and CL with TE, give 502', async (t) => {
  const heads: Record<string, string> = {
    '/conflicting': 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!',
    '/duplicate': 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok',
    '/list': 'HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok',
    '/negative': 'HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok',
    '/cl-te':
      'HTTP/1.1 200 OK\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nResponse splitting attack',
    '/space-before-colon': 'HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok',
    '/obs-fold': 'HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok',
  };
  const up = await rawUpstream(t, (sock, req) => sock.write(heads[req.path]!));
  const gw = await gatewayFor(t, up);
  for (const path of Object.keys(heads)) await assertInvalid(gw, path);
  await assertPoolServes(gw);
});

test('misbehaving upstream: a transfer coding other than chunked gives 502, never unlabelled coded bytes', async (t) => {
  const heads: Record<string, string> = {
    '/gzip': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b',
    '/gzip-chunked': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n\x1f\x8b\r\n0\r\n\r\n',
    '/chunked-twice': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n',
    '/two-fields':
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
  };
  const up = await rawUpstream(t, (sock, req) => {
    sock.write(heads[req.path]!);
    if (req.path === '/gzip') sock.end(); // a body delimited by the close
  });
  const gw = await gatewayFor(t, up);
  for (const path of Object.keys(heads)) await assertInvalid(gw, path);
  await assertPoolServes(gw);
});

test('misbehaving upstream: CR, LF or NUL inside a header value gives 502; nothing is forwarded', async (t) => {
  const heads: Record<string, string> = {
    '/cr': 'HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: x=1\r\nContent-Length: 2\r\n\r\nok',
    '/nul': 'HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok',
    '/lf-in-name': 'HTTP/1.1 200 OK\r\nX-A\nInjected: 1\r\nContent-Length: 2\r\n\r\nok',
  };
  const up = await rawUpstream(t, (sock, req) => sock.write(heads[req.path]!));
  const gw = await gatewayFor(t, up);
  for (const path of Object.keys(heads)) await assertInvalid(gw, path);
  await assertPoolServes(gw);
});

test('misbehaving upstream: huge response headers give 502 (no unbounded buffering)', async (t) => {
  const up = await rawUpstream(t, (sock, req) => {
    if (req.path === '/one-huge') sock.write(`HTTP/1.1 200 OK\r\nX-A: ${'a'.repeat(100_000)}\r\n\r\n`);
    else {
      let head = 'HTTP/1.1 200 OK\r\n';
      for (let i = 0; i < 2000; i++) head += `X-H${i}: ${'v'.repeat(20)}\r\n`;
      sock.write(`${head}Content-Length: 2\r\n\r\nok`);
    }
  });
  const gw = await gatewayFor(t, up);
  await assertInvalid(gw, '/one-huge');
  await assertInvalid(gw, '/many');
  await assertPoolServes(gw);
});

test('misbehaving upstream: a 101 to a request that asked for no upgrade gives 502', async (t) => {
  const up = await rawUpstream(t, (sock, req) => {
    if (req.path === '/with-upgrade') {
      sock.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
      sock.write('\x81\x05hello'); // tunnel bytes that must never reach the client
    } else sock.write(`HTTP/1.1 101 Switching Protocols\r\n\r\n${OK}`);
  });
  const gw = await gatewayFor(t, up);
  await assertInvalid(gw, '/with-upgrade');
  await assertInvalid(gw, '/bare');
  await assertPoolServes(gw);
});

test('misbehaving upstream: Transfer-Encoding on an HTTP/1.0 response gives 502 and the connection is dropped', async (t) => {
  // RFC 9112 §6.1: the framing of such a message is faulty; undici would read it as chunked and then
  // reuse a keep-alive connection whose next bytes the server may mean as body.
  const up = await rawUpstream(t, (sock, req) => {
    const keepAlive = req.path === '/keep-alive' ? 'Connection: keep-alive\r\n' : '';
    sock.write(`HTTP/1.0 200 OK\r\n${keepAlive}Transfer-eNcoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n`);
  });
  const gw = await gatewayFor(t, up);
  await assertInvalid(gw, '/keep-alive');
  await assertInvalid(gw, '/close');
  const before = up.connections();
  await assertPoolServes(gw);
  assert.equal(up.connections(), before + 1, 'a new connection: the offending one was not reused');
});

test('misbehaving upstream: a plain HTTP/1.0 response is passed on', async (t) => {
  const up = await rawUpstream(
    t,
    answer('HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold server', true),
  );
  const gw = await gatewayFor(t, up);
  const r = await call(gw, { path: '/old' });
  assert.equal(r.status, 200);
  assert.equal(r.body.toString(), 'old server');
  assert.ok(r.complete);
  assert.equal((await logged(gw, '/old')).status, 200);
  await assertPoolServes(gw);
});

// --- Desync: bytes after a complete response never become the answer to another request

test('misbehaving upstream: extra bytes after the body are never read as the next response', async (t) => {
  const smuggled = 'HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-Smuggled: 1\r\n\r\nhijack!';
  const up = await rawUpstream(t, (sock, req) => {
    if (req.path === '/same-packet') sock.write(`${OK}${smuggled}`);
    else {
      sock.write(OK);
      setTimeout(() => sock.write(smuggled), 50); // later, on what is now an idle connection
    }
  });
  const gw = await gatewayFor(t, up);
  for (const path of ['/same-packet', '/later']) {
    const r = await call(gw, { path });
    assert.equal(r.status, 200);
    assert.equal(r.body.toString(), 'ok');
    assert.equal(r.headers['x-smuggled'], undefined);
    assert.equal((await logged(gw, path)).status, 200);
    await new Promise((resolve) => setTimeout(resolve, 150));
    const before = up.connections();
    const next = await call(gw, { path: '/ok' });
    assert.equal(next.body.toString(), 'ok', 'the next request gets its own answer');
    assert.equal(next.headers['x-smuggled'], undefined);
    assert.equal(up.connections(), before + 1, 'the poisoned connection was not reused');
  }
  await assertPoolServes(gw);
});

test('misbehaving upstream: HEAD, 204 and 304 responses carrying a body end at their head', async (t) => {
  const up = await rawUpstream(t, (sock, req) => {
    if (req.path === '/head') sock.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello');
    else if (req.path === '/204') sock.write('HTTP/1.1 204 No Content\r\n\r\nhello');
    else if (req.path === '/304') sock.write('HTTP/1.1 304 Not Modified\r\nETag: "e"\r\n\r\nhello');
  });
  const gw = await gatewayFor(t, up);
  const h = await call(gw, { method: 'HEAD', path: '/head' });
  assert.equal(h.status, 200);
  assert.equal(h.headers['content-length'], '5', 'HEAD keeps the length of the GET it stands for');
  assert.equal(h.body.length, 0);
  assert.ok(h.complete);
  for (const status of [204, 304]) {
    const r = await call(gw, { path: `/${status}` });
    assert.equal(r.status, status);
    assert.equal(r.body.length, 0);
    assert.ok(r.complete);
    assert.equal((await logged(gw, `/${status}`)).error, undefined);
  }
  // The stray `hello` bytes never answer a later request.
  for (let i = 0; i < 3; i++) assert.equal((await call(gw, { path: '/ok' })).body.toString(), 'ok');
  await assertPoolServes(gw);
});

test('misbehaving upstream: a 304 or 204 with Content-Length is complete, not a length mismatch', async (t) => {
  // RFC 9110 §8.6: a 304 may carry the Content-Length of the 200 it stands for; undici reports a
  // mismatch for it, which must not turn a valid revalidation into a torn response.
  const up = await rawUpstream(t, (sock, req) => {
    if (req.path === '/304')
      sock.write('HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: "e"\r\n\r\n');
    else sock.write('HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n');
  });
  const gw = await gatewayFor(t, up);
  const r304 = await call(gw, { path: '/304', headers: { 'if-none-match': '"e"' } });
  assert.equal(r304.status, 304);
  assert.ok(r304.complete, String(r304.error));
  assert.equal(r304.headers.etag, '"e"');
  const e304 = await logged(gw, '/304');
  assert.equal(e304.status, 304);
  assert.equal(e304.error, undefined);
  const r204 = await call(gw, { path: '/204' });
  assert.equal(r204.status, 204);
  assert.ok(r204.complete, String(r204.error));
  assert.equal(r204.headers['content-length'], undefined, 'no Content-Length on a 204 (RFC 9110 §8.6)');
  assert.equal((await logged(gw, '/204')).error, undefined);
  await assertPoolServes(gw);
});

// --- Truncation and resets: the client sees an aborted response, never a short one that looks complete

test('misbehaving upstream: a body shorter than its Content-Length, then close, reaches the client aborted', async (t) => {
  const up = await rawUpstream(t, (sock) => {
    sock.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789');
    setTimeout(() => sock.end(), 30);
  });
  const gw = await gatewayFor(t, up);
  const r = await call(gw, { path: '/short' });
  assert.equal(r.status, 200);
  assert.equal(r.complete, false, 'never a truncated response that looks complete');
  assert.ok(r.error);
  assert.ok(r.body.length < 100);
  const e = await logged(gw, '/short');
  assert.equal(e.error, 'GH_UPSTREAM_RESET');
  assert.equal(e.retries, 0, 'a response already started is never retried');
  await assertPoolServes(gw);
});

test('misbehaving upstream: a chunked body without its last chunk, then close, reaches the client aborted', async (t) => {
  const up = await rawUpstream(t, (sock) => {
    sock.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n');
    setTimeout(() => sock.end(), 30);
  });
  const gw = await gatewayFor(t, up);
  const r = await call(gw, { path: '/chunked' });
  assert.equal(r.status, 200);
  assert.equal(r.complete, false);
  assert.ok(r.error);
  assert.equal((await logged(gw, '/chunked')).error, 'GH_UPSTREAM_RESET');
  await assertPoolServes(gw);
});

test('misbehaving upstream: a reset right after the headers never yields a complete response', async (t) => {
  const up = await rawUpstream(t, (sock, req) => {
    const framing = req.path === '/sized' ? 'Content-Length: 10' : 'Transfer-Encoding: chunked';
    sock.write(`HTTP/1.1 200 OK\r\n${framing}\r\n\r\n`);
    setTimeout(() => sock.resetAndDestroy(), 30);
  });
  const gw = await gatewayFor(t, up, { retries: { attempts: 0 } });
  // A sized head waits for its first body bytes: nothing reached the client, so it gets a clean 502.
  const sized = await call(gw, { path: '/sized' });
  assert.equal(sized.status, 502);
  assert.ok(sized.complete);
  assert.match(sized.body.toString(), /GH_UPSTREAM_RESET/);
  assert.equal((await logged(gw, '/sized')).status, 502);
  // A stream's head left at once: the client sees the stream cut, never its end.
  const streamed = await call(gw, { path: '/streamed' });
  assert.equal(streamed.status, 200);
  assert.equal(streamed.complete, false);
  const e = await logged(gw, '/streamed');
  assert.equal(e.error, 'GH_UPSTREAM_RESET');
  await assertPoolServes(gw);
});

test('misbehaving upstream: a GET reset after a head that never left is retried on another server', async (t) => {
  const up = await rawUpstream(t, (sock) => {
    sock.write('HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-From: bad\r\n\r\n');
    setTimeout(() => sock.resetAndDestroy(), 30);
  });
  const good = await startBackend(t, 'good');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: up.url }, { url: good.url }], passive: { failures: 100 } } }, [
      { name: 'all', upstream: 'app' },
    ]),
  );
  for (let i = 0; i < 4; i++) {
    const r = await call(gw, { path: `/r${i}` });
    assert.equal(r.status, 200);
    assert.ok(r.complete);
    assert.equal(r.headers['x-from'], undefined, 'nothing of the failed attempt reached the client');
  }
  assert.ok(up.requests.length > 0);
  await waitFor(() => gw.access.length === 4, 'every request logged');
  assert.ok(gw.access.some((e) => e.retries === 1 && e.status === 200));
});

test('misbehaving upstream: no answer at all gives 504 at timeouts.response', async (t) => {
  const up = await rawUpstream(t, () => {});
  const gw = await gatewayFor(t, up);
  const r = await call(gw, { path: '/silent' });
  assert.equal(r.status, 504);
  assert.match(r.body.toString(), /GH_UPSTREAM_TIMEOUT/);
  const e = await logged(gw, '/silent');
  assert.equal(e.status, 504);
  assert.equal(e.error, 'GH_UPSTREAM_TIMEOUT');
  await assertPoolServes(gw);
});

test('misbehaving upstream: a body that stops dripping is cut at timeouts.idle', async (t) => {
  const up = await rawUpstream(t, (sock) => {
    sock.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n');
    let n = 0;
    const drip = setInterval(() => {
      sock.write('x');
      if (++n === 5) clearInterval(drip); // then silence, with the connection open
    }, 50);
    sock.on('close', () => clearInterval(drip));
  });
  const gw = await gatewayFor(t, up);
  const r = await call(gw, { path: '/drip' });
  assert.equal(r.status, 200);
  assert.equal(r.complete, false);
  assert.equal(r.body.toString(), 'xxxxx', 'what dripped in was streamed on');
  const e = await logged(gw, '/drip');
  assert.equal(e.error, 'GH_UPSTREAM_TIMEOUT');
  await assertPoolServes(gw);
});

test('misbehaving upstream: an early final response before the request body was read is passed on', async (t) => {
  // The server refuses the upload from its head (413) and closes without reading the body.
  const up = await rawUpstream(
    t,
    (sock) => {
      sock.write('HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!');
      sock.end();
    },
    { onHead: true },
  );
  const gw = await gatewayFor(t, up);
  const r = await new Promise<Seen>((resolve) => {
    const req = http.request({
      host: '127.0.0.1',
      port: gw.port(),
      method: 'PUT',
      path: '/upload',
      agent: false,
      headers: { 'content-length': 10 * 1024 * 1024 },
    });
    req.on('error', (err) =>
      resolve({
        status: 0,
        headers: {},
        body: Buffer.alloc(0),
        complete: false,
        error: String(err),
        interim: [],
      }),
    );
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        req.destroy();
        resolve({
          status: res.statusCode!,
          headers: res.headers,
          body: Buffer.concat(chunks),
          complete: true,
          interim: [],
        });
      });
    });
    req.write(Buffer.alloc(64 * 1024, 'u')); // the rest of the 10 MiB never comes
  });
  assert.equal(r.status, 413);
  assert.equal(r.body.toString(), 'too big!');
  const e = await logged(gw, '/upload');
  assert.equal(e.status, 413);
  assert.equal(up.requests.length, 1, 'the upload was not retried');
  await assertPoolServes(gw);
});

test('misbehaving upstream: a server that closes every connection at once gives 502, never a hang', async (t) => {
  const server = net.createServer((sock) => sock.destroy());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url }] } }, [{ name: 'all', upstream: 'app', timeouts: { response: '1s' } }]),
  );
  for (const method of ['GET', 'POST']) {
    const r = await call(gw, {
      method,
      path: `/closed-${method}`,
      body: method === 'POST' ? 'x' : undefined,
    });
    assert.equal(r.status, 502, method);
    assert.ok(r.complete);
    const e = await logged(gw, `/closed-${method}`);
    assert.ok(e.error === 'GH_UPSTREAM_RESET' || e.error === 'GH_UPSTREAM_CONNECT', String(e.error));
  }
});

test('misbehaving upstream: a TLS server that never handshakes gives 504, one that speaks garbage 502', async (t) => {
  const silent = net.createServer(() => {});
  const garbage = net.createServer((sock) => sock.end('HTTP/1.1 200 OK\r\n\r\nnot tls at all'));
  for (const s of [silent, garbage]) {
    await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
    t.after(() => {
      s.close();
      return new Promise<void>((resolve) => setImmediate(resolve));
    });
  }
  const port = (s: net.Server) => (s.address() as net.AddressInfo).port;
  const gw = await startGateway(
    t,
    config(
      {
        silent: { servers: [{ url: `https://127.0.0.1:${port(silent)}` }], timeouts: { connect: '300ms' } },
        garbage: { servers: [{ url: `https://127.0.0.1:${port(garbage)}` }] },
      },
      [
        { name: 'silent', match: { path: '/silent' }, upstream: 'silent' },
        { name: 'garbage', upstream: 'garbage' },
      ],
    ),
  );
  const s = await call(gw, { path: '/silent' });
  assert.equal(s.status, 504);
  assert.equal((await logged(gw, '/silent')).error, 'GH_UPSTREAM_TIMEOUT');
  const g = await call(gw, { path: '/garbage' });
  assert.equal(g.status, 502);
  assert.equal((await logged(gw, '/garbage')).error, 'GH_UPSTREAM_CONNECT');
});

test('misbehaving upstream: trailers never reach the client; a framing field among them cuts the stream', async (t) => {
  const up = await rawUpstream(
    t,
    answer(
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Set-Cookie\r\n\r\n2\r\nok\r\n0\r\n' +
        'Set-Cookie: _gatehouse=planted\r\nX-Late: 1\r\n\r\n',
    ),
  );
  const gw = await gatewayFor(t, up);
  const r = await new Promise<{
    body: string;
    trailers: NodeJS.Dict<string>;
    headers: http.IncomingHttpHeaders;
  }>((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: gw.port(), path: '/trailers', agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        body += d;
      });
      res.on('end', () => resolve({ body, trailers: res.trailers, headers: res.headers }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  assert.equal(r.body, 'ok');
  assert.deepEqual(r.trailers, {});
  assert.equal(r.headers['set-cookie'], undefined);
  await assertPoolServes(gw);
  // Content-Length in the trailer section is invalid (RFC 9110 §6.5.1): the stream is cut, not ended.
  const bad = await rawUpstream(
    t,
    answer('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nContent-Length: 9\r\n\r\n'),
  );
  const gw2 = await gatewayFor(t, bad);
  const cut = await call(gw2, { path: '/framing-trailer' });
  assert.equal(cut.status, 200);
  assert.equal(cut.complete, false);
  assert.equal((await logged(gw2, '/framing-trailer')).error, 'GH_UPSTREAM_INVALID');
  await assertPoolServes(gw2);
});

test('misbehaving upstream: a retryable 5xx with an endless body does not hold the retry', async (t) => {
  // The body of a 502 is normally read (to keep the connection) before the retry; an endless one
  // costs the connection once over 64 KiB instead of holding the request until timeouts.idle.
  const endless = await rawUpstream(t, (sock) => {
    sock.write('HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n');
    const chunk = `4000\r\n${'e'.repeat(0x4000)}\r\n`;
    const tick = setInterval(() => {
      if (sock.destroyed) clearInterval(tick);
      else sock.write(chunk);
    }, 5);
    sock.on('close', () => clearInterval(tick));
  });
  const good = await startBackend(t, 'good');
  const gw = await startGateway(
    t,
    config(
      {
        app: {
          servers: [{ url: endless.url }, { url: good.url }],
          retries: { attempts: 1, on: [502], backoff: '1ms' },
          passive: { failures: 100 },
        },
      },
      [{ name: 'all', upstream: 'app', timeouts: { idle: '30s' } }],
    ),
  );
  for (let i = 0; i < 4; i++) {
    const r = await call(gw, { path: `/e${i}` });
    assert.equal(r.status, 200);
    assert.ok(r.complete);
  }
  assert.ok(endless.requests.length > 0, 'some first attempts went to the endless server');
  await waitFor(() => gw.access.length === 4, 'every request logged');
  assert.ok(gw.access.some((e) => e.retries === 1 && e.status === 200));
});

// --- Headers the upstream must not control

test('misbehaving upstream: headers named in Connection, and hop-by-hop headers, never reach the client', async (t) => {
  const up = await rawUpstream(
    t,
    answer(
      'HTTP/1.1 200 OK\r\nConnection: x-internal-token, keep-alive\r\nX-Internal-Token: s3cr3t\r\n' +
        'Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\nUpgrade: h2c\r\n' +
        'Proxy-Authenticate: Basic\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok',
    ),
  );
  const gw = await gatewayFor(t, up);
  const r = await call(gw, { path: '/hop' });
  assert.equal(r.status, 200);
  assert.equal(r.headers['x-kept'], 'yes');
  assert.equal((await logged(gw, '/hop')).status, 200);
  for (const name of [
    'x-internal-token',
    'keep-alive',
    'proxy-connection',
    'trailer',
    'upgrade',
    'proxy-authenticate',
  ]) {
    assert.equal(r.headers[name], undefined, name);
  }
  await assertPoolServes(gw);
});

test("misbehaving upstream: a Set-Cookie for the gateway's own cookies is dropped (session fixation)", async (t) => {
  const up = await rawUpstream(
    t,
    answer(
      'HTTP/1.1 200 OK\r\nSet-Cookie: _gatehouse=attacker-session; Path=/; HttpOnly\r\n' +
        'set-cookie:  _gatehouse_login=x; Path=/.gatehouse/\r\nSET-COOKIE: gh_affinity=other-server\r\n' +
        'Set-Cookie: app=1; Path=/\r\nSet-Cookie: _gatehouse2=kept\r\nContent-Length: 2\r\n\r\nok',
    ),
  );
  const gw = await startGateway(
    t,
    config(
      { app: { servers: [{ url: up.url }], sticky: { cookie: 'gh_affinity' } } },
      [{ name: 'all', upstream: 'app' }],
      { identity: { session: { secrets: ['a-session-secret-of-at-least-32-characters'] } } },
    ),
  );
  const r = await call(gw, { path: '/cookies' });
  assert.equal(r.status, 200);
  const cookies = (r.headers['set-cookie'] ?? []).map((c) => c.split('=')[0]);
  // The gateway's own sticky cookie (for this new client) is the only gh_affinity.
  assert.deepEqual(cookies.sort(), ['_gatehouse2', 'app', 'gh_affinity']);
  const sticky = (r.headers['set-cookie'] ?? []).find((c) => c.startsWith('gh_affinity='))!;
  assert.ok(!sticky.startsWith('gh_affinity=other-server'));
  assert.equal((await logged(gw, '/cookies')).status, 200);
  await assertPoolServes(gw);
});

// --- Interim responses of every kind

test('interim 1xx: an unsolicited 100 Continue before the final response passes it through', async (t) => {
  const up = await rawUpstream(t, (sock, req) => {
    if (req.path === '/100') sock.write(`HTTP/1.1 100 Continue\r\n\r\n${OK}`);
    else if (req.path === '/100-twice')
      sock.write(`HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\nX-A: 1\r\n\r\n${OK}`);
    else if (req.path === '/100-split') {
      // One byte per write: the filter must find the status line and the head's end across reads.
      const bytes = Buffer.from(`HTTP/1.1 100 Continue\r\nX-Why: because\r\n\r\n${OK}`);
      let i = 0;
      const tick = setInterval(() => {
        if (sock.destroyed) return clearInterval(tick);
        sock.write(bytes.subarray(i, i + 1));
        if (++i === bytes.length) clearInterval(tick);
      }, 2);
    } else if (req.path === '/100-post')
      sock.write(
        `HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: ${req.body.length}\r\n\r\n${req.body}`,
      );
  });
  const gw = await gatewayFor(t, up);
  for (const path of ['/100', '/100-twice', '/100-split']) {
    const r = await call(gw, { path });
    assert.equal(r.status, 200, `${path}: ${r.body.toString()}`);
    assert.equal(r.body.toString(), 'ok');
    assert.ok(r.complete);
    assert.equal((await logged(gw, path)).status, 200);
  }
  const p = await call(gw, { method: 'POST', path: '/100-post', body: 'payload' });
  assert.equal(p.status, 201);
  assert.equal(p.body.toString(), 'payload');
  // The connection stays usable after interim responses: all of this ran on one connection.
  assert.equal(up.connections(), 1);
  await assertPoolServes(gw);
});

test('interim 1xx: 102 and unknown 1xx are dropped, the final response passes', async (t) => {
  const up = await rawUpstream(
    t,
    answer(`HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 199 Whatever\r\nX-A: 1\r\n\r\n${OK}`),
  );
  const gw = await gatewayFor(t, up);
  const r = await call(gw, { path: '/102' });
  assert.equal(r.status, 200);
  assert.equal(r.body.toString(), 'ok');
  assert.deepEqual(r.interim, [], 'no 102 or unknown 1xx reaches the client');
  const e = await logged(gw, '/102');
  assert.equal(e.status, 200);
  assert.equal(e.error, undefined);
  await assertPoolServes(gw);
});

test('interim 1xx: 103 Early Hints reach HTTP/1.1 clients with their Link fields only', async (t) => {
  const up = await rawUpstream(
    t,
    answer(
      'HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style, </a,b.js>; rel=preload\r\n' +
        'X-Internal: secret\r\nLink: <broken\r\n\r\n' +
        'HTTP/1.1 100 Continue\r\n\r\n' +
        'HTTP/1.1 103 Early Hints\r\nLink: </script.js>; rel=preload; as=script\r\n\r\n' +
        'HTTP/1.1 103 Early Hints\r\nX-No-Link: 1\r\n\r\n' +
        `HTTP/1.1 200 OK\r\nLink: </final>; rel=preload\r\nContent-Length: 2\r\n\r\nok`,
    ),
  );
  const gw = await gatewayFor(t, up);
  const r = await call(gw, { path: '/hints' });
  assert.equal(r.status, 200);
  assert.equal(r.body.toString(), 'ok');
  assert.deepEqual(
    r.interim.map((i) => [i.status, i.headers.link, i.headers['x-internal']]),
    [
      [103, '</style.css>; rel=preload; as=style, </a,b.js>; rel=preload', undefined],
      [103, '</script.js>; rel=preload; as=script', undefined],
    ],
  );
  assert.equal(r.headers.link, '</final>; rel=preload');
  assert.equal((await logged(gw, '/hints')).status, 200);
  await assertPoolServes(gw);
});

test('interim 1xx: no 103 to an HTTP/1.0 client (RFC 9110 §15.2), and at most 4 per response', async (t) => {
  const hint = 'HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n';
  const up = await rawUpstream(t, answer(`${hint.repeat(20)}${OK}`));
  const gw = await gatewayFor(t, up);
  const raw = await new Promise<string>((resolve, reject) => {
    const sock = net.connect(gw.port(), '127.0.0.1', () =>
      sock.write('GET /old HTTP/1.0\r\nHost: x\r\n\r\n'),
    );
    let text = '';
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      text += d;
    });
    sock.on('end', () => resolve(text));
    sock.on('error', reject);
  });
  assert.match(
    raw,
    /^HTTP\/1\.1 200 OK\r\n/,
    'the first thing an HTTP/1.0 client reads is the final response',
  );
  assert.doesNotMatch(raw, / 103 /);
  assert.ok(raw.endsWith('ok'));
  const r = await call(gw, { path: '/many' });
  assert.equal(r.status, 200);
  assert.equal(r.interim.length, 4);
  await assertPoolServes(gw);
});

test('interim 1xx: 103 Early Hints reach HTTP/2 clients', async (t) => {
  const up = await rawUpstream(
    t,
    answer(`HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n${OK}`),
  );
  const { cert, key } = selfSigned();
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: up.url }] } }, [{ name: 'all', upstream: 'app' }], {
      listeners: [
        {
          name: 'web',
          bind: '127.0.0.1:0',
          tls: { certificates: [{ cert: 'env:T_CERT', key: 'env:T_KEY' }] },
        },
      ],
    }),
    { env: { T_CERT: cert, T_KEY: key } },
  );
  const session = http2.connect(`https://127.0.0.1:${gw.port()}`, { rejectUnauthorized: false });
  t.after(() => session.close());
  const result = await new Promise<{ hints: http2.IncomingHttpHeaders[]; status: number; body: string }>(
    (resolve, reject) => {
      const hints: http2.IncomingHttpHeaders[] = [];
      const stream = session.request({ ':path': '/h2' });
      let status = 0;
      let body = '';
      stream.on('headers', (h) => hints.push(h));
      stream.on('response', (h) => {
        status = Number(h[':status']);
      });
      stream.setEncoding('utf8');
      stream.on('data', (d: string) => {
        body += d;
      });
      stream.on('end', () => resolve({ hints, status, body }));
      stream.on('error', reject);
    },
  );
  assert.equal(result.status, 200);
  assert.equal(result.body, 'ok');
  const e = await logged(gw, '/h2');
  assert.equal(e.status, 200);
  assert.equal(e.protocol, 'HTTP/2.0');
  assert.deepEqual(
    result.hints.map((h) => [h[':status'], h.link]),
    [[103, '</style.css>; rel=preload; as=style']],
  );
});

test('interim 1xx: a 100 with a head over 16 KiB gives 502 instead of being buffered', async (t) => {
  const up = await rawUpstream(
    t,
    answer(`HTTP/1.1 100 Continue\r\nX-Pad: ${'p'.repeat(20_000)}\r\n\r\n${OK}`),
  );
  const gw = await gatewayFor(t, up);
  await assertInvalid(gw, '/huge-100');
  await assertPoolServes(gw);
});

test('interim 1xx: endless 102 Processing does not hold the request past timeouts.response', async (t) => {
  const up = await rawUpstream(t, (sock) => {
    const tick = setInterval(() => {
      if (sock.destroyed) clearInterval(tick);
      else sock.write('HTTP/1.1 102 Processing\r\n\r\n');
    }, 100);
    sock.on('close', () => clearInterval(tick));
  });
  const gw = await gatewayFor(t, up);
  const r = await call(gw, { path: '/processing' });
  assert.equal(r.status, 504);
  const e = await logged(gw, '/processing');
  assert.equal(e.error, 'GH_UPSTREAM_TIMEOUT');
  await assertPoolServes(gw);
});

test('interim 1xx: a 100 Continue before a WebSocket 101 keeps the handshake working', async (t) => {
  const key = 'dGhlIHNhbXBsZSBub25jZQ==';
  const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  const up = await rawUpstream(t, (sock) => {
    sock.write('HTTP/1.1 100 Continue\r\n\r\n');
    sock.write(
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
    );
    sock.on('data', (d: Buffer) => sock.write(d)); // echo tunnel bytes
  });
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: up.url }] } }, [{ name: 'all', upstream: 'app', websocket: true }]),
  );
  const echoed = await new Promise<string>((resolve, reject) => {
    const sock = net.connect(gw.port(), '127.0.0.1', () =>
      sock.write(
        `GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      ),
    );
    let text = '';
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      text += d;
      if (text.includes('\r\n\r\n') && !text.includes('tunnel-bytes')) sock.write('tunnel-bytes');
      if (text.includes('tunnel-bytes')) {
        sock.destroy();
        resolve(text);
      }
    });
    sock.on('error', reject);
    setTimeout(() => reject(new Error(`no echo: ${text}`)), 5000).unref();
  });
  assert.match(echoed, /^HTTP\/1\.1 101 /);
  assert.doesNotMatch(echoed, / 100 Continue/);
  assert.ok(echoed.endsWith('tunnel-bytes'));
});

// --- The family ends with a gateway that still serves normally

test('misbehaving upstreams: after all of the above, the gateway still serves normally', async (t) => {
  const bad = await rawUpstream(t, (sock) => sock.write('HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nbad'));
  const good = await startBackend(t, 'good');
  const gw = await startGateway(
    t,
    config(
      {
        bad: { servers: [{ url: bad.url }] },
        good: { servers: [{ url: good.url }] },
      },
      [
        {
          name: 'bad',
          match: { path: '/bad' },
          upstream: 'bad',
          timeouts: { response: '1s', idle: '300ms' },
        },
        { name: 'good', upstream: 'good' },
      ],
    ),
  );
  const burst = await Promise.all(Array.from({ length: 20 }, (_, i) => call(gw, { path: `/bad/${i}` })));
  assert.ok(burst.every((r) => !r.complete));
  const normal = await Promise.all(Array.from({ length: 20 }, (_, i) => call(gw, { path: `/n/${i}` })));
  for (const r of normal) {
    assert.equal(r.status, 200);
    assert.ok(r.complete);
  }
  assert.equal(good.seen.length, 20);
  await waitFor(() => gw.access.length === 40, 'every request logged');
});

/**
 * Adversarial suite, request framing and smuggling: exact bytes from a raw TCP client against the
 * gateway, in front of a raw TCP upstream that records every byte it receives. The upstream must never
 * see an ambiguous request, nor a second (smuggled) one; every refused request gets its status and then
 * its connection is closed; the gateway keeps serving. Cases follow llhttp's
 * test/request/transfer-encoding.md and content-length.md and HAProxy's reg-tests/http-messaging.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { type TestContext, test } from 'node:test';
import tls from 'node:tls';
import { selfSigned } from './helpers/gateway.js';
import { config, startGateway, type TestGateway, waitFor } from './helpers/proxy.js';
import {
  header,
  parseResponses,
  type RawResult,
  type RawUpstream,
  rawExchange,
  requestHeader,
  startRawUpstream,
} from './helpers/raw.js';

interface Setup {
  up: RawUpstream;
  gw: TestGateway;
  port: number;
}

/** A raw upstream behind one public route (WebSocket allowed) of a fresh gateway. */
async function setup(
  t: TestContext,
  routes: unknown[] = [{ name: 'app', upstream: 'raw', websocket: true }],
  extra: Record<string, unknown> = {},
  answer?: Parameters<typeof startRawUpstream>[1],
): Promise<Setup> {
  const up = await startRawUpstream(t, answer);
  const gw = await startGateway(
    t,
    config({ raw: { servers: [{ url: up.url }], retries: { attempts: 0 } } }, routes, extra),
  );
  return { up, gw, port: gw.port() };
}

/** The exchange produced exactly one response with `status` (and `code`), then the gateway closed. */
function assertRefused(r: RawResult, status: number, code?: string): void {
  const text = r.bytes.toString('latin1');
  assert.equal(r.responses.length, 1, `one response, got: ${JSON.stringify(text)}`);
  assert.equal(r.responses[0]!.status, status, text);
  if (code !== undefined) assert.match(r.responses[0]!.body.toString(), new RegExp(`\\b${code}\\b`), text);
  assert.ok(r.closed, `the connection is closed after the refusal: ${JSON.stringify(text)}`);
}

/** The upstream received no complete request (at most the start of one that was aborted). */
function assertNothingForwarded(up: RawUpstream): void {
  assert.deepEqual(
    up.requests.map((r) => `${r.method} ${r.target}`),
    [],
    `upstream received: ${JSON.stringify(up.all().toString('latin1'))}`,
  );
}

/** The upstream received exactly these requests (method and target) and no other byte. */
function assertForwarded(up: RawUpstream, expected: string[]): void {
  assert.deepEqual(
    up.requests.map((r) => `${r.method} ${r.target}`),
    expected,
    `upstream received: ${JSON.stringify(up.all().toString('latin1'))}`,
  );
  assert.deepEqual(up.leftover(), [], 'no stray bytes reached the upstream');
  assert.ok(!up.all().includes('smuggled'), 'no smuggled request reached the upstream');
}

const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n';

test('CL.TE and TE.CL: Content-Length with Transfer-Encoding is refused and the smuggled request never reaches the upstream', async (t) => {
  const { up, port } = await setup(t);
  const clte = await rawExchange(
    port,
    'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n' +
      `0\r\n\r\n${SMUGGLED}`,
  );
  assertRefused(clte, 400);
  const tecl = await rawExchange(
    port,
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n' +
      `29\r\n${SMUGGLED}\r\n0\r\n\r\n`,
  );
  assertRefused(tecl, 400);
  // The same with the framing headers in the other case and with a tab.
  const mixed = await rawExchange(
    port,
    'POST / HTTP/1.1\r\nHost: a\r\ncontent-length:\t5\r\ntransfer-encoding:\tchunked\r\n\r\n0\r\n\r\nX',
  );
  assertRefused(mixed, 400);
  assertNothingForwarded(up);
});

test('a request the parser refuses before it exists is still in the access log, with the parser code', async (t) => {
  const { up, gw, port } = await setup(t);
  const before = gw.access.length;
  const r = await rawExchange(
    port,
    'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n' +
      `0\r\n\r\n${SMUGGLED}`,
  );
  assertRefused(r, 400);
  await waitFor(() => gw.access.length > before, 'the access-log line of the refused request');
  const entry = gw.access.at(-1)!;
  assert.equal(entry.status, 400);
  assert.equal(entry.error, 'GH_BAD_REQUEST');
  assert.equal(entry.client, '127.0.0.1');
  assert.match(entry.detail ?? '', /^HPE_/);
  assertNothingForwarded(up);
});

test('TE.TE: every obfuscated Transfer-Encoding is refused before anything is forwarded', async (t) => {
  const { up, port } = await setup(t);
  const body = `0\r\n\r\n${SMUGGLED}`;
  const cases: Array<[string, number, string?]> = [
    ['Transfer-Encoding: xchunked', 400, 'GH_BAD_FRAMING'],
    ['Transfer-Encoding: chunked, identity', 400],
    ['Transfer-Encoding: identity', 400, 'GH_BAD_FRAMING'],
    ['Transfer-Encoding: chunked;q=1', 400],
    ['Transfer-Encoding: chunked, chunked', 400],
    ['Transfer-Encoding: gzip, chunked', 501, 'GH_TRANSFER_CODING'],
    ['Transfer-Encoding: identity, chunked', 501, 'GH_TRANSFER_CODING'],
    ['Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked', 400],
    ['Transfer-Encoding: chunked\r\nTransfer-Encoding: identity', 400],
    ['Transfer-Encoding : chunked', 400],
    ['Transfer-Encoding\t: chunked', 400],
    [' Transfer-Encoding: chunked', 400],
    ['Transfer-Encoding: \x0bchunked', 400],
    ['Transfer-Encoding: \x0cchunked', 400],
    ['Transfer-Encoding:\r\n chunked', 400],
    ['Transfer-Encoding: chunked\r\n x', 400],
    ['Transfer-Encoding: "chunked"', 400, 'GH_BAD_FRAMING'],
    ['Transfer-Encoding: chunked\x00', 400],
    ['Transfer-Encoding: ch\x00unked', 400],
    ['Transfer_Encoding: chunked', 400, 'GH_BAD_FRAMING'],
    ['Transfer-Encoding: chunked\rX: y', 400],
    ['Transfer-Encoding: chunked\nX: y', 400],
  ];
  for (const [line, status, code] of cases) {
    const r = await rawExchange(port, `POST / HTTP/1.1\r\nHost: a\r\n${line}\r\n\r\n${body}`);
    await t.test(JSON.stringify(line), () => assertRefused(r, status, code));
  }
  assertNothingForwarded(up);
});

test('TE variants that parse as exactly chunked are forwarded re-framed, one request, nothing smuggled', async (t) => {
  const { up, port } = await setup(t);
  for (const line of [
    'Transfer-Encoding: chunked',
    'Transfer-Encoding:  chunked',
    'Transfer-Encoding:\tchunked',
    'Transfer-Encoding: chunked ',
    'Transfer-Encoding: CHUNKED',
    'tRANSFER-eNCODING: Chunked',
  ]) {
    const r = await rawExchange(
      port,
      `POST /te HTTP/1.1\r\nHost: a\r\n${line}\r\n\r\n3\r\nabc\r\n0\r\n\r\n`,
      {
        final: 1,
      },
    );
    assert.equal(r.responses[0]?.status, 200, JSON.stringify(line));
  }
  assertForwarded(up, Array(6).fill('POST /te'));
  for (const req of up.requests) assert.equal(req.body.toString(), 'abc');
});

test('Content-Length: duplicates, signs, lists, hex and overflow are refused; leading zeros are forwarded canonical', async (t) => {
  const { up, port } = await setup(t);
  const cases: Array<[string, number, string?]> = [
    ['Content-Length: 3\r\nContent-Length: 3', 400],
    ['Content-Length: 3\r\nContent-Length: 4', 400],
    ['Content-Length: 3\r\ncontent-length: 30', 400],
    ['Content-Length: +3', 400],
    ['Content-Length: -3', 400],
    ['Content-Length: 3, 3', 400],
    ['Content-Length: 3,30', 400],
    ['Content-Length: 0x3', 400],
    ['Content-Length: 3.0', 400],
    ['Content-Length: 1 2', 400],
    ['Content-Length: 3 x', 400],
    ['Content-Length: 99999999999999999999999', 400],
    ['Content-Length : 3', 400],
    ['Content-Length: \x0b3', 400],
    ['Content_Length: 3', 400, 'GH_BAD_FRAMING'],
  ];
  for (const [line, status, code] of cases) {
    const r = await rawExchange(port, `POST / HTTP/1.1\r\nHost: a\r\n${line}\r\n\r\nabc${SMUGGLED}`);
    await t.test(JSON.stringify(line), () => assertRefused(r, status, code));
  }
  assertNothingForwarded(up);
  const zeros = await rawExchange(port, 'POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 0003\r\n\r\nabc', {
    final: 1,
  });
  assert.equal(zeros.responses[0]?.status, 200);
  assertForwarded(up, ['POST /cl']);
  assert.equal(requestHeader(up.requests[0]!, 'content-length'), '3');
  assert.equal(up.requests[0]!.body.toString(), 'abc');
});

test('chunked bodies: a malformed chunk is answered 400, logged, and the upstream request aborted (never completed)', async (t) => {
  const { up, gw, port } = await setup(t);
  const head = 'POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n';
  const cases: Array<[string, string, number]> = [
    ['chunk size overflow', 'FFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n', 400],
    ['chunk size 2^64', '10000000000000000\r\nabc\r\n0\r\n\r\n', 400],
    ['0x chunk size', '0x3\r\nabc\r\n0\r\n\r\n', 400],
    ['space after the chunk size', '3 \r\nabc\r\n0\r\n\r\n', 400],
    ['negative chunk size', '-3\r\nabc\r\n0\r\n\r\n', 400],
    ['no CRLF after the chunk data', '3\r\nabcX\r\n0\r\n\r\n', 400],
    ['bare LF after the chunk data', '3\r\nabc\n0\r\n\r\n', 400],
    ['bare LF after the chunk size', '3\nabc\r\n0\r\n\r\n', 400],
    ['bare CR after the chunk size', '3\rabc\r\n0\r\n\r\n', 400],
    ['bare LF in a chunk extension', '3;a=b\nabc\r\n0\r\n\r\n', 400],
    ['chunk extensions over 16 KiB', `3;${'a'.repeat(20_000)}\r\nabc\r\n0\r\n\r\n`, 413],
    ['Content-Length in the trailers', '3\r\nabc\r\n0\r\nContent-Length: 10\r\n\r\n', 400],
    ['Transfer-Encoding in the trailers', '3\r\nabc\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n', 400],
  ];
  let n = 0;
  for (const [name, body, status] of cases) {
    // The body follows the headers in a second write, so the request is being forwarded meanwhile.
    const r = await rawExchange(port, [head, `3\r\nabc\r\n${body}${SMUGGLED}`]);
    n++;
    await t.test(name, async () => {
      assertRefused(r, status, 'GH_BAD_FRAMING');
      const entry = gw.access[gw.access.length - 1];
      assert.equal(gw.access.length, n, 'one access-log line per refused request');
      assert.equal(entry?.status, status);
      assert.equal(entry?.error, 'GH_BAD_FRAMING');
    });
  }
  assertNothingForwarded(up);
  // Each upstream request that was started is aborted: its connection is closed, never left waiting.
  const started = up.connections.flatMap((c, i) => (c.length > 0 ? [i] : []));
  assert.ok(started.length > 0, 'some requests were being forwarded when their body failed');
  await waitFor(() => started.every((i) => up.closed[i]), 'the aborted upstream connections to close');
});

test('a body that fails to parse after the response started: the response is cut, logged, the upstream request aborted', async (t) => {
  let upstreamAborted = 0;
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('streaming\n');
    req.on('data', () => {});
    req.on('error', () => {});
    req.on('close', () => {
      if (!req.complete) upstreamAborted++;
      res.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    server.closeAllConnections();
    server.close();
  });
  const gw = await startGateway(
    t,
    config({ s: { servers: [{ url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}` }] } }, [
      { name: 'stream', upstream: 's' },
    ]),
  );
  const socket = net.connect(gw.port(), '127.0.0.1');
  socket.on('error', () => {});
  let got = '';
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  socket.on('data', (d: Buffer) => {
    got += d.toString('latin1');
    // Once the upstream's response is streaming, the client's next chunk is malformed.
    if (got.includes('streaming')) socket.write('ZZZ\r\nabc\r\n');
  });
  socket.write('POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n');
  await closed;
  assert.match(got, /^HTTP\/1\.1 200 /);
  assert.ok(!/\r\n0\r\n\r\n$/.test(got), 'the chunked response was cut, not completed');
  await waitFor(() => gw.access.length === 1 && upstreamAborted === 1, 'the log line and the upstream abort');
  assert.equal(gw.access[0]?.error, 'GH_BAD_FRAMING');
});

test('chunk extensions and trailers are never passed on: quoted extensions parse, trailer fields (Host) are dropped', async (t) => {
  const { up, port } = await setup(t);
  const r = await rawExchange(
    port,
    'POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n' +
      '3;name="v\\"al;ue";other=x\r\nabc\r\n0003\r\ndef\r\n0;last\r\nHost: evil.example\r\nX-Trailer: t\r\n\r\n',
    { final: 1 },
  );
  assert.equal(r.responses[0]?.status, 200);
  assertForwarded(up, ['POST /x']);
  assert.equal(up.requests[0]!.body.toString(), 'abcdef');
  const bytes = up.all().toString('latin1');
  assert.ok(
    !bytes.includes('evil.example') && !bytes.includes('X-Trailer') && !bytes.includes('name='),
    bytes,
  );
});

test('header syntax: bare CR or LF, obs-fold, NUL and control characters, space before the colon are refused', async (t) => {
  const { up, port } = await setup(t);
  const cases: Array<[string, string]> = [
    ['bare LF line ends', 'GET / HTTP/1.1\nHost: a\n\n'],
    ['a bare LF after one field', 'GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n'],
    ['a bare CR inside the block', 'GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n'],
    ['obs-fold', 'GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n'],
    ['obs-fold with a tab', 'GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\tz\r\n\r\n'],
    ['NUL in a value', 'GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n'],
    ['NUL in a name', 'GET / HTTP/1.1\r\nHost: a\r\nX\x00Y: b\r\n\r\n'],
    ['a control character in a value', 'GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n'],
    ['DEL in a value', 'GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n'],
    ['an escape in a name', 'GET / HTTP/1.1\r\nHost: a\r\nX\x1bY: b\r\n\r\n'],
    ['space before the colon', 'GET / HTTP/1.1\r\nHost: a\r\nX-Api-Key : b\r\n\r\n'],
    ['space inside a name', 'GET / HTTP/1.1\r\nHost: a\r\nX Y: b\r\n\r\n'],
    ['an empty name', 'GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n'],
    ['a line without a colon', 'GET / HTTP/1.1\r\nHost: a\r\nXY\r\n\r\n'],
    ['NUL in the target', 'GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n'],
    ['a space in the target', 'GET /a b HTTP/1.1\r\nHost: a\r\n\r\n'],
    ['a Host with a NUL', 'GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n'],
  ];
  for (const [name, payload] of cases) {
    const r = await rawExchange(port, payload + SMUGGLED);
    await t.test(name, () => assertRefused(r, 400));
  }
  assertNothingForwarded(up);
});

test('Host: two Host lines are refused with 400 GH_BAD_HOST (RFC 9112 §3.2)', async (t) => {
  const { up, gw, port } = await setup(t);
  for (const lines of [
    'Host: a\r\nHost: b',
    'Host: a\r\nhost: a',
    'host: a\r\nX: y\r\nHOST: evil.example',
    'Host: a\r\nHost:',
  ]) {
    const r = await rawExchange(port, `GET / HTTP/1.1\r\n${lines}\r\n\r\n${SMUGGLED}`);
    await t.test(JSON.stringify(lines), () => assertRefused(r, 400, 'GH_BAD_HOST'));
  }
  assertNothingForwarded(up);
  assert.deepEqual(
    gw.access.map((e) => e.error),
    Array(4).fill('GH_BAD_HOST'),
  );
});

test('request line: HTTP/1.2, HTTP/0.9, an HTTP/2.0 line, lowercase or unknown methods are refused; the process keeps running', async (t) => {
  const { up, port } = await setup(t);
  const cases: Array<[string, string, number, string?]> = [
    ['HTTP/1.2', 'GET / HTTP/1.2\r\nHost: a\r\n\r\n', 400],
    ['HTTP/2.0 on an HTTP/1 connection', 'GET / HTTP/2.0\r\nHost: a\r\n\r\n', 505, 'GH_HTTP_VERSION'],
    ['POST HTTP/2.0 with a body', 'POST / HTTP/2.0\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc', 505],
    ['HTTP/0.9 simple request', 'GET /\r\n\r\n', 505, 'GH_HTTP_VERSION'],
    ['HTTP/0.9 with a version', 'GET / HTTP/0.9\r\nHost: a\r\n\r\n', 505, 'GH_HTTP_VERSION'],
    ['HTTP/3.0', 'GET / HTTP/3.0\r\nHost: a\r\n\r\n', 400],
    ['lowercase method', 'get / HTTP/1.1\r\nHost: a\r\n\r\n', 400],
    ['unknown method', 'FOO / HTTP/1.1\r\nHost: a\r\n\r\n', 400],
    ['tab after the method', 'GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n', 400],
    ['space after the version', 'GET / HTTP/1.1 \r\nHost: a\r\n\r\n', 400],
    ['lowercase protocol', 'GET / http/1.1\r\nHost: a\r\n\r\n', 400],
    ['no Host in HTTP/1.1', 'GET / HTTP/1.1\r\n\r\n', 400, 'GH_BAD_HOST'],
    ['a target that is not a path', 'GET a/b HTTP/1.1\r\nHost: a\r\n\r\n', 400],
    ['asterisk-form on GET', 'GET * HTTP/1.1\r\nHost: a\r\n\r\n', 400],
  ];
  for (const [name, payload, status, code] of cases) {
    const r = await rawExchange(port, payload + SMUGGLED);
    await t.test(name, () => assertRefused(r, status, code));
  }
  assertNothingForwarded(up);
});

test('request line: absolute-form is routed, authorized and forwarded by its authority; extra spaces and a leading CRLF are re-serialized', async (t) => {
  const { up, gw, port } = await setup(t, [
    { name: 'internal', match: { host: 'internal.example' }, upstream: 'raw' },
    { name: 'app', upstream: 'raw' },
  ]);
  const abs = await rawExchange(
    port,
    'GET http://internal.example/x?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n',
    {
      final: 1,
    },
  );
  assert.equal(abs.responses[0]?.status, 200);
  assert.equal(gw.access[0]?.route, 'internal');
  assert.equal(gw.access[0]?.host, 'internal.example');
  const spaces = await rawExchange(port, 'GET  /y  HTTP/1.1\r\nHost: a\r\n\r\n', { final: 1 });
  assert.equal(spaces.responses[0]?.status, 200);
  const crlf = await rawExchange(port, '\r\nGET /z HTTP/1.1\r\nHost: a\r\n\r\n', { final: 1 });
  assert.equal(crlf.responses[0]?.status, 200);
  assertForwarded(up, ['GET /x?q=1', 'GET /y', 'GET /z']);
  assert.equal(requestHeader(up.requests[0]!, 'host'), 'internal.example');
  assert.equal(requestHeader(up.requests[0]!, 'x-forwarded-host'), 'internal.example');
});

test('HTTP/1.0 with Transfer-Encoding is served and its connection closed: a request pipelined behind never reaches the upstream (RFC 9112 §6.1)', async (t) => {
  const { up, port } = await setup(t);
  for (const connection of ['Connection: keep-alive\r\n', '']) {
    const r = await rawExchange(
      port,
      `POST /ten HTTP/1.0\r\nHost: a\r\n${connection}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n${SMUGGLED}`,
    );
    assert.equal(r.responses.length, 1, r.bytes.toString('latin1'));
    assert.equal(r.responses[0]!.status, 200);
    assert.equal(header(r.responses[0], 'connection'), 'close');
    assert.ok(r.closed);
  }
  // The same with the pipelined request in a later write.
  const later = await rawExchange(port, [
    'POST /ten HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
    SMUGGLED,
  ]);
  assert.equal(later.responses.length, 1);
  assert.ok(later.closed);
  assertForwarded(up, ['POST /ten', 'POST /ten', 'POST /ten']);
  for (const req of up.requests) assert.equal(req.body.toString(), 'abc');
});

test('HTTP/1.0 with Upgrade is served as an ordinary request and closed, never tunnelled (RFC 9110 §7.8)', async (t) => {
  const big = 'x'.repeat(1 << 20);
  const { up, gw, port } = await setup(t, undefined, {}, (req) =>
    req.target === '/big'
      ? `HTTP/1.1 200 OK\r\nContent-Length: ${big.length}\r\n\r\n${big}`
      : 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
  );
  const upgrade = 'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n';
  const r = await rawExchange(
    port,
    `GET /ws HTTP/1.0\r\nHost: a\r\n${upgrade}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n${SMUGGLED}`,
  );
  assert.equal(r.responses.length, 1, r.bytes.toString('latin1'));
  assert.equal(r.responses[0]!.status, 200);
  assert.equal(r.responses[0]!.body.toString(), 'ok');
  assert.ok(r.closed);
  // A large response through the same path arrives whole (the detached socket's backpressure works).
  const large = await rawExchange(port, `GET /big HTTP/1.0\r\nHost: a\r\n${upgrade}\r\n`, { waitMs: 20_000 });
  assert.equal(large.responses[0]?.status, 200);
  assert.equal(large.responses[0]?.body.length, big.length);
  // A body cannot be read once Node's parser stopped at the headers: refused.
  const withBody = await rawExchange(
    port,
    `POST /ws HTTP/1.0\r\nHost: a\r\n${upgrade}Content-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`,
  );
  assertRefused(withBody, 400, 'GH_BAD_FRAMING');
  assertForwarded(up, ['GET /ws', 'GET /big']);
  assert.equal(requestHeader(up.requests[0]!, 'upgrade'), undefined);
  assert.equal(requestHeader(up.requests[0]!, 'sec-websocket-key'), 'dGhlIHNhbXBsZSBub25jZQ==');
  assert.deepEqual(
    gw.access.map((e) => [e.method, e.path, e.status]),
    [
      ['GET', '/ws', 200],
      ['GET', '/big', 200],
      ['POST', '', 400],
    ],
  );
});

test('header count: more than server.maxHeadersCount fields is 431 and closed, even when the last one is Transfer-Encoding', async (t) => {
  const { up, gw, port } = await setup(t, undefined, { server: { maxHeadersCount: 20 } });
  const fields = (n: number): string => Array.from({ length: n }, (_, i) => `X-F${i}: v\r\n`).join('');
  // 20 fields in all (Host, 18 others, Transfer-Encoding): accepted, the body forwarded.
  const ok = await rawExchange(
    port,
    `POST /n HTTP/1.1\r\nHost: a\r\n${fields(18)}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n`,
    { final: 1 },
  );
  assert.equal(ok.responses[0]?.status, 200);
  // 21: Node used to drop the 21st silently, and with it the body's framing.
  const over = await rawExchange(
    port,
    `POST /n HTTP/1.1\r\nHost: a\r\n${fields(19)}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n${SMUGGLED}`,
  );
  assertRefused(over, 431, 'GH_TOO_MANY_HEADERS');
  const get = await rawExchange(port, `GET /n HTTP/1.1\r\nHost: a\r\n${fields(500)}\r\n${SMUGGLED}`);
  assertRefused(get, 431, 'GH_TOO_MANY_HEADERS');
  assertForwarded(up, ['POST /n']);
  assert.equal(up.requests[0]!.body.toString(), 'abc');
  assert.deepEqual(
    gw.access.map((e) => [e.status, e.error]),
    [
      [200, undefined],
      [431, 'GH_TOO_MANY_HEADERS'],
      [431, 'GH_TOO_MANY_HEADERS'],
    ],
  );
});

test('header count over HTTP/2: past server.maxHeadersCount the stream is refused (ENHANCE_YOUR_CALM), as a header list over maxHeaderSize is', async (t) => {
  const { cert, key } = selfSigned();
  const up = await startRawUpstream(t);
  const gw = await startGateway(
    t,
    config({ raw: { servers: [{ url: up.url }] } }, [{ name: 'app', upstream: 'raw' }], {
      listeners: [
        { name: 'web', bind: '127.0.0.1:0', tls: { certificates: [{ cert: 'env:CERT', key: 'env:KEY' }] } },
      ],
      server: { maxHeadersCount: 20, maxHeaderSize: '8KiB' },
    }),
    { env: { CERT: cert, KEY: key } },
  );
  const client = http2.connect(gw.url(), { rejectUnauthorized: false });
  client.on('error', () => {});
  t.after(() => client.close());
  const send = (headers: http2.OutgoingHttpHeaders): Promise<number | string> =>
    new Promise((resolve) => {
      const s = client.request({ ':path': '/h2', ...headers });
      s.on('response', (h) => {
        s.resume();
        s.on('end', () => resolve(Number(h[':status'])));
      });
      s.on('error', () => resolve(`rst:${s.rstCode}`));
      s.end();
    });
  const fields = (n: number): Record<string, string> =>
    Object.fromEntries(Array.from({ length: n }, (_, i) => [`x-f${i}`, 'v']));
  assert.equal(await send(fields(20)), 200);
  assert.equal(await send(fields(21)), `rst:${http2.constants.NGHTTP2_ENHANCE_YOUR_CALM}`);
  assert.equal(
    await send({ 'x-big': 'v'.repeat(10_000) }),
    `rst:${http2.constants.NGHTTP2_ENHANCE_YOUR_CALM}`,
  );
  // A Host that names another authority than :authority (RFC 9113 §8.3.1) is refused.
  assert.equal(await send({ ':authority': `127.0.0.1:${gw.port()}`, host: 'other.example' }), 400);
  assert.equal(await send({ ':authority': `127.0.0.1:${gw.port()}`, host: `127.0.0.1:${gw.port()}` }), 200);
  // The session keeps serving other streams.
  assert.equal(await send({}), 200);
  assert.deepEqual(
    up.requests.map((r) => r.target),
    ['/h2', '/h2', '/h2'],
  );
});

test('HTTP/1.1 on the HTTPS listener that also speaks HTTP/2: a request without Host is refused, as on plain HTTP', async (t) => {
  const { cert, key } = selfSigned();
  const up = await startRawUpstream(t);
  const gw = await startGateway(
    t,
    config({ raw: { servers: [{ url: up.url }] } }, [{ name: 'app', upstream: 'raw' }], {
      listeners: [
        { name: 'web', bind: '127.0.0.1:0', tls: { certificates: [{ cert: 'env:CERT', key: 'env:KEY' }] } },
      ],
    }),
    { env: { CERT: cert, KEY: key } },
  );
  const exchange = (payload: string): Promise<string> =>
    new Promise((resolve) => {
      const socket = tls.connect(
        { port: gw.port(), host: '127.0.0.1', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] },
        () => socket.write(payload),
      );
      let out = '';
      socket.on('data', (d: Buffer) => {
        out += d.toString('latin1');
      });
      socket.on('error', () => {});
      socket.on('close', () => resolve(out));
      setTimeout(() => socket.destroy(), 5000);
    });
  assert.match(await exchange(`GET / HTTP/1.1\r\n\r\n${SMUGGLED}`), /^HTTP\/1\.1 400 [\s\S]*GH_BAD_HOST/);
  assert.match(await exchange(`GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n${SMUGGLED}`), /^HTTP\/1\.1 400 /);
  assert.equal(up.all().length, 0);
});

test('pipelining: nothing behind a refused request is ever served; behind an accepted one everything is', async (t) => {
  const { up, gw, port } = await setup(
    t,
    [
      { name: 'small', match: { path: '/small' }, upstream: 'raw', maxBodySize: 4 },
      { name: 'guarded', match: { path: '/guarded' }, upstream: 'raw', policy: 'eng' },
      { name: 'app', match: { path: '/app' }, upstream: 'raw' },
    ],
    { policies: { eng: { allow: [{ groups: ['eng'] }] } } },
  );
  // A request the gateway would forward if it served it.
  const behind = 'GET /app/smuggled HTTP/1.1\r\nHost: a\r\n\r\n';
  const refusals: Array<[string, number]> = [
    ['GET /app HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 400],
    ['GET /app HTTP/1.1\r\n\r\n', 400],
    ['GET /nowhere HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc', 404],
    ['POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabcde', 413],
    ['POST /guarded HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc', 401],
    ['GET /app/%2e%2e/%2e%2e/x HTTP/1.1\r\nHost: a\r\n\r\n', 400],
    ['POST /app HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n', 400],
    ['GET /app HTTP/2.0\r\nHost: a\r\n\r\n', 505],
    [`GET /app HTTP/1.1\r\nHost: a\r\n${'X: y\r\n'.repeat(100)}\r\n`, 431],
  ];
  for (const [first, status] of refusals) {
    const r = await rawExchange(port, first + behind + behind);
    await t.test(first.split('\r\n')[0]!, () => assertRefused(r, status));
  }
  assertNothingForwarded(up);
  assert.deepEqual(
    gw.access.filter((e) => e.path.includes('smuggled')),
    [],
    'a request behind a refusal is not even started',
  );
  const ok = await rawExchange(
    port,
    'GET /app/1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /app/2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nxGET /app/3 HTTP/1.1\r\nHost: a\r\n\r\n',
    { final: 3 },
  );
  assert.deepEqual(
    ok.responses.map((r) => r.status),
    [200, 200, 200],
  );
  assert.equal(ok.closed, false, 'an accepted pipeline keeps its connection');
  assertForwarded(up, ['GET /app/1', 'POST /app/2', 'GET /app/3']);
});

/** Sends a request head with Expect: 100-continue and the body only after a 100 (or never). */
function expectContinue(
  port: number,
  head: string,
  body: string,
): Promise<{ statuses: number[]; closed: boolean; sentBody: boolean }> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    let sentBody = false;
    let done = false;
    const finish = (closed: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(deadline);
      socket.destroy();
      resolve({ statuses: parseResponses(buf, closed).map((r) => r.status), closed, sentBody });
    };
    const deadline = setTimeout(() => finish(false), 5000);
    socket.on('error', () => {});
    socket.on('close', () => finish(true));
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const statuses = parseResponses(buf, false).map((r) => r.status);
      if (statuses[0] === 100 && !sentBody) {
        sentBody = true;
        socket.write(body);
      }
      if (statuses.some((s) => s >= 200)) setTimeout(() => finish(false), 150);
    });
    socket.write(head);
  });
}

test('Expect: 100-continue: the 100 comes only once the request is allowed; a refused one is answered without inviting its body', async (t) => {
  const { up, port } = await setup(
    t,
    [
      { name: 'small', match: { path: '/small' }, upstream: 'raw', maxBodySize: 4 },
      { name: 'guarded', match: { path: '/guarded' }, upstream: 'raw', policy: 'eng' },
      { name: 'app', upstream: 'raw' },
    ],
    { policies: { eng: { allow: [{ groups: ['eng'] }] } } },
  );
  const head = (path: string, extra = ''): string =>
    `POST ${path} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n${extra}\r\n`;
  const allowed = await expectContinue(port, head('/app'), 'abcde');
  assert.deepEqual(allowed.statuses, [100, 200]);
  const tooLarge = await expectContinue(port, head('/small'), 'abcde');
  assert.deepEqual(tooLarge, { statuses: [413], closed: true, sentBody: false });
  const unauthenticated = await expectContinue(port, head('/guarded'), 'abcde');
  assert.deepEqual(unauthenticated, { statuses: [401], closed: true, sentBody: false });
  const unknown = await expectContinue(port, head('/app').replace('100-continue', 'x-magic'), 'abcde');
  assert.deepEqual(unknown.statuses, [417]);
  // HTTP/1.0 has no 100 Continue: the expectation is ignored (RFC 9110 §10.1.1), the body read as sent.
  const old = await rawExchange(
    port,
    'POST /old HTTP/1.0\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nabcde',
  );
  assert.deepEqual(
    old.responses.map((r) => r.status),
    [200],
  );
  assertForwarded(up, ['POST /app', 'POST /old']);
  for (const req of up.requests) {
    assert.equal(req.body.toString(), 'abcde');
    assert.equal(requestHeader(req, 'expect'), undefined);
  }
});

test('WebSocket handshakes get the same framing checks: a body, a POST, two Hosts, too many fields are refused and nothing is tunnelled', async (t) => {
  const { up, gw, port } = await setup(t, undefined, { server: { maxHeadersCount: 20 } });
  const ws =
    'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n';
  const many = Array.from({ length: 20 }, (_, i) => `X-F${i}: v\r\n`).join('');
  const cases: Array<[string, string, number, string]> = [
    [
      'a Content-Length body',
      `GET /ws HTTP/1.1\r\nHost: a\r\n${ws}Content-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`,
      400,
      'GH_BAD_FRAMING',
    ],
    [
      'a chunked body',
      `GET /ws HTTP/1.1\r\nHost: a\r\n${ws}Transfer-Encoding: chunked\r\n\r\n29\r\n${SMUGGLED}\r\n0\r\n\r\n`,
      400,
      'GH_BAD_FRAMING',
    ],
    ['a POST', `POST /ws HTTP/1.1\r\nHost: a\r\n${ws}\r\n${SMUGGLED}`, 400, 'GH_BAD_FRAMING'],
    ['two Host lines', `GET /ws HTTP/1.1\r\nHost: a\r\nHost: b\r\n${ws}\r\n${SMUGGLED}`, 400, 'GH_BAD_HOST'],
    [
      'too many fields',
      `GET /ws HTTP/1.1\r\nHost: a\r\n${ws}${many}\r\n${SMUGGLED}`,
      431,
      'GH_TOO_MANY_HEADERS',
    ],
    [
      'Transfer_Encoding',
      `GET /ws HTTP/1.1\r\nHost: a\r\n${ws}Transfer_Encoding: chunked\r\n\r\n${SMUGGLED}`,
      400,
      'GH_BAD_FRAMING',
    ],
    [
      'an h2c upgrade',
      `GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n${SMUGGLED}`,
      400,
      'GH_UNSUPPORTED_UPGRADE',
    ],
    ['HTTP/2.0 with Upgrade', `GET /ws HTTP/2.0\r\nHost: a\r\n${ws}\r\n${SMUGGLED}`, 505, 'GH_HTTP_VERSION'],
  ];
  for (const [name, payload, status, code] of cases) {
    const r = await rawExchange(port, payload);
    await t.test(name, () => assertRefused(r, status, code));
  }
  assert.equal(up.all().length, 0, `nothing reached the upstream: ${up.all().toString('latin1')}`);
  // A valid handshake is tunnelled, and what follows its head is WebSocket data, not a request.
  const good = await rawExchange(port, `GET /ws HTTP/1.1\r\nHost: a\r\n${ws}\r\n`, { final: 0, waitMs: 300 });
  assert.match(good.bytes.toString('latin1'), /^HTTP\/1\.1 101 /);
  assert.deepEqual(
    up.requests.map((r) => `${r.method} ${r.target}`),
    ['GET /ws'],
  );
  assert.ok(gw.access.length >= cases.length);
});

test('a WebSocket handshake the upstream declines is relayed and closed: bytes sent after it never reach the upstream', async (t) => {
  const up = await startRawUpstream(t, () => 'HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno', {
    declineUpgrades: true,
  });
  const gw = await startGateway(
    t,
    config({ raw: { servers: [{ url: up.url }], retries: { attempts: 0 } } }, [
      { name: 'app', upstream: 'raw', websocket: true },
    ]),
  );
  const ws =
    'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n';
  // The smuggled request follows the handshake in the same packet and again after the answer.
  const r = await rawExchange(gw.port(), [`GET /ws HTTP/1.1\r\nHost: a\r\n${ws}\r\n${SMUGGLED}`, SMUGGLED]);
  assert.equal(r.responses[0]?.status, 403);
  assert.equal(r.responses.length, 1);
  assert.ok(r.closed);
  assertForwarded(up, ['GET /ws']);
});

test('after every attack above, fired at once, the gateway still serves normally and nothing was smuggled', async (t) => {
  const { up, port } = await setup(t);
  const attacks = [
    `POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`,
    `POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n${SMUGGLED}`,
    `POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\n${SMUGGLED}`,
    `GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n${SMUGGLED}`,
    `GET / HTTP/2.0\r\nHost: a\r\n\r\n${SMUGGLED}`,
    `GET /\r\n\r\n${SMUGGLED}`,
    `POST / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`,
    `GET / HTTP/1.0\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n${SMUGGLED}`,
    `GET / HTTP/1.1\r\nHost: a\r\n${Array.from({ length: 200 }, (_, i) => `X-${i}: v\r\n`).join('')}\r\n${SMUGGLED}`,
    `CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n${SMUGGLED}`,
    `GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n${SMUGGLED}`,
  ];
  const results = await Promise.all(attacks.map((a) => rawExchange(port, a)));
  for (const r of results) assert.ok(r.closed, 'every attack connection was closed');
  const normal = await rawExchange(port, 'GET /after HTTP/1.1\r\nHost: a\r\n\r\n', { final: 1 });
  assert.equal(normal.responses[0]?.status, 200);
  assert.equal(normal.responses[0]?.body.toString(), 'ok');
  assert.ok(!up.all().includes('smuggled'), up.all().toString('latin1'));
  assert.ok(up.requests.some((r) => r.target === '/after'));
});

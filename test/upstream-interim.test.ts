/**
 * The interim-response filter on its own: whatever way a server's bytes are split into reads, the
 * parser gets them unchanged except for the `100 Continue` heads, and bodies are never looked into.
 */
import assert from 'node:assert/strict';
import { channel } from 'node:diagnostics_channel';
import { Socket } from 'node:net';
import { test } from 'node:test';
import { filterInterimResponses, UpstreamProtocolError } from '../src/upstream/interim.js';

const sendHeaders = channel('undici:client:sendHeaders');

/** A socket whose reads return `chunks` one by one, with the filter installed. */
function feed(chunks: Buffer[]): { socket: Socket; readAll(): Buffer; destroyedWith(): Error | undefined } {
  const socket = new Socket();
  const queue = [...chunks];
  let error: Error | undefined;
  (socket as unknown as { read: () => Buffer | null }).read = () => queue.shift() ?? null;
  socket.destroy = ((err?: Error) => {
    error = err;
    return socket;
  }) as Socket['destroy'];
  filterInterimResponses(socket);
  return {
    socket,
    readAll() {
      const out: Buffer[] = [];
      for (;;) {
        const c = socket.read();
        if (c === null) {
          if (queue.length === 0) break;
          continue;
        }
        out.push(c);
      }
      return Buffer.concat(out);
    },
    destroyedWith: () => error,
  };
}

/** Deterministic pseudo-random numbers (mulberry32), so a failure can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function split(bytes: Buffer, random: () => number): Buffer[] {
  const chunks: Buffer[] = [];
  let i = 0;
  while (i < bytes.length) {
    const n = 1 + Math.floor(random() * (random() < 0.3 ? 4 : 40));
    chunks.push(bytes.subarray(i, i + n));
    i += n;
  }
  return chunks;
}

const C100 = 'HTTP/1.1 100 Continue\r\nX-A: 1\r\n\r\n';
const P102 = 'HTTP/1.1 102 Processing\r\n\r\n';
const E103 = 'HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n';
// A body that looks like interim responses: only the head of a response is ever read.
const BODY = `HTTP/1.1 100 Continue\r\n\r\n${C100}HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n`;
const FINAL = `HTTP/1.1 200 OK\r\nContent-Length: ${BODY.length}\r\n\r\n${BODY}`;

test('interim filter: any split of the reads drops exactly the 100 heads', () => {
  const cases: Array<[string, string]> = [
    [FINAL, FINAL],
    [C100 + FINAL, FINAL],
    [C100 + C100 + FINAL, FINAL],
    [P102 + C100 + E103 + C100 + FINAL, P102 + E103 + FINAL],
    ['HTTP/1.1 100 Continue\n\n' + FINAL, FINAL],
    ['HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok', 'HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok'],
    ['garbage that undici refuses', 'garbage that undici refuses'],
  ];
  for (let seed = 1; seed <= 300; seed++) {
    const random = prng(seed);
    for (const [input, expected] of cases) {
      const f = feed(split(Buffer.from(input, 'latin1'), random));
      sendHeaders.publish({ request: {}, headers: 'GET / HTTP/1.1\r\nhost: x\r\n', socket: f.socket });
      assert.equal(
        f.readAll().toString('latin1'),
        expected,
        `seed ${seed}: ${JSON.stringify(input.slice(0, 40))}`,
      );
      assert.equal(f.destroyedWith(), undefined);
    }
  }
});

test('interim filter: the next request starts a new response; a body never does', () => {
  const f = feed([Buffer.from(FINAL), Buffer.from(C100 + FINAL)]);
  sendHeaders.publish({ request: {}, headers: 'GET /1 HTTP/1.1\r\n', socket: f.socket });
  assert.equal(f.socket.read()?.toString(), FINAL);
  sendHeaders.publish({ request: {}, headers: 'GET /2 HTTP/1.1\r\n', socket: f.socket });
  assert.equal(f.socket.read()?.toString(), FINAL);
});

test('interim filter: an unasked 101, a chunked HTTP/1.0 head and a huge 100 destroy the socket', () => {
  const bad: Array<[string, string, string]> = [
    [
      'GET / HTTP/1.1\r\n',
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n',
      'unsolicited-upgrade',
    ],
    [
      'GET / HTTP/1.1\r\n',
      'HTTP/1.0 200 OK\r\nX: 1\r\ntransfer-ENCODING: chunked\r\n\r\n0\r\n\r\n',
      'chunked-http10',
    ],
    ['GET / HTTP/1.1\r\n', `HTTP/1.1 100 Continue\r\nX: ${'x'.repeat(20_000)}\r\n\r\n`, 'interim-too-large'],
  ];
  for (const [request, response, violation] of bad) {
    for (let seed = 1; seed <= 20; seed++) {
      const f = feed(split(Buffer.from(response), prng(seed)));
      sendHeaders.publish({ request: {}, headers: request, socket: f.socket });
      f.readAll();
      const err = f.destroyedWith();
      assert.ok(err instanceof UpstreamProtocolError, violation);
      assert.equal(err.violation, violation);
      assert.equal((err as unknown as { code: string }).code, 'GH_UPSTREAM_PROTOCOL');
    }
  }
  // The 101 an upgrade asked for, and a plain HTTP/1.0 response, pass.
  const upgrade = feed([
    Buffer.from('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00'),
  ]);
  sendHeaders.publish({
    request: {},
    headers: 'GET / HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n',
    socket: upgrade.socket,
  });
  assert.match(upgrade.readAll().toString('latin1'), /^HTTP\/1\.1 101 /);
  assert.equal(upgrade.destroyedWith(), undefined);
});

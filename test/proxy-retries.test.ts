import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { registry } from '../src/observe/metrics.js';
import { config, request, seenOf, startBackend, startGateway, waitFor } from './helpers/proxy.js';

/** A port on 127.0.0.1 where nothing listens (bound once, then closed). */
async function deadPort(): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

function status(code: number): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  return (_req, res) => {
    res.writeHead(code, { 'content-type': 'text/plain', 'content-length': 3 });
    res.end('bad');
  };
}

test('a GET answered with 502 is retried on another server', async (t) => {
  const bad = await startBackend(t, 'bad', status(502));
  const good = await startBackend(t, 'good');
  const gw = await startGateway(
    t,
    config(
      {
        app: {
          servers: [{ url: bad.url }, { url: good.url }],
          retries: { attempts: 1, on: [502, 'connect-error'], backoff: '1ms' },
          passive: { failures: 1000 },
        },
      },
      [{ name: 'all', upstream: 'app' }],
    ),
  );
  for (let i = 0; i < 10; i++) {
    const r = await request(gw.url(), { path: `/get/${i}` });
    assert.equal(r.status, 200);
    assert.equal(seenOf(r.body).backend, 'good');
  }
  assert.equal(good.seen.length, 10);
  assert.ok(bad.seen.length >= 1, 'round-robin sent some first attempts to the failing server');
  assert.ok(gw.access.some((e) => e.retries === 1 && e.status === 200));
});

test('a GET whose connection is refused is retried on another server', async (t) => {
  const good = await startBackend(t, 'good');
  const port = await deadPort();
  const gw = await startGateway(
    t,
    config(
      {
        app: {
          servers: [{ url: `http://127.0.0.1:${port}` }, { url: good.url }],
          retries: { attempts: 1, on: ['connect-error'], backoff: '1ms' },
        },
      },
      [{ name: 'all', upstream: 'app' }],
    ),
  );
  for (let i = 0; i < 6; i++) {
    const r = await request(gw.url(), { path: '/' });
    assert.equal(r.status, 200);
  }
  assert.equal(good.seen.length, 6);
});

test('a POST refused before any byte was sent is retried once its body is intact', async (t) => {
  const good = await startBackend(t, 'good');
  const port = await deadPort();
  const gw = await startGateway(
    t,
    config(
      {
        app: {
          servers: [{ url: `http://127.0.0.1:${port}` }, { url: good.url }],
          retries: { attempts: 1, on: ['connect-error'], backoff: '1ms' },
          passive: { failures: 1000 },
        },
      },
      [{ name: 'all', upstream: 'app' }],
    ),
  );
  for (let i = 0; i < 4; i++) {
    const r = await request(gw.url(), { method: 'POST', path: '/p', body: `body-${i}` });
    assert.equal(r.status, 200);
    assert.equal(seenOf(r.body).bodyLength, `body-${i}`.length);
  }
  assert.equal(good.seen.length, 4, 'each POST reached a server exactly once');
});

test('a POST that failed with 502 or a reset is never sent twice', async (t) => {
  const bad = await startBackend(t, 'bad', status(502));
  const reset = await startBackend(t, 'reset', (req) => req.socket.destroy());
  const good = await startBackend(t, 'good');
  const gw = await startGateway(
    t,
    config(
      {
        app: {
          servers: [{ url: bad.url }, { url: reset.url }, { url: good.url }],
          retries: { attempts: 3, on: [502, 503, 504, 'connect-error', 'reset', 'timeout'], backoff: '1ms' },
          passive: { failures: 1000 },
        },
      },
      [{ name: 'all', upstream: 'app' }],
    ),
  );
  const statuses: number[] = [];
  const n = 9;
  for (let i = 0; i < n; i++) {
    const r = await request(gw.url(), { method: 'POST', path: '/p', body: 'x'.repeat(100) });
    statuses.push(r.status);
  }
  const received = bad.seen.length + reset.seen.length + good.seen.length;
  assert.equal(received, n, 'every POST reached exactly one server');
  assert.ok(bad.seen.length > 0 && reset.seen.length > 0);
  assert.equal(statuses.filter((s) => s === 502).length, bad.seen.length + reset.seen.length);
  assert.ok(gw.access.every((e) => e.retries === 0));
  const resetEntry = gw.access.find(
    (e) => e.server !== undefined && e.status === 502 && e.error !== undefined,
  );
  assert.equal(resetEntry?.error, 'GH_UPSTREAM_RESET');
});

test('an upstream that does not answer in time gives 504; a stalled stream is aborted', async (t) => {
  const hang = await startBackend(t, 'hang', (req, res) => {
    if (req.url === '/stall') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first');
    }
    // otherwise never answers
  });
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: hang.url }] } }, [
      { name: 'all', upstream: 'app', timeouts: { response: '300ms', idle: '300ms' } },
    ]),
  );
  const r = await request(gw.url(), { path: '/slow' });
  assert.equal(r.status, 504);
  assert.match(r.body.toString(), /GH_UPSTREAM_TIMEOUT/);
  await assert.rejects(
    request(gw.url(), { path: '/stall' }),
    'the client stream is cut when the upstream stalls',
  );
  assert.equal(gw.access.at(-1)?.error, 'GH_UPSTREAM_TIMEOUT');
});

test('a refused connection without retries gives 502; an unknown upstream gives 503', async (t) => {
  const port = await deadPort();
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: `http://127.0.0.1:${port}` }], retries: { attempts: 0 } } }, [
      { name: 'all', upstream: 'app' },
      { name: 'ghost', match: { path: '/ghost' }, upstream: 'missing' },
    ]),
  );
  const r = await request(gw.url(), { path: '/' });
  assert.equal(r.status, 502);
  assert.match(r.body.toString(), /GH_UPSTREAM_CONNECT/);
  const g = await request(gw.url(), { path: '/ghost' });
  assert.equal(g.status, 503);
});

test('failover: GETs keep succeeding while a backend is killed mid-run', async (t) => {
  const a = await startBackend(t, 'a');
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config(
      {
        app: {
          servers: [{ url: a.url }, { url: b.url }],
          retries: { attempts: 2, on: ['connect-error', 'reset', 502], backoff: '1ms' },
        },
      },
      [{ name: 'all', upstream: 'app' }],
    ),
  );
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  t.after(() => agent.destroy());
  let sent = 0;
  let killed = false;
  const failures: string[] = [];
  const worker = async (): Promise<void> => {
    while (sent < 400) {
      sent++;
      if (sent >= 100 && !killed) {
        killed = true;
        void a.close();
      }
      try {
        const r = await request(gw.url(), { path: `/n/${sent}`, agent });
        if (r.status !== 200) failures.push(`status ${r.status}: ${r.body.toString()}`);
      } catch (err) {
        failures.push(String(err));
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  assert.deepEqual(failures, []);
  assert.ok(killed);
  assert.ok(a.seen.length > 0 && b.seen.length > a.seen.length);
});

test('retry defaults: an idempotent request reset after it was sent is retried, with its whole body', async (t) => {
  // The server reads the request, then breaks the connection without answering (as a killed process).
  const reset = await startBackend(t, 'reset', (req) => req.socket.destroy());
  const good = await startBackend(t, 'good');
  const gw = await startGateway(
    t,
    // No `retries` key: the defaults are what is pinned here.
    config({ app: { servers: [{ url: reset.url }, { url: good.url }], passive: { failures: 1000 } } }, [
      { name: 'all', upstream: 'app' },
    ]),
  );
  const body = Buffer.alloc(40_000, 'x');
  const sha = createHash('sha256').update(body).digest('hex');
  const sized = { 'content-length': body.length };
  const chunked = { 'transfer-encoding': 'chunked' };
  const cases: Array<[string, Record<string, string | number> | undefined]> = [
    ['GET', undefined],
    ['HEAD', undefined],
    ['DELETE', undefined],
    ['PUT', sized],
    ['PUT', sized],
    ['PUT', chunked],
    ['PUT', chunked],
  ];
  for (const [method, headers] of cases) {
    const r = await request(gw.url(), {
      method,
      path: '/p',
      headers: headers ?? {},
      body: headers === undefined ? undefined : body,
    });
    assert.equal(r.status, 200, method);
    if (headers !== undefined) {
      const seen = seenOf(r.body);
      assert.equal(seen.bodyLength, body.length);
      assert.equal(seen.sha256, sha, 'the replayed body is the one the client sent');
    }
  }
  // Round-robin sent every other first attempt to the server that breaks: one of each PUT pair.
  const replayed = gw.access.filter((e) => e.method === 'PUT' && e.retries === 1 && e.status === 200);
  assert.equal(replayed.length, 2, 'a sized and a chunked PUT broke on the first server and were replayed');
  assert.equal(reset.seen.filter((s) => s.method === 'PUT').length, 2);
  // bytesIn counts the client's body once, not once per attempt.
  for (const e of gw.access.filter((x) => x.method === 'PUT')) assert.equal(e.bytesIn, body.length);
});

test('retry defaults: a body over 64 KiB is not replayed; a POST is never sent twice', async (t) => {
  const reset = await startBackend(t, 'reset', (req) => req.socket.destroy());
  const good = await startBackend(t, 'good');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: reset.url }, { url: good.url }], passive: { failures: 1000 } } }, [
      { name: 'all', upstream: 'app' },
    ]),
  );
  const big = Buffer.alloc(64 * 1024 + 1, 'y');
  const cases: Array<{ method: string; headers: Record<string, string | number>; body: Buffer }> = [
    { method: 'PUT', headers: { 'content-length': big.length }, body: big },
    { method: 'PUT', headers: { 'transfer-encoding': 'chunked' }, body: big },
    { method: 'POST', headers: { 'content-length': 4 }, body: Buffer.from('post') },
  ];
  for (const c of cases) {
    const before = reset.seen.length + good.seen.length;
    const statuses: number[] = [];
    // Round-robin: of two requests, one goes to the server that resets first.
    for (let i = 0; i < 2; i++) statuses.push((await request(gw.url(), { ...c, path: '/p' })).status);
    assert.deepEqual(statuses.sort(), [200, 502], `${c.method} ${JSON.stringify(c.headers)}`);
    assert.equal(reset.seen.length + good.seen.length - before, 2, 'each request reached one server once');
  }
  assert.ok(gw.access.every((e) => e.retries === 0));
});

test('a client that leaves while a retryable 5xx body is being discarded ends the exchange: no retry is counted or sent', async (t) => {
  let got = 0;
  const holding = await startBackend(t, 'holding', (_req, res) => {
    got++;
    // A retryable status whose body never ends: the gateway reads it to reuse the connection.
    res.writeHead(503, { 'content-type': 'text/plain', 'content-length': 100 });
    res.write('partial');
  });
  const gw = await startGateway(
    t,
    config(
      {
        'discard-left': {
          servers: [{ url: holding.url }],
          retries: { attempts: 1, on: [503], backoff: '1ms' },
          passive: { failures: 1000 },
        },
      },
      [{ name: 'all', upstream: 'discard-left' }],
    ),
  );
  const req = http.get({ host: '127.0.0.1', port: gw.port(), path: '/x', agent: false });
  req.on('error', () => {});
  await waitFor(() => got === 1, 'the first attempt');
  req.destroy();
  await waitFor(() => gw.access.length === 1, 'the access log line');
  // Longer than the backoff: a retry, if one were scheduled, would have been sent by now.
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(
    gw.access.map((e) => [e.status, e.error, e.retries]),
    [[499, 'GH_CLIENT_CLOSED', 0]],
  );
  const retries = (await registry.metrics())
    .split('\n')
    .filter((l) => l.startsWith('gatehouse_retries_total{') && l.includes('upstream="discard-left"'));
  assert.deepEqual(retries, [], 'no retry counted for a client that left');
  assert.equal(got, 1, 'no second attempt');
});

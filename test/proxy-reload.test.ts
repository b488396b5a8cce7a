import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { test } from 'node:test';
import { config, request, seenOf, startBackend, startGateway, waitFor } from './helpers/proxy.js';

function gate(): { wait: Promise<void>; open: () => void } {
  let open: () => void = () => {};
  const wait = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { wait, open };
}

function routed(upstream: string, gen: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return config(
    { a: { servers: [{ url: extra.aUrl }] }, b: { servers: [{ url: extra.bUrl }] } },
    [{ name: 'all', upstream, headers: { response: { set: { 'X-Gen': gen } } } }],
    (extra.more as Record<string, unknown>) ?? {},
  );
}

test('an in-flight request completes on the runtime it started with; kept sockets survive a reload', async (t) => {
  const hold = gate();
  t.after(() => hold.open());
  const a = await startBackend(t, 'a', (req, res, seen) => {
    const body = JSON.stringify(seen);
    const reply = (): void => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    if (req.url === '/slow') void hold.wait.then(reply);
    else reply();
  });
  const b = await startBackend(t, 'b');
  const urls = { aUrl: a.url, bUrl: b.url };
  const gw = await startGateway(t, routed('a', '1', urls));
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  let connections = 0;
  const a1 = agent as unknown as { createConnection: (...args: unknown[]) => unknown };
  const create = a1.createConnection.bind(agent);
  a1.createConnection = (...args: unknown[]) => {
    connections++;
    return create(...args);
  };

  const warm = await request(gw.url(), { path: '/warm', agent });
  assert.equal(warm.headers['x-gen'], '1');
  const port = gw.port();

  const inflight = request(gw.url(), { path: '/slow' });
  await waitFor(() => a.seen.some((s) => s.url === '/slow'), 'the slow request to reach backend a');
  await gw.reload(routed('b', '2', urls));
  assert.equal(gw.port(), port, 'the listener was kept');

  const fresh = await request(gw.url(), { path: '/fresh', agent });
  assert.equal(fresh.headers['x-gen'], '2');
  assert.equal(seenOf(fresh.body).backend, 'b');
  assert.equal(connections, 1, 'the keep-alive connection stayed open across the reload');

  hold.open();
  const done = await inflight;
  assert.equal(done.status, 200);
  assert.equal(done.headers['x-gen'], '1', 'response edits of the original runtime');
  assert.equal(seenOf(done.body).backend, 'a');
});

test('listeners are added and removed on reload', async (t) => {
  const a = await startBackend(t, 'a');
  const b = await startBackend(t, 'b');
  const urls = { aUrl: a.url, bUrl: b.url };
  const gw = await startGateway(t, routed('a', '1', urls));
  const two = {
    ...urls,
    more: {
      listeners: [
        { name: 'web', bind: '127.0.0.1:0' },
        { name: 'extra', bind: '127.0.0.1:0' },
      ],
    },
  };
  await gw.reload(routed('a', '2', two));
  const extra = await request(gw.url('extra'), { path: '/' });
  assert.equal(extra.status, 200);
  const extraUrl = gw.url('extra');
  await gw.reload(routed('a', '3', urls));
  assert.equal(gw.listeners.address('extra'), undefined);
  await assert.rejects(request(extraUrl, { path: '/' }));
  assert.equal((await request(gw.url(), { path: '/' })).headers['x-gen'], '3');
});

test('close drains: new connections are refused, the in-flight request finishes', async (t) => {
  const hold = gate();
  t.after(() => hold.open());
  const a = await startBackend(t, 'a', (_req, res) => {
    void hold.wait.then(() => res.end('finished'));
  });
  const gw = await startGateway(
    t,
    config({ a: { servers: [{ url: a.url }] } }, [{ name: 'all', upstream: 'a' }]),
  );
  const url = gw.url();
  const inflight = request(url, { path: '/slow' });
  await waitFor(() => a.seen.length === 1, 'the request to reach the backend');
  const closing = gw.listeners.close(10_000);
  await assert.rejects(request(url, { path: '/new' }));
  hold.open();
  const r = await inflight;
  assert.equal(r.status, 200);
  assert.equal(r.body.toString(), 'finished');
  await closing;
});

test('a reload applies server.headersTimeout and keepAliveTimeout to a kept plain listener', async (t) => {
  const b = await startBackend(t, 'b');
  const cfg = (headersTimeout: string) =>
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app' }], {
      server: { headersTimeout },
    });
  const gw = await startGateway(t, cfg('60s'));
  const port = gw.port();
  await gw.reload(cfg('1s'));
  assert.equal(gw.port(), port, 'the listener was kept');
  // Headers that never complete: answered 408 under the reloaded 1 s, not the 60 s it started with.
  const socket = net.connect(port, '127.0.0.1');
  t.after(() => socket.destroy());
  let received = '';
  socket.on('data', (d: Buffer) => {
    received += d.toString('latin1');
  });
  const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  socket.on('error', () => {});
  socket.write('GET / HTTP/1.1\r\nHost: app.test\r\n');
  const bound = setTimeout(() => socket.destroy(), 15_000);
  t.after(() => clearTimeout(bound));
  await closed;
  assert.match(received, /^HTTP\/1\.1 408 /, `answer: ${JSON.stringify(received.slice(0, 40))}`);
  assert.equal(b.seen.length, 0);
});

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { test } from 'node:test';
import { config, request, seenOf, startBackend, startGateway, waitFor } from './helpers/proxy.js';

test('413 for a Content-Length over the limit and for a chunked body that grows past it', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [
      { name: 'small', match: { path: '/small' }, upstream: 'app', maxBodySize: '1KiB' },
      { name: 'all', upstream: 'app' },
    ]),
  );
  const big = await request(gw.url(), { method: 'POST', path: '/small', body: Buffer.alloc(2048, 1) });
  assert.equal(big.status, 413);
  assert.match(big.body.toString(), /GH_BODY_TOO_LARGE/);
  assert.equal(b.seen.length, 0, 'rejected before anything was forwarded');

  const ok = await request(gw.url(), { method: 'POST', path: '/small', body: Buffer.alloc(1000, 1) });
  assert.equal(ok.status, 200);
  assert.equal(seenOf(ok.body).bodyLength, 1000);

  const chunked = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.request(`${gw.url()}/small`, { method: 'POST', signal: AbortSignal.timeout(10_000) });
    req.on('error', reject);
    req.on('response', (res) => {
      let body = '';
      res.on('data', (c) => {
        body += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    for (let i = 0; i < 8; i++) req.write(Buffer.alloc(512, 2)); // no Content-Length: chunked
    req.end();
  });
  assert.equal(chunked.status, 413);
  assert.match(chunked.body, /GH_BODY_TOO_LARGE/);
  assert.equal(gw.access.at(-1)?.status, 413);
});

test('431 for request headers over server.maxHeaderSize', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app' }], {
      server: { maxHeaderSize: '8KiB' },
    }),
  );
  const r = await request(gw.url(), { path: '/', headers: { 'x-big': 'a'.repeat(16 * 1024) } });
  assert.equal(r.status, 431);
  assert.equal(b.seen.length, 0);
  const fine = await request(gw.url(), { path: '/', headers: { 'x-small': 'a'.repeat(1024) } });
  assert.equal(fine.status, 200);
});

test('8 MiB bodies stream both ways intact (sha256)', async (t) => {
  const download = randomBytes(8 * 1024 * 1024);
  const downloadHash = createHash('sha256').update(download).digest('hex');
  const b = await startBackend(t, 'b', (req, res, seen) => {
    if (req.url === '/download') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      // Several writes, no Content-Length: a chunked stream.
      for (let i = 0; i < 8; i++) res.write(download.subarray(i * 1024 * 1024, (i + 1) * 1024 * 1024));
      res.end();
      return;
    }
    const body = JSON.stringify(seen);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app' }]),
  );
  const upload = randomBytes(8 * 1024 * 1024);
  const up = await request(gw.url(), { method: 'PUT', path: '/upload', body: upload });
  assert.equal(up.status, 200);
  const seen = seenOf(up.body);
  assert.equal(seen.bodyLength, upload.length);
  assert.equal(seen.sha256, createHash('sha256').update(upload).digest('hex'));

  const down = await request(gw.url(), { path: '/download' });
  assert.equal(down.status, 200);
  assert.equal(down.body.length, download.length);
  assert.equal(createHash('sha256').update(down.body).digest('hex'), downloadHash);
  const entry = gw.access.find((e) => e.path === '/download');
  assert.equal(entry?.bytesOut, download.length);
  assert.equal(gw.access.find((e) => e.path === '/upload')?.bytesIn, upload.length);
});

test('server-sent events pass through before the stream ends', async (t) => {
  let release: () => void = () => {};
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  const b = await startBackend(t, 'sse', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.write('event: progress\ndata: 1\n\n');
    void released.then(() => {
      res.write('event: progress\ndata: 2\n\n');
      res.end('event: done\ndata: ok\n\n');
    });
  });
  t.after(() => release());
  const gw = await startGateway(
    t,
    config({ jobs: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'jobs' }]),
  );
  const text = await new Promise<string>((resolve, reject) => {
    const req = http.get(`${gw.url()}/events`, { signal: AbortSignal.timeout(10_000) }, (res) => {
      assert.equal(res.headers['content-type'], 'text/event-stream');
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
        // The second event is only produced once the first one arrived through the proxy.
        if (body.includes('data: 1\n\n')) release();
      });
      res.on('end', () => resolve(body));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  assert.equal(text, 'event: progress\ndata: 1\n\nevent: progress\ndata: 2\n\nevent: done\ndata: ok\n\n');
});

test('a client that goes away mid-download is logged as 499 and the upstream slot is freed', async (t) => {
  const b = await startBackend(t, 'endless', (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const chunk = Buffer.alloc(64 * 1024, 1);
    const timer = setInterval(() => res.write(chunk), 5);
    res.on('close', () => clearInterval(timer));
  });
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app' }]),
  );
  await new Promise<void>((resolve, reject) => {
    const req = http.get(`${gw.url()}/stream`, (res) => {
      res.once('data', () => {
        req.destroy();
        resolve();
      });
    });
    req.on('error', (err) => {
      if (!req.destroyed) reject(err);
    });
  });
  await waitFor(() => gw.access.some((e) => e.path === '/stream'), 'the access log entry');
  const entry = gw.access.find((e) => e.path === '/stream')!;
  assert.equal(entry.status, 499);
  assert.equal(entry.error, 'GH_CLIENT_CLOSED');
  const up = gw.runtime.upstreams.get('app')!;
  await waitFor(() => up.status().servers.every((s) => s.active === 0), 'the lease to be released');
});

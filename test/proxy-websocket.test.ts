import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { config, startGateway, waitFor } from './helpers/proxy.js';

async function startWsEcho(
  t: import('node:test').TestContext,
): Promise<{ url: string; headers: http.IncomingHttpHeaders[] }> {
  const headers: http.IncomingHttpHeaders[] = [];
  const server = http.createServer((_req, res) => res.end('plain'));
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws, req) => {
    headers.push(req.headers);
    ws.on('message', (data, isBinary) =>
      ws.send(isBinary ? data : `echo:${data.toString()}`, { binary: isBinary }),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(async () => {
    for (const c of wss.clients) c.terminate();
    wss.close();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, headers };
}

function open(url: string, headers: Record<string, string> = {}): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers, handshakeTimeout: 10_000 });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`status ${res.statusCode}`)));
  });
}

function nextMessage(ws: WebSocket): Promise<string> {
  return new Promise((resolve, reject) => {
    ws.once('message', (data) => resolve(data.toString()));
    ws.once('error', reject);
  });
}

test('WebSocket echo through the proxy, with forwarded headers and hygiene', async (t) => {
  const backend = await startWsEcho(t);
  const gw = await startGateway(
    t,
    config({ ws: { servers: [{ url: backend.url }] } }, [
      { name: 'live', match: { path: '/live' }, upstream: 'ws', websocket: { idleTimeout: '30s' } },
      { name: 'plain', upstream: 'ws' },
    ]),
  );
  const wsUrl = gw.url().replace('http:', 'ws:');
  const ws = await open(`${wsUrl}/live/socket`, { 'X-Gatehouse-User': 'mallory' });
  t.after(() => ws.terminate());
  ws.send('hello');
  assert.equal(await nextMessage(ws), 'echo:hello');
  ws.send(Buffer.alloc(100_000, 7));
  const big = await new Promise<Buffer>((resolve) => ws.once('message', (d) => resolve(d as Buffer)));
  assert.equal(big.length, 100_000);
  const h = backend.headers[0]!;
  assert.equal(h['x-gatehouse-user'], undefined);
  assert.equal(h['x-forwarded-for'], '127.0.0.1');
  assert.ok(h['x-request-id']);
  assert.equal(String(h.upgrade).toLowerCase(), 'websocket');
  const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
  ws.close();
  await closed;

  await assert.rejects(open(`${wsUrl}/other`), /status 403/);
  await assert.rejects(open(`${wsUrl}/live/a%2fb`), /status 400/);
});

test('the WebSocket idle timeout closes a silent tunnel', async (t) => {
  const backend = await startWsEcho(t);
  const gw = await startGateway(
    t,
    config({ ws: { servers: [{ url: backend.url }] } }, [
      { name: 'live', upstream: 'ws', websocket: { idleTimeout: '300ms' } },
    ]),
  );
  const ws = await open(`${gw.url().replace('http:', 'ws:')}/`);
  t.after(() => ws.terminate());
  await new Promise<void>((resolve) => ws.once('close', () => resolve()));
  await waitFor(() => gw.access.some((e) => e.protocol === 'websocket'), 'the access log entry');
  const entry = gw.access.find((e) => e.protocol === 'websocket');
  assert.equal(entry?.status, 101);
  assert.equal(entry?.error, 'GH_WEBSOCKET_IDLE');
});

test('wss through a TLS listener that also offers HTTP/2', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-wss-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'].concat([
      '-keyout',
      join(dir, 'key.pem'),
      '-out',
      join(dir, 'cert.pem'),
      '-days',
      '2',
      '-subj',
      '/CN=ws.test',
    ]),
    { stdio: 'ignore' },
  );
  const backend = await startWsEcho(t);
  const gw = await startGateway(
    t,
    config({ ws: { servers: [{ url: backend.url }] } }, [{ name: 'live', upstream: 'ws', websocket: true }], {
      listeners: [
        {
          name: 'web',
          bind: '127.0.0.1:0',
          tls: { certificates: [{ cert: 'file:cert.pem', key: 'file:key.pem' }] },
        },
      ],
    }),
    { baseDir: dir },
  );
  const ws = await new Promise<WebSocket>((resolve, reject) => {
    const w = new WebSocket(`wss://127.0.0.1:${gw.port()}/live`, {
      rejectUnauthorized: false,
      handshakeTimeout: 10_000,
    });
    w.once('open', () => resolve(w));
    w.once('error', reject);
  });
  t.after(() => ws.terminate());
  ws.send('secure');
  assert.equal(await nextMessage(ws), 'echo:secure');
  assert.equal(backend.headers[0]?.['x-forwarded-proto'], 'https');
});

test('a rate-limited WebSocket handshake gets 429 with Retry-After and the RateLimit headers; admitted tunnels carry them', async (t) => {
  const backend = await startWsEcho(t);
  const gw = await startGateway(
    t,
    config({ ws: { servers: [{ url: backend.url }] } }, [
      {
        name: 'live',
        match: { path: '/live' },
        upstream: 'ws',
        websocket: true,
        rateLimit: { rate: '1/min', burst: 2, key: 'ip' },
      },
    ]),
  );
  const wsUrl = gw.url().replace('http:', 'ws:');
  const upgrades: http.IncomingHttpHeaders[] = [];
  for (let i = 0; i < 2; i++) {
    const ws = new WebSocket(`${wsUrl}/live/s`);
    ws.once('upgrade', (res) => upgrades.push(res.headers));
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    ws.terminate();
  }
  assert.equal(upgrades[0]?.['ratelimit-policy'], '"live";q=1;w=60');
  assert.match(String(upgrades[1]?.ratelimit), /^"live";r=0;t=\d+$/);
  const refused = await new Promise<http.IncomingMessage>((resolve, reject) => {
    const ws = new WebSocket(`${wsUrl}/live/s`);
    ws.once('unexpected-response', (_req, res) => resolve(res));
    ws.once('open', () => reject(new Error('the third handshake was admitted')));
    ws.once('error', () => undefined);
  });
  assert.equal(refused.statusCode, 429);
  assert.ok(Number(refused.headers['retry-after']) >= 1);
  assert.equal(refused.headers['ratelimit-policy'], '"live";q=1;w=60');
  refused.destroy();
  assert.equal(backend.headers.length, 2);
  await waitFor(
    () => gw.access.some((e) => e.status === 429 && e.limit === 'limited'),
    'the access log entry',
  );
});

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import http2 from 'node:http2';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { TLSSocket } from 'node:tls';
import { config, seenOf, startBackend, startGateway } from './helpers/proxy.js';

function makeCert(dir: string, file: string, cn: string, sans: string[]): void {
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      join(dir, `${file}-key.pem`),
      '-out',
      join(dir, `${file}.pem`),
      '-days',
      '2',
      '-subj',
      `/CN=${cn}`,
      '-addext',
      `subjectAltName=${sans.map((s) => `DNS:${s}`).join(',')}`,
    ],
    { stdio: 'ignore' },
  );
}

function tlsConfig(backendUrl: string, certs: string[]): Record<string, unknown> {
  return config({ app: { servers: [{ url: backendUrl }] } }, [{ name: 'all', upstream: 'app' }], {
    listeners: [
      {
        name: 'web',
        bind: '127.0.0.1:0',
        tls: { certificates: certs.map((c) => ({ cert: `file:${c}.pem`, key: `file:${c}-key.pem` })) },
      },
    ],
  });
}

/** HTTPS/1.1 GET with a given SNI name; returns the presented certificate's CN and the body. */
function get(
  port: number,
  servername: string,
  path = '/',
): Promise<{ cn: string; fingerprint: string; body: Buffer; alpn: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        path,
        servername,
        headers: { host: servername },
        rejectUnauthorized: false,
        agent: false,
        signal: AbortSignal.timeout(10_000),
      },
      (res) => {
        const socket = res.socket as TLSSocket;
        const cert = socket.getPeerCertificate();
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            cn: String(cert.subject.CN),
            fingerprint: cert.fingerprint256,
            body: Buffer.concat(chunks),
            alpn: String(socket.alpnProtocol),
          }),
        );
      },
    );
    req.on('error', reject);
    req.end();
  });
}

test('HTTPS listener: certificates chosen by SNI (exact and wildcard), HTTP/2 and HTTP/1.1 on one port', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-tls-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  makeCert(dir, 'a', 'a.example.test', ['a.example.test']);
  makeCert(dir, 'b', 'b.example.test', ['*.b.example.test', 'b.example.test']);
  const b = await startBackend(t, 'b');
  const gw = await startGateway(t, tlsConfig(b.url, ['a', 'b']), { baseDir: dir });
  const port = gw.port();

  const a = await get(port, 'a.example.test');
  assert.equal(a.cn, 'a.example.test');
  assert.notEqual(a.alpn, 'h2', 'an HTTP/1.1 client is served on the same port');
  assert.equal(seenOf(a.body).headers['x-forwarded-proto'], 'https');
  assert.equal((await get(port, 'x.b.example.test')).cn, 'b.example.test', 'wildcard');
  assert.equal((await get(port, 'b.example.test')).cn, 'b.example.test');
  assert.equal((await get(port, 'unknown.example.test')).cn, 'a.example.test', 'fallback to the first');

  // HTTP/2 through ALPN on the same port.
  const session = http2.connect(`https://127.0.0.1:${port}`, {
    servername: 'x.b.example.test',
    rejectUnauthorized: false,
  });
  t.after(() => session.destroy());
  session.on('error', () => {});
  const h2 = await new Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: Buffer }>(
    (resolve, reject) => {
      const stream = session.request(
        {
          ':method': 'POST',
          ':path': '/h2/./path?q=1',
          ':authority': 'x.b.example.test',
          'x-gatehouse-user': 'mallory',
        },
        { signal: AbortSignal.timeout(10_000) },
      );
      let headers: http2.IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      stream.on('response', (h) => {
        headers = h;
      });
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () =>
        resolve({ status: Number(headers[':status']), headers, body: Buffer.concat(chunks) }),
      );
      stream.on('error', reject);
      stream.end('h2 body');
    },
  );
  assert.equal(h2.status, 200);
  assert.equal(h2.headers.connection, undefined);
  assert.ok(h2.headers['x-request-id']);
  const seen = seenOf(h2.body);
  assert.equal(seen.url, '/h2/path?q=1');
  assert.equal(seen.method, 'POST');
  assert.equal(seen.bodyLength, 'h2 body'.length);
  assert.equal(seen.headers.host, 'x.b.example.test');
  assert.equal(seen.headers['x-forwarded-host'], 'x.b.example.test');
  assert.equal(seen.headers['x-gatehouse-user'], undefined);
  assert.ok(!Object.keys(seen.headers).some((k) => k.startsWith(':')));
  assert.equal(gw.access.at(-1)?.protocol, 'HTTP/2.0');
  session.close();

  // Header limits apply to HTTP/1.1 on the HTTP/2 listener too.
  const big = await new Promise<number>((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        servername: 'a.example.test',
        headers: { 'x-big': 'a'.repeat(64 * 1024) },
        rejectUnauthorized: false,
        agent: false,
        signal: AbortSignal.timeout(10_000),
      },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on('error', reject);
    req.end();
  });
  assert.equal(big, 431);

  // A reload with a new certificate keeps the listener (same port) and serves the new certificate.
  const before = (await get(port, 'a.example.test')).fingerprint;
  makeCert(dir, 'a2', 'a.example.test', ['a.example.test']);
  await gw.reload(tlsConfig(b.url, ['a2', 'b']));
  assert.equal(gw.port(), port);
  const after = await get(port, 'a.example.test');
  assert.equal(after.cn, 'a.example.test');
  assert.notEqual(after.fingerprint, before);
});

/**
 * Client certificates through the gateway: an mTLS listener (`request` mode) whose verified client
 * certificate becomes the identity, over HTTP/1.1 and HTTP/2, checked by policy.
 */
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import https from 'node:https';
import { after, before, describe, test } from 'node:test';
import { makePki, type TestPki, tempDir } from './helpers/identity.js';
import { config, type Seen, startBackend, startGateway } from './helpers/proxy.js';

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One HTTPS/1.1 request, with a client certificate when given. */
function get(
  port: number,
  path: string,
  pki: TestPki,
  client?: { cert: string; key: string },
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1',
      port,
      path,
      ca: pki.ca,
      servername: 'localhost',
      agent: false,
      ...(client ?? {}),
      signal: AbortSignal.timeout(10_000),
    });
    req.on('error', reject);
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.end();
  });
}

/** One HTTP/2 request over TLS with a client certificate. */
function get2(
  port: number,
  path: string,
  pki: TestPki,
  client: { cert: string; key: string },
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`https://localhost:${port}`, { ca: pki.ca, ...client });
    session.on('error', reject);
    const timer = setTimeout(() => {
      session.destroy();
      reject(new Error('HTTP/2 request timed out'));
    }, 10_000);
    const stream = session.request({ ':path': path });
    let headers: Record<string, string | string[] | undefined> = {};
    let body = '';
    stream.setEncoding('utf8');
    stream.on('response', (h) => {
      headers = h as Record<string, string | string[] | undefined>;
    });
    stream.on('data', (c: string) => {
      body += c;
    });
    stream.on('end', () => {
      clearTimeout(timer);
      session.close();
      resolve({ status: Number(headers[':status']), headers, body });
    });
    stream.on('error', reject);
    stream.end();
  });
}

describe('client certificates on an mTLS listener', () => {
  let pki: TestPki;
  const dir = tempDir();
  before(() => {
    pki = makePki(dir.dir);
  });
  after(() => dir.cleanup());

  test('a trusted client certificate is the identity; policy decides; untrusted or missing ones are refused', async (t) => {
    const b = await startBackend(t, 'b');
    const gw = await startGateway(t, {
      ...config({ app: { servers: [{ url: b.url }] } }, [
        { name: 'ops', match: { path: '/ops' }, upstream: 'app', policy: 'ops', identityHeaders: true },
        {
          name: 'finance',
          match: { path: '/finance' },
          upstream: 'app',
          policy: { allow: [{ groups: ['finance'] }] },
        },
        { name: 'open', match: { path: '/open' }, upstream: 'app', public: true, identityHeaders: true },
      ]),
      listeners: [
        {
          name: 'mtls',
          bind: '127.0.0.1:0',
          tls: {
            certificates: [{ cert: pki.serverCert, key: pki.serverKey }],
            clientCertificate: { mode: 'request', ca: pki.ca },
          },
        },
      ],
      policies: { ops: { allow: [{ name: 'ops-certs', authMethod: ['mtls'], groups: ['ops'] }] } },
    });
    const port = gw.port('mtls');
    const alice = { cert: pki.clientCert, key: pki.clientKey };

    const ok = await get(port, '/ops/deploy', pki, alice);
    assert.equal(ok.status, 200, ok.body);
    const seen = JSON.parse(ok.body) as Seen;
    assert.equal(seen.headers['x-gatehouse-user'], 'alice');
    assert.equal(seen.headers['x-gatehouse-email'], 'alice@example.com');
    assert.equal(seen.headers['x-gatehouse-groups'], 'data-eng,ops');
    assert.ok(seen.headers['x-gatehouse-assertion']);
    const entry = gw.access.find((e) => e.path === '/ops/deploy')!;
    assert.equal(entry.authMethod, 'mtls');
    assert.equal(entry.reason, 'policy-allow:ops-certs');

    // HTTP/2 on the same listener: the certificate is read from the connection's TLS socket.
    const h2 = await get2(port, '/ops/h2', pki, alice);
    assert.equal(h2.status, 200, h2.body);
    assert.equal((JSON.parse(h2.body) as Seen).headers['x-gatehouse-user'], 'alice');

    const notAllowed = await get(port, '/finance', pki, alice);
    assert.equal(notAllowed.status, 403);
    assert.equal(JSON.parse(notAllowed.body).reason, 'no-allow-rule');

    const rogue = await get(port, '/ops/deploy', pki, { cert: pki.rogueCert, key: pki.rogueKey });
    assert.equal(rogue.status, 401);
    assert.equal(JSON.parse(rogue.body).reason, 'certificate-invalid');

    const anonymous = await get(port, '/ops/deploy', pki);
    assert.equal(anonymous.status, 401);
    assert.equal(JSON.parse(anonymous.body).reason, 'user-unauthenticated');

    // On a public route a client certificate is optional, and attached when it is valid.
    const open = await get(port, '/open', pki);
    assert.equal(open.status, 200);
    assert.equal((JSON.parse(open.body) as Seen).headers['x-gatehouse-user'], undefined);
    const openAlice = await get(port, '/open', pki, alice);
    assert.equal((JSON.parse(openAlice.body) as Seen).headers['x-gatehouse-user'], 'alice');
    assert.equal(b.seen.length, 4);
  });
});

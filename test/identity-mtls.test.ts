import assert from 'node:assert/strict';
import http2 from 'node:http2';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { createSecureContext, type TLSSocket } from 'node:tls';
import { certificateIdentity, parseSubjectAltNames } from '../src/identity/mtls.js';
import type { AuthResult } from '../src/identity/types.js';
import { makePki, type TestPki, tempDir } from './helpers/identity.js';

type Answer = { now: AuthResult; later: AuthResult; again: boolean };

const THREE_DAYS = 3 * 86_400_000;

/** The answer a handler gives: the identity now, and once the certificate has expired. */
function answer(socket: TLSSocket): string {
  const now = certificateIdentity(socket);
  const body: Answer = {
    now,
    later: certificateIdentity(socket, Date.now() + THREE_DAYS),
    again: certificateIdentity(socket) === now,
  };
  return JSON.stringify(body);
}

/**
 * A listener configured as src/proxy/listeners.ts does: `requestCert` when client certificates are
 * configured, `rejectUnauthorized` only for `require`, the CA in every SNI context.
 */
async function startListener(pki: TestPki, mode: 'request' | 'require', h2 = false) {
  const ctx = createSecureContext({ cert: pki.serverCert, key: pki.serverKey, ca: pki.ca });
  const options = {
    cert: pki.serverCert,
    key: pki.serverKey,
    ca: pki.ca,
    requestCert: true,
    rejectUnauthorized: mode === 'require',
    SNICallback: (_name: string, cb: (err: Error | null, c?: typeof ctx) => void) => cb(null, ctx),
  };
  const server = h2
    ? http2.createSecureServer({ ...options, allowHTTP1: true }, (req, res) => {
        const session = (req as http2.Http2ServerRequest).stream.session;
        const direct = certificateIdentity(session!.socket as TLSSocket);
        const viaCompat = certificateIdentity(req.socket as TLSSocket);
        res.end(JSON.stringify({ direct, viaCompat }));
      })
    : https.createServer(options, (req, res) => res.end(answer(req.socket as TLSSocket)));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        (server as { closeAllConnections?: () => void }).closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}

function get(port: number, pki: TestPki, client?: { cert: string; key: string }): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        servername: 'localhost',
        path: '/',
        ca: pki.ca,
        agent: false,
        timeout: 10_000,
        ...(client ?? {}),
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          body += c;
        });
        res.on('end', () => resolve(JSON.parse(body) as Answer));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });
}

function reason(r: AuthResult): string {
  return r.kind === 'invalid' ? r.reason : r.kind;
}

describe('client certificates', () => {
  let pki: TestPki;
  let cleanup: () => void;
  before(() => {
    const t = tempDir();
    cleanup = t.cleanup;
    pki = makePki(t.dir);
  });
  after(() => cleanup());

  test('request mode: a trusted certificate becomes the identity', async () => {
    const l = await startListener(pki, 'request');
    try {
      const a = await get(l.port, pki, { cert: pki.clientCert, key: pki.clientKey });
      assert.equal(a.now.kind, 'ok');
      if (a.now.kind !== 'ok') return;
      const id = a.now.identity;
      assert.equal(id.subject, 'alice');
      assert.equal(id.user, 'alice');
      assert.equal(id.email, 'alice@example.com');
      assert.deepEqual(id.groups, ['data-eng', 'ops']);
      assert.equal(id.authMethod, 'mtls');
      assert.equal(id.source, 'CN=Test CA');
      assert.equal(id.claims.subject, 'O=Example,OU=data-eng,OU=ops,CN=alice');
      assert.equal(id.claims.issuer, 'CN=Test CA');
      assert.deepEqual(id.claims.san, ['email:alice@example.com', 'URI:spiffe://example.com/alice']);
      assert.match(String(id.claims.fingerprint256), /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
      assert.match(String(id.claims.serialNumber), /^[0-9A-F]+$/);
      // openssl -days 1: valid for about a day from now.
      assert.ok(id.expiresAt! > Date.now() && id.expiresAt! <= Date.now() + 2 * 86_400_000);
      // Computed once per connection; an expired certificate on a long connection is refused.
      assert.equal(a.again, true);
      assert.equal(reason(a.later), 'certificate-invalid');
    } finally {
      await l.close();
    }
  });

  test('request mode: no certificate is none, an untrusted one is certificate-invalid', async () => {
    const l = await startListener(pki, 'request');
    try {
      assert.equal(reason((await get(l.port, pki)).now), 'none');
      const rogue = await get(l.port, pki, { cert: pki.rogueCert, key: pki.rogueKey });
      assert.equal(reason(rogue.now), 'certificate-invalid');
      assert.match(rogue.now.kind === 'invalid' ? rogue.now.message : '', /not trusted/);
    } finally {
      await l.close();
    }
  });

  test('a certificate without CN is named by its URI SAN (SPIFFE)', async () => {
    const l = await startListener(pki, 'request');
    try {
      const a = await get(l.port, pki, { cert: pki.spiffeCert, key: pki.spiffeKey });
      assert.equal(a.now.kind, 'ok');
      if (a.now.kind !== 'ok') return;
      assert.equal(a.now.identity.subject, 'spiffe://example.com/etl');
      assert.equal(a.now.identity.user, 'spiffe://example.com/etl');
      assert.equal(a.now.identity.email, undefined);
      assert.deepEqual(a.now.identity.groups, []);
    } finally {
      await l.close();
    }
  });

  test('require mode: the handshake fails without a trusted certificate', async () => {
    const l = await startListener(pki, 'require');
    try {
      await assert.rejects(get(l.port, pki));
      await assert.rejects(get(l.port, pki, { cert: pki.rogueCert, key: pki.rogueKey }));
      const a = await get(l.port, pki, { cert: pki.clientCert, key: pki.clientKey });
      assert.equal(reason(a.now), 'ok');
    } finally {
      await l.close();
    }
  });

  test('HTTP/2: the session socket and the compatibility socket give the same identity', async () => {
    const l = await startListener(pki, 'request', true);
    try {
      const client = http2.connect(`https://localhost:${l.port}`, {
        ca: pki.ca,
        cert: pki.clientCert,
        key: pki.clientKey,
        host: '127.0.0.1',
      } as http2.SecureClientSessionOptions);
      try {
        const body = await new Promise<string>((resolve, reject) => {
          const req = client.request({ ':path': '/' });
          let data = '';
          req.setEncoding('utf8');
          req.on('data', (c: string) => {
            data += c;
          });
          req.on('end', () => resolve(data));
          req.on('error', reject);
          req.setTimeout(10_000, () => req.close());
          req.end();
        });
        const { direct, viaCompat } = JSON.parse(body) as { direct: AuthResult; viaCompat: AuthResult };
        assert.equal(direct.kind === 'ok' && direct.identity.subject, 'alice');
        assert.deepEqual(viaCompat, direct);
      } finally {
        client.close();
      }
    } finally {
      await l.close();
    }
  });

  test('a resumed TLS session (1.2 and 1.3) keeps the certificate identity', {
    timeout: 30_000,
  }, async () => {
    for (const maxVersion of ['TLSv1.2', 'TLSv1.3'] as const) {
      const server = https.createServer(
        {
          cert: pki.serverCert,
          key: pki.serverKey,
          ca: pki.ca,
          requestCert: true,
          rejectUnauthorized: false,
          maxVersion,
        },
        (req, res) => {
          const socket = req.socket as TLSSocket;
          res.end(JSON.stringify({ reused: socket.isSessionReused(), result: certificateIdentity(socket) }));
        },
      );
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const port = (server.address() as AddressInfo).port;
      const call = (session?: Buffer) =>
        new Promise<{ body: { reused: boolean; result: AuthResult }; session: Buffer }>((resolve, reject) => {
          // A resumed session brings no new one: only the first call waits for it.
          let saved: Buffer | undefined = session;
          let body: string | undefined;
          const done = () => {
            if (saved !== undefined && body !== undefined)
              resolve({ body: JSON.parse(body), session: saved });
          };
          const req = https.request(
            {
              host: '127.0.0.1',
              port,
              servername: 'localhost',
              ca: pki.ca,
              cert: pki.clientCert,
              key: pki.clientKey,
              agent: false,
              timeout: 10_000,
              ...(session ? { session } : {}),
            },
            (res) => {
              let b = '';
              res.setEncoding('utf8');
              res.on('data', (c: string) => {
                b += c;
              });
              res.on('end', () => {
                body = b;
                done();
              });
            },
          );
          req.on('socket', (s) =>
            s.once('session', (buf: Buffer) => {
              saved = buf;
              done();
            }),
          );
          req.on('timeout', () => req.destroy(new Error('timed out')));
          req.on('error', reject);
          req.end();
        });
      try {
        const first = await call();
        assert.equal(first.body.reused, false);
        const second = await call(first.session);
        assert.equal(second.body.reused, true, `${maxVersion} session resumed`);
        assert.equal(
          second.body.result.kind === 'ok' && second.body.result.identity.subject,
          'alice',
          maxVersion,
        );
      } finally {
        server.closeAllConnections();
        await new Promise<void>((resolve) => server.close(() => resolve()));
      }
    }
  });

  test('a socket that is not TLS or has no certificate is none', () => {
    assert.equal(reason(certificateIdentity({})), 'none');
    assert.equal(reason(certificateIdentity({ authorized: false, getPeerCertificate: () => ({}) })), 'none');
    assert.equal(reason(certificateIdentity({ getPeerCertificate: () => null })), 'none');
  });

  test('subjectAltName parsing handles quoted values', () => {
    assert.deepEqual(parseSubjectAltNames('DNS:a.example.com, IP Address:127.0.0.1, email:x@y'), [
      'DNS:a.example.com',
      'IP Address:127.0.0.1',
      'email:x@y',
    ]);
    assert.deepEqual(parseSubjectAltNames('URI:"spiffe://x/a, b", email:"q\\"@y"'), [
      'URI:spiffe://x/a, b',
      'email:q"@y',
    ]);
    assert.deepEqual(parseSubjectAltNames(undefined), []);
    assert.deepEqual(parseSubjectAltNames(''), []);
  });
});

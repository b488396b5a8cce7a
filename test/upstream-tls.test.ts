import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { type TestContext, test } from 'node:test';
import type { TLSSocket } from 'node:tls';
import { createUpstream } from '../src/upstream/index.js';
import type { Lease, Upstream } from '../src/upstream/types.js';
import {
  memoryLogger,
  send,
  startBackend,
  testContext,
  upstreamConfig,
  waitFor,
} from './helpers/upstream.js';

/** A throw-away CA with a server and a client certificate, made with the openssl CLI. */
function makePki(
  dir: string,
): Record<'ca' | 'serverCert' | 'serverKey' | 'clientCert' | 'clientKey', string> {
  const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  run(
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'ca.key',
    '-out',
    'ca.pem',
    '-days',
    '2',
    '-subj',
    '/CN=Gatehouse Test CA',
  );
  const issue = (name: string, cn: string, ext: string) => {
    writeFileSync(path.join(dir, `${name}.ext`), ext);
    run('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
    run(
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      `${name}.pem`,
      '-days',
      '2',
      '-extfile',
      `${name}.ext`,
    );
  };
  issue(
    'server',
    'backend.test',
    'subjectAltName=DNS:backend.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n',
  );
  issue('client', 'gatehouse-client', 'extendedKeyUsage=clientAuth\n');
  const p = (f: string) => path.join(dir, f);
  return {
    ca: p('ca.pem'),
    serverCert: p('server.pem'),
    serverKey: p('server.key'),
    clientCert: p('client.pem'),
    clientKey: p('client.key'),
  };
}

async function startTlsBackend(t: TestContext) {
  const dir = mkdtempSync(path.join(tmpdir(), 'gh-upstream-tls-'));
  const pki = makePki(dir);
  const server = https.createServer(
    {
      cert: readFileSync(pki.serverCert),
      key: readFileSync(pki.serverKey),
      ca: readFileSync(pki.ca),
      requestCert: true,
      rejectUnauthorized: true,
    },
    (req, res) => {
      const socket = req.socket as TLSSocket;
      const peer = socket.getPeerCertificate();
      res.setHeader('content-type', 'application/json');
      res.end(
        JSON.stringify({
          client: peer.subject?.CN,
          sni: (socket as { servername?: string }).servername,
          host: req.headers.host,
        }),
      );
    },
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  t.after(async () => {
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
    rmSync(dir, { recursive: true, force: true });
  });
  return { pki, port };
}

function acquireNow(up: Upstream): Lease {
  const r = up.acquire({ clientIp: '127.0.0.1', headers: {} });
  assert.ok(!(r instanceof Promise));
  return r;
}

test('upstream HTTPS with a custom CA, a pinned server name and a client certificate (mTLS)', async (t) => {
  const { pki, port } = await startTlsBackend(t);
  const up = await createUpstream(
    'secure',
    upstreamConfig({
      servers: [{ url: `https://127.0.0.1:${port}` }],
      tls: {
        ca: `file:${pki.ca}`,
        serverName: 'backend.test',
        cert: `file:${pki.clientCert}`,
        key: `file:${pki.clientKey}`,
      },
      healthCheck: { path: '/', interval: '50ms' },
    }),
    testContext(),
    memoryLogger().logger,
  );
  t.after(() => up.close());
  // The client's Host header must not change the TLS name used towards the server.
  for (const host of ['public.example.com', 'other.example.org']) {
    const res = await send(acquireNow(up), '/', { host });
    assert.equal(res.status, 200);
    assert.deepEqual(JSON.parse(res.body), { client: 'gatehouse-client', sni: 'backend.test', host });
  }
  up.start();
  await waitFor(() => up.status().servers[0]!.health === 'up', 5000, 'https health check');
});

test('an IP-literal https server is verified against its address; a missing CA or client cert fails', async (t) => {
  const { pki, port } = await startTlsBackend(t);
  const build = async (tls: Record<string, string>) => {
    const up = await createUpstream(
      'secure2',
      upstreamConfig({ servers: [{ url: `https://127.0.0.1:${port}` }], tls }),
      testContext(),
      memoryLogger().logger,
    );
    t.after(() => up.close());
    return up;
  };
  const full = await build({
    ca: `file:${pki.ca}`,
    cert: `file:${pki.clientCert}`,
    key: `file:${pki.clientKey}`,
  });
  const ok = JSON.parse((await send(acquireNow(full))).body);
  assert.equal(ok.client, 'gatehouse-client');
  assert.equal(ok.sni, false, 'no SNI for an address');

  const noCa = await build({ cert: `file:${pki.clientCert}`, key: `file:${pki.clientKey}` });
  await assert.rejects(send(acquireNow(noCa)), (err: { code?: string }) =>
    /CERT|SELF_SIGNED|ISSUER/.test(err.code ?? ''),
  );

  const noClientCert = await build({ ca: `file:${pki.ca}` });
  await assert.rejects(send(acquireNow(noClientCert)));

  await assert.rejects(
    build({ ca: `file:${pki.ca}`, cert: `file:${pki.clientCert}` }),
    /upstreams\.secure2\.tls: cert and key must be given together/,
  );
  await assert.rejects(build({ ca: 'file:/nonexistent/ca.pem' }), /upstreams\.secure2\.tls\.ca: /);
});

test('inject headers expand env and file secrets at build time', async (t) => {
  const backend = await startBackend('inj');
  const dir = mkdtempSync(path.join(tmpdir(), 'gh-upstream-inject-'));
  const tokenFile = path.join(dir, 'token');
  writeFileSync(tokenFile, 's3cret-file\n');
  t.after(async () => {
    await backend.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const def = upstreamConfig({
    servers: [{ url: backend.url }],
    inject: {
      headers: {
        Authorization: `Bearer \${file:${tokenFile}}`,
        'X-Api-Key': '${env:GH_TEST_KEY}',
        'X-Static': 'plain',
      },
    },
  });
  const up = await createUpstream('inj', def, testContext({ GH_TEST_KEY: 'k-123' }), memoryLogger().logger);
  t.after(() => up.close());
  assert.deepEqual(up.injectHeaders, [
    ['authorization', 'Bearer s3cret-file'],
    ['x-api-key', 'k-123'],
    ['x-static', 'plain'],
  ]);
  const lease = acquireNow(up);
  await send(lease, '/', Object.fromEntries(up.injectHeaders));
  assert.equal(backend.lastHeaders?.authorization, 'Bearer s3cret-file');

  await assert.rejects(
    createUpstream('inj', def, testContext({}), memoryLogger().logger),
    /upstreams\.inj\.inject\.headers\.X-Api-Key: environment variable GH_TEST_KEY is not set/,
  );
  await assert.rejects(
    createUpstream('inj', def, testContext({ GH_TEST_KEY: 'a\r\nX-Evil: 1' }), memoryLogger().logger),
    /line break/,
  );
});

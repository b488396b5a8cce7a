/**
 * Reloads under load, with real processes: `gatehouse start` as a child, two real backends, and load
 * on keep-alive and new connections with small, uploaded and streamed bodies, while the configuration
 * is reloaded a hundred times by SIGHUP and by file changes. The reloads move routes between
 * upstreams, add and remove servers, replace pools, add and remove a second listener, and some are
 * rejected as invalid. Not one request may fail (a reload must lose nothing in flight); in
 * single-process mode and, shorter, with `server.workers: 2`.
 */
import assert from 'node:assert/strict';
import { renameSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { SignJWT } from 'jose';
import WebSocket, { WebSocketServer } from 'ws';
import { Gateway } from '../src/process/gateway.js';
import { fromPrimary, type LogLine, spawnGatehouse } from './helpers/cluster.js';
import { memoryLogger, selfSigned, tempDir, waitFor } from './helpers/gateway.js';
import { makeKey } from './helpers/identity.js';
import { Load, mixedTraffic, startTrafficBackend, type TrafficBackend } from './helpers/traffic.js';

/** Two certificates for the HTTPS listener, in files next to the configuration. */
interface Certs {
  files: [{ cert: string; key: string }, { cert: string; key: string }];
}

/**
 * The valid variants the reloads cycle through: every path stays served by `a` or `b`, and the HTTPS
 * listener's certificate changes every other time.
 */
function variant(i: number, a: TrafficBackend, b: TrafficBackend, workers: number, certs: Certs): string {
  const cert = certs.files[i % 2]!;
  const head = (extra: string): string => `listeners:
  - { name: plain, bind: 127.0.0.1:0 }
  - name: secure
    bind: 127.0.0.1:0
    tls: { certificates: [{ cert: "file:${cert.cert}", key: "file:${cert.key}" }] }
${extra}server: { workers: ${workers}, drainTimeout: 10s }
admin: { bind: 127.0.0.1:0 }
logging: { access: false }
`;
  switch (i % 6) {
    case 0:
      return `${head('')}upstreams:
  app: { servers: [{ url: "${a.url}" }] }
routes:
  - { name: all, upstream: app, public: true }
`;
    case 1:
      // A server added to the pool (a new pool replaces the old one, which drains).
      return `${head('')}upstreams:
  app: { servers: [{ url: "${a.url}" }, { url: "${b.url}" }], balance: round-robin }
routes:
  - { name: all, upstream: app, public: true }
`;
    case 2:
      // Streams move to an upstream of their own; a second listener appears.
      return `${head('  - { name: extra, bind: 127.0.0.1:0 }\n')}upstreams:
  app: { servers: [{ url: "${b.url}" }] }
  streams: { servers: [{ url: "${a.url}" }], timeouts: { response: 20s } }
routes:
  - { name: streams, match: { path: /stream }, upstream: streams, public: true }
  - { name: all, upstream: app, public: true }
`;
    case 3:
      // The upstream is renamed: the old pool is retired while requests may still run on it.
      return `${head('')}upstreams:
  main: { servers: [{ url: "${b.url}" }, { url: "${a.url}" }], balance: least-conn }
routes:
  - { name: all, upstream: main, public: true }
`;
    case 4:
      return `${head('  - { name: extra, bind: 127.0.0.1:0 }\n')}upstreams:
  main: { servers: [{ url: "${b.url}" }] }
  uploads: { servers: [{ url: "${a.url}" }], retries: { attempts: 1 } }
routes:
  - { name: uploads, match: { path: /echo, methods: [POST] }, upstream: uploads, public: true }
  - { name: all, upstream: main, public: true }
`;
    default:
      return `${head('')}upstreams:
  app: { servers: [{ url: "${a.url}", weight: 2 }, { url: "${b.url}" }], timeouts: { idle: 30s } }
routes:
  - { name: all, upstream: app, public: true }
`;
  }
}

/** Configurations that are refused: the running one must stay and keep serving. */
function invalid(i: number, a: TrafficBackend, workers: number, certs: Certs): string {
  const valid = variant(0, a, a, workers, certs);
  switch (i % 3) {
    case 0:
      return `${valid}bogus: true\n`;
    case 1:
      return valid.replace('upstream: app', 'upstream: nowhere');
    default:
      return `${valid}routes: [\n`;
  }
}

function isOutcome(cluster: boolean): (l: LogLine) => boolean {
  return (l) =>
    (!cluster || fromPrimary(l)) &&
    (l.msg === 'configuration reloaded' ||
      l.msg === 'configuration rejected; the running configuration stays in use');
}

async function reloadsUnderLoad(workers: number, reloads: number): Promise<void> {
  const d = tempDir();
  const a = await startTrafficBackend('a');
  const b = await startTrafficBackend('b');
  const certs: Certs = {
    files: [0, 1].map((n) => {
      const pair = selfSigned('localhost');
      return { cert: d.write(`cert-${n}.pem`, pair.cert), key: d.write(`key-${n}.pem`, pair.key) };
    }) as Certs['files'],
  };
  const file = d.write('gatehouse.yaml', variant(0, a, b, workers, certs));
  const gh = spawnGatehouse(file);
  let load: Load | undefined;
  try {
    const started = await gh.waitForLog(
      (l) => l.msg === 'gateway started' && (workers === 1 || fromPrimary(l)),
      'the gateway to start',
      { ms: 30_000 },
    );
    const listeners = started.listeners as Array<{ name: string; address: string }>;
    const portOf = (name: string): number =>
      Number(
        listeners
          .find((l) => l.name === name)
          ?.address.split(':')
          .pop(),
      );
    load = new Load(portOf('plain'), mixedTraffic({ backends: ['a', 'b'], tlsPort: portOf('secure') }));
    await waitFor(() => load!.ok >= 20, 20_000, 'the load to flow');

    const outcome = isOutcome(workers > 1);
    const count = (): { applied: number; rejected: number } => {
      let applied = 0;
      let rejected = 0;
      for (const l of gh.lines) {
        if (!outcome(l)) continue;
        if (l.msg === 'configuration reloaded') applied++;
        else rejected++;
      }
      return { applied, rejected };
    };
    const rewrite = (text: string): void => {
      d.write('next.yaml.tmp', text);
      renameSync(d.file('next.yaml.tmp'), file);
    };
    for (let step = 0; count().applied + count().rejected < reloads; step++) {
      const from = gh.lines.length;
      const okBefore = load.ok;
      if (step % 7 === 6) {
        // A broken file (noticed by the watcher), then SIGHUP: both are rejected.
        rewrite(invalid(step, a, workers, certs));
      } else if (step % 3 === 0) {
        // SIGHUP alone: the file did not change since the last reload.
        process.kill(gh.child.pid!, 'SIGHUP');
      } else if (step % 3 === 1) {
        rewrite(variant(step, a, b, workers, certs));
      } else {
        rewrite(variant(step, a, b, workers, certs));
        process.kill(gh.child.pid!, 'SIGHUP');
      }
      await gh.waitForLog((l) => outcome(l), `reload ${step}`, { from, ms: 20_000 });
      // Traffic keeps flowing between reloads, so that each one meets requests in flight.
      await waitFor(() => load!.ok > okBefore, 10_000, 'requests to complete after the reload');
    }
    const counted = count();
    assert.ok(counted.rejected > 0, 'some reloads were rejected');
    assert.ok(counted.applied > reloads / 2, JSON.stringify(counted));

    // The last valid configuration (not a broken file) is in place before the load stops.
    rewrite(variant(1, a, b, workers, certs));
    const from = gh.lines.length;
    process.kill(gh.child.pid!, 'SIGHUP');
    await gh.waitForLog((l) => outcome(l) && l.msg === 'configuration reloaded', 'the final reload', {
      from,
    });
    const okBefore = load.ok;
    await waitFor(() => load!.ok > okBefore + 20, 10_000, 'requests after the final reload');
    await load.stop();
    assert.deepEqual(load.failures(), {}, load.report());
    for (const kind of Object.keys(load.tally)) assert.ok((load.tally[kind]?.ok ?? 0) > 0, load.report());
    assert.ok(a.served > 0 && b.served > 0, 'both backends served');
    assert.equal(gh.child.exitCode, null, 'the gateway is still running');
  } finally {
    await load?.stop();
    await gh.kill();
    await a.close();
    await b.close();
    d.remove();
  }
}

test('100 reloads (SIGHUP, file changes, rejected configs) under concurrent load fail no request', {
  timeout: 180_000,
}, async () => {
  await reloadsUnderLoad(1, 100);
});

test('30 reloads under concurrent load with server.workers: 2 fail no request', {
  timeout: 180_000,
}, async () => {
  await reloadsUnderLoad(2, 30);
});

/** A JWKS endpoint that holds every request until `release()`, so a token waits in the access stage. */
async function startHeldJwks(
  jwk: object,
): Promise<{ url: string; asked: number; release(): void; close(): Promise<void> }> {
  const waiting: ServerResponse[] = [];
  let released = false;
  const answer = (res: ServerResponse): void => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ keys: [jwk] }));
  };
  const state = { asked: 0 };
  const server = createServer((_req: IncomingMessage, res: ServerResponse) => {
    state.asked++;
    if (released) answer(res);
    else waiting.push(res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    get asked() {
      return state.asked;
    },
    release() {
      released = true;
      for (const res of waiting.splice(0)) answer(res);
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * A gateway (in this process) with a bearer-token route to upstream `app`, whose server a reload
 * changes from backend `a` to backend `b`; tokens are verified with keys from a held JWKS.
 */
async function gatewayWithHeldKeys(t: import('node:test').TestContext, websocket: boolean) {
  const key = await makeKey('k1', 'ES256');
  const jwks = await startHeldJwks(key.publicJwk);
  const a = await startEchoBackend('a');
  const b = await startEchoBackend('b');
  const d = tempDir();
  const config = (backend: string): string => `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
server: { drainTimeout: 10s }
logging: { access: false }
identity:
  bearer: [{ issuer: "${jwks.url}", jwksUri: "${jwks.url}/jwks", audiences: [api], algorithms: [ES256] }]
upstreams:
  app: { servers: [{ url: "${backend}" }] }
routes:
  - { name: all, upstream: app, websocket: ${websocket}, policy: { allow: [{ authMethod: [bearer] }] } }
`;
  const file = d.write('gatehouse.yaml', config(a.url));
  const gw = await Gateway.start({ configFile: file, logger: memoryLogger().logger, watch: false });
  t.after(async () => {
    jwks.release();
    await gw.shutdown();
    await a.close();
    await b.close();
    await jwks.close();
    d.remove();
  });
  const token = await new SignJWT({ sub: 'agent:etl', aud: 'api' })
    .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
    .setIssuer(jwks.url)
    .setIssuedAt()
    .setExpirationTime('1h')
    .sign(key.privateKey);
  return {
    gw,
    jwks,
    token,
    port: gw.address('plain')!.port,
    /** Points `app` at backend `b` and reloads; the pool of `a` is retired. */
    async moveToB(): Promise<void> {
      d.write('gatehouse.yaml', config(b.url));
      const result = await gw.reload();
      assert.equal(result.ok, true, JSON.stringify(result));
      // The retired pool's drain runs meanwhile (it used to close the pool after 100 ms).
      await new Promise((resolve) => setTimeout(resolve, 500));
    },
  };
}

/** An HTTP and WebSocket backend that answers with its name. */
async function startEchoBackend(name: string): Promise<{ url: string; close(): Promise<void> }> {
  const server = createServer((req, res) => {
    req.resume();
    res.end(JSON.stringify({ backend: name }));
  });
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => ws.send(name));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      for (const c of wss.clients) c.terminate();
      wss.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

test('reload: a request still verifying its token when its upstream is replaced is answered by that upstream', {
  timeout: 60_000,
}, async (t) => {
  const { jwks, token, port, moveToB } = await gatewayWithHeldKeys(t, false);
  const pending = fetch(`http://127.0.0.1:${port}/data`, {
    headers: { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(30_000),
  });
  await waitFor(() => jwks.asked === 1, 10_000, 'the token to wait for the keys');
  await moveToB();
  jwks.release();
  const res = await pending;
  // Admitted under the old configuration, it is served by the old configuration's server.
  assert.equal(res.status, 200, await res.clone().text());
  assert.deepEqual(await res.json(), { backend: 'a' });
  // New requests go to the new one.
  const next = await fetch(`http://127.0.0.1:${port}/data`, {
    headers: { authorization: `Bearer ${token}` },
  });
  assert.deepEqual(await next.json(), { backend: 'b' });
});

test('reload: a WebSocket handshake still verifying its token when its upstream is replaced is tunnelled', {
  timeout: 60_000,
}, async (t) => {
  const { jwks, token, port, moveToB } = await gatewayWithHeldKeys(t, true);
  const ws = new WebSocket(`ws://127.0.0.1:${port}/live`, {
    headers: { authorization: `Bearer ${token}` },
    handshakeTimeout: 30_000,
  });
  t.after(() => ws.terminate());
  const first = new Promise<string>((resolve, reject) => {
    ws.once('message', (data) => resolve(data.toString()));
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`status ${res.statusCode}`)));
  });
  await waitFor(() => jwks.asked === 1, 10_000, 'the handshake to wait for the keys');
  await moveToB();
  jwks.release();
  assert.equal(await first, 'a');
  // Closed here, so that the gateway's shutdown does not wait for the tunnel.
  await new Promise((resolve) => {
    ws.once('close', resolve);
    ws.terminate();
  });
});

/**
 * WebSocket attacks: cross-site WebSocket hijacking with a real session (a real OpenID provider, the
 * gateway's own sign-in), upgrade smuggling (`h2c`, non-101 answers, a 101 nobody asked for), malformed
 * handshakes, data before the 101, huge frames, half-closed and vanishing peers, reserved paths. Real
 * WebSocket clients and servers (`ws`) and raw sockets where a client must misbehave.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net';
import { type TestContext, test } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { generateApiKey } from '../src/identity/apikeys.js';
import { registry } from '../src/observe/metrics.js';
import { spawnCli, tempDir } from './helpers/gateway.js';
import { makePki } from './helpers/identity.js';
import { listenUntilEnd } from './helpers/listen.js';
import { startIdp } from './helpers/oidc.js';
import { config, startGateway, type TestGateway, waitFor } from './helpers/proxy.js';
import { signInOverHttp } from './helpers/signin.js';

const SECRET = 'attack-websocket-session-secret-0123456789';
const HOST = 'app.gatehouse.test';

/** A `ws` echo server that records every handshake's headers and path. */
interface WsBackend {
  readonly url: string;
  readonly handshakes: Array<{ path: string; headers: http.IncomingHttpHeaders }>;
  readonly server: http.Server;
  readonly wss: WebSocketServer;
}

async function startWsBackend(t: TestContext): Promise<WsBackend> {
  const handshakes: WsBackend['handshakes'] = [];
  const server = http.createServer((_req, res) => res.end('plain'));
  const wss = new WebSocketServer({ server, maxPayload: 64 * 1024 * 1024 });
  wss.on('connection', (ws, req) => {
    handshakes.push({ path: req.url ?? '', headers: req.headers });
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(async () => {
    for (const c of wss.clients) c.terminate();
    wss.close();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, handshakes, server, wss };
}

/** The outcome of a handshake: 101, or the refusal's status, code and headers. */
interface Handshake {
  status: number;
  body: string;
  headers: http.IncomingHttpHeaders;
  ws: WebSocket | undefined;
}

/** Opens a WebSocket to the gateway on 127.0.0.1 with `Host: host`; the socket is closed after the test. */
function handshake(
  t: TestContext,
  gw: TestGateway,
  path: string,
  opts: { host?: string; origin?: string; headers?: Record<string, string> } = {},
): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...opts.headers };
    headers.host = opts.host ?? `${HOST}:${gw.port()}`;
    if (opts.origin !== undefined) headers.origin = opts.origin;
    const ws = new WebSocket(`ws://127.0.0.1:${gw.port()}${path}`, { headers, handshakeTimeout: 10_000 });
    t.after(() => ws.terminate());
    ws.once('open', () => resolve({ status: 101, body: '', headers: {}, ws }));
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c: Buffer) => {
        body += c.toString();
      });
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body, headers: res.headers, ws: undefined }),
      );
    });
    ws.once('error', reject);
  });
}

function nextMessage(ws: WebSocket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    ws.once('message', (data) => resolve(data as Buffer));
    ws.once('error', reject);
  });
}

/**
 * A gateway with OIDC sign-in against a real provider and `alice` signed in: her session cookie.
 * The provider needs the gateway's port for its redirect URI, so the issuer is set by a reload.
 */
async function signedIn(
  t: TestContext,
  upstreams: Record<string, unknown>,
  routes: unknown[],
  extra: Record<string, unknown> = {},
): Promise<{ gw: TestGateway; cookie: string; origin: string }> {
  const build = (issuer: string, clientSecret: string) => ({
    ...config(upstreams, routes, extra),
    identity: {
      session: { secrets: [SECRET] },
      providers: [
        {
          name: 'corp',
          type: 'oidc',
          issuer,
          clientId: 'gatehouse',
          clientSecret,
          scopes: ['openid', 'email', 'profile', 'groups'],
        },
      ],
      ...(extra.identity as Record<string, unknown> | undefined),
    },
    policies: { eng: { allow: [{ name: 'engineers', groups: ['data-eng'] }] } },
  });
  const gw = await startGateway(t, build('http://127.0.0.1:9', 'not-yet'));
  const origin = `http://${HOST}:${gw.port()}`;
  const idp = await startIdp(t, { redirectUris: [`${origin}/.gatehouse/callback`] });
  await gw.reload(build(idp.issuer, idp.clientSecret));
  const { cookie } = await signInOverHttp(origin, 'alice');
  return { gw, cookie, origin };
}

function codeOf(h: Handshake): string | undefined {
  return /\((GH_[A-Z_]+)\)/.exec(h.body)?.[1];
}

test('CSWSH: a session-authenticated handshake from any other Origin is refused with 403 GH_WEBSOCKET_ORIGIN', async (t) => {
  const backend = await startWsBackend(t);
  const { gw, cookie, origin } = await signedIn(t, { ws: { servers: [{ url: backend.url }] } }, [
    {
      name: 'live',
      match: { path: '/live' },
      upstream: 'ws',
      policy: 'eng',
      identityHeaders: true,
      websocket: true,
      cors: { origins: ['https://dashboard.example'], credentials: true },
    },
  ]);
  const port = gw.port();
  const hostile = [
    'http://evil.example',
    'null',
    `http://${HOST}.evil.example:${port}`,
    `http://evil.gatehouse.test:${port}`,
    `https://${HOST}:${port}`,
    `http://${HOST}:${port + 1}`,
    `http://${HOST}`,
    `http://${HOST}:${port}/live`,
    `http://alice@${HOST}:${port}`,
    `file://${HOST}`,
    `http://${HOST}:${port}.evil.example`,
    'https://dashboard.example.evil.example',
    'http://dashboard.example',
    '',
    'garbage',
  ];
  for (const o of hostile) {
    const h = await handshake(t, gw, '/live/feed', { origin: o, headers: { cookie } });
    assert.equal(h.status, 403, `Origin ${JSON.stringify(o)}`);
    assert.equal(codeOf(h), 'GH_WEBSOCKET_ORIGIN', o);
  }
  // The client's own X-Forwarded-Proto does not make an https page its origin (no trusted proxy here).
  const spoofed = await handshake(t, gw, '/live/feed', {
    origin: `https://${HOST}:${port}`,
    headers: { cookie, 'x-forwarded-proto': 'https' },
  });
  assert.equal(spoofed.status, 403);
  hostile.push('spoofed X-Forwarded-Proto');
  // Two Origin lines, the route's own first: not an origin at all.
  const twice = await rawClient(t, port);
  twice.socket.write(
    upgradeRequest(
      '/live/feed',
      `Origin: ${origin}\r\nOrigin: http://evil.example\r\nCookie: ${cookie}\r\n`,
    ).replace(`Host: ${HOST}`, `Host: ${HOST}:${port}`),
  );
  await twice.closed;
  assert.match(twice.data(), /^HTTP\/1\.1 403 .*GH_WEBSOCKET_ORIGIN/s);
  hostile.push('two Origin lines');
  assert.equal(backend.handshakes.length, 0, 'no hostile handshake reached the backend');

  // The route's own origin, a listed CORS origin (any case), and a client that is no browser.
  for (const o of [origin, origin.toUpperCase(), 'https://dashboard.example', 'https://DASHBOARD.example']) {
    const h = await handshake(t, gw, '/live/feed', { origin: o, headers: { cookie } });
    assert.equal(h.status, 101, o);
  }
  assert.equal((await handshake(t, gw, '/live/feed', { headers: { cookie } })).status, 101);
  assert.equal(backend.handshakes.length, 5);
  assert.ok(backend.handshakes.every((s) => s.headers['x-gatehouse-user'] === 'alice'));
  await waitFor(
    () => gw.access.filter((e) => e.error === 'GH_WEBSOCKET_ORIGIN').length === hostile.length,
    'the refusals in the access log',
  );
  const refusal = gw.access.find((e) => e.error === 'GH_WEBSOCKET_ORIGIN')!;
  assert.equal(refusal.status, 403);
  assert.equal(refusal.identity, 'alice', 'the log says whose session was tried');
});

test("CSWSH: the route's hosts decide, exact or *.wildcard on label boundaries, with the Host's port", async (t) => {
  const backend = await startWsBackend(t);
  const { gw, cookie } = await signedIn(t, { ws: { servers: [{ url: backend.url }] } }, [
    {
      name: 'live',
      match: { host: [HOST, '*.apps.gatehouse.test'], path: '/live' },
      upstream: 'ws',
      policy: 'eng',
      websocket: true,
    },
    { name: 'other', upstream: 'ws', public: true },
  ]);
  const port = gw.port();
  const allowed = [
    `http://${HOST}:${port}`,
    `http://x.apps.gatehouse.test:${port}`,
    `http://a.b.apps.gatehouse.test:${port}`,
  ];
  const refused = [
    `http://apps.gatehouse.test:${port}`,
    `http://evilapps.gatehouse.test:${port}`,
    `http://x.apps.gatehouse.test.evil.example:${port}`,
    `http://other.gatehouse.test:${port}`,
    `http://x.apps.gatehouse.test:${port + 1}`,
    `https://x.apps.gatehouse.test:${port}`,
  ];
  for (const o of allowed) {
    const h = await handshake(t, gw, '/live', { origin: o, headers: { cookie } });
    assert.equal(h.status, 101, o);
  }
  for (const o of refused) {
    const h = await handshake(t, gw, '/live', { origin: o, headers: { cookie } });
    assert.equal(h.status, 403, o);
    assert.equal(codeOf(h), 'GH_WEBSOCKET_ORIGIN', o);
  }
  // Through a sibling host of the route, its own origin is one of the route's hosts too.
  const sibling = await handshake(t, gw, '/live', {
    host: `x.apps.gatehouse.test:${port}`,
    origin: `http://${HOST}:${port}`,
    headers: { cookie },
  });
  assert.equal(sibling.status, 101);
  assert.equal(backend.handshakes.length, allowed.length + 1);
});

test("CSWSH: a route whose match.host is '*' matches any host, so its own Host is its origin, as with no host", async (t) => {
  const backend = await startWsBackend(t);
  const { gw, cookie, origin } = await signedIn(t, { ws: { servers: [{ url: backend.url }] } }, [
    { name: 'live', match: { host: '*', path: '/live' }, upstream: 'ws', policy: 'eng', websocket: true },
  ]);
  const own = await handshake(t, gw, '/live', { origin, headers: { cookie } });
  assert.equal(own.status, 101, `${own.status} ${own.body}`);
  const foreign = await handshake(t, gw, '/live', { origin: 'http://evil.example', headers: { cookie } });
  assert.equal(foreign.status, 403);
  assert.equal(codeOf(foreign), 'GH_WEBSOCKET_ORIGIN');
  assert.equal(backend.handshakes.length, 1);
});

test('CSWSH: bearer and API-key handshakes are not affected by Origin', async (t) => {
  const backend = await startWsBackend(t);
  const key = generateApiKey('etl');
  const { gw, cookie } = await signedIn(
    t,
    { ws: { servers: [{ url: backend.url }] } },
    [
      {
        name: 'live',
        upstream: 'ws',
        policy: { allow: [{ groups: ['agents', 'data-eng'] }] },
        websocket: true,
      },
    ],
    { identity: { apiKeys: [{ id: 'etl', hash: key.hashLine, subject: 'agent:etl', groups: ['agents'] }] } },
  );
  const evil = 'http://evil.example';
  assert.equal(
    (await handshake(t, gw, '/', { origin: evil, headers: { 'x-api-key': key.key } })).status,
    101,
  );
  const bearer = await handshake(t, gw, '/', {
    origin: evil,
    headers: { authorization: `Bearer ${key.key}` },
  });
  assert.equal(bearer.status, 101);
  // An API key next to a session cookie decides (it comes first): no Origin check applies.
  const both = await handshake(t, gw, '/', { origin: evil, headers: { 'x-api-key': key.key, cookie } });
  assert.equal(both.status, 101);
  assert.equal(backend.handshakes.at(-1)?.headers['x-gatehouse-assertion'] !== undefined, true);
  const session = await handshake(t, gw, '/', { origin: evil, headers: { cookie } });
  assert.equal(session.status, 403);
  assert.equal(backend.handshakes.length, 3);
});

test('CSWSH: on a public route a cross-site handshake is served without the session identity', async (t) => {
  const backend = await startWsBackend(t);
  const { gw, cookie, origin } = await signedIn(t, { ws: { servers: [{ url: backend.url }] } }, [
    { name: 'chat', upstream: 'ws', public: true, identityHeaders: true, websocket: true },
  ]);
  const own = await handshake(t, gw, '/chat', { origin, headers: { cookie } });
  assert.equal(own.status, 101);
  const mine = backend.handshakes.at(-1)!.headers;
  assert.equal(mine['x-gatehouse-user'], 'alice');
  assert.ok(mine['x-gatehouse-assertion']);

  const cross = await handshake(t, gw, '/chat', { origin: 'http://evil.example', headers: { cookie } });
  assert.equal(cross.status, 101, 'a public route serves anyone');
  const theirs = backend.handshakes.at(-1)!.headers;
  assert.equal(theirs['x-gatehouse-user'], undefined, 'but not as the browser user');
  assert.equal(theirs['x-gatehouse-assertion'], undefined);
  assert.ok(!String(theirs.cookie ?? '').includes('_gatehouse'), 'and never with the session cookie');
  cross.ws!.terminate();
  await waitFor(
    () => gw.access.filter((e) => e.protocol === 'websocket' && e.status === 101).length >= 1,
    'a tunnel log line',
  );
});

test('CSWSH: a client certificate is an ambient credential too; behind a trusted proxy its scheme counts', async (t) => {
  const backend = await startWsBackend(t);
  const dir = tempDir();
  t.after(() => dir.remove());
  const pki = makePki(dir.dir);
  const gw = await startGateway(t, {
    ...config({ ws: { servers: [{ url: backend.url }] } }, [
      { name: 'live', upstream: 'ws', policy: { allow: [{ authMethod: ['mtls'] }] }, websocket: true },
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
  });
  const port = gw.port('mtls');
  const open = (origin: string | undefined) =>
    new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(`wss://localhost:${port}/live`, {
        ca: pki.ca,
        cert: pki.clientCert,
        key: pki.clientKey,
        ...(origin === undefined ? {} : { origin }),
        handshakeTimeout: 10_000,
      });
      t.after(() => ws.terminate());
      ws.once('open', () => resolve(101));
      ws.once('unexpected-response', (_req, res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      ws.once('error', reject);
    });
  assert.equal(await open('https://evil.example'), 403);
  assert.equal(await open(`http://localhost:${port}`), 403, 'the listener is https');
  assert.equal(await open(`https://localhost:${port}`), 101);
  assert.equal(await open(undefined), 101, 'a machine client sends no Origin');
  assert.equal(backend.handshakes.length, 2);
  assert.ok(backend.handshakes.every((h) => h.headers['x-gatehouse-assertion'] !== undefined));

  // Behind a TLS-terminating proxy in server.trustedProxies, the page's scheme is its X-Forwarded-Proto.
  const { gw: behind, cookie } = await signedIn(
    t,
    { ws: { servers: [{ url: backend.url }] } },
    [{ name: 'live', upstream: 'ws', policy: 'eng', websocket: true }],
    { server: { trustedProxies: ['127.0.0.0/8'] } },
  );
  const https = `https://${HOST}:${behind.port()}`;
  const xfp = { cookie, 'x-forwarded-proto': 'https' };
  assert.equal((await handshake(t, behind, '/', { origin: https, headers: xfp })).status, 101);
  assert.equal((await handshake(t, behind, '/', { origin: https, headers: { cookie } })).status, 403);
  const plain = `http://${HOST}:${behind.port()}`;
  assert.equal((await handshake(t, behind, '/', { origin: plain, headers: xfp })).status, 403);
});

// ---------------------------------------------------------------------------------------------
// Smuggling and malformed handshakes

/** A raw TCP backend that records every byte it receives and answers each connection with `reply`. */
async function startRawBackend(
  t: TestContext,
  reply: (socket: Socket, first: string) => void,
): Promise<{ url: string; received: string[]; server: Server }> {
  const received: string[] = [];
  // allowHalfOpen: a FIN from the gateway does not make this backend close its side.
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    let data = '';
    let answered = false;
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => {
      data += chunk.toString('latin1');
      received.push(chunk.toString('latin1'));
      if (!answered && data.includes('\r\n\r\n')) {
        answered = true;
        reply(socket, data);
      }
    });
  });
  return { url: `http://127.0.0.1:${await listenUntilEnd(t, server)}`, received, server };
}

/** A raw client connection to the gateway: everything it received, and when it closed. */
interface RawClient {
  socket: Socket;
  readonly data: () => string;
  readonly closed: Promise<void>;
}

function rawClient(t: TestContext, port: number): Promise<RawClient> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let data = '';
    socket.on('data', (c: Buffer) => {
      data += c.toString('latin1');
    });
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.once('error', () => {});
    socket.once('connect', () => resolve({ socket, data: () => data, closed }));
    socket.once('error', reject);
    t.after(() => socket.destroy());
  });
}

const KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
const accept = (key: string) =>
  createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');

function upgradeRequest(path = '/', extra = ''): string {
  return (
    `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${KEY}\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`
  );
}

test('smuggling: Upgrade: h2c is refused and never forwarded', async (t) => {
  const backend = await startRawBackend(t, (s) =>
    s.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n'),
  );
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: backend.url }] } }, [{ name: 'all', upstream: 'app', websocket: true }]),
  );
  const variants = [
    'Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n',
    'Upgrade: h2c\r\nConnection: Upgrade\r\n',
    'Upgrade: websocket, h2c\r\nConnection: Upgrade\r\n',
    'Upgrade: h2c, websocket\r\nConnection: Upgrade\r\n',
    'Upgrade: HTTP/2.0\r\nConnection: Upgrade\r\n',
    'Upgrade: TLS/1.2\r\nConnection: Upgrade\r\n',
  ];
  for (const v of variants) {
    const c = await rawClient(t, gw.port());
    c.socket.write(`GET / HTTP/1.1\r\nHost: ${HOST}\r\n${v}\r\n`);
    await c.closed;
    assert.match(c.data(), /^HTTP\/1\.1 400 /, v);
    assert.match(c.data(), /GH_UNSUPPORTED_UPGRADE/, v);
  }
  assert.deepEqual(backend.received, [], 'nothing reached the backend');
});

test('smuggling: a backend that answers the upgrade with 200 or 426 gets no raw tunnel from the client', async (t) => {
  for (const status of ['200 OK', '426 Upgrade Required']) {
    const backend = await startRawBackend(t, (s) =>
      s.write(`HTTP/1.1 ${status}\r\nContent-Length: 2\r\nSec-WebSocket-Version: 13\r\n\r\nno`),
    );
    const gw = await startGateway(
      t,
      config({ app: { servers: [{ url: backend.url }] } }, [
        { name: 'all', upstream: 'app', websocket: true },
      ]),
    );
    const c = await rawClient(t, gw.port());
    c.socket.write(upgradeRequest('/public'));
    await waitFor(() => c.data().includes('\r\n\r\n'), 'the relayed answer');
    assert.ok(c.data().startsWith(`HTTP/1.1 ${status}`), c.data());
    // The client goes on as if a tunnel existed: a request for an internal path.
    c.socket.write('GET /internal HTTP/1.1\r\nHost: localhost\r\n\r\n');
    await c.closed;
    assert.ok(!backend.received.join('').includes('/internal'), 'the smuggled request reached the backend');
  }
});

test('smuggling: a 101 the client never asked for opens no tunnel', async (t) => {
  const backend = await startRawBackend(t, (s) =>
    s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nRAWBYTES'),
  );
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: backend.url }] } }, [{ name: 'all', upstream: 'app', websocket: true }]),
  );
  const c = await rawClient(t, gw.port());
  // Upgrade without `Connection: upgrade` is no upgrade: Upgrade is hop-by-hop and goes no further.
  c.socket.write(`GET /plain HTTP/1.1\r\nHost: ${HOST}\r\nUpgrade: websocket\r\n\r\n`);
  await waitFor(() => c.data().includes('\r\n\r\n'), 'an answer');
  assert.match(c.data(), /^HTTP\/1\.1 502 /);
  assert.doesNotMatch(c.data(), /RAWBYTES/);
  assert.doesNotMatch(backend.received[0]!, /upgrade/i);
  // The connection is still HTTP: what the client sends next is a request, with the gateway's headers.
  c.socket.write(`GET /internal HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`);
  await c.closed;
  assert.equal(c.data().split('HTTP/1.1 502 ').length, 3, c.data());
  const second = backend.received.find((r) => r.startsWith('GET /internal'));
  assert.match(second ?? '', /x-forwarded-for: 127\.0\.0\.1/, 'proxied as a request, not written raw');
});

/**
 * A backend that answers a handshake for `/declined` with 403, for `/coded` with a 101 carrying a
 * transfer coding, and for any other path with a 101; `fields` (header lines) go into the first two.
 */
function answeringBackend(t: TestContext, fields: string): ReturnType<typeof startRawBackend> {
  const upgraded = `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept(KEY)}\r\n`;
  return startRawBackend(t, (s, first) => {
    if (first.startsWith('GET /declined'))
      s.end(`HTTP/1.1 403 Forbidden\r\n${fields}Content-Length: 2\r\n\r\nno`);
    else if (first.startsWith('GET /coded')) s.write(`${upgraded}Transfer-Encoding: gzip\r\n\r\n`);
    else s.write(`${upgraded}${fields}\r\n`);
  });
}

/** The head of the gateway's answer to a handshake for `path`, checked to have `status`. */
async function answerHead(t: TestContext, gw: TestGateway, path: string, status: string): Promise<string> {
  const c = await rawClient(t, gw.port());
  c.socket.write(upgradeRequest(path));
  await waitFor(() => c.data().includes('\r\n\r\n'), `the answer to ${path}`);
  c.socket.destroy();
  const head = c.data().slice(0, c.data().indexOf('\r\n\r\n'));
  assert.ok(head.startsWith(`HTTP/1.1 ${status} `), head);
  return head;
}

test("session fixation: a backend's Set-Cookie for the gateway's own cookies is dropped from a 101 and from a declined handshake", async (t) => {
  const backend = await answeringBackend(
    t,
    'Set-Cookie: _gatehouse=attacker-session; Path=/; HttpOnly\r\nset-cookie: _gatehouse_login=x\r\n' +
      'Set-Cookie: app=1; Path=/\r\n',
  );
  const gw = await startGateway(
    t,
    config(
      { app: { servers: [{ url: backend.url }] } },
      [{ name: 'all', upstream: 'app', websocket: true }],
      {
        identity: { session: { secrets: [SECRET] } },
      },
    ),
  );
  for (const [path, status] of [
    ['/live', '101'],
    ['/declined', '403'],
  ] as const) {
    const head = await answerHead(t, gw, path, status);
    assert.doesNotMatch(head, /_gatehouse/i, `${path}: ${head}`);
    assert.match(head, /Set-Cookie: app=1/, 'the application keeps its own cookies');
  }
  // A 101 with a field no answer may carry is refused like any other invalid answer: no tunnel.
  const c = await rawClient(t, gw.port());
  c.socket.write(upgradeRequest('/coded'));
  await c.closed;
  assert.match(c.data(), /^HTTP\/1\.1 502 [\s\S]*GH_UPSTREAM_INVALID/);
  await waitFor(() => gw.access.some((e) => e.path === '/coded'), 'the refusal in the access log');
  const logged = gw.access.find((e) => e.path === '/coded')!;
  assert.deepEqual([logged.status, logged.error], [502, 'GH_UPSTREAM_INVALID']);
});

test("a route's response header edits apply to a 101 and to a declined handshake, as to any answer", async (t) => {
  const backend = await answeringBackend(t, 'X-Backend-Internal: db-7.internal\r\nServer: backend/1.2\r\n');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: backend.url }] } }, [
      {
        name: 'all',
        upstream: 'app',
        websocket: true,
        headers: {
          response: { set: { 'X-Frame-Options': 'DENY' }, remove: ['X-Backend-Internal', 'server'] },
        },
      },
    ]),
  );
  for (const [path, status] of [
    ['/live', '101'],
    ['/declined', '403'],
  ] as const) {
    const head = await answerHead(t, gw, path, status);
    assert.doesNotMatch(head, /X-Backend-Internal|backend\/1\.2/i, `${path}: ${head}`);
    assert.match(head, /X-Frame-Options: DENY/, `${path}: ${head}`);
  }
});

test('handshake: a missing or malformed Sec-WebSocket-Key, another method or version is refused before the backend', async (t) => {
  const backend = await startWsBackend(t);
  const gw = await startGateway(
    t,
    config({ ws: { servers: [{ url: backend.url }] } }, [{ name: 'live', upstream: 'ws', websocket: true }]),
  );
  const base = `Host: ${HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n`;
  const cases: Array<[string, number, string]> = [
    [`GET / HTTP/1.1\r\n${base}Sec-WebSocket-Version: 13\r\n\r\n`, 400, 'GH_BAD_WEBSOCKET_HANDSHAKE'],
    [
      `GET / HTTP/1.1\r\n${base}Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      400,
      'GH_BAD_WEBSOCKET_HANDSHAKE',
    ],
    [
      `GET / HTTP/1.1\r\n${base}Sec-WebSocket-Key: ${KEY}, ${KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      400,
      'GH_BAD_WEBSOCKET_HANDSHAKE',
    ],
    [
      `POST / HTTP/1.1\r\n${base}Sec-WebSocket-Key: ${KEY}\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n`,
      400,
      'GH_BAD_FRAMING',
    ],
    [`GET / HTTP/1.1\r\n${base}Sec-WebSocket-Key: ${KEY}\r\n\r\n`, 426, 'GH_WEBSOCKET_VERSION'],
    [
      `GET / HTTP/1.1\r\n${base}Sec-WebSocket-Key: ${KEY}\r\nSec-WebSocket-Version: 8\r\n\r\n`,
      426,
      'GH_WEBSOCKET_VERSION',
    ],
  ];
  for (const [text, status, code] of cases) {
    const c = await rawClient(t, gw.port());
    c.socket.write(text);
    await c.closed;
    assert.ok(c.data().startsWith(`HTTP/1.1 ${status} `), `${JSON.stringify(text)}: ${c.data()}`);
    assert.ok(c.data().includes(`(${code})`), text);
    if (status === 426) assert.match(c.data(), /\r\nSec-WebSocket-Version: 13\r\n/);
  }
  assert.equal(backend.handshakes.length, 0);
});

test('handshake: an upgrade on a route without websocket, or under /.gatehouse/, never reaches a backend', async (t) => {
  const backend = await startWsBackend(t);
  const gw = await startGateway(t, {
    ...config({ ws: { servers: [{ url: backend.url }] } }, [
      { name: 'live', match: { path: '/live' }, upstream: 'ws', websocket: true },
      { name: 'plain', upstream: 'ws' },
    ]),
  });
  const plain = await handshake(t, gw, '/other');
  assert.equal(plain.status, 403);
  assert.equal(codeOf(plain), 'GH_WEBSOCKET_NOT_ALLOWED');
  for (const path of [
    '/.gatehouse/login',
    '/.gatehouse/jwks.json',
    '/%2Egatehouse/callback',
    '/live/../.gatehouse/x',
  ]) {
    const h = await handshake(t, gw, path);
    assert.equal(h.status, 404, path);
    assert.equal(codeOf(h), 'GH_NOT_FOUND', path);
  }
  assert.equal(backend.handshakes.length, 0);
});

test('handshake: a refused handshake is closed even when the client never closes its side', async (t) => {
  const backend = await startWsBackend(t);
  const gw = await startGateway(
    t,
    config({ ws: { servers: [{ url: backend.url }] } }, [
      {
        name: 'live',
        upstream: 'ws',
        policy: { allow: [{ groups: ['x'] }] },
        websocket: { finTimeout: '300ms' },
      },
    ]),
  );
  const c = await rawClient(t, gw.port());
  c.socket.allowHalfOpen = true;
  c.socket.write(upgradeRequest('/'));
  await waitFor(() => c.data().includes('\r\n\r\n'), 'the refusal');
  assert.match(c.data(), /^HTTP\/1\.1 401 /);
  // The client keeps writing and never closes its side: the gateway still lets go of the connection,
  // which the client learns when a write is answered with a reset.
  const writer = setInterval(() => c.socket.write('more bytes that nobody reads'), 50);
  t.after(() => clearInterval(writer));
  await waitFor(() => c.socket.destroyed, 'the gateway to let go of the connection', 10_000);
  clearInterval(writer);
});

// ---------------------------------------------------------------------------------------------
// Tunnels: early data, huge frames, half-closed and vanishing peers, shutdown

/** A raw backend that completes the handshake after `delayMs`, then records (and never answers) data. */
async function startTunnelBackend(t: TestContext, delayMs = 0) {
  const tunnels: Socket[] = [];
  const backend = await startRawBackend(t, (socket, first) => {
    const key = /sec-websocket-key: *(\S+)/i.exec(first)?.[1] ?? '';
    setTimeout(() => {
      socket.write(
        'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
          `Sec-WebSocket-Accept: ${accept(key)}\r\n\r\n`,
      );
      tunnels.push(socket);
    }, delayMs);
  });
  return { ...backend, tunnels, after: () => backend.received.join('').split('\r\n\r\n').slice(1).join('') };
}

/** The value of a metric series in the process registry (0 when absent). */
async function metric(name: string, labels: Record<string, string>): Promise<number> {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of (await registry.metrics()).split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const inner = line.slice(name.length + 1, line.indexOf('}'));
    if (want.every((w) => inner.split(',').includes(w))) return Number(line.slice(line.indexOf('}') + 1));
  }
  return 0;
}

test('tunnel: data the client sends before the 101 reaches the backend after the handshake, in order', async (t) => {
  const backend = await startTunnelBackend(t, 300);
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: backend.url }] } }, [
      { name: 'early', upstream: 'app', websocket: true },
    ]),
  );
  const c = await rawClient(t, gw.port());
  c.socket.write(`${upgradeRequest('/')}EARLY-1|`);
  setTimeout(() => c.socket.write('EARLY-2|'), 100);
  await waitFor(() => c.data().includes('\r\n\r\n'), 'the 101');
  assert.match(c.data(), /^HTTP\/1\.1 101 /);
  c.socket.write('AFTER|');
  await waitFor(() => backend.after() === 'EARLY-1|EARLY-2|AFTER|', `early data, got ${backend.after()}`);
});

test('tunnel: a huge message passes intact both ways, with backpressure', async (t) => {
  const backend = await startWsBackend(t);
  const gw = await startGateway(
    t,
    config({ ws: { servers: [{ url: backend.url }] } }, [{ name: 'huge', upstream: 'ws', websocket: true }]),
  );
  const h = await handshake(t, gw, '/');
  const ws = h.ws!;
  const big = Buffer.alloc(16 * 1024 * 1024);
  for (let i = 0; i < big.length; i += 4096) big.writeUInt32BE(i, i);
  const echoed = nextMessage(ws);
  ws.send(big);
  const back = await echoed;
  assert.equal(back.length, big.length);
  assert.equal(
    createHash('sha256').update(back).digest('hex'),
    createHash('sha256').update(big).digest('hex'),
  );
});

test('half-closed: the client ends its side and the upstream ignores it: the tunnel closes after finTimeout', async (t) => {
  const backend = await startTunnelBackend(t);
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: backend.url }] } }, [
      { name: 'client-fin', upstream: 'app', websocket: { idleTimeout: '1h', finTimeout: '300ms' } },
    ]),
  );
  const before = await metric('gatehouse_websocket_closes_total', {
    route: 'client-fin',
    cause: 'fin-timeout',
  });
  const c = await rawClient(t, gw.port());
  c.socket.allowHalfOpen = true;
  c.socket.write(upgradeRequest('/'));
  await waitFor(() => c.data().includes('\r\n\r\n') && backend.tunnels.length === 1, 'the tunnel');
  const upstream = backend.tunnels[0]!;
  c.socket.end();
  await waitFor(() => upstream.readableEnded, 'the FIN to reach the backend');
  assert.equal(await metric('gatehouse_websocket_half_closed', { route: 'client-fin' }), 1);
  // The backend ignores the FIN and keeps its side open (and writing); the idle timeout is an hour away.
  const writer = setInterval(() => upstream.write('still here'), 50);
  t.after(() => clearInterval(writer));
  await c.closed;
  await waitFor(() => upstream.destroyed, 'the gateway to close the upstream connection', 10_000);
  clearInterval(writer);
  await waitFor(() => gw.access.some((e) => e.route === 'client-fin'), 'the log line');
  assert.equal(gw.access.find((e) => e.route === 'client-fin')?.error, 'GH_WEBSOCKET_FIN_TIMEOUT');
  assert.equal(
    await metric('gatehouse_websocket_closes_total', { route: 'client-fin', cause: 'fin-timeout' }),
    before + 1,
  );
  assert.equal(await metric('gatehouse_websocket_half_closed', { route: 'client-fin' }), 0);
  assert.equal(await metric('gatehouse_active_websockets', { route: 'client-fin' }), 0);
});

test('half-closed: the upstream ends its side and the client ignores it: the tunnel closes after finTimeout', async (t) => {
  const backend = await startTunnelBackend(t);
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: backend.url }] } }, [
      { name: 'server-fin', upstream: 'app', websocket: { idleTimeout: '1h', finTimeout: '300ms' } },
    ]),
  );
  const c = await rawClient(t, gw.port());
  c.socket.allowHalfOpen = true;
  c.socket.write(upgradeRequest('/'));
  await waitFor(() => c.data().includes('\r\n\r\n') && backend.tunnels.length === 1, 'the tunnel');
  backend.tunnels[0]!.end('LAST-WORDS');
  await waitFor(() => c.socket.readableEnded, 'the FIN to reach the client');
  assert.ok(c.data().endsWith('LAST-WORDS'), 'what the upstream sent before its FIN arrives');
  // The client neither closes nor stops writing: the gateway lets go after the fin timeout.
  const writer = setInterval(() => c.socket.write('still here'), 50);
  t.after(() => clearInterval(writer));
  await waitFor(() => c.socket.destroyed, 'the gateway to close the client connection', 10_000);
  clearInterval(writer);
  await waitFor(() => gw.access.some((e) => e.route === 'server-fin'), 'the log line');
  assert.equal(gw.access.find((e) => e.route === 'server-fin')?.error, 'GH_WEBSOCKET_FIN_TIMEOUT');
});

test('half-closed: a normal close from either side ends the tunnel at once and is counted by cause', async (t) => {
  const backend = await startWsBackend(t);
  const gw = await startGateway(
    t,
    config({ ws: { servers: [{ url: backend.url }] } }, [
      { name: 'closes', upstream: 'ws', websocket: { finTimeout: '1h' } },
    ]),
  );
  const client0 = await metric('gatehouse_websocket_closes_total', { route: 'closes', cause: 'client' });
  const upstream0 = await metric('gatehouse_websocket_closes_total', { route: 'closes', cause: 'upstream' });
  const a = (await handshake(t, gw, '/a')).ws!;
  a.send('hi');
  assert.equal((await nextMessage(a)).toString(), 'hi');
  const aClosed = new Promise<number>((resolve) => a.once('close', (code) => resolve(code)));
  a.close(1000);
  assert.equal(await aClosed, 1000);
  const b = (await handshake(t, gw, '/b')).ws!;
  const bClosed = new Promise<number>((resolve) => b.once('close', (code) => resolve(code)));
  for (const s of backend.wss.clients) s.close(1001, 'going away');
  assert.equal(await bClosed, 1001);
  await waitFor(() => gw.access.filter((e) => e.route === 'closes').length === 2, 'both log lines');
  assert.ok(gw.access.every((e) => e.route !== 'closes' || e.error === undefined));
  assert.equal(
    await metric('gatehouse_websocket_closes_total', { route: 'closes', cause: 'client' }),
    client0 + 1,
  );
  assert.equal(
    await metric('gatehouse_websocket_closes_total', { route: 'closes', cause: 'upstream' }),
    upstream0 + 1,
  );
});

test('tunnel: an upstream that vanishes mid-tunnel closes the client at once; an idle tunnel is closed and counted', async (t) => {
  const backend = await startWsBackend(t);
  const gw = await startGateway(
    t,
    config({ ws: { servers: [{ url: backend.url }] }, down: { servers: [{ url: 'http://127.0.0.1:9' }] } }, [
      { name: 'idle', match: { path: '/idle' }, upstream: 'ws', websocket: { idleTimeout: '300ms' } },
      { name: 'gone', match: { path: '/gone' }, upstream: 'down', websocket: true },
      { name: 'vanish', upstream: 'ws', websocket: true },
    ]),
  );
  // Nothing listens on port 9 (discard): the handshake is answered, not left hanging.
  const down = await handshake(t, gw, '/gone');
  assert.equal(down.status, 502);
  assert.equal(codeOf(down), 'GH_UPSTREAM_CONNECT');
  const ws = (await handshake(t, gw, '/v')).ws!;
  const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
  for (const s of backend.wss.clients) s.terminate();
  assert.equal(await closed, 1006, 'abnormal closure: the connection went away');
  const idle0 = await metric('gatehouse_websocket_closes_total', { route: 'idle', cause: 'idle' });
  const quiet = (await handshake(t, gw, '/idle')).ws!;
  await new Promise<void>((resolve) => quiet.once('close', () => resolve()));
  await waitFor(() => gw.access.some((e) => e.route === 'idle'), 'the idle log line');
  assert.equal(gw.access.find((e) => e.route === 'idle')?.error, 'GH_WEBSOCKET_IDLE');
  assert.equal(await metric('gatehouse_websocket_closes_total', { route: 'idle', cause: 'idle' }), idle0 + 1);
});

test('half-closed: SIGTERM drains promptly when a client has gone and the upstream ignores it', async (t) => {
  const backend = await startTunnelBackend(t);
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gh.yaml',
    `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
server: { drainTimeout: 120s }
logging: { access: false }
upstreams:
  app: { servers: [{ url: "${backend.url}" }] }
routes:
  - { name: live, upstream: app, public: true, websocket: { idleTimeout: 1h, finTimeout: 300ms } }
`,
  );
  const child = spawnCli(['start', '-c', file]);
  let stdout = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
  });
  child.stderr?.resume();
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  await waitFor(() => stdout.includes('"gateway started"'), 'the gateway to start', 30_000);
  const line = stdout.split('\n').find((l) => l.includes('"gateway started"'))!;
  const address = (JSON.parse(line) as { listeners: Array<{ address: string }> }).listeners[0]!.address;
  const c = await rawClient(t, Number(address.split(':').pop()));
  c.socket.allowHalfOpen = true;
  c.socket.write(upgradeRequest('/'));
  await waitFor(() => c.data().includes('\r\n\r\n') && backend.tunnels.length === 1, 'the tunnel');
  c.socket.end();
  child.kill('SIGTERM');
  // Without a bound on the half-closed tunnel, the drain would wait for drainTimeout (120 s).
  let code: number | null | undefined;
  void exited.then((c) => {
    code = c;
  });
  await waitFor(() => code !== undefined, 'the gateway to exit', 30_000);
  assert.equal(code, 0);
});

test('WebSocket family: after the attacks the gateway still serves tunnels and requests', async (t) => {
  const backend = await startWsBackend(t);
  const gw = await startGateway(
    t,
    config({ ws: { servers: [{ url: backend.url }] } }, [{ name: 'live', upstream: 'ws', websocket: true }]),
  );
  for (let i = 0; i < 5; i++) {
    const c = await rawClient(t, gw.port());
    c.socket.write(`GET / HTTP/1.1\r\nHost: ${HOST}\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n`);
    await c.closed;
    const half = await rawClient(t, gw.port());
    half.socket.write(upgradeRequest('/'));
    half.socket.destroy();
  }
  const ws = (await handshake(t, gw, '/ok')).ws!;
  ws.send('still serving');
  assert.equal((await nextMessage(ws)).toString(), 'still serving');
  const plain = await new Promise<number>((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port: gw.port(), path: '/', headers: { host: HOST } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      })
      .on('error', reject);
  });
  assert.equal(plain, 200);
});

/**
 * Adversarial suite, path and authorization confusion: an attacker with a low-privilege API key tries
 * to reach an admin-only route (`/admin`), a stripPrefix admin route (`/svc/`) and paths a deny rule
 * covers (`/internal`, `/private/`) through path parameters, dot-segments, encodings, case, fragments,
 * absolute-form targets, `OPTIONS *` and HTTP/2 `:path` variants. A recording upstream shows what was
 * forwarded; every answer must be a refusal (400/403/404) with nothing forwarded, or a 200 whose
 * forwarded path is exactly the path the gateway routed and authorized (the access log) and that a
 * Tomcat/Jetty/Spring backend would not read as a denied path either. Ends by checking the gateway
 * still serves.
 */
import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import { ConfigSchema } from '../src/config/schema.js';
import { generateApiKey } from '../src/identity/apikeys.js';
import { evaluateOffline, offlineContext } from '../src/policy/offline.js';
import { selfSigned, tempDir } from './helpers/gateway.js';
import {
  request,
  type Seen,
  startBackend,
  startGateway,
  type TestBackend,
  waitFor,
} from './helpers/proxy.js';

const USER = generateApiKey('user');
const ADMIN = generateApiKey('admin');
const HOST = 'app.test';
const DOCS = 'docs.test';
/** Path prefixes the user key must never reach (segment-aware). */
const DENIED = ['/admin', '/svc', '/internal', '/private'];

function gatewayConfig(backend: string, certDir: string, extraServer: Record<string, unknown> = {}) {
  return {
    listeners: [
      { name: 'web', bind: '127.0.0.1:0' },
      {
        name: 'tls',
        bind: '127.0.0.1:0',
        tls: { certificates: [{ cert: `file:${certDir}/cert.pem`, key: `file:${certDir}/key.pem` }] },
      },
    ],
    server: extraServer,
    upstreams: { app: { servers: [{ url: backend }] } },
    identity: {
      apiKeys: [
        { id: 'user', hash: USER.hashLine, subject: 'agent:user', groups: ['users'] },
        { id: 'admin', hash: ADMIN.hashLine, subject: 'agent:admin', groups: ['admins'] },
      ],
    },
    policies: {
      users: {
        allow: [{ name: 'members', groups: ['users', 'admins'] }],
        deny: [{ name: 'no-internal', paths: ['/internal', '/private/'] }],
      },
      admins: { allow: [{ name: 'admins', groups: ['admins'] }] },
    },
    routes: [
      {
        name: 'admin',
        match: { host: HOST, path: '/admin' },
        upstream: 'app',
        policy: 'admins',
        websocket: true,
      },
      {
        name: 'svc',
        match: { host: HOST, path: '/svc/' },
        upstream: 'app',
        policy: 'admins',
        stripPrefix: true,
      },
      { name: 'app', match: { host: HOST, path: '/' }, upstream: 'app', policy: 'users', websocket: true },
      { name: 'docs', match: { host: DOCS, path: '/' }, upstream: 'app', public: true },
    ],
    logging: { level: 'warn' },
  };
}

interface Env {
  backend: TestBackend;
  gw: Awaited<ReturnType<typeof startGateway>>;
  certDir: string;
}

async function setup(t: TestContext, server: Record<string, unknown> = {}): Promise<Env> {
  const d = tempDir();
  t.after(() => d.remove());
  const { cert, key } = selfSigned(HOST, [HOST, '127.0.0.1']);
  d.write('cert.pem', cert);
  d.write('key.pem', key);
  const backend = await startBackend(t, 'app');
  const gw = await startGateway(t, gatewayConfig(backend.url, d.dir, server));
  return { backend, gw, certDir: d.dir };
}

/** What one probe produced. */
interface Outcome {
  readonly target: string;
  readonly status: number;
  readonly code: string | undefined;
  /** The request line target the upstream received, or undefined when nothing was forwarded. */
  readonly forwarded: string | undefined;
  readonly seen: Seen | undefined;
  /** The path the gateway routed and authorized (access log), when it logged one. */
  readonly authorized: string | undefined;
  readonly route: string | undefined;
}

let counter = 0;

async function settle(env: Env, target: string, id: string, status: number, body: string): Promise<Outcome> {
  // Every JSON answer (the gateway's, or the upstream's passed on) is logged; a reset HTTP/2 stream or
  // a refusal by the HTTP parser (plain text, before any request exists) is not.
  if (status !== 0 && body.startsWith('{'))
    await waitFor(() => env.gw.access.some((e) => e.requestId === id), `access log of ${id}`);
  const entry = env.gw.access.find((e) => e.requestId === id);
  const seen = env.backend.seen.find((s) => s.headers['x-request-id'] === id);
  let code: string | undefined;
  try {
    code = (JSON.parse(body) as { code?: string; error?: string }).code;
  } catch {
    code = undefined;
  }
  return {
    target,
    status,
    code,
    forwarded: seen?.url,
    seen,
    authorized: entry?.path,
    route: entry?.route,
  };
}

/** One HTTP/1.1 request with the raw target as the request line carries it. */
async function probe(
  env: Env,
  target: string,
  opts: { key?: string; method?: string; host?: string } = {},
): Promise<Outcome> {
  const id = `attack-${++counter}`;
  const headers: Record<string, string> = {
    host: opts.host ?? HOST,
    'x-request-id': id,
    accept: 'application/json',
  };
  const key = opts.key ?? USER.key;
  if (key !== '') headers['x-api-key'] = key;
  const r = await request(env.gw.url('web'), { method: opts.method ?? 'GET', path: target, headers });
  return settle(env, target, id, r.status, r.body.toString());
}

/** One HTTP/2 request over TLS with `:path` exactly as given. */
async function probeH2(
  env: Env,
  path: string,
  opts: { key?: string; method?: string } = {},
): Promise<Outcome> {
  const id = `attack-h2-${++counter}`;
  const session = http2.connect(`https://127.0.0.1:${env.gw.port('tls')}`, {
    servername: HOST,
    rejectUnauthorized: false,
  });
  session.on('error', () => {});
  try {
    const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const stream = session.request(
        {
          ':method': opts.method ?? 'GET',
          ':path': path,
          ':authority': HOST,
          'x-request-id': id,
          'x-api-key': opts.key ?? USER.key,
          accept: 'application/json',
        },
        { endStream: true, signal: AbortSignal.timeout(10_000) },
      );
      let status = 0;
      const chunks: Buffer[] = [];
      stream.on('response', (h) => {
        status = Number(h[':status']);
      });
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => resolve({ status, body: Buffer.concat(chunks).toString() }));
      // nghttp2 resets a stream whose :path is not a path (RFC 9113 8.3.1): a refusal, status 0.
      stream.on('error', (err: NodeJS.ErrnoException) =>
        err.code === 'ERR_HTTP2_STREAM_ERROR' ? resolve({ status: 0, body: '' }) : reject(err),
      );
    });
    return settle(env, `h2 ${path}`, id, status, body);
  } finally {
    session.destroy();
  }
}

/**
 * The path a Tomcat, Jetty or Spring backend acts on for a forwarded request-target: path parameters
 * removed per segment, decoded (`decodes` times: 2 for a backend that decodes twice), dot-segments
 * resolved, empty segments merged. Backslash counts as a separator, as on Windows.
 */
function backendView(target: string, decodes = 1): string {
  const q = target.indexOf('?');
  let path = (q === -1 ? target : target.slice(0, q))
    .split('/')
    .map((s) => (s.includes(';') ? s.slice(0, s.indexOf(';')) : s))
    .join('/');
  for (let i = 0; i < decodes; i++) {
    try {
      path = decodeURIComponent(path);
    } catch {
      path = path.replace(/%([0-9A-Fa-f]{2})/g, (_, h: string) =>
        String.fromCharCode(Number.parseInt(h, 16)),
      );
    }
  }
  const out: string[] = [];
  for (const s of path.split(/[\\/]/)) {
    if (s === '' || s === '.') continue;
    if (s === '..') out.pop();
    else out.push(s);
  }
  return `/${out.join('/')}`;
}

function under(path: string, prefix: string): boolean {
  return path === prefix || path.startsWith(`${prefix}/`);
}

/**
 * The invariant of the suite: a refusal forwards nothing; an answer forwards exactly the path that was
 * routed and authorized, which no backend reading (once or twice decoded) puts under a denied prefix.
 */
function assertNoConfusion(o: Outcome, denied: readonly string[] = DENIED): void {
  const what = `${o.target} → ${o.status} ${o.code ?? ''} forwarded ${o.forwarded ?? '-'}`;
  if (o.status !== 200) {
    assert.ok([400, 403, 404].includes(o.status), what);
    assert.equal(o.forwarded, undefined, what);
    return;
  }
  assert.ok(o.forwarded !== undefined, what);
  const forwardedPath = o.forwarded.split('?')[0]!;
  if (o.route !== 'svc') assert.equal(forwardedPath, o.authorized, `${what}: authorized ${o.authorized}`);
  for (const view of [backendView(o.forwarded, 1), backendView(o.forwarded, 2)])
    for (const d of denied) assert.ok(!under(view, d), `${what}: a backend reads ${view}`);
}

test('path parameters: /admin;x, /internal;jsessionid=…, /;/internal and /x/..;/admin are refused like /admin and /internal', async (t) => {
  const env = await setup(t);
  const named: Array<[string, string]> = [
    ['/admin;x', 'admin'],
    ['/internal;jsessionid=0123456789ABCDEF', 'app'],
    ['/;/internal', 'app'],
    ['/x/..;/admin', 'admin'],
  ];
  for (const [target, route] of named) {
    const o = await probe(env, target);
    assert.equal(o.status, 403, target);
    assert.equal(o.route, route, target);
    assert.equal(o.forwarded, undefined, target);
  }
  // The admin key reaches the same resources, and the upstream sees the stripped path it was authorized on.
  for (const [target, want] of [
    ['/admin;x', '/admin'],
    ['/x/..;/admin', '/admin'],
    ['/admin;a=1/users;b=2?q=1;2', '/admin/users?q=1;2'],
    ['/x/%2e%2e;/admin', '/admin'],
    ['/a;/b;c/..;d/.;e/f', '/a/f'],
  ] as const) {
    const o = await probe(env, target, { key: ADMIN.key });
    assert.equal(o.status, 200, target);
    assert.equal(o.forwarded, want, target);
    assertNoConfusion(o, []);
  }
});

test('path parameters in every position never reach a denied path', async (t) => {
  const env = await setup(t);
  const targets = [
    '/admin;',
    '/admin;/',
    '/admin;x/y',
    '/admin;jsessionid=1?x=1',
    '/;admin',
    '/;/admin',
    '/;x/;y/admin',
    '/.;/admin',
    '/.;x/internal',
    '/x/..;/internal',
    '/x/..;x=1/internal/y',
    '/x;/..;/admin',
    '/x/y/..;/..;/admin',
    '/x/%2e%2e;/internal',
    '/x/.%2e;/admin',
    '/x/%2E%2E;a/admin',
    '/internal;/x',
    '/private;x',
    '/private;/x',
    '/private/;x',
    '/svc;/x',
    '/svc;x/y',
    '/svc/..;/admin',
    '/..;/admin',
    '/x/..;/..;/admin',
    // Encoded ';' is a literal: never a delimiter, also not for Tomcat.
    '/admin%3Bx',
    '/internal%3bjsessionid=1',
    '/x/..%3B/admin',
  ];
  for (const target of targets) assertNoConfusion(await probe(env, target));
  // The literal %3B stays encoded on the way up.
  const o = await probe(env, '/x/..%3B/admin');
  assert.equal(o.status, 200);
  assert.equal(o.forwarded, '/x/..%3B/admin');
});

test('encodings: double, overlong UTF-8, %u, encoded separators, fragments and encoded ? are refused or literal', async (t) => {
  const env = await setup(t);
  const refused: string[] = [
    '/x/%252e%252e/admin',
    '/%252e%252e/admin',
    '/x/%252E%252E/internal',
    '/x/%25%32%65%25%32%65/admin',
    '/x/%252f../admin',
    '/x/%255c../admin',
    '/x/%c0%ae%c0%ae/admin',
    '/x/%C0%AE%C0%AE/internal',
    '/x/%e0%80%ae%e0%80%ae/admin',
    '/x%c0%afadmin',
    '/x/%u002e%u002e/admin',
    '/x/%U002E./admin',
    '/x%2f..%2fadmin',
    '/x/..%2fadmin',
    '/x/..%2Finternal',
    '/x/..%5cadmin',
    '/x\\..\\admin',
    '/x/..\\admin',
    '/admin#x',
    '/public#/../admin',
    '/x#/../../internal',
    '/index.html#.png',
    '/x?y#/../admin',
    '/x/%00/../admin',
    '/admin%00',
    '/x/../../admin',
  ];
  for (const target of refused) {
    const o = await probe(env, target);
    assert.equal(o.status, 400, target);
    assert.equal(o.code, 'GH_BAD_PATH', target);
    assert.equal(o.forwarded, undefined, target);
  }
  for (const target of [
    '/admin%3F',
    '/admin%3Fx=1',
    '/internal%3F/../x',
    '/admin%23x',
    '/admin%2523',
    '/x/%2e%2e/admin',
  ]) {
    assertNoConfusion(await probe(env, target));
  }
  const q = await probe(env, '/admin%3fx');
  assert.equal(q.status, 200);
  assert.equal(q.forwarded, '/admin%3Fx');
});

test('dot segments, duplicate slashes, case, trailing dots and spaces', async (t) => {
  const env = await setup(t);
  for (const target of [
    '//admin',
    '/./admin',
    '///internal',
    '/x/../admin',
    '/x/./../internal/',
    '/.//admin',
    '/%2e/admin',
    '/x/%2E%2E/private/y',
  ]) {
    const o = await probe(env, target);
    assert.equal(o.status, 403, target);
    assert.equal(o.forwarded, undefined, target);
  }
  // Case and trailing dots or spaces make another path, as RFC 3986 says and Tomcat, Jetty and Spring
  // agree: routed, authorized and forwarded as that other path (a case-folding backend needs its own rules).
  for (const target of [
    '/ADMIN',
    '/Admin/x',
    '/INTERNAL',
    '/admin.',
    '/admin%20',
    '/internal.',
    '/internal%2e',
    '/adminx',
    '/internals',
    '/privately',
  ]) {
    const o = await probe(env, target);
    assertNoConfusion(o);
    assert.equal(o.status, 200, target);
    assert.equal(o.route, 'app', target);
  }
  assert.equal((await probe(env, '/admin%2e')).forwarded, '/admin.');
  assert.equal((await probe(env, '/admin%20')).forwarded, '/admin%20');
});

test('route and rule prefix boundaries: /admin and /admin/ versus /adminx; /private/ covers /private', async (t) => {
  const env = await setup(t);
  for (const target of ['/admin', '/admin/', '/admin/x', '/svc', '/svc/', '/svc/x']) {
    const o = await probe(env, target);
    assert.equal(o.status, 403, target);
    assert.ok(['admin', 'svc'].includes(o.route ?? ''), target);
  }
  for (const target of ['/private', '/private/', '/private/x', '/internal', '/internal/x']) {
    const o = await probe(env, target);
    assert.equal(o.status, 403, target);
    assert.equal(o.route, 'app', target);
  }
  for (const target of ['/adminx', '/svcx', '/privatex', '/internalx', '/x/admin']) {
    const o = await probe(env, target);
    assert.equal(o.status, 200, target);
    assert.equal(o.forwarded, target, target);
  }
  // stripPrefix removes exactly the matched prefix from the normalized path, and nothing else.
  for (const [target, want] of [
    ['/svc', '/'],
    ['/svc/', '/'],
    ['/svc/a', '/a'],
    ['/svc;x/a', '/a'],
    ['/svc/a;x/..;/b?q', '/b?q'],
    ['/svc//a/./b', '/a/b'],
    ['/svc/%2e%2e;/svc/c', '/c'],
  ] as const) {
    const o = await probe(env, target, { key: ADMIN.key });
    assert.equal(o.status, 200, target);
    assert.equal(o.route, 'svc', target);
    assert.equal(o.forwarded, want, target);
  }
  // Leaving the prefix with '..;' leaves the route: '/svc/..;/internal' is '/internal', denied by rule.
  const out = await probe(env, '/svc/..;/internal', { key: ADMIN.key });
  assert.equal(out.status, 403);
  assert.equal(out.route, 'app');
});

test('absolute-form targets route on their own authority, and the upstream sees that host', async (t) => {
  const env = await setup(t);
  // The request-target's authority replaces Host (RFC 9112 3.2.2): decided and forwarded for docs.test.
  const docs = await probe(env, `http://${DOCS}/internal`, { key: '' });
  assert.equal(docs.status, 200);
  assert.equal(docs.route, 'docs');
  assert.equal(docs.forwarded, '/internal');
  assert.equal(docs.seen?.headers.host, DOCS);
  // Aimed at the protected host with another Host header: the protected host's rules apply.
  for (const target of [
    `http://${HOST}/admin;x`,
    `http://${HOST}/x/..;/internal`,
    `HTTP://${HOST.toUpperCase()}/admin`,
    `http://${HOST}:80/internal`,
  ]) {
    const o = await probe(env, target, { host: DOCS });
    assert.equal(o.status, 403, target);
    assert.equal(o.forwarded, undefined, target);
  }
  for (const target of [
    'http:///admin',
    `http://user@${HOST}/admin`,
    `http://${HOST}#/admin`,
    `ftp://${HOST}/admin`,
    'admin',
    '*',
  ]) {
    const o = await probe(env, target, { host: DOCS });
    assert.equal(o.status, 400, target);
    assert.equal(o.forwarded, undefined, target);
  }
  // OPTIONS * is for the server itself: no route takes it, nothing is forwarded.
  const star = await probe(env, '*', { method: 'OPTIONS' });
  assert.equal(star.status, 404);
  assert.equal(star.forwarded, undefined);
});

test('HTTP/2 :path variants get the same answers as HTTP/1.1', async (t) => {
  const env = await setup(t);
  for (const path of [
    '/admin;x',
    '/x/..;/admin',
    '/;/internal',
    '/internal;jsessionid=1',
    '//admin',
    '/x/%2e%2e/admin',
  ]) {
    const o = await probeH2(env, path);
    assert.equal(o.status, 403, path);
    assert.equal(o.forwarded, undefined, path);
  }
  for (const path of ['/x/%252e%252e/admin', '/admin#x', '/x\\..\\admin', '/x/%c0%ae%c0%ae/admin']) {
    const o = await probeH2(env, path);
    assert.equal(o.status, 400, path);
    assert.equal(o.code, 'GH_BAD_PATH', path);
    assert.equal(o.forwarded, undefined, path);
  }
  // Not a path at all: the HTTP/2 layer resets the stream before the gateway sees it.
  for (const path of ['*', 'admin', `http://${HOST}/admin`, '']) {
    const o = await probeH2(env, path);
    assert.equal(o.status, 0, path);
    assert.equal(o.forwarded, undefined, path);
  }
  const star = await probeH2(env, '*', { method: 'OPTIONS' });
  assert.equal(star.status, 404);
  assert.equal(star.forwarded, undefined);
  const ok = await probeH2(env, '/admin;x/..;/y;z', { key: ADMIN.key });
  assert.equal(ok.status, 200);
  assert.equal(ok.forwarded, '/y');
  assertNoConfusion(await probeH2(env, '/adminx;y'));
});

test('pathParameters: reject refuses every ";" in the path with 400 GH_BAD_PATH, on HTTP/1.1 and HTTP/2', async (t) => {
  const env = await setup(t, { pathParameters: 'reject' });
  for (const target of [
    '/admin;x',
    '/internal;jsessionid=1',
    '/;/internal',
    '/x/..;/admin',
    '/ok;x',
    '/svc;/a',
  ]) {
    for (const o of [
      await probe(env, target),
      await probeH2(env, target),
      await probe(env, target, { key: ADMIN.key }),
    ]) {
      assert.equal(o.status, 400, o.target);
      assert.equal(o.code, 'GH_BAD_PATH', o.target);
      assert.equal(o.forwarded, undefined, o.target);
    }
  }
  // The query and an encoded %3B are not the path's parameters.
  const o = await probe(env, '/ok%3Bx?a=1;b=2');
  assert.equal(o.status, 200);
  assert.equal(o.forwarded, '/ok%3Bx?a=1;b=2');
});

/** Sends a WebSocket handshake for `target`; the status the gateway answered (or 101 passed on). */
function upgrade(env: Env, target: string, key: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(env.gw.port('web'), '127.0.0.1', () => {
      socket.write(
        `GET ${target} HTTP/1.1\r\nHost: ${HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Api-Key: ${key}\r\n\r\n`,
      );
    });
    socket.setTimeout(10_000, () => socket.destroy(new Error('no answer to the handshake')));
    let head = '';
    socket.on('data', (chunk: Buffer) => {
      head += chunk.toString('latin1');
      const m = /^HTTP\/1\.1 (\d{3})/.exec(head);
      if (m !== null) {
        resolve(Number(m[1]));
        socket.destroy();
      }
    });
    socket.on('error', reject);
    socket.on('close', () => resolve(0));
  });
}

test('WebSocket handshakes are routed, authorized and forwarded on the same stripped path', async (t) => {
  const env = await setup(t);
  const upgrades: string[] = [];
  const accept = (backend: TestBackend) =>
    backend.server.prependListener('upgrade', (req: IncomingMessage, socket: Duplex) => {
      upgrades.push(req.url ?? '');
      socket.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
    });
  accept(env.backend);
  for (const target of ['/admin;x', '/x/..;/admin', '/;/internal', '/internal;jsessionid=1']) {
    assert.equal(await upgrade(env, target, USER.key), 403, target);
  }
  assert.equal(await upgrade(env, '/x/%252e%252e/admin', USER.key), 400);
  assert.deepEqual(upgrades, []);
  assert.equal(await upgrade(env, '/x/..;/admin;v=1/ws', ADMIN.key), 101);
  assert.deepEqual(upgrades, ['/admin/ws']);
  // pathParameters: reject applies to handshakes too.
  const strict = await setup(t, { pathParameters: 'reject' });
  accept(strict.backend);
  assert.equal(await upgrade(strict, '/admin;x/ws', ADMIN.key), 400);
  assert.equal(await upgrade(strict, '/admin/ws', ADMIN.key), 101);
});

test('check and explain evaluate the same path as the gateway, in both parameter modes', () => {
  for (const mode of ['strip', 'reject'] as const) {
    const ctx = offlineContext(
      ConfigSchema.parse(gatewayConfig('http://127.0.0.1:9', '/nowhere', { pathParameters: mode })),
    );
    const user = { user: 'agent:user', groups: ['users'], authMethod: 'apiKey' };
    for (const url of [`http://${HOST}/x/..;/admin`, `http://${HOST}/admin;x`, `http://${HOST}/;/internal`]) {
      const r = evaluateOffline(ctx, { method: 'GET', url, as: user, now: Date.now() });
      if (mode === 'reject') {
        assert.equal(r.outcome.status, 400, url);
        assert.equal(r.path, undefined, url);
        continue;
      }
      assert.equal(r.outcome.status, 403, url);
      assert.ok(r.path === '/admin' || r.path === '/internal', `${url}: ${r.path}`);
    }
  }
});

test('after the path attacks the gateway still serves', async (t) => {
  const env = await setup(t);
  for (const target of ['/admin;x', '/x/%252e%252e/admin', '/x\\..\\admin', '/admin#x', '/x/%c0%ae/admin'])
    await probe(env, target);
  const user = await probe(env, '/jobs/1?x=y');
  assert.equal(user.status, 200);
  assert.equal(user.forwarded, '/jobs/1?x=y');
  const admin = await probe(env, '/admin/panel', { key: ADMIN.key });
  assert.equal(admin.status, 200);
  assert.equal(admin.forwarded, '/admin/panel');
  const h2 = await probeH2(env, '/jobs/2');
  assert.equal(h2.status, 200);
  assert.equal(h2.forwarded, '/jobs/2');
  const denied = await probe(env, '/internal');
  assert.equal(denied.status, 403);
});

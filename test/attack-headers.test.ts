/**
 * Header spoofing: what a client says about itself in headers (its address, scheme, host, port, path
 * prefix, certificate or user) reaches a backend only from `server.trustedProxies`, in no case or
 * spelling; URL rewrite and method-override headers do not reach it; hop-by-hop abuse cannot remove what
 * the gateway adds; malformed, duplicated and oversized header lines are refused or reduced to what the
 * gateway checked. Real gateway listeners, a backend that records the raw header lines it received.
 */
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { connect } from 'node:net';
import { test } from 'node:test';
import { METHOD_OVERRIDE_HEADERS } from '../src/core/methods.js';
import { generateApiKey } from '../src/identity/apikeys.js';
import {
  buildRequestHeaders,
  REWRITE_REQUEST_HEADERS,
  TRUSTED_ONLY_REQUEST_HEADERS,
} from '../src/proxy/headers.js';
import { selfSigned, tempDir } from './helpers/gateway.js';
import { config, request, type Seen, seenOf, startBackend, startGateway } from './helpers/proxy.js';

/** The headers named in the hardening request, as they are usually spelled. */
const NAMED = [
  'X-Real-IP',
  'True-Client-IP',
  'Forwarded',
  'X-Forwarded-Port',
  'X-Forwarded-Prefix',
  'X-Forwarded-Ssl',
  'X-Forwarded-Scheme',
  'X-Forwarded-Server',
  'X-Forwarded-Uri',
  'X-Forwarded-Protocol',
  'X-Forwarded-Client-IP',
  'X-Client-IP',
  'X-Cluster-Client-IP',
  'Client-IP',
  'CF-Connecting-IP',
  'Fastly-Client-IP',
  'X-Originating-IP',
  'X-Remote-IP',
  'X-Remote-Addr',
  'X-ProxyUser-Ip',
  'X-Host',
  'X-HTTP-Host-Override',
  'X-Original-Host',
  'Front-End-Https',
  'X-Url-Scheme',
];
/** Every header kept only from a trusted proxy: the named ones and the rest of the gateway's list. */
const FAMILY = [...new Set([...NAMED.map((n) => n.toLowerCase()), ...TRUSTED_ONLY_REQUEST_HEADERS])];
/** The gateway's own forwarded headers: replaced for untrusted peers, extended for trusted ones. */
const OWN = ['X-Forwarded-For', 'X-Forwarded-Proto', 'X-Forwarded-Host'];
const REWRITE = ['X-Original-URL', 'X-Rewrite-URL', 'X-Original-URI', 'X-Override-URL'];
const OVERRIDE = ['X-HTTP-Method-Override', 'X-HTTP-Method', 'X-Method-Override'];

/** A name as a client may case it: as usual, lower, upper, alternating. */
function casings(name: string): string[] {
  const lower = name.toLowerCase();
  const alternating = [...lower].map((ch, i) => (i % 2 === 1 ? ch.toUpperCase() : ch)).join('');
  return [name, lower, name.toUpperCase(), alternating];
}

/** Spellings CGI, WSGI, Rack and PHP read as the dashed name; none for a name without a dash. */
function underscored(name: string): string[] {
  if (!name.includes('-')) return [];
  return [name.replaceAll('-', '_'), name.toUpperCase().replaceAll('-', '_'), name.replace('-', '_')];
}

/** A header name as a CGI-style backend reads it. */
const canonical = (name: string) => name.toLowerCase().replaceAll('_', '-');

/** The header lines a backend received whose names read as `name` (any case, `_` for `-`). */
function linesNamed(seen: Seen, name: string): Array<[string, string]> {
  const want = canonical(name);
  const out: Array<[string, string]> = [];
  for (let i = 0; i < seen.rawHeaders.length; i += 2) {
    if (canonical(seen.rawHeaders[i]!) === want) out.push([seen.rawHeaders[i]!, seen.rawHeaders[i + 1]!]);
  }
  return out;
}

const ROOMY = { maxHeadersCount: 1000, maxHeaderSize: '64KiB' };

function backendFor(url: string, extra: Record<string, unknown> = {}, routes?: unknown[]) {
  return config({ app: { servers: [{ url }] } }, routes ?? [{ name: 'all', upstream: 'app' }], extra);
}

/**
 * Sends a raw HTTP/1.1 request on a fresh connection and resolves with everything the gateway answered
 * until it closed the connection (requests that should succeed carry `Connection: close`).
 */
function rawExchange(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(Buffer.from(text, 'latin1')));
    let data = '';
    socket.setTimeout(10_000, () => socket.destroy(new Error('no answer')));
    socket.on('data', (chunk: Buffer) => {
      data += chunk.toString('latin1');
    });
    socket.on('error', reject);
    socket.on('close', () => resolve(data));
  });
}

test('spoofing: address, scheme and host headers in every case and spelling never reach a backend from an untrusted peer', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(t, backendFor(b.url, { server: ROOMY }));
  const spellings: Array<(n: string) => string[]> = [
    (n) => casings(n).slice(0, 2),
    (n) => casings(n).slice(2),
    (n) => underscored(n),
  ];
  for (const spell of spellings) {
    const headers: string[] = ['Host', 'app.example.test:8080'];
    for (const name of [...NAMED, ...FAMILY, ...OWN]) {
      for (const n of spell(name))
        headers.push(n, name === 'Forwarded' ? 'for=6.6.6.6;proto=https' : '6.6.6.6');
    }
    const r = await request(gw.url(), { path: '/spoof', headers });
    assert.equal(r.status, 200);
    const seen = seenOf(r.body);
    for (const name of FAMILY) assert.deepEqual(linesNamed(seen, name), [], `${name} reached the backend`);
    // The gateway's own values, once each: the peer, the listener's scheme, the Host that was routed.
    assert.deepEqual(linesNamed(seen, 'x-forwarded-for'), [['x-forwarded-for', '127.0.0.1']]);
    assert.deepEqual(linesNamed(seen, 'x-forwarded-proto'), [['x-forwarded-proto', 'http']]);
    assert.deepEqual(linesNamed(seen, 'x-forwarded-host'), [['x-forwarded-host', 'app.example.test:8080']]);
  }
  const entry = gw.access.find((e) => e.path === '/spoof');
  assert.equal(entry?.client, '127.0.0.1', 'the access log is not fooled either');
});

test('spoofing: a trusted proxy keeps its address, scheme and host headers; their underscore spellings are dropped', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    backendFor(b.url, { server: { ...ROOMY, trustedProxies: ['127.0.0.0/8'] } }),
  );
  const headers: string[] = ['Host', 'app.example.test'];
  const sent = new Map<string, string>();
  FAMILY.forEach((name, i) => {
    const spelled = casings(name)[i % 4]!;
    sent.set(name, `v${i}`);
    headers.push(spelled, `v${i}`);
    for (const u of underscored(name)) headers.push(u, `underscore-${i}`);
  });
  headers.push('X-Forwarded-For', '203.0.113.7', 'X_Forwarded_For', '6.6.6.6', 'X-Forwarded-Proto', 'https');
  headers.push('X-Forwarded-Host', 'public.example', 'x_forwarded_host', 'evil.example');
  const r = await request(gw.url(), { path: '/trusted', headers });
  assert.equal(r.status, 200);
  const seen = seenOf(r.body);
  for (const [name, value] of sent) {
    const lines = linesNamed(seen, name);
    assert.equal(lines.length, 1, `${name}: ${JSON.stringify(lines)}`);
    assert.equal(lines[0]![1], value, name);
    assert.ok(!lines[0]![0].includes('_'), `${name}: the underscore spelling passed`);
  }
  assert.deepEqual(linesNamed(seen, 'x-forwarded-for'), [['x-forwarded-for', '203.0.113.7, 127.0.0.1']]);
  assert.deepEqual(linesNamed(seen, 'x-forwarded-proto'), [['x-forwarded-proto', 'https']]);
  assert.deepEqual(linesNamed(seen, 'x-forwarded-host'), [['x-forwarded-host', 'public.example']]);
});

test('spoofing: a header differing only by "_" never shadows the real one, from any peer', async (t) => {
  const b = await startBackend(t, 'b');
  const trusted = await startGateway(t, backendFor(b.url, { server: { trustedProxies: ['127.0.0.1/32'] } }));
  const untrusted = await startGateway(t, backendFor(b.url));
  // Underscore first: a backend that keeps the last (or first) of HTTP_X_REAL_IP must not see 6.6.6.6.
  const headers = [
    'Host',
    'a.test',
    'X_Real_IP',
    '6.6.6.6',
    'X-Real-IP',
    '198.51.100.1',
    'X-Real_IP',
    '6.6.6.7',
  ];
  const fromProxy = seenOf((await request(trusted.url(), { path: '/', headers })).body);
  assert.deepEqual(linesNamed(fromProxy, 'x-real-ip'), [['X-Real-IP', '198.51.100.1']]);
  const fromClient = seenOf((await request(untrusted.url(), { path: '/', headers })).body);
  assert.deepEqual(linesNamed(fromClient, 'x-real-ip'), []);
});

test('rewrite: X-Original-URL, X-Rewrite-URL and their kin never reach a backend, not even from a trusted proxy', async (t) => {
  const b = await startBackend(t, 'b');
  const routes = [
    {
      name: 'admin',
      match: { path: '/admin' },
      upstream: 'app',
      policy: { allow: [{ groups: ['admins'] }] },
    },
    { name: 'open', upstream: 'app', public: true },
  ];
  const plain = await startGateway(t, backendFor(b.url, {}, routes));
  const behind = await startGateway(
    t,
    backendFor(b.url, { server: { trustedProxies: ['127.0.0.0/8'] } }, routes),
  );
  for (const gw of [plain, behind]) {
    const headers = ['Host', 'a.test'];
    for (const name of [...REWRITE, ...REWRITE_REQUEST_HEADERS]) {
      for (const n of [...casings(name), ...underscored(name)]) headers.push(n, '/admin/users?delete=all');
    }
    const r = await request(gw.url(), { path: '/public/page', headers });
    assert.equal(r.status, 200);
    const seen = seenOf(r.body);
    assert.equal(seen.url, '/public/page', 'the backend acts on the path that was authorized');
    for (const name of [...REWRITE, ...REWRITE_REQUEST_HEADERS]) {
      assert.deepEqual(linesNamed(seen, name), [], `${name} reached the backend`);
    }
  }
  const denied = await request(plain.url(), {
    path: '/admin/users',
    headers: { 'x-original-url': '/public' },
  });
  assert.equal(denied.status, 401, 'and a rewrite header does not change what the gateway authorizes');
});

test('method override: X-HTTP-Method-Override and its kin are removed unless the route opts in', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    backendFor(b.url, { server: { trustedProxies: ['127.0.0.0/8'] } }, [
      { name: 'reports', upstream: 'app', public: true },
    ]),
  );
  for (const name of OVERRIDE) assert.ok(METHOD_OVERRIDE_HEADERS.includes(name.toLowerCase()), name);
  const headers = ['Host', 'a.test'];
  for (const name of OVERRIDE) {
    for (const n of [...casings(name), ...underscored(name)]) headers.push(n, 'DELETE');
  }
  const r = await request(gw.url(), { method: 'POST', path: '/reports/7', headers, body: 'x' });
  assert.equal(r.status, 200);
  const seen = seenOf(r.body);
  assert.equal(seen.method, 'POST');
  for (const name of OVERRIDE) assert.deepEqual(linesNamed(seen, name), [], `${name} reached the backend`);

  // With the route's opt-in (ForwardInput.methodOverride) the dashed spellings pass, underscores never.
  const input = (methodOverride: boolean | undefined) => ({
    raw: headers,
    host: 'a.test',
    originalHost: 'a.test',
    peerIp: '192.0.2.1',
    trustedPeer: false,
    proto: 'http',
    requestId: 'id-1',
    edits: undefined,
    inject: [],
    methodOverride,
  });
  const names = (out: string[]) => out.filter((_, i) => i % 2 === 0);
  const kept = names(buildRequestHeaders(input(true)));
  for (const name of OVERRIDE) {
    assert.deepEqual(
      kept.filter((n) => canonical(n) === name.toLowerCase()),
      casings(name),
      `${name} with the opt-in`,
    );
  }
  for (const optIn of [false, undefined]) {
    const out = names(buildRequestHeaders(input(optIn)));
    assert.ok(!out.some((n) => OVERRIDE.some((o) => canonical(n) === o.toLowerCase())), String(optIn));
  }
});

test('underscore spellings of hop-by-hop, X-Gatehouse-*, X-Request-Id and the API key header are dropped from every peer', async (t) => {
  const b = await startBackend(t, 'b');
  const key = generateApiKey('etl');
  const gw = await startGateway(t, {
    ...backendFor(b.url, { server: { trustedProxies: ['127.0.0.0/8'] } }, [
      { name: 'agents', upstream: 'app', policy: { allow: [{ groups: ['agents'] }] }, identityHeaders: true },
    ]),
    identity: {
      apiKeyHeader: 'X-Agent-Key',
      apiKeys: [{ id: 'etl', hash: key.hashLine, subject: 'agent:etl', groups: ['agents'] }],
    },
  });
  // (Transfer_Encoding and Content_Length are framing: refused with 400 in attack-framing.)
  const names = [
    'Keep_Alive',
    'Proxy_Connection',
    'Proxy_Authorization',
    'X_Gatehouse_User',
    'x_gatehouse_assertion',
    'X_Request_Id',
    'X_Agent_Key',
    'x_agent-key',
    'X_Forwarded_For',
    'X_Forwarded_Proto',
  ];
  const headers = ['Host', 'a.test', 'X-Agent-Key', key.key];
  for (const n of names) headers.push(n, 'spoofed');
  const r = await request(gw.url(), { path: '/x', headers });
  assert.equal(r.status, 200);
  const seen = seenOf(r.body);
  const got = seen.rawHeaders.filter((_, i) => i % 2 === 0);
  for (const n of names) assert.ok(!got.includes(n), `${n} reached the backend: ${got.join(', ')}`);
  assert.equal(seen.headers['x-gatehouse-user'], 'agent:etl');
  assert.equal(linesNamed(seen, 'x-agent-key').length, 0, "the gateway's credential is not forwarded");
  assert.equal(linesNamed(seen, 'x-request-id').length, 1);
});

test('hop-by-hop abuse: Connection cannot remove X-Forwarded-For, X-Request-Id, identity headers, the assertion or injected credentials', async (t) => {
  const b = await startBackend(t, 'b');
  const key = generateApiKey('etl');
  const gw = await startGateway(t, {
    ...config(
      {
        app: { servers: [{ url: b.url }] },
        injected: {
          servers: [{ url: b.url }],
          inject: { headers: { Authorization: 'Bearer upstream-secret' } },
        },
      },
      [
        { name: 'inj', match: { path: '/inj' }, upstream: 'injected', public: true },
        {
          name: 'agents',
          upstream: 'app',
          policy: { allow: [{ groups: ['agents'] }] },
          identityHeaders: true,
        },
      ],
    ),
    identity: { apiKeys: [{ id: 'etl', hash: key.hashLine, subject: 'agent:etl', groups: ['agents'] }] },
  });
  const strip =
    'keep-alive, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Request-Id, X-Gatehouse-User, ' +
    'X-Gatehouse-Groups, X-Gatehouse-Assertion, Host, Authorization';
  const r = await request(gw.url(), {
    path: '/agents/x',
    headers: { host: 'a.test', connection: strip, 'x-api-key': key.key, 'x-request-id': 'abc-1' },
  });
  assert.equal(r.status, 200);
  const h = seenOf(r.body).headers;
  assert.equal(h['x-forwarded-for'], '127.0.0.1');
  assert.equal(h['x-forwarded-proto'], 'http');
  assert.equal(h['x-forwarded-host'], 'a.test');
  assert.equal(h['x-request-id'], 'abc-1');
  assert.equal(h.host, 'a.test');
  assert.equal(h['x-gatehouse-user'], 'agent:etl');
  assert.equal(h['x-gatehouse-groups'], 'agents');
  assert.ok(h['x-gatehouse-assertion']);
  assert.equal(h['x-api-key'], undefined);

  const inj = await request(gw.url(), {
    path: '/inj',
    headers: { host: 'a.test', connection: 'close, Authorization', authorization: 'Bearer client' },
  });
  assert.equal(inj.status, 200);
  assert.equal(seenOf(inj.body).headers.authorization, 'Bearer upstream-secret');
  // A header the client names in Connection is its own hop-by-hop header: it goes no further.
  const own = await request(gw.url(), {
    path: '/inj',
    headers: { host: 'a.test', connection: 'X-Trace', 'x-trace': '1', 'content-type': 'text/plain' },
    body: 'hello',
    method: 'POST',
  });
  const seen = seenOf(own.body);
  assert.equal(seen.headers['x-trace'], undefined);
  assert.equal(seen.bodyLength, 5);
  // Naming the framing or routing headers changes neither the body the backend reads nor its Host.
  for (const named of ['Content-Length', 'Transfer-Encoding', 'Content-Length, Host', 'Host, Cookie']) {
    const r2 = await request(gw.url(), {
      method: 'POST',
      path: '/inj/framing',
      headers: { host: 'a.test', connection: named, 'content-type': 'text/plain' },
      body: 'hello',
    });
    assert.equal(r2.status, 200, named);
    const s2 = seenOf(r2.body);
    assert.equal(s2.bodyLength, 5, named);
    assert.equal(s2.headers.host, 'a.test', named);
  }
});

test('spoofing over HTTP/2: the same headers are removed, whatever their spelling', async (t) => {
  const b = await startBackend(t, 'b');
  const d = tempDir('gatehouse-h2-');
  t.after(() => d.remove());
  const pem = selfSigned('a.test', ['a.test', '127.0.0.1']);
  d.write('cert.pem', pem.cert);
  d.write('key.pem', pem.key);
  const gw = await startGateway(
    t,
    backendFor(b.url, {
      server: ROOMY,
      listeners: [
        {
          name: 'web',
          bind: '127.0.0.1:0',
          tls: { certificates: [{ cert: 'file:cert.pem', key: 'file:key.pem' }] },
        },
      ],
    }),
    { baseDir: d.dir },
  );
  const session = http2.connect(`https://127.0.0.1:${gw.port()}`, { rejectUnauthorized: false });
  t.after(() => session.close());
  const headers: http2.OutgoingHttpHeaders = { ':path': '/h2', ':authority': 'a.test' };
  for (const name of [...FAMILY, ...REWRITE.map((n) => n.toLowerCase()), 'x-http-method-override']) {
    headers[name] = '6.6.6.6';
    for (const u of underscored(name)) headers[u.toLowerCase()] = '6.6.6.6';
  }
  headers['x-forwarded-for'] = '6.6.6.6';
  headers.x_gatehouse_user = 'root';
  const body = await new Promise<Buffer>((resolve, reject) => {
    const stream = session.request(headers);
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
    stream.end();
  });
  const seen = seenOf(body);
  assert.equal(seen.url, '/h2');
  for (const name of [...FAMILY, ...REWRITE, 'x-http-method-override', 'x-gatehouse-user']) {
    assert.deepEqual(linesNamed(seen, name), [], `${name} reached the backend over HTTP/2`);
  }
  assert.deepEqual(linesNamed(seen, 'x-forwarded-for'), [['x-forwarded-for', '127.0.0.1']]);
  assert.deepEqual(linesNamed(seen, 'x-forwarded-proto'), [['x-forwarded-proto', 'https']]);
});

test('host confusion: the backend is told the host that was routed, never a header the client chose', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    backendFor(b.url, {}, [
      {
        name: 'admin',
        match: { host: 'admin.example' },
        upstream: 'app',
        policy: { allow: [{ groups: ['x'] }] },
      },
      { name: 'www', match: { host: 'www.example' }, upstream: 'app', public: true },
    ]),
  );
  const spoof = {
    host: 'www.example',
    'x-forwarded-host': 'admin.example',
    'x-host': 'admin.example',
    'x-original-host': 'admin.example',
    'x-forwarded-server': 'admin.example',
    'x-http-host-override': 'admin.example',
    forwarded: 'host=admin.example;proto=https',
  };
  const r = await request(gw.url(), { path: '/', headers: spoof });
  assert.equal(r.status, 200);
  const seen = seenOf(r.body);
  assert.equal(seen.headers.host, 'www.example');
  assert.equal(seen.headers['x-forwarded-host'], 'www.example');
  for (const name of Object.keys(spoof).filter((n) => n !== 'host' && n !== 'x-forwarded-host')) {
    assert.equal(seen.headers[name], undefined, name);
  }
  // An absolute-form target names the host (RFC 9112 §3.2.2): that host is routed, and only that host.
  const abs = await rawExchange(
    gw.port(),
    'GET http://admin.example/x HTTP/1.1\r\nHost: www.example\r\nConnection: close\r\n\r\n',
  );
  assert.match(abs, /^HTTP\/1\.1 401 /);
  const abs2 = await rawExchange(
    gw.port(),
    'GET http://www.example/y HTTP/1.1\r\nHost: admin.example\r\nConnection: close\r\n\r\n',
  );
  assert.match(abs2, /^HTTP\/1\.1 200 /);
  const last = b.seen.at(-1)!;
  assert.equal(last.url, '/y');
  assert.equal(last.headers.host, 'www.example');
  assert.equal(last.headers['x-forwarded-host'], 'www.example');
});

test('duplicated security headers: one X-Forwarded-For, one X-Request-Id and only the Authorization the gateway checked', async (t) => {
  const b = await startBackend(t, 'b');
  const key = generateApiKey('etl');
  const gw = await startGateway(t, {
    ...backendFor(b.url, {}, [
      {
        name: 'pass',
        upstream: 'app',
        policy: { allow: [{ groups: ['agents'] }] },
        passCredentials: true,
        identityHeaders: true,
      },
    ]),
    identity: { apiKeys: [{ id: 'etl', hash: key.hashLine, subject: 'agent:etl', groups: ['agents'] }] },
  });
  const r = await request(gw.url(), {
    path: '/',
    headers: [
      'Host',
      'a.test',
      'Authorization',
      `Bearer ${key.key}`,
      'Authorization',
      'Basic YWRtaW46YWRtaW4=',
      'X-Forwarded-For',
      '6.6.6.6',
      'X-Forwarded-For',
      '7.7.7.7',
      'X-Request-Id',
      'one',
      'X-Request-Id',
      'two',
      'X-Gatehouse-User',
      'root',
      'X-Gatehouse-User',
      'admin',
    ],
  });
  assert.equal(r.status, 200);
  const seen = seenOf(r.body);
  assert.deepEqual(linesNamed(seen, 'authorization'), [['Authorization', `Bearer ${key.key}`]]);
  assert.deepEqual(linesNamed(seen, 'x-forwarded-for'), [['x-forwarded-for', '127.0.0.1']]);
  const ids = linesNamed(seen, 'x-request-id');
  assert.equal(ids.length, 1);
  assert.notEqual(ids[0]![1], 'one');
  assert.notEqual(ids[0]![1], 'two');
  assert.deepEqual(linesNamed(seen, 'x-gatehouse-user'), [['x-gatehouse-user', 'agent:etl']]);
});

test('oversized headers: a header block over maxHeaderSize is 431; a long forwarded chain from a trusted proxy is handled', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(t, backendFor(b.url, { server: { trustedProxies: ['127.0.0.0/8'] } }));
  const huge = await request(gw.url(), { path: '/', headers: { 'x-real-ip': '1'.repeat(64 * 1024) } });
  assert.equal(huge.status, 431);
  const chain = Array.from({ length: 800 }, (_, i) => `10.${(i >> 8) & 255}.${i & 255}.1`).join(', ');
  const long = await request(gw.url(), {
    path: '/',
    headers: { 'x-forwarded-for': `198.51.100.4, ${chain}`, 'x-request-id': 'r'.repeat(129) },
  });
  assert.equal(long.status, 200);
  const h = seenOf(long.body).headers;
  assert.equal(h['x-forwarded-for'], `198.51.100.4, ${chain}, 127.0.0.1`);
  assert.notEqual(h['x-request-id'], 'r'.repeat(129), 'a request id over 128 characters is replaced');
  assert.equal(b.seen.length, 1);
});

test('malformed header lines are refused with 400 and never forwarded: obs-fold, space before the colon, control characters', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(t, backendFor(b.url));
  const cases = [
    'GET / HTTP/1.1\r\nHost: a.test\r\nX-Real-IP: 1.2.3.4\r\n 6.6.6.6\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For : 6.6.6.6\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For\t: 6.6.6.6\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: a.test\r\nX-Request-Id: a\x01b\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: a.test\r\nX Forwarded For: 6.6.6.6\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: a.test\r\nX-Gatehouse-User\x00: root\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: a.test\r\nX-Real-IP: 1.2.3.4\nX-Forwarded-For: 6.6.6.6\r\n\r\n',
  ];
  for (const text of cases) {
    const answer = await rawExchange(gw.port(), text);
    assert.match(answer, /^HTTP\/1\.1 400 /, JSON.stringify(text));
  }
  assert.equal(b.seen.length, 0);
});

test('X-Request-Id injection: anything but a short token is replaced, and exactly one id reaches backend and client', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(t, backendFor(b.url));
  const bad = [
    'a b',
    '"quoted"',
    '<script>alert(1)</script>',
    'id%0d%0aSet-Cookie:%20x=1',
    'x'.repeat(129),
    'café',
    '',
    'a,b',
    'id;drop',
  ];
  for (const value of bad) {
    const r = await request(gw.url(), { path: '/', headers: ['Host', 'a.test', 'X-Request-Id', value] });
    assert.equal(r.status, 200, value);
    const ids = linesNamed(seenOf(r.body), 'x-request-id');
    assert.equal(ids.length, 1, value);
    assert.notEqual(ids[0]![1], value);
    assert.match(ids[0]![1], /^[A-Za-z0-9._:-]{1,128}$/);
    assert.equal(r.headers['x-request-id'], ids[0]![1], 'the client is told the same id');
  }
});

test('header spoofing family: after the attacks the gateway still serves normally', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(t, backendFor(b.url));
  for (let i = 0; i < 3; i++) {
    await request(gw.url(), { path: '/', headers: { 'x-real-ip': '6.6.6.6', forwarded: 'for=evil' } });
    await rawExchange(gw.port(), 'GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n');
  }
  const r = await request(gw.url(), {
    path: '/ok',
    headers: { 'x-kept': 'yes', accept: 'application/json' },
  });
  assert.equal(r.status, 200);
  const seen = seenOf(r.body);
  assert.equal(seen.url, '/ok');
  assert.equal(seen.headers['x-kept'], 'yes');
  assert.equal(seen.headers['x-forwarded-for'], '127.0.0.1');
});

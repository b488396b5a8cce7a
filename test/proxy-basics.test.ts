import assert from 'node:assert/strict';
import { test } from 'node:test';
import { config, request, seenOf, startBackend, startGateway } from './helpers/proxy.js';

test('no route: 404 with a short plain-text body, JSON when only JSON is accepted', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [
      { name: 'api', match: { path: '/api' }, upstream: 'app' },
    ]),
  );
  const r = await request(gw.url(), { path: '/nothing' });
  assert.equal(r.status, 404);
  assert.match(r.body.toString(), /GH_NO_ROUTE/);
  assert.ok(r.body.length < 200);
  assert.match(String(r.headers['content-type']), /text\/plain/);
  assert.ok(r.headers['x-request-id']);
  const j = await request(gw.url(), { path: '/nothing', headers: { accept: 'application/json' } });
  assert.equal(j.status, 404);
  assert.equal(JSON.parse(j.body.toString()).code, 'GH_NO_ROUTE');
  assert.equal(b.seen.length, 0);
  const entry = gw.access.find((e) => e.path === '/nothing');
  assert.equal(entry?.status, 404);
  assert.equal(entry?.error, 'GH_NO_ROUTE');
});

test('unsafe paths get 400 and never reach the backend', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app' }]),
  );
  for (const path of ['/%2e%2e/etc/passwd', '/a/%2fb', '/a%00b', '/a/../../b', '/a%zz', '/a\\b']) {
    const r = await request(gw.url(), { path });
    assert.equal(r.status, 400, path);
    assert.match(r.body.toString(), /GH_BAD_PATH/, path);
  }
  const h = await request(gw.url(), { path: '/', headers: { host: 'bad host' } });
  assert.equal(h.status, 400);
  assert.equal(b.seen.length, 0);
});

test('the forwarded path is the normalized path (also for matching and stripPrefix)', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [
      {
        name: 'admin',
        match: { path: '/admin' },
        upstream: 'app',
        headers: { request: { set: { 'x-route': 'admin' } } },
      },
      { name: 'strip', match: { path: '/svc/' }, upstream: 'app', stripPrefix: true },
      { name: 'all', upstream: 'app' },
    ]),
  );
  const cases: Array<[string, string, string | undefined]> = [
    ['/a/./b//c?x=1&y=%2f', '/a/b/c?x=1&y=%2f', undefined],
    ['/%61dmin/users', '/admin/users', 'admin'],
    ['/public/../admin', '/admin', 'admin'],
    ['/x/%7euser/caf%c3%a9', '/x/~user/caf%C3%A9', undefined],
    ['/svc/v1/jobs?q', '/v1/jobs?q', undefined],
  ];
  for (const [sent, forwarded, route] of cases) {
    const r = await request(gw.url(), { path: sent });
    assert.equal(r.status, 200, sent);
    const seen = seenOf(r.body);
    assert.equal(seen.url, forwarded, sent);
    assert.equal(seen.headers['x-route'], route, sent);
  }
});

test('request header hygiene and forwarded headers', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config(
      {
        app: { servers: [{ url: b.url }], inject: { headers: { Authorization: 'Bearer upstream-secret' } } },
      },
      [
        {
          name: 'all',
          upstream: 'app',
          headers: { request: { set: { 'X-Env': 'test' }, remove: ['X-Drop-Me'] } },
        },
      ],
    ),
  );
  const r = await request(gw.url(), {
    path: '/h',
    headers: [
      'Host',
      'app.example.com:8080',
      'Connection',
      'keep-alive, X-Secret-Hop',
      'X-Secret-Hop',
      'must not pass',
      'Keep-Alive',
      'timeout=5',
      'X-Gatehouse-User',
      'mallory',
      'X_Gatehouse_Email',
      'mallory@example.com',
      'x-gatehouse-groups',
      'admins',
      'X-Forwarded-For',
      '6.6.6.6',
      'X-Forwarded-Proto',
      'https',
      'X-Request-Id',
      'bad id with spaces',
      'X-Drop-Me',
      '1',
      'X-Env',
      'prod',
      'Authorization',
      'Bearer client-token',
      'X-Kept',
      'yes',
    ],
  });
  assert.equal(r.status, 200);
  const h = seenOf(r.body).headers;
  const names = seenOf(r.body)
    .rawHeaders.filter((_, i) => i % 2 === 0)
    .map((n) => n.toLowerCase());
  assert.equal(h['x-secret-hop'], undefined, 'header named in Connection removed');
  assert.equal(h['keep-alive'], undefined);
  assert.ok(!names.some((n) => n.replaceAll('_', '-').startsWith('x-gatehouse-')), names.join(','));
  assert.equal(h['x-forwarded-for'], '127.0.0.1', 'untrusted peer: XFF replaced');
  assert.equal(h['x-forwarded-proto'], 'http');
  assert.equal(h['x-forwarded-host'], 'app.example.com:8080');
  assert.equal(h.host, 'app.example.com:8080', 'Host preserved by default');
  assert.match(String(h['x-request-id']), /^[A-Za-z0-9._:-]+$/);
  assert.notEqual(h['x-request-id'], 'bad id with spaces');
  assert.equal(r.headers['x-request-id'], h['x-request-id'], 'request id echoed');
  assert.equal(h['x-drop-me'], undefined);
  assert.equal(h['x-env'], 'test', 'route set replaces the client value');
  assert.equal(h.authorization, 'Bearer upstream-secret', 'inject replaces the client value');
  assert.equal(h['x-kept'], 'yes');

  const r2 = await request(gw.url(), { path: '/h', headers: { 'x-request-id': 'abc-123.def:4' } });
  assert.equal(seenOf(r2.body).headers['x-request-id'], 'abc-123.def:4', 'a sane request id is kept');
  assert.equal(r2.headers['x-request-id'], 'abc-123.def:4');
});

test('X-Forwarded-For is appended for a trusted proxy; Host rewritten when preserveHost is false', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [{ name: 'all', upstream: 'app', preserveHost: false }], {
      server: { trustedProxies: ['127.0.0.0/8'] },
    }),
  );
  const r = await request(gw.url(), {
    path: '/',
    headers: { host: 'public.example.com', 'x-forwarded-for': '203.0.113.7', 'x-forwarded-proto': 'https' },
  });
  const h = seenOf(r.body).headers;
  assert.equal(h['x-forwarded-for'], '203.0.113.7, 127.0.0.1');
  assert.equal(h['x-forwarded-proto'], 'https');
  assert.equal(h.host, `127.0.0.1:${b.port}`);
  assert.equal(h['x-forwarded-host'], 'public.example.com');
});

test('behind trusted proxies the client is the rightmost untrusted X-Forwarded-For address, for policy and log', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config(
      { app: { servers: [{ url: b.url }] } },
      [
        {
          name: 'guarded',
          match: { path: '/guarded/' },
          upstream: 'app',
          policy: {
            deny: [{ name: 'blocked-net', sourceIp: ['203.0.113.0/24'] }],
            allow: [{ groups: ['x'] }],
          },
        },
        { name: 'all', upstream: 'app' },
      ],
      { server: { trustedProxies: ['127.0.0.0/8', '10.0.0.0/8'] } },
    ),
  );
  const entryOf = (id: string) => gw.access.find((e) => e.requestId === id);
  // One trusted hop (the peer) and one more (10.1.2.3): the client is the address before them.
  const r1 = await request(gw.url(), {
    path: '/guarded/x',
    headers: { 'x-request-id': 'xff-1', 'x-forwarded-for': '198.51.100.9, 203.0.113.7, 10.1.2.3' },
  });
  assert.equal(r1.status, 403, 'the forwarded client is in the denied network');
  assert.match(r1.body.toString(), /policy-deny/);
  assert.equal(entryOf('xff-1')?.client, '203.0.113.7', "the address left of it is the client's own claim");
  assert.equal(entryOf('xff-1')?.peer, '127.0.0.1');
  // An address the client wrote itself cannot hide it: 203.0.113.7 is the rightmost untrusted entry.
  const r2 = await request(gw.url(), {
    path: '/',
    headers: { 'x-request-id': 'xff-2', 'x-forwarded-for': '192.0.2.1, 203.0.113.7' },
  });
  assert.equal(r2.status, 200);
  assert.equal(entryOf('xff-2')?.client, '203.0.113.7');
  assert.equal(
    seenOf(r2.body).headers['x-forwarded-for'],
    '192.0.2.1, 203.0.113.7, 127.0.0.1',
    'peer appended',
  );
  // An entry that is not an address ends the walk at the last trusted hop.
  const r3 = await request(gw.url(), {
    path: '/guarded/x',
    headers: { 'x-request-id': 'xff-3', 'x-forwarded-for': '203.0.113.7, not-an-ip' },
  });
  assert.equal(r3.status, 401, 'not the denied network: anonymous, so 401');
  assert.equal(entryOf('xff-3')?.client, '127.0.0.1');
  assert.equal(entryOf('xff-3')?.peer, undefined);
  // Bracketed IPv6 with a port, and IPv4 with a port, as some proxies write them.
  await request(gw.url(), {
    path: '/',
    headers: { 'x-request-id': 'xff-4', 'x-forwarded-for': '[2001:db8::7]:443' },
  });
  assert.equal(entryOf('xff-4')?.client, '2001:db8::7');
  await request(gw.url(), {
    path: '/',
    headers: { 'x-request-id': 'xff-5', 'x-forwarded-for': '192.0.2.5:5678' },
  });
  assert.equal(entryOf('xff-5')?.client, '192.0.2.5');
  // A zone id is no client address (it names an interface of the proxy): the walk ends there too.
  await request(gw.url(), {
    path: '/',
    headers: { 'x-request-id': 'xff-6', 'x-forwarded-for': 'fe80::1%eth0' },
  });
  assert.equal(entryOf('xff-6')?.client, '127.0.0.1');
});

test('an untrusted peer cannot choose its address with X-Forwarded-For', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [
      {
        name: 'guarded',
        upstream: 'app',
        policy: { deny: [{ name: 'blocked-net', sourceIp: ['127.0.0.0/8'] }], allow: [{ groups: ['x'] }] },
      },
    ]),
  );
  const r = await request(gw.url(), {
    path: '/',
    headers: { 'x-request-id': 'spoof-1', 'x-forwarded-for': '198.51.100.1' },
  });
  assert.equal(r.status, 403, 'still the peer address, which is denied');
  const e = gw.access.find((x) => x.requestId === 'spoof-1');
  assert.equal(e?.client, '127.0.0.1');
  assert.equal(e?.peer, undefined);
});

test('response headers: hop-by-hop removed, route edits applied, request id echoed', async (t) => {
  const b = await startBackend(t, 'b', (_req, res) => {
    res.writeHead(201, [
      'Connection',
      'X-Internal',
      'X-Internal',
      'secret',
      'Server',
      'backend/1.0',
      'X-Powered-By',
      'php',
      'Set-Cookie',
      'a=1',
      'Set-Cookie',
      'b=2',
      'Content-Length',
      '2',
    ]);
    res.end('ok');
  });
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [
      {
        name: 'all',
        upstream: 'app',
        headers: {
          response: { set: { Server: 'gatehouse', 'X-Frame-Options': 'DENY' }, remove: ['X-Powered-By'] },
        },
      },
    ]),
  );
  const r = await request(gw.url(), { path: '/' });
  assert.equal(r.status, 201);
  assert.equal(r.body.toString(), 'ok');
  assert.equal(r.headers['x-internal'], undefined);
  assert.equal(r.headers.server, 'gatehouse');
  assert.equal(r.headers['x-frame-options'], 'DENY');
  assert.equal(r.headers['x-powered-by'], undefined);
  assert.deepEqual(r.headers['set-cookie'], ['a=1', 'b=2']);
  assert.ok(r.headers['x-request-id']);
  const entry = gw.access.at(-1)!;
  assert.equal(entry.status, 201);
  assert.equal(entry.route, 'all');
  assert.equal(entry.upstream, 'app');
  assert.equal(entry.bytesOut, 2);
  assert.equal(entry.retries, 0);
  assert.equal(typeof entry.upstreamDuration, 'number');
});

test('a route protected by a policy is enforced, never forwarded unchecked', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(t, {
    ...config({ app: { servers: [{ url: b.url }] } }, [
      { name: 'guarded', match: { path: '/guarded' }, upstream: 'app', policy: 'eng', websocket: true },
      { name: 'open', match: { path: '/open' }, upstream: 'app', policy: 'eng', public: true },
    ]),
    policies: { eng: { allow: [{ groups: ['eng'] }] } },
  });
  const denied = await request(gw.url(), { path: '/guarded/x' });
  assert.equal(denied.status, 401);
  assert.match(denied.body.toString(), /GH_UNAUTHENTICATED/);
  const upgrade = await request(gw.url(), {
    path: '/guarded/ws',
    headers: {
      connection: 'upgrade',
      upgrade: 'websocket',
      'sec-websocket-version': '13',
      'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
    },
  });
  assert.equal(upgrade.status, 401);
  assert.equal(b.seen.length, 0);
  const open = await request(gw.url(), { path: '/open/x' });
  assert.equal(open.status, 200);
  assert.equal(b.seen.length, 1);
});

test('an error the gateway answers after the access stage keeps its CORS headers', async (t) => {
  const gw = await startGateway(
    t,
    config({ dead: { servers: [{ url: 'http://127.0.0.1:9' }], retries: { attempts: 0 } } }, [
      {
        name: 'api',
        match: { path: '/api' },
        upstream: 'dead',
        public: true,
        cors: { origins: ['https://app.example.com'] },
      },
    ]),
  );
  const r = await request(gw.url(), { path: '/api/x', headers: { origin: 'https://app.example.com' } });
  assert.equal(r.status, 502);
  assert.match(r.body.toString(), /GH_UPSTREAM_CONNECT/);
  assert.equal(r.headers['access-control-allow-origin'], 'https://app.example.com');
  const other = await request(gw.url(), { path: '/api/x', headers: { origin: 'https://evil.example' } });
  assert.equal(other.status, 502);
  assert.equal(other.headers['access-control-allow-origin'], undefined);
});

test('answers the gateway writes itself count their body bytes in the access log and bytes metric', async (t) => {
  const b = await startBackend(t, 'b');
  const gw = await startGateway(
    t,
    config({ app: { servers: [{ url: b.url }] } }, [
      {
        name: 'guarded',
        match: { path: '/guarded' },
        upstream: 'app',
        policy: { allow: [{ groups: ['x'] }] },
      },
    ]),
  );
  const cases: Array<[string, Record<string, string>, number]> = [
    ['/nowhere', { 'x-request-id': 'bytes-404' }, 404],
    ['/guarded/x', { 'x-request-id': 'bytes-401', accept: 'application/json' }, 401],
    ['/.gatehouse/jwks.json', { 'x-request-id': 'bytes-jwks' }, 200],
    ['/.gatehouse/nothing', { 'x-request-id': 'bytes-reserved-404' }, 404],
  ];
  for (const [path, headers, status] of cases) {
    const r = await request(gw.url(), { path, headers });
    assert.equal(r.status, status, path);
    const entry = gw.access.find((e) => e.requestId === headers['x-request-id']);
    assert.ok(entry, path);
    assert.ok(r.body.length > 0, path);
    assert.equal(entry.bytesOut, r.body.length, `${path}: bytesOut is the body sent`);
  }
  const head = await request(gw.url(), {
    method: 'HEAD',
    path: '/nowhere',
    headers: { 'x-request-id': 'bytes-head' },
  });
  assert.equal(head.status, 404);
  assert.equal(gw.access.find((e) => e.requestId === 'bytes-head')?.bytesOut, 0, 'no body for HEAD');
});

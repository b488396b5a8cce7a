import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createAccessLog } from '../src/observe/access-log.js';
import type { AccessEntry } from '../src/observe/log.js';
import { LineCollector } from './helpers/observe.js';
import { config, request, startBackend, startGateway, waitFor } from './helpers/proxy.js';

test('the access log writes one JSON line per request with every field and nothing else', () => {
  const out = new LineCollector();
  const log = createAccessLog(out);
  const entry: AccessEntry = {
    time: '2025-01-02T03:04:05.678Z',
    requestId: 'req-1',
    client: '127.0.0.1',
    host: 'airbyte.example.com',
    method: 'POST',
    path: '/api/v1/sync',
    route: 'airbyte-api',
    upstream: 'airbyte',
    server: 'airbyte-0',
    status: 502,
    bytesIn: 12,
    bytesOut: 34,
    duration: 5.5,
    upstreamDuration: 4.25,
    retries: 1,
    error: 'GH_UPSTREAM_CONNECT',
  };
  log(entry);
  log({
    ...entry,
    requestId: 'req-2',
    route: undefined,
    upstream: undefined,
    server: undefined,
    upstreamDuration: undefined,
    error: undefined,
    status: 404,
  });
  assert.equal(out.lines.length, 2);
  assert.deepEqual(JSON.parse(out.lines[0] ?? ''), entry);
  const second = JSON.parse(out.lines[1] ?? '') as Record<string, unknown>;
  assert.equal(second.requestId, 'req-2');
  assert.equal(second.status, 404);
  // Undefined fields are left out of the line rather than written as null.
  assert.deepEqual(Object.keys(second).sort(), [
    'bytesIn',
    'bytesOut',
    'client',
    'duration',
    'host',
    'method',
    'path',
    'requestId',
    'retries',
    'status',
    'time',
  ]);
});

test('fields given to the access log (a cluster worker number) lead every line', () => {
  const out = new LineCollector();
  const log = createAccessLog(out, { worker: 3 });
  log({
    time: '2025-01-02T03:04:05.678Z',
    requestId: 'req-9',
    client: '127.0.0.1',
    host: 'h',
    method: 'GET',
    path: '/',
    route: 'r',
    upstream: undefined,
    server: undefined,
    status: 200,
    bytesIn: 0,
    bytesOut: 2,
    duration: 1,
    upstreamDuration: undefined,
    retries: 0,
  });
  assert.equal(out.lines.length, 1);
  assert.match(out.lines[0] ?? '', /^\{"worker":3,"time":"2025-01-02T03:04:05.678Z","requestId":"req-9",/);
  assert.equal(JSON.parse(out.lines[0] ?? '').worker, 3);
});

test("the sign-in endpoints' answers are logged with their status and stable code, like the gateway's own refusals", async (t) => {
  const backend = await startBackend(t, 'app');
  const gw = await startGateway(t, {
    ...config({ app: { servers: [{ url: backend.url }] } }, [{ name: 'all', upstream: 'app' }]),
    identity: {
      session: { secrets: ['observe-access-log-session-secret-0123456789'] },
      // Never contacted: every request below is answered before the provider would be.
      providers: [
        { name: 'corp', type: 'oidc', issuer: 'http://127.0.0.1:9', clientId: 'c', clientSecret: 's' },
      ],
    },
  });
  const cases: Array<[string, string, number, string]> = [
    ['POST', '/.gatehouse/login', 405, 'GH_METHOD_NOT_ALLOWED'],
    ['GET', '/.gatehouse/userinfo', 401, 'GH_UNAUTHENTICATED'],
    ['GET', '/.gatehouse/nothing-here', 404, 'GH_NOT_FOUND'],
  ];
  for (const [method, path, status] of cases) {
    const r = await request(gw.url(), { method, path, headers: { 'content-length': '0' } });
    assert.equal(r.status, status, `${method} ${path}`);
  }
  await waitFor(() => gw.access.length === cases.length, 'an access log line per request');
  assert.deepEqual(
    gw.access.map((e) => [e.method, e.path, e.status, e.error]),
    cases,
  );
});

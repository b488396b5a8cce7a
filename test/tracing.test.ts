/**
 * OpenTelemetry tracing end to end: a real gateway (`Gateway.start` on a config file), real upstreams
 * and an OTLP/HTTP receiver of the test's own that decodes the JSON the exporter sends.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { type TestContext, test } from 'node:test';
import WebSocket, { WebSocketServer } from 'ws';
import { loadConfig } from '../src/config/load.js';
import { generateApiKey } from '../src/identity/apikeys.js';
import { DECISION_SPAN } from '../src/observe/tracing.js';
import { Gateway } from '../src/process/gateway.js';
import { spawnGatehouse, startedInstance } from './helpers/cluster.js';
import { memoryLogger, tempDir } from './helpers/gateway.js';
import { listenUntilEnd } from './helpers/listen.js';
import { type Seen, startBackend, waitFor } from './helpers/proxy.js';

// OTLP span kinds and status codes (opentelemetry-proto trace.proto).
const KIND_INTERNAL = 1;
const KIND_SERVER = 2;
const KIND_CLIENT = 3;
const STATUS_ERROR = 2;

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$/;

/** One span as received, attributes flattened to plain values. */
interface ReceivedSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  kind: number;
  attributes: Record<string, unknown>;
  status: { code?: number; message?: string };
  resource: Record<string, unknown>;
}

/** An OTLP/HTTP receiver on 127.0.0.1 port 0 (POST /v1/traces, JSON encoding). */
interface Receiver {
  url: string;
  spans: ReceivedSpan[];
  /** Request headers of every export received. */
  exports: http.IncomingHttpHeaders[];
}

type AnyValue = {
  stringValue?: string;
  intValue?: number | string;
  doubleValue?: number;
  boolValue?: boolean;
};
type KeyValue = { key: string; value: AnyValue };

function flatten(attrs: KeyValue[] | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const { key, value } of attrs ?? []) {
    if (value.stringValue !== undefined) out[key] = value.stringValue;
    else if (value.intValue !== undefined) out[key] = Number(value.intValue);
    else if (value.doubleValue !== undefined) out[key] = value.doubleValue;
    else if (value.boolValue !== undefined) out[key] = value.boolValue;
  }
  return out;
}

async function startReceiver(t: TestContext): Promise<Receiver> {
  const receiver: Receiver = { url: '', spans: [], exports: [] };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/traces') {
        res.writeHead(404).end();
        return;
      }
      receiver.exports.push(req.headers);
      assert.match(String(req.headers['content-type']), /^application\/json/);
      const body = JSON.parse(Buffer.concat(chunks).toString()) as {
        resourceSpans: Array<{
          resource?: { attributes?: KeyValue[] };
          scopeSpans: Array<{
            spans: Array<{
              traceId: string;
              spanId: string;
              parentSpanId?: string;
              name: string;
              kind: number;
              attributes?: KeyValue[];
              status?: { code?: number; message?: string };
            }>;
          }>;
        }>;
      };
      for (const rs of body.resourceSpans) {
        const resource = flatten(rs.resource?.attributes);
        for (const ss of rs.scopeSpans)
          for (const s of ss.spans)
            receiver.spans.push({
              traceId: s.traceId,
              spanId: s.spanId,
              parentSpanId: s.parentSpanId ?? '',
              name: s.name,
              kind: s.kind,
              attributes: flatten(s.attributes),
              status: s.status ?? {},
              resource,
            });
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  const port = await listenUntilEnd(t, server);
  receiver.url = `http://127.0.0.1:${port}/v1/traces`;
  return receiver;
}

/** A gateway started from a config file written for the test; shut down (and flushed) after it. */
async function startTraced(
  t: TestContext,
  cfg: Record<string, unknown>,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{
  gw: Gateway;
  url: string;
  rewrite(next: Record<string, unknown>): void;
  logs: Array<Record<string, unknown>>;
}> {
  const dir = tempDir('gatehouse-tracing-');
  t.after(() => dir.remove());
  const file = dir.write('gatehouse.yaml', JSON.stringify(cfg));
  const { logger, lines } = memoryLogger();
  const gw = await Gateway.start({ configFile: file, watch: false, logger, accessLog: () => {}, env });
  t.after(() => gw.shutdown());
  return {
    gw,
    url: `http://127.0.0.1:${gw.address('web')!.port}`,
    rewrite: (next) => dir.write('gatehouse.yaml', JSON.stringify(next)),
    logs: lines,
  };
}

function gatewayConfig(
  upstreamUrls: string[],
  extra: Record<string, unknown> = {},
  upstream: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    listeners: [{ name: 'web', bind: '127.0.0.1:0' }],
    upstreams: { app: { servers: upstreamUrls.map((url) => ({ url })), ...upstream } },
    routes: [{ name: 'api', match: { path: '/' }, upstream: 'app', public: true }],
    logging: { level: 'warn', access: false },
    ...extra,
  };
}

/** One GET from `localAddress` (a loopback address: all of 127.0.0.0/8 is local on Linux). */
function get(
  url: string,
  path: string,
  headers: Record<string, string> = {},
  localAddress = '127.0.0.1',
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = http.request({
      host: u.hostname,
      port: u.port,
      path,
      headers,
      localAddress,
      agent: false,
      signal: AbortSignal.timeout(15_000),
    });
    req.on('error', reject);
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.end();
  });
}

/** The spans of one trace received so far. */
function traceOf(r: Receiver, traceId: string): ReceivedSpan[] {
  return r.spans.filter((s) => s.traceId === traceId);
}

/** Flushes the gateway's tracer and waits until the receiver holds `count` spans. */
async function flushed(gw: Gateway, r: Receiver, count: number): Promise<void> {
  await gw.runtime.tracing!.flush();
  await waitFor(() => r.spans.length >= count, `${count} spans at the receiver (have ${r.spans.length})`);
}

function only<T>(items: T[], what: string): T {
  assert.equal(items.length, 1, `exactly one ${what}, got ${items.length}`);
  return items[0]!;
}

function traceparentOf(seen: Seen): RegExpExecArray {
  const value = seen.headers.traceparent;
  assert.equal(typeof value, 'string', 'the upstream received a traceparent');
  const m = TRACEPARENT.exec(value as string);
  assert.ok(m, `a valid traceparent: ${String(value)}`);
  return m;
}

test('a request gives a server span, a decision span and an attempt span, and the upstream continues the trace', async (t) => {
  const receiver = await startReceiver(t);
  const backend = await startBackend(t, 'b');
  const key = generateApiKey('etl');
  const { gw, url } = await startTraced(
    t,
    gatewayConfig([backend.url], {
      tracing: {
        endpoint: receiver.url,
        serviceName: 'edge-gw',
        headers: { 'X-Collector-Token': 'env:TRACE_TOKEN' },
      },
      identity: { apiKeys: [{ id: 'etl', hash: key.hashLine, subject: 'agent:etl', groups: ['agents'] }] },
      routes: [
        {
          name: 'agents',
          match: { path: '/jobs/' },
          upstream: 'app',
          policy: { allow: [{ groups: ['agents'] }] },
        },
      ],
    }),
    { ...process.env, TRACE_TOKEN: 'sekret-token' },
  );
  const r = await get(url, '/jobs/42?q=1', { 'x-api-key': key.key });
  assert.equal(r.status, 200);
  const seen = only(backend.seen, 'upstream request');
  const [, traceId, parentId, flags] = traceparentOf(seen);
  assert.equal(flags, '01', 'sampled');

  await flushed(gw, receiver, 3);
  const spans = traceOf(receiver, traceId!);
  assert.equal(spans.length, 3, `one trace of three spans: ${spans.map((s) => s.name).join(', ')}`);
  const server = only(
    spans.filter((s) => s.kind === KIND_SERVER),
    'server span',
  );
  assert.equal(server.parentSpanId, '', 'a trace started at the gateway');
  assert.equal(server.name, 'GET agents');
  assert.equal(server.attributes['http.request.method'], 'GET');
  assert.equal(server.attributes['url.path'], '/jobs/42');
  assert.equal(server.attributes['http.route'], 'agents');
  assert.equal(server.attributes['http.response.status_code'], 200);
  assert.equal(server.attributes['client.address'], '127.0.0.1');
  assert.equal(server.attributes['gatehouse.request_id'], seen.headers['x-request-id']);
  assert.notEqual(server.status.code, STATUS_ERROR);
  assert.equal(server.resource['service.name'], 'edge-gw');

  const decision = only(
    spans.filter((s) => s.name === DECISION_SPAN),
    'decision span',
  );
  assert.equal(decision.kind, KIND_INTERNAL);
  assert.equal(decision.parentSpanId, server.spanId);
  assert.equal(decision.attributes['gatehouse.route'], 'agents');
  assert.equal(decision.attributes['gatehouse.decision'], 'allow');
  assert.equal(decision.attributes['gatehouse.decision.reason'], 'policy-allow:agents.allow[0]');
  assert.equal(decision.attributes['gatehouse.decision.rule'], 'agents.allow[0]');
  assert.equal(decision.attributes['enduser.id'], 'agent:etl');
  assert.equal(decision.attributes['gatehouse.auth.method'], 'apiKey');

  const attempt = only(
    spans.filter((s) => s.kind === KIND_CLIENT),
    'attempt span',
  );
  assert.equal(attempt.parentSpanId, server.spanId);
  assert.equal(attempt.name, 'GET app');
  assert.equal(attempt.attributes['server.address'], '127.0.0.1');
  assert.equal(attempt.attributes['server.port'], backend.port);
  assert.equal(attempt.attributes['gatehouse.attempt'], 1);
  assert.equal(attempt.attributes['http.response.status_code'], 200);
  // The upstream's parent is the span of the attempt that reached it.
  assert.equal(parentId, attempt.spanId);
  // Export headers: secret references resolved.
  assert.equal(receiver.exports[0]?.['x-collector-token'], 'sekret-token');
});

test('a refused request has a decision span with the reason and no attempt span', async (t) => {
  const receiver = await startReceiver(t);
  const backend = await startBackend(t, 'b');
  const { gw, url } = await startTraced(
    t,
    gatewayConfig([backend.url], {
      tracing: { endpoint: receiver.url },
      routes: [
        { name: 'private', match: { path: '/' }, upstream: 'app', policy: { allow: [{ groups: ['x'] }] } },
      ],
    }),
  );
  const r = await get(url, '/secret', { accept: 'application/json' });
  assert.equal(r.status, 401);
  assert.equal(backend.seen.length, 0);
  await flushed(gw, receiver, 2);
  const server = only(
    receiver.spans.filter((s) => s.kind === KIND_SERVER),
    'server span',
  );
  const spans = traceOf(receiver, server.traceId);
  assert.equal(spans.length, 2);
  const decision = only(
    spans.filter((s) => s.name === DECISION_SPAN),
    'decision span',
  );
  assert.equal(decision.parentSpanId, server.spanId);
  assert.equal(decision.attributes['gatehouse.decision'], 'unauthenticated');
  assert.equal(decision.attributes['gatehouse.decision.reason'], 'user-unauthenticated');
  assert.equal(decision.attributes['enduser.id'], undefined);
  assert.equal(server.attributes['http.response.status_code'], 401);
  assert.equal(server.attributes['error.type'], 'GH_UNAUTHENTICATED');
  // A 4xx is the client's problem: the server span is not an error.
  assert.notEqual(server.status.code, STATUS_ERROR);
});

test('a retry shows as a second attempt span, each attempt the parent of what its upstream received', async (t) => {
  const receiver = await startReceiver(t);
  let n = 0;
  const backend = await startBackend(t, 'flaky', (_req, res) => {
    n++;
    res.writeHead(n === 1 ? 502 : 200, { 'content-length': 2 });
    res.end('ok');
  });
  const { gw, url } = await startTraced(
    t,
    gatewayConfig(
      [backend.url],
      { tracing: { endpoint: receiver.url } },
      { retries: { attempts: 1, on: [502], backoff: '1ms' }, passive: { failures: 1000 } },
    ),
  );
  const r = await get(url, '/retry');
  assert.equal(r.status, 200);
  assert.equal(backend.seen.length, 2);
  const first = traceparentOf(backend.seen[0]!);
  const second = traceparentOf(backend.seen[1]!);
  assert.equal(first[1], second[1], 'both attempts carry one trace id');
  assert.notEqual(first[2], second[2], 'each attempt is a parent of its own');

  await flushed(gw, receiver, 4);
  const spans = traceOf(receiver, first[1]!);
  const server = only(
    spans.filter((s) => s.kind === KIND_SERVER),
    'server span',
  );
  const attempts = spans
    .filter((s) => s.kind === KIND_CLIENT)
    .sort((a, b) => Number(a.attributes['gatehouse.attempt']) - Number(b.attributes['gatehouse.attempt']));
  assert.equal(attempts.length, 2);
  for (const a of attempts) assert.equal(a.parentSpanId, server.spanId);
  assert.equal(attempts[0]!.spanId, first[2]);
  assert.equal(attempts[1]!.spanId, second[2]);
  assert.equal(attempts[0]!.attributes['http.response.status_code'], 502);
  assert.equal(attempts[0]!.status.code, STATUS_ERROR);
  assert.equal(attempts[1]!.attributes['gatehouse.attempt'], 2);
  assert.equal(attempts[1]!.attributes['http.request.resend_count'], 1);
  assert.equal(attempts[1]!.attributes['http.response.status_code'], 200);
  assert.notEqual(attempts[1]!.status.code, STATUS_ERROR);
  assert.equal(server.attributes['http.response.status_code'], 200);
});

test("a trusted caller's trace is continued; an untrusted caller's traceparent and tracestate are replaced", async (t) => {
  const receiver = await startReceiver(t);
  const backend = await startBackend(t, 'b');
  const { gw, url } = await startTraced(
    t,
    gatewayConfig([backend.url], {
      tracing: { endpoint: receiver.url },
      server: { trustedProxies: ['127.0.0.2/32'] },
    }),
  );
  const callerTrace = '4bf92f3577b34da6a3ce929d0e0e4736';
  const callerSpan = '00f067aa0ba902b7';
  const caller = { traceparent: `00-${callerTrace}-${callerSpan}-01`, tracestate: 'vendor=opaque' };

  assert.equal((await get(url, '/trusted', caller, '127.0.0.2')).status, 200);
  const trusted = traceparentOf(backend.seen[0]!);
  assert.equal(trusted[1], callerTrace, "the trusted caller's trace id is kept");
  assert.notEqual(trusted[2], callerSpan, "the upstream's parent is the gateway's span");
  assert.equal(backend.seen[0]!.headers.tracestate, 'vendor=opaque');

  assert.equal((await get(url, '/untrusted', caller, '127.0.0.1')).status, 200);
  const untrusted = traceparentOf(backend.seen[1]!);
  assert.notEqual(untrusted[1], callerTrace, 'an untrusted caller does not choose the trace id');
  assert.equal(backend.seen[1]!.headers.tracestate, undefined, 'nor the trace state');
  assert.equal(
    backend.seen[1]!.rawHeaders.filter((h) => h.toLowerCase() === 'traceparent').length,
    1,
    "the caller's traceparent is replaced, not repeated",
  );

  // A malformed traceparent, even from a trusted peer, starts a new trace.
  const malformed = { traceparent: `00-${callerTrace}-${callerSpan}-zz` };
  assert.equal((await get(url, '/malformed', malformed, '127.0.0.2')).status, 200);
  const restarted = traceparentOf(backend.seen[2]!);
  assert.notEqual(restarted[1], callerTrace);

  await flushed(gw, receiver, 6);
  const continued = only(
    traceOf(receiver, callerTrace).filter((s) => s.kind === KIND_SERVER),
    'server span in the caller trace',
  );
  assert.equal(continued.parentSpanId, callerSpan);
  assert.equal(continued.attributes['url.path'], '/trusted');
  const fresh = only(
    traceOf(receiver, untrusted[1]!).filter((s) => s.kind === KIND_SERVER),
    'server span of the new trace',
  );
  assert.equal(fresh.parentSpanId, '');
  assert.equal(fresh.attributes['url.path'], '/untrusted');
});

test('sampler ratio 0 exports nothing, and the upstream still gets a valid unsampled traceparent', async (t) => {
  const receiver = await startReceiver(t);
  const backend = await startBackend(t, 'b');
  const { gw, url } = await startTraced(
    t,
    gatewayConfig([backend.url], { tracing: { endpoint: receiver.url, sampler: { ratio: 0 } } }),
  );
  for (let i = 0; i < 5; i++) assert.equal((await get(url, `/n/${i}`)).status, 200);
  const ids = new Set<string>();
  for (const seen of backend.seen) {
    const [, traceId, spanId, flags] = traceparentOf(seen);
    assert.equal(flags, '00', 'not sampled');
    assert.notEqual(traceId, '0'.repeat(32));
    assert.notEqual(spanId, '0'.repeat(16));
    ids.add(traceId!);
  }
  assert.equal(ids.size, 5, 'a new trace per request');
  await gw.runtime.tracing!.flush();
  // Control: the receiver works (a sampled request through another gateway reaches it).
  const control = await startTraced(t, gatewayConfig([backend.url], { tracing: { endpoint: receiver.url } }));
  assert.equal((await get(control.url, '/control')).status, 200);
  await flushed(control.gw, receiver, 2);
  assert.ok(
    receiver.spans.every((s) => s.attributes['url.path'] === '/control' || s.kind !== KIND_SERVER),
    'only the control request was exported',
  );
  assert.ok(!receiver.spans.some((s) => ids.has(s.traceId)), 'no span of the unsampled traces');
});

test("with tracing off no traceparent is added and a client's passes unchanged", async (t) => {
  const backend = await startBackend(t, 'b');
  const { gw, url } = await startTraced(t, gatewayConfig([backend.url]));
  assert.equal(gw.runtime.tracing, undefined);
  assert.equal((await get(url, '/plain')).status, 200);
  assert.equal(backend.seen[0]!.headers.traceparent, undefined);
  const client = {
    traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    tracestate: 'a=b',
  };
  assert.equal((await get(url, '/client', client)).status, 200);
  assert.equal(backend.seen[1]!.headers.traceparent, client.traceparent);
  assert.equal(backend.seen[1]!.headers.tracestate, client.tracestate);
});

test('a client that leaves before its answer marks the server and attempt spans as errors', async (t) => {
  const receiver = await startReceiver(t);
  let arrived!: () => void;
  const reached = new Promise<void>((resolve) => {
    arrived = resolve;
  });
  const backend = await startBackend(t, 'slow', (_req, res) => {
    arrived();
    // Answers only when the test ends (the backend closes its connections then).
    res.on('close', () => {});
  });
  const { gw, url } = await startTraced(
    t,
    gatewayConfig([backend.url], { tracing: { endpoint: receiver.url } }),
  );
  const u = new URL(url);
  const req = http.request({ host: u.hostname, port: u.port, path: '/slow', agent: false });
  req.on('error', () => {});
  req.end();
  await reached;
  req.destroy();
  await waitFor(() => gw.runtime.inFlight.count === 0, 'the request to end');
  await flushed(gw, receiver, 2);
  const server = only(
    receiver.spans.filter((s) => s.kind === KIND_SERVER),
    'server span',
  );
  assert.equal(server.status.code, STATUS_ERROR);
  assert.equal(server.attributes['error.type'], 'GH_CLIENT_CLOSED');
  assert.equal(server.attributes['http.response.status_code'], 499);
  const attempt = only(
    receiver.spans.filter((s) => s.kind === KIND_CLIENT),
    'attempt span',
  );
  assert.equal(attempt.status.code, STATUS_ERROR);
  assert.equal(attempt.attributes['error.type'], 'GH_CLIENT_CLOSED');
});

test('a failed attempt records the gateway error code', async (t) => {
  const receiver = await startReceiver(t);
  // A port nothing listens on: bound once, then closed.
  const dead = http.createServer();
  await new Promise<void>((resolve) => dead.listen(0, '127.0.0.1', resolve));
  const port = (dead.address() as AddressInfo).port;
  await new Promise<void>((resolve) => dead.close(() => resolve()));
  const { gw, url } = await startTraced(
    t,
    gatewayConfig(
      [`http://127.0.0.1:${port}`],
      { tracing: { endpoint: receiver.url } },
      { retries: { attempts: 0 } },
    ),
  );
  assert.equal((await get(url, '/down')).status, 502);
  await flushed(gw, receiver, 3);
  const attempt = only(
    receiver.spans.filter((s) => s.kind === KIND_CLIENT),
    'attempt span',
  );
  assert.equal(attempt.attributes['error.type'], 'GH_UPSTREAM_CONNECT');
  assert.equal(attempt.status.code, STATUS_ERROR);
  const server = only(
    receiver.spans.filter((s) => s.kind === KIND_SERVER),
    'server span',
  );
  assert.equal(server.status.code, STATUS_ERROR);
  assert.equal(server.attributes['http.response.status_code'], 502);
});

test('a reload that changes the endpoint replaces the tracer and flushes the old one; one that does not keeps it', async (t) => {
  const first = await startReceiver(t);
  const second = await startReceiver(t);
  const backend = await startBackend(t, 'b');
  const { gw, url, rewrite } = await startTraced(
    t,
    gatewayConfig([backend.url], { tracing: { endpoint: first.url } }),
  );
  assert.equal((await get(url, '/before')).status, 200);
  const before = gw.runtime.tracing;

  // Same tracing settings, another route: the tracer is kept (its buffered spans with it).
  rewrite(
    gatewayConfig([backend.url], {
      tracing: { endpoint: first.url },
      routes: [{ name: 'renamed', match: { path: '/' }, upstream: 'app', public: true }],
    }),
  );
  assert.deepEqual(await gw.reload(), { ok: true, generation: 2 });
  assert.equal(gw.runtime.tracing, before);

  rewrite(gatewayConfig([backend.url], { tracing: { endpoint: second.url } }));
  assert.deepEqual(await gw.reload(), { ok: true, generation: 3 });
  assert.notEqual(gw.runtime.tracing, before);
  // The replaced tracer is flushed once no request of an older configuration runs: no flush() here.
  await waitFor(() => first.spans.length >= 2, 'the old tracer flushed to the first receiver');
  assert.equal((await get(url, '/after')).status, 200);
  await flushed(gw, second, 2);
  const paths = (r: Receiver): unknown[] =>
    r.spans.filter((s) => s.kind === KIND_SERVER).map((s) => s.attributes['url.path']);
  assert.deepEqual(paths(first), ['/before']);
  assert.deepEqual(paths(second), ['/after']);

  // Tracing removed by a reload: off, and nothing more is exported.
  rewrite(gatewayConfig([backend.url]));
  assert.deepEqual(await gw.reload(), { ok: true, generation: 4 });
  assert.equal(gw.runtime.tracing, undefined);
  assert.equal((await get(url, '/off')).status, 200);
  assert.equal(backend.seen.at(-1)!.headers.traceparent, undefined);
});

test('a WebSocket handshake gets its spans, ended when it is answered, and the upstream a traceparent', async (t) => {
  const receiver = await startReceiver(t);
  const handshakes: http.IncomingHttpHeaders[] = [];
  const server = http.createServer((_req, res) => res.end('plain'));
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws, req) => {
    handshakes.push(req.headers);
    ws.on('message', (data) => ws.send(`echo:${data.toString()}`));
  });
  const port = await listenUntilEnd(t, server);
  t.after(() => wss.close());
  const { gw, url } = await startTraced(
    t,
    gatewayConfig([`http://127.0.0.1:${port}`], {
      tracing: { endpoint: receiver.url },
      routes: [{ name: 'live', match: { path: '/live' }, upstream: 'app', public: true, websocket: true }],
    }),
  );
  const untrusted = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
  const ws = new WebSocket(`${url.replace('http:', 'ws:')}/live/socket`, {
    headers: { traceparent: untrusted },
  });
  t.after(() => ws.terminate());
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  ws.send('hi');
  const reply = await new Promise<string>((resolve) => ws.once('message', (d) => resolve(d.toString())));
  assert.equal(reply, 'echo:hi');
  const m = TRACEPARENT.exec(String(handshakes[0]?.traceparent));
  assert.ok(m, 'the upstream got a traceparent');
  assert.notEqual(m[1], '4bf92f3577b34da6a3ce929d0e0e4736', "not the untrusted client's");
  // The tunnel is still open: the handshake's spans are exported all the same.
  await flushed(gw, receiver, 3);
  const spans = traceOf(receiver, m[1]!);
  const handshake = only(
    spans.filter((s) => s.kind === KIND_SERVER),
    'server span',
  );
  assert.equal(handshake.attributes['http.response.status_code'], 101);
  assert.equal(handshake.attributes['http.route'], 'live');
  const decision = only(
    spans.filter((s) => s.name === DECISION_SPAN),
    'decision span',
  );
  assert.equal(decision.attributes['gatehouse.decision'], 'allow');
  const attempt = only(
    spans.filter((s) => s.kind === KIND_CLIENT),
    'attempt span',
  );
  assert.equal(attempt.parentSpanId, handshake.spanId);
  assert.equal(attempt.spanId, m[2]);
  assert.equal(attempt.attributes['http.response.status_code'], 101);
});

test('shutdown exports the spans still buffered', async (t) => {
  const receiver = await startReceiver(t);
  const backend = await startBackend(t, 'b');
  const { gw, url } = await startTraced(
    t,
    gatewayConfig([backend.url], { tracing: { endpoint: receiver.url } }),
  );
  assert.equal((await get(url, '/last')).status, 200);
  // The batch delay (5 s) has not passed: only the shutdown sends them.
  assert.equal(receiver.spans.length, 0);
  await gw.shutdown();
  assert.ok(receiver.spans.some((s) => s.attributes['url.path'] === '/last'));
});

test('SIGTERM: the gateway process drains, exports its spans, then exits 0', async (t) => {
  const receiver = await startReceiver(t);
  const backend = await startBackend(t, 'b');
  const dir = tempDir('gatehouse-tracing-sigterm-');
  t.after(() => dir.remove());
  const file = dir.write(
    'gatehouse.yaml',
    JSON.stringify(
      // At info: the start line says which port the listener took.
      gatewayConfig([backend.url], {
        tracing: { endpoint: receiver.url },
        logging: { level: 'info', access: false },
      }),
    ),
  );
  const gh = spawnGatehouse(file);
  t.after(() => gh.kill());
  const { port } = await startedInstance(gh);
  for (let i = 0; i < 3; i++) assert.equal((await get(`http://127.0.0.1:${port}`, `/term/${i}`)).status, 200);
  // Well within the batch delay (5 s): nothing was exported yet, the SIGTERM sends it.
  assert.equal(receiver.spans.length, 0);
  gh.child.kill('SIGTERM');
  assert.equal((await gh.exitedWithin(30_000)).code, 0);
  const paths = receiver.spans.filter((s) => s.kind === KIND_SERVER).map((s) => s.attributes['url.path']);
  assert.deepEqual(paths.sort(), ['/term/0', '/term/1', '/term/2']);
});

test('a collector that is down costs no request, and the failure is logged once', async (t) => {
  const dead = http.createServer();
  await new Promise<void>((resolve) => dead.listen(0, '127.0.0.1', resolve));
  const port = (dead.address() as AddressInfo).port;
  await new Promise<void>((resolve) => dead.close(() => resolve()));
  const backend = await startBackend(t, 'b');
  const { gw, url, logs } = await startTraced(
    t,
    gatewayConfig([backend.url], {
      tracing: { endpoint: `http://127.0.0.1:${port}/v1/traces`, exportTimeout: '2s' },
    }),
  );
  for (let i = 0; i < 3; i++) {
    assert.equal((await get(url, `/x/${i}`)).status, 200);
    await gw.runtime.tracing!.flush();
  }
  const failures = logs.filter((l) => String(l.msg).startsWith('trace export failed'));
  assert.equal(failures.length, 1, 'one warning for the whole outage');
});

test('tracing settings are validated like the rest of the configuration', async (t) => {
  const dir = tempDir('gatehouse-tracing-config-');
  t.after(() => dir.remove());
  const base = gatewayConfig(['http://127.0.0.1:9']);
  const cases: Array<[unknown, string]> = [
    [{ endpoint: 'ftp://collector:21/v1/traces' }, 'tracing.endpoint'],
    [{ endpoint: 'http://user:pw@collector:4318/v1/traces' }, 'tracing.endpoint'],
    [{ sampler: { ratio: 1.5 } }, 'tracing.sampler.ratio'],
    [{ sampler: { ratio: 0.5, always: true } }, 'tracing.sampler'],
    [{ exportTimeout: '0s' }, 'tracing.exportTimeout'],
    [{ headers: { Authorization: 'env:GATEHOUSE_TRACING_UNSET_VARIABLE' } }, 'tracing.headers.Authorization'],
    [{ headers: { 'Bad Header': 'x' } }, 'tracing.headers'],
  ];
  for (const [tracing, path] of cases) {
    const file = dir.write('bad.yaml', JSON.stringify({ ...base, tracing }));
    const loaded = await loadConfig(file, {});
    assert.equal(loaded.ok, false, JSON.stringify(tracing));
    if (loaded.ok) continue;
    assert.ok(
      loaded.problems.some((p) => p.path.startsWith(path)),
      `${JSON.stringify(tracing)}: a problem at ${path}: ${JSON.stringify(loaded.problems)}`,
    );
  }
  const file = dir.write('good.yaml', JSON.stringify({ ...base, tracing: {} }));
  const loaded = await loadConfig(file, {});
  assert.ok(loaded.ok);
  assert.deepEqual(loaded.config.tracing, {
    endpoint: 'http://127.0.0.1:4318/v1/traces',
    serviceName: 'gatehouse',
    sampler: { ratio: 1, parentBased: true },
    headers: {},
    exportTimeout: 10_000,
  });
});

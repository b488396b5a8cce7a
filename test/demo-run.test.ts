import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { EchoReply } from '../src/demo/backends.js';
import { startDemo } from '../src/demo/run.js';
import type { AccessEntry } from '../src/observe/log.js';
import { createLogger } from '../src/observe/log.js';
import { LineCollector, request } from './helpers/observe.js';

test('the demo forwards to the echo servers with forwarded headers and streams a sync job', async (t) => {
  const access: AccessEntry[] = [];
  const demo = await startDemo({
    port: 0,
    adminPort: 0,
    jobIntervalMs: 50,
    jobDurationMs: 250,
    logger: createLogger('warn', new LineCollector()),
    accessLog: (e) => access.push(e),
  });
  t.after(() => demo.close());

  const seen = new Set<string>();
  for (let i = 0; i < 2; i++) {
    const res = await request(`${demo.url}/echo/hello?n=${i}`, {
      headers: { 'x-request-id': `demo-req-${i}`, 'x-debug-token': 'leak', 'x-forwarded-for': '203.0.113.9' },
    });
    assert.equal(res.status, 200, res.text);
    const reply = res.json() as EchoReply;
    seen.add(reply.server);
    assert.equal(reply.method, 'GET');
    assert.equal(reply.url, `/echo/hello?n=${i}`);
    assert.equal(reply.headers['x-request-id'], `demo-req-${i}`);
    assert.equal(reply.headers['x-forwarded-for'], '127.0.0.1');
    assert.equal(reply.headers['x-forwarded-proto'], 'http');
    assert.equal(reply.headers['x-forwarded-host'], new URL(demo.url).host);
    assert.equal(reply.headers['x-demo'], 'gatehouse-demo');
    assert.equal(reply.headers['x-debug-token'], undefined);
    assert.equal(res.headers.get('x-powered-by'), 'Gatehouse');
    assert.equal(res.headers.get('x-served-by'), null);
  }
  assert.deepEqual([...seen].sort(), ['echo-1', 'echo-2'], 'round-robin reaches both echo servers');

  const res = await fetch(`${demo.url}/jobs/sync`, { signal: AbortSignal.timeout(5000) });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
  const chunks: string[] = [];
  const decoder = new TextDecoder();
  for await (const chunk of res.body ?? [])
    chunks.push(decoder.decode(chunk as Uint8Array, { stream: true }));
  const stream = chunks.join('');
  const progress = stream.match(/^event: progress$/gm) ?? [];
  assert.ok(progress.length >= 2, `expected at least 2 progress events, got:\n${stream}`);
  assert.match(stream, /event: done\ndata: \{[^\n]*"status":"succeeded"/);
  // The events arrived in more than one piece: the gateway streamed rather than buffered them.
  assert.ok(chunks.length >= 2, 'the event stream arrived as it was produced');

  assert.ok(demo.adminUrl);
  const status = await request(`${demo.adminUrl}/api/v1/status`);
  assert.equal(status.status, 200);
  const body = status.json() as { routes: Array<{ name: string }> };
  assert.deepEqual(
    body.routes.map((r) => r.name),
    ['echo', 'api-canary', 'jobs'],
  );
  assert.ok(access.some((e) => e.route === 'echo' && e.status === 200));
});

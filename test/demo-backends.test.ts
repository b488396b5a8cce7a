import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type EchoReply, startEchoBackend, startJobsBackend } from '../src/demo/backends.js';
import { request } from './helpers/observe.js';

test('the echo backend describes the request it received', async (t) => {
  const echo = await startEchoBackend({ name: 'e1' });
  t.after(() => echo.close());
  const res = await request(`${echo.url}/a/b?c=d`, {
    method: 'POST',
    body: 'x'.repeat(1234),
    headers: { 'x-one': '1' },
  });
  assert.equal(res.status, 200);
  const reply = res.json() as EchoReply;
  assert.equal(reply.server, 'e1');
  assert.equal(reply.method, 'POST');
  assert.equal(reply.url, '/a/b?c=d');
  assert.equal(reply.bodyLength, 1234);
  assert.equal(reply.headers['x-one'], '1');
  assert.equal((await request(`${echo.url}/health`)).text, 'ok\n');
});

test('the jobs backend streams progress events and then done', async (t) => {
  const jobs = await startJobsBackend({ intervalMs: 20, durationMs: 100 });
  t.after(() => jobs.close());
  const res = await request(`${jobs.url}/sync`);
  assert.equal(res.status, 200);
  assert.equal((res.text.match(/^event: progress$/gm) ?? []).length, 5);
  assert.match(res.text, /^event: started$/m);
  assert.match(res.text, /event: done\n/);
  assert.equal((await request(`${jobs.url}/sync`, { method: 'POST' })).status, 405);
});

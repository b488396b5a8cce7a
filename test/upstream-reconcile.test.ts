import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { reconcileUpstreams } from '../src/upstream/index.js';
import type { Lease } from '../src/upstream/types.js';
import { memoryLogger, send, startBackend, testContext, upstreamConfig } from './helpers/upstream.js';

test('reconcileUpstreams reuses unchanged upstreams and retires removed and changed ones', async (t) => {
  const a = await startBackend('a');
  const b = await startBackend('b');
  const dir = mkdtempSync(path.join(tmpdir(), 'gh-upstream-reconcile-'));
  const token = path.join(dir, 'token');
  writeFileSync(token, 'v1');
  t.after(async () => {
    await a.close();
    await b.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const { logger } = memoryLogger();
  const ctx = testContext();
  const defs1 = {
    keep: upstreamConfig({
      servers: [{ url: a.url }],
      passive: { failures: 1, ejectFor: '1h', maxEjectedPercent: 100 },
    }),
    change: upstreamConfig({ servers: [{ url: a.url }] }),
    gone: upstreamConfig({ servers: [{ url: b.url }] }),
    secret: upstreamConfig({
      servers: [{ url: b.url }],
      inject: { headers: { 'X-Token': `\${file:${token}}` } },
    }),
  };
  const first = await reconcileUpstreams(undefined, defs1, ctx, logger);
  assert.deepEqual([...first.upstreams.keys()], ['keep', 'change', 'gone', 'secret']);
  assert.deepEqual(first.retired, []);
  for (const u of first.upstreams.values()) u.start();
  const keep = first.upstreams.get('keep')!;
  // State that must survive the reload: an in-flight lease and a passive ejection.
  const inflight = keep.acquire({ clientIp: '127.0.0.1', headers: {} }) as Lease;

  const defs2 = {
    // Parsed again from the same input: equal, not identical.
    keep: upstreamConfig({
      servers: [{ url: a.url }],
      passive: { failures: 1, ejectFor: '1h', maxEjectedPercent: 100 },
    }),
    change: upstreamConfig({ servers: [{ url: a.url, weight: 3 }] }),
    secret: upstreamConfig({
      servers: [{ url: b.url }],
      inject: { headers: { 'X-Token': `\${file:${token}}` } },
    }),
    added: upstreamConfig({ servers: [{ url: b.url }] }),
  };
  writeFileSync(token, 'v2'); // a rotated secret rebuilds an otherwise unchanged upstream
  const second = await reconcileUpstreams(first.upstreams, defs2, ctx, logger);
  assert.equal(second.upstreams.get('keep'), keep, 'unchanged upstream reused');
  assert.equal(second.upstreams.get('keep')!.status().servers[0]!.active, 1, 'with its counters');
  assert.notEqual(second.upstreams.get('change'), first.upstreams.get('change'));
  assert.notEqual(second.upstreams.get('secret'), first.upstreams.get('secret'));
  assert.deepEqual(second.upstreams.get('secret')!.injectHeaders, [['x-token', 'v2']]);
  assert.ok(second.upstreams.has('added'));
  assert.deepEqual(second.retired.map((u) => u.name).sort(), ['change', 'gone', 'secret']);
  // Retired upstreams finish their in-flight work, then close.
  await Promise.all(second.retired.map((u) => u.close()));
  assert.equal((await send(inflight)).body, 'a');

  // A config that cannot be built is rejected and leaves nothing running.
  await assert.rejects(
    reconcileUpstreams(
      second.upstreams,
      { ...defs2, broken: upstreamConfig({ servers: [{ url: 'http://no-such-host.invalid:80' }] }) },
      ctx,
      logger,
    ),
    /upstreams\.broken\.servers\.0\.url/,
  );
  await Promise.all([...second.upstreams.values()].map((u) => u.close()));
});

import assert from 'node:assert/strict';
import { lookup } from 'node:dns/promises';
import { test } from 'node:test';
import { createUpstream, resolveUpstreamSecrets } from '../src/upstream/index.js';
import { UpstreamPool } from '../src/upstream/pool.js';
import type { Lease, Upstream } from '../src/upstream/types.js';
import {
  type Backend,
  memoryLogger,
  send,
  startBackend,
  testContext,
  upstreamConfig,
} from './helpers/upstream.js';

/** Listens on every loopback family localhost may resolve to. */
async function startDualStack(name: string): Promise<Backend> {
  try {
    return await startBackend(name, '::');
  } catch {
    return await startBackend(name, '0.0.0.0');
  }
}

function acquireNow(up: Upstream, exclude?: Set<string>): Lease {
  const r = up.acquire({ clientIp: '127.0.0.1', headers: {} }, exclude);
  assert.ok(!(r instanceof Promise));
  return r;
}

test('a host name yields one endpoint per address it resolves to, keeping the configured Host', async (t) => {
  const backend = await startDualStack('dual');
  const url = `http://localhost:${backend.port}`;
  const up = await createUpstream(
    'dns',
    upstreamConfig({ servers: [{ url }] }),
    testContext(),
    memoryLogger().logger,
  );
  t.after(async () => {
    await up.close();
    await backend.close();
  });
  const expected = [...new Set((await lookup('localhost', { all: true })).map((a) => a.address))].sort();
  const servers = up.status().servers;
  assert.deepEqual(servers.map((s) => new URL(s.origin).hostname.replace(/^\[|\]$/g, '')).sort(), expected);
  assert.equal(new Set(servers.map((s) => s.id)).size, servers.length, 'distinct ids per address');
  const seen = new Set<string>();
  for (let i = 0; i < servers.length; i++) {
    const lease = acquireNow(up, seen);
    seen.add(lease.server.id);
    assert.equal(lease.server.url, url);
    assert.equal(lease.server.hostHeader, `localhost:${backend.port}`);
    assert.equal((await send(lease)).body, 'dual');
    assert.equal(backend.lastHeaders?.host, `localhost:${backend.port}`);
  }
  assert.equal(seen.size, expected.length);
});

test('IP literals skip DNS; an unresolvable host name is a clear build error', async () => {
  const up = await createUpstream(
    'lit',
    upstreamConfig({ servers: [{ url: 'http://[::1]:9' }, { url: 'http://127.0.0.1:9' }] }),
    testContext(),
    memoryLogger().logger,
  );
  assert.deepEqual(
    up.status().servers.map((s) => s.origin),
    ['http://[::1]:9', 'http://127.0.0.1:9'],
  );
  await up.close();
  await assert.rejects(
    createUpstream(
      'bad',
      upstreamConfig({ servers: [{ url: 'http://127.0.0.1:9' }, { url: 'http://no-such-host.invalid:80' }] }),
      testContext(),
      memoryLogger().logger,
    ),
    /upstreams\.bad\.servers\.1\.url: cannot resolve no-such-host\.invalid/,
  );
});

test('re-resolution adds and removes endpoints and keeps the last good answer on failure', async (t) => {
  const a = await startBackend('a', '127.0.0.1');
  const b = await startBackend('b', '127.0.0.2', a.port);
  const answers: Array<string[] | Error> = [
    ['127.0.0.1'],
    ['127.0.0.1', '127.0.0.2'],
    new Error('SERVFAIL'),
    ['127.0.0.2'],
  ];
  const resolve = async (host: string) => {
    assert.equal(host, 'svc.internal');
    const next = answers.shift()!;
    if (next instanceof Error) throw next;
    return next;
  };
  const def = upstreamConfig({ servers: [{ url: `http://svc.internal:${a.port}` }], dns: { refresh: '1h' } });
  const { logger, lines } = memoryLogger();
  const up = new UpstreamPool('dyn', def, resolveUpstreamSecrets('dyn', def, testContext()), logger, {
    resolve,
  });
  await up.init();
  up.start();
  t.after(async () => {
    await up.close();
    await a.close();
    await b.close();
  });
  const first = up.servers();
  assert.deepEqual(
    first.map((e) => e.address),
    ['127.0.0.1'],
  );

  await up.refreshDns();
  const second = up.servers();
  assert.deepEqual(
    second.map((e) => e.address),
    ['127.0.0.1', '127.0.0.2'],
  );
  assert.equal(second[0], first[0], 'an unchanged address keeps its endpoint (pool, health, counters)');
  assert.ok(lines.some((l) => l.msg === 'DNS answer changed'));
  const bodies = new Set<string>();
  for (let i = 0; i < 4; i++) bodies.add((await send(acquireNow(up))).body);
  assert.deepEqual([...bodies].sort(), ['a', 'b']);
  assert.equal(second[1]!.hostHeader, `svc.internal:${a.port}`);

  await up.refreshDns();
  assert.deepEqual(up.servers(), second, 'a failed lookup keeps the last answer');
  assert.ok(lines.some((l) => l.msg === 'DNS lookup failed; keeping the last addresses'));

  // A lease held on a removed endpoint still completes.
  const held = acquireNow(up, new Set([second[1]!.id]));
  assert.equal(held.server.origin, `http://127.0.0.1:${a.port}`);
  await up.refreshDns();
  assert.deepEqual(
    up.servers().map((e) => e.address),
    ['127.0.0.2'],
  );
  assert.equal((await send(held)).body, 'a');
  for (let i = 0; i < 3; i++) assert.equal((await send(acquireNow(up))).body, 'b');
});

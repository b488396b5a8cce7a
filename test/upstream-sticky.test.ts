import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { createUpstream } from '../src/upstream/index.js';
import type { Lease, Upstream } from '../src/upstream/types.js';
import {
  type Backend,
  memoryLogger,
  send,
  startBackend,
  testContext,
  upstreamConfig,
} from './helpers/upstream.js';

function acquireNow(up: Upstream, headers: Record<string, string> = {}): Lease {
  const r = up.acquire({ clientIp: '127.0.0.1', headers });
  assert.ok(!(r instanceof Promise));
  return r;
}

async function setup(t: TestContext, raw: (b: Backend[]) => Record<string, unknown>) {
  const backends = [await startBackend('b0'), await startBackend('b1'), await startBackend('b2')];
  const build = () =>
    createUpstream('app', upstreamConfig(raw(backends)), testContext(), memoryLogger().logger);
  const up = await build();
  t.after(async () => {
    await up.close();
    await Promise.all(backends.map((b) => b.close()));
  });
  return { backends, up, build };
}

const sticky = (b: Backend[]) => ({
  servers: b.map((x) => ({ url: x.url })),
  sticky: { cookie: 'gh_affinity', maxAge: '1h', secure: true, path: '/app' },
  passive: { failures: 1, ejectFor: '1h', maxEjectedPercent: 100 },
});

test('a sticky cookie pins the client to its server; the cookie is issued once', async (t) => {
  const { up } = await setup(t, sticky);
  const first = acquireNow(up);
  assert.ok(first.setCookie, 'a client without the cookie gets one');
  const cookie = first.setCookie;
  assert.match(
    cookie,
    /^gh_affinity=[A-Za-z0-9_-]+; Path=\/app; HttpOnly; SameSite=Lax; Max-Age=3600; Secure$/,
  );
  const value = cookie.slice('gh_affinity='.length, cookie.indexOf(';'));
  assert.equal(value, first.server.id);
  assert.ok(!value.includes('127.0.0.1'), 'the cookie reveals no address');
  const body = (await send(first)).body;
  for (let i = 0; i < 10; i++) {
    const lease = acquireNow(up, { cookie: `other=1; gh_affinity=${value}` });
    assert.equal(lease.setCookie, undefined, 'a valid cookie is not re-issued');
    assert.equal((await send(lease)).body, body);
  }
});

test('a cookie naming an unavailable or unknown server falls back and is re-issued', async (t) => {
  const { up } = await setup(t, sticky);
  const first = acquireNow(up);
  const id = first.server.id;
  first.release('connect-error'); // failures: 1 ejects it
  assert.equal(up.status().servers.find((s) => s.id === id)!.health, 'ejected');
  const next = acquireNow(up, { cookie: `gh_affinity=${id}` });
  assert.notEqual(next.server.id, id);
  assert.equal(next.setCookie?.split(';')[0], `gh_affinity=${next.server.id}`);
  next.release('success');

  const bogus = acquireNow(up, { cookie: 'gh_affinity=not-a-server' });
  assert.ok(bogus.setCookie?.startsWith(`gh_affinity=${bogus.server.id};`));
  bogus.release('success');
});

test('stickiness survives building a new upstream from the same config (reload, restart)', async (t) => {
  const { up, build } = await setup(t, sticky);
  const pinned = new Map<string, string>();
  for (let i = 0; i < 3; i++) {
    const lease = acquireNow(up);
    pinned.set(lease.server.id, lease.server.url);
    lease.release('success');
  }
  const rebuilt = await build();
  t.after(() => rebuilt.close());
  for (const [id, url] of pinned) {
    const lease = acquireNow(rebuilt, { cookie: `gh_affinity=${id}` });
    assert.equal(lease.server.url, url);
    assert.equal(lease.setCookie, undefined);
    lease.release('success');
  }
});

test('a sticky client whose server is full waits for that server', async (t) => {
  const { up } = await setup(t, (b) => ({ ...sticky(b), maxConnections: 1 }));
  const first = acquireNow(up);
  const waiting = up.acquire({
    clientIp: '127.0.0.1',
    headers: { cookie: `gh_affinity=${first.server.id}` },
  });
  assert.ok(waiting instanceof Promise);
  // Unpinned requests still go to the other servers meanwhile.
  const other = acquireNow(up);
  assert.notEqual(other.server.id, first.server.id);
  other.release('success');
  first.release('success');
  const lease = await waiting;
  assert.equal(lease.server.id, first.server.id);
  lease.release('success');
});

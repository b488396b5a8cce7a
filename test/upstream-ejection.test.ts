/**
 * Passive ejection must never empty a pool while a server is up: the ejection cap counts servers out of
 * rotation for any reason, and when nothing is usable, ejected servers that no active check found down
 * still get traffic (panic mode). Real backends, real active checks, requests through the gateway.
 */
import assert from 'node:assert/strict';
import type http from 'node:http';
import { test } from 'node:test';
import type { Upstream } from '../src/upstream/types.js';
import { config, request, startBackend, startGateway, waitFor } from './helpers/proxy.js';

/** A backend whose health answer can be switched, and that answers 503 on /flaky when told to. */
async function backend(t: Parameters<typeof startBackend>[0], name: string) {
  const state = { healthy: true, flaky: false };
  const b = await startBackend(t, name, (req: http.IncomingMessage, res: http.ServerResponse) => {
    let status = 200;
    if (req.url === '/health') status = state.healthy ? 200 : 500;
    else if (req.url === '/flaky' && state.flaky) status = 503;
    res.writeHead(status, { 'content-type': 'text/plain', 'content-length': name.length });
    res.end(name);
  });
  return Object.assign(b, { state });
}

const health = (up: Upstream) => up.status().servers.map((s) => s.health);

function upstreamOf(servers: Array<{ url: string; backup?: boolean }>) {
  return {
    app: {
      servers,
      healthCheck: { path: '/health', interval: '50ms', timeout: '1s', rise: 1, fall: 1 },
      passive: { failures: 5, ejectFor: '30s', maxEjectedPercent: 50 },
    },
  };
}

test('pool emptied by ejection: a server down by its check counts against the ejection cap', async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  a.state.healthy = false;
  b.state.flaky = true;
  const gw = await startGateway(
    t,
    config(upstreamOf([{ url: a.url }, { url: b.url }]), [{ name: 'all', upstream: 'app' }]),
  );
  const up = gw.runtime.upstreams.get('app')!;
  await waitFor(() => health(up).join() === 'down,up', 'a down by its check, b up');
  // Five 503s on one path would eject b, the only server up.
  for (let i = 0; i < 5; i++) assert.equal((await request(gw.url(), { path: '/flaky' })).status, 503);
  assert.deepEqual(health(up), ['down', 'up'], 'b stays in rotation: the cap counts a');
  for (let i = 0; i < 5; i++) {
    const r = await request(gw.url(), { path: '/' });
    assert.equal(r.status, 200);
    assert.equal(r.body.toString(), 'b');
  }
  assert.ok(!gw.access.some((e) => e.error === 'GH_NO_SERVER'));
});

test('pool emptied by ejection: when the last server up was ejected, it still serves (panic mode)', async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  b.state.flaky = true;
  const gw = await startGateway(
    t,
    config(upstreamOf([{ url: a.url }, { url: b.url }]), [{ name: 'all', upstream: 'app' }]),
  );
  const up = gw.runtime.upstreams.get('app')!;
  await waitFor(() => health(up).join() === 'up,up', 'both servers up');
  // Round-robin: b gets every other request and five 503s in a row eject it (a is up: within the cap).
  for (let i = 0; i < 10 && health(up)[1] !== 'ejected'; i++) await request(gw.url(), { path: '/flaky' });
  assert.deepEqual(health(up), ['up', 'ejected']);
  // Then a fails its checks: nothing is usable, but b was only ejected, never found down.
  a.state.healthy = false;
  await waitFor(() => health(up)[0] === 'down', 'a down by its check');
  for (let i = 0; i < 5; i++) {
    const r = await request(gw.url(), { path: '/' });
    assert.equal(r.status, 200, 'no GH_NO_SERVER while b is up');
    assert.equal(r.body.toString(), 'b');
  }
  assert.ok(gw.logLines.some((l) => l.level === 40 && String(l.msg).includes('panic mode')));
  // a back up: normal selection again, the still ejected b gets nothing.
  a.state.healthy = true;
  await waitFor(() => health(up)[0] === 'up', 'a up again');
  const before = b.seen.filter((s) => s.url !== '/health').length;
  for (let i = 0; i < 4; i++) assert.equal((await request(gw.url(), { path: '/' })).body.toString(), 'a');
  assert.equal(b.seen.filter((s) => s.url !== '/health').length, before);
});

test('pool emptied by ejection: backups stay backups, panic mode comes after them', async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const c = await backend(t, 'c');
  b.state.flaky = true;
  const gw = await startGateway(
    t,
    config(upstreamOf([{ url: a.url }, { url: b.url }, { url: c.url, backup: true }]), [
      { name: 'all', upstream: 'app' },
    ]),
  );
  const up = gw.runtime.upstreams.get('app')!;
  await waitFor(() => health(up).join() === 'up,up,up', 'all servers up');
  for (let i = 0; i < 10 && health(up)[1] !== 'ejected'; i++) await request(gw.url(), { path: '/flaky' });
  a.state.healthy = false;
  await waitFor(() => health(up).join() === 'down,ejected,up', 'a down, b ejected');
  for (let i = 0; i < 4; i++) {
    assert.equal((await request(gw.url(), { path: '/' })).body.toString(), 'c', 'the backup serves');
  }
  c.state.healthy = false;
  await waitFor(() => health(up)[2] === 'down', 'the backup down');
  for (let i = 0; i < 4; i++) {
    const r = await request(gw.url(), { path: '/' });
    assert.equal(r.status, 200);
    assert.equal(r.body.toString(), 'b', 'panic mode picks the ejected primary, never a down server');
  }
  // Every server down by its checks: nothing to panic over.
  b.state.healthy = false;
  // Down by its check while still ejected: status shows `down`, which keeps it out of panic mode.
  await waitFor(() => health(up)[1] === 'down', 'b down');
  const r = await request(gw.url(), { path: '/' });
  assert.equal(r.status, 503);
  assert.equal(gw.access.at(-1)?.error, 'GH_NO_SERVER');
});

test('pool emptied by ejection: a retry whose exclusions leave nothing usable is not a panic', async (t) => {
  const a = await backend(t, 'a');
  const b = await backend(t, 'b');
  const gw = await startGateway(
    t,
    config(
      {
        app: {
          servers: [{ url: a.url }, { url: b.url }],
          passive: { failures: 1, ejectFor: '1h', maxEjectedPercent: 50 },
        },
      },
      [{ name: 'all', upstream: 'app' }],
    ),
  );
  const up = gw.runtime.upstreams.get('app')!;
  const first = up.acquire({ clientIp: '127.0.0.1', headers: {} });
  assert.ok(!(first instanceof Promise));
  const ejected = first.server.id;
  first.release('connect-error');
  assert.ok(health(up).includes('ejected'));
  const other = up.status().servers.find((s) => s.id !== ejected)!.id;
  // Excluding the only usable server: no panic onto the ejected one; the caller retries without exclusions.
  assert.throws(() => up.acquire({ clientIp: '127.0.0.1', headers: {} }, new Set([other])), {
    code: 'GH_NO_SERVER',
  });
  for (let i = 0; i < 4; i++) {
    const lease = up.acquire({ clientIp: '127.0.0.1', headers: {} });
    assert.ok(!(lease instanceof Promise));
    assert.equal(lease.server.id, other);
    lease.release('success');
  }
});

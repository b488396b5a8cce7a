/**
 * Start and stop of a multi-process instance with real processes: SIGTERM drains a request in flight
 * on a worker and the primary exits 0 after every worker; a worker that cannot bind fails the start;
 * `workers: 1` stays a single process.
 */
import assert from 'node:assert/strict';
import { createConnection, createServer } from 'node:net';
import { test } from 'node:test';
import {
  adminStatus,
  alive,
  fromPrimary,
  type RecordingBackend,
  send,
  spawnGatehouse,
  startedCluster,
  startRecordingBackend,
} from './helpers/cluster.js';
import { tempDir, waitFor } from './helpers/gateway.js';

function config(backend: RecordingBackend, opts: { workers: number; bind?: string }): string {
  return `listeners: [{ name: plain, bind: ${opts.bind ?? '127.0.0.1:0'} }]
server: { workers: ${opts.workers}, drainTimeout: 10s }
admin: { bind: 127.0.0.1:0 }
logging: { access: false }
upstreams:
  app: { servers: [{ url: "${backend.url}" }] }
routes:
  - { name: all, upstream: app, public: true }
`;
}

/** Resolves true when a TCP connection to the port is refused. */
function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ port, host: '127.0.0.1' });
    socket.setTimeout(2000);
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('timeout', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
  });
}

test('SIGTERM drains the request in flight on a worker, then every process exits and the primary exits 0', {
  timeout: 90_000,
}, async (t) => {
  const d = tempDir();
  const backend = await startRecordingBackend('slow');
  const gh = spawnGatehouse(d.write('gatehouse.yaml', config(backend, { workers: 2 })));
  t.after(async () => {
    await gh.kill();
    await backend.close();
    d.remove();
  });
  const { port, pids } = await startedCluster(gh);
  assert.equal(pids.length, 2);

  const slow = send(port, '/slow?ms=1500', false, 20_000);
  await waitFor(() => backend.seen.length === 1, 10_000, 'the slow request to reach the backend');
  const from = gh.lines.length;
  process.kill(gh.child.pid!, 'SIGTERM');
  await gh.waitForLog((l) => fromPrimary(l) && l.msg === 'shutting down', 'the primary to start draining', {
    from,
  });
  await waitFor(() => refused(port), 10_000, 'the listener to stop accepting');
  const res = await slow;
  assert.equal(res.status, 200);
  assert.equal((JSON.parse(res.body) as { backend: string }).backend, 'slow');

  const exit = await gh.exitedWithin(20_000);
  assert.deepEqual(exit, { code: 0, signal: null });
  for (const pid of pids) assert.equal(alive(pid), false, `worker ${pid} is still running`);
  const exits = gh.lines.filter((l) => fromPrimary(l) && l.msg === 'worker exited');
  assert.deepEqual(
    exits.map((l) => l.code),
    [0, 0],
  );
  assert.ok(gh.lines.some((l) => fromPrimary(l) && l.msg === 'gateway stopped'));
});

test('a worker that cannot bind its listener fails the start: exit 1 with the reason', {
  timeout: 60_000,
}, async (t) => {
  const d = tempDir();
  const backend = await startRecordingBackend('a');
  const busy = createServer();
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  const busyPort = (busy.address() as { port: number }).port;
  const gh = spawnGatehouse(
    d.write('gatehouse.yaml', config(backend, { workers: 2, bind: `127.0.0.1:${busyPort}` })),
  );
  t.after(async () => {
    await gh.kill();
    await new Promise((resolve) => busy.close(resolve));
    await backend.close();
    d.remove();
  });
  const exit = await gh.exitedWithin(30_000);
  assert.deepEqual(exit, { code: 1, signal: null });
  assert.match(gh.stderr(), /cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE/);
  assert.ok(gh.lines.some((l) => fromPrimary(l) && l.msg === 'worker could not start'));
});

test('workers: 1 runs the gateway in one process, without a primary', { timeout: 60_000 }, async (t) => {
  const d = tempDir();
  const backend = await startRecordingBackend('a');
  const gh = spawnGatehouse(d.write('gatehouse.yaml', config(backend, { workers: 1 })));
  t.after(async () => {
    await gh.kill();
    await backend.close();
    d.remove();
  });
  const started = await gh.waitForLog((l) => l.msg === 'gateway started', 'the gateway to start');
  assert.equal(started.role, undefined);
  assert.equal(started.workers, undefined);
  const address = (started.listeners as Array<{ address: string }>)[0]!.address;
  const res = await send(Number(address.split(':').pop()), '/', false);
  assert.equal(res.status, 200);
  const status = await adminStatus(String(started.admin));
  assert.equal(status.workers, undefined);
  assert.equal(gh.lines.filter((l) => l.msg === 'gateway started').length, 1);
  process.kill(gh.child.pid!, 'SIGTERM');
  assert.deepEqual(await gh.exitedWithin(20_000), { code: 0, signal: null });
});

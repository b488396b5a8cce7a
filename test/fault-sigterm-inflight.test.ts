/**
 * SIGTERM with requests in flight, with real processes: 200 requests (half on keep-alive connections,
 * half on connections of their own) are held by a slow backend when `gatehouse start` gets SIGTERM.
 * The listeners close at once (new connections are refused), every held request still completes
 * with its own answer once the backend answers, keep-alive answers say `Connection: close`, and the
 * process exits 0 before `server.drainTimeout`; in single-process mode and with `server.workers: 2`.
 */
import assert from 'node:assert/strict';
import { Agent } from 'node:http';
import { createConnection } from 'node:net';
import { test } from 'node:test';
import { alive, fromPrimary, spawnGatehouse } from './helpers/cluster.js';
import { tempDir, waitFor } from './helpers/gateway.js';
import { type Answer, exchange, type Outcome, startTrafficBackend } from './helpers/traffic.js';

const IN_FLIGHT = 200;
const DRAIN_MS = 20_000;

/** Resolves with the error code of a TCP connection attempt (`connected` when it was accepted). */
function connectOutcome(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = createConnection({ port, host: '127.0.0.1' });
    socket.setTimeout(2000);
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('timeout', () => {
      socket.destroy();
      resolve('timeout');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

async function sigtermWithRequestsInFlight(workers: number): Promise<void> {
  const d = tempDir();
  const backend = await startTrafficBackend('slow');
  const gh = spawnGatehouse(
    d.write(
      'gatehouse.yaml',
      `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
server: { workers: ${workers}, drainTimeout: ${DRAIN_MS / 1000}s }
admin: { bind: 127.0.0.1:0 }
logging: { access: false }
upstreams:
  app: { servers: [{ url: "${backend.url}" }], timeouts: { response: 60s } }
routes:
  - { name: all, upstream: app, public: true }
`,
    ),
  );
  const agent = new Agent({ keepAlive: true, maxSockets: IN_FLIGHT });
  try {
    const started = await gh.waitForLog(
      (l) => l.msg === 'gateway started' && (workers === 1 || fromPrimary(l)),
      'the gateway to start',
      { ms: 30_000 },
    );
    const port = Number(
      String((started.listeners as Array<{ address: string }>)[0]!.address)
        .split(':')
        .pop(),
    );
    const pids = (started.workers as number[] | undefined) ?? [];

    // Keep-alive connections that already served a request, so that they are reused for a held one.
    const warm = await Promise.all(
      Array.from({ length: IN_FLIGHT / 2 }, () => exchange(port, agent, { path: '/ping' }, 20_000)),
    );
    assert.deepEqual(new Set(warm.map((r) => r.outcome)), new Set(['ok']));

    const settled: Array<Outcome | undefined> = new Array(IN_FLIGHT).fill(undefined);
    const requests = Array.from({ length: IN_FLIGHT }, (_, i) =>
      exchange(port, i % 2 === 0 ? agent : false, { path: `/held?id=${i}` }, 60_000).then((r) => {
        settled[i] = r.outcome;
        return r;
      }),
    );
    await waitFor(() => backend.held === IN_FLIGHT, 30_000, `${IN_FLIGHT} requests held by the backend`);

    const from = gh.lines.length;
    const signalled = Date.now();
    process.kill(gh.child.pid!, 'SIGTERM');
    await gh.waitForLog((l) => l.msg === 'shutting down' && (workers === 1 || fromPrimary(l)), 'the drain', {
      from,
    });
    // Every listener closes: new connections are refused while the held requests still wait.
    await waitFor(
      async () => (await connectOutcome(port)) === 'ECONNREFUSED',
      10_000,
      'new connections to be refused',
    );
    assert.deepEqual(
      settled.filter((o) => o !== undefined),
      [],
      'no held request ended before its answer',
    );
    assert.equal(gh.child.exitCode, null, 'the gateway waits for the requests in flight');

    backend.release();
    const results = await Promise.all(requests);
    const outcomes: Record<string, number> = {};
    for (const r of results) outcomes[r.outcome] = (outcomes[r.outcome] ?? 0) + 1;
    assert.deepEqual(outcomes, { ok: IN_FLIGHT }, JSON.stringify(results.filter((r) => r.outcome !== 'ok')));
    results.forEach((r, i) => {
      const answer = r.answer as Answer;
      assert.deepEqual(JSON.parse(answer.body.toString('utf8')), { backend: 'slow', id: String(i) });
      // A drained keep-alive connection is told that it ends with this answer.
      if (i % 2 === 0) assert.equal(answer.headers.connection, 'close', `request ${i}`);
    });

    const exit = await gh.exitedWithin(DRAIN_MS - (Date.now() - signalled));
    assert.deepEqual(exit, { code: 0, signal: null });
    for (const pid of pids) assert.equal(alive(pid), false, `worker ${pid} is still running`);
    assert.equal(await connectOutcome(port), 'ECONNREFUSED');
  } finally {
    agent.destroy();
    await gh.kill();
    await backend.close();
    d.remove();
  }
}

test('SIGTERM with 200 requests in flight completes them all, refuses new connections, exits 0', {
  timeout: 120_000,
}, async () => {
  await sigtermWithRequestsInFlight(1);
});

test('SIGTERM with 200 requests in flight on server.workers: 2 completes them all and exits 0', {
  timeout: 120_000,
}, async () => {
  await sigtermWithRequestsInFlight(2);
});

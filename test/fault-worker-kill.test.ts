/**
 * Workers killed under load, with real processes: `gatehouse start` with `server.workers: 2` while new
 * connections keep arriving (and keep-alive ones keep sending), a worker is killed with SIGKILL, twice,
 * each time in a burst of new connections. Requests in flight on a killed worker fail, which is expected; what must never happen
 * is a connection that no process serves any more and nobody closes (a client waiting forever).
 * Every request must be answered or closed within a bounded time, and the instance must serve again
 * with both workers once they were restarted (with backoff).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  adminMetrics,
  adminStatus,
  alive,
  fromPrimary,
  type LogLine,
  metricSum,
  spawnGatehouse,
  startedCluster,
} from './helpers/cluster.js';
import { tempDir, waitFor } from './helpers/gateway.js';
import { exchange, Load, startTrafficBackend } from './helpers/traffic.js';

const KILLS = 2;
/** A request not answered or closed by then is stranded (the default timeouts are much longer). */
const DEADLINE_MS = 15_000;
/** How a connection that a killed worker held ends on the client side. */
const CLOSED = new Set(['error:ECONNRESET', 'error:EPIPE', 'error:aborted']);

test('workers killed under load strand no connection: each is answered or closed, and serving resumes', {
  timeout: 180_000,
}, async () => {
  const d = tempDir();
  const backend = await startTrafficBackend('a');
  const gh = spawnGatehouse(
    d.write(
      'gatehouse.yaml',
      `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
server: { workers: 2, drainTimeout: 5s }
admin: { bind: 127.0.0.1:0 }
logging: { access: false }
upstreams:
  app: { servers: [{ url: "${backend.url}" }] }
routes:
  - { name: all, upstream: app, public: true }
`,
    ),
  );
  let load: Load | undefined;
  const bursts: Load[] = [];
  try {
    const { port, admin } = await startedCluster(gh);
    const isBackend = (a: { body: Buffer }): boolean => a.body.toString('utf8') === '{"backend":"a"}';
    // Steady traffic on new and keep-alive connections; a burst of new connections at each kill.
    const ping = () => ({ path: '/ping', check: isBackend });
    load = new Load(
      port,
      [
        { kind: 'fresh', lanes: 2, fresh: true, pauseMs: 20, next: ping },
        { kind: 'keepalive', lanes: 2, pauseMs: 20, next: ping },
      ],
      DEADLINE_MS,
    );
    const allServing = async (): Promise<boolean> => {
      try {
        const s = await adminStatus(admin);
        return s.workers.length === 2 && s.workers.every((w) => w.ready && w.pid !== undefined);
      } catch {
        return false;
      }
    };

    const killed: number[] = [];
    for (let k = 0; k < KILLS; k++) {
      await waitFor(allServing, 60_000, 'both workers to serve');
      const progress = load.ok;
      await waitFor(() => load!.ok >= progress + 10, 20_000, 'the load to flow on both workers');
      // New connections arrive as fast as they are served when the worker dies (with the primary handing
      // connections out, one of them was stranded at nearly every kill).
      const burst = new Load(port, [{ kind: 'burst', lanes: 48, fresh: true, next: ping }], DEADLINE_MS);
      bursts.push(burst);
      await waitFor(() => burst.ok >= 48, 20_000, 'the burst to flow');
      const status = await adminStatus(admin);
      // The same slot each time: restarted again soon after a crash, it waits twice as long.
      const victim = status.workers.find((w) => w.slot === 0)!;
      const from = gh.lines.length;
      process.kill(victim.pid!, 'SIGKILL');
      killed.push(victim.pid!);
      await gh.waitForLog(
        (l) =>
          fromPrimary(l) &&
          l.msg === 'worker exited unexpectedly; restarting it' &&
          l.workerPid === victim.pid,
        'the crash to be noticed',
        { from },
      );
      await burst.stop();
    }
    await waitFor(allServing, 60_000, 'both workers to serve after the last restart');
    const progress = load.ok;
    await waitFor(() => load!.ok >= progress + 50, 20_000, 'the load to flow after the restarts');
    await load.stop();

    // Nothing hung: every failure is a connection closed by a dying worker, none timed out.
    for (const l of [load, ...bursts]) {
      const failures = l.failures();
      assert.equal(failures.timeout, undefined, l.report());
      for (const kind of Object.keys(failures)) assert.ok(CLOSED.has(kind), `${kind}: ${l.report()}`);
    }
    assert.ok((load.tally.fresh?.ok ?? 0) > 0 && (load.tally.keepalive?.ok ?? 0) > 0, load.report());

    // The instance serves again: every new connection is answered, by both workers in time.
    const before = await adminStatus(admin);
    const served = (s: typeof before, slot: number): number =>
      s.workers.find((w) => w.slot === slot)?.requests ?? 0;
    await waitFor(
      async () => {
        const batch = await Promise.all(
          Array.from({ length: 8 }, () =>
            exchange(port, false, { path: '/ping', check: isBackend }, DEADLINE_MS),
          ),
        );
        assert.deepEqual(new Set(batch.map((r) => r.outcome)), new Set(['ok']));
        const now = await adminStatus(admin);
        return served(now, 0) > served(before, 0) && served(now, 1) > served(before, 1);
      },
      30_000,
      'both restarted workers to answer new connections',
    );

    // Restarts used the backoff: each slot's delay doubles with its crashes in a row.
    const crashes = gh.lines.filter(
      (l: LogLine) => fromPrimary(l) && l.msg === 'worker exited unexpectedly; restarting it',
    );
    assert.deepEqual(
      crashes.map((l) => l.workerPid),
      killed,
    );
    for (const l of crashes) {
      assert.equal(l.signal, 'SIGKILL');
      assert.equal(l.restartInMs, Math.min(15_000, 250 * 2 ** ((l.crashesInARow as number) - 1)));
    }
    assert.equal(metricSum(await adminMetrics(admin), 'gatehouse_worker_restarts_total'), KILLS);
  } finally {
    await load?.stop();
    for (const burst of bursts) await burst.stop();
    await gh.kill();
    await backend.close();
    d.remove();
  }
});

test('the primary killed: the workers finish their requests in flight, then exit', {
  timeout: 120_000,
}, async () => {
  const d = tempDir();
  const backend = await startTrafficBackend('a');
  const gh = spawnGatehouse(
    d.write(
      'gatehouse.yaml',
      `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
server: { workers: 2, drainTimeout: 20s }
admin: { bind: 127.0.0.1:0 }
logging: { access: false }
upstreams:
  app: { servers: [{ url: "${backend.url}" }] }
routes:
  - { name: all, upstream: app, public: true }
`,
    ),
  );
  try {
    const { port, pids } = await startedCluster(gh);
    const held = Array.from({ length: 20 }, (_, i) =>
      exchange(port, false, { path: `/held?id=${i}` }, 60_000),
    );
    await waitFor(() => backend.held === 20, 30_000, 'the requests to be held by the backend');
    const from = gh.lines.length;
    process.kill(gh.child.pid!, 'SIGKILL');
    // Every worker drains instead of dropping what it serves.
    await waitFor(
      () =>
        gh.lines.slice(from).filter((l) => l.msg === 'shutting down' && l.worker !== undefined).length === 2,
      20_000,
      'both workers to start draining',
    );
    backend.release();
    const results = await Promise.all(held);
    assert.deepEqual(
      results.map((r) => r.outcome),
      Array(20).fill('ok'),
      JSON.stringify(results.filter((r) => r.outcome !== 'ok')),
    );
    assert.deepEqual(
      results.map((r) => r.answer?.body.toString('utf8')),
      results.map((_, i) => `{"backend":"a","id":"${i}"}`),
    );
    await waitFor(() => pids.every((pid) => !alive(pid)), 20_000, 'the workers to exit');
    const refused = await exchange(port, false, { path: '/ping' }, 10_000);
    assert.equal(refused.outcome, 'error:ECONNREFUSED');
  } finally {
    await gh.kill();
    await backend.close();
    d.remove();
  }
});

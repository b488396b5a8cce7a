/**
 * Multi-process mode with real processes: `gatehouse start` with `server.workers: 2`, one primary and
 * two workers sharing the listener. The tests run in order on one instance: serving, aggregated
 * metrics, reload by SIGHUP (valid and broken), and a worker killed with SIGKILL.
 */
import assert from 'node:assert/strict';
import { renameSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { PROCESS_FLAGS } from '../src/process/flags.js';
import {
  adminMetrics,
  adminStatus,
  alive,
  cmdline,
  fromPrimary,
  type GatehouseProcess,
  metricSum,
  type RecordingBackend,
  reloadActivity,
  sendOverConnections,
  sendUntilEveryWorkerServed,
  spawnGatehouse,
  startedCluster,
  startRecordingBackend,
} from './helpers/cluster.js';
import { type TempDir, tempDir, waitFor } from './helpers/gateway.js';

function config(backend: RecordingBackend, extra = ''): string {
  return `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
server: { workers: 2, drainTimeout: 5s }
admin: { bind: 127.0.0.1:0 }
logging: { access: false }
upstreams:
  app: { servers: [{ url: "${backend.url}" }] }
routes:
  - { name: all, upstream: app, public: true }
${extra}`;
}

describe('cluster mode (server.workers: 2)', { timeout: 180_000 }, () => {
  let d: TempDir;
  let a: RecordingBackend;
  let b: RecordingBackend;
  let gh: GatehouseProcess;
  let file: string;
  let port: number;
  let admin: string;
  let sent = 0;

  before(async () => {
    d = tempDir();
    a = await startRecordingBackend('a');
    b = await startRecordingBackend('b');
    file = d.write('gatehouse.yaml', config(a));
    gh = spawnGatehouse(file);
    ({ port, admin } = await startedCluster(gh));
  });

  after(async () => {
    await gh?.kill();
    await a?.close();
    await b?.close();
    d?.remove();
  });

  /** Rewrites the config in one rename, so neither the watcher nor SIGHUP can read half a file. */
  function rewrite(text: string): void {
    d.write('next.yaml.tmp', text);
    renameSync(d.file('next.yaml.tmp'), file);
  }

  test('requests are served by both workers, with the forwarded headers', async () => {
    const answered = await sendOverConnections(port, 8, 5);
    sent += answered.length;
    assert.equal(answered.length, 40);
    assert.ok(answered.every((name) => name === 'a'));
    assert.equal(a.seen.length, 40);
    for (const seen of a.seen) {
      assert.equal(seen.forwardedFor, '127.0.0.1');
      assert.equal(seen.forwardedProto, 'http');
      assert.equal(seen.forwardedHost, `127.0.0.1:${port}`);
      assert.match(seen.requestId ?? '', /^\S+$/);
    }
    // Each worker counts the requests it answered; both must have answered some.
    const more = await sendUntilEveryWorkerServed(port, admin);
    sent += more.length;
    assert.ok(more.every((name) => name === 'a'));
    await waitFor(
      async () => {
        const s = await adminStatus(admin);
        return s.workers.reduce((n, w) => n + (w.requests ?? 0), 0) === sent;
      },
      10_000,
      'the per-worker counts to add up',
    );
    const status = await adminStatus(admin);
    assert.equal(status.workers.length, 2);
    assert.equal(new Set(status.workers.map((w) => w.pid)).size, 2);
    for (const w of status.workers) {
      assert.equal(w.ready, true);
      assert.ok((w.requests ?? 0) > 0, `worker ${w.slot} (pid ${w.pid}) served no request`);
    }
    assert.equal(status.listeners[0]?.address, `127.0.0.1:${port}`);
  });

  test("the workers run with the gateway's Node.js flags although the primary was started without", async () => {
    const primary = cmdline(gh.child.pid);
    for (const flag of PROCESS_FLAGS) assert.ok(!primary.includes(flag), `primary: ${primary.join(' ')}`);
    const status = await adminStatus(admin);
    assert.equal(status.workers.length, 2);
    for (const w of status.workers) {
      const worker = cmdline(w.pid);
      for (const flag of PROCESS_FLAGS)
        assert.ok(worker.includes(flag), `worker ${w.pid}: ${worker.join(' ')}`);
    }
  });

  test('/metrics sums the request counters of every worker; /healthz and /readyz answer', async () => {
    let text = '';
    await waitFor(
      async () => {
        text = await adminMetrics(admin);
        return (
          metricSum(text, 'gatehouse_requests_total') === sent &&
          metricSum(text, 'gatehouse_request_duration_seconds_count') === sent
        );
      },
      10_000,
      `gatehouse_requests_total to equal ${sent}`,
    );
    assert.equal(metricSum(text, 'gatehouse_requests_total', 'status="200"'), sent);
    // Histogram buckets are summed per bucket: the +Inf bucket counts every request once.
    assert.equal(metricSum(text, 'gatehouse_request_duration_seconds_bucket', 'le="+Inf"'), sent);
    assert.equal(metricSum(text, 'gatehouse_workers_ready'), 2);
    // Owned by the primary: not multiplied by the number of workers.
    assert.equal(metricSum(text, 'gatehouse_config_generation'), 1);
    assert.equal(metricSum(text, 'gatehouse_upstream_server_up'), 1);
    assert.ok(metricSum(text, 'gatehouse_process_cpu_seconds_total') > 0);
    assert.equal((await fetch(`http://${admin}/healthz`, { signal: AbortSignal.timeout(5000) })).status, 200);
    assert.equal((await fetch(`http://${admin}/readyz`, { signal: AbortSignal.timeout(5000) })).status, 200);
  });

  test('SIGHUP with a valid changed config changes routing in every worker', async () => {
    const from = gh.lines.length;
    rewrite(config(b));
    process.kill(gh.child.pid!, 'SIGHUP');
    await gh.waitForLog((l) => fromPrimary(l) && l.msg === 'SIGHUP received: reloading', 'SIGHUP', { from });
    await gh.waitForLog((l) => fromPrimary(l) && l.msg === 'configuration reloaded', 'the reload', { from });
    // The file watcher reloads the same file once more; let that finish before looking.
    await gh.quiet(reloadActivity, 700);
    await waitFor(
      async () => {
        const s = await adminStatus(admin);
        return s.generation >= 2 && s.workers.every((w) => w.generation === s.generation);
      },
      10_000,
      'every worker to run the new generation',
    );
    const answered = await sendOverConnections(port, 8, 2);
    sent += answered.length;
    assert.deepEqual(new Set(answered), new Set(['b']));
    const status = await adminStatus(admin);
    assert.ok(status.workers.every((w) => w.ready));
  });

  test('SIGHUP with a broken config keeps the running one in every worker', async () => {
    await gh.quiet(reloadActivity, 700);
    const before = await adminStatus(admin);
    const rejectedBefore = metricSum(await adminMetrics(admin), 'gatehouse_config_reloads_total', 'rejected');
    const from = gh.lines.length;
    rewrite(config(a, 'bogus: true\n').replace('upstream: app', 'upstream: nowhere'));
    process.kill(gh.child.pid!, 'SIGHUP');
    const rejected = await gh.waitForLog(
      (l) => fromPrimary(l) && l.msg === 'configuration rejected; the running configuration stays in use',
      'the rejection',
      { from },
    );
    assert.equal(rejected.reason, 'invalid');
    await gh.waitForLog(
      (l) => fromPrimary(l) && typeof l.msg === 'string' && l.msg.includes('bogus: unknown key'),
      'the problem to be logged',
      { from },
    );
    // No worker was asked to reload: none logged anything about configuration since.
    assert.ok(
      !gh.lines.slice(from).some((l) => !fromPrimary(l) && String(l.msg).startsWith('configuration')),
    );

    const answered = await sendOverConnections(port, 8, 2);
    sent += answered.length;
    assert.deepEqual(new Set(answered), new Set(['b']));
    const status = await adminStatus(admin);
    assert.equal(status.generation, before.generation);
    assert.ok(status.workers.every((w) => w.generation === before.generation));
    const text = await adminMetrics(admin);
    assert.ok(metricSum(text, 'gatehouse_config_reloads_total', 'rejected') > rejectedBefore);

    // Put a valid configuration back through the admin API.
    rewrite(config(b));
    const res = await fetch(`http://${admin}/api/v1/reload`, {
      method: 'POST',
      signal: AbortSignal.timeout(30_000),
    });
    const body = (await res.json()) as { ok: boolean; generation: number };
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.equal(body.ok, true);
    await waitFor(
      async () => {
        const s = await adminStatus(admin);
        return s.workers.every((w) => w.generation === s.generation);
      },
      10_000,
      'every worker to run the fixed configuration',
    );
  });

  test('a worker killed with SIGKILL is restarted with the running config, and traffic keeps flowing', async () => {
    // The file on disk is broken now: the restarted worker must still start, with what the others run.
    const broken = gh.lines.length;
    rewrite(config(a).replace('upstream: app', 'upstream: nowhere'));
    await gh.waitForLog(
      (l) => fromPrimary(l) && l.msg === 'configuration rejected; the running configuration stays in use',
      'the file watcher to reject the broken file',
      { from: broken },
    );
    const before = await adminStatus(admin);
    const victim = before.workers[0]!;
    const survivor = before.workers[1]!;
    assert.ok(victim.pid !== undefined && survivor.pid !== undefined);
    const from = gh.lines.length;
    process.kill(victim.pid, 'SIGKILL');
    const exited = await gh.waitForLog(
      (l) =>
        fromPrimary(l) && l.msg === 'worker exited unexpectedly; restarting it' && l.workerPid === victim.pid,
      'the crash to be noticed',
      { from },
    );
    assert.equal(exited.signal, 'SIGKILL');
    assert.equal(typeof exited.restartInMs, 'number');

    // While the replacement starts, the surviving worker takes every new connection.
    const during = await sendOverConnections(port, 4, 3);
    sent += during.length;
    assert.deepEqual(new Set(during), new Set(['b']));

    await gh.waitForLog((l) => fromPrimary(l) && l.msg === 'worker restarted and serving', 'the restart', {
      from,
    });
    const status = await adminStatus(admin);
    const replacement = status.workers.find((w) => w.slot === victim.slot)!;
    assert.notEqual(replacement.pid, victim.pid);
    assert.equal(replacement.restarts, 1);
    assert.ok(status.workers.every((w) => w.ready));
    assert.equal(alive(victim.pid), false);
    assert.equal((await fetch(`http://${admin}/readyz`, { signal: AbortSignal.timeout(5000) })).status, 200);

    // The replacement serves too, with the configuration in use (backend b).
    const afterRestart = await sendUntilEveryWorkerServed(port, admin);
    assert.deepEqual(new Set(afterRestart), new Set(['b']));
    assert.ok(((await adminStatus(admin)).workers.find((w) => w.slot === victim.slot)?.requests ?? 0) > 0);
    assert.equal(metricSum(await adminMetrics(admin), 'gatehouse_worker_restarts_total'), 1);
  });
});

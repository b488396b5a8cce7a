/**
 * A cluster worker: runs the data plane (a Gateway with its listeners; the primary shares the listening
 * sockets) and answers the primary's requests for reloads, status and metrics. It opens no admin
 * listener, watches no files and leaves SIGHUP to the primary, which owns what must exist once, the
 * memory state store included: with `state.store: memory` the worker uses the primary's over IPC.
 */
import cluster from 'node:cluster';
import { buildStatusReport } from '../admin/server.js';
import { formatAddress } from '../admin/slot.js';
import { ConfigError } from '../errors.js';
import type { AuditRecord, AuditSink } from '../observe/audit-bus.js';
import { liveStats } from '../observe/live-stats.js';
import {
  enableProcessMetrics,
  registry,
  requestsTotal,
  setUpstreamStatusSource,
} from '../observe/metrics.js';
import { createStateStore } from '../state/index.js';
import { IpcStore } from '../state/ipc.js';
import { Gateway } from './gateway.js';
import type { ConfigSources, PrimaryMessage, RequestKind, WorkerMessage, WorkerReplies } from './ipc.js';
import { isPrimaryMessage } from './ipc.js';

function send(message: WorkerMessage): Promise<void> {
  return new Promise((resolve) => {
    if (!process.connected || process.send === undefined) {
      resolve();
      return;
    }
    process.send(message, undefined, {}, () => resolve());
  });
}

/**
 * Runs this process as a cluster worker of `configFile` until the primary tells it to stop (or goes
 * away); never resolves, the process exits.
 */
/**
 * The worker's audit sink: the events of one event-loop turn go to the primary in one message, since
 * only the primary writes the trail (one hash chain per file).
 */
function auditForwarder(): { sink: AuditSink; flush: () => Promise<void> } {
  let batch: AuditRecord[] = [];
  const flush = (): Promise<void> => {
    if (batch.length === 0) return Promise.resolve();
    const records = batch;
    batch = [];
    return send({ gatehouse: 'audit', records });
  };
  return {
    sink: (record) => {
      if (batch.length === 0) setImmediate(flush);
      batch.push(record);
    },
    flush,
  };
}

export async function runWorker(configFile: string): Promise<never> {
  const id = cluster.worker?.id ?? 0;
  // A terminal hang-up reaches the whole process group; reloads are the primary's to coordinate.
  process.on('SIGHUP', () => {});
  // Per-process CPU and memory, summed by the primary into the instance's `/metrics`.
  enableProcessMetrics();

  let gateway: Gateway | undefined;
  let startedAt = new Date();
  // A stop can arrive while the gateway is still starting; it is honoured as soon as it started.
  let stopRequested = false;
  // Before the configuration arrived nothing was started, so there is nothing to drain.
  let waiting = true;
  let draining = false;
  const audit = auditForwarder();
  const drain = (): void => {
    stopRequested = true;
    if (waiting) process.exit(0);
    if (draining || gateway === undefined) return;
    draining = true;
    // The last requests' audit events reach the primary before the worker is gone.
    gateway
      .shutdown()
      .then(audit.flush)
      .then(
        () => process.exit(0),
        () => process.exit(1),
      );
  };

  const answer = async <K extends RequestKind>(
    kind: K,
    sources?: ConfigSources,
    arg?: string | number,
  ): Promise<WorkerReplies[K]> => {
    const gw = gateway;
    if (gw === undefined) throw new Error('the worker is still starting');
    switch (kind) {
      case 'reload':
        return (await gw.reload(sources)) as WorkerReplies[K];
      case 'status': {
        const counted = await requestsTotal.get();
        const requests = counted.values.reduce((n, v) => n + v.value, 0);
        const report = buildStatusReport(gw.runtime, startedAt, (name) => gw.address(name));
        const spoe = gw.spoeStatus();
        if (spoe !== undefined) report.spoe = spoe;
        return { ...report, requests } as WorkerReplies[K];
      }
      case 'metrics':
        return (await registry.getMetricsAsJSON()) as WorkerReplies[K];
      case 'live':
        return liveStats.snapshot() as WorkerReplies[K];
      case 'sessions': {
        const sessions = gw.runtime.identity.login?.sessions;
        return (sessions === undefined ? null : await sessions.list(Number(arg ?? 500))) as WorkerReplies[K];
      }
      case 'revoke-session': {
        // Through this worker's store, whose revocation feed reaches the other workers and instances.
        const sessions = gw.runtime.identity.login?.sessions;
        const ended = sessions === undefined ? undefined : await sessions.revokeHandle(String(arg));
        return (ended ?? null) as WorkerReplies[K];
      }
      default:
        throw new Error(`unknown request ${String(kind)}`);
    }
  };

  let startWith: (sources: ConfigSources) => void = () => {};
  const initial = new Promise<ConfigSources>((resolve) => {
    startWith = resolve;
  });
  process.on('message', (message: unknown) => {
    if (!isPrimaryMessage(message)) return;
    const m: PrimaryMessage = message;
    if (m.gatehouse === 'shutdown') {
      drain();
      return;
    }
    if (m.gatehouse === 'config') {
      startWith(m.sources);
      return;
    }
    // Answers to state store calls and relayed revocations go to the IpcStore, which listens itself.
    if (m.gatehouse === 'store-reply' || m.gatehouse === 'revoke') return;
    answer(m.kind, m.sources, m.arg).then(
      (value) => send({ gatehouse: 'reply', id: m.id, ok: true, value }),
      (err: unknown) =>
        send({
          gatehouse: 'reply',
          id: m.id,
          ok: false,
          error: err instanceof Error ? err.message : String(err),
        }),
    );
  });
  // SIGTERM/SIGINT may reach a worker directly (Ctrl-C reaches the process group): drain as asked.
  process.on('SIGTERM', drain);
  process.on('SIGINT', drain);
  // Without the primary no new connection can reach this worker; finish what is in flight and leave.
  // Node's cluster worker exits at once on a disconnect it did not ask for, dropping every request in
  // flight, unless `exitedAfterDisconnect` is set (documented on `worker.process`): set it first.
  process.prependOnceListener('disconnect', () => {
    if (cluster.worker) cluster.worker.exitedAfterDisconnect = true;
  });
  process.on('disconnect', drain);

  // Start with the configuration the primary validated and runs, not with whatever the file holds now.
  await send({ gatehouse: 'hello' });
  const sources = await initial;
  waiting = false;
  try {
    gateway = await Gateway.start({
      configFile,
      sources,
      watch: false,
      signals: false,
      admin: false,
      logBindings: { worker: id, pid: process.pid },
      auditSink: audit.sink,
      // One memory store per instance, held by the primary, so that every worker sees the same sessions.
      createStore: (url, logger) =>
        url === 'memory' ? new IpcStore(process) : createStateStore(url, logger),
    });
  } catch (err) {
    const failed: WorkerMessage =
      err instanceof ConfigError
        ? { gatehouse: 'failed', message: err.message, problems: err.problems }
        : { gatehouse: 'failed', message: err instanceof Error ? err.message : String(err) };
    await send(failed);
    process.exit(1);
  }
  const gw = gateway;
  startedAt = new Date();
  // Without the admin listener nothing else would feed the scrape-time upstream gauges.
  setUpstreamStatusSource(() => Array.from(gw.runtime.upstreams.values(), (u) => u.status()));
  if (stopRequested) {
    drain();
    return await new Promise<never>(() => {});
  }
  await send({
    gatehouse: 'ready',
    listeners: gw.runtime.config.listeners.map((l) => ({
      name: l.name,
      address: formatAddress(gw.address(l.name)),
    })),
  });
  return await new Promise<never>(() => {});
}

/**
 * Multi-process mode (`server.workers` > 1): a primary process forks the workers, which run the data
 * plane and share the listening sockets (node:cluster; each worker accepts its connections itself, the
 * primary never touches a client connection), and owns what must exist once: the admin
 * listener (metrics aggregated across workers), file watching and SIGHUP (it validates a config before
 * any worker sees it), SIGTERM/SIGINT (every worker drains, then the primary exits), and restarting a
 * worker that crashed, with backoff. Workers load the config and include texts the primary validated
 * (not the files, which may have changed since), so every worker runs the same configuration. With
 * `state.store: memory` the primary also holds the instance's one memory store, which the workers use
 * over IPC (`state/ipc.ts`); it outlives reloads and worker restarts and is closed after the workers.
 */
import cluster, { type Worker } from 'node:cluster';
import { availableParallelism } from 'node:os';
import {
  type Aggregator,
  AggregatorRegistry,
  Counter,
  Gauge,
  type MetricObjectWithValues,
  type MetricValue,
  Registry,
} from 'prom-client';
import {
  AdminServer,
  type ReloadResult,
  type SessionDirectory,
  type StatusReport,
  type WorkerStatus,
} from '../admin/server.js';
import { AdminSlot, formatAddress } from '../admin/slot.js';
import { type LoadResult, loadConfig } from '../config/load.js';
import { FileWatcher } from '../config/watch.js';
import { compileConfig, compileProblems } from '../core/compile.js';
import { ConfigError, type ConfigProblem, formatProblem } from '../errors.js';
import { AssertionSigner } from '../identity/assertion.js';
import { Limiter } from '../limits/stage.js';
import { emitAudit } from '../observe/audit-bus.js';
import { type LiveSnapshot, LiveStats } from '../observe/live-stats.js';
import { createLogger, type Logger } from '../observe/log.js';
import { configGeneration, registry, reloadsTotal } from '../observe/metrics.js';
import { createStateStore } from '../state/index.js';
import { serveStoreRequest } from '../state/ipc.js';
import { MemoryStore } from '../state/memory.js';
import type { StateStore } from '../state/types.js';
import { isRevokeMessage } from '../state/wire.js';
import { Coalescer } from '../util/coalesce.js';
import {
  AuditKeyError,
  AuditService,
  auditConfigApplied,
  auditConfigRejected,
  auditKeyProblem,
  type ReloadTrigger,
} from './audit.js';
import { withProcessFlags } from './flags.js';
import {
  isWorkerMessage,
  type ListenerAddress,
  PendingRequests,
  type WorkerMessage,
  WorkerRequestError,
} from './ipc.js';
import { logWarnings, problem, rejectReload } from './reload.js';
import type { LoadedConfig } from './runtime-build.js';
import { installSignals, type UninstallSignals } from './signals.js';

/** How long the primary waits for a worker to answer a status or metrics request. */
const QUERY_TIMEOUT_MS = 5_000;
/** How long a worker may take to load and apply a configuration (below the admin request timeout). */
const RELOAD_TIMEOUT_MS = 25_000;
/** After the drain timeout, how long workers still get to exit before they are killed. */
const EXIT_GRACE_MS = 10_000;
/** First restart delay after a crash; it doubles for every crash in a row, up to the maximum. */
const RESTART_BASE_MS = 250;
const RESTART_MAX_MS = 15_000;
/** A worker that ran this long before exiting counts as healthy: its next restart is immediate-ish. */
const STABLE_MS = 10_000;

/** Metrics the primary owns: every worker's own copy would be counted N times. */
const PRIMARY_OWNED = new Set(['gatehouse_config_reloads_total', 'gatehouse_config_generation']);
/** Aggregation other than a sum: a server is up for the instance only if every worker sees it up. */
const AGGREGATORS: Record<string, Aggregator> = { gatehouse_upstream_server_up: 'min' };

type MetricJson = MetricObjectWithValues<MetricValue<string>>;

/** Number of worker processes for a `server.workers` setting (`auto`: one per available core). */
export function resolveWorkers(setting: 'auto' | number): number {
  return setting === 'auto' ? availableParallelism() : setting;
}

/** Set in the environment of the workers this primary forks. */
const WORKER_ENV = 'GATEHOUSE_CLUSTER_WORKER';

/**
 * True in a process forked by a Gatehouse cluster primary. The environment marker keeps a process that
 * another cluster-based supervisor forked from mistaking itself for one of ours.
 */
export function isClusterWorker(): boolean {
  return cluster.isWorker && process.env[WORKER_ENV] === '1';
}

/** Options of `ClusterPrimary.start`. */
export interface ClusterOptions {
  /** The main configuration file. Workers get its text and its includes' from the primary. */
  configFile: string;
  /** The configuration as the primary loaded and validated it. */
  loaded: LoadedConfig;
  /** Number of worker processes (at least 2; one worker is plain single-process mode). */
  workers: number;
  /** Operational logger (default: JSON lines to stdout at `logging.level`). */
  logger?: Logger;
  /** Environment used for `env:` references (default `process.env`). */
  env?: NodeJS.ProcessEnv;
  /** Debounce of file-change reloads in ms (default 200). */
  watchDebounceMs?: number;
}

interface Slot {
  index: number;
  worker: Worker | undefined;
  ready: boolean;
  startedAt: Date;
  /** Configuration generation the worker was given to start with. */
  startedWith: number;
  /** Generation the worker runs, once ready. */
  generation: number | undefined;
  listeners: ListenerAddress[];
  restarts: number;
  /** Unexpected exits in a row, for the restart backoff. */
  failures: number;
  timer: NodeJS.Timeout | undefined;
}

/** The primary process of a multi-process instance. */
export class ClusterPrimary {
  readonly #configFile: string;
  readonly #env: NodeJS.ProcessEnv;
  readonly #logger: Logger;
  readonly #ownsLogger: boolean;
  readonly #slots: Slot[];
  readonly #pending = new PendingRequests();
  readonly #startedAt = new Date();
  readonly #metrics = new Registry();
  readonly #restartsCounter: Counter;
  #loaded: LoadedConfig;
  #generation = 1;
  #started = false;
  #startup: { resolve(): void; reject(err: Error): void } | undefined;
  #startError: Error | undefined;
  readonly #admin = new AdminSlot(
    (token) =>
      new AdminServer({
        getRuntime: () => undefined,
        logger: this.#logger,
        reload: () => this.reload('admin'),
        token,
        ready: () => this.#ready(),
        metrics: () => this.#aggregateMetrics(),
        status: () => this.#status(),
        limits: () => this.#limits(),
        auditKeys: () => this.#audit.publicKeys(),
        audit: emitAudit,
        live: () => this.#liveFigures(),
        sessions: () => this.#sessionDirectory(),
      }),
  );
  /** The quotas of the running configuration over the instance's store, for the admin quota API. */
  #limiter: { config: LoadedConfig['config']; limiter: Limiter } | undefined;
  /** A connection of the primary's own to a Redis store (the admin quota API), opened when first needed. */
  #adminStore: { url: string; store: StateStore } | undefined;
  #watcher: FileWatcher | undefined;
  /** The instance's audit trail: the primary writes it, workers send their events here. */
  readonly #audit: AuditService;
  #trigger: ReloadTrigger | undefined;
  #lastTrigger: ReloadTrigger | undefined;
  /** The memory store the workers share, created when first needed (`#sharedStore`). */
  #store: MemoryStore | undefined;
  readonly #reloads = new Coalescer<ReloadResult>(() => this.#reloadOnce());
  #closing: Promise<number> | undefined;
  #allExited: (() => void) | undefined;
  #uninstallSignals: UninstallSignals | undefined;

  private constructor(opts: ClusterOptions, logger: Logger) {
    this.#configFile = opts.configFile;
    this.#env = opts.env ?? process.env;
    this.#logger = logger;
    this.#ownsLogger = opts.logger === undefined;
    this.#loaded = opts.loaded;
    this.#audit = new AuditService(logger);
    this.#slots = Array.from({ length: opts.workers }, (_, index) => ({
      index,
      worker: undefined,
      ready: false,
      startedAt: new Date(),
      startedWith: 1,
      generation: undefined,
      listeners: [],
      restarts: 0,
      failures: 0,
      timer: undefined,
    }));
    const slots = this.#slots;
    new Gauge({
      name: 'gatehouse_workers_ready',
      help: 'Worker processes that serve (multi-process mode)',
      registers: [this.#metrics],
      collect() {
        this.set(slots.filter((s) => s.ready).length);
      },
    });
    this.#restartsCounter = new Counter({
      name: 'gatehouse_worker_restarts_total',
      help: 'Worker processes restarted after exiting unexpectedly',
      registers: [this.#metrics],
    });
  }

  /**
   * Starts the admin listener and the workers; resolves once every worker serves. When a worker cannot
   * start (a port in use, an unreadable certificate), everything started is stopped and the worker's
   * error is thrown (ConfigError for configuration problems).
   */
  static async start(opts: ClusterOptions): Promise<ClusterPrimary> {
    if (!cluster.isPrimary) {
      throw new Error(
        'server.workers above 1 needs a process of its own, but this one was forked by another cluster ' +
          'supervisor; set server.workers: 1 and let that supervisor run the processes',
      );
    }
    let logger = opts.logger;
    if (logger === undefined)
      logger = createLogger(opts.loaded.config.logging.level).child({ role: 'primary', pid: process.pid });
    const primary = new ClusterPrimary(opts, logger);
    logWarnings(logger, opts.loaded.warnings);
    await primary.#prepareStore(opts.loaded);
    try {
      await primary.#syncAudit(opts.loaded);
    } catch (err) {
      if (err instanceof AuditKeyError) throw new ConfigError([auditKeyProblem(opts.configFile, err)]);
      throw err;
    }
    if (primary.#audit.active) auditConfigApplied(opts.loaded, primary.#generation, 'start');
    await primary.#syncAdmin(opts.loaded);
    primary.#uninstallSignals = installSignals({
      logger,
      reload: () => primary.reload('signal'),
      shutdown: () => primary.shutdown(),
      drainMessage: 'stop signal received: draining every worker',
      abandonMessage: 'second stop signal: killing the workers and exiting without waiting for the drain',
      abandon: () => primary.#killAll(),
    });
    const started = new Promise<void>((resolve, reject) => {
      primary.#startup = { resolve, reject };
    });
    // The workers accept connections themselves from the shared listening socket. With Node's default
    // round-robin on Linux this process accepts and hands each connection to a worker, and one handed to
    // a worker that dies before taking it is neither served nor closed (lib/internal/cluster/
    // round_robin_handle.js); in the shared accept queue, a connection waits for a live worker instead.
    // Set before the first fork, which freezes the policy.
    cluster.schedulingPolicy = cluster.SCHED_NONE;
    // The workers carry the load: they run with the gateway's flags even when this process did not.
    cluster.setupPrimary({ execArgv: withProcessFlags(process.execArgv) });
    for (const slot of primary.#slots) primary.#fork(slot);
    try {
      await started;
    } catch (err) {
      primary.#removeSignals();
      await primary.shutdown();
      throw err;
    }
    primary.#started = true;
    configGeneration.set(primary.#generation);
    primary.#watcher = new FileWatcher(() => {
      void primary.reload('file');
    }, opts.watchDebounceMs ?? 200);
    primary.#watcher.watch(opts.loaded.files);
    logger.info(
      {
        file: opts.configFile,
        generation: primary.#generation,
        workers: primary.#slots.map((s) => s.worker?.process.pid),
        listeners: primary.#slots[0]?.listeners ?? [],
        admin: formatAddress(primary.#admin.address),
      },
      'gateway started',
    );
    if (primary.#audit.active)
      emitAudit({
        event: 'gateway',
        code: 'gateway.started',
        generation: primary.#generation,
        pid: process.pid,
        workers: primary.#slots.length,
        file: opts.configFile,
      });
    return primary;
  }

  /** Bound admin address (`host:port`), when an admin listener is configured. */
  adminAddress(): string | undefined {
    return formatAddress(this.#admin.address);
  }

  /**
   * Validates the configuration file and, when valid, makes every worker reload it. Succeeds only if
   * every worker did. Reloads run one at a time; calls made meanwhile share one follow-up reload.
   */
  reload(trigger: ReloadTrigger = 'api'): Promise<ReloadResult> {
    this.#trigger = trigger;
    return this.#reloads.run();
  }

  /**
   * Tells every worker to drain (each bounded by `server.drainTimeout`) and waits until all exited; kills
   * those that overstay. Resolves with the exit code for the process: 0, or 1 when a worker was killed.
   */
  shutdown(): Promise<number> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  async #shutdown(): Promise<number> {
    const drainTimeout = this.#loaded.config.server.drainTimeout;
    this.#logger.info({ drainTimeout, workers: this.#live().length }, 'shutting down');
    this.#watcher?.close();
    this.#watcher = undefined;
    for (const slot of this.#slots) {
      clearTimeout(slot.timer);
      slot.timer = undefined;
    }
    await this.#reloads.idle();
    const exited = new Promise<void>((resolve) => {
      this.#allExited = resolve;
    });
    for (const slot of this.#live()) {
      slot.ready = false;
      const worker = slot.worker!;
      if (worker.isConnected()) worker.send({ gatehouse: 'shutdown' }, undefined, () => {});
      else worker.process.kill('SIGTERM');
    }
    this.#checkExited();
    let code = 0;
    if (!(await within(exited, drainTimeout + EXIT_GRACE_MS))) {
      this.#logger.error(
        { workers: this.#live().map((s) => s.worker?.process.pid) },
        'workers did not exit in time',
      );
      this.#killAll();
      await within(exited, 5_000);
      code = 1;
    }
    if (this.#audit.active) {
      emitAudit({
        event: 'gateway',
        code: 'gateway.stopped',
        generation: this.#generation,
        pid: process.pid,
      });
      // After every worker exited (each sends its last events first), ending in a signed checkpoint.
      await this.#audit
        .close()
        .catch((err: unknown) => this.#logger.error({ err }, 'closing the audit trail failed'));
    }
    // Last: no worker is left to use it.
    await this.#store?.close();
    await this.#adminStore?.store.close().catch(() => undefined);
    await this.#admin.close().catch((err: unknown) => this.#logger.warn({ err }, 'closing admin failed'));
    this.#removeSignals();
    this.#logger.info('gateway stopped');
    return code;
  }

  #live(): Slot[] {
    return this.#slots.filter((s) => s.worker !== undefined);
  }

  #servingWorkers(): Array<{ slot: Slot; worker: Worker }> {
    const out: Array<{ slot: Slot; worker: Worker }> = [];
    for (const slot of this.#slots) if (slot.ready && slot.worker) out.push({ slot, worker: slot.worker });
    return out;
  }

  #killAll(): void {
    for (const slot of this.#live()) slot.worker?.process.kill('SIGKILL');
  }

  #checkExited(): void {
    if (this.#allExited && this.#live().length === 0) this.#allExited();
  }

  #fork(slot: Slot): void {
    const worker = cluster.fork({ [WORKER_ENV]: '1' });
    slot.worker = worker;
    slot.ready = false;
    slot.startedAt = new Date();
    slot.startedWith = this.#generation;
    slot.generation = undefined;
    worker.on('message', (message: unknown) => {
      if (isWorkerMessage(message)) this.#onMessage(slot, worker, message);
    });
    // IPC errors (a worker that just died) must not take the primary down; the exit event follows.
    worker.on('error', (err: Error) => this.#logger.warn({ err, worker: worker.id }, 'worker IPC error'));
    worker.on('exit', (code: number | null, signal: NodeJS.Signals | null) =>
      this.#onExit(slot, worker, code, signal),
    );
  }

  #onMessage(slot: Slot, worker: Worker, message: WorkerMessage): void {
    switch (message.gatehouse) {
      case 'reply':
        this.#pending.reply(worker.id, message);
        return;
      case 'store':
        void serveStoreRequest(worker, this.#sharedStore(), message);
        return;
      case 'audit':
        if (Array.isArray(message.records)) for (const r of message.records) this.#audit.record(r);
        return;
      case 'revoke':
        // A session revoked in one worker must leave the others' caches at once (they serve the same users).
        if (!isRevokeMessage(message)) return;
        for (const other of this.#live()) {
          const w = other.worker;
          if (w !== undefined && w !== worker && w.isConnected()) w.send(message, undefined, () => {});
        }
        return;
      case 'hello':
        // Whatever the file holds now, a new worker starts with the configuration the others run.
        slot.startedWith = this.#generation;
        worker.send({ gatehouse: 'config', sources: this.#loaded.sources }, undefined, () => {});
        return;
      case 'failed': {
        const problems = message.problems;
        if (!this.#started)
          this.#startError ??= problems ? new ConfigError(problems) : new Error(message.message);
        this.#logger.error(
          {
            slot: slot.index,
            worker: worker.id,
            workerPid: worker.process.pid,
            error: problems ? undefined : message.message,
          },
          'worker could not start',
        );
        for (const p of problems ?? []) this.#logger.error({ file: p.file, path: p.path }, formatProblem(p));
        return;
      }
      case 'ready': {
        if (slot.worker !== worker || this.#closing) return;
        slot.ready = true;
        slot.generation = slot.startedWith;
        slot.listeners = message.listeners;
        if (this.#started) {
          this.#logger.info(
            { slot: slot.index, worker: worker.id, workerPid: worker.process.pid, restarts: slot.restarts },
            'worker restarted and serving',
          );
        }
        // A reload accepted while this worker was starting may have been missed: apply it now.
        if (slot.startedWith < this.#generation) void this.#catchUp(slot, worker);
        if (!this.#started && this.#slots.every((s) => s.ready)) this.#startup?.resolve();
        return;
      }
    }
  }

  async #catchUp(slot: Slot, worker: Worker): Promise<void> {
    const generation = this.#generation;
    try {
      const result = await this.#pending.request(worker, 'reload', RELOAD_TIMEOUT_MS, this.#loaded.sources);
      if (result.ok && slot.worker === worker) slot.generation = generation;
    } catch (err) {
      this.#logger.warn({ err, slot: slot.index }, 'worker could not catch up with the configuration');
    }
  }

  #onExit(slot: Slot, worker: Worker, code: number | null, signal: NodeJS.Signals | null): void {
    this.#pending.workerGone(worker.id);
    if (slot.worker !== worker) return;
    slot.worker = undefined;
    slot.ready = false;
    const pid = worker.process.pid;
    if (this.#closing) {
      this.#logger.info(
        { slot: slot.index, worker: worker.id, workerPid: pid, code, signal },
        'worker exited',
      );
      this.#checkExited();
      return;
    }
    if (!this.#started) {
      this.#startup?.reject(
        this.#startError ??
          new Error(`worker ${worker.id} exited during start-up (code ${code}, signal ${signal})`),
      );
      return;
    }
    const ranMs = Date.now() - slot.startedAt.getTime();
    slot.failures = ranMs >= STABLE_MS ? 1 : slot.failures + 1;
    const delay = Math.min(RESTART_MAX_MS, RESTART_BASE_MS * 2 ** (slot.failures - 1));
    this.#logger.error(
      {
        slot: slot.index,
        worker: worker.id,
        workerPid: pid,
        code,
        signal,
        restartInMs: delay,
        crashesInARow: slot.failures,
      },
      'worker exited unexpectedly; restarting it',
    );
    slot.timer = setTimeout(() => {
      slot.timer = undefined;
      if (this.#closing) return;
      slot.restarts++;
      this.#restartsCounter.inc();
      this.#fork(slot);
    }, delay);
  }

  async #reloadOnce(): Promise<ReloadResult> {
    const file = this.#configFile;
    this.#lastTrigger = this.#trigger;
    this.#trigger = undefined;
    if (this.#closing) return this.#reject([problem(file, 'the gateway is shutting down')], 'shutdown');
    let loaded: LoadResult;
    try {
      loaded = await loadConfig(file, this.#env);
    } catch (err) {
      return this.#reject([problem(file, `cannot load: ${(err as Error).message}`)], 'error');
    }
    // Keep watching what the running configuration uses plus what this attempt read, so a fix is noticed.
    this.#watcher?.watch([...this.#loaded.files, ...loaded.files]);
    logWarnings(this.#logger, loaded.warnings);
    if (!loaded.ok) return this.#reject(loaded.problems, 'invalid');
    // The workers' compile step, taken here first: a config they would refuse is refused once.
    try {
      compileConfig(loaded.config);
    } catch (err) {
      const problems = compileProblems(err, file);
      return this.#reject(problems ?? [problem(file, (err as Error).message)], 'invalid');
    }
    await this.#prepareStore(loaded);
    // The trail follows the new configuration before any worker runs it (its events come here).
    try {
      await this.#syncAudit(loaded);
    } catch (err) {
      if (err instanceof AuditKeyError) return this.#reject([auditKeyProblem(file, err)], 'invalid');
      return this.#reject([problem(file, `cannot open the audit trail: ${(err as Error).message}`)], 'error');
    }
    const configured = resolveWorkers(loaded.config.server.workers);
    if (configured !== this.#slots.length) {
      // Forking or retiring workers on reload is not done: the count is fixed for the process's life.
      this.#logger.warn(
        { running: this.#slots.length, configured },
        'server.workers takes effect on the next start',
      );
    }

    const generation = this.#generation + 1;
    const targets = this.#servingWorkers();
    // The workers load exactly the texts validated here, even if the file changed since.
    const results = await Promise.all(
      targets.map(async ({ slot, worker }): Promise<{ id: number; result: ReloadResult }> => {
        try {
          const result = await this.#pending.request(worker, 'reload', RELOAD_TIMEOUT_MS, loaded.sources);
          if (result.ok && slot.worker === worker) slot.generation = generation;
          return { id: worker.id, result };
        } catch (err) {
          return { id: worker.id, result: { ok: false, problems: [problem(file, (err as Error).message)] } };
        }
      }),
    );
    const failed = results.filter((r) => !r.result.ok);
    // Named by the number the worker's own log lines carry (`worker`).
    const problems = failed.flatMap(({ id, result }) =>
      result.ok ? [] : result.problems.map((p) => ({ ...p, message: `worker ${id}: ${p.message}` })),
    );
    // No worker could apply it: the instance keeps its configuration, and new workers start with that.
    if (targets.length > 0 && failed.length === targets.length) return this.#reject(problems, 'worker');

    this.#generation = generation;
    this.#loaded = loaded;
    if (this.#ownsLogger) this.#logger.level = loaded.config.logging.level;
    this.#watcher?.watch(loaded.files);
    try {
      await this.#syncAdmin(loaded);
    } catch (err) {
      this.#logger.error({ err }, 'admin listener could not be restarted with the new configuration');
    }
    configGeneration.set(generation);
    // Workers that became ready while this reload ran were not asked; they are now.
    for (const { slot, worker } of this.#servingWorkers()) {
      if (!targets.some((t) => t.worker === worker) && (slot.generation ?? 0) < generation)
        void this.#catchUp(slot, worker);
    }
    if (failed.length === 0) {
      reloadsTotal.inc({ result: 'success' });
      this.#logger.info({ generation, workers: targets.length }, 'configuration reloaded');
      if (this.#audit.active) auditConfigApplied(loaded, generation, this.#lastTrigger ?? 'api');
      return { ok: true, generation };
    }
    return this.#reject(problems, 'worker', true);
  }

  #reject(problems: ConfigProblem[], reason: string, partial = false, trigger?: ReloadTrigger): ReloadResult {
    if (this.#audit.active)
      auditConfigRejected(this.#generation, problems, reason, trigger ?? this.#lastTrigger);
    return rejectReload(this.#logger, this.#generation, problems, reason, partial);
  }

  /** `/metrics`: every serving worker's registry, summed (or as `AGGREGATORS` says), plus the primary's. */
  async #aggregateMetrics(): Promise<{ contentType: string; text: string }> {
    const serving = this.#servingWorkers();
    const replies = await Promise.allSettled(
      serving.map(({ worker }) => this.#pending.request(worker, 'metrics', QUERY_TIMEOUT_MS)),
    );
    const sets: MetricJson[][] = [];
    replies.forEach((reply, i) => {
      if (reply.status === 'fulfilled') {
        sets.push(reply.value.filter((m) => !PRIMARY_OWNED.has(m.name)).map(withAggregator));
      } else {
        const err = reply.reason as Error;
        this.#logger.warn({ slot: serving[i]?.slot.index, err: err.message }, 'worker left out of /metrics');
      }
    });
    sets.push((await registry.getMetricsAsJSON()).map(withAggregator));
    sets.push(await this.#metrics.getMetricsAsJSON());
    const merged = AggregatorRegistry.aggregate(sets);
    return { contentType: merged.contentType, text: await merged.metrics() };
  }

  /** `/api/v1/status`: one worker's report of the configuration, with every worker listed. */
  async #status(): Promise<StatusReport | undefined> {
    const serving = this.#servingWorkers();
    const replies = await Promise.allSettled(
      serving.map(({ worker }) => this.#pending.request(worker, 'status', QUERY_TIMEOUT_MS)),
    );
    const requests = new Map<Slot, number>();
    let base: StatusReport | undefined;
    for (const [i, reply] of replies.entries()) {
      const slot = serving[i]?.slot;
      if (reply.status !== 'fulfilled' || slot === undefined) continue;
      const { requests: count, ...report } = reply.value;
      requests.set(slot, count);
      base ??= report;
    }
    if (base === undefined) return undefined;
    const workers: WorkerStatus[] = this.#slots.map((slot) => ({
      slot: slot.index,
      id: slot.worker?.id ?? 0,
      pid: slot.worker?.process.pid,
      ready: slot.ready,
      generation: slot.generation,
      requests: requests.get(slot),
      startedAt: slot.startedAt.toISOString(),
      restarts: slot.restarts,
    }));
    return {
      ...base,
      generation: this.#generation,
      startedAt: this.#startedAt.toISOString(),
      uptime: Math.round(process.uptime() * 1000) / 1000,
      workers,
    };
  }

  /**
   * The limit stage the admin quota API reads: the running configuration's quotas over the store the
   * workers count in (the shared memory store, or Redis through a connection of the primary's own).
   */
  #limits(): Limiter | undefined {
    const config = this.#loaded.config;
    if (this.#limiter?.config === config) return this.#limiter.limiter;
    const limiter = new Limiter(compileConfig(config).limits, this.#instanceStore(config), this.#logger);
    this.#limiter = { config, limiter };
    return limiter;
  }

  /**
   * The store the workers count and keep keys in, as the primary reaches it: the shared memory store, or
   * Redis through a connection of the primary's own (opened when first needed, replaced when the URL changes).
   */
  #instanceStore(config: LoadedConfig['config']): StateStore {
    if (config.state.store === 'memory') return this.#sharedStore();
    if (this.#adminStore?.url !== config.state.store) {
      void this.#adminStore?.store.close().catch(() => undefined);
      this.#adminStore = {
        url: config.state.store,
        store: createStateStore(config.state.store, this.#logger),
      };
    }
    return this.#adminStore.store;
  }

  /** Opens, reopens or closes the trail for `loaded` (throws when its key or file cannot be used). */
  async #syncAudit(loaded: LoadedConfig): Promise<void> {
    await this.#audit.sync(
      loaded.config,
      loaded.file,
      (ref) => loaded.secrets.resolveSecret(ref),
      this.#instanceStore(loaded.config),
    );
  }

  /** The live figures of every serving worker, added up (a worker that does not answer is left out). */
  async #liveFigures(): Promise<LiveSnapshot> {
    const answers = await Promise.allSettled(
      this.#servingWorkers().map(({ worker }) => this.#pending.request(worker, 'live', QUERY_TIMEOUT_MS)),
    );
    return LiveStats.merge(answers.flatMap((a) => (a.status === 'fulfilled' ? [a.value] : [])));
  }

  /**
   * The sign-in sessions for the admin API, through a serving worker: its store is the instance's, and a
   * revocation it makes reaches every other worker and instance as a sign-out does.
   */
  #sessionDirectory(): SessionDirectory | undefined {
    if ((this.#loaded.config.identity?.providers ?? []).length === 0) return undefined;
    const ask = <K extends 'sessions' | 'revoke-session'>(kind: K, arg: string | number) => {
      const serving = this.#servingWorkers()[0];
      if (serving === undefined) throw new WorkerRequestError('GH_WORKER_GONE', 'no worker serves right now');
      return this.#pending.request(serving.worker, kind, QUERY_TIMEOUT_MS, undefined, arg);
    };
    return {
      list: async (limit?: number) => (await ask('sessions', limit ?? 500)) ?? { sessions: [], total: 0 },
      revokeHandle: async (handle: string) => (await ask('revoke-session', handle)) ?? undefined,
    };
  }

  /** The memory store of the instance; kept for the life of the process, whatever reloads change. */
  #sharedStore(): MemoryStore {
    this.#store ??= new MemoryStore({}, this.#logger);
    return this.#store;
  }

  /**
   * With `state.store: memory`, creates (or rotates, when a reload changes the algorithm) the generated
   * assertion key in the shared store before any worker builds its signer, so workers only read it. The
   * first key is added atomically anyway, but a rotation is a read-modify-write that workers reloading
   * together would race, each signing with its own key until the next sync. A failure is left to the
   * workers, which report it.
   */
  async #prepareStore(loaded: LoadedConfig): Promise<void> {
    const { config, secrets } = loaded;
    if (config.state.store !== 'memory' || config.identity?.assertion?.signingKey !== undefined) return;
    try {
      await AssertionSigner.create(config.identity?.assertion, {
        readSecret: (ref) => secrets.resolveSecret(ref),
        keyStore: this.#sharedStore(),
      });
    } catch (err) {
      this.#logger.warn({ err }, 'the generated assertion key could not be prepared for the workers');
    }
  }

  #ready(): boolean {
    return this.#started && this.#closing === undefined && this.#slots.every((s) => s.ready);
  }

  /** Keeps the admin listener in step with the configuration. */
  #syncAdmin(loaded: LoadedConfig): Promise<void> {
    return this.#admin.sync(loaded);
  }

  #removeSignals(): void {
    this.#uninstallSignals?.();
    this.#uninstallSignals = undefined;
  }
}

function withAggregator(metric: MetricJson): MetricJson {
  const aggregator = AGGREGATORS[metric.name];
  return aggregator === undefined ? metric : { ...metric, aggregator };
}

/** Resolves true when `promise` settles within `ms`, false otherwise. */
async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

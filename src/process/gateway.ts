/**
 * The gateway process: loads the configuration, builds the runtime, runs the listeners and the admin
 * listener, and replaces the runtime atomically on reload (SIGHUP or a watched file changing). A new
 * runtime is swapped in only after it was fully built; a configuration that fails is logged and the
 * running one stays. Requests keep the runtime they started with, so nothing in flight is lost. The
 * state store (sessions, login state, assertion keys) lives as long as the process: reloads keep it,
 * and only a changed `state.store` replaces it (the old one is closed after the swap).
 */
import type { AddressInfo } from 'node:net';
import { AdminServer, type ReloadResult } from '../admin/server.js';
import { AdminSlot, formatAddress } from '../admin/slot.js';
import { type LoadResult, loadConfig } from '../config/load.js';
import { FileWatcher } from '../config/watch.js';
import { ConfigError, type ConfigProblem } from '../errors.js';
import { createAccessLog } from '../observe/access-log.js';
import { type AuditSink, auditing, emitAudit, setAuditSink } from '../observe/audit-bus.js';
import { liveStats } from '../observe/live-stats.js';
import { type AccessEntry, createLogger, type Logger } from '../observe/log.js';
import { configGeneration, reloadsTotal } from '../observe/metrics.js';
import { ListenerSet } from '../proxy/listeners.js';
import type { Runtime } from '../runtime.js';
import { SpoeService, type SpoeStatus } from '../spoe/service.js';
import { Coalescer } from '../util/coalesce.js';
import {
  AuditKeyError,
  AuditService,
  accessAuditRecord,
  auditConfigApplied,
  auditConfigRejected,
  auditKeyProblem,
  type ReloadTrigger,
} from './audit.js';
import { RESERVED_ENDPOINTS } from './endpoints.js';
import { logWarnings, problem, rejectReload } from './reload.js';
import {
  type BuiltRuntime,
  buildRuntime,
  closeStore,
  closeTracing,
  closeUpstreams,
  type LoadedConfig,
  retireStore,
  retireTracing,
  retireUpstreams,
  type StateStoreFactory,
} from './runtime-build.js';
import { installSignals, type UninstallSignals } from './signals.js';

/** How often generated assertion keys are re-read from a shared (Redis) store to pick up rotations. */
const ASSERTION_SYNC_MS = 60_000;
/** How often a provisional assertion key (the store was down when it was needed) retries the store. */
const PROVISIONAL_SYNC_MS = 5_000;

export type { ReloadResult };

/** Options of `Gateway.start`. */
export interface GatewayOptions {
  /** The main configuration file. */
  configFile: string;
  /** Operational logger (default: JSON lines to stdout at `logging.level`). */
  logger?: Logger;
  /** Reload when the configuration, an include, a secret file or a certificate changes (default true). */
  watch?: boolean;
  /** Handle SIGHUP (reload) and SIGTERM/SIGINT (drain, then exit 0) (default false; the CLI sets it). */
  signals?: boolean;
  /** Environment used for `env:` references (default `process.env`). */
  env?: NodeJS.ProcessEnv;
  /** Access-log sink (default: JSON lines to stdout when `logging.access` is on). */
  accessLog?: (entry: AccessEntry) => void;
  /** Debounce of file-change reloads in ms (default 200). */
  watchDebounceMs?: number;
  /**
   * Run the admin listener when the config has `admin:` (default true). A cluster worker sets false:
   * the primary owns the one admin listener and asks the workers over IPC.
   */
  admin?: boolean;
  /** Fields added to every operational log line, e.g. a cluster worker's id and pid. */
  logBindings?: Record<string, unknown>;
  /** Texts of the config and its includes to use instead of reading them (see `LoadOptions.sources`). */
  sources?: Readonly<Record<string, string>>;
  /**
   * Creates the state store for `state.store` (default `createStateStore`). A cluster worker passes one
   * that uses the primary's memory store over IPC, so that all workers share one.
   */
  createStore?: StateStoreFactory;
  /**
   * Where audit events go instead of a trail of this process's own: a cluster worker forwards them to
   * the primary, which writes the one trail of the instance.
   */
  auditSink?: AuditSink;
}

/** A running gateway. */
export class Gateway {
  readonly #configFile: string;
  readonly #logger: Logger;
  readonly #env: NodeJS.ProcessEnv;
  /** True when the logger was created from `logging.level`, which a reload may then change. */
  #ownsLogger = false;
  #runtime: Runtime;
  #listeners!: ListenerSet;
  #spoe!: SpoeService;
  readonly #admin = new AdminSlot(
    (token) =>
      new AdminServer({
        getRuntime: () => this.#runtime,
        logger: this.#logger,
        reload: () => this.reload(undefined, 'admin'),
        token,
        ready: () => this.#closing === undefined,
        listenerAddress: (name) => this.address(name),
        spoeStatus: () => this.spoeStatus(),
        auditKeys: () => this.#audit?.publicKeys(),
        audit: emitAudit,
      }),
  );
  #adminEnabled = true;
  #watcher: FileWatcher | undefined;
  readonly #reloads = new Coalescer<ReloadResult>(() => this.#reloadOnce());
  #sources: Readonly<Record<string, string>> | undefined;
  #trigger: ReloadTrigger | undefined;
  #lastTrigger: ReloadTrigger | undefined;
  /** The trail this process writes (undefined in a cluster worker, which forwards its events). */
  #audit: AuditService | undefined;
  #auditSink: AuditSink | undefined;
  #closing: Promise<void> | undefined;
  readonly #retiring = new Set<Promise<void>>();
  /** Replaced runtimes that requests may still be running on (pruned when their count reaches 0). */
  readonly #older = new Set<Runtime>();
  readonly #retireAbort = new AbortController();
  #uninstallSignals: UninstallSignals | undefined;
  #assertionSync: NodeJS.Timeout | undefined;
  #createStore: StateStoreFactory | undefined;

  private constructor(configFile: string, logger: Logger, env: NodeJS.ProcessEnv, runtime: Runtime) {
    this.#configFile = configFile;
    this.#logger = logger;
    this.#env = env;
    this.#runtime = runtime;
  }

  /**
   * Loads the configuration and starts serving. Throws ConfigError when the configuration is invalid,
   * and the listener's error (e.g. EADDRINUSE) when a port cannot be bound; nothing is left running then.
   */
  static async start(opts: GatewayOptions): Promise<Gateway> {
    const env = opts.env ?? process.env;
    const loaded = await loadConfig(opts.configFile, env, { sources: opts.sources });
    if (!loaded.ok) throw new ConfigError(loaded.problems);
    let logger = opts.logger;
    if (logger === undefined) {
      logger = createLogger(loaded.config.logging.level);
      if (opts.logBindings) logger = logger.child(opts.logBindings);
    }
    logWarnings(logger, loaded.warnings);

    // Identity or policy settings that cannot be built throw ConfigError here, like any invalid config.
    const built = await buildRuntime(loaded, undefined, logger, { createStore: opts.createStore });
    const gw = new Gateway(opts.configFile, logger, env, built.runtime);
    gw.#createStore = opts.createStore;
    gw.#ownsLogger = opts.logger === undefined;
    gw.#adminEnabled = opts.admin !== false;
    // A cluster worker's lines say which worker served the request, like its other log lines.
    const worker = opts.logBindings?.worker;
    const sink = opts.accessLog ?? createAccessLog(undefined, worker === undefined ? undefined : { worker });
    // Checked per entry so that a reload can turn the access log on or off.
    const accessLog = (entry: AccessEntry): void => {
      const config = gw.#runtime.config;
      liveStats.observe(entry);
      if (config.audit !== undefined && auditing()) {
        const record = accessAuditRecord(entry, config.audit);
        if (record !== undefined) emitAudit(record);
      }
      if (config.logging.access) sink(entry);
    };
    gw.#listeners = new ListenerSet({
      getRuntime: () => gw.#runtime,
      logger,
      accessLog,
      endpoints: RESERVED_ENDPOINTS,
    });
    gw.#spoe = new SpoeService({ getRuntime: () => gw.#runtime, logger, accessLog });
    try {
      if (opts.auditSink === undefined) gw.#audit = new AuditService(logger);
      gw.#auditSink = opts.auditSink;
      await gw.#syncAudit(loaded, built.runtime);
      auditConfigApplied(loaded, built.runtime.generation, 'start');
      await gw.#listeners.apply(built.runtime);
      await gw.#spoe.sync(built.runtime.config.spoe, 0);
      for (const u of built.runtime.upstreams.values()) u.start();
      await gw.#syncAdmin(loaded);
    } catch (err) {
      await gw.#listeners.close(0).catch(() => {});
      await gw.#spoe.close(0).catch(() => {});
      await gw.#admin.close().catch(() => {});
      await gw.#audit?.close().catch(() => {});
      await closeUpstreams(built.runtime.upstreams.values(), logger);
      await closeStore(built.runtime.store, logger);
      if (err instanceof AuditKeyError) throw new ConfigError([auditKeyProblem(opts.configFile, err)]);
      throw err;
    }
    if (built.runtime.identity.assertion.provisional)
      logger.warn(
        'the state store could not be read: identity assertions are signed with a key of this instance alone until it answers',
      );
    gw.#startAssertionSync();
    configGeneration.set(built.runtime.generation);
    if (opts.watch !== false) {
      gw.#watcher = new FileWatcher(() => {
        void gw.reload(undefined, 'file');
      }, opts.watchDebounceMs ?? 200);
      gw.#watcher.watch(built.runtime.watchedFiles);
    }
    if (opts.signals) {
      gw.#uninstallSignals = installSignals({
        logger,
        reload: () => gw.reload(undefined, 'signal'),
        shutdown: () => gw.shutdown().then(() => 0),
        drainMessage: 'stop signal received: draining',
        abandonMessage: 'second stop signal: exiting without waiting for the drain',
      });
    }
    logger.info(
      {
        file: opts.configFile,
        generation: built.runtime.generation,
        listeners: built.runtime.config.listeners.map((l) => ({
          name: l.name,
          address: formatAddress(gw.address(l.name)),
        })),
        admin: formatAddress(gw.#admin.address),
        spoe: gw.#spoe.port === undefined ? undefined : gw.#spoe.bind,
      },
      'gateway started',
    );
    if (gw.#audit !== undefined)
      emitAudit({
        event: 'gateway',
        code: 'gateway.started',
        generation: built.runtime.generation,
        pid: process.pid,
        file: opts.configFile,
      });
    return gw;
  }

  /** The runtime in use right now. */
  get runtime(): Runtime {
    return this.#runtime;
  }

  /** Bound address of a listener by name. */
  address(listenerName: string): AddressInfo | undefined {
    return this.#listeners.address(listenerName);
  }

  /** The port the SPOE agent listens on, when `spoe` is configured. */
  spoePort(): number | undefined {
    return this.#spoe.port;
  }

  /** The SPOE agent's address and counters, when `spoe` is configured. */
  spoeStatus(): SpoeStatus | undefined {
    return this.#spoe?.status();
  }

  /** Bound address of the admin listener, when one is configured. */
  adminAddress(): AddressInfo | undefined {
    return this.#admin.address;
  }

  /**
   * Loads the configuration again and swaps it in when it is valid. Reloads run one at a time; calls
   * made while one runs share a single follow-up reload, which sees every change made until it starts.
   * With `sources`, the config and its includes are taken from them instead of the files (the latest
   * sources given win).
   */
  reload(sources?: Readonly<Record<string, string>>, trigger: ReloadTrigger = 'api'): Promise<ReloadResult> {
    if (sources !== undefined) this.#sources = sources;
    this.#trigger = trigger;
    return this.#reloads.run();
  }

  /**
   * Stops accepting connections, lets requests in flight finish (bounded by `server.drainTimeout`),
   * then closes the admin listener and the upstream pools. Idempotent.
   */
  shutdown(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  async #shutdown(): Promise<void> {
    this.#logger.info({ drainTimeout: this.#runtime.config.server.drainTimeout }, 'shutting down');
    this.#watcher?.close();
    this.#watcher = undefined;
    // SIGHUP stays handled during the drain: a reload asked for now is refused (shutting down), where
    // Node's default for the signal would end the process with requests still in flight.
    // A reload that is building must finish first, so that its upstreams are closed below too.
    await this.#reloads.idle();
    await Promise.all([
      this.#listeners.close(this.#runtime.config.server.drainTimeout),
      this.#spoe.close(this.#runtime.config.server.drainTimeout),
    ]);
    this.#retireAbort.abort();
    await Promise.all(this.#retiring);
    await this.#admin.close().catch((err: unknown) => this.#logger.warn({ err }, 'closing admin failed'));
    await closeUpstreams(this.#runtime.upstreams.values(), this.#logger);
    clearInterval(this.#assertionSync);
    await closeStore(this.#runtime.store, this.#logger);
    // The drain is over and the requests served have ended their spans: export them before exiting.
    await closeTracing(this.#runtime.tracing, this.#logger);
    this.#uninstallSignals?.();
    this.#uninstallSignals = undefined;
    if (this.#audit !== undefined) {
      emitAudit({
        event: 'gateway',
        code: 'gateway.stopped',
        generation: this.#runtime.generation,
        pid: process.pid,
      });
      // Last, so that every request drained above is in the trail, which ends in a signed checkpoint.
      await this.#audit
        .close()
        .catch((err: unknown) => this.#logger.error({ err }, 'closing the audit trail failed'));
    }
    if (this.#audit === undefined) setAuditSink(undefined);
    this.#logger.info('gateway stopped');
  }

  async #reloadOnce(): Promise<ReloadResult> {
    const file = this.#configFile;
    const trigger = this.#trigger;
    this.#trigger = undefined;
    this.#lastTrigger = trigger;
    if (this.#closing) return this.#reject([problem(file, 'the gateway is shutting down')], 'shutdown');
    let loaded: LoadResult;
    const sources = this.#sources;
    this.#sources = undefined;
    try {
      loaded = await loadConfig(file, this.#env, { sources });
    } catch (err) {
      return this.#reject([problem(file, `cannot load: ${(err as Error).message}`)], 'error');
    }
    // Keep watching what the running runtime uses plus what this attempt read, so a fix is noticed.
    this.#watcher?.watch([...this.#runtime.watchedFiles, ...loaded.files]);
    if (!loaded.ok) {
      logWarnings(this.#logger, loaded.warnings);
      return this.#reject(loaded.problems, 'invalid');
    }
    logWarnings(this.#logger, loaded.warnings);

    let built: BuiltRuntime;
    try {
      built = await buildRuntime(loaded, this.#runtime, this.#logger, { createStore: this.#createStore });
    } catch (err) {
      if (err instanceof ConfigError) return this.#reject(err.problems, 'invalid');
      return this.#reject([problem(file, `cannot build the runtime: ${(err as Error).message}`)], 'error');
    }
    try {
      await this.#syncAudit(loaded, built.runtime);
    } catch (err) {
      await closeUpstreams(built.created, this.#logger);
      await closeStore(built.createdStore, this.#logger);
      if (err instanceof AuditKeyError) return this.#reject([auditKeyProblem(file, err)], 'invalid');
      return this.#reject([problem(file, `cannot open the audit trail: ${(err as Error).message}`)], 'error');
    }
    try {
      await this.#spoe.sync(built.runtime.config.spoe, built.runtime.config.server.drainTimeout);
    } catch (err) {
      await closeUpstreams(built.created, this.#logger);
      await closeStore(built.createdStore, this.#logger);
      return this.#reject([problem(file, `cannot start the SPOE agent: ${(err as Error).message}`)], 'error');
    }
    try {
      await this.#listeners.apply(built.runtime);
    } catch (err) {
      await closeUpstreams(built.created, this.#logger);
      await closeStore(built.createdStore, this.#logger);
      return this.#reject([problem(file, `cannot apply listeners: ${(err as Error).message}`)], 'error');
    }

    const previous = this.#runtime;
    this.#runtime = built.runtime;
    if (this.#ownsLogger) this.#logger.level = built.runtime.config.logging.level;
    for (const u of built.runtime.upstreams.values()) u.start();
    this.#watcher?.watch(built.runtime.watchedFiles);
    configGeneration.set(built.runtime.generation);
    reloadsTotal.inc({ result: 'success' });
    // No request starts on a replaced runtime again: one whose count is 0 is done for good.
    this.#older.add(previous);
    for (const rt of this.#older) if (rt.inFlight.count === 0) this.#older.delete(rt);
    // Requests still running on a retired upstream, or that may still pick it, keep it open.
    const drain = built.runtime.config.server.drainTimeout;
    const older = [...this.#older];
    const signal = this.#retireAbort.signal;
    this.#retire(retireUpstreams(built.retired, drain, this.#logger, signal, older));
    if (built.retiredStore !== undefined)
      this.#retire(retireStore(built.retiredStore, drain, this.#logger, signal, older));
    if (built.retiredTracing !== undefined)
      this.#retire(retireTracing(built.retiredTracing, drain, this.#logger, signal, older));
    try {
      await this.#syncAdmin(loaded);
    } catch (err) {
      this.#logger.error({ err }, 'admin listener could not be restarted with the new configuration');
    }
    this.#logger.info(
      {
        generation: built.runtime.generation,
        previous: previous.generation,
        routes: built.runtime.routes.routes.length,
        upstreams: built.runtime.upstreams.size,
        added: built.created.map((u) => u.name),
        retired: built.retired.map((u) => u.name),
      },
      'configuration reloaded',
    );
    if (this.#audit !== undefined) auditConfigApplied(loaded, built.runtime.generation, trigger ?? 'api');
    return { ok: true, generation: built.runtime.generation };
  }

  /** Keeps a retirement (upstreams, a store, a tracer) until it is done; shutdown waits for it. */
  #retire(retiring: Promise<void>): void {
    const tracked = retiring.finally(() => this.#retiring.delete(tracked));
    this.#retiring.add(tracked);
  }

  #reject(problems: ConfigProblem[], result: string): ReloadResult {
    if (this.#audit !== undefined)
      auditConfigRejected(this.#runtime.generation, problems, result, this.#lastTrigger);
    return rejectReload(this.#logger, this.#runtime.generation, problems, result);
  }

  /**
   * Follows `audit` of a configuration about to run: the trail-owning process opens, reopens or closes
   * its trail; a worker forwards events only while the configuration has an audit trail.
   */
  async #syncAudit(loaded: Extract<LoadResult, { ok: true }>, runtime: Runtime): Promise<void> {
    if (this.#audit !== undefined) {
      await this.#audit.sync(
        loaded.config,
        loaded.file,
        (ref) => loaded.secrets.resolveSecret(ref),
        runtime.store,
      );
      return;
    }
    setAuditSink(loaded.config.audit === undefined ? undefined : this.#auditSink);
  }

  /** Keeps the admin listener in step with the configuration (not in cluster workers). */
  async #syncAdmin(loaded: LoadedConfig): Promise<void> {
    if (this.#adminEnabled) await this.#admin.sync(loaded);
  }

  /**
   * With a shared store, another instance may rotate the generated assertion key: re-read it about every
   * minute so this instance signs with, and publishes, the same keys. A signer built while the store was
   * down (a provisional key of its own) tries every few seconds until it has the shared set.
   */
  #startAssertionSync(): void {
    let last = Date.now();
    let running = false;
    let warned = false;
    this.#assertionSync = setInterval(() => {
      const runtime = this.#runtime;
      if (runtime.store.kind !== 'redis' || this.#closing !== undefined || running) return;
      const signer = runtime.identity.assertion;
      if (!signer.provisional && Date.now() - last < ASSERTION_SYNC_MS) return;
      last = Date.now();
      running = true;
      const wasProvisional = signer.provisional;
      signer
        .sync()
        .then(
          () => {
            warned = false;
            if (wasProvisional && !signer.provisional)
              this.#logger.info('assertion keys read from the state store: signing with the shared key');
          },
          (err: unknown) => {
            // While provisional, one warning per outage rather than one every few seconds.
            if (wasProvisional && warned) return;
            warned = wasProvisional;
            this.#logger.warn({ err }, 'assertion keys could not be re-read from the state store');
          },
        )
        .finally(() => {
          running = false;
        });
    }, PROVISIONAL_SYNC_MS);
    this.#assertionSync.unref();
  }
}

/**
 * The SPOE agent as the gateway runs it (`spoe: { bind }`): started with the configuration, moved when
 * `spoe.bind` changes on reload, stopped when the key is removed, and closed with the gateway. Every
 * `gatehouse-check` is answered with the runtime in use at that moment (a reload swaps it for the next
 * message), logged like a request of the built-in proxy (with `plane: 'spoe'`) and counted in `/metrics`.
 */
import { performance } from 'node:perf_hooks';
import { Counter, Gauge } from 'prom-client';
import type { SpoeConfig } from '../config/schema.js';
import { logAccess } from '../core/answer.js';
import { isoTime } from '../observe/access-log.js';
import { auditing } from '../observe/audit-bus.js';
import { type AccessEntry, auditDetailOf, type Logger, recordsAccess } from '../observe/log.js';
import { answerDuration, decisionsTotal, registry } from '../observe/metrics.js';
import type { Runtime } from '../runtime.js';
import { SpoeAgent, type SpoeAgentStats } from './agent.js';
import { CHECK_MESSAGE, type CheckOutcome, checkMessage } from './check.js';
import type { SpopAction, SpopMessage } from './codec.js';

/** What the service needs of the gateway. */
export interface SpoeServiceOptions {
  readonly getRuntime: () => Runtime;
  readonly logger: Logger;
  /** Writes one access-log entry (the gateway's sink, which honours `logging.access`). */
  readonly accessLog: (entry: AccessEntry) => void;
}

/** The SPOE agent in `/api/v1/status`. */
export interface SpoeStatus {
  bind: string;
  port: number;
  connections: { open: number; total: number };
  frames: { in: number; out: number };
  notifies: number;
  /** Frames answered without a decision: HAProxy refused those requests. */
  failClosed: number;
  inFlight: number;
}

const running = new Set<SpoeAgent>();
let metricsRegistered = false;

/** SPOE connection and frame gauges/counters, read from the running agents when `/metrics` is scraped. */
function registerMetrics(): void {
  if (metricsRegistered) return;
  metricsRegistered = true;
  const sum = (pick: (s: SpoeAgentStats) => number): number => {
    let n = 0;
    for (const a of running) n += pick(a.stats());
    return n;
  };
  new Gauge({
    name: 'gatehouse_spoe_connections',
    help: 'Open connections from HAProxy to the SPOE agent',
    registers: [registry],
    collect() {
      this.set(sum((s) => s.connections.open));
    },
  });
  new Counter({
    name: 'gatehouse_spoe_frames_total',
    help: 'SPOP frames received from HAProxy (in) and sent to it (out)',
    labelNames: ['direction'] as const,
    registers: [registry],
    collect() {
      this.reset();
      this.inc(
        { direction: 'in' },
        sum((s) => s.frames.in),
      );
      this.inc(
        { direction: 'out' },
        sum((s) => s.frames.out),
      );
    },
  });
  new Counter({
    name: 'gatehouse_spoe_fail_closed_total',
    help: 'SPOE frames answered without a decision (HAProxy refuses those requests)',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(sum((s) => s.failClosedAcks));
    },
  });
}

/** Runs at most one SPOE agent, in step with the configuration. */
export class SpoeService {
  readonly #opts: SpoeServiceOptions;
  #agent: SpoeAgent | undefined;
  #bind: string | undefined;
  #settings: string | undefined;
  #port: number | undefined;
  /** Agents replaced by a reload, finishing their decisions in flight. */
  readonly #retiring = new Set<Promise<void>>();

  constructor(opts: SpoeServiceOptions) {
    this.#opts = opts;
  }

  /** The port the agent listens on, when it runs. */
  get port(): number | undefined {
    return this.#port;
  }

  /** The agent's address and counters, for `/api/v1/status`; undefined when it does not run. */
  status(): SpoeStatus | undefined {
    const agent = this.#agent;
    if (agent === undefined || this.#bind === undefined || this.#port === undefined) return undefined;
    const s = agent.stats();
    return {
      bind: this.#bind,
      port: this.#port,
      connections: { open: s.connections.open, total: s.connections.total },
      frames: { in: s.frames.in, out: s.frames.out },
      notifies: s.notifies,
      failClosed: s.failClosedAcks,
      inFlight: s.inFlight,
    };
  }

  /**
   * Starts, moves or stops the agent for `config` (a `spoe` section or undefined); a replaced agent
   * finishes its decisions in flight (bounded by `graceMs`) in the background. Throws the listen error
   * (EADDRINUSE, ...) and leaves the running agent as it was then.
   */
  async sync(config: SpoeConfig | undefined, graceMs: number): Promise<void> {
    const settings = config === undefined ? undefined : JSON.stringify(config);
    if (settings === this.#settings) return;
    let next: SpoeAgent | undefined;
    let port: number | undefined;
    const previous = this.#agent;
    // Same address, other settings: the old agent stops listening first (its connections finish).
    if (previous !== undefined && config !== undefined && config.bind === this.#bind) {
      this.#agent = undefined;
      const retired = this.#retire(previous, graceMs).finally(() => this.#retiring.delete(retired));
      this.#retiring.add(retired);
    }
    if (config !== undefined) {
      registerMetrics();
      next = new SpoeAgent({
        onMessage: (m) => this.#onMessage(m),
        maxFrameSize: config.maxFrameSize,
        maxInFlightPerConnection: config.maxInFlightPerConnection,
        logger: this.#opts.logger,
      });
      try {
        ({ port } = await next.listen(config.bind));
      } catch (err) {
        await next.close(0).catch(() => {});
        throw err;
      }
      running.add(next);
      this.#opts.logger.info({ bind: config.bind, port }, 'SPOE agent listening');
    }
    const replaced = this.#agent;
    this.#agent = next;
    this.#bind = config?.bind;
    this.#settings = settings;
    this.#port = port;
    if (replaced !== undefined) {
      const retired = this.#retire(replaced, graceMs).finally(() => this.#retiring.delete(retired));
      this.#retiring.add(retired);
    }
  }

  /** Stops the agent: decisions in flight are answered (bounded by `graceMs`), then its connections close. */
  async close(graceMs: number): Promise<void> {
    const agent = this.#agent;
    this.#agent = undefined;
    this.#settings = undefined;
    this.#bind = undefined;
    this.#port = undefined;
    if (agent !== undefined) await this.#retire(agent, graceMs);
    await Promise.all(this.#retiring);
  }

  async #retire(agent: SpoeAgent, graceMs: number): Promise<void> {
    try {
      await agent.close(graceMs);
    } catch (err) {
      this.#opts.logger.warn({ err }, 'closing the SPOE agent failed');
    } finally {
      running.delete(agent);
    }
  }

  #onMessage(message: SpopMessage): SpopAction[] | Promise<SpopAction[]> {
    // Another message (a misconfigured SPOE file): no variables, so HAProxy's fail-closed rule refuses.
    if (message.name !== CHECK_MESSAGE) return [];
    const started = performance.now();
    const rt = this.#opts.getRuntime();
    const out = checkMessage(rt, message);
    if (out instanceof Promise) return out.then((o) => this.#done(rt, o, started));
    return this.#done(rt, out, started);
  }

  #done(rt: Runtime, o: CheckOutcome, started: number): SpopAction[] {
    const ms = performance.now() - started;
    answerDuration.series('spoe').observe(ms / 1000);
    const v = o.verdict;
    const route = v?.answer?.route.name ?? '(none)';
    const status = v?.status ?? 400;
    decisionsTotal.series('spoe', route, String(status), v?.reason ?? o.reason).inc();
    if (recordsAccess(rt.config)) this.#log(o, status, ms);
    return o.actions;
  }

  #log(o: CheckOutcome, status: number, ms: number): void {
    const v = o.verdict;
    const desc = v?.desc;
    const a = v?.answer;
    const entry: AccessEntry = {
      time: isoTime(Date.now()),
      requestId: o.requestId ?? '',
      client: desc?.clientIp ?? o.clientIp ?? '',
      host: desc?.host ?? '',
      method: desc?.method ?? '',
      path: desc?.path ?? '',
      route: a?.route.name,
      upstream: undefined,
      server: undefined,
      status,
      bytesIn: 0,
      bytesOut: 0,
      duration: Math.round(ms * 1000) / 1000,
      upstreamDuration: undefined,
      retries: 0,
      plane: 'spoe',
    };
    // As the built-in proxy logs its refusals: the error code (GH_FORBIDDEN, GH_RATE_LIMITED, ...).
    if (status >= 400)
      entry.error = v?.refusal?.code ?? (a === undefined ? (v?.reason ?? o.reason) : undefined);
    if (a !== undefined) logAccess(entry, a);
    if (desc !== undefined && desc.query !== '' && auditing()) auditDetailOf(entry).query = desc.query;
    this.#opts.accessLog(entry);
  }

  /** The configured bind address, when the agent runs. */
  get bind(): string | undefined {
    return this.#bind;
  }
}

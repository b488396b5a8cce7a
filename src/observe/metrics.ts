/**
 * Prometheus instruments, all prefixed `gatehouse_`. One registry per process; the admin listener
 * serves it at `/metrics`. Instruments are created once here so every module records into the same ones.
 *
 * The per-request instruments keep their numbers in plain pre-resolved series objects (`series()`): the
 * hot path does an addition, and the numbers are handed to prom-client only when a scrape reads them.
 * prom-client's own `labels()` hashes and validates the label set on every call.
 */
import { Counter, collectDefaultMetrics, Gauge, type Metric, Registry } from 'prom-client';
import type { UpstreamStatus } from '../upstream/types.js';

/** The registry `/metrics` renders. */
export const registry = new Registry();

const durationBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

type LabelArgs = Array<string | number> | [Record<string, string | number | undefined>];

/** Label values in `labelNames` order, from either calling form of prom-client (values or an object). */
function labelValues(labelNames: readonly string[], args: LabelArgs): string[] {
  const first = args[0];
  if (typeof first === 'object' && first !== null) {
    return labelNames.map((n) => String((first as Record<string, unknown>)[n] ?? ''));
  }
  if (args.length !== labelNames.length) {
    throw new Error(
      `expected ${labelNames.length} label values (${labelNames.join(', ')}), got ${args.length}`,
    );
  }
  return (args as Array<string | number>).map(String);
}

/** Series objects of one metric by label values, in creation order; looked up off the hot path. */
class SeriesTable<S> {
  private readonly byKey = new Map<string, S>();
  constructor(
    private readonly labelNames: readonly string[],
    private readonly make: (labels: Record<string, string>) => S,
  ) {}

  get(args: LabelArgs): S {
    const values = labelValues(this.labelNames, args);
    const key = JSON.stringify(values);
    let s = this.byKey.get(key);
    if (s === undefined) {
      const labels: Record<string, string> = {};
      this.labelNames.forEach((n, i) => {
        labels[n] = values[i]!;
      });
      s = this.make(labels);
      this.byKey.set(key, s);
    }
    return s;
  }

  delete(args: LabelArgs): void {
    this.byKey.delete(JSON.stringify(labelValues(this.labelNames, args)));
  }

  values(): IterableIterator<S> {
    return this.byKey.values();
  }
}

// prom-client's typings leave out the label names its metrics keep.
function labelNamesOf(metric: Counter<string> | Gauge<string>): readonly string[] {
  return (metric as unknown as { labelNames: readonly string[] }).labelNames;
}

/** One counter series; `inc` is a plain addition, moved into the counter when it is read. */
export class CounterSeries {
  pending = 0;
  constructor(readonly labels: Readonly<Record<string, string>>) {}
  inc(value = 1): void {
    this.pending += value;
  }
}

/** A prom-client Counter whose hot-path series are pre-resolved `CounterSeries`. */
export class FastCounter<T extends string> extends Counter<T> {
  // No initialiser: the base constructor calls reset() before field initialisers run.
  private table: SeriesTable<CounterSeries> | undefined;

  /** The series of these label values (created on first use, kept until removed). */
  series(...values: string[]): CounterSeries {
    this.table ??= new SeriesTable(labelNamesOf(this), (labels) => new CounterSeries(labels));
    return this.table.get(values);
  }

  override async get(): ReturnType<Counter<T>['get']> {
    if (this.table !== undefined) {
      for (const s of this.table.values()) {
        if (s.pending === 0) continue;
        const n = s.pending;
        s.pending = 0;
        this.inc(s.labels as Partial<Record<T, string>>, n);
      }
    }
    return super.get();
  }

  override reset(): void {
    super.reset();
    if (this.table !== undefined) for (const s of this.table.values()) s.pending = 0;
  }

  override remove(...args: LabelArgs): void {
    this.table?.delete(args);
    (super.remove as (...a: LabelArgs) => void)(...args);
  }
}

/** One gauge series holding its current value; published when the gauge is read. */
export class GaugeSeries {
  value = 0;
  /** Set at least once: like prom-client, a series is shown from its first update on. */
  touched = false;
  constructor(readonly labels: Readonly<Record<string, string>>) {}
  set(value: number): void {
    this.value = value;
    this.touched = true;
  }
  inc(value = 1): void {
    this.value += value;
    this.touched = true;
  }
  dec(value = 1): void {
    this.value -= value;
    this.touched = true;
  }
}

/**
 * A prom-client Gauge whose hot-path series are pre-resolved `GaugeSeries`. Their values are set on
 * the gauge before its `collect()` runs, so a collect that rebuilds the gauge still has the last word.
 */
export class FastGauge<T extends string> extends Gauge<T> {
  // No initialiser: the base constructor calls reset() before field initialisers run.
  private table: SeriesTable<GaugeSeries> | undefined;

  /** The series of these label values (created on first use, kept until removed). */
  series(...values: string[]): GaugeSeries {
    this.table ??= new SeriesTable(labelNamesOf(this), (labels) => new GaugeSeries(labels));
    return this.table.get(values);
  }

  override async get(): ReturnType<Gauge<T>['get']> {
    if (this.table !== undefined) {
      for (const s of this.table.values()) {
        if (s.touched) this.set(s.labels as Partial<Record<T, string>>, s.value);
      }
    }
    return super.get();
  }

  override remove(...args: LabelArgs): void {
    this.table?.delete(args);
    (super.remove as (...a: LabelArgs) => void)(...args);
  }
}

/** One histogram series: bucket counts in a typed array, found by a scan of the (few) bounds. Values are finite. */
export class HistogramSeries {
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  constructor(
    readonly labels: Readonly<Record<string, string>>,
    private readonly bounds: readonly number[],
  ) {
    this.counts = new Float64Array(bounds.length);
  }
  observe(value: number): void {
    const b = this.bounds;
    let i = 0;
    while (i < b.length && value > b[i]!) i++;
    if (i < b.length) this.counts[i]!++;
    this.sum += value;
    this.count++;
  }
}

interface HistogramValue {
  labels: Record<string, string | number>;
  sharedLabels?: Record<string, string>;
  value: number;
  metricName: string;
  exemplar?: null;
}

/**
 * A histogram with prom-client's interface to the registry (`get`, `getForPromString`, `reset`,
 * `remove`) and the same output as prom-client's Histogram (`_bucket` with `le`, `_sum`, `_count`,
 * aggregated as a sum across cluster workers), whose series record with no per-call label work.
 */
export class FastHistogram<T extends string> {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly T[];
  readonly upperBounds: readonly number[];
  private readonly table: SeriesTable<HistogramSeries>;

  constructor(config: {
    name: string;
    help: string;
    labelNames: readonly T[];
    buckets: readonly number[];
    registers: Registry[];
  }) {
    this.name = config.name;
    this.help = config.help;
    this.labelNames = config.labelNames;
    this.upperBounds = [...config.buckets].sort((a, b) => a - b);
    this.table = new SeriesTable(
      config.labelNames,
      (labels) => new HistogramSeries(labels, this.upperBounds),
    );
    // The registry only calls get/getForPromString/reset and reads name, type and aggregator.
    for (const r of config.registers) r.registerMetric(this as unknown as Metric);
  }

  /** The series of these label values (created on first use, kept until removed). */
  series(...values: string[]): HistogramSeries {
    return this.table.get(values);
  }

  /** prom-client's calling form: `labels(...values).observe(v)`. */
  labels(...values: string[]): HistogramSeries {
    return this.series(...values);
  }

  observe(labels: Partial<Record<T, string | number>>, value: number): void {
    this.table.get([labels as Record<string, string | number>]).observe(value);
  }

  remove(...args: LabelArgs): void {
    this.table.delete(args);
  }

  reset(): void {
    for (const s of this.table.values()) {
      s.counts.fill(0);
      s.sum = 0;
      s.count = 0;
    }
  }

  /** Values in prom-client's text form: `le` per bucket, the series labels shared. */
  async getForPromString(): Promise<{
    name: string;
    help: string;
    type: string;
    values: HistogramValue[];
    aggregator: string;
  }> {
    const bucket = `${this.name}_bucket`;
    const values: HistogramValue[] = [];
    for (const s of this.table.values()) {
      let acc = 0;
      for (let i = 0; i < this.upperBounds.length; i++) {
        acc += s.counts[i]!;
        values.push({
          labels: { le: this.upperBounds[i]! },
          sharedLabels: s.labels,
          value: acc,
          metricName: bucket,
          exemplar: null,
        });
      }
      values.push({
        labels: { le: '+Inf' },
        sharedLabels: s.labels,
        value: s.count,
        metricName: bucket,
        exemplar: null,
      });
      values.push({ labels: {}, sharedLabels: s.labels, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: {}, sharedLabels: s.labels, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  /** Values with every label on each value, as prom-client's `Histogram.get()` returns them. */
  async get(): Promise<{
    name: string;
    help: string;
    type: string;
    values: HistogramValue[];
    aggregator: string;
  }> {
    const data = await this.getForPromString();
    data.values = data.values.map((v) => ({
      value: v.value,
      metricName: v.metricName,
      exemplar: v.exemplar,
      labels: { ...v.labels, ...v.sharedLabels },
    }));
    return data;
  }
}

/** Requests answered, by route, method class and status. */
export const requestsTotal = new FastCounter({
  name: 'gatehouse_requests_total',
  help: 'Requests answered by the gateway',
  labelNames: ['route', 'method', 'status'] as const,
  registers: [registry],
});

/** Whole-request duration per route. */
export const requestDuration = new FastHistogram({
  name: 'gatehouse_request_duration_seconds',
  help: 'Time from request start to response end, per route',
  labelNames: ['route'] as const,
  buckets: durationBuckets,
  registers: [registry],
});

/** Access decisions of the data planes that decide without forwarding (SPOE, forward-auth). */
export const decisionsTotal = new FastCounter({
  name: 'gatehouse_decisions_total',
  help: 'Access decisions given to HAProxy (spoe) or to a proxy asking forward-auth, by route, status and reason',
  labelNames: ['plane', 'route', 'status', 'reason'] as const,
  registers: [registry],
});

/**
 * Verdicts of the limit stage: `allowed`, `delayed` (held until it conformed), `limited` (429) and
 * `store-error` (the state store could not answer and the limit lets requests through), by route and
 * by the limit that decided (`rate`, or `quota:<name>`; empty when none refused).
 */
export const limitVerdictsTotal = new FastCounter({
  name: 'gatehouse_limit_verdicts_total',
  help: 'Rate-limit and quota verdicts by route, verdict (allowed, delayed, limited, store-error) and limit',
  labelNames: ['route', 'verdict', 'limit'] as const,
  registers: [registry],
});

/** Time requests were held by rate limits with `delay`, per route. */
export const limitDelay = new FastHistogram({
  name: 'gatehouse_limit_delay_seconds',
  help: 'Time a request was held by a rate limit with delay until it conformed',
  labelNames: ['route'] as const,
  buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  registers: [registry],
});

/** Time `answer()` took for the decision-only data planes. */
export const answerDuration = new FastHistogram({
  name: 'gatehouse_answer_duration_seconds',
  help: 'Time to answer one decision request (describe, route, authenticate, decide, sign), per data plane',
  labelNames: ['plane'] as const,
  buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
  registers: [registry],
});

/** Bytes received from clients and sent to them, per route. */
export const bytesTotal = new FastCounter({
  name: 'gatehouse_bytes_total',
  help: 'Body bytes per route and direction (in = from client, out = to client)',
  labelNames: ['route', 'direction'] as const,
  registers: [registry],
});

/** Attempts sent to upstream servers, by outcome. */
export const upstreamRequestsTotal = new FastCounter({
  name: 'gatehouse_upstream_requests_total',
  help: 'Attempts sent to upstream servers, by outcome',
  labelNames: ['upstream', 'server', 'outcome'] as const,
  registers: [registry],
});

/** Time to response headers from upstream servers. */
export const upstreamDuration = new FastHistogram({
  name: 'gatehouse_upstream_response_seconds',
  help: 'Time until an upstream server sent response headers',
  labelNames: ['upstream'] as const,
  buckets: durationBuckets,
  registers: [registry],
});

/** Retries sent, per upstream. */
export const retriesTotal = new Counter({
  name: 'gatehouse_retries_total',
  help: 'Retried upstream attempts',
  labelNames: ['upstream', 'reason'] as const,
  registers: [registry],
});

/** Where scrape-time gauges read upstream state from; set by the admin listener. */
let upstreamSource: (() => Iterable<UpstreamStatus>) | undefined;

/**
 * Sets (or clears with undefined) the function that lists the current upstreams' status at scrape
 * time, so server gauges always describe the running configuration and drop servers that left it.
 */
export function setUpstreamStatusSource(source: (() => Iterable<UpstreamStatus>) | undefined): void {
  upstreamSource = source;
}

/** Returns the current status source, so an owner can clear it only if it is still its own. */
export function getUpstreamStatusSource(): (() => Iterable<UpstreamStatus>) | undefined {
  return upstreamSource;
}

function readStatuses(): UpstreamStatus[] | undefined {
  if (upstreamSource === undefined) return undefined;
  try {
    return [...upstreamSource()];
  } catch {
    // A scrape must never fail because an upstream is being torn down by a reload.
    return undefined;
  }
}

/** 1 when a server is usable, 0 when down or ejected. */
export const serverUp = new FastGauge({
  name: 'gatehouse_upstream_server_up',
  help: 'Server health (1 up, 0 down or ejected)',
  labelNames: ['upstream', 'server'] as const,
  registers: [registry],
  collect() {
    const statuses = readStatuses();
    if (statuses === undefined) return;
    this.reset();
    // A server not yet checked takes traffic, so it counts as up until a check says otherwise.
    for (const u of statuses) {
      for (const s of u.servers)
        this.set({ upstream: u.name, server: s.id }, s.health === 'up' || s.health === 'unknown' ? 1 : 0);
    }
  },
});

/** Health-check results. */
export const healthChecksTotal = new Counter({
  name: 'gatehouse_health_checks_total',
  help: 'Active health checks by result',
  labelNames: ['upstream', 'server', 'result'] as const,
  registers: [registry],
});

/** Requests in flight on each server. */
export const serverActive = new FastGauge({
  name: 'gatehouse_upstream_server_active_requests',
  help: 'Requests in flight per upstream server',
  labelNames: ['upstream', 'server'] as const,
  registers: [registry],
  collect() {
    const statuses = readStatuses();
    if (statuses === undefined) return;
    this.reset();
    for (const u of statuses) {
      for (const s of u.servers) this.set({ upstream: u.name, server: s.id }, s.active);
    }
  },
});

/** Requests waiting in upstream queues. */
export const queueLength = new FastGauge({
  name: 'gatehouse_upstream_queue_length',
  help: 'Requests waiting for a free server slot',
  labelNames: ['upstream'] as const,
  registers: [registry],
  collect() {
    const statuses = readStatuses();
    if (statuses === undefined) return;
    this.reset();
    for (const u of statuses) this.set({ upstream: u.name }, u.queued);
  },
});

/** Open client connections per listener. */
export const activeConnections = new FastGauge({
  name: 'gatehouse_active_connections',
  help: 'Open client connections per listener',
  labelNames: ['listener'] as const,
  registers: [registry],
});

/** Open WebSocket tunnels per route. */
export const activeWebSockets = new Gauge({
  name: 'gatehouse_active_websockets',
  help: 'Open WebSocket tunnels per route',
  labelNames: ['route'] as const,
  registers: [registry],
});

/** WebSocket tunnels one side has closed while the other has not yet (bounded by `finTimeout`). */
export const halfClosedWebSockets = new Gauge({
  name: 'gatehouse_websocket_half_closed',
  help: 'Open WebSocket tunnels with one side closed, per route',
  labelNames: ['route'] as const,
  registers: [registry],
});

/** WebSocket tunnels closed, by what closed them. */
export const webSocketClosesTotal = new Counter({
  name: 'gatehouse_websocket_closes_total',
  help: 'WebSocket tunnels closed, per route and cause (client, upstream, idle, fin-timeout)',
  labelNames: ['route', 'cause'] as const,
  registers: [registry],
});

/** Configuration reloads by result. */
export const reloadsTotal = new Counter({
  name: 'gatehouse_config_reloads_total',
  help: 'Configuration reloads by result',
  labelNames: ['result'] as const,
  registers: [registry],
});

/** Generation number of the running configuration. */
export const configGeneration = new Gauge({
  name: 'gatehouse_config_generation',
  help: 'Generation of the configuration in use',
  registers: [registry],
});

/**
 * 1 while the shared state store (Redis) answers, 0 while it is known to be down; the lowest value
 * of the processes of an instance.
 */
export const stateStoreUp = new Gauge({
  name: 'gatehouse_state_store_up',
  help: 'Whether the shared state store answers (1) or is known to be down (0)',
  labelNames: ['store'] as const,
  aggregator: 'min',
  registers: [registry],
});

/** Audit lines written, per sink (`file`, `stdout`, `syslog`). */
export const auditEventsTotal = new FastCounter({
  name: 'gatehouse_audit_events_total',
  help: 'Audit lines written by each audit sink',
  labelNames: ['sink'] as const,
  registers: [registry],
});

/** Audit events a sink dropped because it fell behind by more than its buffer (or could not take them). */
export const auditDroppedTotal = new FastCounter({
  name: 'gatehouse_audit_dropped_total',
  help: 'Audit events dropped by each audit sink (buffer full, or too large for a syslog datagram)',
  labelNames: ['sink'] as const,
  registers: [registry],
});

/** Audit lines waiting in each sink's buffer. */
export const auditBuffered = new FastGauge({
  name: 'gatehouse_audit_buffered',
  help: 'Audit lines held in memory by each audit sink, not yet written',
  labelNames: ['sink'] as const,
  registers: [registry],
});

let processMetricsEnabled = false;

/** Adds the default process metrics (CPU, memory, event loop, GC) as `gatehouse_*`; idempotent. */
export function enableProcessMetrics(): void {
  if (processMetricsEnabled) return;
  processMetricsEnabled = true;
  collectDefaultMetrics({ register: registry, prefix: 'gatehouse_' });
}

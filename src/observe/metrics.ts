/**
 * Prometheus instruments, all prefixed `gatehouse_`. One registry per process; the admin listener
 * serves it at `/metrics`. Instruments are created once here so every module records into the same ones.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { UpstreamStatus } from '../upstream/types.js';

/** The registry `/metrics` renders. */
export const registry = new Registry();

const durationBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

/** Requests answered, by route, method class and status. */
export const requestsTotal = new Counter({
  name: 'gatehouse_requests_total',
  help: 'Requests answered by the gateway',
  labelNames: ['route', 'method', 'status'] as const,
  registers: [registry],
});

/** Whole-request duration per route. */
export const requestDuration = new Histogram({
  name: 'gatehouse_request_duration_seconds',
  help: 'Time from request start to response end, per route',
  labelNames: ['route'] as const,
  buckets: durationBuckets,
  registers: [registry],
});

/** Bytes received from clients and sent to them, per route. */
export const bytesTotal = new Counter({
  name: 'gatehouse_bytes_total',
  help: 'Body bytes per route and direction (in = from client, out = to client)',
  labelNames: ['route', 'direction'] as const,
  registers: [registry],
});

/** Attempts sent to upstream servers, by outcome. */
export const upstreamRequestsTotal = new Counter({
  name: 'gatehouse_upstream_requests_total',
  help: 'Attempts sent to upstream servers, by outcome',
  labelNames: ['upstream', 'server', 'outcome'] as const,
  registers: [registry],
});

/** Time to response headers from upstream servers. */
export const upstreamDuration = new Histogram({
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
export const serverUp = new Gauge({
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
export const serverActive = new Gauge({
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
export const queueLength = new Gauge({
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
export const activeConnections = new Gauge({
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

let processMetricsEnabled = false;

/** Adds the default process metrics (CPU, memory, event loop, GC) as `gatehouse_*`; idempotent. */
export function enableProcessMetrics(): void {
  if (processMetricsEnabled) return;
  processMetricsEnabled = true;
  collectDefaultMetrics({ register: registry, prefix: 'gatehouse_' });
}

/**
 * Active HTTP health checks (interval, timeout, rise, fall, expected status) and the rise/fall state
 * machine. Checks use their own connection per endpoint so they never wait behind traffic for a slot.
 */
import { Client, type Dispatcher } from 'undici';
import type { HealthCheckConfig } from '../config/schema.js';
import { healthChecksTotal } from '../observe/metrics.js';
import type { CheckResult, Endpoint } from './server.js';
import type { EndpointConnect } from './tls.js';

/**
 * Applies one check result. A server of unknown state takes the first result at once; afterwards it
 * takes `fall` consecutive failures to go down and `rise` consecutive successes to come back.
 * Returns the new state when it changed.
 */
export function applyCheckResult(
  ep: Endpoint,
  ok: boolean,
  rise: number,
  fall: number,
): 'up' | 'down' | undefined {
  const target = ok ? 'up' : 'down';
  if (ep.checkState === target) {
    ep.checkStreak = 0;
    return undefined;
  }
  if (ep.checkState === 'unknown') {
    ep.checkState = target;
    ep.checkStreak = 0;
    return target;
  }
  ep.checkStreak++;
  if (ep.checkStreak < (ok ? rise : fall)) return undefined;
  ep.checkState = target;
  ep.checkStreak = 0;
  return target;
}

/** True when `status` counts as healthy (default 200-399). */
export function statusIsHealthy(status: number, expect: readonly number[] | undefined): boolean {
  return expect ? expect.includes(status) : status >= 200 && status < 400;
}

interface Probe {
  readonly ep: Endpoint;
  readonly client: Client;
  readonly servername: string | undefined;
  timer: NodeJS.Timeout | undefined;
  stopped: boolean;
}

/** Runs the periodic checks of one upstream's endpoints. */
export class ActiveHealthCheck {
  private readonly probes = new Map<Endpoint, Probe>();
  private running = false;

  constructor(
    private readonly upstream: string,
    private readonly def: HealthCheckConfig,
    private readonly onResult: (ep: Endpoint, result: CheckResult) => void,
  ) {}

  /** Starts checking an endpoint (immediately when already running). */
  add(ep: Endpoint, connect: EndpointConnect): void {
    const client = new Client(ep.origin, {
      connect: connect.connect,
      pipelining: 1,
      headersTimeout: this.def.timeout,
      bodyTimeout: this.def.timeout,
      keepAliveTimeout: Math.max(this.def.interval * 2, 4000),
    });
    const probe: Probe = { ep, client, servername: connect.servername, timer: undefined, stopped: false };
    this.probes.set(ep, probe);
    if (this.running) this.schedule(probe, 0);
  }

  /** Stops checking an endpoint and closes its connection. */
  remove(ep: Endpoint): void {
    const probe = this.probes.get(ep);
    if (!probe) return;
    this.probes.delete(ep);
    this.stop(probe);
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    for (const probe of this.probes.values()) this.schedule(probe, 0);
  }

  close(): void {
    this.running = false;
    for (const probe of this.probes.values()) this.stop(probe);
    this.probes.clear();
  }

  private stop(probe: Probe): void {
    probe.stopped = true;
    if (probe.timer) clearTimeout(probe.timer);
    probe.client.destroy().catch(() => {});
  }

  private schedule(probe: Probe, delay: number): void {
    if (probe.stopped) return;
    probe.timer = setTimeout(() => void this.run(probe), delay);
    probe.timer.unref();
  }

  private async run(probe: Probe): Promise<void> {
    const result = await this.check(probe);
    if (probe.stopped) return;
    healthChecksTotal.labels(this.upstream, probe.ep.id, result.ok ? 'ok' : 'fail').inc();
    this.onResult(probe.ep, result);
    this.schedule(probe, this.def.interval);
  }

  private async check(probe: Probe): Promise<CheckResult> {
    const at = new Date().toISOString();
    try {
      const res = await probe.client.request({
        path: this.def.path,
        method: this.def.method,
        headers: { host: this.def.host ?? probe.ep.hostHeader, 'user-agent': 'gatehouse-health-check' },
        signal: AbortSignal.timeout(this.def.timeout),
        // Keeps the TLS name of the endpoint even when the check's Host header differs.
        servername: probe.servername,
      } as Dispatcher.RequestOptions);
      await res.body.dump();
      const ok = statusIsHealthy(res.statusCode, this.def.expectStatus);
      return ok
        ? { at, ok, status: res.statusCode }
        : { at, ok, status: res.statusCode, error: 'unexpected status' };
    } catch (err) {
      const e = err as { code?: unknown; message?: string; name?: string };
      // An AbortSignal.timeout() abort is a DOMException whose `code` is a number (23): use its name.
      const code = typeof e.code === 'string' ? e.code : undefined;
      return { at, ok: false, error: code ?? e.name ?? e.message ?? 'check failed' };
    }
  }
}

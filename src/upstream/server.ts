/**
 * Per-endpoint state kept apart from configuration: in-flight count, active-check health, passive
 * ejection and the slow-start ramp. `usable` says whether the endpoint may take new requests at all,
 * `full` whether it has a free slot right now (Caddy's `available = healthy && !full`).
 */
import type { Dispatcher } from 'undici';
import { serverActive, serverUp, upstreamRequestsTotal } from '../observe/metrics.js';
import type { Outcome, ServerHealth, UpstreamServer } from './types.js';

/** Slow start begins at this fraction of the configured weight. */
const SLOW_START_FLOOR = 0.1;

/** Linear ramp from 10% to 100% of the weight over `duration` ms since `since`. */
export function slowStartFactor(since: number, now: number, duration: number): number {
  if (since === 0 || duration <= 0) return 1;
  const elapsed = now - since;
  if (elapsed >= duration) return 1;
  if (elapsed <= 0) return SLOW_START_FLOOR;
  return SLOW_START_FLOOR + (1 - SLOW_START_FLOOR) * (elapsed / duration);
}

/** Result of the latest active health check, shown in status. */
export interface CheckResult {
  at: string;
  ok: boolean;
  status?: number;
  error?: string;
}

type OutcomeCounters = Record<Outcome, { inc(): void }>;

/** Who currently owns a metric series, so a retired upstream does not remove its successor's series. */
const seriesOwners = new Map<string, Endpoint>();

/** One concrete endpoint: a server URL, or one of the addresses its host name resolves to. */
export class Endpoint implements UpstreamServer {
  readonly id: string;
  readonly url: string;
  readonly origin: string;
  readonly hostHeader: string;
  readonly weight: number;
  readonly backup: boolean;
  readonly dispatcher: Dispatcher;
  /** The resolved address this endpoint connects to. */
  readonly address: string;
  /** Concurrent request limit, or Infinity. */
  readonly maxConnections: number;
  /** Seed mixed into the key hash for rendezvous hashing. */
  readonly hashSeed: number;
  active = 0;
  /** Active-check state; 'up' from the start when the upstream has no active checks. */
  checkState: 'up' | 'down' | 'unknown';
  /** Epoch ms until which passive ejection lasts; 0 when not ejected. */
  ejectedUntil = 0;
  /** Consecutive failed outcomes (passive health). */
  consecutiveFailures = 0;
  /** Consecutive active-check results in the current direction (rise/fall counting). */
  checkStreak = 0;
  /** Epoch ms when slow start began; 0 when at full weight. */
  slowStartSince = 0;
  lastCheck: CheckResult | undefined;
  /** Scratch: smooth weighted round-robin current weight. */
  swrrCurrent = 0;
  /** Scratch: effective weight computed for the current selection. */
  effWeight = 0;
  private readonly seriesKey: string;
  private readonly upstreamName: string;
  private readonly activeGauge: { set(v: number): void };
  private readonly upGauge: { set(v: number): void };
  private readonly outcomes: OutcomeCounters;

  constructor(init: {
    upstream: string;
    id: string;
    url: string;
    origin: string;
    address: string;
    hostHeader: string;
    weight: number;
    backup: boolean;
    maxConnections: number;
    dispatcher: Dispatcher;
    hashSeed: number;
    checked: boolean;
  }) {
    this.upstreamName = init.upstream;
    this.id = init.id;
    this.url = init.url;
    this.origin = init.origin;
    this.address = init.address;
    this.hostHeader = init.hostHeader;
    this.weight = init.weight;
    this.backup = init.backup;
    this.maxConnections = init.maxConnections;
    this.dispatcher = init.dispatcher;
    this.hashSeed = init.hashSeed;
    this.checkState = init.checked ? 'unknown' : 'up';
    this.seriesKey = `${init.upstream}\0${init.id}`;
    seriesOwners.set(this.seriesKey, this);
    this.activeGauge = serverActive.series(init.upstream, init.id);
    this.upGauge = serverUp.series(init.upstream, init.id);
    const counter = (outcome: Outcome) => upstreamRequestsTotal.series(init.upstream, init.id, outcome);
    this.outcomes = {
      success: counter('success'),
      'http-5xx': counter('http-5xx'),
      'connect-error': counter('connect-error'),
      timeout: counter('timeout'),
      'client-abort': counter('client-abort'),
    };
    this.activeGauge.set(0);
    this.publishUp();
  }

  /**
   * Health as status shows it. An active check that finds the server down outranks a passive ejection:
   * `down` is the one that keeps it out of panic mode too.
   */
  get health(): ServerHealth {
    if (this.checkState === 'down') return 'down';
    return this.ejectedUntil !== 0 ? 'ejected' : this.checkState;
  }

  /** May take new requests (ignoring the connection limit). Weight 0 drains the server. */
  get usable(): boolean {
    return this.weight > 0 && this.checkState !== 'down' && this.ejectedUntil === 0;
  }

  /**
   * May take requests when nothing else can (panic): like `usable`, but a passive ejection does not
   * count, since only an active check proves a server down (Envoy's panic threshold).
   */
  get panicUsable(): boolean {
    return this.weight > 0 && this.checkState !== 'down';
  }

  /** At its connection limit. */
  get full(): boolean {
    return this.active >= this.maxConnections;
  }

  /** Weight after the slow-start ramp. */
  effectiveWeight(now: number, slowStart: number): number {
    if (this.slowStartSince === 0) return this.weight;
    const f = slowStartFactor(this.slowStartSince, now, slowStart);
    if (f >= 1) this.slowStartSince = 0;
    return this.weight * f;
  }

  /** Reserves a slot. */
  take(): void {
    this.active++;
    this.activeGauge.set(this.active);
  }

  /** Frees a slot and counts the outcome; returns true when it counts as a failure. */
  give(outcome: Outcome): boolean {
    this.active--;
    this.activeGauge.set(this.active);
    if (this.active === 0 && this.onIdle) this.onIdle();
    this.outcomes[outcome].inc();
    if (outcome === 'success') {
      this.consecutiveFailures = 0;
      return false;
    }
    if (outcome === 'client-abort') return false;
    this.consecutiveFailures++;
    return true;
  }

  private onIdle: (() => void) | undefined;
  private closing: Promise<void> | undefined;

  /**
   * Closes the connection pool once every lease on this endpoint was released (a lease may be taken
   * before its request is dispatched), then lets in-flight requests finish.
   */
  closeWhenIdle(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      const close = () => {
        this.onIdle = undefined;
        this.dispatcher
          .close()
          .catch(() => {})
          .finally(() => {
            this.dropSeries();
            resolve();
          });
      };
      if (this.active === 0) close();
      else this.onIdle = close;
    });
    return this.closing;
  }

  /** Updates the up gauge after a state change. */
  publishUp(): void {
    this.upGauge.set(this.checkState !== 'down' && this.ejectedUntil === 0 ? 1 : 0);
  }

  /** Removes this endpoint's metric series unless a newer endpoint took them over. */
  dropSeries(): void {
    if (seriesOwners.get(this.seriesKey) !== this) return;
    seriesOwners.delete(this.seriesKey);
    serverActive.remove(this.upstreamName, this.id);
    serverUp.remove(this.upstreamName, this.id);
    for (const outcome of Object.keys(this.outcomes)) {
      upstreamRequestsTotal.remove(this.upstreamName, this.id, outcome);
    }
  }
}

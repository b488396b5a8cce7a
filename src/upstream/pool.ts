/**
 * The Upstream implementation: endpoints with their keep-alive pools, selection (stickiness, then the
 * balancing policy, backups only when no primary is usable, ejected servers only in panic mode), the
 * wait queue, passive ejection, active checks and DNS refresh.
 */
import { createHash } from 'node:crypto';
import type { Dispatcher } from 'undici';
import { Pool } from 'undici';
import type { UpstreamConfig, UpstreamServerConfig } from '../config/schema.js';
import { NoServerAvailableError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import { queueLength } from '../observe/metrics.js';
import { originFor, type ParsedServerUrl, parseServerUrl, resolveAll } from './dns.js';
import { ActiveHealthCheck, applyCheckResult } from './health.js';
import { WaitQueue } from './queue.js';
import { SlidingRetryBudget } from './retry-budget.js';
import { createSelector, fnv1a, type Selector } from './selection.js';
import { type CheckResult, Endpoint, slowStartFactor } from './server.js';
import { StickyCookie } from './sticky.js';
import { type EndpointConnect, endpointConnect, type UpstreamTlsMaterial } from './tls.js';
import type { Lease, Outcome, SelectInput, Upstream, UpstreamStatus } from './types.js';

/** Idle keep-alive time when the server does not announce one; the server's hint wins when shorter. */
const KEEP_ALIVE_MS = 60_000;
const KEEP_ALIVE_MAX_MS = 600_000;

/** A pool that pins every request's TLS server name (see `EndpointConnect.servername`). */
class PinnedNamePool extends Pool {
  constructor(
    origin: string,
    options: Pool.Options,
    private readonly servername: string,
  ) {
    super(origin, options);
  }
  override dispatch(opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    return super.dispatch({ ...opts, servername: this.servername } as Dispatcher.DispatchOptions, handler);
  }
}

/** Secrets expanded for one build; compared on reload to decide whether an upstream can be reused. */
export interface UpstreamSecrets {
  injectHeaders: Array<readonly [string, string]>;
  tls: UpstreamTlsMaterial;
}

/** Fingerprint of expanded secrets, so a rotated secret rebuilds an otherwise unchanged upstream. */
export function secretsDigest(secrets: UpstreamSecrets): string {
  return createHash('sha256').update(JSON.stringify(secrets)).digest('base64url');
}

/** Stable opaque endpoint id: a short hash of the configured URL and the address. */
export function endpointId(url: string, address: string): string {
  return createHash('sha256').update(`${url}|${address}`).digest('base64url').slice(0, 12);
}

class PoolLease implements Lease {
  private released = false;
  constructor(
    readonly server: Endpoint,
    readonly setCookie: string | undefined,
    private readonly pool: UpstreamPool,
  ) {}
  release(outcome: Outcome): void {
    if (this.released) return;
    this.released = true;
    this.pool.onRelease(this.server, outcome);
  }
}

/** Every usable candidate is at its connection limit. */
const FULL = 1;
/** No usable server at all. */
const NONE = 2;

interface ServerEntry {
  readonly def: UpstreamServerConfig;
  readonly parsed: ParsedServerUrl;
  addresses: string[];
}

/** An upstream with balancing, health, queueing and credentials. */
export class UpstreamPool implements Upstream {
  readonly name: string;
  readonly config: UpstreamConfig;
  readonly injectHeaders: ReadonlyArray<readonly [string, string]>;
  readonly retryBudget: SlidingRetryBudget;
  /** See `secretsDigest`. */
  readonly secretsDigest: string;
  private readonly logger: Logger;
  private readonly tls: UpstreamTlsMaterial;
  private readonly selector: Selector;
  private readonly sticky: StickyCookie | undefined;
  private readonly queue: WaitQueue;
  private readonly health: ActiveHealthCheck | undefined;
  private readonly entries: ServerEntry[] = [];
  private endpoints: Endpoint[] = [];
  private primaries: Endpoint[] = [];
  private backups: Endpoint[] = [];
  private readonly byId = new Map<string, Endpoint>();
  private readonly connects = new Map<Endpoint, EndpointConnect>();
  private readonly ejectTimers = new Map<Endpoint, NodeJS.Timeout>();
  /** Reused for every selection so the hot path allocates no candidate array. */
  private readonly scratch: Endpoint[] = [];
  private dnsTimer: NodeJS.Timeout | undefined;
  private dnsRunning = false;
  /** Selection is in panic mode (see `panic`); kept to log only the transitions. */
  private panicking = false;
  private started = false;
  private closed = false;

  private readonly resolve: (host: string) => Promise<string[]>;

  /** `options.resolve` replaces the system resolver (all addresses of a host name). */
  constructor(
    name: string,
    def: UpstreamConfig,
    secrets: UpstreamSecrets,
    logger: Logger,
    options: { resolve?: (host: string) => Promise<string[]> } = {},
  ) {
    this.name = name;
    this.resolve = options.resolve ?? resolveAll;
    this.config = def;
    this.logger = logger.child({ upstream: name });
    this.injectHeaders = secrets.injectHeaders;
    this.tls = secrets.tls;
    this.secretsDigest = secretsDigest(secrets);
    this.retryBudget = new SlidingRetryBudget(def.retries.budget);
    this.selector = createSelector(def);
    this.sticky = def.sticky ? new StickyCookie(def.sticky) : undefined;
    const gauge = queueLength.series(name);
    gauge.set(0);
    this.queue = new WaitQueue(name, def.queue.max, def.queue.timeout, (n) => gauge.set(n));
    this.health = def.healthCheck
      ? new ActiveHealthCheck(name, def.healthCheck, (ep, r) => this.onCheck(ep, r))
      : undefined;
  }

  /** Resolves every server's addresses and creates the endpoints; rejects when a host cannot be resolved. */
  async init(): Promise<void> {
    for (const [i, def] of this.config.servers.entries()) {
      const parsed = parseServerUrl(def.url);
      let addresses: string[];
      try {
        addresses = parsed.needsLookup ? await this.resolve(parsed.host) : [parsed.host];
        if (addresses.length === 0) throw new Error('empty answer');
      } catch (err) {
        throw new Error(
          `upstreams.${this.name}.servers.${i}.url: cannot resolve ${parsed.host}: ${(err as Error).message}`,
          { cause: err },
        );
      }
      this.entries.push({ def, parsed, addresses });
    }
    const endpoints: Endpoint[] = [];
    for (const entry of this.entries) {
      for (const address of entry.addresses) endpoints.push(this.makeEndpoint(entry, address, endpoints));
    }
    this.setEndpoints(endpoints);
  }

  private makeEndpoint(entry: ServerEntry, address: string, siblings: readonly Endpoint[]): Endpoint {
    const { def, parsed } = entry;
    let id = endpointId(def.url, address);
    // The same URL listed twice still needs distinct ids.
    for (let n = 2; siblings.some((e) => e.id === id); n++) {
      id = endpointId(`${def.url}#${n}`, address);
    }
    const maxConnections = def.maxConnections ?? this.config.maxConnections;
    const timeouts = this.config.timeouts;
    const connect = endpointConnect(parsed.protocol, parsed.host, address, this.tls, timeouts.connect);
    const origin = originFor(parsed.protocol, address, parsed.port);
    const options: Pool.Options = {
      connections: maxConnections ?? null,
      pipelining: 1,
      connect: connect.connect,
      headersTimeout: timeouts.response,
      bodyTimeout: timeouts.idle,
      keepAliveTimeout: KEEP_ALIVE_MS,
      keepAliveMaxTimeout: KEEP_ALIVE_MAX_MS,
    };
    const dispatcher =
      connect.servername !== undefined
        ? new PinnedNamePool(origin, options, connect.servername)
        : new Pool(origin, options);
    const ep = new Endpoint({
      upstream: this.name,
      id,
      url: def.url,
      origin,
      address,
      hostHeader: parsed.hostHeader,
      weight: def.weight,
      backup: def.backup,
      maxConnections: maxConnections ?? Number.POSITIVE_INFINITY,
      dispatcher,
      hashSeed: fnv1a(id),
      checked: this.health !== undefined,
    });
    this.connects.set(ep, connect);
    return ep;
  }

  private setEndpoints(endpoints: Endpoint[]): void {
    const previous = new Set(this.endpoints);
    this.endpoints = endpoints;
    this.primaries = endpoints.filter((e) => !e.backup);
    this.backups = endpoints.filter((e) => e.backup);
    this.byId.clear();
    for (const ep of endpoints) {
      this.byId.set(ep.id, ep);
      if (!previous.delete(ep)) this.health?.add(ep, this.connects.get(ep)!);
    }
    for (const gone of previous) this.retireEndpoint(gone);
  }

  private retireEndpoint(ep: Endpoint): void {
    this.health?.remove(ep);
    const t = this.ejectTimers.get(ep);
    if (t) clearTimeout(t);
    this.ejectTimers.delete(ep);
    this.connects.delete(ep);
    void ep.closeWhenIdle();
  }

  acquire(input: SelectInput, exclude?: ReadonlySet<string>): Lease | Promise<Lease> {
    if (this.closed) throw new NoServerAvailableError(this.name);
    if (exclude === undefined || exclude.size === 0) this.retryBudget.recordRequest();
    const r = this.tryLease(input, exclude);
    if (r === NONE) throw new NoServerAvailableError(this.name);
    if (r === FULL) return this.queue.wait(input, exclude);
    return r;
  }

  /** Stickiness first, then the policy among usable primaries, or backups when no primary is usable. */
  private tryLease(
    input: SelectInput,
    exclude: ReadonlySet<string> | undefined,
  ): PoolLease | typeof FULL | typeof NONE {
    let cookieId: string | undefined;
    if (this.sticky) {
      cookieId = this.sticky.read(input.headers);
      if (cookieId !== undefined) {
        const ep = this.byId.get(cookieId);
        if (ep?.usable && !exclude?.has(ep.id)) {
          // A pinned client waits for its own server rather than losing its session elsewhere.
          if (ep.full) return FULL;
          return this.lease(ep, undefined);
        }
      }
    }
    const now = Date.now();
    let usable = this.collect(this.primaries, exclude, now);
    if (usable === 0) usable = this.collect(this.backups, exclude, now);
    if (usable === 0) {
      usable = this.panic(exclude, now);
      if (usable === 0) return NONE;
    } else if (this.panicking) {
      this.panicking = false;
      this.logger.info('a server is usable again: panic mode ends');
    }
    if (this.scratch.length === 0) return FULL;
    const ep = this.selector.select(this.scratch, input);
    this.scratch.length = 0;
    return this.lease(ep, this.sticky && cookieId !== ep.id ? this.sticky.issue(ep.id) : undefined);
  }

  /**
   * Fills `scratch` with the non-full endpoints of `list` that may take requests and returns how many
   * may at all: the usable ones, or in panic mode those that no active check found down.
   */
  private collect(
    list: readonly Endpoint[],
    exclude: ReadonlySet<string> | undefined,
    now: number,
    panic = false,
  ): number {
    const scratch = this.scratch;
    scratch.length = 0;
    let usable = 0;
    for (const ep of list) {
      if (!(panic ? ep.panicUsable : ep.usable) || exclude?.has(ep.id)) continue;
      usable++;
      if (ep.full) continue;
      ep.effWeight = ep.effectiveWeight(now, this.config.slowStart);
      scratch.push(ep);
    }
    return usable;
  }

  /**
   * Panic mode (Envoy's panic threshold): when no server is usable and passive ejection is all that
   * stands between a server and traffic, balance across the ejected servers that no active check has
   * found down, primaries first. Ejection guesses from errors that may belong to one path or one
   * client; answering 503 for every request while such a server is up would be worse. A retry whose
   * exclusions alone leave nothing usable is not a panic: it is answered by a usable excluded server.
   */
  private panic(exclude: ReadonlySet<string> | undefined, now: number): number {
    if (exclude !== undefined && exclude.size > 0) {
      for (const ep of this.endpoints) if (ep.usable) return 0;
    }
    let usable = this.collect(this.primaries, exclude, now, true);
    if (usable === 0) usable = this.collect(this.backups, exclude, now, true);
    if (usable > 0 && !this.panicking) {
      this.panicking = true;
      this.logger.warn('no usable server: balancing across ejected servers that are not down (panic mode)');
    }
    return usable;
  }

  private lease(ep: Endpoint, setCookie: string | undefined): PoolLease {
    ep.take();
    return new PoolLease(ep, setCookie, this);
  }

  /** Called by a lease: frees the slot, feeds passive health and hands the slot to a waiter. */
  onRelease(ep: Endpoint, outcome: Outcome): void {
    if (ep.give(outcome) && ep.consecutiveFailures >= this.config.passive.failures) this.maybeEject(ep);
    if (this.queue.size > 0) this.drainQueue();
  }

  /** Serves waiters in order while slots are free; rejects those left with no usable server. */
  private drainQueue(): void {
    let w = this.queue.head;
    while (w) {
      const next = w.next;
      const r = this.tryLease(w.input, w.exclude);
      if (r === FULL) {
        // Later waiters see the same servers unless stickiness or exclusions make them differ.
        if (!this.sticky && (w.exclude === undefined || w.exclude.size === 0)) return;
      } else {
        this.queue.remove(w);
        if (r === NONE) w.reject(new NoServerAvailableError(this.name));
        else if (this.closed) {
          r.release('client-abort');
          w.reject(new NoServerAvailableError(this.name));
        } else w.resolve(r);
      }
      w = next;
    }
  }

  /**
   * Passive ejection, never beyond `maxEjectedPercent` of the servers. Servers out of rotation for any
   * reason (down by active checks, ejected, drained with weight 0) count against the cap, so ejection
   * cannot take the last servers that an active check still finds up.
   */
  private maybeEject(ep: Endpoint): void {
    if (ep.ejectedUntil !== 0 || this.closed) return;
    const passive = this.config.passive;
    let out = 1;
    for (const e of this.endpoints) if (e !== ep && !e.usable) out++;
    const cap = Math.floor((this.endpoints.length * passive.maxEjectedPercent) / 100);
    if (out > cap) {
      this.logger.debug({ server: ep.url, origin: ep.origin }, 'ejection skipped: cap reached');
      return;
    }
    ep.ejectedUntil = Date.now() + passive.ejectFor;
    ep.consecutiveFailures = 0;
    ep.publishUp();
    this.logger.warn(
      { server: ep.url, origin: ep.origin, id: ep.id, ejectFor: passive.ejectFor },
      'server ejected after consecutive failures',
    );
    const timer = setTimeout(() => this.unEject(ep), passive.ejectFor);
    timer.unref();
    this.ejectTimers.set(ep, timer);
    if (this.queue.size > 0) this.drainQueue();
  }

  private unEject(ep: Endpoint): void {
    this.ejectTimers.delete(ep);
    ep.ejectedUntil = 0;
    if (this.config.slowStart > 0) ep.slowStartSince = Date.now();
    ep.publishUp();
    this.logger.info({ server: ep.url, origin: ep.origin, id: ep.id }, 'server back from ejection');
    if (this.queue.size > 0) this.drainQueue();
  }

  private onCheck(ep: Endpoint, result: CheckResult): void {
    ep.lastCheck = result;
    const hc = this.config.healthCheck!;
    const wasUnknown = ep.checkState === 'unknown';
    const change = applyCheckResult(ep, result.ok, hc.rise, hc.fall);
    if (change === undefined) return;
    ep.publishUp();
    const fields = {
      server: ep.url,
      origin: ep.origin,
      id: ep.id,
      status: result.status,
      error: result.error,
    };
    if (change === 'down') {
      this.logger.warn(fields, 'server down');
    } else {
      if (!wasUnknown && this.config.slowStart > 0) ep.slowStartSince = Date.now();
      this.logger.info(fields, 'server up');
    }
    if (this.queue.size > 0) this.drainQueue();
  }

  /** Re-resolves host names; keeps the last good answer when a lookup fails. */
  async refreshDns(): Promise<void> {
    if (this.dnsRunning || this.closed) return;
    this.dnsRunning = true;
    try {
      let changed = false;
      for (const entry of this.entries) {
        if (!entry.parsed.needsLookup) continue;
        let addresses: string[];
        try {
          addresses = await this.resolve(entry.parsed.host);
          if (addresses.length === 0) throw new Error('empty answer');
        } catch (err) {
          this.logger.warn(
            { server: entry.def.url, err: (err as Error).message },
            'DNS lookup failed; keeping the last addresses',
          );
          continue;
        }
        if (this.closed) return;
        const before = entry.addresses;
        if (before.length === addresses.length && before.every((a) => addresses.includes(a))) continue;
        this.logger.info({ server: entry.def.url, before, after: addresses }, 'DNS answer changed');
        entry.addresses = addresses;
        changed = true;
      }
      if (changed) this.rebuildFromDns();
    } finally {
      this.dnsRunning = false;
    }
  }

  private rebuildFromDns(): void {
    const current = new Map<string, Endpoint>();
    for (const ep of this.endpoints) current.set(`${ep.url}|${ep.address}`, ep);
    const next: Endpoint[] = [];
    for (const entry of this.entries) {
      for (const address of entry.addresses) {
        next.push(current.get(`${entry.def.url}|${address}`) ?? this.makeEndpoint(entry, address, next));
      }
    }
    this.setEndpoints(next);
    if (this.queue.size > 0) this.drainQueue();
  }

  status(): UpstreamStatus {
    const now = Date.now();
    return {
      name: this.name,
      balance: this.config.balance,
      queued: this.queue.size,
      servers: this.endpoints.map((ep) => {
        const s: UpstreamStatus['servers'][number] = {
          id: ep.id,
          url: ep.url,
          origin: ep.origin,
          weight: ep.weight,
          backup: ep.backup,
          health: ep.health,
          active: ep.active,
          slowStartFactor: slowStartFactor(ep.slowStartSince, now, this.config.slowStart),
        };
        if (ep.lastCheck) s.lastCheck = { ...ep.lastCheck };
        return s;
      }),
    };
  }

  /** The current endpoints (for diagnostics and tests). */
  servers(): readonly Endpoint[] {
    return this.endpoints;
  }

  start(): void {
    if (this.started || this.closed) return;
    this.started = true;
    this.health?.start();
    if (this.entries.some((e) => e.parsed.needsLookup) && this.config.dns.refresh > 0) {
      this.dnsTimer = setInterval(() => void this.refreshDns(), this.config.dns.refresh);
      this.dnsTimer.unref();
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.dnsTimer) clearInterval(this.dnsTimer);
    for (const t of this.ejectTimers.values()) clearTimeout(t);
    this.ejectTimers.clear();
    this.health?.close();
    this.queue.rejectAll(() => new NoServerAvailableError(this.name));
    await Promise.all(this.endpoints.map((ep) => ep.closeWhenIdle()));
  }
}

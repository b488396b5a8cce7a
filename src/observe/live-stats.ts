/**
 * Live traffic figures for the operator dashboard, fed with one call per access-log entry.
 *
 * Everything is kept in fixed-size rings so that `observe` is O(1) and allocates nothing once a route,
 * a reason or an identity has been seen:
 * - per route, the last `windowSeconds` seconds in 1 s slots: requests, errors (5xx), refusals by a
 *   rate limit or quota (429), and a latency histogram of fixed buckets (bucket counts, never the
 *   latencies themselves, so the snapshots of several worker processes can be added up);
 * - decisions by reason over the last minutes, in 10 s slots;
 * - the identities with the most requests: a Space-Saving summary (Metwally et al., 2005) of bounded
 *   size, two generations of `topPeriodMs` each, so it shows who is busy now rather than since start.
 *
 * `snapshot()` returns plain JSON; `LiveStats.merge()` adds the snapshots of several processes up and
 * derives the figures (rates, percentiles) again, exactly as if one process had observed everything.
 */
import { GatehouseError } from '../errors.js';
import type { AccessEntry } from './log.js';

/**
 * Upper bounds (ms) of the latency buckets: 0.25 ms times powers of √2, up to about 46 s. A value in a
 * bucket is known to within a factor of √2 (a percentile read from the counts is as precise); the last
 * count of every histogram is the overflow bucket above the last bound.
 */
export const LATENCY_BOUNDS: readonly number[] = Object.freeze(
  Array.from({ length: 36 }, (_, i) => 0.25 * 2 ** (i / 2)),
);
/** Counts per histogram: one per bound and the overflow bucket. */
const BUCKETS = LATENCY_BOUNDS.length + 1;

/** Route name used for requests that matched no route. */
export const NO_ROUTE = '(no route)';
/** What routes, reasons or identities beyond the bounds are counted as. */
export const OTHER = '(other)';

/** Tuning of `LiveStats`; the defaults suit the dashboard. */
export interface LiveStatsOptions {
  /** Clock in ms since the epoch (tests inject one). */
  now?: () => number;
  /** Length of the per-route window in seconds (default 60). */
  windowSeconds?: number;
  /** Width of a decisions slot in seconds (default 10). */
  decisionSlotSeconds?: number;
  /** Number of decisions slots (default 30: five minutes). */
  decisionSlots?: number;
  /** Most routes tracked at once; others count as `(other)` (default 200). */
  maxRoutes?: number;
  /** Most distinct reasons per decisions slot; others count as `(other)` (default 64). */
  maxReasons?: number;
  /** Identities tracked by the top-K summary per generation (default 128). */
  topCapacity?: number;
  /** Identities listed in a snapshot (default 20). */
  topListed?: number;
  /** Length of one generation of the top-K summary in ms (default 60 000). */
  topPeriodMs?: number;
}

/** One route's figures over the window; every series is oldest first and ends at `LiveSnapshot.second`. */
export interface LiveRoute {
  route: string;
  /** Requests per second. */
  requests: number[];
  /** Answers with a 5xx status per second. */
  errors: number[];
  /** Requests refused by a rate limit or quota (429) per second. */
  limited: number[];
  /** Latency bucket counts per second (`LATENCY_BOUNDS`, then overflow), trailing zeros left out. */
  latency: number[][];
  /** Requests in the whole window. */
  total: number;
  /** Requests per second over the last 10 complete seconds. */
  rps: number;
  /** Share of 5xx answers in the window (0 to 1). */
  errorRate: number;
  /** Median latency in ms over the window (null without requests). */
  p50: number | null;
  /** 99th percentile latency in ms over the window (null without requests). */
  p99: number | null;
  /** 99th percentile latency of each second (null for a second without requests). */
  p99Series: Array<number | null>;
}

/** Requests decided with one reason, per decisions slot (oldest first, ending at `LiveDecisions.slot`). */
export interface LiveReason {
  /** The access decision's reason (`policy-allow:<rule>`, `no-allow-rule`, ...) or the error code. */
  reason: string;
  /** True when this reason refuses the request (everything but the allow reasons). */
  refused: boolean;
  counts: number[];
  total: number;
}

/** Decisions by reason over the last minutes. */
export interface LiveDecisions {
  slotSeconds: number;
  /** Slots in the window (every `counts` has this length). */
  slots: number;
  /** Number of the newest slot (epoch seconds divided by `slotSeconds`). */
  slot: number;
  /** Busiest first. */
  reasons: LiveReason[];
}

/** One of the busiest identities (approximate once more identities were seen than are tracked). */
export interface LiveIdentity {
  identity: string;
  requests: number;
  /** Of those, refused by the access decision or a limit (4xx from the gateway itself). */
  refused: number;
  /** Of those, refused by a rate limit or quota (429). */
  limited: number;
  /** How much `requests` may overstate the truth (Space-Saving's error bound; 0 when exact). */
  overstated: number;
}

/** Figures over every route. */
export interface LiveTotals {
  requests: number;
  errors: number;
  limited: number;
  rps: number;
  errorRate: number;
  p50: number | null;
  p99: number | null;
  /** Refused decisions in the decisions window. */
  refused: number;
}

/** What `LiveStats.snapshot()` returns: plain JSON, mergeable with `LiveStats.merge`. */
export interface LiveSnapshot {
  version: 1;
  /** When it was taken (ms since the epoch; the latest of merged snapshots). */
  takenAt: number;
  /** Epoch second of the last element of every per-second series (the current, incomplete second). */
  second: number;
  windowSeconds: number;
  /** Upper bounds of the latency buckets in ms (`LATENCY_BOUNDS`). */
  latencyBounds: number[];
  /** How many process snapshots this one adds up (1 for a single process). */
  processes: number;
  /** Busiest first. */
  routes: LiveRoute[];
  totals: LiveTotals;
  decisions: LiveDecisions;
  /** Busiest first, at most `identitiesListed`. */
  identities: LiveIdentity[];
  /** Most identities a snapshot lists (`LiveStatsOptions.topListed`). */
  identitiesListed: number;
}

/** Snapshots that cannot be merged (different window or buckets, or not a snapshot at all). */
export class LiveStatsError extends GatehouseError {
  constructor(message: string) {
    super('GH_LIVE_STATS', 500, message);
  }
}

/** True for a reason that lets the request through. */
export function isAllowReason(reason: string): boolean {
  return reason === 'public-route' || reason === 'authenticated' || reason.startsWith('policy-allow:');
}

/** The bucket of a latency in ms: the first whose bound is at least `ms` (the overflow one above all). */
export function latencyBucket(ms: number): number {
  if (!(ms > LATENCY_BOUNDS[0]!)) return 0;
  // log2 gives the bucket up to rounding; the two loops settle values that sit on a bound.
  let i = Math.min(BUCKETS - 1, Math.ceil(2 * Math.log2(ms / LATENCY_BOUNDS[0]!)));
  while (i > 0 && ms <= LATENCY_BOUNDS[i - 1]!) i--;
  while (i < BUCKETS - 1 && ms > LATENCY_BOUNDS[i]!) i++;
  return i;
}

/**
 * The `q` quantile (0 to 1) of a histogram of `LATENCY_BOUNDS` counts, interpolated linearly inside
 * its bucket as Prometheus' `histogram_quantile` does; null when the histogram is empty. The overflow
 * bucket answers its lower bound (the true value is larger).
 */
export function quantile(counts: ArrayLike<number>, q: number): number | null {
  let total = 0;
  for (let i = 0; i < counts.length; i++) total += counts[i]!;
  if (total === 0) return null;
  const rank = Math.max(1, Math.ceil(q * total));
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    const c = counts[i]!;
    if (c === 0) continue;
    if (seen + c >= rank) {
      const lower = i === 0 ? 0 : LATENCY_BOUNDS[i - 1]!;
      const upper = LATENCY_BOUNDS[i];
      if (upper === undefined) return lower;
      return round3(lower + ((upper - lower) * (rank - seen)) / c);
    }
    seen += c;
  }
  return round3(LATENCY_BOUNDS[LATENCY_BOUNDS.length - 1]!);
}

function round3(n: number): number {
  return Math.round(n * 1000) / 1000;
}

/** One route's rings: slot `s % window` holds epoch second `stamps[slot]`. */
class RouteRing {
  readonly stamps: Float64Array;
  readonly requests: Uint32Array;
  readonly errors: Uint32Array;
  readonly limited: Uint32Array;
  readonly hist: Uint32Array;
  /** The latest second observed, to find routes gone idle. */
  last = -1;

  constructor(window: number) {
    this.stamps = new Float64Array(window).fill(-1);
    this.requests = new Uint32Array(window);
    this.errors = new Uint32Array(window);
    this.limited = new Uint32Array(window);
    this.hist = new Uint32Array(window * BUCKETS);
  }

  /** The slot for `second`, emptied first when it still holds an older second. */
  slot(second: number, window: number): number {
    const slot = second % window;
    if (this.stamps[slot] !== second) {
      this.stamps[slot] = second;
      this.requests[slot] = 0;
      this.errors[slot] = 0;
      this.limited[slot] = 0;
      this.hist.fill(0, slot * BUCKETS, slot * BUCKETS + BUCKETS);
    }
    return slot;
  }
}

/** A tracked identity; the objects are reused when the summary replaces one. */
interface TopEntry {
  key: string;
  count: number;
  refused: number;
  limited: number;
  /** Space-Saving's overestimate: the count the entry inherited when it replaced another. */
  error: number;
}

/**
 * Space-Saving top-K with bounded memory. Entries are kept sorted by count (descending); as counts only
 * grow by one, an increment swaps the entry with the first one of its old count (found by binary
 * search), and the least counted entry, the one replaced by a new identity, is always the last.
 */
class TopSummary {
  readonly #capacity: number;
  readonly #entries: TopEntry[] = [];
  readonly #index = new Map<string, number>();

  constructor(capacity: number) {
    this.#capacity = capacity;
  }

  add(key: string, refused: boolean, limited: boolean): void {
    const entries = this.#entries;
    let i = this.#index.get(key);
    let e: TopEntry;
    if (i !== undefined) {
      e = entries[i]!;
    } else if (entries.length < this.#capacity) {
      e = { key, count: 0, refused: 0, limited: 0, error: 0 };
      i = entries.push(e) - 1;
      this.#index.set(key, i);
    } else {
      i = entries.length - 1;
      e = entries[i]!;
      this.#index.delete(e.key);
      this.#index.set(key, i);
      e.key = key;
      e.error = e.count;
      e.refused = 0;
      e.limited = 0;
    }
    const old = e.count;
    e.count = old + 1;
    if (refused) e.refused++;
    if (limited) e.limited++;
    // The first entry in [0, i] whose count is `old`: everything between it and i has that count too.
    let lo = 0;
    let hi = i;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (entries[mid]!.count > old) lo = mid + 1;
      else hi = mid;
    }
    if (lo !== i) {
      const other = entries[lo]!;
      entries[lo] = e;
      entries[i] = other;
      this.#index.set(e.key, lo);
      this.#index.set(other.key, i);
    }
  }

  entries(): readonly TopEntry[] {
    return this.#entries;
  }

  clear(): void {
    this.#entries.length = 0;
    this.#index.clear();
  }
}

/** A decisions slot: counts by reason for slot number `stamp`. */
interface ReasonSlot {
  stamp: number;
  counts: Map<string, number>;
}

/** The live figures of one process; see the module comment. */
export class LiveStats {
  readonly #now: () => number;
  readonly #window: number;
  readonly #slotSeconds: number;
  readonly #slots: number;
  readonly #maxRoutes: number;
  readonly #maxReasons: number;
  readonly #topListed: number;
  readonly #topPeriodMs: number;
  readonly #routes = new Map<string, RouteRing>();
  readonly #reasons: ReasonSlot[];
  #top: TopSummary;
  #previousTop: TopSummary;
  /** Period number (`now / topPeriodMs`) that `#top` counts; `#previousTop` counts the one before. */
  #topPeriod: number;

  constructor(options: LiveStatsOptions = {}) {
    this.#now = options.now ?? Date.now;
    this.#window = positive(options.windowSeconds, 60);
    this.#slotSeconds = positive(options.decisionSlotSeconds, 10);
    this.#slots = positive(options.decisionSlots, 30);
    this.#maxRoutes = Math.max(2, positive(options.maxRoutes, 200));
    this.#maxReasons = positive(options.maxReasons, 64);
    this.#topListed = positive(options.topListed, 20);
    this.#topPeriodMs = positive(options.topPeriodMs, 60_000);
    const capacity = Math.max(this.#topListed, positive(options.topCapacity, 128));
    this.#top = new TopSummary(capacity);
    this.#previousTop = new TopSummary(capacity);
    this.#topPeriod = Math.floor(this.#now() / this.#topPeriodMs);
    this.#reasons = Array.from({ length: this.#slots }, () => ({ stamp: -1, counts: new Map() }));
  }

  /** Counts one access-log entry; never throws into the data plane. */
  observe(entry: AccessEntry): void {
    const now = this.#now();
    const second = Math.floor(now / 1000);
    const status = entry.status;
    const limited = status === 429 && entry.limit === 'limited';

    const ring = this.#ring(entry.route ?? NO_ROUTE, second);
    const slot = ring.slot(second, this.#window);
    ring.last = second;
    ring.requests[slot]!++;
    if (status >= 500) ring.errors[slot]!++;
    if (limited) ring.limited[slot]!++;
    const duration = entry.duration;
    ring.hist[slot * BUCKETS + latencyBucket(Number.isFinite(duration) ? duration : 0)]!++;

    const reason = entry.reason ?? entry.error;
    let refused = false;
    if (reason !== undefined) {
      refused = !isAllowReason(reason);
      const n = Math.floor(second / this.#slotSeconds);
      const rs = this.#reasons[n % this.#slots]!;
      if (rs.stamp !== n) {
        rs.stamp = n;
        rs.counts.clear();
      }
      const key = rs.counts.has(reason) || rs.counts.size < this.#maxReasons ? reason : OTHER;
      rs.counts.set(key, (rs.counts.get(key) ?? 0) + 1);
    }

    if (entry.identity !== undefined) {
      this.#rotateTop(now);
      this.#top.add(entry.identity, refused, limited);
    }
  }

  /** The figures as plain JSON (see `LiveSnapshot`). */
  snapshot(): LiveSnapshot {
    const now = this.#now();
    const second = Math.floor(now / 1000);
    const w = this.#window;
    this.#rotateTop(now);

    const routes: RawRoute[] = [];
    for (const [name, ring] of this.#routes) {
      if (ring.last <= second - w) continue;
      const r: RawRoute = {
        route: name,
        requests: new Array<number>(w).fill(0),
        errors: new Array<number>(w).fill(0),
        limited: new Array<number>(w).fill(0),
        latency: Array.from({ length: w }, () => []),
      };
      for (let i = 0; i < w; i++) {
        const s = second - (w - 1) + i;
        const slot = s % w;
        if (s < 0 || ring.stamps[slot] !== s) continue;
        r.requests[i] = ring.requests[slot]!;
        r.errors[i] = ring.errors[slot]!;
        r.limited[i] = ring.limited[slot]!;
        r.latency[i] = trimZeros(ring.hist.subarray(slot * BUCKETS, slot * BUCKETS + BUCKETS));
      }
      routes.push(r);
    }

    const newest = Math.floor(second / this.#slotSeconds);
    const byReason = new Map<string, number[]>();
    for (let i = 0; i < this.#slots; i++) {
      const n = newest - (this.#slots - 1) + i;
      const rs = this.#reasons[((n % this.#slots) + this.#slots) % this.#slots]!;
      if (rs.stamp !== n) continue;
      for (const [reason, count] of rs.counts) {
        let counts = byReason.get(reason);
        if (counts === undefined) {
          counts = new Array<number>(this.#slots).fill(0);
          byReason.set(reason, counts);
        }
        counts[i] = count;
      }
    }

    const identities = new Map<string, LiveIdentity>();
    for (const summary of [this.#previousTop, this.#top]) addIdentities(identities, summary.entries());

    return derive({
      takenAt: now,
      second,
      windowSeconds: w,
      processes: 1,
      routes,
      slotSeconds: this.#slotSeconds,
      slots: this.#slots,
      slot: newest,
      reasons: byReason,
      identities,
      topListed: this.#topListed,
    });
  }

  /**
   * Adds up the snapshots of several processes into one, as if one process had observed everything.
   * Series are aligned on their seconds, so snapshots taken a moment apart still line up. Throws
   * `LiveStatsError` for snapshots of different shapes (window, buckets) or something else entirely.
   */
  static merge(snapshots: readonly LiveSnapshot[]): LiveSnapshot {
    const valid = snapshots.filter((s) => s !== undefined && s !== null);
    if (valid.length === 0) throw new LiveStatsError('no snapshots to merge');
    const first = valid[0]!;
    for (const s of valid) checkSnapshot(s, first);
    const w = first.windowSeconds;
    const second = Math.max(...valid.map((s) => s.second));
    const slotSeconds = first.decisions.slotSeconds;
    const slot = Math.max(...valid.map((s) => s.decisions.slot));
    const nSlots = first.decisions.slots;

    const routes = new Map<string, RawRoute>();
    const reasons = new Map<string, number[]>();
    const identities = new Map<string, LiveIdentity>();
    let processes = 0;
    let topListed = 0;
    for (const s of valid) {
      processes += s.processes;
      topListed = Math.max(topListed, s.identitiesListed);
      const shift = second - s.second;
      for (const r of s.routes) {
        let m = routes.get(r.route);
        if (m === undefined) {
          m = {
            route: r.route,
            requests: new Array<number>(w).fill(0),
            errors: new Array<number>(w).fill(0),
            limited: new Array<number>(w).fill(0),
            latency: Array.from({ length: w }, () => []),
          };
          routes.set(r.route, m);
        }
        // Element j of `r` is second s.second - (w-1) + j, which is element j - shift of the merge.
        for (let j = shift; j < w; j++) {
          const i = j - shift;
          m.requests[i]! += r.requests[j] ?? 0;
          m.errors[i]! += r.errors[j] ?? 0;
          m.limited[i]! += r.limited[j] ?? 0;
          m.latency[i] = addCounts(m.latency[i]!, r.latency[j] ?? []);
        }
      }
      const slotShift = slot - s.decisions.slot;
      for (const reason of s.decisions.reasons) {
        let counts = reasons.get(reason.reason);
        if (counts === undefined) {
          counts = new Array<number>(nSlots).fill(0);
          reasons.set(reason.reason, counts);
        }
        for (let j = slotShift; j < reason.counts.length; j++)
          counts[j - slotShift]! += reason.counts[j] ?? 0;
      }
      for (const id of s.identities) {
        const m = identities.get(id.identity);
        if (m === undefined) identities.set(id.identity, { ...id });
        else {
          m.requests += id.requests;
          m.refused += id.refused;
          m.limited += id.limited;
          m.overstated += id.overstated;
        }
      }
    }
    return derive({
      takenAt: Math.max(...valid.map((s) => s.takenAt)),
      second,
      windowSeconds: w,
      processes,
      routes: [...routes.values()],
      slotSeconds,
      slots: nSlots,
      slot,
      reasons,
      identities,
      topListed,
    });
  }

  /** The ring of `route`: a new one while fewer than `maxRoutes` are tracked (idle ones make room). */
  #ring(route: string, second: number): RouteRing {
    let ring = this.#routes.get(route);
    if (ring !== undefined) return ring;
    // The last place is kept for `(other)`.
    if (this.#routes.size >= this.#maxRoutes - 1) {
      // Rare (more routes than the bound): drop the routes idle for a whole window, else count as other.
      for (const [name, r] of this.#routes) if (r.last <= second - this.#window) this.#routes.delete(name);
      if (this.#routes.size >= this.#maxRoutes - 1) {
        ring = this.#routes.get(OTHER);
        if (ring !== undefined) return ring;
        route = OTHER;
      }
    }
    ring = new RouteRing(this.#window);
    this.#routes.set(route, ring);
    return ring;
  }

  /**
   * Moves to the period of `now`. Periods follow the clock, not the first request, so every process
   * sharing a clock counts the same periods and their snapshots add up.
   */
  #rotateTop(now: number): void {
    const period = Math.floor(now / this.#topPeriodMs);
    if (period === this.#topPeriod) return;
    const old = this.#previousTop;
    old.clear();
    // A summary older than the previous period says nothing about now.
    if (period !== this.#topPeriod + 1) this.#top.clear();
    this.#previousTop = this.#top;
    this.#top = old;
    this.#topPeriod = period;
  }
}

/** The process's live figures, fed by the gateway's access-log path and read by the admin listener. */
export const liveStats = new LiveStats();

/** One configuration reload as the dashboard lists it. */
export interface ReloadRecord {
  /** When it ended (ISO 8601). */
  at: string;
  result: 'success' | 'rejected';
  /** The generation running afterwards. */
  generation: number;
  /** What started it: `admin-api`, or `file-or-signal` (a watched file changed, or SIGHUP). */
  trigger: string;
  /** Why it was rejected: the first problems, or a pointer to the log. */
  error?: string;
}

/** The last reloads, newest first, bounded. */
export class ReloadHistory {
  readonly #max: number;
  readonly #records: ReloadRecord[] = [];

  constructor(max = 20) {
    this.#max = Math.max(1, max);
  }

  /** Adds a reload (the oldest beyond the bound is dropped). */
  record(r: ReloadRecord): void {
    this.#records.unshift(r);
    if (this.#records.length > this.#max) this.#records.length = this.#max;
  }

  /** The reloads kept, newest first. */
  list(): ReloadRecord[] {
    return this.#records.map((r) => ({ ...r }));
  }
}

/** The process's reload history (the admin listener records into it). */
export const reloadHistory = new ReloadHistory();

// ------------------------------------------------------------------------------------------------

interface RawRoute {
  route: string;
  requests: number[];
  errors: number[];
  limited: number[];
  latency: number[][];
}

interface RawSnapshot {
  takenAt: number;
  second: number;
  windowSeconds: number;
  processes: number;
  routes: RawRoute[];
  slotSeconds: number;
  slots: number;
  slot: number;
  reasons: Map<string, number[]>;
  identities: Map<string, LiveIdentity>;
  topListed: number;
}

/** Complete seconds that `rps` averages over. */
const RPS_SECONDS = 10;

/** Builds a snapshot from raw counts: rates, percentiles and orderings are computed here only. */
function derive(raw: RawSnapshot): LiveSnapshot {
  const w = raw.windowSeconds;
  const rpsFrom = Math.max(0, w - 1 - RPS_SECONDS);
  const all = new Array<number>(BUCKETS).fill(0);
  const totals: LiveTotals = {
    requests: 0,
    errors: 0,
    limited: 0,
    rps: 0,
    errorRate: 0,
    p50: null,
    p99: null,
    refused: 0,
  };
  const routes: LiveRoute[] = raw.routes.map((r) => {
    const hist = new Array<number>(BUCKETS).fill(0);
    let total = 0;
    let errors = 0;
    let recent = 0;
    const p99Series: Array<number | null> = [];
    for (let i = 0; i < w; i++) {
      const n = r.requests[i] ?? 0;
      total += n;
      errors += r.errors[i] ?? 0;
      totals.limited += r.limited[i] ?? 0;
      // The last element is the current second, still filling up: rates leave it out.
      if (i >= rpsFrom && i < w - 1) recent += n;
      const counts = r.latency[i] ?? [];
      for (let b = 0; b < counts.length; b++) hist[b]! += counts[b]!;
      p99Series.push(counts.length === 0 ? null : quantile(counts, 0.99));
    }
    for (let b = 0; b < BUCKETS; b++) all[b]! += hist[b]!;
    totals.requests += total;
    totals.errors += errors;
    totals.rps += recent / Math.min(RPS_SECONDS, w - 1 || 1);
    return {
      route: r.route,
      requests: r.requests,
      errors: r.errors,
      limited: r.limited,
      latency: r.latency,
      total,
      rps: round3(recent / Math.min(RPS_SECONDS, w - 1 || 1)),
      errorRate: total === 0 ? 0 : round3(errors / total),
      p50: quantile(hist, 0.5),
      p99: quantile(hist, 0.99),
      p99Series,
    };
  });
  routes.sort((a, b) => b.total - a.total || (a.route < b.route ? -1 : 1));
  totals.rps = round3(totals.rps);
  totals.errorRate = totals.requests === 0 ? 0 : round3(totals.errors / totals.requests);
  totals.p50 = quantile(all, 0.5);
  totals.p99 = quantile(all, 0.99);

  const reasons: LiveReason[] = [];
  for (const [reason, counts] of raw.reasons) {
    const total = counts.reduce((a, b) => a + b, 0);
    const refused = !isAllowReason(reason);
    if (refused) totals.refused += total;
    reasons.push({ reason, refused, counts, total });
  }
  reasons.sort((a, b) => b.total - a.total || (a.reason < b.reason ? -1 : 1));

  const identities = [...raw.identities.values()]
    .sort((a, b) => b.requests - a.requests || (a.identity < b.identity ? -1 : 1))
    .slice(0, raw.topListed);

  return {
    version: 1,
    takenAt: raw.takenAt,
    second: raw.second,
    windowSeconds: w,
    latencyBounds: [...LATENCY_BOUNDS],
    processes: raw.processes,
    routes,
    totals,
    decisions: { slotSeconds: raw.slotSeconds, slots: raw.slots, slot: raw.slot, reasons },
    identities,
    identitiesListed: raw.topListed,
  };
}

function addIdentities(into: Map<string, LiveIdentity>, entries: readonly TopEntry[]): void {
  for (const e of entries) {
    const m = into.get(e.key);
    if (m === undefined) {
      into.set(e.key, {
        identity: e.key,
        requests: e.count,
        refused: e.refused,
        limited: e.limited,
        overstated: e.error,
      });
    } else {
      m.requests += e.count;
      m.refused += e.refused;
      m.limited += e.limited;
      m.overstated += e.error;
    }
  }
}

function trimZeros(counts: Uint32Array): number[] {
  let end = counts.length;
  while (end > 0 && counts[end - 1] === 0) end--;
  return Array.from(counts.subarray(0, end));
}

function addCounts(a: number[], b: readonly number[]): number[] {
  if (b.length === 0) return a;
  const out = a.length >= b.length ? a : [...a, ...new Array<number>(b.length - a.length).fill(0)];
  for (let i = 0; i < b.length; i++) out[i]! += b[i]!;
  return out;
}

function positive(value: number | undefined, fallback: number): number {
  return value !== undefined && Number.isInteger(value) && value > 0 ? value : fallback;
}

function isCountArray(v: unknown, length?: number): v is number[] {
  return (
    Array.isArray(v) &&
    (length === undefined || v.length === length) &&
    v.every((n) => typeof n === 'number' && Number.isFinite(n) && n >= 0)
  );
}

/** Throws `LiveStatsError` unless `s` is a snapshot of the same shape as `first`. */
function checkSnapshot(s: LiveSnapshot, first: LiveSnapshot): void {
  const w = first.windowSeconds;
  const ok =
    typeof s === 'object' &&
    s.version === 1 &&
    s.windowSeconds === w &&
    Number.isInteger(s.second) &&
    Number.isFinite(s.takenAt) &&
    Number.isInteger(s.processes) &&
    Array.isArray(s.latencyBounds) &&
    s.latencyBounds.length === LATENCY_BOUNDS.length &&
    s.latencyBounds.every((b, i) => b === LATENCY_BOUNDS[i]) &&
    Array.isArray(s.routes) &&
    s.routes.every(
      (r) =>
        typeof r?.route === 'string' &&
        isCountArray(r.requests, w) &&
        isCountArray(r.errors, w) &&
        isCountArray(r.limited, w) &&
        Array.isArray(r.latency) &&
        r.latency.length === w &&
        r.latency.every((c) => isCountArray(c) && c.length <= BUCKETS),
    ) &&
    typeof s.decisions === 'object' &&
    s.decisions !== null &&
    s.decisions.slotSeconds === first.decisions.slotSeconds &&
    s.decisions.slots === first.decisions.slots &&
    Number.isInteger(s.decisions.slot) &&
    Array.isArray(s.decisions.reasons) &&
    s.decisions.reasons.every(
      (r) => typeof r?.reason === 'string' && isCountArray(r.counts, first.decisions.slots),
    ) &&
    Number.isInteger(s.identitiesListed) &&
    Array.isArray(s.identities) &&
    s.identities.every(
      (i) =>
        typeof i?.identity === 'string' &&
        Number.isFinite(i.requests) &&
        Number.isFinite(i.refused) &&
        Number.isFinite(i.limited) &&
        Number.isFinite(i.overstated),
    );
  if (!ok) {
    throw new LiveStatsError(
      'a live snapshot cannot be merged: not a version 1 snapshot with the same window and latency buckets',
    );
  }
}

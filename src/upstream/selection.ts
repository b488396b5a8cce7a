/**
 * Balancing policies, one small selector each. A selector only ever sees candidates that are usable and
 * not full, already narrowed to primaries (or to backups when no primary is usable; in panic mode, to
 * the ejected servers no active check found down), so each one is a pure choice among them. Effective
 * weights (slow start applied) are in `Endpoint.effWeight`.
 */
import type { UpstreamConfig } from '../config/schema.js';
import type { Endpoint } from './server.js';
import { getCookie } from './sticky.js';
import type { SelectInput } from './types.js';

/** Chooses one endpoint among non-empty `candidates`. */
export interface Selector {
  select(candidates: readonly Endpoint[], input: SelectInput): Endpoint;
}

/** Smooth weighted round-robin (nginx): interleaves servers in proportion to their weights. */
export class RoundRobinSelector implements Selector {
  select(candidates: readonly Endpoint[]): Endpoint {
    let total = 0;
    let best = candidates[0]!;
    let bestWeight = Number.NEGATIVE_INFINITY;
    for (const c of candidates) {
      c.swrrCurrent += c.effWeight;
      total += c.effWeight;
      if (c.swrrCurrent > bestWeight) {
        bestWeight = c.swrrCurrent;
        best = c;
      }
    }
    best.swrrCurrent -= total;
    return best;
  }
}

/** Fewest in-flight requests relative to weight; ties rotate so equal servers share the load. */
export class LeastConnSelector implements Selector {
  private offset = 0;
  select(candidates: readonly Endpoint[]): Endpoint {
    const n = candidates.length;
    const start = this.offset++ % n;
    let best = candidates[start]!;
    let bestScore = (best.active + 1) / best.effWeight;
    for (let i = 1; i < n; i++) {
      const c = candidates[(start + i) % n]!;
      const score = (c.active + 1) / c.effWeight;
      if (score < bestScore) {
        bestScore = score;
        best = c;
      }
    }
    return best;
  }
}

/** Power of two choices: two random candidates, the less loaded (relative to weight) wins. */
export class RandomTwoSelector implements Selector {
  select(candidates: readonly Endpoint[]): Endpoint {
    const n = candidates.length;
    if (n === 1) return candidates[0]!;
    const i = Math.floor(Math.random() * n);
    let j = Math.floor(Math.random() * (n - 1));
    if (j >= i) j++;
    const a = candidates[i]!;
    const b = candidates[j]!;
    return (a.active + 1) / a.effWeight <= (b.active + 1) / b.effWeight ? a : b;
  }
}

/** 32-bit FNV-1a of a string. */
export function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** murmur3 finalizer: spreads the bits of a 32-bit value. */
function mix32(x: number): number {
  let h = x >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Weighted rendezvous (highest random weight) hashing: each key scores every server and takes the
 * best available one, so adding or removing a server only moves the keys that server wins or loses.
 * The configured weight is used (not the slow-start weight) so keys do not move during a ramp.
 */
export class HashSelector implements Selector {
  private readonly fallback = new RoundRobinSelector();
  constructor(
    private readonly source: 'ip' | 'header' | 'cookie',
    private readonly name: string | undefined,
  ) {}

  select(candidates: readonly Endpoint[], input: SelectInput): Endpoint {
    const key = this.key(input);
    if (key === undefined) return this.fallback.select(candidates);
    return pickByHash(candidates, fnv1a(key));
  }

  private key(input: SelectInput): string | undefined {
    if (this.source === 'ip') return input.clientIp || undefined;
    if (this.name === undefined) return undefined;
    if (this.source === 'header') {
      const v = input.headers[this.name.toLowerCase()];
      return (Array.isArray(v) ? v[0] : v) || undefined;
    }
    return getCookie(input.headers.cookie, this.name);
  }
}

/** The candidate with the highest weighted rendezvous score for `keyHash`. */
export function pickByHash(candidates: readonly Endpoint[], keyHash: number): Endpoint {
  let best = candidates[0]!;
  let bestScore = Number.NEGATIVE_INFINITY;
  for (const c of candidates) {
    // u in (0, 1); score = w / -ln(u) gives each server a share proportional to its weight.
    const u = (mix32(keyHash ^ c.hashSeed) + 0.5) / 4294967296;
    const score = c.weight / -Math.log(u);
    if (score > bestScore) {
      bestScore = score;
      best = c;
    }
  }
  return best;
}

/** Builds the selector for an upstream's `balance` setting. */
export function createSelector(def: UpstreamConfig): Selector {
  switch (def.balance) {
    case 'least-conn':
      return new LeastConnSelector();
    case 'random-two':
      return new RandomTwoSelector();
    case 'hash':
      return new HashSelector(def.hash?.source ?? 'ip', def.hash?.name);
    default:
      return new RoundRobinSelector();
  }
}

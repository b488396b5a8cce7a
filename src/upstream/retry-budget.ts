/**
 * Retry budget (Finagle-style): retries may add at most `ratio` of the recent requests, plus a floor of
 * `minPerSecond`, over a sliding window of one-second buckets, so a failing upstream never sees its
 * load multiplied by retries.
 */
import type { RetryBudget } from './types.js';

const BUCKETS = 10;
const BUCKET_MS = 1000;

/** Sliding-window retry budget; `now` is injectable so tests can freeze time. */
export class SlidingRetryBudget implements RetryBudget {
  private readonly requests = new Float64Array(BUCKETS);
  private readonly retries = new Float64Array(BUCKETS);
  private current: number;

  constructor(
    private readonly ratio: number,
    private readonly minPerSecond = 10,
    private readonly now: () => number = Date.now,
  ) {
    this.current = Math.floor(this.now() / BUCKET_MS);
  }

  /** Counts one request (first attempt) towards the budget. */
  recordRequest(): void {
    this.advance();
    this.requests[this.current % BUCKETS]!++;
  }

  tryAcquire(): boolean {
    this.advance();
    let requests = 0;
    let retries = 0;
    for (let i = 0; i < BUCKETS; i++) {
      requests += this.requests[i]!;
      retries += this.retries[i]!;
    }
    const allowed = this.ratio * requests + this.minPerSecond * BUCKETS;
    if (retries + 1 > allowed) return false;
    this.retries[this.current % BUCKETS]!++;
    return true;
  }

  /** Zeroes buckets that slid out of the window since the last call. */
  private advance(): void {
    const bucket = Math.floor(this.now() / BUCKET_MS);
    if (bucket === this.current) return;
    const steps = Math.min(bucket - this.current, BUCKETS);
    for (let i = 1; i <= steps; i++) {
      const idx = (this.current + i) % BUCKETS;
      this.requests[idx] = 0;
      this.retries[idx] = 0;
    }
    this.current = bucket;
  }
}

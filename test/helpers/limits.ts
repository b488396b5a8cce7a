/**
 * Helpers for the rate-limit and quota tests that run real gateways: a time zone whose `1h` quota
 * windows do not turn while a test runs, load over many keep-alive connections that records every
 * answer, and the admin quota API.
 */
import { performance } from 'node:perf_hooks';
import { Client } from 'undici';

/**
 * `UTC`, or when a full UTC hour is less than `marginMs` away (either side) `Asia/Kolkata` (UTC+05:30),
 * whose hours turn at half past: a `1h` quota in the zone returned keeps one window for `marginMs`.
 */
export function zoneAwayFromHourTurn(now = Date.now(), marginMs = 10 * 60_000): string {
  const intoHour = now % 3_600_000;
  return intoHour >= marginMs && intoHour <= 3_600_000 - marginMs ? 'UTC' : 'Asia/Kolkata';
}

/** One answer as the load saw it. Times are `performance.now()` of this process. */
export interface Answer {
  /** Index of the origin (instance) the request went to. */
  readonly target: number;
  readonly sentAt: number;
  readonly answeredAt: number;
  /** 0 when the request failed without an answer (see `error`). */
  readonly status: number;
  readonly retryAfter: string | undefined;
  readonly rateLimit: string | undefined;
  /** The `code` of a JSON error body. */
  readonly code: string | undefined;
  readonly error: string | undefined;
}

/** Keep-alive connections, each a `Client` of its own (one socket), spread round-robin over origins. */
export class Lanes {
  readonly #clients: Array<{ client: Client; target: number }>;

  constructor(origins: readonly string[], connections: number) {
    this.#clients = Array.from({ length: connections }, (_, i) => {
      const target = i % origins.length;
      return {
        target,
        client: new Client(origins[target]!, {
          pipelining: 1,
          keepAliveTimeout: 30_000,
          headersTimeout: 10_000,
          bodyTimeout: 10_000,
        }),
      };
    });
  }

  /** Number of connections. */
  get size(): number {
    return this.#clients.length;
  }

  /** One GET on connection `lane` (modulo the number of connections). */
  async get(lane: number, path: string, headers: Record<string, string>): Promise<Answer> {
    const { client, target } = this.#clients[lane % this.#clients.length]!;
    const sentAt = performance.now();
    try {
      const res = await client.request({ method: 'GET', path, headers });
      const text = await res.body.text();
      let code: string | undefined;
      if (res.statusCode !== 200) {
        try {
          code = (JSON.parse(text) as { code?: string }).code;
        } catch {
          code = `(not JSON: ${text.slice(0, 80)})`;
        }
      }
      const one = (h: string | string[] | undefined) => (Array.isArray(h) ? h.join(', ') : h);
      return {
        target,
        sentAt,
        answeredAt: performance.now(),
        status: res.statusCode,
        retryAfter: one(res.headers['retry-after']),
        rateLimit: one(res.headers.ratelimit),
        code,
        error: undefined,
      };
    } catch (err) {
      return {
        target,
        sentAt,
        answeredAt: performance.now(),
        status: 0,
        retryAfter: undefined,
        rateLimit: undefined,
        code: undefined,
        error: err instanceof Error ? `${err.name}: ${err.message}` : String(err),
      };
    }
  }

  /**
   * Every connection sends requests back to back (or `pauseMs` apart) until `untilMs`
   * (`performance.now()`); resolves with every answer.
   */
  async flood(
    path: string,
    headers: Record<string, string>,
    untilMs: number,
    pauseMs = 0,
  ): Promise<Answer[]> {
    const answers: Answer[] = [];
    await Promise.all(
      this.#clients.map(async (_, lane) => {
        while (performance.now() < untilMs) {
          answers.push(await this.get(lane, path, headers));
          if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
        }
      }),
    );
    return answers;
  }

  /** One request on every connection (opening it), so that a measurement does not count connecting. */
  async open(path: string): Promise<void> {
    const answers = await Promise.all(this.#clients.map((_, lane) => this.get(lane, path, {})));
    const failed = answers.filter((a) => a.status !== 200);
    if (failed.length > 0) throw new Error(`opening connections: ${JSON.stringify(tally(failed))}`);
  }

  /** `count` requests at once, spread round-robin over the connections. */
  burst(count: number, path: string, headers: Record<string, string>): Promise<Answer[]> {
    return Promise.all(Array.from({ length: count }, (_, i) => this.get(i, path, headers)));
  }

  async close(): Promise<void> {
    await Promise.all(this.#clients.map(({ client }) => client.destroy().catch(() => undefined)));
  }
}

/** Counts of answers by status (and error), for failure messages. */
export function tally(answers: readonly Answer[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const a of answers) {
    const k = a.status === 0 ? `error ${a.error}` : `${a.status}${a.code ? ` ${a.code}` : ''}`;
    out[k] = (out[k] ?? 0) + 1;
  }
  return out;
}

/** One quota's usage as `GET /api/v1/quotas?key=` shows it. */
export interface QuotaUsageView {
  quota: string;
  key: string;
  used: number;
  limit: number;
  remaining: number;
  resetAt: string;
}

/** The usage of quota `name` for `key` from an admin listener at `admin` (`host:port`, loopback, no token). */
export async function quotaUsage(admin: string, key: string, name: string): Promise<QuotaUsageView> {
  const res = await fetch(`http://${admin}/api/v1/quotas?key=${encodeURIComponent(key)}`, {
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`GET /api/v1/quotas on ${admin}: ${res.status} ${text}`);
  const found = (JSON.parse(text) as { quotas: QuotaUsageView[] }).quotas.find((q) => q.quota === name);
  if (found === undefined) throw new Error(`no quota ${name} in ${text}`);
  return found;
}

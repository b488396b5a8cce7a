/** Parsing of human-readable durations (`500ms`, `30s`, `5m`, `12h`, `7d`) and sizes (`512KiB`, `10MB`). */

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION_RE = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;

/**
 * Returns milliseconds, or undefined when the text is not a duration or its value is not a safe integer
 * (beyond 2^53 ms a duration is no longer exact, and `Infinity` would pass every comparison).
 */
export function parseDuration(text: string): number | undefined {
  const m = DURATION_RE.exec(text.trim());
  if (!m) return undefined;
  const ms = Math.round(Number(m[1]) * (DURATION_UNITS[m[2]!] ?? Number.NaN));
  return Number.isSafeInteger(ms) ? ms : undefined;
}

const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1000,
  mb: 1000 ** 2,
  gb: 1000 ** 3,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  k: 1024,
  m: 1024 ** 2,
  g: 1024 ** 3,
};
const SIZE_RE = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i;

/**
 * Returns bytes, or undefined when the text is not a size. A bare number is bytes. A value beyond 2^53
 * bytes is refused: it is not exact, and `Infinity` (a long digit string) breaks the servers it is given to.
 */
export function parseSize(text: string): number | undefined {
  const m = SIZE_RE.exec(text.trim());
  if (!m) return undefined;
  const unit = (m[2] ?? '').toLowerCase() || 'b';
  const factor = SIZE_UNITS[unit];
  if (factor === undefined) return undefined;
  const bytes = Math.floor(Number(m[1]) * factor);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

/** Parses `600/min`, `10/s`, `1000/h` into events per second; undefined when not a finite rate. */
export function parseRate(text: string): number | undefined {
  const r = parseRateParts(text);
  if (r === undefined) return undefined;
  const rate = r.count / (r.windowMs / 1000);
  return Number.isFinite(rate) ? rate : undefined;
}

/** A rate as written: `count` events per `windowMs` (`600/min` is 600 per 60 000 ms). */
export interface RateParts {
  readonly count: number;
  readonly windowMs: number;
}

/** Parses `600/min`, `10/s`, `1000/h`, `5000/d` into its count and window; undefined when unusable. */
export function parseRateParts(text: string): RateParts | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*\/\s*(s|sec|second|m|min|minute|h|hour|d|day)$/.exec(text.trim());
  if (!m) return undefined;
  const unit = m[2]!;
  const windowMs = unit.startsWith('s')
    ? 1000
    : unit.startsWith('m')
      ? 60_000
      : unit.startsWith('h')
        ? 3_600_000
        : 86_400_000;
  const count = Number(m[1]);
  return Number.isFinite(count) ? { count, windowMs } : undefined;
}

/** Formats milliseconds with the largest unit that divides them (30000 → 30s). */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms !== 0 && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

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
  const m = /^(\d+(?:\.\d+)?)\s*\/\s*(s|sec|second|m|min|minute|h|hour)$/.exec(text.trim());
  if (!m) return undefined;
  const per = m[2]!.startsWith('s') ? 1 : m[2]!.startsWith('m') ? 60 : 3600;
  const rate = Number(m[1]) / per;
  return Number.isFinite(rate) ? rate : undefined;
}

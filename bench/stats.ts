/**
 * Figures of the bench over several rounds: medians, and ratios taken round by round (paired), which
 * cancel most of the drift of a shared machine's speed between the start and the end of a run.
 */

/** One measurement: a proxy's CPU per request in one round and scenario. */
export interface Measurement {
  proxy: string;
  scenario: string;
  round: number;
  cpuUsPerRequest: number | undefined;
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** `n` rounded to `digits` decimal places. */
export function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/** A ratio of CPU per request over the rounds: the median, and the lowest and highest round. */
export interface PairedRatio {
  median: number;
  min: number;
  max: number;
  rounds: number;
}

/**
 * `proxy`'s CPU per request divided by `base`'s, taken round by round (both measured in the same round
 * and scenario, seconds apart) and summarized by the median. Undefined when no round has both.
 */
export function pairedRatio(
  rows: readonly Measurement[],
  scenario: string,
  proxy: string,
  base: string,
): PairedRatio | undefined {
  const ratios: number[] = [];
  for (const a of rows) {
    if (a.proxy !== proxy || a.scenario !== scenario || a.cpuUsPerRequest === undefined) continue;
    const b = rows.find((x) => x.proxy === base && x.scenario === scenario && x.round === a.round);
    if (b?.cpuUsPerRequest === undefined || b.cpuUsPerRequest === 0) continue;
    ratios.push(a.cpuUsPerRequest / b.cpuUsPerRequest);
  }
  if (ratios.length === 0) return undefined;
  return {
    median: round(median(ratios), 2),
    min: round(Math.min(...ratios), 2),
    max: round(Math.max(...ratios), 2),
    rounds: ratios.length,
  };
}

/**
 * The order of `items` in round `round`: a shuffle seeded by the round (mulberry32 + Fisher–Yates), so
 * every run uses the same orders and, unlike a rotation, each item gets different neighbours.
 */
export function roundOrder<T>(items: readonly T[], round: number): T[] {
  let seed = (round + 1) * 0x9e3779b9;
  const random = () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

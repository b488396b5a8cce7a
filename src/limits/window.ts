/**
 * Quota windows: fixed periods a budget is counted over, aligned to the wall clock of the quota's time
 * zone. A window of whole days (`1d`, `30d`) runs from a local midnight to another, counted in days from
 * 1970-01-01 there (a day across a change of daylight saving time has 23 or 25 hours); a shorter one
 * (`1h`) starts at a multiple of its length in the zone's local time; `month` runs from the first of a
 * calendar month at 00:00 to the first of the next.
 * The current window is computed once and reused until it ends, so the hot path reads two numbers.
 */

/** One window of a quota: [start, end) in ms since the epoch. */
export interface WindowSpan {
  readonly start: number;
  readonly end: number;
}

const DAY = 86_400_000;

const formats = new Map<string, Intl.DateTimeFormat>();

function formatOf(zone: string): Intl.DateTimeFormat {
  let f = formats.get(zone);
  if (f === undefined) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone: zone,
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
      hourCycle: 'h23',
    });
    formats.set(zone, f);
  }
  return f;
}

/** True when the runtime knows the IANA time zone `zone`. */
export function knownTimeZone(zone: string): boolean {
  try {
    formatOf(zone);
    return true;
  } catch {
    return false;
  }
}

interface WallClock {
  year: number;
  month: number;
  day: number;
  offset: number;
}

/** The wall-clock date in `zone` at `t`, and the zone's offset from UTC then (ms). */
function wallClock(zone: string, t: number): WallClock {
  const p: Record<string, number> = {};
  for (const part of formatOf(zone).formatToParts(t)) {
    if (part.type !== 'literal') p[part.type] = Number(part.value);
  }
  const second = Math.floor(t / 1000) * 1000;
  const local = Date.UTC(p.year!, p.month! - 1, p.day!, p.hour! % 24, p.minute!, p.second!);
  return { year: p.year!, month: p.month!, day: p.day!, offset: local - second };
}

/** The instant of 00:00 on `year-month-day` (month 1..12, may overflow into the next year) in `zone`. */
function zonedMidnight(zone: string, year: number, month: number, day: number): number {
  const guess = Date.UTC(year, month - 1, day);
  const first = guess - wallClock(zone, guess).offset;
  // Across a change of offset (daylight saving time), the offset at the result is the one that counts.
  const second = guess - wallClock(zone, first).offset;
  return second;
}

/** The window of a quota (`window` in ms, or `month`) that contains `now`. */
export function windowAt(window: number | 'month', zone: string, now: number): WindowSpan {
  const clock = wallClock(zone, now);
  if (window === 'month') {
    return {
      start: zonedMidnight(zone, clock.year, clock.month, 1),
      end: zonedMidnight(zone, clock.year, clock.month + 1, 1),
    };
  }
  if (window % DAY === 0) {
    // Whole days run from one local midnight to another, however long the days between (23 or 25
    // hours across a change of daylight saving time).
    const days = window / DAY;
    const first = Math.floor(Date.UTC(clock.year, clock.month - 1, clock.day) / DAY / days) * days;
    const from = new Date(first * DAY);
    const y = from.getUTCFullYear();
    const m = from.getUTCMonth() + 1;
    const d = from.getUTCDate();
    return { start: zonedMidnight(zone, y, m, d), end: zonedMidnight(zone, y, m, d + days) };
  }
  const local = now + clock.offset;
  const start = Math.floor(local / window) * window - clock.offset;
  return { start, end: start + window };
}

/** The current window of one quota, recomputed only when it has ended (or the clock went back). */
export class WindowClock {
  #span: WindowSpan = { start: 0, end: 0 };
  constructor(
    readonly window: number | 'month',
    readonly zone: string,
  ) {}

  at(now: number): WindowSpan {
    const s = this.#span;
    if (now >= s.start && now < s.end) return s;
    this.#span = windowAt(this.window, this.zone, now);
    return this.#span;
  }
}

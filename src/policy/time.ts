/**
 * Time-of-day and weekday windows for policy rules (`time: { days, from, to, timezone }`). Wall-clock
 * time is read in the rule's IANA time zone through one cached Intl formatter per zone, and at most once
 * per minute per zone, so evaluating a window on the hot path does not allocate.
 */

/** A rule's `time` block as written in the configuration. */
export interface TimeSpec {
  readonly days?: readonly string[] | undefined;
  readonly from?: string | undefined;
  readonly to?: string | undefined;
  readonly timezone?: string | undefined;
}

/** A compiled time window. */
export interface TimeWindow {
  /** True when `now` (ms since the epoch) falls inside the window. */
  matches(now: number): boolean;
  /** Short text such as `mon,tue 09:00-17:00 Europe/Paris`. */
  readonly summary: string;
}

const DAY_NAMES = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] as const;
const DAY_INDEX: Readonly<Record<string, number>> = {
  sun: 0,
  mon: 1,
  tue: 2,
  wed: 3,
  thu: 4,
  fri: 5,
  sat: 6,
};
// Intl's short English weekday names.
const INTL_DAY: Readonly<Record<string, number>> = {
  Sun: 0,
  Mon: 1,
  Tue: 2,
  Wed: 3,
  Thu: 4,
  Fri: 5,
  Sat: 6,
};

const MINUTE = 60_000;

/** Wall-clock weekday and minute of the day in one time zone; recomputed at most once per minute. */
class ZoneClock {
  day = 0;
  minute = 0;
  #bucket = Number.NaN;
  readonly #format: Intl.DateTimeFormat | undefined;

  constructor(format: Intl.DateTimeFormat | undefined) {
    this.#format = format;
  }

  update(now: number): void {
    const bucket = Math.floor(now / MINUTE);
    if (bucket === this.#bucket) return;
    this.#bucket = bucket;
    if (this.#format === undefined) {
      // UTC: 1970-01-01 was a Thursday (index 4).
      const days = Math.floor(bucket / 1440);
      this.day = (((days + 4) % 7) + 7) % 7;
      this.minute = ((bucket % 1440) + 1440) % 1440;
      return;
    }
    let hour = 0;
    let minute = 0;
    for (const part of this.#format.formatToParts(bucket * MINUTE)) {
      if (part.type === 'weekday') this.day = INTL_DAY[part.value] ?? 0;
      else if (part.type === 'hour') hour = Number(part.value) % 24;
      else if (part.type === 'minute') minute = Number(part.value);
    }
    this.minute = hour * 60 + minute;
  }
}

// One clock per zone for the whole process: Intl formatters are costly to build and never change.
const clocks = new Map<string, ZoneClock>();
// Zone names as written (`europe/paris`, `Europe/Paris`) to their clock; unknown names are not cached.
const byName = new Map<string, { clock: ZoneClock; zone: string }>();
const UTC_CLOCK = new ZoneClock(undefined);

/**
 * The clock of an IANA time zone (`UTC` when undefined). Throws RangeError for a zone the runtime does
 * not know.
 */
function clockFor(timezone: string | undefined): { clock: ZoneClock; zone: string } {
  if (timezone === undefined) return { clock: UTC_CLOCK, zone: 'UTC' };
  const known = byName.get(timezone);
  if (known !== undefined) return known;
  const format = new Intl.DateTimeFormat('en-US', {
    timeZone: timezone,
    weekday: 'short',
    hour: '2-digit',
    minute: '2-digit',
    hourCycle: 'h23',
  });
  const zone = format.resolvedOptions().timeZone;
  let clock = zone === 'UTC' || zone === 'Etc/UTC' ? UTC_CLOCK : clocks.get(zone);
  if (clock === undefined) {
    clock = new ZoneClock(format);
    clocks.set(zone, clock);
  }
  const resolved = { clock, zone };
  byName.set(timezone, resolved);
  return resolved;
}

function parseClock(text: string, allow24: boolean): number | undefined {
  const m = /^(\d{2}):(\d{2})$/.exec(text);
  if (m === null) return undefined;
  const h = Number(m[1]);
  const min = Number(m[2]);
  if (min > 59) return undefined;
  if (h === 24 && min === 0 && allow24) return 1440;
  return h > 23 ? undefined : h * 60 + min;
}

/**
 * Compiles a `time` block. `from` is inclusive and `to` exclusive (`to: 24:00` is the end of the day);
 * `from` later than `to` spans midnight, and the part after midnight belongs to the day the window
 * opened on (`days: [fri], from: 22:00, to: 02:00` includes Saturday 01:00). Problems are reported
 * through `problem(key, message)`; the result is undefined when there were any.
 */
export function compileTimeWindow(
  spec: TimeSpec,
  problem: (key: string, message: string) => void,
): TimeWindow | undefined {
  let ok = true;
  let mask = 0;
  for (const d of spec.days ?? []) {
    const i = DAY_INDEX[d];
    if (i === undefined) {
      problem('days', `unknown day "${d}" (expected ${DAY_NAMES.join(', ')})`);
      ok = false;
    } else mask |= 1 << i;
  }
  const days = spec.days === undefined ? 0x7f : mask;
  const from = spec.from === undefined ? undefined : parseClock(spec.from, false);
  if (spec.from !== undefined && from === undefined) {
    problem('from', `invalid time "${spec.from}" (expected HH:MM from 00:00 to 23:59)`);
    ok = false;
  }
  const to = spec.to === undefined ? undefined : parseClock(spec.to, true);
  if (spec.to !== undefined && to === undefined) {
    problem('to', `invalid time "${spec.to}" (expected HH:MM from 00:00 to 24:00)`);
    ok = false;
  }
  if (from !== undefined && to !== undefined && from === to) {
    problem('to', 'must differ from "from" (leave both out for the whole day)');
    ok = false;
  }
  let resolved: { clock: ZoneClock; zone: string } | undefined;
  try {
    resolved = clockFor(spec.timezone);
  } catch {
    problem('timezone', `unknown time zone "${spec.timezone}" (expected an IANA name such as Europe/Paris)`);
    ok = false;
  }
  if (!ok || resolved === undefined) return undefined;
  const { clock, zone } = resolved;
  const spansMidnight = from !== undefined && to !== undefined && from > to;
  const dayText =
    spec.days === undefined ? 'every day' : DAY_NAMES.filter((_, i) => mask & (1 << i)).join(',');
  const hours =
    from === undefined && to === undefined ? 'all day' : `${spec.from ?? '00:00'}-${spec.to ?? '24:00'}`;
  const summary = `${dayText} ${hours} ${zone}`;

  const matches = (now: number): boolean => {
    clock.update(now);
    const m = clock.minute;
    const day = clock.day;
    if (spansMidnight) {
      if (m >= from!) return (days & (1 << day)) !== 0;
      if (m < to!) return (days & (1 << ((day + 6) % 7))) !== 0;
      return false;
    }
    if (from !== undefined && m < from) return false;
    if (to !== undefined && m >= to) return false;
    return (days & (1 << day)) !== 0;
  };
  return { matches, summary };
}

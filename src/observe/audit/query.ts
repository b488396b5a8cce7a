/**
 * Answering an auditor's question from audit files: which events match who, when, which route, what
 * outcome. Built for large trails: the files are read in large blocks, and the most selective filter is
 * first looked for in the raw bytes of a whole block (one native search), so only the lines that hold
 * it are cut out and parsed.
 */
import { readWholeLines } from './lines.js';

/** What to look for; every filter given must match. */
export interface QueryFilter {
  /** The subject (`identity`, `subject`) or the `email` of the caller. */
  who?: string;
  /** Events at or after this time (ms since the epoch). */
  since?: number;
  /** Events at or before this time (ms since the epoch). */
  until?: number;
  /** The route name. */
  route?: string;
  /** Only refused access decisions (`access.refused`). */
  refused?: boolean;
  /** The event name. */
  event?: string;
  /** The event code. */
  code?: string;
}

/** A matching event: its line as written (without `\n`) and its fields. */
export interface QueryMatch {
  file: string;
  line: string;
  record: Record<string, unknown>;
}

/** How much was read and found. */
export interface QueryStats {
  bytes: number;
  matched: number;
}

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const TIME_LEAD = Buffer.from('"time":"');

/** The literal bytes every matching line must hold, for the most selective filter given. */
function needleOf(f: QueryFilter): Buffer | undefined {
  if (f.who !== undefined) return Buffer.from(JSON.stringify(f.who));
  if (f.route !== undefined) return Buffer.from(`"route":${JSON.stringify(f.route)}`);
  if (f.code !== undefined) return Buffer.from(`"code":${JSON.stringify(f.code)}`);
  if (f.refused) return Buffer.from('"code":"access.refused"');
  if (f.event !== undefined) return Buffer.from(`"event":${JSON.stringify(f.event)}`);
  return undefined;
}

/** Whether a parsed event matches every filter. */
export function matches(r: Record<string, unknown>, f: QueryFilter): boolean {
  if (f.who !== undefined && r.identity !== f.who && r.email !== f.who && r.subject !== f.who) return false;
  if (f.route !== undefined && r.route !== f.route) return false;
  if (f.refused && !(r.event === 'access' && r.code === 'access.refused')) return false;
  if (f.event !== undefined && r.event !== f.event) return false;
  if (f.code !== undefined && r.code !== f.code) return false;
  if (f.since !== undefined || f.until !== undefined) {
    const t = typeof r.time === 'string' ? Date.parse(r.time) : Number.NaN;
    if (Number.isNaN(t)) return false;
    if (f.since !== undefined && t < f.since) return false;
    if (f.until !== undefined && t > f.until) return false;
  }
  return true;
}

/**
 * Calls `onMatch` for each event of `files` (in the order given, lines in file order) that matches
 * `filter`. Lines that are not JSON objects are skipped.
 */
export async function queryFiles(
  files: readonly string[],
  filter: QueryFilter,
  onMatch: (m: QueryMatch) => void,
): Promise<QueryStats> {
  const needle = needleOf(filter);
  // With no literal to look for but a time range, the time is compared as bytes before parsing
  // (the trail writes ISO UTC times, which sort as text).
  const sinceText = filter.since !== undefined ? new Date(filter.since).toISOString() : undefined;
  const untilText = filter.until !== undefined ? new Date(filter.until).toISOString() : undefined;
  const stats: QueryStats = { bytes: 0, matched: 0 };

  const consider = (file: string, buf: Buffer, start: number, end: number): void => {
    if (needle === undefined && (sinceText !== undefined || untilText !== undefined)) {
      const t = timeText(buf, start, end);
      if (
        t !== undefined &&
        ((sinceText !== undefined && t < sinceText) || (untilText !== undefined && t > untilText))
      )
        return;
    }
    const line = buf.toString('utf8', start, end);
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch {
      return;
    }
    if (record === null || typeof record !== 'object' || Array.isArray(record)) return;
    if (!matches(record as Record<string, unknown>, filter)) return;
    stats.matched++;
    onMatch({ file, line, record: record as Record<string, unknown> });
  };

  for (const file of files) {
    const tail = await readWholeLines(file, (buf, end) => {
      stats.bytes += end;
      if (needle === undefined) {
        for (let pos = 0; pos < end; ) {
          const nl = buf.indexOf(0x0a, pos);
          consider(file, buf, pos, nl);
          pos = nl + 1;
        }
        return;
      }
      // Jump from one occurrence of the needle to the next; only those lines are parsed.
      for (let pos = 0; pos < end; ) {
        const hit = buf.indexOf(needle, pos);
        if (hit < 0 || hit >= end) break;
        const start = hit === 0 ? 0 : buf.lastIndexOf(0x0a, hit - 1) + 1;
        const nl = buf.indexOf(0x0a, hit);
        consider(file, buf, start, nl);
        pos = nl + 1;
      }
    });
    // A cut-off last line (a file being written) is looked at too: it may hold a whole event.
    if (tail.length > 0) consider(file, tail, 0, tail.length);
    stats.bytes += tail.length;
  }
  return stats;
}

// The line's `time` as text when it is an ISO UTC time near the start of the line, else undefined.
function timeText(buf: Buffer, start: number, end: number): string | undefined {
  const at = buf.indexOf(TIME_LEAD, start);
  if (at < 0 || at + TIME_LEAD.length + 24 > end || at - start > 512) return undefined;
  const t = buf.toString('latin1', at + TIME_LEAD.length, at + TIME_LEAD.length + 24);
  return ISO_UTC.test(t) ? t : undefined;
}

const HIDDEN = new Set(['seq', 'prev', 'time', 'event', 'code', 'sig']);

/** One event as a line for people: time, code, then its other fields as `name=value`. */
export function formatEvent(r: Record<string, unknown>): string {
  let out = `${typeof r.time === 'string' ? r.time : '-'} ${typeof r.code === 'string' ? r.code : String(r.event)}`;
  for (const [k, v] of Object.entries(r)) {
    if (HIDDEN.has(k) || v === undefined || v === null) continue;
    out += ` ${k}=${typeof v === 'string' && v !== '' && !/[\s"]/.test(v) ? v : JSON.stringify(v)}`;
  }
  return out;
}

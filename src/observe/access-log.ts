/**
 * The access log: one JSON line per request with exactly the fields of `AccessEntry`. Lines go through
 * pino's asynchronous stdout destination (sonic-boom) so that logging never blocks the data plane; the
 * entry is serialized directly because pino's own envelope would add level and message fields.
 */
import { pino } from 'pino';
import type { AccessEntry } from './log.js';

/** Writes one access-log entry. */
export type AccessLog = (entry: AccessEntry) => void;

let stdoutDestination: ReturnType<typeof pino.destination> | undefined;

/** Lines of the current event-loop turn, handed to stdout together at its end. */
let pending = '';
let flushScheduled = false;

function flushPending(): void {
  flushScheduled = false;
  if (pending === '') return;
  const text = pending;
  pending = '';
  sharedStdout().write(text);
}

// One shared stdout destination for the process, flushed on exit so the last lines are not lost.
function sharedStdout(): ReturnType<typeof pino.destination> {
  if (stdoutDestination === undefined) {
    const dest = pino.destination({ dest: 1, sync: false });
    process.once('exit', () => {
      try {
        flushPending();
        dest.flushSync();
      } catch {
        // stdout already closed: nothing left to save.
      }
    });
    stdoutDestination = dest;
  }
  return stdoutDestination;
}

/**
 * Creates an access logger. Without `destination` it writes asynchronously to stdout, the lines of
 * one event-loop turn in one write (a write per line costs more than the rest of the log together);
 * with a stream (tests, files) it writes each line synchronously to that stream. Undefined fields are
 * left out of the line. `fields` (such as `{ worker: 2 }` in a cluster worker) lead every line.
 */
export function createAccessLog(destination?: NodeJS.WritableStream, fields?: object): AccessLog {
  const lead = fields === undefined ? '' : JSON.stringify(fields).slice(1, -1);
  const line =
    lead === ''
      ? (entry: AccessEntry) => `${JSON.stringify(entry)}\n`
      : (entry: AccessEntry) => `{${lead},${JSON.stringify(entry).slice(1)}\n`;
  if (destination !== undefined) {
    return (entry) => {
      destination.write(line(entry));
    };
  }
  sharedStdout();
  return (entry) => {
    pending += line(entry);
    if (!flushScheduled) {
      flushScheduled = true;
      setImmediate(flushPending);
    }
  };
}

let isoSecond = Number.NaN;
let isoPrefix = '';

/**
 * `new Date(ms).toISOString()`, with the date and time up to the second formatted once per second:
 * the full conversion costs about as much as the rest of an access-log line.
 */
export function isoTime(ms: number): string {
  const whole = Math.trunc(ms);
  const second = Math.floor(whole / 1000);
  if (second !== isoSecond) {
    // Everything but the trailing "mmmZ".
    isoPrefix = new Date(second * 1000).toISOString().slice(0, -4);
    isoSecond = second;
  }
  const milli = whole - second * 1000;
  return isoPrefix + (milli < 10 ? '00' : milli < 100 ? '0' : '') + milli + 'Z';
}

const kErrorCode = Symbol('gatehouse.errorCode');
type CodedResponse = { [kErrorCode]?: string };

/**
 * Notes the stable code of an error answer written outside the proxy's own error path (the sign-in
 * endpoints), so that the request's access-log line carries it like any other refusal.
 */
export function noteErrorCode(res: object, code: string): void {
  (res as CodedResponse)[kErrorCode] = code;
}

/** The code `noteErrorCode` left on a response, if any. */
export function errorCodeOf(res: object): string | undefined {
  return (res as CodedResponse)[kErrorCode];
}

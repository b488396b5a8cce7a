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

// One shared stdout destination for the process, flushed on exit so the last lines are not lost.
function sharedStdout(): ReturnType<typeof pino.destination> {
  if (stdoutDestination === undefined) {
    const dest = pino.destination({ dest: 1, sync: false });
    process.once('exit', () => {
      try {
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
 * Creates an access logger. Without `destination` it writes asynchronously to stdout; with a stream
 * (tests, files) it writes synchronously to that stream. Undefined fields are left out of the line.
 */
export function createAccessLog(destination?: NodeJS.WritableStream): AccessLog {
  const out: { write(line: string): unknown } = destination ?? sharedStdout();
  return (entry) => {
    out.write(`${JSON.stringify(entry)}\n`);
  };
}

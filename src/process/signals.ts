/**
 * The signals of a process that owns a gateway instance: the single-process `Gateway` (when started with
 * `signals: true`, as the CLI does) and the cluster primary. SIGHUP reloads; SIGTERM and SIGINT drain
 * and exit with the code the shutdown resolves to (1 when it fails); a second stop signal during the
 * drain exits 1 at once. A cluster worker handles its own (`worker.ts`): it drains when told, and leaves
 * reloads to the primary.
 */
import type { Logger } from '../observe/log.js';

/** What a process does on its signals (see `installSignals`). */
export interface SignalOptions {
  readonly logger: Logger;
  /** SIGHUP: loads the configuration again; the reload logs its own outcome. */
  reload(): unknown;
  /** SIGTERM/SIGINT: drains and stops; resolves with the process's exit code. */
  shutdown(): Promise<number>;
  /** Logged when the first stop signal arrives. */
  readonly drainMessage: string;
  /** Logged when a second stop signal arrives during the drain, before the process exits 1. */
  readonly abandonMessage: string;
  /** Runs before the process exits without a complete drain (a second stop signal, a failed shutdown). */
  abandon?(): void;
}

/** Removes the handler of `signal`, or every handler `installSignals` added when none is named. */
export type UninstallSignals = (signal?: NodeJS.Signals) => void;

/** Handles SIGHUP, SIGTERM and SIGINT as `opts` says; returns the function that removes the handlers. */
export function installSignals(opts: SignalOptions): UninstallSignals {
  const logger = opts.logger;
  const onHup = (): void => {
    logger.info('SIGHUP received: reloading');
    void opts.reload();
  };
  let stopping = false;
  const onStop = (): void => {
    if (stopping) {
      logger.warn(opts.abandonMessage);
      opts.abandon?.();
      process.exit(1);
    }
    stopping = true;
    logger.info(opts.drainMessage);
    opts.shutdown().then(
      (code) => process.exit(code),
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        opts.abandon?.();
        process.exit(1);
      },
    );
  };
  const handlers = [
    ['SIGHUP', onHup],
    ['SIGTERM', onStop],
    ['SIGINT', onStop],
  ] as const;
  for (const [signal, handler] of handlers) process.on(signal, handler);
  return (only) => {
    for (const [signal, handler] of handlers)
      if (only === undefined || only === signal) process.off(signal, handler);
  };
}

/**
 * What a reload of the single-process `Gateway` and of the cluster primary report the same way: the
 * warnings of a loaded configuration, and a reload that did not take (counted in
 * `gatehouse_config_reloads_total{result="rejected"}`, logged with every problem on a line of its own,
 * while the running configuration stays in use).
 */
import type { ReloadResult } from '../admin/server.js';
import { type ConfigProblem, formatProblem } from '../errors.js';
import type { Logger } from '../observe/log.js';
import { reloadsTotal } from '../observe/metrics.js';

/** A problem of the configuration file as a whole (it cannot be loaded, the process is stopping). */
export function problem(file: string, message: string): ConfigProblem {
  return { file, path: '', message };
}

/** Logs the warnings of a loaded configuration, one line each. */
export function logWarnings(logger: Logger, warnings: readonly ConfigProblem[]): void {
  for (const w of warnings) logger.warn({ file: w.file, path: w.path }, formatProblem(w));
}

/**
 * Reports a reload that did not take: `reason` says why (`invalid`, `error`, `shutdown`, `worker`), and
 * `partial` that some cluster workers did take it while others did not.
 */
export function rejectReload(
  logger: Logger,
  generation: number,
  problems: ConfigProblem[],
  reason: string,
  partial = false,
): ReloadResult {
  reloadsTotal.inc({ result: 'rejected' });
  logger.error(
    { generation, reason, problems: problems.length },
    partial
      ? 'configuration reloaded in only some workers'
      : 'configuration rejected; the running configuration stays in use',
  );
  for (const p of problems) logger.error({ file: p.file, path: p.path }, formatProblem(p));
  return { ok: false, problems };
}

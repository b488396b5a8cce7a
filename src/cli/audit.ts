/**
 * `gatehouse audit verify` and `gatehouse audit query`: checking and searching audit trail files
 * offline. Exit codes: 0 intact (verify) or done (query), 1 a bad line or a failure, 2 usage error.
 */
import { createPublicKey } from 'node:crypto';
import { parseDuration } from '../config/units.js';
import { ConfigError } from '../errors.js';
import { formatEvent, type QueryFilter, queryFiles } from '../observe/audit/query.js';
import { readKeyFile, type VerifyKey, verifyFiles } from '../observe/audit/verify.js';
import type { CliIo } from './main.js';

/** The `audit` part of the help text. */
export const AUDIT_USAGE = `  audit verify [-c FILE] [--key FILE] [--live] FILE...
                                    check audit files, oldest first (FILE.2 FILE.1 FILE): exit 0 when
                                    the chain is intact and ends in a checkpoint, 1 naming the first
                                    bad line; -c: check checkpoint signatures with the key of that
                                    configuration; --key: a JWK or JWKS file of keys to check them
                                    with; --live: the last file is still being written
  audit query FILE... [--who SUBJECT|EMAIL] [--since 1h|DATE-TIME] [--until 1h|DATE-TIME]
          [--route NAME] [--refused] [--event NAME] [--code CODE] [--json]
                                    print the events that match every filter given
`;

/** Bad arguments to `audit` (exit 2). */
class AuditUsageError extends Error {}

interface AuditArgs {
  keys: string[];
  /** `-c FILE`: check signatures with the key of that configuration. */
  config: string | undefined;
  live: boolean;
  files: string[];
  filter: QueryFilter;
  json: boolean;
}

const VALUE_OPTIONS: Record<string, ReadonlySet<string>> = {
  verify: new Set(['--key', '-c', '--config']),
  query: new Set(['--who', '--since', '--until', '--route', '--event', '--code']),
};
const FLAG_OPTIONS: Record<string, ReadonlySet<string>> = {
  verify: new Set(['--live']),
  query: new Set(['--refused', '--json']),
};

// An explicit offset or Z keeps the time independent of the machine's time zone; a date alone is UTC.
const DATE_TIME = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2}))?$/;

/** `1h` (that long ago) or an ISO date-time, in ms since the epoch. */
function parseWhen(option: string, text: string, now: number): number {
  const ago = parseDuration(text);
  if (ago !== undefined) return now - ago;
  const ms = DATE_TIME.test(text) ? Date.parse(text) : Number.NaN;
  if (Number.isNaN(ms)) {
    throw new AuditUsageError(
      `${option}: "${text}" is neither a duration (30m, 1h, 7d) nor a date-time such as 2026-01-05T09:30:00Z`,
    );
  }
  return ms;
}

function parse(command: 'verify' | 'query', args: string[], now: number): AuditArgs {
  const out: AuditArgs = { keys: [], config: undefined, live: false, files: [], filter: {}, json: false };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--') {
      out.files.push(...args.slice(i + 1));
      break;
    }
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    if (VALUE_OPTIONS[command]!.has(name)) {
      const value = eq > 0 ? arg.slice(eq + 1) : args[++i];
      if (value === undefined || value === '') throw new AuditUsageError(`${name} needs a value`);
      const f = out.filter;
      if (name === '--key') out.keys.push(value);
      else if (name === '-c' || name === '--config') out.config = value;
      else if (name === '--who') f.who = value;
      else if (name === '--since') f.since = parseWhen(name, value, now);
      else if (name === '--until') f.until = parseWhen(name, value, now);
      else if (name === '--route') f.route = value;
      else if (name === '--event') f.event = value;
      else if (name === '--code') f.code = value;
    } else if (FLAG_OPTIONS[command]!.has(arg)) {
      if (arg === '--refused') out.filter.refused = true;
      else if (arg === '--live') out.live = true;
      else out.json = true;
    } else if (arg.startsWith('-') && arg.length > 1) {
      throw new AuditUsageError(`audit ${command}: unknown option ${arg}`);
    } else {
      out.files.push(arg);
    }
  }
  if (out.files.length === 0) throw new AuditUsageError(`audit ${command} needs at least one FILE`);
  return out;
}

/** Runs `gatehouse audit …`; resolves with the exit code. `keys` adds checkpoint keys (from a config). */
export async function runAuditCommand(args: string[], io: CliIo): Promise<number> {
  const [sub, ...rest] = args;
  try {
    if (sub === 'verify') return await verify(parse('verify', rest, Date.now()), io);
    if (sub === 'query') return await query(parse('query', rest, Date.now()), io);
    throw new AuditUsageError(
      sub === undefined ? 'audit needs verify or query' : `unknown audit command "${sub}"`,
    );
  } catch (err) {
    if (err instanceof AuditUsageError) {
      io.err(`gatehouse: ${err.message}\n\nUsage:\n${AUDIT_USAGE}`);
      return 2;
    }
    throw err;
  }
}

/**
 * The checkpoint key of the audit trail a configuration writes, for `audit verify -c`: `audit.signingKey`,
 * or the key kept in its Redis state store. A generated key in a memory store lives only in the gateway.
 */
async function auditKeysOf(file: string): Promise<VerifyKey[]> {
  const { loadConfig } = await import('../config/load.js');
  const loaded = await loadConfig(file);
  if (!loaded.ok) throw new ConfigError(loaded.problems);
  const audit = loaded.config.audit;
  if (audit === undefined) throw new Error(`${file} has no audit section`);
  const { AuditKeyError, configuredAuditKey, storedAuditKey } = await import('../process/audit.js');
  try {
    const found =
      audit.signingKey !== undefined
        ? configuredAuditKey(audit.signingKey, (ref) => loaded.secrets.resolveSecret(ref))
        : await storedAuditKey(loaded.config.state.store);
    if (found === undefined)
      throw new Error(
        `${file}: the generated audit key of a memory state store lives only in the running gateway; pass --key with the keys of GET /api/v1/audit/keys`,
      );
    return [{ kid: found.keyId, key: createPublicKey(found.key) }];
  } catch (err) {
    if (err instanceof AuditKeyError) throw new ConfigError([{ file, path: err.path, message: err.detail }]);
    throw err;
  }
}

async function verify(a: AuditArgs, io: CliIo): Promise<number> {
  const keys: VerifyKey[] = a.config === undefined ? [] : await auditKeysOf(a.config);
  for (const file of a.keys) keys.push(...(await readKeyFile(file)));
  const report = await verifyFiles(a.files, { keys, live: a.live });
  for (const f of report.files) {
    if (report.problem?.file === f.file) break;
    io.out(
      `${f.file}: ok (${f.lines} line${f.lines === 1 ? '' : 's'}, seq ${f.firstSeq}-${f.lastSeq}, ${f.checkpoints} checkpoint${f.checkpoints === 1 ? '' : 's'})\n`,
    );
  }
  if (report.problem !== undefined) {
    const p = report.problem;
    io.err(`${p.file}:${p.line}: ${p.message}\n`);
    return 1;
  }
  if (a.live && report.uncovered > 0) {
    io.out(`${report.uncovered} line(s) at the end are not covered by a checkpoint yet (--live)\n`);
  }
  const first = report.files[0]?.firstSeq;
  if (first !== undefined && first !== 1) {
    io.out(`the chain starts at seq ${first}: earlier lines are in older files not given\n`);
  }
  io.out(
    report.signaturesChecked
      ? `chain intact; checkpoint signatures verified with ${keys.length} key${keys.length === 1 ? '' : 's'}\n`
      : 'chain intact; checkpoint signatures NOT checked (no key given: use --key FILE)\n',
  );
  return 0;
}

async function query(a: AuditArgs, io: CliIo): Promise<number> {
  let pending = '';
  const stats = await queryFiles(a.files, a.filter, (m) => {
    pending += `${a.json ? m.line : formatEvent(m.record)}\n`;
    if (pending.length > 1 << 20) {
      io.out(pending);
      pending = '';
    }
  });
  if (pending !== '') io.out(pending);
  io.err(`${stats.matched} event${stats.matched === 1 ? '' : 's'} matched\n`);
  return 0;
}

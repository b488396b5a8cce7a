/**
 * The audit trail: takes audit records from the gateway, turns each into one hash-chained JSON line
 * (chain.ts), adds signed checkpoints, and hands the lines to its sinks (file, stdout, syslog), which
 * write them asynchronously. `record()` is synchronous and never waits for I/O.
 *
 * The file is the chain of record: a line gets its sequence number and `prev` only once the file
 * sink has taken it, so events the file had to drop leave no hole in the chain; the `audit.overflow`
 * event written when it has room again records the gap. Without a file the chain runs over every line.
 */
import type { KeyObject } from 'node:crypto';
import type { Logger } from 'pino';
import { GatehouseError } from '../../errors.js';
import {
  AUDIT_EVENT,
  CHECKPOINT_CODE,
  type ChainHead,
  type CheckpointReason,
  chainLine,
  checkpointLine,
  checkpointSignatureValid,
  GENESIS,
  lineHash,
  parseCheckpoint,
  publicJwk,
} from './chain.js';
import { dropSecrets, mayHoldSecret } from './redact.js';
import { FdSink, FileSink, type FileSinkOptions, type SinkStats } from './sinks.js';
import { checkSyslogOptions, type SyslogMeta, type SyslogOptions, SyslogSink } from './syslog.js';

export { REDACTED, redactQuery } from './redact.js';

/** One audit event as the gateway hands it over: a stable event name and code, then its fields (plain JSON values). */
export interface AuditRecord {
  event: string;
  code: string;
  requestId?: string;
  [field: string]: unknown;
}

/** How the trail is set up; `AuditTrail.open` checks it. */
export interface AuditTrailOptions {
  /** The file sink, the chain of record. */
  file?: FileSinkOptions;
  /** Also write every line to standard output (or to the file descriptor given). */
  stdout?: boolean | { fd: number };
  /** Also send every line to a syslog receiver. */
  syslog?: SyslogOptions;
  /** A checkpoint every `lines` lines (default 1000) or `intervalMs` (default 60000), whichever first. */
  checkpoint?: { lines: number; intervalMs: number };
  /** Ed25519 private key that signs checkpoint lines; its key id. */
  signingKey: KeyObject;
  keyId: string;
  /** Keys that signed earlier checkpoints (after a key change): published, and trusted on reopening. */
  previousKeys?: ReadonlyArray<{ key: KeyObject; keyId: string }>;
  /** Events held per sink while it falls behind; beyond this they are dropped and counted. Default 10000. */
  bufferLimit?: number;
  /** How long close() waits for a sink to write what it holds before counting the rest lost. Default 10000. */
  closeTimeoutMs?: number;
  logger: Logger;
}

/** Audit trail settings that cannot work (a wrong key type, a zero limit). */
export class AuditConfigError extends GatehouseError {
  constructor(message: string) {
    super('GH_AUDIT_CONFIG', 0, message);
  }
}

/** What `AuditTrail.stats()` reports. */
export interface AuditStats {
  /** The sequence number of the last line of the chain. */
  lastSeq: number;
  /** Per sink: lines written, lines waiting, events dropped (syslog: also events sent as a stub). */
  sinks: { file?: SinkStats; stdout?: SinkStats; syslog?: SinkStats & { truncated: number } };
  /** Records handed over after close() (not written). */
  afterClose: number;
}

const RESERVED = ['seq', 'prev'] as const;

let lastMs = 0;
let lastIso = '';
/** The current time in ISO form; under load many events share a millisecond, and its text. */
function nowIso(): string {
  const ms = Date.now();
  if (ms !== lastMs) {
    lastMs = ms;
    lastIso = new Date(ms).toISOString();
  }
  return lastIso;
}

/** The audit trail of one gateway process. */
export class AuditTrail {
  private head: ChainHead = { seq: 1, prev: GENESIS };
  private sinceCheckpoint = 0;
  private timer: NodeJS.Timeout | undefined;
  private closing = false;
  private sealed = false;
  private afterClose = 0;
  private file: FileSink | undefined;
  private stdout: FdSink | undefined;
  private syslog: SyslogSink | undefined;
  private readonly everyLines: number;
  private readonly logger: Logger;

  private constructor(private readonly opts: AuditTrailOptions) {
    this.everyLines = opts.checkpoint?.lines ?? 1000;
    this.logger = opts.logger;
  }

  /**
   * Opens the trail and its sinks. An existing file that ends in a checkpoint signed with one of the
   * trail's keys is continued; one that does not (a crash, a cut-off line, lines added since) is moved
   * to `path.1` as it is, and a new file continues the chain from its last whole line.
   */
  static async open(opts: AuditTrailOptions): Promise<AuditTrail> {
    validate(opts);
    const trail = new AuditTrail(opts);
    const limit = opts.bufferLimit ?? 10_000;
    const overflow = (sink: string, dropped: number, since: string) => trail.overflowed(sink, dropped, since);
    let recovered: { reason: string; previousFile: string | undefined } | undefined;
    let continued = false;
    if (opts.file !== undefined) {
      const { sink, start } = await FileSink.open(opts.file, limit, opts.logger, overflow, (line) =>
        trail.trusted(line),
      );
      trail.file = sink;
      if (start.kind === 'continue') {
        trail.head = start.head;
        continued = true;
      } else if (start.kind === 'unclean') {
        if (start.head !== undefined) trail.head = start.head;
        recovered = { reason: start.reason, previousFile: start.movedTo };
        opts.logger.warn(
          { file: opts.file.path, movedTo: start.movedTo, reason: start.reason },
          'audit file did not end cleanly; moved aside, the chain goes on in a new file',
        );
      }
    }
    if (opts.stdout !== undefined && opts.stdout !== false) {
      const fd = opts.stdout === true ? 1 : opts.stdout.fd;
      trail.stdout = new FdSink(fd, limit, opts.logger, overflow);
    }
    if (opts.syslog !== undefined) trail.syslog = new SyslogSink(opts.syslog, limit, opts.logger, overflow);
    if (!continued) trail.checkpoint('open');
    if (recovered !== undefined) {
      trail.appendOwn({ event: AUDIT_EVENT, code: 'audit.recovered', ...recovered });
    }
    const interval = opts.checkpoint?.intervalMs ?? 60_000;
    trail.timer = setInterval(() => {
      if (trail.sinceCheckpoint > 0 && !trail.closing) trail.checkpoint('interval');
    }, interval);
    trail.timer.unref();
    return trail;
  }

  /**
   * Adds one event: `time` (ISO) when it has none, its sequence number and `prev`; fields named like
   * credentials are left out. Synchronous; never throws, never waits for I/O.
   */
  record(r: AuditRecord): void {
    try {
      if (this.closing) {
        if (this.afterClose++ === 0)
          this.logger.warn({ code: r?.code }, 'audit event after close, not written');
        return;
      }
      this.append(r, false);
    } catch (err) {
      // Only a bug gets here: the event is lost, loudly, and the request goes on.
      this.logger.error({ err, code: r?.code }, 'audit event could not be recorded');
    }
  }

  /**
   * Adds one event already serialized as a JSON object text holding its `event` and `code` (say, the
   * access-log line, built once for both), so it is not serialized twice. `meta` repeats what the syslog
   * header needs; `meta.time` says the JSON holds a `time` member (else the trail adds one). A text that
   * may hold a credential or chain fields, or is not a JSON object text, takes the `record()` path.
   * Synchronous; never throws.
   */
  recordJson(json: string, meta: { event: string; code: string; requestId?: string; time?: string }): void {
    try {
      if (this.closing) {
        this.afterClose++;
        return;
      }
      if (
        json.length < 2 ||
        json.charCodeAt(0) !== 0x7b ||
        json.charCodeAt(json.length - 1) !== 0x7d ||
        meta.code === CHECKPOINT_CODE ||
        json.includes('"seq":') ||
        json.includes('"prev":') ||
        mayHoldSecret(json)
      ) {
        let parsed: unknown;
        try {
          parsed = JSON.parse(json);
        } catch {
          parsed = undefined;
        }
        const r =
          parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)
            ? (parsed as AuditRecord)
            : {
                event: meta.event,
                code: 'audit.unserializable',
                originalCode: meta.code,
                error: 'not a JSON object',
              };
        this.append(r, false);
        return;
      }
      const time = meta.time === undefined ? nowIso() : undefined;
      const syslogMeta =
        this.syslog === undefined
          ? undefined
          : { event: meta.event, code: meta.code, time: meta.time ?? time!, requestId: meta.requestId };
      this.appendBody(json, time, syslogMeta, false);
    } catch (err) {
      this.logger.error({ err, code: meta?.code }, 'audit event could not be recorded');
    }
  }

  /** The JWKS of the checkpoint public key(s), for `GET /api/v1/audit/keys`. */
  publicKeys(): { keys: object[] } {
    return {
      keys: [
        publicJwk(this.opts.signingKey, this.opts.keyId),
        ...(this.opts.previousKeys ?? []).map((k) => publicJwk(k.key, k.keyId)),
      ],
    };
  }

  /** Per sink: written, buffered and dropped; and the last sequence number. */
  stats(): AuditStats {
    const sinks: AuditStats['sinks'] = {};
    if (this.file !== undefined) sinks.file = this.file.stats();
    if (this.stdout !== undefined) sinks.stdout = this.stdout.stats();
    if (this.syslog !== undefined)
      sinks.syslog = { ...this.syslog.stats(), truncated: this.syslog.truncated };
    return { lastSeq: this.head.seq - 1, sinks, afterClose: this.afterClose };
  }

  /** Resolves once every sink has written what it held when called (a sink that is down: at most closeTimeoutMs). */
  async flush(): Promise<void> {
    await Promise.all(this.sinks().map((s) => this.bounded(s, s.flush(), false)));
  }

  /** Writes a final checkpoint, flushes every sink and closes them; idempotent. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    clearInterval(this.timer);
    // A file that catches up now may still report an overflow: let it, before the final checkpoint.
    // (A syslog receiver that is down is not waited for twice.)
    if (this.file !== undefined) await this.bounded(this.file, this.file.flush(), false);
    this.checkpoint('close');
    this.sealed = true;
    const closes: Array<Promise<void>> = [];
    if (this.file !== undefined) closes.push(this.bounded(this.file, this.file.close(), true));
    if (this.stdout !== undefined) closes.push(this.bounded(this.stdout, this.stdout.close(), true));
    if (this.syslog !== undefined) {
      const s = this.syslog;
      closes.push(this.bounded(s, s.close(), true).then(() => s.destroy()));
    }
    await Promise.all(closes);
  }

  private sinks(): Array<FileSink | FdSink | SyslogSink> {
    return [this.file, this.stdout, this.syslog].filter((s) => s !== undefined);
  }

  // Waits for a sink at most closeTimeoutMs; on close, what it still holds then is counted as lost.
  private async bounded(
    sink: FileSink | FdSink | SyslogSink,
    p: Promise<void>,
    closing: boolean,
  ): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      p.then(() => false),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), this.opts.closeTimeoutMs ?? 10_000);
      }),
    ]);
    clearTimeout(timer);
    if (timedOut && closing) {
      const held = sink.stats().buffered;
      this.logger.error(
        { sink: sink.name, lost: held },
        'audit sink could not write its events before close',
      );
      sink.abandon();
    }
  }

  private trusted(line: string): boolean {
    const cp = parseCheckpoint(line);
    if (cp === undefined) return false;
    const keys = [{ key: this.opts.signingKey, keyId: this.opts.keyId }, ...(this.opts.previousKeys ?? [])];
    return keys.some((k) => k.keyId === cp.keyId && checkpointSignatureValid(cp, k.key));
  }

  private append(r: AuditRecord, own: boolean): void {
    let rec: Record<string, unknown> = r;
    if (RESERVED.some((k) => k in r) || (r.code === CHECKPOINT_CODE && !own)) {
      // The chain fields are the trail's own, and only the trail writes checkpoints.
      const { seq: _s, prev: _p, ...rest } = r;
      rec = rest;
      if (r.code === CHECKPOINT_CODE) rec.code = 'audit.forged-checkpoint';
    }
    let time: string | undefined;
    if (typeof rec.time !== 'string') {
      time = nowIso();
      if (rec.time !== undefined) {
        const { time: _t, ...rest } = rec;
        rec = rest;
      }
    }
    let body: string;
    try {
      body = JSON.stringify(rec);
      if (mayHoldSecret(body)) body = JSON.stringify(rec, dropSecrets);
    } catch (err) {
      // A value JSON cannot hold (a cycle, a BigInt): the event is still recorded, without its fields.
      body = JSON.stringify({
        event: String(r.event),
        code: 'audit.unserializable',
        originalCode: String(r.code),
        ...(typeof r.requestId === 'string' ? { requestId: r.requestId } : {}),
        error: (err as Error).message,
      });
    }
    // Only the syslog sink needs the header fields apart.
    const meta: SyslogMeta | undefined =
      this.syslog === undefined
        ? undefined
        : {
            event: String(r.event),
            code: String(r.code),
            time: time ?? (rec.time as string),
            requestId: typeof r.requestId === 'string' ? r.requestId : undefined,
          };
    this.appendBody(body, time, meta, own);
  }

  /** Chains and queues one serialized record (`time` added when given). */
  private appendBody(
    body: string,
    time: string | undefined,
    meta: SyslogMeta | undefined,
    own: boolean,
  ): void {
    const file = this.file;
    if (file !== undefined && !own && !file.hasRoom()) {
      file.drop(1);
      // The other sinks still get the event, without chain fields: the chain is the file's.
      this.toOthers(time === undefined ? body : `{"time":"${time}",${body.slice(1)}`, meta);
      return;
    }
    const line = chainLine(this.head, body, time);
    this.head = { seq: this.head.seq + 1, prev: lineHash(line) };
    file?.enqueue(`${line}\n`);
    this.toOthers(line, meta);
    if (++this.sinceCheckpoint >= this.everyLines) this.checkpoint('lines');
    if (file?.full() && !this.closing) this.rotate();
  }

  // Only the file must take the trail's own lines whatever its buffer holds (they are in the chain);
  // elsewhere they count against the limit like any event, so a receiver down for hours costs no memory.
  private toOthers(line: string, meta: SyslogMeta | undefined): void {
    this.stdout?.push(`${line}\n`);
    if (meta !== undefined) this.syslog?.send(line, meta);
  }

  // The trail's own events (overflow, recovery) are never dropped by the file for want of room.
  private appendOwn(r: AuditRecord): void {
    if (this.sealed) {
      this.logger.warn({ ...r }, 'audit event after the final checkpoint, not written');
      return;
    }
    this.append(r, true);
  }

  private overflowed(sink: string, dropped: number, since: string): void {
    this.logger.warn({ sink, dropped, since }, 'audit sink fell behind and dropped events');
    this.appendOwn({ event: AUDIT_EVENT, code: 'audit.overflow', sink, dropped, since });
  }

  private checkpoint(reason: CheckpointReason): void {
    const time = nowIso();
    const line = checkpointLine(this.head, time, reason, this.opts.signingKey, this.opts.keyId);
    this.head = { seq: this.head.seq + 1, prev: lineHash(line) };
    this.sinceCheckpoint = 0;
    if (this.file !== undefined) {
      this.file.enqueue(`${line}\n`);
      this.file.syncPoint();
    }
    this.toOthers(
      line,
      this.syslog === undefined ? undefined : { event: AUDIT_EVENT, code: CHECKPOINT_CODE, time },
    );
  }

  // The old file ends with a checkpoint; the new one starts with one that continues the chain.
  private rotate(): void {
    this.checkpoint('rotate');
    this.file!.rotate();
    this.checkpoint('open');
  }
}

function validate(opts: AuditTrailOptions): void {
  const k = opts.signingKey;
  if (k?.type !== 'private' || k.asymmetricKeyType !== 'ed25519') {
    throw new AuditConfigError('audit signing key must be an Ed25519 private key');
  }
  if (typeof opts.keyId !== 'string' || opts.keyId === '') throw new AuditConfigError('audit keyId is empty');
  const positive = (n: number | undefined, what: string) => {
    if (n !== undefined && !(Number.isFinite(n) && n > 0))
      throw new AuditConfigError(`${what} must be above 0`);
  };
  positive(opts.checkpoint?.lines, 'audit checkpoint.lines');
  positive(opts.checkpoint?.intervalMs, 'audit checkpoint.intervalMs');
  positive(opts.bufferLimit, 'audit bufferLimit');
  // Checked before anything is opened, so a bad setting leaves no file or socket behind.
  if (opts.syslog !== undefined) checkSyslogOptions(opts.syslog);
  if (opts.file !== undefined) {
    positive(opts.file.maxSize, 'audit file.maxSize');
    if (!Number.isInteger(opts.file.keep) || opts.file.keep < 0) {
      throw new AuditConfigError('audit file.keep must be a whole number, 0 or more');
    }
    if (!['always', 'checkpoint', 'never'].includes(opts.file.fsync)) {
      throw new AuditConfigError('audit file.fsync must be always, checkpoint or never');
    }
  }
}

/**
 * Audit sinks: each holds the lines handed to it in an in-memory queue and writes them asynchronously,
 * in batches, so that recording an event never waits for I/O. A sink that falls behind by more than
 * its limit drops the overflow and counts it; once it has room again it reports how many it dropped
 * (`onOverflow`), and the trail records that as an `audit.overflow` event.
 *
 * Queue states: idle (empty, no pump) → pumping (one batch in flight at a time; a failed batch stays
 * at the head of the queue and is retried after `retryDelay`) → idle. `flush()` waits for idle.
 */

import { write as fsWrite } from 'node:fs';
import { type FileHandle, open as openFile, readdir, rename, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { GatehouseError } from '../../errors.js';
import {
  auditBuffered,
  auditDroppedTotal,
  auditEventsTotal,
  type CounterSeries,
  type GaugeSeries,
} from '../metrics.js';
import { CHAIN_PREFIX, type ChainHead, lineHash, parseCheckpoint } from './chain.js';

/** The audit file cannot be opened or read (a missing directory, no permission). */
export class AuditFileError extends GatehouseError {
  constructor(file: string, detail: string, cause?: unknown) {
    super('GH_AUDIT_FILE', 0, `audit file ${file}: ${detail}`, { cause });
  }
}

/** What each sink reports in `AuditTrail.stats()`. */
export interface SinkStats {
  /** Lines written. */
  written: number;
  /** Lines waiting to be written. */
  buffered: number;
  /** Events dropped since the sink was opened. */
  dropped: number;
}

/** A point in a sink's queue where something other than writing happens. */
export type Marker = { kind: 'rotate' } | { kind: 'sync' };

type Item = string | Marker;

/** Called when a sink has room again after dropping `dropped` events (first dropped at `since`). */
export type OverflowListener = (sink: string, dropped: number, since: string) => void;

/**
 * How long a sink gathers lines before a write, and the batch size that is written at once. A write is
 * a round trip through libuv's thread pool that costs more CPU than a few hundred lines: under load,
 * writing every event-loop turn's few lines on their own cost more than the rest of the trail.
 */
const GATHER_MS = 5;
const GATHER_LINES = 256;

/** The common part of every sink: the queue, the limit, the counters and the pump. */
export abstract class QueueSink {
  protected readonly queue: Item[] = [];
  /** Lines in the queue (markers aside). */
  protected lines = 0;
  private writtenCount = 0;
  private droppedCount = 0;
  private unreported = 0;
  private unreportedSince = '';
  private pumping = false;
  private idleWaiters: Array<() => void> = [];
  private retryTimer: NodeJS.Timeout | undefined;
  private retryWake: (() => void) | undefined;
  private gatherTimer: NodeJS.Timeout | undefined;
  private gatherWake: (() => void) | undefined;
  /** Set by `flush()`: write what is queued without gathering more. */
  private hurry = false;
  /** Set once the sink gives up on what is left (close timed out). */
  protected abandoned = false;
  private readonly written: CounterSeries;
  private readonly droppedMetric: CounterSeries;
  private readonly bufferedMetric: GaugeSeries;

  constructor(
    /** `file`, `stdout` or `syslog`: the metrics label and the `sink` of overflow events. */
    readonly name: string,
    protected readonly limit: number,
    protected readonly logger: Logger,
    private readonly onOverflow: OverflowListener,
  ) {
    this.written = auditEventsTotal.series(name);
    this.droppedMetric = auditDroppedTotal.series(name);
    this.bufferedMetric = auditBuffered.series(name);
    this.bufferedMetric.set(0);
  }

  /** Whether another event fits in the buffer. */
  hasRoom(): boolean {
    return this.lines < this.limit;
  }

  /** Queues a line (with its `\n`) when there is room, else counts it as dropped; never blocks. */
  push(line: string): boolean {
    if (this.lines >= this.limit) {
      this.drop(1);
      return false;
    }
    this.enqueue(line);
    return true;
  }

  /** Queues a line even when the buffer is full (the file's share of the trail's own lines). */
  enqueue(line: string): void {
    this.queue.push(line);
    this.lines++;
    this.bufferedMetric.set(this.lines);
    this.kick();
  }

  /** Queues a marker, handled in order with the lines around it. */
  mark(marker: Marker): void {
    this.queue.push(marker);
    this.kick();
  }

  /** Counts `n` events as dropped by this sink. */
  drop(n: number): void {
    if (this.unreported === 0) this.unreportedSince = new Date().toISOString();
    this.droppedCount += n;
    this.unreported += n;
    this.droppedMetric.inc(n);
  }

  /** Written, buffered and dropped counts. */
  stats(): SinkStats {
    return { written: this.writtenCount, buffered: this.lines, dropped: this.droppedCount };
  }

  /** Resolves once everything queued so far has been written. */
  flush(): Promise<void> {
    if (!this.pumping && this.queue.length === 0) return Promise.resolve();
    this.hurry = true;
    this.gatherWake?.();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Gives up on the lines still queued (counted as dropped), e.g. when closing takes too long. */
  abandon(): void {
    this.abandoned = true;
    if (this.lines > 0) this.drop(this.lines);
    this.queue.length = 0;
    this.lines = 0;
    this.bufferedMetric.set(0);
    this.retryWake?.();
    this.gatherWake?.();
  }

  /** Writes the lines of one batch, in order; throws when the batch must be retried as a whole. */
  protected abstract writeBatch(lines: string[]): Promise<void>;

  /** Handles a marker; throws when it must be retried. */
  protected async handleMarker(_marker: Marker): Promise<void> {}

  /** Milliseconds to wait before retrying after `err` (logging it as the sink sees fit). */
  protected abstract retryDelay(err: unknown): number;

  /** Called after a batch was written after one or more failures. */
  protected recovered(): void {}

  private kick(): void {
    if (!this.pumping) {
      this.pumping = true;
      // Started a little later: the lines of many event-loop turns go out in one batch.
      void this.pump();
    } else if (this.lines >= GATHER_LINES) this.gatherWake?.();
  }

  /** Waits up to `GATHER_MS` for more lines, unless enough are queued or a flush asks for them. */
  private async gather(): Promise<void> {
    if (this.hurry || this.lines >= GATHER_LINES || this.abandoned) return;
    await new Promise<void>((resolve) => {
      this.gatherWake = resolve;
      this.gatherTimer = setTimeout(resolve, GATHER_MS);
    });
    clearTimeout(this.gatherTimer);
    this.gatherWake = undefined;
  }

  private async pump(): Promise<void> {
    let failing = false;
    await this.gather();
    while (this.queue.length > 0 && !this.abandoned) {
      const head = this.queue[0]!;
      try {
        if (typeof head !== 'string') {
          await this.handleMarker(head);
          this.queue.shift();
        } else {
          let n = 0;
          while (n < this.queue.length && typeof this.queue[n] === 'string') n++;
          const batch = this.queue.slice(0, n) as string[];
          await this.writeBatch(batch);
          if (this.abandoned) break;
          this.queue.splice(0, n);
          this.lines -= n;
          this.writtenCount += n;
          this.written.inc(n);
          this.bufferedMetric.set(this.lines);
          if (this.queue.length > 0) await this.gather();
        }
        if (failing) {
          failing = false;
          this.recovered();
        }
        if (this.unreported > 0 && this.lines < this.limit) {
          const n = this.unreported;
          this.unreported = 0;
          this.onOverflow(this.name, n, this.unreportedSince);
        }
      } catch (err) {
        failing = true;
        await new Promise<void>((resolve) => {
          this.retryWake = resolve;
          this.retryTimer = setTimeout(resolve, this.retryDelay(err));
        });
        clearTimeout(this.retryTimer);
        this.retryWake = undefined;
      }
    }
    this.pumping = false;
    this.hurry = false;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}

/** The file sink's settings (`AuditTrailOptions.file`). */
export interface FileSinkOptions {
  path: string;
  /** Bytes; the file is rotated once it reaches this size. */
  maxSize: number;
  /** Rotated files kept (`path.1` … `path.keep`). */
  keep: number;
  /** `always`: fsync after each write batch; `checkpoint`: after each checkpoint; `never`: leave it to the OS. */
  fsync: 'always' | 'checkpoint' | 'never';
}

/** Where an existing file left its chain, as found when opening it. */
export type FileStart =
  | { kind: 'new' }
  /** The file ends in a checkpoint signed with the trail's key: the chain goes on in it. */
  | { kind: 'continue'; head: ChainHead }
  /**
   * The file did not end cleanly (a cut-off line, no final checkpoint, a checkpoint that the trail's
   * key did not sign): it was rotated away untouched, and the chain goes on from its last whole line
   * in a new file (`head` undefined when none could be read: a new chain).
   */
  | { kind: 'unclean'; head: ChainHead | undefined; reason: string; movedTo: string | undefined };

/**
 * The file sink: the chain of record. Lines are appended in batches; `rotate` markers close the file,
 * shift `path.1` → `path.2` … (deleting beyond `keep`), move the file to `path.1` and open a new one.
 */
export class FileSink extends QueueSink {
  private fh: FileHandle | undefined;
  /** Bytes in the file plus bytes queued for it: what rotation is decided on, when the line is queued. */
  private assignedBytes = 0;
  /** Bytes in the current file, as written by this sink. */
  private fileSize = 0;
  private failures = 0;

  private constructor(
    private readonly opts: FileSinkOptions,
    limit: number,
    logger: Logger,
    onOverflow: OverflowListener,
  ) {
    super('file', limit, logger, onOverflow);
  }

  /**
   * Opens the file for appending, reading its tail to find where the chain stands. `trusted` says
   * whether a checkpoint line was signed by the trail's key.
   */
  static async open(
    opts: FileSinkOptions,
    limit: number,
    logger: Logger,
    onOverflow: OverflowListener,
    trusted: (checkpointLine: string) => boolean,
  ): Promise<{ sink: FileSink; start: FileStart }> {
    const sink = new FileSink(opts, limit, logger, onOverflow);
    let start: FileStart = { kind: 'new' };
    const tail = await readTail(opts.path).catch((err: Error) => {
      throw new AuditFileError(opts.path, err.message, err);
    });
    if (tail !== undefined) {
      const found = chainAfter(tail);
      if (found.clean && found.head !== undefined && trusted(found.lastLine)) {
        start = { kind: 'continue', head: found.head };
      } else {
        const reason = !found.clean
          ? 'cut-off last line'
          : found.lastLine === ''
            ? 'empty'
            : found.head === undefined
              ? 'not an audit line at the end'
              : parseCheckpoint(found.lastLine) === undefined
                ? 'no final checkpoint'
                : 'final checkpoint not signed by this key';
        if (reason !== 'empty') {
          const movedTo = await sink.shiftFiles();
          start = { kind: 'unclean', head: found.head, reason, movedTo };
        }
      }
    }
    try {
      sink.fh = await openFile(opts.path, 'a', 0o640);
    } catch (err) {
      throw new AuditFileError(opts.path, (err as Error).message, err);
    }
    sink.fileSize = (await sink.fh.stat()).size;
    sink.assignedBytes = sink.fileSize;
    return { sink, start };
  }

  /** Whether the bytes queued so far reach the size at which the file is rotated. */
  full(): boolean {
    return this.assignedBytes >= this.opts.maxSize;
  }

  override enqueue(line: string): void {
    this.assignedBytes += Buffer.byteLength(line);
    super.enqueue(line);
  }

  /** Queues a rotation: the lines queued before it go to the current file, those after to the next. */
  rotate(): void {
    this.assignedBytes = 0;
    this.mark({ kind: 'rotate' });
  }

  /** Queues an fsync after the lines queued so far (the `checkpoint` fsync policy). */
  syncPoint(): void {
    if (this.opts.fsync === 'checkpoint') this.mark({ kind: 'sync' });
  }

  protected override async writeBatch(lines: string[]): Promise<void> {
    const fh = this.fh;
    if (fh === undefined) throw new Error('audit file is not open');
    const data = Buffer.from(lines.join(''));
    try {
      await fh.appendFile(data);
    } catch (err) {
      // A batch written in part would leave a cut-off line: take the part back before retrying.
      await fh.truncate(this.fileSize).catch(() => {});
      throw err;
    }
    this.fileSize += data.length;
    if (this.opts.fsync === 'always') await fh.sync();
  }

  protected override async handleMarker(marker: Marker): Promise<void> {
    if (marker.kind === 'sync') {
      // Linux reports a failed writeback once: an fsync retried would succeed and prove nothing.
      await this.fh
        ?.sync()
        .catch((err: unknown) => this.logger.error({ err, file: this.opts.path }, 'audit file fsync failed'));
      return;
    }
    const fh = this.fh;
    if (fh !== undefined) {
      if (this.opts.fsync !== 'never') await fh.sync().catch(() => {});
      await fh.close().catch(() => {});
      this.fh = undefined;
    }
    try {
      await this.shiftFiles();
    } catch (err) {
      // The trail goes on in the same file: its chain stays whole, only the file grows.
      this.logger.error({ err, file: this.opts.path }, 'audit file could not be rotated; writing on in it');
    }
    // Throws (and is retried) only when no file can be opened at all.
    this.fh = await openFile(this.opts.path, 'a', 0o640);
    this.fileSize = (await this.fh.stat()).size;
  }

  protected override retryDelay(err: unknown): number {
    this.failures++;
    if (this.failures === 1 || this.failures % 100 === 0) {
      this.logger.error(
        { err, file: this.opts.path, failures: this.failures },
        'audit file write failed; retrying (events are buffered)',
      );
    }
    return Math.min(50 * 2 ** Math.min(this.failures, 10), 5000);
  }

  protected override recovered(): void {
    this.logger.warn({ file: this.opts.path, failures: this.failures }, 'audit file writable again');
    this.failures = 0;
  }

  /**
   * Moves `path` to `path.1` after shifting the older ones up and deleting those beyond `keep`
   * (with `keep` 0 the file is deleted). Returns where the file went.
   */
  private async shiftFiles(): Promise<string | undefined> {
    const p = this.opts.path;
    const keep = this.opts.keep;
    // Files beyond `keep` (left by a larger `keep` before) go first.
    const dir = path.dirname(p);
    const base = path.basename(p);
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (!name.startsWith(`${base}.`)) continue;
      const n = Number(name.slice(base.length + 1));
      if (Number.isInteger(n) && n >= keep) await unlink(path.join(dir, name)).catch(() => {});
    }
    for (let i = keep - 1; i >= 1; i--) {
      await rename(`${p}.${i}`, `${p}.${i + 1}`).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
    if (keep === 0) {
      await unlink(p);
      return undefined;
    }
    await rename(p, `${p}.1`);
    return `${p}.1`;
  }

  /** Writes what is queued, fsyncs (unless `never`) and closes the file. */
  async close(): Promise<void> {
    await this.flush();
    const fh = this.fh;
    this.fh = undefined;
    if (fh === undefined) return;
    if (this.opts.fsync !== 'never') await fh.sync().catch(() => {});
    await fh.close();
  }
}

/** The end of the file, holding at least its last whole line; empty for an empty file, undefined if none. */
async function readTail(file: string): Promise<Buffer | undefined> {
  let size: number;
  try {
    size = (await stat(file)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  if (size === 0) return Buffer.alloc(0);
  const fh = await openFile(file, 'r');
  try {
    for (let want = 64 * 1024; ; want *= 4) {
      const len = Math.min(want, size);
      const buf = Buffer.alloc(len);
      await fh.read(buf, 0, len, size - len);
      if (len === size) return buf;
      // Enough when the line end before the last whole line is in the buffer.
      const last = buf.lastIndexOf(0x0a);
      if (last > 0 && buf.lastIndexOf(0x0a, last - 1) >= 0) return buf;
    }
  } finally {
    await fh.close();
  }
}

/** Where the chain stands after `tail` (the end of a file): its last whole line and what follows it. */
function chainAfter(tail: Buffer): { clean: boolean; head: ChainHead | undefined; lastLine: string } {
  if (tail.length === 0) return { clean: true, head: undefined, lastLine: '' };
  // Clean: the file ends with a line end. Otherwise what follows the last line end is a cut-off line.
  const clean = tail[tail.length - 1] === 0x0a;
  const end = tail.lastIndexOf(0x0a);
  if (end < 0) return { clean: false, head: undefined, lastLine: '' };
  const start = end === 0 ? 0 : tail.lastIndexOf(0x0a, end - 1) + 1;
  const last = tail.subarray(start, end).toString('utf8');
  const m = CHAIN_PREFIX.exec(last);
  if (m === null) return { clean, head: undefined, lastLine: last };
  return { clean, head: { seq: Number(m[1]) + 1, prev: lineHash(last) }, lastLine: last };
}

/** Writes to a file descriptor (stdout by default) without blocking the event loop. */
export class FdSink extends QueueSink {
  private failures = 0;
  constructor(
    private readonly fd: number,
    limit: number,
    logger: Logger,
    onOverflow: OverflowListener,
  ) {
    super('stdout', limit, logger, onOverflow);
  }

  protected override async writeBatch(lines: string[]): Promise<void> {
    let data = Buffer.from(lines.join(''));
    // fs.write runs on the thread pool: a slow reader of the pipe holds a pool thread, never the loop.
    while (data.length > 0) {
      const n = await new Promise<number>((resolve, reject) =>
        fsWrite(this.fd, data, 0, data.length, null, (err, written) =>
          err ? reject(err) : resolve(written),
        ),
      ).catch(async (err: NodeJS.ErrnoException) => {
        // A non-blocking pipe that is full: wait for the reader.
        if (err.code === 'EAGAIN') {
          await new Promise((r) => setTimeout(r, 10));
          return 0;
        }
        throw err;
      });
      data = data.subarray(n);
    }
  }

  protected override retryDelay(err: unknown): number {
    this.failures++;
    if (this.failures === 1) this.logger.error({ err }, 'audit stdout write failed; retrying');
    return Math.min(100 * 2 ** Math.min(this.failures, 6), 5000);
  }

  protected override recovered(): void {
    this.failures = 0;
  }

  /** Writes what is queued. */
  async close(): Promise<void> {
    await this.flush();
  }
}

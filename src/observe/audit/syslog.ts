/**
 * The syslog sink: each audit line as an RFC 5424 message,
 *
 *   <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG
 *
 * with MSGID the event name and MSG the JSON line, over UDP (RFC 5426: one message per datagram) or
 * TCP (RFC 6587 octet counting: `LENGTH SP MESSAGE`). TCP reconnects with backoff, and the sink's
 * buffer holds the messages while it is down.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { connect, isIPv6, type Socket } from 'node:net';
import { hostname as osHostname } from 'node:os';
import type { Logger } from 'pino';
import { GatehouseError } from '../../errors.js';
import { type OverflowListener, QueueSink } from './sinks.js';

/** The syslog sink's settings (`AuditTrailOptions.syslog`). */
export interface SyslogOptions {
  /** `udp://host:port` or `tcp://host:port`. */
  address: string;
  /** APP-NAME; `gatehouse` by default. */
  appName?: string;
  /** HOSTNAME; the machine's name by default. */
  hostname?: string;
  /** Facility number (0-23); 13 (log audit) by default. */
  facility?: number;
  /**
   * UDP only: the largest message sent (bytes). A larger event is sent as a stub that keeps its chain
   * fields, time, event, code and request id, with `"truncated":true` and its full size; the file holds
   * the whole line. Default 8192 (rsyslog's default maximum message size).
   */
  maxDatagram?: number;
}

/** A syslog address that cannot be used. */
export class SyslogAddressError extends GatehouseError {
  constructor(address: string, detail: string) {
    super('GH_AUDIT_SYSLOG_ADDRESS', 0, `audit syslog address "${address}": ${detail}`);
  }
}

/** The transport, host and port of a syslog address. */
export function parseSyslogAddress(address: string): { protocol: 'udp' | 'tcp'; host: string; port: number } {
  const m = /^(udp|tcp):\/\/(\[[0-9a-fA-F:.]+\]|[^:/[\]\s]+):(\d{1,5})\/?$/.exec(address);
  if (m === null) throw new SyslogAddressError(address, 'expected udp://host:port or tcp://host:port');
  const port = Number(m[3]);
  if (port < 1 || port > 65535) throw new SyslogAddressError(address, 'port out of range');
  const host = m[2]!.startsWith('[') ? m[2]!.slice(1, -1) : m[2]!;
  return { protocol: m[1] as 'udp' | 'tcp', host, port };
}

/** Checks the settings (address, facility), throwing `SyslogAddressError`; returns the parsed address. */
export function checkSyslogOptions(opts: SyslogOptions): ReturnType<typeof parseSyslogAddress> {
  const a = parseSyslogAddress(opts.address);
  const facility = opts.facility ?? 13;
  if (!Number.isInteger(facility) || facility < 0 || facility > 23) {
    throw new SyslogAddressError(opts.address, `facility ${facility} is not 0-23`);
  }
  return a;
}

// RFC 5424 §6: header fields are printable US-ASCII without spaces, with maximum lengths.
function headerField(value: string, max: number): string {
  const clean = value.replace(/[^\x21-\x7e]/g, '_').slice(0, max);
  return clean === '' ? '-' : clean;
}

/** The parts of an event that the syslog header and an oversize stub need. */
export interface SyslogMeta {
  event: string;
  code: string;
  time: string;
  requestId?: string | undefined;
}

const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$/;
const SEVERITY_INFO = 6;
const SEVERITY_NOTICE = 5;

/** Sends audit lines to a syslog receiver. */
export class SyslogSink extends QueueSink {
  private readonly protocol: 'udp' | 'tcp';
  private readonly host: string;
  private readonly port: number;
  private readonly header: string;
  private readonly facility: number;
  private readonly maxDatagram: number;
  private readonly msgIds = new Map<string, string>();
  private udp: UdpSocket | undefined;
  private tcp: Socket | undefined;
  private connecting: Promise<Socket> | undefined;
  private closed = false;
  private failures = 0;
  private oversize = 0;

  constructor(opts: SyslogOptions, limit: number, logger: Logger, onOverflow: OverflowListener) {
    super('syslog', limit, logger, onOverflow);
    const a = checkSyslogOptions(opts);
    this.protocol = a.protocol;
    this.host = a.host;
    this.port = a.port;
    this.facility = opts.facility ?? 13;
    this.maxDatagram = opts.maxDatagram ?? 8192;
    this.header = ` ${headerField(opts.hostname ?? osHostname(), 255)} ${headerField(opts.appName ?? 'gatehouse', 48)} ${process.pid} `;
    if (this.protocol === 'udp') {
      this.udp = createSocket(isIPv6(this.host) ? 'udp6' : 'udp4');
      this.udp.unref();
      // Send errors come back through the send callbacks; a socket error must not crash the process.
      this.udp.on('error', (err) => this.logger.warn({ err }, 'audit syslog socket error'));
    }
  }

  /** Events sent as a stub because they were larger than `maxDatagram`. */
  get truncated(): number {
    return this.oversize;
  }

  /** Queues one audit line (without `\n`) as a syslog message; false when dropped (buffer full). */
  send(line: string, meta: SyslogMeta): boolean {
    if (!this.hasRoom()) {
      this.drop(1);
      return false;
    }
    let message = this.format(line, meta);
    if (this.protocol === 'udp') {
      if (Buffer.byteLength(message) > this.maxDatagram) {
        this.oversize++;
        message = this.format(this.stub(line, meta), meta);
      }
      this.enqueue(message);
    } else {
      this.enqueue(`${Buffer.byteLength(message)} ${message}`);
    }
    return true;
  }

  private format(line: string, meta: SyslogMeta): string {
    let msgId = this.msgIds.get(meta.event);
    if (msgId === undefined) {
      msgId = headerField(meta.event, 32);
      if (this.msgIds.size < 1000) this.msgIds.set(meta.event, msgId);
    }
    const severity = /\.(refused|failed|denied|error|overflow)$/.test(meta.code)
      ? SEVERITY_NOTICE
      : SEVERITY_INFO;
    // RFC 5424 §6.2.3: a time that is not a valid TIMESTAMP is sent as NILVALUE.
    const time = ISO_TIME.test(meta.time) ? meta.time : '-';
    return `<${this.facility * 8 + severity}>1 ${time}${this.header}${msgId} - ${line}`;
  }

  // What an oversize event becomes: enough to find the whole line in the file.
  private stub(line: string, meta: SyslogMeta): string {
    const chain = /^\{"seq":\d+,"prev":"[0-9a-f]{64}",/.exec(line)?.[0] ?? '{';
    const rest = JSON.stringify({
      time: meta.time,
      event: meta.event,
      code: meta.code,
      ...(meta.requestId !== undefined ? { requestId: meta.requestId } : {}),
      truncated: true,
      size: Buffer.byteLength(line),
    });
    return chain + rest.slice(1);
  }

  protected override async writeBatch(lines: string[]): Promise<void> {
    if (this.protocol === 'udp') {
      const udp = this.udp!;
      // Datagrams are sent and forgotten: one that cannot be sent is counted, not retried.
      await Promise.all(
        lines.map(
          (m) =>
            new Promise<void>((resolve) =>
              udp.send(m, this.port, this.host, (err) => {
                if (err) this.drop(1);
                resolve();
              }),
            ),
        ),
      );
      return;
    }
    const socket = await this.connected();
    await new Promise<void>((resolve, reject) => {
      socket.write(lines.join(''), (err) => (err ? reject(err) : resolve()));
    });
  }

  /** The TCP connection, connecting (again) when there is none. */
  private connected(): Promise<Socket> {
    if (this.tcp !== undefined && !this.tcp.destroyed) return Promise.resolve(this.tcp);
    this.connecting ??= new Promise<Socket>((resolve, reject) => {
      const socket = connect({ host: this.host, port: this.port });
      socket.setNoDelay(true);
      socket.setKeepAlive(true, 30_000);
      const fail = (err: Error) => {
        this.connecting = undefined;
        socket.destroy();
        reject(err);
      };
      // A receiver that does not answer at all must not hold the queue for the kernel's minutes.
      socket.setTimeout(5000, () => fail(new Error('connect timed out')));
      socket.once('error', fail);
      socket.once('connect', () => {
        socket.setTimeout(0);
        socket.off('error', fail);
        // Later errors close the socket; the next batch reconnects.
        socket.on('error', (err) => this.logger.warn({ err }, 'audit syslog connection error'));
        socket.on('close', () => {
          if (this.tcp === socket) this.tcp = undefined;
        });
        // Nothing is expected from the receiver; whatever comes is read and ignored.
        socket.resume();
        this.tcp = socket;
        this.connecting = undefined;
        resolve(socket);
      });
    });
    return this.connecting;
  }

  protected override retryDelay(err: unknown): number {
    this.failures++;
    this.tcp?.destroy();
    this.tcp = undefined;
    if (this.failures === 1 || this.failures % 50 === 0) {
      this.logger.warn(
        { err, address: `${this.protocol}://${this.host}:${this.port}`, failures: this.failures },
        'audit syslog unreachable; buffering and retrying',
      );
    }
    // Exponential backoff from 100 ms to 30 s, with jitter so a fleet does not reconnect in step.
    const base = Math.min(100 * 2 ** Math.min(this.failures - 1, 9), 30_000);
    return this.closed ? 10 : base / 2 + Math.random() * (base / 2);
  }

  protected override recovered(): void {
    this.logger.info({ failures: this.failures }, 'audit syslog reachable again');
    this.failures = 0;
  }

  /** Sends what is queued, then closes the socket. */
  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    const tcp = this.tcp;
    this.tcp = undefined;
    if (tcp !== undefined) {
      await new Promise<void>((resolve) => {
        tcp.end(() => resolve());
        setTimeout(resolve, 1000).unref();
      });
      tcp.destroy();
    }
    this.udp?.close();
    this.udp = undefined;
  }

  /** Closes without waiting for what is queued. */
  destroy(): void {
    this.closed = true;
    this.abandon();
    this.tcp?.destroy();
    this.tcp = undefined;
    this.udp?.close();
    this.udp = undefined;
  }
}

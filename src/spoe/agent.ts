/**
 * The SPOP agent server: accepts HAProxy's SPOE connections, runs the HELLO handshake, hands every
 * message of every NOTIFY to an injected decision function, and writes the ACKs. It knows nothing about
 * identity or policy; the decision function does.
 *
 * States of one connection (`#state`) and how it leaves each:
 *
 *   hello ──HAPROXY-HELLO──▶ ready ──agent close()──▶ draining ──in flight done──▶ closed
 *     │  (healthcheck: AGENT-HELLO, end) │                 │ (grace over: DISCONNECT)   ▲
 *     │                                  │                 └────────────────────────────┤
 *     └──── hello timeout, any SpopError, HAPROXY-DISCONNECT, idle timeout ─────────────┘
 *
 * `closed` means our last frame (AGENT-DISCONNECT, or AGENT-HELLO of a health check) is written and the
 * write side ended; input is read and discarded until the peer closes or `CLOSE_LINGER_MS` passes, so
 * that unread input does not turn our close into a reset that could discard that last frame.
 *
 * Fail closed: every NOTIFY gets an ACK, and an ACK carries actions only when the decision function
 * returned them and they fit the negotiated max-frame-size. Otherwise (the function threw or rejected,
 * returned something that is not a list of actions, or the ACK would be too big) the ACK is empty:
 * `txn.gatehouse.status` stays unset and HAProxy's `deny unless { var(txn.gatehouse.status) -m found }`
 * refuses the request. An empty ACK is answered at once rather than left to HAProxy's processing
 * timeout, and the connection stays up for the next requests.
 *
 * Backpressure: at most `maxInFlightPerConnection` NOTIFYs are being decided at once on a connection;
 * at the cap, and while `socket.write` has returned false until 'drain', the socket is paused. Frames
 * already split from the chunk being read wait in a queue bounded by that one chunk.
 */
import net from 'node:net';
import { pino } from 'pino';
import type { Logger } from '../observe/log.js';
import {
  DEFAULT_MAX_FRAME_SIZE,
  decodeDisconnect,
  decodeFrame,
  decodeHaproxyHello,
  decodeNotify,
  encodeAck,
  encodeAgentDisconnect,
  encodeAgentHello,
  FrameSplitter,
  FrameType,
  type HaproxyHello,
  type HelloAnswer,
  negotiateHello,
  type SpopAction,
  SpopError,
  type SpopErrorCode,
  type SpopFrame,
  type SpopMessage,
  SpopStatus,
} from './codec.js';

/** What the decision function learns about the frame a message came in. */
export interface SpoeMessageContext {
  readonly connectionId: number;
  readonly streamId: number;
  readonly frameId: number;
}

/** The decision function: the actions for one message, synchronously whenever it can. */
export type SpoeMessageHandler = (
  message: SpopMessage,
  context: SpoeMessageContext,
) => SpopAction[] | PromiseLike<SpopAction[]>;

/** Options of `SpoeAgent`. */
export interface SpoeAgentOptions {
  /**
   * Called for every message of every NOTIFY; returns the actions for that message (synchronously when
   * it can: a cached decision must not cost an await). Throwing or rejecting fails that frame closed.
   */
  onMessage: SpoeMessageHandler;
  /** Our max-frame-size, negotiated down to HAProxy's (default 16380, HAProxy's own default). */
  maxFrameSize?: number;
  /** Milliseconds a new connection has to send HAPROXY-HELLO (default 5000). */
  helloTimeout?: number;
  /**
   * Milliseconds a connection may sit without traffic and with nothing in flight before the agent
   * closes it (AGENT-DISCONNECT, status 2). Default 0: none, HAProxy's `timeout idle` governs; closing
   * earlier than HAProxy would race its next NOTIFY on that connection. When set, make it longer than
   * HAProxy's `timeout idle`.
   */
  idleTimeout?: number;
  /** NOTIFYs decided at once on one connection before the agent stops reading it (default 64). */
  maxInFlightPerConnection?: number;
  /** Where protocol errors and fail-closed ACKs are logged (default: nowhere). */
  logger?: Logger;
}

/** Counters of a running agent. */
export interface SpoeAgentStats {
  connections: { open: number; total: number; healthchecks: number };
  frames: { in: number; out: number };
  notifies: number;
  acks: number;
  /** ACKs sent without actions because no decision could be given (the request is refused). */
  failClosedAcks: number;
  /** Decisions finished after their connection had closed (never written). */
  droppedAcks: number;
  /** NOTIFYs being decided now, over all connections. */
  inFlight: number;
  /** NOTIFYs received and waiting for an in-flight slot or a drained socket. */
  queued: number;
  /** Bytes written but not yet taken by the kernel, over all connections. */
  bufferedOut: number;
  /** Connections refused or closed with an error, by the status sent in AGENT-DISCONNECT. */
  errors: Partial<Record<SpopErrorCode, number>>;
  socketErrors: number;
}

const DEFAULT_HELLO_TIMEOUT_MS = 5000;
const DEFAULT_MAX_IN_FLIGHT = 64;
const DEFAULT_CLOSE_GRACE_MS = 5000;
/** How long a connection whose last frame is written waits for the peer to close before destroying it. */
const CLOSE_LINGER_MS = 1000;
const NO_ACTIONS: readonly SpopAction[] = Object.freeze([]);

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return (
    v !== null &&
    (typeof v === 'object' || typeof v === 'function') &&
    typeof (v as { then?: unknown }).then === 'function'
  );
}

function parseBind(bind: string | { host: string; port: number }): { host: string; port: number } {
  if (typeof bind !== 'string') return bind;
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(bind) ?? /^([^:]+):(\d+)$/.exec(bind);
  if (!m) throw new TypeError(`bind must be HOST:PORT or [IPv6]:PORT: ${bind}`);
  return { host: m[1]!, port: Number(m[2]) };
}

type State = 'hello' | 'ready' | 'draining' | 'closed';

/** One HAProxy connection. */
class SpoeConnection {
  #state: State = 'hello';
  readonly #splitter: FrameSplitter;
  #maxFrameSize: number;
  #inFlight = 0;
  /** NOTIFYs split from the current chunk while at the in-flight cap or waiting for 'drain'. */
  #queue: Array<SpopFrame | undefined> = [];
  #queueHead = 0;
  #waitingDrain = false;
  #paused = false;
  #helloTimer: NodeJS.Timeout | undefined;
  #lingerTimer: NodeJS.Timeout | undefined;
  readonly #onFrame = (bytes: Buffer): void => this.#frame(bytes);

  constructor(
    readonly id: number,
    readonly socket: net.Socket,
    private readonly agent: SpoeAgent,
    private readonly settings: Settings,
  ) {
    this.#maxFrameSize = settings.maxFrameSize;
    this.#splitter = new FrameSplitter(settings.maxFrameSize);
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#data(chunk));
    socket.on('drain', () => {
      this.#waitingDrain = false;
      this.#pump();
    });
    socket.on('error', (err) => {
      this.agent.counters.socketErrors++;
      this.settings.logger.debug({ conn: this.id, err: err.message }, 'SPOE connection error');
    });
    socket.on('close', () => this.#closed());
    this.#helloTimer = setTimeout(() => {
      this.#helloTimer = undefined;
      this.#fail(
        new SpopError(SpopStatus.TIMEOUT, `no HAPROXY-HELLO within ${this.settings.helloTimeout}ms`),
      );
    }, settings.helloTimeout);
  }

  get queued(): number {
    return this.#queue.length - this.#queueHead;
  }

  #data(chunk: Buffer): void {
    if (this.#state === 'closed') return; // discarding until the peer closes
    // The ACKs decided at once for the frames of one chunk leave in one write.
    const socket = this.socket;
    socket.cork();
    try {
      this.#splitter.push(chunk, this.#onFrame);
    } catch (e) {
      this.#fail(e);
    } finally {
      socket.uncork();
    }
  }

  #frame(bytes: Buffer): void {
    // Frames left in a chunk after the connection failed or finished are ignored.
    if (this.#state === 'closed') return;
    const frame = decodeFrame(bytes);
    this.agent.counters.framesIn++;
    switch (frame.type) {
      case FrameType.NOTIFY:
        if (this.#state === 'hello') throw new SpopError(SpopStatus.INVALID, 'NOTIFY before HAPROXY-HELLO');
        if (this.#state === 'draining') {
          // Read before the pause took hold: decided like the rest of what was received.
          this.#queue.push(frame);
          this.#pump();
        } else if (this.queued > 0 || this.#waitingDrain || this.#inFlight >= this.settings.maxInFlight) {
          this.#queue.push(frame);
          this.#flow();
        } else this.#notify(frame);
        return;
      case FrameType.HAPROXY_HELLO:
        if (this.#state !== 'hello') throw new SpopError(SpopStatus.INVALID, 'second HAPROXY-HELLO');
        this.#hello(frame);
        return;
      case FrameType.HAPROXY_DISCONNECT: {
        const d = decodeDisconnect(frame);
        this.settings.logger.debug(
          { conn: this.id, status: d.status, message: d.message },
          'HAProxy disconnects',
        );
        // HAProxy ignores ACKs after its DISCONNECT; decisions still running are dropped.
        this.#finish(SpopStatus.NORMAL, 'bye');
        return;
      }
      default:
        throw new SpopError(SpopStatus.INVALID, `unexpected frame type ${frame.type} from HAProxy`);
    }
  }

  #hello(frame: SpopFrame): void {
    const hello = decodeHaproxyHello(frame);
    const answer = this.agent.negotiate(hello);
    clearTimeout(this.#helloTimer);
    this.#helloTimer = undefined;
    this.#maxFrameSize = answer.maxFrameSize;
    this.#splitter.maxFrameSize = answer.maxFrameSize;
    if (hello.healthcheck) {
      // SPOE.txt 3.2.4: answer the health check's HELLO; HAProxy then closes.
      this.agent.counters.healthchecks++;
      this.#finish(undefined, undefined, encodeAgentHello(answer));
      return;
    }
    this.#state = 'ready';
    this.#write(encodeAgentHello(answer));
    if (this.settings.idleTimeout > 0) {
      this.socket.setTimeout(this.settings.idleTimeout, () => {
        if (this.#inFlight === 0 && this.queued === 0 && this.#state === 'ready')
          this.#fail(new SpopError(SpopStatus.TIMEOUT, `idle for ${this.settings.idleTimeout}ms`));
      });
    }
  }

  /** Decides one NOTIFY: a sync answer is written now, a promise when it settles. */
  #notify(frame: SpopFrame): void {
    const messages = decodeNotify(frame);
    this.agent.counters.notifies++;
    const { streamId, frameId } = frame;
    let result: SpopAction[] | PromiseLike<SpopAction[]>;
    try {
      // One small context per frame: an async decision may keep it, so it cannot be reused.
      result = this.#decide(messages, { connectionId: this.id, streamId, frameId });
    } catch (e) {
      this.#ack(streamId, frameId, undefined, e);
      return;
    }
    if (!isThenable(result)) {
      this.#ack(streamId, frameId, result, undefined);
      return;
    }
    this.#inFlight++;
    this.agent.counters.inFlight++;
    if (this.#inFlight >= this.settings.maxInFlight) this.#flow();
    // Promise.resolve returns a native promise as it is, and makes a foreign thenable safe: a `then`
    // that throws or calls back twice cannot settle this frame twice.
    Promise.resolve(result).then(
      (actions) => this.#settled(streamId, frameId, actions, undefined),
      (err: unknown) => this.#settled(streamId, frameId, undefined, err ?? new Error('rejected')),
    );
  }

  #decide(messages: SpopMessage[], context: SpoeMessageContext): SpopAction[] | PromiseLike<SpopAction[]> {
    const onMessage = this.settings.onMessage;
    if (messages.length === 1) return onMessage(messages[0]!, context);
    const results: Array<SpopAction[] | PromiseLike<SpopAction[]>> = [];
    let async = false;
    for (const m of messages) {
      let r: SpopAction[] | PromiseLike<SpopAction[]>;
      try {
        r = onMessage(m, context);
      } catch (e) {
        // The frame fails closed; the promises of the messages before must not become unhandled rejections.
        for (const p of results) if (isThenable(p)) Promise.resolve(p).catch(() => {});
        throw e;
      }
      if (isThenable(r)) async = true;
      results.push(r);
    }
    if (async) return Promise.all(results).then(concatActions);
    return concatActions(results as SpopAction[][]);
  }

  #settled(streamId: number, frameId: number, actions: unknown, err: unknown): void {
    this.#inFlight--;
    this.agent.counters.inFlight--;
    this.#ack(streamId, frameId, actions, err);
    this.#pump();
  }

  /** Writes the ACK of one NOTIFY; without a usable decision, an empty one (fail closed). */
  #ack(streamId: number, frameId: number, actions: unknown, err: unknown): void {
    const counters = this.agent.counters;
    if (this.#state === 'closed') {
      counters.droppedAcks++;
      return;
    }
    let ack: Buffer | undefined;
    let reason: string;
    if (err !== undefined) reason = 'decision-failed';
    else if (!Array.isArray(actions)) reason = 'decision-not-a-list';
    else {
      try {
        ack = encodeAck(streamId, frameId, actions as SpopAction[], this.#maxFrameSize);
      } catch (e) {
        err = e;
      }
      reason = err instanceof SpopError ? 'ack-too-big' : 'actions-not-encodable';
    }
    if (ack === undefined) {
      counters.failClosedAcks++;
      this.settings.logger.warn(
        { conn: this.id, streamId, frameId, reason, err: err instanceof Error ? err.message : String(err) },
        'SPOE: no decision for this request, answered without variables (HAProxy refuses it)',
      );
      ack = encodeAck(streamId, frameId, NO_ACTIONS);
    }
    counters.acks++;
    this.#write(ack);
  }

  #write(frame: Buffer): void {
    this.agent.counters.framesOut++;
    if (!this.socket.write(frame) && !this.#waitingDrain) {
      this.#waitingDrain = true;
      this.#flow();
    }
  }

  /** Runs queued NOTIFYs while there is room, then resumes reading or finishes a drain. */
  #pump(): void {
    const max = this.settings.maxInFlight;
    while (this.queued > 0 && this.#inFlight < max && !this.#waitingDrain && this.#state !== 'closed') {
      const frame = this.#queue[this.#queueHead]!;
      this.#queue[this.#queueHead++] = undefined; // let the chunk it points into go
      if (this.#queueHead === this.#queue.length) {
        this.#queue = [];
        this.#queueHead = 0;
      }
      try {
        this.#notify(frame);
      } catch (e) {
        this.#fail(e);
        return;
      }
    }
    if (this.#state === 'draining' && this.#inFlight === 0 && this.queued === 0)
      this.#finish(SpopStatus.NORMAL, 'agent shutting down');
    else this.#flow();
  }

  /** Pauses reading while anything holds it back; resumes when nothing does. */
  #flow(): void {
    const hold =
      this.#state === 'draining' ||
      (this.#state !== 'closed' &&
        (this.#waitingDrain || this.queued > 0 || this.#inFlight >= this.settings.maxInFlight));
    if (hold && !this.#paused) {
      this.#paused = true;
      this.socket.pause();
    } else if (!hold && this.#paused) {
      this.#paused = false;
      this.socket.resume();
    }
  }

  /** The agent is closing: stop reading, decide what was received, then AGENT-DISCONNECT. */
  drain(): void {
    if (this.#state === 'closed') return;
    if (this.#state === 'hello') {
      this.#finish(SpopStatus.NORMAL, 'agent shutting down');
      return;
    }
    this.#state = 'draining';
    this.#pump();
  }

  /** Refuses the connection: AGENT-DISCONNECT with the error's status, then close. */
  #fail(e: unknown): void {
    if (this.#state === 'closed') return;
    const err =
      e instanceof SpopError ? e : new SpopError(SpopStatus.UNKNOWN, 'internal error in the SPOE agent');
    const code = err.code;
    this.agent.counters.errors[code] = (this.agent.counters.errors[code] ?? 0) + 1;
    this.settings.logger.warn(
      { conn: this.id, status: err.status, code, err: err.message, cause: e === err ? undefined : String(e) },
      'SPOE connection refused',
    );
    this.#finish(err.status, err.message);
  }

  /** Ends the connection now with AGENT-DISCONNECT; decisions still running are dropped. */
  finish(status: number, message: string): void {
    this.#finish(status, message);
  }

  /**
   * Writes the last frame (AGENT-DISCONNECT with `status`, or `last`), ends the write side, and reads
   * and discards until the peer closes or the linger time passes.
   */
  #finish(status: number | undefined, message: string | undefined, last?: Buffer): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    clearTimeout(this.#helloTimer);
    this.#helloTimer = undefined;
    this.socket.setTimeout(0);
    this.agent.counters.queueDropped(this.queued);
    this.#queue = [];
    this.#queueHead = 0;
    const frame = last ?? encodeAgentDisconnect(status ?? SpopStatus.NORMAL, message ?? '');
    this.agent.counters.framesOut++;
    if (!this.socket.destroyed) this.socket.end(frame);
    this.#paused = false;
    this.socket.resume();
    this.#lingerTimer = setTimeout(() => this.socket.destroy(), CLOSE_LINGER_MS);
  }

  #closed(): void {
    clearTimeout(this.#helloTimer);
    clearTimeout(this.#lingerTimer);
    this.#helloTimer = undefined;
    if (this.#state !== 'closed') {
      this.#state = 'closed';
      this.agent.counters.queueDropped(this.queued);
      this.#queue = [];
      this.#queueHead = 0;
    }
    this.agent.forget(this);
  }
}

function concatActions(lists: SpopAction[][]): SpopAction[] {
  const out: SpopAction[] = [];
  for (const l of lists) {
    if (!Array.isArray(l)) throw new TypeError('a decision is not a list of actions');
    for (const a of l) out.push(a);
  }
  return out;
}

interface Settings {
  onMessage: SpoeMessageHandler;
  maxFrameSize: number;
  helloTimeout: number;
  idleTimeout: number;
  maxInFlight: number;
  logger: Logger;
}

class Counters {
  connectionsTotal = 0;
  healthchecks = 0;
  framesIn = 0;
  framesOut = 0;
  notifies = 0;
  acks = 0;
  failClosedAcks = 0;
  droppedAcks = 0;
  inFlight = 0;
  errors: Partial<Record<SpopErrorCode, number>> = {};
  socketErrors = 0;
  /** Queued NOTIFYs of a closing connection are never answered; HAProxy fails their requests closed. */
  queueDropped(n: number): void {
    this.droppedAcks += n;
  }
}

/** The SPOP agent server. */
export class SpoeAgent {
  readonly #settings: Settings;
  readonly #server: net.Server;
  readonly #connections = new Set<SpoeConnection>();
  #nextId = 0;
  #closing: Promise<void> | undefined;
  #onEmpty: Array<() => void> = [];
  /** Counters, read through `stats()`. */
  readonly counters = new Counters();

  constructor(options: SpoeAgentOptions) {
    if (typeof options.onMessage !== 'function') throw new TypeError('onMessage must be a function');
    const maxInFlight = options.maxInFlightPerConnection ?? DEFAULT_MAX_IN_FLIGHT;
    if (!Number.isInteger(maxInFlight) || maxInFlight < 1)
      throw new RangeError(`maxInFlightPerConnection must be a positive integer: ${maxInFlight}`);
    this.#settings = {
      onMessage: options.onMessage,
      maxFrameSize: options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE,
      helloTimeout: options.helloTimeout ?? DEFAULT_HELLO_TIMEOUT_MS,
      idleTimeout: options.idleTimeout ?? 0,
      maxInFlight,
      logger: options.logger ?? pino({ enabled: false }),
    };
    // Checks our max-frame-size now rather than at the first HELLO.
    new FrameSplitter(this.#settings.maxFrameSize);
    this.#server = net.createServer((socket) => this.#accept(socket));
    this.#server.on('error', (err) =>
      this.#settings.logger.error({ err: err.message }, 'SPOE listener error'),
    );
  }

  #accept(socket: net.Socket): void {
    if (this.#closing) {
      socket.destroy();
      return;
    }
    this.counters.connectionsTotal++;
    this.#connections.add(new SpoeConnection(++this.#nextId, socket, this, this.#settings));
  }

  /** @internal The AGENT-HELLO answer to a HAPROXY-HELLO (refusals are `SpopError`). */
  negotiate(hello: HaproxyHello): HelloAnswer {
    return negotiateHello(hello, { maxFrameSize: this.#settings.maxFrameSize });
  }

  /** @internal Called when a connection's socket has closed. */
  forget(conn: SpoeConnection): void {
    this.#connections.delete(conn);
    if (this.#connections.size === 0) {
      const waiters = this.#onEmpty;
      this.#onEmpty = [];
      for (const w of waiters) w();
    }
  }

  /** Starts listening on `bind` ("HOST:PORT", "[IPv6]:PORT" or `{ host, port }`; port 0 picks one). */
  listen(bind: string | { host: string; port: number }): Promise<{ port: number }> {
    if (this.#closing) return Promise.reject(new Error('the SPOE agent is closed'));
    const { host, port } = parseBind(bind);
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.#server.once('error', onError);
      this.#server.listen(port, host, () => {
        this.#server.off('error', onError);
        resolve({ port: (this.#server.address() as net.AddressInfo).port });
      });
    });
  }

  /**
   * Stops accepting, lets every connection finish the NOTIFYs it has received and write their ACKs (up
   * to `graceMs`), sends each AGENT-DISCONNECT (status 0, "agent shutting down"), then destroys what
   * remains. Decisions still running after the grace are dropped; HAProxy refuses those requests.
   */
  close(graceMs = DEFAULT_CLOSE_GRACE_MS): Promise<void> {
    this.#closing ??= this.#close(graceMs);
    return this.#closing;
  }

  async #close(graceMs: number): Promise<void> {
    const serverClosed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const c of this.#connections) c.drain();
    await this.#allClosedWithin(graceMs);
    for (const c of this.#connections) c.finish(SpopStatus.NORMAL, 'agent shutting down');
    await this.#allClosedWithin(CLOSE_LINGER_MS);
    for (const c of this.#connections) c.socket.destroy();
    await serverClosed;
  }

  #allClosedWithin(ms: number): Promise<void> {
    if (this.#connections.size === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#onEmpty.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Counters and current load. */
  stats(): SpoeAgentStats {
    const c = this.counters;
    let queued = 0;
    let bufferedOut = 0;
    for (const conn of this.#connections) {
      queued += conn.queued;
      bufferedOut += conn.socket.writableLength;
    }
    return {
      connections: { open: this.#connections.size, total: c.connectionsTotal, healthchecks: c.healthchecks },
      frames: { in: c.framesIn, out: c.framesOut },
      notifies: c.notifies,
      acks: c.acks,
      failClosedAcks: c.failClosedAcks,
      droppedAcks: c.droppedAcks,
      inFlight: c.inFlight,
      queued,
      bufferedOut,
      errors: { ...c.errors },
      socketErrors: c.socketErrors,
    };
  }
}

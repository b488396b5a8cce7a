/**
 * The bounded FIFO of requests waiting for a free server slot. Waiters leave in order when a slot
 * frees up, or with QueueTimeoutError after `queue.timeout`.
 */
import { QueueTimeoutError } from '../errors.js';
import type { Lease, SelectInput } from './types.js';

/** One request waiting for a slot. */
export interface Waiter {
  readonly input: SelectInput;
  readonly exclude: ReadonlySet<string> | undefined;
  resolve(lease: Lease): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout | undefined;
  prev: Waiter | undefined;
  next: Waiter | undefined;
}

/** Doubly linked FIFO so a timed-out waiter leaves in O(1). */
export class WaitQueue {
  head: Waiter | undefined;
  private tail: Waiter | undefined;
  size = 0;

  constructor(
    private readonly upstream: string,
    private readonly max: number,
    private readonly timeout: number,
    private readonly onChange: (size: number) => void,
  ) {}

  /** Queues a request; rejects at once with GH_QUEUE_FULL when the queue is at `queue.max`. */
  wait(input: SelectInput, exclude: ReadonlySet<string> | undefined): Promise<Lease> {
    if (this.size >= this.max) return Promise.reject(new QueueTimeoutError(this.upstream, true));
    if (this.timeout <= 0) return Promise.reject(new QueueTimeoutError(this.upstream));
    return new Promise<Lease>((resolve, reject) => {
      const w: Waiter = {
        input,
        exclude,
        resolve,
        reject,
        timer: undefined,
        prev: this.tail,
        next: undefined,
      };
      w.timer = setTimeout(() => {
        this.remove(w);
        reject(new QueueTimeoutError(this.upstream));
      }, this.timeout);
      if (this.tail) this.tail.next = w;
      else this.head = w;
      this.tail = w;
      this.size++;
      this.onChange(this.size);
    });
  }

  /** Takes a waiter out of the queue (it is then resolved or rejected by the caller). */
  remove(w: Waiter): void {
    if (w.timer) clearTimeout(w.timer);
    w.timer = undefined;
    if (w.prev) w.prev.next = w.next;
    else if (this.head === w) this.head = w.next;
    else return; // already removed
    if (w.next) w.next.prev = w.prev;
    else this.tail = w.prev;
    w.prev = undefined;
    w.next = undefined;
    this.size--;
    this.onChange(this.size);
  }

  /** Rejects every waiter (used on close). */
  rejectAll(err: () => Error): void {
    while (this.head) {
      const w = this.head;
      this.remove(w);
      w.reject(err());
    }
  }
}

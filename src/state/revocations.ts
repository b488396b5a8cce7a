/**
 * Revocations heard by one process: every process keeps verified sessions in a short local cache, so a
 * session revoked (or changed) by one process must be dropped from the caches of the others at once,
 * not when their cache entries expire. A process that revokes publishes a tag (a hash of the session
 * id, never the id); the store delivers it to every other process sharing it (Redis pub/sub between
 * instances, the cluster IPC channel between the workers of one instance), and each cache replays the
 * tags it has not seen yet before it answers from memory.
 *
 * Nothing is pushed into the caches: a cache compares one number (`seq`) per lookup and replays what
 * happened since, so a cache belonging to a configuration that a reload replaced needs no unsubscribing.
 * When the link is down, revocations made elsewhere may be missed: `live` is false, and caches must not
 * answer from memory until it is back (a `reset` tells them to drop everything they hold).
 */

/** How many tags are kept for caches to replay; a cache further behind drops everything instead. */
const KEPT = 256;

/** Sends tags to the other processes sharing the store (set by the store that owns the feed). */
export type PublishTags = (tags: readonly string[]) => Promise<void>;

/** The revocations one process has heard of, in order, for its session caches to replay. */
export class RevocationFeed {
  readonly #ring: Array<string | undefined> = new Array(KEPT);
  #seq = 0;
  #resetAt = 0;
  #live: boolean;
  #publish: PublishTags | undefined;

  /**
   * `live`: whether revocations from other processes reach this one from the start (true for a store
   * that no other process shares). `publish` sends tags to the others (absent: nobody else to tell).
   */
  constructor(live: boolean, publish?: PublishTags) {
    this.#live = live;
    this.#publish = publish;
  }

  /** Increases with every event (a tag heard, or a reset); a cache that saw this number is up to date. */
  get seq(): number {
    return this.#seq;
  }

  /** True while revocations made by other processes are known to reach this one. */
  get live(): boolean {
    return this.#live;
  }

  /**
   * Revokes `tags` in this process at once and sends them to the others. Resolves once they were handed
   * to the link; a failure to send is the caller's to log (the store it revoked in was reachable a
   * moment ago, so the other processes soon stop trusting their caches on their own).
   */
  async publish(tags: readonly string[]): Promise<void> {
    if (tags.length === 0) return;
    this.deliver(tags);
    await this.#publish?.(tags);
  }

  /** Records tags heard from another process (called by the store's link). */
  deliver(tags: readonly string[]): void {
    for (const tag of tags) {
      this.#ring[this.#seq % KEPT] = tag;
      this.#seq++;
    }
  }

  /**
   * The link went down (`live` false) or came back (true): revocations may have been missed either way,
   * so every cache drops what it holds at its next lookup.
   */
  reset(live: boolean): void {
    this.#live = live;
    this.#seq++;
    this.#resetAt = this.#seq;
  }

  /**
   * Calls `forget` with every tag heard after event number `since`, oldest first. False when that history
   * is incomplete (a reset since, or more events than are kept): the caller must drop everything cached.
   */
  replay(since: number, forget: (tag: string) => void): boolean {
    if (since < this.#resetAt || this.#seq - since > KEPT) return false;
    for (let i = since; i < this.#seq; i++) forget(this.#ring[i % KEPT]!);
    return true;
  }
}

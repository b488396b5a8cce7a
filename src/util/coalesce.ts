/**
 * Runs an async task one at a time. A call made while the task runs does not start a second run in
 * parallel: all such calls share one follow-up run, which starts when the current one ends (so a reload
 * asked for during a reload still sees the latest files).
 */
export class Coalescer<T> {
  readonly #task: () => Promise<T>;
  #running: Promise<T> | undefined;
  #queued: Promise<T> | undefined;

  constructor(task: () => Promise<T>) {
    this.#task = task;
  }

  /** Starts the task, or joins the follow-up run when one is already in progress. */
  run(): Promise<T> {
    if (this.#running === undefined) {
      this.#running = this.#task().finally(() => {
        this.#running = undefined;
      });
      return this.#running;
    }
    this.#queued ??= this.#running.then(
      () => this.#next(),
      () => this.#next(),
    );
    return this.#queued;
  }

  /** Resolves when no run is in progress (whatever its outcome). */
  async idle(): Promise<void> {
    await this.#running?.catch(() => undefined);
  }

  #next(): Promise<T> {
    this.#queued = undefined;
    return this.run();
  }
}

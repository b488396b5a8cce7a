/**
 * Watches a set of files for changes and calls back once per burst of changes. Directories are watched
 * rather than files, because editors and secret managers often replace a file by renaming a new one
 * over it, which a watch on the old file would never report.
 */
import { type FSWatcher, watch } from 'node:fs';
import path from 'node:path';

/** Debounced change notification for a set of files. */
export class FileWatcher {
  readonly #onChange: () => void;
  readonly #debounceMs: number;
  readonly #dirs = new Map<string, FSWatcher>();
  #files = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(onChange: () => void, debounceMs = 200) {
    this.#onChange = onChange;
    this.#debounceMs = debounceMs;
  }

  /** Replaces the set of watched files (absolute paths). */
  watch(files: Iterable<string>): void {
    if (this.#closed) return;
    this.#files = new Set([...files].map((f) => path.resolve(f)));
    const wanted = new Set([...this.#files].map((f) => path.dirname(f)));
    for (const [dir, watcher] of this.#dirs) {
      if (!wanted.has(dir)) {
        watcher.close();
        this.#dirs.delete(dir);
      }
    }
    for (const dir of wanted) {
      if (this.#dirs.has(dir)) continue;
      try {
        const watcher = watch(dir, { persistent: false }, (_event, filename) => {
          // Without a file name (some platforms) any change in the directory counts.
          if (filename === null || this.#files.has(path.join(dir, filename.toString()))) this.#schedule();
        });
        watcher.on('error', () => {
          watcher.close();
          this.#dirs.delete(dir);
        });
        this.#dirs.set(dir, watcher);
      } catch {
        // A directory that does not exist yet cannot be watched; SIGHUP still reloads.
      }
    }
  }

  /** Directories currently watched. */
  get directories(): string[] {
    return [...this.#dirs.keys()];
  }

  /** Stops watching; pending notifications are dropped. */
  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const watcher of this.#dirs.values()) watcher.close();
    this.#dirs.clear();
  }

  #schedule(): void {
    if (this.#closed) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (!this.#closed) this.#onChange();
    }, this.#debounceMs);
  }
}

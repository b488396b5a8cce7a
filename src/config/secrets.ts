/**
 * Secret references in configuration values: `env:NAME`, `file:PATH` (relative to the directory of the
 * main configuration file) or a literal. A resolver lives for one load of the configuration, so every
 * reload re-reads the files; the files it read are recorded so that the gateway can watch them.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { GatehouseError } from '../errors.js';
import type { UpstreamBuildContext } from '../upstream/types.js';

/** A secret reference that cannot be resolved (unset variable, unreadable file). */
export class SecretError extends GatehouseError {
  /** The reference as written in the configuration, e.g. `file:certs/site.pem`. */
  readonly ref: string;
  constructor(ref: string, message: string, cause?: unknown) {
    super('GH_SECRET_UNAVAILABLE', 0, message, { cause });
    this.ref = ref;
  }
}

// `${env:NAME}` or `${file:PATH}` inside a larger string.
const EMBEDDED = /\$\{(env|file):([^}]+)\}/g;

/** Resolves `env:`/`file:` references for one configuration load and remembers the files it read. */
export class SecretResolver implements UpstreamBuildContext {
  readonly baseDir: string;
  readonly #env: NodeJS.ProcessEnv;
  readonly #files = new Map<string, string>();
  // Files that could not be read are watched too, so that creating them triggers a reload.
  readonly #attempted = new Set<string>();

  constructor(baseDir: string, env: NodeJS.ProcessEnv = process.env) {
    this.baseDir = baseDir;
    this.#env = env;
  }

  /** Absolute paths of every file secret read (or tried) so far. */
  get files(): string[] {
    return [...this.#attempted];
  }

  /** True when the value is a reference rather than a literal. */
  static isReference(value: string): boolean {
    return value.startsWith('env:') || value.startsWith('file:');
  }

  /** Resolves a whole value: `env:NAME`, `file:PATH`, or a literal returned unchanged. */
  resolveSecret(ref: string): string {
    if (ref.startsWith('env:')) return this.#readEnv(ref, ref.slice(4));
    if (ref.startsWith('file:')) return this.#readFile(ref, ref.slice(5));
    return ref;
  }

  /** Expands `${env:NAME}` and `${file:PATH}` inside a string; a whole `env:`/`file:` value is resolved too. */
  expand(text: string): string {
    if (SecretResolver.isReference(text)) return this.resolveSecret(text);
    if (!text.includes('${')) return text;
    return text.replace(EMBEDDED, (_all, kind: string, name: string) =>
      kind === 'env' ? this.#readEnv(`env:${name}`, name) : this.#readFile(`file:${name}`, name),
    );
  }

  /** Every reference (whole or embedded) in a value, as written. */
  static referencesIn(text: string): string[] {
    if (SecretResolver.isReference(text)) return [text];
    const refs: string[] = [];
    for (const m of text.matchAll(EMBEDDED)) refs.push(`${m[1]}:${m[2]}`);
    return refs;
  }

  /** The absolute path a `file:` reference points to. */
  pathOf(relative: string): string {
    return path.resolve(this.baseDir, relative);
  }

  #readEnv(ref: string, name: string): string {
    const value = this.#env[name];
    if (value === undefined || name === '') {
      throw new SecretError(ref, `environment variable ${name} is not set`);
    }
    return value;
  }

  #readFile(ref: string, relative: string): string {
    const abs = this.pathOf(relative);
    const cached = this.#files.get(abs);
    if (cached !== undefined) return cached;
    this.#attempted.add(abs);
    let text: string;
    try {
      text = readFileSync(abs, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
      throw new SecretError(ref, `cannot read file ${relative} (${code})`, err);
    }
    // Secrets are usually written with `echo`, which appends one newline that is not part of the value.
    if (text.endsWith('\r\n')) text = text.slice(0, -2);
    else if (text.endsWith('\n')) text = text.slice(0, -1);
    this.#files.set(abs, text);
    return text;
  }
}

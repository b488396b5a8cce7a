/**
 * The fuzzing harness: a target is one file under `fuzz/targets/` that exports `defineTarget({...})`: a
 * fast-check arbitrary of inputs and a `run` function that feeds one input to the parser under test and
 * asserts its invariants. Any exception other than an `InvariantViolation` is a crash; a broken invariant
 * is a finding like a crash. An invariant listed in `pending` is one known to fail until a fix lands: its
 * violations are counted and shown, not failed on, so switching it on is deleting one line.
 *
 * Runs are deterministic: a seed and a run count (or the chunk of a long run) give the same inputs again.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';

/** A broken invariant: the parser returned, but what it returned is wrong. */
export class InvariantViolation extends Error {
  readonly invariant: string;
  constructor(invariant: string, detail: string) {
    super(`invariant ${invariant} violated: ${detail}`);
    this.name = 'InvariantViolation';
    this.invariant = invariant;
  }
}

/** Asserts one invariant by id; `detail` is computed only when it fails. */
export type Invariant = (id: string, ok: boolean, detail?: () => string) => void;

/** One fuzz target. */
export interface FuzzTarget<T> {
  /** Short name, the file name without `.ts`; used by `--only` and for `fuzz/corpus/<name>/`. */
  readonly name: string;
  /** One line: the parser under test. */
  readonly description: string;
  /** The invariants asserted, by id, with one line each (printed by `npm run fuzz -- --list`). */
  readonly invariants: Readonly<Record<string, string>>;
  /**
   * Invariants known to fail until a fix elsewhere lands, each with the reason. Violations are
   * counted and their first input shown, but do not fail the run. Remove the line to switch one on.
   */
  readonly pending?: Readonly<Record<string, string>>;
  readonly arbitrary: fc.Arbitrary<T>;
  /** Feeds one input to the code under test; throws on a crash or calls `invariant` with false. */
  run(input: T, invariant: Invariant): void | Promise<void>;
  /** Inputs the CI smoke test (test/fuzz-smoke.test.ts) runs; default 2000. */
  readonly smokeRuns?: number;
  /** True when `run` returns a promise. */
  readonly async?: boolean;
  /** Turns a corpus file into an input (default: a `.json` file is parsed, any other is its text). */
  decode?(text: string): T;
  /** Prints an input for a report (default: JSON). */
  encode?(input: T): string;
}

/** Declares a target; the identity function, for type inference. */
export function defineTarget<T>(target: FuzzTarget<T>): FuzzTarget<T> {
  return target;
}

/** A failure: the first crash or invariant violation of a run, shrunk to a small input. */
export interface Failure {
  readonly kind: 'crash' | 'invariant';
  readonly invariant: string | undefined;
  /** The shrunk input, encoded. */
  readonly input: string;
  readonly error: string;
  /** Seed and path that replay it: `npm run fuzz -- --only NAME --seed SEED --replay PATH`. */
  readonly seed: number;
  readonly path: string;
}

/** Known violations of a pending invariant during a run. */
export interface PendingHits {
  count: number;
  /** The first input that hit it, encoded, and what was wrong. */
  readonly example: string;
  readonly detail: string;
}

/** What one run of a target did. */
export interface RunStats {
  readonly target: string;
  inputs: number;
  ms: number;
  crashes: number;
  violations: number;
  readonly pending: Map<string, PendingHits>;
  /** Seed files run first (`fuzz/corpus/<name>/`). */
  corpus: number;
  /** Inputs slower than `slowMs`, the slowest first seen kept (a hang detector for super-linear cases). */
  slow: number;
  slowest: { ms: number; input: string } | undefined;
  failure: Failure | undefined;
  /** True when the run ended on its time budget rather than its input count. */
  timedOut: boolean;
}

/** Budget and reproduction settings of a run. */
export interface RunOptions {
  /** Inputs to execute (including the corpus). */
  runs: number;
  /** Wall-clock budget in ms (checked between chunks); undefined for none. */
  timeMs?: number | undefined;
  /** Base seed; chunk `i` uses a seed derived from it (with `replay`, the seed of the failing chunk). */
  seed: number;
  /**
   * Inputs per chunk; progress is reported after each. Default: adaptive, doubling from 1 000 while a
   * chunk takes under two seconds, so a slow target still reports often.
   */
  chunk?: number | undefined;
  /** Replays one failure: the `path` printed with it, with the seed printed with it. */
  replay?: string | undefined;
  /** Inputs taking more CPU time than this many ms are reported as slow; undefined turns timing off. */
  slowMs?: number | undefined;
  /** Directory of corpus files (default `fuzz/corpus/<name>/`); false for none. */
  corpusDir?: string | false | undefined;
  /** Treats pending invariants as active: their violations fail and are shrunk to a minimal input. */
  strict?: boolean | undefined;
  /** Called before each chunk with its seed and size (a hang can be replayed from them). */
  onChunk?: ((seed: number, size: number) => void) | undefined;
  /** Called after each chunk. */
  onProgress?: ((stats: RunStats) => void) | undefined;
}

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** Directory of the target files. */
export const TARGET_DIR = path.join(HERE, 'targets');
/** Directory of the committed seed corpora. */
export const CORPUS_DIR = path.join(HERE, 'corpus');

/** Names of the targets: every `fuzz/targets/*.ts`, sorted. */
export function targetNames(): string[] {
  return readdirSync(TARGET_DIR)
    .filter((f) => f.endsWith('.ts'))
    .map((f) => f.slice(0, -3))
    .sort();
}

/** Imports one target by name. */
export async function loadTarget(name: string): Promise<FuzzTarget<unknown>> {
  const mod = (await import(path.join(TARGET_DIR, `${name}.ts`))) as { default: FuzzTarget<unknown> };
  if (mod.default?.name !== name)
    throw new Error(`fuzz/targets/${name}.ts must export default defineTarget({ name: '${name}', ... })`);
  return mod.default;
}

function encodeInput<T>(target: FuzzTarget<T>, input: T): string {
  if (target.encode) return target.encode(input);
  try {
    return JSON.stringify(input);
  } catch {
    return fc.stringify(input);
  }
}

function readCorpus<T>(target: FuzzTarget<T>, dir: string | false | undefined): T[] {
  if (dir === false) return [];
  const d = dir ?? path.join(CORPUS_DIR, target.name);
  let files: string[];
  try {
    files = readdirSync(d).sort();
  } catch {
    return [];
  }
  return files.map((f) => {
    const text = readFileSync(path.join(d, f), 'utf8');
    if (target.decode) return target.decode(text);
    return (f.endsWith('.json') ? JSON.parse(text) : text) as T;
  });
}

/** Derives the seed of chunk `i` from the base seed (a 32-bit mix, so chunks do not repeat inputs). */
export function chunkSeed(seed: number, i: number): number {
  let h = (seed ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) | 0;
}

/** Runs a target within its budget. Stops at the first crash or invariant violation (after shrinking). */
export async function runTarget<T>(target: FuzzTarget<T>, options: RunOptions): Promise<RunStats> {
  const stats: RunStats = {
    target: target.name,
    inputs: 0,
    ms: 0,
    crashes: 0,
    violations: 0,
    pending: new Map(),
    corpus: 0,
    slow: 0,
    slowest: undefined,
    failure: undefined,
    timedOut: false,
  };
  const pending = options.strict ? {} : (target.pending ?? {});
  let current: T | undefined;
  const invariant: Invariant = (id, ok, detail) => {
    if (ok) return;
    const text = detail ? detail() : 'no detail';
    if (!Object.hasOwn(pending, id)) throw new InvariantViolation(id, text);
    const hits = stats.pending.get(id);
    if (hits) hits.count++;
    else stats.pending.set(id, { count: 1, example: encodeInput(target, current as T), detail: text });
  };
  const slowMs = options.slowMs;
  // CPU time, not wall time: on a loaded machine a process waits for a core, which is not the input's doing.
  const cpuMs = (): number => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  const timed = (input: T, started: number): void => {
    const ms = cpuMs() - started;
    if (slowMs === undefined || ms < slowMs) return;
    stats.slow++;
    if (stats.slowest === undefined || ms > stats.slowest.ms) {
      stats.slowest = { ms, input: encodeInput(target, input) };
    }
  };
  const property = target.async
    ? fc.asyncProperty(target.arbitrary, async (input) => {
        current = input;
        const started = slowMs === undefined ? 0 : cpuMs();
        await target.run(input, invariant);
        if (slowMs !== undefined) timed(input, started);
      })
    : fc.property(target.arbitrary, (input) => {
        current = input;
        const started = slowMs === undefined ? 0 : cpuMs();
        target.run(input, invariant);
        if (slowMs !== undefined) timed(input, started);
      });

  const corpus = readCorpus(target, options.corpusDir);
  stats.corpus = corpus.length;
  let chunk = Math.max(1, options.chunk ?? 1000);
  const started = performance.now();
  for (let i = 0; stats.inputs < options.runs; i++) {
    const chunkStarted = performance.now();
    if (options.timeMs !== undefined && chunkStarted - started >= options.timeMs) {
      stats.timedOut = true;
      break;
    }
    const examples = i === 0 ? corpus : [];
    const numRuns = Math.min(chunk, options.runs - stats.inputs);
    const seed = options.replay === undefined ? chunkSeed(options.seed, i) : options.seed;
    options.onChunk?.(seed, numRuns);
    const params: fc.Parameters<[T]> = {
      numRuns: Math.max(numRuns - examples.length, 0),
      seed,
      examples: examples.map((e) => [e] as [T]),
    };
    if (options.replay !== undefined) params.path = options.replay;
    const details = target.async
      ? await fc.check(property as fc.IAsyncProperty<[T]>, params)
      : fc.check(property as fc.IProperty<[T]>, params);
    // fast-check counts the examples in numRuns; skipped (pre-condition) inputs are not executions.
    stats.inputs += details.numRuns;
    stats.ms = performance.now() - started;
    if (details.failed) {
      const err = details.errorInstance;
      const violation = err instanceof InvariantViolation ? err : undefined;
      if (violation) stats.violations++;
      else stats.crashes++;
      const input = details.counterexample?.[0] as T;
      stats.failure = {
        kind: violation ? 'invariant' : 'crash',
        invariant: violation?.invariant,
        input: encodeInput(target, input),
        error: err instanceof Error ? (violation ? err.message : (err.stack ?? err.message)) : String(err),
        seed,
        path: details.counterexamplePath ?? '',
      };
      break;
    }
    options.onProgress?.(stats);
    if (options.replay !== undefined) break;
    if (options.chunk === undefined && performance.now() - chunkStarted < 2000)
      chunk = Math.min(chunk * 2, 64_000);
  }
  stats.ms = performance.now() - started;
  return stats;
}

// ---------------------------------------------------------------------------------------------
// Shared generators

/**
 * Strings built from fragments: mostly tokens from `dictionary` (the pieces a parser cares about),
 * mixed with random characters of `chars`, so generated inputs are near-valid far more often than
 * uniform random strings, and still reach every character.
 */
export function fragments(
  dictionary: readonly string[],
  options: { chars?: fc.Arbitrary<string>; maxParts?: number } = {},
): fc.Arbitrary<string> {
  const chars = options.chars ?? fc.string({ unit: 'binary', maxLength: 3 });
  return fc
    .array(
      fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...dictionary) }, { weight: 1, arbitrary: chars }),
      {
        maxLength: options.maxParts ?? 12,
      },
    )
    .map((parts) => parts.join(''));
}

/** A single character from a set, as an arbitrary of one-character strings. */
export function charFrom(set: string): fc.Arbitrary<string> {
  return fc.constantFrom(...set);
}

/** Latin-1 and control characters as they reach a parser from raw request bytes. */
export const latin1Char: fc.Arbitrary<string> = fc
  .integer({ min: 0, max: 0xff })
  .map((c) => String.fromCharCode(c));

/**
 * Durations, sizes and rates (`src/config/units.ts`): every value a config may hold in `timeouts`,
 * `maxBodySize`, `rateLimit.rate`. Each parser agrees with the grammar it documents, never throws, and
 * gives either undefined or a number that code can use as is (finite, non-negative, an exact integer).
 */
import fc from 'fast-check';
import { parseDuration, parseRate, parseSize } from '../../src/config/units.js';
import { defineTarget, fragments } from '../harness.js';

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  k: 1024,
  m: 1024 ** 2,
  g: 1024 ** 3,
};
const RATE_UNITS: Record<string, number> = {
  s: 1,
  sec: 1,
  second: 1,
  m: 60,
  min: 60,
  minute: 60,
  h: 3600,
  hour: 3600,
  d: 86400,
  day: 86400,
};

// JavaScript's trim() removes these (and the line terminators): the parsers trim their input first.
const TRIMMED = /^[\s\uFEFF\xA0]+|[\s\uFEFF\xA0]+$/g;

/** The documented grammar, written independently of the parser: number, then unit. */
function model(kind: 'duration' | 'size' | 'rate', text: string): number | undefined {
  const t = text.replace(TRIMMED, '');
  let m: RegExpExecArray | null;
  let value: number;
  if (kind === 'duration') {
    m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(t);
    if (!m) return undefined;
    value = Math.round(Number(m[1]) * DURATION_UNITS[m[2]!]!);
  } else if (kind === 'size') {
    m = /^(\d+(?:\.\d+)?)\s*([A-Za-z]*)$/.exec(t);
    if (!m) return undefined;
    const unit = SIZE_UNITS[(m[2] || 'b').toLowerCase()];
    if (unit === undefined) return undefined;
    value = Math.floor(Number(m[1]) * unit);
  } else {
    m = /^(\d+(?:\.\d+)?)\s*\/\s*(s|sec|second|m|min|minute|h|hour|d|day)$/.exec(t);
    if (!m) return undefined;
    return Number(m[1]) / RATE_UNITS[m[2]!]!;
  }
  return value;
}

const NUMBERS = [
  '0',
  '1',
  '5',
  '10',
  '1.5',
  '0.5',
  '007',
  '.5',
  '5.',
  '1e3',
  '-1',
  '+1',
  '0x10',
  '١',
  '9'.repeat(20),
  '9'.repeat(400),
  '0.0000001',
];
const UNITS = [
  'ms',
  's',
  'm',
  'h',
  'd',
  'b',
  'B',
  'kb',
  'KB',
  'KiB',
  'mib',
  'MiB',
  'gib',
  'GB',
  'k',
  'M',
  'g',
  'min',
  'minute',
  'sec',
  'second',
  'hour',
  'hours',
  'day',
  'days',
  'us',
  'w',
  'y',
];
const SEPARATORS = [' ', '', '\t', '\n', '/', ' / ', '\u00a0', '\u2028', '\ufeff', '_', ',', '.'];

const text = fc.oneof(
  {
    weight: 3,
    arbitrary: fc
      .tuple(
        fc.constantFrom(...SEPARATORS),
        fc.constantFrom(...NUMBERS),
        fc.constantFrom(...SEPARATORS, '', '', ''),
        fc.constantFrom(...UNITS),
        fc.constantFrom(...SEPARATORS, '', ''),
      )
      .map((p) => p.join('')),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.nat({ max: 2 ** 53 }), fc.nat(999), fc.constantFrom(...UNITS))
      .map(([n, f, u]) => `${n}.${f}${u}`),
  },
  { weight: 2, arbitrary: fragments([...NUMBERS, ...UNITS, ...SEPARATORS]) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 24 }) },
);

/** A number config code can use as a count of milliseconds or bytes. */
function usable(v: number): boolean {
  return Number.isSafeInteger(v) && v >= 0;
}

export default defineTarget<string>({
  name: 'units',
  description: 'parseDuration, parseSize, parseRate (src/config/units.ts)',
  invariants: {
    'duration-grammar':
      'parseDuration accepts exactly `<decimal><ms|s|m|h|d>` (trimmed) and gives its rounded value',
    'duration-usable': 'a duration is a safe, non-negative integer of milliseconds',
    'size-grammar':
      'parseSize accepts exactly `<decimal>[ ]<unit>` with a known unit and gives its floored value',
    'size-usable': 'a size is a safe, non-negative integer of bytes',
    'rate-grammar':
      'parseRate accepts exactly `<decimal>/<s|sec|second|m|min|minute|h|hour>` and gives events per second',
    'rate-usable': 'a rate is a finite, non-negative number',
  },
  arbitrary: text,
  run(input, invariant) {
    const d = parseDuration(input);
    const dm = model('duration', input);
    invariant('duration-usable', d === undefined || usable(d), () => `parseDuration gave ${d}`);
    invariant(
      'duration-grammar',
      d === dm || (d === undefined && dm !== undefined && !usable(dm)),
      () => `parseDuration gave ${d}, the grammar ${dm}`,
    );
    const s = parseSize(input);
    const sm = model('size', input);
    invariant('size-usable', s === undefined || usable(s), () => `parseSize gave ${s}`);
    invariant(
      'size-grammar',
      s === sm || (s === undefined && sm !== undefined && !usable(sm)),
      () => `parseSize gave ${s}, the grammar ${sm}`,
    );
    const r = parseRate(input);
    const rm = model('rate', input);
    const rateOk = (v: number): boolean => Number.isFinite(v) && v >= 0;
    invariant('rate-usable', r === undefined || rateOk(r), () => `parseRate gave ${r}`);
    invariant(
      'rate-grammar',
      r === rm || (r === undefined && rm !== undefined && !rateOk(rm)),
      () => `parseRate gave ${r}, the grammar ${rm}`,
    );
  },
});

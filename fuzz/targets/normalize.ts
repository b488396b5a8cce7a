/**
 * Request-target and Host normalization (`src/core/normalize.ts`), the path every route match, policy
 * decision and forwarded request is made on. Inputs are raw request targets as Node hands them over
 * (latin1 characters for raw bytes), built from the pieces that confuse path handling.
 */
import fc from 'fast-check';
import { normalizeHost, normalizePath } from '../../src/core/normalize.js';
import { GatehouseError } from '../../src/errors.js';
import { defineTarget, fragments, latin1Char } from '../harness.js';

/** Pieces of request targets: separators, dot segments in every spelling, escapes, path parameters. */
export const PATH_PIECES = [
  '/',
  '//',
  '/./',
  '/../',
  '.',
  '..',
  '%2e',
  '%2E',
  '%2e%2e',
  '.%2e',
  '%2f',
  '%2F',
  '%5c',
  '%5C',
  '\\',
  ';',
  ';x',
  ';jsessionid=1',
  '..;',
  '%3b',
  '%3B',
  '?',
  '?a=1',
  '#',
  '%',
  '%0',
  '%00',
  '%0a',
  '%7f',
  '%ff',
  '%41',
  '%7e',
  '~',
  'a',
  'admin',
  'internal',
  'A',
  '%c0%ae',
  '\u00e9',
  '\u0100',
  '\t',
  ' ',
  '\x7f',
  '*',
  ':',
  '@',
  'http://h',
  'https://h:8/',
  '%25',
  '%252e',
  '&',
  '=',
  '+',
];
const HOST_PIECES = [
  'example.com',
  'a',
  '.',
  '..',
  ':',
  ':80',
  ':65536',
  ':99999',
  '[',
  ']',
  '[::1]',
  '::1',
  '127.0.0.1',
  '-',
  '_',
  'A',
  'xn--',
  '@',
  ' ',
  '%',
  '\u00e9',
  '*',
  '0',
];

const target = fc.oneof(
  {
    weight: 5,
    arbitrary: fragments(PATH_PIECES, { chars: latin1Char, maxParts: 16 }).map((s) =>
      s.startsWith('/') || s.startsWith('http') || s === '*' ? s : `/${s}`,
    ),
  },
  {
    weight: 1,
    arbitrary: fragments(PATH_PIECES, { chars: fc.string({ unit: 'binary', maxLength: 2 }), maxParts: 10 }),
  },
);
const method = fc.constantFrom('GET', 'OPTIONS', 'POST');
const host = fc.oneof(fragments(HOST_PIECES, { chars: latin1Char, maxParts: 6 }), fc.constant(undefined));

// What a normalized path may never contain: an empty segment, a dot segment, an encoded or raw slash or
// backslash, a control character, a raw character outside printable ASCII, a malformed escape.
const FORBIDDEN = /\/\/|\/\.\.?(?:\/|$)|%2f|%5c|\\|[\u0000-\u0020\u007f-\uffff]|%(?![0-9A-F]{2})/i;

function codeOf(err: unknown): string {
  return err instanceof GatehouseError ? err.code : `${(err as Error)?.name}: ${(err as Error)?.message}`;
}

export default defineTarget<{ target: string; method: string; host: string | undefined }>({
  name: 'normalize',
  description: 'normalizePath and normalizeHost (src/core/normalize.ts)',
  invariants: {
    'path-errors': 'normalizePath throws only BadRequestError GH_BAD_PATH (400)',
    'path-slash': 'a normalized path starts with "/", or is "*" for the target "*" of OPTIONS',
    'path-shape':
      'a normalized path has no "//", "." or ".." segment, encoded "/" or "\\", "\\", control or raw non-ASCII character',
    'path-fixed-point': 'normalizing a normalized path gives it back (and the same query)',
    'path-escapes-upper': 'remaining percent-escapes are upper case and never encode an unreserved character',
    'host-errors': 'normalizeHost throws only BadRequestError GH_BAD_HOST (400)',
    'host-shape': 'a normalized host is lower case, has no port, no trailing dot and is a fixed point',
  },
  arbitrary: fc.record({ target, method, host }),
  run({ target, method, host }, invariant) {
    let n: ReturnType<typeof normalizePath> | undefined;
    try {
      n = normalizePath(target, method);
    } catch (err) {
      invariant('path-errors', codeOf(err) === 'GH_BAD_PATH' && (err as GatehouseError).status === 400, () =>
        codeOf(err),
      );
    }
    if (n !== undefined) {
      const p = n.path;
      invariant(
        'path-slash',
        p === '*' ? method === 'OPTIONS' && target === '*' : p.startsWith('/'),
        () => `path ${JSON.stringify(p)}`,
      );
      invariant('path-shape', p === '*' || !FORBIDDEN.test(p), () => `path ${JSON.stringify(p)}`);
      invariant(
        'path-escapes-upper',
        !/%(?:[0-9A-F][a-f]|[a-f][0-9A-Fa-f])|%(?:2D|2E|5F|7E|3[0-9]|[46][1-9A-F]|[57][0-9A])/.test(p),
        () => `path ${JSON.stringify(p)}`,
      );
      if (p.startsWith('/')) {
        let again: ReturnType<typeof normalizePath> | string;
        try {
          again = normalizePath(p + n.query, method);
        } catch (err) {
          again = codeOf(err);
        }
        invariant(
          'path-fixed-point',
          typeof again !== 'string' && again.path === p && again.query === n.query,
          () => `${JSON.stringify(p + n.query)} normalizes to ${JSON.stringify(again)}`,
        );
      }
    }
    let h: string | undefined;
    try {
      h = normalizeHost(host);
    } catch (err) {
      invariant('host-errors', codeOf(err) === 'GH_BAD_HOST' && (err as GatehouseError).status === 400, () =>
        codeOf(err),
      );
    }
    if (h !== undefined && h !== '') {
      let again: string;
      try {
        again = normalizeHost(h);
      } catch (err) {
        again = codeOf(err);
      }
      invariant(
        'host-shape',
        h === h.toLowerCase() && !h.endsWith('.') && !/:\d+$/.test(h.replace(/^\[.*\]$/, '')) && again === h,
        () => `host ${JSON.stringify(host)} gives ${JSON.stringify(h)}, then ${JSON.stringify(again)}`,
      );
    }
  },
});

/**
 * Request-target and Host normalization. The path produced here is the one used for route matching,
 * for policy and for forwarding, so that what is authorized is exactly what the upstream receives
 * (RFC 3986 6.2.2: case and percent-encoding normalization, dot-segment removal).
 */
import { BadRequestError } from '../errors.js';

/** A normalized request target. */
export interface NormalizedTarget {
  /** Normalized path, always starting with `/` (or `*` for `OPTIONS *`). */
  path: string;
  /** Query string as received including the leading `?`, or ''. */
  query: string;
  /** The authority of an absolute-form target (`http://host:port/...`), which replaces Host (RFC 9112 3.2.2). */
  authority?: string;
}

const BAD_PATH = 'GH_BAD_PATH';

function bad(message: string): BadRequestError {
  return new BadRequestError(message, BAD_PATH);
}

// Per character code 0..127: 0 = forbidden, 1 = kept as is, 2 = needs percent-encoding (not a pchar).
const CLASS = new Uint8Array(128);
for (let c = 0x21; c < 0x7f; c++) CLASS[c] = 1;
for (const ch of '"<>`{}|^[]#') CLASS[ch.charCodeAt(0)] = 2;
CLASS[0x5c] = 0; // backslash: some servers treat it as a separator

// Unreserved characters (RFC 3986 2.3): decoded when found percent-encoded.
const UNRESERVED = new Uint8Array(128);
for (let c = 0x30; c <= 0x39; c++) UNRESERVED[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) UNRESERVED[c] = 1;
for (let c = 0x61; c <= 0x7a; c++) UNRESERVED[c] = 1;
for (const ch of '-._~') UNRESERVED[ch.charCodeAt(0)] = 1;

const HEX = '0123456789ABCDEF';

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}

const ABSOLUTE_FORM = /^https?:\/\/([^/?#]*)(.*)$/i;

/**
 * Normalizes a request target: percent-decodes unreserved characters, upper-cases remaining escapes,
 * resolves dot-segments (also encoded ones), collapses duplicate slashes. Throws BadRequestError
 * (`GH_BAD_PATH`, 400) for encoded slashes or backslashes, NUL and control characters, backslashes,
 * malformed escapes, `..` above the root and targets that are not origin-form. Absolute-form targets
 * are accepted and their path used; `*` is accepted only for OPTIONS.
 */
export function normalizePath(rawTarget: string, method?: string): NormalizedTarget {
  let target = rawTarget;
  let authority: string | undefined;
  if (target.charCodeAt(0) !== 0x2f) {
    if (target === '*') {
      if (method === 'OPTIONS') return { path: '*', query: '' };
      throw bad('"*" is only valid for OPTIONS');
    }
    const m = ABSOLUTE_FORM.exec(target);
    if (m === null) throw bad('request target must be a path starting with "/"');
    authority = m[1]!;
    target = m[2]!;
    if (target === '') target = '/';
    else if (target.charCodeAt(0) === 0x3f) target = '/' + target;
  }
  let end = target.indexOf('?');
  let query = '';
  if (end === -1) end = target.length;
  else {
    query = target.slice(end);
    checkQuery(query);
  }
  const path = normalizeRawPath(target, end);
  return authority === undefined ? { path, query } : { path, query, authority };
}

function checkQuery(query: string): void {
  for (let i = 1; i < query.length; i++) {
    const c = query.charCodeAt(i);
    if (c < 0x21 || c === 0x7f || c > 0xff) throw bad('control character in query');
  }
}

/** Fast check: true when `raw[0, end)` is already canonical and can be returned as is. */
function isCanonical(raw: string, end: number): boolean {
  let prev = 0x2f; // raw[0] is '/'
  for (let i = 1; i < end; i++) {
    const c = raw.charCodeAt(i);
    if (c >= 128 || CLASS[c] !== 1 || c === 0x25) return false;
    if (prev === 0x2f && (c === 0x2f || c === 0x2e)) return false; // '//' or a segment starting with '.'
    prev = c;
  }
  return true;
}

function normalizeRawPath(raw: string, end: number): string {
  if (isCanonical(raw, end)) return end === raw.length ? raw : raw.slice(0, end);
  // Decode into segments; '/' never appears decoded because %2F is rejected.
  const segments: string[] = [];
  let seg = '';
  let plainDots = true; // the segment so far consists of (possibly encoded) dots only
  let trailingSlash = false;
  const closeSegment = (final: boolean): void => {
    if (seg === '' && !final) return; // empty segment: duplicate slash
    if (plainDots && seg === '.') {
      trailingSlash = true;
    } else if (plainDots && seg === '..') {
      if (segments.length === 0) throw bad('path escapes the root with ".."');
      segments.pop();
      trailingSlash = true;
    } else if (seg !== '') {
      segments.push(seg);
      trailingSlash = false;
    }
    seg = '';
    plainDots = true;
  };
  for (let i = 1; i < end; i++) {
    let c = raw.charCodeAt(i);
    if (c === 0x2f) {
      closeSegment(false);
      trailingSlash = true;
      continue;
    }
    if (c === 0x25) {
      if (i + 2 >= end) throw bad('malformed percent-escape');
      const h = hexValue(raw.charCodeAt(i + 1));
      const l = hexValue(raw.charCodeAt(i + 2));
      if (h < 0 || l < 0) throw bad('malformed percent-escape');
      c = (h << 4) | l;
      i += 2;
      if (c === 0x2f || c === 0x5c) throw bad('encoded slash or backslash in path');
      if (c < 0x20 || c === 0x7f) throw bad('encoded control character in path');
      if (c < 128 && UNRESERVED[c] === 1) {
        if (c !== 0x2e) plainDots = false;
        seg += String.fromCharCode(c);
      } else {
        plainDots = false;
        seg += '%' + HEX[c >> 4] + HEX[c & 15];
      }
      continue;
    }
    if (c !== 0x2e) plainDots = false;
    if (c < 128) {
      const cls = CLASS[c];
      if (cls === 1) seg += raw[i];
      else if (cls === 2) seg += '%' + HEX[c >> 4] + HEX[c & 15];
      else if (c === 0x5c) throw bad('backslash in path');
      else throw bad('control character in path');
    } else if (c <= 0xff) {
      // Raw bytes above 0x7F arrive as latin1 characters; forward them percent-encoded.
      seg += '%' + HEX[c >> 4] + HEX[c & 15];
    } else {
      throw bad('invalid character in path');
    }
  }
  closeSegment(true);
  if (segments.length === 0) return '/';
  let out = '';
  for (let i = 0; i < segments.length; i++) out += '/' + segments[i];
  return trailingSlash ? out + '/' : out;
}

// A registered name or IPv4 address (letters, digits, '-', '.', '_'), or a bracketed IPv6 literal.
const HOST_RE = /^(?:([a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?)\.?|(\[[0-9a-f:.]+\]))(?::(\d{1,5}))?$/;

/**
 * Lower-cases a Host header value and strips the port and a trailing dot. Throws BadRequestError
 * (`GH_BAD_HOST`, 400) when it is not a valid host. An absent header gives ''.
 */
export function normalizeHost(hostHeader: string | undefined): string {
  if (hostHeader === undefined || hostHeader === '') return '';
  const lower = hostHeader.toLowerCase();
  const m = HOST_RE.exec(lower);
  if (m === null || (m[3] !== undefined && Number(m[3]) > 65535)) {
    throw new BadRequestError('invalid Host header', 'GH_BAD_HOST');
  }
  return (m[1] ?? m[2])!;
}

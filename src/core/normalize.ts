/**
 * Request-target and Host normalization. The path produced here is the one used for route matching,
 * for policy and for forwarding, so that what is authorized is exactly what the upstream receives
 * (RFC 3986 6.2.2: case and percent-encoding normalization, dot-segment removal). Every data plane
 * (the proxy, WebSocket, `check`/`explain`, forward-auth and SPOE) calls `normalizePath`, so each
 * inherits the same rules:
 *
 * - Path parameters: `;` starts a parameter that runs to the end of its segment (RFC 3986 3.3), and
 *   Tomcat, Jetty and Spring act on the path without them (`/admin;x` is `/admin`, `/x/..;/admin` is
 *   `/admin`). `server.pathParameters: strip` (the default) removes every segment's parameters before
 *   dot-segments are resolved, so `..;x` is `..`, `.;x` is `.`, `%2e%2e;x` is `..` and a segment that is
 *   only `;x` collapses like a duplicate slash; `reject` refuses any `;` with 400. An encoded `%3B` is a
 *   literal character, never a delimiter (as for Tomcat).
 * - Refused with 400 `GH_BAD_PATH`: encoded `/` or `\`, raw `\`, control characters, malformed escapes
 *   (also IIS's `%u002e`), `..` above the root, a fragment (`#`, never part of a request-target:
 *   RFC 9112 3.2, CVE-2023-45539), double-encoded dots and separators (`%252e`, `%252f`, `%255c`: a
 *   backend that decodes twice would see a dot-segment or a separator), and overlong UTF-8 (`%c0%ae`
 *   is `.` to a lax decoder: CVE-2008-2938).
 * - Matching is exact after normalization: case-sensitive (`/ADMIN` is not `/admin`, RFC 3986 6.2.2.1
 *   lower-cases only scheme and host) and a trailing dot or space is part of a segment (`/admin.` is not
 *   `/admin`). Backends that fold case or trim segments (IIS, Windows file systems) need their own rules.
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

/**
 * What `;` path parameters become (`server.pathParameters`): `strip` removes them from every segment
 * before dot-segments are resolved; `reject` refuses any `;` in the path with 400 `GH_BAD_PATH`.
 */
export type PathParameters = 'strip' | 'reject';

const BAD_PATH = 'GH_BAD_PATH';

function bad(message: string): BadRequestError {
  return new BadRequestError(message, BAD_PATH);
}

// Per character code 0..127: 0 = forbidden, 1 = kept as is, 2 = needs percent-encoding (not a pchar),
// 3 = ';' (starts a path parameter). Anything but 1 sends a path to the slow path.
const CLASS = new Uint8Array(128);
for (let c = 0x21; c < 0x7f; c++) CLASS[c] = 1;
for (const ch of '"<>`{}|^[]') CLASS[ch.charCodeAt(0)] = 2;
CLASS[0x5c] = 0; // backslash: some servers treat it as a separator
CLASS[0x23] = 0; // '#': a fragment is never part of a request-target
CLASS[0x3b] = 3;

// Unreserved characters (RFC 3986 2.3): decoded when found percent-encoded.
const UNRESERVED = new Uint8Array(128);
for (let c = 0x30; c <= 0x39; c++) UNRESERVED[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) UNRESERVED[c] = 1;
for (let c = 0x61; c <= 0x7a; c++) UNRESERVED[c] = 1;
for (const ch of '-._~') UNRESERVED[ch.charCodeAt(0)] = 1;

const HEX = '0123456789ABCDEF';

// `%25` followed by the escape of '.', '/' or '\' (after unreserved escapes were decoded): a second
// decoding would turn it into a dot-segment or a separator.
const DOUBLE_ENCODED = /%25(?:2[EF]|5C)/i;

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}

/**
 * True when `lead` followed by `next` starts an overlong UTF-8 form (RFC 3629 3: C0 and C1 never occur,
 * E0 needs A0..BF, F0 needs 90..BF), such as `%C0%AE` for '.'.
 */
function overlong(lead: number, next: number): boolean {
  if (next < 0x80 || next > 0xbf) return false;
  if (lead === 0xc0 || lead === 0xc1) return true;
  if (lead === 0xe0) return next < 0xa0;
  return lead === 0xf0 && next < 0x90;
}

const ABSOLUTE_FORM = /^https?:\/\/([^/?#]*)(.*)$/i;

/**
 * Normalizes a request target: percent-decodes unreserved characters, upper-cases remaining escapes,
 * strips or rejects `;` path parameters (`pathParameters`, default `strip`), resolves dot-segments (also
 * encoded ones), collapses duplicate slashes. Throws BadRequestError (`GH_BAD_PATH`, 400) for what the
 * module comment lists and for targets that are not origin-form. Absolute-form targets are accepted
 * (with a non-empty authority) and their path used; `*` is accepted only for OPTIONS.
 */
export function normalizePath(
  rawTarget: string,
  method?: string,
  pathParameters: PathParameters = 'strip',
): NormalizedTarget {
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
    // RFC 9110 4.2.1: an http(s) URI with an empty host is invalid and must be rejected.
    if (authority === '') throw bad('absolute-form target without a host');
    if (target === '') target = '/';
    else if (target.charCodeAt(0) === 0x3f) target = '/' + target;
    else if (target.charCodeAt(0) !== 0x2f) throw bad('fragment in request target');
  }
  let end = target.indexOf('?');
  let query = '';
  if (end === -1) end = target.length;
  else {
    query = target.slice(end);
    checkQuery(query);
  }
  const path = normalizeRawPath(target, end, pathParameters);
  return authority === undefined ? { path, query } : { path, query, authority };
}

function checkQuery(query: string): void {
  for (let i = 1; i < query.length; i++) {
    const c = query.charCodeAt(i);
    if (c < 0x21 || c === 0x7f || c > 0xff) throw bad('control character in query');
    if (c === 0x23) throw bad('fragment in request target');
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

function normalizeRawPath(raw: string, end: number, pathParameters: PathParameters): string {
  if (isCanonical(raw, end)) return end === raw.length ? raw : raw.slice(0, end);
  // Decode into segments; '/' never appears decoded because %2F is rejected.
  const segments: string[] = [];
  let seg = '';
  let plainDots = true; // the segment so far consists of (possibly encoded) dots only
  let inParams = false; // after a ';' in this segment: still checked, no longer kept
  let lead = -1; // the last byte kept in this segment when it was above 0x7F, else -1
  let trailingSlash = false;
  const closeSegment = (final: boolean): void => {
    inParams = false;
    lead = -1;
    if (seg === '' && !final) return; // empty segment: duplicate slash, or only parameters
    if (plainDots && seg === '.') {
      trailingSlash = true;
    } else if (plainDots && seg === '..') {
      if (segments.length === 0) throw bad('path escapes the root with ".."');
      segments.pop();
      trailingSlash = true;
    } else if (seg !== '') {
      if (DOUBLE_ENCODED.test(seg)) throw bad('double-encoded dot, slash or backslash in path');
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
      if (inParams) continue;
      if (c < 128 && UNRESERVED[c] === 1) {
        if (c !== 0x2e) plainDots = false;
        seg += String.fromCharCode(c);
        lead = -1;
      } else {
        plainDots = false;
        if (c >= 0x80) {
          if (lead !== -1 && overlong(lead, c)) throw bad('overlong UTF-8 in path');
          lead = c;
        } else lead = -1;
        seg += '%' + HEX[c >> 4] + HEX[c & 15];
      }
      continue;
    }
    if (c < 128) {
      const cls = CLASS[c];
      if (cls === 0) {
        if (c === 0x5c) throw bad('backslash in path');
        if (c === 0x23) throw bad('fragment in request target');
        throw bad('control character in path');
      }
      if (cls === 3) {
        if (pathParameters === 'reject') throw bad('path parameter (";") in path');
        inParams = true;
        continue;
      }
      if (inParams) continue;
      if (c !== 0x2e) plainDots = false;
      lead = -1;
      seg += cls === 1 ? raw[i] : '%' + HEX[c >> 4] + HEX[c & 15];
    } else if (c <= 0xff) {
      // Raw bytes above 0x7F arrive as latin1 characters; forward them percent-encoded.
      if (inParams) continue;
      plainDots = false;
      if (lead !== -1 && overlong(lead, c)) throw bad('overlong UTF-8 in path');
      lead = c;
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

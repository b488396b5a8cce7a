/**
 * What a rate limit or quota counts per (`key:` in the configuration), read from a request that has
 * been decided:
 *
 *   identity        the verified subject; an anonymous caller (public routes) counts per client address
 *   ip              the effective client address (behind trusted proxies, the forwarded one); IPv6 per /64,
 *                   since one subscriber usually holds a whole /64 and rotates addresses inside it
 *   apiKey          the API key's id; a caller that used another credential counts as `identity` does
 *   claim:<path>    a claim of the identity (dotted for nested ones); without it, as `identity`
 *   header:<name>   a request header's value; without it, per client address. The header is the
 *                   client's to choose, so such a key belongs behind a proxy that sets it
 *
 * The result is a short string with a kind prefix (`id:`, `ip:`, `key:`, `claim:`, `hdr:`), so values of
 * different kinds never share a counter; a value longer than `MAX_VALUE` is replaced by its SHA-256.
 */
import { createHash } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { claimAt } from '../identity/claims.js';
import type { Identity } from '../identity/types.js';
import { isMapped, parseIPv4, parseIPv6 } from '../policy/cidr.js';

/** A compiled `key:` setting. */
export interface KeySpec {
  /** As written (`identity`, `claim:org.team`, `header:X-Tenant`). */
  readonly text: string;
  readonly kind: 'identity' | 'ip' | 'apiKey' | 'claim' | 'header';
  /** The claim path, or the header name in lower case. */
  readonly name: string;
  /** The claim path split at its dots (undefined when it has none). */
  readonly segments: readonly string[] | undefined;
}

/** Compiles a `key:` value the schema accepted. */
export function compileKey(text: string): KeySpec {
  if (text.startsWith('claim:')) {
    const name = text.slice(6);
    return { text, kind: 'claim', name, segments: name.includes('.') ? name.split('.') : undefined };
  }
  if (text.startsWith('header:'))
    return { text, kind: 'header', name: text.slice(7).toLowerCase(), segments: undefined };
  const kind = text === 'ip' || text === 'apiKey' ? text : 'identity';
  return { text, kind, name: '', segments: undefined };
}

/** Values longer than this are counted by their hash (keys stay short; the value is the client's). */
const MAX_VALUE = 200;

function bounded(prefix: string, value: string): string {
  if (value.length <= MAX_VALUE) return prefix + value;
  return `${prefix}#${createHash('sha256').update(value).digest('base64url')}`;
}

const words = new Uint16Array(8);

/**
 * The counted form of a client address: IPv4 as it is (an IPv4-mapped IPv6 address as its IPv4), IPv6
 * as its /64 (`2001:db8:1:2::/64`). Anything else is used as written.
 */
export function addressKey(ip: string): string {
  if (ip.includes(':')) {
    if (!parseIPv6(ip, ip.length, words)) return ip;
    if (isMapped(words)) return `${words[6]! >> 8}.${words[6]! & 255}.${words[7]! >> 8}.${words[7]! & 255}`;
    return `${words[0]!.toString(16)}:${words[1]!.toString(16)}:${words[2]!.toString(16)}:${words[3]!.toString(16)}::/64`;
  }
  return parseIPv4(ip) >= 0 ? ip : ip.toLowerCase();
}

/**
 * True when what `spec` counts per depends on the identity alone (identity, apiKey, claim), so its key
 * can be kept per identity object: authenticators reuse one object per cached credential.
 */
export function byIdentity(spec: KeySpec): boolean {
  return spec.kind === 'identity' || spec.kind === 'apiKey' || spec.kind === 'claim';
}

/** What `spec` counts per for this request (see the module comment). */
export function keyOf(
  spec: KeySpec,
  identity: Identity | undefined,
  clientIp: string,
  headers: IncomingHttpHeaders,
): string {
  switch (spec.kind) {
    case 'ip':
      return `ip:${addressKey(clientIp)}`;
    case 'apiKey':
      if (identity?.authMethod === 'apiKey') return bounded('key:', identity.source);
      break;
    case 'claim': {
      if (identity === undefined) break;
      const v = claimAt(identity.claims, spec.name, spec.segments);
      if (typeof v === 'string' && v !== '') return bounded('claim:', v);
      if (typeof v === 'number' || typeof v === 'boolean') return `claim:${v}`;
      break;
    }
    case 'header': {
      const v = headers[spec.name];
      const value = Array.isArray(v) ? v.join(',') : v;
      if (value !== undefined && value !== '') return bounded('hdr:', value);
      return `ip:${addressKey(clientIp)}`;
    }
    default:
      break;
  }
  return identity === undefined ? `ip:${addressKey(clientIp)}` : bounded('id:', identity.subject);
}

/**
 * The counted forms an operator's `key` value may stand for (the admin quota API's `?key=`): the value
 * as the spec's kind counts it, and for the kinds that fall back to the client address, that address.
 */
export function keysForValue(spec: KeySpec, value: string): string[] {
  const out: string[] = [];
  switch (spec.kind) {
    case 'ip':
      return [`ip:${addressKey(value)}`];
    case 'apiKey':
      out.push(bounded('key:', value), bounded('id:', value));
      break;
    case 'claim':
      out.push(bounded('claim:', value), bounded('id:', value));
      break;
    case 'header':
      out.push(bounded('hdr:', value));
      break;
    default:
      out.push(bounded('id:', value));
  }
  if (/^[0-9a-fA-F:.]+$/.test(value) && (value.includes('.') || value.includes(':')))
    out.push(`ip:${addressKey(value)}`);
  return out;
}

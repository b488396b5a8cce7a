/**
 * Cookie stickiness. The cookie value is the endpoint's opaque stable id (a short hash of the configured
 * URL and address), so it survives reloads and restarts and reveals no internal address.
 */
import type { UpstreamConfig } from '../config/schema.js';

/** Finds one cookie's value in a Cookie header without parsing the others. */
export function getCookie(header: string | string[] | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  const text = Array.isArray(header) ? header.join('; ') : header;
  let from = 0;
  while (from < text.length) {
    let end = text.indexOf(';', from);
    if (end === -1) end = text.length;
    const eq = text.indexOf('=', from);
    if (eq !== -1 && eq < end && text.slice(from, eq).trim() === name) {
      let value = text.slice(eq + 1, end).trim();
      if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
      return value;
    }
    from = end + 1;
  }
  return undefined;
}

/** Sticky-cookie settings compiled once per upstream. */
export class StickyCookie {
  readonly name: string;
  private readonly attributes: string;

  constructor(def: NonNullable<UpstreamConfig['sticky']>) {
    this.name = def.cookie;
    let attrs = `; Path=${def.path}; HttpOnly; SameSite=Lax`;
    if (def.maxAge !== undefined) attrs += `; Max-Age=${Math.floor(def.maxAge / 1000)}`;
    if (def.secure) attrs += '; Secure';
    this.attributes = attrs;
  }

  /** The endpoint id the client is pinned to, if any. */
  read(headers: { cookie?: string | string[] | undefined }): string | undefined {
    return getCookie(headers.cookie, this.name);
  }

  /** The Set-Cookie value pinning a client to `id`. */
  issue(id: string): string {
    return `${this.name}=${id}${this.attributes}`;
  }
}

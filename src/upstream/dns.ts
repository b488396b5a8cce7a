/**
 * Turns server URLs into endpoints' addresses. IP literals are used as they are; host names are looked
 * up with the system resolver (so /etc/hosts applies) and every address, IPv4 and IPv6, is used.
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';

/** One server URL taken apart. */
export interface ParsedServerUrl {
  protocol: 'http:' | 'https:';
  /** Host name or IP address without brackets. */
  host: string;
  port: number;
  /** Host header value: host[:port] as configured (default port omitted). */
  hostHeader: string;
  /** True when `host` is a name that needs DNS. */
  needsLookup: boolean;
}

/** Parses a server URL that the schema already validated as an http(s) origin. */
export function parseServerUrl(url: string): ParsedServerUrl {
  const u = new URL(url);
  const protocol = u.protocol === 'https:' ? 'https:' : 'http:';
  const host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname;
  const port = u.port ? Number(u.port) : protocol === 'https:' ? 443 : 80;
  return { protocol, host, port, hostHeader: u.host, needsLookup: isIP(host) === 0 };
}

/** `http://10.0.0.5:9001` or `http://[::1]:9001`. */
export function originFor(protocol: string, address: string, port: number): string {
  return `${protocol}//${isIP(address) === 6 ? `[${address}]` : address}:${port}`;
}

/** Every address a host name resolves to, deduplicated, in resolver order. Rejects when none. */
export async function resolveAll(host: string): Promise<string[]> {
  const answers = await lookup(host, { all: true });
  const out: string[] = [];
  for (const a of answers) if (!out.includes(a.address)) out.push(a.address);
  if (out.length === 0) throw new Error(`no addresses for ${host}`);
  return out;
}

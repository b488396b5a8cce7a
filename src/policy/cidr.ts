/**
 * CIDR matching for `sourceIp` rules. It answers what `node:net` BlockList answers (IPv4, IPv6, and
 * IPv4-mapped IPv6 in both directions) without its cost: BlockList.check builds native socket-address
 * objects on every call (microseconds), while this parses the address with charCodeAt into integers and
 * allocates nothing, which keeps policy evaluation on the hot path cheap.
 */

/** A set of IPv4 and IPv6 addresses and blocks, compiled once. */
export interface CidrSet {
  /** True when `ip` is in the set, false when not, undefined when `ip` is not an IP address. */
  has(ip: string): boolean | undefined;
}

// Scratch space for parsing IPv6 addresses; evaluation is synchronous, so one buffer suffices.
const WORDS = new Uint16Array(8);
const MAPPED = new Uint16Array(8);

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}

/** Parses a dotted-quad IPv4 address in `s[start, end)` to an unsigned 32-bit number; -1 when invalid. */
export function parseIPv4(s: string, start = 0, end = s.length): number {
  let value = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x30 && c <= 0x39) {
      // Leading zeros are refused: some parsers read them as octal.
      if (digits > 0 && part === 0) return -1;
      part = part * 10 + (c - 0x30);
      if (++digits > 3 || part > 255) return -1;
    } else if (c === 0x2e) {
      if (digits === 0 || ++dots > 3) return -1;
      value = value * 256 + part;
      part = 0;
      digits = 0;
    } else return -1;
  }
  if (digits === 0 || dots !== 3) return -1;
  return value * 256 + part;
}

/** Parses an IPv6 address (RFC 4291 2.2, `::` and a trailing dotted quad) in `s[0, end)` into `out`. */
export function parseIPv6(s: string, end: number, out: Uint16Array): boolean {
  let i = 0;
  let w = 0;
  let gap = -1;
  if (end >= 2 && s.charCodeAt(0) === 0x3a) {
    if (s.charCodeAt(1) !== 0x3a) return false;
    gap = 0;
    i = 2;
  }
  while (i < end) {
    if (w === 8) return false;
    let j = i;
    let v = 0;
    while (j < end && j - i < 5) {
      const h = hexValue(s.charCodeAt(j));
      if (h < 0) break;
      v = v * 16 + h;
      j++;
    }
    if (j < end && s.charCodeAt(j) === 0x2e) {
      if (w > 6) return false;
      const v4 = parseIPv4(s, i, end);
      if (v4 < 0) return false;
      out[w++] = v4 >>> 16;
      out[w++] = v4 & 0xffff;
      break;
    }
    if (j === i || j - i > 4) return false;
    out[w++] = v;
    if (j === end) break;
    if (s.charCodeAt(j) !== 0x3a) return false;
    j++;
    if (j < end && s.charCodeAt(j) === 0x3a) {
      if (gap !== -1) return false;
      gap = w;
      j++;
    } else if (j === end) return false;
    i = j;
  }
  if (gap === -1) return w === 8;
  if (w === 8) return false;
  const tail = w - gap;
  for (let k = 0; k < tail; k++) out[7 - k] = out[w - 1 - k]!;
  for (let k = gap; k < 8 - tail; k++) out[k] = 0;
  return true;
}

/** True for an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) parsed by `parseIPv6`. */
export function isMapped(words: Uint16Array): boolean {
  return (
    words[0] === 0 &&
    words[1] === 0 &&
    words[2] === 0 &&
    words[3] === 0 &&
    words[4] === 0 &&
    words[5] === 0xffff
  );
}

interface Block6 {
  readonly net: Uint16Array;
  readonly bits: number;
}

function in6(words: Uint16Array, block: Block6): boolean {
  const net = block.net;
  let bits = block.bits;
  let k = 0;
  for (; bits >= 16; bits -= 16, k++) if (words[k] !== net[k]) return false;
  if (bits > 0) {
    const mask = (0xffff << (16 - bits)) & 0xffff;
    if ((words[k]! & mask) !== net[k]) return false;
  }
  return true;
}

class Cidrs implements CidrSet {
  readonly #nets4: Uint32Array;
  readonly #masks4: Uint32Array;
  readonly #blocks6: readonly Block6[];

  constructor(v4: Array<[number, number]>, v6: Block6[]) {
    this.#nets4 = Uint32Array.from(v4, ([net]) => net);
    this.#masks4 = Uint32Array.from(v4, ([, mask]) => mask);
    this.#blocks6 = v6;
  }

  #has4(addr: number): boolean {
    const nets = this.#nets4;
    const masks = this.#masks4;
    for (let i = 0; i < nets.length; i++) if ((addr & masks[i]!) >>> 0 === nets[i]) return true;
    return false;
  }

  #has6(words: Uint16Array): boolean {
    const blocks = this.#blocks6;
    for (let i = 0; i < blocks.length; i++) if (in6(words, blocks[i]!)) return true;
    return false;
  }

  has(ip: string): boolean | undefined {
    let end = ip.indexOf('%');
    if (end === -1) end = ip.length;
    if (ip.indexOf(':') === -1) {
      const v4 = parseIPv4(ip, 0, end);
      if (v4 < 0) return undefined;
      if (this.#has4(v4)) return true;
      if (this.#blocks6.length === 0) return false;
      // An IPv4 client is also ::ffff:a.b.c.d for IPv6 blocks, as BlockList does.
      MAPPED[5] = 0xffff;
      MAPPED[6] = v4 >>> 16;
      MAPPED[7] = v4 & 0xffff;
      return this.#has6(MAPPED);
    }
    if (!parseIPv6(ip, end, WORDS)) return undefined;
    if (isMapped(WORDS) && this.#has4(((WORDS[6]! << 16) | WORDS[7]!) >>> 0)) return true;
    return this.#has6(WORDS);
  }
}

/**
 * Compiles addresses and CIDR blocks (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`). Host bits below the
 * prefix are ignored (`10.1.2.3/8` is `10.0.0.0/8`). Entries that do not parse are reported through
 * `problem(index, message)` and left out.
 */
export function compileCidrs(
  cidrs: readonly string[],
  problem: (index: number, message: string) => void,
): CidrSet {
  const v4: Array<[number, number]> = [];
  const v6: Block6[] = [];
  cidrs.forEach((cidr, index) => {
    const slash = cidr.indexOf('/');
    const addr = slash === -1 ? cidr : cidr.slice(0, slash);
    const bitsText = slash === -1 ? undefined : cidr.slice(slash + 1);
    const bits =
      bitsText === undefined ? undefined : /^\d{1,3}$/.test(bitsText) ? Number(bitsText) : Number.NaN;
    if (addr.includes(':')) {
      const net = new Uint16Array(8);
      const prefix = bits ?? 128;
      if (!parseIPv6(addr, addr.length, net) || !(prefix >= 0 && prefix <= 128)) {
        problem(index, `invalid IPv6 address or block "${cidr}"`);
        return;
      }
      for (let k = 0, left = prefix; k < 8; k++, left -= 16) {
        net[k] = left >= 16 ? net[k]! : left <= 0 ? 0 : net[k]! & ((0xffff << (16 - left)) & 0xffff);
      }
      v6.push({ net, bits: prefix });
      return;
    }
    const value = parseIPv4(addr);
    const prefix = bits ?? 32;
    if (value < 0 || !(prefix >= 0 && prefix <= 32)) {
      problem(index, `invalid IPv4 address or block "${cidr}"`);
      return;
    }
    const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
    v4.push([(value & mask) >>> 0, mask]);
  });
  return new Cidrs(v4, v6);
}

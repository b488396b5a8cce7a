import assert from 'node:assert/strict';
import { BlockList, isIP } from 'node:net';
import { test } from 'node:test';
import { compileCidrs, parseIPv4, parseIPv6 } from '../src/policy/cidr.js';

// A small seeded generator so the comparison is the same on every run.
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const v4text = (n: number): string => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');

/** RFC 5952 text: the longest run of two or more zero words becomes `::`. */
function v6text(words: number[]): string {
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (ws: number[]): string => ws.map((w) => w.toString(16)).join(':');
  if (best === -1) return hex(words);
  return `${hex(words.slice(0, best))}::${hex(words.slice(best + bestLen))}`;
}

test('parsers accept exactly what node:net isIP accepts', () => {
  const samples = [
    '0.0.0.0',
    '255.255.255.255',
    '192.0.2.1',
    '256.0.0.1',
    '1.2.3',
    '1.2.3.4.5',
    '01.2.3.4',
    '1.2.3.',
    '.1.2.3',
    '1..2.3',
    '1.2.3.4 ',
    '',
    '::',
    '::1',
    '1::',
    '::ffff:192.0.2.1',
    '::FFFF:c000:0201',
    '2001:db8::1',
    '2001:DB8:0:0:0:0:0:1',
    '1:2:3:4:5:6:7:8',
    '1:2:3:4:5:6:7:8:9',
    '1:2:3:4:5:6:7::',
    '::2:3:4:5:6:7:8',
    '1:2:3:4:5:6:7::8',
    '1::2::3',
    ':::',
    ':1::',
    '1:',
    '12345::',
    'g::1',
    '1:2:3:4:5:6:1.2.3.4',
    '1:2:3:4:5:6:7:1.2.3.4',
    '::1.2.3.4',
    '::1.2.3',
    '::1.2.3.256',
    '1.2.3.4::',
    'fe80::1:2',
  ];
  for (const s of samples) {
    const family = isIP(s);
    assert.equal(parseIPv4(s) >= 0, family === 4, `IPv4 ${JSON.stringify(s)}`);
    assert.equal(parseIPv6(s, s.length, new Uint16Array(8)), family === 6, `IPv6 ${JSON.stringify(s)}`);
  }
  const out = new Uint16Array(8);
  assert.ok(parseIPv6('2001:db8::ff00:42:8329', 22, out));
  assert.deepEqual([...out], [0x2001, 0xdb8, 0, 0, 0, 0xff00, 0x42, 0x8329]);
  assert.equal(parseIPv4('203.0.113.7'), 0xcb007107);
});

test('compileCidrs answers what BlockList answers (random blocks and addresses)', () => {
  const rand = prng(20240108);
  const int = (n: number): number => Math.floor(rand() * n);
  const word = (): number => (rand() < 0.4 ? 0 : int(0x10000));
  for (let round = 0; round < 40; round++) {
    const cidrs: string[] = [];
    const blocks = new BlockList();
    const bases4: number[] = [];
    const bases6: number[][] = [];
    for (let i = 0; i < 1 + int(4); i++) {
      const kind = int(3);
      if (kind === 0) {
        const base = int(2 ** 32);
        const bits = int(33);
        bases4.push(base);
        cidrs.push(`${v4text(base)}/${bits}`);
        blocks.addSubnet(v4text(base), bits, 'ipv4');
      } else if (kind === 1) {
        const words = Array.from({ length: 8 }, word);
        const bits = int(129);
        bases6.push(words);
        cidrs.push(`${v6text(words)}/${bits}`);
        blocks.addSubnet(v6text(words), bits, 'ipv6');
      } else {
        const base = int(2 ** 32);
        const bits = 96 + int(33);
        bases4.push(base);
        cidrs.push(`::ffff:${v4text(base)}/${bits}`);
        blocks.addSubnet(`::ffff:${v4text(base)}`, bits, 'ipv6');
      }
    }
    const set = compileCidrs(cidrs, (i, m) => assert.fail(`${cidrs[i]}: ${m}`));
    const probes: string[] = [];
    for (let i = 0; i < 60; i++) {
      const near4 = bases4.length > 0 && rand() < 0.6;
      const v4 = near4 ? (bases4[int(bases4.length)]! ^ int(1 << int(32))) >>> 0 : int(2 ** 32);
      probes.push(
        v4text(v4),
        `::ffff:${v4text(v4)}`,
        `::ffff:${(v4 >>> 16).toString(16)}:${(v4 & 0xffff).toString(16)}`,
      );
      const near6 = bases6.length > 0 && rand() < 0.6;
      const words = near6 ? [...bases6[int(bases6.length)]!] : Array.from({ length: 8 }, word);
      const k = int(8);
      words[k] = words[k]! ^ (int(0x10000) >> int(16));
      probes.push(v6text(words), words.map((w) => w.toString(16).toUpperCase()).join(':'));
    }
    for (const ip of probes) {
      const expected = blocks.check(ip, isIP(ip) === 4 ? 'ipv4' : 'ipv6');
      assert.equal(set.has(ip), expected, `${ip} in ${cidrs.join(' ')}`);
    }
  }
});

test('compileCidrs: zones, garbage and problems', () => {
  const set = compileCidrs(['fe80::/10', '10.0.0.0/8'], () => assert.fail('valid'));
  assert.equal(set.has('fe80::1%eth0'), true);
  assert.equal(set.has('10.9.9.9'), true);
  assert.equal(set.has(''), undefined);
  assert.equal(set.has('localhost'), undefined);
  assert.equal(set.has('10.0.0'), undefined);
  const problems: string[] = [];
  compileCidrs(['10.0.0.0/33', '::/129', 'x', '1.2.3.4/', '1.2.3.4/-1'], (i, m) =>
    problems.push(`${i} ${m}`),
  );
  assert.equal(problems.length, 5);
  assert.match(problems[0]!, /^0 invalid IPv4 address or block "10\.0\.0\.0\/33"$/);
});

/**
 * What limits count per (src/limits/keys.ts) and the windows quotas count in (src/limits/window.ts):
 * every key kind with its fallback, IPv6 per /64, long values hashed, the admin API's key forms, and
 * windows aligned to a zone's midnight across daylight saving time and month lengths.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Identity } from '../src/identity/types.js';
import { addressKey, compileKey, keyOf, keysForValue } from '../src/limits/keys.js';
import { WindowClock, windowAt } from '../src/limits/window.js';

function identity(extra: Partial<Identity> = {}): Identity {
  return {
    subject: 'alice',
    user: 'alice',
    email: 'alice@example.com',
    groups: ['eng'],
    claims: { org: 'acme', tenant: { id: 42 }, admin: true, empty: '' },
    authMethod: 'bearer',
    source: 'https://idp.example.com',
    expiresAt: undefined,
    ...extra,
  };
}

test('client addresses: IPv4 as is, IPv6 per /64 in any spelling, IPv4-mapped IPv6 as IPv4', () => {
  assert.equal(addressKey('203.0.113.7'), '203.0.113.7');
  assert.equal(addressKey('2001:db8:1:2:3:4:5:6'), '2001:db8:1:2::/64');
  assert.equal(addressKey('2001:0db8:0001:0002:ffff::1'), '2001:db8:1:2::/64');
  assert.equal(addressKey('2001:DB8:1:2::'), '2001:db8:1:2::/64');
  assert.notEqual(addressKey('2001:db8:1:3::1'), addressKey('2001:db8:1:2::1'));
  assert.equal(addressKey('::ffff:198.51.100.9'), '198.51.100.9');
  assert.equal(addressKey('::1'), '0:0:0:0::/64');
});

test('each key kind, and what it falls back to', () => {
  const headers = { 'x-tenant': 'blue', 'x-list': ['a', 'b'] as unknown as string };
  const id = identity();
  const k = (text: string, who: Identity | undefined, h: Record<string, string> = headers) =>
    keyOf(compileKey(text), who, '2001:db8::5', h);
  assert.equal(k('identity', id), 'id:alice');
  assert.equal(k('identity', undefined), 'ip:2001:db8:0:0::/64');
  assert.equal(k('ip', id), 'ip:2001:db8:0:0::/64');
  // apiKey: the key's id for API-key callers, the subject for others, the address for anonymous ones.
  assert.equal(k('apiKey', identity({ authMethod: 'apiKey', source: 'etl-agent' })), 'key:etl-agent');
  assert.equal(k('apiKey', id), 'id:alice');
  assert.equal(k('apiKey', undefined), 'ip:2001:db8:0:0::/64');
  // claim: top-level, nested, non-string values; missing or empty claims fall back to the subject.
  assert.equal(k('claim:org', id), 'claim:acme');
  assert.equal(k('claim:tenant.id', id), 'claim:42');
  assert.equal(k('claim:admin', id), 'claim:true');
  assert.equal(k('claim:empty', id), 'id:alice');
  assert.equal(k('claim:nope', id), 'id:alice');
  assert.equal(k('claim:org', undefined), 'ip:2001:db8:0:0::/64');
  // header: case-insensitive name, repeated values joined; absent or empty: the address.
  assert.equal(k('header:X-Tenant', id), 'hdr:blue');
  assert.equal(k('header:x-list', id), 'hdr:a,b');
  assert.equal(k('header:X-Other', id), 'ip:2001:db8:0:0::/64');
  assert.equal(k('header:X-Tenant', id, { 'x-tenant': '' }), 'ip:2001:db8:0:0::/64');
});

test('long values are counted by their hash, so keys stay short and distinct values stay apart', () => {
  const long = 'x'.repeat(5000);
  const a = keyOf(compileKey('header:x-t'), undefined, '127.0.0.1', { 'x-t': long });
  const b = keyOf(compileKey('header:x-t'), undefined, '127.0.0.1', { 'x-t': `${long}y` });
  assert.match(a, /^hdr:#[A-Za-z0-9_-]{43}$/);
  assert.notEqual(a, b);
  const subject = keyOf(compileKey('identity'), identity({ subject: 's'.repeat(300) }), '127.0.0.1', {});
  assert.match(subject, /^id:#/);
  // The admin API finds the same counter from the value.
  assert.deepEqual(keysForValue(compileKey('identity'), 's'.repeat(300)), [subject]);
});

test('the admin API key value names the counters it stands for', () => {
  assert.deepEqual(keysForValue(compileKey('identity'), 'alice'), ['id:alice']);
  assert.deepEqual(keysForValue(compileKey('identity'), '203.0.113.7'), ['id:203.0.113.7', 'ip:203.0.113.7']);
  assert.deepEqual(keysForValue(compileKey('ip'), '2001:db8:1:2::99'), ['ip:2001:db8:1:2::/64']);
  assert.deepEqual(keysForValue(compileKey('apiKey'), 'etl'), ['key:etl', 'id:etl']);
  assert.deepEqual(keysForValue(compileKey('claim:org'), 'acme'), ['claim:acme', 'id:acme']);
  assert.deepEqual(keysForValue(compileKey('header:X-T'), 'blue'), ['hdr:blue']);
});

test('quota windows: days from the zone midnight, across daylight saving time; hours in a half-hour zone', () => {
  // 2026-03-29 is the day Paris moves from +01:00 to +02:00: that day has 23 hours.
  const paris = windowAt(86_400_000, 'Europe/Paris', Date.UTC(2026, 2, 29, 12));
  assert.equal(new Date(paris.start).toISOString(), '2026-03-28T23:00:00.000Z');
  assert.ok(paris.end > Date.UTC(2026, 2, 29, 12));
  const utc = windowAt(86_400_000, 'UTC', Date.UTC(2026, 2, 29, 12));
  assert.deepEqual(utc, { start: Date.UTC(2026, 2, 29), end: Date.UTC(2026, 2, 30) });
  const kolkata = windowAt(3_600_000, 'Asia/Kolkata', Date.UTC(2026, 0, 1, 10, 45));
  assert.equal(new Date(kolkata.start).toISOString(), '2026-01-01T10:30:00.000Z');
  assert.equal(kolkata.end - kolkata.start, 3_600_000);
});

test('quota windows: calendar months in a zone, of their own lengths, the turn of the year included', () => {
  const feb = windowAt('month', 'Europe/Paris', Date.UTC(2026, 1, 10));
  assert.equal(new Date(feb.start).toISOString(), '2026-01-31T23:00:00.000Z');
  assert.equal(new Date(feb.end).toISOString(), '2026-02-28T23:00:00.000Z');
  // March in Paris starts at +01:00 and ends at +02:00: 31 days less one hour.
  const mar = windowAt('month', 'Europe/Paris', Date.UTC(2026, 2, 15));
  assert.equal(new Date(mar.start).toISOString(), '2026-02-28T23:00:00.000Z');
  assert.equal(new Date(mar.end).toISOString(), '2026-03-31T22:00:00.000Z');
  const dec = windowAt('month', 'America/New_York', Date.UTC(2026, 11, 31, 12));
  assert.equal(new Date(dec.start).toISOString(), '2026-12-01T05:00:00.000Z');
  assert.equal(new Date(dec.end).toISOString(), '2027-01-01T05:00:00.000Z');
  // Just before midnight local time on the last day still belongs to that month.
  const late = windowAt('month', 'America/New_York', Date.UTC(2027, 0, 1, 4, 59));
  assert.equal(late.start, dec.start);
});

test('a window clock reuses its window until it ends, and follows the clock back', () => {
  const clock = new WindowClock(3_600_000, 'UTC');
  const a = clock.at(Date.UTC(2026, 0, 1, 10, 5));
  assert.equal(clock.at(Date.UTC(2026, 0, 1, 10, 59)), a);
  const b = clock.at(Date.UTC(2026, 0, 1, 11, 0));
  assert.notEqual(b, a);
  assert.equal(b.start, Date.UTC(2026, 0, 1, 11));
  assert.equal(clock.at(Date.UTC(2026, 0, 1, 10, 30)).start, Date.UTC(2026, 0, 1, 10));
});

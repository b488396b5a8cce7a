import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import { readWholeLines } from '../src/observe/audit/lines.js';
import { formatEvent, queryFiles } from '../src/observe/audit/query.js';
import { accessEvent, openTrail } from './helpers/audit.js';
import { runCli, tempDir } from './helpers/gateway.js';

const HOUR = 3_600_000;

/**
 * A rotated trail of 60 access events, one a minute for the last hour and a half up to a minute ago
 * (`accessEvent`: identity user:i%5, refused when i%3 is 0, route airbyte-api when i is even), and two
 * sign-ins.
 */
async function makeTrail(dir: string): Promise<{ files: string[]; now: number }> {
  const file = `${dir}/audit.jsonl`;
  const now = Date.now();
  const { trail } = await openTrail(file, { maxSize: 4000, keep: 10 });
  for (let i = 0; i < 60; i++) {
    trail.record(accessEvent(i, { time: new Date(now - (90 - i) * 60_000).toISOString() }));
  }
  trail.record({ event: 'signin', code: 'signin.succeeded', identity: 'user:1', email: 'user1@example.com' });
  trail.record({ event: 'signin', code: 'signin.failed', email: 'mallory@example.com', reason: 'bad state' });
  await trail.close();
  const rotated = [9, 8, 7, 6, 5, 4, 3, 2, 1].map((n) => `${file}.${n}`).filter((f) => existsSync(f));
  assert.ok(rotated.length >= 2, 'the trail was rotated');
  return { files: [...rotated, file], now };
}

function ids(matches: Array<{ record: Record<string, unknown> }>): unknown[] {
  return matches.map((m) => m.record.requestId ?? m.record.code);
}

async function query(files: string[], filter: Parameters<typeof queryFiles>[1]) {
  const found: Array<{ record: Record<string, unknown>; line: string }> = [];
  await queryFiles(files, filter, (m) => found.push(m));
  return found;
}

test('queryFiles answers who, when, which route and what outcome across rotated files', async (t) => {
  const d = tempDir('gatehouse-audit-query-');
  t.after(() => d.remove());
  const { files: existing, now } = await makeTrail(d.dir);

  const expected = (pred: (i: number) => boolean) =>
    Array.from({ length: 60 }, (_, i) => i)
      .filter(pred)
      .map((i) => `req-${i}`);

  assert.deepEqual(
    ids(await query(existing, { who: 'user:2', event: 'access' })),
    expected((i) => i % 5 === 2),
  );
  assert.deepEqual(
    ids(await query(existing, { who: 'user3@example.com' })),
    expected((i) => i % 5 === 3),
    'an email matches the email field',
  );
  assert.deepEqual(
    ids(await query(existing, { who: 'user:1' })),
    [...expected((i) => i % 5 === 1), 'signin.succeeded'],
    'sign-ins are found with the access events',
  );
  assert.deepEqual(
    ids(await query(existing, { refused: true, route: 'airbyte-api' })),
    expected((i) => i % 3 === 0 && i % 2 === 0),
  );
  assert.deepEqual(
    ids(await query(existing, { since: now - HOUR, refused: true })),
    expected((i) => i >= 30 && i % 3 === 0),
  );
  assert.deepEqual(ids(await query(existing, { since: now - HOUR, until: now - HOUR + 5 * 60_000 })), [
    'req-30',
    'req-31',
    'req-32',
    'req-33',
    'req-34',
    'req-35',
  ]);
  assert.deepEqual(ids(await query(existing, { code: 'signin.failed' })), ['signin.failed']);
  // The needle is a whole JSON string: a subject that is a prefix of another does not match it.
  assert.deepEqual(ids(await query(existing, { who: 'user' })), []);
  const checkpoints = await query(existing, { event: 'audit', code: 'audit.checkpoint' });
  assert.ok(checkpoints.length >= 5);
  assert.deepEqual((await query(existing, {})).length, 62 + checkpoints.length);
});

test('readWholeLines hands over whole lines across reads, grows for long lines, and returns a cut-off tail', async (t) => {
  const d = tempDir('gatehouse-audit-query-');
  t.after(() => d.remove());
  const lines = ['short', 'x'.repeat(100), '', 'y'.repeat(37), 'last'];
  const file = d.write('lines.txt', `${lines.join('\n')}\ncut-o`);
  const seen: string[] = [];
  const tail = await readWholeLines(
    file,
    (buf, end) => {
      const text = buf.toString('utf8', 0, end);
      assert.ok(text.endsWith('\n'));
      seen.push(...text.slice(0, -1).split('\n'));
    },
    16,
  );
  assert.deepEqual(seen, lines);
  assert.equal(tail.toString(), 'cut-o');
});

test('formatEvent prints time, code and the other fields for people', () => {
  assert.equal(
    formatEvent({
      seq: 4,
      prev: 'ab',
      time: '2026-01-01T00:00:00.000Z',
      event: 'access',
      code: 'access.refused',
      identity: 'user:1',
      path: '/a b',
      status: 403,
      groups: ['x'],
    }),
    '2026-01-01T00:00:00.000Z access.refused identity=user:1 path="/a b" status=403 groups=["x"]',
  );
});

test('gatehouse audit query: filters, --json, relative and absolute times, bad options', async (t) => {
  const d = tempDir('gatehouse-audit-query-');
  t.after(() => d.remove());
  const { files: existing } = await makeTrail(d.dir);

  const r = await runCli([
    'audit',
    'query',
    ...existing,
    '--who',
    'user:2',
    '--since',
    '1h',
    '--refused',
    '--route',
    'status',
  ]);
  assert.equal(r.code, 0, r.stderr);
  // user:2 (i%5 == 2), within the hour (i > 30), refused (i%3 == 0), route status (odd i): i = 57 only.
  const printed = r.stdout.trim().split('\n');
  assert.equal(printed.length, 1, r.stdout);
  assert.match(
    printed[0]!,
    /^\S+Z access\.refused requestId=req-57 identity=user:2 email=user2@example\.com route=status status=403 /,
  );
  assert.match(r.stderr, /1 event matched/);

  const j = await runCli(['audit', 'query', ...existing, '--code=signin.failed', '--json']);
  assert.equal(j.code, 0, j.stderr);
  const rec = JSON.parse(j.stdout) as Record<string, unknown>;
  assert.equal(rec.email, 'mallory@example.com');
  assert.equal(typeof rec.seq, 'number');

  const abs = await runCli([
    'audit',
    'query',
    ...existing,
    '--event',
    'access',
    '--until',
    '2000-01-01T00:00:00Z',
  ]);
  assert.equal(abs.code, 0);
  assert.equal(abs.stdout, '');

  for (const args of [
    ['audit', 'query'],
    ['audit', 'query', existing[0]!, '--since', 'yesterday'],
    ['audit', 'query', existing[0]!, '--who'],
    ['audit', 'query', existing[0]!, '--key', 'k.json'],
  ]) {
    const bad = await runCli(args);
    assert.equal(bad.code, 2, args.join(' '));
    assert.match(bad.stderr, /^gatehouse: /);
  }
  const missing = await runCli(['audit', 'query', d.file('nope.jsonl')]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /nope\.jsonl/);
  assert.doesNotMatch(missing.stderr, /\n\s+at /);
});

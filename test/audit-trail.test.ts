import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { appendFileSync, closeSync, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { GENESIS } from '../src/observe/audit/chain.js';
import { AuditFileError } from '../src/observe/audit/sinks.js';
import { AuditConfigError, AuditTrail, REDACTED, redactQuery } from '../src/observe/audit/trail.js';
import { keysFromJwks, verifyFiles } from '../src/observe/audit/verify.js';
import { registry } from '../src/observe/metrics.js';
import { accessEvent, fileLines, fileRecords, openTrail, sha256 } from './helpers/audit.js';
import { memoryLogger, tempDir, waitFor } from './helpers/gateway.js';

test('each line chains to the one before; checkpoints every N lines and on close are signed', async (t) => {
  const d = tempDir('gatehouse-audit-');
  t.after(() => d.remove());
  const file = d.file('audit.jsonl');
  const { trail } = await openTrail(file, { checkpoint: { lines: 5, intervalMs: 60_000 } });
  for (let i = 0; i < 12; i++) trail.record(accessEvent(i));
  await trail.close();

  const lines = fileLines(file);
  const records = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  // open checkpoint, 5 events, checkpoint, 5 events, checkpoint, 2 events, close checkpoint
  assert.equal(lines.length, 1 + 12 + 2 + 1);
  assert.deepEqual(
    records.filter((r) => r.code === 'audit.checkpoint').map((r) => [r.seq, r.reason]),
    [
      [1, 'open'],
      [7, 'lines'],
      [13, 'lines'],
      [16, 'close'],
    ],
  );
  assert.equal(records[0]!.prev, GENESIS);
  records.forEach((r, i) => {
    assert.equal(r.seq, i + 1);
    if (i > 0) assert.equal(r.prev, sha256(lines[i - 1]!), `line ${i + 1} chains to line ${i}`);
    assert.match(String(r.time), /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
  });
  // The line format: chain fields first, then time, then the record as given.
  assert.match(
    lines[1]!,
    /^\{"seq":2,"prev":"[0-9a-f]{64}","time":"[^"]+","event":"access","code":"access.refused","requestId":"req-0",/,
  );
  assert.equal(records[1]!.identity, 'user:0');

  // The published key verifies every checkpoint.
  const report = await verifyFiles([file], { keys: keysFromJwks(trail.publicKeys()) });
  assert.deepEqual(report.problem, undefined);
  assert.equal(report.ok, true);
  assert.equal(report.signaturesChecked, true);
  assert.equal(report.files[0]!.checkpoints, 4);
  const jwk = trail.publicKeys().keys[0] as Record<string, unknown>;
  assert.equal(jwk.kid, 'k1');
  assert.equal(jwk.d, undefined, 'no private part is published');
  assert.deepEqual(trail.stats().sinks.file, { written: 16, buffered: 0, dropped: 0 });
});

test('a checkpoint is written after intervalMs when lines came since the last one', async (t) => {
  const d = tempDir('gatehouse-audit-');
  t.after(() => d.remove());
  const file = d.file('audit.jsonl');
  const { trail } = await openTrail(file, { checkpoint: { lines: 1000, intervalMs: 40 } });
  t.after(() => trail.close());
  trail.record(accessEvent(1));
  await waitFor(
    () => existsSync(file) && readFileSync(file, 'utf8').includes('"reason":"interval"'),
    5000,
    'an interval checkpoint',
  );
  const records = fileRecords(file);
  assert.deepEqual(
    records.map((r) => r.reason ?? r.code),
    ['open', 'access.allowed', 'interval'],
  );
  // No lines since: no further checkpoint.
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(fileLines(file).length, 3);
});

test('rotation: the old file ends with a checkpoint, the new one continues the chain; keep bounds the files', async (t) => {
  const d = tempDir('gatehouse-audit-');
  t.after(() => d.remove());
  const file = d.file('audit.jsonl');
  const { trail } = await openTrail(file, { maxSize: 2000, keep: 2 });
  for (let i = 0; i < 60; i++) {
    trail.record(accessEvent(i));
    // Spread over a few turns so that rotations happen between write batches too.
    if (i % 7 === 0) await new Promise((r) => setImmediate(r));
  }
  await trail.close();
  assert.ok(existsSync(`${file}.1`) && existsSync(`${file}.2`));
  assert.ok(!existsSync(`${file}.3`), 'keep: 2 deletes older files');

  const files = [`${file}.2`, `${file}.1`, file];
  for (const f of files) {
    const recs = fileRecords(f);
    assert.equal(recs[0]!.code, 'audit.checkpoint', `${f} starts with a checkpoint`);
    assert.equal(recs[0]!.reason, 'open');
    assert.equal(recs.at(-1)!.code, 'audit.checkpoint', `${f} ends with a checkpoint`);
    assert.equal(recs.at(-1)!.reason, f === file ? 'close' : 'rotate');
  }
  // The first line of each file chains to the last line of the one before.
  assert.equal(fileRecords(`${file}.1`)[0]!.prev, sha256(fileLines(`${file}.2`).at(-1)!));
  assert.equal(fileRecords(file)[0]!.prev, sha256(fileLines(`${file}.1`).at(-1)!));
  const report = await verifyFiles(files, { keys: keysFromJwks(trail.publicKeys()) });
  assert.equal(report.problem, undefined);
  assert.ok(report.files[0]!.firstSeq! > 1, 'the oldest kept file starts mid-chain, as rotation left it');
});

test('reopening a cleanly closed file continues its chain in it', async (t) => {
  const d = tempDir('gatehouse-audit-');
  t.after(() => d.remove());
  const file = d.file('audit.jsonl');
  const { privateKey } = generateKeyPairSync('ed25519');
  const first = await openTrail(file, { signingKey: privateKey });
  for (let i = 0; i < 3; i++) first.trail.record(accessEvent(i));
  await first.trail.close();
  const before = fileLines(file);

  const second = await openTrail(file, { signingKey: privateKey });
  second.trail.record(accessEvent(3));
  await second.trail.close();
  const lines = fileLines(file);
  assert.deepEqual(lines.slice(0, before.length), before, 'the old lines are untouched');
  const next = JSON.parse(lines[before.length]!) as Record<string, unknown>;
  assert.equal(next.seq, before.length + 1);
  assert.equal(next.prev, sha256(before.at(-1)!));
  assert.equal(next.requestId, 'req-3');
  assert.ok(!existsSync(`${file}.1`));
  const report = await verifyFiles([file], { keys: keysFromJwks(second.trail.publicKeys()) });
  assert.equal(report.problem, undefined);
});

test('reopening a file that did not end cleanly moves it aside and goes on in a new file', async (t) => {
  for (const damage of [
    { what: 'cut-off last line', apply: (f: string) => appendFileSync(f, '{"seq":99,"prev":"ab') },
    {
      what: 'no final checkpoint',
      apply: (f: string) => {
        const last = fileLines(f).at(-1)!;
        const seq = (JSON.parse(last) as { seq: number }).seq + 1;
        appendFileSync(
          f,
          `{"seq":${seq},"prev":"${sha256(last)}","event":"access","code":"access.allowed"}\n`,
        );
      },
    },
    { what: 'final checkpoint not signed by this key', apply: () => {} },
  ]) {
    await t.test(damage.what, async () => {
      const d = tempDir('gatehouse-audit-');
      try {
        const file = d.file('audit.jsonl');
        const first = await openTrail(file);
        first.trail.record(accessEvent(1));
        await first.trail.close();
        damage.apply(file);
        const damaged = readFileSync(file);

        // A different key each time: for the third case that is the damage.
        const second = await openTrail(file);
        second.trail.record(accessEvent(2));
        await second.trail.close();
        assert.deepEqual(readFileSync(`${file}.1`), damaged, 'the old file is kept as it was');
        const recs = fileRecords(file);
        assert.equal(recs[0]!.code, 'audit.checkpoint');
        assert.equal(recs[1]!.code, 'audit.recovered');
        assert.equal(recs[1]!.reason, damage.what);
        assert.equal(recs[1]!.previousFile, `${file}.1`);
        assert.ok(
          second.logs.some(
            (l) => l.msg === 'audit file did not end cleanly; moved aside, the chain goes on in a new file',
          ),
        );
        // The new file verifies on its own; with the old one before it, the old one's end is named.
        assert.equal((await verifyFiles([file])).problem, undefined);
        const both = await verifyFiles([`${file}.1`, file]);
        if (damage.what === 'final checkpoint not signed by this key') {
          assert.equal(both.problem, undefined, 'without keys the chain itself is whole');
        } else {
          assert.equal(both.problem?.file, `${file}.1`);
          assert.equal(
            both.problem?.code,
            damage.what === 'cut-off last line' ? 'cut-off' : 'no-final-checkpoint',
          );
        }
      } finally {
        d.remove();
      }
    });
  }
});

test('a sink that falls behind drops beyond bufferLimit, counts it, and records audit.overflow when it recovers', async (t) => {
  const d = tempDir('gatehouse-audit-');
  t.after(() => d.remove());
  const file = d.file('audit.jsonl');
  const out = d.file('stdout.jsonl');
  const fd = openSync(out, 'w');
  const droppedBefore = await droppedMetric('file');
  const { trail } = await openTrail(file, { bufferLimit: 5, stdout: { fd } });
  // The trail lets go of the descriptor before it is closed (and its number used again).
  t.after(async () => {
    await trail.close();
    closeSync(fd);
  });
  // Written in one turn: nothing can be written before the turn ends, so the buffers fill up.
  for (let i = 0; i < 100; i++) trail.record(accessEvent(i));
  const during = trail.stats();
  assert.equal(during.sinks.file!.buffered, 5, 'the open checkpoint and four events');
  assert.equal(during.sinks.file!.dropped, 96);
  assert.equal(during.sinks.stdout!.dropped, 96, 'stdout held the same lines');
  await trail.flush();
  trail.record(accessEvent(100));
  await trail.close();

  const recs = fileRecords(file);
  const overflow = recs.filter((r) => r.code === 'audit.overflow');
  assert.deepEqual(
    overflow.map((r) => [r.event, r.sink, r.dropped]),
    [
      ['audit', 'file', 96],
      // 97 when stdout was still full as the file's overflow note came: that note is dropped there too.
      ['audit', 'stdout', trail.stats().sinks.stdout!.dropped],
    ],
  );
  assert.ok([96, 97].includes(trail.stats().sinks.stdout!.dropped));
  assert.match(String(overflow[0]!.since), /^\d{4}-/);
  assert.deepEqual(
    recs.filter((r) => r.event === 'access').map((r) => r.requestId),
    ['req-0', 'req-1', 'req-2', 'req-3', 'req-100'],
  );
  // Dropping left no hole in the chain: the file verifies.
  assert.equal((await verifyFiles([file], { keys: keysFromJwks(trail.publicKeys()) })).problem, undefined);
  assert.equal((await droppedMetric('file')) - droppedBefore, 96);
  const metrics = await registry.metrics();
  assert.match(metrics, /gatehouse_audit_buffered\{sink="file"\} 0/);
  assert.match(metrics, /gatehouse_audit_events_total\{sink="file"\} \d+/);
  // stdout received the lines the file has (from the overflow note on), with the same chain fields.
  const stdoutLines = fileLines(out);
  assert.ok(stdoutLines.includes(fileLines(file).at(-1)!), 'the close checkpoint went to stdout too');
});

async function droppedMetric(sink: string): Promise<number> {
  const m = await registry.getSingleMetric('gatehouse_audit_dropped_total')?.get();
  return m?.values.find((v) => v.labels.sink === sink)?.value ?? 0;
}

test('close() loses nothing: every recorded event is in the file when it resolves', async (t) => {
  const d = tempDir('gatehouse-audit-');
  t.after(() => d.remove());
  const file = d.file('audit.jsonl');
  const { trail } = await openTrail(file, {
    bufferLimit: 50_000,
    checkpoint: { lines: 1000, intervalMs: 60_000 },
  });
  const n = 20_000;
  for (let i = 0; i < n; i++) trail.record(accessEvent(i));
  await trail.close();
  const recs = fileRecords(file);
  const ids = recs.filter((r) => r.event === 'access').map((r) => r.requestId);
  assert.equal(ids.length, n);
  assert.equal(ids[n - 1], `req-${n - 1}`);
  assert.equal(recs.at(-1)!.reason, 'close');
  assert.equal(trail.stats().sinks.file!.dropped, 0);
  // After close, events are refused without throwing, and counted.
  trail.record(accessEvent(n));
  assert.equal(trail.stats().afterClose, 1);
  assert.equal(fileRecords(file).length, recs.length);
});

test('redactQuery masks the named parameters case-insensitively and keeps everything else', () => {
  const names = ['token', 'API_KEY', 'sig'];
  assert.equal(redactQuery('/a/b', names), '/a/b');
  assert.equal(redactQuery('/a?x=1&token=abc&y=2', names), `/a?x=1&token=${REDACTED}&y=2`);
  assert.equal(
    redactQuery('/a?Token=abc&api_key=k&Sig=&q', names),
    `/a?Token=${REDACTED}&api_key=${REDACTED}&Sig=${REDACTED}&q`,
  );
  // Percent-encoded names match too; a parameter without a value has nothing to mask.
  assert.equal(redactQuery('/a?%74oken=abc&token', names), `/a?%74oken=${REDACTED}&token`);
  assert.equal(redactQuery('/a?tokens=1&x_token=2', names), '/a?tokens=1&x_token=2');
  assert.equal(redactQuery('/a?token=1#frag', names), `/a?token=${REDACTED}#frag`);
  assert.equal(redactQuery('/a?token=1', []), '/a?token=1');
  assert.equal(redactQuery('/a?%E0%A4%A=1&token=x', names), `/a?%E0%A4%A=1&token=${REDACTED}`);
});

test('credentials never enter the trail; chain fields and checkpoints cannot be forged; bad records do not throw', async (t) => {
  const d = tempDir('gatehouse-audit-');
  t.after(() => d.remove());
  const file = d.file('audit.jsonl');
  const { trail, logs } = await openTrail(file);
  trail.record({
    event: 'access',
    code: 'access.allowed',
    requestId: 'r1',
    path: redactQuery('/x?access_token=abc&page=2', ['access_token']),
    authorization: 'Bearer secret-1',
    headers: { Cookie: 'gh_session=secret-2', 'X-Api-Key': 'secret-3', accept: 'text/html' },
    apiKey: 'secret-4',
    list: [{ access_token: 'secret-5', refreshToken: 'secret-6', keep: 1 }],
    apiKeyId: 'etl-agent',
  });
  trail.record({ event: 'access', code: 'access.allowed', seq: 1, prev: GENESIS, requestId: 'r2' });
  trail.record({ event: 'audit', code: 'audit.checkpoint', requestId: 'r3' });
  const cyclic: Record<string, unknown> = { event: 'admin', code: 'admin.action', requestId: 'r4' };
  cyclic.self = cyclic;
  trail.record(cyclic as never);
  trail.record({ event: 'admin', code: 'admin.action', n: 10n } as never);
  assert.doesNotThrow(() => trail.record(undefined as never));
  assert.doesNotThrow(() => trail.record({ event: 'x', code: 'x', time: 5 }));
  await trail.close();

  const text = readFileSync(file, 'utf8');
  for (let i = 1; i <= 6; i++) assert.ok(!text.includes(`secret-${i}`), `secret-${i} is not in the trail`);
  const recs = fileRecords(file);
  const r1 = recs.find((r) => r.requestId === 'r1')!;
  assert.equal(r1.path, `/x?access_token=${REDACTED}&page=2`);
  assert.deepEqual(r1.headers, { accept: 'text/html' });
  assert.deepEqual(r1.list, [{ keep: 1 }]);
  assert.equal(r1.apiKeyId, 'etl-agent');
  const r2 = recs.find((r) => r.requestId === 'r2')!;
  assert.notEqual(r2.seq, 1, 'the trail sets the chain fields');
  assert.equal(recs.find((r) => r.requestId === 'r3')!.code, 'audit.forged-checkpoint');
  assert.equal(recs.find((r) => r.requestId === 'r4')!.code, 'audit.unserializable');
  assert.equal(recs.filter((r) => r.code === 'audit.unserializable').length, 2);
  const timed = recs.find((r) => r.event === 'x')!;
  assert.match(String(timed.time), /^\d{4}-/, 'a time that is not a string is replaced');
  assert.ok(logs.some((l) => l.msg === 'audit event could not be recorded'));
  assert.equal((await verifyFiles([file], { keys: keysFromJwks(trail.publicKeys()) })).problem, undefined);
});

test('options that cannot work are refused with GH_AUDIT_CONFIG', async () => {
  const { logger } = memoryLogger();
  const ed = generateKeyPairSync('ed25519');
  const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 });
  const cases: Array<Partial<Parameters<typeof AuditTrail.open>[0]>> = [
    { signingKey: rsa.privateKey },
    { signingKey: ed.publicKey },
    { keyId: '' },
    { bufferLimit: 0 },
    { checkpoint: { lines: 0, intervalMs: 1000 } },
    { file: { path: '/tmp/never-written', maxSize: 100, keep: -1, fsync: 'never' } },
    { file: { path: '/tmp/never-written', maxSize: 0, keep: 1, fsync: 'never' } },
    { file: { path: '/tmp/never-written', maxSize: 10, keep: 1, fsync: 'sometimes' as never } },
  ];
  for (const c of cases) {
    await assert.rejects(
      AuditTrail.open({ signingKey: ed.privateKey, keyId: 'k', logger, ...c }),
      (err: unknown) => err instanceof AuditConfigError && err.code === 'GH_AUDIT_CONFIG',
      JSON.stringify(Object.keys(c)),
    );
  }
  assert.ok(!existsSync('/tmp/never-written'));
  await assert.rejects(
    openTrail('/nonexistent-dir/audit.jsonl'),
    (err: unknown) =>
      err instanceof AuditFileError &&
      err.code === 'GH_AUDIT_FILE' &&
      err.message.startsWith('audit file /nonexistent-dir/audit.jsonl: '),
  );
});

test('without a file the chain runs over the stdout lines', async (t) => {
  const d = tempDir('gatehouse-audit-');
  t.after(() => d.remove());
  const out = d.file('stdout.jsonl');
  const fd = openSync(out, 'w');
  const { trail } = await openTrail(undefined, { stdout: { fd } });
  t.after(async () => {
    await trail.close();
    closeSync(fd);
  });
  for (let i = 0; i < 3; i++) trail.record(accessEvent(i));
  await trail.close();
  const report = await verifyFiles([out], { keys: keysFromJwks(trail.publicKeys()) });
  assert.equal(report.problem, undefined);
  assert.equal(report.files[0]!.lines, 5);
  writeFileSync(out, ''); // an empty file is not a trail
  assert.equal((await verifyFiles([out])).problem?.code, 'cut-off');
});

test('recordJson takes a line serialized once for the access log too, and still keeps secrets out', async (t) => {
  const d = tempDir('gatehouse-audit-');
  t.after(() => d.remove());
  const file = d.file('audit.jsonl');
  const { trail } = await openTrail(file);
  const line = JSON.stringify(accessEvent(1));
  trail.recordJson(line, { event: 'access', code: 'access.allowed', requestId: 'req-1' });
  trail.recordJson(
    '{"time":"2026-01-01T00:00:00.000Z","event":"access","code":"access.allowed","requestId":"req-2"}',
    {
      event: 'access',
      code: 'access.allowed',
      time: '2026-01-01T00:00:00.000Z',
    },
  );
  trail.recordJson(
    '{"event":"access","code":"access.allowed","requestId":"req-3","headers":{"authorization":"Bearer s3cret"}}',
    {
      event: 'access',
      code: 'access.allowed',
    },
  );
  trail.recordJson('{"event":"access","code":"access.allowed","seq":1,"requestId":"req-4"}', {
    event: 'access',
    code: 'x',
  });
  trail.recordJson('not json', { event: 'access', code: 'access.allowed' });
  await trail.close();
  const recs = fileRecords(file).filter((r) => r.event === 'access');
  assert.deepEqual(
    recs.map((r) => [r.requestId, r.code]),
    [
      ['req-1', 'access.allowed'],
      ['req-2', 'access.allowed'],
      ['req-3', 'access.allowed'],
      ['req-4', 'access.allowed'],
      [undefined, 'audit.unserializable'],
    ],
  );
  assert.deepEqual(JSON.parse(fileLines(file)[1]!), { ...recs[0], ...JSON.parse(line) });
  assert.equal(recs[1]!.time, '2026-01-01T00:00:00.000Z');
  assert.deepEqual(recs[2]!.headers, {});
  assert.notEqual(recs[3]!.seq, 1);
  assert.ok(!readFileSync(file, 'utf8').includes('s3cret'));
  assert.equal((await verifyFiles([file])).problem, undefined);
});

test('a file that cannot be written (ENOSPC from /dev/full) buffers, counts drops, logs, and close() still returns', async () => {
  assert.ok(existsSync('/dev/full'), '/dev/full is needed: a device whose writes fail with ENOSPC');
  const { trail, logs } = await openTrail('/dev/full', { bufferLimit: 10, closeTimeoutMs: 300 });
  for (let i = 0; i < 30; i++) {
    assert.doesNotThrow(() => trail.record(accessEvent(i)));
    await new Promise((r) => setImmediate(r));
  }
  await waitFor(
    () => logs.some((l) => l.msg === 'audit file write failed; retrying (events are buffered)'),
    5000,
  );
  const s = trail.stats().sinks.file!;
  assert.equal(s.written, 0);
  assert.equal(s.buffered, 10);
  assert.equal(s.dropped, 21, 'the open checkpoint and nine events are held; the rest dropped');
  const started = Date.now();
  await trail.close();
  assert.ok(Date.now() - started < 3000);
  assert.ok(
    logs.some((l) => l.msg === 'audit sink could not write its events before close' && l.sink === 'file'),
  );
  assert.equal(
    trail.stats().sinks.file!.dropped,
    32,
    'with the close checkpoint, everything held is counted lost',
  );
});

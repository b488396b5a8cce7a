import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { test } from 'node:test';
import fc from 'fast-check';
import { keysFromJwks, type VerifyProblemCode, verifyFiles } from '../src/observe/audit/verify.js';
import { accessEvent, auditKey, fileLines, openTrail, sha256 } from './helpers/audit.js';
import { runCli, tempDir } from './helpers/gateway.js';

/** A closed trail of `events` access events with a checkpoint every 4 lines; its lines and JWKS. */
async function makeTrail(
  file: string,
  events = 15,
  opts: { keyId?: string; signingKey?: ReturnType<typeof auditKey>['privateKey'] } = {},
) {
  const { trail } = await openTrail(file, { checkpoint: { lines: 4, intervalMs: 60_000 }, ...opts });
  for (let i = 0; i < events; i++) trail.record(accessEvent(i));
  await trail.close();
  return { lines: fileLines(file), jwks: trail.publicKeys() };
}

function write(file: string, lines: string[], end = '\n'): void {
  writeFileSync(file, lines.join('\n') + (lines.length > 0 ? end : ''));
}

function checkpointLines(lines: string[]): number[] {
  return lines.flatMap((l, i) => (l.includes('"code":"audit.checkpoint"') ? [i + 1] : []));
}

test('every kind of tampering is named at the right line', async (t) => {
  const d = tempDir('gatehouse-audit-verify-');
  t.after(() => d.remove());
  const original = d.file('trail.jsonl');
  const { lines, jwks } = await makeTrail(original);
  const keys = keysFromJwks(jwks);
  const cps = checkpointLines(lines);
  const n = lines.length;
  assert.equal((await verifyFiles([original], { keys })).ok, true);
  // Line 7 is an event (checkpoints are at 1, 6, 11, 16, 19 and the close one at the end).
  assert.ok(!cps.includes(7) && !cps.includes(8));

  const cases: Array<{ name: string; lines: string[]; end?: string; code: VerifyProblemCode; line: number }> =
    [
      {
        name: 'an edited line',
        lines: lines.map((l, i) => (i === 6 ? l.replace(/"status":\d+/, '"status":299') : l)),
        code: 'edited',
        line: 7,
      },
      { name: 'a deleted line', lines: lines.filter((_, i) => i !== 6), code: 'sequence-gap', line: 7 },
      {
        name: 'two lines swapped',
        lines: lines.map((l, i) => (i === 6 ? lines[7]! : i === 7 ? lines[6]! : l)),
        code: 'reordered',
        line: 7,
      },
      {
        name: 'a line moved later',
        lines: [...lines.slice(0, 6), ...lines.slice(7, 9), lines[6]!, ...lines.slice(9)],
        code: 'sequence-gap',
        line: 7,
      },
      {
        name: 'a repeated line',
        lines: [...lines.slice(0, 8), lines[6]!, ...lines.slice(8)],
        code: 'reordered',
        line: 9,
      },
      {
        name: 'the final checkpoint removed (truncated)',
        lines: lines.slice(0, -1),
        code: 'no-final-checkpoint',
        line: cps.at(-2)! + 1,
      },
      {
        name: 'cut back to a periodic checkpoint',
        lines: lines.slice(0, cps.at(-2)!),
        code: 'truncated',
        line: cps.at(-2)!,
      },
      {
        name: 'a cut-off last line',
        lines: [...lines.slice(0, -1), lines.at(-1)!.slice(0, 40)],
        end: '',
        code: 'cut-off',
        line: n,
      },
      {
        name: 'a chained line appended after the last checkpoint',
        lines: [
          ...lines,
          `{"seq":${n + 1},"prev":"${sha256(lines.at(-1)!)}","time":"2026-01-01T00:00:00.000Z","event":"access","code":"access.allowed"}`,
        ],
        code: 'no-final-checkpoint',
        line: n + 1,
      },
      { name: 'the first lines removed', lines: lines.slice(2), code: 'bad-start', line: 1 },
      {
        name: 'an edited checkpoint (its time)',
        lines: lines.map((l, i) =>
          i === cps[1]! - 1 ? l.replace(/"time":"[^"]+"/, '"time":"2020-01-01T00:00:00.000Z"') : l,
        ),
        code: 'bad-signature',
        line: cps[1]!,
      },
      {
        name: 'a checkpoint with its signature removed',
        lines: lines.map((l, i) => (i === cps[1]! - 1 ? l.replace(/,"sig":"[^"]+"/, '') : l)),
        code: 'edited',
        line: cps[1]!,
      },
      {
        name: 'a line that is not an audit line',
        lines: lines.map((l, i) => (i === 4 ? 'hello' : l)),
        code: 'not-audit-line',
        line: 5,
      },
      {
        name: 'the prev of a line edited (the line before is a signed checkpoint)',
        lines: lines.map((l, i) =>
          i === cps[1]! ? l.replace(/"prev":"(.)/, (_, c) => `"prev":"${c === '0' ? '1' : '0'}`) : l,
        ),
        code: 'edited',
        line: cps[1]! + 1,
      },
    ];
  for (const c of cases) {
    const f = d.file(`${c.name.replace(/\W+/g, '-')}.jsonl`);
    write(f, c.lines, c.end);
    const report = await verifyFiles([f], { keys });
    assert.equal(report.ok, false, c.name);
    assert.deepEqual(
      [report.problem?.code, report.problem?.line, report.problem?.file],
      [c.code, c.line, f],
      c.name,
    );
  }
});

test('a trail rewritten without the key is caught by the signature check only', async (t) => {
  const d = tempDir('gatehouse-audit-verify-');
  t.after(() => d.remove());
  const { jwks } = await makeTrail(d.file('real.jsonl'));
  const keys = keysFromJwks(jwks);
  // A forger with another key: a perfectly chained file, checkpoints and all.
  const forged = d.file('forged.jsonl');
  await makeTrail(forged);
  assert.equal((await verifyFiles([forged])).ok, true, 'the chain alone cannot tell');
  assert.equal((await verifyFiles([forged])).signaturesChecked, false);
  const same = await verifyFiles([forged], { keys });
  assert.deepEqual([same.problem?.code, same.problem?.line], ['bad-signature', 1]);
  const otherId = d.file('other-id.jsonl');
  await makeTrail(otherId, 3, { keyId: 'forger' });
  const unknown = await verifyFiles([otherId], { keys });
  assert.deepEqual([unknown.problem?.code, unknown.problem?.line], ['unknown-key', 1]);
});

test('rotated files verify as one chain, oldest first; a missing or misplaced file is named', async (t) => {
  const d = tempDir('gatehouse-audit-verify-');
  t.after(() => d.remove());
  const file = d.file('audit.jsonl');
  const { trail } = await openTrail(file, { maxSize: 1500, keep: 5 });
  for (let i = 0; i < 30; i++) trail.record(accessEvent(i));
  await trail.close();
  const keys = keysFromJwks(trail.publicKeys());
  const ok = await verifyFiles([`${file}.3`, `${file}.2`, `${file}.1`, file], { keys });
  assert.equal(ok.problem, undefined);
  assert.equal(ok.files.length, 4);
  const missing = await verifyFiles([`${file}.3`, `${file}.1`, file], { keys });
  assert.deepEqual(
    [missing.problem?.code, missing.problem?.file, missing.problem?.line],
    ['not-continued', `${file}.1`, 1],
  );
  const swapped = await verifyFiles([`${file}.1`, `${file}.2`, file], { keys });
  assert.deepEqual([swapped.problem?.code, swapped.problem?.file], ['not-continued', `${file}.2`]);
  const absent = await verifyFiles([d.file('nope.jsonl')]);
  assert.equal(absent.problem?.code, 'unreadable');
  // The last line of a rotated file edited: named there, not as a break in the next file.
  const lines = fileLines(`${file}.2`);
  write(`${file}.2`, [...lines.slice(0, -1), lines.at(-1)!.replace(/"time":"\d{4}/, '"time":"2020')]);
  const edited = await verifyFiles([`${file}.2`, `${file}.1`, file]);
  assert.deepEqual(
    [edited.problem?.code, edited.problem?.file, edited.problem?.line],
    ['edited', `${file}.2`, lines.length],
  );
});

test('live: the file being written may end after its last checkpoint; the uncovered lines are counted', async (t) => {
  const d = tempDir('gatehouse-audit-verify-');
  t.after(() => d.remove());
  const file = d.file('audit.jsonl');
  const { lines, jwks } = await makeTrail(file, 15);
  const keys = keysFromJwks(jwks);
  const cps = checkpointLines(lines);
  const live = d.file('live.jsonl');
  write(live, [...lines.slice(0, -1), lines.at(-1)!.slice(0, 30)], '');
  const strict = await verifyFiles([live], { keys });
  assert.equal(strict.problem?.code, 'cut-off');
  const lenient = await verifyFiles([live], { keys, live: true });
  assert.equal(lenient.problem, undefined);
  assert.equal(lenient.uncovered, lines.length - cps.at(-2)!);
  // Live is about the end only: a deleted line is still found.
  write(live, lines.filter((_, i) => i !== 3).slice(0, -1));
  assert.equal((await verifyFiles([live], { keys, live: true })).problem?.code, 'sequence-gap');
  const cli = await runCli(['audit', 'verify', '--live', file]);
  assert.equal(cli.code, 0, cli.stderr);
});

test('property: any single-line edit, deletion or swap of a valid trail is detected', async (t) => {
  const d = tempDir('gatehouse-audit-verify-');
  t.after(() => d.remove());
  const { lines, jwks } = await makeTrail(d.file('base.jsonl'), 12);
  const keys = keysFromJwks(jwks);
  const f = d.file('mutated.jsonl');
  const mutation = fc.oneof(
    fc.record({
      kind: fc.constant('edit' as const),
      line: fc.nat(lines.length - 1),
      at: fc.nat(10_000),
      char: fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 1 }),
    }),
    fc.record({ kind: fc.constant('delete' as const), line: fc.nat(lines.length - 1) }),
    fc.record({
      kind: fc.constant('swap' as const),
      line: fc.nat(lines.length - 1),
      other: fc.nat(lines.length - 1),
    }),
  );
  await fc.assert(
    fc.asyncProperty(mutation, async (m) => {
      const mutated = [...lines];
      if (m.kind === 'edit') {
        const l = mutated[m.line]!;
        const at = m.at % l.length;
        fc.pre(l[at] !== m.char && m.char !== '\n');
        mutated[m.line] = l.slice(0, at) + m.char + l.slice(at + 1);
      } else if (m.kind === 'delete') {
        mutated.splice(m.line, 1);
      } else {
        fc.pre(m.line !== m.other);
        [mutated[m.line], mutated[m.other]] = [mutated[m.other]!, mutated[m.line]!];
      }
      write(f, mutated);
      const report = await verifyFiles([f], { keys });
      return report.ok === false;
    }),
    { numRuns: 300 },
  );
});

test('gatehouse audit verify: exit codes and output, with and without a key', async (t) => {
  const d = tempDir('gatehouse-audit-verify-');
  t.after(() => d.remove());
  const file = d.file('audit.jsonl');
  const key = auditKey();
  const { lines, jwks } = await makeTrail(file, 6, { signingKey: key.privateKey });
  const jwksFile = d.write('keys.json', JSON.stringify(jwks));
  const privateJwk = d.write(
    'private.jwk',
    JSON.stringify({ ...key.privateKey.export({ format: 'jwk' }), kid: 'k1' }),
  );

  const plain = await runCli(['audit', 'verify', file]);
  assert.equal(plain.code, 0, plain.stderr);
  assert.match(plain.stdout, /audit\.jsonl: ok \(\d+ lines, seq 1-\d+, \d+ checkpoints\)/);
  assert.match(plain.stdout, /signatures NOT checked/);

  for (const k of [jwksFile, privateJwk]) {
    const signed = await runCli(['audit', 'verify', '--key', k, file]);
    assert.equal(signed.code, 0, signed.stderr);
    assert.match(signed.stdout, /checkpoint signatures verified with 1 key/);
  }

  const bad = d.file('bad.jsonl');
  write(
    bad,
    lines.filter((_, i) => i !== 2),
  );
  const failed = await runCli(['audit', 'verify', '--key', jwksFile, bad]);
  assert.equal(failed.code, 1);
  assert.equal(
    failed.stderr,
    `${bad}:3: sequence gap: expected seq 3, found 4: line(s) deleted (or moved) before this line\n`,
  );

  const otherKey = d.write('other.json', JSON.stringify(auditKey().publicKey.export({ format: 'jwk' })));
  const wrongKey = await runCli(['audit', 'verify', `--key=${otherKey}`, file]);
  assert.equal(wrongKey.code, 1);
  assert.match(wrongKey.stderr, /audit\.jsonl:1: checkpoint signature is not valid/);

  const notKey = d.write('not-a-key.json', '{"kty":"RSA"}');
  const unusable = await runCli(['audit', 'verify', '--key', notKey, file]);
  assert.equal(unusable.code, 1);
  assert.match(unusable.stderr, /not-a-key\.json: no Ed25519 key in it/);
  assert.doesNotMatch(unusable.stderr, /\n\s+at /, 'no stack trace');

  for (const args of [
    ['audit', 'verify'],
    ['audit', 'verify', '--bogus', file],
    ['audit'],
    ['audit', 'frobnicate'],
  ]) {
    const usage = await runCli(args);
    assert.equal(usage.code, 2, args.join(' '));
    assert.match(usage.stderr, /Usage:/);
  }
});

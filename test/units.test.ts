import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseDuration, parseRate, parseSize } from '../src/config/units.js';

test('durations parse to milliseconds', () => {
  assert.equal(parseDuration('500ms'), 500);
  assert.equal(parseDuration('30s'), 30_000);
  assert.equal(parseDuration('5m'), 300_000);
  assert.equal(parseDuration('12h'), 43_200_000);
  assert.equal(parseDuration('1.5s'), 1500);
  assert.equal(parseDuration('5'), undefined);
  assert.equal(parseDuration('5 minutes'), undefined);
  assert.equal(parseDuration('-1s'), undefined);
});

test('sizes parse to bytes', () => {
  assert.equal(parseSize('1024'), 1024);
  assert.equal(parseSize('64KiB'), 65_536);
  assert.equal(parseSize('10MB'), 10_000_000);
  assert.equal(parseSize('1GiB'), 1024 ** 3);
  assert.equal(parseSize('lots'), undefined);
  assert.equal(parseSize('10XB'), undefined);
});

test('rates parse to events per second', () => {
  assert.equal(parseRate('600/min'), 10);
  assert.equal(parseRate('10/s'), 10);
  assert.equal(parseRate('3600/h'), 1);
  assert.equal(parseRate('ten/s'), undefined);
});

test('a size, duration or rate too large to be exact is refused, never Infinity', () => {
  const digits = '9'.repeat(400);
  assert.equal(parseSize(digits), undefined);
  assert.equal(parseSize(`${digits}KiB`), undefined);
  assert.equal(parseSize('8589934592MiB'), undefined); // 2^53 bytes
  assert.equal(parseSize('8589934591MiB'), 8589934591 * 1024 ** 2);
  assert.equal(parseDuration(`${digits}ms`), undefined);
  assert.equal(parseDuration('104249991375d'), undefined); // beyond 2^53 ms
  assert.equal(parseRate(`${digits}/s`), undefined);
  assert.equal(parseRate(`${'9'.repeat(300)}/h`), 1e300 / 3600);
});

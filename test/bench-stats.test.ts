import assert from 'node:assert/strict';
import { test } from 'node:test';
import { median, pairedRatio, roundOrder } from '../bench/stats.js';

test('median of odd and even counts', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
});

test('paired ratios divide measurements of the same round and scenario, then take the median', () => {
  const m = (proxy: string, scenario: string, round: number, cpu: number | undefined) => ({
    proxy,
    scenario,
    round,
    cpuUsPerRequest: cpu,
  });
  // The machine is twice as slow in round 1: both proxies slow down, their ratio stays 2.
  const rows = [
    m('a', 'small', 0, 20),
    m('base', 'small', 0, 10),
    m('a', 'small', 1, 40),
    m('base', 'small', 1, 20),
    m('a', 'small', 2, 33),
    m('base', 'small', 2, 11),
    m('a', '1MiB', 0, 500),
    m('base', '1MiB', 0, 100),
    // No partner in its round: left out.
    m('a', 'small', 3, 99),
    m('base', 'small', 4, 1),
    m('a', 'small', 5, undefined),
    m('base', 'small', 5, 10),
  ];
  assert.deepEqual(pairedRatio(rows, 'small', 'a', 'base'), { median: 2, min: 2, max: 3, rounds: 3 });
  assert.deepEqual(pairedRatio(rows, '1MiB', 'a', 'base'), { median: 5, min: 5, max: 5, rounds: 1 });
  assert.equal(pairedRatio(rows, 'small', 'a', 'missing'), undefined);
  // The ratio of the medians would differ: median(a) = 33, median(base) = 10.5 → 3.14.
});

test('round orders are permutations, the same every run, and vary who runs before whom', () => {
  const items = ['a', 'b', 'c', 'd', 'e', 'f'];
  const predecessors = new Set<string>();
  for (let r = 0; r < 15; r++) {
    const order = roundOrder(items, r);
    assert.deepEqual([...order].sort(), items);
    assert.deepEqual(roundOrder(items, r), order);
    const i = order.indexOf('a');
    if (i > 0) predecessors.add(order[i - 1]!);
  }
  assert.ok(predecessors.size >= 3, `a ran after only ${[...predecessors].join(', ')}`);
});

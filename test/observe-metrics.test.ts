import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AggregatorRegistry, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { FastCounter, FastGauge, FastHistogram } from '../src/observe/metrics.js';

const buckets = [0.001, 0.01, 0.1, 1, 10];

test('a FastHistogram renders exactly what a prom-client Histogram renders for the same values', async () => {
  const fastRegistry = new Registry();
  const refRegistry = new Registry();
  const config = { name: 'x_seconds', help: 'x', labelNames: ['route'] as const, buckets };
  const fast = new FastHistogram({ ...config, registers: [fastRegistry] });
  const ref = new Histogram({ ...config, labelNames: ['route'], registers: [refRegistry] });
  for (const [route, v] of [
    ['a', 0.0005],
    ['a', 0.01],
    ['b', 0.5],
    ['a', 42],
  ] as const) {
    fast.series(route).observe(v);
    ref.labels(route).observe(v);
  }
  fast.observe({ route: 'b' }, 0.002);
  ref.observe({ route: 'b' }, 0.002);
  assert.equal(await fastRegistry.metrics(), await refRegistry.metrics());
  assert.deepEqual(await fastRegistry.getMetricsAsJSON(), await refRegistry.getMetricsAsJSON());
  // Cluster workers' JSON is summed by the primary.
  const merged = AggregatorRegistry.aggregate([
    await fastRegistry.getMetricsAsJSON(),
    await fastRegistry.getMetricsAsJSON(),
  ]);
  assert.match(await merged.metrics(), /^x_seconds_count\{route="a"\} 6$/m);
});

test('FastCounter series are added to the counter when it is read, alongside prom-client calls', async () => {
  const registry = new Registry();
  const fast = new FastCounter({
    name: 'y_total',
    help: 'y',
    labelNames: ['route', 'status'] as const,
    registers: [registry],
  });
  const s = fast.series('a', '200');
  assert.equal(fast.series('a', '200'), s, 'one series object per label set');
  s.inc();
  s.inc(2);
  fast.inc({ route: 'a', status: '200' });
  fast.series('never', '500');
  assert.match(await registry.metrics(), /^y_total\{route="a",status="200"\} 4$/m);
  // A series that was never incremented is not shown, as with prom-client.
  assert.doesNotMatch(await registry.metrics(), /never/);
  s.inc();
  assert.match(await registry.metrics(), /^y_total\{route="a",status="200"\} 5$/m);
  fast.remove('a', '200');
  s.inc();
  assert.doesNotMatch(await registry.metrics(), /route="a"/);
  const ref = new Counter({ name: 'y_total', help: 'y', labelNames: ['route'], registers: [new Registry()] });
  assert.ok(fast instanceof Counter && ref instanceof Counter);
});

test('FastGauge series publish their current value before collect() runs', async () => {
  const registry = new Registry();
  let rebuild = false;
  const fast = new FastGauge({
    name: 'z',
    help: 'z',
    labelNames: ['server'] as const,
    registers: [registry],
    collect() {
      if (!rebuild) return;
      this.reset();
      this.set({ server: 'from-collect' }, 7);
    },
  });
  const s = fast.series('s1');
  s.inc();
  s.inc();
  s.dec();
  fast.series('untouched');
  assert.match(await registry.metrics(), /^z\{server="s1"\} 1$/m);
  assert.doesNotMatch(await registry.metrics(), /untouched/);
  rebuild = true;
  const text = await registry.metrics();
  assert.match(text, /^z\{server="from-collect"\} 7$/m);
  assert.doesNotMatch(text, /s1/);
  assert.ok(fast instanceof Gauge);
});

/**
 * The monitoring examples (examples/grafana/gatehouse.json, examples/prometheus/alerts.yaml): each is
 * well formed, and every metric they name is one the gateway exposes on /metrics, as read from a real
 * gateway's scrape (histograms by their _bucket, _sum and _count series).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { parse } from 'yaml';
import { startEchoBackend } from '../src/demo/backends.js';
import { createLogger } from '../src/observe/log.js';
import { Gateway } from '../src/process/gateway.js';
import { ROOT, tempDir } from './helpers/gateway.js';
import { LineCollector, origin, request } from './helpers/observe.js';

/** Every `gatehouse_…` name in a PromQL text. */
function metricNames(expr: string): string[] {
  return [...expr.matchAll(/\bgatehouse_[a-z0-9_]+/g)].map((m) => m[0]);
}

/** The series names a scrape can hold: a `# TYPE` line's name, and a histogram's three series. */
function exposed(text: string): Set<string> {
  const names = new Set<string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    const [, name, type] = m as unknown as [string, string, string];
    names.add(name);
    if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(name + s);
  }
  return names;
}

test('the Grafana dashboard and the Prometheus alerts are well formed and name only metrics the gateway exposes', async (t) => {
  const echo = await startEchoBackend();
  t.after(() => echo.close());
  const d = tempDir();
  t.after(() => d.remove());
  // Audit, limits and an upstream with a health check, so that their metrics are all registered.
  const file = d.write(
    'gatehouse.yaml',
    `listeners: [{ name: plain, bind: "127.0.0.1:0" }]
admin: { bind: "127.0.0.1:0" }
audit: { file: audit.jsonl }
logging: { level: fatal, access: false }
upstreams:
  echo: { servers: [{ url: "${echo.url}" }], healthCheck: { path: /, interval: 1s } }
routes:
  - { name: open, match: { path: / }, upstream: echo, public: true, rateLimit: { key: ip, rate: 100/s, burst: 100 } }
`,
  );
  const gw = await Gateway.start({
    configFile: file,
    watch: false,
    logger: createLogger('fatal', new LineCollector()),
  });
  t.after(() => gw.shutdown());
  assert.equal((await request(`${origin(gw.address('plain')!)}/x`)).status, 200);
  const scrape = await request(`${origin(gw.adminAddress()!)}/metrics`);
  assert.equal(scrape.status, 200);
  const names = exposed(scrape.text);
  assert.ok(names.size > 20, 'the scrape lists the gateway metrics');

  const dashboard = JSON.parse(readFileSync(join(ROOT, 'examples/grafana/gatehouse.json'), 'utf8')) as {
    title: string;
    panels: Array<{ title: string; targets: Array<{ expr: string }> }>;
  };
  assert.equal(dashboard.title, 'Gatehouse');
  const alerts = parse(readFileSync(join(ROOT, 'examples/prometheus/alerts.yaml'), 'utf8')) as {
    groups: Array<{
      name: string;
      rules: Array<{ alert: string; expr: string; labels: { severity: string } }>;
    }>;
  };
  const rules = alerts.groups.flatMap((g) => g.rules);
  for (const r of rules) {
    assert.match(r.alert, /^Gatehouse[A-Za-z]+$/);
    assert.ok(['critical', 'warning', 'info'].includes(r.labels.severity), r.alert);
  }
  // The alerts the monitoring contract asks for.
  const exprs = rules.map((r) => r.expr).join('\n');
  for (const needed of [
    'gatehouse_upstream_server_up',
    'gatehouse_config_reloads_total',
    'gatehouse_audit_dropped_total',
  ])
    assert.ok(exprs.includes(needed), `an alert on ${needed}`);
  assert.match(exprs, /status=~"5\.\."/, 'an error-ratio alert');

  const used = [
    ...dashboard.panels.flatMap((p) =>
      p.targets.flatMap((x) => metricNames(x.expr).map((n) => [p.title, n])),
    ),
    ...rules.flatMap((r) => metricNames(r.expr).map((n) => [r.alert, n])),
  ];
  assert.ok(used.length > 20);
  const missing = used.filter(([, n]) => !names.has(n!));
  assert.deepEqual(missing, [], 'metrics named in the examples that the gateway does not expose');
});

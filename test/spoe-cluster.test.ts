/**
 * The SPOE agent in multi-process mode: `gatehouse start` with `server.workers: 2` and `spoe.bind`, real
 * HAProxy (each series of HAPROXY_SERIES) running examples/haproxy/haproxy.cfg in front. Every worker
 * runs the agent on the shared port; every request gets its decision from a worker, and the status of
 * the instance shows the agent.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { generateApiKey } from '../src/identity/apikeys.js';
import { adminStatus, spawnGatehouse, startedCluster } from './helpers/cluster.js';
import { ROOT, tempDir, waitFor } from './helpers/gateway.js';
import { freePort, HAPROXY_SERIES, startHaproxy } from './helpers/haproxy.js';
import { request, seenOf, startBackend } from './helpers/proxy.js';

for (const series of HAPROXY_SERIES) {
  test(`SPOE agent with server.workers: 2 behind real ${series.name}: the workers decide on the shared port, the status shows the agent`, {
    timeout: 120_000,
  }, async (t) => {
    const haproxy = series.find();
    t.diagnostic(`HAProxy ${haproxy.version}`);
    const d = tempDir();
    t.after(() => d.remove());
    const backend = await startBackend(t, 'app');
    const [front, signin, agent] = [await freePort(), await freePort(), await freePort()];
    const key = generateApiKey('etl');
    const file = d.write(
      'gatehouse.yaml',
      `listeners: [{ name: signin, bind: "127.0.0.1:${signin}" }]
spoe: { bind: "127.0.0.1:${agent}" }
server: { workers: 2, drainTimeout: 2s }
admin: { bind: 127.0.0.1:0 }
identity:
  apiKeys: [{ id: etl, hash: "${key.hashLine}", subject: "agent:etl", groups: [agents] }]
policies:
  agents: { allow: [{ name: agents, groups: [agents] }] }
upstreams: { app: { servers: [{ url: "${backend.url}" }] } }
routes:
  - { name: api, match: { path: / }, upstream: app, policy: agents, identityHeaders: true }
`,
    );
    const gh = spawnGatehouse(file);
    t.after(() => gh.kill());
    const { admin } = await startedCluster(gh);
    const spoeFile = d.write(
      'gatehouse-spoe.conf',
      readFileSync(path.join(ROOT, 'examples/haproxy/gatehouse-spoe.conf'), 'utf8'),
    );
    const cfg = d.write(
      'haproxy.cfg',
      readFileSync(path.join(ROOT, 'examples/haproxy/haproxy.cfg'), 'utf8')
        .replaceAll('127.0.0.1:8080', `127.0.0.1:${front}`)
        .replaceAll('127.0.0.1:8081', `127.0.0.1:${signin}`)
        .replaceAll('127.0.0.1:12345', `127.0.0.1:${agent}`)
        .replaceAll('127.0.0.1:9000', `127.0.0.1:${backend.port}`)
        .replace('/etc/haproxy/gatehouse-spoe.conf', spoeFile),
    );
    await startHaproxy(t, haproxy, cfg, front);
    // Concurrent requests: HAProxy opens agent connections as it needs them.
    const results = await Promise.all(
      Array.from({ length: 60 }, (_, i) =>
        request(`http://127.0.0.1:${front}`, {
          path: `/jobs/${i}`,
          headers: i % 3 === 0 ? { accept: 'application/json' } : { 'x-api-key': key.key },
        }),
      ),
    );
    for (const [i, r] of results.entries()) {
      if (i % 3 === 0) assert.equal(r.status, 401, `request ${i}`);
      else {
        assert.equal(r.status, 200, `request ${i}: ${r.body.toString()}`);
        assert.equal(seenOf(r.body).headers['x-gatehouse-user'], 'agent:etl');
      }
    }
    // Each decision is an access-log line of the worker that took it.
    await waitFor(
      () => gh.lines.filter((l) => l.plane === 'spoe').length >= 60,
      10_000,
      'the access-log lines of the decisions',
    );
    // Which worker takes HAProxy's connections is the cluster's choice (a busy machine may give them all
    // to one); each decision names the worker that took it.
    assert.ok(gh.lines.filter((l) => l.plane === 'spoe').every((l) => l.worker !== undefined));
    const status = await adminStatus(admin);
    const reports = status.workers ?? [];
    assert.equal(reports.length, 2);
    assert.ok(status.spoe, 'the status shows the agent');
    assert.equal(status.spoe.port, agent);
  });
}

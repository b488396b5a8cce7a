/**
 * One instance with several workers and `state.store: memory`: the primary holds the one memory store
 * and the workers use it over IPC, so they share the generated assertion key (and sessions). Real
 * processes: `gatehouse start` with `server.workers: 2`, and `gatehouse check`.
 */
import assert from 'node:assert/strict';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { describe, test } from 'node:test';
import { createLocalJWKSet, decodeProtectedHeader, type JSONWebKeySet, jwtVerify } from 'jose';
import { generateApiKey } from '../src/identity/apikeys.js';
import { type LogLine, spawnGatehouse, startedCluster } from './helpers/cluster.js';
import { runCli, tempDir, waitFor } from './helpers/gateway.js';
import { startBackend } from './helpers/proxy.js';

/** One GET on a connection of its own, so that the cluster may hand it to either worker. */
function freshGet(
  port: number,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: '127.0.0.1', port, path, headers, agent: false, timeout: 10_000 },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          body += d;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`request ${path} timed out`)));
    req.on('error', reject);
    req.end();
  });
}

/** The worker whose access-log line has this request id (lines of a worker start with `worker`). */
function workerOf(lines: LogLine[], requestId: string): unknown {
  return lines.find((l) => l.requestId === requestId && l.worker !== undefined)?.worker;
}

describe('several workers with state.store: memory', { timeout: 180_000 }, () => {
  test('both workers serve API-key requests and every assertion verifies against one published key', async (t) => {
    const backend = await startBackend(t, 'app');
    const key = generateApiKey('etl');
    const d = tempDir();
    t.after(() => d.remove());
    const file = d.write(
      'gatehouse.yaml',
      `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
server: { workers: 2, drainTimeout: 5s }
state: { store: memory }
logging: { access: true }
identity:
  assertion: { algorithm: RS256 }
  apiKeys:
    - { id: etl, hash: "${key.hashLine}", subject: "agent:etl", groups: [agents] }
upstreams:
  app: { servers: [{ url: "${backend.url}" }] }
policies:
  agents: { allow: [{ name: agent-keys, authMethod: [apiKey], groups: [agents] }] }
routes:
  - { name: all, upstream: app, policy: agents }
`,
    );
    // RS256 keys take long to generate: workers that each created the key at start-up would race
    // (both find none, both store one) and end up with different keys; the primary creating it first
    // is what prevents that.
    const gh = spawnGatehouse(file);
    t.after(() => gh.kill());
    const { port } = await startedCluster(gh);

    // The key is what lets a request through.
    assert.equal((await freshGet(port, '/denied')).status, 401);
    assert.equal(backend.seen.length, 0);

    // Concurrent fresh connections, batch after batch until both workers answered some: the kernel gives
    // a new connection to whichever worker accepts first, and on a busy machine a few batches in a row
    // may all reach the same one. Which worker answered is read from the access log.
    const workersOf = async (answered: string[]): Promise<Set<unknown>> => {
      await waitFor(
        () => answered.every((id) => workerOf(gh.lines, id) !== undefined),
        15_000,
        'an access-log line with the worker for every request',
      );
      return new Set(answered.map((id) => workerOf(gh.lines, id)));
    };
    const ids: string[] = [];
    for (let batch = 0; batch < 4 || (batch < 40 && (await workersOf(ids)).size < 2); batch++) {
      const answers = await Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          freshGet(port, `/item/${batch * 10 + i}`, { 'x-api-key': key.key }),
        ),
      );
      for (const res of answers) {
        assert.equal(res.status, 200, res.body);
        ids.push(String(res.headers['x-request-id']));
      }
    }
    const jwksIds: string[] = [];
    const jwksBodies: string[] = [];
    for (let batch = 0; batch < 3 || (batch < 40 && (await workersOf(jwksIds)).size < 2); batch++) {
      const answers = await Promise.all(
        Array.from({ length: 10 }, () => freshGet(port, '/.gatehouse/jwks.json')),
      );
      for (const res of answers) {
        assert.equal(res.status, 200, res.body);
        jwksIds.push(String(res.headers['x-request-id']));
        jwksBodies.push(res.body);
      }
    }
    await workersOf([...ids, ...jwksIds]);
    const servedBy = new Set(ids.map((id) => workerOf(gh.lines, id)));
    assert.equal(servedBy.size, 2, `API-key requests were served by workers ${[...servedBy].join(', ')}`);
    const publishedBy = new Set(jwksIds.map((id) => workerOf(gh.lines, id)));
    assert.equal(publishedBy.size, 2, `the JWKS was served by workers ${[...publishedBy].join(', ')}`);

    // Every worker publishes the same single key ...
    assert.equal(new Set(jwksBodies).size, 1, 'the workers publish different key sets');
    const jwks = JSON.parse(jwksBodies[0]!) as JSONWebKeySet;
    assert.equal(jwks.keys.length, 1);
    const kid = jwks.keys[0]?.kid;
    assert.equal(typeof kid, 'string');

    // ... and it is the key of every assertion the upstream received, from either worker.
    assert.equal(backend.seen.length, 40);
    const keySet = createLocalJWKSet(jwks);
    const kids = new Set<string | undefined>();
    for (const seen of backend.seen) {
      const assertion = seen.headers['x-gatehouse-assertion'];
      assert.equal(typeof assertion, 'string', `no assertion on ${seen.url}`);
      kids.add(decodeProtectedHeader(assertion as string).kid);
      const { payload } = await jwtVerify(assertion as string, keySet, {
        issuer: 'gatehouse',
        audience: '127.0.0.1',
      });
      assert.equal(payload.sub, 'agent:etl');
    }
    assert.deepEqual([...kids], [kid]);

    // A worker restarted after a crash reads the key from the primary's store instead of making one.
    const victim = ids.map((id) => workerOf(gh.lines, id)).find((w) => typeof w === 'number') as number;
    const victimPid = gh.lines.find((l) => l.worker === victim && typeof l.pid === 'number')?.pid as number;
    assert.equal(typeof victimPid, 'number');
    const from = gh.lines.length;
    process.kill(victimPid, 'SIGKILL');
    await gh.waitForLog(
      (l) => l.role === 'primary' && l.msg === 'worker restarted and serving',
      'the restart',
      {
        from,
      },
    );
    const known = new Set(servedBy);
    const later: string[] = [];
    const seenBefore = backend.seen.length;
    for (let i = 0; i < 20; i++) {
      const res = await freshGet(port, `/after/${i}`, { 'x-api-key': key.key });
      assert.equal(res.status, 200, res.body);
      later.push(String(res.headers['x-request-id']));
    }
    await waitFor(
      () => later.every((id) => workerOf(gh.lines, id) !== undefined),
      15_000,
      'access-log lines of the requests after the restart',
    );
    const fresh = later.map((id) => workerOf(gh.lines, id)).filter((w) => !known.has(w));
    assert.ok(fresh.length > 0, 'the restarted worker served none of the requests');
    for (const seen of backend.seen.slice(seenBefore)) {
      const assertion = seen.headers['x-gatehouse-assertion'] as string;
      assert.equal(decodeProtectedHeader(assertion).kid, kid);
      await jwtVerify(assertion, keySet, { issuer: 'gatehouse', audience: '127.0.0.1' });
    }

    // SIGTERM: the workers drain, then the primary closes the store and exits cleanly.
    process.kill(gh.child.pid!, 'SIGTERM');
    assert.deepEqual(await gh.exitedWithin(20_000), { code: 0, signal: null });
    assert.ok(gh.lines.some((l) => l.role === 'primary' && l.msg === 'gateway stopped'));
  });

  test('gatehouse check accepts several workers, a memory store and an OIDC provider', async (t) => {
    const d = tempDir();
    t.after(() => d.remove());
    const file = d.write(
      'gh.yaml',
      `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
server: { workers: 2 }
state: { store: memory }
identity:
  session: { secrets: ["a-session-secret-of-at-least-32-characters"] }
  providers: [{ name: corp, type: oidc, issuer: https://idp.example.com, clientId: gatehouse }]
upstreams:
  app: { servers: [{ url: http://127.0.0.1:9001 }] }
routes:
  - { name: app, upstream: app, policy: { allow: [{ groups: [eng] }] } }
`,
    );
    const r = await runCli(['check', '-c', file]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^\S+: ok \(1 route, 1 upstream\)\n$/);
    assert.equal(r.stderr, '');
  });
});

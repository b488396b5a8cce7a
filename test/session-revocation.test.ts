/**
 * Sign-out reaches every process at once: every instance and worker keeps verified sessions in a short
 * local cache, and a logout (or a logout everywhere) served by one of them must make the others refuse
 * the cookie within a second, not when their cache entries expire. Real peers: the test's own
 * redis-server, the test OpenID provider, three `Gateway` instances on one Redis, and a `gatehouse
 * start` process with `server.workers: 2` (memory store, revocations relayed over the cluster IPC).
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import http from 'node:http';
import { type TestContext, test } from 'node:test';
import { Gateway } from '../src/process/gateway.js';
import { type LogLine, spawnGatehouse, startedCluster } from './helpers/cluster.js';
import { memoryLogger, tempDir, waitFor } from './helpers/gateway.js';
import { startIdp } from './helpers/oidc.js';
import { startBackend } from './helpers/proxy.js';
import { startRedisServer } from './helpers/redis.js';
import { CookieJar, hop, signInOverHttp } from './helpers/signin.js';

const SECRET = 'revocation-test-session-secret-0123456789';
const HOST = 'app.gatehouse.test';
/** The bound: a revoked cookie is refused everywhere this long after the logout answered. */
const BOUND_MS = 1000;
/** How long the test keeps asking after a logout (past the bound, to count what got through late). */
const WATCH_MS = 1800;

function config(o: { issuer: string; backend: string; store: string; workers?: number }): string {
  return `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
server: { workers: ${o.workers ?? 1}, drainTimeout: 2s }
state: { store: "${o.store}" }
logging: { level: ${o.workers === undefined ? 'warn' : 'info'}, access: ${o.workers !== undefined} }
upstreams: { app: { servers: [{ url: "${o.backend}" }] } }
identity:
  session: { secrets: ["${SECRET}"] }
  providers:
    - { name: corp, type: oidc, issuer: "${o.issuer}", clientId: gatehouse, clientSecret: file:client-secret,
        scopes: [openid, email, profile, groups] }
routes:
  - { name: app, match: { path: /app }, upstream: app, identityHeaders: true }
`;
}

/** One API request (no redirect to login) with `cookie`: the status. */
async function statusWith(origin: string, cookie: string): Promise<number> {
  const r = await hop(`${origin}/app/data`, new CookieJar(), { accept: 'application/json', cookie });
  return r.status;
}

/**
 * `n` requests with `cookie` at once, each on a connection of its own: the kernel hands concurrent
 * accepts to both workers, where one request after another on a kept-alive connection would only
 * ever reach one. 200 when any of them got through, else the first refusal's status.
 */
async function spreadStatus(origin: string, cookie: string, n = 4): Promise<number> {
  const u = new URL(origin);
  const one = () =>
    new Promise<number>((resolve, reject) => {
      const req = http.request(
        {
          host: '127.0.0.1',
          port: u.port,
          path: '/app/data',
          agent: false,
          timeout: 15_000,
          headers: { host: u.host, accept: 'application/json', cookie, connection: 'close' },
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.on('timeout', () => req.destroy(new Error('no answer in 15 s')));
      req.on('error', reject);
      req.end();
    });
  const statuses = await Promise.all(Array.from({ length: n }, one));
  return statuses.includes(200) ? 200 : statuses[0]!;
}

interface Answer {
  /** When it was sent, in ms after the logout answered. */
  at: number;
  target: number;
  status: number;
}

/**
 * Asks every target in turn with the revoked cookie, from the moment the logout answered until
 * `WATCH_MS` later, and checks the bound: nothing got through after `BOUND_MS`, every target was asked
 * after it, and every target's last answer was a refusal.
 */
async function watchRevocation(
  targets: ReadonlyArray<(cookie: string) => Promise<number>>,
  cookies: readonly string[],
  since: number,
): Promise<Answer[]> {
  const answers: Answer[] = [];
  while (Date.now() - since < WATCH_MS) {
    for (let i = 0; i < targets.length; i++) {
      for (const cookie of cookies) {
        const at = Date.now() - since;
        answers.push({ at, target: i, status: await targets[i]!(cookie) });
      }
    }
  }
  const late = answers.filter((a) => a.at >= BOUND_MS && a.status === 200);
  assert.equal(
    late.length,
    0,
    `requests that still got through ${BOUND_MS} ms after the logout: ${JSON.stringify(late)}`,
  );
  for (let i = 0; i < targets.length; i++) {
    const own = answers.filter((a) => a.target === i);
    assert.ok(
      own.some((a) => a.at >= BOUND_MS),
      `target ${i} was asked after the bound`,
    );
    assert.equal(own.at(-1)!.status, 401, `target ${i} refuses the cookie`);
  }
  return answers;
}

async function threeInstances(t: TestContext) {
  const redis = await startRedisServer();
  t.after(() => redis.close());
  const backend = await startBackend(t, 'app');
  const d = tempDir();
  t.after(() => d.remove());
  d.write('client-secret', 'not-yet');
  const file = d.write(
    'gatehouse.yaml',
    config({ issuer: 'http://127.0.0.1:9', backend: backend.url, store: redis.url }),
  );
  const gateways: Gateway[] = [];
  for (let i = 0; i < 3; i++) {
    const gw = await Gateway.start({ configFile: file, logger: memoryLogger().logger, watch: false });
    t.after(() => gw.shutdown());
    gateways.push(gw);
  }
  const origins = gateways.map((gw) => `http://${HOST}:${gw.address('plain')!.port}`);
  const idp = await startIdp(t, { redirectUris: origins.map((o) => `${o}/.gatehouse/callback`) });
  await writeFile(d.file('client-secret'), idp.clientSecret);
  await writeFile(file, config({ issuer: idp.issuer, backend: backend.url, store: redis.url }));
  for (const gw of gateways) assert.equal((await gw.reload()).ok, true);
  // Every instance hears revocations before the test signs anyone out.
  await waitFor(() => gateways.every((gw) => gw.runtime.store.revocations.live), 10_000, 'revocation feeds');
  return { gateways, origins, backend };
}

test('logout on one of three instances sharing Redis: the other two refuse the cookie within 1 s', {
  timeout: 90_000,
}, async (t) => {
  const { origins, backend } = await threeInstances(t);
  const { cookie } = await signInOverHttp(origins[0]!, 'alice', { rd: '/app/data' });
  // Every instance accepts the session (and now holds it in its cache).
  for (const origin of origins) assert.equal(await statusWith(origin, cookie), 200, origin);
  assert.equal(backend.seen.at(-1)?.headers['x-gatehouse-user'], 'alice');

  const out = await hop(`${origins[0]}/.gatehouse/logout`, new CookieJar(), { method: 'POST', cookie });
  assert.ok(out.status === 200 || out.status === 302, `logout answered ${out.status}`);
  const since = Date.now();
  await watchRevocation(
    origins.map((o) => (c: string) => statusWith(o, c)),
    [cookie],
    since,
  );
});

test('logout everywhere on one instance ends every session of the user on all three within 1 s', {
  timeout: 90_000,
}, async (t) => {
  const { origins } = await threeInstances(t);
  const laptop = await signInOverHttp(origins[0]!, 'alice', { rd: '/app/data' });
  const phone = await signInOverHttp(origins[1]!, 'alice', { rd: '/app/data' });
  const other = await signInOverHttp(origins[2]!, 'bob', { rd: '/app/data' });
  for (const origin of origins) {
    for (const s of [laptop, phone, other]) assert.equal(await statusWith(origin, s.cookie), 200);
  }
  const out = await hop(`${origins[2]}/.gatehouse/logout?everywhere=1`, new CookieJar(), {
    method: 'POST',
    cookie: phone.cookie,
  });
  assert.ok(out.status === 200 || out.status === 302, `logout answered ${out.status}`);
  await watchRevocation(
    origins.map((o) => (c: string) => statusWith(o, c)),
    [laptop.cookie, phone.cookie],
    Date.now(),
  );
  for (const origin of origins)
    assert.equal(await statusWith(origin, other.cookie), 200, 'bob stays signed in');
});

test('server.workers: 2 with the memory store: after logout no worker accepts the cookie 1 s later', {
  timeout: 120_000,
}, async (t) => {
  const backend = await startBackend(t, 'app');
  const d = tempDir();
  t.after(() => d.remove());
  d.write('client-secret', 'not-yet');
  const file = d.write(
    'gatehouse.yaml',
    config({ issuer: 'http://127.0.0.1:9', backend: backend.url, store: 'memory', workers: 2 }),
  );
  const gh = spawnGatehouse(file);
  t.after(() => gh.kill());
  const { port } = await startedCluster(gh);
  const origin = `http://${HOST}:${port}`;
  const idp = await startIdp(t, { redirectUris: [`${origin}/.gatehouse/callback`] });
  await writeFile(d.file('client-secret'), idp.clientSecret);
  const from = gh.lines.length;
  await writeFile(file, config({ issuer: idp.issuer, backend: backend.url, store: 'memory', workers: 2 }));
  gh.child.kill('SIGHUP');
  await gh.waitForLog(
    (l) => l.role === 'primary' && l.msg === 'configuration reloaded',
    'the reload with the provider',
    { from },
  );
  // Both workers run the new configuration: a login start goes to the provider.
  await waitFor(
    async () => {
      for (let i = 0; i < 4; i++) {
        const r = await hop(`${origin}/.gatehouse/login`, new CookieJar());
        if (!r.location?.startsWith(idp.issuer)) return false;
      }
      return true;
    },
    20_000,
    'both workers to use the provider',
  );

  const { cookie } = await signInOverHttp(origin, 'alice', { rd: '/app/data' });
  // Concurrent fresh connections are spread over both workers: both accept the session and cache it.
  const served = new Set<unknown>();
  await waitFor(
    async () => {
      const status = await spreadStatus(origin, cookie);
      assert.equal(status, 200);
      for (const l of gh.lines as LogLine[])
        if (l.path === '/app/data' && l.status === 200) served.add(l.worker);
      return served.size === 2;
    },
    20_000,
    'both workers to serve the signed-in user',
  );

  const out = await hop(`${origin}/.gatehouse/logout`, new CookieJar(), { method: 'POST', cookie });
  assert.ok(out.status === 200 || out.status === 302, `logout answered ${out.status}`);
  const since = Date.now();
  const mark = gh.lines.length;
  // Two targets that are the same port, each asking over concurrent fresh connections: both workers
  // are asked.
  const answers = await watchRevocation(
    [(c) => spreadStatus(origin, c), (c) => spreadStatus(origin, c)],
    [cookie],
    since,
  );
  assert.ok(answers.length > 0);
  const refusedBy = new Set(
    (gh.lines.slice(mark) as LogLine[])
      .filter((l) => l.path === '/app/data' && l.status === 401)
      .map((l) => l.worker),
  );
  assert.equal(refusedBy.size, 2, 'both workers refused the revoked cookie');
});

/**
 * Failure of the state store under rate limits and quotas: a `gatehouse start` process on a
 * redis-server of this test's own, which hangs (SIGSTOP, then SIGCONT) or goes away (killed, then
 * started again empty on the same port). The gateway runs with the store's defaults (command timeout
 * and health check), as an operator's would.
 *
 * While Redis is out, the route whose rate limit says `onStoreError: allow` answers 200 (without
 * RateLimit headers: nothing was counted), the route with a quota (`onStoreError: deny` by default)
 * answers 503 GH_STATE_UNAVAILABLE, no request waits past a couple of seconds, every such verdict is
 * counted as `store-error` in /metrics, and the outage is logged once, not per request. When Redis is
 * back, both limits are enforced again by themselves, the return is logged once, and a quota was charged
 * for nothing that the outage refused.
 */
import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';
import { generateApiKey } from '../src/identity/apikeys.js';
import {
  adminMetrics,
  type GatehouseProcess,
  type LogLine,
  metricSum,
  spawnGatehouse,
  startedInstance,
} from './helpers/cluster.js';
import { startBackend, tempDir, waitFor } from './helpers/gateway.js';
import { type Answer, Lanes, quotaUsage, tally, zoneAwayFromHourTurn } from './helpers/limits.js';
import { startRedisServer } from './helpers/redis.js';

const KEY = generateApiKey('etl');
const as = { 'x-api-key': KEY.key, accept: 'application/json' };
const BURST = 3;
const QUOTA = 5;
/** The Redis store's default command timeout. */
const COMMAND_TIMEOUT_MS = 2000;
/** No request may wait longer: the store's command timeout and a margin for a busy machine. */
const STUCK_MS = COMMAND_TIMEOUT_MS + 1500;

const OUTAGE = 'state store (Redis) unavailable';
const BACK = 'state store (Redis) available again';
const LIMITS_OUT =
  'state store unavailable: until it answers, limits with onStoreError allow are not enforced and requests under limits with onStoreError deny are refused (503)';
const LIMITS_BACK = 'state store answers again: rate limits and quotas are enforced again';

async function setup(t: TestContext) {
  const redis = await startRedisServer();
  t.after(() => redis.close());
  const backend = await startBackend('app');
  t.after(() => backend.close());
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gatehouse.yaml',
    `listeners: [{ name: plain, bind: "127.0.0.1:0" }]
admin: { bind: "127.0.0.1:0" }
server: { drainTimeout: 2s }
state: { store: "${redis.url}/0" }
logging: { level: info, access: false }
identity:
  apiKeys: [{ id: etl, hash: "${KEY.hashLine}", subject: "agent:etl", groups: [agents] }]
upstreams: { app: { servers: [{ url: "${backend.url}" }] } }
policies: { agents: { allow: [{ groups: [agents] }] } }
quotas:
  budget: { key: identity, limit: ${QUOTA}, window: 1h, timeZone: ${zoneAwayFromHourTurn()}, routes: [metered] }
routes:
  - { name: free, match: { path: /free }, upstream: app, policy: agents,
      rateLimit: { rate: 1/min, burst: ${BURST}, onStoreError: allow } }
  - { name: metered, match: { path: /metered }, upstream: app, policy: agents }
`,
  );
  const gh = spawnGatehouse(file);
  t.after(() => gh.kill());
  const { port, admin } = await startedInstance(gh);
  const lanes = new Lanes([`http://127.0.0.1:${port}`], 8);
  t.after(() => lanes.close());
  return { redis, gh, admin, lanes };
}

type Setup = Awaited<ReturnType<typeof setup>>;

/** `gatehouse_limit_verdicts_total` with verdict store-error of one route, from the gateway's /metrics. */
async function storeErrors(admin: string, route: string): Promise<number> {
  return metricSum(
    await adminMetrics(admin),
    'gatehouse_limit_verdicts_total',
    `route="${route}",verdict="store-error"`,
  );
}

function count(lines: readonly LogLine[], msg: string): number {
  return lines.filter((l) => l.msg === msg).length;
}

/** Both limits enforced: the rate limit's burst, then 429; two units of the quota spent. */
async function enforcedBefore(s: Setup): Promise<void> {
  const free: Answer[] = [];
  for (let i = 0; i <= BURST; i++) free.push(await s.lanes.get(i, '/free', as));
  assert.deepEqual(tally(free), { 200: BURST, '429 GH_RATE_LIMITED': 1 });
  for (let i = 0; i < 2; i++) assert.equal((await s.lanes.get(i, '/metered', as)).status, 200);
}

/** The store-error verdicts of both routes so far. */
async function verdicts(s: Setup): Promise<{ free: number; metered: number }> {
  return { free: await storeErrors(s.admin, 'free'), metered: await storeErrors(s.admin, 'metered') };
}

/**
 * What must hold while Redis is out (it went out just now; `from` is the first log line since, and
 * `before` the verdicts counted until then): requests sent at once, while the outage is not known yet,
 * and then for two seconds.
 */
async function duringOutage(
  s: Setup,
  tag: string,
  from: number,
  before: { free: number; metered: number },
): Promise<void> {
  const answers: Array<Answer & { path: string }> = [];
  const ask = async (lane: number, path: string) =>
    answers.push({ path, ...(await s.lanes.get(lane, path, as)) });
  // Some at once, so that several wait on the store together, then a steady trickle.
  await Promise.all([0, 1, 2, 3].flatMap((i) => [ask(i, '/free'), ask(i + 4, '/metered')]));
  const firstWave = answers.length;
  const until = Date.now() + 2000;
  for (let i = 0; Date.now() < until; i++) {
    await Promise.all([ask(i, '/free'), ask(i + 1, '/metered')]);
    await new Promise((r) => setTimeout(r, 50));
  }
  const free = answers.filter((a) => a.path === '/free');
  const metered = answers.filter((a) => a.path === '/metered');
  const slowest = Math.max(...answers.map((a) => a.answeredAt - a.sentAt));
  const seen = `${tag}: free ${JSON.stringify(tally(free))}, metered ${JSON.stringify(tally(metered))}, slowest ${slowest.toFixed(0)} ms`;
  assert.ok(slowest <= STUCK_MS, `a request waited on the store: ${seen}`);
  // Once the outage is known, nothing waits for the command timeout (2 s) any more.
  const later = Math.max(...answers.slice(firstWave).map((a) => a.answeredAt - a.sentAt));
  assert.ok(later < COMMAND_TIMEOUT_MS, `${tag}: a request after the first ones took ${later.toFixed(0)} ms`);
  assert.deepEqual(tally(free), { 200: free.length }, `allow: served uncounted (${seen})`);
  for (const a of free) assert.equal(a.rateLimit, undefined, `${tag}: nothing was counted, nothing to say`);
  assert.deepEqual(tally(metered), { '503 GH_STATE_UNAVAILABLE': metered.length }, `deny (${seen})`);

  const after = await verdicts(s);
  assert.equal(after.free - before.free, free.length, `${tag}: store-error verdicts of the allow route`);
  assert.equal(
    after.metered - before.metered,
    metered.length,
    `${tag}: store-error verdicts of the deny route`,
  );

  const lines = s.gh.lines.slice(from);
  const logged = lines.filter((l) => Number(l.level) >= 40);
  const said = JSON.stringify(logged.map((l) => l.msg));
  console.log(`${seen}; logged: ${said}`);
  assert.equal(count(lines, OUTAGE), 1, `${tag}: the store logs the outage once: ${said}`);
  assert.equal(count(lines, LIMITS_OUT), 1, `${tag}: the limit stage logs the outage once: ${said}`);
  assert.ok(
    logged.length <= 3,
    `${tag}: ${answers.length} requests in the outage, ${logged.length} warnings: ${said}`,
  );
  assert.equal(s.gh.child.exitCode, null, `${tag}: the gateway is running: ${s.gh.stderr()}`);
}

/**
 * Once Redis is back: the rate limit refuses again (429 with its headers) and the quota admits `left` more
 * before refusing, all by themselves within a few seconds; the return is logged once.
 */
async function enforcedAgain(s: Setup, tag: string, from: number, left: number): Promise<void> {
  let limited: Answer | undefined;
  await waitFor(
    async () => {
      const r = await s.lanes.get(0, '/free', as);
      if (r.status === 429) limited = r;
      else assert.equal(r.status, 200, `${tag}: ${JSON.stringify(r)}`);
      return limited !== undefined;
    },
    10_000,
    `${tag}: the rate limit to be enforced again`,
  );
  assert.equal(limited?.code, 'GH_RATE_LIMITED');
  assert.match(String(limited?.retryAfter), /^[1-9]\d*$/);
  assert.match(String(limited?.rateLimit), /^"free";r=0;t=\d+$/);

  const metered: Answer[] = [];
  await waitFor(
    async () => {
      const r = await s.lanes.get(1, '/metered', as);
      if (r.status !== 503) metered.push(r);
      return r.status === 429;
    },
    10_000,
    `${tag}: the quota to be enforced again (${JSON.stringify(tally(metered))})`,
  );
  assert.deepEqual(
    tally(metered),
    { 200: left, '429 GH_QUOTA_EXCEEDED': 1 },
    `${tag}: the quota admits what was left of it, then refuses`,
  );
  assert.equal((await quotaUsage(s.admin, 'agent:etl', 'budget')).used, QUOTA);

  const lines = s.gh.lines.slice(from);
  assert.equal(count(lines, BACK), 1, `${tag}: the store logs its return once`);
  assert.equal(count(lines, LIMITS_BACK), 1, `${tag}: the limit stage logs its return once`);
}

async function stopsCleanly(gh: GatehouseProcess): Promise<void> {
  gh.child.kill('SIGTERM');
  assert.deepEqual(await gh.exitedWithin(15_000), { code: 0, signal: null }, gh.stderr());
  assert.doesNotMatch(gh.stderr(), /Unhandled|Error/, 'nothing went to stderr');
}

test('Redis hangs (SIGSTOP): allow serves uncounted, deny answers 503 at once, one log line; after SIGCONT both enforce again', {
  timeout: 30_000,
}, async (t) => {
  const s = await setup(t);
  await enforcedBefore(s);
  const before = await verdicts(s);
  const from = s.gh.lines.length;
  // A failure before SIGCONT leaves the server stopped; closing it continues and kills it.
  s.redis.stop();
  await duringOutage(s, 'hung', from, before);
  s.redis.cont();
  // Redis kept everything: the bucket is still empty and two units of the quota are spent.
  await enforcedAgain(s, 'continued', from, QUOTA - 2);
  await stopsCleanly(s.gh);
});

test('Redis killed: allow serves uncounted, deny answers 503 at once, one log line; restarted empty, both enforce again', {
  timeout: 30_000,
}, async (t) => {
  const s = await setup(t);
  await enforcedBefore(s);
  const before = await verdicts(s);
  const from = s.gh.lines.length;
  await s.redis.kill();
  await duringOutage(s, 'killed', from, before);
  await s.redis.restart();
  // The new Redis is empty: a full bucket (the burst, then 429) and the whole quota.
  await enforcedAgain(s, 'restarted', from, QUOTA);
  await stopsCleanly(s.gh);
});

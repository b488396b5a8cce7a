/**
 * The dashboard's admin API on a real admin listener: the event stream and its one-time tickets, the
 * live snapshot, sessions listed and revoked through a real SessionManager, reload history, and the
 * audit hook for admin actions and refused requests.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { test } from 'node:test';
import {
  AdminServer,
  type AdminServerOptions,
  type LiveEvent,
  type ReloadResult,
} from '../src/admin/server.js';
import { SessionManager } from '../src/identity/session.js';
import { LiveStats, ReloadHistory } from '../src/observe/live-stats.js';
import type { AccessEntry } from '../src/observe/log.js';
import { createLogger } from '../src/observe/log.js';
import type { Runtime } from '../src/runtime.js';
import { MemoryStore } from '../src/state/memory.js';
import { RedisStore } from '../src/state/redis.js';
import type { StateStore } from '../src/state/types.js';
import { LineCollector, origin, request, staticRuntime } from './helpers/observe.js';
import { redisUrl } from './helpers/redis.js';

const TOKEN = 'dashboard-admin-t0ken';
const AUTH = { authorization: `Bearer ${TOKEN}` };

const config = {
  listeners: [{ name: 'plain', bind: '127.0.0.1:0' }],
  upstreams: { app: { servers: [{ url: 'http://127.0.0.1:9201' }, { url: 'http://127.0.0.1:9202' }] } },
  routes: [{ name: 'app', match: { path: '/' }, upstream: 'app', public: true }],
};

function entry(over: Partial<AccessEntry> = {}): AccessEntry {
  return {
    time: '',
    requestId: 'r',
    client: '127.0.0.1',
    host: 'h',
    method: 'GET',
    path: '/',
    route: 'app',
    upstream: 'app',
    server: undefined,
    status: 200,
    bytesIn: 0,
    bytesOut: 0,
    duration: 3,
    upstreamDuration: undefined,
    retries: 0,
    reason: 'public-route',
    ...over,
  };
}

interface Setup {
  url: string;
  admin: AdminServer;
  stats: LiveStats;
  audits: Array<Record<string, unknown>>;
  setHealth(url: string, health: 'up' | 'ejected' | 'down'): void;
}

async function setup(
  t: { after(fn: () => Promise<void> | void): void },
  overrides: Partial<AdminServerOptions> = {},
): Promise<Setup> {
  const stats = new LiveStats();
  const audits: Array<Record<string, unknown>> = [];
  const health: Record<string, 'up' | 'ejected' | 'down'> = {};
  let generation = 1;
  const runtime = (): Runtime => staticRuntime(config, { generation, health });
  const admin = new AdminServer({
    getRuntime: runtime,
    logger: createLogger('fatal', new LineCollector()),
    reload: async (): Promise<ReloadResult> => {
      generation++;
      return { ok: true, generation };
    },
    token: TOKEN,
    live: () => stats.snapshot(),
    audit: (r) => audits.push(r),
    reloadHistory: new ReloadHistory(),
    ...overrides,
  });
  const url = origin(await admin.listen('127.0.0.1:0'));
  t.after(() => admin.close());
  return {
    url,
    admin,
    stats,
    audits,
    setHealth: (u, h) => {
      health[u] = h;
    },
  };
}

/** An open event stream: its events as they arrive, and how the response ended. */
interface Stream {
  status: number;
  headers: http.IncomingHttpHeaders;
  events: Array<{ event: string; data: string }>;
  /** Resolves with 'end' when the server ended the response, 'error' when the connection broke. */
  ended: Promise<'end' | 'error'>;
  next(event?: string, timeoutMs?: number): Promise<{ event: string; data: string }>;
  close(): void;
}

function openStream(url: string, headers: Record<string, string> = {}): Promise<Stream> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers }, (res) => {
      const events: Array<{ event: string; data: string }> = [];
      const waiters: Array<() => void> = [];
      let buffer = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffer += chunk;
        let at = buffer.indexOf('\n\n');
        while (at !== -1) {
          const block = buffer.slice(0, at);
          buffer = buffer.slice(at + 2);
          let event = 'message';
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('data: ')) data.push(line.slice(6));
          }
          if (data.length > 0) events.push({ event, data: data.join('\n') });
          at = buffer.indexOf('\n\n');
        }
        for (const w of waiters.splice(0)) w();
      });
      const ended = new Promise<'end' | 'error'>((done) => {
        res.on('end', () => done('end'));
        res.on('error', () => done('error'));
        res.on('aborted', () => done('error'));
      });
      let read = 0;
      const next = async (event = 'snapshot', timeoutMs = 5000) => {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
          while (read < events.length) {
            const e = events[read++]!;
            if (e.event === event) return e;
          }
          const left = deadline - Date.now();
          if (left <= 0) throw new Error(`no ${event} event within ${timeoutMs} ms`);
          await new Promise<void>((wake) => {
            const timer = setTimeout(wake, left);
            waiters.push(() => {
              clearTimeout(timer);
              wake();
            });
          });
        }
      };
      resolve({
        status: res.statusCode ?? 0,
        headers: res.headers,
        events,
        ended,
        next,
        close: () => req.destroy(),
      });
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error('stream request timed out')));
  });
}

async function ticket(url: string): Promise<string> {
  const res = await request(`${url}/api/v1/live/ticket`, { method: 'POST', headers: AUTH });
  assert.equal(res.status, 200);
  const body = res.json() as { ticket: string; expiresIn: number };
  assert.equal(body.expiresIn, 30);
  assert.match(body.ticket, /^[A-Za-z0-9_-]{43}$/);
  return body.ticket;
}

test('the event stream refuses without the token or a valid ticket, and audits the refusal', async (t) => {
  const { url, audits } = await setup(t);
  const bare = await request(`${url}/api/v1/live`);
  assert.equal(bare.status, 401);
  assert.equal((bare.json() as { error: string }).error, 'GH_ADMIN_UNAUTHORIZED');
  const forged = await request(`${url}/api/v1/live?ticket=${'A'.repeat(43)}`);
  assert.equal(forged.status, 401);
  assert.equal((await request(`${url}/api/v1/live?ticket=`)).status, 401);
  const wrong = await request(`${url}/api/v1/live/ticket`, {
    method: 'POST',
    headers: { authorization: 'Bearer not-the-token' },
  });
  assert.equal(wrong.status, 401);
  // A ticket is not a token: it opens the stream and nothing else.
  const tk = await ticket(url);
  assert.equal((await request(`${url}/api/v1/status?ticket=${tk}`)).status, 401);

  const denied = audits.filter((a) => a.code === 'admin.denied');
  assert.deepEqual(
    denied.map((a) => [a.action, a.reason, a.who, a.event]),
    [
      ['GET /api/v1/live', 'missing-token', 'anonymous', 'admin'],
      ['GET /api/v1/live', 'bad-ticket', 'anonymous', 'admin'],
      ['GET /api/v1/live', 'bad-ticket', 'anonymous', 'admin'],
      ['POST /api/v1/live/ticket', 'bad-token', 'anonymous', 'admin'],
      ['GET /api/v1/status', 'missing-token', 'anonymous', 'admin'],
    ],
  );
  for (const a of denied) assert.equal(a.client, '127.0.0.1');
  // Neither the token nor a ticket ever reaches the trail.
  assert.doesNotMatch(JSON.stringify(audits), new RegExp(`${tk}|not-the-token|${'A'.repeat(43)}`));
});

test('a ticket opens one stream once; snapshots arrive every second and follow the traffic', async (t) => {
  const { url, stats, setHealth } = await setup(t);
  const tk = await ticket(url);
  const stream = await openStream(`${url}/api/v1/live?ticket=${tk}`);
  t.after(() => stream.close());
  assert.equal(stream.status, 200);
  assert.match(String(stream.headers['content-type']), /^text\/event-stream/);
  assert.equal(stream.headers['cache-control'], 'no-store');
  const first = JSON.parse((await stream.next()).data) as LiveEvent;
  assert.equal(first.generation, 1);
  assert.equal(first.traffic.totals.requests, 0);
  assert.deepEqual(
    first.upstreams[0]!.servers.map((s) => [s.url, s.health, s.active, s.ejections]),
    [
      ['http://127.0.0.1:9201', 'up', 0, 0],
      ['http://127.0.0.1:9202', 'up', 1, 0],
    ],
  );
  // Used up: a second stream with the same ticket is refused.
  assert.equal((await request(`${url}/api/v1/live?ticket=${tk}`)).status, 401);

  for (let i = 0; i < 7; i++) stats.observe(entry());
  stats.observe(entry({ status: 403, reason: 'no-allow-rule', identity: 'bob' }));
  setHealth('http://127.0.0.1:9202', 'ejected');
  const started = Date.now();
  let ev = JSON.parse((await stream.next('snapshot', 3000)).data) as LiveEvent;
  assert.ok(Date.now() - started < 2500, 'the next snapshot came within about a second');
  assert.equal(ev.traffic.totals.requests, 8);
  assert.equal(ev.traffic.routes[0]!.route, 'app');
  const refused = ev.traffic.decisions.reasons.find((r) => r.reason === 'no-allow-rule');
  assert.equal(refused?.refused, true);
  assert.equal(ev.traffic.identities[0]?.identity, 'bob');
  assert.equal(ev.upstreams[0]!.servers[1]!.ejections, 1);
  assert.equal(ev.upstreams[0]!.servers[1]!.health, 'ejected');
  setHealth('http://127.0.0.1:9202', 'up');
  ev = JSON.parse((await stream.next()).data) as LiveEvent;
  setHealth('http://127.0.0.1:9202', 'ejected');
  ev = JSON.parse((await stream.next()).data) as LiveEvent;
  assert.equal(ev.upstreams[0]!.servers[1]!.ejections, 2);

  // The token in a header opens the stream too (tools such as curl).
  const direct = await openStream(`${url}/api/v1/live`, AUTH);
  t.after(() => direct.close());
  assert.equal(direct.status, 200);
  assert.equal((JSON.parse((await direct.next()).data) as LiveEvent).traffic.totals.requests, 8);
  const wrongMethod = await request(`${url}/api/v1/live`, { method: 'POST', headers: AUTH });
  assert.equal(wrongMethod.status, 405);
});

test('closing the admin listener ends open streams cleanly and promptly', async (t) => {
  const { url, admin } = await setup(t);
  const stream = await openStream(`${url}/api/v1/live?ticket=${await ticket(url)}`);
  await stream.next();
  const started = Date.now();
  await admin.close();
  assert.ok(Date.now() - started < 2000, `close took ${Date.now() - started} ms`);
  assert.equal(await stream.ended, 'end');
  assert.ok(stream.events.some((e) => e.event === 'close'));
});

test('a stalled source reports a problem event and the stream carries on', async (t) => {
  let fail = true;
  const stats = new LiveStats();
  const { url } = await setup(t, {
    live: () => {
      if (fail) throw new Error('worker 2 did not answer');
      return stats.snapshot();
    },
  });
  const stream = await openStream(`${url}/api/v1/live`, AUTH);
  t.after(() => stream.close());
  const problem = JSON.parse((await stream.next('problem')).data) as { error: string; message: string };
  assert.equal(problem.error, 'GH_LIVE_SNAPSHOT');
  assert.match(problem.message, /worker 2/);
  fail = false;
  await stream.next('snapshot');
});

test('sessions are listed without their ids and revoked everywhere, audited', async (t) => {
  const store = new MemoryStore({ sweepInterval: 0 });
  t.after(() => store.close());
  const sessions = new SessionManager(store, {
    secrets: ['dashboard-test-session-secret-0123456789'],
    maxAge: 3_600_000,
    idleTimeout: 600_000,
    cookie: 'gh_session',
  });
  const profile = (subject: string) => ({
    provider: 'corp',
    subject,
    user: subject,
    email: `${subject}@example.com`,
    groups: ['data-eng'],
    claims: {},
  });
  const tokens = { accessToken: 'at', refreshToken: 'rt', idToken: 'it', expiresAt: undefined };
  const alice = await sessions.create(profile('alice'), tokens);
  const bob = await sessions.create(profile('bob'), tokens);
  const { url, audits } = await setup(t, { sessions: () => sessions });

  const listed = await request(`${url}/api/v1/sessions`, { headers: AUTH });
  assert.equal(listed.status, 200);
  const body = listed.json() as {
    enabled: boolean;
    total: number;
    sessions: Array<{ id: string; subject: string; email: string; expiresAt: string; lastSeen: string }>;
  };
  assert.equal(body.enabled, true);
  assert.equal(body.total, 2);
  assert.deepEqual(body.sessions.map((s) => s.subject).sort(), ['alice', 'bob']);
  for (const s of body.sessions) assert.match(s.id, /^[A-Za-z0-9_-]{22}$/);
  // Neither the session id (half of a cookie) nor a token is shown.
  assert.doesNotMatch(listed.text, new RegExp(`${alice.id}|${bob.id}|"at"|"rt"|refresh`));
  assert.equal((await request(`${url}/api/v1/sessions`)).status, 401);
  assert.equal((await request(`${url}/api/v1/sessions?limit=0`, { headers: AUTH })).status, 400);
  const one = (await request(`${url}/api/v1/sessions?limit=1`, { headers: AUTH })).json() as typeof body;
  assert.equal(one.sessions.length, 1);
  assert.equal(one.total, 2);

  const handle = body.sessions.find((s) => s.subject === 'alice')!.id;
  const bad = await request(`${url}/api/v1/sessions/..%2f/revoke`, { method: 'POST', headers: AUTH });
  assert.equal(bad.status, 400);
  const unknown = await request(`${url}/api/v1/sessions/${'x'.repeat(22)}/revoke`, {
    method: 'POST',
    headers: AUTH,
  });
  assert.equal(unknown.status, 404);
  assert.equal((await request(`${url}/api/v1/sessions/${handle}/revoke`, { headers: AUTH })).status, 405);
  const revoked = await request(`${url}/api/v1/sessions/${handle}/revoke`, { method: 'POST', headers: AUTH });
  assert.equal(revoked.status, 200);
  assert.equal((revoked.json() as { revoked: { subject: string } }).revoked.subject, 'alice');

  // The cookie stops working at once, and the revocation went out on the store's feed.
  const cookie = `gh_session=${sessions.seal(alice.id)}`;
  assert.equal((await sessions.lookup(cookie)).kind, 'invalid');
  assert.equal((await sessions.lookup(`gh_session=${sessions.seal(bob.id)}`)).kind, 'ok');
  const after = (await request(`${url}/api/v1/sessions`, { headers: AUTH })).json() as typeof body;
  assert.deepEqual(
    after.sessions.map((s) => s.subject),
    ['bob'],
  );
  const again = await request(`${url}/api/v1/sessions/${handle}/revoke`, { method: 'POST', headers: AUTH });
  assert.equal(again.status, 404);

  const action = audits.find((a) => a.code === 'admin.session-revoked');
  assert.deepEqual(
    action && [action.event, action.action, action.who, action.client, action.session, action.subject],
    ['admin', 'session-revoke', 'admin-token', '127.0.0.1', handle, 'alice'],
  );
  assert.equal(audits.filter((a) => a.code === 'admin.session-revoked').length, 1);
});

test('without sign-in configured the session list says so', async (t) => {
  const { url } = await setup(t, { sessions: () => undefined });
  const res = await request(`${url}/api/v1/sessions`, { headers: AUTH });
  assert.deepEqual(res.json(), { enabled: false, sessions: [], total: 0 });
  const revoke = await request(`${url}/api/v1/sessions/${'a'.repeat(22)}/revoke`, {
    method: 'POST',
    headers: AUTH,
  });
  assert.equal(revoke.status, 404);
});

test('reloads are audited and kept in the history the live snapshot shows', async (t) => {
  let next: ReloadResult = { ok: true, generation: 2 };
  const { url, audits } = await setup(t, { reload: async () => next });
  assert.equal((await request(`${url}/api/v1/reload`, { method: 'POST', headers: AUTH })).status, 200);
  next = {
    ok: false,
    problems: [{ file: '/etc/gatehouse.yaml', path: 'routes.0.upstream', message: 'unknown upstream "x"' }],
  };
  assert.equal((await request(`${url}/api/v1/reload`, { method: 'POST', headers: AUTH })).status, 422);
  const snap = (await request(`${url}/api/v1/live/snapshot`, { headers: AUTH })).json() as LiveEvent;
  assert.deepEqual(
    snap.reloads.map((r) => [r.result, r.generation, r.trigger, r.error]),
    [
      ['rejected', 2, 'admin-api', '/etc/gatehouse.yaml: routes.0.upstream: unknown upstream "x"'],
      ['success', 2, 'admin-api', undefined],
    ],
  );
  assert.deepEqual(
    audits.filter((a) => a.action === 'reload').map((a) => [a.code, a.who, a.generation ?? a.problems]),
    [
      ['admin.reload', 'admin-token', 2],
      ['admin.reload-rejected', 'admin-token', 1],
    ],
  );
});

test('a reload that did not come through the API still shows in the history', async (t) => {
  let generation = 1;
  const history = new ReloadHistory();
  const { url } = await setup(t, {
    getRuntime: () => staticRuntime(config, { generation }),
    reloadHistory: history,
  });
  generation = 2;
  const deadline = Date.now() + 5000;
  while (history.list().length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  const snap = (await request(`${url}/api/v1/live/snapshot`, { headers: AUTH })).json() as LiveEvent;
  assert.deepEqual(
    snap.reloads.map((r) => [r.result, r.generation, r.trigger]),
    [['success', 2, 'file-or-signal']],
  );
});

test('an audit sink that throws does not fail the request', async (t) => {
  const { url } = await setup(t, {
    audit: () => {
      throw new Error('sink down');
    },
  });
  assert.equal((await request(`${url}/api/v1/status`)).status, 401);
  assert.equal((await request(`${url}/api/v1/reload`, { method: 'POST', headers: AUTH })).status, 200);
});

for (const kind of ['memory', 'redis'] as const) {
  test(`the session index of a ${kind} store: ended sessions leave it, revocation by handle`, async (t) => {
    const logger = createLogger('fatal', new LineCollector());
    const store: StateStore =
      kind === 'redis'
        ? new RedisStore(await redisUrl(), logger, {
            prefix: `gatehouse-test:${Math.random().toString(36).slice(2)}:`,
          })
        : new MemoryStore({ sweepInterval: 0 });
    t.after(() => store.close());
    const clock = { now: Date.now() };
    const sessions = new SessionManager(
      store,
      {
        secrets: ['dashboard-index-session-secret-0123456789'],
        maxAge: 3_600_000,
        idleTimeout: 600_000,
        cookie: 's',
      },
      { now: () => clock.now },
    );
    const tokens = {
      accessToken: undefined,
      refreshToken: undefined,
      idToken: undefined,
      expiresAt: undefined,
    };
    const make = (subject: string) =>
      sessions.create(
        { provider: 'corp', subject, user: subject, email: undefined, groups: [], claims: {} },
        tokens,
      );
    const a = await make('a');
    clock.now += 1000;
    await make('b');
    clock.now += 1000;
    await make('c');
    let list = await sessions.list();
    assert.deepEqual(
      list.sessions.map((s) => s.subject),
      ['c', 'b', 'a'],
    );
    assert.equal(list.sessions[0]!.email, null);
    // Logging out everywhere takes the subject's sessions out of the list too.
    assert.equal(await sessions.revokeSubject('corp', 'c'), 1);
    list = await sessions.list();
    assert.deepEqual(
      list.sessions.map((s) => s.subject),
      ['b', 'a'],
    );
    assert.equal(await sessions.revokeHandle('not a handle'), undefined);
    const handleOfA = list.sessions[1]!.id;
    assert.equal((await sessions.revokeHandle(handleOfA))?.subject, 'a');
    assert.equal((await sessions.lookup(`s=${sessions.seal(a.id)}`)).kind, 'invalid');
    assert.equal(await sessions.revokeHandle(handleOfA), undefined);
    // A session that ended by itself (idle) is not listed, and leaves the index as it is listed.
    clock.now += 600_000;
    list = await sessions.list();
    assert.deepEqual(list, { sessions: [], total: 0 });
    assert.deepEqual(await store.setMembers('session-index'), []);
  });
}

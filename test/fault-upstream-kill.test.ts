/**
 * Fault: an upstream server dies under a steady concurrent load (its process SIGKILLed, so the requests
 * in flight on it break after they were sent; or closed gracefully). With the default retry settings,
 * no idempotent request (GET, HEAD, PUT, DELETE) fails while the other server is up, and no POST
 * reaches a server twice. The servers are real child processes; the load goes through the gateway.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import http from 'node:http';
import { type TestContext, test } from 'node:test';
import { retriesTotal } from '../src/observe/metrics.js';
import { config, startGateway, type TestGateway, waitFor } from './helpers/proxy.js';

/**
 * A plain node:http server that answers after a few milliseconds (so requests are in flight when it
 * dies) with its name and the body length it read; it prints its port and every POST id it receives
 * (stdout to a pipe is synchronous on Linux, so a printed id survives a SIGKILL), and on SIGTERM stops
 * accepting, closes idle connections and lets the requests in flight finish. With HOLD set, a request
 * carrying `x-hold` is read and never answered (and its id printed): it is certainly in flight there.
 */
const SERVER = `
const http = require('node:http');
const name = process.env.NAME;
let closing = false;
const server = http.createServer((req, res) => {
  let bytes = 0;
  req.on('data', (c) => { bytes += c.length; });
  req.on('end', () => {
    if (req.method === 'POST') process.stdout.write('POST ' + req.headers['x-request-id'] + '\\n');
    if (process.env.HOLD && req.headers['x-hold']) {
      process.stdout.write('HELD ' + req.headers['x-request-id'] + '\\n');
      return; // answered by nobody: in flight here until this process dies
    }
    setTimeout(() => {
      // A server shutting down says so, so that clients do not send more on this connection.
      if (closing) res.shouldKeepAlive = false;
      const body = JSON.stringify({ server: name, method: req.method, bytes });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
    }, 2 + Math.floor(Math.random() * 8));
  });
});
server.keepAliveTimeout = 60000;
server.listen(0, '127.0.0.1', () => process.stdout.write('PORT ' + server.address().port + '\\n'));
process.on('SIGTERM', () => {
  closing = true;
  server.close(() => process.exit(0));
  setInterval(() => server.closeIdleConnections(), 20).unref();
});
`;

interface UpstreamProcess {
  readonly url: string;
  readonly child: ChildProcess;
  /** Ids of the POST requests it received. */
  readonly posts: string[];
  /** Ids of the requests it holds unanswered. */
  readonly held: string[];
  readonly exited: Promise<void>;
}

async function spawnUpstream(t: TestContext, name: string, hold = false): Promise<UpstreamProcess> {
  const child = spawn(process.execPath, ['-e', SERVER], {
    env: { ...process.env, NAME: name, ...(hold ? { HOLD: '1' } : {}) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  const posts: string[] = [];
  const held: string[] = [];
  let port = 0;
  let rest = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (text: string) => {
    const lines = (rest + text).split('\n');
    rest = lines.pop()!;
    for (const line of lines) {
      if (line.startsWith('PORT ')) port = Number(line.slice(5));
      else if (line.startsWith('POST ')) posts.push(line.slice(5));
      else if (line.startsWith('HELD ')) held.push(line.slice(5));
    }
  });
  await waitFor(() => port !== 0, `${name} to listen`, 10_000);
  return { url: `http://127.0.0.1:${port}`, child, posts, held, exited };
}

const METHODS = ['GET', 'HEAD', 'PUT', 'DELETE', 'POST'] as const;

interface Outcome {
  id: string;
  method: string;
  status: number;
  error?: string;
}

/** One request through a keep-alive agent; a small body for PUT, DELETE and POST. */
function send(url: string, agent: http.Agent, method: string, id: string, hold = false): Promise<Outcome> {
  return new Promise((resolve) => {
    const body = method === 'PUT' || method === 'DELETE' || method === 'POST' ? `{"id":"${id}"}` : undefined;
    const u = new URL(url);
    const req = http.request({
      host: u.hostname,
      port: u.port,
      method,
      path: `/items/${id}`,
      agent,
      headers: {
        'x-request-id': id,
        ...(hold ? { 'x-hold': '1' } : {}),
        ...(body === undefined ? {} : { 'content-type': 'application/json', 'content-length': body.length }),
      },
      signal: AbortSignal.timeout(20_000),
    });
    req.on('error', (err) => resolve({ id, method, status: 0, error: String(err) }));
    req.on('response', (res) => {
      res.resume();
      res.on('error', (err) => resolve({ id, method, status: res.statusCode ?? 0, error: String(err) }));
      res.on('end', () =>
        resolve({
          id,
          method,
          status: res.statusCode ?? 0,
          ...(res.complete ? {} : { error: 'aborted' }),
        }),
      );
    });
    req.end(body);
  });
}

/** Runs `total` requests from `concurrency` workers, calling `trigger` once after `at` were sent. */
async function load(
  gw: TestGateway,
  run: string,
  total: number,
  at: number,
  trigger: () => Promise<void>,
): Promise<Outcome[]> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  const outcomes: Outcome[] = [];
  let sent = 0;
  let fired: Promise<void> | undefined;
  const worker = async (): Promise<void> => {
    while (sent < total) {
      const n = sent++;
      if (n === at) fired = trigger();
      outcomes.push(await send(gw.url(), agent, METHODS[n % METHODS.length]!, `${run}-${n}`));
    }
  };
  try {
    await Promise.all(Array.from({ length: 16 }, worker));
    await fired;
  } finally {
    agent.destroy();
  }
  return outcomes;
}

async function retries(upstream: string, reason: string): Promise<number> {
  const m = await retriesTotal.get();
  return m.values.find((v) => v.labels.upstream === upstream && v.labels.reason === reason)?.value ?? 0;
}

function failedIdempotent(outcomes: Outcome[]): Outcome[] {
  return outcomes.filter((o) => o.method !== 'POST' && (o.status < 200 || o.status > 299 || o.error));
}

/**
 * No POST id was received twice, by one server or by both; a POST that failed was one broken after it
 * was sent (in flight on the server that went away, or sent on a connection it was closing): answered
 * 502 GH_UPSTREAM_RESET and never retried.
 */
function assertPostsSafe(gw: TestGateway, a: UpstreamProcess, b: UpstreamProcess, outcomes: Outcome[]): void {
  const all = [...a.posts, ...b.posts];
  assert.equal(new Set(all).size, all.length, 'a POST reached a server twice');
  for (const o of outcomes) {
    if (o.method !== 'POST') continue;
    if (o.status === 200) {
      assert.ok(all.includes(o.id), `${o.id} answered 200`);
      continue;
    }
    const entry = gw.access.find((e) => e.requestId === o.id);
    assert.equal(o.status, 502, `${o.id}: ${o.error ?? ''}`);
    assert.equal(entry?.retries, 0);
    assert.equal(entry?.error, 'GH_UPSTREAM_RESET');
  }
}

test('an upstream SIGKILLed mid-load fails no idempotent request while another server is up', async (t) => {
  const a = await spawnUpstream(t, 'a', true);
  const b = await spawnUpstream(t, 'b');
  // Default retry settings: the point is that they cover this.
  const gw = await startGateway(
    t,
    config({ killed: { servers: [{ url: a.url }, { url: b.url }] } }, [{ name: 'all', upstream: 'killed' }]),
  );
  const resetsBefore = await retries('killed', 'reset');
  const agent = new http.Agent({ keepAlive: true });
  t.after(() => agent.destroy());
  let held: Promise<Outcome[]> | undefined;
  const outcomes = await load(gw, 'kill', 600, 150, async () => {
    // Besides the load in flight on `a`, requests it holds unanswered: certainly sent when it dies.
    // They are sent in waves until `a` holds two: on a busy machine the balancer may send a wave to `b`,
    // which answers them like any other request.
    const sent: Array<Promise<Outcome>> = [];
    const methods = ['GET', 'HEAD', 'PUT', 'DELETE'];
    for (let wave = 0; wave < 40 && a.held.length < 2; wave++) {
      for (const [i, m] of methods.entries())
        sent.push(send(gw.url(), agent, m, `kill-held-${wave}-${i}`, true));
      await waitFor(() => a.held.length >= 2, 'requests held by a', 500).catch(() => {});
    }
    held = Promise.all(sent);
    await waitFor(() => a.held.length >= 2, 'requests held by a', 5_000).catch((err: Error) => {
      // Say where the requests went instead, for a failure seen only on a loaded machine.
      const status = gw.runtime.upstreams.get('killed')?.status();
      throw new Error(`${err.message} (a holds ${a.held.length}; upstream ${JSON.stringify(status)})`);
    });
    a.child.kill('SIGKILL');
    await a.exited;
  });
  assert.equal(outcomes.length, 600);
  const heldOutcomes = await held!;
  assert.ok(a.held.length >= 2);
  assert.deepEqual(failedIdempotent([...outcomes, ...heldOutcomes]), []);
  assertPostsSafe(gw, a, b, outcomes);
  assert.ok((await retries('killed', 'reset')) > resetsBefore, 'requests broken after sending were retried');
  assert.ok(
    gw.access.some((e) => e.retries > 0 && e.status === 200),
    'some request was served by a retry',
  );
  // And the pool keeps serving from the server that is up.
  const after = await send(gw.url(), new http.Agent(), 'GET', 'kill-after');
  assert.equal(after.status, 200);
});

test('an upstream closed gracefully mid-load fails no idempotent request while another server is up', async (t) => {
  const a = await spawnUpstream(t, 'a');
  const b = await spawnUpstream(t, 'b');
  const gw = await startGateway(
    t,
    config({ closed: { servers: [{ url: a.url }, { url: b.url }] } }, [{ name: 'all', upstream: 'closed' }]),
  );
  const up = gw.runtime.upstreams.get('closed')!;
  const outcomes = await load(gw, 'close', 600, 150, async () => {
    await waitFor(() => up.status().servers[0]!.active > 0, 'requests in flight on a');
    a.child.kill('SIGTERM');
    await a.exited;
  });
  assert.equal(a.child.exitCode, 0, 'a finished its requests and exited');
  assert.deepEqual(failedIdempotent(outcomes), []);
  assertPostsSafe(gw, a, b, outcomes);
});

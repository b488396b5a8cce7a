/**
 * The `gatehouse-check` message answered without HAProxy: arguments in, `set-var` actions out. Every
 * message that cannot be read is refused (status 400), never allowed; a decision that needs no I/O is
 * answered synchronously.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { generateApiKey } from '../src/identity/apikeys.js';
import type { Runtime } from '../src/runtime.js';
import { type CheckOutcome, checkMessage } from '../src/spoe/check.js';
import {
  encodeHeaderBlock,
  type SpopAction,
  type SpopKv,
  type SpopValue,
  utf8String,
} from '../src/spoe/codec.js';
import { buildTestRuntime, memoryLogger } from './helpers/proxy.js';

const key = generateApiKey('etl');

/** `req.hdrs_bin` of these headers (the codec appends the empty pair that ends it). */
function hdrsBin(headers: Array<[string, string]>): Buffer {
  return encodeHeaderBlock(headers);
}

function str(v: string): SpopValue {
  return utf8String(v);
}

function message(args: Record<string, SpopValue>): { name: string; args: SpopKv[] } {
  return { name: 'gatehouse-check', args: Object.entries(args).map(([name, value]) => ({ name, value })) };
}

function vars(actions: SpopAction[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const a of actions) {
    assert.equal(a.type, 'set-var');
    if (a.type !== 'set-var') continue;
    assert.equal(a.scope, 'transaction');
    const v = a.value;
    out[a.name] = 'value' in v ? v.value : null;
  }
  return out;
}

describe('gatehouse-check', () => {
  let rt: Runtime;
  before(async () => {
    rt = await buildTestRuntime(
      {
        listeners: [{ name: 'signin', bind: '127.0.0.1:0' }],
        upstreams: { app: { servers: [{ url: 'http://127.0.0.1:9' }] } },
        identity: {
          apiKeys: [{ id: 'etl', hash: key.hashLine, subject: 'agent:etl', groups: ['agents'] }],
        },
        policies: { agents: { allow: [{ name: 'agents', groups: ['agents'] }] } },
        routes: [
          { name: 'open', match: { path: '/open' }, upstream: 'app', public: true },
          {
            name: 'limited',
            match: { path: '/limited' },
            upstream: 'app',
            policy: 'agents',
            rateLimit: { rate: '1/min', burst: 2 },
          },
          {
            name: 'paced',
            match: { path: '/paced' },
            upstream: 'app',
            policy: 'agents',
            rateLimit: { rate: '10/s', burst: 1, delay: '500ms' },
          },
          {
            name: 'metered',
            match: { path: '/metered' },
            upstream: 'app',
            policy: 'agents',
            identityHeaders: true,
          },
          { name: 'api', match: { path: '/' }, upstream: 'app', policy: 'agents', identityHeaders: true },
        ],
        quotas: { 'daily-runs': { limit: 1, window: '1d', routes: ['metered'] } },
      },
      memoryLogger().logger,
    );
  });
  after(async () => {
    for (const up of rt.upstreams.values()) await up.close();
    await rt.store.close();
  });

  const base = (headers: Array<[string, string]>, over: Record<string, SpopValue> = {}) =>
    message({
      method: str('GET'),
      url: str('/api/x?y=1'),
      host: str('app.example.test'),
      src: { type: 'ipv4', value: '192.0.2.1' },
      headers: { type: 'binary', value: hdrsBin([['host', 'app.example.test'], ...headers]) },
      tls: { type: 'bool', value: false },
      ...over,
    });

  test('an API key is answered synchronously: allow, identity, assertion, the key header to drop', () => {
    const out = checkMessage(rt, base([['x-api-key', key.key]]));
    assert.ok(!(out instanceof Promise));
    const v = vars((out as CheckOutcome).actions);
    assert.equal(v.status, 200);
    assert.equal(v.route, 'api');
    assert.equal(v.reason, 'policy-allow:agents');
    assert.equal(v.user, 'agent:etl');
    assert.equal(v.groups, 'agents');
    assert.equal(typeof v.assertion, 'string');
    assert.equal(v.drop_api_key, 1);
  });

  test('no credential: 401 with WWW-Authenticate; a public route: 200 without identity', () => {
    const v = vars((checkMessage(rt, base([])) as CheckOutcome).actions);
    assert.equal(v.status, 401);
    assert.equal(v.www_authenticate, 'Bearer realm="gatehouse"');
    assert.equal(v.user, undefined);
    const open = vars((checkMessage(rt, base([], { url: str('/open') })) as CheckOutcome).actions);
    assert.equal(open.status, 200);
    assert.equal(open.reason, 'public-route');
    assert.equal(open.assertion, undefined);
  });

  test('a rate limit: allowed answers carry ratelimit and ratelimit_policy; over it, 429 with retry_after and no identity', () => {
    const m = base([['x-api-key', key.key]], { url: str('/limited/run') });
    for (const left of [1, 0]) {
      const v = vars((checkMessage(rt, m) as CheckOutcome).actions);
      assert.equal(v.status, 200);
      assert.equal(v.ratelimit_policy, '"limited";q=1;w=60');
      assert.match(String(v.ratelimit), new RegExp(`^"limited";r=${left};t=\\d+$`));
      assert.equal(v.retry_after, undefined);
    }
    const out = checkMessage(rt, m);
    assert.ok(!(out instanceof Promise), 'the memory store decides synchronously');
    const v = vars(out.actions);
    assert.equal(v.status, 429);
    assert.equal(v.reason, 'rate-limited:limited');
    assert.equal(v.route, 'limited');
    assert.equal(typeof v.retry_after, 'number');
    const retry = v.retry_after as number;
    assert.ok(retry >= 1 && retry <= 60, `retry_after ${retry}`);
    assert.equal(v.ratelimit_policy, '"limited";q=1;w=60');
    assert.match(String(v.ratelimit), /^"limited";r=0;t=\d+$/);
    assert.equal(out.verdict?.refusal?.code, 'GH_RATE_LIMITED');
    // A refused request carries nothing for the backend.
    assert.equal(v.assertion, undefined);
    assert.equal(v.user, undefined);
    // Routes without a limit say nothing about one.
    const plain = vars((checkMessage(rt, base([['x-api-key', key.key]])) as CheckOutcome).actions);
    assert.equal(plain.status, 200);
    assert.equal(plain.ratelimit, undefined);
    assert.equal(plain.ratelimit_policy, undefined);
  });

  test('a quota without budget: 429 quota-exceeded, retry_after until the window ends', () => {
    const m = base([['x-api-key', key.key]], { url: str('/metered') });
    const first = vars((checkMessage(rt, m) as CheckOutcome).actions);
    assert.equal(first.status, 200);
    assert.equal(first.ratelimit_policy, '"daily-runs";q=1;w=86400');
    assert.match(String(first.ratelimit), /^"daily-runs";r=0;t=\d+$/);
    const out = checkMessage(rt, m) as CheckOutcome;
    const v = vars(out.actions);
    assert.equal(v.status, 429);
    assert.equal(v.reason, 'quota-exceeded:daily-runs');
    assert.equal(out.verdict?.refusal?.code, 'GH_QUOTA_EXCEEDED');
    const retry = v.retry_after as number;
    assert.ok(retry >= 1 && retry <= 86_400, `retry_after ${retry}`);
    assert.equal(v.ratelimit_policy, '"daily-runs";q=1;w=86400');
  });

  test('a rate limit with delay: the answer is held until the request conforms, then allowed', async () => {
    const m = base([['x-api-key', key.key]], { url: str('/paced') });
    const first = checkMessage(rt, m);
    assert.ok(!(first instanceof Promise));
    assert.equal(vars(first.actions).status, 200);
    const started = performance.now();
    const held = checkMessage(rt, m);
    assert.ok(held instanceof Promise, 'held until its slot');
    const v = vars((await held).actions);
    assert.ok(performance.now() - started >= 50, 'held for about one interval (100 ms)');
    assert.equal(v.status, 200);
    assert.equal(v.ratelimit_policy, '"paced";q=10;w=1');
    assert.equal(typeof v.assertion, 'string');
  });

  test('messages that cannot be read are refused, never allowed', () => {
    const cases: Array<[string, ReturnType<typeof message>]> = [
      ['no method', message({ url: str('/'), src: { type: 'ipv4', value: '192.0.2.1' } })],
      ['no src', message({ method: str('GET'), url: str('/') })],
      ['url not a string', base([], { url: { type: 'int32', value: 1 } })],
      ['headers not binary', base([], { headers: str('x') })],
      ['headers cut short', base([], { headers: { type: 'binary', value: Buffer.from([5, 0x61]) } })],
      [
        'two Authorization headers',
        base([
          ['authorization', 'Bearer a'],
          ['authorization', 'Bearer b'],
        ]),
      ],
      [
        'two API key headers',
        base([
          ['x-api-key', key.key],
          ['x-api-key', 'other'],
        ]),
      ],
      ['a bad path', base([], { url: str('/a/%zz') })],
      ['a reserved path', base([], { url: str('/.gatehouse/jwks.json') })],
      ['no route for the host', base([], { url: str('*') })],
    ];
    for (const [name, m] of cases) {
      const out = checkMessage(rt, m);
      assert.ok(!(out instanceof Promise), name);
      const v = vars(out.actions);
      assert.notEqual(v.status, 200, name);
      assert.ok(typeof v.status === 'number' && v.status >= 400, `${name}: ${String(v.status)}`);
      assert.equal(v.assertion, undefined, name);
    }
  });

  test('a WebSocket handshake on a route without websocket is refused, as the built-in proxy refuses it', () => {
    const upgrade: Array<[string, string]> = [
      ['x-api-key', key.key],
      ['connection', 'Upgrade'],
      ['upgrade', 'websocket'],
    ];
    const v = vars((checkMessage(rt, base(upgrade)) as CheckOutcome).actions);
    assert.equal(v.status, 403);
    assert.equal(v.reason, 'GH_WEBSOCKET_NOT_ALLOWED');
    assert.equal(v.assertion, undefined);
  });

  test('a path with parameters or dot-segments decides on the path the backend acts on', () => {
    const v = vars((checkMessage(rt, base([], { url: str('/open;x/../api') })) as CheckOutcome).actions);
    assert.equal(v.status, 401, 'normalizes to /api, not the public /open');
  });
});

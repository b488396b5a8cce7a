/**
 * Traefik's forwardAuth middleware in front of Gatehouse. Traefik is not packaged for the machines the
 * tests run on, so this test reads examples/traefik/dynamic.yml and plays the middleware chain of its
 * `app` router the way Traefik does (headers middlewares, then forwardAuth with trustForwardHeader and
 * authResponseHeaders/-Regex as configured) against Gatehouse started from examples/traefik/gatehouse.yaml:
 *
 *   auth request   GET <address>, the client's headers copied (hop-by-hop removed), Host the address's,
 *                  X-Forwarded-For/-Method/-Proto/-Host/-Uri written by Traefik (trustForwardHeader:
 *                  false: the client's own replaced)
 *   2xx            the authResponseHeaders (and the regex's matches) removed from the request, then set
 *                  from the answer; the request goes on to the service
 *   otherwise      the answer (status, headers, body) goes back to the client
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { test } from 'node:test';
import { createLocalJWKSet, type JSONWebKeySet, jwtVerify } from 'jose';
import { parse } from 'yaml';
import { generateApiKey } from '../src/identity/apikeys.js';
import type { AccessEntry } from '../src/observe/log.js';
import { Gateway } from '../src/process/gateway.js';
import { exampleWith } from './helpers/companion.js';
import { memoryLogger, tempDir } from './helpers/gateway.js';
import { makeKey, startIssuer } from './helpers/identity.js';
import { freePort } from './helpers/listen.js';

const HOST = 'app.gatehouse.test';
const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
];

interface Middleware {
  headers?: { customRequestHeaders?: Record<string, string> };
  forwardAuth?: {
    address: string;
    trustForwardHeader?: boolean;
    authResponseHeaders?: string[];
    authResponseHeadersRegex?: string;
  };
}

/** What the client sent to Traefik. */
interface ClientRequest {
  method?: string;
  uri: string;
  headers?: Record<string, string>;
  /** The client address Traefik sees. */
  clientIp?: string;
}

/** Where the request ended: at the service (with these headers) or answered by the auth response. */
type Outcome =
  | { forwarded: true; headers: Record<string, string> }
  | { forwarded: false; status: number; headers: http.IncomingHttpHeaders; body: string };

function del(headers: Record<string, string>, name: string): void {
  for (const k of Object.keys(headers)) if (k.toLowerCase() === name.toLowerCase()) delete headers[k];
}

function get(
  url: string,
  headers: Record<string, string>,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      method: 'GET',
      headers,
      agent: false,
      signal: AbortSignal.timeout(20_000),
    });
    req.on('error', reject);
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => {
        body += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.end();
  });
}

/** Plays the middlewares of a router on one client request, as Traefik does. */
async function traefik(chain: Middleware[], client: ClientRequest): Promise<Outcome> {
  const method = client.method ?? 'GET';
  const headers: Record<string, string> = { ...(client.headers ?? {}) };
  for (const mw of chain) {
    const custom = mw.headers?.customRequestHeaders;
    if (custom !== undefined) {
      // An empty value removes the header (Traefik's headers middleware).
      for (const [name, value] of Object.entries(custom)) {
        del(headers, name);
        if (value !== '') headers[name] = value;
      }
    }
    const fa = mw.forwardAuth;
    if (fa === undefined) continue;
    const auth: Record<string, string> = {};
    for (const [k, v] of Object.entries(headers)) if (!HOP_BY_HOP.includes(k.toLowerCase())) auth[k] = v;
    const trust = fa.trustForwardHeader === true;
    for (const [name, value] of [
      ['X-Forwarded-For', client.clientIp ?? '192.0.2.10'],
      ['X-Forwarded-Method', method],
      ['X-Forwarded-Proto', 'http'],
      ['X-Forwarded-Host', HOST],
      ['X-Forwarded-Uri', client.uri],
    ] as const) {
      if (trust && Object.keys(auth).some((k) => k.toLowerCase() === name.toLowerCase())) continue;
      del(auth, name);
      auth[name] = value;
    }
    del(auth, 'host');
    const answer = await get(fa.address, auth);
    if (answer.status < 200 || answer.status > 299) {
      return { forwarded: false, status: answer.status, headers: answer.headers, body: answer.body };
    }
    const regex =
      fa.authResponseHeadersRegex === undefined
        ? undefined
        : new RegExp(
            fa.authResponseHeadersRegex.replace('(?i)', ''),
            fa.authResponseHeadersRegex.includes('(?i)') ? 'i' : '',
          );
    for (const name of fa.authResponseHeaders ?? []) {
      del(headers, name);
      const v = answer.headers[name.toLowerCase()];
      if (typeof v === 'string') headers[name] = v;
    }
    if (regex !== undefined) {
      for (const k of Object.keys(headers))
        if (regex.test(k) && !(fa.authResponseHeaders ?? []).includes(k)) delete headers[k];
      for (const [k, v] of Object.entries(answer.headers))
        if (regex.test(k) && typeof v === 'string' && !(k in headers)) headers[k] = v;
    }
  }
  return { forwarded: true, headers };
}

function lower(h: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(h).map(([k, v]) => [k.toLowerCase(), v]));
}

test('Traefik forwardAuth as examples/traefik configures it: identities, refusals, spoofing', {
  timeout: 60_000,
}, async (t) => {
  const d = tempDir('gatehouse-traefik-');
  t.after(() => d.remove());
  const tokens = await startIssuer([await makeKey('k1', 'ES256')]);
  t.after(() => tokens.close());
  const key = generateApiKey('etl');
  const [webPort, authzPort] = [await freePort(), await freePort()];
  const replacements = [
    ['127.0.0.1:8080', `127.0.0.1:${webPort}`],
    ['127.0.0.1:9100', `127.0.0.1:${authzPort}`],
    ['127.0.0.1:9001', '127.0.0.1:9'],
    ['app.example.com', HOST],
  ] as const;
  const dynamic = parse(exampleWith('traefik/dynamic.yml', replacements)) as {
    http: {
      routers: Record<string, { middlewares?: string[]; rule: string }>;
      middlewares: Record<string, Middleware>;
    };
  };
  const chain = (dynamic.http.routers.app!.middlewares ?? []).map((n) => dynamic.http.middlewares[n]!);
  assert.ok(chain.some((m) => m.forwardAuth?.trustForwardHeader === false));
  assert.match(dynamic.http.routers['gatehouse-pages']!.rule, /PathPrefix\(`\/\.gatehouse\/`\)/);

  const access: AccessEntry[] = [];
  const gw = await Gateway.start({
    configFile: d.write(
      'gatehouse.yaml',
      exampleWith('traefik/gatehouse.yaml', [
        ...replacements.slice(0, 2),
        ['http://127.0.0.1:9001', 'http://127.0.0.1:9'],
        ['app.example.com', HOST],
        ['https://idp.example.com', 'http://127.0.0.1:9'],
        ['https://tokens.example.com', tokens.issuer],
        ['sha256:<hex>', key.hashLine],
      ]),
    ),
    logger: memoryLogger().logger,
    watch: false,
    env: {
      GATEHOUSE_SESSION_SECRET: 'traefik-forward-auth-session-secret-0123456789',
      OIDC_CLIENT_SECRET: 'x',
    },
    accessLog: (e) => access.push(e),
  });
  t.after(() => gw.shutdown());
  const jwks = createLocalJWKSet(
    JSON.parse(
      (await get(`http://127.0.0.1:${webPort}/.gatehouse/jwks.json`, { host: HOST })).body,
    ) as JSONWebKeySet,
  );

  // An API key: the service gets the identity and the assertion, never the key.
  const keyed = await traefik(chain, { uri: '/jobs?x=1', headers: { Host: HOST, 'X-Api-Key': key.key } });
  assert.ok(keyed.forwarded, JSON.stringify(keyed));
  const up = lower(keyed.headers);
  assert.equal(up['x-gatehouse-user'], 'agent:etl');
  assert.equal(up['x-gatehouse-groups'], 'agents');
  assert.equal(up['x-gatehouse-email'], '');
  assert.equal(up['x-api-key'], undefined);
  const { payload } = await jwtVerify(up['x-gatehouse-assertion']!, jwks, {
    audience: HOST,
    issuer: 'gatehouse',
  });
  assert.equal(payload.sub, 'agent:etl');
  const entry = access.at(-1)!;
  assert.equal(entry.plane, 'forward-auth');
  assert.equal(entry.path, '/jobs');
  assert.equal(entry.client, '192.0.2.10');
  assert.equal(entry.reason, 'policy-allow:agents');

  // A bearer JWT.
  const jwt = await tokens.sign({
    aud: 'gatehouse-api',
    sub: 'u-alice',
    preferred_username: 'alice',
    email: 'alice@example.com',
    groups: ['data-eng'],
  });
  const bearer = await traefik(chain, {
    method: 'POST',
    uri: '/reports',
    headers: { Host: HOST, Authorization: `Bearer ${jwt}` },
  });
  assert.ok(bearer.forwarded);
  assert.equal(lower(bearer.headers)['x-gatehouse-user'], 'alice');
  assert.equal(lower(bearer.headers)['x-gatehouse-email'], 'alice@example.com');
  assert.equal(lower(bearer.headers).authorization, undefined);
  assert.equal(access.at(-1)!.method, 'POST');

  // Refusals go back to the client as Gatehouse answered them.
  const none = await traefik(chain, { uri: '/reports', headers: { Host: HOST } });
  assert.ok(!none.forwarded);
  assert.equal(none.status, 401);
  assert.equal(none.headers['www-authenticate'], 'Bearer realm="gatehouse"');
  const browser = await traefik(chain, { uri: '/dash?x=1', headers: { Host: HOST, Accept: 'text/html' } });
  assert.ok(!browser.forwarded);
  assert.equal(browser.status, 302);
  assert.equal(browser.headers.location, '/.gatehouse/login?rd=%2Fdash%3Fx%3D1');
  const denied = await traefik(chain, { uri: '/admin', headers: { Host: HOST, 'X-Api-Key': key.key } });
  assert.ok(!denied.forwarded);
  assert.equal(denied.status, 403);
  assert.equal(JSON.parse(denied.body).reason, 'no-allow-rule');

  // Over the rate limit of /exports: Gatehouse's 429 goes back to the client as it is. The budget of an
  // allowed request reaches only the service (X-Gatehouse-RateLimit…, through the regex): Traefik has
  // no way to add an auth answer's header to the client's response.
  for (let left = 4; left >= 0; left--) {
    const ok = await traefik(chain, { uri: '/exports/run', headers: { Host: HOST, 'X-Api-Key': key.key } });
    assert.ok(ok.forwarded, JSON.stringify(ok));
    assert.match(lower(ok.headers)['x-gatehouse-ratelimit']!, new RegExp(`^"exports";r=${left};t=\\d+$`));
  }
  const limited = await traefik(chain, {
    uri: '/exports/run',
    headers: { Host: HOST, 'X-Api-Key': key.key },
  });
  assert.ok(!limited.forwarded);
  assert.equal(limited.status, 429);
  assert.equal(JSON.parse(limited.body).code, 'GH_RATE_LIMITED');
  const retry = Number(limited.headers['retry-after']);
  assert.ok(retry >= 1 && retry <= 6, `Retry-After ${limited.headers['retry-after']}`);
  assert.equal(limited.headers['ratelimit-policy'], '"exports";q=10;w=60');
  assert.match(String(limited.headers.ratelimit), /^"exports";r=0;t=\d+$/);

  // Spoofing: the client's identity headers (any spelling) and forwarded headers never count.
  const spoof = {
    Host: HOST,
    'X-Gatehouse-User': 'root',
    X_Gatehouse_User: 'root',
    'X-Gatehouse-Assertion': 'forged',
    'X-Forwarded-Uri': '/public',
    'X-Forwarded-Method': 'GET',
    'X-Original-URI': '/public',
    'X-Original-Method': 'GET',
    'X-Forwarded-For': '203.0.113.1',
  };
  const admin = await traefik(chain, { uri: '/admin', headers: { ...spoof, 'X-Api-Key': key.key } });
  assert.ok(!admin.forwarded);
  assert.equal(admin.status, 403);
  assert.equal(access.at(-1)!.client, '192.0.2.10');
  const open = await traefik(chain, { uri: '/public/page', headers: spoof });
  assert.ok(open.forwarded);
  for (const [k, v] of Object.entries(open.headers))
    if (/^x[-_]gatehouse[-_]/i.test(k)) assert.equal(v, '', k);
  assert.equal(lower(open.headers).x_gatehouse_user, undefined);
  // Without the gatehouse-clean middleware a client's X-Original-URI reaches Gatehouse: refused, never widened.
  const unclean = await traefik(chain.slice(1), {
    uri: '/admin',
    headers: { ...spoof, 'X-Api-Key': key.key },
  });
  assert.ok(!unclean.forwarded);
  assert.equal(unclean.status, 400);
  assert.equal(JSON.parse(unclean.body).code, 'GH_FORWARDED_CONFLICT');
});

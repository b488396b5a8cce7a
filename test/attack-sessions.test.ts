/**
 * Attacks on cookies and sessions, through a running gateway with a real OpenID provider: tampered and
 * foreign cookies, a session id carried in the wrong place, session fixation, cookie tossing from a
 * sibling host, huge and malformed Cookie headers, replays (after logout, of the callback, of the
 * central sign-in host's hand-off), the attributes of the cookies the gateway sets, and the limits of
 * the login-state cookie. Each family ends with the gateway still serving a normal sign-in.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import https from 'node:https';
import net from 'node:net';
import { type TestContext, test } from 'node:test';
import { SessionManager } from '../src/identity/session.js';
import { Gateway } from '../src/process/gateway.js';
import { memoryLogger, selfSigned, tempDir } from './helpers/gateway.js';
import { freePort } from './helpers/listen.js';
import { startIdp, type TestIdp } from './helpers/oidc.js';
import { startBackend, type TestBackend } from './helpers/proxy.js';
import { authorizeAtIdp, CookieJar, hop, signInOverHttp } from './helpers/signin.js';

const SECRET = 'attack-sessions-sealing-secret-0123456789';
const OTHER_SECRET = 'another-gateways-sealing-secret-987654321';
const APP = 'app.gatehouse.test';
const SIGN_IN = 'login.gatehouse.test';
const SEALED = /^[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}$/;

interface Setup {
  gw: Gateway;
  idp: TestIdp;
  backend: TestBackend;
  /** `http://app.gatehouse.test:PORT` (plain listener). */
  origin: string;
  port: number;
  /** Port of the TLS listener (same routes). */
  tlsPort: number;
  /** A session manager with the gateway's secret, to seal values as an attacker who knew it could not. */
  seal: (id: string) => string;
}

async function setup(t: TestContext, opts: { signInHost?: boolean } = {}): Promise<Setup> {
  const port = await freePort();
  const origin = `http://${APP}:${port}`;
  const idp = await startIdp(t, {
    redirectUris: [`${origin}/.gatehouse/callback`, `http://${SIGN_IN}:${port}/.gatehouse/callback`],
  });
  const backend = await startBackend(t, 'app');
  const d = tempDir();
  t.after(() => d.remove());
  const { cert, key } = selfSigned(APP, [APP, '127.0.0.1']);
  d.write('cert.pem', cert);
  d.write('key.pem', key);
  d.write('client-secret', idp.clientSecret);
  const signIn = opts.signInHost ? `, signInHost: "${SIGN_IN}:${port}"` : '';
  const file = d.write(
    'gatehouse.yaml',
    `listeners:
  - { name: plain, bind: "127.0.0.1:${port}" }
  - { name: secure, bind: 127.0.0.1:0, tls: { certificates: [{ cert: file:cert.pem, key: file:key.pem }] } }
logging: { level: warn, access: false }
upstreams: { app: { servers: [{ url: "${backend.url}" }] } }
identity:
  session: { secrets: ["${SECRET}"]${signIn} }
  providers:
    - { name: corp, type: oidc, issuer: "${idp.issuer}", clientId: gatehouse, clientSecret: file:client-secret,
        scopes: [openid, email, profile, groups] }
routes:
  - { name: signin, match: { host: "${SIGN_IN}", path: /open }, upstream: app, public: true }
  - { name: app, match: { host: "${APP}", path: /app }, upstream: app, identityHeaders: true }
  - { name: open, match: { host: "${APP}", path: /open }, upstream: app, public: true, identityHeaders: true }
`,
  );
  const gw = await Gateway.start({ configFile: file, logger: memoryLogger().logger, watch: false });
  t.after(() => gw.shutdown());
  const sealer = new SessionManager(gw.runtime.store, {
    secrets: [SECRET],
    maxAge: 3_600_000,
    idleTimeout: 3_600_000,
    cookie: '_gatehouse',
  });
  return {
    gw,
    idp,
    backend,
    origin,
    port,
    tlsPort: gw.address('secure')!.port,
    seal: (id) => sealer.seal(id),
  };
}

/** An API request (JSON, no redirect to login) to `path` with this Cookie header: status and who the backend saw. */
async function api(
  s: Setup,
  path: string,
  cookie: string | undefined,
  headers: Record<string, string> = {},
): Promise<{ status: number; user: string | undefined; upstreamCookie: string | undefined; body: string }> {
  const before = s.backend.seen.length;
  const r = await hop(`${s.origin}${path}`, new CookieJar(), {
    accept: 'application/json',
    ...(cookie === undefined ? {} : { cookie }),
    headers,
  });
  const seen = s.backend.seen.length > before ? s.backend.seen.at(-1) : undefined;
  return {
    status: r.status,
    user: seen?.headers['x-gatehouse-user'] as string | undefined,
    upstreamCookie: seen?.headers.cookie,
    body: r.body,
  };
}

/** A request written byte for byte on its own connection: the status code (0 when closed without one). */
function raw(port: number, text: string | Buffer): Promise<number> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let data = '';
    const timer = setTimeout(() => socket.destroy(), 10_000);
    socket.on('connect', () => socket.write(text));
    socket.on('data', (chunk) => {
      data += chunk.toString('latin1');
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      const m = /^HTTP\/1\.1 (\d{3})/.exec(data);
      resolve(m ? Number(m[1]) : 0);
    });
  });
}

/** A GET over the TLS listener: status and Set-Cookie lines. */
function tlsGet(s: Setup, path: string, cookie?: string): Promise<{ status: number; setCookie: string[] }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port: s.tlsPort,
        path,
        servername: APP,
        rejectUnauthorized: false,
        headers: { host: `${APP}:${s.tlsPort}`, accept: 'text/html', ...(cookie ? { cookie } : {}) },
        agent: false,
        timeout: 10_000,
      },
      (res) => {
        res.resume();
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, setCookie: res.headers['set-cookie'] ?? [] }),
        );
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** The normal use still works: a fresh sign-in reaches the backend as alice, a public page answers. */
async function stillServes(s: Setup): Promise<void> {
  const { cookie } = await signInOverHttp(s.origin, 'alice', { rd: '/app/after' });
  const r = await api(s, '/app/after', cookie);
  assert.equal(r.status, 200);
  assert.equal(r.user, 'alice');
  assert.equal((await api(s, '/open/after', undefined)).status, 200);
}

function idOf(cookie: string): string {
  return cookie.slice(cookie.indexOf('=') + 1).split('.')[0]!;
}

test('tampered, foreign and moved session cookies never identify anyone', { timeout: 90_000 }, async (t) => {
  const s = await setup(t);
  const alice = await signInOverHttp(s.origin, 'alice', { rd: '/app/x' });
  const bob = await signInOverHttp(s.origin, 'bob', { rd: '/app/x' });
  const value = alice.cookie.slice('_gatehouse='.length);
  assert.match(value, SEALED);
  const [id, mac] = value.split('.') as [string, string];
  const [bobId, bobMac] = bob.cookie.slice('_gatehouse='.length).split('.') as [string, string];
  const flip = (text: string, at: number) =>
    text.slice(0, at) + (text[at] === 'A' ? 'B' : 'A') + text.slice(at + 1);
  const foreign = new SessionManager(s.gw.runtime.store, {
    secrets: [OTHER_SECRET],
    maxAge: 3_600_000,
    idleTimeout: 3_600_000,
    cookie: '_gatehouse',
  });
  const refused: Array<[string, string]> = [
    ['a bit of the id flipped', `_gatehouse=${flip(id, 5)}.${mac}`],
    ['a bit of the MAC flipped', `_gatehouse=${id}.${flip(mac, 40)}`],
    ['the MAC cut short', `_gatehouse=${id}.${mac.slice(0, 42)}`],
    ['one character more', `_gatehouse=${value}A`],
    ['the id alone', `_gatehouse=${id}`],
    ['alice’s id with bob’s MAC', `_gatehouse=${id}.${bobMac}`],
    ['bob’s id with alice’s MAC', `_gatehouse=${bobId}.${mac}`],
    ['sealed with another gateway’s secret', `_gatehouse=${foreign.seal(id)}`],
    [
      'a made-up id sealed with the right secret (no such session)',
      `_gatehouse=${s.seal(randomBytes(32).toString('base64url'))}`,
    ],
  ];
  for (const [what, cookie] of refused) {
    const r = await api(s, '/app/x', cookie);
    assert.equal(r.status, 401, what);
    assert.equal(r.user, undefined, what);
    const open = await api(s, '/open/x', cookie);
    assert.equal(open.status, 200, what);
    assert.equal(open.user, undefined, `${what}: no identity on a public route either`);
  }
  // The sealed value moved elsewhere is not a session: another cookie name, the login cookie, a bearer token.
  for (const [what, cookie, headers] of [
    ['another cookie name', `session=${value}`, {}],
    ['the login-state cookie', `_gatehouse_login=${value}`, {}],
    ['a differently cased name', `_GATEHOUSE=${value}`, {}],
    ['the Authorization header', undefined, { authorization: `Bearer ${value}` }],
  ] as Array<[string, string | undefined, Record<string, string>]>) {
    const r = await api(s, '/app/x', cookie, headers);
    assert.equal(r.status, 401, what);
  }
  // A browser is sent to sign in, and the dead cookie is cleared.
  const page = await hop(`${s.origin}/app/x`, new CookieJar(), { cookie: `_gatehouse=${id}.${bobMac}` });
  assert.equal(page.status, 302);
  assert.match(page.location ?? '', /\/\.gatehouse\/login\?rd=/);
  assert.ok(page.setCookie.some((c) => /^_gatehouse=; Path=\/; Max-Age=0;/.test(c)));
  // The genuine cookies still work, and never reach the backend.
  const ok = await api(s, '/app/x', `theme=dark; ${alice.cookie}`);
  assert.equal(ok.user, 'alice');
  assert.equal(ok.upstreamCookie, 'theme=dark');
  await stillServes(s);
});

test('session fixation: a cookie planted before sign-in is never adopted; every sign-in makes a new id', {
  timeout: 90_000,
}, async (t) => {
  const s = await setup(t);
  // The attacker plants a value of their choosing (they cannot seal one that the store knows).
  const plantedId = randomBytes(32).toString('base64url');
  for (const planted of [`${plantedId}.${'A'.repeat(43)}`, s.seal(plantedId)]) {
    const jar = new CookieJar();
    jar.set(s.origin, '_gatehouse', planted);
    const { cookie } = await signInOverHttp(s.origin, 'alice', { rd: '/app/x', jar });
    assert.notEqual(idOf(cookie), plantedId, 'the id changed at sign-in');
    assert.equal((await api(s, '/app/x', cookie)).user, 'alice');
    assert.equal(
      (await api(s, '/app/x', `_gatehouse=${planted}`)).status,
      401,
      'the planted value stays unknown',
    );
    assert.equal(await s.gw.runtime.store.get(`session:${plantedId}`), undefined);
  }
  // A signed-out browser that signs in again gets a new id, not its old one back.
  const first = await signInOverHttp(s.origin, 'alice', { rd: '/app/x' });
  await hop(`${s.origin}/.gatehouse/logout`, first.jar, { method: 'POST' });
  first.jar.set(s.origin, '_gatehouse', first.cookie.slice('_gatehouse='.length));
  const second = await signInOverHttp(s.origin, 'alice', { rd: '/app/x', jar: first.jar });
  assert.notEqual(idOf(second.cookie), idOf(first.cookie));
  assert.equal((await api(s, '/app/x', first.cookie)).status, 401);
  await stillServes(s);
});

test('cookie tossing: two different sessions, or two login-state cookies, in one Cookie header are refused', {
  timeout: 90_000,
}, async (t) => {
  const s = await setup(t);
  const victim = await signInOverHttp(s.origin, 'alice', { rd: '/app/x' });
  // The attacker's own valid session, planted from a sibling host (Domain cookie, or a longer Path).
  const attacker = await signInOverHttp(s.origin, 'bob', { rd: '/app/x' });
  for (const header of [`${attacker.cookie}; ${victim.cookie}`, `${victim.cookie}; ${attacker.cookie}`]) {
    const r = await api(s, '/app/x', header);
    assert.equal(r.status, 401, header);
    assert.equal(r.user, undefined);
    const open = await api(s, '/open/x', header);
    assert.equal(open.user, undefined, 'a public route attaches neither');
  }
  // The same session twice, or next to garbage, is the user's.
  assert.equal((await api(s, '/app/x', `${victim.cookie}; ${victim.cookie}`)).user, 'alice');
  assert.equal((await api(s, '/app/x', `_gatehouse=garbage; ${victim.cookie}`)).user, 'alice');
  assert.equal(
    (await api(s, '/app/x', victim.cookie)).user,
    'alice',
    'the victim’s session itself is intact',
  );

  // The login-state cookie tossed: the attacker signs in as bob up to the callback, plants their login
  // cookie next to the victim's own and sends the victim the callback link (login CSRF). Refused.
  const attackerJar = new CookieJar();
  const start = await hop(`${s.origin}/.gatehouse/login?rd=%2Fapp%2Fx`, attackerJar);
  const callback = await authorizeAtIdp(start.location!, 'bob', attackerJar);
  const victimJar = new CookieJar();
  await hop(`${s.origin}/.gatehouse/login?rd=%2Fapp%2Fx`, victimJar);
  const own = victimJar.get(s.origin, '_gatehouse_login')!;
  const planted = attackerJar.get(s.origin, '_gatehouse_login')!;
  for (const header of [
    `_gatehouse_login=${planted}; _gatehouse_login=${own}`,
    `_gatehouse_login=${own}; _gatehouse_login=${planted}`,
  ]) {
    const r = await hop(callback, new CookieJar(), { cookie: header });
    assert.equal(r.status, 400, header);
    assert.equal(
      r.setCookie.some((c) => c.startsWith('_gatehouse=')),
      false,
      'no session for the victim',
    );
  }
  // And a login start with both values does not reuse either of them.
  const fresh = await hop(`${s.origin}/.gatehouse/login`, new CookieJar(), {
    cookie: `_gatehouse_login=${planted}; _gatehouse_login=${own}`,
  });
  const binding = fresh.setCookie.find((c) => c.startsWith('_gatehouse_login='))!;
  assert.ok(!binding.includes(planted) && !binding.includes(own));
  await stillServes(s);
});

test('huge, repeated, malformed and invalid Cookie headers get a clear status, never a crash or a session', {
  timeout: 90_000,
}, async (t) => {
  const s = await setup(t);
  const alice = await signInOverHttp(s.origin, 'alice', { rd: '/app/x' });
  const value = alice.cookie.slice('_gatehouse='.length);
  // Over server.maxHeaderSize (16 KiB): 431 from the parser.
  const huge = `GET /app/x HTTP/1.1\r\nHost: ${APP}\r\nCookie: a=${'x'.repeat(20_000)}\r\nConnection: close\r\n\r\n`;
  assert.equal(await raw(s.port, huge), 431);
  // Many cookies of other names: the session is still found.
  const crowd = Array.from({ length: 300 }, (_, i) => `c${i}=v${i}`).join('; ');
  assert.equal((await api(s, '/app/x', `${crowd}; ${alice.cookie}`)).user, 'alice');
  // Many copies of the session cookie are not checked one by one: refused.
  const copies = Array.from({ length: 50 }, () => alice.cookie).join('; ');
  assert.equal((await api(s, '/app/x', copies)).status, 401);
  for (const header of [
    '_gatehouse',
    '_gatehouse=',
    '=_gatehouse',
    ';;;;',
    '_gatehouse="',
    `_gatehouse="${value}`,
    `_gatehouse=${value}"`,
    `_gatehouse=${'.'.repeat(87)}`,
    `_gatehouse=${'A'.repeat(43)}.${'A'.repeat(43)}`,
    `_gatehouse=${value.replace('.', '%2E')}`,
    '_gatehouse=%00',
  ]) {
    const r = await api(s, '/app/x', header);
    assert.equal(r.status, 401, header.slice(0, 60));
    assert.equal((await api(s, '/open/x', header)).status, 200, header.slice(0, 60));
  }
  // Quoted as RFC 6265 allows, or next to a valueless crumb: still the session.
  assert.equal((await api(s, '/app/x', `_gatehouse="${value}"`)).user, 'alice');
  assert.equal((await api(s, '/app/x', `_gatehouse=${value};;_gatehouse`)).user, 'alice');
  // Bytes the HTTP grammar does not allow in a field value: refused by the parser (400).
  for (const bad of ['\u0001', '\u007f', '\u0000']) {
    const req = `GET /app/x HTTP/1.1\r\nHost: ${APP}\r\nCookie: _gatehouse=${value}${bad}\r\nConnection: close\r\n\r\n`;
    assert.equal(await raw(s.port, req), 400, JSON.stringify(bad));
  }
  // obs-text (bytes 0x80-0xff) is allowed by the grammar but names no session.
  const latin = Buffer.concat([
    Buffer.from(`GET /app/x HTTP/1.1\r\nHost: ${APP}\r\nAccept: application/json\r\nCookie: _gatehouse=`),
    Buffer.from([0xc3, 0xa9, 0xff]),
    Buffer.from('\r\nConnection: close\r\n\r\n'),
  ]);
  assert.equal(await raw(s.port, latin), 401);
  // Many Cookie header lines (HTTP/1.1 clients must not, HTTP/2 clients send crumbs): joined, still one session.
  const lines = `GET /app/x HTTP/1.1\r\nHost: ${APP}\r\nAccept: application/json\r\nCookie: a=1\r\nCookie: ${alice.cookie}\r\nConnection: close\r\n\r\n`;
  assert.equal(await raw(s.port, lines), 200);
  await stillServes(s);
});

test('replays: a cookie after logout, the same callback twice, a callback in another browser', {
  timeout: 90_000,
}, async (t) => {
  const s = await setup(t);
  const alice = await signInOverHttp(s.origin, 'alice', { rd: '/app/x' });
  assert.equal((await api(s, '/app/x', alice.cookie)).user, 'alice');
  const out = await hop(`${s.origin}/.gatehouse/logout`, alice.jar, { method: 'POST' });
  assert.ok(out.status === 200 || out.status === 302);
  assert.ok(
    out.setCookie.some((c) => /^_gatehouse=; /.test(c)),
    'the cookie is cleared',
  );
  // The old cookie, replayed: refused everywhere, identity nowhere.
  assert.equal((await api(s, '/app/x', alice.cookie)).status, 401);
  assert.equal((await api(s, '/open/x', alice.cookie)).user, undefined);
  assert.equal(
    (await hop(`${s.origin}/.gatehouse/userinfo`, new CookieJar(), { cookie: alice.cookie })).status,
    401,
  );
  // Logging out again with it is harmless.
  const again = await hop(`${s.origin}/.gatehouse/logout`, new CookieJar(), {
    method: 'POST',
    cookie: alice.cookie,
  });
  assert.equal(again.status, 200);

  // The callback: one session per authorization, bound to the browser that started it.
  const jar = new CookieJar();
  const start = await hop(`${s.origin}/.gatehouse/login?rd=%2Fapp%2Fy`, jar);
  const callback = await authorizeAtIdp(start.location!, 'alice', jar);
  const elsewhere = await hop(callback, new CookieJar());
  assert.equal(elsewhere.status, 400, 'another browser (no login cookie) is refused');
  assert.match(elsewhere.body, /GH_LOGIN_STATE/);
  assert.equal(
    elsewhere.setCookie.some((c) => c.startsWith('_gatehouse=')),
    false,
  );
  // That attempt used the one-time state up: the real browser starts again.
  assert.equal((await hop(callback, jar)).status, 400);

  const jar2 = new CookieJar();
  const start2 = await hop(`${s.origin}/.gatehouse/login?rd=%2Fapp%2Fy`, jar2);
  const callback2 = await authorizeAtIdp(start2.location!, 'alice', jar2);
  const first = await hop(callback2, jar2);
  assert.equal(first.status, 302);
  const replay = await hop(callback2, jar2);
  assert.equal(replay.status, 400, 'the same code and state twice');
  assert.match(replay.body, /GH_LOGIN_STATE/);
  assert.equal(
    replay.setCookie.some((c) => c.startsWith('_gatehouse=')),
    false,
  );
  // The used code under a fresh state of the same browser: the provider refuses it, no session.
  const start3 = await hop(`${s.origin}/.gatehouse/login?rd=%2Fapp%2Fy`, jar2);
  const state3 = new URL(start3.location!).searchParams.get('state')!;
  const used = new URL(callback2);
  used.searchParams.set('state', state3);
  const mixed = await hop(used.href, jar2);
  assert.ok(mixed.status >= 400, `a used code is refused (${mixed.status})`);
  assert.equal(
    mixed.setCookie.some((c) => c.startsWith('_gatehouse=')),
    false,
  );
  await stillServes(s);
});

test('central sign-in host: a hand-off link is one-time, for one host and one browser', {
  timeout: 90_000,
}, async (t) => {
  const s = await setup(t, { signInHost: true });
  const signInOrigin = `http://${SIGN_IN}:${s.port}`;
  /** Signs in through the sign-in host and stops before the hand-off: its URL and the browser's jar. */
  const toHandoff = async (user: string): Promise<{ handoff: string; jar: CookieJar }> => {
    const jar = new CookieJar();
    const atApp = await hop(`${s.origin}/.gatehouse/login?rd=%2Fapp%2Fh`, jar);
    assert.ok(atApp.location?.startsWith(`${signInOrigin}/.gatehouse/login?`), atApp.location);
    const atSignIn = await hop(atApp.location!, jar);
    const callback = await authorizeAtIdp(atSignIn.location!, user, jar);
    const done = await hop(callback, jar);
    assert.equal(done.status, 302);
    assert.ok(done.location?.startsWith(`${s.origin}/.gatehouse/handoff?code=`), done.location);
    return { handoff: done.location!, jar };
  };

  // The normal path: the hand-off sets the app host's cookie for the same session.
  const normal = await toHandoff('alice');
  const used = await hop(normal.handoff, normal.jar);
  assert.equal(used.status, 302);
  const cookie = `_gatehouse=${normal.jar.get(s.origin, '_gatehouse')}`;
  assert.equal((await api(s, '/app/h', cookie)).user, 'alice');
  // Replayed, even by the same browser: refused.
  const replay = await hop(normal.handoff, normal.jar);
  assert.equal(replay.status, 400);
  assert.match(replay.body, /GH_HANDOFF/);

  // Stolen before use and opened in another browser: refused, and the link is spent.
  const stolen = await toHandoff('alice');
  const thief = await hop(stolen.handoff, new CookieJar());
  assert.equal(thief.status, 400);
  assert.equal(
    thief.setCookie.some((c) => c.startsWith('_gatehouse=')),
    false,
  );
  assert.equal((await hop(stolen.handoff, stolen.jar)).status, 400, 'one use, even a refused one');

  // Taken to another host the gateway serves: refused (the code is bound to its host).
  const moved = await toHandoff('alice');
  const otherHost = moved.handoff.replace(s.origin, signInOrigin);
  assert.equal((await hop(otherHost, moved.jar)).status, 400);

  // A made-up code: refused.
  const made = `${s.origin}/.gatehouse/handoff?code=${randomBytes(32).toString('base64url')}`;
  assert.equal((await hop(made, normal.jar)).status, 400);
  await stillServes(s);
});

test('cookie attributes: HttpOnly, SameSite=Lax, Path, host-only, Secure on TLS; login cookie limits', {
  timeout: 90_000,
}, async (t) => {
  const s = await setup(t);
  // Over plain HTTP (development): never Secure, so the browser keeps it; never a Domain.
  const jar = new CookieJar();
  const start = await hop(`${s.origin}/.gatehouse/login?rd=%2Fapp%2Fa`, jar);
  const loginCookie = start.setCookie.find((c) => c.startsWith('_gatehouse_login='))!;
  assert.match(
    loginCookie,
    /^_gatehouse_login=[A-Za-z0-9_-]{43}; Path=\/\.gatehouse\/; Max-Age=600; HttpOnly; SameSite=Lax$/,
  );
  const callback = await authorizeAtIdp(start.location!, 'alice', jar);
  const done = await hop(callback, jar);
  const session = done.setCookie.find((c) => c.startsWith('_gatehouse='))!;
  assert.match(
    session,
    /^_gatehouse=[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}; Path=\/; Max-Age=\d+; HttpOnly; SameSite=Lax$/,
  );
  assert.ok(Buffer.byteLength(session) < 200, 'the cookie carries only the sealed id');

  // Over TLS: Secure on every cookie the gateway sets or clears.
  const tlsStart = await tlsGet(s, '/.gatehouse/login?rd=%2Fapp%2Fa');
  assert.equal(tlsStart.status, 302);
  assert.match(
    tlsStart.setCookie.find((c) => c.startsWith('_gatehouse_login='))!,
    /; HttpOnly; SameSite=Lax; Secure$/,
  );
  const cleared = await tlsGet(s, '/app/a', `_gatehouse=${'A'.repeat(43)}.${'A'.repeat(43)}`);
  assert.equal(cleared.status, 302);
  assert.match(
    cleared.setCookie.find((c) => c.startsWith('_gatehouse='))!,
    /Max-Age=0; HttpOnly; SameSite=Lax; Expires=.*; Secure$/,
  );

  // The login-state cookie: a value the gateway did not make is replaced, never used as the binding.
  for (const planted of ['short', 'x'.repeat(4000), `${'A'.repeat(42)}!`]) {
    const r = await hop(`${s.origin}/.gatehouse/login`, new CookieJar(), {
      cookie: `_gatehouse_login=${planted}`,
    });
    const set = r.setCookie.find((c) => c.startsWith('_gatehouse_login='))!;
    assert.match(set, /^_gatehouse_login=[A-Za-z0-9_-]{43};/);
    assert.ok(!set.includes(planted));
  }
  // It never reaches the backend, nor does the session cookie.
  const sessionCookie = `_gatehouse=${jar.get(s.origin, '_gatehouse')}`;
  const seen = await api(
    s,
    '/app/a',
    `_gatehouse_login=${jar.get(s.origin, '_gatehouse_login')}; ${sessionCookie}; theme=dark`,
  );
  assert.equal(seen.user, 'alice');
  assert.equal(seen.upstreamCookie, 'theme=dark');
  // Each login start stores one-time state for 10 minutes, so starts are limited per address and a
  // flood cannot pile state up: the 31st in a minute is refused.
  let limited: number | undefined;
  for (let i = 0; i < 40 && limited === undefined; i++) {
    const r = await hop(`${s.origin}/.gatehouse/login`, new CookieJar());
    if (r.status === 429) limited = i;
  }
  assert.ok(limited !== undefined && limited <= 30, `login starts are limited (${limited})`);
  // Everything else keeps working for a signed-in user meanwhile.
  assert.equal((await api(s, '/app/a', sessionCookie)).user, 'alice');
  assert.equal((await api(s, '/open/a', undefined)).status, 200);
});

/**
 * Adversarial suite, redirects: every way a return address (`rd`) could turn the gateway's sign-in
 * endpoints into an open redirect, tried through the running gateway against a real OpenID provider
 * (oidc-provider) for a signed-in browser, for a full sign-in (login, the provider's form, callback)
 * and for the central sign-in host's hand-off. The browser is a small HTTP client with a cookie jar
 * that follows redirects the way a browser resolves `Location` (WHATWG URL), and stops at the first
 * hop that would leave the gateway's hosts and the provider. Ends by checking the gateway still serves.
 */
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import { resolveReturnTo, type ServedHostCheck } from '../src/identity/login.js';
import { startIdp, type TestIdp } from './helpers/oidc.js';
import { request, startBackend, startGateway, type TestGateway } from './helpers/proxy.js';

const SECRET = 'attack-redirects-session-secret-0123456789abcdef';
const APP = 'app.gatehouse.test';
const OTHER = 'other.gatehouse.test';
const SIGN_IN = 'login.gatehouse.test';
const HOSTS = [APP, OTHER, SIGN_IN];
const TIMEOUT = 120_000;

/** One response of a hop. */
interface Hop {
  readonly method: string;
  readonly url: string;
  readonly status: number;
  readonly location: string | undefined;
}

/**
 * A browser without a browser: a cookie jar per host, `Location` resolved as WHATWG URL does, the
 * provider's development sign-in form filled in. `*.gatehouse.test` goes to the gateway's port on
 * 127.0.0.1; the provider is on 127.0.0.1 itself; anything else is "left" and never contacted.
 */
class Client {
  readonly #jar = new Map<string, Map<string, string>>();
  readonly #idp: string;

  constructor(idp: TestIdp) {
    this.#idp = new URL(idp.issuer).host;
  }

  /** True when a browser at `url` is still with the gateway or the provider. */
  isOurs(url: URL): boolean {
    return (
      (url.protocol === 'http:' && HOSTS.includes(url.hostname)) ||
      (url.protocol === 'http:' && url.host === this.#idp)
    );
  }

  cookie(host: string, name: string): string | undefined {
    return this.#jar.get(host)?.get(name);
  }

  async send(
    method: string,
    url: string,
    body?: string,
  ): Promise<{ status: number; location: string | undefined; body: string }> {
    const u = new URL(url);
    const jar = this.#jar.get(u.hostname);
    const headers: Record<string, string> = { host: u.host, accept: 'text/html' };
    if (jar !== undefined && jar.size > 0) headers.cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
    if (body !== undefined) headers['content-type'] = 'application/x-www-form-urlencoded';
    const r = await request(`http://127.0.0.1:${u.port}`, {
      method,
      path: `${u.pathname}${u.search}`,
      headers,
      body,
    });
    const set = r.headers['set-cookie'] ?? [];
    for (const line of set) {
      const [pair, ...attrs] = line.split(';');
      const eq = pair!.indexOf('=');
      const name = pair!.slice(0, eq).trim();
      const value = pair!.slice(eq + 1).trim();
      let store = this.#jar.get(u.hostname);
      if (store === undefined) {
        store = new Map();
        this.#jar.set(u.hostname, store);
      }
      if (attrs.some((a) => /^\s*max-age=0\s*$/i.test(a)) || value === '') store.delete(name);
      else store.set(name, value);
    }
    const location = r.headers.location;
    return { status: r.status, location, body: r.body.toString() };
  }

  /**
   * Follows redirects from `url` (signing in as `user` when the provider asks). Returns every hop, where
   * it ended, and `left` when a Location pointed away from the gateway and the provider.
   */
  async follow(
    url: string,
    user = 'alice',
  ): Promise<{ hops: Hop[]; end: string; status: number; body: string; left: string | undefined }> {
    const hops: Hop[] = [];
    let method = 'GET';
    let body: string | undefined;
    let current = url;
    for (let i = 0; i < 20; i++) {
      const r = await this.send(method, current, body);
      hops.push({ method, url: current, status: r.status, location: r.location });
      method = 'GET';
      body = undefined;
      if (r.status >= 300 && r.status < 400 && r.location !== undefined) {
        const next = new URL(r.location, current);
        if (!this.isOurs(next))
          return { hops, end: current, status: r.status, body: r.body, left: next.href };
        current = next.href;
        continue;
      }
      const form = /<form[^>]*action="([^"]+)"[^>]*method="post"/i.exec(r.body);
      if (r.status === 200 && form !== null && /name="login"/.test(r.body)) {
        method = 'POST';
        body = new URLSearchParams({ prompt: 'login', login: user, password: 'any-password' }).toString();
        current = new URL(form[1]!.replaceAll('&amp;', '&'), current).href;
        continue;
      }
      return { hops, end: current, status: r.status, body: r.body, left: undefined };
    }
    throw new Error(`too many redirects from ${url}`);
  }
}

/**
 * What a browser does with `location` received at `base`: the URL it goes to. Asserts that it is on a
 * host of the gateway or the provider, and that a relative Location is never a network-path reference.
 */
function assertSafeLocation(client: Client, location: string, base: string, what: string): void {
  assert.ok(!/^[\\/]{2}/.test(location), `${what}: network-path Location ${location}`);
  assert.ok(!/^\s/.test(location), `${what}: Location with leading white space ${location}`);
  const next = new URL(location, base);
  assert.ok(client.isOurs(next), `${what}: Location ${location} leaves for ${next.host}`);
}

function assertNoOpenRedirect(client: Client, hops: readonly Hop[], left: string | undefined, what: string) {
  assert.equal(left, undefined, `${what}: the browser was sent to ${left}`);
  for (const h of hops) if (h.location !== undefined) assertSafeLocation(client, h.location, h.url, what);
}

interface Setup {
  gw: TestGateway;
  idp: TestIdp;
  port: number;
  origin(host?: string): string;
}

interface SetupOptions {
  /** Sign-in runs on login.gatehouse.test and hands the session to the other hosts. */
  signIn?: boolean;
  /** Two providers, so the login page is a picker. */
  twoProviders?: boolean;
}

function gatewayConfig(
  backend: string,
  issuer: string,
  idp: Pick<TestIdp, 'clientId' | 'clientSecret'>,
  signInHost?: string,
  twoProviders = false,
) {
  const provider = (name: string) => ({
    name,
    type: 'oidc',
    issuer,
    clientId: idp.clientId,
    clientSecret: idp.clientSecret,
    scopes: ['openid', 'email', 'profile', 'groups'],
  });
  return {
    listeners: [{ name: 'web', bind: '127.0.0.1:0' }],
    upstreams: { app: { servers: [{ url: backend }] } },
    identity: {
      session: { secrets: [SECRET], ...(signInHost === undefined ? {} : { signInHost }) },
      providers: twoProviders ? [provider('corp'), provider('second')] : [provider('corp')],
    },
    routes: [
      {
        name: 'app',
        match: { host: HOSTS, path: '/' },
        upstream: 'app',
        policy: { allow: [{ groups: ['data-eng', 'analysts'] }] },
      },
    ],
    logging: { level: 'warn' },
  };
}

/** The gateway (one listener, three hosts) in front of an echo backend, with a real provider. */
async function setup(t: TestContext, o: SetupOptions = {}): Promise<Setup> {
  const backend = await startBackend(t, 'app');
  const gw = await startGateway(
    t,
    gatewayConfig(backend.url, 'http://127.0.0.1:9', { clientId: 'gatehouse', clientSecret: 'not-yet' }),
  );
  const port = gw.port();
  const idp = await startIdp(t, {
    redirectUris: HOSTS.map((h) => `http://${h}:${port}/.gatehouse/callback`),
    postLogoutRedirectUris: HOSTS.map((h) => `http://${h}:${port}/.gatehouse/signed-out`),
  });
  // Discovery is lazy: the provider needs the gateway's port first, then the gateway learns the issuer
  // (and the sign-in host its real port, which servedHostChecker then counts as served).
  const signInHost = o.signIn ? `${SIGN_IN}:${port}` : undefined;
  await gw.reload(gatewayConfig(backend.url, idp.issuer, idp, signInHost, o.twoProviders));
  return { gw, idp, port, origin: (host = APP) => `http://${host}:${port}` };
}

/** Return addresses as they appear in the query string (already percent-encoded where it matters). */
function attacks(port: number): string[] {
  const served = `${APP}:${port}`;
  return [
    // The three from the report: dot-segments collapse into a network-path reference.
    '/.//evil.example/x',
    '/a/..//evil.example/x',
    '/%2e//evil.example/x',
    '%2F.%2F%2Fevil.example%2Fx',
    '/%2e%2e//evil.example/x',
    '/.%2e//evil.example/x',
    '/..//evil.example/x',
    '/./%2F/evil.example/x',
    // Backslashes, encoded slashes, white space the URL parser drops.
    '/\\evil.example',
    '/\\/evil.example',
    '\\\\evil.example',
    '/%5Cevil.example',
    '/%5C%5Cevil.example',
    '%5C%5Cevil.example',
    '/%5C/evil.example',
    '/.%5C/evil.example',
    '%2F%2Fevil.example',
    '%2F%2F%2Fevil.example',
    '/%09/evil.example',
    '/%0A/evil.example',
    '%09//evil.example',
    '/%0D%0A/evil.example',
    '%20//evil.example',
    '///evil.example',
    '////evil.example',
    // Scheme tricks.
    'https:evil.example',
    'http:evil.example',
    'http:/evil.example',
    'http:%2F%2Fevil.example',
    'https:%5C%5Cevil.example',
    'HTTP://EVIL.EXAMPLE/',
    'javascript:alert(1)',
    'JaVaScRiPt:alert(1)',
    'javascript://%0Aalert(1)',
    'data:text/html,%3Cscript%3Ealert(1)%3C/script%3E',
    'vbscript:msgbox(1)',
    'ftp://evil.example/',
    // Userinfo, fragments, ports.
    `http://${served}@evil.example/`,
    `http://evil.example%23@${served}/`,
    `http://evil.example%2F@${served}/`,
    `http://evil.example%5C@${served}/`,
    `http://evil.example#@${served}/`,
    `http://evil.example%3F@${served}/`,
    `http://user:pass@${served}/`,
    `http://${APP}:1/`,
    `http://${APP}.evil.example:${port}/`,
    `http://evil.example/${served}`,
    // Network-path references to the served host and to others.
    `//${served}/x`,
    `//${APP}/x`,
    '//evil.example',
    '//evil.example/x',
    '/%2F/evil.example',
    // Unicode and IDN look-alikes.
    'http://%D0%B0pp.gatehouse.test/',
    'http://evil%E3%80%82example/',
    'http://evil.example%E2%80%8B/',
    '/%E3%80%82/evil.example',
    // Dot segments after an absolute URL on a served host.
    `http://${served}//evil.example/x`,
    `http://${served}/.//evil.example/x`,
    `http://${served}/a/..//evil.example/x`,
    `http://${OTHER}:${port}/.//evil.example/x`,
    `http://${OTHER}:${port}//evil.example/x`,
    // Very long.
    `/${'a'.repeat(5000)}`,
    `//${'a'.repeat(5000)}.evil.example`,
  ];
}

/** Return addresses that must be accepted, with where the browser must end up. */
function accepted(port: number): Array<[string, string]> {
  const o = `http://${APP}:${port}`;
  return [
    ['%2Fjobs%3Fa%3D1', `${o}/jobs?a=1`],
    ['/a/../b', `${o}/b`],
    // Decoded once from the query, the address is the path `/%2F%2Fevil.example`: local.
    ['/%252F%252Fevil.example', `${o}/%2F%2Fevil.example`],
    ['/x?next=//evil.example', `${o}/x?next=//evil.example`],
    [`http://${APP}:${port}/y`, `${o}/y`],
    // A served host with a trailing dot is that host.
    [`http://${APP}.:${port}/z`, `${o}/z`],
    // Full-width letters are the served host once parsed (UTS 46 mapping), and that is what is emitted.
    [`http://%EF%BD%81pp.gatehouse.test:${port}/w`, `${o}/w`],
  ];
}

test('resolveReturnTo: checked after WHATWG parsing; never a network-path reference', () => {
  const here = {
    origin: 'https://app.example.com',
    hostname: 'app.example.com',
    port: 443,
    scheme: 'https' as const,
  };
  const served: ServedHostCheck = (h, port) =>
    ['app.example.com', 'other.example.com'].includes(h) && port === 443;
  for (const rd of [
    '/.//evil.example/x',
    '/a/..//evil.example/x',
    '/%2e//evil.example/x',
    '/%2E%2E//evil.example/x',
    '/./\t/evil.example',
    'https://app.example.com//evil.example/x',
    'https://app.example.com/.//evil.example/x',
    'https://other.example.com/a/..//evil.example/x',
    'https://other.example.com././/evil.example',
    'https://other.example.com../x',
    'HTTPS://other.example.com%2e%2e',
  ])
    assert.equal(resolveReturnTo(rd, here, served), undefined, rd);
  assert.equal(
    resolveReturnTo('https://other.example.com./x', here, served)?.href,
    'https://other.example.com/x',
  );
  assert.equal(
    resolveReturnTo('https://app.example.com./x', here, served)?.href,
    'https://app.example.com/x',
  );
});

test('open redirect: rd=/.//evil.example/x never yields a network-path Location for a signed-in user', {
  timeout: TIMEOUT,
}, async (t) => {
  const { idp, port, origin } = await setup(t);
  const client = new Client(idp);
  const signIn = await client.follow(`${origin()}/.gatehouse/login?rd=%2F`);
  assert.equal(signIn.end, `${origin()}/`);
  assert.equal(signIn.status, 200);
  assert.ok(client.cookie(APP, '_gatehouse'), 'signed in');
  const authorizations = idp.count('/auth');
  for (const rd of attacks(port)) {
    const r = await client.follow(`${origin()}/.gatehouse/login?rd=${rd}`);
    assertNoOpenRedirect(client, r.hops, r.left, rd);
    // Refused outright, or (an address the browser reads as local) kept on a served host.
    if (r.status === 400) assert.match(r.body, /GH_BAD_RETURN_URL/, rd);
  }
  for (const [rd, want] of accepted(port)) {
    const r = await client.follow(`${origin()}/.gatehouse/login?rd=${rd}`);
    assertNoOpenRedirect(client, r.hops, r.left, rd);
    assert.equal(r.end, want, rd);
  }
  // The three named addresses are refused before any redirect.
  for (const rd of ['/.//evil.example/x', '/a/..//evil.example/x', '/%2e//evil.example/x']) {
    const r = await client.send('GET', `${origin()}/.gatehouse/login?rd=${rd}`);
    assert.equal(r.status, 400, rd);
    assert.equal(r.location, undefined, rd);
  }
  assert.equal(idp.count('/auth'), authorizations, 'a signed-in user never goes back to the provider');
});

test('open redirect: a full sign-in never ends on a network-path Location', {
  timeout: TIMEOUT,
}, async (t) => {
  const { idp, port, origin } = await setup(t);
  for (const rd of [
    '/.//evil.example/x',
    '/a/..//evil.example/x',
    '/%2e//evil.example/x',
    `http://${APP}:${port}//evil.example/x`,
    `http://${OTHER}:${port}/.//evil.example/x`,
    '/%5Cevil.example',
    '%2F%2Fevil.example',
    'https:evil.example',
  ]) {
    const client = new Client(idp);
    const r = await client.follow(`${origin()}/.gatehouse/login?rd=${rd}`);
    assertNoOpenRedirect(client, r.hops, r.left, rd);
    assert.notEqual(r.status, 302, rd);
  }
  // A local address survives the whole flow: login, the provider's form, the callback.
  const client = new Client(idp);
  const before = idp.count('/auth');
  const r = await client.follow(
    `${origin()}/.gatehouse/login?rd=${encodeURIComponent('/deep/./x/../y?q=%2F%2Fe')}`,
  );
  assertNoOpenRedirect(client, r.hops, r.left, 'deep');
  assert.equal(r.end, `${origin()}/deep/y?q=%2F%2Fe`);
  assert.equal(r.status, 200);
  assert.equal(idp.count('/auth'), before + 2, 'one authorization request (and its resume)');
  assert.ok(
    r.hops.some((h) => h.url.startsWith(`${origin()}/.gatehouse/callback?`)),
    'through the callback',
  );
  // A protected page sends an anonymous browser through sign-in and back to exactly that page.
  const anon = new Client(idp);
  const page = await anon.follow(`${origin()}/.;x/app/;/..;/page?a=1`);
  assertNoOpenRedirect(anon, page.hops, page.left, 'page');
  assert.equal(page.end, `${origin()}/page?a=1`);
  assert.equal(page.status, 200);
});

test('open redirect: the central sign-in host hand-off never yields a network-path Location', {
  timeout: TIMEOUT,
}, async (t) => {
  const { idp, port, origin } = await setup(t, { signIn: true });
  const client = new Client(idp);
  // Sign in on the sign-in host through the app host: the hand-off sets the app host's cookie.
  const first = await client.follow(`${origin()}/start`);
  assertNoOpenRedirect(client, first.hops, first.left, 'first');
  assert.equal(first.end, `${origin()}/start`);
  assert.ok(first.hops.some((h) => h.url.startsWith(`${origin(SIGN_IN)}/.gatehouse/callback?`)));
  assert.ok(first.hops.some((h) => h.url.startsWith(`${origin()}/.gatehouse/handoff?code=`)));
  // Now the sign-in host has a session: the attack addresses go through the hand-off path directly.
  for (const rd of [
    '/.//evil.example/x',
    '/a/..//evil.example/x',
    '/%2e//evil.example/x',
    `http://${APP}:${port}//evil.example/x`,
    `http://${OTHER}:${port}/.//evil.example/x`,
  ]) {
    for (const host of [APP, OTHER, SIGN_IN]) {
      const r = await client.follow(`${origin(host)}/.gatehouse/login?rd=${rd}`);
      assertNoOpenRedirect(client, r.hops, r.left, `${host} ${rd}`);
      assert.equal(r.status, 400, `${host} ${rd}`);
    }
    // Straight at the sign-in host with a made-up browser binding: still refused.
    const hb = 'A'.repeat(43);
    const direct = await client.follow(`${origin(SIGN_IN)}/.gatehouse/login?hb=${hb}&rd=${rd}`);
    assertNoOpenRedirect(client, direct.hops, direct.left, `direct ${rd}`);
  }
  // A fresh browser on another host: its hand-off lands on its own page.
  const fresh = new Client(idp);
  const other = await fresh.follow(
    `${origin(OTHER)}/.gatehouse/login?rd=${encodeURIComponent(`http://${OTHER}:${port}/p/./q`)}`,
  );
  assertNoOpenRedirect(fresh, other.hops, other.left, 'other');
  assert.equal(other.end, `${origin(OTHER)}/p/q`);
});

test('logout and signed-out are no redirect sinks', { timeout: TIMEOUT }, async (t) => {
  const { idp, origin } = await setup(t);
  const client = new Client(idp);
  await client.follow(`${origin()}/.gatehouse/login?rd=%2F`);
  for (const q of [
    'rd=//evil.example',
    'next=//evil.example',
    'post_logout_redirect_uri=http://evil.example/',
    'return_to=/.//evil.example',
  ]) {
    const page = await client.follow(`${origin()}/.gatehouse/signed-out?${q}`);
    assertNoOpenRedirect(client, page.hops, page.left, q);
    assert.equal(page.status, 200);
    assert.ok(!page.body.includes('evil.example'), `signed-out page echoes ${q}`);
  }
  const out = await client.send(
    'GET',
    `${origin()}/.gatehouse/logout?rd=//evil.example&next=//evil.example&post_logout_redirect_uri=http://evil.example/`,
  );
  assert.equal(out.status, 302);
  assertSafeLocation(client, out.location!, origin(), 'logout');
  // The provider's end-session endpoint, returning to this host's own signed-out page only.
  const end = new URL(out.location!);
  assert.equal(end.origin, idp.issuer);
  assert.equal(end.searchParams.get('post_logout_redirect_uri'), `${origin()}/.gatehouse/signed-out`);
  assert.equal(client.cookie(APP, '_gatehouse'), undefined, 'signed out');
  // Without a session, logout answers the signed-out page itself.
  const again = await client.follow(`${origin()}/.gatehouse/logout?rd=//evil.example`);
  assertNoOpenRedirect(client, again.hops, again.left, 'logout again');
  assert.equal(again.status, 200);
});

test('the provider picker links carry only the checked return address', { timeout: TIMEOUT }, async (t) => {
  const { idp, origin } = await setup(t, { twoProviders: true });
  const client = new Client(idp);
  const page = await client.send(
    'GET',
    `${origin()}/.gatehouse/login?rd=%2Fx%2F.%2Fy&junk=%22%3E%3Cscript%3E&hb=zz`,
  );
  assert.equal(page.status, 200);
  const html = page.body
    .replace(/&#(\d+);/g, (_, n: string) => String.fromCharCode(Number(n)))
    .replaceAll('&amp;', '&');
  const links = [...html.matchAll(/href="(\/\.gatehouse\/login\?[^"]+)"/g)].map((m) => m[1]!);
  assert.equal(links.length, 2, page.body);
  for (const href of links) {
    const q = new URL(href, origin()).searchParams;
    assert.equal(q.get('rd'), '/x/y');
    assert.equal(q.get('junk'), null);
    assert.equal(q.get('hb'), null);
  }
  assert.ok(!page.body.includes('<script>'));
  const bad = await client.send('GET', `${origin()}/.gatehouse/login?rd=/.//evil.example/x`);
  assert.equal(bad.status, 400);
  assert.ok(!bad.body.includes('evil.example'));
});

test('after the redirect attacks the gateway still serves and signs in', { timeout: TIMEOUT }, async (t) => {
  const { gw, idp, origin } = await setup(t);
  const client = new Client(idp);
  for (const rd of attacks(gw.port()).slice(0, 10))
    await client.follow(`${origin()}/.gatehouse/login?rd=${rd}`);
  const r = await client.follow(`${origin()}/ok?after=1`, 'bob');
  assertNoOpenRedirect(client, r.hops, r.left, 'after');
  assert.equal(r.end, `${origin()}/ok?after=1`);
  assert.equal(r.status, 200);
  const seen = JSON.parse(r.body) as { url: string; headers: Record<string, string> };
  assert.equal(seen.url, '/ok?after=1');
  const health = await request(`http://127.0.0.1:${gw.port()}`, {
    path: '/.gatehouse/jwks.json',
    headers: { host: APP },
  });
  assert.equal(health.status, 200);
});

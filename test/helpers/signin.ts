/**
 * A sign-in without a browser: walks the gateway's `/.gatehouse/login`, the test provider's own sign-in
 * form (oidc-provider's development interactions, see `startIdp`) and the gateway's callback over plain
 * HTTP, keeping each side's cookies, and returns the session cookie the gateway set. The gateway's
 * host names (`*.gatehouse.test`) are reached on 127.0.0.1 with the Host header, as `fetchApp` does.
 */
import { request } from 'undici';

type Jar = Map<string, string>;

function remember(jar: Jar, setCookie: string | string[] | undefined): void {
  if (setCookie === undefined) return;
  for (const line of Array.isArray(setCookie) ? setCookie : [setCookie]) {
    const pair = line.split(';', 1)[0]!;
    const eq = pair.indexOf('=');
    if (eq > 0) jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
  }
}

function cookieHeader(jar: Jar): string | undefined {
  if (jar.size === 0) return undefined;
  return [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
}

interface Hop {
  status: number;
  location: string | undefined;
  body: string;
}

async function hop(url: URL, jar: Jar, init: { method?: 'GET' | 'POST'; form?: string } = {}): Promise<Hop> {
  const headers: Record<string, string> = { host: url.host, accept: 'text/html' };
  const cookie = cookieHeader(jar);
  if (cookie !== undefined) headers.cookie = cookie;
  if (init.form !== undefined) headers['content-type'] = 'application/x-www-form-urlencoded';
  const r = await request(`http://127.0.0.1:${url.port}${url.pathname}${url.search}`, {
    method: init.method ?? 'GET',
    headers,
    body: init.form,
    headersTimeout: 15_000,
    bodyTimeout: 15_000,
  });
  remember(jar, r.headers['set-cookie']);
  const body = await r.body.text();
  const location = r.headers.location;
  return { status: r.statusCode, location: typeof location === 'string' ? location : undefined, body };
}

/**
 * Signs `user` in through the gateway at `origin` (e.g. `http://app.gatehouse.test:PORT`) and returns
 * the `Cookie` header value of the session (`_gatehouse=…`). Throws when any step goes astray.
 */
export async function signInOverHttp(
  origin: string,
  user: string,
  cookieName = '_gatehouse',
): Promise<string> {
  const gatewayJar: Jar = new Map();
  const idpJar: Jar = new Map();
  let url = new URL('/.gatehouse/login?rd=%2F', origin);
  let onGateway = true;
  for (let step = 0; step < 20; step++) {
    const jar = onGateway ? gatewayJar : idpJar;
    const r = await hop(url, jar);
    if (r.status >= 300 && r.status < 400 && r.location !== undefined) {
      const next = new URL(r.location, url);
      if (onGateway && gatewayJar.has(cookieName) && next.origin === new URL(origin).origin) {
        return `${cookieName}=${gatewayJar.get(cookieName)}`;
      }
      onGateway = next.origin === new URL(origin).origin;
      url = next;
      continue;
    }
    if (r.status === 200 && !onGateway) {
      // The provider's form: sign in (any password works), or confirm consent.
      const action = /<form[^>]*action="([^"]+)"/.exec(r.body)?.[1];
      if (action === undefined) throw new Error(`no form on ${url.pathname}`);
      const prompt = /name="prompt" value="([^"]+)"/.exec(r.body)?.[1] ?? 'login';
      const form = new URLSearchParams({ prompt, login: user, password: 'any-password' }).toString();
      const submitted = await hop(new URL(action.replaceAll('&amp;', '&'), url), idpJar, {
        method: 'POST',
        form,
      });
      if (submitted.location === undefined)
        throw new Error(`the ${prompt} form answered ${submitted.status}`);
      url = new URL(submitted.location, url);
      onGateway = url.origin === new URL(origin).origin;
      continue;
    }
    if (onGateway && gatewayJar.has(cookieName)) return `${cookieName}=${gatewayJar.get(cookieName)}`;
    throw new Error(`sign-in stopped at ${url.href} with ${r.status}: ${r.body.slice(0, 200)}`);
  }
  throw new Error('sign-in did not finish in 20 steps');
}

/**
 * Sign-in over plain HTTP, without a browser: the requests a browser makes through the gateway's login
 * endpoints and the test provider's development sign-in form (helpers/oidc.ts), with a small cookie jar
 * per host name. Tests can stop at any step: keep the callback URL, replay it, or take it to another
 * "browser" (another jar). Host names such as `app.gatehouse.test` are reached on 127.0.0.1 with the
 * name in the Host header, as in the browser tests.
 */
import { request } from 'undici';

/** Cookies by host name (ports share cookies, as in browsers); paths and expiry are not modelled. */
export class CookieJar {
  readonly #hosts = new Map<string, Map<string, string>>();

  /** The Cookie header for `url`'s host, or undefined when there is none. */
  header(url: string | URL): string | undefined {
    const jar = this.#hosts.get(new URL(url).hostname);
    if (jar === undefined || jar.size === 0) return undefined;
    return [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  }

  /** The value of one cookie for `url`'s host. */
  get(url: string | URL, name: string): string | undefined {
    return this.#hosts.get(new URL(url).hostname)?.get(name);
  }

  /** Sets one cookie by hand (an attacker planting a value). */
  set(url: string | URL, name: string, value: string): void {
    const host = new URL(url).hostname;
    let jar = this.#hosts.get(host);
    if (jar === undefined) {
      jar = new Map();
      this.#hosts.set(host, jar);
    }
    jar.set(name, value);
  }

  /** Applies Set-Cookie headers received from `url`: Max-Age=0 removes, anything else sets. */
  store(url: string | URL, setCookies: readonly string[]): void {
    for (const line of setCookies) {
      const [pair = '', ...attrs] = line.split(';');
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      const removed = attrs.some((a) => /^\s*max-age\s*=\s*0\s*$/i.test(a));
      if (removed) this.#hosts.get(new URL(url).hostname)?.delete(name);
      else this.set(url, name, value);
    }
  }
}

/** One answer, redirects not followed. */
export interface Hop {
  status: number;
  location: string | undefined;
  setCookie: string[];
  body: string;
}

/**
 * One request (redirects not followed), with the jar's cookies for the URL's host; the answer's
 * cookies go into the jar. `cookie` replaces the jar's Cookie header when given; `headers` are added.
 */
export async function hop(
  url: string,
  jar: CookieJar,
  init: {
    method?: string;
    form?: Record<string, string>;
    accept?: string;
    cookie?: string;
    headers?: Record<string, string>;
  } = {},
): Promise<Hop> {
  const u = new URL(url);
  const headers: Record<string, string> = {
    host: u.host,
    accept: init.accept ?? 'text/html',
    ...init.headers,
  };
  const cookie = init.cookie ?? jar.header(u);
  if (cookie !== undefined) headers.cookie = cookie;
  let body: string | undefined;
  if (init.form !== undefined) {
    body = new URLSearchParams(init.form).toString();
    headers['content-type'] = 'application/x-www-form-urlencoded';
  }
  const r = await request(`http://127.0.0.1:${u.port || 80}${u.pathname}${u.search}`, {
    method: (init.method ?? (body === undefined ? 'GET' : 'POST')) as 'GET',
    headers,
    body,
    headersTimeout: 15_000,
    bodyTimeout: 15_000,
  });
  const text = await r.body.text();
  const raw = r.headers['set-cookie'];
  const setCookie = raw === undefined ? [] : Array.isArray(raw) ? raw : [raw];
  jar.store(u, setCookie);
  const location = r.headers.location as string | undefined;
  return {
    status: r.statusCode,
    location: location === undefined ? undefined : new URL(location, u).href,
    setCookie,
    body: text,
  };
}

/**
 * The provider's part of a sign-in: from the authorization URL the gateway sent the browser to, through
 * the sign-in form as `user`, to the gateway callback URL the provider redirects to (not requested).
 */
export async function authorizeAtIdp(authorizeUrl: string, user: string, jar: CookieJar): Promise<string> {
  const idp = new URL(authorizeUrl).origin;
  let url = authorizeUrl;
  for (let step = 0; step < 10; step++) {
    const r = await hop(url, jar);
    if (r.location === undefined) {
      // The sign-in form: the provider's development interaction posts back to its own URL.
      if (r.status === 200 && /name="login"/.test(r.body)) {
        const next = await hop(url, jar, {
          form: { prompt: 'login', login: user, password: 'any-password' },
        });
        if (next.location === undefined) throw new Error(`sign-in form answered ${next.status}`);
        url = next.location;
        continue;
      }
      throw new Error(`the provider answered ${r.status} at ${url}: ${r.body.slice(0, 200)}`);
    }
    if (!r.location.startsWith(idp)) return r.location;
    url = r.location;
  }
  throw new Error('too many redirects at the provider');
}

/** What `signInOverHttp` returns. */
export interface SignedIn {
  /** `name=value` of the session cookie, ready for a Cookie header. */
  cookie: string;
  /** Where the gateway sent the browser after the callback. */
  location: string;
  jar: CookieJar;
}

/**
 * A complete sign-in as `user` at the gateway `origin` (e.g. `http://app.gatehouse.test:PORT`):
 * `/.gatehouse/login?rd=…` (through the central sign-in host when one is configured), the provider,
 * the callback and, with a sign-in host, the hand-off. Throws when any step answers otherwise.
 */
export async function signInOverHttp(
  origin: string,
  user: string,
  opts: { rd?: string; jar?: CookieJar; cookieName?: string } = {},
): Promise<SignedIn> {
  const jar = opts.jar ?? new CookieJar();
  const name = opts.cookieName ?? '_gatehouse';
  const gatehouse = (url: string | undefined) =>
    url !== undefined && new URL(url).pathname.startsWith('/.gatehouse/');
  let start = await hop(`${origin}/.gatehouse/login?rd=${encodeURIComponent(opts.rd ?? '/')}`, jar);
  for (let i = 0; i < 3 && gatehouse(start.location); i++) start = await hop(start.location!, jar);
  if (start.status !== 302 || start.location === undefined)
    throw new Error(`login start answered ${start.status}: ${start.body.slice(0, 200)}`);
  const callback = await authorizeAtIdp(start.location, user, jar);
  let done = await hop(callback, jar);
  for (
    let i = 0;
    i < 3 && done.location !== undefined && new URL(done.location).pathname === '/.gatehouse/handoff';
    i++
  )
    done = await hop(done.location, jar);
  const value = jar.get(origin, name);
  if (done.status !== 302 || value === undefined)
    throw new Error(`callback answered ${done.status}: ${done.body.slice(0, 200)}`);
  return { cookie: `${name}=${value}`, location: done.location ?? '', jar };
}

/**
 * A real OpenID provider for tests (`oidc-provider` on 127.0.0.1 port 0) and a small node:http app that
 * stands in for the proxy: `/.gatehouse/*` goes to `LoginService.handle`, everything else through
 * `authenticateSession` (200 with the identity as JSON, 403 page on `/admin` without the `admins`
 * group, login redirect for browsers, 401 otherwise).
 *
 * Users: alice (data-eng), bob (analysts), carol (hundreds of long group names). Any password works
 * (the provider's development sign-in form). Consent is implied for the gateway's client, as for a
 * first-party application.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { TestContext } from 'node:test';
import { exportJWK, generateKeyPair } from 'jose';
import { request } from 'undici';
import { normalizeHost } from '../../src/core/normalize.js';
import type { LoginService } from '../../src/identity/login.js';
import { appendSetCookie } from '../../src/identity/pages.js';

/** A user of the test provider. */
export interface TestUser {
  readonly id: string;
  readonly email: string;
  readonly name: string;
  readonly groups: readonly string[];
  /** Default true. */
  readonly emailVerified?: boolean;
}

/** alice, bob, carol (whose groups make tokens tens of kilobytes long) and mallory (unverified email). */
export const USERS: readonly TestUser[] = [
  { id: 'alice', email: 'alice@example.com', name: 'Alice Doe', groups: ['data-eng'] },
  { id: 'bob', email: 'bob@example.com', name: 'Bob Roe', groups: ['analysts'] },
  {
    id: 'carol',
    email: 'carol@example.com',
    name: 'Carol Poe',
    groups: Array.from(
      { length: 400 },
      (_, i) => `very-long-group-name-for-the-cookie-size-test-${String(i).padStart(4, '0')}`,
    ),
  },
  { id: 'mallory', email: 'ceo@example.com', name: 'Mallory', groups: [], emailVerified: false },
];

/** Options of the test provider. */
export interface TestIdpOptions {
  readonly clientId?: string;
  readonly clientSecret?: string;
  /** Redirect URIs registered for the client (the gateway's `/.gatehouse/callback` on each test host). */
  readonly redirectUris: readonly string[];
  readonly postLogoutRedirectUris?: readonly string[];
  /** Access token lifetime in seconds (default 120): short, so refresh can be exercised. */
  readonly accessTokenTtl?: number;
  /** Put scope claims (email, groups) into the ID token too (default false: userinfo only). */
  readonly claimsInIdToken?: boolean;
  /** Name shown in logs. */
  readonly name?: string;
}

/** One request the provider received. */
export interface IdpRequest {
  readonly method: string;
  readonly path: string;
}

/** A running test provider. */
export interface TestIdp {
  readonly issuer: string;
  readonly clientId: string;
  readonly clientSecret: string;
  readonly requests: IdpRequest[];
  /** Token endpoint outcomes in order: `grant_type` and whether it succeeded. */
  readonly grants: Array<{ type: string; ok: boolean }>;
  /** Requests whose path starts with `prefix`. */
  count(prefix: string): number;
  /** Revokes every grant of a user (their tokens stop working, refresh fails). */
  revokeGrants(accountId: string): Promise<number>;
  close(): Promise<void>;
}

interface StoredEntry {
  payload: Record<string, unknown>;
  expiresAt: number;
}

// oidc-provider ships no type declarations; these are the few members the tests use.
interface ProviderInstance {
  callback(): (req: http.IncomingMessage, res: http.ServerResponse) => void;
  Grant: new (p: { accountId: string; clientId: string }) => GrantInstance;
  on(event: string, fn: (...args: unknown[]) => void): void;
}
interface GrantInstance {
  addOIDCScope(scope: string): void;
  addOIDCClaims(claims: string[]): void;
  save(): Promise<string>;
}
type ProviderCtor = new (issuer: string, config: Record<string, unknown>) => ProviderInstance;
interface GrantCtx {
  oidc: {
    result?: { consent?: { grantId?: string } };
    session: { accountId: string; grantIdFor(clientId: string): string | undefined };
    client: { clientId: string };
    params: { scope?: string };
    provider: {
      Grant: { find(id: string): Promise<GrantInstance | undefined> } & (new (p: {
        accountId: string;
        clientId: string;
      }) => GrantInstance);
    };
  };
}

/** Starts the provider on 127.0.0.1 port 0; closed when the test ends. */
export async function startIdp(t: TestContext, options: TestIdpOptions): Promise<TestIdp> {
  const moduleName = 'oidc-provider';
  const { Provider } = (await import(moduleName)) as { Provider: ProviderCtor };
  const clientId = options.clientId ?? 'gatehouse';
  const clientSecret = options.clientSecret ?? `secret-${randomBytes(8).toString('hex')}`;
  const requests: IdpRequest[] = [];
  const stores = new Map<string, Map<string, StoredEntry>>();
  const storeOf = (model: string) => {
    let m = stores.get(model);
    if (m === undefined) {
      m = new Map();
      stores.set(model, m);
    }
    return m;
  };
  const live = (e: StoredEntry | undefined) =>
    e !== undefined && e.expiresAt > Date.now() ? e.payload : undefined;

  // A plain in-memory adapter, so the test can find and revoke a user's grants.
  class Adapter {
    readonly #m: Map<string, StoredEntry>;
    constructor(model: string) {
      this.#m = storeOf(model);
    }
    async upsert(id: string, payload: Record<string, unknown>, expiresIn?: number) {
      this.#m.set(id, {
        payload,
        expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : Number.POSITIVE_INFINITY,
      });
    }
    async find(id: string) {
      return live(this.#m.get(id));
    }
    async findByUid(uid: string) {
      for (const e of this.#m.values()) if (e.payload.uid === uid) return live(e);
      return undefined;
    }
    async findByUserCode(code: string) {
      for (const e of this.#m.values()) if (e.payload.userCode === code) return live(e);
      return undefined;
    }
    async consume(id: string) {
      const e = this.#m.get(id);
      if (e) e.payload.consumed = Math.floor(Date.now() / 1000);
    }
    async destroy(id: string) {
      this.#m.delete(id);
    }
    async revokeByGrantId(grantId: string) {
      for (const m of stores.values()) for (const [k, e] of m) if (e.payload.grantId === grantId) m.delete(k);
    }
  }

  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const issuer = `http://127.0.0.1:${port}`;
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await exportJWK(privateKey)), kid: 'test-key', alg: 'RS256', use: 'sig' };
  const users = new Map(USERS.map((u) => [u.id, u]));

  const provider = new Provider(issuer, {
    adapter: Adapter,
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        redirect_uris: [...options.redirectUris],
        post_logout_redirect_uris: [...(options.postLogoutRedirectUris ?? [])],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    jwks: { keys: [jwk] },
    cookies: { keys: [randomBytes(16).toString('hex')] },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
      groups: ['groups'],
    },
    conformIdTokenClaims: !(options.claimsInIdToken ?? false),
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      revocation: { enabled: true },
      userinfo: { enabled: true },
    },
    ttl: {
      AccessToken: options.accessTokenTtl ?? 120,
      AuthorizationCode: 60,
      IdToken: 3600,
      RefreshToken: 86_400,
      Interaction: 600,
      Session: 86_400,
      Grant: 86_400,
    },
    // Refresh tokens for the gateway's client without offline_access, rotated on every use.
    issueRefreshToken: async (_ctx: unknown, client: { grantTypeAllowed(t: string): boolean }) =>
      client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: () => true,
    async loadExistingGrant(ctx: GrantCtx) {
      const { oidc } = ctx;
      const id = oidc.result?.consent?.grantId ?? oidc.session.grantIdFor(oidc.client.clientId);
      if (id !== undefined) {
        const found = await oidc.provider.Grant.find(id);
        if (found !== undefined) return found;
      }
      // First-party client: consent is implied.
      const grant = new oidc.provider.Grant({
        accountId: oidc.session.accountId,
        clientId: oidc.client.clientId,
      });
      grant.addOIDCScope(oidc.params.scope ?? 'openid');
      grant.addOIDCClaims(['email', 'email_verified', 'name', 'preferred_username', 'groups']);
      await grant.save();
      return grant;
    },
    async findAccount(_ctx: unknown, id: string) {
      const user = users.get(id);
      if (user === undefined) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: user.email,
            email_verified: user.emailVerified ?? true,
            name: user.name,
            preferred_username: id,
            groups: [...user.groups],
          };
        },
      };
    },
  });
  const handler = provider.callback();
  const grants: Array<{ type: string; ok: boolean }> = [];
  provider.on('grant.success', (ctx) => {
    grants.push({
      type: String((ctx as { oidc: { params: { grant_type?: string } } }).oidc.params.grant_type),
      ok: true,
    });
  });
  provider.on('grant.error', (ctx) => {
    grants.push({
      type: String((ctx as { oidc?: { params?: { grant_type?: string } } }).oidc?.params?.grant_type),
      ok: false,
    });
  });
  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    requests.push({ method: req.method ?? 'GET', path: (req.url ?? '/').split('?')[0]! });
    handler(req, res);
  });

  const idp: TestIdp = {
    issuer,
    clientId,
    clientSecret,
    requests,
    grants,
    count(prefix) {
      return requests.filter((r) => r.path.startsWith(prefix)).length;
    },
    async revokeGrants(accountId) {
      let n = 0;
      for (const [id, e] of storeOf('Grant')) {
        if (e.payload.accountId !== accountId) continue;
        n++;
        for (const m of stores.values()) for (const [k, x] of m) if (x.payload.grantId === id) m.delete(k);
        storeOf('Grant').delete(id);
      }
      return n;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  t.after(() => idp.close());
  return idp;
}

/** The stand-in for the proxy in front of a LoginService (the service can be swapped, e.g. for rotation). */
export interface LoginApp {
  readonly port: number;
  service: LoginService | undefined;
  /** `http://<host>:<port>` */
  origin(host?: string): string;
  /** Paths the app saw, in order (all hosts). */
  readonly seen: string[];
  /**
   * When set and true for a request path, the app answers 200 `held` without acting on it and records the full
   * URL in `held` (an attacker who stops before the callback or hand-off and keeps the URL).
   */
  hold: ((path: string) => boolean) | undefined;
  readonly held: string[];
  close(): Promise<void>;
}

/** Starts the app on 127.0.0.1 port 0 (set `service` before sending requests); closed when the test ends. */
export async function startLoginApp(t: TestContext): Promise<LoginApp> {
  const seen: string[] = [];
  const app: LoginApp = {
    port: 0,
    service: undefined,
    hold: undefined,
    held: [],
    origin: (host = 'app.gatehouse.test') => `http://${host}:${app.port}`,
    seen,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  const server = http.createServer(async (req, res) => {
    try {
      const service = app.service;
      if (service === undefined) throw new Error('no LoginService set');
      const url = new URL(req.url ?? '/', 'http://x');
      seen.push(url.pathname);
      if (app.hold?.(url.pathname)) {
        app.held.push(`http://${req.headers.host}${req.url}`);
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('held');
        return;
      }
      const facts = {
        host: normalizeHost(req.headers.host),
        authority: req.headers.host ?? '',
        path: url.pathname,
        query: url.search,
        tls: false,
        clientIp: req.socket.remoteAddress ?? '',
      };
      if (facts.path.startsWith('/.gatehouse/')) {
        await service.handle(req, res, facts);
        return;
      }
      const auth = await service.authenticateSession(req.headers.cookie, facts);
      if (auth.kind === 'ok') {
        if (auth.setCookie !== undefined) appendSetCookie(res, auth.setCookie);
        if (facts.path.startsWith('/admin') && !auth.identity.groups.includes('admins')) {
          service.sendForbidden(req, res, {
            identity: auth.identity,
            reason: 'no-allow-rule',
            reasonText: 'no allow rule matches',
          });
          return;
        }
        const body = JSON.stringify({ path: facts.path + facts.query, identity: auth.identity });
        res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
        res.end(body);
        return;
      }
      const browser = /text\/html/.test(req.headers.accept ?? '') && req.method === 'GET';
      if (browser) {
        service.loginRedirect(req, res, facts);
        return;
      }
      service.sendUnauthorized(req, res, facts, {
        reason: auth.kind === 'invalid' ? auth.reason : 'user-unauthenticated',
        setCookie: auth.kind === 'invalid' ? auth.setCookie : undefined,
      });
    } catch (err) {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`test app error: ${err instanceof Error ? err.message : String(err)}`);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  (app as { port: number }).port = (server.address() as AddressInfo).port;
  t.after(() => app.close());
  return app;
}

/** What `fetchApp` returns. */
export interface AppResponse {
  status: number;
  location: string | undefined;
  setCookie: string[];
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/**
 * One request to the app with an optional Cookie header, redirects not followed. The test host names
 * resolve only inside the browser, so this connects to 127.0.0.1 and sends the Host header.
 */
export async function fetchApp(
  url: string,
  cookie: string | undefined,
  accept = 'text/html',
  init: { method?: string; headers?: Record<string, string> } = {},
): Promise<AppResponse> {
  const u = new URL(url);
  const headers: Record<string, string> = { accept, host: u.host, ...init.headers };
  if (cookie !== undefined) headers.cookie = cookie;
  const r = await request(`http://127.0.0.1:${u.port}${u.pathname}${u.search}`, {
    method: (init.method ?? 'GET') as 'GET',
    headers,
    headersTimeout: 15_000,
    bodyTimeout: 15_000,
  });
  const body = await r.body.text();
  const setCookie = r.headers['set-cookie'];
  return {
    status: r.statusCode,
    location: r.headers.location as string | undefined,
    setCookie: setCookie === undefined ? [] : Array.isArray(setCookie) ? setCookie : [setCookie],
    headers: r.headers,
    body,
  };
}

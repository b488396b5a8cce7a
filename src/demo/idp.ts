/**
 * The demo's own OpenID provider (`oidc-provider` on a loopback port), for development only: two people
 * who sign in with a password through a minimal form (alice in `data-eng`, bob in `analysts`), the
 * gateway as a confidential client (authorization code + PKCE, refresh tokens, RP-initiated logout),
 * and a machine client that gets short-lived JWT access tokens with the client-credentials grant
 * (RFC 6749 §4.4; JWT profile of RFC 9068), which the gateway verifies as bearer tokens.
 *
 * Everything lives in memory and dies with the process. Nothing outside `src/demo` uses this module.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair } from 'jose';
import { escapeHtml } from '../identity/pages.js';

/** A person who can sign in at the demo provider. */
export interface DemoUser {
  readonly id: string;
  readonly name: string;
  readonly email: string;
  readonly groups: readonly string[];
  /** Generated at start unless given. */
  readonly password: string;
}

/** Options of `startDemoIdp`. */
export interface DemoIdpOptions {
  /** Default 0 (any free port). */
  port?: number;
  /** Default 127.0.0.1; must be a loopback address (the gateway accepts `http:` issuers only there). */
  host?: string;
  /** Passwords of the demo users by id (default: random, printed by the demo). */
  passwords?: Readonly<Record<string, string>>;
}

/** The client the gateway signs people in with. */
export interface DemoGatewayClient {
  readonly clientId: string;
  readonly clientSecret: string;
}

/** The machine client: client-credentials tokens for the demo API. */
export interface DemoAgentClient {
  readonly clientId: string;
  readonly clientSecret: string;
  /** `aud` of its access tokens (the gateway's `identity.bearer[].audiences`). */
  readonly audience: string;
  /** Groups its tokens carry in the `groups` claim. */
  readonly groups: readonly string[];
  readonly tokenEndpoint: string;
}

/** A running demo provider. */
export interface DemoIdp {
  /** `http://127.0.0.1:<port>`: the issuer, also the discovery base. */
  readonly issuer: string;
  readonly users: readonly DemoUser[];
  readonly gatewayClient: DemoGatewayClient;
  readonly agentClient: DemoAgentClient;
  /**
   * Registers a gateway origin (`http://127.0.0.1:8080`): its `/.gatehouse/callback` becomes an allowed
   * redirect URI and its `/.gatehouse/signed-out` an allowed post-logout redirect URI.
   */
  allowGateway(origin: string): void;
  /** A client-credentials access token for the agent client, as the printed curl command gets one. */
  agentToken(): Promise<string>;
  close(): Promise<void>;
}

/** The demo's people. Passwords are generated at start unless `DemoIdpOptions.passwords` gives them. */
export const DEMO_USERS: ReadonlyArray<Omit<DemoUser, 'password'>> = Object.freeze([
  { id: 'alice', name: 'Alice Doe', email: 'alice@example.com', groups: ['data-eng'] },
  { id: 'bob', name: 'Bob Roe', email: 'bob@example.com', groups: ['analysts'] },
]);

/** Resource indicator (RFC 8707) of the demo API; the agent's tokens are always minted for it. */
const API_RESOURCE = 'urn:gatehouse:demo-api';
const API_AUDIENCE = 'gatehouse-demo-api';
const AGENT_GROUPS = Object.freeze(['agents']);
const MAX_FORM = 8 * 1024;

// oidc-provider ships no type declarations; these are the members the demo uses.
interface ProviderInstance {
  callback(): (req: IncomingMessage, res: ServerResponse) => void;
  interactionDetails(
    req: IncomingMessage,
    res: ServerResponse,
  ): Promise<{
    uid: string;
    prompt: { name: string };
    params: { client_id?: string; scope?: string };
    session?: { accountId?: string };
  }>;
  interactionFinished(
    req: IncomingMessage,
    res: ServerResponse,
    result: Record<string, unknown>,
    options?: { mergeWithLastSubmission?: boolean },
  ): Promise<void>;
  Grant: new (p: { accountId: string; clientId: string }) => GrantInstance;
}
interface GrantInstance {
  addOIDCScope(scope: string): void;
  addOIDCClaims(claims: string[]): void;
  save(): Promise<string>;
}
interface OidcProviderModule {
  Provider: new (issuer: string, config: Record<string, unknown>) => ProviderInstance;
  errors: { InvalidTarget: new (message?: string) => Error };
}
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

interface Stored {
  payload: Record<string, unknown>;
  expiresAt: number;
}

const SCOPE_CLAIMS = ['email', 'email_verified', 'name', 'preferred_username', 'groups'];

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

function samePassword(given: string, expected: string): boolean {
  // Compared as digests: constant time whatever the lengths.
  return timingSafeEqual(digest(given), digest(expected));
}

/** A readable random password (no look-alike characters). */
function newPassword(): string {
  const alphabet = 'abcdefghjkmnpqrstuvwxyz23456789';
  const bytes = randomBytes(12);
  let out = '';
  for (let i = 0; i < bytes.length; i++) {
    out += alphabet[bytes[i]! % alphabet.length];
    if (i === 3 || i === 7) out += '-';
  }
  return out;
}

const STYLE =
  'body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2433}' +
  'main{max-width:24rem;margin:12vh auto;padding:2rem;background:#fff;border-radius:8px;box-shadow:0 1px 4px #0002}' +
  'h1{font-size:1.3rem;margin:0 0 .25rem}label{display:block;margin:.75rem 0 .25rem}' +
  'input{width:100%;box-sizing:border-box;padding:.5rem;font:inherit;border:1px solid #c3c8d2;border-radius:6px}' +
  'button{margin-top:1rem;width:100%;padding:.6rem;font:inherit;border:0;border-radius:6px;background:#2456d6;color:#fff;cursor:pointer}' +
  '.muted{color:#5d6475;font-size:.9rem}.error{color:#b3261e}a{color:#2456d6}';

function page(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta name="robots" content="noindex"><title>${escapeHtml(title)}</title><style>${STYLE}</style></head><body><main>${body}</main></body></html>`;
}

function sendHtml(res: ServerResponse, status: number, html: string): void {
  const body = Buffer.from(html);
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'content-length': body.length,
    'cache-control': 'no-store',
    // No scripts, no framing. No form-action: the provider's redirect after the POST leaves this origin.
    'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
  });
  res.end(body);
}

function loginPage(uid: string, users: readonly DemoUser[], login = '', error?: string): string {
  const who = users.map((u) => `<code>${escapeHtml(u.id)}</code> (${escapeHtml(u.groups.join(', '))})`);
  return page(
    'Sign in: Gatehouse demo',
    `<h1>Gatehouse demo sign-in</h1><p class="muted">Development identity provider. Users: ${who.join(' and ')}; their passwords are printed where the demo runs.</p>` +
      (error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : '') +
      `<form method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">` +
      `<label for="login">User</label><input id="login" name="login" value="${escapeHtml(login)}" required autofocus>` +
      '<label for="password">Password</label><input id="password" name="password" type="password" required>' +
      '<button type="submit">Sign in</button></form>' +
      `<p class="muted"><a href="/interaction/${escapeHtml(uid)}/abort">Cancel</a></p>`,
  );
}

async function readForm(req: IncomingMessage): Promise<URLSearchParams | undefined> {
  const type = req.headers['content-type'] ?? '';
  if (!/^application\/x-www-form-urlencoded\b/i.test(type)) return undefined;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_FORM) return undefined;
    chunks.push(chunk as Buffer);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

/**
 * Loads the provider library without its "Unsupported runtime" console warning: on Node.js 20 it prints
 * that on import, and the demo states the runtime itself (`runtimeNote`) instead of a library's alarm.
 * Every other console warning passes through.
 */
async function withoutRuntimeWarning<T>(load: () => Promise<T>): Promise<T> {
  const warn = console.warn;
  console.warn = (...args: unknown[]) => {
    if (typeof args[0] === 'string' && args[0].includes('oidc-provider WARNING: Unsupported runtime')) return;
    warn.apply(console, args);
  };
  try {
    return await load();
  } finally {
    console.warn = warn;
  }
}

/** Starts the demo provider on a loopback port. */
export async function startDemoIdp(opts: DemoIdpOptions = {}): Promise<DemoIdp> {
  // A variable specifier: oidc-provider has no type declarations, and only the demo loads it.
  const moduleName = 'oidc-provider';
  const { Provider, errors } = await withoutRuntimeWarning(
    async () => (await import(moduleName)) as OidcProviderModule,
  );
  const host = opts.host ?? '127.0.0.1';
  const users: DemoUser[] = DEMO_USERS.map((u) => ({
    ...u,
    password: opts.passwords?.[u.id] ?? newPassword(),
  }));
  const byId = new Map(users.map((u) => [u.id, u]));
  const gatewayClient: DemoGatewayClient = {
    clientId: 'gatehouse-demo',
    clientSecret: randomBytes(24).toString('base64url'),
  };
  const redirectUris = new Set<string>();
  const postLogoutUris = new Set<string>();

  // In-memory storage. The gateway's client lives here (not in the static list) so that redirect URIs
  // can be added once the gateway knows its port.
  const stores = new Map<string, Map<string, Stored>>();
  const storeOf = (model: string): Map<string, Stored> => {
    let m = stores.get(model);
    if (m === undefined) {
      m = new Map();
      stores.set(model, m);
    }
    return m;
  };
  const live = (e: Stored | undefined) =>
    e !== undefined && e.expiresAt > Date.now() ? e.payload : undefined;
  const gatewayClientMetadata = () => ({
    client_id: gatewayClient.clientId,
    client_secret: gatewayClient.clientSecret,
    client_name: 'Gatehouse demo gateway',
    redirect_uris: [...redirectUris],
    post_logout_redirect_uris: [...postLogoutUris],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  });
  class Adapter {
    readonly #model: string;
    readonly #m: Map<string, Stored>;
    constructor(model: string) {
      this.#model = model;
      this.#m = storeOf(model);
    }
    async upsert(id: string, payload: Record<string, unknown>, expiresIn?: number) {
      this.#m.set(id, {
        payload,
        expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : Number.POSITIVE_INFINITY,
      });
    }
    async find(id: string) {
      if (this.#model === 'Client')
        return id === gatewayClient.clientId ? gatewayClientMetadata() : undefined;
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

  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const issuer = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
  const agentClient: DemoAgentClient = {
    clientId: 'demo-agent',
    clientSecret: randomBytes(24).toString('base64url'),
    audience: API_AUDIENCE,
    groups: AGENT_GROUPS,
    tokenEndpoint: `${issuer}/token`,
  };

  const rsa = await generateKeyPair('RS256', { extractable: true });
  const ec = await generateKeyPair('ES256', { extractable: true });
  const keys = [
    {
      ...(await exportJWK(rsa.privateKey)),
      kid: `rs-${randomBytes(4).toString('hex')}`,
      alg: 'RS256',
      use: 'sig',
    },
    {
      ...(await exportJWK(ec.privateKey)),
      kid: `es-${randomBytes(4).toString('hex')}`,
      alg: 'ES256',
      use: 'sig',
    },
  ];

  const provider = new Provider(issuer, {
    adapter: Adapter,
    clients: [
      {
        client_id: agentClient.clientId,
        client_secret: agentClient.clientSecret,
        client_name: 'Demo agent',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    jwks: { keys },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
      groups: ['groups'],
    },
    // Scope claims in the ID token too: the gateway then needs no userinfo request.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    interactions: { url: (_ctx: unknown, interaction: { uid: string }) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: async (ctx: { body: unknown }, form: string) => {
          ctx.body = page(
            'Sign out: Gatehouse demo',
            `<h1>Sign out of the demo provider?</h1>${form}<button type="submit" form="op.logoutForm" name="logout" value="yes" autofocus>Sign out</button>`,
          );
        },
        postLogoutSuccessSource: async (ctx: { body: unknown }) => {
          ctx.body = page('Signed out', '<h1>Signed out</h1><p>You are signed out of the demo provider.</p>');
        },
      },
      revocation: { enabled: true },
      userinfo: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Only the agent's tokens are for the API; the gateway's own access tokens stay opaque (userinfo).
        defaultResource: async (_ctx: unknown, client: { clientId: string }) =>
          client.clientId === agentClient.clientId ? API_RESOURCE : undefined,
        useGrantedResource: async () => false,
        getResourceServerInfo: async (_ctx: unknown, resource: string, client: { clientId: string }) => {
          if (resource !== API_RESOURCE || client.clientId !== agentClient.clientId) {
            throw new errors.InvalidTarget();
          }
          return {
            scope: 'api',
            audience: API_AUDIENCE,
            accessTokenFormat: 'jwt',
            accessTokenTTL: 3600,
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
    },
    extraTokenClaims: async (_ctx: unknown, token: { kind: string }) =>
      token.kind === 'ClientCredentials' ? { groups: [...AGENT_GROUPS] } : undefined,
    clientBasedCORS: () => false,
    renderError: async (ctx: { type: string; body: unknown }, out: Record<string, string>) => {
      ctx.type = 'html';
      ctx.body = page(
        'Error: Gatehouse demo',
        `<h1>Something went wrong</h1><p><code>${escapeHtml(out.error)}</code></p><p>${escapeHtml(out.error_description ?? '')}</p>`,
      );
    },
    ttl: {
      AccessToken: 600,
      AuthorizationCode: 60,
      ClientCredentials: 3600,
      IdToken: 3600,
      RefreshToken: 86_400,
      Interaction: 600,
      Session: 86_400,
      Grant: 86_400,
    },
    // The gateway is first-party: it gets refresh tokens without offline_access, rotated on use.
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
      grant.addOIDCClaims(SCOPE_CLAIMS);
      await grant.save();
      return grant;
    },
    async findAccount(_ctx: unknown, id: string) {
      const user = byId.get(id);
      if (user === undefined) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: user.email,
            email_verified: true,
            name: user.name,
            preferred_username: id,
            groups: [...user.groups],
          };
        },
      };
    },
  });

  const oidc = provider.callback();
  const interaction = async (req: IncomingMessage, res: ServerResponse, path: string): Promise<void> => {
    const [, , uid, action] = path.split('/');
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid) {
      sendHtml(
        res,
        400,
        page('Error', '<h1>This sign-in has expired</h1><p>Start again from the gateway.</p>'),
      );
      return;
    }
    if (action === 'abort') {
      const result = { error: 'access_denied', error_description: 'sign-in cancelled' };
      await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
      return;
    }
    if (details.prompt.name === 'consent') {
      // Normally answered by loadExistingGrant; kept for completeness.
      const accountId = details.session?.accountId ?? '';
      const grant = new provider.Grant({ accountId, clientId: details.params.client_id ?? '' });
      grant.addOIDCScope(details.params.scope ?? 'openid');
      grant.addOIDCClaims(SCOPE_CLAIMS);
      const grantId = await grant.save();
      await provider.interactionFinished(
        req,
        res,
        { consent: { grantId } },
        { mergeWithLastSubmission: true },
      );
      return;
    }
    if (action === undefined && req.method === 'GET') {
      sendHtml(res, 200, loginPage(details.uid, users));
      return;
    }
    if (action !== 'login' || req.method !== 'POST') {
      sendHtml(res, 404, page('Not found', '<h1>Not found</h1>'));
      return;
    }
    const form = await readForm(req);
    if (form === undefined) {
      sendHtml(res, 400, page('Error', '<h1>Bad request</h1><p>Send the sign-in form.</p>'));
      return;
    }
    const login = (form.get('login') ?? '').trim().toLowerCase();
    const user = byId.get(login);
    // Compare against a dummy for unknown users too, so both cases take the same path.
    const ok =
      samePassword(form.get('password') ?? '', user?.password ?? 'unknown-user') && user !== undefined;
    if (!ok) {
      sendHtml(res, 401, loginPage(details.uid, users, login, 'Unknown user or wrong password.'));
      return;
    }
    await provider.interactionFinished(
      req,
      res,
      { login: { accountId: user.id } },
      { mergeWithLastSubmission: false },
    );
  };

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (!path.startsWith('/interaction/')) {
      oidc(req, res);
      return;
    }
    interaction(req, res, path).catch((err: unknown) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      // An expired or foreign interaction (missing cookie) lands here: say so instead of a stack trace.
      const name = (err as { name?: string })?.name;
      const expired = name === 'SessionNotFound' || name === 'InvalidRequest';
      sendHtml(
        res,
        expired ? 400 : 500,
        page(
          'Error',
          expired
            ? '<h1>This sign-in has expired</h1><p>Start again from the gateway.</p>'
            : '<h1>Something went wrong</h1><p>The sign-in could not be completed.</p>',
        ),
      );
    });
  });

  let closing: Promise<void> | undefined;
  return {
    issuer,
    users,
    gatewayClient,
    agentClient,
    allowGateway(origin: string) {
      const base = origin.endsWith('/') ? origin.slice(0, -1) : origin;
      redirectUris.add(`${base}/.gatehouse/callback`);
      postLogoutUris.add(`${base}/.gatehouse/signed-out`);
    },
    async agentToken() {
      const basic = Buffer.from(
        `${encodeURIComponent(agentClient.clientId)}:${encodeURIComponent(agentClient.clientSecret)}`,
      ).toString('base64');
      const res = await fetch(agentClient.tokenEndpoint, {
        method: 'POST',
        headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
        body: 'grant_type=client_credentials',
        signal: AbortSignal.timeout(10_000),
      });
      const body = (await res.json()) as { access_token?: string; error?: string };
      if (!res.ok || typeof body.access_token !== 'string') {
        throw new Error(`demo provider refused the client-credentials grant: ${body.error ?? res.status}`);
      }
      return body.access_token;
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

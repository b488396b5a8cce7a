/**
 * Offline evaluation of one request description, shared by the config `tests:` runner and `explain`.
 * It takes the same steps as the gateway (normalize the path once, route, decide) without any network:
 * no identity provider, no upstream. The identity is described, not authenticated.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { isIP } from 'node:net';
import type { Config } from '../config/schema.js';
import {
  decisionFor,
  FROM_API_KEY_HEADER,
  FROM_AUTHORIZATION,
  FROM_CERTIFICATE,
  FROM_NOTHING,
  FROM_SESSION,
  limitedBy,
  type RequestDescription,
} from '../core/answer.js';
import { type CompiledConfig, compiledOf } from '../core/compile.js';
import { type Decision, loginProviders } from '../core/decide.js';
import { describeRequest } from '../core/describe.js';
import { MethodNotAllowedError, MethodOverrideError, routeRequest } from '../core/methods.js';
import type { CompiledRoute } from '../core/types.js';
import { GatehouseError } from '../errors.js';
import type { AuthMethod, AuthResult, Identity } from '../identity/types.js';
import { Limiter, type LimitVerdict } from '../limits/stage.js';
import { createLogger } from '../observe/log.js';
import { MemoryStore } from '../state/memory.js';
import type { CompiledPolicy, PolicyRequest } from './types.js';

/** A test or `explain` input that cannot describe a request (bad `as`, bad source address). */
export class TestInputError extends GatehouseError {
  constructor(message: string) {
    super('GH_TEST_INPUT', 400, message);
  }
}

/** A request refused before any access decision: 400 (bad path or host) or 404 (no route). */
export interface Rejection {
  readonly status: number;
  /** The error code, e.g. `GH_BAD_PATH`, `GH_NO_ROUTE`. */
  readonly reason: string;
  readonly message: string;
}

/** Routes and policies compiled once for a batch of offline evaluations (see core/compile.ts). */
export type OfflineContext = CompiledConfig;

/**
 * The offline context of a configuration: `compiled` as it is, or a `Config` compiled now. Throws
 * `PolicyConfigError` for invalid policies.
 */
export function offlineContext(compiled: Config | CompiledConfig): OfflineContext {
  return compiledOf(compiled);
}

/** One request as a test or `explain` describes it. */
export interface OfflineRequest {
  readonly method: string;
  readonly url: string;
  /** The identity (`as:` of a test, `--as` of explain); undefined for an anonymous request. */
  readonly as?: Readonly<Record<string, unknown>> | undefined;
  /** Request headers; without `accept`, the request is taken as a browser's (`text/html`). */
  readonly headers?: Readonly<Record<string, string>> | undefined;
  /** Client address (default 127.0.0.1). */
  readonly sourceIp?: string | undefined;
  readonly now: number;
  /**
   * Requests of the same caller sent at the same instant before this one (default 0): the route's rate
   * limit and quotas count them, in a store of their own, so a test can state `expect: 429 after: N`.
   */
  readonly after?: number | undefined;
}

/** What the gateway would do with an `OfflineRequest`, with every intermediate step. */
export interface OfflineResult {
  /** The path as sent, without the query. */
  readonly rawPath: string;
  /** The normalized path, when normalization succeeded. */
  readonly path: string | undefined;
  /** The method decided on: the request's, or an accepted method override (`routes[].methodOverride`). */
  readonly method: string;
  readonly route: CompiledRoute | undefined;
  readonly policy: CompiledPolicy | undefined;
  readonly identity: Identity | undefined;
  readonly request: PolicyRequest | undefined;
  readonly loginProviders: readonly string[];
  readonly outcome: Decision | Rejection;
  /** The limit stage's verdict on an allowed request of a route with limits. */
  readonly limit?: LimitVerdict | undefined;
}

const AUTH_METHODS: readonly AuthMethod[] = ['session', 'bearer', 'apiKey', 'mtls'];
/** Where the gateway would have read a credential of each kind (a WebSocket's Origin check depends on it). */
const SOURCE_OF: Readonly<Record<AuthMethod, number>> = {
  session: FROM_SESSION,
  bearer: FROM_AUTHORIZATION,
  apiKey: FROM_API_KEY_HEADER,
  mtls: FROM_CERTIFICATE,
};
const IDENTITY_KEYS = new Set([
  'email',
  'groups',
  'user',
  'subject',
  'sub',
  'claims',
  'authMethod',
  'source',
]);
// The target as a client sends it: WHATWG URL parsing would already resolve `..` and `%2e%2e`.
const RAW_TARGET = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*([^#]*)/i;

/**
 * Builds the identity a test or `explain` describes: `email`, `groups` (a name or a list), `user`,
 * `subject` (or `sub`), `claims` (an object), `authMethod` (default `session`), `source` (default
 * `test`); any other key is a top-level claim (the shape `gatehouse explain --as` produces). The
 * subject defaults to the user, then the email; the user to the subject. Throws `TestInputError`.
 */
export function identityFromSpec(as: Readonly<Record<string, unknown>>): Identity {
  const text = (key: string): string | undefined => {
    const v = as[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || v === '') throw new TestInputError(`as.${key}: must be a non-empty string`);
    return v;
  };
  const email = text('email');
  const userName = text('user');
  const subject = text('subject') ?? text('sub') ?? userName ?? email ?? 'test-user';
  const source = text('source') ?? 'test';
  const rawGroups = as.groups;
  let groups: string[];
  if (rawGroups === undefined) groups = [];
  else if (typeof rawGroups === 'string') groups = [rawGroups];
  else if (Array.isArray(rawGroups) && rawGroups.every((g) => typeof g === 'string')) groups = rawGroups;
  else throw new TestInputError('as.groups: must be a group name or a list of group names');
  const method = text('authMethod') ?? 'session';
  if (!(AUTH_METHODS as readonly string[]).includes(method)) {
    throw new TestInputError(`as.authMethod: must be one of ${AUTH_METHODS.join(', ')}`);
  }
  const extra = as.claims;
  if (extra !== undefined && (extra === null || typeof extra !== 'object' || Array.isArray(extra))) {
    throw new TestInputError('as.claims: must be a map of claim names to values');
  }
  const claims: Record<string, unknown> = { sub: subject, groups };
  if (email !== undefined) claims.email = email;
  if (userName !== undefined) claims.preferred_username = userName;
  for (const [key, value] of Object.entries(as)) if (!IDENTITY_KEYS.has(key)) claims[key] = value;
  if (extra !== undefined) Object.assign(claims, extra);
  return Object.freeze({
    subject,
    user: userName ?? subject,
    email,
    groups: Object.freeze([...groups]),
    claims: Object.freeze(claims),
    authMethod: method as AuthMethod,
    source,
    expiresAt: undefined,
  });
}

const silent = createLogger('silent');

/**
 * The limit stage on `after` earlier requests of the same caller and then this one, all at `now`, in a
 * memory store of their own: what the gateway answers the request after such a burst.
 */
function simulateLimits(
  ctx: OfflineContext,
  route: CompiledRoute,
  facts: RequestDescription,
  identity: Identity | undefined,
  after: number,
  now: number,
): LimitVerdict | undefined {
  if (ctx.limits.forRoute(route.name) === undefined) return undefined;
  const store = new MemoryStore({ sweepInterval: 0, now: () => now });
  const limiter = new Limiter(ctx.limits, store, silent, { hold: false, metrics: false });
  let verdict: LimitVerdict | undefined;
  for (let i = 0; i <= after; i++) {
    // Synchronous: a memory store, and delayed requests are not held.
    verdict = limiter.check(route.name, facts, identity, now) as LimitVerdict | undefined;
  }
  void store.close();
  return verdict;
}

function rejection(err: unknown): Rejection {
  if (err instanceof GatehouseError) return { status: err.status, reason: err.code, message: err.message };
  return { status: 400, reason: 'GH_BAD_REQUEST', message: (err as Error)?.message ?? String(err) };
}

/**
 * Evaluates one request description as the gateway would: normalize, route, build the identity, decide.
 * Throws `TestInputError` for an unusable `as` or `sourceIp`; every outcome of the request itself
 * (400, 404, a decision) is returned.
 */
export function evaluateOffline(ctx: OfflineContext, req: OfflineRequest): OfflineResult {
  const method = req.method.toUpperCase();
  const clientIp = req.sourceIp ?? '127.0.0.1';
  if (isIP(clientIp) === 0) throw new TestInputError(`sourceIp: "${clientIp}" is not an IP address`);
  const identity = req.as === undefined ? undefined : identityFromSpec(req.as);
  const raw = (RAW_TARGET.exec(req.url)?.[1] ?? '') || '/';
  const target = raw.startsWith('/') ? raw : `/${raw}`;
  const q = target.indexOf('?');
  const rawPath = q === -1 ? target : target.slice(0, q);
  const empty = {
    rawPath,
    method,
    path: undefined,
    route: undefined,
    policy: undefined,
    identity,
    request: undefined,
    loginProviders: [],
  };

  const headers: IncomingHttpHeaders = {};
  for (const [name, value] of Object.entries(req.headers ?? {})) headers[name.toLowerCase()] = value;
  // Described requests come from a browser unless they say otherwise with their own Accept header.
  headers.accept ??= 'text/html';
  const tls = req.url.toLowerCase().startsWith('https:');
  let facts: RequestDescription;
  try {
    const authority = URL.canParse(req.url) ? new URL(req.url).host : '';
    headers.host = authority;
    const upgrade = headers.upgrade;
    facts = describeRequest(
      {
        method,
        target,
        host: authority,
        headers,
        clientIp,
        tls,
        listener: '',
        upgrade: typeof upgrade === 'string' && upgrade.toLowerCase() === 'websocket',
      },
      ctx.config.server.pathParameters,
    );
  } catch (err) {
    return { ...empty, outcome: rejection(err) };
  }
  const { host, path } = facts;
  // The gateway's own routing, with its method rules (override, TRACE and CONNECT refused).
  let route: CompiledRoute;
  try {
    route = routeRequest(ctx.routes, facts);
  } catch (err) {
    // A refused method (405, 400) names the route it was refused on, with that route's policy.
    const refusedOn =
      err instanceof MethodNotAllowedError || err instanceof MethodOverrideError ? err.route : undefined;
    let policy: CompiledPolicy | undefined;
    try {
      if (refusedOn !== undefined && !refusedOn.config.public)
        policy = ctx.policies.forRoute(refusedOn.config);
    } catch {
      policy = undefined;
    }
    return { ...empty, method: facts.method, path, route: refusedOn, policy, outcome: rejection(err) };
  }
  const request: PolicyRequest = { method: facts.method, host, path, clientIp, now: req.now };
  const providers = loginProviders(ctx.config, route.config);
  const auth: AuthResult = identity === undefined ? { kind: 'none' } : { kind: 'ok', identity };
  let policy: CompiledPolicy | undefined;
  let outcome: Decision | Rejection;
  try {
    policy = route.config.public ? undefined : ctx.policies.forRoute(route.config);
    const source = identity === undefined ? FROM_NOTHING : SOURCE_OF[identity.authMethod];
    outcome = decisionFor(ctx.policies, providers.length > 0, facts, route, auth, source, req.now);
  } catch (err) {
    outcome = rejection(err);
  }
  let limit: LimitVerdict | undefined;
  if ('outcome' in outcome && outcome.outcome === 'allow') {
    limit = simulateLimits(ctx, route, facts, outcome.identity, req.after ?? 0, req.now);
    if (limit !== undefined) outcome = limitedBy(outcome, limit);
  }
  return {
    limit,
    rawPath,
    method: facts.method,
    path,
    route,
    policy,
    identity,
    request,
    loginProviders: providers,
    outcome,
  };
}

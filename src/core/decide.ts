/**
 * The decision core: given a matched route, the authentication result and the normalized request, it
 * answers allow, login, unauthenticated or forbidden, always with a reason code. It is pure (no I/O, no
 * clock of its own) so the built-in proxy, the HAProxy agent and the forward-auth endpoint share it, and
 * `gatehouse check`/`explain` predict exactly what the gateway does.
 *
 *   public route ............................................. allow  200 public-route
 *   credential presented but not acceptable
 *     session expired/invalid, HTML navigation, login offered  login  302 session-expired | session-invalid
 *     valid API key used outside its routes ................... forbidden 403 api-key-out-of-scope
 *     session or certificate on a WebSocket from another Origin  forbidden 403 origin-not-allowed
 *     anything else (bearer, API key, certificate, session) ... unauthenticated 401 token-expired, ...
 *   no credential
 *     a deny rule that needs no identity matches ............. forbidden 403 policy-deny:<rule>
 *     HTML navigation and a login provider for the route ...... login  302 user-unauthenticated
 *     otherwise ............................................... unauthenticated 401 user-unauthenticated
 *   identity
 *     route without policy .................................... allow  200 authenticated
 *     deny rule matches ....................................... forbidden 403 policy-deny:<rule>
 *     allow rule matches ...................................... allow  200 policy-allow:<rule>
 *     nothing matches ......................................... forbidden 403 no-allow-rule
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Config, RouteConfig } from '../config/schema.js';
import type { AuthResult, Identity, ReasonCode } from '../identity/types.js';
import type { PolicyRequest, PolicySet } from '../policy/types.js';
import type { CompiledRoute } from './types.js';

/** Everything one access decision is taken on. */
export interface DecisionInput {
  readonly route: CompiledRoute;
  /** The authenticators' verdict: `none` (no credential), `ok` or `invalid` (fails closed). */
  readonly auth: AuthResult;
  readonly request: PolicyRequest;
  /** An HTML navigation (see `isBrowserNavigation`): may be redirected to login. */
  readonly browser: boolean;
  /** An OIDC provider applies to this route (see `loginProviders`). */
  readonly loginAvailable: boolean;
}

/** The answer of the decision core. */
export interface Decision {
  readonly outcome: 'allow' | 'login' | 'unauthenticated' | 'forbidden' | 'limited';
  /** 200 allow, 302 login, 401 unauthenticated, 403 forbidden, 429 limited (the limit stage). */
  readonly status: number;
  readonly reason: ReasonCode;
  /** The policy rule that decided, if one did. */
  readonly rule: string | undefined;
  /** The verified identity, when one was presented (also on public routes and on 403). */
  readonly identity: Identity | undefined;
}

const PUBLIC_ANONYMOUS: Decision = Object.freeze({
  outcome: 'allow',
  status: 200,
  reason: 'public-route',
  rule: undefined,
  identity: undefined,
});
const LOGIN: Decision = Object.freeze({
  outcome: 'login',
  status: 302,
  reason: 'user-unauthenticated',
  rule: undefined,
  identity: undefined,
});
const UNAUTHENTICATED: Decision = Object.freeze({
  outcome: 'unauthenticated',
  status: 401,
  reason: 'user-unauthenticated',
  rule: undefined,
  identity: undefined,
});

/**
 * The HTTP status a reason code maps to: 200 for allowing reasons, 403 for policy refusals and an API
 * key used outside its scope (the caller is known, just not allowed), 401 for everything else. A login
 * redirect (302) is chosen by `decideAccess`, not by the reason.
 */
export function statusForReason(reason: ReasonCode): number {
  switch (reason) {
    case 'public-route':
    case 'authenticated':
      return 200;
    case 'no-allow-rule':
    case 'api-key-out-of-scope':
    case 'origin-not-allowed':
      return 403;
    default:
      if (reason.startsWith('policy-allow:')) return 200;
      if (reason.startsWith('policy-deny:')) return 403;
      return 401;
  }
}

/**
 * True for a top-level HTML navigation, the only kind of request that is redirected to login: GET or
 * HEAD, Accept includes text/html, and not an XHR/fetch (`X-Requested-With`, `Sec-Fetch-Mode` other
 * than navigate), which get 401 instead so scripts see a status rather than a login page.
 */
export function isBrowserNavigation(method: string, headers: IncomingHttpHeaders): boolean {
  if (method !== 'GET' && method !== 'HEAD') return false;
  const accept = headers.accept;
  if (accept === undefined || !/text\/html/i.test(accept)) return false;
  const xrw = headers['x-requested-with'];
  if (typeof xrw === 'string' && xrw.toLowerCase() === 'xmlhttprequest') return false;
  const mode = headers['sec-fetch-mode'];
  return mode === undefined || mode === 'navigate';
}

/** Names of the OIDC providers offered on a route: the route's `providers`, else every provider. */
export function loginProviders(config: Config, route: RouteConfig): string[] {
  const all = config.identity?.providers ?? [];
  const allowed = route.providers;
  return all.filter((p) => allowed === undefined || allowed.includes(p.name)).map((p) => p.name);
}

function decision(
  outcome: Decision['outcome'],
  status: number,
  reason: ReasonCode,
  rule: string | undefined,
  identity: Identity | undefined,
): Decision {
  return { outcome, status, reason, rule, identity };
}

/**
 * Decides access for one request. On a public route a credential is not required; a valid one is
 * attached to the decision (for headers and the audit log) and an invalid one is ignored, as a public
 * page must not break because of a stale cookie or token. On protected routes every request needs a
 * verified identity (an allow rule never admits an anonymous caller), while deny rules that look only
 * at the request (sourceIp, methods, paths, time) refuse anonymous callers with 403 before any login.
 * Throws `PolicyUnavailableError` (403) when the route names a policy the set does not know.
 */
export function decideAccess(input: DecisionInput, policies: PolicySet): Decision {
  const { route, auth } = input;
  const rc = route.config;
  if (rc.public) {
    if (auth.kind === 'ok') return decision('allow', 200, 'public-route', undefined, auth.identity);
    return PUBLIC_ANONYMOUS;
  }
  if (auth.kind === 'invalid') {
    const reason = auth.reason;
    const status = statusForReason(reason);
    if (status === 403) return decision('forbidden', 403, reason, undefined, undefined);
    // A browser whose session ended signs in again; a bad bearer token, key or certificate never redirects.
    if (
      (reason === 'session-expired' || reason === 'session-invalid') &&
      input.browser &&
      input.loginAvailable
    ) {
      return decision('login', 302, reason, undefined, undefined);
    }
    // Fail closed even if an authenticator reported an allowing reason with an invalid credential.
    return decision(
      'unauthenticated',
      401,
      status === 401 ? reason : 'user-unauthenticated',
      undefined,
      undefined,
    );
  }
  const policy = policies.forRoute(rc);
  if (auth.kind === 'none') {
    if (policy !== undefined) {
      const r = policy.evaluate(undefined, input.request);
      if (!r.allow && r.rule !== undefined) return decision('forbidden', 403, r.reason, r.rule, undefined);
    }
    return input.browser && input.loginAvailable ? LOGIN : UNAUTHENTICATED;
  }
  const identity = auth.identity;
  if (policy === undefined) return decision('allow', 200, 'authenticated', undefined, identity);
  const r = policy.evaluate(identity, input.request);
  return r.allow
    ? decision('allow', 200, r.reason, r.rule, identity)
    : decision('forbidden', 403, r.reason, r.rule, identity);
}

const REASON_TEXT: Readonly<Record<string, string>> = {
  'public-route': 'public route',
  authenticated: 'signed in; the route has no policy',
  'user-unauthenticated': 'sign-in required',
  'no-allow-rule': 'no allow rule matches',
  'token-expired': 'the bearer token has expired',
  'token-not-yet-valid': 'the bearer token is not valid yet',
  'token-invalid': 'the bearer token is not valid',
  'token-wrong-audience': 'the bearer token is meant for another audience',
  'token-wrong-issuer': 'the bearer token has an unexpected issuer',
  'token-unknown-issuer': 'the bearer token comes from an issuer that is not trusted',
  'jwks-unavailable': "the token issuer's keys could not be fetched",
  'api-key-invalid': 'the API key is not valid',
  'api-key-expired': 'the API key has expired',
  'api-key-out-of-scope': 'the API key may not be used on this route',
  'session-expired': 'the session has expired',
  'session-invalid': 'the session is not valid',
  'certificate-invalid': 'the client certificate is not accepted',
  'origin-not-allowed': 'this origin may not open a WebSocket with these credentials',
};

/** A short human sentence for a reason code, e.g. `denied by rule data-eng.deny[0]`. */
export function describeReason(reason: ReasonCode): string {
  const text = REASON_TEXT[reason];
  if (text !== undefined) return text;
  if (reason.startsWith('policy-deny:')) return `denied by rule ${reason.slice('policy-deny:'.length)}`;
  if (reason.startsWith('policy-allow:')) return `allowed by rule ${reason.slice('policy-allow:'.length)}`;
  if (reason.startsWith('rate-limited:'))
    return `over the rate limit of route ${reason.slice('rate-limited:'.length)}`;
  if (reason.startsWith('quota-exceeded:'))
    return `quota ${reason.slice('quota-exceeded:'.length)} is used up for this window`;
  return reason;
}

/** The name an identity is shown by: its email, else its user name. */
export function identityLabel(identity: Identity): string {
  return identity.email ?? identity.user;
}

/**
 * Short human text for a decision, e.g. `allow (public route)`, `allow (rule data-eng.allow[0]) for
 * alice@example.com`, `login (302): sign-in required`, `forbidden (403) for bob@example.com: no allow
 * rule matches`.
 */
export function describeDecision(d: Decision): string {
  const who = d.identity === undefined ? '' : ` for ${identityLabel(d.identity)}`;
  switch (d.outcome) {
    case 'allow': {
      const why = d.rule !== undefined ? `rule ${d.rule}` : describeReason(d.reason);
      return `allow (${why})${who}`;
    }
    case 'login':
      return `login (${d.status}): ${describeReason(d.reason)}, redirect to the login page`;
    default:
      return `${d.outcome} (${d.status})${who}: ${describeReason(d.reason)}`;
  }
}

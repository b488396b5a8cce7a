/**
 * The `gatehouse-check` message of the SPOE contract (shared/DESIGN.md), answered through the decision
 * core: the arguments HAProxy sends become a request description, `answerRequest()` decides, and the
 * verdict becomes `set-var` actions in the `txn.gatehouse` scope (HAProxy adds its `option var-prefix`).
 *
 *   arguments  method, url (path and query as received), host, src, headers (req.hdrs_bin), tls (ssl_fc)
 *   variables  status     200 allow, 302 sign in, 400, 401, 403, 404, 405, 429, 500, 503
 *              reason     the reason code (`policy-allow:…`, `token-expired`, `rate-limited:<route>`,
 *                         `quota-exceeded:<quota>`) or error code (`GH_NO_ROUTE`)
 *              route      the route's name, when one matched
 *              location   for 302: `/.gatehouse/login?rd=…` on the request's own host
 *              www_authenticate  for 401
 *              allow      for 405
 *              retry_after  for 429: seconds until a retry may succeed (`Retry-After`)
 *              ratelimit, ratelimit_policy   the `RateLimit` and `RateLimit-Policy` header values, on
 *                         every answer of a limited route (allowed or 429), for the client's response
 *              user, email, groups   for allowed requests with an identity on routes with identityHeaders
 *              assertion  the signed identity assertion, for allowed requests with an identity
 *              drop_authorization, drop_api_key   1 when that header carried the gateway's credential and
 *                         the upstream must not receive it (unless the route sets passCredentials)
 *              cookie     the Cookie header without the gateway's own cookies, when it had some ('' = none left)
 *              set_cookie a Set-Cookie for the client (a session cookie re-sealed or cleared)
 *              cors_origin, cors_credentials   the CORS answer for an allowed Origin
 *
 * Fails closed: a message with missing or mistyped arguments answers status 400, never an allow.
 * A rate limit with `delay` holds its answer up to that long: keep it below the SPOE file's `timeout
 * processing`, past which HAProxy has no decision and refuses the request.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { DecisionRuntime } from '../core/answer.js';
import {
  type Answer,
  DROP_API_KEY,
  DROP_AUTHORIZATION,
  DROP_COOKIE,
  identityHeaderPairs,
} from '../core/answer.js';
import { isWebSocketHandshake } from '../core/describe.js';
import type { PathParameters } from '../core/normalize.js';
import { answerRequest, type Verdict } from '../core/verdict.js';
import { decodeHeaderBlock, type SpopAction, type SpopMessage, type SpopValue, utf8String } from './codec.js';

/** The message name of the contract. */
export const CHECK_MESSAGE = 'gatehouse-check';

/** What the check needs of the running configuration (a `Runtime` fits). */
export interface CheckRuntime extends DecisionRuntime {
  readonly config: { readonly server: { readonly pathParameters: PathParameters } };
}

/** A SPOP STRING; its `value` holds the bytes as latin1 characters, as HTTP header bytes are held. */
function str(value: string): SpopValue {
  return { type: 'string', value };
}

function setVar(name: string, value: SpopValue): SpopAction {
  return { type: 'set-var', scope: 'transaction', name, value };
}

function int(value: number): SpopValue {
  return { type: 'int32', value };
}

/** Header names whose repetition would make the request mean two things: refused (400). */
const SINGLE = new Set(['host', 'authorization', 'content-length']);

/**
 * `req.hdrs_bin` as Node presents request headers: lower-case names, Cookie lines joined with `; `,
 * other repeated fields joined with `, `. Undefined (400) for a repeated Host, Authorization or API key
 * header: which one decided would be a guess.
 */
function headersOf(block: Buffer, apiKeyHeader: string): IncomingHttpHeaders | undefined {
  const out: IncomingHttpHeaders = {};
  for (const [rawName, value] of decodeHeaderBlock(block)) {
    const name = rawName.toLowerCase();
    const prev = out[name];
    if (prev === undefined) {
      out[name] = value;
      continue;
    }
    if (SINGLE.has(name) || name === apiKeyHeader) return undefined;
    out[name] = `${prev as string}${name === 'cookie' ? '; ' : ', '}${value}`;
  }
  return out;
}

interface CheckArgs {
  id: string | undefined;
  method: string;
  url: string;
  host: string | undefined;
  src: string;
  headers: Buffer | undefined;
  tls: boolean;
}

function argsOf(message: SpopMessage): CheckArgs | undefined {
  let method: string | undefined;
  let url: string | undefined;
  let host: string | undefined;
  let src: string | undefined;
  let headers: Buffer | undefined;
  let tls = false;
  let id: string | undefined;
  for (const { name, value } of message.args) {
    switch (name) {
      case 'id':
        // HAProxy's `unique-id`, when the SPOE file sends it: the access log's request id.
        if (value.type === 'string') id = value.value;
        break;
      case 'method':
        if (value.type !== 'string') return undefined;
        method = value.value;
        break;
      case 'url':
        if (value.type !== 'string') return undefined;
        url = value.value;
        break;
      case 'host':
        // An absent Host header is sent as NULL (or not at all).
        if (value.type === 'string') host = value.value;
        else if (value.type !== 'null') return undefined;
        break;
      case 'src':
        if (value.type === 'ipv4' || value.type === 'ipv6') src = value.value;
        else if (value.type === 'string') src = value.value;
        else return undefined;
        break;
      case 'headers':
        if (value.type === 'binary') headers = value.value;
        else if (value.type !== 'null') return undefined;
        break;
      case 'tls':
        if (value.type === 'bool') tls = value.value;
        else if (value.type !== 'null') return undefined;
        break;
      default:
        // Arguments the contract does not name are ignored (a newer HAProxy config may send more).
        break;
    }
  }
  if (method === undefined || url === undefined || src === undefined) return undefined;
  return { id, method, url, host, src, headers, tls };
}

const BAD_MESSAGE: readonly SpopAction[] = Object.freeze([
  setVar('status', int(400)),
  setVar('reason', str('GH_BAD_SPOE_MESSAGE')),
]);
const BAD_HEADERS: readonly SpopAction[] = Object.freeze([
  setVar('status', int(400)),
  setVar('reason', str('GH_AMBIGUOUS_HEADERS')),
]);

/** The answer to one message: its actions, and for the log and metrics what was decided. */
export interface CheckOutcome {
  readonly actions: SpopAction[];
  /** The verdict, when the message could be read. */
  readonly verdict: Verdict | undefined;
  /** The reason when there is no verdict (`GH_BAD_SPOE_MESSAGE`, `GH_AMBIGUOUS_HEADERS`). */
  readonly reason: string;
  readonly requestId: string | undefined;
  readonly clientIp: string | undefined;
}

/**
 * Answers one `gatehouse-check` message. Synchronous whenever the decision is (a cached token, an API
 * key, an anonymous request); a promise only when a credential needs I/O. Never throws.
 */
export function checkMessage(
  rt: CheckRuntime,
  message: SpopMessage,
  now: number = Date.now(),
): CheckOutcome | Promise<CheckOutcome> {
  const args = argsOf(message);
  if (args === undefined) {
    return {
      actions: BAD_MESSAGE as SpopAction[],
      verdict: undefined,
      reason: 'GH_BAD_SPOE_MESSAGE',
      requestId: undefined,
      clientIp: undefined,
    };
  }
  let headers: IncomingHttpHeaders;
  try {
    headers =
      args.headers === undefined ? {} : (headersOf(args.headers, rt.identity.apiKeyHeader) ?? AMBIGUOUS);
  } catch {
    headers = AMBIGUOUS;
  }
  if (headers === AMBIGUOUS) {
    return {
      actions: BAD_HEADERS as SpopAction[],
      verdict: undefined,
      reason: 'GH_AMBIGUOUS_HEADERS',
      requestId: args.id,
      clientIp: args.src,
    };
  }
  const v = answerRequest(
    rt,
    {
      method: args.method,
      target: args.url,
      host: args.host ?? (headers.host as string | undefined),
      headers,
      clientIp: args.src,
      tls: args.tls,
      listener: 'spoe',
      upgrade: isWebSocketHandshake(args.method, headers),
    },
    rt.config.server.pathParameters,
    now,
  );
  if (v instanceof Promise) return v.then((x) => outcomeOf(x, args));
  return outcomeOf(v, args);
}

const AMBIGUOUS: IncomingHttpHeaders = Object.freeze({}) as IncomingHttpHeaders;

function outcomeOf(v: Verdict, args: CheckArgs): CheckOutcome {
  return { actions: actionsOf(v), verdict: v, reason: v.reason, requestId: args.id, clientIp: args.src };
}

/** The `set-var` actions of a verdict. */
export function actionsOf(v: Verdict): SpopAction[] {
  const out: SpopAction[] = [setVar('status', int(v.status)), setVar('reason', utf8String(v.reason))];
  const a = v.answer;
  if (a !== undefined) out.push(setVar('route', utf8String(a.route.name)));
  const r = v.refusal;
  if (r?.location !== undefined) out.push(setVar('location', str(r.location)));
  if (r?.wwwAuthenticate !== undefined) out.push(setVar('www_authenticate', str(r.wwwAuthenticate)));
  if (r?.retryAfter !== undefined) out.push(setVar('retry_after', int(r.retryAfter)));
  if (v.allow !== undefined) out.push(setVar('allow', str(v.allow)));
  if (a !== undefined) answerActions(a, v.status === 200, out);
  return out;
}

function answerActions(a: Answer, allowed: boolean, out: SpopAction[]): void {
  const identity = a.decision.identity;
  if (allowed && a.assertion !== undefined && identity !== undefined) {
    if (a.identityHeaders) {
      const pairs = identityHeaderPairs(identity);
      for (let i = 0; i < pairs.length; i += 2) {
        // x-gatehouse-user → user; the values are already header-safe ASCII.
        out.push(setVar(pairs[i]!.slice('x-gatehouse-'.length), str(pairs[i + 1]!)));
      }
    }
    out.push(setVar('assertion', str(a.assertion)));
  }
  if ((a.drop & DROP_AUTHORIZATION) !== 0) out.push(setVar('drop_authorization', int(1)));
  if ((a.drop & DROP_API_KEY) !== 0) out.push(setVar('drop_api_key', int(1)));
  if ((a.drop & DROP_COOKIE) !== 0) out.push(setVar('cookie', str(a.cookie ?? '')));
  const extra = a.responseHeaders;
  if (extra !== undefined) {
    for (let i = 0; i < extra.length; i += 2) {
      const name = extra[i]!;
      const value = extra[i + 1]!;
      if (name === 'set-cookie') out.push(setVar('set_cookie', str(value)));
      else if (name === 'access-control-allow-origin') out.push(setVar('cors_origin', str(value)));
      else if (name === 'access-control-allow-credentials') out.push(setVar('cors_credentials', str(value)));
      else if (name === 'ratelimit') out.push(setVar('ratelimit', str(value)));
      else if (name === 'ratelimit-policy') out.push(setVar('ratelimit_policy', str(value)));
      // `retry-after` is `retry_after` above, from the refusal.
    }
  }
}

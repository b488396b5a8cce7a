/**
 * The whole verdict on a request for the data planes that decide but do not forward (the HAProxy SPOE
 * agent, the forward-auth endpoint): describe, route, `answer()`, and every failure on the way turned
 * into a status with a reason, so that nothing a client sends can end anywhere but in an answer.
 *
 *   target or host that cannot be normalized ... 400 GH_BAD_PATH / GH_BAD_HOST
 *   `/.gatehouse/*` ............................. 404 reserved: the gateway's own endpoints serve these
 *                                                 paths; a data plane must send them there, never upstream
 *   no route .................................... 404 GH_NO_ROUTE
 *   TRACE/CONNECT, a refused method override .... 405 GH_METHOD_NOT_ALLOWED / 400 GH_BAD_METHOD_OVERRIDE
 *   a WebSocket upgrade on a route without it ... 403 GH_WEBSOCKET_NOT_ALLOWED
 *   the answer .................................. 200 allow, 302 login, 401, 403, 429 over a rate limit
 *                                                 or quota (see core/answer.ts, limits/stage.ts)
 *   a state store that cannot answer ............ 503 GH_STATE_UNAVAILABLE
 *   anything else that throws ................... 500 GH_INTERNAL (fails closed)
 */
import { GatehouseError, WebSocketNotAllowedError } from '../errors.js';
import { GATEHOUSE_PREFIX } from '../identity/login.js';
import type { RequestDescription } from './answer.js';
import { type Answer, answer, type DecisionRuntime, type Refusal, refusalOf } from './answer.js';
import { describeRequest, type RawRequest } from './describe.js';
import { routeRequest } from './methods.js';
import type { PathParameters } from './normalize.js';

/** A verdict: allowed (with its answer), refused (with what to render), or a request error. */
export interface Verdict {
  /** 200 allow, 302 sign in, 400, 401, 403, 404, 405, 429, 500, 503. */
  readonly status: number;
  /** A reason code (`policy-allow:…`, `token-expired`, …) or an error code (`GH_NO_ROUTE`, …). */
  readonly reason: string;
  /** The description, when the request could be described. */
  readonly desc: RequestDescription | undefined;
  /** The answer, when the request reached the decision (allowed or refused by it). */
  readonly answer: Answer | undefined;
  /** What to render for a refusal by the decision (302, 401, 403, 429 with `retryAfter`). */
  readonly refusal: Refusal | undefined;
  /** `Allow` for a 405. */
  readonly allow: string | undefined;
  /** `/.gatehouse/*`: served by the gateway's own endpoints, not decided (status 404: fails closed). */
  readonly reserved: boolean;
}

function failed(err: unknown, desc: RequestDescription | undefined): Verdict {
  const e =
    err instanceof GatehouseError
      ? err
      : new GatehouseError('GH_INTERNAL', 500, 'internal error', { cause: err });
  const allow = (e as { allow?: unknown }).allow;
  return {
    status: e.status,
    reason: e.code,
    desc,
    answer: undefined,
    refusal: undefined,
    allow: typeof allow === 'string' ? allow : undefined,
    reserved: false,
  };
}

function verdictOf(a: Answer, desc: RequestDescription): Verdict {
  const refusal = refusalOf(a, desc);
  return {
    status: refusal === undefined ? 200 : refusal.status,
    reason: a.decision.reason,
    desc,
    answer: a,
    refusal,
    allow: undefined,
    reserved: false,
  };
}

/**
 * The verdict on one request. Synchronous whenever `answer()` is; never throws and never rejects: every
 * failure becomes a verdict with its status.
 */
export function answerRequest(
  rt: DecisionRuntime,
  raw: RawRequest,
  pathParameters: PathParameters,
  now: number = Date.now(),
): Verdict | Promise<Verdict> {
  let desc: RequestDescription | undefined;
  try {
    desc = describeRequest(raw, pathParameters);
    if (desc.path.startsWith(GATEHOUSE_PREFIX)) {
      return {
        status: 404,
        reason: 'reserved',
        desc,
        answer: undefined,
        refusal: undefined,
        allow: undefined,
        reserved: true,
      };
    }
    const route = routeRequest(rt.routes, desc);
    // As the built-in proxy: an upgrade is refused on a route that does not allow WebSockets.
    if (desc.upgrade && route.websocketIdleTimeout === undefined)
      return failed(new WebSocketNotAllowedError(), desc);
    const a = answer(rt, desc, route, now);
    if (a instanceof Promise) {
      const d = desc;
      return a.then(
        (x) => verdictOf(x, d),
        (err: unknown) => failed(err, d),
      );
    }
    return verdictOf(a, desc);
  } catch (err) {
    return failed(err, desc);
  }
}

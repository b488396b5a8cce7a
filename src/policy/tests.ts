/**
 * The configuration's `tests:` section, run offline by `gatehouse check`: each test describes a request
 * (and optionally who sends it) and the expected answer; the gateway's own normalization, routing and
 * decision core produce the actual one.
 */
import type { Config } from '../config/schema.js';
import { type CompiledConfig, configOf } from '../core/compile.js';
import { type Decision, describeDecision } from '../core/decide.js';
import { GatehouseError } from '../errors.js';
import { evaluateOffline, type OfflineContext, offlineContext, type Rejection } from './offline.js';

/** The result of one config test. */
export interface ConfigTestResult {
  /** Index in the merged `tests:` list (for `FILE: tests.N` locations). */
  readonly index: number;
  readonly name: string;
  readonly ok: boolean;
  /** `allow`, `deny`, `login` or a status. */
  readonly expected: string | number;
  /** The decision, or the rejection (400 bad path, 404 no route, 0 for an invalid test). */
  readonly got: Decision | { readonly status: number; readonly reason: string };
  /** One line: what was expected and what happened, with the reason. */
  readonly detail: string;
}

type ConfigTest = Config['tests'][number];

function isDecision(got: Decision | Rejection): got is Decision {
  return 'outcome' in got;
}

/** Short text for a decision or a rejection. */
function describe(got: Decision | Rejection): string {
  return isDecision(got)
    ? `${describeDecision(got)} [${got.reason}]`
    : `${got.status} (${got.reason}): ${got.message}`;
}

/**
 * Whether an outcome meets an expectation. `allow`: the decision allows. `deny`: 403. `login`: the
 * anonymous caller is asked to sign in, by a redirect (302) or, where no redirect is possible (not an
 * HTML navigation, or no OIDC provider for the route), by 401 `user-unauthenticated`. A number: that
 * exact status (400 for unsafe paths, 404 when no route matches, 429 over a rate limit or quota; with
 * `after: N`, the request follows N earlier ones of the same caller at the same instant).
 */
export function meetsExpectation(expect: ConfigTest['expect'], got: Decision | Rejection): boolean {
  switch (expect) {
    case 'allow':
      return isDecision(got) && got.outcome === 'allow';
    case 'deny':
      return got.status === 403;
    case 'login':
      return (
        isDecision(got) &&
        (got.outcome === 'login' ||
          (got.outcome === 'unauthenticated' && got.reason === 'user-unauthenticated'))
      );
    default:
      return got.status === expect;
  }
}

function runOne(ctx: OfflineContext, test: ConfigTest, index: number, now: number): ConfigTestResult {
  const expected = test.expect;
  const base = { index, name: test.name, expected };
  let got: Decision | Rejection;
  try {
    got = evaluateOffline(ctx, {
      method: test.request.method,
      url: test.request.url,
      as: test.as,
      headers: test.request.headers,
      sourceIp: test.request.sourceIp,
      now,
      after: test.after,
    }).outcome;
  } catch (err) {
    const code = err instanceof GatehouseError ? err.code : 'GH_TEST_INPUT';
    return {
      ...base,
      ok: false,
      got: { status: 0, reason: code },
      detail: `invalid test: ${(err as Error)?.message ?? String(err)}`,
    };
  }
  const ok = meetsExpectation(expected, got);
  const when = test.after === undefined ? '' : ` after ${test.after}`;
  const detail = ok
    ? `${expected}${when}: ${describe(got)}`
    : `expected ${expected}${when}, got ${describe(got)}`;
  return { ...base, ok, got, detail };
}

/**
 * Runs every test of `config.tests` offline at time `now` (ms since the epoch; default the current time)
 * and returns one result per test, in order; it never throws for a failing or malformed test. Throws
 * `PolicyConfigError` when the policies themselves cannot be compiled (a configuration problem, which
 * `policyProblems` reports first when the loader uses it).
 */
export function runConfigTests(
  source: Config | CompiledConfig,
  now: number = Date.now(),
): ConfigTestResult[] {
  const config = configOf(source);
  if (config.tests.length === 0) return [];
  const ctx = offlineContext(source);
  return config.tests.map((test, i) => runOne(ctx, test, i, now));
}

/** One line per result for `gatehouse check`: `ok   NAME: detail` or `FAIL NAME: detail`. */
export function formatTestResult(r: ConfigTestResult): string {
  return `${r.ok ? 'ok  ' : 'FAIL'} ${r.name}: ${r.detail}`;
}

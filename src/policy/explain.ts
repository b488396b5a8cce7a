/**
 * `gatehouse explain`: what the gateway would do with one request, offline, as lines of text: the
 * normalized path, the identity, the route and upstream, every rule of the policy with whether it
 * matched, the deciding rule, the reason code and the decision.
 */
import type { Config } from '../config/schema.js';
import { formatDuration } from '../config/units.js';
import type { CompiledConfig } from '../core/compile.js';
import { type Decision, describeDecision } from '../core/decide.js';
import type { Identity } from '../identity/types.js';
import type { LimitVerdict } from '../limits/stage.js';
import { evaluateOffline, offlineContext, type Rejection } from './offline.js';

/** Optional facts of the explained request. */
export interface ExplainOptions {
  /** Request headers; without `accept` the request is taken as a browser's. */
  readonly headers?: Readonly<Record<string, string>>;
  /** Client address (default 127.0.0.1). */
  readonly sourceIp?: string;
  /** Evaluation time in ms since the epoch (default now), for time-of-day rules. */
  readonly now?: number;
  /** Requests of the same caller at the same instant before this one (rate limits and quotas count them). */
  readonly after?: number;
}

/** The explanation: printable lines and the outcome they describe. */
export interface Explanation {
  readonly lines: string[];
  readonly decision: Decision | Rejection;
}

/** `rate limit:` and `quota:` lines for a route, and what they answer (for an allowed request). */
function describeLimits(
  ctx: CompiledConfig,
  route: string,
  verdict: LimitVerdict | undefined,
  after: number | undefined,
): string[] {
  const limits = ctx.limits.forRoute(route);
  if (limits === undefined) return [];
  const lines: string[] = [];
  const rl = limits.rate?.config;
  if (rl !== undefined) {
    const extra = [`burst ${rl.burst}`];
    if (rl.delay > 0) extra.push(`held up to ${formatDuration(rl.delay)}`);
    if (rl.onStoreError === 'deny') extra.push('503 when the store is down');
    const per = RATE_UNIT[rl.rate.windowMs] ?? formatDuration(rl.rate.windowMs);
    lines.push(`rate limit: ${rl.rate.count}/${per} per ${rl.key}, ${extra.join(', ')}`);
  }
  for (const q of limits.quotas) {
    const c = q.config;
    const window = c.window === 'month' ? 'calendar month' : formatDuration(c.window);
    const cost = typeof c.cost === 'number' ? `cost ${c.cost}` : `cost from response ${c.cost}`;
    const when = q.when === undefined ? '' : `, only ${q.when.rules[0]?.summary ?? ''}`;
    lines.push(`quota: ${q.name}: ${c.limit} per ${window} (${c.timeZone}) per ${c.key}, ${cost}${when}`);
  }
  if (verdict !== undefined) {
    const n = after === undefined ? '' : ` after ${after} earlier request${after === 1 ? '' : 's'}`;
    const what =
      verdict.outcome === 'limited'
        ? `limited (429, retry after ${verdict.retryAfter} s)`
        : verdict.outcome === 'delayed'
          ? `held ${verdict.waitMs} ms, then allowed`
          : 'allowed';
    lines.push(`limits${n}: ${what}`);
  }
  return lines;
}

/** The unit a rate is written per (`600/min`), by its window. */
const RATE_UNIT: Readonly<Record<number, string>> = { 1000: 's', 60000: 'min', 3600000: 'h', 86400000: 'd' };

function describeIdentity(id: Identity): string {
  const parts = [`subject ${id.subject}`];
  if (id.user !== id.subject) parts.push(`user ${id.user}`);
  parts.push(`groups [${id.groups.join(', ')}]`, `authMethod ${id.authMethod}`);
  return `${id.email ?? id.user} (${parts.join(', ')})`;
}

/**
 * Explains `METHOD URL` sent by the identity `as` (the `--as` shape of `gatehouse explain`: `email`,
 * `groups`, `user`, `subject`, `authMethod`, other keys are claims; undefined = anonymous). Throws
 * `TestInputError` for an unusable identity or source address, and `PolicyConfigError` for policies
 * that cannot be compiled. Never contacts an identity provider or an upstream.
 */
export function explainRequest(
  source: Config | CompiledConfig,
  method: string,
  url: string,
  as: Readonly<Record<string, unknown>> | undefined,
  opts: ExplainOptions = {},
): Explanation {
  const ctx = offlineContext(source);
  const config = ctx.config;
  const r = evaluateOffline(ctx, {
    method,
    url,
    as,
    headers: opts.headers,
    sourceIp: opts.sourceIp,
    now: opts.now ?? Date.now(),
    after: opts.after,
  });
  const lines: string[] = [`request: ${method.toUpperCase()} ${url}`];
  if (r.method !== method.toUpperCase()) lines.push(`method: ${r.method} (method override)`);
  if (r.path !== undefined && r.path !== r.rawPath)
    lines.push(`path: ${r.path} (normalized from ${r.rawPath})`);
  const outcome = r.outcome;
  if (!('outcome' in outcome) && outcome.status === 400) {
    lines.push(`decision: reject (400): ${outcome.message}`, `reason: ${outcome.reason}`);
    return { lines, decision: outcome };
  }
  lines.push(`identity: ${r.identity === undefined ? 'anonymous' : describeIdentity(r.identity)}`);
  if (opts.sourceIp !== undefined) lines.push(`source: ${opts.sourceIp}`);
  const route = r.route;
  if (route === undefined) {
    lines.push('route: none', `decision: ${outcome.status} (${'message' in outcome ? outcome.message : ''})`);
    return { lines, decision: outcome };
  }
  const rc = route.config;
  lines.push(`route: ${route.name}`);
  if (rc.split) {
    const total = rc.split.targets.reduce((n, t) => n + t.weight, 0);
    const parts = rc.split.targets.map(
      (t) => `${t.upstream} (${total > 0 ? Math.round((t.weight / total) * 100) : 0}%)`,
    );
    lines.push(`upstream: split between ${parts.join(', ')}`);
    if (rc.split.pinHeader) lines.push(`pin header: ${rc.split.pinHeader}`);
  } else {
    const upstream = rc.upstream ?? '';
    const servers = config.upstreams[upstream]?.servers.map((s) => s.url).join(', ');
    lines.push(`upstream: ${upstream}${servers ? ` (${servers})` : ''}`);
  }
  if (!rc.public) {
    const policy = r.policy;
    if (policy === undefined) lines.push('policy: no policy (any signed-in identity is allowed)');
    else {
      lines.push(`policy: ${policy.inline ? 'inline policy' : `policy "${policy.name}"`}`);
      const decidingRule = 'outcome' in outcome ? outcome.rule : undefined;
      for (const t of r.request ? policy.trace(r.identity, r.request) : []) {
        const verdict = t.matched
          ? t.name === decidingRule
            ? 'match, decides'
            : 'match'
          : `no match (${t.mismatch === 'identity' ? 'needs a signed-in identity' : t.mismatch})`;
        lines.push(`  ${t.effect.padEnd(5)} ${t.name}: ${t.summary} -> ${verdict}`);
      }
    }
    if (r.loginProviders.length > 0) lines.push(`login providers: ${r.loginProviders.join(', ')}`);
  }
  lines.push(...describeLimits(ctx, route.name, r.limit, opts.after));
  if ('outcome' in outcome) {
    if (outcome.rule !== undefined) lines.push(`rule: ${outcome.rule}`);
    lines.push(`reason: ${outcome.reason}`, `decision: ${describeDecision(outcome)}`);
  } else {
    lines.push(`reason: ${outcome.reason}`, `decision: ${outcome.status} (${outcome.message})`);
  }
  return { lines, decision: outcome };
}

/**
 * Policy compilation and evaluation. Every named policy and every route's inline policy is compiled
 * once per configuration load into rules whose conditions are sets, lower-cased lists, parsed CIDR
 * blocks and cached time-zone clocks, so evaluation on the hot path is a few lookups and allocates nothing.
 *
 * Semantics: deny rules are tried first and win; then allow rules; nothing matching is `no-allow-rule`.
 * A rule matches when ALL of its keys match, and a key matches when ANY of its listed values does.
 * A rule with an identity key (email, domain, user, subject, groups, claim, authMethod) never matches
 * an anonymous request; a rule with only request keys (sourceIp, methods, paths, time) can.
 */
import type { Config, PolicyConfig, RouteConfig } from '../config/schema.js';
import { normalizePath } from '../core/normalize.js';
import { GatehouseError, PolicyUnavailableError } from '../errors.js';
import { claimAt } from '../identity/claims.js';
import type { Identity, ReasonCode } from '../identity/types.js';
import { type CidrSet, compileCidrs } from './cidr.js';
import { compileTimeWindow, type TimeWindow } from './time.js';
import type {
  CompiledPolicy,
  PolicyRequest,
  PolicyResult,
  PolicySet,
  RuleEffect,
  RuleInfo,
  RuleTrace,
} from './types.js';

/** One problem in the `policies` section or a route's inline policy, with its path in the config. */
export interface PolicyProblem {
  readonly path: ReadonlyArray<string | number>;
  readonly message: string;
}

/**
 * A policy cannot be compiled (an unknown time zone, a bad path or CIDR, an unknown policy name).
 * The configuration loader reports the same problems through `policyProblems` before this can happen.
 */
export class PolicyConfigError extends GatehouseError {
  readonly problems: readonly PolicyProblem[];
  constructor(problems: readonly PolicyProblem[]) {
    super('GH_POLICY_INVALID', 0, problems.map((p) => `${p.path.join('.')}: ${p.message}`).join('\n'));
    this.problems = problems;
  }
}

type RuleConfig = PolicyConfig['allow'][number];

/**
 * A segment-aware path prefix, as routes use: `/a` and `/a/` both match `/a`, `/a/` and `/a/x`, never
 * `/ab` (a trailing slash does not narrow it: many backends serve `/a` and `/a/` alike).
 */
interface PathPrefix {
  /** The prefix without a trailing slash (`/` for the root): matched exactly. */
  readonly base: string;
  /** `base` with a trailing slash: matched as the start of a path. */
  readonly dir: string;
}

interface ClaimCondition {
  /** The claim name as written; tried as a literal top-level claim first (`https://ns/roles`). */
  readonly path: string;
  /** Dotted path segments, or undefined when the path has no dot. */
  readonly segments: readonly string[] | undefined;
  readonly values: ReadonlyArray<string | number | boolean>;
}

interface Rule {
  readonly info: RuleInfo;
  /** Preallocated result returned when this rule decides. */
  readonly result: PolicyResult;
  readonly effect: RuleEffect;
  readonly needsIdentity: boolean;
  readonly emails: ReadonlySet<string> | undefined;
  readonly domains: ReadonlySet<string> | undefined;
  readonly users: ReadonlySet<string> | undefined;
  readonly subjects: ReadonlySet<string> | undefined;
  readonly groups: ReadonlySet<string> | undefined;
  readonly claims: readonly ClaimCondition[] | undefined;
  readonly authMethods: ReadonlySet<string> | undefined;
  readonly sourceIp: CidrSet | undefined;
  readonly methods: ReadonlySet<string> | undefined;
  readonly paths: readonly PathPrefix[] | undefined;
  readonly time: TimeWindow | undefined;
}

const NO_ALLOW_RULE: PolicyResult = Object.freeze({ allow: false, reason: 'no-allow-rule', rule: undefined });

const IDENTITY_KEYS = ['email', 'domain', 'user', 'subject', 'groups', 'claim', 'authMethod'] as const;
const RULE_KEY_ORDER = [
  'email',
  'domain',
  'user',
  'subject',
  'groups',
  'claim',
  'authMethod',
  'sourceIp',
  'methods',
  'paths',
  'time',
] as const;

// ---------------------------------------------------------------------------------------------
// Identity facts derived once per identity object (authenticators cache identities until expiry).

interface Derived {
  readonly email: string | undefined;
  readonly domain: string | undefined;
}
const derivedCache = new WeakMap<Identity, Derived>();

function derived(identity: Identity): Derived {
  let d = derivedCache.get(identity);
  if (d === undefined) {
    const email = typeof identity.email === 'string' ? identity.email.toLowerCase() : undefined;
    const at = email === undefined ? -1 : email.lastIndexOf('@');
    d = { email, domain: at > 0 ? email!.slice(at + 1) : undefined };
    derivedCache.set(identity, d);
  }
  return d;
}

// ---------------------------------------------------------------------------------------------
// Matching

function pathMatches(prefixes: readonly PathPrefix[], path: string): boolean {
  for (let i = 0; i < prefixes.length; i++) {
    const p = prefixes[i]!;
    if (path === p.base || path.startsWith(p.dir)) return true;
  }
  return false;
}

/**
 * Client address against a `sourceIp` set (IPv4-mapped IPv6 such as `::ffff:192.0.2.1` counts as IPv4).
 * An address that cannot be parsed matches deny rules and never allow rules (fail closed).
 */
function ipMatches(set: CidrSet, ip: string, effect: RuleEffect): boolean {
  return set.has(ip) ?? effect === 'deny';
}

function claimMatches(claims: Readonly<Record<string, unknown>>, c: ClaimCondition): boolean {
  const value = claimAt(claims, c.path, c.segments);
  if (value === undefined || value === null) return false;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) if (c.values.includes(value[i])) return true;
    return false;
  }
  return c.values.includes(value as string);
}

function anyGroup(rule: ReadonlySet<string>, groups: readonly string[]): boolean {
  for (let i = 0; i < groups.length; i++) if (rule.has(groups[i]!)) return true;
  return false;
}

/** The first condition of the rule that does not match, or undefined when the rule matches. */
function mismatch(rule: Rule, identity: Identity | undefined, req: PolicyRequest): string | undefined {
  if (identity === undefined && rule.needsIdentity) return 'identity';
  if (rule.methods !== undefined && !rule.methods.has(req.method)) return 'methods';
  if (rule.paths !== undefined && !pathMatches(rule.paths, req.path)) return 'paths';
  if (rule.sourceIp !== undefined && !ipMatches(rule.sourceIp, req.clientIp, rule.effect)) return 'sourceIp';
  if (identity !== undefined) {
    if (rule.emails !== undefined || rule.domains !== undefined) {
      const d = derived(identity);
      if (rule.emails !== undefined && (d.email === undefined || !rule.emails.has(d.email))) return 'email';
      if (rule.domains !== undefined && (d.domain === undefined || !rule.domains.has(d.domain))) {
        return 'domain';
      }
    }
    if (rule.users !== undefined && !rule.users.has(identity.user)) return 'user';
    if (rule.subjects !== undefined && !rule.subjects.has(identity.subject)) return 'subject';
    if (rule.groups !== undefined && !anyGroup(rule.groups, identity.groups)) return 'groups';
    if (rule.authMethods !== undefined && !rule.authMethods.has(identity.authMethod)) return 'authMethod';
    if (rule.claims !== undefined) {
      for (let i = 0; i < rule.claims.length; i++) {
        if (!claimMatches(identity.claims, rule.claims[i]!)) return 'claim';
      }
    }
  }
  if (rule.time !== undefined && !rule.time.matches(req.now)) return 'time';
  return undefined;
}

class Policy implements CompiledPolicy {
  readonly name: string;
  readonly inline: boolean;
  readonly rules: readonly RuleInfo[];
  readonly #deny: readonly Rule[];
  readonly #allow: readonly Rule[];

  constructor(name: string, inline: boolean, deny: Rule[], allow: Rule[]) {
    this.name = name;
    this.inline = inline;
    this.#deny = deny;
    this.#allow = allow;
    this.rules = [...deny, ...allow].map((r) => r.info);
  }

  evaluate(identity: Identity | undefined, request: PolicyRequest): PolicyResult {
    const deny = this.#deny;
    for (let i = 0; i < deny.length; i++) {
      if (mismatch(deny[i]!, identity, request) === undefined) return deny[i]!.result;
    }
    const allow = this.#allow;
    for (let i = 0; i < allow.length; i++) {
      if (mismatch(allow[i]!, identity, request) === undefined) return allow[i]!.result;
    }
    return NO_ALLOW_RULE;
  }

  trace(identity: Identity | undefined, request: PolicyRequest): RuleTrace[] {
    return [...this.#deny, ...this.#allow].map((r) => {
      const miss = mismatch(r, identity, request);
      return { ...r.info, matched: miss === undefined, mismatch: miss };
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Compilation

type Path = ReadonlyArray<string | number>;
type Report = (path: Path, message: string) => void;

// Rule names appear in reason codes, logs and response bodies: printable, one line, bounded.
const RULE_NAME = /^[^\u0000-\u001f\u007f]{1,100}$/;

/** Renders a value in YAML flow style for rule summaries: `[a, b]`, `{ k: v }`. */
function flow(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(flow).join(', ')}]`;
  if (value !== null && typeof value === 'object') {
    return `{ ${Object.entries(value)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k}: ${flow(v)}`)
      .join(', ')} }`;
  }
  return String(value);
}

function summarize(rc: RuleConfig): string {
  const parts: string[] = [];
  for (const key of RULE_KEY_ORDER) {
    const v = rc[key];
    if (v !== undefined) parts.push(`${key}: ${flow(v)}`);
  }
  return parts.length === 0 ? '(matches every request)' : parts.join(', ');
}

function compilePaths(paths: readonly string[], at: Path, report: Report): PathPrefix[] {
  const out: PathPrefix[] = [];
  paths.forEach((p, i) => {
    if (!p.startsWith('/')) {
      report([...at, i], `path "${p}" must start with "/"`);
      return;
    }
    let normalized: string;
    try {
      // `reject`: request paths never carry ';' parameters, so a prefix with one could never match.
      const n = normalizePath(p, undefined, 'reject');
      if (n.query !== '') throw new Error('a query string is not part of a path');
      normalized = n.path;
    } catch (err) {
      report([...at, i], `invalid path "${p}": ${(err as Error).message}`);
      return;
    }
    // Rules match on normalized request paths, so the configured prefix is normalized the same way.
    const base = normalized.length > 1 && normalized.endsWith('/') ? normalized.slice(0, -1) : normalized;
    out.push({ base, dir: base.endsWith('/') ? base : `${base}/` });
  });
  return out;
}

function compileRule(
  rc: RuleConfig,
  effect: RuleEffect,
  index: number,
  policyName: string,
  at: Path,
  report: Report,
): Rule {
  const name = rc.name ?? `${policyName}.${effect}[${index}]`;
  if (rc.name !== undefined && !RULE_NAME.test(rc.name)) {
    report([...at, 'name'], 'must be 1 to 100 characters on one line');
  }
  const reason: ReasonCode = effect === 'deny' ? `policy-deny:${name}` : `policy-allow:${name}`;
  const lower = (list: readonly string[] | undefined, strip?: RegExp): Set<string> | undefined =>
    list === undefined
      ? undefined
      : new Set(
          list.map((v) => (strip ? v.trim().toLowerCase().replace(strip, '') : v.trim().toLowerCase())),
        );
  const set = <T>(list: readonly T[] | undefined): Set<T> | undefined =>
    list === undefined ? undefined : new Set(list);

  let claims: ClaimCondition[] | undefined;
  if (rc.claim !== undefined) {
    claims = [];
    for (const [path, value] of Object.entries(rc.claim)) {
      if (path === '' || path.startsWith('.') || path.endsWith('.')) {
        report([...at, 'claim', path], 'claim path must be a name or a dotted path such as org.team');
        continue;
      }
      claims.push({
        path,
        segments: path.includes('.') ? path.split('.') : undefined,
        values: Array.isArray(value) ? value : [value],
      });
    }
  }
  let time: TimeWindow | undefined;
  if (rc.time !== undefined) {
    time = compileTimeWindow(rc.time, (key, message) => report([...at, 'time', key], message));
  }
  const needsIdentity = IDENTITY_KEYS.some((k) => rc[k] !== undefined);
  return {
    info: { name, effect, summary: summarize(rc), needsIdentity },
    result: Object.freeze({ allow: effect === 'allow', reason, rule: name }),
    effect,
    needsIdentity,
    emails: lower(rc.email),
    // `@example.com` and `example.com.` mean the same domain.
    domains: lower(rc.domain, /^@|\.$/g),
    users: set(rc.user),
    subjects: set(rc.subject),
    groups: set(rc.groups),
    claims,
    authMethods: set(rc.authMethod),
    sourceIp:
      rc.sourceIp === undefined
        ? undefined
        : compileCidrs(rc.sourceIp, (i, message) => report([...at, 'sourceIp', i], message)),
    methods: set(rc.methods),
    paths: rc.paths === undefined ? undefined : compilePaths(rc.paths, [...at, 'paths'], report),
    time,
  };
}

function compilePolicy(
  pc: PolicyConfig,
  name: string,
  inline: boolean,
  at: Path,
  report: Report,
): CompiledPolicy {
  const seen = new Set<string>();
  const rules = (effect: RuleEffect): Rule[] =>
    pc[effect].map((rc, i) => {
      const rule = compileRule(rc, effect, i, name, [...at, effect, i], report);
      if (seen.has(rule.info.name)) {
        report([...at, effect, i, 'name'], `duplicate rule name "${rule.info.name}" in this policy`);
      }
      seen.add(rule.info.name);
      return rule;
    });
  const allow = rules('allow');
  const deny = rules('deny');
  return new Policy(name, inline, deny, allow);
}

/**
 * One rule compiled as a policy of its own (`evaluate(...).allow` is true when the rule matches): a
 * quota's `when`. Problems are reported at `at` like those of any policy rule.
 */
export function compileCondition(
  rule: RuleConfig,
  name: string,
  at: Path,
  report: (path: ReadonlyArray<string | number>, message: string) => void,
): CompiledPolicy {
  return compilePolicy({ allow: [{ name, ...rule }], deny: [] }, name, true, at, (path, message) =>
    // The rule is written at `at`, not inside an `allow` list.
    report([...at, ...path.slice(at.length + 2)], message),
  );
}

class Policies implements PolicySet {
  readonly named: ReadonlyMap<string, CompiledPolicy>;
  readonly #inline: WeakMap<RouteConfig, CompiledPolicy>;

  constructor(named: Map<string, CompiledPolicy>, inline: WeakMap<RouteConfig, CompiledPolicy>) {
    this.named = named;
    this.#inline = inline;
  }

  forRoute(route: RouteConfig): CompiledPolicy | undefined {
    const p = route.policy;
    if (p === undefined) return undefined;
    if (typeof p === 'string') {
      const named = this.named.get(p);
      if (named === undefined) throw new PolicyUnavailableError(route.name);
      return named;
    }
    let compiled = this.#inline.get(route);
    if (compiled === undefined) {
      // A route object from outside this configuration: compile its inline policy once, fail closed.
      const problems: PolicyProblem[] = [];
      compiled = compilePolicy(p, route.name, true, ['policy'], (path, message) =>
        problems.push({ path, message }),
      );
      if (problems.length > 0) throw new PolicyUnavailableError(route.name);
      this.#inline.set(route, compiled);
    }
    return compiled;
  }
}

function compileAll(config: Config): { set: PolicySet; problems: PolicyProblem[] } {
  const problems: PolicyProblem[] = [];
  const report: Report = (path, message) => problems.push({ path, message });
  const named = new Map<string, CompiledPolicy>();
  for (const [name, pc] of Object.entries(config.policies)) {
    named.set(name, compilePolicy(pc, name, false, ['policies', name], report));
  }
  const inline = new WeakMap<RouteConfig, CompiledPolicy>();
  config.routes.forEach((rc, i) => {
    if (rc.policy !== undefined && typeof rc.policy !== 'string') {
      inline.set(rc, compilePolicy(rc.policy, rc.name, true, ['routes', i, 'policy'], report));
    }
  });
  return { set: new Policies(named, inline), problems };
}

/**
 * Problems in the configuration's policies (named and inline) that schema validation cannot see: time
 * zones, times, paths, CIDRs, claim paths, rule names. Paths are config paths such as
 * `['policies', 'data-eng', 'allow', 0, 'time', 'timezone']`. Unknown policy names on routes are
 * not repeated here (the loader reports them).
 */
export function policyProblems(config: Config): PolicyProblem[] {
  return compileAll(config).problems;
}

/**
 * Compiles every policy of a configuration once. Throws `PolicyConfigError` listing every problem
 * (see `policyProblems`), including routes that name a policy that does not exist, so a configuration
 * whose policies cannot all be enforced is never used.
 */
export function compilePolicies(config: Config): PolicySet {
  const { set, problems } = compileAll(config);
  config.routes.forEach((rc, i) => {
    if (typeof rc.policy === 'string' && !set.named.has(rc.policy)) {
      problems.push({ path: ['routes', i, 'policy'], message: `unknown policy "${rc.policy}"` });
    }
  });
  if (problems.length > 0) throw new PolicyConfigError(problems);
  return set;
}

/**
 * Policy evaluation contract: a compiled policy answers allow or deny for an identity and a request,
 * always with the reason and, when a rule decided, that rule's name.
 */
import type { RouteConfig } from '../config/schema.js';
import type { Identity, ReasonCode } from '../identity/types.js';

/** What a policy rule may look at besides the identity. */
export interface PolicyRequest {
  readonly method: string;
  readonly host: string;
  /** The normalized path: the same one routing matched and the upstream receives. */
  readonly path: string;
  readonly clientIp: string;
  /** Evaluation time (ms since the epoch); injected so tests can freeze it. */
  readonly now: number;
}

/** The answer of a policy. Deny rules win over allow rules. */
export interface PolicyResult {
  readonly allow: boolean;
  readonly reason: ReasonCode;
  /** Name of the deciding rule (its `name`, else `allow[N]`/`deny[N]` within the policy). */
  readonly rule: string | undefined;
}

/** Whether a rule grants or refuses access. */
export type RuleEffect = 'allow' | 'deny';

/** A compiled rule as shown by `explain`. */
export interface RuleInfo {
  /** The rule's `name`, else `<policy>.allow[N]` / `<policy>.deny[N]`. */
  readonly name: string;
  readonly effect: RuleEffect;
  /** The rule's conditions in short form, e.g. `groups: data-eng | sourceIp: 10.0.0.0/8`. */
  readonly summary: string;
  /** True when the rule looks at the identity, so it never matches an anonymous request. */
  readonly needsIdentity: boolean;
}

/** How one rule fared against one request (for `explain`). */
export interface RuleTrace extends RuleInfo {
  readonly matched: boolean;
  /** The first condition that did not match (`groups`, `sourceIp`, `identity` for anonymous, ...). */
  readonly mismatch: string | undefined;
}

/** A policy compiled once per configuration load. */
export interface CompiledPolicy {
  /** The policy name, or the route name for a route's inline policy. */
  readonly name: string;
  /** True for a policy written inline on a route. */
  readonly inline: boolean;
  /** Deny rules first, then allow rules, each in configuration order (the evaluation order). */
  readonly rules: readonly RuleInfo[];
  /** The decision; allocation-free (results are preallocated per rule). */
  evaluate(identity: Identity | undefined, request: PolicyRequest): PolicyResult;
  /** Every rule with whether it matched and why not; for `explain`, not the hot path. */
  trace(identity: Identity | undefined, request: PolicyRequest): RuleTrace[];
}

/** Every policy of a configuration, compiled once per load. */
export interface PolicySet {
  /** The named policies by name. */
  readonly named: ReadonlyMap<string, CompiledPolicy>;
  /**
   * The policy that applies to a route: its named policy or its inline one; undefined when the route
   * has none. Throws `PolicyUnavailableError` (403) for a policy name this set does not know, so an
   * unresolvable reference fails closed.
   */
  forRoute(route: RouteConfig): CompiledPolicy | undefined;
}

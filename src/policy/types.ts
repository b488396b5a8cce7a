/**
 * Policy evaluation contract: a compiled policy answers allow or deny for an identity and a request,
 * always with the reason and, when a rule decided, that rule's name.
 */
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

/** A policy compiled once per configuration load. */
export interface CompiledPolicy {
  readonly name: string;
  evaluate(identity: Identity | undefined, request: PolicyRequest): PolicyResult;
}

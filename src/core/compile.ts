/**
 * The one compile step of a loaded configuration: the route table and the policies, built once and used
 * together. The runtime build, the cluster primary's check before a reload, `gatehouse check` (which
 * then runs the config tests on the result) and `gatehouse explain` all call it, so they accept and
 * refuse exactly the same configurations and decide on the same compiled form.
 */
import type { Config } from '../config/schema.js';
import { type ConfigProblem, ConfigSettingError } from '../errors.js';
import { compileLimits, LimitConfigError, type LimitSet } from '../limits/compile.js';
import { compilePolicies, PolicyConfigError } from '../policy/compile.js';
import type { PolicySet } from '../policy/types.js';
import { compileRoutes } from './routes.js';
import type { RouteTable } from './types.js';

/** A configuration with its route table and policies, compiled once. */
export interface CompiledConfig {
  readonly config: Config;
  readonly routes: RouteTable;
  readonly policies: PolicySet;
  /** Rate limits and quotas by route. */
  readonly limits: LimitSet;
}

/**
 * Compiles a validated configuration. Throws `ConfigSettingError` (a route that cannot be compiled),
 * `PolicyConfigError` (a policy that cannot be) or `LimitConfigError` (a quota that cannot be); `compileProblems` turns either into problems at paths.
 */
export function compileConfig(config: Config): CompiledConfig {
  return {
    config,
    routes: compileRoutes(config),
    policies: compilePolicies(config),
    limits: compileLimits(config),
  };
}

function isCompiled(source: Config | CompiledConfig): source is CompiledConfig {
  return 'routes' in source && 'policies' in source && 'config' in source;
}

/** A compiled configuration as it is, or `config` compiled now. */
export function compiledOf(source: Config | CompiledConfig): CompiledConfig {
  return isCompiled(source) ? source : compileConfig(source);
}

/** The configuration of `source`, compiled or not (nothing is compiled). */
export function configOf(source: Config | CompiledConfig): Config {
  return isCompiled(source) ? source.config : source;
}

/**
 * The configuration problems a compile failure stands for, each at its path in `file`; undefined when
 * `err` is not a configuration problem (a bug: rethrow it).
 */
export function compileProblems(err: unknown, file: string): ConfigProblem[] | undefined {
  if (err instanceof PolicyConfigError || err instanceof LimitConfigError)
    return err.problems.map((p) => ({ file, path: p.path.join('.'), message: p.message }));
  // A setting with no path to blame (a key the store did not keep) is put under `identity`.
  if (err instanceof ConfigSettingError)
    return [{ file, path: err.path === '' ? 'identity' : err.path, message: err.detail }];
  return undefined;
}

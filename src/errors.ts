/**
 * Typed errors with a stable `code` and the HTTP status they map to. Library and upstream errors are
 * translated at one boundary (`src/proxy/errors.ts`) and keep the original as `cause`.
 */

/** Base class of every error Gatehouse raises on purpose. */
export class GatehouseError extends Error {
  readonly code: string;
  readonly status: number;
  constructor(code: string, status: number, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.status = status;
  }
}

/**
 * A setting the schema accepted but that cannot work (a weak secret, an http: issuer off loopback, an
 * unusable key), found while the configuration is built: raised with its configuration path as a field,
 * so the configuration is refused with the problem at that path. `path` is '' where no setting is to
 * blame (a key the state store did not keep).
 */
export class ConfigSettingError extends GatehouseError {
  /** The configuration path, e.g. `identity.session.secrets.0`. */
  readonly path: string;
  /** The problem without the path. */
  readonly detail: string;
  constructor(code: string, path: string, detail: string, options?: { cause?: unknown }) {
    super(code, 0, path === '' ? detail : `${path}: ${detail}`, options);
    this.path = path;
    this.detail = detail;
  }
}

/** The request could not be parsed or normalized safely (400). */
export class BadRequestError extends GatehouseError {
  constructor(message: string, code = 'GH_BAD_REQUEST') {
    super(code, 400, message);
  }
}

/** A WebSocket handshake on a route without `websocket` (403); every data plane refuses it. */
export class WebSocketNotAllowedError extends GatehouseError {
  constructor() {
    super('GH_WEBSOCKET_NOT_ALLOWED', 403, 'WebSocket upgrades are not allowed on this route');
  }
}

/** No route matches the request (404). */
export class NoRouteError extends GatehouseError {
  constructor() {
    super('GH_NO_ROUTE', 404, 'no route matches this request');
  }
}

/**
 * The route is protected by a policy that this build cannot evaluate (403). Refusing is the fail-closed
 * answer: a policy that is not enforced must never let a request through.
 */
export class PolicyUnavailableError extends GatehouseError {
  constructor(route: string) {
    super('GH_POLICY_UNAVAILABLE', 403, `route ${route} requires a policy decision that is not available`);
  }
}

/** The request body is larger than the route allows (413). */
export class BodyTooLargeError extends GatehouseError {
  constructor(limit: number) {
    super('GH_BODY_TOO_LARGE', 413, `request body exceeds ${limit} bytes`);
  }
}

/** Every server of the upstream is down, ejected or draining (503). */
export class NoServerAvailableError extends GatehouseError {
  constructor(upstream: string) {
    super('GH_NO_SERVER', 503, `no server available in upstream ${upstream}`);
  }
}

/** The request waited in the upstream queue longer than `queue.timeout`, or the queue was full (503). */
export class QueueTimeoutError extends GatehouseError {
  constructor(upstream: string, full = false) {
    super(
      full ? 'GH_QUEUE_FULL' : 'GH_QUEUE_TIMEOUT',
      503,
      full ? `queue of upstream ${upstream} is full` : `timed out waiting for a connection to ${upstream}`,
    );
  }
}

/** The upstream refused, reset or broke the connection, or sent an invalid response (502). */
export class UpstreamConnectError extends GatehouseError {
  constructor(message: string, cause?: unknown, code = 'GH_UPSTREAM_CONNECT') {
    super(code, 502, message, { cause });
  }
}

/** The upstream did not answer in time (504). */
export class UpstreamTimeoutError extends GatehouseError {
  constructor(message: string, cause?: unknown) {
    super('GH_UPSTREAM_TIMEOUT', 504, message, { cause });
  }
}

/**
 * The client stopped sending its request body, or stopped reading the response, for longer than the
 * idle timeout (408 before the response started; the exchange is aborted after).
 */
export class ClientTimeoutError extends GatehouseError {
  constructor(reading: boolean) {
    super(
      'GH_CLIENT_TIMEOUT',
      408,
      reading ? 'the client stopped reading the response' : 'the client stopped sending the request body',
    );
  }
}

/** The client went away before the response was complete (499, logged only). */
export class ClientClosedError extends GatehouseError {
  constructor() {
    super('GH_CLIENT_CLOSED', 499, 'client closed the connection');
  }
}

/** A problem found in a configuration file, reported as `FILE: path.to.key: message`. */
export interface ConfigProblem {
  file: string;
  path: string;
  message: string;
}

/** The configuration is invalid; carries every problem found. */
export class ConfigError extends GatehouseError {
  readonly problems: ConfigProblem[];
  constructor(problems: ConfigProblem[]) {
    super('GH_CONFIG_INVALID', 0, problems.map(formatProblem).join('\n'));
    this.problems = problems;
  }
}

/** Formats a problem as `FILE: path.to.key: message`. */
export function formatProblem(p: ConfigProblem): string {
  return `${p.file}: ${p.path || '(root)'}: ${p.message}`;
}

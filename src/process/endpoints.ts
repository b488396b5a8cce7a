/**
 * The endpoints under `/.gatehouse/` that other data planes serve on the built-in proxy's listeners,
 * handed to the listeners here, where the gateway is assembled: the proxy and the forward-auth endpoint
 * know nothing of each other.
 */
import { FORWARD_AUTH_PATH, serveForwardAuth, servesForwardAuth } from '../forwardauth/endpoint.js';
import type { ReservedEndpoint } from '../proxy/access.js';

/** `GET /.gatehouse/auth` on listeners with `forwardAuth: true` (src/forwardauth). */
const FORWARD_AUTH: ReservedEndpoint = {
  path: FORWARD_AUTH_PATH,
  serves: (runtime, listener) => servesForwardAuth(runtime.config, listener),
  serve: (ex) => serveForwardAuth(ex),
};

/** Every such endpoint, in the order they are tried. */
export const RESERVED_ENDPOINTS: readonly ReservedEndpoint[] = [FORWARD_AUTH];

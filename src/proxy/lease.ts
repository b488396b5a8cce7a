/**
 * Upstream leases of the built-in proxy: one way to acquire a lease (queued or not, avoiding servers
 * already tried), to hand it to the request that asked for it, and to release it, used by the HTTP
 * exchange and the WebSocket tunnel alike.
 *
 *   acquireFor ─► acquireLease ─┬► lease at once ──────────┐
 *                               ├► queued: lease later ────┤─► client still there: holder.sendOn(lease)
 *                               │                          └─► client gone: released at once ('client-abort')
 *                               └► none (now or queued) ──────► holder.fail(503 GH_NO_SERVER / GH_QUEUE_*)
 *   releaseLease(holder, outcome): the one release, at most once per lease, whatever ends the attempt.
 */
import type { GatehouseError } from '../errors.js';
import { NoServerAvailableError } from '../errors.js';
import type { Lease, Outcome, SelectInput, Upstream } from '../upstream/types.js';
import { toGatehouseError } from './errors.js';

function isPromise<T>(v: T | Promise<T>): v is Promise<T> {
  return typeof (v as { then?: unknown }).then === 'function';
}

/** Acquires a lease avoiding `tried` servers; when every server was tried, any server will do. */
export function acquireLease(
  upstream: Upstream,
  input: SelectInput,
  tried: ReadonlySet<string> | undefined,
): Lease | Promise<Lease> {
  if (tried === undefined) return upstream.acquire(input);
  try {
    const r = upstream.acquire(input, tried);
    if (!isPromise(r)) return r;
    return r.catch((err: unknown) => {
      if (err instanceof NoServerAvailableError) return upstream.acquire(input);
      throw err;
    });
  } catch (err) {
    if (err instanceof NoServerAvailableError) return upstream.acquire(input);
    throw err;
  }
}

/** A request that sends its attempts on upstream leases: the HTTP exchange and the WebSocket tunnel. */
export interface LeaseHolder {
  /** The lease held by the current attempt, until `releaseLease`. */
  lease: Lease | undefined;
  /** The server of the last lease taken, for the access log. */
  serverId: string | undefined;
  /** True when a lease arriving now has no use: the client left, or was answered already. */
  leaseUnwanted(): boolean;
  /** Sends the attempt on `lease` (already recorded in `lease` and `serverId`). */
  sendOn(lease: Lease): void;
  /** Answers the client when no lease could be had. */
  fail(err: GatehouseError): void;
}

/** Acquires a lease for `holder` (see `acquireLease`) and sends its attempt on it, now or once queued. */
export function acquireFor(
  holder: LeaseHolder,
  upstream: Upstream,
  input: SelectInput,
  tried: ReadonlySet<string> | undefined,
): void {
  let lease: Lease | Promise<Lease>;
  try {
    lease = acquireLease(upstream, input, tried);
  } catch (err) {
    holder.fail(toGatehouseError(err));
    return;
  }
  if (isPromise(lease)) {
    lease.then(
      (l) => take(holder, l),
      (err: unknown) => holder.fail(toGatehouseError(err)),
    );
  } else {
    take(holder, lease);
  }
}

function take(holder: LeaseHolder, lease: Lease): void {
  // The client may have gone while the lease waited in the queue: the server is free again at once.
  if (holder.leaseUnwanted()) {
    lease.release('client-abort');
    return;
  }
  holder.lease = lease;
  holder.serverId = lease.server.id;
  holder.sendOn(lease);
}

/** Releases the lease `holder` holds with `outcome`; later calls until the next lease do nothing. */
export function releaseLease(holder: LeaseHolder, outcome: Outcome): void {
  const lease = holder.lease;
  if (lease !== undefined) {
    holder.lease = undefined;
    lease.release(outcome);
  }
}

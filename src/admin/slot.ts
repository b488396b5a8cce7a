/**
 * The admin listener of one process, kept in step with the configuration: reopened only when its bind
 * address or token changed, so a reload that touches neither keeps its socket.
 */
import type { AddressInfo } from 'node:net';
import type { LoadedConfig } from '../config/load.js';
import type { AdminServer } from './server.js';

/** `host:port`, with brackets around an IPv6 host. */
export function formatAddress(
  a: { address: string; family: string; port: number } | undefined,
): string | undefined {
  if (!a) return undefined;
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

/** Owns the admin server of a gateway or cluster primary across reloads. */
export class AdminSlot {
  readonly #create: (token: string | undefined) => AdminServer;
  #server: AdminServer | undefined;
  #address: AddressInfo | undefined;
  #key: string | undefined;

  /** `create` builds the server for the resolved token; the slot listens and closes it. */
  constructor(create: (token: string | undefined) => AdminServer) {
    this.#create = create;
  }

  /** Bound address, when an admin listener is open. */
  get address(): AddressInfo | undefined {
    return this.#address;
  }

  /** Opens, reopens or closes the listener to match `loaded.config.admin`. */
  async sync(loaded: LoadedConfig): Promise<void> {
    const admin = loaded.config.admin;
    const token = admin?.token !== undefined ? loaded.secrets.resolveSecret(admin.token) : undefined;
    const key = admin ? JSON.stringify([admin.bind, token ?? null]) : undefined;
    if (key === this.#key) return;
    await this.close();
    this.#key = key;
    if (!admin) return;
    const server = this.#create(token);
    this.#address = await server.listen(admin.bind);
    this.#server = server;
  }

  /** Closes the listener, if open. */
  async close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    this.#address = undefined;
    this.#key = undefined;
    await server?.close();
  }
}

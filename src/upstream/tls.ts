/**
 * undici connectors for upstream servers: for HTTPS a custom CA, server name (SNI and verification) and
 * mTLS; for every server the interim-response filter (`interim.ts`).
 */
import { isIP } from 'node:net';
import { buildConnector } from 'undici';
import type { UpstreamConfig } from '../config/schema.js';
import { interimFilteringConnector } from './interim.js';
import type { UpstreamBuildContext } from './types.js';

/** TLS material of one upstream, resolved once per build. */
export interface UpstreamTlsMaterial {
  ca?: string;
  cert?: string;
  key?: string;
  serverName?: string;
}

/** Resolves the `tls` block's secret references; throws a clear Error when one cannot be read. */
export function resolveTlsMaterial(
  name: string,
  tls: UpstreamConfig['tls'],
  ctx: UpstreamBuildContext,
): UpstreamTlsMaterial {
  if (!tls) return {};
  const read = (key: 'ca' | 'cert' | 'key'): string | undefined => {
    const ref = tls[key];
    if (ref === undefined) return undefined;
    try {
      return ctx.resolveSecret(ref);
    } catch (err) {
      throw new Error(`upstreams.${name}.tls.${key}: ${(err as Error).message}`, { cause: err });
    }
  };
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new Error(`upstreams.${name}.tls: cert and key must be given together`);
  }
  const out: UpstreamTlsMaterial = {};
  const ca = read('ca');
  const cert = read('cert');
  const key = read('key');
  if (ca !== undefined) out.ca = ca;
  if (cert !== undefined) out.cert = cert;
  if (key !== undefined) out.key = key;
  if (tls.serverName !== undefined) out.serverName = tls.serverName;
  return out;
}

/** How to connect to one endpoint: undici's `connect` option and the server name to pin on requests. */
export interface EndpointConnect {
  connect: buildConnector.connector;
  /**
   * undici derives a request's TLS server name from its Host header and reconnects when it changes;
   * pinning one name per endpoint keeps connections reusable whatever Host the client sent.
   */
  servername: string | undefined;
}

/**
 * Connect settings for one endpoint. The TLS server name (SNI and certificate verification) is
 * `tls.serverName`, else the configured host name, never the forwarded Host header; for an IP literal
 * without `serverName` the certificate is verified against the address.
 */
export function endpointConnect(
  protocol: string,
  configuredHost: string,
  address: string,
  material: UpstreamTlsMaterial,
  connectTimeout: number,
): EndpointConnect {
  if (protocol !== 'https:') {
    const connect = interimFilteringConnector(buildConnector({ timeout: connectTimeout }));
    return { connect, servername: undefined };
  }
  const forced = material.serverName ?? (isIP(configuredHost) === 0 ? configuredHost : undefined);
  const opts: buildConnector.BuildOptions = { timeout: connectTimeout, rejectUnauthorized: true };
  if (forced !== undefined) (opts as { servername?: string }).servername = forced;
  if (material.ca !== undefined) (opts as { ca?: string }).ca = material.ca;
  if (material.cert !== undefined) (opts as { cert?: string }).cert = material.cert;
  if (material.key !== undefined) (opts as { key?: string }).key = material.key;
  const base = buildConnector(opts);
  const connect = interimFilteringConnector((options, callback) => {
    base({ ...options, servername: forced as string }, callback);
  });
  return { connect, servername: forced ?? address };
}

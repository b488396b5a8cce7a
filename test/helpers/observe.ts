/**
 * Test helpers for the observability, admin and demo tests: HTTP requests with bounded timeouts,
 * a line-collecting stream, and a runtime built from a validated configuration whose upstreams report
 * a fixed status.
 */
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { type Config, ConfigSchema } from '../../src/config/schema.js';
import { compileRoutes } from '../../src/core/routes.js';
import type { Runtime } from '../../src/runtime.js';
import type { Upstream, UpstreamStatus } from '../../src/upstream/types.js';

/** Response of `request`. */
export interface TestResponse {
  status: number;
  headers: Headers;
  text: string;
  json(): unknown;
}

/** Sends one request with a hard 5 s timeout and reads the whole body. */
export async function request(url: string, init: RequestInit = {}): Promise<TestResponse> {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: () => JSON.parse(text) };
}

/** `http://host:port` of a bound address. */
export function origin(addr: AddressInfo): string {
  const host =
    addr.family === 'IPv6' ? `[${addr.address}]` : addr.address === '0.0.0.0' ? '127.0.0.1' : addr.address;
  return `http://${host}:${addr.port}`;
}

/** A writable stream that keeps every line written to it. */
export class LineCollector extends Writable {
  readonly lines: string[] = [];
  #partial = '';
  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    const parts = (this.#partial + chunk.toString('utf8')).split('\n');
    this.#partial = parts.pop() ?? '';
    this.lines.push(...parts);
    done();
  }
}

/**
 * A runtime for admin tests: the configuration is validated by the real schema and the routes are
 * compiled for real; each upstream answers `status()` from `health` (server URL -> health).
 */
export function staticRuntime(
  input: unknown,
  opts: {
    generation?: number;
    file?: string;
    health?: Record<string, UpstreamStatus['servers'][number]['health']>;
  } = {},
): Runtime {
  const config: Config = ConfigSchema.parse(input);
  const upstreams = new Map<string, Upstream>();
  for (const [name, u] of Object.entries(config.upstreams)) {
    const status = (): UpstreamStatus => ({
      name,
      balance: u.balance,
      queued: 0,
      servers: u.servers.map((s, i) => ({
        id: `${name}-${i}`,
        url: s.url,
        origin: s.url,
        weight: s.weight,
        backup: s.backup,
        health: opts.health?.[s.url] ?? 'up',
        active: i,
        slowStartFactor: 1,
      })),
    });
    upstreams.set(name, { name, config: u, status } as unknown as Upstream);
  }
  return {
    generation: opts.generation ?? 1,
    file: opts.file ?? '/etc/gatehouse/test.yaml',
    config,
    routes: compileRoutes(config),
    upstreams,
    tls: new Map(),
    watchedFiles: [],
    inFlight: { count: 0 },
  } as unknown as Runtime;
}

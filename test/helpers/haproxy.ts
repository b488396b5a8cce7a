/**
 * Real HAProxy for the companion-mode tests: finds the binary (failing loudly when it is missing, never
 * skipping), picks free loopback ports, runs `haproxy -db -f FILE` in the foreground, waits until its
 * frontend accepts connections, and stops it when the test ends, whatever happened.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import net from 'node:net';
import type { TestContext } from 'node:test';

/** The HAProxy binary: HAPROXY_PATH, else `haproxy` on the PATH or in /usr/sbin. */
export function haproxyBinary(): string {
  for (const bin of [process.env.HAPROXY_PATH, 'haproxy', '/usr/sbin/haproxy', '/usr/local/sbin/haproxy']) {
    if (!bin) continue;
    const r = spawnSync(bin, ['-v'], { encoding: 'utf8' });
    if (r.status === 0 && /HAProxy version/i.test(r.stdout)) return bin;
  }
  throw new Error(
    'HAProxy is not installed: this test runs against the real one. Install it with `apt-get install haproxy` (or set HAPROXY_PATH).',
  );
}

/** The `X.Y.Z` version of a HAProxy binary. */
export function haproxyVersion(bin: string): string {
  const out = spawnSync(bin, ['-v'], { encoding: 'utf8' }).stdout;
  return /HAProxy version (\S+)/.exec(out)?.[1] ?? 'unknown';
}

/** A free TCP port on 127.0.0.1 (bound to port 0 and released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** A running HAProxy. */
export interface Haproxy {
  readonly proc: ChildProcess;
  /** Everything HAProxy wrote to stdout and stderr (its log when `log stderr` is configured). */
  output(): string;
  stop(): Promise<void>;
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * Starts HAProxy on `configFile` and waits until `readyPort` (a frontend of the config, on 127.0.0.1)
 * accepts connections. Registers `t.after` to stop it.
 */
export async function startHaproxy(t: TestContext, configFile: string, readyPort: number): Promise<Haproxy> {
  const bin = haproxyBinary();
  const check = spawnSync(bin, ['-c', '-f', configFile], { encoding: 'utf8' });
  if (check.status !== 0) throw new Error(`haproxy -c refused the config:\n${check.stdout}${check.stderr}`);
  const proc = spawn(bin, ['-db', '-f', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  proc.stderr?.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  let exited = false;
  const exit = new Promise<void>((resolve) =>
    proc.once('exit', () => {
      exited = true;
      resolve();
    }),
  );
  const h: Haproxy = {
    proc,
    output: () => out,
    async stop() {
      if (exited) return;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 3000);
      await exit;
      clearTimeout(timer);
    },
  };
  t.after(() => h.stop());
  const deadline = Date.now() + 15_000;
  while (!(await canConnect(readyPort))) {
    if (exited) throw new Error(`haproxy exited at start-up:\n${out}`);
    if (Date.now() > deadline) throw new Error(`haproxy did not listen on ${readyPort} within 15s:\n${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return h;
}

/** Ports and files of a HAProxy in front of a SPOE agent and one HTTP backend. */
export interface SpoeHaproxyPorts {
  frontendPort: number;
  agentPort: number;
  backendPort: number;
  /** Path of the SPOE file that `haproxy.cfg` names. */
  spoeFile: string;
  /** `retries` of the agent backend (HAProxy's default, 3, when unset); 0 refuses at once while the agent is down. */
  agentRetries?: number;
  /**
   * SPOE `timeout processing` (default 5s). While no agent connection can be made, HAProxy 2.6 holds a
   * request this long before it gives up and the fail-closed rule refuses it.
   */
  processingTimeout?: string;
}

/**
 * The haproxy.cfg and SPOE file of the companion-mode tests, on loopback ports only: a mode-http
 * frontend sends `gatehouse-check` (method, url, host, src, headers, tls) to the agent; the agent's
 * `txn.gatehouse.status` decides (403 refused, missing refused with 500: fail closed) and
 * `txn.gatehouse.seen` is forwarded to the backend as `X-Gh-Seen`.
 */
export function spoeHaproxyConfig(p: SpoeHaproxyPorts): { haproxyCfg: string; spoeCfg: string } {
  const haproxyCfg = `global
  maxconn 2000
  log stderr format raw local0 notice

defaults
  mode http
  log global
  timeout connect 2s
  timeout client 20s
  timeout server 20s

frontend fe
  bind 127.0.0.1:${p.frontendPort}
  filter spoe engine gatehouse config ${p.spoeFile}
  # Fail closed: no decision from the agent (down, error, timeout) refuses the request.
  http-request deny deny_status 500 unless { var(txn.gatehouse.status) -m found }
  http-request return status 403 if { var(txn.gatehouse.status) -m int 403 }
  http-request set-header X-Gh-Seen %[var(txn.gatehouse.seen)]
  default_backend be

backend be
  server echo 127.0.0.1:${p.backendPort}

backend gatehouse-agents
  mode tcp
  timeout connect 2s
  timeout server 30s${p.agentRetries === undefined ? '' : `\n  retries ${p.agentRetries}`}
  server agent 127.0.0.1:${p.agentPort}
`;
  const spoeCfg = `[gatehouse]
spoe-agent gatehouse-agent
  messages gatehouse-check
  option var-prefix gatehouse
  option set-on-error error
  timeout hello 2s
  timeout idle 30s
  timeout processing ${p.processingTimeout ?? '5s'}
  use-backend gatehouse-agents

spoe-message gatehouse-check
  args method=method url=url host=req.hdr(host) src=src headers=req.hdrs_bin tls=ssl_fc
  event on-frontend-http-request
`;
  return { haproxyCfg, spoeCfg };
}

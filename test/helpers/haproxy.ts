/**
 * Real HAProxy for the companion-mode tests: finds each HAProxy series the SPOE agent is tested with
 * (failing loudly when one is missing, never skipping), picks free loopback ports, runs `haproxy -db -f
 * FILE` in the foreground, waits until its frontend accepts connections, and stops it when the test ends,
 * whatever happened.
 *
 * Two series, because HAProxy 3.x keeps SPOP 2.0 but reworked the SPOE around it (3.1 moved it onto a
 * multiplexer): Debian bookworm's 2.6 from the system, and a 3.x installed in a separate root folder
 * (Debian trixie's 3.0 installed with debootstrap by .ci/run), run through that root's own dynamic
 * loader so that it finds its own libraries.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { type PeerProcess, startPeer } from './listen.js';

export { freePort } from './listen.js';

/** How to start one HAProxy: `file` with `prefix` before HAProxy's own arguments. */
export interface HaproxyCommand {
  /** What to spawn: the HAProxy binary, or the dynamic loader of the root folder it lives in. */
  readonly file: string;
  /** Arguments before HAProxy's own (for a root folder: `--library-path DIRS BINARY`). */
  readonly prefix: readonly string[];
  /** `X.Y.Z` as `haproxy -v` prints it. */
  readonly version: string;
}

/** A HAProxy series the SPOE tests run against. */
export interface HaproxySeries {
  /** Part of test names: `HAProxy 2.6`, `HAProxy 3.x`. */
  readonly name: string;
  /** The command that starts it; throws, saying what to install, when it is missing. */
  find(): HaproxyCommand;
}

function versionOf(file: string, prefix: readonly string[]): string | undefined {
  const r = spawnSync(file, [...prefix, '-v'], { encoding: 'utf8' });
  if (r.status !== 0) return undefined;
  return /HAProxy version (\d+\.\d+\.\d+\S*)/.exec(r.stdout)?.[1];
}

/** The HAProxy binary on this system: HAPROXY_PATH, else `haproxy` on the PATH or in /usr/sbin. */
export function haproxyBinary(): string {
  for (const bin of [process.env.HAPROXY_PATH, 'haproxy', '/usr/sbin/haproxy', '/usr/local/sbin/haproxy']) {
    if (bin && versionOf(bin, []) !== undefined) return bin;
  }
  throw new Error(
    'HAProxy is not installed: this test runs against the real one. Install it with `apt-get install haproxy` (or set HAPROXY_PATH).',
  );
}

/** Debian bookworm's HAProxy 2.6 (the system one, or HAPROXY_PATH). */
export function haproxy26(): HaproxyCommand {
  const file = haproxyBinary();
  const version = versionOf(file, []) ?? 'unknown';
  if (!version.startsWith('2.6.'))
    throw new Error(
      `${file} is HAProxy ${version}, not 2.6: install Debian bookworm's \`apt-get install haproxy\` (2.6), or set HAPROXY_PATH to a HAProxy 2.6 binary.`,
    );
  return { file, prefix: [], version };
}

/** Where .ci/run installs HAProxy 3.x unless GATEHOUSE_HAPROXY3 says otherwise. */
export const HAPROXY3_DEFAULT_ROOT = '/opt/gatehouse-haproxy3';

/**
 * HAProxy 3.x: GATEHOUSE_HAPROXY3 names either a HAProxy 3.x binary or a root folder holding one
 * (`usr/sbin/haproxy` with its libraries and dynamic loader in `usr/lib/<triplet>/`, as debootstrap
 * leaves it); unset, the folder is /opt/gatehouse-haproxy3. The binary of a root folder runs through
 * that folder's loader, so the host's older libraries never meet it.
 */
export function haproxy3(): HaproxyCommand {
  const where = process.env.GATEHOUSE_HAPROXY3 || HAPROXY3_DEFAULT_ROOT;
  const install =
    'install it with `bash .ci/run` (as root it runs `debootstrap --variant=minbase --include=haproxy trixie ' +
    `${HAPROXY3_DEFAULT_ROOT}\`), or set GATEHOUSE_HAPROXY3 to such a folder or to a HAProxy 3.x binary`;
  let command: Omit<HaproxyCommand, 'version'>;
  if (existsSync(where) && statSync(where).isFile()) command = { file: where, prefix: [] };
  else {
    const binary = path.join(where, 'usr/sbin/haproxy');
    const loader = rootLoader(where);
    if (!existsSync(binary) || !loader)
      throw new Error(
        `HAProxy 3.x is not installed: ${binary} or its dynamic loader is missing; ${install}.`,
      );
    command = { file: loader.file, prefix: ['--library-path', loader.libraryPath, binary] };
  }
  const version = versionOf(command.file, command.prefix);
  if (version === undefined)
    throw new Error(`HAProxy 3.x at ${where} does not run (\`haproxy -v\` failed); ${install}.`);
  if (!version.startsWith('3.')) throw new Error(`${where} is HAProxy ${version}, not 3.x; ${install}.`);
  return { ...command, version };
}

/** The dynamic loader of a root folder and the library directories it should search. */
function rootLoader(root: string): { file: string; libraryPath: string } | undefined {
  const lib = path.join(root, 'usr/lib');
  if (!existsSync(lib)) return undefined;
  for (const triplet of readdirSync(lib).filter((d) => d.endsWith('-linux-gnu'))) {
    const dir = path.join(lib, triplet);
    const ld = readdirSync(dir).find((f) => /^ld-linux[-\w.]*\.so\.\d+$/.test(f));
    if (ld)
      return { file: path.join(dir, ld), libraryPath: [dir, path.join(root, 'lib', triplet)].join(':') };
  }
  return undefined;
}

/** The series every SPOE test that runs real HAProxy is run against, oldest first. */
export const HAPROXY_SERIES: readonly HaproxySeries[] = [
  { name: 'HAProxy 2.6', find: haproxy26 },
  { name: 'HAProxy 3.x', find: haproxy3 },
];

/** True when `version` (`X.Y.Z`) is at least `major.minor`. */
export function versionAtLeast(version: string, major: number, minor: number): boolean {
  const [a = 0, b = 0] = version.split('.').map(Number);
  return a > major || (a === major && b >= minor);
}

/** A running HAProxy. */
/** A running HAProxy (its log is in `output()` when `log stderr` is configured). */
export type Haproxy = PeerProcess;

/**
 * Starts `haproxy` on `configFile` and waits until `readyPort` (a frontend of the config, on 127.0.0.1)
 * accepts connections. The config is checked first in zero-warning mode (`-dW`): a directive that a
 * series warns about (deprecated, ignored) fails the test instead of passing unnoticed. Registers
 * `t.after` to stop it.
 */
export async function startHaproxy(
  t: TestContext,
  haproxy: HaproxyCommand,
  configFile: string,
  readyPort: number,
): Promise<Haproxy> {
  const check = spawnSync(haproxy.file, [...haproxy.prefix, '-dW', '-c', '-f', configFile], {
    encoding: 'utf8',
  });
  if (check.status !== 0)
    throw new Error(
      `HAProxy ${haproxy.version}: haproxy -dW -c refused the config:\n${check.stdout}${check.stderr}`,
    );
  return startPeer(
    t,
    `HAProxy ${haproxy.version}`,
    haproxy.file,
    [...haproxy.prefix, '-db', '-f', configFile],
    {
      readyPort,
      killAfterMs: 3000,
      readyWithinMs: 15_000,
    },
  );
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
   * SPOE `timeout processing` (default 5s). While no agent connection can be made, HAProxy holds a
   * request this long before it gives up and the fail-closed rule refuses it.
   */
  processingTimeout?: string;
  /** Health-check the agent with `option spop-check` every 200ms (HELLO with `healthcheck` set). */
  healthCheck?: boolean;
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
  timeout server 30s${p.agentRetries === undefined ? '' : `\n  retries ${p.agentRetries}`}${p.healthCheck ? '\n  option spop-check' : ''}
  server agent 127.0.0.1:${p.agentPort}${p.healthCheck ? ' check inter 200ms rise 1 fall 1' : ''}
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

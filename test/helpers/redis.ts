/**
 * A real Redis for tests: `REDIS_URL` when set, else the one on 127.0.0.1:6379 when it answers, else a
 * `redis-server` started on a free port (set GATEHOUSE_TEST_OWN_REDIS=1 to always start one). A missing
 * `redis-server` fails loudly: tests never skip silently. Fault tests start a server of their own
 * (`startRedisServer`) that they can stop, continue, kill and restart on the same port.
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import { freePort } from './listen.js';

/** Answers true when a Redis at host:port replies to PING within `timeoutMs`. */
export function pingRedis(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    let data = '';
    const done = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      data += chunk.toString();
      if (data.includes('\r\n')) done(data.startsWith('+PONG'));
    });
    socket.on('error', () => done(false));
  });
}

let shared: Promise<string> | undefined;
let started: Guarded | undefined;

async function startOwnRedis(): Promise<string> {
  const port = await freePort();
  const server = spawnServer(port);
  const spawnError = new Promise<never>((_resolve, reject) => {
    void server.exited.then(() =>
      reject(
        new Error(
          'redis-server did not start: install Redis (e.g. `apt-get install redis-server`) or set REDIS_URL to a running Redis',
        ),
      ),
    );
  });
  spawnError.catch(() => undefined);
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const up = await Promise.race([pingRedis('127.0.0.1', port, 200), spawnError]);
    if (up) {
      started = server;
      return `redis://127.0.0.1:${port}`;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  await server.end();
  throw new Error(`redis-server on port ${port} did not answer PING within 10 s`);
}

/** The URL of a Redis for this test file (started once per test process, killed when it exits). */
export function redisUrl(): Promise<string> {
  shared ??= (async () => {
    const fromEnv = process.env.REDIS_URL;
    if (fromEnv) return fromEnv;
    if (process.env.GATEHOUSE_TEST_OWN_REDIS !== '1' && (await pingRedis('127.0.0.1', 6379))) {
      return 'redis://127.0.0.1:6379';
    }
    return startOwnRedis();
  })();
  return shared;
}

/** True when this file started its own redis-server (for diagnostics). */
export function ownsRedis(): boolean {
  return started !== undefined;
}

/** A redis-server of one test's own: it can hang (SIGSTOP), go away and come back on the same port. */
export interface OwnRedis {
  readonly url: string;
  readonly port: number;
  /** Freezes the server (SIGSTOP): connections stay open, nothing is answered. */
  stop(): void;
  /** Lets a stopped server run again (SIGCONT). */
  cont(): void;
  /** Kills the server (connections are refused from now on). */
  kill(): Promise<void>;
  /** Starts a server again on the same port (empty: nothing was saved). */
  restart(): Promise<void>;
  /** Kills the server for good. */
  close(): Promise<void>;
}

// redis-server runs under a shell that holds the test process's end of a pipe: when the test process
// ends in any way (even killed), the pipe closes and the shell kills the server, so none is left behind.
const GUARD =
  'redis-server "$@" >/dev/null 2>&1 & child=$!; echo $child; read _; kill -CONT $child; kill -9 $child; wait $child';

/** A guarded redis-server: its pid (for SIGSTOP/SIGCONT), and `end()` to stop it (resolves once gone). */
interface Guarded {
  pid: Promise<number>;
  exited: Promise<void>;
  end(): Promise<void>;
}

function spawnServer(port: number): Guarded {
  const proc = spawn(
    'sh',
    ['-c', GUARD, 'sh', '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: ['pipe', 'pipe', 'ignore'] },
  );
  const exited = new Promise<void>((resolve) => {
    proc.once('exit', () => resolve());
    proc.once('error', () => resolve());
  });
  const pid = new Promise<number>((resolve, reject) => {
    let out = '';
    proc.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      if (out.includes('\n')) resolve(Number(out.trim()));
    });
    void exited.then(() => reject(new Error('redis-server exited before it started')));
  });
  pid.catch(() => undefined);
  // Unreferenced so the test process can exit; the closing pipe then ends the server.
  proc.unref();
  (proc.stdin as unknown as { unref?: () => void }).unref?.();
  (proc.stdout as unknown as { unref?: () => void }).unref?.();
  return {
    pid,
    exited,
    async end() {
      proc.stdin?.end();
      // Held while waiting: with nothing else pending, an unreferenced child would let the event loop
      // run empty before `exited` settles.
      proc.ref();
      await exited;
    },
  };
}

async function answering(port: number, exited: Promise<void>): Promise<void> {
  let gone = false;
  void exited.then(() => {
    gone = true;
  });
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && !gone) {
    if (await pingRedis('127.0.0.1', port, 200)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`redis-server on port ${port} did not answer PING within 10 s (exited: ${gone})`);
}

/** Starts a redis-server on a free port for this test alone; `close()` it when done. */
export async function startRedisServer(): Promise<OwnRedis> {
  const port = await freePort();
  let current = spawnServer(port);
  await answering(port, current.exited);
  let pid = await current.pid;
  const signal = (name: NodeJS.Signals): void => {
    process.kill(pid, name);
  };
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    stop: () => signal('SIGSTOP'),
    cont: () => signal('SIGCONT'),
    kill: () => current.end(),
    async restart() {
      await current.end();
      current = spawnServer(port);
      await answering(port, current.exited);
      pid = await current.pid;
    },
    close: () => current.end(),
  };
}

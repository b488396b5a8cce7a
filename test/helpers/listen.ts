/**
 * A test's own TCP server on a free loopback port, for as long as the test runs: when it ends, the
 * connections still open are destroyed and the server closed.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import net from 'node:net';
import type { TestContext } from 'node:test';

/** Listens on 127.0.0.1 and a free port until `t` ends; returns the port. */
export async function listenUntilEnd(t: TestContext, server: net.Server): Promise<number> {
  const sockets = new Set<net.Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return (server.address() as net.AddressInfo).port;
}

/** A loopback port that was free a moment ago, for a server that must be told its port before it starts. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** True when something accepts connections on 127.0.0.1:`port`. */
export function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** A peer process a test started (HAProxy, nginx, Caddy, ...). */
export interface PeerProcess {
  readonly proc: ChildProcess;
  /** Everything it wrote to stdout and stderr. */
  output(): string;
  stop(): Promise<void>;
}

/**
 * Starts `bin args` and waits until `readyPort` accepts connections (at most `readyWithinMs`); it is
 * stopped with `stopSignal` (then SIGKILL after `killAfterMs`) when `t` ends. Throws with the process's
 * output when it exits or does not listen in time.
 */
export async function startPeer(
  t: TestContext,
  what: string,
  bin: string,
  args: readonly string[],
  opts: {
    readyPort: number;
    env?: NodeJS.ProcessEnv;
    stopSignal?: NodeJS.Signals;
    killAfterMs?: number;
    readyWithinMs?: number;
  },
): Promise<PeerProcess> {
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env });
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
  const peer: PeerProcess = {
    proc,
    output: () => out,
    async stop() {
      if (exited) return;
      proc.kill(opts.stopSignal ?? 'SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), opts.killAfterMs ?? 5000);
      await exit;
      clearTimeout(timer);
    },
  };
  t.after(() => peer.stop());
  const within = opts.readyWithinMs ?? 20_000;
  const deadline = Date.now() + within;
  while (!(await canConnect(opts.readyPort))) {
    if (exited) throw new Error(`${what} exited at start-up:\n${out}`);
    if (Date.now() > deadline)
      throw new Error(`${what} did not listen on ${opts.readyPort} within ${within / 1000}s:\n${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return peer;
}

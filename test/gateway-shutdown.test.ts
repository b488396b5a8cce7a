import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { test } from 'node:test';
import { ConfigError } from '../src/errors.js';
import { Gateway } from '../src/process/gateway.js';
import { get, memoryLogger, spawnCli, startBackend, tempDir, waitFor } from './helpers/gateway.js';

function configFor(url: string, drain = '10s'): string {
  return `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
server: { drainTimeout: ${drain} }
logging: { access: false }
upstreams:
  app: { servers: [{ url: "${url}" }] }
routes:
  - { name: all, upstream: app, public: true }
`;
}

/** Resolves true when a TCP connection to the port is refused. */
function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1' });
    socket.setTimeout(2000);
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('timeout', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
  });
}

test('SIGTERM: the request in flight completes (a SIGHUP during the drain changes nothing), new connections are refused, exit code 0', async (t) => {
  const d = tempDir();
  const backend = await startBackend('slow');
  const file = d.write('gh.yaml', configFor(backend.url));
  const child = spawnCli(['start', '-c', file]);
  let stdout = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
  });
  child.stderr?.resume();
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    await backend.close();
    d.remove();
  });
  await waitFor(() => stdout.includes('"gateway started"'), 20_000, 'the gateway to start');
  const line = stdout.split('\n').find((l) => l.includes('"gateway started"'))!;
  const address = (JSON.parse(line) as { listeners: Array<{ address: string }> }).listeners[0]!.address;
  const port = Number(address.split(':').pop());

  const slow = get(`http://127.0.0.1:${port}/slow?ms=1500`);
  await waitFor(() => backend.hits === 1, 10_000, 'the slow request to reach the backend');
  child.kill('SIGTERM');
  await waitFor(() => refused(port), 10_000, 'the listener to stop accepting');
  // A hang-up during the drain (a closed terminal) must not end the process before the drain does.
  child.kill('SIGHUP');
  const res = await slow;
  assert.equal(res.status, 200);
  assert.equal(res.body.backend, 'slow');
  assert.equal(await exited, 0);
});

test('shutdown() drains requests in flight and is bounded by drainTimeout', async (t) => {
  const d = tempDir();
  const backend = await startBackend('slow');
  t.after(async () => {
    await backend.close();
    d.remove();
  });
  const gw = await Gateway.start({
    configFile: d.write('gh.yaml', configFor(backend.url, '300ms')),
    logger: memoryLogger().logger,
    watch: false,
  });
  const port = gw.address('plain')!.port;
  // This request would take far longer than the drain timeout allows.
  const stuck = get(`http://127.0.0.1:${port}/slow?ms=30000`).catch((err: unknown) => err);
  await waitFor(() => backend.hits === 1, 10_000, 'the request to reach the backend');
  await gw.shutdown();
  await gw.shutdown(); // idempotent
  assert.ok(await refused(port));
  const outcome = await stuck;
  assert.ok(outcome instanceof Error || (outcome as { status: number }).status >= 500, String(outcome));
});

test('start() throws ConfigError for an invalid config and leaves nothing running', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write(
    'gh.yaml',
    'listeners: [{ name: plain, bind: 127.0.0.1:0 }]\nroutes: [{ name: r, upstream: nope }]\n',
  );
  await assert.rejects(Gateway.start({ configFile: file, logger: memoryLogger().logger }), (err: unknown) => {
    assert.ok(err instanceof ConfigError);
    assert.equal(err.code, 'GH_CONFIG_INVALID');
    assert.deepEqual(
      err.problems.map((p) => p.path),
      ['routes.0.upstream'],
    );
    return true;
  });
});

test('the CLI reports an invalid config at start without a stack trace and exits 1', async (t) => {
  const d = tempDir();
  t.after(() => d.remove());
  const file = d.write('gh.yaml', 'listeners: [{ name: plain, bind: 127.0.0.1:0, extra: true }]\n');
  const child = spawnCli(['start', '-c', file]);
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => {
    stderr += c.toString();
  });
  child.stdout?.resume();
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  clearTimeout(timer);
  assert.equal(code, 1);
  assert.equal(
    stderr,
    `${file}: listeners.0.extra: unknown key\n${file}: configuration is invalid, not starting\n`,
  );
});

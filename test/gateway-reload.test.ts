import assert from 'node:assert/strict';
import { type AddressInfo, createServer } from 'node:net';
import { test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { Pool } from 'undici';
import { registry } from '../src/observe/metrics.js';
import { Gateway } from '../src/process/gateway.js';
import {
  get,
  memoryLogger,
  selfSigned,
  spawnCli,
  startBackend,
  type TestBackend,
  tempDir,
  waitFor,
} from './helpers/gateway.js';

/** A config with one listener, the given upstreams and routes (path prefix → upstream). */
function config(
  upstreams: Record<string, TestBackend[]>,
  routes: Array<[name: string, path: string, upstream: string]>,
  extra = '',
): string {
  const ups = Object.entries(upstreams)
    .map(
      ([name, backends]) =>
        `  ${name}:\n    servers: [${backends.map((b) => `{ url: "${b.url}" }`).join(', ')}]`,
    )
    .join('\n');
  const rs = routes
    .map(
      ([name, path, upstream]) =>
        `  - { name: ${name}, match: { path: "${path}" }, upstream: ${upstream}, public: true }`,
    )
    .join('\n');
  return `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
server: { drainTimeout: 5s }
logging: { access: false }
upstreams:
${ups}
routes:
${rs}
${extra}`;
}

function origin(gw: Gateway): string {
  const a = gw.address('plain');
  assert.ok(a, 'listener plain is bound');
  return `http://127.0.0.1:${a.port}`;
}

async function metricValue(name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  const v = m?.values.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
  return Number(v?.value ?? 0);
}

test('reload() swaps routes and upstreams; a rejected reload keeps the running config', async (t) => {
  const d = tempDir();
  const a = await startBackend('a');
  const b = await startBackend('b');
  const { logger, lines } = memoryLogger();
  const file = d.write('gh.yaml', config({ one: [a] }, [['all', '/', 'one']]));
  const gw = await Gateway.start({ configFile: file, logger, watch: false });
  t.after(async () => {
    await gw.shutdown();
    await Promise.all([a.close(), b.close()]);
    d.remove();
  });
  const base = origin(gw);
  assert.deepEqual((await get(`${base}/x`)).body, { backend: 'a', path: '/x', authorization: null });
  assert.equal(gw.runtime.generation, 1);

  d.write('gh.yaml', config({ two: [b] }, [['all', '/', 'two']]));
  assert.deepEqual(await gw.reload(), { ok: true, generation: 2 });
  assert.equal((await get(`${base}/x`)).body.backend, 'b');
  assert.equal(await metricValue('gatehouse_config_generation'), 2);

  const rejectedBefore = await metricValue('gatehouse_config_reloads_total', { result: 'rejected' });
  d.write('gh.yaml', `${config({ two: [b] }, [['all', '/', 'missing']])}\nbogus: 1\n`);
  const result = await gw.reload();
  assert.equal(result.ok, false);
  assert.ok(!result.ok);
  assert.deepEqual(
    result.problems.map((p) => `${p.path}: ${p.message}`),
    ['bogus: unknown key', 'routes.0.upstream: unknown upstream "missing" (defined: two)'],
  );
  // Each problem is one log line, and the old configuration still serves.
  assert.ok(lines.some((l) => l.msg === `${file}: bogus: unknown key` && l.level === 50));
  assert.equal(gw.runtime.generation, 2);
  assert.equal((await get(`${base}/x`)).body.backend, 'b');
  assert.equal(
    await metricValue('gatehouse_config_reloads_total', { result: 'rejected' }),
    rejectedBefore + 1,
  );
});

/** A TCP server holding `host:port` (port 0: any free one), to make a bind fail. */
async function holdPort(host: string, port = 0): Promise<{ port: number; close: () => Promise<void> }> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

test('a reload whose listener cannot bind keeps the running listeners open', async (t) => {
  const d = tempDir();
  const a = await startBackend('a');
  const busy = await holdPort('127.0.0.1');
  const file = d.write('gh.yaml', config({ one: [a] }, [['all', '/', 'one']]));
  const gw = await Gateway.start({ configFile: file, logger: memoryLogger().logger, watch: false });
  t.after(async () => {
    await gw.shutdown();
    await Promise.all([a.close(), busy.close()]);
    d.remove();
  });
  const base = origin(gw);
  // The listener moved to a port another process holds: the reload is refused...
  d.write(
    'gh.yaml',
    config({ one: [a] }, [['all', '/', 'one']]).replace('127.0.0.1:0', `127.0.0.1:${busy.port}`),
  );
  const result = await gw.reload();
  assert.equal(result.ok, false);
  assert.match(result.ok ? '' : result.problems[0]!.message, /EADDRINUSE/);
  // ...and the running configuration's listener still answers.
  assert.equal((await get(`${base}/x`)).body.backend, 'a');
  assert.equal(origin(gw), base);
});

test('a reload that moves a listener to a port it cannot take over reopens the old listener', async (t) => {
  const d = tempDir();
  const a = await startBackend('a');
  const free = await holdPort('127.0.0.1');
  await free.close();
  // 127.0.0.2 holds the port the renamed listener asks for, which the running one holds on 127.0.0.1.
  const busy = await holdPort('127.0.0.2', free.port);
  const file = d.write(
    'gh.yaml',
    config({ one: [a] }, [['all', '/', 'one']]).replace('127.0.0.1:0', `127.0.0.1:${free.port}`),
  );
  const gw = await Gateway.start({ configFile: file, logger: memoryLogger().logger, watch: false });
  t.after(async () => {
    await gw.shutdown();
    await Promise.all([a.close(), busy.close()]);
    d.remove();
  });
  const base = origin(gw);
  d.write(
    'gh.yaml',
    config({ one: [a] }, [['all', '/', 'one']]).replace(
      '{ name: plain, bind: 127.0.0.1:0 }',
      `{ name: plain, bind: "127.0.0.2:${free.port}" }`,
    ),
  );
  const result = await gw.reload();
  assert.equal(result.ok, false);
  assert.equal(gw.runtime.generation, 1);
  assert.equal((await get(`${base}/x`)).body.backend, 'a');
});

test('concurrent reload() calls are serialized and coalesced', async (t) => {
  const d = tempDir();
  const a = await startBackend('a');
  const file = d.write('gh.yaml', config({ one: [a] }, [['all', '/', 'one']]));
  const gw = await Gateway.start({ configFile: file, logger: memoryLogger().logger, watch: false });
  t.after(async () => {
    await gw.shutdown();
    await a.close();
    d.remove();
  });
  const results = await Promise.all([gw.reload(), gw.reload(), gw.reload(), gw.reload(), gw.reload()]);
  // The first runs at once; the four made meanwhile share one follow-up reload.
  assert.deepEqual(
    results.map((r) => (r.ok ? r.generation : -1)),
    [2, 3, 3, 3, 3],
  );
});

test('a change to the config file or to a secret file reloads (debounced)', async (t) => {
  const d = tempDir();
  const a = await startBackend('a');
  const b = await startBackend('b');
  d.write('secrets/token', 'one\n');
  const inject = (name: string): string =>
    config({ [name]: [name === 'up-a' ? a : b] }, [['all', '/', name]]).replace(
      /servers: \[(.*)\]/,
      'servers: [$1]\n    inject: { headers: { Authorization: "Bearer ${file:secrets/token}" } }',
    );
  const file = d.write('gh.yaml', inject('up-a'));
  const gw = await Gateway.start({ configFile: file, logger: memoryLogger().logger, watchDebounceMs: 50 });
  t.after(async () => {
    await gw.shutdown();
    await Promise.all([a.close(), b.close()]);
    d.remove();
  });
  const base = origin(gw);
  assert.deepEqual((await get(`${base}/`)).body, { backend: 'a', path: '/', authorization: 'Bearer one' });

  // Editors often write a new file and rename it over the old one.
  d.write('gh.yaml.tmp', inject('up-b'));
  const { renameSync } = await import('node:fs');
  renameSync(d.file('gh.yaml.tmp'), file);
  await waitFor(() => gw.runtime.generation >= 2, 10_000, 'reload after the config file changed');
  assert.equal((await get(`${base}/`)).body.backend, 'b');

  const generation = gw.runtime.generation;
  d.write('secrets/token', 'two\n');
  await waitFor(() => gw.runtime.generation > generation, 10_000, 'reload after the secret file changed');
  assert.equal((await get(`${base}/`)).body.authorization, 'Bearer two');
});

test('an in-flight request finishes on its runtime after a reload removed its route and upstream', async (t) => {
  const d = tempDir();
  const a = await startBackend('a');
  const slow = await startBackend('slow');
  const file = d.write(
    'gh.yaml',
    config({ main: [a], slowpool: [slow] }, [
      ['all', '/', 'main'],
      ['slow', '/slow', 'slowpool'],
    ]),
  );
  const gw = await Gateway.start({ configFile: file, logger: memoryLogger().logger, watch: false });
  t.after(async () => {
    await gw.shutdown();
    await Promise.all([a.close(), slow.close()]);
    d.remove();
  });
  const base = origin(gw);
  const inFlight = get(`${base}/slow?ms=800`);
  await waitFor(() => slow.hits === 1, 10_000, 'the slow request to reach its backend');
  d.write('gh.yaml', config({ main: [a] }, [['all', '/', 'main']]));
  assert.deepEqual(await gw.reload(), { ok: true, generation: 2 });
  assert.equal(gw.runtime.upstreams.has('slowpool'), false);
  // New requests take the new routes; the old one completes through the retired upstream.
  assert.equal((await get(`${base}/slow?ms=1`)).body.backend, 'a');
  const done = await inFlight;
  assert.equal(done.status, 200);
  assert.equal(done.body.backend, 'slow');
});

test('reload under concurrent keep-alive load fails no request', async (t) => {
  const d = tempDir();
  const backends = await Promise.all(['a', 'b', 'c'].map(startBackend));
  const [a, b, c] = backends as [TestBackend, TestBackend, TestBackend];
  const variants = [
    config({ first: [a, b] }, [['all', '/', 'first']]),
    config({ second: [c] }, [
      ['all', '/', 'second'],
      ['api', '/api/', 'second'],
    ]),
    config({ first: [a] }, [
      ['all', '/', 'first'],
      ['more', '/more', 'first'],
    ]),
    config({ first: [b, c], second: [a] }, [
      ['all', '/', 'first'],
      ['api', '/api/', 'second'],
    ]),
  ];
  const file = d.write('gh.yaml', variants[0]!);
  const gw = await Gateway.start({ configFile: file, logger: memoryLogger().logger, watch: false });
  const pool = new Pool(origin(gw), { connections: 20, pipelining: 1 });
  t.after(async () => {
    await pool.close();
    await gw.shutdown();
    await Promise.all(backends.map((x) => x.close()));
    d.remove();
  });

  let stop = false;
  let ok = 0;
  const failures: string[] = [];
  const client = async (i: number): Promise<void> => {
    while (!stop) {
      try {
        const res = await pool.request({
          method: 'GET',
          path: i % 2 === 0 ? `/item/${i}` : `/api/${i}`,
          signal: AbortSignal.timeout(10_000),
        });
        const body = await res.body.text();
        if (res.statusCode === 200) ok++;
        else failures.push(`${res.statusCode} ${body}`);
      } catch (err) {
        failures.push(String(err));
      }
    }
  };
  const clients = Array.from({ length: 20 }, (_, i) => client(i));
  const generations: number[] = [];
  try {
    for (let i = 1; i <= 12; i++) {
      // Each configuration serves real traffic before the next reload replaces it.
      const before = ok;
      await new Promise((r) => setTimeout(r, 150));
      await waitFor(() => ok >= before + 20 || failures.length > 0, 20_000, 'requests between reloads');
      d.write('gh.yaml', variants[i % variants.length]!);
      const r = await gw.reload();
      assert.ok(r.ok, JSON.stringify(r));
      generations.push(r.generation);
    }
    const last = ok;
    await waitFor(() => ok >= last + 20 || failures.length > 0, 20_000, 'requests after the last reload');
  } finally {
    stop = true;
    await Promise.all(clients);
  }
  assert.deepEqual(failures.slice(0, 5), [], `${failures.length} failed requests`);
  assert.equal(generations.at(-1), 13);
  assert.ok(ok >= 13 * 20);
  // Every backend took part at some point, so the reloads really changed where requests went.
  for (const x of backends) assert.ok(x.hits > 0, `${x.name} was never used`);
});

test('SIGHUP reloads a gateway started by the CLI', async (t) => {
  const d = tempDir();
  const a = await startBackend('a');
  const b = await startBackend('b');
  const file = d.write('gh.yaml', config({ one: [a] }, [['all', '/', 'one']]));
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
    await Promise.all([a.close(), b.close()]);
    d.remove();
  });
  const logs = (): Array<Record<string, unknown>> =>
    stdout
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  await waitFor(() => logs().some((l) => l.msg === 'gateway started'), 20_000, 'the gateway to start');
  const started = logs().find((l) => l.msg === 'gateway started') as {
    listeners: Array<{ address: string }>;
  };
  const base = `http://${started.listeners[0]!.address}`;
  assert.equal((await get(`${base}/`)).body.backend, 'a');

  // The file watcher may reload too; the SIGHUP handler must log and reload on its own.
  d.write('gh.yaml', config({ two: [b] }, [['all', '/', 'two']]));
  child.kill('SIGHUP');
  await waitFor(
    () => logs().some((l) => l.msg === 'SIGHUP received: reloading'),
    10_000,
    'SIGHUP to be logged',
  );
  await waitFor(async () => (await get(`${base}/`)).body.backend === 'b', 10_000, 'the new config to serve');

  child.kill('SIGTERM');
  assert.equal(await exited, 0);
});

/** The common name of the certificate an HTTPS listener presents for `servername`. */
function presentedName(port: number, servername: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ port, host: '127.0.0.1', servername, rejectUnauthorized: false }, () => {
      const cn = socket.getPeerCertificate().subject?.CN;
      socket.destroy();
      resolve(String(cn));
    });
    socket.setTimeout(5000, () => socket.destroy(new Error('TLS handshake timed out')));
    socket.once('error', reject);
  });
}

test('certificates are re-read when their files change', async (t) => {
  const d = tempDir();
  const a = await startBackend('a');
  const first = selfSigned('first.example.com', ['localhost']);
  const second = selfSigned('second.example.com', ['localhost']);
  d.write('certs/site.pem', first.cert);
  d.write('certs/site-key.pem', first.key);
  const file = d.write(
    'gh.yaml',
    config({ one: [a] }, [['all', '/', 'one']]).replace(
      'listeners: [{ name: plain, bind: 127.0.0.1:0 }]',
      `listeners:
  - name: plain
    bind: 127.0.0.1:0
    tls: { certificates: [{ cert: file:certs/site.pem, key: file:certs/site-key.pem }] }`,
    ),
  );
  const gw = await Gateway.start({ configFile: file, logger: memoryLogger().logger, watchDebounceMs: 50 });
  t.after(async () => {
    await gw.shutdown();
    await a.close();
    d.remove();
  });
  const port = gw.address('plain')!.port;
  assert.equal(await presentedName(port, 'localhost'), 'first.example.com');
  // Written one after the other: a reload that sees a mismatched pair is rejected, the next one succeeds.
  d.write('certs/site-key.pem', second.key);
  d.write('certs/site.pem', second.cert);
  await waitFor(
    async () => (await presentedName(port, 'localhost')) === 'second.example.com',
    10_000,
    'the new certificate',
  );
  assert.ok(gw.runtime.generation >= 2);
});

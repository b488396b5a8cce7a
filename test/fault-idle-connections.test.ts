/**
 * 10,000 idle keep-alive connections held against a gateway process: each made one request and stays
 * open. Normal requests must still be answered while they are held, none of them may be dropped, and the
 * gateway's resident memory is read from /proc and reported (per 1,000 connections too). The only bound
 * asserted on memory is a generous ceiling that catches a leak, not a tuning target.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Agent } from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { type GatehouseProcess, send, spawnGatehouse, startRecordingBackend } from './helpers/cluster.js';
import { ROOT, tempDir } from './helpers/gateway.js';

const CONNECTIONS = 10_000;
const CEILING_MB = 400;

/** Resident set size of a process in MiB, from /proc/PID/status (VmRSS). */
function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (m === null) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) / 1024;
}

/**
 * Open file descriptors a Node.js process started from here can have: Node raises its soft limit to
 * the hard one at start-up, so the hard limit (`ulimit -Hn`) is what counts for both processes.
 */
function fdLimit(): number {
  const out = execFileSync('sh', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).trim();
  return out === 'unlimited' ? Number.POSITIVE_INFINITY : Number(out);
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

/**
 * The gateway as users run it (plain JavaScript, bin/gatehouse's flags) rather than under the tsx
 * loader, whose compiler would add ~30 MiB to the figure: the sources transpiled by esbuild (tsx's own
 * compiler) into a directory under the checkout, so that node_modules resolves. Undefined without it.
 */
function compiledProgram(): { program: string; remove(): void } | undefined {
  const esbuild = path.join(ROOT, 'node_modules/esbuild/bin/esbuild');
  if (!existsSync(esbuild)) return undefined;
  const out = path.join(ROOT, `.tmp/fault-idle-${process.pid}`);
  execFileSync(
    esbuild,
    [
      ...sources(path.join(ROOT, 'src')),
      `--outdir=${out}`,
      '--format=esm',
      '--platform=node',
      '--log-level=warning',
    ],
    { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] },
  );
  const program = path.join(out, 'gatehouse');
  writeFileSync(
    program,
    `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} --single-threaded-gc ${JSON.stringify(path.join(out, 'cli/run.js'))} "$@"\n`,
  );
  chmodSync(program, 0o755);
  return { program, remove: () => rmSync(out, { recursive: true, force: true }) };
}

/** Opens a connection, sends one keep-alive request, resolves once the whole answer arrived. */
function idleConnection(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let text = '';
    const onData = (d: Buffer): void => {
      text += d.toString('latin1');
      const head = text.indexOf('\r\n\r\n');
      if (head === -1) return;
      const length = /content-length: (\d+)/i.exec(text.slice(0, head));
      if (length !== null && text.length - head - 4 >= Number(length[1])) {
        socket.off('data', onData);
        if (!text.startsWith('HTTP/1.1 200')) reject(new Error(`answer: ${text.slice(0, 40)}`));
        else resolve(socket);
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.once('connect', () => socket.write('GET /idle HTTP/1.1\r\nHost: app.test\r\n\r\n'));
  });
}

test('10,000 idle keep-alive connections are held while normal requests are answered; gateway RSS reported', {
  timeout: 300_000,
}, async (t) => {
  const limit = fdLimit();
  // The test process and the gateway each hold one descriptor per connection, plus their own.
  if (limit < CONNECTIONS + 500) {
    t.skip(
      `needs ulimit -n of at least ${CONNECTIONS + 500} (it is ${limit}); raise the hard limit to run this test`,
    );
    return;
  }
  const d = tempDir();
  const backend = await startRecordingBackend('app');
  const file = d.write(
    'gatehouse.yaml',
    `listeners: [{ name: plain, bind: 127.0.0.1:0 }]
server: { keepAliveTimeout: 10m }
logging: { access: false }
upstreams:
  app: { servers: [{ url: "${backend.url}" }] }
routes:
  - { name: all, upstream: app, public: true }
`,
  );
  const compiled = compiledProgram();
  const gh: GatehouseProcess = spawnGatehouse(file, compiled?.program);
  const sockets: net.Socket[] = [];
  t.after(async () => {
    for (const s of sockets) s.destroy();
    await gh.kill();
    await backend.close();
    compiled?.remove();
    d.remove();
  });
  const started = await gh.waitForLog((l) => l.msg === 'gateway started', 'the gateway to start', {
    ms: 60_000,
  });
  const port = Number(
    String((started.listeners as Array<{ address: string }>)[0]!.address)
      .split(':')
      .pop(),
  );
  const pid = gh.child.pid!;
  const agent = new Agent({ keepAlive: true, maxSockets: 4 });
  t.after(() => agent.destroy());
  // Warm up (code paths compiled, pools open) before the baseline.
  for (let i = 0; i < 200; i++) assert.equal((await send(port, '/warm', agent)).status, 200);
  const baseline = rssMiB(pid);

  const steps: string[] = [];
  let dropped = 0;
  for (let opened = 0; opened < CONNECTIONS; ) {
    const batch = Math.min(500, CONNECTIONS - opened);
    const more = await Promise.all(Array.from({ length: batch }, () => idleConnection(port)));
    for (const s of more) {
      s.once('close', () => dropped++);
      s.on('error', () => {});
      sockets.push(s);
    }
    opened += batch;
    if (opened % 1000 === 0) steps.push(`${opened}: ${rssMiB(pid).toFixed(0)} MiB`);
  }
  // Normal traffic while they are all held.
  for (let i = 0; i < 200; i++) {
    const r = await send(port, `/normal/${i}`, agent);
    assert.equal(r.status, 200);
  }
  await new Promise((r) => setTimeout(r, 2000));
  const held = rssMiB(pid);
  const perThousand = ((held - baseline) * 1000) / CONNECTIONS;
  const how = compiled === undefined ? 'under tsx' : 'compiled, --single-threaded-gc';
  const report = `gateway (${how}) RSS: ${baseline.toFixed(0)} MiB at rest, ${held.toFixed(0)} MiB with ${CONNECTIONS} idle connections (${perThousand.toFixed(2)} MiB per 1,000); ${steps.join(', ')}`;
  t.diagnostic(report);
  console.log(report);
  assert.equal(dropped, 0, 'no idle connection was closed by the gateway');
  assert.equal(sockets.filter((s) => s.destroyed).length, 0);
  assert.ok(
    held < CEILING_MB,
    `gateway RSS ${held.toFixed(0)} MiB stays under the ${CEILING_MB} MiB leak ceiling`,
  );
  assert.ok(held > baseline, 'the figure measures the connections');
});

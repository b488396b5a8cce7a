/**
 * The syslog sink against Debian's real rsyslog, started by the test: RFC 5424 over UDP and over TCP
 * with octet counting, parsed by rsyslog (APP-NAME, MSGID, PROCID, HOSTNAME, PRI, the JSON intact), and
 * a TCP outage that buffers, counts what it had to drop, and delivers once rsyslog is back.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { type TestContext, test } from 'node:test';
import { parseSyslogAddress, SyslogAddressError } from '../src/observe/audit/syslog.js';
import { accessEvent, fileLines, openTrail } from './helpers/audit.js';
import { tempDir, waitFor } from './helpers/gateway.js';
import { freePort } from './helpers/listen.js';

/** The rsyslogd binary: RSYSLOGD_PATH, else `rsyslogd` on the PATH or in /usr/sbin; loud when missing. */
function rsyslogBinary(): string {
  for (const bin of [process.env.RSYSLOGD_PATH, 'rsyslogd', '/usr/sbin/rsyslogd']) {
    if (!bin) continue;
    const r = spawnSync(bin, ['-v'], { encoding: 'utf8' });
    if (r.status === 0 && /rsyslogd\s+\d/.test(r.stdout)) return bin;
  }
  throw new Error(
    'rsyslog is not installed: this test runs against the real rsyslogd. Install it with `apt-get install rsyslog` (or set RSYSLOGD_PATH).',
  );
}

/** A free UDP port on 127.0.0.1. */
function freeUdpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    s.on('error', reject);
    s.bind(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** One message as rsyslog parsed it. */
interface Received {
  appName: string;
  msgId: string;
  procId: string;
  hostname: string;
  pri: string;
  time: string;
  msg: string;
}

interface Rsyslog {
  out: string;
  received(): Received[];
  stop(): Promise<void>;
}

/** Starts rsyslogd in the foreground with imudp and imtcp on the given ports, writing what it parsed to a file. */
async function startRsyslog(
  t: TestContext,
  dir: string,
  ports: { udp: number; tcp: number },
  name = 'rsyslog',
): Promise<Rsyslog> {
  const bin = rsyslogBinary();
  const out = `${dir}/received.log`;
  const conf = `${dir}/${name}.conf`;
  writeFileSync(
    conf,
    `global(workDirectory="${dir}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="${ports.udp}")
input(type="imtcp" address="127.0.0.1" port="${ports.tcp}")
template(name="parsed" type="string" string="%app-name% %msgid% %procid% %hostname% %pri% %timereported:::date-rfc3339% %msg%\\n")
action(type="omfile" file="${out}" template="parsed")
`,
  );
  const proc: ChildProcess = spawn(bin, ['-n', '-f', conf, '-i', `${dir}/${name}.pid`], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  proc.stdout?.on('data', (b: Buffer) => {
    output += b.toString();
  });
  proc.stderr?.on('data', (b: Buffer) => {
    output += b.toString();
  });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      await exited;
    }
  };
  t.after(stop);
  await waitFor(
    () =>
      new Promise<boolean>((resolve) => {
        if (proc.exitCode !== null) throw new Error(`rsyslogd exited: ${output}`);
        const s = net.connect(ports.tcp, '127.0.0.1');
        s.once('connect', () => {
          s.destroy();
          resolve(true);
        });
        s.once('error', () => resolve(false));
      }),
    10_000,
    `rsyslogd listening (${output})`,
  );
  const received = (): Received[] => {
    if (!existsSync(out)) return [];
    return readFileSync(out, 'utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => {
        const parts = l.split(' ');
        const [appName, msgId, procId, hostname, pri, time] = parts as [
          string,
          string,
          string,
          string,
          string,
          string,
        ];
        return { appName, msgId, procId, hostname, pri, time, msg: parts.slice(6).join(' ') };
      });
  };
  return { out, received, stop };
}

test('syslog: RFC 5424 over UDP and over TCP (octet counting), as rsyslog parses it', async (t) => {
  const d = tempDir('gatehouse-audit-syslog-');
  t.after(() => d.remove());
  const ports = { udp: await freeUdpPort(), tcp: await freePort() };
  const rsyslog = await startRsyslog(t, d.dir, ports);

  for (const transport of ['udp', 'tcp'] as const) {
    const file = d.file(`${transport}.jsonl`);
    const { trail } = await openTrail(file, {
      syslog: {
        address: `${transport}://127.0.0.1:${ports[transport]}`,
        appName: `gh-${transport}`,
        hostname: 'gw 1',
        maxDatagram: 2048,
      },
    });
    if (transport === 'udp') {
      // Datagrams sent before rsyslog's UDP input is up are lost: probe until one arrives.
      await waitFor(
        async () => {
          trail.record({ event: 'probe', code: 'probe.sent' });
          await trail.flush();
          await new Promise((r) => setTimeout(r, 50));
          return rsyslog.received().some((m) => m.appName === 'gh-udp');
        },
        10_000,
        'rsyslog receiving UDP',
      );
    }
    trail.record(accessEvent(1, { path: '/caf\u00e9?q=1 2' }));
    trail.record(accessEvent(3));
    trail.record(accessEvent(5, { big: 'x'.repeat(4000) }));
    await trail.close();
    const lines = fileLines(file);
    await waitFor(
      () => rsyslog.received().filter((m) => m.appName === `gh-${transport}`).length >= lines.length,
      10_000,
      `rsyslog receiving every ${transport} message`,
    );
    const got = rsyslog.received().filter((m) => m.appName === `gh-${transport}`);
    for (const m of got) {
      assert.equal(m.procId, String(process.pid));
      assert.equal(m.hostname, 'gw_1', 'a space in HOSTNAME is replaced (RFC 5424 PRINTUSASCII)');
    }
    const bySeq = new Map(got.map((m) => [(JSON.parse(m.msg) as { seq: number }).seq, m]));
    for (const line of lines) {
      const rec = JSON.parse(line) as Record<string, unknown>;
      const m = bySeq.get(rec.seq as number);
      assert.ok(m, `${transport}: seq ${rec.seq} was received`);
      assert.equal(m.msgId, rec.event, 'MSGID is the event name');
      // Facility 13 (log audit); severity 5 (notice) for a refusal, 6 (informational) otherwise.
      assert.equal(m.pri, rec.code === 'access.refused' ? '109' : '110');
      assert.equal(new Date(m.time).toISOString(), rec.time, 'TIMESTAMP is the event time');
      if (transport === 'udp' && rec.big !== undefined) {
        const stub = JSON.parse(m.msg) as Record<string, unknown>;
        assert.deepEqual(
          [stub.seq, stub.prev, stub.requestId, stub.code, stub.truncated, stub.size],
          [rec.seq, rec.prev, 'req-5', 'access.allowed', true, Buffer.byteLength(line)],
          'an event too large for a datagram is sent as a stub that points at the file line',
        );
      } else {
        assert.equal(m.msg, line, `${transport}: the JSON line arrives intact`);
      }
    }
    if (transport === 'udp') assert.equal(trail.stats().sinks.syslog!.truncated, 1);
  }
});

test('syslog over TCP: an outage buffers, overflow is counted, and delivery resumes with an audit.overflow event', async (t) => {
  const d = tempDir('gatehouse-audit-syslog-');
  t.after(() => d.remove());
  const ports = { udp: await freeUdpPort(), tcp: await freePort() };
  const file = d.file('audit.jsonl');
  // Nothing listens yet: the sink keeps the events and retries with backoff.
  const { trail, logs } = await openTrail(file, {
    bufferLimit: 6,
    syslog: { address: `tcp://127.0.0.1:${ports.tcp}`, appName: 'gh' },
  });
  t.after(() => trail.close());
  const tick = () => new Promise((r) => setTimeout(r, 5));
  for (let i = 0; i < 12; i++) {
    trail.record(accessEvent(i));
    await tick(); // the file keeps up; only syslog is behind
  }
  const down = trail.stats().sinks.syslog!;
  assert.equal(down.buffered, 6, 'the open checkpoint and five events are held');
  assert.equal(down.dropped, 7);
  assert.equal(down.written, 0);
  assert.equal(trail.stats().sinks.file!.dropped, 0);
  await waitFor(
    () => logs.some((l) => l.msg === 'audit syslog unreachable; buffering and retrying'),
    5000,
    'a log line',
  );

  const rsyslog = await startRsyslog(t, d.dir, ports);
  const overflowSeen = () =>
    rsyslog
      .received()
      .some((m) => m.msg.includes('"code":"audit.overflow"') && m.msg.includes('"sink":"syslog"'));
  await waitFor(overflowSeen, 15_000, 'the buffered events and the overflow event at rsyslog');
  trail.record(accessEvent(100));
  await trail.flush();
  await waitFor(() => rsyslog.received().some((m) => m.msg.includes('"req-100"')), 10_000, 'a later event');

  const msgs = rsyslog.received().map((m) => JSON.parse(m.msg) as Record<string, unknown>);
  assert.deepEqual(
    msgs.filter((m) => m.event === 'access').map((m) => m.requestId),
    ['req-0', 'req-1', 'req-2', 'req-3', 'req-4', 'req-100'],
  );
  const overflow = msgs.find((m) => m.code === 'audit.overflow')!;
  assert.equal(overflow.dropped, 7);
  // The file, the chain of record, has every event and the overflow note.
  const fileRecs = fileLines(file).map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(fileRecs.filter((r) => r.event === 'access').length, 13);
  assert.ok(fileRecs.some((r) => r.code === 'audit.overflow' && r.sink === 'syslog' && r.dropped === 7));

  // rsyslog goes away and comes back: what is recorded meanwhile is delivered.
  await rsyslog.stop();
  await new Promise((r) => setTimeout(r, 300));
  trail.record(accessEvent(200));
  await tick();
  const again = await startRsyslog(t, d.dir, ports, 'rsyslog2');
  await waitFor(
    () => again.received().some((m) => m.msg.includes('"req-200"')),
    15_000,
    'delivery after restart',
  );
  await trail.close();
  assert.equal(trail.stats().sinks.syslog!.buffered, 0);
});

test('syslog addresses and settings are checked', async () => {
  assert.deepEqual(parseSyslogAddress('udp://127.0.0.1:514'), {
    protocol: 'udp',
    host: '127.0.0.1',
    port: 514,
  });
  assert.deepEqual(parseSyslogAddress('tcp://[::1]:6514'), { protocol: 'tcp', host: '::1', port: 6514 });
  assert.deepEqual(parseSyslogAddress('tcp://logs.example.com:514'), {
    protocol: 'tcp',
    host: 'logs.example.com',
    port: 514,
  });
  for (const bad of [
    'udp://host',
    'http://h:1',
    'tcp://h:0',
    'tcp://h:70000',
    'udp://:514',
    '127.0.0.1:514',
  ]) {
    assert.throws(
      () => parseSyslogAddress(bad),
      (e: unknown) => e instanceof SyslogAddressError && e.code === 'GH_AUDIT_SYSLOG_ADDRESS',
      bad,
    );
  }
  await assert.rejects(
    openTrail(undefined, { syslog: { address: 'udp://127.0.0.1:514', facility: 24 } }),
    (e: unknown) => e instanceof SyslogAddressError,
  );
});

test('close() does not wait beyond closeTimeoutMs for a syslog receiver that is down; the file has everything', async (t) => {
  const d = tempDir('gatehouse-audit-syslog-');
  t.after(() => d.remove());
  const port = await freePort();
  const file = d.file('audit.jsonl');
  const { trail, logs } = await openTrail(file, {
    closeTimeoutMs: 300,
    syslog: { address: `tcp://127.0.0.1:${port}` },
  });
  for (let i = 0; i < 5; i++) trail.record(accessEvent(i));
  const started = Date.now();
  await trail.close();
  assert.ok(Date.now() - started < 3000, `close took ${Date.now() - started} ms`);
  const s = trail.stats().sinks.syslog!;
  assert.equal(s.buffered, 0);
  assert.equal(s.dropped, 7, 'the open checkpoint, five events and the close checkpoint');
  assert.ok(logs.some((l) => l.msg === 'audit sink could not write its events before close' && l.lost === 7));
  assert.equal(fileLines(file).length, 7);
});

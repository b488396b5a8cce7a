/**
 * `npm run fuzz`: runs every target of `fuzz/targets/` (or those named with `--only`) within a budget of
 * inputs and/or time per target, each in its own process so a hang is detected (no progress for
 * `--hang`) and targets can run side by side (`--jobs`). Prints per target: inputs executed, time,
 * crashes, invariant violations, known (pending) violations, corpus size. Exit code 1 on any finding.
 * Default budget: 10 million inputs or 5 minutes per target, whichever comes first.
 *
 *   npm run fuzz -- --only config,units --runs 10000000 --time 30m --seed 7 --jobs 2
 *   npm run fuzz -- --only normalize --seed=-1314919812 --replay 3:1:0   # replay a reported failure
 */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { parseDuration } from '../src/config/units.js';
import { loadTarget, type RunStats, runTarget, targetNames } from './harness.js';

const USAGE = `usage: npm run fuzz -- [options]
  --only a,b        targets to run (default: all; --list shows them)
  --runs N          inputs per target (default 10M; 500k, 1e7 accepted)
  --time D          time budget per target, e.g. 90s, 30m (default 5m; 0s for none)
  --seed N          base seed (default: random, printed)
  --replay PATH     replay the failure printed with PATH (with its --seed and --only)
  --jobs N          targets run in parallel (default 1)
  --slow D          report inputs slower than D (default 1s)
  --hang D          a target that uses D of CPU time without progress is a hang (default 120s)
  --strict          treat pending invariants as active (shrinks their violations to a minimal input)
  --json FILE       also write the results as JSON
  --list            list the targets and their invariants`;

interface Settings {
  runs: number;
  timeMs: number | undefined;
  seed: number;
  replay: string | undefined;
  slowMs: number;
  strict: boolean;
}

function count(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(?:e(\d+)|([kKmM]))?$/.exec(text);
  if (!m) throw new Error(`not a count: ${text}`);
  const mult = m[2] !== undefined ? 10 ** Number(m[2]) : m[3] ? (/k/i.test(m[3]) ? 1e3 : 1e6) : 1;
  return Math.round(Number(m[1]) * mult);
}

function duration(text: string): number {
  const ms = parseDuration(text);
  if (ms === undefined) throw new Error(`not a duration: ${text}`);
  return ms;
}

/** Child mode: runs one target and reports progress as JSON lines on stdout. */
async function child(name: string, s: Settings): Promise<void> {
  const target = await loadTarget(name);
  const emit = (type: string, stats: RunStats): void => {
    process.stdout.write(`${JSON.stringify({ type, stats: { ...stats, pending: [...stats.pending] } })}\n`);
  };
  const stats = await runTarget(target, {
    runs: s.runs,
    timeMs: s.timeMs,
    seed: s.seed,
    replay: s.replay,
    slowMs: s.slowMs,
    strict: s.strict,
    onChunk: (seed, size) => process.stdout.write(`${JSON.stringify({ type: 'chunk', seed, size })}\n`),
    onProgress: (st) => emit('progress', st),
  });
  emit('done', stats);
}

type Reported = Omit<RunStats, 'pending'> & {
  pending: Array<[string, { count: number; example: string; detail: string }]>;
};

interface Outcome {
  name: string;
  stats: Reported | undefined;
  hang: string | undefined;
  exit: string | undefined;
}

const startedAt = Date.now();

/**
 * CPU time (ms) a child process has used: user + system time from /proc (Linux); elsewhere wall time
 * since start, which only makes the watchdog stricter.
 */
function cpuTimeOf(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Fields 14 and 15 of stat (utime, stime) in clock ticks of 10 ms (USER_HZ is 100 on Linux).
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return Date.now() - startedAt;
  }
}

function runChild(name: string, s: Settings, hangMs: number, log: (line: string) => void): Promise<Outcome> {
  const args = [
    '--import',
    'tsx',
    fileURLToPath(import.meta.url),
    '--child',
    name,
    '--runs',
    String(s.runs),
    `--seed=${s.seed}`,
    '--slow',
    `${s.slowMs}ms`,
  ];
  // Always explicit: a target process given no --time would take the 5 min default.
  args.push('--time', s.timeMs === undefined ? '0s' : `${s.timeMs}ms`);
  if (s.replay !== undefined) args.push('--replay', s.replay);
  if (s.strict) args.push('--strict');
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let last: Reported | undefined;
    let chunk = '';
    let hang: string | undefined;
    let buffered = '';
    let lastShown = 0;
    // The watchdog counts the CPU time the target spent since its last progress line, not wall time: on
    // a busy machine a niced process may wait minutes for a core without hanging.
    let progressAt = cpuTimeOf(proc.pid);
    const timer = setInterval(() => {
      const used = cpuTimeOf(proc.pid) - progressAt;
      if (used < hangMs) return;
      hang = `no progress after ${(used / 1000).toFixed(0)}s of CPU time in ${chunk || 'start-up'}`;
      proc.kill('SIGKILL');
    }, 1000);
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (data: string) => {
      buffered += data;
      let nl = buffered.indexOf('\n');
      while (nl !== -1) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        nl = buffered.indexOf('\n');
        let msg: { type: string; stats?: Reported; seed?: number; size?: number };
        try {
          msg = JSON.parse(line) as typeof msg;
        } catch {
          log(line);
          continue;
        }
        progressAt = cpuTimeOf(proc.pid);
        if (msg.type === 'chunk') chunk = `the chunk of ${msg.size} inputs with --seed=${msg.seed}`;
        else if (msg.stats) {
          last = msg.stats;
          const now = Date.now();
          if (msg.type === 'progress' && now - lastShown >= 30_000) {
            lastShown = now;
            log(`  ${name}: ${last.inputs} inputs, ${(last.ms / 1000).toFixed(0)}s`);
          }
        }
      }
    });
    proc.on('exit', (code, signal) => {
      clearInterval(timer);
      const exit = code === 0 ? undefined : `exited with ${signal ?? code}`;
      resolve({ name, stats: last, hang, exit: hang ? undefined : exit });
    });
  });
}

function table(outcomes: Outcome[]): string {
  const rows = [
    ['target', 'inputs', 'time', 'inputs/s', 'crashes', 'violations', 'pending', 'corpus', 'slow'],
  ];
  for (const o of outcomes) {
    const s = o.stats;
    const crashes = (s?.crashes ?? 0) + (o.hang || o.exit ? 1 : 0);
    rows.push([
      o.name,
      String(s?.inputs ?? 0),
      `${((s?.ms ?? 0) / 1000).toFixed(1)}s`,
      s && s.ms > 0 ? String(Math.round((s.inputs / s.ms) * 1000)) : '-',
      String(crashes),
      String(s?.violations ?? 0),
      String(s?.pending.reduce((n, [, h]) => n + h.count, 0) ?? 0),
      String(s?.corpus ?? 0),
      String(s?.slow ?? 0),
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows
    .map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  '))
    .join('\n');
}

function details(o: Outcome, s: Settings): string[] {
  const out: string[] = [];
  if (o.hang) out.push(`${o.name}: HANG: ${o.hang}`);
  if (o.exit) out.push(`${o.name}: CRASH: the process ${o.exit}`);
  const f = o.stats?.failure;
  if (f) {
    out.push(`${o.name}: ${f.kind === 'crash' ? 'CRASH' : `INVARIANT ${f.invariant}`}`);
    out.push(`  input: ${f.input}`);
    out.push(`  error: ${f.error.split('\n').join('\n         ')}`);
    out.push(`  replay: npm run fuzz -- --only ${o.name} --seed=${f.seed} --replay ${f.path}`);
  }
  for (const [id, h] of o.stats?.pending ?? []) {
    out.push(
      `${o.name}: pending invariant ${id}: ${h.count} known violations; first: ${h.example} (${h.detail})`,
    );
  }
  if (o.stats?.slowest) {
    out.push(
      `${o.name}: ${o.stats.slow} inputs slower than ${s.slowMs}ms; slowest ${o.stats.slowest.ms.toFixed(0)}ms: ${o.stats.slowest.input}`,
    );
  }
  return out;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      only: { type: 'string' },
      runs: { type: 'string' },
      time: { type: 'string' },
      seed: { type: 'string' },
      replay: { type: 'string' },
      jobs: { type: 'string' },
      slow: { type: 'string' },
      hang: { type: 'string' },
      json: { type: 'string' },
      list: { type: 'boolean' },
      strict: { type: 'boolean' },
      child: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const settings: Settings = {
    runs: values.runs === undefined ? 10_000_000 : count(values.runs),
    timeMs: values.time === undefined ? 300_000 : duration(values.time) || undefined,
    seed: values.seed === undefined ? (Math.random() * 2 ** 31) | 0 : Number.parseInt(values.seed, 10),
    replay: values.replay,
    slowMs: values.slow === undefined ? 1000 : duration(values.slow),
    strict: values.strict === true,
  };
  if (values.child !== undefined) {
    await child(values.child, settings);
    return 0;
  }
  const all = targetNames();
  const names = values.only === undefined ? all : values.only.split(',').map((n) => n.trim());
  for (const n of names)
    if (!all.includes(n)) throw new Error(`unknown target ${n} (targets: ${all.join(', ')})`);
  if (values.list) {
    for (const n of names) {
      const t = await loadTarget(n);
      console.log(`${n}: ${t.description}`);
      for (const [id, text] of Object.entries(t.invariants)) {
        const pending = t.pending?.[id];
        console.log(
          `  ${id}${pending ? ' (pending)' : ''}: ${text}${pending ? `\n    pending: ${pending}` : ''}`,
        );
      }
    }
    return 0;
  }
  const jobs = Math.max(1, values.jobs === undefined ? 1 : Number(values.jobs));
  const hangMs = values.hang === undefined ? 120_000 : duration(values.hang);
  console.log(
    `fuzzing ${names.length} targets: ${settings.runs} inputs${settings.timeMs ? ` or ${settings.timeMs / 1000}s` : ''} each, seed ${settings.seed}, ${jobs} at a time; ${os.cpus()[0]?.model ?? 'unknown CPU'}, Node.js ${process.version}`,
  );
  const started = Date.now();
  const outcomes: Outcome[] = [];
  const queue = [...names];
  await Promise.all(
    Array.from({ length: Math.min(jobs, queue.length) }, async () => {
      for (let n = queue.shift(); n !== undefined; n = queue.shift()) {
        const o = await runChild(n, settings, hangMs, (line) => console.log(line));
        outcomes.push(o);
        const s = o.stats;
        console.log(`${n}: ${s?.inputs ?? 0} inputs in ${((s?.ms ?? 0) / 1000).toFixed(1)}s`);
        if (o.hang || o.exit || s?.failure) console.log(details(o, settings).join('\n'));
      }
    }),
  );
  outcomes.sort((a, b) => names.indexOf(a.name) - names.indexOf(b.name));
  console.log(`\n${table(outcomes)}\n`);
  const lines = outcomes.flatMap((o) => details(o, settings));
  if (lines.length > 0) console.log(`${lines.join('\n')}\n`);
  console.log(`wall time ${((Date.now() - started) / 1000).toFixed(0)}s, seed ${settings.seed}`);
  if (values.json !== undefined) {
    writeFileSync(
      values.json,
      JSON.stringify(
        {
          seed: settings.seed,
          runs: settings.runs,
          timeMs: settings.timeMs,
          machine: os.cpus()[0]?.model,
          node: process.version,
          wallMs: Date.now() - started,
          outcomes,
        },
        null,
        2,
      ),
    );
  }
  return outcomes.some((o) => o.hang || o.exit || (o.stats?.crashes ?? 0) + (o.stats?.violations ?? 0) > 0)
    ? 1
    : 0;
}

process.exitCode = await main();

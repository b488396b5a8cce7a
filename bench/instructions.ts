/**
 * The instruction-count phase of `npm run bench -- --instructions [N]`: each proxy runs under valgrind's
 * callgrind, which counts the user-space instructions it executes. After a warm-up (2N requests, so the
 * JIT has compiled the hot paths of the Node.js proxies) the counters are zeroed, N requests are sent
 * over 50 keep-alive connections, and the count is read from a dump, per thread. The count moves much
 * less than CPU time with what else the machine is doing, so differences between builds show; it leaves
 * out the kernel's share (socket reads and writes), which is about the same for every proxy. The main
 * thread's count is the steady one (a few per cent: how many requests one event-loop turn serves still
 * varies); V8's background threads (the optimizing compiler, concurrent marking) add work that moves by
 * tens of thousands of instructions per request between runs, so the total of all threads is reported
 * beside it.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Pool } from 'undici';

/** True when valgrind (with callgrind_control) is installed. */
export function haveCallgrind(): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v valgrind && command -v callgrind_control'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** The command prefix that runs a proxy under callgrind, writing its dumps into `dir`. */
export function callgrindPrefix(dir: string): string[] {
  return [
    'valgrind',
    '--tool=callgrind',
    `--callgrind-out-file=${join(dir, 'callgrind.%p')}`,
    '--dump-instr=no',
    '--collect-jumps=no',
    // One dump per thread: thread 1 is the main thread (the event loop).
    '--separate-threads=yes',
    // Counting starts when the warm-up is over (`callgrind_control -z`).
    '--collect-atstart=yes',
  ];
}

/** Sends `count` GET requests to `url` over `connections` keep-alive connections; throws on non-2xx. */
export async function sendRequests(
  url: string,
  count: number,
  headers: Record<string, string>,
  connections = 50,
): Promise<void> {
  const u = new URL(url);
  const pool = new Pool(u.origin, { connections });
  let left = count;
  let failed = 0;
  const loop = async () => {
    while (left-- > 0) {
      const res = await pool.request({ path: u.pathname, method: 'GET', headers });
      if (res.statusCode >= 300) failed++;
      await res.body.dump();
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(connections, count) }, loop));
  } finally {
    await pool.close();
  }
  if (failed > 0) throw new Error(`${failed} of ${count} requests to ${url} failed`);
}

function callgrindControl(flag: '-z' | '-d', pid: number): void {
  execFileSync('callgrind_control', [flag, String(pid)], { stdio: 'ignore', timeout: 60_000 });
}

/** Instructions of one request: on the main thread, and on all threads together. */
export interface InstructionCount {
  main: number;
  all: number;
}

/** The `totals:`/`summary:` instruction count of one dump file, once it is completely written. */
function fileTotal(path: string): number | undefined {
  const m = /^(?:totals|summary):\s+(\d+)/m.exec(readFileSync(path, 'utf8'));
  return m ? Number(m[1]) : undefined;
}

/**
 * The counts of the first dump of `pid` in `dir` (`callgrind.PID.1-NN`, one file per thread), once
 * every thread's file is complete and no further file appeared for a moment.
 */
async function dumpedTotals(dir: string, pid: number): Promise<{ main: number; all: number }> {
  const pattern = new RegExp(`^callgrind\\.${pid}\\.1-(\\d+)$`);
  const deadline = Date.now() + 60_000;
  let previous = '';
  for (;;) {
    const files = readdirSync(dir)
      .filter((f) => pattern.test(f))
      .sort();
    const totals = files.map((f) => fileTotal(join(dir, f)));
    const key = files.join(',');
    if (files.length > 0 && totals.every((t) => t !== undefined) && key === previous) {
      const main = totals[files.findIndex((f) => Number(pattern.exec(f)?.[1]) === 1)];
      if (main === undefined) throw new Error(`no main-thread dump of pid ${pid} in ${dir}`);
      return { main, all: (totals as number[]).reduce((a, b) => a + b, 0) };
    }
    if (Date.now() > deadline) throw new Error(`no complete callgrind dump of pid ${pid} in ${dir}`);
    previous = key;
    await new Promise((r) => setTimeout(r, 500));
  }
}

/**
 * Instructions per request of the proxy `pid` (running under `callgrindPrefix(dir)`): zero the counters
 * after the warm-up, send `requests`, dump, and divide.
 */
export async function instructionsPerRequest(
  pid: number,
  dir: string,
  url: string,
  headers: Record<string, string>,
  requests: number,
): Promise<InstructionCount> {
  await sendRequests(url, 2 * requests, headers);
  callgrindControl('-z', pid);
  await sendRequests(url, requests, headers);
  callgrindControl('-d', pid);
  const t = await dumpedTotals(dir, pid);
  return { main: Math.round(t.main / requests), all: Math.round(t.all / requests) };
}

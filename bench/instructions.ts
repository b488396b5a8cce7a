/**
 * The instruction-count phase of `npm run bench -- --instructions [N]`: each proxy runs under valgrind's
 * callgrind, which counts the user-space instructions it executes. After a warm-up (2N requests, so the
 * JIT has compiled the hot paths of the Node.js proxies) the counters are zeroed, N requests are sent
 * over 50 keep-alive connections, and the count is read from a dump. The count moves much less than CPU
 * time with what else the machine is doing (a few per cent: how many requests one event-loop turn
 * serves and the JIT's background work still vary), so differences between builds show; it leaves out
 * the kernel's share (socket reads and writes), which is about the same for every proxy.
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

/** The `totals:`/`summary:` instruction count of the newest dump of `pid` in `dir`, if written yet. */
function dumpedTotal(dir: string, pid: number): number | undefined {
  const dumps = readdirSync(dir).filter((f) => f.startsWith(`callgrind.${pid}.`));
  for (const f of dumps) {
    const m = /^(?:totals|summary):\s+(\d+)/m.exec(readFileSync(join(dir, f), 'utf8'));
    if (m) return Number(m[1]);
  }
  return undefined;
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
): Promise<number> {
  await sendRequests(url, 2 * requests, headers);
  callgrindControl('-z', pid);
  await sendRequests(url, requests, headers);
  callgrindControl('-d', pid);
  const deadline = Date.now() + 60_000;
  for (;;) {
    const total = dumpedTotal(dir, pid);
    if (total !== undefined) return Math.round(total / requests);
    if (Date.now() > deadline) throw new Error(`no callgrind dump of pid ${pid} in ${dir}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

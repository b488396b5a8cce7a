/**
 * Real nginx and Caddy for the forward-auth tests: finds the binaries (failing loudly when one is
 * missing, never skipping), writes the project's example files with the test's addresses in place of
 * the documented ones, runs the proxy in the foreground inside the test's temporary directory, waits
 * until it accepts connections, and stops it when the test ends, whatever happened.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { ROOT } from './gateway.js';
import { type PeerProcess, startPeer } from './listen.js';
import { request, seenOf } from './proxy.js';

function findBinary(
  what: string,
  candidates: ReadonlyArray<string | undefined>,
  args: string[],
  pattern: RegExp,
  install: string,
): string {
  for (const bin of candidates) {
    if (!bin) continue;
    const r = spawnSync(bin, args, { encoding: 'utf8' });
    if (r.status === 0 && pattern.test(`${r.stdout}${r.stderr}`)) return bin;
  }
  throw new Error(`${what} is not installed: this test runs against the real one. ${install}`);
}

/** The nginx binary: NGINX_PATH, else `nginx` on the PATH or in /usr/sbin. */
export function nginxBinary(): string {
  return findBinary(
    'nginx',
    [process.env.NGINX_PATH, 'nginx', '/usr/sbin/nginx'],
    ['-v'],
    /nginx version/,
    'Install it with `apt-get install nginx` (or set NGINX_PATH).',
  );
}

/** The Caddy binary: CADDY_PATH, else `caddy` on the PATH or in /usr/bin. */
export function caddyBinary(): string {
  return findBinary(
    'caddy',
    [process.env.CADDY_PATH, 'caddy', '/usr/bin/caddy'],
    ['version'],
    /v?2\./,
    'Install it with `apt-get install caddy` (or set CADDY_PATH).',
  );
}

/**
 * The text of `examples/<file>` with every `[documented, actual]` pair replaced. Each documented value
 * must occur in the file: an example that no longer names it fails here, not in a confusing way later.
 */
export function exampleWith(file: string, replacements: ReadonlyArray<readonly [string, string]>): string {
  let text = readFileSync(path.join(ROOT, 'examples', file), 'utf8');
  for (const [from, to] of replacements) {
    if (!text.includes(from)) throw new Error(`examples/${file} no longer contains ${from}`);
    text = text.replaceAll(from, to);
  }
  return text;
}

/** A running proxy process. */
export type Companion = PeerProcess;

/**
 * Starts nginx on `config` (text) with `dir` as its prefix (pid, temporary files), after `nginx -t`
 * accepted it, and waits until `readyPort` accepts connections. Stopped when the test ends.
 */
export async function startNginx(
  t: TestContext,
  dir: string,
  config: string,
  readyPort: number,
): Promise<Companion> {
  const bin = nginxBinary();
  mkdirSync(path.join(dir, 'temp'), { recursive: true });
  const file = path.join(dir, 'nginx.conf');
  writeFileSync(file, config);
  const prefix = `${dir}/`;
  const check = spawnSync(bin, ['-t', '-q', '-p', prefix, '-c', file], { encoding: 'utf8' });
  if (check.status !== 0) throw new Error(`nginx -t refused the config:\n${check.stdout}${check.stderr}`);
  return startPeer(t, 'nginx', bin, ['-p', prefix, '-c', file], { readyPort });
}

/**
 * Starts Caddy on `caddyfile` (text) with HOME and the XDG directories inside `dir`, so it writes
 * nothing elsewhere, after `caddy validate` accepted it; waits until `readyPort` accepts connections.
 */
export async function startCaddy(
  t: TestContext,
  dir: string,
  caddyfile: string,
  readyPort: number,
): Promise<Companion> {
  const bin = caddyBinary();
  const file = path.join(dir, 'Caddyfile');
  writeFileSync(file, caddyfile);
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: dir,
    XDG_CONFIG_HOME: path.join(dir, 'config'),
    XDG_DATA_HOME: path.join(dir, 'data'),
  };
  const check = spawnSync(bin, ['validate', '--adapter', 'caddyfile', '--config', file], {
    encoding: 'utf8',
    env,
  });
  if (check.status !== 0)
    throw new Error(`caddy validate refused the config:\n${check.stdout}${check.stderr}`);
  return startPeer(t, 'caddy', bin, ['run', '--adapter', 'caddyfile', '--config', file], { env, readyPort });
}

type Reply = Awaited<ReturnType<typeof request>>;

/**
 * The `exports` route of the forward-auth examples (10/min, 5 at once) through the proxy at `front`:
 * five 200s, each with the RateLimit headers of the gateway next to the application's own
 * (`"app";r=7;t=1`) and the caller's identity at the backend (each reply also given to `each`), then
 * 429 with Retry-After and the RateLimit headers. Returns the 429, for what each proxy adds to it.
 */
export async function spendExportsBudget(
  front: string,
  host: string,
  apiKey: string,
  output: () => string,
  each: (reply: Reply) => void = () => undefined,
): Promise<Reply> {
  for (let left = 4; left >= 0; left--) {
    const r = await request(front, { path: '/exports/run', headers: { host, 'x-api-key': apiKey } });
    assert.equal(r.status, 200, r.body.toString());
    assert.equal(seenOf(r.body).headers['x-gatehouse-user'], 'agent:etl');
    assert.equal(r.headers['ratelimit-policy'], '"exports";q=10;w=60');
    const items = String(r.headers.ratelimit).split(', ').sort();
    assert.equal(items[0], '"app";r=7;t=1');
    assert.match(items[1]!, new RegExp(`^"exports";r=${left};t=\\d+$`));
    each(r);
  }
  const limited = await request(front, {
    path: '/exports/run',
    headers: { host, 'x-api-key': apiKey, accept: 'text/html' },
  });
  assert.equal(limited.status, 429, `${limited.body}\n${output()}`);
  const retry = Number(limited.headers['retry-after']);
  assert.ok(retry >= 1 && retry <= 6, `Retry-After ${limited.headers['retry-after']}`);
  assert.equal(limited.headers['ratelimit-policy'], '"exports";q=10;w=60');
  assert.match(String(limited.headers.ratelimit), /^"exports";r=0;t=\d+$/);
  return limited;
}

/**
 * Beside a limited route: a real 403 stays 403 without Retry-After, and a route without a limit answers
 * without RateLimit headers. Returns both replies, for what each proxy adds to them.
 */
export async function noLimitElsewhere(
  front: string,
  host: string,
  apiKey: string,
): Promise<{ denied: Reply; free: Reply }> {
  const denied = await request(front, { path: '/admin/users', headers: { host, 'x-api-key': apiKey } });
  assert.equal(denied.status, 403);
  assert.equal(JSON.parse(denied.body.toString()).code, 'GH_FORBIDDEN');
  assert.equal(denied.headers['retry-after'], undefined);
  const free = await request(front, { path: '/jobs', headers: { host, 'x-api-key': apiKey } });
  assert.equal(free.status, 200);
  assert.equal(free.headers['ratelimit-policy'], undefined);
  assert.equal(free.headers.ratelimit, undefined);
  return { denied, free };
}

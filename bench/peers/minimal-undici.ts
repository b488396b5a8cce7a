/**
 * A minimal reverse proxy on node:http and an undici keep-alive pool: the floor of what a Node.js
 * proxy costs, with the same forwarded headers the gateway sets and hop-by-hop headers removed.
 * Usage: node --import tsx bench/peers/minimal-undici.ts --port N --target http://127.0.0.1:M
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { Writable } from 'node:stream';
import { Pool } from 'undici';

function arg(name: string): string {
  const i = process.argv.indexOf(name);
  const v = i === -1 ? undefined : process.argv[i + 1];
  if (v === undefined) throw new Error(`missing ${name}`);
  return v;
}

const pool = new Pool(arg('--target'), { connections: 256, keepAliveTimeout: 60_000 });
const hopByHop = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
]);

function forwardHeaders(headers: IncomingHttpHeaders, client: string): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(headers)) if (v !== undefined && !hopByHop.has(k)) out[k] = v;
  out.host = headers.host ?? '';
  out['x-forwarded-for'] = client;
  out['x-forwarded-proto'] = 'http';
  out['x-forwarded-host'] = headers.host ?? '';
  out['x-request-id'] = randomUUID();
  return out;
}

const server = createServer((req, res) => {
  const hasBody = req.method !== 'GET' && req.method !== 'HEAD';
  pool.stream(
    {
      path: req.url ?? '/',
      method: (req.method ?? 'GET') as 'GET',
      headers: forwardHeaders(req.headers, req.socket.remoteAddress ?? ''),
      body: hasBody ? req : null,
    },
    ({ statusCode, headers }) => {
      for (const [k, v] of Object.entries(headers)) {
        if (v !== undefined && !hopByHop.has(k)) res.setHeader(k, v);
      }
      res.statusCode = statusCode;
      return res as unknown as Writable;
    },
    (err) => {
      if (err && !res.headersSent) {
        res.writeHead(502, { 'content-type': 'text/plain' }).end('bad gateway\n');
      } else if (err) {
        res.destroy();
      }
    },
  );
});
server.keepAliveTimeout = 120_000;
server.listen(Number(arg('--port')), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));

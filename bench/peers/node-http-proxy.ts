/**
 * node-http-proxy (the `http-proxy` package) with a keep-alive agent, as most Node.js gateways use it.
 * Usage: node --import tsx bench/peers/node-http-proxy.ts --port N --target http://127.0.0.1:M
 */
import { randomUUID } from 'node:crypto';
import { Agent, createServer } from 'node:http';
import httpProxy from 'http-proxy';

function arg(name: string): string {
  const i = process.argv.indexOf(name);
  const v = i === -1 ? undefined : process.argv[i + 1];
  if (v === undefined) throw new Error(`missing ${name}`);
  return v;
}

const agent = new Agent({ keepAlive: true, maxSockets: 256, keepAliveMsecs: 60_000 });
const proxy = httpProxy.createProxyServer({ target: arg('--target'), agent, xfwd: true });
// A client that goes away mid-response must abort the upstream request too; otherwise the pooled
// socket stays busy with a response nobody reads, and once every socket is taken the proxy hangs.
proxy.on('proxyReq', (proxyReq, _req, res) => {
  res.on('close', () => {
    if (!res.writableFinished) proxyReq.destroy();
  });
});
proxy.on('error', (_err, _req, res) => {
  if ('writeHead' in res && !res.headersSent)
    res.writeHead(502, { 'content-type': 'text/plain' }).end('bad gateway\n');
  else res.destroy();
});

// The request id goes in through the per-request options: setting it in a 'proxyReq' listener throws
// when the upstream request was already sent (a reused socket after the client went away).
const server = createServer((req, res) => proxy.web(req, res, { headers: { 'x-request-id': randomUUID() } }));
server.keepAliveTimeout = 120_000;
server.listen(Number(arg('--port')), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));

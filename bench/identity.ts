/**
 * The identity pieces of `npm run bench`: a token issuer served by the bench itself (discovery document
 * and JWKS on 127.0.0.1, keys and tokens made with jose), the `gatehouse+jwt` configuration, and the
 * token-cache miss phase (every request carries a different token, so every one is a signature check).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { type CryptoKey, exportJWK, exportSPKI, generateKeyPair, SignJWT } from 'jose';

export const BENCH_AUDIENCE = 'gatehouse-bench';
export const BENCH_ALG = 'RS256';

export interface BenchIssuer {
  readonly issuer: string;
  /** The signing key's public half as PEM (SPKI), for HAProxy's `jwt_verify`. */
  readonly publicPem: string;
  /** A token for subject `bench-agent` in group `bench`; `jti` makes each one distinct. */
  sign(jti: string): Promise<string>;
  close(): Promise<void>;
}

/** Starts the issuer on 127.0.0.1 port 0 with one RS256 key. */
export async function startBenchIssuer(): Promise<BenchIssuer> {
  const { privateKey, publicKey } = await generateKeyPair(BENCH_ALG, { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid: 'bench-1', alg: BENCH_ALG, use: 'sig' };
  let base = '';
  const server = http.createServer((req, res) => {
    if (req.url === '/.well-known/openid-configuration') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ issuer: base, jwks_uri: `${base}/jwks` }));
    } else if (req.url === '/jwks') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys: [jwk] }));
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const key: CryptoKey = privateKey;
  const publicPem = await exportSPKI(publicKey);
  return {
    issuer: base,
    publicPem,
    sign: (jti) =>
      new SignJWT({ groups: ['bench'], jti })
        .setProtectedHeader({ alg: BENCH_ALG, kid: 'bench-1', typ: 'JWT' })
        .setIssuer(base)
        .setSubject('bench-agent')
        .setAudience(BENCH_AUDIENCE)
        .setIssuedAt()
        .setExpirationTime('12h')
        .sign(key),
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * The YAML lines `gatehouse+jwt` adds to the plain configuration: the bearer issuer, a policy whose deny
 * rule (a documentation range) is evaluated and does not match, and the admin listener for /metrics.
 */
export function jwtConfigLines(issuer: string, adminPort: number): string[] {
  return [
    `admin: { bind: "127.0.0.1:${adminPort}" }`,
    'identity:',
    `  bearer: [{ issuer: "${issuer}", audiences: [${BENCH_AUDIENCE}] }]`,
    'policies:',
    '  bench:',
    '    deny: [{ name: blocked-range, sourceIp: [203.0.113.0/24] }]',
    '    allow: [{ name: bench-group, groups: [bench] }]',
  ];
}

/** Sum of `gatehouse_token_verifications_total` over its results, from the admin `/metrics`. */
export async function tokenVerifications(adminPort: number): Promise<{ total: number; ok: number }> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/metrics`, { signal: AbortSignal.timeout(5000) });
  if (res.status !== 200) throw new Error(`admin /metrics answered ${res.status}`);
  let total = 0;
  let ok = 0;
  for (const line of (await res.text()).split('\n')) {
    const m = /^gatehouse_token_verifications_total(\{[^}]*\})?\s+([\d.e+-]+)/.exec(line);
    if (!m) continue;
    total += Number(m[2]);
    if (m[1]?.includes('result="ok"')) ok += Number(m[2]);
  }
  return { total, ok };
}

/**
 * Sends one GET per token to `url` over `concurrency` keep-alive connections; resolves with the count of
 * 2xx answers and of others (including errors).
 */
export async function sendTokens(
  url: string,
  tokens: readonly string[],
  concurrency: number,
): Promise<{ ok: number; failed: number; statuses: Record<string, number> }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  let next = 0;
  let ok = 0;
  let failed = 0;
  const statuses: Record<string, number> = {};
  const one = (token: string) =>
    new Promise<void>((resolve) => {
      const req = http.get(url, { agent, headers: { authorization: `Bearer ${token}` } }, (res) => {
        res.resume();
        res.on('end', () => {
          const s = res.statusCode ?? 0;
          statuses[s] = (statuses[s] ?? 0) + 1;
          if (s >= 200 && s < 300) ok++;
          else failed++;
          resolve();
        });
      });
      req.setTimeout(10_000, () => req.destroy(new Error('timeout')));
      req.on('error', () => {
        statuses.error = (statuses.error ?? 0) + 1;
        failed++;
        resolve();
      });
    });
  const worker = async () => {
    while (next < tokens.length) await one(tokens[next++] as string);
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    agent.destroy();
  }
  return { ok, failed, statuses };
}

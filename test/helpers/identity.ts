/**
 * Test helpers for machine identities: a real token issuer over HTTP (discovery document and JWKS on
 * 127.0.0.1 port 0), signing keys and tokens made with jose, and X.509 material made with `openssl`.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, type JWTPayload, SignJWT } from 'jose';

/** A signing key of the test issuer. */
export interface TestKey {
  readonly kid: string;
  readonly alg: string;
  readonly privateKey: CryptoKey;
  readonly publicJwk: JWK;
}

/** Makes a key pair with `kid`; its public JWK carries kid, alg and use. */
export async function makeKey(kid: string, alg = 'RS256'): Promise<TestKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { kid, alg, privateKey, publicJwk };
}

/** A real issuer: serves its discovery document and JWKS, and counts requests. */
export interface TestIssuer {
  readonly issuer: string;
  readonly jwksUri: string;
  /** Requests to the JWKS. */
  jwksHits: number;
  /** Requests to the discovery document. */
  discoveryHits: number;
  /** Keys published in the JWKS. */
  keys: TestKey[];
  /** Status of the JWKS response (200 normally). */
  jwksStatus: number;
  /** Issuer named in the discovery document (default: the real one). */
  discoveryIssuer: string | undefined;
  /**
   * An outage of the whole issuer (discovery and JWKS): `hang` accepts requests and never answers them,
   * `reset` closes each connection as it arrives; undefined serves normally.
   */
  outage: 'hang' | 'reset' | undefined;
  /** Signs a token with `key` (default: the first key) for this issuer. */
  sign(
    claims: JWTPayload,
    opts?: { key?: TestKey; exp?: number; nbf?: number; iss?: string },
  ): Promise<string>;
  close(): Promise<void>;
}

/** Starts an issuer on 127.0.0.1 port 0 publishing `keys`. */
export async function startIssuer(keys: TestKey[]): Promise<TestIssuer> {
  const state = {
    jwksHits: 0,
    discoveryHits: 0,
    keys,
    jwksStatus: 200,
    discoveryIssuer: undefined as string | undefined,
    outage: undefined as 'hang' | 'reset' | undefined,
  };
  let base = '';
  const server = http.createServer((req, res) => {
    // Requests are counted also during an outage: tests assert how often the issuer was asked.
    if (req.url === '/.well-known/openid-configuration') state.discoveryHits++;
    else if (req.url === '/jwks') state.jwksHits++;
    if (state.outage === 'hang') return;
    if (state.outage === 'reset') {
      req.socket.destroy();
      return;
    }
    if (req.url === '/.well-known/openid-configuration') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ issuer: state.discoveryIssuer ?? base, jwks_uri: `${base}/jwks` }));
    } else if (req.url === '/jwks') {
      res.writeHead(state.jwksStatus, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys: state.keys.map((k) => k.publicJwk) }));
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
  const issuer: TestIssuer = {
    issuer: base,
    jwksUri: `${base}/jwks`,
    get jwksHits() {
      return state.jwksHits;
    },
    set jwksHits(v) {
      state.jwksHits = v;
    },
    get discoveryHits() {
      return state.discoveryHits;
    },
    set discoveryHits(v) {
      state.discoveryHits = v;
    },
    get keys() {
      return state.keys;
    },
    set keys(v) {
      state.keys = v;
    },
    get jwksStatus() {
      return state.jwksStatus;
    },
    set jwksStatus(v) {
      state.jwksStatus = v;
    },
    get discoveryIssuer() {
      return state.discoveryIssuer;
    },
    set discoveryIssuer(v) {
      state.discoveryIssuer = v;
    },
    get outage() {
      return state.outage;
    },
    set outage(v) {
      state.outage = v;
    },
    sign(claims, opts = {}) {
      const key = opts.key ?? state.keys[0]!;
      const jwt = new SignJWT(claims)
        .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT' })
        .setIssuer(opts.iss ?? base)
        .setIssuedAt()
        .setExpirationTime(opts.exp ?? Math.floor(Date.now() / 1000) + 3600);
      if (opts.nbf !== undefined) jwt.setNotBefore(opts.nbf);
      return jwt.sign(key.privateKey);
    },
    close() {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return issuer;
}

/** A temporary directory removed by `cleanup`. */
export function tempDir(prefix = 'gatehouse-identity-'): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: Buffer };
    if (e.code === 'ENOENT') throw new Error('openssl is required for these tests: apt-get install openssl');
    throw new Error(`openssl ${args[0]} failed: ${e.stderr?.toString() ?? e.message}`);
  }
}

/** PEM material for mTLS tests. */
export interface TestPki {
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  /** Client certificate signed by `ca`: CN=alice, OU=data-eng and OU=ops, email SAN, URI SAN. */
  readonly clientCert: string;
  readonly clientKey: string;
  /** Client certificate without CN (SPIFFE style: only a URI SAN), signed by `ca`. */
  readonly spiffeCert: string;
  readonly spiffeKey: string;
  /** Client certificate signed by another CA that the server does not trust. */
  readonly rogueCert: string;
  readonly rogueKey: string;
}

/** Creates a CA, a server certificate for 127.0.0.1/localhost and client certificates with `openssl`. */
export function makePki(dir: string): TestPki {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  const ca = (name: string) =>
    openssl(
      [
        'req',
        '-x509',
        ...ec,
        '-keyout',
        `${name}.key`,
        '-out',
        `${name}.pem`,
        '-days',
        '2',
        '-subj',
        `/CN=${name}`,
      ],
      dir,
    );
  const leaf = (name: string, issuer: string, subj: string, ext: string) => {
    openssl(['req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subj], dir);
    writeFileSync(path.join(dir, `${name}.ext`), ext);
    openssl(
      [
        'x509',
        '-req',
        '-in',
        `${name}.csr`,
        '-CA',
        `${issuer}.pem`,
        '-CAkey',
        `${issuer}.key`,
        '-CAcreateserial',
        '-out',
        `${name}.pem`,
        '-days',
        '1',
        '-extfile',
        `${name}.ext`,
      ],
      dir,
    );
  };
  ca('Test CA');
  ca('Rogue CA');
  leaf(
    'server',
    'Test CA',
    '/CN=localhost',
    'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n',
  );
  leaf(
    'client',
    'Test CA',
    '/O=Example/OU=data-eng/OU=ops/CN=alice',
    'subjectAltName=email:alice@example.com,URI:spiffe://example.com/alice\nextendedKeyUsage=clientAuth\n',
  );
  leaf(
    'spiffe',
    'Test CA',
    '/O=Example',
    'subjectAltName=URI:spiffe://example.com/etl\nextendedKeyUsage=clientAuth\n',
  );
  leaf('rogue', 'Rogue CA', '/CN=mallory', 'extendedKeyUsage=clientAuth\n');
  const read = (f: string) => readFileSync(path.join(dir, f), 'utf8');
  return {
    ca: read('Test CA.pem'),
    serverCert: read('server.pem'),
    serverKey: read('server.key'),
    clientCert: read('client.pem'),
    clientKey: read('client.key'),
    spiffeCert: read('spiffe.pem'),
    spiffeKey: read('spiffe.key'),
    rogueCert: read('rogue.pem'),
    rogueKey: read('rogue.key'),
  };
}

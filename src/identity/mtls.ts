/**
 * Client certificates (downstream mTLS). The listener asks for a certificate (`requestCert`) and
 * trusts `tls.clientCertificate.ca`; with `require` the handshake itself fails without a valid one
 * (`rejectUnauthorized`). Here the verified certificate's subject and SANs become the identity.
 */
import type { PeerCertificate } from 'node:tls';
import type { AuthResult, Identity } from './types.js';

/** What is read from the connection: a `tls.TLSSocket` (also through HTTP/2's compatibility socket). */
export interface ClientCertificateSocket {
  readonly authorized?: boolean;
  readonly authorizationError?: Error | string | null;
  getPeerCertificate?(detailed?: boolean): PeerCertificate | Record<string, never> | null;
}

const NONE: AuthResult = Object.freeze({ kind: 'none' });

// One answer per connection: the certificate cannot change on an established TLS connection (no
// renegotiation on the listeners), so it is parsed once, not per request.
const perSocket = new WeakMap<object, AuthResult>();

/**
 * The identity of the client certificate presented on `socket`: `none` without a certificate,
 * `certificate-invalid` when one was presented but did not verify against the trusted CAs or has
 * expired by `now` (long-lived connections outlive certificates).
 */
export function certificateIdentity(socket: ClientCertificateSocket, now: number = Date.now()): AuthResult {
  let result = perSocket.get(socket);
  if (result === undefined) {
    result = readCertificate(socket);
    perSocket.set(socket, result);
  }
  if (result.kind === 'ok') {
    const { expiresAt } = result.identity;
    if (expiresAt !== undefined && now >= expiresAt) {
      return invalid('client certificate has expired');
    }
  }
  return result;
}

function invalid(message: string): AuthResult {
  return Object.freeze({ kind: 'invalid', reason: 'certificate-invalid', message });
}

function readCertificate(socket: ClientCertificateSocket): AuthResult {
  if (typeof socket.getPeerCertificate !== 'function') return NONE;
  let cert: PeerCertificate | Record<string, never> | null;
  try {
    cert = socket.getPeerCertificate(false);
  } catch {
    return NONE;
  }
  // Node returns an empty object when the peer sent no certificate.
  if (cert === null || !('raw' in cert) || cert.raw === undefined) return NONE;
  if (socket.authorized !== true) {
    const why = socket.authorizationError;
    return invalid(
      `client certificate not trusted${why ? `: ${String(why instanceof Error ? why.message : why)}` : ''}`,
    );
  }
  return Object.freeze({ kind: 'ok', identity: toIdentity(cert as PeerCertificate) });
}

type NameParts = Record<string, string | string[] | undefined>;

function values(v: string | string[] | undefined): string[] {
  if (v === undefined) return [];
  return Array.isArray(v) ? v : [v];
}

/** `CN=alice,OU=data-eng,O=Example` from Node's parsed subject (attribute order kept). */
function distinguishedName(name: NameParts | undefined): string {
  if (name === undefined) return '';
  const parts: string[] = [];
  for (const [attr, v] of Object.entries(name)) {
    for (const value of values(v)) parts.push(`${attr}=${value.replace(/([,+"\\<>;=])/g, '\\$1')}`);
  }
  return parts.join(',');
}

/**
 * Splits Node's `subjectaltname` (`DNS:a, email:b, URI:c`); values with special characters come
 * JSON-quoted (Node ≥ 17.3, the CVE-2021-44532 fix) and are unquoted here.
 */
export function parseSubjectAltNames(text: string | undefined): string[] {
  if (text === undefined || text === '') return [];
  const out: string[] = [];
  // Sticky: each entry must start where the last one ended. Searching forward from every position
  // instead made a certificate with a long SAN take quadratic time (seconds at 64 KiB).
  const re = /([A-Za-z][A-Za-z ]*):("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)/y;
  for (let m = re.exec(text); m !== null && m[0] !== ''; m = re.exec(text)) {
    let value = m[2]!;
    if (value.startsWith('"')) {
      try {
        value = JSON.parse(value) as string;
      } catch {
        continue;
      }
    }
    out.push(`${m[1]}:${value}`);
  }
  return out;
}

function toIdentity(cert: PeerCertificate): Identity {
  const subjectParts = cert.subject as unknown as NameParts | undefined;
  const subjectDn = distinguishedName(subjectParts);
  const issuerDn = distinguishedName(cert.issuer as unknown as NameParts | undefined);
  const san = parseSubjectAltNames(cert.subjectaltname);
  const cns = values(subjectParts?.CN);
  const uri = san.find((s) => s.startsWith('URI:'))?.slice(4);
  // A single CN names the client; without one (e.g. SPIFFE certificates) the URI SAN, else the full DN.
  const cn = cns.length === 1 ? cns[0] : undefined;
  const subject = cn ?? uri ?? subjectDn;
  const email = san.find((s) => s.startsWith('email:'))?.slice(6) ?? values(subjectParts?.emailAddress)[0];
  const validTo = Date.parse(cert.valid_to);
  return Object.freeze({
    subject,
    user: cn ?? subject,
    email,
    groups: Object.freeze(values(subjectParts?.OU)),
    claims: Object.freeze({
      subject: subjectDn,
      issuer: issuerDn,
      serialNumber: cert.serialNumber,
      fingerprint256: cert.fingerprint256,
      san: Object.freeze(san),
    }),
    authMethod: 'mtls',
    source: issuerDn,
    expiresAt: Number.isNaN(validTo) ? undefined : validTo,
  });
}

/**
 * Keeping secrets out of the trail: masking named query parameters, and dropping fields that carry
 * credentials should the gateway ever hand one over.
 */

/** What a masked query value is replaced with. */
export const REDACTED = 'REDACTED';

/**
 * The path and query with the values of the named query parameters replaced by `REDACTED`. Names match
 * case-insensitively, percent-encoded or not; the names themselves are kept, so an auditor still sees
 * that the parameter was sent. A fragment, if any, is kept as it is.
 */
export function redactQuery(pathAndQuery: string, names: readonly string[]): string {
  const q = pathAndQuery.indexOf('?');
  if (q < 0 || names.length === 0) return pathAndQuery;
  const hash = pathAndQuery.indexOf('#', q);
  const end = hash < 0 ? pathAndQuery.length : hash;
  const wanted = new Set(names.map((n) => n.toLowerCase()));
  let changed = false;
  const parts = pathAndQuery.slice(q + 1, end).split('&');
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    const raw = part.slice(0, eq);
    if (wanted.has(raw.toLowerCase()) || wanted.has(decodeName(raw).toLowerCase())) {
      parts[i] = `${raw}=${REDACTED}`;
      changed = true;
    }
  }
  if (!changed) return pathAndQuery;
  return `${pathAndQuery.slice(0, q + 1)}${parts.join('&')}${pathAndQuery.slice(end)}`;
}

function decodeName(raw: string): string {
  try {
    return decodeURIComponent(raw.replace(/\+/g, ' '));
  } catch {
    return raw;
  }
}

/**
 * Field names that hold credentials and never enter the trail, at any depth; compared in lower case
 * without `-` and `_` (`access_token`, `accessToken` and `Access-Token` alike). An API key's identifier
 * belongs in `apiKeyId`: a field named `apiKey` is taken for the key itself.
 */
export const SECRET_FIELDS: ReadonlySet<string> = new Set([
  'authorization',
  'proxyauthorization',
  'cookie',
  'setcookie',
  'token',
  'accesstoken',
  'idtoken',
  'refreshtoken',
  'apikey',
  'xapikey',
  'password',
  'secret',
  'clientsecret',
  'xgatehouseassertion',
  'assertion',
]);

// A cheap look at the serialized record: a secret-named member is a `"name":` in the JSON text
// (inside a string value the quotes would be escaped). Only a hit pays for the second serialization.
const SECRET_MEMBER = new RegExp(
  `"(?:${[...SECRET_FIELDS].map((n) => n.split('').join('[-_]?')).join('|')})":`,
  'i',
);

/** Whether the serialized record may hold a member named like a secret. */
export function mayHoldSecret(json: string): boolean {
  return SECRET_MEMBER.test(json);
}

/** A `JSON.stringify` replacer that leaves out members named like a secret. */
export function dropSecrets(key: string, value: unknown): unknown {
  return key !== '' && SECRET_FIELDS.has(key.toLowerCase().replace(/[-_]/g, '')) ? undefined : value;
}

/**
 * Facts read from identity-provider claims the same way by every authenticator that has them (OIDC
 * sessions and bearer JWTs), so that one policy rule means the same whichever way the caller came.
 */

/**
 * The caller's email address, unless the provider says it did not verify it (`email_verified` false,
 * or the string "false" as some userinfo endpoints send it): such an address may be anyone's, and
 * `email` and `domain` rules must not match it (OIDC Core §5.7; the nOAuth account takeovers).
 */
export function verifiedEmail(claims: Readonly<Record<string, unknown>>): string | undefined {
  const verified = claims.email_verified;
  if (verified === false || verified === 'false') return undefined;
  const email = claims.email;
  return typeof email === 'string' && email !== '' ? email : undefined;
}

/**
 * A claim by its exact name first (names such as `https://example.com/groups` contain dots), else by
 * its dotted path (`realm_access.roles`). `segments` is `path` split at its dots, for callers that
 * split it once ahead (undefined: the path has no dot, and only the exact name is looked up).
 */
export function claimAt(
  claims: Readonly<Record<string, unknown>>,
  path: string,
  segments: readonly string[] | undefined = path.includes('.') ? path.split('.') : undefined,
): unknown {
  if (Object.hasOwn(claims, path)) return claims[path];
  if (segments === undefined) return undefined;
  let cur: unknown = claims;
  for (let i = 0; i < segments.length; i++) {
    const key = segments[i]!;
    if (cur === null || typeof cur !== 'object' || !Object.hasOwn(cur, key)) return undefined;
    cur = (cur as Record<string, unknown>)[key];
  }
  return cur;
}

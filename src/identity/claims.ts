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

/**
 * Who is calling. Every authenticator (session cookie, bearer JWT, API key, client certificate) turns a
 * credential into the same `Identity`, so policy, headers and the audit trail never care how it came.
 */

/** How the identity was established; policy rules can match on it (`authMethod`). */
export type AuthMethod = 'session' | 'bearer' | 'apiKey' | 'mtls';

/** A verified caller. */
export interface Identity {
  /** Stable identifier: the token `sub`, the API key subject, or the certificate subject. */
  readonly subject: string;
  /** Human-readable user name (`preferred_username`, or the subject). */
  readonly user: string;
  readonly email: string | undefined;
  readonly groups: readonly string[];
  /** Every claim as received (ID token + userinfo, JWT payload, or certificate fields). */
  readonly claims: Readonly<Record<string, unknown>>;
  readonly authMethod: AuthMethod;
  /** The OIDC provider name, the bearer issuer, the API key id, or the certificate issuer. */
  readonly source: string;
  /** When the credential stops being valid (ms since the epoch), if known. */
  readonly expiresAt: number | undefined;
}

/**
 * Stable reason codes. They appear in the access log, in `explain`, and in short form in 401/403
 * responses. `policy-deny:<rule>` and `policy-allow:<rule>` carry the deciding rule's name.
 */
export type ReasonCode =
  | 'public-route'
  | 'authenticated'
  | 'user-unauthenticated'
  | 'no-allow-rule'
  | 'token-expired'
  | 'token-not-yet-valid'
  | 'token-invalid'
  | 'token-wrong-audience'
  | 'token-wrong-issuer'
  | 'token-unknown-issuer'
  | 'jwks-unavailable'
  | 'api-key-invalid'
  | 'api-key-expired'
  | 'api-key-out-of-scope'
  | 'session-expired'
  | 'session-invalid'
  | 'certificate-invalid'
  | 'origin-not-allowed'
  | `policy-deny:${string}`
  | `policy-allow:${string}`
  | `rate-limited:${string}`
  | `quota-exceeded:${string}`;

/** The outcome of one authenticator looking at a request. */
export type AuthResult =
  /** The request carries no credential of this kind. */
  | { readonly kind: 'none' }
  | { readonly kind: 'ok'; readonly identity: Identity }
  /** A credential was presented and is not acceptable: the request fails closed with this reason. */
  | { readonly kind: 'invalid'; readonly reason: ReasonCode; readonly message: string };

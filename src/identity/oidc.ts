/**
 * One OpenID Connect provider, spoken to with `openid-client`: discovery (lazy, with a timeout and a
 * cooldown after failure), the authorization code flow with PKCE S256, `state` and `nonce` (OIDC Core
 * 3.1; RFC 7636), groups from the ID token or else the userinfo endpoint, refresh (RFC 6749 section 6)
 * and RP-initiated logout with `id_token_hint` (OIDC RP-Initiated Logout 1.0).
 *
 * An `http:` issuer is accepted only on a loopback address (development and tests); then, and only
 * then, openid-client is allowed plain-HTTP requests, and every discovered endpoint must be loopback too.
 */
import { isIPv4, isIPv6 } from 'node:net';
import * as client from 'openid-client';
import { GatehouseError } from '../errors.js';
import type { Logger } from '../observe/log.js';
import { claimAt, verifiedEmail } from './claims.js';
import type { SessionProfile, SessionRecord, SessionTokens } from './session.js';

/** A provider from `identity.providers`, with its client secret already resolved. */
export interface OidcProviderSettings {
  readonly name: string;
  readonly displayName?: string | undefined;
  readonly issuer: string;
  readonly clientId: string;
  /** Omitted for a public client (PKCE only). */
  readonly clientSecret?: string | undefined;
  readonly scopes: readonly string[];
  /** Claim listing the groups; a dotted path (`realm_access.roles`) works when no claim has that exact name. */
  readonly groupsClaim: string;
}

/** Tuning knobs; the defaults suit production. */
export interface OidcClientOptions {
  /** Time allowed for discovery, in ms (default 5 s). */
  discoveryTimeout?: number;
  /** Time allowed for each later request (token, userinfo), in ms (default 10 s). */
  requestTimeout?: number;
  /** After a failed discovery, how long to answer with that failure before trying again, in ms (default 5 s). */
  retryAfter?: number;
  /** Clock in ms since the epoch, for token expiry bookkeeping (tests freeze it). */
  now?: () => number;
}

/** What a completed sign-in or refresh yields: who, and the tokens to keep server side. */
export interface OidcLogin {
  readonly profile: SessionProfile;
  readonly tokens: SessionTokens;
}

/**
 * OIDC failures with a stable code: `GH_OIDC_UNAVAILABLE` (503: discovery, network, timeout),
 * `GH_OIDC_DENIED` (400: the provider answered the authorization request with an error),
 * `GH_OIDC_TOKEN` (502: the code exchange or the tokens failed validation), `GH_OIDC_REFRESH_REJECTED`
 * (401: the provider refused the refresh token), `GH_OIDC_CONFIG` (an unusable provider setting).
 */
export class OidcError extends GatehouseError {
  /** The OAuth `error` value when the provider sent one. */
  readonly oauthError: string | undefined;
  constructor(
    code: string,
    status: number,
    message: string,
    options?: { cause?: unknown; oauthError?: string },
  ) {
    super(code, status, message, { cause: options?.cause });
    this.oauthError = options?.oauthError;
  }
}

/** True for `localhost`, 127.0.0.0/8 and ::1: the only hosts where plain HTTP to a provider is allowed. */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
  if (h.toLowerCase() === 'localhost') return true;
  if (isIPv4(h)) return h.startsWith('127.');
  if (isIPv6(h)) return h === '::1' || h === '0:0:0:0:0:0:0:1';
  return false;
}

// Protocol claims that say nothing about the person and are not kept in the session.
const PROTOCOL_CLAIMS = new Set([
  'nonce',
  'at_hash',
  'c_hash',
  's_hash',
  'exp',
  'iat',
  'nbf',
  'jti',
  'aud',
  'azp',
]);
/** Most groups accepted; a larger list refuses the sign-in rather than dropping groups a deny rule may need. */
export const MAX_GROUPS = 5000;
/** Largest claims set kept per session (serialized), beyond which sign-in is refused. */
export const MAX_CLAIMS_BYTES = 256 * 1024;

/** The OIDC relying party for one provider. */
export class OidcClient {
  readonly settings: OidcProviderSettings;
  readonly #logger: Logger;
  readonly #insecure: boolean;
  readonly #discoveryTimeout: number;
  readonly #requestTimeout: number;
  readonly #retryAfter: number;
  readonly #now: () => number;
  #config: Promise<client.Configuration> | undefined;
  #failure: { at: number; error: OidcError } | undefined;

  /** Throws `OidcError` (`GH_OIDC_CONFIG`) for an issuer that is not https, or http off loopback. */
  constructor(settings: OidcProviderSettings, logger: Logger, options: OidcClientOptions = {}) {
    const issuer = URL.parse(settings.issuer);
    if (issuer === null || (issuer.protocol !== 'https:' && issuer.protocol !== 'http:')) {
      throw new OidcError('GH_OIDC_CONFIG', 0, `provider ${settings.name}: issuer must be an https:// URL`);
    }
    if (issuer.protocol === 'http:' && !isLoopbackHost(issuer.hostname)) {
      throw new OidcError(
        'GH_OIDC_CONFIG',
        0,
        `provider ${settings.name}: an http:// issuer is only allowed on a loopback address (use https://)`,
      );
    }
    if (!settings.scopes.includes('openid')) {
      throw new OidcError('GH_OIDC_CONFIG', 0, `provider ${settings.name}: scopes must include openid`);
    }
    this.settings = settings;
    this.#logger = logger;
    this.#insecure = issuer.protocol === 'http:';
    this.#discoveryTimeout = options.discoveryTimeout ?? 5000;
    this.#requestTimeout = options.requestTimeout ?? 10_000;
    this.#retryAfter = options.retryAfter ?? 5000;
    this.#now = options.now ?? Date.now;
  }

  /** The provider name from the configuration. */
  get name(): string {
    return this.settings.name;
  }

  /** The name shown on the login page. */
  get displayName(): string {
    return this.settings.displayName ?? this.settings.name;
  }

  /**
   * The discovered configuration (cached). Concurrent callers share one discovery; after a failure the
   * same error is returned for `retryAfter` so an unreachable provider is not hammered.
   */
  configuration(): Promise<client.Configuration> {
    if (this.#config !== undefined) return this.#config;
    const failure = this.#failure;
    if (failure !== undefined && Date.now() - failure.at < this.#retryAfter)
      return Promise.reject(failure.error);
    const pending = this.#discover().then(
      (config) => {
        this.#failure = undefined;
        return config;
      },
      (err: unknown) => {
        const error =
          err instanceof OidcError
            ? err
            : new OidcError(
                'GH_OIDC_UNAVAILABLE',
                503,
                `provider ${this.name}: discovery failed: ${messageOf(err)}`,
                {
                  cause: err,
                },
              );
        this.#failure = { at: Date.now(), error };
        this.#config = undefined;
        this.#logger.error({ provider: this.name, err: error.message }, 'OIDC discovery failed');
        throw error;
      },
    );
    this.#config = pending;
    return pending;
  }

  /** True when the provider advertises an end-session endpoint (after discovery). */
  async supportsLogout(): Promise<boolean> {
    const config = await this.configuration();
    return typeof config.serverMetadata().end_session_endpoint === 'string';
  }

  /** The authorization request URL (code flow, PKCE S256, state and nonce). */
  async authorizationUrl(p: {
    redirectUri: string;
    state: string;
    nonce: string;
    codeVerifier: string;
  }): Promise<URL> {
    const config = await this.configuration();
    const challenge = await client.calculatePKCECodeChallenge(p.codeVerifier);
    return client.buildAuthorizationUrl(config, {
      response_type: 'code',
      redirect_uri: p.redirectUri,
      scope: this.settings.scopes.join(' '),
      state: p.state,
      nonce: p.nonce,
      code_challenge: challenge,
      code_challenge_method: 'S256',
    });
  }

  /**
   * Validates the authorization response at `callbackUrl` (the redirect URI plus the provider's query),
   * exchanges the code and returns the profile and tokens. The redirect URI sent to the token endpoint
   * is `callbackUrl` without its query, so build it from the URI used in the authorization request.
   */
  async completeLogin(
    callbackUrl: URL,
    checks: { state: string; nonce: string; codeVerifier: string },
  ): Promise<OidcLogin> {
    const config = await this.configuration();
    let response: Awaited<ReturnType<typeof client.authorizationCodeGrant>>;
    try {
      response = await client.authorizationCodeGrant(config, callbackUrl, {
        pkceCodeVerifier: checks.codeVerifier,
        expectedState: checks.state,
        expectedNonce: checks.nonce,
        idTokenExpected: true,
      });
    } catch (err) {
      throw this.#translate(err, 'sign-in');
    }
    const idClaims = response.claims();
    if (idClaims === undefined)
      throw new OidcError('GH_OIDC_TOKEN', 502, `provider ${this.name}: no ID token`);
    const profile = await this.#profile(config, idClaims, undefined, response.access_token);
    return { profile, tokens: this.#tokens(response, undefined) };
  }

  /**
   * Uses the session's refresh token. A provider that refuses it (`invalid_grant`, revoked, expired)
   * yields `GH_OIDC_REFRESH_REJECTED`; a provider that cannot be reached yields `GH_OIDC_UNAVAILABLE`.
   * Claims and groups are re-read (new ID token, else userinfo) so membership changes take effect.
   */
  async refresh(record: SessionRecord): Promise<OidcLogin> {
    const refreshToken = record.tokens.refreshToken;
    if (refreshToken === undefined) {
      throw new OidcError(
        'GH_OIDC_REFRESH_REJECTED',
        401,
        `provider ${this.name}: the session has no refresh token`,
      );
    }
    const config = await this.configuration();
    let response: Awaited<ReturnType<typeof client.refreshTokenGrant>>;
    try {
      response = await client.refreshTokenGrant(config, refreshToken);
    } catch (err) {
      throw this.#translate(err, 'refresh');
    }
    const idClaims = response.claims();
    if (idClaims !== undefined && idClaims.sub !== record.subject) {
      throw new OidcError(
        'GH_OIDC_REFRESH_REJECTED',
        401,
        `provider ${this.name}: refreshed ID token names another subject`,
      );
    }
    const profile = await this.#profile(config, idClaims, record, response.access_token);
    return { profile, tokens: this.#tokens(response, record.tokens) };
  }

  /**
   * The provider's end-session URL with `id_token_hint`, `client_id` and the post-logout redirect, or
   * undefined when the provider has no end-session endpoint or cannot be reached (local logout still counts).
   */
  async endSessionUrl(idToken: string | undefined, postLogoutRedirectUri: string): Promise<URL | undefined> {
    let config: client.Configuration;
    try {
      config = await this.configuration();
    } catch {
      return undefined;
    }
    if (typeof config.serverMetadata().end_session_endpoint !== 'string') return undefined;
    const params: Record<string, string> = {
      client_id: this.settings.clientId,
      post_logout_redirect_uri: postLogoutRedirectUri,
    };
    if (idToken !== undefined) params.id_token_hint = idToken;
    return client.buildEndSessionUrl(config, params);
  }

  async #discover(): Promise<client.Configuration> {
    const secret = this.settings.clientSecret;
    const auth = secret === undefined ? client.None() : client.ClientSecretBasic(secret);
    const discovered = await client.discovery(
      new URL(this.settings.issuer),
      this.settings.clientId,
      secret,
      auth,
      {
        timeout: Math.max(1, Math.ceil(this.#discoveryTimeout / 1000)),
        execute: this.#insecure ? [client.allowInsecureRequests] : [],
      },
    );
    const metadata = discovered.serverMetadata();
    if (this.#insecure) {
      // Plain HTTP was allowed for a loopback issuer only: every endpoint it names must stay on loopback.
      for (const [key, value] of Object.entries(metadata)) {
        if (!key.endsWith('_endpoint') && key !== 'jwks_uri') continue;
        if (typeof value !== 'string') continue;
        const u = URL.parse(value);
        if (u === null || (u.protocol === 'http:' && !isLoopbackHost(u.hostname))) {
          throw new OidcError(
            'GH_OIDC_CONFIG',
            503,
            `provider ${this.name}: ${key} ${value} is plain HTTP off loopback`,
          );
        }
      }
    }
    let config = discovered;
    const methods = metadata.token_endpoint_auth_methods_supported;
    if (
      secret !== undefined &&
      Array.isArray(methods) &&
      !methods.includes('client_secret_basic') &&
      methods.includes('client_secret_post')
    ) {
      config = new client.Configuration(
        metadata,
        this.settings.clientId,
        secret,
        client.ClientSecretPost(secret),
      );
      if (this.#insecure) client.allowInsecureRequests(config);
    }
    config.timeout = Math.max(1, Math.ceil(this.#requestTimeout / 1000));
    this.#logger.info({ provider: this.name, issuer: metadata.issuer }, 'OIDC provider discovered');
    return config;
  }

  async #profile(
    config: client.Configuration,
    idClaims: client.IDToken | undefined,
    previous: SessionRecord | undefined,
    accessToken: string,
  ): Promise<SessionProfile> {
    const claimsName = this.settings.groupsClaim;
    let claims: Record<string, unknown> =
      idClaims !== undefined ? cleanClaims(idClaims) : { ...previous?.claims };
    let groupsSource: unknown = idClaims !== undefined ? claimAt(idClaims, claimsName) : undefined;
    const needUserinfo =
      typeof config.serverMetadata().userinfo_endpoint === 'string' &&
      (idClaims === undefined || groupsSource === undefined || claims.email === undefined);
    if (needUserinfo) {
      const subject = (idClaims?.sub ?? previous?.subject) as string;
      let info: client.UserInfoResponse;
      try {
        info = await client.fetchUserInfo(config, accessToken, subject);
      } catch (err) {
        throw this.#translate(err, previous === undefined ? 'userinfo' : 'refresh');
      }
      // The ID token wins for claims it carries; userinfo fills the gaps (OIDC Core 5.3.2).
      claims = { ...cleanClaims(info), ...claims };
      if (groupsSource === undefined) groupsSource = claimAt(info, claimsName);
      if (groupsSource === undefined && idClaims === undefined) groupsSource = previous?.groups;
    } else if (groupsSource === undefined && idClaims === undefined) {
      groupsSource = previous?.groups;
    }
    const groups = toGroups(groupsSource);
    if (groups.length > MAX_GROUPS) {
      throw new OidcError('GH_OIDC_TOKEN', 502, `provider ${this.name}: more than ${MAX_GROUPS} groups`);
    }
    if (Buffer.byteLength(JSON.stringify(claims)) > MAX_CLAIMS_BYTES) {
      throw new OidcError(
        'GH_OIDC_TOKEN',
        502,
        `provider ${this.name}: claims larger than ${MAX_CLAIMS_BYTES} bytes`,
      );
    }
    const subject = String(claims.sub ?? previous?.subject);
    const username = claims.preferred_username;
    return {
      provider: this.name,
      subject,
      user: typeof username === 'string' && username !== '' ? username : subject,
      email: verifiedEmail(claims),
      groups,
      claims,
    };
  }

  #tokens(response: client.TokenEndpointResponse, previous: SessionTokens | undefined): SessionTokens {
    const expiresIn = typeof response.expires_in === 'number' ? response.expires_in : undefined;
    return {
      accessToken: response.access_token,
      // A provider that does not rotate refresh tokens keeps the old one valid (RFC 6749 section 6).
      refreshToken: response.refresh_token ?? previous?.refreshToken,
      idToken: response.id_token ?? previous?.idToken,
      expiresAt: expiresIn === undefined ? undefined : this.#now() + expiresIn * 1000,
    };
  }

  #translate(err: unknown, stage: 'sign-in' | 'userinfo' | 'refresh'): OidcError {
    if (err instanceof OidcError) return err;
    if (err instanceof client.AuthorizationResponseError) {
      return new OidcError(
        'GH_OIDC_DENIED',
        400,
        `provider ${this.name}: ${err.error}${describe(err.error_description)}`,
        {
          cause: err,
          oauthError: err.error,
        },
      );
    }
    if (err instanceof client.ResponseBodyError || err instanceof client.WWWAuthenticateChallengeError) {
      const oauthError = err instanceof client.ResponseBodyError ? err.error : 'invalid_token';
      if (stage === 'refresh') {
        return new OidcError(
          'GH_OIDC_REFRESH_REJECTED',
          401,
          `provider ${this.name} refused the refresh: ${oauthError}`,
          {
            cause: err,
            oauthError,
          },
        );
      }
      return new OidcError(
        'GH_OIDC_TOKEN',
        502,
        `provider ${this.name} refused the ${stage}: ${oauthError}`,
        {
          cause: err,
          oauthError,
        },
      );
    }
    const code = (err as { code?: unknown } | null)?.code;
    // openid-client's own checks (state, nonce, signature, issuer, audience) fail with OAUTH_* codes.
    if (typeof code === 'string' && code.startsWith('OAUTH_') && !NETWORKISH.has(code)) {
      return new OidcError(
        stage === 'refresh' ? 'GH_OIDC_REFRESH_REJECTED' : 'GH_OIDC_TOKEN',
        stage === 'refresh' ? 401 : 502,
        `provider ${this.name}: ${stage} response failed validation: ${messageOf(err)}`,
        { cause: err },
      );
    }
    return new OidcError(
      'GH_OIDC_UNAVAILABLE',
      503,
      `provider ${this.name}: ${stage} failed: ${messageOf(err)}`,
      {
        cause: err,
      },
    );
  }
}

// Failures of the transport rather than of the provider's answer.
const NETWORKISH = new Set(['OAUTH_RESPONSE_IS_NOT_CONFORM', 'OAUTH_RESPONSE_IS_NOT_JSON', 'OAUTH_TIMEOUT']);

function describe(text: string | undefined): string {
  return text ? ` (${text})` : '';
}

function messageOf(err: unknown): string {
  if (err instanceof Error) {
    const cause = err.cause instanceof Error ? `: ${err.cause.message}` : '';
    return `${err.message}${cause}`;
  }
  return String(err);
}

/** Claims without protocol-only members. */
function cleanClaims(claims: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(claims)) if (!PROTOCOL_CLAIMS.has(k) && v !== undefined) out[k] = v;
  return out;
}

/** Groups from a claim value: an array of strings, or one string (space- or comma-separated lists are not split). */
function toGroups(value: unknown): string[] {
  if (typeof value === 'string') return value === '' ? [] : [value];
  if (!Array.isArray(value)) return [];
  const out: string[] = [];
  for (const g of value) if (typeof g === 'string' && g !== '') out.push(g);
  return out;
}

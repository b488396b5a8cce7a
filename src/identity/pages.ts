/**
 * The few HTML pages the gateway shows people: the provider picker, 401, 403 (who you are, why, and a
 * sign-out link: never a redirect), signed out, and errors. Self-contained (inline CSS, no scripts, no
 * external resources), every interpolated value escaped, and served with a CSP that forbids scripts.
 */
import type { ServerResponse } from 'node:http';

/** Escapes text for HTML element content and quoted attribute values. */
export function escapeHtml(value: unknown): string {
  return String(value ?? '').replace(/[&<>"'`=/]/g, (c) => `&#${c.charCodeAt(0)};`);
}

const STYLE =
  'body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2433}' +
  'main{max-width:28rem;margin:12vh auto;padding:2rem;background:#fff;border-radius:8px;box-shadow:0 1px 4px #0002}' +
  'h1{font-size:1.35rem;margin:0 0 1rem}p{margin:.5rem 0}code{background:#eef0f3;padding:0 .25rem;border-radius:3px}' +
  'ul{list-style:none;padding:0}li{margin:.5rem 0}' +
  'a.button{display:block;padding:.6rem 1rem;border-radius:6px;background:#2456d6;color:#fff;text-decoration:none;text-align:center}' +
  'a.button:hover{background:#1b45b0}.muted{color:#5d6475;font-size:.9rem}';

/** The headers every page is sent with: no caching, no framing, no scripts, no referrer. */
export const PAGE_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  'content-type': 'text/html; charset=utf-8',
  'cache-control': 'no-store',
  'content-security-policy':
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
  'x-frame-options': 'DENY',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
});

function layout(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta name="robots" content="noindex"><title>${escapeHtml(title)}</title><style>${STYLE}</style></head><body><main>${body}</main></body></html>`;
}

/** A provider offered on the picker. */
export interface PickerEntry {
  readonly displayName: string;
  /** The `/.gatehouse/login?...&provider=` URL that starts sign-in with it. */
  readonly href: string;
}

/** The login page when several providers apply: one button per provider. */
export function pickerPage(providers: readonly PickerEntry[]): string {
  const items = providers
    .map(
      (p) =>
        `<li><a class="button" href="${escapeHtml(p.href)}">Sign in with ${escapeHtml(p.displayName)}</a></li>`,
    )
    .join('');
  return layout('Sign in', `<h1>Sign in</h1><p>Choose how to sign in:</p><ul>${items}</ul>`);
}

/** Who the 403 page says is signed in. */
export interface SignedInAs {
  readonly user: string;
  readonly email?: string | undefined;
  /** Provider, issuer or key id the identity came from. */
  readonly source?: string | undefined;
}

/**
 * 403: the caller is known but not allowed. Says who they are signed in as and why (the reason code and
 * its sentence), and offers signing out to switch accounts. It never redirects, so it cannot loop.
 */
export function forbiddenPage(p: {
  who: SignedInAs | undefined;
  reason: string;
  reasonText?: string | undefined;
  signOutHref?: string | undefined;
}): string {
  const who =
    p.who === undefined
      ? '<p>You are not signed in.</p>'
      : `<p>You are signed in as <strong>${escapeHtml(p.who.user)}</strong>${
          p.who.email !== undefined && p.who.email !== p.who.user ? ` (${escapeHtml(p.who.email)})` : ''
        }${p.who.source !== undefined ? ` <span class="muted">via ${escapeHtml(p.who.source)}</span>` : ''}.</p>`;
  const why = `<p>Reason: ${p.reasonText !== undefined ? `${escapeHtml(p.reasonText)} ` : ''}<code>${escapeHtml(p.reason)}</code></p>`;
  const out =
    p.signOutHref !== undefined
      ? `<p><a class="button" href="${escapeHtml(p.signOutHref)}">Sign out</a></p><p class="muted">Sign out to use another account.</p>`
      : '';
  return layout('Access denied', `<h1>Access denied</h1>${who}${why}${out}`);
}

/** 401 for a browser: sign-in required (with a link when a login applies). */
export function unauthorizedPage(p: {
  reason: string;
  reasonText?: string | undefined;
  signInHref?: string | undefined;
}): string {
  const link =
    p.signInHref !== undefined
      ? `<p><a class="button" href="${escapeHtml(p.signInHref)}">Sign in</a></p>`
      : '';
  return layout(
    'Sign-in required',
    `<h1>Sign-in required</h1><p>${escapeHtml(p.reasonText ?? 'This page needs a signed-in user.')} <code>${escapeHtml(p.reason)}</code></p>${link}`,
  );
}

/** After logout. */
export function signedOutPage(p: { signInHref?: string | undefined } = {}): string {
  const link =
    p.signInHref !== undefined
      ? `<p><a class="button" href="${escapeHtml(p.signInHref)}">Sign in again</a></p>`
      : '';
  return layout('Signed out', `<h1>You are signed out</h1><p>Your session has ended.</p>${link}`);
}

/** A failure during sign-in or sign-out: a short message and the stable code, never internals. */
export function errorPage(p: {
  title: string;
  message: string;
  code: string;
  retryHref?: string | undefined;
}): string {
  const retry =
    p.retryHref !== undefined
      ? `<p><a class="button" href="${escapeHtml(p.retryHref)}">Try again</a></p>`
      : '';
  return layout(
    p.title,
    `<h1>${escapeHtml(p.title)}</h1><p>${escapeHtml(p.message)}</p><p class="muted"><code>${escapeHtml(p.code)}</code></p>${retry}`,
  );
}

/**
 * Sends a page with `PAGE_HEADERS` plus `headers` (e.g. Set-Cookie arrays); HEAD gets headers only.
 * Set-Cookie values already on the response are kept.
 */
/** True when the client accepts an HTML page (Accept names text/html): it is shown a page, not JSON. */
export function acceptsHtml(req: { readonly headers: { readonly accept?: string | undefined } }): boolean {
  const accept = req.headers.accept;
  return typeof accept === 'string' && /text\/html/i.test(accept);
}

export function sendPage(
  res: ServerResponse,
  status: number,
  html: string,
  headers: Record<string, string | string[]> = {},
  method = 'GET',
): void {
  const body = Buffer.from(html);
  for (const [k, v] of Object.entries(PAGE_HEADERS)) res.setHeader(k, v);
  for (const [k, v] of Object.entries(headers)) {
    if (k.toLowerCase() === 'set-cookie') appendSetCookie(res, v);
    else res.setHeader(k, v);
  }
  res.setHeader('content-length', body.length);
  res.statusCode = status;
  res.end(method === 'HEAD' ? undefined : body);
}

/** Adds Set-Cookie values without dropping those already set on the response. */
export function appendSetCookie(res: ServerResponse, value: string | readonly string[]): void {
  const add = typeof value === 'string' ? [value] : [...value];
  if (add.length === 0) return;
  const existing = res.getHeader('set-cookie');
  const before = existing === undefined ? [] : Array.isArray(existing) ? existing : [String(existing)];
  res.setHeader('set-cookie', [...before, ...add]);
}

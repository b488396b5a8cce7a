/**
 * Path and authorization confusion: "no path that normalizes under a denied prefix is allowed". A config
 * with an admin-only route and deny rules is asked, through the real routing and decision code (the
 * offline evaluator `gatehouse explain` uses: normalize, route, decide), about generated request
 * targets; each allowed request is compared with the decision on the path a Tomcat-like backend (Tomcat,
 * Jetty, Spring) acts on: path parameters removed from every segment, then decoded, then normalized.
 */
import fc from 'fast-check';
import { ConfigSchema } from '../../src/config/schema.js';
import type { Decision } from '../../src/core/decide.js';
import { evaluateOffline, type OfflineResult, offlineContext } from '../../src/policy/offline.js';
import { defineTarget } from '../harness.js';

const config = ConfigSchema.parse({
  listeners: [{ name: 'main', bind: '127.0.0.1:0' }],
  upstreams: { app: { servers: [{ url: 'http://127.0.0.1:9' }] } },
  policies: {
    users: {
      allow: [{ name: 'users', groups: ['users'] }],
      deny: [
        { name: 'no-internal', paths: ['/internal'] },
        { name: 'no-secrets', paths: ['/x/secret/'] },
      ],
    },
    admins: { allow: [{ name: 'admins', groups: ['admins'] }] },
  },
  routes: [
    { name: 'admin', match: { path: '/admin' }, upstream: 'app', policy: 'admins' },
    { name: 'app', match: { path: '/' }, upstream: 'app', policy: 'users' },
  ],
});
const ctx = offlineContext(config);
const USER = { email: 'user@example.com', groups: ['users'] };
const NOW = Date.UTC(2026, 0, 5, 12);

const SEGMENTS = [
  'admin',
  'internal',
  'x',
  'secret',
  'app',
  '.',
  '..',
  '%2e',
  '%2E%2e',
  '.%2e',
  '..;',
  ';',
  ';x',
  'admin;x',
  'internal;jsessionid=AB12',
  'admin;',
  ';/admin',
  '%3b',
  'admin%3bx',
  '%61dmin',
  'ADMIN',
  'a',
  '',
  '..;x',
  'secret;a=b',
  '%2e;',
  'x;y=z',
  '%5c',
  '%2f',
  '~',
  '%7e',
];
const requestTarget = fc
  .tuple(
    fc.array(fc.constantFrom(...SEGMENTS), { minLength: 1, maxLength: 7 }),
    fc.constantFrom('', '/', '?a=1', '?a=/admin', '/?x'),
  )
  .map(([segs, tail]) => `/${segs.join('/')}${tail}`);

/** The path a Tomcat-like backend acts on, or undefined when it answers 400 itself. */
export function backendPath(target: string): string | undefined {
  const q = target.indexOf('?');
  let raw = q === -1 ? target : target.slice(0, q);
  // Path parameters: from each ";" to the end of its segment (Tomcat's CoyoteAdapter.parsePathParameters).
  raw = raw.replace(/;[^/]*/g, '');
  let bytes: number[];
  try {
    bytes = [...Buffer.from(decodeURIComponentBytes(raw), 'latin1')];
  } catch {
    return undefined;
  }
  const decoded = Buffer.from(bytes).toString('latin1');
  // An encoded "/", a backslash or NUL are refused with 400 by default.
  if (/%2f/i.test(raw) || decoded.includes('\\') || decoded.includes('\0')) return undefined;
  if (!decoded.startsWith('/')) return undefined;
  const out: string[] = [];
  for (const seg of decoded.split('/').slice(1)) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') {
      if (out.length === 0) return undefined;
      out.pop();
      continue;
    }
    out.push(seg);
  }
  const trailing = /\/(?:\.\.?)?$/.test(decoded) && out.length > 0 ? '/' : '';
  return `/${out.join('/')}${trailing}`;
}

function decodeURIComponentBytes(s: string): string {
  return s.replace(/%([0-9a-fA-F]{2})|%/g, (_all, hex: string | undefined) => {
    if (hex === undefined) throw new Error('malformed escape');
    return String.fromCharCode(Number.parseInt(hex, 16));
  });
}

function decide(target: string): OfflineResult {
  return evaluateOffline(ctx, {
    method: 'GET',
    url: `http://app.test${encodeForUrl(target)}`,
    as: USER,
    now: NOW,
  });
}

// The offline evaluator takes a URL; characters a request line carries as they are must stay so.
function encodeForUrl(target: string): string {
  return target.replace(
    /[^\x21-\x7e]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`,
  );
}

function summary(r: OfflineResult): string {
  const o = r.outcome;
  return 'outcome' in o
    ? `${(o as Decision).outcome} ${o.status} ${o.reason} (route ${r.route?.name}, path ${r.path})`
    : `${o.status} ${o.reason}`;
}

function allowed(r: OfflineResult): boolean {
  return 'outcome' in r.outcome && r.outcome.outcome === 'allow';
}

export default defineTarget<string>({
  name: 'path-authz',
  description:
    'routing and decision on normalized paths (src/core/routes.ts, src/core/decide.ts via src/policy/offline.ts)',
  invariants: {
    'decided-on-normalized':
      'the decision on a request target is the decision on its normalized path (routing and policy see only that)',
    'denied-prefix-never-allowed':
      'a normalized path under a denied prefix (/admin for a non-admin, /internal, /x/secret/) is never allowed',
    'backend-path-agrees':
      'when a request is allowed, the path a Tomcat-like backend acts on (path parameters removed, decoded, normalized) is allowed too',
  },
  arbitrary: requestTarget,
  run(target, invariant) {
    const r = decide(target);
    if (r.path === undefined) return;
    const q = target.indexOf('?');
    const again = decide(r.path + (q === -1 ? '' : target.slice(q)));
    invariant(
      'decided-on-normalized',
      summary(again) === summary(r),
      () => `${summary(r)}; on ${r.path}: ${summary(again)}`,
    );
    if (!allowed(r)) return;
    invariant(
      'denied-prefix-never-allowed',
      !/^\/(?:admin|internal)(?:\/|$)|^\/x\/secret\//.test(r.path),
      () => `${summary(r)}`,
    );
    const backend = backendPath(target);
    if (backend === undefined) return;
    // A ";" still in the backend's path came from an encoded %3B: a literal character of a segment's
    // name there, so the gateway is asked about it as one.
    const b = decide(backend.replaceAll(';', '%3B'));
    invariant(
      'backend-path-agrees',
      allowed(b),
      () => `gateway: ${summary(r)}; backend acts on ${backend}: ${summary(b)}`,
    );
  },
});

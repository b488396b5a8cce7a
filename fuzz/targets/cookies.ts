/**
 * Cookies: the Cookie header parsing (`cookieValues`, `removeCookies`) and the session seal
 * (`SessionManager.seal`/`unseal`/`lookup` in src/identity/session.ts, over the memory store). A cookie
 * value that was not sealed by the gateway must never open a session, whatever the header looks like.
 */
import fc from 'fast-check';
import { cookieValues, removeCookies, SessionManager } from '../../src/identity/session.js';
import { MemoryStore } from '../../src/state/memory.js';
import { defineTarget, fragments, latin1Char } from '../harness.js';

const NOW = Date.UTC(2026, 0, 5, 12);
const NAME = 'gh_session';
const SECRET_A = 'fuzz-secret-a-0123456789abcdefghijklmnop';
const SECRET_B = 'fuzz-secret-b-0123456789abcdefghijklmnop';
const settings = { maxAge: 3_600_000, idleTimeout: 3_600_000, cookie: NAME };
const store = new MemoryStore({ sweepInterval: 0, now: () => NOW });
const sessions = new SessionManager(
  store,
  { ...settings, secrets: [SECRET_A, SECRET_B] },
  { now: () => NOW },
);
const oldSessions = new SessionManager(store, { ...settings, secrets: [SECRET_B] }, { now: () => NOW });
const profile = {
  provider: 'corp',
  subject: 'u1',
  user: 'u1',
  email: 'u1@example.com',
  groups: ['g'],
  claims: {},
};
const tokens = { accessToken: undefined, refreshToken: undefined, idToken: undefined, expiresAt: undefined };

// Fixed session ids (not `create`'s random ones), so that a seed gives the same inputs in every process.
const LIVE = Buffer.alloc(32, 7).toString('base64url');
const ENDED = Buffer.alloc(32, 9).toString('base64url');
const record = {
  v: 1 as const,
  ...profile,
  createdAt: NOW,
  lastSeen: NOW,
  expiresAt: NOW + 3_600_000,
  tokens,
};
await sessions.update(LIVE, record);
await sessions.update(ENDED, record);
await sessions.revoke(ENDED);
/** Genuine cookie values: a live session (current and previous secret) and an ended one. */
const GENUINE = [sessions.seal(LIVE), oldSessions.seal(LIVE), sessions.seal(ENDED)];
const LIVE_IDS = new Set([LIVE]);

const NAMES = [
  NAME,
  ` ${NAME}`,
  `${NAME} `,
  'GH_SESSION',
  `${NAME}_login`,
  `x${NAME}`,
  'other',
  '',
  '=',
  '$Version',
];
const PIECES = [...GENUINE, '"', '=', ';', ',', ' ', '.', 'A'.repeat(43), '-', '_', '%3D', '\t', 'a'];

/** A genuine value with one bit of one character flipped. */
const flipped = fc
  .tuple(fc.constantFrom(...GENUINE), fc.nat(86), fc.nat(6))
  .map(([v, i, b]) => v.slice(0, i) + String.fromCharCode(v.charCodeAt(i) ^ (1 << b)) + v.slice(i + 1));
const value = fc.oneof(
  { weight: 2, arbitrary: fc.constantFrom(...GENUINE) },
  { weight: 3, arbitrary: flipped },
  { weight: 1, arbitrary: flipped.map((v) => `"${v}"`) },
  { weight: 2, arbitrary: fragments(PIECES, { chars: latin1Char, maxParts: 4 }) },
);
const pair = fc.oneof(
  {
    weight: 5,
    arbitrary: fc
      .tuple(fc.constantFrom(...NAMES), fc.constantFrom('=', ' = ', '=='), value)
      .map((p) => p.join('')),
  },
  { weight: 1, arbitrary: fragments(PIECES, { chars: latin1Char, maxParts: 3 }) },
);
const header = fc.oneof(
  fc
    .tuple(fc.array(pair, { maxLength: 5 }), fc.constantFrom('; ', ';', ' ; ', ', ', ';;'))
    .map(([pairs, sep]) => pairs.join(sep)),
  fc.constant(undefined),
);
const id = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString('base64url'));

export default defineTarget<{ header: string | undefined; probe: string; id: string }>({
  name: 'cookies',
  description: 'cookieValues, removeCookies, SessionManager seal/unseal/lookup (src/identity/session.ts)',
  invariants: {
    'cookie-values': 'every value cookieValues finds is free of ";" and is a part of the header as sent',
    'remove-cookies': 'removeCookies leaves no value of a removed cookie and keeps every other cookie',
    'seal-round-trip': 'unseal(seal(id)) gives the id with the current secret',
    'seal-exact': 'unseal accepts only the exact value seal made (a one-bit change never unseals)',
    'lookup-genuine':
      'lookup opens a session only for a header holding the sealed value of a live session; never throws',
  },
  async: true,
  arbitrary: fc.record({ header, probe: fc.oneof(value, fc.string()), id }),
  async run({ header, probe, id }, invariant) {
    const values = cookieValues(header, NAME);
    invariant(
      'cookie-values',
      values.every((v) => !v.includes(';') && header !== undefined && header.includes(v)),
      () => `${JSON.stringify(values)}`,
    );
    const kept = removeCookies(header, new Set([NAME]));
    invariant(
      'remove-cookies',
      cookieValues(kept, NAME).length === 0 &&
        ['other', `${NAME}_login`, 'GH_SESSION'].every(
          (n) => JSON.stringify(cookieValues(kept, n)) === JSON.stringify(cookieValues(header, n)),
        ),
      () => `left ${JSON.stringify(kept)}`,
    );
    const sealed = sessions.seal(id);
    const opened = sessions.unseal(sealed);
    invariant(
      'seal-round-trip',
      opened?.id === id && opened.keyIndex === 0,
      () => `${sealed} unseals to ${JSON.stringify(opened)}`,
    );
    for (const v of [probe, ...values]) {
      const o = sessions.unseal(v);
      if (o === undefined) continue;
      const manager = o.keyIndex === 0 ? sessions : oldSessions;
      invariant(
        'seal-exact',
        manager.seal(o.id) === v,
        () => `${JSON.stringify(v)} unseals as ${o.id} (sealed: ${manager.seal(o.id)})`,
      );
    }
    const found = await sessions.lookup(header);
    if (found.kind === 'ok') {
      invariant(
        'lookup-genuine',
        LIVE_IDS.has(found.id) && values.some((v) => sessions.unseal(v)?.id === found.id),
        () => `opened ${found.id}`,
      );
    }
  },
});

/**
 * Credentials in request headers: the `Authorization: Bearer` reader (`bearerToken` in
 * src/identity/bearer.ts) and API keys (src/identity/apikeys.ts): their shape, their hash and the
 * authenticator that compares them. A key the gateway makes must be accepted; nothing else may be.
 */
import fc from 'fast-check';
import {
  ApiKeyAuthenticator,
  apiKeyExpiry,
  generateApiKey,
  hashApiKey,
  looksLikeApiKey,
  MAX_API_KEY_ID_LENGTH,
} from '../../src/identity/apikeys.js';
import { bearerToken } from '../../src/identity/bearer.js';
import { defineTarget, fragments, latin1Char } from '../harness.js';

const NOW = Date.UTC(2026, 0, 5, 12);
const KNOWN = 'ghk_etl_' + 'A'.repeat(43);
const known = new ApiKeyAuthenticator(
  [{ id: 'etl', hash: hashApiKey(KNOWN), subject: 'agent:etl', groups: [] }],
  {
    now: () => NOW,
  },
);

const AUTH_PIECES = [
  'Bearer',
  'bearer',
  'BEARER',
  'Basic',
  ' ',
  '  ',
  '\t',
  KNOWN,
  'ghk_',
  'eyJhbGciOi',
  '.',
  'x',
  '=',
  ',',
  'Bearer ',
];
const authorization = fc.oneof(
  { weight: 4, arbitrary: fragments(AUTH_PIECES, { chars: latin1Char, maxParts: 6 }) },
  { weight: 1, arbitrary: fc.constant(undefined) },
);
const ID_CHARS = 'abcXYZ019_.-';
const id = fc.oneof(
  { weight: 4, arbitrary: fc.string({ unit: fc.constantFrom(...ID_CHARS), minLength: 1, maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ unit: fc.constantFrom(...ID_CHARS), minLength: 150, maxLength: 260 }) },
  {
    weight: 1,
    arbitrary: fragments(['a', '_', '.', '-', ' ', '/', '\u00e9', 'ghk_'], { chars: latin1Char }),
  },
);
const presented = fc.oneof(
  fc.constant(KNOWN),
  fragments(['ghk_', 'etl', '_', 'A'.repeat(43), 'A', 'B', '-', KNOWN, '='], {
    chars: latin1Char,
    maxParts: 6,
  }),
);
const expires = fc.oneof(
  fc.constant(undefined),
  fragments(['2026', '-', '01', '13', '31', '00', 'T', ':', 'Z', '+02:00', '.5', ' ', 'x'], { maxParts: 8 }),
);

export default defineTarget<{
  authorization: string | undefined;
  id: string;
  presented: string;
  expires: string | undefined;
}>({
  name: 'credentials',
  description:
    'bearerToken (src/identity/bearer.ts); API key shape, generation and authentication (src/identity/apikeys.ts)',
  invariants: {
    'bearer-token':
      'bearerToken gives the non-empty, trimmed credential of an `Authorization: Bearer <credential>` header (scheme in any case), else undefined',
    'api-key-shape':
      'looksLikeApiKey is true exactly for ghk_<id>_<43 base64url characters> of at most 256 characters',
    'generated-key-accepted':
      'a key generateApiKey makes (for any id of the allowed shape and length) looks like an API key, and an authenticator configured with its hash line accepts it',
    'only-the-key': 'an authenticator accepts exactly the configured key, nothing else',
    expiry: 'apiKeyExpiry gives undefined or a number of ms, never throws',
  },
  arbitrary: fc.record({ authorization, id, presented, expires }),
  run(input, invariant) {
    const a = input.authorization;
    const token = bearerToken(a);
    const m = a === undefined ? null : /^bearer (.*)$/is.exec(a);
    const want = m === null ? undefined : m[1]!.trim() || undefined;
    invariant(
      'bearer-token',
      token === want,
      () => `${JSON.stringify(token)}, expected ${JSON.stringify(want)}`,
    );

    for (const s of [input.presented, input.id, token ?? '']) {
      const shape = s.length <= 256 && /^ghk_[A-Za-z0-9][A-Za-z0-9_.-]*_[A-Za-z0-9_-]{43}$/.test(s);
      invariant(
        'api-key-shape',
        looksLikeApiKey(s) === shape,
        () => `${JSON.stringify(s)}: ${looksLikeApiKey(s)}`,
      );
    }

    let generated: { key: string; hashLine: string } | undefined;
    try {
      generated = generateApiKey(input.id);
    } catch (err) {
      // Only an id of the wrong shape or over MAX_API_KEY_ID_LENGTH is refused.
      invariant(
        'generated-key-accepted',
        !/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(input.id) || input.id.length > MAX_API_KEY_ID_LENGTH,
        () => `${input.id}: ${(err as Error).message}`,
      );
    }
    if (generated !== undefined) {
      const auth = new ApiKeyAuthenticator([{ id: 'k', hash: generated.hashLine, subject: 's', groups: [] }]);
      invariant(
        'generated-key-accepted',
        looksLikeApiKey(generated.key) && auth.authenticate(generated.key, 'r').kind === 'ok',
        () => `id of ${input.id.length} characters gives a key of ${generated.key.length}`,
      );
    }

    const result = known.authenticate(input.presented, 'r', NOW);
    invariant(
      'only-the-key',
      (result.kind === 'ok') === (input.presented === KNOWN),
      () => `${JSON.stringify(input.presented)}: ${result.kind}`,
    );

    const e = apiKeyExpiry(input.expires);
    invariant(
      'expiry',
      e === undefined || Number.isFinite(e),
      () => `${JSON.stringify(input.expires)}: ${e}`,
    );
  },
});

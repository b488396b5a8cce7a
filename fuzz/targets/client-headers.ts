/**
 * Request headers the gateway reads for itself (src/proxy/headers.ts): the client address behind trusted
 * proxies (`effectiveClient` over X-Forwarded-For), the `Connection` tokens whose headers are removed
 * (`connectionTokens`), and the request id (`requestIdFrom`).
 */
import { BlockList, isIP } from 'node:net';
import fc from 'fast-check';
import { compileTrusted, connectionTokens, effectiveClient, requestIdFrom } from '../../src/proxy/headers.js';
import { defineTarget, fragments, latin1Char } from '../harness.js';

const TRUSTED = ['10.0.0.0/8', '192.0.2.1', '2001:db8::/32'];
const trusted = compileTrusted(TRUSTED);
// The same list built here independently, as the oracle of "is this hop trusted".
const oracle = new BlockList();
oracle.addSubnet('10.0.0.0', 8, 'ipv4');
oracle.addAddress('192.0.2.1', 'ipv4');
oracle.addSubnet('2001:db8::', 32, 'ipv6');

const ENTRIES = [
  '10.1.2.3',
  '10.0.0.1:8080',
  '192.0.2.1',
  '198.51.100.7',
  '203.0.113.9:443',
  '[2001:db8::1]',
  '[2001:db8::1]:443',
  '2001:db8::5',
  '2001:db9::5',
  '[2001:db9::5]',
  '::ffff:10.0.0.1',
  '::ffff:198.51.100.7',
  '::1',
  'unknown',
  '',
  ' ',
  '01.2.3.4',
  '1.2.3.4.',
  'fe80::1%eth0',
  '[::1',
  '::1]',
  '_hidden',
  '1.2.3.4:',
  '[]',
  '10.0.0.256',
  'a:b',
];
const entry = fc.oneof(
  {
    weight: 6,
    arbitrary: fc
      .tuple(fc.constantFrom('', ' ', '  '), fc.constantFrom(...ENTRIES), fc.constantFrom('', ' '))
      .map((p) => p.join('')),
  },
  {
    weight: 1,
    arbitrary: fragments([...ENTRIES, ',', ':', '[', ']', '.'], { chars: latin1Char, maxParts: 3 }),
  },
);
const xff = fc.oneof(
  { weight: 4, arbitrary: fc.array(entry, { maxLength: 6 }).map((e) => e.join(',')) },
  {
    weight: 1,
    arbitrary: fc.array(
      fc.array(entry, { maxLength: 3 }).map((e) => e.join(',')),
      { minLength: 1, maxLength: 3 },
    ),
  },
  { weight: 1, arbitrary: fc.constant(undefined) },
);
const peer = fc.constantFrom('10.0.0.2', '192.0.2.1', '198.51.100.1', '2001:db8::9', '::1');

const TOKEN_PIECES = [
  'close',
  'Close',
  'keep-alive',
  'Keep-Alive',
  'upgrade',
  'UPGRADE',
  'x-gatehouse-user',
  'X-Foo',
  'te',
  ',',
  ', ',
  ' ,',
  '\t',
  ' ',
  '',
  'a',
];
const connection = fc.oneof(
  fragments(TOKEN_PIECES, { chars: latin1Char, maxParts: 6 }),
  fc.array(fragments(TOKEN_PIECES, { maxParts: 3 }), { maxLength: 3 }),
  fc.constant(undefined),
);
const requestId = fc.oneof(
  fc.stringMatching(/^[A-Za-z0-9._:-]{0,130}$/),
  fragments(['a', '-', '.', ':', '_', ' ', '\r\n', '\u00e9', '/', 'x'.repeat(64)], { chars: latin1Char }),
  fc.array(fc.string(), { maxLength: 2 }),
  fc.constant(undefined),
);

/**
 * One X-Forwarded-For entry as an address, read independently of the gateway's reader but as leniently
 * (whatever follows `]` or a single `:` is dropped): which entry is believed matters here, not its syntax.
 */
function address(raw: string): string | undefined {
  let a = raw.trim();
  if (a.startsWith('[')) a = a.includes(']') ? a.slice(1, a.indexOf(']')) : '';
  else if (/^[^:]*:[^:]*$/.test(a)) a = a.slice(0, a.indexOf(':'));
  if (isIP(a) === 0) return undefined;
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a;
}
function isTrustedHop(a: string): boolean {
  return oracle.check(a, isIP(a) === 6 ? 'ipv6' : 'ipv4');
}

export default defineTarget<{
  peer: string;
  peerTrusted: boolean;
  xff: string | string[] | undefined;
  connection: string | string[] | undefined;
  requestId: string | string[] | undefined;
}>({
  name: 'client-headers',
  description: 'effectiveClient, connectionTokens, requestIdFrom (src/proxy/headers.ts)',
  invariants: {
    'client-untrusted-peer':
      'from a peer that is not a trusted proxy, the client is the peer, whatever X-Forwarded-For says',
    'client-address':
      'the client is the peer or an IP address (with a zone, perhaps) written in X-Forwarded-For',
    'client-plain-address': 'the client is an IP address without a zone id, that `isIP` accepts as it is',
    'client-rightmost-untrusted':
      "every X-Forwarded-For entry to the right of the one taken as the client is a trusted proxy's address (nothing written by the client itself is believed)",
    'connection-tokens':
      'connectionTokens gives exactly the lower-case, trimmed, non-empty tokens other than close, keep-alive and upgrade; undefined when none',
    'request-id':
      'the request id is always 1 to 128 of [A-Za-z0-9._:-], and a client id of that shape is kept',
  },
  arbitrary: fc.record({ peer, peerTrusted: fc.boolean(), xff, connection, requestId }),
  run(input, invariant) {
    const client = effectiveClient(input.peer, input.peerTrusted, trusted, input.xff);
    if (!input.peerTrusted) {
      invariant('client-untrusted-peer', client === input.peer, () => `client ${client}`);
    }
    const entries =
      input.xff === undefined
        ? []
        : (typeof input.xff === 'string' ? input.xff : input.xff.join(',')).split(',');
    if (client !== input.peer || !input.peerTrusted) {
      invariant(
        'client-address',
        client === input.peer || isIP(client.split('%')[0]!) !== 0,
        () => `client ${JSON.stringify(client)}`,
      );
      invariant(
        'client-plain-address',
        !client.includes('%') && isIP(client) !== 0,
        () => `client ${JSON.stringify(client)}`,
      );
    }
    if (input.peerTrusted && input.xff !== undefined && isTrustedHop(input.peer)) {
      // The hops are the entries, then the peer; every hop after the one read as the client must be trusted.
      let k = entries.length - 1;
      while (k >= 0 && address(entries[k]!) !== client) k--;
      const after = client === input.peer ? [] : entries.slice(k + 1);
      invariant(
        'client-rightmost-untrusted',
        (k >= 0 || client === input.peer) &&
          after.every((e) => {
            const a = address(e);
            return a !== undefined && isTrustedHop(a);
          }),
        () => `client ${client} from ${JSON.stringify(input.xff)}`,
      );
    }
    const tokens = connectionTokens(input.connection);
    if (input.connection !== undefined) {
      const text = typeof input.connection === 'string' ? input.connection : input.connection.join(',');
      const want = text
        .split(',')
        .map((t) => t.trim().toLowerCase())
        .filter((t) => t !== '' && t !== 'close' && t !== 'keep-alive' && t !== 'upgrade');
      invariant(
        'connection-tokens',
        JSON.stringify(tokens) === JSON.stringify(want.length === 0 ? undefined : want),
        () => `${JSON.stringify(tokens)}, expected ${JSON.stringify(want)}`,
      );
    } else invariant('connection-tokens', tokens === undefined, () => `${JSON.stringify(tokens)}`);
    const id = requestIdFrom(input.requestId);
    const shape = /^[A-Za-z0-9._:-]{1,128}$/;
    invariant(
      'request-id',
      shape.test(id) &&
        (typeof input.requestId !== 'string' || !shape.test(input.requestId) || id === input.requestId),
      () => `${JSON.stringify(input.requestId)} gives ${JSON.stringify(id)}`,
    );
  },
});

/**
 * The return address after sign-in (`resolveReturnTo` in src/identity/login.ts), the `rd` parameter of
 * `/.gatehouse/login` that ends up in a `Location` header. Its result must be an absolute URL on a host
 * this gateway serves, or a path on this host that no browser reads as a network-path reference
 * (`//evil.example`), also after the WHATWG URL parser that browsers use reads it again.
 */
import fc from 'fast-check';
import { ConfigSchema } from '../../src/config/schema.js';
import { resolveReturnTo, servedHostChecker } from '../../src/identity/login.js';
import { defineTarget, fragments, latin1Char } from '../harness.js';

const config = ConfigSchema.parse({
  listeners: [{ name: 'main', bind: '127.0.0.1:8443' }],
  upstreams: { app: { servers: [{ url: 'http://127.0.0.1:9' }] } },
  routes: [
    { name: 'app', match: { host: ['app.test', '*.corp.test'] }, upstream: 'app' },
    { name: 'other', match: { host: 'other.test:8443' }, upstream: 'app' },
  ],
});
const served = servedHostChecker(config);

interface Here {
  origin: string;
  hostname: string;
  port: number;
  scheme: 'http' | 'https';
}
function hereOf(url: URL): Here {
  const scheme = url.protocol === 'https:' ? 'https' : 'http';
  const port = url.port === '' ? (scheme === 'https' ? 443 : 80) : Number(url.port);
  return { origin: url.origin, hostname: url.hostname.replace(/\.$/, ''), port, scheme };
}
const HERE = [hereOf(new URL('https://app.test/')), hereOf(new URL('http://a.corp.test:8443/'))];

const PIECES = [
  '/',
  '//',
  '/.',
  '/..',
  '/./',
  '/../',
  '%2e',
  '%2E',
  '%2e%2e',
  '.',
  '..',
  '\\',
  '%5c',
  '%2f',
  '%2F',
  '/%2f',
  'evil.example',
  'app.test',
  'a.corp.test',
  'corp.test',
  'other.test',
  'http://',
  'https://',
  'HTTPS://',
  'http:',
  'https:/',
  '@',
  'user:pw@',
  ':443',
  ':8443',
  ':80',
  ':0',
  '?',
  '?rd=//x',
  '#',
  '#//x',
  'x',
  '%09',
  '%0a',
  '\t',
  '\n',
  ' ',
  'app.test.',
  '[::1]',
  '127.0.0.1',
  'javascript:',
  'data:',
  '%40',
  '%23',
  '%3f',
  '\u3002',
  '\uff0e',
  '\uff0f',
  'xn--',
  '%',
  ';',
  '..;',
  '/.//',
  '/a/..//',
  '/%2e//',
];
const rd = fc.oneof(
  { weight: 6, arbitrary: fragments(PIECES, { maxParts: 10 }) },
  { weight: 1, arbitrary: fragments(PIECES, { chars: latin1Char, maxParts: 8 }) },
  { weight: 1, arbitrary: fc.constant(undefined) },
);

function localPart(url: URL): string {
  return `${url.pathname}${url.search}`;
}

export default defineTarget<{ rd: string | undefined; here: number }>({
  name: 'return-to',
  description: 'resolveReturnTo (src/identity/login.ts)',
  invariants: {
    'absolute-served':
      'the result is an http(s) URL without userinfo, on this origin or on a host and port this gateway serves',
    'no-network-path':
      'the Location emitted for it (path and query on its own host) is not a network-path reference ("//", "/\\"), and WHATWG URL parsing it against its origin stays on that origin',
    stable:
      'resolving the result again, on the host it names (the sign-in flow sends it there as rd), gives the same URL',
  },
  arbitrary: fc.record({ rd, here: fc.nat(HERE.length - 1) }),
  run(input, invariant) {
    const here = HERE[input.here]!;
    const url = resolveReturnTo(input.rd, here, served);
    if (url === undefined) return;
    const h = hereOf(url);
    invariant(
      'absolute-served',
      (url.protocol === 'https:' || url.protocol === 'http:') &&
        url.username === '' &&
        url.password === '' &&
        (url.origin === here.origin || served(h.hostname.toLowerCase(), h.port, h.scheme)),
      () => `${JSON.stringify(input.rd)} gives ${url.href}`,
    );
    const location = localPart(url);
    const reparsed = URL.parse(location, url.origin);
    invariant(
      'no-network-path',
      location.startsWith('/') && !/^[/\\]{2}/.test(location) && reparsed?.origin === url.origin,
      () => `${JSON.stringify(input.rd)} gives the Location ${JSON.stringify(location)} on ${url.origin}`,
    );
    const again = resolveReturnTo(url.href, h, served);
    invariant(
      'stable',
      again?.href === url.href,
      () => `${url.href} resolves to ${again?.href} on ${url.origin}`,
    );
  },
});

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { normalizeHost, normalizePath, type PathParameters } from '../src/core/normalize.js';
import { BadRequestError } from '../src/errors.js';

function path(raw: string, params?: PathParameters): string {
  return normalizePath(raw, undefined, params).path;
}

function rejects(raw: string, method?: string, params?: PathParameters): void {
  assert.throws(
    () => normalizePath(raw, method, params),
    (err: unknown) => err instanceof BadRequestError && err.code === 'GH_BAD_PATH' && err.status === 400,
    `expected ${JSON.stringify(raw)} to be rejected`,
  );
}

test('canonical paths are returned unchanged', () => {
  assert.equal(path('/'), '/');
  assert.equal(path('/api/v1/jobs'), '/api/v1/jobs');
  assert.equal(path('/api/v1/'), '/api/v1/');
  assert.equal(path('/a-b_c~d.e'), '/a-b_c~d.e');
});

test('query is split off and kept as received', () => {
  assert.deepEqual(normalizePath('/a//b?x=%2f&y=1'), { path: '/a/b', query: '?x=%2f&y=1' });
  assert.deepEqual(normalizePath('/?'), { path: '/', query: '?' });
});

test('dot-segments are resolved, also when encoded', () => {
  assert.equal(path('/a/./b'), '/a/b');
  assert.equal(path('/a/b/../c'), '/a/c');
  assert.equal(path('/a/b/..'), '/a/');
  assert.equal(path('/a/.'), '/a/');
  assert.equal(path('/a/%2e%2E/b'), '/b');
  assert.equal(path('/a/.%2e/b'), '/b');
  assert.equal(path('/a/%2e/b'), '/a/b');
  assert.equal(path('/a/.../b'), '/a/.../b');
  assert.equal(path('/a/..b/c'), '/a/..b/c');
  assert.equal(path('/.well-known/x'), '/.well-known/x');
});

test('duplicate slashes collapse', () => {
  assert.equal(path('//'), '/');
  assert.equal(path('//a///b//'), '/a/b/');
});

test('unreserved escapes are decoded, others upper-cased', () => {
  assert.equal(path('/%41%62c'), '/Abc');
  assert.equal(path('/%7e/user'), '/~/user');
  assert.equal(path('/caf%c3%a9'), '/caf%C3%A9');
  assert.equal(path('/a%20b'), '/a%20b');
  assert.equal(path('/a%3fb'), '/a%3Fb');
});

test('characters that are not pchars are percent-encoded', () => {
  assert.equal(path('/a|b'), '/a%7Cb');
  assert.equal(path('/caf\u00c3\u00a9'), '/caf%C3%A9');
});

test('unsafe paths are rejected with GH_BAD_PATH', () => {
  rejects('/%2e%2e/');
  rejects('/a/../../b');
  rejects('/..');
  rejects('/a/%2fb');
  rejects('/a/%2Fb');
  rejects('/a/%5cb');
  rejects('/a%00b');
  rejects('/a%0ab');
  rejects('/a\u0000b');
  rejects('/a\\b');
  rejects('/a%');
  rejects('/a%4');
  rejects('/a%zz');
  rejects('a/b');
  rejects('*', 'GET');
  rejects('/a?b\u0001');
});

test('absolute-form takes the path and reports the authority', () => {
  assert.deepEqual(normalizePath('http://Example.com:8080/a/./b?q'), {
    path: '/a/b',
    query: '?q',
    authority: 'Example.com:8080',
  });
  assert.deepEqual(normalizePath('https://example.com'), { path: '/', query: '', authority: 'example.com' });
  assert.deepEqual(normalizePath('*', 'OPTIONS'), { path: '*', query: '' });
});

test('hosts are lower-cased, ports and trailing dots stripped', () => {
  assert.equal(normalizeHost('Example.COM:8443'), 'example.com');
  assert.equal(normalizeHost('example.com.'), 'example.com');
  assert.equal(normalizeHost('127.0.0.1:80'), '127.0.0.1');
  assert.equal(normalizeHost('[::1]:8080'), '[::1]');
  assert.equal(normalizeHost(undefined), '');
  for (const badHost of ['exa mple.com', 'a/b', 'host:99999', 'host:', '-a.com:x', 'a@b']) {
    assert.throws(
      () => normalizeHost(badHost),
      (err: unknown) => err instanceof BadRequestError && err.code === 'GH_BAD_HOST',
      badHost,
    );
  }
});

test('path parameters are stripped from every segment before dot-segments are resolved', () => {
  assert.equal(path('/admin;x'), '/admin');
  assert.equal(path('/internal;jsessionid=0123ABCD'), '/internal');
  assert.equal(path('/;/internal'), '/internal');
  assert.equal(path('/x/..;/admin'), '/admin');
  assert.equal(path('/x/..;a=b/admin'), '/admin');
  assert.equal(path('/x/.;x/admin'), '/x/admin');
  assert.equal(path('/x/%2e%2e;x/admin'), '/admin');
  assert.equal(path('/x/%2E.;/admin'), '/admin');
  assert.equal(path('/a;x/b;y=1,2/c;'), '/a/b/c');
  assert.equal(path('/a;x/'), '/a/');
  assert.equal(path('/a/;x'), '/a/');
  assert.equal(path('/;x'), '/');
  assert.equal(path('/;'), '/');
  assert.equal(path('/a;b;c/d'), '/a/d');
  assert.equal(path('/admin;/'), '/admin/');
  assert.equal(path('/a/b;x/..;y/c'), '/a/c');
  // Parameters end at the segment, not at the path: the next segment is kept.
  assert.equal(path('/public;/../admin'), '/admin');
  // The query is not part of the path: ';' there is left alone.
  assert.deepEqual(normalizePath('/a;p?x=1;y=2'), { path: '/a', query: '?x=1;y=2' });
  assert.deepEqual(normalizePath('http://h/a;p/b?q', 'GET'), { path: '/a/b', query: '?q', authority: 'h' });
  // `..;` above the root is still above the root.
  rejects('/..;/admin');
  rejects('/a/..;/..;/admin');
});

test('an encoded %3B is a literal character, never a parameter delimiter', () => {
  assert.equal(path('/admin%3Bx'), '/admin%3Bx');
  assert.equal(path('/admin%3bx'), '/admin%3Bx');
  assert.equal(path('/x/..%3B/admin'), '/x/..%3B/admin');
  assert.equal(path('/x/..%3B/admin', 'reject'), '/x/..%3B/admin');
});

test('parameters are still checked: what is stripped must be well-formed', () => {
  rejects('/admin;%2f');
  rejects('/admin;%5c');
  rejects('/admin;\\x');
  rejects('/admin;%00');
  rejects('/admin;%zz');
  rejects('/admin;x#y');
});

test('pathParameters reject: any ";" in the path is 400 GH_BAD_PATH', () => {
  for (const raw of ['/admin;x', '/;/internal', '/x/..;/admin', '/a;', 'http://h/a;b', '/a/b;c?d'])
    rejects(raw, 'GET', 'reject');
  assert.deepEqual(normalizePath('/a?x;y', 'GET', 'reject'), { path: '/a', query: '?x;y' });
});

test('fragments are never part of a request-target (RFC 9112 3.2, CVE-2023-45539)', () => {
  rejects('/a#b');
  rejects('/index.html#.png');
  rejects('/public#/../admin');
  rejects('/a?b#c');
  rejects('http://h#/admin');
  rejects('http://h#x');
  // Encoded, '#' is a character of the segment like any other.
  assert.equal(path('/a%23b'), '/a%23b');
});

test('absolute-form needs a host (RFC 9110 4.2.1)', () => {
  rejects('http:///admin');
  rejects('https://?x');
  assert.deepEqual(normalizePath('http://h'), { path: '/', query: '', authority: 'h' });
  assert.deepEqual(normalizePath('http://h?x'), { path: '/', query: '?x', authority: 'h' });
});

test('double encoding of dots and separators is refused', () => {
  rejects('/%252e%252e/admin');
  rejects('/x/%252E%252E/admin');
  rejects('/x/%252f/admin');
  rejects('/x/%255c/admin');
  rejects('/x/%25%32%65/admin');
  rejects('/x/%25%32%45%25%32%45/admin');
  // Other encoded percent signs are ordinary characters.
  assert.equal(path('/100%25'), '/100%25');
  assert.equal(path('/a%2541'), '/a%2541');
  assert.equal(path('/a%25%25'), '/a%25%25');
});

test('overlong UTF-8 forms are refused; valid UTF-8 and latin-1 text pass', () => {
  rejects('/%c0%ae%c0%ae/admin');
  rejects('/x/%C0%AE%C0%AE/admin');
  rejects('/%c0%af');
  rejects('/%c1%9c');
  rejects('/%e0%80%ae');
  rejects('/%f0%80%80%ae');
  rejects('/x\u00c0\u00ae');
  assert.equal(path('/caf%c3%a9'), '/caf%C3%A9');
  assert.equal(path('/%e2%82%ac'), '/%E2%82%AC');
  assert.equal(path('/%f0%9f%98%80'), '/%F0%9F%98%80');
  assert.equal(path('/%e0%a4%85'), '/%E0%A4%85');
  // Latin-1 bytes that are not an overlong form still pass (percent-encoded as received).
  assert.equal(path('/caf%e9'), '/caf%E9');
  assert.equal(path('/%c0'), '/%C0');
  assert.equal(path('/%c0/%ae'), '/%C0/%AE');
});

test("IIS's %u escapes are malformed", () => {
  rejects('/%u002e%u002e/admin');
  rejects('/%U002F');
});

test('case, trailing dots and spaces are kept: the gateway is case-sensitive like RFC 3986', () => {
  assert.equal(path('/ADMIN'), '/ADMIN');
  assert.equal(path('/Admin/X'), '/Admin/X');
  assert.equal(path('/admin.'), '/admin.');
  assert.equal(path('/admin%20'), '/admin%20');
  assert.equal(path('/admin%2e'), '/admin.');
  assert.equal(path('/admin..'), '/admin..');
});

test('a normalized path is a fixed point, in both parameter modes', () => {
  const inputs = [
    '/admin;x',
    '/x/..;/admin',
    '/;/internal',
    '/a/%2e%2e;x/b/',
    '/%41%62c//d/./e/../f',
    '/caf%c3%a9;p',
    '/a%3Bb',
    '/a|b;c',
    '/%7e/user;x/',
    '/100%25/x',
  ];
  for (const raw of inputs) {
    const once = path(raw);
    assert.equal(path(once), once, raw);
    assert.equal(path(once, 'reject'), once, raw);
    assert.ok(!once.includes(';'), raw);
  }
});

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { normalizeHost, normalizePath } from '../src/core/normalize.js';
import { BadRequestError } from '../src/errors.js';

function path(raw: string): string {
  return normalizePath(raw).path;
}

function rejects(raw: string, method?: string): void {
  assert.throws(
    () => normalizePath(raw, method),
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

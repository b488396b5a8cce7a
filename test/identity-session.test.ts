import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import {
  cookieValues,
  identityOf,
  removeCookies,
  SessionConfigError,
  SessionManager,
  type SessionProfile,
  type SessionSettings,
  serializeCookie,
} from '../src/identity/session.js';
import type { Identity } from '../src/identity/types.js';
import { MemoryStore } from '../src/state/memory.js';
import { RedisStore } from '../src/state/redis.js';
import { RevocationFeed } from '../src/state/revocations.js';
import { type StateStore, StateStoreError } from '../src/state/types.js';
import { waitFor } from './helpers/gateway.js';
import { memoryLogger } from './helpers/proxy.js';
import { redisUrl } from './helpers/redis.js';

const A = 'secret-a-0123456789abcdef0123456789abcdef';
const B = 'secret-b-0123456789abcdef0123456789abcdef';
const HOUR = 3_600_000;

const settings = (over: Partial<SessionSettings> = {}): SessionSettings => ({
  secrets: [A],
  maxAge: 12 * HOUR,
  idleTimeout: HOUR,
  cookie: '_gatehouse',
  ...over,
});

const alice: SessionProfile = {
  provider: 'corp',
  subject: 'alice-sub',
  user: 'alice',
  email: 'alice@example.com',
  groups: ['data-eng'],
  claims: { sub: 'alice-sub', email: 'alice@example.com', groups: ['data-eng'] },
};
const tokens = { accessToken: 'at', refreshToken: 'rt', idToken: 'id', expiresAt: undefined };

/** A real store that counts writes, to check how often the hot path writes. */
function counting(store: StateStore): StateStore & { writes: number } {
  const wrapped = Object.create(store) as StateStore & { writes: number };
  wrapped.writes = 0;
  wrapped.set = async (k, v, ttl) => {
    wrapped.writes++;
    return store.set(k, v, ttl);
  };
  for (const m of [
    'get',
    'add',
    'take',
    'delete',
    'incr',
    'setAdd',
    'setRemove',
    'setMembers',
    'close',
  ] as const) {
    (wrapped as unknown as Record<string, unknown>)[m] = (store[m] as (...a: unknown[]) => unknown).bind(
      store,
    );
  }
  return wrapped;
}

const prefixes = new WeakMap<StateStore, string>();

/**
 * A store per backend; `peer` is the store another process sharing it holds (memory: the same one, as
 * only one process uses it; Redis: a second client on the same keys and revocation channel).
 */
const backends: Array<{
  name: string;
  make(): Promise<StateStore>;
  peer(store: StateStore): Promise<StateStore>;
}> = [
  {
    name: 'memory',
    make: async () => new MemoryStore({ sweepInterval: 0 }),
    peer: async (store) => store,
  },
  {
    name: 'redis',
    make: async () => {
      const prefix = `gatehouse-test:${randomBytes(6).toString('hex')}:`;
      const store = new RedisStore(await redisUrl(), memoryLogger().logger, { prefix });
      prefixes.set(store, prefix);
      return store;
    },
    peer: async (store) =>
      new RedisStore(await redisUrl(), memoryLogger().logger, { prefix: prefixes.get(store)! }),
  },
];

for (const backend of backends) {
  describe(`sessions on the ${backend.name} store`, () => {
    test('create, look up by cookie, identity; the cookie is small and sealed', async (t) => {
      const store = await backend.make();
      t.after(() => store.close());
      let now = 1_700_000_000_000;
      const sm = new SessionManager(store, settings(), { now: () => now });
      const { id, record } = await sm.create(
        { ...alice, groups: Array.from({ length: 3000 }, (_, i) => `group-${i}-${'x'.repeat(30)}`) },
        tokens,
      );
      const setCookie = sm.setCookie(id, record, false);
      assert.ok(setCookie.length < 250, `Set-Cookie is ${setCookie.length} bytes whatever the groups`);
      assert.match(
        setCookie,
        /^_gatehouse=[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}; Path=\/; Max-Age=43200; HttpOnly; SameSite=Lax$/,
      );
      const value = sm.seal(id);
      now += 1000;
      const found = await sm.lookup(`other=1; _gatehouse=${value}; more=2`);
      assert.equal(found.kind, 'ok');
      assert.equal(found.kind === 'ok' && found.identity.subject, 'alice-sub');
      assert.equal(found.kind === 'ok' && found.identity.authMethod, 'session');
      assert.equal(found.kind === 'ok' && found.identity.source, 'corp');
      assert.equal(found.kind === 'ok' && found.identity.groups.length, 3000);
      assert.equal(found.kind === 'ok' && found.reseal, false);
      assert.deepEqual(await sm.lookup(undefined), { kind: 'none' });
      assert.deepEqual(await sm.lookup('other=1'), { kind: 'none' });
      // The seal has one spelling: the MAC's last character with its two spare bits set is not it.
      const last = value.at(-1)!;
      const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
      const v = alphabet.indexOf(last);
      for (const spare of [1, 2, 3]) {
        const other = `${value.slice(0, -1)}${alphabet[v | spare]}`;
        assert.equal(sm.unseal(other), undefined, other);
      }
      assert.ok(sm.unseal(value));
    });

    test('idle timeout ends a session; use keeps it alive, writing lastSeen at most once a minute', async (t) => {
      const raw = await backend.make();
      t.after(() => raw.close());
      const store = counting(raw);
      let now = 1_700_000_000_000;
      const sm = new SessionManager(store, settings({ idleTimeout: 10 * 60_000 }), { now: () => now });
      const { id } = await sm.create(alice, tokens);
      const cookie = `_gatehouse=${sm.seal(id)}`;
      const afterCreate = store.writes;
      for (let i = 0; i < 50; i++) {
        now += 1000; // 50 requests over 50 s
        assert.equal((await sm.lookup(cookie)).kind, 'ok');
      }
      assert.equal(store.writes, afterCreate, 'no write within the first minute');
      now += 11_000;
      assert.equal((await sm.lookup(cookie)).kind, 'ok');
      assert.equal(store.writes, afterCreate + 1, 'one touch after a minute');
      // Active every 9 minutes for an hour: never idle for 10.
      for (let i = 0; i < 7; i++) {
        now += 9 * 60_000;
        assert.equal((await sm.lookup(cookie)).kind, 'ok', `step ${i}`);
      }
      now += 10 * 60_000;
      const ended = await sm.lookup(cookie);
      assert.equal(ended.kind, 'invalid');
      assert.equal(ended.kind === 'invalid' && ended.reason, 'session-expired');
      assert.equal(await raw.get(`session:${id}`), undefined, 'removed from the store');
    });

    test('idle timeout shorter than the touch interval: a session used every 10 s of a 30 s idle timeout lives on', async (t) => {
      const store = await backend.make();
      t.after(() => store.close());
      let now = 1_700_000_000_000;
      const sm = new SessionManager(store, settings({ idleTimeout: 30_000 }), { now: () => now });
      const { id } = await sm.create(alice, tokens);
      const cookie = `_gatehouse=${sm.seal(id)}`;
      // Two minutes of use, never idle for more than 10 s.
      for (let i = 0; i < 12; i++) {
        now += 10_000;
        const r = await sm.lookup(cookie);
        assert.equal(r.kind, 'ok', `request ${i} at ${(i + 1) * 10} s`);
      }
      now += 30_000;
      const ended = await sm.lookup(cookie);
      assert.equal(ended.kind === 'invalid' && ended.reason, 'session-expired');
    });

    test('a short idleTimeout slides with use: a session used every 5 s outlives an 8 s idleTimeout', async (t) => {
      const raw = await backend.make();
      t.after(() => raw.close());
      const store = counting(raw);
      let now = 1_700_000_000_000;
      const sm = new SessionManager(store, settings({ maxAge: HOUR, idleTimeout: 8000 }), { now: () => now });
      const { id } = await sm.create(alice, tokens);
      const cookie = `_gatehouse=${sm.seal(id)}`;
      const afterCreate = store.writes;
      for (let i = 0; i < 12; i++) {
        now += 5000; // a minute of use, never 8 s apart
        assert.equal((await sm.lookup(cookie)).kind, 'ok', `use at ${(i + 1) * 5} s`);
      }
      assert.equal(
        store.writes,
        afterCreate + 12,
        'each use more than a tenth of idleTimeout apart is written',
      );
      now += 8000;
      const ended = await sm.lookup(cookie);
      assert.equal(ended.kind === 'invalid' && ended.reason, 'session-expired');
    });

    test('a closed store: a cached session is not served from the cache (fail closed)', async () => {
      const store = await backend.make();
      const now = 1_700_000_000_000;
      const sm = new SessionManager(store, settings(), { now: () => now });
      await waitFor(() => store.revocations.live, 5000, 'revocation feed');
      const { id } = await sm.create(alice, tokens);
      const cookie = `_gatehouse=${sm.seal(id)}`;
      assert.equal((await sm.lookup(cookie)).kind, 'ok');
      await store.close();
      assert.equal(store.revocations.live, false);
      await assert.rejects(sm.lookup(cookie), StateStoreError);
    });

    test('maxAge ends a session however active it is', async (t) => {
      const store = await backend.make();
      t.after(() => store.close());
      let now = 1_700_000_000_000;
      const sm = new SessionManager(store, settings({ maxAge: 2 * HOUR, idleTimeout: HOUR }), {
        now: () => now,
      });
      const { id } = await sm.create(alice, tokens);
      const cookie = `_gatehouse=${sm.seal(id)}`;
      for (let i = 0; i < 3; i++) {
        now += 35 * 60_000; // never idle for an hour
        assert.equal((await sm.lookup(cookie)).kind, 'ok');
      }
      now += 35 * 60_000; // 2 h 20 min after creation
      const r = await sm.lookup(cookie);
      assert.equal(r.kind === 'invalid' && r.reason, 'session-expired');
      assert.equal(await store.get(`session:${id}`), undefined);
    });

    test('rotation: sealed with an older secret is accepted and flagged for resealing; a removed secret is not', async (t) => {
      const store = await backend.make();
      t.after(() => store.close());
      const old = new SessionManager(store, settings({ secrets: [A] }));
      const { id } = await old.create(alice, tokens);
      const sealedA = old.seal(id);
      const rotated = new SessionManager(store, settings({ secrets: [B, A] }));
      const r = await rotated.lookup(`_gatehouse=${sealedA}`);
      assert.equal(r.kind === 'ok' && r.reseal, true);
      assert.notEqual(rotated.seal(id), sealedA);
      assert.equal(rotated.unseal(rotated.seal(id))?.keyIndex, 0);
      const onlyB = new SessionManager(store, settings({ secrets: [B] }));
      const gone = await onlyB.lookup(`_gatehouse=${sealedA}`);
      assert.equal(gone.kind === 'invalid' && gone.reason, 'session-invalid');
      assert.equal((await onlyB.lookup(`_gatehouse=${rotated.seal(id)}`)).kind, 'ok');
    });

    test('tampered, truncated and foreign cookies are session-invalid; a valid one among them wins, two sessions never', async (t) => {
      const store = await backend.make();
      t.after(() => store.close());
      const sm = new SessionManager(store, settings());
      const { id } = await sm.create(alice, tokens);
      const good = sm.seal(id);
      const other = new SessionManager(store, settings({ secrets: [B] })).seal(id);
      const forgedId = `${randomBytes(32).toString('base64url')}.${good.split('.')[1]}`;
      for (const bad of [
        other,
        forgedId,
        good.slice(0, -1),
        `${good}A`,
        good.replace('.', ''),
        '',
        '"',
        'x'.repeat(10_000),
      ]) {
        const r = await sm.lookup(`_gatehouse=${bad}`);
        assert.equal(r.kind === 'invalid' && r.reason, 'session-invalid', bad.slice(0, 30));
      }
      const r = await sm.lookup(`_gatehouse=${forgedId}; _gatehouse=${good}`);
      assert.equal(r.kind, 'ok');
      assert.equal((await sm.lookup(`_gatehouse=${good}; _gatehouse=${good}`)).kind, 'ok');
      // Cookie tossing: another session planted next to this one; which is the user's cannot be told.
      const planted = sm.seal((await sm.create({ ...alice, subject: 'mallory' }, tokens)).id);
      for (const header of [
        `_gatehouse=${planted}; _gatehouse=${good}`,
        `_gatehouse=${good}; _gatehouse=${planted}`,
      ]) {
        const both = await sm.lookup(header);
        assert.equal(both.kind === 'invalid' && both.reason, 'session-invalid', header);
      }
      const many = Array.from({ length: 5 }, () => `_gatehouse=${good}`).join('; ');
      assert.equal((await sm.lookup(many)).kind, 'invalid', 'too many values are not checked one by one');
      // A sealed id whose session is gone is expired, not forged.
      await sm.revoke(id);
      const ended = await sm.lookup(`_gatehouse=${good}`);
      assert.equal(ended.kind === 'invalid' && ended.reason, 'session-expired');
    });

    test('revocation: another process drops its cached session at once, not after its cache TTL; logout everywhere too', async (t) => {
      const store = await backend.make();
      const other = await backend.peer(store);
      t.after(async () => {
        await store.close();
        await other.close();
      });
      // The clock stands still: a cached session would stay fresh forever, so only the revocation ends it.
      const now = 1_700_000_000_000;
      const one = new SessionManager(store, settings(), { now: () => now, cacheTtl: 5000 });
      const two = new SessionManager(other, settings(), { now: () => now, cacheTtl: 5000 });
      await waitFor(() => store.revocations.live && other.revocations.live, 5000, 'revocation feeds');
      const s1 = await one.create(alice, tokens);
      const s2 = await one.create(alice, tokens);
      const s3 = await one.create({ ...alice, subject: 'bob-sub', user: 'bob' }, tokens);
      const c1 = `_gatehouse=${one.seal(s1.id)}`;
      const c2 = `_gatehouse=${one.seal(s2.id)}`;
      assert.equal((await two.lookup(c1)).kind, 'ok'); // cached in the other process
      assert.equal((await two.lookup(c2)).kind, 'ok');
      await one.revoke(s1.id);
      assert.equal((await one.lookup(c1)).kind, 'invalid', 'the revoking process sees it at once');
      await waitFor(async () => (await two.lookup(c1)).kind === 'invalid', 1000, 'revocation in process two');
      assert.equal((await two.lookup(c2)).kind, 'ok', 'other sessions stay cached and valid');

      assert.equal(await one.revokeSubject('corp', 'alice-sub'), 1);
      assert.equal(await store.get(`session:${s2.id}`), undefined);
      await waitFor(async () => (await two.lookup(c2)).kind === 'invalid', 1000, 'logout everywhere');
      assert.ok(await store.get(`session:${s3.id}`), 'other subjects keep their sessions');
      assert.equal(await one.revokeSubject('corp', 'alice-sub'), 0);
    });

    test('an update (token refresh) reaches the other processes: they read the new record', async (t) => {
      const store = await backend.make();
      const other = await backend.peer(store);
      t.after(async () => {
        await store.close();
        await other.close();
      });
      const now = 1_700_000_000_000;
      const one = new SessionManager(store, settings(), { now: () => now });
      const two = new SessionManager(other, settings(), { now: () => now });
      await waitFor(() => store.revocations.live && other.revocations.live, 5000, 'revocation feeds');
      const { id, record } = await one.create(alice, tokens);
      const cookie = `_gatehouse=${one.seal(id)}`;
      assert.deepEqual(((await two.lookup(cookie)) as { identity: Identity }).identity.groups, ['data-eng']);
      await one.update(id, { ...record, groups: [] });
      await waitFor(
        async () => ((await two.lookup(cookie)) as { identity: Identity }).identity.groups.length === 0,
        1000,
        'the new record in process two',
      );
    });

    test('update replaces the record (tokens, groups) for every cached cookie', async (t) => {
      const store = await backend.make();
      t.after(() => store.close());
      const sm = new SessionManager(store, settings());
      const { id, record } = await sm.create(alice, tokens);
      const cookie = `_gatehouse=${sm.seal(id)}`;
      await sm.lookup(cookie);
      await sm.update(id, {
        ...record,
        groups: ['data-eng', 'admins'],
        tokens: { ...tokens, accessToken: 'at2' },
      });
      const r = await sm.lookup(cookie);
      assert.deepEqual(r.kind === 'ok' && r.identity.groups, ['data-eng', 'admins']);
      assert.equal(r.kind === 'ok' && r.record.tokens.accessToken, 'at2');
      assert.equal(JSON.parse((await store.get(`session:${id}`))!).tokens.accessToken, 'at2');
    });
  });
}

test('cookie attributes: Secure on TLS and for __Secure-/__Host- names, Domain when configured, clearing', () => {
  const store = new MemoryStore({ sweepInterval: 0 });
  const now = 1_700_000_000_000;
  const plain = new SessionManager(store, settings(), { now: () => now });
  const rec = { expiresAt: now + 3600_000 };
  assert.doesNotMatch(plain.setCookie('x'.repeat(43), rec, false), /Secure/);
  assert.match(plain.setCookie('x'.repeat(43), rec, true), /; Secure/);
  assert.match(plain.setCookie('x'.repeat(43), rec, true), /Max-Age=3600;/);
  const withDomain = new SessionManager(store, settings({ domain: '.example.com' }), { now: () => now });
  assert.match(withDomain.setCookie('x'.repeat(43), rec, true), /; Domain=\.example\.com$/);
  assert.match(
    withDomain.clearCookie(true),
    /^_gatehouse=; Path=\/; Max-Age=0; HttpOnly; SameSite=Lax; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Secure; Domain=\.example\.com$/,
  );
  const host = new SessionManager(store, settings({ cookie: '__Host-gh' }), { now: () => now });
  assert.match(host.setCookie('x'.repeat(43), rec, false), /; Secure/);
  assert.match(
    serializeCookie('n', 'v', { maxAge: 10, path: '/p/', tls: false }),
    /^n=v; Path=\/p\/; Max-Age=10; HttpOnly; SameSite=Lax$/,
  );
  return store.close();
});

test('settings that cannot be safe are refused', () => {
  const store = new MemoryStore({ sweepInterval: 0 });
  assert.throws(() => new SessionManager(store, settings({ secrets: [] })), SessionConfigError);
  assert.throws(() => new SessionManager(store, settings({ secrets: ['short'] })), /at least 32 characters/);
  assert.throws(() => new SessionManager(store, settings({ secrets: [A, 'short'] })), /secrets\.1/);
  assert.throws(() => new SessionManager(store, settings({ cookie: 'bad name' })), SessionConfigError);
  assert.throws(() => new SessionManager(store, settings({ domain: 'bad domain;x' })), SessionConfigError);
  assert.throws(
    () => new SessionManager(store, settings({ cookie: '__Host-x', domain: 'example.com' })),
    SessionConfigError,
  );
  assert.throws(() => new SessionManager(store, settings({ maxAge: 0 })), SessionConfigError);
  return store.close();
});

test('cookieValues finds every value of a name and nothing else', () => {
  assert.deepEqual(cookieValues('a=1; b=2; a=3', 'a'), ['1', '3']);
  assert.deepEqual(cookieValues('xa=1; a_x=2', 'a'), []);
  assert.deepEqual(cookieValues(' a = "q" ', 'a'), ['q']);
  assert.deepEqual(cookieValues(undefined, 'a'), []);
  assert.deepEqual(cookieValues('novalue; a', 'a'), []);
});

test('removeCookies drops only the named cookies', () => {
  const own = new Set(['_gatehouse', '_gatehouse_login']);
  assert.equal(removeCookies('a=1; _gatehouse=x.y; b=2; _gatehouse_login=z', own), 'a=1; b=2');
  assert.equal(removeCookies('_gatehouse=x', own), undefined);
  assert.equal(removeCookies('a=1; _gatehouse_x=2', own), 'a=1; _gatehouse_x=2');
  assert.equal(removeCookies('a=1', own), 'a=1');
  assert.equal(removeCookies(undefined, own), undefined);
});

test('a failing store fails the lookup with StateStoreError (the caller answers 503), never ok', async (t) => {
  const { logger } = memoryLogger();
  const dead = new RedisStore('redis://127.0.0.1:1', logger, { connectTimeout: 100, commandTimeout: 200 });
  t.after(() => dead.close());
  const sm = new SessionManager(dead, settings());
  const value = sm.seal(randomBytes(32).toString('base64url'));
  await assert.rejects(sm.lookup(`_gatehouse=${value}`), StateStoreError);
  await assert.rejects(sm.create(alice, tokens), StateStoreError);
});

test('while revocations from other processes may be missed (feed not live), no lookup answers from the cache', async (t) => {
  const memory = new MemoryStore({ sweepInterval: 0 });
  t.after(() => memory.close());
  let reads = 0;
  const feed = new RevocationFeed(true);
  const store = Object.create(memory) as StateStore;
  Object.assign(store, {
    revocations: feed,
    get: async (key: string) => {
      reads++;
      return memory.get(key);
    },
  });
  for (const m of ['set', 'add', 'take', 'delete', 'setAdd', 'setRemove', 'setMembers'] as const) {
    (store as unknown as Record<string, unknown>)[m] = (memory[m] as (...a: unknown[]) => unknown).bind(
      memory,
    );
  }
  const now = 1_700_000_000_000;
  const sm = new SessionManager(store, settings(), { now: () => now });
  const { id } = await sm.create(alice, tokens);
  const cookie = `_gatehouse=${sm.seal(id)}`;
  assert.equal((await sm.lookup(cookie)).kind, 'ok');
  assert.equal((await sm.lookup(cookie)).kind, 'ok');
  assert.equal(reads, 1, 'cached while the feed is live');
  feed.reset(false);
  assert.equal((await sm.lookup(cookie)).kind, 'ok');
  assert.equal((await sm.lookup(cookie)).kind, 'ok');
  assert.equal(reads, 3, 'every lookup reads the store while the link is down');
  // Deleted meanwhile (by a process whose revocation could not arrive): refused at once.
  await memory.delete(`session:${id}`);
  assert.equal((await sm.lookup(cookie)).kind, 'invalid');
  feed.reset(true);
  assert.equal((await sm.lookup(cookie)).kind, 'invalid');
});

test('stored records that do not parse are treated as ended, never trusted', async (t) => {
  const store = new MemoryStore({ sweepInterval: 0 });
  t.after(() => store.close());
  const sm = new SessionManager(store, settings());
  const { id, record } = await sm.create(alice, tokens);
  for (const junk of [
    'not json',
    '{}',
    JSON.stringify({ ...record, v: 2 }),
    JSON.stringify({ ...record, groups: [1] }),
  ]) {
    await store.set(`session:${id}`, junk);
    sm.clearCache();
    const r = await sm.lookup(`_gatehouse=${sm.seal(id)}`);
    assert.equal(r.kind, 'invalid', junk.slice(0, 20));
  }
  assert.equal(identityOf(record).expiresAt, record.expiresAt);
});

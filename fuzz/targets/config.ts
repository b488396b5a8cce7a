/**
 * Configuration files: YAML text with `include:` files and `env:`/`file:` references, through load
 * (src/config/load.ts: YAML, merging, schema, semantic and secret checks) and then compilation (routes,
 * policies, trusted proxies, served hosts, the config's own `tests:`). Loading answers every input with
 * either a configuration or its problems, each at a file and path; never an exception, never a hang; and a
 * configuration it accepts compiles.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { compileRoutes } from '../../src/core/routes.js';
import { servedHostChecker } from '../../src/identity/login.js';
import { compilePolicies } from '../../src/policy/compile.js';
import { runConfigTests } from '../../src/policy/tests.js';
import { compileTrusted } from '../../src/proxy/headers.js';
import { defineTarget, fragments } from '../harness.js';

// The config lives in a directory of its own; `file:` references point at files made here once.
const DIR = path.join(os.tmpdir(), `gatehouse-fuzz-config-${process.pid}`);
mkdirSync(path.join(DIR, 'sub'), { recursive: true });
process.once('exit', () => rmSync(DIR, { recursive: true, force: true }));
mkdirSync(path.join(DIR, 'adir'), { recursive: true });
writeFileSync(path.join(DIR, 'secret.txt'), 'a-session-secret-of-more-than-32-characters\n');
writeFileSync(path.join(DIR, 'short.txt'), 'short');
writeFileSync(path.join(DIR, 'bad.pem'), '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
writeFileSync(path.join(DIR, 'jwk.json'), '{"kty":"EC","crv":"P-256"}');
const MAIN = path.join(DIR, 'gatehouse.yaml');
const ENV = { TOKEN: 'admin-token', SECRET: 'x'.repeat(40), EMPTY: '', SHORT: 'abc' };

const pick = <T>(values: readonly T[]): fc.Arbitrary<T> => fc.constantFrom(...values);
/** Mostly a valid value, sometimes an invalid one: a config with one or two problems reaches every check. */
const v = <T>(valid: readonly T[], invalid: readonly T[]): fc.Arbitrary<T> =>
  fc.oneof(
    { weight: 12, arbitrary: fc.constantFrom(...valid) },
    { weight: 1, arbitrary: fc.constantFrom(...invalid) },
  );
/** Present one time in three. */
const maybe = <T>(a: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> =>
  fc.oneof({ weight: 2, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: a });
/** Present one time in sixteen. */
const rarely = <T>(a: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> =>
  fc.oneof({ weight: 15, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: a });

const INCLUDE_NAMES = [
  'a.yaml',
  'b.yaml',
  'sub/c.yaml',
  '../up.yaml',
  'missing.yaml',
  'gatehouse.yaml',
  './a.yaml',
  'adir',
  '',
];
const SECRETS = v(
  [
    'env:TOKEN',
    'env:SECRET',
    'file:secret.txt',
    'file:sub/../secret.txt',
    'literal-value-long-enough-for-a-session-secret',
    '${env:TOKEN}x',
    '${file:secret.txt}',
  ],
  [
    'env:EMPTY',
    'env:UNSET',
    'env:',
    'file:short.txt',
    'file:missing',
    'file:adir',
    'file:bad.pem',
    'file:jwk.json',
    'file:../secret.txt',
    '${env:UNSET}',
    '',
  ],
);
const DURATIONS = v(
  ['500ms', '30s', '5m', '12h', '7d', '0s', '1.5s'],
  ['-1s', '5', '10 s', 'soon', `${'9'.repeat(30)}d`, 1000, null],
);
const SIZES = v(['1MB', '64KiB', '10', 1024, 0], [-1, '1e3', '9'.repeat(40), '4GiB', 'lots']);
const HOSTS = v(
  ['app.test', '*.corp.test', 'APP.test.', 'a.test:8443', '*', '[::1]'],
  ['', 'bad host', '*.'],
);
const PATHS = v(
  ['/', '/api/', '/admin', '/a//b', '/%7Eu', '/x/../y', '/;x'],
  ['noslash', '/%2f', '/%zz', '/../x'],
);
const CIDRS = v(
  ['10.0.0.0/8', '192.0.2.7', '2001:db8::/32', '::ffff:1.2.3.4/120'],
  ['10.0.0.0/33', 'fe80::1%eth0', 'x', '1.2.3.4/'],
);
const NAMES = v(['app', 'api', 'admin', 'a.b-c_d'], ['bad name', '', '0x', 'app']);

const listener = fc.record(
  {
    name: v(['main', 'tls'], ['x y', 'main']),
    bind: v(
      ['127.0.0.1:0', '127.0.0.1:8080', ':8080', '[::1]:8443', '0.0.0.0:80'],
      ['localhost:99999', 'nope', '127.0.0.1:9900'],
    ),
    tls: rarely(
      fc.record({ certificates: fc.array(fc.record({ cert: SECRETS, key: SECRETS }), { maxLength: 1 }) }),
    ),
    forwardAuth: rarely(v([true, false], ['yes' as unknown as boolean])),
  },
  { requiredKeys: ['name', 'bind'] },
);
const upstream = fc.record(
  {
    servers: fc.array(
      fc.record(
        {
          url: v(
            ['http://127.0.0.1:9001', 'https://10.0.0.5:8443/', 'http://[::1]:9'],
            ['http://h/path', 'ftp://x'],
          ),
          weight: maybe(v([0, 1, 5], [1001, -1])),
        },
        { requiredKeys: ['url'] },
      ),
      { minLength: 1, maxLength: 2 },
    ),
    balance: maybe(v(['round-robin', 'hash', 'least-conn'], ['fastest'])),
    hash: maybe(
      fc.record(
        { source: pick(['ip', 'header', 'cookie']), name: maybe(pick(['x-user', ''])) },
        { requiredKeys: ['source'] },
      ),
    ),
    healthCheck: maybe(
      fc.record({ path: PATHS, interval: DURATIONS, timeout: DURATIONS }, { requiredKeys: [] }),
    ),
    timeouts: maybe(
      fc.record({ connect: DURATIONS, response: DURATIONS, idle: DURATIONS }, { requiredKeys: [] }),
    ),
    inject: maybe(
      fc.record({
        headers: fc.dictionary(pick(['Authorization', 'X-Token', 'bad header']), SECRETS, { maxKeys: 2 }),
      }),
    ),
    tls: rarely(fc.record({ ca: SECRETS, cert: SECRETS, key: SECRETS }, { requiredKeys: [] })),
  },
  { requiredKeys: ['servers'] },
);
const rule = fc.record(
  {
    name: pick(['r', 'r', 'a\nb']),
    groups: fc.array(pick(['data-eng', 'admins']), { maxLength: 2 }),
    email: fc.array(pick(['a@example.com']), { maxLength: 1 }),
    sourceIp: fc.array(CIDRS, { maxLength: 2 }),
    paths: fc.array(PATHS, { maxLength: 2 }),
    methods: fc.array(pick(['GET', 'get', 'POST']), { maxLength: 2 }),
    claim: fc.dictionary(pick(['org.team', '.x', 'team']), pick(['a', 1, true]), { maxKeys: 1 }),
    time: fc.record(
      {
        days: fc.array(pick(['mon', 'xyz']), { maxLength: 1 }),
        from: pick(['09:00', '25:00']),
        to: pick(['17:00']),
        timezone: pick(['UTC', 'Mars/Base']),
      },
      { requiredKeys: [] },
    ),
  },
  { requiredKeys: [] },
);
const policy = fc.record(
  { allow: fc.array(rule, { maxLength: 2 }), deny: fc.array(rule, { maxLength: 1 }) },
  { requiredKeys: [] },
);
const route = fc.record(
  {
    name: NAMES,
    match: fc.record(
      {
        host: maybe(fc.oneof(HOSTS, fc.array(HOSTS, { maxLength: 2 }))),
        path: maybe(PATHS),
        methods: maybe(fc.array(pick(['GET', 'get']), { maxLength: 2 })),
        headers: maybe(fc.dictionary(pick(['x-a', 'bad name']), pick(['*', 'v']), { maxKeys: 1 })),
      },
      { requiredKeys: [] },
    ),
    upstream: maybe(pick(['app', 'api', 'missing'])),
    split: maybe(
      fc.record({
        targets: fc.array(fc.record({ upstream: pick(['app', 'api', 'missing']), weight: pick([0, 1, 5]) }), {
          maxLength: 3,
        }),
      }),
    ),
    policy: maybe(fc.oneof(pick(['p', 'missing']), policy)),
    public: maybe(fc.boolean()),
    maxBodySize: maybe(SIZES),
    rateLimit: maybe(
      fc.record(
        {
          rate: pick(['600/min', '10/s', '0/s', '5000/d', '9'.repeat(400) + '/s', 'fast', '1/ms']),
          burst: maybe(pick([1, 0, 100, 1e9])),
          key: maybe(
            v(['identity', 'ip', 'apiKey', 'claim:org.id', 'header:x-tenant'], ['claim:', 'header:', 'user']),
          ),
          delay: maybe(DURATIONS),
          maxDelayed: maybe(pick([0, 1, 1000, -1])),
          onStoreError: maybe(v(['allow', 'deny'], ['maybe'])),
        },
        { requiredKeys: ['rate'] },
      ),
    ),
    websocket: maybe(fc.oneof(fc.boolean(), fc.record({ idleTimeout: DURATIONS }))),
    providers: maybe(fc.array(pick(['corp', 'other']), { maxLength: 1 })),
    cors: maybe(
      fc.record({
        origins: fc.array(pick(['https://app.test', '*', 'null', 'not a url']), { maxLength: 2 }),
      }),
    ),
  },
  { requiredKeys: ['name'] },
);
const identity = fc.record(
  {
    session: maybe(
      fc.record(
        {
          secrets: fc.array(SECRETS, { maxLength: 2 }),
          maxAge: maybe(DURATIONS),
          cookie: maybe(pick(['gh', '__Host-gh', 'bad;name'])),
          domain: maybe(pick(['app.test', '.corp.test', 'bad_domain!'])),
          signInHost: maybe(pick(['app.test', 'login.corp.test', 'evil.example', 'app.test:8443', 'a/b'])),
        },
        { requiredKeys: [] },
      ),
    ),
    providers: maybe(
      fc.array(
        fc.record(
          {
            name: pick(['corp', 'other']),
            type: pick(['oidc', 'saml']),
            issuer: pick(['https://idp.example.com', 'http://127.0.0.1:9', 'http://idp.example.com', 'nope']),
            clientId: pick(['gatehouse', '']),
            clientSecret: maybe(SECRETS),
          },
          { requiredKeys: ['name', 'type', 'issuer', 'clientId'] },
        ),
        { maxLength: 2 },
      ),
    ),
    bearer: maybe(
      fc.array(
        fc.record({
          issuer: pick(['https://idp.example.com', 'http://10.0.0.1']),
          audiences: fc.array(pick(['api']), { maxLength: 1 }),
          clockTolerance: maybe(DURATIONS),
        }),
        { maxLength: 1 },
      ),
    ),
    apiKeys: maybe(
      fc.array(
        fc.record(
          {
            id: pick(['etl', 'bad id']),
            hash: pick(['sha256:<hex>', `sha256:${'a'.repeat(64)}`, 'md5:x']),
            subject: pick(['agent:etl', '']),
            expires: maybe(pick(['2027-01-01', '2027-13-45', 'soon'])),
          },
          { requiredKeys: ['id', 'hash', 'subject'] },
        ),
        { maxLength: 2 },
      ),
    ),
    assertion: maybe(
      fc.record({ signingKey: SECRETS, ttl: maybe(DURATIONS) }, { requiredKeys: ['signingKey'] }),
    ),
  },
  { requiredKeys: [] },
);
const test = fc.record({
  name: pick(['t', '']),
  as: maybe(
    fc.record(
      {
        email: maybe(pick(['a@example.com', ''])),
        groups: maybe(
          fc.oneof(pick(['data-eng']), fc.array(pick(['admins', 1 as unknown as string]), { maxLength: 1 })),
        ),
        authMethod: maybe(pick(['session', 'magic'])),
      },
      { requiredKeys: [] },
    ),
  ),
  request: fc.record(
    {
      method: maybe(pick(['GET', 'get'])),
      url: pick([
        'https://app.test/api/x',
        'http://a.corp.test/admin;x',
        'https://app.test/%2e%2e/admin',
        'not a url',
        'https://[::1]/',
      ]),
      sourceIp: maybe(pick(['10.1.2.3', '::1', 'nope'])),
    },
    { requiredKeys: ['url'] },
  ),
  expect: pick(['allow', 'deny', 'login', 403, 999]),
});
const document = fc.record(
  {
    listeners: fc.array(listener, { minLength: 1, maxLength: 2 }),
    server: maybe(
      fc.record(
        {
          trustedProxies: fc.array(CIDRS, { maxLength: 2 }),
          maxHeaderSize: maybe(SIZES),
          maxBodySize: maybe(SIZES),
          headersTimeout: maybe(DURATIONS),
          workers: maybe(pick(['auto', 2, 0])),
        },
        { requiredKeys: [] },
      ),
    ),
    admin: maybe(
      fc.record(
        { bind: maybe(pick(['127.0.0.1:9900', '127.0.0.1:8080'])), token: maybe(SECRETS) },
        { requiredKeys: [] },
      ),
    ),
    state: maybe(fc.record({ store: v(['memory', 'redis://127.0.0.1:6379/0'], ['mysql://x']) })),
    identity: maybe(identity),
    upstreams: maybe(
      fc.dictionary(v(['app', 'api'], ['bad name', '__proto__', 'constructor']), upstream, { maxKeys: 2 }),
    ),
    policies: maybe(
      fc.dictionary(v(['p', 'q'], ['bad name', '__proto__', 'toString']), policy, { maxKeys: 2 }),
    ),
    routes: maybe(fc.array(route, { maxLength: 3 })),
    quotas: rarely(
      fc.dictionary(
        v(['daily', 'monthly'], ['bad name', '__proto__']),
        fc.record(
          {
            key: v(['identity', 'ip', 'apiKey', 'claim:tenant'], ['nobody']),
            limit: v([1, 10_000], [0, -1, 1.5, '10']),
            window: v(['1m', '1d', 'month', '366d'], ['0s', '367d', 'week', '1ms']),
            timeZone: maybe(v(['UTC', 'Europe/Berlin', 'America/New_York'], ['Mars/Base', ''])),
            routes: maybe(fc.array(pick(['r', 'missing']), { maxLength: 2 })),
            when: maybe(fc.oneof(rule, pick(['x' as unknown as object]))),
            cost: maybe(v([1, 5, 'header:x-cost'], [0, 'header:', 'cost'])),
            onStoreError: maybe(v(['allow', 'deny'], ['later'])),
          },
          { requiredKeys: ['key', 'limit', 'window'] },
        ),
        { maxKeys: 2 },
      ),
    ),
    spoe: rarely(
      fc.record(
        {
          bind: v(['127.0.0.1:12345', '127.0.0.1:0'], ['nope', '127.0.0.1:8080']),
          maxFrameSize: maybe(v([16380, 256, 65536], [255, 65537, 1.5])),
          maxInFlightPerConnection: maybe(v([1, 64], [0, 10_001])),
        },
        { requiredKeys: ['bind'] },
      ),
    ),
    audit: rarely(
      fc.record(
        {
          file: maybe(v(['audit.jsonl', '/var/log/gatehouse/audit.jsonl'], [''])),
          maxSize: maybe(SIZES),
          keep: maybe(v([0, 10], [-1, 1001, 1.5])),
          fsync: maybe(v(['always', 'checkpoint', 'never'], ['sometimes'])),
          stdout: maybe(fc.boolean()),
          syslog: maybe(
            fc.record(
              {
                address: v(
                  ['udp://127.0.0.1:514', 'tcp://[::1]:6514'],
                  ['udp://x', 'http://127.0.0.1:514', 'tcp://h:99999'],
                ),
                appName: maybe(v(['gatehouse'], ['', 'x'.repeat(49)])),
                facility: maybe(v([13, 0, 23], [24, -1])),
              },
              { requiredKeys: ['address'] },
            ),
          ),
          decisions: maybe(v(['all', 'refused'], ['some'])),
          redactQuery: maybe(fc.array(v(['token', 'code'], ['']), { maxLength: 2 })),
          checkpoint: maybe(
            fc.record(
              { lines: maybe(v([1, 1000], [0, 1e7])), interval: maybe(DURATIONS) },
              { requiredKeys: [] },
            ),
          ),
          signingKey: maybe(SECRETS),
          bufferLimit: maybe(v([100, 10_000], [99, 1e8])),
        },
        { requiredKeys: [] },
      ),
    ),
    tests: maybe(fc.array(test, { maxLength: 2 })),
    include: rarely(
      fc.oneof(
        { weight: 8, arbitrary: fc.array(pick(INCLUDE_NAMES), { maxLength: 3 }) },
        { weight: 1, arbitrary: pick(['a.yaml', null, 5] as unknown[]) },
      ),
    ),
    unknownKey: rarely(fc.constant(1)),
    __proto__: rarely(
      fc.record(
        { listeners: fc.array(listener, { maxLength: 1 }), server: fc.constant({ drainTimeout: '1s' }) },
        { requiredKeys: [] },
      ),
    ),
    constructor: rarely(fc.constant({ name: 'x' })),
  },
  { requiredKeys: ['listeners'] },
);

/** Text edits that YAML cares about: indentation, flow syntax, anchors and aliases, tags, document markers. */
const YAML_BITS = [
  '\n',
  '  ',
  ': ',
  '- ',
  '{',
  '}',
  '[',
  ']',
  ',',
  '&a ',
  '*a',
  '!!binary ',
  '!!str ',
  '---\n',
  '...\n',
  '#',
  '"',
  "'",
  '|',
  '>',
  '? ',
  '<<: *a',
  '\t',
  'include: [a.yaml]\n',
  '~',
  'null',
  '0x1F',
  '.inf',
];
const edit = fc.tuple(fc.nat(), fc.nat(8), fc.oneof(pick(YAML_BITS), fc.string({ maxLength: 3 })));

const KNOWN = new Set([
  'listeners',
  'server',
  'admin',
  'state',
  'identity',
  'upstreams',
  'policies',
  'routes',
  'quotas',
  'spoe',
  'audit',
  'tests',
  'logging',
  'include',
]);
/**
 * The keys of a parsed file that must be reported: top-level keys that are not a section, and an
 * upstream or policy named `__proto__`.
 */
function unknownKeys(doc: unknown): string[] {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) return [];
  const unknown = Object.keys(doc).filter(
    (k) => !KNOWN.has(k) && (doc as Record<string, unknown>)[k] !== undefined,
  );
  for (const map of ['upstreams', 'policies', 'quotas']) {
    const m = (doc as Record<string, unknown>)[map];
    if (m !== null && typeof m === 'object' && Object.hasOwn(m, '__proto__'))
      unknown.push(`${map}.__proto__`);
  }
  return unknown;
}

/**
 * A file's text and, when it is the unedited stringification of a generated document, that document's
 * keys to report (what parsing the text gives back, so the check need not parse every text twice).
 */
interface Text {
  text: string;
  unknown?: string[] | undefined;
}

const text: fc.Arbitrary<Text> = fc
  .tuple(
    document,
    fc.oneof(
      { weight: 4, arbitrary: fc.constant([]) },
      { weight: 1, arbitrary: fc.array(edit, { minLength: 1, maxLength: 3 }) },
    ),
  )
  .map(([doc, edits]) => {
    let t = stringify(doc, { aliasDuplicateObjects: false });
    if (edits.length === 0) return { text: t, unknown: unknownKeys(doc) };
    for (const [at, cut, insert] of edits) {
      const i = at % (t.length + 1);
      t = t.slice(0, i) + insert + t.slice(i + (cut % 3 === 0 ? cut : 0));
    }
    return { text: t };
  });
// An include holds some of the sections (lists and maps merge; any other key may appear in one file only).
const fragment = fc
  .record(
    {
      routes: fc.array(route, { maxLength: 2 }),
      upstreams: fc.dictionary(v(['app', 'api', 'extra'], ['__proto__']), upstream, { maxKeys: 1 }),
      policies: fc.dictionary(v(['p', 'q'], ['__proto__']), policy, { maxKeys: 1 }),
      __proto__: rarely(fc.constant({ logging: { level: 'debug' } })),
      listeners: fc.array(listener, { maxLength: 1 }),
      tests: fc.array(test, { maxLength: 1 }),
      include: fc.array(pick(INCLUDE_NAMES), { maxLength: 2 }),
      logging: fc.record({ level: pick(['info', 'loud']) }),
    },
    { requiredKeys: [] },
  )
  .map((doc): Text => ({ text: stringify(doc), unknown: unknownKeys(doc) }));
const include = fc.record({
  name: pick(INCLUDE_NAMES.slice(0, 4)),
  text: fc.oneof(
    { weight: 6, arbitrary: fragment },
    { weight: 1, arbitrary: fragments(YAML_BITS, { maxParts: 8 }).map((t): Text => ({ text: t })) },
  ),
});

let checked = 0;

interface Input {
  main: string;
  includes: Array<{ name: string; text: string; unknown?: string[] | undefined }>;
  /** The keys to report of the main file, when known without parsing it (see `Text`). */
  unknown?: string[] | undefined;
}

function everyNumberFinite(v: unknown, seen = new Set<unknown>()): boolean {
  if (typeof v === 'number') return Number.isFinite(v);
  if (v === null || typeof v !== 'object' || seen.has(v)) return true;
  seen.add(v);
  return Object.values(v).every((x) => everyNumberFinite(x, seen));
}

export default defineTarget<Input>({
  name: 'config',
  description:
    'loadConfig with includes and secret references (src/config/load.ts), then compileRoutes, compilePolicies, compileTrusted, servedHostChecker, runConfigTests',
  invariants: {
    'load-resolves': 'loadConfig never throws or rejects, whatever the files hold',
    'problems-located':
      'a refused config has at least one problem, each naming the config file or an include, a path and a message',
    'values-usable': 'every number of an accepted config is finite',
    'keys-reported':
      'a top-level key of any file that is not a configuration section, and an upstream, policy or quota named __proto__, make the config refused with a problem at that key (or at its map, when the whole map is refused)',
    compiles: 'an accepted config compiles: routes, policies, trusted proxies, served hosts, its own tests',
    'generator-keys':
      "the harness's own record of a generated file's keys to report is what parsing its text gives (checked on one file in 64)",
  },
  async: true,
  smokeRuns: 200,
  arbitrary: fc.record({ main: text, includes: fc.array(include, { maxLength: 3 }) }).map(
    ({ main, includes }): Input => ({
      main: main.text,
      unknown: main.unknown,
      includes: includes.map((i) => ({ name: i.name, text: i.text.text, unknown: i.text.unknown })),
    }),
  ),
  async run(input, invariant) {
    const sources: Record<string, string> = { [MAIN]: input.main };
    const known = new Map<string, string[] | undefined>([[MAIN, input.unknown]]);
    const displays = new Set(['gatehouse.yaml']);
    for (const inc of input.includes) {
      const file = path.resolve(DIR, inc.name);
      if (Object.hasOwn(sources, file)) continue;
      sources[file] = inc.text;
      known.set(file, inc.unknown);
    }
    for (const name of INCLUDE_NAMES) displays.add(path.normalize(name));
    let r: Awaited<ReturnType<typeof loadConfig>>;
    try {
      // The display name is relative, as `gatehouse check -c gatehouse.yaml` run in DIR would show it.
      r = await loadConfig(MAIN, ENV, { sources });
    } catch (err) {
      invariant('load-resolves', false, () => String((err as Error)?.stack ?? err));
      return;
    }
    // A file that cannot be parsed stops validation (the rest would only give follow-on errors).
    const unparsable =
      !r.ok && r.problems.some((p) => p.path === '' && !p.message.startsWith('cannot read file'));
    for (const [file, text] of Object.entries(sources)) {
      if (unparsable) break;
      // Only files that were read: an include nobody names is not part of the config.
      if (!r.files.includes(file)) continue;
      let unknown = known.get(file);
      // One known list in 64 is checked against the parser, which keeps the shortcut honest.
      if (unknown === undefined || ++checked % 64 === 0) {
        let parsed: string[];
        try {
          parsed = unknownKeys(parse(text, { maxAliasCount: 1000, logLevel: 'error' }));
        } catch {
          continue;
        }
        if (unknown !== undefined)
          invariant(
            'generator-keys',
            JSON.stringify(parsed) === JSON.stringify(unknown),
            () => `generated ${JSON.stringify(unknown)}, parsed ${JSON.stringify(parsed)}`,
          );
        unknown = parsed;
      }
      if (unknown.length === 0) continue;
      invariant(
        'keys-reported',
        !r.ok &&
          unknown.every((k) =>
            r.problems.some(
              // A map key is reported with the whole map when the map itself is refused (a second
              // definition of `policies` in an include is reported at `policies`).
              (p) =>
                p.path === k ||
                p.path.startsWith(`${k}.`) ||
                (k.includes('.') && p.path === k.slice(0, k.indexOf('.'))),
            ),
          ),
        () =>
          `${JSON.stringify(unknown)}: ${r.ok ? 'accepted' : JSON.stringify(r.problems.map((p) => p.path))}`,
      );
    }
    if (!r.ok) {
      invariant(
        'problems-located',
        r.problems.length > 0 &&
          r.problems.every(
            (p) =>
              (p.file === MAIN || displays.has(path.relative(DIR, p.file)) || displays.has(p.file)) &&
              typeof p.path === 'string' &&
              typeof p.message === 'string' &&
              p.message !== '',
          ),
        () => JSON.stringify(r.ok ? [] : r.problems),
      );
      return;
    }
    invariant('values-usable', everyNumberFinite(r.config), () => 'a number is not finite');
    try {
      compileRoutes(r.config);
      compilePolicies(r.config);
      compileTrusted(r.config.server.trustedProxies);
      servedHostChecker(r.config);
      runConfigTests(r.config, Date.UTC(2026, 0, 5, 12));
    } catch (err) {
      invariant('compiles', false, () => String((err as Error)?.stack ?? err));
    }
  },
});

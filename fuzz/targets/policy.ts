/**
 * Policy rules and CIDRs: `compileCidrs` (src/policy/cidr.ts), which must answer what node:net's
 * BlockList answers, and `compilePolicies` (src/policy/compile.ts): a generated policy, accepted by the
 * schema, compiles or is refused with its problems, and the compiled policy evaluates any request and
 * identity without throwing, consistently with its own trace (deny first, then allow, else no-allow-rule).
 */
import { BlockList, isIP } from 'node:net';
import fc from 'fast-check';
import { type Config, ConfigSchema } from '../../src/config/schema.js';
import type { Identity } from '../../src/identity/types.js';
import { compileCidrs } from '../../src/policy/cidr.js';
import { compilePolicies, PolicyConfigError } from '../../src/policy/compile.js';
import { defineTarget, fragments } from '../harness.js';

const ADDRESS_PIECES = [
  '::ffff:',
  '::',
  ':',
  '.',
  '0',
  '1',
  '10',
  '127',
  '255',
  '256',
  '01',
  'ff',
  'FFFF',
  'db8',
  '2001',
  'fe80',
  '%eth0',
  '%1',
  '1.2.3.4',
];
const address = fc.oneof(
  { weight: 3, arbitrary: fc.ipV4() },
  { weight: 1, arbitrary: fc.ipV4Extended() },
  { weight: 3, arbitrary: fc.ipV6() },
  { weight: 2, arbitrary: fc.ipV4().map((a) => `::ffff:${a}`) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '0.0.0.0',
      '::',
      '::1',
      '::ffff:0:0',
      '::ffff:7f00:1',
      '64:ff9b::1.2.3.4',
      '1::',
      '::2:3:4:5:6:7:8',
      '1:2:3:4:5:6:7::',
    ),
  },
  { weight: 2, arbitrary: fragments(ADDRESS_PIECES, { maxParts: 8 }) },
);
const prefix = fc.oneof(
  { weight: 4, arbitrary: fc.nat(130).map((n) => `/${n}`) },
  { weight: 2, arbitrary: fc.constant('') },
  { weight: 1, arbitrary: fc.constantFrom('/', '/-1', '/08', '/1000', '/ 8', '/8/8', '/0x8', '/a') },
);
const cidr = fc.tuple(address, prefix).map(([a, p]) => a + p);

const RULE = fc.record(
  {
    name: fc.constantFrom('r', 'rule one', 'a\nb', 'x'.repeat(101), 'dup'),
    email: fc.array(fc.constantFrom('a@example.com', 'A@Example.COM', ' b@example.com ', 'c@'), {
      maxLength: 2,
    }),
    domain: fc.array(fc.constantFrom('example.com', '@example.com', 'example.com.', 'EXAMPLE.com', ''), {
      maxLength: 2,
    }),
    user: fc.array(fc.constantFrom('alice', 'bob'), { maxLength: 2 }),
    subject: fc.array(fc.constantFrom('alice', 'agent:etl'), { maxLength: 2 }),
    groups: fc.array(fc.constantFrom('data-eng', 'admins', ''), { maxLength: 2 }),
    claim: fc.dictionary(
      fc.constantFrom(
        'org.team',
        'https://ns/roles',
        'team',
        '.bad',
        'bad.',
        'a..b',
        '',
        '__proto__',
        'constructor',
      ),
      fc.oneof(
        fc.constantFrom('x', 'data'),
        fc.integer({ min: -2, max: 2 }),
        fc.boolean(),
        fc.array(fc.constantFrom('r', 'x'), { maxLength: 2 }),
      ),
      { maxKeys: 2 },
    ),
    authMethod: fc.array(fc.constantFrom('session', 'bearer', 'apiKey', 'mtls'), { maxLength: 2 }),
    sourceIp: fc.array(cidr, { maxLength: 3 }),
    methods: fc.array(fc.constantFrom('GET', 'POST', 'DELETE'), { maxLength: 2 }),
    paths: fc.array(
      fc.constantFrom('/a', '/a/', '/A%2e', '/x/../y', 'noslash', '/%zz', '/', '/a?q', '//b', '/%2F'),
      { maxLength: 2 },
    ),
    time: fc.record(
      {
        days: fc.array(fc.constantFrom('mon', 'sat', 'sun'), { maxLength: 2 }),
        from: fc.constantFrom('09:00', '00:00', '23:59', '25:99', '24:00'),
        to: fc.constantFrom('17:00', '09:00', '00:00', '99:00'),
        timezone: fc.constantFrom('UTC', 'Europe/Berlin', 'America/St_Johns', 'Mars/Base', '', 'utc'),
      },
      { requiredKeys: [] },
    ),
  },
  { requiredKeys: [] },
);
const identity = fc.option(
  fc.record({
    email: fc.option(
      fc.constantFrom('a@example.com', 'A@EXAMPLE.COM', 'x@other.test', 'noat', '@example.com'),
      { nil: undefined },
    ),
    user: fc.constantFrom('alice', 'bob'),
    subject: fc.constantFrom('alice', 'agent:etl'),
    groups: fc.array(fc.constantFrom('data-eng', 'admins', ''), { maxLength: 2 }),
    claims: fc.oneof(
      fc.constant({}),
      fc.record(
        {
          org: fc.oneof(
            fc.record({ team: fc.constantFrom('x', 'data') }),
            fc.constant(null),
            fc.constant('x'),
          ),
          team: fc.array(fc.constantFrom('x', 'r')),
          'https://ns/roles': fc.constantFrom('r', 1, true),
        },
        { requiredKeys: [] },
      ),
    ),
    authMethod: fc.constantFrom('session', 'bearer', 'apiKey', 'mtls'),
  }),
  { nil: undefined },
);
const request = fc.record({
  method: fc.constantFrom('GET', 'POST', 'DELETE'),
  path: fc.constantFrom('/', '/a', '/a/b', '/ab', '/y', '/x/y', '/b', '/A.'),
  clientIp: address,
  now: fc.integer({ min: 0, max: 4_102_444_800_000 }),
});

interface Input {
  cidrs: string[];
  ips: string[];
  deny: Array<Record<string, unknown>>;
  allow: Array<Record<string, unknown>>;
  identity:
    | (Omit<Identity, 'source' | 'expiresAt' | 'claims'> & { claims: Record<string, unknown> })
    | undefined;
  request: { method: string; path: string; clientIp: string; now: number };
}

function family(ip: string): 'ipv4' | 'ipv6' {
  return isIP(ip) === 6 ? 'ipv6' : 'ipv4';
}

export default defineTarget<Input>({
  name: 'policy',
  description: 'compileCidrs (src/policy/cidr.ts), compilePolicies and evaluation (src/policy/compile.ts)',
  smokeRuns: 1000,
  invariants: {
    'cidr-compile': 'compileCidrs never throws; an entry is accepted or reported',
    'cidr-blocklist':
      'for every IP address, a compiled set answers what node:net BlockList answers for the same entries',
    'cidr-not-an-address': 'a string that is not an IP address is never in a set (undefined)',
    'policy-compile':
      'a schema-valid policy compiles, or compilePolicies throws PolicyConfigError with its problems',
    'policy-evaluate': 'a compiled policy evaluates any identity and request without throwing',
    'policy-trace':
      'evaluate agrees with trace: the first matching deny rule, else the first matching allow rule, else no-allow-rule',
    'policy-anonymous':
      'an anonymous request is never allowed, and refused only by rules that need no identity',
  },
  arbitrary: fc.record({
    cidrs: fc.array(cidr, { maxLength: 4 }),
    ips: fc.array(address, { maxLength: 4 }),
    deny: fc.array(RULE, { maxLength: 2 }),
    allow: fc.array(RULE, { maxLength: 3 }),
    identity,
    request,
  }) as fc.Arbitrary<Input>,
  run(input, invariant) {
    const accepted: string[] = [];
    let set: ReturnType<typeof compileCidrs> | undefined;
    try {
      const rejected = new Set<number>();
      set = compileCidrs(input.cidrs, (i) => rejected.add(i));
      input.cidrs.forEach((c, i) => {
        if (!rejected.has(i)) accepted.push(c);
      });
    } catch (err) {
      invariant('cidr-compile', false, () => String(err));
    }
    if (set !== undefined) {
      const list = new BlockList();
      for (const c of accepted) {
        const [a, bits] = c.split('/') as [string, string | undefined];
        if (bits === undefined) list.addAddress(a, family(a));
        else list.addSubnet(a, Number(bits), family(a));
      }
      for (const ip of [...input.ips, ...input.cidrs.map((c) => c.split('/')[0]!)]) {
        const got = set.has(ip);
        if (isIP(ip) !== 0 && !ip.includes('%')) {
          const want = list.check(ip, family(ip));
          invariant(
            'cidr-blocklist',
            got === want,
            () => `${ip} in ${JSON.stringify(accepted)}: ${got}, BlockList says ${want}`,
          );
        } else if (!ip.includes('%')) {
          invariant('cidr-not-an-address', got === undefined, () => `${JSON.stringify(ip)}: ${got}`);
        }
      }
    }

    // Only the policies section: the rest of the schema has no bearing on compilation.
    const parsed = ConfigSchema.shape.policies.safeParse({ p: { deny: input.deny, allow: input.allow } });
    if (!parsed.success) return;
    const config = { policies: parsed.data, routes: [] } as unknown as Config;
    let policies: ReturnType<typeof compilePolicies>;
    try {
      policies = compilePolicies(config);
    } catch (err) {
      invariant('policy-compile', err instanceof PolicyConfigError && err.problems.length > 0, () =>
        String((err as Error)?.stack ?? err),
      );
      return;
    }
    const policy = policies.named.get('p')!;
    const id: Identity | undefined =
      input.identity === undefined ? undefined : { ...input.identity, source: 'fuzz', expiresAt: undefined };
    const req = { ...input.request, host: 'h' };
    let result: ReturnType<typeof policy.evaluate>;
    let trace: ReturnType<typeof policy.trace>;
    try {
      result = policy.evaluate(id, req);
      trace = policy.trace(id, req);
    } catch (err) {
      invariant('policy-evaluate', false, () => String((err as Error)?.stack ?? err));
      return;
    }
    const firstDeny = trace.find((t) => t.effect === 'deny' && t.matched);
    const firstAllow = trace.find((t) => t.effect === 'allow' && t.matched);
    const want = firstDeny
      ? { allow: false, rule: firstDeny.name }
      : firstAllow
        ? { allow: true, rule: firstAllow.name }
        : { allow: false, rule: undefined };
    invariant(
      'policy-trace',
      result.allow === want.allow && result.rule === want.rule,
      () => `evaluate: ${JSON.stringify(result)}, trace: ${JSON.stringify(trace)}`,
    );
    if (id === undefined) {
      invariant(
        'policy-anonymous',
        !result.allow &&
          (result.rule === undefined || trace.some((t) => t.name === result.rule && !t.needsIdentity)),
        () => `anonymous: ${JSON.stringify(result)}`,
      );
    }
  },
});

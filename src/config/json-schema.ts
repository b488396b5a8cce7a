/**
 * Generates, from the one configuration schema, the JSON Schema editors use
 * (`schema/gatehouse.schema.json`) and the configuration reference (`docs/configuration.md`).
 * Run by `npm run schema`; a test asserts that the committed files are up to date.
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { ConfigSchema } from './schema.js';
import { formatDuration } from './units.js';

/** Where the generated files live, relative to the repository root. */
export const SCHEMA_FILE = fileURLToPath(new URL('../../schema/gatehouse.schema.json', import.meta.url));
/** The generated configuration reference. */
export const REFERENCE_FILE = fileURLToPath(new URL('../../docs/configuration.md', import.meta.url));

const DURATION_PATTERN = '^\\d+(\\.\\d+)?(ms|s|m|h|d)$';

type Json = Record<string, unknown>;

/**
 * Descriptions for keys whose schema has none, by reference key. Policy rule fields and header edits
 * are shared by several places and described once (`rule.*`, `headerEdits.*`).
 */
const DESCRIPTIONS: Record<string, string> = {
  listeners: 'Client-facing listeners (HTTP, or HTTPS when tls is set)',
  'listeners[].name': 'Unique listener name, used in logs and metrics',
  'listeners[].tls': 'Terminate TLS on this listener (HTTPS, with HTTP/2 through ALPN)',
  'listeners[].tls.minVersion': 'Oldest TLS version accepted',
  'listeners[].tls.maxVersion': 'Newest TLS version offered (default: the newest supported)',
  'listeners[].tls.clientCertificate.mode':
    'request: ask for a client certificate; require: refuse clients without one',
  server: 'Limits, timeouts and trust settings that apply to every listener',
  'server.keepAliveTimeout': 'How long an idle client keep-alive connection stays open',
  'server.maxHeadersCount': 'Most request header fields accepted (431 beyond)',
  admin: 'The admin listener: /metrics, /healthz, /readyz, /api/v1 and the dashboard (off when absent)',
  'admin.bind': 'host:port of the admin listener (keep it on loopback)',
  state: 'Where shared state (sessions, counters, stickiness) lives',
  'state.store': 'memory (one instance) or a redis:// or rediss:// URL (shared by instances)',
  identity: 'Authentication settings: sessions, OIDC providers, bearer issuers, API keys, assertion',
  'identity.session': 'Browser sessions after an OIDC login',
  'identity.session.secrets': 'Secrets that sign session cookies; the first signs, all verify (rotation)',
  'identity.session.maxAge': 'Longest lifetime of a session',
  'identity.session.idleTimeout': 'A session unused for this long ends',
  'identity.session.cookie': 'Session cookie name',
  'identity.session.domain': 'Cookie domain, to share the session across subdomains',
  'identity.providers': 'OpenID Connect providers users sign in with',
  'identity.providers[].name': 'Provider name',
  'identity.providers[].type': 'Provider type (only oidc)',
  'identity.providers[].issuer': 'Issuer URL (https:, or http: on loopback only)',
  'identity.providers[].clientId': 'OAuth client id registered with the provider',
  'identity.providers[].clientSecret': 'OAuth client secret (env:NAME or file:PATH)',
  'identity.providers[].scopes': 'Scopes requested at login',
  'identity.providers[].groupsClaim': 'Claim that lists the user groups',
  'identity.bearer': 'Issuers whose bearer JWTs are accepted (machines, agents)',
  'identity.bearer[].issuer': 'Expected iss claim',
  'identity.bearer[].audiences': 'Accepted aud values',
  'identity.bearer[].jwksUri': 'JWKS URL (default: discovered from the issuer)',
  'identity.bearer[].algorithms': 'Allowed signing algorithms',
  'identity.bearer[].groupsClaim': 'Claim that lists the groups',
  'identity.apiKeys': 'API keys, stored as hashes',
  'identity.apiKeys[].id': 'Key id, shown in logs and audit',
  'identity.apiKeys[].hash': 'sha256: followed by the hex SHA-256 of the key',
  'identity.apiKeys[].subject': 'Identity the key stands for, e.g. agent:etl',
  'identity.apiKeys[].groups': 'Groups of that identity',
  'identity.apiKeys[].expires': 'Expiry date (ISO 8601)',
  'identity.apiKeys[].routes': 'Routes the key may be used on (default: any)',
  'identity.assertion': 'The signed identity assertion sent upstream as X-Gatehouse-Assertion',
  'identity.assertion.signingKey': 'Private key (JWK or PEM) that signs assertions',
  'identity.assertion.ttl': 'Lifetime of an assertion',
  'identity.assertion.algorithm': 'Signing algorithm',
  upstreams: 'Named groups of backend servers (HAProxy backends)',
  'upstreams.<name>.servers': 'Servers of the upstream',
  'upstreams.<name>.servers[].url':
    'Server origin, e.g. http://10.0.0.5:8080 (a host name is re-resolved, every address used)',
  'upstreams.<name>.servers[].weight': 'Relative share of traffic (0 = none)',
  'upstreams.<name>.servers[].backup': 'Used only when no primary server is available',
  'upstreams.<name>.servers[].maxConnections':
    'Concurrent requests on this server (overrides the upstream setting)',
  'upstreams.<name>.balance': 'How a server is chosen',
  'upstreams.<name>.hash.source': 'Hash the client address, a request header or a cookie',
  'upstreams.<name>.sticky': 'Cookie stickiness: a client keeps its server while it is available',
  'upstreams.<name>.sticky.cookie': 'Name of the affinity cookie',
  'upstreams.<name>.sticky.maxAge': 'Cookie lifetime (default: a browser-session cookie)',
  'upstreams.<name>.sticky.path': 'Cookie path',
  'upstreams.<name>.sticky.secure': 'Mark the cookie Secure (default: when the client used HTTPS)',
  'upstreams.<name>.healthCheck': 'Active HTTP health checks (off when absent)',
  'upstreams.<name>.healthCheck.path': 'Path requested',
  'upstreams.<name>.healthCheck.method': 'Method used',
  'upstreams.<name>.healthCheck.interval': 'Time between checks',
  'upstreams.<name>.healthCheck.timeout': 'A check not answered in this time failed',
  'upstreams.<name>.healthCheck.rise': 'Consecutive successes that mark a server up',
  'upstreams.<name>.healthCheck.fall': 'Consecutive failures that mark a server down',
  'upstreams.<name>.passive': 'Passive health: eject servers whose real requests fail',
  'upstreams.<name>.passive.ejectFor': 'How long an ejected server is left out',
  'upstreams.<name>.passive.maxEjectedPercent':
    'Never eject when this share of the servers would be out of rotation (down by checks counts too); ' +
    'when no server is usable, ejected servers not found down by checks still get traffic (panic mode)',
  'upstreams.<name>.timeouts': 'Timeouts towards the servers (long defaults suit long jobs and streams)',
  'upstreams.<name>.timeouts.connect': 'Time to open a connection',
  'upstreams.<name>.retries': 'Retries on another server (idempotent requests, or before any byte was sent)',
  'upstreams.<name>.retries.attempts': 'Retries after the first attempt',
  'upstreams.<name>.retries.on':
    'Conditions that are retried: connect-error, timeout, reset or a 5xx status. Once the request was ' +
    'sent, only GET, HEAD, OPTIONS, PUT and DELETE are retried (a body up to 64 KiB is kept to replay); ' +
    'a POST or PATCH never reaches a server twice',
  'upstreams.<name>.retries.backoff': 'Base of the jittered delay before a retry',
  'upstreams.<name>.queue': 'Requests wait here when every server is at maxConnections',
  'upstreams.<name>.queue.max': 'Longest queue (503 beyond)',
  'upstreams.<name>.queue.timeout': 'Longest wait in the queue (503 after)',
  'upstreams.<name>.tls': 'TLS towards https:// servers',
  'upstreams.<name>.tls.serverName': 'SNI name and name verified in the server certificate',
  'upstreams.<name>.tls.key': 'Private key of the client certificate',
  'upstreams.<name>.inject': 'Credentials added to every forwarded request; clients never see them',
  policies: 'Named access policies that routes refer to',
  'policies.<name>.allow': 'Rules of which one must match for access (see rule fields below)',
  'policies.<name>.deny': 'Rules of which any match refuses access, before allow',
  'rule.email': 'Any of these e-mail addresses',
  'rule.domain': 'Any of these e-mail domains',
  'rule.user': 'Any of these user names',
  'rule.subject': 'Any of these subjects (sub claim or API key subject)',
  'rule.groups': 'Member of any of these groups',
  'rule.claim': 'Claims with these values',
  'rule.authMethod': 'Authenticated in one of these ways',
  'rule.sourceIp': 'Client address in any of these blocks',
  'rule.methods': 'Any of these HTTP methods',
  'rule.paths': 'Path starting with any of these prefixes',
  'rule.time': 'Within this time window',
  'rule.time.days': 'Days of the week',
  'rule.time.from': 'Start time, HH:MM',
  'rule.time.to': 'End time, HH:MM',
  'rule.time.timezone': 'IANA time zone (default: UTC)',
  'rule.name': 'Rule name, shown as the reason of a decision',
  routes: 'Routes from requests to upstreams; the most specific match wins',
  'routes[].name': 'Unique route name, used in logs and metrics',
  'routes[].match': 'What the request must look like',
  'routes[].match.methods': 'Any of these methods (default: any)',
  'routes[].upstream': 'Upstream that serves the route (or use split)',
  'routes[].split.targets': 'Upstreams and their weights',
  'routes[].split.targets[].upstream': 'Upstream name',
  'routes[].split.targets[].weight': 'Relative share of requests',
  'routes[].policy': 'Name of a policy, or an inline policy',
  'routes[].policy.allow': 'Rules of which one must match for access',
  'routes[].policy.deny': 'Rules of which any match refuses access, before allow',
  'routes[].public': 'Serve without authentication',
  'routes[].rateLimit':
    'Requests allowed per key (identity, client address, API key, claim or header), shared by every instance through the state store; over it, 429',
  'routes[].rateLimit.key': 'What is counted per: identity | ip | apiKey | claim:<path> | header:<name>',
  'routes[].rateLimit.rate': 'Sustained rate',
  'routes[].identityHeaders': 'Send X-Gatehouse-User, -Email, -Groups and -Assertion upstream',
  'routes[].timeouts.response': 'Overrides the upstream response timeout',
  'routes[].timeouts.idle': 'Overrides the upstream idle timeout',
  'routes[].headers': 'Header edits on the forwarded request and on the response',
  'routes[].headers.request': 'Edits of the request sent upstream',
  'routes[].headers.response': 'Edits of the response sent to the client',
  'headerEdits.set': 'Headers to set (replacing any value)',
  'headerEdits.remove': 'Headers to remove',
  tests: 'Policy tests run by gatehouse check',
  'tests[].name': 'Test name',
  'tests[].as': 'Identity of the caller (email, groups, ...); anonymous when absent',
  'tests[].request': 'The request',
  'tests[].request.method': 'HTTP method',
  'tests[].request.url': 'Full URL, e.g. https://airbyte.example.com/api/v1/jobs',
  'tests[].request.headers': 'Request headers',
  'tests[].request.sourceIp': 'Client address',
  'tests[].expect': 'allow, deny, login, or an HTTP status',
  logging: 'Operational and access logs (JSON lines on stdout)',
  'logging.level': 'Least severe operational log level written',
};

/** The shared description key of a reference key (`rule.email` for any policy rule's `email`). */
function descriptionKey(key: string): string {
  return key
    .replace(/^(policies\.<name>|routes\[\]\.policy)\.(allow|deny)\[\]\./, 'rule.')
    .replace(/^quotas\.<name>\.when\./, 'rule.')
    .replace(/^routes\[\]\.headers\.(request|response)\./, 'headerEdits.');
}

/** Adds missing descriptions, walking the schema with the same keys as the reference. */
function describeAll(s: Json, key: string): void {
  // The generic duration and size texts say only what the type says; a specific one is better.
  const generic = typeof s.description === 'string' && /^A (duration|size) /.test(s.description);
  const text = DESCRIPTIONS[key] ?? DESCRIPTIONS[descriptionKey(key)];
  if (text !== undefined && (s.description === undefined || generic)) s.description = text;
  for (const child of children(s, key)) describeAll(child.schema, child.key);
}

/** The JSON Schema of the configuration as written in YAML (durations and sizes as strings). */
export function buildJsonSchema(): Json {
  const schema = z.toJSONSchema(ConfigSchema, {
    io: 'input',
    unrepresentable: 'any',
    override(ctx) {
      // Defaults of transformed values (durations) are dropped in input mode; restore them as written.
      const def = (ctx.zodSchema as unknown as { _zod: { def: { type: string; defaultValue?: unknown } } })
        ._zod.def;
      const json = ctx.jsonSchema as Json;
      if (def.type !== 'default' || json.default !== undefined) return;
      const value = def.defaultValue;
      if (typeof value === 'number' && json.pattern === DURATION_PATTERN)
        json.default = formatDuration(value);
      else if (value !== null && typeof value !== 'object') json.default = value;
      else if (Array.isArray(value)) json.default = value;
    },
  }) as Json;
  for (const [name, child] of Object.entries(schema.properties as Record<string, Json>))
    describeAll(child, name);
  return {
    $schema: schema.$schema,
    $id: 'https://gatehouse.dev/schema/gatehouse.schema.json',
    title: 'Gatehouse configuration',
    ...schema,
  };
}

/** The text of `schema/gatehouse.schema.json`. */
export function renderJsonSchema(): string {
  return `${JSON.stringify(buildJsonSchema(), null, 2)}\n`;
}

// ---------------------------------------------------------------------------------------------
// Reference document

interface Row {
  key: string;
  type: string;
  required: boolean;
  default: string;
  description: string;
}

function typeOf(s: Json): string {
  if (s.pattern === DURATION_PATTERN) return 'duration';
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (Array.isArray(s.enum)) return s.enum.map((v) => JSON.stringify(v)).join(' \\| ');
  const anyOf = s.anyOf as Json[] | undefined;
  if (anyOf) {
    const parts = anyOf.map(typeOf);
    if (parts.length === 2 && parts.includes('integer') && parts.includes('string')) return 'size';
    return [...new Set(parts)].join(' \\| ');
  }
  if (s.type === 'array') {
    const items = (s.items as Json | undefined) ?? {};
    return `list of ${typeOf(items)}`;
  }
  if (s.type === 'object') {
    if (s.properties) return 'object';
    return s.additionalProperties && typeof s.additionalProperties === 'object'
      ? `map of ${typeOf(s.additionalProperties as Json)}`
      : 'map';
  }
  return typeof s.type === 'string' ? s.type : 'any';
}

function constraints(s: Json): string {
  const notes: string[] = [];
  if (typeof s.minItems === 'number' && s.minItems > 0) notes.push(`at least ${s.minItems} item(s)`);
  if (typeof s.minimum === 'number' && s.minimum !== 0) notes.push(`≥ ${s.minimum}`);
  if (typeof s.exclusiveMinimum === 'number') notes.push(`> ${s.exclusiveMinimum}`);
  if (typeof s.maximum === 'number' && s.maximum < Number.MAX_SAFE_INTEGER) notes.push(`≤ ${s.maximum}`);
  return notes.length > 0 ? ` (${notes.join(', ')})` : '';
}

function escapeCell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

function walk(s: Json, key: string, required: boolean, rows: Row[]): void {
  rows.push({
    key,
    type: typeOf(s),
    required,
    default: s.default === undefined ? '' : `\`${JSON.stringify(s.default)}\``,
    description: (escapeCell(String(s.description ?? '')) + constraints(s)).trim(),
  });
  for (const child of children(s, key)) walk(child.schema, child.key, child.required, rows);
}

function children(s: Json, key: string): Array<{ key: string; schema: Json; required: boolean }> {
  const out: Array<{ key: string; schema: Json; required: boolean }> = [];
  if (s.type === 'object' && s.properties) {
    const required = new Set((s.required as string[] | undefined) ?? []);
    for (const [name, child] of Object.entries(s.properties as Record<string, Json>)) {
      out.push({ key: `${key}.${name}`, schema: child, required: required.has(name) });
    }
  } else if (s.type === 'object' && s.additionalProperties && typeof s.additionalProperties === 'object') {
    const value = s.additionalProperties as Json;
    if (value.properties) {
      const required = new Set((value.required as string[] | undefined) ?? []);
      for (const [name, child] of Object.entries(value.properties as Record<string, Json>)) {
        out.push({ key: `${key}.<name>.${name}`, schema: child, required: required.has(name) });
      }
    }
  } else if (s.type === 'array' && s.items) {
    const items = s.items as Json;
    if (items.properties) {
      const required = new Set((items.required as string[] | undefined) ?? []);
      for (const [name, child] of Object.entries(items.properties as Record<string, Json>)) {
        out.push({ key: `${key}[].${name}`, schema: child, required: required.has(name) });
      }
    }
  } else if (Array.isArray(s.anyOf)) {
    for (const alt of s.anyOf as Json[]) {
      if (alt.type === 'object' && alt.properties) out.push(...children(alt, key));
    }
  }
  return out;
}

const INTRO = `# Configuration reference

<!-- Generated from src/config/schema.ts by \`npm run schema\`; do not edit by hand. -->

Gatehouse reads one YAML file (\`gatehouse start -c FILE\`, \`gatehouse check -c FILE\`). The JSON Schema
in \`schema/gatehouse.schema.json\` describes the same file for editors, for example with the YAML
language server:

\`\`\`yaml
# yaml-language-server: $schema=../schema/gatehouse.schema.json
\`\`\`

## Conventions

- **Durations** are strings such as \`500ms\`, \`30s\`, \`5m\`, \`12h\` or \`7d\`; a timeout or an interval must be
  more than 0 (there is no "no limit").
- **Sizes** are a number of bytes or a string such as \`64KiB\`, \`10MB\`, \`1GiB\`.
- **Secrets** are a literal value, \`env:NAME\` (an environment variable) or \`file:PATH\` (a file, with
  one trailing newline removed). \`file:\` paths are relative to the directory of the main configuration
  file. Inside \`inject.headers\` values, \`\${env:NAME}\` and \`\${file:PATH}\` are expanded within text.
  Secret files and certificates are read again on every reload, and a change to any of them triggers one.
- **Includes**: \`include: [routes.yaml, security/policies.yaml]\` merges further files (paths relative to
  the including file; included files may include others; cycles are rejected). Their \`listeners\`,
  \`routes\` and \`tests\` lists are appended, their \`upstreams\` and \`policies\` merged (a name defined
  twice is an error), and every other top-level key may appear in only one file.
- **Reload**: \`SIGHUP\`, or a change to the configuration, an included file, a secret file or a
  certificate, loads the configuration again. A configuration that fails validation is rejected and
  logged, and the running one stays in use.
- \`gatehouse check -c FILE\` prints every problem at once as \`FILE: path.to.key: message\`.

In the tables, \`[]\` stands for any item of a list and \`<name>\` for any key of a map. A key is required
only where the table says so, and only when the object that contains it is present.
`;

/** The text of `docs/configuration.md`. */
export function renderReference(): string {
  const schema = buildJsonSchema();
  const props = schema.properties as Record<string, Json>;
  const required = new Set((schema.required as string[] | undefined) ?? []);
  const sections: string[] = [INTRO];
  for (const [name, s] of Object.entries(props)) {
    const rows: Row[] = [];
    walk(s, name, required.has(name), rows);
    const lines = [
      `## \`${name}\``,
      '',
      s.description ? `${String(s.description)}\n` : '',
      '| Key | Type | Required | Default | Description |',
      '| --- | --- | --- | --- | --- |',
      ...rows.map((r) =>
        `| \`${r.key}\` | ${r.type} | ${r.required ? 'yes' : ''} | ${r.default} | ${r.description} |`.replace(
          /\s+\|$/,
          ' |',
        ),
      ),
      '',
    ].filter((l, i) => l !== '' || i !== 2);
    sections.push(lines.join('\n'));
  }
  return `${sections.join('\n')}`;
}

/** Writes both generated files. */
export function writeGenerated(): void {
  writeFileSync(SCHEMA_FILE, renderJsonSchema());
  writeFileSync(REFERENCE_FILE, renderReference());
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  writeGenerated();
  process.stdout.write(`wrote ${SCHEMA_FILE}\nwrote ${REFERENCE_FILE}\n`);
}

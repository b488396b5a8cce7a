/**
 * The configuration schema: the single source of truth for validation, for the TypeScript types of
 * the configuration and for the JSON Schema file that editors use (`schema/gatehouse.schema.json`).
 * Durations and sizes are written as strings in YAML and come out of parsing as milliseconds and bytes.
 */
import { isIP } from 'node:net';
import { z } from 'zod';
import { parseDuration, parseRateParts, parseSize } from './units.js';

/** A duration such as `500ms`, `30s`, `5m`, `12h`; parsed to milliseconds. */
export const Duration = z
  .string()
  .meta({
    description: 'A duration such as 500ms, 30s, 5m, 12h or 7d',
    pattern: '^\\d+(\\.\\d+)?(ms|s|m|h|d)$',
  })
  .transform((text, ctx) => {
    const ms = parseDuration(text);
    if (ms === undefined) {
      ctx.addIssue({
        code: 'custom',
        message: `invalid duration "${text}" (expected e.g. 500ms, 30s, 5m, 12h)`,
      });
      return z.NEVER;
    }
    return ms;
  });

/** The longest delay a Node.js timer can wait (2^31 - 1 ms, about 24.8 days); a longer one fires at once. */
export const MAX_TIMER_MS = 2_147_483_647;

/** A duration the gateway waits with a timer (timeouts, intervals, backoffs): at most 24 days. */
export const TimerDuration = Duration.refine((ms) => ms <= MAX_TIMER_MS, {
  message: 'must be at most 24d: a timer cannot wait longer',
});

/**
 * A duration that must be above zero: a timeout or interval of 0 would mean "none" to Node.js or
 * undici (no slowloris guard, connections held forever) or a busy loop (health checks).
 */
export const PositiveDuration = Duration.refine((ms) => ms > 0, { message: 'must be more than 0' });

/** A duration waited with a timer that must also be above zero (see TimerDuration, PositiveDuration). */
export const PositiveTimerDuration = PositiveDuration.refine((ms) => ms <= MAX_TIMER_MS, {
  message: 'must be at most 24d: a timer cannot wait longer',
});

/** A size such as `512KiB`, `10MB` or a number of bytes; parsed to bytes. */
export const Size = z
  .union([z.number().int().nonnegative(), z.string()])
  .meta({ description: 'A size in bytes, or a string such as 64KiB, 10MB, 1GiB' })
  .transform((value, ctx) => {
    if (typeof value === 'number') return value;
    const bytes = parseSize(value);
    if (bytes === undefined) {
      ctx.addIssue({ code: 'custom', message: `invalid size "${value}" (expected e.g. 64KiB, 10MB, 1GiB)` });
      return z.NEVER;
    }
    return bytes;
  });

/** A rate such as `600/min` or `10/s`; parsed to events per second. */
export const Rate = z
  .string()
  .meta({ description: 'A rate such as 600/min, 10/s, 1000/h or 5000/d' })
  .transform((text, ctx) => {
    const r = parseRateParts(text);
    // At most one request per millisecond... per day: intervals a timer and a counter can represent.
    const interval = r === undefined ? Number.NaN : r.windowMs / r.count;
    if (r === undefined || !(interval >= 0.001 && interval <= 86_400_000)) {
      ctx.addIssue({
        code: 'custom',
        message: `invalid rate "${text}" (expected e.g. 600/min, 10/s; at most 1000000/s, at least 1/d)`,
      });
      return z.NEVER;
    }
    return r;
  });

/**
 * What a rate limit or quota counts per: `identity` (the verified subject; anonymous callers fall back to
 * the client address), `ip` (the effective client address; IPv6 per /64), `apiKey` (the API key id),
 * `claim:<path>` (a claim of the identity, dotted for nested claims), `header:<name>` (a request header).
 */
export const LimitKey = z
  .string()
  .meta({
    description: 'identity | ip | apiKey | claim:<path> | header:<name>',
    pattern: "^(identity|ip|apiKey|claim:.+|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+)$",
  })
  .refine(
    (k) =>
      k === 'identity' ||
      k === 'ip' ||
      k === 'apiKey' ||
      /^claim:\S+$/.test(k) ||
      /^header:[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(k),
    { message: 'expected identity, ip, apiKey, claim:<path> or header:<name>' },
  );

/**
 * An API key's expiry: an ISO date (the start of that day, UTC) or a date-time with seconds and an
 * offset. Days that do not exist (2027-02-30) are refused, where Date.parse would roll them over.
 */
export const ApiKeyExpires = z.union([z.iso.datetime({ offset: true }), z.iso.date()], {
  error: 'must be an ISO date such as 2027-01-01 or a date-time such as 2027-01-01T09:00:00Z',
});

/** A secret: a literal, `env:NAME` or `file:PATH` (relative to the config file; re-read on reload). */
export const SecretRef = z.string().min(1).meta({
  description: 'A literal value, env:NAME, or file:PATH (re-read on reload and when the file changes)',
});

const Name = z
  .string()
  .regex(
    /^[A-Za-z0-9][A-Za-z0-9_.-]*$/,
    'must start with a letter or digit and contain only letters, digits, _ . -',
  );

/** `host:port`, `[v6]:port` or `:port`. */
export const BindAddress = z.string().refine((s) => parseBind(s) !== undefined, {
  message: 'must be host:port, [ipv6]:port or :port with a port from 0 to 65535',
});

/** Splits a bind address into host and port; undefined when malformed. */
export function parseBind(text: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  const host = m[1] ?? (m[2] || '0.0.0.0');
  if (m[1] !== undefined && isIP(m[1]) !== 6) return undefined;
  return { host, port };
}

/** An IPv4 or IPv6 address or CIDR block. */
export const Cidr = z.string().refine(
  (s) => {
    const [addr, bits, ...rest] = s.split('/');
    if (rest.length > 0 || addr === undefined) return false;
    const family = isIP(addr);
    if (family === 0) return false;
    if (bits === undefined) return true;
    if (!/^\d{1,3}$/.test(bits)) return false;
    return Number(bits) <= (family === 4 ? 32 : 128);
  },
  { message: 'must be an IP address or CIDR block such as 10.0.0.0/8' },
);

const HttpMethod = z
  .string()
  .regex(/^[A-Z]+$/, 'must be an upper-case HTTP method such as GET')
  .meta({ description: 'HTTP method, upper case' });

const HeaderName = z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'must be a valid HTTP header name');

/**
 * A CORS origin as browsers send it in `Origin` (RFC 6454 §6.1): compared as text, so a trailing
 * slash, a path, a default port or a pattern would never match and is refused.
 */
const CorsOrigin = z
  .string()
  .refine(
    (o) => o === '*' || (!o.includes('*') && URL.canParse(o) && new URL(o).origin === o.toLowerCase()),
    {
      message:
        'must be "*" or an origin as browsers send it, such as https://app.example.com or http://localhost:3000 (no path, trailing slash, default port or wildcard)',
    },
  );

/** A header value the gateway sends: CR, LF and NUL would split or end the field (RFC 9110 §5.5). */
const HeaderValue = z
  .string()
  .refine((v) => !/[\r\n\0]/.test(v), { message: 'must not contain a line break or NUL (RFC 9110 §5.5)' });

// ---------------------------------------------------------------------------------------------
// Listeners

const TlsCertificate = z.strictObject({
  cert: SecretRef.meta({ description: 'PEM certificate chain (file:PATH or env:NAME)' }),
  key: SecretRef.meta({ description: 'PEM private key (file:PATH or env:NAME)' }),
});

const ListenerTls = z.strictObject({
  certificates: z
    .array(TlsCertificate)
    .min(1, 'at least one certificate is required')
    .meta({ description: 'Certificates; the one whose names match the SNI server name is chosen' }),
  minVersion: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
  maxVersion: z.enum(['TLSv1.2', 'TLSv1.3']).optional(),
  ciphers: z.string().optional().meta({ description: 'OpenSSL cipher list for TLS 1.2' }),
  http2: z.boolean().default(true).meta({ description: 'Offer HTTP/2 through ALPN' }),
  clientCertificate: z
    .strictObject({
      mode: z.enum(['request', 'require']),
      ca: SecretRef.meta({ description: 'PEM bundle of CAs trusted for client certificates' }),
    })
    .optional()
    .meta({ description: 'Downstream mTLS (identity from client certificates)' }),
});

const Listener = z.strictObject({
  name: Name,
  bind: BindAddress.meta({ description: 'host:port to listen on, e.g. 127.0.0.1:8080 or :443' }),
  tls: ListenerTls.optional(),
  forwardAuth: z.boolean().default(false).meta({
    description:
      'Serve GET /.gatehouse/auth here: decisions for nginx auth_request, Caddy forward_auth and Traefik forwardAuth in front (their address must be in server.trustedProxies)',
  }),
});

// ---------------------------------------------------------------------------------------------
// Server-wide limits and trust

const HTTP2_DEFAULTS = { maxConcurrentStreams: 100, maxResets: 100, resetWindow: 10_000 };

// Rapid reset (CVE-2023-44487): nginx advertises 128 streams, HAProxy 100; a client that keeps opening
// and cancelling streams is sent GOAWAY ENHANCE_YOUR_CALM.
const Http2Limits = z
  .strictObject({
    maxConcurrentStreams: z.number().int().min(1).max(1000).default(100).meta({
      description: 'SETTINGS_MAX_CONCURRENT_STREAMS advertised to HTTP/2 clients (streams per connection)',
    }),
    maxResets: z.number().int().min(1).default(100).meta({
      description:
        'Streams a client may cancel before their response started, per connection and resetWindow; beyond, GOAWAY ENHANCE_YOUR_CALM and close',
    }),
    resetWindow: PositiveTimerDuration.default(10_000).meta({
      description: 'The window maxResets counts in',
    }),
  })
  .default(HTTP2_DEFAULTS)
  .meta({ description: 'HTTP/2 limits of HTTPS listeners' });

const Server = z
  .strictObject({
    trustedProxies: z.array(Cidr).default([]).meta({
      description:
        'Proxies whose X-Forwarded-For is kept and extended (others are replaced) and whose other headers about the client (Forwarded, X-Real-IP, X-Forwarded-Port, ...) are kept (removed from other peers); behind them the client is the rightmost untrusted address in X-Forwarded-For',
    }),
    headersTimeout: PositiveTimerDuration.default(20_000).meta({
      description: 'Time a client has to send complete request headers (slowloris guard)',
    }),
    keepAliveTimeout: PositiveTimerDuration.default(65_000),
    maxHeaderSize: Size.default(16 * 1024).meta({
      description: 'Largest request header block accepted (431)',
    }),
    maxHeadersCount: z
      .number()
      .int()
      .positive()
      .default(100)
      .meta({
        description:
          'Most request header fields accepted (HTTP/1: 431 and the connection closed when a body would follow; ' +
          'HTTP/2: the stream is refused with ENHANCE_YOUR_CALM, as for a header list over maxHeaderSize)',
      }),
    maxBodySize: Size.optional().meta({ description: 'Default request body limit for every route (413)' }),
    drainTimeout: TimerDuration.default(30_000).meta({
      description: 'On SIGTERM, how long in-flight requests may take to finish',
    }),
    workers: z
      .union([z.literal('auto'), z.number().int().positive()])
      .default(1)
      .meta({ description: 'Processes per instance (auto = one per core)' }),
    pathParameters: z.enum(['strip', 'reject']).default('strip').meta({
      description:
        'What ";" path parameters become. strip: each segment\'s parameters (from ";" to the end of the segment) are removed before dot-segments are resolved, as Tomcat, Jetty and Spring do ("/admin;x" is "/admin", "/x/..;/admin" is "/admin"), and routes, policies and the upstream all see the stripped path; an encoded %3B stays a literal character. reject: any ";" in the path is refused with 400 GH_BAD_PATH',
    }),
    clientIdleTimeout: PositiveTimerDuration.default(60_000).meta({
      description:
        "Longest client silence while the gateway waits for request body data, or for the client to read a response it holds back (408 before the response, abort after); a route's timeouts.idle applies when shorter",
    }),
    tlsHandshakeTimeout: PositiveTimerDuration.default(10_000).meta({
      description: 'Time a client has to complete the TLS handshake on HTTPS listeners',
    }),
    http2: Http2Limits,
  })
  .default({
    trustedProxies: [],
    headersTimeout: 20_000,
    keepAliveTimeout: 65_000,
    maxHeaderSize: 16 * 1024,
    maxHeadersCount: 100,
    drainTimeout: 30_000,
    workers: 1,
    pathParameters: 'strip',
    clientIdleTimeout: 60_000,
    tlsHandshakeTimeout: 10_000,
    http2: HTTP2_DEFAULTS,
  });

const Admin = z.strictObject({
  bind: BindAddress.default('127.0.0.1:9900'),
  token: SecretRef.optional().meta({
    description: 'Bearer token required for /api/v1 (env:NAME recommended)',
  }),
});

const Spoe = z.strictObject({
  bind: BindAddress.meta({
    description: 'Address of the HAProxy SPOE agent (SPOP 2.0), e.g. 127.0.0.1:12345',
  }),
  maxFrameSize: z.number().int().min(256).max(65536).default(16380).meta({
    description: "Largest frame the agent accepts; negotiated down to HAProxy's (its default is 16380)",
  }),
  maxInFlightPerConnection: z.number().int().min(1).max(10000).default(64).meta({
    description: 'Requests decided at once on one agent connection before the agent stops reading it',
  }),
});

/** Query parameter names masked in the audit trail unless `audit.redactQuery` says otherwise. */
export const DEFAULT_REDACTED_QUERY = [
  'access_token',
  'id_token',
  'refresh_token',
  'token',
  'code',
  'state',
  'api_key',
  'apikey',
  'key',
  'password',
  'secret',
  'client_secret',
  'signature',
  'sig',
  'x-amz-signature',
  'x-goog-signature',
];

const SyslogAddress = z
  .string()
  .refine((s) => /^(udp|tcp):\/\/[^/]+:\d+$/.test(s) && parseBind(s.slice(6)) !== undefined, {
    message: 'must be udp://host:port or tcp://host:port',
  });

const Audit = z
  .strictObject({
    file: z.string().min(1).optional().meta({
      description: 'The audit trail file: one JSON line per event, hash-chained, with signed checkpoints',
    }),
    maxSize: Size.default(100 * 1024 * 1024).meta({
      description: 'Size at which the file is rotated (to FILE.1, FILE.2, ...); the chain continues',
    }),
    keep: z.number().int().min(0).max(1000).default(10).meta({ description: 'Rotated files kept' }),
    fsync: z.enum(['always', 'checkpoint', 'never']).default('checkpoint').meta({
      description:
        'always: fsync after every write batch; checkpoint: after every signed checkpoint; never: leave it to the OS',
    }),
    stdout: z.boolean().default(false).meta({ description: 'Also write every audit line to stdout' }),
    syslog: z
      .strictObject({
        address: SyslogAddress.meta({
          description: 'udp://host:port or tcp://host:port (RFC 5424 messages)',
        }),
        appName: z
          .string()
          .min(1)
          .max(48)
          .default('gatehouse')
          .meta({ description: 'APP-NAME of the messages' }),
        facility: z
          .number()
          .int()
          .min(0)
          .max(23)
          .default(13)
          .meta({ description: 'Syslog facility (13: log audit)' }),
      })
      .optional()
      .meta({ description: 'The same events as RFC 5424 messages (TCP with octet counting)' }),
    decisions: z.enum(['all', 'refused']).default('all').meta({
      description:
        'Which access decisions are recorded (refused: only refusals); every other event is always recorded',
    }),
    redactQuery: z.array(z.string().min(1)).default(DEFAULT_REDACTED_QUERY).meta({
      description: 'Query parameters whose values are masked in the trail (case-insensitive names)',
    }),
    checkpoint: z
      .strictObject({
        lines: z
          .number()
          .int()
          .min(1)
          .max(1_000_000)
          .default(1000)
          .meta({ description: 'Lines between checkpoints' }),
        interval: PositiveTimerDuration.default(60_000),
      })
      .default({ lines: 1000, interval: 60_000 })
      .meta({
        description: 'A signed checkpoint line every this many lines or this long, whichever comes first',
      }),
    signingKey: SecretRef.optional().meta({
      description:
        'Ed25519 private key (JWK or PEM) that signs checkpoints; without it a key is generated and kept in the state store',
    }),
    bufferLimit: z.number().int().min(100).max(10_000_000).default(10_000).meta({
      description: 'Events held per sink while it falls behind; the overflow is counted and recorded',
    }),
  })
  .refine((a) => a.file !== undefined || a.stdout || a.syslog !== undefined, {
    message: 'needs at least one of file, stdout or syslog',
  });

const State = z.strictObject({
  store: z
    .string()
    .refine((s) => s === 'memory' || /^rediss?:\/\//.test(s), 'must be "memory" or a redis:// URL')
    .default('memory'),
});

// ---------------------------------------------------------------------------------------------
// Identity

/** True for `localhost`, `*.localhost`, 127.0.0.0/8 and ::1 (also IPv4-mapped loopback). */
function isLoopbackHostname(hostname: string): boolean {
  const host = hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
  const lower = host.toLowerCase();
  if (lower === 'localhost' || lower.endsWith('.localhost')) return true;
  const family = isIP(lower);
  if (family === 4) return lower.startsWith('127.');
  if (family === 6) return lower === '::1' || lower === '::ffff:7f00:1' || lower.startsWith('::ffff:127.');
  return false;
}

/** An identity provider URL: `https:`, or `http:` on a loopback address only (development and tests). */
const IdpUrl = z.url().refine(
  (s) => {
    const u = URL.parse(s);
    // Not a URL at all: z.url() reports it.
    if (u === null) return true;
    return u.protocol === 'https:' || (u.protocol === 'http:' && isLoopbackHostname(u.hostname));
  },
  { message: 'must be an https:// URL (http:// is accepted only on loopback addresses)' },
);

const Identity = z.strictObject({
  session: z
    .strictObject({
      secrets: z
        .array(SecretRef)
        .min(1)
        .meta({ description: 'Cookie sealing secrets: the first seals, any of them unseals (rotation)' }),
      maxAge: PositiveDuration.default(12 * 3_600_000).meta({ description: 'Absolute session lifetime' }),
      idleTimeout: PositiveDuration.default(3_600_000).meta({
        description: 'Session ends after this long unused',
      }),
      cookie: z.string().default('_gatehouse').meta({ description: 'Session cookie name' }),
      domain: z.string().optional().meta({ description: 'Cookie Domain attribute (default: host-only)' }),
      signInHost: z.string().optional().meta({
        description:
          'Central sign-in host: the OIDC callback runs there and hands the session to other hosts',
      }),
    })
    .optional(),
  providers: z
    .array(
      z.strictObject({
        name: Name,
        type: z.literal('oidc'),
        issuer: IdpUrl,
        clientId: z.string().min(1),
        clientSecret: SecretRef.optional(),
        scopes: z.array(z.string()).default(['openid', 'email', 'profile']),
        groupsClaim: z.string().default('groups').meta({ description: 'Claim that lists the groups' }),
        displayName: z.string().optional().meta({ description: 'Shown on the login page' }),
      }),
    )
    .default([]),
  bearer: z
    .array(
      z.strictObject({
        issuer: IdpUrl,
        audiences: z.array(z.string()).min(1),
        jwksUri: IdpUrl.optional().meta({ description: 'Default: discovered from the issuer' }),
        algorithms: z
          .array(
            z.enum([
              'RS256',
              'RS384',
              'RS512',
              'PS256',
              'PS384',
              'PS512',
              'ES256',
              'ES384',
              'ES512',
              'EdDSA',
            ]),
          )
          .default(['RS256', 'ES256'])
          .meta({ description: 'Accepted signature algorithms (never none or HMAC)' }),
        groupsClaim: z.string().default('groups'),
        clockTolerance: Duration.default(30_000),
      }),
    )
    .default([]),
  apiKeys: z
    .array(
      z.strictObject({
        id: Name.max(64, 'must be at most 64 characters'),
        hash: z.string().regex(/^sha256:([0-9a-fA-F]{64}|<hex>)$/, 'must be sha256:<64 hex digits>'),
        subject: z.string().min(1),
        groups: z.array(z.string()).default([]),
        expires: ApiKeyExpires.optional().meta({
          description: 'ISO date or date-time after which the key is refused',
        }),
        routes: z.array(z.string()).optional().meta({ description: 'Route names the key may be used on' }),
      }),
    )
    .default([]),
  apiKeyHeader: HeaderName.default('X-Api-Key').meta({
    description: 'Header that may carry an API key (Authorization: Bearer works too)',
  }),
  assertion: z
    .strictObject({
      signingKey: SecretRef.optional().meta({
        description: 'Private JWK (file:PATH); default: generated and kept in the state store',
      }),
      ttl: PositiveDuration.default(300_000),
      algorithm: z.enum(['ES256', 'RS256', 'EdDSA']).default('ES256'),
      issuer: z.string().optional().meta({ description: 'iss claim (default: gatehouse)' }),
    })
    .optional(),
});

// ---------------------------------------------------------------------------------------------
// Upstreams

const UpstreamServer = z.strictObject({
  // A query, fragment or user:password@ would be dropped without a word: only the origin is used.
  url: z.string().refine((s) => /^https?:\/\/[^/?#@]+\/?$/.test(s) && URL.canParse(s), {
    message:
      'must be an http:// or https:// origin such as http://10.0.0.5:8080 (no path, query, fragment or user:password@; credentials go in inject.headers)',
  }),
  weight: z.number().int().min(0).max(1000).default(1),
  backup: z.boolean().default(false),
  maxConnections: z.number().int().positive().optional(),
});

const StatusList = z.array(z.number().int().min(100).max(599));

const HealthCheck = z.strictObject({
  path: z.string().startsWith('/').default('/'),
  method: z.enum(['GET', 'HEAD']).default('GET'),
  host: z.string().optional().meta({ description: 'Host header for the check (default: the server host)' }),
  interval: PositiveTimerDuration.default(5000),
  timeout: PositiveTimerDuration.default(2000),
  rise: z.number().int().positive().default(2),
  fall: z.number().int().positive().default(3),
  expectStatus: StatusList.optional().meta({ description: 'Healthy statuses (default: 200-399)' }),
});

const PassiveHealth = z.strictObject({
  failures: z.number().int().positive().default(5).meta({ description: 'Consecutive failures that eject' }),
  ejectFor: TimerDuration.default(30_000),
  maxEjectedPercent: z.number().min(0).max(100).default(50),
});

const RetryCondition = z.union([
  z.enum(['connect-error', 'timeout', 'reset']),
  z.number().int().min(500).max(599),
]);

const Upstream = z.strictObject({
  servers: z.array(UpstreamServer).min(1, 'an upstream needs at least one server'),
  balance: z.enum(['round-robin', 'least-conn', 'random-two', 'hash']).default('round-robin'),
  hash: z
    .strictObject({
      source: z.enum(['ip', 'header', 'cookie']),
      name: z.string().optional().meta({ description: 'Header or cookie name for source header/cookie' }),
    })
    .optional()
    .meta({ description: 'Key for balance: hash (default: client IP)' }),
  sticky: z
    .strictObject({
      cookie: z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'must be a valid cookie name'),
      maxAge: PositiveDuration.optional(),
      path: z.string().default('/'),
      secure: z.boolean().optional(),
    })
    .optional(),
  healthCheck: HealthCheck.optional(),
  passive: PassiveHealth.default({ failures: 5, ejectFor: 30_000, maxEjectedPercent: 50 }),
  slowStart: TimerDuration.default(0).meta({ description: 'Ramp-up time for a server that becomes healthy' }),
  dns: z
    .strictObject({ refresh: PositiveTimerDuration.default(30_000) })
    .default({ refresh: 30_000 })
    .meta({ description: 'Host names in server URLs are re-resolved this often; every address is used' }),
  timeouts: z
    .strictObject({
      connect: PositiveTimerDuration.default(5000),
      response: PositiveTimerDuration.default(600_000).meta({
        description: 'Until the response headers arrive',
      }),
      idle: PositiveTimerDuration.default(600_000).meta({
        description: 'Longest silence while streaming a body',
      }),
    })
    .default({ connect: 5000, response: 600_000, idle: 600_000 }),
  retries: z
    .strictObject({
      attempts: z.number().int().min(0).max(10).default(1),
      on: z.array(RetryCondition).default(['connect-error', 'reset']),
      backoff: TimerDuration.default(25),
      budget: z
        .number()
        .min(0)
        .max(1)
        .default(0.2)
        .meta({ description: 'Retries allowed as a fraction of recent requests (plus 10/s)' }),
    })
    .default({ attempts: 1, on: ['connect-error', 'reset'], backoff: 25, budget: 0.2 }),
  maxConnections: z
    .number()
    .int()
    .positive()
    .optional()
    .meta({ description: 'Concurrent requests per server (a server may override it)' }),
  queue: z
    .strictObject({ max: z.number().int().min(0).default(1000), timeout: TimerDuration.default(30_000) })
    .default({ max: 1000, timeout: 30_000 }),
  tls: z
    .strictObject({
      ca: SecretRef.optional().meta({ description: 'PEM bundle trusted for the servers' }),
      serverName: z.string().optional(),
      cert: SecretRef.optional().meta({ description: 'Client certificate for mTLS to the servers' }),
      key: SecretRef.optional(),
    })
    .optional(),
  inject: z
    .strictObject({
      headers: z
        .record(HeaderName, z.string())
        .default({})
        .meta({ description: 'Headers set on every request; ${env:NAME} and ${file:PATH} are expanded' }),
    })
    .optional(),
});

// ---------------------------------------------------------------------------------------------
// Policies

/** A time of day as HH:MM (24-hour clock), for policy `time` rules. */
const ClockTime = z
  .string()
  .regex(/^\d{2}:\d{2}$/, 'must be a time of day as HH:MM, e.g. 09:00 or 17:30 (to may be 24:00)')
  .meta({ description: 'Time of day, HH:MM (24-hour clock)' });

const Rule = z.strictObject({
  email: z.array(z.string()).optional(),
  domain: z.array(z.string()).optional(),
  user: z.array(z.string()).optional(),
  subject: z.array(z.string()).optional(),
  groups: z.array(z.string()).optional(),
  claim: z.record(z.string(), z.union([z.string(), z.number(), z.boolean(), z.array(z.string())])).optional(),
  authMethod: z.array(z.enum(['session', 'bearer', 'apiKey', 'mtls'])).optional(),
  sourceIp: z.array(Cidr).optional(),
  methods: z.array(HttpMethod).optional(),
  paths: z.array(z.string()).optional(),
  time: z
    .strictObject({
      days: z.array(z.enum(['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'])).optional(),
      from: ClockTime.optional(),
      to: ClockTime.optional(),
      timezone: z.string().optional(),
    })
    .optional(),
  name: z.string().optional(),
});

const Policy = z.strictObject({
  allow: z.array(Rule).default([]),
  deny: z.array(Rule).default([]),
});

// ---------------------------------------------------------------------------------------------
// Routes

const HeaderEdits = z.strictObject({
  set: z.record(HeaderName, HeaderValue).default({}),
  remove: z.array(HeaderName).default([]),
});

const Route = z.strictObject({
  name: Name,
  match: z
    .strictObject({
      host: z
        .union([z.string(), z.array(z.string()).min(1)])
        .optional()
        .meta({ description: 'Exact host or *.example.com; several allowed' }),
      path: z.string().startsWith('/').default('/').meta({
        description:
          'Path prefix of the normalized path, segment-aware and case-sensitive: /a and /a/ both match /a, /a/ and /a/x, never /ab. No ";", "?" or "#"',
      }),
      methods: z.array(HttpMethod).optional(),
      headers: z
        .record(HeaderName, z.string())
        .optional()
        .meta({ description: 'Headers that must be present with these exact values ("*" = present)' }),
    })
    .default({ path: '/' }),
  upstream: z.string().optional(),
  split: z
    .strictObject({
      targets: z
        .array(z.strictObject({ upstream: z.string(), weight: z.number().int().min(0).max(1000) }))
        .min(2, 'a split needs at least two targets'),
      pinHeader: HeaderName.optional().meta({
        description: 'Request header whose value names an upstream of the split to pin the request to',
      }),
    })
    .optional()
    .meta({ description: 'Weighted canary split between upstreams (instead of upstream)' }),
  policy: z.union([z.string(), Policy]).optional(),
  public: z.boolean().default(false),
  rateLimit: z
    .strictObject({
      key: LimitKey.default('identity'),
      rate: Rate,
      burst: z.number().int().positive().max(1_000_000).default(1).meta({
        description: 'Requests allowed at once (the bucket size); default 1: requests are paced at the rate',
      }),
      delay: TimerDuration.default(0).meta({
        description: 'Hold a request up to this long until it conforms, then answer 429 (0: at once)',
      }),
      maxDelayed: z.number().int().positive().default(1000).meta({
        description: 'Requests held at once per route and process; beyond, 429 at once',
      }),
      onStoreError: z.enum(['allow', 'deny']).default('allow').meta({
        description: 'When the state store cannot answer: allow (counted and logged) or deny (503)',
      }),
    })
    .optional(),
  identityHeaders: z
    .boolean()
    .default(false)
    .meta({ description: 'Send X-Gatehouse-User/-Email/-Groups upstream (the assertion is always sent)' }),
  providers: z
    .array(z.string())
    .optional()
    .meta({ description: 'OIDC providers offered for this route (default: all)' }),
  passCredentials: z.boolean().default(false).meta({
    description: "Forward the client's own Authorization header and session cookie to the upstream",
  }),
  cors: z
    .strictObject({
      origins: z.array(CorsOrigin).min(1).meta({ description: 'Allowed origins, or ["*"]' }),
      methods: z
        .array(HttpMethod)
        .default(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'])
        .meta({ description: 'Access-Control-Allow-Methods' }),
      headers: z
        .array(z.string())
        .default(['Authorization', 'Content-Type'])
        .meta({ description: 'Access-Control-Allow-Headers' }),
      credentials: z.boolean().default(false).meta({ description: 'Access-Control-Allow-Credentials' }),
      maxAge: Duration.default(600_000).meta({ description: 'How long browsers may cache the preflight' }),
    })
    .optional()
    .meta({ description: 'Answer CORS preflight requests for these origins without a login' }),
  websocket: z
    .union([
      z.boolean(),
      z.strictObject({
        idleTimeout: PositiveTimerDuration.default(3_600_000).meta({
          description: 'A tunnel with no data either way for this long is closed (default 1h)',
        }),
        finTimeout: PositiveTimerDuration.default(5_000).meta({
          description:
            'A tunnel one side has closed (FIN) is closed this long after, if the other side has not closed too (default 5s)',
        }),
      }),
    ])
    .default(false)
    .meta({ description: 'Allow WebSocket upgrades (true: idleTimeout 1h, finTimeout 5s)' }),
  maxBodySize: Size.optional().meta({ description: 'Request body limit (413)' }),
  timeouts: z
    .strictObject({ response: PositiveTimerDuration.optional(), idle: PositiveTimerDuration.optional() })
    .optional()
    .meta({ description: 'Override the upstream timeouts for this route' }),
  preserveHost: z
    .boolean()
    .default(true)
    .meta({ description: "Forward the client's Host header (false: use the server's host)" }),
  stripPrefix: z.boolean().default(false).meta({ description: 'Remove match.path from the forwarded path' }),
  methodOverride: z
    .boolean()
    .default(false)
    .meta({
      description:
        'Accept X-HTTP-Method-Override, X-HTTP-Method and X-Method-Override on a POST and forward them (else they are removed). ' +
        'The request is first routed with POST; when that route opts in, it is routed again with the overriding method, ' +
        'which must reach a route that opts in too, and that method is what match.methods, policy methods rules, ' +
        'the TRACE/CONNECT refusal and the access log see. Only a POST may carry an override (400 otherwise), never to HEAD.',
    }),
  trace: z
    .boolean()
    .default(false)
    .meta({
      description:
        'Forward TRACE requests (refused with 405 by default, as CONNECT always is). They are forwarded without ' +
        "injected credentials, header values the route sets, identity headers, the assertion or the client's " +
        'Authorization, Cookie and API key headers',
    }),
  headers: z.strictObject({ request: HeaderEdits.optional(), response: HeaderEdits.optional() }).optional(),
});

// ---------------------------------------------------------------------------------------------
// Quotas

/** `1h`, `1d`, `30d` (windows aligned to the time zone's midnight), or `month` (calendar months). */
const QuotaWindow = z
  .string()
  .meta({ description: 'A duration such as 1h, 1d or 30d, or month (calendar months)' })
  .transform((text, ctx): number | 'month' => {
    if (text === 'month') return 'month';
    const ms = parseDuration(text);
    if (ms === undefined || ms < 60_000 || ms > 366 * 86_400_000) {
      ctx.addIssue({
        code: 'custom',
        message: `invalid quota window "${text}" (expected a duration from 1m to 366d such as 1h, 1d, 30d, or month)`,
      });
      return z.NEVER;
    }
    return ms;
  });

const Quota = z.strictObject({
  key: LimitKey.default('identity'),
  limit: z.number().positive().meta({ description: 'Cost units allowed per window' }),
  window: QuotaWindow,
  timeZone: z
    .string()
    .default('UTC')
    .meta({ description: 'IANA time zone the windows are aligned to (midnight, the first of the month)' }),
  routes: z
    .array(z.string())
    .optional()
    .meta({ description: 'Routes the quota applies to (default: every route)' }),
  when: Rule.optional().meta({
    description: 'Only callers matching this policy rule are counted (groups, authMethod, ...)',
  }),
  cost: z
    .union([
      z.number().nonnegative(),
      z.string().regex(/^header:[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'expected a number or header:<name>'),
    ])
    .default(1)
    .meta({
      description:
        'Units per request, or header:<name>: the upstream reports the cost in a response header, charged after the response',
    }),
  onStoreError: z.enum(['allow', 'deny']).default('deny').meta({
    description: 'When the state store cannot answer: deny (503, the default) or allow (counted and logged)',
  }),
});

// ---------------------------------------------------------------------------------------------
// Policy tests (run by `gatehouse check`)

const ConfigTest = z.strictObject({
  name: z.string().min(1),
  as: z.record(z.string(), z.unknown()).optional(),
  request: z.strictObject({
    method: HttpMethod.default('GET'),
    url: z.url(),
    headers: z.record(z.string(), z.string()).optional(),
    sourceIp: z.string().optional(),
  }),
  expect: z.union([z.enum(['allow', 'deny', 'login']), z.number().int().min(100).max(599)]),
  after: z.number().int().nonnegative().max(100_000).optional().meta({
    description:
      'Requests of the same caller sent at once before this one (rate limits and quotas apply), e.g. expect: 429 after: 10',
  }),
});

// ---------------------------------------------------------------------------------------------
// Tracing (OpenTelemetry, OTLP over HTTP)

const Tracing = z.strictObject({
  // Credentials in the URL would end up in logs: they go in headers, as for upstreams.
  endpoint: z
    .string()
    .refine((s) => /^https?:\/\/[^/?#@]+(\/[^#@]*)?$/.test(s) && URL.canParse(s), {
      message:
        'must be an http:// or https:// URL such as http://127.0.0.1:4318/v1/traces (no fragment or user:password@; credentials go in headers)',
    })
    .default('http://127.0.0.1:4318/v1/traces')
    .meta({ description: 'OTLP/HTTP traces URL of the collector (spans are sent as JSON)' }),
  serviceName: z.string().min(1).default('gatehouse').meta({ description: 'service.name of the spans' }),
  sampler: z
    .strictObject({
      ratio: z.number().min(0).max(1).default(1).meta({
        description: 'Share of the traces started here that are recorded and exported (0: none, 1: all)',
      }),
      parentBased: z.boolean().default(true).meta({
        description:
          "Follow the sampled flag of a trusted caller's traceparent instead of the ratio (the ratio still applies to traces started here)",
      }),
    })
    .default({ ratio: 1, parentBased: true })
    .meta({ description: 'Which traces are recorded and exported' }),
  headers: z.record(HeaderName, z.string()).default({}).meta({
    description:
      'Headers sent with every export (e.g. Authorization); env:NAME, file:PATH, ${env:NAME} and ${file:PATH} are expanded',
  }),
  exportTimeout: PositiveTimerDuration.default(10_000).meta({
    description: 'An export not answered in this time is given up (its spans are dropped)',
  }),
});

// ---------------------------------------------------------------------------------------------

/** The whole configuration file, after includes are merged. */
export const ConfigSchema = z.strictObject({
  include: z.array(z.string()).optional().meta({ description: 'Further YAML files merged into this one' }),
  listeners: z.array(Listener).min(1, 'at least one listener is required'),
  server: Server,
  admin: Admin.optional(),
  spoe: Spoe.optional().meta({ description: 'Decisions for an HAProxy in front: the SPOE agent' }),
  state: State.default({ store: 'memory' }),
  audit: Audit.optional().meta({ description: 'The tamper-evident audit trail' }),
  identity: Identity.optional(),
  upstreams: z.record(Name, Upstream).default({}),
  policies: z.record(Name, Policy).default({}),
  quotas: z
    .record(Name, Quota)
    .default({})
    .meta({ description: 'Budgets per key over a window, shared through the state store' }),
  routes: z.array(Route).default([]),
  tests: z.array(ConfigTest).default([]),
  logging: z
    .strictObject({
      level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
      access: z.boolean().default(true).meta({ description: 'Write one JSON access-log line per request' }),
    })
    .default({ level: 'info', access: true }),
  tracing: Tracing.optional().meta({
    description:
      'OpenTelemetry tracing: spans exported over OTLP/HTTP, W3C traceparent passed upstream (off when absent)',
  }),
});

/** The validated configuration: durations in ms, sizes in bytes, defaults filled in. */
export type Config = z.output<typeof ConfigSchema>;
export type ListenerConfig = z.output<typeof Listener>;
export type SpoeConfig = z.output<typeof Spoe>;
export type AuditConfig = z.output<typeof Audit>;
export type UpstreamConfig = z.output<typeof Upstream>;
export type UpstreamServerConfig = z.output<typeof UpstreamServer>;
export type RouteConfig = z.output<typeof Route>;
export type PolicyConfig = z.output<typeof Policy>;
export type QuotaConfig = z.output<typeof Quota>;
export type RateLimitConfig = NonNullable<RouteConfig['rateLimit']>;
export type HealthCheckConfig = z.output<typeof HealthCheck>;
export type ServerConfig = z.output<typeof Server>;
/** The validated `tracing` section. */
export type TracingConfig = z.output<typeof Tracing>;

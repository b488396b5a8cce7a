/**
 * OpenTelemetry tracing of the built-in proxy (`tracing` in the config; off when absent). One trace per
 * request, exported in batches over OTLP/HTTP (JSON) by the SDK; nothing here waits for an export:
 *
 *   GET airbyte-api                 server span, from the request's start until its response closes
 *   ├── gatehouse.access            the access decision: route, outcome, reason, rule, subject, auth method
 *   ├── GET airbyte (attempt 1)     client span per upstream attempt: server, attempt number, status or error
 *   └── GET airbyte (attempt 2)     a retry is a second attempt span
 *
 * The upstream receives a W3C `traceparent` whose parent is the span of the attempt that carries it.
 * A caller's `traceparent`/`tracestate` are continued only from peers in `server.trustedProxies`;
 * anyone else's are ignored and replaced (see `Tracing.startRequest`). The module knows no proxy,
 * upstream or identity type: the data plane hands it plain facts (see `DecisionFacts`, `ExchangeFacts`).
 */
import type { IncomingHttpHeaders } from 'node:http';
import {
  type Attributes,
  type Context,
  defaultTextMapGetter,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  type TextMapSetter,
  type Tracer,
  trace,
} from '@opentelemetry/api';
import { type ExportResult, ExportResultCode, W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { defaultResource, resourceFromAttributes } from '@opentelemetry/resources';
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  ParentBasedSampler,
  type ReadableSpan,
  type Sampler,
  type SpanExporter,
  TraceIdRatioBasedSampler,
} from '@opentelemetry/sdk-trace-base';
import {
  ATTR_CLIENT_ADDRESS,
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_REQUEST_RESEND_COUNT,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_HTTP_ROUTE,
  ATTR_NETWORK_PEER_ADDRESS,
  ATTR_NETWORK_PROTOCOL_VERSION,
  ATTR_SERVER_ADDRESS,
  ATTR_SERVER_PORT,
  ATTR_SERVICE_NAME,
  ATTR_URL_PATH,
  ATTR_URL_SCHEME,
} from '@opentelemetry/semantic-conventions';
import type { TracingConfig } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import type { Logger } from './log.js';

/** Name of the access-decision span. */
export const DECISION_SPAN = 'gatehouse.access';

/** The `tracing` settings with secret references in `headers` resolved. */
export interface TracingSettings {
  readonly endpoint: string;
  readonly serviceName: string;
  readonly ratio: number;
  readonly parentBased: boolean;
  readonly headers: Readonly<Record<string, string>>;
  readonly exportTimeoutMs: number;
}

/**
 * Resolves the `tracing` section: header values are expanded with `expand` (`env:NAME`, `file:PATH`,
 * `${env:NAME}`), as upstream `inject.headers` are. A value that cannot be resolved, or that holds a
 * line break, is a `ConfigError` at `tracing.headers.<name>`.
 */
export function tracingSettings(
  config: TracingConfig,
  expand: (text: string) => string,
  file: string,
): TracingSettings {
  const headers: Record<string, string> = {};
  for (const [name, template] of Object.entries(config.headers)) {
    const path = `tracing.headers.${name}`;
    let value: string;
    try {
      value = expand(template).trim();
    } catch (err) {
      throw new ConfigError([{ file, path, message: (err as Error).message }]);
    }
    if (/[\r\n\0]/.test(value))
      throw new ConfigError([{ file, path, message: 'expanded value contains a line break or NUL' }]);
    headers[name] = value;
  }
  return {
    endpoint: config.endpoint,
    serviceName: config.serviceName,
    ratio: config.sampler.ratio,
    parentBased: config.sampler.parentBased,
    headers,
    exportTimeoutMs: config.exportTimeout,
  };
}

/** True when two settings would build the same exporter and sampler (a reload then keeps the tracer). */
export function sameSettings(a: TracingSettings, b: TracingSettings): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Passes exports on and logs when they start and stop failing (once per streak, not per batch): the
 * SDK drops the spans of a failed export, and an operator should learn that from the log.
 */
class LoggingExporter implements SpanExporter {
  readonly #inner: SpanExporter;
  readonly #logger: Logger;
  readonly #endpoint: string;
  #failing = false;

  constructor(inner: SpanExporter, logger: Logger, endpoint: string) {
    this.#inner = inner;
    this.#logger = logger;
    this.#endpoint = endpoint;
  }

  export(spans: ReadableSpan[], done: (result: ExportResult) => void): void {
    this.#inner.export(spans, (result) => {
      if (result.code !== ExportResultCode.SUCCESS) {
        if (!this.#failing)
          this.#logger.warn(
            { endpoint: this.#endpoint, err: result.error, spans: spans.length },
            'trace export failed: spans dropped until the collector answers',
          );
        this.#failing = true;
      } else if (this.#failing) {
        this.#failing = false;
        this.#logger.info({ endpoint: this.#endpoint }, 'trace export works again');
      }
      done(result);
    });
  }

  shutdown(): Promise<void> {
    return this.#inner.shutdown();
  }

  forceFlush(): Promise<void> {
    return this.#inner.forceFlush?.() ?? Promise.resolve();
  }
}

/** Appends propagation fields to flat `[name, value, ...]` upstream headers. */
const FLAT_SETTER: TextMapSetter<string[]> = {
  set(carrier, key, value) {
    carrier.push(key, value);
  },
};

const propagator = new W3CTraceContextPropagator();

/** What the decision span reads of the request once the access stage has answered. */
export interface DecisionFacts {
  readonly route: { readonly name: string } | undefined;
  readonly access:
    | {
        readonly decision: {
          readonly outcome: string;
          readonly reason: string;
          readonly rule: string | undefined;
          readonly identity: { readonly subject: string; readonly authMethod: string } | undefined;
        };
      }
    | undefined;
  readonly errorCode: string | undefined;
}

/** What the server span reads of the request when its response has closed. */
export interface ExchangeFacts extends DecisionFacts {
  readonly method: string;
  readonly path: string;
  readonly host: string;
  readonly requestId: string;
  readonly status: number;
}

/** The server an upstream attempt goes to (the upstream's server fits). */
export interface AttemptServer {
  /** The server's stable id. */
  readonly id: string;
  /** The origin connected to, e.g. `http://10.0.0.5:9001`. */
  readonly origin: string;
}

const addressCache = new Map<string, { address: string; port: number }>();

/** Host and port of an origin, parsed once per origin. */
function addressOf(origin: string): { address: string; port: number } {
  let a = addressCache.get(origin);
  if (a === undefined) {
    const u = new URL(origin);
    const host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname;
    a = { address: host, port: Number(u.port) || (u.protocol === 'https:' ? 443 : 80) };
    // Origins come from the configuration (and DNS), so the cache stays small; bound it all the same.
    if (addressCache.size > 10_000) addressCache.clear();
    addressCache.set(origin, a);
  }
  return a;
}

/** Request facts known when the server span starts. */
export interface RequestStart {
  readonly method: string;
  /** The effective client address (X-Forwarded-For from a trusted peer). */
  readonly clientIp: string;
  /** The address that connected. */
  readonly peerIp: string;
  /** The peer is in `server.trustedProxies`: its `traceparent`/`tracestate` are continued. */
  readonly peerTrusted: boolean;
  readonly headers: IncomingHttpHeaders;
  readonly tls: boolean;
  /** `1.1`, `2`, ... */
  readonly httpVersion: string;
}

/**
 * The tracer of one `tracing` configuration: its provider, batch processor and OTLP exporter. A reload
 * that keeps the settings keeps the instance; one that changes them builds another, and the old one is
 * flushed and shut down once the requests that may still end spans on it are done.
 */
export class Tracing {
  /** The settings this instance was built from. */
  readonly settings: TracingSettings;
  readonly #provider: BasicTracerProvider;
  readonly #tracer: Tracer;
  #closed: Promise<void> | undefined;

  constructor(settings: TracingSettings, logger: Logger) {
    this.settings = settings;
    const ratio = new TraceIdRatioBasedSampler(settings.ratio);
    const sampler: Sampler = settings.parentBased ? new ParentBasedSampler({ root: ratio }) : ratio;
    const exporter = new OTLPTraceExporter({
      url: settings.endpoint,
      headers: { ...settings.headers },
      timeoutMillis: settings.exportTimeoutMs,
    });
    this.#provider = new BasicTracerProvider({
      sampler,
      resource: defaultResource().merge(
        resourceFromAttributes({ [ATTR_SERVICE_NAME]: settings.serviceName }),
      ),
      spanProcessors: [
        // A full queue drops spans (the SDK's rule): the data plane never waits for the collector.
        new BatchSpanProcessor(new LoggingExporter(exporter, logger, settings.endpoint), {
          exportTimeoutMillis: settings.exportTimeoutMs,
        }),
      ],
    });
    this.#tracer = this.#provider.getTracer('gatehouse');
  }

  /**
   * Starts the server span of a request. A `traceparent` (and `tracestate`) is continued only from a
   * trusted peer: a client outside `server.trustedProxies` must not choose trace ids, or it could
   * attach its requests to someone else's trace, collide ids on purpose, or force sampling (and so
   * export cost) with the sampled flag. Its fields are ignored and a new trace starts here.
   */
  startRequest(r: RequestStart): RequestTrace {
    const parent =
      r.peerTrusted && r.headers.traceparent !== undefined
        ? propagator.extract(ROOT_CONTEXT, r.headers, defaultTextMapGetter)
        : ROOT_CONTEXT;
    const attributes: Attributes = {
      [ATTR_HTTP_REQUEST_METHOD]: r.method,
      [ATTR_CLIENT_ADDRESS]: r.clientIp,
      [ATTR_NETWORK_PEER_ADDRESS]: r.peerIp,
      [ATTR_URL_SCHEME]: r.tls ? 'https' : 'http',
      [ATTR_NETWORK_PROTOCOL_VERSION]: r.httpVersion,
    };
    const span = this.#tracer.startSpan(r.method, { kind: SpanKind.SERVER, attributes }, parent);
    return new RequestTrace(this.#tracer, span, trace.setSpan(parent, span));
  }

  /**
   * Exports every span ended so far, bounded by the export timeout. Never rejects: a failed export
   * was logged by the exporter and its spans are dropped.
   */
  flush(): Promise<void> {
    return this.#provider.forceFlush({ timeoutMillis: this.settings.exportTimeoutMs }).catch(ignore);
  }

  /** Flushes and stops the exporter; later spans are dropped. Idempotent; never rejects (see `flush`). */
  shutdown(): Promise<void> {
    this.#closed ??= this.#provider.shutdown().catch(ignore);
    return this.#closed;
  }
}

/**
 * The spans of one request. The data plane calls, in order: `beginDecision`/`endDecision` around the
 * access stage, `forward` once the upstream headers are built, `startAttempt` per attempt with
 * `attemptStatus` and `endAttempt`, and `end` when the response closes (which ends whatever is open).
 */
export class RequestTrace {
  readonly #tracer: Tracer;
  /** The server span. */
  readonly span: Span;
  readonly #ctx: Context;
  #decision: Span | undefined;
  #attempt: Span | undefined;
  /** Length of the upstream headers before the propagation fields (see `forward`). */
  #base = -1;
  #ended = false;

  constructor(tracer: Tracer, span: Span, ctx: Context) {
    this.#tracer = tracer;
    this.span = span;
    this.#ctx = ctx;
  }

  /** The access stage starts. */
  beginDecision(): void {
    this.#decision = this.#tracer.startSpan(DECISION_SPAN, { kind: SpanKind.INTERNAL }, this.#ctx);
  }

  /** The access stage returned `admitted`; the span ends now, or when the promise settles. */
  endDecision(facts: DecisionFacts, admitted: boolean | Promise<boolean>): void {
    if (typeof admitted === 'boolean') this.#decided(facts, undefined);
    else
      admitted.then(
        () => this.#decided(facts, undefined),
        (err: unknown) => this.#decided(facts, (err as { code?: unknown }).code),
      );
  }

  #decided(facts: DecisionFacts, failure: unknown): void {
    const span = this.#decision;
    if (span === undefined) return;
    this.#decision = undefined;
    if (span.isRecording()) {
      if (facts.route !== undefined) span.setAttribute('gatehouse.route', facts.route.name);
      const d = facts.access?.decision;
      if (d !== undefined) {
        span.setAttribute('gatehouse.decision', d.outcome);
        span.setAttribute('gatehouse.decision.reason', d.reason);
        if (d.rule !== undefined) span.setAttribute('gatehouse.decision.rule', d.rule);
        if (d.identity !== undefined) {
          // enduser.id: the semantic conventions' name for the authenticated caller.
          span.setAttribute('enduser.id', d.identity.subject);
          span.setAttribute('gatehouse.auth.method', d.identity.authMethod);
        }
      }
      const code = typeof failure === 'string' ? failure : failure !== undefined ? 'error' : undefined;
      if (code !== undefined) fail(span, code);
    }
    span.end();
  }

  /**
   * The upstream headers (flat pairs) are built: the caller's `traceparent`/`tracestate` are taken out,
   * since each attempt sends its own (`startAttempt` appends them after this point).
   */
  forward(headers: string[]): void {
    for (let i = headers.length - 2; i >= 0; i -= 2) {
      const name = headers[i]!;
      if (name.length === 11 || name.length === 10) {
        const lower = name.toLowerCase();
        if (lower === 'traceparent' || lower === 'tracestate') headers.splice(i, 2);
      }
    }
    this.#base = headers.length;
  }

  /**
   * An attempt is sent to `server` of `upstream` (`attempt` counts from 1): its client span starts, and
   * `headers` get the `traceparent` naming it as parent (plus the trusted caller's `tracestate`, if any).
   */
  startAttempt(
    headers: string[],
    method: string,
    upstream: string,
    server: AttemptServer,
    attempt: number,
  ): void {
    this.endAttempt(undefined);
    const { address, port } = addressOf(server.origin);
    const attributes: Attributes = {
      [ATTR_HTTP_REQUEST_METHOD]: method,
      [ATTR_SERVER_ADDRESS]: address,
      [ATTR_SERVER_PORT]: port,
      'gatehouse.upstream': upstream,
      'gatehouse.upstream.server': server.id,
      'gatehouse.attempt': attempt,
    };
    if (attempt > 1) attributes[ATTR_HTTP_REQUEST_RESEND_COUNT] = attempt - 1;
    const span = this.#tracer.startSpan(
      `${method} ${upstream}`,
      { kind: SpanKind.CLIENT, attributes },
      this.#ctx,
    );
    this.#attempt = span;
    if (this.#base >= 0) {
      // The fields of the previous attempt sit past #base: replace them.
      headers.length = this.#base;
      propagator.inject(trace.setSpan(this.#ctx, span), headers, FLAT_SETTER);
    }
  }

  /** The current attempt got its final response head. */
  attemptStatus(status: number): void {
    const span = this.#attempt;
    if (span === undefined || !span.isRecording()) return;
    span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status);
    // A client span marks 4xx and 5xx answers as errors (OpenTelemetry HTTP semantic conventions).
    if (status >= 400) fail(span, String(status));
  }

  /** The current attempt is over; `errorCode` says why it failed, undefined when it did not. */
  endAttempt(errorCode: string | undefined): void {
    const span = this.#attempt;
    if (span === undefined) return;
    this.#attempt = undefined;
    if (errorCode !== undefined && span.isRecording()) fail(span, errorCode);
    span.end();
  }

  /** The response closed: open spans end (with the request's error code), then the server span. */
  end(facts: ExchangeFacts): void {
    if (this.#ended) return;
    this.#ended = true;
    const code = facts.errorCode;
    if (this.#decision !== undefined) this.#decided(facts, code ?? 'error');
    this.endAttempt(code);
    const span = this.span;
    if (span.isRecording()) {
      const route = facts.route?.name;
      if (route !== undefined) {
        span.setAttribute(ATTR_HTTP_ROUTE, route);
        span.updateName(`${facts.method} ${route}`);
      }
      if (facts.path !== '') span.setAttribute(ATTR_URL_PATH, facts.path);
      if (facts.host !== '') span.setAttribute(ATTR_SERVER_ADDRESS, facts.host);
      span.setAttribute('gatehouse.request_id', facts.requestId);
      span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, facts.status);
      if (code !== undefined) span.setAttribute(ATTR_ERROR_TYPE, code);
      // A server span is an error on a 5xx (OpenTelemetry HTTP semantic conventions) and, here, when
      // the client went away before its answer was complete (499 in the access log).
      if (facts.status >= 500 || facts.status === 499)
        span.setStatus({ code: SpanStatusCode.ERROR, message: code });
    }
    span.end();
  }
}

function ignore(): void {}

function fail(span: Span, code: string): void {
  span.setAttribute(ATTR_ERROR_TYPE, code);
  span.setStatus({ code: SpanStatusCode.ERROR, message: code });
}

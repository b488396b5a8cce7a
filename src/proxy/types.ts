/**
 * Shapes shared by the data-plane files. HTTP/2 compatibility requests and responses
 * (`Http2ServerRequest`/`Http2ServerResponse`) mirror the HTTP/1 API used here and are passed as these.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

/** A client request, HTTP/1.1 or HTTP/2 (compatibility API). */
export type ProxyRequest = IncomingMessage;

/** A client response, HTTP/1.1 or HTTP/2 (compatibility API). */
export type ProxyResponse = ServerResponse;

/** Facts about the listener a request arrived on. */
export interface ListenerInfo {
  readonly name: string;
  readonly tls: boolean;
}

/**
 * Shapes shared by the data-plane files. HTTP/2 compatibility requests and responses
 * (`Http2ServerRequest`/`Http2ServerResponse`) mirror the HTTP/1 API used here and are passed as these.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { AccessEntry, Logger } from '../observe/log.js';

/** A client request, HTTP/1.1 or HTTP/2 (compatibility API). */
export type ProxyRequest = IncomingMessage;

/** A client response, HTTP/1.1 or HTTP/2 (compatibility API). */
export type ProxyResponse = ServerResponse;

/** Facts about the listener a request arrived on. */
export interface ListenerInfo {
  readonly name: string;
  readonly tls: boolean;
}

/** An open (or opening) WebSocket tunnel, tracked so that shutdown can wait for it and then close it. */
export interface Tunnel {
  readonly client: Duplex;
  upstream: Duplex | undefined;
  destroy(): void;
}

/** What the paths of the request handler (`ProxyHandler`) share of it: the WebSocket path needs no more. */
export interface ProxyContext {
  readonly logger: Logger;
  readonly accessLog: ((entry: AccessEntry) => void) | undefined;
  /** Open WebSocket tunnels, given until the drain deadline on close. */
  readonly tunnels: Set<Tunnel>;
}

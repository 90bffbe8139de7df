/**
 * The vocabulary of sluice's upstream client, shared by its modules and its callers: where to
 * send a request ({@link UpstreamTarget}), what to send ({@link UpstreamRequest}), what comes
 * back ({@link UpstreamResponse}, {@link UpstreamConn} after a 101), and how it fails
 * ({@link UpstreamError}). Its own module so that the connection, head, body and pool modules
 * can name these without importing the client that uses them all. Callers import them through
 * client.ts, which re-exports them.
 *
 * @module
 */

/** Where to send a request. */
export type UpstreamTarget = {
  /** Name for SNI, certificate verification and the default Host header. */
  host: string;
  port: number;
  /** IP address to connect to, already checked against the policy by the caller. */
  address: string;
  tls: boolean;
  /** PEM CA certificates to trust; when absent, Deno's default roots. */
  caCerts?: string[];
  /** false: skip certificate verification entirely (through node:tls; slower). */
  verify: boolean;
  /**
   * A client certificate to present (a `client_cert` credential scoped to this host): the PEM
   * chain, the key (revealed only to the TLS client), and an id that keeps connections made
   * with it apart in the pool. Through node:tls (Deno's `startTls` takes no client
   * certificate), HTTP/1.1 only.
   */
  clientCert?: { cert: string; key: { reveal(): string }; id: string };
};

/** What to send. */
export type UpstreamRequest = {
  method: string;
  /** origin-form request-target, query included. */
  path: string;
  /**
   * End-to-end header fields (latin1 byte strings). Host is added when missing; any
   * Content-Length / Transfer-Encoding given here is replaced by the framing of `body`.
   * `Connection: close` is honoured (the connection is not reused); `Connection: upgrade`
   * with `Upgrade` asks for a protocol switch (see {@link UpstreamResponse.upgrade}).
   */
  headers: [string, string][];
  body: ReadableStream<Uint8Array> | Uint8Array | null;
  /** Known length of a stream body: sent as Content-Length and enforced exactly. */
  bodyLength?: number;
  /**
   * Offer HTTP/2 to the upstream (the client spoke HTTP/2): the TLS handshake offers `h2` and
   * `http/1.1`, and the request goes over whichever the upstream picks. Without it only an
   * upstream that refuses HTTP/1.1 gets HTTP/2.
   */
  http2?: boolean;
};

/** A connection handed over after `101 Switching Protocols`; the caller owns and closes it. */
export type UpstreamConn = {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  close(): void;
  closeWrite?(): Promise<void>;
};

/** The response, head parsed, body streaming. */
export type UpstreamResponse = {
  status: number;
  reason: string;
  /** As received, hop-by-hop fields removed (for a 101, Connection and Upgrade are kept). */
  headers: [string, string][];
  /** De-chunked, never decompressed; null when the response has no body (HEAD, 204, 304, 101). */
  body: ReadableStream<Uint8Array> | null;
  /**
   * The whole body, when it was complete in the bytes already read with the head (a small
   * Content-Length response, the common case on keep-alive APIs). Then `body` only replays
   * it, and the caller may answer with these bytes directly: one write, no stream machinery.
   */
  whole?: Uint8Array<ArrayBuffer>;
  /** Bytes read from the upstream for this exchange so far (head, framing and body). */
  bytesIn(): number;
  /** Set for a 101 response: the raw connection and the bytes already read past the head. */
  upgrade?: { conn: UpstreamConn; head: Uint8Array };
  /** HTTP/2 upstreams: the trailers, known when the body has ended ([] for none). */
  trailers?: Promise<[string, string][]>;
};

/** What failed, for the caller's status code and log line. */
export type UpstreamErrorKind = "connect" | "tls" | "timeout" | "protocol" | "reset";

/** A failed upstream exchange; `message` says what failed and where (host:port). */
export class UpstreamError extends Error {
  /** What failed: connect, tls (handshake or verification), timeout, protocol, reset. */
  readonly kind: UpstreamErrorKind;
  /**
   * @param kind what failed
   * @param message what failed and where
   * @param options the underlying error
   */
  constructor(kind: UpstreamErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "UpstreamError";
    this.kind = kind;
  }
}

/**
 * What a caught error says, for the message of an {@link UpstreamError} that wraps it.
 *
 * @param e anything thrown
 * @returns its message, or its string form
 */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

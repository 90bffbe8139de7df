/**
 * The only place sluice touches undocumented Deno internals: per-handshake certificate selection
 * for a TLS listener, and the native HTTP server run on one already-accepted connection.
 *
 * Both are internal to Deno 2.9.6 and may change in any upgrade. Call
 * {@link assertInternalsAvailable} at startup so a changed runtime fails with a clear message
 * instead of misbehaving, and keep test/lib/deno_internal_test.ts green: it pins the behaviour
 * the data path relies on.
 *
 * Facts measured on Deno 2.9.6 (test/lib/deno_internal_test.ts checks each of them):
 * - `Deno.listenTls` with a resolver under {@link SNI_RESOLVER} needs NO default `cert`/`key`;
 *   the resolver is the only source of certificates.
 * - The resolver runs once per handshake, when the server first reads from the connection (not
 *   on `accept()`). It may return a Promise. A client that sends no SNI (for example curl to an
 *   IP address) makes it receive the empty string `""`, not undefined.
 * - Deno caches the resolver's outcome per server name for the listener's whole life, in an
 *   unbounded map, failures included: the resolver runs once per distinct name, a name that
 *   failed once fails forever, and a certificate is never re-asked for (so it must outlive the
 *   listener, or the listener must be replaced to rotate certificates or bound the memory that
 *   client-chosen names use).
 * - Throwing (or rejecting) in the resolver aborts that one handshake: the client gets a TLS
 *   alert, and the serve call's `finished` rejects with
 *   `Http: InvalidData: Failed: <your message>`. Plain-text garbage rejects it with
 *   `Http: InvalidData: received corrupt message of type InvalidContentType`, a client that
 *   hangs up early with `Http: ConnectionReset: connection reset`.
 * - `Deno[Deno.internal].serveHttpOnListener(listener, signal, handler, onError, onListen)`:
 *   `onListen` is called synchronously with the scheme ("https://" for a TlsListener); it returns
 *   `{ addr, finished, shutdown, ref, unref }` and accepts in native code. It serves HTTP/1.1
 *   and, when ALPN selected "h2", HTTP/2 (the listener needs `alpnProtocols: ["h2",
 *   "http/1.1"]`). `onError` answers a request whose handler threw. A failed handshake (a
 *   throwing resolver, plain-text bytes, a reset) ends that connection only and is not reported.
 *   `shutdown()` stops accepting, closes idle keep-alive connections at once and lets in-flight
 *   requests finish.
 * - Why the listener form and not `serveHttpOnConnection` (one accepted connection): that one
 *   finishes as soon as its connection has no next request, and after a WebSocket upgrade that
 *   is at once: the upgraded socket is closed with code 1005 right after the 101. It also added
 *   a listener to its signal per connection that threw BadResource (an uncaught error) when
 *   aborted after the connection closed. The listener form has neither problem, and accepts in
 *   native code.
 *
 * @module
 */

/** The symbol key under which `Deno.listenTls` accepts a per-handshake certificate resolver. */
export const SNI_RESOLVER: symbol = Symbol.for("unstableSniResolver");

/** A certificate chain and its private key, both PEM. */
export type TlsKeyPair = { cert: string; key: string };

/**
 * Picks the certificate for a server name. `serverName` is the SNI as sent, or `""` when the
 * client sent none. Throw to abort the handshake. Called once per distinct name per listener:
 * Deno replays the outcome, failures included, to later handshakes.
 */
export type SniResolver = (serverName: string) => TlsKeyPair | Promise<TlsKeyPair>;

/** Options of {@link listenTlsWithResolver}. */
export interface ListenTlsWithResolverOptions {
  /** The address to bind, e.g. "127.0.0.1". */
  hostname: string;
  /** The port to bind; 0 picks a free one (read it back from `listener.addr`). */
  port: number;
  /** Called once per handshake to pick the certificate. */
  resolver: SniResolver;
  /** ALPN protocols to offer, in preference order; `["h2", "http/1.1"]` enables HTTP/2. */
  alpnProtocols?: string[];
  /** SO_REUSEPORT: a replacement listener can bind the port before this one closes. */
  reusePort?: boolean;
}

/** The handler of {@link serveHttpOnListener}; `info.remoteAddr` is the connection's peer. */
export type ConnectionHandler = (
  req: Request,
  info: Deno.ServeHandlerInfo<Deno.NetAddr>,
) => Response | Promise<Response>;

/** What {@link serveHttpOnListener} returns. */
export interface ServedListener {
  /** Settles when the server has stopped (after `shutdown()`). Never rejects. */
  finished: Promise<void>;
  /**
   * Stops accepting, closes idle keep-alive connections at once, lets in-flight requests (and
   * their streaming bodies) finish, then resolves. Upgraded WebSockets are not waited for.
   */
  shutdown(): Promise<void>;
}

/** Thrown by {@link assertInternalsAvailable} when this Deno lacks an internal sluice needs. */
export class DenoInternalsError extends Error {
  /**
   * @param message what is missing and what to do
   */
  constructor(message: string) {
    super(message);
    this.name = "DenoInternalsError";
  }
}

/** The subset of `Deno[Deno.internal]` used here, as found in Deno 2.9.6. */
interface Internals {
  resolverSymbol?: symbol;
  serveHttpOnListener?: (
    listener: Deno.Listener,
    signal: AbortSignal,
    handler: ConnectionHandler,
    onError: (error: unknown) => Response | Promise<Response>,
    onListen: (scheme: string) => void,
  ) => { finished: Promise<void>; shutdown(): Promise<void> };
}

/** The Deno version this module was written and tested against. */
const TESTED_DENO = "2.9.6";

function internals(): Internals | undefined {
  const deno = Deno as unknown as Record<symbol, unknown> & { internal?: symbol };
  const key = deno.internal;
  if (typeof key !== "symbol") return undefined;
  const value = deno[key];
  return typeof value === "object" && value !== null ? value as Internals : undefined;
}

function missing(what: string): DenoInternalsError {
  return new DenoInternalsError(
    `Deno ${Deno.version.deno} lacks the internal ${what} that sluice's TLS data path needs ` +
      `(written for Deno ${TESTED_DENO}); run sluice with Deno ${TESTED_DENO} or port ` +
      `lib/tls/deno_internal.ts to this version`,
  );
}

/**
 * Check that the Deno internals this module wraps exist with the expected shape. Call it once
 * at startup so an incompatible runtime fails immediately with a message naming what is
 * missing, rather than on the first connection.
 *
 * @throws {DenoInternalsError} naming the missing internal and the running Deno version
 */
export function assertInternalsAvailable(): void {
  const deno = Deno as unknown as { internal?: unknown };
  if (typeof deno.internal !== "symbol") throw missing("symbol Deno.internal");
  const i = internals();
  if (i === undefined) throw missing("object Deno[Deno.internal]");
  if (typeof i.serveHttpOnListener !== "function") {
    throw missing("function Deno[Deno.internal].serveHttpOnListener");
  }
  // 2.9.6 takes (listener, signal, handler, onError, onListen); a different arity means the
  // arguments may no longer mean what we pass.
  if (i.serveHttpOnListener.length !== 5) {
    throw missing(
      `5-argument serveHttpOnListener(listener, signal, handler, onError, onListen) ` +
        `(found ${i.serveHttpOnListener.length} arguments)`,
    );
  }
  // Deno.listenTls reads the resolver under this key; if Deno moved it, a resolver passed under
  // SNI_RESOLVER would be silently ignored.
  if (i.resolverSymbol !== SNI_RESOLVER) {
    throw missing(`Deno[Deno.internal].resolverSymbol equal to Symbol.for("unstableSniResolver")`);
  }
}

/**
 * Listen for TLS connections whose certificate is chosen per handshake by `resolver`, from the
 * client's SNI. No default certificate is needed.
 *
 * @param opts address, port, resolver and ALPN protocols
 * @returns the listener; serve it with {@link serveHttpOnListener}
 * @throws {Deno.errors.AddrInUse} and the other errors of `Deno.listenTls`
 */
export function listenTlsWithResolver(opts: ListenTlsWithResolverOptions): Deno.TlsListener {
  const options: Deno.ListenTlsOptions & { [key: symbol]: SniResolver } = {
    hostname: opts.hostname,
    port: opts.port,
    [SNI_RESOLVER]: opts.resolver,
  };
  if (opts.alpnProtocols !== undefined) options.alpnProtocols = opts.alpnProtocols;
  if (opts.reusePort) (options as { reusePort?: boolean }).reusePort = true;
  // The public type demands cert and key; with a resolver Deno 2.9.6 needs neither.
  return Deno.listenTls(options as unknown as Deno.ListenTlsOptions & Deno.TlsCertifiedKeyPem);
}

/**
 * Serve HTTP/1.1 and HTTP/2 (if ALPN chose "h2") on every connection of a listener with Deno's
 * native HTTP server, the same one `Deno.serve` uses. For a listener from
 * {@link listenTlsWithResolver} this is what runs each TLS handshake (and so the resolver).
 *
 * @param listener a TlsListener (or a plain TCP listener for HTTP)
 * @param handler answers each request
 * @param onError answers a request whose handler threw or rejected
 * @returns `finished`, which never rejects, and `shutdown`
 * @throws {DenoInternalsError} if this Deno lacks serveHttpOnListener
 */
export function serveHttpOnListener(
  listener: Deno.Listener,
  handler: ConnectionHandler,
  onError: (error: unknown) => Response | Promise<Response>,
): ServedListener {
  const serve = internals()?.serveHttpOnListener;
  if (typeof serve !== "function") {
    throw missing("function Deno[Deno.internal].serveHttpOnListener");
  }
  // Deno's own signal is never aborted: shutdown() is the one way to stop, and it tolerates
  // every state (idle, in flight, already stopped).
  const served = serve(listener, new AbortController().signal, handler, onError, () => {});
  // A failure of the server as a whole must not become an unhandled rejection.
  const finished = served.finished.then(() => {}, () => {});
  return { finished, shutdown: () => served.shutdown().catch(() => {}) };
}

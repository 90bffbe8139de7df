/**
 * The HTTP server side of interception: where sluice terminates TLS with a
 * per-SNI leaf and serves HTTP/1.1 and HTTP/2 to the client.
 *
 * Deno cannot start a TLS server on a connection it already read from (no
 * server-side `startTls`), and sluice must read the ClientHello first to
 * decide. So a decided connection is handed over by a loopback "hop": sluice
 * connects to an internal resolver-backed TLS listener, replays the sniffed
 * bytes and splices. The internal server sees the hop as its peer, so the hop
 * registers the original connection's metadata under the hop's local port.
 * Plain HTTP (explicit proxy requests, transparent port 80) takes the same
 * route to an internal plain listener so one handler serves every request.
 *
 * Deno keeps the resolver's answer per name for the listener's life, without
 * bound and failures included (test/lib/deno_internal_test.ts pins this). So
 * the TLS listener is replaced after `maxNames` distinct names or `maxAgeMs`
 * (well inside the leaf validity), and the resolver never throws for a name
 * we would want to serve later: denials are decided before the hop.
 *
 * @module
 */
import type { Destination } from "../../policy/mod.ts";
import {
  type ConnectionHandler,
  listenTlsWithResolver,
  type ServedListener,
  serveHttpOnListener,
} from "../tls/deno_internal.ts";
import type { LeafCache } from "../tls/leaf_cache.ts";
import { setListenerNoDelay } from "../tls/sockopt.ts";
import { type Duplex, splice } from "./splice.ts";
import { checkedRequestStream, type StreamRefusal } from "./request_stream.ts";
import type { ConnectionDecision } from "../../policy/mod.ts";
import { parseClientHello } from "../tls/client_hello.ts";
import { HopClock, type Limits, watchOf } from "./limits.ts";
import { serveH2 } from "./h2_server.ts";

/** What the request handler knows about the client connection behind a hop. */
export type HopMeta = {
  /** The connection's id in the audit trail (none on the direct path: no JS sees its accept). */
  conn?: number;
  client: string;
  mode: "explicit" | "transparent";
  /** True when the hop goes to the TLS terminator. */
  secure: boolean;
  /** The normalized SNI, for TLS. */
  sni?: string;
  /** Where the client meant to go: the CONNECT target, or the transparent original destination. */
  target?: { dest: Destination; port: number };
  /**
   * The direct path (direct.ts): the TLS server name was checked in the certificate resolver and
   * is not known per connection, nor is the original port; each request is decided on its
   * authority (host and port) alone.
   */
  nameUnknown?: boolean;
  /** Set when the connection was denied before the hop: every request gets this 403. */
  denied?: ConnectionDecision;
};

/**
 * What the request handler asks of whoever accepted the connection a request came on: who the
 * client is (by the peer address the HTTP server reports), and when a streamed response body
 * keeps that connection busy. The {@link Terminator} answers for hops (the peer is the hop's
 * local end); lib/ingress/direct.ts for connections served without a hop.
 */
export interface Connections {
  meta(peer: Deno.NetAddr): HopMeta | undefined;
  /** A response body keeps streaming: the connection is busy, not idle between requests. */
  bodyStarted(peer: Deno.NetAddr): void;
  /** That body has been sent, or the client abandoned it. */
  bodyEnded(peer: Deno.NetAddr): void;
}

/** What the internal servers answer when the request handler itself failed. */
const internalError = (e: unknown): Response =>
  new Response(`sluice: internal error: ${(e as Error)?.message ?? e}\n`, { status: 500 });

/** A hop in progress: who it carries, and the clock its connection's deadlines follow. */
type Hop = { meta: HopMeta; clock?: HopClock };

type Internal = {
  served: ServedListener;
  port: number;
  names: Set<string>;
  born: number;
  /** Names (lower case) whose first handshake on this listener has had its answer back. */
  warm: Set<string>;
  /** Names whose first handshake is under way: settles when it has had its answer, or ended. */
  firstOfName: Map<string, Promise<void>>;
};

/**
 * How long the hops of a name wait for that name's first handshake at most. The internal server
 * answers a ClientHello it has in its buffer at once, whatever the client does, so this only
 * bounds a stuck listener.
 */
const FIRST_OF_NAME_WAIT_MS = 5_000;

/** Options of the terminator. */
export type TerminatorOptions = {
  leaves: LeafCache;
  handler: ConnectionHandler;
  signal: AbortSignal;
  /** Replace the TLS listener after this many distinct SNI names (default 4096). */
  maxNames?: number;
  /** Replace the TLS listener after this long (default 12 h; leaves live 7 days). */
  maxAgeMs?: number;
  /** Close a hop with no bytes either way for this long (0: never), when its connection has no watch. */
  idleMs?: number;
  /**
   * The deadlines (limits.ts): a hop whose client connection has a watch follows a HopClock
   * (TLS handshake, each request head, keep-alive, request idle) instead of `idleMs`.
   */
  limits?: Limits;
  now?: () => number;
  /**
   * Plain HTTP: the refusal callback of a hop's checked request stream (request_stream.ts).
   * Set, every request head and body on a plain hop is checked by sluice before the internal
   * server reads it; unset, plain hops are spliced unchecked.
   */
  refusePlain?: (meta: HopMeta) => (r: StreamRefusal, answer: boolean) => Uint8Array | undefined;
};

/** The internal listeners and the registry that maps hops to their client connections. */
export class Terminator implements Connections {
  readonly #opts: TerminatorOptions;
  readonly #hops = new Map<number, Hop>();
  readonly #handler: ConnectionHandler;
  /** HTTP/1.1 over TLS: Deno's native server. */
  #tls!: Internal;
  /** HTTP/2 over TLS (a ClientHello offering h2): node:http2, for trailers (h2_server.ts). */
  #h2!: Internal;
  #plain!: Internal;
  /** Servers still finishing their connections: recycled TLS listeners, then all at close. */
  readonly #draining = new Set<Promise<void>>();
  #stopping = false;

  constructor(opts: TerminatorOptions) {
    this.#opts = opts;
    this.#handler = this.#clocked(opts.handler);
  }

  // The request handler, telling each hop's clock when a request starts (its head is complete)
  // and when its handler returns (and whether it upgraded the connection).
  #clocked(handler: ConnectionHandler): ConnectionHandler {
    return (req, info) => {
      const clock = this.#hops.get(info.remoteAddr.port)?.clock;
      if (!clock) return handler(req, info);
      clock.begin();
      let r: Response | Promise<Response>;
      try {
        r = handler(req, info);
      } catch (e) {
        clock.end();
        throw e;
      }
      if (!(r instanceof Promise)) {
        clock.end(r.status);
        return r;
      }
      return r.then((res) => {
        clock.end(res.status);
        return res;
      }, (e) => {
        clock.end();
        throw e;
      });
    };
  }

  /**
   * The request handler reports that the response it returned on the hop whose local end is
   * `peer` keeps streaming its body: the connection is busy (the tunnel idle deadline applies),
   * not idle between requests, until {@link bodyEnded}.
   */
  bodyStarted(peer: Deno.NetAddr): void {
    this.#hops.get(peer.port)?.clock?.bodyStarted();
  }

  /** That body has been sent, or the client abandoned it. */
  bodyEnded(peer: Deno.NetAddr): void {
    this.#hops.get(peer.port)?.clock?.bodyEnded();
  }

  /** Opens the internal listeners on loopback. */
  start(): void {
    // The signal starts the graceful part of a drain: idle keep-alive connections close at
    // once, requests in flight finish.
    this.#opts.signal.addEventListener("abort", () => this.#shutdownServers(), { once: true });
    this.#tls = this.#openTls(false);
    this.#h2 = this.#openTls(true);
    const plain = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.#plain = {
      served: this.#serve(plain),
      port: (plain.addr as Deno.NetAddr).port,
      names: new Set(),
      born: 0,
      warm: new Set(),
      firstOfName: new Map(),
    };
  }

  /** Metadata for the connection whose hop's local end is `peer` (internal listeners are loopback-only). */
  meta(peer: Deno.NetAddr): HopMeta | undefined {
    return this.#hops.get(peer.port)?.meta;
  }

  /** Number of hops currently open. */
  get activeHops(): number {
    return this.#hops.size;
  }

  #openTls(h2: boolean): Internal {
    const names = new Set<string>();
    const listener = listenTlsWithResolver({
      hostname: "127.0.0.1",
      port: 0,
      alpnProtocols: h2 ? ["h2"] : ["http/1.1"],
      resolver: (serverName) => {
        names.add(serverName);
        return this.#opts.leaves.lookup(serverName);
      },
    });
    // Without this, every streamed response stalls ~40 ms on Nagle + delayed ACK.
    setListenerNoDelay(listener);
    const now = this.#opts.now?.() ?? Date.now();
    return {
      served: h2 ? serveH2(listener, this.#handler, internalError) : this.#serve(listener),
      port: (listener.addr as Deno.NetAddr).port,
      names,
      born: now,
      warm: new Set(),
      firstOfName: new Map(),
    };
  }

  #maybeRecycle(h2: boolean): void {
    const t = h2 ? this.#h2 : this.#tls;
    const now = this.#opts.now?.() ?? Date.now();
    if (
      t.names.size < (this.#opts.maxNames ?? 4096) &&
      now - t.born < (this.#opts.maxAgeMs ?? 12 * 3600_000)
    ) {
      return;
    }
    // New hops go to a fresh listener; the old one stops accepting, closes its idle
    // keep-alive connections and lets requests in flight run to completion.
    if (h2) this.#h2 = this.#openTls(true);
    else this.#tls = this.#openTls(false);
    this.#retire(t);
  }

  // One native server per internal listener (not one per connection: that variant closes
  // upgraded WebSockets at once, see deno_internal.ts).
  #serve(listener: Deno.Listener): ServedListener {
    return serveHttpOnListener(listener, this.#handler, internalError);
  }

  /**
   * Hands a client connection to the TLS terminator (`secure`) or the plain
   * HTTP server, replaying `first` (the bytes sluice already read).
   *
   * @returns bytes moved each way, when the client connection ends
   */
  async hop(
    client: Deno.Conn,
    first: Uint8Array,
    meta: HopMeta,
  ): Promise<{ up: number; down: number }> {
    // A client that offers h2 gets HTTP/2 end to end (h2_server.ts); the rest HTTP/1.1.
    const hello = meta.secure ? parseClientHello(first) : undefined;
    const h2 = hello?.kind === "ok" && hello.alpn.includes("h2");
    if (meta.secure) this.#maybeRecycle(h2);
    const name = hello?.kind === "ok" ? hello.sni?.toLowerCase() : undefined;
    const gate = name === undefined ? undefined : await this.#firstOfName(h2, name);
    const answered = gate?.answered;
    const port = gate?.to.port ??
      (meta.secure ? (h2 ? this.#h2.port : this.#tls.port) : this.#plain.port);
    let hop: Deno.TcpConn;
    try {
      hop = await Deno.connect({ hostname: "127.0.0.1", port });
    } catch (e) {
      answered?.(false);
      throw e;
    }
    hop.setNoDelay(true);
    const hopPort = (hop.localAddr as Deno.NetAddr).port;
    const watch = this.#opts.limits ? watchOf(client) : undefined;
    let clock: HopClock | undefined;
    if (watch && this.#opts.limits) {
      clock = new HopClock(this.#opts.limits, {
        secure: meta.secure,
        h2,
        // No byte read yet (transparent HTTP): the first request is still the first bytes.
        firstHeadMs: first.length
          ? this.#opts.limits.headTimeoutMs
          : this.#opts.limits.handshakeTimeoutMs,
        now: watch.now,
      });
      watch.follow(clock);
    }
    this.#hops.set(hopPort, { meta, clock });
    try {
      const refused = meta.secure ? undefined : this.#opts.refusePlain?.(meta);
      const hopClock = clock;
      const a = refused
        ? checkedRequestStream(client, first, {
          maxHeaderBytes: this.#opts.limits?.maxHeaderBytes,
          // A head held until complete still starts the head deadline.
          onInput: hopClock ? () => hopClock.up() : undefined,
          refused,
        })
        : client;
      const b = answered ? onFirstRead(hop, answered) : hop;
      const r = await splice(a, b, refused ? undefined : first, clock ?? this.#opts.idleMs ?? 0);
      return { up: r.aToB, down: r.bToA };
    } finally {
      this.#hops.delete(hopPort);
      answered?.(false);
    }
  }

  /**
   * The first handshake of a name on an internal TLS listener goes alone; the hops of that name
   * that come meanwhile wait for its answer. Deno 2.9.6 loses the resolver's answer for a
   * handshake of the same name that looks it up after the answer was sent but before Deno
   * stored it (ext/tls/tls_key.rs resubscribes it to a spent broadcast), and that handshake ends
   * with a close_notify and no response (test/e2e/first_wave_test.ts). Once the first handshake
   * has had its first byte back from the listener (its ServerHello, or an alert), Deno has
   * stored the answer and every later handshake of the name gets it.
   *
   * @returns the listener to hop to, and for the hop that goes first, what to call when it has
   *   had a byte back (`true`) or ended without one
   */
  async #firstOfName(
    h2: boolean,
    name: string,
  ): Promise<{ to: Internal; answered?: (answered: boolean) => void }> {
    let t: Internal;
    for (;;) {
      t = h2 ? this.#h2 : this.#tls;
      if (t.warm.has(name)) return { to: t };
      const under = t.firstOfName.get(name);
      if (under === undefined) break;
      // The listener may have been replaced meanwhile: look again at the current one.
      await under;
    }
    let done!: () => void;
    const settled = new Promise<void>((resolve) => done = resolve);
    const timer = setTimeout(() => finish(false), FIRST_OF_NAME_WAIT_MS);
    Deno.unrefTimer(timer);
    let finished = false;
    const finish = (answered: boolean) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      if (answered) t.warm.add(name);
      t.firstOfName.delete(name);
      done();
    };
    t.firstOfName.set(name, settled);
    return { to: t, answered: finish };
  }

  /** Stops the internal listeners and waits for served connections to finish. */
  async close(): Promise<void> {
    this.#shutdownServers();
    await Promise.allSettled([...this.#draining]);
  }

  #shutdownServers(): void {
    // Once: the drain's abort and close() both ask for it.
    if (this.#stopping) return;
    this.#stopping = true;
    for (const t of [this.#tls, this.#h2, this.#plain]) if (t !== undefined) this.#retire(t);
  }

  #retire(t: Internal): void {
    const done = t.served.shutdown();
    this.#draining.add(done);
    done.finally(() => this.#draining.delete(done));
  }
}

/** `conn`, calling `then(true)` when its first read settles with bytes, `then(false)` otherwise. */
function onFirstRead(conn: Deno.Conn, then: (answered: boolean) => void): Duplex {
  let first = true;
  return {
    read(p) {
      if (!first) return conn.read(p);
      first = false;
      const r = conn.read(p);
      r.then((n) => then(n !== null && n > 0), () => then(false));
      return r;
    },
    write: (p) => conn.write(p),
    close: () => conn.close(),
    closeWrite: () => conn.closeWrite(),
  };
}

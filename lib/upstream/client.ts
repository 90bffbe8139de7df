/**
 * sluice's upstream HTTP/1.1 client: one request at a time per connection, a keep-alive pool,
 * bodies passed through byte for byte in both directions (never decompressed, only de-chunked).
 *
 * Why not fetch: it transparently decompresses gzip/br bodies while keeping Content-Encoding,
 * and leaves TCP_NODELAY off. Why not node:https: about half the speed. So this speaks
 * HTTP/1.1 itself (the connection, its head and its body each in a module of this folder:
 * connection.ts, head.ts, body.ts; the keep-alive pool in pool.ts), with TCP_NODELAY set and a
 * request head written together with the first body bytes. This module is the entry: the
 * public {@link UpstreamPool}, one exchange on a connection, and the retry rule.
 *
 * Retry rule: a request that fails on a REUSED connection before any response byte arrived
 * (the server closed the idle connection just as we used it) is sent once more on a fresh
 * connection, if its body is replayable (null or a Uint8Array) and it is safe to repeat:
 * an idempotent method (RFC 9110 9.2.2), an Idempotency-Key header, or nothing was written.
 * Idle connections also keep a read pending, so one the server closes while idle leaves the
 * pool at once and most stale connections are never tried.
 *
 * @module
 */

import {
  isKeepAlive,
  removeHopByHop,
  type ResponseFraming,
  responseFraming,
  type ResponseHead,
} from "../http1/response.ts";
import { bodyReader, sendRequest, type SendState } from "./body.ts";
import { ALPN_H2, type Connection, dial } from "./connection.ts";
import { H2Sessions } from "./h2.ts";
import { Deadlines } from "./deadlines.ts";
import { buildHead, type BuiltHead, readHead } from "./head.ts";
import { ConnectionPool, poolKey, type UpstreamPoolStats } from "./pool.ts";
import {
  errorText,
  type UpstreamConn,
  UpstreamError,
  type UpstreamErrorKind,
  type UpstreamRequest,
  type UpstreamResponse,
  type UpstreamTarget,
} from "./types.ts";

export {
  type UpstreamConn,
  UpstreamError,
  type UpstreamErrorKind,
  type UpstreamPoolStats,
  type UpstreamRequest,
  type UpstreamResponse,
  type UpstreamTarget,
};

/**
 * A response whose body came whole with its head. `body` replays `whole` as a stream, made only
 * if asked for (a getter on the class, so every such response shares one object shape).
 */
class WholeResponse implements UpstreamResponse {
  readonly status: number;
  readonly reason: string;
  readonly headers: [string, string][];
  readonly whole: Uint8Array<ArrayBuffer>;
  readonly bytesIn: () => number;
  #replay: ReadableStream<Uint8Array> | undefined;

  constructor(head: UpstreamResponse, whole: Uint8Array<ArrayBuffer>) {
    this.status = head.status;
    this.reason = head.reason;
    this.headers = head.headers;
    this.whole = whole;
    this.bytesIn = head.bytesIn;
  }

  get body(): ReadableStream<Uint8Array> {
    return this.#replay ??= new ReadableStream({
      start: (c) => {
        c.enqueue(this.whole);
        c.close();
      },
    });
  }
}

/** Options for {@link UpstreamPool}. */
export type UpstreamPoolOptions = {
  /** Idle connections kept per key (target + trust settings). Default 32. */
  maxIdlePerHost?: number;
  /**
   * Idle connections kept in all, the least recently used closed first. Default 256: each
   * idle TLS connection holds tens of KB, and a client visiting many hosts must not make
   * sluice keep one per host for the whole idle timeout.
   */
  maxIdleTotal?: number;
  /** Idle connections are closed after this long. Default 30 s. */
  idleTimeoutMs?: number;
  /** TCP connect plus TLS handshake. Default 10 s. */
  connectTimeoutMs?: number;
  /** From the request fully written until the response head is complete. Default 30 s. */
  headerTimeoutMs?: number;
};

const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]);

/** A failed exchange, with what the retry rule needs to know. */
class ExchangeFailure {
  constructor(
    readonly error: unknown,
    /** The connection was lost before any response byte arrived. */
    readonly lost: boolean,
    /** Some request bytes reached the socket. */
    readonly wroteAny: boolean,
  ) {}
}

/**
 * A keep-alive pool of upstream HTTP/1.1 connections and the client that uses them.
 *
 * @example
 * ```ts ignore
 * const pool = new UpstreamPool();
 * const res = await pool.request(
 *   { host: "example.com", port: 443, address: "93.184.215.14", tls: true, verify: true },
 *   { method: "GET", path: "/", headers: [["accept", "*\/*"]], body: null },
 * );
 * const text = await new Response(res.body).text();
 * pool.close();
 * ```
 */
/**
 * What an upstream (a pool key) is known to speak: "h1", it chose http/1.1 when offered h2 too;
 * "h2", it chose h2 when offered both; "h2-only", it refused an http/1.1-only handshake.
 */
type Protocol = "h1" | "h2" | "h2-only";

export class UpstreamPool {
  readonly #connectMs: number;
  readonly #headerMs: number;
  readonly #pool: ConnectionPool;
  /** The idle and header deadlines of every connection, one coarse timer (deadlines.ts). */
  readonly #deadlines: Deadlines;
  /**
   * Exchanges in flight by the signal that aborts them: one "abort" listener per signal (the
   * server's shutdown signal, in practice one for the pool's life) instead of an
   * add/removeEventListener pair per request (~1 µs each in Deno 2.9's EventTarget).
   */
  readonly #aborting = new WeakMap<AbortSignal, Set<(reason: unknown) => void>>();
  /** HTTP/2 sessions (h2.ts), for upstreams that chose h2. */
  readonly #h2: H2Sessions;
  /**
   * What each TLS upstream (by pool key) chose when offered h2, or needed (it refused HTTP/1.1):
   * so later requests go straight to the right pool ({@link Protocol}). Bounded: cleared past
   * 4,096 keys.
   */
  readonly #protocols = new Map<string, Protocol>();

  /** @param opts pool sizes and timeouts; see {@link UpstreamPoolOptions} for defaults */
  constructor(opts?: UpstreamPoolOptions) {
    const idleTimeoutMs = opts?.idleTimeoutMs ?? 30_000;
    this.#connectMs = opts?.connectTimeoutMs ?? 10_000;
    this.#headerMs = opts?.headerTimeoutMs ?? 30_000;
    this.#deadlines = new Deadlines(Math.min(idleTimeoutMs, this.#headerMs));
    this.#h2 = new H2Sessions({ headerTimeoutMs: this.#headerMs, idleTimeoutMs });
    this.#pool = new ConnectionPool({
      maxIdlePerHost: opts?.maxIdlePerHost ?? 32,
      maxIdleTotal: opts?.maxIdleTotal ?? 256,
      idleTimeoutMs,
      deadlines: this.#deadlines,
    });
  }

  /**
   * Send one request and return once the response head has arrived; the body streams.
   * Interim 1xx responses (100 Continue included) are skipped, except 101.
   *
   * Read the body to its end or cancel it: the connection goes back to the pool only after
   * the whole body was read, if both sides allowed keep-alive and the request body was sent.
   *
   * @param target where to connect (address already vetted by the caller)
   * @param req the request
   * @param signal aborts connecting, sending, waiting and the body stream
   * @returns the response
   * @throws {UpstreamError} when connecting, the TLS handshake, sending or the response fails;
   *   the signal's reason when aborted
   */
  async request(
    target: UpstreamTarget,
    req: UpstreamRequest,
    signal?: AbortSignal,
  ): Promise<UpstreamResponse> {
    signal?.throwIfAborted();
    const where = `${target.host}:${target.port}`;
    if (this.#pool.closed) {
      throw new UpstreamError("connect", `Cannot send request to ${where}: the pool is closed`);
    }
    const key = poolKey(target);
    // HTTP/2 for a client that spoke it, where the upstream speaks it or may; for an HTTP/1.1
    // client only where the upstream speaks nothing else: sluice's HTTP/1.1 pool costs less
    // per request than node:http2 (bench/peers.sh: an HTTP/1.1 client multiplexed onto h2 to
    // nginx ran at half the MiB/s). Not with `verify: false` (node:tls, HTTP/1.1 only).
    if (target.tls && target.verify && !target.clientCert) {
      const known = this.#protocols.get(key);
      if (known === "h2-only" || (req.http2 && known !== "h1")) {
        return await this.#viaH2(target, req, key, where, signal);
      }
    }
    const built = buildHead(target, req, where);
    const idle = this.#pool.take(key);
    if (idle !== undefined) {
      try {
        return await this.#exchange(idle, req, built, where, signal);
      } catch (e) {
        if (!(e instanceof ExchangeFailure)) throw e;
        const replayable = req.body === null || req.body instanceof Uint8Array;
        const safe = IDEMPOTENT.has(req.method) ||
          req.headers.some(([n]) => /^(x-)?idempotency-key$/i.test(n));
        if (!e.lost || !replayable || (!safe && e.wroteAny) || signal?.aborted) throw e.error;
      }
    }
    let conn: Connection;
    try {
      conn = await this.#connect(target, key, where, signal);
    } catch (e) {
      // An upstream that only speaks HTTP/2 ends an http/1.1-only handshake with
      // no_application_protocol: offer it h2 from now on.
      if (
        e instanceof UpstreamError && e.kind === "tls" &&
        /NoApplicationProtocol/i.test(e.message) &&
        target.verify
      ) {
        this.#remember(key, "h2-only");
        return await this.#viaH2(target, req, key, where, signal);
      }
      throw e;
    }
    try {
      return await this.#exchange(conn, req, built, where, signal);
    } catch (e) {
      throw e instanceof ExchangeFailure ? e.error : e;
    }
  }

  #remember(key: string, protocol: Protocol): void {
    if (this.#protocols.size >= 4096 && !this.#protocols.has(key)) this.#protocols.clear();
    this.#protocols.set(key, protocol);
  }

  /**
   * The request over HTTP/2: on a session with a free stream, or a new connection offering
   * h2 (which the upstream may still answer with http/1.1: then it is an HTTP/1.1 exchange,
   * and the key is remembered as such).
   */
  async #viaH2(
    target: UpstreamTarget,
    req: UpstreamRequest,
    key: string,
    where: string,
    signal?: AbortSignal,
  ): Promise<UpstreamResponse> {
    const open = this.#h2.take(key);
    if (open !== undefined) return await this.#h2.request(open, req, where, signal);
    const io = await dial(target, where, this.#connectMs, signal, ALPN_H2);
    if (io.protocol !== "h2") {
      this.#remember(key, "h1");
      const conn = this.#pool.adopt(io, key);
      if (conn.closed) {
        throw new UpstreamError("connect", `Cannot send request to ${where}: the pool is closed`);
      }
      try {
        return await this.#exchange(conn, req, buildHead(target, req, where), where, signal);
      } catch (e) {
        throw e instanceof ExchangeFailure ? e.error : e;
      }
    }
    // An upstream known to refuse HTTP/1.1 stays so; one that chose h2 among both is "h2".
    if (this.#protocols.get(key) !== "h2-only") this.#remember(key, "h2");
    return await this.#h2.request(this.#h2.adopt(io, key, target), req, where, signal);
  }

  /** Close idle connections now; connections in use close when their response ends. */
  close(): void {
    this.#pool.close();
    this.#h2.close();
  }

  /** @returns pool counters */
  stats(): UpstreamPoolStats {
    return this.#pool.stats();
  }

  /** Call `onAbort` with the reason when `signal` aborts, until {@link #unwatchAbort}. */
  #watchAbort(signal: AbortSignal | undefined, onAbort: (reason: unknown) => void): void {
    if (signal === undefined) return;
    let set = this.#aborting.get(signal);
    if (set === undefined) {
      const exchanges = set = new Set();
      this.#aborting.set(signal, exchanges);
      signal.addEventListener("abort", () => {
        for (const abort of [...exchanges]) abort(signal.reason);
        exchanges.clear();
      }, { once: true });
    }
    set.add(onAbort);
  }

  #unwatchAbort(signal: AbortSignal | undefined, onAbort: (reason: unknown) => void): void {
    if (signal !== undefined) this.#aborting.get(signal)?.delete(onAbort);
  }

  /** Open a connection for `key`, counted by the pool and in use. */
  async #connect(
    t: UpstreamTarget,
    key: string,
    where: string,
    signal?: AbortSignal,
  ): Promise<Connection> {
    const io = await dial(t, where, this.#connectMs, signal);
    const conn = this.#pool.adopt(io, key);
    if (conn.closed) {
      throw new UpstreamError("connect", `Cannot send request to ${where}: the pool is closed`);
    }
    return conn;
  }

  /**
   * Send the request on `conn` and read the response head. Failures that the caller may
   * retry come as {@link ExchangeFailure}; the connection is closed on every failure.
   */
  async #exchange(
    conn: Connection,
    req: UpstreamRequest,
    built: BuiltHead,
    where: string,
    signal?: AbortSignal,
  ): Promise<UpstreamResponse> {
    const readAtStart = conn.bytesRead;
    let failure: unknown;
    /** Set once the head arrived or the exchange failed: no header deadline after that. */
    let headPhaseOver = false;
    const fail = (e: unknown): void => {
      failure ??= e;
      conn.destroy();
    };
    // The header deadline, on the pool's sweep (deadlines.ts) rather than a timer per request.
    const headerTimeout = (): void =>
      fail(
        new UpstreamError(
          "timeout",
          `Upstream ${where} sent no response head within ${this.#headerMs} ms`,
        ),
      );
    const startHeaderTimer = (): void => {
      if (headPhaseOver || conn.closed) return;
      this.#deadlines.arm(conn, this.#headerMs, headerTimeout);
    };
    const onAbort = fail;
    this.#watchAbort(signal, onAbort);

    // Send in the background: the response may start (or the server may refuse) before the
    // body is through, and a large upload must not block reading the answer.
    const send: SendState = { done: false, wroteAny: false, sourceFailed: false };
    const sending = sendRequest(conn, built, send, where).then(() => {
      send.done = true;
      startHeaderTimer();
    }, (e) => {
      // After the head, a failed write only means the server stopped reading (it answered
      // early); the answer can still be read, the connection just cannot be reused.
      if (!headPhaseOver || send.sourceFailed) fail(e);
    });

    let head: ResponseHead;
    try {
      head = await readHead(conn, where);
      headPhaseOver = true;
    } catch (e) {
      headPhaseOver = true;
      this.#deadlines.disarm(conn);
      this.#unwatchAbort(signal, onAbort);
      conn.destroy();
      send.stop?.(e);
      this.#pool.forget(conn);
      const error = failure ?? e;
      // Retry only a plain connection loss with nothing received: not a timeout, an abort, a
      // protocol error or a failing request body.
      const lost = conn.bytesRead === readAtStart && error instanceof UpstreamError &&
        error.kind === "reset";
      throw new ExchangeFailure(error, lost, send.wroteAny);
    }
    this.#deadlines.disarm(conn);
    const bytesIn = (): number => conn.bytesRead - readAtStart - (conn.end - conn.start);

    if (head.status === 101) {
      this.#unwatchAbort(signal, onAbort);
      this.#pool.forget(conn);
      const rest = conn.buf.slice(conn.start, conn.end);
      conn.start = conn.end;
      const total = conn.bytesRead - readAtStart;
      return {
        status: 101,
        reason: head.reason,
        headers: removeHopByHop(head.headers, ["connection", "upgrade"]),
        body: null,
        bytesIn: () => total,
        upgrade: { conn: conn.io, head: rest },
      };
    }

    let framing: ResponseFraming;
    try {
      framing = responseFraming(req.method, head.status, head.headers);
    } catch (e) {
      this.#unwatchAbort(signal, onAbort);
      fail(e);
      this.#pool.forget(conn);
      throw new UpstreamError("protocol", `Invalid response from ${where}: ${errorText(e)}`);
    }
    const keepAlive = !built.close && framing.kind !== "close" &&
      isKeepAlive(head.version, head.headers);
    let finished = false;
    let frozenBytes = -1;
    const finish = (ok: boolean): void => {
      if (finished) return;
      finished = true;
      frozenBytes = bytesIn();
      this.#unwatchAbort(signal, onAbort);
      // The request body must have gone out entirely, or the server is still reading it.
      const settle = (): void =>
        this.#pool.release(conn, ok && keepAlive && send.done && failure === undefined);
      // A head or byte body is one write that is surely done or about to be (the server has
      // answered it); a stream still sending means an early answer: do not wait for it.
      if (send.done) settle();
      else if (built.plan.kind === "stream") {
        send.stop?.(new Error("the upstream answered before the request body was sent"));
        settle();
      } else sending.then(settle);
    };
    const response: UpstreamResponse = {
      status: head.status,
      reason: head.reason,
      headers: removeHopByHop(head.headers),
      body: null,
      bytesIn: () => frozenBytes >= 0 ? frozenBytes : bytesIn(),
    };
    if (framing.kind === "none" || (framing.kind === "length" && framing.length === 0)) {
      if (framing.kind === "length") {
        response.body = new ReadableStream({ start: (c) => c.close() });
      }
      finish(true);
      return response;
    }
    if (framing.kind === "length" && conn.end - conn.start >= framing.length) {
      // The whole body came with the head: hand it over as bytes, and the connection goes
      // back to the pool now rather than after a stream has been drained.
      const whole = conn.buf.slice(conn.start, conn.start + framing.length);
      conn.start += framing.length;
      finish(true);
      return new WholeResponse(response, whole);
    }
    const next = bodyReader(conn, framing, where);
    response.body = new ReadableStream<Uint8Array>({
      pull: async (c) => {
        try {
          const chunk = await next();
          if (failure !== undefined) throw failure;
          if (chunk === null) {
            finish(true);
            c.close();
          } else {
            c.enqueue(chunk);
          }
        } catch (e) {
          finish(false);
          c.error(failure ?? e);
        }
      },
      cancel: () => finish(false),
    });
    return response;
  }
}

/**
 * sluice's upstream HTTP/1.1 client: one request at a time per connection, a keep-alive pool,
 * bodies passed through byte for byte in both directions (never decompressed, only de-chunked).
 *
 * Why not fetch: it transparently decompresses gzip/br bodies while keeping Content-Encoding,
 * and leaves TCP_NODELAY off. Why not node:https: about half the speed. So this speaks
 * HTTP/1.1 itself over `Deno.connect` (+ `Deno.startTls`), with TCP_NODELAY set on the TCP
 * socket before TLS starts, and writes a request head together with the first body bytes.
 *
 * `verify: false` goes through node:tls with `rejectUnauthorized: false`, wrapped in the same
 * read/write interface: `Deno.startTls` can only skip the hostname check, not the chain check
 * (its internal `rejectUnauthorized` switch is not reachable from user code in Deno 2.9.6), and
 * pinning the server's own certificate as a CA fails for ordinary non-CA leaves. It is slower,
 * which is acceptable for the rare host a policy marks unverified.
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

import { bracketHost } from "../../policy/address.ts";
import * as nodeTls from "node:tls";
import {
  ChunkedDecoder,
  connectionTokens,
  encodeChunk,
  isKeepAlive,
  LAST_CHUNK,
  parseResponseHead,
  removeHopByHop,
  responseFraming,
} from "../http1/response.ts";
import type { ResponseFraming, ResponseHead } from "../http1/response.ts";

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

/** Pool counters. */
export type UpstreamPoolStats = {
  /** Connections waiting in the pool. */
  idle: number;
  /** Connections in use by a request or a response body. */
  active: number;
  /** Connections opened since the pool was made. */
  created: number;
  /** Requests that were sent on a pooled connection. */
  reused: number;
};

const READ_BUFFER = 64 * 1024;
/** A Uint8Array body up to this size goes out in the same write as the head. */
const COALESCE_LIMIT = 256 * 1024;
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]);
const METHODS_WITH_BODY = new Set(["POST", "PUT", "PATCH"]);
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Field values: HTAB, SP, VCHAR and obs-text only (no CR/LF injection, no other CTL). */
const BAD_VALUE = /[^\t\x20-\x7e\x80-\xff]/;
const BAD_PATH = /[^\x21-\x7e]/;
const ASCII = /^[^\x80-\uffff]*$/;
const UTF8 = new TextEncoder();

type Timer = ReturnType<typeof setTimeout>;

/** Bytes from a connection: Deno TcpConn/TlsConn or the node:tls adapter. */
type Io = UpstreamConn & { ref?(): void; unref?(): void };

/** One upstream connection and its read buffer. */
class Connection {
  readonly io: Io;
  readonly key: string;
  /** Buffered unread bytes are buf[start, end). */
  buf: Uint8Array = new Uint8Array(READ_BUFFER);
  start = 0;
  end = 0;
  /** Total bytes read from the socket. */
  bytesRead = 0;
  /** A read left pending while idle, so a close by the server is noticed at once. */
  pending: Promise<number | null> | null = null;
  idleTimer: Timer | undefined;
  closed = false;
  state: "active" | "idle" = "active";

  constructor(io: Io, key: string) {
    this.io = io;
    this.key = key;
  }

  /** Read more bytes into the buffer; null at end of stream. */
  async fill(): Promise<number | null> {
    let n: number | null;
    if (this.pending !== null) {
      const p = this.pending;
      this.pending = null;
      n = await p;
    } else {
      if (this.end === this.buf.length) {
        if (this.start > 0) {
          this.buf.copyWithin(0, this.start, this.end);
          this.end -= this.start;
          this.start = 0;
        } else {
          const bigger = new Uint8Array(this.buf.length * 2);
          bigger.set(this.buf);
          this.buf = bigger;
        }
      }
      n = await this.io.read(this.buf.subarray(this.end));
    }
    if (n === null) return null;
    this.end += n;
    this.bytesRead += n;
    return n;
  }

  /** Start a read into the (empty) buffer and keep it pending while the connection is idle. */
  watch(onEvent: () => void): void {
    this.start = this.end = 0;
    const p = this.io.read(this.buf);
    this.pending = p;
    // While idle, any outcome (EOF, reset, unsolicited bytes) means the connection is unusable.
    p.then(() => {
      if (this.state === "idle") onEvent();
    }, () => {
      if (this.state === "idle") onEvent();
    });
  }

  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.idleTimer);
    try {
      this.io.close();
    } catch { /* already closed */ }
  }
}

/** node:tls socket as an {@link Io}: used only for `verify: false`. */
class NodeTlsIo implements Io {
  #sock: nodeTls.TLSSocket;
  #queue: Uint8Array[] = [];
  #queued = 0;
  #ended = false;
  #error: Error | null = null;
  #wake: (() => void) | null = null;

  constructor(sock: nodeTls.TLSSocket) {
    this.#sock = sock;
    sock.on("data", (d: Uint8Array) => {
      this.#queue.push(d);
      this.#queued += d.length;
      // Back-pressure: stop the socket while the reader is behind.
      if (this.#queued > 4 * READ_BUFFER) sock.pause();
      this.#notify();
    });
    sock.on("end", () => {
      this.#ended = true;
      this.#notify();
    });
    sock.on("close", () => {
      this.#ended = true;
      this.#notify();
    });
    sock.on("error", (e: Error) => {
      this.#error ??= e;
      this.#notify();
    });
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  async read(p: Uint8Array): Promise<number | null> {
    while (this.#queue.length === 0) {
      if (this.#error) throw this.#error;
      if (this.#ended) return null;
      await new Promise<void>((r) => this.#wake = r);
    }
    let n = 0;
    while (n < p.length && this.#queue.length > 0) {
      const head = this.#queue[0];
      const take = Math.min(head.length, p.length - n);
      p.set(head.subarray(0, take), n);
      n += take;
      if (take === head.length) this.#queue.shift();
      else this.#queue[0] = head.subarray(take);
    }
    this.#queued -= n;
    if (this.#queued <= READ_BUFFER && this.#sock.isPaused()) this.#sock.resume();
    return n;
  }

  write(p: Uint8Array): Promise<number> {
    if (this.#error) return Promise.reject(this.#error);
    // node may keep a reference until flushed; callers reuse nothing before the promise settles.
    return new Promise((resolve, reject) => {
      this.#sock.write(p, (e?: Error | null) => e ? reject(e) : resolve(p.length));
    });
  }

  close(): void {
    this.#sock.destroy();
    this.#ended = true;
    this.#notify();
  }

  closeWrite(): Promise<void> {
    return new Promise((resolve) => this.#sock.end(() => resolve()));
  }

  ref(): void {
    this.#sock.ref();
  }

  unref(): void {
    this.#sock.unref();
  }
}

function latin1Bytes(s: string): Uint8Array {
  if (ASCII.test(s)) return UTF8.encode(s);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function hostHeader(t: UpstreamTarget): string {
  const host = bracketHost(t.host);
  return t.port === (t.tls ? 443 : 80) ? host : `${host}:${t.port}`;
}

type BodyPlan =
  | { kind: "none" }
  | { kind: "bytes"; data: Uint8Array }
  | { kind: "stream"; stream: ReadableStream<Uint8Array>; length: number | undefined };

/** Validate the request and build its head; throws UpstreamError("protocol") for bad input. */
function buildHead(
  t: UpstreamTarget,
  req: UpstreamRequest,
  where: string,
): { head: Uint8Array; plan: BodyPlan; close: boolean } {
  const refuse = (what: string): never => {
    throw new UpstreamError("protocol", `Cannot send request to ${where}: ${what}`);
  };
  if (!TOKEN.test(req.method)) refuse(`invalid method ${JSON.stringify(req.method)}`);
  if (req.path.length === 0 || BAD_PATH.test(req.path)) {
    refuse(`invalid request-target ${JSON.stringify(req.path)}`);
  }
  let s = `${req.method} ${req.path} HTTP/1.1\r\n`;
  let hasHost = false;
  for (const [name, value] of req.headers) {
    if (!TOKEN.test(name)) refuse(`invalid header name ${JSON.stringify(name)}`);
    if (BAD_VALUE.test(value)) {
      refuse(`header ${name} has a control character or a non-latin1 char in its value`);
    }
    const lower = name.length === 4 || name.length === 14 || name.length === 17
      ? name.toLowerCase()
      : "";
    if (lower === "content-length" || lower === "transfer-encoding") continue;
    if (lower === "host") hasHost = true;
    s += `${name}: ${value}\r\n`;
  }
  if (!hasHost) s = s.replace("\r\n", `\r\nHost: ${hostHeader(t)}\r\n`);
  let plan: BodyPlan;
  const body = req.body;
  if (body === null) {
    if (req.bodyLength !== undefined && req.bodyLength !== 0) {
      refuse(`bodyLength ${req.bodyLength} given without a body`);
    }
    if (METHODS_WITH_BODY.has(req.method)) s += "Content-Length: 0\r\n";
    plan = { kind: "none" };
  } else if (body instanceof Uint8Array) {
    if (req.bodyLength !== undefined && req.bodyLength !== body.length) {
      refuse(`bodyLength ${req.bodyLength} differs from the body's ${body.length} bytes`);
    }
    if (body.length > 0 || METHODS_WITH_BODY.has(req.method)) {
      s += `Content-Length: ${body.length}\r\n`;
    }
    plan = body.length > 0 ? { kind: "bytes", data: body } : { kind: "none" };
  } else {
    const n = req.bodyLength;
    if (n !== undefined) {
      if (!Number.isSafeInteger(n) || n < 0) refuse(`invalid bodyLength ${n}`);
      s += `Content-Length: ${n}\r\n`;
    } else {
      s += "Transfer-Encoding: chunked\r\n";
    }
    plan = { kind: "stream", stream: body, length: n };
  }
  s += "\r\n";
  return {
    head: latin1Bytes(s),
    plan,
    close: connectionTokens(req.headers).has("close"),
  };
}

/** Key for pooling: different address, scheme or trust settings never share a connection. */
// The pool key must separate different trust settings, so it covers the CA
// contents; but the system bundle alone is ~220 KB, and joining it per request
// cost a third of sluice's CPU (profiled, docs/performance.md). So each CA
// array's contents are turned into a short id once (cached by the array
// object; lib/upstream/trust.ts hands out the same array per host), and equal contents
// share an id.
const caIdsByArray = new WeakMap<readonly string[], number>();
const caIdsByContent = new Map<string, number>();

function caKey(ca: readonly string[] | undefined): string {
  if (ca === undefined) return "default";
  let id = caIdsByArray.get(ca);
  if (id === undefined) {
    const content = ca.join("\n");
    id = caIdsByContent.get(content);
    if (id === undefined) {
      id = caIdsByContent.size + 1;
      caIdsByContent.set(content, id);
    }
    caIdsByArray.set(ca, id);
  }
  return `ca${id}`;
}

function poolKey(t: UpstreamTarget): string {
  return `${t.host}|${t.port}|${t.address}|${t.tls ? 1 : 0}|${t.verify ? 1 : 0}|${
    caKey(t.caCerts)
  }`;
}

/** How far sending a request got; shared between the sender and the exchange. */
type SendState = {
  done: boolean;
  wroteAny: boolean;
  sourceFailed: boolean;
  /** Stop reading the request body stream (set while one is being sent). */
  stop?: (reason: unknown) => void;
};

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
export class UpstreamPool {
  readonly #maxIdle: number;
  readonly #maxIdleTotal: number;
  /** Every idle connection, least recently released first. */
  readonly #idleOrder = new Set<Connection>();
  readonly #idleMs: number;
  readonly #connectMs: number;
  readonly #headerMs: number;
  readonly #idle = new Map<string, Connection[]>();
  readonly #active = new Set<Connection>();
  #created = 0;
  #reused = 0;
  #closed = false;

  /** @param opts pool sizes and timeouts; see {@link UpstreamPoolOptions} for defaults */
  constructor(opts?: UpstreamPoolOptions) {
    this.#maxIdle = opts?.maxIdlePerHost ?? 32;
    this.#maxIdleTotal = opts?.maxIdleTotal ?? 256;
    this.#idleMs = opts?.idleTimeoutMs ?? 30_000;
    this.#connectMs = opts?.connectTimeoutMs ?? 10_000;
    this.#headerMs = opts?.headerTimeoutMs ?? 30_000;
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
    if (this.#closed) {
      throw new UpstreamError("connect", `Cannot send request to ${where}: the pool is closed`);
    }
    const built = buildHead(target, req, where);
    const key = poolKey(target);
    const idle = this.#takeIdle(key);
    if (idle !== undefined) {
      this.#reused++;
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
    const conn = await this.#connect(target, key, where, signal);
    try {
      return await this.#exchange(conn, req, built, where, signal);
    } catch (e) {
      throw e instanceof ExchangeFailure ? e.error : e;
    }
  }

  /** Close idle connections now; connections in use close when their response ends. */
  close(): void {
    this.#closed = true;
    for (const list of this.#idle.values()) for (const c of list) c.destroy();
    this.#idle.clear();
    this.#idleOrder.clear();
  }

  /** @returns pool counters */
  stats(): UpstreamPoolStats {
    let idle = 0;
    for (const list of this.#idle.values()) idle += list.length;
    return { idle, active: this.#active.size, created: this.#created, reused: this.#reused };
  }

  #takeIdle(key: string): Connection | undefined {
    const list = this.#idle.get(key);
    if (list === undefined) return undefined;
    // Most recently used first: it is the least likely to have been closed by the server.
    const conn = list.pop();
    if (list.length === 0) this.#idle.delete(key);
    if (conn === undefined) return undefined;
    this.#idleOrder.delete(conn);
    clearTimeout(conn.idleTimer);
    conn.state = "active";
    conn.io.ref?.();
    this.#active.add(conn);
    return conn;
  }

  #release(conn: Connection, reusable: boolean): void {
    this.#active.delete(conn);
    if (!reusable || this.#closed || conn.closed || conn.start !== conn.end) {
      conn.destroy();
      return;
    }
    conn.state = "idle";
    let list = this.#idle.get(conn.key);
    if (list === undefined) this.#idle.set(conn.key, list = []);
    list.push(conn);
    this.#idleOrder.add(conn);
    if (list.length > this.#maxIdle) this.#evict(list[0]);
    for (const oldest of this.#idleOrder) {
      if (this.#idleOrder.size <= this.#maxIdleTotal) break;
      this.#evict(oldest);
    }
    const drop = (): void => this.#evict(conn);
    const timer = setTimeout(drop, this.#idleMs);
    Deno.unrefTimer(timer);
    conn.idleTimer = timer;
    conn.watch(drop);
    // An idle connection must not keep the process alive.
    conn.io.unref?.();
  }

  /** Remove an idle connection from the pool and close it. */
  #evict(conn: Connection): void {
    this.#idleOrder.delete(conn);
    const l = this.#idle.get(conn.key);
    const i = l?.indexOf(conn) ?? -1;
    if (l !== undefined && i >= 0) {
      l.splice(i, 1);
      if (l.length === 0) this.#idle.delete(conn.key);
    }
    conn.destroy();
  }

  async #connect(
    t: UpstreamTarget,
    key: string,
    where: string,
    signal?: AbortSignal,
  ): Promise<Connection> {
    const ac = new AbortController();
    let timedOut = false;
    const onAbort = (): void => ac.abort(signal?.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    const timer = setTimeout(() => {
      timedOut = true;
      ac.abort();
    }, this.#connectMs);
    const timeoutError = (): UpstreamError =>
      new UpstreamError(
        "timeout",
        `Connecting to ${where} (${t.address}) timed out after ${this.#connectMs} ms`,
      );
    let io: Io | undefined;
    try {
      if (t.tls && !t.verify) {
        io = await this.#connectNodeTls(t, where, ac.signal, () => timedOut);
      } else {
        let tcp: Deno.TcpConn;
        try {
          tcp = await Deno.connect({ hostname: t.address, port: t.port, signal: ac.signal });
        } catch (e) {
          if (timedOut) throw timeoutError();
          if (signal?.aborted) throw signal.reason;
          throw new UpstreamError(
            "connect",
            `Cannot connect to ${where} (${t.address}): ${errorText(e)}`,
            { cause: e },
          );
        }
        io = tcp;
        tcp.setNoDelay(true); // before TLS: every record must leave at once (PLATFORM.md)
        if (t.tls) {
          const onAbortTls = (): void => io?.close();
          ac.signal.addEventListener("abort", onAbortTls, { once: true });
          try {
            const tls = await Deno.startTls(tcp, {
              hostname: t.host,
              caCerts: t.caCerts,
              alpnProtocols: ["http/1.1"],
            });
            io = tls;
            await tls.handshake();
          } catch (e) {
            if (timedOut) throw timeoutError();
            if (signal?.aborted) throw signal.reason;
            const msg = errorText(e);
            const verification = /certificate|UnknownIssuer|NotValidForName|Expired/i.test(msg);
            throw new UpstreamError(
              "tls",
              `${
                verification ? "TLS verification failed" : "TLS handshake failed"
              } for ${where}: ${msg}`,
              { cause: e },
            );
          } finally {
            ac.signal.removeEventListener("abort", onAbortTls);
          }
        }
      }
      if (ac.signal.aborted) throw timedOut ? timeoutError() : signal?.reason;
    } catch (e) {
      try {
        io?.close();
      } catch { /* already closed */ }
      throw e;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
    this.#created++;
    const conn = new Connection(io, key);
    if (this.#closed) {
      conn.destroy();
      throw new UpstreamError("connect", `Cannot send request to ${where}: the pool is closed`);
    }
    this.#active.add(conn);
    return conn;
  }

  #connectNodeTls(
    t: UpstreamTarget,
    where: string,
    signal: AbortSignal,
    timedOut: () => boolean,
  ): Promise<Io> {
    return new Promise((resolve, reject) => {
      const isIp = /^[\d.]+$|:/.test(t.host);
      const sock = nodeTls.connect({
        host: t.address,
        port: t.port,
        // SNI must be a name; an IP literal is not sent (RFC 6066 3).
        servername: isIp ? undefined : t.host,
        rejectUnauthorized: false,
        ALPNProtocols: ["http/1.1"],
      });
      sock.setNoDelay(true);
      const io = new NodeTlsIo(sock);
      const fail = (e: unknown): void => {
        cleanup();
        sock.destroy();
        if (timedOut()) {
          reject(
            new UpstreamError(
              "timeout",
              `Connecting to ${where} (${t.address}) timed out after ${this.#connectMs} ms`,
            ),
          );
        } else if (signal.aborted) reject(signal.reason);
        else {
          const msg = errorText(e);
          const tcp = /ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|refused/i.test(msg);
          reject(
            new UpstreamError(
              tcp ? "connect" : "tls",
              tcp
                ? `Cannot connect to ${where} (${t.address}): ${msg}`
                : `TLS handshake failed for ${where}: ${msg}`,
              { cause: e },
            ),
          );
        }
      };
      const onError = (e: Error): void => fail(e);
      const onAbort = (): void => fail(signal.reason);
      const cleanup = (): void => {
        sock.off("error", onError);
        signal.removeEventListener("abort", onAbort);
      };
      sock.once("error", onError);
      signal.addEventListener("abort", onAbort, { once: true });
      sock.once("secureConnect", () => {
        cleanup();
        resolve(io);
      });
    });
  }

  /**
   * Send the request on `conn` and read the response head. Failures that the caller may
   * retry come as {@link ExchangeFailure}; the connection is closed on every failure.
   */
  async #exchange(
    conn: Connection,
    req: UpstreamRequest,
    built: { head: Uint8Array; plan: BodyPlan; close: boolean },
    where: string,
    signal?: AbortSignal,
  ): Promise<UpstreamResponse> {
    const readAtStart = conn.bytesRead;
    let headerTimer: Timer | undefined;
    let failure: unknown;
    /** Set once the head arrived or the exchange failed: no header timer after that. */
    let headPhaseOver = false;
    const fail = (e: unknown): void => {
      failure ??= e;
      conn.destroy();
    };
    const startHeaderTimer = (): void => {
      if (headPhaseOver || headerTimer !== undefined) return;
      headerTimer = setTimeout(() => {
        fail(
          new UpstreamError(
            "timeout",
            `Upstream ${where} sent no response head within ${this.#headerMs} ms`,
          ),
        );
      }, this.#headerMs);
    };
    const onAbort = (): void => fail(signal?.reason);
    signal?.addEventListener("abort", onAbort, { once: true });

    // Send in the background: the response may start (or the server may refuse) before the
    // body is through, and a large upload must not block reading the answer.
    const send: SendState = { done: false, wroteAny: false, sourceFailed: false };
    const sending = this.#send(conn, built, send, where).then(() => {
      send.done = true;
      startHeaderTimer();
    }, (e) => {
      // After the head, a failed write only means the server stopped reading (it answered
      // early); the answer can still be read, the connection just cannot be reused.
      if (!headPhaseOver || send.sourceFailed) fail(e);
    });

    let head: ResponseHead;
    try {
      head = await this.#readHead(conn, where);
      headPhaseOver = true;
    } catch (e) {
      headPhaseOver = true;
      clearTimeout(headerTimer);
      signal?.removeEventListener("abort", onAbort);
      conn.destroy();
      send.stop?.(e);
      this.#active.delete(conn);
      const error = failure ?? e;
      // Retry only a plain connection loss with nothing received: not a timeout, an abort, a
      // protocol error or a failing request body.
      const lost = conn.bytesRead === readAtStart && error instanceof UpstreamError &&
        error.kind === "reset";
      throw new ExchangeFailure(error, lost, send.wroteAny);
    }
    clearTimeout(headerTimer);
    const bytesIn = (): number => conn.bytesRead - readAtStart - (conn.end - conn.start);

    if (head.status === 101) {
      signal?.removeEventListener("abort", onAbort);
      this.#active.delete(conn);
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
      signal?.removeEventListener("abort", onAbort);
      fail(e);
      this.#active.delete(conn);
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
      signal?.removeEventListener("abort", onAbort);
      // The request body must have gone out entirely, or the server is still reading it.
      const settle = (): void =>
        this.#release(conn, ok && keepAlive && send.done && failure === undefined);
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
    const next = this.#bodyReader(conn, framing, where);
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

  /** Write the head and the body; `state` tells the exchange how far it got. */
  async #send(
    conn: Connection,
    built: { head: Uint8Array; plan: BodyPlan },
    state: SendState,
    where: string,
  ): Promise<void> {
    const { head, plan } = built;
    const io = conn.io;
    const write = async (b: Uint8Array): Promise<void> => {
      try {
        let off = 0;
        while (off < b.length) {
          off += await io.write(b.subarray(off));
          state.wroteAny = true;
        }
      } catch (e) {
        throw new UpstreamError(
          "reset",
          `Upstream ${where} closed the connection while the request was sent: ${errorText(e)}`,
          { cause: e },
        );
      }
    };
    if (plan.kind === "none") return await write(head);
    if (plan.kind === "bytes") {
      if (plan.data.length <= COALESCE_LIMIT) return await write(concat(head, plan.data));
      await write(head);
      return await write(plan.data);
    }
    const reader = plan.stream.getReader();
    state.stop = (reason) => reader.cancel(reason).catch(() => {});
    const sourceError = (what: string, cause?: unknown): UpstreamError => {
      state.sourceFailed = true;
      return new UpstreamError(
        "protocol",
        `Cannot send request body to ${where}: ${what}`,
        { cause },
      );
    };
    const chunked = plan.length === undefined;
    let sent = 0;
    const frame = (chunk: Uint8Array): Uint8Array => {
      sent += chunk.length;
      if (!chunked && sent > plan.length!) {
        throw sourceError(`the body stream gave more than bodyLength ${plan.length} bytes`);
      }
      return chunked ? encodeChunk(chunk) : chunk;
    };
    const read = async (): Promise<ReadableStreamReadResult<Uint8Array>> => {
      try {
        return await reader.read();
      } catch (e) {
        throw sourceError(`the body stream failed: ${errorText(e)}`, e);
      }
    };
    try {
      // Head and first chunk in one write when the chunk is ready now; else don't wait for it
      // (the client may be waiting for our 100 Continue before it sends anything).
      const firstRead = read();
      firstRead.catch(() => {}); // awaited below; this only keeps an early failure handled
      let timer: Timer | undefined;
      const first = await Promise.race([
        firstRead,
        new Promise<undefined>((r) => timer = setTimeout(() => r(undefined), 0)),
      ]);
      clearTimeout(timer);
      let r: ReadableStreamReadResult<Uint8Array>;
      if (first === undefined) {
        await write(head);
        r = await firstRead;
      } else {
        r = first;
        if (!r.done) {
          await write(concat(head, frame(r.value)));
          r = await read();
        } else {
          await write(head);
        }
      }
      for (; !r.done; r = await read()) await write(frame(r.value));
      if (chunked) await write(LAST_CHUNK);
      else if (sent !== plan.length) {
        throw sourceError(`the body stream ended after ${sent} of ${plan.length} bytes`);
      }
    } catch (e) {
      reader.cancel(e).catch(() => {});
      throw e;
    } finally {
      reader.releaseLock();
    }
  }

  /** Read until a complete final response head; skips 1xx interim responses except 101. */
  async #readHead(conn: Connection, where: string): Promise<ResponseHead> {
    while (true) {
      const r = parseResponseHead(conn.buf.subarray(conn.start, conn.end));
      if (r.kind === "ok") {
        conn.start += r.head.headerBytes;
        if (r.head.status >= 200 || r.head.status === 101) return r.head;
        continue; // 100 Continue, 102, 103: interim, nothing to forward
      }
      if (r.kind === "invalid") {
        throw new UpstreamError("protocol", `Invalid response head from ${where}: ${r.reason}`);
      }
      let n: number | null;
      try {
        n = await conn.fill();
      } catch (e) {
        throw new UpstreamError(
          "reset",
          `Upstream ${where} reset the connection before the response head: ${errorText(e)}`,
          { cause: e },
        );
      }
      if (n === null) {
        throw new UpstreamError(
          "reset",
          `Upstream ${where} closed the connection before the response head`,
        );
      }
    }
  }

  /** A function returning the next body piece (a copy), or null at the end of the body. */
  #bodyReader(
    conn: Connection,
    framing: ResponseFraming,
    where: string,
  ): () => Promise<Uint8Array | null> {
    const fill = async (what: string): Promise<boolean> => {
      let n: number | null;
      try {
        n = await conn.fill();
      } catch (e) {
        throw new UpstreamError(
          "reset",
          `Upstream ${where} reset the connection during the body: ${errorText(e)}`,
          { cause: e },
        );
      }
      if (n === null && what !== "") {
        throw new UpstreamError("reset", `Upstream ${where} closed the connection ${what}`);
      }
      return n !== null;
    };
    if (framing.kind === "length") {
      let remaining = framing.length;
      return async () => {
        if (remaining === 0) return null;
        if (conn.start === conn.end) {
          conn.start = conn.end = 0;
          await fill(`after ${framing.length - remaining} of ${framing.length} body bytes`);
        }
        const take = Math.min(remaining, conn.end - conn.start);
        const out = conn.buf.slice(conn.start, conn.start + take);
        conn.start += take;
        remaining -= take;
        return out;
      };
    }
    if (framing.kind === "close") {
      return async () => {
        if (conn.start === conn.end) {
          conn.start = conn.end = 0;
          if (!await fill("")) return null;
        }
        const out = conn.buf.slice(conn.start, conn.end);
        conn.start = conn.end;
        return out;
      };
    }
    const decoder = new ChunkedDecoder();
    return async () => {
      while (true) {
        if (decoder.done) return null;
        if (conn.start === conn.end) {
          conn.start = conn.end = 0;
          await fill("in the middle of a chunked body");
        }
        const pieces: Uint8Array[] = [];
        const r = decoder.decode(conn.buf.subarray(conn.start, conn.end), pieces);
        if (r.kind === "invalid") {
          throw new UpstreamError("protocol", `Invalid chunked body from ${where}: ${r.reason}`);
        }
        conn.start += r.consumed;
        if (pieces.length === 1) return pieces[0].slice();
        if (pieces.length > 1) {
          const total = pieces.reduce((n, p) => n + p.length, 0);
          const out = new Uint8Array(total);
          let at = 0;
          for (const p of pieces) {
            out.set(p, at);
            at += p.length;
          }
          return out;
        }
      }
    };
  }
}

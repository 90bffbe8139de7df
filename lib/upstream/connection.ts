/**
 * One upstream connection: opening it ({@link dial}: TCP, then TLS) and the buffered
 * {@link Connection} the pool keeps and the exchange reads from. The rest of the client never
 * sees a socket API, only the small {@link Io} interface.
 *
 * TCP_NODELAY is set on the TCP socket before TLS starts, so every record leaves at once.
 *
 * `verify: false` goes through node:tls with `rejectUnauthorized: false`, wrapped in the same
 * read/write interface ({@link NodeTlsIo}): `Deno.startTls` can only skip the hostname check,
 * not the chain check (its internal `rejectUnauthorized` switch is not reachable from user code
 * in Deno 2.9.6), and pinning the server's own certificate as a CA fails for ordinary non-CA
 * leaves. It is slower, which is acceptable for the rare host a policy marks unverified. A
 * connection that presents a client certificate (a `client_cert` credential) takes the same
 * route, verified: `Deno.startTls` takes no client certificate, and `Deno.connectTls`, which
 * does, would resolve the name again instead of dialling the address sluice vetted.
 *
 * @module
 */

import * as nodeTls from "node:tls";
import { formatHostPort } from "../../policy/address.ts";
import type { Deadlines, Expiring } from "./deadlines.ts";
import { errorText, type UpstreamConn, UpstreamError, type UpstreamTarget } from "./types.ts";

const READ_BUFFER = 64 * 1024;

/** A timer handle, as `setTimeout` returns it. */
export type Timer = ReturnType<typeof setTimeout>;

/** Bytes from a connection: Deno TcpConn/TlsConn or the node:tls adapter. */
export type Io = UpstreamConn & {
  ref?(): void;
  unref?(): void;
  /** The protocol the TLS handshake chose by ALPN ("h2", "http/1.1"), set by {@link dial}. */
  protocol?: string;
};

/** ALPN offers: HTTP/1.1 alone (the default), or HTTP/2 first. */
export const ALPN_HTTP1: string[] = ["http/1.1"];
export const ALPN_H2: string[] = ["h2", "http/1.1"];

/** One upstream connection and its read buffer. */
export class Connection implements Expiring {
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
  /**
   * The connection's one deadline at a time (idle in the pool, or waiting for a response head),
   * checked by the pool's sweep (deadlines.ts); destroying the connection disarms it.
   */
  deadline = Infinity;
  expire: (() => void) | undefined = undefined;
  deadlines: Deadlines | undefined = undefined;
  /** Set by the pool: take this connection out of the pool and close it. */
  evict: (() => void) | undefined = undefined;
  closed = false;
  state: "active" | "idle" = "active";
  /** What {@link watch} calls; its handlers are made once per connection, not per idle spell. */
  #onIdleEvent: (() => void) | undefined = undefined;
  readonly #watched = (): void => {
    if (this.state === "idle") this.#onIdleEvent?.();
  };

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
    this.#onIdleEvent = onEvent;
    // While idle, any outcome (EOF, reset, unsolicited bytes) means the connection is unusable.
    p.then(this.#watched, this.#watched);
  }

  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    this.deadlines?.disarm(this);
    try {
      this.io.close();
    } catch { /* already closed */ }
  }
}

/**
 * Read more bytes into `conn`'s buffer, a failed read reported as an
 * {@link UpstreamError} "reset".
 *
 * @param conn the connection
 * @param where `host:port`, for the message
 * @param when when in the exchange, for the message ("during the body")
 * @returns the bytes read, or null at end of stream
 */
export async function fillOrReset(
  conn: Connection,
  where: string,
  when: string,
): Promise<number | null> {
  try {
    return await conn.fill();
  } catch (e) {
    throw new UpstreamError(
      "reset",
      `Upstream ${where} reset the connection ${when}: ${errorText(e)}`,
      { cause: e },
    );
  }
}

/** node:tls socket as an {@link Io}: for `verify: false` and client certificates. */
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

/**
 * The one TCP connect with a deadline in sluice: TCP_NODELAY set, a connection that completes
 * after the deadline closed, failures as {@link UpstreamError} `connect` or `timeout`. The HTTP
 * client's dial and the passthrough splice both use it.
 *
 * @param signal aborts the attempt too (the caller's own deadline, or shutdown)
 */
export async function openTcp(
  hostname: string,
  port: number,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<Deno.TcpConn> {
  const where = formatHostPort(hostname, port);
  const ac = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    ac.abort();
  }, timeoutMs);
  const onAbort = (): void => ac.abort(signal?.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const conn = await Deno.connect({ hostname, port, signal: ac.signal });
    conn.setNoDelay(true); // before TLS: every record must leave at once (PLATFORM.md)
    return conn;
  } catch (e) {
    if (timedOut) {
      throw new UpstreamError("timeout", `connecting to ${where} timed out after ${timeoutMs} ms`);
    }
    throw new UpstreamError("connect", `cannot connect to ${where}: ${errorText(e)}`, {
      cause: e,
    });
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  }
}

/**
 * Open a connection to `t.address`: TCP with TCP_NODELAY, then TLS for `t.host` when `t.tls`
 * (through node:tls when `t.verify` is false or a client certificate is presented), all within
 * `connectMs`.
 *
 * @param t where to connect
 * @param where `host:port`, for messages
 * @param connectMs the deadline for TCP and TLS together
 * @param signal aborts connecting
 * @returns the open connection
 * @throws {UpstreamError} connect, tls or timeout; the signal's reason when aborted
 */
export async function dial(
  t: UpstreamTarget,
  where: string,
  connectMs: number,
  signal?: AbortSignal,
  alpn: string[] = ALPN_HTTP1,
): Promise<Io> {
  const ac = new AbortController();
  let timedOut = false;
  const onAbort = (): void => ac.abort(signal?.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  const timer = setTimeout(() => {
    timedOut = true;
    ac.abort();
  }, connectMs);
  const timeoutError = (): UpstreamError =>
    new UpstreamError(
      "timeout",
      `Connecting to ${where} (${t.address}) timed out after ${connectMs} ms`,
    );
  let io: Io | undefined;
  try {
    if (t.tls && (!t.verify || t.clientCert)) {
      io = await connectNodeTls(t, where, connectMs, ac.signal, () => timedOut);
    } else {
      let tcp: Deno.TcpConn;
      try {
        tcp = await openTcp(t.address, t.port, connectMs, ac.signal);
      } catch (e) {
        if (timedOut || (e as UpstreamError).kind === "timeout") throw timeoutError();
        if (signal?.aborted) throw signal.reason;
        throw new UpstreamError(
          "connect",
          `Cannot connect to ${where} (${t.address}): ${errorText((e as Error).cause ?? e)}`,
          { cause: e },
        );
      }
      io = tcp;
      if (t.tls) {
        const onAbortTls = (): void => io?.close();
        ac.signal.addEventListener("abort", onAbortTls, { once: true });
        try {
          const tls = await Deno.startTls(tcp, {
            hostname: t.host,
            caCerts: t.caCerts,
            alpnProtocols: alpn,
          });
          io = tls;
          const done = await tls.handshake();
          (io as Io).protocol = done.alpnProtocol ?? undefined;
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
  return io;
}

function connectNodeTls(
  t: UpstreamTarget,
  where: string,
  connectMs: number,
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
      // Verified like Deno's client when the policy says so (node:tls is here for the client
      // certificate), against the same CA list.
      rejectUnauthorized: t.verify,
      ...(t.verify && t.caCerts ? { ca: t.caCerts } : {}),
      ...(t.clientCert ? { cert: t.clientCert.cert, key: t.clientCert.key.reveal() } : {}),
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
            `Connecting to ${where} (${t.address}) timed out after ${connectMs} ms`,
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

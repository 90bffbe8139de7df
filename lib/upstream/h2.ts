/**
 * sluice's upstream HTTP/2: pooled, multiplexed node:http2 client sessions over TLS
 * connections sluice dialled itself (connection.ts: resolver, private guard, trust, ALPN
 * `h2`), wrapped by lib/http2/duplex.ts.
 *
 * Why node:http2 and not fetch or an own frame layer: fetch (Deno's hyper client) has no
 * response trailers and decompresses bodies; node:http2 in Deno 2.9.6 is a native nghttp2-style
 * implementation that gives trailers, RST_STREAM codes, GOAWAY, flow control and
 * SETTINGS_MAX_CONCURRENT_STREAMS, and runs over any Duplex. Writing HTTP/2 by hand would be
 * hundreds of lines of framing, HPACK and flow control for no measured gain (docs/data-path.md).
 *
 * One session per upstream key carries up to the server's MAX_CONCURRENT_STREAMS streams; more
 * sessions open when those are busy; a session that got GOAWAY or failed takes no new stream and
 * closes when its last one ends; an idle session closes after the idle timeout.
 *
 * @module
 */

import { bracketHost, formatHostPort } from "../../policy/address.ts";
import http2 from "node:http2";
import { drained, duplexOf } from "../http2/duplex.ts";
import { CONNECTION_FIELDS } from "../http2/meta.ts";
import type { Io } from "./connection.ts";
import {
  errorText,
  UpstreamError,
  type UpstreamRequest,
  type UpstreamResponse,
  type UpstreamTarget,
} from "./types.ts";

const { NGHTTP2_CANCEL } = http2.constants;

/**
 * Request fields HTTP/2 forbids (RFC 9113 8.2.2) or that the pseudo-headers replace. `te` is
 * handled apart: only `te: trailers` may be sent.
 */
const NOT_IN_H2 = new Set([...CONNECTION_FIELDS, "host", "http2-settings", "content-length"]);

/** Streams per session when the server sets no limit (nghttp2's own default is unbounded). */
const DEFAULT_MAX_STREAMS = 100;

/** One client session to an upstream. */
class Session {
  readonly key: string;
  readonly authority: string;
  readonly session: http2.ClientHttp2Session;
  readonly io: Io;
  active = 0;
  /** False after GOAWAY, an error or close: no new stream. */
  usable = true;
  idleTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(key: string, authority: string, session: http2.ClientHttp2Session, io: Io) {
    this.key = key;
    this.authority = authority;
    this.session = session;
    this.io = io;
  }

  get capacity(): number {
    const max = this.session.remoteSettings?.maxConcurrentStreams;
    return max === undefined || max > DEFAULT_MAX_STREAMS ? DEFAULT_MAX_STREAMS : max;
  }
}

/** Counters of the HTTP/2 sessions. */
export type H2Stats = { sessions: number; streams: number; created: number };

/** Options of {@link H2Sessions}. */
export type H2Options = {
  /** From the request fully sent until the response head; default 30 s. */
  headerTimeoutMs: number;
  /** An idle session is closed after this long; default 30 s. */
  idleTimeoutMs: number;
};

/**
 * The `:authority` of a target: host, and the port unless it is 443.
 *
 * @param t the target
 * @returns the authority
 */
export function authorityOf(t: UpstreamTarget): string {
  return t.port === 443 ? bracketHost(t.host) : formatHostPort(t.host, t.port);
}

/** The HTTP/2 sessions of one UpstreamPool. */
export class H2Sessions {
  readonly #opts: H2Options;
  readonly #byKey = new Map<string, Session[]>();
  #created = 0;
  #closed = false;

  /** @param opts timeouts */
  constructor(opts: H2Options) {
    this.#opts = opts;
  }

  /**
   * A session for `key` with a free stream, if one is open.
   *
   * @param key the target's pool key
   * @returns the session, or undefined
   */
  take(key: string): Session | undefined {
    for (const s of this.#byKey.get(key) ?? []) {
      if (s.usable && s.active < s.capacity) return s;
    }
    return undefined;
  }

  /**
   * Starts an HTTP/2 session on a connection whose TLS handshake chose `h2`.
   *
   * @param io the connection; the session owns it
   * @param key the target's pool key
   * @param t the target (for `:authority`)
   * @returns the session
   */
  adopt(io: Io, key: string, t: UpstreamTarget): Session {
    this.#created++;
    const authority = authorityOf(t);
    const socket = duplexOf(io);
    const session = http2.connect(`https://${authority}`, {
      createConnection: () => socket as never,
    });
    const s = new Session(key, authority, session, io);
    const retire = (): void => {
      s.usable = false;
      if (s.active === 0) closeIdle(session);
    };
    session.on("goaway", retire);
    session.on("error", () => {
      s.usable = false;
    });
    session.on("close", () => {
      s.usable = false;
      clearTimeout(s.idleTimer);
      const list = this.#byKey.get(key);
      const i = list?.indexOf(s) ?? -1;
      if (list && i >= 0) {
        list.splice(i, 1);
        if (list.length === 0) this.#byKey.delete(key);
      }
    });
    let list = this.#byKey.get(key);
    if (list === undefined) this.#byKey.set(key, list = []);
    list.push(s);
    if (this.#closed) retire();
    return s;
  }

  /**
   * One exchange on a stream of `s`: returns when the response head has arrived; the body
   * streams (with HTTP/2 flow control: a body the client does not read stops the upstream);
   * `trailers` settles when the body has ended.
   *
   * @param s the session (from {@link take} or {@link adopt})
   * @param req the request
   * @param where `host:port`, for messages
   * @param signal aborts the stream
   * @returns the response
   * @throws {UpstreamError} when the stream is refused or reset before the response head
   */
  request(
    s: Session,
    req: UpstreamRequest,
    where: string,
    signal?: AbortSignal,
  ): Promise<UpstreamResponse> {
    signal?.throwIfAborted();
    const headers: Record<string, string | string[]> = {
      ":method": req.method,
      ":path": req.path,
      ":scheme": "https",
      ":authority": s.authority,
    };
    for (const [name, value] of req.headers) {
      const lower = name.toLowerCase();
      if (lower.startsWith(":")) continue;
      if (NOT_IN_H2.has(lower)) continue;
      if (lower === "te") {
        if (value.trim().toLowerCase() === "trailers") headers.te = "trailers";
        continue;
      }
      const prev = headers[lower];
      if (prev === undefined) headers[lower] = value;
      else if (Array.isArray(prev)) prev.push(value);
      else headers[lower] = [prev, value];
    }
    const body = req.body;
    if (body instanceof Uint8Array) headers["content-length"] = String(body.length);
    else if (body !== null && req.bodyLength !== undefined) {
      headers["content-length"] = String(req.bodyLength);
    }

    s.active++;
    clearTimeout(s.idleTimer);
    s.io.ref?.();
    let stream: http2.ClientHttp2Stream;
    try {
      stream = s.session.request(headers, { endStream: body === null });
    } catch (e) {
      this.#streamEnded(s);
      throw new UpstreamError("reset", `Cannot open a stream to ${where}: ${errorText(e)}`, {
        cause: e,
      });
    }
    // Errors are read from the events below; one emitted after them must not go uncaught.
    stream.on("error", () => {});
    let ended = false;
    const end = (): void => {
      if (ended) return;
      ended = true;
      signal?.removeEventListener("abort", onAbort);
      this.#streamEnded(s);
    };
    const onAbort = (): void => {
      if (!stream.closed) stream.close(NGHTTP2_CANCEL);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    stream.on("close", end);

    let headerTimer: ReturnType<typeof setTimeout> | undefined;
    let responded = false;
    const startHeaderTimer = (): void => {
      if (responded || stream.closed) return;
      headerTimer = setTimeout(() => {
        stream.destroy(
          new UpstreamError(
            "timeout",
            `Upstream ${where} sent no response head within ${this.#opts.headerTimeoutMs} ms`,
          ),
        );
      }, this.#opts.headerTimeoutMs);
    };
    if (body === null) startHeaderTimer();
    else if (body instanceof Uint8Array) stream.end(body, startHeaderTimer);
    else sendStream(stream, body).then(startHeaderTimer, () => {});

    let bytesIn = 0;
    return new Promise((resolve, reject) => {
      stream.once("error", (e) => {
        if (responded) return;
        clearTimeout(headerTimer);
        responded = true;
        reject(
          e instanceof UpstreamError
            ? e
            : new UpstreamError("reset", `Upstream ${where} failed the stream: ${errorText(e)}`, {
              cause: e,
            }),
        );
      });
      stream.once("close", () => {
        if (responded) return;
        clearTimeout(headerTimer);
        responded = true;
        reject(
          signal?.aborted ? signal.reason : new UpstreamError(
            "reset",
            `Upstream ${where} reset the stream before answering (HTTP/2 error code ${stream.rstCode})`,
          ),
        );
      });
      stream.once("response", (head) => {
        clearTimeout(headerTimer);
        responded = true;
        const status = Number(head[":status"]);
        const fields: [string, string][] = [];
        for (const [name, value] of Object.entries(head)) {
          if (name.startsWith(":") || value === undefined) continue;
          if (Array.isArray(value)) { for (const v of value) fields.push([name, v]); }
          else fields.push([name, String(value)]);
        }
        let trailerFields: [string, string][] = [];
        let settle!: (t: [string, string][]) => void;
        const trailers = new Promise<[string, string][]>((r) => settle = r);
        stream.once("trailers", (t) => {
          for (const [name, value] of Object.entries(t)) {
            if (name.startsWith(":") || value === undefined) continue;
            if (Array.isArray(value)) { for (const v of value) trailerFields.push([name, v]); }
            else trailerFields.push([name, String(value)]);
          }
        });
        const bodyless = req.method === "HEAD" || status === 204 || status === 304;
        let finished = false;
        const responseBody = bodyless ? null : new ReadableStream<Uint8Array>({
          start(c) {
            stream.on("data", (chunk: Uint8Array) => {
              bytesIn += chunk.length;
              c.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
              if ((c.desiredSize ?? 1) <= 0) stream.pause();
            });
            // The body is complete only if the stream closed cleanly: node also ends the
            // readable side of a stream the upstream reset, so "end" alone could pass a
            // truncated body off as whole.
            stream.once("close", () => {
              if (finished) return;
              finished = true;
              if (
                stream.rstCode === undefined || stream.rstCode === http2.constants.NGHTTP2_NO_ERROR
              ) {
                c.close();
                settle(trailerFields);
                return;
              }
              c.error(
                new UpstreamError(
                  "reset",
                  `Upstream ${where} reset the stream during the body (HTTP/2 error code ${stream.rstCode})`,
                ),
              );
              settle([]);
            });
          },
          pull() {
            stream.resume();
          },
          cancel() {
            finished = true;
            trailerFields = [];
            settle([]);
            if (!stream.closed) stream.close(NGHTTP2_CANCEL);
          },
        }, { highWaterMark: 64 * 1024, size: (c) => c.byteLength });
        if (bodyless) {
          stream.resume();
          stream.once("close", () => settle(trailerFields));
        }
        resolve({
          status,
          reason: "",
          headers: fields,
          body: responseBody,
          bytesIn: () => bytesIn,
          trailers,
        });
      });
    });
  }

  /** Stops taking new streams; sessions close when their streams have ended. */
  close(): void {
    this.#closed = true;
    for (const list of this.#byKey.values()) {
      for (const s of list) {
        s.usable = false;
        if (s.active === 0) closeIdle(s.session);
      }
    }
  }

  /** @returns session counters */
  stats(): H2Stats {
    let sessions = 0;
    let streams = 0;
    for (const list of this.#byKey.values()) {
      sessions += list.length;
      for (const s of list) streams += s.active;
    }
    return { sessions, streams, created: this.#created };
  }

  #streamEnded(s: Session): void {
    s.active--;
    if (s.active > 0) return;
    if (!s.usable) {
      closeIdle(s.session);
      return;
    }
    // An idle session neither keeps the process alive nor lives past the idle timeout.
    s.io.unref?.();
    s.idleTimer = setTimeout(() => {
      s.usable = false;
      closeIdle(s.session);
    }, this.#opts.idleTimeoutMs);
    Deno.unrefTimer(s.idleTimer as unknown as number);
  }
}

/**
 * Ends a session that has no stream left: `destroy()`, not `close()`. A closing session keeps
 * reading until the peer hangs up, and Deno 2.9.6 can abort the whole process inside nghttp2
 * when a session that had a stream reset then receives a GOAWAY (denoland/deno#36788); the
 * peer's answer to our own GOAWAY can be one. With no stream in flight nothing is lost by not
 * reading further.
 */
function closeIdle(session: http2.ClientHttp2Session): void {
  session.destroy();
}

/** Writes a body stream to an HTTP/2 stream, honouring its flow control, then ends it. */
async function sendStream(
  stream: http2.ClientHttp2Stream,
  body: ReadableStream<Uint8Array>,
): Promise<void> {
  const reader = body.getReader();
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      if (stream.closed || stream.destroyed) throw new Error("the stream closed");
      if (!stream.write(value)) await drained(stream);
    }
    await new Promise<void>((resolve) => stream.end(resolve));
  } catch (e) {
    reader.cancel(e).catch(() => {});
    if (!stream.closed) stream.close(NGHTTP2_CANCEL);
    throw e;
  } finally {
    reader.releaseLock();
  }
}

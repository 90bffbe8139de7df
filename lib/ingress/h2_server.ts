/**
 * The HTTP/2 server side of interception, for clients that offer `h2`: node:http2 server
 * sessions over TLS connections accepted by a resolver-backed `Deno.listenTls` (the same leaf
 * minting as the HTTP/1.1 terminator), each stream turned into a fetch `Request` for the one
 * request handler (lib/exchange/forward.ts), and its `Response` written back with its
 * trailers.
 *
 * Why not Deno's own HTTP/2 server (which serves h2 on the HTTP/1.1 listener): on Deno 2.9.6 a
 * response served by it cannot carry trailers (`Deno[Deno.internal].addTrailers` needs a handle
 * that user code cannot reach; probed, docs/data-path.md), and gRPC carries its status in
 * trailers. So the hop routes a ClientHello that offers h2 here, and everything else to Deno's
 * HTTP/1.1 server (lib/ingress/terminator.ts).
 *
 * Per stream: the request body streams with HTTP/2 flow control (a body the upstream does not
 * read stops the client); the response body streams the same way; a client RST_STREAM cancels
 * the response (and with it the upstream stream); response trailers set by the handler
 * (lib/http2/meta.ts) follow the body.
 *
 * @module
 */

import http2 from "node:http2";
import { drained, duplexOf } from "../http2/duplex.ts";
import { CONNECTION_FIELDS, markHttp2, trailers } from "../http2/meta.ts";
import type { ConnectionHandler, ServedListener } from "../tls/deno_internal.ts";

/**
 * Ends a stream with RST_STREAM (INTERNAL_ERROR): the client learns that the response is cut
 * off, not complete. `stream.destroy(error)`, because in Deno 2.9.6 `stream.close(code)` on a
 * server stream ends it cleanly, sending no RST_STREAM (probed with curl: exit 0 on a cut-off
 * body); `destroy` sends one (curl: "stream was not closed cleanly: INTERNAL_ERROR").
 */
function reset(stream: http2.ServerHttp2Stream): void {
  if (!stream.destroyed) stream.destroy(new Error("sluice reset the stream"));
}

/** Response fields HTTP/2 forbids (RFC 9113 8.2.2); node:http2 throws on them. */
const NOT_IN_H2 = new Set(CONNECTION_FIELDS);

type Fields = Record<string, string | string[] | undefined>;

/** A request body from an HTTP/2 stream, read as the consumer pulls (flow control). */
function requestBody(stream: http2.ServerHttp2Stream): ReadableStream<Uint8Array> {
  let ended = false;
  return new ReadableStream<Uint8Array>({
    start(c) {
      stream.on("data", (chunk: Uint8Array) => {
        if (ended) return;
        c.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
        if ((c.desiredSize ?? 1) <= 0) stream.pause();
      });
      // Complete only when the client ended it cleanly: node also ends the readable side of
      // a stream the client reset, and a cut-off body must not go upstream as a whole one.
      let clean = false;
      stream.once("end", () => {
        clean = true;
        queueMicrotask(check);
      });
      const check = (): void => {
        if (ended) return;
        const reset = stream.rstCode !== undefined &&
          stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR;
        if (clean && !reset) {
          ended = true;
          c.close();
        } else if (reset || stream.closed) {
          ended = true;
          c.error(new Error("the client reset the stream before its body ended"));
        }
      };
      stream.once("close", check);
    },
    pull() {
      stream.resume();
    },
    cancel() {
      // The upstream stopped reading (it answered early): drop the rest, keep the stream, whose
      // response is still to be sent.
      ended = true;
      stream.resume();
    },
  }, { highWaterMark: 64 * 1024, size: (c) => c.byteLength });
}

/** Field list → node:http2 header object, repeats as arrays, forbidden fields left out. */
function toNodeFields(list: Iterable<[string, string]>, into: Fields): Fields {
  for (const [name, value] of list) {
    if (name.startsWith(":") || NOT_IN_H2.has(name)) continue;
    const prev = into[name];
    if (prev === undefined) into[name] = value;
    else if (Array.isArray(prev)) prev.push(value);
    else into[name] = [prev, value];
  }
  return into;
}

/** Writes `res` (head, body, trailers) to `stream`. */
async function respond(stream: http2.ServerHttp2Stream, res: Response): Promise<void> {
  if (stream.closed || stream.destroyed) {
    res.body?.cancel().catch(() => {});
    return;
  }
  const head: Fields = { ":status": String(res.status) };
  const fields: [string, string][] = [];
  res.headers.forEach((value, name) => {
    if (name !== "set-cookie") fields.push([name, value]);
  });
  for (const cookie of res.headers.getSetCookie()) fields.push(["set-cookie", cookie]);
  toNodeFields(fields, head);
  const after = trailers(res);
  const body = res.body;
  if (body === null && after === undefined) {
    stream.respond(head, { endStream: true });
    return;
  }
  stream.respond(head, { waitForTrailers: after !== undefined });
  if (after !== undefined) {
    stream.once("wantTrailers", () => {
      after.then((list) => {
        if (!stream.closed) stream.sendTrailers(toNodeFields(list, {}));
      }, () => {
        reset(stream);
      });
    });
  }
  if (body === null) {
    stream.end();
    return;
  }
  const reader = body.getReader();
  const onClose = (): void => {
    reader.cancel(new Error("the client closed the stream")).catch(() => {});
  };
  stream.once("close", onClose);
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      if (stream.closed || stream.destroyed) return;
      if (!stream.write(value)) await drained(stream);
    }
    if (!stream.closed) stream.end();
  } catch {
    // The body failed (the upstream reset its stream, a decode error): the client learns it
    // as a reset, not as a complete response.
    reset(stream);
  } finally {
    stream.off("close", onClose);
  }
}

/**
 * Serves HTTP/2 on every connection `listener` accepts.
 *
 * @param listener a resolver-backed TLS listener offering ALPN `h2`
 * @param handler answers each request (`info.remoteAddr` is the connection's peer)
 * @param onError answers a request whose handler threw
 * @returns `finished` and a graceful `shutdown` (GOAWAY, streams in flight finish)
 */
export function serveH2(
  listener: Deno.TlsListener,
  handler: ConnectionHandler,
  onError: (error: unknown) => Response | Promise<Response>,
): ServedListener {
  const sessions = new Set<http2.ServerHttp2Session>();
  let stopping = false;
  let allClosed: (() => void) | undefined;
  const checkDone = (): void => {
    if (stopping && sessions.size === 0) allClosed?.();
  };

  const onStream = async (
    stream: http2.ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    peer: Deno.NetAddr,
  ): Promise<void> => {
    stream.on("error", () => {});
    const method = String(headers[":method"] ?? "GET");
    const authority = String(headers[":authority"] ?? headers.host ?? "");
    const path = String(headers[":path"] ?? "/");
    const raw = `https://${authority}${path}`;
    const fields = new Headers();
    let res: Response;
    try {
      for (const [name, value] of Object.entries(headers)) {
        if (name.startsWith(":") || value === undefined) continue;
        if (Array.isArray(value)) { for (const v of value) fields.append(name, v); }
        else fields.append(name, String(value));
      }
      const hasBody = method !== "GET" && method !== "HEAD" && !stream.endAfterHeaders;
      if (!hasBody) stream.resume();
      const init: RequestInit & { duplex: "half" } = {
        method,
        headers: fields,
        body: hasBody ? requestBody(stream) : null,
        duplex: "half",
      };
      let req: Request;
      try {
        req = new Request(raw, init);
      } catch {
        // An authority no URL can hold: the handler refuses it (400 invalid-host, audited)
        // from the raw URL, as it does for Deno's server.
        req = new Request("https://invalid.invalid/", init);
        Object.defineProperty(req, "url", { value: raw });
      }
      markHttp2(req);
      const info = {
        remoteAddr: peer,
        completed: Promise.resolve(),
      } as unknown as Deno.ServeHandlerInfo<Deno.NetAddr>;
      res = await handler(req, info);
    } catch (e) {
      try {
        res = await onError(e);
      } catch {
        res = new Response("sluice: internal error\n", { status: 500 });
      }
    }
    await respond(stream, res);
  };

  const serveConnection = (conn: Deno.TlsConn): void => {
    const peer = conn.remoteAddr as Deno.NetAddr;
    conn.handshake().then(() => {
      const session = http2.performServerHandshake(duplexOf(conn));
      sessions.add(session);
      session.on("error", () => {});
      session.on("close", () => {
        sessions.delete(session);
        checkDone();
      });
      session.on("stream", (stream, headers) => {
        if (stopping) {
          reset(stream);
          return;
        }
        onStream(stream, headers, peer).catch(() => {
          reset(stream);
        });
      });
      if (stopping) session.close();
    }, () => {
      try {
        conn.close();
      } catch { /* already closed */ }
    });
  };

  const accepting = (async () => {
    while (true) {
      let conn: Deno.TlsConn;
      try {
        conn = await listener.accept();
      } catch {
        return;
      }
      serveConnection(conn);
    }
  })();

  let finishedResolve!: () => void;
  const finished = new Promise<void>((r) => finishedResolve = r);
  let shutting: Promise<void> | undefined;
  return {
    finished,
    shutdown() {
      shutting ??= (async () => {
        stopping = true;
        try {
          listener.close();
        } catch { /* already closed */ }
        await accepting;
        const done = new Promise<void>((r) => allClosed = r);
        // GOAWAY: no new stream; the session closes when its streams in flight have ended.
        for (const s of sessions) s.close();
        checkDone();
        await done;
        finishedResolve();
      })();
      return shutting;
    },
  };
}

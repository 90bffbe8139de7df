/**
 * The heads of an exchange: {@link buildHead} validates a request and writes its head (with the
 * body framing it implies: none, Content-Length or chunked), refusing anything that could
 * smuggle a second request (CR/LF or other controls in a field, a bad method or target);
 * {@link readHead} reads a response head off a connection, skipping interim 1xx answers.
 * Parsing the response head itself is lib/http1/response.ts's.
 *
 * @module
 */

import { bracketHost } from "../../policy/address.ts";
import { connectionTokens, parseResponseHead, type ResponseHead } from "../http1/response.ts";
import { type Connection, fillOrReset } from "./connection.ts";
import { UpstreamError, type UpstreamRequest, type UpstreamTarget } from "./types.ts";

const METHODS_WITH_BODY = new Set(["POST", "PUT", "PATCH"]);
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Field values: HTAB, SP, VCHAR and obs-text only (no CR/LF injection, no other CTL). */
const BAD_VALUE = /[^\t\x20-\x7e\x80-\xff]/;
const BAD_PATH = /[^\x21-\x7e]/;
const ASCII = /^[^\x80-\uffff]*$/;
const UTF8 = new TextEncoder();

function latin1Bytes(s: string): Uint8Array {
  if (ASCII.test(s)) return UTF8.encode(s);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function hostHeader(t: UpstreamTarget): string {
  const host = bracketHost(t.host);
  return t.port === (t.tls ? 443 : 80) ? host : `${host}:${t.port}`;
}

/** How the request body goes out: nothing, bytes with the head, or a stream. */
export type BodyPlan =
  | { kind: "none" }
  | { kind: "bytes"; data: Uint8Array }
  | { kind: "stream"; stream: ReadableStream<Uint8Array>; length: number | undefined };

/** A request ready to send: its head, its body plan, and whether it asked for `close`. */
export type BuiltHead = { head: Uint8Array; plan: BodyPlan; close: boolean };

/** The body plan of a request without a body: one object, not one per request. */
const NO_BODY: BodyPlan = Object.freeze({ kind: "none" });

function refuseRequest(where: string, what: string): never {
  throw new UpstreamError("protocol", `Cannot send request to ${where}: ${what}`);
}

/**
 * Validate the request and build its head; throws UpstreamError("protocol") for bad input.
 *
 * @param t where it goes (for the default Host field)
 * @param req the request
 * @param where `host:port`, for messages
 * @returns the head's bytes, the body plan, and whether the request asked for `close`
 */
export function buildHead(
  t: UpstreamTarget,
  req: UpstreamRequest,
  where: string,
): BuiltHead {
  if (!TOKEN.test(req.method)) refuseRequest(where, `invalid method ${JSON.stringify(req.method)}`);
  if (req.path.length === 0 || BAD_PATH.test(req.path)) {
    refuseRequest(where, `invalid request-target ${JSON.stringify(req.path)}`);
  }
  // Host first when the caller gave none (not spliced in afterwards: a copy of the head).
  let hasHost = false;
  for (let i = 0; i < req.headers.length && !hasHost; i++) {
    const name = req.headers[i][0];
    hasHost = name.length === 4 && name.toLowerCase() === "host";
  }
  let s = `${req.method} ${req.path} HTTP/1.1\r\n`;
  if (!hasHost) s += `Host: ${hostHeader(t)}\r\n`;
  for (const [name, value] of req.headers) {
    if (!TOKEN.test(name)) refuseRequest(where, `invalid header name ${JSON.stringify(name)}`);
    if (BAD_VALUE.test(value)) {
      refuseRequest(
        where,
        `header ${name} has a control character or a non-latin1 char in its value`,
      );
    }
    const lower = name.length === 14 || name.length === 17 ? name.toLowerCase() : "";
    if (lower === "content-length" || lower === "transfer-encoding") continue;
    s += `${name}: ${value}\r\n`;
  }
  let plan: BodyPlan;
  const body = req.body;
  if (body === null) {
    if (req.bodyLength !== undefined && req.bodyLength !== 0) {
      refuseRequest(where, `bodyLength ${req.bodyLength} given without a body`);
    }
    if (METHODS_WITH_BODY.has(req.method)) s += "Content-Length: 0\r\n";
    plan = NO_BODY;
  } else if (body instanceof Uint8Array) {
    if (req.bodyLength !== undefined && req.bodyLength !== body.length) {
      refuseRequest(
        where,
        `bodyLength ${req.bodyLength} differs from the body's ${body.length} bytes`,
      );
    }
    if (body.length > 0 || METHODS_WITH_BODY.has(req.method)) {
      s += `Content-Length: ${body.length}\r\n`;
    }
    plan = body.length > 0 ? { kind: "bytes", data: body } : NO_BODY;
  } else {
    const n = req.bodyLength;
    if (n !== undefined) {
      if (!Number.isSafeInteger(n) || n < 0) refuseRequest(where, `invalid bodyLength ${n}`);
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

/**
 * Read until a complete final response head; skips 1xx interim responses except 101.
 *
 * @param conn the connection, its buffer consumed up to the head's end
 * @param where `host:port`, for messages
 * @returns the head
 * @throws {UpstreamError} protocol for an invalid head, reset for a connection lost before it
 */
export async function readHead(conn: Connection, where: string): Promise<ResponseHead> {
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
    const n = await fillOrReset(conn, where, "before the response head");
    if (n === null) {
      throw new UpstreamError(
        "reset",
        `Upstream ${where} closed the connection before the response head`,
      );
    }
  }
}

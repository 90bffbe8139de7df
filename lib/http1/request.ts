/**
 * HTTP/1.1 request-head parsing for the explicit proxy and the transparent HTTP listener.
 *
 * Strict on purpose (RFC 9112): a proxy that is lenient where the next hop is strict, or the
 * other way round, is how request smuggling happens. Anything ambiguous is refused with the
 * status code the RFC names, and the caller answers with that status and closes the connection.
 * The parser never throws, never reads past the buffer, and rejects a prefix as soon as it
 * cannot start a valid head, so garbage (such as a TLS handshake) is refused on its first byte.
 *
 * @module
 */

import { allIn, ascii, byteSet, CR, type FieldLine, fieldLine, isDigits, LF } from "./_scan.ts";
import { MAX_LENGTH_DIGITS, nextLine, SP, TCHAR, trimOws } from "./_scan.ts";

/** A parsed request head. Header names keep their case as sent; values are OWS-trimmed. */
export type RequestHead = {
  method: string;
  /** The request-target as sent (origin-, absolute-, authority- or asterisk-form). */
  target: string;
  version: "HTTP/1.1" | "HTTP/1.0";
  /**
   * Header fields in order. Values are byte strings: one char per byte (latin1), as fetch's
   * Headers treats them, so obs-text bytes survive unchanged. Repeated identical
   * Content-Length lines are folded into the first.
   */
  headers: [string, string][];
  /** Bytes from the start of the buffer up to and including the final CRLFCRLF. */
  headerBytes: number;
};

/** The result of {@link parseRequestHead}. */
export type HeadResult =
  | { kind: "ok"; head: RequestHead }
  | { kind: "incomplete" }
  | { kind: "invalid"; status: 400 | 414 | 431 | 501 | 505; reason: string };

/** Limits for {@link parseRequestHead}. */
export type HeadLimits = {
  /** Largest head in bytes, leading empty lines and the final CRLFCRLF included (431). */
  maxHeaderBytes?: number;
  /** Largest number of header field lines (431). */
  maxHeaders?: number;
  /** Longest request-target in bytes (414). */
  maxTargetBytes?: number;
};

/** Default {@link HeadLimits.maxHeaderBytes}: 32 KiB, above what real clients send. */
export const DEFAULT_MAX_HEADER_BYTES = 32768;
/** Default {@link HeadLimits.maxHeaders}. */
export const DEFAULT_MAX_HEADERS = 100;
/** Default {@link HeadLimits.maxTargetBytes}: long API query strings fit, a flood does not. */
export const DEFAULT_MAX_TARGET_BYTES = 16384;

/** The body framing a request head announces; see {@link framing}. */
export type Framing = { kind: "none" } | { kind: "length"; length: number } | {
  kind: "chunked";
};

/** Thrown by {@link framing} when given a head that {@link parseRequestHead} did not accept. */
export class HttpFramingError extends Error {
  /**
   * @param message what was wrong with the head
   */
  constructor(message: string) {
    super(message);
    this.name = "HttpFramingError";
  }
}

/** RFC 3986 reg-name / IP-literal / port characters, for Host and authority-form. */
const AUTHORITY = byteSet(
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%:[]",
);
/** Transfer codings we can name (RFC 9112 7, RFC 9110 8.4.1); anything else is 501. */
const KNOWN_CODINGS = new Set(["chunked", "gzip", "x-gzip", "deflate", "compress", "x-compress"]);
type Invalid = { kind: "invalid"; status: 400 | 414 | 431 | 501 | 505; reason: string };

function bad(status: Invalid["status"], reason: string): Invalid {
  return { kind: "invalid", status, reason };
}

/**
 * Parse an HTTP/1.x request head from the bytes read so far.
 *
 * Call again with the accumulated bytes while it returns `incomplete`; the body (if any) starts
 * at `head.headerBytes`. Never throws. Refused, with the status to answer:
 * - 400: a method that is not a token; a request-target with spaces or controls, in the wrong
 *   form for its method (CONNECT needs host:port, `*` is for OPTIONS only); a malformed version;
 *   a line not ended by CRLF (bare LF or bare CR); a header name that is not a token or is
 *   followed by whitespace before the colon; obs-fold (a line starting with SP or HTAB); a
 *   value with a control byte other than HTAB; no Host in HTTP/1.1, several Host lines, or an
 *   invalid Host; Content-Length that is not 1*DIGIT, or several with different values; both
 *   Content-Length and Transfer-Encoding; Transfer-Encoding in HTTP/1.0, or whose last coding
 *   is not chunked, or with chunked twice.
 * - 414: a request-target longer than `maxTargetBytes`, or a request line that does not end
 *   within `maxHeaderBytes`.
 * - 431: a head longer than `maxHeaderBytes` (also while incomplete), or more than
 *   `maxHeaders` header lines.
 * - 501: a Transfer-Encoding coding we do not know.
 * - 505: an HTTP version other than 1.1 and 1.0.
 *
 * Empty lines (CRLF) before the request line are skipped (RFC 9112 2.2) and counted in
 * `headerBytes`. For an absolute-form target the caller must route by the target's authority,
 * not by Host (RFC 9112 3.2.2).
 *
 * @param buf the bytes read so far, starting at the first byte of the request
 * @param limits size limits; defaults are the exported `DEFAULT_*` constants
 * @returns `ok` with the head, `incomplete`, or `invalid` with a status and reason
 * @example
 * ```ts
 * import { framing, parseRequestHead } from "./request.ts";
 * const r = parseRequestHead(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
 * if (r.kind !== "ok" || framing(r.head).kind !== "none") throw new Error("expected a GET");
 * ```
 */
export function parseRequestHead(buf: Uint8Array, limits?: HeadLimits): HeadResult {
  try {
    return parse(buf, limits ?? {});
  } catch (e) {
    // Unreachable by construction; a bug must cost one connection, not the listener.
    return bad(400, `internal parser error: ${String(e)}`);
  }
}

function parse(buf: Uint8Array, limits: HeadLimits): HeadResult {
  const maxBytes = limits.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES;
  const maxHeaders = limits.maxHeaders ?? DEFAULT_MAX_HEADERS;
  const maxTarget = limits.maxTargetBytes ?? DEFAULT_MAX_TARGET_BYTES;
  // Never look past the limit: a head that needs more bytes is refused, however many arrived.
  const b = buf.subarray(0, Math.min(buf.length, maxBytes));
  const n = b.length;
  const overLimit = buf.length >= maxBytes;

  let pos = 0;
  // RFC 9112 2.2: a server SHOULD ignore at least one empty line before the request-line.
  while (pos < n && b[pos] === CR) {
    if (pos + 1 >= n) return overLimit ? bad(431, "head exceeds maxHeaderBytes") : INCOMPLETE;
    if (b[pos + 1] !== LF) return bad(400, "bare CR before the request line");
    pos += 2;
  }

  // Request line.
  let line = nextLine(b, pos);
  if (line.end === -2) {
    // Report a broken method or target first: it says more than the line ending does.
    const r = requestLine(b, pos, line.contentEnd, false, maxTarget);
    return r.kind === "invalid" ? r : bad(400, "bare LF in the request line");
  }
  if (line.end < 0) {
    const r = requestLine(b, pos, line.contentEnd, false, maxTarget);
    if (r.kind === "invalid") return r;
    if (!overLimit) return INCOMPLETE;
    // Only empty lines so far: that is a bloated head, not a long request line.
    return line.contentEnd > pos
      ? bad(414, "request line exceeds maxHeaderBytes")
      : bad(431, "head exceeds maxHeaderBytes");
  }
  const rl = requestLine(b, pos, line.contentEnd, true, maxTarget);
  if (rl.kind === "invalid") return rl;
  if (rl.kind !== "line") return bad(400, "incomplete request line");
  pos = line.end;

  const headers: [string, string][] = [];
  let hostCount = 0;
  let contentLength: string | undefined;
  let transferEncoding: string[] | undefined;

  while (true) {
    line = nextLine(b, pos);
    if (line.end === -2) return bad(400, "bare LF in a header line");
    if (line.end < 0) {
      const r = headerLine(b, pos, line.contentEnd, false);
      if (r !== undefined && r.kind === "invalid") return r;
      return overLimit ? bad(431, "head exceeds maxHeaderBytes") : INCOMPLETE;
    }
    if (line.contentEnd === pos) {
      pos = line.end;
      break;
    }
    const h = headerLine(b, pos, line.contentEnd, true);
    if (h === undefined || h.kind === "invalid") return h ?? bad(400, "malformed header line");
    pos = line.end;
    if (headers.length >= maxHeaders) return bad(431, `more than ${maxHeaders} header lines`);

    const { name, value } = h;
    // Only names of the right length can match; avoids lowercasing every name.
    const lower = name.length === 4 || name.length === 14 || name.length === 17
      ? name.toLowerCase()
      : "";
    if (lower === "host") {
      hostCount++;
      if (hostCount > 1) return bad(400, "more than one Host header");
      if (!allIn(value, AUTHORITY)) return bad(400, "invalid Host header value");
    } else if (lower === "content-length") {
      if (value.length === 0 || !isDigits(value)) {
        return bad(400, "Content-Length is not a decimal number");
      }
      if (value.length > MAX_LENGTH_DIGITS) return bad(400, "Content-Length too large");
      if (contentLength !== undefined) {
        if (contentLength !== value) return bad(400, "conflicting Content-Length headers");
        continue; // fold an identical duplicate
      }
      contentLength = value;
    } else if (lower === "transfer-encoding") {
      transferEncoding ??= [];
      for (const part of value.split(",")) {
        const coding = trimOws(part);
        // RFC 9110 5.6.1: recipients ignore empty list elements.
        if (coding.length === 0) continue;
        if (!allIn(coding, TCHAR)) return bad(400, "malformed Transfer-Encoding");
        transferEncoding.push(coding.toLowerCase());
      }
    }
    headers.push([name, value]);
  }

  const { method, target, version } = rl;
  const form = checkTargetForm(method, target);
  if (form !== undefined) return form;
  if (version === "HTTP/1.1" && hostCount === 0) return bad(400, "HTTP/1.1 request without Host");
  if (transferEncoding !== undefined) {
    // Each of these is a classic smuggling vector: two hops that pick different framings.
    if (contentLength !== undefined) {
      return bad(400, "both Content-Length and Transfer-Encoding");
    }
    if (version === "HTTP/1.0") return bad(400, "Transfer-Encoding in an HTTP/1.0 request");
    if (transferEncoding.length === 0) return bad(400, "empty Transfer-Encoding");
    for (const c of transferEncoding) {
      if (!KNOWN_CODINGS.has(c)) return bad(501, `unknown transfer coding ${JSON.stringify(c)}`);
    }
    if (transferEncoding[transferEncoding.length - 1] !== "chunked") {
      return bad(400, "Transfer-Encoding does not end with chunked");
    }
    if (transferEncoding.indexOf("chunked") !== transferEncoding.length - 1) {
      return bad(400, "chunked applied more than once");
    }
  }
  return { kind: "ok", head: { method, target, version, headers, headerBytes: pos } };
}

const INCOMPLETE: HeadResult = Object.freeze({ kind: "incomplete" }) as HeadResult;

type RequestLine =
  | { kind: "line"; method: string; target: string; version: "HTTP/1.1" | "HTTP/1.0" }
  | { kind: "prefix" }
  | Invalid;

const PREFIX: RequestLine = { kind: "prefix" };

/**
 * Parse `b[from, to)` as a request line, or when `complete` is false check that it can still
 * begin one, so that a valid head's every prefix is `incomplete` and garbage fails early.
 */
function requestLine(
  b: Uint8Array,
  from: number,
  to: number,
  complete: boolean,
  maxTarget: number,
): RequestLine {
  let i = from;
  while (i < to && TCHAR[b[i]] === 1) i++;
  if (i === to) return complete ? bad(400, "request line has no request-target") : PREFIX;
  if (b[i] !== SP) {
    if (i === from && b[i] === 0x16) return bad(400, "TLS handshake sent to a plain HTTP port");
    return bad(400, i === from ? "request line does not start with a method" : "invalid method");
  }
  if (i === from) return bad(400, "empty method");
  const tStart = i + 1;
  let j = tStart;
  // request-target: printable ASCII only; no SP, CTL, DEL or non-ASCII bytes.
  while (j < to && b[j] > SP && b[j] < 0x7f) j++;
  if (j - tStart > maxTarget) return bad(414, `request-target longer than ${maxTarget} bytes`);
  if (j === to) return complete ? bad(400, "request line has no HTTP version") : PREFIX;
  if (b[j] !== SP) return bad(400, "invalid byte in request-target");
  if (j === tStart) return bad(400, "empty request-target");
  const v = j + 1;
  const vLen = to - v;
  // HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive (RFC 9112 2.3).
  if (vLen > 8) return bad(400, "malformed HTTP version");
  for (let k = 0; k < vLen; k++) {
    const c = b[v + k];
    const ok = k < 5 ? c === "HTTP/".charCodeAt(k) : k === 6 ? c === 0x2e : c >= 0x30 && c <= 0x39;
    if (!ok) return bad(400, "malformed HTTP version");
  }
  if (!complete) return PREFIX;
  if (vLen !== 8) return bad(400, "malformed HTTP version");
  const major = b[v + 5], minor = b[v + 7];
  if (major !== 0x31 || (minor !== 0x31 && minor !== 0x30)) {
    return bad(505, `HTTP version ${String.fromCharCode(major, 0x2e, minor)} not supported`);
  }
  return {
    kind: "line",
    method: ascii(b, from, i),
    target: ascii(b, tStart, j),
    version: minor === 0x31 ? "HTTP/1.1" : "HTTP/1.0",
  };
}

/** {@link fieldLine}, its refusals answered 400. */
function headerLine(
  b: Uint8Array,
  from: number,
  to: number,
  complete: boolean,
): FieldLine | Invalid | undefined {
  const r = fieldLine(b, from, to, complete);
  return typeof r === "string" ? bad(400, r) : r;
}

/** RFC 9112 3.2: which request-target forms each method may use. */
function checkTargetForm(method: string, target: string): Invalid | undefined {
  if (method === "CONNECT") {
    // authority-form: uri-host ":" port, and nothing else.
    const colon = target.lastIndexOf(":");
    if (colon <= 0) return bad(400, "CONNECT target must be host:port");
    const host = target.slice(0, colon);
    const port = target.slice(colon + 1);
    if (port.length === 0 || port.length > 5 || !isDigits(port) || Number(port) > 65535) {
      return bad(400, "CONNECT target has an invalid port");
    }
    if (!allIn(host, AUTHORITY) || host.includes("@")) {
      return bad(400, "CONNECT target has an invalid host");
    }
    if (host.startsWith("[") !== host.endsWith("]")) {
      return bad(400, "CONNECT target has an unbalanced IPv6 literal");
    }
    return undefined;
  }
  if (target === "*") {
    return method === "OPTIONS" ? undefined : bad(400, "asterisk-form is only for OPTIONS");
  }
  if (target.charCodeAt(0) === 0x2f) return undefined; // origin-form
  // absolute-form: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":" ...
  const colon = target.indexOf(":");
  if (colon <= 0 || !/^[A-Za-z][A-Za-z0-9+.-]*$/.test(target.slice(0, colon))) {
    return bad(400, "request-target is neither origin-form nor absolute-form");
  }
  return undefined;
}

/**
 * The body framing a request head announces (RFC 9112 6.3), for a head that
 * {@link parseRequestHead} accepted: chunked if Transfer-Encoding is present, else the
 * Content-Length, else no body.
 *
 * @param head a head returned by {@link parseRequestHead}
 * @returns the framing of the request body
 * @throws {HttpFramingError} if the head has a Content-Length that is not a decimal number or
 *   both framings, which parseRequestHead never returns; build heads with it, not by hand
 */
export function framing(head: RequestHead): Framing {
  let length: string | undefined;
  let chunked = false;
  for (const [name, value] of head.headers) {
    const lower = name.toLowerCase();
    if (lower === "transfer-encoding") chunked = true;
    else if (lower === "content-length" && length === undefined) length = value;
  }
  if (chunked && length !== undefined) {
    throw new HttpFramingError(
      "Cannot frame request: it has both Content-Length and Transfer-Encoding; " +
        "parse it with parseRequestHead(), which refuses such heads",
    );
  }
  if (chunked) return { kind: "chunked" };
  if (length === undefined) return { kind: "none" };
  if (length.length === 0 || length.length > MAX_LENGTH_DIGITS || !isDigits(length)) {
    throw new HttpFramingError(
      `Cannot frame request: Content-Length ${JSON.stringify(length)} is not a decimal number; ` +
        "parse it with parseRequestHead(), which refuses such heads",
    );
  }
  return { kind: "length", length: Number(length) };
}

/**
 * The value of the first header named `name`, compared case-insensitively.
 *
 * @param head a parsed request head
 * @param name a header name, in any case
 * @returns the trimmed value, or undefined when absent
 */
export function headerValue(head: RequestHead, name: string): string | undefined {
  const want = name.toLowerCase();
  for (const [n, v] of head.headers) {
    if (n.length === want.length && n.toLowerCase() === want) return v;
  }
  return undefined;
}

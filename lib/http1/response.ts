/**
 * HTTP/1.1 message framing for the upstream client (RFC 9112): response-head parsing, the
 * chunked transfer coding in both directions, body-length rules and hop-by-hop headers.
 *
 * Pure: no I/O, no clock. Strict for the same reason as `request.ts`, and with
 * the same scanner (`_scan.ts`): the proxy
 * re-frames every response it forwards, so a response whose framing two parsers could read
 * differently is refused (a protocol error, answered 502) instead of guessed at. Nothing here
 * throws on bad input except {@link responseFraming}, whose input is a head this module parsed.
 *
 * Why one file of ~600 lines: response heads and the chunked coding in both directions are
 * the upstream client's framing; the scanning they share with request heads is in _scan.ts.
 *
 * @module
 */

import { HttpFramingError } from "./request.ts";
import { COLON, CR, type FieldLine, fieldLine, HTAB, isDigits, latin1, LF } from "./_scan.ts";
import { MAX_LENGTH_DIGITS, nextLine, SP, TCHAR, trimOws } from "./_scan.ts";

/** A parsed response head. Header names keep their case; values are OWS-trimmed latin1. */
export type ResponseHead = {
  status: number;
  /** The reason phrase as sent (possibly empty). */
  reason: string;
  version: "HTTP/1.1" | "HTTP/1.0";
  /** Header fields in order; identical repeated Content-Length lines are folded into one. */
  headers: [string, string][];
  /** Bytes from the start of the buffer up to and including the final CRLFCRLF. */
  headerBytes: number;
};

/** The result of {@link parseResponseHead}. */
export type ResponseHeadResult =
  | { kind: "ok"; head: ResponseHead }
  | { kind: "incomplete" }
  | { kind: "invalid"; reason: string };

/** Limits for {@link parseResponseHead}. */
export type ResponseHeadLimits = {
  /** Largest head in bytes, the final CRLFCRLF included. */
  maxHeaderBytes?: number;
  /** Largest number of header field lines. */
  maxHeaders?: number;
};

/** Default {@link ResponseHeadLimits.maxHeaderBytes}: 64 KiB (big cookie sets fit). */
export const DEFAULT_MAX_RESPONSE_HEADER_BYTES = 65536;
/** Default {@link ResponseHeadLimits.maxHeaders}. */
export const DEFAULT_MAX_RESPONSE_HEADERS = 256;

const SEMI = 0x3b;

/** Hex digit values, -1 for anything else. */
const HEX = (() => {
  const t = new Int8Array(256).fill(-1);
  for (let i = 0; i < 10; i++) t[0x30 + i] = i;
  for (let i = 0; i < 6; i++) t[0x41 + i] = t[0x61 + i] = 10 + i;
  return t;
})();
const STATUS_PREFIX = [0x48, 0x54, 0x54, 0x50, 0x2f]; // "HTTP/"

type Invalid = { kind: "invalid"; reason: string };

function bad(reason: string): Invalid {
  return { kind: "invalid", reason };
}

const INCOMPLETE: ResponseHeadResult = Object.freeze({ kind: "incomplete" }) as ResponseHeadResult;

/**
 * Parse an HTTP/1.x response head from the bytes read so far.
 *
 * Call again with the accumulated bytes while it returns `incomplete`; the body starts at
 * `head.headerBytes`. Never throws. Every prefix of a valid head is `incomplete`, and bytes
 * that cannot begin a valid head are refused at once. Refused (`invalid`):
 * - a status line other than `HTTP/1.1` or `HTTP/1.0`, SP, three digits in 100..599, then
 *   either CRLF or SP and a reason phrase without control bytes. (The empty reason without
 *   its SP, `HTTP/1.1 200\r\n`, is accepted: it is common and cannot confuse framing.)
 * - a line not ended by CRLF; obs-fold; a field name that is not a token or has whitespace
 *   before its colon; a control byte other than HTAB in a value;
 * - Content-Length that is not 1*DIGIT (a list such as `5, 5` included), or repeated with
 *   different values;
 * - Transfer-Encoding together with Content-Length, in an HTTP/1.0 response, or naming any
 *   coding but a single `chunked` (a proxy that strips Transfer-Encoding could not forward
 *   another coding faithfully);
 * - a head over `maxHeaderBytes` (also while incomplete) or with more than `maxHeaders` lines.
 *
 * @param buf the bytes read so far, starting at the first byte of the response
 * @param limits size limits; defaults are the exported `DEFAULT_MAX_RESPONSE_*` constants
 * @returns `ok` with the head, `incomplete`, or `invalid` with a reason
 * @example
 * ```ts
 * import { parseResponseHead } from "./response.ts";
 * const r = parseResponseHead(new TextEncoder().encode("HTTP/1.1 204 No Content\r\n\r\n"));
 * if (r.kind !== "ok" || r.head.status !== 204) throw new Error("expected a 204");
 * ```
 */
export function parseResponseHead(
  buf: Uint8Array,
  limits?: ResponseHeadLimits,
): ResponseHeadResult {
  try {
    return parse(buf, limits ?? {});
  } catch (e) {
    // Unreachable by construction; a bug must cost one request, not the process.
    return bad(`internal parser error: ${String(e)}`);
  }
}

function parse(buf: Uint8Array, limits: ResponseHeadLimits): ResponseHeadResult {
  const maxBytes = limits.maxHeaderBytes ?? DEFAULT_MAX_RESPONSE_HEADER_BYTES;
  const maxHeaders = limits.maxHeaders ?? DEFAULT_MAX_RESPONSE_HEADERS;
  const b = buf.subarray(0, Math.min(buf.length, maxBytes));
  const overLimit = buf.length >= maxBytes;
  const tooBig = (): ResponseHeadResult =>
    overLimit ? bad(`response head exceeds ${maxBytes} bytes`) : INCOMPLETE;

  let line = nextLine(b, 0);
  if (line.end === -2) {
    const r = statusLine(b, line.contentEnd, false);
    return r.kind === "invalid" ? r : bad("bare LF in the status line");
  }
  if (line.end < 0) {
    const r = statusLine(b, line.contentEnd, false);
    return r.kind === "invalid" ? r : tooBig();
  }
  const sl = statusLine(b, line.contentEnd, true);
  if (sl.kind !== "line") return sl.kind === "invalid" ? sl : bad("incomplete status line");
  let pos = line.end;

  const headers: [string, string][] = [];
  let contentLength: string | undefined;
  let chunked = 0;
  let transferEncoding = false;

  while (true) {
    line = nextLine(b, pos);
    if (line.end === -2) return bad("bare LF in a header line");
    if (line.end < 0) {
      const r = headerLine(b, pos, line.contentEnd, false);
      if (r !== undefined && r.kind === "invalid") return r;
      return tooBig();
    }
    if (line.contentEnd === pos) {
      pos = line.end;
      break;
    }
    const h = headerLine(b, pos, line.contentEnd, true);
    if (h === undefined || h.kind === "invalid") return h ?? bad("malformed header line");
    pos = line.end;
    if (headers.length >= maxHeaders) return bad(`more than ${maxHeaders} header lines`);
    const { name, value } = h;
    const lower = name.length === 14 || name.length === 17 ? name.toLowerCase() : "";
    if (lower === "content-length") {
      if (value.length === 0 || !isDigits(value)) {
        return bad(`Content-Length ${JSON.stringify(value)} is not a decimal number`);
      }
      if (value.length > MAX_LENGTH_DIGITS) return bad("Content-Length too large");
      if (contentLength !== undefined) {
        if (contentLength !== value) return bad("conflicting Content-Length headers");
        continue; // fold an identical duplicate
      }
      contentLength = value;
    } else if (lower === "transfer-encoding") {
      transferEncoding = true;
      for (const part of value.split(",")) {
        const coding = trimOws(part);
        if (coding.length === 0) continue; // RFC 9110 5.6.1: empty list elements are ignored
        if (coding.toLowerCase() !== "chunked") {
          return bad(`unsupported transfer coding ${JSON.stringify(coding)}`);
        }
        chunked++;
      }
    }
    headers.push([name, value]);
  }

  if (transferEncoding) {
    // Each of these is a classic desync vector: two hops that pick different framings.
    if (contentLength !== undefined) return bad("both Content-Length and Transfer-Encoding");
    if (sl.version === "HTTP/1.0") return bad("Transfer-Encoding in an HTTP/1.0 response");
    if (chunked === 0) return bad("empty Transfer-Encoding");
    if (chunked > 1) return bad("chunked applied more than once");
  }
  return {
    kind: "ok",
    head: { status: sl.status, reason: sl.reason, version: sl.version, headers, headerBytes: pos },
  };
}

type StatusLine =
  | { kind: "line"; status: number; reason: string; version: "HTTP/1.1" | "HTTP/1.0" }
  | { kind: "prefix" }
  | Invalid;

const PREFIX: StatusLine = { kind: "prefix" };

/** Parse `b[0, to)` as a status line, or when `complete` is false check it can begin one. */
function statusLine(b: Uint8Array, to: number, complete: boolean): StatusLine {
  // "HTTP/" DIGIT "." DIGIT SP 3DIGIT
  for (let k = 0; k < 12 && k < to; k++) {
    const c = b[k];
    let ok: boolean;
    if (k < 5) ok = c === STATUS_PREFIX[k];
    else if (k === 6) ok = c === 0x2e;
    else if (k === 8) ok = c === SP;
    else ok = c >= 0x30 && c <= 0x39;
    if (!ok) {
      if (k < 8) {
        return bad(
          k === 0 && c === 0x16 ? "TLS record on a plain HTTP connection" : (
            k < 5 ? "response does not start with HTTP/" : "malformed HTTP version"
          ),
        );
      }
      return bad("malformed status code");
    }
    if (k === 7 && (b[5] !== 0x31 || (c !== 0x30 && c !== 0x31))) {
      return bad(`HTTP version ${String.fromCharCode(b[5], 0x2e, c)} not supported`);
    }
  }
  if (
    to >= 10 && b[9] !== 0x31 && b[9] !== 0x32 && b[9] !== 0x33 && b[9] !== 0x34 &&
    b[9] !== 0x35
  ) {
    return bad("status code outside 100..599");
  }
  if (to > 12 && b[12] !== SP) return bad("malformed status code");
  for (let k = 13; k < to; k++) {
    const c = b[k];
    if ((c < SP && c !== HTAB) || c === 0x7f) return bad("control character in reason phrase");
  }
  if (!complete) return PREFIX;
  if (to < 12) return bad("status line too short");
  const status = (b[9] - 0x30) * 100 + (b[10] - 0x30) * 10 + (b[11] - 0x30);
  return {
    kind: "line",
    status,
    reason: to > 13 ? latin1(b, 13, to) : "",
    version: b[7] === 0x31 ? "HTTP/1.1" : "HTTP/1.0",
  };
}

/** {@link fieldLine}, its refusals as `invalid`. */
function headerLine(
  b: Uint8Array,
  from: number,
  to: number,
  complete: boolean,
): FieldLine | Invalid | undefined {
  const r = fieldLine(b, from, to, complete);
  return typeof r === "string" ? bad(r) : r;
}

// ---------------------------------------------------------------------------------------------
// Body framing.

/** How a response body is delimited (RFC 9112 6.3); see {@link responseFraming}. */
export type ResponseFraming =
  | { kind: "none" }
  | { kind: "length"; length: number }
  | { kind: "chunked" }
  | { kind: "close" };

/**
 * How the body of a response is delimited, by RFC 9112 6.3 in order: no body for a response
 * to HEAD, a 1xx, 204 or 304 (and a 2xx to CONNECT, which starts a tunnel); chunked when
 * Transfer-Encoding is present; Content-Length bytes; otherwise until the connection closes.
 *
 * @param method the request method (case-sensitive, as sent)
 * @param status the response status code
 * @param headers the response header fields, as {@link parseResponseHead} returned them
 * @returns the framing of the response body
 * @throws {HttpFramingError} for a Content-Length that is not a decimal number or both
 *   framings at once, which parseResponseHead never returns; parse heads with it
 */
export function responseFraming(
  method: string,
  status: number,
  headers: readonly [string, string][],
): ResponseFraming {
  if (
    method === "HEAD" || status < 200 || status === 204 || status === 304 ||
    (method === "CONNECT" && status < 300)
  ) {
    return { kind: "none" };
  }
  let length: string | undefined;
  let chunked = false;
  for (const [name, value] of headers) {
    if (name.length !== 14 && name.length !== 17) continue;
    const lower = name.toLowerCase();
    if (lower === "transfer-encoding") chunked = true;
    else if (lower === "content-length" && length === undefined) length = value;
  }
  if (chunked && length !== undefined) {
    throw new HttpFramingError(
      "Cannot frame response: it has both Content-Length and Transfer-Encoding; " +
        "parse it with parseResponseHead(), which refuses such heads",
    );
  }
  if (chunked) return { kind: "chunked" };
  if (length === undefined) return { kind: "close" };
  if (length.length === 0 || length.length > MAX_LENGTH_DIGITS || !isDigits(length)) {
    throw new HttpFramingError(
      `Cannot frame response: Content-Length ${JSON.stringify(length)} is not a decimal ` +
        "number; parse it with parseResponseHead(), which refuses such heads",
    );
  }
  return { kind: "length", length: Number(length) };
}

/**
 * Whether the connection may carry another request after this response (RFC 9112 9.3):
 * HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
 *
 * @param version the response's HTTP version
 * @param headers the response header fields
 * @returns true if the connection may be reused (the body framing must allow it too)
 */
export function isKeepAlive(
  version: "HTTP/1.1" | "HTTP/1.0",
  headers: readonly [string, string][],
): boolean {
  const tokens = connectionTokens(headers);
  if (tokens.has("close")) return false;
  return version === "HTTP/1.1" || tokens.has("keep-alive");
}

/** What {@link connectionTokens} gives for fields without a Connection field: one shared set. */
const NO_TOKENS: ReadonlySet<string> = new Set();

/**
 * The lowercased option names listed in all Connection header fields.
 *
 * @param headers header fields
 * @returns the set of tokens, empty when there is no Connection field (one shared empty set:
 *   it is read on every request and response head, which mostly have none)
 */
export function connectionTokens(headers: readonly [string, string][]): ReadonlySet<string> {
  let out: Set<string> | undefined;
  for (const [name, value] of headers) {
    if (name.length !== 10 || name.toLowerCase() !== "connection") continue;
    out ??= new Set<string>();
    for (const part of value.split(",")) {
      const t = trimOws(part).toLowerCase();
      if (t.length > 0) out.add(t);
    }
  }
  return out ?? NO_TOKENS;
}

/**
 * Header fields that describe one connection and must not be forwarded (RFC 9110 7.6.1),
 * lowercased. Proxy-Authorization and Proxy-Authenticate are left to the caller, which decides
 * whether a credential is consumed by this proxy or meant for the next one.
 */
export const HOP_BY_HOP_HEADERS: readonly string[] = Object.freeze([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

const HOP_BY_HOP_SET = new Set(HOP_BY_HOP_HEADERS);

/**
 * A copy of `headers` without the {@link HOP_BY_HOP_HEADERS} and without every field that a
 * Connection header names.
 *
 * @param headers header fields in order
 * @param keep lowercased names to keep even so (e.g. `["connection", "upgrade"]` for a 101)
 * @param drop lowercased names to leave out as well (the caller's own, in the same pass)
 * @returns the end-to-end fields, order preserved
 */
export function removeHopByHop(
  headers: readonly [string, string][],
  keep?: readonly string[],
  drop?: ReadonlySet<string>,
): [string, string][] {
  const named = connectionTokens(headers);
  const out: [string, string][] = [];
  for (const h of headers) {
    const lower = h[0].toLowerCase();
    if (drop?.has(lower)) continue;
    if ((HOP_BY_HOP_SET.has(lower) || named.has(lower)) && !keep?.includes(lower)) continue;
    out.push([h[0], h[1]]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Chunked transfer coding.

/** Limits for {@link ChunkedDecoder}. */
export type ChunkedLimits = {
  /** Longest chunk-size line (size, extensions, CRLF). */
  maxLineBytes?: number;
  /** Largest trailer section, final CRLF included. */
  maxTrailerBytes?: number;
};

/** Default {@link ChunkedLimits.maxLineBytes}. */
export const DEFAULT_MAX_CHUNK_LINE_BYTES = 4096;
/** Default {@link ChunkedLimits.maxTrailerBytes}. */
export const DEFAULT_MAX_TRAILER_BYTES = 65536;

/** The result of {@link ChunkedDecoder.decode}. */
export type ChunkedResult =
  | {
    kind: "ok";
    /** Input bytes used; less than the input only when `done` (the rest is not this body's). */
    consumed: number;
    /** Whether the last chunk and the trailer section have been read. */
    done: boolean;
  }
  | { kind: "invalid"; reason: string };

const S_SIZE = 0;
const S_SIZE_BWS = 1;
const S_EXT = 2;
const S_SIZE_LF = 3;
const S_DATA = 4;
const S_DATA_CR = 5;
const S_DATA_LF = 6;
const S_TRAILER_START = 7;
const S_TRAILER_NAME = 8;
const S_TRAILER_VALUE = 9;
const S_TRAILER_LF = 10;
const S_END_LF = 11;
const S_DONE = 12;
const S_ERROR = 13;

/**
 * A streaming decoder for the chunked transfer coding (RFC 9112 7.1): feed it the bytes as
 * they arrive, it hands back the body bytes and says where the message ends, which is what
 * lets a connection be reused. Chunk extensions are checked for control bytes and ignored;
 * trailers are checked and discarded.
 *
 * Strict: chunk-size is 1*HEXDIG up to 2^53-1 (no sign, no 0x, no whitespace but the BWS
 * before a `;`), every line ends with CRLF, lines and trailers are bounded. Once it reports
 * `invalid` it stays so.
 *
 * @example
 * ```ts
 * import { ChunkedDecoder } from "./response.ts";
 * const d = new ChunkedDecoder();
 * const out: Uint8Array[] = [];
 * const r = d.decode(new TextEncoder().encode("3;x=y\r\nabc\r\n0\r\n\r\n"), out);
 * if (r.kind !== "ok" || !r.done || out.length !== 1) throw new Error("expected one chunk");
 * ```
 */
export class ChunkedDecoder {
  #state = S_SIZE;
  #size = 0;
  #digits = 0;
  #lineBytes = 0;
  #trailerBytes = 0;
  #error = "";
  readonly #maxLine: number;
  readonly #maxTrailer: number;

  /** @param limits line and trailer bounds; defaults are the exported `DEFAULT_*` constants */
  constructor(limits?: ChunkedLimits) {
    this.#maxLine = limits?.maxLineBytes ?? DEFAULT_MAX_CHUNK_LINE_BYTES;
    this.#maxTrailer = limits?.maxTrailerBytes ?? DEFAULT_MAX_TRAILER_BYTES;
  }

  /** Whether the whole chunked body, trailers included, has been decoded. */
  get done(): boolean {
    return this.#state === S_DONE;
  }

  /**
   * Decode the next bytes of the message body.
   *
   * @param input the next bytes received
   * @param out receives the decoded body bytes, as subarrays of `input` (copy them before
   *   reusing `input`'s buffer); nothing is appended for an empty stretch
   * @returns how many input bytes belong to this body and whether it ended, or `invalid`
   */
  decode(input: Uint8Array, out: Uint8Array[]): ChunkedResult {
    if (this.#state === S_ERROR) return bad(this.#error);
    if (this.#state === S_DONE) return { kind: "ok", consumed: 0, done: true };
    const n = input.length;
    let i = 0;
    let state = this.#state;
    while (i < n) {
      if (state === S_DATA) {
        const take = Math.min(this.#size, n - i);
        out.push(input.subarray(i, i + take));
        i += take;
        this.#size -= take;
        if (this.#size === 0) state = S_DATA_CR;
        continue;
      }
      const c = input[i++];
      switch (state) {
        case S_SIZE: {
          if (++this.#lineBytes > this.#maxLine) return this.#fail("chunk-size line too long");
          const d = HEX[c];
          if (d >= 0) {
            this.#size = this.#size * 16 + d;
            this.#digits++;
            if (this.#size > Number.MAX_SAFE_INTEGER) return this.#fail("chunk size too large");
            break;
          }
          if (this.#digits === 0) return this.#fail("chunk size is not a hex number");
          if (c === CR) state = S_SIZE_LF;
          else if (c === SEMI) state = S_EXT;
          else if (c === SP || c === HTAB) state = S_SIZE_BWS;
          else return this.#fail("invalid byte after chunk size");
          break;
        }
        case S_SIZE_BWS:
          if (++this.#lineBytes > this.#maxLine) return this.#fail("chunk-size line too long");
          if (c === SEMI) state = S_EXT;
          else if (c !== SP && c !== HTAB) {
            return this.#fail("whitespace after chunk size not followed by an extension");
          }
          break;
        case S_EXT:
          if (++this.#lineBytes > this.#maxLine) return this.#fail("chunk-size line too long");
          if (c === CR) state = S_SIZE_LF;
          else if ((c < SP && c !== HTAB) || c === 0x7f) {
            return this.#fail(
              c === LF ? "bare LF in a chunk-size line" : "control character in chunk extension",
            );
          }
          break;
        case S_SIZE_LF:
          if (c !== LF) return this.#fail("bare CR in a chunk-size line");
          this.#lineBytes = 0;
          this.#digits = 0;
          state = this.#size === 0 ? S_TRAILER_START : S_DATA;
          break;
        case S_DATA_CR:
          if (c !== CR) return this.#fail("chunk data not followed by CRLF");
          state = S_DATA_LF;
          break;
        case S_DATA_LF:
          if (c !== LF) return this.#fail("chunk data not followed by CRLF");
          state = S_SIZE;
          break;
        case S_TRAILER_START:
          if (++this.#trailerBytes > this.#maxTrailer) return this.#fail("trailers too large");
          if (c === CR) state = S_END_LF;
          else if (TCHAR[c] === 1) state = S_TRAILER_NAME;
          else if (c === SP || c === HTAB) return this.#fail("obs-fold in trailers");
          else return this.#fail("invalid byte in trailer field name");
          break;
        case S_TRAILER_NAME:
          if (++this.#trailerBytes > this.#maxTrailer) return this.#fail("trailers too large");
          if (c === COLON) state = S_TRAILER_VALUE;
          else if (TCHAR[c] !== 1) return this.#fail("invalid byte in trailer field name");
          break;
        case S_TRAILER_VALUE:
          if (++this.#trailerBytes > this.#maxTrailer) return this.#fail("trailers too large");
          if (c === CR) state = S_TRAILER_LF;
          else if ((c < SP && c !== HTAB) || c === 0x7f) {
            return this.#fail("control character in a trailer field");
          }
          break;
        case S_TRAILER_LF:
          if (c !== LF) return this.#fail("bare CR in trailers");
          state = S_TRAILER_START;
          break;
        case S_END_LF:
          if (c !== LF) return this.#fail("bare CR at the end of the chunked body");
          this.#state = S_DONE;
          return { kind: "ok", consumed: i, done: true };
      }
    }
    this.#state = state;
    return { kind: "ok", consumed: n, done: false };
  }

  #fail(reason: string): Invalid {
    this.#state = S_ERROR;
    this.#error = reason;
    return bad(reason);
  }
}

/** The last-chunk and empty trailer section that end a chunked body. */
export const LAST_CHUNK: Uint8Array = new Uint8Array([0x30, CR, LF, CR, LF]);

/**
 * Frame `data` as one chunk (`<hex size>\r\n<data>\r\n`) in a single new buffer, so it can go
 * out in one write. An empty `data` gives an empty buffer: a zero-size chunk would end the body.
 *
 * @param data the chunk's bytes
 * @returns the framed chunk
 */
export function encodeChunk(data: Uint8Array): Uint8Array {
  if (data.length === 0) return new Uint8Array(0);
  const size = data.length.toString(16);
  const out = new Uint8Array(size.length + 2 + data.length + 2);
  for (let i = 0; i < size.length; i++) out[i] = size.charCodeAt(i);
  out[size.length] = CR;
  out[size.length + 1] = LF;
  out.set(data, size.length + 2);
  out[out.length - 2] = CR;
  out[out.length - 1] = LF;
  return out;
}

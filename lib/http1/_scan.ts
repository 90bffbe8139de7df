/**
 * The byte-level scanning that request heads (`request.ts`) and response heads and chunked
 * bodies (`response.ts`) share: the RFC 9110 token table, CRLF line finding, field-line
 * checks and the byte-string decoders. Private to `lib/http1/`: import `request.ts` or
 * `response.ts` from outside.
 *
 * Every function here is strict in the same way for both directions, so a request and a
 * response are held to one reading of RFC 9112, never two that could drift apart.
 *
 * @module
 */

export const CR = 0x0d;
export const LF = 0x0a;
export const SP = 0x20;
export const HTAB = 0x09;
export const COLON = 0x3a;

/** Content-Length digits beyond this could not be a safe integer; no body is that large. */
export const MAX_LENGTH_DIGITS = 15;

/**
 * A 256-entry table with 1 for each byte of `chars`.
 *
 * @param chars the member bytes, one char each
 * @returns the lookup table
 */
export function byteSet(chars: string): Uint8Array {
  const t = new Uint8Array(256);
  for (let i = 0; i < chars.length; i++) t[chars.charCodeAt(i)] = 1;
  return t;
}

/** RFC 9110 5.6.2 tchar. */
export const TCHAR: Uint8Array = byteSet(
  "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
);

/**
 * Find the line starting at `from`. `end` is the index after its LF, -1 if no LF yet (then
 * `contentEnd` excludes a trailing CR that may be the start of CRLF), or -2 for a bare LF.
 *
 * @param b the buffer
 * @param from where the line starts
 * @returns the line's end and the end of its content
 */
export function nextLine(b: Uint8Array, from: number): { end: number; contentEnd: number } {
  const lf = b.indexOf(LF, from);
  if (lf < 0) {
    const n = b.length;
    return { end: -1, contentEnd: n > from && b[n - 1] === CR ? n - 1 : n };
  }
  if (lf === from || b[lf - 1] !== CR) return { end: -2, contentEnd: lf };
  return { end: lf + 1, contentEnd: lf - 1 };
}

/** A field line that {@link fieldLine} accepted. */
export type FieldLine = { kind: "field"; name: string; value: string };

/**
 * Parse `b[from, to)` as a field line (RFC 9112 5); when `complete` is false only check it
 * can begin one (returns undefined then). Refused, with the reason as a string: obs-fold, a
 * name that is not a token or is empty, whitespace between name and colon, a control byte
 * other than HTAB in the value.
 *
 * @param b the buffer
 * @param from the first byte of the line
 * @param to the end of the line's content (before CRLF)
 * @param complete whether the line is complete
 * @returns the field, the reason it is refused, or undefined (an empty or unfinished line)
 */
export function fieldLine(
  b: Uint8Array,
  from: number,
  to: number,
  complete: boolean,
): FieldLine | string | undefined {
  if (from === to) return undefined;
  // RFC 9112 5.2: obs-fold is refused; a proxy must not guess how the next hop unfolds it.
  if (b[from] === SP || b[from] === HTAB) return "obsolete line folding (obs-fold)";
  let i = from;
  while (i < to && TCHAR[b[i]] === 1) i++;
  if (i === to) return complete ? "header line without a colon" : undefined;
  if (b[i] !== COLON) {
    // RFC 9112 5.1: whitespace before the colon MUST be rejected with 400.
    if (b[i] === SP || b[i] === HTAB) return "whitespace between field name and colon";
    return "invalid byte in field name";
  }
  if (i === from) return "empty field name";
  let high = 0;
  for (let k = i + 1; k < to; k++) {
    const c = b[k];
    high |= c;
    if ((c < SP && c !== HTAB) || c === 0x7f) {
      if (c === CR) return "bare CR in a field value";
      if (c === 0) return "NUL in a field value";
      return "control character in a field value";
    }
  }
  if (!complete) return undefined;
  let vs = i + 1, ve = to;
  while (vs < ve && (b[vs] === SP || b[vs] === HTAB)) vs++;
  while (ve > vs && (b[ve - 1] === SP || b[ve - 1] === HTAB)) ve--;
  const value = high & 0x80 ? latin1(b, vs, ve) : ascii(b, vs, ve);
  return { kind: "field", name: ascii(b, from, i), value };
}

/**
 * Whether every char of `s` is a decimal digit (the caller checks for the empty string).
 *
 * @param s the string
 * @returns true when every char is 0-9 (true for "")
 */
export function isDigits(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x30 || c > 0x39) return false;
  }
  return true;
}

/**
 * Whether every char of `s` is in `set` (a {@link byteSet}).
 *
 * @param s the string
 * @param set the allowed bytes
 * @returns true when all chars are allowed
 */
export function allIn(s: string, set: Uint8Array): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 0xff || set[c] !== 1) return false;
  }
  return true;
}

/**
 * `s` without leading and trailing SP and HTAB (RFC 9110 OWS).
 *
 * @param s the string
 * @returns the trimmed string
 */
export function trimOws(s: string): string {
  let a = 0, z = s.length;
  while (a < z && (s.charCodeAt(a) === SP || s.charCodeAt(a) === HTAB)) a++;
  while (z > a && (s.charCodeAt(z - 1) === SP || s.charCodeAt(z - 1) === HTAB)) z--;
  return s.slice(a, z);
}

const UTF8 = new TextDecoder();

/**
 * Decode bytes known to be ASCII. UTF-8 decodes ASCII exactly and TextDecoder is several times
 * faster than fromCharCode on long runs; short runs are cheaper without the call into it.
 *
 * @param b the buffer
 * @param from the first byte
 * @param to the end (exclusive)
 * @returns the string
 */
export function ascii(b: Uint8Array, from: number, to: number): string {
  return to - from > 32 ? UTF8.decode(b.subarray(from, to)) : latin1(b, from, to);
}

/**
 * One char per byte, chunked so a long value cannot overflow the argument limit of apply.
 *
 * @param b the buffer
 * @param from the first byte
 * @param to the end (exclusive)
 * @returns the byte string
 */
export function latin1(b: Uint8Array, from: number, to: number): string {
  const CHUNK = 8192;
  if (to - from <= CHUNK) {
    return String.fromCharCode.apply(null, b.subarray(from, to) as unknown as number[]);
  }
  let s = "";
  for (let i = from; i < to; i += CHUNK) {
    s += String.fromCharCode.apply(
      null,
      b.subarray(i, Math.min(to, i + CHUNK)) as unknown as number[],
    );
  }
  return s;
}

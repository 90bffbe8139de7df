/**
 * Response scrubbing: every byte an upstream sends back toward the workload is searched for
 * every loaded secret, in the forms an echo commonly takes, and each one found is replaced by
 * the credential's placeholder before the workload sees it. Pure logic plus the streaming
 * decoders for content codings; the data path wires it in lib/exchange/forward.ts and lib/exchange/websocket/relay.ts.
 *
 * Forms of a secret S (UTF-8 bytes, n of them) and what replaces each (P is the placeholder):
 *
 * | form                                                       | replaced by                         |
 * | ---------------------------------------------------------- | ----------------------------------- |
 * | raw bytes                                                  | P                                   |
 * | `encodeURIComponent`, `encodeURI`, form-urlencoded (`+`    | the same encoding of P, same hex    |
 * | for space), each with upper- and lower-case hex            | case                                |
 * | inside a JSON string: escaped (`\"`, `\\`, controls), with | the same escaping of P              |
 * | `\/`, with `\uXXXX` for non-ASCII                          |                                     |
 * | base64 and base64url, padded or not, at any of the three   | see below                           |
 * | byte alignments, so inside a longer base64 text            |                                     |
 *
 * Base64 inside a longer base64 text (an echoed `Basic user:secret`, a JWT, a blob): the
 * secret's bytes start at one of three alignments in the decoded text. For each alignment the
 * characters made only of the secret's bits (the "core") are searched; the one or two
 * characters at either end that mix the secret's bits with the neighbours' are patched bit by
 * bit. Two ways to replace:
 *   - where the whole base64 text is in memory (headers, WebSocket messages, bodies that arrived
 *     whole): the base64 run around the match is decoded, scrubbed (every form, recursively),
 *     and re-encoded in the same alphabet and padding style, so `Basic base64(user:S)` comes back
 *     as `Basic base64(user:P)`;
 *   - otherwise (streamed bodies), or when the run does not decode: positionally. Every base64
 *     character that carries any bit of S is rewritten so that those bits become the bits of P
 *     fitted to S's length (cut to n bytes, or padded with `*`); the neighbours' bits are kept,
 *     so the text stays the same length and the rest of it decodes exactly as before. The
 *     decoded text then holds `fit(P, n)` where S was.
 * Either way no character carrying a bit of S is left.
 *
 * Length: where the caller must keep the body's length (a streamed body whose Content-Length is
 * forwarded), every replacement is fitted to the length of what it replaces instead
 * (`preserveLength`).
 *
 * Matching: a Wu-Manber search over 2-byte blocks (many patterns, long shifts), leftmost then
 * longest, non-overlapping. A stream holds back only the longest tail that could still start a
 * pattern, plus one base64 character a following match may have to patch, so text that ends
 * in a line break (server-sent events) is passed on at once.
 *
 * Why one file of ~1,100 lines: the forms, the matcher and the decoders form one engine whose
 * invariant (no form of a secret passes whole) is checked in one place; split, each part would
 * need the others' internals.
 *
 * @module
 */
import { grpcMessageStream, isGrpc } from "../http2/grpc.ts";
import * as zlib from "node:zlib";

const EMPTY = new Uint8Array(0);
const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

// ---------------------------------------------------------------------------------------------
// Base64 tables

const STD_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const STD = utf8.encode(STD_CHARS);
const URL = utf8.encode(URL_CHARS);
/** Byte to its 6-bit value in either alphabet, or -1. */
const VALUE = new Int8Array(256).fill(-1);
for (let i = 0; i < 64; i++) {
  VALUE[STD[i]] = i;
  VALUE[URL[i]] = i;
}
const PAD = 0x3d; // "="

/** Which base64 alphabet a rule or a run uses. */
const Alpha = {
  std: 0,
  url: 1,
  /** The characters matched are common to both (no `+/-_`): decided from the context. */
  both: 2,
} as const;
type Alpha = typeof Alpha[keyof typeof Alpha];

function isB64(b: number): boolean {
  return VALUE[b] >= 0;
}

function encodeB64(bytes: Uint8Array, alpha: Alpha, pad: boolean): Uint8Array {
  const table = alpha === Alpha.url ? URL : STD;
  const n = bytes.length;
  const out = new Uint8Array(Math.ceil(n / 3) * 4);
  let o = 0;
  let i = 0;
  for (; i + 3 <= n; i += 3) {
    const v = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out[o++] = table[v >> 18];
    out[o++] = table[(v >> 12) & 63];
    out[o++] = table[(v >> 6) & 63];
    out[o++] = table[v & 63];
  }
  const r = n - i;
  if (r === 1) {
    const v = bytes[i] << 16;
    out[o++] = table[v >> 18];
    out[o++] = table[(v >> 12) & 63];
    if (pad) out[o++] = PAD, out[o++] = PAD;
  } else if (r === 2) {
    const v = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out[o++] = table[v >> 18];
    out[o++] = table[(v >> 12) & 63];
    out[o++] = table[(v >> 6) & 63];
    if (pad) out[o++] = PAD;
  }
  return out.subarray(0, o);
}

/** Decodes base64 characters (either alphabet, no padding); null if the length cannot be. */
function decodeB64(chars: Uint8Array): Uint8Array | null {
  const n = chars.length;
  if (n % 4 === 1) return null;
  const out = new Uint8Array(Math.floor((n * 6) / 8));
  let acc = 0, bits = 0, o = 0;
  for (let i = 0; i < n; i++) {
    const v = VALUE[chars[i]];
    if (v < 0) return null;
    acc = ((acc << 6) | v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >> bits) & 0xff;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Forms of a secret

/** `s` cut or padded with `*` to exactly `n` bytes of UTF-8, never splitting a character. */
export function fitBytes(s: Uint8Array, n: number): Uint8Array {
  const out = new Uint8Array(n).fill(0x2a); // "*"
  let end = Math.min(n, s.length);
  if (end < s.length) { while (end > 0 && (s[end] & 0xc0) === 0x80) end--; }
  out.set(s.subarray(0, end));
  return out;
}

/** Percent-encoded text with its hex digits in lower case. */
function lowerHex(s: string): string {
  return s.replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());
}

/** application/x-www-form-urlencoded, as URLSearchParams writes it. */
function formEncode(s: string): string {
  return new URLSearchParams([["", s]]).toString().slice(1);
}

/** The body of a JSON string literal, as JSON.stringify writes it. */
function jsonEscape(s: string): string {
  return JSON.stringify(s).slice(1, -1);
}

/** Non-ASCII as `\uXXXX` (lower-case hex, surrogate pairs), as Python's json.dumps writes it. */
function jsonAscii(s: string): string {
  return s.replace(
    /[\u0080-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/** The text forms of a value, each a function so the placeholder gets the same one. */
const TEXT_FORMS: readonly [string, (s: string) => string][] = [
  ["percent", encodeURIComponent],
  ["percent-lower", (s) => lowerHex(encodeURIComponent(s))],
  ["uri", encodeURI],
  ["uri-lower", (s) => lowerHex(encodeURI(s))],
  ["form", formEncode],
  ["form-lower", (s) => lowerHex(formEncode(s))],
  ["json", jsonEscape],
  ["json-slash", (s) => jsonEscape(s).replaceAll("/", "\\/")],
  ["json-ascii", (s) => jsonAscii(jsonEscape(s))],
  ["json-ascii-slash", (s) => jsonAscii(jsonEscape(s)).replaceAll("/", "\\/")],
];

/** A form replaced as a whole by a fixed replacement. */
type ReplaceRule = {
  kind: "replace";
  form: string;
  pattern: Uint8Array;
  rep: Uint8Array;
  /** `rep` fitted to the pattern's length (preserveLength). */
  fitted: Uint8Array;
};

/** The base64 core of a secret at one alignment, in one alphabet (or both). */
type Base64Rule = {
  kind: "base64";
  form: string;
  pattern: Uint8Array;
  alpha: Alpha;
  /** Bytes of the decoded text before the secret within its 3-byte group: 0, 1 or 2. */
  shift: number;
  /** Index of the core's first character in the encoding of (shift bytes + secret). */
  start: number;
  /** 6-bit values of the encoding of (shift zero bytes + fit(P, n) + two zero bytes). */
  values: Uint8Array;
  /** Bits of the character before the core that belong to the neighbour (0 when shift is 0). */
  leftKeep: number;
  /** Bits of the character after the core that belong to the neighbour; -1: no such character. */
  rightKeep: number;
};

type Rule = ReplaceRule | Base64Rule;

/**
 * Every pattern searched for one secret, with its replacement.
 *
 * @param secret the real value
 * @param placeholder what the workload holds instead
 * @returns the rules, duplicates removed (the first form wins)
 */
function rulesFor(secret: string, placeholder: string): Rule[] {
  const rules: Rule[] = [];
  const seen = new Set<string>();
  const add = (r: Rule) => {
    const key = String.fromCharCode(...r.pattern);
    if (seen.has(key)) return;
    seen.add(key);
    rules.push(r);
  };
  const sb = utf8.encode(secret);
  const pb = utf8.encode(placeholder);
  add({ kind: "replace", form: "raw", pattern: sb, rep: pb, fitted: fitBytes(pb, sb.length) });
  for (const [form, f] of TEXT_FORMS) {
    const pattern = utf8.encode(f(secret));
    const rep = utf8.encode(f(placeholder));
    add({ kind: "replace", form, pattern, rep, fitted: fitText(rep, pattern.length) });
  }
  const n = sb.length;
  const fitted = fitBytes(pb, n);
  for (let shift = 0; shift < 3; shift++) {
    const bits = 8 * (shift + n);
    const start = Math.ceil((8 * shift) / 6);
    const end = Math.floor(bits / 6);
    if (end - start < 6) continue; // too short to be told from chance
    const withSecret = new Uint8Array(shift + n + 2);
    withSecret.set(sb, shift);
    const withPh = new Uint8Array(shift + n + 2);
    withPh.set(fitted, shift);
    const values = new Uint8Array(end + 1);
    const enc = encodeB64(withPh, Alpha.std, false);
    for (let i = 0; i <= end; i++) values[i] = VALUE[enc[i]];
    const std = encodeB64(withSecret, Alpha.std, false).slice(start, end);
    const url = encodeB64(withSecret, Alpha.url, false).slice(start, end);
    const same = std.every((b, i) => b === url[i]);
    const secretBitsRight = bits - 6 * end; // 0, 2 or 4
    const base = {
      kind: "base64" as const,
      shift,
      start,
      values,
      leftKeep: shift === 0 ? 0 : shift === 1 ? 0b110000 : 0b111100,
      rightKeep: secretBitsRight === 0 ? -1 : (1 << (6 - secretBitsRight)) - 1,
    };
    if (same) add({ ...base, form: `base64@${shift}`, pattern: std, alpha: Alpha.both });
    else {
      add({ ...base, form: `base64@${shift}`, pattern: std, alpha: Alpha.std });
      add({ ...base, form: `base64url@${shift}`, pattern: url, alpha: Alpha.url });
    }
  }
  return rules;
}

/** An encoded replacement fitted to `n` bytes without cutting a `%XX` or `\uXXXX` escape. */
function fitText(rep: Uint8Array, n: number): Uint8Array {
  if (rep.length <= n) return fitBytes(rep, n);
  let end = n;
  // Back off to before an escape the cut would split.
  for (let i = Math.max(0, n - 5); i < n; i++) {
    if (rep[i] === 0x25 && i + 3 > n) end = Math.min(end, i); // %XX
    if (rep[i] === 0x5c && i + 6 > n) end = Math.min(end, i); // \uXXXX or \x
  }
  return fitBytes(rep.subarray(0, end), n);
}

/**
 * The strings a secret is searched as (tests and tools use it to grep for leaks the same way):
 * raw, each text form, and each base64 / base64url core.
 *
 * @param secret the value
 * @returns the distinct patterns, as strings (latin1 for bytes beyond ASCII)
 */
export function scrubForms(secret: string): string[] {
  return rulesFor(secret, "x".repeat(8)).map((r) => String.fromCharCode(...r.pattern));
}

// ---------------------------------------------------------------------------------------------
// Multi-pattern search

/**
 * Wu-Manber search over 2-byte blocks: the shift table is indexed by the last two bytes of the
 * window, so dozens of patterns still shift by nearly the shortest pattern's length.
 */
export class Matcher {
  /** The patterns, as given (at least 2 bytes each). */
  readonly patterns: readonly Uint8Array[];
  /** Length of the shortest and the longest pattern. */
  readonly min: number;
  readonly max: number;
  /** Start of the match {@link find} last returned. */
  lastStart = -1;
  #shift: Uint8Array;
  #buckets: (number[] | undefined)[] = new Array(65536);
  #first: (number[] | undefined)[] = new Array(256);

  /** @param patterns distinct byte strings, each at least 2 bytes long */
  constructor(patterns: readonly Uint8Array[]) {
    this.patterns = patterns;
    let min = Infinity, max = 0;
    for (const p of patterns) {
      if (p.length < 2) throw new RangeError("Matcher: a pattern must be at least 2 bytes");
      min = Math.min(min, p.length);
      max = Math.max(max, p.length);
    }
    this.min = patterns.length ? min : 0;
    this.max = max;
    const m = this.min;
    this.#shift = new Uint8Array(65536).fill(Math.min(255, Math.max(m - 1, 1)));
    for (const p of patterns) {
      for (let j = 0; j + 1 < m; j++) {
        const block = (p[j] << 8) | p[j + 1];
        const s = m - 2 - j;
        if (s < this.#shift[block]) this.#shift[block] = s;
      }
    }
    const order = patterns.map((_, i) => i).sort((a, b) =>
      patterns[b].length - patterns[a].length || a - b
    );
    for (const i of order) {
      const p = patterns[i];
      (this.#buckets[(p[m - 2] << 8) | p[m - 1]] ??= []).push(i);
      (this.#first[p[0]] ??= []).push(i);
    }
  }

  /**
   * The leftmost (then longest) pattern starting in `[from, limit)` and ending by `end`. Sets
   * {@link lastStart}.
   *
   * @returns the pattern's index, or -1
   */
  find(buf: Uint8Array, from: number, limit: number, end: number): number {
    const m = this.min;
    if (m === 0) return -1;
    const shift = this.#shift;
    const buckets = this.#buckets;
    const patterns = this.patterns;
    const lastPos = Math.min(limit + m - 2, end - 1);
    let pos = from + m - 1;
    while (pos <= lastPos) {
      const block = (buf[pos - 1] << 8) | buf[pos];
      const sh = shift[block];
      if (sh !== 0) {
        pos += sh;
        continue;
      }
      const bucket = buckets[block]!;
      const s = pos - m + 1;
      for (let b = 0; b < bucket.length; b++) {
        const p = patterns[bucket[b]];
        const n = p.length;
        if (s + n > end) continue;
        let k = 0;
        while (k < n && buf[s + k] === p[k]) k++;
        if (k === n) {
          this.lastStart = s;
          return bucket[b];
        }
      }
      pos++;
    }
    return -1;
  }

  /**
   * The length of the longest tail of `buf[from, len)`, shorter than the longest pattern, that
   * is the beginning of some pattern: the bytes a stream must hold back.
   */
  holdLength(buf: Uint8Array, from: number, len: number): number {
    const patterns = this.patterns;
    for (let l = Math.min(this.max - 1, len - from); l >= 1; l--) {
      const a = len - l;
      const bucket = this.#first[buf[a]];
      if (bucket === undefined) continue;
      for (let b = 0; b < bucket.length; b++) {
        const p = patterns[bucket[b]];
        if (p.length < l) continue;
        let k = 1;
        while (k < l && buf[a + k] === p[k]) k++;
        if (k === l) return l;
      }
    }
    return 0;
  }
}

// ---------------------------------------------------------------------------------------------
// The scrubber

/** Options of one scrubbing pass or stream. */
export type ScrubOptions = {
  /**
   * Keep the length: every replacement is fitted to the length of what it replaces (cut, or
   * padded with `*`). For streamed bodies whose Content-Length is forwarded.
   */
  preserveLength?: boolean;
};

/** What the previous byte of a stream is, for a match at the start of the next buffer. */
const Ctx = {
  /** Start of the stream. */
  none: 0,
  /** Held back, not yet sent: a match may still patch it. */
  pending: 1,
  /** Sent already: read-only. */
  sent: 2,
  /** The last byte of a replaced region, sent: neither read nor patched. */
  replaced: 3,
} as const;
type Ctx = typeof Ctx[keyof typeof Ctx];

/** A match: positional base64 (patched in place) or a region replaced by new bytes. */
type Claim = {
  start: number;
  end: number;
  rule: number;
  /** Replacement of [start, end); null for an in-place base64 patch of the core. */
  rep: Uint8Array | null;
};

/**
 * Replaces every form of every secret it was built with. Immutable after construction and
 * shared by every response of a policy load; streams keep their own state.
 */
export class Scrubber {
  readonly #rules: Rule[];
  readonly #m: Matcher;

  /**
   * @param pairs each secret with its placeholder; values equal across credentials take the
   *   first one's placeholder
   */
  constructor(pairs: readonly { secret: string; placeholder: string }[]) {
    const rules: Rule[] = [];
    const seen = new Set<string>();
    for (const { secret, placeholder } of pairs) {
      for (const r of rulesFor(secret, placeholder)) {
        if (r.pattern.length < 2) continue; // values under 8 characters are refused at load
        const key = String.fromCharCode(...r.pattern);
        if (seen.has(key)) continue;
        seen.add(key);
        rules.push(r);
      }
    }
    this.#rules = rules;
    this.#m = new Matcher(rules.map((r) => r.pattern));
  }

  /** Number of patterns searched (every form of every secret). */
  get patternCount(): number {
    return this.#rules.length;
  }

  /** Whether any form of any secret occurs in `bytes`. */
  test(bytes: Uint8Array): boolean {
    return this.#m.find(bytes, 0, bytes.length, bytes.length) >= 0;
  }

  /**
   * Scrubs a whole buffer. Base64 runs holding a secret are decoded and re-encoded (see the
   * module doc); with `preserveLength` they are patched in place instead.
   *
   * @returns the input itself when nothing was found, else a new buffer
   */
  bytes(input: Uint8Array, opts?: ScrubOptions): Uint8Array {
    return this.#whole(input, opts?.preserveLength === true, 0);
  }

  #whole(input: Uint8Array, preserve: boolean, depth: number): Uint8Array {
    if (input.length < this.#m.min) return input;
    const r = this.#pass(input, false, 0, Ctx.none, true, preserve, !preserve && depth < 2, depth);
    return r.out;
  }

  /**
   * Scrubs text (a WebSocket message, a close reason, an error message quoting the upstream).
   *
   * @returns the text itself when nothing was found
   */
  text(s: string): string {
    if (s.length < this.#m.min / 3) return s;
    const b = utf8.encode(s);
    const out = this.bytes(b);
    return out === b ? s : utf8Decoder.decode(out);
  }

  /**
   * Scrubs one header value or name, a latin1 byte string as HTTP carries it.
   *
   * @returns the value itself when nothing was found
   */
  latin1(s: string): string {
    if (s.length < this.#m.min) return s;
    const b = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);
    if (!this.test(b)) return s;
    const out = this.bytes(b);
    let r = "";
    for (let i = 0; i < out.length; i += 8192) {
      r += String.fromCharCode(...out.subarray(i, i + 8192));
    }
    return r;
  }

  /**
   * Scrubs header fields, names and values. A name that is no longer a valid token after
   * scrubbing (a placeholder with characters a name cannot hold) is dropped with its value.
   *
   * @returns a fresh list
   */
  headers(fields: readonly (readonly [string, string])[]): [string, string][] {
    const out: [string, string][] = [];
    for (const [n, v] of fields) {
      const name = this.latin1(n);
      if (name !== n && !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) continue;
      out.push([name, this.latin1(v)]);
    }
    return out;
  }

  /**
   * A stream transform with the same result as {@link bytes} with `preserveLength`, or
   * without it, except that base64 is always patched in place (a stream never has the whole
   * base64 run at hand), however the input is chunked. Holds back only what could still
   * start a match (see {@link Matcher.holdLength}) plus at most one base64 character.
   */
  stream(opts?: ScrubOptions): TransformStream<Uint8Array, Uint8Array> {
    const preserve = opts?.preserveLength === true;
    let pend: Uint8Array = EMPTY;
    let ctx: Ctx = Ctx.none;
    return new TransformStream({
      transform: (chunk, controller) => {
        if (chunk.length === 0) return;
        let buf: Uint8Array = chunk;
        let owned = false;
        if (pend.length) {
          buf = new Uint8Array(pend.length + chunk.length);
          buf.set(pend);
          buf.set(chunk, pend.length);
          owned = true;
        }
        const from = ctx === Ctx.none ? 0 : 1;
        const r = this.#pass(buf, owned, from, ctx, false, preserve, false, 0);
        if (r.out.length) controller.enqueue(r.out);
        pend = r.carry;
        ctx = r.ctx;
      },
      flush: (controller) => {
        if (!pend.length) return;
        const from = ctx === Ctx.none ? 0 : 1;
        const r = this.#pass(pend, true, from, ctx, true, preserve, false, 0);
        pend = EMPTY;
        if (r.out.length) controller.enqueue(r.out);
      },
    });
  }

  /**
   * One pass over `buf`. `from` is 1 when `buf[0]` is the previous round's context byte
   * (`ctx` says what it is), else 0. Final: nothing follows `buf`.
   *
   * @returns `out`, the bytes to send (may alias `input` when nothing was replaced); `carry`,
   *   a copy of the bytes to prepend to the next chunk (the first one the context byte, unless
   *   nothing was decided); `ctx`, what that first byte is
   */
  #pass(
    input: Uint8Array,
    owned: boolean,
    from: number,
    ctx: Ctx,
    final: boolean,
    preserve: boolean,
    runs: boolean,
    depth: number,
  ): { out: Uint8Array; carry: Uint8Array; ctx: Ctx } {
    let buf = input;
    const len = buf.length;
    const m = this.#m;
    const rules = this.#rules;
    const limit = final ? len : len - m.holdLength(buf, from, len);
    const claims: Claim[] = [];
    let pos = from;
    let stop = -1;
    let patches = false;
    for (;;) {
      const i = m.find(buf, pos, limit, len);
      if (i < 0) break;
      const s = m.lastStart;
      const rule = rules[i];
      const e = s + rule.pattern.length;
      if (rule.kind === "replace") {
        claims.push({ start: s, end: e, rule: i, rep: preserve ? rule.fitted : rule.rep });
        pos = e;
        continue;
      }
      if (rule.rightKeep >= 0 && e >= limit && !final) {
        // The character after the core is needed (or may yet start another match).
        stop = s;
        break;
      }
      if (runs) {
        const prevEnd = claims.length ? claims[claims.length - 1].end : from;
        const run = this.#decodeRun(buf, s, e, prevEnd, depth);
        // Another form starting inside the run (a secret glued to the base64 text) is left
        // to its own match: then this one is patched in place.
        if (run !== null && m.find(buf, e, run.end, len) < 0) {
          claims.push({ start: run.start, end: run.end, rule: i, rep: run.rep });
          pos = run.end;
          continue;
        }
      }
      claims.push({ start: s, end: e, rule: i, rep: null });
      patches = true;
      pos = e;
    }
    const cut = stop >= 0 ? stop : Math.min(len, Math.max(pos, limit));
    if (!final && cut <= from) return { out: EMPTY, carry: input.slice(), ctx };

    if (patches) {
      if (!owned) buf = buf.slice();
      for (let k = 0; k < claims.length; k++) {
        const c = claims[k];
        if (c.rep !== null) continue;
        const rule = rules[c.rule] as Base64Rule;
        const prev = k > 0 ? claims[k - 1] : null;
        const next = k + 1 < claims.length ? claims[k + 1] : null;
        const alpha = rule.alpha === Alpha.both ? alphabetAround(buf, c.start, c.end) : rule.alpha;
        const table = alpha === Alpha.url ? URL : STD;
        const v = rule.values;
        // The character before the core: its low bits are the secret's.
        const li = c.start - 1;
        const leftFree = rule.shift > 0 && li >= 0 &&
          !(li === 0 && from === 1 && ctx !== Ctx.pending) &&
          !(prev !== null && prev.rep !== null && prev.end > li);
        if (leftFree && isB64(buf[li])) {
          buf[li] = table[(VALUE[buf[li]] & rule.leftKeep) | v[rule.start - 1]];
        }
        for (let j = 0; j < c.end - c.start; j++) buf[c.start + j] = table[v[rule.start + j]];
        // The character after the core: its high bits are the secret's.
        const ri = c.end;
        const rightFree = rule.rightKeep >= 0 && ri < len &&
          !(next !== null && next.rep !== null && next.start <= ri);
        if (rightFree && isB64(buf[ri])) {
          const end = rule.start + (c.end - c.start);
          buf[ri] = table[(VALUE[buf[ri]] & rule.rightKeep) | v[end]];
        }
      }
    }

    // What is sent now, and what is carried over.
    let outStart = from === 1 && ctx !== Ctx.pending ? 1 : 0;
    let emitEnd = len;
    let carry = EMPTY;
    let nextCtx: Ctx = Ctx.none;
    if (!final) {
      // cut > from here, so the byte before it is never the old context byte.
      const last = claims.length ? claims[claims.length - 1] : null;
      carry = buf.slice(cut - 1);
      if (last !== null && last.rep !== null && last.end === cut) {
        nextCtx = Ctx.replaced;
        emitEnd = cut;
      } else if (isB64(buf[cut - 1])) {
        nextCtx = Ctx.pending;
        emitEnd = cut - 1;
      } else {
        nextCtx = Ctx.sent;
        emitEnd = cut;
      }
    }
    if (outStart > emitEnd) outStart = emitEnd;
    let size = 0;
    let at = outStart;
    let replaced = false;
    for (const c of claims) {
      if (c.rep === null) continue;
      replaced = true;
      size += c.start - at + c.rep.length;
      at = c.end;
    }
    size += emitEnd - at;
    if (!replaced) {
      const out = buf === input && outStart === 0 && emitEnd === len
        ? input
        : buf.subarray(outStart, emitEnd);
      return { out, carry, ctx: nextCtx };
    }
    const out = new Uint8Array(size);
    let o = 0;
    at = outStart;
    for (const c of claims) {
      if (c.rep === null) continue;
      out.set(buf.subarray(at, c.start), o);
      o += c.start - at;
      out.set(c.rep, o);
      o += c.rep.length;
      at = c.end;
    }
    out.set(buf.subarray(at, emitEnd), o);
    return { out, carry, ctx: nextCtx };
  }

  /**
   * The base64 run around a core match at [s, e), decoded, scrubbed and re-encoded; null when
   * it does not decode or decoding does not expose the secret (then the caller patches).
   */
  #decodeRun(
    buf: Uint8Array,
    s: number,
    e: number,
    floor: number,
    depth: number,
  ): { start: number; end: number; rep: Uint8Array } | null {
    let a = s;
    while (a > floor && isB64(buf[a - 1])) a--;
    let b = e;
    while (b < buf.length && isB64(buf[b])) b++;
    const chars = buf.subarray(a, b);
    let std = false, url = false;
    for (const c of chars) {
      if (c === 0x2b || c === 0x2f) std = true;
      else if (c === 0x2d || c === 0x5f) url = true;
    }
    if (std && url) return null;
    let pads = 0;
    while (pads < 2 && b + pads < buf.length && buf[b + pads] === PAD) pads++;
    const decoded = decodeB64(chars);
    if (decoded === null) return null;
    const scrubbed = this.#whole(decoded, false, depth + 1);
    if (scrubbed === decoded) return null;
    // A run between dots is a JWT segment: base64url, unpadded.
    const jwt = !std && pads === 0 && (buf[a - 1] === 0x2e || buf[b] === 0x2e);
    const alpha = url || jwt ? Alpha.url : Alpha.std;
    // Padding as the original had it; with no evidence, the alphabet's habit.
    const pad = pads > 0 || (chars.length % 4 === 0 && alpha === Alpha.std);
    let rep = encodeB64(scrubbed, alpha, pad);
    // What re-encoding put next to each other is scanned once more (raw forms in the text).
    rep = this.#whole(rep, false, 2);
    return { start: a, end: b + pads, rep };
  }
}

/** The alphabet of the base64 text around [s, e): url if `-` or `_` is near, else standard. */
function alphabetAround(buf: Uint8Array, s: number, e: number): Alpha {
  let i = s - 1;
  while (i >= 0 && i >= s - 256 && isB64(buf[i])) {
    const c = buf[i--];
    if (c === 0x2d || c === 0x5f) return Alpha.url;
    if (c === 0x2b || c === 0x2f) return Alpha.std;
  }
  i = e;
  while (i < buf.length && i < e + 256 && isB64(buf[i])) {
    const c = buf[i++];
    if (c === 0x2d || c === 0x5f) return Alpha.url;
    if (c === 0x2b || c === 0x2f) return Alpha.std;
  }
  return Alpha.std;
}

// ---------------------------------------------------------------------------------------------
// Content codings

/** Content codings sluice decodes to scrub (RFC 9110 8.4.1; `x-gzip` is gzip). */
export const DECODABLE_CODINGS: readonly string[] = Object.freeze(
  ["gzip", "x-gzip", "deflate", "br", ...(hasZstd() ? ["zstd"] : [])],
);

function hasZstd(): boolean {
  return typeof (zlib as unknown as Record<string, unknown>).createZstdDecompress === "function";
}

/**
 * The content codings of a response, in the order they were applied, `identity` left out.
 *
 * @param headers the response's fields
 * @returns lower-case coding names; empty for an identity body
 */
export function contentCodings(headers: readonly (readonly [string, string])[]): string[] {
  const out: string[] = [];
  for (const [n, v] of headers) {
    if (n.toLowerCase() !== "content-encoding") continue;
    for (const t of v.split(",")) {
      const c = t.trim().toLowerCase();
      if (c !== "" && c !== "identity") out.push(c);
    }
  }
  return out;
}

type NodeDecoder = {
  write(chunk: Uint8Array): boolean;
  end(): void;
  read(): Uint8Array | null;
  destroy(): void;
  on(event: string, f: (arg?: unknown) => void): void;
  readonly writableNeedDrain: boolean;
};

/** A streaming decoder for one coding; `first` tells zlib-wrapped from raw deflate. */
function nodeDecoder(coding: string, first: Uint8Array): NodeDecoder {
  const z = zlib as unknown as Record<string, () => NodeDecoder>;
  switch (coding) {
    case "gzip":
    case "x-gzip":
      return z.createGunzip();
    case "deflate":
      // RFC 9110 says zlib-wrapped; some servers send raw deflate. A zlib header has
      // CM 8 in its low nibble and a check sum making the first two bytes a multiple of 31.
      return first.length >= 2 && (first[0] & 0x0f) === 8 &&
          ((first[0] << 8) | first[1]) % 31 === 0
        ? z.createInflate()
        : z.createInflateRaw();
    case "br":
      return z.createBrotliDecompress();
    case "zstd":
      return z.createZstdDecompress();
  }
  throw new Error(`no decoder for ${coding}`);
}

/** A body that does not decode under its declared coding. */
export class BodyDecodeError extends Error {
  /** @param coding the coding; @param cause what the decoder said */
  constructor(coding: string, cause: unknown) {
    super(
      `the upstream's ${coding} body does not decode: ${
        cause instanceof Error ? cause.message : String(cause)
      }`,
    );
    this.name = "BodyDecodeError";
  }
}

/**
 * Decodes one content coding as a stream, with backpressure on the decoded side (a small
 * compressed body that expands enormously is produced only as fast as it is read).
 *
 * @param src the coded body
 * @param coding one of {@link DECODABLE_CODINGS}
 * @returns the decoded body; errors with {@link BodyDecodeError} on corrupt input
 */
export function decodeStream(
  src: ReadableStream<Uint8Array>,
  coding: string,
): ReadableStream<Uint8Array> {
  const reader = src.getReader();
  let z: NodeDecoder | null = null;
  let ended = false;
  let inputDone = false;
  let failed: unknown = null;
  let wake: (() => void) | null = null;
  const poke = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  return new ReadableStream<Uint8Array>({
    pull: async (controller) => {
      for (;;) {
        if (failed !== null) throw new BodyDecodeError(coding, failed);
        if (z !== null) {
          const b = z.read();
          if (b !== null) {
            controller.enqueue(new Uint8Array(b.buffer, b.byteOffset, b.byteLength));
            return;
          }
        }
        if (ended) {
          controller.close();
          return;
        }
        if (!inputDone && (z === null || !z.writableNeedDrain)) {
          const { value, done } = await reader.read();
          if (done) {
            inputDone = true;
            if (z === null) {
              controller.close(); // an empty body: nothing to decode
              return;
            }
            z.end();
          } else if (value.length) {
            if (z === null) {
              z = nodeDecoder(coding, value);
              z.on("readable", poke);
              z.on("drain", poke);
              z.on("end", () => {
                ended = true;
                poke();
              });
              z.on("error", (e) => {
                failed = e ?? "error";
                poke();
              });
            }
            z.write(value);
          }
          continue;
        }
        await new Promise<void>((resolve) => (wake = resolve));
      }
    },
    cancel: (reason) => {
      reader.cancel(reason).catch(() => {});
      z?.destroy();
    },
  }, { highWaterMark: 0 });
}

/** Coded bodies read whole are decoded in memory up to this size, else streamed. */
export const WHOLE_DECODE_LIMIT = 1 << 20;

/**
 * Bodies whose declared length is at most this are read whole before the response is sent,
 * so they are scrubbed whole (exact placeholders, base64 re-encoded) whether or not they
 * arrived with the head.
 */
export const WHOLE_BODY_LIMIT = 64 * 1024;

async function readAll(body: ReadableStream<Uint8Array>, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let at = 0;
  for await (const chunk of body) {
    if (at + chunk.length > length) throw new Error("the body is longer than its Content-Length");
    out.set(chunk, at);
    at += chunk.length;
  }
  if (at !== length) throw new Error("the body ended before its Content-Length");
  return out;
}

function decodeSync(coding: string, data: Uint8Array): Uint8Array {
  const opts = { maxOutputLength: WHOLE_DECODE_LIMIT };
  const z = zlib as unknown as Record<string, (b: Uint8Array, o: typeof opts) => Uint8Array>;
  switch (coding) {
    case "gzip":
    case "x-gzip":
      return z.gunzipSync(data, opts);
    case "deflate":
      return data.length >= 2 && (data[0] & 0x0f) === 8 && ((data[0] << 8) | data[1]) % 31 === 0
        ? z.inflateSync(data, opts)
        : z.inflateRawSync(data, opts);
    case "br":
      return z.brotliDecompressSync(data, opts);
    case "zstd":
      return z.zstdDecompressSync(data, opts);
  }
  throw new Error(`no decoder for ${coding}`);
}

// ---------------------------------------------------------------------------------------------
// Responses

/** The parts of an upstream response that {@link scrubResponse} needs. */
export type ResponseParts = {
  status: number;
  reason: string;
  headers: [string, string][];
  body: ReadableStream<Uint8Array> | null;
  whole?: Uint8Array<ArrayBuffer>;
};

/** A response ready for the client, or the reason it must be refused. */
export type ScrubbedResponse =
  | {
    ok: true;
    status: number;
    reason: string;
    headers: [string, string][];
    /** Bytes (the body is complete), a stream, or null (no body). */
    body: Uint8Array<ArrayBuffer> | ReadableStream<Uint8Array> | null;
  }
  /** `code` for the 502: `upstream-encoding`, or `upstream-reset` (the body failed). */
  | { ok: false; code: "upstream-encoding" | "upstream-reset"; reason: string };

/**
 * Prepares an upstream response for the workload: the reason phrase, every header field and
 * the body scrubbed of every secret the scrubber holds.
 *
 * - Identity bodies: bytes that came whole are scrubbed whole (base64 runs re-encoded);
 *   streams are scrubbed as they pass, keeping Content-Length (replacements fitted to the
 *   length) when the upstream sent one.
 * - Coded bodies (gzip, x-gzip, deflate, br, and zstd where the runtime has it, stacked in any
 *   order): decoded, scrubbed and sent as identity; Content-Encoding, Content-Length and
 *   digests of the coded bytes are dropped, and a strong ETag is made weak. A body that came
 *   whole and decodes to at most {@link WHOLE_DECODE_LIMIT} is scrubbed whole.
 * - Refused (`ok: false`): a coding sluice cannot decode, or a partial (206) coded body, which
 *   cannot be decoded on its own. Whole coded bodies that do not decode are refused too;
 *   streamed ones error mid-body (nothing undecoded is ever sent).
 * - Without a body (HEAD, 204, 304): the fields, with codings sluice would have decoded
 *   dropped so they describe what a GET would return.
 *
 * @param scrubber every loaded secret; null passes the response through untouched
 * @param up the upstream's response
 * @param bodyless true when the response has no body whatever its fields say
 * @returns the response's parts, or why it is refused (the caller answers 502)
 */
export async function scrubResponse(
  scrubber: Scrubber | null,
  up: ResponseParts,
  bodyless: boolean,
): Promise<ScrubbedResponse> {
  if (bodyless) up.body?.cancel().catch(() => {});
  if (scrubber === null) {
    const body = bodyless ? null : up.whole ?? up.body;
    return { ok: true, status: up.status, reason: up.reason, headers: up.headers, body };
  }
  const codings = contentCodings(up.headers);
  const unknown = codings.filter((c) => !DECODABLE_CODINGS.includes(c));
  const decode = codings.length > 0 && unknown.length === 0;
  const reason = scrubber.latin1(up.reason);
  // Decoded: the coding, the coded length and digests of the coded bytes no longer apply.
  const drop = decode
    ? ["content-encoding", "content-length", "content-md5", "content-digest"]
    : [];
  const fields = (whole: boolean): [string, string][] => {
    const out: [string, string][] = [];
    for (const [n, v] of scrubber.headers(up.headers)) {
      const lower = n.toLowerCase();
      // Bytes are framed by the server from their own length.
      if (drop.includes(lower) || (whole && lower === "content-length")) continue;
      if (decode && lower === "etag" && !v.trimStart().startsWith("W/")) {
        out.push([n, `W/${v.trim()}`]);
      } else out.push([n, v]);
    }
    return out;
  };
  if (bodyless) return { ok: true, status: up.status, reason, headers: fields(false), body: null };
  if (isGrpc(up.headers.find(([n]) => n.toLowerCase() === "content-type")?.[1])) {
    // gRPC messages are length-prefixed (and so are the protobuf fields inside them): a real
    // value is masked in place, its length kept, so no frame or field length goes wrong.
    // Compressed messages cannot be checked (sluice asks for identity when it substituted).
    const coding = up.headers.find(([n]) => n.toLowerCase() === "grpc-encoding")?.[1]?.trim();
    if (coding && coding.toLowerCase() !== "identity") {
      up.body?.cancel().catch(() => {});
      return {
        ok: false,
        code: "upstream-encoding",
        reason: `the gRPC response is compressed with ${
          JSON.stringify(scrubber.latin1(coding))
        }, which sluice cannot check for secrets message by message`,
      };
    }
    const body = up.whole !== undefined ? ReadableStream.from([up.whole]) : up.body;
    return {
      ok: true,
      status: up.status,
      reason,
      headers: fields(false),
      // Message by message: each is scrubbed whole once its last byte is in, so a streaming
      // call's messages are not held back waiting for bytes that may come much later.
      body: body?.pipeThrough(
        grpcMessageStream((payload, compressed) => {
          if (compressed) {
            throw new BodyDecodeError("grpc-encoding", new Error("a compressed gRPC message"));
          }
          return scrubber.bytes(payload, { preserveLength: true });
        }),
      ) ?? null,
    };
  }
  if (unknown.length) {
    up.body?.cancel().catch(() => {});
    return {
      ok: false,
      code: "upstream-encoding",
      reason: `the response is content-encoded with ${
        JSON.stringify(
          scrubber.latin1(
            up.headers.filter(([n]) => n.toLowerCase() === "content-encoding").map(([, v]) =>
              v.trim()
            ).join(", "),
          ),
        )
      }, which sluice cannot decode to check it for secrets (it decodes ${
        DECODABLE_CODINGS.join(", ")
      })`,
    };
  }
  if (decode && up.status === 206) {
    up.body?.cancel().catch(() => {});
    return {
      ok: false,
      code: "upstream-encoding",
      reason: "the response is a part (206) of a content-encoded body, which sluice cannot " +
        "decode on its own to check it for secrets",
    };
  }
  let whole: Uint8Array | undefined = up.whole;
  const declared = up.headers.find(([n]) => n.toLowerCase() === "content-length")?.[1];
  if (whole === undefined && up.body !== null && declared !== undefined && /^\d+$/.test(declared)) {
    const length = Number(declared);
    if (length <= WHOLE_BODY_LIMIT) {
      try {
        whole = await readAll(up.body, length);
      } catch (e) {
        up.body.cancel().catch(() => {});
        return {
          ok: false,
          code: "upstream-reset",
          reason: `the upstream's body failed: ${e instanceof Error ? e.message : e}`,
        };
      }
    }
  }
  if (whole !== undefined) {
    let body: Uint8Array | null = whole;
    if (decode && whole.length > 0) {
      try {
        for (let i = codings.length - 1; i >= 0; i--) body = decodeSync(codings[i], body);
      } catch (e) {
        if ((e as { code?: string }).code !== "ERR_BUFFER_TOO_LARGE") {
          return {
            ok: false,
            code: "upstream-encoding",
            reason: new BodyDecodeError(codings.join(", "), e).message,
          };
        }
        body = null; // too large to decode in memory: streamed below
      }
    }
    if (body !== null) {
      return {
        ok: true,
        status: up.status,
        reason,
        headers: fields(true),
        body: scrubber.bytes(body) as Uint8Array<ArrayBuffer>,
      };
    }
  }
  if (up.body === null) {
    return { ok: true, status: up.status, reason, headers: fields(false), body: null };
  }
  // Decoded too large for memory: the bytes already read go on as a stream.
  let stream = whole !== undefined ? ReadableStream.from([whole]) : up.body;
  if (decode) {
    for (let i = codings.length - 1; i >= 0; i--) stream = decodeStream(stream, codings[i]);
  }
  const known = !decode && declared !== undefined;
  return {
    ok: true,
    status: up.status,
    reason,
    headers: fields(false),
    body: stream.pipeThrough(scrubber.stream({ preserveLength: known })),
  };
}

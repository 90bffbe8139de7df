/**
 * Deterministic fuzzing of the upstream client's parsers: parseResponseHead and ChunkedDecoder.
 * They read bytes from any server a policy allows, so they must never throw, hang, or disagree
 * with themselves.
 *
 * Each case draws its own PRNG from (seed, case index), so a failure names the one case to
 * replay: `SLUICE_FUZZ_SEED=<seed> SLUICE_FUZZ_CASES=<n> deno test --allow-all <this file>`.
 * Cases mix random bytes with structure-aware mutations of valid messages, and every result is
 * checked for shape and consistency (prefixes, re-fragmentation, round trips).
 */
import assert from "node:assert/strict";
import type { ResponseHeadLimits, ResponseHeadResult } from "../../lib/http1/response.ts";
import {
  ChunkedDecoder,
  DEFAULT_MAX_RESPONSE_HEADER_BYTES,
  DEFAULT_MAX_RESPONSE_HEADERS,
  encodeChunk,
  LAST_CHUNK,
  parseResponseHead,
  responseFraming,
} from "../../lib/http1/response.ts";
import { cat } from "../_bytes.ts";
import { envNumber, Rng } from "./_fuzz.ts";

const SEED = envNumber("SLUICE_FUZZ_SEED", 0x4771) >>> 0;
/** Cases per parser; two parsers, so twice this in all. */
const CASES = envNumber("SLUICE_FUZZ_CASES", 100_000);
/** A single case (with its consistency re-runs) slower than this is taken for a hang. */
const HANG_MS = 50;

// ---------------------------------------------------------------------------------------------
// Generic mutations (the PRNG is in _fuzz.ts).

function latin1Bytes(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

const INTERESTING_BYTES = [0x00, 0x09, 0x0a, 0x0d, 0x20, 0x3a, 0x3b, 0x7f, 0x80, 0xff];

/** One byte-level mutation; `extras` are tokens worth splicing in for this format. */
function mutate(
  rng: Rng,
  b: Uint8Array,
  extras: readonly Uint8Array[],
  other: Uint8Array,
): Uint8Array {
  const at = rng.int(b.length + 1);
  switch (rng.int(8)) {
    case 0: { // bit flip
      if (b.length === 0) return b;
      const c = b.slice();
      c[at % b.length] ^= 1 << rng.int(8);
      return c;
    }
    case 1: { // set a byte to an interesting or random value
      if (b.length === 0) return b;
      const c = b.slice();
      c[at % b.length] = rng.chance(0.6) ? rng.pick(INTERESTING_BYTES) : rng.int(256);
      return c;
    }
    case 2: // insert random bytes
      return cat(b.subarray(0, at), rng.bytes(1 + rng.int(4)), b.subarray(at));
    case 3: // delete a run
      return cat(b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + rng.int(8))));
    case 4: // truncate
      return b.subarray(0, at);
    case 5: // insert a format-specific token
      return cat(b.subarray(0, at), rng.pick(extras), b.subarray(at));
    case 6: { // splice: our head, another input's tail
      const from = rng.int(other.length + 1);
      return cat(b.subarray(0, at), other.subarray(from));
    }
    default: { // duplicate a run in place
      const len = 1 + rng.int(32);
      return cat(b.subarray(0, at), b.subarray(at, at + len), b.subarray(at));
    }
  }
}

/** Timing and counts for one parser's run. */
type Stats = { cases: number; maxMs: number; kinds: Record<string, number> };

function runCases<C>(
  label: string,
  make: (rng: Rng) => C,
  describe: (c: C) => Uint8Array,
  check: (c: C, rng: Rng) => string,
): Stats {
  const stats: Stats = { cases: 0, maxMs: 0, kinds: {} };
  for (let i = 0; i < CASES; i++) {
    const c = make(new Rng(SEED, i));
    const where = (): string => {
      const buf = describe(c);
      return `${label} case ${i} (SLUICE_FUZZ_SEED=${SEED}), ${buf.length} bytes: ` +
        Array.from(buf.subarray(0, 256), (x) => x.toString(16).padStart(2, "0")).join("");
    };
    let kind: string;
    let ms: number;
    try {
      const t0 = performance.now();
      kind = check(c, new Rng(SEED ^ 0xa5a5a5a5, i));
      ms = performance.now() - t0;
      // A GC pause or a busy neighbour can stall one run; a real hang stalls every run.
      for (let k = 0; k < 3 && ms > HANG_MS; k++) {
        const t1 = performance.now();
        check(c, new Rng(SEED ^ 0xa5a5a5a5, i));
        ms = Math.min(ms, performance.now() - t1);
      }
    } catch (e) {
      throw new Error(`${where()}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    if (ms > HANG_MS) throw new Error(`${where()}: took ${ms.toFixed(1)} ms (> ${HANG_MS} ms)`);
    stats.maxMs = Math.max(stats.maxMs, ms);
    stats.kinds[kind] = (stats.kinds[kind] ?? 0) + 1;
    stats.cases++;
  }
  return stats;
}

function report(label: string, s: Stats): void {
  console.log(
    `${label}: ${s.cases} cases, seed ${SEED}, slowest case ${s.maxMs.toFixed(2)} ms, ` +
      `results ${JSON.stringify(s.kinds)}`,
  );
}

// ---------------------------------------------------------------------------------------------
// Response heads.

const HEAD_SEEDS = [
  "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 1234\r\n" +
  "Set-Cookie: a=b; Path=/; HttpOnly\r\nCache-Control: max-age=0\r\n\r\n<html>",
  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n5\r\nhello\r\n",
  "HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\n",
  "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nLocation: /a\r\nContent-Length: 0\r\n\r\n",
  "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
  'HTTP/1.1 304\r\nETag: "x"\r\nX-Latin: caf\xe9\t\xff\r\ncontent-length: 7\r\nContent-Length: 7\r\n\r\n',
].map(latin1Bytes);

const HEAD_EXTRAS = [
  "\r\n",
  "\n",
  "\r",
  " ",
  "\t",
  ":",
  "\0",
  "\x7f",
  "\xff",
  "\r\n\r\n",
  "\r\n ",
  "HTTP/1.1 ",
  "HTTP/1.0 ",
  "HTTP/2.0 ",
  "999",
  "099",
  "Content-Length: 5\r\n",
  "Content-Length: 6\r\n",
  "Content-Length: 99999999999999999\r\n",
  "Transfer-Encoding: chunked\r\n",
  "Transfer-Encoding: gzip, chunked\r\n",
  "Connection: close\r\n",
  "X: y\r\n",
].map(latin1Bytes);

const HEAD_ALPHABET = latin1Bytes(
  "HTTP/1.0 200 OK\r\n\r\n\r\n  \t:\x00\x7f\x80\xffContent-LengthTransfer-Encodingchunked,0123456789",
);

type HeadCase = { buf: Uint8Array; limits?: ResponseHeadLimits };

function makeHeadCase(rng: Rng): HeadCase {
  const r = rng.int(100);
  const limits: ResponseHeadLimits | undefined = rng.chance(0.15)
    ? { maxHeaderBytes: 16 + rng.int(256), maxHeaders: rng.int(6) }
    : undefined;
  if (r < 10) return { buf: rng.bytes(rng.int(400)), limits };
  if (r < 25) {
    const n = rng.int(rng.chance(0.02) ? 70000 : 400);
    const buf = new Uint8Array(n);
    for (let i = 0; i < n; i++) buf[i] = HEAD_ALPHABET[rng.int(HEAD_ALPHABET.length)];
    // Give random junk a valid start now and then, so header-line paths see it too.
    return { buf: rng.chance(0.5) ? cat(latin1Bytes("HTTP/1.1 200 OK\r\n"), buf) : buf, limits };
  }
  let buf = rng.pick(HEAD_SEEDS);
  const other = rng.pick(HEAD_SEEDS);
  if (r < 95) {
    for (let n = 1 + rng.int(4); n > 0; n--) buf = mutate(rng, buf, HEAD_EXTRAS, other);
  }
  if (rng.chance(0.15)) buf = buf.subarray(0, rng.int(buf.length + 1));
  return { buf, limits };
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** RFC 9110 field-value as the parser promises it: no CTL but HTAB, no OWS at either end. */
function isTrimmedFieldValue(v: string): boolean {
  for (let i = 0; i < v.length; i++) {
    const c = v.charCodeAt(i);
    if ((c < 0x20 && c !== 0x09) || c === 0x7f || c > 0xff) return false;
  }
  return !/^[ \t]|[ \t]$/.test(v);
}

function checkHead({ buf, limits }: HeadCase, rng: Rng): string {
  const r: ResponseHeadResult = parseResponseHead(buf, limits);
  const maxBytes = limits?.maxHeaderBytes ?? DEFAULT_MAX_RESPONSE_HEADER_BYTES;
  switch (r.kind) {
    case "ok": {
      const h = r.head;
      const n = h.headerBytes;
      assert.ok(Number.isInteger(n) && n <= buf.length && n <= maxBytes, `headerBytes ${n}`);
      assert.deepEqual([...buf.subarray(n - 4, n)], [13, 10, 13, 10]);
      assert.ok(Number.isInteger(h.status) && h.status >= 100 && h.status <= 599);
      assert.ok(h.version === "HTTP/1.1" || h.version === "HTTP/1.0");
      assert.ok(isTrimmedFieldValue(h.reason.trim()), `reason ${JSON.stringify(h.reason)}`);
      assert.ok(h.headers.length <= (limits?.maxHeaders ?? DEFAULT_MAX_RESPONSE_HEADERS));
      for (const [name, value] of h.headers) {
        assert.ok(TOKEN.test(name), `name ${JSON.stringify(name)}`);
        assert.ok(isTrimmedFieldValue(value), `value ${JSON.stringify(value)}`);
      }
      // Framing is decidable for anything accepted, for every method.
      for (const m of ["GET", "HEAD"]) {
        const f = responseFraming(m, h.status, h.headers);
        if (f.kind === "length") assert.ok(Number.isSafeInteger(f.length) && f.length >= 0);
      }
      // Depends only on the bytes it claims; no shorter prefix is enough.
      assert.deepEqual(parseResponseHead(buf.subarray(0, n), limits), r);
      const cut = rng.int(n);
      const p = parseResponseHead(buf.subarray(0, cut), limits);
      assert.equal(p.kind, "incomplete", `prefix ${cut} of an ok head: ${JSON.stringify(p)}`);
      break;
    }
    case "incomplete":
      assert.deepEqual(Object.keys(r), ["kind"]);
      assert.ok(buf.length < maxBytes, `incomplete at ${buf.length} bytes, limit ${maxBytes}`);
      break;
    case "invalid":
      assert.ok(typeof r.reason === "string" && r.reason.length > 0);
      assert.ok(!r.reason.startsWith("internal"), `parser threw: ${r.reason}`);
      // Invalid is final: more bytes cannot make it valid.
      assert.equal(parseResponseHead(cat(buf, latin1Bytes("\r\n\r\n")), limits).kind, "invalid");
      break;
    default:
      assert.fail(`unknown kind ${JSON.stringify(r)}`);
  }
  return r.kind;
}

// ---------------------------------------------------------------------------------------------
// Chunked bodies.

type ChunkCase = {
  wire: Uint8Array;
  /** The body the wire encodes, when unmutated. */
  body?: Uint8Array;
  /** Length of the encoded message when unmutated (the rest is trailing junk). */
  end?: number;
};

const CHUNK_EXTRAS = [
  "\r\n",
  "\n",
  "\r",
  ";",
  " ",
  "\t",
  "0\r\n\r\n",
  "ffffffffffffffff",
  "20000000000000",
  "1fffffffffffff",
  ';a="b c"',
  "X: y\r\n",
  ":",
  "0",
  "-1",
].map(latin1Bytes);

/** A valid chunked message: random cuts, random extensions, sometimes trailers. */
function encodeBody(rng: Rng, body: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = [];
  let at = 0;
  while (at < body.length) {
    const n = 1 + rng.int(Math.min(body.length - at, rng.chance(0.2) ? 5000 : 40));
    const data = body.subarray(at, at + n);
    at += n;
    if (rng.chance(0.3)) {
      let size = n.toString(16);
      if (rng.chance(0.3)) size = "0".repeat(1 + rng.int(4)) + size;
      if (rng.chance(0.5)) size = size.toUpperCase();
      const ext = rng.pick([";a", ";a=b", ' ; q="x;y"', ";x;y=1", "\t;k=v"]);
      parts.push(latin1Bytes(`${size}${ext}\r\n`), data, latin1Bytes("\r\n"));
    } else {
      parts.push(encodeChunk(data));
    }
  }
  if (rng.chance(0.3)) {
    parts.push(latin1Bytes(`0${rng.chance(0.5) ? ";end" : ""}\r\nX-T: 1\r\nY:\t2 \r\n\r\n`));
  } else {
    parts.push(LAST_CHUNK);
  }
  return cat(...parts);
}

function makeChunkCase(rng: Rng): ChunkCase {
  const r = rng.int(100);
  if (r < 8) return { wire: rng.bytes(rng.int(300)) };
  if (r < 16) {
    const alphabet = latin1Bytes("0123456789abcdefABCDEF;= \t\r\n\r\n\r\nxyz:");
    const n = rng.int(300);
    const wire = new Uint8Array(n);
    for (let i = 0; i < n; i++) wire[i] = alphabet[rng.int(alphabet.length)];
    return { wire };
  }
  const body = rng.bytes(rng.int(rng.chance(0.05) ? 20000 : 200));
  const wire = encodeBody(rng, body);
  const junk = rng.chance(0.3) ? latin1Bytes("HTTP/1.1 200 OK\r\n") : new Uint8Array(0);
  if (r < 40) return { wire: cat(wire, junk), body, end: wire.length };
  let m = wire;
  const other = encodeBody(rng, rng.bytes(rng.int(50)));
  for (let n = 1 + rng.int(3); n > 0; n--) m = mutate(rng, m, CHUNK_EXTRAS, other);
  return { wire: m };
}

/** Decode `wire` cut at `cuts`; returns the outcome, the body, and consumed bytes. */
function decodePieces(
  wire: Uint8Array,
  cuts: number[],
): { outcome: string; body: Uint8Array; consumed: number } {
  const d = new ChunkedDecoder();
  const out: Uint8Array[] = [];
  let consumed = 0;
  const bounds = [0, ...cuts, wire.length];
  for (let i = 0; i + 1 < bounds.length; i++) {
    const piece = wire.subarray(bounds[i], bounds[i + 1]);
    const r = d.decode(piece, out);
    if (r.kind === "invalid") {
      assert.ok(r.reason.length > 0);
      return { outcome: "invalid", body: cat(...out), consumed };
    }
    assert.ok(r.consumed >= 0 && r.consumed <= piece.length, `consumed ${r.consumed}`);
    if (!r.done) assert.equal(r.consumed, piece.length, "consumed less without being done");
    consumed += r.consumed;
    if (r.done) {
      assert.equal(d.done, true);
      return { outcome: "done", body: cat(...out), consumed };
    }
  }
  return { outcome: "incomplete", body: cat(...out), consumed };
}

function checkChunks(c: ChunkCase, rng: Rng): string {
  const whole = decodePieces(c.wire, []);
  // Re-fragmenting the same bytes must never change the outcome, the body, or where it ends.
  const cuts: number[] = [];
  for (let n = rng.int(rng.chance(0.1) ? 64 : 5); n > 0; n--) cuts.push(rng.int(c.wire.length + 1));
  cuts.sort((a, b) => a - b);
  const split = decodePieces(c.wire, cuts);
  if (whole.outcome === "invalid") {
    // The body bytes seen before the error may differ with the cut points; the verdict not.
    assert.equal(split.outcome, "invalid");
  } else {
    assert.deepEqual(split, whole);
  }
  if (whole.outcome === "done") {
    assert.ok(whole.consumed <= c.wire.length);
    // Done means the message ended with CRLF CRLF (last chunk or trailers).
    assert.deepEqual([...c.wire.subarray(whole.consumed - 4, whole.consumed)], [13, 10, 13, 10]);
  }
  if (c.body !== undefined) {
    assert.equal(whole.outcome, "done", "a valid encoding must decode");
    assert.equal(whole.consumed, c.end);
    assert.deepEqual(whole.body, c.body);
  }
  return whole.outcome;
}

Deno.test("parseResponseHead() survives fuzzed input with consistent results", () => {
  const s = runCases("parseResponseHead", makeHeadCase, (c) => c.buf, checkHead);
  report("parseResponseHead fuzz", s);
  assert.equal(s.cases, CASES);
  if (CASES >= 10_000) {
    for (const k of ["ok", "incomplete", "invalid"]) {
      assert.ok((s.kinds[k] ?? 0) > CASES / 100, `too few ${k}: ${JSON.stringify(s.kinds)}`);
    }
  }
});

Deno.test("ChunkedDecoder survives fuzzed input with consistent results", () => {
  const s = runCases("ChunkedDecoder", makeChunkCase, (c) => c.wire, checkChunks);
  report("ChunkedDecoder fuzz", s);
  assert.equal(s.cases, CASES);
  if (CASES >= 10_000) {
    for (const k of ["done", "incomplete", "invalid"]) {
      assert.ok((s.kinds[k] ?? 0) > CASES / 100, `too few ${k}: ${JSON.stringify(s.kinds)}`);
    }
  }
});

/**
 * Deterministic fuzzing of the two data-path parsers that see attacker bytes first.
 *
 * Each case draws its own PRNG from (seed, case index), so a failure names the one case to
 * replay: `SLUICE_FUZZ_SEED=<seed> SLUICE_FUZZ_CASES=<n> deno test --allow-all <this file>`.
 * Cases mix random bytes with structure-aware mutations of valid inputs (bit flips, byte
 * insertions and deletions, corrupted length fields, truncation, splices, re-fragmentation),
 * and every result is checked for shape and internal consistency, not just for not throwing.
 */
import assert from "node:assert/strict";
import type { ClientHelloResult } from "../../lib/tls/client_hello.ts";
import { MAX_CLIENT_HELLO, parseClientHello } from "../../lib/tls/client_hello.ts";
import type { HeadLimits, HeadResult } from "../../lib/http1/request.ts";
import { framing, parseRequestHead } from "../../lib/http1/request.ts";
import { cat } from "../_bytes.ts";
import { envNumber, mutateBytes, Rng } from "./_fuzz.ts";

const SEED = envNumber("SLUICE_FUZZ_SEED", 0x51c3) >>> 0;
/** Cases per parser. */
const CASES = envNumber("SLUICE_FUZZ_CASES", 100_000);
/** A single parse (with its consistency re-parses) slower than this is taken for a hang. */
const HANG_MS = 50;

// ---------------------------------------------------------------------------------------------
// Generic mutations (the PRNG is in _fuzz.ts).

function latin1Bytes(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

const INTERESTING_BYTES = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff];

/** One byte-level mutation; `extras` are values worth splicing in for this format. */
function mutate(
  rng: Rng,
  b: Uint8Array,
  extras: readonly Uint8Array[],
  other: Uint8Array,
): Uint8Array {
  return mutateBytes(rng, b, other, {
    interesting: INTERESTING_BYTES,
    extras,
    lengths: [0x0000, 0x0001, 0x00ff, 0x3fff, 0x4000, 0x4001, 0x7fff, 0xffff],
  });
}

/** Timing and counts for one parser's run. */
type Stats = { cases: number; maxMs: number; kinds: Record<string, number> };

function runCases(
  label: string,
  make: (rng: Rng) => { buf: Uint8Array; limits?: HeadLimits },
  check: (buf: Uint8Array, limits: HeadLimits | undefined, rng: Rng) => string,
): Stats {
  const stats: Stats = { cases: 0, maxMs: 0, kinds: {} };
  for (let i = 0; i < CASES; i++) {
    const { buf, limits } = make(new Rng(SEED, i));
    const where = (): string =>
      `${label} case ${i} (SLUICE_FUZZ_SEED=${SEED}), ${buf.length} bytes: ` +
      Array.from(buf.subarray(0, 256), (x) => x.toString(16).padStart(2, "0")).join("");
    let kind: string;
    let ms: number;
    try {
      const t0 = performance.now();
      kind = check(buf, limits, new Rng(SEED ^ 0xa5a5a5a5, i));
      ms = performance.now() - t0;
      if (ms > HANG_MS) {
        // A GC pause or a busy neighbour can stall one run; a real hang stalls every run.
        for (let k = 0; k < 3 && ms > HANG_MS; k++) {
          const t1 = performance.now();
          check(buf, limits, new Rng(SEED ^ 0xa5a5a5a5, i));
          ms = Math.min(ms, performance.now() - t1);
        }
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

// ---------------------------------------------------------------------------------------------
// ClientHello inputs.

function fromHex(hex: string): Uint8Array {
  const clean = hex.trim();
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(i * 2, i * 2 + 2), 16);
  return out;
}

const u8 = (...xs: number[]): Uint8Array => new Uint8Array(xs);
const len16 = (b: Uint8Array): Uint8Array => cat(u8(b.length >> 8, b.length & 0xff), b);

function helloMessage(exts: [number, Uint8Array][], sessionId = 32): Uint8Array {
  const body = cat(
    u8(3, 3),
    new Uint8Array(32).fill(9),
    u8(sessionId),
    new Uint8Array(sessionId),
    len16(u8(0x13, 0x01, 0x13, 0x03)),
    u8(1, 0),
    len16(cat(...exts.map(([t, d]) => cat(u8(t >> 8, t & 0xff), len16(d))))),
  );
  return cat(u8(1, body.length >> 16, (body.length >> 8) & 0xff, body.length & 0xff), body);
}

const sni = (name: string): [number, Uint8Array] => [
  0,
  len16(cat(u8(0), len16(latin1Bytes(name)))),
];
const alpn = (...ps: string[]): [number, Uint8Array] => [
  16,
  len16(cat(...ps.map((p) => cat(u8(p.length), latin1Bytes(p))))),
];

const CURL_RECORD = fromHex(
  Deno.readTextFileSync(new URL("../fixtures/curl_client_hello.hex", import.meta.url)),
);

/** Valid handshake messages (no record layer); records are added per case. */
const HELLO_SEEDS: Uint8Array[] = [
  CURL_RECORD.subarray(5),
  helloMessage([sni("foo.example"), alpn("h2", "http/1.1")]),
  helloMessage([alpn("http/1.1")], 0),
  helloMessage([sni("a.b"), [21, new Uint8Array(300)], [43, u8(2, 3, 4)], alpn("\x8a\x8a")]),
  helloMessage([[0x0a0a, u8()], sni("2001:db8::1"), [0x1a1a, u8(0)]]),
  helloMessage([[0, len16(cat(u8(7), len16(u8(1, 2)), u8(0), len16(latin1Bytes("x.y"))))]]),
];

/**
 * Offsets and sizes of every length field in a handshake message, found by walking its
 * (valid) structure, so mutations can corrupt exactly the fields a parser must distrust.
 */
function lengthFields(hs: Uint8Array): [at: number, size: number][] {
  const out: [number, number][] = [[1, 3]];
  let p = 4 + 34;
  out.push([p, 1]);
  p += 1 + hs[p];
  out.push([p, 2]);
  p += 2 + ((hs[p] << 8) | hs[p + 1]);
  out.push([p, 1]);
  p += 1 + hs[p];
  if (p >= hs.length) return out;
  out.push([p, 2]);
  p += 2;
  while (p + 4 <= hs.length) {
    const type = (hs[p] << 8) | hs[p + 1];
    const len = (hs[p + 2] << 8) | hs[p + 3];
    out.push([p + 2, 2]);
    const d = p + 4;
    if (type === 0 || type === 16) out.push([d, 2]);
    if (type === 0 && len >= 5) out.push([d + 3, 2]);
    if (type === 16 && len >= 3) out.push([d + 2, 1]);
    p = d + len;
  }
  return out;
}

const HELLO_FIELDS = HELLO_SEEDS.map(lengthFields);

function toRecords(rng: Rng, hs: Uint8Array): Uint8Array {
  // Mostly one record, as clients send; sometimes fragmented, to exercise reassembly.
  const cuts: number[] = [];
  if (rng.chance(0.3)) {
    const n = 1 + rng.int(rng.chance(0.1) ? 64 : 4);
    for (let i = 0; i < n; i++) cuts.push(1 + rng.int(Math.max(1, hs.length - 1)));
    cuts.sort((a, b) => a - b);
  }
  const bounds = [0, ...cuts, hs.length];
  const parts: Uint8Array[] = [];
  for (let i = 0; i + 1 < bounds.length; i++) {
    const frag = hs.subarray(bounds[i], bounds[i + 1]);
    if (frag.length === 0 && hs.length > 0) continue;
    parts.push(cat(u8(0x16, 3, rng.chance(0.8) ? 1 : rng.int(4)), len16(frag)));
  }
  return cat(...parts);
}

const TLS_EXTRAS = [
  u8(0x16, 3, 1),
  u8(0, 0),
  u8(0xff, 0xff),
  u8(0, 0, 0, 0),
  u8(0x16, 3, 3, 0x40, 0),
];

function makeHelloCase(rng: Rng): { buf: Uint8Array } {
  const r = rng.int(100);
  if (r < 10) return { buf: rng.bytes(rng.int(600)) };
  if (r < 20) {
    // Random bytes behind a plausible record header, to get past the first checks.
    const body = rng.bytes(rng.int(rng.chance(0.05) ? 20000 : 600));
    return { buf: cat(u8(0x16, 3, 1, body.length >> 8, body.length & 0xff, 1), body) };
  }
  const k = rng.int(HELLO_SEEDS.length);
  let hs = HELLO_SEEDS[k];
  if (r < 60) {
    // Corrupt one or two length fields of the handshake message itself.
    hs = hs.slice();
    const fields = HELLO_FIELDS[k];
    for (let n = 1 + rng.int(2); n > 0; n--) {
      const [at, size] = rng.pick(fields);
      const delta = rng.pick([-2, -1, 1, 2, 256, -256]);
      let v = 0;
      for (let i = 0; i < size; i++) v = v * 256 + hs[at + i];
      v = rng.chance(0.2) ? rng.int(1 << (8 * size)) : (v + delta) & ((1 << (8 * size)) - 1);
      for (let i = size - 1; i >= 0; i--, v = Math.floor(v / 256)) hs[at + i] = v & 0xff;
    }
  }
  let buf = toRecords(rng, hs);
  if (r >= 40) {
    const other = toRecords(rng, rng.pick(HELLO_SEEDS));
    for (let n = 1 + rng.int(3); n > 0; n--) buf = mutate(rng, buf, TLS_EXTRAS, other);
  }
  if (rng.chance(0.1)) buf = buf.subarray(0, rng.int(buf.length + 1));
  return { buf };
}

const SNI_SHAPE = /^([a-z0-9._-]+|[0-9a-f:.]+)$/;

function checkHello(buf: Uint8Array, _limits: HeadLimits | undefined, rng: Rng): string {
  const r: ClientHelloResult = parseClientHello(buf);
  switch (r.kind) {
    case "ok": {
      assert.ok(Number.isInteger(r.length) && r.length > 0, `ok length ${r.length}`);
      assert.ok(r.length <= buf.length && r.length <= MAX_CLIENT_HELLO, `ok length ${r.length}`);
      assert.ok(r.sni === undefined || (SNI_SHAPE.test(r.sni) && r.sni.length <= 255), r.sni);
      assert.ok(Array.isArray(r.alpn) && r.alpn.every((p) => p.length > 0 && p.length < 256));
      // The result depends only on the bytes it claims, and no shorter prefix is enough.
      assert.deepStrictEqual(parseClientHello(buf.subarray(0, r.length)), r);
      const cut = rng.int(r.length);
      const p = parseClientHello(buf.subarray(0, cut));
      assert.equal(p.kind, "incomplete", `prefix ${cut} of an ok hello: ${JSON.stringify(p)}`);
      break;
    }
    case "incomplete":
      assert.ok(Number.isInteger(r.need) && r.need >= 0, `need ${r.need}`);
      assert.ok(
        r.need === 0 || (r.need > buf.length && r.need <= MAX_CLIENT_HELLO),
        `need ${r.need}`,
      );
      break;
    case "invalid":
      assert.ok(typeof r.reason === "string" && r.reason.length > 0);
      assert.ok(!r.reason.startsWith("internal"), `parser threw: ${r.reason}`);
      break;
    default:
      assert.fail(`unknown kind ${JSON.stringify(r)}`);
  }
  return r.kind;
}

// ---------------------------------------------------------------------------------------------
// Request-head inputs.

const HEAD_SEEDS = [
  "GET http://example.test/path?q=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: curl/7.88.1\r\n" +
  "Accept: */*\r\nProxy-Connection: Keep-Alive\r\nX-A: b\r\n\r\n",
  "POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
  "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
  "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\nProxy-Authorization: Basic eDp5\r\n\r\n",
  "\r\nOPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
  "GET / HTTP/1.0\r\nX-Latin: caf\xe9\t\xff\r\nContent-Length: 0\r\ncontent-length: 0\r\n\r\n",
].map(latin1Bytes);

const HTTP_EXTRAS = [
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
  "HTTP/1.1",
  "HTTP/2.0",
  "Host: h\r\n",
  "Content-Length: 5\r\n",
  "Content-Length: 6\r\n",
  "Content-Length: 99999999999999999\r\n",
  "Transfer-Encoding: chunked\r\n",
  "Transfer-Encoding: chunked, gzip\r\n",
  "Transfer-Encoding: foo\r\n",
  "X: y\r\n",
  "CONNECT ",
  "*",
  "http://",
  "[::1]:443",
].map(latin1Bytes);

/** Bytes that HTTP heads are made of, so random heads get past the first byte. */
const HTTP_ALPHABET = latin1Bytes(
  "GETPOSTHCONNECT /:.-_aZ09*?=&%\r\n\r\n\r\n  \t\x00\x7f\x80\xffHTTP/1.1HostContent-LengthTransfer-Encodingchunked,",
);

function makeHeadCase(rng: Rng): { buf: Uint8Array; limits?: HeadLimits } {
  const r = rng.int(100);
  // Small limits now and then, so the 414/431 paths see mutated input too.
  const limits: HeadLimits | undefined = rng.chance(0.15)
    ? {
      maxHeaderBytes: 16 + rng.int(256),
      maxHeaders: rng.int(6),
      maxTargetBytes: 1 + rng.int(64),
    }
    : undefined;
  if (r < 10) return { buf: rng.bytes(rng.int(400)), limits };
  if (r < 25) {
    const n = rng.int(rng.chance(0.02) ? 40000 : 400);
    const buf = new Uint8Array(n);
    for (let i = 0; i < n; i++) buf[i] = HTTP_ALPHABET[rng.int(HTTP_ALPHABET.length)];
    return { buf, limits };
  }
  let buf = rng.pick(HEAD_SEEDS);
  const other = rng.pick(HEAD_SEEDS);
  if (r < 95) {
    for (let n = 1 + rng.int(4); n > 0; n--) buf = mutate(rng, buf, HTTP_EXTRAS, other);
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

function checkHead(buf: Uint8Array, limits: HeadLimits | undefined, rng: Rng): string {
  const r: HeadResult = parseRequestHead(buf, limits);
  switch (r.kind) {
    case "ok": {
      const h = r.head;
      const n = h.headerBytes;
      assert.ok(Number.isInteger(n) && n <= buf.length, `headerBytes ${n}`);
      assert.ok(n <= (limits?.maxHeaderBytes ?? 32768), `headerBytes ${n} over the limit`);
      assert.deepStrictEqual([...buf.subarray(n - 4, n)], [13, 10, 13, 10]);
      assert.ok(TOKEN.test(h.method), h.method);
      assert.ok(/^[\x21-\x7e]+$/.test(h.target), h.target);
      assert.ok(h.version === "HTTP/1.1" || h.version === "HTTP/1.0");
      assert.ok(h.headers.length <= (limits?.maxHeaders ?? 100));
      for (const [name, value] of h.headers) {
        assert.ok(TOKEN.test(name), `name ${JSON.stringify(name)}`);
        assert.ok(isTrimmedFieldValue(value), `value ${JSON.stringify(value)}`);
      }
      framing(h); // must not throw for anything the parser accepted
      assert.deepStrictEqual(parseRequestHead(buf.subarray(0, n), limits), r);
      const cut = rng.int(n);
      const p = parseRequestHead(buf.subarray(0, cut), limits);
      assert.equal(p.kind, "incomplete", `prefix ${cut} of an ok head: ${JSON.stringify(p)}`);
      break;
    }
    case "incomplete":
      assert.deepStrictEqual(Object.keys(r), ["kind"]);
      break;
    case "invalid":
      assert.ok([400, 414, 431, 501, 505].includes(r.status), `status ${r.status}`);
      assert.ok(typeof r.reason === "string" && r.reason.length > 0);
      assert.ok(!r.reason.startsWith("internal"), `parser threw: ${r.reason}`);
      break;
    default:
      assert.fail(`unknown kind ${JSON.stringify(r)}`);
  }
  return r.kind === "invalid" ? `invalid ${r.status}` : r.kind;
}

function report(label: string, s: Stats): void {
  console.log(
    `${label}: ${s.cases} cases, seed ${SEED}, slowest case ${s.maxMs.toFixed(2)} ms, ` +
      `results ${JSON.stringify(s.kinds)}`,
  );
}

Deno.test("parseClientHello() survives fuzzed input with consistent results", () => {
  const s = runCases("parseClientHello", makeHelloCase, checkHello);
  report("parseClientHello fuzz", s);
  assert.equal(s.cases, CASES);
  // The generator must reach every outcome, or the run says little about the deep paths.
  if (CASES >= 10_000) {
    for (const k of ["ok", "incomplete", "invalid"]) {
      assert.ok((s.kinds[k] ?? 0) > CASES / 100, `too few ${k}: ${JSON.stringify(s.kinds)}`);
    }
  }
});

Deno.test("parseRequestHead() survives fuzzed input with consistent results", () => {
  const s = runCases("parseRequestHead", makeHeadCase, checkHead);
  report("parseRequestHead fuzz", s);
  assert.equal(s.cases, CASES);
  if (CASES >= 10_000) {
    for (const k of ["ok", "incomplete", "invalid 400"]) {
      assert.ok((s.kinds[k] ?? 0) > CASES / 100, `too few ${k}: ${JSON.stringify(s.kinds)}`);
    }
  }
});

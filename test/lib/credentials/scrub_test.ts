/**
 * lib/credentials/scrub.ts: every form of a secret is replaced, in whole buffers and in streams however
 * they are chunked; content codings are decoded; responses sluice cannot check are refused.
 *
 * The leak oracle is independent of the code under test: test/_leak_oracle.ts's `secretForms` (raw,
 * percent-encoded, base64 stable cores at the three alignments) plus the encodings written out
 * here with the platform's own encoders.
 */
import * as zlib from "node:zlib";
import { assert, assertEquals, assertStringIncludes } from "../../_assert.ts";
import { secretForms } from "../../_leak_oracle.ts";
import {
  BodyDecodeError,
  contentCodings,
  DECODABLE_CODINGS,
  decodeStream,
  fitBytes,
  Matcher,
  type ResponseParts,
  Scrubber,
  scrubForms,
  scrubResponse,
  WHOLE_BODY_LIMIT,
} from "../../../lib/credentials/scrub.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const latin1 = (b: Uint8Array) => String.fromCharCode(...b);

const S = "sk-REAL-openai-0123456789";
const P = "sluice-openai-api-key-abcdefghijklmnopqrstuvwxyz";
const S2 = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY+é";
const P2 = "sluice-aws-secret-22222222222222222222222222";
const sc = new Scrubber([{ secret: S, placeholder: P }, { secret: S2, placeholder: P2 }]);

const b64url = (s: string) => s.replaceAll("+", "-").replaceAll("/", "_");
const btoaUtf8 = (s: string) => btoa(latin1(enc.encode(s)));
const lowerHex = (s: string) => s.replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());

/** Every form a leak could take, for the oracle. */
function leakForms(secret: string): string[] {
  const forms = new Set(secretForms([secret]));
  const u = encodeURIComponent(secret);
  for (const f of [secret, u, lowerHex(u), btoaUtf8(secret), b64url(btoaUtf8(secret))]) {
    forms.add(f);
  }
  // UTF-8 bytes seen as latin1 (the oracle greps latin1 text).
  return [...forms].map((f) => latin1(enc.encode(f)));
}
const LEAKS = [...leakForms(S), ...leakForms(S2)];

function assertNoLeak(out: Uint8Array | string, what: string): void {
  const text = typeof out === "string" ? latin1(enc.encode(out)) : latin1(out);
  for (const f of LEAKS) assert(!text.includes(f), `${what}: a form of a secret survived: ${f}`);
}

async function streamed(
  s: Scrubber,
  chunks: Uint8Array[],
  preserveLength = false,
): Promise<Uint8Array> {
  const out = await new Response(
    ReadableStream.from(chunks).pipeThrough(s.stream({ preserveLength })),
  ).arrayBuffer();
  return new Uint8Array(out);
}

// ---------------------------------------------------------------------------------------------
// Forms, whole buffers

/** [name, input, expected output of Scrubber.bytes] */
const formCases: [string, string, string][] = [
  ["raw", `a ${S} b`, `a ${P} b`],
  ["raw, twice, and the other secret", `${S}${S2}${S}`, `${P}${P2}${P}`],
  ["percent-encoded", `q=${encodeURIComponent(S2)}&x`, `q=${encodeURIComponent(P2)}&x`],
  ["percent-encoded, lower-case hex", `q=${lowerHex(encodeURIComponent(S2))}`, `q=${P2}`],
  [
    "form-urlencoded",
    new URLSearchParams({ k: S2 }).toString(),
    new URLSearchParams({ k: P2 }).toString(),
  ],
  ["in a JSON string with \\/", JSON.stringify({ k: S2 }).replaceAll("/", "\\/"), `{"k":"${P2}"}`],
  [
    "in a JSON string with \\u escapes",
    `{"k":"${S2.replace("é", "\\u00e9")}"}`,
    `{"k":"${P2}"}`,
  ],
  ["base64, whole token", `{"b":"${btoa(S)}"}`, `{"b":"${btoa(P)}"}`],
  ["base64url, whole token", `{"b":"${b64url(btoaUtf8(S2))}"}`, `{"b":"${b64url(btoa(P2))}"}`],
  ["an echoed Basic header", `Basic ${btoa(`user:${S}`)}`, `Basic ${btoa(`user:${P}`)}`],
  ["base64 at offset 1", `x ${btoa(`a${S}bc`)} y`, `x ${btoa(`a${P}bc`)} y`],
  ["base64 at offset 2", `x ${btoa(`ab${S}c`)} y`, `x ${btoa(`ab${P}c`)} y`],
  [
    "a JWT payload (base64url, unpadded, between dots)",
    `eyJhbGciOiJIUzI1NiJ9.${btoa(JSON.stringify({ key: S })).replace(/=+$/, "")}.c2ln`,
    `eyJhbGciOiJIUzI1NiJ9.${b64url(btoa(JSON.stringify({ key: P }))).replace(/=+$/, "")}.c2ln`,
  ],
  ["nothing to find", "hello, world: c2stUkVB and sk-REAL-", "hello, world: c2stUkVB and sk-REAL-"],
];

for (const [name, input, want] of formCases) {
  Deno.test(`Scrubber.bytes() replaces ${name}`, () => {
    const out = sc.bytes(enc.encode(input));
    assertEquals(dec.decode(out), want);
    assertNoLeak(out, name);
  });
}

Deno.test("Scrubber.bytes() returns its input when nothing is found", () => {
  const b = enc.encode("nothing here ".repeat(100));
  assert(sc.bytes(b) === b);
});

Deno.test("Scrubber.bytes() with preserveLength patches base64 in place: the rest still decodes", () => {
  for (let shift = 0; shift < 3; shift++) {
    const pre = "user:xy".slice(0, 5 + shift);
    const text = btoa(`${pre}${S}!tail`);
    const out = dec.decode(sc.bytes(enc.encode(text), { preserveLength: true }));
    assertEquals(out.length, text.length);
    assertEquals(atob(out), `${pre}${dec.decode(fitBytes(enc.encode(P), S.length))}!tail`);
  }
});

Deno.test("Scrubber.bytes() with preserveLength fits every replacement to what it replaces", () => {
  const input = `${S} ${encodeURIComponent(S2)} ${S2}`;
  const out = dec.decode(sc.bytes(enc.encode(input), { preserveLength: true }));
  assertEquals(enc.encode(out).length, enc.encode(input).length);
  assertNoLeak(out, "preserveLength");
  assert(out.startsWith(P.slice(0, S.length)), out);
});

Deno.test("fitBytes() pads with * and never splits a UTF-8 character", () => {
  assertEquals(dec.decode(fitBytes(enc.encode("abc"), 5)), "abc**");
  assertEquals(dec.decode(fitBytes(enc.encode("aé"), 2)), "a*");
  assertEquals(dec.decode(fitBytes(enc.encode("abcdef"), 3)), "abc");
});

Deno.test("Scrubber.latin1() and headers() scrub names and values as latin1 bytes", () => {
  const got = sc.headers([
    ["X-Echo", `Bearer ${S}`],
    ["Authorization", `Basic ${btoa(`me:${S}`)}`],
    [`X-${S}`, "name holds it"],
    ["X-Utf8", latin1(enc.encode(S2))],
    ["Content-Type", "text/plain"],
  ]);
  assertEquals(got, [
    ["X-Echo", `Bearer ${P}`],
    ["Authorization", `Basic ${btoa(`me:${P}`)}`],
    [`X-${P}`, "name holds it"],
    ["X-Utf8", P2],
    ["Content-Type", "text/plain"],
  ]);
  // A placeholder a field name cannot hold: the field is dropped.
  const odd = new Scrubber([{ secret: "name-secret-1", placeholder: "ph/with space" }]);
  assertEquals(odd.headers([["X-name-secret-1", "v"], ["A", "name-secret-1"]]), [
    ["A", "ph/with space"],
  ]);
});

Deno.test("Scrubber.text() round-trips UTF-8 text", () => {
  assertEquals(sc.text(`é ${S2} ü`), `é ${P2} ü`);
  const s = "plain text without secrets";
  assert(sc.text(s) === s);
});

Deno.test("scrubForms() lists raw, text and base64 forms", () => {
  const forms = scrubForms(S2);
  assert(forms.includes(latin1(enc.encode(S2))));
  assert(forms.includes(encodeURIComponent(S2)));
  assert(forms.some((f) => btoaUtf8(S2).includes(f)), "a base64 core");
  assert(forms.some((f) => b64url(btoaUtf8(`a${S2}`)).includes(f)), "a base64url core at 1");
});

// ---------------------------------------------------------------------------------------------
// Streams

Deno.test("Scrubber.stream() gives the same bytes however the input is cut", async () => {
  const input = enc.encode(
    `{"raw":"${S}","b":"${btoa(`ab${S}`)}","u":"${encodeURIComponent(S2)}",` +
      `"basic":"Basic ${btoaUtf8(`u:${S2}`)}","end":"${S}"}`,
  );
  const one = await streamed(sc, [input]);
  assertNoLeak(one, "one chunk");
  const onePreserve = await streamed(sc, [input], true);
  assertEquals(onePreserve, sc.bytes(input, { preserveLength: true }));
  for (let i = 0; i <= input.length; i++) {
    for (const j of [i, Math.min(input.length, i + 1), Math.min(input.length, i + 7)]) {
      const parts = [input.subarray(0, i), input.subarray(i, j), input.subarray(j)];
      assertEquals(await streamed(sc, parts), one, `cut at ${i}, ${j}`);
      assertEquals(await streamed(sc, parts, true), onePreserve, `preserve, cut at ${i}, ${j}`);
    }
  }
  const bytewise = [...input].map((b) => new Uint8Array([b]));
  assertEquals(await streamed(sc, bytewise), one);
});

Deno.test("Scrubber.stream() passes text ending in a line break on at once", async () => {
  const ts = sc.stream();
  const w = ts.writable.getWriter();
  const r = ts.readable.getReader();
  const event = enc.encode(`data: {"delta":"hello"}\n\n`);
  w.write(event);
  assertEquals((await r.read()).value, event);
  // A tail that could begin a secret waits for the next chunk.
  w.write(enc.encode("data: sk-RE"));
  assertEquals(dec.decode((await r.read()).value), "data: ");
  w.write(enc.encode("AL-openai-0123456789\n"));
  assertEquals(dec.decode((await r.read()).value), `${P}\n`);
  w.close();
  assertEquals((await r.read()).done, true);
});

/** A seeded PRNG (mulberry32). */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

Deno.test("Scrubber: random secrets in random forms never survive, in any chunking", async () => {
  const CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=.é ";
  const FILLER = 'AZaz09+/-_= "\n:.%\\';
  for (let c = 0; c < 150; c++) {
    const rand = rng(c + 1);
    const pick = (s: string) => s[Math.floor(rand() * s.length)];
    const str = (n: number, from: string) => Array.from({ length: n }, () => pick(from)).join("");
    const secrets = [0, 1].map(() => `S${str(8 + Math.floor(rand() * 30), CHARS)}`);
    const pairs = secrets.map((secret, i) => ({
      secret,
      placeholder: `sluice-t${i}-${
        str(10 + Math.floor(rand() * 20), "abcdefghijklmnopqrstuvwxyz234567")
      }`,
    }));
    const s = new Scrubber(pairs);
    const forms = (v: string): string[] => {
      const pre = str(Math.floor(rand() * 5), "abcXYZ:");
      return [
        v,
        encodeURIComponent(v),
        lowerHex(encodeURIComponent(v)),
        JSON.stringify(v).slice(1, -1),
        btoaUtf8(v),
        b64url(btoaUtf8(v)).replace(/=+$/, ""),
        btoaUtf8(`${pre}${v}${str(Math.floor(rand() * 4), "xyz")}`),
        `Basic ${btoaUtf8(`user:${v}`)}`,
      ];
    };
    let text = "";
    for (let k = 0; k < 12; k++) {
      text += str(Math.floor(rand() * 40), FILLER);
      const v = secrets[Math.floor(rand() * 2)];
      const f = forms(v);
      text += f[Math.floor(rand() * f.length)];
    }
    text += str(Math.floor(rand() * 10), FILLER);
    const input = enc.encode(text);
    const oracle = secrets.flatMap((v) => leakForms(v));
    const check = (out: Uint8Array, what: string) => {
      const t = latin1(out);
      for (const f of oracle) {
        assert(!t.includes(f), `case ${c} ${what}: ${JSON.stringify(f)} survived in ${t}`);
      }
    };
    check(s.bytes(input), "bytes");
    const preserved = s.bytes(input, { preserveLength: true });
    assertEquals(preserved.length, input.length, `case ${c}: length`);
    check(preserved, "bytes, preserveLength");
    const one = await streamed(s, [input]);
    check(one, "stream");
    for (let k = 0; k < 4; k++) {
      const cuts = [0, 0, 0].map(() => Math.floor(rand() * input.length)).sort((a, b) => a - b);
      const parts = [0, ...cuts].map((a, i) => input.subarray(a, [...cuts, input.length][i]));
      assertEquals(await streamed(s, parts), one, `case ${c}: chunking ${cuts}`);
      assertEquals(await streamed(s, parts, true), preserved, `case ${c}: preserve ${cuts}`);
    }
  }
});

Deno.test("Matcher finds the leftmost, then longest, match and holds back possible starts", () => {
  const m = new Matcher(["abcd", "bcdefg", "abcdefgh", "zz"].map((s) => enc.encode(s)));
  const at = (s: string) => {
    const b = enc.encode(s);
    const i = m.find(b, 0, b.length, b.length);
    return i < 0 ? null : [i, m.lastStart];
  };
  assertEquals(at("xxabcdefghxx"), [2, 2]);
  assertEquals(at("xxabcdefxx"), [0, 2]);
  assertEquals(at("xbcdefgabcd"), [1, 1]);
  assertEquals(at("yzzy"), [3, 1]);
  assertEquals(at("nothing"), null);
  assertEquals(m.holdLength(enc.encode("xxxabcdef"), 0, 9), 6);
  assertEquals(m.holdLength(enc.encode("xxxz"), 0, 4), 1);
  assertEquals(m.holdLength(enc.encode("xxx\n"), 0, 4), 0);
});

// ---------------------------------------------------------------------------------------------
// Content codings

const body = enc.encode(`{"echo":"${S}"} `.repeat(2000));

const coded: [string, (b: Uint8Array) => Uint8Array][] = [
  ["gzip", (b) => zlib.gzipSync(b)],
  ["x-gzip", (b) => zlib.gzipSync(b)],
  ["deflate", (b) => zlib.deflateSync(b)],
  ["deflate (raw, as some servers send it)", (b) => zlib.deflateRawSync(b)],
  ["br", (b) => zlib.brotliCompressSync(b)],
  [
    "zstd",
    (b) => (zlib as unknown as { zstdCompressSync(b: Uint8Array): Uint8Array }).zstdCompressSync(b),
  ],
];

for (const [name, compress] of coded) {
  Deno.test(`decodeStream() decodes ${name} in small chunks`, async () => {
    const coding = name.split(" ")[0];
    assert(DECODABLE_CODINGS.includes(coding), `${coding} is decodable`);
    const data = new Uint8Array(compress(body));
    const chunks: Uint8Array[] = [];
    for (let i = 0; i < data.length; i += 100) chunks.push(data.subarray(i, i + 100));
    const out = new Uint8Array(
      await new Response(decodeStream(ReadableStream.from(chunks), coding)).arrayBuffer(),
    );
    assertEquals(out, body);
  });
}

Deno.test("decodeStream() errors on a corrupt body, and passes an empty one", async () => {
  const gz = zlib.gzipSync(body);
  const broken = ReadableStream.from([new Uint8Array(gz.subarray(0, gz.length - 20))]);
  let error: unknown;
  try {
    await new Response(decodeStream(broken, "gzip")).arrayBuffer();
  } catch (e) {
    error = e;
  }
  assert(error instanceof BodyDecodeError, String(error));
  const empty = await new Response(decodeStream(ReadableStream.from([]), "gzip")).arrayBuffer();
  assertEquals(empty.byteLength, 0);
});

Deno.test("decodeStream() produces a bomb's output only as fast as it is read", async () => {
  // 1 GiB of zeros in ~1 MB of gzip (64 members of 16 MiB each), fed 1 KiB (~1 MiB decoded) at
  // a time. The measure is how much coded input the decoder took, not RSS: other test modules
  // share this process, so RSS growth is noise here (it once failed CI at 65 MiB). A decoder
  // that ran ahead of its reader takes all of it; one that waits for the reader takes ~64 KiB.
  const member = zlib.gzipSync(new Uint8Array(16 << 20));
  const bomb = new Uint8Array(member.length * 64);
  for (let i = 0; i < 64; i++) bomb.set(member, i * member.length);
  let fed = 0;
  const src = new ReadableStream<Uint8Array>({
    pull(c) {
      if (fed >= bomb.length) return c.close();
      c.enqueue(bomb.subarray(fed, fed + 1024));
      fed += 1024;
    },
  }, { highWaterMark: 0 });
  const reader = decodeStream(src, "gzip").getReader();
  let pulled = 0;
  for (let i = 0; i < 4; i++) pulled += (await reader.read()).value!.length;
  await new Promise((r) => setTimeout(r, 100));
  assert(fed < 256 << 10, `the decoder ran ahead of the reader: took ${fed} of ${bomb.length} B`);
  assert(pulled > 0 && pulled < 1 << 20, `${pulled}`);
  await reader.cancel();
});

Deno.test("contentCodings() lists codings in order, identity left out", () => {
  assertEquals(contentCodings([["Content-Encoding", "gzip"]]), ["gzip"]);
  assertEquals(contentCodings([["content-encoding", " Identity "], ["X", "gzip"]]), []);
  assertEquals(
    contentCodings([["Content-Encoding", "deflate, GZIP"], ["content-encoding", "br"]]),
    ["deflate", "gzip", "br"],
  );
});

// ---------------------------------------------------------------------------------------------
// Responses

function parts(
  headers: [string, string][],
  data: Uint8Array,
  opts: { status?: number; whole?: boolean; reason?: string } = {},
): ResponseParts {
  return {
    status: opts.status ?? 200,
    reason: opts.reason ?? "OK",
    headers,
    body: ReadableStream.from([data]),
    whole: opts.whole ? new Uint8Array(data) : undefined,
  };
}

async function bodyOf(r: Awaited<ReturnType<typeof scrubResponse>>): Promise<Uint8Array> {
  assert(r.ok);
  return new Uint8Array(await new Response(r.body).arrayBuffer());
}

Deno.test("scrubResponse() without a scrubber passes everything through untouched", async () => {
  const gz = new Uint8Array(zlib.gzipSync(body));
  const up = parts([["Content-Encoding", "zstd"], ["X", S]], gz, { whole: true });
  const r = await scrubResponse(null, up, false);
  assert(r.ok);
  assert(r.headers === up.headers && r.body === up.whole);
});

Deno.test("scrubResponse() scrubs an octet-stream 500 and its headers and reason phrase", async () => {
  const data = new Uint8Array([0, 1, 2, ...enc.encode(S), 255, 254]);
  const up = parts(
    [["Content-Type", "application/octet-stream"], ["X-Leak", S], ["Content-Length", "31"]],
    data,
    { status: 500, whole: true, reason: `bad ${S}` },
  );
  const r = await scrubResponse(sc, up, false);
  assert(r.ok);
  assertEquals(r.status, 500);
  assertEquals(r.reason, `bad ${P}`);
  assertEquals(r.headers, [["Content-Type", "application/octet-stream"], ["X-Leak", P]]);
  assertEquals(await bodyOf(r), new Uint8Array([0, 1, 2, ...enc.encode(P), 255, 254]));
});

for (const [name, compress] of coded) {
  for (const whole of [true, false]) {
    Deno.test(`scrubResponse() decodes a ${name} body (${whole ? "whole" : "streamed"})`, async () => {
      const coding = name.split(" ")[0];
      const data = new Uint8Array(compress(body));
      const up = parts(
        [
          ["Content-Type", "application/json"],
          ["Content-Encoding", coding],
          ["Content-Length", String(data.length)],
          ["ETag", '"abc"'],
          ["Vary", "Accept-Encoding"],
        ],
        data,
        { whole },
      );
      const r = await scrubResponse(sc, up, false);
      assert(r.ok);
      assertEquals(r.headers, [
        ["Content-Type", "application/json"],
        ["ETag", 'W/"abc"'],
        ["Vary", "Accept-Encoding"],
      ]);
      const out = await bodyOf(r);
      assertEquals(dec.decode(out), `{"echo":"${P}"} `.repeat(2000));
    });
  }
}

Deno.test("scrubResponse() decodes stacked codings in reverse order", async () => {
  const data = new Uint8Array(zlib.brotliCompressSync(zlib.gzipSync(body)));
  const r = await scrubResponse(sc, parts([["Content-Encoding", "gzip, br"]], data), false);
  assertEquals(dec.decode(await bodyOf(r)), `{"echo":"${P}"} `.repeat(2000));
});

Deno.test("scrubResponse() keeps Content-Length of a streamed identity body over 64 KiB", async () => {
  const pad = "x".repeat(WHOLE_BODY_LIMIT);
  const data = enc.encode(`${pad}${S}${"y".repeat(100)}`);
  const chunks = [data.subarray(0, 1000), data.subarray(1000, 70000), data.subarray(70000)];
  const up: ResponseParts = {
    status: 200,
    reason: "OK",
    headers: [["Content-Length", String(data.length)]],
    body: ReadableStream.from(chunks),
  };
  const r = await scrubResponse(sc, up, false);
  assert(r.ok);
  assert(r.body instanceof ReadableStream);
  assertEquals(r.headers, [["Content-Length", String(data.length)]]);
  const out = await bodyOf(r);
  assertEquals(out.length, data.length);
  assertEquals(dec.decode(out), `${pad}${P.slice(0, S.length)}${"y".repeat(100)}`);
});

Deno.test("scrubResponse() reads a body of up to 64 KiB whole, however it arrives", async () => {
  const data = enc.encode(`{"b":"${btoa(S)}","r":"${S}"}`);
  const up: ResponseParts = {
    status: 200,
    reason: "OK",
    headers: [["Content-Length", String(data.length)]],
    body: ReadableStream.from([...data].map((x) => new Uint8Array([x]))),
  };
  const r = await scrubResponse(sc, up, false);
  assert(r.ok);
  assert(r.body instanceof Uint8Array, "answered as bytes");
  assertEquals(r.headers, []);
  assertEquals(dec.decode(r.body), `{"b":"${btoa(P)}","r":"${P}"}`);
});

Deno.test("scrubResponse() answers upstream-reset to a short body", async () => {
  const up: ResponseParts = {
    status: 200,
    reason: "OK",
    headers: [["Content-Length", "100"]],
    body: ReadableStream.from([enc.encode("only this")]),
  };
  const r = await scrubResponse(sc, up, false);
  assert(!r.ok);
  assertEquals(r.code, "upstream-reset");
});

Deno.test("scrubResponse() streams a chunked body with full placeholders", async () => {
  const parts2 = [enc.encode(`a ${S.slice(0, 5)}`), enc.encode(`${S.slice(5)} b`)];
  const up: ResponseParts = {
    status: 200,
    reason: "OK",
    headers: [],
    body: ReadableStream.from(parts2),
  };
  const r = await scrubResponse(sc, up, false);
  assertEquals(dec.decode(await bodyOf(r)), `a ${P} b`);
});

/** [name, content-encoding, status, reason includes] */
const refused: [string, string, number, string][] = [
  ["an unknown coding", "x-custom", 200, '"x-custom"'],
  ["compress", "compress", 200, '"compress"'],
  ["a known coding stacked on an unknown one", "x-custom, gzip", 200, '"x-custom, gzip"'],
  ["a coding that echoes a secret", `x-${S}`, 200, P],
  ["a partial coded body", "gzip", 206, "(206)"],
];

for (const [name, coding, status, includes] of refused) {
  Deno.test(`scrubResponse() refuses ${name}`, async () => {
    let cancelled = false;
    const up: ResponseParts = {
      status,
      reason: "OK",
      headers: [["Content-Encoding", coding]],
      body: new ReadableStream({ cancel: () => void (cancelled = true) }),
    };
    const r = await scrubResponse(sc, up, false);
    assert(!r.ok);
    assertStringIncludes(r.reason, includes);
    assertNoLeak(r.reason, name);
    assert(cancelled, "the upstream body is cancelled");
  });
}

Deno.test("scrubResponse() refuses a whole coded body that does not decode", async () => {
  const gz = zlib.gzipSync(body).subarray(0, 50);
  const r = await scrubResponse(
    sc,
    parts([["Content-Encoding", "gzip"]], gz, { whole: true }),
    false,
  );
  assert(!r.ok);
  assertStringIncludes(r.reason, "does not decode");
});

Deno.test("scrubResponse() without a body drops codings it would have decoded", async () => {
  const h: [string, string][] = [
    ["Content-Encoding", "gzip"],
    ["Content-Length", "123"],
    ["X", S],
  ];
  const r = await scrubResponse(sc, parts(h, EMPTY_BODY), true);
  assert(r.ok);
  assertEquals(r.headers, [["X", P]]);
  assertEquals(r.body, null);
  const unknown = await scrubResponse(
    sc,
    parts([["Content-Encoding", "x-custom"]], EMPTY_BODY),
    true,
  );
  assert(unknown.ok, "nothing to check without a body");
});

const EMPTY_BODY = new Uint8Array(0);

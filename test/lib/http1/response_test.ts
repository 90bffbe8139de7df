import assert from "node:assert/strict";
import {
  ChunkedDecoder,
  DEFAULT_MAX_RESPONSE_HEADER_BYTES,
  encodeChunk,
  HOP_BY_HOP_HEADERS,
  isKeepAlive,
  LAST_CHUNK,
  parseResponseHead,
  removeHopByHop,
  responseFraming,
} from "../../../lib/http1/response.ts";
import { HttpFramingError } from "../../../lib/http1/request.ts";

function latin1(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

const dec = new TextDecoder("latin1");

// ---------------------------------------------------------------------------------------------
// parseResponseHead

Deno.test("parseResponseHead() parses valid heads", () => {
  const cases: {
    name: string;
    input: string;
    status: number;
    reason: string;
    version: "HTTP/1.1" | "HTTP/1.0";
    headers: [string, string][];
  }[] = [
    {
      name: "a typical 200",
      input: "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\n",
      status: 200,
      reason: "OK",
      version: "HTTP/1.1",
      headers: [["Content-Type", "text/html"], ["Content-Length", "5"]],
    },
    {
      name: "HTTP/1.0 404 with a multi-word reason",
      input: "HTTP/1.0 404 Not Found Here\r\n\r\n",
      status: 404,
      reason: "Not Found Here",
      version: "HTTP/1.0",
      headers: [],
    },
    {
      name: "no reason phrase, no SP",
      input: "HTTP/1.1 204\r\n\r\n",
      status: 204,
      reason: "",
      version: "HTTP/1.1",
      headers: [],
    },
    {
      name: "empty reason after SP",
      input: "HTTP/1.1 500 \r\n\r\n",
      status: 500,
      reason: "",
      version: "HTTP/1.1",
      headers: [],
    },
    {
      name: "obs-text in reason and value, OWS trimmed, empty value",
      input: "HTTP/1.1 200 \xc7a va\r\nX-A: \t caf\xe9 \t\r\nX-Empty:\r\n\r\n",
      status: 200,
      reason: "\xc7a va",
      version: "HTTP/1.1",
      headers: [["X-A", "caf\xe9"], ["X-Empty", ""]],
    },
    {
      name: "identical Content-Length lines folded",
      input: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n",
      status: 200,
      reason: "OK",
      version: "HTTP/1.1",
      headers: [["Content-Length", "3"]],
    },
    {
      name: "chunked with empty list elements and odd case",
      input: "HTTP/1.1 200 OK\r\nTransfer-Encoding: , Chunked ,\r\n\r\n",
      status: 200,
      reason: "OK",
      version: "HTTP/1.1",
      headers: [["Transfer-Encoding", ", Chunked ,"]],
    },
    {
      name: "100 Continue",
      input: "HTTP/1.1 100 Continue\r\n\r\n",
      status: 100,
      reason: "Continue",
      version: "HTTP/1.1",
      headers: [],
    },
  ];
  for (const c of cases) {
    const buf = latin1(c.input + "BODY");
    const r = parseResponseHead(buf);
    assert.equal(r.kind, "ok", `${c.name}: ${JSON.stringify(r)}`);
    if (r.kind !== "ok") continue;
    assert.deepEqual(r.head, {
      status: c.status,
      reason: c.reason,
      version: c.version,
      headers: c.headers,
      headerBytes: c.input.length,
    }, c.name);
    // Every proper prefix is incomplete, never invalid.
    for (let i = 0; i < c.input.length; i++) {
      const p = parseResponseHead(buf.subarray(0, i));
      assert.equal(p.kind, "incomplete", `${c.name}: prefix ${i}: ${JSON.stringify(p)}`);
    }
  }
});

Deno.test("parseResponseHead() refuses malformed and ambiguous heads", () => {
  const cases: [string, string, RegExp][] = [
    ["TLS bytes", "\x16\x03\x01\x02\x00", /TLS record/],
    ["not HTTP", "SSH-2.0-x\r\n\r\n", /does not start with HTTP/],
    ["lowercase http", "http/1.1 200 OK\r\n\r\n", /does not start with HTTP/],
    ["HTTP/2", "HTTP/2.0 200 OK\r\n\r\n", /2\.0 not supported/],
    ["HTTP/1.2", "HTTP/1.2 200 OK\r\n\r\n", /1\.2 not supported/],
    ["two-digit status", "HTTP/1.1 20 OK\r\n\r\n", /malformed status code/],
    ["four-digit status", "HTTP/1.1 2000 OK\r\n\r\n", /malformed status code/],
    ["status 099", "HTTP/1.1 099 x\r\n\r\n", /outside 100..599/],
    ["status 600", "HTTP/1.1 600 x\r\n\r\n", /outside 100..599/],
    ["two spaces", "HTTP/1.1  200 OK\r\n\r\n", /malformed status code/],
    ["control in reason", "HTTP/1.1 200 O\x01K\r\n\r\n", /control character in reason/],
    ["bare LF status line", "HTTP/1.1 200 OK\n\r\n", /bare LF/],
    ["bare LF header", "HTTP/1.1 200 OK\r\nA: b\n\r\n", /bare LF/],
    ["bare CR in value", "HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n", /bare CR/],
    ["obs-fold", "HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", /obs-fold/],
    ["space before colon", "HTTP/1.1 200 OK\r\nA : b\r\n\r\n", /whitespace between/],
    ["no colon", "HTTP/1.1 200 OK\r\nAb\r\n\r\n", /without a colon/],
    ["empty name", "HTTP/1.1 200 OK\r\n: b\r\n\r\n", /empty field name/],
    ["bad name byte", "HTTP/1.1 200 OK\r\nA(b: c\r\n\r\n", /invalid byte in field name/],
    ["NUL in value", "HTTP/1.1 200 OK\r\nA: \0\r\n\r\n", /NUL/],
    ["CL not a number", "HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n", /not a decimal/],
    ["CL negative", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", /not a decimal/],
    ["CL list", "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", /not a decimal/],
    ["CL empty", "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n", /not a decimal/],
    ["CL huge", "HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999\r\n\r\n", /too large/],
    [
      "CL conflict",
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
      /conflicting/,
    ],
    [
      "CL and TE",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
      /both Content-Length and Transfer-Encoding/,
    ],
    ["TE gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", /"gzip"/],
    ["TE identity", "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n", /"identity"/],
    [
      "TE twice",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
      /more than once/,
    ],
    [
      "TE on two lines",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
      /more than once/,
    ],
    ["TE empty", "HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n", /empty Transfer-Encoding/],
    ["TE in 1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", /HTTP\/1\.0/],
    ["leading CRLF", "\r\nHTTP/1.1 200 OK\r\n\r\n", /status line too short/],
  ];
  for (const [name, input, reason] of cases) {
    const r = parseResponseHead(latin1(input));
    assert.equal(r.kind, "invalid", `${name}: ${JSON.stringify(r)}`);
    if (r.kind === "invalid") assert.match(r.reason, reason, name);
  }
});

Deno.test("parseResponseHead() enforces the size and count limits", () => {
  const big = "HTTP/1.1 200 OK\r\nX: " + "a".repeat(DEFAULT_MAX_RESPONSE_HEADER_BYTES) + "\r\n\r\n";
  const r = parseResponseHead(latin1(big));
  assert.equal(r.kind, "invalid");
  if (r.kind === "invalid") assert.match(r.reason, /exceeds 65536 bytes/);
  // Still incomplete one byte short of the limit.
  const partial = latin1(big).subarray(0, DEFAULT_MAX_RESPONSE_HEADER_BYTES - 1);
  assert.equal(parseResponseHead(partial).kind, "incomplete");

  const head = latin1("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n");
  assert.equal(parseResponseHead(head, { maxHeaders: 3 }).kind, "ok");
  const many = parseResponseHead(head, { maxHeaders: 2 });
  assert.equal(many.kind, "invalid");
  if (many.kind === "invalid") assert.match(many.reason, /more than 2 header lines/);
  assert.equal(parseResponseHead(head, { maxHeaderBytes: head.length - 1 }).kind, "invalid");
  assert.equal(parseResponseHead(head, { maxHeaderBytes: head.length }).kind, "ok");
});

// ---------------------------------------------------------------------------------------------
// responseFraming, isKeepAlive, removeHopByHop

Deno.test("responseFraming() follows RFC 9112 6.3", () => {
  const cl: [string, string][] = [["Content-Length", "42"]];
  const te: [string, string][] = [["Transfer-Encoding", "chunked"]];
  const cases: [string, string, number, [string, string][], unknown][] = [
    ["HEAD ignores Content-Length", "HEAD", 200, cl, { kind: "none" }],
    ["HEAD ignores chunked", "HEAD", 200, te, { kind: "none" }],
    ["1xx", "GET", 103, cl, { kind: "none" }],
    ["101", "GET", 101, [], { kind: "none" }],
    ["204", "GET", 204, cl, { kind: "none" }],
    ["304", "GET", 304, cl, { kind: "none" }],
    ["2xx to CONNECT", "CONNECT", 200, cl, { kind: "none" }],
    ["4xx to CONNECT has a body", "CONNECT", 407, cl, { kind: "length", length: 42 }],
    ["chunked", "GET", 200, te, { kind: "chunked" }],
    ["length", "POST", 201, cl, { kind: "length", length: 42 }],
    ["length zero", "GET", 200, [["content-length", "0"]], { kind: "length", length: 0 }],
    ["nothing: until close", "GET", 200, [["X", "y"]], { kind: "close" }],
    ["205 without length", "GET", 205, [], { kind: "close" }],
  ];
  for (const [name, method, status, headers, want] of cases) {
    assert.deepEqual(responseFraming(method, status, headers), want, name);
  }
  assert.throws(() => responseFraming("GET", 200, [...cl, ...te]), HttpFramingError);
  assert.throws(() => responseFraming("GET", 200, [["Content-Length", "x"]]), HttpFramingError);
});

Deno.test("isKeepAlive() applies the HTTP/1.1 and HTTP/1.0 defaults", () => {
  const cases: [string, "HTTP/1.1" | "HTTP/1.0", [string, string][], boolean][] = [
    ["1.1 default", "HTTP/1.1", [], true],
    ["1.1 close", "HTTP/1.1", [["Connection", "close"]], false],
    ["1.1 close in a list, any case", "HTTP/1.1", [["connection", "X-Foo, Close"]], false],
    [
      "1.1 close on a second line",
      "HTTP/1.1",
      [["Connection", "a"], ["Connection", "close"]],
      false,
    ],
    ["1.0 default", "HTTP/1.0", [], false],
    ["1.0 keep-alive", "HTTP/1.0", [["Connection", "Keep-Alive"]], true],
    ["1.0 keep-alive and close", "HTTP/1.0", [["Connection", "keep-alive, close"]], false],
  ];
  for (const [name, version, headers, want] of cases) {
    assert.equal(isKeepAlive(version, headers), want, name);
  }
});

Deno.test("removeHopByHop() drops the listed fields and those Connection names", () => {
  const headers: [string, string][] = [
    ["Connection", "keep-alive, X-Hop"],
    ["Keep-Alive", "timeout=5"],
    ["X-Hop", "1"],
    ["TE", "trailers"],
    ["Trailer", "X-T"],
    ["Transfer-Encoding", "chunked"],
    ["Upgrade", "websocket"],
    ["Proxy-Connection", "keep-alive"],
    ["Proxy-Authorization", "Basic x"],
    ["Content-Type", "text/plain"],
    ["set-cookie", "a=1"],
  ];
  assert.deepEqual(removeHopByHop(headers), [
    ["Proxy-Authorization", "Basic x"],
    ["Content-Type", "text/plain"],
    ["set-cookie", "a=1"],
  ]);
  assert.deepEqual(
    removeHopByHop([["Connection", "Upgrade"], ["Upgrade", "websocket"], ["A", "b"]], [
      "connection",
      "upgrade",
    ]),
    [["Connection", "Upgrade"], ["Upgrade", "websocket"], ["A", "b"]],
  );
  assert.ok(HOP_BY_HOP_HEADERS.includes("transfer-encoding"));
  assert.ok(!HOP_BY_HOP_HEADERS.includes("proxy-authorization"));
});

// ---------------------------------------------------------------------------------------------
// Chunked coding

/** Decode `input` fed in pieces of `step` bytes; returns the body, consumed count, outcome. */
function decodeAll(
  input: Uint8Array,
  step: number,
): { body: string; consumed: number; result: string } {
  const d = new ChunkedDecoder();
  let body = "";
  let consumed = 0;
  for (let i = 0; i < input.length; i += step) {
    const out: Uint8Array[] = [];
    const r = d.decode(input.subarray(i, i + step), out);
    body += out.map((b) => dec.decode(b)).join("");
    if (r.kind === "invalid") return { body, consumed, result: `invalid: ${r.reason}` };
    consumed += r.consumed;
    if (r.done) return { body, consumed, result: "done" };
  }
  return { body, consumed, result: "incomplete" };
}

Deno.test("ChunkedDecoder decodes valid bodies fed whole and byte by byte", () => {
  const cases: [string, string, string][] = [
    ["empty body", "0\r\n\r\n", ""],
    ["one chunk", "5\r\nhello\r\n0\r\n\r\n", "hello"],
    [
      "hex sizes, both cases",
      "a\r\n0123456789\r\nB\r\nabcdefghijk\r\n0\r\n\r\n",
      "0123456789abcdefghijk",
    ],
    ["leading zeros", "0005\r\nhello\r\n000\r\n\r\n", "hello"],
    ["extensions", '5;a=b;c="d e"\r\nhello\r\n0;x\r\n\r\n', "hello"],
    ["BWS before an extension", "5 \t;a\r\nhello\r\n0\r\n\r\n", "hello"],
    ["trailers", "5\r\nhello\r\n0\r\nX-A: b\r\nX-Empty:\r\n\r\n", "hello"],
    ["binary data with CRLF inside", "4\r\n\r\n\r\n\r\n0\r\n\r\n", "\r\n\r\n"],
  ];
  for (const [name, input, body] of cases) {
    const bytes = latin1(input + "NEXT");
    for (const step of [bytes.length, 1, 2, 3, 7]) {
      assert.deepEqual(
        decodeAll(bytes, step),
        { body, consumed: input.length, result: "done" },
        `${name} (step ${step})`,
      );
    }
  }
});

Deno.test("ChunkedDecoder refuses malformed bodies", () => {
  const cases: [string, string, RegExp][] = [
    ["no size", "\r\n", /not a hex number/],
    ["0x prefix", "0x5\r\nhello\r\n", /invalid byte after chunk size/],
    ["sign", "+5\r\nhello\r\n", /not a hex number/],
    ["non-hex", "g\r\n", /not a hex number/],
    ["space then CRLF", "5 \r\nhello\r\n", /whitespace after chunk size/],
    ["bare LF after size", "5\nhello\r\n", /invalid byte after chunk size/],
    ["bare CR after size", "5\rhello\r\n", /bare CR/],
    ["bare LF in extension", "5;a\nhello\r\n", /bare LF/],
    ["control in extension", "5;a\x01\r\nhello\r\n", /control character in chunk extension/],
    ["data longer than size", "3\r\nhello\r\n", /not followed by CRLF/],
    ["LF only after data", "5\r\nhello\n0\r\n\r\n", /not followed by CRLF/],
    ["overflow past 2^53", "20000000000000\r\n", /too large/],
    ["obs-fold in trailers", "0\r\nX: a\r\n b\r\n\r\n", /obs-fold/],
    ["trailer without colon", "0\r\nX\r\n\r\n", /trailer field name/],
    ["control in trailer", "0\r\nX: \x00\r\n\r\n", /control character in a trailer/],
    ["bare LF ending", "0\r\n\n", /invalid byte in trailer field name/],
    ["bare CR ending", "0\r\n\rX", /bare CR at the end/],
  ];
  for (const [name, input, reason] of cases) {
    for (const step of [input.length, 1]) {
      const r = decodeAll(latin1(input), step);
      assert.match(r.result, reason, `${name} (step ${step}): ${r.result}`);
    }
  }
  // The largest safe size is accepted (and then waits for data).
  const max = decodeAll(latin1("1fffffffffffff\r\nabc"), 100);
  assert.deepEqual(max, { body: "abc", consumed: 19, result: "incomplete" });
});

Deno.test("ChunkedDecoder bounds chunk-size lines and trailers", () => {
  const longExt = latin1("5;" + "a".repeat(5000) + "\r\nhello\r\n0\r\n\r\n");
  assert.match(decodeAll(longExt, 64).result, /chunk-size line too long/);
  const zeros = latin1("0".repeat(5000) + "5\r\n");
  assert.match(decodeAll(zeros, 64).result, /chunk-size line too long/);
  const d = new ChunkedDecoder({ maxTrailerBytes: 10 });
  const r = d.decode(latin1("0\r\nX-Long: 123456\r\n\r\n"), []);
  assert.equal(r.kind, "invalid");
  if (r.kind === "invalid") assert.match(r.reason, /trailers too large/);
  // Invalid is sticky.
  assert.equal(d.decode(latin1("0\r\n\r\n"), []).kind, "invalid");
});

Deno.test("ChunkedDecoder stops at the end of the body and reports done after", () => {
  const d = new ChunkedDecoder();
  const out: Uint8Array[] = [];
  const r = d.decode(latin1("1\r\na\r\n0\r\n\r\nHTTP/1.1 200 OK"), out);
  assert.deepEqual(r, { kind: "ok", consumed: 11, done: true });
  assert.equal(d.done, true);
  assert.deepEqual(d.decode(latin1("more"), out), { kind: "ok", consumed: 0, done: true });
  assert.equal(out.length, 1);
});

Deno.test("encodeChunk() frames data that ChunkedDecoder reads back", () => {
  assert.deepEqual(encodeChunk(new Uint8Array(0)), new Uint8Array(0));
  assert.equal(dec.decode(encodeChunk(latin1("hello"))), "5\r\nhello\r\n");
  assert.equal(dec.decode(LAST_CHUNK), "0\r\n\r\n");
  const big = new Uint8Array(70000).map((_, i) => i & 0xff);
  const framed = encodeChunk(big);
  assert.equal(dec.decode(framed.subarray(0, 7)), "11170\r\n");
  const wire = new Uint8Array([...framed, ...encodeChunk(latin1("x")), ...LAST_CHUNK]);
  const out: Uint8Array[] = [];
  const r = new ChunkedDecoder().decode(wire, out);
  assert.deepEqual(r, { kind: "ok", consumed: wire.length, done: true });
  assert.deepEqual(new Uint8Array(out.flatMap((b) => [...b])), new Uint8Array([...big, 0x78]));
});

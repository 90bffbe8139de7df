import assert from "node:assert/strict";
import type { HeadLimits, HeadResult, RequestHead } from "../../../lib/http1/request.ts";
import {
  DEFAULT_MAX_HEADER_BYTES,
  framing,
  headerValue,
  HttpFramingError,
  parseRequestHead,
} from "../../../lib/http1/request.ts";

/** Bytes of a string, one byte per char (so "\xff" is the byte 0xff, as on the wire). */
function bytes(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

function parse(s: string, limits?: HeadLimits): HeadResult {
  return parseRequestHead(bytes(s), limits);
}

const H = "Host: example.test\r\n";

type OkCase = { name: string; input: string; want: Partial<RequestHead>; limits?: HeadLimits };

const okCases: OkCase[] = [
  {
    name: "an origin-form GET",
    input: "GET /a?b=c HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n",
    want: {
      method: "GET",
      target: "/a?b=c",
      version: "HTTP/1.1",
      headers: [["Host", "example.test"], ["Accept", "*/*"]],
      headerBytes: 56,
    },
  },
  {
    name: "an absolute-form GET sent to a proxy",
    input: "GET http://example.test:8080/x HTTP/1.1\r\nHost: example.test:8080\r\n\r\n",
    want: { target: "http://example.test:8080/x" },
  },
  {
    name: "a CONNECT in authority-form",
    input: "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
    want: { method: "CONNECT", target: "example.test:443" },
  },
  {
    name: "a CONNECT to an IPv6 literal",
    input: "CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n",
    want: { target: "[::1]:443" },
  },
  { name: "OPTIONS *", input: `OPTIONS * HTTP/1.1\r\n${H}\r\n`, want: { target: "*" } },
  {
    name: "an HTTP/1.0 request without Host",
    input: "GET / HTTP/1.0\r\n\r\n",
    want: { version: "HTTP/1.0", headers: [], headerBytes: 18 },
  },
  {
    name: "a method that is an unusual token",
    input: `M-SEARCH! / HTTP/1.1\r\n${H}\r\n`,
    want: { method: "M-SEARCH!" },
  },
  {
    name: "leading empty lines, counted in headerBytes",
    input: `\r\n\r\nGET / HTTP/1.1\r\n${H}\r\n`,
    want: { method: "GET", headerBytes: 4 + 16 + H.length + 2 },
  },
  {
    name: "values with surrounding spaces and tabs, trimmed; inner tab kept",
    input: `GET / HTTP/1.1\r\n${H}X-A: \t a\tb \t\r\nX-Empty:\r\nX-Sp:   \r\n\r\n`,
    want: {
      headers: [["Host", "example.test"], ["X-A", "a\tb"], ["X-Empty", ""], ["X-Sp", ""]],
    },
  },
  {
    name: "header names in the case they were sent",
    input: "GET / HTTP/1.1\r\nhOsT: example.test\r\nX-MiXeD: v\r\n\r\n",
    want: { headers: [["hOsT", "example.test"], ["X-MiXeD", "v"]] },
  },
  {
    name: "obs-text bytes in a value, kept byte for byte",
    input: `GET / HTTP/1.1\r\n${H}X-Latin: caf\xe9 \x80\xff\r\n\r\n`,
    want: { headers: [["Host", "example.test"], ["X-Latin", "caf\xe9 \x80\xff"]] },
  },
  {
    name: "a body after the head, not counted in headerBytes",
    input: `POST / HTTP/1.1\r\n${H}Content-Length: 5\r\n\r\nhello`,
    want: { headerBytes: 17 + H.length + 19 + 2 },
  },
  {
    name: "identical Content-Length lines, folded into one",
    input: `POST / HTTP/1.1\r\n${H}Content-Length: 5\r\ncontent-length: 5\r\n\r\n`,
    want: { headers: [["Host", "example.test"], ["Content-Length", "5"]] },
  },
  {
    name: "Transfer-Encoding: chunked",
    input: `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n`,
    want: { method: "POST" },
  },
  {
    name: "Transfer-Encoding: gzip, chunked in any case",
    input: `POST / HTTP/1.1\r\n${H}Transfer-Encoding: GZIP ,  Chunked\r\n\r\n`,
    want: { method: "POST" },
  },
  {
    name: "Transfer-Encoding over two lines ending in chunked",
    input: `POST / HTTP/1.1\r\n${H}Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n`,
    want: { method: "POST" },
  },
  {
    name: "Transfer-Encoding with empty list elements",
    input: `POST / HTTP/1.1\r\n${H}Transfer-Encoding: , chunked,\r\n\r\n`,
    want: { method: "POST" },
  },
  {
    name: "an empty Host in HTTP/1.1",
    input: "GET / HTTP/1.1\r\nHost:\r\n\r\n",
    want: { headers: [["Host", ""]] },
  },
  {
    name: "a head of exactly maxHeaderBytes",
    input: `GET / HTTP/1.1\r\n${H}\r\n`,
    limits: { maxHeaderBytes: 16 + H.length + 2 },
    want: { headerBytes: 16 + H.length + 2 },
  },
  {
    name: "exactly maxHeaders header lines",
    input: `GET / HTTP/1.1\r\n${H}A: 1\r\nB: 2\r\n\r\n`,
    limits: { maxHeaders: 3 },
    want: { method: "GET" },
  },
  {
    name: "a target of exactly maxTargetBytes",
    input: `GET /${"a".repeat(99)} HTTP/1.1\r\n${H}\r\n`,
    limits: { maxTargetBytes: 100 },
    want: { method: "GET" },
  },
];

for (const c of okCases) {
  Deno.test(`parseRequestHead() accepts ${c.name}`, () => {
    const r = parse(c.input, c.limits);
    assert.ok(r.kind === "ok", JSON.stringify(r));
    const picked = Object.fromEntries(Object.keys(c.want).map((k) => [k, (r.head as never)[k]]));
    assert.deepStrictEqual(picked, c.want);
  });
}

Deno.test("parseRequestHead() says incomplete for every strict prefix of an accepted head", () => {
  // This is what lets callers reject early without ever refusing a slow but valid client.
  for (const c of okCases) {
    const whole = bytes(c.input);
    const r = parseRequestHead(whole, c.limits);
    assert.ok(r.kind === "ok");
    for (let i = 0; i < r.head.headerBytes; i++) {
      const p = parseRequestHead(whole.subarray(0, i), c.limits);
      assert.deepStrictEqual(p, { kind: "incomplete" }, `${c.name}: prefix ${i}`);
    }
  }
});

type BadCase = {
  name: string;
  input: string;
  status: 400 | 414 | 431 | 501 | 505;
  /** A part of the reason, so the case fails for the rule it names. */
  why: string;
  limits?: HeadLimits;
};

const badCases: BadCase[] = [
  // Request line.
  {
    name: "a method with a non-token byte",
    input: `G(T / HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "invalid method",
  },
  {
    name: "an empty method",
    input: ` / HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "empty method",
  },
  {
    name: "two spaces after the method",
    input: `GET  / HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "empty request-target",
  },
  {
    name: "a tab in the target",
    input: `GET /a\tb HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "request-target",
  },
  {
    name: "a control byte in the target",
    input: `GET /a\x01 HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "request-target",
  },
  {
    name: "a DEL in the target",
    input: `GET /a\x7f HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "request-target",
  },
  {
    name: "a non-ASCII byte in the target",
    input: `GET /caf\xe9 HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "request-target",
  },
  {
    name: "a NUL in the target",
    input: `GET /\0 HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "request-target",
  },
  {
    name: "no version (HTTP/0.9 style)",
    input: "GET /\r\n\r\n",
    status: 400,
    why: "no HTTP version",
  },
  {
    name: "a lowercase version",
    input: `GET / http/1.1\r\n${H}\r\n`,
    status: 400,
    why: "malformed HTTP version",
  },
  {
    name: "a two-digit minor version",
    input: `GET / HTTP/1.10\r\n${H}\r\n`,
    status: 400,
    why: "malformed HTTP version",
  },
  {
    name: "a version without minor",
    input: `GET / HTTP/1\r\n${H}\r\n`,
    status: 400,
    why: "malformed HTTP version",
  },
  {
    name: "a space after the version",
    input: `GET / HTTP/1.1 \r\n${H}\r\n`,
    status: 400,
    why: "malformed HTTP version",
  },
  { name: "HTTP/2.0", input: `GET / HTTP/2.0\r\n${H}\r\n`, status: 505, why: "2.0 not supported" },
  { name: "HTTP/1.2", input: `GET / HTTP/1.2\r\n${H}\r\n`, status: 505, why: "1.2 not supported" },
  {
    name: "HTTP/0.9 with a version",
    input: `GET / HTTP/0.9\r\n${H}\r\n`,
    status: 505,
    why: "not supported",
  },
  { name: "an HTTP/2 preface", input: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", status: 505, why: "2.0" },
  {
    name: "CONNECT without a port",
    input: `CONNECT example.test HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "host:port",
  },
  {
    name: "CONNECT with an origin-form target",
    input: `CONNECT /x:443 HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "invalid host",
  },
  {
    name: "CONNECT with port 65536",
    input: `CONNECT a.test:65536 HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "invalid port",
  },
  {
    name: "CONNECT with userinfo",
    input: `CONNECT u@a.test:443 HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "invalid host",
  },
  {
    name: "CONNECT with an unbalanced bracket",
    input: `CONNECT [::1:443 HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "IPv6",
  },
  {
    name: "asterisk-form with GET",
    input: `GET * HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "only for OPTIONS",
  },
  {
    name: "a target with no slash and no scheme",
    input: `GET example.test/x HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "neither origin-form",
  },
  {
    name: "a scheme starting with a digit",
    input: `GET 1http://a/ HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "neither origin-form",
  },
  // Line endings.
  {
    name: "a bare LF ending the request line",
    input: `GET / HTTP/1.1\n${H}\r\n`,
    status: 400,
    why: "bare LF",
  },
  {
    name: "a bare LF ending a header line",
    input: `GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n`,
    status: 400,
    why: "bare LF",
  },
  {
    name: "a bare LF ending the head",
    input: `GET / HTTP/1.1\r\n${H}\n`,
    status: 400,
    why: "bare LF",
  },
  {
    name: "a lone LF before the request line",
    input: `\nGET / HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "bare LF",
  },
  {
    name: "a bare CR before the request line",
    input: `\rGET / HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "bare CR",
  },
  {
    name: "a bare CR in the request line",
    input: `GET /\r HTTP/1.1\r\n${H}\r\n`,
    status: 400,
    why: "request-target",
  },
  {
    name: "a bare CR in a value",
    input: `GET / HTTP/1.1\r\n${H}X: a\rb\r\n\r\n`,
    status: 400,
    why: "bare CR",
  },
  // Field lines.
  {
    name: "a NUL in a value",
    input: `GET / HTTP/1.1\r\n${H}X: a\0b\r\n\r\n`,
    status: 400,
    why: "NUL",
  },
  {
    name: "a DEL in a value",
    input: `GET / HTTP/1.1\r\n${H}X: a\x7fb\r\n\r\n`,
    status: 400,
    why: "control",
  },
  {
    name: "an escape byte in a value",
    input: `GET / HTTP/1.1\r\n${H}X: \x1b[31m\r\n\r\n`,
    status: 400,
    why: "control",
  },
  {
    name: "obs-fold",
    input: `GET / HTTP/1.1\r\n${H}X: a\r\n b\r\n\r\n`,
    status: 400,
    why: "obs-fold",
  },
  {
    name: "obs-fold with a tab",
    input: `GET / HTTP/1.1\r\n${H}X: a\r\n\tb\r\n\r\n`,
    status: 400,
    why: "obs-fold",
  },
  {
    name: "whitespace before the first header",
    input: `GET / HTTP/1.1\r\n ${H}\r\n`,
    status: 400,
    why: "obs-fold",
  },
  {
    name: "a space between name and colon",
    input: `GET / HTTP/1.1\r\nHost : a\r\n\r\n`,
    status: 400,
    why: "between field name and colon",
  },
  {
    name: "a tab between name and colon",
    input: `GET / HTTP/1.1\r\nHost\t: a\r\n\r\n`,
    status: 400,
    why: "between field name and colon",
  },
  {
    name: "a non-token byte in a name",
    input: `GET / HTTP/1.1\r\n${H}X@Y: a\r\n\r\n`,
    status: 400,
    why: "invalid byte in field name",
  },
  {
    name: "a non-ASCII byte in a name",
    input: `GET / HTTP/1.1\r\n${H}X\xe9: a\r\n\r\n`,
    status: 400,
    why: "invalid byte in field name",
  },
  {
    name: "an empty name",
    input: `GET / HTTP/1.1\r\n${H}: a\r\n\r\n`,
    status: 400,
    why: "empty field name",
  },
  {
    name: "a line without a colon",
    input: `GET / HTTP/1.1\r\n${H}NoColon\r\n\r\n`,
    status: 400,
    why: "without a colon",
  },
  // Host.
  {
    name: "HTTP/1.1 without Host",
    input: "GET / HTTP/1.1\r\nX: y\r\n\r\n",
    status: 400,
    why: "without Host",
  },
  {
    name: "two Host lines",
    input: `GET / HTTP/1.1\r\n${H}host: other.test\r\n\r\n`,
    status: 400,
    why: "more than one Host",
  },
  {
    name: "two Host lines in HTTP/1.0",
    input: `GET / HTTP/1.0\r\n${H}${H}\r\n`,
    status: 400,
    why: "more than one Host",
  },
  {
    name: "a Host with a space",
    input: "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    status: 400,
    why: "invalid Host",
  },
  {
    name: "a Host with a slash",
    input: "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    status: 400,
    why: "invalid Host",
  },
  {
    name: "a Host with userinfo",
    input: "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    status: 400,
    why: "invalid Host",
  },
  // Framing: request smuggling defences.
  {
    name: "both Content-Length and Transfer-Encoding",
    input: `POST / HTTP/1.1\r\n${H}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n`,
    status: 400,
    why: "both Content-Length and Transfer-Encoding",
  },
  {
    name: "Transfer-Encoding before Content-Length",
    input: `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n`,
    status: 400,
    why: "both Content-Length and Transfer-Encoding",
  },
  {
    name: "two different Content-Length values",
    input: `POST / HTTP/1.1\r\n${H}Content-Length: 5\r\nContent-Length: 6\r\n\r\n`,
    status: 400,
    why: "conflicting Content-Length",
  },
  {
    name: "Content-Length values equal only as numbers",
    input: `POST / HTTP/1.1\r\n${H}Content-Length: 5\r\nContent-Length: 05\r\n\r\n`,
    status: 400,
    why: "conflicting Content-Length",
  },
  {
    name: "a Content-Length list",
    input: `POST / HTTP/1.1\r\n${H}Content-Length: 5, 5\r\n\r\n`,
    status: 400,
    why: "not a decimal",
  },
  {
    name: "a signed Content-Length",
    input: `POST / HTTP/1.1\r\n${H}Content-Length: +5\r\n\r\n`,
    status: 400,
    why: "not a decimal",
  },
  {
    name: "a negative Content-Length",
    input: `POST / HTTP/1.1\r\n${H}Content-Length: -1\r\n\r\n`,
    status: 400,
    why: "not a decimal",
  },
  {
    name: "a hex Content-Length",
    input: `POST / HTTP/1.1\r\n${H}Content-Length: 0x5\r\n\r\n`,
    status: 400,
    why: "not a decimal",
  },
  {
    name: "an empty Content-Length",
    input: `POST / HTTP/1.1\r\n${H}Content-Length:\r\n\r\n`,
    status: 400,
    why: "not a decimal",
  },
  {
    name: "a Content-Length with inner space",
    input: `POST / HTTP/1.1\r\n${H}Content-Length: 1 2\r\n\r\n`,
    status: 400,
    why: "not a decimal",
  },
  {
    name: "a 16-digit Content-Length",
    input: `POST / HTTP/1.1\r\n${H}Content-Length: ${"9".repeat(16)}\r\n\r\n`,
    status: 400,
    why: "too large",
  },
  {
    name: "Transfer-Encoding: gzip alone",
    input: `POST / HTTP/1.1\r\n${H}Transfer-Encoding: gzip\r\n\r\n`,
    status: 400,
    why: "does not end with chunked",
  },
  {
    name: "chunked before gzip",
    input: `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked, gzip\r\n\r\n`,
    status: 400,
    why: "does not end with chunked",
  },
  {
    name: "chunked twice",
    input: `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked, chunked\r\n\r\n`,
    status: 400,
    why: "more than once",
  },
  {
    name: "an unknown coding",
    input: `POST / HTTP/1.1\r\n${H}Transfer-Encoding: foo, chunked\r\n\r\n`,
    status: 501,
    why: "unknown transfer coding",
  },
  {
    name: "identity, no longer a coding",
    input: `POST / HTTP/1.1\r\n${H}Transfer-Encoding: identity\r\n\r\n`,
    status: 501,
    why: "unknown transfer coding",
  },
  {
    name: "a coding with parameters",
    input: `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked;x=1\r\n\r\n`,
    status: 400,
    why: "malformed Transfer-Encoding",
  },
  {
    name: "a quoted coding",
    input: `POST / HTTP/1.1\r\n${H}Transfer-Encoding: "chunked"\r\n\r\n`,
    status: 400,
    why: "malformed Transfer-Encoding",
  },
  {
    name: "an empty Transfer-Encoding",
    input: `POST / HTTP/1.1\r\n${H}Transfer-Encoding:\r\n\r\n`,
    status: 400,
    why: "empty Transfer-Encoding",
  },
  {
    name: "Transfer-Encoding in HTTP/1.0",
    input: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    status: 400,
    why: "HTTP/1.0",
  },
  // Limits.
  {
    name: "a target longer than maxTargetBytes",
    input: `GET /${"a".repeat(100)} HTTP/1.1\r\n${H}\r\n`,
    limits: { maxTargetBytes: 100 },
    status: 414,
    why: "request-target longer than 100",
  },
  {
    name: "a target longer than maxTargetBytes, still arriving",
    input: `GET /${"a".repeat(100)}`,
    limits: { maxTargetBytes: 100 },
    status: 414,
    why: "request-target longer than 100",
  },
  {
    name: "a request line that does not end within maxHeaderBytes",
    input: `GET /${"a".repeat(100)}`,
    limits: { maxHeaderBytes: 64 },
    status: 414,
    why: "request line exceeds maxHeaderBytes",
  },
  {
    name: "a complete head one byte over maxHeaderBytes",
    input: `GET / HTTP/1.1\r\n${H}\r\n`,
    limits: { maxHeaderBytes: 16 + H.length + 1 },
    status: 431,
    why: "head exceeds maxHeaderBytes",
  },
  {
    name: "an unfinished head that has reached maxHeaderBytes",
    input: `GET / HTTP/1.1\r\n${H}X: ${"v".repeat(100)}`,
    limits: { maxHeaderBytes: 64 },
    status: 431,
    why: "head exceeds maxHeaderBytes",
  },
  {
    name: "endless empty lines",
    input: "\r\n".repeat(100),
    limits: { maxHeaderBytes: 64 },
    status: 431,
    why: "head exceeds maxHeaderBytes",
  },
  {
    name: "one header line more than maxHeaders",
    input: `GET / HTTP/1.1\r\n${H}A: 1\r\nB: 2\r\nC: 3\r\n\r\n`,
    limits: { maxHeaders: 3 },
    status: 431,
    why: "more than 3 header lines",
  },
  // Not HTTP at all.
  {
    name: "a TLS ClientHello, on its first byte",
    input: "\x16",
    status: 400,
    why: "TLS handshake sent to a plain HTTP port",
  },
  {
    name: "binary garbage",
    input: "\x00\x01\x02\x03",
    status: 400,
    why: "does not start with a method",
  },
  {
    name: "a NUL in an unfinished request line",
    input: "GET /\0",
    status: 400,
    why: "request-target",
  },
  {
    name: "a wrong version prefix, still arriving",
    input: "GET / HTTX",
    status: 400,
    why: "malformed HTTP version",
  },
  {
    name: "a NUL in an unfinished header",
    input: `GET / HTTP/1.1\r\nX: \0`,
    status: 400,
    why: "NUL",
  },
  {
    name: "obs-fold, still arriving",
    input: `GET / HTTP/1.1\r\n${H}\t`,
    status: 400,
    why: "obs-fold",
  },
];

for (const c of badCases) {
  Deno.test(`parseRequestHead() refuses ${c.name} with ${c.status}`, () => {
    const r = parse(c.input, c.limits);
    assert.ok(r.kind === "invalid", JSON.stringify(r));
    assert.equal(r.status, c.status, r.reason);
    assert.ok(r.reason.includes(c.why), `reason ${JSON.stringify(r.reason)} lacks ${c.why}`);
  });
}

const incompleteCases: [name: string, input: string][] = [
  ["an empty buffer", ""],
  ["a lone CR", "\r"],
  ["an empty line", "\r\n"],
  ["a method", "GET"],
  ["a request line without its LF", "GET / HTTP/1.1\r"],
  ["a head without its blank line", `GET / HTTP/1.1\r\n${H}`],
  ["a head missing its last LF", `GET / HTTP/1.1\r\n${H}\r`],
  ["a head of one byte under maxHeaderBytes", `GET / HTTP/1.1\r\n${H}\r`],
];

for (const [name, input] of incompleteCases) {
  Deno.test(`parseRequestHead() says incomplete for ${name}`, () => {
    assert.deepStrictEqual(parse(input, { maxHeaderBytes: 16 + H.length + 2 }), {
      kind: "incomplete",
    });
  });
}

Deno.test("parseRequestHead() uses a 32 KiB head limit by default", () => {
  const filler = `X: ${"v".repeat(1000)}\r\n`;
  const head = (n: number): string => `GET / HTTP/1.1\r\n${H}${filler.repeat(n)}\r\n`;
  assert.equal(DEFAULT_MAX_HEADER_BYTES, 32768);
  assert.equal(parse(head(30)).kind, "ok");
  const big = parse(head(33));
  assert.ok(big.kind === "invalid" && big.status === 431, JSON.stringify(big));
});

Deno.test("parseRequestHead() does not look past maxHeaderBytes in a large buffer", () => {
  // The CRLFCRLF sits beyond the limit: the head is too large no matter what follows.
  const buf = bytes(`GET / HTTP/1.1\r\n${H}X: ${"v".repeat(2000)}\r\n\r\n`);
  const r = parseRequestHead(buf, { maxHeaderBytes: 1024 });
  assert.ok(r.kind === "invalid" && r.status === 431);
});

function head(s: string): RequestHead {
  const r = parse(s);
  assert.ok(r.kind === "ok", JSON.stringify(r));
  return r.head;
}

Deno.test("framing() reads the body framing of a parsed head", () => {
  const cases: [string, string, ReturnType<typeof framing>][] = [
    ["no body", `GET / HTTP/1.1\r\n${H}\r\n`, { kind: "none" }],
    ["Content-Length", `POST / HTTP/1.1\r\n${H}content-length: 42\r\n\r\n`, {
      kind: "length",
      length: 42,
    }],
    ["Content-Length 0", `POST / HTTP/1.1\r\n${H}Content-Length: 0\r\n\r\n`, {
      kind: "length",
      length: 0,
    }],
    [
      "the largest Content-Length",
      `POST / HTTP/1.1\r\n${H}Content-Length: 999999999999999\r\n\r\n`,
      {
        kind: "length",
        length: 999999999999999,
      },
    ],
    ["chunked", `POST / HTTP/1.1\r\n${H}Transfer-Encoding: gzip, chunked\r\n\r\n`, {
      kind: "chunked",
    }],
  ];
  for (const [name, input, want] of cases) assert.deepStrictEqual(framing(head(input)), want, name);
});

Deno.test("framing() throws HttpFramingError for a hand-built head with a bad Content-Length", () => {
  const base = head(`GET / HTTP/1.1\r\n${H}\r\n`);
  const bad = { ...base, headers: [["Content-Length", "12abc"]] as [string, string][] };
  assert.throws(() => framing(bad), (e: unknown) => {
    assert.ok(e instanceof HttpFramingError);
    assert.equal(e.name, "HttpFramingError");
    assert.ok(e.message.includes('"12abc"'));
    return true;
  });
  const both = {
    ...base,
    headers: [["Content-Length", "1"], ["Transfer-Encoding", "chunked"]] as [string, string][],
  };
  assert.throws(() => framing(both), HttpFramingError);
});

Deno.test("headerValue() finds the first header by case-insensitive name", () => {
  const h = head(`GET / HTTP/1.1\r\n${H}X-Dup: one\r\nx-dup: two\r\n\r\n`);
  assert.equal(headerValue(h, "x-DUP"), "one");
  assert.equal(headerValue(h, "HOST"), "example.test");
  assert.equal(headerValue(h, "X-Missing"), undefined);
  assert.equal(headerValue(h, "X-Du"), undefined);
});

// ---------------------------------------------------------------------------------------------
// Real client: curl talking to a capturing proxy on loopback. curl connects only to the proxy
// address we give it, so nothing leaves the machine.

async function captureCurl(
  args: string[],
  answer: string,
): Promise<{ result: HeadResult; curlOut: string; curlCode: number }> {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  const child = new Deno.Command("curl", {
    args: ["-sS", "--max-time", "5", "-x", `http://127.0.0.1:${port}`, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const conn = await listener.accept();
  let buf: Uint8Array = new Uint8Array(0);
  let result: HeadResult = { kind: "incomplete" };
  const chunk = new Uint8Array(4096);
  const deadline = setTimeout(() => conn.close(), 10_000);
  try {
    while (result.kind === "incomplete") {
      const n = await conn.read(chunk);
      if (n === null) break;
      const next = new Uint8Array(buf.length + n);
      next.set(buf);
      next.set(chunk.subarray(0, n), buf.length);
      buf = next;
      result = parseRequestHead(buf);
    }
    await conn.write(bytes(answer));
  } finally {
    clearTimeout(deadline);
    conn.close();
  }
  const out = await child.output();
  return { result, curlOut: new TextDecoder().decode(out.stdout), curlCode: out.code };
}

Deno.test("parseRequestHead() parses the absolute-form head curl sends to a proxy", async () => {
  const { result, curlOut, curlCode } = await captureCurl(
    ["http://example.test/path?q=1", "-H", "X-A: b"],
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
  );
  assert.ok(result.kind === "ok", JSON.stringify(result));
  const h = result.head;
  assert.equal(h.method, "GET");
  assert.equal(h.target, "http://example.test/path?q=1");
  assert.equal(h.version, "HTTP/1.1");
  assert.equal(headerValue(h, "host"), "example.test");
  assert.equal(headerValue(h, "x-a"), "b");
  assert.match(headerValue(h, "user-agent") ?? "", /^curl\//);
  assert.deepStrictEqual(framing(h), { kind: "none" });
  assert.deepStrictEqual(h.headers[0], ["Host", "example.test"]);
  assert.equal(curlOut, "ok");
  assert.equal(curlCode, 0);
});

Deno.test("parseRequestHead() parses curl's POST and CONNECT heads", async () => {
  const post = await captureCurl(
    ["http://example.test/up", "--data-binary", "hello"],
    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
  );
  assert.ok(post.result.kind === "ok", JSON.stringify(post.result));
  assert.equal(post.result.head.method, "POST");
  assert.deepStrictEqual(framing(post.result.head), { kind: "length", length: 5 });

  // -p makes curl tunnel through the proxy with CONNECT; our refusal makes it exit non-zero.
  const connect = await captureCurl(
    ["-p", "http://example.test:8080/"],
    "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
  );
  assert.ok(connect.result.kind === "ok", JSON.stringify(connect.result));
  assert.equal(connect.result.head.method, "CONNECT");
  assert.equal(connect.result.head.target, "example.test:8080");
  assert.equal(headerValue(connect.result.head, "host"), "example.test:8080");
  assert.notEqual(connect.curlCode, 0);
});

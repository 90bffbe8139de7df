/**
 * Cost of the two parsers that run on every new connection: `deno bench --allow-read
 * bench/parsers_bench.ts`.
 */
import { parseClientHello } from "../lib/tls/client_hello.ts";
import { parseRequestHead } from "../lib/http1/request.ts";

function fromHex(hex: string): Uint8Array {
  const clean = hex.trim();
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(i * 2, i * 2 + 2), 16);
  return out;
}

function latin1Bytes(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

/** A ClientHello captured from curl 7.88.1 (OpenSSL 3.0) for https://foo.example/. */
const CURL_HELLO = fromHex(
  Deno.readTextFileSync(new URL("../test/fixtures/curl_client_hello.hex", import.meta.url)),
);

/** The same handshake message re-cut into three records, to price reassembly. */
const CURL_HELLO_3_RECORDS = (() => {
  const hs = CURL_HELLO.subarray(5);
  const cuts = [0, 100, 300, hs.length];
  const parts: number[] = [];
  for (let i = 0; i + 1 < cuts.length; i++) {
    const frag = hs.subarray(cuts[i], cuts[i + 1]);
    parts.push(0x16, 3, 1, frag.length >> 8, frag.length & 0xff, ...frag);
  }
  return new Uint8Array(parts);
})();

/** What curl sends to an explicit proxy. */
const CURL_PROXY_HEAD = latin1Bytes(
  "GET http://example.test/path?q=1 HTTP/1.1\r\nHost: example.test\r\n" +
    "User-Agent: curl/7.88.1\r\nAccept: */*\r\nProxy-Connection: Keep-Alive\r\nX-A: b\r\n\r\n",
);

/** A browser-sized head: 14 fields, a cookie, about 900 bytes. */
const BROWSER_HEAD = latin1Bytes(
  "GET /api/v1/items?page=2&sort=desc HTTP/1.1\r\n" +
    "Host: app.example.test\r\n" +
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) " +
    "Chrome/126.0.0.0 Safari/537.36\r\n" +
    "Accept: application/json, text/plain, */*\r\n" +
    "Accept-Language: en-US,en;q=0.9\r\n" +
    "Accept-Encoding: gzip, deflate, br, zstd\r\n" +
    "Referer: https://app.example.test/items\r\n" +
    "Origin: https://app.example.test\r\n" +
    "Connection: keep-alive\r\n" +
    `Cookie: session=${"a1b2c3d4".repeat(24)}; theme=dark; consent=yes\r\n` +
    "Sec-Fetch-Dest: empty\r\n" +
    "Sec-Fetch-Mode: cors\r\n" +
    "Sec-Fetch-Site: same-origin\r\n" +
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl\r\n" +
    "Content-Length: 0\r\n\r\n",
);

Deno.bench("parseClientHello() on a curl ClientHello (517 bytes, one record)", () => {
  parseClientHello(CURL_HELLO);
});

Deno.bench("parseClientHello() on the same hello in three records", () => {
  parseClientHello(CURL_HELLO_3_RECORDS);
});

Deno.bench("parseRequestHead() on curl's proxy head (6 fields)", () => {
  parseRequestHead(CURL_PROXY_HEAD);
});

Deno.bench("parseRequestHead() on a browser-sized head (14 fields)", () => {
  parseRequestHead(BROWSER_HEAD);
});

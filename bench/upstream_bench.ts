/**
 * Cost of the upstream client: `deno bench --allow-net bench/upstream_bench.ts`.
 *
 * The parsers run per response; the end-to-end rows send keep-alive requests to a minimal
 * HTTP/1.1 server on loopback in the same process (so they include that server's cost), with
 * fetch on the same server as a reference point.
 */
import {
  ChunkedDecoder,
  encodeChunk,
  LAST_CHUNK,
  parseResponseHead,
} from "../lib/http1/response.ts";
import { UpstreamPool } from "../lib/upstream/client.ts";

function latin1Bytes(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

/** What nginx sends for a small static file. */
const NGINX_HEAD = latin1Bytes(
  "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 22 Nov 2025 21:00:00 GMT\r\n" +
    "Content-Type: text/html\r\nContent-Length: 615\r\nLast-Modified: Tue, 13 Jun 2023 " +
    '15:08:10 GMT\r\nConnection: keep-alive\r\nETag: "64888a1a-267"\r\nAccept-Ranges: bytes\r\n\r\n',
);

/** A 1 MiB body chunked into 16 KiB chunks and delivered in 64 KiB reads. */
const CHUNKED_READS = (() => {
  const data = new Uint8Array(16384).fill(0x61);
  const parts: Uint8Array[] = [];
  for (let i = 0; i < 64; i++) parts.push(encodeChunk(data));
  parts.push(LAST_CHUNK);
  const wire = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    wire.set(p, at);
    at += p.length;
  }
  const reads: Uint8Array[] = [];
  for (let i = 0; i < wire.length; i += 65536) reads.push(wire.subarray(i, i + 65536));
  return reads;
})();

Deno.bench("parseResponseHead() nginx 200 head", { group: "parse" }, () => {
  const r = parseResponseHead(NGINX_HEAD);
  if (r.kind !== "ok") throw new Error("parse failed");
});

Deno.bench("ChunkedDecoder 1 MiB in 16 KiB chunks", { group: "chunked" }, () => {
  const d = new ChunkedDecoder();
  const out: Uint8Array[] = [];
  for (const r of CHUNKED_READS) d.decode(r, out);
  if (!d.done) throw new Error("not done");
});

// ---------------------------------------------------------------------------------------------
// End to end on loopback.

const RESPONSE = latin1Bytes("HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nhello, world!");
const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
const port = (listener.addr as Deno.NetAddr).port;
(async () => {
  for await (const conn of listener) {
    conn.setNoDelay(true);
    (async () => {
      const buf = new Uint8Array(65536);
      let pending = "";
      try {
        while (true) {
          const n = await conn.read(buf);
          if (n === null) break;
          pending += new TextDecoder().decode(buf.subarray(0, n));
          // Requests without bodies: one response per complete head.
          let i;
          while ((i = pending.indexOf("\r\n\r\n")) >= 0) {
            pending = pending.slice(i + 4);
            await conn.write(RESPONSE);
          }
        }
      } catch { /* closed */ }
      try {
        conn.close();
      } catch { /* closed */ }
    })();
  }
})();

const pool = new UpstreamPool();
const target = { host: "127.0.0.1", port, address: "127.0.0.1", tls: false, verify: true };
const client = Deno.createHttpClient({ poolMaxIdlePerHost: 8 });

Deno.bench(
  "UpstreamPool keep-alive GET, 13-byte body",
  { group: "e2e", baseline: true },
  async () => {
    const res = await pool.request(target, { method: "GET", path: "/", headers: [], body: null });
    await new Response(res.body).arrayBuffer();
  },
);

Deno.bench("fetch keep-alive GET, 13-byte body (reference)", { group: "e2e" }, async () => {
  const res = await fetch(`http://127.0.0.1:${port}/`, { client });
  await res.arrayBuffer();
});

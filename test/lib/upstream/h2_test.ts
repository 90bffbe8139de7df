/**
 * The upstream client's HTTP/2 (lib/upstream/h2.ts) against node:http2 servers on loopback:
 * protocol choice by ALPN, multiplexing within the server's SETTINGS_MAX_CONCURRENT_STREAMS,
 * GOAWAY, RST_STREAM, trailers, flow-controlled bodies.
 */
import assert from "node:assert/strict";
import http2 from "node:http2";
import { ephemeralCa, mintLeaf } from "../../../lib/tls/ca.ts";
import { UpstreamError, UpstreamPool } from "../../../lib/upstream/client.ts";
import type { UpstreamTarget } from "../../../lib/upstream/client.ts";

const ca = await ephemeralCa();
const leaf = await mintLeaf(ca, "h2.test");

type Handler = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => void;

async function server(handler: Handler, opts: http2.SecureServerOptions = {}) {
  const s = http2.createSecureServer({ key: leaf.keyPem, cert: leaf.certPem, ...opts });
  const sessions: http2.ServerHttp2Session[] = [];
  s.on("session", (session) => sessions.push(session));
  s.on("stream", (stream, headers) => {
    // A stream the test resets emits the reset as an error on this side too.
    stream.on("error", () => {});
    handler(stream as http2.ServerHttp2Stream, headers);
  });
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as { port: number }).port;
  const target: UpstreamTarget = {
    host: "h2.test",
    port,
    address: "127.0.0.1",
    tls: true,
    caCerts: [ca.certPem],
    verify: true,
  };
  return {
    target,
    sessions,
    close: () => {
      for (const x of sessions) x.destroy();
      return new Promise<void>((r) => s.close(() => r()));
    },
  };
}

const get = (http2: boolean) => ({
  method: "GET",
  path: "/x",
  headers: [] as [string, string][],
  body: null,
  http2,
});

Deno.test("h2: a request from an HTTP/2 client goes over h2; one from HTTP/1.1 over HTTP/1.1, also after", async () => {
  // node's compatibility API answers both protocols: the body says which one carried it.
  const s = http2.createSecureServer({ key: leaf.keyPem, cert: leaf.certPem, allowHTTP1: true });
  s.on("request", (req, res) => res.end(req.httpVersion));
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const target: UpstreamTarget = {
    host: "h2.test",
    port: (s.address() as { port: number }).port,
    address: "127.0.0.1",
    tls: true,
    caCerts: [ca.certPem],
    verify: true,
  };
  const pool = new UpstreamPool();
  try {
    assert.equal(await new Response((await pool.request(target, get(false))).body).text(), "1.1");
    // A fresh pool: the first one remembered the upstream as HTTP/1.1 (it chose nothing else).
    const pool2 = new UpstreamPool();
    try {
      assert.equal(await new Response((await pool2.request(target, get(true))).body).text(), "2.0");
      // An upstream that speaks both keeps serving HTTP/1.1 clients over HTTP/1.1 (sluice's
      // HTTP/1.1 pool costs less per request than node:http2), and h2 clients over h2.
      assert.equal(
        await new Response((await pool2.request(target, get(false))).body).text(),
        "1.1",
      );
      assert.equal(await new Response((await pool2.request(target, get(true))).body).text(), "2.0");
    } finally {
      pool2.close();
    }
  } finally {
    pool.close();
    await new Promise<void>((r) => s.close(() => r()));
  }
});

Deno.test("h2: an upstream that refuses HTTP/1.1 is retried and remembered as HTTP/2", async () => {
  const s = await server((stream) => {
    stream.respond({ ":status": 200 });
    stream.end("ok");
  });
  const pool = new UpstreamPool();
  try {
    for (let i = 0; i < 3; i++) {
      const r = await pool.request(s.target, get(false));
      assert.equal(await new Response(r.body).text(), "ok");
    }
    assert.equal(s.sessions.length, 1, "one session carried every request");
  } finally {
    pool.close();
    await s.close();
  }
});

Deno.test("h2: concurrent requests stay within SETTINGS_MAX_CONCURRENT_STREAMS, more sessions open", async () => {
  let inFlight = 0;
  let most = 0;
  const s = await server((stream) => {
    inFlight++;
    most = Math.max(most, inFlight);
    setTimeout(() => {
      inFlight--;
      stream.respond({ ":status": 200 });
      stream.end("ok");
    }, 50);
  }, { settings: { maxConcurrentStreams: 4 } });
  const pool = new UpstreamPool();
  try {
    // The first request learns the server's settings; then 20 at once.
    await new Response((await pool.request(s.target, get(true))).body).text();
    const all = await Promise.all(
      Array.from({ length: 20 }, async () => {
        const r = await pool.request(s.target, get(true));
        return await new Response(r.body).text();
      }),
    );
    assert.deepEqual(new Set(all), new Set(["ok"]));
    for (const session of s.sessions) {
      assert.ok(session.state.effectiveLocalWindowSize !== undefined);
    }
    assert.ok(
      s.sessions.length >= 5,
      `20 streams at 4 per session need 5 sessions, saw ${s.sessions.length}`,
    );
  } finally {
    pool.close();
    await s.close();
  }
});

Deno.test("h2: after GOAWAY the next request opens a new session", async () => {
  let n = 0;
  const s = await server((stream) => {
    stream.respond({ ":status": 200 });
    stream.end(String(++n));
    if (n === 1) stream.session?.goaway();
  });
  const pool = new UpstreamPool();
  try {
    assert.equal(await new Response((await pool.request(s.target, get(true))).body).text(), "1");
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(await new Response((await pool.request(s.target, get(true))).body).text(), "2");
    assert.equal(s.sessions.length, 2);
  } finally {
    pool.close();
    await s.close();
  }
});

Deno.test("h2: RST_STREAM before the response is an UpstreamError naming the code", async () => {
  const s = await server((stream) => stream.close(http2.constants.NGHTTP2_REFUSED_STREAM));
  const pool = new UpstreamPool();
  try {
    await assert.rejects(
      pool.request(s.target, get(true)),
      (e) =>
        e instanceof UpstreamError && e.kind === "reset" &&
        /REFUSED_STREAM|error code 7/.test(e.message),
    );
  } finally {
    pool.close();
    await s.close();
  }
});

Deno.test("h2: RST_STREAM during the body errors the body stream", async () => {
  const s = await server((stream) => {
    stream.respond({ ":status": 200 });
    stream.write("part");
    // destroy(): a real RST_STREAM (in Deno 2.9.6, close(code) on a server stream ends it
    // cleanly instead).
    setTimeout(() => stream.destroy(new Error("reset by the test")), 50);
  });
  const pool = new UpstreamPool();
  try {
    const r = await pool.request(s.target, get(true));
    await assert.rejects(new Response(r.body).text(), /reset the stream during the body/);
  } finally {
    pool.close();
    await s.close();
  }
});

Deno.test("h2: trailers arrive after the body; fields, body and a streamed upload pass intact", async () => {
  const s = await server((stream, headers) => {
    const chunks: Uint8Array[] = [];
    stream.on("data", (c: Uint8Array) => chunks.push(c));
    stream.on("end", () => {
      const total = chunks.reduce((a, c) => a + c.length, 0);
      stream.respond({ ":status": 201, "x-got": String(headers["x-test"]) }, {
        waitForTrailers: true,
      });
      stream.on(
        "wantTrailers",
        () => stream.sendTrailers({ "grpc-status": "0", "x-n": String(total) }),
      );
      stream.end(`got ${total}`);
    });
  });
  const pool = new UpstreamPool();
  try {
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < 64; i++) c.enqueue(new Uint8Array(16 * 1024).fill(i));
        c.close();
      },
    });
    const r = await pool.request(s.target, {
      method: "POST",
      path: "/up",
      headers: [["x-test", "yes"], ["connection", "keep-alive"], ["te", "trailers"]],
      body,
      http2: true,
    });
    assert.equal(r.status, 201);
    assert.deepEqual(r.headers.find(([n]) => n === "x-got"), ["x-got", "yes"]);
    assert.equal(await new Response(r.body).text(), `got ${64 * 16 * 1024}`);
    assert.deepEqual(await r.trailers, [["grpc-status", "0"], ["x-n", String(64 * 16 * 1024)]]);
  } finally {
    pool.close();
    await s.close();
  }
});

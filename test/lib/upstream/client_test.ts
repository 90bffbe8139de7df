/**
 * The upstream client against scripted servers on loopback: every response is written byte by
 * byte by the test, so framing, reuse and failure paths are exercised exactly.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { gzipSync } from "node:zlib";
import { ChunkedDecoder } from "../../../lib/http1/response.ts";
import { framing, parseRequestHead } from "../../../lib/http1/request.ts";
import type { RequestHead } from "../../../lib/http1/request.ts";
import { UpstreamError, UpstreamPool } from "../../../lib/upstream/client.ts";
import type {
  UpstreamRequest,
  UpstreamResponse,
  UpstreamTarget,
} from "../../../lib/upstream/client.ts";
import { type OpensslPki, opensslPki } from "../../_pki.ts";
import { cat } from "../../_bytes.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function latin1(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

/** A request as the scripted server saw it. */
type SeenRequest = {
  head: RequestHead;
  /** The head bytes exactly as received. */
  rawHead: string;
  /** Decoded body length and hash; the body itself when small. */
  bodyLength: number;
  bodyHash: string;
  body: Uint8Array;
  /** Bytes the first read returned (head and body sent together show up here). */
  firstRead: number;
};

/** One accepted connection, driven by the test's script. */
class Peer {
  #buf: Uint8Array = new Uint8Array(0);
  firstRead = -1;
  constructor(readonly conn: Deno.Conn, readonly index: number) {}

  #closed = false;

  async #more(): Promise<boolean> {
    const b = new Uint8Array(256 * 1024);
    let n: number | null;
    try {
      n = await this.conn.read(b);
    } catch (e) {
      if (this.#closed) return false; // the test closed us while we waited
      throw e;
    }
    if (n === null) return false;
    if (this.firstRead < 0) this.firstRead = n;
    this.#buf = cat(this.#buf, b.subarray(0, n));
    return true;
  }

  /** Read one request (head and body), or null if the client closed the connection. */
  async readRequest(opts?: { headOnly?: boolean }): Promise<SeenRequest | null> {
    let r = parseRequestHead(this.#buf);
    while (r.kind === "incomplete") {
      if (!await this.#more()) return null;
      r = parseRequestHead(this.#buf);
    }
    if (r.kind !== "ok") throw new Error(`server: bad request head: ${r.reason}`);
    const head = r.head;
    const rawHead = dec.decode(this.#buf.subarray(0, head.headerBytes));
    this.#buf = this.#buf.slice(head.headerBytes);
    const seen: SeenRequest = {
      head,
      rawHead,
      bodyLength: 0,
      bodyHash: "",
      body: new Uint8Array(0),
      firstRead: this.firstRead,
    };
    if (opts?.headOnly) return seen;
    await this.readBody(seen);
    return seen;
  }

  /** Read the body the head announces into `seen`. */
  async readBody(seen: SeenRequest): Promise<void> {
    const f = framing(seen.head);
    const hash = createHash("sha256");
    const small: Uint8Array[] = [];
    const take = (b: Uint8Array): void => {
      hash.update(b);
      seen.bodyLength += b.length;
      if (seen.bodyLength <= 65536) small.push(b.slice());
    };
    if (f.kind === "length") {
      let left = f.length;
      while (left > 0) {
        if (this.#buf.length === 0 && !await this.#more()) throw new Error("server: short body");
        const n = Math.min(left, this.#buf.length);
        take(this.#buf.subarray(0, n));
        this.#buf = this.#buf.slice(n);
        left -= n;
      }
    } else if (f.kind === "chunked") {
      const d = new ChunkedDecoder();
      while (true) {
        const out: Uint8Array[] = [];
        const r = d.decode(this.#buf, out);
        if (r.kind === "invalid") throw new Error(`server: bad chunked body: ${r.reason}`);
        out.forEach(take);
        this.#buf = this.#buf.slice(r.consumed);
        if (r.done) break;
        if (!await this.#more()) throw new Error("server: short chunked body");
      }
    }
    seen.bodyHash = hash.digest("hex");
    seen.body = cat(...small);
  }

  async write(data: string | Uint8Array): Promise<void> {
    const b = typeof data === "string" ? latin1(data) : data;
    let off = 0;
    while (off < b.length) off += await this.conn.write(b.subarray(off));
  }

  close(): void {
    this.#closed = true;
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }
}

type Script = (peer: Peer) => Promise<void>;

/** A scripted server: connection i runs `scripts[min(i, last)]`. */
class ScriptedServer {
  readonly #listener: Deno.Listener;
  readonly #tasks: Promise<void>[] = [];
  readonly #peers: Peer[] = [];
  readonly errors: unknown[] = [];
  readonly requests: SeenRequest[] = [];
  #loop: Promise<void>;

  constructor(listener: Deno.Listener, scripts: Script[]) {
    this.#listener = listener;
    this.#loop = (async () => {
      let i = 0;
      try {
        for await (const conn of listener) {
          if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
          const peer = new Peer(conn, i);
          this.#peers.push(peer);
          const script = scripts[Math.min(i++, scripts.length - 1)];
          this.#tasks.push(
            script(peer).catch((e) => {
              this.errors.push(e);
            }).finally(() => peer.close()),
          );
        }
      } catch { /* listener closed */ }
    })();
  }

  get port(): number {
    return (this.#listener.addr as Deno.NetAddr).port;
  }

  get accepted(): number {
    return this.#peers.length;
  }

  async close(): Promise<void> {
    this.#listener.close();
    await this.#loop;
    for (const p of this.#peers) p.close();
    await Promise.all(this.#tasks);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function serve(...scripts: Script[]): ScriptedServer {
  return new ScriptedServer(Deno.listen({ hostname: "127.0.0.1", port: 0 }), scripts);
}

/** A script that answers every request on the connection with `respond(request, index)`. */
function answering(
  server: () => ScriptedServer,
  respond: (req: SeenRequest, n: number) => string | Uint8Array,
): Script {
  return async (peer) => {
    for (let n = 0;; n++) {
      const req = await peer.readRequest();
      if (req === null) return;
      server().requests.push(req);
      await peer.write(respond(req, n));
    }
  };
}

function target(port: number, extra?: Partial<UpstreamTarget>): UpstreamTarget {
  return { host: "127.0.0.1", port, address: "127.0.0.1", tls: false, verify: true, ...extra };
}

function get(path = "/", headers: [string, string][] = []): UpstreamRequest {
  return { method: "GET", path, headers, body: null };
}

async function readAll(res: UpstreamResponse): Promise<Uint8Array> {
  if (res.body === null) return new Uint8Array(0);
  return new Uint8Array(await new Response(res.body).arrayBuffer());
}

async function rejects(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new assert.AssertionError({ message: "expected a rejection" });
}

function assertUpstreamError(e: unknown, kind: UpstreamError["kind"], pattern: RegExp): void {
  assert.ok(e instanceof UpstreamError, `expected UpstreamError, got ${e}`);
  assert.equal(e.name, "UpstreamError");
  assert.equal(e.kind, kind, e.message);
  assert.match(e.message, pattern);
}

async function until(cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("condition not reached in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

// ---------------------------------------------------------------------------------------------
// Response framing.

Deno.test("UpstreamPool.request() passes each response framing through byte-identical", async (t) => {
  const gz = new Uint8Array(gzipSync(enc.encode("hello gzip ".repeat(1000))));
  const cases: {
    name: string;
    method?: string;
    response: Uint8Array;
    body: Uint8Array | null;
    status: number;
    headers?: [string, string][];
    reusable: boolean;
    /** The server closes the connection after the response. */
    close?: boolean;
  }[] = [
    {
      name: "content-length",
      response: latin1("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"),
      body: enc.encode("hello"),
      status: 200,
      headers: [["Content-Length", "5"], ["X-A", "b"]],
      reusable: true,
    },
    {
      name: "chunked with extensions and trailers",
      response: latin1(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n" +
          '5;name=value;q="x y"\r\nhello\r\n1 ; ext\r\n \r\nA\r\n0123456789\r\n' +
          "0;last\r\nX-T: done\r\nX-U: 2\r\n\r\n",
      ),
      body: enc.encode("hello 0123456789"),
      status: 200,
      headers: [],
      reusable: true,
    },
    {
      name: "close-delimited",
      response: latin1("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"),
      body: enc.encode("until the end"),
      status: 200,
      headers: [["Content-Type", "text/plain"]],
      reusable: false,
      close: true,
    },
    {
      name: "HEAD with a Content-Length and no body",
      method: "HEAD",
      response: latin1("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
      body: null,
      status: 200,
      reusable: true,
    },
    {
      name: "204",
      response: latin1("HTTP/1.1 204 No Content\r\n\r\n"),
      body: null,
      status: 204,
      reusable: true,
    },
    {
      name: "304 with a Content-Length",
      response: latin1('HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nETag: "x"\r\n\r\n'),
      body: null,
      status: 304,
      reusable: true,
    },
    {
      name: "gzip body with content-encoding kept",
      response: cat(
        latin1(
          `HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: ${gz.length}\r\n\r\n`,
        ),
        gz,
      ),
      body: gz,
      status: 200,
      headers: [["Content-Encoding", "gzip"], ["Content-Length", String(gz.length)]],
      reusable: true,
    },
    {
      name: "HTTP/1.0 without keep-alive",
      response: latin1("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
      body: enc.encode("ok"),
      status: 200,
      reusable: false,
      close: true,
    },
    {
      name: "HTTP/1.0 with keep-alive",
      response: latin1("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"),
      body: enc.encode("ok"),
      status: 200,
      headers: [["Content-Length", "2"]],
      reusable: true,
    },
    {
      name: "Connection: close",
      response: latin1("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"),
      body: enc.encode("ok"),
      status: 200,
      headers: [["Content-Length", "2"]],
      reusable: false,
      close: true,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      // Answer in small pieces so every parser state sees a read boundary.
      const server: ScriptedServer = serve(async (peer) => {
        while (true) {
          const req = await peer.readRequest();
          if (req === null) return;
          for (let i = 0; i < c.response.length; i += 7) {
            await peer.write(c.response.subarray(i, i + 7));
          }
          if (c.close) return;
        }
      });
      const pool = new UpstreamPool();
      try {
        for (let i = 0; i < 2; i++) {
          const res = await pool.request(target(server.port), {
            ...get(),
            method: c.method ?? "GET",
          });
          assert.equal(res.status, c.status);
          if (c.headers) assert.deepEqual(res.headers, c.headers);
          if (c.body === null) assert.equal(res.body, null);
          else assert.deepEqual(await readAll(res), c.body);
          if (c.body !== null || c.method === "HEAD") {
            assert.equal(res.bytesIn(), c.response.length);
          }
        }
        await until(() => pool.stats().active === 0);
        const s = pool.stats();
        assert.deepEqual(
          { created: s.created, reused: s.reused, idle: s.idle, active: s.active },
          c.reusable
            ? { created: 1, reused: 1, idle: 1, active: 0 }
            : { created: 2, reused: 0, idle: 0, active: 0 },
        );
        assert.equal(server.accepted, c.reusable ? 1 : 2);
      } finally {
        pool.close();
        await server.close();
      }
      assert.deepEqual(server.errors, []);
    });
  }
});

Deno.test("UpstreamPool.request() reads a response split at every byte boundary", async () => {
  const response = latin1(
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n",
  );
  const server: ScriptedServer = serve(async (peer) => {
    while (await peer.readRequest()) {
      for (const byte of response) {
        await peer.write(new Uint8Array([byte]));
        await new Promise((r) => setTimeout(r, 0));
      }
    }
  });
  const pool = new UpstreamPool();
  try {
    for (let i = 0; i < 2; i++) {
      const res = await pool.request(target(server.port), get());
      assert.equal(dec.decode(await readAll(res)), "abcde");
    }
    assert.equal(pool.stats().created, 1);
  } finally {
    pool.close();
    await server.close();
  }
});

Deno.test("UpstreamPool.request() removes hop-by-hop headers and those Connection names", async () => {
  const server: ScriptedServer = serve(
    answering(
      () => server,
      () =>
        "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\n" +
        "X-Private: secret\r\nProxy-Connection: x\r\nUpgrade: h2c\r\nX-Kept: yes\r\n" +
        "Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
    ),
  );
  const pool = new UpstreamPool();
  try {
    const res = await pool.request(target(server.port), get());
    assert.deepEqual(res.headers, [
      ["X-Kept", "yes"],
      ["Set-Cookie", "a=1"],
      ["Set-Cookie", "b=2"],
      ["Content-Length", "0"],
    ]);
    assert.deepEqual(await readAll(res), new Uint8Array(0));
  } finally {
    pool.close();
    await server.close();
  }
});

Deno.test("UpstreamPool.request() skips 100 Continue and sends the body with Expect", async () => {
  const server: ScriptedServer = serve(async (peer) => {
    const req = await peer.readRequest({ headOnly: true });
    assert.ok(req);
    // Interim responses first, as a server honouring Expect: 100-continue does.
    await peer.write("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
    await peer.readBody(req);
    server.requests.push(req);
    await peer.write(`HTTP/1.1 201 Created\r\nContent-Length: ${req.bodyLength}\r\n\r\n`);
    await peer.write(req.body);
  });
  const pool = new UpstreamPool();
  try {
    const res = await pool.request(target(server.port), {
      method: "POST",
      path: "/up",
      headers: [["Expect", "100-continue"]],
      body: enc.encode("payload"),
    });
    assert.equal(res.status, 201);
    assert.equal(dec.decode(await readAll(res)), "payload");
    assert.equal(
      server.requests[0].head.headers.find(([n]) => n === "Expect")?.[1],
      "100-continue",
    );
  } finally {
    pool.close();
    await server.close();
  }
  assert.deepEqual(server.errors, []);
});

// ---------------------------------------------------------------------------------------------
// Request framing.

Deno.test("UpstreamPool.request() writes a byte-exact head with Host and framing", async () => {
  const server: ScriptedServer = serve(
    answering(() => server, () => "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
  );
  const pool = new UpstreamPool();
  try {
    const body = enc.encode("a=1&b=2");
    const res = await pool.request(target(server.port, { host: "api.test" }), {
      method: "POST",
      path: "/p?q=1",
      headers: [
        ["X-A", "b"],
        ["content-length", "999"],
        ["Transfer-Encoding", "chunked"],
        ["X-Latin", "caf\xe9"],
      ],
      body,
    });
    await readAll(res);
    const res2 = await pool.request(target(server.port), get("/x", [["Host", "given.test"]]));
    await readAll(res2);
    const [first, second] = server.requests;
    assert.equal(
      first.rawHead,
      `POST /p?q=1 HTTP/1.1\r\nHost: api.test:${server.port}\r\nX-A: b\r\nX-Latin: caf\ufffd\r\n` +
        "Content-Length: 7\r\n\r\n",
    );
    assert.equal(first.head.headers[2][1], "caf\xe9", "latin1 value sent as one byte");
    assert.equal(dec.decode(first.body), "a=1&b=2");
    // Head and body left in one write, so they arrive in one read.
    assert.equal(first.firstRead, first.head.headerBytes + body.length);
    assert.equal(second.rawHead, "GET /x HTTP/1.1\r\nHost: given.test\r\n\r\n");
  } finally {
    pool.close();
    await server.close();
  }
});

Deno.test("UpstreamPool.request() refuses header injection without connecting", async () => {
  const pool = new UpstreamPool();
  const cases: [string, UpstreamRequest][] = [
    ["CRLF in a value", get("/", [["X-A", "b\r\nX-Evil: 1"]])],
    ["LF in a value", get("/", [["X-A", "b\nc"]])],
    ["space in a name", get("/", [["X A", "b"]])],
    ["space in the path", get("/a b")],
    ["empty path", get("")],
    ["bad method", { ...get(), method: "GE T" }],
    ["non-latin1 value", get("/", [["X-A", "\u20ac"]])],
  ];
  for (const [name, req] of cases) {
    const e = await rejects(pool.request(target(1), req));
    assertUpstreamError(e, "protocol", /Cannot send request to 127\.0\.0\.1:1/);
    assert.ok(e instanceof UpstreamError, name);
  }
  assert.equal(pool.stats().created, 0);
  pool.close();
});

function streamOf(total: number, chunk: number, seed = 7): {
  stream: ReadableStream<Uint8Array>;
  hash: Promise<string>;
} {
  const h = createHash("sha256");
  let sent = 0;
  let x = seed;
  let done: (s: string) => void;
  const hash = new Promise<string>((r) => done = r);
  const stream = new ReadableStream<Uint8Array>({
    pull(c) {
      if (sent >= total) {
        done(h.digest("hex"));
        c.close();
        return;
      }
      const n = Math.min(chunk, total - sent);
      const b = new Uint8Array(n);
      for (let i = 0; i < n; i++) b[i] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
      h.update(b);
      sent += n;
      c.enqueue(b);
    },
  });
  return { stream, hash };
}

Deno.test("UpstreamPool.request() uploads a 10 MB stream with the right framing", async (t) => {
  const size = 10 * 1024 * 1024;
  for (const known of [true, false]) {
    await t.step(known ? "known length: Content-Length" : "unknown length: chunked", async () => {
      const server: ScriptedServer = serve(answering(() => server, (req) => {
        const body = `${req.bodyLength} ${req.bodyHash}`;
        return `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
      }));
      const pool = new UpstreamPool();
      try {
        const { stream, hash } = streamOf(size, 60_000);
        const res = await pool.request(target(server.port), {
          method: "PUT",
          path: "/big",
          headers: [],
          body: stream,
          bodyLength: known ? size : undefined,
        });
        assert.equal(dec.decode(await readAll(res)), `${size} ${await hash}`);
        const h = server.requests[0].head.headers;
        if (known) {
          assert.deepEqual(h, [["Host", `127.0.0.1:${server.port}`], [
            "Content-Length",
            String(size),
          ]]);
        } else {assert.deepEqual(h, [["Host", `127.0.0.1:${server.port}`], [
            "Transfer-Encoding",
            "chunked",
          ]]);}
        // The connection is reusable after a streamed upload.
        await readAll(await pool.request(target(server.port), get()));
        assert.deepEqual(pool.stats(), { idle: 1, active: 0, created: 1, reused: 1 });
      } finally {
        pool.close();
        await server.close();
      }
    });
  }
});

Deno.test("UpstreamPool.request() fails a stream body that breaks its bodyLength", async (t) => {
  for (
    const [name, actual, declared, pattern] of [
      ["longer", 10, 5, /more than bodyLength 5/],
      ["shorter", 3, 5, /ended after 3 of 5 bytes/],
    ] as const
  ) {
    await t.step(name, async () => {
      const server: ScriptedServer = serve(async (peer) => {
        await peer.readRequest({ headOnly: true });
        // Never answers: the client must give up on its own.
        await peer.conn.read(new Uint8Array(100));
      });
      const pool = new UpstreamPool();
      try {
        const e = await rejects(pool.request(target(server.port), {
          method: "POST",
          path: "/",
          headers: [],
          body: streamOf(actual, actual).stream,
          bodyLength: declared,
        }));
        assertUpstreamError(e, "protocol", pattern);
        assert.deepEqual(pool.stats(), { idle: 0, active: 0, created: 1, reused: 0 });
      } finally {
        pool.close();
        await server.close();
      }
    });
  }
});

Deno.test("UpstreamPool.request() sends small streamed bodies without Nagle stalls", async () => {
  const server: ScriptedServer = serve(
    answering(
      () => server,
      (req) =>
        `HTTP/1.1 200 OK\r\nContent-Length: ${req.bodyLength}\r\n\r\n${dec.decode(req.body)}`,
    ),
  );
  const pool = new UpstreamPool();
  try {
    // Each piece is a separate small write after the first; with Nagle on, every one of them
    // would wait ~40 ms for the server's delayed ACK.
    const rounds = 20;
    const t0 = performance.now();
    for (let i = 0; i < rounds; i++) {
      const pieces = ["a", "bc", "def"];
      const body = new ReadableStream<Uint8Array>({
        async pull(c) {
          await new Promise((r) => setTimeout(r, 1));
          const p = pieces.shift();
          if (p === undefined) c.close();
          else c.enqueue(enc.encode(p));
        },
      });
      const res = await pool.request(target(server.port), {
        method: "POST",
        path: "/",
        headers: [],
        body,
      });
      assert.equal(dec.decode(await readAll(res)), "abcdef");
    }
    const ms = performance.now() - t0;
    assert.ok(ms < rounds * 20, `${rounds} streamed uploads took ${ms.toFixed(0)} ms`);
    assert.deepEqual(pool.stats(), { idle: 1, active: 0, created: 1, reused: rounds - 1 });
  } finally {
    pool.close();
    await server.close();
  }
});

// ---------------------------------------------------------------------------------------------
// Connection reuse.

Deno.test("UpstreamPool.request() reuses one keep-alive connection for sequential requests", async () => {
  const server: ScriptedServer = serve(
    answering(() => server, (_r, n) => `HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n${n % 10}!`),
  );
  const pool = new UpstreamPool();
  try {
    for (let i = 0; i < 20; i++) {
      const res = await pool.request(target(server.port), get(`/${i}`));
      assert.equal(dec.decode(await readAll(res)), `${i % 10}!`);
    }
    assert.deepEqual(pool.stats(), { idle: 1, active: 0, created: 1, reused: 19 });
    assert.equal(server.accepted, 1);
  } finally {
    pool.close();
    await server.close();
  }
});

Deno.test("UpstreamPool.request() hands a body that came with the head over whole", async () => {
  // Head and body in one write (one read on our side); then a body that arrives later.
  const server: ScriptedServer = serve(async (peer) => {
    for (let n = 0;; n++) {
      const req = await peer.readRequest();
      if (req === null) return;
      server.requests.push(req);
      if (n === 0) await peer.write("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
      else {
        await peer.write("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        await new Promise((r) => setTimeout(r, 30));
        await peer.write("later");
      }
    }
  });
  const pool = new UpstreamPool();
  try {
    const first = await pool.request(target(server.port), get("/a"));
    assert.equal(dec.decode(first.whole), "hello");
    // Back in the pool already: nothing is left to read on this exchange.
    assert.deepEqual(pool.stats(), { idle: 1, active: 0, created: 1, reused: 0 });
    // A caller that reads `body` gets the same bytes.
    assert.equal(dec.decode(await readAll(first)), "hello");
    const second = await pool.request(target(server.port), get("/b"));
    assert.equal(second.whole, undefined);
    assert.equal(dec.decode(await readAll(second)), "later");
    assert.equal(server.accepted, 1);
  } finally {
    pool.close();
    await server.close();
  }
});

Deno.test("UpstreamPool keeps at most maxIdleTotal idle connections, closing the least recently used", async () => {
  const server: ScriptedServer = serve(
    ...Array.from(
      { length: 5 },
      () => answering(() => server, () => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ),
  );
  const pool = new UpstreamPool({ maxIdleTotal: 2 });
  const to = (host: string) => target(server.port, { host });
  try {
    for (const host of ["a.test", "b.test", "c.test"]) {
      await readAll(await pool.request(to(host), get()));
    }
    // a.test's connection was the least recently used when c.test's went idle.
    assert.deepEqual(pool.stats(), { idle: 2, active: 0, created: 3, reused: 0 });
    await readAll(await pool.request(to("b.test"), get()));
    await readAll(await pool.request(to("a.test"), get()));
    assert.deepEqual(pool.stats(), { idle: 2, active: 0, created: 4, reused: 1 });
  } finally {
    pool.close();
    await server.close();
  }
});

Deno.test("UpstreamPool.request() keeps targets with different trust apart", async () => {
  const server: ScriptedServer = serve(
    answering(() => server, () => "HTTP/1.1 204 No Content\r\n\r\n"),
  );
  const pool = new UpstreamPool();
  try {
    await pool.request(target(server.port), get());
    await until(() => pool.stats().idle === 1);
    await pool.request(target(server.port, { host: "other.test" }), get());
    await until(() => pool.stats().idle === 2);
    await pool.request(target(server.port, { caCerts: [] }), get());
    await until(() => pool.stats().idle === 3);
    await pool.request(target(server.port), get());
    await until(() => pool.stats().active === 0);
    assert.deepEqual(pool.stats(), { idle: 3, active: 0, created: 3, reused: 1 });
  } finally {
    pool.close();
    await server.close();
  }
});

Deno.test("UpstreamPool.request() honours Connection: close from the caller", async () => {
  const server: ScriptedServer = serve(
    answering(() => server, () => "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
  );
  const pool = new UpstreamPool();
  try {
    for (let i = 0; i < 2; i++) {
      await readAll(await pool.request(target(server.port), get("/", [["Connection", "close"]])));
    }
    assert.deepEqual(pool.stats(), { idle: 0, active: 0, created: 2, reused: 0 });
  } finally {
    pool.close();
    await server.close();
  }
});

Deno.test("UpstreamPool.request() retries an idempotent request once on a stale connection", async () => {
  // First connection: answers one request, then drops the second one unanswered, as a server
  // whose idle timeout fires just as the request arrives.
  const server: ScriptedServer = serve(
    async (peer) => {
      await peer.readRequest();
      await peer.write("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na");
      await peer.readRequest();
    },
    answering(() => server, () => "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
  );
  const pool = new UpstreamPool();
  try {
    assert.equal(dec.decode(await readAll(await pool.request(target(server.port), get()))), "a");
    const res = await pool.request(target(server.port), {
      method: "PUT",
      path: "/",
      headers: [],
      body: enc.encode("replayable"),
    });
    assert.equal(dec.decode(await readAll(res)), "b");
    assert.deepEqual(pool.stats(), { idle: 1, active: 0, created: 2, reused: 1 });
    assert.equal(dec.decode(server.requests[0].body), "replayable");
  } finally {
    pool.close();
    await server.close();
  }
});

Deno.test("UpstreamPool.request() does not retry a POST that reached a stale connection", async () => {
  const server: ScriptedServer = serve(
    async (peer) => {
      await peer.readRequest();
      await peer.write("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na");
      await peer.readRequest();
    },
    answering(() => server, () => "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
  );
  const pool = new UpstreamPool();
  try {
    await readAll(await pool.request(target(server.port), get()));
    const e = await rejects(pool.request(target(server.port), {
      method: "POST",
      path: "/",
      headers: [],
      body: enc.encode("once"),
    }));
    assertUpstreamError(e, "reset", /127\.0\.0\.1:\d+ closed the connection before the response/);
    assert.deepEqual(pool.stats(), { idle: 0, active: 0, created: 1, reused: 1 });
  } finally {
    pool.close();
    await server.close();
  }
});

Deno.test("UpstreamPool drops an idle connection as soon as the server closes it", async () => {
  const server: ScriptedServer = serve(async (peer) => {
    await peer.readRequest();
    await peer.write("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  });
  const pool = new UpstreamPool();
  try {
    await readAll(await pool.request(target(server.port), get()));
    await until(() => pool.stats().idle === 0);
    await readAll(await pool.request(target(server.port), get()));
    assert.deepEqual(pool.stats(), { idle: 0, active: 0, created: 2, reused: 0 });
  } finally {
    pool.close();
    await server.close();
  }
});

Deno.test("UpstreamPool closes idle connections after idleTimeoutMs", async () => {
  const server: ScriptedServer = serve(
    answering(() => server, () => "HTTP/1.1 204 No Content\r\n\r\n"),
  );
  const pool = new UpstreamPool({ idleTimeoutMs: 50 });
  try {
    await pool.request(target(server.port), get());
    await until(() => pool.stats().idle === 1);
    await until(() => pool.stats().idle === 0);
  } finally {
    pool.close();
    await server.close();
  }
});

// ---------------------------------------------------------------------------------------------
// Failures.

Deno.test("UpstreamPool.request() reports malformed responses as protocol errors", async (t) => {
  const cases: [string, string, RegExp][] = [
    ["not HTTP", "SSH-2.0-OpenSSH_9.2\r\n", /Invalid response head.*HTTP\//],
    ["bare LF", "HTTP/1.1 200 OK\nContent-Length: 0\n\n", /bare LF/],
    [
      "CL and TE",
      "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
      /both/,
    ],
    [
      "two lengths",
      "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
      /conflicting/,
    ],
    ["obs-fold", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", /obs-fold/],
  ];
  for (const [name, response, pattern] of cases) {
    await t.step(name, async () => {
      const server: ScriptedServer = serve(async (peer) => {
        await peer.readRequest();
        await peer.write(response);
        await peer.conn.read(new Uint8Array(10));
      });
      const pool = new UpstreamPool();
      try {
        const e = await rejects(pool.request(target(server.port), get()));
        assertUpstreamError(e, "protocol", pattern);
        assert.match((e as Error).message, new RegExp(`127\\.0\\.0\\.1:${server.port}`));
        assert.deepEqual(pool.stats(), { idle: 0, active: 0, created: 1, reused: 0 });
      } finally {
        pool.close();
        await server.close();
      }
    });
  }
});

Deno.test("UpstreamPool.request() errors the body stream on a broken body", async (t) => {
  const cases: [string, string, UpstreamError["kind"], RegExp][] = [
    [
      "bad chunk size",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
      "protocol",
      /Invalid chunked body.*hex/,
    ],
    [
      "truncated content-length",
      "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
      "reset",
      /closed the connection after 3 of 10 body bytes/,
    ],
    [
      "truncated chunked",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
      "reset",
      /in the middle of a chunked body/,
    ],
  ];
  for (const [name, response, kind, pattern] of cases) {
    await t.step(name, async () => {
      const server: ScriptedServer = serve(async (peer) => {
        await peer.readRequest();
        await peer.write(response);
        if (kind === "protocol") await peer.conn.read(new Uint8Array(10));
      });
      const pool = new UpstreamPool();
      try {
        const res = await pool.request(target(server.port), get());
        assert.equal(res.status, 200);
        const e = await rejects(readAll(res));
        assertUpstreamError(e, kind, pattern);
        assert.deepEqual(pool.stats(), { idle: 0, active: 0, created: 1, reused: 0 });
      } finally {
        pool.close();
        await server.close();
      }
    });
  }
});

Deno.test("UpstreamPool.request() times out a server that never sends a head", async () => {
  const server: ScriptedServer = serve(async (peer) => {
    await peer.readRequest();
    await peer.conn.read(new Uint8Array(10)); // hold the connection open until the client quits
  });
  const pool = new UpstreamPool({ headerTimeoutMs: 150 });
  try {
    const t0 = performance.now();
    const e = await rejects(pool.request(target(server.port), get()));
    assertUpstreamError(e, "timeout", /127\.0\.0\.1:\d+ sent no response head within 150 ms/);
    assert.ok(performance.now() - t0 < 2000);
    assert.deepEqual(pool.stats(), { idle: 0, active: 0, created: 1, reused: 0 });
  } finally {
    pool.close();
    await server.close();
  }
});

Deno.test("UpstreamPool.request() reports a refused connection as a connect error", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close(); // nothing listens there now
  const pool = new UpstreamPool();
  const e = await rejects(pool.request(target(port, { host: "gone.test" }), get()));
  assertUpstreamError(e, "connect", new RegExp(`Cannot connect to gone\\.test:${port} \\(127`));
  assert.deepEqual(pool.stats(), { idle: 0, active: 0, created: 0, reused: 0 });
  pool.close();
});

Deno.test("UpstreamPool.request() rejects with the abort reason and closes the connection", async () => {
  let closedByClient = false;
  const server: ScriptedServer = serve(async (peer) => {
    await peer.readRequest();
    closedByClient = (await peer.conn.read(new Uint8Array(10))) === null;
  });
  const pool = new UpstreamPool();
  try {
    const ac = new AbortController();
    const p = pool.request(target(server.port), get(), ac.signal);
    await until(() => server.accepted === 1);
    ac.abort(new Error("client went away"));
    const e = await rejects(p);
    assert.equal((e as Error).message, "client went away");
    assert.deepEqual(pool.stats(), { idle: 0, active: 0, created: 1, reused: 0 });
    await until(() => closedByClient);
    // An already-aborted signal fails before connecting.
    await rejects(pool.request(target(server.port), get(), ac.signal));
    assert.equal(pool.stats().created, 1);
  } finally {
    pool.close();
    await server.close();
  }
});

Deno.test("UpstreamPool.request() closes the connection when the body is cancelled", async () => {
  let closedByClient = false;
  const server: ScriptedServer = serve(async (peer) => {
    await peer.readRequest();
    await peer.write("HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
    await peer.write(new Uint8Array(1000));
    closedByClient = (await peer.conn.read(new Uint8Array(10))) === null;
  });
  const pool = new UpstreamPool();
  try {
    const res = await pool.request(target(server.port), get());
    const reader = res.body!.getReader();
    await reader.read();
    await reader.cancel();
    assert.deepEqual(pool.stats(), { idle: 0, active: 0, created: 1, reused: 0 });
    await until(() => closedByClient);
  } finally {
    pool.close();
    await server.close();
  }
});

// ---------------------------------------------------------------------------------------------
// Upgrade.

Deno.test("UpstreamPool.request() hands over the connection after 101 Switching Protocols", async () => {
  const server: ScriptedServer = serve(async (peer) => {
    await peer.readRequest();
    await peer.write(
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Accept: x\r\n\r\nearly",
    );
    const b = new Uint8Array(100);
    const n = await peer.conn.read(b);
    await peer.write(cat(enc.encode("echo:"), b.subarray(0, n ?? 0)));
  });
  const pool = new UpstreamPool();
  try {
    const res = await pool.request(
      target(server.port),
      get("/ws", [["Connection", "Upgrade"], ["Upgrade", "websocket"]]),
    );
    assert.equal(res.status, 101);
    assert.equal(res.body, null);
    assert.deepEqual(res.headers, [
      ["Upgrade", "websocket"],
      ["Connection", "Upgrade"],
      ["Sec-WebSocket-Accept", "x"],
    ]);
    assert.ok(res.upgrade);
    let got = dec.decode(res.upgrade.head);
    const conn = res.upgrade.conn;
    await conn.write(enc.encode("ping"));
    const b = new Uint8Array(100);
    while (!got.endsWith("echo:ping")) {
      const n = await conn.read(b);
      assert.ok(n !== null, `connection ended early after ${JSON.stringify(got)}`);
      got += dec.decode(b.subarray(0, n));
    }
    assert.equal(got, "earlyecho:ping");
    conn.close();
    assert.deepEqual(pool.stats(), { idle: 0, active: 0, created: 1, reused: 0 });
  } finally {
    pool.close();
    await server.close();
  }
});

// ---------------------------------------------------------------------------------------------
// TLS.

const makePki = (): Promise<OpensslPki> => opensslPki("upstream.test");

Deno.test("UpstreamPool.request() speaks TLS with verification on, off, and failing", async (t) => {
  const pki = await makePki();
  const gz = new Uint8Array(gzipSync(enc.encode("tls body ".repeat(500))));
  const listener = Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert: pki.cert, key: pki.key });
  const server: ScriptedServer = new ScriptedServer(listener, [
    answering(() => server, () =>
      cat(
        latin1(`HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: ${gz.length}\r\n\r\n`),
        gz,
      )),
  ]);
  const tlsTarget = (extra: Partial<UpstreamTarget>): UpstreamTarget =>
    target(server.port, { host: "upstream.test", tls: true, ...extra });
  const pool = new UpstreamPool();
  try {
    await t.step("verified with the test CA, reused", async () => {
      for (let i = 0; i < 3; i++) {
        const res = await pool.request(tlsTarget({ caCerts: [pki.ca] }), get());
        assert.deepEqual(await readAll(res), gz);
        assert.deepEqual(res.headers[0], ["Content-Encoding", "gzip"]);
      }
      assert.deepEqual(pool.stats(), { idle: 1, active: 0, created: 1, reused: 2 });
    });
    await t.step("unknown issuer without the CA", async () => {
      const e = await rejects(pool.request(tlsTarget({}), get()));
      assertUpstreamError(
        e,
        "tls",
        new RegExp(`TLS verification failed for upstream\\.test:${server.port}: .*UnknownIssuer`),
      );
    });
    await t.step("wrong name with the CA", async () => {
      const e = await rejects(
        pool.request(tlsTarget({ host: "other.test", caCerts: [pki.ca] }), get()),
      );
      assertUpstreamError(
        e,
        "tls",
        /TLS verification failed for other\.test:\d+: .*not valid for name/,
      );
    });
    await t.step("verify: false accepts the unknown issuer, reused", async () => {
      for (let i = 0; i < 3; i++) {
        const res = await pool.request(tlsTarget({ verify: false }), get());
        assert.deepEqual(await readAll(res), gz);
      }
      assert.deepEqual(pool.stats(), { idle: 2, active: 0, created: 2, reused: 4 });
    });
    await t.step("verify: false uploads a streamed body", async () => {
      const { stream, hash } = streamOf(1_000_000, 50_000);
      const res = await pool.request(tlsTarget({ verify: false }), {
        method: "POST",
        path: "/",
        headers: [],
        body: stream,
      });
      assert.deepEqual(await readAll(res), gz);
      const seen = server.requests.at(-1)!;
      assert.equal(seen.bodyLength, 1_000_000);
      assert.equal(seen.bodyHash, await hash);
    });
    await t.step("plain HTTP to a TLS port is a protocol error or a reset", async () => {
      const e = await rejects(pool.request(target(server.port), get()));
      assert.ok(
        e instanceof UpstreamError && (e.kind === "reset" || e.kind === "protocol"),
        String(e),
      );
    });
  } finally {
    pool.close();
    await server.close();
    await Deno.remove(pki.dir, { recursive: true });
  }
  assert.equal(pool.stats().idle, 0);
});

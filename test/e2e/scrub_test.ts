/**
 * Response scrubbing end to end: curl and a raw WebSocket client through a real `sluice serve`
 * to a TLS upstream that knows the real values and echoes them back every way it can: in any
 * status and content type, compressed, base64'd at any offset, percent-encoded, in headers, on
 * a request that carried no placeholder, another credential's value, over a WebSocket. Every
 * byte the client receives (head and body) is grepped for every form of every real value; the
 * bodies must otherwise arrive intact.
 *
 * The leak oracle is written here, independently of lib/credentials/scrub.ts: test/_leak_oracle.ts's `secretForms`
 * (raw, percent-encoded, base64 cores at the three alignments) plus encodings spelled out.
 */
import * as zlib from "node:zlib";
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { ephemeralCa } from "../../lib/tls/ca.ts";
import { secretForms } from "../_leak_oracle.ts";
import { curl, placeholders, startSluice, startTlsUpstream } from "./_harness.ts";
import { websocketThroughProxy } from "./_ws_client.ts";

const API_KEY = "sk-REAL-api-key-7c1e0b9f42d8a6"; // scoped to api.test
const OTHER_KEY = "ghp_REAL/other+key=93kd02jf81"; // scoped to other.test only
const INJ_KEY = "inj-REAL-injected-5d2c81f0aa"; // injected as a header toward api.test

const enc = new TextEncoder();
const dec = new TextDecoder();
const latin1 = (b: Uint8Array) => {
  let s = "";
  for (let i = 0; i < b.length; i += 8192) s += String.fromCharCode(...b.subarray(i, i + 8192));
  return s;
};
const b64 = (s: string) => btoa(latin1(enc.encode(s)));
const b64url = (s: string) => b64(s).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
/** The placeholder cut or padded with `*` to the value's length (ASCII here). */
const fit = (p: string, s: string) => p.slice(0, s.length).padEnd(s.length, "*");
const lowerHex = (s: string) => s.replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());

/** Every form of a value the client must never see, as latin1 text. */
function oracle(secret: string): string[] {
  const forms = new Set<string>(secretForms([secret]));
  for (
    const f of [
      secret,
      encodeURIComponent(secret),
      lowerHex(encodeURIComponent(secret)),
      new URLSearchParams({ k: secret }).toString().slice(2),
      JSON.stringify(secret).slice(1, -1).replaceAll("/", "\\/"),
      b64(secret),
      b64url(secret),
    ]
  ) forms.add(f);
  return [...forms];
}
const FORBIDDEN = [...oracle(API_KEY), ...oracle(OTHER_KEY), ...oracle(INJ_KEY)];

function assertClean(bytes: Uint8Array | string, what: string): void {
  const text = typeof bytes === "string" ? bytes : latin1(bytes);
  for (const f of FORBIDDEN) {
    assert(!text.includes(f), `${what}: the client received a real value (as ${f})`);
  }
}

/** A pseudo-random, incompressible blob, so coded bodies are large on the wire too. */
function noise(n: number, seed = 7): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}
const BLOB = b64(latin1(noise(150_000)));

/** The JSON echo body used compressed: every text form of both values. */
function echoJson(key: string, other: string): string {
  return JSON.stringify({
    raw: key,
    pct: encodeURIComponent(other),
    b64: b64(key),
    b64url: b64url(other),
    basic: `Basic ${b64(`user:${key}`)}`,
    nested: b64(`prefix ${other} suffix`),
  });
}

const zstd = (b: Uint8Array) =>
  (zlib as unknown as { zstdCompressSync(b: Uint8Array): Uint8Array }).zstdCompressSync(b);
const CODERS: Record<string, (b: Uint8Array) => Uint8Array> = {
  gzip: (b) => zlib.gzipSync(b),
  "x-gzip": (b) => zlib.gzipSync(b),
  deflate: (b) => zlib.deflateSync(b),
  br: (b) => zlib.brotliCompressSync(b),
  zstd,
};

/** What the upstream received on WebSocket sessions. */
const wsReceived: string[] = [];

/** The echoing upstream: it holds the real values, as a scoped host does. */
function upstreamHandler(req: Request): Response | Promise<Response> {
  const url = new URL(req.url);
  const p = url.pathname;
  const q = url.searchParams;
  if (p === "/echo") {
    const headers: Record<string, string> = {};
    req.headers.forEach((v, k) => (headers[k] = v));
    return Response.json({ headers, query: url.search });
  }
  if (p === "/octet500") {
    const body = new Uint8Array([...noise(300, 1), ...enc.encode(API_KEY), ...noise(300, 2)]);
    return new Response(body, {
      status: 500,
      headers: { "content-type": "application/octet-stream" },
    });
  }
  if (p === "/no-type") {
    return new Response(enc.encode(`no type ${OTHER_KEY} ${b64(OTHER_KEY)}`), {
      headers: { "x-note": "no content-type" },
    });
  }
  if (p === "/coded") {
    const coding = q.get("enc")!;
    const big = q.get("size") === "big";
    const text = big
      ? `{"blob":"${BLOB}","echo":${echoJson(API_KEY, OTHER_KEY)},"tail":"${BLOB.slice(0, 999)}"}`
      : echoJson(API_KEY, OTHER_KEY);
    let data: Uint8Array = enc.encode(text);
    for (const c of coding.split(",").map((s) => s.trim())) data = CODERS[c](data);
    return new Response(data as Uint8Array<ArrayBuffer>, {
      headers: { "content-type": "application/json", "content-encoding": coding, etag: '"v1"' },
    });
  }
  if (p === "/corrupt") {
    // A large gzip body cut short (no length declared): streamed, it fails mid-way.
    const gz = zlib.gzipSync(enc.encode(`${BLOB}${API_KEY}${BLOB}`));
    const cut = gz.subarray(0, gz.length - 100);
    return new Response(ReadableStream.from([new Uint8Array(cut)]), {
      headers: { "content-encoding": "gzip" },
    });
  }
  if (p === "/undecodable") {
    return new Response(enc.encode(`opaque ${API_KEY}`), {
      headers: { "content-encoding": q.get("enc")! },
    });
  }
  if (p === "/json-b64") {
    // Written by hand: `\/` escaping as PHP's json_encode writes it.
    const text = `{"b64":"${b64(API_KEY)}","b64url":"${b64url(API_KEY)}",` +
      `"pct":"${encodeURIComponent(OTHER_KEY)}",` +
      `"escaped":"${JSON.stringify(OTHER_KEY).slice(1, -1).replaceAll("/", "\\/")}",` +
      `"basic":"Basic ${b64(`me:${OTHER_KEY}`)}"}`;
    return new Response(text, { headers: { "content-type": "application/json" } });
  }
  if (p === "/headers") {
    return new Response("see the headers\n", {
      headers: {
        "x-echo-authorization": `Basic ${b64(`user:${API_KEY}`)}`,
        "set-cookie": `token=${encodeURIComponent(OTHER_KEY)}; Path=/`,
        "www-authenticate": `Bearer error_description="${API_KEY}"`,
        [`x-${API_KEY.toLowerCase()}`]: "in the name",
      },
    });
  }
  if (p === "/later") {
    return new Response(`your key is ${API_KEY}, and the other one is ${OTHER_KEY}\n`, {
      headers: { "content-type": "text/plain" },
    });
  }
  if (p === "/big") {
    // Over 64 KiB with a declared length: streamed, Content-Length kept.
    const body = enc.encode(`${BLOB.slice(0, 70_000)}|${API_KEY}|${BLOB.slice(0, 1000)}`);
    return new Response(body, { headers: { "content-length": String(body.length) } });
  }
  if (p === "/chunked") {
    // No length, the value split across chunks written apart.
    const parts = ["start ", API_KEY.slice(0, 7), API_KEY.slice(7), ` ${b64(OTHER_KEY)} end`];
    return new Response(
      new ReadableStream({
        async pull(c) {
          const next = parts.shift();
          if (next === undefined) return c.close();
          await new Promise((r) => setTimeout(r, 20));
          c.enqueue(enc.encode(next));
        },
      }),
      { headers: { "content-type": "text/event-stream" } },
    );
  }
  if (p === "/ws-refuse") {
    return new Response(`not today ${API_KEY}`, {
      status: 403,
      headers: { "x-echo": OTHER_KEY, "content-type": "text/plain" },
    });
  }
  if (p === "/ws") {
    const { socket, response } = Deno.upgradeWebSocket(req);
    response.headers.append("set-cookie", `s=${API_KEY}`);
    socket.onopen = () => {
      socket.send(`text ${API_KEY} and ${b64(OTHER_KEY)}`);
      socket.send(new Uint8Array([0, 1, ...enc.encode(OTHER_KEY), 2]));
    };
    socket.onmessage = (e) => {
      const m = typeof e.data === "string" ? e.data : latin1(new Uint8Array(e.data));
      wsReceived.push(m);
      socket.send(`echo:${m}`);
    };
    return response;
  }
  return new Response("not found\n", { status: 404 });
}

Deno.test("response scrubbing: no real value reaches the workload, in any form", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-scrub-" });
  const ca = await ephemeralCa();
  await Deno.writeTextFile(`${dir}/upstream-ca.crt`, ca.certPem);
  const up = startTlsUpstream(ca, 0, "127.0.0.1", upstreamHandler);
  const port = up.port;
  const policy = `${dir}/policy.yaml`;
  await Deno.writeTextFile(
    policy,
    `version: 1
network:
  allow: [api.test, other.test, "127.0.0.1:${port}"]
credentials:
  API_KEY:
    from: env:SLUICE_SCRUB_API_KEY
    hosts: [api.test]
    in: [header, query, body]
  OTHER_KEY:
    from: env:SLUICE_SCRUB_OTHER_KEY
    hosts: [other.test]
  INJ_KEY:
    from: env:SLUICE_SCRUB_INJ_KEY
    hosts: [api.test]
    inject: { header: X-Injected, value: "Token \${secret}" }
tls:
  upstream: { ca: [${dir}/upstream-ca.crt] }
`,
  );
  const ph = await placeholders(policy, `${dir}/state`);
  const sluice = await startSluice(
    policy,
    dir,
    ["--resolve", "api.test=127.0.0.1", "--resolve", "other.test=127.0.0.1"],
    undefined,
    {
      SLUICE_SCRUB_API_KEY: API_KEY,
      SLUICE_SCRUB_OTHER_KEY: OTHER_KEY,
      SLUICE_SCRUB_INJ_KEY: INJ_KEY,
    },
  );
  const api = `https://api.test:${port}`;
  const via = ["-x", `http://127.0.0.1:${sluice.proxyPort}`, "--cacert", sluice.caPath];

  /** GET through sluice: status, the raw head and the raw body exactly as the client got them. */
  const get = async (url: string, args: string[] = []) => {
    const r = await curl([
      ...via,
      ...args,
      "-D",
      `${dir}/head`,
      "-o",
      `${dir}/body`,
      "-w",
      "%{http_code}",
      url,
    ]);
    assertEquals(r.code, 0, r.stderr);
    const head = await Deno.readTextFile(`${dir}/head`);
    const body = await Deno.readFile(`${dir}/body`);
    assertClean(head, `${url} head`);
    assertClean(body, `${url} body`);
    return { status: Number(r.text), head, body, text: dec.decode(body) };
  };
  const header = (head: string, name: string) =>
    new RegExp(`^${name}: *(.*?)\\r?$`, "im").exec(head)?.[1];

  try {
    await t.step("the oracle would catch a leak (sanity)", () => {
      let caught = false;
      try {
        assertClean(`x ${b64(`user:${API_KEY}`)} y`, "sanity");
      } catch {
        caught = true;
      }
      assert(caught, "the oracle misses a Basic-encoded value");
    });

    await t.step("an echo of the substituted Bearer and Basic headers", async () => {
      const r = await get(`${api}/echo?k=${ph.API_KEY}`, [
        "-H",
        `Authorization: Bearer ${ph.API_KEY}`,
        "-H",
        `X-Basic: Basic ${b64(`user:${ph.API_KEY}`)}`,
      ]);
      const echo = JSON.parse(r.text);
      assertEquals(echo.headers.authorization, `Bearer ${ph.API_KEY}`);
      assertEquals(echo.headers["x-basic"], `Basic ${b64(`user:${ph.API_KEY}`)}`);
      assertEquals(echo.query, `?k=${ph.API_KEY}`);
    });

    await t.step(
      "an echo of an injected header: the workload never sent it, never reads it",
      async () => {
        const r = await get(`${api}/echo`);
        const echo = JSON.parse(r.text);
        // The upstream got the real value (it echoed it); the workload reads the placeholder.
        assertEquals(echo.headers["x-injected"], `Token ${ph.INJ_KEY}`);
      },
    );

    await t.step("a 500 with an application/octet-stream body", async () => {
      const r = await get(`${api}/octet500`);
      assertEquals(r.status, 500);
      const want = new Uint8Array([...noise(300, 1), ...enc.encode(ph.API_KEY), ...noise(300, 2)]);
      assertEquals(r.body, want);
    });

    await t.step("a body with no content type", async () => {
      const r = await get(`${api}/no-type`);
      assertEquals(r.text, `no type ${ph.OTHER_KEY} ${b64(ph.OTHER_KEY)}`);
    });

    for (const coding of ["gzip", "x-gzip", "deflate", "br", "zstd", "deflate, gzip"]) {
      for (const size of ["small", "big"]) {
        await t.step(`a ${coding} body (${size}) arrives decoded and scrubbed`, async () => {
          const r = await get(`${api}/coded?enc=${encodeURIComponent(coding)}&size=${size}`);
          assertEquals(r.status, 200);
          assertEquals(header(r.head, "content-encoding"), undefined);
          assertEquals(header(r.head, "etag"), 'W/"v1"');
          const json = JSON.parse(r.text);
          const echo = size === "big" ? json.echo : json;
          if (size === "big") {
            assertEquals(json.blob, BLOB);
            assertEquals(json.tail, BLOB.slice(0, 999));
          }
          assertEquals(echo.raw, ph.API_KEY);
          assertEquals(echo.pct, encodeURIComponent(ph.OTHER_KEY));
          if (size === "small") {
            // Whole: base64 is decoded, scrubbed and re-encoded.
            assertEquals(echo.b64, b64(ph.API_KEY));
            assertEquals(echo.b64url, b64url(ph.OTHER_KEY));
            assertEquals(echo.basic, `Basic ${b64(`user:${ph.API_KEY}`)}`);
            assertEquals(echo.nested, b64(`prefix ${ph.OTHER_KEY} suffix`));
          } else {
            // Streamed: patched in place, the placeholder fitted to the value's length.
            assertEquals(atob(echo.b64), fit(ph.API_KEY, API_KEY));
            assertEquals(atob(echo.basic.slice(6)), `user:${fit(ph.API_KEY, API_KEY)}`);
            assertEquals(atob(echo.nested), `prefix ${fit(ph.OTHER_KEY, OTHER_KEY)} suffix`);
          }
        });
      }
    }

    for (const coding of ["compress", "x-custom", "gzip, x-custom", "x-custom, gzip"]) {
      await t.step(`a body coded with ${coding} is refused with 502`, async () => {
        const r = await get(`${api}/undecodable?enc=${encodeURIComponent(coding)}`);
        assertEquals(r.status, 502);
        assertMatch(header(r.head, "x-sluice-decision")!, /code=upstream-encoding/);
        assertMatch(r.text, /cannot decode to check it for secrets/);
      });
    }

    await t.step("a streamed gzip body that does not decode is cut off, and audited", async () => {
      const r = await curl([...via, "-o", `${dir}/body`, `${api}/corrupt`]);
      assert(r.code !== 0, "curl saw a complete response");
      const body = await Deno.readFile(`${dir}/body`).catch(() => new Uint8Array());
      assertClean(body, "corrupt gzip");
      assert(body.length < 2 * BLOB.length + API_KEY.length, "more than the body came");
      assert(dec.decode(body.subarray(0, 100)) === BLOB.slice(0, Math.min(100, body.length)));
      let record: Record<string, unknown> | undefined;
      for (let i = 0; i < 50 && !record; i++) {
        record = (await sluice.audit()).find((x) => x.path === "/corrupt");
        if (!record) await new Promise((r) => setTimeout(r, 100));
      }
      assertMatch(String(record?.reason), /gzip body does not decode.*cut off/);
    });

    await t.step("base64, base64url, percent and JSON-escaped values in a JSON body", async () => {
      const r = await get(`${api}/json-b64`);
      const json = JSON.parse(r.text);
      // base64url text with no `-`/`_` and a length that needs no padding cannot be told from
      // base64: the placeholder's encoding may come padded. It decodes the same either way.
      const { b64url: url, ...rest } = json;
      assertEquals(atob(url.replaceAll("-", "+").replaceAll("_", "/")), ph.API_KEY);
      assertEquals(rest, {
        b64: b64(ph.API_KEY),
        pct: encodeURIComponent(ph.OTHER_KEY),
        escaped: ph.OTHER_KEY,
        basic: `Basic ${b64(`me:${ph.OTHER_KEY}`)}`,
      });
    });

    await t.step("values in response header names and values", async () => {
      const r = await get(`${api}/headers`);
      assertEquals(header(r.head, "x-echo-authorization"), `Basic ${b64(`user:${ph.API_KEY}`)}`);
      assertEquals(
        header(r.head, "set-cookie"),
        `token=${encodeURIComponent(ph.OTHER_KEY)}; Path=/`,
      );
      assertEquals(header(r.head, "www-authenticate"), `Bearer error_description="${ph.API_KEY}"`);
      assertEquals(r.text, "see the headers\n");
    });

    await t.step("a value returned on a request that carried no placeholder", async () => {
      const r = await get(`${api}/later`);
      assertEquals(r.text, `your key is ${ph.API_KEY}, and the other one is ${ph.OTHER_KEY}\n`);
    });

    await t.step("another credential's value, from a host it is not scoped to", async () => {
      const r = await get(`https://other.test:${port}/later`);
      assertEquals(r.text, `your key is ${ph.API_KEY}, and the other one is ${ph.OTHER_KEY}\n`);
    });

    await t.step("a streamed body over 64 KiB keeps its length", async () => {
      const r = await get(`${api}/big`);
      const want = `${BLOB.slice(0, 70_000)}|${ph.API_KEY.slice(0, API_KEY.length)}|${
        BLOB.slice(0, 1000)
      }`;
      assertEquals(header(r.head, "content-length"), String(want.length));
      assertEquals(r.text, want);
    });

    await t.step("a chunked stream with the value split across chunks", async () => {
      const r = await get(`${api}/chunked`);
      // Streamed: raw values become the placeholder; base64 is patched in place.
      const m = /^start (\S+) (\S+) end$/.exec(r.text)!;
      assertEquals(m[1], ph.API_KEY);
      assertEquals(atob(m[2]), fit(ph.OTHER_KEY, OTHER_KEY));
    });

    await t.step("a non-101 answer to a WebSocket upgrade is scrubbed", async () => {
      const r = await get(`${api}/ws-refuse`, [
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "-H",
        "Sec-WebSocket-Version: 13",
      ]);
      assertEquals(r.status, 403);
      assertEquals(header(r.head, "x-echo"), ph.OTHER_KEY);
      assertEquals(r.text, `not today ${ph.API_KEY}`);
    });

    await t.step("WebSocket: the 101, text and binary messages, and client messages", async () => {
      const ws = await websocketThroughProxy(
        sluice.proxyPort,
        `api.test:${port}`,
        await Deno.readTextFile(sluice.caPath),
      );
      const got: Uint8Array[] = [enc.encode(ws.head)];
      try {
        assertMatch(ws.head, /^HTTP\/1\.1 101 /);
        assertEquals(header(ws.head, "set-cookie"), `s=${ph.API_KEY}`);
        const text = await ws.read();
        const binary = await ws.read();
        got.push(text.payload, binary.payload);
        assertEquals(text.opcode, 0x1);
        assertEquals(dec.decode(text.payload), `text ${ph.API_KEY} and ${b64(ph.OTHER_KEY)}`);
        assertEquals(binary.opcode, 0x2);
        assertEquals(binary.payload, new Uint8Array([0, 1, ...enc.encode(ph.OTHER_KEY), 2]));
        // A scoped placeholder in a client message is substituted (in: body); the upstream's
        // echo of the real value comes back as the placeholder.
        await ws.send(0x1, enc.encode(`send ${ph.API_KEY}`));
        const echo = await ws.read();
        got.push(echo.payload);
        assertEquals(dec.decode(echo.payload), `echo:send ${ph.API_KEY}`);
        assertEquals(wsReceived.at(-1), `send ${API_KEY}`);
        // A placeholder of a credential not scoped to api.test ends the session with 1008.
        const before = wsReceived.length;
        await ws.send(0x1, enc.encode(`exfiltrate ${ph.OTHER_KEY}`));
        const closed = await ws.read();
        assertEquals([closed.opcode, (closed.payload[0] << 8) | closed.payload[1]], [0x8, 1008]);
        assertMatch(dec.decode(closed.payload.subarray(2)), /credential OTHER_KEY/);
        assertEquals(wsReceived.length, before, "the violating message reached the upstream");
      } finally {
        ws.close();
      }
      for (const b of got) assertClean(b, "WebSocket");
      let record: Record<string, unknown> | undefined;
      for (let i = 0; i < 50 && !record; i++) {
        record = (await sluice.audit()).find((r) => r.path === "/ws" && r.violation);
        if (!record) await new Promise((r) => setTimeout(r, 100));
      }
      assert(record, "no audit record for the violation");
      assertEquals(record.violation, "OTHER_KEY");
      assertEquals(record.code, "credential-violation");
      // INJ_KEY was injected into the handshake, as into every request to api.test.
      assertEquals(record.credentials, ["INJ_KEY", "API_KEY"]);
    });
  } finally {
    await sluice.stop();
    await up.close();
    const written = [sluice.stderr(), await Deno.readTextFile(sluice.auditPath).catch(() => "")];
    await Deno.remove(dir, { recursive: true });
    for (const text of written) {
      assert(!text.includes(API_KEY) && !text.includes(OTHER_KEY), "a value leaked into logs");
    }
  }
});

Deno.test("response scrubbing: a policy without credentials passes coded bodies untouched", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-scrub-none-" });
  const ca = await ephemeralCa();
  await Deno.writeTextFile(`${dir}/upstream-ca.crt`, ca.certPem);
  const up = startTlsUpstream(ca, 0, "127.0.0.1", upstreamHandler);
  const port = up.port;
  await Deno.writeTextFile(
    `${dir}/policy.yaml`,
    `version: 1\nnetwork:\n  allow: [api.test, "127.0.0.1:${port}"]\ntls:\n  upstream: { ca: [${dir}/upstream-ca.crt] }\n`,
  );
  const sluice = await startSluice(`${dir}/policy.yaml`, dir, ["--resolve", "api.test=127.0.0.1"]);
  try {
    const via = ["-x", `http://127.0.0.1:${sluice.proxyPort}`, "--cacert", sluice.caPath];
    for (const coding of ["zstd", "x-custom"]) {
      const url = coding === "zstd"
        ? `https://api.test:${port}/coded?enc=zstd&size=small`
        : `https://api.test:${port}/undecodable?enc=x-custom`;
      const r = await curl([...via, "-D", `${dir}/head`, "-o", `${dir}/body`, url]);
      assertEquals(r.code, 0, r.stderr);
      const head = await Deno.readTextFile(`${dir}/head`);
      assertMatch(head, new RegExp(`content-encoding: ${coding}`, "i"));
      const body = await Deno.readFile(`${dir}/body`);
      const want = coding === "zstd"
        ? zstd(enc.encode(echoJson(API_KEY, OTHER_KEY)))
        : enc.encode(`opaque ${API_KEY}`);
      assertEquals(body, new Uint8Array(want), "bytes changed without credentials to scrub");
    }
  } finally {
    await sluice.stop();
    await up.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * gRPC and HTTP/2 end to end through `sluice serve`'s explicit proxy: a real @grpc/grpc-js
 * client (its own process, `grpc_proxy` pointing at sluice) and server (TLS, HTTP/2 only).
 * Unary, server-streaming (timed), client-streaming and bidi calls; a credential placeholder in
 * `authorization` metadata reaches the server as the real value and nowhere else; a denied
 * method gets PERMISSION_DENIED with the rule; trailers arrive; curl --http2 to an h2-only
 * upstream; a 100 MB body each way over h2.
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import http2 from "node:http2";
import { createHash } from "node:crypto";
import { type CertificateAuthority, mintLeaf } from "../../lib/tls/ca.ts";
import { curl, pattern, placeholders, sha256, startSluice, testCas } from "./_harness.ts";
import { grpcCall, startGrpcServer } from "./_grpc.ts";

const SECRET = "grpc-real-token-5d1e93ab07";

Deno.test("gRPC through sluice serve's explicit proxy (HTTP/2 end to end)", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-grpc-" });
  const cas = await testCas(dir);
  const server = await startGrpcServer(cas.trusted, "grpc.test");
  const policy = `${dir}/policy.yaml`;
  await Deno.writeTextFile(
    policy,
    `version: 1
network:
  allow: [grpc.test, other.test, "127.0.0.1:${server.port}"]
  deny: ["POST grpc.test/acme.Echo/Deny"]
credentials:
  GRPC_TOKEN:
    from: env:SLUICE_TEST_GRPC_TOKEN
    hosts: [grpc.test]
tls:
  upstream: { ca: [${cas.trustedPath}] }
`,
  );
  const ph = await placeholders(policy, `${dir}/state`);
  const sluice = await startSluice(
    policy,
    dir,
    [
      "--resolve",
      "grpc.test=127.0.0.1",
      "--resolve",
      "other.test=127.0.0.1",
    ],
    undefined,
    {
      SLUICE_TEST_GRPC_TOKEN: SECRET,
    },
  );
  const env = { grpc_proxy: `http://127.0.0.1:${sluice.proxyPort}`, no_grpc_proxy: "" };
  const target = `grpc.test:${server.port}`;
  const call = (name: string, arg?: string, auth?: string) =>
    grpcCall(env, target, sluice.caPath, name, arg, auth);
  const outputs: string[] = [];
  try {
    await t.step(
      "unary: the placeholder in metadata reaches the server as the real value",
      async () => {
        const r = await call("unary", "hi", `Bearer ${ph.GRPC_TOKEN}`);
        outputs.push(JSON.stringify(r));
        assert(r.ok, JSON.stringify(r));
        // The server echoed the real value; the workload gets it masked in place (gRPC and
        // protobuf lengths kept), never the real value.
        assertEquals(r.messages.length, 1);
        const echoed = r.messages[0].text;
        assert(!echoed.includes(SECRET), echoed);
        assertEquals(echoed.length, `auth=Bearer ${SECRET} body=hi`.length);
        assertMatch(echoed, /^auth=Bearer sluice-grpc-token-\S+ body=hi$/);
        assertEquals(server.seen.at(-1), { method: "Unary", authorization: `Bearer ${SECRET}` });
        // The server's trailer (and gRPC's status) came through the proxy.
        assertEquals(r.trailers["x-echo-trailer"], "done");
      },
    );

    await t.step("server streaming: messages arrive as they are sent, not at the end", async () => {
      const r = await call("tick", "4,400");
      outputs.push(JSON.stringify(r));
      assert(r.ok, JSON.stringify(r));
      assertEquals(r.messages.map((m) => m.text), ["t0", "t1", "t2", "t3"]);
      // One message every 400 ms: the gaps between arrivals show it (buffering would bunch them).
      const gaps = r.messages.slice(1).map((m, i) => m.at - r.messages[i].at);
      for (const gap of gaps) assert(gap >= 250, `messages bunched: ${JSON.stringify(r.messages)}`);
    });

    await t.step("client streaming: 200 messages of 1 KiB add up", async () => {
      const r = await call("sum", "200,1024");
      assert(r.ok, JSON.stringify(r));
      assertEquals(r.messages.map((m) => m.text), [String(200 * 1024)]);
    });

    await t.step("bidi: each message is answered before the next is sent", async () => {
      const r = await call("chat", "a,b,c");
      assert(r.ok, JSON.stringify(r));
      assertEquals(r.messages.map((m) => m.text), ["echo:a", "echo:b", "echo:c"]);
    });

    await t.step("a client's cancel reaches the server (RST_STREAM through sluice)", async () => {
      const r = await call("tickcancel", "50,100");
      assertEquals(r.code, 1, JSON.stringify(r)); // CANCELLED, by the client itself
      assertEquals(r.messages.map((m) => m.text), ["t0"]);
      const end = Date.now() + 5000;
      while (!server.seen.some((c) => c.method === "Tick cancelled") && Date.now() < end) {
        await new Promise((res) => setTimeout(res, 50));
      }
      assert(
        server.seen.some((c) => c.method === "Tick cancelled"),
        "the server never learned of the cancel",
      );
    });

    await t.step(
      "a denied method gets PERMISSION_DENIED naming the rule, and is audited",
      async () => {
        const before = server.seen.length;
        const r = await call("deny", "x");
        assertEquals(r.code, 7, JSON.stringify(r));
        assertMatch(r.details, /sluice: .*acme\.Echo\/Deny/);
        assertEquals(server.seen.length, before, "the denied call reached the server");
        const audit = await sluice.audit();
        const line = audit.find((a) => a.rpc === "acme.Echo/Deny");
        assert(line, JSON.stringify(audit.slice(-3)));
        assertEquals(line.verdict, "deny");
        assertEquals(line.code, "deny-rule");
      },
    );

    await t.step("a placeholder headed for another host is refused as a gRPC error", async () => {
      // The same call to a name the credential is not scoped to (resolved by sluice to the
      // same server): PERMISSION_DENIED before any connection, the server never sees it.
      const before = server.seen.length;
      const r = await grpcCall(
        env,
        `other.test:${server.port}`,
        sluice.caPath,
        "unary",
        "hi",
        `Bearer ${ph.GRPC_TOKEN}`,
      );
      assertEquals(r.code, 7, JSON.stringify(r));
      assertEquals(server.seen.length, before);
    });

    await t.step(
      "the real value is in nothing the workload or the audit log can read",
      async () => {
        for (const o of outputs) assert(!o.includes(SECRET), o);
        assert(!(await Deno.readTextFile(sluice.auditPath)).includes(SECRET));
        assert(!sluice.stderr().includes(SECRET));
      },
    );
  } finally {
    await sluice.stop();
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * An HTTP/2-only upstream (node:http2, `allowHTTP1: false`): /sha answers the SHA-256 of the
 * request body, /bytes?n=N sends N pattern bytes; every response ends with a trailer.
 */
async function startH2OnlyUpstream(ca: CertificateAuthority, name: string) {
  const leaf = await mintLeaf(ca, name);
  const server = http2.createSecureServer({
    key: leaf.keyPem,
    cert: leaf.certPem,
    allowHTTP1: false,
  });
  const protocols: string[] = [];
  server.on("stream", (stream: http2.ServerHttp2Stream, headers) => {
    protocols.push(String(headers[":scheme"]));
    const url = new URL(String(headers[":path"]), "https://x");
    if (url.pathname === "/sha") {
      const hash = createHash("sha256");
      let n = 0;
      stream.on("data", (c: Uint8Array) => {
        hash.update(c);
        n += c.length;
      });
      stream.on("end", () => {
        stream.respond({ ":status": 200 }, { waitForTrailers: true });
        stream.on("wantTrailers", () => stream.sendTrailers({ "x-bytes": String(n) }));
        stream.end(`${hash.digest("hex")} ${n}`);
      });
      return;
    }
    if (url.pathname === "/reset") {
      // 64 KiB, then RST_STREAM: a body cut off by the upstream.
      stream.on("error", () => {});
      stream.respond({ ":status": 200 });
      stream.write(pattern(64 * 1024));
      setTimeout(() => stream.destroy(new Error("reset by the test upstream")), 100);
      return;
    }
    const n = Number(url.searchParams.get("n") ?? "5");
    stream.respond({ ":status": 200, "content-length": String(n) });
    const chunk = pattern(1 << 20);
    let sent = 0;
    const more = () => {
      while (sent < n) {
        const piece = chunk.subarray(0, Math.min(chunk.length, n - sent));
        sent += piece.length;
        if (!stream.write(piece)) return void stream.once("drain", more);
      }
      stream.end();
    };
    more();
  });
  // Deno 2.9.6 can abort the whole process inside nghttp2 when a session that had a stream
  // reset receives a GOAWAY (denoland/deno#36788; seen once in CI, exit 134 at this test's
  // teardown, when sluice stopped and its client said GOAWAY). So the test closes its sessions
  // itself, before sluice stops, and this process never receives one.
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session: http2.ServerHttp2Session) => {
    sessions.add(session);
    session.on("error", () => {});
    session.on("close", () => sessions.delete(session));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return {
    port: (server.address() as { port: number }).port,
    protocols,
    close: () =>
      new Promise<void>((r) => {
        for (const session of sessions) session.destroy();
        server.close(() => r());
      }),
  };
}

Deno.test("HTTP/2-only upstreams through sluice serve: curl --http2 and HTTP/1.1, 100 MB each way", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-h2-" });
  const cas = await testCas(dir);
  const up = await startH2OnlyUpstream(cas.trusted, "h2only.test");
  const policy = `${dir}/policy.yaml`;
  await Deno.writeTextFile(
    policy,
    `version: 1
network:
  allow: [h2only.test, "127.0.0.1:${up.port}"]
tls:
  upstream: { ca: [${cas.trustedPath}] }
`,
  );
  const sluice = await startSluice(policy, dir, ["--resolve", "h2only.test=127.0.0.1"]);
  const via = ["-x", `http://127.0.0.1:${sluice.proxyPort}`, "--cacert", sluice.caPath];
  const base = `https://h2only.test:${up.port}`;
  const n = 100 * 1024 * 1024;
  try {
    await t.step(
      "curl --http2 gets 200 over HTTP/2 from an upstream that refuses HTTP/1.1",
      async () => {
        const r = await curl([
          ...via,
          "--http2",
          "-w",
          "\n%{http_version} %{http_code}",
          `${base}/bytes?n=5`,
        ]);
        assertEquals(r.code, 0, r.stderr);
        assertMatch(r.text, /\n2 200$/);
      },
    );

    await t.step("an HTTP/1.1 client is served by the HTTP/2-only upstream too", async () => {
      const r = await curl([
        ...via,
        "--http1.1",
        "-w",
        "\n%{http_version} %{http_code}",
        `${base}/bytes?n=5`,
      ]);
      assertEquals(r.code, 0, r.stderr);
      assertMatch(r.text, /\n1\.1 200$/);
    });

    await t.step(
      "a body the upstream resets is a failed transfer for the client, never a whole one",
      async () => {
        for (const version of ["--http2", "--http1.1"]) {
          const r = await curl([...via, version, "-o", "/dev/null", `${base}/reset`]);
          assert(r.code !== 0, `${version}: curl took a cut-off body for a whole one`);
        }
      },
    );

    await t.step("100 MB up over HTTP/2 arrives byte for byte", async () => {
      const file = `${dir}/up.bin`;
      const f = await Deno.open(file, { write: true, create: true });
      const chunk = pattern(1 << 20);
      for (let i = 0; i < 100; i++) await f.write(chunk);
      f.close();
      const r = await curl([...via, "--http2", "--data-binary", `@${file}`, `${base}/sha`]);
      assertEquals(r.code, 0, r.stderr);
      const all = await Deno.readFile(file);
      assertEquals(r.text, `${await sha256(all)} ${n}`);
    });

    await t.step("100 MB down over HTTP/2 arrives byte for byte", async () => {
      const file = `${dir}/down.bin`;
      const r = await curl([
        ...via,
        "--http2",
        "-o",
        file,
        "-w",
        "%{size_download}",
        `${base}/bytes?n=${n}`,
      ]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(r.text, String(n));
      const got = await Deno.readFile(file);
      const want = new Uint8Array(n);
      const chunk = pattern(1 << 20);
      for (let i = 0; i < 100; i++) want.set(chunk, i << 20);
      assertEquals(await sha256(got), await sha256(want));
    });

    await t.step("every request reached the upstream over HTTP/2", () => {
      assertEquals(up.protocols.length, 6);
    });
  } finally {
    await up.close(); // first: see startH2OnlyUpstream
    await sluice.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

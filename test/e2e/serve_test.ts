/**
 * `sluice serve` end to end: real curl through the explicit proxy to TLS
 * upstreams on loopback, each with a test CA; the upstreams' names resolve
 * to loopback through `--resolve`, so no traffic leaves the machine.
 */
import { createHash } from "node:crypto";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../_assert.ts";
import {
  curl,
  GZIP_BODY,
  pattern,
  sha256,
  startPlainUpstream,
  startSluice,
  startTlsUpstream,
  testCas,
} from "./_harness.ts";
import { openWebSocket, websocketThroughProxy } from "./_ws_client.ts";

Deno.test("sluice serve (explicit proxy)", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-e2e-" });
  const cas = await testCas(dir);
  const up = await startTlsUpstream(cas.trusted);
  const bad = await startTlsUpstream(cas.untrusted);
  const plain = startPlainUpstream();
  const policy = `${dir}/policy.yaml`;
  await Deno.writeTextFile(
    policy,
    `version: 1
network:
  default: deny
  allow:
    - allowed.test
    - "GET,HEAD api.test/repos/acme/**"
    - passthrough.test
    - untrusted.test
    - noverify.test
    - rebind.test
    - meta.test
    - other.test
    - plain.test
    # The test upstreams live on loopback, which the private guard refuses
    # unless an IP rule names the address and port.
    - 127.0.0.1:${up.port}
    - 127.0.0.1:${bad.port}
    - 127.0.0.1:${plain.port}
  deny:
    - denied.test
tls:
  passthrough: [passthrough.test]
  upstream:
    ca: [${cas.trustedPath}]
    hosts:
      - { match: noverify.test, verify: false }
`,
  );
  const resolve = [
    "allowed.test",
    "api.test",
    "passthrough.test",
    "untrusted.test",
    "noverify.test",
    "other.test",
    "plain.test",
    "denied.test",
  ].flatMap((n) => ["--resolve", `${n}=127.0.0.1`]);
  const sluice = await startSluice(policy, dir, [
    ...resolve,
    "--resolve",
    "rebind.test=127.0.0.2",
    "--resolve",
    "meta.test=169.254.169.254",
  ]);
  const proxy = ["-x", `http://127.0.0.1:${sluice.proxyPort}`];
  const via = [...proxy, "--cacert", sluice.caPath];
  try {
    await t.step("an allowed host answers 200 through interception", async () => {
      const r = await curl([...via, `https://allowed.test:${up.port}/echo?q=1`]);
      assertEquals(r.code, 0, r.stderr);
      const echo = JSON.parse(r.text);
      assertEquals([echo.method, echo.path, echo.host], [
        "GET",
        "/echo?q=1",
        `allowed.test:${up.port}`,
      ]);
    });

    await t.step("a denied host gets 403 to its CONNECT, naming the rule", async () => {
      const r = await curl([...via, "-v", `https://denied.test:${up.port}/`]);
      assert(r.code !== 0);
      assertMatch(r.stderr, /CONNECT tunnel failed, response 403/);
      assertMatch(r.stderr, /x-sluice-decision: deny; code=deny-rule; rule=.*policy\.yaml:20/);
    });

    await t.step("a host no rule allows gets 403 by default", async () => {
      const r = await curl([...via, "-v", `https://nowhere.test:${up.port}/`]);
      assertMatch(r.stderr, /response 403/);
      assertMatch(r.stderr, /code=default/);
    });

    await t.step("path and method rules are enforced per request", async () => {
      const ok = await curl([
        ...via,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        `https://api.test:${up.port}/repos/acme/x`,
      ]);
      assertEquals(ok.text, "200");
      const path = await curl([
        ...via,
        "-w",
        "\n%{http_code}",
        `https://api.test:${up.port}/repos/other/x`,
      ]);
      assertMatch(path.text, /sluice denied this request: .*default is deny[\s\S]*\n403$/);
      const method = await curl([
        ...via,
        "-X",
        "POST",
        "-D",
        "-",
        `https://api.test:${up.port}/repos/acme/x`,
      ]);
      assertMatch(method.text, /\r\nHTTP\/(1\.1|2) 403/);
      assertMatch(method.text, /x-sluice-decision: deny; code=default/);
      const dots = await curl([
        ...via,
        "--path-as-is",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        `https://api.test:${up.port}/repos/acme/%2e%2e/other`,
      ]);
      assertEquals(dots.text, "403");
    });

    await t.step(
      "a passthrough host is spliced: the client sees the upstream's own certificate",
      async () => {
        const r = await curl([
          ...proxy,
          "--cacert",
          cas.trustedPath,
          `https://passthrough.test:${up.port}/echo`,
        ]);
        assertEquals(r.code, 0, r.stderr);
        assertEquals(JSON.parse(r.text).host, `passthrough.test:${up.port}`);
        const withSluiceCa = await curl([...via, `https://passthrough.test:${up.port}/echo`]);
        assert(withSluiceCa.code !== 0, "sluice's CA must not verify a passthrough connection");
      },
    );

    await t.step("a Host that differs from the SNI is denied (no domain fronting)", async () => {
      const r = await curl([
        ...via,
        "-H",
        "Host: other.test",
        "-D",
        "-",
        `https://allowed.test:${up.port}/echo`,
      ]);
      assertMatch(r.text, /\r\nHTTP\/(1\.1|2) 403/);
      assertMatch(r.text, /code=host-mismatch/);
    });

    await t.step(
      "a name resolving to a loopback address is refused by the private guard",
      async () => {
        const r = await curl([
          ...via,
          "-w",
          "\n%{http_code}",
          `https://rebind.test:${up.port}/echo`,
        ]);
        assertMatch(r.text, /127\.0\.0\.2\) is a loopback address[\s\S]*\n403$/);
      },
    );

    await t.step("a name resolving to the metadata address is refused", async () => {
      const r = await curl([...via, "-w", "\n%{http_code}", `https://meta.test:${up.port}/latest`]);
      assertMatch(r.text, /169\.254\.169\.254\) is a metadata address[\s\S]*\n403$/);
    });

    await t.step(
      "an upstream certificate from an untrusted CA gives 502 with the reason",
      async () => {
        const r = await curl([
          ...via,
          "-w",
          "\n%{http_code}",
          `https://untrusted.test:${bad.port}/echo`,
        ]);
        assertMatch(r.text, /\n502$/);
        assertMatch(r.text, /UnknownIssuer|certificate/i);
      },
    );

    await t.step("verify: false for one host reaches that host", async () => {
      const r = await curl([
        ...via,
        "-w",
        "\n%{http_code}",
        `https://noverify.test:${bad.port}/echo`,
      ]);
      assertMatch(r.text, /\n200$/);
    });

    await t.step("plain HTTP through the proxy is decided per request", async () => {
      const ok = await curl([...proxy, `http://plain.test:${plain.port}/echo`]);
      assertEquals(JSON.parse(ok.text).path, "/echo");
      const denied = await curl([
        ...proxy,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        `http://denied.test:${plain.port}/`,
      ]);
      assertEquals(denied.text, "403");
    });

    await t.step("HTTP/2 from the client works", async () => {
      const r = await curl([
        ...via,
        "--http2",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        `https://allowed.test:${up.port}/echo`,
      ]);
      assertEquals(r.text, "2 200");
    });

    await t.step("a gzip response arrives byte-identical, still encoded", async () => {
      const r = await curl([
        ...via,
        "-D",
        `${dir}/gz-headers`,
        `https://allowed.test:${up.port}/gzip`,
      ]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(await sha256(r.body), await sha256(GZIP_BODY));
      assertMatch(await Deno.readTextFile(`${dir}/gz-headers`), /content-encoding: gzip/i);
    });

    await t.step("a 100 MB download arrives byte-identical", async () => {
      const n = 100_000_000;
      const r = await curl([
        ...via,
        "-o",
        `${dir}/down.bin`,
        "-w",
        "%{size_download}",
        `https://allowed.test:${up.port}/bytes?n=${n}`,
      ]);
      assertEquals(r.text, String(n), r.stderr);
      const expected = createHash("sha256");
      const whole = pattern(4 << 20);
      for (let sent = 0; sent < n; sent += 1 << 16) {
        const len = Math.min(1 << 16, n - sent);
        const start = sent % whole.length;
        expected.update(
          start + len <= whole.length ? whole.subarray(start, start + len) : pattern(len),
        );
      }
      const got = createHash("sha256");
      using f = await Deno.open(`${dir}/down.bin`);
      for await (const chunk of f.readable) got.update(chunk);
      assertEquals(got.digest("hex"), expected.digest("hex"));
      await Deno.remove(`${dir}/down.bin`);
    });

    await t.step("a 100 MB upload arrives byte-identical", async () => {
      const data = pattern(100_000_000);
      await Deno.writeFile(`${dir}/up.bin`, data);
      const r = await curl([
        ...via,
        "--data-binary",
        `@${dir}/up.bin`,
        "-H",
        "Content-Type: application/octet-stream",
        `https://allowed.test:${up.port}/upload`,
      ]);
      assertEquals(r.code, 0, r.stderr);
      const echo = JSON.parse(r.text);
      assertEquals([echo.length, echo.sha256], [data.length, await sha256(data)]);
      await Deno.remove(`${dir}/up.bin`);
    });

    await t.step("a WebSocket echo works through interception", async () => {
      const ws = await websocketThroughProxy(
        sluice.proxyPort,
        `allowed.test:${up.port}`,
        await Deno.readTextFile(sluice.caPath),
      );
      try {
        assertMatch(ws.head, /^HTTP\/1\.1 101 /);
        await ws.send(0x1, new TextEncoder().encode("hello through sluice"));
        const text = await ws.read();
        assertEquals([text.opcode, new TextDecoder().decode(text.payload)], [
          0x1,
          "echo:hello through sluice",
        ]);
        const binary = pattern(70_000); // a 64-bit length on both sides
        await ws.send(0x2, binary);
        const back = await ws.read();
        assertEquals(back.opcode, 0x2);
        assertEquals(await sha256(back.payload), await sha256(binary));
        await ws.send(0x8, new Uint8Array([0x03, 0xe8])); // close, 1000
        const closed = await ws.read();
        assertEquals([closed.opcode, (closed.payload[0] << 8) | closed.payload[1]], [0x8, 1000]);
      } finally {
        ws.close();
      }
      // The session's audit record comes when it has closed.
      let record: Record<string, unknown> | undefined;
      for (let i = 0; i < 50 && !record; i++) {
        record = (await sluice.audit()).find((r) => r.path === "/ws" && r.status === 101);
        if (!record) await new Promise((r) => setTimeout(r, 100));
      }
      assert(record, "no audit record for the WebSocket session");
      assertEquals([record.verdict, record.bytes_up, record.bytes_down], [
        "allow",
        20 + 70_000,
        25 + 70_000,
      ]);
    });

    await t.step("a plain ws:// WebSocket works through the explicit proxy", async () => {
      // Absolute-form upgrade request, as HTTP_PROXY clients send it for ws:// URLs.
      const tcp = await Deno.connect({ hostname: "127.0.0.1", port: sluice.proxyPort });
      const ws = await openWebSocket(
        tcp,
        `plain.test:${plain.port}`,
        `http://plain.test:${plain.port}/ws`,
      );
      try {
        assertMatch(ws.head, /^HTTP\/1\.1 101 /);
        await ws.send(0x1, new TextEncoder().encode("over plain HTTP"));
        const reply = await ws.read();
        assertEquals(new TextDecoder().decode(reply.payload), "echo:over plain HTTP");
      } finally {
        ws.close();
      }
    });

    await t.step("a WebSocket to a denied path is refused before any upgrade", async () => {
      const ws = await websocketThroughProxy(
        sluice.proxyPort,
        `api.test:${up.port}`,
        await Deno.readTextFile(sluice.caPath),
        "/orgs/other",
      );
      ws.close();
      assertMatch(ws.head, /^HTTP\/1\.1 403 /);
      assertMatch(ws.head, /x-sluice-decision: deny/i);
    });

    await t.step("every decision is in the audit log with its rule", async () => {
      await new Promise((r) => setTimeout(r, 100));
      const records = await sluice.audit();
      const denied = records.find((r) => r.host === "denied.test");
      assert(denied, "no audit record for denied.test");
      assertEquals([denied.event, denied.verdict, denied.code, denied.mode], [
        "connection",
        "deny",
        "deny-rule",
        "explicit",
      ]);
      assertMatch(String(denied.rule_at), /policy\.yaml:20$/);
      const allowed = records.find((r) =>
        r.event === "request" && r.host === "allowed.test" && r.path === "/echo"
      );
      assert(allowed, "no audit record for an allowed request");
      assertEquals([allowed.verdict, allowed.status, allowed.tls], ["allow", 200, "intercept"]);
      assert(
        !records.some((r) => String(r.path ?? "").includes("?")),
        "audit paths must not carry queries",
      );
    });
  } finally {
    const code = await sluice.stop();
    await up.close();
    await bad.close();
    await plain.close();
    await Deno.remove(dir, { recursive: true });
    assertStringIncludes(sluice.stderr(), "shutting down");
    assertEquals(code, 0);
  }
});

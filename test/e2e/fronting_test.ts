/**
 * Domain fronting cannot carry a real secret to another virtual host: a request decided for
 * one host is sent with that host's Host header or not at all. Every form the review found:
 * a Host header beside an absolute-form target (plain HTTP and inside TLS), an origin-form
 * request whose Host is not the SNI, and an HTTP/2 `host` header beside `:authority`.
 */
import http2 from "node:http2";
import net from "node:net";
import tls from "node:tls";
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import {
  curl,
  received,
  startPlainUpstream,
  startSluice,
  startTlsUpstream,
  testCas,
} from "./_harness.ts";

const SECRET = "fronting-secret-2c9a11e0";
const PH = "sluice-front-placeholder-0001";

/** A CONNECT tunnel through the explicit proxy, as a node:net socket. */
function tunnel(proxyPort: number, target: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(proxyPort, "127.0.0.1", () => {
      s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
    });
    let head = "";
    const onData = (d: Uint8Array) => {
      head += new TextDecoder().decode(d);
      if (!head.includes("\r\n\r\n")) return;
      s.off("data", onData);
      if (!/^HTTP\/1\.1 200/.test(head)) reject(new Error(head));
      else resolve(s);
    };
    s.on("data", onData);
    s.on("error", reject);
  });
}

function assertNoSecretElsewhere(before: number) {
  for (const r of received.slice(before)) {
    const hasSecret = Object.values(r.headers).some((v) => v.includes(SECRET));
    if (hasSecret) assertEquals(r.headers.host, "scoped.test", "the secret went with another Host");
    assert(r.headers.host !== "other.test", `a request reached the upstream as ${r.headers.host}`);
  }
}

Deno.test("domain fronting is refused in every form, and Host is always the decided authority", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-front-t-" });
  const cas = await testCas(dir);
  const up = startTlsUpstream(cas.trusted);
  const plain = startPlainUpstream();
  const policy = `${dir}/policy.yaml`;
  await Deno.writeTextFile(
    policy,
    `version: 1
network:
  allow: [scoped.test, other.test, "127.0.0.1:${up.port}", "127.0.0.1:${plain.port}"]
credentials:
  KEY:
    from: env:FRONT_SECRET
    hosts: [scoped.test]
    placeholder: ${PH}
tls:
  upstream: { ca: [${cas.trustedPath}] }
`,
  );
  const sluice = await startSluice(
    policy,
    dir,
    ["--resolve", "scoped.test=127.0.0.1", "--resolve", "other.test=127.0.0.1"],
    undefined,
    { FRONT_SECRET: SECRET },
  );
  const ca = await Deno.readTextFile(sluice.caPath);
  try {
    await t.step("HTTPS, origin-form, Host is another virtual host: 403", async () => {
      const before = received.length;
      const r = await curl([
        "-x",
        `http://127.0.0.1:${sluice.proxyPort}`,
        "--cacert",
        sluice.caPath,
        "--connect-to",
        `scoped.test:443:127.0.0.1:${up.port}`,
        "-H",
        "Host: other.test",
        "-H",
        `Authorization: Bearer ${PH}`,
        "-D",
        "-",
        `https://scoped.test:${up.port}/echo`,
      ]);
      assertMatch(r.text, /\r\nHTTP\/2 403 /);
      assertMatch(r.text, /x-sluice-decision: deny; code=host-mismatch/);
      assertEquals(received.length, before);
    });

    await t.step("HTTPS, absolute-form inside the tunnel with another Host: 403", async () => {
      const before = received.length;
      const sock = await tunnel(sluice.proxyPort, `scoped.test:${up.port}`);
      const t = tls.connect({
        socket: sock,
        servername: "scoped.test",
        ca,
        ALPNProtocols: ["http/1.1"],
      });
      await new Promise((r) => t.once("secureConnect", r));
      t.write(
        `GET https://scoped.test:${up.port}/echo HTTP/1.1\r\nHost: other.test\r\n` +
          `Authorization: Bearer ${PH}\r\nConnection: close\r\n\r\n`,
      );
      let text = "";
      for await (const chunk of t) text += new TextDecoder().decode(chunk as Uint8Array);
      assertMatch(text, /^HTTP\/1\.1 403/);
      assertMatch(text, /x-sluice-decision: deny; code=host-mismatch/i);
      assert(!text.includes(SECRET));
      assertEquals(received.length, before);
    });

    await t.step("HTTP/2 with a host header beside :authority: refused", async () => {
      const before = received.length;
      const sock = await tunnel(sluice.proxyPort, `scoped.test:${up.port}`);
      const client = http2.connect(`https://scoped.test:${up.port}`, {
        createConnection: () =>
          tls.connect({ socket: sock, servername: "scoped.test", ca, ALPNProtocols: ["h2"] }),
      });
      const res = await new Promise<{ status: number; decision: string }>((resolve, reject) => {
        const r = client.request({
          ":method": "GET",
          ":path": "/echo",
          ":authority": `scoped.test:${up.port}`,
          host: "other.test",
          authorization: `Bearer ${PH}`,
        });
        r.on("response", (h) =>
          resolve({
            status: Number(h[":status"]),
            decision: String(h["x-sluice-decision"] ?? ""),
          }));
        r.on("error", reject);
        r.resume();
        r.end();
      });
      client.close();
      assertEquals(res.status, 403);
      assertMatch(res.decision, /code=host-mismatch/);
      assertNoSecretElsewhere(before);
      assertEquals(received.length, before);
    });

    await t.step("plain HTTP absolute-form with another Host: 403, never forwarded", async () => {
      const before = received.length;
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: sluice.proxyPort });
      await conn.write(new TextEncoder().encode(
        `GET http://other.test:${plain.port}/echo HTTP/1.1\r\nHost: scoped.test\r\nConnection: close\r\n\r\n`,
      ));
      let text = "";
      const buf = new Uint8Array(65536);
      for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
      conn.close();
      assertMatch(text, /^HTTP\/1\.1 403/);
      assertMatch(text, /x-sluice-decision: deny; code=host-mismatch/i);
      assertEquals(received.length, before);
    });

    await t.step("an allowed request is sent with the authority as its Host", async () => {
      const before = received.length;
      const r = await curl([
        "-x",
        `http://127.0.0.1:${sluice.proxyPort}`,
        "--cacert",
        sluice.caPath,
        "-H",
        `Authorization: Bearer ${PH}`,
        `https://scoped.test:${up.port}/echo`,
      ]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(received.length, before + 1);
      const got = received[received.length - 1];
      assertEquals(got.headers.host, `scoped.test:${up.port}`);
      assertEquals(got.headers.authorization, `Bearer ${SECRET}`);
      assert(!r.text.includes(SECRET), "the secret came back to the client");
    });
  } finally {
    await sluice.stop();
    await up.close();
    await plain.close();
    await Deno.remove(dir, { recursive: true });
  }
});

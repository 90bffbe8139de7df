/**
 * `explain` and `serve` make one decision: generated requests (seeded) go through a real
 * `sluice serve` over the explicit proxy, raw on the socket so the test controls every byte
 * (Host, header names, paths), and each answer's verdict, code and rule must be what
 * `explain` says for the same request. Plain HTTP to a plain upstream on loopback, and HTTPS
 * through CONNECT with interception (the CONNECT decided on its target, then each request
 * inside the tunnel) to a TLS upstream.
 */
import { assertEquals } from "../_assert.ts";
import { explain, loadPolicyText } from "../../policy/mod.ts";
import {
  IS_ROOT,
  received,
  startPlainUpstream,
  startSluice,
  startTlsUpstream,
  testCas,
} from "./_harness.ts";
import { mulberry32 } from "../fuzz/_fuzz.ts";

const KEY = "sluice-key-placeholder-0001";
const PLAIN = "sluice-plain-placeholder-0002";
const PH = new Map([["KEY", KEY], ["PLAIN", PLAIN]]);
const SECRETS = { K: "real-key-value-8f3e1d", P: "real-plain-value-77ab0c" };

async function send(port: number, head: string): Promise<{ status: number; decision: string }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode(head));
    let text = "";
    const buf = new Uint8Array(65536);
    while (!text.includes("\r\n\r\n")) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
    const decision = /\r\nx-sluice-decision: ([^\r]*)/i.exec(text)?.[1] ?? "";
    return { status, decision };
  } finally {
    conn.close();
  }
}

/** Reads one response head from a connection: status and x-sluice-decision. */
async function readHead(conn: Deno.Conn): Promise<{ status: number; decision: string }> {
  let text = "";
  const buf = new Uint8Array(65536);
  while (!text.includes("\r\n\r\n")) {
    const n = await conn.read(buf).catch(() => null);
    if (n === null) break;
    text += new TextDecoder().decode(buf.subarray(0, n));
  }
  return {
    status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0),
    decision: /\r\nx-sluice-decision: ([^\r]*)/i.exec(text)?.[1] ?? "",
  };
}

/** CONNECT host:443 through the proxy, then one request head inside sluice's TLS. */
async function sendTls(
  port: number,
  host: string,
  ca: string,
  head: string,
): Promise<{ status: number; decision: string }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(
      new TextEncoder().encode(`CONNECT ${host}:443 HTTP/1.1\r\nHost: ${host}:443\r\n\r\n`),
    );
    const connect = await readHead(conn);
    if (connect.status !== 200) return connect;
    const tls = await Deno.startTls(conn, { hostname: host, caCerts: [ca] });
    try {
      await tls.write(new TextEncoder().encode(head));
      return await readHead(tls);
    } finally {
      tls.close();
    }
  } catch (e) {
    try {
      conn.close();
    } catch { /* closed with the TLS connection */ }
    if (e instanceof Deno.errors.BadResource) return { status: 0, decision: "" };
    throw e;
  }
}

Deno.test({
  name: "explain and serve agree on generated HTTPS requests through CONNECT (verdict, code, rule)",
  // The TLS upstream listens on 127.0.0.8:443 (a privileged port; other tests use 127.0.0.1-7).
  ignore: !IS_ROOT,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "sluice-agree-tls-" });
    const cas = await testCas(dir);
    const up = startTlsUpstream(cas.trusted, 443, "127.0.0.8");
    const policyText = `version: 1
network:
  allow:
    - allowed.test
    - other.test
    - "GET,HEAD api.test/v1/**"
    - "127.0.0.8:443"
  deny:
    - "allowed.test/admin/**"
    - denied.test
credentials:
  KEY:
    from: env:K
    hosts: [allowed.test]
    placeholder: ${KEY}
  PLAIN:
    from: env:P
    hosts: [other.test]
    placeholder: ${PLAIN}
tls:
  upstream: { ca: [${cas.trustedPath}] }
`;
    const policy = `${dir}/policy.yaml`;
    await Deno.writeTextFile(policy, policyText);
    const { compiled } = loadPolicyText(policyText, policy);
    const names = ["allowed.test", "other.test", "api.test", "denied.test", "nothing.test"];
    const sluice = await startSluice(
      policy,
      dir,
      names.flatMap((n) => ["--resolve", `${n}=127.0.0.8`]),
      undefined,
      SECRETS,
    );
    const ca = await Deno.readTextFile(sluice.caPath);
    const rand = mulberry32(Number(Deno.env.get("SLUICE_FUZZ_SEED") ?? 20261202));
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
    const segments = ["admin", "v1", "x", "..", ".", "", "%2e", "a%2Fb", "AdMin", KEY];
    let checked = 0;
    try {
      for (let i = 0; i < 120; i++) {
        const host = pick(names);
        const method = pick(["GET", "POST", "DELETE", "HEAD"]);
        const depth = 1 + Math.floor(rand() * 4);
        let path = "";
        for (let d = 0; d < depth; d++) path += pick(["/", "//"]) + pick(segments);
        const query = rand() < 0.2 ? `?q=${pick(["1", KEY, PLAIN, encodeURIComponent(KEY)])}` : "";
        const headers: [string, string][] = [["Host", rand() < 0.15 ? pick(names) : host]];
        if (rand() < 0.4) {
          headers.push(["Authorization", `Bearer ${pick([KEY, PLAIN, "nothing"])}`]);
        }
        if (rand() < 0.1) headers.push([`x-${KEY}`, "1"]);
        const url = `https://${host}${path}${query}`;
        const e = explain(compiled, { method, url, headers, placeholders: PH });
        const before = received.length;
        const head = `${method} ${path}${query} HTTP/1.1\r\n` +
          headers.map(([n, v]) => `${n}: ${v}\r\n`).join("") +
          (method === "POST" ? "content-length: 0\r\n" : "") + "connection: close\r\n\r\n";
        const r = await sendTls(sluice.proxyPort, host, ca, head);
        const what = `https ${head.split("\r\n")[0]} ${JSON.stringify(headers)}`;
        if (e.error) continue;
        // Every refusal carries a decision, and an allowed request reached the upstream: a bare
        // refusal (Deno's own 400, a dropped tunnel) fails here.
        const served = r.decision.startsWith("deny") || r.decision.startsWith("error")
          ? "deny"
          : received.length > before
          ? "allow"
          : `neither a decision nor a forward (status ${r.status})`;
        assertEquals(
          served,
          e.verdict,
          `${what}\nserve: ${r.status} ${r.decision}\nexplain: ${JSON.stringify(e)}`,
        );
        if (e.verdict === "deny") {
          const d = e.refusal ?? e.request ?? e.address ?? e.connection!;
          const code = /code=([^;]+)/.exec(r.decision)?.[1];
          const rule = /rule=(.+)$/.exec(r.decision)?.[1];
          assertEquals(code, d.code, `${what}\nserve: ${r.decision}\nexplain: ${d.reason}`);
          if (rule !== undefined) assertEquals(rule, d.rule.at, `${what}: rule`);
          assertEquals(received.length, before, `${what}: a denied request reached the upstream`);
        } else {
          assertEquals(received.length, before + 1, `${what}: not forwarded`);
          const got = received[received.length - 1];
          assertEquals(got.headers.host, host);
          assertEquals(got.target.includes("//"), false, got.target);
        }
        checked++;
      }
    } finally {
      await sluice.stop();
      await up.close();
      await Deno.remove(dir, { recursive: true });
    }
    assertEquals(checked > 90, true, `only ${checked} requests were compared`);
  },
});

Deno.test("explain and serve agree on generated requests (verdict, code, rule)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-agree-t-" });
  const plain = startPlainUpstream();
  const port = plain.port;
  const policyText = `version: 1
network:
  allow:
    - allowed.test
    - other.test
    - "plain.test:${port}"
    - "GET,HEAD api.test/v1/**"
    - "127.0.0.1:${port}"
  deny:
    - "allowed.test/admin/**"
    - denied.test
credentials:
  KEY:
    from: env:K
    hosts: [allowed.test]
    placeholder: ${KEY}
  PLAIN:
    from: env:P
    hosts: ["plain.test:${port}"]
    placeholder: ${PLAIN}
`;
  const policy = `${dir}/policy.yaml`;
  await Deno.writeTextFile(policy, policyText);
  const { compiled } = loadPolicyText(policyText, policy);
  const names = [
    "allowed.test",
    "other.test",
    "plain.test",
    "api.test",
    "denied.test",
    "nothing.test",
  ];
  const sluice = await startSluice(
    policy,
    dir,
    names.flatMap((n) => ["--resolve", `${n}=127.0.0.1`]),
    undefined,
    SECRETS,
  );
  const rand = mulberry32(Number(Deno.env.get("SLUICE_FUZZ_SEED") ?? 20261201));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const segments = ["admin", "v1", "x", "..", ".", "", "%2e", "a%2Fb", "AdMin", KEY];
  let checked = 0;
  try {
    for (let i = 0; i < 150; i++) {
      const host = pick(names);
      const method = pick(["GET", "POST", "DELETE", "HEAD"]);
      const depth = 1 + Math.floor(rand() * 4);
      let path = "";
      for (let d = 0; d < depth; d++) path += pick(["/", "//"]) + pick(segments);
      const query = rand() < 0.2 ? `?q=${pick(["1", KEY, PLAIN, encodeURIComponent(KEY)])}` : "";
      const headers: [string, string][] = [];
      const hostHeader = rand() < 0.15 ? pick(names) : `${host}:${port}`;
      headers.push(["Host", hostHeader]);
      if (rand() < 0.4) headers.push(["Authorization", `Bearer ${pick([KEY, PLAIN, "nothing"])}`]);
      if (rand() < 0.1) headers.push([`x-${KEY}`, "1"]);
      if (rand() < 0.1) headers.push(["Authorization", `Basic ${btoa(`u:${pick([KEY, PLAIN])}`)}`]);
      const url = `http://${host}:${port}${path}${query}`;
      const e = explain(compiled, { method, url, headers, placeholders: PH });
      const before = received.length;
      const head = `${method} ${url} HTTP/1.1\r\n` +
        headers.map(([n, v]) => `${n}: ${v}\r\n`).join("") +
        (method === "POST" ? "content-length: 0\r\n" : "") + "connection: close\r\n\r\n";
      const r = await send(sluice.proxyPort, head);
      const what = `${head.split("\r\n")[0]} ${JSON.stringify(headers)}`;
      if (e.error) {
        // explain could not even read the URL: serve must refuse it too.
        assertEquals(r.status >= 400 && received.length === before, true, `${what}: ${r.status}`);
        continue;
      }
      const served = r.decision.startsWith("deny") || r.decision.startsWith("error")
        ? "deny"
        : "allow";
      assertEquals(
        served,
        e.verdict,
        `${what}\nserve: ${r.status} ${r.decision}\nexplain: ${JSON.stringify(e)}`,
      );
      if (e.verdict === "deny") {
        const d = e.refusal ?? e.request ?? e.address ?? e.connection!;
        const code = /code=([^;]+)/.exec(r.decision)?.[1];
        const rule = /rule=(.+)$/.exec(r.decision)?.[1];
        assertEquals(code, d.code, `${what}\nserve: ${r.decision}\nexplain: ${d.reason}`);
        if (rule !== undefined) assertEquals(rule, d.rule.at, `${what}: rule`);
        assertEquals(received.length, before, `${what}: a denied request reached the upstream`);
      } else {
        assertEquals(received.length, before + 1, `${what}: not forwarded`);
        const got = received[received.length - 1];
        // What was forwarded is what was decided: the Host, and the path with slashes merged.
        assertEquals(got.headers.host, `${host}:${port}`);
        assertEquals(got.target.includes("//"), false, got.target);
      }
      checked++;
    }
  } finally {
    await sluice.stop();
    await plain.close();
    await Deno.remove(dir, { recursive: true });
  }
  assertEquals(checked > 100, true, `only ${checked} requests were compared`);
});

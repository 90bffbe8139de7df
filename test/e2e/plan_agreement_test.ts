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

/** One generated request: what explain is asked, and the head serve is sent. */
type Generated = { host: string; method: string; target: string; headers: [string, string][] };

/**
 * A request generator over a seeded PRNG: a host among `names`, a method, a path of odd segments
 * (dot segments, runs of slashes, escapes, a placeholder), sometimes a query with a placeholder,
 * a Host header that is sometimes another name, and placeholders in headers and header names.
 *
 * @param authority the Host a client would send for `host` (the port, when not the default)
 * @param basic also place placeholders inside Basic credentials
 */
function generator(
  seed: number,
  names: readonly string[],
  authority: (host: string) => string,
  basic: boolean,
): () => Generated {
  const rand = mulberry32(Number(Deno.env.get("SLUICE_FUZZ_SEED") ?? seed));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const segments = ["admin", "v1", "x", "..", ".", "", "%2e", "a%2Fb", "AdMin", KEY];
  return () => {
    const host = pick(names);
    const method = pick(["GET", "POST", "DELETE", "HEAD"]);
    const depth = 1 + Math.floor(rand() * 4);
    let path = "";
    for (let d = 0; d < depth; d++) path += pick(["/", "//"]) + pick(segments);
    const query = rand() < 0.2 ? `?q=${pick(["1", KEY, PLAIN, encodeURIComponent(KEY)])}` : "";
    const headers: [string, string][] = [["Host", rand() < 0.15 ? pick(names) : authority(host)]];
    if (rand() < 0.4) headers.push(["Authorization", `Bearer ${pick([KEY, PLAIN, "nothing"])}`]);
    if (rand() < 0.1) headers.push([`x-${KEY}`, "1"]);
    if (basic && rand() < 0.1) {
      headers.push(["Authorization", `Basic ${btoa(`u:${pick([KEY, PLAIN])}`)}`]);
    }
    return { host, method, target: `${path}${query}`, headers };
  };
}

/** The head a client sends: `requestTarget` is origin-form, or absolute-form to a proxy. */
function requestHead(g: Generated, requestTarget: string): string {
  return `${g.method} ${requestTarget} HTTP/1.1\r\n` +
    g.headers.map(([n, v]) => `${n}: ${v}\r\n`).join("") +
    (g.method === "POST" ? "content-length: 0\r\n" : "") + "connection: close\r\n\r\n";
}

/**
 * serve's answer against explain's: the same verdict (every refusal carries its decision; an
 * allowed request reached the upstream), code and rule; a refusal forwarded nothing; what was
 * forwarded carries the decided Host and a path with its slashes merged.
 *
 * @param before `received.length` before the request was sent
 * @param host the Host the upstream must receive
 */
function assertAgreement(
  e: ReturnType<typeof explain>,
  r: { status: number; decision: string },
  before: number,
  what: string,
  host: string,
): void {
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
    const next = generator(20261202, names, (h) => h, false);
    let checked = 0;
    try {
      for (let i = 0; i < 120; i++) {
        const g = next();
        const url = `https://${g.host}${g.target}`;
        const e = explain(compiled, {
          method: g.method,
          url,
          headers: g.headers,
          placeholders: PH,
        });
        const before = received.length;
        const head = requestHead(g, g.target);
        const r = await sendTls(sluice.proxyPort, g.host, ca, head);
        if (e.error) continue;
        assertAgreement(
          e,
          r,
          before,
          `https ${head.split("\r\n")[0]} ${JSON.stringify(g.headers)}`,
          g.host,
        );
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
  const next = generator(20261201, names, (h) => `${h}:${port}`, true);
  let checked = 0;
  try {
    for (let i = 0; i < 150; i++) {
      const g = next();
      const url = `http://${g.host}:${port}${g.target}`;
      const e = explain(compiled, { method: g.method, url, headers: g.headers, placeholders: PH });
      const before = received.length;
      const head = requestHead(g, url);
      const r = await send(sluice.proxyPort, head);
      const what = `${head.split("\r\n")[0]} ${JSON.stringify(g.headers)}`;
      if (e.error) {
        // explain could not even read the URL: serve must refuse it too.
        assertEquals(r.status >= 400 && received.length === before, true, `${what}: ${r.status}`);
        continue;
      }
      assertAgreement(e, r, before, what, `${g.host}:${port}`);
      checked++;
    }
  } finally {
    await sluice.stop();
    await plain.close();
    await Deno.remove(dir, { recursive: true });
  }
  assertEquals(checked > 100, true, `only ${checked} requests were compared`);
});

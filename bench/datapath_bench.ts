/**
 * The whole data path, in one process, no root needed: `deno bench --allow-all
 * bench/datapath_bench.ts`. A TLS upstream on loopback (Deno's server with a leaf from a test
 * CA), sluice's server (lib/gateway/server.ts) with its explicit proxy, and one client connection that
 * CONNECTs through sluice, speaks TLS against sluice's CA and sends keep-alive GETs: every
 * request is decided, audited, forwarded over a pooled upstream TLS connection, and its
 * response relayed back through the loopback hop. The same client straight to the upstream is
 * the reference row.
 *
 * Client, sluice and upstream share one thread here, so the figure is the sum of their costs
 * per request; bench/peers.sh measures them apart, against squid and mitmproxy.
 */
import { ephemeralCa, mintLeaf } from "../lib/tls/ca.ts";
import { listenTlsWithResolver, serveHttpOnListener } from "../lib/tls/deno_internal.ts";
import { startServer } from "../lib/gateway/server.ts";
import { buildBrokerage } from "../lib/credentials/brokerage.ts";
import {
  OverrideResolver,
  parseResolveOverrides,
  SystemResolver,
} from "../lib/upstream/resolver.ts";
import type { AuditRecord, AuditSink } from "../lib/ops/audit.ts";
import { loadPolicyText } from "../policy/mod.ts";

const dir = await Deno.makeTempDir({ prefix: "sluice-datapath-bench-" });
const upstreamCa = await ephemeralCa();
await Deno.writeTextFile(`${dir}/upstream-ca.pem`, upstreamCa.certPem);
const upstream = listenTlsWithResolver({
  hostname: "127.0.0.1",
  port: 0,
  resolver: async (name) => {
    const leaf = await mintLeaf(upstreamCa, name || "127.0.0.1");
    return { cert: leaf.certPem, key: leaf.keyPem };
  },
});
serveHttpOnListener(upstream, () => new Response("ok"), () => new Response("x"));
const port = upstream.addr.port;

const { compiled } = loadPolicyText(
  `version: 1
network:
  allow: [bench.test, "127.0.0.1:${port}"]
tls:
  upstream: { ca: [${dir}/upstream-ca.pem] }
`,
  `${dir}/policy.yaml`,
);
/** Audit records are counted, not written: the file system is not what this measures. */
let audited = 0;
const audit: AuditSink = {
  write: (_r: AuditRecord) => void audited++,
  close: () => Promise.resolve(),
};
const sluiceCa = await ephemeralCa();
const sluice = await startServer({
  compiled,
  broker: (await buildBrokerage(compiled, new Uint8Array(32))).broker,
  ca: sluiceCa,
  audit,
  resolver: new OverrideResolver(
    parseResolveOverrides(["bench.test=127.0.0.1"]),
    new SystemResolver(),
  ),
  proxy: { hostname: "127.0.0.1", port: 0 },
});

const enc = new TextEncoder();
const request = enc.encode(`GET /ok HTTP/1.1\r\nHost: bench.test:${port}\r\n\r\n`);

/** Reads one small Content-Length response. */
async function roundTrip(conn: Deno.Conn, buf: Uint8Array): Promise<void> {
  for (let at = 0; at < request.length;) at += await conn.write(request.subarray(at));
  let have = 0;
  while (true) {
    const n = await conn.read(buf.subarray(have));
    if (n === null) throw new Error("closed");
    have += n;
    const text = new TextDecoder().decode(buf.subarray(0, have));
    const end = text.indexOf("\r\n\r\n");
    if (end < 0) continue;
    const len = Number(/content-length:\s*(\d+)/i.exec(text)?.[1] ?? "0");
    if (have >= end + 4 + len) {
      if (!text.startsWith("HTTP/1.1 200")) throw new Error(text.split("\r\n")[0]);
      return;
    }
  }
}

async function throughSluice(): Promise<Deno.TlsConn> {
  const tcp = await Deno.connect({ hostname: "127.0.0.1", port: sluice.addrs.proxy!.port });
  tcp.setNoDelay(true);
  await tcp.write(enc.encode(`CONNECT bench.test:${port} HTTP/1.1\r\nHost: bench.test\r\n\r\n`));
  const buf = new Uint8Array(1024);
  const n = await tcp.read(buf);
  const head = new TextDecoder().decode(buf.subarray(0, n ?? 0));
  if (!head.startsWith("HTTP/1.1 200")) throw new Error(`CONNECT refused: ${head}`);
  return await Deno.startTls(tcp, { hostname: "bench.test", caCerts: [sluiceCa.certPem] });
}

async function direct(): Promise<Deno.TlsConn> {
  const tcp = await Deno.connect({ hostname: "127.0.0.1", port });
  tcp.setNoDelay(true);
  return await Deno.startTls(tcp, { hostname: "bench.test", caCerts: [upstreamCa.certPem] });
}

const viaSluice = await throughSluice();
const straight = await direct();
const buf = new Uint8Array(64 * 1024);
// Warm both paths (leaf minting, upstream connection, JIT).
for (let i = 0; i < 200; i++) {
  await roundTrip(viaSluice, buf);
  await roundTrip(straight, buf);
}
if (audited < 200) throw new Error("sluice audited too little: the requests did not go through it");

Deno.bench("keep-alive GET straight to the TLS upstream (reference)", async () => {
  await roundTrip(straight, buf);
});

Deno.bench("keep-alive GET through sluice (CONNECT, intercepted, decided, audited)", async () => {
  await roundTrip(viaSluice, buf);
});

Deno.bench("new CONNECT + TLS handshake + GET through sluice (cached leaf)", async () => {
  const conn = await throughSluice();
  await roundTrip(conn, buf);
  conn.close();
});

globalThis.addEventListener("unload", () => {
  viaSluice.close();
  straight.close();
  Deno.removeSync(dir, { recursive: true });
});

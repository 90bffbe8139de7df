/**
 * sluice's own per-request layer (issue 14), apart from the HTTP server and the upstream client
 * that any proxy needs. Two servers on loopback, both `Deno.serve` (plain HTTP), both forwarding
 * to one plain-HTTP upstream (`Deno.serve`, a small whole body) through the real
 * {@link UpstreamPool}:
 *
 * - "sluice": the real request handler (`makeRequestHandler`, lib/exchange/forward.ts) with a
 *   real compiled policy, credential broker, trust store, resolver (`--resolve`-style override in
 *   front of the caching resolver), metrics and an audit log writing to a file;
 * - "minimal": `pool.request` with the client's headers, answered as it came: what is left of a
 *   proxy without sluice.
 *
 * A raw keep-alive TCP client sends GETs on `--conns` connections, each sequential. Client,
 * proxy and upstream share one thread, so each row is the sum of their costs; the difference of
 * the two rows is sluice's layer.
 *
 * Two ways to run it:
 *
 *     deno run -A bench/request_path_bench.ts [--requests 20000] [--rounds 5] [--conns 1,16]
 *         [--only sluice|minimal]
 *
 * prints µs/request per round (rounds alternate the variants), the median, and the median
 * difference; `--cpu-prof --cpu-prof-dir=/tmp/prof` with `--only sluice` profiles it
 * (summarise with `deno run -A bench/lib/cpuprofile_top.ts /tmp/prof/*.cpuprofile`). Under
 * `deno bench` (`deno task bench`) the same two handlers are `Deno.bench` rows.
 */
import { cpuUsage } from "node:process";
import { parseArgs } from "node:util";
import { makeRequestHandler } from "../lib/exchange/forward.ts";
import type { ProxyContext } from "../lib/gateway/context.ts";
import { DEFAULT_LIMITS } from "../lib/ingress/limits.ts";
import type { Connections, HopMeta } from "../lib/ingress/terminator.ts";
import { buildBrokerage } from "../lib/credentials/brokerage.ts";
import { AuditLog, type AuditSink } from "../lib/ops/audit.ts";
import { Metrics } from "../lib/ops/metrics.ts";
import { UpstreamPool } from "../lib/upstream/client.ts";
import { hostResolver } from "../lib/upstream/resolver.ts";
import { loadTrust } from "../lib/upstream/trust.ts";
import { loadPolicyText } from "../policy/mod.ts";
import { ephemeralCa, exportCaPem, mintLeafSync } from "../lib/tls/ca.ts";

const dir = await Deno.makeTempDir({ prefix: "sluice-request-path-bench-" });

// --direct: the request as the direct data path hands it over (a transparent TLS connection
// whose name is known only from the authority) and a TLS upstream, for both handlers.
const direct = Deno.args.includes("--direct");
const upstreamCa = direct ? await ephemeralCa() : undefined;
if (upstreamCa) await Deno.writeTextFile(`${dir}/upstream-ca.pem`, exportCaPem(upstreamCa));
const upstreamLeaf = upstreamCa ? mintLeafSync(upstreamCa, "bench.test") : undefined;

// The upstream: a small JSON answer, whole with its head (the common keep-alive API case).
const upstream = Deno.serve(
  {
    hostname: "127.0.0.1",
    port: 0,
    onListen: () => {},
    ...(upstreamLeaf ? { cert: upstreamLeaf.certPem, key: upstreamLeaf.keyPem } : {}),
  },
  () => new Response('{"ok":true}', { headers: { "content-type": "application/json" } }),
);
const upPort = upstream.addr.port;

const { compiled } = loadPolicyText(
  `version: 1
network:
  allow: ["bench.test:${upPort}", "127.0.0.1:${upPort}"]
${direct ? `tls:\n  upstream: { ca: [${dir}/upstream-ca.pem] }\n` : ""}`,
  `${dir}/policy.yaml`,
);
const broker = (await buildBrokerage(compiled, new Uint8Array(32))).broker;
const trust = await loadTrust(compiled, { systemInDefaultStore: true });
// SLUICE_BENCH_AUDIT=null counts records instead of writing them (to see what the log costs).
const audit: AuditSink = Deno.env.get("SLUICE_BENCH_AUDIT") === "null"
  ? { write: () => {}, close: () => Promise.resolve() }
  : await AuditLog.open(`${dir}/audit.jsonl`);
const metrics = new Metrics({
  activeConnections: () => 0,
  leafCache: () => ({ hits: 0, misses: 0, size: 0 }),
  policyGeneration: () => 1,
  lastReloadOk: () => 1,
  stages: () => [],
  clients: () => 0,
});
const shutdown = new AbortController();
const ctx: ProxyContext = {
  policy: () => compiled,
  trust: () => trust,
  audit,
  resolver: hostResolver([`bench.test=127.0.0.1`]),
  limits: DEFAULT_LIMITS,
  nextConnId: () => 1,
  active: { count: 0 },
  guard: undefined as unknown as ProxyContext["guard"],
  inflight: { count: 0 },
  signal: shutdown.signal,
  metrics,
  broker: () => broker,
};
// Explicit-proxy plain HTTP: the request names its host, sluice decides and forwards it.
const hop: HopMeta = direct
  ? { client: "127.0.0.1:1", mode: "transparent", secure: true, nameUnknown: true }
  : { conn: 1, client: "127.0.0.1:1", mode: "explicit", secure: false };
const connections: Connections = {
  meta: () => hop,
  bodyStarted: () => {},
  bodyEnded: () => {},
};

const sluicePool = new UpstreamPool();
const sluiceHandler = makeRequestHandler(ctx, () => connections, sluicePool);
const sluiceServer = Deno.serve(
  { hostname: "127.0.0.1", port: 0, onListen: () => {} },
  (req, info) => sluiceHandler(req, info),
);

const minimalPool = new UpstreamPool();
const minimalTarget = {
  host: "bench.test",
  port: upPort,
  address: "127.0.0.1",
  tls: direct,
  verify: true,
  caCerts: upstreamCa ? [exportCaPem(upstreamCa)] : undefined,
};
const minimalServer = Deno.serve(
  { hostname: "127.0.0.1", port: 0, onListen: () => {} },
  async (req) => {
    // forEach, not for-of: Deno 2.9's Headers iterator re-sorts on every step (~4 µs here).
    const headers: [string, string][] = [];
    req.headers.forEach((v, n) => {
      if (n !== "host") headers.push([n, v]);
    });
    const path = new URL(req.url).pathname;
    const up = await minimalPool.request(
      minimalTarget,
      { method: req.method, path, headers, body: null },
      shutdown.signal,
    );
    return new Response(up.whole ?? up.body, { status: up.status, headers: up.headers });
  },
);

const enc = new TextEncoder();
const dec = new TextDecoder();
const REQUEST = enc.encode(
  `GET http://bench.test:${upPort}/v1/items?page=2 HTTP/1.1\r\nHost: bench.test:${upPort}\r\n` +
    `User-Agent: bench/1\r\nAccept: application/json\r\n\r\n`,
);

/** One keep-alive client connection that sends a GET and reads its small response. */
class Client {
  readonly #conn: Deno.TcpConn;
  readonly #buf = new Uint8Array(16 * 1024);
  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
  }
  static async open(port: number): Promise<Client> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.setNoDelay(true);
    return new Client(conn);
  }
  async get(): Promise<void> {
    for (let at = 0; at < REQUEST.length;) at += await this.#conn.write(REQUEST.subarray(at));
    let have = 0;
    while (true) {
      const n = await this.#conn.read(this.#buf.subarray(have));
      if (n === null) throw new Error("the server closed the connection");
      have += n;
      const text = dec.decode(this.#buf.subarray(0, have));
      const end = text.indexOf("\r\n\r\n");
      if (end < 0) continue;
      const len = Number(/content-length: *(\d+)/i.exec(text)?.[1] ?? "0");
      if (have < end + 4 + len) continue;
      if (!text.startsWith("HTTP/1.1 200")) throw new Error(text.split("\r\n")[0]);
      return;
    }
  }
  close(): void {
    this.#conn.close();
  }
}

const VARIANTS = { sluice: sluiceServer.addr.port, minimal: minimalServer.addr.port };
type Variant = keyof typeof VARIANTS;

/**
 * Sends `total` requests on `conns` connections; returns wall-clock and CPU (user + system) µs
 * per request. The CPU figure is the one to compare on a shared machine: other processes stretch
 * the wall clock, not this process's CPU time.
 */
async function run(
  variant: Variant,
  conns: number,
  total: number,
): Promise<{ wall: number; cpu: number; main: number }> {
  const clients = await Promise.all(
    Array.from({ length: conns }, () => Client.open(VARIANTS[variant])),
  );
  // Warm the connections (and the upstream pool) before the clock starts.
  await Promise.all(clients.map((c) => c.get()));
  const each = Math.ceil(total / conns);
  const t0 = performance.now();
  const c0 = cpuUsage();
  const m0 = mainThreadUs();
  await Promise.all(clients.map(async (c) => {
    for (let i = 0; i < each; i++) await c.get();
  }));
  const c1 = cpuUsage(c0);
  const main = (mainThreadUs() - m0) / (each * conns);
  const wall = (performance.now() - t0) * 1000 / (each * conns);
  const cpu = (c1.user + c1.system) / (each * conns);
  for (const c of clients) c.close();
  return { wall, cpu, main };
}

/** CPU time of this process's main (JS) thread so far, in µs (Linux: /proc, 10 ms ticks). */
function mainThreadUs(): number {
  const stat = Deno.readTextFileSync(`/proc/self/task/${Deno.pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
  return (Number(fields[11]) + Number(fields[12])) * 10_000;
}

/**
 * Where a variant's requests allocate: V8's sampling heap profiler over `total` requests on 16
 * connections, counting objects minor and major GCs collected too (what a request throws away is
 * what its scavenges cost), as bytes per request by allocating function.
 */
async function allocations(variant: Variant, total: number): Promise<string> {
  const { Session } = await import("node:inspector/promises");
  const session = new Session();
  session.connect();
  await session.post("HeapProfiler.enable");
  await session.post("HeapProfiler.startSampling", {
    samplingInterval: 256,
    includeObjectsCollectedByMajorGC: true,
    includeObjectsCollectedByMinorGC: true,
  });
  await run(variant, 16, total);
  const { profile } = await session.post("HeapProfiler.stopSampling");
  session.disconnect();
  type Node = {
    callFrame: { functionName: string; url: string; lineNumber: number };
    selfSize: number;
    children: Node[];
  };
  const bySite = new Map<string, number>();
  let sum = 0;
  const name = (f: Node["callFrame"]) =>
    `${f.functionName || "(anonymous)"} ${f.url.replace(/^.*\/main\//, "")}:${f.lineNumber + 1}`;
  const walk = (n: Node, parent = "") => {
    const f = n.callFrame;
    // A builtin or an op is named with its caller: "Set :0" alone says little.
    const own = name(f);
    const site = f.url === "" || f.url.startsWith("ext:") ? `${own} < ${parent}` : own;
    bySite.set(site, (bySite.get(site) ?? 0) + n.selfSize);
    sum += n.selfSize;
    for (const c of n.children) walk(c, f.url === "" || f.url.startsWith("ext:") ? parent : own);
  };
  walk(profile.head as Node);
  const rows = [...bySite].sort((a, b) => b[1] - a[1]).slice(0, 30);
  return [
    `${variant}: ${(sum / total).toFixed(0)} bytes allocated per request (sampled)`,
    ...rows.map(([site, bytes]) => `  ${(bytes / total).toFixed(0).padStart(6)}  ${site}`),
  ].join("\n");
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

async function stop(): Promise<void> {
  shutdown.abort();
  await sluiceServer.shutdown();
  await minimalServer.shutdown();
  await upstream.shutdown();
  sluicePool.close();
  minimalPool.close();
  await audit.close();
  await Deno.remove(dir, { recursive: true });
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      requests: { type: "string", default: "20000" },
      rounds: { type: "string", default: "5" },
      conns: { type: "string", default: "1,16" },
      only: { type: "string" },
      direct: { type: "boolean" },
      "heap-prof": { type: "boolean" },
    },
  });
  const total = Number(values.requests);
  const rounds = Number(values.rounds);
  const variants: Variant[] = values.only ? [values.only as Variant] : ["minimal", "sluice"];
  // JIT warm-up for both handlers, not counted.
  for (const v of variants) await run(v, 4, 4000);
  if (values["heap-prof"]) {
    for (const v of variants) console.log(await allocations(v, total));
    await stop();
    Deno.exit(0);
  }
  for (const conns of values.conns.split(",").map(Number)) {
    const results = new Map<Variant, { wall: number; cpu: number; main: number }[]>(
      variants.map((v) => [v, []]),
    );
    for (let r = 0; r < rounds; r++) {
      for (const v of variants) results.get(v)!.push(await run(v, conns, total));
    }
    const fmt = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(" ");
    for (const v of variants) {
      const wall = results.get(v)!.map((x) => x.wall);
      const cpu = results.get(v)!.map((x) => x.cpu);
      const main = results.get(v)!.map((x) => x.main);
      console.log(
        `${v.padEnd(8)} conns=${String(conns).padEnd(3)} µs/req wall median ${
          median(wall).toFixed(1)
        } (${fmt(wall)}), cpu median ${median(cpu).toFixed(1)} (${fmt(cpu)}), main thread ${
          median(main).toFixed(1)
        } (${fmt(main)})`,
      );
    }
    if (variants.length === 2) {
      const diff = (k: "wall" | "cpu" | "main") =>
        median(results.get("sluice")!.map((s, i) => s[k] - results.get("minimal")![i][k]));
      console.log(
        `sluice's layer conns=${conns}: wall ${diff("wall").toFixed(1)} µs/req, cpu ${
          diff("cpu").toFixed(1)
        } µs/req, main thread ${diff("main").toFixed(1)} µs/req (medians of per-round differences)`,
      );
    }
  }
  console.log(
    `upstream connections: sluice ${JSON.stringify(sluicePool.stats())}, minimal ${
      JSON.stringify(minimalPool.stats())
    }`,
  );
  await stop();
} else {
  const one = {
    sluice: await Client.open(VARIANTS.sluice),
    minimal: await Client.open(VARIANTS.minimal),
  };
  for (let i = 0; i < 500; i++) {
    await one.sluice.get();
    await one.minimal.get();
  }
  Deno.bench("keep-alive GET, minimal proxy (pool.request only)", {
    group: "request-path",
    baseline: true,
  }, async () => {
    await one.minimal.get();
  });
  Deno.bench(
    "keep-alive GET through sluice's request handler",
    { group: "request-path" },
    async () => {
      await one.sluice.get();
    },
  );
  globalThis.addEventListener("unload", () => {
    one.sluice.close();
    one.minimal.close();
  });
}

/**
 * The floor of sluice's design, as a system of its own in bench/peers.sh (row "floor"): the
 * issue's minimal Deno proxy, with nothing of sluice's policy, credentials, audit or metrics.
 *
 * - a resolver-backed `Deno.listenTls`, served by Deno's native HTTP server
 *   (`serveHttpOnListener`), as sluice's direct data path is: the resolver answers each name
 *   from sluice's leaf cache, minted from the bench CA on its first handshake;
 * - each request forwarded to one upstream, unchanged but for the hop-by-hop fields, either
 *   through sluice's own {@link UpstreamPool} (`FLOOR_UPSTREAM=pool`, the default) or through
 *   Deno's `fetch` (`FLOOR_UPSTREAM=fetch`: hyper and rustls in Rust, to see whether another
 *   upstream client would lift the floor).
 *
 * Whatever sluice measures above this row is sluice's own layer; whatever this row measures
 * against squid is what Deno's HTTP server, rustls and the upstream client leave to any proxy
 * built this way, on this machine, in the same run.
 *
 *     deno run -A bench/lib/floor_proxy.ts --listen 127.0.0.1:15443 --upstream 192.0.2.10:443 \
 *         --ca-cert ca.pem --ca-key ca.key
 *
 * @module
 */
import { parseArgs } from "node:util";
import { removeHopByHop } from "../../lib/http1/response.ts";
import { loadCa } from "../../lib/tls/ca.ts";
import { LeafCache } from "../../lib/tls/leaf_cache.ts";
import { listenTlsWithResolver, serveHttpOnListener } from "../../lib/tls/deno_internal.ts";
import { setListenerNoDelay } from "../../lib/tls/sockopt.ts";
import { UpstreamPool } from "../../lib/upstream/client.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    listen: { type: "string" },
    upstream: { type: "string" },
    "ca-cert": { type: "string" },
    "ca-key": { type: "string" },
  },
});
const usage = "usage: floor_proxy.ts --listen HOST:PORT --upstream ADDRESS:PORT " +
  "--ca-cert PEM --ca-key PEM";
if (!values.listen || !values.upstream || !values["ca-cert"] || !values["ca-key"]) {
  console.error(usage);
  Deno.exit(2);
}
const mode = Deno.env.get("FLOOR_UPSTREAM") ?? "pool";
if (mode !== "pool" && mode !== "fetch") {
  console.error(`FLOOR_UPSTREAM must be "pool" or "fetch", got "${mode}"`);
  Deno.exit(2);
}
const [listenHost, listenPort] = values.listen.split(":");
const [upAddress, upPort] = values.upstream.split(":");

const ca = await loadCa(values["ca-cert"], values["ca-key"]);
const caPem = await Deno.readTextFile(values["ca-cert"]);
// sluice's own leaf cache: a leaf per name, minted on its first handshake (Deno asks once per
// name anyway; minting is not what this row measures).
const leaves = new LeafCache(ca);

/** Host besides the hop-by-hop fields: the pool writes the target's. */
const NOT_FORWARDED: ReadonlySet<string> = new Set(["host"]);

const pool = new UpstreamPool();
const client = Deno.createHttpClient({ caCerts: [caPem] });

async function viaPool(req: Request): Promise<Response> {
  const url = new URL(req.url);
  // forEach, not for-of: Deno 2.9's Headers iterator re-sorts on every step.
  const fields: [string, string][] = [];
  req.headers.forEach((v, n) => void fields.push([n, v]));
  const headers = removeHopByHop(fields, undefined, NOT_FORWARDED);
  const up = await pool.request(
    {
      host: url.hostname,
      port: Number(upPort),
      address: upAddress,
      tls: true,
      verify: true,
      caCerts: [caPem],
    },
    { method: req.method, path: url.pathname + url.search, headers, body: req.body },
  );
  return new Response(up.whole ?? up.body, { status: up.status, headers: up.headers });
}

async function viaFetch(req: Request): Promise<Response> {
  const url = new URL(req.url);
  const up = await fetch(`https://${url.hostname}:${upPort}${url.pathname}${url.search}`, {
    method: req.method,
    headers: req.headers,
    body: req.body,
    client,
  });
  return new Response(up.body, { status: up.status, headers: up.headers });
}

const listener = listenTlsWithResolver({
  hostname: listenHost,
  port: Number(listenPort),
  alpnProtocols: ["http/1.1"],
  resolver: (name) => leaves.lookup(name),
});
setListenerNoDelay(listener);
const handler = mode === "pool" ? viaPool : viaFetch;
serveHttpOnListener(
  listener,
  (req) => handler(req),
  (e) => new Response(`floor: ${(e as Error)?.message ?? e}\n`, { status: 502 }),
);
console.error(`floor proxy (${mode}) on ${values.listen}, upstream ${values.upstream}`);
// Exit on SIGTERM (bench/peers.sh stops systems with it), so `--cpu-prof` writes its profile.
Deno.addSignalListener("SIGTERM", () => Deno.exit(0));

/**
 * The "1,000 distinct SNI names" client of bench/peers.sh: one HTTPS request to each of
 * n0..n{N-1}.<domain>, each over a fresh TLS connection (a fresh Deno.createHttpClient per
 * name, so nothing is pooled or resumed), C requests in flight. Through a proxy that mints
 * certificates, this first pass is leaf minting under load.
 *
 *   deno run --allow-net --allow-read sni_client.ts NAMES CONCURRENCY CA_PEM DOMAIN PATH
 *
 * Prints one JSON line: requests, errors, seconds, rps, p50_ms, p99_ms, bytes.
 *
 * @module
 */
import { percentile } from "./percentile.ts";

const [namesArg = "1000", concArg = "16", caPath = "", domain = "bench.test", path = "/ok"] =
  Deno.args;
const names = Number(namesArg);
const concurrency = Number(concArg);
const caCerts = caPath ? [Deno.readTextFileSync(caPath)] : undefined;

const latencies: number[] = [];
let errors = 0;
let bytes = 0;
let firstError = "";
let next = 0;

async function one(i: number): Promise<void> {
  // HTTP/1.1 only, as wrk: the comparison is per TLS connection, not HTTP/2 multiplexing.
  const client = Deno.createHttpClient({ caCerts, http2: false, poolMaxIdlePerHost: 0 });
  const t0 = performance.now();
  try {
    const res = await fetch(`https://n${i}.${domain}${path}`, { client });
    const body = new Uint8Array(await res.arrayBuffer());
    if (res.status !== 200) throw new Error(`status ${res.status}`);
    bytes += body.length;
    latencies.push(performance.now() - t0);
  } catch (e) {
    errors++;
    if (!firstError) firstError = `n${i}.${domain}: ${(e as Error).message}`;
  } finally {
    client.close();
  }
}

async function worker(): Promise<void> {
  while (next < names) await one(next++);
}

const start = performance.now();
await Promise.all(Array.from({ length: concurrency }, worker));
const seconds = (performance.now() - start) / 1000;
latencies.sort((a, b) => a - b);
const pct = (p: number): number => percentile(latencies, p);
console.log(JSON.stringify({
  requests: latencies.length,
  errors,
  seconds: +seconds.toFixed(3),
  rps: +(latencies.length / seconds).toFixed(1),
  p50_ms: +pct(0.5).toFixed(2),
  p99_ms: +pct(0.99).toFixed(2),
  bytes,
  first_error: firstError || undefined,
}));

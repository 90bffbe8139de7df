/**
 * The fixed-rate latency client of bench/peers.sh: RATE requests per second in all, spread over
 * CONNS keep-alive HTTPS connections, for SECONDS. At a rate well below every system's capacity
 * the latency is the system's own, not its queue (wrk's closed loop at full load measures
 * concurrency / throughput instead).
 *
 * Latency is measured from when a request was SCHEDULED, not when it was sent, so a stalled
 * connection counts its backlog (no coordinated omission). Raw HTTP/1.1 over Deno.connectTls,
 * one request in flight per connection.
 *
 *   deno run --allow-net --allow-read rate_client.ts HOST PORT NAME CA_PEM PATH RATE CONNS SECONDS
 *
 * Prints one JSON line: requests, errors, seconds, p50_ms, p90_ms, p99_ms, max_ms.
 *
 * @module
 */
import { percentile } from "./percentile.ts";

const [
  host,
  portArg,
  name,
  caPath,
  path = "/ok",
  rateArg = "1000",
  connsArg = "16",
  secsArg = "10",
] = Deno.args;
const rate = Number(rateArg);
const conns = Number(connsArg);
const seconds = Number(secsArg);
const caCerts = [Deno.readTextFileSync(caPath)];
const request = new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: ${name}\r\n\r\n`);

const latencies: number[] = [];
let errors = 0;
let firstError = "";

/** Reads one response with a Content-Length body (what the benchmark's nginx sends). */
async function readResponse(conn: Deno.Conn, buf: Uint8Array): Promise<void> {
  let have = 0;
  while (true) {
    const n = await conn.read(buf.subarray(have));
    if (n === null) throw new Error("connection closed");
    have += n;
    const text = new TextDecoder().decode(buf.subarray(0, have));
    const end = text.indexOf("\r\n\r\n");
    if (end < 0) continue;
    if (!text.startsWith("HTTP/1.1 200")) throw new Error(text.split("\r\n")[0]);
    const m = /\r\ncontent-length:\s*(\d+)/i.exec(text.slice(0, end));
    if (m === null) throw new Error("no content-length");
    if (have >= end + 4 + Number(m[1])) return;
  }
}

async function connection(index: number, start: number): Promise<void> {
  const tcp = await Deno.connect({ hostname: host, port: Number(portArg) });
  tcp.setNoDelay(true);
  const tls = await Deno.startTls(tcp, { hostname: name, caCerts });
  const buf = new Uint8Array(64 * 1024);
  // Connection i sends requests i, i + conns, i + 2 * conns, ...: together, one every 1/rate s.
  const interval = (1000 * conns) / rate;
  const total = Math.floor((rate * seconds) / conns);
  try {
    for (let k = 0; k < total; k++) {
      const due = start + (index * 1000) / rate + k * interval;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      try {
        for (let at = 0; at < request.length;) at += await tls.write(request.subarray(at));
        await readResponse(tls, buf);
        latencies.push(performance.now() - due);
      } catch (e) {
        errors++;
        firstError ||= (e as Error).message;
        return;
      }
    }
  } finally {
    tls.close();
  }
}

// The connections are set up in the 500 ms before the first request is due: handshakes are
// not what this measures.
const start = performance.now() + 500;
await Promise.all(Array.from({ length: conns }, (_, i) => connection(i, start)));
latencies.sort((a, b) => a - b);
const pct = (p: number): number => percentile(latencies, p);
console.log(JSON.stringify({
  requests: latencies.length,
  errors,
  seconds,
  rate,
  p50_ms: +pct(0.5).toFixed(3),
  p90_ms: +pct(0.9).toFixed(3),
  p99_ms: +pct(0.99).toFixed(3),
  max_ms: +(latencies.at(-1) ?? 0).toFixed(3),
  first_error: firstError || undefined,
}));

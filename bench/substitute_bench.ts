/**
 * Cost of credential brokering on the data path: `deno bench --allow-all
 * bench/substitute_bench.ts`. The head benches run on every request; the body
 * benches move 1 MiB per iteration, so MiB/s = 1 / (time per iteration in seconds).
 */
import { makeBroker } from "../lib/credentials/broker.ts";
import { SecretValue } from "../lib/credentials/secrets.ts";
import type { Credential } from "../policy/types.ts";

const loc = { file: "p.yaml", line: 1, col: 1 };
const names = ["OPENAI_API_KEY", "NPM_TOKEN", "GH_TOKEN", "ANTHROPIC_API_KEY"];
const creds: Credential[] = names.map((name) => ({
  name,
  loc,
  kind: "static",
  from: { kind: "env", name },
  hosts: [{ pattern: { kind: "exact", name: "api.example.com" }, port: null, source: "x", loc }],
  in: ["header", "query", "path", "body"],
  onViolation: "block",
}));
const placeholders = new Map(
  names.map((
    n,
    i,
  ) => [n, `sluice-${n.toLowerCase().replaceAll("_", "-")}-${"abcd"[i].repeat(26)}`]),
);
const secrets = new Map(
  names.map((n, i) => [n, new SecretValue(n, `real-${i}-secret-value-0123`)]),
);
const broker = makeBroker(creds, placeholders, secrets);
const ph = placeholders.get("OPENAI_API_KEY")!;

/** A browser-sized request head: 14 fields, a cookie, a bearer token. */
const HEADERS: [string, string][] = [
  ["Host", "app.example.test"],
  [
    "User-Agent",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0",
  ],
  ["Accept", "application/json, text/plain, */*"],
  ["Accept-Language", "en-US,en;q=0.9"],
  ["Accept-Encoding", "gzip, deflate, br, zstd"],
  ["Referer", "https://app.example.test/items"],
  ["Origin", "https://app.example.test"],
  ["Cookie", `session=${"a1b2c3d4".repeat(24)}; theme=dark; consent=yes`],
  ["Sec-Fetch-Dest", "empty"],
  ["Sec-Fetch-Mode", "cors"],
  ["Sec-Fetch-Site", "same-origin"],
  ["Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"],
  ["X-Request-Id", "0f8fad5b-d9cb-469f-a165-70867728950e"],
  ["Content-Length", "0"],
];
const HEADERS_WITH_PH: [string, string][] = HEADERS.map(([n, v]) =>
  n === "Authorization" ? [n, `Bearer ${ph}`] : [n, v]
);
const TARGET = "/api/v1/items?page=2&sort=desc";

Deno.bench("scanRequest, browser head, no placeholder", { group: "head", baseline: true }, () => {
  broker.scanRequest(TARGET, HEADERS);
});
Deno.bench("scanRequest, browser head, one Bearer placeholder", { group: "head" }, () => {
  broker.scanRequest(TARGET, HEADERS_WITH_PH);
});
Deno.bench("rewriteRequest, browser head, no placeholder", { group: "head" }, () => {
  broker.rewriteRequest(TARGET, HEADERS, names);
});
Deno.bench("rewriteRequest, browser head, one Bearer placeholder", { group: "head" }, () => {
  broker.rewriteRequest(TARGET, HEADERS_WITH_PH, names);
});

// 1 MiB of JSON-ish text, with one placeholder (or secret) per 64 KiB, in 64 KiB chunks.
const MiB = 1 << 20;
const enc = new TextEncoder();
function body(token: string): Uint8Array[] {
  const filler = JSON.stringify({
    text: "The quick brown fox jumps over the lazy dog. ".repeat(2000),
  });
  const chunk = enc.encode(
    `${filler.slice(0, 65536 - token.length - 2)}"${token}"`.slice(0, 65536),
  );
  return Array.from({ length: MiB / 65536 }, () => chunk);
}
const REQUEST = body(ph);
const RESPONSE = body(secrets.get("OPENAI_API_KEY")!.reveal());
const NO_MATCH = body("nothing to see here");

async function drain(chunks: Uint8Array[], ts: TransformStream<Uint8Array, Uint8Array>) {
  const reader = ReadableStream.from(chunks).pipeThrough(ts).getReader();
  for (;;) if ((await reader.read()).done) return;
}

Deno.bench(
  "requestBodyStream, 1 MiB, 16 placeholders",
  { group: "body", baseline: true },
  async () => {
    await drain(REQUEST, broker.requestBodyStream(names)!);
  },
);
Deno.bench("requestBodyStream, 1 MiB, no placeholder", { group: "body" }, async () => {
  await drain(NO_MATCH, broker.requestBodyStream(names)!);
});
Deno.bench("responseBodyStream, 1 MiB, 16 secrets to scrub", { group: "body" }, async () => {
  await drain(RESPONSE, broker.responseBodyStream([["Content-Type", "application/json"]], names)!);
});
Deno.bench(
  "identity TransformStream, 1 MiB (the stream machinery alone)",
  { group: "body" },
  async () => {
    await drain(NO_MATCH, new TransformStream());
  },
);
const REQUEST_BUFFERED = new Uint8Array(MiB);
REQUEST.forEach((c, i) => REQUEST_BUFFERED.set(c, i * 65536));
Deno.bench("rewriteBody, 1 MiB buffered, 16 placeholders", { group: "body" }, () => {
  broker.rewriteBody(REQUEST_BUFFERED, names);
});

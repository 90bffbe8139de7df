/**
 * Cost of response scrubbing per MiB: `deno bench --allow-all bench/scrub_bench.ts`. Every
 * bench moves 1 MiB of response body per iteration (16 chunks of 64 KiB, as the upstream
 * client hands them over), so MiB/s = 1 / (time per iteration in seconds). The policy has four
 * credentials (about 20 patterns: raw, base64 / base64url at three alignments, text forms).
 *
 * Groups: `identity` (a body that is not content-encoded) and `gzip` (decoded, scrubbed and
 * sent as identity), each against the stream machinery alone as the baseline.
 */
import * as zlib from "node:zlib";
import { decodeStream, Scrubber, scrubResponse } from "../lib/credentials/scrub.ts";

const MiB = 1 << 20;
const CHUNK = 64 * 1024;
const enc = new TextEncoder();

const pairs = ["OPENAI_API_KEY", "NPM_TOKEN", "GH_TOKEN", "ANTHROPIC_API_KEY"].map((n, i) => ({
  secret: `real-${i}-secret-value-0123456789`,
  placeholder: `sluice-${n.toLowerCase().replaceAll("_", "-")}-${"abcd"[i].repeat(26)}`,
}));
const scrubber = new Scrubber(pairs);

function chunks(bytes: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += CHUNK) out.push(bytes.subarray(i, i + CHUNK));
  return out;
}

/** 1 MiB of JSON-ish text; `token` (if any) once per 64 KiB. */
function text(token: string): Uint8Array {
  const filler = JSON.stringify({
    text: "The quick brown fox jumps over the lazy dog. ".repeat(2000),
  });
  const out = new Uint8Array(MiB);
  for (let i = 0; i < MiB / CHUNK; i++) {
    const piece = enc.encode(`${filler.slice(0, CHUNK - token.length - 2)}"${token}"`);
    out.set(piece.subarray(0, CHUNK), i * CHUNK);
  }
  return out;
}

/** 1 MiB of incompressible bytes (an archive, an image). */
function noise(): Uint8Array {
  const out = new Uint8Array(MiB);
  let x = 1;
  for (let i = 0; i < MiB; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

/** 1 MiB of base64 text (a blob in JSON): the worst case for the base64 patterns. */
function base64Text(): Uint8Array {
  const raw = noise();
  let s = "";
  for (let i = 0; i < raw.length && s.length < MiB; i += 3 * 4096) {
    s += btoa(String.fromCharCode(...raw.subarray(i, i + 3 * 4096)));
  }
  return enc.encode(s.slice(0, MiB));
}

const PLAIN = chunks(text("nothing to see here"));
const SECRETS = chunks(text(pairs[0].secret)); // 16 raw values to replace
const BASE64_SECRETS = chunks(text(btoa(`user:${pairs[1].secret}`))); // 16 Basic echoes
const NOISE = chunks(noise());
const BLOB = chunks(base64Text());
const WHOLE = text("nothing to see here");

async function drain(readable: ReadableStream<Uint8Array>): Promise<void> {
  const reader = readable.getReader();
  for (;;) if ((await reader.read()).done) return;
}

const through = (cs: Uint8Array[], ts: TransformStream<Uint8Array, Uint8Array>) =>
  drain(ReadableStream.from(cs).pipeThrough(ts));

Deno.bench("identity: stream machinery alone (baseline)", {
  group: "identity",
  baseline: true,
}, async () => {
  await through(PLAIN, new TransformStream());
});
Deno.bench("identity: scrub stream, text, nothing found", { group: "identity" }, async () => {
  await through(PLAIN, scrubber.stream());
});
Deno.bench("identity: scrub stream, text, 16 raw values replaced", {
  group: "identity",
}, async () => {
  await through(SECRETS, scrubber.stream());
});
Deno.bench("identity: scrub stream, text, 16 base64 values patched", {
  group: "identity",
}, async () => {
  await through(BASE64_SECRETS, scrubber.stream());
});
Deno.bench("identity: scrub stream, binary noise", { group: "identity" }, async () => {
  await through(NOISE, scrubber.stream());
});
Deno.bench("identity: scrub stream, base64 blob", { group: "identity" }, async () => {
  await through(BLOB, scrubber.stream());
});
Deno.bench("identity: scrub whole buffer (bytes), text, nothing found", {
  group: "identity",
}, () => {
  scrubber.bytes(WHOLE);
});

const GZIP_TEXT = chunks(new Uint8Array(zlib.gzipSync(text("nothing to see here"))));
const GZIP_NOISE = chunks(new Uint8Array(zlib.gzipSync(noise())));

Deno.bench("gzip: pass through coded (no credentials, baseline)", {
  group: "gzip",
  baseline: true,
}, async () => {
  await through(GZIP_TEXT, new TransformStream());
});
Deno.bench("gzip: decode only, text", { group: "gzip" }, async () => {
  await drain(decodeStream(ReadableStream.from(GZIP_TEXT), "gzip"));
});
Deno.bench("gzip: decode and scrub, text", { group: "gzip" }, async () => {
  await drain(decodeStream(ReadableStream.from(GZIP_TEXT), "gzip").pipeThrough(scrubber.stream()));
});
Deno.bench("gzip: decode and scrub, binary noise", { group: "gzip" }, async () => {
  await drain(
    decodeStream(ReadableStream.from(GZIP_NOISE), "gzip").pipeThrough(scrubber.stream()),
  );
});
Deno.bench("gzip: scrubResponse (headers, decode, scrub), text", { group: "gzip" }, async () => {
  const r = await scrubResponse(scrubber, {
    status: 200,
    reason: "OK",
    headers: [["Content-Type", "application/json"], ["Content-Encoding", "gzip"]],
    body: ReadableStream.from(GZIP_TEXT),
  }, false);
  if (!r.ok || !(r.body instanceof ReadableStream)) throw new Error("unexpected");
  await drain(r.body);
});

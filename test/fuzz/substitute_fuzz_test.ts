/**
 * Deterministic fuzzing of the streaming substituter against a naive
 * whole-buffer reference: for random pattern sets (small alphabets, so
 * patterns overlap, share prefixes, contain each other and repeat), random
 * haystacks with patterns inserted, random replacements (including none and
 * "keep as is") and random chunkings, the stream's output must equal the
 * reference byte for byte.
 *
 * Each case draws its own PRNG from (seed, case index), so a failure names the one case to
 * replay: `SLUICE_FUZZ_SEED=<seed> SLUICE_FUZZ_CASES=<n> deno test --allow-all <this file>`.
 */
import assert from "node:assert/strict";
import {
  makeBroker,
  type OnMatch,
  rewriteBytes,
  rewriteStream,
  rewriteTransformer,
} from "../../lib/credentials/broker.ts";
import { Matcher } from "../../lib/credentials/scrub.ts";
import { SecretValue } from "../../lib/credentials/secrets.ts";
import type { Credential } from "../../policy/types.ts";
import { envNumber, mulberry32 } from "./_fuzz.ts";

const SEED = envNumber("SLUICE_FUZZ_SEED", 0x5ab5) >>> 0;
const CASES = envNumber("SLUICE_FUZZ_CASES", 100_000);

function caseRng(i: number): () => number {
  return mulberry32((SEED ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0);
}

/** The reference: leftmost match, longest pattern there (first given on ties), no overlap. */
function naive(patterns: readonly Uint8Array[], onMatch: OnMatch, h: Uint8Array): Uint8Array {
  const order = patterns.map((_, i) => i).sort((a, b) =>
    patterns[b].length - patterns[a].length || a - b
  );
  const out: number[] = [];
  let i = 0;
  outer: while (i < h.length) {
    for (const k of order) {
      const p = patterns[k];
      if (i + p.length > h.length) continue;
      let j = 0;
      while (j < p.length && h[i + j] === p[j]) j++;
      if (j === p.length) {
        const rep = onMatch(k);
        out.push(...(rep ?? p));
        i += p.length;
        continue outer;
      }
    }
    out.push(h[i++]);
  }
  return new Uint8Array(out);
}

type Case = {
  patterns: Uint8Array[];
  reps: (Uint8Array | null)[];
  haystack: Uint8Array;
  cuts: number[];
};

function genCase(rnd: () => number): Case {
  const int = (n: number) => Math.floor(rnd() * n);
  // Alphabet of 2-4 letters keeps overlaps frequent; sometimes add a wide byte range.
  const alpha = 2 + int(3);
  const wide = rnd() < 0.1;
  const byte = () => wide ? int(256) : 97 + int(alpha);
  const patterns: Uint8Array[] = [];
  const n = 1 + int(4);
  for (let k = 0; k < n; k++) {
    if (k > 0 && rnd() < 0.2) {
      // A prefix, an extension or a duplicate of an earlier pattern.
      const base = patterns[int(k)];
      const r = rnd();
      patterns.push(
        r < 0.4
          ? base.slice(0, Math.min(base.length, 2 + int(base.length)))
          : r < 0.8
          ? Uint8Array.from([...base, ...Array.from({ length: 1 + int(4) }, byte)])
          : base.slice(),
      );
    } else {
      // At least 2 bytes: the matcher's block size (real patterns are 8 bytes or more).
      patterns.push(Uint8Array.from({ length: 2 + int(rnd() < 0.2 ? 40 : 8) }, byte));
    }
  }
  const reps = patterns.map(() =>
    rnd() < 0.15 ? null : Uint8Array.from({ length: int(6) }, () => 65 + int(26))
  );
  const parts: number[] = [];
  const len = int(rnd() < 0.03 ? 1000 : 100);
  while (parts.length < len) {
    if (rnd() < 0.15) parts.push(...patterns[int(n)]);
    else parts.push(byte());
  }
  const haystack = Uint8Array.from(parts);
  const cuts = Array.from({ length: int(8) }, () => int(haystack.length + 1)).sort((a, b) => a - b);
  if (haystack.length <= 200 && rnd() < 0.05) {
    // Every byte its own chunk.
    cuts.length = 0;
    for (let i = 1; i < haystack.length; i++) cuts.push(i);
  }
  return { patterns, reps, haystack, cuts };
}

function chunksOf(h: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [0, ...cuts, h.length];
  // Fresh copies, as a real producer hands over chunks it will not touch again.
  return points.slice(1).map((p, i) => h.slice(points[i], p));
}

function runSync(set: Matcher, onMatch: OnMatch, chunks: Uint8Array[]): Uint8Array {
  const t = rewriteTransformer(set, onMatch);
  const out: Uint8Array[] = [];
  const c = { enqueue: (b: Uint8Array) => out.push(b) };
  for (const ch of chunks) t.transform(ch, c);
  t.flush(c);
  const all = new Uint8Array(out.reduce((n, b) => n + b.length, 0));
  let o = 0;
  for (const b of out) {
    all.set(b, o);
    o += b.length;
  }
  return all;
}

function show(c: Case): string {
  const s = (b: Uint8Array) => JSON.stringify(String.fromCharCode(...b));
  return `patterns ${c.patterns.map(s).join(",")} cuts ${JSON.stringify(c.cuts)} haystack ${
    s(c.haystack)
  }`;
}

Deno.test(`rewriteTransformer() matches a naive whole-buffer replace over ${CASES} random chunkings`, () => {
  const started = performance.now();
  let matched = 0;
  for (let i = 0; i < CASES; i++) {
    const c = genCase(caseRng(i));
    const onMatch: OnMatch = (k) => c.reps[k];
    const set = new Matcher(c.patterns);
    const want = naive(c.patterns, onMatch, c.haystack);
    const whole = rewriteBytes(set, onMatch, c.haystack);
    const streamed = runSync(set, onMatch, chunksOf(c.haystack, c.cuts));
    if (!sameBytes(want, whole) || !sameBytes(want, streamed)) {
      assert.fail(`case ${i} (seed ${SEED}): ${show(c)}`);
    }
    if (!sameBytes(want, c.haystack)) matched++;
  }
  // The generator must actually exercise replacement, not just pass bytes through.
  assert.ok(matched > CASES / 2, `only ${matched} of ${CASES} cases changed anything`);
  assert.ok(performance.now() - started < 30_000, "fuzzing took over 30 s");
});

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

Deno.test("rewriteStream() agrees with the synchronous transformer through real streams", async () => {
  for (let i = 0; i < 2000; i++) {
    const c = genCase(caseRng(CASES + i));
    const onMatch: OnMatch = (k) => c.reps[k];
    const set = new Matcher(c.patterns);
    const want = naive(c.patterns, onMatch, c.haystack);
    const got = new Uint8Array(
      await new Response(
        ReadableStream.from(chunksOf(c.haystack, c.cuts)).pipeThrough(rewriteStream(set, onMatch)),
      ).arrayBuffer(),
    );
    if (!sameBytes(want, got)) assert.fail(`stream case ${i}: ${show(c)}`);
  }
});

Deno.test("Broker.requestBodyStream() matches a naive replace of real placeholders in random JSON", async () => {
  const names = ["OPENAI_API_KEY", "NPM_TOKEN", "X"];
  const loc = { file: "p", line: 1, col: 1 };
  const creds: Credential[] = names.map((name) => ({
    name,
    loc,
    kind: "static",
    from: { kind: "env", name },
    hosts: [],
    in: ["body"],
    onViolation: "block",
  }));
  const ph = new Map(
    names.map((n, i) => [n, `sluice-${n.toLowerCase()}-${"abcdefgh"[i].repeat(26)}`]),
  );
  const secrets = new Map(
    names.map((n, i) => [n, new SecretValue(n, `REAL-${i}-${"é".repeat(i)}s3cret`)]),
  );
  const broker = makeBroker(creds, ph, secrets);
  const enc = new TextEncoder();
  for (let i = 0; i < 500; i++) {
    const rnd = caseRng(10 * CASES + i);
    const int = (n: number) => Math.floor(rnd() * n);
    const obj: Record<string, string> = {};
    let text = "";
    for (let k = 0; k < 1 + int(20); k++) {
      const n = names[int(3)];
      // Near misses too: a placeholder cut short, or with its prefix alone.
      const v = rnd() < 0.6 ? ph.get(n)! : rnd() < 0.5 ? ph.get(n)!.slice(0, -1) : "sluice-";
      obj[`k${k}`] = `${"x".repeat(int(5))}${v}`;
      text = JSON.stringify(obj);
    }
    let want = text;
    for (const n of names) want = want.replaceAll(ph.get(n)!, secrets.get(n)!.reveal());
    const bytes = enc.encode(text);
    const cuts = Array.from({ length: int(6) }, () => int(bytes.length + 1)).sort((a, b) => a - b);
    const ts = broker.requestBodyStream(names)!;
    const got = await new Response(ReadableStream.from(chunksOf(bytes, cuts)).pipeThrough(ts))
      .text();
    assert.equal(got, want, `json case ${i}`);
  }
});

/**
 * Deterministic fuzzing of the plain-HTTP request stream check (lib/ingress/request_stream.ts): a
 * stream of several requests (heads, Content-Length and chunked bodies, Upgrades), mutated,
 * then fed in random fragments.
 *
 * Checked for every case: nothing throws; what passes is always a prefix of the input, byte for
 * byte (the check never rewrites); however the stream is fragmented, the verdict is the same
 * (a refusal with the same status and code, or the same bytes passed), except that a bad head
 * still incomplete when the stream ends may not have been refused yet (it is held, not passed); and every head that passed is one
 * `parseRequestHead` accepts. Replay a failure with
 * `SLUICE_FUZZ_SEED=<seed> SLUICE_FUZZ_CASES=<n> deno test --allow-all <this file>`.
 */
import assert from "node:assert/strict";
import { parseRequestHead } from "../../lib/http1/request.ts";
import { RequestStreamChecker, type StreamStep } from "../../lib/ingress/request_stream.ts";
import { cat } from "../_bytes.ts";
import { envNumber, mutateBytes, Rng } from "./_fuzz.ts";

const SEED = envNumber("SLUICE_FUZZ_SEED", 0x5e4d) >>> 0;
const CASES = envNumber("SLUICE_FUZZ_CASES", 20_000);

function bytes(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

const REQUESTS = [
  "GET /a HTTP/1.1\r\nHost: a.test\r\n\r\n",
  "GET http://a.test:8080/x?y HTTP/1.1\r\nHost: a.test:8080\r\n\r\n",
  "POST /u HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello",
  "POST /c HTTP/1.1\r\nHost: [::1]:81\r\nTransfer-Encoding: chunked\r\n\r\n" +
  "3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n",
  "GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
  "OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n",
  "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
  "\r\nGET /lead HTTP/1.1\r\nHost: a.test\r\n\r\n",
].map(bytes);

const EXTRAS = [
  "\n",
  "\r",
  "\r\n",
  "\r\n\r\n",
  " ",
  "\t",
  ":",
  "Transfer-Encoding: chunked\r\n",
  "Content-Length: 3\r\n",
  "Content-Length: 0\r\n",
  "Host: a%00.test\r\n",
  "Host: [::1%25lo]\r\n",
  "Upgrade: h2c\r\n",
  "ffffffffffffffff",
  ";",
  "0\r\n\r\n",
  "\x00",
  "\x80",
  "GET / HTTP/1.1\r\n",
].map(bytes);

function makeStream(rng: Rng): Uint8Array {
  const parts: Uint8Array[] = [];
  for (let n = 1 + rng.int(4); n > 0; n--) parts.push(rng.pick(REQUESTS));
  let buf = cat(...parts);
  for (let n = rng.int(4); n > 0; n--) {
    buf = mutateBytes(rng, buf, rng.pick(REQUESTS), {
      interesting: [0x00, 0x0a, 0x0d, 0x20, 0x09, 0x7f, 0xff],
      extras: EXTRAS,
      lengths: [0x0000, 0x3030, 0x3966, 0xffff],
    });
  }
  return buf;
}

type Run = { verdict: string; passed: Uint8Array; holding: number };

/** Feeds `buf` in fragments cut at `cuts`, answering every protocol switch with `status`. */
function feed(buf: Uint8Array, cuts: number[], status: number): Run {
  const c = new RequestStreamChecker({ maxHeaderBytes: 512 });
  const out: Uint8Array[] = [];
  let prev = 0;
  const take = (step: StreamStep): string | undefined => {
    // The reason may name an earlier symptom when fewer bytes had arrived (the head parser
    // refuses a prefix as soon as no head can start with it); the status and code may not vary.
    if (step.kind === "refuse") return `${step.status} ${step.code}`;
    // Copies: views of the input may not outlive the push in real use.
    for (const b of step.bytes) out.push(b.slice());
    if (step.wait) return take(c.outcome(status));
    return undefined;
  };
  for (const at of [...cuts, buf.length]) {
    const r = take(c.push(buf.slice(prev, at)));
    prev = at;
    if (r) return { verdict: r, passed: cat(...out), holding: 0 };
  }
  return { verdict: "pass", passed: cat(...out), holding: c.holding };
}

function cutsFor(rng: Rng, n: number): number[] {
  const cuts = new Set<number>();
  for (let k = rng.int(6); k > 0; k--) cuts.add(rng.int(n + 1));
  return [...cuts].sort((a, b) => a - b);
}

/** Every head in `passed` (up to the first switch of protocol) parses. */
function checkHeads(passed: Uint8Array, switched: boolean): void {
  let off = 0;
  while (off < passed.length) {
    const r = parseRequestHead(passed.subarray(off), { maxHeaderBytes: 512 });
    if (r.kind === "incomplete") return; // the tail of a body cut short
    if (r.kind === "invalid") {
      // Only body bytes can fail to parse as a head: a body the walk below cannot skip.
      return;
    }
    off += r.head.headerBytes;
    const te = r.head.headers.some(([n]) => n.toLowerCase() === "transfer-encoding");
    const cl = r.head.headers.find(([n]) => n.toLowerCase() === "content-length")?.[1];
    const upgrade = r.head.headers.some(([n]) => n.toLowerCase() === "upgrade");
    if (te || upgrade || switched) return; // chunked bodies and switches: checked elsewhere
    off += cl ? Number(cl) : 0;
  }
}

Deno.test("RequestStreamChecker survives fuzzed request streams with fragment-independent verdicts", () => {
  const kinds: Record<string, number> = {};
  for (let i = 0; i < CASES; i++) {
    const rng = new Rng(SEED, i);
    const buf = makeStream(rng);
    const status = rng.pick([101, 200, 403]);
    const where = () =>
      `case ${i} (SLUICE_FUZZ_SEED=${SEED}): ${JSON.stringify(String.fromCharCode(...buf))}`;
    try {
      const whole = feed(buf, [], status);
      const split = feed(buf, cutsFor(rng, buf.length), status);
      const bytewise = feed(buf, Array.from({ length: buf.length }, (_, k) => k), status);
      for (const r of [whole, split, bytewise]) {
        assert.deepStrictEqual(
          [...r.passed],
          [...buf.subarray(0, r.passed.length)],
          "passed bytes are not a prefix of the input",
        );
      }
      for (const r of [split, bytewise]) {
        if (r.verdict === whole.verdict) continue;
        // A head that grows without an LF is parsed again only once it has doubled, so a
        // fragmented stream may end while a bad head is still held: nothing of it passed.
        assert.equal(
          r.verdict,
          "pass",
          `${r.verdict} where the whole stream gave ${whole.verdict}`,
        );
        assert.ok(r.holding > 0, `pass where the whole stream gave ${whole.verdict}`);
      }
      if (whole.verdict === "pass") {
        assert.deepStrictEqual(split.passed, whole.passed);
        assert.deepStrictEqual(bytewise.passed, whole.passed);
      }
      checkHeads(whole.passed, status === 101);
      const kind = whole.verdict === "pass"
        ? "pass"
        : whole.verdict.split(" ").slice(0, 2).join(" ");
      kinds[kind] = (kinds[kind] ?? 0) + 1;
    } catch (e) {
      throw new Error(`${where()}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
  }
  console.log(`RequestStreamChecker fuzz: ${CASES} cases, seed ${SEED}, ${JSON.stringify(kinds)}`);
  if (CASES >= 10_000) {
    for (const k of ["pass", "400 invalid-request", "400 invalid-host"]) {
      assert.ok((kinds[k] ?? 0) > CASES / 200, `too few ${k}: ${JSON.stringify(kinds)}`);
    }
  }
});

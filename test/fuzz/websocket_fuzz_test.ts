/**
 * Deterministic fuzzing of the WebSocket frame decoder, which parses whatever an upstream
 * WebSocket server sends.
 *
 * Each case draws its own PRNG from (seed, case index), so a failure names the one case to
 * replay: `SLUICE_FUZZ_SEED=<seed> SLUICE_FUZZ_CASES=<n> deno test --allow-all <this file>`.
 * Inputs are streams of valid frames (messages, fragments, interleaved control frames, masked
 * or not, every length form) built with a reference encoder written here, then mutated (bit
 * flips, corrupted length fields, inserted/deleted bytes, splices, truncation), plus random
 * bytes. Every result is checked for shape and consistency, not just for not throwing:
 * - unmutated streams decode to exactly the messages that were encoded;
 * - the events do not depend on how the bytes are split into chunks;
 * - a message never exceeds the cap, control payloads stay within 125 bytes, close codes are
 *   valid, text is well-formed and its byte count matches, and nothing follows close/invalid.
 */
import assert from "node:assert/strict";
import { isValidCloseCode, WebSocketDecoder } from "../../lib/exchange/websocket/mod.ts";
import type { WebSocketEvent } from "../../lib/exchange/websocket/mod.ts";
import { cat } from "../_bytes.ts";
import { envNumber, mutateBytes, Rng } from "./_fuzz.ts";

const SEED = envNumber("SLUICE_FUZZ_SEED", 0x3b50c) >>> 0;
const CASES = envNumber("SLUICE_FUZZ_CASES", 100_000);
/** One case (two decodes and the checks) slower than this is taken for a hang. */
const HANG_MS = 50;

// ---------------------------------------------------------------------------------------------
// Mutations (the PRNG is in _fuzz.ts; the same scheme as parsers_fuzz_test.ts).

const u8 = (...xs: number[]): Uint8Array => new Uint8Array(xs);
const INTERESTING_BYTES = [0x00, 0x01, 0x7d, 0x7e, 0x7f, 0x80, 0x81, 0x88, 0xfe, 0xff];
/** Frame headers and payload bits worth splicing in. */
const EXTRAS = [
  u8(0x81, 0x00),
  u8(0x01, 0x01, 0x61),
  u8(0x80, 0x00),
  u8(0x89, 0x00),
  u8(0x88, 0x02, 0x03, 0xe8),
  u8(0x88, 0x01, 0x03),
  u8(0x82, 0x7e, 0xff, 0xff),
  u8(0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0, 0),
  u8(0x82, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
  u8(0xc1, 0x00),
  u8(0xed, 0xa0, 0x80), // a UTF-8 surrogate
  u8(0xf0, 0x9f, 0x98), // a cut 4-byte character
  u8(0xc0, 0xaf), // overlong
];

function mutate(rng: Rng, b: Uint8Array, other: Uint8Array): Uint8Array {
  return mutateBytes(rng, b, other, {
    interesting: INTERESTING_BYTES,
    extras: EXTRAS,
    lengths: [0x0000, 0x0001, 0x007d, 0x007e, 0x00ff, 0x7fff, 0x8000, 0xffff],
  });
}

// ---------------------------------------------------------------------------------------------
// A reference encoder (independent of lib/exchange/websocket/frame.ts) and valid streams.

/** Encode one frame; `lenForm` forces a (possibly non-minimal) length encoding. */
function frame(
  rng: Rng,
  fin: boolean,
  opcode: number,
  payload: Uint8Array,
  masked: boolean,
): Uint8Array {
  const len = payload.length;
  let form = len < 126 ? 7 : len < 65536 ? 16 : 64;
  // Now and then a longer length form than needed: allowed by this decoder, so it must decode.
  if (form === 7 && opcode < 8 && rng.chance(0.05)) form = rng.pick([16, 64]);
  else if (form === 16 && rng.chance(0.05)) form = 64;
  const head: number[] = [(fin ? 0x80 : 0) | opcode];
  const m = masked ? 0x80 : 0;
  if (form === 7) head.push(m | len);
  else if (form === 16) head.push(m | 126, len >> 8, len & 0xff);
  else {head.push(
      m | 127,
      0,
      0,
      0,
      0,
      (len >>> 24) & 0xff,
      (len >> 16) & 0xff,
      (len >> 8) & 0xff,
      len & 0xff,
    );}
  if (!masked) return cat(u8(...head), payload);
  const key = rng.bytes(4);
  const body = payload.map((b, i) => b ^ key[i % 4]);
  return cat(u8(...head), key, body);
}

const TEXTS = [
  "",
  "a",
  "Hello",
  "héllo ✓",
  "😀😀",
  "\ufeffbom",
  "日本語のテキスト",
  "x".repeat(300),
];
const enc = new TextEncoder();

type Expected =
  | { type: "text"; data: string }
  | { type: "binary"; data: Uint8Array }
  | { type: "ping" | "pong"; data: Uint8Array }
  | { type: "close"; code?: number; reason: string };

/** A valid stream of frames and the events it must decode to. */
function validStream(
  rng: Rng,
  masked: boolean,
  max: number,
): { bytes: Uint8Array; expected: Expected[] } {
  const parts: Uint8Array[] = [];
  const expected: Expected[] = [];
  const control = (): void => {
    const ping = rng.chance(0.5);
    const data = rng.bytes(rng.int(rng.chance(0.1) ? 126 : 8));
    parts.push(frame(rng, true, ping ? 9 : 10, data, masked));
    expected.push({ type: ping ? "ping" : "pong", data });
  };
  for (let n = rng.int(6); n > 0; n--) {
    if (rng.chance(0.2)) {
      control();
      continue;
    }
    const text = rng.chance(0.5);
    let payload: Uint8Array;
    let str = "";
    if (text) {
      str = rng.pick(TEXTS) + (rng.chance(0.3) ? rng.pick(TEXTS) : "");
      payload = enc.encode(str);
    } else {
      payload = rng.bytes(rng.chance(0.01) ? 66000 + rng.int(4000) : rng.int(300));
    }
    if (payload.length > max) continue; // keep the oracle simple: valid streams fit the cap
    // Split into fragments at arbitrary byte offsets (inside UTF-8 characters too).
    const cuts = [0];
    if (rng.chance(0.4)) {
      for (let k = rng.int(4); k > 0; k--) cuts.push(rng.int(payload.length + 1));
    }
    cuts.sort((a, b) => a - b);
    cuts.push(payload.length);
    for (let i = 0; i + 1 < cuts.length; i++) {
      const fin = i + 2 === cuts.length;
      const op = i === 0 ? (text ? 1 : 2) : 0;
      parts.push(frame(rng, fin, op, payload.subarray(cuts[i], cuts[i + 1]), masked));
      if (!fin && rng.chance(0.2)) control();
    }
    expected.push(text ? { type: "text", data: str } : { type: "binary", data: payload });
  }
  if (rng.chance(0.3)) {
    const code = rng.pick([1000, 1001, 1011, 3000, 4999]);
    const reason = rng.pick(["", "bye", "✓ done"]);
    const r = enc.encode(reason);
    parts.push(
      frame(rng, true, 8, rng.chance(0.2) ? u8() : u8(code >> 8, code & 0xff, ...r), masked),
    );
    const last = parts[parts.length - 1];
    const empty = (last[1] & 0x7f) === 0;
    expected.push(empty ? { type: "close", reason: "" } : { type: "close", code, reason });
  }
  return { bytes: cat(...parts), expected };
}

// ---------------------------------------------------------------------------------------------
// Checks.

function decode(
  bytes: Uint8Array,
  role: "client" | "server",
  max: number,
  splits: number[],
): WebSocketEvent[] {
  const d = new WebSocketDecoder({ role, maxMessageBytes: max });
  const out: WebSocketEvent[] = [];
  let at = 0;
  for (const s of [...splits, bytes.length]) {
    // A copy that is then scribbled on: the decoder must not keep the caller's buffer.
    const chunk = bytes.slice(at, Math.max(at, s));
    out.push(...d.push(chunk));
    chunk.fill(0xee);
    at = Math.max(at, s);
  }
  return out;
}

function checkShape(events: WebSocketEvent[], max: number): void {
  events.forEach((e, i) => {
    const last = i === events.length - 1;
    switch (e.type) {
      case "text":
        assert.equal(typeof e.data, "string");
        assert.equal(enc.encode(e.data).length, e.bytes, "text byte count");
        assert.ok(e.bytes <= max, `text of ${e.bytes} bytes over the cap ${max}`);
        assert.ok(
          !/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(e.data),
        );
        break;
      case "binary":
        assert.ok(e.data instanceof Uint8Array);
        assert.ok(e.data.length <= max, `binary of ${e.data.length} bytes over the cap ${max}`);
        break;
      case "ping":
      case "pong":
        assert.ok(e.data instanceof Uint8Array && e.data.length <= 125);
        break;
      case "close":
        assert.ok(last, "an event after close");
        assert.ok(e.code === undefined || isValidCloseCode(e.code), `close code ${e.code}`);
        assert.ok(enc.encode(e.reason).length <= 123);
        break;
      case "invalid":
        assert.ok(last, "an event after invalid");
        assert.ok([1002, 1007, 1009].includes(e.code), `invalid code ${e.code}`);
        assert.ok(typeof e.reason === "string" && e.reason.length > 0);
        break;
      default:
        assert.fail(`unknown event ${JSON.stringify(e)}`);
    }
  });
}

function randomSplits(rng: Rng, n: number): number[] {
  if (n === 0) return [];
  // Byte at a time now and then (not for the rare 64 KiB frames: that is just slow).
  if (n < 4096 && rng.chance(0.1)) return Array.from({ length: n - 1 }, (_, i) => i + 1);
  const out: number[] = [];
  for (let k = rng.int(8); k > 0; k--) out.push(rng.int(n + 1));
  return out.sort((a, b) => a - b);
}

Deno.test(`WebSocketDecoder.push() survives ${CASES} fuzzed streams consistently`, () => {
  const kinds: Record<string, number> = {};
  let maxMs = 0;
  for (let i = 0; i < CASES; i++) {
    const rng = new Rng(SEED, i);
    const role = rng.chance(0.7) ? "client" : "server";
    const masked = role === "server";
    const max = rng.chance(0.3) ? 1 + rng.int(2000) : 1 << 20;
    const r = rng.int(100);
    let bytes: Uint8Array;
    let expected: Expected[] | null = null;
    if (r < 10) bytes = rng.bytes(rng.int(400));
    else {
      const s = validStream(rng, masked, max);
      bytes = s.bytes;
      if (r < 30) expected = s.expected;
      else {
        const other = validStream(rng, rng.chance(0.8) === masked, max).bytes;
        for (let n = 1 + rng.int(3); n > 0; n--) bytes = mutate(rng, bytes, other);
      }
    }
    const where = (): string =>
      `case ${i} (SLUICE_FUZZ_SEED=${SEED}), role ${role}, max ${max}, ${bytes.length} bytes: ` +
      Array.from(bytes.subarray(0, 128), (x) => x.toString(16).padStart(2, "0")).join("");
    const t0 = performance.now();
    try {
      const whole = decode(bytes, role, max, []);
      checkShape(whole, max);
      const split = decode(bytes, role, max, randomSplits(rng, bytes.length));
      assert.deepStrictEqual(split, whole, "events depend on how the bytes were split");
      if (expected !== null) {
        const got = whole.map((e) => (e.type === "text" ? { type: e.type, data: e.data } : e));
        assert.deepStrictEqual(got, expected, "a valid stream decoded wrong");
      }
      const end = whole.at(-1);
      const kind = end?.type === "invalid" ? `invalid ${end.code}` : end?.type ?? "none";
      kinds[kind] = (kinds[kind] ?? 0) + 1;
    } catch (e) {
      throw new Error(`${where()}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    const ms = performance.now() - t0;
    // A GC pause can stall one case; re-time before calling it a hang.
    if (ms > HANG_MS) {
      const t1 = performance.now();
      decode(bytes, role, max, []);
      const again = performance.now() - t1;
      if (again > HANG_MS) throw new Error(`${where()}: took ${again.toFixed(1)} ms`);
    } else maxMs = Math.max(maxMs, ms);
  }
  // The corpus must reach the interesting outcomes, or the fuzzing proves little.
  for (
    const k of ["text", "binary", "ping", "close", "invalid 1002", "invalid 1007", "invalid 1009"]
  ) {
    assert.ok((kinds[k] ?? 0) > 0, `no case ended in ${k}: ${JSON.stringify(kinds)}`);
  }
  console.log(
    `websocket fuzz: ${CASES} cases, max ${maxMs.toFixed(2)} ms, ${JSON.stringify(kinds)}`,
  );
});

/**
 * Deterministic fuzzing of the DNS server's message handling: parseQuery, buildResponse and the
 * whole per-message path (handleDnsMessage with the policy and a fake resolver). The DNS
 * listener takes datagrams from any enforced subject, so these must never throw, hang, answer
 * a response, exceed the transport's size, or ask the resolver about a name the policy denies.
 *
 * Each case draws its own PRNG from (seed, case index), so a failure names the one case to
 * replay: `SLUICE_FUZZ_SEED=<seed> SLUICE_FUZZ_CASES=<n> deno test --allow-all <this file>`.
 * Cases mix random bytes, structure-aware random messages (random counts, names, pointers,
 * OPT records) and byte-level mutations of real queries.
 */
import assert from "node:assert/strict";
import type { AuditRecord } from "../../lib/ops/audit.ts";
import { handleDnsMessage } from "../../lib/dns/server.ts";
import { dnsAnswerable } from "../../lib/dns/policy.ts";
import {
  buildQuery,
  buildResponse,
  MAX_QUERY_SIZE,
  parseQuery,
  parseResponse,
  QTYPE,
  RCODE,
  TCP_MAX_SIZE,
  UDP_CLASSIC_SIZE,
  UDP_MAX_SIZE,
  udpLimit,
} from "../../lib/dns/wire.ts";
import type { Resolver } from "../../lib/upstream/resolver.ts";
import { type Ip, parseIp } from "../../policy/address.ts";
import { loadPolicyText } from "../../policy/load.ts";
import { cat } from "../_bytes.ts";
import { envNumber, Rng } from "./_fuzz.ts";

const SEED = envNumber("SLUICE_FUZZ_SEED", 0xd25) >>> 0;
/** Cases for the parser; the async whole-path run takes a fifth of this. */
const CASES = envNumber("SLUICE_FUZZ_CASES", 100_000);
/** A single case (with its consistency re-runs) slower than this is taken for a hang. */
const HANG_MS = 50;

// ---------------------------------------------------------------------------------------------
// Generic mutations (the PRNG is in _fuzz.ts).

function u16(v: number): number[] {
  return [(v >> 8) & 0xff, v & 0xff];
}

const INTERESTING_BYTES = [0x00, 0x01, 0x0c, 0x29, 0x3f, 0x40, 0x7f, 0x80, 0xc0, 0xff];

const EXTRAS: Uint8Array[] = [
  [0xc0, 0x0c], // pointer to the question name
  [0xc0, 0x00], // pointer into the header
  [0xc0, 0xff],
  [0xff, 0xff],
  [0x3f],
  [0x40],
  [0x00],
  [0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], // an OPT record
  [0x00, 0x00, 0x29, 0x10, 0x00, 0x00, 0x01, 0x80, 0x00, 0x00, 0x00], // OPT, version 1
  [0x00, 0x01, 0x00, 0x01], // A IN
  [0x00, 0x41, 0x00, 0x01], // HTTPS IN
  [0x00, 0xff, 0x00, 0xff], // ANY ANY
  [0x01, 0x2e],
  [0x01, 0x2a],
].map((b) => Uint8Array.from(b));

/** One byte-level mutation. */
function mutate(rng: Rng, b: Uint8Array, other: Uint8Array): Uint8Array {
  const at = rng.int(b.length + 1);
  switch (rng.int(9)) {
    case 0: { // bit flip
      if (b.length === 0) return b;
      const c = b.slice();
      c[at % b.length] ^= 1 << rng.int(8);
      return c;
    }
    case 1: { // set a byte to an interesting or random value
      if (b.length === 0) return b;
      const c = b.slice();
      c[at % b.length] = rng.chance(0.6) ? rng.pick(INTERESTING_BYTES) : rng.int(256);
      return c;
    }
    case 2: // insert random bytes
      return cat(b.subarray(0, at), rng.bytes(1 + rng.int(4)), b.subarray(at));
    case 3: // delete a run
      return cat(b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + rng.int(8))));
    case 4: // truncate
      return b.subarray(0, at);
    case 5: // insert a DNS-specific token
      return cat(b.subarray(0, at), rng.pick(EXTRAS), b.subarray(at));
    case 6: { // splice: our head, another input's tail
      const from = rng.int(other.length + 1);
      return cat(b.subarray(0, at), other.subarray(from));
    }
    case 7: { // rewrite one header count (the parser must not trust counts)
      if (b.length < 12) return b;
      const c = b.slice();
      const which = 4 + 2 * rng.int(4);
      const v = rng.pick([0, 1, 2, 3, 0xff, 0xffff]);
      c[which] = v >> 8;
      c[which + 1] = v & 0xff;
      return c;
    }
    default: { // duplicate a run in place
      const len = 1 + rng.int(32);
      return cat(b.subarray(0, at), b.subarray(at, at + len), b.subarray(at));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Seeds and structure-aware generation.

const NAMES = [
  "api.example.com",
  "ExAmPlE.CoM",
  "a.b.cdn.example",
  "secret.attacker.example",
  "x.private.cdn.example",
  "10.2.0.192.in-addr.arpa",
  "_http._tcp.example.com",
  "xn--bcher-kva.example",
  "",
  "a",
  [...Array(3).fill("x".repeat(63)), "y".repeat(61)].join("."), // exactly 255 octets
];
const TYPES = [1, 28, 65, 64, 12, 255, 252, 41, 16, 15, 5, 0, 65535];

const SEEDS: Uint8Array[] = [];
for (const name of NAMES) {
  for (const qtype of [QTYPE.A, QTYPE.AAAA, QTYPE.HTTPS]) {
    SEEDS.push(buildQuery({ id: SEEDS.length, name, qtype }));
    SEEDS.push(buildQuery({ id: SEEDS.length, name, qtype, udpSize: 1232 }));
  }
}
function hexBytes(h: string): Uint8Array {
  return Uint8Array.from(h.match(/../g)!, (x) => parseInt(x, 16));
}
// dig +cookie example.com A: EDNS with a COOKIE option.
SEEDS.push(hexBytes(
  "beef01200001000000000001076578616d706c6503636f6d00" +
    "000100010000" + "2904d000000000000c000a00080102030405060708",
));

const NAME_ALPHABET = [...new TextEncoder().encode("abcxyz-_09.*")];

function randomName(rng: Rng, msgLen: number): number[] {
  const out: number[] = [];
  for (let n = rng.int(5); n > 0; n--) {
    if (rng.chance(0.1) && msgLen > 0) {
      const target = rng.chance(0.7) ? rng.int(msgLen) : rng.int(0x4000);
      out.push(0xc0 | (target >> 8), target & 0xff);
      return out;
    }
    const len = rng.chance(0.05) ? 64 + rng.int(192) : 1 + rng.int(rng.chance(0.1) ? 63 : 8);
    out.push(len);
    for (let i = 0; i < Math.min(len, 63); i++) {
      out.push(
        rng.chance(0.9) ? rng.pick(NAME_ALPHABET) : rng.int(256),
      );
    }
  }
  out.push(0);
  return out;
}

function structured(rng: Rng): Uint8Array {
  const counts = [rng.int(3), rng.int(2), rng.int(2), rng.int(3)];
  const flags = rng.chance(0.8) ? 0x0100 | (rng.chance(0.1) ? 0x0010 : 0) : rng.int(65536);
  const parts: number[] = [...u16(rng.int(65536)), ...u16(flags), ...counts.flatMap(u16)];
  for (let i = 0; i < counts[0]; i++) {
    parts.push(
      ...randomName(rng, parts.length),
      ...u16(rng.pick(TYPES)),
      ...u16(rng.pick([1, 3, 255])),
    );
  }
  const records = counts[1] + counts[2] + counts[3];
  for (let i = 0; i < records; i++) {
    const opt = rng.chance(0.5);
    parts.push(...(opt ? [0] : randomName(rng, parts.length)));
    parts.push(
      ...u16(opt ? 41 : rng.pick(TYPES)),
      ...u16(rng.pick([512, 1232, 4096, 65535, 1, 0])),
    );
    parts.push(
      rng.int(3) === 0 ? rng.int(256) : 0,
      rng.chance(0.8) ? 0 : rng.int(256),
      rng.int(256),
      0,
    );
    const rdlen = rng.int(12);
    parts.push(...u16(rng.chance(0.9) ? rdlen : rng.int(65536)), ...rng.bytes(rdlen));
  }
  return Uint8Array.from(parts);
}

function makeCase(rng: Rng): Uint8Array {
  const r = rng.int(100);
  if (r < 8) return rng.bytes(rng.int(rng.chance(0.02) ? 6000 : 80));
  if (r < 35) {
    let m = structured(rng);
    if (rng.chance(0.3)) m = mutate(rng, m, rng.pick(SEEDS));
    return m;
  }
  let buf = rng.pick(SEEDS);
  const other = rng.pick(SEEDS);
  if (r < 97) {
    // Often a single mutation, so most messages stay close enough to valid to reach deep paths.
    for (let n = rng.chance(0.5) ? 1 : 2 + rng.int(3); n > 0; n--) buf = mutate(rng, buf, other);
  }
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Checks.

/** The wire form of a presentation name with `\DDD` escapes, to check the parser's text. */
function unescapeName(name: string): number[] {
  if (name === "") return [0];
  const out: number[] = [];
  for (const label of name.split(".")) {
    const bytes: number[] = [];
    for (let i = 0; i < label.length; i++) {
      if (label[i] === "\\") {
        bytes.push(Number(label.slice(i + 1, i + 4)));
        i += 3;
      } else {
        bytes.push(label.charCodeAt(i));
      }
    }
    out.push(bytes.length, ...bytes);
  }
  out.push(0);
  return out;
}

const POLICY = loadPolicyText(
  `version: 1
network:
  default: deny
  allow: [api.example.com, "*.cdn.example", "GET api.github.example/x/**"]
  deny: ["*.private.cdn.example"]
`,
  "fuzz.yaml",
).compiled;

function checkParse(msg: Uint8Array): string {
  const q = parseQuery(msg);
  assert.deepEqual(parseQuery(msg.slice()), q, "parsing is deterministic");
  if (q.kind === "drop") {
    assert.ok(msg.length < 12 || (msg[2] & 0x80) !== 0, `dropped a query: ${q.reason}`);
    return "drop";
  }
  assert.ok(msg.length >= 12 && (msg[2] & 0x80) === 0);
  assert.equal(q.header.id, (msg[0] << 8) | msg[1]);
  assert.equal(q.header.opcode, (msg[2] >> 3) & 0xf);
  if (q.kind === "formerr") {
    assert.ok(q.reason.length > 0);
  }
  if (q.kind === "query") {
    assert.equal(q.header.opcode, 0);
    assert.ok(msg.length <= MAX_QUERY_SIZE);
    const w = q.question.wire;
    assert.ok(w.length >= 1 && w.length <= 255 && w[w.length - 1] === 0, "name wire form");
    assert.deepEqual([...w], unescapeName(q.question.name), "presentation form matches wire");
    for (const ch of q.question.name) {
      const c = ch.charCodeAt(0);
      assert.ok(c > 0x20 && c < 0x7f, `unescaped octet ${c} in name`);
    }
    // The policy can judge any name the parser returns, and never answers an escaped one.
    const v = dnsAnswerable(POLICY, q.question.name);
    if (q.question.name.includes("\\")) assert.equal(v.ok, false);
  }
  // Whatever the parser accepted, a response can be built and read back within the limit.
  const edns = q.kind === "formerr" ? undefined : q.edns;
  const maxSize = udpLimit(edns);
  const question = q.kind === "query" ? q.question : undefined;
  const out = buildResponse({
    header: q.header,
    rcode: RCODE.NOERROR,
    question,
    answers: question ? [{ type: 1, ttl: 30, data: Uint8Array.of(192, 0, 2, 1) }] : [],
    edns,
    maxSize,
  });
  assert.ok(out.length <= maxSize, `response ${out.length} > ${maxSize}`);
  const r = parseResponse(out);
  assert.equal(r.id, q.header.id);
  assert.ok(r.flags.qr);
  if (question) assert.equal(r.question?.qtype, question.qtype);
  return q.kind;
}

type Stats = { cases: number; maxMs: number; kinds: Record<string, number> };

function where(label: string, i: number, buf: Uint8Array): string {
  return `${label} case ${i} (SLUICE_FUZZ_SEED=${SEED}), ${buf.length} bytes: ` +
    Array.from(buf.subarray(0, 256), (x) => x.toString(16).padStart(2, "0")).join("");
}

function report(label: string, s: Stats): void {
  console.log(
    `${label}: ${s.cases} cases, seed ${SEED}, slowest case ${s.maxMs.toFixed(2)} ms, ` +
      `results ${JSON.stringify(s.kinds)}`,
  );
}

Deno.test("parseQuery() and buildResponse() survive random and mutated messages", () => {
  const stats: Stats = { cases: 0, maxMs: 0, kinds: {} };
  for (let i = 0; i < CASES; i++) {
    const buf = makeCase(new Rng(SEED, i));
    let kind: string;
    let ms: number;
    try {
      const t0 = performance.now();
      kind = checkParse(buf);
      ms = performance.now() - t0;
      for (let k = 0; k < 3 && ms > HANG_MS; k++) {
        const t1 = performance.now();
        checkParse(buf);
        ms = Math.min(ms, performance.now() - t1);
      }
    } catch (e) {
      throw new Error(`${where("parse", i, buf)}: ${e instanceof Error ? e.message : e}`, {
        cause: e,
      });
    }
    if (ms > HANG_MS) throw new Error(`${where("parse", i, buf)}: took ${ms.toFixed(1)} ms`);
    stats.maxMs = Math.max(stats.maxMs, ms);
    stats.kinds[kind] = (stats.kinds[kind] ?? 0) + 1;
    stats.cases++;
  }
  report("parseQuery", stats);
  // The generator must reach every outcome, or the run proves little.
  for (const k of ["drop", "formerr", "notimp", "query"]) {
    assert.ok(
      (stats.kinds[k] ?? 0) > CASES / 1000,
      `too few "${k}" results: ${JSON.stringify(stats.kinds)}`,
    );
  }
});

Deno.test("handleDnsMessage() answers within size limits and never resolves a denied name", async () => {
  const asked: string[] = [];
  const resolver: Resolver = {
    resolve(name: string): Promise<Ip[]> {
      asked.push(name);
      return Promise.resolve(["192.0.2.1", "2001:db8::1"].map((t) => parseIp(t)!));
    },
  };
  const audit = { write(_: AuditRecord) {}, close: () => Promise.resolve() };
  const deps = { policy: () => POLICY, resolver, audit };
  const stats: Stats = { cases: 0, maxMs: 0, kinds: {} };
  const cases = Math.ceil(CASES / 5);
  for (let i = 0; i < cases; i++) {
    const buf = makeCase(new Rng(SEED ^ 0x5eed, i));
    const transport = i % 2 === 0 ? "udp" : "tcp";
    try {
      asked.length = 0;
      const t0 = performance.now();
      const out = await handleDnsMessage(buf, { transport, client: "127.0.0.1:1" }, deps);
      const ms = performance.now() - t0;
      stats.maxMs = Math.max(stats.maxMs, ms);
      const q = parseQuery(buf);
      if (out === null) {
        assert.equal(q.kind, "drop");
        stats.kinds.none = (stats.kinds.none ?? 0) + 1;
      } else {
        assert.notEqual(q.kind, "drop", "answered a message that is not a query");
        const limit = transport === "udp" ? UDP_MAX_SIZE : TCP_MAX_SIZE;
        assert.ok(out.length <= limit, `${out.length} bytes over ${transport}`);
        if (transport === "udp" && !("edns" in q && q.edns)) {
          assert.ok(out.length <= UDP_CLASSIC_SIZE, `${out.length} bytes without EDNS0`);
        }
        const r = parseResponse(out);
        assert.equal(r.id, (buf[0] << 8) | buf[1]);
        const name = Object.entries(RCODE).find(([, v]) => v === r.rcode)?.[0] ?? String(r.rcode);
        stats.kinds[name] = (stats.kinds[name] ?? 0) + 1;
        if (r.answers.length > 0) {
          assert.ok(q.kind === "query" && dnsAnswerable(POLICY, q.question.name).ok);
        }
      }
      for (const n of asked) assert.ok(dnsAnswerable(POLICY, n).ok, `resolver asked about ${n}`);
    } catch (e) {
      throw new Error(`${where("handle", i, buf)}: ${e instanceof Error ? e.message : e}`, {
        cause: e,
      });
    }
    stats.cases++;
  }
  report("handleDnsMessage", stats);
  assert.ok(
    (stats.kinds.NOERROR ?? 0) > 0 && (stats.kinds.NXDOMAIN ?? 0) > 0,
    JSON.stringify(stats.kinds),
  );
});

import { assert, assertEquals } from "../../_assert.ts";
import {
  buildQuery,
  buildResponse,
  type DnsAnswer,
  encodeName,
  MAX_QUERY_SIZE,
  type ParsedQuery,
  parseQuery,
  parseResponse,
  QTYPE,
  RCODE,
  udpLimit,
} from "../../../lib/dns/wire.ts";
import { cat } from "../../_bytes.ts";

function hex(s: string): Uint8Array {
  const clean = s.replace(/\s+/g, "");
  return Uint8Array.from(clean.match(/../g) ?? [], (h) => parseInt(h, 16));
}

/** A header: id 0x1234, the given flags and counts. */
function header(flags: number, qd: number, an = 0, ns = 0, ar = 0): number[] {
  return [0x12, 0x34, flags >> 8, flags & 0xff, 0, qd, 0, an, 0, ns, 0, ar];
}

const QUESTION_A = cat(encodeName("example.com"), [0, 1, 0, 1]);
const OPT = [0, 0, 41, 0x10, 0x00, 0, 0, 0x80, 0, 0, 0]; // root, OPT, 4096, DO set, no options

Deno.test("parseQuery() reads a dig-style query with EDNS0 and a cookie option", () => {
  // dig +cookie example.com A, as captured (id 0xbeef, RD|AD, EDNS 1232, COOKIE option).
  const msg = hex(
    "beef 0120 0001 0000 0000 0001 076578616d706c6503636f6d00 0001 0001" +
      "0000 2904d0 00000000 000c 000a 0008 0102030405060708",
  );
  const q = parseQuery(msg);
  assert(q.kind === "query", JSON.stringify(q));
  assertEquals(q.header, { id: 0xbeef, opcode: 0, rd: true, cd: false });
  assertEquals(q.question.name, "example.com");
  assertEquals(q.question.qtype, QTYPE.A);
  assertEquals(q.edns, { udpSize: 1232, version: 0, dnssecOk: false });
});

Deno.test("parseQuery() keeps the case of the name for 0x20-randomizing resolvers", () => {
  const q = parseQuery(buildQuery({ id: 1, name: "ExAmPle.CoM", qtype: QTYPE.AAAA }));
  assert(q.kind === "query");
  assertEquals(q.question.name, "ExAmPle.CoM");
  assertEquals(q.question.wire, encodeName("ExAmPle.CoM"));
});

Deno.test("parseQuery() escapes label octets so a dot inside a label is not a separator", () => {
  const name = cat([3], [0x61, 0x2e, 0x62], [7], new TextEncoder().encode("example"), [0]);
  const q = parseQuery(cat(header(0x0100, 1), name, [0, 1, 0, 1]));
  assert(q.kind === "query");
  assertEquals(q.question.name, "a\\046b.example");
  const spaced = parseQuery(cat(header(0x0100, 1), [3, 0x61, 0x20, 0xff, 0], [0, 1, 0, 1]));
  assert(spaced.kind === "query");
  assertEquals(spaced.question.name, "a\\032\\255");
});

Deno.test("parseQuery() reads the root name as the empty string", () => {
  const q = parseQuery(cat(header(0x0100, 1), [0], [0, 2, 0, 1]));
  assert(q.kind === "query");
  assertEquals(q.question.name, "");
  assertEquals(q.question.qtype, QTYPE.NS);
});

Deno.test("parseQuery() follows a backward compression pointer", () => {
  // The question name points at "com" inside an earlier... there is nothing earlier
  // than the question, so build it in an authority record pointing back at the question.
  const msg = cat(
    header(0x0100, 1, 0, 1),
    QUESTION_A,
    [0xc0, 12 + 8], // -> "com" inside the question name
    [0, 2, 0, 1, 0, 0, 0, 60, 0, 0],
  );
  assertEquals(parseQuery(msg).kind, "query");
});

/** [name, message, expected kind, expected reason fragment] */
const classified: [string, Uint8Array, ParsedQuery["kind"], string][] = [
  ["drops an empty message", new Uint8Array(0), "drop", "shorter than a header"],
  ["drops 11 bytes", new Uint8Array(11), "drop", "shorter than a header"],
  [
    "drops a response (answering it could loop)",
    cat(header(0x8100, 1), QUESTION_A),
    "drop",
    "response",
  ],
  ["refuses no question", cat(header(0x0100, 0)), "formerr", "no question"],
  [
    "refuses two questions",
    cat(header(0x0100, 2), QUESTION_A, QUESTION_A),
    "formerr",
    "2 questions",
  ],
  ["refuses a cut name", cat(header(0x0100, 1), [7, 0x65, 0x78]), "formerr", "runs past"],
  ["refuses a missing qtype", cat(header(0x0100, 1), encodeName("a.b")), "formerr", "16-bit"],
  ["refuses trailing bytes", cat(header(0x0100, 1), QUESTION_A, [0]), "formerr", "follow the last"],
  [
    "refuses a self-pointing name (loop)",
    cat(header(0x0100, 1), [0xc0, 12], [0, 1, 0, 1]),
    "formerr",
    "backwards",
  ],
  [
    "refuses a forward pointer",
    cat(header(0x0100, 1), [0xc0, 16], [0, 1, 0, 1]),
    "formerr",
    "backwards",
  ],
  [
    "refuses extended label types",
    cat(header(0x0100, 1), [0x41, 0], [0, 1, 0, 1]),
    "formerr",
    "label type 0x40",
  ],
  [
    "refuses a name longer than 255 octets",
    cat(
      header(0x0100, 1),
      ...Array.from({ length: 5 }, () => [63, ...new Uint8Array(63).fill(97)]),
      [
        0,
      ],
      [0, 1, 0, 1],
    ),
    "formerr",
    "longer than 255",
  ],
  [
    "refuses two OPT records",
    cat(header(0x0100, 1, 0, 0, 2), QUESTION_A, OPT, OPT),
    "formerr",
    "more than one OPT",
  ],
  [
    "refuses an OPT record not owned by the root",
    cat(header(0x0100, 1, 0, 0, 1), QUESTION_A, [1, 0x61, 0], OPT.slice(1)),
    "formerr",
    "not owned by the root",
  ],
  [
    "refuses record data past the end",
    cat(header(0x0100, 1, 0, 0, 1), QUESTION_A, OPT.slice(0, 9), [0, 9]),
    "formerr",
    "runs past the end",
  ],
  [
    "refuses a query over the size limit without reading it",
    cat(header(0x0100, 1), new Uint8Array(MAX_QUERY_SIZE)),
    "formerr",
    `limit is ${MAX_QUERY_SIZE}`,
  ],
  ["answers STATUS (opcode 2) as not implemented", cat(header(0x1000, 0)), "notimp", ""],
  [
    "answers NOTIFY (opcode 4) as not implemented",
    cat(header(0x2000, 1), QUESTION_A),
    "notimp",
    "",
  ],
];

for (const [name, msg, kind, fragment] of classified) {
  Deno.test(`parseQuery() ${name}`, () => {
    const q = parseQuery(msg);
    assertEquals(q.kind, kind, JSON.stringify(q));
    if ("reason" in q) assert(q.reason.includes(fragment), `${q.reason} lacks "${fragment}"`);
    if (q.kind !== "drop") assertEquals(q.header.id, 0x1234);
  });
}

Deno.test("udpLimit() is 512 without EDNS0 and the client's size within 512..1232 with it", () => {
  const e = (udpSize: number) => ({ udpSize, version: 0, dnssecOk: false });
  assertEquals(
    [udpLimit(undefined), udpLimit(e(100)), udpLimit(e(1000)), udpLimit(e(4096))],
    [512, 512, 1000, 1232],
  );
});

function aRecords(n: number, family: 4 | 6): DnsAnswer[] {
  return Array.from({ length: n }, (_, i) => ({
    type: family === 4 ? QTYPE.A : QTYPE.AAAA,
    ttl: 30,
    data: family === 4
      ? Uint8Array.of(192, 0, 2, i)
      : Uint8Array.of(0x20, 1, 0xd, 0xb8, ...new Uint8Array(11), i),
  }));
}

Deno.test("buildResponse() answers under the question's name with RA set and RD echoed", () => {
  const q = parseQuery(
    buildQuery({ id: 99, name: "Api.Example.com", qtype: QTYPE.A, udpSize: 1232 }),
  );
  assert(q.kind === "query");
  const out = buildResponse({
    header: q.header,
    rcode: RCODE.NOERROR,
    question: q.question,
    answers: aRecords(2, 4),
    edns: q.edns,
    maxSize: 512,
  });
  const r = parseResponse(out);
  assertEquals(r.id, 99);
  assertEquals(r.flags, { qr: true, aa: false, tc: false, rd: true, ra: true, cd: false });
  assertEquals(r.question, { name: "Api.Example.com", qtype: QTYPE.A, qclass: 1 });
  assertEquals(r.answers.map((a) => [a.name, a.ttl, [...a.data].join(".")]), [
    ["Api.Example.com", 30, "192.0.2.0"],
    ["Api.Example.com", 30, "192.0.2.1"],
  ]);
  assertEquals(r.edns, { udpSize: 1232, version: 0, dnssecOk: false });
});

Deno.test("buildResponse() drops every answer and sets TC when they do not fit", () => {
  const q = parseQuery(buildQuery({ id: 5, name: "many.example", qtype: QTYPE.AAAA }));
  assert(q.kind === "query");
  const base = {
    header: q.header,
    rcode: RCODE.NOERROR,
    question: q.question,
    answers: aRecords(40, 6),
  };
  const small = buildResponse({ ...base, maxSize: 512 });
  assert(small.length <= 512);
  const r = parseResponse(small);
  assertEquals([r.flags.tc, r.answers.length, r.question?.name], [true, 0, "many.example"]);
  const big = parseResponse(buildResponse({ ...base, maxSize: 1232 }));
  assertEquals([big.flags.tc, big.answers.length], [false, 40]);
});

Deno.test("buildResponse() carries BADVERS in the OPT record's extended code", () => {
  const q = parseQuery(buildQuery({ id: 5, name: "a.example", qtype: QTYPE.A, udpSize: 1232 }));
  assert(q.kind === "query");
  const out = buildResponse({
    header: q.header,
    rcode: RCODE.BADVERS,
    question: q.question,
    edns: q.edns,
    maxSize: 512,
  });
  assertEquals(parseResponse(out).rcode, RCODE.BADVERS);
  assertEquals(out[3] & 0xf, 0);
});

Deno.test("buildResponse() builds a FORMERR without a question", () => {
  const out = buildResponse({
    header: { id: 7, opcode: 0, rd: false, cd: true },
    rcode: RCODE.FORMERR,
    maxSize: 512,
  });
  assertEquals(out.length, 12);
  const r = parseResponse(out);
  assertEquals([r.id, r.rcode, r.question, r.flags.cd, r.flags.rd], [
    7,
    RCODE.FORMERR,
    undefined,
    true,
    false,
  ]);
});

Deno.test("encodeName() refuses empty and over-long labels", () => {
  for (const bad of ["a..b", "x".repeat(64) + ".a", Array(130).fill("ab").join(".")]) {
    let threw = false;
    try {
      encodeName(bad);
    } catch (e) {
      threw = e instanceof RangeError;
    }
    assert(threw, `encodeName(${JSON.stringify(bad.slice(0, 20))}) should throw`);
  }
  assertEquals(encodeName("."), Uint8Array.of(0));
});

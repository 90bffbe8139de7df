import assert from "node:assert/strict";
import type { ClientHelloResult } from "../../../lib/tls/client_hello.ts";
import { isTlsStart, MAX_CLIENT_HELLO, parseClientHello } from "../../../lib/tls/client_hello.ts";
import { cat } from "../../_bytes.ts";

// ---------------------------------------------------------------------------------------------
// Builders for hand-made ClientHellos: real field layout, every length computed, so that each
// case below differs from a valid hello in exactly the way its name says.

type Ext = [type: number, data: Uint8Array];

function u8(...xs: number[]): Uint8Array {
  return new Uint8Array(xs);
}

function len16(body: Uint8Array): Uint8Array {
  return cat(u8(body.length >> 8, body.length & 0xff), body);
}

function ascii(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

/** server_name extension data with the given (name_type, name) entries. */
function sniData(...entries: [number, Uint8Array][]): Uint8Array {
  return len16(cat(...entries.map(([t, n]) => cat(u8(t), len16(n)))));
}

function sniExt(name: string): Ext {
  return [0, sniData([0, ascii(name)])];
}

function alpnExt(...protos: string[]): Ext {
  return [16, len16(cat(...protos.map((p) => cat(u8(p.length), ascii(p)))))];
}

/** A padding extension (RFC 7685) that grows the hello to a chosen size. */
function padExt(n: number): Ext {
  return [21, new Uint8Array(n)];
}

/** A ClientHello handshake message (header included); `extensions: undefined` omits the block. */
function hello(
  extensions: Ext[] | undefined,
  opts: { sessionId?: number; raw?: Uint8Array; type?: number } = {},
): Uint8Array {
  const body = cat(
    u8(0x03, 0x03),
    new Uint8Array(32).fill(7),
    cat(u8(opts.sessionId ?? 32), new Uint8Array(opts.sessionId ?? 32)),
    len16(u8(0x13, 0x01, 0x13, 0x02, 0xc0, 0x2f)),
    u8(1, 0),
    extensions === undefined
      ? new Uint8Array(0)
      : len16(cat(...extensions.map(([t, d]) => cat(u8(t >> 8, t & 0xff), len16(d))))),
    opts.raw ?? new Uint8Array(0),
  );
  const n = body.length;
  return cat(u8(opts.type ?? 1, n >> 16, (n >> 8) & 0xff, n & 0xff), body);
}

/** Wrap a handshake message in TLS records, cutting it at the given offsets. */
function records(hs: Uint8Array, cuts: number[] = [], version = [0x03, 0x01]): Uint8Array {
  const bounds = [0, ...cuts, hs.length];
  const out: Uint8Array[] = [];
  for (let i = 0; i + 1 < bounds.length; i++) {
    const frag = hs.subarray(bounds[i], bounds[i + 1]);
    out.push(cat(u8(0x16, version[0], version[1]), len16(frag)));
  }
  return cat(...out);
}

function fromHex(hex: string): Uint8Array {
  const clean = hex.trim();
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(i * 2, i * 2 + 2), 16);
  return out;
}

const CURL_HELLO = fromHex(
  Deno.readTextFileSync(new URL("../../fixtures/curl_client_hello.hex", import.meta.url)),
);

const STD = hello([sniExt("foo.example"), alpnExt("h2", "http/1.1")]);
const STD_RECORD = records(STD);

// ---------------------------------------------------------------------------------------------
// Real clients: capture the first bytes they send to a plain TCP listener on loopback.

/** Accept one connection, read until the parser stops saying incomplete, return the bytes. */
async function capture(
  startClient: (port: number) => { done: Promise<unknown> },
): Promise<{ bytes: Uint8Array; result: ClientHelloResult }> {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const client = startClient(listener.addr.port);
  const conn = await listener.accept();
  let bytes: Uint8Array = new Uint8Array(0);
  let result: ClientHelloResult = { kind: "incomplete", need: 0 };
  const chunk = new Uint8Array(16384);
  const deadline = setTimeout(() => conn.close(), 10_000);
  try {
    while (result.kind === "incomplete") {
      const n = await conn.read(chunk);
      if (n === null) break;
      bytes = cat(bytes, chunk.subarray(0, n));
      result = parseClientHello(bytes);
    }
  } finally {
    clearTimeout(deadline);
    try {
      conn.close();
    } catch {
      // already closed by the deadline
    }
  }
  // The client fails its handshake once we hang up; only its exit matters, not its status.
  await client.done.catch(() => {});
  return { bytes, result };
}

function spawn(cmd: string, args: string[]): { done: Promise<unknown> } {
  const child = new Deno.Command(cmd, {
    args,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const kill = setTimeout(() => child.kill(), 10_000);
  return { done: child.status.finally(() => clearTimeout(kill)) };
}

Deno.test("parseClientHello() returns the SNI and ALPN of a live curl ClientHello", async () => {
  const { bytes, result } = await capture((port) =>
    spawn("curl", [
      "-sS",
      "--max-time",
      "5",
      "--resolve",
      `foo.example:${port}:127.0.0.1`,
      `https://foo.example:${port}/`,
    ])
  );
  assert.deepStrictEqual(result, {
    kind: "ok",
    sni: "foo.example",
    alpn: ["h2", "http/1.1"],
    length: 517,
  });
  assert.deepStrictEqual(bytes.length, 517);
});

Deno.test("parseClientHello() lowercases the SNI of a live openssl s_client ClientHello", async () => {
  const { result } = await capture((port) =>
    spawn("openssl", [
      "s_client",
      "-connect",
      `127.0.0.1:${port}`,
      "-servername",
      "Foo.Example",
      "-alpn",
      "h2,http/1.1",
    ])
  );
  assert.ok(result.kind === "ok", JSON.stringify(result));
  assert.deepStrictEqual(result.sni, "foo.example");
  assert.deepStrictEqual(result.alpn, ["h2", "http/1.1"]);
});

Deno.test("parseClientHello() reports no SNI for a live Deno.connectTls to an IP", async () => {
  const { result } = await capture((port) => ({
    done: Deno.connectTls({ hostname: "127.0.0.1", port, alpnProtocols: ["h2"] })
      .then((c) => c.handshake().finally(() => c.close())),
  }));
  assert.ok(result.kind === "ok", JSON.stringify(result));
  assert.deepStrictEqual(result.sni, undefined);
  assert.deepStrictEqual(result.alpn, ["h2"]);
});

Deno.test("parseClientHello() parses the stored curl ClientHello fixture", () => {
  assert.deepStrictEqual(parseClientHello(CURL_HELLO), {
    kind: "ok",
    sni: "foo.example",
    alpn: ["h2", "http/1.1"],
    length: CURL_HELLO.length,
  });
});

Deno.test("parseClientHello() says incomplete, with a need no larger than the truth, for every prefix", () => {
  for (
    const [name, full] of [
      ["curl", CURL_HELLO],
      ["three records", records(STD, [2, 40])],
    ] as const
  ) {
    for (let i = 0; i < full.length; i++) {
      const r = parseClientHello(full.subarray(0, i));
      assert.ok(r.kind === "incomplete", `${name} prefix ${i}: ${JSON.stringify(r)}`);
      assert.ok(r.need > i && r.need <= full.length, `${name} prefix ${i}: need ${r.need}`);
    }
    assert.deepStrictEqual(parseClientHello(full).kind, "ok");
  }
  // One record: the need is exact as soon as the record header has arrived.
  assert.deepStrictEqual(parseClientHello(CURL_HELLO.subarray(0, 5)), {
    kind: "incomplete",
    need: CURL_HELLO.length,
  });
});

Deno.test("parseClientHello() reassembles a ClientHello split into two records at every byte", () => {
  for (let cut = 1; cut < STD.length; cut++) {
    const bytes = records(STD, [cut]);
    const r = parseClientHello(bytes);
    assert.deepStrictEqual(
      r,
      { kind: "ok", sni: "foo.example", alpn: ["h2", "http/1.1"], length: bytes.length },
      `cut ${cut}`,
    );
  }
});

Deno.test("parseClientHello() reassembles a ClientHello sent one byte per record", () => {
  const bytes = records(STD, Array.from({ length: STD.length - 1 }, (_, i) => i + 1));
  assert.deepStrictEqual(parseClientHello(bytes), {
    kind: "ok",
    sni: "foo.example",
    alpn: ["h2", "http/1.1"],
    length: bytes.length,
  });
});

Deno.test("parseClientHello() ignores bytes after the ClientHello records", () => {
  // A TLS 1.3 client may send change_cipher_spec or early data right behind its hello.
  const bytes = cat(STD_RECORD, u8(0x14, 0x03, 0x03, 0x00, 0x01, 0x01));
  assert.deepStrictEqual(parseClientHello(bytes), {
    kind: "ok",
    sni: "foo.example",
    alpn: ["h2", "http/1.1"],
    length: STD_RECORD.length,
  });
});

Deno.test("parseClientHello() accepts a ClientHello of exactly MAX_CLIENT_HELLO bytes", () => {
  // Two records (5 + 16384 and 5 + rest) filling the limit exactly.
  const base = hello([sniExt("a.example"), padExt(0)]).length;
  const hs = hello([sniExt("a.example"), padExt(MAX_CLIENT_HELLO - 10 - base)]);
  const bytes = records(hs, [16384]);
  assert.deepStrictEqual(bytes.length, MAX_CLIENT_HELLO);
  assert.deepStrictEqual(parseClientHello(bytes).kind, "ok");
  const over = records(hello([sniExt("a.example"), padExt(MAX_CLIENT_HELLO - 9 - base)]), [
    16384,
  ]);
  assert.deepStrictEqual(parseClientHello(over).kind, "invalid");
});

type Case = {
  name: string;
  bytes: Uint8Array;
  want: Partial<ClientHelloResult>;
  /** For invalid cases: a part of the reason, so the case fails for the rule it names. */
  why?: string;
};

const bigHello = hello([sniExt("a.example"), padExt(3000)]);

const cases: Case[] = [
  {
    name: "a hello without SNI",
    bytes: records(hello([alpnExt("http/1.1")])),
    want: { kind: "ok", sni: undefined, alpn: ["http/1.1"] },
  },
  {
    name: "a hello without any extensions",
    bytes: records(hello(undefined)),
    want: { kind: "ok", sni: undefined, alpn: [] },
  },
  {
    name: "a hello with an empty extensions block",
    bytes: records(hello([])),
    want: { kind: "ok", sni: undefined, alpn: [] },
  },
  {
    name: "an upper-case SNI, lowercased",
    bytes: records(hello([sniExt("WWW.Example.COM")])),
    want: { kind: "ok", sni: "www.example.com" },
  },
  {
    name: "an SNI with an underscore",
    bytes: records(hello([sniExt("_acme.example")])),
    want: { kind: "ok", sni: "_acme.example" },
  },
  {
    name: "an IPv4 literal SNI, reported as-is",
    bytes: records(hello([sniExt("192.0.2.1")])),
    want: { kind: "ok", sni: "192.0.2.1" },
  },
  {
    name: "an IPv6 literal SNI, reported as-is",
    bytes: records(hello([sniExt("2001:DB8::1")])),
    want: { kind: "ok", sni: "2001:db8::1" },
  },
  {
    name: "an unknown server_name type beside the host_name",
    bytes: records(hello([[0, sniData([7, ascii("x")], [0, ascii("b.example")])]])),
    want: { kind: "ok", sni: "b.example" },
  },
  {
    name: "a GREASE ALPN name with non-ASCII bytes",
    bytes: records(hello([[16, len16(u8(2, 0x8a, 0x8a))]])),
    want: { kind: "ok", alpn: ["\x8a\x8a"] },
  },
  {
    name: "a record version 3.3",
    bytes: records(STD, [], [0x03, 0x03]),
    want: { kind: "ok", sni: "foo.example" },
  },
  { name: "an empty buffer", bytes: u8(), want: { kind: "incomplete", need: 5 } },
  { name: "one byte", bytes: u8(0x16), want: { kind: "incomplete", need: 5 } },
  {
    name: "a truncated hello",
    bytes: STD_RECORD.subarray(0, 100),
    want: { kind: "incomplete", need: STD_RECORD.length },
  },
  {
    name: "HTTP text",
    bytes: ascii("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    want: { kind: "invalid" },
    why: "not a TLS handshake record",
  },
  {
    name: "an SSLv2-style hello",
    bytes: u8(0x80, 0x2e, 0x01, 0x03, 0x01),
    want: { kind: "invalid" },
    why: "not a TLS handshake record",
  },
  {
    name: "garbage",
    bytes: Uint8Array.from({ length: 64 }, (_, i) => (i * 37 + 11) & 0xff),
    want: { kind: "invalid" },
    why: "not a TLS handshake record",
  },
  {
    name: "a TLS alert record",
    bytes: u8(0x15, 0x03, 0x03, 0x00, 0x02, 2, 40),
    want: { kind: "invalid" },
    why: "not a TLS handshake record",
  },
  {
    name: "record version 2.1",
    bytes: records(STD, [], [0x02, 0x01]),
    want: { kind: "invalid" },
    why: "unsupported record version major",
  },
  {
    name: "an empty record",
    bytes: u8(0x16, 0x03, 0x01, 0x00, 0x00),
    want: { kind: "invalid" },
    why: "empty handshake record",
  },
  {
    name: "a record longer than 2^14",
    bytes: u8(0x16, 0x03, 0x01, 0x40, 0x01),
    want: { kind: "invalid" },
    why: "record length 16385 exceeds 2^14",
  },
  {
    name: "a record length of 0xffff",
    bytes: u8(0x16, 0x03, 0x01, 0xff, 0xff),
    want: { kind: "invalid" },
    why: "record length 65535 exceeds 2^14",
  },
  {
    name: "a handshake length of 2^24-1",
    bytes: u8(0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff),
    want: { kind: "invalid" },
    why: "ClientHello length 16777215 exceeds the 16404 byte limit",
  },
  {
    name: "a handshake length just over the limit",
    bytes: records(hello([padExt(MAX_CLIENT_HELLO)]).subarray(0, 100)),
    want: { kind: "invalid" },
    why: "ClientHello length 16487 exceeds the 16404 byte limit",
  },
  {
    name: "a 3000-byte hello in one-byte records, over the record-byte limit",
    bytes: records(bigHello, Array.from({ length: bigHello.length - 1 }, (_, i) => i + 1)),
    want: { kind: "invalid" },
    why: "ClientHello records exceed 16404 bytes",
  },
  {
    name: "a large hello arriving in tiny records, refused before it is complete",
    // 16000 announced bytes still to come after 100 six-byte records cannot fit the limit.
    bytes: records(
      hello([padExt(16000)]).subarray(0, 100),
      Array.from({ length: 99 }, (_, i) => i + 1),
    ),
    want: { kind: "invalid" },
    why: "would exceed",
  },
  {
    name: "a ServerHello",
    bytes: records(hello([], { type: 2 })),
    want: { kind: "invalid" },
    why: "handshake type 2 is not ClientHello (1)",
  },
  {
    name: "a ServerHello type seen in the first byte of a record",
    bytes: u8(0x16, 0x03, 0x01, 0x00, 0x30, 0x02),
    want: { kind: "invalid" },
    why: "handshake type 2 is not ClientHello (1)",
  },
  {
    name: "a duplicate SNI extension",
    bytes: records(hello([sniExt("a.example"), sniExt("b.example")])),
    want: { kind: "invalid" },
    why: "duplicate extension",
  },
  {
    name: "a duplicate ALPN extension",
    bytes: records(hello([alpnExt("h2"), alpnExt("h2")])),
    want: { kind: "invalid" },
    why: "duplicate extension",
  },
  {
    name: "two host_names in one SNI extension",
    bytes: records(hello([[0, sniData([0, ascii("a.example")], [0, ascii("b.example")])]])),
    want: { kind: "invalid" },
    why: "more than one host_name in SNI",
  },
  {
    name: "an SNI with a space",
    bytes: records(hello([sniExt("a b.example")])),
    want: { kind: "invalid" },
    why: "SNI host_name has invalid bytes or length",
  },
  {
    name: "an SNI with a NUL",
    bytes: records(hello([sniExt("a\0.example")])),
    want: { kind: "invalid" },
    why: "SNI host_name has invalid bytes or length",
  },
  {
    name: "an SNI with a slash",
    bytes: records(hello([sniExt("a/b.example")])),
    want: { kind: "invalid" },
    why: "SNI host_name has invalid bytes or length",
  },
  {
    name: "an SNI with a percent",
    bytes: records(hello([sniExt("a%2e.example")])),
    want: { kind: "invalid" },
    why: "SNI host_name has invalid bytes or length",
  },
  {
    name: "an SNI with a port",
    bytes: records(hello([sniExt("a.example:443")])),
    want: { kind: "invalid" },
    why: "SNI host_name has invalid bytes or length",
  },
  {
    name: "an SNI with UTF-8 bytes",
    bytes: records(hello([[0, sniData([0, u8(0xc3, 0xa9, 0x2e, 0x66, 0x72)])]])),
    want: { kind: "invalid" },
    why: "SNI host_name has invalid bytes or length",
  },
  {
    name: "an empty SNI name",
    bytes: records(hello([[0, sniData([0, u8()])]])),
    want: { kind: "invalid" },
    why: "SNI host_name has invalid bytes or length",
  },
  {
    name: "an empty SNI list",
    bytes: records(hello([[0, u8(0, 0)]])),
    want: { kind: "invalid" },
    why: "empty server_name list",
  },
  {
    name: "a 256-byte SNI name",
    bytes: records(hello([sniExt("a".repeat(256))])),
    want: { kind: "invalid" },
    why: "SNI host_name has invalid bytes or length",
  },
  {
    name: "an SNI list length larger than the extension",
    bytes: records(hello([[0, cat(u8(0, 40), u8(0, 0, 3), ascii("a.b"))]])),
    want: { kind: "invalid" },
    why: "server_name list length does not match the extension",
  },
  {
    name: "an SNI name length running past the list",
    bytes: records(hello([[0, cat(u8(0, 6), u8(0, 0, 9), ascii("a.b"))]])),
    want: { kind: "invalid" },
    why: "server_name entry overruns list",
  },
  {
    name: "an empty ALPN list",
    bytes: records(hello([[16, u8(0, 0)]])),
    want: { kind: "invalid" },
    why: "empty ALPN list",
  },
  {
    name: "an empty ALPN name",
    bytes: records(hello([[16, u8(0, 3, 0, 1, 0x68)]])),
    want: { kind: "invalid" },
    why: "empty ALPN protocol name",
  },
  {
    name: "an ALPN name running past the list",
    bytes: records(hello([[16, u8(0, 2, 5, 0x68)]])),
    want: { kind: "invalid" },
    why: "ALPN name overruns the list",
  },
  {
    name: "a session id of 33 bytes",
    bytes: records(hello([], { sessionId: 33 })),
    want: { kind: "invalid" },
    why: "session id length 33 exceeds",
  },
  {
    name: "one stray byte after the extensions block",
    bytes: records(hello([sniExt("a.example")], { raw: u8(0) })),
    want: { kind: "invalid" },
    why: "extensions length does not match the ClientHello length",
  },
  {
    name: "a lone byte where the extensions length belongs",
    bytes: records(hello(undefined, { raw: u8(0) })),
    want: { kind: "invalid" },
    why: "truncated extensions length",
  },
  {
    name: "an extension length running past the block",
    bytes: records(hello(undefined, { raw: u8(0, 4, 0, 0, 0, 9) })),
    want: { kind: "invalid" },
    why: "extension 0 overruns the extensions block",
  },
  {
    name: "bytes after the ClientHello inside its record",
    bytes: records(cat(STD, u8(0x0b, 0, 0, 0))),
    want: { kind: "invalid" },
    why: "unexpected bytes after the ClientHello in its last record",
  },
  {
    name: "an alert record between two fragments",
    bytes: cat(
      records(STD.subarray(0, 10)),
      u8(0x15, 0x03, 0x03, 0, 2, 1, 0),
      records(STD.subarray(10)),
    ),
    want: { kind: "invalid" },
    why: "record type 0x15 interleaved with a fragmented ClientHello",
  },
  {
    name: "a handshake body shorter than its fixed fields",
    bytes: records(u8(1, 0, 0, 3, 3, 3, 0)),
    want: { kind: "invalid" },
    why: "ClientHello too short",
  },
];

for (const c of cases) {
  Deno.test(`parseClientHello() handles ${c.name}`, () => {
    const r = parseClientHello(c.bytes);
    const picked = Object.fromEntries(Object.keys(c.want).map((k) => [k, (r as never)[k]]));
    assert.deepStrictEqual(picked, c.want, JSON.stringify(r));
    if (r.kind === "invalid") assert.ok(r.reason.includes(c.why ?? "?"), r.reason);
    if (r.kind === "ok") assert.deepStrictEqual(r.length, c.bytes.length);
  });
}

Deno.test("parseClientHello() names the problem in its invalid reasons", () => {
  const reason = (b: Uint8Array): string => {
    const r = parseClientHello(b);
    return r.kind === "invalid" ? r.reason : `not invalid: ${r.kind}`;
  };
  assert.ok(reason(ascii("GET /")).includes("0x47"), reason(ascii("GET /")));
  assert.ok(reason(records(hello([sniExt("a"), sniExt("b")]))).includes("duplicate extension 0"));
  assert.ok(reason(records(hello([], { type: 2 }))).includes("not ClientHello"));
});

Deno.test("isTlsStart() is true only for the handshake content type", () => {
  assert.deepStrictEqual(isTlsStart(0x16), true);
  for (const b of [0x00, 0x15, 0x17, 0x47, 0x43, 0x80, 0xff]) {
    assert.deepStrictEqual(isTlsStart(b), false);
  }
  assert.deepStrictEqual(isTlsStart(CURL_HELLO[0]), true);
});

/**
 * The DNS server over real UDP and TCP sockets on loopback, queried by `dig`
 * (Debian package dnsutils) and by hand-built messages. The upstream resolver
 * is always a fake with fixed answers: no test sends a query off the host.
 */
import { assert, assertEquals, assertMatch } from "../../_assert.ts";
import type { AuditRecord, AuditSink } from "../../../lib/ops/audit.ts";
import { type DnsAuditRecord, type DnsServer, startDnsServer } from "../../../lib/dns/server.ts";
import {
  buildQuery,
  type ParsedResponse,
  parseResponse,
  QTYPE,
  RCODE,
} from "../../../lib/dns/wire.ts";
import { ResolveError, type Resolver } from "../../../lib/upstream/resolver.ts";
import { type Ip, parseIp } from "../../../policy/address.ts";
import type { CompiledPolicy } from "../../../policy/compile.ts";
import { loadPolicyText } from "../../../policy/load.ts";
import { PlaceholderScanner } from "../../../policy/placeholders.ts";

const POLICY = `version: 1
network:
  default: deny
  allow:
    - api.example.com
    - "*.cdn.example"
    - many.example
    - "GET github.example/acme/**"
  deny:
    - "*.private.cdn.example"
`;

function compile(text: string): CompiledPolicy {
  return loadPolicyText(text, "dns.yaml").compiled;
}

/** A resolver with fixed answers that records every name it is asked. */
class FakeResolver implements Resolver {
  calls: string[] = [];
  constructor(readonly table: Record<string, string[] | string>, readonly delayMs = 0) {}
  async resolve(name: string): Promise<Ip[]> {
    this.calls.push(name);
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    const v = this.table[name];
    if (v === undefined) throw new ResolveError(name, "ENOTFOUND");
    if (typeof v === "string") throw new ResolveError(name, v);
    return v.map((t) => parseIp(t)!);
  }
}

const MANY = Array.from({ length: 60 }, (_, i) => `2001:db8::${(i + 1).toString(16)}`);

const TABLE: Record<string, string[] | string> = {
  "api.example.com": ["192.0.2.10", "2001:db8::10", "192.0.2.11"],
  "a.cdn.example": ["192.0.2.20"],
  "x.private.cdn.example": ["192.0.2.99"],
  "secret.attacker.example": ["192.0.2.66"],
  "github.example": ["192.0.2.30"],
  "v6only.cdn.example": ["2001:db8::40"],
  "flaky.cdn.example": "EAI_AGAIN",
  "empty.cdn.example": "ENODATA",
  "many.example": MANY,
  "anything.example": ["198.51.100.1"],
};

class MemoryAudit implements AuditSink {
  records: DnsAuditRecord[] = [];
  write(r: AuditRecord): void {
    this.records.push(r as unknown as DnsAuditRecord);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

type Ctx = {
  server: DnsServer;
  resolver: FakeResolver;
  audit: MemoryAudit;
  resolved: [string, string[]][];
  violations: [string, string][];
  setPolicy(text: string): void;
};

async function withServer(
  fn: (c: Ctx) => Promise<void>,
  extra: {
    udpBackend?: "deno" | "node";
    tcpIdleMs?: number;
    delayMs?: number;
    resolveTimeoutMs?: number;
    policy?: string;
    placeholders?: Record<string, string>;
  } = {},
): Promise<void> {
  const resolver = new FakeResolver(TABLE, extra.delayMs);
  const audit = new MemoryAudit();
  const resolved: [string, string[]][] = [];
  const violations: [string, string][] = [];
  let policy = compile(extra.policy ?? POLICY);
  const scanner = extra.placeholders
    ? new PlaceholderScanner(new Map(Object.entries(extra.placeholders)))
    : undefined;
  const server = await startDnsServer({
    hostname: "127.0.0.1",
    port: 0,
    policy: () => policy,
    resolver,
    audit,
    onResolved: (name, ips) => resolved.push([name, ips.map((i) => i.text)]),
    udpBackend: extra.udpBackend,
    tcpIdleMs: extra.tcpIdleMs,
    resolveTimeoutMs: extra.resolveTimeoutMs,
    scanner: scanner && (() => scanner),
    onViolation: (c, name) => violations.push([c.name, name]),
  });
  try {
    await fn({
      server,
      resolver,
      audit,
      resolved,
      violations,
      setPolicy: (t) => (policy = compile(t)),
    });
  } finally {
    await server.close();
  }
}

/** Sends one datagram and waits for one answer, or null after `waitMs`. */
async function udpExchange(
  addr: Deno.NetAddr,
  msg: Uint8Array,
  waitMs = 2000,
): Promise<Uint8Array | null> {
  const sock = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await sock.send(msg, addr);
    const timeout = new Promise<null>((r) => (timer = setTimeout(() => r(null), waitMs)));
    const got = await Promise.race([sock.receive().then(([b]) => b), timeout]);
    return got;
  } finally {
    clearTimeout(timer);
    sock.close();
  }
}

async function udpQuery(
  addr: Deno.NetAddr,
  name: string,
  qtype: number,
  udpSize?: number,
): Promise<ParsedResponse> {
  const id = Math.floor(Math.random() * 65536);
  const out = await udpExchange(addr, buildQuery({ id, name, qtype, udpSize }));
  assert(out, `no answer to ${name}`);
  const r = parseResponse(out);
  assertEquals(r.id, id);
  return r;
}

function addresses(r: ParsedResponse): string[] {
  return r.answers.map((a) =>
    a.data.length === 4 ? [...a.data].join(".") : parseIp(
      Array.from({ length: 8 }, (_, i) => ((a.data[2 * i] << 8) | a.data[2 * i + 1]).toString(16))
        .join(":"),
    )!.text
  );
}

function frame(msg: Uint8Array): Uint8Array {
  const out = new Uint8Array(2 + msg.length);
  out[0] = msg.length >> 8;
  out[1] = msg.length & 0xff;
  out.set(msg, 2);
  return out;
}

/** Reads framed messages until `count` arrived or the peer closed. */
async function readFrames(conn: Deno.Conn, count: number): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  let buf = new Uint8Array(0);
  const chunk = new Uint8Array(70000);
  while (out.length < count) {
    while (buf.length >= 2 && buf.length >= 2 + ((buf[0] << 8) | buf[1])) {
      const len = (buf[0] << 8) | buf[1];
      out.push(buf.slice(2, 2 + len));
      buf = buf.slice(2 + len);
    }
    if (out.length >= count) break;
    const n = await conn.read(chunk);
    if (n === null) break;
    const next = new Uint8Array(buf.length + n);
    next.set(buf);
    next.set(chunk.subarray(0, n), buf.length);
    buf = next;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// dig

type DigResult = { status: string; flags: string[]; answers: string[][]; out: string };

async function dig(addr: Deno.NetAddr, ...args: string[]): Promise<DigResult> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("dig", {
      args: [`@${addr.hostname}`, "-p", String(addr.port), "+tries=1", "+time=3", ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    throw new Error(
      "these tests need `dig`: install the dnsutils package (apt-get install -y dnsutils)",
      { cause: e },
    );
  }
  const text = new TextDecoder().decode(out.stdout);
  const status = text.match(/status: (\w+)/)?.[1] ?? "none";
  const flags = text.match(/;; flags: ([^;]*);/)?.[1].trim().split(/\s+/) ?? [];
  const answerSection = text.split(";; ANSWER SECTION:\n")[1]?.split("\n\n")[0] ?? "";
  const answers = answerSection.split("\n").filter((l) => l && !l.startsWith(";")).map((l) =>
    l.split(/\s+/)
  );
  return { status, flags, answers, out: text };
}

Deno.test("startDnsServer() answers dig's A and AAAA queries from the resolver, with a 30 s TTL", async () => {
  await withServer(async ({ server, resolver, audit, resolved }) => {
    const a = await dig(server.udpAddr, "api.example.com", "A");
    assertEquals(a.status, "NOERROR", a.out);
    assertEquals(a.answers, [
      ["api.example.com.", "30", "IN", "A", "192.0.2.10"],
      ["api.example.com.", "30", "IN", "A", "192.0.2.11"],
    ]);
    assert(a.flags.includes("ra") && a.flags.includes("rd") && !a.flags.includes("aa"), a.out);
    const aaaa = await dig(server.udpAddr, "API.Example.Com", "AAAA");
    assertEquals(aaaa.answers, [["API.Example.Com.", "30", "IN", "AAAA", "2001:db8::10"]]);
    assertEquals(resolver.calls, ["api.example.com", "api.example.com"]);
    assertEquals(resolved[0], ["api.example.com", ["192.0.2.10", "2001:db8::10", "192.0.2.11"]]);
    const line = audit.records[0];
    assertEquals(
      { ...line, client: line.client.replace(/:\d+$/, ":*") },
      {
        event: "dns",
        client: "127.0.0.1:*",
        transport: "udp",
        host: "api.example.com",
        qtype: "A",
        verdict: "allow",
        code: "allow-rule",
        reason: 'api.example.com is allowed by rule "api.example.com"',
        rule: "api.example.com",
        rule_at: "dns.yaml:5",
        rcode: "NOERROR",
        addresses: ["192.0.2.10", "192.0.2.11"],
      },
    );
  });
});

Deno.test("startDnsServer() answers denied names NXDOMAIN without asking the resolver", async () => {
  await withServer(async ({ server, resolver, audit, resolved }) => {
    for (
      const [name, type] of [["secret.attacker.example", "A"], ["x.private.cdn.example", "AAAA"]]
    ) {
      const r = await dig(server.udpAddr, name, type);
      assertEquals(r.status, "NXDOMAIN", r.out);
      assertEquals(r.answers, []);
    }
    assertEquals(resolver.calls, []);
    assertEquals(resolved, []);
    assertEquals(
      audit.records.map((r) => [r.host, r.verdict, r.code, r.rule, r.rule_at, r.rcode]),
      [
        [
          "secret.attacker.example",
          "deny",
          "default",
          "default: deny",
          "dns.yaml:3",
          "NXDOMAIN",
        ],
        [
          "x.private.cdn.example",
          "deny",
          "deny-rule",
          "*.private.cdn.example",
          "dns.yaml:10",
          "NXDOMAIN",
        ],
      ],
    );
  });
});

const CREDENTIAL_POLICY = `${POLICY}credentials:
  KEY:
    from: env:KEY
    hosts: [api.example.com]
    placeholder: ph-key-7q2w9e4r
`;

Deno.test("startDnsServer() refuses a question carrying a placeholder NXDOMAIN, never asking the resolver", async () => {
  await withServer(async ({ server, resolver, audit, resolved, violations }) => {
    // Under an allowed wildcard, in another case, another type, another class, over TCP: all
    // refused before the policy, the type or the class is looked at.
    const asked: [string, string[]][] = [
      ["ph-key-7q2w9e4r.cdn.example", ["A"]],
      ["x.PH-KEY-7Q2W9E4R.attacker.example", ["TXT"]],
      ["ph-key-7q2w9e4r.cdn.example", ["A", "-c", "CH"]],
      ["a-ph-key-7q2w9e4r-b.cdn.example", ["AAAA", "+tcp"]],
    ];
    for (const [name, args] of asked) {
      const r = await dig(server.udpAddr, name, ...args);
      assertEquals(r.status, "NXDOMAIN", r.out);
      assertEquals(r.answers, []);
    }
    assertEquals(resolver.calls, []);
    assertEquals(resolved, []);
    assertEquals(
      audit.records.map((r) => [r.host, r.qtype, r.verdict, r.code, r.violation, r.rcode]),
      asked.map(([name, args]) => [
        name.toLowerCase(),
        args[0],
        "deny",
        "credential-violation",
        "KEY",
        "NXDOMAIN",
      ]),
    );
    assertEquals(audit.records[0].rule, "credentials.KEY.hosts");
    assertEquals(audit.records[0].rule_at, "dns.yaml:12");
    assertMatch(audit.records[0].reason, /DNS question carries the placeholder of credential KEY/);
    assertEquals(violations, asked.map(([name]) => ["KEY", name.toLowerCase()]));
    // The credential's own host is no exception: a placeholder never goes in a name.
    assertEquals((await dig(server.udpAddr, "ph-key-7q2w9e4r.api.example.com")).status, "NXDOMAIN");
    assertEquals(resolver.calls, []);
    // Other names are answered as before.
    assertEquals((await dig(server.udpAddr, "a.cdn.example")).answers[0]?.[4], "192.0.2.20");
    assertEquals(resolver.calls, ["a.cdn.example"]);
  }, {
    policy: CREDENTIAL_POLICY,
    placeholders: { KEY: "ph-key-7q2w9e4r" },
  });
});

Deno.test("startDnsServer() answers wildcard and HTTP-rule hosts, and follows a policy reload", async () => {
  await withServer(async ({ server, resolver, setPolicy }) => {
    assertEquals((await dig(server.udpAddr, "a.cdn.example")).answers[0]?.[4], "192.0.2.20");
    assertEquals((await dig(server.udpAddr, "github.example")).answers[0]?.[4], "192.0.2.30");
    assertEquals((await dig(server.udpAddr, "anything.example")).status, "NXDOMAIN");
    setPolicy("version: 1\nnetwork: { default: allow, deny: [a.cdn.example] }\n");
    assertEquals((await dig(server.udpAddr, "anything.example")).answers[0]?.[4], "198.51.100.1");
    assertEquals((await dig(server.udpAddr, "a.cdn.example")).status, "NXDOMAIN");
    assertEquals(resolver.calls, ["a.cdn.example", "github.example", "anything.example"]);
  });
});

Deno.test("startDnsServer() answers other types for allowed names with NODATA, PTR NXDOMAIN, ANY NOTIMP", async () => {
  await withServer(async ({ server, resolver, setPolicy }) => {
    for (const type of ["HTTPS", "SVCB", "MX", "TXT"]) {
      const r = await dig(server.udpAddr, "api.example.com", type);
      assertEquals([r.status, r.answers.length], ["NOERROR", 0], r.out);
    }
    assertEquals((await dig(server.udpAddr, "v6only.cdn.example", "A")).answers, []);
    assertEquals((await dig(server.udpAddr, "empty.cdn.example", "A")).status, "NOERROR");
    assertEquals((await dig(server.udpAddr, "-x", "192.0.2.10")).status, "NXDOMAIN");
    assertEquals((await dig(server.udpAddr, "api.example.com", "ANY")).status, "NOTIMP");
    assertEquals(
      (await dig(server.udpAddr, "api.example.com", "AXFR")).out.includes("192.0.2"),
      false,
    );
    assertEquals((await dig(server.udpAddr, "-c", "CH", "version.bind", "TXT")).status, "REFUSED");
    assertEquals(resolver.calls, ["v6only.cdn.example", "empty.cdn.example"]);
    // Even when every name is allowed, PTR is not resolved upstream.
    setPolicy("version: 1\nnetwork: { default: allow }\n");
    assertEquals((await dig(server.udpAddr, "-x", "192.0.2.10")).status, "NXDOMAIN");
    assertEquals(resolver.calls.length, 2);
  });
});

Deno.test("startDnsServer() maps resolver failures: unknown name NXDOMAIN, EAI_AGAIN and timeouts SERVFAIL", async () => {
  await withServer(async ({ server, audit }) => {
    assertEquals((await dig(server.udpAddr, "gone.cdn.example")).status, "NXDOMAIN");
    assertEquals((await dig(server.udpAddr, "flaky.cdn.example")).status, "SERVFAIL");
    assertEquals(audit.records.map((r) => r.error), ["ENOTFOUND", "EAI_AGAIN"]);
  });
  await withServer(async ({ server, audit }) => {
    const r = await udpQuery(server.udpAddr, "a.cdn.example", QTYPE.A);
    assertEquals(r.rcode, RCODE.SERVFAIL);
    assertEquals(audit.records[0].error, "timeout");
    await new Promise((r) => setTimeout(r, 350)); // let the fake's slow lookup finish
  }, { delayMs: 300, resolveTimeoutMs: 50 });
});

Deno.test("startDnsServer() serves dig over TCP on the UDP port", async () => {
  await withServer(async ({ server }) => {
    assertEquals(server.tcpAddr.port, server.udpAddr.port);
    const r = await dig(server.tcpAddr, "+tcp", "api.example.com", "A");
    assertEquals(r.status, "NOERROR", r.out);
    assertEquals(r.answers.map((a) => a[4]), ["192.0.2.10", "192.0.2.11"]);
    assertMatch(r.out, /\(TCP\)/);
  });
});

Deno.test("startDnsServer() truncates a large UDP answer with TC, and dig retries over TCP", async () => {
  await withServer(async ({ server }) => {
    const noRetry = await dig(server.udpAddr, "+ignore", "+noedns", "many.example", "AAAA");
    assert(noRetry.flags.includes("tc"), noRetry.out);
    assertEquals(noRetry.answers, []);
    const retried = await dig(server.udpAddr, "many.example", "AAAA");
    assertEquals(retried.answers.map((a) => a[4]), MANY);
    assertMatch(retried.out, /Truncated, retrying in TCP mode/);
  });
});

Deno.test("startDnsServer() honours the EDNS0 size up to 1232 bytes", async () => {
  await withServer(async ({ server, setPolicy }) => {
    // 40 AAAA answers: about 1.2 KB, over 512 but under 1232.
    const forty = Object.fromEntries([["forty.example", MANY.slice(0, 40)]]);
    Object.assign(TABLE, forty);
    try {
      setPolicy("version: 1\nnetwork: { allow: [forty.example, many.example] }\n");
      const classic = await udpQuery(server.udpAddr, "forty.example", QTYPE.AAAA);
      assertEquals([classic.flags.tc, classic.answers.length, classic.edns], [true, 0, undefined]);
      const edns = await udpQuery(server.udpAddr, "forty.example", QTYPE.AAAA, 4096);
      assertEquals([edns.flags.tc, edns.answers.length], [false, 40]);
      assertEquals(edns.edns, { udpSize: 1232, version: 0, dnssecOk: false });
      const small = await udpQuery(server.udpAddr, "forty.example", QTYPE.AAAA, 800);
      assertEquals([small.flags.tc, small.answers.length], [true, 0]);
      // 60 answers do not fit even in 1232 bytes, whatever the client offers.
      const capped = await udpQuery(server.udpAddr, "many.example", QTYPE.AAAA, 65535);
      assertEquals([capped.flags.tc, capped.answers.length], [true, 0]);
      const badvers = buildQuery({ id: 9, name: "forty.example", qtype: QTYPE.A, udpSize: 1232 });
      badvers[badvers.length - 5] = 1; // OPT version 1
      const bv = parseResponse((await udpExchange(server.udpAddr, badvers))!);
      assertEquals([bv.rcode, bv.answers.length], [RCODE.BADVERS, 0]);
    } finally {
      delete TABLE["forty.example"];
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Hand-built messages over Deno UDP

Deno.test("startDnsServer() echoes the id and the question's case over hand-built UDP", async () => {
  await withServer(async ({ server }) => {
    const r = await udpQuery(server.udpAddr, "aPi.ExAmPlE.cOm", QTYPE.A);
    assertEquals(r.question, { name: "aPi.ExAmPlE.cOm", qtype: QTYPE.A, qclass: 1 });
    assertEquals(addresses(r), ["192.0.2.10", "192.0.2.11"]);
    assertEquals(r.answers.map((a) => a.ttl), [30, 30]);
  });
});

Deno.test("startDnsServer() answers FORMERR to a readable header and drops what is not a query", async () => {
  await withServer(async ({ server, resolver }) => {
    const garbage = Uint8Array.of(0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 9, 1, 2);
    const fe = parseResponse((await udpExchange(server.udpAddr, garbage))!);
    assertEquals([fe.id, fe.rcode, fe.question], [0xabcd, RCODE.FORMERR, undefined]);
    assertEquals(await udpExchange(server.udpAddr, Uint8Array.of(1, 2, 3, 4, 5), 300), null);
    const response = buildQuery({ id: 3, name: "api.example.com", qtype: QTYPE.A });
    response[2] |= 0x80;
    assertEquals(await udpExchange(server.udpAddr, response, 300), null);
    const status = Uint8Array.of(0, 7, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0); // opcode STATUS
    assertEquals(parseResponse((await udpExchange(server.udpAddr, status))!).rcode, RCODE.NOTIMP);
    const huge = new Uint8Array(5000);
    huge.set(buildQuery({ id: 4, name: "api.example.com", qtype: QTYPE.A }));
    assertEquals(parseResponse((await udpExchange(server.udpAddr, huge))!).rcode, RCODE.FORMERR);
    // The server is still fine, and nothing reached the resolver.
    assertEquals(resolver.calls, []);
    assertEquals((await udpQuery(server.udpAddr, "a.cdn.example", QTYPE.A)).rcode, RCODE.NOERROR);
  });
});

Deno.test("startDnsServer() resolves a name once for concurrent A and AAAA queries", async () => {
  await withServer(async ({ server, resolver, resolved }) => {
    const [a, aaaa] = await Promise.all([
      udpQuery(server.udpAddr, "api.example.com", QTYPE.A),
      udpQuery(server.udpAddr, "api.example.com", QTYPE.AAAA),
    ]);
    assertEquals([addresses(a), addresses(aaaa)], [["192.0.2.10", "192.0.2.11"], ["2001:db8::10"]]);
    assertEquals(resolver.calls.length, 1);
    assertEquals(resolved.length, 1);
  }, { delayMs: 100 });
});

Deno.test("startDnsServer() works over node:dgram when Deno.listenDatagram is not used", async () => {
  await withServer(async ({ server }) => {
    assertEquals(addresses(await udpQuery(server.udpAddr, "a.cdn.example", QTYPE.A)), [
      "192.0.2.20",
    ]);
    assertEquals(
      (await udpQuery(server.udpAddr, "secret.attacker.example", QTYPE.A)).rcode,
      RCODE.NXDOMAIN,
    );
    assertEquals(
      (await dig(server.udpAddr, "api.example.com", "AAAA")).answers[0]?.[4],
      "2001:db8::10",
    );
  }, { udpBackend: "node" });
});

// ---------------------------------------------------------------------------------------------
// TCP framing

Deno.test("startDnsServer() answers pipelined TCP queries in order, even split byte by byte", async () => {
  await withServer(async ({ server }) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.tcpAddr.port });
    try {
      const q1 = frame(buildQuery({ id: 1, name: "api.example.com", qtype: QTYPE.A }));
      const q2 = frame(buildQuery({ id: 2, name: "secret.attacker.example", qtype: QTYPE.A }));
      const q3 = frame(buildQuery({ id: 3, name: "many.example", qtype: QTYPE.AAAA }));
      const all = new Uint8Array([...q1, ...q2]);
      await conn.write(all);
      for (const b of q3) await conn.write(Uint8Array.of(b));
      const got = (await readFrames(conn, 3)).map(parseResponse);
      assertEquals(got.map((r) => [r.id, r.rcode, r.flags.tc, r.answers.length]), [
        [1, RCODE.NOERROR, false, 2],
        [2, RCODE.NXDOMAIN, false, 0],
        [3, RCODE.NOERROR, false, 60],
      ]);
    } finally {
      conn.close();
    }
  });
});

Deno.test("startDnsServer() closes a TCP connection on a zero length, on a non-query, and when idle", async () => {
  await withServer(async ({ server }) => {
    for (const bytes of [Uint8Array.of(0, 0), frame(Uint8Array.of(1, 2, 3))]) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.tcpAddr.port });
      try {
        await conn.write(bytes);
        assertEquals(await conn.read(new Uint8Array(16)), null);
      } finally {
        conn.close();
      }
    }
    const idle = await Deno.connect({ hostname: "127.0.0.1", port: server.tcpAddr.port });
    try {
      const t0 = performance.now();
      await idle.write(Uint8Array.of(0)); // half a length prefix, then silence
      assertEquals(await idle.read(new Uint8Array(16)), null);
      const ms = performance.now() - t0;
      assert(ms >= 150 && ms < 2000, `closed after ${ms.toFixed(0)} ms, expected about 200`);
    } finally {
      idle.close();
    }
    const big = new Uint8Array(6000);
    big.set(buildQuery({ id: 77, name: "api.example.com", qtype: QTYPE.A }));
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.tcpAddr.port });
    try {
      await conn.write(frame(big));
      const [r] = (await readFrames(conn, 1)).map(parseResponse);
      assertEquals([r.id, r.rcode], [77, RCODE.FORMERR]);
    } finally {
      conn.close();
    }
  }, { tcpIdleMs: 200 });
});

Deno.test("startDnsServer() close() ends open TCP connections and frees the port", async () => {
  // Test files run in parallel: another one may take the freed port before it is bound again.
  // That is retried with a fresh server; a server that keeps its port fails every attempt.
  for (let attempt = 1;; attempt++) {
    const server = await startDnsServer({
      hostname: "127.0.0.1",
      port: 0,
      policy: () => compile(POLICY),
      resolver: new FakeResolver(TABLE),
      audit: new MemoryAudit(),
    });
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.tcpAddr.port });
    await server.close();
    try {
      assertEquals(await conn.read(new Uint8Array(4)), null);
    } finally {
      conn.close();
    }
    let again;
    try {
      again = await startDnsServer({
        hostname: "127.0.0.1",
        port: server.udpAddr.port,
        policy: () => compile(POLICY),
        resolver: new FakeResolver(TABLE),
        audit: new MemoryAudit(),
      });
    } catch (e) {
      if (e instanceof Deno.errors.AddrInUse && attempt < 5) continue;
      throw e;
    }
    assertEquals(again.tcpAddr.port, server.udpAddr.port);
    await again.close();
    return;
  }
});

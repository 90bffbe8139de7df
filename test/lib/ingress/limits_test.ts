import { assert, assertEquals, assertMatch, assertThrows } from "../../_assert.ts";
import {
  clientKey,
  ConnectionGuard,
  DEFAULT_LIMITS,
  HopClock,
  type Limits,
  parseLimitFlags,
  type Refusal,
  shareWatch,
  TunnelClock,
  type Watch,
  watchOf,
} from "../../../lib/ingress/limits.ts";
import type { AuditRecord, AuditSink } from "../../../lib/ops/audit.ts";
import { Metrics } from "../../../lib/ops/metrics.ts";
import { splice } from "../../../lib/ingress/splice.ts";
import { sniffClientHello } from "../../../lib/ingress/sniff.ts";

function memoryAudit(): AuditSink & { records: AuditRecord[] } {
  const records: AuditRecord[] = [];
  return { records, write: (r) => void records.push(r), close: () => Promise.resolve() };
}

function newMetrics(): Metrics {
  return new Metrics({
    activeConnections: () => 0,
    leafCache: () => ({ hits: 0, misses: 0, size: 0 }),
    policyGeneration: () => 1,
    lastReloadOk: () => 1,
  });
}

/** A connection that records what is written to it and reads EOF. */
function fakeConn(hostname: string, port = 40000) {
  const written: Uint8Array[] = [];
  let closed = false;
  const conn = {
    remoteAddr: { transport: "tcp", hostname, port },
    write: (p: Uint8Array) => {
      written.push(p.slice());
      return Promise.resolve(p.length);
    },
    closeWrite: () => Promise.resolve(),
    read: () => Promise.resolve(null),
    close: () => {
      closed = true;
    },
  };
  return {
    conn: conn as unknown as Deno.Conn,
    text: () => written.map((b) => new TextDecoder().decode(b)).join(""),
    closed: () => closed,
  };
}

function setup(over: Partial<Limits> = {}, realTime = false) {
  let t = 1_000_000;
  const clock = {
    now: realTime ? Date.now : () => t,
    advance: (ms: number) => (t += ms),
  };
  const audit = memoryAudit();
  const metrics = newMetrics();
  const limits = { ...DEFAULT_LIMITS, ...over };
  const guard = new ConnectionGuard({ limits, metrics, audit, now: clock.now });
  return { guard, audit, metrics, clock, limits };
}

Deno.test("parseLimitFlags() reads durations and counts, and names the valid limits", () => {
  assertEquals(
    parseLimitFlags([
      "head=500ms",
      "keep-alive=30s",
      "tunnel-idle=2m",
      "first-bytes=5",
      "per-client=64",
      "reserve=0",
    ]),
    {
      headTimeoutMs: 500,
      keepAliveIdleMs: 30_000,
      idleTimeoutMs: 120_000,
      handshakeTimeoutMs: 5_000,
      maxConnectionsPerClient: 64,
      reservedConnections: 0,
    },
  );
  assertMatch(
    assertThrows(() => parseLimitFlags(["heads=1s"]), Error).message,
    /unknown limit "heads"; one of first-bytes, connect, .*per-client/,
  );
  assertMatch(
    assertThrows(() => parseLimitFlags(["head=soon"]), Error).message,
    /head takes a duration such as 500ms/,
  );
  assertMatch(
    assertThrows(() => parseLimitFlags(["per-client=0"]), Error).message,
    /per-client takes a whole number of at least 1/,
  );
});

Deno.test("clientKey() counts IPv4 per address and IPv6 per /64", () => {
  assertEquals(clientKey("10.1.2.3"), "10.1.2.3");
  assertEquals(clientKey("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
  assertEquals(clientKey("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::/64");
  assertEquals(clientKey("::ffff:10.1.2.3"), "10.1.2.3");
});

Deno.test("ConnectionGuard caps each client, and refuses past the global cap", () => {
  const { guard, metrics, audit } = setup({
    maxConnections: 10,
    maxConnectionsPerClient: 3,
    reservedConnections: 1,
  });
  try {
    const a = [1, 2, 3].map((p) => guard.admit(fakeConn("10.0.0.1", p).conn, "explicit"));
    assert(a.every((w) => w.kind === "admitted"));
    const r = guard.admit(fakeConn("10.0.0.1").conn, "explicit") as Refusal;
    assertEquals([r.kind, r.code], ["refused", "limit-per-client"]);
    assertMatch(r.reason, /10\.0\.0\.1 holds 3 connections, the per-client limit/);
    // Another client is not affected; releasing one gives the first client its place back.
    assertEquals(guard.admit(fakeConn("10.0.0.2").conn, "explicit").kind, "admitted");
    guard.release(a[0] as Watch);
    assertEquals(guard.heldBy("10.0.0.1"), 2);
    assertEquals(guard.admit(fakeConn("10.0.0.1").conn, "explicit").kind, "admitted");
    for (let i = 0; guard.size < 10; i++) guard.admit(fakeConn(`10.0.1.${i}`).conn, "explicit");
    const full = guard.admit(fakeConn("10.0.9.9").conn, "transparent") as Refusal;
    assertEquals(full.code, "limit-total");
    // Refusals are counted, and a transparent TLS refusal is only closed.
    const f = fakeConn("10.0.9.9");
    guard.refuse(f.conn, full, "transparent", false);
    assert(f.closed());
    assertEquals(f.text(), "");
    assertEquals(metrics.refused.get({ code: "limit-total", mode: "transparent" }), 1);
    assertEquals(audit.records.length, 1);
  } finally {
    guard.close();
  }
});

Deno.test("ConnectionGuard's reserve refuses the clients holding the most first", () => {
  // 100 connections, the last 40 a reserve; per-client 60. Inside the reserve, a client is
  // admitted while it holds fewer than 60 * (100 - total) / 40.
  const { guard } = setup({
    maxConnections: 100,
    maxConnectionsPerClient: 60,
    reservedConnections: 40,
  });
  try {
    const admit = (ip: string) => guard.admit(fakeConn(ip).conn, "explicit");
    while (admit("10.0.0.1").kind === "admitted");
    assertEquals(guard.heldBy("10.0.0.1"), 60); // its per-client cap, outside the reserve
    let r: Watch | Refusal;
    while ((r = admit("10.0.0.2")).kind === "admitted");
    assertEquals((r as Refusal).code, "limit-reserve");
    // B stopped where its holding met the falling bar: b >= 60 * (40 - b) / 40, so b = 24.
    assertEquals(guard.heldBy("10.0.0.2"), 24);
    assertMatch(
      (r as Refusal).reason,
      /go to clients holding fewer than 24 now, and 10\.0\.0\.2 holds 24/,
    );
    // A client holding few still gets in, until the very last place.
    while (guard.size < 99) assertEquals(admit(`10.0.1.${guard.size}`).kind, "admitted");
    assertEquals(admit("10.0.2.1").kind, "admitted");
    assertEquals((admit("10.0.2.2") as Refusal).code, "limit-total");
  } finally {
    guard.close();
  }
});

Deno.test("a refused HTTP client reads a 503 naming the limit, and the audit is rate-limited", async () => {
  const { guard, audit, clock, metrics } = setup({ maxConnectionsPerClient: 1 });
  try {
    guard.admit(fakeConn("10.0.0.1").conn, "explicit");
    const refusals: ReturnType<typeof fakeConn>[] = [];
    for (let i = 0; i < 25; i++) {
      const f = fakeConn("10.0.0.1");
      const r = guard.admit(f.conn, "explicit") as Refusal;
      guard.refuse(f.conn, r, "explicit", true);
      refusals.push(f);
    }
    await new Promise((r) => setTimeout(r, 10));
    const text = refusals[0].text();
    assertMatch(text, /^HTTP\/1\.1 503 Service Unavailable\r\n/);
    assertMatch(text, /\r\nx-sluice-decision: deny; code=limit-per-client\r\n/);
    assertMatch(text, /\r\n\r\nsluice refused this connection: 10\.0\.0\.1 holds 1 connections/);
    assert(refusals.every((f) => f.closed()), "a refused connection is closed once drained");
    assertEquals(metrics.refused.get({ code: "limit-per-client", mode: "explicit" }), 25);
    // The first refusal is audited at once; the other 24 as one line when the window ends.
    assertEquals(audit.records.length, 1);
    assertMatch(audit.records[0].reason, /^1 connection\(s\) refused with 503: /);
    guard.sweep(clock.advance(500));
    assertEquals(audit.records.length, 1);
    guard.sweep(clock.advance(600));
    assertEquals(audit.records.length, 2);
    assertMatch(audit.records[1].reason, /^24 more connection\(s\) refused with 503 within 1 s: /);
    assertEquals(
      [audit.records[1].code, audit.records[1].client, audit.records[1].status],
      ["limit-per-client", "10.0.0.1", 503],
    );
    // A quiet window ends the series: the next refusal is again written at once.
    guard.sweep(clock.advance(1100));
    const f = fakeConn("10.0.0.1");
    guard.refuse(f.conn, guard.admit(f.conn, "explicit") as Refusal, "explicit", false);
    assertEquals(audit.records.length, 3);
  } finally {
    guard.close();
  }
});

Deno.test("the sweep closes a connection whose stage deadline passed, and audits abnormal stages", () => {
  const { guard, audit, clock, metrics } = setup({ handshakeTimeoutMs: 10_000 });
  try {
    const slow = fakeConn("10.0.0.1");
    const idle = fakeConn("10.0.0.1");
    const w1 = guard.admit(slow.conn, "transparent") as Watch;
    const w2 = guard.admit(idle.conn, "explicit") as Watch;
    assertEquals(watchOf(slow.conn), w1);
    w2.arm("keep-alive", 20_000);
    guard.sweep(clock.advance(9_999));
    assert(!slow.closed());
    guard.sweep(clock.advance(1));
    assert(slow.closed());
    assertEquals(w1.expired, "first-bytes");
    assertEquals(metrics.deadlines.get({ stage: "first-bytes" }), 1);
    assertEquals(audit.records.length, 1);
    assertEquals([audit.records[0].code, audit.records[0].client], ["timeout", "10.0.0.1"]);
    assertMatch(audit.records[0].reason, /within 10000 ms \(the first-bytes deadline\)/);
    guard.sweep(clock.advance(10_000));
    assert(idle.closed());
    // Closing an idle keep-alive connection is normal: counted, not audited.
    assertEquals(metrics.deadlines.get({ stage: "keep-alive" }), 1);
    assertEquals(audit.records.length, 1);
  } finally {
    guard.close();
  }
});

Deno.test("HopClock: TLS handshake, first head, later HTTP/1.1 heads, keep-alive, upgrade", () => {
  let t = 0;
  const now = () => t;
  const l: Limits = {
    ...DEFAULT_LIMITS,
    tlsHandshakeTimeoutMs: 100,
    headTimeoutMs: 200,
    keepAliveIdleMs: 1000,
    idleTimeoutMs: 5000,
  };
  const c = new HopClock(l, { secure: true, h2: false, firstHeadMs: 200, now });
  assertEquals([c.deadline(), c.stage], [100, "tls-handshake"]);
  t = 10;
  c.up(); // the client's bytes before any answer are not its second flight
  assertEquals(c.deadline(), 100);
  t = 20;
  c.down(); // ServerHello...
  t = 30;
  c.up(); // ...and the client's Finished: the handshake is over, the first head is due
  assertEquals([c.deadline(), c.stage], [230, "head"]);
  t = 100;
  c.begin();
  assertEquals([c.deadline(), c.stage], [5030, "request"]); // from the last byte
  t = 150;
  c.end(200);
  t = 160;
  c.down(); // the response
  assertEquals([c.deadline(), c.stage], [1160, "keep-alive"]);
  t = 500;
  c.up(); // the first bytes of the next head
  t = 600;
  c.up();
  assertEquals([c.deadline(), c.stage], [700, "head"]);
  t = 650;
  c.begin();
  c.end(101); // a WebSocket upgrade: a tunnel from now on
  t = 700;
  c.up();
  assertEquals([c.deadline(), c.stage], [5700, "tunnel"]);

  // HTTP/2: client frames between requests (window updates, pings) do not start a head.
  t = 0;
  const h2 = new HopClock(l, { secure: false, h2: true, firstHeadMs: 200, now });
  assertEquals([h2.deadline(), h2.stage], [200, "head"]);
  h2.begin();
  t = 10;
  h2.end(200);
  h2.down();
  t = 50;
  h2.up();
  assertEquals([h2.deadline(), h2.stage], [1010, "keep-alive"]);
  // A response body the handler reported as streaming keeps the connection busy.
  h2.bodyStarted();
  assertEquals([h2.deadline(), h2.stage], [5050, "request"]);
  t = 3000;
  h2.bodyEnded();
  assertEquals([h2.deadline(), h2.stage], [4000, "keep-alive"]);
});

Deno.test("TunnelClock: idle means no byte either way", () => {
  let t = 0;
  const c = new TunnelClock(1000, () => t);
  assertEquals(c.deadline(), 1000);
  t = 600;
  c.down();
  assertEquals(c.deadline(), 1600);
  t = 900;
  c.up();
  assertEquals([c.deadline(), c.stage], [1900, "tunnel"]);
});

async function pair(): Promise<[Deno.Conn, Deno.Conn, () => void]> {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [a, b] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: (l.addr as Deno.NetAddr).port }),
    l.accept(),
  ]);
  return [a, b, () => l.close()];
}

Deno.test("a watched passthrough splice is closed by the sweep when idle, not by a timer of its own", async () => {
  const { guard, metrics } = setup({ idleTimeoutMs: 300, sweepMs: 50 }, true);
  const [client, accepted, close1] = await pair();
  const [upstreamSide, server, close2] = await pair();
  try {
    const w = guard.admit(accepted, "transparent") as Watch;
    const started = Date.now();
    const done = splice(accepted, upstreamSide, undefined, 300);
    assertEquals(w.stage, "tunnel");
    await client.write(new Uint8Array([1, 2, 3]));
    await server.read(new Uint8Array(8));
    const r = await done;
    const elapsed = Date.now() - started;
    assert(r.idle, "the tunnel deadline should have ended the splice");
    assert(elapsed >= 300 && elapsed < 2000, `ended after ${elapsed} ms`);
    assertEquals(metrics.deadlines.get({ stage: "tunnel" }), 1);
    guard.release(w);
  } finally {
    guard.close();
    client.close();
    server.close();
    close1();
    close2();
  }
});

Deno.test("sniffClientHello() with a watch: a silent client is closed by the sweep and reported as a timeout", async () => {
  const { guard } = setup({ handshakeTimeoutMs: 200, sweepMs: 50 }, true);
  const [client, accepted, close] = await pair();
  try {
    const w = guard.admit(accepted, "transparent") as Watch;
    await client.write(new Uint8Array([0x16, 0x03, 0x01])); // a record header, then silence
    const r = await sniffClientHello(accepted, w);
    assertEquals(r.hello.kind, "timeout");
    assertEquals(w.expired, "first-bytes");
    guard.release(w);
  } finally {
    guard.close();
    client.close();
    close();
  }
});

Deno.test("shareWatch() lets a wrapper of an accepted connection find its watch", () => {
  const { guard } = setup();
  try {
    const f = fakeConn("10.0.0.1");
    const w = guard.admit(f.conn, "explicit") as Watch;
    const wrapper = { inner: f.conn };
    assertEquals(watchOf(wrapper), undefined);
    shareWatch(f.conn, wrapper);
    assertEquals(watchOf(wrapper), w);
  } finally {
    guard.close();
  }
});

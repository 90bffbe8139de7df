/**
 * The direct path's deadlines and caps (lib/ingress/direct_watch.ts) as scripted conversations:
 * a fake kernel (the sockets a sweep lists, and the shutdowns asked of it), a fake clock, and
 * the request events the handler reports. The real kernel source is tested in
 * test/lib/tls/socket_watch_test.ts, the whole path in test/e2e/direct_limits_test.ts.
 */
import { assert, assertEquals } from "../../_assert.ts";
import { ConnectionGuard, DEFAULT_LIMITS, type Limits } from "../../../lib/ingress/limits.ts";
import { DirectWatch, type KernelSocket, peerKey } from "../../../lib/ingress/direct_watch.ts";
import type { AuditRecord } from "../../../lib/ops/audit.ts";

const S = 1_000; // one second, in ms
const LIMITS: Limits = {
  ...DEFAULT_LIMITS,
  tlsHandshakeTimeoutMs: 10 * S,
  headTimeoutMs: 10 * S,
  keepAliveIdleMs: 60 * S,
  idleTimeoutMs: 300 * S,
  maxConnectionsPerClient: 2,
};

function setup(over: Partial<Limits> = {}) {
  let t = 5_000_000;
  const audit: AuditRecord[] = [];
  const limits = { ...LIMITS, ...over };
  const guard = new ConnectionGuard({
    limits,
    audit: { write: (r) => void audit.push(r), close: () => Promise.resolve() },
    now: () => t,
  });
  const sockets = new Map<number, KernelSocket>();
  const shut: number[] = [];
  const watch = new DirectWatch({
    guard,
    limits,
    port: () => 443,
    now: () => t,
    source: {
      list: () => [...sockets.values()],
      shutdown: (fd) => {
        shut.push(fd);
        sockets.delete(fd);
      },
    },
  });
  const socket = (fd: number, hostname = "10.0.0.1", port = 40_000 + fd) => {
    const s = { fd, hostname, port, bytesReceived: 0, bytesAcked: 0 };
    sockets.set(fd, s);
    return s;
  };
  /** Time passes; the watch reads the kernel, then the guard ends what is overdue. */
  const after = (ms: number) => {
    t += ms;
    watch.sweep();
    guard.sweep(t);
  };
  return { watch, guard, socket, sockets, shut, after, audit, done: () => guard.close() };
}

Deno.test("direct watch: a TLS connection that never completes its handshake is ended", () => {
  const k = setup();
  const s = k.socket(3);
  s.bytesReceived = 517; // a ClientHello
  k.after(100);
  s.bytesAcked = 1_400; // the server's first flight; the client says nothing more
  k.after(9 * S);
  assertEquals(k.shut, []);
  k.after(1.5 * S);
  assertEquals(k.shut, [3]);
  const rec = k.audit.find((r) => r.code === "timeout");
  assert(rec?.reason.includes("tls-handshake"), JSON.stringify(k.audit));
  k.done();
});

Deno.test("direct watch: a handshake done but no request head within `head` is ended", () => {
  const k = setup();
  const s = k.socket(3);
  s.bytesReceived = 517;
  k.after(100);
  s.bytesAcked = 1_400;
  k.after(5 * S); // a slow client: its second flight comes 5 s later
  s.bytesReceived = 600; // the handshake is over; the head deadline starts now
  k.after(100);
  k.after(6 * S); // past the handshake deadline counted from the start: still open
  assertEquals(k.shut, []);
  k.after(4.5 * S);
  assertEquals(k.shut, [3]);
  assert(k.audit.some((r) => r.code === "timeout" && r.reason.includes("head")));
  k.done();
});

Deno.test("direct watch: a request in progress is kept while bytes move, keep-alive after", () => {
  const k = setup();
  const s = k.socket(3);
  assertEquals(k.watch.begin(s.hostname, s.port), undefined);
  for (let i = 0; i < 40; i++) {
    s.bytesAcked += 16_384; // a long download
    k.after(30 * S);
  }
  assertEquals(k.shut, [], "a busy connection was ended");
  k.watch.end(s.hostname, s.port, 200);
  k.after(59 * S);
  assertEquals(k.shut, []);
  k.after(2 * S);
  assertEquals(k.shut, [3], "an idle keep-alive connection outlived keep-alive");
  // Idle keep-alive is normal: counted, not audited.
  assertEquals(k.audit.filter((r) => r.code === "timeout"), []);
  k.done();
});

Deno.test("direct watch: a streamed body keeps its connection busy until it ends", () => {
  const k = setup();
  const s = k.socket(3);
  k.watch.begin(s.hostname, s.port);
  k.watch.end(s.hostname, s.port, 200);
  k.watch.bodyStarted(s.hostname, s.port);
  s.bytesAcked = 10;
  k.after(120 * S); // silent for longer than keep-alive, shorter than tunnel-idle
  assertEquals(k.shut, []);
  k.watch.bodyEnded(s.hostname, s.port);
  k.after(61 * S);
  assertEquals(k.shut, [3]);
  k.done();
});

Deno.test("direct watch: an upgraded connection follows tunnel-idle", () => {
  const k = setup();
  const s = k.socket(3);
  k.watch.begin(s.hostname, s.port);
  k.watch.end(s.hostname, s.port, 101);
  k.after(299 * S);
  assertEquals(k.shut, []);
  k.after(2 * S);
  assertEquals(k.shut, [3]);
  k.done();
});

Deno.test("direct watch: a client over its cap is refused, at its request or at the sweep", () => {
  const k = setup();
  const a = k.socket(3);
  const b = k.socket(4);
  k.after(100);
  assertEquals(k.guard.heldBy("10.0.0.1"), 2);
  // The third, first seen by its request: refused with the reason, ended when its fd is known.
  const c = k.socket(5);
  const refusal = k.watch.begin(c.hostname, c.port);
  assertEquals(refusal?.code, "limit-per-client");
  k.after(100);
  assertEquals(k.shut, [5]);
  // The fourth, first seen by the sweep: ended at once.
  k.socket(6);
  k.after(100);
  assertEquals(k.shut, [5, 6]);
  // Another client is not affected.
  const other = k.socket(7, "10.0.0.2");
  assertEquals(k.watch.begin(other.hostname, other.port), undefined);
  assertEquals(k.audit.filter((r) => r.code === "limit-per-client").length, 1, "rate-limited");
  // The refused ones, and a connection that ended, give their places back.
  k.sockets.delete(a.fd);
  k.after(100);
  assertEquals(k.guard.heldBy("10.0.0.1"), 1);
  assert(k.watch.begin(b.hostname, b.port) === undefined);
  k.done();
});

Deno.test("direct watch: a connection known only from a request is forgotten if never listed", () => {
  const k = setup();
  k.watch.begin("10.0.0.9", 5555);
  k.watch.end("10.0.0.9", 5555, 200);
  assertEquals(k.watch.size, 1);
  k.after(100);
  k.after(100);
  k.after(100);
  assertEquals(k.watch.size, 0);
  assertEquals(k.guard.heldBy("10.0.0.9"), 0);
  k.done();
});

Deno.test("peerKey: the kernel's and Deno's spellings of one peer agree", () => {
  const cases: [string, string, number][] = [
    ["IPv4", "127.0.0.1", 1],
    ["IPv4-mapped IPv6, as a dual-stack listener's table has it", "::ffff:127.0.0.1", 1],
    ["IPv4-mapped, hex", "::ffff:7f00:1", 1],
  ];
  for (const [name, host, port] of cases) {
    assertEquals(peerKey(host, port), peerKey("127.0.0.1", 1), name);
  }
  assertEquals(peerKey("2001:db8:0:0::1", 2), peerKey("2001:db8::1", 2), "IPv6, compressed");
  assertEquals(peerKey("[2001:db8::1]", 2), peerKey("2001:db8::1", 2), "IPv6, bracketed");
  assert(peerKey("127.0.0.1", 1) !== peerKey("127.0.0.1", 2), "ports differ");
});

Deno.test("direct watch: connections seen only by their request take no place under the caps", () => {
  // Short connections (one request each, closed before any sweep) must not fill the cap.
  const k = setup();
  for (let port = 1; port <= 5; port++) {
    assertEquals(k.watch.begin("10.0.0.1", port), undefined, `request ${port}`);
    k.watch.end("10.0.0.1", port, 200);
  }
  assertEquals(k.guard.heldBy("10.0.0.1"), 0);
  const s = k.socket(3);
  k.after(100);
  assertEquals(k.guard.heldBy("10.0.0.1"), 1);
  assertEquals(k.shut, []);
  assertEquals(k.watch.begin(s.hostname, s.port), undefined);
  k.done();
});

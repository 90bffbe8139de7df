/**
 * Pins lib/tls/socket_watch.ts on real sockets on 127.0.0.1: Deno's native HTTP server (plain
 * `Deno.serve`, and `serveHttpOnListener` over a resolver-backed `Deno.listenTls`) holds the
 * accepted connections; the watch must list exactly those, with TCP_INFO fields that tell idle,
 * dripping, requesting and streamed-to clients apart, and `shutdown()` must end one connection
 * (the client sees end-of-file, Deno releases the fd) without disturbing the others.
 */
import assert from "node:assert/strict";
import {
  parseProcNetTcp,
  SocketWatch,
  TcpState,
  type WatchedSocket,
} from "../../../lib/tls/socket_watch.ts";
import { listenTlsWithResolver, serveHttpOnListener } from "../../../lib/tls/deno_internal.ts";
import { ephemeralCa, mintLeaf } from "../../../lib/tls/ca.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean, ms = 2000): Promise<void> {
  const until = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** The socket this process holds as `fd`, if any. */
function linkOf(fd: number): string | undefined {
  try {
    return Deno.readLinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return undefined;
  }
}

function byPort(list: WatchedSocket[]): Map<number, WatchedSocket> {
  return new Map(list.map((s) => [s.port, s]));
}

/** "Recently" for the timers of active connections: generous, for a loaded CI machine. */
const SMALL = 300;

const REQUEST = enc.encode("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");

/** Reads until the buffer holds one whole response whose body is "ok"; returns its bytes. */
async function readOk(conn: Deno.Conn): Promise<number> {
  const buf = new Uint8Array(4096);
  let text = "";
  let bytes = 0;
  while (!text.endsWith("\r\n\r\nok")) {
    const n = await conn.read(buf);
    if (n === null) throw new Error(`EOF after ${JSON.stringify(text)}`);
    bytes += n;
    text += dec.decode(buf.subarray(0, n));
  }
  return bytes;
}

async function request(conn: Deno.Conn): Promise<number> {
  await conn.write(REQUEST);
  return await readOk(conn);
}

/** Resolves with the time (ms) it took `conn` to see end-of-file or a reset. */
async function timeToEnd(conn: Deno.Conn): Promise<number> {
  const t = performance.now();
  const buf = new Uint8Array(1024);
  try {
    while ((await conn.read(buf)) !== null) { /* drain */ }
  } catch { /* reset counts as the end */ }
  return performance.now() - t;
}

Deno.test("parseProcNetTcp() keeps the port's non-listening sockets that have an inode", () => {
  const header =
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
  const v4 = header +
    // the listener (LISTEN, 0A): skipped
    "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0\n" +
    // accepted, ESTABLISHED: kept
    "   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 1002 1 0000000000000000 20 4 30 10 -1\n" +
    // orphaned (inode 0, FIN_WAIT2): skipped
    "   2: 0100007F:1F90 0100007F:D2F2 05 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1\n" +
    // a client connection TO the port (remote 1F90): skipped
    "   3: 0100007F:D2F4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 20 4 30 10 -1\n" +
    // CLOSE_WAIT, a wide uid: kept
    "   4: 0100007F:1F90 0200007F:D2F6 08 00000000:00000001 00:00000000 00000000 123456        0 1005 1 0000000000000000 20 4 30 10 -1\n";
  assert.deepEqual(parseProcNetTcp(v4, "1F90", 8), [
    {
      inode: 1002,
      localPort: 0x1f90,
      localHex: "0100007F",
      remoteHex: "0100007F",
      remotePort: 0xd2f0,
    },
    {
      inode: 1005,
      localPort: 0x1f90,
      localHex: "0100007F",
      remoteHex: "0200007F",
      remotePort: 0xd2f6,
    },
  ]);
  const v6 = header +
    "   0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 20 4 30 10 -1\n";
  assert.deepEqual(parseProcNetTcp(v6, "1F90", 32), [{
    inode: 2002,
    localPort: 0x1f90,
    localHex: "0000000000000000FFFF00000100007F",
    remoteHex: "0000000000000000FFFF00000100007F",
    remotePort: 0xc350,
  }]);
  assert.deepEqual(parseProcNetTcp(v4, "1F91", 8), []);
  assert.deepEqual(parseProcNetTcp("", "1F90", 8), []);
});

Deno.test("SocketWatch.available() is true here, and list() prefers sock_diag", () => {
  assert.equal(SocketWatch.available(), true);
  using watch = new SocketWatch();
  assert.deepEqual(watch.list(1), []);
  assert.equal(watch.source, "sock_diag");
});

for (const [source, fdLookup] of [["sock_diag", "fstat"], ["proc", "links"]] as const) {
  Deno.test({
    name:
      `SocketWatch.list() (${source}, ${fdLookup}) reports Deno.serve's connections with TCP_INFO; shutdown() ends one only`,
    async fn() {
      const streams = new Set<ReturnType<typeof setInterval>>();
      const server = Deno.serve(
        { hostname: "127.0.0.1", port: 0, onListen() {} },
        (req) => {
          if (new URL(req.url).pathname !== "/stream") return new Response("ok");
          let timer: ReturnType<typeof setInterval> | undefined;
          const body = new ReadableStream<Uint8Array>({
            start(c) {
              const t = setInterval(() => c.enqueue(enc.encode("tick\n")), 40);
              timer = t;
              streams.add(t);
            },
            cancel() {
              clearInterval(timer);
              if (timer !== undefined) streams.delete(timer);
            },
          });
          return new Response(body);
        },
      );
      const port = server.addr.port;
      const connect = () => Deno.connect({ hostname: "127.0.0.1", port });
      const idle1 = await connect();
      const idle2 = await connect();
      const keepAlive = await connect();
      const drip = await connect();
      const active = await connect();
      const streamed = await connect();
      const clients = { idle1, idle2, keepAlive, drip, active, streamed };
      const portOf = (c: Deno.Conn) => (c.localAddr as Deno.NetAddr).port;
      using watch = new SocketWatch({ source, fdLookup });
      let stop = false;
      const loops: Promise<unknown>[] = [];
      try {
        // keepAlive: one request, then silence.
        const keepAliveAcked = await request(keepAlive);
        // streamed: one request whose response body never ends; its reader keeps ACKing.
        await streamed.write(enc.encode("GET /stream HTTP/1.1\r\nHost: a.test\r\n\r\n"));
        loops.push(
          (async () => {
            const buf = new Uint8Array(4096);
            while (!stop && (await streamed.read(buf)) !== null) { /* ACK and drop */ }
          })().catch(() => {}),
        );
        // drip: one byte of a never-ending request head every 30 ms.
        let dripped = 0;
        const head = enc.encode("GET / HTTP/1.1\r\nX-Slow: " + "a".repeat(1000));
        loops.push((async () => {
          while (!stop && dripped < head.length) {
            await drip.write(head.subarray(dripped, dripped + 1));
            dripped++;
            await sleep(30);
          }
        })());
        // active: a request every 30 ms.
        let requests = 0;
        loops.push((async () => {
          while (!stop) {
            await request(active);
            requests++;
            await sleep(30);
          }
        })());

        await sleep(150);
        const a = byPort(watch.list(port, "127.0.0.1"));
        await sleep(600);
        const listB = watch.list(port, "127.0.0.1");
        const b = byPort(listB);
        assert.equal(watch.source, source);

        // Exactly the accepted connections, keyed by the clients' ports (not the clients' own
        // sockets, which this process also holds, with the listener's port as their remote port).
        assert.deepEqual(
          [...b.keys()].sort(),
          Object.values(clients).map(portOf).sort(),
        );
        for (const s of listB) {
          assert.equal(s.state, TcpState.ESTABLISHED);
          assert.equal(s.hostname, "127.0.0.1");
          assert.equal(s.localHostname, "127.0.0.1");
          assert.equal(s.localPort, port);
          assert.equal(linkOf(s.fd), `socket:[${s.inode}]`);
        }
        // Both tables and no address give the same list (IPv4 only here).
        assert.deepEqual([...byPort(watch.list(port)).keys()].sort(), [...b.keys()].sort());

        const at = (m: Map<number, WatchedSocket>, c: Deno.Conn) => m.get(portOf(c))!;
        for (const c of [idle1, idle2]) {
          assert.equal(at(b, c).bytesReceived, 0);
          assert.equal(at(b, c).bytesAcked, 0);
          assert.ok(at(b, c).lastDataRecvMs >= 650, `idle: ${at(b, c).lastDataRecvMs}`);
          assert.ok(at(b, c).lastDataRecvMs - at(a, c).lastDataRecvMs >= 500);
        }
        // Exact byte counts: the one request sent, the one response read.
        assert.equal(at(b, keepAlive).bytesReceived, REQUEST.length);
        assert.equal(at(b, keepAlive).bytesAcked, keepAliveAcked);
        assert.ok(at(b, keepAlive).lastDataRecvMs >= 650);
        assert.ok(at(b, keepAlive).lastDataSentMs >= 650);

        assert.ok(at(b, drip).bytesReceived > at(a, drip).bytesReceived + 10);
        assert.ok(Math.abs(at(b, drip).bytesReceived - dripped) <= 1, `${dripped} dripped`);
        assert.equal(at(b, drip).bytesAcked, 0);
        assert.ok(at(b, drip).lastDataRecvMs < SMALL, `drip: ${at(b, drip).lastDataRecvMs}`);

        assert.ok(requests > 5);
        assert.ok(at(b, active).lastDataRecvMs < SMALL);
        assert.ok(at(b, active).lastDataSentMs < SMALL);
        assert.ok(at(b, active).bytesReceived > at(a, active).bytesReceived);
        assert.ok(at(b, active).bytesAcked > at(a, active).bytesAcked);

        // Sends but receives nothing: tells last_data_recv from last_data_sent and last_ack_recv.
        assert.ok(at(b, streamed).lastDataRecvMs >= 650, `${at(b, streamed).lastDataRecvMs}`);
        assert.ok(at(b, streamed).lastDataSentMs < SMALL);
        assert.ok(at(b, streamed).lastAckRecvMs < SMALL);
        assert.ok(at(b, streamed).bytesAcked > at(a, streamed).bytesAcked);
        assert.equal(at(b, streamed).bytesReceived, at(a, streamed).bytesReceived);

        // A steady sweep lists no fd again.
        const scans = watch.fdScans;
        watch.list(port, "127.0.0.1");
        assert.equal(watch.fdScans, scans);

        // shutdown(): idle1's client sees the end at once; Deno releases the fd itself.
        const victim = at(b, idle1);
        const ended = timeToEnd(idle1);
        assert.equal(watch.shutdown(victim.fd), true);
        const ms = await ended;
        assert.ok(ms < 100, `EOF after ${ms} ms`);
        await waitFor(
          "Deno to release the fd",
          () => linkOf(victim.fd) !== `socket:[${victim.inode}]`,
        );
        await waitFor(
          "the connection to leave the list",
          () => !byPort(watch.list(port)).has(victim.port),
        );
        // The others go on.
        const before = requests;
        const dripBefore = dripped;
        await sleep(200);
        assert.ok(requests > before + 2);
        assert.ok(dripped > dripBefore + 2);
        const c = byPort(watch.list(port, "127.0.0.1"));
        assert.deepEqual(
          [...c.keys()].sort(),
          [idle2, keepAlive, drip, active, streamed].map(portOf).sort(),
        );
        assert.ok(at(c, streamed).bytesAcked > at(b, streamed).bytesAcked);
        assert.equal(await request(keepAlive), keepAliveAcked);
        // A stale fd (no longer in the last list) is refused.
        assert.equal(watch.shutdown(victim.fd), false);
      } finally {
        stop = true;
        await Promise.allSettled(loops);
        for (const c of Object.values(clients)) {
          try {
            c.close();
          } catch { /* closed */ }
        }
        for (const t of streams) clearInterval(t);
        await server.shutdown();
      }
    },
  });
}

for (const source of ["sock_diag", "proc"] as const) {
  Deno.test(`SocketWatch.list() (${source}) reads IPv6 and dual-stack listeners`, async () => {
    using watch = new SocketWatch({ source });
    for (
      const [listen, dial, peer] of [
        ["::1", "::1", "::1"],
        // An IPv4 client of a dual-stack listener is IPv4-mapped in the kernel's IPv6 table.
        ["::", "127.0.0.1", "::ffff:7f00:1"],
      ]
    ) {
      const server = Deno.serve(
        { hostname: listen, port: 0, onListen() {} },
        () => new Response("ok"),
      );
      const conn = await Deno.connect({ hostname: dial, port: server.addr.port });
      try {
        await waitFor(`${dial} listed`, () => watch.list(server.addr.port, listen).length === 1);
        const [s] = watch.list(server.addr.port, listen);
        assert.equal(s.hostname, peer);
        assert.equal(s.port, (conn.localAddr as Deno.NetAddr).port);
        assert.equal(s.localHostname, peer);
        assert.equal(linkOf(s.fd), `socket:[${s.inode}]`);
        // An IPv4 address reads only the IPv4 table.
        assert.deepEqual(watch.list(server.addr.port, "0.0.0.0"), []);
        const acked = await request(conn);
        await waitFor(
          "the response acknowledged",
          () => watch.list(server.addr.port, listen)[0]?.bytesAcked === acked,
        );
      } finally {
        conn.close();
        await server.shutdown();
      }
    }
  });
}

Deno.test("SocketWatch.shutdown() refuses an fd it did not list, and one reused since", async () => {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response("ok"),
  );
  const port = server.addr.port;
  const watch = new SocketWatch();
  const first = await Deno.connect({ hostname: "127.0.0.1", port });
  const others: Deno.Conn[] = [];
  try {
    await waitFor("the connection to be listed", () => watch.list(port).length === 1);
    const [s] = watch.list(port);
    // Some other fd of this process (stdin): never listed.
    assert.equal(watch.shutdown(0), false);
    // The connection goes, and its number is reused by another accepted socket before the next
    // list: shutdown(fd) must not end that one.
    first.close();
    await waitFor("Deno to release the fd", () => linkOf(s.fd) !== `socket:[${s.inode}]`);
    while (others.length < 20 && linkOf(s.fd) === undefined) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      others.push(c);
      await request(c);
    }
    // Reused: by one of these sockets, or (test files run in parallel in one process) by
    // whatever another test opened meanwhile, a pipe say. Either way not the listed socket.
    const link = linkOf(s.fd);
    assert.ok(link !== undefined && link !== `socket:[${s.inode}]`, link);
    assert.equal(watch.shutdown(s.fd), false);
    for (const c of others) assert.ok((await request(c)) > 0);
  } finally {
    for (const c of [first, ...others]) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    await server.shutdown();
  }
});

for (const [source, fdLookup] of [["sock_diag", "fstat"], ["proc", "links"]] as const) {
  Deno.test({
    name:
      `SocketWatch.shutdown() (${source}, ${fdLookup}) ends TLS connections of serveHttpOnListener ` +
      "(before and after the handshake); {reset} leaves no orphan",
    async fn() {
      const ca = await ephemeralCa();
      const listener = listenTlsWithResolver({
        hostname: "127.0.0.1",
        port: 0,
        resolver: async (name) => {
          const leaf = await mintLeaf(ca, name || "127.0.0.1");
          return { cert: leaf.certPem, key: leaf.keyPem };
        },
      });
      const served = serveHttpOnListener(
        listener,
        () => new Response("ok"),
        () => new Response("error", { status: 500 }),
      );
      const port = listener.addr.port;
      using watch = new SocketWatch({ source, fdLookup });
      const conns: Deno.Conn[] = [];
      try {
        // No ClientHello ever.
        const silent = await Deno.connect({ hostname: "127.0.0.1", port });
        conns.push(silent);
        // Handshake, one request, then keep-alive.
        const tls = await Deno.connectTls({
          hostname: "127.0.0.1",
          port,
          caCerts: [ca.certPem],
        });
        conns.push(tls);
        await tls.handshake();
        assert.ok((await request(tls)) > 0);
        const tlsPort = (tls.localAddr as Deno.NetAddr).port;
        const silentPort = (silent.localAddr as Deno.NetAddr).port;
        await waitFor("both listed", () => watch.list(port, "127.0.0.1").length === 2);
        const m = byPort(watch.list(port, "127.0.0.1"));
        assert.ok(m.get(tlsPort)!.bytesReceived > REQUEST.length); // ClientHello and more
        assert.ok(m.get(tlsPort)!.bytesAcked > 0); // the server's flight and the response
        assert.equal(m.get(silentPort)!.bytesReceived, 0);

        for (const [conn, reset] of [[silent, true], [tls, false]] as const) {
          const s = m.get((conn.localAddr as Deno.NetAddr).port)!;
          const ended = timeToEnd(conn);
          assert.equal(watch.shutdown(s.fd, { reset }), true);
          assert.ok((await ended) < 100);
          await waitFor("Deno to release the fd", () => linkOf(s.fd) !== `socket:[${s.inode}]`);
          // After Deno's close: with SO_LINGER 0 the socket is gone at once; without, it waits
          // in FIN_WAIT2 for this client's FIN (an orphan, inode 0).
          const tuple = (port.toString(16).toUpperCase().padStart(4, "0")) + " 0100007F:" +
            (s.port.toString(16).toUpperCase().padStart(4, "0"));
          const lingering = Deno.readTextFileSync("/proc/net/tcp").includes(tuple);
          assert.equal(lingering, !reset, `reset=${reset}: ${tuple} in /proc/net/tcp`);
        }
        assert.deepEqual(watch.list(port, "127.0.0.1"), []);

        // The listener still serves.
        const again = await Deno.connectTls({
          hostname: "127.0.0.1",
          port,
          caCerts: [ca.certPem],
        });
        conns.push(again);
        assert.ok((await request(again)) > 0);
      } finally {
        for (const c of conns) {
          try {
            c.close();
          } catch { /* closed */ }
        }
        await served.shutdown();
        await served.finished;
      }
    },
  });
}

/**
 * One client cannot exhaust the proxy (issue 12, item 6): a real `sluice serve` on loopback with
 * short deadlines and small caps (`--limit`), real sockets.
 *
 * - Every stage's deadline closes a connection held there, on time: silence after accept, after
 *   a CONNECT's 200, after a ClientHello (half-open TLS), slow request heads (first and later,
 *   plain and inside an intercepted tunnel), idle keep-alive, an idle passthrough tunnel. Busy
 *   connections (a slow download, a quiet WebSocket) are not closed.
 * - A flood from one address (127.0.0.1) is capped per client and answered with 503; a second
 *   flooder (127.0.0.3) is held out of the reserve; sluice's RSS stays bounded; the refusals are
 *   in the metrics and in the audit log, a line per client, kind and second with a count.
 * - Meanwhile a well-behaved client (curl from 127.0.0.2) makes allowed requests the whole time,
 *   and every one succeeds.
 */
import net from "node:net";
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { curl, startPlainUpstream, startSluice, startTlsUpstream, testCas } from "./_harness.ts";
import {
  captureClientHello,
  closedAfter,
  connectTunnel,
  drip,
  getRequest,
  readHead,
  readResponse,
  rssKiB,
  tlsThroughProxy,
  writeAll,
} from "./_flood.ts";
import { websocketThroughProxy } from "./_ws_client.ts";

const enc = new TextEncoder();

// The deadlines under test (ms), and how late the sweep may enforce them: it runs every quarter
// of the shortest deadline (here 500 ms); the rest is slack for a loaded 2-core machine.
const SHORT = 2_000; // first-bytes, connect, tls-handshake, head
const IDLE = 4_500; // keep-alive, tunnel-idle: far enough from SHORT to tell them apart
const LATE = 500 + 1_200;
const EARLY = 250;
const PER_CLIENT = 60;
const CONNECTIONS = 120;
const RESERVE = 40;
/** sluice's RSS may grow by at most this much during the flood (a held connection costs < 100 KiB). */
const RSS_GROWTH_KIB = 48 * 1024;

/** `Promise.all`, except that it waits for every promise before rejecting with the first failure. */
async function allSettledOrThrow<T extends readonly unknown[]>(
  promises: readonly [...{ [K in keyof T]: Promise<T[K]> }],
): Promise<T> {
  const settled = await Promise.allSettled(promises);
  for (const r of settled) if (r.status === "rejected") throw r.reason;
  return settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T;
}

Deno.test({
  name: "sluice serve under a connection flood: deadlines, caps, and the well-behaved client",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "sluice-flood-" });
    const cas = await testCas(dir);
    const up = startTlsUpstream(cas.trusted);
    const plain = startPlainUpstream();
    const policy = `${dir}/policy.yaml`;
    await Deno.writeTextFile(
      policy,
      `version: 1
network:
  default: deny
  allow:
    - allowed.test
    - plain.test
    - passthrough.test
    - 127.0.0.1:${up.port}
    - 127.0.0.1:${plain.port}
tls:
  passthrough: [passthrough.test]
  upstream:
    ca: [${cas.trustedPath}]
`,
    );
    const sluice = await startSluice(policy, dir, [
      ...["allowed.test", "plain.test", "passthrough.test"].flatMap((n) => [
        "--resolve",
        `${n}=127.0.0.1`,
      ]),
      "--admin",
      "127.0.0.1:0",
      ...[
        `first-bytes=${SHORT}ms`,
        `connect=${SHORT}ms`,
        `tls-handshake=${SHORT}ms`,
        `head=${SHORT}ms`,
        `keep-alive=${IDLE}ms`,
        `tunnel-idle=${IDLE}ms`,
        `per-client=${PER_CLIENT}`,
        `connections=${CONNECTIONS}`,
        `reserve=${RESERVE}`,
      ].flatMap((l) => ["--limit", l]),
    ]);
    const proxy = sluice.proxyPort;
    const caPem = await Deno.readTextFile(sluice.caPath);
    const tlsHost = `allowed.test:${up.port}`;
    const plainHost = `plain.test:${plain.port}`;
    const hello = await captureClientHello("allowed.test");
    const metrics = async () => {
      const r = await fetch(`http://127.0.0.1:${sluice.adminPort}/metrics`);
      return await r.text();
    };
    const metric = (text: string, name: string, labels: string) =>
      Number(new RegExp(`^${name}\\{${labels}\\} (\\d+)`, "m").exec(text)?.[1] ?? "0");

    // The well-behaved client: allowed requests from 127.0.0.2, one after another, all along.
    const good = { ok: 0, failures: [] as string[], stop: false };
    const goodClient = (async () => {
      const base = ["-x", `http://127.0.0.1:${proxy}`, "--interface", "127.0.0.2"];
      for (let i = 0; !good.stop; i++) {
        const args = i % 2
          ? [...base, `http://${plainHost}/echo?i=${i}`]
          : [...base, "--cacert", sluice.caPath, `https://${tlsHost}/echo?i=${i}`];
        const r = await curl(["--max-time", "10", "-w", "\n%{http_code}", ...args]);
        if (r.code === 0 && r.text.endsWith("\n200")) good.ok++;
        else good.failures.push(`${args.at(-1)}: exit ${r.code} ${r.stderr} ${r.text.slice(-200)}`);
      }
    })();

    try {
      await t.step("every stage's deadline closes a connection held there, on time", async () => {
        type Case = { name: string; expect: number; held: () => Promise<number | undefined> };
        const since = async (open: () => Promise<Deno.Conn>, after?: (c: Deno.Conn) => void) => {
          const conn = await open();
          const ref = Date.now();
          after?.(conn);
          try {
            return await closedAfter(conn, ref, 10_000);
          } finally {
            try {
              conn.close();
            } catch { /* closed */ }
          }
        };
        const tlsWithOneRequest = async () => {
          const tls = await tlsThroughProxy(proxy, tlsHost, caPem);
          await writeAll(tls, getRequest(tlsHost));
          assertMatch((await readResponse(tls)).head, /^HTTP\/1\.1 200/);
          return tls;
        };
        const plainWithOneRequest = async () => {
          const c = await Deno.connect({ hostname: "127.0.0.1", port: proxy });
          await writeAll(c, getRequest(plainHost, `http://${plainHost}/echo`));
          assertMatch((await readResponse(c)).head, /^HTTP\/1\.1 200/);
          return c;
        };
        const nextHead = (host: string, target: string) => (c: Deno.Conn) =>
          void drip(c, getRequest(host, target), 300);
        const cases: Case[] = [
          {
            name: "silence after accept (first-bytes)",
            expect: SHORT,
            held: () => since(() => Deno.connect({ hostname: "127.0.0.1", port: proxy })),
          },
          {
            name: "a slow first plain head (first-bytes)",
            expect: SHORT,
            held: () =>
              since(
                () => Deno.connect({ hostname: "127.0.0.1", port: proxy }),
                nextHead(plainHost, `http://${plainHost}/echo`),
              ),
          },
          {
            name: "silence after a CONNECT's 200 (connect)",
            expect: SHORT,
            held: () => since(async () => (await connectTunnel(proxy, tlsHost)).conn),
          },
          {
            name: "a ClientHello, then silence (tls-handshake)",
            expect: SHORT,
            held: () =>
              since(async () => {
                const { conn } = await connectTunnel(proxy, tlsHost);
                await writeAll(conn, hello);
                return conn;
              }),
          },
          {
            name: "a TLS session with no request (head)",
            expect: SHORT,
            held: () => since(() => tlsThroughProxy(proxy, tlsHost, caPem)),
          },
          {
            name: "a slow first head inside an intercepted tunnel (head)",
            expect: SHORT,
            held: () =>
              since(() => tlsThroughProxy(proxy, tlsHost, caPem), nextHead(tlsHost, "/echo")),
          },
          {
            name: "a slow second head inside an intercepted tunnel (head)",
            expect: SHORT,
            held: () => since(tlsWithOneRequest, nextHead(tlsHost, "/echo")),
          },
          {
            name: "a slow second plain head on a keep-alive connection (head)",
            expect: SHORT,
            held: () => since(plainWithOneRequest, nextHead(plainHost, `http://${plainHost}/`)),
          },
          {
            name: "an idle intercepted keep-alive connection (keep-alive)",
            expect: IDLE,
            held: () => since(tlsWithOneRequest),
          },
          {
            name: "an idle plain keep-alive connection (keep-alive)",
            expect: IDLE,
            held: () => since(plainWithOneRequest),
          },
          {
            name: "an idle passthrough tunnel (tunnel-idle)",
            expect: IDLE,
            held: () =>
              since(async () => {
                const { conn } = await connectTunnel(proxy, `passthrough.test:${up.port}`);
                const tls = await Deno.startTls(conn, {
                  hostname: "passthrough.test",
                  caCerts: [cas.trusted.certPem],
                });
                await writeAll(tls, getRequest(`passthrough.test:${up.port}`));
                assertMatch((await readResponse(tls)).head, /^HTTP\/1\.1 200/);
                return tls;
              }),
          },
        ];
        // Busy connections outlive every deadline: a download slower than the keep-alive and
        // head deadlines (HTTP/1.1 and HTTP/2), and a WebSocket quiet for longer than a head
        // deadline, then chatty for longer than the tunnel deadline.
        const n = 14 * 65536; // 14 chunks, 400 ms apart
        const download = (version: string) =>
          curl([
            "-x",
            `http://127.0.0.1:${proxy}`,
            "--cacert",
            sluice.caPath,
            version,
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{http_version}",
            `https://${tlsHost}/bytes?n=${n}&pace=400`,
          ]);
        const websocket = async () => {
          // Once in CI (hop path, the whole suite in parallel) this handshake was closed with
          // close_notify 68 ms in, unreproduced since: on failure, say what sluice audited.
          const ws = await websocketThroughProxy(proxy, tlsHost, caPem).catch(async (e) => {
            const recent = (await sluice.audit()).slice(-15).map((r) => JSON.stringify(r));
            throw new Error(`${e}\nsluice's last audit records:\n${recent.join("\n")}`);
          });
          try {
            assertMatch(ws.head, /^HTTP\/1\.1 101 /);
            await new Promise((r) => setTimeout(r, SHORT + 500));
            const replies: string[] = [];
            for (let i = 0; i < 6; i++) {
              await ws.send(0x1, enc.encode(`m${i}`));
              replies.push(new TextDecoder().decode((await ws.read()).payload));
              await new Promise((r) => setTimeout(r, 1000));
            }
            return replies;
          } finally {
            ws.close();
          }
        };
        // A case that fails early must not leave the others holding places into the next step
        // (whose per-client counts would then be off too): wait for all, then fail.
        const [closed, h1, h2, ws] = await allSettledOrThrow([
          allSettledOrThrow(cases.map((c) => c.held())),
          download("--http1.1"),
          download("--http2"),
          websocket(),
        ]);
        const report = cases.map((c, i) => `${c.name}: closed after ${closed[i]} ms`).join("\n");
        console.log(report);
        cases.forEach((c, i) => {
          const ms = closed[i];
          assert(ms !== undefined, `${c.name} was never closed\n${report}`);
          assert(
            ms >= c.expect - EARLY && ms <= c.expect + LATE,
            `${c.name}: closed after ${ms} ms, expected ${c.expect} ms\n${report}`,
          );
        });
        assertEquals(h1.text, `${n} 1.1`, h1.stderr);
        assertEquals(h2.text, `${n} 2`, h2.stderr);
        assertEquals(ws, ["echo:m0", "echo:m1", "echo:m2", "echo:m3", "echo:m4", "echo:m5"]);
      });

      await t.step(
        "a flood is capped per client and by the reserve; RSS stays bounded",
        async () => {
          const before = await metrics();
          const floodStart = new Date().toISOString();
          const rssBase = await rssKiB(sluice.pid);
          let rssPeak = rssBase;
          const sampling = setInterval(async () => {
            rssPeak = Math.max(rssPeak, await rssKiB(sluice.pid).catch(() => 0));
          }, 100);
          // Flooder A (127.0.0.1): half-open handshakes, slow heads in tunnels, idle keep-alive
          // connections and slow plain heads, well past its cap.
          type Got = { conn: Deno.Conn; kind: number } | { refused: string };
          const attempt = async (kind: number): Promise<Got> => {
            if (kind === 3) {
              const c = await Deno.connect({ hostname: "127.0.0.1", port: proxy });
              await writeAll(c, enc.encode(`GET http://${plainHost}/ HTTP/1.1\r\n`));
              // A refused connection is answered at once; a held one hears nothing.
              const head = await Promise.race([
                readHead(c).catch(() => "closed"),
                new Promise<string>((r) => setTimeout(() => r(""), 300)),
              ]);
              if (head) {
                c.close();
                return { refused: head };
              }
              return { conn: c, kind };
            }
            const { conn, head } = await connectTunnel(proxy, tlsHost);
            if (!head.startsWith("HTTP/1.1 200")) {
              conn.close();
              return { refused: head };
            }
            if (kind === 0) {
              await writeAll(conn, hello);
              return { conn, kind };
            }
            const tls = await Deno.startTls(conn, { hostname: "allowed.test", caCerts: [caPem] });
            if (kind === 1) {
              await writeAll(tls, enc.encode(`GET /echo HTTP/1.1\r\nHost: ${tlsHost}\r\n`));
            } else {
              await writeAll(tls, getRequest(tlsHost));
              await readResponse(tls);
            }
            return { conn: tls, kind };
          };
          // The slowest to open (a whole request) and the longest held go first, so that the
          // burst is over before the first of its connections reaches a deadline.
          const kinds = [...Array(15).fill(2), ...Array(15).fill(1), ...Array(50).fill(0)];
          kinds.push(...Array(20).fill(3));
          const a: Got[] = [];
          let next = 0;
          await Promise.all(Array.from({ length: 16 }, async () => {
            while (next < kinds.length) a.push(await attempt(kinds[next++]));
          }));
          const aHeld = a.filter((g): g is { conn: Deno.Conn; kind: number } => "conn" in g);
          const aRefused = a.filter((g): g is { refused: string } => "refused" in g);
          // Flooder B (127.0.0.3): silent connections, until the reserve keeps it out.
          const b = await Promise.all(
            Array.from(
              { length: 50 },
              () =>
                new Promise<{ sock: net.Socket; answer: string }>((resolve) => {
                  const sock = net.connect({
                    host: "127.0.0.1",
                    port: proxy,
                    localAddress: "127.0.0.3",
                  });
                  let answer = "";
                  sock.on("data", (d) => (answer += d.toString()));
                  sock.on("error", () => {});
                  setTimeout(() => resolve({ sock, answer }), 400);
                }),
            ),
          );
          const bHeld = b.filter((x) => x.answer === "");
          const bRefused = b.filter((x) => x.answer !== "");
          const during = await metrics();
          // The well-behaved client still gets through now, with both flooders at their caps.
          const now = await curl([
            "-x",
            `http://127.0.0.1:${proxy}`,
            "--interface",
            "127.0.0.2",
            "--cacert",
            sluice.caPath,
            "-w",
            "\n%{http_code}",
            `https://${tlsHost}/echo?during-flood`,
          ]);
          assertMatch(now.text, /\n200$/, now.stderr);

          // Flooder A got its cap, no more; the rest were answered 503 naming the limit.
          assertEquals(aHeld.length, PER_CLIENT, `A held ${aHeld.length}`);
          assertEquals(aRefused.length, kinds.length - PER_CLIENT);
          for (const r of aRefused) {
            assertMatch(r.refused, /^HTTP\/1\.1 503 /);
            assertMatch(r.refused, /x-sluice-decision: deny; code=limit-per-client\r\n/);
          }
          // Flooder B got into the reserve only while it held few; then 503 limit-reserve.
          assert(bHeld.length > 0 && bRefused.length > 0, `B held ${bHeld.length}`);
          // Past 80 held, B is admitted while b < 60 * (120 - 60 - b) / 40: it stops at 36, well
          // short of its own cap.
          assert(bHeld.length <= 40, `the reserve let B take ${bHeld.length}`);
          for (const r of bRefused) assertMatch(r.answer, /code=limit-reserve\r\n/);
          const refusedNow = (code: string) =>
            metric(during, "sluice_connections_refused_total", `code="${code}",mode="explicit"`) -
            metric(before, "sluice_connections_refused_total", `code="${code}",mode="explicit"`);
          assertEquals(refusedNow("limit-per-client"), aRefused.length);
          assertEquals(refusedNow("limit-reserve"), bRefused.length);

          // Every held connection is closed by its deadline (the longest is keep-alive).
          const ref = Date.now();
          const aClosed = await Promise.all(aHeld.map((g) => closedAfter(g.conn, ref, 10_000)));
          const bClosed = await Promise.all(bHeld.map((x) =>
            new Promise<number>((resolve) => {
              if (x.sock.destroyed || x.sock.readableEnded) return resolve(0);
              x.sock.on("close", () => resolve(Date.now() - ref));
            })
          ));
          clearInterval(sampling);
          for (const g of aHeld) g.conn.close();
          for (const x of b) x.sock.destroy();
          assert(aClosed.every((ms) => ms !== undefined && ms <= IDLE + LATE), String(aClosed));
          assert(bClosed.every((ms) => ms <= SHORT + LATE), String(bClosed));
          assert(
            rssPeak - rssBase < RSS_GROWTH_KIB,
            `RSS grew by ${(rssPeak - rssBase) / 1024} MiB during the flood`,
          );
          console.log(
            `flood: A held ${aHeld.length}, refused ${aRefused.length}; B held ${bHeld.length}, ` +
              `refused ${bRefused.length}; RSS ${(rssBase / 1024).toFixed(1)} -> peak ${
                (rssPeak / 1024).toFixed(1)
              } MiB`,
          );

          // Audit: a line per client and kind per second, whose counts add up to the refusals.
          await new Promise((r) => setTimeout(r, 1_600)); // the last window's count is written
          const records = await sluice.audit();
          const lines = (code: string, client: string) =>
            records.filter((r) => r.code === code && r.client === client);
          const total = (rs: Record<string, unknown>[]) =>
            rs.reduce((n, r) => n + Number(/^(\d+) /.exec(String(r.reason))?.[1] ?? NaN), 0);
          const perClient = lines("limit-per-client", "127.0.0.1");
          assertEquals(total(perClient), aRefused.length, JSON.stringify(perClient));
          assert(perClient.length <= 4, `${perClient.length} audit lines for one flood`);
          assertMatch(String(perClient[0].reason), /per-client limit \(--limit per-client=60\)/);
          assertEquals(total(lines("limit-reserve", "127.0.0.3")), bRefused.length);
          // The deadlines that closed the flood are audited the same way, not line by line.
          // (Idle keep-alive connections, kind 2, are closed without an audit line.)
          const timeouts = records.filter((r) =>
            r.code === "timeout" && r.client === "127.0.0.1" && String(r.time) >= floodStart
          );
          assertEquals(total(timeouts), aHeld.filter((g) => g.kind !== 2).length);
          assert(timeouts.length <= 12, `${timeouts.length} timeout lines for one flood`);
          const after = await metrics();
          for (const stage of ["tls-handshake", "head", "keep-alive", "first-bytes"]) {
            assert(
              metric(after, "sluice_deadline_closes_total", `stage="${stage}"`) > 0,
              `no deadline closes counted for ${stage}`,
            );
          }
        },
      );

      await t.step("the well-behaved client never failed", async () => {
        good.stop = true;
        await goodClient;
        assertEquals(good.failures, []);
        assert(good.ok >= 10, `only ${good.ok} requests made`);
      });
    } finally {
      good.stop = true;
      await goodClient;
      await sluice.stop();
      await up.close();
      await plain.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

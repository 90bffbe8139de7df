/**
 * Adversarial input against a real `sluice serve` (issue 12, items 3 and 5), over raw sockets,
 * TLS clients, openssl and dig on loopback.
 *
 * - A credential's placeholder in a name (the SNI of an intercepted or a passthrough connection,
 *   a CONNECT target, a DNS question, a Host) is a credential violation, refused before any
 *   lookup: every name that would leave (DNS, an upstream ClientHello) is answered by `--resolve`
 *   overrides and local listeners that record what reaches them, so "never resolved, never
 *   dialled" is observed, not assumed.
 * - Bad input gets a decision: unparseable hosts, malformed chunked bodies, bare LF in a later
 *   head, the request smuggling forms; each is answered with `x-sluice-decision`, leaves one
 *   audit line, and nothing reaches an upstream.
 * - Every violation is counted in `sluice_credential_violations_total`.
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import {
  placeholders,
  received,
  startPlainUpstream,
  startSluice,
  startTlsUpstream,
  testCas,
} from "./_harness.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const KEY = "real-adversarial-key-5e1c9d";

type Audit = Record<string, unknown>;

/** A port free on loopback for TCP and UDP now (the policy's DNS listener takes no port 0). */
function freePort(): number {
  for (let i = 0; i < 20; i++) {
    const tcp = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = tcp.addr.port;
    try {
      Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port }).close();
      return port;
    } catch {
      /* taken for UDP: try another */
    } finally {
      tcp.close();
    }
  }
  throw new Error("no free port for the DNS listener");
}

/** A TCP listener that only counts the connections it accepts (a passthrough destination). */
function countingListener() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const state = { accepted: 0 };
  (async () => {
    for await (const c of listener) {
      state.accepted++;
      c.close();
    }
  })().catch(() => {});
  return { port: listener.addr.port, state, close: () => listener.close() };
}

/** Reads from `conn` until it closes or `ms` pass; `closed` says which. */
async function readAll(
  conn: { read(p: Uint8Array): Promise<number | null>; close(): void },
  ms = 3000,
): Promise<{ text: string; closed: boolean }> {
  let text = "";
  let closed = false;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      conn.close();
    } catch { /* closed */ }
  }, ms);
  const buf = new Uint8Array(16384);
  try {
    while (true) {
      const n = await conn.read(buf);
      if (n === null) {
        closed = !timedOut;
        break;
      }
      text += dec.decode(buf.subarray(0, n));
    }
  } catch (e) {
    if (!timedOut) text += `<error ${(e as Error).message}>`;
  } finally {
    clearTimeout(timer);
  }
  try {
    conn.close();
  } catch { /* closed */ }
  return { text, closed };
}

/** Sends `parts` on a new connection (a short pause between them) and reads every answer. */
async function raw(port: number, parts: string[], ms = 3000) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const reading = readAll(conn, ms);
  for (const p of parts) {
    try {
      await conn.write(Uint8Array.from(p, (c) => c.charCodeAt(0)));
    } catch { /* closed by sluice: the answer says why */ }
    await new Promise((r) => setTimeout(r, 120));
  }
  return await reading;
}

/** The status codes of the responses in `text`, in order. */
function statuses(text: string): number[] {
  return [...text.matchAll(/HTTP\/1\.[01] (\d{3}) /g)].map((m) => Number(m[1]));
}

/** Opens a CONNECT tunnel through the proxy. */
async function tunnel(proxyPort: number, target: string): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: proxyPort });
  await conn.write(enc.encode(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`));
  const buf = new Uint8Array(1024);
  const n = await conn.read(buf);
  const head = dec.decode(buf.subarray(0, n ?? 0));
  assertMatch(head, /^HTTP\/1\.1 200 /, head);
  return conn;
}

Deno.test({
  name: "sluice serve refuses adversarial names and malformed requests, each with a decision",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "sluice-adversarial-" });
    const cas = await testCas(dir);
    const tlsUp = startTlsUpstream(cas.trusted);
    const plainUp = startPlainUpstream();
    const passDest = countingListener();
    const policy = `${dir}/policy.yaml`;
    await Deno.writeTextFile(
      policy,
      `version: 1
network:
  allow:
    - api.test
    - "*.wild.test"
    - "*.pass.test"
    - "127.0.0.1:${tlsUp.port}"
    - "127.0.0.1:${plainUp.port}"
    - "127.0.0.1:${passDest.port}"
credentials:
  KEY:
    from: env:SLUICE_ADVERSARIAL_KEY
    hosts: [api.test]
tls:
  passthrough: ["*.pass.test"]
  upstream: { ca: [${cas.trustedPath}] }
listen:
  dns: 127.0.0.1:${freePort()}
`,
    );
    const ph = (await placeholders(policy, `${dir}/state`)).KEY;
    assertMatch(ph, /^sluice-key-[a-z2-7]{26}$/);
    // Every name a placeholder could be sent to resolves locally: if sluice looked one up, the
    // override would answer it, and a connection would land on a listener that records it.
    const names = [`${ph}.wild.test`, `${ph}.pass.test`, "api.test", "sni.wild.test"];
    const sluice = await startSluice(
      policy,
      dir,
      [
        "--transparent-https",
        "127.0.0.1:0",
        "--transparent-http",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        ...names.flatMap((n) => ["--resolve", `${n}=127.0.0.1`]),
      ],
      undefined,
      { SLUICE_ADVERSARIAL_KEY: KEY },
    );
    const httpPort = Number(/, http [^:]+:(\d+);/.exec(sluice.stderr())?.[1]);
    const dnsPort = Number(/dns [^:]+:(\d+);/.exec(sluice.stderr())?.[1]);
    assert(httpPort && dnsPort, sluice.stderr());
    const proxy = sluice.proxyPort;
    const ca = await Deno.readTextFile(sluice.caPath);

    /** Audit records written since `from`, once sluice has flushed them. */
    const since = async (from: number, want = 1): Promise<Audit[]> => {
      const end = Date.now() + 3000;
      let all = await sluice.audit();
      while (all.length - from < want && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 50));
        all = await sluice.audit();
      }
      // A moment more: a second line for the same refusal would be a bug this should see.
      await new Promise((r) => setTimeout(r, 150));
      return (await sluice.audit()).slice(from);
    };
    /**
     * Runs `fn`, then checks that no upstream received anything (but the `forwarded` requests
     * allowed before the refused one) and returns the new audit lines.
     */
    const refused = async (fn: () => Promise<void>, want = 1, forwarded = 0): Promise<Audit[]> => {
      const from = (await sluice.audit()).length;
      const upstream = received.length;
      const dialled = passDest.state.accepted;
      await fn();
      const lines = await since(from, want);
      assertEquals(received.length, upstream + forwarded, "an upstream received the request");
      assertEquals(passDest.state.accepted, dialled, "the passthrough destination was dialled");
      return lines;
    };
    /** The one audit line of a refusal (asserting there is exactly one). */
    const one = (lines: Audit[]): Audit => {
      assertEquals(lines.length, 1, JSON.stringify(lines, null, 1));
      return lines[0];
    };

    try {
      // ---------------------------------------------------------------------------------------
      // Placeholders in names.

      await t.step(
        "a placeholder in an intercepted SNI: 403 over a minted leaf, decided as a violation",
        async () => {
          const lines = await refused(async () => {
            const tcp = await tunnel(proxy, `127.0.0.1:${tlsUp.port}`);
            const tls = await Deno.startTls(tcp, { hostname: `${ph}.wild.test`, caCerts: [ca] });
            await tls.write(enc.encode(
              `GET /echo HTTP/1.1\r\nHost: ${ph}.wild.test:${tlsUp.port}\r\nConnection: close\r\n\r\n`,
            ));
            const r = await readAll(tls);
            assertEquals(statuses(r.text), [403], r.text);
            assertMatch(r.text, /x-sluice-decision: deny; code=credential-violation; rule=.*:\d+/);
            assertMatch(r.text, /the SNI carries the placeholder of credential KEY/);
          }, 2);
          // The connection's line carries the violation; the 403 inside it is its request's line.
          const conn = lines.find((l) => l.event === "connection")!;
          assertEquals(
            [conn.verdict, conn.code, conn.violation, conn.tls, conn.sni, conn.host],
            [
              "deny",
              "credential-violation",
              "KEY",
              "intercept",
              `${ph}.wild.test`,
              `${ph}.wild.test`,
            ],
          );
          const req = lines.find((l) => l.event === "request")!;
          assertEquals([req.code, req.status], ["credential-violation", 403]);
        },
      );

      await t.step(
        "a placeholder in a passthrough SNI: a TLS alert, never resolved or dialled",
        async () => {
          const line = one(
            await refused(async () => {
              const tcp = await tunnel(proxy, `127.0.0.1:${passDest.port}`);
              let err = "";
              try {
                // The handshake completes lazily: the alert arrives on the first exchange.
                const c = await Deno.startTls(tcp, { hostname: `${ph}.pass.test`, caCerts: [ca] });
                await c.write(enc.encode("GET / HTTP/1.1\r\n\r\n"));
                err = (await readAll(c)).text;
              } catch (e) {
                err = String(e);
              }
              assertMatch(err, /AccessDenied|access denied|alert/i);
            }),
          );
          assertEquals(
            [line.event, line.verdict, line.code, line.violation, line.tls, line.sni],
            ["connection", "deny", "credential-violation", "KEY", "passthrough", `${ph}.pass.test`],
          );
        },
      );

      await t.step(
        "a placeholder in an SNI sent to the transparent listener (openssl s_client -servername)",
        async () => {
          const line = one(
            await refused(async () => {
              const out = await new Deno.Command("openssl", {
                args: [
                  "s_client",
                  "-connect",
                  `127.0.0.1:${sluice.transparentHttpsPort}`,
                  "-servername",
                  `${ph}.pass.test`,
                ],
                stdin: "null",
                stdout: "piped",
                stderr: "piped",
              }).output();
              const text = dec.decode(out.stdout) + dec.decode(out.stderr);
              assertMatch(text, /alert access denied/, text);
            }),
          );
          assertEquals(
            [line.mode, line.code, line.violation, line.tls],
            ["transparent", "credential-violation", "KEY", "passthrough"],
          );
        },
      );

      await t.step(
        "a placeholder in a CONNECT target: 403 before the CONNECT is decided",
        async () => {
          for (
            const target of [`${ph}.wild.test:${tlsUp.port}`, `X.${ph.toUpperCase()}.TEST:443`]
          ) {
            const line = one(
              await refused(async () => {
                const r = await raw(proxy, [
                  `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`,
                ]);
                assertEquals(statuses(r.text), [403], r.text);
                assertMatch(r.text, /x-sluice-decision: deny; code=credential-violation/);
                assertMatch(r.text, /the CONNECT target carries the placeholder of credential KEY/);
                assert(r.closed, "the connection stays open");
              }),
            );
            assertEquals(
              [line.event, line.verdict, line.code, line.violation, line.status],
              ["connection", "deny", "credential-violation", "KEY", 403],
            );
            assertEquals(line.rule, "credentials.KEY.hosts");
          }
        },
      );

      await t.step(
        "a placeholder in a DNS question: NXDOMAIN, the resolver never asked",
        async () => {
          const dig = async (name: string) => {
            const out = await new Deno.Command("dig", {
              args: ["@127.0.0.1", "-p", String(dnsPort), "+tries=1", "+time=3", name, "A"],
              stdout: "piped",
            }).output();
            return dec.decode(out.stdout);
          };
          // The control: an allowed name the override answers. Its audit line is waited for,
          // so that it cannot land inside the refusal's window below.
          const before = (await sluice.audit()).length;
          const api = await dig("api.test");
          assertEquals((await since(before)).map((l) => l.host), ["api.test"]);
          assertMatch(api, /status: NOERROR/);
          assertMatch(api, /api\.test\.\s+\d+\s+IN\s+A\s+127\.0\.0\.1/);
          const line = one(
            await refused(async () => {
              // The override would answer this name too; the placeholder means nobody is asked.
              const out = await dig(`${ph}.wild.test`);
              assertMatch(out, /status: NXDOMAIN/, out);
              assert(!/IN\s+A\s+127\.0\.0\.1/.test(out), out);
            }),
          );
          assertEquals(
            [line.event, line.verdict, line.code, line.violation, line.rcode, line.host],
            ["dns", "deny", "credential-violation", "KEY", "NXDOMAIN", `${ph}.wild.test`],
          );
          assert(!("addresses" in line) && !("error" in line), "the resolver was asked");
        },
      );

      await t.step(
        "a placeholder in a plain-HTTP Host: 403, a violation, even where no URL holds it",
        async () => {
          for (const host of [`${ph}.wild.test`, `${ph}%00.wild.test`]) {
            const line = one(
              await refused(async () => {
                const r = await raw(httpPort, [
                  `GET / HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`,
                ]);
                assertEquals(statuses(r.text), [403], r.text);
                assertMatch(r.text, /x-sluice-decision: deny; code=credential-violation/);
              }),
            );
            assertEquals([line.code, line.violation, line.status], [
              "credential-violation",
              "KEY",
              403,
            ]);
          }
        },
      );

      // ---------------------------------------------------------------------------------------
      // Errors get a decision.

      /** A refusal answered by sluice itself: the status, the decision, one line, then closed. */
      const expectError = async (
        port: number,
        parts: string[],
        want: { status: number; code: string; reason: RegExp; closed?: boolean; before?: number },
      ) => {
        const lines = await refused(
          async () => {
            const r = await raw(port, parts);
            const got = statuses(r.text);
            assertEquals(got[got.length - 1], want.status, r.text);
            assertEquals(got.length, (want.before ?? 0) + 1, r.text);
            assertMatch(r.text, new RegExp(`x-sluice-decision: error; code=${want.code}`));
            assert(!/ 500 /.test(r.text), r.text);
            if (want.closed ?? true) assert(r.closed, `the connection stays open:\n${r.text}`);
          },
          (want.before ?? 0) + 1,
          want.before ?? 0,
        );
        // Requests before the refused one were answered and audited as allowed.
        const denied = lines.filter((l) => l.verdict === "deny");
        const line = one(denied);
        assertEquals([line.code, line.status], [want.code, want.status]);
        assertMatch(String(line.reason), want.reason);
        assertEquals(lines.length - denied.length, want.before ?? 0);
      };
      const plainTarget = `127.0.0.1:${plainUp.port}`;

      await t.step("unparseable hosts: 400 invalid-host, audited, never forwarded", async () => {
        const cases: [string, number, string, RegExp][] = [
          [
            "explicit, an IPv6 zone",
            proxy,
            `GET http://[::1%25lo]:${plainUp.port}/ HTTP/1.1\r\nHost: [::1%25lo]:${plainUp.port}\r\n\r\n`,
            /not a URL with a valid host/,
          ],
          [
            "explicit, an escaped NUL",
            proxy,
            `GET http://a%00.test:${plainUp.port}/ HTTP/1.1\r\nHost: a%00.test:${plainUp.port}\r\n\r\n`,
            /not a URL with a valid host/,
          ],
          [
            "transparent, an IPv6 zone in Host",
            httpPort,
            "GET / HTTP/1.1\r\nHost: [::1%25lo]\r\n\r\n",
            /Host header names "\[::1%25lo\]", which is not a valid host/,
          ],
          [
            "transparent, an escaped NUL in Host",
            httpPort,
            "GET / HTTP/1.1\r\nHost: a%00.test\r\n\r\n",
            /Host header names "a%00\.test", which is not a valid host/,
          ],
          [
            "transparent, HTTP/1.0 without Host",
            httpPort,
            "GET / HTTP/1.0\r\n\r\n",
            /names no host/,
          ],
        ];
        for (const [, port, request, reason] of cases) {
          await expectError(port, [request], { status: 400, code: "invalid-host", reason });
        }
        // A later request on a keep-alive connection: the first is answered, the second refused.
        for (const [port, first] of [[proxy, `http://${plainTarget}/one`], [httpPort, "/one"]]) {
          await expectError(port as number, [
            `GET ${first} HTTP/1.1\r\nHost: ${plainTarget}\r\n\r\n`,
            "GET /x HTTP/1.1\r\nHost: a%00.test\r\n\r\n",
          ], { status: 400, code: "invalid-host", reason: /which is not a valid host/, before: 1 });
        }
      });

      await t.step(
        "an unparseable Host inside an intercepted tunnel: 400 invalid-host, not a 500",
        async () => {
          const line = one(
            await refused(async () => {
              const tcp = await tunnel(proxy, `127.0.0.1:${tlsUp.port}`);
              const tls = await Deno.startTls(tcp, { hostname: "sni.wild.test", caCerts: [ca] });
              await tls.write(enc.encode(
                "GET / HTTP/1.1\r\nHost: a%00.test\r\nConnection: close\r\n\r\n",
              ));
              const r = await readAll(tls);
              assertEquals(statuses(r.text), [400], r.text);
              assertMatch(r.text, /x-sluice-decision: error; code=invalid-host/);
            }, 2).then((lines) => lines.filter((l) => l.event === "request")),
          );
          assertEquals([line.code, line.status], ["invalid-host", 400]);
        },
      );

      await t.step(
        "malformed chunked bodies: 400, the connection closed, nothing forwarded",
        async () => {
          const bodies: [string, RegExp][] = [
            ["zz\r\nhello\r\n0\r\n\r\n", /chunk size is not a hex number/],
            ["5\r\nhelloXX0\r\n\r\n", /chunk data not followed by CRLF/],
            ["5\nhello\n0\n\n", /invalid byte after chunk size/],
            ["fffffffffffffffff\r\n", /chunk size too large/],
            ["5;a=\x01\r\nhello\r\n0\r\n\r\n", /control character in chunk extension/],
            ["0\r\nX: y\n\r\n", /control character in a trailer field/],
          ];
          for (const [body, reason] of bodies) {
            for (
              const [port, target] of [[proxy, `http://${plainTarget}/echo`], [httpPort, "/echo"]]
            ) {
              await expectError(port as number, [
                `POST ${target} HTTP/1.1\r\nHost: ${plainTarget}\r\n` +
                `Transfer-Encoding: chunked\r\n\r\n${body}`,
              ], { status: 400, code: "invalid-request", reason });
            }
          }
        },
      );

      await t.step(
        "bare LF in a later head on a keep-alive connection: 400 after the first answer",
        async () => {
          const later = [
            `GET http://${plainTarget}/two HTTP/1.1\nHost: ${plainTarget}\n\n`,
            `GET http://${plainTarget}/two HTTP/1.1\r\nHost: ${plainTarget}\nX: y\r\n\r\n`,
            `GET http://${plainTarget}/two HTTP/1.1\r\nHost: ${plainTarget}\r\n\n`,
          ];
          for (const [port, first] of [[proxy, `http://${plainTarget}/one`], [httpPort, "/one"]]) {
            for (const second of later) {
              const upstream = received.length;
              const from = (await sluice.audit()).length;
              const r = await raw(port as number, [
                `GET ${first} HTTP/1.1\r\nHost: ${plainTarget}\r\n\r\n`,
                second,
              ]);
              assertEquals(statuses(r.text), [200, 400], r.text);
              assertMatch(r.text, /x-sluice-decision: error; code=invalid-request/);
              assert(r.closed, r.text);
              assertEquals(received.length, upstream + 1, "the bare-LF request was forwarded");
              assertEquals(received[received.length - 1].target, "/one");
              const lines = await since(from, 2);
              assertEquals(lines.map((l) => [l.verdict, l.status]), [["allow", 200], [
                "deny",
                400,
              ]]);
              assertMatch(String(lines[1].reason), /bare LF/);
            }
          }
        },
      );

      await t.step(
        "request smuggling forms: refused in a first head and in a later one",
        async () => {
          const forms: [string, string, number, RegExp][] = [
            [
              "Content-Length and Transfer-Encoding",
              "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
              400,
              /both Content-Length and Transfer-Encoding/,
            ],
            [
              "two different Content-Lengths",
              "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
              400,
              /conflicting Content-Length/,
            ],
            [
              "obs-fold",
              "X-Fold: a\r\n b\r\nContent-Length: 0\r\n\r\n",
              400,
              /obs-fold/,
            ],
            [
              "obs-fold hiding a Transfer-Encoding",
              "Content-Length: 3\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\nabc",
              400,
              /obs-fold/,
            ],
            [
              "chunked twice",
              "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
              400,
              /chunked applied more than once/,
            ],
            [
              "chunked not last",
              "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
              400,
              /does not end with chunked/,
            ],
            [
              "an unknown coding",
              "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
              501,
              /unknown transfer coding/,
            ],
            [
              "whitespace before the colon",
              "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
              400,
              /whitespace between field name and colon/,
            ],
            [
              "a Content-Length that is not a number",
              "Content-Length: +5\r\n\r\nhello",
              400,
              /Content-Length is not a decimal number/,
            ],
          ];
          for (const [, headers, status, reason] of forms) {
            const post = (target: string) =>
              `POST ${target} HTTP/1.1\r\nHost: ${plainTarget}\r\n${headers}`;
            // The explicit proxy's first head (parsed by explicit.ts), a later one, and the
            // transparent listener's first head.
            await expectError(proxy, [post(`http://${plainTarget}/echo`)], {
              status,
              code: "invalid-request",
              reason,
            });
            await expectError(proxy, [
              `GET http://${plainTarget}/one HTTP/1.1\r\nHost: ${plainTarget}\r\n\r\n`,
              post(`http://${plainTarget}/echo`),
            ], { status, code: "invalid-request", reason, before: 1 });
            await expectError(httpPort, [post("/echo")], {
              status,
              code: "invalid-request",
              reason,
            });
            await expectError(httpPort, [
              `GET /one HTTP/1.1\r\nHost: ${plainTarget}\r\n\r\n`,
              post("/echo"),
            ], { status, code: "invalid-request", reason, before: 1 });
          }
        },
      );

      await t.step("every violation counted in sluice_credential_violations_total", async () => {
        const text = await (await fetch(`http://127.0.0.1:${sluice.adminPort}/metrics`)).text();
        const counted = Number(
          /sluice_credential_violations_total\{credential="KEY"\} (\d+)/.exec(text)?.[1] ?? 0,
        );
        const audited = (await sluice.audit()).filter((l) => l.violation === "KEY").length;
        // SNI (intercepted, passthrough, transparent), CONNECT (2), DNS, Host (2).
        assertEquals(audited, 8);
        assertEquals(counted, audited);
      });
    } finally {
      await sluice.stop();
      await tlsUp.close();
      await plainUp.close();
      passDest.close();
      const written = sluice.stderr() + await Deno.readTextFile(sluice.auditPath).catch(() => "");
      await Deno.remove(dir, { recursive: true });
      assert(!written.includes(KEY), "the real value leaked into sluice's output");
    }
  },
});

/**
 * Issue 13: walks the outcome table (policy/outcomes.ts) and provokes every outcome at least
 * once, through sluice's real code paths. Most codes are provoked against a real `sluice serve`
 * with a crafted policy, curl and raw sockets, and small stand-in upstreams on loopback (a raw
 * TCP server that answers garbage, closes mid-body, never answers, sends `content-encoding:
 * compress`, or answers a WebSocket upgrade with a bad 101 or one Deno cannot complete); each
 * step asserts the code where sluice writes it (the audit record's `code`, the
 * `x-sluice-decision` header). Outcomes a test cannot reasonably reach through `serve` are
 * provoked by calling their stage directly:
 * `no-route` (`makeRequestHandler`; the internal listeners' ports are not published), the
 * connection caps (`ConnectionGuard.admit`; each cap would need a sluice of its own), and
 * `passthrough-uninspectable` (`decideConnection` on a policy compiled past the validator, which
 * refuses HTTP rules for a passed-through host, so no policy `serve` loads can reach it).
 *
 * The last step asserts that the codes provoked are exactly the table's keys: a code added to the
 * table without a provoker here fails the test, naming the code.
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { type OutcomeCode, OUTCOMES } from "../../policy/outcomes.ts";
import { compilePolicy } from "../../policy/compile.ts";
import { decideConnection } from "../../policy/decide.ts";
import { loadPolicyText } from "../../policy/load.ts";
import { makeRequestHandler } from "../../lib/exchange/forward.ts";
import { ConnectionGuard, DEFAULT_LIMITS } from "../../lib/ingress/limits.ts";
import type { Terminator } from "../../lib/ingress/terminator.ts";
import type { ProxyContext } from "../../lib/gateway/context.ts";
import type { UpstreamPool } from "../../lib/upstream/client.ts";
import { AuditLog } from "../../lib/ops/audit.ts";
import { websocketAccept } from "../../lib/exchange/websocket/mod.ts";
import {
  curl,
  placeholders,
  type Sluice,
  startPlainUpstream,
  startSluice,
  startTlsUpstream,
  testCas,
} from "./_harness.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const PH = "sluice-walk-placeholder-0001";

/**
 * Codes no test can provoke without a change to lib/ or policy/, each with the reason. Keep it
 * empty unless a code truly cannot be reached; the final step requires every other code.
 */
const UNREACHABLE: Partial<Record<OutcomeCode, string>> = {};

type Audit = Record<string, unknown>;

/** A port nothing listens on: bound, noted, closed. */
function closedPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = l.addr.port;
  l.close();
  return port;
}

/**
 * A raw HTTP/1.1 stand-in upstream: reads one request head and acts on its path.
 * /garbage answers bytes that are not HTTP; /reset closes mid-body; /hang never answers;
 * /compress answers `content-encoding: compress`; /ws-bad answers a 101 with a wrong accept key;
 * /ws-proto answers a correct 101 that selects the subprotocol `superchat` (then holds the
 * connection a moment).
 */
function startRawUpstream() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held = new Set<Deno.Conn>();
  const serve = async (conn: Deno.Conn) => {
    held.add(conn);
    try {
      let head = "";
      const buf = new Uint8Array(4096);
      while (!head.includes("\r\n\r\n")) {
        const n = await conn.read(buf);
        if (n === null) return;
        head += dec.decode(buf.subarray(0, n));
      }
      const path = /^[A-Z]+ (\S+) /.exec(head)?.[1] ?? "/";
      const key = /\r\nsec-websocket-key: *([^\r]+)/i.exec(head)?.[1]?.trim() ?? "";
      const say = (s: string) => conn.write(enc.encode(s));
      if (path.startsWith("/garbage")) {
        await say("THIS IS NOT HTTP AT ALL\r\n\r\n");
      } else if (path.startsWith("/reset")) {
        await say(
          "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: text/plain\r\n\r\nshort",
        );
        await new Promise((r) => setTimeout(r, 50));
      } else if (path.startsWith("/hang")) {
        await new Promise((r) => setTimeout(r, 5000));
      } else if (path.startsWith("/compress")) {
        await say(
          "HTTP/1.1 200 OK\r\ncontent-encoding: compress\r\ncontent-length: 3\r\n\r\nabc",
        );
      } else if (path.startsWith("/ws-bad")) {
        await say(
          "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n" +
            "sec-websocket-accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n",
        );
      } else if (path.startsWith("/ws-proto")) {
        await say(
          "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n" +
            `sec-websocket-accept: ${await websocketAccept(key)}\r\n` +
            "sec-websocket-protocol: superchat\r\n\r\n",
        );
        await new Promise((r) => setTimeout(r, 2000));
      } else {
        await say("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
      }
    } catch {
      /* the proxy went away */
    } finally {
      held.delete(conn);
      try {
        conn.close();
      } catch { /* closed */ }
    }
  };
  (async () => {
    for await (const c of listener) serve(c);
  })().catch(() => {});
  return {
    port: listener.addr.port,
    close: () => {
      listener.close();
      for (const c of held) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  };
}

/** Sends `text` on a new connection to `port` and reads until it closes or `ms` pass. */
async function raw(port: number, text: string, ms = 3000): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  let out = "";
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch { /* closed */ }
  }, ms);
  try {
    if (text) await conn.write(enc.encode(text));
    const buf = new Uint8Array(16384);
    while (true) {
      const n = await conn.read(buf);
      if (n === null) break;
      out += dec.decode(buf.subarray(0, n));
    }
  } catch {
    /* closed by the timer or by sluice */
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed */ }
  }
  return out;
}

/** The code in an `x-sluice-decision` header in `text`, if any. */
function headerCode(text: string): string | undefined {
  return /x-sluice-decision: [^\r\n]*code=([a-z-]+)/i.exec(text)?.[1];
}

/** Waits (up to 5 s) for an audit record that `pred` accepts. */
async function record(sluice: Sluice, pred: (r: Audit) => boolean, what: string): Promise<Audit> {
  for (let i = 0; i < 100; i++) {
    const found = (await sluice.audit()).find(pred);
    if (found) return found;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(
    `no audit record for ${what}; audit:\n${
      (await sluice.audit()).map((r) => JSON.stringify(r)).join("\n")
    }`,
  );
}

Deno.test("outcome walk: every code of policy/outcomes.ts is provoked at least once", async (t) => {
  const provoked = new Set<string>();
  const dir = await Deno.makeTempDir({ prefix: "sluice-walk-" });
  const cas = await testCas(dir);
  const up = startTlsUpstream(cas.trusted);
  const untrusted = startTlsUpstream(cas.untrusted);
  const plain = startPlainUpstream();
  const rawUp = startRawUpstream();
  const closed = closedPort();
  // An oauth2 token endpoint stand-in: /token issues, /fail refuses.
  const tokens = startTlsUpstream(
    cas.trusted,
    0,
    "127.0.0.1",
    (req) =>
      new URL(req.url).pathname === "/token"
        ? Response.json({ access_token: "walk-access-token-5e1f0c", expires_in: 3600 })
        : Response.json({ error: "invalid_client" }, { status: 401 }),
  );
  const policy = `${dir}/policy.yaml`;
  await Deno.writeTextFile(
    policy,
    `version: 1
network:
  default: deny
  allow:
    - "127.0.0.1:${up.port}"
    - "127.0.0.1:${untrusted.port}"
    - "127.0.0.1:${plain.port}"
    - "127.0.0.1:${rawUp.port}"
    - "127.0.0.1:${closed}"
    - "127.0.0.1:${tokens.port}"
    - tok.test
    - untrusted.test
    - nx.invalid
    - priv.test
    - cred.test
    - "GET api.test/ok/**"
  deny:
    - denied.test
tls:
  upstream:
    ca: [${cas.trustedPath}]
credentials:
  KEY:
    from: env:SLUICE_WALK_KEY
    hosts: [cred.test]
    placeholder: ${PH}
  MINTED:
    kind: oauth2
    token_url: https://tok.test:${tokens.port}/token
    grant: client_credentials
    client_id: walk
    client_secret: env:SLUICE_WALK_KEY
    hosts: ["tok.test:${up.port}"]
    placeholder: sluice-walk-minted-placeholder
  UNMINTED:
    kind: oauth2
    token_url: https://tok.test:${tokens.port}/fail
    grant: client_credentials
    client_id: walk
    client_secret: env:SLUICE_WALK_KEY
    hosts: ["tok.test:${up.port}"]
    placeholder: sluice-walk-unminted-placeholder
  AWS:
    kind: aws_sigv4
    access_key_id: env:SLUICE_WALK_KEY
    secret_access_key: env:SLUICE_WALK_KEY
    hosts: ["tok.test:${up.port}"]
`,
  );
  const resolve = ["untrusted.test", "api.test", "denied.test", "nowhere.test", "tok.test"]
    .flatMap((n) => ["--resolve", `${n}=127.0.0.1`]);
  const sluice = await startSluice(
    policy,
    dir,
    [
      ...resolve,
      "--resolve",
      "priv.test=127.0.0.2",
      "--transparent-https",
      "127.0.0.1:0",
      // The hop path reads the raw ClientHello, where `not-tls` and `timeout` are decided; the
      // direct path ends such handshakes in Deno's TLS server (test/e2e/transparent_test.ts).
      "--data-path",
      "hop",
      "--limit",
      "first-bytes=1s",
      "--limit",
      "upstream-head=1s",
      "--limit",
      "sweep=100ms",
    ],
    undefined,
    { SLUICE_WALK_KEY: "real-walk-secret-value" },
  );
  const proxy = ["-x", `http://127.0.0.1:${sluice.proxyPort}`];
  const via = [...proxy, "--cacert", sluice.caPath];
  const plainAt = `127.0.0.1:${plain.port}`;
  const rawAt = `127.0.0.1:${rawUp.port}`;

  /** One provoker: runs `body`, which asserts where the code appears, then counts the code. */
  const provoke = (code: OutcomeCode, how: string, body: () => void | Promise<void>) =>
    t.step(`${code}: ${how}`, async () => {
      await body();
      provoked.add(code);
    });

  /** curl through the proxy, headers and verbose output in one text. */
  const through = async (args: string[]) => {
    const r = await curl([...via, "-v", "-D", "-", "--max-time", "10", ...args]);
    return r.text + r.stderr;
  };

  /** The request record (plain HTTP through the explicit proxy) for `path`. */
  const requestRecord = (path: string, code: string) =>
    record(sluice, (r) => r.event === "request" && r.path === path && r.code === code, path);

  try {
    // --- the policy's decisions ---
    await provoke("allow-rule", "a plain request to an allowed address", async () => {
      const text = await through([`http://${plainAt}/echo-allow`]);
      assertMatch(text, /HTTP\/1\.1 200/);
      const r = await requestRecord("/echo-allow", "allow-rule");
      assertEquals([r.verdict, r.status], ["allow", 200]);
    });

    await provoke("deny-rule", "a CONNECT to a denied host", async () => {
      const text = await through([`https://denied.test:${up.port}/`]);
      assertMatch(text, /CONNECT tunnel failed, response 403/);
      assertEquals(headerCode(text), "deny-rule");
    });

    await provoke("default", "a CONNECT to a host no rule names", async () => {
      const text = await through([`https://nowhere.test:${up.port}/`]);
      assertMatch(text, /response 403/);
      assertEquals(headerCode(text), "default");
    });

    await provoke(
      "needs-inspection",
      "a CONNECT to a host allowed only by HTTP rules",
      async () => {
        const text = await through([`https://api.test:${up.port}/ok/x`]);
        assertMatch(text, /HTTP\/(1\.1|2) 200/);
        const r = await record(
          sluice,
          (r) => r.event === "connection" && r.host === "api.test" && r.code === "needs-inspection",
          "api.test connection",
        );
        // The connection is allowed pending each request's decision, as the table's row says.
        assertEquals([r.verdict, r.tls], [OUTCOMES["needs-inspection"].verdict, "intercept"]);
      },
    );

    await provoke(
      "passthrough-uninspectable",
      "decideConnection on a passed-through host with HTTP rules (pure; the validator refuses " +
        "such a policy, so serve cannot load one)",
      () => {
        // Two valid policies, their halves joined past the validator: the guard in
        // decideConnection is for the corners the validator cannot see.
        const rules = loadPolicyText(
          'version: 1\nnetwork:\n  allow: ["GET pt.test/ok/**"]\n',
          "rules.yaml",
        ).compiled.policy;
        const pass = loadPolicyText(
          "version: 1\nnetwork:\n  allow: [pt.test]\ntls:\n  passthrough: [pt.test]\n",
          "pass.yaml",
        ).compiled.policy;
        const joined = compilePolicy({ ...rules, tls: pass.tls });
        const d = decideConnection(joined, { kind: "name", name: "pt.test" }, 443);
        assertEquals([d.verdict, d.code, d.tls], [
          "deny",
          "passthrough-uninspectable",
          "passthrough",
        ]);
      },
    );

    await provoke(
      "private-address",
      "a host that resolves to another loopback address",
      async () => {
        const text = await through([`http://priv.test:${plain.port}/private`]);
        assertMatch(text, /HTTP\/1\.1 403/);
        assertEquals(headerCode(text), "private-address");
      },
    );

    await provoke("invalid-path", "a path with an invalid escape", async () => {
      const text = await through(["--path-as-is", `http://${plainAt}/a%zz`]);
      assertMatch(text, /HTTP\/1\.1 403/);
      assertEquals(headerCode(text), "invalid-path");
    });

    // --- the data path ---
    await provoke("invalid-host", "an absolute-form target with an escaped NUL", async () => {
      const text = await raw(
        sluice.proxyPort,
        `GET http://a%00.test:${plain.port}/ HTTP/1.1\r\nHost: a%00.test:${plain.port}\r\n\r\n`,
      );
      assertMatch(text, /^HTTP\/1\.1 400/);
      assertEquals(headerCode(text), "invalid-host");
    });

    await provoke("host-mismatch", "a Host header naming another host", async () => {
      const text = await through(["-H", "Host: other.test", `http://${plainAt}/fronted`]);
      assertMatch(text, /HTTP\/1\.1 403/);
      assertEquals(headerCode(text), "host-mismatch");
    });

    await provoke("credential-violation", "a placeholder headed outside its hosts", async () => {
      const text = await through(["-H", `Authorization: Bearer ${PH}`, `http://${plainAt}/leak`]);
      assertMatch(text, /HTTP\/1\.1 403/);
      assertEquals(headerCode(text), "credential-violation");
      const r = await requestRecord("/leak", "credential-violation");
      assertEquals(r.violation, "KEY");
    });

    await provoke("missing-sni", "an intercepted tunnel to an IP literal (no SNI)", async () => {
      const text = await through([`https://127.0.0.1:${up.port}/`]);
      assertMatch(text, /unrecognized name/);
      await record(
        sluice,
        (r) => r.event === "connection" && r.code === "missing-sni",
        "missing-sni",
      );
    });

    await provoke("not-tls", "plain text to the transparent HTTPS listener", async () => {
      assert(sluice.transparentHttpsPort, "the transparent HTTPS listener is up");
      await raw(sluice.transparentHttpsPort, "GET / HTTP/1.1\r\nHost: x.test\r\n\r\n", 2000);
      const r = await record(
        sluice,
        (r) => r.mode === "transparent" && r.code === "not-tls",
        "not-tls",
      );
      assertEquals(r.verdict, "deny");
    });

    await provoke("timeout", "a client that sends nothing (--limit first-bytes=1s)", async () => {
      await raw(sluice.proxyPort, "", 3000);
      const r = await record(sluice, (r) => r.code === "timeout", "timeout");
      assertEquals([r.event, r.verdict], ["connection", "deny"]);
    });

    await provoke("invalid-request", "a bare LF in a request head", async () => {
      const text = await raw(
        sluice.proxyPort,
        `GET http://${plainAt}/lf HTTP/1.1\r\nHost: ${plainAt}\nX-A: b\r\n\r\n`,
      );
      assertMatch(text, /^HTTP\/1\.1 400/);
      assertEquals(headerCode(text), "invalid-request");
    });

    await provoke("no-route", "a request the terminator has no hop for (stage call)", async () => {
      const ctx = { inflight: { count: 0 } } as unknown as ProxyContext;
      const terminator = { meta: () => undefined } as unknown as Terminator;
      const handler = makeRequestHandler(ctx, () => terminator, {} as UpstreamPool);
      const res = await handler(new Request("http://internal.test/"), {
        remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 40000 },
        completed: Promise.resolve(),
      });
      await res.body?.cancel();
      assertEquals(res.status, 421);
      assertEquals(
        headerCode(`x-sluice-decision: ${res.headers.get("x-sluice-decision")}`),
        "no-route",
      );
    });

    // --- limits: ConnectionGuard.admit, the accept stage, with fake connections ---
    {
      const audit = AuditLog.memory();
      const fake = (hostname: string) =>
        ({
          remoteAddr: { transport: "tcp", hostname, port: 50000 },
          close: () => {},
        }) as unknown as Deno.Conn;
      const admitAll = (guard: ConnectionGuard, hosts: string[]) => {
        for (const h of hosts) {
          const w = guard.admit(fake(h), "explicit");
          assert(!("kind" in w && w.kind === "refused"), `admitted ${h}`);
        }
      };
      await provoke("limit-per-client", "a client holding its cap", () => {
        const guard = new ConnectionGuard({
          limits: { ...DEFAULT_LIMITS, maxConnectionsPerClient: 2 },
          audit,
        });
        try {
          admitAll(guard, ["10.0.0.1", "10.0.0.1"]);
          const r = guard.admit(fake("10.0.0.1"), "explicit");
          assertEquals("code" in r ? r.code : undefined, "limit-per-client");
        } finally {
          guard.close();
        }
      });
      await provoke("limit-reserve", "a client holding many inside the reserve", () => {
        const guard = new ConnectionGuard({
          limits: {
            ...DEFAULT_LIMITS,
            maxConnections: 4,
            maxConnectionsPerClient: 4,
            reservedConnections: 2,
          },
          audit,
        });
        try {
          admitAll(guard, ["10.0.0.1", "10.0.0.1", "10.0.0.1"]);
          const r = guard.admit(fake("10.0.0.1"), "explicit");
          assertEquals("code" in r ? r.code : undefined, "limit-reserve");
        } finally {
          guard.close();
        }
      });
      await provoke("limit-total", "sluice holding its cap", () => {
        const guard = new ConnectionGuard({
          limits: { ...DEFAULT_LIMITS, maxConnections: 2, reservedConnections: 0 },
          audit,
        });
        try {
          admitAll(guard, ["10.0.0.1", "10.0.0.2"]);
          const r = guard.admit(fake("10.0.0.3"), "explicit");
          assertEquals("code" in r ? r.code : undefined, "limit-total");
        } finally {
          guard.close();
        }
      });
    }

    // --- upstream failures of allowed requests ---
    await provoke("resolve", "an allowed name that does not resolve", async () => {
      const text = await through(["http://nx.invalid/"]);
      assertMatch(text, /HTTP\/1\.1 502/);
      assertEquals(headerCode(text), "resolve");
    });

    await provoke("upstream-connect", "an allowed port nothing listens on", async () => {
      const text = await through([`http://127.0.0.1:${closed}/`]);
      assertMatch(text, /HTTP\/1\.1 502/);
      assertEquals(headerCode(text), "upstream-connect");
    });

    await provoke("upstream-tls", "an upstream certificate from an untrusted CA", async () => {
      const text = await through([`https://untrusted.test:${untrusted.port}/`]);
      assertMatch(text, /HTTP\/(1\.1|2) 502/);
      assertEquals(headerCode(text), "upstream-tls");
    });

    await provoke(
      "upstream-timeout",
      "an upstream that never answers (upstream-head=1s)",
      async () => {
        const text = await through([`http://${rawAt}/hang`]);
        assertMatch(text, /HTTP\/1\.1 504/);
        assertEquals(headerCode(text), "upstream-timeout");
      },
    );

    await provoke("upstream-protocol", "an upstream answering garbage", async () => {
      const text = await through([`http://${rawAt}/garbage`]);
      assertMatch(text, /HTTP\/1\.1 502/);
      assertEquals(headerCode(text), "upstream-protocol");
    });

    await provoke("upstream-reset", "an upstream closing mid-body", async () => {
      await through([`http://${rawAt}/reset`]);
      const r = await requestRecord("/reset", "upstream-reset");
      assertEquals([r.verdict, r.status], ["allow", 502]);
    });

    await provoke("upstream-encoding", "content-encoding: compress with credentials", async () => {
      const text = await through([`http://${rawAt}/compress`]);
      assertMatch(text, /HTTP\/1\.1 502/);
      assertEquals(headerCode(text), "upstream-encoding");
    });

    const upgrade = (path: string, extra = "") =>
      raw(
        sluice.proxyPort,
        `GET http://${rawAt}${path} HTTP/1.1\r\nHost: ${rawAt}\r\nConnection: Upgrade\r\n` +
          "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
          `Sec-WebSocket-Version: 13\r\n${extra}\r\n`,
        1500,
      );

    await provoke("upstream-websocket", "a 101 with a wrong accept key", async () => {
      const text = await upgrade("/ws-bad");
      assertMatch(text, /^HTTP\/1\.1 502/);
      assertEquals(headerCode(text), "upstream-websocket");
    });

    await provoke(
      "websocket-invalid",
      "subprotocols offered without a space after the comma, one of them selected by the upstream",
      async () => {
        // sluice reads `chat,superchat` as two offers and accepts the upstream's `superchat`;
        // Deno's upgrade splits the list on ", " only and refuses it: sluice answers 400.
        const text = await upgrade("/ws-proto", "Sec-WebSocket-Protocol: chat,superchat\r\n");
        assertMatch(text, /^HTTP\/1\.1 400/);
        assertEquals(headerCode(text), "websocket-invalid");
      },
    );

    await provoke(
      "grpc-no-trailers",
      "a gRPC call over HTTP/1.1, where no trailers can carry its status",
      async () => {
        const text = await through([
          "-H",
          "content-type: application/grpc",
          "--data-binary",
          "x",
          `http://${plainAt}/acme.Echo/Unary`,
        ]);
        // A gRPC client reads its refusal from grpc-status, in a 200's only HEADERS.
        assertMatch(text, /^HTTP\/1\.1 200/m);
        assertMatch(text, /^grpc-status: 14\r?$/m);
        assertMatch(text, /^grpc-message: sluice: gRPC needs HTTP\/2 trailers/m);
        assertEquals(headerCode(text), "grpc-no-trailers");
        const r = await requestRecord("/acme.Echo/Unary", "grpc-no-trailers");
        assertEquals(r.rpc, "acme.Echo/Unary");
        assertEquals(r.status, 503);
      },
    );

    await provoke(
      "token-issued",
      "an oauth2 credential's placeholder: sluice obtains a token first",
      async () => {
        const text = await through([
          "-H",
          "Authorization: Bearer sluice-walk-minted-placeholder",
          `https://tok.test:${up.port}/echo-minted`,
        ]);
        assertMatch(text, /^HTTP\/[\d.]+ 200/m);
        const r = await record(
          sluice,
          (r) => r.event === "token" && r.code === "token-issued",
          "token",
        );
        assertEquals(r.credentials, ["MINTED"]);
      },
    );

    await provoke(
      "credential-signature",
      "a request naming an aws_sigv4 placeholder key id with a signature that does not verify",
      async () => {
        const ph = await placeholders(policy, `${dir}/state`);
        const text = await through([
          "-H",
          `Authorization: AWS4-HMAC-SHA256 Credential=${ph.AWS}/20261201/us-east-1/s3/aws4_request, ` +
          `SignedHeaders=host;x-amz-date, Signature=${"0".repeat(64)}`,
          "-H",
          "x-amz-date: 20261201T000000Z",
          `https://tok.test:${up.port}/bucket/key`,
        ]);
        assertMatch(text, /^HTTP\/[\d.]+ 403/m);
        assertEquals(headerCode(text), "credential-signature");
      },
    );

    await provoke(
      "credential-token",
      "an oauth2 credential whose token endpoint refuses",
      async () => {
        const text = await through([
          "-H",
          "Authorization: Bearer sluice-walk-unminted-placeholder",
          `https://tok.test:${up.port}/echo-unminted`,
        ]);
        assertMatch(text, /^HTTP\/[\d.]+ 502/m);
        assertEquals(headerCode(text), "credential-token");
        const r = await record(
          sluice,
          (r) => r.event === "request" && r.code === "credential-token",
          "credential-token",
        );
        assertMatch(String(r.reason), /UNMINTED: no access token: the token endpoint answered 401/);
      },
    );
  } finally {
    await sluice.stop();
    await tokens.close();
    rawUp.close();
    await up.close();
    await untrusted.close();
    await plain.close();
    await Deno.remove(dir, { recursive: true });
  }

  await t.step("every code of the table was provoked", () => {
    const table = Object.keys(OUTCOMES).sort();
    const expected = table.filter((c) => !(c in UNREACHABLE));
    const missing = expected.filter((c) => !provoked.has(c));
    assertEquals(
      missing,
      [],
      `codes of policy/outcomes.ts no step provoked: ${missing.join(", ")}`,
    );
    const extra = [...provoked].filter((c) => !table.includes(c));
    assertEquals(extra, [], `provoked codes not in the table: ${extra.join(", ")}`);
    assertEquals([...provoked, ...Object.keys(UNREACHABLE)].sort(), table);
  });
});

/**
 * The plain-HTTP request stream check: the pure checker as a table, the connection wrapper over
 * real loopback sockets in front of Deno's own server (the one the hop hands plain HTTP to),
 * and the facts about that server that make the check necessary, measured.
 */
import { assert, assertEquals, assertMatch } from "../../_assert.ts";
import type { AuditRecord } from "../../../lib/ops/audit.ts";
import type { ProxyContext } from "../../../lib/gateway/context.ts";
import {
  checkedRequestStream,
  RequestStreamChecker,
  type StreamRefusal,
  streamRefusalResponder,
  type StreamStep,
} from "../../../lib/ingress/request_stream.ts";
import { splice } from "../../../lib/ingress/splice.ts";
import type { HopMeta } from "../../../lib/ingress/terminator.ts";
import { loadPolicyText } from "../../../policy/load.ts";
import { PlaceholderScanner } from "../../../policy/placeholders.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function b(s: string): Uint8Array {
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

/** What passed, as text. */
function passed(step: StreamStep): string {
  assertEquals(step.kind, "pass", JSON.stringify(step));
  return step.kind === "pass" ? step.bytes.map((x) => String.fromCharCode(...x)).join("") : "";
}

function refusal(step: StreamStep): StreamRefusal {
  assertEquals(step.kind, "refuse", "expected a refusal");
  return step as StreamRefusal;
}

const GET = "GET /a HTTP/1.1\r\nHost: a.test\r\n\r\n";

Deno.test("RequestStreamChecker holds a head until it is complete, then passes it whole", () => {
  const c = new RequestStreamChecker();
  for (let i = 0; i < GET.length - 1; i++) assertEquals(passed(c.push(b(GET[i]))), "");
  assertEquals(passed(c.push(b(GET[GET.length - 1]))), GET);
  assertEquals(c.requests, 1);
});

Deno.test("RequestStreamChecker passes keep-alive requests and bodies within their framing", () => {
  const c = new RequestStreamChecker();
  const post = "POST /u HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\n";
  const chunked = "POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n";
  const body = "3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n";
  const all = GET + post + "hello" + chunked + body + GET;
  // Any split: the same bytes pass, in order.
  for (const cut of [1, 7, 40, 63, 80, all.length - 1]) {
    const c2 = new RequestStreamChecker();
    assertEquals(passed(c2.push(b(all.slice(0, cut)))) + passed(c2.push(b(all.slice(cut)))), all);
    assertEquals(c2.requests, 4);
  }
  assertEquals(passed(c.push(b(all))), all);
});

type Bad = { name: string; input: string; code?: string; status?: number; reason: RegExp };

const badHeads: Bad[] = [
  { name: "bare LF", input: "GET /b HTTP/1.1\nHost: a.test\n\n", reason: /bare LF/ },
  {
    name: "obs-fold",
    input: "GET /b HTTP/1.1\r\nHost: a.test\r\nX-A: a\r\n b\r\n\r\n",
    reason: /obs-fold/,
  },
  {
    name: "Content-Length and Transfer-Encoding",
    input: "POST /b HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n" +
      "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    reason: /both Content-Length and Transfer-Encoding/,
  },
  {
    name: "two different Content-Lengths",
    input: "POST /b HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    reason: /conflicting Content-Length/,
  },
  {
    name: "a Host with an escaped NUL",
    input: "GET /b HTTP/1.1\r\nHost: a%00.test\r\n\r\n",
    code: "invalid-host",
    reason: /Host header names "a%00\.test", which is not a valid host/,
  },
  {
    name: "a Host with an IPv6 zone",
    input: "GET /b HTTP/1.1\r\nHost: [::1%25lo]:80\r\n\r\n",
    code: "invalid-host",
    reason: /not a valid host/,
  },
  {
    name: "an absolute-form target with an IPv6 zone",
    input: "GET http://[::1%25lo]:8080/ HTTP/1.1\r\nHost: x\r\n\r\n",
    code: "invalid-host",
    reason: /request-target "http:\/\/\[::1%25lo\]:8080\/" is not a URL/,
  },
  {
    name: "a Host port out of range",
    input: "GET /b HTTP/1.1\r\nHost: a.test:99999\r\n\r\n",
    code: "invalid-host",
    reason: /not host\[:port\]/,
  },
  {
    name: "a Host that is no valid name",
    input: "GET /b HTTP/1.1\r\nHost: a..b\r\n\r\n",
    code: "invalid-host",
    reason: /the Host header names an invalid host: /,
  },
  {
    name: "HTTP/1.0 without Host",
    input: "GET /b HTTP/1.0\r\n\r\n",
    code: "invalid-host",
    reason: /names no host/,
  },
  {
    name: "an unknown transfer coding",
    input: "POST /b HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: zip, chunked\r\n\r\n",
    status: 501,
    reason: /unknown transfer coding/,
  },
  {
    name: "an Upgrade with a body",
    input: "GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n" +
      "Content-Length: 3\r\n\r\nabc",
    reason: /switches protocols has a body/,
  },
];

for (const t of badHeads) {
  Deno.test(`RequestStreamChecker refuses ${t.name}, in a first or a later head`, () => {
    for (const before of ["", GET]) {
      const c = new RequestStreamChecker();
      const r = refusal(c.push(b(before + t.input)));
      assertEquals(r.code, t.code ?? "invalid-request");
      assertEquals(r.status, t.status ?? 400);
      assertMatch(r.reason, t.reason);
      assertEquals(r.started, false);
      // It stays refused.
      assertEquals(c.push(b(GET)), r);
    }
  });
}

Deno.test("RequestStreamChecker accepts the hosts sluice can route", () => {
  for (
    const host of [
      "a.test",
      "A.Test:8080",
      "127.0.0.1",
      "[::1]:8080",
      "[2001:db8::1]",
      "xn--bcher-kva.example",
    ]
  ) {
    const c = new RequestStreamChecker();
    assertEquals(c.push(b(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`)).kind, "pass", host);
  }
  const c = new RequestStreamChecker();
  const abs = "GET http://a.test:8080/x?y HTTP/1.1\r\nHost: a.test:8080\r\n\r\n";
  assertEquals(passed(c.push(b(abs))), abs);
});

Deno.test("RequestStreamChecker refuses a malformed chunk, saying whether the request had started", () => {
  const head = "POST /c HTTP/1.1\r\nHost: a.test:81\r\nTransfer-Encoding: chunked\r\n\r\n";
  // All in one push: nothing of the request passes.
  const one = new RequestStreamChecker();
  const r1 = refusal(one.push(b(head + "5\r\nhello\r\nzz\r\n")));
  assertEquals([r1.code, r1.started, r1.host, r1.port], ["invalid-request", false, "a.test", 81]);
  assertMatch(r1.reason, /malformed chunked body: chunk size is not a hex number/);
  // The head passed earlier: the server behind may have started on it.
  const two = new RequestStreamChecker();
  assertEquals(passed(two.push(b(head + "5\r\nhel"))), head + "5\r\nhel");
  assertEquals(passed(two.push(b("lo\r\n"))), "lo\r\n");
  const r2 = refusal(two.push(b("5\r\nworld!\r\n")));
  assertEquals(r2.started, true);
  assertMatch(r2.reason, /chunk data not followed by CRLF/);
});

Deno.test("RequestStreamChecker waits for the answer to an Upgrade: a 101 lets the rest through unchecked", () => {
  const up =
    "GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
  const c = new RequestStreamChecker();
  const s = c.push(b(up + "\x81\x05early"));
  assertEquals(passed(s), up);
  assert(s.kind === "pass" && s.wait === "outcome");
  assertEquals(passed(c.push(b("\x81\x01x"))), "");
  assertEquals(passed(c.outcome(101)), "\x81\x05early\x81\x01x");
  assert(c.switched);
  assertEquals(passed(c.push(b("GET / HTTP/1.1\n\n"))), "GET / HTTP/1.1\n\n");
});

Deno.test("RequestStreamChecker goes on checking after a refused Upgrade or CONNECT", () => {
  const up =
    "GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
  const c = new RequestStreamChecker();
  assertEquals(passed(c.push(b(up + GET))), up);
  assertEquals(passed(c.outcome(403)), GET);
  assertEquals(c.requests, 2);
  assertMatch(refusal(c.push(b("GET / HTTP/1.1\nHost: a\n\n"))).reason, /bare LF/);
  const connect = "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n";
  const k = new RequestStreamChecker();
  assertEquals(passed(k.push(b(connect))), connect);
  assertEquals(passed(k.outcome(403)), "");
  assertEquals(passed(k.push(b(GET))), GET);
  const k2 = new RequestStreamChecker();
  k2.push(b(connect));
  k2.outcome(200);
  assert(k2.switched);
});

Deno.test("RequestStreamChecker takes a head dripped byte by byte in linear time", () => {
  // Re-parsing the held head on every byte would copy and scan ~2 GB here (seconds).
  const head = `GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: ${"v".repeat(60_000)}\r\n\r\n`;
  const c = new RequestStreamChecker({ maxHeaderBytes: 65536 });
  const input = b(head);
  let passedBytes = 0;
  const t0 = performance.now();
  for (let i = 0; i < input.length; i++) {
    const s = c.push(input.subarray(i, i + 1));
    assert(s.kind === "pass");
    for (const x of s.bytes) passedBytes += x.length;
  }
  const ms = performance.now() - t0;
  assertEquals(passedBytes, input.length);
  assert(ms < 1000, `took ${ms.toFixed(0)} ms`);
});

Deno.test("RequestStreamChecker refuses a head over the size bound with 431", () => {
  const c = new RequestStreamChecker({ maxHeaderBytes: 64 });
  const r = refusal(c.push(b(`GET / HTTP/1.1\r\nHost: a.test\r\nX: ${"x".repeat(80)}\r\n\r\n`)));
  assertEquals(r.status, 431);
});

// ---------------------------------------------------------------------------------------------
// Over sockets, in front of Deno's server.

type Front = {
  port: number;
  seen: string[];
  refusals: [StreamRefusal, boolean][];
  close(): Promise<void>;
};

/**
 * A Deno.serve server (the internal server's kind) behind a listener whose connections reach
 * it through checkedRequestStream and splice, as the hop does.
 */
function front(checked = true): Front {
  const seen: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    // A body the client broke off mid-way fails here; the request just ends.
    const body = req.body ? await req.text().catch(() => "<broken>") : "";
    seen.push(`${req.method} ${url.pathname} ${body}`);
    if (url.pathname === "/ws") {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onmessage = (e) => socket.send(`echo:${e.data}`);
      return response;
    }
    if (url.pathname === "/slow") await new Promise((r) => setTimeout(r, 200));
    return new Response(`ok ${url.pathname}\n`);
  });
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const refusals: [StreamRefusal, boolean][] = [];
  const tasks: Promise<unknown>[] = [];
  const loop = (async () => {
    for await (const conn of listener) {
      tasks.push((async () => {
        const hop = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
        const a = checked
          ? checkedRequestStream(conn, undefined, {
            refused: (r, answer) => {
              refusals.push([r, answer]);
              return enc.encode(
                `HTTP/1.1 ${r.status} No\r\nx-sluice-decision: error; code=${r.code}\r\n` +
                  "content-length: 0\r\nconnection: close\r\n\r\n",
              );
            },
          })
          : conn;
        await splice(a, hop);
      })());
    }
  })();
  return {
    port: listener.addr.port,
    seen,
    refusals,
    async close() {
      listener.close();
      await loop.catch(() => {});
      await Promise.allSettled(tasks);
      await server.shutdown();
    },
  };
}

/** Sends `parts` (a pause between them) and reads until the peer closes or `ms` pass. */
async function exchange(port: number, parts: string[], ms = 1500): Promise<string> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  let out = "";
  const timer = setTimeout(() => c.close(), ms);
  const reading = (async () => {
    const buf = new Uint8Array(4096);
    try {
      while (true) {
        const n = await c.read(buf);
        if (n === null) {
          out += "<EOF>";
          break;
        }
        out += dec.decode(buf.subarray(0, n));
      }
    } catch { /* closed by the timer */ }
  })();
  for (const p of parts) {
    await c.write(b(p)).catch(() => {});
    await new Promise((r) => setTimeout(r, 100));
  }
  await reading;
  clearTimeout(timer);
  try {
    c.close();
  } catch { /* closed */ }
  return out;
}

function statuses(text: string): string[] {
  return [...text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => m[1]);
}

Deno.test("Deno's HTTP server (what the hop hands plain HTTP to) accepts bare LF heads: measured", async () => {
  const f = front(false);
  try {
    const out = await exchange(f.port, [GET, "GET /lf HTTP/1.1\nHost: a.test\n\n"]);
    assertEquals(statuses(out), ["200", "200"]);
    assertEquals(f.seen, ["GET /a ", "GET /lf "]);
    // Obs-fold and conflicting framing it refuses itself, with a bare 400 that says nothing.
    const fold = await exchange(f.port, ["GET /f HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"]);
    assertEquals(statuses(fold), ["400"]);
    assert(!fold.includes("x-sluice-decision"));
  } finally {
    await f.close();
  }
});

Deno.test("checkedRequestStream() refuses a bare-LF second head after answering the first", async () => {
  const f = front();
  try {
    const out = await exchange(f.port, [GET, "GET /lf HTTP/1.1\nHost: a.test\n\n"]);
    assertEquals(statuses(out), ["200", "400"]);
    assertMatch(out, /x-sluice-decision: error; code=invalid-request[\s\S]*<EOF>$/);
    assertEquals(f.seen, ["GET /a "]);
    assertEquals(f.refusals.length, 1);
    assertMatch(f.refusals[0][0].reason, /bare LF in the request line/);
  } finally {
    await f.close();
  }
});

Deno.test("checkedRequestStream() answers a malformed chunked body 400 and closes; the server never sees it", async () => {
  const f = front();
  try {
    const out = await exchange(f.port, [
      "POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ]);
    assertEquals(statuses(out), ["400"]);
    assertMatch(out, /<EOF>$/);
    assertEquals(f.seen, []);
    assertEquals(f.refusals.map(([r, a]) => [r.code, r.started, a]), [
      ["invalid-request", false, true],
    ]);
  } finally {
    await f.close();
  }
});

Deno.test("checkedRequestStream() ends a request whose body goes bad mid-way, answering only if no response began", async () => {
  const f = front();
  try {
    const out = await exchange(f.port, [
      "POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
      "zz\r\n",
    ]);
    assertEquals(statuses(out), ["400"]);
    assertMatch(out, /<EOF>$/);
    assertEquals(f.refusals.map(([r, a]) => [r.started, a]), [[true, true]]);
  } finally {
    await f.close();
  }
});

Deno.test("checkedRequestStream() lets a WebSocket through after its 101, and checks again after a refusal", async () => {
  const f = front();
  try {
    const ws = new WebSocket(`ws://127.0.0.1:${f.port}/ws`);
    const got = await new Promise<string>((resolve, reject) => {
      ws.onopen = () => ws.send("hi");
      ws.onmessage = (e) => resolve(String(e.data));
      ws.onerror = () => reject(new Error("websocket failed"));
    });
    assertEquals(got, "echo:hi");
    const closed = new Promise((r) => (ws.onclose = r));
    ws.close();
    await closed;
    // An Upgrade the server does not grant: later heads are checked as ever.
    const out = await exchange(f.port, [
      "GET /plain HTTP/1.1\r\nHost: a.test\r\nUpgrade: h9\r\nConnection: upgrade\r\n\r\n",
      "GET /lf HTTP/1.1\nHost: a.test\n\n",
    ]);
    assertEquals(statuses(out), ["200", "400"]);
  } finally {
    await f.close();
  }
});

Deno.test("checkedRequestStream() passes pipelined and slow requests intact", async () => {
  const f = front();
  try {
    const post = "POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nxyz";
    const out = await exchange(f.port, [GET + "GET /slow HTTP/1.1\r\nHost: a.test\r\n\r\n" + post]);
    assertEquals(statuses(out), ["200", "200", "200"]);
    assertEquals(f.seen, ["GET /a ", "GET /slow ", "POST /p xyz"]);
    assertEquals(f.refusals, []);
  } finally {
    await f.close();
  }
});

// ---------------------------------------------------------------------------------------------
// The refusal's record and answer.

function responderCtx() {
  const { compiled } = loadPolicyText(
    "version: 1\nnetwork: { allow: [a.test] }\ncredentials:\n  KEY:\n    from: env:K\n" +
      "    hosts: [a.test]\n    placeholder: ph-key-7q2w9e4r\n",
    "p.yaml",
  );
  const audit: AuditRecord[] = [];
  const counted: string[] = [];
  const told: [string, string][] = [];
  const ctx = {
    policy: () => compiled,
    broker: () => ({ scanner: new PlaceholderScanner(new Map([["KEY", "ph-key-7q2w9e4r"]])) }),
    audit: { write: (r: AuditRecord) => audit.push(r), close: () => Promise.resolve() },
    metrics: {
      violations: { inc: (l: { credential: string }) => counted.push(`violation ${l.credential}`) },
      requests: { inc: (l: { verdict: string }) => counted.push(`request ${l.verdict}`) },
    },
    onViolation: (c: { name: string }, host: string) => told.push([c.name, host]),
  } as unknown as ProxyContext;
  const meta: HopMeta = { conn: 7, client: "127.0.0.1:5", mode: "transparent", secure: false };
  return { respond: streamRefusalResponder(ctx, meta), audit, counted, told };
}

Deno.test("streamRefusalResponder() answers 400 with the decision and writes one request line", () => {
  const { respond, audit, counted, told } = responderCtx();
  const r = refusal(
    new RequestStreamChecker().push(b("GET /p?q=s HTTP/1.1\r\nHost: a%00.b:81\r\n\r\n")),
  );
  const text = dec.decode(respond(r, true));
  assertMatch(text, /^HTTP\/1\.1 400 Bad Request\r\n/);
  assertMatch(text, /x-sluice-decision: error; code=invalid-host\r\n/);
  assertMatch(text, /connection: close/);
  assertEquals(audit.length, 1);
  const { duration_ms: _, ...line } = audit[0];
  assertEquals(line, {
    event: "request",
    conn: 7,
    client: "127.0.0.1:5",
    mode: "transparent",
    tls: "none",
    method: "GET",
    path: "/p",
    host: "a%00.b",
    port: 81,
    verdict: "deny",
    code: "invalid-host",
    reason: 'the Host header names "a%00.b:81", which is not a valid host',
    status: 400,
  });
  assertEquals(counted, ["request deny"]);
  assertEquals(told, []);
});

Deno.test("streamRefusalResponder() makes a placeholder in an unparseable host a credential violation", () => {
  const { respond, audit, counted, told } = responderCtx();
  const r = refusal(
    new RequestStreamChecker().push(b("GET / HTTP/1.1\r\nHost: PH-KEY-7Q2W9E4R%00.evil\r\n\r\n")),
  );
  const text = dec.decode(respond(r, true));
  assertMatch(text, /^HTTP\/1\.1 403 Forbidden\r\n/);
  assertMatch(text, /x-sluice-decision: deny; code=credential-violation; rule=p\.yaml:4/);
  assertEquals(audit.length, 1);
  assertEquals(
    [audit[0].code, audit[0].violation, audit[0].status, audit[0].rule],
    ["credential-violation", "KEY", 403, "credentials.KEY.hosts"],
  );
  assertEquals(counted, ["violation KEY", "request deny"]);
  assertEquals(told, [["KEY", "ph-key-7q2w9e4r%00.evil"]]);
});

Deno.test("streamRefusalResponder() records a refusal it cannot answer without a status", () => {
  const { respond, audit } = responderCtx();
  const c = new RequestStreamChecker();
  c.push(b("POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"));
  const r = refusal(c.push(b("zz\r\n")));
  assert(r.started);
  respond(r, false);
  assertEquals([audit[0].code, audit[0].status, audit[0].path], [
    "invalid-request",
    undefined,
    "/",
  ]);
});

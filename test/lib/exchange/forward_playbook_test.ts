/**
 * The exchange stage (`makeRequestHandler` in lib/exchange/forward.ts) as scripted
 * conversations, in the style of mitmproxy's Playbook tests (and of
 * test/lib/ingress/route_playbook_test.ts): a real compiled policy and credential broker, a
 * fake terminator whose hop metadata each case scripts, a fake resolver and a fake upstream
 * pool that records what it was asked and answers with a scripted response (or throws). Each
 * case says what the client sent (a Request on a hop) and what must come out: the response's
 * status and `x-sluice-decision`, what the pool was asked (target, path, the head the real
 * client would write: Host and Authorization), and the audit record. No sockets, no TLS.
 */
import { oneKeyBroker, stageMetrics } from "../../lib/_stage.ts";
import { assert, assertEquals } from "../../_assert.ts";
import { loadPolicyText, parseDestinationHost } from "../../../policy/mod.ts";
import { parseIp } from "../../../policy/address.ts";
import type { Ip } from "../../../policy/address.ts";
import type { Credential } from "../../../policy/types.ts";
import type { ProxyContext } from "../../../lib/gateway/context.ts";
import { DEFAULT_LIMITS } from "../../../lib/ingress/limits.ts";
import type { Connections, HopMeta } from "../../../lib/ingress/terminator.ts";
import { AuditLog } from "../../../lib/ops/audit.ts";
import { makeRequestHandler } from "../../../lib/exchange/forward.ts";
import {
  UpstreamError,
  type UpstreamPool,
  type UpstreamRequest,
  type UpstreamResponse,
  type UpstreamTarget,
} from "../../../lib/upstream/client.ts";
import { buildHead } from "../../../lib/upstream/head.ts";
import { ResolveError } from "../../../lib/upstream/resolver.ts";

const PH = "sluice-key-playbook-0001";
/** As long as the placeholder, so scrubbing that fits lengths still yields the whole placeholder. */
const SECRET = "real-secret-for-playbook";
const { compiled } = loadPolicyText(
  `version: 1
network:
  allow: [api.test, other.test]
  deny: ["api.test/admin/**"]
credentials:
  KEY:
    from: env:K
    hosts: [api.test]
    placeholder: ${PH}
`,
  "p.yaml",
);

/** A scripted upstream answer, or an error the pool throws. */
type Script = UpstreamError | (() => UpstreamResponse);

/** What the pool was asked, and the head sluice's HTTP/1.1 client would have written for it. */
type Asked = { target: UpstreamTarget; req: UpstreamRequest; head: string; body?: Uint8Array };

/** What one conversation produced. */
type Transcript = {
  res: Response;
  text: string;
  asked: Asked[];
  resolved: string[];
  audit: Record<string, unknown>[];
  violations: { credential: string; host: string }[];
  inflight: number;
};

const PUBLIC: Ip = parseIp("203.0.113.7")!;

/** A hop intercepted for `sni` (port 443). */
function tlsHop(sni: string): HopMeta {
  const dest = parseDestinationHost(sni);
  return {
    conn: 7,
    client: "10.0.0.2:5000",
    mode: "transparent",
    secure: true,
    sni,
    target: dest.kind === "invalid" ? undefined : { dest, port: 443 },
  };
}

/** An upstream answer, its body whole (as when it came with the head). */
function answer(status: number, headers: [string, string][], body: Uint8Array | string) {
  return (): UpstreamResponse => {
    const bytes = typeof body === "string" ? new TextEncoder().encode(body) : body;
    const whole = new Uint8Array(bytes);
    return {
      status,
      reason: "OK",
      headers: [...headers, ["content-length", String(whole.length)]],
      body: new ReadableStream({
        start(c) {
          c.enqueue(whole.slice());
          c.close();
        },
      }),
      whole,
      bytesIn: () => whole.length,
    };
  };
}

async function converse(
  req: Request,
  opts: {
    hop?: HopMeta;
    upstream?: Script;
    resolve?: (name: string) => Promise<Ip[]>;
  } = {},
): Promise<Transcript> {
  const hop = opts.hop ?? tlsHop("api.test");
  const upstream = opts.upstream ?? answer(200, [["content-type", "text/plain"]], "ok");
  const t: Omit<Transcript, "res" | "text"> = {
    asked: [],
    resolved: [],
    audit: [],
    violations: [],
    inflight: 0,
  };
  const audit = AuditLog.memory();
  const metrics = stageMetrics();
  const broker = oneKeyBroker(compiled, PH, SECRET);
  const inflight = { count: 0 };
  const ctx = {
    policy: () => compiled,
    broker: () => broker,
    trust: () => ({ forHost: () => ({ verify: true, caCerts: [] }) }),
    audit,
    metrics,
    limits: DEFAULT_LIMITS,
    inflight,
    signal: new AbortController().signal,
    resolver: {
      resolve: (name: string) => {
        t.resolved.push(name);
        return (opts.resolve ?? (() => Promise.resolve([PUBLIC])))(name);
      },
    },
    onViolation: (c: Credential, host: string) => t.violations.push({ credential: c.name, host }),
  } as unknown as ProxyContext;
  const HOP_PORT = 40_001;
  const terminator: Connections = {
    meta: (peer) => (peer.port === HOP_PORT ? hop : undefined),
    bodyStarted: () => {},
    bodyEnded: () => {},
  };
  const pool = {
    request: async (target: UpstreamTarget, r: UpstreamRequest, _signal?: AbortSignal) => {
      const head = new TextDecoder().decode(
        buildHead(target, r, `${target.address}:${target.port}`).head,
      );
      const asked: Asked = { target, req: r, head };
      t.asked.push(asked);
      if (r.body instanceof Uint8Array) asked.body = r.body;
      else if (r.body) asked.body = new Uint8Array(await new Response(r.body).arrayBuffer());
      if (upstream instanceof UpstreamError) throw upstream;
      return upstream();
    },
  } as unknown as UpstreamPool;
  const handler = makeRequestHandler(ctx, () => terminator, pool);
  const info = { remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: HOP_PORT } };
  const res = await handler(req, info as unknown as Deno.ServeHandlerInfo<Deno.NetAddr>);
  const text = await res.text();
  await audit.close();
  t.audit = audit.records as unknown as Record<string, unknown>[];
  t.inflight = inflight.count;
  return { ...t, res, text };
}

/** A header field of a head as written on the wire, by name (case-insensitive). */
function field(head: string, name: string): string | undefined {
  for (const line of head.split("\r\n").slice(1)) {
    const i = line.indexOf(":");
    if (i > 0 && line.slice(0, i).toLowerCase() === name.toLowerCase()) {
      return line.slice(i + 1).trim();
    }
  }
  return undefined;
}

const decision = (t: Transcript) => t.res.headers.get("x-sluice-decision") ?? "";

function only(t: Transcript): Record<string, unknown> {
  const requests = t.audit.filter((r) => r.event === "request");
  assertEquals(requests.length, 1, JSON.stringify(t.audit));
  return requests[0];
}

Deno.test("forward: an allowed request gets the secret substituted and its echo scrubbed", async () => {
  const t = await converse(
    new Request("https://api.test/v1/items?x=1", {
      headers: { authorization: `Bearer ${PH}`, "accept-encoding": "gzip" },
    }),
    {
      upstream: answer(
        200,
        [["content-type", "application/json"], ["x-echo", `Bearer ${SECRET}`]],
        JSON.stringify({ token: SECRET }),
      ),
    },
  );
  assertEquals(t.res.status, 200);
  assertEquals(decision(t), "", "a forwarded response carries no decision header");
  // What went upstream: to the decided host, at the resolved address, with the real value.
  assertEquals(t.resolved, ["api.test"]);
  assertEquals(t.asked.length, 1);
  const [a] = t.asked;
  assertEquals([a.target.host, a.target.port, a.target.address, a.target.tls], [
    "api.test",
    443,
    "203.0.113.7",
    true,
  ]);
  assertEquals(a.req.path, "/v1/items?x=1");
  assertEquals(field(a.head, "host"), "api.test");
  assertEquals(field(a.head, "authorization"), `Bearer ${SECRET}`);
  assertEquals(field(a.head, "accept-encoding"), "identity", "an echo could not be scrubbed");
  assert(a.head.startsWith("GET /v1/items?x=1 HTTP/1.1\r\n"), a.head);
  // What came back: the placeholder, never the value.
  assertEquals(t.res.headers.get("x-echo"), `Bearer ${PH}`);
  assertEquals(JSON.parse(t.text), { token: PH });
  assert(!t.text.includes(SECRET));
  const rec = only(t);
  assertEquals([rec.verdict, rec.code, rec.credentials, rec.status, rec.host, rec.port], [
    "allow",
    "allow-rule",
    ["KEY"],
    200,
    "api.test",
    443,
  ]);
  assertEquals([rec.address, rec.path, rec.tls, rec.conn], [
    "203.0.113.7:443",
    "/v1/items",
    "intercept",
    7,
  ]);
  assertEquals(t.inflight, 0, "the request is still counted in flight");
});

Deno.test("forward: the client's Host is never forwarded; the decided authority is", async () => {
  const t = await converse(
    new Request("https://api.test/v1", { headers: { host: "api.test" } }),
  );
  assertEquals(t.res.status, 200);
  const [a] = t.asked;
  assert(
    a.req.headers.every(([n]) => n.toLowerCase() !== "host"),
    `the client's Host reached the pool: ${JSON.stringify(a.req.headers)}`,
  );
  assertEquals(field(a.head, "host"), "api.test");
  assertEquals(only(t).credentials, undefined, "no placeholder, no credential used");
});

Deno.test("forward: a denied path is refused with 403, the pool never asked", async () => {
  const t = await converse(new Request("https://api.test/admin/users"));
  assertEquals(t.res.status, 403);
  assert(decision(t).startsWith("deny"), decision(t));
  assert(decision(t).includes("deny-rule"), decision(t));
  assertEquals(t.asked.length, 0);
  assertEquals(t.resolved, [], "a refused request was resolved");
  const rec = only(t);
  assertEquals([rec.verdict, rec.code, rec.rule_at, rec.status], [
    "deny",
    "deny-rule",
    "p.yaml:4",
    403,
  ]);
});

Deno.test("forward: `//admin` is merged to /admin and denied", async () => {
  const t = await converse(new Request("https://api.test//admin//users"));
  assertEquals(t.res.status, 403);
  assert(decision(t).includes("deny-rule"), decision(t));
  assertEquals(t.asked.length, 0);
  assertEquals([only(t).verdict, only(t).code], ["deny", "deny-rule"]);
});

Deno.test("forward: `//v1//items` is forwarded merged, as decided", async () => {
  const t = await converse(new Request("https://api.test//v1//items"));
  assertEquals(t.res.status, 200);
  assertEquals(t.asked[0].req.path, "/v1/items");
  assertEquals(only(t).path, "/v1/items");
});

Deno.test("forward: a placeholder toward another host is a credential violation, the pool never asked", async () => {
  const t = await converse(
    new Request("https://other.test/upload", { headers: { authorization: `Bearer ${PH}` } }),
    { hop: tlsHop("other.test") },
  );
  assertEquals(t.res.status, 403);
  assert(decision(t).includes("credential-violation"), decision(t));
  assertEquals(t.asked.length, 0);
  assertEquals(t.resolved, [], "a violating request was resolved");
  assertEquals(t.violations, [{ credential: "KEY", host: "other.test" }]);
  assert(!t.text.includes(SECRET));
  const rec = only(t);
  assertEquals([rec.verdict, rec.code, rec.violation, rec.host], [
    "deny",
    "credential-violation",
    "KEY",
    "other.test",
  ]);
});

Deno.test("forward: a placeholder in the query toward another host is a violation too", async () => {
  const t = await converse(new Request(`https://other.test/q?key=${PH}`), {
    hop: tlsHop("other.test"),
  });
  assertEquals(t.res.status, 403);
  assertEquals(t.asked.length, 0);
  assertEquals([only(t).code, only(t).violation], ["credential-violation", "KEY"]);
});

Deno.test("forward: a Host header naming another host (fronting) is refused, host-mismatch", async () => {
  const t = await converse(
    new Request("https://api.test/v1", {
      headers: { host: "other.test", authorization: `Bearer ${PH}` },
    }),
  );
  assertEquals(t.res.status, 403);
  assert(decision(t).includes("host-mismatch"), decision(t));
  assertEquals(t.asked.length, 0);
  assertEquals([only(t).verdict, only(t).code], ["deny", "host-mismatch"]);
});

Deno.test("forward: an authority other than the SNI (fronting over TLS) is refused, host-mismatch", async () => {
  const t = await converse(new Request("https://other.test/v1"), { hop: tlsHop("api.test") });
  assertEquals(t.res.status, 403);
  assert(decision(t).includes("host-mismatch"), decision(t));
  assertEquals(t.asked.length, 0);
  assertEquals(only(t).code, "host-mismatch");
});

Deno.test("forward: a name that does not resolve answers 502 resolve", async () => {
  const t = await converse(new Request("https://api.test/v1"), {
    resolve: (name) => Promise.reject(new ResolveError(name, "ENOTFOUND")),
  });
  assertEquals(t.res.status, 502);
  assert(decision(t).includes("resolve"), decision(t));
  assertEquals(t.resolved, ["api.test"]);
  assertEquals(t.asked.length, 0);
  const rec = only(t);
  assertEquals([rec.verdict, rec.code], ["deny", "resolve"]);
  assert(String(rec.reason).includes("ENOTFOUND"), String(rec.reason));
});

Deno.test("forward: a name resolving to a private address is refused by the address decision", async () => {
  const t = await converse(new Request("https://api.test/v1"), {
    resolve: () => Promise.resolve([parseIp("10.1.2.3")!]),
  });
  assertEquals(t.res.status, 403);
  assertEquals(t.asked.length, 0);
  assert(decision(t).includes("private-address"), decision(t));
  assertEquals([only(t).verdict, only(t).code], ["deny", "private-address"]);
});

Deno.test("forward: an upstream connect error answers 502 upstream-connect", async () => {
  const t = await converse(
    new Request("https://api.test/v1", { headers: { authorization: `Bearer ${PH}` } }),
    { upstream: new UpstreamError("connect", "connecting to 203.0.113.7:443: refused") },
  );
  assertEquals(t.res.status, 502);
  assert(decision(t).includes("upstream-connect"), decision(t));
  assertEquals(t.asked.length, 1);
  const rec = only(t);
  assertEquals([rec.verdict, rec.code, rec.credentials], ["allow", "upstream-connect", ["KEY"]]);
});

Deno.test("forward: an upstream timeout answers 504 upstream-timeout", async () => {
  const t = await converse(new Request("https://api.test/v1"), {
    upstream: new UpstreamError("timeout", "no response head from 203.0.113.7:443 in 60 s"),
  });
  assertEquals(t.res.status, 504);
  assert(decision(t).includes("upstream-timeout"), decision(t));
  assertEquals([only(t).verdict, only(t).code], ["allow", "upstream-timeout"]);
});

Deno.test("forward: an upstream error quoting the secret is scrubbed before the client and the log", async () => {
  const t = await converse(
    new Request("https://api.test/v1", { headers: { authorization: `Bearer ${PH}` } }),
    { upstream: new UpstreamError("protocol", `bad header value "Bearer ${SECRET}"`) },
  );
  assertEquals(t.res.status, 502);
  assert(!t.text.includes(SECRET), t.text);
  assert(t.text.includes(PH), t.text);
  assert(!String(only(t).reason).includes(SECRET));
});

Deno.test("forward: a gzip response with credentials is decoded, scrubbed and sent as identity", async () => {
  const gz = new Uint8Array(
    await new Response(
      new Blob([`{"echo":"${SECRET}"}`]).stream().pipeThrough(new CompressionStream("gzip")),
    ).arrayBuffer(),
  );
  const t = await converse(
    new Request("https://api.test/v1", {
      headers: { authorization: `Bearer ${PH}`, "accept-encoding": "gzip" },
    }),
    {
      upstream: answer(
        200,
        [["content-type", "application/json"], ["content-encoding", "gzip"]],
        gz,
      ),
    },
  );
  assertEquals(t.res.status, 200);
  assertEquals(field(t.asked[0].head, "accept-encoding"), "identity");
  assertEquals(t.res.headers.get("content-encoding"), null, "still marked as coded");
  assertEquals(JSON.parse(t.text), { echo: PH });
  const rec = only(t);
  assertEquals([rec.verdict, rec.code, rec.credentials], ["allow", "allow-rule", ["KEY"]]);
});

Deno.test("forward: a body carrying the placeholder is substituted only where `in` allows", async () => {
  // KEY's `in` is the default (header, query): a placeholder in the body is left as is
  // toward its own host, never replaced by the value.
  const t = await converse(
    new Request("https://api.test/v1", {
      method: "POST",
      headers: { "content-type": "text/plain", "content-length": String(PH.length + 4) },
      body: `key=${PH}`,
    }),
  );
  assertEquals(t.res.status, 200);
  assertEquals(new TextDecoder().decode(t.asked[0].body), `key=${PH}`);
});

Deno.test("forward: a hop the terminator does not know is refused 421", async () => {
  const audit = AuditLog.memory();
  const ctx = { inflight: { count: 0 }, audit } as unknown as ProxyContext;
  const handler = makeRequestHandler(
    ctx,
    () => ({ meta: () => undefined, bodyStarted() {}, bodyEnded() {} }),
    {} as UpstreamPool,
  );
  const res = await handler(
    new Request("https://api.test/v1"),
    { remoteAddr: { port: 1 } } as unknown as Deno.ServeHandlerInfo<Deno.NetAddr>,
  );
  await res.body?.cancel();
  assertEquals(res.status, 421);
  assert(res.headers.get("x-sluice-decision")?.includes("no-route"));
});

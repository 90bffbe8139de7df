/**
 * The TLS decision stage (`routeTls`) as scripted conversations, in the style of mitmproxy's
 * Playbook tests: a fake client connection, a fake terminator and a fake resolver; each case
 * says what the client sent (a ClientHello's SNI, the CONNECT target) and what must come out:
 * bytes written to the client, a hand-over to the terminator (with or without a denial), and
 * the audit record's verdict and code. No sockets, no TLS: the decision logic alone.
 */
import { oneKeyBroker, stageMetrics } from "../../lib/_stage.ts";
import { assert, assertEquals } from "../../_assert.ts";
import { loadPolicyText, parseDestinationHost } from "../../../policy/mod.ts";
import type { ProxyContext } from "../../../lib/gateway/context.ts";
import { DEFAULT_LIMITS } from "../../../lib/ingress/limits.ts";
import { routeTls } from "../../../lib/ingress/route.ts";
import type { HopMeta, Terminator } from "../../../lib/ingress/terminator.ts";
import { AuditLog } from "../../../lib/ops/audit.ts";
import {
  TLS_ACCESS_DENIED_ALERT,
  TLS_UNRECOGNIZED_NAME_ALERT,
} from "../../../lib/exchange/respond.ts";
import type { Ip } from "../../../policy/address.ts";

const PH = "sluice-key-playbook-0001";
const { compiled } = loadPolicyText(
  `version: 1
network:
  allow: [allowed.test, "*.wild.test", pass.test]
  deny: [denied.test]
credentials:
  KEY:
    from: env:K
    hosts: [allowed.test]
    placeholder: ${PH}
tls:
  passthrough: [pass.test]
`,
  "p.yaml",
);

/** What one conversation produced. */
type Transcript = {
  written: Uint8Array[];
  closed: boolean;
  hops: HopMeta[];
  audit: Record<string, unknown>[];
  violations: number;
};

async function converse(
  sni: string | undefined,
  target?: { host: string; port: number },
  resolve: (name: string) => Promise<Ip[]> = () => Promise.reject(new Error("ENOTFOUND")),
): Promise<Transcript> {
  const t: Transcript = { written: [], closed: false, hops: [], audit: [], violations: 0 };
  const conn = {
    write: (b: Uint8Array) => {
      t.written.push(b.slice());
      return Promise.resolve(b.length);
    },
    close: () => void (t.closed = true),
    read: () => Promise.resolve(null),
  } as unknown as Deno.Conn;
  const audit = AuditLog.memory();
  const metrics = stageMetrics();
  const broker = oneKeyBroker(compiled, PH, "real-value-for-playbook");
  const ctx = {
    policy: () => compiled,
    broker: () => broker,
    audit,
    metrics,
    limits: DEFAULT_LIMITS,
    resolver: { resolve },
    onViolation: () => t.violations++,
  } as unknown as ProxyContext;
  const terminator = {
    hop: (_c: Deno.Conn, _b: Uint8Array, meta: HopMeta) => {
      t.hops.push(meta);
      return Promise.resolve({ up: 0, down: 0 });
    },
  } as unknown as Terminator;
  const dest = target ? parseDestinationHost(target.host) : undefined;
  await routeTls(
    ctx,
    terminator,
    conn,
    { bytes: new Uint8Array([22, 3, 1]), hello: { kind: "ok", sni, alpn: [], length: 3 } },
    {
      id: 1,
      client: "10.0.0.2:5000",
      mode: target ? "explicit" : "transparent",
      target: target
        ? { dest: dest && dest.kind !== "invalid" ? dest : undefined, port: target.port }
        : { port: 443 },
      started: performance.now(),
    },
  );
  await audit.close();
  t.audit = audit.records as unknown as Record<string, unknown>[];
  return t;
}

const same = (a?: Uint8Array, b?: Uint8Array) =>
  !!a && !!b && a.length === b.length && a.every((x, i) => x === b[i]);

Deno.test("routeTls(): an allowed SNI is handed to the terminator, nothing written", async () => {
  const t = await converse("allowed.test");
  assertEquals(t.written.length, 0);
  assertEquals(t.hops.length, 1);
  assertEquals([t.hops[0].sni, t.hops[0].denied], ["allowed.test", undefined]);
  assertEquals([t.audit[0].verdict, t.audit[0].code], ["allow", "allow-rule"]);
});

Deno.test("routeTls(): a denied but interceptable SNI is terminated so the 403 can name the rule", async () => {
  const t = await converse("denied.test");
  assertEquals(t.hops.length, 1);
  assertEquals(t.hops[0].denied?.code, "deny-rule");
  assertEquals([t.audit[0].verdict, t.audit[0].code, t.audit[0].rule_at], [
    "deny",
    "deny-rule",
    "p.yaml:4",
  ]);
});

Deno.test("routeTls(): a placeholder in the SNI is a violation before any decision or lookup", async () => {
  let looked = 0;
  const t = await converse(`${PH}.wild.test`, undefined, () => {
    looked++;
    return Promise.resolve([]);
  });
  assertEquals(looked, 0, "the resolver was asked");
  assertEquals(t.violations, 1);
  const rec = t.audit.find((r) => r.violation === "KEY");
  assert(rec, JSON.stringify(t.audit));
  assertEquals([rec.verdict, rec.code], ["deny", "credential-violation"]);
  assert(t.hops.every((h) => h.denied), "a violating connection was handed over as allowed");
});

Deno.test("routeTls(): no SNI on an intercepted connection gets unrecognized_name", async () => {
  const t = await converse(undefined, { host: "allowed.test", port: 443 });
  assert(same(t.written[0], TLS_UNRECOGNIZED_NAME_ALERT), "no unrecognized_name alert");
  assertEquals(t.hops.length, 0);
  assertEquals(t.audit[0].code, "missing-sni");
});

Deno.test("routeTls(): a passthrough host that does not resolve is an upstream failure, not a denial", async () => {
  const t = await converse("pass.test");
  assert(same(t.written[0], TLS_ACCESS_DENIED_ALERT), "no alert");
  assert(t.closed);
  assertEquals(t.hops.length, 0);
  assertEquals([t.audit[0].verdict, t.audit[0].code, t.audit[0].tls], [
    "allow",
    "resolve",
    "passthrough",
  ]);
});

Deno.test("routeTls(): an SNI that differs from the CONNECT target is refused", async () => {
  const t = await converse("allowed.test", { host: "other.wild.test", port: 443 });
  assert(same(t.written[0], TLS_ACCESS_DENIED_ALERT), "no access_denied alert");
  assertEquals(t.hops.length, 0);
  assertEquals([t.audit[0].verdict, t.audit[0].code], ["deny", "host-mismatch"]);
});

import { assert, assertEquals, assertMatch } from "../../_assert.ts";
import {
  describeEnding,
  exitStatus,
  renderHostRules,
  renderNamespaceRules,
  type RunEnding,
  runNet,
  RunSummary,
} from "../../../lib/run/namespace.ts";
import { cidrAllowsFromPolicy, cidrDeniesFromPolicy } from "../../../lib/enforce/spec.ts";
import { decideRequest, loadPolicyText } from "../../../policy/mod.ts";
import { AuditLog, writeDecided } from "../../../lib/ops/audit.ts";
import { IS_ROOT, run } from "../../e2e/_harness.ts";

const { compiled } = loadPolicyText(
  "version: 1\nnetwork:\n  allow: [a.test, 10.20.0.0/16:5432]\n  deny: [10.20.9.0/24]\n",
  "p.yaml",
);
const net = runNet(4242);
const ports = { proxy: 4000, https: 4001, http: 4002, dns: 4003 };

Deno.test("runNet() derives unique names and a /30 from the pid", () => {
  assertEquals(net, {
    ns: "sluice-run-4242",
    hostIf: "slh4242",
    nsIf: "sln4242",
    hostAddr: "10.231.66.73",
    nsAddr: "10.231.66.74",
    prefix: 30,
  });
});

Deno.test("renderNamespaceRules() sends web and DNS to sluice, drops denies first, accepts CIDR allows, drops the rest", () => {
  const text = renderNamespaceRules(
    net,
    ports,
    compiled.policy.enforce,
    cidrAllowsFromPolicy(compiled.policy),
    cidrDeniesFromPolicy(compiled.policy),
  );
  assertMatch(text, /tcp dport \{ 443 \} dnat ip to 10\.231\.66\.73:4001/);
  assertMatch(text, /tcp dport \{ 80 \} dnat ip to 10\.231\.66\.73:4002/);
  assertMatch(text, /th dport 53 dnat ip to 10\.231\.66\.73:4003/);
  assertMatch(text, /policy drop;/);
  const deny = text.indexOf("ip daddr 10.20.9.0/24");
  const allow = text.indexOf(
    "ip daddr 10.20.0.0/16 meta l4proto { tcp, udp } th dport 5432 accept",
  );
  assert(deny > 0 && allow > deny, "deny CIDRs come before allows");
  assertMatch(text, /counter name "dropped" drop/);
});

Deno.test("renderHostRules() forwards and masquerades only the allowed CIDRs", () => {
  const text = renderHostRules(net, ports, cidrAllowsFromPolicy(compiled.policy), "sluice_r4242");
  assertMatch(text, /iifname "slh4242" ip daddr 10\.20\.0\.0\/16 .* accept/);
  assertMatch(text, /ip saddr 10\.231\.66\.74 ip daddr 10\.20\.0\.0\/16 .* masquerade/);
  assertMatch(text, /iifname "slh4242" counter drop comment "only the policy's CIDR allows leave"/);
});

Deno.test("renderHostRules() lets the veth reach only sluice's listeners on the host", () => {
  const text = renderHostRules(net, ports, [], "sluice_r4242");
  assertMatch(
    text,
    /iifname "slh4242" ip daddr 10\.231\.66\.73 tcp dport \{ 4000, 4001, 4002 \} accept/,
  );
  assertMatch(
    text,
    /iifname "slh4242" ip daddr 10\.231\.66\.73 meta l4proto \{ tcp, udp \} th dport 4003 accept/,
  );
  const input = text.slice(text.indexOf("chain input"), text.indexOf("chain forward"));
  assert(input.trimEnd().endsWith('counter drop comment "nothing else on the host"\n\t}'), input);
  // Without CIDR allows nothing is forwarded and nothing masqueraded.
  assert(!/masquerade/.test(text));
});

Deno.test({
  name: "renderNamespaceRules() and renderHostRules() pass nft -c in a test namespace",
  ignore: !IS_ROOT,
  async fn() {
    const ns = `sluice-rc-${crypto.randomUUID().slice(0, 8)}`;
    await run(["ip", "netns", "add", ns]);
    try {
      for (
        const text of [
          renderNamespaceRules(
            net,
            ports,
            compiled.policy.enforce,
            cidrAllowsFromPolicy(compiled.policy),
            [],
          ),
          renderHostRules(net, ports, cidrAllowsFromPolicy(compiled.policy), "sluice_r4242"),
        ]
      ) {
        const c = new Deno.Command("ip", {
          args: ["netns", "exec", ns, "nft", "-c", "-f", "-"],
          stdin: "piped",
          stderr: "piped",
        }).spawn();
        const w = c.stdin.getWriter();
        await w.write(new TextEncoder().encode(text));
        await w.close();
        const o = await c.output();
        assertEquals(o.code, 0, new TextDecoder().decode(o.stderr));
      }
    } finally {
      await run(["ip", "netns", "del", ns]);
    }
  },
});

const endings: [string, RunEnding, number, string][] = [
  ["its own code", { kind: "exited", code: 42 }, 42, "command exited 42"],
  ["zero", { kind: "exited", code: 0 }, 0, "command exited 0"],
  [
    "128+N for SIGSEGV",
    { kind: "signal", signal: "SIGSEGV", number: 11 },
    139,
    "command killed by SIGSEGV (exit status 139)",
  ],
  [
    "128+N for SIGUSR1",
    { kind: "signal", signal: "SIGUSR1", number: 10 },
    138,
    "command killed by SIGUSR1 (exit status 138)",
  ],
  ["127 when not found", { kind: "not-found" }, 127, "command not found (exit status 127)"],
  [
    "123 after block_and_terminate",
    { kind: "terminated", credential: "K" },
    123,
    "command ended by sluice: credential K violation (exit status 123)",
  ],
  ["125 when sluice failed", { kind: "failed" }, 125, "sluice failed (exit status 125)"],
];
for (const [name, ending, code, words] of endings) {
  Deno.test(`exitStatus() and describeEnding() agree: ${name}`, () => {
    assertEquals(exitStatus(ending), code);
    assertEquals(describeEnding(ending), words);
    assert(describeEnding(ending).includes(String(code)), "the summary names the exit status");
  });
}

Deno.test("RunSummary counts requests and violations and names the most denied hosts", () => {
  const s = new RunSummary();
  s.write({
    event: "request",
    conn: 1,
    mode: "transparent",
    verdict: "allow",
    code: "allow-rule",
    reason: "",
  });
  s.write({
    event: "request",
    conn: 2,
    mode: "transparent",
    host: "x.test",
    verdict: "deny",
    code: "default",
    reason: "",
  });
  s.write({
    event: "request",
    conn: 3,
    mode: "transparent",
    host: "x.test",
    verdict: "deny",
    code: "credential-violation",
    reason: "",
    violation: "K",
  });
  assertEquals(
    s.render(describeEnding({ kind: "exited", code: 0 })),
    "sluice: command exited 0; 1 allowed, 2 denied, 1 credential violation\nsluice: most denied: x.test (2)",
  );
});

Deno.test("RunSummary counts records written with their decision, and passes them on whole", async () => {
  const log = AuditLog.memory();
  const s = new RunSummary(log);
  const allow = decideRequest(compiled, {
    method: "GET",
    dest: { kind: "name", name: "a.test" },
    port: 443,
    path: "/",
  });
  const deny = decideRequest(compiled, {
    method: "GET",
    dest: { kind: "name", name: "y.test" },
    port: 443,
    path: "/",
  });
  writeDecided(s, allow, { event: "request", conn: 1, host: "a.test", status: 200 });
  writeDecided(s, deny, { event: "request", conn: 2, host: "y.test", status: 403 });
  await s.close();
  assertEquals(
    s.render(describeEnding({ kind: "exited", code: 0 })),
    "sluice: command exited 0; 1 allowed, 1 denied, 0 credential violations\nsluice: most denied: y.test (1)",
  );
  assertEquals(log.records.map((r) => [r.conn, r.verdict, r.code, r.rule]), [
    [1, "allow", "allow-rule", "a.test"],
    [2, "deny", "default", "default: deny"],
  ]);
});

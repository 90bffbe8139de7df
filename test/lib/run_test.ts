import { assert, assertEquals, assertMatch } from "../_assert.ts";
import {
  childEnv,
  renderHostRules,
  renderNamespaceRules,
  runNet,
  RunSummary,
} from "../../lib/run.ts";
import { cidrAllowsFromPolicy, cidrDeniesFromPolicy } from "../../lib/nft_render.ts";
import { loadPolicyText } from "../../policy/mod.ts";
import { IS_ROOT, run } from "../e2e/_harness.ts";

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
    "ip daddr 10.20.0.0/16 meta l4proto { tcp, udp } th dport { 5432 } accept",
  );
  assert(deny > 0 && allow > deny, "deny CIDRs come before allows");
  assertMatch(text, /counter name "dropped" drop/);
});

Deno.test("renderHostRules() forwards and masquerades only the allowed CIDRs", () => {
  const text = renderHostRules(net, cidrAllowsFromPolicy(compiled.policy), "sluice_r4242");
  assertMatch(text, /iifname "slh4242" ip daddr 10\.20\.0\.0\/16 .* accept/);
  assertMatch(text, /ip saddr 10\.231\.66\.74 ip daddr 10\.20\.0\.0\/16 .* masquerade/);
  assertMatch(text, /iifname "slh4242" drop/);
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
          renderHostRules(net, cidrAllowsFromPolicy(compiled.policy), "sluice_r4242"),
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

Deno.test("childEnv() gives placeholders under credential names and the CA bundle everywhere", () => {
  const env = childEnv(
    { PATH: "/bin", NO_PROXY: "x" },
    new Map([["API_KEY", "sluice-api-key-x"]]),
    "/tmp/b.pem",
    "http://127.0.0.1:9",
  );
  assertEquals(env.API_KEY, "sluice-api-key-x");
  assertEquals(
    [env.SSL_CERT_FILE, env.NODE_EXTRA_CA_CERTS, env.DENO_CERT, env.CARGO_HTTP_CAINFO],
    Array(4).fill("/tmp/b.pem"),
  );
  assertEquals([env.HTTPS_PROXY, env.NO_PROXY], ["http://127.0.0.1:9", undefined]);
});

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
    s.render(0),
    "sluice: command exited 0; 1 allowed, 2 denied, 1 credential violation\nsluice: most denied: x.test (2)",
  );
});

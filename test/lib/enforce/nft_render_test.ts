import {
  assert,
  assertEquals,
  assertMatch,
  assertStringIncludes,
  assertThrows,
} from "../../_assert.ts";
import { renderAddElements, renderNft } from "../../../lib/enforce/nft_render.ts";
import {
  cidrAllowsFromPolicy,
  cidrDeniesFromPolicy,
  type EnforceSpec,
  EnforceSpecError,
  specFromPolicy,
} from "../../../lib/enforce/spec.ts";
import { checkNft, detectCgroupPrefix } from "../../../lib/enforce/netfilter.ts";
import { loadPolicyText } from "../../../policy/load.ts";
import { CASES, CGROUP } from "../../fixtures/netfilter/cases.ts";

const FIXTURES = new URL("../../fixtures/netfilter/", import.meta.url);
const UPDATE = Deno.env.get("SLUICE_UPDATE_SNAPSHOTS") === "1";

async function snapshot(file: string, actual: string): Promise<void> {
  const url = new URL(file, FIXTURES);
  if (UPDATE) return await Deno.writeTextFile(url, actual);
  let expected: string;
  try {
    expected = await Deno.readTextFile(url);
  } catch {
    throw new Error(
      `no snapshot ${file}; review the output, then run with SLUICE_UPDATE_SNAPSHOTS=1`,
    );
  }
  assertEquals(
    actual,
    expected,
    `${file} differs; if intended, regenerate with SLUICE_UPDATE_SNAPSHOTS=1`,
  );
}

for (const c of CASES) {
  Deno.test(`renderNft() matches the snapshot for ${c.name}`, async () => {
    await snapshot(`${c.name}.nft`, renderNft(c.spec));
  });
}

const base: EnforceSpec = CASES.find((c) => c.name === "full")!.spec;
const lines = (text: string) => text.split("\n").map((l) => l.trim());
/** The rules of one chain, in order. */
function chainRules(text: string, name: string): string[] {
  const all = lines(text);
  const start = all.indexOf(`chain ${name} {`);
  assert(start !== -1, `no chain ${name} in:\n${text}`);
  return all.slice(start + 1, all.indexOf("}", start));
}

Deno.test("renderNft() gives the same bytes for the same spec in any order", () => {
  const shuffled: EnforceSpec = {
    ...base,
    subjects: {
      users: [...base.subjects.users].reverse(),
      cgroups: [...base.subjects.cgroups].reverse(),
      interfaces: [...base.subjects.interfaces].reverse(),
    },
    ports: { http: [...base.ports.http].reverse(), https: [...base.ports.https].reverse() },
    allowCidrs: [...base.allowCidrs].reverse().filter((r) => !r.source?.includes("duplicate")),
    hostSets: [...base.hostSets!].reverse(),
  };
  assertEquals(renderNft(shuffled), renderNft(base));
});

Deno.test("renderNft() replaces the table in one transaction whether or not it exists", () => {
  const text = renderNft({ ...base, table: "t_1" });
  assertEquals(lines(text).slice(1, 4), [
    "table inet t_1 {}",
    "delete table inet t_1",
    "table inet t_1 {",
  ]);
});

Deno.test("renderNft() orders egress: established, denies, CIDR allows, host sets, QUIC, then drop", () => {
  const rules = chainRules(renderNft(base), "egress_policy");
  const at = (re: RegExp) => rules.findIndex((r) => re.test(r));
  const order = [
    at(/^ct state established,related accept$/),
    at(/^ip daddr 169\.254\.169\.254 goto drop_logged/),
    at(/^ip daddr 10\.20\.0\.0\/16 meta l4proto \{ tcp, udp \} th dport 5432 accept/),
    at(/@sluice_allow4 accept/),
    at(/^udp dport \{ 443, 8443 \} goto drop_logged/),
    at(/^goto drop_logged comment "enforce.other: drop"$/),
  ];
  assert(order.every((i) => i !== -1), `missing rule in:\n${rules.join("\n")}`);
  assertEquals([...order].sort((a, b) => a - b), order);
  assertEquals(order.at(-1), rules.length - 1);
});

Deno.test("renderNft() keeps the drop and its log apart, so the rate limit never lets packets through", () => {
  assertEquals(chainRules(renderNft(base), "drop_logged"), [
    'limit rate 10/second log prefix "sluice drop: "',
    'counter name "dropped" drop',
  ]);
});

Deno.test("renderNft() exempts sluice's mark, never its uid: root in a subject cgroup is confined", () => {
  // sluice as root, as the shipped unit runs it, confining a cgroup: no uid may
  // be let through ahead of the subject matches, or every root process in the
  // cgroup would escape.
  const text = renderNft({
    ...base,
    subjects: { users: [], cgroups: [CGROUP], interfaces: [] },
    self: { uid: 0, cgroup: "system.slice/sluice.service" },
  });
  assert(!/meta skuid/.test(text), text);
  for (const chain of ["output_nat", "output_filter"]) {
    const rules = chainRules(text, chain);
    assertMatch(rules[1], /^meta mark 0x0000005c return/);
    assertMatch(rules[2], new RegExp(`^socket cgroupv2 level 2 "${CGROUP}" jump `));
    assertEquals(rules.length, 3, rules.join("\n"));
  }
  const users = chainRules(renderNft(base), "output_nat");
  assertEquals(users.filter((r) => r.startsWith("meta skuid")), [
    'meta skuid { 1001, 1002 } jump to_listeners comment "enforce.subjects.users"',
  ]);
});

Deno.test("renderNft() refuses a spec whose subjects include sluice itself, saying how to run it", () => {
  const withSelf = (self: EnforceSpec["self"], cgroups = ["system.slice"]) => () =>
    renderNft({ ...base, subjects: { users: [1001], cgroups, interfaces: [] }, self });
  const refused = [
    { self: { uid: 1001 }, message: /runs as uid 1001, a subject.*run sluice as a user/ },
    {
      self: { uid: 0, cgroup: "system.slice/sluice.service" },
      message:
        /runs in cgroup "system\.slice\/sluice\.service", inside the subject "system\.slice".*cgroup outside every subject/,
    },
    { self: { cgroup: "/system.slice/" }, message: /"system\.slice", which is the subject/ },
  ];
  for (const c of refused) {
    assertMatch(assertThrows(withSelf(c.self), EnforceSpecError).message, c.message);
  }
  // Beside a subject, above one (the root cgroup, or a parent), or a sibling with a
  // common prefix: sluice's sockets match no subject rule.
  for (const cgroup of ["", "system.slice2/sluice.service", "user.slice", "a"]) {
    withSelf({ uid: 0, cgroup }, ["system.slice", "a/b"])();
  }
});

Deno.test("renderNft() drops nothing else with other: allow, but still drops QUIC and denied CIDRs", () => {
  const rules = chainRules(renderNft({ ...base, other: "allow" }), "egress_policy");
  assert(!rules.some((r) => r.startsWith('goto drop_logged comment "enforce.other')));
  assert(rules.some((r) => r.startsWith("udp dport { 443, 8443 } goto drop_logged")));
  assert(rules.some((r) => r.startsWith("ip daddr 169.254.169.254 goto drop_logged")));
});

Deno.test("renderNft() handles DNS per dnsMode", () => {
  const cases = [
    { dnsMode: "proxy", redirect: true, egress: undefined },
    { dnsMode: "allow", redirect: false, egress: "accept" },
    { dnsMode: "block", redirect: false, egress: "goto drop_logged" },
  ] as const;
  for (const c of cases) {
    const text = renderNft({ ...base, dnsMode: c.dnsMode });
    const redirected = chainRules(text, "to_listeners").some((r) =>
      /th dport 53 redirect to :15053/.test(r)
    );
    assertEquals(redirected, c.redirect, c.dnsMode);
    const dns = chainRules(text, "egress_policy").find((r) => r.includes("th dport 53"));
    assertEquals(dns?.match(/th dport 53 (accept|goto drop_logged)/)?.[1], c.egress, c.dnsMode);
  }
});

Deno.test("renderNft() renders only the chains of the subject kinds present", () => {
  const chains = (s: EnforceSpec) => [...renderNft(s).matchAll(/chain (\w+) \{/g)].map((m) => m[1]);
  const only = (subjects: Partial<EnforceSpec["subjects"]>) => ({
    ...base,
    subjects: { users: [], cgroups: [], interfaces: [], ...subjects },
  });
  assertEquals(chains(only({ users: [1] })), [
    "to_listeners",
    "egress_policy",
    "drop_logged",
    "output_nat",
    "output_filter",
    "output_subject",
  ]);
  assertEquals(chains(only({ interfaces: ["br0"] })), [
    "to_listeners",
    "egress_policy",
    "drop_logged",
    "prerouting_nat",
    "forward_filter",
    "input_filter",
  ]);
  assertEquals(chains(only({})), []);
});

Deno.test("renderNft() computes the cgroup level and applies the cgroup prefix to the path only", () => {
  const text = renderNft({
    ...base,
    cgroupPrefix: "unified",
    subjects: { users: [], cgroups: ["/a/b/c/"], interfaces: [] },
  });
  assertStringIncludes(text, 'socket cgroupv2 level 3 "unified/a/b/c" jump to_listeners');
});

Deno.test("renderNft() rejects specs it cannot render safely, saying what to fix", () => {
  const cases: { name: string; spec: EnforceSpec; message: RegExp }[] = [
    {
      name: "sluice's uid is a subject",
      spec: { ...base, self: { uid: 1001 } },
      message: /redirected back into it/,
    },
    {
      name: "dns proxy without a DNS listener",
      spec: { ...base, redirect: { https: 1, http: 2 } },
      message: /set listen\.dns/,
    },
    { name: "table with a space", spec: { ...base, table: "a b" }, message: /table "a b"/ },
    {
      name: "cgroup escaping with ..",
      spec: { ...base, subjects: { ...base.subjects, cgroups: ["a/../b"] } },
      message: /not a cgroup path/,
    },
    {
      name: "cgroup with a quote",
      spec: { ...base, subjects: { ...base.subjects, cgroups: ['a"b'] } },
      message: /not a cgroup path/,
    },
    {
      name: "interface with a quote",
      spec: { ...base, subjects: { ...base.subjects, interfaces: ['br0"'] } },
      message: /not an interface name/,
    },
    {
      name: "user name instead of uid",
      spec: { ...base, subjects: { ...base.subjects, users: ["ci" as unknown as number] } },
      message: /resolve user names/,
    },
    { name: "port 0", spec: { ...base, ports: { http: [0], https: [] } }, message: /not a port/ },
  ];
  for (const c of cases) {
    const e = assertThrows(() => renderNft(c.spec), EnforceSpecError);
    assertMatch(e.message, c.message, c.name);
  }
});

Deno.test("renderNft() keeps quotes in rule sources out of the ruleset", () => {
  assertStringIncludes(
    renderNft(base),
    `ip daddr 203.0.113.7 accept comment "network.allow[3] 203.0.113.7 'quoted'"`,
  );
});

Deno.test("cidrAllowsFromPolicy() takes CIDR and IP rules without methods or paths", () => {
  const { compiled } = loadPolicyText(
    `version: 1
network:
  allow:
    - api.example.com:22
    - 203.0.113.7
    - 10.20.0.0/16:5432
    - "[2001:db8::1]:8443"
    - "GET 198.51.100.1/x"
  deny:
    - 169.254.169.254
    - "*.internal.example.com"
`,
    "p.yaml",
  );
  const show = (rs: ReturnType<typeof cidrAllowsFromPolicy>) =>
    rs.map((r) => ({ cidr: r.cidr.text, ports: r.ports, source: r.source }));
  assertEquals(show(cidrAllowsFromPolicy(compiled.policy)), [
    { cidr: "203.0.113.7/32", ports: null, source: "network.allow[1] 203.0.113.7" },
    { cidr: "10.20.0.0/16", ports: [5432], source: "network.allow[2] 10.20.0.0/16:5432" },
    { cidr: "2001:db8::1/128", ports: [8443], source: "network.allow[3] [2001:db8::1]:8443" },
  ]);
  assertEquals(show(cidrDeniesFromPolicy(compiled.policy)), [
    { cidr: "169.254.169.254/32", ports: null, source: "network.deny[0] 169.254.169.254" },
  ]);
  const spec = specFromPolicy(compiled.policy, {
    uids: [1001],
    redirect: { https: 15443, http: 15080, dns: 15053 },
  });
  assertEquals(spec.dnsMode, "proxy");
  assertStringIncludes(
    renderNft(spec),
    "ip6 daddr 2001:db8::1 meta l4proto { tcp, udp } th dport 8443 accept",
  );
});

Deno.test("renderAddElements() adds, deletes and re-adds each element so its timeout is refreshed", () => {
  const text = renderAddElements("sluice", [
    { ip: "2001:DB8::1", port: 22, timeoutSec: 60 },
    { ip: "140.82.112.3", port: 22, timeoutSec: 300 },
    { ip: "140.82.112.3", port: 22, timeoutSec: 100 },
    { ip: "1.2.3.4", port: 443, timeoutSec: 5 },
  ]);
  assertEquals(
    text,
    [
      "add element inet sluice sluice_allow4 { 1.2.3.4 . 443 timeout 5s, 140.82.112.3 . 22 timeout 300s }",
      "delete element inet sluice sluice_allow4 { 1.2.3.4 . 443, 140.82.112.3 . 22 }",
      "add element inet sluice sluice_allow4 { 1.2.3.4 . 443 timeout 5s, 140.82.112.3 . 22 timeout 300s }",
      "add element inet sluice sluice_allow6 { 2001:db8::1 . 22 timeout 60s }",
      "delete element inet sluice sluice_allow6 { 2001:db8::1 . 22 }",
      "add element inet sluice sluice_allow6 { 2001:db8::1 . 22 timeout 60s }",
      "",
    ].join("\n"),
  );
  assertEquals(renderAddElements("sluice", []), "");
  assertThrows(
    () => renderAddElements("sluice", [{ ip: "github.com", port: 22, timeoutSec: 1 }]),
    EnforceSpecError,
  );
  assertThrows(
    () => renderAddElements("sluice", [{ ip: "1.2.3.4", port: 22, timeoutSec: 0 }]),
    EnforceSpecError,
  );
});

// nft -c needs CAP_NET_ADMIN: check every snapshot as root, in a namespace this test creates.
Deno.test({
  name: "renderNft() snapshots are accepted by nft -c",
  ignore: Deno.uid() !== 0,
  async fn() {
    const ns = `sluice-nfc-${crypto.randomUUID().slice(0, 8)}`;
    const prefix = await detectCgroupPrefix();
    assert(prefix !== undefined, "no cgroup2 mounted under /sys/fs/cgroup");
    // nft resolves cgroup paths when it loads a rule: give the snapshots' cgroup a real, unique twin.
    const top = `sluice-nfc-${crypto.randomUUID().slice(0, 8)}.slice`;
    const cgroupDir = `/sys/fs/cgroup/${prefix ? prefix + "/" : ""}${top}`;
    await run(["ip", "netns", "add", ns]);
    try {
      await Deno.mkdir(`${cgroupDir}/build.service`, { recursive: true });
      for (const c of CASES) {
        const text = (await Deno.readTextFile(new URL(`${c.name}.nft`, FIXTURES)))
          .replaceAll(`"${CGROUP}"`, `"${prefix ? prefix + "/" : ""}${top}/build.service"`);
        await checkNft(text, { netns: ns }).catch((e) => {
          throw new Error(`${c.name}.nft: ${e.message}`);
        });
      }
    } finally {
      await Deno.remove(`${cgroupDir}/build.service`).catch(() => {});
      await Deno.remove(cgroupDir).catch(() => {});
      await run(["ip", "netns", "del", ns]);
    }
  },
});

async function run(argv: string[]): Promise<void> {
  const out = await new Deno.Command(argv[0], { args: argv.slice(1), stderr: "piped" }).output();
  if (!out.success) throw new Error(`${argv.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
}

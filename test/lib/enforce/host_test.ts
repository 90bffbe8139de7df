import { assert, assertEquals, assertMatch, assertThrows } from "../../_assert.ts";
import { forwardingWarning, hostSpec, type SysctlReader } from "../../../lib/enforce/host.ts";
import { renderNft } from "../../../lib/enforce/nft_render.ts";
import { EnforceSpecError } from "../../../lib/enforce/spec.ts";
import { renderIptables } from "../../../lib/enforce/iptables_render.ts";
import { loadPolicyText } from "../../../policy/load.ts";
import type { Policy } from "../../../policy/types.ts";

function policy(text: string): Policy {
  return loadPolicyText(`version: 1\n${text}`, "p.yaml").compiled.policy;
}

const PORTS = { https: 15443, http: 15080, dns: 15053, proxy: 3128 };

Deno.test("hostSpec() for sluice as root confining a cgroup exempts no uid, in either backend", async () => {
  const p = policy(`network: { allow: [] }
enforce:
  subjects: { cgroups: [sluice-hg.slice/build.service] }
`);
  const spec = await hostSpec(p, PORTS, {
    self: { uid: 0, cgroup: "system.slice/sluice.service" },
  });
  const nft = renderNft(spec);
  assert(!nft.includes("skuid"), nft);
  assertMatch(nft, /socket cgroupv2 level 2 "(\w+\/)?sluice-hg\.slice\/build\.service"/);
  const ipt = renderIptables(spec);
  assert(![...ipt.v4, ...ipt.v6].some((a) => a.includes("--uid-owner")));
});

Deno.test("hostSpec() with sluice inside a subject cgroup, or as a subject uid, is refused", async () => {
  const p = policy(`network: { allow: [] }
enforce:
  subjects: { cgroups: [system.slice], users: [0] }
`);
  const inCgroup = await hostSpec(p, PORTS, { self: { uid: 1, cgroup: "system.slice/x.service" } });
  assertMatch(
    assertThrows(() => renderNft(inCgroup), EnforceSpecError).message,
    /sluice itself runs in cgroup "system\.slice\/x\.service", inside the subject "system\.slice"/,
  );
  const asRoot = await hostSpec(p, PORTS, { self: { uid: 0, cgroup: "" } });
  assertMatch(
    assertThrows(() => renderNft(asRoot), EnforceSpecError).message,
    /sluice itself runs as uid 0, a subject/,
  );
});

/** A reader answering from a table of /proc/sys files; other paths cannot be read. */
function sysctl(values: Record<string, string>): SysctlReader & { asked: string[] } {
  const asked: string[] = [];
  return Object.assign((path: string) => {
    asked.push(path);
    return values[path];
  }, { asked });
}

const V4 = "/proc/sys/net/ipv4/ip_forward";
const V6 = "/proc/sys/net/ipv6/conf/all/forwarding";

Deno.test("forwardingWarning() names what a gateway without ip_forward drops, and the fix", () => {
  const p = policy(`network:
  allow: [api.example.com, "10.20.0.0/16:5432", "ssh.example.com:22"]
enforce:
  subjects: { interfaces: [br0] }
  other: allow
`);
  const w = forwardingWarning(p, sysctl({ [V4]: "0" }));
  assert(w !== undefined);
  assertMatch(w, /net\.ipv4\.ip_forward = 0/);
  assertMatch(w, /network\.allow\[1\] 10\.20\.0\.0\/16:5432/);
  assertMatch(w, /network\.allow\[2\] ssh\.example\.com:22/);
  assertMatch(w, /enforce\.other: allow/);
  assertMatch(w, /sysctl -w net\.ipv4\.ip_forward=1 /);
  assert(!w.includes("api.example.com"), "web traffic goes through sluice, not forwarding");
  assert(!w.includes("ipv6"), w);
  assertEquals(forwardingWarning(p, sysctl({ [V4]: "1" })), undefined);
  // When the setting cannot be read, nothing is claimed.
  assertEquals(forwardingWarning(p, sysctl({})), undefined);
});

Deno.test("forwardingWarning() checks IPv6 only for IPv6 CIDRs, and says nothing when nothing is forwarded", () => {
  const v6 = policy(`network:
  allow: ["2001:db8::/32"]
enforce:
  subjects: { interfaces: [br0] }
`);
  const w = forwardingWarning(v6, sysctl({ [V4]: "0", [V6]: "0" }));
  assertMatch(w ?? "", /\(net\.ipv6\.conf\.all\.forwarding = 0\)/);
  assertMatch(w ?? "", /sysctl -w net\.ipv6\.conf\.all\.forwarding=1 /);
  assertMatch(w ?? "", /network\.allow\[0\] 2001:db8::\/32/);

  const both = policy(`network:
  allow: ["2001:db8::/32", 10.0.0.0/8]
enforce:
  subjects: { interfaces: [br0] }
  dns: allow
`);
  assertMatch(
    forwardingWarning(both, sysctl({ [V4]: "0", [V6]: "0" })) ?? "",
    /sysctl -w net\.ipv4\.ip_forward=1 net\.ipv6\.conf\.all\.forwarding=1 .*/,
  );

  // Only web traffic and DNS through sluice: nothing is forwarded, nothing is read.
  const webOnly = policy(`network:
  allow: [api.example.com]
enforce:
  subjects: { interfaces: [br0] }
  dns: proxy
`);
  const reader = sysctl({ [V4]: "0", [V6]: "0" });
  assertEquals(forwardingWarning(webOnly, reader), undefined);
  assertEquals(reader.asked, []);
  // Host mode forwards nothing.
  const host = policy(`network:\n  allow: [10.0.0.0/8]\nenforce:\n  subjects: { users: [1001] }\n`);
  assertEquals(forwardingWarning(host, sysctl({ [V4]: "0" })), undefined);
});

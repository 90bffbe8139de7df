import { assert, assertEquals, assertStringIncludes, assertThrows } from "../../_assert.ts";
import {
  iptablesChains,
  iptablesScript,
  renderIptables,
  renderIptablesRemove,
} from "../../../lib/enforce/iptables_render.ts";
import { type EnforceSpec, EnforceSpecError } from "../../../lib/enforce/spec.ts";
import {
  applyIptables,
  detectCgroupPrefix,
  removeIptables,
} from "../../../lib/enforce/netfilter.ts";
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
  Deno.test(`renderIptables() matches the snapshot for ${c.name}`, async () => {
    await snapshot(`${c.name}.iptables.sh`, iptablesScript(renderIptables(c.spec)));
  });
}

Deno.test("renderIptablesRemove() matches the snapshot", async () => {
  await snapshot("remove.iptables.sh", iptablesScript(renderIptablesRemove("sluice")));
});

const full: EnforceSpec = CASES.find((c) => c.name === "full")!.spec;
const join = (cmds: string[][]) => cmds.map((a) => a.join(" "));

Deno.test("renderIptables() puts each CIDR rule only in its own family", () => {
  const { v4, v6 } = renderIptables(full);
  assert(join(v4).some((l) => l.includes("-d 10.20.0.0/16 -p tcp --dport 5432")));
  assert(!join(v6).some((l) => l.includes("10.20.0.0/16")));
  assert(join(v6).some((l) => l.includes("-d 2001:db8::/32")));
  assert(!join(v4).some((l) => l.includes("2001:db8::/32")));
  assert(
    join(v6).some((l) => l.includes("-d ::1/128 -p tcp -m multiport --dports 3128,15080,15443")),
  );
});

Deno.test("renderIptables() hooks the built-in chains only after sluice's chains are filled", () => {
  for (const cmds of Object.values(renderIptables(full))) {
    const firstHook = cmds.findIndex((a) => a.includes("-I"));
    assert(firstHook > 0);
    assert(cmds.slice(firstHook).every((a) => a.includes("-I")), "a rule after the hooks");
    assertEquals(join(cmds.slice(firstHook)), [
      "-t nat -I OUTPUT 1 -j SLUICE-NAT-OUT",
      "-I OUTPUT 1 -j SLUICE-OUT",
      "-t nat -I PREROUTING 1 -j SLUICE-NAT-PRE",
      "-I FORWARD 1 -j SLUICE-FWD",
      "-I INPUT 1 -j SLUICE-IN",
    ]);
  }
});

Deno.test("renderIptables() returns instead of accepting, so the host's own rules still apply", () => {
  const all = [...renderIptables(full).v4, ...renderIptables(full).v6];
  assert(!all.some((a) => a.includes("ACCEPT")));
  assert(all.some((a) => a.at(-1) === "RETURN"));
});

Deno.test("renderIptables() never exempts sluice's uid, so root in a subject cgroup is confined", () => {
  const { v4, v6 } = renderIptables({
    ...full,
    subjects: { users: [], cgroups: [CGROUP], interfaces: [] },
    self: { uid: 0, cgroup: "system.slice/sluice.service" },
  });
  for (const cmds of [v4, v6]) {
    assert(!cmds.some((a) => a.includes("--uid-owner")), join(cmds).join("\n"));
    const out = join(cmds.filter((a) => a[0] === "-A" && a[1] === "SLUICE-OUT"));
    assertEquals(out.length, 2);
    assertStringIncludes(out[0], "-m mark --mark 0x5c");
    assertStringIncludes(out[1], `-m cgroup --path ${CGROUP} `);
  }
});

Deno.test("renderIptables() splits more than 15 ports over several multiport rules", () => {
  const https = Array.from({ length: 20 }, (_, i) => 8400 + i);
  const { v4 } = renderIptables({ ...full, ports: { http: [], https } });
  const redirects = join(v4).filter((l) => l.includes("REDIRECT --to-ports 15443"));
  assertEquals(redirects.length, 2);
  assertStringIncludes(redirects[0], `--dports ${https.slice(0, 15).join(",")}`);
  assertStringIncludes(redirects[1], `--dports ${https.slice(15).join(",")}`);
});

Deno.test("renderIptables() renders nothing without subjects, and rejects what renderNft rejects", () => {
  assertEquals(
    renderIptables({ ...full, subjects: { users: [], cgroups: [], interfaces: [] } }),
    { v4: [], v6: [] },
  );
  assertThrows(() => renderIptables({ ...full, self: { uid: 1001 } }), EnforceSpecError);
  assertThrows(
    () => renderIptables({ ...full, self: { cgroup: `${CGROUP}/inner` } }),
    EnforceSpecError,
  );
  assertThrows(() => iptablesChains("a-much-too-long-table-name"), EnforceSpecError);
});

// As root, in a namespace this test creates: the rendered rules apply cleanly and remove completely.
Deno.test({
  name: "renderIptables() output applies and removes cleanly with iptables in a namespace",
  ignore: Deno.uid() !== 0,
  async fn() {
    const ns = `sluice-ipt-${crypto.randomUUID().slice(0, 8)}`;
    const prefix = await detectCgroupPrefix();
    assert(prefix !== undefined, "no cgroup2 mounted under /sys/fs/cgroup");
    // The kernel resolves `-m cgroup --path` when the rule is added: use a real, unique cgroup.
    const top = `sluice-ipt-${crypto.randomUUID().slice(0, 8)}.slice`;
    const dir = `/sys/fs/cgroup/${prefix ? prefix + "/" : ""}${top}`;
    await run(["ip", "netns", "add", ns]);
    try {
      await Deno.mkdir(`${dir}/build.service`, { recursive: true });
      const save = async () =>
        (await run(["nsenter", `--net=/run/netns/${ns}`, "iptables-save"])) +
        (await run(["nsenter", `--net=/run/netns/${ns}`, "ip6tables-save"]));
      // Each command is a process: the cases that between them hold every rule shape keep this fast.
      const shapes = ["full", "combined-dns_allow-other_allow", "combined-dns_block-other_drop"];
      for (const c of CASES.filter((c) => shapes.includes(c.name))) {
        const spec = {
          ...c.spec,
          subjects: {
            ...c.spec.subjects,
            cgroups: c.spec.subjects.cgroups.map((g) => g.replace(CGROUP, `${top}/build.service`)),
          },
        };
        await applyIptables("sluice", renderIptables(spec), { netns: ns }).catch((e) => {
          throw new Error(`${c.name}: ${e.message}`);
        });
        // Applying again replaces rather than duplicates.
        await applyIptables("sluice", renderIptables(spec), { netns: ns });
        const saved = await save();
        const rules = renderIptables(spec);
        const hooks = [...rules.v4, ...rules.v6].filter((a) => a.includes("-I")).length;
        assert(hooks > 0);
        const hooked = saved.match(/^-A (OUTPUT|PREROUTING|FORWARD|INPUT) -j SLUICE-/gm);
        assertEquals(hooked?.length, hooks, `${c.name}: each hook exactly once`);
        assertStringIncludes(saved, "-A SLUICE-DROP -j DROP", c.name);
        await removeIptables("sluice", { netns: ns });
        assert(!(await save()).includes("SLUICE"), `${c.name}: chains left after remove`);
      }
    } finally {
      await Deno.remove(`${dir}/build.service`).catch(() => {});
      await Deno.remove(dir).catch(() => {});
      await run(["ip", "netns", "del", ns]);
    }
  },
});

async function run(argv: string[]): Promise<string> {
  const out = await new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const dec = new TextDecoder();
  if (!out.success) throw new Error(`${argv.join(" ")}: ${dec.decode(out.stderr)}`);
  return dec.decode(out.stdout);
}

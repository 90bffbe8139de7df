/**
 * Every netfilter renderer over one verdict table (test/fixtures/netfilter/verdicts.ts): nft and
 * iptables in host mode (the subject is uid 65534) and `sluice run`'s namespace ruleset (every
 * process in the namespace is the subject). As root only, each case in a namespace it creates.
 */
import { assertEquals } from "../../_assert.ts";
import { applyNft, enforce } from "../../../lib/enforce/netfilter.ts";
import type { EnforceSpec } from "../../../lib/enforce/spec.ts";
import { renderNamespaceRules, runNet } from "../../../lib/run/namespace.ts";
import type { Policy } from "../../../policy/types.ts";
import { denoRunner } from "../../../lib/ops/command.ts";
import { type VerdictCase, VERDICTS } from "../../fixtures/netfilter/verdicts.ts";

const IS_ROOT = Deno.uid() === 0;

async function must(argv: string[]): Promise<string> {
  const r = await denoRunner(argv);
  if (r.code !== 0) throw new Error(`${argv.join(" ")} failed: ${r.stderr}`);
  return r.stdout;
}

/** A namespace whose test ranges route out of a veth that leads nowhere, deleted on dispose. */
async function namespace(): Promise<{ name: string; exec: string[] } & AsyncDisposable> {
  const name = `sluice-vd-${crypto.randomUUID().slice(0, 8)}`;
  await must(["ip", "netns", "add", name]);
  const ip = ["ip", "-n", name];
  try {
    await must([...ip, "link", "set", "lo", "up"]);
    await must([...ip, "link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    await must([...ip, "addr", "add", "10.99.0.1/30", "dev", "v0"]);
    await must([...ip, "addr", "add", "fd00:99::1/64", "dev", "v0", "nodad"]);
    await must([...ip, "link", "set", "v1", "up"]);
    await must([...ip, "link", "set", "v0", "up"]);
    await must([...ip, "route", "add", "192.0.2.0/24", "dev", "v0"]);
    await must([...ip, "-6", "route", "add", "2001:db8::/32", "dev", "v0"]);
  } catch (e) {
    await must(["ip", "netns", "del", name]);
    throw e;
  }
  return {
    name,
    exec: ["nsenter", `--net=/run/netns/${name}`],
    [Symbol.asyncDispose]: async () => void await must(["ip", "netns", "del", name]),
  };
}

/** The spec a host-mode renderer gets for a case: uid 65534 is the subject. */
function hostSpec(c: VerdictCase): EnforceSpec {
  return {
    table: "sluice_vd",
    subjects: { users: [65534], cgroups: [], interfaces: [] },
    ports: { http: [80], https: [443] },
    redirect: { https: 15443, http: 15080 },
    dnsMode: "allow",
    other: c.other,
    allowCidrs: c.allow,
    denyCidrs: c.deny,
  };
}

/** How each renderer's ruleset is put into a namespace. */
const RENDERERS: Record<string, (c: VerdictCase, netns: string) => Promise<unknown>> = {
  nft: (c, netns) => enforce(hostSpec(c), { backend: "nftables", netns }),
  iptables: (c, netns) => enforce(hostSpec(c), { backend: "iptables", netns }),
  "run namespace": (c, netns) => {
    const enforceSection: Policy["enforce"] = {
      backend: "auto",
      subjects: { users: [], cgroups: [], interfaces: [] },
      ports: { http: [80], https: [443] },
      dns: "allow",
      other: c.other,
    };
    const ports = { proxy: 4000, https: 4001, http: 4002, dns: 4003 };
    const text = renderNamespaceRules(runNet(4242), ports, enforceSection, c.allow, c.deny);
    return applyNft(text, { netns });
  },
};

/** Whether a datagram from uid 65534 gets past the namespace's output hooks. */
async function sends(ns: { exec: string[] }, ip: string, port: number): Promise<boolean> {
  const r = await denoRunner([
    ...ns.exec,
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "bash",
    "-c",
    `echo probe > /dev/udp/${ip}/${port}`,
  ]);
  return r.code === 0;
}

for (const [renderer, apply] of Object.entries(RENDERERS)) {
  Deno.test({
    name: `${renderer}: the shared verdict table`,
    ignore: !IS_ROOT,
    async fn(t) {
      for (const c of VERDICTS) {
        await t.step(c.name, async () => {
          await using ns = await namespace();
          await apply(c, ns.name);
          const got = [];
          for (const p of c.probes) {
            got.push({ ...p, expect: (await sends(ns, p.ip, p.port)) ? "accept" : "drop" });
          }
          assertEquals(got, c.probes);
        });
      }
    },
  });
}

/**
 * From a policy to netfilter rules on this host: the glue between the pure
 * renderers (nft_render.ts, iptables_render.ts) and `sluice rules` /
 * `sluice serve --enforce`. Rules live in one sluice-owned table, applied
 * atomically, replaced on reload, removed on exit.
 *
 * @module
 */
import type { Policy } from "../../policy/types.ts";
import { iptablesScript, renderIptables } from "./iptables_render.ts";
import {
  type Backend,
  detectBackend,
  detectCgroupPrefix,
  enforce,
  type Enforcement,
  ownCgroup,
  removeIptables,
  removeNft,
  resolveUids,
} from "./netfilter.ts";
import { type HostSetEntry, renderNft } from "./nft_render.ts";
import {
  cidrAllowsFromPolicy,
  type EnforceSpec,
  HOST_SETS,
  type SelfIdentity,
  specFromPolicy,
} from "./spec.ts";
import type { Ip } from "../../policy/address.ts";
import { hostMatches } from "../../policy/host.ts";

/** Where the transparent and DNS listeners are, for the redirect rules. */
export type RedirectPorts = { https: number; http: number; dns?: number; proxy?: number };

/** Default listener ports when enforcing and the policy does not set them. */
export const DEFAULT_REDIRECT: RedirectPorts = { https: 15443, http: 15080, dns: 15053 };

/**
 * Who this sluice process is: its uid and cgroup v2 path. Passed to
 * {@link hostSpec} by `serve --enforce`, so a policy whose subjects would
 * include sluice itself is refused instead of looping its traffic.
 */
export async function ownIdentity(): Promise<SelfIdentity> {
  return { uid: Deno.uid() ?? undefined, cgroup: await ownCgroup() };
}

/**
 * Builds the ruleset spec for this host: users resolved to uids, the cgroup2
 * mount detected. `self` is the sluice that will serve the rules (see
 * {@link ownIdentity}); the spec is refused when it is a subject, because its
 * own upstream connections would be redirected back into it. sluice is kept
 * out of the subjects rather than exempted by a rule: exempting its uid
 * (usually root) would exempt every root process in a subject cgroup.
 */
export async function hostSpec(
  policy: Policy,
  ports: RedirectPorts,
  opts: { table?: string; self?: SelfIdentity } = {},
): Promise<EnforceSpec> {
  return specFromPolicy(policy, {
    uids: await resolveUids(policy.enforce.subjects.users),
    table: opts.table ?? "sluice",
    redirect: {
      https: ports.https,
      http: ports.http,
      dns: policy.enforce.dns === "proxy" ? ports.dns : undefined,
    },
    self: opts.self,
    loopbackPorts: ports.proxy ? [ports.proxy] : undefined,
    cgroupPrefix: policy.enforce.subjects.cgroups.length ? await detectCgroupPrefix() : undefined,
    hostSets: rawHostRules(policy).length ? HOST_SETS : undefined,
  });
}

/**
 * Allow rules that name a host with ports the proxy does not carry
 * (`github.com:22`): netfilter cannot match names, so the addresses sluice's
 * DNS answers for them are added to address sets, with a timeout.
 */
export function rawHostRules(
  policy: Pick<Policy, "network" | "enforce">,
): { pattern: import("../../policy/host.ts").HostPattern; ports: number[]; source: string }[] {
  const web = new Set([...policy.enforce.ports.http, ...policy.enforce.ports.https]);
  const out = [];
  for (const r of policy.network.allow) {
    if (r.target.kind !== "host" || !r.ports || r.methods || r.paths) continue;
    const ports = r.ports.filter((p) => !web.has(p));
    if (ports.length) {
      out.push({
        pattern: r.target.pattern,
        ports,
        source: `network.${r.list}[${r.index}] ${r.source}`,
      });
    }
  }
  return out;
}

/** Set elements for addresses resolved for `name` (pure). */
export function hostSetEntries(
  policy: Policy,
  name: string,
  ips: readonly Ip[],
  timeoutSec = 300,
): HostSetEntry[] {
  const entries: HostSetEntry[] = [];
  for (const rule of rawHostRules(policy)) {
    if (!hostMatches(rule.pattern, name)) continue;
    for (const ip of ips) {
      for (const port of rule.ports) entries.push({ ip: ip.text, port, timeoutSec });
    }
  }
  return entries;
}

/** Reads a file under /proc/sys; undefined when it cannot be read. Injectable for tests. */
export type SysctlReader = (path: string) => string | undefined;

/** The default {@link SysctlReader}: the file's trimmed text. */
export const readSysctl: SysctlReader = (path) => {
  try {
    return Deno.readTextFileSync(path).trim();
  } catch {
    return undefined;
  }
};

const FORWARDING = {
  4: { file: "/proc/sys/net/ipv4/ip_forward", key: "net.ipv4.ip_forward" },
  6: { file: "/proc/sys/net/ipv6/conf/all/forwarding", key: "net.ipv6.conf.all.forwarding" },
} as const;

/**
 * In gateway mode, what the rules let through without the proxy (CIDR and IP
 * allows, host rules with raw ports, `enforce.dns: allow`, `enforce.other:
 * allow`) is routed by this host, which drops it while forwarding is off.
 * sluice does not change host sysctls itself; this returns one warning that
 * says what will not work and the command that fixes it, or undefined when
 * nothing needs forwarding, forwarding is on, or the setting cannot be read.
 * IPv6 forwarding is checked only when the policy allows IPv6 CIDRs.
 */
export function forwardingWarning(
  policy: Pick<Policy, "network" | "enforce">,
  read: SysctlReader = readSysctl,
): string | undefined {
  if (!policy.enforce.subjects.interfaces.length) return undefined;
  const cidrs = cidrAllowsFromPolicy(policy);
  const needs: Record<4 | 6, string[]> = {
    4: [
      ...cidrs.filter((r) => r.cidr.family === 4).map((r) => r.source ?? r.cidr.text),
      ...rawHostRules(policy).map((r) => r.source),
      ...(policy.enforce.dns === "allow" ? ["enforce.dns: allow"] : []),
      ...(policy.enforce.other === "allow" ? ["enforce.other: allow"] : []),
    ],
    6: cidrs.filter((r) => r.cidr.family === 6).map((r) => r.source ?? r.cidr.text),
  };
  const off = ([4, 6] as const).filter((f) => needs[f].length && read(FORWARDING[f].file) === "0");
  if (!off.length) return undefined;
  const what = [...new Set(off.flatMap((f) => needs[f]))];
  const shown = what.length > 4 ? [...what.slice(0, 3), `and ${what.length - 3} more`] : what;
  return `sluice: warning: forwarding is off on this gateway (${
    off.map((f) => `${FORWARDING[f].key} = 0`).join(", ")
  }), so guests' traffic that the policy lets through without the proxy is dropped here and their connections time out: ${
    shown.join(", ")
  }. HTTPS, HTTP and DNS through sluice are not affected. sluice does not change host sysctls; to forward, run: sysctl -w ${
    off.map((f) => `${FORWARDING[f].key}=1`).join(" ")
  } (and set it in /etc/sysctl.d/ to keep it after a reboot)`;
}

/** The rules as text, for `sluice rules` without flags. */
export function renderRules(spec: EnforceSpec, backend: Backend): string {
  if (backend === "iptables") return iptablesScript(renderIptables(spec));
  if (backend === "none") return "# enforce.backend is none: sluice applies no rules\n";
  return renderNft(spec);
}

/** Applies the rules (replacing a stale table from a crashed run). */
export async function applyRules(
  spec: EnforceSpec,
  backend: Backend,
): Promise<Enforcement | undefined> {
  if (backend === "none") return undefined;
  return await enforce(spec, { backend });
}

/** Removes sluice's table, tolerating its absence. */
export async function removeRules(table: string, backend: Backend): Promise<void> {
  if (backend === "nftables") await removeNft(table);
  else if (backend === "iptables") await removeIptables(table);
}

export { detectBackend };

/**
 * From a policy to netfilter rules on this host: the glue between the pure
 * renderers (nft_render.ts, iptables_render.ts) and `sluice rules` /
 * `sluice serve --enforce`. Rules live in one sluice-owned table, applied
 * atomically, replaced on reload, removed on exit.
 *
 * @module
 */
import type { Policy } from "../policy/types.ts";
import { iptablesScript, renderIptables } from "./iptables_render.ts";
import {
  type Backend,
  detectBackend,
  detectCgroupPrefix,
  enforce,
  type Enforcement,
  removeIptables,
  removeNft,
  resolveUids,
} from "./netfilter.ts";
import {
  type EnforceSpec,
  HOST_SETS,
  type HostSetEntry,
  renderNft,
  specFromPolicy,
} from "./nft_render.ts";
import type { Ip } from "../policy/address.ts";
import { hostMatches } from "../policy/host.ts";

/** Where the transparent and DNS listeners are, for the redirect rules. */
export type RedirectPorts = { https: number; http: number; dns?: number; proxy?: number };

/** Default listener ports when enforcing and the policy does not set them. */
export const DEFAULT_REDIRECT: RedirectPorts = { https: 15443, http: 15080, dns: 15053 };

/**
 * Builds the ruleset spec for this host: users resolved to uids, sluice's own
 * uid exempt (its upstream connections must never be redirected to itself),
 * the cgroup2 mount detected.
 */
export async function hostSpec(
  policy: Policy,
  ports: RedirectPorts,
  table = "sluice",
): Promise<EnforceSpec> {
  const uids = await resolveUids(policy.enforce.subjects.users);
  const self = Deno.uid() ?? undefined;
  return specFromPolicy(policy, {
    uids,
    table,
    redirect: {
      https: ports.https,
      http: ports.http,
      dns: policy.enforce.dns === "proxy" ? ports.dns : undefined,
    },
    // When sluice's own user is not a subject its sockets never match; when
    // it is (e.g. root confining root's cgroup), exempting its uid keeps its
    // upstream traffic out of the redirect.
    exemptUid: self !== undefined && !uids.includes(self) ? self : undefined,
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
  policy: Policy,
): { pattern: import("../policy/host.ts").HostPattern; ports: number[] }[] {
  const web = new Set([...policy.enforce.ports.http, ...policy.enforce.ports.https]);
  const out = [];
  for (const r of policy.network.allow) {
    if (r.target.kind !== "host" || !r.ports || r.methods || r.paths) continue;
    const ports = r.ports.filter((p) => !web.has(p));
    if (ports.length) out.push({ pattern: r.target.pattern, ports });
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

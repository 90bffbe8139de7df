/**
 * The enforcement model that every netfilter renderer reads: {@link EnforceSpec} (who is a
 * subject, which ports are redirected, what `other` and `dns` do, the CIDR allows and denies),
 * its validation ({@link normalizeSpec}) and how a policy becomes one ({@link specFromPolicy},
 * {@link cidrAllowsFromPolicy}, {@link cidrDeniesFromPolicy}). PURE: no Deno.*, no I/O.
 *
 * The renderers are `nft_render.ts` (nftables text), `iptables_render.ts` (iptables argv) and
 * `lib/run/namespace.ts` (the rulesets of `sluice run`); they start from the same spec, so they
 * reject the same specs and allow the same CIDRs.
 *
 * Not looping sluice's own upstream traffic back into sluice: sluice is never a subject. Its
 * sockets carry its uid and its cgroup, so they match no subject rule as long as its uid is not
 * in `users` and its cgroup is neither a subject cgroup nor inside one; `self` names that
 * identity and {@link normalizeSpec} refuses a spec that breaks either condition.
 *
 * @module
 */
import type { Cidr } from "../../policy/address.ts";
import { parseCidr } from "../../policy/address.ts";
import type { NetRule, Policy } from "../../policy/types.ts";

/** A CIDR (or single IP) the subjects may, or may not, reach with raw TCP/UDP. */
export type CidrRule = {
  cidr: Cidr;
  /** Null means every port and protocol (ICMP included). */
  ports: readonly number[] | null;
  /** Where the rule comes from, e.g. `network.allow[6] 10.20.0.0/16:5432`; becomes a rule comment. */
  source?: string;
};

/** A named nft set of `ip . port` elements with timeouts, filled at run time. */
export type HostSet = { name: string; family: 4 | 6 };

/** The default host-set names that {@link renderAddElements} fills. */
export const HOST_SETS: readonly HostSet[] = [
  { name: "sluice_allow4", family: 4 },
  { name: "sluice_allow6", family: 6 },
];

/** Everything the renderers need. Users are uids: resolve names first (`resolveUids`). */
export type EnforceSpec = {
  /** The nft table (`inet <table>`), and the prefix of the iptables chains. Default "sluice". */
  table: string;
  subjects: {
    users: readonly number[];
    /** cgroup v2 paths relative to the cgroup2 root, e.g. `system.slice/build.service`. */
    cgroups: readonly string[];
    interfaces: readonly string[];
  };
  ports: { http: readonly number[]; https: readonly number[] };
  /** Ports of sluice's transparent listeners (and its DNS listener) on this host. */
  redirect: { https: number; http: number; dns?: number };
  dnsMode: "proxy" | "allow" | "block";
  other: "drop" | "allow";
  allowCidrs: readonly CidrRule[];
  /** CIDR/IP deny rules: dropped before any allow, as in the policy. */
  denyCidrs?: readonly CidrRule[];
  /** More loopback TCP ports subjects may reach, e.g. sluice's explicit proxy port. */
  loopbackPorts?: readonly number[];
  /**
   * The sluice process that serves these rules: its uid and its cgroup v2
   * path ("" for the root cgroup). Never rendered; a spec whose subjects
   * would include it is refused, because its own upstream connections would
   * be redirected back into it.
   */
  self?: SelfIdentity;
  /** A fwmark on sluice's sockets: packets carrying it are never redirected nor filtered. */
  exemptMark?: number;
  /** Named sets for host rules with non-HTTP ports (e.g. github.com:22), nft only. */
  hostSets?: readonly HostSet[];
  /**
   * nft resolves cgroup paths under /sys/fs/cgroup, but on hybrid hosts the
   * cgroup2 root is mounted at /sys/fs/cgroup/unified: then this is "unified"
   * (see `detectCgroupPrefix`). It changes the path nft reads, not the level.
   */
  cgroupPrefix?: string;
};

/** Who sluice runs as, to keep it out of the subjects (see {@link EnforceSpec.self}). */
export type SelfIdentity = { uid?: number; cgroup?: string };

/** An {@link EnforceSpec} that cannot be rendered. */
export class EnforceSpecError extends Error {
  override name = "EnforceSpecError";
}

/** What a subject's packet is matched with, in both renderers. */
export type Subject =
  | { kind: "user"; uids: number[] }
  | { kind: "cgroup"; path: string; level: number }
  | { kind: "interface"; names: string[] };

/** A spec after validation: sorted, deduplicated, with defaults filled. */
export type NormalizedSpec = {
  table: string;
  users: number[];
  cgroups: { path: string; level: number }[];
  interfaces: string[];
  http: number[];
  https: number[];
  redirect: { https: number; http: number; dns?: number };
  dnsMode: "proxy" | "allow" | "block";
  other: "drop" | "allow";
  allow: CidrRule[];
  deny: CidrRule[];
  loopbackPorts: number[];
  exemptMark?: number;
  hostSets: HostSet[];
  cgroupPrefix: string;
};

const TABLE_RE = /^[A-Za-z][A-Za-z0-9_]{0,19}$/;
const IFNAME_RE = /^[A-Za-z0-9_.:@-]{1,15}$/;
const SET_RE = /^[A-Za-z][A-Za-z0-9_]{0,30}$/;

/**
 * Throws unless `p` is a port (1 to 65535).
 *
 * @throws {EnforceSpecError} naming `what`
 */
export function checkPort(what: string, p: number): number {
  if (!Number.isInteger(p) || p < 1 || p > 65535) {
    throw new EnforceSpecError(`${what}: ${p} is not a port; use 1 to 65535`);
  }
  return p;
}

function sortedPorts(what: string, ports: readonly number[]): number[] {
  return [...new Set(ports.map((p) => checkPort(what, p)))].sort((a, b) => a - b);
}

function checkUid(what: string, uid: number): number {
  if (!Number.isInteger(uid) || uid < 0 || uid > 0xfffffffe) {
    throw new EnforceSpecError(
      `${what}: ${JSON.stringify(uid)} is not a uid; resolve user names to numeric uids first`,
    );
  }
  return uid;
}

function cidrKey(r: CidrRule): string {
  const bytes = [...r.cidr.bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  const ports = r.ports === null ? "*" : r.ports.map((p) => String(p).padStart(5, "0")).join(",");
  return `${r.cidr.family}|${bytes}|${String(r.cidr.prefix).padStart(3, "0")}|${ports}`;
}

function normalizeCidrs(what: string, rules: readonly CidrRule[]): CidrRule[] {
  const byKey = new Map<string, CidrRule>();
  for (const r of rules) {
    if (r.cidr.family !== 4 && r.cidr.family !== 6) {
      throw new EnforceSpecError(`${what}: ${r.cidr.text} has no address family`);
    }
    const ports = r.ports === null ? null : sortedPorts(`${what} ${r.cidr.text}`, r.ports);
    if (ports !== null && ports.length === 0) continue; // an empty port list allows nothing
    const n: CidrRule = { cidr: r.cidr, ports, source: r.source };
    const key = cidrKey(n);
    // The first source wins so the comment is stable whatever else repeats the rule.
    if (!byKey.has(key)) byKey.set(key, n);
  }
  return [...byKey.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, r]) => r);
}

/**
 * Refuses a spec whose subjects include the sluice that serves it: its own
 * upstream connections would be redirected back into it (a loop) or dropped.
 */
function checkSelf(
  self: SelfIdentity | undefined,
  users: readonly number[],
  cgroups: readonly { path: string }[],
): void {
  if (self?.uid !== undefined && users.includes(self.uid)) {
    throw new EnforceSpecError(
      `enforce.subjects.users: sluice itself runs as uid ${self.uid}, a subject, so its own upstream connections would be redirected back into it; run sluice as a user that is not a subject (it needs only CAP_NET_ADMIN, e.g. AmbientCapabilities= in its unit), or remove uid ${self.uid} from the subjects`,
    );
  }
  if (self?.cgroup === undefined) return;
  const own = self.cgroup.replace(/^\/+|\/+$/g, "");
  for (const { path } of cgroups) {
    if (own !== path && !own.startsWith(`${path}/`)) continue;
    throw new EnforceSpecError(
      `enforce.subjects.cgroups: sluice itself runs in cgroup ${JSON.stringify(own)}, ${
        own === path ? "which is" : "inside"
      } the subject ${
        JSON.stringify(path)
      }, so its own upstream connections would be redirected back into it. Start sluice in a cgroup outside every subject, as a systemd unit of its own (packaging/sluice.service, or systemd-run --unit=sluice-enforce sluice serve ...), or name narrower cgroups as subjects`,
    );
  }
}

/**
 * Validates and normalizes a spec: sorted, deduplicated, defaults filled.
 * Both renderers start here, so they reject the same specs.
 *
 * @throws {EnforceSpecError} naming the offending value and what to do.
 */
export function normalizeSpec(spec: EnforceSpec): NormalizedSpec {
  const table = spec.table || "sluice";
  checkTableName(table);
  const users = [...new Set(spec.subjects.users.map((u) => checkUid("enforce.subjects.users", u)))]
    .sort((a, b) => a - b);
  const cgroups = [...new Set(spec.subjects.cgroups.map((c) => c.replace(/^\/+|\/+$/g, "")))]
    .sort().map((path) => {
      const parts = path.split("/");
      if (
        path === "" || parts.some((p) => p === "" || p === "." || p === "..") ||
        // deno-lint-ignore no-control-regex
        /["\\\x00-\x1f]/.test(path)
      ) {
        throw new EnforceSpecError(
          `enforce.subjects.cgroups: ${
            JSON.stringify(path)
          } is not a cgroup path; write it relative to the cgroup2 root, e.g. system.slice/build.service`,
        );
      }
      return { path, level: parts.length };
    });
  const interfaces = [...new Set(spec.subjects.interfaces)].sort();
  for (const name of interfaces) {
    if (!IFNAME_RE.test(name)) {
      throw new EnforceSpecError(
        `enforce.subjects.interfaces: ${JSON.stringify(name)} is not an interface name`,
      );
    }
  }
  const redirect = {
    https: checkPort("redirect.https", spec.redirect.https),
    http: checkPort("redirect.http", spec.redirect.http),
    ...(spec.redirect.dns === undefined
      ? {}
      : { dns: checkPort("redirect.dns", spec.redirect.dns) }),
  };
  if (spec.dnsMode === "proxy" && redirect.dns === undefined) {
    throw new EnforceSpecError(
      "enforce.dns is proxy but sluice has no DNS listener: set listen.dns, or enforce.dns to allow or block",
    );
  }
  checkSelf(spec.self, users, cgroups);
  if (
    spec.exemptMark !== undefined &&
    (!Number.isInteger(spec.exemptMark) || spec.exemptMark < 1 || spec.exemptMark > 0xffffffff)
  ) {
    throw new EnforceSpecError(`exemptMark: ${spec.exemptMark} is not a 32-bit fwmark`);
  }
  const hostSets = [...(spec.hostSets ?? [])].sort((a, b) => a.name < b.name ? -1 : 1);
  for (const s of hostSets) {
    if (!SET_RE.test(s.name) || (s.family !== 4 && s.family !== 6)) {
      throw new EnforceSpecError(
        `host set ${JSON.stringify(s)} needs a simple name and family 4 or 6`,
      );
    }
  }
  const cgroupPrefix = (spec.cgroupPrefix ?? "").replace(/^\/+|\/+$/g, "");
  if (/["\\]|\.\./.test(cgroupPrefix)) {
    throw new EnforceSpecError(`cgroupPrefix ${JSON.stringify(cgroupPrefix)} is not a path`);
  }
  return {
    table,
    users,
    cgroups,
    interfaces,
    http: sortedPorts("enforce.ports.http", spec.ports.http),
    https: sortedPorts("enforce.ports.https", spec.ports.https),
    redirect,
    dnsMode: spec.dnsMode,
    other: spec.other,
    allow: normalizeCidrs("allow CIDR", spec.allowCidrs),
    deny: normalizeCidrs("deny CIDR", spec.denyCidrs ?? []),
    loopbackPorts: sortedPorts("loopbackPorts", spec.loopbackPorts ?? []),
    exemptMark: spec.exemptMark,
    hostSets,
    cgroupPrefix,
  };
}

function ruleCidr(rule: NetRule): Cidr | undefined {
  // Rules with methods or paths are HTTP rules: they must never open raw access.
  if (rule.methods !== null || rule.paths !== null) return undefined;
  if (rule.target.kind === "cidr") return rule.target.cidr;
  if (rule.target.kind === "ip") {
    const ip = rule.target.ip;
    const r = parseCidr(`${ip.text}/${ip.family === 4 ? 32 : 128}`);
    return r.ok ? r.cidr : undefined;
  }
  return undefined;
}

function cidrRules(rules: readonly NetRule[]): CidrRule[] {
  const out: CidrRule[] = [];
  for (const rule of rules) {
    const cidr = ruleCidr(rule);
    if (!cidr) continue;
    out.push({
      cidr,
      ports: rule.ports,
      source: `network.${rule.list}[${rule.index}] ${rule.source}`,
    });
  }
  return out;
}

/**
 * The policy's CIDR and IP allow rules (without methods or paths) as raw
 * TCP/UDP allows. An IP literal becomes a /32 or /128.
 */
export function cidrAllowsFromPolicy(policy: Pick<Policy, "network">): CidrRule[] {
  return cidrRules(policy.network.allow);
}

/** The policy's CIDR and IP deny rules, which netfilter drops before any allow. */
export function cidrDeniesFromPolicy(policy: Pick<Policy, "network">): CidrRule[] {
  return cidrRules(policy.network.deny);
}

/**
 * Builds a spec from a policy's `enforce` section. Users must already be
 * resolved to uids (`resolveUids` in lib/enforce/netfilter.ts), in any order.
 */
export function specFromPolicy(
  policy: Pick<Policy, "network" | "enforce">,
  opts: {
    uids: readonly number[];
    redirect: EnforceSpec["redirect"];
    table?: string;
    self?: SelfIdentity;
    loopbackPorts?: readonly number[];
    hostSets?: readonly HostSet[];
    cgroupPrefix?: string;
  },
): EnforceSpec {
  const e = policy.enforce;
  return {
    table: opts.table ?? "sluice",
    subjects: { users: opts.uids, cgroups: e.subjects.cgroups, interfaces: e.subjects.interfaces },
    ports: { http: e.ports.http, https: e.ports.https },
    redirect: opts.redirect,
    dnsMode: e.dns,
    other: e.other,
    allowCidrs: cidrAllowsFromPolicy(policy),
    denyCidrs: cidrDeniesFromPolicy(policy),
    loopbackPorts: opts.loopbackPorts,
    self: opts.self,
    hostSets: opts.hostSets,
    cgroupPrefix: opts.cgroupPrefix,
  };
}

/**
 * Throws unless `table` is usable as an nft table name and iptables chain prefix.
 *
 * @throws {EnforceSpecError}
 */
export function checkTableName(table: string): void {
  if (!TABLE_RE.test(table)) {
    throw new EnforceSpecError(
      `table ${
        JSON.stringify(table)
      } is not usable: use a letter then up to 19 letters, digits or _`,
    );
  }
}

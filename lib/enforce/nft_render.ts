/**
 * The netfilter ruleset that forces subjects' traffic through sluice, rendered
 * as nftables text. PURE: no Deno.*, no I/O, so every ruleset is
 * snapshot-testable without root; `lib/enforce/netfilter.ts` applies the text.
 * The spec it renders, and the checks every renderer shares, are in
 * `lib/enforce/spec.ts`.
 *
 * One table, `inet <table>`, holds everything (IPv4 and IPv6 alike) and is
 * replaced in one transaction: `table inet T {}` + `delete table inet T` +
 * `table inet T { ... }` works whether or not the table existed, and the kernel
 * sees either the old ruleset or the new one, never a gap.
 *
 * What the ruleset does, in order:
 *
 * Host mode (subjects are local users, `meta skuid`, or cgroup v2 paths,
 * `socket cgroupv2 level N "path"`):
 * - `output_nat` (nat, hook output, priority -100): subjects' TCP to the https
 *   ports is redirected to the transparent https listener, http ports to the
 *   http listener, and DNS (udp and tcp 53) to the DNS listener when
 *   `dnsMode` is `proxy`. nat in the `inet` family needs Linux 5.2.
 * - `output_filter` (filter, hook output, priority 0) then sends subjects'
 *   packets through `output_subject` (sluice's loopback listeners) and
 *   `egress_policy` (below).
 *
 * (Chain names avoid nft keywords such as `redirect` and `egress`.)
 *
 * Gateway mode (subjects are interfaces, `iifname`: VMs or containers behind
 * a bridge): `prerouting_nat` redirects the same ports, `forward_filter`
 * sends forwarded packets through `egress_policy`, `input_filter` accepts their
 * connections to sluice's listeners. In gateway mode REDIRECT rewrites the
 * destination to the address of the incoming interface, so the listeners
 * must listen there (or on 0.0.0.0 / ::), not only on loopback. Other input
 * from those interfaces (DHCP, SSH to the host) is left to the host's own
 * firewall: sluice polices egress, not the host's services.
 *
 * `egress_policy`, shared by both modes, in order: established/related traffic is
 * accepted; deny CIDRs drop (a deny always wins); DNS is dropped
 * (`dnsMode: block`) or accepted (`allow`); CIDR/IP allow rules accept; host-set
 * elements (ip . port, added at run time) accept; UDP to the https ports
 * (QUIC) is dropped even with `other: allow`, because HTTP/3 would bypass the
 * HTTP policy (clients fall back to TCP, which is redirected); then, with
 * `other: drop`, everything else is logged (rate-limited) and dropped, counted
 * by the named counter `dropped`.
 *
 * ICMP: errors about subjects' own connections are `ct state related` and
 * accepted; new ICMP (ping) from subjects is dropped with `other: drop` unless a
 * CIDR allow without ports covers the destination. Host-mode matches need a
 * local socket, so packets the kernel sends itself (neighbour discovery,
 * RSTs for closed ports) are never subjects' packets and are not touched.
 *
 * Not looping sluice's own upstream traffic back into sluice: sluice is never
 * a subject. Its sockets carry its uid and its cgroup, so they match no subject
 * rule as long as its uid is not in `users` and its cgroup is neither a subject
 * cgroup nor inside one; `self` names that identity and {@link normalizeSpec}
 * refuses a spec that breaks either condition. There is deliberately no
 * exemption rule in front of the subject matches: a uid exemption (root)
 * would also exempt every root process in a subject cgroup, and a cgroup
 * exemption would exempt whatever else runs in sluice's cgroup (every process
 * when that is the root cgroup, a whole login session when sluice was started
 * from a shell). `exemptMark` remains for a sluice whose sockets carry a
 * fwmark (SO_MARK needs CAP_NET_ADMIN before connect, and Deno has no API for
 * it today, so sluice does not use it).
 *
 * @module
 */
import { parseIp } from "../../policy/address.ts";
import type { Cidr } from "../../policy/address.ts";
import {
  checkPort,
  checkTableName,
  type CidrRule,
  type EnforceSpec,
  EnforceSpecError,
  type NormalizedSpec,
  normalizeSpec,
} from "./spec.ts";

// ---------------------------------------------------------------------------------------------
// nftables text

/** A quoted nft string; the content is already restricted to safe characters or sanitized. */
function q(s: string): string {
  return `"${s}"`;
}

/** nft comments are at most 128 bytes and cannot contain quotes. */
function comment(text: string | undefined): string {
  if (!text) return "";
  // deno-lint-ignore no-control-regex
  let t = text.replace(/["\\\x00-\x1f\x7f]/g, "'");
  while (new TextEncoder().encode(t).length > 120) t = t.slice(0, -1);
  return ` comment ${q(t)}`;
}

function set(values: readonly (string | number)[]): string {
  return values.length === 1 ? String(values[0]) : `{ ${values.join(", ")} }`;
}

function daddr(c: Cidr): string {
  const text = c.prefix === (c.family === 4 ? 32 : 128) ? c.text.replace(/\/\d+$/, "") : c.text;
  return `${c.family === 4 ? "ip" : "ip6"} daddr ${text}`;
}

/**
 * The nft match for a CIDR rule: its destination (a /32 or /128 as the bare address) and, when
 * it names ports, TCP and UDP to those ports. Every nft ruleset sluice writes (this file's and
 * `sluice run`'s in lib/run/namespace.ts) matches CIDRs with it.
 *
 * @param r the rule
 * @returns nft match text, without a verdict
 */
export function cidrMatch(r: CidrRule): string {
  return r.ports === null
    ? daddr(r.cidr)
    : `${daddr(r.cidr)} meta l4proto { tcp, udp } th dport ${set(r.ports)}`;
}

function subjectMatches(s: NormalizedSpec): { match: string; why: string }[] {
  const out: { match: string; why: string }[] = [];
  if (s.users.length) {
    out.push({ match: `meta skuid ${set(s.users)}`, why: "enforce.subjects.users" });
  }
  for (const c of s.cgroups) {
    const path = s.cgroupPrefix ? `${s.cgroupPrefix}/${c.path}` : c.path;
    out.push({
      match: `socket cgroupv2 level ${c.level} ${q(path)}`,
      why: "enforce.subjects.cgroups",
    });
  }
  return out;
}

function exemptions(s: NormalizedSpec): string[] {
  if (s.exemptMark === undefined) return [];
  return [
    `meta mark 0x${s.exemptMark.toString(16).padStart(8, "0")} return${
      comment("sluice's own traffic")
    }`,
  ];
}

/** Rules of the shared `redirect` chain. */
function redirectRules(s: NormalizedSpec): string[] {
  const out: string[] = [];
  if (s.https.length) {
    out.push(
      `tcp dport ${set(s.https)} redirect to :${s.redirect.https}${comment("enforce.ports.https")}`,
    );
  }
  if (s.http.length) {
    out.push(
      `tcp dport ${set(s.http)} redirect to :${s.redirect.http}${comment("enforce.ports.http")}`,
    );
  }
  if (s.dnsMode === "proxy") {
    out.push(
      `meta l4proto { tcp, udp } th dport 53 redirect to :${s.redirect.dns}${
        comment("enforce.dns: proxy")
      }`,
    );
  }
  return out;
}

function listenerTcpPorts(s: NormalizedSpec): number[] {
  const ports = [s.redirect.https, s.redirect.http, ...s.loopbackPorts];
  return [...new Set(ports)].sort((a, b) => a - b);
}

function egressRules(s: NormalizedSpec): string[] {
  const out = ["ct state established,related accept"];
  for (const r of s.deny) out.push(`${cidrMatch(r)} goto drop_logged${comment(r.source)}`);
  if (s.dnsMode === "block") {
    out.push(
      `meta l4proto { tcp, udp } th dport 53 goto drop_logged${comment("enforce.dns: block")}`,
    );
  } else if (s.dnsMode === "allow") {
    out.push(`meta l4proto { tcp, udp } th dport 53 accept${comment("enforce.dns: allow")}`);
  }
  for (const r of s.allow) out.push(`${cidrMatch(r)} accept${comment(r.source)}`);
  for (const h of s.hostSets) {
    const fam = h.family === 4 ? "ip" : "ip6";
    out.push(
      `meta l4proto { tcp, udp } ${fam} daddr . th dport @${h.name} accept${
        comment("host rules, added at run time")
      }`,
    );
  }
  if (s.https.length) {
    out.push(
      `udp dport ${set(s.https)} goto drop_logged${comment("QUIC would bypass the HTTP policy")}`,
    );
  }
  if (s.other === "drop") out.push(`goto drop_logged${comment("enforce.other: drop")}`);
  return out;
}

function chain(name: string, rules: readonly string[], hook?: string): string {
  const lines = [`\tchain ${name} {`];
  if (hook) lines.push(`\t\t${hook}`);
  for (const r of rules) lines.push(`\t\t${r}`);
  lines.push("\t}");
  return lines.join("\n");
}

/**
 * Renders the whole ruleset as text for `nft -f -`. The text replaces the
 * table atomically whether or not it exists. Deterministic: the same spec in
 * any order gives the same bytes.
 *
 * @throws {EnforceSpecError} when the spec is invalid.
 * @example
 * ```ts
 * const text = renderNft({
 *   table: "sluice",
 *   subjects: { users: [1001], cgroups: [], interfaces: [] },
 *   ports: { http: [80], https: [443] },
 *   redirect: { https: 15443, http: 15080, dns: 15053 },
 *   dnsMode: "proxy",
 *   other: "drop",
 *   allowCidrs: [],
 * });
 * if (!text.includes("meta skuid 1001 jump to_listeners")) throw new Error("unexpected");
 * ```
 */
export function renderNft(spec: EnforceSpec): string {
  const s = normalizeSpec(spec);
  const t = s.table;
  const body: string[] = [];
  body.push(`\tcounter dropped {\n\t}`);
  for (const h of s.hostSets) {
    const type = h.family === 4 ? "ipv4_addr" : "ipv6_addr";
    body.push(`\tset ${h.name} {\n\t\ttype ${type} . inet_service\n\t\tflags timeout\n\t}`);
  }
  const host = subjectMatches(s);
  const gateway = s.interfaces.length ? `iifname ${set(s.interfaces.map(q))}` : undefined;
  if (host.length || gateway) {
    body.push(chain("to_listeners", redirectRules(s)));
    body.push(chain("egress_policy", egressRules(s)));
    body.push(chain("drop_logged", [
      `limit rate 10/second log prefix ${q("sluice drop: ")}`,
      `counter name ${q("dropped")} drop`,
    ]));
  }
  if (host.length) {
    body.push(chain(
      "output_nat",
      [...exemptions(s), ...host.map((h) => `${h.match} jump to_listeners${comment(h.why)}`)],
      "type nat hook output priority -100; policy accept;",
    ));
    body.push(chain(
      "output_filter",
      [...exemptions(s), ...host.map((h) => `${h.match} jump output_subject${comment(h.why)}`)],
      "type filter hook output priority 0; policy accept;",
    ));
    // After REDIRECT a subject's packet is headed to loopback at a listener port.
    const tcp = set(listenerTcpPorts(s));
    const subject = [
      `ip daddr 127.0.0.0/8 tcp dport ${tcp} accept${comment("sluice's listeners")}`,
      `ip6 daddr ::1 tcp dport ${tcp} accept${comment("sluice's listeners")}`,
    ];
    if (s.dnsMode === "proxy") {
      subject.push(
        `ip daddr 127.0.0.0/8 meta l4proto { tcp, udp } th dport ${s.redirect.dns} accept${
          comment("sluice's DNS")
        }`,
        `ip6 daddr ::1 meta l4proto { tcp, udp } th dport ${s.redirect.dns} accept${
          comment("sluice's DNS")
        }`,
      );
    }
    subject.push("goto egress_policy");
    body.push(chain("output_subject", subject));
  }
  if (gateway) {
    const why = comment("enforce.subjects.interfaces");
    body.push(chain(
      "prerouting_nat",
      [`${gateway} jump to_listeners${why}`],
      "type nat hook prerouting priority -100; policy accept;",
    ));
    body.push(chain(
      "forward_filter",
      [`${gateway} jump egress_policy${why}`],
      "type filter hook forward priority 0; policy accept;",
    ));
    const input = [
      `${gateway} tcp dport ${
        set([s.redirect.https, s.redirect.http].sort((a, b) => a - b))
      } accept${comment("sluice's listeners")}`,
    ];
    if (s.dnsMode === "proxy") {
      input.push(
        `${gateway} meta l4proto { tcp, udp } th dport ${s.redirect.dns} accept${
          comment("sluice's DNS")
        }`,
      );
    }
    body.push(chain("input_filter", input, "type filter hook input priority 0; policy accept;"));
  }
  return [
    "# Generated by sluice: replaces the whole table in one transaction.",
    `table inet ${t} {}`,
    `delete table inet ${t}`,
    `table inet ${t} {`,
    body.join("\n\n"),
    "}",
    "",
  ].join("\n");
}

/** One element of a host set: `ip . port`, expiring after `timeoutSec`. */
export type HostSetEntry = { ip: string; port: number; timeoutSec: number };

/**
 * Renders `nft -f -` text that adds host-set elements, each to the set of its
 * address family (`sluice_allow4` / `sluice_allow6` unless `sets` says
 * otherwise). An element that already exists gets its timeout refreshed: the
 * text adds it (a no-op if present), deletes it and adds it again, in one
 * transaction, because `add` alone keeps the old expiry on older kernels.
 *
 * @throws {EnforceSpecError} for an address that is not an IP literal, a bad port or timeout.
 */
export function renderAddElements(
  table: string,
  entries: readonly HostSetEntry[],
  sets: { 4: string; 6: string } = { 4: "sluice_allow4", 6: "sluice_allow6" },
): string {
  checkTableName(table);
  const by: { 4: Map<string, number>; 6: Map<string, number> } = { 4: new Map(), 6: new Map() };
  for (const e of entries) {
    const ip = parseIp(e.ip);
    if (!ip) {
      throw new EnforceSpecError(`host set entry ${JSON.stringify(e.ip)} is not an IP address`);
    }
    checkPort(`host set entry ${ip.text}`, e.port);
    if (!Number.isInteger(e.timeoutSec) || e.timeoutSec < 1) {
      throw new EnforceSpecError(
        `host set entry ${ip.text}: timeout ${e.timeoutSec} must be a whole number of seconds >= 1`,
      );
    }
    const key = `${ip.text} . ${e.port}`;
    // The longest timeout asked for wins when an entry repeats.
    by[ip.family].set(key, Math.max(by[ip.family].get(key) ?? 0, e.timeoutSec));
  }
  const lines: string[] = [];
  for (const family of [4, 6] as const) {
    const m = by[family];
    if (m.size === 0) continue;
    const keys = [...m.keys()].sort();
    const withTimeout = keys.map((k) => `${k} timeout ${m.get(k)}s`).join(", ");
    const target = `inet ${table} ${sets[family]}`;
    lines.push(
      `add element ${target} { ${withTimeout} }`,
      `delete element ${target} { ${keys.join(", ")} }`,
      `add element ${target} { ${withTimeout} }`,
    );
  }
  return lines.length ? lines.join("\n") + "\n" : "";
}

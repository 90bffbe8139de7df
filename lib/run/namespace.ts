/**
 * `sluice run --policy FILE -- CMD ARGS...`: one command in a network
 * namespace whose only way out is sluice.
 *
 *   host                               namespace (CMD runs here)
 *   ┌───────────────────────┐  veth   ┌──────────────────────────────────┐
 *   │ sluice listeners on   │◄───────►│ nft: tcp 443/80 and dns 53 DNAT  │
 *   │ HOST_ADDR (proxy,     │         │ to HOST_ADDR:ports; everything   │
 *   │ transparent, DNS)     │         │ else dropped but policy CIDRs    │
 *   └───────────────────────┘         └──────────────────────────────────┘
 *
 * The host side of the veth has rules of its own (renderHostRules) that hold
 * even if the namespace's rules were gone. The command starts through
 * lib/run/init.ts (PID and mount namespaces, masks, a reduced capability
 * bounding set) with the environment of lib/run/env.ts. Everything sluice
 * creates is removed on every way out, including SIGTERM to sluice itself;
 * after SIGKILL, the next run removes it (lib/run/state.ts).
 *
 * @module
 */
import type { Cidr } from "../../policy/address.ts";
import type { CompiledPolicy, Decision } from "../../policy/mod.ts";
import type { Credential } from "../../policy/types.ts";
import {
  type AuditRecord,
  type AuditSink,
  type DecidedFields,
  decidedFields,
  writeDecided,
} from "../ops/audit.ts";
import { cidrAllowsFromPolicy, cidrDeniesFromPolicy, type CidrRule } from "../enforce/spec.ts";
import { cidrMatch } from "../enforce/nft_render.ts";
import { applyNft, removeNft } from "../enforce/netfilter.ts";
import { sh } from "../ops/command.ts";

/** Exit status when sluice itself failed (the command may not have run). */
export const EXIT_SLUICE_FAILED = 125;
/** Exit status when sluice ended the command after a credential violation (`block_and_terminate`). */
export const EXIT_VIOLATION = 123;

/** Names and addresses for one run, derived from sluice's pid so runs never collide. */
export type RunNet = {
  ns: string;
  hostIf: string;
  nsIf: string;
  hostAddr: string;
  nsAddr: string;
  prefix: number;
};

/** Picks a /30 in 10.231.0.0/16 and interface names from a number (the pid). */
export function runNet(id: number): RunNet {
  const base = (id * 4) % 65536;
  const third = base >> 8, fourth = base & 255;
  return {
    ns: `sluice-run-${id}`,
    hostIf: `slh${id}`.slice(0, 15),
    nsIf: `sln${id}`.slice(0, 15),
    hostAddr: `10.231.${third}.${fourth + 1}`,
    nsAddr: `10.231.${third}.${fourth + 2}`,
    prefix: 30,
  };
}

/** Listener ports on the host side of the veth. */
export type RunPorts = { proxy: number; https: number; http: number; dns: number };

/**
 * The namespace's ruleset (pure, snapshot-tested): web and DNS traffic DNAT
 * to sluice on the host side of the veth; deny CIDRs dropped first; allowed
 * CIDRs accepted (routed and masqueraded by the host table); everything else
 * dropped, IPv6 and QUIC included.
 */
export function renderNamespaceRules(
  net: RunNet,
  ports: RunPorts,
  enforce: CompiledPolicy["policy"]["enforce"],
  allow: readonly CidrRule[],
  deny: readonly CidrRule[],
): string {
  const https = enforce.ports.https.join(", ");
  const http = enforce.ports.http.join(", ");
  const h = net.hostAddr;
  const dns = enforce.dns === "proxy"
    ? [
      `meta l4proto { tcp, udp } th dport 53 dnat ip to ${h}:${ports.dns} comment "enforce.dns: proxy"`,
    ]
    : [];
  const dnsFilter = enforce.dns === "allow"
    ? [`meta l4proto { tcp, udp } th dport 53 accept comment "enforce.dns: allow"`]
    : enforce.dns === "block"
    ? [`meta l4proto { tcp, udp } th dport 53 drop comment "enforce.dns: block"`]
    : [];
  const other = enforce.other === "allow"
    ? [
      `udp dport { ${https} } drop comment "QUIC would bypass the HTTP policy"`,
      `accept comment "enforce.other: allow"`,
    ]
    : [`counter name "dropped" drop comment "enforce.other: drop"`];
  return [
    "table inet sluice_run {}",
    "delete table inet sluice_run",
    "table inet sluice_run {",
    "\tcounter dropped {",
    "\t}",
    "\tchain out_nat {",
    "\t\ttype nat hook output priority -100; policy accept;",
    `\t\ttcp dport { ${https} } dnat ip to ${h}:${ports.https} comment "enforce.ports.https"`,
    `\t\ttcp dport { ${http} } dnat ip to ${h}:${ports.http} comment "enforce.ports.http"`,
    ...dns.map((l) => `\t\t${l}`),
    "\t}",
    "\tchain out_filter {",
    "\t\ttype filter hook output priority 0; policy drop;",
    '\t\toif "lo" accept',
    "\t\tct state established,related accept",
    `\t\tip daddr ${h} tcp dport { ${ports.proxy}, ${ports.https}, ${ports.http} } accept comment "sluice's listeners"`,
    `\t\tip daddr ${h} meta l4proto { tcp, udp } th dport ${ports.dns} accept comment "sluice's DNS"`,
    ...dnsFilter.map((l) => `\t\t${l}`),
    ...deny.map((c) =>
      `\t\t${cidrMatch(c)} drop comment ${JSON.stringify(c.source ?? "network.deny")}`
    ),
    ...allow.map((c) =>
      `\t\t${cidrMatch(c)} accept comment ${JSON.stringify(c.source ?? "network.allow")}`
    ),
    ...other.map((l) => `\t\t${l}`),
    "\t}",
    "}",
    "",
  ].join("\n");
}

/**
 * The host's ruleset for a run. It holds on its own, whatever happens to the
 * namespace's rules (they are the first layer; a command cannot change them,
 * since it runs without CAP_NET_ADMIN, but confinement must not depend on
 * that alone):
 * - input from the veth: only sluice's listeners on the host address (and
 *   replies); nothing else on the host is reachable from the command;
 * - forward from the veth: only the policy's CIDR allows (IPv4; the namespace
 *   has no IPv6 route), and replies;
 * - masquerade for what is forwarded.
 */
export function renderHostRules(
  net: RunNet,
  ports: RunPorts,
  allow: readonly CidrRule[],
  table: string,
): string {
  const v4 = allow.filter((c) => c.cidr.family === 4);
  const i = `iifname "${net.hostIf}"`;
  return [
    `table inet ${table} {}`,
    `delete table inet ${table}`,
    `table inet ${table} {`,
    "	chain input {",
    "		type filter hook input priority -10; policy accept;",
    `		${i} ct state established,related accept`,
    `		${i} ip daddr ${net.hostAddr} tcp dport { ${ports.proxy}, ${ports.https}, ${ports.http} } accept comment "sluice's listeners"`,
    `		${i} ip daddr ${net.hostAddr} meta l4proto { tcp, udp } th dport ${ports.dns} accept comment "sluice's DNS"`,
    `		${i} counter drop comment "nothing else on the host"`,
    "	}",
    "	chain forward {",
    "		type filter hook forward priority -10; policy accept;",
    `		${i} ct state established,related accept`,
    `		oifname "${net.hostIf}" ct state established,related accept`,
    ...v4.map((c) => `		${i} ${cidrMatch(c)} accept`),
    `		${i} counter drop comment "only the policy's CIDR allows leave"`,
    `		oifname "${net.hostIf}" drop`,
    "	}",
    "	chain postrouting {",
    "		type nat hook postrouting priority 100; policy accept;",
    ...v4.map((c) => `		ip saddr ${net.nsAddr} ${cidrMatch(c)} masquerade`),
    "	}",
    "}",
    "",
  ].join("\n");
}

/** Counts decisions for the end-of-run summary, passing records on. */
export class RunSummary implements AuditSink {
  allowed = 0;
  denied = 0;
  violations = 0;
  readonly deniedHosts = new Map<string, number>();
  constructor(private readonly next?: AuditSink) {}
  write(r: AuditRecord): void {
    this.#count(r);
    this.next?.write(r);
  }
  writeDecided(decision: Decision, rest: Omit<AuditRecord, DecidedFields>): void {
    this.#count({ ...rest, ...decidedFields(decision) });
    if (this.next) writeDecided(this.next, decision, rest);
  }
  #count(r: AuditRecord): void {
    // A denied connection and its requests would count twice; count requests,
    // and connections only when no request could follow (passthrough, refused).
    const counts = r.event === "request" || r.event === "dns" ||
      (r.event === "connection" &&
        (r.verdict === "deny"
          ? r.status === 403 || r.tls !== "intercept"
          : r.tls === "passthrough"));
    if (counts) {
      if (r.verdict === "allow") this.allowed++;
      else {
        this.denied++;
        if (r.host) this.deniedHosts.set(r.host, (this.deniedHosts.get(r.host) ?? 0) + 1);
      }
      if (r.violation) this.violations++;
    }
  }
  close(): Promise<void> {
    return this.next?.close() ?? Promise.resolve();
  }
  /**
   * The lines printed on stderr at the end of a run.
   *
   * @param ending how the command ended, from {@link describeEnding}
   */
  render(ending: string): string {
    const top = [...this.deniedHosts].sort((a, b) => b[1] - a[1]).slice(0, 5)
      .map(([h, n]) => `${h} (${n})`).join(", ");
    return [
      `sluice: ${ending}; ` +
      `${this.allowed} allowed, ${this.denied} denied, ${this.violations} credential violation${
        this.violations === 1 ? "" : "s"
      }`,
      ...(top ? [`sluice: most denied: ${top}`] : []),
    ].join("\n");
  }
}

/** How a run ended, for the summary and the exit status. */
export type RunEnding =
  | { kind: "exited"; code: number }
  | { kind: "signal"; signal: string; number: number }
  | { kind: "not-found" }
  | { kind: "terminated"; credential: string }
  | { kind: "failed" };

/** Exit status when the command could not be found (as a shell says). */
export const EXIT_NOT_FOUND = 127;

/**
 * The exit status of `sluice run` for an ending: the command's own code;
 * 128+N for a signal N; 127 when it could not be found; 123 when sluice
 * ended it after a violation; 125 when sluice failed.
 */
export function exitStatus(e: RunEnding): number {
  switch (e.kind) {
    case "exited":
      return e.code;
    case "signal":
      return 128 + e.number;
    case "not-found":
      return EXIT_NOT_FOUND;
    case "terminated":
      return EXIT_VIOLATION;
    case "failed":
      return EXIT_SLUICE_FAILED;
  }
}

/** The summary's opening words, naming the exit status so the two always agree. */
export function describeEnding(e: RunEnding): string {
  const status = exitStatus(e);
  switch (e.kind) {
    case "exited":
      return `command exited ${status}`;
    case "signal":
      return `command killed by ${e.signal} (exit status ${status})`;
    case "not-found":
      return `command not found (exit status ${status})`;
    case "terminated":
      return `command ended by sluice: credential ${e.credential} violation (exit status ${status})`;
    case "failed":
      return `sluice failed (exit status ${status})`;
  }
}

/** Everything a run created, removable in any state and more than once. */
export class RunResources {
  #undo: (() => Promise<unknown>)[] = [];
  /** Registers an undo step; steps run in reverse order. */
  add(step: () => Promise<unknown>): void {
    this.#undo.push(step);
  }
  /** Runs every undo step, continuing past failures; returns the failures' messages. */
  async release(): Promise<string[]> {
    const errors: string[] = [];
    while (this.#undo.length) {
      const step = this.#undo.pop()!;
      try {
        await step();
      } catch (e) {
        errors.push((e as Error).message);
      }
    }
    return errors;
  }
}

/** Sets up the namespace, veth and addresses; registers their removal. */
export async function createNamespace(net: RunNet, res: RunResources): Promise<void> {
  await sh(["ip", "netns", "add", net.ns]);
  res.add(() => sh(["ip", "netns", "del", net.ns]));
  await sh([
    "ip",
    "link",
    "add",
    net.hostIf,
    "type",
    "veth",
    "peer",
    "name",
    net.nsIf,
    "netns",
    net.ns,
  ]);
  res.add(() => sh(["ip", "link", "del", net.hostIf]).catch(() => {}));
  await sh(["ip", "addr", "add", `${net.hostAddr}/${net.prefix}`, "dev", net.hostIf]);
  await sh(["ip", "link", "set", net.hostIf, "up"]);
  await sh(["ip", "-n", net.ns, "addr", "add", `${net.nsAddr}/${net.prefix}`, "dev", net.nsIf]);
  await sh(["ip", "-n", net.ns, "link", "set", net.nsIf, "up"]);
  await sh(["ip", "-n", net.ns, "link", "set", "lo", "up"]);
  await sh(["ip", "-n", net.ns, "route", "add", "default", "via", net.hostAddr]);
  // `ip netns exec` bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf.
  const etc = `/etc/netns/${net.ns}`;
  await Deno.mkdir(etc, { recursive: true });
  res.add(() => Deno.remove(etc, { recursive: true }));
  await Deno.writeTextFile(`${etc}/resolv.conf`, `nameserver ${net.hostAddr}\n`);
}

/**
 * Applies the host's and the namespace's rules (host first: it confines on
 * its own); registers the host table's removal and, when the policy's CIDR
 * allows need forwarding, sets ip_forward (restored afterwards).
 *
 * @returns ip_forward's value before the run set it, when it did
 */
export async function applyRunRules(
  net: RunNet,
  ports: RunPorts,
  compiled: CompiledPolicy,
  hostTable: string,
  res: RunResources,
): Promise<string | undefined> {
  const allow = cidrAllowsFromPolicy(compiled.policy);
  const deny = cidrDeniesFromPolicy(compiled.policy);
  await applyNft(renderHostRules(net, ports, allow, hostTable));
  res.add(() => removeNft(hostTable));
  await applyNft(renderNamespaceRules(net, ports, compiled.policy.enforce, allow, deny), {
    netns: net.ns,
  });
  if (!allow.some((c) => c.cidr.family === 4)) return undefined;
  const before = (await Deno.readTextFile("/proc/sys/net/ipv4/ip_forward")).trim();
  if (before === "1") return undefined;
  await Deno.writeTextFile("/proc/sys/net/ipv4/ip_forward", "1");
  res.add(() => Deno.writeTextFile("/proc/sys/net/ipv4/ip_forward", before));
  return before;
}

/** Whether a credential violation should end the command. */
export function terminates(c: Credential): boolean {
  return c.onViolation === "block_and_terminate";
}

export type { Cidr };

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
 * CMD sees each credential's placeholder in its environment and a CA bundle
 * (system roots + sluice's CA) in the usual variables. Everything sluice
 * creates is removed on every way out, including SIGTERM to sluice itself.
 *
 * @module
 */
import type { Cidr } from "../policy/address.ts";
import type { CompiledPolicy } from "../policy/mod.ts";
import type { Credential } from "../policy/types.ts";
import type { AuditRecord, AuditSink } from "./audit.ts";
import { cidrAllowsFromPolicy, cidrDeniesFromPolicy, type CidrRule } from "./nft_render.ts";
import { applyNft, removeNft } from "./netfilter.ts";

/** Exit status when sluice itself failed (the command may not have run). */
export const EXIT_SLUICE_FAILED = 125;
/** Exit status when sluice ended the command after a credential violation (`block_and_terminate`). */
export const EXIT_VIOLATION = 123;

/** The CA bundle variables every common runtime reads. */
export const CA_VARIABLES = [
  "SSL_CERT_FILE",
  "REQUESTS_CA_BUNDLE",
  "CURL_CA_BUNDLE",
  "NODE_EXTRA_CA_CERTS",
  "GIT_SSL_CAINFO",
  "DENO_CERT",
  "AWS_CA_BUNDLE",
  "PIP_CERT",
  "CARGO_HTTP_CAINFO",
];

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

function cidrMatch(c: CidrRule): string {
  const fam = c.cidr.family === 4 ? "ip" : "ip6";
  const ports = c.ports ? ` meta l4proto { tcp, udp } th dport { ${c.ports.join(", ")} }` : "";
  return `${fam} daddr ${c.cidr.text}${ports}`;
}

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

/** The host's ruleset for a run: forward and masquerade the namespace's allowed CIDRs only. */
export function renderHostRules(net: RunNet, allow: readonly CidrRule[], table: string): string {
  const v4 = allow.filter((c) => c.cidr.family === 4);
  return [
    `table inet ${table} {}`,
    `delete table inet ${table}`,
    `table inet ${table} {`,
    "\tchain forward {",
    "\t\ttype filter hook forward priority -10; policy accept;",
    `\t\tiifname "${net.hostIf}" ct state established,related accept`,
    `\t\toifname "${net.hostIf}" ct state established,related accept`,
    ...v4.map((c) => `\t\tiifname "${net.hostIf}" ${cidrMatch(c)} accept`),
    `\t\tiifname "${net.hostIf}" drop`,
    "\t}",
    "\tchain postrouting {",
    "\t\ttype nat hook postrouting priority 100; policy accept;",
    ...v4.map((c) => `\t\tip saddr ${net.nsAddr} ${cidrMatch(c)} masquerade`),
    "\t}",
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
    this.next?.write(r);
  }
  close(): Promise<void> {
    return this.next?.close() ?? Promise.resolve();
  }
  /** The lines printed on stderr at the end of a run. */
  render(code: number, why?: string): string {
    const top = [...this.deniedHosts].sort((a, b) => b[1] - a[1]).slice(0, 5)
      .map(([h, n]) => `${h} (${n})`).join(", ");
    return [
      `sluice: command exited ${code}${why ? ` (${why})` : ""}; ` +
      `${this.allowed} allowed, ${this.denied} denied, ${this.violations} credential violation${
        this.violations === 1 ? "" : "s"
      }`,
      ...(top ? [`sluice: most denied: ${top}`] : []),
    ].join("\n");
  }
}

/** Runs a command, throwing with its stderr when it fails. */
export async function sh(argv: string[]): Promise<string> {
  const out = await new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`${argv.join(" ")} failed: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return new TextDecoder().decode(out.stdout);
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

/** Applies the namespace's and host's rules; registers the host table's removal. */
export async function applyRunRules(
  net: RunNet,
  ports: RunPorts,
  compiled: CompiledPolicy,
  res: RunResources,
): Promise<void> {
  const allow = cidrAllowsFromPolicy(compiled.policy);
  const deny = cidrDeniesFromPolicy(compiled.policy);
  await applyNft(renderNamespaceRules(net, ports, compiled.policy.enforce, allow, deny), {
    netns: net.ns,
  });
  if (allow.some((c) => c.cidr.family === 4)) {
    // One host table per run (table names are at most 20 characters).
    const table = `sluice_r${net.ns.replace(/\D/g, "")}`.slice(0, 20);
    await applyNft(renderHostRules(net, allow, table));
    res.add(() => removeNft(table));
    const before = (await Deno.readTextFile("/proc/sys/net/ipv4/ip_forward")).trim();
    if (before !== "1") {
      await Deno.writeTextFile("/proc/sys/net/ipv4/ip_forward", "1");
      res.add(() => Deno.writeTextFile("/proc/sys/net/ipv4/ip_forward", before));
    }
  }
}

/** The environment CMD gets: placeholders under credential names, CA bundle variables. */
export function childEnv(
  base: Record<string, string>,
  placeholders: ReadonlyMap<string, string>,
  bundle: string,
  proxy?: string,
): Record<string, string> {
  const env: Record<string, string> = { ...base };
  for (const [name, ph] of placeholders) env[name] = ph;
  for (const v of CA_VARIABLES) env[v] = bundle;
  if (proxy) {
    for (const v of ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]) env[v] = proxy;
    delete env.NO_PROXY;
    delete env.no_proxy;
  }
  return env;
}

/** Whether a credential violation should end the command. */
export function terminates(c: Credential): boolean {
  return c.onViolation === "block_and_terminate";
}

export type { Cidr };

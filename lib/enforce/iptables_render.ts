/**
 * The same enforcement as lib/enforce/nft_render.ts, rendered as iptables / ip6tables
 * argument lists for hosts without nft. PURE: no Deno.*; lib/enforce/netfilter.ts runs
 * the commands.
 *
 * sluice owns dedicated chains named after the table (`SLUICE-NAT-OUT`,
 * `SLUICE-OUT`, ...) and inserts one jump to each at the top of the built-in
 * chain it hangs from (nat OUTPUT / PREROUTING, filter OUTPUT / FORWARD /
 * INPUT). The rules mirror the nft ruleset (see that module for the order and
 * the reasons), with these differences:
 *
 * - Not atomic: the commands run one by one (chains are filled before the
 *   built-in chains jump to them, and removed after the jumps are gone).
 * - Where nft says `accept`, these chains say `RETURN`: nft's accept only
 *   ends sluice's own table and the host's other tables still judge the packet,
 *   whereas ACCEPT inside the host's own OUTPUT/FORWARD chain would skip the
 *   host's later rules. RETURN keeps the host's firewall in charge of what
 *   sluice lets through; sluice's drops are final either way.
 * - No host sets: ipset is not assumed. Host rules with non-HTTP ports are
 *   nft-only; with iptables the caller passes their addresses resolved at start
 *   as `allowCidrs` (a /32 or /128 with the port), and they do not follow DNS
 *   changes. `spec.hostSets` is ignored here.
 * - cgroup paths go to `-m cgroup --path` as written: the kernel resolves them
 *   relative to the cgroup2 root, so `cgroupPrefix` (an nft quirk) is unused.
 * - One jump rule per uid (`-m owner --uid-owner`) instead of an nft set.
 * - sluice's own traffic, as in nft: sluice is refused as a subject (its uid,
 *   its cgroup) rather than exempted, because `--uid-owner 0 -j RETURN` in
 *   front of `-m cgroup --path` would free every root process in the cgroup.
 *
 * @module
 */
import type { CidrRule, EnforceSpec, NormalizedSpec } from "./spec.ts";
import { checkTableName, normalizeSpec } from "./spec.ts";

/** Argument lists (without the program name) for iptables (`v4`) and ip6tables (`v6`). */
export type IptablesRules = { v4: string[][]; v6: string[][] };

type Family = 4 | 6;

/** The chains sluice owns for a table, keyed by role. */
export function iptablesChains(table: string): {
  natOut: string;
  natPre: string;
  redirect: string;
  out: string;
  subject: string;
  forward: string;
  input: string;
  egress: string;
  drop: string;
} {
  checkTableName(table);
  // iptables chain names are at most 28 characters: the table name is at most 20.
  const p = table.toUpperCase();
  return {
    natOut: `${p}-NAT-OUT`,
    natPre: `${p}-NAT-PRE`,
    redirect: `${p}-REDIR`,
    out: `${p}-OUT`,
    subject: `${p}-SUBJ`,
    forward: `${p}-FWD`,
    input: `${p}-IN`,
    egress: `${p}-EGRESS`,
    drop: `${p}-DROP`,
  };
}

/** multiport takes at most 15 ports per rule. */
function portMatches(ports: readonly number[]): string[][] {
  if (ports.length === 1) return [["--dport", String(ports[0])]];
  const out: string[][] = [];
  for (let i = 0; i < ports.length; i += 15) {
    out.push(["-m", "multiport", "--dports", ports.slice(i, i + 15).join(",")]);
  }
  return out;
}

function comment(text: string | undefined): string[] {
  if (!text) return [];
  // deno-lint-ignore no-control-regex
  return ["-m", "comment", "--comment", text.replace(/[\x00-\x1f\x7f]/g, "'").slice(0, 250)];
}

/** Matches for a CIDR rule: one per protocol and port chunk, or one for the whole address. */
function cidrMatches(r: CidrRule): string[][] {
  const d = ["-d", r.cidr.text];
  if (r.ports === null) return [[...d, ...comment(r.source)]];
  const out: string[][] = [];
  for (const proto of ["tcp", "udp"]) {
    for (const pm of portMatches(r.ports)) {
      out.push([...d, "-p", proto, ...pm, ...comment(r.source)]);
    }
  }
  return out;
}

function renderFamily(s: NormalizedSpec, family: Family): string[][] {
  const c = iptablesChains(s.table);
  const nat = (...a: string[]) => ["-t", "nat", ...a];
  const loopback = family === 4 ? "127.0.0.0/8" : "::1/128";
  const subjects: { match: string[]; why: string }[] = [
    ...s.users.map((uid) => ({
      match: ["-m", "owner", "--uid-owner", String(uid)],
      why: "enforce.subjects.users",
    })),
    ...s.cgroups.map((g) => ({
      match: ["-m", "cgroup", "--path", g.path],
      why: "enforce.subjects.cgroups",
    })),
  ];
  const host = subjects.length > 0;
  const gateway = s.interfaces.length > 0;
  if (!host && !gateway) return [];

  // sluice itself is never a subject (normalizeSpec refuses a spec where its
  // uid or cgroup would be), so only a fwmark exemption is rendered.
  const exempt: string[][] = s.exemptMark === undefined ? [] : [[
    "-m",
    "mark",
    "--mark",
    `0x${s.exemptMark.toString(16)}`,
    ...comment("sluice's own traffic"),
  ]];

  const natChains = [c.redirect, ...(host ? [c.natOut] : []), ...(gateway ? [c.natPre] : [])];
  const filterChains = [
    c.drop,
    c.egress,
    ...(host ? [c.subject, c.out] : []),
    ...(gateway ? [c.forward, c.input] : []),
  ];
  const cmds: string[][] = [
    ...natChains.map((ch) => nat("-N", ch)),
    ...filterChains.map((ch) => ["-N", ch]),
  ];

  // Leaf chains first, so nothing jumps into a half-filled chain.
  cmds.push(
    [
      "-A",
      c.drop,
      "-m",
      "limit",
      "--limit",
      "10/second",
      "-j",
      "LOG",
      "--log-prefix",
      "sluice drop: ",
    ],
    ["-A", c.drop, "-j", "DROP"],
  );

  const eg = (...a: string[]) => cmds.push(["-A", c.egress, ...a]);
  eg("-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN");
  for (const r of s.deny.filter((r) => r.cidr.family === family)) {
    for (const m of cidrMatches(r)) eg(...m, "-j", c.drop);
  }
  if (s.dnsMode !== "proxy") {
    const target = s.dnsMode === "block" ? c.drop : "RETURN";
    for (const proto of ["udp", "tcp"]) {
      eg("-p", proto, "--dport", "53", ...comment(`enforce.dns: ${s.dnsMode}`), "-j", target);
    }
  }
  for (const r of s.allow.filter((r) => r.cidr.family === family)) {
    for (const m of cidrMatches(r)) eg(...m, "-j", "RETURN");
  }
  for (const pm of s.https.length ? portMatches(s.https) : []) {
    eg("-p", "udp", ...pm, ...comment("QUIC would bypass the HTTP policy"), "-j", c.drop);
  }
  if (s.other === "drop") eg(...comment("enforce.other: drop"), "-j", c.drop);

  const rd = (...a: string[]) => cmds.push(nat("-A", c.redirect, ...a));
  for (const pm of s.https.length ? portMatches(s.https) : []) {
    rd(
      "-p",
      "tcp",
      ...pm,
      ...comment("enforce.ports.https"),
      "-j",
      "REDIRECT",
      "--to-ports",
      String(s.redirect.https),
    );
  }
  for (const pm of s.http.length ? portMatches(s.http) : []) {
    rd(
      "-p",
      "tcp",
      ...pm,
      ...comment("enforce.ports.http"),
      "-j",
      "REDIRECT",
      "--to-ports",
      String(s.redirect.http),
    );
  }
  if (s.dnsMode === "proxy") {
    for (const proto of ["udp", "tcp"]) {
      rd(
        "-p",
        proto,
        "--dport",
        "53",
        ...comment("enforce.dns: proxy"),
        "-j",
        "REDIRECT",
        "--to-ports",
        String(s.redirect.dns),
      );
    }
  }

  const hooks: string[][] = [];
  if (host) {
    const listeners = [...new Set([s.redirect.https, s.redirect.http, ...s.loopbackPorts])]
      .sort((a, b) => a - b);
    for (const pm of portMatches(listeners)) {
      cmds.push([
        "-A",
        c.subject,
        "-d",
        loopback,
        "-p",
        "tcp",
        ...pm,
        ...comment("sluice's listeners"),
        "-j",
        "RETURN",
      ]);
    }
    if (s.dnsMode === "proxy") {
      for (const proto of ["udp", "tcp"]) {
        cmds.push([
          "-A",
          c.subject,
          "-d",
          loopback,
          "-p",
          proto,
          "--dport",
          String(s.redirect.dns),
          ...comment("sluice's DNS"),
          "-j",
          "RETURN",
        ]);
      }
    }
    cmds.push(["-A", c.subject, "-g", c.egress]);
    for (const e of exempt) {
      cmds.push(nat("-A", c.natOut, ...e, "-j", "RETURN"), ["-A", c.out, ...e, "-j", "RETURN"]);
    }
    for (const sub of subjects) {
      cmds.push(nat("-A", c.natOut, ...sub.match, ...comment(sub.why), "-j", c.redirect));
    }
    for (const sub of subjects) {
      cmds.push(["-A", c.out, ...sub.match, ...comment(sub.why), "-j", c.subject]);
    }
    hooks.push(nat("-I", "OUTPUT", "1", "-j", c.natOut), ["-I", "OUTPUT", "1", "-j", c.out]);
  }
  if (gateway) {
    const why = comment("enforce.subjects.interfaces");
    for (const i of s.interfaces) cmds.push(nat("-A", c.natPre, "-i", i, ...why, "-j", c.redirect));
    for (const i of s.interfaces) cmds.push(["-A", c.forward, "-i", i, ...why, "-j", c.egress]);
    const listeners = [s.redirect.https, s.redirect.http].sort((a, b) => a - b);
    for (const i of s.interfaces) {
      for (const pm of portMatches([...new Set(listeners)])) {
        cmds.push([
          "-A",
          c.input,
          "-i",
          i,
          "-p",
          "tcp",
          ...pm,
          ...comment("sluice's listeners"),
          "-j",
          "RETURN",
        ]);
      }
      if (s.dnsMode === "proxy") {
        for (const proto of ["udp", "tcp"]) {
          cmds.push([
            "-A",
            c.input,
            "-i",
            i,
            "-p",
            proto,
            "--dport",
            String(s.redirect.dns),
            ...comment("sluice's DNS"),
            "-j",
            "RETURN",
          ]);
        }
      }
    }
    hooks.push(
      nat("-I", "PREROUTING", "1", "-j", c.natPre),
      ["-I", "FORWARD", "1", "-j", c.forward],
      ["-I", "INPUT", "1", "-j", c.input],
    );
  }
  // The built-in chains jump to sluice's chains last, once those are complete.
  return [...cmds, ...hooks];
}

/**
 * Renders the enforcement as iptables and ip6tables argument lists (without
 * the program name). Run {@link renderIptablesRemove} first: these commands
 * create the chains and fail if they exist.
 *
 * @throws {EnforceSpecError} when the spec is invalid.
 */
export function renderIptables(spec: EnforceSpec): IptablesRules {
  const s = normalizeSpec(spec);
  return { v4: renderFamily(s, 4), v6: renderFamily(s, 6) };
}

/**
 * Argument lists that remove every chain sluice may own for `table`: the
 * jumps from the built-in chains (run each `-D` until it fails, in case of
 * duplicates), then flushes, then deletes. Expect "No chain/target/match"
 * and "Bad rule" failures for what does not exist, and ignore them.
 */
export function renderIptablesRemove(table: string): IptablesRules {
  const c = iptablesChains(table);
  const nat = (...a: string[]) => ["-t", "nat", ...a];
  const natChains = [c.natOut, c.natPre, c.redirect];
  const filterChains = [c.out, c.subject, c.forward, c.input, c.egress, c.drop];
  const cmds = [
    nat("-D", "OUTPUT", "-j", c.natOut),
    nat("-D", "PREROUTING", "-j", c.natPre),
    ["-D", "OUTPUT", "-j", c.out],
    ["-D", "FORWARD", "-j", c.forward],
    ["-D", "INPUT", "-j", c.input],
    ...natChains.map((ch) => nat("-F", ch)),
    ...filterChains.map((ch) => ["-F", ch]),
    ...natChains.map((ch) => nat("-X", ch)),
    ...filterChains.map((ch) => ["-X", ch]),
  ];
  return { v4: cmds.map((a) => [...a]), v6: cmds.map((a) => [...a]) };
}

function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_.,:/@%+=-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

/**
 * The commands as a shell script (`iptables ...` then `ip6tables ...`), for
 * `sluice rules` output and snapshots.
 */
export function iptablesScript(rules: IptablesRules): string {
  const lines = [
    ...rules.v4.map((a) => ["iptables", ...a].map(shellQuote).join(" ")),
    ...rules.v6.map((a) => ["ip6tables", ...a].map(shellQuote).join(" ")),
  ];
  return lines.length ? lines.join("\n") + "\n" : "";
}

/**
 * Compiling a validated policy into lookup structures, once, at load.
 *
 * Per request, sluice only does map lookups: exact host rules by name,
 * wildcard rules by each parent suffix of the name (so `a.b.example.com`
 * costs three lookups however many rules there are), IP rules by canonical
 * text. CIDR rules are few in practice and scanned, with masks precomputed by
 * `policy/address.ts`.
 *
 * @module
 */
import { formatLine } from "./errors.ts";
import { hostMatches, type HostPattern, parentSuffixes } from "./host.ts";
import type { Credential, NetRule, Policy, UpstreamHostTls } from "./types.ts";

/** A rule index: host rules by exact name and by wildcard suffix, IP rules by text, CIDRs listed. */
export type RuleIndex = {
  exact: Map<string, NetRule[]>;
  wildcard: Map<string, NetRule[]>;
  ips: Map<string, NetRule[]>;
  cidrs: NetRule[];
};

/** A policy ready for decisions. Immutable: a reload builds a new one and swaps the reference. */
export type CompiledPolicy = {
  readonly policy: Policy;
  readonly allow: RuleIndex;
  readonly deny: RuleIndex;
  /** The rule reference used when no rule matched. */
  readonly defaultRef: RuleRef;
  readonly privateRef: RuleRef;
  readonly passthrough: { exact: Set<string>; wildcard: Set<string> };
  readonly credentials: readonly Credential[];
};

/** Names the rule (or setting) that made a decision. */
export type RuleRef = {
  list: "allow" | "deny" | "default" | "private" | "tls";
  /** Index within its list; -1 for settings. */
  index: number;
  /** The rule in policy syntax, e.g. `GET,HEAD api.github.com/repos/acme/**` or `default: deny`. */
  source: string;
  /** `file:line` where it is written, or `file` for a built-in default. */
  at: string;
};

/** The reference for a network rule. */
export function ruleRef(rule: NetRule): RuleRef {
  return { list: rule.list, index: rule.index, source: rule.source, at: formatLine(rule.loc) };
}

function buildIndex(rules: readonly NetRule[]): RuleIndex {
  const index: RuleIndex = { exact: new Map(), wildcard: new Map(), ips: new Map(), cidrs: [] };
  const push = (m: Map<string, NetRule[]>, k: string, r: NetRule) => {
    const list = m.get(k);
    if (list) list.push(r);
    else m.set(k, [r]);
  };
  for (const rule of rules) {
    const t = rule.target;
    if (t.kind === "host") {
      if (t.pattern.kind === "exact") push(index.exact, t.pattern.name, rule);
      else push(index.wildcard, t.pattern.suffix, rule);
    } else if (t.kind === "ip") {
      push(index.ips, t.ip.text, rule);
    } else {
      index.cidrs.push(rule);
    }
  }
  return index;
}

/**
 * Compiles a validated policy. Pure and deterministic.
 *
 * @example
 * ```ts
 * import { loadPolicyText } from "./load.ts";
 * const compiled = loadPolicyText("version: 1\nnetwork: { allow: [example.com] }\n", "p.yaml");
 * ```
 */
export function compilePolicy(policy: Policy): CompiledPolicy {
  const passthrough = { exact: new Set<string>(), wildcard: new Set<string>() };
  for (const p of policy.tls.passthrough) {
    if (p.pattern.kind === "exact") passthrough.exact.add(p.pattern.name);
    else passthrough.wildcard.add(p.pattern.suffix);
  }
  const file = policy.file;
  const n = policy.network;
  return {
    policy,
    allow: buildIndex(n.allow),
    deny: buildIndex(n.deny),
    defaultRef: {
      list: "default",
      index: -1,
      source: `default: ${n.default}`,
      at: n.defaultLoc ? formatLine(n.defaultLoc) : `${file} (built-in default)`,
    },
    privateRef: {
      list: "private",
      index: -1,
      source: `private: ${n.private}`,
      at: n.privateLoc ? formatLine(n.privateLoc) : `${file} (built-in default)`,
    },
    passthrough,
    credentials: policy.credentials,
  };
}

/** Host rules that can apply to a normalized name, in no particular order. */
export function hostCandidates(index: RuleIndex, name: string): NetRule[] {
  const out: NetRule[] = [];
  const exact = index.exact.get(name);
  if (exact) out.push(...exact);
  if (index.wildcard.size > 0) {
    for (const suffix of parentSuffixes(name)) {
      const w = index.wildcard.get(suffix);
      if (w) out.push(...w);
    }
  }
  return out;
}

/**
 * Whether some TLS connection could be decided differently by its raw ClientHello than by a
 * handshake: true when interception is off or any host is passed through (those connections
 * must be routed before sluice completes a handshake). When false, every TLS connection is
 * intercepted, so the direct data path (no loopback hop) can serve them all.
 *
 * ```ts
 * import { loadPolicyText, needsClientHello } from "./mod.ts";
 * const { compiled } = loadPolicyText("version: 1\nnetwork:\n  allow: [a.test]\n", "p.yaml");
 * needsClientHello(compiled); // false
 * ```
 */
export function needsClientHello(compiled: CompiledPolicy): boolean {
  return !compiled.policy.tls.intercept || compiled.policy.tls.passthrough.length > 0;
}

/**
 * The host names the policy allows by their exact name (no wildcard, no address), in the order
 * written, at most `max`: the names a direct data path listener answers before any client asks
 * (lib/ingress/direct.ts, `warm`). A name also listed under `deny` is left out: nothing would be
 * served on it.
 *
 * ```ts
 * import { exactAllowedNames, loadPolicyText } from "./mod.ts";
 * const { compiled } = loadPolicyText(
 *   "version: 1\nnetwork:\n  allow: [a.test, '*.b.test', 10.0.0.1, c.test:8443]\n",
 *   "p.yaml",
 * );
 * exactAllowedNames(compiled, 10); // ["a.test", "c.test"]
 * ```
 */
export function exactAllowedNames(compiled: CompiledPolicy, max: number): string[] {
  const outright = (r: NetRule) => r.ports === null && r.methods === null && r.paths === null;
  const out: string[] = [];
  for (const name of compiled.allow.exact.keys()) {
    if (out.length >= max) break;
    if (!compiled.deny.exact.get(name)?.some(outright)) out.push(name);
  }
  return out;
}

/** Whether TLS to this name is passed through untouched rather than intercepted. */
export function isPassthrough(compiled: CompiledPolicy, name: string): boolean {
  if (!compiled.policy.tls.intercept) return true;
  const p = compiled.passthrough;
  if (p.exact.has(name)) return true;
  if (p.wildcard.size === 0) return false;
  return parentSuffixes(name).some((s) => p.wildcard.has(s));
}

/**
 * The upstream TLS settings for a host: the most specific `tls.upstream.hosts`
 * entry wins (an exact name beats any wildcard; a longer wildcard suffix beats
 * a shorter one), falling back to the global `verify` and `ca`.
 */
export function upstreamTlsFor(
  compiled: CompiledPolicy,
  name: string,
): { verify: boolean; ca: readonly string[]; entry?: UpstreamHostTls } {
  const up = compiled.policy.tls.upstream;
  let best: UpstreamHostTls | undefined;
  let bestScore = -1;
  for (const h of up.hosts) {
    if (!hostMatches(h.match, name)) continue;
    const score = specificity(h.match);
    if (score > bestScore) {
      best = h;
      bestScore = score;
    }
  }
  if (!best) return { verify: up.verify, ca: up.ca };
  return { verify: best.verify ?? up.verify, ca: [...up.ca, ...best.ca], entry: best };
}

function specificity(p: HostPattern): number {
  return p.kind === "exact" ? Number.MAX_SAFE_INTEGER : p.suffix.length;
}

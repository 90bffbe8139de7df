/**
 * Which names sluice's DNS server answers: the network policy applied to a
 * lookup rather than a connection. Pure (imports only policy/), so it is
 * table-tested like the decisions it builds on.
 *
 * A lookup carries no port, so a name is answerable when a connection to it
 * would be allowed on SOME port: `decideConnection` decides, at every port a
 * candidate rule names plus one port no rule names (decisions depend on the
 * port only through "does this rule list it", so those ports cover every
 * case). The consequences, in precedence order:
 *   1. a name that is not a valid host name, or is an IP literal, is not answered;
 *   2. a deny rule without ports, methods or paths denies the name outright;
 *   3. otherwise any allow rule that can match the name (host or wildcard, any
 *      port, HTTP rules included: the request is decided later) answers it,
 *      unless deny rules take away every port it allows;
 *   4. otherwise `network.default` decides.
 * Keeping the logic in `decideConnection` means DNS can never disagree with
 * the proxy about which hosts exist.
 *
 * @module
 */
import { hostCandidates } from "../../policy/compile.ts";
import type { CompiledPolicy, RuleRef } from "../../policy/compile.ts";
import {
  type ConnectionDecision,
  decideConnection,
  parseDestinationHost,
  type ReasonCode,
} from "../../policy/decide.ts";

/** Whether the DNS server answers a name, why, and which rule (or setting) said so. */
export type DnsVerdict = {
  ok: boolean;
  code: ReasonCode;
  /** One sentence a person can act on. */
  reason: string;
  rule: RuleRef;
  /** The normalized name (lowercase, punycode, no trailing dot), when it is a valid host name. */
  name?: string;
};

/**
 * Decides whether a looked-up name may be resolved and answered.
 *
 * @param compiled the policy in force
 * @param raw the queried name as received (any case, trailing dot allowed)
 * @returns `ok: true` when some port of the name is reachable under the policy
 *
 * @example
 * ```ts
 * import { loadPolicyText } from "../../policy/load.ts";
 * const { compiled } = loadPolicyText("version: 1\nnetwork: { allow: [example.com:443] }\n", "p.yaml");
 * dnsAnswerable(compiled, "Example.COM.").ok; // true
 * dnsAnswerable(compiled, "secret.attacker.example").ok; // false
 * ```
 */
export function dnsAnswerable(compiled: CompiledPolicy, raw: string): DnsVerdict {
  const dest = parseDestinationHost(raw);
  if (dest.kind === "invalid") {
    return {
      ok: false,
      code: "invalid-host",
      reason: `the queried name is not a valid host name: ${dest.reason}`,
      rule: compiled.defaultRef,
    };
  }
  if (dest.kind === "ip") {
    return {
      ok: false,
      code: "invalid-host",
      reason: `"${raw}" is an IP address, not a name to look up`,
      rule: compiled.defaultRef,
    };
  }
  const name = dest.name;
  const ports = new Set<number>();
  for (
    const r of [...hostCandidates(compiled.allow, name), ...hostCandidates(compiled.deny, name)]
  ) {
    for (const p of r.ports ?? []) ports.add(p);
  }
  // One port no rule names stands for "any other port".
  let other = 1;
  while (ports.has(other)) other++;
  const decisions: ConnectionDecision[] = [...[...ports].sort((a, b) => a - b), other].map((p) =>
    decideConnection(compiled, dest, p)
  );
  const allowed = decisions.filter((d) => d.verdict === "allow");
  if (allowed.length > 0) {
    // Prefer the rule that allows the name outright over a default or an HTTP rule.
    const d = allowed.find((x) => x.code === "allow-rule") ?? allowed[0];
    return {
      ok: true,
      code: d.code,
      reason: d.code === "default"
        ? `no rule matches ${name}; the default is allow`
        : `${name} is allowed by rule "${d.rule.source}"`,
      rule: d.rule,
      name,
    };
  }
  const byRule = decisions.find((d) => d.code === "deny-rule");
  if (byRule) {
    return {
      ok: false,
      code: "deny-rule",
      reason: `${name} is denied by rule "${byRule.rule.source}"`,
      rule: byRule.rule,
      name,
    };
  }
  if (decisions.every((d) => d.code === "default")) {
    return {
      ok: false,
      code: "default",
      reason: `no allow rule matches ${name}, and the default is deny`,
      rule: compiled.defaultRef,
      name,
    };
  }
  const d = decisions.find((x) => x.code !== "default") ?? decisions[0];
  return { ok: false, code: d.code, reason: d.reason, rule: d.rule, name };
}

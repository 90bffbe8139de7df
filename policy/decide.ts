/**
 * Decisions: pure functions from a compiled policy and what sluice saw to a
 * verdict that names its reason and the rule that made it.
 *
 * Precedence, the same at every stage:
 *   1. any matching `deny` rule denies;
 *   2. otherwise any fully matching `allow` rule allows;
 *   3. otherwise `network.default` decides.
 * After DNS, a fourth check applies (`decideAddress`): with `private: deny`,
 * a name may not resolve to a non-public address unless an IP/CIDR allow rule
 * names that address.
 *
 * @module
 */
import {
  cidrContains,
  classifyIp,
  hostEndsInNumber,
  type Ip,
  isPrivateClass,
  parseIpLoose,
  unmapIp,
} from "./address.ts";
import {
  type CompiledPolicy,
  hostCandidates,
  isPassthrough,
  type RuleIndex,
  type RuleRef,
  ruleRef,
} from "./compile.ts";
import { hostMatches, normalizeHostname } from "./host.ts";
import { normalizePath, pathPart } from "./path.ts";
import type { Credential, CredentialHost, NetRule, OAuth2Spec } from "./types.ts";

/** A destination as sluice sees it: a normalized name, or an IP address. */
export type Destination = { kind: "name"; name: string } | { kind: "ip"; ip: Ip };

/** Machine-readable reason codes; `reason` carries the sentence for people. */
export type ReasonCode =
  | "deny-rule"
  | "allow-rule"
  | "default"
  | "needs-inspection"
  | "private-address"
  | "invalid-host"
  | "invalid-path"
  | "passthrough-uninspectable"
  // Data-path reasons, decided outside the policy but reported the same way:
  | "host-mismatch"
  | "missing-sni"
  | "not-tls"
  | "timeout"
  | "credential-violation";

/** The result of any decision. */
export type Decision = {
  verdict: "allow" | "deny";
  code: ReasonCode;
  /** One sentence a person can act on. Never contains a secret value. */
  reason: string;
  rule: RuleRef;
};

/** A connection-level decision, made before any HTTP request is seen. */
export type ConnectionDecision = Decision & {
  /** Whether each request must still be decided (HTTP rules apply to this destination). */
  inspect: boolean;
  tls: "intercept" | "passthrough";
};

/**
 * Parses a host as a client sent it (SNI, Host header, CONNECT target,
 * URL): an IP literal in any form a URL accepts (so `0x7f.1` is 127.0.0.1
 * and cannot sneak past an IP rule), a bracketed IPv6 address, or a DNS name.
 */
export function parseDestinationHost(
  raw: string,
): Destination | { kind: "invalid"; reason: string } {
  const ip = parseIpLoose(raw);
  if (ip) return { kind: "ip", ip: unmapIp(ip) };
  if (raw.startsWith("[")) {
    return { kind: "invalid", reason: `"${raw}" is not a valid IPv6 address` };
  }
  // URL parsing treats a host ending in a number as IPv4; one that does not
  // parse (1.2.3.999) is not a DNS name either.
  if (hostEndsInNumber(raw)) {
    return { kind: "invalid", reason: `"${raw}" is not a valid IPv4 address` };
  }
  const n = normalizeHostname(raw);
  if (!n.ok) return { kind: "invalid", reason: n.message };
  return { kind: "name", name: n.value };
}

/** Text form of a destination, IPv6 bracketed. */
export function formatDestination(d: Destination): string {
  if (d.kind === "name") return d.name;
  return d.ip.family === 6 ? `[${d.ip.text}]` : d.ip.text;
}

function candidates(index: RuleIndex, dest: Destination): NetRule[] {
  if (dest.kind === "name") return hostCandidates(index, dest.name);
  return ipCandidates(index, dest.ip);
}

function ipCandidates(index: RuleIndex, ip: Ip): NetRule[] {
  const out: NetRule[] = [];
  const exact = index.ips.get(ip.text);
  if (exact) out.push(...exact);
  for (const rule of index.cidrs) {
    if (rule.target.kind === "cidr" && cidrContains(rule.target.cidr, ip)) out.push(rule);
  }
  return out;
}

function portMatches(rule: NetRule, port: number): boolean {
  return rule.ports === null || rule.ports.includes(port);
}

function first(rules: NetRule[]): NetRule | undefined {
  let best: NetRule | undefined;
  for (const r of rules) if (!best || r.id < best.id) best = r;
  return best;
}

function defaultDecision(compiled: CompiledPolicy, what: string): Decision {
  const d = compiled.policy.network.default;
  return {
    verdict: d,
    code: "default",
    reason: d === "deny"
      ? `no allow rule matches ${what}, and the default is deny`
      : `no rule matches ${what}; the default is allow`,
    rule: compiled.defaultRef,
  };
}

/**
 * Decides whether a connection to a destination may proceed, before any
 * request is seen (CONNECT, TLS ClientHello, transparent redirect).
 *
 * Rules with methods or paths cannot be decided yet: if one could apply, the
 * verdict is allow with `inspect: true` and each request is then decided by
 * `decideRequest`. A passthrough connection cannot be inspected, so it is
 * denied in that case (the validator refuses policies where this can happen
 * for a named host; this guards wildcard corners).
 *
 * @example
 * ```ts
 * import { loadPolicyText } from "./load.ts";
 * const { compiled } = loadPolicyText("version: 1\nnetwork: { allow: [example.com:443] }\n", "p.yaml");
 * decideConnection(compiled, { kind: "name", name: "example.com" }, 443).verdict; // "allow"
 * ```
 */
export function decideConnection(
  compiled: CompiledPolicy,
  dest: Destination,
  port: number,
): ConnectionDecision {
  const name = formatDestination(dest);
  const tls = dest.kind === "name" && isPassthrough(compiled, dest.name) ? "passthrough" : (
    compiled.policy.tls.intercept ? "intercept" : "passthrough"
  );
  const denies = candidates(compiled.deny, dest).filter((r) => portMatches(r, port));
  const plainDeny = first(denies.filter((r) => !r.methods && !r.paths));
  if (plainDeny) {
    return {
      verdict: "deny",
      code: "deny-rule",
      reason: `${name}:${port} is denied by rule "${plainDeny.source}"`,
      rule: ruleRef(plainDeny),
      inspect: false,
      tls,
    };
  }
  const allows = candidates(compiled.allow, dest).filter((r) => portMatches(r, port));
  const httpDeny = first(denies);
  const plainAllow = first(allows.filter((r) => !r.methods && !r.paths));
  const httpAllow = first(allows.filter((r) => r.methods || r.paths));
  let base: Decision;
  let inspect: boolean;
  if (plainAllow) {
    base = {
      verdict: "allow",
      code: "allow-rule",
      reason: `${name}:${port} is allowed by rule "${plainAllow.source}"`,
      rule: ruleRef(plainAllow),
    };
    inspect = httpDeny !== undefined;
  } else if (httpAllow) {
    base = {
      verdict: "allow",
      code: "needs-inspection",
      reason: `${name}:${port} is allowed only for some requests, by rule "${httpAllow.source}"`,
      rule: ruleRef(httpAllow),
    };
    inspect = true;
  } else {
    base = defaultDecision(compiled, `${name}:${port}`);
    inspect = base.verdict === "allow" && httpDeny !== undefined;
  }
  if (inspect && tls === "passthrough") {
    const r = httpDeny ?? httpAllow!;
    return {
      verdict: "deny",
      code: "passthrough-uninspectable",
      reason: `rule "${r.source}" needs to see requests, but TLS to ${name} is passed through`,
      rule: ruleRef(r),
      inspect: false,
      tls,
    };
  }
  return { ...base, inspect, tls };
}

/** What a request-level decision looks at. `path` is the raw request target path (query allowed). */
export type RequestInfo = { method: string; dest: Destination; port: number; path: string };

function requestMatches(rule: NetRule, method: string, path: string): boolean {
  if (rule.methods && !rule.methods.includes(method)) return false;
  if (rule.paths && !rule.paths.some((g) => g.test(path))) return false;
  return true;
}

/**
 * Decides one HTTP request (intercepted HTTPS or plain HTTP). The path is
 * normalized first (dot segments removed, unreserved escapes decoded, query
 * dropped); a path that cannot be normalized is denied.
 *
 * The answer depends only on the policy, the method, the destination, the
 * port and the path up to its query or fragment, so it is remembered per
 * compiled policy under exactly that key ({@link REQUEST_MEMO_SIZE} keys,
 * forgotten all at once when full) and the same frozen Decision is returned
 * for a repeated request. Why: on keep-alive traffic most requests repeat one
 * of a few method/host/path shapes, and deciding again (path normalisation,
 * host candidates, rule filters, the reason sentence) was ~3 µs of sluice's
 * per-request layer; a remembered reason is also an already flat string,
 * which the audit line's JSON.stringify copies without flattening it first.
 * A new policy (reload) is a new compiled object, so nothing outlives it.
 */
export function decideRequest(compiled: CompiledPolicy, req: RequestInfo): Decision {
  const { dest } = req;
  // Unambiguous whatever the method holds: its length first; names have no spaces, IPs are
  // bracketed (a name never is), the port is a number and the path comes last.
  const host = dest.kind === "name" ? dest.name : `[${dest.ip.text}]`;
  const key = `${req.method.length}:${req.method} ${host} ${req.port} ${pathPart(req.path)}`;
  return requestMemo.get(compiled, key) ??
    requestMemo.keep(compiled, key, decideRequestOnce(compiled, req));
}

/**
 * Decisions remembered per compiled policy under a key the caller makes from everything the
 * decision depends on; forgotten all at once when `size` keys are held. A kept decision is frozen
 * with its rule: it is shared by every later caller, and the audit log keeps its serialised
 * fields per frozen decision (lib/ops/audit.ts). Lookup and keeping are apart, so a hit costs
 * no closure.
 */
class DecisionMemo {
  readonly #byPolicy = new WeakMap<CompiledPolicy, Map<string, Decision>>();
  constructor(readonly size: number) {}

  get(compiled: CompiledPolicy, key: string): Decision | undefined {
    return this.#byPolicy.get(compiled)?.get(key);
  }

  keep(compiled: CompiledPolicy, key: string, once: Decision): Decision {
    let memo = this.#byPolicy.get(compiled);
    if (memo === undefined) this.#byPolicy.set(compiled, memo = new Map());
    Object.freeze(once.rule);
    const decision = Object.freeze(once);
    if (memo.size >= this.size) memo.clear();
    memo.set(key, decision);
    return decision;
  }
}

/** How many request shapes {@link decideRequest} remembers per policy. */
export const REQUEST_MEMO_SIZE = 1024;

const requestMemo = new DecisionMemo(REQUEST_MEMO_SIZE);

function decideRequestOnce(compiled: CompiledPolicy, req: RequestInfo): Decision {
  const name = formatDestination(req.dest);
  const np = normalizePath(req.path);
  if (!np.ok) {
    return {
      verdict: "deny",
      code: "invalid-path",
      reason: `the request path cannot be normalized (${np.message}), so it is denied`,
      rule: compiled.defaultRef,
    };
  }
  const path = np.path;
  const method = req.method.toUpperCase();
  const what = `${method} ${name}:${req.port}${path}`;
  const deny = first(
    candidates(compiled.deny, req.dest).filter((r) =>
      portMatches(r, req.port) && requestMatches(r, method, path)
    ),
  );
  if (deny) {
    return {
      verdict: "deny",
      code: "deny-rule",
      reason: `${what} is denied by rule "${deny.source}"`,
      rule: ruleRef(deny),
    };
  }
  const allow = first(
    candidates(compiled.allow, req.dest).filter((r) =>
      portMatches(r, req.port) && requestMatches(r, method, path)
    ),
  );
  if (allow) {
    return {
      verdict: "allow",
      code: "allow-rule",
      reason: `${what} is allowed by rule "${allow.source}"`,
      rule: ruleRef(allow),
    };
  }
  return defaultDecision(compiled, what);
}

/**
 * Decides whether sluice may connect to an address it resolved (or was
 * given): IP/CIDR deny rules apply to resolved addresses too, and with
 * `private: deny` a non-public address is refused unless an IP/CIDR allow rule
 * names it. This is what stops `evil.example -> 169.254.169.254` (DNS
 * rebinding, SSRF to metadata services).
 */
export function decideAddress(
  compiled: CompiledPolicy,
  address: Ip,
  port: number,
  host?: string,
): Decision {
  // Remembered as decideRequest's are: the answer depends only on the policy, the address, the
  // port and the name it was resolved for (in the reason). Every request to a name is decided
  // again on the address dialled, and on keep-alive traffic that is the same few addresses.
  // Neither a name nor an address holds a space, and a name is never empty.
  const key = `${address.text} ${port} ${host ?? ""}`;
  return addressMemo.get(compiled, key) ??
    addressMemo.keep(compiled, key, decideAddressOnce(compiled, address, port, host));
}

/** How many address, port and name triples {@link decideAddress} remembers per policy. */
export const ADDRESS_MEMO_SIZE = 1024;

const addressMemo = new DecisionMemo(ADDRESS_MEMO_SIZE);

function decideAddressOnce(
  compiled: CompiledPolicy,
  address: Ip,
  port: number,
  host: string | undefined,
): Decision {
  const ip = unmapIp(address);
  const label = host ? `${host} (${ip.text})` : ip.text;
  const deny = first(
    ipCandidates(compiled.deny, ip).filter((r) => portMatches(r, port) && !r.methods && !r.paths),
  );
  if (deny) {
    return {
      verdict: "deny",
      code: "deny-rule",
      reason: `address ${label} is denied by rule "${deny.source}"`,
      rule: ruleRef(deny),
    };
  }
  const cls = classifyIp(ip);
  if (compiled.policy.network.private === "deny" && isPrivateClass(cls)) {
    const allow = first(ipCandidates(compiled.allow, ip).filter((r) => portMatches(r, port)));
    if (!allow) {
      return {
        verdict: "deny",
        code: "private-address",
        reason: `${label} is a ${cls} address; host rules never reach those`,
        rule: compiled.privateRef,
      };
    }
    return {
      verdict: "allow",
      code: "allow-rule",
      reason: `${cls} address ${ip.text} is named by rule "${allow.source}"`,
      rule: ruleRef(allow),
    };
  }
  return {
    verdict: "allow",
    code: "allow-rule",
    reason: `${ip.text} is a ${cls} address`,
    rule: compiled.privateRef,
  };
}

/**
 * Where an oauth2 credential's token endpoint is: its destination, port and origin-form path.
 * Null when the URL's host is not one sluice can connect to (validation reports it).
 */
export function tokenEndpoint(
  spec: Pick<OAuth2Spec, "tokenUrl">,
): { dest: Destination; port: number; path: string; authority: string } | null {
  const u = new URL(spec.tokenUrl);
  const dest = parseDestinationHost(u.hostname);
  if (dest.kind === "invalid") return null;
  return {
    dest,
    port: u.port ? Number(u.port) : 443,
    path: `${u.pathname}${u.search}`,
    authority: u.host,
  };
}

/** Whether a credential may be sent to this host and port. */
export function credentialAllowedFor(
  c: { hosts: readonly CredentialHost[] },
  name: string,
  port: number,
): boolean {
  return c.hosts.some((h) => (h.port === null || h.port === port) && hostMatches(h.pattern, name));
}

/**
 * Credential decision for a request to `name:port`: which credentials may be
 * substituted there, and, of the credentials whose placeholders were found in
 * the request, which are violations (found, but not scoped to this host).
 *
 * @param found names of credentials whose placeholders appear in the request
 */
export function decideCredentials(
  compiled: CompiledPolicy,
  dest: Destination,
  port: number,
  found: readonly string[] = [],
): { substitute: Credential[]; violations: Credential[] } {
  const bare = dest.kind === "name" ? dest.name : dest.ip.text;
  const substitute = compiled.credentials.filter((c) => credentialAllowedFor(c, bare, port));
  const violations = compiled.credentials.filter((c) =>
    found.includes(c.name) && !substitute.includes(c)
  );
  return { substitute, violations };
}

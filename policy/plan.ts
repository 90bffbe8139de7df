/**
 * The request plan: one pure function from what sluice knows about a request
 * (the connection it came on, its method, URL and header fields) to what
 * happens to it: refused (status, code, reason, rule and file:line) or
 * forwarded (where, with which Host, which path, which credentials
 * substituted). `serve` executes plans (lib/exchange/forward.ts); `explain` prints the
 * same plan. A decision is made once, here.
 *
 * The order, and why (each stage refuses before the next can act):
 *   1. the host must parse (an unparseable host is refused, 400);
 *   2. no placeholder in the host name: a name is looked up in DNS and sent
 *      as SNI, so a placeholder there would leave before any credential check;
 *   3. every Host header must name the request's authority (no domain
 *      fronting: a request decided for one host must not reach another
 *      virtual host at the same address); the Host sluice sends is always the
 *      authority it decided on;
 *   4. over TLS, the authority must be the host the connection was opened
 *      for (SNI or CONNECT target);
 *   5. the policy's request decision (host, port, method, normalized path);
 *   6. for an IP literal, the address decision (`private` guard); names are
 *      checked after DNS, by the caller, on the address actually dialled;
 *   7. credentials: every placeholder found (header names and values, Basic
 *      credentials, path, query) must be scoped to this host and port, and
 *      over plain HTTP to a host entry that names this port explicitly.
 *
 * @module
 */
import type { CompiledPolicy, RuleRef } from "./compile.ts";
import {
  credentialAllowedFor,
  decideAddress,
  decideCredentials,
  decideRequest,
  type Decision,
  type Destination,
  formatDestination,
  parseDestinationHost,
} from "./decide.ts";
import { bracketHost } from "./address.ts";
import { mergeSlashes } from "./path.ts";
import type { Fields, Found, PlaceholderScanner } from "./placeholders.ts";
import type { Credential } from "./types.ts";

/** What the plan is made from. Holds no secret (placeholders are not secrets). */
export type PlanInput = {
  /** TLS was terminated (https, wss) rather than plain HTTP. */
  secure: boolean;
  /**
   * Over TLS: the host the connection was opened for (the SNI, or the CONNECT
   * target or original destination when the client sent no SNI), formatted
   * like {@link formatDestination}.
   */
  connectionHost?: string;
  /**
   * True on the direct data path, where the TLS server name was checked once per name in the
   * certificate resolver and is not known per connection: the request is then decided on its
   * authority alone (which is also where it goes, so fronting cannot carry a credential
   * elsewhere), and `connectionHost` is not compared.
   */
  nameUnknown?: boolean;
  /** The port the request goes to. */
  port: number;
  method: string;
  /** The request's authority host as the server parsed it (URL hostname: IPv6 in brackets). */
  host: string;
  /** The request path as the server parsed it (dot segments already resolved). */
  pathname: string;
  /** The query with its `?`, or "". */
  search: string;
  /** The request's header fields as received. */
  headers: Fields;
  scanner: PlaceholderScanner;
};

/** A refusal: what the client is told and what the audit log records. */
export type Refusal = {
  verdict: "deny";
  /** The HTTP status sluice answers with. */
  status: 400 | 403;
  decision: Decision;
  /** The request's destination, when it parsed. */
  host?: string;
  /** The credential whose placeholder was misplaced, for a credential violation. */
  violation?: Credential;
  /** Where its placeholder was found. */
  places?: readonly string[];
};

/** A request to forward, and how. */
export type Forward = {
  verdict: "allow";
  dest: Destination;
  /** The destination as text (a name, an IPv4 address, or an IPv6 address in brackets). */
  host: string;
  port: number;
  /** The Host header to send: the authority decided on (port only when not the default). */
  hostHeader: string;
  /** The path and query to send: what was decided (runs of slashes merged). */
  target: string;
  /** The policy's request decision (the allow rule). */
  decision: Decision;
  /** For an IP literal, its address decision; names are checked after DNS. */
  address?: Decision;
  /** Credentials that may be substituted on this request (scoped to host and port). */
  substitute: Credential[];
  /** Every placeholder found in the head, by credential. */
  found: Found;
};

/** The plan for one request. */
export type Plan = Refusal | Forward;

function sluiceRule(compiled: CompiledPolicy, source: string): RuleRef {
  return { ...compiled.defaultRef, source, at: "sluice" };
}

/** What a policy without credentials decides for every request: nothing to substitute. */
const NO_CREDENTIALS: { substitute: Credential[]; violations: Credential[] } = Object.freeze({
  substitute: Object.freeze([]) as unknown as Credential[],
  violations: Object.freeze([]) as unknown as Credential[],
});

/** A refusal with its decision (a function of the module: not a closure made per request). */
function refuse(
  status: 400 | 403,
  code: Decision["code"],
  reason: string,
  rule: RuleRef,
  extra: Partial<Refusal> = {},
): Refusal {
  return { verdict: "deny", status, decision: { verdict: "deny", code, reason, rule }, ...extra };
}

/**
 * Plans one request; pure.
 *
 * @example
 * ```ts
 * import { loadPolicyText } from "./load.ts";
 * import { PlaceholderScanner } from "./placeholders.ts";
 * const { compiled } = loadPolicyText("version: 1\nnetwork: { allow: [a.test] }\n", "p.yaml");
 * const plan = planRequest(compiled, {
 *   secure: true, connectionHost: "a.test", port: 443, method: "GET", host: "a.test",
 *   pathname: "//x", search: "", headers: [["Host", "a.test"]],
 *   scanner: new PlaceholderScanner(new Map()),
 * });
 * plan.verdict === "allow" && plan.target; // "/x"
 * ```
 */
export function planRequest(compiled: CompiledPolicy, input: PlanInput): Plan {
  // 1. The host.
  const parsed = parseDestinationHost(input.host);
  if (parsed.kind === "invalid") {
    return refuse(
      400,
      "invalid-host",
      `invalid host ${JSON.stringify(input.host)}: ${parsed.reason}`,
      sluiceRule(compiled, "a request names a valid host"),
    );
  }
  const dest: Destination = parsed;
  const host = formatDestination(dest);
  const port = input.port;

  // 2. A placeholder in a name.
  const named = refuseNameWithPlaceholder(compiled, input.scanner, input.host, port, "host");
  if (named) return named;

  // 3. Host headers: each must name this authority.
  // Counted in a loop, not filtered into a list: this runs on every request.
  let hostFields = 0;
  let hostValue: string | undefined;
  for (let i = 0; i < input.headers.length; i++) {
    const [n, v] = input.headers[i];
    if (n.length === 4 && n.toLowerCase() === "host") {
      hostFields++;
      hostValue ??= v;
    }
  }
  if (hostFields > 1) {
    return refuse(
      400,
      "host-mismatch",
      `the request has ${hostFields} Host headers; one is allowed`,
      sluiceRule(compiled, "one Host header"),
      { host },
    );
  }
  const defaultPort = input.secure ? 443 : 80;
  if (hostValue !== undefined) {
    const value = hostValue;
    const named = hostHeaderTarget(value, defaultPort);
    if (!named || named.host !== host || named.port !== port) {
      for (const n of input.scanner.inName(value)) {
        return violation(compiled, n, ["header host"], host, port);
      }
      return refuse(
        403,
        "host-mismatch",
        `the Host header names ${JSON.stringify(value)} but the request is for ${host}:${port}; ` +
          "sluice sends a request only to the host it decided on",
        sluiceRule(compiled, "Host must match the request's authority"),
        { host },
      );
    }
  }

  // 4. Over TLS, the connection's host.
  if (input.secure && !input.nameUnknown && input.connectionHost !== host) {
    return refuse(
      403,
      "host-mismatch",
      `the request is for ${host} but the TLS connection was opened for ${
        input.connectionHost ?? "no name"
      }`,
      sluiceRule(compiled, "Host must match SNI"),
      { host },
    );
  }

  // 5. The policy's decision on the path as the upstream will read it.
  const pathname = mergeSlashes(input.pathname);
  const target = pathname + input.search;
  const decision = decideRequest(compiled, { method: input.method, dest, port, path: target });
  if (decision.verdict === "deny") return { verdict: "deny", status: 403, decision, host };

  // 6. IP literals: the address decision needs no DNS.
  const address = dest.kind === "ip" ? decideAddress(compiled, dest.ip, port) : undefined;
  if (address?.verdict === "deny") return { verdict: "deny", status: 403, decision: address, host };

  // 7. Credentials (none to decide in a policy without any).
  const found = input.scanner.scanRequest(target, input.headers);
  const creds = compiled.credentials.length === 0
    ? NO_CREDENTIALS
    : decideCredentials(compiled, dest, port, [...found.keys()]);
  let substitute = creds.substitute;
  const violating = creds.violations.length ? [...creds.violations] : [];
  if (!input.secure) {
    // Over plain HTTP a real value would cross the network in clear text: only credentials
    // whose hosts name this host AND this port explicitly.
    const bare = dest.kind === "name" ? dest.name : dest.ip.text;
    const explicit = substitute.filter((c) =>
      c.hosts.some((h) => h.port === port && credentialAllowedFor({ ...c, hosts: [h] }, bare, port))
    );
    for (const c of substitute) if (!explicit.includes(c) && found.has(c.name)) violating.push(c);
    substitute = explicit;
  }
  if (violating.length) {
    const c = violating[0];
    return violation(compiled, c.name, found.get(c.name) ?? [], host, port, input.secure);
  }
  return {
    verdict: "allow",
    dest,
    host,
    port,
    hostHeader: port === defaultPort ? bracketHost(host) : `${bracketHost(host)}:${port}`,
    target,
    decision,
    address,
    substitute,
    found,
  };
}

/** A refusal for a credential's placeholder headed where it may not go. */
function violation(
  compiled: CompiledPolicy,
  name: string,
  places: readonly string[],
  host: string,
  port: number,
  secure = true,
): Refusal {
  const c = compiled.credentials.find((x) => x.name === name)!;
  const where = places.length ? places.join(", ") : "the request";
  return refuse(
    403,
    "credential-violation",
    `the request carries the placeholder of credential ${c.name} (${where}), which may only be ` +
      `sent to ${c.hosts.map((h) => h.source).join(", ")}, not ${host}:${port}` +
      (secure ? "" : " over plain HTTP"),
    {
      list: "allow",
      index: -1,
      source: `credentials.${c.name}.hosts`,
      at: `${c.loc.file}:${c.loc.line}`,
    },
    { host, violation: c, places },
  );
}

/**
 * The refusal for a name that carries a placeholder (a host, an SNI, a
 * CONNECT target, a DNS question): names leave sluice (DNS, SNI) before any
 * request could be checked, so no credential's placeholder may be in one,
 * whatever its hosts. Used by the request plan, the connection stage, the
 * DNS server and `explain`.
 *
 * @param where what the name is, for the reason: "host", "SNI", "CONNECT target", "DNS question"
 * @returns the refusal, or undefined when the name holds no placeholder
 */
export function refuseNameWithPlaceholder(
  compiled: CompiledPolicy,
  scanner: PlaceholderScanner,
  name: string,
  _port: number,
  where: string,
): Refusal | undefined {
  const found = scanner.inName(name);
  if (!found.length) return undefined;
  const c = compiled.credentials.find((x) => x.name === found[0])!;
  return {
    verdict: "deny",
    status: 403,
    decision: {
      verdict: "deny",
      code: "credential-violation",
      reason: `the ${where} carries the placeholder of credential ${c.name}; a placeholder never ` +
        "goes in a name (it would leave in DNS or SNI before any check)",
      rule: {
        list: "allow",
        index: -1,
        source: `credentials.${c.name}.hosts`,
        at: `${c.loc.file}:${c.loc.line}`,
      },
    },
    host: name.toLowerCase(),
    violation: c,
    places: [where],
  };
}

/**
 * The host and port a Host header names, normalized like a destination;
 * undefined when it does not parse.
 */
export function hostHeaderTarget(
  value: string,
  defaultPort: number,
): { host: string; port: number } | undefined {
  const m = /^\s*(\[[^\]]*\]|[^:\s]*)(?::(\d{1,5}))?\s*$/.exec(value);
  if (!m || m[1] === "") return undefined;
  const port = m[2] === undefined ? defaultPort : Number(m[2]);
  if (port > 65535) return undefined;
  const parsed = parseDestinationHost(m[1].startsWith("[") ? m[1].slice(1, -1) : m[1]);
  if (parsed.kind === "invalid") return undefined;
  return { host: formatDestination(parsed), port };
}

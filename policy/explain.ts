/**
 * `explain`: every stage of sluice's decision for one request, composed in the
 * order the proxy applies them, so a person can see which stage decided and
 * why. Pure: the caller supplies the placeholders (fixed ones come from the
 * policy; derived ones from sluice's state).
 *
 * @module
 */
import type { CompiledPolicy } from "./compile.ts";
import {
  type ConnectionDecision,
  credentialAllowedFor,
  decideAddress,
  decideConnection,
  decideRequest,
  type Decision,
  type Destination,
  formatDestination,
  parseDestinationHost,
} from "./decide.ts";
import { mergeSlashes } from "./path.ts";
import { planRequest, refuseNameWithPlaceholder } from "./plan.ts";
import { PlaceholderScanner } from "./placeholders.ts";

/** What to explain. */
export type ExplainInput = {
  method: string;
  url: string;
  headers: readonly [string, string][];
  /** Credential name to placeholder, for every credential. */
  placeholders: ReadonlyMap<string, string>;
};

/** Where a placeholder was found: `header Authorization`, `query`, `path`. */
export type Place = string;

/** The full account of one request's fate. Holds names of credentials, never values. */
export type Explanation = {
  verdict: "allow" | "deny";
  /** The stage that denied, or "allowed". */
  decidedBy: "url" | "connection" | "request" | "address" | "credentials" | "allowed";
  method: string;
  url: string;
  destination: string;
  port: number;
  tls: "intercept" | "passthrough" | "none";
  connection?: ConnectionDecision;
  request?: Decision;
  address?: Decision;
  credentials: {
    /** `minted`: an oauth2 credential's token endpoint (sluice substitutes a token from it). */
    substituted: { name: string; places: Place[]; minted?: string }[];
    injected: { name: string; header: string; minted?: string }[];
    violations: { name: string; places: Place[]; hosts: string[] }[];
    /** A `client_cert` credential sluice would present in the upstream TLS handshake. */
    presented?: string;
    /** An aws_sigv4 credential whose placeholder keys sign the request: sluice re-signs it. */
    resigned?: string;
  };
  notes: string[];
  error?: string;
  /** The refusal as `serve` answers it (code, reason, rule), when denied after the connection stage. */
  refusal?: Decision;
};

const DEFAULT_PORTS: Record<string, number> = {
  "http:": 80,
  "https:": 443,
  "ws:": 80,
  "wss:": 443,
};

/**
 * Explains how sluice would treat a request.
 *
 * @example
 * ```ts
 * import { loadPolicyText } from "./load.ts";
 * const { compiled } = loadPolicyText("version: 1\nnetwork: { allow: [example.com] }\n", "p.yaml");
 * explain(compiled, { method: "GET", url: "https://example.com/", headers: [], placeholders: new Map() }).verdict;
 * // "allow"
 * ```
 */
export function explain(compiled: CompiledPolicy, input: ExplainInput): Explanation {
  const method = input.method.toUpperCase();
  const base: Explanation = {
    verdict: "deny",
    decidedBy: "url",
    method,
    url: input.url,
    destination: "",
    port: 0,
    tls: "none",
    credentials: { substituted: [], injected: [], violations: [] },
    notes: [],
  };
  let url: URL;
  try {
    url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(input.url) ? input.url : `https://${input.url}`);
  } catch {
    return {
      ...base,
      error: `"${input.url}" is not a URL; write it like https://api.example.com/path`,
    };
  }
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(input.url)) {
    base.notes.push("no scheme given: assumed https://");
  }
  const port = url.port ? Number(url.port) : DEFAULT_PORTS[url.protocol];
  if (port === undefined) {
    return {
      ...base,
      error: `sluice proxies http, https, ws and wss; "${url.protocol}" URLs are not HTTP`,
    };
  }
  const parsed = parseDestinationHost(url.hostname);
  if (parsed.kind === "invalid") return { ...base, error: parsed.reason };
  const dest: Destination = parsed;
  const out: Explanation = { ...base, destination: formatDestination(dest), port };
  const secure = url.protocol === "https:" || url.protocol === "wss:";
  const path = url.pathname + url.search;

  // A name with a placeholder is refused before anything else: it would leave in DNS/SNI.
  const named = refuseNameWithPlaceholder(
    compiled,
    new PlaceholderScanner(input.placeholders),
    url.hostname,
    port,
    secure ? "SNI" : "host",
  );
  if (named) {
    const c = named.violation!;
    out.credentials.violations.push({
      name: c.name,
      places: [...(named.places ?? [])],
      hosts: c.hosts.map((h) => h.source),
    });
    return { ...out, decidedBy: "credentials", verdict: "deny", refusal: named.decision };
  }
  const connection = decideConnection(compiled, dest, port);
  out.tls = secure ? connection.tls : "none";
  if (secure) out.connection = connection;
  if (secure && connection.verdict === "deny") {
    return { ...out, decidedBy: "connection", verdict: "deny" };
  }
  if (secure && connection.tls === "passthrough") {
    out.notes.push(
      "TLS is passed through: sluice cannot see requests or credentials on this connection",
    );
    if (dest.kind === "ip") out.address = decideAddress(compiled, dest.ip, port);
    else out.notes.push("the address check runs after DNS, when sluice connects");
    const denied = out.address?.verdict === "deny";
    return {
      ...out,
      decidedBy: denied ? "address" : "allowed",
      verdict: denied ? "deny" : "allow",
    };
  }

  // Everything after the connection stage is the request plan `serve` executes.
  const plan = planRequest(compiled, {
    secure,
    connectionHost: formatDestination(dest),
    port,
    method,
    host: url.hostname,
    pathname: url.pathname,
    search: url.search,
    headers: input.headers,
    scanner: new PlaceholderScanner(input.placeholders),
  });
  if (plan.verdict === "deny") {
    const d = plan.decision;
    if (d.code === "credential-violation" && plan.violation) {
      const c = plan.violation;
      out.credentials.violations.push({
        name: c.name,
        places: [...(plan.places ?? [])],
        hosts: c.hosts.map((h) => h.source),
      });
      // The request stage itself allowed it: show that decision too.
      out.request = decideRequest(compiled, { method, dest, port, path: mergeSlashes(path) });
      return { ...out, decidedBy: "credentials", verdict: "deny", refusal: d };
    }
    if (d.code === "private-address") out.address = d;
    else out.request = d;
    return {
      ...out,
      decidedBy: d.code === "private-address"
        ? "address"
        : d.code === "invalid-host"
        ? "url"
        : "request",
      verdict: "deny",
      refusal: d,
    };
  }
  out.request = plan.decision;
  out.address = plan.address;
  if (dest.kind !== "ip") {
    out.notes.push(
      "the address check (private ranges, IP deny rules) runs after DNS, when sluice connects",
    );
  }
  for (const c of plan.substitute) {
    const places = (plan.found.get(c.name) ?? []).filter((p) =>
      c.in.includes(p.split(" ")[0] as never)
    );
    if (c.kind === "aws_sigv4" && plan.found.has(c.name)) {
      out.credentials.resigned = c.name;
      continue;
    }
    const minted = c.oauth2 ? { minted: c.oauth2.tokenUrl } : {};
    if (places.length) {
      out.credentials.substituted.push({ name: c.name, places: [...places], ...minted });
    }
    if (c.inject) {
      out.credentials.injected.push({ name: c.name, header: c.inject.header, ...minted });
    }
  }
  if (secure) {
    const bare = dest.kind === "name" ? dest.name : dest.ip.text;
    const cert = compiled.policy.clientCerts.find((c) => credentialAllowedFor(c, bare, port));
    if (cert) out.credentials.presented = cert.name;
  }
  if (!secure && plan.substitute.length) {
    out.notes.push("plain HTTP: the real value would cross the network unencrypted");
  }
  if (plan.target !== path) out.notes.push(`forwarded as ${plan.target} (runs of slashes merged)`);
  return { ...out, decidedBy: "allowed", verdict: "allow" };
}

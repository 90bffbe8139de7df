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
  decideAddress,
  decideConnection,
  decideCredentials,
  decideRequest,
  type Decision,
  type Destination,
  formatDestination,
  parseDestinationHost,
} from "./decide.ts";

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
    substituted: { name: string; places: Place[] }[];
    injected: { name: string; header: string }[];
    violations: { name: string; places: Place[]; hosts: string[] }[];
  };
  notes: string[];
  error?: string;
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

  out.request = decideRequest(compiled, { method, dest, port, path });
  if (out.request.verdict === "deny") return { ...out, decidedBy: "request", verdict: "deny" };

  if (dest.kind === "ip") {
    out.address = decideAddress(compiled, dest.ip, port);
    if (out.address.verdict === "deny") return { ...out, decidedBy: "address", verdict: "deny" };
  } else {
    out.notes.push(
      "the address check (private ranges, IP deny rules) runs after DNS, when sluice connects",
    );
  }

  const found = findPlaceholders(input, url, compiled);
  const creds = decideCredentials(compiled, dest, port, [...found.keys()]);
  for (const c of creds.substitute) {
    const places = (found.get(c.name) ?? []).filter((p) => c.in.includes(p.split(" ")[0] as never));
    if (places.length) out.credentials.substituted.push({ name: c.name, places });
    if (c.inject) out.credentials.injected.push({ name: c.name, header: c.inject.header });
  }
  for (const c of creds.violations) {
    out.credentials.violations.push({
      name: c.name,
      places: found.get(c.name)!,
      hosts: c.hosts.map((h) => h.source),
    });
  }
  if (!secure && creds.substitute.length) {
    out.notes.push("plain HTTP: the real value would cross the network unencrypted");
  }
  if (out.credentials.violations.length) {
    return { ...out, decidedBy: "credentials", verdict: "deny" };
  }
  return { ...out, decidedBy: "allowed", verdict: "allow" };
}

/**
 * Finds credential placeholders in the places sluice inspects: header values
 * (also inside `Basic` credentials, which are base64), the query and the path.
 */
function findPlaceholders(
  input: ExplainInput,
  url: URL,
  compiled: CompiledPolicy,
): Map<string, Place[]> {
  const found = new Map<string, Place[]>();
  const add = (name: string, place: Place) => {
    const list = found.get(name) ?? [];
    if (!list.includes(place)) list.push(place);
    found.set(name, list);
  };
  for (const c of compiled.credentials) {
    const ph = input.placeholders.get(c.name);
    if (!ph) continue;
    for (const [hName, hValue] of input.headers) {
      if (hValue.includes(ph) || basicDecoded(hValue).includes(ph)) add(c.name, `header ${hName}`);
    }
    if (safeDecode(url.search).includes(ph)) add(c.name, "query");
    if (safeDecode(url.pathname).includes(ph)) add(c.name, "path");
  }
  return found;
}

function basicDecoded(value: string): string {
  const m = /^\s*basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(value);
  if (!m) return "";
  try {
    return atob(m[1]);
  } catch {
    return "";
  }
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/**
 * Parsing one `network.allow` / `network.deny` entry in any of its forms:
 *
 * | form | example |
 * |---|---|
 * | host, any port | `api.openai.com` |
 * | host and port | `registry.npmjs.org:443` |
 * | subdomains (not the apex) | `*.githubusercontent.com` |
 * | IPv4 / IPv6 literal | `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:8443` |
 * | CIDR, optional port | `10.20.0.0/16:5432`, `[fd00::/8]:53` |
 * | short HTTP rule | `GET,HEAD api.github.com/repos/acme/**` (methods optional) |
 * | long HTTP rule | `{ host, ports, methods, paths }` |
 *
 * @module
 */
import { type Cidr, type Ip, parseCidr, parseIp, unmapIp } from "./address.ts";
import type { Loc } from "./errors.ts";
import { parseHostPattern } from "./host.ts";
import { compilePathGlob, type PathGlob } from "./path.ts";
import type { Target } from "./types.ts";

/** A rule's pieces before it is given its list and id. */
export type ParsedRule = {
  target: Target;
  ports: number[] | null;
  methods: string[] | null;
  paths: PathGlob[] | null;
};

/** A problem in one rule; `offset` is the column offset inside the rule text when known. */
export type RuleProblem = { message: string; hint?: string; severity?: "error" | "warning" };

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** Methods sluice knows; others are allowed (WebDAV, custom) but warned about, to catch typos. */
export const KNOWN_METHODS: readonly string[] = [
  "GET",
  "HEAD",
  "POST",
  "PUT",
  "PATCH",
  "DELETE",
  "OPTIONS",
  "CONNECT",
  "TRACE",
];

/**
 * Parses a port number written in a rule. Port 0 is not a destination.
 */
export function parsePort(text: string | number): number | RuleProblem {
  const s = String(text);
  if (!/^\d{1,5}$/.test(s)) {
    return {
      message: `"${s}" is not a port number`,
      hint: "ports are whole numbers from 1 to 65535",
    };
  }
  const n = Number(s);
  if (n < 1 || n > 65535) {
    return {
      message: `port ${n} is out of range`,
      hint: "ports are whole numbers from 1 to 65535",
    };
  }
  return n;
}

/**
 * Parses and normalizes HTTP method names (uppercased). Unknown but valid
 * tokens produce warnings, not errors.
 */
export function parseMethods(list: readonly string[], problems: RuleProblem[]): string[] {
  const out: string[] = [];
  for (const raw of list) {
    const m = raw.trim().toUpperCase();
    if (m === "*") {
      problems.push({
        message: `"*" is not a method`,
        hint: "leave methods out to allow every method",
      });
      continue;
    }
    if (!TOKEN.test(m)) {
      problems.push({ message: `"${raw}" is not a valid HTTP method name` });
      continue;
    }
    if (!KNOWN_METHODS.includes(m)) {
      const near = KNOWN_METHODS.find((k) => sameLetters(k, m));
      problems.push({
        severity: "warning",
        message: `"${m}" is not a standard HTTP method`,
        hint: near
          ? `did you mean ${near}?`
          : "it will only match requests using exactly that method",
      });
    }
    if (!out.includes(m)) out.push(m);
  }
  return out;
}

function sameLetters(a: string, b: string): boolean {
  return a.length === b.length && [...a].sort().join() === [...b].sort().join();
}

/**
 * Parses a destination without HTTP parts: `host`, `host:port`, `*.domain`,
 * an IP literal (IPv6 bracketed when a port follows), or a CIDR with an
 * optional port.
 */
export function parseDestination(
  text: string,
): { target: Target; port: number | null } | RuleProblem {
  // [v6], [v6]:port, [v6/len], [v6/len]:port
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close === -1) return { message: `"${text}" has "[" without "]"` };
    const inner = text.slice(1, close);
    const rest = text.slice(close + 1);
    let port: number | null = null;
    if (rest !== "") {
      if (!rest.startsWith(":")) return { message: `unexpected "${rest}" after "]"` };
      const p = parsePort(rest.slice(1));
      if (typeof p !== "number") return p;
      port = p;
    }
    const target = ipOrCidr(inner);
    if ("message" in target) return target;
    if (target.kind === "ip" && target.ip.family !== 6) {
      return {
        message: `"${inner}" in brackets must be an IPv6 address`,
        hint: `write ${inner} without brackets`,
      };
    }
    return { target, port };
  }
  // Unbracketed IPv6 (two or more colons) cannot carry a port.
  if ((text.match(/:/g)?.length ?? 0) >= 2) {
    const target = ipOrCidr(text);
    if ("message" in target) {
      return { ...target, hint: `write an IPv6 address with a port as "[2001:db8::1]:443"` };
    }
    return { target, port: null };
  }
  const colon = text.lastIndexOf(":");
  const hostPart = colon === -1 ? text : text.slice(0, colon);
  let port: number | null = null;
  if (colon !== -1) {
    const p = parsePort(text.slice(colon + 1));
    if (typeof p !== "number") return p;
    port = p;
  }
  if (hostPart.includes("/")) {
    const target = ipOrCidr(hostPart);
    if ("message" in target) return target;
    return { target, port };
  }
  if (/^[0-9.]+$/.test(hostPart)) {
    const ip = parseIp(hostPart);
    if (!ip) {
      return {
        message: `"${hostPart}" is not a valid IPv4 address`,
        hint: "write four decimal numbers 0-255 without leading zeros, like 203.0.113.7",
      };
    }
    return { target: { kind: "ip", ip }, port };
  }
  const pattern = parseHostPattern(hostPart);
  if (!pattern.ok) return { message: pattern.message, hint: pattern.hint };
  return { target: { kind: "host", pattern: pattern.value }, port };
}

function ipOrCidr(text: string): Target | RuleProblem {
  if (text.includes("/")) {
    const c = parseCidr(text);
    if (!c.ok) return { message: c.message, hint: c.hint };
    return { kind: "cidr", cidr: c.cidr as Cidr };
  }
  const ip = parseIp(text);
  if (!ip) return { message: `"${text}" is not a valid IP address` };
  // ::ffff:10.0.0.1 is 10.0.0.1 everywhere in sluice; index it that way or it could never match.
  return { kind: "ip", ip: unmapIp(ip as Ip) };
}

/**
 * Parses a rule written as a string: a destination, optionally preceded by
 * comma-separated methods and a space, optionally followed by a path glob.
 *
 * @example
 * ```ts
 * parseRuleString("GET,HEAD api.github.com/repos/acme/**", []);
 * ```
 */
export function parseRuleString(text: string, problems: RuleProblem[]): ParsedRule | undefined {
  const trimmed = text.trim();
  if (trimmed === "") {
    problems.push({ message: "the rule is empty" });
    return undefined;
  }
  const words = trimmed.split(/\s+/);
  if (words.length > 2) {
    problems.push({
      message: `"${text}" has ${words.length} words; a short rule is "METHODS host[:port]/path"`,
      hint: "separate methods with commas, not spaces (GET,HEAD)",
    });
    return undefined;
  }
  let methods: string[] | null = null;
  if (words.length === 2) {
    const before = problems.length;
    methods = parseMethods(words[0].split(","), problems);
    if (problems.slice(before).some((p) => p.severity !== "warning")) return undefined;
  }
  const rest = words[words.length - 1];
  // A CIDR's "/" belongs to the destination; any other "/" starts a path.
  let dest = rest;
  let path: string | null = null;
  const cidrLike = /^(\d{1,3}(\.\d{1,3}){3}\/\d+(:\d+)?|\[[^\]]*\])$/.test(rest) ||
    (!rest.startsWith("[") && (rest.match(/:/g)?.length ?? 0) >= 2);
  const slash = cidrLike ? -1 : rest.indexOf("/", rest.startsWith("[") ? rest.indexOf("]") : 0);
  if (slash !== -1) {
    dest = rest.slice(0, slash);
    path = rest.slice(slash);
  }
  const d = parseDestination(dest);
  if ("message" in d) {
    problems.push(d);
    return undefined;
  }
  let paths: PathGlob[] | null = null;
  if (path !== null) {
    const g = compilePathGlob(path);
    if (!g.ok) {
      problems.push({ message: g.message, hint: g.hint });
      return undefined;
    }
    paths = [g.glob];
  }
  if ((methods || paths) && d.target.kind === "cidr") {
    problems.push(cidrHttpProblem());
    return undefined;
  }
  return { target: d.target, ports: d.port === null ? null : [d.port], methods, paths };
}

/** CIDR rules are enforced by netfilter on raw packets, where there is no HTTP to look at. */
export function cidrHttpProblem(): RuleProblem {
  return {
    message: "a CIDR rule cannot have methods or paths: CIDRs are enforced on raw TCP/UDP",
    hint: "name the host or IP address for HTTP rules",
  };
}

/** Where a problem in the long form sits: the key it concerns. */
export type LongFormField = "host" | "ports" | "methods" | "paths";

/**
 * Parses the long form `{ host, ports, methods, paths }` once its fields have
 * been read as strings/numbers. Problems carry the field they concern so the
 * caller can point at the right line.
 */
export function parseLongRule(
  fields: {
    host: string;
    ports?: readonly (string | number)[];
    methods?: readonly string[];
    paths?: readonly string[];
  },
  problems: Array<RuleProblem & { field: LongFormField; index?: number }>,
): ParsedRule | undefined {
  let ok = true;
  const add = (field: LongFormField, p: RuleProblem, index?: number) => {
    problems.push({ ...p, field, index });
    if (p.severity !== "warning") ok = false;
  };
  const d = parseDestination(fields.host);
  let target: Target | undefined;
  if ("message" in d) {
    add("host", d);
  } else if (d.port !== null) {
    add("host", { message: `put the port in "ports", not in "host"`, hint: `ports: [${d.port}]` });
  } else {
    target = d.target;
  }
  let ports: number[] | null = null;
  if (fields.ports) {
    ports = [];
    fields.ports.forEach((raw, i) => {
      const p = parsePort(raw);
      if (typeof p === "number") ports!.push(p);
      else add("ports", p, i);
    });
    if (fields.ports.length === 0) {
      add("ports", { message: "ports is empty", hint: "leave it out to allow every port" });
    }
  }
  let methods: string[] | null = null;
  if (fields.methods) {
    const local: RuleProblem[] = [];
    methods = parseMethods(fields.methods, local);
    local.forEach((p) => add("methods", p));
    if (fields.methods.length === 0) {
      add("methods", { message: "methods is empty", hint: "leave it out to allow every method" });
    }
  }
  let paths: PathGlob[] | null = null;
  if (fields.paths) {
    paths = [];
    fields.paths.forEach((raw, i) => {
      const g = compilePathGlob(raw);
      if (g.ok) paths!.push(g.glob);
      else add("paths", { message: g.message, hint: g.hint }, i);
    });
    if (fields.paths.length === 0) {
      add("paths", { message: "paths is empty", hint: "leave it out to allow every path" });
    }
  }
  if (target?.kind === "cidr" && (methods || paths)) {
    add("host", cidrHttpProblem());
  }
  if (!ok || !target) return undefined;
  return { target, ports, methods, paths };
}

/** Renders a parsed rule in the short syntax, for summaries and decisions. */
export function formatRule(rule: ParsedRule): string {
  const t = rule.target;
  let dest = t.kind === "host"
    ? (t.pattern.kind === "exact" ? t.pattern.name : `*.${t.pattern.suffix}`)
    : t.kind === "ip"
    ? t.ip.text
    : t.cidr.text;
  const bracket = (t.kind === "ip" && t.ip.family === 6) ||
    (t.kind === "cidr" && t.cidr.family === 6);
  if (rule.ports) {
    const ports = rule.ports.length === 1 ? String(rule.ports[0]) : `{${rule.ports.join(",")}}`;
    dest = bracket ? `[${dest}]:${ports}` : `${dest}:${ports}`;
  }
  const methods = rule.methods ? `${rule.methods.join(",")} ` : "";
  const paths = rule.paths
    ? (rule.paths.length === 1
      ? rule.paths[0].source
      : `{${rule.paths.map((p) => p.source).join(",")}}`)
    : "";
  return `${methods}${dest}${paths}`;
}

/** Just the location type, re-exported for callers that build problems with positions. */
export type { Loc };

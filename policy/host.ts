/**
 * Host names: normalization and the `*.` wildcard.
 *
 * Names compare case-insensitively, ignore one trailing dot, and compare IDNs
 * in punycode, so `Bücher.Example.` and `xn--bcher-kva.example` are one name.
 * The same function normalizes rule hosts at load time and request hosts (SNI,
 * Host, CONNECT targets) at run time, so both sides always agree.
 *
 * @module
 */
import { domainToASCII } from "node:url";

/** A host pattern: one exact name, or every subdomain (at any depth) of `suffix` but not `suffix` itself. */
export type HostPattern =
  | { kind: "exact"; name: string }
  | { kind: "wildcard"; suffix: string };

/** Success with a value, or a message (and maybe a hint) saying what is wrong. */
export type Parsed<T> = { ok: true; value: T } | { ok: false; message: string; hint?: string };

const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;

/**
 * Normalizes a DNS host name: lowercase, one trailing dot removed, IDN labels
 * converted to punycode, then checked label by label (letters, digits, `-`,
 * `_`; 1 to 63 characters; at most 253 in all).
 *
 * @example
 * ```ts
 * normalizeHostname("Bücher.Example."); // { ok: true, value: "xn--bcher-kva.example" }
 * ```
 */
export function normalizeHostname(raw: string): Parsed<string> {
  // Every request's host goes through here (more than once: plan, decision, route), and a
  // workload talks to few hosts: answers are remembered, bounded. Uncached, it was ~1% of the
  // CPU profile of bench/request_path_bench.ts (a regex per label, a split, a lowercase).
  let known = normalized.get(raw);
  if (known === undefined) {
    known = Object.freeze(normalizeUncached(raw));
    if (normalized.size >= NORMALIZED_LIMIT) normalized.clear();
    normalized.set(raw, known);
  }
  return known;
}

/** Hosts already normalized (results are frozen; both outcomes are kept). */
const normalized = new Map<string, Parsed<string>>();
const NORMALIZED_LIMIT = 4096;

function normalizeUncached(raw: string): Parsed<string> {
  let name = raw.endsWith(".") ? raw.slice(0, -1) : raw;
  if (name.length === 0) return { ok: false, message: "the host name is empty" };
  // Fast path: plain ASCII needs only lowercasing. Anything else goes through
  // the WHATWG IDN algorithm (UTS #46), the one browsers and Deno's URL use.
  if (/[^\x21-\x7e]/.test(name)) {
    const ascii = domainToASCII(name);
    if (ascii === "") {
      return { ok: false, message: `"${raw}" is not a valid internationalized host name` };
    }
    name = ascii;
  } else {
    name = name.toLowerCase();
  }
  if (name.length > 253) {
    return {
      ok: false,
      message: `the host name is ${name.length} characters long; the limit is 253`,
    };
  }
  for (const label of name.split(".")) {
    if (!LABEL.test(label)) {
      if (label === "") {
        return { ok: false, message: `"${raw}" has an empty label (two dots in a row?)` };
      }
      if (label.includes("*")) {
        return {
          ok: false,
          message: `"${raw}": a wildcard may only be the whole first label`,
          hint: `write "*.${name.split(".").slice(-2).join(".")}" for every subdomain`,
        };
      }
      return {
        ok: false,
        message: `"${raw}" is not a valid host name: label "${label}" may hold only ` +
          "letters, digits, '-' and '_', not at its ends, and at most 63 characters",
      };
    }
  }
  return { ok: true, value: name };
}

/**
 * Parses a host pattern from a rule: an exact name, or `*.` followed by a name
 * meaning every subdomain at any depth (not the apex, matching Deno's allowNet).
 *
 * @example
 * ```ts
 * parseHostPattern("*.GitHubUserContent.com");
 * // { ok: true, value: { kind: "wildcard", suffix: "githubusercontent.com" } }
 * ```
 */
export function parseHostPattern(raw: string): Parsed<HostPattern> {
  if (raw === "*") {
    return {
      ok: false,
      message: `"*" alone is not a host pattern`,
      hint: "set `network.default: allow` to allow every destination",
    };
  }
  const starLabels = raw.split(".").filter((l) => l.includes("*"));
  if (starLabels.length > 1 || (starLabels.length === 1 && !raw.startsWith("*."))) {
    const fix = raw.split(".").filter((l) => l && !l.includes("*")).join(".");
    return {
      ok: false,
      message: `"${raw}": a wildcard may only be the whole first label`,
      hint: fix ? `use "*.${fix}"` : undefined,
    };
  }
  if (raw.startsWith("*.")) {
    const rest = normalizeHostname(raw.slice(2));
    if (!rest.ok) return rest;
    return { ok: true, value: { kind: "wildcard", suffix: rest.value } };
  }
  const exact = normalizeHostname(raw);
  if (!exact.ok) return exact;
  return { ok: true, value: { kind: "exact", name: exact.value } };
}

/** Whether a normalized host name matches a pattern. */
export function hostMatches(pattern: HostPattern, name: string): boolean {
  if (pattern.kind === "exact") return pattern.name === name;
  // "x.example.com".endsWith(".example.com"): the dot keeps "badexample.com" out.
  return name.length > pattern.suffix.length &&
    name.endsWith(pattern.suffix) &&
    name.charCodeAt(name.length - pattern.suffix.length - 1) === 46;
}

/** Renders a pattern back to policy syntax. */
export function formatHostPattern(pattern: HostPattern): string {
  return pattern.kind === "exact" ? pattern.name : `*.${pattern.suffix}`;
}

/**
 * The parent suffixes of a name from longest to shortest, used to look up
 * wildcard rules in a map instead of scanning them: `a.b.c` gives `b.c`, `c`.
 */
export function parentSuffixes(name: string): string[] {
  const out: string[] = [];
  let i = name.indexOf(".");
  while (i !== -1) {
    out.push(name.slice(i + 1));
    i = name.indexOf(".", i + 1);
  }
  return out;
}

/**
 * Request paths: normalization and globs.
 *
 * Paths are normalized before any rule sees them, so `/repos/acme/%2e%2e/x`
 * cannot reach `/repos/x` past a `/repos/acme/**` rule. Globs are normalized
 * by the same function, so a rule and a request always compare like with like.
 *
 * @module
 */

const UNRESERVED = /[A-Za-z0-9\-._~]/;

/**
 * Normalizes a request target's path:
 * 1. the query and fragment are dropped;
 * 2. percent-escapes of unreserved characters are decoded (`%41` -> `A`,
 *    `%2e` -> `.`); other escapes are kept, uppercased (`%2f` -> `%2F`: an
 *    encoded slash is not a separator);
 * 3. dot segments are removed (RFC 3986 5.2.4), after decoding.
 * Double slashes are kept: servers disagree on them, so globs see them as
 * written. An invalid escape (`%zz`) makes the path unparseable.
 *
 * @example
 * ```ts
 * normalizePath("/a/%2E%2e/b?x=1"); // { ok: true, path: "/b" }
 * ```
 */
export function normalizePath(
  raw: string,
): { ok: true; path: string } | { ok: false; message: string } {
  let end = raw.length;
  const q = raw.indexOf("?");
  if (q !== -1) end = q;
  const h = raw.indexOf("#");
  if (h !== -1 && h < end) end = h;
  const s = raw.slice(0, end);
  if (!s.startsWith("/")) return { ok: false, message: `path "${s}" does not start with /` };
  let decoded = "";
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c !== "%") {
      decoded += c;
      continue;
    }
    const hex = s.slice(i + 1, i + 3);
    if (!/^[0-9A-Fa-f]{2}$/.test(hex)) {
      return { ok: false, message: `invalid percent-escape "%${hex}"` };
    }
    const ch = String.fromCharCode(parseInt(hex, 16));
    decoded += UNRESERVED.test(ch) ? ch : `%${hex.toUpperCase()}`;
    i += 2;
  }
  return { ok: true, path: removeDotSegments(decoded) };
}

function removeDotSegments(path: string): string {
  const segments = path.split("/");
  const out: string[] = [];
  for (let i = 1; i < segments.length; i++) {
    const seg = segments[i];
    const last = i === segments.length - 1;
    if (seg === ".") {
      if (last) out.push("");
    } else if (seg === "..") {
      out.pop();
      if (last) out.push("");
    } else {
      out.push(seg);
    }
  }
  return "/" + out.join("/");
}

/** A compiled path glob. `source` is the normalized glob text. */
export type PathGlob = { source: string; test(path: string): boolean };

/**
 * Compiles a path glob once. `*` matches within one segment (never `/`);
 * `**` must be a whole segment and matches any number of segments, so
 * `/a/**` matches `/a`, `/a/` and everything below `/a/`, but not `/ab`.
 * Other characters match themselves. The glob is normalized like a path.
 *
 * @example
 * ```ts
 * const g = compilePathGlob("/repos/acme/**");
 * g.ok && g.glob.test("/repos/acme/x/y"); // true
 * ```
 */
export function compilePathGlob(
  glob: string,
): { ok: true; glob: PathGlob } | { ok: false; message: string; hint?: string } {
  if (!glob.startsWith("/")) {
    return {
      ok: false,
      message: `path glob "${glob}" does not start with /`,
      hint: `write "/${glob}"`,
    };
  }
  if (glob.includes("?") || glob.includes("#")) {
    return {
      ok: false,
      message: `path glob "${glob}" has a query or fragment`,
      hint: "rules match paths only; the query is ignored",
    };
  }
  const n = normalizePath(glob);
  if (!n.ok) return { ok: false, message: `path glob "${glob}": ${n.message}` };
  const segments = n.path.split("/").slice(1);
  let re = "^";
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i];
    if (seg === "**") {
      // "/**" at the end: the parent itself, or anything below it.
      // "/**/" in the middle: zero or more whole segments.
      re += i === segments.length - 1 ? "(?:/.*)?" : "(?:/[^/]*)*";
      continue;
    }
    if (seg.includes("**")) {
      return {
        ok: false,
        message: `path glob "${glob}": "**" must be a whole segment`,
        hint: `write "/**/" between slashes, or "*" to match within one segment`,
      };
    }
    re += "/" + seg.split("*").map(escapeRegExp).join("[^/]*");
  }
  const regex = new RegExp(re + "$");
  return { ok: true, glob: { source: n.path, test: (path: string) => regex.test(path) } };
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/**
 * Request paths: normalization and globs.
 *
 * Paths are normalized before any rule sees them, so `/repos/acme/%2e%2e/x`
 * cannot reach `/repos/x` past a `/repos/acme/**` rule. Globs are normalized
 * by the same function, so a rule and a request always compare like with like.
 *
 * Globs compile once to a small automaton run in O(path length x glob
 * length). They are not RegExps because a backtracking RegExp for a glob with
 * several wildcards is polynomial in the path, which the workload controls:
 * `/*a*a*a*b` as a RegExp took 86 s on a 1,000-character segment in V8.
 *
 * @module
 */

/** The result of {@linkcode normalizePath}. */
export type NormalizedPath = { ok: true; path: string } | { ok: false; message: string };

/** A compiled path glob. */
export type PathGlob = {
  /** The normalized glob text, as it matches (`/%7euser/*` reads `/~user/*`). */
  source: string;
  /** Whether a path from {@linkcode normalizePath} matches; does no parsing. */
  test(path: string): boolean;
};

/** The result of {@linkcode compilePathGlob}. */
export type PathGlobResult =
  | { ok: true; glob: PathGlob }
  | { ok: false; message: string; hint?: string };

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const l = c | 0x20;
  if (l >= 0x61 && l <= 0x66) return l - 0x61 + 10;
  return -1;
}

function isUnreserved(c: number): boolean {
  return (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) ||
    c === 0x2d || c === 0x2e || c === 0x5f || c === 0x7e;
}

/**
 * A request target without its query and fragment: the part {@link normalizePath} reads.
 *
 * @param raw The request target as the client sent it.
 * @returns Everything before the first `?` or `#`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { pathPart } from "./path.ts";
 * assert.equal(pathPart("/a#f?q"), "/a");
 * ```
 */
export function pathPart(raw: string): string {
  let end = raw.length;
  const q = raw.indexOf("?");
  if (q !== -1) end = q;
  const h = raw.indexOf("#");
  if (h !== -1 && h < end) end = h;
  return end === raw.length ? raw : raw.slice(0, end);
}

/**
 * Normalizes a request target's path (origin form, as in `GET /a/b?x HTTP/1.1`):
 * 1. the query and fragment are dropped (`/a?x=/b` is `/a`);
 * 2. percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
 *    decoded in either case (`%41` is `A`, `%7e` and `%7E` are `~`); other
 *    escapes are kept, uppercased (`%2f` is `%2F`: an encoded slash is not a
 *    separator, and `%25` stays `%25`, so nothing is decoded twice);
 * 3. dot segments are removed as RFC 3986 section 5.2.4 says, after
 *    decoding, so `/a/%2e%2E/b` is `/b`, `/a/./b` is `/a/b`, and `/..` is `/`;
 * 4. runs of slashes are merged (`//admin//x` is `/admin/x`): common servers
 *    (nginx's default `merge_slashes`, many frameworks) serve `//admin/x` as
 *    `/admin/x`, so a rule on `/admin/**` must see it that way. sluice also
 *    forwards the merged path (see {@link mergeSlashes}), so what the upstream
 *    reads is what was decided.
 *
 * Nothing else changes: case is kept (paths are case-sensitive). A path that does not start with `/`
 * (including the `OPTIONS *` target, which the caller handles) or has an
 * invalid escape (`%zz`, `%4`) is refused: unparseable means denied.
 *
 * @param raw The request target as the client sent it.
 * @returns The normalized path, or a message saying why there is none.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { normalizePath } from "./path.ts";
 * const r = normalizePath("/a/%2E%2e/b/%7euser%2fx?q=1");
 * assert.ok(r.ok && r.path === "/b/~user%2Fx");
 * ```
 */
export function normalizePath(raw: string): NormalizedPath {
  const s = pathPart(raw);
  if (s.charCodeAt(0) !== 0x2f /* / */) {
    if (s === "*") {
      return { ok: false, message: `"*" (OPTIONS *) names the server, not a path` };
    }
    return {
      ok: false,
      message: `path ${JSON.stringify(s.slice(0, 100))} does not start with "/"`,
    };
  }
  // Fast path: most paths have no escapes and no dot segments.
  const pct = s.indexOf("%");
  if (pct === -1) {
    const merged = mergeSlashes(s);
    return { ok: true, path: merged.includes("/.") ? removeDotSegments(merged) : merged };
  }
  let out = s.slice(0, pct);
  for (let i = pct; i < s.length; i++) {
    if (s.charCodeAt(i) !== 0x25 /* % */) {
      out += s[i];
      continue;
    }
    const hi = i + 1 < s.length ? hexValue(s.charCodeAt(i + 1)) : -1;
    const lo = i + 2 < s.length ? hexValue(s.charCodeAt(i + 2)) : -1;
    if (hi === -1 || lo === -1) {
      return {
        ok: false,
        message: `invalid percent-escape ${JSON.stringify(s.slice(i, i + 3))} in the path`,
      };
    }
    const c = hi * 16 + lo;
    out += isUnreserved(c) ? String.fromCharCode(c) : s.slice(i, i + 3).toUpperCase();
    i += 2;
  }
  const merged = mergeSlashes(out);
  return { ok: true, path: merged.includes("/.") ? removeDotSegments(merged) : merged };
}

/**
 * Merges runs of `/` into one, as the path sluice decides on and forwards.
 * An encoded slash (`%2F`) is not a separator and is left alone.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { mergeSlashes } from "./path.ts";
 * assert.equal(mergeSlashes("//admin///x/%2F/y"), "/admin/x/%2F/y");
 * ```
 */
export function mergeSlashes(path: string): string {
  return path.includes("//") ? path.replace(/\/{2,}/g, "/") : path;
}

/** RFC 3986 5.2.4 for an absolute path; a trailing "." or ".." leaves a trailing "/". */
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

// Automaton instructions. A glob is a list of these, one per state; the
// state after the last one accepts. Every epsilon edge goes forward, which
// lets one ascending pass compute a closure.
const CHAR = 0; // consume arg (a UTF-16 code unit), go to the next state
const STAR = 1; // consume any unit but "/" and stay; or go to the next state
const ANY = 2; // consume any unit and stay; or go to the next state
const SKIP = 3; // go to the next state, or to state arg

/**
 * Compiles a path glob once, for {@linkcode PathGlob.test} to match
 * normalized paths with no parsing:
 * - `*` matches any characters within one segment, including none, and never
 *   `/` (`/a/*` matches `/a/` and `/a/b`, not `/a` or `/a/b/c`);
 * - `**` must be a whole segment and matches any number of segments:
 *   `/a/**` matches `/a` itself, `/a/` and everything below `/a/`, but not
 *   `/ab`; `/a/**` + `/z` matches `/a/z` and `/a/b/c/z`;
 * - every other character matches itself, case-sensitively.
 *
 * The glob is normalized like a path first (so `/a/%7euser/*` matches
 * `/a/~user/x`), which also means a literal `*` in a path is written `%2A`.
 * A glob that does not start with `/`, has a query or fragment, has `**`
 * inside a segment (`/a**b`, `/***`) or has an invalid escape is refused with
 * a hint.
 *
 * @param glob The glob as written in the policy.
 * @returns The compiled glob, or what is wrong with it and a hint for the fix.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { compilePathGlob } from "./path.ts";
 * const g = compilePathGlob("/repos/acme/**");
 * if (!g.ok) throw new Error(g.message);
 * assert.ok(g.glob.test("/repos/acme/x/y"));
 * assert.ok(g.glob.test("/repos/acme"));
 * assert.ok(!g.glob.test("/repos/acmex/y"));
 * ```
 */
export function compilePathGlob(glob: string): PathGlobResult {
  if (!glob.startsWith("/")) {
    return {
      ok: false,
      message: `path glob ${JSON.stringify(glob)} does not start with "/"`,
      hint: glob === "*" || glob === "**"
        ? `write "/**" for every path, or leave paths out`
        : `write "/${glob}"`,
    };
  }
  if (glob.includes("?") || glob.includes("#")) {
    return {
      ok: false,
      message: `path glob ${JSON.stringify(glob)} has a query or fragment; globs match paths only`,
      hint: `write ${
        JSON.stringify(glob.split(/[?#]/)[0])
      }: the query is ignored when matching, and a literal "?" in a path is "%3F"`,
    };
  }
  const n = normalizePath(glob);
  if (!n.ok) {
    return {
      ok: false,
      message: `path glob ${JSON.stringify(glob)}: ${n.message}`,
      hint: `write "%" as "%25"`,
    };
  }
  const segments = n.path.split("/").slice(1);
  const ops: number[] = [];
  const args: number[] = [];
  const emit = (op: number, arg = 0): void => {
    ops.push(op);
    args.push(arg);
  };
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i];
    if (seg === "**") {
      // "/**" is: nothing, or "/" then anything. "/**/**" means the same as "/**".
      if (i > 0 && segments[i - 1] === "**") continue;
      const skip = ops.length;
      emit(SKIP);
      emit(CHAR, 0x2f);
      emit(ANY);
      args[skip] = ops.length;
      continue;
    }
    if (seg.includes("**")) {
      return {
        ok: false,
        message: `path glob ${JSON.stringify(glob)}: "**" must be a whole segment, as in "/a/**/b"`,
        hint: `use "*" to match within one segment ("/a*b"), or "/**/" to match across segments`,
      };
    }
    emit(CHAR, 0x2f);
    for (let j = 0; j < seg.length; j++) {
      if (seg[j] === "*") emit(STAR);
      else emit(CHAR, seg.charCodeAt(j));
    }
  }
  return { ok: true, glob: matcher(n.path, ops, args) };
}

function matcher(source: string, opList: number[], argList: number[]): PathGlob {
  // The literal run before the first wildcard is compared as a string.
  let lit = 0;
  while (lit < opList.length && opList[lit] === CHAR) lit++;
  const prefix = String.fromCharCode(...argList.slice(0, lit));
  if (lit === opList.length) return { source, test: (path: string) => path === prefix };
  // The commonest shape, "/literal/**": the directory itself or below it.
  if (lit + 3 === opList.length && opList[lit] === SKIP) {
    const below = prefix + "/";
    return {
      source,
      test: (path: string) => path === prefix || path.startsWith(below),
    };
  }
  if (opList.length <= 30) return bitMatcher(source, prefix, lit, opList, argList);
  return arrayMatcher(source, prefix, lit, opList, argList);
}

/**
 * The automaton with its states as bits of one integer (up to 30 states plus
 * the accepting one): each character is a few bit operations.
 */
function bitMatcher(
  source: string,
  prefix: string,
  lit: number,
  ops: number[],
  args: number[],
): PathGlob {
  const m = ops.length;
  const accept = 1 << m;
  let eps = 0; // states with an epsilon edge to the next state
  let star = 0;
  let any = 0;
  const skipFrom: number[] = [];
  const skipTo: number[] = [];
  const ascii = new Int32Array(128); // states that consume each ASCII character
  const other = new Map<number, number>();
  for (let s = 0; s < m; s++) {
    const bit = 1 << s;
    if (ops[s] === CHAR) {
      const c = args[s];
      if (c < 128) ascii[c] |= bit;
      else other.set(c, (other.get(c) ?? 0) | bit);
    } else {
      eps |= bit;
      if (ops[s] === STAR) star |= bit;
      if (ops[s] === ANY) any |= bit;
      if (ops[s] === SKIP) {
        skipFrom.push(bit);
        skipTo.push(1 << args[s]);
      }
    }
  }
  const close = (x: number): number => {
    for (;;) {
      let y = x | ((x & eps) << 1);
      for (let k = 0; k < skipFrom.length; k++) if (y & skipFrom[k]) y |= skipTo[k];
      if (y === x) return x;
      x = y;
    }
  };
  const start = close(1 << lit);
  return {
    source,
    test(path: string): boolean {
      if (!path.startsWith(prefix)) return false;
      let cur = start;
      for (let p = prefix.length; p < path.length; p++) {
        const c = path.charCodeAt(p);
        const consume = c < 128 ? ascii[c] : (other.get(c) ?? 0);
        const next = ((cur & consume) << 1) | (cur & any) | (c === 0x2f ? 0 : cur & star);
        if (next === 0) return false;
        cur = close(next);
      }
      return (cur & accept) !== 0;
    },
  };
}

/** The automaton over a byte per state, for globs too long for {@linkcode bitMatcher}. */
function arrayMatcher(
  source: string,
  prefix: string,
  lit: number,
  opList: number[],
  argList: number[],
): PathGlob {
  const ops = Uint8Array.from(opList);
  const args = Uint32Array.from(argList);
  const m = ops.length;
  // Scratch sets reused across calls: test() is synchronous and calls out to
  // nothing, so no two runs can overlap.
  let cur = new Uint8Array(m + 1);
  let next = new Uint8Array(m + 1);
  return {
    source,
    test(path: string): boolean {
      if (!path.startsWith(prefix)) return false;
      cur.fill(0);
      cur[lit] = 1;
      close(cur, ops, args, lit);
      for (let p = prefix.length; p < path.length; p++) {
        const c = path.charCodeAt(p);
        next.fill(0);
        let alive = false;
        for (let s = lit; s < m; s++) {
          if (!cur[s]) continue;
          const op = ops[s];
          if (op === CHAR) {
            if (args[s] === c) {
              next[s + 1] = 1;
              alive = true;
            }
          } else if (op === ANY || (op === STAR && c !== 0x2f)) {
            next[s] = 1;
            alive = true;
          }
        }
        if (!alive) return false;
        close(next, ops, args, lit);
        [cur, next] = [next, cur];
      }
      return cur[m] === 1;
    },
  };
}

/** Adds every state reachable by epsilon edges (all forward, so one pass). */
function close(set: Uint8Array, ops: Uint8Array, args: Uint32Array, from: number): void {
  for (let s = from; s < ops.length; s++) {
    if (!set[s]) continue;
    const op = ops[s];
    if (op === STAR || op === ANY) set[s + 1] = 1;
    else if (op === SKIP) {
      set[s + 1] = 1;
      set[args[s]] = 1;
    }
  }
}

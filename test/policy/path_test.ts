import { assert, assertEquals } from "../_assert.ts";
import { compilePathGlob, normalizePath, type PathGlob } from "../../policy/path.ts";

/** [name, raw, normalized or null when unparseable] */
const paths: [string, string, string | null][] = [
  ["keeps a plain path", "/a/b", "/a/b"],
  ["keeps the root", "/", "/"],
  ["drops the query", "/a?x=/b", "/a"],
  ["drops a query that holds dot segments", "/a?/../../b", "/a"],
  ["drops an empty query", "/a?", "/a"],
  ["drops the fragment", "/a#frag", "/a"],
  ["drops a fragment after the query", "/a?x#y", "/a"],
  ["drops a query after the fragment", "/a#y?x", "/a"],
  ["removes . segments", "/a/./b", "/a/b"],
  ["removes .. segments", "/a/b/../c", "/a/c"],
  ["removes several .. segments", "/a/b/c/../../d", "/a/d"],
  ["does not climb above the root", "/../../a", "/a"],
  ["turns /.. into /", "/..", "/"],
  ["turns /. into /", "/.", "/"],
  ["keeps a trailing slash after a trailing ..", "/a/b/..", "/a/"],
  ["keeps a trailing slash after a trailing .", "/a/b/.", "/a/b/"],
  ["decodes %2e%2e before removing dot segments", "/a/%2e%2e/b", "/b"],
  ["decodes mixed-case %2E%2e", "/a/%2E%2e/b", "/b"],
  ["decodes a half-encoded .%2E", "/a/b/.%2E/c", "/a/c"],
  ["decodes %2E as a dot segment", "/a/%2E/b", "/a/b"],
  ["keeps dots that are not whole segments", "/a/..b/.c/d..", "/a/..b/.c/d.."],
  ["keeps dotfiles", "/.well-known/x", "/.well-known/x"],
  ["keeps three dots", "/a/.../b", "/a/.../b"],
  ["decodes unreserved letters", "/%41%62c", "/Abc"],
  ["decodes unreserved digits and punctuation", "/%30%2D%5f%2e", "/0-_."],
  ["decodes ~ in lowercase hex", "/%7euser", "/~user"],
  ["decodes ~ in uppercase hex", "/%7Euser", "/~user"],
  ["keeps an encoded slash encoded", "/a%2Fb", "/a%2Fb"],
  ["uppercases a kept escape", "/a%2fb", "/a%2Fb"],
  ["does not treat %2F as a separator for dot segments", "/a/..%2F..%2Fb", "/a/..%2F..%2Fb"],
  ["keeps reserved escapes", "/a%3Fb%20c%3a", "/a%3Fb%20c%3A"],
  ["does not decode twice", "/%252e%252e/x", "/%252e%252e/x"],
  ["keeps an encoded NUL encoded", "/a%00b", "/a%00b"],
  ["keeps non-ASCII escapes encoded", "/caf%c3%a9", "/caf%C3%A9"],
  ["merges double slashes, as common servers read them", "/a//b", "/a/b"],
  ["merges a leading double slash (//admin is /admin)", "//admin/x", "/admin/x"],
  ["merges runs of slashes anywhere", "/a///b////c/", "/a/b/c/"],
  ["keeps an encoded slash, which is not a separator", "/a/%2f/b", "/a/%2F/b"],
  ["merges slashes before removing dot segments", "/a//..", "/"],
  ["keeps a trailing slash", "/a/b/", "/a/b/"],
  ["is case-sensitive", "/A/b", "/A/b"],
  ["refuses an invalid escape", "/a/%zz", null],
  ["refuses a truncated escape", "/a/%4", null],
  ["refuses a bare %", "/a/%", null],
  ["refuses a half-hex escape", "/a/%4g", null],
  ["refuses an invalid escape even in a dot segment", "/a/%2e%2/b", null],
  ["ignores an invalid escape in the query", "/a?x=%zz", "/a"],
  ["refuses a path without a leading slash", "a/b", null],
  ["refuses the OPTIONS * target", "*", null],
  ["refuses an absolute URL", "http://example.com/a", null],
  ["refuses an empty path", "", null],
  ["refuses a query alone", "?x=1", null],
];
for (const [name, raw, want] of paths) {
  Deno.test(`normalizePath() ${name}`, () => {
    const r = normalizePath(raw);
    assertEquals(r.ok ? r.path : null, want, r.ok ? undefined : r.message);
    if (!r.ok) assert(r.message.length > 0);
  });
}

Deno.test("normalizePath() names the OPTIONS * target in its message", () => {
  const r = normalizePath("*");
  assert(!r.ok && r.message.includes("OPTIONS"), JSON.stringify(r));
});

Deno.test("normalizePath() is idempotent on random paths", () => {
  const rand = seeded(0x9a7);
  const pieces = [
    "a",
    "B",
    "/",
    "/",
    ".",
    "..",
    "%2e",
    "%2E",
    "%2f",
    "%41",
    "%7e",
    "%25",
    "~",
    "?",
  ];
  for (let n = 0; n < 500; n++) {
    let raw = "/";
    for (let i = Math.floor(rand() * 10); i > 0; i--) raw += pieces[Math.floor(rand() * 14)];
    const once = normalizePath(raw);
    assert(once.ok, raw);
    const twice = normalizePath(once.path);
    assertEquals(twice.ok ? twice.path : null, once.path, raw);
    assert(!/(^|\/)\.\.?(\/|$)/.test(once.path), `dot segment left in ${once.path} from ${raw}`);
  }
});

function glob(text: string): PathGlob {
  const g = compilePathGlob(text);
  if (!g.ok) throw new Error(g.message);
  return g.glob;
}

/** [name, glob, path, matches] */
const globs: [string, string, string, boolean][] = [
  ["lets ** match deep paths", "/repos/acme/**", "/repos/acme/x/y", true],
  ["lets ** match one segment", "/repos/acme/**", "/repos/acme/x", true],
  ["lets ** match the directory itself", "/repos/acme/**", "/repos/acme", true],
  ["lets ** match the directory with a slash", "/repos/acme/**", "/repos/acme/", true],
  ["does not let /acme/** match /acmex", "/repos/acme/**", "/repos/acmex/y", false],
  ["does not let /acme/** match /acmex itself", "/repos/acme/**", "/repos/acmex", false],
  ["does not let ** match the parent", "/repos/acme/**", "/repos", false],
  ["matches case-sensitively", "/Repos/**", "/repos/x", false],
  ["lets /** match the root", "/**", "/", true],
  ["lets /** match anything", "/**", "/a/b/c", true],
  ["lets * match within a segment", "/bucket/*/objects", "/bucket/b1/objects", true],
  ["does not let * cross a slash", "/bucket/*/objects", "/bucket/a/b/objects", false],
  ["lets * match an empty segment", "/a/*", "/a/", true],
  ["does not let /a/* match /a", "/a/*", "/a", false],
  ["does not let /a/* match two segments", "/a/*", "/a/b/c", false],
  ["lets * match part of a segment", "/v1/*.json", "/v1/models.json", true],
  ["lets * match nothing in part of a segment", "/v1/*.json", "/v1/.json", true],
  ["does not let *.json match another extension", "/v1/*.json", "/v1/models.jsonx", false],
  ["lets several * share a segment", "/f/*-*.tar.gz", "/f/pkg-1.2.tar.gz", true],
  ["requires each literal between several *", "/f/*-*.tar.gz", "/f/pkg.tar.gz", false],
  ["backtracks within a segment", "/*ab", "/aab", true],
  ["lets ** in the middle match zero segments", "/a/**/z", "/a/z", true],
  ["lets ** in the middle match several", "/a/**/z", "/a/b/c/z", true],
  ["does not let ** in the middle glue segments", "/a/**/z", "/az", false],
  ["does not let ** in the middle end early", "/a/**/z", "/a/b/z/c", false],
  ["lets **/*.json match at any depth", "/**/*.json", "/a/b/c.json", true],
  ["lets **/*.json match at the top", "/**/*.json", "/c.json", true],
  ["does not let **/*.json match a directory named .json", "/**/*.json", "/a.json/b", false],
  ["collapses repeated **", "/a/**/**/z", "/a/z", true],
  ["combines * and **", "/bucket/*/objects/**", "/bucket/b1/objects/a/b", true],
  [
    "combines * and ** but keeps * to one segment",
    "/bucket/*/objects/**",
    "/bucket/b1/b2/objects/a",
    false,
  ],
  ["matches literally otherwise", "/a.b", "/aXb", false],
  ["escapes regex characters", "/a+b(c)[d]$^|{1}", "/a+b(c)[d]$^|{1}", true],
  ["escapes regex characters so they do not match others", "/a+b", "/aab", false],
  ["matches the root glob only at the root", "/", "/a", false],
  ["matches the root glob at the root", "/", "/", true],
  ["matches an exact glob exactly", "/a/b", "/a/b", true],
  ["does not let an exact glob match a trailing slash", "/a/b", "/a/b/", false],
  ["keeps a trailing slash significant", "/a/b/", "/a/b", false],
  ["normalizes the glob like a path", "/a/%7euser/*", "/a/~user/x", true],
  ["normalizes dot segments in the glob", "/a/./b/../c/*", "/a/c/x", true],
  ["matches an encoded slash only as written", "/a%2fb/*", "/a%2Fb/x", true],
  ["does not let an encoded slash glob match a real slash", "/a%2Fb/*", "/a/b/x", false],
  ["matches %2A as a literal asterisk", "/a/%2A", "/a/%2A", true],
  ["does not let %2A act as a wildcard", "/a/%2A", "/a/x", false],
  ["merges // in globs as in paths", "/a//b", "/a/b", true],
  ["matches non-ASCII literally", "/café/*", "/café/x", true],
];
for (const [name, g, path, want] of globs) {
  Deno.test(`compilePathGlob() ${name}`, () => {
    assertEquals(glob(g).test(path), want, `${g} ~ ${path}`);
  });
}

/** [name, glob, source] */
const sources: [string, string, string][] = [
  ["reports the normalized glob as source", "/a/%7euser/./*", "/a/~user/*"],
  ["keeps ** in the source", "/repos/acme/**", "/repos/acme/**"],
];
for (const [name, g, want] of sources) {
  Deno.test(`compilePathGlob() ${name}`, () => {
    assertEquals(glob(g).source, want);
  });
}

/** [name, glob, message fragment, hint fragment] */
const bad: [string, string, string, string][] = [
  ["refuses ** inside a segment", "/a**b", `"**" must be a whole segment`, `"*"`],
  ["refuses ***", "/a/***", `"**" must be a whole segment`, `"/**/"`],
  ["refuses ** after text", "/a/b**", `"**" must be a whole segment`, `"*"`],
  ["refuses a relative glob", "a/b", `does not start with "/"`, `"/a/b"`],
  ["refuses a bare **, suggesting /**", "**", `does not start with "/"`, `"/**"`],
  ["refuses an empty glob", "", `does not start with "/"`, `"/"`],
  ["refuses a query", "/a?x=1", "query", `"/a"`],
  ["refuses a fragment", "/a#x", "fragment", `"/a"`],
  ["refuses an invalid escape", "/a/%zz", "invalid percent-escape", `"%25"`],
];
for (const [name, g, fragment, hint] of bad) {
  Deno.test(`compilePathGlob() ${name}`, () => {
    const r = compilePathGlob(g);
    assert(!r.ok, `expected ${g} to be refused`);
    assert(r.message.includes(fragment), r.message);
    assert(r.hint?.includes(hint), `hint ${r.hint}`);
  });
}

/** The glob semantics written as a backtracking RegExp: the reference for small inputs. */
function referenceRegExp(normalizedGlob: string): RegExp {
  const segments = normalizedGlob.split("/").slice(1);
  let re = "^";
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i];
    if (seg === "**") {
      re += "(?:/.*)?";
      continue;
    }
    re += "/" + seg.split("*").map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("[^/]*");
  }
  return new RegExp(re + "$");
}

/** A seeded generator keeps failures reproducible. */
function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

Deno.test("compilePathGlob() agrees with a reference RegExp on random globs and paths", () => {
  const rand = seeded(0x610b);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)];
  let matched = 0;
  let total = 0;
  for (let n = 0; n < 300; n++) {
    const segs = Array.from(
      { length: 1 + Math.floor(rand() * 4) },
      () => pick(["**", "*", "a", "b", "a*", "*b", "a*b", "*a*", "", "ab"]),
    );
    const text = "/" + segs.join("/");
    const g = glob(text);
    const reference = referenceRegExp(g.source);
    for (let k = 0; k < 20; k++) {
      const path = "/" +
        Array.from({ length: Math.floor(rand() * 5) }, () => pick(["a", "b", "ab", "ba", ""]))
          .join("/");
      const want = reference.test(path);
      if (want) matched++;
      total++;
      assertEquals(g.test(path), want, `${text} ~ ${path}`);
    }
  }
  // Both outcomes must be well represented, or the cross-check proves little.
  assert(matched > total / 10 && matched < total * 0.9, `${matched} of ${total} matched`);
});

Deno.test("compilePathGlob() agrees with a reference RegExp on random long globs", () => {
  // More than 30 automaton states: the byte-per-state engine, not the bit one.
  const rand = seeded(0x1096);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)];
  let matched = 0;
  let total = 0;
  for (let n = 0; n < 200; n++) {
    const segs = [
      "*",
      "abcabcabcabc*",
      "abcabcabcabc*",
      ...Array.from(
        { length: 1 + Math.floor(rand() * 3) },
        () => pick(["**", "*", "abcabc", "*abcabc*", "ab*cab*c", "é*"]),
      ),
    ];
    const text = "/" + segs.join("/");
    const g = glob(text);
    const reference = referenceRegExp(g.source);
    for (let k = 0; k < 20; k++) {
      // A path shaped like the glob, with random fill-ins and the odd mutation.
      const parts = segs.flatMap((seg) =>
        seg === "**"
          ? Array.from({ length: Math.floor(rand() * 3) }, () => pick(["abcabc", "é", ""]))
          : [seg.replaceAll("*", () => pick(["", "abc", "x/y", "é"]))]
      );
      if (rand() < 0.3) parts.splice(Math.floor(rand() * parts.length), 1, pick(["x", "abcabc"]));
      const path = "/" + parts.join("/");
      const want = reference.test(path);
      if (want) matched++;
      total++;
      assertEquals(g.test(path), want, `${text} ~ ${path}`);
    }
  }
  assert(matched > total / 10 && matched < total * 0.9, `${matched} of ${total} matched`);
});

/**
 * [name, glob, hostile path, suffix that makes it match]: a backtracking
 * RegExp takes seconds to hours on these.
 */
const hostile: [string, string, string, string][] = [
  ["several * in one segment", "/*a*a*a*a*b", "/" + "a".repeat(20_000), "b"],
  ["several ** segments", "/**/a/**/a/**/a/**/b", "/a".repeat(10_000), "/b"],
  ["** followed by *", "/**/*a*a*b", "/" + "a/".repeat(5_000) + "a".repeat(5_000), "b"],
  [
    "a glob too long for the bit engine",
    "/**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/b",
    "/a".repeat(5_000),
    "/b",
  ],
];
for (const [name, g, path, suffix] of hostile) {
  Deno.test(`compilePathGlob() stays linear on a hostile path: ${name}`, () => {
    const compiled = glob(g);
    const start = performance.now();
    assertEquals(compiled.test(path), false);
    assertEquals(compiled.test(path + suffix), true);
    const ms = performance.now() - start;
    // A RegExp for "/*a*a*a*b" took 86 s on 1,000 characters; this is 20,000.
    assert(ms < 1000, `took ${ms.toFixed(0)} ms`);
  });
}

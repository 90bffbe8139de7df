import { assert, assertEquals } from "../_assert.ts";
import { compilePathGlob, normalizePath } from "../../policy/path.ts";

/** [name, raw, normalized or null when unparseable] */
const paths: [string, string, string | null][] = [
  ["keeps a plain path", "/a/b", "/a/b"],
  ["drops the query", "/a?x=/b", "/a"],
  ["drops the fragment", "/a#frag", "/a"],
  ["removes . segments", "/a/./b", "/a/b"],
  ["removes .. segments", "/a/b/../c", "/a/c"],
  ["does not climb above the root", "/../../a", "/a"],
  ["decodes %2e%2e before removing dot segments", "/a/%2e%2e/b", "/b"],
  ["decodes mixed-case %2E%2e", "/a/%2E%2e/b", "/b"],
  ["decodes %2E as a dot segment", "/a/%2E/b", "/a/b"],
  ["decodes unreserved letters", "/%41%62c", "/Abc"],
  ["decodes ~ in either case", "/%7euser/%7Eother", "/~user/~other"],
  ["keeps an encoded slash encoded, uppercased", "/a%2fb", "/a%2Fb"],
  ["keeps reserved escapes", "/a%3Fb%20c", "/a%3Fb%20c"],
  ["keeps double slashes as written", "/a//b", "/a//b"],
  ["keeps a trailing slash", "/a/b/", "/a/b/"],
  ["ends with a slash after a trailing ..", "/a/b/..", "/a/"],
  ["is case-sensitive", "/A/b", "/A/b"],
  ["refuses an invalid escape", "/a/%zz", null],
  ["refuses a truncated escape", "/a/%4", null],
  ["refuses a path without a leading slash", "a/b", null],
];
for (const [name, raw, want] of paths) {
  Deno.test(`normalizePath() ${name}`, () => {
    const r = normalizePath(raw);
    assertEquals(r.ok ? r.path : null, want);
  });
}

/** [name, glob, path, matches] */
const globs: [string, string, string, boolean][] = [
  ["lets ** match deep paths", "/repos/acme/**", "/repos/acme/x/y", true],
  ["lets ** match the directory itself", "/repos/acme/**", "/repos/acme", true],
  ["lets ** match the directory with a slash", "/repos/acme/**", "/repos/acme/", true],
  ["does not let ** match a sibling prefix", "/repos/acme/**", "/repos/acmex/y", false],
  ["lets * match within a segment", "/bucket/*/objects", "/bucket/b1/objects", true],
  ["does not let * cross a slash", "/bucket/*/objects", "/bucket/a/b/objects", false],
  ["lets * match part of a segment", "/v1/*.json", "/v1/models.json", true],
  ["lets ** in the middle match zero segments", "/a/**/z", "/a/z", true],
  ["lets ** in the middle match several", "/a/**/z", "/a/b/c/z", true],
  ["matches literally otherwise", "/a.b", "/aXb", false],
  ["matches case-sensitively", "/Repos/**", "/repos/x", false],
  ["normalizes the glob like a path", "/%7euser/*", "/~user/x", true],
  ["matches the root glob only at the root", "/", "/a", false],
];
for (const [name, glob, path, want] of globs) {
  Deno.test(`compilePathGlob() ${name}`, () => {
    const g = compilePathGlob(glob);
    if (!g.ok) throw new Error(g.message);
    assertEquals(g.glob.test(path), want);
  });
}

/** [name, glob, error fragment] */
const bad: [string, string, string][] = [
  ["refuses ** inside a segment", "/a**b", `"**" must be a whole segment`],
  ["refuses a relative glob", "a/b", "does not start with /"],
  ["refuses a query", "/a?x=1", "query"],
  ["refuses an invalid escape", "/a/%zz", "invalid percent-escape"],
];
for (const [name, glob, fragment] of bad) {
  Deno.test(`compilePathGlob() ${name}`, () => {
    const g = compilePathGlob(glob);
    assert(!g.ok, `expected ${glob} to be refused`);
    assert(g.message.includes(fragment), g.message);
  });
}

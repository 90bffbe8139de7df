import { assertEquals } from "../_assert.ts";
import {
  hostMatches,
  normalizeHostname,
  parentSuffixes,
  parseHostPattern,
} from "../../policy/host.ts";

const normalize: [string, string, string | null][] = [
  ["lowercases", "API.OpenAI.com", "api.openai.com"],
  ["drops one trailing dot", "example.com.", "example.com"],
  ["converts an IDN to punycode", "Bücher.Example", "xn--bcher-kva.example"],
  ["keeps punycode as is", "xn--bcher-kva.example", "xn--bcher-kva.example"],
  ["allows underscores (SRV-style labels)", "_acme.example.com", "_acme.example.com"],
  ["rejects an empty label", "a..b", null],
  ["rejects a leading hyphen", "-a.example", null],
  ["rejects spaces", "a b.example", null],
  ["rejects a 64-character label", `${"a".repeat(64)}.com`, null],
  ["rejects percent signs", "ex%41mple.com", null],
  ["rejects an empty name", "", null],
  ["rejects a lone dot", ".", null],
];
for (const [name, input, want] of normalize) {
  Deno.test(`normalizeHostname() ${name}`, () => {
    const r = normalizeHostname(input);
    assertEquals(r.ok ? r.value : null, want);
  });
}

const patterns: [string, string, string | null][] = [
  ["parses a wildcard", "*.Example.com", "wildcard:example.com"],
  ["parses an exact name", "example.com.", "exact:example.com"],
  ["rejects a wildcard in a later label", "a.*.example.com", null],
  ["rejects a partial-label wildcard", "*foo.example.com", null],
  ["rejects a double wildcard", "*.*.com", null],
  ["rejects a lone star", "*", null],
];
for (const [name, input, want] of patterns) {
  Deno.test(`parseHostPattern() ${name}`, () => {
    const r = parseHostPattern(input);
    assertEquals(
      r.ok ? `${r.value.kind}:${r.value.kind === "exact" ? r.value.name : r.value.suffix}` : null,
      want,
    );
  });
}

Deno.test("parseHostPattern() hints the fix for a wildcard in the middle", () => {
  const r = parseHostPattern("*.*.com");
  assertEquals(r.ok, false);
  if (!r.ok) assertEquals(r.hint, 'use "*.com"');
});

const matches: [string, string, string, boolean][] = [
  ["wildcard matches a subdomain", "*.example.com", "a.example.com", true],
  ["wildcard matches any depth", "*.example.com", "a.b.c.example.com", true],
  ["wildcard does not match the apex", "*.example.com", "example.com", false],
  ["wildcard does not match a lookalike suffix", "*.example.com", "badexample.com", false],
  ["exact does not match a subdomain", "example.com", "a.example.com", false],
  ["exact matches itself", "example.com", "example.com", true],
];
for (const [name, pattern, host, want] of matches) {
  Deno.test(`hostMatches() ${name}`, () => {
    const p = parseHostPattern(pattern);
    if (!p.ok) throw new Error(p.message);
    assertEquals(hostMatches(p.value, host), want);
  });
}

Deno.test("parentSuffixes() lists every parent from longest to shortest", () => {
  assertEquals(parentSuffixes("a.b.example.com"), ["b.example.com", "example.com", "com"]);
  assertEquals(parentSuffixes("localhost"), []);
});

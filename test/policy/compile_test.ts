import { assertEquals } from "../_assert.ts";
import { exactAllowedNames, loadPolicyText } from "../../policy/mod.ts";

const exactNames: [string, string, number, string[]][] = [
  ["lists exact names in the order written", "[b.test, a.test]", 10, ["b.test", "a.test"]],
  ["leaves out wildcards", "['*.a.test', b.test]", 10, ["b.test"]],
  ["leaves out IP literals and CIDRs", "[10.0.0.1, 10.1.0.0/16, '[::1]', c.test]", 10, [
    "c.test",
  ]],
  ["normalizes case and a trailing dot", "[API.Example.COM.]", 10, ["api.example.com"]],
  ["lists a name with ports or methods once", "[a.test:443, a.test:8443, 'GET a.test']", 10, [
    "a.test",
  ]],
  ["stops at max", "[a.test, b.test, c.test]", 2, ["a.test", "b.test"]],
  ["is empty for a policy without exact names", "['*.a.test']", 10, []],
];
for (const [name, allow, max, want] of exactNames) {
  Deno.test(`exactAllowedNames() ${name}`, () => {
    const { compiled } = loadPolicyText(`version: 1\nnetwork:\n  allow: ${allow}\n`, "p.yaml");
    assertEquals(exactAllowedNames(compiled, max), want);
  });
}

Deno.test("exactAllowedNames() leaves out a name denied outright, not one denied on a path", () => {
  const { compiled } = loadPolicyText(
    "version: 1\nnetwork:\n  allow: [a.test, b.test]\n  deny: [a.test, 'b.test/admin/**']\n",
    "p.yaml",
  );
  assertEquals(exactAllowedNames(compiled, 10), ["b.test"]);
});

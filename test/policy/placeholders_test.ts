import { assertEquals } from "../_assert.ts";
import { PlaceholderScanner } from "../../policy/placeholders.ts";

const scanner = (pairs: [string, string][]) => new PlaceholderScanner(new Map(pairs));

const same: [string, [string, string][], [string, string][], boolean][] = [
  ["the same pairs", [["A", "sluice-a1"], ["B", "sluice-b1"]], [["A", "sluice-a1"], [
    "B",
    "sluice-b1",
  ]], true],
  ["the same pairs in another order", [["A", "sluice-a1"], ["B", "sluice-b1"]], [
    ["B", "sluice-b1"],
    ["A", "sluice-a1"],
  ], true],
  ["no placeholders on either side", [], [], true],
  ["a credential added", [["A", "sluice-a1"]], [["A", "sluice-a1"], ["B", "sluice-b1"]], false],
  ["a credential removed", [["A", "sluice-a1"], ["B", "sluice-b1"]], [["A", "sluice-a1"]], false],
  ["a placeholder changed", [["A", "sluice-a1"]], [["A", "sluice-a2"]], false],
  ["a placeholder moved to another credential", [["A", "sluice-a1"]], [["B", "sluice-a1"]], false],
  ["a further part added (NAME#part)", [["A", "sluice-a1"]], [["A", "sluice-a1"], [
    "A#secret",
    "sluice-a2",
  ]], false],
];
for (const [name, a, b, want] of same) {
  Deno.test(`PlaceholderScanner.samePlaceholders() ${name}: ${want}`, () => {
    assertEquals(scanner(a).samePlaceholders(scanner(b)), want);
    assertEquals(scanner(b).samePlaceholders(scanner(a)), want);
  });
}

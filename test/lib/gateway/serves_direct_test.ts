import { assertEquals, assertMatch, assertThrows } from "../../_assert.ts";
import { loadPolicyText } from "../../../policy/mod.ts";
import { servesDirect } from "../../../lib/gateway/server.ts";

const intercepted = loadPolicyText("version: 1\nnetwork:\n  allow: [a.test]\n", "p.yaml").compiled;
const passthrough = loadPolicyText(
  "version: 1\nnetwork:\n  allow: [a.test]\ntls:\n  passthrough: [a.test]\n",
  "p.yaml",
).compiled;

// name, --data-path, policy, kernel view available, direct?
const cases = [
  ["auto, everything intercepted, kernel view: direct", "auto", intercepted, true, true],
  [
    "auto without the kernel view: the hop (nothing would bound direct connections)",
    "auto",
    intercepted,
    false,
    false,
  ],
  [
    "auto with a passthrough host: the hop (it needs the raw ClientHello)",
    "auto",
    passthrough,
    true,
    false,
  ],
  ["hop, whatever the policy", "hop", intercepted, true, false],
  ["direct, forced, even without the kernel view", "direct", intercepted, false, true],
] as const;

for (const [name, path, policy, kernel, want] of cases) {
  Deno.test(`servesDirect(): ${name}`, () => {
    assertEquals(servesDirect(path, policy, kernel), want);
  });
}

Deno.test("servesDirect(): direct with a passthrough host is refused, naming what to use", () => {
  const e = assertThrows(() => servesDirect("direct", passthrough, true), Error);
  assertMatch(e.message, /use --data-path auto/);
});

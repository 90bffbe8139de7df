import { assertEquals, assertMatch } from "../../_assert.ts";
import { decisionHeader, denyResponse, rawDenial } from "../../../lib/exchange/respond.ts";

const decision = {
  verdict: "deny" as const,
  code: "deny-rule" as const,
  reason: 'x.test:443 is denied by rule "x.test"',
  rule: { list: "deny" as const, index: 0, source: "x.test", at: "p.yaml:9" },
};

Deno.test("denyResponse() is a 403 naming the reason, rule and where it is written", async () => {
  const r = denyResponse(decision);
  assertEquals(r.status, 403);
  assertEquals(r.headers.get("x-sluice-decision"), "deny; code=deny-rule; rule=p.yaml:9");
  assertMatch(
    await r.text(),
    /^sluice denied this request: x\.test:443 is denied by rule "x\.test"\nrule: x\.test \(p\.yaml:9\)\n/,
  );
});

Deno.test("rawDenial() is a complete HTTP/1.1 response with a correct Content-Length", () => {
  const text = new TextDecoder().decode(rawDenial(decision));
  const [head, body] = text.split("\r\n\r\n");
  assertMatch(head, /^HTTP\/1\.1 403 Forbidden\r\n/);
  assertEquals(
    Number(/content-length: (\d+)/.exec(head)![1]),
    new TextEncoder().encode(body).length,
  );
});

Deno.test("decisionHeader() keeps header values printable ASCII", () => {
  assertEquals(
    decisionHeader({ ...decision, rule: { ...decision.rule, at: "pölicy.yaml:1" } }),
    "deny; code=deny-rule; rule=p?licy.yaml:1",
  );
});

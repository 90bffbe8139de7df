import { assertEquals, assertThrows } from "../_assert.ts";
import { OverrideResolver, parseResolveOverrides, SystemResolver } from "../../lib/resolver.ts";

Deno.test("parseResolveOverrides() reads NAME=ADDR[,ADDR], lowercasing names", () => {
  const m = parseResolveOverrides(["API.test.=127.0.0.1,::1"]);
  assertEquals(m.get("api.test")?.map((i) => i.text), ["127.0.0.1", "::1"]);
});

Deno.test("parseResolveOverrides() names the bad entry", () => {
  const e = assertThrows(() => parseResolveOverrides(["api.test=nope"]), Error);
  assertEquals(e.message, '--resolve "api.test=nope": "nope" is not an IP address');
});

Deno.test("SystemResolver resolves localhost through getaddrinfo (/etc/hosts)", async () => {
  const ips = await new SystemResolver().resolve("localhost");
  assertEquals(ips.some((i) => i.text === "127.0.0.1" || i.text === "::1"), true);
});

Deno.test("OverrideResolver answers fixed names and falls back for others", async () => {
  const r = new OverrideResolver(parseResolveOverrides(["a.test=127.0.0.9"]), new SystemResolver());
  assertEquals((await r.resolve("a.test")).map((i) => i.text), ["127.0.0.9"]);
  assertEquals((await r.resolve("localhost")).length > 0, true);
});

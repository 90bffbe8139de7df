import { assertEquals, assertThrows } from "../../_assert.ts";
import {
  CachingResolver,
  OverrideResolver,
  parseResolveOverrides,
  ResolveError,
  type Resolver,
  SystemResolver,
} from "../../../lib/upstream/resolver.ts";
import { parseIp } from "../../../policy/address.ts";

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

/** A resolver that counts its calls and answers from a table (or fails), after a tick. */
function counting(answers: Record<string, string[]>): Resolver & { calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    async resolve(name) {
      calls.push(name);
      await new Promise((r) => setTimeout(r, 1));
      const a = answers[name];
      if (!a) throw new ResolveError(name, "ENOTFOUND");
      return a.map((t) => parseIp(t)!);
    },
  };
}

Deno.test("CachingResolver reuses an answer within its TTL and asks again after it", async () => {
  let now = 1_000;
  const inner = counting({ "a.test": ["192.0.2.1"] });
  const r = new CachingResolver(inner, { ttlMs: 30_000, now: () => now });
  assertEquals((await r.resolve("a.test")).map((i) => i.text), ["192.0.2.1"]);
  now += 29_000;
  await r.resolve("a.test");
  assertEquals(inner.calls.length, 1);
  now += 2_000;
  await r.resolve("a.test");
  assertEquals(inner.calls.length, 2);
});

Deno.test("CachingResolver shares one query among concurrent look-ups of a name", async () => {
  const inner = counting({ "a.test": ["192.0.2.1"], "b.test": ["192.0.2.2"] });
  const r = new CachingResolver(inner);
  const got = await Promise.all(["a.test", "a.test", "b.test", "a.test"].map((n) => r.resolve(n)));
  assertEquals(got.map((ips) => ips[0].text), ["192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.1"]);
  assertEquals(inner.calls, ["a.test", "b.test"]);
});

Deno.test("CachingResolver does not cache failures", async () => {
  const inner = counting({});
  const r = new CachingResolver(inner);
  for (let i = 0; i < 2; i++) {
    const e = await r.resolve("gone.test").catch((e) => e);
    assertEquals((e as ResolveError).code, "ENOTFOUND");
  }
  assertEquals(inner.calls, ["gone.test", "gone.test"]);
});

Deno.test("CachingResolver keeps at most maxNames answers", async () => {
  const inner = counting({
    "a.test": ["192.0.2.1"],
    "b.test": ["192.0.2.2"],
    "c.test": ["192.0.2.3"],
  });
  const r = new CachingResolver(inner, { maxNames: 2 });
  for (const n of ["a.test", "b.test", "c.test", "a.test"]) await r.resolve(n);
  // a.test was evicted by c.test, so it was asked for twice.
  assertEquals(inner.calls, ["a.test", "b.test", "c.test", "a.test"]);
});

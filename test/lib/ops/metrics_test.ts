import { assertEquals } from "../../_assert.ts";
import { Counter, Histogram } from "../../../lib/ops/metrics.ts";

Deno.test("Counter.series() counts into the same series as inc() with those labels", () => {
  const a = new Counter("t_total", "t");
  const b = new Counter("t_total", "t");
  const allow = a.series({ verdict: "allow", mode: "explicit" });
  a.series({ verdict: "deny", mode: "explicit" }); // never incremented: not exported
  allow.inc();
  allow.inc(2);
  a.inc({ mode: "explicit", verdict: "allow" });
  b.inc({ verdict: "allow", mode: "explicit" }, 4);
  assertEquals(a.get({ verdict: "allow", mode: "explicit" }), 4);
  assertEquals(a.lines(), b.lines());
  assertEquals(a.lines(), ['t_total{mode="explicit",verdict="allow"} 4']);
});

Deno.test("Histogram.series() observes into the same series as observe() with those labels", () => {
  const a = new Histogram("d_seconds", "d", [0.1, 1]);
  const b = new Histogram("d_seconds", "d", [0.1, 1]);
  const allow = a.series({ verdict: "allow" });
  a.series({ verdict: "deny" });
  allow.observe(0.05);
  a.observe(0.5, { verdict: "allow" });
  b.observe(0.05, { verdict: "allow" });
  b.observe(0.5, { verdict: "allow" });
  assertEquals(a.lines(), b.lines());
  assertEquals(a.lines()[0], 'd_seconds_bucket{le="0.1",verdict="allow"} 1');
  assertEquals(a.lines().length, 5);
});

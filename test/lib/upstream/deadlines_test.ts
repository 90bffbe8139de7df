import { assertEquals } from "../../_assert.ts";
import { Deadlines, type Expiring } from "../../../lib/upstream/deadlines.ts";

const item = (): Expiring => ({ deadline: Infinity, expire: undefined });

Deno.test("Deadlines.sweep() expires what has passed, once, and nothing early", () => {
  const d = new Deadlines(1000);
  const fired: string[] = [];
  const a = item();
  const b = item();
  const c = item();
  const t0 = performance.now();
  d.arm(a, 100, () => fired.push("a"));
  d.arm(b, 500, () => fired.push("b"));
  d.arm(c, 100, () => fired.push("c"));
  d.disarm(c);
  d.sweep(t0 + 50);
  assertEquals(fired, []);
  d.sweep(t0 + 200);
  assertEquals(fired, ["a"]);
  assertEquals(a.deadline, Infinity);
  d.sweep(t0 + 300);
  assertEquals(fired, ["a"]);
  // Re-arming replaces the deadline.
  d.arm(b, 2000, () => fired.push("b2"));
  d.sweep(t0 + 1000);
  assertEquals(fired, ["a"]);
  d.sweep(t0 + 3000);
  assertEquals(fired, ["a", "b2"]);
  assertEquals(d.size, 0);
  d.sweep(); // nothing armed: the timer stops
  d.stop();
});

Deno.test("Deadlines runs a timer at a quarter of the shortest timeout, 1 to 250 ms", async () => {
  assertEquals(new Deadlines(30_000).resolutionMs, 250);
  assertEquals(new Deadlines(100).resolutionMs, 25);
  assertEquals(new Deadlines(2).resolutionMs, 1);
  const d = new Deadlines(40);
  const fired: number[] = [];
  const t0 = performance.now();
  d.arm(item(), 40, () => fired.push(performance.now() - t0));
  await new Promise((r) => setTimeout(r, 120));
  assertEquals(fired.length, 1);
  // Never early; late by at most about one resolution (plus timer jitter).
  assertEquals(fired[0] >= 40, true, `fired after ${fired[0]} ms`);
  d.stop();
});

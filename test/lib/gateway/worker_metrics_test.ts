import { assertEquals } from "../../_assert.ts";
import { Metrics } from "../../../lib/ops/metrics.ts";
import { MAIN_ONLY, mergeMetrics } from "../../../lib/gateway/worker_metrics.ts";
import { parseWorkers } from "../../../lib/gateway/workers.ts";

const registry = (generation = 1, leaves = { hits: 0, misses: 0, size: 0 }, active = 0) =>
  new Metrics({
    activeConnections: () => active,
    leafCache: () => leaves,
    policyGeneration: () => generation,
    lastReloadOk: () => 1,
    stages: () => active ? [["head", active]] : [],
    clients: () => active,
  });

/** The exposition without the memory gauges, which differ between any two renderings. */
const stable = (text: string) =>
  text.split("\n").filter((l) =>
    !/^(process_resident_memory_bytes|sluice_js_memory_bytes)\b/.test(l)
  )
    .join("\n");

/** The same traffic, split between two workers and seen by one. */
function traffic(targets: Metrics[]) {
  const at = (i: number) => targets[i % targets.length];
  for (let i = 0; i < 7; i++) at(i).requests.inc({ verdict: "allow", mode: "explicit" });
  for (let i = 0; i < 3; i++) at(i + 1).requests.inc({ verdict: "deny", mode: "transparent" });
  at(1).violations.inc({ credential: 'we"ird\\name' });
  at(0).refused.inc({ code: "limit-total", mode: "explicit" });
  for (let i = 0; i < 9; i++) {
    at(i).duration.observe(i / 100, { verdict: i % 3 ? "allow" : "deny" });
  }
  at(1).duration.observe(0.5);
}

Deno.test("mergeMetrics() of two workers' registries prints what one registry with all the traffic prints", () => {
  const [a, b, one] = [
    registry(1, { hits: 2, misses: 1, size: 1 }, 1),
    registry(1, { hits: 3, misses: 4, size: 4 }, 2),
    registry(1, { hits: 5, misses: 5, size: 5 }, 3),
  ];
  traffic([a, b]);
  traffic([one]);
  // The main thread's registry carries the policy's figures and no traffic.
  const main = registry(1);
  assertEquals(stable(mergeMetrics(main.render(), [a.render(), b.render()])), stable(one.render()));
});

Deno.test("mergeMetrics() takes the policy's and the process's figures from the main thread alone", () => {
  const main = registry(3);
  main.reloads.inc({ result: "ok" }, 2);
  const w = registry(7);
  w.reloads.inc({ result: "ok" }, 5);
  const text = mergeMetrics(main.render(), [w.render(), w.render()]);
  assertEquals(/^sluice_policy_generation (\d+)$/m.exec(text)?.[1], "3");
  assertEquals(/^sluice_reloads_total\{result="ok"\} (\d+)$/m.exec(text)?.[1], "2");
  assertEquals(text.match(/^process_resident_memory_bytes /gm)?.length, 1);
  assertEquals(MAIN_ONLY.has("sluice_requests_total"), false);
});

Deno.test("mergeMetrics() with no worker answering is the main thread's rendering", () => {
  const text = registry(2).render();
  assertEquals(mergeMetrics(text, []), text);
});

Deno.test("parseWorkers() defaults to the cores, at most 4, and refuses what is not 1 to 64", () => {
  assertEquals([parseWorkers(undefined, 2), parseWorkers(undefined, 16)], [2, 4]);
  assertEquals(parseWorkers(undefined, 0), 1);
  assertEquals([parseWorkers("1", 8), parseWorkers("12", 2)], [1, 12]);
  for (const bad of ["0", "65", "two", "1.5", "-1", ""]) {
    let error = "";
    try {
      parseWorkers(bad, 2);
    } catch (e) {
      error = (e as Error).message;
    }
    assertEquals(
      error.startsWith(`--workers (or SLUICE_WORKERS) "${bad}" is not a whole number from 1 to 64`),
      true,
    );
  }
});

/**
 * The trimmer returns memory glibc keeps after a free: 48 MiB of small chunks allocated with
 * libc's malloc (so they come from the heap, not from mmap), touched, and freed except the last
 * one (so glibc cannot shrink the heap from the top by itself) stay resident until
 * `trimNativeMemory()` gives their pages back.
 */
import { assert, assertEquals } from "../../_assert.ts";
import { startTrimmer, trimNativeMemory } from "../../../lib/ops/memory.ts";

const CHUNK = 1024n;
const CHUNKS = 48 * 1024;
const MiB = 1024 * 1024;

Deno.test({
  name: "trimNativeMemory() returns the pages of freed heap chunks to the system",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const libc = Deno.dlopen("libc.so.6", {
      malloc: { parameters: ["usize"], result: "pointer" },
      free: { parameters: ["pointer"], result: "void" },
      memset: { parameters: ["pointer", "i32", "usize"], result: "pointer" },
    });
    try {
      // Whatever an earlier test left free is returned first, so the figures below are ours.
      assert(await trimNativeMemory(), "malloc_trim is available here (Linux, glibc, --allow-ffi)");
      const before = Deno.memoryUsage().rss;
      const chunks: Deno.PointerValue[] = [];
      for (let i = 0; i < CHUNKS; i++) {
        const p = libc.symbols.malloc(CHUNK);
        libc.symbols.memset(p, 1, CHUNK);
        chunks.push(p);
      }
      const held = Deno.memoryUsage().rss;
      for (let i = 0; i < CHUNKS - 1; i++) libc.symbols.free(chunks[i]);
      const freed = Deno.memoryUsage().rss;
      assert(await trimNativeMemory());
      const trimmed = Deno.memoryUsage().rss;
      libc.symbols.free(chunks[CHUNKS - 1]);
      const grew = held - before, kept = freed - trimmed;
      assert(grew > 40 * MiB, `the chunks made the process grow (${grew / MiB} MiB)`);
      // Half the chunks, not all: RSS is the whole process's, and under a loaded CI run other
      // threads allocate meanwhile, some of it from the freed chunks (once 37.9 of 48 MiB came
      // back). Without the trim nothing comes back, so half still tells the two apart.
      assert(
        kept > 24 * MiB,
        `free() kept the pages and the trim returned them (${kept / MiB} MiB)`,
      );
    } finally {
      libc.close();
    }
  },
});

Deno.test({
  name: "startTrimmer() is active here and stops",
  ignore: Deno.build.os !== "linux",
  fn() {
    const t = startTrimmer({ intervalMs: 60_000 });
    assertEquals(t.active, true);
    t.stop();
  },
});

Deno.test("startTrimmer() trims after quiet intervals only", async () => {
  // 20 ms intervals: busy means more than 10% of a core, 0.2 ticks of 10 ms. The process's CPU
  // time is scripted: quiet, busy, busy, quiet, quiet.
  const readings = [0, 0, 5, 10, 10, 10];
  let at = 0;
  const trims: number[] = [];
  const t = startTrimmer({
    intervalMs: 20,
    cpuTicks: () => readings[Math.min(at++, readings.length - 1)],
    trim: () => {
      trims.push(at - 1);
      return Promise.resolve();
    },
  });
  // However slow the machine: until the scripted readings are used up.
  const deadline = Date.now() + 10_000;
  while (at < readings.length + 1 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  t.stop();
  // Readings 1..5 are the interval ends: 1 quiet, 2 and 3 busy, 4 and 5 quiet, then quiet.
  assertEquals(trims.slice(0, 3), [1, 4, 5]);
});

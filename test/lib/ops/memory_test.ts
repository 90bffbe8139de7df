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
      mincore: { parameters: ["pointer", "usize", "buffer"], result: "i32" },
      sysconf: { parameters: ["i32"], result: "i64" },
    });
    try {
      assert(await trimNativeMemory(), "malloc_trim is available here (Linux, glibc, --allow-ffi)");
      const chunks: Deno.PointerValue[] = [];
      for (let i = 0; i < CHUNKS; i++) {
        const p = libc.symbols.malloc(CHUNK);
        libc.symbols.memset(p, 1, CHUNK);
        chunks.push(p);
      }
      // The pages of the chunks themselves, counted with mincore(2): not the process's RSS,
      // which `deno test --parallel` shares with every other test module running meanwhile (one
      // CI run saw the process shrink while these 48 MiB were touched, another saw only 37.9 of
      // them come back). The last chunk stays allocated, so glibc cannot return the range by
      // shrinking its heap from the top: only the trim gives these pages back.
      // Page by page, the pages the chunks lie in: a single range from the lowest chunk to the
      // highest can span unmapped gaps (a CI run's mincore failed with ENOMEM), when the chunks
      // came from more than one heap.
      const page = BigInt(libc.symbols.sysconf(30 /* _SC_PAGESIZE */));
      const pages = [
        ...new Set(chunks.slice(0, -1).map((p) => BigInt(Deno.UnsafePointer.value(p)) / page)),
      ].map((n) => Deno.UnsafePointer.create(n * page));
      const vec = new Uint8Array(1);
      const resident = () => {
        let n = 0;
        for (const p of pages) {
          assertEquals(libc.symbols.mincore(p, page, vec), 0, "mincore");
          n += vec[0] & 1;
        }
        return n * Number(page);
      };
      const held = resident();
      for (let i = 0; i < CHUNKS - 1; i++) libc.symbols.free(chunks[i]);
      const freed = resident();
      assert(await trimNativeMemory());
      const trimmed = resident();
      libc.symbols.free(chunks[CHUNKS - 1]);
      assert(held > 40 * MiB, `the chunks' pages are resident (${held / MiB} MiB)`);
      assert(freed > 40 * MiB, `free() kept their pages (${freed / MiB} MiB)`);
      // What came back, not what is left: in a process shared with other test modules, other
      // allocations can share the chunks' pages (one CI run, over a single range: 65.8 MiB
      // resident, 17.4 after the trim, so all 48 MiB of the chunks came back). Two thirds of
      // them, for a margin.
      assert(
        freed - trimmed > 32 * MiB,
        `the trim returned them (${freed / MiB} MiB before, ${trimmed / MiB} MiB after)`,
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

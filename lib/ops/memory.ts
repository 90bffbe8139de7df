/**
 * Giving freed native memory back to the system: glibc's `malloc_trim(0)`, every few seconds,
 * on a thread of its own.
 *
 * Deno's native side (rustls and hyper state per connection, handshake buffers, the upstream
 * client's) allocates with glibc's malloc (the `deno` executable links no other allocator), and
 * glibc keeps freed chunks inside its heap instead of returning their pages: after a burst of
 * handshakes or connections, that memory stays resident. `malloc_trim` returns the free pages
 * of every arena (madvise), whatever lies above them.
 *
 * Measured with `bench/peers.sh`'s idle cell (`ROUNDS=1 CELLS=none SYSTEMS=sluice`, fresh
 * process, 1,000 idle intercepted connections, three alternating runs, 2026-12-02): 127.2,
 * 129.9 and 127.1 MiB without trimming, 122.0, 122.7 and 122.5 MiB with a trim every 500 ms.
 * `MALLOC_ARENA_MAX=1` changed nothing (126.6, 125.4, 126.0): the memory is in the main arena.
 * A trim took 0.2–1 ms with the connections idle and ~3.5 ms right after 1,000 of them closed;
 * it runs on Deno's blocking pool (`nonblocking` FFI), so the event loop does not wait for it,
 * only a native allocation that needs the arena it is trimming at that moment.
 *
 * Needs Linux, glibc and `--allow-ffi`; anywhere else (musl has no `malloc_trim`) it does
 * nothing, and never prompts for a permission.
 *
 * @module
 */
import { granted } from "../tls/sockopt.ts";

/** How often the trimmer runs: often enough that an idle process is trimmed within seconds. */
export const TRIM_INTERVAL_MS = 2_000;

const SYMBOLS = {
  malloc_trim: { parameters: ["usize"], result: "i32", nonblocking: true },
} as const;

type Trim = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"]["malloc_trim"];

/** undefined: not tried yet; null: unavailable (not Linux/glibc, no permission). */
let trimFn: Trim | null | undefined;

function getTrim(): Trim | null {
  if (trimFn !== undefined) return trimFn;
  trimFn = null;
  if (Deno.build.os !== "linux" || !granted({ name: "ffi" })) return trimFn;
  try {
    // Never closed: it lives as long as the process, like libc itself.
    trimFn = Deno.dlopen("libc.so.6", SYMBOLS).symbols.malloc_trim;
  } catch {
    trimFn = null;
  }
  return trimFn;
}

/**
 * Returns glibc's free heap pages to the system once, now.
 *
 * @returns whether a trim ran (false where it is unavailable)
 */
export async function trimNativeMemory(): Promise<boolean> {
  const trim = getTrim();
  if (!trim) return false;
  await trim(0n);
  return true;
}

/** What {@link startTrimmer} returns. */
export type Trimmer = {
  /** Whether trimming is available here (Linux, glibc, `--allow-ffi`). */
  readonly active: boolean;
  stop(): void;
};

/**
 * Trims every `intervalMs` for the life of the process (an unreferenced timer: it never keeps
 * the process alive), one trim at a time.
 */
export function startTrimmer(intervalMs = TRIM_INTERVAL_MS): Trimmer {
  if (!getTrim()) return { active: false, stop: () => {} };
  let running = false;
  const timer = setInterval(() => {
    if (running) return;
    running = true;
    trimNativeMemory().catch(() => {}).finally(() => running = false);
  }, intervalMs);
  Deno.unrefTimer(timer);
  return { active: true, stop: () => clearInterval(timer) };
}

/**
 * Giving freed native memory back to the system: glibc's `malloc_trim(0)`, every few seconds
 * while the process is quiet, on a thread of its own.
 *
 * Deno's native side (rustls and hyper state per connection, handshake buffers, the upstream
 * client's) allocates with glibc's malloc (the `deno` executable links no other allocator), and
 * glibc keeps freed chunks inside its heap instead of returning their pages: after a burst of
 * handshakes or connections, that memory stays resident. `malloc_trim` returns the free pages
 * of every arena (madvise), whatever lies above them.
 *
 * Measured with `bench/peers.sh`'s idle cell (`ROUNDS=1 CELLS=none SYSTEMS=sluice`, fresh
 * process, 1,000 idle intercepted connections, alternating with the commit before, 2026-12-02):
 * - a trim every 500 ms: 122.0, 122.7 and 122.5 MiB against 127.2, 129.9 and 127.1 (read 2 s
 *   after the connections were up); `MALLOC_ARENA_MAX=1` changed nothing (126.6, 125.4, 126.0):
 *   the memory is in the main arena;
 * - a trim every 2 s, read 10 s after: 123.7, 123.9 and 123.6 against 131.4, 130.3 and 128.6;
 * - a trim every 2 s after a quiet interval only (what ships), read 10 s after: 125.3, 123.2 and
 *   127.0 against 130.6, 130.8 and 128.0.
 * A trim took 0.2–1 ms with the connections idle and ~3.5 ms right after 1,000 of them closed;
 * it runs on Deno's blocking pool (`nonblocking` FFI), so the event loop does not wait for it,
 * only a native allocation that needs the arena it is trimming at that moment.
 *
 * Needs Linux, glibc and `--allow-ffi`; anywhere else (musl has no `malloc_trim`) it does
 * nothing, and never prompts for a permission.
 *
 * @module
 */
import { openLibc } from "../tls/sockopt.ts";
import { statField } from "./proc_stat.ts";

/** How often the trimmer runs: often enough that an idle process is trimmed within seconds. */
export const TRIM_INTERVAL_MS = 2_000;

const SYMBOLS = {
  malloc_trim: { parameters: ["usize"], result: "i32", nonblocking: true },
} as const;

type Trim = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"]["malloc_trim"];

/** undefined: not tried yet; null: unavailable (not Linux/glibc, no permission). */
let trimFn: Trim | null | undefined;

function getTrim(): Trim | null {
  if (trimFn === undefined) trimFn = openLibc(SYMBOLS)?.malloc_trim ?? null;
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

/** A process busier than this share of one core over an interval is not trimmed in it. */
export const BUSY_SHARE = 0.1;

/**
 * CPU time the whole process (every thread) has used, in clock ticks, from /proc/self/stat;
 * undefined where it cannot be read.
 */
function cpuTicks(): number | undefined {
  try {
    const stat = Deno.readTextFileSync("/proc/self/stat");
    // utime and stime.
    return Number(statField(stat, 14)) + Number(statField(stat, 15));
  } catch {
    return undefined;
  }
}

/**
 * Trims every `intervalMs` for the life of the process (an unreferenced timer: it never keeps
 * the process alive), one trim at a time, and only after an interval in which the process used
 * less than {@link BUSY_SHARE} of a core. Under load the freed chunks are reused at once, and
 * trimming them costs page faults when they are: three alternating keep-alive pairs on
 * 2026-12-02 were 0.2–3% slower with an unconditional trim every 2 s. Once the load stops, the
 * next quiet interval trims.
 *
 * @param opts how often to look, and (for tests) where CPU time and the trim come from
 */
export function startTrimmer(opts: TrimmerOptions = {}): Trimmer {
  const trim = opts.trim ?? (getTrim() ? trimNativeMemory : undefined);
  if (!trim) return { active: false, stop: () => {} };
  const intervalMs = opts.intervalMs ?? TRIM_INTERVAL_MS;
  const ticks = opts.cpuTicks ?? cpuTicks;
  // USER_HZ, the unit of /proc/self/stat's times: 100 on Linux.
  const busyTicks = (intervalMs / 1000) * 100 * BUSY_SHARE;
  let running = false;
  let last = ticks();
  const timer = setInterval(() => {
    const now = ticks();
    const busy = now !== undefined && last !== undefined && now - last > busyTicks;
    last = now;
    if (running || busy) return;
    running = true;
    trim().catch(() => {}).finally(() => running = false);
  }, intervalMs);
  Deno.unrefTimer(timer);
  return { active: true, stop: () => clearInterval(timer) };
}

/** Options of {@link startTrimmer}. */
export type TrimmerOptions = {
  /** How often to look (default {@link TRIM_INTERVAL_MS}). */
  intervalMs?: number;
  /** The process's CPU time in clock ticks (default: /proc/self/stat). */
  cpuTicks?: () => number | undefined;
  /** The trim (default {@link trimNativeMemory}). */
  trim?: () => Promise<unknown>;
};

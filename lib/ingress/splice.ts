/**
 * Moving raw bytes between two connections (passthrough TLS, CONNECT
 * tunnels, the loopback hop into the TLS terminator, upgraded WebSockets).
 *
 * A plain read/write loop with one reused buffer per direction: PLATFORM.md
 * measured it at ~2x `readable.pipeTo(writable)`.
 *
 * Buffers adapt: every direction starts with a small buffer, which is all an
 * idle or request/response connection ever needs; a read that fills it moves
 * that direction to a large buffer borrowed from a shared free list, and the
 * first short read gives it back. A fixed 64 KiB per direction cost 128 KiB of
 * RSS per idle intercepted connection (measured: 1,000 idle connections took
 * ~120 MiB); bulk transfers still move 64 KiB per read.
 *
 * @module
 */
import { type Activity, TunnelClock, watchOf } from "./limits.ts";

/** Something we can read from, write to, and close: Deno.Conn, TlsConn, or an adapter. */
export type Duplex = {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  close(): void;
  closeWrite?(): Promise<void>;
};

/** Per-direction buffer while traffic is light (one TLS record of a typical request). */
const SMALL = 1024;
/** Per-direction buffer during bulk transfers. */
const LARGE = 64 * 1024;
/** Large buffers kept for reuse; more than this many are left to the garbage collector. */
const MAX_SPARE = 16;
const spare: Uint8Array[] = [];

function borrow(): Uint8Array {
  return spare.pop() ?? new Uint8Array(LARGE);
}

function giveBack(buf: Uint8Array): void {
  if (spare.length < MAX_SPARE) spare.push(buf);
}

async function writeAll(w: Duplex, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await w.write(data.subarray(off));
}

async function pump(from: Duplex, to: Duplex, count: (n: number) => void): Promise<void> {
  const small = new Uint8Array(SMALL);
  let buf: Uint8Array = small;
  // On an error the large buffer is not given back, only dropped: simpler than proving
  // no operation still holds it.
  while (true) {
    const n = await from.read(buf);
    if (n === null) break;
    await writeAll(to, buf.subarray(0, n));
    count(n);
    if (n === buf.length && buf === small) buf = borrow();
    else if (n < SMALL && buf !== small) {
      giveBack(buf);
      buf = small;
    }
  }
  if (buf !== small) giveBack(buf);
  // Half-close: the peer may still be sending its answer.
  await to.closeWrite?.().catch(() => {});
}

/**
 * Copies bytes both ways until both directions end (or either fails), then
 * closes both sides. Never rejects: a broken connection is a normal end.
 *
 * The idle deadline: given an {@link Activity}, splice reports each direction's bytes to it and
 * whoever owns it (the connection's watch, limits.ts) enforces the deadline. Given a number of
 * ms, a connection sluice accepted (`a`, with a watch) follows a {@link TunnelClock}, enforced by
 * the one sweep; any other pair gets a timer of its own.
 *
 * @param first bytes already read from `a` that must reach `b` first (a sniffed ClientHello)
 * @param idle close both sides when no byte has moved either way for this many ms (0: never),
 *   or an Activity told of every byte moved
 * @returns bytes moved a→b (including `first`) and b→a, and whether the idle timeout ended it
 */
export async function splice(
  a: Duplex,
  b: Duplex,
  first?: Uint8Array,
  idle: number | Activity = 0,
): Promise<{ aToB: number; bToA: number; error?: unknown; idle?: boolean }> {
  let aToB = 0, bToA = 0;
  let error: unknown;
  let activity: Activity | undefined = typeof idle === "number" ? undefined : idle;
  const watch = typeof idle === "number" && idle > 0 ? watchOf(a) : undefined;
  if (watch) {
    const clock = new TunnelClock(idle as number, watch.now);
    watch.follow(clock);
    activity = clock;
  }
  let timedOut = false;
  let last = Date.now();
  // Only for pairs no watch covers: one coarse timer per splice, not one per read.
  const timer = !activity && typeof idle === "number" && idle > 0
    ? setInterval(() => {
      if (Date.now() - last >= idle) {
        timedOut = true;
        closeBoth();
      }
    }, Math.max(50, Math.floor(idle / 4)))
    : undefined;
  const closeBoth = () => {
    for (const c of [a, b]) {
      try {
        c.close();
      } catch { /* already closed */ }
    }
  };
  const up = activity
    ? (n: number) => {
      aToB += n;
      activity.up();
    }
    : (n: number) => {
      aToB += n;
      last = Date.now();
    };
  const down = activity
    ? (n: number) => {
      bToA += n;
      activity.down();
    }
    : (n: number) => {
      bToA += n;
      last = Date.now();
    };
  try {
    if (first && first.length) {
      await writeAll(b, first);
      aToB += first.length;
    }
    await Promise.all([
      pump(a, b, up).catch((e) => {
        error ??= e;
        closeBoth();
      }),
      pump(b, a, down).catch((e) => {
        error ??= e;
        closeBoth();
      }),
    ]);
  } catch (e) {
    error ??= e;
  } finally {
    clearInterval(timer);
    closeBoth();
  }
  if (watch?.expired === "tunnel") timedOut = true;
  return { aToB, bToA, error, idle: timedOut };
}

export { writeAll };

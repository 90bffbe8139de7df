/**
 * The upstream client's deadlines (a connection's idle timeout in the pool, a request's wait for
 * its response head), checked by one coarse timer rather than a `setTimeout` and `clearTimeout`
 * per request: the same idea as the client side's sweep in lib/ingress/limits.ts.
 *
 * Why: a keep-alive request used to arm and clear two timers (the header deadline, then the idle
 * deadline when its connection went back to the pool), each a Timeout object and a timer-heap
 * update in Deno 2.9. Arming a deadline here is a field write and a Set insertion. Measured with
 * bench/request_path_bench.ts (one keep-alive client, CPU per request, medians of 3 runs): the
 * "minimal" proxy over this pool went from ~74 to ~61 µs with this and client.ts's single abort
 * listener.
 *
 * The price is precision: a deadline fires up to one resolution late (a quarter of the shortest
 * timeout, at most 250 ms, so a 30 s idle timeout closes between 30 and 30.25 s). No deadline
 * fires early.
 *
 * @module
 */

/** Something with one deadline at a time: `expire` runs once the clock passes `deadline`. */
export interface Expiring {
  /** When it expires (ms, `performance.now()` clock); Infinity when not armed. */
  deadline: number;
  /** What to do when the deadline passes (set with the deadline). */
  expire: (() => void) | undefined;
}

/** A set of armed deadlines and the one interval timer that checks them. */
export class Deadlines {
  readonly #armed = new Set<Expiring>();
  readonly #resolutionMs: number;
  #timer: ReturnType<typeof setInterval> | undefined;
  readonly #sweep = (): void => this.sweep();

  /**
   * @param shortestMs the shortest timeout that will be armed; the timer runs every quarter of
   *   it (at least 1 ms, at most 250 ms)
   */
  constructor(shortestMs: number) {
    this.#resolutionMs = Math.max(1, Math.min(250, Math.floor(shortestMs / 4)));
  }

  /** How often the timer runs while something is armed (ms). */
  get resolutionMs(): number {
    return this.#resolutionMs;
  }

  /**
   * Arm (or re-arm) `item` to expire `ms` from now.
   *
   * @param item what expires
   * @param ms how long from now
   * @param expire called once when the deadline passes, unless disarmed first
   */
  arm(item: Expiring, ms: number, expire: () => void): void {
    item.deadline = performance.now() + ms;
    item.expire = expire;
    this.#armed.add(item);
    if (this.#timer === undefined) {
      this.#timer = setInterval(this.#sweep, this.#resolutionMs);
      // A deadline alone must not keep the process alive (the connection's own I/O does).
      Deno.unrefTimer(this.#timer);
    }
  }

  /** Disarm `item`; nothing happens when it was not armed. */
  disarm(item: Expiring): void {
    item.deadline = Infinity;
    item.expire = undefined;
    this.#armed.delete(item);
  }

  /**
   * Expire everything whose deadline has passed. Runs on the timer; the timer stops when a
   * sweep finds nothing armed, and starts again with the next {@link arm}.
   *
   * @param now the clock (tests)
   */
  sweep(now: number = performance.now()): void {
    if (this.#armed.size === 0) {
      this.stop();
      return;
    }
    for (const item of this.#armed) {
      if (item.deadline > now) continue;
      const expire = item.expire;
      this.disarm(item);
      try {
        expire?.();
      } catch (e) {
        // One failing expiry must not leave the others armed forever.
        console.error(`sluice: upstream deadline: ${(e as Error)?.message ?? e}`);
      }
    }
  }

  /** Stop the timer; what is still armed waits for the next {@link arm} to start it again. */
  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** How many deadlines are armed (tests, stats). */
  get size(): number {
    return this.#armed.size;
  }
}

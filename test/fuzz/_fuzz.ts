/**
 * What every fuzz test shares: a seeded PRNG per case (so a failure names the one case to
 * replay), the environment knobs, and the generic byte mutator.
 *
 * @module
 */
import { cat } from "../_bytes.ts";

/** A non-negative integer from the environment, or `fallback` when unset (or no --allow-env). */
export function envNumber(name: string, fallback: number): number {
  let raw: string | undefined;
  try {
    raw = Deno.env.get(name);
  } catch {
    raw = undefined; // no --allow-env: use the default
  }
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new Error(
      `${name}=${JSON.stringify(raw)} is not a non-negative integer; unset it or fix it`,
    );
  }
  return n;
}

/** mulberry32: tiny, fast, and good enough to spread cases; not for anything secret. */
export function mulberry32(a: number): () => number {
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A PRNG for one case, drawn from (seed, case index). */
export class Rng {
  #next: () => number;
  constructor(seed: number, index: number) {
    this.#next = mulberry32((seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0);
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.#next() * n);
  }
  chance(p: number): boolean {
    return this.#next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }
}

/** What {@link mutateBytes} splices in: bytes, format tokens and 16-bit extremes. */
export type MutationTable = {
  interesting: readonly number[];
  extras: readonly Uint8Array[];
  lengths: readonly number[];
};

/**
 * One byte-level mutation of `b`: a bit flip, an interesting byte, inserted, deleted or
 * duplicated bytes, truncation, a format token, a splice with `other`, or a 16-bit field set
 * to an extreme. The draws from `rng` are fixed per case, so a seed replays the same input.
 */
export function mutateBytes(
  rng: Rng,
  b: Uint8Array,
  other: Uint8Array,
  table: MutationTable,
): Uint8Array {
  const at = rng.int(b.length + 1);
  switch (rng.int(9)) {
    case 0: { // bit flip
      if (b.length === 0) return b;
      const c = b.slice();
      c[at % b.length] ^= 1 << rng.int(8);
      return c;
    }
    case 1: { // set a byte to an interesting or random value
      if (b.length === 0) return b;
      const c = b.slice();
      c[at % b.length] = rng.chance(0.5) ? rng.pick(table.interesting) : rng.int(256);
      return c;
    }
    case 2: // insert random bytes
      return cat(b.subarray(0, at), rng.bytes(1 + rng.int(4)), b.subarray(at));
    case 3: // delete a run
      return cat(b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + rng.int(8))));
    case 4: // truncate
      return b.subarray(0, at);
    case 5: // insert a format-specific token
      return cat(b.subarray(0, at), rng.pick(table.extras), b.subarray(at));
    case 6: { // splice: our head, another input's tail
      const from = rng.int(other.length + 1);
      return cat(b.subarray(0, at), other.subarray(from));
    }
    case 7: { // duplicate a chunk in place
      const len = 1 + rng.int(32);
      return cat(b.subarray(0, at), b.subarray(at, at + len), b.subarray(at));
    }
    default: { // overwrite two bytes (a 16-bit length somewhere) with an extreme value
      if (b.length < 2) return b;
      const c = b.slice();
      const p = at % (b.length - 1);
      const v = rng.pick(table.lengths);
      c[p] = v >> 8;
      c[p + 1] = v & 0xff;
      return c;
    }
  }
}

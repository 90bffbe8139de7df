/**
 * Byte arrays joined: the one helper every stage needs (heads before bodies, a held tail before
 * the next chunk, DER parts). Outside the stage folders because it belongs to none of them.
 *
 * Not `Buffer.concat`: for small results node's Buffer hands out slices of a shared pool, and a
 * caller that reads `.buffer` (DataView, WebCrypto) or transfers it would see its neighbours.
 *
 * @module
 */

/**
 * The parts, in order, in one new array of their own. An array, not arguments: a dripped
 * request head may arrive in thousands of pieces, more than a spread call should carry.
 *
 * @example
 * ```ts
 * import { concatBytes } from "./bytes.ts";
 * const joined = concatBytes([new Uint8Array([1, 2]), new Uint8Array([3])]);
 * if (joined.join(",") !== "1,2,3") throw new Error(String(joined));
 * ```
 */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

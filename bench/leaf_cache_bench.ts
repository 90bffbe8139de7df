/**
 * Cost of a leaf certificate: minted (a signature and the DER encoding) versus served from the
 * LeafCache. `deno bench --allow-all bench/leaf_cache_bench.ts`.
 */
import { ephemeralCa, mintLeaf } from "../lib/tls/ca.ts";
import { LeafCache } from "../lib/tls/leaf_cache.ts";

const ca = await ephemeralCa();
// The shared leaf key is generated at the first mint; keep that one-off out of the figures.
await mintLeaf(ca, "warmup.test");

let n = 0;
Deno.bench("mintLeaf() for a new name (P-256 CA, shared leaf key)", { group: "leaf" }, async () => {
  await mintLeaf(ca, `host${n++}.example.test`);
});

const cache = new LeafCache(ca);
await cache.get("hot.example.test");
Deno.bench("LeafCache.get() hit", { group: "leaf", baseline: true }, async () => {
  await cache.get("hot.example.test");
});

let m = 0;
const small = new LeafCache(ca, { max: 100 });
Deno.bench("LeafCache.get() miss (mint + insert, LRU full)", { group: "leaf" }, async () => {
  await small.get(`miss${m++}.example.test`);
});

Deno.bench("ephemeralCa() (key pair + self-signed CA)", async () => {
  await ephemeralCa();
});

import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { CaError, ephemeralCa, type MintedLeaf } from "../../../lib/tls/ca.ts";
import { LeafCache, type LeafMinter } from "../../../lib/tls/leaf_cache.ts";

const DAY = 86_400_000;

/** A CA for constructing caches whose minter is replaced (it is never asked to sign). */
const ca = await ephemeralCa();

/** A fake minter: counts calls, labels each leaf, and can be held or made to fail. */
function fakeMinter(validityMs = 7 * DAY): LeafMinter & {
  calls: string[];
  gate?: Promise<void>;
  fail?: Error;
} {
  const mint = (async (name: string, now: Date): Promise<MintedLeaf> => {
    mint.calls.push(name);
    const n = mint.calls.length;
    if (mint.gate) await mint.gate;
    if (mint.fail) throw mint.fail;
    return {
      certPem: `cert ${name} #${n}`,
      keyPem: "key",
      notBefore: now,
      notAfter: new Date(now.getTime() + validityMs),
    };
  }) as LeafMinter & { calls: string[]; gate?: Promise<void>; fail?: Error };
  mint.calls = [];
  return mint;
}

Deno.test("LeafCache.get() mints on a miss and answers repeats from the cache", async () => {
  const mint = fakeMinter();
  const cache = new LeafCache(ca, { mint });
  const a1 = await cache.get("a.test");
  const b = await cache.get("b.test");
  const a2 = await cache.get("a.test");
  assert.deepEqual(a1, { cert: "cert a.test #1", key: "key" });
  assert.deepEqual(b, { cert: "cert b.test #2", key: "key" });
  assert.equal(a2, a1);
  assert.deepEqual(mint.calls, ["a.test", "b.test"]);
  assert.deepEqual(cache.stats(), { hits: 1, misses: 2, mints: 2, size: 2 });
});

Deno.test("LeafCache.get() treats case, a trailing dot and IPv6 spellings as one name", async () => {
  const mint = fakeMinter();
  const cache = new LeafCache(ca, { mint });
  const first = await cache.get("Api.Example.TEST.");
  assert.equal(await cache.get("api.example.test"), first);
  const ip = await cache.get("[2001:DB8::1]");
  assert.equal(await cache.get("2001:db8:0:0:0:0:0:1"), ip);
  assert.deepEqual(mint.calls, ["api.example.test", "2001:db8::1"]);
});

Deno.test("LeafCache.get() shares one mint among concurrent callers for a name", async () => {
  const mint = fakeMinter();
  let open!: () => void;
  mint.gate = new Promise((resolve) => (open = resolve));
  const cache = new LeafCache(ca, { mint });
  const pending = [
    ...Array.from({ length: 10 }, () => cache.get("a.test")),
    cache.get("A.TEST"),
    cache.get("b.test"),
  ];
  open();
  const got = await Promise.all(pending);
  assert.deepEqual(mint.calls, ["a.test", "b.test"]);
  for (const pair of got.slice(0, 11)) assert.equal(pair, got[0]);
  assert.notEqual(got[11], got[0]);
  assert.deepEqual(cache.stats(), { hits: 0, misses: 12, mints: 2, size: 2 });
});

Deno.test("LeafCache.get() does not cache a failed mint: the next call retries", async () => {
  const mint = fakeMinter();
  let open!: () => void;
  mint.gate = new Promise((resolve) => (open = resolve));
  mint.fail = new Error("signing failed");
  const cache = new LeafCache(ca, { mint });
  const both = [cache.get("a.test"), cache.get("a.test")];
  open();
  for (const p of both) await assert.rejects(p, /signing failed/);
  assert.equal(cache.stats().size, 0);

  mint.fail = undefined;
  assert.deepEqual(await cache.get("a.test"), { cert: "cert a.test #2", key: "key" });
  assert.deepEqual(mint.calls, ["a.test", "a.test"]);
  assert.deepEqual(cache.stats(), { hits: 0, misses: 3, mints: 2, size: 1 });
});

Deno.test("LeafCache.get() recovers from a minter that throws synchronously", async () => {
  let calls = 0;
  const cache = new LeafCache(ca, {
    mint: ((name: string, now: Date) => {
      calls++;
      if (calls === 1) throw new Error("sync failure");
      return Promise.resolve({ certPem: name, keyPem: "k", notBefore: now, notAfter: now });
    }) as LeafMinter,
    renewBeforeMs: 0,
  });
  await assert.rejects(cache.get("a.test"), /sync failure/);
  assert.equal((await cache.get("a.test")).cert, "a.test");
  assert.equal(calls, 2);
});

Deno.test("LeafCache.get() re-mints a leaf once it is within renewBeforeMs of expiry", async () => {
  let now = Date.UTC(2030, 0, 1);
  const mint = fakeMinter(7 * DAY);
  const cache = new LeafCache(ca, { mint, renewBeforeMs: DAY, now: () => now });
  const first = await cache.get("a.test");

  now += 6 * DAY - 1; // one millisecond before the renewal point
  assert.equal(await cache.get("a.test"), first);

  now += 1; // exactly one day before expiry
  const renewed = await cache.get("a.test");
  assert.deepEqual(renewed, { cert: "cert a.test #2", key: "key" });
  assert.equal(await cache.get("a.test"), renewed);
  assert.deepEqual(cache.stats(), { hits: 2, misses: 2, mints: 2, size: 1 });
});

Deno.test("LeafCache.get() passes its clock to the real minter", async () => {
  const now = Date.UTC(2030, 5, 1, 12, 0, 0);
  const cache = new LeafCache(ca, { now: () => now, validityHours: 48, renewBeforeMs: 0 });
  const pair = await cache.get("clock.test");
  const cert = new X509Certificate(pair.cert);
  assert.equal(new Date(cert.validFrom).getTime(), now - 3_600_000);
  assert.equal(new Date(cert.validTo).getTime(), now + 48 * 3_600_000);
});

Deno.test("LeafCache keeps at most max names, dropping the least recently used", async () => {
  const mint = fakeMinter();
  const cache = new LeafCache(ca, { mint, max: 2 });
  await cache.get("a.test");
  await cache.get("b.test");
  await cache.get("a.test"); // a is now the most recently used
  await cache.get("c.test"); // evicts b
  assert.equal(cache.stats().size, 2);
  await cache.get("a.test");
  await cache.get("b.test"); // minted again
  assert.deepEqual(mint.calls, ["a.test", "b.test", "c.test", "b.test"]);
  assert.deepEqual(cache.stats(), { hits: 2, misses: 4, mints: 4, size: 2 });
});

Deno.test("LeafCache.get() rejects names that are not DNS names or IPs, without minting", async () => {
  const mint = fakeMinter();
  const cache = new LeafCache(ca, { mint });
  for (const name of ["", "*.example.com", "a b", "fe80::1%eth0"]) {
    await assert.rejects(cache.get(name), CaError, JSON.stringify(name));
  }
  assert.deepEqual(mint.calls, []);
  assert.deepEqual(cache.stats(), { hits: 0, misses: 0, mints: 0, size: 0 });
});

Deno.test("LeafCache.get() with the real minter returns the chain and the shared leaf key", async () => {
  const cache = new LeafCache(ca);
  const a = await cache.get("a.test");
  const b = await cache.get("b.test");
  assert.equal(a.cert.match(/-----BEGIN CERTIFICATE-----/g)?.length, 2);
  assert.ok(a.cert.endsWith(ca.certPem));
  assert.match(a.key, /^-----BEGIN PRIVATE KEY-----\n/);
  assert.equal(a.key, b.key);
  assert.notEqual(a.cert, b.cert);
});

Deno.test("LeafCache constructor rejects settings that cannot work", () => {
  const cases: [string, ConstructorParameters<typeof LeafCache>[1], RegExp][] = [
    ["zero max", { max: 0 }, /max must be a positive integer/],
    ["fractional max", { max: 1.5 }, /max must be a positive integer/],
    ["negative renewal", { renewBeforeMs: -1 }, /renewBeforeMs must be zero or more/],
    ["renewal as long as validity", { validityHours: 24, renewBeforeMs: DAY }, /shorter than/],
  ];
  for (const [name, opts, want] of cases) {
    assert.throws(() => new LeafCache(ca, opts), want, name);
  }
});

Deno.test("LeafCache.lookup() answers a new name and a repeat in the same turn with the real minter", () => {
  // Deno's TLS resolver loses an asynchronous answer for handshakes of the same name that
  // arrive while it is pending (lib/tls/ca.ts mintLeafSync): the data path's resolvers return
  // this, so a first mint must not be a promise.
  const cache = new LeafCache(ca);
  const first = cache.lookup("new.test");
  assert.ok(!(first instanceof Promise), "a new name is answered without a promise");
  const leaf = new X509Certificate(first.cert.split(/(?<=-----END CERTIFICATE-----\n)/)[0]);
  assert.ok(leaf.checkHost("new.test"));
  assert.ok(leaf.verify(new X509Certificate(ca.certPem).publicKey), "signed by the CA");
  const again = cache.lookup("NEW.test.");
  assert.equal(again, first, "a repeat is the cached pair");
  assert.deepEqual(cache.stats(), { hits: 1, misses: 1, mints: 1, size: 1 });
  assert.throws(() => cache.lookup("bad name"), CaError, "a bad name throws, synchronously");
});

Deno.test("LeafCache.lookup() with an asynchronous minter shares one promise and stores its leaf", async () => {
  const mint = fakeMinter();
  let open!: () => void;
  mint.gate = new Promise((r) => open = r);
  const cache = new LeafCache(ca, { mint });
  const a = cache.lookup("a.test");
  const b = cache.lookup("a.test");
  assert.ok(a instanceof Promise && b === a, "one promise for concurrent callers");
  open();
  assert.equal((await a).cert, "cert a.test #1");
  assert.equal(cache.lookup("a.test"), await a, "then answered from the cache, no promise");
  assert.deepEqual(mint.calls, ["a.test"]);
});

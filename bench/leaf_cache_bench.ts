/**
 * Cost of a leaf certificate: minted (a signature and the DER encoding) versus served from the
 * LeafCache, and the DER-template minter (mintLeaf) beside the @peculiar/x509 one it replaced
 * (mintLeafReference), for each kind of CA key. `deno bench --allow-all bench/leaf_cache_bench.ts`.
 *
 * Measured on a busy 2-core AMD EPYC (issue 14), P-256 CA: mintLeaf min 0.50 ms, p75 0.57-0.64
 * ms; mintLeafReference (@peculiar/x509) min 2.0-2.3 ms, p75 5-15 ms. The template's cost is
 * one WebCrypto signature: P-384 ~1.7 ms and RSA-2048 ~1.6 ms (min) for the signature alone.
 * deno bench prints no median: averages here are skewed by scheduling noise, so compare
 * min/p75.
 */
import { ephemeralCa, loadCa, mintLeaf, mintLeafReference } from "../lib/tls/ca.ts";
import { LeafCache } from "../lib/tls/leaf_cache.ts";

const ca = await ephemeralCa();
// The shared leaf key is generated when the CA object is made; make sure it is done.
await mintLeaf(ca, "warmup.test");

let n = 0;
Deno.bench("mintLeaf() for a new name (P-256 CA, shared leaf key)", {
  group: "mint P-256",
  baseline: true,
}, async () => {
  await mintLeaf(ca, `host${n++}.example.test`);
});

Deno.bench("mintLeafReference() (@peculiar/x509, the old path)", {
  group: "mint P-256",
}, async () => {
  await mintLeafReference(ca, `host${n++}.example.test`);
});

Deno.bench("mintLeaf() for an IPv6 literal", { group: "mint P-256" }, async () => {
  await mintLeaf(ca, `2001:db8::${(n++ % 0xffff).toString(16)}`);
});

/** CAs as a user brings them, made by openssl (as in test/lib/tls/ca_test.ts). */
async function opensslCa(dir: string, keyArgs: string[]) {
  const run = async (args: string[]) => {
    const out = await new Deno.Command("openssl", { args, stdout: "null", stderr: "piped" })
      .output();
    if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  };
  await run([...keyArgs, "-out", `${dir}/ca.key`]);
  await run([
    "req",
    "-x509",
    "-new",
    "-key",
    `${dir}/ca.key`,
    "-subj",
    "/CN=bench CA",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign",
    "-days",
    "2",
    "-out",
    `${dir}/ca.crt`,
  ]);
  return await loadCa(`${dir}/ca.crt`, `${dir}/ca.key`);
}

const tmp = await Deno.makeTempDir({ prefix: "sluice-leaf-bench-" });
try {
  await Deno.mkdir(`${tmp}/p384`);
  await Deno.mkdir(`${tmp}/rsa`);
  const p384 = await opensslCa(`${tmp}/p384`, [
    "genpkey",
    "-algorithm",
    "EC",
    "-pkeyopt",
    "ec_paramgen_curve:P-384",
  ]);
  const rsa = await opensslCa(`${tmp}/rsa`, [
    "genpkey",
    "-algorithm",
    "RSA",
    "-pkeyopt",
    "rsa_keygen_bits:2048",
  ]);
  for (const [label, other] of [["P-384", p384], ["RSA-2048", rsa]] as const) {
    await mintLeaf(other, "warmup.test");
    Deno.bench(`mintLeaf() (${label} CA)`, { group: `mint ${label}`, baseline: true }, async () => {
      await mintLeaf(other, `host${n++}.example.test`);
    });
    Deno.bench(`mintLeafReference() (${label} CA)`, { group: `mint ${label}` }, async () => {
      await mintLeafReference(other, `host${n++}.example.test`);
    });
  }
} finally {
  await Deno.remove(tmp, { recursive: true });
}

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

Deno.bench("ephemeralCa() (key pair + self-signed CA + leaf key)", async () => {
  await ephemeralCa();
});

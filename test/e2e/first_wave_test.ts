/**
 * A burst of first connections to a name sluice has not seen yet (npm install's parallel
 * downloads from a registry, a browser opening a page) all get answered, for names a wildcard
 * allows and for names the policy lists. Deno 2.9.6's TLS resolver cache loses its answer for a
 * handshake of the same name that looks it up after the answer was sent but before Deno stored
 * it: that handshake ends with a close_notify and no response (lib/tls/ca.ts, `mintLeafSync`).
 * `deno task test` runs this file on both paths (again with SLUICE_DATA_PATH=hop).
 * - The hop path closes the race: a name's first handshake goes alone (terminator.ts,
 *   `#firstOfName`; test/lib/ingress/terminator_test.ts breaks it with asynchronous leaves).
 * - The direct path cannot hold a handshake (Deno accepts and handshakes in native code). It
 *   answers the names the policy lists before a client asks (direct.ts, `warm`: checked below
 *   through /metrics, with two workers sharing the port), and any other name on a timer turn
 *   (`onTimerTurn`), which narrows the race. Under two CPU hogs the wildcard test failed 6 of 64
 *   runs answered in the asking turn (2 to 27 of 960 connections lost), and none of 130 on a
 *   timer turn (2026-12-02). It stays strict: docs/data-path.md lists the direct path's residue
 *   under known gaps, and CI reports it if it shows.
 */
import { assertEquals } from "../_assert.ts";
import { type Sluice, startSluice } from "./_harness.ts";
import { firstWaveClient } from "./_first_wave.ts";

const NAMES = 30;
const PARALLEL = 32;
/** The data path under test: `deno task test` runs this file again with SLUICE_DATA_PATH=hop. */
const DIRECT = Deno.env.get("SLUICE_DATA_PATH") !== "hop";

/** The leaf cache's `stat` ("size": leaves minted and kept; "hits"), from sluice's /metrics. */
async function leafStat(adminPort: number, stat: "size" | "hits"): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`sluice_leaf_cache{stat="${stat}"}`));
  return Number(line?.split(" ")[1]);
}

/** Leaves minted so far. */
const leavesMinted = (adminPort: number) => leafStat(adminPort, "size");

/** sluice serve for the wave: the names resolve to loopback, `workers` workers. */
function startForWave(policy: string, dir: string, workers: number): Promise<Sluice> {
  return startSluice(policy, dir, [
    "--transparent-https",
    "127.0.0.1:0",
    "--admin",
    "127.0.0.1:0",
    "--workers",
    String(workers),
    ...Array.from({ length: NAMES }, (_, i) => ["--resolve", `n${i}.wave.test=127.0.0.1`]).flat(),
    "--limit",
    `per-client=${PARALLEL * 2}`,
  ]);
}

/** The burst: every connection to every name gets an HTTP response. */
async function everyConnectionAnswered(sluice: Sluice): Promise<void> {
  const wave = await firstWaveClient(sluice.transparentHttpsPort!, sluice.caPath, NAMES, PARALLEL);
  assertEquals(wave, { answered: NAMES * PARALLEL, failures: {} });
}

async function firstWave(allow: string, workers: number, warmedAhead: number) {
  const dir = await Deno.makeTempDir({ prefix: "sluice-first-wave-" });
  const policy = `${dir}/policy.yaml`;
  // The names resolve to loopback, so each request is answered by sluice itself (a 403 for a
  // private address), which is all this test needs: the handshake is what is under test.
  await Deno.writeTextFile(policy, `version: 1\nnetwork:\n  allow: ${allow}\n`);
  const sluice = await startForWave(policy, dir, workers);
  try {
    assertEquals(
      await leavesMinted(sluice.adminPort!),
      warmedAhead,
      "leaves minted before any client",
    );
    await everyConnectionAnswered(sluice);
  } finally {
    await sluice.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "every connection of a first burst to new names a wildcard allows gets a response",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () => firstWave(`["*.wave.test"]`, 1, 0),
});

// Two workers: two listeners share the port, and each must answer every name ahead (each has its
// own leaf cache; /metrics sums them).
Deno.test({
  name: "names the policy lists are answered before any client asks by every worker (direct " +
    "path), and every connection of a first burst to them gets a response",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    firstWave(
      JSON.stringify(Array.from({ length: NAMES }, (_, i) => `n${i}.wave.test`)),
      2,
      DIRECT ? 2 * NAMES : 0,
    ),
});

// A reload that keeps the placeholders keeps the direct listener and answers the new names on it.
Deno.test({
  name: "after a reload, the listener answers the reloaded policy's new listed names ahead " +
    "(direct path), and a first burst to them gets a response",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "sluice-first-wave-reload-" });
    const policy = `${dir}/policy.yaml`;
    const listed = (from: number, to: number) =>
      JSON.stringify(Array.from({ length: to - from }, (_, i) => `n${from + i}.wave.test`));
    await Deno.writeTextFile(policy, `version: 1\nnetwork:\n  allow: ${listed(0, 10)}\n`);
    const sluice = await startForWave(policy, dir, 1);
    try {
      assertEquals(await leavesMinted(sluice.adminPort!), DIRECT ? 10 : 0);
      await Deno.writeTextFile(policy, `version: 1\nnetwork:\n  allow: ${listed(0, NAMES)}\n`);
      const r = await fetch(`http://127.0.0.1:${sluice.adminPort}/reload`, { method: "POST" });
      assertEquals(r.status, 200, await r.text());
      // The warm-up after a reload runs on its own: wait for it. The listener is kept (the
      // placeholders did not change), so the first policy's ten names are not asked for again
      // (no cache hits) and the twenty new ones are minted.
      const want = { minted: DIRECT ? NAMES : 0, hits: 0 };
      const now = async () => ({
        minted: await leavesMinted(sluice.adminPort!),
        hits: await leafStat(sluice.adminPort!, "hits"),
      });
      const deadline = Date.now() + 10_000;
      let got = await now();
      while (got.minted < want.minted && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
        got = await now();
      }
      assertEquals(got, want, "the leaf cache after the reload, before any client");
      await everyConnectionAnswered(sluice);
    } finally {
      await sluice.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

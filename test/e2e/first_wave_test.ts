/**
 * A burst of first connections to a name sluice has not seen yet (npm install's parallel
 * downloads from a registry, a browser opening a page) all get answered. Deno 2.9.6's TLS
 * resolver loses an asynchronous answer for handshakes of the same name that arrive while it is
 * pending: they end with a close_notify and no response (lib/tls/ca.ts, `mintLeafSync`). Before
 * sluice's resolvers answered in the same turn, 8 to 21 of 320 such connections failed per run
 * (10 new names, 32 connections each, on a running sluice; 2026-12-02); this test sends 30
 * names. On the hop path too: `deno task test` runs this file again with SLUICE_DATA_PATH=hop.
 * Answering in the same turn narrows Deno's race but does not close it: this test still failed 1
 * of 12 runs under two CPU hogs, and once in CI, both times one name's burst (27 of 32). It stays
 * strict on purpose: docs/data-path.md lists the race under known gaps.
 */
import { assertEquals } from "../_assert.ts";
import { ROOT, startSluice } from "./_harness.ts";

const NAMES = 30;
const PARALLEL = 32;

Deno.test({
  name: "every connection of a first burst to new names gets a response (no lost TLS answers)",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "sluice-first-wave-" });
    const policy = `${dir}/policy.yaml`;
    // The names resolve to loopback, so each request is answered by sluice itself (a 403 for a
    // private address), which is all this test needs: the handshake is what is under test.
    await Deno.writeTextFile(policy, `version: 1\nnetwork:\n  allow: ["*.wave.test"]\n`);
    const sluice = await startSluice(policy, dir, [
      "--transparent-https",
      "127.0.0.1:0",
      "--workers",
      "1",
      ...Array.from({ length: NAMES }, (_, i) => ["--resolve", `n${i}.wave.test=127.0.0.1`]).flat(),
      "--limit",
      `per-client=${PARALLEL * 2}`,
    ]);
    try {
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          `${ROOT}test/e2e/_first_wave_client.ts`,
          String(sluice.transparentHttpsPort),
          sluice.caPath,
          String(NAMES),
          String(PARALLEL),
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout).trim();
      assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
      assertEquals(JSON.parse(text), { answered: NAMES * PARALLEL, failures: {} });
    } finally {
      await sluice.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

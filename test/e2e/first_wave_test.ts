/**
 * A burst of first connections to a name sluice has not seen yet (npm install's parallel
 * downloads from a registry, a browser opening a page) all get answered. Deno 2.9.6's TLS
 * resolver cache loses its answer for a handshake of the same name that looks it up after the
 * answer was sent but before Deno stored it: that handshake ends with a close_notify and no
 * response (lib/tls/ca.ts, `mintLeafSync`). `deno task test` runs this file on both paths (again
 * with SLUICE_DATA_PATH=hop).
 * - The hop path closes the race: a name's first handshake goes alone (terminator.ts,
 *   `#firstOfName`; test/lib/ingress/terminator_test.ts breaks it with asynchronous leaves).
 * - The direct path cannot (Deno accepts and handshakes in native code): it answers on a timer
 *   turn (direct.ts, `onTimerTurn`), which narrows it. Under two CPU hogs this test failed 6 of
 *   64 runs answered in the asking turn (2 to 27 of 960 connections lost), and none of 130 on a
 *   timer turn (2026-12-02). It stays strict: docs/data-path.md lists the
 *   direct path's residue under known gaps, and CI reports it if it shows.
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

/**
 * The hop's TLS terminator under a burst of first connections to new names, with a leaf minter
 * that answers asynchronously: the condition in which Deno 2.9.6's resolver cache loses its
 * answer for handshakes of the same name (ext/tls/tls_key.rs). Without the terminator's
 * first-of-name gate (`#firstOfName`), 6 of 6 runs of this test lost 9 to 54 of its 960
 * connections on 2026-12-02; with it, none may (0 of 15 runs, 12 under two CPU hogs). The
 * clients are a process of their own (node:tls), as real clients are; every byte goes over
 * loopback.
 */
import { assertEquals } from "../../_assert.ts";
import { ephemeralCa, mintLeafSync } from "../../../lib/tls/ca.ts";
import { LeafCache } from "../../../lib/tls/leaf_cache.ts";
import { Terminator } from "../../../lib/ingress/terminator.ts";
import { sniffClientHello } from "../../../lib/ingress/sniff.ts";
import { firstWaveClient } from "../../e2e/_first_wave.ts";

const NAMES = 30;
const PARALLEL = 32;

Deno.test({
  name: "Terminator: a first burst of hops to new names all get answered, asynchronous leaves too",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const ca = await ephemeralCa();
    // Answers a new name on a later timer turn: the order of Deno's tasks then leaves handshakes
    // of the name in the window where its answer is lost, unless the terminator holds them.
    const leaves = new LeafCache(ca, {
      mint: (name, now) =>
        new Promise((resolve) => setTimeout(() => resolve(mintLeafSync(ca, name, { now })), 1)),
    });
    const abort = new AbortController();
    const terminator = new Terminator({
      leaves,
      signal: abort.signal,
      handler: () => new Response("ok"),
    });
    terminator.start();
    const front = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const hops: Promise<unknown>[] = [];
    const serving = (async () => {
      for await (const conn of front) {
        hops.push(
          (async () => {
            const sniffed = await sniffClientHello(conn, 5_000);
            if (sniffed.hello.kind !== "ok") {
              conn.close();
              return;
            }
            const sni = sniffed.hello.sni;
            await terminator.hop(conn, sniffed.bytes, {
              client: "test",
              mode: "transparent",
              secure: true,
              sni,
            });
          })().catch(() => {}),
        );
      }
    })();
    const dir = await Deno.makeTempDir({ prefix: "sluice-terminator-" });
    try {
      await Deno.writeTextFile(`${dir}/ca.pem`, ca.certPem);
      const got = await firstWaveClient(
        (front.addr as Deno.NetAddr).port,
        `${dir}/ca.pem`,
        NAMES,
        PARALLEL,
      );
      assertEquals(got, { answered: NAMES * PARALLEL, failures: {} });
      // Each name was minted once, however many hops waited for it.
      assertEquals(leaves.stats().mints, NAMES);
    } finally {
      front.close();
      await serving;
      abort.abort();
      await Promise.allSettled(hops);
      await terminator.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

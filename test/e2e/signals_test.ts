/**
 * A second SIGINT during the drain (a second Ctrl-C, or `deno task` passing on the signal its
 * process group already got) does not kill `sluice serve`: the request in flight is answered,
 * every audit line is written, and the exit status is 0. Before, the handlers were removed at the
 * first signal, so the second one's default action ended the process mid-drain and the README
 * quickstart lost the last audit lines now and then.
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { startSluice, testCas } from "./_harness.ts";
import { readResponse, writeAll } from "./_flood.ts";

const enc = new TextEncoder();

for (const workers of [1, 2]) {
  Deno.test({
    name: `serve: a second SIGINT during the drain does not cut it short (${workers} worker(s))`,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const dir = await Deno.makeTempDir({ prefix: "sluice-signals-" });
      await testCas(dir);
      // An upstream that takes a while to answer: the drain has a request to wait for.
      const slow = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async () => {
        await new Promise((r) => setTimeout(r, 1_500));
        return new Response("slow\n");
      });
      const port = slow.addr.port;
      const policy = `${dir}/policy.yaml`;
      await Deno.writeTextFile(
        policy,
        `version: 1\nnetwork:\n  allow: ["slow.test:${port}", "127.0.0.1:${port}"]\n`,
      );
      const sluice = await startSluice(policy, dir, [
        "--resolve",
        "slow.test=127.0.0.1",
        "--workers",
        String(workers),
      ]);
      try {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port: sluice.proxyPort });
        await writeAll(
          conn,
          enc.encode(
            `GET http://slow.test:${port}/ HTTP/1.1\r\nHost: slow.test:${port}\r\n` +
              "Connection: close\r\n\r\n",
          ),
        );
        const response = readResponse(conn).then(
          (r) => (conn.close(), r),
          (e) => ({ head: `failed: ${e}`, body: "" }),
        );
        await new Promise((r) => setTimeout(r, 300)); // the request is in flight
        Deno.kill(sluice.pid, "SIGINT");
        await new Promise((r) => setTimeout(r, 200));
        const code = await sluice.stop("SIGINT");
        const r = await response;
        assertMatch(r.head, /^HTTP\/1\.1 200/, sluice.stderr());
        assertEquals(code, 0, sluice.stderr());
        const audit = await sluice.audit();
        assert(
          audit.some((l) => l.event === "request" && l.host === "slow.test" && l.status === 200),
          JSON.stringify(audit),
        );
      } finally {
        await slow.shutdown();
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

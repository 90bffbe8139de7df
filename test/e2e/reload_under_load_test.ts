/**
 * A reload loses no connection: new TLS connections keep arriving at the transparent HTTPS
 * listener (real node:tls clients in a process of their own, ~1,000 a second) while the policy is
 * reloaded ten times, each reload adding a host. On the direct path the listener is kept when the
 * placeholders do not change (lib/gateway/server.ts, `refreshHttps`): replacing it lost 81 of
 * ~16,800 connections over ten reloads on 2026-12-02 (Deno's graceful shutdown closes the ones
 * that have not sent their first request, and the kernel resets the ones still queued on the old
 * socket). `deno task test` runs this file on both paths (again with SLUICE_DATA_PATH=hop).
 */
import { assert, assertEquals } from "../_assert.ts";
import { ROOT, type Sluice, startSluice } from "./_harness.ts";

const RELOADS = 10;

/** `sluice serve` with one worker, a transparent HTTPS listener and an admin listener. */
function startTransparent(
  policy: string,
  dir: string,
  name: string,
  extra: string[],
  env?: Record<string, string>,
): Promise<Sluice> {
  return startSluice(
    policy,
    dir,
    [
      "--transparent-https",
      "127.0.0.1:0",
      "--admin",
      "127.0.0.1:0",
      "--workers",
      "1",
      "--resolve",
      `${name}=127.0.0.1`,
      ...extra,
    ],
    undefined,
    env,
  );
}

Deno.test({
  name: "ten reloads while connections arrive: every connection gets its response",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "sluice-reload-load-" });
    const policy = `${dir}/policy.yaml`;
    const write = (n: number) =>
      Deno.writeTextFile(
        policy,
        `version: 1\nnetwork:\n  allow: [n0.wave.test${
          Array.from({ length: n }, (_, i) => `, extra${i}.wave.test`).join("")
        }]\n`,
      );
    await write(0);
    const sluice = await startTransparent(policy, dir, "n0.wave.test", [
      "--limit",
      "per-client=256",
    ]);
    try {
      const client = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          `${ROOT}test/e2e/_reload_client.ts`,
          String(sluice.transparentHttpsPort),
          sluice.caPath,
          String(RELOADS + 2),
        ],
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      for (let i = 1; i <= RELOADS; i++) {
        await new Promise((r) => setTimeout(r, 1_000));
        await write(i);
        const r = await fetch(`http://127.0.0.1:${sluice.adminPort}/reload`, { method: "POST" });
        assertEquals(r.status, 200, await r.text());
      }
      const out = await client.output();
      assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
      const got = JSON.parse(new TextDecoder().decode(out.stdout).trim());
      assert(got.answered > 1_000, `the client kept connecting (${got.answered} answered)`);
      assertEquals(got.failures, {});
    } finally {
      await sluice.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

// The other side of keeping the listener: a reload that adds a placeholder must replace it, or a
// name first seen before the reload would keep its old answer (Deno caches it per listener) and
// its TLS name would never be checked for the new placeholder.
Deno.test({
  name: "a reload that adds a placeholder: a name carrying it, seen before, is caught at the SNI",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "sluice-reload-ph-" });
    const policy = `${dir}/policy.yaml`;
    const PH_B = "sluice-ph-reload-b";
    const name = `${PH_B}.wave.test`;
    const credentials = (withB: boolean) =>
      `credentials:\n  A:\n    from: env:RELOAD_KEY_A\n    hosts: [a.wave.test]\n` +
      `    placeholder: sluice-ph-reload-a\n` +
      (withB
        ? `  B:\n    from: env:RELOAD_KEY_B\n    hosts: [b.wave.test]\n` +
          `    placeholder: ${PH_B}\n`
        : "");
    const write = (withB: boolean) =>
      Deno.writeTextFile(
        policy,
        `version: 1\nnetwork:\n  allow: ["*.wave.test"]\n${credentials(withB)}`,
      );
    await write(false);
    const sluice = await startTransparent(policy, dir, name, [], {
      RELOAD_KEY_A: "real-a-value",
      RELOAD_KEY_B: "real-b-value",
    });
    const caCerts = [await Deno.readTextFile(sluice.caPath)];
    const handshake = async () => {
      const tcp = await Deno.connect({ hostname: "127.0.0.1", port: sluice.transparentHttpsPort! });
      const conn = await Deno.startTls(tcp, { hostname: name, caCerts });
      try {
        await conn.handshake();
      } finally {
        conn.close();
      }
    };
    const violations = async () =>
      (await sluice.audit()).filter((r) =>
        r.event === "connection" && r.violation === "B" && r.sni === name
      ).length;
    try {
      await handshake();
      assertEquals(await violations(), 0, "no placeholder B before the reload");
      await write(true);
      const r = await fetch(`http://127.0.0.1:${sluice.adminPort}/reload`, { method: "POST" });
      assertEquals(r.status, 200, await r.text());
      await handshake().catch(() => {});
      const deadline = Date.now() + 5_000;
      while (await violations() === 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
      }
      assertEquals(await violations(), 1, "the name is checked for the new placeholder");
    } finally {
      await sluice.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

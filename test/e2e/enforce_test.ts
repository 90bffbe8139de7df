/**
 * `sluice serve --enforce` and `sluice rules`, as root inside a network
 * namespace this test creates: the rules redirect one user's web traffic to
 * sluice and drop the rest, and disappear when sluice exits.
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { IS_ROOT, ROOT, run, startSluice } from "./_harness.ts";

const NOBODY = "65534";

async function inNs(
  ns: string,
  argv: string[],
): Promise<{ code: number; out: string; err: string }> {
  const o = await new Deno.Command("ip", {
    args: ["netns", "exec", ns, ...argv],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: o.code,
    out: new TextDecoder().decode(o.stdout),
    err: new TextDecoder().decode(o.stderr),
  };
}

Deno.test({
  name: "sluice serve --enforce (host mode, users) in a test namespace",
  ignore: !IS_ROOT,
  async fn(t) {
    const ns = `sluice-en-${crypto.randomUUID().slice(0, 8)}`;
    const dir = await Deno.makeTempDir({ prefix: "sluice-en-" });
    await Deno.chmod(dir, 0o755);
    let upstream: Deno.ChildProcess | undefined;
    let sluice: Awaited<ReturnType<typeof startSluice>> | undefined;
    try {
      await run(["ip", "netns", "add", ns]);
      await run(["ip", "-n", ns, "link", "set", "lo", "up"]);
      await run(["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
      await run(["ip", "-n", ns, "addr", "add", "192.0.2.1/24", "dev", "v0"]);
      await run(["ip", "-n", ns, "link", "set", "v0", "up"]);
      await run(["ip", "-n", ns, "link", "set", "v1", "up"]);
      // A stale table from a "crashed" run, which --enforce must replace.
      await inNs(ns, ["nft", "add", "table", "inet", "sluice"]);
      await inNs(ns, ["nft", "add", "chain", "inet", "sluice", "stale"]);

      upstream = new Deno.Command("ip", {
        args: [
          "netns",
          "exec",
          ns,
          Deno.execPath(),
          "run",
          "-A",
          `${ROOT}test/e2e/_upstream_main.ts`,
          `${dir}/up-ca.crt`,
          "443",
          "80",
        ],
        stdout: "piped",
      }).spawn();
      const reader = upstream.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let seen = "";
      while (!seen.includes("ready")) {
        const { value, done } = await reader.read();
        if (done) throw new Error("test upstream exited");
        seen += value;
      }
      reader.releaseLock();
      await Deno.chmod(`${dir}/up-ca.crt`, 0o644);

      const policy = `${dir}/policy.yaml`;
      await Deno.writeTextFile(
        policy,
        `version: 1
network:
  allow: [allowed.test, "127.0.0.1:443", "ssh.test:2222"]
  deny: [denied.test]
tls:
  upstream: { ca: [${dir}/up-ca.crt] }
enforce:
  subjects: { users: [${NOBODY}] }
  dns: proxy
`,
      );
      sluice = await startSluice(
        policy,
        dir,
        [
          "--enforce",
          "--resolve",
          "allowed.test=127.0.0.1",
          "--resolve",
          "denied.test=127.0.0.1",
          "--resolve",
          "ssh.test=192.0.2.20",
        ],
        ns,
      );
      await Deno.chmod(`${dir}/state`, 0o755);
      await Deno.chmod(sluice.caPath, 0o644);
      const asNobody = (args: string[]) =>
        inNs(ns, [
          "setpriv",
          `--reuid=${NOBODY}`,
          `--regid=${NOBODY}`,
          "--clear-groups",
          "curl",
          "-sS",
          "--max-time",
          "5",
          ...args,
        ]);

      await t.step("the stale table was replaced by sluice's rules", async () => {
        const list = await inNs(ns, ["nft", "list", "table", "inet", "sluice"]);
        assert(!list.out.includes("chain stale"), list.out);
        assertMatch(list.out, /meta skuid 65534 jump to_listeners/);
      });

      await t.step(
        "the confined user's HTTPS is redirected through sluice and decided",
        async () => {
          const ok = await asNobody([
            "--cacert",
            sluice!.caPath,
            "--resolve",
            "allowed.test:443:192.0.2.10",
            "https://allowed.test/echo",
          ]);
          assertEquals(ok.code, 0, ok.err);
          assertEquals(JSON.parse(ok.out).host, "allowed.test");
          const denied = await asNobody([
            "--cacert",
            sluice!.caPath,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--resolve",
            "denied.test:443:192.0.2.10",
            "https://denied.test/",
          ]);
          assertEquals(denied.out, "403");
        },
      );

      await t.step(
        "the confined user's other traffic is dropped; root's is not touched",
        async () => {
          const blocked = await asNobody(["--connect-timeout", "2", "http://192.0.2.10:8080/"]);
          assert(blocked.code !== 0, "a direct connection to a port no rule allows must fail");
          const rootDirect = await inNs(ns, [
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-k",
            "https://127.0.0.1:443/echo",
          ]);
          assertEquals(rootDirect.code, 0, rootDirect.err);
        },
      );

      await t.step(
        "a host rule with a raw port opens for the addresses sluice's DNS answered",
        async () => {
          await run(["ip", "-n", ns, "addr", "add", "192.0.2.20/32", "dev", "lo"]);
          const server = new Deno.Command("ip", {
            args: [
              "netns",
              "exec",
              ns,
              "python3",
              "-m",
              "http.server",
              "2222",
              "--bind",
              "192.0.2.20",
            ],
            stdout: "null",
            stderr: "null",
          }).spawn();
          try {
            await new Promise((r) => setTimeout(r, 800));
            const before = await asNobody([
              "--connect-timeout",
              "2",
              "-o",
              "/dev/null",
              "http://192.0.2.20:2222/",
            ]);
            assert(before.code !== 0, "raw TCP must be dropped before the name was resolved");
            const dig = await inNs(ns, [
              "setpriv",
              `--reuid=${NOBODY}`,
              `--regid=${NOBODY}`,
              "--clear-groups",
              "dig",
              "+short",
              "+time=3",
              "+tries=1",
              "@192.0.2.53",
              "ssh.test",
            ]);
            assertEquals(dig.out.trim(), "192.0.2.20", dig.err);
            const denied = await inNs(ns, [
              "setpriv",
              `--reuid=${NOBODY}`,
              `--regid=${NOBODY}`,
              "--clear-groups",
              "dig",
              "+time=3",
              "+tries=1",
              "@192.0.2.53",
              "denied.test",
            ]);
            assertMatch(denied.out, /status: NXDOMAIN/, sluice!.stderr());
            await new Promise((r) => setTimeout(r, 300));
            const after = await asNobody([
              "--connect-timeout",
              "2",
              "-o",
              "/dev/null",
              "-w",
              "%{http_code}",
              "http://192.0.2.20:2222/",
            ]);
            assertEquals(after.out, "200", after.err);
            const list = await inNs(ns, ["nft", "list", "set", "inet", "sluice", "sluice_allow4"]);
            assertMatch(list.out, /192\.0\.2\.20 \. 2222 timeout/);
          } finally {
            server.kill("SIGTERM");
            await server.status;
          }
        },
      );

      await t.step("sluice rules prints the same ruleset without applying it", async () => {
        const printed = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", `${ROOT}main.ts`, "rules", "--policy", policy],
          stdout: "piped",
        }).output();
        assertMatch(
          new TextDecoder().decode(printed.stdout),
          /^# Generated by sluice[\s\S]*table inet sluice \{/,
        );
      });

      await t.step("SIGTERM removes the rules", async () => {
        assertEquals(await sluice!.stop("SIGTERM"), 0);
        const list = await inNs(ns, ["nft", "list", "table", "inet", "sluice"]);
        assert(list.code !== 0, "the table must be gone after exit");
        assertMatch(sluice!.stderr(), /removed netfilter table sluice/);
      });
    } finally {
      await sluice?.stop();
      try {
        upstream?.kill("SIGTERM");
        await upstream?.status;
      } catch { /* gone */ }
      await run(["ip", "netns", "del", ns]).catch(() => {});
      await Deno.remove(dir, { recursive: true });
    }
  },
});

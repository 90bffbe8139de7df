/**
 * Transparent interception end to end, as root: inside a network namespace
 * this test creates, nftables redirects the client's TCP 443/80 (to a
 * documentation-range address routed to a dummy interface) to sluice's
 * transparent listeners. The upstream, sluice and curl all run inside the
 * namespace; nothing touches the host's own ruleset or leaves the namespace.
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { curl, IS_ROOT, ROOT, run, startReady, startSluice, testNamespace } from "./_harness.ts";

const FRONT = "192.0.2.10"; // what clients dial; never reached, always redirected

// Both data paths (lib/ingress/direct.ts): the hop, which a passthrough host needs, and the
// direct listener, which serves a policy that intercepts everything. The same steps run on
// each; where the paths answer differently the step says so.
for (const path of ["hop", "direct"] as const) {
  Deno.test({
    name: `sluice serve (transparent, nft REDIRECT in a test namespace, ${path} data path)`,
    ignore: !IS_ROOT,
    async fn(t) {
      const dir = await Deno.makeTempDir({ prefix: "sluice-tp-" });
      let upstream: Deno.ChildProcess | undefined;
      let sluice: Awaited<ReturnType<typeof startSluice>> | undefined;
      // The front range's packets never leave: every one is redirected to sluice.
      const ns = await testNamespace("sluice-tp");
      try {
        const rules = `table ip sluice_test {
  chain out {
    type nat hook output priority -100;
    ip daddr 192.0.2.0/24 tcp dport 443 redirect to :15443
    ip daddr 192.0.2.0/24 tcp dport 80 redirect to :15080
  }
}
`;
        await Deno.writeTextFile(`${dir}/rules.nft`, rules);
        await run(["ip", "netns", "exec", ns, "nft", "-f", `${dir}/rules.nft`]);

        upstream = (await startReady(
          "_upstream_main.ts",
          [`${dir}/up-ca.crt`, "443", "80"],
          ns,
        )).child;

        const policy = `${dir}/policy.yaml`;
        await Deno.writeTextFile(
          policy,
          `version: 1
network:
  allow:
    - allowed.test
    - plain.test
    - passthrough.test
    - rebind.test
    - other.test
    - 127.0.0.1:443
    - 127.0.0.1:80
  deny:
    - denied.test
tls:
${path === "hop" ? "  passthrough: [passthrough.test]\n" : ""}  upstream:
    ca: [${dir}/up-ca.crt]
`,
        );
        const names = [
          "allowed.test",
          "plain.test",
          "passthrough.test",
          "denied.test",
          "other.test",
        ];
        sluice = await startSluice(
          policy,
          dir,
          [
            "--transparent-https",
            "127.0.0.1:15443",
            "--transparent-http",
            "127.0.0.1:15080",
            ...names.flatMap((n) => ["--resolve", `${n}=127.0.0.1`]),
            "--resolve",
            "rebind.test=127.0.0.2",
            "--data-path",
            path,
          ],
          ns,
        );
        const ca = sluice.caPath;
        const at = (name: string, port = 443) => ["--resolve", `${name}:${port}:${FRONT}`];

        await t.step("an allowed host answers 200 through the redirect", async () => {
          const r = await curl(
            ["--cacert", ca, ...at("allowed.test"), "https://allowed.test/echo"],
            ns,
          );
          assertEquals(r.code, 0, r.stderr);
          assertEquals(JSON.parse(r.text).host, "allowed.test");
        });

        await t.step("a denied host gets a 403 over TLS naming the rule", async () => {
          const r = await curl([
            "--cacert",
            ca,
            "-D",
            "-",
            ...at("denied.test"),
            "https://denied.test/",
          ], ns);
          assertMatch(r.text, /^HTTP\/[12](\.1)? 403/);
          assertMatch(r.text, /x-sluice-decision: deny; code=deny-rule; rule=.*policy\.yaml:12/);
        });

        await t.step("a WebSocket echo works through the redirect", async () => {
          const out = await run([
            "ip",
            "netns",
            "exec",
            ns,
            Deno.execPath(),
            "run",
            "-A",
            `${ROOT}test/e2e/_ws_client.ts`,
            FRONT,
            "443",
            "allowed.test",
            ca,
            "/ws",
          ]);
          assertEquals(JSON.parse(out), {
            status: "HTTP/1.1 101 Switching Protocols",
            reply: "echo:hello",
          });
        });

        await t.step({
          name: "a passthrough host is spliced with its own certificate",
          ignore: path === "direct",
          fn: async () => {
            const r = await curl([
              "--cacert",
              `${dir}/up-ca.crt`,
              ...at("passthrough.test"),
              "https://passthrough.test/echo",
            ], ns);
            assertEquals(r.code, 0, r.stderr);
          },
        });

        await t.step("a ClientHello without SNI is refused", async () => {
          const r = await curl(["-k", `https://${FRONT}/`], ns);
          assert(r.code !== 0, "a connection without SNI must not be served");
        });

        await t.step(
          path === "hop"
            ? "a Host that differs from the SNI is denied"
            : "a Host that differs from the SNI is decided, and sent, on the Host alone",
          async () => {
            const r = await curl([
              "--cacert",
              ca,
              "-H",
              "Host: other.test",
              "-w",
              "\n%{http_code}",
              ...at("allowed.test"),
              "https://allowed.test/echo",
            ], ns);
            if (path === "hop") {
              assertMatch(r.text, /\n403$/);
            } else {
              // other.test is allowed: the request goes to other.test (never to allowed.test's
              // address under another name), with Host: other.test.
              assertMatch(r.text, /\n200$/);
              assertEquals(JSON.parse(r.text.replace(/\n200$/, "")).host, "other.test");
            }
          },
        );

        await t.step(
          "a name resolving to another loopback address is refused by the private guard",
          async () => {
            const r = await curl([
              "--cacert",
              ca,
              "-w",
              "\n%{http_code}",
              ...at("rebind.test"),
              "https://rebind.test/echo",
            ], ns);
            assertMatch(r.text, /loopback address[\s\S]*\n403$/);
          },
        );

        await t.step("plain HTTP is routed by Host and decided", async () => {
          const ok = await curl([...at("plain.test", 80), "http://plain.test/echo"], ns);
          assertEquals(JSON.parse(ok.text).path, "/echo");
          const denied = await curl([
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            ...at("denied.test", 80),
            "http://denied.test/",
          ], ns);
          assertEquals(denied.text, "403");
        });

        await t.step("audit records say transparent", async () => {
          await new Promise((r) => setTimeout(r, 100));
          const records = await sluice!.audit();
          assert(
            records.some((r) =>
              r.mode === "transparent" && r.host === "allowed.test" && r.verdict === "allow"
            ),
          );
          assert(records.some((r) => r.mode === "transparent" && r.code === "missing-sni"));
          // The request's client is the workload's own address, whichever path served it.
          const allowed = records.find((r) => r.event === "request" && r.host === "allowed.test");
          assertMatch(String(allowed?.client), /^192\.0\.2\.1:\d+$/);
          assertEquals(allowed?.sni, path === "hop" ? "allowed.test" : undefined);
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
}

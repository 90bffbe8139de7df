/**
 * gRPC through transparent interception, as root: in a network namespace this test creates,
 * nftables redirects the client's TCP 443 (to a documentation address) to sluice, and a real
 * grpc-js client calls a real grpc-js server (both in the namespace). On the hop data path the
 * calls work as through the explicit proxy (unary with a credential in metadata, a timed server
 * stream, client streaming, bidi); on the direct data path, whose HTTP/2 server cannot send
 * trailers, a call gets UNAVAILABLE naming the fix, and is audited.
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { IS_ROOT, placeholders, run, startReady, startSluice, testNamespace } from "./_harness.ts";
import { grpcCall } from "./_grpc.ts";

const FRONT = "192.0.2.10";
const SECRET = "grpc-transparent-secret-c41d7e";

for (const path of ["hop", "direct"] as const) {
  Deno.test({
    name:
      `gRPC through transparent interception (nft REDIRECT in a test namespace, ${path} data path)`,
    ignore: !IS_ROOT,
    async fn(t) {
      const ns = await testNamespace("sluice-grpc");
      const dir = await Deno.makeTempDir({ prefix: "sluice-grpc-tp-" });
      let server: Deno.ChildProcess | undefined;
      let sluice: Awaited<ReturnType<typeof startSluice>> | undefined;
      try {
        await Deno.writeTextFile(
          `${dir}/rules.nft`,
          `table ip sluice_grpc_test {
  chain out {
    type nat hook output priority -100;
    ip daddr 192.0.2.0/24 tcp dport 443 redirect to :15443
  }
}
`,
        );
        await run(["ip", "netns", "exec", ns, "nft", "-f", `${dir}/rules.nft`]);
        const started = await startReady(
          "_grpc_server_main.ts",
          [`${dir}/up-ca.crt`, "grpc.test", "443"],
          ns,
        );
        server = started.child;
        // What the server saw, one JSON line per call.
        const seen = () => started.output();

        const policy = `${dir}/policy.yaml`;
        await Deno.writeTextFile(
          policy,
          `version: 1
network:
  allow: [grpc.test, 127.0.0.1:443]
  deny: ["POST grpc.test/acme.Echo/Deny"]
credentials:
  GRPC_TOKEN:
    from: env:SLUICE_TEST_GRPC_TOKEN
    hosts: [grpc.test]
tls:
  upstream: { ca: [${dir}/up-ca.crt] }
`,
        );
        const ph = await placeholders(policy, `${dir}/state`);
        sluice = await startSluice(
          policy,
          dir,
          [
            "--transparent-https",
            "127.0.0.1:15443",
            "--resolve",
            "grpc.test=127.0.0.1",
            "--data-path",
            path,
          ],
          ns,
          { SLUICE_TEST_GRPC_TOKEN: SECRET },
        );
        const env = { GRPC_NAME: "grpc.test", grpc_proxy: "", https_proxy: "" };
        const call = (name: string, arg?: string, auth?: string) =>
          grpcCall(env, `${FRONT}:443`, sluice!.caPath, name, arg, auth, ns);

        if (path === "hop") {
          await t.step(
            "unary: the metadata placeholder reaches the server as the real value",
            async () => {
              const r = await call("unary", "hi", `Bearer ${ph.GRPC_TOKEN}`);
              assert(r.ok, JSON.stringify(r));
              assertEquals(r.trailers["x-echo-trailer"], "done");
              assert(!JSON.stringify(r).includes(SECRET));
              assert(seen().includes(`"authorization":"Bearer ${SECRET}"`), seen());
            },
          );

          await t.step("server streaming: messages arrive as they are sent", async () => {
            const r = await call("tick", "3,400");
            assert(r.ok, JSON.stringify(r));
            assertEquals(r.messages.map((m) => m.text), ["t0", "t1", "t2"]);
            const gaps = r.messages.slice(1).map((m, i) => m.at - r.messages[i].at);
            for (const gap of gaps) assert(gap >= 250, JSON.stringify(r.messages));
          });

          await t.step("client streaming: 200 messages of 1 KiB add up", async () => {
            const r = await call("sum", "200,1024");
            assert(r.ok, JSON.stringify(r));
            assertEquals(r.messages.map((m) => m.text), [String(200 * 1024)]);
          });

          await t.step("bidi works", async () => {
            const r = await call("chat", "x,y");
            assert(r.ok, JSON.stringify(r));
            assertEquals(r.messages.map((m) => m.text), ["echo:x", "echo:y"]);
          });

          await t.step("a denied method gets PERMISSION_DENIED", async () => {
            const r = await call("deny", "x");
            assertEquals(r.code, 7, JSON.stringify(r));
            assert(!seen().includes('"method":"Deny"'), "the denied call reached the server");
          });
        } else {
          await t.step("a call gets UNAVAILABLE naming the fix, and is audited", async () => {
            const r = await call("unary", "hi", `Bearer ${ph.GRPC_TOKEN}`);
            assertEquals(r.code, 14, JSON.stringify(r));
            assertMatch(r.details, /--data-path hop/);
            assert(!seen().includes('"method":"Unary"'), "the call reached the server");
            const audit = await sluice!.audit();
            const line = audit.find((a) => a.code === "grpc-no-trailers");
            assert(line, JSON.stringify(audit.slice(-3)));
            assertEquals(line.rpc, "acme.Echo/Unary");
          });
        }
      } finally {
        if (sluice) await sluice.stop();
        if (server) {
          try {
            server.kill("SIGKILL");
          } catch { /* gone */ }
          await server.status;
        }
        await new Deno.Command("ip", { args: ["netns", "del", ns] }).output();
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

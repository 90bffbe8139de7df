/**
 * Gateway mode as root: a "VM" namespace whose only link is a veth into a
 * "gateway" namespace, where `sluice serve --enforce` with
 * `subjects.interfaces` forces the VM's traffic through sluice. The policy
 * names the transparent HTTPS port alone, which in gateway mode must bind
 * every address (REDIRECT targets the gateway's interface address).
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { IS_ROOT, ROOT, run, startSluice } from "./_harness.ts";

async function inNs(ns: string, argv: string[]) {
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
  name: "sluice serve --enforce (gateway mode, interfaces) forces a VM namespace through sluice",
  ignore: !IS_ROOT,
  async fn(t) {
    const id = crypto.randomUUID().slice(0, 6);
    const gw = `sluice-gw-${id}`, vm = `sluice-vm-${id}`;
    const dir = await Deno.makeTempDir({ prefix: "sluice-gw-" });
    let upstream: Deno.ChildProcess | undefined;
    let sluice: Awaited<ReturnType<typeof startSluice>> | undefined;
    try {
      await run(["ip", "netns", "add", gw]);
      await run(["ip", "netns", "add", vm]);
      for (const ns of [gw, vm]) await run(["ip", "-n", ns, "link", "set", "lo", "up"]);
      await run([
        "ip",
        "-n",
        gw,
        "link",
        "add",
        "vmlink",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        vm,
      ]);
      await run(["ip", "-n", gw, "addr", "add", "10.232.0.1/30", "dev", "vmlink"]);
      await run(["ip", "-n", vm, "addr", "add", "10.232.0.2/30", "dev", "eth0"]);
      await run(["ip", "-n", gw, "link", "set", "vmlink", "up"]);
      await run(["ip", "-n", vm, "link", "set", "eth0", "up"]);
      await run(["ip", "-n", vm, "route", "add", "default", "via", "10.232.0.1"]);
      // A new namespace copies the host's ip_forward, which other tests may have
      // turned on: this gateway starts with it off, as a fresh host does.
      await run(["ip", "netns", "exec", gw, "sysctl", "-qw", "net.ipv4.ip_forward=0"]);

      upstream = new Deno.Command("ip", {
        args: [
          "netns",
          "exec",
          gw,
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

      const policy = `${dir}/policy.yaml`;
      const policyText = (https: string) =>
        `version: 1
network:
  allow: [allowed.test, "127.0.0.1:443"]
  deny: [denied.test]
tls:
  upstream: { ca: [${dir}/up-ca.crt] }
listen:
  transparent: { https: ${https} }
enforce:
  subjects: { interfaces: [vmlink] }
  dns: block
`;
      await Deno.writeTextFile(policy, policyText("16443"));
      sluice = await startSluice(policy, dir, [
        "--enforce",
        "--resolve",
        "allowed.test=127.0.0.1",
        "--resolve",
        "denied.test=127.0.0.1",
      ], gw);
      const fromVm = (args: string[]) => inNs(vm, ["curl", "-sS", "--max-time", "5", ...args]);

      await t.step("the port-only transparent listener binds every address", () => {
        assertMatch(sluice!.stderr(), /transparent https 0\.0\.0\.0:16443,/);
      });

      await t.step("the VM's HTTPS to an allowed host goes through sluice", async () => {
        const r = await fromVm([
          "--cacert",
          sluice!.caPath,
          "--resolve",
          "allowed.test:443:192.0.2.10",
          "https://allowed.test/echo",
        ]);
        assertEquals(r.code, 0, r.err);
        assertEquals(JSON.parse(r.out).host, "allowed.test");
      });

      await t.step("the VM's HTTPS to a denied host gets 403", async () => {
        const r = await fromVm([
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
        assertEquals(r.out, "403");
      });

      await t.step("the VM cannot reach the gateway's other services or other ports", async () => {
        const direct = await fromVm([
          "--connect-timeout",
          "2",
          "-k",
          "https://10.232.0.1:443/echo",
        ]);
        assert(
          direct.code !== 0 || !direct.out.includes('"host"'),
          "the upstream on the gateway must not be reachable directly",
        );
        const other = await fromVm(["--connect-timeout", "2", "http://192.0.2.10:8080/"]);
        assert(other.code !== 0);
      });

      await t.step("audit records show the VM's address as the client", async () => {
        await new Promise((r) => setTimeout(r, 100));
        const records = await sluice!.audit();
        assert(
          records.some((r) =>
            String(r.client).startsWith("10.232.0.2:") && r.host === "allowed.test"
          ),
        );
      });

      await t.step(
        "with ip_forward off, sluice says what will not work and how to fix it",
        async () => {
          // The policy's IP rule (127.0.0.1:443) is traffic the gateway would forward.
          assertMatch(
            sluice!.stderr(),
            /warning: forwarding is off on this gateway \(net\.ipv4\.ip_forward = 0\).*network\.allow\[1\] 127\.0\.0\.1:443.*sysctl -w net\.ipv4\.ip_forward=1 /,
          );
          const forwarding = await inNs(gw, ["cat", "/proc/sys/net/ipv4/ip_forward"]);
          assertEquals(forwarding.out.trim(), "0", "sluice must not change the sysctl itself");
        },
      );

      await t.step("the rules are removed on exit", async () => {
        assertEquals(await sluice!.stop("SIGTERM"), 0);
        const list = await inNs(gw, ["nft", "list", "table", "inet", "sluice"]);
        assert(list.code !== 0);
        assertMatch(sluice!.stderr(), /removed netfilter table sluice/);
      });

      await t.step("a loopback transparent address is refused in gateway mode", async () => {
        await Deno.writeTextFile(policy, policyText(`"127.0.0.1:16443"`));
        const refused = await startSluice(policy, dir, ["--enforce"], gw).then(
          async (s) => {
            await s.stop();
            return "sluice started with a loopback transparent listener in gateway mode";
          },
          (e: Error) => e.message,
        );
        assertMatch(
          refused,
          /listen\.transparent\.https is 127\.0\.0\.1:16443, but enforce\.subjects\.interfaces makes this a gateway.*Write the port alone \(listen\.transparent\.https: 16443\)/,
        );
        const list = await inNs(gw, ["nft", "list", "table", "inet", "sluice"]);
        assert(list.code !== 0, "nothing may be applied");
      });
    } finally {
      await sluice?.stop();
      try {
        upstream?.kill("SIGTERM");
        await upstream?.status;
      } catch { /* gone */ }
      await run(["ip", "netns", "del", vm]).catch(() => {});
      await run(["ip", "netns", "del", gw]).catch(() => {});
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/**
 * `sluice serve --enforce` and `sluice rules`, as root inside a network
 * namespace this test creates: the rules redirect one user's web traffic to
 * sluice and drop the rest, and disappear when sluice exits.
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { IS_ROOT, ROOT, run, startSluice } from "./_harness.ts";
import { detectCgroupPrefix } from "../../lib/enforce/netfilter.ts";

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

/** Starts the test upstream (TLS on 443, plain on 80) in `ns`; its CA goes to `caOut`. */
async function startUpstream(ns: string, caOut: string): Promise<Deno.ChildProcess> {
  const upstream = new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      ns,
      Deno.execPath(),
      "run",
      "-A",
      `${ROOT}test/e2e/_upstream_main.ts`,
      caOut,
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
  return upstream;
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

      upstream = await startUpstream(ns, `${dir}/up-ca.crt`);
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

      await t.step(
        "a reload whose rules cannot be applied keeps the running policy and rules",
        async () => {
          const good = await Deno.readTextFile(policy);
          // Valid as a policy (and it would let denied.test through), but its subject cannot be
          // resolved when the rules are built: the reload must be refused as a whole.
          await Deno.writeTextFile(
            policy,
            good.replace("deny: [denied.test]", "deny: []")
              .replace("allow: [allowed.test,", "allow: [allowed.test, denied.test,")
              .replace(`users: [${NOBODY}]`, "users: [no-such-user-sluice]"),
          );
          try {
            Deno.kill(sluice!.pid, "SIGHUP");
            for (let i = 0; i < 100 && !/reload \(SIGHUP\) refused/.test(sluice!.stderr()); i++) {
              await new Promise((r) => setTimeout(r, 100));
            }
            assertMatch(sluice!.stderr(), /reload \(SIGHUP\) refused; the running policy stays/);
            assertMatch(sluice!.stderr(), /no-such-user-sluice/);
            const list = await inNs(ns, ["nft", "list", "table", "inet", "sluice"]);
            assertMatch(list.out, /meta skuid 65534 jump to_listeners/);
            // The policy in force is still the old one: denied.test is still denied.
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
            assertEquals(denied.out, "403", sluice!.stderr());
          } finally {
            await Deno.writeTextFile(policy, good);
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

/** argv that moves itself into `cgroupDir`, then becomes `argv`: all it starts is in the cgroup. */
function inCgroup(cgroupDir: string, argv: string[]): string[] {
  return ["sh", "-c", `echo $$ > ${cgroupDir}/cgroup.procs && exec "$0" "$@"`, ...argv];
}

/**
 * `sluice serve` in `ns` through nsenter, from inside `cgroupDir` when given.
 * (startSluice uses `ip netns exec`, which remounts /sys and so hides the
 * cgroup2 mount that `socket cgroupv2` and `-m cgroup --path` resolve paths
 * against.) Resolves once sluice serves or has exited.
 */
async function serveInNs(ns: string, args: string[], cgroupDir?: string): Promise<{
  serving: boolean;
  stderr: () => string;
  stop: () => Promise<number>;
}> {
  const sluice = [Deno.execPath(), "run", "-A", `${ROOT}main.ts`, "serve", ...args];
  const child = new Deno.Command("nsenter", {
    args: [`--net=/run/netns/${ns}`, ...(cgroupDir ? inCgroup(cgroupDir, sluice) : sluice)],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let text = "";
  const reading = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) text += chunk;
  })();
  const deadline = Date.now() + 20_000;
  let exited = false;
  child.status.then(() => exited = true);
  while (!/sluice: serving/.test(text) && !exited && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* gone */ }
    const { code } = await child.status;
    await reading;
    return code;
  };
  if (exited) await reading;
  return { serving: /sluice: serving/.test(text), stderr: () => text, stop };
}

Deno.test({
  name: "sluice serve --enforce (host mode, cgroups) as root confines root processes in the cgroup",
  ignore: !IS_ROOT,
  async fn(t) {
    const id = crypto.randomUUID().slice(0, 8);
    const ns = `sluice-hg-${id}`;
    const dir = await Deno.makeTempDir({ prefix: "sluice-hg-" });
    const prefix = await detectCgroupPrefix();
    assert(prefix !== undefined, "no cgroup2 mounted under /sys/fs/cgroup");
    // The subject cgroup; sluice itself stays where the test runs (outside it).
    const cgroup = `sluice-hg-${id}`;
    const cgroupDir = `/sys/fs/cgroup/${prefix ? prefix + "/" : ""}${cgroup}`;
    let upstream: Deno.ChildProcess | undefined;
    try {
      await Deno.mkdir(cgroupDir);
      await run(["ip", "netns", "add", ns]);
      await run(["ip", "-n", ns, "link", "set", "lo", "up"]);
      await run(["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
      await run(["ip", "-n", ns, "addr", "add", "192.0.2.1/24", "dev", "v0"]);
      await run(["ip", "-n", ns, "link", "set", "v0", "up"]);
      await run(["ip", "-n", ns, "link", "set", "v1", "up"]);
      upstream = await startUpstream(ns, `${dir}/up-ca.crt`);

      const policyFor = async (backend: string) => {
        const path = `${dir}/policy-${backend}.yaml`;
        await Deno.writeTextFile(
          path,
          `version: 1
network:
  # The upstream is on loopback: only an IP rule lets a host rule reach it.
  allow: [allowed.test, "127.0.0.1:443"]
  deny: [denied.test]
tls:
  upstream: { ca: [${dir}/up-ca.crt] }
enforce:
  backend: ${backend}
  subjects: { cgroups: [${cgroup}] }
  dns: block
`,
        );
        return path;
      };
      const serveArgs = (policy: string) => [
        "--policy",
        policy,
        "--proxy",
        "127.0.0.1:0",
        "--state",
        `${dir}/state`,
        "--audit-log",
        `${dir}/audit.jsonl`,
        "--log-format",
        "text",
        "--enforce",
        "--resolve",
        "allowed.test=127.0.0.1",
        "--resolve",
        "denied.test=127.0.0.1",
      ];
      // curl as root, moved into the subject cgroup first. 192.0.2.10 is nowhere (an
      // unanswered veth): only a redirect to sluice can answer for it.
      const rootInCgroup = async (args: string[]) => {
        const o = await new Deno.Command("nsenter", {
          args: [
            `--net=/run/netns/${ns}`,
            ...inCgroup(cgroupDir, ["curl", "-sS", "--max-time", "5", ...args]),
          ],
          stdout: "piped",
          stderr: "piped",
        }).output();
        const dec = new TextDecoder();
        return { code: o.code, out: dec.decode(o.stdout), err: dec.decode(o.stderr) };
      };

      for (const backend of ["nftables", "iptables"]) {
        await t.step(`${backend}: root's HTTPS from the cgroup goes through sluice`, async () => {
          const sluice = await serveInNs(ns, serveArgs(await policyFor(backend)));
          try {
            assert(sluice.serving, sluice.stderr());
            const ca = `${dir}/state/ca.crt`;
            const ok = await rootInCgroup([
              "--cacert",
              ca,
              "--resolve",
              "allowed.test:443:192.0.2.10",
              "https://allowed.test/echo",
            ]);
            // The answer comes from the upstream on 127.0.0.1:443, which sluice (root too)
            // reached directly: its own traffic is not redirected into itself.
            assertEquals(
              ok.code,
              0,
              `${ok.err}
${sluice.stderr()}`,
            );
            assertEquals(JSON.parse(ok.out).host, "allowed.test");
            const denied = await rootInCgroup([
              "--cacert",
              ca,
              "-o",
              "/dev/null",
              "-w",
              "%{http_code}",
              "--resolve",
              "denied.test:443:192.0.2.10",
              "https://denied.test/",
            ]);
            assertEquals(denied.out, "403");
            // Not redirected, not allowed: dropped, so curl waits out its deadline (28)
            // rather than being refused (7).
            const other = await rootInCgroup(["--max-time", "1", "http://127.0.0.1:8080/"]);
            assertEquals(other.code, 28, other.err);
            // Root outside the cgroup is untouched: refused at once by the closed port.
            const outside = await inNs(ns, [
              "curl",
              "-sS",
              "--max-time",
              "1",
              "http://127.0.0.1:8080/",
            ]);
            assertEquals(outside.code, 7, outside.err);
          } finally {
            assertEquals(await sluice.stop(), 0, sluice.stderr());
          }
          assertMatch(sluice.stderr(), /removed netfilter table sluice/);
        });
      }

      await t.step("sluice started inside a subject cgroup refuses to start", async () => {
        const sluice = await serveInNs(ns, serveArgs(await policyFor("nftables")), cgroupDir);
        const code = await sluice.stop();
        assert(!sluice.serving, "sluice served from inside its own subject cgroup");
        assertEquals(code, 1, sluice.stderr());
        assertMatch(
          sluice.stderr(),
          new RegExp(
            `sluice itself runs in cgroup "${cgroup}", which is the subject "${cgroup}".*` +
              "Start sluice in a cgroup outside every subject",
          ),
        );
        const list = await inNs(ns, ["nft", "list", "table", "inet", "sluice"]);
        assert(list.code !== 0, "no rules may be left behind");
      });
    } finally {
      try {
        upstream?.kill("SIGTERM");
        await upstream?.status;
      } catch { /* gone */ }
      await run(["ip", "netns", "del", ns]).catch(() => {});
      await Deno.remove(cgroupDir).catch(() => {});
      await Deno.remove(dir, { recursive: true });
    }
  },
});

import { assert, assertEquals, assertMatch, assertStringIncludes } from "../../_assert.ts";
import {
  addHostSetElements,
  applyIptables,
  applyNft,
  detectBackend,
  detectCgroupPrefix,
  enforce,
  NetfilterError,
  parseOwnCgroup,
  removeIptables,
  removeNft,
  removeRulesSync,
  resolveUids,
} from "../../../lib/enforce/netfilter.ts";
import {
  type CommandResult,
  type CommandRunner,
  type CommandRunnerSync,
  denoRunner,
} from "../../../lib/ops/command.ts";
import { renderNft } from "../../../lib/enforce/nft_render.ts";
import type { EnforceSpec } from "../../../lib/enforce/spec.ts";
import { renderIptablesRemove } from "../../../lib/enforce/iptables_render.ts";
import { parseCidr } from "../../../policy/address.ts";

const IS_ROOT = Deno.uid() === 0;

/** A runner that records argv and answers from `answer`. */
function fake(answer: (argv: readonly string[], stdin?: string) => Partial<CommandResult>): {
  run: CommandRunner;
  calls: { argv: string[]; stdin?: string }[];
} {
  const calls: { argv: string[]; stdin?: string }[] = [];
  const run: CommandRunner = (argv, stdin) => {
    calls.push({ argv: [...argv], stdin });
    return Promise.resolve({ code: 0, stdout: "", stderr: "", ...answer(argv, stdin) });
  };
  return { run, calls };
}

async function rejects(p: Promise<unknown>): Promise<NetfilterError> {
  try {
    await p;
  } catch (e) {
    assert(e instanceof NetfilterError, `expected NetfilterError, got ${e}`);
    return e;
  }
  throw new Error("expected a NetfilterError");
}

// ---------------------------------------------------------------------------------------------
// Without root: the command logic, through a fake runner.

Deno.test("applyNft() feeds the text to nft -f - inside the namespace", async () => {
  const f = fake(() => ({}));
  await applyNft("table inet t {}\n", { netns: "ns1", run: f.run });
  assertEquals(f.calls, [{
    argv: ["nsenter", "--net=/run/netns/ns1", "nft", "-f", "-"],
    stdin: "table inet t {}\n",
  }]);
  await rejects(applyNft("", { netns: "../x", run: f.run }));
});

Deno.test("applyNft() names the input line nft rejected", async () => {
  const text = "table inet t {\n\tchain c {\n\t\tbogus rule\n\t}\n}\n";
  const stderr =
    "/dev/stdin:3:3-7: Error: syntax error, unexpected string\n\t\tbogus rule\n\t\t^^^^^\n";
  const e = await rejects(applyNft(text, { run: fake(() => ({ code: 1, stderr })).run }));
  assertEquals(e.line, 3);
  assertEquals(e.lineText, "\t\tbogus rule");
  assertEquals(e.stderr, stderr.trim());
  assertMatch(e.message, /at line 3: bogus rule: syntax error, unexpected string/);
});

Deno.test("removeNft() tolerates a missing table and reports anything else", async () => {
  const missing = fake(() => ({
    code: 1,
    stderr: "Error: No such file or directory\ndelete table inet t\n",
  }));
  await removeNft("t", { run: missing.run });
  assertEquals(missing.calls[0].argv, ["nft", "delete", "table", "inet", "t"]);
  const denied = fake(() => ({ code: 1, stderr: "Error: Operation not permitted" }));
  const e = await rejects(removeNft("t", { run: denied.run }));
  assertStringIncludes(e.message, "Operation not permitted");
});

Deno.test("detectBackend() prefers nft, falls back to iptables, and never silently picks none", async () => {
  const have = (...progs: string[]) =>
    fake((argv) => ({ code: progs.includes(argv[0]) ? 0 : 127 })).run;
  const cases = [
    { pref: "auto", progs: ["nft", "iptables"], want: "nftables" },
    { pref: "auto", progs: ["iptables"], want: "iptables" },
    { pref: "iptables", progs: ["nft", "iptables"], want: "iptables" },
    { pref: "nftables", progs: ["nft"], want: "nftables" },
  ] as const;
  for (const c of cases) {
    assertEquals(await detectBackend(c.pref, { run: have(...c.progs) }), c.want, c.pref);
  }
  const none = fake(() => ({ code: 1 }));
  assertEquals(await detectBackend("none", { run: none.run }), "none");
  assertEquals(none.calls.length, 0);
  assertMatch(
    (await rejects(detectBackend("auto", { run: have() }))).message,
    /enforce\.backend: none/,
  );
  await rejects(detectBackend("nftables", { run: have("iptables") }));
});

Deno.test("removeIptables() deletes repeated jumps until none is left and skips missing chains", async () => {
  let jumps = 2;
  const f = fake((argv) => {
    if (argv.includes("-D") && argv.includes("OUTPUT") && argv.includes("SLUICE-OUT")) {
      return jumps-- > 0
        ? {}
        : { code: 1, stderr: "iptables: Bad rule (does a matching rule exist in that chain?)." };
    }
    return { code: 1, stderr: "iptables: No chain/target/match by that name." };
  });
  await removeIptables("sluice", { run: f.run });
  const outJumps = f.calls.filter((c) =>
    c.argv.join(" ") === "iptables -w -D OUTPUT -j SLUICE-OUT"
  );
  assertEquals(outJumps.length, 3);
  const expected = renderIptablesRemove("sluice");
  assertEquals(f.calls.filter((c) => c.argv[0] === "ip6tables").length, expected.v6.length);

  const broken = fake(() => ({
    code: 4,
    stderr: "iptables v1.8.9: can't initialize iptables table",
  }));
  assertStringIncludes(
    (await rejects(removeIptables("sluice", { run: broken.run }))).message,
    "can't initialize",
  );
});

Deno.test("removeRulesSync() runs the same commands as the async removal, for both backends", async () => {
  // Jumps inserted twice, chains that exist: the sync path must loop and stop as the async one does.
  const answer = () => {
    let jumps = 2;
    return (argv: readonly string[]): CommandResult => {
      if (argv.includes("-D")) {
        return jumps-- > 0
          ? { code: 0, stdout: "", stderr: "" }
          : { code: 1, stdout: "", stderr: "iptables: Bad rule (does a matching rule exist?)." };
      }
      return argv.includes("-X") && argv.includes("SLUICE_HG-IN")
        ? { code: 1, stdout: "", stderr: "iptables: No chain/target/match by that name." }
        : { code: 0, stdout: "", stderr: "" };
    };
  };
  for (const backend of ["nftables", "iptables"] as const) {
    const asyncAnswer = answer(), syncAnswer = answer();
    const viaAsync = fake((argv) => asyncAnswer(argv));
    const syncCalls: string[][] = [];
    const runSync: CommandRunnerSync = (argv) => (syncCalls.push([...argv]), syncAnswer(argv));
    const opts = { netns: "sluice-hg-x", iptables: { v4: "iptables-legacy", v6: "ip6tables" } };
    if (backend === "nftables") await removeNft("sluice_hg", { ...opts, run: viaAsync.run });
    else await removeIptables("sluice_hg", { ...opts, run: viaAsync.run });
    removeRulesSync("sluice_hg", backend, { ...opts, runSync });
    assertEquals(syncCalls, viaAsync.calls.map((c) => c.argv), backend);
    assert(syncCalls.every((a) => a[1] === "--net=/run/netns/sluice-hg-x"));
  }
  const failing: CommandRunnerSync = () => ({ code: 4, stdout: "", stderr: "Permission denied" });
  let err: unknown;
  try {
    removeRulesSync("sluice_hg", "iptables", { runSync: failing });
  } catch (e) {
    err = e;
  }
  assert(err instanceof NetfilterError, String(err));
  assertStringIncludes(err.message, "Permission denied");
  // A missing table is not an error.
  removeRulesSync("sluice_hg", "nftables", {
    runSync: () => ({ code: 1, stdout: "", stderr: "Error: No such file or directory" }),
  });
});

Deno.test("parseOwnCgroup() reads the cgroup v2 line of /proc/self/cgroup, on hybrid hosts too", () => {
  assertEquals(parseOwnCgroup("0::/system.slice/sluice.service\n"), "system.slice/sluice.service");
  assertEquals(parseOwnCgroup("9:name=systemd:/\n4:memory:/x\n0::/\n"), "");
  assertEquals(parseOwnCgroup("0::/a/b (deleted)\n"), "a/b");
  assertEquals(parseOwnCgroup("4:memory:/x\n1:cpu:/\n"), undefined);
});

Deno.test("applyIptables() removes first, and rolls back what it added when a command fails", async () => {
  const f = fake((argv) => {
    if (argv.includes("-D") || argv.includes("-F") || argv.includes("-X")) {
      return { code: 1, stderr: "No chain/target/match by that name." };
    }
    if (argv.includes("BROKEN")) {
      return { code: 2, stderr: "iptables v1.8.9: Couldn't load target `BROKEN'" };
    }
    return {};
  });
  const rules = { v4: [["-N", "T-OUT"], ["-A", "T-OUT", "-j", "BROKEN"], ["-N", "NEVER"]], v6: [] };
  const e = await rejects(
    applyIptables("t", rules, {
      run: f.run,
      iptables: { v4: "iptables-legacy", v6: "ip6tables-legacy" },
    }),
  );
  assertEquals(e.command, ["iptables-legacy", "-w", "-A", "T-OUT", "-j", "BROKEN"]);
  assertStringIncludes(e.message, "Couldn't load target");
  const argvs = f.calls.map((c) => c.argv.slice(2).join(" "));
  const added = argvs.indexOf("-N T-OUT");
  assert(argvs.slice(0, added).includes("-X T-OUT"), "remove runs before adding");
  assert(argvs.slice(added).includes("-X T-OUT"), "rollback runs after the failure");
  assert(!argvs.includes("-N NEVER"), "nothing runs after the failure");
});

Deno.test("resolveUids() passes numbers through and resolves names with id -u", async () => {
  const f = fake((argv) =>
    argv[3] === "ci" ? { stdout: "1001\n" } : { code: 1, stderr: "id: 'x': no such user" }
  );
  assertEquals(await resolveUids([0, "65534", "ci"], { run: f.run }), [0, 65534, 1001]);
  assertEquals(f.calls.map((c) => c.argv), [["id", "-u", "--", "ci"]]);
  assertMatch((await rejects(resolveUids(["x"], { run: f.run }))).message, /no user "x"/);
});

// ---------------------------------------------------------------------------------------------
// As root, each in a namespace the test creates and deletes: the host's ruleset is never touched.

function sh(argv: string[], stdin?: string): Promise<CommandResult> {
  return denoRunner(argv, stdin);
}

async function must(argv: string[]): Promise<string> {
  const r = await sh(argv);
  if (r.code !== 0) throw new Error(`${argv.join(" ")} failed: ${r.stderr}`);
  return r.stdout;
}

/** A fresh namespace with loopback up, deleted on dispose. */
async function namespace(
  prefix = "sluice-nf",
): Promise<{ name: string; exec: string[] } & AsyncDisposable> {
  const name = `${prefix}-${crypto.randomUUID().slice(0, 8)}`;
  await must(["ip", "netns", "add", name]);
  await must(["ip", "-n", name, "link", "set", "lo", "up"]);
  return {
    name,
    exec: ["nsenter", `--net=/run/netns/${name}`],
    [Symbol.asyncDispose]: async () => void await must(["ip", "netns", "del", name]),
  };
}

function spec(table: string, over: Partial<EnforceSpec> = {}): EnforceSpec {
  return {
    table,
    subjects: { users: [65534], cgroups: [], interfaces: [] },
    ports: { http: [80], https: [443] },
    redirect: { https: 15443, http: 15080 },
    dnsMode: "allow",
    other: "drop",
    allowCidrs: [],
    hostSets: [{ name: "sluice_allow4", family: 4 }, { name: "sluice_allow6", family: 6 }],
    ...over,
  };
}

Deno.test({
  name: "applyNft() and removeNft() replace and remove the table, idempotently, in a namespace",
  ignore: !IS_ROOT,
  async fn() {
    await using ns = await namespace();
    const opts = { netns: ns.name };
    const list = (t: string) => sh([...ns.exec, "nft", "list", "table", "inet", t]);
    await applyNft(renderNft(spec("t1")), opts);
    assertStringIncludes((await list("t1")).stdout, "chain output_nat");
    // Applying a different ruleset replaces the table rather than adding to it.
    await applyNft(renderNft(spec("t1", { ports: { http: [8080], https: [443] } })), opts);
    const second = (await list("t1")).stdout;
    assertStringIncludes(second, "tcp dport 8080 redirect to :15080");
    assert(!second.includes("tcp dport 80 redirect"), second);
    assertEquals((await must([...ns.exec, "nft", "list", "tables"])).trim(), "table inet t1");
    await removeNft("t1", opts);
    assert((await list("t1")).code !== 0, "table still there after remove");
    await removeNft("t1", opts);

    const e = await rejects(applyNft("table inet t2 {\n\tchain c {\n\t\tbogus\n\t}\n}\n", opts));
    assertEquals(e.line, 3);
    assertStringIncludes(e.stderr, "syntax error");
  },
});

Deno.test({
  name: "addHostSetElements() adds elements with a timeout and refreshes an existing one",
  ignore: !IS_ROOT,
  async fn() {
    await using ns = await namespace();
    const opts = { netns: ns.name };
    await applyNft(renderNft(spec("hs")), opts);
    const entries = [{ ip: "140.82.112.3", port: 22, timeoutSec: 60 }, {
      ip: "2001:db8::1",
      port: 22,
      timeoutSec: 60,
    }];
    await addHostSetElements("hs", entries, opts);
    await addHostSetElements("hs", [{ ip: "140.82.112.3", port: 22, timeoutSec: 3600 }], opts);
    const v4 = await must([...ns.exec, "nft", "list", "set", "inet", "hs", "sluice_allow4"]);
    assertMatch(v4, /140\.82\.112\.3 \. 22 timeout 1h expires (59m|1h)/);
    const v6 = await must([...ns.exec, "nft", "list", "set", "inet", "hs", "sluice_allow6"]);
    assertMatch(v6, /2001:db8::1 \. 22 timeout 1m/);
    await rejects(addHostSetElements("nosuch", entries, opts));
  },
});

/** Run as root inside the namespace: HTTP listeners that say who answered, and a UDP sink. */
const SERVER = `
const serve = (hostname, port, body) =>
  Deno.serve({ hostname, port, onListen() {} }, () => new Response(body));
serve("127.0.0.1", 15443, "redirected");
serve("::1", 15443, "redirected");
serve("192.0.2.10", 443, "direct");
serve("2001:db8::10", 443, "direct");
const udp = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 9999 });
console.log("ready");
for await (const [data] of udp) console.log("udp " + new TextDecoder().decode(data).trim());
`;

/** Starts {@link SERVER} in the namespace; `seen` collects the datagrams it received. */
async function startServer(ns: { exec: string[] }): Promise<{ seen: string[] } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "sluice-nf-" });
  await Deno.writeTextFile(`${dir}/server.js`, SERVER);
  const server = new Deno.Command(ns.exec[0], {
    args: [...ns.exec.slice(1), Deno.execPath(), "run", "-A", "--unstable-net", `${dir}/server.js`],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const seen: string[] = [];
  let ready!: () => void;
  const isReady = new Promise<void>((r) => ready = r);
  const reading = (async () => {
    let buf = "";
    for await (const chunk of server.stdout.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      const parts = buf.split("\n");
      buf = parts.pop()!;
      for (const l of parts) l === "ready" ? ready() : seen.push(l);
    }
  })();
  await Promise.race([isReady, reading.then(() => Promise.reject(new Error("server exited")))]);
  return {
    seen,
    [Symbol.asyncDispose]: async () => {
      server.kill();
      await server.status;
      await reading.catch(() => {});
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** A namespace whose loopback holds the test addresses: nothing sent to them can leave it. */
async function testNamespace(): Promise<{ name: string; exec: string[] } & AsyncDisposable> {
  const ns = await namespace();
  for (const a of ["192.0.2.10/32", "192.0.2.20/32", "192.0.2.30/32"]) {
    await must(["ip", "-n", ns.name, "addr", "add", a, "dev", "lo"]);
  }
  await must(["ip", "-n", ns.name, "addr", "add", "2001:db8::10/128", "dev", "lo", "nodad"]);
  return ns;
}

async function behaviour(backend: "nftables" | "iptables"): Promise<void> {
  await using ns = await testNamespace();
  await using server = await startServer(ns);
  const seen = server.seen;
  const table = backend === "nftables" ? "nfb" : "ipb";
  const allowed = parseCidr("192.0.2.20/32");
  assert(allowed.ok);
  await using _rules = await enforce(
    spec(table, { allowCidrs: [{ cidr: allowed.cidr, ports: [9999] }] }),
    { backend, netns: ns.name },
  );
  const nobody = [...ns.exec, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
  const curl = ["curl", "-s", "--max-time", "5"];
  const udp = (as: string[], ip: string, msg: string) =>
    sh([...as, "bash", "-c", `echo ${msg} > /dev/udp/${ip}/9999`]);
  const dropped = async () => {
    if (backend === "nftables") {
      const out = await must([...ns.exec, "nft", "list", "counter", "inet", table, "dropped"]);
      return Number(out.match(/packets (\d+)/)?.[1]);
    }
    const saved = await must([...ns.exec, "iptables-save", "-c"]);
    return Number(saved.match(/^\[(\d+):\d+\] -A IPB-DROP -j DROP$/m)?.[1]);
  };

  // A subject's HTTPS, IPv4 and IPv6, lands on the listener; root's reaches the real server.
  assertEquals(await must([...nobody, ...curl, "http://192.0.2.10:443/"]), "redirected");
  assertEquals(await must([...nobody, ...curl, "http://[2001:db8::10]:443/"]), "redirected");
  assertEquals(await must([...ns.exec, ...curl, "http://192.0.2.10:443/"]), "direct");

  // A subject's UDP to an address no rule allows is dropped and counted; the CIDR allow passes.
  const before = await dropped();
  const blocked = await udp(nobody, "192.0.2.30", "blocked");
  assert(blocked.code !== 0, "the kernel refuses a locally dropped datagram");
  assertEquals(await dropped(), before + 1);
  assertEquals((await udp(nobody, "192.0.2.20", "allowed")).code, 0);
  assertEquals((await udp(ns.exec, "192.0.2.30", "root")).code, 0);
  for (let i = 0; i < 50 && seen.length < 2; i++) await new Promise((r) => setTimeout(r, 50));
  assertEquals(seen.sort(), ["udp allowed", "udp root"]);
  assertEquals(await dropped(), before + 1);

  // A subject's TCP to a port that is neither redirected nor allowed is dropped: nothing
  // listens on 192.0.2.10:8080, so without the drop curl would be refused at once (exit 7);
  // a dropped SYN is retried until curl's deadline instead (exit 28).
  const other = await sh([...nobody, "curl", "-s", "--max-time", "1", "http://192.0.2.10:8080/"]);
  assertEquals(other.code, 28, "TCP to a non-allowed port was not dropped");
  assertEquals(
    (await sh([...ns.exec, "curl", "-s", "--max-time", "1", "http://192.0.2.10:8080/"])).code,
    7,
  );
  assert(await dropped() > before + 1);
}

Deno.test({
  name: "enforce() with nftables redirects a subject's TCP and drops its other traffic, not root's",
  ignore: !IS_ROOT,
  fn: () => behaviour("nftables"),
});

Deno.test({
  name: "enforce() with iptables redirects a subject's TCP and drops its other traffic, not root's",
  ignore: !IS_ROOT,
  fn: () => behaviour("iptables"),
});

Deno.test({
  name: "Enforcement.removeSync() removes the iptables chains (and the nft table) in a namespace",
  ignore: !IS_ROOT,
  async fn() {
    await using ns = await namespace("sluice-hg");
    const saved = async () =>
      (await must([...ns.exec, "iptables-save"])) + (await must([...ns.exec, "ip6tables-save"]));
    const gateway = { users: [65534], cgroups: [], interfaces: ["sluice-hg0"] };
    const e = await enforce(spec("sluice_hg", { subjects: gateway }), {
      backend: "iptables",
      netns: ns.name,
    });
    const before = await saved();
    for (const chain of ["SLUICE_HG-OUT", "SLUICE_HG-FWD", "SLUICE_HG-NAT-PRE", "SLUICE_HG-DROP"]) {
      assertStringIncludes(before, `:${chain} `);
    }
    e.removeSync();
    assert(!(await saved()).includes("SLUICE_HG"), "iptables chains left after removeSync");
    // Already removed: the async removal (normal exit) must not fail or act again.
    await e.remove();

    const nft = await enforce(spec("sluice_hg"), { backend: "nftables", netns: ns.name });
    nft.removeSync();
    const list = await sh([...ns.exec, "nft", "list", "table", "inet", "sluice_hg"]);
    assert(list.code !== 0, "nft table left after removeSync");
    // Nothing left to remove is fine too, as after a crash that came before enforcement.
    removeRulesSync("sluice_hg", "iptables", { netns: ns.name });
  },
});

Deno.test({
  name: "enforce() matches a cgroup subject and its descendants, with both backends",
  ignore: !IS_ROOT,
  async fn() {
    await using ns = await testNamespace();
    await using _server = await startServer(ns);
    const prefix = await detectCgroupPrefix();
    assert(prefix !== undefined, "no cgroup2 mounted under /sys/fs/cgroup");
    const name = `sluice-nf-${crypto.randomUUID().slice(0, 8)}`;
    const dir = `/sys/fs/cgroup/${prefix ? prefix + "/" : ""}${name}`;
    await Deno.mkdir(`${dir}/inner`, { recursive: true });
    try {
      for (const backend of ["nftables", "iptables"] as const) {
        await using _rules = await enforce(
          spec("cg", {
            subjects: { users: [], cgroups: [name], interfaces: [] },
            cgroupPrefix: prefix,
          }),
          { backend, netns: ns.name },
        );
        // The client moves itself into a child of the subject cgroup, then becomes curl.
        const inCgroup = await must([
          ...ns.exec,
          "sh",
          "-c",
          `echo $$ > ${dir}/inner/cgroup.procs && exec curl -s --max-time 5 http://192.0.2.10:443/`,
        ]);
        assertEquals(inCgroup, "redirected", backend);
        assertEquals(
          await must([...ns.exec, "curl", "-s", "--max-time", "5", "http://192.0.2.10:443/"]),
          "direct",
        );
      }
    } finally {
      await Deno.remove(`${dir}/inner`).catch(() => {});
      await Deno.remove(dir).catch(() => {});
    }
  },
});

/**
 * `sluice run` as root: each case runs a real command (curl, dig, python,
 * sh) in the namespace sluice creates, against an upstream on the host's
 * loopback, and then checks that nothing sluice created is left behind.
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { IS_ROOT, received, startTlsUpstream, testCas } from "./_harness.ts";
import { exists, leftovers, output, sluiceRunCommand } from "./_run.ts";

const SECRET = "run-secret-value-5d8e1f";

/** `sluice run` of `sh -c SCRIPT`, or of a command given as an argv. */
function sluiceRun(
  policy: string,
  dir: string,
  script: string | string[],
  extra: string[] = [],
  env: Record<string, string> = {},
) {
  return sluiceRunCommand(
    {
      policy,
      dir,
      args: ["--resolve", "allowed.test=127.0.0.1", "--resolve", "other.test=127.0.0.1", ...extra],
      env: { SLUICE_TEST_SECRET: SECRET, ...env },
    },
    script,
  );
}

Deno.test({
  name: "sluice run",
  ignore: !IS_ROOT,
  sanitizeResources: false,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "sluice-run-t-" });
    const cas = await testCas(dir);
    // The upstream listens where sluice will connect: port 443 on the host's loopback.
    const up = startTlsUpstream(cas.trusted, 443);
    const policy = `${dir}/policy.yaml`;
    await Deno.writeTextFile(
      policy,
      `version: 1
network:
  allow: [allowed.test, other.test, "127.0.0.1:443"]
  deny: [denied.test]
credentials:
  API_KEY:
    from: env:SLUICE_TEST_SECRET
    hosts: [allowed.test]
    on_violation: block_and_terminate
tls:
  upstream: { ca: [${cas.trustedPath}] }
`,
    );
    const front = (name: string) => `--resolve ${name}:443:192.0.2.10`;
    try {
      await t.step(
        "an allowed host works over HTTPS with the placeholder substituted",
        async () => {
          const r = await output(
            sluiceRun(
              policy,
              dir,
              `curl -sS ${
                front("allowed.test")
              } -H "Authorization: Bearer $API_KEY" https://allowed.test/echo`,
            ),
          );
          assertEquals(r.code, 0, r.stderr);
          assertEquals(await leftovers(r.pid), []);
          assertEquals(received[received.length - 1].headers.authorization, `Bearer ${SECRET}`);
          assert(!r.stdout.includes(SECRET), "the real value reached the command");
          assertMatch(JSON.parse(r.stdout).headers.authorization, /^Bearer sluice-api-key-/);
          assertMatch(
            r.stderr,
            /sluice: command exited 0; 1 allowed, 0 denied, 0 credential violations/,
          );
        },
      );

      await t.step("a denied host gets 403", async () => {
        const r = await output(
          sluiceRun(
            policy,
            dir,
            `curl -sS -o /dev/null -w '%{http_code}' ${front("denied.test")} https://denied.test/`,
          ),
        );
        assertEquals(r.stdout, "403");
        assertMatch(r.stderr, /most denied: denied\.test/);
      });

      await t.step("a direct TCP connection to an address no rule allows fails", async () => {
        const r = await output(
          sluiceRun(
            policy,
            dir,
            "curl -sS --connect-timeout 2 http://192.0.2.99:8080/; echo exit=$?",
          ),
        );
        assertMatch(r.stdout, /exit=(7|28)/);
      });

      await t.step("a UDP packet to an address no rule allows is dropped", async () => {
        const r = await output(
          sluiceRun(
            policy,
            dir,
            `python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("192.0.2.99", 9999))'; echo exit=$?`,
          ),
        );
        assertMatch(r.stdout, /exit=1/);
        assertMatch(r.stderr, /Operation not permitted/);
      });

      await t.step("a DNS query for a denied name gets NXDOMAIN", async () => {
        const r = await output(
          sluiceRun(
            policy,
            dir,
            "dig +time=3 +tries=1 denied.test A; dig +time=3 +tries=1 nothing-allows-this.example A",
          ),
        );
        assertEquals(r.stdout.match(/status: NXDOMAIN/g)?.length, 2, r.stdout);
      });

      // Every ending, with an audit file configured: that is how CI runs it.
      const audit = ["--audit-log", `${dir}/audit.jsonl`];
      const endings: [string, string, number, RegExp][] = [
        ["its own code", "exit 42", 42, /command exited 42;/],
        ["zero", "exit 0", 0, /command exited 0;/],
        ["SIGSEGV as 139", "kill -SEGV $$", 139, /killed by SIGSEGV \(exit status 139\)/],
        ["SIGUSR1 as 138", "kill -USR1 $$", 138, /killed by SIGUSR1 \(exit status 138\)/],
        ["SIGABRT as 134", "kill -ABRT $$", 134, /killed by SIGABRT \(exit status 134\)/],
        ["SIGPIPE as 141", "kill -PIPE $$", 141, /killed by SIGPIPE \(exit status 141\)/],
        ["a command's own 127", "exec no-such-command-here", 127, /command exited 127;/],
      ];
      for (const [name, script, code, summary] of endings) {
        await t.step(`the exit status is exact, with an audit file: ${name}`, async () => {
          const r = await output(sluiceRun(policy, dir, script, audit));
          assertEquals(r.code, code, r.stderr);
          assertMatch(r.stderr, summary);
          assert(!/Bad resource|error/i.test(r.stderr), r.stderr);
        });
      }

      await t.step("a command that cannot be found is 127, named in the summary", async () => {
        const c = sluiceRun(policy, dir, ["no-such-command-here"], audit);
        const r = await output(c);
        assertEquals(r.code, 127, r.stderr);
        assertMatch(r.stderr, /no-such-command-here: command not found/);
        assertMatch(r.stderr, /command not found \(exit status 127\)/);
      });

      await t.step(
        "sluice's own failure is 125, with an audit file; the command never ran",
        async () => {
          const broken = `${dir}/broken.yaml`;
          await Deno.writeTextFile(
            broken,
            "version: 1\nnetwork:\n  allow: [allowed.test]\ncredentials:\n  K:\n" +
              "    from: env:SLUICE_TEST_NOT_SET\n    hosts: [allowed.test]\n",
          );
          const r = await output(sluiceRun(broken, dir, `touch ${dir}/ran`, audit));
          assertEquals(r.code, 125, r.stderr);
          assertMatch(r.stderr, /env:SLUICE_TEST_NOT_SET is not set/);
          assertMatch(r.stderr, /sluice failed \(exit status 125\)/);
          assert(!/Uncaught|cleanup:/.test(r.stderr), r.stderr);
          assert(!(await exists(`${dir}/ran`)), "the command ran");
          assertEquals(await leftovers(r.pid), []);
        },
      );

      await t.step(
        "a placeholder sent to the wrong host ends the command (block_and_terminate)",
        async () => {
          const r = await output(
            sluiceRun(
              policy,
              dir,
              `curl -sS -o /dev/null ${
                front("other.test")
              } -H "X-Key: $API_KEY" https://other.test/; sleep 30`,
              audit,
            ),
          );
          assertEquals(r.code, 123, r.stderr);
          assertMatch(
            r.stderr,
            /credential API_KEY was headed to a host outside its scope; ending the command/,
          );
          assertMatch(r.stderr, /credential API_KEY violation \(exit status 123\)/);
          assertMatch(r.stderr, /1 credential violation/);
        },
      );

      await t.step(
        "nothing is left behind, also when sluice is killed with SIGTERM mid-run",
        async () => {
          // The command says when it runs: the signal must travel sluice -> init -> command.
          const started = `${dir}/started`;
          await Deno.remove(started).catch(() => {});
          const child = sluiceRun(policy, dir, `touch ${started}; sleep 30`).spawn();
          const end = Date.now() + 15000;
          while (!(await exists(started)) && Date.now() < end) {
            await new Promise((r) => setTimeout(r, 50));
          }
          child.kill("SIGTERM");
          const status = await child.status;
          assertEquals(status.code, 128 + 15);
          await child.stdout.cancel();
          await child.stderr.cancel();
          assertEquals(await leftovers(child.pid), []);
        },
      );
    } finally {
      await up.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

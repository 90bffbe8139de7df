/**
 * `sluice run`'s promise under attack, as root (CI runs these): the command
 * never holds a real secret, whatever the source (env under any name, file,
 * systemd credential) and wherever it looks (environment, /proc, files, raw
 * devices); root inside the run cannot undo its confinement; a run killed
 * with SIGKILL is cleaned up by the next one; Java trusts sluice's CA.
 *
 * The upstream listens on 127.0.0.3:443 so this file can run beside
 * run_test.ts (127.0.0.1:443).
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { opensslClientCert, opensslPki } from "../_pki.ts";
import { IS_ROOT, received, run, startTlsUpstream, testCas } from "./_harness.ts";
import { exists, leftovers, output, sluiceRunCommand } from "./_run.ts";

const ENV_SECRET = "env-secret-8c1f0a9d7e";
const FILE_SECRET = "file-secret-5b2e77c4a1";
const CRED_SECRET = "cred-secret-93d0f6b218";
// The other credential kinds' material: an oauth2 client secret (env) and refresh token (file),
// AWS keys (env, systemd credential); a client certificate's key joins at run time.
const OAUTH_SECRET = "oauth-client-secret-4d1e9a";
const OAUTH_REFRESH = "oauth-refresh-token-7b20c5";
const AWS_ID = "AKIAREALRUNPROMISE01";
const AWS_SECRET = "aws-real-secret-key-run-promise-0c4f2b";
const SECRETS = [
  ENV_SECRET,
  FILE_SECRET,
  CRED_SECRET,
  OAUTH_SECRET,
  OAUTH_REFRESH,
  AWS_ID,
  AWS_SECRET,
];
const UP = "127.0.0.3";

function sluiceRun(
  policy: string,
  dir: string,
  script: string,
  extra: string[] = [],
): Deno.Command {
  return sluiceRunCommand(
    {
      policy,
      dir,
      args: ["--resolve", `allowed.test=${UP}`, ...extra],
      env: {
        // A credential source under a name nothing would guess, and copies of the secret in
        // other variables, raw and encoded: none may reach the command.
        CI_DEPLOY_TOKEN: ENV_SECRET,
        CI_OAUTH_SECRET: OAUTH_SECRET,
        CI_AWS_ID: AWS_ID,
        AUTH_HEADER: `Bearer ${ENV_SECRET}`,
        BASIC: `Basic ${btoa(`user:${FILE_SECRET}`)}`,
        CREDENTIALS_DIRECTORY: `${dir}/creds`,
      },
    },
    script,
  );
}

function assertNoSecret(text: string, where: string) {
  for (const s of SECRETS) {
    assert(!text.includes(s), `a real secret value is in ${where}`);
    assert(!text.includes(btoa(s).slice(0, 12)), `a base64 form of a secret is in ${where}`);
  }
}

Deno.test({
  name: "sluice run keeps its promise against a root workload",
  ignore: !IS_ROOT,
  sanitizeResources: false,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "sluice-runp-t-" });
    await Deno.chmod(dir, 0o755);
    const cas = await testCas(dir);
    const up = startTlsUpstream(cas.trusted, 443, UP);
    await Deno.mkdir(`${dir}/creds`);
    await Deno.writeTextFile(`${dir}/creds/deploy`, `${CRED_SECRET}\n`, { mode: 0o600 });
    await Deno.writeTextFile(`${dir}/file-secret`, `${FILE_SECRET}\n`, { mode: 0o644 });
    await Deno.writeTextFile(`${dir}/creds/aws-secret`, `${AWS_SECRET}\n`, { mode: 0o600 });
    await Deno.writeTextFile(`${dir}/oauth-refresh`, `${OAUTH_REFRESH}\n`, { mode: 0o644 });
    const pki = await opensslPki("allowed.test");
    const client = await opensslClientCert(pki, "run-promise-client");
    await Deno.chmod(client.keyPath, 0o644);
    // One base64 line from the middle of the key: in any copy of it, raw or re-encoded.
    SECRETS.push((await Deno.readTextFile(client.keyPath)).split("\n")[2]);
    const policy = `${dir}/policy.yaml`;
    const audit = `${dir}/audit.jsonl`;
    await Deno.writeTextFile(
      policy,
      `version: 1
network:
  allow: [allowed.test, auth.test, "${UP}:443"]
credentials:
  API_TOKEN:
    from: env:CI_DEPLOY_TOKEN
    hosts: [allowed.test]
  FILE_TOKEN:
    from: file:${dir}/file-secret
    hosts: [allowed.test]
  CRED_TOKEN:
    from: credential:deploy
    hosts: [allowed.test]
  OAUTH_TOKEN:
    kind: oauth2
    token_url: https://auth.test/token
    client_id: ci
    client_secret: env:CI_OAUTH_SECRET
    refresh_token: file:${dir}/oauth-refresh
    hosts: [allowed.test]
  AWS:
    kind: aws_sigv4
    access_key_id: env:CI_AWS_ID
    secret_access_key: credential:aws-secret
    hosts: [allowed.test]
  PARTNER_MTLS:
    kind: client_cert
    cert: file:${client.certPath}
    key: file:${client.keyPath}
    hosts: [allowed.test]
tls:
  upstream: { ca: [${cas.trustedPath}] }
audit:
  log: ${audit}
`,
    );
    // A service on the host, on every address: the veth's host side included.
    const service = Deno.listen({ hostname: "0.0.0.0", port: 0 });
    const servicePort = (service.addr as Deno.NetAddr).port;
    let serviceHits = 0;
    (async () => {
      for await (const c of service) {
        serviceHits++;
        c.close();
      }
    })().catch(() => {});
    try {
      await t.step("every source is substituted toward its host", async () => {
        const r = await output(sluiceRun(
          policy,
          dir,
          `curl -sS --resolve allowed.test:443:192.0.2.10 ` +
            `-H "Authorization: Bearer $API_TOKEN" -H "X-File: $FILE_TOKEN" -H "X-Cred: $CRED_TOKEN" ` +
            "https://allowed.test/echo",
        ));
        assertEquals(r.code, 0, r.stderr);
        const h = received[received.length - 1].headers;
        assertEquals(
          [h.authorization, h["x-file"], h["x-cred"]],
          [`Bearer ${ENV_SECRET}`, FILE_SECRET, CRED_SECRET],
        );
        assertNoSecret(r.stdout + r.stderr, "the command's output");
      });

      await t.step(
        "no real value in anything the command can read (env, /proc, files, devices)",
        async () => {
          const r = await output(sluiceRun(
            policy,
            dir,
            [
              "env",
              "echo ---proc",
              // every process the command can see, sluice's own and its parents' included
              "for p in /proc/[0-9]*; do cat $p/environ $p/cmdline 2>/dev/null | tr '\\0' '\\n'; done",
              "echo ---files",
              `cat ${dir}/file-secret ${dir}/oauth-refresh ${client.keyPath} ${dir}/creds/* ${dir}/state/* 2>&1`,
              "ls -la $CREDENTIALS_DIRECTORY 2>&1",
              `grep -ra . /tmp/sluice-run-* 2>/dev/null | grep -v -e BEGIN -e END | head -c 100000`,
              "echo ---devices",
              "ls -l /dev",
              "find /dev -type b | wc -l",
              "echo ---ptrace",
              "cat /proc/1/environ 2>&1 | tr '\\0' '\\n'",
              "true",
            ].join("; "),
          ));
          assertEquals(r.code, 0, r.stderr);
          assertNoSecret(r.stdout + r.stderr, "what the command read");
          // The sandbox really looked: processes, a masked file, no block devices.
          assertMatch(r.stdout, /---proc\n/);
          assertMatch(r.stdout, /API_TOKEN=sluice-api-token-/);
          assertEquals(
            r.stdout.split("---devices").at(-1)!.split("---ptrace")[0].trim().split("\n").at(-1),
            "0",
          );
          assertMatch(
            r.stderr,
            /withheld from the command \(they hold a secret\): AUTH_HEADER, BASIC, CI_AWS_ID, CI_DEPLOY_TOKEN, CI_OAUTH_SECRET\n/,
          );
          // The other kinds' placeholders are where their tools read them.
          assertMatch(r.stdout, /^OAUTH_TOKEN=sluice-oauth-token-/m);
          assertMatch(r.stdout, /^AWS_ACCESS_KEY_ID=AKIA[A-Z2-7]{16}$/m);
          assertMatch(r.stdout, /^AWS_SECRET_ACCESS_KEY=sluice-aws-secret-/m);
          assertNoSecret(await Deno.readTextFile(audit), "the audit log");
        },
      );

      await t.step(
        "root inside the run cannot change its rules, and the host side holds without them",
        async () => {
          const go = `${dir}/go`;
          const ready = `${dir}/ready`;
          const child = sluiceRun(
            policy,
            dir,
            [
              "gw=$(ip route | awk '/default/ {print $3}')",
              "nft flush ruleset 2>&1; echo nft-flush=$?",
              "nft delete table inet sluice_run 2>&1; echo nft-delete=$?",
              "iptables -F 2>&1; echo iptables=$?",
              "ip route add 192.0.2.0/24 dev lo 2>&1; echo route=$?",
              "unshare --net true 2>&1; echo unshare=$?",
              `curl -sS --connect-timeout 2 http://$gw:${servicePort}/ 2>&1; echo service=$?`,
              // Wait while the test deletes the namespace's table from outside.
              `touch ${ready}; i=0; while [ ! -f ${go} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done`,
              `curl -sS --connect-timeout 2 http://$gw:${servicePort}/ 2>&1; echo service-after=$?`,
              `curl -sS --connect-timeout 2 http://$gw:22/ 2>&1; echo ssh-after=$?`,
            ].join("; "),
          ).spawn();
          const end = Date.now() + 20000;
          while (!(await exists(ready)) && Date.now() < end) {
            await new Promise((r) => setTimeout(r, 50));
          }
          // The test (root on the host) removes the namespace's own rules: only the host
          // side of the veth is left to confine the command.
          await run(["ip", "netns", "exec", `sluice-run-${child.pid}`, "nft", "flush", "ruleset"]);
          await Deno.writeTextFile(go, "");
          const o = await child.output();
          const out = new TextDecoder().decode(o.stdout);
          assertEquals(o.code, 0, new TextDecoder().decode(o.stderr));
          for (const what of ["nft-flush", "nft-delete", "iptables", "route", "unshare"]) {
            assertMatch(out, new RegExp(`${what}=[1-9]`), `${what} should fail:\n${out}`);
          }
          assertMatch(out, /service=(7|28)\b/);
          assertMatch(out, /service-after=(7|28)\b/);
          assertMatch(out, /ssh-after=(7|28)\b/);
          assertEquals(serviceHits, 0, "the host service was reached from the run");
          await Deno.remove(go);
          await Deno.remove(ready);
        },
      );

      await t.step(
        "after kill -9 of sluice mid-run the command ends, and the next run cleans up",
        async () => {
          const started = `${dir}/started`;
          const marker = "61.25";
          const child = sluiceRun(policy, dir, `touch ${started}; sleep ${marker}`).spawn();
          const end = Date.now() + 20000;
          while (!(await exists(started)) && Date.now() < end) {
            await new Promise((r) => setTimeout(r, 50));
          }
          // The run's temp dir, as its marker names it (unless a parallel run already recovered).
          const markerFile = `/run/sluice/runs/${child.pid}.json`;
          child.kill("SIGKILL");
          await child.status;
          await child.stdout.cancel();
          await child.stderr.cancel();
          const tmp: string | undefined = await Deno.readTextFile(markerFile).then(
            (t) => JSON.parse(t).tmp,
            () => undefined,
          );
          if (tmp) assert(await exists(tmp), "the killed run's temp dir is gone before recovery");
          // The command goes with sluice (parent-death signal through unshare to the init).
          let alive = true;
          for (let i = 0; i < 50 && alive; i++) {
            alive = (await run(["ps", "-eo", "args"])).includes(`sleep ${marker}`);
            if (alive) await new Promise((r) => setTimeout(r, 100));
          }
          assert(!alive, "the command outlived sluice");
          const r = await output(sluiceRun(policy, dir, "true"));
          assertEquals(r.code, 0, r.stderr);
          // The next run (or another test's run starting meanwhile: tests run in parallel)
          // removes what the killed run left; with recovery broken, it all stays.
          assertEquals(await leftovers(child.pid), []);
          assertEquals(await leftovers(r.pid), []);
          if (tmp) assert(!(await exists(tmp)), `the killed run's temp dir ${tmp} was left`);
        },
      );

      await t.step("Java trusts sluice's CA through JAVA_TOOL_OPTIONS", async () => {
        await Deno.writeTextFile(
          `${dir}/Fetch.java`,
          `public class Fetch {
  public static void main(String[] a) throws Exception {
    var c = (javax.net.ssl.HttpsURLConnection) new java.net.URL(a[0]).openConnection();
    System.out.println("status=" + c.getResponseCode());
  }
}
`,
        );
        // Java resolves the name like curl's --resolve: to an address the namespace routes.
        await Deno.writeTextFile(`${dir}/hosts`, "192.0.2.10 allowed.test\n");
        const r = await output(sluiceRun(
          policy,
          dir,
          `java -Djdk.net.hosts.file=${dir}/hosts ${dir}/Fetch.java https://allowed.test/echo`,
        ));
        assertMatch(r.stdout, /status=200/, r.stderr);
      });
    } finally {
      service.close();
      await up.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

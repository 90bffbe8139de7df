/**
 * `kind: aws_sigv4` end to end: the real AWS CLI (Debian's /usr/bin/aws) with placeholder keys,
 * through `sluice serve`'s explicit proxy, against a local S3 stand-in (test/e2e/_s3_standin.py)
 * that verifies every signature with the REAL keys using Debian's botocore, and aws-chunked chunk
 * signatures with a chain of its own. The stand-in refuses the placeholder keys; the workload's
 * outputs, sluice's log and audit trail hold no real key.
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { opensslPki } from "../_pki.ts";
import { curl, IS_ROOT, placeholders, sha256, startSluice } from "./_harness.ts";
import { available, AWS, KEY_ID, PY, SECRET, STANDIN, startStandin, TOKEN } from "./_s3.ts";
import { output, sluiceRunCommand } from "./_run.ts";

Deno.test({
  name:
    "aws_sigv4: the AWS CLI with placeholder keys, re-signed by sluice for a SigV4-verifying S3",
  ignore: !available,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "sluice-sigv4-" });
    const pki = await opensslPki("s3.test");
    const s3 = await startStandin(dir, `${pki.dir}/leaf.pem`, `${pki.dir}/leaf.key`);
    await Deno.writeTextFile(`${dir}/aws-secret`, `${SECRET}\n`);
    const policy = `${dir}/policy.yaml`;
    await Deno.writeTextFile(
      policy,
      `version: 1
network:
  allow: ["s3.test:${s3.port}", "other.test:${s3.port}", "127.0.0.1:${s3.port}"]
credentials:
  AWS:
    kind: aws_sigv4
    access_key_id: env:SLUICE_TEST_AWS_KEY_ID
    secret_access_key: file:${dir}/aws-secret
    session_token: env:SLUICE_TEST_AWS_TOKEN
    hosts: ["s3.test:${s3.port}"]
tls:
  upstream: { ca: [${pki.dir}/ca.pem] }
`,
    );
    const sluice = await startSluice(
      policy,
      dir,
      ["--resolve", "s3.test=127.0.0.1", "--resolve", "other.test=127.0.0.1"],
      undefined,
      { SLUICE_TEST_AWS_KEY_ID: KEY_ID, SLUICE_TEST_AWS_TOKEN: TOKEN },
    );
    const ph = await placeholders(policy, `${dir}/state`);
    await Deno.writeTextFile(
      `${dir}/aws-config`,
      "[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n",
    );
    const awsEnv = {
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      HOME: dir,
      AWS_ACCESS_KEY_ID: ph.AWS,
      AWS_SECRET_ACCESS_KEY: ph["AWS#secret_access_key"],
      AWS_SESSION_TOKEN: ph["AWS#session_token"],
      AWS_CONFIG_FILE: `${dir}/aws-config`,
      AWS_SHARED_CREDENTIALS_FILE: `${dir}/none`,
      AWS_EC2_METADATA_DISABLED: "true",
      AWS_CA_BUNDLE: sluice.caPath,
      HTTPS_PROXY: `http://127.0.0.1:${sluice.proxyPort}`,
    };
    /** Every byte the workload read. */
    const seen: string[] = [];
    const aws = async (args: string[], endpoint = `https://s3.test:${s3.port}`) => {
      const o = await new Deno.Command(AWS, {
        args: ["--endpoint-url", endpoint, ...args],
        env: awsEnv,
        clearEnv: true,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const r = {
        code: o.code,
        stdout: new TextDecoder().decode(o.stdout),
        stderr: new TextDecoder().decode(o.stderr),
      };
      seen.push(r.stdout, r.stderr);
      return r;
    };
    try {
      assert(/^AKIA[A-Z2-7]{16}$/.test(ph.AWS), `placeholder key id ${ph.AWS}`);

      await t.step(
        "the stand-in refuses the placeholder keys (checked without sluice)",
        async () => {
          const url = (await aws(["s3", "presign", "s3://ci-artifacts/x"])).stdout.trim();
          const r = await curl([
            "--cacert",
            `${pki.dir}/ca.pem`,
            "--resolve",
            `s3.test:${s3.port}:127.0.0.1`,
            url,
          ]);
          assertMatch(r.text, /InvalidAccessKeyId/);
        },
      );

      await t.step("aws s3 ls", async () => {
        const r = await aws(["s3", "ls"]);
        assertEquals(r.code, 0, r.stderr + sluice.stderr());
        assertMatch(r.stdout, /ci-artifacts/);
      });

      const big = new Uint8Array(20 << 20);
      for (let i = 0; i < big.length; i += 65536) {
        crypto.getRandomValues(big.subarray(i, i + 65536));
      }
      await Deno.writeFile(`${dir}/big.bin`, big);
      const bigHash = await sha256(big);

      await t.step("aws s3 cp of 20 MB (multipart) and back", async () => {
        const up = await aws(["s3", "cp", `${dir}/big.bin`, "s3://ci-artifacts/big.bin"]);
        assertEquals(up.code, 0, up.stderr);
        const complete = (await s3.log()).find((r) => typeof r.parts === "number");
        assert(complete && (complete.parts as number) >= 2, "a multipart upload");
        const down = await aws(["s3", "cp", "s3://ci-artifacts/big.bin", `${dir}/back.bin`]);
        assertEquals(down.code, 0, down.stderr);
        assertEquals(await sha256(await Deno.readFile(`${dir}/back.bin`)), bigHash);
      });

      await t.step(
        "a presigned URL made with the placeholder keys, fetched through sluice",
        async () => {
          const url = (await aws(["s3", "presign", "s3://ci-artifacts/big.bin"])).stdout.trim();
          assertMatch(url, new RegExp(`X-Amz-Credential=${ph.AWS}`));
          const r = await curl([
            "-x",
            `http://127.0.0.1:${sluice.proxyPort}`,
            "--cacert",
            sluice.caPath,
            "-o",
            `${dir}/presigned.bin`,
            "-w",
            "%{http_code}",
            url,
          ]);
          seen.push(r.text, r.stderr);
          assertEquals(r.text, "200", r.stderr);
          assertEquals(await sha256(await Deno.readFile(`${dir}/presigned.bin`)), bigHash);
          const last = (await s3.log()).filter((x) => x.auth === "query").at(-1)!;
          assertEquals(last.key_id, KEY_ID);
        },
      );

      await t.step("an aws-chunked upload is re-signed chunk by chunk", async () => {
        const small = big.subarray(0, 200_000);
        await Deno.writeFile(`${dir}/chunked.bin`, small);
        const o = await new Deno.Command(PY, {
          args: [
            STANDIN,
            "put-chunked",
            `https://s3.test:${s3.port}/ci-artifacts/chunked.bin`,
            String(sluice.proxyPort),
            sluice.caPath,
            `${dir}/chunked.bin`,
          ],
          env: awsEnv,
          clearEnv: true,
          stdout: "piped",
          stderr: "piped",
        }).output();
        const out = new TextDecoder().decode(o.stdout) + new TextDecoder().decode(o.stderr);
        seen.push(out);
        assertMatch(out, /^200/, out + sluice.stderr());
        const rec = (await s3.log()).find((r) => r.chunked === true);
        assert(rec, "the stand-in verified a chunked upload");
        const back = await aws(["s3", "cp", "s3://ci-artifacts/chunked.bin", `${dir}/c.bin`]);
        assertEquals(back.code, 0, back.stderr);
        assertEquals(await sha256(await Deno.readFile(`${dir}/c.bin`)), await sha256(small));
      });

      await t.step(
        "a forged signature with the placeholder key id is refused by sluice",
        async () => {
          const before = (await s3.log()).length;
          const r = await curl([
            "-x",
            `http://127.0.0.1:${sluice.proxyPort}`,
            "--cacert",
            sluice.caPath,
            "-i",
            "-H",
            `Authorization: AWS4-HMAC-SHA256 Credential=${ph.AWS}/20260101/us-east-1/s3/aws4_request, ` +
            `SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=${"0".repeat(64)}`,
            "-H",
            "x-amz-date: 20260101T000000Z",
            "-H",
            "x-amz-content-sha256: UNSIGNED-PAYLOAD",
            `https://s3.test:${s3.port}/ci-artifacts/big.bin`,
          ]);
          seen.push(r.text);
          assertMatch(r.text, /^HTTP\/[\d.]+ 403/m);
          assertMatch(r.text, /credential-signature/);
          assertMatch(r.text, /does not verify with the placeholder secret key/);
          assertEquals((await s3.log()).length, before, "the forged request reached S3");
        },
      );

      await t.step("placeholder-signed requests to another host are violations", async () => {
        const r = await aws(["s3", "ls"], `https://other.test:${s3.port}`);
        assert(r.code !== 0);
        const audit = await sluice.audit();
        assert(
          audit.some((x) => x.code === "credential-violation" && x.violation === "AWS"),
          "no credential-violation record",
        );
      });

      await t.step("S3 saw only the real keys; the workload and the logs hold none", async () => {
        const log = await s3.log();
        for (const r of log.filter((x) => x.key_id !== undefined && x.error === undefined)) {
          assertEquals(r.key_id, KEY_ID);
        }
        const audit = await Deno.readTextFile(sluice.auditPath);
        // Every file sluice wrote: its state directory (CA, placeholder key) and the audit log.
        const written: string[] = [];
        const walk = async (d: string) => {
          for await (const e of Deno.readDir(d)) {
            const p = `${d}/${e.name}`;
            if (e.isDirectory) await walk(p);
            else if (e.isFile) written.push(new TextDecoder().decode(await Deno.readFile(p)));
          }
        };
        await walk(`${dir}/state`);
        assert(written.length >= 2, "the state directory holds sluice's files");
        for (const v of [KEY_ID, SECRET, TOKEN]) {
          assert(!written.some((f) => f.includes(v)), "a file sluice wrote holds a real key");
        }
        const all = seen.join("\n");
        for (const v of [KEY_ID, SECRET, TOKEN]) {
          assert(!all.includes(v), "the workload read a real key");
          assert(!audit.includes(v) && !sluice.stderr().includes(v), "a real key was logged");
        }
      });
    } finally {
      await sluice.stop();
      await s3.stop();
    }
  },
});

Deno.test({
  name: "aws_sigv4 under sluice run: aws s3 cp with the placeholders sluice puts in AWS_*",
  ignore: !IS_ROOT || !available,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "sluice-sigv4-run-" });
    const pki = await opensslPki("s3.test");
    // On 127.0.0.5:443, where sluice connects for the name (other tests use 127.0.0.1-4:443).
    const s3 = await startStandin(
      dir,
      `${pki.dir}/leaf.pem`,
      `${pki.dir}/leaf.key`,
      "127.0.0.5:443",
    );
    const policy = `${dir}/policy.yaml`;
    await Deno.writeTextFile(
      policy,
      `version: 1
network:
  allow: [s3.test, "127.0.0.5:443"]
credentials:
  AWS:
    kind: aws_sigv4
    access_key_id: env:SLUICE_TEST_AWS_KEY_ID
    secret_access_key: env:SLUICE_TEST_AWS_SECRET
    session_token: env:SLUICE_TEST_AWS_TOKEN
    hosts: [s3.test]
tls:
  upstream: { ca: [${pki.dir}/ca.pem] }
`,
    );
    await Deno.writeTextFile(`${dir}/artifact.txt`, "build output\n".repeat(1000));
    // Inside the namespace sluice's DNS answers its own --resolve, the host's loopback, which a
    // namespace cannot reach; the CLI gets a documentation address instead, whose TCP 443 sluice
    // intercepts like any other (as test/e2e/_recipes/shims.ts pins names for npm).
    await Deno.mkdir(`${dir}/pin`);
    await Deno.writeTextFile(
      `${dir}/pin/sitecustomize.py`,
      "import socket\n_real = socket.getaddrinfo\n" +
        "def _pinned(host, *a, **k):\n" +
        "    return _real('192.0.2.10' if host == 's3.test' else host, *a, **k)\n" +
        "socket.getaddrinfo = _pinned\n",
    );
    await Deno.writeTextFile(
      `${dir}/aws-config`,
      "[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n",
    );
    try {
      const r = await output(
        sluiceRunCommand(
          {
            policy,
            dir,
            args: ["--resolve", "s3.test=127.0.0.5"],
            env: {
              SLUICE_TEST_AWS_KEY_ID: KEY_ID,
              SLUICE_TEST_AWS_SECRET: SECRET,
              SLUICE_TEST_AWS_TOKEN: TOKEN,
              AWS_CONFIG_FILE: `${dir}/aws-config`,
              AWS_SHARED_CREDENTIALS_FILE: `${dir}/none`,
              AWS_EC2_METADATA_DISABLED: "true",
              PYTHONPATH: `${dir}/pin`,
            },
          },
          `${AWS} --cli-connect-timeout 10 --cli-read-timeout 20 --endpoint-url https://s3.test s3 cp ${dir}/artifact.txt s3://ci-artifacts/artifact.txt && ` +
            'echo "id=$AWS_ACCESS_KEY_ID"; env | grep -v "^AWS_CA|^[A-Z_]*_CA|CERT" | sort',
        ),
      );
      assertEquals(r.code, 0, r.stderr);
      assertMatch(
        r.stdout,
        /upload: .*artifact\.txt to s3:\/\/ci-artifacts\/artifact\.txt/,
        r.stderr,
      );
      assertMatch(r.stdout, /^id=AKIA[A-Z2-7]{16}$/m);
      for (const v of [KEY_ID, SECRET, TOKEN]) {
        assert(!r.stdout.includes(v) && !r.stderr.includes(v), "the command saw a real key");
      }
      const put = (await s3.log()).find((x) => x.method === "PUT");
      assertEquals([put?.key_id, put?.error], [KEY_ID, undefined]);
    } finally {
      await s3.stop();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(pki.dir, { recursive: true });
    }
  },
});

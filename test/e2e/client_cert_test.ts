/**
 * `kind: client_cert` credentials end to end: sluice presents the certificate to an upstream
 * that requires one (`openssl s_server -Verify 1`, a real TLS stack that is not sluice's or
 * Deno's), only on the hosts and ports the credential names; the workload holds nothing; the
 * use is audited and counted; a key that does not belong to its certificate stops sluice at
 * start with a message naming both files.
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { opensslClientCert, opensslPki } from "../_pki.ts";
import { curl, IS_ROOT, startSluice } from "./_harness.ts";
import { mtlsServer } from "./_mtls.ts";
import { output, sluiceRunCommand } from "./_run.ts";

Deno.test("client_cert: sluice presents the certificate where the credential says, and only there", async (t) => {
  const pki = await opensslPki("mtls.test");
  const client = await opensslClientCert(pki, "sluice-client");
  const dir = await Deno.makeTempDir({ prefix: "sluice-mtls-" });
  const leaf = `${pki.dir}/leaf.pem`, leafKey = `${pki.dir}/leaf.key`, ca = `${pki.dir}/ca.pem`;
  // Two servers that both require a client certificate; the credential names only the first.
  const scoped = await mtlsServer(pki.dir, leaf, leafKey, ca);
  const other = await mtlsServer(pki.dir, leaf, leafKey, ca);
  const policy = `${dir}/policy.yaml`;
  const write = (key: string) =>
    Deno.writeTextFile(
      policy,
      `version: 1
network:
  allow: [mtls.test, "127.0.0.1:${scoped.port}", "127.0.0.1:${other.port}"]
credentials:
  PARTNER_MTLS:
    kind: client_cert
    cert: file:${client.certPath}
    key: file:${key}
    hosts: ["mtls.test:${scoped.port}"]
tls:
  upstream: { ca: [${ca}] }
`,
    );
  await write(client.keyPath);
  const sluice = await startSluice(policy, dir, [
    "--resolve",
    "mtls.test=127.0.0.1",
    "--admin",
    "127.0.0.1:0",
  ]);
  const via = ["-x", `http://127.0.0.1:${sluice.proxyPort}`, "--cacert", sluice.caPath];
  const outputs: string[] = [];
  try {
    await t.step(
      "the credential's host answers 200: sluice presented the certificate",
      async () => {
        const r = await curl([...via, "-w", "\n%{http_code}", `https://mtls.test:${scoped.port}/`]);
        outputs.push(r.text + r.stderr);
        assertEquals(r.code, 0, r.stderr);
        assertMatch(r.text, /\n200$/);
        // s_server -www reports the client certificate it verified.
        assertMatch(r.text, /sluice-client/);
      },
    );

    await t.step(
      "another port of the same host gets no certificate: its handshake fails, 502",
      async () => {
        const r = await curl([...via, "-i", `https://mtls.test:${other.port}/`]);
        outputs.push(r.text + r.stderr);
        // (After the CONNECT's own 200.) TLS 1.3: the server's certificate_required alert comes
        // after the client's handshake is done, so it ends the exchange as a reset.
        assertMatch(r.text, /^HTTP\/[\d.]+ 502/m);
        assertMatch(r.text, /x-sluice-decision: error; code=upstream-(tls|reset)/);
        assertMatch(r.text, /CertificateRequired|certificate required|alert/i);
      },
    );

    await t.step(
      "the use is audited and counted; the key is in nothing the workload reads",
      async () => {
        const audit = await sluice.audit();
        const used = audit.filter((a) =>
          a.event === "request" && (a.credentials as string[] | undefined)?.includes("PARTNER_MTLS")
        );
        assertEquals(used.length, 1, JSON.stringify(audit));
        assertEquals(used[0].port, scoped.port);
        const metrics = await (await fetch(`http://127.0.0.1:${sluice.adminPort}/metrics`)).text();
        assertMatch(metrics, /sluice_credential_uses_total\{credential="PARTNER_MTLS"\} 1/);
        const key = (await Deno.readTextFile(client.keyPath)).split("\n").find((l) =>
          l.length > 40
        )!;
        for (const o of [...outputs, await Deno.readTextFile(sluice.auditPath), sluice.stderr()]) {
          assert(!o.includes(key), "the private key leaked");
        }
      },
    );
  } finally {
    await sluice.stop();
  }

  await t.step(
    "a key that is not the certificate's stops sluice at start, naming both",
    async () => {
      await write(leafKey);
      const e = await startSluice(policy, dir).then(
        async (s) => {
          await s.stop();
          return "started";
        },
        (e: Error) => e.message,
      );
      assertMatch(
        e,
        /credential PARTNER_MTLS: file:.*leaf\.key is not the private key of file:.*sluice-client\.pem/,
      );
    },
  );
  await scoped.close();
  await other.close();
  await Deno.remove(dir, { recursive: true });
  await Deno.remove(pki.dir, { recursive: true });
});

Deno.test({
  name: "client_cert under sluice run: the command reaches the mTLS host and holds no key",
  ignore: !IS_ROOT,
  sanitizeResources: false,
  async fn() {
    const pki = await opensslPki("mtls.test");
    const client = await opensslClientCert(pki, "sluice-run-client");
    const dir = await Deno.makeTempDir({ prefix: "sluice-mtls-run-" });
    // On 127.0.0.4:443, where sluice connects for the name (other tests use 127.0.0.1-3:443).
    const server = await mtlsServer(
      pki.dir,
      `${pki.dir}/leaf.pem`,
      `${pki.dir}/leaf.key`,
      `${pki.dir}/ca.pem`,
      "127.0.0.4",
      443,
    );
    const policy = `${dir}/policy.yaml`;
    await Deno.writeTextFile(
      policy,
      `version: 1
network:
  allow: [mtls.test, "127.0.0.4:443"]
credentials:
  PARTNER_MTLS:
    kind: client_cert
    cert: file:${client.certPath}
    key: env:SLUICE_TEST_MTLS_KEY
    hosts: [mtls.test]
tls:
  upstream: { ca: [${pki.dir}/ca.pem] }
`,
    );
    const key = await Deno.readTextFile(client.keyPath);
    try {
      const r = await output(
        sluiceRunCommand(
          {
            policy,
            dir,
            args: ["--resolve", "mtls.test=127.0.0.4"],
            env: { SLUICE_TEST_MTLS_KEY: key },
          },
          "curl -sS -w '\\n%{http_code}\\n' --resolve mtls.test:443:192.0.2.10 https://mtls.test/ | tail -n 1; " +
            "echo key=${SLUICE_TEST_MTLS_KEY:-unset}; env | grep -c 'PRIVATE KEY' || true",
        ),
      );
      assertEquals(r.code, 0, r.stderr);
      assertEquals(r.stdout.trim().split("\n"), ["200", "key=unset", "0"], r.stderr);
      assert(!r.stdout.includes(key.split("\n")[1]));
    } finally {
      await server.close();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(pki.dir, { recursive: true });
    }
  },
});

/**
 * Credential brokering end to end: curl through sluice to local TLS
 * upstreams that record what they received. The workload only ever holds
 * placeholders; the real values reach only their hosts, never come back, and
 * never appear in anything sluice writes.
 */
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import {
  curl,
  placeholders,
  received,
  sha256,
  startSluice,
  startTlsUpstream,
  testCas,
} from "./_harness.ts";

const API_KEY = "real-api-key-3f9c1e77d2";
const FILE_TOKEN = "file-token-8b21aa0c55e4";
const FILE_TOKEN_2 = "file-token-rotated-61d0f2";
const SYSTEMD = "systemd-cred-70c4b9e1a3";

Deno.test("credential brokering through sluice serve", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-cred-" });
  const cas = await testCas(dir);
  const up = startTlsUpstream(cas.trusted);
  await Deno.mkdir(`${dir}/creds`);
  await Deno.writeTextFile(`${dir}/creds/sysd`, `${SYSTEMD}\n`);
  await Deno.writeTextFile(`${dir}/file-token`, `${FILE_TOKEN}\n`);
  const policy = `${dir}/policy.yaml`;
  await Deno.writeTextFile(
    policy,
    `version: 1
network:
  allow: [api.test, other.test, "127.0.0.1:${up.port}"]
credentials:
  API_KEY:
    from: env:SLUICE_TEST_API_KEY
    hosts: [api.test]
    in: [header, query, body]
  FILE_TOKEN:
    from: file:${dir}/file-token
    hosts: [api.test]
    in: []
    inject: { header: X-Api-Token, value: "Token \${secret}" }
  SYSD:
    from: credential:sysd
    hosts: [api.test]
tls:
  upstream: { ca: [${cas.trustedPath}] }
`,
  );
  const ph = await placeholders(policy, `${dir}/state`);
  const sluice = await startSluice(
    policy,
    dir,
    ["--resolve", "api.test=127.0.0.1", "--resolve", "other.test=127.0.0.1"],
    undefined,
    { SLUICE_TEST_API_KEY: API_KEY, CREDENTIALS_DIRECTORY: `${dir}/creds` },
  );
  const via = ["-x", `http://127.0.0.1:${sluice.proxyPort}`, "--cacert", sluice.caPath];
  const api = `https://api.test:${up.port}`;
  const last = () => received[received.length - 1];
  try {
    await t.step("placeholders are derived, stable and recognisable", () => {
      assertMatch(ph.API_KEY, /^sluice-api-key-[a-z2-7]{26}$/);
      assert(ph.API_KEY !== ph.SYSD);
    });

    await t.step(
      "a Bearer placeholder reaches the upstream as the real value and comes back as the placeholder",
      async () => {
        const r = await curl([...via, "-H", `Authorization: Bearer ${ph.API_KEY}`, `${api}/echo`]);
        assertEquals(r.code, 0, r.stderr);
        assertEquals(last().headers.authorization, `Bearer ${API_KEY}`);
        assert(!r.text.includes(API_KEY), "the real value came back to the workload");
        assertEquals(JSON.parse(r.text).headers.authorization, `Bearer ${ph.API_KEY}`);
      },
    );

    await t.step(
      "the same placeholder to another allowed host is blocked with 403 and never sent",
      async () => {
        const before = received.length;
        const r = await curl([
          ...via,
          "-H",
          `Authorization: Bearer ${ph.API_KEY}`,
          "-w",
          "\n%{http_code}",
          `https://other.test:${up.port}/echo`,
        ]);
        assertMatch(
          r.text,
          /credential API_KEY \(header authorization\), which may only be sent to api\.test, not other\.test[\s\S]*\n403$/,
        );
        assertEquals(received.length, before, "the upstream must receive nothing");
      },
    );

    await t.step("a placeholder in the query is substituted", async () => {
      await curl([...via, `${api}/echo?key=${ph.API_KEY}&x=1`]);
      assertEquals(last().target, `/echo?key=${API_KEY}&x=1`);
    });

    await t.step("a placeholder inside Basic auth is substituted", async () => {
      await curl([...via, "-u", `user:${ph.API_KEY}`, `${api}/echo`]);
      assertEquals(atob(last().headers.authorization.slice(6)), `user:${API_KEY}`);
    });

    await t.step("a placeholder in a JSON body is substituted (in: [body])", async () => {
      const r = await curl([
        ...via,
        "-H",
        "content-type: application/json",
        "--data",
        `{"key":"${ph.API_KEY}"}`,
        `${api}/echo`,
      ]);
      assertEquals(last().body, `{"key":"${API_KEY}"}`);
      assert(!r.text.includes(API_KEY));
    });

    await t.step(
      "a placeholder split across body chunks of a streamed 3 MB upload is substituted",
      async () => {
        const enc = new TextEncoder();
        const pad = "x".repeat(3_000_000);
        await Deno.writeFile(`${dir}/big.txt`, enc.encode(`${pad}${ph.API_KEY}${pad}`));
        await curl([
          ...via,
          "-H",
          "content-type: text/plain",
          "-H",
          "Transfer-Encoding: chunked",
          "--data-binary",
          `@${dir}/big.txt`,
          `${api}/upload`,
        ]);
        assertEquals(last().bodySha256, await sha256(enc.encode(`${pad}${API_KEY}${pad}`)));
      },
    );

    await t.step(
      "a placeholder in a body to another host is blocked before anything is sent",
      async () => {
        const before = received.length;
        const r = await curl([
          ...via,
          "--data",
          `{"key":"${ph.API_KEY}"}`,
          "-o",
          "/dev/null",
          "-w",
          "%{http_code}",
          `https://other.test:${up.port}/echo`,
        ]);
        assertEquals(r.text, "403");
        assertEquals(received.length, before);
      },
    );

    await t.step(
      "inject sets the header when the client sent none, and replaces a client value",
      async () => {
        await curl([...via, `${api}/echo`]);
        assertEquals(last().headers["x-api-token"], `Token ${FILE_TOKEN}`);
        await curl([...via, "-H", "X-Api-Token: forged", `${api}/echo`]);
        assertEquals(last().headers["x-api-token"], `Token ${FILE_TOKEN}`);
      },
    );

    await t.step("a credential:NAME source reads $CREDENTIALS_DIRECTORY", async () => {
      await curl([...via, "-H", `X-Sysd: ${ph.SYSD}`, `${api}/echo`]);
      assertEquals(last().headers["x-sysd"], SYSTEMD);
    });

    await t.step("a file: source is re-read on reload", async () => {
      await Deno.writeTextFile(`${dir}/file-token`, `${FILE_TOKEN_2}\n`);
      Deno.kill(sluice.pid, "SIGHUP");
      const end = Date.now() + 5000;
      while (!sluice.stderr().includes("reloaded") && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 50));
      }
      await curl([...via, `${api}/echo`]);
      assertEquals(last().headers["x-api-token"], `Token ${FILE_TOKEN_2}`);
    });

    await t.step("the audit log names credentials and violations, never values", async () => {
      await new Promise((r) => setTimeout(r, 100));
      const records = await sluice.audit();
      assert(
        records.some((r) =>
          r.violation === "API_KEY" && r.host === "other.test" && r.code === "credential-violation"
        ),
      );
      assert(
        records.some((r) =>
          Array.isArray(r.credentials) && (r.credentials as string[]).includes("API_KEY")
        ),
      );
    });
  } finally {
    await sluice.stop();
    await up.close();
    // Nothing sluice wrote may contain a real value: logs, audit, state directory.
    const written: string[] = [
      sluice.stderr(),
      await Deno.readTextFile(sluice.auditPath).catch(() => ""),
    ];
    for await (const e of Deno.readDir(`${dir}/state`)) {
      written.push(new TextDecoder("latin1").decode(await Deno.readFile(`${dir}/state/${e.name}`)));
    }
    await Deno.remove(dir, { recursive: true });
    for (const secret of [API_KEY, FILE_TOKEN, FILE_TOKEN_2, SYSTEMD]) {
      for (const text of written) {
        assert(!text.includes(secret), `a secret value leaked into sluice's output`);
      }
    }
  }
});

Deno.test("sluice explain recognises derived placeholders from the state directory", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const policy = `${dir}/p.yaml`;
    await Deno.writeTextFile(
      policy,
      "version: 1\nnetwork:\n  allow: [a.test, b.test]\ncredentials:\n  KEY:\n    from: env:KEY\n    hosts: [a.test]\n",
    );
    const ph = await placeholders(policy, `${dir}/state`);
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../../main.ts", import.meta.url).pathname,
        "explain",
        "-p",
        policy,
        "--state",
        `${dir}/state`,
        "https://b.test/",
        "-H",
        `X-Key: ${ph.KEY}`,
      ],
      stdout: "piped",
    }).output();
    assertEquals(out.code, 3);
    assertMatch(
      new TextDecoder().decode(out.stdout),
      /placeholder of credential KEY \(in header x-key\) may only be sent to a\.test, not b\.test/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

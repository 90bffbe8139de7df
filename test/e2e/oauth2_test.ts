/**
 * `kind: oauth2` credentials end to end, through `sluice serve`'s explicit proxy and real curl:
 * a token endpoint stand-in that counts grants, rotates refresh tokens and verifies RS256
 * service-account assertions with the public key; an API stand-in that accepts only the access
 * tokens the endpoint issued and echoes what it received. The workload holds placeholders only;
 * every byte it reads, and the audit log, is searched for every real value.
 */
import { generateKeyPairSync, verify } from "node:crypto";
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import {
  curl,
  IS_ROOT,
  placeholders,
  type Sluice,
  startSluice,
  startTlsUpstream,
  testCas,
} from "./_harness.ts";
import { output, sluiceRunCommand } from "./_run.ts";

const CLIENT_SECRET = "client-secret-7f3a9c1e55";
const FIRST_REFRESH = "refresh-token-0-c41d8e2b9a";
const SA_EMAIL = "ci-bot@sluice-test.iam.example";
const SCOPE = "https://www.googleapis.com/auth/cloud-platform";

/** The token endpoint stand-in's state: what it issued and accepts. */
class Issuer {
  refreshGrants = 0;
  jwtGrants = 0;
  /** Refresh tokens issued; only the newest is valid (rotation). */
  refreshTokens = [FIRST_REFRESH];
  accessTokens: string[] = [];
  saTokens: string[] = [];
  revoked = new Set<string>();
  lifetime = 2;
  rejected: string[] = [];
  constructor(readonly publicKey: string, readonly jwtUrl: () => string) {}

  valid(token: string, kind: "api" | "sa"): boolean {
    const list = kind === "api" ? this.accessTokens : this.saTokens;
    return list.includes(token) && !this.revoked.has(token);
  }

  async handle(req: Request): Promise<Response> {
    const url = new URL(req.url);
    const form = new URLSearchParams(await req.text());
    const json = (status: number, body: unknown) =>
      new Response(JSON.stringify(body), {
        status,
        headers: { "content-type": "application/json" },
      });
    if (url.pathname === "/fail") {
      // The description quotes what it was sent, as careless servers do: sluice must not relay it.
      return json(400, {
        error: "invalid_grant",
        error_description: `refresh token ${form.get("refresh_token")} is not valid`,
      });
    }
    if (url.pathname === "/token") {
      const auth = req.headers.get("authorization") ?? "";
      if (auth !== `Basic ${btoa(`sluice-test:${CLIENT_SECRET}`)}`) {
        this.rejected.push("client authentication");
        return json(401, { error: "invalid_client" });
      }
      const newest = this.refreshTokens[this.refreshTokens.length - 1];
      if (form.get("grant_type") !== "refresh_token" || form.get("refresh_token") !== newest) {
        this.rejected.push("refresh token");
        return json(400, { error: "invalid_grant" });
      }
      this.refreshGrants++;
      // Slow enough that every request waiting for a token is waiting on this one.
      await new Promise((r) => setTimeout(r, 300));
      const token = `api-access-${this.refreshGrants}-${crypto.randomUUID()}`;
      const rotated = `refresh-token-${this.refreshGrants}-${crypto.randomUUID()}`;
      this.accessTokens.push(token);
      this.refreshTokens.push(rotated);
      return json(200, {
        access_token: token,
        token_type: "Bearer",
        expires_in: this.lifetime,
        refresh_token: rotated,
      });
    }
    if (url.pathname === "/jwt") {
      const assertion = form.get("assertion") ?? "";
      const [h, c, sig] = assertion.split(".");
      const b64 = (s: string) =>
        Uint8Array.from(atob(s.replaceAll("-", "+").replaceAll("_", "/")), (x) => x.charCodeAt(0));
      const ok = form.get("grant_type") === "urn:ietf:params:oauth:grant-type:jwt-bearer" &&
        h && c && sig &&
        verify("sha256", new TextEncoder().encode(`${h}.${c}`), this.publicKey, b64(sig));
      const claims = ok ? JSON.parse(new TextDecoder().decode(b64(c))) : {};
      const now = Date.now() / 1000;
      if (
        !ok || claims.iss !== SA_EMAIL || claims.aud !== this.jwtUrl() || claims.scope !== SCOPE ||
        !(claims.iat <= now + 5 && claims.exp > now)
      ) {
        this.rejected.push("assertion");
        return json(400, { error: "invalid_grant" });
      }
      this.jwtGrants++;
      const token = `sa-access-${this.jwtGrants}-${crypto.randomUUID()}`;
      this.saTokens.push(token);
      return json(200, { access_token: token, token_type: "Bearer", expires_in: 3600 });
    }
    return new Response("not found", { status: 404 });
  }

  /** Every real value: material and every token issued. */
  secrets(): string[] {
    return [CLIENT_SECRET, ...this.refreshTokens, ...this.accessTokens, ...this.saTokens];
  }
}

Deno.test("oauth2: sluice mints, caches, shares, renews and scrubs access tokens; the workload holds placeholders", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-oauth2-" });
  const cas = await testCas(dir);
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const pem = privateKey.export({ type: "pkcs8", format: "pem" }) as string;
  await Deno.writeTextFile(
    `${dir}/sa.json`,
    JSON.stringify({ type: "service_account", client_email: SA_EMAIL, private_key: pem }),
  );
  await Deno.writeTextFile(`${dir}/refresh`, `${FIRST_REFRESH}\n`);
  let tokenPort = 0;
  const issuer = new Issuer(
    publicKey.export({ type: "spki", format: "pem" }) as string,
    () => `https://token.test:${tokenPort}/jwt`,
  );
  const tokenServer = startTlsUpstream(cas.trusted, 0, "127.0.0.1", (r) => issuer.handle(r));
  tokenPort = tokenServer.port;
  /** Everything the API received, to check it saw only real tokens. */
  const apiSaw: string[] = [];
  const api = startTlsUpstream(cas.trusted, 0, "127.0.0.1", (req) => {
    const auth = req.headers.get("authorization") ?? "";
    const sa = req.headers.get("x-sa-token") ?? "";
    apiSaw.push(`${auth}|${sa}`);
    const token = auth.replace(/^Bearer /, "");
    if (!issuer.valid(token, "api") || !issuer.valid(sa.replace(/^Bearer /, ""), "sa")) {
      return new Response("unauthorized\n", { status: 401 });
    }
    // Echoes what it received: sluice must put placeholders back before the workload reads it.
    return new Response(JSON.stringify({ auth, sa }) + "\n");
  });
  const policy = `${dir}/policy.yaml`;
  await Deno.writeTextFile(
    policy,
    `version: 1
network:
  allow:
    - "api.test:${api.port}"
    - "token.test:${tokenPort}"
    - "127.0.0.1:${api.port}"
    - "127.0.0.1:${tokenPort}"
credentials:
  API_TOKEN:
    kind: oauth2
    token_url: https://token.test:${tokenPort}/token
    client_id: sluice-test
    client_secret: env:SLUICE_TEST_CLIENT_SECRET
    refresh_token: file:${dir}/refresh
    hosts: ["api.test:${api.port}"]
  SA_TOKEN:
    kind: oauth2
    token_url: https://token.test:${tokenPort}/jwt
    key: file:${dir}/sa.json
    scope: ${SCOPE}
    hosts: ["api.test:${api.port}"]
    inject: { header: X-SA-Token, value: "Bearer \${secret}" }
  BROKEN_TOKEN:
    kind: oauth2
    token_url: https://token.test:${tokenPort}/fail
    refresh_token: file:${dir}/refresh
    hosts: ["api.test:${api.port}"]
tls:
  upstream: { ca: [${cas.trustedPath}] }
`,
  );
  const sluiceArgs = [
    "--resolve",
    "api.test=127.0.0.1",
    "--resolve",
    "token.test=127.0.0.1",
    "--admin",
    "127.0.0.1:0",
  ];
  const sluice = await startSluice(policy, dir, sluiceArgs, undefined, {
    SLUICE_TEST_CLIENT_SECRET: CLIENT_SECRET,
  });
  let restarted: Sluice | undefined;
  const ph = await placeholders(policy, `${dir}/state`);
  const via = ["-x", `http://127.0.0.1:${sluice.proxyPort}`, "--cacert", sluice.caPath];
  const apiUrl = `https://api.test:${api.port}/echo`;
  const call = (auth = ph.API_TOKEN) =>
    curl([...via, "-H", `Authorization: Bearer ${auth}`, "-w", "%{http_code}\n", apiUrl]);
  /** Every byte the workload read. */
  const seen: string[] = [];
  try {
    await t.step(
      "the first request mints a token; the API gets it, the workload its placeholder",
      async () => {
        const r = await call();
        seen.push(r.text, r.stderr);
        assertEquals(r.code, 0, r.stderr);
        assertMatch(r.text, /\n200\n$/, sluice.stderr());
        const echoed = JSON.parse(r.text.split("\n")[0]);
        assertEquals(echoed.auth, `Bearer ${ph.API_TOKEN}`);
        assertEquals(echoed.sa, `Bearer ${ph.SA_TOKEN}`);
        assertEquals([issuer.refreshGrants, issuer.jwtGrants], [1, 1]);
        assertEquals(
          apiSaw.at(-1),
          `Bearer ${issuer.accessTokens[0]}|Bearer ${issuer.saTokens[0]}`,
        );
      },
    );

    await t.step("a cached token is reused", async () => {
      const r = await call();
      seen.push(r.text, r.stderr);
      assertMatch(r.text, /\n200\n$/);
      assertEquals(issuer.refreshGrants, 1);
    });

    await t.step(
      "50 concurrent requests with an expired token cause exactly one refresh",
      async () => {
        await new Promise((r) => setTimeout(r, issuer.lifetime * 1000 + 200));
        const urls = Array.from({ length: 50 }, (_, i) => `${apiUrl}?n=${i}`);
        const r = await curl([
          ...via,
          "-Z",
          "--parallel-immediate",
          "--parallel-max",
          "50",
          "-H",
          `Authorization: Bearer ${ph.API_TOKEN}`,
          "-w",
          "%{http_code}\n",
          ...urls,
        ]);
        seen.push(r.text, r.stderr);
        assertEquals(r.text.split("\n").filter((l) => l === "200").length, 50, r.text + r.stderr);
        assertEquals(issuer.refreshGrants, 2, "one refresh for all 50");
        // The rotated refresh token was the one used: the stand-in accepts only the newest.
        assertEquals(issuer.rejected, []);
      },
    );

    await t.step("a 401 from the API renews the token once and the request succeeds", async () => {
      issuer.revoked.add(issuer.accessTokens.at(-1)!);
      const before = issuer.refreshGrants;
      const r = await call();
      seen.push(r.text, r.stderr);
      assertMatch(r.text, /\n200\n$/, sluice.stderr());
      assertEquals(issuer.refreshGrants, before + 1);
    });

    await t.step(
      "a token endpoint that refuses: 502 naming the credential, never its words",
      async () => {
        const r = await curl([
          ...via,
          "-i",
          "-H",
          `Authorization: Bearer ${ph.BROKEN_TOKEN}`,
          apiUrl,
        ]);
        seen.push(r.text, r.stderr);
        assertMatch(r.text, /^HTTP\/[\d.]+ 502/m);
        assertMatch(r.text, /x-sluice-decision: [^\n]*code=credential-token/i);
        assertMatch(r.text, /BROKEN_TOKEN/);
        assertMatch(r.text, /400 \(invalid_grant\)/);
      },
    );

    await t.step("a placeholder headed to the token endpoint itself is refused", async () => {
      const r = await curl([
        ...via,
        "-i",
        "-H",
        `Authorization: Bearer ${ph.API_TOKEN}`,
        `https://token.test:${tokenPort}/token`,
      ]);
      seen.push(r.text, r.stderr);
      assertMatch(r.text, /^HTTP\/[\d.]+ 403/m);
      assertMatch(r.text, /credential-violation/);
    });

    await t.step("token requests are audited and counted; no record holds a value", async () => {
      const audit = await Deno.readTextFile(sluice.auditPath);
      const tokens = (await sluice.audit()).filter((r) => r.event === "token");
      // Every grant the endpoint made, one record each (a 401 renews every token the request
      // used: the API does not say which one it refused).
      assertEquals(
        tokens.filter((r) => r.code === "token-issued").length,
        issuer.refreshGrants + issuer.jwtGrants,
      );
      assert(tokens.some((r) => r.code === "credential-token" && r.status === 400));
      const metrics = await (await fetch(`http://127.0.0.1:${sluice.adminPort}/metrics`)).text();
      assertMatch(
        metrics,
        /sluice_oauth2_token_requests_total\{credential="API_TOKEN",result="ok"\} 3/,
      );
      for (const s of issuer.secrets()) {
        assert(!audit.includes(s), "a real value is in the audit log");
        assert(!sluice.stderr().includes(s), "a real value is in sluice's log");
      }
    });

    await t.step(
      "after a restart the rotated refresh token is used (the stand-in revoked the first)",
      async () => {
        await sluice.stop();
        const file = `${dir}/state/oauth2-refresh-tokens.json`;
        assertEquals((await Deno.stat(file)).mode! & 0o777, 0o600);
        restarted = await startSluice(policy, dir, sluiceArgs, undefined, {
          SLUICE_TEST_CLIENT_SECRET: CLIENT_SECRET,
        });
        const before = issuer.refreshGrants;
        const r = await curl([
          "-x",
          `http://127.0.0.1:${restarted.proxyPort}`,
          "--cacert",
          restarted.caPath,
          "-H",
          `Authorization: Bearer ${ph.API_TOKEN}`,
          "-w",
          "%{http_code}\n",
          apiUrl,
        ]);
        seen.push(r.text, r.stderr);
        assertMatch(r.text, /\n200\n$/, restarted.stderr());
        assertEquals(issuer.refreshGrants, before + 1);
        assertEquals(issuer.rejected, [], "the stand-in refused a refresh token");
      },
    );

    await t.step(
      "the workload read no real value; the API saw no placeholder and no material",
      () => {
        const all = seen.join("\n");
        for (const s of issuer.secrets()) {
          assert(!all.includes(s), "the workload read a real value");
        }
        for (const saw of apiSaw) {
          for (const p of Object.values(ph)) {
            assert(!saw.includes(p), "a placeholder reached the API");
          }
          assert(!saw.includes(CLIENT_SECRET) && !saw.includes("refresh-token"));
        }
      },
    );
  } finally {
    await sluice.stop();
    await restarted?.stop();
    await tokenServer.close();
    await api.close();
  }
});

Deno.test({
  name: "oauth2 under sluice run: the command holds the placeholder, never the refresh material",
  ignore: !IS_ROOT,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "sluice-oauth2-run-" });
    const cas = await testCas(dir);
    const issuer = new Issuer("", () => "");
    await Deno.writeTextFile(`${dir}/refresh`, `${FIRST_REFRESH}\n`);
    const tokenServer = startTlsUpstream(cas.trusted, 0, "127.0.0.1", (r) => issuer.handle(r));
    // The API on 127.0.0.7:443, where sluice connects for the name (other tests use 127.0.0.1-6).
    const api = startTlsUpstream(cas.trusted, 443, "127.0.0.7", (req) => {
      const token = (req.headers.get("authorization") ?? "").replace(/^Bearer /, "");
      return issuer.valid(token, "api")
        ? new Response(`ok ${req.headers.get("authorization")}\n`)
        : new Response("unauthorized\n", { status: 401 });
    });
    const policy = `${dir}/policy.yaml`;
    await Deno.writeTextFile(
      policy,
      `version: 1
network:
  allow: [api.test, "127.0.0.7:443", "token.test:${tokenServer.port}", "127.0.0.1:${tokenServer.port}"]
credentials:
  API_TOKEN:
    kind: oauth2
    token_url: https://token.test:${tokenServer.port}/token
    client_id: sluice-test
    client_secret: env:SLUICE_TEST_CLIENT_SECRET
    refresh_token: file:${dir}/refresh
    hosts: [api.test]
tls:
  upstream: { ca: [${cas.trustedPath}] }
`,
    );
    try {
      const r = await output(
        sluiceRunCommand(
          {
            policy,
            dir,
            args: ["--resolve", "api.test=127.0.0.7", "--resolve", "token.test=127.0.0.1"],
            env: { SLUICE_TEST_CLIENT_SECRET: CLIENT_SECRET },
          },
          // A documentation address for the name: every TCP 443 leaving the namespace goes to
          // sluice, which connects where its own --resolve says.
          'curl -sS --resolve api.test:443:192.0.2.10 -H "Authorization: Bearer $API_TOKEN" ' +
            "https://api.test/; echo placeholder=$API_TOKEN; env; cat " + `${dir}/refresh 2>&1`,
        ),
      );
      assertEquals(r.code, 0, r.stderr);
      const ph = /^placeholder=(\S+)$/m.exec(r.stdout)?.[1] ?? "";
      assertMatch(ph, /^sluice-api-token-/);
      // The API got the real token; the command read it back as the placeholder.
      assertMatch(r.stdout, new RegExp(`^ok Bearer ${ph}$`, "m"), r.stdout + r.stderr);
      assertEquals(issuer.refreshGrants, 1);
      for (const v of issuer.secrets()) {
        assert(!r.stdout.includes(v), "the command read a real value (env, file or response)");
      }
      assertMatch(r.stderr, /withheld from the command.*SLUICE_TEST_CLIENT_SECRET/);
    } finally {
      await tokenServer.close();
      await api.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/**
 * Upstream trust: which PEM roots each upstream connection passes, and the process-wide switch
 * that makes the host's store Deno's default one (tested in child processes, because Deno
 * builds its store once per process, at the first TLS connection).
 */
import { assert, assertEquals } from "../../_assert.ts";
import { loadPolicyText } from "../../../policy/mod.ts";
import { loadTrust } from "../../../lib/upstream/trust.ts";
import { ephemeralCa, mintLeaf } from "../../../lib/tls/ca.ts";
import { listenTlsWithResolver, serveHttpOnListener } from "../../../lib/tls/deno_internal.ts";

const ROOT = new URL("../../../", import.meta.url).pathname;

function pick(...names: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const n of names) {
    const v = Deno.env.get(n);
    if (v !== undefined) out[n] = v;
  }
  return out;
}

async function files() {
  const dir = await Deno.makeTempDir({ prefix: "sluice-trust-" });
  const pem = (n: number) => `-----BEGIN CERTIFICATE-----\nTEST${n}\n-----END CERTIFICATE-----\n`;
  await Deno.writeTextFile(`${dir}/bundle.pem`, pem(0));
  await Deno.writeTextFile(`${dir}/extra.pem`, pem(1));
  await Deno.writeTextFile(`${dir}/corp.pem`, pem(2));
  const { compiled } = loadPolicyText(
    `version: 1
network:
  allow: ["*.test"]
tls:
  upstream:
    ca: [${dir}/extra.pem]
    hosts:
      - { match: "*.corp.test", ca: [${dir}/corp.pem] }
      - { match: dev.test, verify: false }
`,
    "p.yaml",
  );
  return { dir, compiled, pem };
}

Deno.test("loadTrust() passes only the policy's CAs when the system roots are in the default store", async () => {
  const { dir, compiled, pem } = await files();
  try {
    const trust = await loadTrust(compiled, {
      systemBundles: [`${dir}/bundle.pem`],
      systemInDefaultStore: true,
    });
    assertEquals(trust.forHost("a.test"), { verify: true, caCerts: [pem(1)] });
    assertEquals(trust.forHost("x.corp.test"), { verify: true, caCerts: [pem(1), pem(2)] });
    assertEquals(trust.forHost("dev.test").verify, false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadTrust() passes the system bundle first when it is not in the default store", async () => {
  const { dir, compiled, pem } = await files();
  try {
    const trust = await loadTrust(compiled, {
      systemBundles: ["/nonexistent", `${dir}/bundle.pem`],
    });
    assertEquals(trust.forHost("a.test"), { verify: true, caCerts: [pem(0), pem(1)] });
    assertEquals(trust.forHost("x.corp.test").caCerts, [pem(0), pem(1), pem(2)]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * A TLS server whose leaf comes from a fresh CA written to SSL_CERT_FILE, and a child Deno that
 * connects to it without caCerts: it verifies only if the host's store is the default one.
 */
Deno.test("useSystemRootsByDefault() makes the host's store verify upstreams without caCerts", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "sluice-trust-" });
  const ca = await ephemeralCa();
  await Deno.writeTextFile(`${dir}/host-store.pem`, ca.certPem);
  const listener = listenTlsWithResolver({
    hostname: "127.0.0.1",
    port: 0,
    resolver: async (name) => {
      const leaf = await mintLeaf(ca, name || "localhost");
      return { cert: leaf.certPem, key: leaf.keyPem };
    },
  });
  const served = serveHttpOnListener(listener, () => new Response("ok"), () => new Response("x"));
  await Deno.writeTextFile(
    `${dir}/child.ts`,
    `import { useSystemRootsByDefault, withoutOwnTrustSetting } from "${ROOT}lib/upstream/trust.ts";
const switched = Deno.args[0] === "switch" ? useSystemRootsByDefault() : null;
const childSees = withoutOwnTrustSetting(Deno.env.toObject()).DENO_TLS_CA_STORE ?? null;
try {
  const c = await Deno.connectTls({ hostname: "localhost", port: ${listener.addr.port} });
  await c.handshake();
  c.close();
  console.log(JSON.stringify({ switched, verified: true, store: Deno.env.get("DENO_TLS_CA_STORE"), childSees }));
} catch (e) {
  console.log(JSON.stringify({ switched, verified: false, error: String(e), childSees }));
}
`,
  );
  const child = async (arg: string, env: Record<string, string> = {}) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--config", `${ROOT}deno.json`, `${dir}/child.ts`, arg],
      // Only what Deno needs to find its cache: no DENO_TLS_CA_STORE from the parent.
      env: {
        SSL_CERT_FILE: `${dir}/host-store.pem`,
        ...pick("HOME", "DENO_DIR", "PATH", "XDG_CACHE_HOME"),
        ...env,
      },
      clearEnv: true,
      cwd: ROOT,
    }).output();
    const text = new TextDecoder().decode(out.stdout).trim();
    assert(out.success && text, new TextDecoder().decode(out.stderr));
    return JSON.parse(text);
  };
  try {
    await t.step("without it, Deno's bundled roots refuse the host's CA", async () => {
      const r = await child("none");
      assertEquals(r.verified, false);
      assert(/UnknownIssuer/.test(r.error), r.error);
    });
    await t.step("with it, the host's store verifies", async () => {
      // ...and a program sluice starts does not inherit sluice's own choice.
      assertEquals(await child("switch"), {
        switched: true,
        verified: true,
        store: "system",
        childSees: null,
      });
    });
    await t.step("a store the user chose is kept", async () => {
      const r = await child("switch", { DENO_TLS_CA_STORE: "mozilla" });
      assertEquals([r.switched, r.verified, r.childSees], [false, false, "mozilla"]);
    });
  } finally {
    await served.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

import { assert, assertEquals } from "../../_assert.ts";
import {
  BASE_VARIABLES,
  buildChildEnv,
  caVariables,
  type ChildEnvInputs,
  childPlaceholders,
} from "../../../lib/run/env.ts";
import { loadPolicyText } from "../../../policy/mod.ts";
import { secretForms } from "../../_leak_oracle.ts";

const SECRET = "s3cr3t-value-0123456789";
const b64 = (s: string) => btoa(s);

function inputs(over: Partial<ChildEnvInputs>): ChildEnvInputs {
  return {
    base: {},
    sourceVariables: ["CI_API_TOKEN"],
    secretValues: [SECRET],
    placeholders: new Map([["API_TOKEN", "sluice-api-token-x"]]),
    ca: caVariables({ bundle: "/run/b.pem" }),
    ...over,
  };
}

// Each case: a variable in sluice's environment, and whether the command may see it.
const cases: [string, Record<string, string>, Partial<ChildEnvInputs>, Record<string, boolean>][] =
  [
    ["an ordinary variable passes", { PATH: "/bin", CI: "true" }, {}, { PATH: true, CI: true }],
    ["the source variable is withheld whatever its name", { CI_API_TOKEN: SECRET }, {}, {
      CI_API_TOKEN: false,
    }],
    [
      "the source variable is withheld even when its value is not the secret",
      {
        CI_API_TOKEN: "something-else-entirely",
      },
      {},
      { CI_API_TOKEN: false },
    ],
    ["another variable holding the raw secret", { COPY: SECRET }, {}, { COPY: false }],
    ["the secret inside a longer value", { AUTH: `Bearer ${SECRET}` }, {}, { AUTH: false }],
    [
      "the secret in a URL, percent-encoded",
      {
        URL: `https://x/?t=${encodeURIComponent(SECRET + "/+")}`,
      },
      { secretValues: [SECRET + "/+"] },
      { URL: false },
    ],
    ["the secret base64-encoded", { B: b64(SECRET) }, {}, { B: false }],
    [
      "the secret inside a Basic user:secret pair, at every alignment",
      {
        B0: `Basic ${b64(`u:${SECRET}`)}`,
        B1: `Basic ${b64(`us:${SECRET}`)}`,
        B2: `Basic ${b64(`use:${SECRET}`)}`,
      },
      {},
      { B0: false, B1: false, B2: false },
    ],
    [
      "the secret base64url-encoded",
      {
        U: b64(`?>${SECRET}??`).replaceAll("+", "-").replaceAll("/", "_"),
      },
      {},
      { U: false },
    ],
    [
      "sluice's systemd variables are not the command's",
      {
        NOTIFY_SOCKET: "/run/systemd/notify",
        CREDENTIALS_DIRECTORY: "/run/credentials/x",
      },
      {},
      { NOTIFY_SOCKET: false, CREDENTIALS_DIRECTORY: false },
    ],
    ["a trust setting sluice made for itself is dropped", { DENO_TLS_CA_STORE: "system" }, {
      ownSettings: ["DENO_TLS_CA_STORE"],
    }, { DENO_TLS_CA_STORE: false }],
    ["--clear-env keeps only the base variables", { PATH: "/bin", CI: "true", HOME: "/h" }, {
      clear: true,
    }, { PATH: true, HOME: true, CI: false }],
    ["--clear-env with --pass-env keeps that one", { CI: "true", OTHER: "x" }, {
      clear: true,
      pass: ["CI"],
    }, { CI: true, OTHER: false }],
    ["--pass-env never passes a secret", { CI_API_TOKEN: SECRET }, {
      clear: true,
      pass: ["CI_API_TOKEN"],
    }, { CI_API_TOKEN: false }],
  ];

for (const [name, base, over, expect] of cases) {
  Deno.test(`buildChildEnv(): ${name}`, () => {
    const { env, withheld } = buildChildEnv(inputs({ ...over, base }));
    for (const [k, visible] of Object.entries(expect)) {
      assertEquals(k in env, visible, `${k} ${visible ? "should" : "should not"} be there`);
      if (visible) assertEquals(env[k], base[k]);
    }
    for (const v of Object.values(env)) assert(!v.includes(SECRET), "a secret value got through");
    // withheld names variables, never values
    for (const w of withheld) assert(!w.includes(SECRET));
  });
}

Deno.test("buildChildEnv() sets placeholders, CA variables, and proxy variables only for --weak", () => {
  const strong = buildChildEnv(inputs({ base: { NO_PROXY: "x", HTTPS_PROXY: "http://up" } })).env;
  assertEquals(strong.API_TOKEN, "sluice-api-token-x");
  for (const v of ["SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "NPM_CONFIG_CAFILE", "PIP_CERT"]) {
    assertEquals(strong[v], "/run/b.pem", v);
  }
  assertEquals(strong.HTTPS_PROXY, "http://up", "enforced runs keep the user's proxy variables");
  const weak = buildChildEnv(inputs({ base: { NO_PROXY: "x" }, proxy: "http://127.0.0.1:9" })).env;
  assertEquals([weak.HTTPS_PROXY, weak.http_proxy, weak.NO_PROXY], [
    "http://127.0.0.1:9",
    "http://127.0.0.1:9",
    undefined,
  ]);
});

Deno.test("buildChildEnv() lets a placeholder replace a variable of the same name", () => {
  const { env, withheld } = buildChildEnv(
    inputs({ base: { API_TOKEN: SECRET }, sourceVariables: ["API_TOKEN"] }),
  );
  assertEquals(env.API_TOKEN, "sluice-api-token-x");
  assertEquals(withheld, ["API_TOKEN"]);
});

Deno.test("caVariables() covers the common ecosystems and puts Java's options last", () => {
  const v = caVariables(
    {
      bundle: "/b",
      certDir: "/d",
      javaTrustStore: { path: "/j", password: "changeit", type: "JKS" },
    },
    "-Xmx1g -Djavax.net.ssl.trustStore=/theirs",
  );
  for (
    const name of [
      "SSL_CERT_FILE",
      "REQUESTS_CA_BUNDLE",
      "CURL_CA_BUNDLE",
      "NODE_EXTRA_CA_CERTS",
      "NPM_CONFIG_CAFILE",
      "GIT_SSL_CAINFO",
      "DENO_CERT",
      "AWS_CA_BUNDLE",
      "PIP_CERT",
      "CARGO_HTTP_CAINFO",
    ]
  ) assertEquals(v[name], "/b", name);
  assertEquals(v.SSL_CERT_DIR, "/d");
  assertEquals(
    v.JAVA_TOOL_OPTIONS,
    "-Xmx1g -Djavax.net.ssl.trustStore=/theirs -Djavax.net.ssl.trustStore=/j " +
      "-Djavax.net.ssl.trustStoreType=JKS -Djavax.net.ssl.trustStorePassword=changeit",
  );
});

Deno.test("secretForms() (the tests' leak oracle) finds a secret in base64 text at any offset, and only stable parts", () => {
  const forms = secretForms([SECRET]);
  for (let pre = 0; pre < 6; pre++) {
    const text = b64("x".repeat(pre) + SECRET + "tail");
    assert(forms.some((f) => text.includes(f)), `offset ${pre}`);
  }
  assert(!forms.some((f) => b64("nothing to see here, really").includes(f)));
  assert(BASE_VARIABLES.includes("PATH"));
});

Deno.test("childPlaceholders(): the first aws_sigv4 credential's keys in AWS_*, others by name", () => {
  const { compiled } = loadPolicyText(
    "version: 1\nnetwork:\n  allow: [a.test]\ncredentials:\n" +
      "  TOKEN:\n    from: env:T\n    hosts: [a.test]\n" +
      "  AWS:\n    kind: aws_sigv4\n    access_key_id: env:K\n    secret_access_key: env:S\n" +
      "    session_token: env:X\n    hosts: [a.test]\n" +
      "  AWS2:\n    kind: aws_sigv4\n    access_key_id: env:K2\n    secret_access_key: env:S2\n" +
      "    hosts: [a.test]\n",
    "p.yaml",
  );
  const got = childPlaceholders(
    compiled.policy,
    new Map([
      ["TOKEN", "ph-token"],
      ["AWS", "AKIAPH"],
      ["AWS#secret_access_key", "ph-secret"],
      ["AWS#session_token", "ph-session"],
      ["AWS2", "AKIAPH2"],
      ["AWS2#secret_access_key", "ph-secret-2"],
    ]),
  );
  assertEquals(
    Object.fromEntries(got),
    {
      TOKEN: "ph-token",
      AWS_ACCESS_KEY_ID: "AKIAPH",
      AWS_SECRET_ACCESS_KEY: "ph-secret",
      AWS_SESSION_TOKEN: "ph-session",
      AWS2: "AKIAPH2",
    },
  );
});

/**
 * The real CLI, run as a subprocess: `check` on every example and on broken
 * policies, `explain` verdicts and exit codes, `--help` and `--version`.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../_assert.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

async function sluice(
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-env", `${ROOT}main.ts`, ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

const examples = [...Deno.readDirSync(`${ROOT}examples`)]
  .filter((e) => e.name.endsWith(".yaml") || e.name.endsWith(".json"))
  .map((e) => `examples/${e.name}`)
  .sort();

Deno.test("examples/ holds at least the three documented policies", () => {
  for (
    const f of [
      "examples/ci-npm-publish.yaml",
      "examples/ai-agent.yaml",
      "examples/host-users.yaml",
    ]
  ) {
    assert(examples.includes(f), `${f} is missing`);
  }
});

for (const file of examples) {
  Deno.test(`sluice check passes on ${file}`, async () => {
    const r = await sluice("check", file);
    assertEquals(r.code, 0, r.stderr);
    assertStringIncludes(r.stdout, `${file}: valid`);
  });
}

Deno.test("sluice check passes on the POLICY-v1 contract's example", async () => {
  // The contract lives in ../shared in CI and development; its example must keep working.
  const md = await Deno.readTextFile(`${ROOT}../shared/POLICY-v1.md`).catch(() => undefined);
  const text = md?.match(/```yaml\n([\s\S]*?)```/)?.[1] ??
    (await Deno.readTextFile(`${ROOT}examples/reference.yaml`));
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/policy-v1.yaml`, text);
    const r = await sluice("check", `${dir}/policy-v1.yaml`);
    assertEquals(r.code, 0, r.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sluice check exits 1 and lists every error as file:line:col", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/bad.yaml`;
    await Deno.writeTextFile(
      file,
      "version: 1\nnetwork:\n  allow:\n    - a.*.com\n    - b.com:0\n",
    );
    const r = await sluice("check", file);
    assertEquals(r.code, 1);
    assertMatch(r.stderr, new RegExp(`${file}:4:7: network\\.allow\\[0\\]: `));
    assertMatch(
      r.stderr,
      new RegExp(`${file}:5:7: network\\.allow\\[1\\]: port 0 is out of range`),
    );
    assertEquals(r.stdout, "");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sluice check names a missing file", async () => {
  const r = await sluice("check", "does-not-exist.yaml");
  assertEquals(r.code, 1);
  assertStringIncludes(r.stderr, "Cannot read policy does-not-exist.yaml: no such file");
});

/** [name, args, exit code, stdout pattern] */
const explains: [string, string[], number, RegExp][] = [
  [
    "allows an allowed host",
    ["https://api.openai.com/v1/models"],
    0,
    /^ALLOW  GET https:\/\/api\.openai\.com\/v1\/models\n  reason       GET api\.openai\.com:443\/v1\/models is allowed by rule "api\.openai\.com:443"\n  rule         api\.openai\.com:443  \(examples\/ai-agent\.yaml:9\)/,
  ],
  [
    "denies by default with the rule's line",
    ["https://evil.example.net/"],
    3,
    /^DENY  GET https:\/\/evil\.example\.net\/\n  reason       no allow rule matches evil\.example\.net:443, and the default is deny\n  rule         default: deny  \(examples\/ai-agent\.yaml:7\)/,
  ],
  [
    "denies a method an HTTP rule does not allow",
    ["POST", "https://docs.python.org/3/"],
    3,
    /^DENY  POST .*\n  reason       no allow rule matches POST docs\.python\.org:443\/3\//,
  ],
  [
    "allows a method an HTTP rule allows",
    ["HEAD", "https://docs.python.org/3/"],
    0,
    /rule         HEAD,GET docs\.python\.org:443|rule         GET,HEAD docs\.python\.org:443/,
  ],
  [
    "shows an injected credential, redacted",
    ["https://api.openai.com/v1/chat"],
    0,
    /credential   OPENAI_API_KEY: header Authorization set from the secret \(redacted\)/,
  ],
  [
    "denies a deny wildcard",
    ["https://db.internal.example.com/"],
    3,
    /rule         \*\.internal\.example\.com  \(examples\/ai-agent\.yaml:16\)/,
  ],
  [
    "denies a private IP literal after the rules",
    ["http://10.0.0.1/"],
    3,
    /reason       no allow rule matches GET 10\.0\.0\.1:80\//,
  ],
];
for (const [name, args, code, pattern] of explains) {
  Deno.test(`sluice explain ${name}`, async () => {
    const r = await sluice("explain", "--policy", "examples/ai-agent.yaml", ...args);
    assertEquals(r.code, code, r.stdout + r.stderr);
    assertMatch(r.stdout, pattern);
  });
}

Deno.test("sluice explain blocks a placeholder headed to the wrong host, without echoing it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/p.yaml`;
    await Deno.writeTextFile(
      file,
      "version: 1\nnetwork:\n  allow: [api.openai.com, api.github.com]\ncredentials:\n  KEY:\n" +
        "    from: env:KEY\n    hosts: [api.openai.com]\n    placeholder: sk-sluice-placeholder-1\n",
    );
    const bad = await sluice(
      "explain",
      "-p",
      file,
      "https://api.github.com/x",
      "-H",
      "Authorization: Bearer sk-sluice-placeholder-1",
    );
    assertEquals(bad.code, 3);
    assertMatch(
      bad.stdout,
      /placeholder of credential KEY \(in header authorization\) may only be sent to api\.openai\.com, not api\.github\.com/,
    );
    const good = await sluice(
      "explain",
      "-p",
      file,
      "https://api.openai.com/x?key=sk-sluice-placeholder-1",
    );
    assertEquals(good.code, 0);
    assertMatch(good.stdout, /KEY: placeholder replaced by the real value \(redacted\) in query/);
    const json = await sluice(
      "explain",
      "-p",
      file,
      "--json",
      "https://api.github.com/x",
      "-H",
      "X-Key: sk-sluice-placeholder-1",
    );
    assertEquals(JSON.parse(json.stdout).credentials.violations[0].name, "KEY");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sluice explain --json is machine-readable", async () => {
  const r = await sluice(
    "explain",
    "-p",
    "examples/ai-agent.yaml",
    "--json",
    "https://evil.example.net/",
  );
  assertEquals(r.code, 3);
  const e = JSON.parse(r.stdout);
  assertEquals([e.verdict, e.decidedBy, e.connection.rule.at], [
    "deny",
    "connection",
    "examples/ai-agent.yaml:7",
  ]);
});

for (const cmd of ["check", "explain"]) {
  Deno.test(`sluice ${cmd} --help shows an example`, async () => {
    const r = await sluice(cmd, "--help");
    assertEquals(r.code, 0);
    assertMatch(r.stdout, /Example:\n  sluice /);
  });
}

Deno.test("sluice --version prints the version", async () => {
  const r = await sluice("--version");
  assertEquals(r.code, 0);
  assertMatch(r.stdout, /^sluice \d+\.\d+\.\d+ \(deno 2\.9\.6\)/);
});

Deno.test("sluice with an unknown command exits 2 with help", async () => {
  const r = await sluice("frobnicate");
  assertEquals(r.code, 2);
  assertStringIncludes(r.stderr, "unknown command");
});

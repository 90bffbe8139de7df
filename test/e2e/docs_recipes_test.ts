/**
 * Every fenced block of README.md and docs/*.md, and every `run:` step of the GitHub Actions
 * workflow in docs/ci.md, runs here, adapted to a local upstream, so a recipe that breaks
 * breaks CI (issue 11).
 *
 * TABLE below has one entry per block, keyed by the file and the block's first command line.
 * It says how the block is adapted to this machine (no internet: a stand-in npm registry on
 * 127.0.0.2:443 with its own openssl CA, `--resolve` to reach it, a `sluice` on PATH that runs
 * this tree, a `sudo` that keeps only the environment real sudo keeps), or that the block is an
 * output or configuration sample and what it is compared with, or, rarely, why it cannot run.
 * A block without an entry fails the first test, so a new recipe cannot go untested.
 *
 * SLUICE_DOCS_ROOT=/path/to/a/copy/ reads README.md and docs/ from there instead (used to check
 * that this test fails when a documented command breaks).
 */
import { parse as parseYaml, parseDocument } from "yaml";
import { assert, assertEquals, assertMatch } from "../_assert.ts";
import { IS_ROOT, ROOT, startTlsUpstream, testCas } from "./_harness.ts";
import { type Block, extractBlocks } from "./_recipes/extract.ts";
import { type Registry, startRegistry, tarballText } from "./_recipes/registry.ts";
import { type Ran, runScript, type ScriptOptions, startScript } from "./_recipes/sh.ts";
import { type Accounts, type Shims, writeAccounts, writeShims } from "./_recipes/shims.ts";
import { opensslClientCert, opensslPki } from "../_pki.ts";
import { mtlsServer } from "./_mtls.ts";
import {
  available as s3Available,
  AWS,
  KEY_ID,
  SECRET as AWS_SECRET,
  startStandin,
} from "./_s3.ts";

const DOCS_ROOT = Deno.env.get("SLUICE_DOCS_ROOT") ?? ROOT;

/** The runner's npm token: real-looking, and never to be seen outside sluice and the registry. */
const SECRET = "npm_Q3vX9kLp2Rt7Wm4Yc8Hn1Bz6Df0Gs5Jk2Ea";
/** Where the stand-in registry listens (127.0.0.1:443 is run_test.ts's). */
const REGISTRY = "127.0.0.2";
/** What npm inside the namespace resolves registry.npmjs.org to (see shims.ts, DNS_PIN). */
const PIN = "192.0.2.10";
/** docs/ci.md's AWS recipe, and where its S3 stand-in listens (other tests use 127.0.0.1-5). */
const AWS_RECIPE =
  "docs/ci.md: sudo --preserve-env=CI_AWS_ACCESS_KEY_ID,CI_AWS_SECRET_ACCESS_KEY sluice run --policy ci-aws.yaml -- aws s3 cp dist/app.tar.gz s3://ci-artifacts/";
const S3_AT = "127.0.0.6";
/** The user the CI runner runs as ("$USER" in the recipes), as on GitHub's runners. */
const RUNNER_USER = "runner";

// ---------------------------------------------------------------------------------------------
// The table. {NAME} in a rewrite or env value is filled in at run time:
//   {STATE} a temp state directory (so nothing is written to /var/lib/sluice),
//   {POLICY} the adapted policy, {RUNNER_BIN} the directory standing in for /usr/local/bin,
//   {RELEASE} the sluice stand-in "release binary".
// A rewrite replaces the first occurrence of its left side, which must be there.

/** How one block is covered. */
type Entry =
  | { run: string; rewrite?: [string, string][]; env?: Record<string, string> }
  | { sample: string }
  | { config: string }
  | { notRun: string };

/** sluice resolves the registry's name to the stand-in, and keeps its state in a temp dir. */
const SLUICE_RUN_FLAGS: [string, string] = [
  "sluice run ",
  `sluice run --resolve registry.npmjs.org=${REGISTRY} --state {STATE} `,
];

const TABLE: Record<string, Entry> = {
  "README.md: npx -y deno@2.9.6 task start": {
    run: "`npx` stand-in runs the local deno (it must be the version named); appended " +
      "`--policy` (examples/quickstart.yaml + `127.0.0.2:443` in network.allow + the stand-in's " +
      "CA in tls.upstream.ca) and `--resolve registry.npmjs.org=127.0.0.2`; SLUICE_STATE_DIR=" +
      "$HOME/.local/state/sluice (as root sluice would write /var/lib/sluice); stopped with " +
      "SIGINT to its process group, as Ctrl-C does",
    rewrite: [[
      "task start",
      `task start --policy {POLICY} --resolve registry.npmjs.org=${REGISTRY}`,
    ]],
  },
  "README.md: HTTPS_PROXY=http://127.0.0.1:3128 curl --cacert ~/.local/state/sluice/ca.crt https://registry.npmjs.org/":
    { run: "verbatim, against the proxy the block above started" },
  "README.md: npx -y deno@2.9.6 task test": {
    notRun: "it is the whole suite, this file included: CI's own command",
  },
  "README.md: deno run -A main.ts explain --policy examples/ai-agent.yaml https://evil.example.net/":
    { run: "verbatim in the repository; its output is compared line by line, exit 3" },
  "README.md: sluice explain --policy policy.yaml POST https://api.github.com/repos/acme/x": {
    run: "verbatim, where policy.yaml is examples/ci-npm-publish.yaml; exit 3",
  },
  "docs/audit.md: {": {
    sample: "its fields are all in the Fields table; its reason is the one `sluice explain` " +
      "gives for that request; real records (the npm recipes' audit files) use only documented fields",
  },
  "docs/audit.md: jq -c 'select(.verdict == \"deny\") | {host, method, path, code, rule, rule_at}' audit.jsonl":
    {
      run: "verbatim, where audit.jsonl is the audit the README's proxy wrote (it denied " +
        "example.com) and policy.yaml is examples/ci-npm-publish.yaml",
    },
  "docs/ci.md: # examples/ci-npm-publish.yaml (excerpt)": {
    config: "every key and value is in examples/ci-npm-publish.yaml",
  },
  'docs/ci.md: sudo --preserve-env=NPM_TOKEN sluice run --policy ci.yaml --user "$USER" -- npm publish':
    {
      run: "in a package dir (.npmrc with the documented _authToken line) whose ci.yaml is " +
        "examples/ci-npm-publish.yaml + `127.0.0.2:443` in network.allow + the stand-in's CA in " +
        "tls.upstream.ca; `sudo` stand-in (keeps HOME, see the HOME step); USER=runner (an " +
        "account that exists only in the recipe's mount namespace, shims.ts); sluice " +
        "run gets --resolve and --state; npm resolves registry.npmjs.org to 192.0.2.10 " +
        "(NODE_OPTIONS preload, shims.ts); once more with the registry answering 403",
      rewrite: [SLUICE_RUN_FLAGS],
    },
  "docs/ci.md: sluice: command exited 0; 3 allowed, 1 denied, 0 credential violations": {
    sample: "the recipes' stderr must end with lines of this shape (numbers aside; the " +
      "packages' prepublishOnly pings telemetry.example.com, denied), the first with npm's status",
  },
  "docs/ci.md: jobs:": {
    run: "the publish job, step by step as Actions would (bash -eo pipefail, in the workspace): " +
      "checkout = the package dir; upload-artifact = its path must exist; ${{ secrets.NPM_TOKEN }} " +
      "and ${{ runner.temp }} are filled in",
  },
  "docs/ci.md: run: npm ci": {
    run: "verbatim (the package has no dependencies; the runner's npmrc has audit=false, " +
      "update-notifier=false, so nothing tries the network outside sluice)",
  },
  'docs/ci.md: run: curl -fsSLo "$RUNNER_TEMP/sluice" "$SLUICE_RELEASE_URL"': {
    run: "SLUICE_RELEASE_URL is a file:// URL of the sluice stand-in; /usr/local/bin is a temp " +
      "dir on PATH",
    rewrite: [["/usr/local/bin/sluice", "{RUNNER_BIN}/sluice"]],
    env: { SLUICE_RELEASE_URL: "file://{RELEASE}" },
  },
  'docs/ci.md: run: sudo --preserve-env=NPM_TOKEN sluice run --policy ci.yaml --audit-log "$RUNNER_TEMP/sluice-audit.jsonl" --user "$USER" -- npm publish':
    {
      run: "as the sh recipe; again with a 403 from the registry, with a global npmrc " +
        "`cafile=` naming another CA, and with sudo resetting HOME as real sudo does",
      rewrite: [SLUICE_RUN_FLAGS],
    },
  "docs/credentials.md: credentials:": {
    config: "every key and value is in examples/ci-npm-publish.yaml",
  },
  "docs/credentials.md: # a client certificate sluice presents (mTLS)": {
    config: "passes sluice check inside a policy that allows its host",
  },
  "docs/credentials.md: # access tokens sluice mints (OAuth2)": {
    config: "passes sluice check inside a policy that allows its hosts and token endpoints",
  },
  "docs/credentials.md: # AWS keys sluice re-signs with (SigV4)": {
    config: "passes sluice check inside a policy that allows its hosts",
  },
  "docs/ci.md: # ci-aws.yaml: the artifact upload step": {
    config: "passes sluice check as it is",
  },
  "docs/ci.md: # ci-deploy.yaml: a deploy step calling an API that wants OAuth2 access tokens": {
    config: "passes sluice check as it is, and runs the OAuth2 step under sluice run (the " +
      "stand-ins' addresses in network.allow, their CA in tls.upstream.ca)",
  },
  "docs/ci.md: # ci-mtls.yaml: a step calling an API that authenticates clients by certificate": {
    config: "passes sluice check as it is, and runs a step under sluice run against an " +
      "mTLS API (the stand-in's address in network.allow, a test certificate for the file)",
  },
  [AWS_RECIPE]: {
    run: "as root in a dir holding dist/app.tar.gz and ci-aws.yaml (the block above + the " +
      "stand-in's address in network.allow and its CA in tls.upstream.ca); sluice resolves " +
      "ci-artifacts.s3.us-east-1.amazonaws.com (where the CLI sends it) to an S3 stand-in (test/e2e/_s3_standin.py) that verifies " +
      "the signature with the real keys; the CLI (Debian's aws) is handed a documentation " +
      "address for the name, as npm is; region from AWS_CONFIG_FILE, kept by the sudo stand-in",
    rewrite: [[
      "sluice run ",
      `sluice run --resolve ci-artifacts.s3.us-east-1.amazonaws.com=${S3_AT} --state {STATE} `,
    ]],
  },
  "docs/enforcement.md: sudo --preserve-env=NPM_TOKEN sluice run --policy examples/ci-npm-publish.yaml --user ci -- npm publish":
    {
      run: "in a package dir whose examples/ci-npm-publish.yaml is adapted as ci.yaml above; " +
        "user ci exists like runner above; the caller has NPM_TOKEN, as in ci.md",
      rewrite: [SLUICE_RUN_FLAGS],
    },
  "docs/performance.md: sudo bench/peers.sh": {
    notRun: "installs squid and mitmproxy with apt-get and measures for 6 to 15 minutes",
  },
  "docs/policy.md: version: 1": { config: "`sluice check` accepts it" },
  "docs/policy.md: - host: uploads.example.com # a host, wildcard or IP; no port here": {
    config: "`sluice check` accepts it as network.allow",
  },
  "docs/policy.md: sluice check bad.yaml": {
    run: "verbatim; bad.yaml is written so that it has the two errors shown; output compared " +
      "line by line, exit 1",
  },
  "docs/systemd.md: ./compile.sh": {
    notRun: "installs onto this host and enables a systemd unit (compile_test.ts builds the " +
      "binary, packaging_test.ts stages install.sh with DESTDIR)",
  },
  "docs/systemd.md: # systemctl edit sluice": {
    config: "packaging/sluice.service carries the same line commented out, and the credential " +
      "name is the one the next block reads",
  },
  "docs/systemd.md: credentials:": {
    config: "`sluice check` accepts it with registry.npmjs.org allowed",
  },
  "docs/systemd.md: sudo systemctl reload sluice": {
    notRun: "needs the installed unit under a running systemd (service_test.ts covers reload " +
      "through SIGHUP and POST /reload)",
  },
};

/** Blocks that cannot run stay few: running is the rule. */
const MAX_NOT_RUN = 4;

// ---------------------------------------------------------------------------------------------

const blocks = await extractBlocks(DOCS_ROOT);
const byKey = new Map<string, Block>();
for (const b of blocks) {
  let key = b.key;
  for (let n = 2; byKey.has(key); n++) key = `${b.key} (${n})`;
  b.key = key;
  byKey.set(key, b);
}
const used = new Set<string>();

/** The block of a table entry; marks the entry exercised. */
function use(key: string): Block {
  const b = byKey.get(key);
  if (!b) throw new Error(`no block in the docs has the key ${JSON.stringify(key)}`);
  if (!TABLE[key]) throw new Error(`no TABLE entry for ${JSON.stringify(key)}`);
  used.add(key);
  return b;
}

/** The block's text after the entry's rewrites, with {NAME}s filled from `vars`. */
function adapted(key: string, vars: Record<string, string> = {}): string {
  const b = use(key);
  const e = TABLE[key];
  // A console block runs its `$ ` lines; the rest is its output.
  let text = b.lang === "console"
    ? b.text.split("\n").filter((l) => l.startsWith("$ ")).map((l) => l.slice(2)).join("\n")
    : b.text;
  for (const [from, to] of "rewrite" in e ? e.rewrite ?? [] : []) {
    assert(
      text.includes(from),
      `the adaptation of ${key} no longer applies (${
        JSON.stringify(from)
      } is not in the block); update TABLE`,
    );
    text = text.replace(from, fill(to, vars));
  }
  return text;
}

function fill(s: string, vars: Record<string, string>): string {
  return s.replace(/\{([A-Z_]+)\}/g, (m, name: string) => {
    if (!(name in vars)) throw new Error(`no value for ${m} in ${s}`);
    return vars[name];
  });
}

function entryEnv(key: string, vars: Record<string, string>): Record<string, string> {
  const e = TABLE[key];
  const env = "env" in e ? e.env ?? {} : {};
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, fill(v, vars)]));
}

function show(r: Ran): string {
  return `exit ${r.code}${
    r.timedOut ? " (timed out)" : ""
  }\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
}

function lines(s: string): string[] {
  return s.replace(/\s+$/, "").split("\n").map((l) => l.trimEnd());
}

/** The output lines of a `console` block (everything after the `$ ` line). */
function consoleOutput(b: Block): string[] {
  const all = b.text.split("\n");
  return lines(all.slice(all.findIndex((l) => l.startsWith("$ ")) + 1).join("\n"));
}

/** Whether `part` is contained in `whole`: keys and values recursively, list items anywhere. */
function contained(part: unknown, whole: unknown): boolean {
  if (Array.isArray(part)) {
    return Array.isArray(whole) && part.every((p) => whole.some((w) => contained(p, w)));
  }
  if (part && typeof part === "object") {
    return !!whole && typeof whole === "object" && !Array.isArray(whole) &&
      Object.entries(part).every(([k, v]) => contained(v, (whole as Record<string, unknown>)[k]));
  }
  return part === whole;
}

/** A policy file with the stand-in reachable: its address allowed, its CA trusted upstream. */
function withStandIn(policyText: string, caPath: string): string {
  const doc = parseDocument(policyText);
  doc.addIn(["network", "allow"], `${REGISTRY}:443`);
  doc.setIn(["tls", "upstream", "ca"], doc.createNode([caPath]));
  return doc.toString();
}

/** The field names of the Fields table in docs/audit.md. */
async function auditFields(): Promise<Set<string>> {
  const text = await Deno.readTextFile(`${DOCS_ROOT}docs/audit.md`);
  return new Set([...text.matchAll(/^\| `([a-z_]+)` +\|/gm)].map((m) => m[1]));
}

async function tempDir(prefix: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix });
  await Deno.chmod(dir, 0o755); // the recipes drop to another user, who must reach into it
  return dir;
}

const SH = ["sh"];
const ACTIONS_BASH = ["bash", "--noprofile", "--norc", "-eo", "pipefail"];
const HOST_PATH = Deno.env.get("PATH") ?? "/usr/bin:/bin";

/**
 * How a root CI step runs here: in `cwd`, through the shims (`sudo`'s stand-in keeps only what
 * the step names, with `$dir/home` as root's home), plus the step's own variables (which may put
 * a directory before PATH).
 */
function rootStep(
  dir: string,
  shims: Shims,
  cwd: string,
  env: Record<string, string>,
  pathBefore = "",
): ScriptOptions {
  return {
    shell: SH,
    cwd,
    env: {
      PATH: `${pathBefore}${shims.installed}:${shims.bin}:${HOST_PATH}`,
      HOME: `${dir}/home`,
      LANG: "C.UTF-8",
      RCP_SUDO_HOME: `${dir}/home`,
      ...env,
    },
  };
}

// ---------------------------------------------------------------------------------------------

Deno.test("docs: every fenced block in README.md and docs/*.md has an entry in TABLE", () => {
  const missing = blocks.filter((b) => !TABLE[b.key]);
  assert(
    missing.length === 0,
    `${missing.length} documented block(s) have no entry in TABLE (test/e2e/docs_recipes_test.ts).\n` +
      "Add one per block, keyed as shown: say how it runs here adapted to a local upstream " +
      "(preferred), or which output/config sample it is and what it is compared with, or why " +
      "it cannot run:\n" +
      missing.map((b) =>
        `  ${b.file}:${b.line} (${b.lang || "no language"}): ${JSON.stringify(b.key)}`
      )
        .join("\n"),
  );
  const stale = Object.keys(TABLE).filter((k) => !byKey.has(k));
  assert(
    stale.length === 0,
    `TABLE has entries no block matches (a block was changed or removed; re-key or remove them):\n` +
      stale.map((k) => `  ${JSON.stringify(k)}`).join("\n"),
  );
  const notRun = Object.entries(TABLE).filter(([, e]) => "notRun" in e);
  assert(
    notRun.length <= MAX_NOT_RUN,
    `${notRun.length} blocks are marked as not runnable (at most ${MAX_NOT_RUN}); run them adapted instead:\n` +
      notRun.map(([k]) => `  ${k}`).join("\n"),
  );
  for (const [k] of notRun) used.add(k);
});

Deno.test("docs: explain and check commands, output and configuration samples", async (t) => {
  const dir = await tempDir("sluice-rcp-cli-");
  const shims = await writeShims(dir, ROOT);
  const env = {
    PATH: `${shims.installed}:${HOST_PATH}`,
    HOME: dir,
    LANG: "C.UTF-8",
    DENO_DIR: shims.denoDir,
    SLUICE_STATE_DIR: `${dir}/state`,
  };
  const opts = (cwd: string): ScriptOptions => ({ shell: SH, cwd, env, timeoutMs: 20_000 });
  const work = `${dir}/work`;
  await Deno.mkdir(work);
  await Deno.copyFile(`${ROOT}examples/ci-npm-publish.yaml`, `${work}/policy.yaml`);
  try {
    let explainReason = "";
    await t.step("README: explain, verbatim, prints the documented decision", async () => {
      const key =
        "README.md: deno run -A main.ts explain --policy examples/ai-agent.yaml https://evil.example.net/";
      const r = await runScript(adapted(key), opts(ROOT));
      assertEquals(r.code, 3, show(r));
      assertEquals(lines(r.stdout), consoleOutput(use(key)), show(r));
    });

    await t.step("README: explain of a POST the CI policy does not allow", async () => {
      const r = await runScript(
        adapted(
          "README.md: sluice explain --policy policy.yaml POST https://api.github.com/repos/acme/x",
        ),
        opts(work),
      );
      assertEquals(r.code, 3, show(r));
      assertEquals(lines(r.stdout)[0], "DENY  POST https://api.github.com/repos/acme/x", show(r));
      explainReason = /^ {2}reason +(.*)$/m.exec(r.stdout)?.[1] ?? "";
    });

    await t.step(
      "audit.md: the sample record's fields are documented, its reason is explain's",
      async () => {
        const sample = JSON.parse(use("docs/audit.md: {").text) as Record<string, unknown>;
        const fields = await auditFields();
        const undocumented = Object.keys(sample).filter((k) => !fields.has(k));
        assertEquals(undocumented, [], "fields of the sample missing from the Fields table");
        assertEquals(sample.reason, explainReason, "the sample's reason is not what sluice says");
      },
    );

    await t.step("policy.md: sluice check bad.yaml prints the documented errors", async () => {
      const cwd = `${dir}/bad`;
      await Deno.mkdir(cwd);
      // Two errors, on lines 4 and 5, column 7, as the sample shows.
      await Deno.writeTextFile(
        `${cwd}/bad.yaml`,
        'version: 1\nnetwork:\n  allow:\n    - "a.*.com"\n    - example.com:0\n',
      );
      const key = "docs/policy.md: sluice check bad.yaml";
      const r = await runScript(adapted(key), opts(cwd));
      assertEquals(r.code, 1, show(r));
      assertEquals(lines(r.stdout + r.stderr), consoleOutput(use(key)));
    });

    await t.step("configuration samples match the examples and pass sluice check", async () => {
      const example = parseYaml(await Deno.readTextFile(`${ROOT}examples/ci-npm-publish.yaml`));
      for (
        const key of [
          "docs/ci.md: # examples/ci-npm-publish.yaml (excerpt)",
          "docs/credentials.md: credentials:",
        ]
      ) {
        const part = parseYaml(use(key).text);
        assert(contained(part, example), `${key}: not what examples/ci-npm-publish.yaml says`);
      }
      const files: Record<string, string> = {
        "policy-md.yaml": use("docs/policy.md: version: 1").text,
        "rule-md.yaml": "version: 1\nnetwork:\n  allow:\n" +
          use("docs/policy.md: - host: uploads.example.com # a host, wildcard or IP; no port here")
            .text.split("\n").map((l) => `    ${l}`).join("\n") +
          "\n",
        "systemd-md.yaml": "version: 1\nnetwork:\n  allow: [registry.npmjs.org:443]\n" +
          use("docs/systemd.md: credentials:").text + "\n",
        "client-cert-md.yaml": "version: 1\nnetwork:\n  allow: [api.partner.example]\n" +
          use("docs/credentials.md: # a client certificate sluice presents (mTLS)").text + "\n",
        "aws-md.yaml": 'version: 1\nnetwork:\n  allow: ["*.amazonaws.com"]\n' +
          use("docs/credentials.md: # AWS keys sluice re-signs with (SigV4)").text + "\n",
        "ci-aws.yaml": use("docs/ci.md: # ci-aws.yaml: the artifact upload step").text,
        "ci-deploy.yaml": use(
          "docs/ci.md: # ci-deploy.yaml: a deploy step calling an API that wants OAuth2 access tokens",
        ).text,
        "ci-mtls.yaml": use(
          "docs/ci.md: # ci-mtls.yaml: a step calling an API that authenticates clients by certificate",
        ).text,
        "oauth2-md.yaml": "version: 1\nnetwork:\n  allow: [github.com, api.github.com, " +
          "oauth2.googleapis.com, storage.googleapis.com, auth.partner.example, " +
          "api.partner.example]\n" +
          use("docs/credentials.md: # access tokens sluice mints (OAuth2)").text + "\n",
      };
      for (const [f, text] of Object.entries(files)) await Deno.writeTextFile(`${work}/${f}`, text);
      const r = await runScript(`sluice check ${Object.keys(files).join(" ")}`, opts(work));
      assertEquals(r.code, 0, show(r));

      const ini = use("docs/systemd.md: # systemctl edit sluice").text;
      const load = /^LoadCredential=([^:\n]+):.*$/m.exec(ini);
      assert(load, "the drop-in has no LoadCredential= line");
      const unit = await Deno.readTextFile(`${ROOT}packaging/sluice.service`);
      assert(unit.includes(`\n#${load[0]}\n`), `packaging/sluice.service lacks #${load[0]}`);
      assertMatch(files["systemd-md.yaml"], new RegExp(`from: credential:${load[1]}\\b`));
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "docs: README quickstart: the proxy, a request through it, the audit trail",
  ignore: !IS_ROOT, // the stand-in registry listens on port 443
  async fn(t) {
    const dir = await tempDir("sluice-rcp-readme-");
    const registry = await startRegistry(REGISTRY, dir);
    const shims = await writeShims(dir, ROOT);
    const home = `${dir}/home`;
    await Deno.mkdir(home);
    const policy = `${dir}/quickstart.yaml`;
    await Deno.writeTextFile(
      policy,
      withStandIn(await Deno.readTextFile(`${ROOT}examples/quickstart.yaml`), registry.caPath),
    );
    const env = {
      PATH: `${shims.installed}:${shims.bin}:${HOST_PATH}`,
      HOME: home,
      USER: "root",
      LANG: "C.UTF-8",
      SLUICE_STATE_DIR: `${home}/.local/state/sluice`,
      DENO_DIR: shims.denoDir,
    };
    const proxy = startScript(
      adapted("README.md: npx -y deno@2.9.6 task start", { POLICY: policy }),
      { shell: SH, cwd: ROOT, env },
    );
    let stopped = false;
    try {
      await proxy.waitFor(/serving/, 30_000);
      await t.step(
        "curl through the proxy reaches the registry; example.com is refused",
        async () => {
          const r = await runScript(
            adapted(
              "README.md: HTTPS_PROXY=http://127.0.0.1:3128 curl --cacert ~/.local/state/sluice/ca.crt https://registry.npmjs.org/",
            ),
            { shell: SH, cwd: home, env, timeoutMs: 20_000 },
          );
          assertMatch(r.stdout, /\{"db_name":"registry"\}/, show(r));
          assertMatch(r.stderr, /CONNECT tunnel failed, response 403/, show(r));
          assertEquals(r.code, 56, show(r));
          assert(registry.requests.some((q) => q.method === "GET" && q.path === "/"));
        },
      );

      await t.step("Ctrl-C stops the proxy", async () => {
        const code = await proxy.stop("INT");
        stopped = true;
        assert(code === 0 || code === 130, `exit ${code}\n${proxy.stderr()}`);
      });

      await t.step("audit.md: jq finds the denial, explain explains a request", async () => {
        const cwd = `${dir}/audit`;
        await Deno.mkdir(cwd);
        const audit = proxy.stderr().split("\n").filter((l) =>
          l.startsWith("{") && l.includes('"verdict"')
        );
        assert(audit.length >= 2, `no audit lines on the proxy's stderr:\n${proxy.stderr()}`);
        await Deno.writeTextFile(`${cwd}/audit.jsonl`, audit.join("\n") + "\n");
        await Deno.copyFile(`${ROOT}examples/ci-npm-publish.yaml`, `${cwd}/policy.yaml`);
        const key =
          "docs/audit.md: jq -c 'select(.verdict == \"deny\") | {host, method, path, code, rule, rule_at}' audit.jsonl";
        const r = await runScript(adapted(key), { shell: SH, cwd, env, timeoutMs: 20_000 });
        assertEquals(r.code, 3, show(r)); // the last command, explain, says "denied"
        const denial = lines(r.stdout).map((l) => l.startsWith("{") ? JSON.parse(l) : undefined)
          .find((j) => j?.host === "example.com");
        assert(denial, `${show(r)}\n--- the proxy's stderr\n${proxy.stderr()}`);
        assertEquals(denial.rule, "default: deny");
        assertMatch(denial.rule_at, /quickstart\.yaml:\d+$/);
        assertMatch(r.stdout, /^DENY {2}POST https:\/\/api\.github\.com\/repos\/acme\/x$/m);
      });
    } finally {
      if (!stopped) await proxy.stop("TERM");
      await registry.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

// ---------------------------------------------------------------------------------------------
// docs/ci.md: npm publish under sluice, for real, against the stand-in registry.

type Ci = {
  dir: string;
  registry: Registry;
  shims: Shims;
  /** The runner's home (owned by the runner user), and the stand-in for root's (/root). */
  runnerHome: string;
  /** The runner and ci users, which exist only where the recipes run. */
  accounts: Accounts;
  rootHome: string;
  globalNpmrc: string;
  state: string;
};

const MARKER = "published-by-the-docs-recipe";

/** A package to publish: the documented .npmrc, an adapted ci.yaml, a telemetry ping. */
async function npmPackage(ci: Ci, name: string, policyPath = "ci.yaml"): Promise<string> {
  const dir = `${ci.dir}/${name}`;
  await Deno.mkdir(dir);
  const pkg = {
    name,
    version: "1.0.0",
    description: "a package the docs recipes publish to a stand-in registry",
    main: "index.js",
    license: "MIT",
    scripts: {
      // Like a chatty dependency: reaches a host the policy does not allow (one denial).
      prepublishOnly:
        `curl -sS -o /dev/null -w 'telemetry: %{http_code}\\n' --resolve telemetry.example.com:443:${PIN} https://telemetry.example.com/ping || true`,
    },
  };
  await Deno.writeTextFile(`${dir}/package.json`, JSON.stringify(pkg, null, 2) + "\n");
  await Deno.writeTextFile(
    `${dir}/package-lock.json`,
    JSON.stringify(
      {
        name,
        version: "1.0.0",
        lockfileVersion: 3,
        requires: true,
        packages: { "": { name, version: "1.0.0", license: "MIT" } },
      },
      null,
      2,
    ) + "\n",
  );
  await Deno.writeTextFile(`${dir}/index.js`, `module.exports = "${MARKER}:${name}";\n`);
  // docs/ci.md: "npm reads the token from .npmrc (//registry.npmjs.org/:_authToken=${NPM_TOKEN})"
  await Deno.writeTextFile(`${dir}/.npmrc`, "//registry.npmjs.org/:_authToken=${NPM_TOKEN}\n");
  await Deno.mkdir(`${dir}/${policyPath}`.replace(/\/[^/]*$/, ""), { recursive: true });
  await Deno.writeTextFile(
    `${dir}/${policyPath}`,
    withStandIn(
      await Deno.readTextFile(`${ROOT}examples/ci-npm-publish.yaml`),
      ci.registry.caPath,
    ),
  );
  return dir;
}

/** The CI runner's environment. */
function runnerEnv(ci: Ci, over: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: `${ci.shims.installed}:${ci.shims.bin}:${HOST_PATH}`,
    HOME: ci.runnerHome,
    USER: RUNNER_USER,
    LOGNAME: RUNNER_USER,
    LANG: "C.UTF-8",
    CI: "true",
    NPM_TOKEN: SECRET,
    // The runner's global npmrc (not this host's, which names a cafile of its own).
    NPM_CONFIG_GLOBALCONFIG: ci.globalNpmrc,
    // npm inside the namespace resolves the registry's name to a non-loopback address.
    NODE_OPTIONS: `--require=${ci.shims.dnsPin}`,
    RCP_DNS_PIN: `registry.npmjs.org=${PIN}`,
    // sudoers env_keep on this stand-in runner: the DNS pin and npmrc above, and HOME (real
    // sudo resets HOME to root's; the "sudo resets HOME" step runs without it).
    RCP_SUDO_ENV_KEEP: "HOME NODE_OPTIONS RCP_DNS_PIN NPM_CONFIG_GLOBALCONFIG",
    RCP_SUDO_HOME: ci.rootHome,
    ...over,
  };
}

/** Requests for one package; the publish of it, if any. */
function publishes(ci: Ci, name: string) {
  return ci.registry.requests.filter((q) => q.path === `/${name}` && q.publish);
}

async function assertPublished(ci: Ci, name: string, r: Ran): Promise<void> {
  const puts = publishes(ci, name);
  assertEquals(puts.length, 1, `the registry got ${puts.length} publishes of ${name}\n${show(r)}`);
  const put = puts[0];
  assertEquals(put.status, 200);
  assertEquals(put.authorization, `Bearer ${SECRET}`, "the registry did not get the real token");
  assertEquals(put.publish?.name, name);
  assertEquals(put.publish?.version, "1.0.0");
  const tar = await tarballText(put.publish!.tarball);
  assert(tar.includes(`${MARKER}:${name}`), "the published tarball lacks the package's index.js");
}

function assertNoSecret(where: string, text: string): void {
  assert(!text.includes(SECRET), `the real token appears in ${where}`);
}

/**
 * docs/ci.md's `text` sample is "what the user sees at the end, on stderr": stderr must end
 * with lines of that shape (numbers aside), the first saying the command's exit status.
 */
function assertSummaryAtEnd(r: Ran, code: number): void {
  const sample = lines(
    use("docs/ci.md: sluice: command exited 0; 3 allowed, 1 denied, 0 credential violations").text,
  );
  const shape = (l: string) =>
    new RegExp(`^${l.replace(/[.*+?^${}()|[\]\\]/g, "\\$&").replace(/\d+/g, "\\d+")}$`);
  const got = lines(r.stderr);
  const at = got.findLastIndex((l) => shape(sample[0]).test(l));
  assert(at >= 0, `no line like ${JSON.stringify(sample[0])} on stderr:\n${show(r)}`);
  assertEquals(
    got.slice(at).map((l, i) => shape(sample[i] ?? "(nothing)").test(l) ? sample[i] : l),
    sample,
    `stderr should end with the summary as docs/ci.md shows it\n${show(r)}`,
  );
  assert(got[at].startsWith(`sluice: command exited ${code};`), `the summary should say ${code}`);
}

const SH_RECIPE =
  'docs/ci.md: sudo --preserve-env=NPM_TOKEN sluice run --policy ci.yaml --user "$USER" -- npm publish';
const GH_PUBLISH =
  'docs/ci.md: run: sudo --preserve-env=NPM_TOKEN sluice run --policy ci.yaml --audit-log "$RUNNER_TEMP/sluice-audit.jsonl" --user "$USER" -- npm publish';

/** Runs the workflow's publish step alone (sluice already installed), as Actions would. */
async function publishStep(
  ci: Ci,
  name: string,
  over: Record<string, string> = {},
): Promise<{ r: Ran; audit: string }> {
  const ws = await npmPackage(ci, name);
  const temp = `${ci.dir}/${name}.runner-temp`;
  await Deno.mkdir(temp);
  const step = use(GH_PUBLISH).step!;
  const r = await runScript(adapted(GH_PUBLISH, { STATE: ci.state }), {
    shell: ci.accounts.shell(ACTIONS_BASH),
    cwd: ws,
    env: runnerEnv(ci, { RUNNER_TEMP: temp, ...actionsEnv(step.env ?? {}, temp), ...over }),
  });
  const audit = await Deno.readTextFile(`${temp}/sluice-audit.jsonl`).catch(() => "");
  return { r, audit };
}

/** `${{ secrets.X }}` and `${{ runner.temp }}` filled in; any other expression is an error. */
function expr(s: string, runnerTemp: string): string {
  return s.replace(/\$\{\{\s*([^}]*?)\s*\}\}/g, (_, e: string) => {
    if (e === "secrets.NPM_TOKEN") return SECRET;
    if (e === "runner.temp") return runnerTemp;
    throw new Error(`the test does not know the Actions expression \${{ ${e} }}`);
  });
}

function actionsEnv(env: Record<string, string>, runnerTemp: string): Record<string, string> {
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, expr(String(v), runnerTemp)]));
}

Deno.test({
  name: "docs/ci.md: npm publish under sluice, for real, against a stand-in registry",
  ignore: !IS_ROOT, // network namespaces, netfilter, port 443
  async fn(t) {
    const dir = await tempDir("sluice-rcp-ci-");
    const ci: Ci = {
      dir,
      registry: await startRegistry(REGISTRY, dir),
      shims: await writeShims(dir, ROOT),
      runnerHome: `${dir}/runner-home`,
      accounts: await writeAccounts(dir, [
        { name: RUNNER_USER, home: `${dir}/runner-home` },
        { name: "ci", home: `${dir}/ci-home` }, // docs/enforcement.md's --user ci
      ]),
      rootHome: `${dir}/root-home`,
      globalNpmrc: `${dir}/global-npmrc`,
      state: `${dir}/state`,
    };
    await Deno.mkdir(ci.rootHome, { mode: 0o700 });
    await Deno.chmod(ci.rootHome, 0o700);
    // Nothing outside sluice may try the network, and a failure must not retry for a minute.
    const npmrc = "audit=false\nfund=false\nupdate-notifier=false\nfetch-retries=0\n";
    await Deno.writeTextFile(ci.globalNpmrc, npmrc);
    const fields = await auditFields();
    try {
      await t.step(
        "the sh recipe publishes with the real token; its summary has the documented shape",
        async () => {
          const name = "rcp-sh-recipe";
          const cwd = await npmPackage(ci, name);
          const r = await runScript(adapted(SH_RECIPE, { STATE: ci.state }), {
            shell: ci.accounts.shell(SH),
            cwd,
            env: runnerEnv(ci),
          });
          assertMatch(r.stdout, /^exit: 0$/m, show(r));
          await assertPublished(ci, name, r);
          assertNoSecret("the recipe's stdout", r.stdout);
          assertNoSecret("the recipe's stderr", r.stderr);
          assertSummaryAtEnd(r, 0);
        },
      );

      await t.step(
        "the sh recipe prints npm's exit status when the registry refuses (403)",
        async () => {
          const name = "rcp-sh-403";
          const cwd = await npmPackage(ci, name);
          ci.registry.failNextPublish(name, 403);
          const r = await runScript(adapted(SH_RECIPE, { STATE: ci.state }), {
            shell: ci.accounts.shell(SH),
            cwd,
            env: runnerEnv(ci),
          });
          assertMatch(r.stderr, /E403/, show(r));
          assertMatch(r.stdout, /^exit: 1$/m, show(r)); // npm's status, not sluice's 123 or 125
          assertSummaryAtEnd(r, 1);
          assertNoSecret("the recipe's output", r.stdout + r.stderr);
        },
      );

      const job = {
        name: "rcp-gh-job",
        temp: `${dir}/gh-runner-temp`,
        publish: undefined as Ran | undefined,
      };
      await t.step(
        "the GitHub Actions job: every step succeeds, as Actions runs them",
        async () => {
          const ws = await npmPackage(ci, job.name);
          const runnerBin = `${dir}/gh-usr-local-bin`; // stands in for /usr/local/bin
          await Deno.mkdir(job.temp);
          await Deno.mkdir(runnerBin);
          const wf = parseYaml(use("docs/ci.md: jobs:").text) as {
            jobs: Record<string, { steps: Record<string, unknown>[] }>;
          };
          const vars = { STATE: ci.state, RUNNER_BIN: runnerBin, RELEASE: ci.shims.release };
          const failed: string[] = [];
          for (const s of Object.values(wf.jobs)[0].steps) {
            const uses = s.uses as string | undefined;
            if (failed.length && s.if !== "always()") continue;
            if (uses?.startsWith("actions/checkout@")) continue; // the package dir is the checkout
            if (uses?.startsWith("actions/upload-artifact@")) {
              const w = s.with as { path: string };
              const path = expr(w.path, job.temp);
              const stat = await Deno.stat(path).catch(() => undefined);
              if (!stat?.isFile) {
                failed.push(`upload-artifact: nothing at ${path} (from ${w.path})`);
              }
              continue;
            }
            assert(!uses, `the test does not know how to stand in for the step "uses: ${uses}"`);
            const run = String(s.run).replace(/\n$/, "");
            const key = [...byKey.values()].find((b) =>
              b.lang === "actions-run" && b.file === "docs/ci.md" && b.text === run
            )?.key;
            assert(key, `no block for the run step ${JSON.stringify(run)}`);
            const r = await runScript(adapted(key, vars), {
              shell: ci.accounts.shell(ACTIONS_BASH),
              cwd: ws,
              env: {
                ...runnerEnv(ci, {
                  PATH: `${runnerBin}:${ci.shims.bin}:${HOST_PATH}`, // sluice only once installed
                  RUNNER_TEMP: job.temp,
                  GITHUB_WORKSPACE: ws,
                  GITHUB_ACTIONS: "true",
                }),
                ...entryEnv(key, vars),
                ...actionsEnv((s.env ?? {}) as Record<string, string>, job.temp),
              },
            });
            if (key === GH_PUBLISH) job.publish = r;
            if (r.code !== 0) failed.push(`step "${s.name ?? run}" failed: ${show(r)}`);
          }
          assert(job.publish, "the job has no publish step");
          assertEquals(failed, []);
        },
      );

      await t.step("the job published the package with the real token", async () => {
        assert(job.publish, "the publish step did not run");
        await assertPublished(ci, job.name, job.publish);
      });

      await t.step(
        "the job's audit artifact has the request line, and only documented fields",
        async () => {
          const auditText = await Deno.readTextFile(`${job.temp}/sluice-audit.jsonl`);
          const records = lines(auditText).filter(Boolean).map((l) => JSON.parse(l));
          const put = records.find((a) => a.method === "PUT" && a.path === `/${job.name}`);
          assert(put, `no audit line for the publish request:\n${auditText}`);
          assertEquals(
            [put.event, put.host, put.verdict, put.status, put.credentials],
            ["request", "registry.npmjs.org", "allow", 200, ["NPM_TOKEN"]],
          );
          const undocumented = [...new Set(records.flatMap((a) => Object.keys(a)))]
            .filter((k) => !fields.has(k));
          assertEquals(undocumented, [], "audit fields missing from docs/audit.md's Fields table");
          assertNoSecret("the audit file", auditText);
        },
      );

      await t.step("the job's output never shows the real token", () => {
        assert(job.publish, "the publish step did not run");
        assertNoSecret("the publish step's stdout", job.publish.stdout);
        assertNoSecret("the publish step's stderr", job.publish.stderr);
      });

      await t.step(
        "the binary the install step downloaded is not published with the package",
        async () => {
          const put = publishes(ci, job.name)[0];
          assert(put, "nothing was published");
          const tar = await tarballText(put.publish!.tarball);
          assert(
            !/package\/sluice\0/.test(tar),
            "the install step downloads sluice into the workspace (the checkout), and npm publish " +
              "packed it into the package",
          );
        },
      );

      await t.step(
        "the publish step's exit status is npm's when the registry refuses (403)",
        async () => {
          const name = "rcp-gh-403";
          ci.registry.failNextPublish(name, 403);
          const { r, audit } = await publishStep(ci, name);
          assertMatch(r.stderr, /E403/, show(r));
          assertEquals(r.code, 1, `the job's status should be npm's (1)\n${show(r)}`);
          assertSummaryAtEnd(r, 1);
          assertMatch(audit, /"method":"PUT"/);
          assertNoSecret("the audit file", audit);
          assertNoSecret("the step's output", r.stdout + r.stderr);
        },
      );

      await t.step("sluice's CA wins over a global npmrc cafile= (NPM_CONFIG_CAFILE)", async () => {
        // npm's cafile replaces Node's roots, NODE_EXTRA_CA_CERTS included; many runners set
        // one (this host's /usr/etc/npmrc does). sluice run must point npm at its bundle.
        const global = `${dir}/global-npmrc-cafile`;
        await Deno.writeTextFile(global, `${npmrc}cafile=${ci.registry.caPath}\n`);
        const name = "rcp-gh-cafile";
        const { r } = await publishStep(ci, name, { NPM_CONFIG_GLOBALCONFIG: global });
        assertEquals(r.code, 0, show(r));
        await assertPublished(ci, name, r);
      });

      await t.step(
        "sudo resets HOME to root's: npm run as $USER must not be handed it",
        async () => {
          const name = "rcp-gh-home";
          const { r } = await publishStep(ci, name, {
            RCP_SUDO_ENV_KEEP: "NODE_OPTIONS RCP_DNS_PIN NPM_CONFIG_GLOBALCONFIG",
          });
          assert(
            !r.stderr.includes(ci.rootHome),
            `npm, run as ${RUNNER_USER}, was given root's HOME (sudo's) and could not use it:\n${
              show(r)
            }`,
          );
        },
      );

      await t.step("enforcement.md: sudo sluice run ... -- npm publish", async () => {
        const name = "rcp-enforce";
        const cwd = await npmPackage(ci, name, "examples/ci-npm-publish.yaml");
        const r = await runScript(
          adapted(
            "docs/enforcement.md: sudo --preserve-env=NPM_TOKEN sluice run --policy examples/ci-npm-publish.yaml --user ci -- npm publish",
            { STATE: ci.state },
          ),
          { shell: ci.accounts.shell(SH), cwd, env: runnerEnv(ci) },
        );
        assertEquals(r.code, 0, show(r));
        await assertPublished(ci, name, r);
      });
    } finally {
      await ci.registry.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "docs/ci.md: aws s3 cp under sluice run, for real, against an S3 stand-in",
  ignore: !IS_ROOT || !s3Available, // network namespaces, netfilter, port 443
  sanitizeResources: false,
  async fn() {
    const dir = await tempDir("sluice-rcp-aws-");
    const pki = await opensslPki("*.s3.us-east-1.amazonaws.com");
    const s3 = await startStandin(
      dir,
      `${pki.dir}/leaf.pem`,
      `${pki.dir}/leaf.key`,
      `${S3_AT}:443`,
      false,
    );
    const shims = await writeShims(dir, ROOT);
    try {
      const work = `${dir}/job`;
      await Deno.mkdir(`${work}/dist`, { recursive: true });
      const artifact = new Uint8Array(300_000).map((_, i) => (i * 7) & 0xff);
      await Deno.writeFile(`${work}/dist/app.tar.gz`, artifact);
      await Deno.writeTextFile(
        `${work}/ci-aws.yaml`,
        use("docs/ci.md: # ci-aws.yaml: the artifact upload step").text.replace(
          'allow: ["*.amazonaws.com"]',
          `allow: ["*.amazonaws.com", "${S3_AT}:443"]`,
        ) + `\ntls:\n  upstream: { ca: [${pki.dir}/ca.pem] }\n`,
      );
      // The CLI is Debian's aws (whatever else PATH holds), and inside the namespace it gets a
      // documentation address for the bucket's name (sluice's DNS would answer the stand-in's
      // loopback address, which a namespace cannot reach).
      await Deno.mkdir(`${dir}/awsbin`);
      await Deno.symlink(AWS, `${dir}/awsbin/aws`);
      await Deno.mkdir(`${dir}/pin`);
      await Deno.writeTextFile(
        `${dir}/pin/sitecustomize.py`,
        "import socket\n_real = socket.getaddrinfo\n" +
          "def _pinned(host, *a, **k):\n" +
          `    return _real('${PIN}' if str(host).endswith('.amazonaws.com') else host, *a, **k)\n` +
          "socket.getaddrinfo = _pinned\n",
      );
      await Deno.writeTextFile(`${dir}/aws-config`, "[default]\nregion = us-east-1\n");
      const r = await runScript(
        adapted(AWS_RECIPE, { STATE: `${dir}/state` }),
        rootStep(dir, shims, work, {
          CI_AWS_ACCESS_KEY_ID: KEY_ID,
          CI_AWS_SECRET_ACCESS_KEY: AWS_SECRET,
          AWS_CONFIG_FILE: `${dir}/aws-config`,
          AWS_EC2_METADATA_DISABLED: "true",
          PYTHONPATH: `${dir}/pin`,
          RCP_SUDO_ENV_KEEP: "HOME AWS_CONFIG_FILE AWS_EC2_METADATA_DISABLED PYTHONPATH",
        }, `${dir}/awsbin:`),
      );
      assertEquals(r.code, 0, show(r));
      assertMatch(
        r.stdout,
        /upload: dist\/app\.tar\.gz to s3:\/\/ci-artifacts\/app\.tar\.gz/,
        show(r),
      );
      const put = (await s3.log()).find((x) => x.method === "PUT");
      assertEquals([put?.key_id, put?.error], [KEY_ID, undefined], show(r));
      for (const v of [KEY_ID, AWS_SECRET]) {
        assert(!r.stdout.includes(v) && !r.stderr.includes(v), "the job's output shows a real key");
      }
    } finally {
      await s3.stop();
      await Deno.remove(pki.dir, { recursive: true });
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/**
 * docs/ci.md's OAuth2 step as the doc words it (`sudo --preserve-env=... sluice run --policy
 * ci-deploy.yaml -- ./deploy.sh`, inline in the prose, so read from there), with ci-deploy.yaml
 * as the doc's block: a client_credentials token endpoint stand-in for auth.partner.example and
 * an API stand-in for api.partner.example that takes only the tokens the endpoint issued.
 */
const OAUTH2_AT = { auth: "127.0.0.9", api: "127.0.0.10" }; // other root tests use 127.0.0.1-8

Deno.test({
  name: "docs/ci.md: the OAuth2 deploy step under sluice run, for real, against stand-ins",
  ignore: !IS_ROOT, // network namespaces, netfilter, port 443
  sanitizeResources: false,
  async fn() {
    const ciMd = await Deno.readTextFile(`${ROOT}docs/ci.md`);
    const inline =
      /`(sudo --preserve-env=CI_PARTNER_CLIENT_SECRET sluice run --policy\s+ci-deploy\.yaml -- \.\/deploy\.sh)`/
        .exec(ciMd)?.[1].replace(/\s+/g, " ");
    assert(inline, "docs/ci.md no longer words the OAuth2 step as this test runs it; update it");
    const dir = await tempDir("sluice-rcp-oauth2-");
    const cas = await testCas(dir);
    const secret = "ci-partner-client-secret-5d2e81";
    const issued: string[] = [];
    const seen: string[] = [];
    const auth = startTlsUpstream(cas.trusted, 443, OAUTH2_AT.auth, async (req) => {
      const form = new URLSearchParams(await req.text());
      const ok = new URL(req.url).pathname === "/oauth/token" &&
        req.headers.get("authorization") === `Basic ${btoa(`ci-pipeline:${secret}`)}` &&
        form.get("grant_type") === "client_credentials";
      if (!ok) return Response.json({ error: "invalid_client" }, { status: 401 });
      const token = `partner-access-${issued.length + 1}-${crypto.randomUUID()}`;
      issued.push(token);
      return Response.json({ access_token: token, token_type: "Bearer", expires_in: 3600 });
    });
    const api = startTlsUpstream(cas.trusted, 443, OAUTH2_AT.api, (req) => {
      const token = (req.headers.get("authorization") ?? "").replace(/^Bearer /, "");
      seen.push(token);
      return issued.includes(token)
        ? new Response(`deployed with ${req.headers.get("authorization")}\n`)
        : new Response("unauthorized\n", { status: 401 });
    });
    const shims = await writeShims(dir, ROOT);
    try {
      const work = `${dir}/job`;
      await Deno.mkdir(work);
      const block = use(
        "docs/ci.md: # ci-deploy.yaml: a deploy step calling an API that wants OAuth2 access tokens",
      ).text;
      const from = "allow: [api.partner.example, auth.partner.example]";
      assert(block.includes(from), "ci-deploy.yaml's network changed; update this test");
      await Deno.writeTextFile(
        `${work}/ci-deploy.yaml`,
        block.replace(
          from,
          `allow: [api.partner.example, auth.partner.example, "${OAUTH2_AT.api}:443", ` +
            `"${OAUTH2_AT.auth}:443"]`,
        ) + `\ntls:\n  upstream: { ca: [${cas.trustedPath}] }\n`,
      );
      // The step: what the doc says the script does, with the name pinned to a documentation
      // address (every TCP 443 leaving the namespace goes to sluice, which resolves it itself).
      await Deno.writeTextFile(
        `${work}/deploy.sh`,
        `#!/bin/sh\nset -e\ncurl -fsS --resolve api.partner.example:443:${PIN} ` +
          `-H "Authorization: Bearer $PARTNER_TOKEN" https://api.partner.example/deploy\n` +
          `echo "placeholder=$PARTNER_TOKEN"\nenv\n`,
      );
      await Deno.chmod(`${work}/deploy.sh`, 0o755);
      const command = inline.replace(
        "sluice run ",
        `sluice run --resolve auth.partner.example=${OAUTH2_AT.auth} ` +
          `--resolve api.partner.example=${OAUTH2_AT.api} --state ${dir}/state `,
      );
      const r = await runScript(
        command,
        rootStep(dir, shims, work, { CI_PARTNER_CLIENT_SECRET: secret }),
      );
      assertEquals(r.code, 0, show(r));
      const ph = /^placeholder=(\S+)$/m.exec(r.stdout)?.[1] ?? "";
      assertMatch(ph, /^sluice-partner-token-/, show(r));
      // The API got the real token sluice minted; the step read it back as its placeholder.
      assertEquals(issued.length, 1, show(r));
      assertEquals(seen, [issued[0]], show(r));
      assertMatch(r.stdout, new RegExp(`^deployed with Bearer ${ph}$`, "m"), show(r));
      for (const v of [secret, ...issued]) {
        assert(
          !r.stdout.includes(v) && !r.stderr.includes(v),
          "the step's output shows a real value",
        );
      }
      assertMatch(r.stderr, /withheld from the command.*CI_PARTNER_CLIENT_SECRET/, show(r));
    } finally {
      await auth.close();
      await api.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** Where docs/ci.md's client-certificate API stand-in listens (127.0.0.1-10 are taken). */
const MTLS_AT = "127.0.0.11";

Deno.test({
  name: "docs/ci.md: the client-certificate step under sluice run, for real, against an mTLS API",
  ignore: !IS_ROOT, // network namespaces, netfilter, port 443
  sanitizeResources: false,
  async fn() {
    const dir = await tempDir("sluice-rcp-mtls-");
    const pki = await opensslPki("api.bank.example");
    const client = await opensslClientCert(pki, "ci-bank-client");
    const bank = await mtlsServer(
      pki.dir,
      `${pki.dir}/leaf.pem`,
      `${pki.dir}/leaf.key`,
      `${pki.dir}/ca.pem`,
      MTLS_AT,
      443,
    );
    const shims = await writeShims(dir, ROOT);
    try {
      const work = `${dir}/job`;
      await Deno.mkdir(work);
      const block = use(
        "docs/ci.md: # ci-mtls.yaml: a step calling an API that authenticates clients by certificate",
      ).text;
      for (const from of ["allow: [api.bank.example]", "cert: file:/etc/ci/bank-client.crt"]) {
        assert(block.includes(from), `ci-mtls.yaml no longer says ${from}; update this test`);
      }
      await Deno.writeTextFile(
        `${work}/ci-mtls.yaml`,
        block
          .replace("allow: [api.bank.example]", `allow: [api.bank.example, "${MTLS_AT}:443"]`)
          .replace("cert: file:/etc/ci/bank-client.crt", `cert: file:${client.certPath}`) +
          `\ntls:\n  upstream: { ca: [${pki.dir}/ca.pem] }\n`,
      );
      const key = await Deno.readTextFile(client.keyPath);
      // The step as the doc describes it: it calls the API and holds no certificate or key.
      const r = await runScript(
        `sudo --preserve-env=CI_BANK_CLIENT_KEY sluice run --resolve api.bank.example=${MTLS_AT} ` +
          `--state ${dir}/state --policy ci-mtls.yaml -- sh -c 'curl -fsS --resolve ` +
          `api.bank.example:443:${PIN} https://api.bank.example/ && env'`,
        rootStep(dir, shims, work, { CI_BANK_CLIENT_KEY: key }),
      );
      assertEquals(r.code, 0, show(r));
      // s_server -www reports the client certificate it verified: the one sluice holds.
      assertMatch(r.stdout, /ci-bank-client/, show(r));
      const keyBody = key.split("\n").filter((l) => l && !l.startsWith("-----")).join("");
      assert(
        !r.stdout.replace(/\s/g, "").includes(keyBody.slice(0, 40)),
        "the step's output shows the client key",
      );
      assertMatch(r.stderr, /withheld from the command.*CI_BANK_CLIENT_KEY/, show(r));
    } finally {
      await bank.close();
      await Deno.remove(pki.dir, { recursive: true });
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("docs: every entry of TABLE was exercised", () => {
  const skipped = !IS_ROOT;
  const missed = Object.keys(TABLE).filter((k) => byKey.has(k) && !used.has(k));
  if (skipped) return; // the root-only tests above did not run
  assertEquals(
    missed,
    [],
    "TABLE entries no test used (if a test above failed, fix that first; otherwise a " +
      "runnable entry lost its test)",
  );
});

import { inspect } from "node:util";
import { assert, assertEquals, assertMatch, assertStringIncludes } from "../../_assert.ts";
import type { Credential, CredentialPlace, CredentialSource } from "../../../policy/types.ts";
import {
  derivePlaceholder,
  loadOrCreatePlaceholderKey,
  loadSecrets,
  PLACEHOLDER_KEY_FILE,
  placeholdersFor,
  SecretError,
  SecretValue,
} from "../../../lib/credentials/secrets.ts";

const loc = { file: "p.yaml", line: 1, col: 1 };

function cred(
  name: string,
  from: CredentialSource,
  extra: { in?: CredentialPlace[]; inject?: Credential["inject"]; placeholder?: string } = {},
): Credential {
  return {
    name,
    loc,
    kind: "static",
    from,
    hosts: [{ pattern: { kind: "exact", name: "api.example.com" }, port: null, source: "x", loc }],
    in: extra.in ?? ["header", "query"],
    inject: extra.inject,
    placeholder: extra.placeholder,
    onViolation: "block",
  };
}

async function rejects(p: Promise<unknown>): Promise<SecretError> {
  try {
    await p;
  } catch (e) {
    assert(e instanceof SecretError, `expected SecretError, got ${e}`);
    return e;
  }
  throw new Error("expected a SecretError");
}

const REAL = "s3cr3t-VALUE-0123456789";

Deno.test("SecretValue never shows its value when printed or serialized", () => {
  const s = new SecretValue("NPM_TOKEN", REAL);
  const renderings: [string, string][] = [
    ["String()", String(s)],
    ["template literal", `${s}`],
    ["concatenation", "" + s],
    ["JSON.stringify", JSON.stringify({ token: s })],
    ["Deno.inspect", Deno.inspect(s)],
    ["Deno.inspect nested", Deno.inspect({ a: [s] }, { depth: 10, showHidden: true })],
    ["node util.inspect", inspect({ a: s }, { showHidden: true, depth: 10 })],
    ["Object.entries", JSON.stringify(Object.entries(s))],
  ];
  for (const [how, text] of renderings) {
    assert(!text.includes(REAL), `${how} leaked the value: ${text}`);
  }
  assertEquals(String(s), "[secret NPM_TOKEN]");
  assertStringIncludes(Deno.inspect({ a: s }), "[secret NPM_TOKEN]");
  assertEquals(JSON.stringify({ token: s }), '{"token":"[secret NPM_TOKEN]"}');
  assertEquals(s.reveal(), REAL);
  assertEquals(new TextDecoder().decode(s.revealBytes()), REAL);
  assertEquals(s.byteLength, REAL.length);
});

type LoadCase = {
  name: string;
  cred: Credential;
  env?: Record<string, string>;
  files?: Record<string, string | Error>;
  dir?: string;
  want?: string;
  /** A fragment of the error message. */
  error?: string;
};

function namedError(name: string): Error {
  const e = new Error(`os error for ${name}`);
  e.name = name;
  return e;
}

const loadCases: LoadCase[] = [
  {
    name: "reads env:NAME as is",
    cred: cred("A", { kind: "env", name: "A_SRC" }, { in: ["body"] }),
    env: { A_SRC: ` ${REAL}\n` },
    want: ` ${REAL}\n`,
  },
  {
    name: "names a missing env variable and where to set it",
    cred: cred("NPM_TOKEN", { kind: "env", name: "NPM_TOKEN" }),
    error:
      "credential NPM_TOKEN: env:NPM_TOKEN is not set; export it in sluice's environment (not the workload's)",
  },
  {
    name: "refuses an empty env variable",
    cred: cred("A", { kind: "env", name: "A" }),
    env: { A: "" },
    error: "credential A: env:A is empty",
  },
  {
    name: "trims one trailing LF from a file",
    cred: cred("A", { kind: "file", path: "/s/a" }),
    files: { "/s/a": `${REAL}\n` },
    want: REAL,
  },
  {
    name: "trims one trailing CRLF from a file",
    cred: cred("A", { kind: "file", path: "/s/a" }),
    files: { "/s/a": `${REAL}\r\n` },
    want: REAL,
  },
  {
    name: "trims only one line ending and keeps other whitespace",
    cred: cred("A", { kind: "file", path: "/s/a" }, { in: ["body"] }),
    files: { "/s/a": ` ${REAL}\n\n` },
    want: ` ${REAL}\n`,
  },
  {
    name: "names a missing file",
    cred: cred("A", { kind: "file", path: "/s/a" }),
    files: { "/s/a": namedError("NotFound") },
    error: "credential A: file:/s/a: /s/a does not exist",
  },
  {
    name: "names an unreadable file",
    cred: cred("A", { kind: "file", path: "/s/a" }),
    files: { "/s/a": namedError("PermissionDenied") },
    error: "/s/a is not readable by sluice",
  },
  {
    name: "refuses a file holding only a newline",
    cred: cred("A", { kind: "file", path: "/s/a" }),
    files: { "/s/a": "\n" },
    error: "credential A: file:/s/a is empty",
  },
  {
    name: "reads credential:NAME from $CREDENTIALS_DIRECTORY",
    cred: cred("A", { kind: "credential", name: "tok" }),
    dir: "/run/credentials/sluice.service/",
    files: { "/run/credentials/sluice.service/tok": `${REAL}\n` },
    want: REAL,
  },
  {
    name: "explains a missing $CREDENTIALS_DIRECTORY with LoadCredential=",
    cred: cred("A", { kind: "credential", name: "tok" }),
    error: "$CREDENTIALS_DIRECTORY is not set; run sluice under systemd with LoadCredential=tok:",
  },
  {
    name: "refuses a value shorter than 8 characters",
    cred: cred("A", { kind: "env", name: "A" }),
    env: { A: "short" },
    error: "holds 5 characters; at least 8 are needed",
  },
  {
    name: "refuses a line break in a header credential",
    cred: cred("A", { kind: "env", name: "A" }, { in: ["header"] }),
    env: { A: `${REAL}\r\nX-Evil: 1` },
    error: "contains a line break or NUL, which cannot go in a header",
  },
  {
    name: "refuses NUL in an injected credential",
    cred: cred("A", { kind: "env", name: "A" }, {
      in: [],
      inject: { header: "Authorization", value: "Bearer ${secret}" },
    }),
    env: { A: `${REAL}\0` },
    error: "contains a line break or NUL",
  },
  {
    name: "accepts a line break in a body-only credential",
    cred: cred("A", { kind: "env", name: "A" }, { in: ["body"] }),
    env: { A: `-----BEGIN KEY-----\n${REAL}\n-----END KEY-----` },
    want: `-----BEGIN KEY-----\n${REAL}\n-----END KEY-----`,
  },
];

for (const c of loadCases) {
  Deno.test(`loadSecrets() ${c.name}`, async () => {
    const env = { get: (n: string) => c.env?.[n] };
    const readFile = (path: string): Promise<string> => {
      const f = c.files?.[path];
      if (f === undefined) return Promise.reject(namedError("NotFound"));
      return f instanceof Error ? Promise.reject(f) : Promise.resolve(f);
    };
    const run = loadSecrets([c.cred], env, readFile, c.dir);
    if (c.error !== undefined) {
      const e = await rejects(run);
      assertStringIncludes(e.message, c.error);
      assertEquals(e.name, "SecretError");
      assert(!e.message.includes(REAL), `the error leaked the value: ${e.message}`);
    } else {
      const got = await run;
      assertEquals(got.get(c.cred.name)?.reveal(), c.want);
    }
  });
}

Deno.test("loadSecrets() lists every failing credential in one error, naming no value", async () => {
  const creds = [
    cred("A", { kind: "env", name: "A" }),
    cred("B", { kind: "env", name: "B" }),
    cred("C", { kind: "file", path: "/nope" }),
    cred("D", { kind: "env", name: "D" }, { in: ["header"] }),
  ];
  const env = { get: (n: string) => ({ B: REAL, D: `${REAL}\n` } as Record<string, string>)[n] };
  const e = await rejects(
    loadSecrets(creds, env, () => Promise.reject(namedError("NotFound")), "/x"),
  );
  assertEquals(e.problems.length, 3);
  assertMatch(e.message, /^3 credential problems:\n/);
  assertStringIncludes(e.message, "credential A: env:A is not set");
  assertStringIncludes(e.message, "credential C: file:/nope: /nope does not exist");
  assertStringIncludes(e.message, "credential D: env:D contains a line break");
  assert(!e.message.includes(REAL));
});

Deno.test("loadSecrets() never quotes a reader's own error message", async () => {
  const e = await rejects(loadSecrets(
    [cred("A", { kind: "file", path: "/s/a" })],
    { get: () => undefined },
    () => Promise.reject(new Error(`parse failure near ${REAL}`)),
    undefined,
  ));
  assertStringIncludes(e.message, "/s/a could not be read (Error)");
  assert(!e.message.includes(REAL));
});

Deno.test("loadOrCreatePlaceholderKey() creates a 0600 key once and reuses it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const state = `${dir}/state/nested`;
    const a = await loadOrCreatePlaceholderKey(state);
    assertEquals(a.length, 32);
    const st = await Deno.stat(`${state}/${PLACEHOLDER_KEY_FILE}`);
    assertEquals(st.mode! & 0o777, 0o600);
    const b = await loadOrCreatePlaceholderKey(state);
    assertEquals(b, a);
    assert(a.some((x) => x !== 0), "the key is random, not zeros");
    // Concurrent first starts agree on one key.
    const other = `${dir}/race`;
    const keys = await Promise.all(
      Array.from({ length: 8 }, () => loadOrCreatePlaceholderKey(other)),
    );
    for (const k of keys) assertEquals(k, keys[0]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadOrCreatePlaceholderKey() refuses a key file of the wrong size", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/${PLACEHOLDER_KEY_FILE}`, new Uint8Array(31));
    const e = await rejects(loadOrCreatePlaceholderKey(dir));
    assertStringIncludes(e.message, "holds 31 bytes, not 32; delete it");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("derivePlaceholder() is stable per key and name, distinct across names and keys", async () => {
  const k1 = new Uint8Array(32).fill(1);
  const k2 = new Uint8Array(32).fill(2);
  const a = await derivePlaceholder(k1, "OPENAI_API_KEY");
  assertMatch(a, /^sluice-openai-api-key-[a-z2-7]{26}$/);
  assertEquals(await derivePlaceholder(k1, "OPENAI_API_KEY"), a);
  const b = await derivePlaceholder(k1, "NPM_TOKEN");
  assertMatch(b, /^sluice-npm-token-[a-z2-7]{26}$/);
  const a2 = await derivePlaceholder(k2, "OPENAI_API_KEY");
  const random = (p: string) => p.slice(-26);
  assert(random(a) !== random(b), "names get different random parts");
  assert(random(a) !== random(a2), "keys get different random parts");
  // Only characters that need no escaping in headers, URLs or JSON.
  for (const p of [a, b, a2]) assertEquals(encodeURIComponent(p), p);
});

Deno.test("derivePlaceholder() matches HMAC-SHA256 rendered in base32", async () => {
  const key = new Uint8Array(32).map((_, i) => i);
  const k = await crypto.subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
  const mac = new Uint8Array(
    await crypto.subtle.sign("HMAC", k, new TextEncoder().encode("sluice-placeholder-v1:X_1")),
  );
  const bits = [...mac].map((b) => b.toString(2).padStart(8, "0")).join("").slice(0, 130);
  const want = bits.match(/.{5}/g)!.map((g) => "abcdefghijklmnopqrstuvwxyz234567"[parseInt(g, 2)])
    .join("");
  assertEquals(await derivePlaceholder(key, "X_1"), `sluice-x-1-${want}`);
});

Deno.test("placeholdersFor() uses a fixed placeholder when the policy sets one", async () => {
  const key = new Uint8Array(32).fill(7);
  const got = await placeholdersFor([
    cred("A", { kind: "env", name: "A" }, { placeholder: "sk-proj-sluice-0000" }),
    cred("B", { kind: "env", name: "B" }),
  ], key);
  assertEquals(got.get("A"), "sk-proj-sluice-0000");
  assertEquals(got.get("B"), await derivePlaceholder(key, "B"));
});
